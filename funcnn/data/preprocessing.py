"""Preprocessing as pure fit/transform pairs, fitted on the training split only.

Each `fit_*` function takes the training inputs (batch, …) and returns a fitted transform: an
immutable pytree of statistics (jit/vmap/checkpoint like any other) that is called on any split,
`prep(x)`. Statistics are per feature, every axis but the batch axis flattened into one.
`split(fit, train, *others)` fits on `train` alone and transforms every split, so statistics of a
validation or test set can never leak into the fit.

    prep, train_x, test_x = fn.data.split(fn.data.fit_zca_whitening, train_x, test_x)
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp

from funcnn.nn.core import is_positive_int

__all__ = ["MeanSubtraction", "MinMax", "Projection", "Standardization", "ZcaWhitening",
           "fit_mean_subtraction", "fit_min_max", "fit_pca", "fit_pca_whitening",
           "fit_standardization", "fit_zca_whitening", "split"]


def _features(x):
    """(batch, …) real → (batch, features) in float32 (float64 stays float64)."""
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"preprocessing: expected inputs of shape (batch, ...features), received "
                         f"shape {tuple(x.shape)}")
    if jnp.iscomplexobj(x):
        raise TypeError(f"preprocessing: expected real inputs (float, int or bool), received "
                        f"dtype {x.dtype}")
    dtype = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
    return x.reshape(x.shape[0], math.prod(x.shape[1:])).astype(dtype)


def _training(name, train):
    """The training inputs as (batch, features), refusing an empty batch (no statistics)."""
    f = _features(train)
    if f.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one training example, received inputs of "
                         f"shape {tuple(jnp.shape(train))}")
    return f


def _check_features(name, x, expected):
    if x.shape[1] != expected:
        raise ValueError(f"{name}: fitted on {expected} features, received inputs with "
                         f"{x.shape[1]} features")


class MeanSubtraction(NamedTuple):
    """x − μ, μ (features,) the training mean of each feature: its own (per="pixel"), its
    channel's (per="channel") or the one global mean (per="global"), see `fit_mean_subtraction`."""

    mean: jnp.ndarray

    def __call__(self, x):
        f = _features(x)
        _check_features("MeanSubtraction", f, self.mean.shape[0])
        return (f - self.mean[None, :]).reshape(jnp.shape(x))


class Standardization(NamedTuple):
    """(x − μ) / σ per feature; features with σ < eps are only centred."""

    mean: jnp.ndarray
    std: jnp.ndarray

    def __call__(self, x):
        f = _features(x)
        _check_features("Standardization", f, self.mean.shape[0])
        return ((f - self.mean[None, :]) / self.std[None, :]).reshape(jnp.shape(x))


class MinMax(NamedTuple):
    """Affine map of each feature's training range [min, max] onto [low, high]."""

    low_in: jnp.ndarray
    scale: jnp.ndarray
    low: float

    def __call__(self, x):
        f = _features(x)
        _check_features("MinMax", f, self.low_in.shape[0])
        return (self.low + (f - self.low_in[None, :]) * self.scale[None, :]).reshape(jnp.shape(x))


def _project(name, x, mean, basis, scale):
    f = _features(x)
    _check_features(name, f, mean.shape[0])
    return ((f - mean[None, :]) @ basis) * scale[None, :]


class Projection(NamedTuple):
    """PCA (scale 1) or PCA whitening (scale 1/√(λ + ε)): y = (x − μ) U_k diag(scale), (batch, k).

    U_k (features, k) holds the training covariance's leading eigenvectors.
    """

    mean: jnp.ndarray
    basis: jnp.ndarray
    scale: jnp.ndarray

    def __call__(self, x):
        return _project("Projection", x, self.mean, self.basis, self.scale)


class ZcaWhitening(NamedTuple):
    """ZCA whitening: y = (x − μ) U diag(1/√(λ + ε)) Uᵀ, in the input's shape."""

    mean: jnp.ndarray
    basis: jnp.ndarray
    scale: jnp.ndarray

    def __call__(self, x):
        white = _project("ZcaWhitening", x, self.mean, self.basis, self.scale)
        return (white @ self.basis.T).reshape(jnp.shape(x))


_MEAN_FORMS = ("pixel", "channel", "global")


def fit_mean_subtraction(train, per: str = "pixel") -> MeanSubtraction:
    """Subtract the training mean in one of the notes' three forms; train: (batch, …, channels).

    per="pixel" (default): μ[f] = (1/N) Σₙ x[n, f] for every feature f (every axis but the batch:
    the "mean image"); per="channel": μ[c] = mean of x[n, …, c] over the batch and every axis but
    the last (one mean per colour channel, as VGG); per="global": one mean of every entry. The
    fitted μ is stored per feature (a channel's mean repeated at each of its pixels), so the
    transform is x − μ for each form, and applies to inputs of the training inputs' shape.
    """
    if per not in _MEAN_FORMS:
        raise ValueError(f"fit_mean_subtraction: expected per='pixel', 'channel' or 'global', "
                         f"received {per!r}")
    f = _training("fit_mean_subtraction", train)
    if per == "pixel":
        return MeanSubtraction(jnp.mean(f, axis=0))
    shape = jnp.shape(train)[1:]
    channels = shape[-1] if per == "channel" else 1
    mean = jnp.mean(f.reshape(-1, channels), axis=0)          # (channels,) or (1,)
    pixels = f.shape[1] // channels
    return MeanSubtraction(jnp.tile(mean, pixels))


def fit_standardization(train, eps=1e-8) -> Standardization:
    """Zero mean, unit variance per feature (population σ); σ < eps is left at 1."""
    f = _training("fit_standardization", train)
    std = jnp.std(f, axis=0)
    return Standardization(jnp.mean(f, axis=0), jnp.where(std < eps, 1.0, std))


def fit_min_max(train, low=-1.0, high=1.0) -> MinMax:
    """Map each feature's training range onto [low, high] (default [−1, 1]); constant
    features map to `low`."""
    f = _training("fit_min_max", train)
    lo, hi = jnp.min(f, axis=0), jnp.max(f, axis=0)
    width = jnp.where(hi > lo, hi - lo, 1.0)
    return MinMax(lo, (high - low) / width, low)


def _eigen(name, train):
    f = _training(name, train)
    mean = jnp.mean(f, axis=0)
    centred = f - mean[None, :]
    covariance = centred.T @ centred / f.shape[0]
    values, vectors = jnp.linalg.eigh(covariance)          # ascending
    return mean, jnp.maximum(values[::-1], 0.0), vectors[:, ::-1]


def _check_k(k, features):
    if k is not None and not (is_positive_int(k) and k <= features):
        raise ValueError(f"PCA: expected 1 ≤ k ≤ {features} components, received k={k}")


def fit_pca(train, k=None) -> Projection:
    """Project onto the top-k principal components: y = (x − μ) U_k, shape (batch, k)."""
    mean, values, vectors = _eigen("fit_pca", train)
    _check_k(k, mean.shape[0])
    basis = vectors[:, :k]
    return Projection(mean, basis, jnp.ones(basis.shape[1], basis.dtype))


def fit_pca_whitening(train, k=None, eps=1e-5) -> Projection:
    """PCA whitening: y = (x − μ) U_k / √(λ_k + ε) — decorrelated, unit-variance components."""
    mean, values, vectors = _eigen("fit_pca_whitening", train)
    _check_k(k, mean.shape[0])
    return Projection(mean, vectors[:, :k], 1.0 / jnp.sqrt(values[:k] + eps))


def fit_zca_whitening(train, eps=1e-5) -> ZcaWhitening:
    """ZCA whitening: y = (x − μ) U diag(1/√(λ + ε)) Uᵀ — whitened but closest to the input,
    in the input's shape."""
    mean, values, vectors = _eigen("fit_zca_whitening", train)
    return ZcaWhitening(mean, vectors, 1.0 / jnp.sqrt(values + eps))


def split(fit, train, *others, **options):
    """Fit on `train` only, then transform it and every other split: (prep, train', *others')."""
    prep = fit(train, **options)
    return (prep, prep(train)) + tuple(prep(x) for x in others)
