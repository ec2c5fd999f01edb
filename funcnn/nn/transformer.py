"""The pre-norm Transformer block (GPT-2's layout), composed from layers with hand-written
backward rules: its backward is theirs, run in reverse by `serial` and `residual`."""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax

from funcnn.nn.activations import Gelu
from funcnn.nn.attention import MultiHeadAttention, split_padding_mask
from funcnn.nn.core import Layer, check_in_shape, check_rank, is_positive_int, residual, serial
from funcnn.nn.dense import Dense
from funcnn.nn.layer_norm import LayerNorm
from funcnn.values import value_factory

__all__ = ["TransformerBlock"]


class _MaskedResiduals(NamedTuple):
    """The composed block's residuals of a pass over (x, mask), and that mask."""
    block: tuple
    mask: jax.Array


def _attention_on(attention: Layer, mask) -> Layer:
    """`attention` applied to (x, mask) instead of x; its backward returns ∂L/∂x alone (the mask
    has no gradient), so that it sits in a `residual` like any layer."""

    def forward(params, state, x, *, key=None, train=False):
        return attention.forward(params, state, (x, mask), key=key, train=train)

    def backward(params, residuals, dy):
        dparams, (dx, _) = attention.backward(params, residuals, dy)
        return dparams, dx

    return Layer(attention.name, attention.init, forward, backward, attention.output_shape)


@value_factory
def TransformerBlock(heads: int, hidden: int | None = None, causal: bool = False) -> Layer:
    """Pre-norm Transformer block over x (batch, time, d), or (x, mask) (see `nn.attention`):

        h = x + MultiHeadAttention(heads, causal)(LayerNorm(x))
        y = h + Dense(d)(Gelu(Dense(hidden)(LayerNorm(h))))

    the function, params layout and `init` draws of `serial(residual(LayerNorm(),
    MultiHeadAttention(heads, causal)), residual(LayerNorm(), Dense(hidden), Gelu(), Dense(d)))`,
    `hidden` = 4·d by default: exact GELU, eps 1e-5, no dropout, no final norm (a GPT adds its
    own). params ((ln1, attention), (ln2, dense1, {}, dense2)). Given (x, mask) it returns
    (y, mask), so that blocks stack in `serial`, and its backward returns (∂L/∂x, None).
    Backward: the children's hand-written rules, through the skip connections (δ + f'(x)ᵀδ).
    PyTorch: `nn.TransformerEncoderLayer(d, heads, hidden, dropout=0, activation="gelu",
    batch_first=True, norm_first=True)` (its attention mapped as `MultiHeadAttention`'s).
    """
    if not is_positive_int(heads):
        raise ValueError(f"TransformerBlock: expected a positive int number of heads, received "
                         f"{heads!r}")
    if hidden is not None and not is_positive_int(hidden):
        raise ValueError(f"TransformerBlock: expected hidden as a positive int or None (4·d), "
                         f"received {hidden!r}")
    name = "TransformerBlock"

    def composed(d: int, attention: Layer) -> Layer:
        return serial(residual(LayerNorm(), attention),
                      residual(LayerNorm(), Dense(hidden or 4 * d), Gelu(), Dense(d)))

    @functools.lru_cache(maxsize=8)
    def block(d: int) -> Layer:
        return composed(d, MultiHeadAttention(heads, causal))

    def masked_block(d: int, mask) -> Layer:
        return composed(d, _attention_on(MultiHeadAttention(heads, causal), mask))

    def init(key, in_shape):
        in_shape = check_in_shape(name, in_shape, 2)
        if len(in_shape) != 2:
            raise ValueError(f"{name}: expected a per-example input shape (time, features), "
                             f"received {in_shape!r}")
        return block(in_shape[-1]).init(key, in_shape)

    def forward(params, state, x, *, key=None, train=False):
        x, mask = split_padding_mask(name, x)
        check_rank(name, x, 3, "(batch, time, features)")
        if mask is None:
            return block(x.shape[-1]).forward(params, state, x, key=key, train=train)
        y, state, residuals = masked_block(x.shape[-1], mask).forward(params, state, x, key=key,
                                                                      train=train)
        return (y, mask), state, _MaskedResiduals(residuals, mask)

    def apply(params, state, x, *, key=None, train=False):
        x, mask = split_padding_mask(name, x)
        check_rank(name, x, 3, "(batch, time, features)")
        if mask is None:
            return block(x.shape[-1]).apply(params, state, x, key=key, train=train)
        y, state = masked_block(x.shape[-1], mask).apply(params, state, x, key=key, train=train)
        return (y, mask), state

    def backward(params, residuals, dy):
        d = params[0][1]["wq"].shape[0]
        if not isinstance(residuals, _MaskedResiduals):
            return block(d).backward(params, residuals, dy)
        dy = dy[0] if isinstance(dy, tuple) else dy
        dparams, dx = masked_block(d, residuals.mask).backward(params, residuals.block, dy)
        return dparams, (dx, None)

    return Layer(name, init, forward, backward, apply_fn=apply)
