"""Maxout units (Goodfellow et al. 2013): the maximum of several affine maps."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from funcnn import init as initializers
from funcnn.nn.core import (Layer, check_entry, check_in_shape, check_last_dim, first_max,
                            is_positive_int, route_to_winner)
from funcnn.nn.dense import affine, affine_backward
from funcnn.values import value_factory

__all__ = ["Maxout"]


@value_factory
def Maxout(out: int, pieces: int = 2, w_init=initializers.lecun_normal,
           b_init=initializers.zeros) -> Layer:
    """y_j = max_k (x·W_k + b_k)_j: each of `out` units takes the largest of `pieces` affine maps.

    x: (batch, ..., in); y: (batch, ..., out). params {"w": (in, pieces·out), "b": (pieces·out,)},
    piece-major: column k·out + j is piece k of unit j, so w.reshape(in, pieces, out)[:, k] is the
    k-th map's weight matrix (and fan-in for `w_init` is `in`). Backward routes δ_j to the winning
    piece (the first one on ties, as `jax.grad` of `apply` does): with z = x·W + b and e = one-hot
    of the winner, ∂L/∂z = e ⊙ δ, ∂L/∂W = xᵀ ∂L/∂z, ∂L/∂b = Σ ∂L/∂z, ∂L/∂x = ∂L/∂z Wᵀ.
    `branches` is the winner.
    """
    if not is_positive_int(out):
        raise ValueError(f"Maxout: expected a positive int number of outputs, received {out!r}")
    if not is_positive_int(pieces):
        raise ValueError(f"Maxout: expected a positive int number of pieces, received {pieces!r}")
    out, pieces = int(out), int(pieces)

    def init(key, in_shape):
        w_key, b_key = jax.random.split(key)
        return {"w": w_init(w_key, (check_in_shape("Maxout", in_shape, 1)[-1], pieces * out)),
                "b": b_init(b_key, (pieces * out,))}, {}

    def output_shape(in_shape):
        return tuple(in_shape[:-1]) + (out,)

    def candidates(params, x):
        """z = x·W + b as (batch, ..., pieces, out)."""
        w = check_entry("Maxout", "params", params, "w", ("in", pieces * out))
        check_last_dim("Maxout", x, w.shape[0])
        b = check_entry("Maxout", "params", params, "b", (pieces * out,))
        z = affine(x, w, b)
        return z.reshape(z.shape[:-1] + (pieces, out))

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        y, winner = first_max(candidates(params, x), axis=-2)
        return y, state, (x, winner)

    def backward(params, residuals, dy):
        x, winner = residuals
        dz = route_to_winner(dy, winner, pieces, -2).reshape(dy.shape[:-1] + (pieces * out,))
        return affine_backward(params, x, dz)

    def branches(params, state, x, *, key=None, train=False):
        del state, key, train
        return jnp.argmax(candidates(params, x), axis=-2)

    return Layer("Maxout", init, forward, backward, output_shape, branches)
