"""Token embeddings: `Embedding`, a gather forward and a scatter-add backward."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import init as initializers
from funcnn.nn.core import (Layer, check_entry, check_in_shape, describe_shape, in_param_dtypes,
                            is_positive_int, promoted)
from funcnn.values import value_factory

__all__ = ["Embedding"]


def _check_ids(ids, vocab: int) -> None:
    """Raise TypeError unless `ids` is an integer array with a batch axis, and — when its values
    are concrete (not traced under jit/vmap) — ValueError unless every id is in [0, vocab)."""
    dtype = getattr(ids, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"Embedding: expected an integer array of token ids, received "
                        f"{type(ids).__name__} of dtype {dtype}")
    if ids.ndim < 1:
        raise ValueError(f"Embedding: expected ids of shape (batch, …) with a batch axis, "
                         f"received shape {describe_shape(ids.shape)}")
    if not isinstance(ids, jax.core.Tracer) and ids.size:
        values = np.asarray(ids)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= vocab:
            raise ValueError(f"Embedding: expected ids in [0, {vocab}) for a vocabulary of "
                             f"{vocab}, received id {low if low < 0 else high}")


@value_factory
def Embedding(vocab: int, features: int, table_init=initializers.normal(1.0)) -> Layer:
    """A lookup table: y[..., :] = table[ids[...], :].

    ids: int (batch, …) in [0, vocab) → y: (batch, …, features) in the table's dtype.
    params {"table": (vocab, features)} = torch.nn.Embedding(vocab, features).weight, drawn
    N(0, 1) as torch's.
    Backward: the transpose of the gather, a scatter-add — ∂L/∂table[v] = Σ over the positions
    holding id v of δ (a row no id selected gets 0). Integer ids have no gradient: ∂L/∂ids is a
    float0 array of ids' shape (what `jax.vjp` gives), not part of the contract.
    Out-of-range ids (< 0 or ≥ vocab) raise ValueError when the ids are concrete; under
    `jit`/`vmap` they cannot be checked, and their rows are NaN (so the loss shows it and
    `fn.diagnostics.find_nonfinite` names this layer) and receive no gradient — never a
    silently clamped or wrapped row.
    """
    for name, value in (("vocab", vocab), ("features", features)):
        if not is_positive_int(value):
            raise ValueError(f"Embedding: expected {name} as a positive int, received {value!r}")
    vocab, features = int(vocab), int(features)

    def init(key, in_shape):
        check_in_shape("Embedding", in_shape)
        return {"table": table_init(key, (vocab, features))}, {}

    def output_shape(in_shape):
        return tuple(in_shape) + (features,)

    def forward(params, state, ids, *, key=None, train=False):
        del key, train
        table = check_entry("Embedding", "params", params, "table", (vocab, features))
        _check_ids(ids, vocab)
        valid = (ids >= 0) & (ids < vocab)
        rows = jnp.take(table, jnp.clip(ids, 0, vocab - 1), axis=0)
        y = jnp.where(valid[..., None], rows, jnp.full((), jnp.nan, rows.dtype))
        return y, state, ids

    def backward(params, ids, dy):
        table, dy = promoted(params["table"], dy)
        rows = jnp.where((ids >= 0) & (ids < vocab), ids, vocab)   # vocab: out of range, dropped
        dtable = jnp.zeros_like(table).at[rows].add(dy, mode="drop")
        return in_param_dtypes({"table": dtable}, params), np.zeros(ids.shape, jax.dtypes.float0)

    return Layer("Embedding", init, forward, backward, output_shape)
