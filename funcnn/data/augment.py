"""Data augmentation as pure, jittable functions `f(key, images, ...) -> images` on NHWC batches.

The notes' "expand the training set": small random shifts, crops, flips, zooms, rotations and
elastic distortions (Simard et al. 2003) of the training images, drawn afresh each epoch from an
explicit key. Every image gets its own random draw; pixels sampled from outside the image are 0
(background). Deterministic counterparts (`rotate`, `zoom`) take one parameter per image.
"""
from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

__all__ = ["elastic_distortion", "gaussian_noise", "random_crop", "random_flip", "random_rotation",
           "random_shift", "random_zoom", "rotate", "zoom"]


def _check_images(name, images):
    if images.ndim != 4:
        raise ValueError(f"{name}: expected images of shape (batch, height, width, channels), "
                         f"received shape {tuple(images.shape)}")


def _check_per_image(name, what, values, images):
    if jnp.shape(values) != (images.shape[0],):
        raise ValueError(f"{name}: expected one {what} per image, shape ({images.shape[0]},), "
                         f"received shape {tuple(jnp.shape(values))}")


def _is_int(value, low=0) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def _resample(image, rows, cols):
    """Bilinear sample of one (H, W, C) image at float coordinates (H, W); outside is 0."""
    return jax.vmap(lambda channel: map_coordinates(channel, [rows, cols], order=1, mode="constant",
                                                    cval=0.0), in_axes=2, out_axes=2)(image)


def _centred_grid(h, w, dtype):
    """Row and column coordinates (H, W) measured from the image centre ((h − 1)/2, (w − 1)/2)."""
    return jnp.meshgrid(jnp.arange(h, dtype=dtype) - (h - 1) / 2,
                        jnp.arange(w, dtype=dtype) - (w - 1) / 2, indexing="ij")


def _coordinate_dtype(images):
    """Sampling coordinates in float64 for float64 images, else float32 (bfloat16 is too coarse)."""
    return jnp.float64 if images.dtype == jnp.float64 else jnp.float32


def random_shift(key, images, max_shift: int = 2):
    """Translate each image by integers (dy, dx) ∈ [−max_shift, max_shift]², filling with 0:
    `random_crop(key, images, padding=max_shift)`."""
    _check_images("random_shift", images)
    return random_crop(key, images, padding=max_shift)


def random_crop(key, images, size=None, padding: int = 0):
    """A random (h′, w′) window of each image zero-padded by `padding` pixels on every side.

    y_i = pad(x_i)[oy : oy + h′, ox : ox + w′], offsets (oy, ox) uniform over the
    (h + 2p − h′ + 1)(w + 2p − w′ + 1) positions; `size` an int or (h′, w′), default the input's
    (h, w): with padding 4 the standard CIFAR augmentation, a translation by up to 4 pixels.
    """
    _check_images("random_crop", images)
    n, h, w, c = images.shape
    if not _is_int(padding):
        raise ValueError(f"random_crop: expected a non-negative int padding, received {padding!r}")
    size = (h, w) if size is None else (size, size) if _is_int(size, 1) else size
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(_is_int(d, 1) for d in size)
            and size[0] <= h + 2 * padding and size[1] <= w + 2 * padding):
        raise ValueError(f"random_crop: expected a crop size (height, width) of positive ints at "
                         f"most the padded image's ({h + 2 * padding}, {w + 2 * padding}), "
                         f"received {size!r}")
    ch, cw = size
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    ranges = (h + 2 * padding - ch + 1, w + 2 * padding - cw + 1)
    offsets = jax.random.randint(key, (n, 2), 0, ranges[0] if ranges[0] == ranges[1]
                                 else jnp.broadcast_to(jnp.asarray(ranges), (n, 2)))
    crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (ch, cw, c))
    return jax.vmap(crop)(padded, offsets)


def random_flip(key, images, *, horizontal: bool = True, vertical: bool = False,
                probability: float = 0.5):
    """Mirror each image left–right (x[:, ::-1], when `horizontal`) and, independently, top–bottom
    (x[::-1, :], when `vertical`), each with `probability`. Not for digits: a mirrored 2 is no 2."""
    _check_images("random_flip", images)
    if not (isinstance(probability, numbers.Real) and 0 <= probability <= 1):
        raise ValueError(f"random_flip: expected a probability in [0, 1], received "
                         f"{probability!r}")
    flips = jax.random.bernoulli(key, probability, (2, images.shape[0], 1, 1, 1))
    if vertical:
        images = jnp.where(flips[1], jnp.flip(images, axis=1), images)
    if horizontal:
        images = jnp.where(flips[0], jnp.flip(images, axis=2), images)
    return images


def zoom(images, scales):
    """Scale image i about its centre by scales[i], bilinear, keeping its (h, w): output pixel
    (r, c) samples the input at (r₀ + (r − r₀)/s, c₀ + (c − c₀)/s), (r₀, c₀) the centre; s > 1
    zooms in (magnifies), s < 1 zooms out (the border fills with 0), s = 1 is the identity."""
    _check_images("zoom", images)
    _check_per_image("zoom", "scale", scales, images)
    _, h, w, _ = images.shape
    dtype = _coordinate_dtype(images)
    rows, cols = _centred_grid(h, w, dtype)
    scales = jnp.asarray(scales, dtype)

    def one(image, s):
        return _resample(image, rows / s + (h - 1) / 2, cols / s + (w - 1) / 2)

    return jax.vmap(one)(images, scales)


def random_zoom(key, images, min_scale: float = 0.9, max_scale: float = 1.1):
    """Zoom each image about its centre by a factor uniform in [min_scale, max_scale] (`zoom`)."""
    _check_images("random_zoom", images)
    if not (isinstance(min_scale, numbers.Real) and isinstance(max_scale, numbers.Real)
            and 0 < min_scale <= max_scale):
        raise ValueError(f"random_zoom: expected 0 < min_scale ≤ max_scale, received "
                         f"min_scale={min_scale!r}, max_scale={max_scale!r}")
    dtype = _coordinate_dtype(images)
    scales = jax.random.uniform(key, (images.shape[0],), dtype, min_scale, max_scale)
    return zoom(images, scales)


def rotate(images, angles):
    """Rotate image i about its centre by angles[i] radians, bilinear; a positive angle turns
    the image clockwise as displayed (row 0 at the top): π/2 equals np.rot90(k=−1)."""
    _check_images("rotate", images)
    _, h, w, _ = images.shape
    rows, cols = _centred_grid(h, w, jnp.float32)

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
