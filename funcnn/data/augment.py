"""Data augmentation as pure, jittable functions `f(key, images, ...) -> images` on NHWC batches.

The notes' "expand the training set": small random shifts, rotations and elastic distortions
(Simard et al. 2003) of the training images, drawn afresh each epoch from an explicit key.
Every image gets its own random draw; pixels sampled from outside the image are 0 (background).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

__all__ = ["elastic_distortion", "gaussian_noise", "random_rotation", "random_shift", "rotate"]


def _check_images(name, images):
    if images.ndim != 4:
        raise ValueError(f"{name}: expected images of shape (batch, height, width, channels), "
                         f"received shape {tuple(images.shape)}")


def _resample(image, rows, cols):
    """Bilinear sample of one (H, W, C) image at float coordinates (H, W); outside is 0."""
    return jax.vmap(lambda channel: map_coordinates(channel, [rows, cols], order=1, mode="constant",
                                                    cval=0.0), in_axes=2, out_axes=2)(image)


def random_shift(key, images, max_shift: int = 2):
    """Translate each image by integers (dy, dx) ∈ [−max_shift, max_shift]², filling with 0."""
    _check_images("random_shift", images)
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * max_shift + 1)
    crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, c))
    return jax.vmap(crop)(padded, offsets)


def rotate(images, angles):
    """Rotate image i about its centre by angles[i] radians, bilinear; a positive angle turns
    the image clockwise as displayed (row 0 at the top): π/2 equals np.rot90(k=−1)."""
    _check_images("rotate", images)
    _, h, w, _ = images.shape
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - (h - 1) / 2,
                              jnp.arange(w, dtype=jnp.float32) - (w - 1) / 2,
                              indexing="ij")

    def one(image, angle):
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        return _resample(image, cos * rows - sin * cols + (h - 1) / 2,
                         sin * rows + cos * cols + (w - 1) / 2)

    return jax.vmap(one)(images, angles)


def random_rotation(key, images, max_degrees: float = 10.0):
    """Rotate each image about its centre by an angle ∈ [−max_degrees, max_degrees] (bilinear)."""
    _check_images("random_rotation", images)
    unit = jax.random.uniform(key, (images.shape[0],), minval=-1.0, maxval=1.0)
    return rotate(images, unit * math.radians(max_degrees))


def _gaussian_blur(field, sigma):
    """Separable Gaussian smoothing of a (H, W) field, radius 3σ, zero padding."""
    radius = max(1, int(3 * sigma))
    taps = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1, dtype=field.dtype) / sigma) ** 2)
    taps = taps / jnp.sum(taps)
    blur = lambda line: jnp.convolve(jnp.pad(line, radius), taps, mode="valid")
    blur_rows = jax.vmap(blur, in_axes=1, out_axes=1)
    blur_cols = jax.vmap(blur)
    return blur_cols(blur_rows(field))


def elastic_distortion(key, images, alpha: float = 8.0, sigma: float = 3.0):
    """Simard's elastic distortion: displacement fields U(−1, 1) per pixel, smoothed by a
    Gaussian of width σ and scaled by α pixels, then bilinear resampling."""
    _check_images("elastic_distortion", images)
    n, h, w, _ = images.shape
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                              indexing="ij")

    def distort(image, k):
        dy, dx = jax.random.uniform(k, (2, h, w), minval=-1.0, maxval=1.0)
        return _resample(image, rows + alpha * _gaussian_blur(dy, sigma),
                         cols + alpha * _gaussian_blur(dx, sigma))

    return jax.vmap(distort)(images, jax.random.split(key, n))


def gaussian_noise(key, images, stddev: float = 0.05):
    """Add N(0, stddev²) noise to every pixel."""
    return images + stddev * jax.random.normal(key, images.shape, images.dtype)
