"""Where `fn.gradcheck.check` compares gradients: the given point, and points moved away from it.

A bug whose effect is zero at one point survives a check made there: `dy / scale` for
`dy * scale` at BatchNorm's initial scale = 1, a wrong derivative on the flat side of a ReLU
whose unit is off for every example, a hinge threshold that no margin of the batch reaches. So
`check` also runs at points moved off the special values of an initialisation:

- point 0: the parameters, data and key as given;
- point k ≥ 1: every floating parameter leaf moved by θ' = θ + σ·s·n, n ~ N(0, 1) entrywise,
  σ = `perturbation` (0.5), s = the leaf's root mean square (1 for an all-zero leaf, such as
  a fresh bias); stochastic layers draw from `jax.random.fold_in(key, k)`;
- point k ≥ 2 also redraws the data: x' = c·(x + σ·s_x·n) for a floating x (s_x: x's root
  mean square, 1 if x is zero), c = −½ at even k (point 2: reflected through zero and halved,
  so that a unit the given data turns off — a ReLU on the input — or saturates — a HardTanh
  beyond ±1 — sees its other side or its range) and c = 1 at odd k; and the targets rolled by
  one example, y' = roll(y, 1, axis=0), so that every example meets another's target (integer
  inputs, e.g. token ids, are kept).

The draws come from `numpy.random.default_rng((seed, k))`: a check is reproducible, and a
different `seed` gives different points. The state (running statistics) is used as given.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Point", "check_points", "is_floating"]


@dataclasses.dataclass(frozen=True)
class Point:
    """One place where the gradients are compared: parameters, data, key and how they were made."""

    index: int
    description: str
    params: Any
    x: Any
    y: Any
    key: Any


def is_floating(leaf) -> bool:
    return jnp.issubdtype(jnp.result_type(leaf), jnp.floating)


def _moved(tree, rng, sigma, factor=1.0):
    """Every floating leaf plus σ·rms(leaf)·N(0, 1) (σ·N(0, 1) for an all-zero leaf), times
    `factor`."""

    def move(leaf):
        if not is_floating(leaf) or np.size(leaf) == 0:
            return leaf
        values = np.asarray(leaf)
        scale = float(np.sqrt(np.mean(values * values))) or 1.0
        noise = rng.standard_normal(values.shape)
        return jnp.asarray(factor * (values + sigma * scale * noise), values.dtype)

    return jax.tree.map(move, tree)


def _rolled(tree):
    """Every leaf with a batch axis rolled by one example."""
    return jax.tree.map(lambda leaf: jnp.roll(leaf, 1, axis=0) if jnp.ndim(leaf) else leaf, tree)


def check_points(params, x, y, key, *, count: int = 3, seed: int = 0,
                 perturbation: float = 0.5) -> list[Point]:
    """The `count` points of a check, as the module docstring defines them."""
    if not (isinstance(count, int) and count >= 1):
        raise ValueError(f"gradcheck.check: expected points to be a positive int, received "
                         f"{count!r}")
    points = [Point(0, "the given parameters, data and key", params, x, y, key)]
    for k in range(1, count):
        rng = np.random.default_rng((seed, k))
        moved = _moved(params, rng, perturbation)
        if k == 1:
            points.append(Point(k, f"parameters moved by {perturbation:g}·rms·N(0, 1), key "
                                   f"fold_in(key, {k})", moved, x, y, jax.random.fold_in(key, k)))
        else:
            factor = -0.5 if k % 2 == 0 else 1.0
            data = "−½(x + noise)" if factor < 0 else "x + noise"
            points.append(Point(k, f"parameters moved (draw {k}), data redrawn ({data}, targets "
                                   f"rolled by one), key fold_in(key, {k})", moved,
                                _moved(x, rng, perturbation, factor), _rolled(y),
                                jax.random.fold_in(key, k)))
    return points
