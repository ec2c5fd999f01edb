"""Stochastic regularising layers: `Dropout` and `DropConnect`.

Both draw their mask from the `key` passed to `apply`/`forward` when `train=True` (and raise a
`ValueError` without one), keep each unit/weight with probability 1 − rate and scale the kept
ones by 1/(1 − rate) ("inverted" dropout), so that nothing changes at evaluation time. The
scaled mask is a residual: backward multiplies by the very mask the forward pass used.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from funcnn import init as initializers
from funcnn.nn.core import (Layer, check_entry, check_floating, check_in_shape, check_key,
                            check_last_dim, is_positive_int)
from funcnn.nn.dense import affine, affine_backward
from funcnn.values import value_factory

__all__ = ["DropConnect", "Dropout"]


def _check_rate(name: str, rate) -> float:
    if not (isinstance(rate, numbers.Real) and not isinstance(rate, bool) and 0 <= rate < 1):
        raise ValueError(f"{name}: expected a drop rate in [0, 1), received {rate!r}")
    return float(rate)


def _scaled_mask(key, rate: float, shape, dtype):
    """Bernoulli(1 − rate) mask scaled by 1/(1 − rate): E[mask] = 1."""
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return jnp.where(keep, jnp.asarray(1.0 / (1.0 - rate), dtype), jnp.zeros((), dtype))


@value_factory
def Dropout(rate: float) -> Layer:
    """Inverted dropout: y = x ⊙ m/(1 − rate), m ~ Bernoulli(1 − rate), in training; y = x at eval.

    `rate` is the probability of dropping a unit; E[y] = x. Any input shape; one independent mask
    entry per element. Backward: ∂L/∂x = δ ⊙ m / (1 − rate) with the forward pass's mask.

    >>> y, _ = Dropout(0.5).apply({}, {}, x, key=jax.random.key(0), train=True)
    """
    rate = _check_rate("Dropout", rate)

    def init(key, in_shape):
        del key, in_shape
        return {}, {}

    def forward(params, state, x, *, key=None, train=False):
        del params
        check_floating("Dropout", x)
        check_key("Dropout", key, train)
        if not train:
            return x, state, ()
        mask = _scaled_mask(key, rate, x.shape, x.dtype)
        return x * mask, state, mask

    def backward(params, mask, dy):
        del params
        return {}, dy if isinstance(mask, tuple) else dy * mask

    return Layer("Dropout", init, forward, backward)


@value_factory
def DropConnect(out: int, rate: float, w_init=initializers.lecun_normal,
                b_init=initializers.zeros) -> Layer:
    """Dense layer with randomly dropped weights (Wan et al. 2013): z = x·(W ⊙ M) + b.

    In training M ~ Bernoulli(1 − rate) / (1 − rate), one entry per weight (the bias is not
    masked); at eval M = 1, a plain `Dense`. x: (batch, ..., in); params {"w": (in, out),
    "b": (out,)} as `Dense`. Backward: ∂L/∂W = (xᵀδ) ⊙ M, ∂L/∂b = Σ δ, ∂L/∂x = δ (W ⊙ M)ᵀ.
    """
    if not is_positive_int(out):
        raise ValueError(f"DropConnect: expected a positive int number of outputs, received "
                         f"{out!r}")
    out, rate = int(out), _check_rate("DropConnect", rate)

    def init(key, in_shape):
        w_key, b_key = jax.random.split(key)
        fan_in = check_in_shape("DropConnect", in_shape, 1)[-1]
        return {"w": w_init(w_key, (fan_in, out)), "b": b_init(b_key, (out,))}, {}

    def output_shape(in_shape):
        return tuple(in_shape[:-1]) + (out,)

    def forward(params, state, x, *, key=None, train=False):
        w = check_entry("DropConnect", "params", params, "w", ("in", out))
        check_last_dim("DropConnect", x, w.shape[0])
        b = check_entry("DropConnect", "params", params, "b", (out,))
        check_key("DropConnect", key, train)
        mask = _scaled_mask(key, rate, w.shape, w.dtype) if train else ()
        return affine(x, w * mask if train else w, b), state, (x, mask)

    def backward(params, residuals, dz):
        x, mask = residuals
        if isinstance(mask, tuple):   # evaluation: a plain Dense
            return affine_backward(params, x, dz)
        grads, dx = affine_backward({**params, "w": params["w"] * mask}, x, dz)
        return {**grads, "w": grads["w"] * mask}, dx

    return Layer("DropConnect", init, forward, backward, output_shape)
