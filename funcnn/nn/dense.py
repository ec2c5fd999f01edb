"""Fully connected layers and reshaping: `Dense` and `Flatten`."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from funcnn import init as initializers
from funcnn.nn.core import (Layer, along_last_axis, carried_shape, check_entry, check_floating,
                            check_in_shape, check_last_dim, in_param_dtypes, is_positive_int,
                            promoted, shape_carrier)
from funcnn.values import value_factory

__all__ = ["Dense", "Flatten", "affine", "affine_backward"]


def affine(x, w, b):
    """z = x·W + b (b along the last axis), in the promoted dtype of x, W and b."""
    x, w, b = promoted(x, w, b)
    return x @ w + along_last_axis(b, x.ndim)


def affine_backward(params, x, dz):
    """The backward of z = x·W + b: ({"w": xᵀδ, "b": Σδ} summed over every leading axis, in the
    parameters' dtypes, and ∂L/∂x = δWᵀ in x's dtype)."""
    x_c, w, dz = promoted(x, params["w"], dz)
    x2, dz2 = x_c.reshape(-1, x.shape[-1]), dz.reshape(-1, dz.shape[-1])
    grads = {"w": x2.T @ dz2, "b": jnp.sum(dz2, axis=0)}
    return in_param_dtypes(grads, params), (dz @ w.T).astype(x.dtype)


@value_factory
def Dense(out: int, w_init=initializers.lecun_normal, b_init=initializers.zeros) -> Layer:
    """Affine map z = x·W + b on the last axis.

    x: (batch, ..., in); params {"w": (in, out), "b": (out,)}; z: (batch, ..., out).
    Backward (the notes' BP3/BP4 with a = x): ∂L/∂W = xᵀδ, ∂L/∂b = Σ_batch δ, ∂L/∂x = δWᵀ.
    """
    if not is_positive_int(out):
        raise ValueError(f"Dense: expected a positive int number of outputs, received {out!r}")
    out = int(out)

    def init(key, in_shape):
        w_key, b_key = jax.random.split(key)
        fan_in = check_in_shape("Dense", in_shape, 1)[-1]
        return {"w": w_init(w_key, (fan_in, out)), "b": b_init(b_key, (out,))}, {}

    def output_shape(in_shape):
        return tuple(in_shape[:-1]) + (out,)

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        w = check_entry("Dense", "params", params, "w", ("in", out))
        check_last_dim("Dense", x, w.shape[0])
        b = check_entry("Dense", "params", params, "b", (out,))
        return affine(x, w, b), state, x

    return Layer("Dense", init, forward, affine_backward, output_shape)


@value_factory
def Flatten() -> Layer:
    """Reshape (batch, d1, d2, …) to (batch, d1·d2·…); backward reshapes δ back."""

    def init(key, in_shape):
        del key, in_shape
        return {}, {}

    def output_shape(in_shape):
        return (math.prod(in_shape),)

    def forward(params, state, x, *, key=None, train=False):
        del params, key, train
        check_floating("Flatten", x)
        if x.ndim < 1:
            raise ValueError("Flatten: expected an input with a batch axis, received a scalar")
        return x.reshape(x.shape[0], -1), state, shape_carrier(x)

    def backward(params, carrier, dy):
        del params
        return {}, dy.reshape(carried_shape(carrier))

    return Layer("Flatten", init, forward, backward, output_shape)
