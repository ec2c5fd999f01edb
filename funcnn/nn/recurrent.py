"""Recurrent layers over (batch, time, features): `SimpleRNN`, `LSTM`, `GRU`, with
backpropagation through time written by hand.

Inputs. `x` of shape (batch, time, in), or the masked sequence `(x, mask)` with `mask` a bool
(batch, time) array: step t of sequence b is real where mask[b, t]. At a masked step the
carried state passes through unchanged and the output is zero, so a sequence padded at its tail
gives the outputs, final state, loss and gradients of the unpadded one (as torch's packed
sequences). The per-example input shape is (time, in), or ((time, in), (time,)) when masked.

Outputs. With `return_sequences=True` (the default) every step's output (batch, time, hidden),
paired with the mask again when the input was masked — a masked sequence in, a masked sequence
out, so masked layers stack in `serial`; with `return_sequences=False` the final hidden state
(batch, hidden) (the last real step's under a mask).

State (the Layer contract's `state`). `init` returns `{}`: every call starts from a zero state
and returns `{}`. Called with `state = {"h": h0}` (LSTM: `{"h": h0, "c": c0}`), each (batch,
hidden), it starts from that state and returns the final one in the same entries: initial state
in, final state out. Feeding the returned state to the next call is truncated BPTT — the state
carries no gradient (`backward` returns none for it; `fit` and `fn.backprop.custom_vjp` treat
it as the running statistics of a BatchNorm):

    state = {"h": jnp.zeros((batch, hidden)), "c": jnp.zeros((batch, hidden))}
    for window in jnp.split(x, 4, axis=1):              # x: (batch, time, in)
        (loss, state), grads = vg(params, state, window, targets)   # state: the last window's end

Backward (t = T … 1, a reverse `lax.scan`). With m_t the mask, δh the cotangent of the carried
state h_t (from step t + 1, or the output when return_sequences=False), the cell's candidate
state gets m_t ⊙ (δy_t + δh) and the previous state gets (1 − m_t) ⊙ δh directly plus what flows
through the cell (each layer's formulas below). The scan yields every step's pre-activation
gradient δa_t (the cotangent of x_t·wi + b, and of h_{t−1}·wh); the weight gradients are their
sums over time and batch, each taken in one contraction after the scan:
∂L/∂wi = Σ_t x_tᵀ δa_t, ∂L/∂wh = Σ_t h_{t−1}ᵀ δa_t, ∂L/∂b = Σ_t Σ_batch δa_t, ∂L/∂x_t = δa_t wiᵀ.

Initialisation (as torch): every entry U(−1/√hidden, 1/√hidden) (`funcnn.init.uniform`); torch's
LSTM and RNN bias is the sum of two such draws (bias_ih + bias_hh), ours one.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcnn import init as initializers
from funcnn.nn.core import (Layer, along_last_axis, check_entry, check_in_shape, check_last_dim,
                            check_rank, describe_shape, in_param_dtypes, is_positive_int,
                            promoted)
from funcnn.values import value_factory

__all__ = ["GRU", "LSTM", "SimpleRNN", "mask_cotangent", "reverse_time", "sequence_shape",
           "split_sequence"]


# ---------------------------------------------------------------------------------------------
# Sequences, masks and states: shared with `Bidirectional`.


def split_sequence(layer: str, inputs):
    """(x, mask) of an input `x` or `(x, mask)`: x a float (batch, time, features) array, mask
    None or a bool (batch, time) array. Raises TypeError/ValueError naming what is wrong."""
    if isinstance(inputs, (tuple, list)):
        if len(inputs) != 2:
            raise ValueError(f"{layer}: expected an input x or a masked sequence (x, mask), "
                             f"received a {type(inputs).__name__} of {len(inputs)} entries")
        x, mask = inputs
    else:
        x, mask = inputs, None
    check_rank(layer, x, 3, "(batch, time, features)")
    if mask is not None:
        if getattr(mask, "dtype", None) != jnp.bool_:
            raise TypeError(f"{layer}: expected a bool mask of shape (batch, time), received "
                            f"{type(mask).__name__} of dtype {getattr(mask, 'dtype', None)}; "
                            f"write e.g. lengths[:, None] > jnp.arange(time)")
        if jnp.shape(mask) != x.shape[:2]:
            raise ValueError(f"{layer}: expected a mask of shape {describe_shape(x.shape[:2])} "
                             f"(batch, time) for an input of shape {describe_shape(x.shape)}, "
                             f"received shape {describe_shape(jnp.shape(mask))}")
    return x, mask


def sequence_shape(layer: str, in_shape) -> tuple[tuple[int, ...], bool]:
    """(time, features) of a per-example input shape, and whether it is masked."""
    masked = (isinstance(in_shape, (tuple, list)) and len(in_shape) == 2
              and all(isinstance(s, (tuple, list)) for s in in_shape))
    shape = check_in_shape(layer, in_shape[0] if masked else in_shape)
    if len(shape) != 2 or (masked and tuple(in_shape[1]) != shape[:1]):
        raise ValueError(f"{layer}: expected a per-example input shape (time, features), or "
                         f"((time, features), (time,)) for a masked sequence, received "
                         f"{in_shape!r}")
    return shape, masked


def mask_cotangent(mask):
    """The cotangent of a bool mask, as `jax.vjp` gives it: float0 zeros."""
    return np.zeros(mask.shape, jax.dtypes.float0)


def reverse_time(x):
    """x with its time axis (axis 1) reversed."""
    return jnp.flip(x, axis=1)


# ---------------------------------------------------------------------------------------------
# The cells: one step forward, one step backward, as functions of the pre-activations.
# gx = x_t·wi + b (the input part, computed for every step at once), gh = h_{t−1}·wh (+ bh).


class _Cell(NamedTuple):
    """step(gx, gh, carry) -> (candidate carry, saved); step_backward(saved, prev, new, δcand)
    -> (δgx, δgh or None when equal to δgx, direct δprev per carry, None for none)."""

    name: str
    blocks: int                 # gate blocks side by side in wi, wh and the biases
    carries: tuple[str, ...]    # the carried state's entries
    input_bias: str             # the bias added to x·wi
    hidden_bias: str | None     # the bias added to h·wh (GRU only)
    step: Callable
    step_backward: Callable


def _blocks(a, count: int):
    return jnp.split(a, count, axis=-1)


def _rnn_step(gx, gh, carry):
    del carry
    return (jnp.tanh(gx + gh),), ()


def _rnn_step_backward(saved, prev, new, dcand):
    del saved, prev
    (h,), (dh,) = new, dcand
    return dh * (1 - h * h), None, (None,)


def _lstm_step(gx, gh, carry):
    _, c = carry
    zi, zf, zg, zo = _blocks(gx + gh, 4)
    i, f, g, o = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg), jax.nn.sigmoid(zo)
    c_new = f * c + i * g
    return (o * jnp.tanh(c_new), c_new), jnp.concatenate([i, f, g, o], axis=-1)


def _lstm_step_backward(gates, prev, new, dcand):
    i, f, g, o = _blocks(gates, 4)
    (_, c_prev), (_, c_new), (dh, dc) = prev, new, dcand
    tc = jnp.tanh(c_new)
    dc = dc + dh * o * (1 - tc * tc)
    dz = jnp.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g),
                          dh * tc * o * (1 - o)], axis=-1)
    return dz, None, (None, dc * f)


def _gru_step(gx, gh, carry):
    (h,) = carry
    (xr, xz, xn), (hr, hz, hn) = _blocks(gx, 3), _blocks(gh, 3)
    r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return ((1 - z) * n + z * h,), (r, z, n, hn)


def _gru_step_backward(saved, prev, new, dcand):
    del new
    (r, z, n, hn), (h_prev,), (dh,) = saved, prev, dcand
    dn = dh * (1 - z) * (1 - n * n)
    dr = dn * hn * r * (1 - r)
    dz = dh * (h_prev - n) * z * (1 - z)
    return (jnp.concatenate([dr, dz, dn], axis=-1), jnp.concatenate([dr, dz, dn * r], axis=-1),
            (dh * z,))


_SIMPLE = _Cell("SimpleRNN", 1, ("h",), "b", None, _rnn_step, _rnn_step_backward)
_LSTM = _Cell("LSTM", 4, ("h", "c"), "b", None, _lstm_step, _lstm_step_backward)
_GRU = _Cell("GRU", 3, ("h",), "bi", "bh", _gru_step, _gru_step_backward)


# ---------------------------------------------------------------------------------------------
# The scan over time, forward and backward, shared by the three layers.


class _Residuals(NamedTuple):
    """Time-major: x (T, B, in) in the compute dtype; the carried states (T + 1, B, hidden) each,
    h_0 … h_T; what each step saved; the mask (T, B) or None; x's dtype on a zero-byte array."""

    xt: jax.Array
    carried: tuple
    saved: Any
    mask: jax.Array | None
    x_dtype: jax.Array


def _initial_carry(cell: _Cell, state, batch: int, hidden: int, dtype):
    """The initial carried state: zeros for a `{}` state, else the state's entries."""
    if not isinstance(state, Mapping):
        raise ValueError(f"{cell.name}: expected state as a dict, {{}} or one with the entries "
                         f"{list(cell.carries)}, received {type(state).__name__}")
    if not state:
        return tuple(jnp.zeros((batch, hidden), dtype) for _ in cell.carries)
    if set(state) != set(cell.carries):
        raise ValueError(f"{cell.name}: expected state {{}} or a state with the entries "
                         f"{list(cell.carries)}, received entries {sorted(state)}")
    return tuple(check_entry(cell.name, "state", state, name, (batch, hidden)).astype(dtype)
                 for name in cell.carries)


def _recurrent(cell: _Cell, hidden: int, return_sequences: bool, w_init, b_init) -> Layer:
    """The Layer running `cell` over time: init, forward (scan), backward (reverse scan)."""
    name, width = cell.name, cell.blocks * hidden
    if not is_positive_int(hidden):
        raise ValueError(f"{name}: expected a positive int hidden size, received {hidden!r}")
    if not isinstance(return_sequences, bool):
        raise TypeError(f"{name}: expected return_sequences as a bool, received "
                        f"{return_sequences!r}")
    default = initializers.uniform(1 / math.sqrt(hidden))
    w_init, b_init = w_init or default, b_init or default

    def shapes(features: int) -> dict:
        found = {"wi": (features, width), "wh": (hidden, width), cell.input_bias: (width,)}
        return found | ({cell.hidden_bias: (width,)} if cell.hidden_bias else {})

    def init(key, in_shape):
        (_, features), _ = sequence_shape(name, in_shape)
        entries = shapes(features)
        keys = jax.random.split(key, len(entries))
        return {entry: (w_init if entry.startswith("w") else b_init)(k, shape)
                for k, (entry, shape) in zip(keys, entries.items())}, {}

    def output_shape(in_shape):
        (time, _), masked = sequence_shape(name, in_shape)
        if not return_sequences:
            return (hidden,)
        return ((time, hidden), (time,)) if masked else (time, hidden)

    def checked_params(params, features=None):
        wi = check_entry(name, "params", params, "wi", ("in", width))
        return {entry: check_entry(name, "params", params, entry, shape)
                for entry, shape in shapes(wi.shape[0] if features is None else features).items()}

    def forward(params, state, inputs, *, key=None, train=False):
        del key, train
        x, mask = split_sequence(name, inputs)
        params = checked_params(params)
        check_last_dim(name, x, params["wi"].shape[0])
        xc, *values = promoted(x, *params.values())
        p = dict(zip(params, values))
        batch = x.shape[0]
        carry = _initial_carry(cell, state, batch, hidden, xc.dtype)
        xt = jnp.swapaxes(xc, 0, 1)
        gx = xt @ p["wi"] + along_last_axis(p[cell.input_bias], 3)
        mt = None if mask is None else jnp.swapaxes(mask, 0, 1)[..., None]

        def step(carry, inputs):
            gx_t, m_t = inputs
            gh = carry[0] @ p["wh"]
            if cell.hidden_bias:
                gh = gh + along_last_axis(p[cell.hidden_bias], 2)
            new, saved = cell.step(gx_t, gh, carry)
            if m_t is not None:
                new = tuple(jnp.where(m_t, a, b) for a, b in zip(new, carry))
            return new, (new, saved)

        final, (steps, saved) = lax.scan(step, carry, (gx, mt))
        carried = tuple(jnp.concatenate([c0[None], s]) for c0, s in zip(carry, steps))
        residuals = _Residuals(xt, carried, saved, mt, jnp.zeros((0,), x.dtype))
        new_state = ({} if not state else
                     {n: f.astype(state[n].dtype) for n, f in zip(cell.carries, final)})
        if not return_sequences:
            return final[0], new_state, residuals
        hs = steps[0] if mt is None else jnp.where(mt, steps[0], jnp.zeros((), xc.dtype))
        y = jnp.swapaxes(hs, 0, 1)
        return (y if mask is None else (y, mask)), new_state, residuals

    def backward(params, residuals, dy):
        xt, carried, saved, mt, x_dtype = residuals
        if mt is not None:
            dy, dmask = dy if return_sequences else (dy, mask_cotangent(mt[..., 0].T))
        params = checked_params(params, xt.shape[-1])
        dtype = xt.dtype
        wh = params["wh"].astype(dtype)
        zeros = jnp.zeros(carried[0].shape[1:], dtype)
        dfinal = tuple(zeros for _ in cell.carries)
        dyt = None
        if return_sequences:
            dyt = jnp.swapaxes(dy.astype(dtype), 0, 1)
        else:
            dfinal = (dy.astype(dtype),) + dfinal[1:]
        prev, new = (tuple(c[:-1] for c in carried), tuple(c[1:] for c in carried))

        def step(dcarry, inputs):
            dy_t, m_t, saved_t, prev_t, new_t = inputs
            dh = dcarry[0] if dy_t is None else dcarry[0] + dy_t
            dcand = (dh,) + dcarry[1:]
            if m_t is not None:   # the candidate is used at real steps only
                dcand = tuple(jnp.where(m_t, d, jnp.zeros((), dtype)) for d in dcand)
            dgx, dgh, direct = cell.step_backward(saved_t, prev_t, new_t, dcand)
            dgh = dgx if dgh is None else dgh
            through = dgh @ wh.T
            dprev = ((through if direct[0] is None else through + direct[0]),) + direct[1:]
            if m_t is not None:   # a masked step passes the state through
                dprev = tuple(d + jnp.where(m_t, jnp.zeros((), dtype), dc)
                              for d, dc in zip(dprev, dcarry))
            return dprev, (dgx, None if dgh is dgx else dgh)

        _, (dgx, dgh) = lax.scan(step, dfinal, (dyt, mt, saved, prev, new), reverse=True)
        dgh = dgx if dgh is None else dgh
        grads = {"wi": jnp.einsum("tbf,tbg->fg", xt, dgx),
                 "wh": jnp.einsum("tbh,tbg->hg", prev[0], dgh),
                 cell.input_bias: jnp.sum(dgx, axis=(0, 1))}
        if cell.hidden_bias:
            grads[cell.hidden_bias] = jnp.sum(dgh, axis=(0, 1))
        dx = jnp.einsum("tbg,fg->btf", dgx, params["wi"].astype(dtype)).astype(x_dtype.dtype)
        grads = in_param_dtypes(grads, params)
        return grads, (dx if mt is None else (dx, dmask))

    return Layer(name, init, forward, backward, output_shape)


@value_factory
def SimpleRNN(hidden: int, return_sequences: bool = True, w_init=None, b_init=None) -> Layer:
    """Elman RNN: h_t = tanh(a_t), a_t = x_t·wi + h_{t−1}·wh + b.

    x: (batch, time, in); params {"wi": (in, h), "wh": (h, h), "b": (h,)}; state entry "h".
    Backward: δa_t = δh_t ⊙ (1 − h_t²), δh_{t−1} = δa_t whᵀ. Torch `nn.RNN(in, h,
    batch_first=True)`: weight_ih_l0 = wiᵀ, weight_hh_l0 = whᵀ, bias_ih_l0 + bias_hh_l0 = b.
    Inputs, masks, state and initialisation (None: U(±1/√h)): the module docstring.
    """
    return _recurrent(_SIMPLE, hidden, return_sequences, w_init, b_init)


@value_factory
def LSTM(hidden: int, return_sequences: bool = True, w_init=None, b_init=None) -> Layer:
    """Long short-term memory (Hochreiter & Schmidhuber 1997, with a forget gate).

    z = x_t·wi + h_{t−1}·wh + b split into blocks (i, f, g, o) in torch's order;
    c_t = σ(f)⊙c_{t−1} + σ(i)⊙tanh(g), h_t = σ(o)⊙tanh(c_t).
    params {"wi": (in, 4h), "wh": (h, 4h), "b": (4h,)}; state entries "h" and "c".
    Backward, with δh, δc the cotangents of h_t, c_t: δc ← δc + δh⊙σ(o)⊙(1 − tanh²c_t);
    δz = [δc⊙tanh(g)⊙σ'(i), δc⊙c_{t−1}⊙σ'(f), δc⊙σ(i)⊙(1 − tanh²g), δh⊙tanh(c_t)⊙σ'(o)];
    δh_{t−1} = δz whᵀ, δc_{t−1} = δc⊙σ(f). Torch `nn.LSTM(in, h, batch_first=True)`:
    weight_ih_l0 = wiᵀ, weight_hh_l0 = whᵀ, bias_ih_l0 + bias_hh_l0 = b.
    """
    return _recurrent(_LSTM, hidden, return_sequences, w_init, b_init)


@value_factory
def GRU(hidden: int, return_sequences: bool = True, w_init=None, b_init=None) -> Layer:
    """Gated recurrent unit (Cho et al. 2014) in torch's form, blocks (r, z, n):

    r = σ(x·wi_r + bi_r + h·wh_r + bh_r), z = σ(x·wi_z + bi_z + h·wh_z + bh_z),
    n = tanh(x·wi_n + bi_n + r⊙(h·wh_n + bh_n)), h_t = (1 − z)⊙n + z⊙h_{t−1}.
    params {"wi": (in, 3h), "wh": (h, 3h), "bi": (3h,), "bh": (3h,)}; state entry "h".
    Backward: δn̂ = δh⊙(1 − z)⊙(1 − n²), δr̂ = δn̂⊙(h·wh_n + bh_n)⊙σ'(r),
    δẑ = δh⊙(h_{t−1} − n)⊙σ'(z); the input side gets [δr̂, δẑ, δn̂], the hidden side
    [δr̂, δẑ, δn̂⊙r], and δh_{t−1} = [δr̂, δẑ, δn̂⊙r] whᵀ + δh⊙z. Torch `nn.GRU(in, h,
    batch_first=True)`: weight_ih_l0 = wiᵀ, weight_hh_l0 = whᵀ, bias_ih_l0 = bi, bias_hh_l0 = bh.
    """
    return _recurrent(_GRU, hidden, return_sequences, w_init, b_init)
