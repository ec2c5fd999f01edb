"""Per-example normalisation: `LayerNorm`, `GroupNorm` and `RMSNorm`, with hand-written backward.

Unlike `BatchNorm`, the statistics are those of one example (over its features, or over a group
of its channels and every position), so training and evaluation compute the same function and
there is no running state. All three share one backward: with x̂ = (x − μ)·r, r = 1/√(σ² + ε),
and g = δ ⊙ γ, the gradient through μ and σ² is
    ∂L/∂x = r · (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂)),
the means taken over the axes that were normalised (RMSNorm has no μ: its mean(g) term drops).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from funcnn import init as initializers
from funcnn.nn.core import (Layer, along_last_axis, check_entry, check_in_shape, check_last_dim,
                            in_param_dtypes, is_positive_int, promoted, shape_carrier)
from funcnn.values import value_factory

__all__ = ["GroupNorm", "LayerNorm", "RMSNorm"]


class _Residuals(NamedTuple):
    """x̂ (in the computing dtype), r = 1/√(σ² + ε) with the normalised axes kept as size 1,
    and x's shape and dtype on a zero-byte `shape_carrier`."""
    xhat: jax.Array
    inv_std: jax.Array
    x_carrier: jax.Array


def _check_eps(name: str, eps) -> None:
    if not eps > 0:
        raise ValueError(f"{name}: expected eps > 0, received {eps!r}")


def _standardise(x, axes, eps, centre=True):
    """(x̂, r): x̂ = (x − μ)·r with r = 1/√(σ² + ε), μ and the biased σ² over `axes` (kept as
    size-1 axes); without `centre`, μ = 0 and σ² = mean(x²) (the root mean square)."""
    centred = x - jnp.mean(x, axis=axes, keepdims=True) if centre else x
    inv_std = jax.lax.rsqrt(jnp.mean(centred * centred, axis=axes, keepdims=True) + eps)
    return centred * inv_std, inv_std


def _standardise_backward(g, xhat, inv_std, axes, centre=True):
    """∂L/∂x of x̂(x) for the cotangent g of x̂: r·(g − mean(g) − x̂ ⊙ mean(g ⊙ x̂)), the
    mean(g) term only when x was centred."""
    projected = g - xhat * jnp.mean(g * xhat, axis=axes, keepdims=True)
    if centre:
        projected = projected - jnp.mean(g, axis=axes, keepdims=True)
    return inv_std * projected


def _affine_init(name, scale_init, offset_init, with_offset=True):
    def init(key, in_shape):
        scale_key, offset_key = jax.random.split(key)
        c = check_in_shape(name, in_shape, 1)[-1]
        params = {"scale": scale_init(scale_key, (c,))}
        if with_offset:
            params["offset"] = offset_init(offset_key, (c,))
        return params, {}

    return init


def _affine_params(name, params, x, what, with_offset=True):
    """(scale, offset or None) after checking their shapes against x's last axis."""
    scale = check_entry(name, "params", params, "scale", (what,))
    check_last_dim(name, x, scale.shape[0], what)
    offset = check_entry(name, "params", params, "offset", scale.shape) if with_offset else None
    return scale, offset


def _affine_grads(params, residuals, dy, grouped):
    """(∂L/∂params, g = δ ⊙ γ) for y = x̂ ⊙ γ (+ β): ∂L/∂γ = Σ δ ⊙ x̂, ∂L/∂β = Σ δ over every
    axis but the last. `grouped(a)` reshapes a (…, c) array to x̂'s layout."""
    xhat, _, _ = residuals
    dy = dy.astype(xhat.dtype)
    flat_xhat = xhat.reshape(dy.shape)
    axes = tuple(range(dy.ndim - 1))
    grads = {"scale": jnp.sum(dy * flat_xhat, axis=axes)}
    if "offset" in params:
        grads["offset"] = jnp.sum(dy, axis=axes)
    g = grouped(dy * along_last_axis(params["scale"].astype(xhat.dtype), dy.ndim))
    return grads, g


@value_factory
def LayerNorm(eps: float = 1e-5, scale_init=initializers.ones,
              offset_init=initializers.zeros) -> Layer:
    """Layer normalisation (Ba et al. 2016) over the last axis of each position.

    y = γ ⊙ (x − μ)/√(σ² + ε) + β, with μ and the biased σ² of the d features of x[..., :].
    x: (batch, …, d); params {"scale": γ (d,), "offset": β (d,)} (initially 1 and 0), which are
    torch.nn.LayerNorm(d, eps)'s `weight` and `bias`. Same function in training and evaluation.
    Backward, with g = δ ⊙ γ and means over the last axis: ∂L/∂x = (g − mean(g) − x̂ ⊙
    mean(g ⊙ x̂))/√(σ² + ε); ∂L/∂γ = Σ δ ⊙ x̂; ∂L/∂β = Σ δ (sums over every axis but the last).
    """
    _check_eps("LayerNorm", eps)

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        scale, offset = _affine_params("LayerNorm", params, x, "features")
        carrier = shape_carrier(x)
        x, scale, offset = promoted(x, scale, offset)
        xhat, inv_std = _standardise(x, -1, eps)
        y = xhat * along_last_axis(scale, x.ndim) + along_last_axis(offset, x.ndim)
        return y, state, _Residuals(xhat, inv_std, carrier)

    def backward(params, residuals, dy):
        grads, g = _affine_grads(params, residuals, dy, lambda a: a)
        dx = _standardise_backward(g, residuals.xhat, residuals.inv_std, -1)
        return in_param_dtypes(grads, params), dx.astype(residuals.x_carrier.dtype)

    return Layer("LayerNorm", _affine_init("LayerNorm", scale_init, offset_init), forward,
                 backward)


@value_factory
def RMSNorm(eps: float = 1e-6, scale_init=initializers.ones) -> Layer:
    """Root-mean-square normalisation (Zhang & Sennrich 2019) over the last axis.

    y = γ ⊙ x/√(mean(x²) + ε), the mean over the d features; no centring and no offset.
    x: (batch, …, d); params {"scale": γ (d,)} (initially 1) = torch.nn.RMSNorm(d, eps)'s `weight`.
    Backward, with x̂ = x/√(mean(x²) + ε) and g = δ ⊙ γ: ∂L/∂x = (g − x̂ ⊙ mean(g ⊙ x̂))/
    √(mean(x²) + ε); ∂L/∂γ = Σ δ ⊙ x̂ over every axis but the last.
    """
    _check_eps("RMSNorm", eps)

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        scale, _ = _affine_params("RMSNorm", params, x, "features", with_offset=False)
        carrier = shape_carrier(x)
        x, scale = promoted(x, scale)
        xhat, inv_std = _standardise(x, -1, eps, centre=False)
        return xhat * along_last_axis(scale, x.ndim), state, _Residuals(xhat, inv_std, carrier)

    def backward(params, residuals, dy):
        grads, g = _affine_grads(params, residuals, dy, lambda a: a)
        dx = _standardise_backward(g, residuals.xhat, residuals.inv_std, -1, centre=False)
        return in_param_dtypes(grads, params), dx.astype(residuals.x_carrier.dtype)

    return Layer("RMSNorm", _affine_init("RMSNorm", scale_init, None, with_offset=False),
                 forward, backward)


@value_factory
def GroupNorm(groups: int, eps: float = 1e-5, scale_init=initializers.ones,
              offset_init=initializers.zeros) -> Layer:
    """Group normalisation (Wu & He 2018) over channels-last inputs.

    The c channels are split into `groups` contiguous blocks of c/groups; each example's block is
    standardised with the mean and biased variance over all its entries (every non-batch axis:
    positions × c/groups channels), then y = γ ⊙ x̂ + β per channel. groups = 1 is LayerNorm
    over every non-batch axis; groups = c is instance normalisation.
    x: (batch, …, c); params {"scale": γ (c,), "offset": β (c,)} (initially 1 and 0) =
    torch.nn.GroupNorm(groups, c, eps)'s `weight` and `bias` (torch's input is channels-first).
    Backward: LayerNorm's, with the means over the block: ∂L/∂x = (g − mean(g) − x̂ ⊙ mean(g ⊙
    x̂))/√(σ² + ε), g = δ ⊙ γ; ∂L/∂γ = Σ δ ⊙ x̂; ∂L/∂β = Σ δ (over every axis but the last).
    """
    if not is_positive_int(groups):
        raise ValueError(f"GroupNorm: expected a positive int number of groups, received "
                         f"{groups!r}")
    groups = int(groups)
    _check_eps("GroupNorm", eps)

    def check_channels(c):
        if c % groups:
            raise ValueError(f"GroupNorm: expected a channel count divisible by groups={groups}, "
                             f"received {c} channels")

    base_init = _affine_init("GroupNorm", scale_init, offset_init)

    def init(key, in_shape):
        check_channels(check_in_shape("GroupNorm", in_shape, 1)[-1])
        return base_init(key, in_shape)

    def grouped(a):
        """(batch, …, c) → (batch, …, groups, c/groups); the block axes: all but 0 and −2."""
        return a.reshape(a.shape[:-1] + (groups, a.shape[-1] // groups))

    def block_axes(ndim):
        return tuple(range(1, ndim - 2)) + (ndim - 1,)

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        scale, offset = _affine_params("GroupNorm", params, x, "channels")
        check_channels(x.shape[-1])
        carrier = shape_carrier(x)
        x, scale, offset = promoted(x, scale, offset)
        blocks = grouped(x)
        xhat, inv_std = _standardise(blocks, block_axes(blocks.ndim), eps)
        y = xhat.reshape(x.shape) * along_last_axis(scale, x.ndim) \
            + along_last_axis(offset, x.ndim)
        return y, state, _Residuals(xhat, inv_std, carrier)

    def backward(params, residuals, dy):
        grads, g = _affine_grads(params, residuals, dy, grouped)
        dx = _standardise_backward(g, residuals.xhat, residuals.inv_std, block_axes(g.ndim))
        return in_param_dtypes(grads, params), dx.reshape(dy.shape).astype(
            residuals.x_carrier.dtype)

    return Layer("GroupNorm", init, forward, backward)
