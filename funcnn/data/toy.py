"""Small real and synthetic datasets: the UCI 8×8 digits and the cs231n spiral."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

DIGITS_TEST = 360  # digits(split="test") is the last 360 of the 1797 images (20 %)


def digits(split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The UCI handwritten digits bundled with scikit-learn: 1797 real 8×8 images, 10 classes.

    Returns images float32 (n, 8, 8, 1) in [0, 1] and labels int32 (n,). `split=None` gives all
    1797; "train" the first 1437, "test" the last 360 (a fixed, documented split).
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
    parts = {None: slice(None), "train": slice(None, -DIGITS_TEST), "test": slice(-DIGITS_TEST, None)}
    if split not in parts:
        raise ValueError(f"digits: expected split None, 'train' or 'test', received {split!r}")
    return images[parts[split]], labels[parts[split]]


def spiral(key, points_per_class: int = 100, classes: int = 3, noise: float = 0.2):
    """The cs231n spiral: `classes` interleaved arms in 2-D, not linearly separable.

    Arm j: radius r ∈ linspace(0, 1), angle θ = linspace(4j, 4(j+1)) + noise·N(0, 1);
    x = (r sin θ, r cos θ). Returns float32 (points_per_class·classes, 2), int32 labels.
    """
    radius = jnp.tile(jnp.linspace(0.0, 1.0, points_per_class), classes)
    labels = jnp.repeat(jnp.arange(classes, dtype=jnp.int32), points_per_class)
    start = jnp.linspace(0.0, 4.0, points_per_class)
    theta = (jnp.tile(start, classes) + 4.0 * labels.astype(start.dtype)
             + noise * jax.random.normal(key, radius.shape))
    points = jnp.stack([radius * jnp.sin(theta), radius * jnp.cos(theta)], axis=1)
    return np.asarray(points, np.float32), np.asarray(labels)
