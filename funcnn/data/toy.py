"""Small real and synthetic datasets: the UCI 8×8 digits and the cs231n spiral."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.nn.core import is_positive_int

__all__ = ["digits", "spiral"]

DIGITS_TEST_EVERY = 5  # digits(split="test") is every fifth image: 360 of the 1797 (20 %)


def digits(split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The UCI handwritten digits bundled with scikit-learn: 1797 real 8×8 images, 10 classes.

    Returns images float32 (n, 8, 8, 1) in [0, 1] and labels int32 (n,). `split=None` gives all
    1797 in scikit-learn's order; "test" every fifth image from the first (360), "train" the other
    1437. Not the last 360: the bundled order runs writer by writer, and a model that reaches
    97–99 % on a held-out part of the first 1437 scores 91 % on the last 360, people it never saw.
    Needs scikit-learn (the `examples` extra), which ships the data: no download.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("digits() needs scikit-learn, which bundles the data: "
                          "pip install 'funcnn[examples]' (or scikit-learn)") from error
    bunch = load_digits()
    images = (bunch.images[..., None] / 16.0).astype(np.float32)
    labels = bunch.target.astype(np.int32)
    if split not in (None, "train", "test"):
        raise ValueError(f"digits: expected split None, 'train' or 'test', received {split!r}")
    if split is None:
        return images, labels
    chosen = (np.arange(len(labels)) % DIGITS_TEST_EVERY == 0) == (split == "test")
    return images[chosen], labels[chosen]


def spiral(key, points_per_class: int = 100, classes: int = 3, noise: float = 0.2):
    """The cs231n spiral: `classes` interleaved arms in 2-D, not linearly separable.

    Arm j: radius r ∈ linspace(0, 1), angle θ = linspace(4j, 4(j+1)) + noise·N(0, 1);
    x = (r sin θ, r cos θ). Returns float32 (points_per_class·classes, 2), int32 labels.
    """
    for name, value in (("points_per_class", points_per_class), ("classes", classes)):
        if not is_positive_int(value):
            raise ValueError(f"spiral: expected {name} to be an int ≥ 1, received {value!r}")
    if not (isinstance(noise, (int, float, np.number)) and 0 <= noise < math.inf):
        raise ValueError(f"spiral: expected noise to be a finite number ≥ 0, received {noise!r}")
    radius = jnp.tile(jnp.linspace(0.0, 1.0, points_per_class), classes)
    labels = jnp.repeat(jnp.arange(classes, dtype=jnp.int32), points_per_class)
    start = jnp.linspace(0.0, 4.0, points_per_class)
    theta = (jnp.tile(start, classes) + 4.0 * labels.astype(start.dtype)
             + noise * jax.random.normal(key, radius.shape))
    points = jnp.stack([radius * jnp.sin(theta), radius * jnp.cos(theta)], axis=1)
    return np.asarray(points, np.float32), np.asarray(labels)
