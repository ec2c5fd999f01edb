"""`Bidirectional`: a recurrent layer run over the sequence and over its time reversal."""
from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

from funcnn.nn.core import Layer, as_layer, child_key, promoted, shape_carrier
from funcnn.nn.recurrent import mask_cotangent, reverse_time, sequence_shape, split_sequence
from funcnn.values import config_of, tag

__all__ = ["Bidirectional"]

_NAME = "Bidirectional"


class _Residuals(NamedTuple):
    """Both copies' residuals; zero-byte arrays of each copy's output shape and dtype (rank 3:
    a sequence); the input mask or None."""

    forward: object
    backward: object
    forward_out: jax.Array
    backward_out: jax.Array
    mask: jax.Array | None


def _pair(layer: str, kind: str, tree) -> tuple:
    if not isinstance(tree, Mapping) or set(tree) != {"forward", "backward"}:
        received = f"entries {sorted(tree)}" if isinstance(tree, Mapping) else type(tree).__name__
        raise ValueError(f"{layer}: expected {kind} as a dict with the entries 'backward' and "
                         f"'forward', one per direction, received {received}")
    return tree["forward"], tree["backward"]


def Bidirectional(layer) -> Layer:
    """y = [f(x), R(g(R(x)))] on the last axis: R reverses time, f and g are two copies of
    `layer` (e.g. `LSTM(h)`), params and state `{"forward": …, "backward": …}`, each the
    wrapped layer's.

    The backward copy reads the time-reversed input and its outputs are reversed back, so step
    t of both lines up (torch's `bidirectional=True`: its `*_l0_reverse` weights are the
    "backward" copy's). The wrapped layer's `return_sequences` decides the output: (batch, time,
    2h), paired with the mask when the input was the masked sequence (x, mask); or (batch, 2h)
    = [f's final state, g's final state] (torch's `h_n`; g's final state is its output at step
    0). Under a mask with a padded tail, g starts at each sequence's last real step (the padding
    comes first in the reversal and passes the zero state through), as torch's packed sequences.
    Backward: ∂L/∂x = f'ᵀδ_f + R(g'ᵀ R(δ_g)), δ_f and δ_g the two halves of δ.
    """
    inner = as_layer(layer, _NAME)

    def init(key, in_shape):
        sequence_shape(_NAME, in_shape)
        pf, sf = inner.init(jax.random.fold_in(key, 0), in_shape)
        pb, sb = inner.init(jax.random.fold_in(key, 1), in_shape)
        return {"forward": pf, "backward": pb}, {"forward": sf, "backward": sb}

    def output_shape(in_shape):
        _, masked = sequence_shape(_NAME, in_shape)
        out = inner.output_shape(in_shape)
        paired = masked and isinstance(out[0], tuple)
        shape = out[0] if paired else out
        doubled = tuple(shape[:-1]) + (2 * shape[-1],)
        return (doubled, tuple(out[1])) if paired else doubled

    def forward(params, state, inputs, *, key=None, train=False):
        x, mask = split_sequence(_NAME, inputs)
        (pf, pb), (sf, sb) = _pair(_NAME, "params", params), _pair(_NAME, "state", state)
        reversed_inputs = reverse_time(x) if mask is None else (reverse_time(x),
                                                                 reverse_time(mask))
        yf, sf, rf = inner.forward(pf, sf, inputs, key=child_key(key, 0), train=train)
        yb, sb, rb = inner.forward(pb, sb, reversed_inputs, key=child_key(key, 1), train=train)
        paired = isinstance(yf, tuple)
        if paired:
            yf, yb = yf[0], yb[0]
        if yb.ndim == 3:
            yb = reverse_time(yb)
        y = jnp.concatenate(promoted(yf, yb), axis=-1)
        residuals = _Residuals(rf, rb, shape_carrier(yf), shape_carrier(yb), mask)
        return ((y, mask) if paired else y), {"forward": sf, "backward": sb}, residuals

    def backward(params, residuals, dy):
        rf, rb, f_out, b_out, mask = residuals
        pf, pb = _pair(_NAME, "params", params)
        sequence = f_out.ndim == 4   # shape_carrier adds an axis to (batch, time, h)
        paired = sequence and mask is not None
        dmask = None
        if paired:
            dy, dmask = dy
        width = f_out.shape[-2]
        dyf, dyb = dy[..., :width].astype(f_out.dtype), dy[..., width:].astype(b_out.dtype)
        if sequence:
            dyb = reverse_time(dyb)
        if paired:   # the copies' own passed-through masks were dropped: no cotangent
            dyf, dyb = (dyf, mask_cotangent(mask)), (dyb, mask_cotangent(mask))
        dpf, dxf = inner.backward(pf, rf, dyf)
        dpb, dxb = inner.backward(pb, rb, dyb)
        grads = {"forward": dpf, "backward": dpb}
        if mask is None:
            return grads, dxf + reverse_time(dxb)
        dx = dxf[0] + reverse_time(dxb[0])
        return grads, (dx, dmask if paired else mask_cotangent(mask))

    made = Layer(_NAME, init, forward, backward, output_shape)
    return tag(made, config_of(Bidirectional, layer if isinstance(layer, Layer)
                               else (type(layer), layer)))
