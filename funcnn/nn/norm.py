"""Batch normalisation (Ioffe & Szegedy 2015) with a hand-written backward through the batch
statistics."""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from funcnn import init as initializers
from funcnn.nn.core import (Layer, along_last_axis, check_entry, check_in_shape, check_last_dim,
                            describe_shape, in_param_dtypes, promoted, shape_carrier)
from funcnn.values import value_factory

__all__ = ["BatchNorm"]


class _BatchResiduals(NamedTuple):
    """Training pass: x̂ and 1/√(σ²_B + ε) from the batch statistics (the gradient flows
    through them); x's dtype on a zero-byte `shape_carrier`."""
    xhat: jax.Array
    inv_std: jax.Array
    x_carrier: jax.Array


class _RunningResiduals(NamedTuple):
    """Evaluation pass: x̂ and 1/√(running var + ε), constants with respect to x; x's dtype on
    a zero-byte `shape_carrier`."""
    xhat: jax.Array
    inv_std: jax.Array
    x_carrier: jax.Array


@value_factory
def BatchNorm(momentum: float = 0.9, eps: float = 1e-5, scale_init=initializers.ones,
              offset_init=initializers.zeros) -> Layer:
    """y = γ ⊙ (x − μ)/√(σ² + ε) + β, one (μ, σ², γ, β) per channel (the last axis).

    Training: μ, σ² are the mean and biased variance over every axis but the last (the m = batch·…
    positions of a channel), and the new running statistics are returned in `state`:
    running = momentum·running + (1 − momentum)·batch. Eval: μ, σ² are the running statistics.
    params {"scale": γ (c,), "offset": β (c,)} (initially 1 and 0); state {"mean": (c,),
    "var": (c,)} (initially 0 and 1).
    Backward (training, through μ and σ²): with g = δ ⊙ γ and sums over the m positions,
    ∂L/∂x = (1/√(σ²+ε)) · (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂)); ∂L/∂γ = Σ δ ⊙ x̂; ∂L/∂β = Σ δ.
    Eval: ∂L/∂x = g/√(σ²+ε). Training needs m ≥ 2 (with one value per channel σ²_B = 0: y = β
    and ∂L/∂x = 0), and raises ValueError otherwise, as PyTorch does.
    Dtypes: it computes in the promotion of x's, γ's and β's dtypes, the running statistics
    cast to it; the new running statistics keep their own dtype.
    """
    if not 0 <= momentum <= 1:
        raise ValueError(f"BatchNorm: expected a momentum in [0, 1], received {momentum!r}")
    if not eps > 0:
        raise ValueError(f"BatchNorm: expected eps > 0, received {eps!r}")

    def init(key, in_shape):
        scale_key, offset_key = jax.random.split(key)
        c = check_in_shape("BatchNorm", in_shape, 1)[-1]
        return ({"scale": scale_init(scale_key, (c,)), "offset": offset_init(offset_key, (c,))},
                {"mean": jnp.zeros((c,), jnp.float32), "var": jnp.ones((c,), jnp.float32)})

    def forward(params, state, x, *, key=None, train=False):
        del key
        scale = check_entry("BatchNorm", "params", params, "scale", ("channels",))
        c = scale.shape[0]
        check_last_dim("BatchNorm", x, c, "channels")
        offset = check_entry("BatchNorm", "params", params, "offset", (c,))
        for name in ("mean", "var"):
            check_entry("BatchNorm", "state", state, name, (c,))
        axes = tuple(range(x.ndim - 1))
        carrier = shape_carrier(x)
        x, scale, offset = promoted(x, scale, offset)
        if train:
            count = math.prod(x.shape[:-1])
            if count < 2:
                raise ValueError(f"BatchNorm: expected more than 1 value per channel in training, "
                                 f"received an input of shape {describe_shape(x.shape)} ({count} "
                                 f"per channel); use train=False to normalise with the running "
                                 f"statistics")
            mean = jnp.mean(x, axis=axes)
            centred = x - along_last_axis(mean, x.ndim)
            var = jnp.mean(centred * centred, axis=axes)
            state = {name: _running_average(momentum, state[name], batch)
                     for name, batch in (("mean", mean), ("var", var))}
            inv_std = jax.lax.rsqrt(var + eps)
            make = _BatchResiduals
        else:
            centred = x - along_last_axis(state["mean"].astype(x.dtype), x.ndim)
            inv_std = jax.lax.rsqrt(state["var"].astype(x.dtype) + eps)
            make = _RunningResiduals
        xhat = centred * along_last_axis(inv_std, x.ndim)
        y = xhat * along_last_axis(scale, x.ndim) + along_last_axis(offset, x.ndim)
        return y, state, make(xhat, inv_std, carrier)

    def backward(params, residuals, dy):
        xhat, inv_std, carrier = residuals
        ndim, axes = dy.ndim, tuple(range(dy.ndim - 1))
        dy = dy.astype(xhat.dtype)
        grads = {"scale": jnp.sum(dy * xhat, axis=axes), "offset": jnp.sum(dy, axis=axes)}
        g = dy * along_last_axis(params["scale"].astype(xhat.dtype), ndim)
        if isinstance(residuals, _BatchResiduals):
            g = (g - jnp.mean(g, axis=axes, keepdims=True)
                 - xhat * jnp.mean(g * xhat, axis=axes, keepdims=True))
        dx = g * along_last_axis(inv_std, ndim)
        return in_param_dtypes(grads, params), dx.astype(carrier.dtype)

    return Layer("BatchNorm", init, forward, backward)


def _running_average(momentum, running, batch):
    """momentum·running + (1 − momentum)·batch, computed in the wider of the two dtypes and
    kept in the running statistic's."""
    wide_running, batch = promoted(running, batch)
    return (momentum * wide_running + (1 - momentum) * batch).astype(jnp.result_type(running))
