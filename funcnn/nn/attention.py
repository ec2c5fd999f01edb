"""Multi-head self-attention (Vaswani et al. 2017) and positional encodings, each with a
hand-written backward.

Sequences are (batch, time, d). A padding mask travels with its sequence as a pair: a layer that
accepts one (`MultiHeadAttention`, `TransformerBlock`) is applied to `x` or to `(x, mask)`, with
`mask` a bool array (batch, time), True at real tokens and False at padding. This is the Layer
contract's own currency (x may be any pytree, as `parallel`'s outputs are): no extra argument.
The mask has no gradient: for a pair input `backward` returns `(∂L/∂x, None)`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import init as initializers
from funcnn.nn.activations import softmax_vjp
from funcnn.nn.core import (Layer, check_entry, check_in_shape, check_rank, describe_shape,
                            in_param_dtypes, is_positive_int, promoted, shape_carrier)
from funcnn.nn.dense import affine, affine_backward
from funcnn.values import value_factory

__all__ = ["MultiHeadAttention", "PositionalEmbedding", "SinusoidalPositionalEncoding",
           "masked_softmax", "sinusoids", "split_padding_mask"]

_SEQUENCE = "(batch, time, features)"


def split_padding_mask(layer: str, inputs):
    """(x, mask) of a layer's input: `inputs` itself and None, or the two halves of a pair whose
    mask is a bool (batch, time) array matching x's leading axes (else ValueError/TypeError)."""
    if not isinstance(inputs, (tuple, list)):
        return inputs, None
    if len(inputs) != 2:
        raise ValueError(f"{layer}: expected an input x or a pair (x, mask), received a "
                         f"{type(inputs).__name__} of {len(inputs)} entries")
    x, mask = inputs
    check_rank(layer, x, 3, _SEQUENCE)
    if getattr(mask, "dtype", None) != jnp.bool_:
        raise TypeError(f"{layer}: expected a bool padding mask (True at real tokens), received "
                        f"{type(mask).__name__} of dtype {getattr(mask, 'dtype', None)}")
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"{layer}: expected a padding mask of shape (batch, time) = "
                         f"{describe_shape(x.shape[:2])}, received {describe_shape(mask.shape)}")
    return x, mask


class _Residuals(NamedTuple):
    """x (batch, time, d); per-head q, k, v (batch, heads, time, d/heads); the attention weights
    P (batch, heads, time, time); the heads' concatenated outputs o (batch, time, d); the padding
    mask (None without one: backward then returns ∂L/∂x alone)."""
    x: jax.Array
    q: jax.Array
    k: jax.Array
    v: jax.Array
    probs: jax.Array
    o: jax.Array
    mask: jax.Array | None


def _split_heads(z, heads: int):
    """(batch, time, d) → (batch, heads, time, d/heads): head i takes columns i·d/h … (i+1)·d/h."""
    batch, time, d = z.shape
    return z.reshape(batch, time, heads, d // heads).transpose(0, 2, 1, 3)


def _merge_heads(z):
    """(batch, heads, time, d/heads) → (batch, time, d), the inverse of `_split_heads`."""
    batch, heads, time, dh = z.shape
    return z.transpose(0, 2, 1, 3).reshape(batch, time, heads * dh)


def _visible(time: int, causal: bool, mask):
    """Which key s each query t may attend to, (batch or 1, 1, time, time) bool, or None for all:
    s ≤ t when causal, and key s a real token when a padding mask is given."""
    visible = None
    if causal:
        visible = jnp.asarray(np.tril(np.ones((time, time), bool)))[None, None]
    if mask is not None:
        keys = mask[:, None, None, :]
        visible = keys if visible is None else visible & keys
    return visible


def masked_softmax(scores, visible):
    """P = softmax over the last axis of the scores restricted to the visible entries:
    P_ts = visible_ts·e^{S_ts − m} / Σ_s' visible_ts'·e^{S_ts' − m}, m the row's visible max
    (a constant shift); a row with no visible entry is all zeros (where softmax is undefined)."""
    if visible is None:
        return jax.nn.softmax(scores, axis=-1)
    lowest = jnp.asarray(jnp.finfo(scores.dtype).min, scores.dtype)
    kept = jnp.where(visible, scores, lowest)
    shift = jax.lax.stop_gradient(jnp.max(kept, axis=-1, keepdims=True))
    weights = jnp.where(visible, jnp.exp(kept - shift), jnp.zeros((), scores.dtype))
    total = jnp.sum(weights, axis=-1, keepdims=True)
    return weights / jnp.where(total > 0, total, jnp.ones((), total.dtype))


@value_factory
def MultiHeadAttention(heads: int, causal: bool = False, w_init=initializers.glorot_uniform,
                       b_init=initializers.zeros) -> Layer:
    """Multi-head scaled dot-product self-attention over x (batch, time, d), or (x, mask).

    Q = x·wq + bq, K = x·wk + bk, V = x·wv + bv; head i uses columns i·d/h … (i+1)·d/h of each:
        y = concat_i softmax(QᵢKᵢᵀ/√(d/h) + M) Vᵢ · wo + bo,
    M = −∞ at the masked entries: key s after query t when `causal`, key s a padding position when
    a mask is given (a query that sees no key gets the weights 0, so y = bo there; PyTorch gives
    NaN). params {"wq", "wk", "wv", "wo": (d, d), "bq", "bk", "bv", "bo": (d,)}; d % heads == 0.
    Backward, per head, with P the weights and O = PV: ∂L/∂O = δ·woᵀ, ∂L/∂V = Pᵀ·∂L/∂O,
    ∂L/∂P = ∂L/∂O·Vᵀ, ∂L/∂S = P ⊙ (∂L/∂P − Σ_s P ⊙ ∂L/∂P) (softmax's VJP, zero where masked),
    ∂L/∂Q = ∂L/∂S·K/√(d/h), ∂L/∂K = (∂L/∂S)ᵀ·Q/√(d/h); then the affine maps' xᵀδ, Σδ, δwᵀ,
    except ∂L/∂bk = Σ_t Qᵢ[t]/√(d/h) · Σ_s ∂L/∂S_ts = 0 exactly: each row of ∂L/∂S sums to zero
    (softmax is invariant to adding one constant per row, Qᵢ[t]·bkᵢ/√(d/h), along the keys).
    PyTorch: `nn.MultiheadAttention(d, heads, batch_first=True)` with in_proj_weight =
    concat(wq.T, wk.T, wv.T), in_proj_bias = concat(bq, bk, bv), out_proj.weight = wo.T,
    out_proj.bias = bo; causal = its attn_mask triu(ones, 1) (True above the diagonal),
    mask = ~key_padding_mask.
    """
    if not is_positive_int(heads):
        raise ValueError(f"MultiHeadAttention: expected a positive int number of heads, "
                         f"received {heads!r}")
    heads, causal = int(heads), bool(causal)
    name = "MultiHeadAttention"

    def check_width(d: int) -> None:
        if d % heads:
            raise ValueError(f"{name}: expected a feature width divisible by heads={heads}, "
                             f"received width {d}")

    def init(key, in_shape):
        in_shape = check_in_shape(name, in_shape, 2)
        if len(in_shape) != 2:
            raise ValueError(f"{name}: expected a per-example input shape (time, features), "
                             f"received {in_shape!r}")
        d = in_shape[-1]
        check_width(d)
        w_keys, b_keys = jax.random.split(key, (2, 4))
        params = {f"w{p}": w_init(k, (d, d)) for p, k in zip("qkvo", w_keys)}
        params.update({f"b{p}": b_init(k, (d,)) for p, k in zip("qkvo", b_keys)})
        return params, {}

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        x, mask = split_padding_mask(name, x)
        wq = check_entry(name, "params", params, "wq", ("d", "d"))
        d = wq.shape[0]
        check_rank(name, x, 3, _SEQUENCE)
        if x.shape[-1] != d:
            raise ValueError(f"{name}: expected {d} input features (last axis), received "
                             f"{x.shape[-1]} in an input of shape {describe_shape(x.shape)}")
        check_width(d)
        w = {p: check_entry(name, "params", params, f"w{p}", (d, d)) for p in "qkvo"}
        b = {p: check_entry(name, "params", params, f"b{p}", (d,)) for p in "qkvo"}
        q, k, v = (_split_heads(affine(x, w[p], b[p]), heads) for p in "qkv")
        q, k, v = promoted(q, k, v)
        scores = jnp.einsum("bhtc,bhsc->bhts", q, k) * (1.0 / math.sqrt(d // heads))
        probs = masked_softmax(scores, _visible(x.shape[1], causal, mask))
        o = _merge_heads(jnp.einsum("bhts,bhsc->bhtc", probs, v))
        return affine(o, w["o"], b["o"]), state, _Residuals(x, q, k, v, probs, o, mask)

    def backward(params, res, dy):
        x, q, k, v, probs, o, mask = res
        grads, do = affine_backward({"w": params["wo"], "b": params["bo"]}, o, dy)
        grads = {"wo": grads["w"], "bo": grads["b"]}
        do = _split_heads(do, heads)
        dv = jnp.einsum("bhts,bhtc->bhsc", probs, do)
        dscores = softmax_vjp(probs, jnp.einsum("bhtc,bhsc->bhts", do, v))
        dscores = dscores * (1.0 / math.sqrt(q.shape[-1]))
        dq = jnp.einsum("bhts,bhsc->bhtc", dscores, k)
        dk = jnp.einsum("bhts,bhtc->bhsc", dscores, q)
        dx = jnp.zeros(x.shape, x.dtype)
        for p, dz in zip("qkv", (dq, dk, dv)):
            g, dx_p = affine_backward({"w": params[f"w{p}"], "b": params[f"b{p}"]}, x,
                                      _merge_heads(dz))
            grads.update({f"w{p}": g["w"], f"b{p}": g["b"]})
            dx = dx + dx_p
        grads["bk"] = jnp.zeros_like(grads["bk"])        # Σ_s ∂L/∂S_ts = 0 (docstring)
        grads = in_param_dtypes({n: grads[n] for n in params}, params)
        return grads, (dx if mask is None else (dx, None))

    def output_shape(in_shape):
        return tuple(in_shape)

    return Layer(name, init, forward, backward, output_shape)


@value_factory
def PositionalEmbedding(max_len: int, table_init=initializers.normal(0.02)) -> Layer:
    """Learned positional embedding (GPT): y[b, t] = x[b, t] + table[t], for t < time ≤ max_len.

    x: (batch, time, d); params {"table": (max_len, d)} (initially N(0, 0.02²), as GPT-2).
    Backward: ∂L/∂x = δ; ∂L/∂table[t] = Σ_b δ[b, t] for t < time, 0 for the unused rows.
    PyTorch: an `nn.Embedding(max_len, d)` of the positions arange(time), weight = table.
    """
    if not is_positive_int(max_len):
        raise ValueError(f"PositionalEmbedding: expected a positive int max_len, received "
                         f"{max_len!r}")
    max_len = int(max_len)
    name = "PositionalEmbedding"

    def init(key, in_shape):
        in_shape = check_in_shape(name, in_shape, 2)
        _check_time(name, in_shape[-2], max_len)
        return {"table": table_init(key, (max_len, in_shape[-1]))}, {}

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        check_rank(name, x, 3, _SEQUENCE)
        table = check_entry(name, "params", params, "table", (max_len, x.shape[-1]))
        _check_time(name, x.shape[1], max_len)
        x_c, rows = promoted(x, table[: x.shape[1]])
        return x_c + rows[None], state, shape_carrier(x)

    def backward(params, carrier, dy):
        table = params["table"]
        rows = jnp.sum(dy, axis=0).astype(table.dtype)
        unused = jnp.zeros((max_len - rows.shape[0], rows.shape[1]), table.dtype)
        return {"table": jnp.concatenate([rows, unused])}, dy.astype(carrier.dtype)

    return Layer(name, init, forward, backward)


def sinusoids(time: int, d: int) -> np.ndarray:
    """The (time, d) float64 table PE[t, 2i] = sin(t/10000^(2i/d)), PE[t, 2i+1] =
    cos(t/10000^(2i/d)) (Vaswani et al. 2017, §3.5); for odd d the last column is a sine."""
    t = np.arange(time, dtype=np.float64)[:, None]
    two_i = 2 * (np.arange(d) // 2)
    angles = t / np.power(10000.0, two_i / d)[None, :]
    return np.where(np.arange(d)[None, :] % 2 == 0, np.sin(angles), np.cos(angles))


@value_factory
def SinusoidalPositionalEncoding() -> Layer:
    """y[b, t] = x[b, t] + PE[t], PE = `sinusoids(time, d)`; no params. Backward: ∂L/∂x = δ."""
    name = "SinusoidalPositionalEncoding"

    def init(key, in_shape):
        del key
        check_in_shape(name, in_shape, 2)
        return {}, {}

    def forward(params, state, x, *, key=None, train=False):
        del params, key, train
        check_rank(name, x, 3, _SEQUENCE)
        table = jnp.asarray(sinusoids(x.shape[1], x.shape[2]), x.dtype)
        return x + table[None], state, ()

    def backward(params, residuals, dy):
        del params, residuals
        return {}, dy

    return Layer(name, init, forward, backward)


def _check_time(layer: str, time: int, max_len: int) -> None:
    if time > max_len:
        raise ValueError(f"{layer}: expected at most max_len={max_len} time steps, received "
                         f"{time}")
