"""Regression losses: `mean_squared_error`, `l1` (element-wise) and `half_squared_error`
(per example, the notes' quadratic cost)."""
from __future__ import annotations

import jax.numpy as jnp

from funcnn.losses.base import (Loss, check_same_shape, count_elements, per_item)

__all__ = ["half_squared_error", "l1", "mean_squared_error"]


def _mse(f, y):
    """Mean squared error mean((f − y)²) over all elements (torch mse_loss).

    reduction="none": (f − y)² per element; "sum": Σ (f − y)².
    Gradient: ∂L/∂f = 2(f − y)/n, n the number of elements (2(f − y) for "sum" and "none").
    """
    return (f - y) ** 2


def _mse_grad(f, y):
    return 2 * (f - y)


mean_squared_error = Loss("mean_squared_error", *per_item(_mse, _mse_grad, count_elements),
                          check_same_shape("mean_squared_error"))


def _l1(f, y):
    """Mean absolute error mean|f − y| over all elements (torch l1_loss); "none": |f − y| per
    element. Gradient sign(f − y)/n (0 at f = y), sign(f − y) for "sum" and "none"."""
    d = f - y
    return jnp.sign(d) * d  # |d| written so that autodiff also gives sign(d), 0 at 0


def _l1_grad(f, y):
    return jnp.sign(f - y)


def _l1_branches(f, y):
    return jnp.sign(f - y)


l1 = Loss("l1", *per_item(_l1, _l1_grad, count_elements), check_same_shape("l1"), _l1_branches)


def _half_squared_error(f, y):
    """The notes' quadratic cost C = (1/2n) Σₓ ‖y(x) − a(x)‖²: ½‖f − y‖² per example, averaged
    over the batch.

    outputs and targets (batch, …) of one shape; the norm runs over every axis but the first
    (a (batch,) array: one number per example). reduction="none": ½‖f − y‖² per example, (batch,).
    Gradient: ∂C/∂f = (f − y)/n, n the batch size ((f − y) for "sum" and "none").

    >>> float(half_squared_error(jnp.array([[1.0, 2.0], [0.0, 0.0]]), jnp.zeros((2, 2))))
    1.25
    """
    return 0.5 * jnp.sum((f - y) ** 2, axis=tuple(range(1, f.ndim)))


def _half_squared_error_grad(f, y):
    return f - y


def _check_batched(name):
    return check_same_shape(name, "(batch, …) with a batch axis")


half_squared_error = Loss("half_squared_error",
                          *per_item(_half_squared_error, _half_squared_error_grad,
                                    lambda f: f.shape[0]),
                          _check_batched("half_squared_error"))
