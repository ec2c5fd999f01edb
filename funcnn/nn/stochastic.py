"""Stochastic regularising layers, `Dropout` and `DropConnect`, and Monte-Carlo dropout.

Both layers draw their mask from the `key` passed to `apply`/`forward` when `train=True` (and
raise a `ValueError` without one), keep each unit/weight with probability 1 − rate and scale the
kept ones by 1/(1 − rate) ("inverted" dropout), so that nothing changes at evaluation time;
`Dropout(rate, mode="vanilla")` is the notes' first form instead: an unscaled mask in training,
activations multiplied by the keep probability 1 − rate at evaluation. The mask is a residual:
backward multiplies by the very mask the forward pass used. `mc_predict` averages T stochastic
forward passes at prediction time (Gal & Ghahramani's Monte-Carlo dropout).
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from funcnn import init as initializers
from funcnn.nn.core import (Layer, check_entry, check_floating, check_in_shape, check_key,
                            check_last_dim, is_positive_int)
from funcnn.nn.dense import affine, affine_backward
from funcnn.values import value_factory

__all__ = ["DropConnect", "Dropout", "mc_predict"]


def _check_rate(name: str, rate) -> float:
    if not (isinstance(rate, numbers.Real) and not isinstance(rate, bool) and 0 <= rate < 1):
        raise ValueError(f"{name}: expected a drop rate in [0, 1), received {rate!r}")
    return float(rate)


def _scaled_mask(key, rate: float, shape, dtype, scale=None):
    """Bernoulli(1 − rate) mask with the kept entries `scale` (default 1/(1 − rate): E[mask] = 1)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    scale = 1.0 / (1.0 - rate) if scale is None else scale
    return jnp.where(keep, jnp.asarray(scale, dtype), jnp.zeros((), dtype))


_MODES = ("inverted", "vanilla")


@value_factory
def Dropout(rate: float, mode: str = "inverted") -> Layer:
    """Dropout; `rate` is the probability of dropping a unit, m ~ Bernoulli(1 − rate) per element.

    mode="inverted" (default): y = x ⊙ m/(1 − rate) in training, y = x at eval.
    mode="vanilla" (the notes' first form): y = x ⊙ m in training, y = (1 − rate)·x at eval.
    Both have the same expectation: E[train output] = eval output, since E[m] = 1 − rate.
    Any input shape; one independent mask entry per element. Backward: ∂L/∂x = δ ⊙ m/(1 − rate)
    (inverted) or δ ⊙ m (vanilla) with the forward pass's mask; at eval δ, or (1 − rate)·δ.

    >>> y, _ = Dropout(0.5).apply({}, {}, x, key=jax.random.key(0), train=True)
    """
    rate = _check_rate("Dropout", rate)
    if mode not in _MODES:
        raise ValueError(f"Dropout: expected mode 'inverted' or 'vanilla', received {mode!r}")
    vanilla = mode == "vanilla"
    keep = 1.0 - rate

    def init(key, in_shape):
        del key, in_shape
        return {}, {}

    def forward(params, state, x, *, key=None, train=False):
        del params
        check_floating("Dropout", x)
        check_key("Dropout", key, train)
        if not train:
            return (x * keep if vanilla else x), state, ()
        mask = _scaled_mask(key, rate, x.shape, x.dtype, 1.0 if vanilla else None)
        return x * mask, state, mask

    def backward(params, mask, dy):
        del params
        if isinstance(mask, tuple):   # evaluation
            return {}, dy * keep if vanilla else dy
        return {}, dy * mask

    return Layer("Dropout", init, forward, backward)


@value_factory
def DropConnect(out: int, rate: float, w_init=initializers.lecun_normal,
                b_init=initializers.zeros) -> Layer:
    """Dense layer with randomly dropped weights (Wan et al. 2013): z = x·(W ⊙ M) + b.

    In training M ~ Bernoulli(1 − rate) / (1 − rate), one entry per weight (the bias is not
    masked); at eval M = 1, a plain `Dense`. x: (batch, ..., in); params {"w": (in, out),
    "b": (out,)} as `Dense`. Backward: ∂L/∂W = (xᵀδ) ⊙ M, ∂L/∂b = Σ δ, ∂L/∂x = δ (W ⊙ M)ᵀ.
    """
    if not is_positive_int(out):
        raise ValueError(f"DropConnect: expected a positive int number of outputs, received "
                         f"{out!r}")
    out, rate = int(out), _check_rate("DropConnect", rate)

    def init(key, in_shape):
        w_key, b_key = jax.random.split(key)
        fan_in = check_in_shape("DropConnect", in_shape, 1)[-1]
        return {"w": w_init(w_key, (fan_in, out)), "b": b_init(b_key, (out,))}, {}

    def output_shape(in_shape):
        return tuple(in_shape[:-1]) + (out,)

    def forward(params, state, x, *, key=None, train=False):
        w = check_entry("DropConnect", "params", params, "w", ("in", out))
        check_last_dim("DropConnect", x, w.shape[0])
        b = check_entry("DropConnect", "params", params, "b", (out,))
        check_key("DropConnect", key, train)
        mask = _scaled_mask(key, rate, w.shape, w.dtype) if train else ()
        return affine(x, w * mask if train else w, b), state, (x, mask)

    def backward(params, residuals, dz):
        x, mask = residuals
        if isinstance(mask, tuple):   # evaluation: a plain Dense
            return affine_backward(params, x, dz)
        grads, dx = affine_backward({**params, "w": params["w"] * mask}, x, dz)
        return {**grads, "w": grads["w"] * mask}, dx

    return Layer("DropConnect", init, forward, backward, output_shape)


def mc_predict(model, params, state, x, *, key, samples: int = 32, transform=None,
               return_std: bool = False):
    """Monte-Carlo dropout (Gal & Ghahramani 2016): the mean of T stochastic forward passes.

    ŷ = (1/T) Σₜ g(f(x; mₜ)), t = 1 … T = `samples`, each pass `model.apply(..., train=True)`
    with its own dropout masks, keyed by `jax.random.split(key, T)[t]` and vmapped; g is
    `transform` (e.g. `fn.nn.softmax`, to average probabilities rather than logits; default the
    identity). With `return_std=True` returns `(ŷ, s)`, s = √((1/T) Σₜ (g(f(x; mₜ)) − ŷ)²) the
    spread of the passes, a per-output uncertainty. Every layer runs in training mode and the
    returned state is discarded: a `BatchNorm` would normalise with the statistics of `x`, so
    use it on models whose only train-time difference is dropout. Jittable with `model`,
    `samples`, `transform` and `return_std` fixed.

    >>> model = nn.serial(nn.Dense(8), nn.Relu(), nn.Dropout(0.5), nn.Dense(2))
    >>> params, state = model.init(jax.random.key(0), (3,))
    >>> mean, std = nn.mc_predict(model, params, state, jnp.ones((4, 3)), key=jax.random.key(1),
    ...                           samples=16, return_std=True)
    >>> mean.shape, std.shape
    ((4, 2), (4, 2))
    """
    if key is None:
        raise ValueError("mc_predict: expected a PRNG key for the dropout masks, received None")
    if not is_positive_int(samples):
        raise ValueError(f"mc_predict: expected a positive int number of samples, received "
                         f"{samples!r}")
    g = (lambda y: y) if transform is None else transform

    def one(k):
        return jax.tree.map(g, model.apply(params, state, x, key=k, train=True)[0])

    draws = jax.vmap(one)(jax.random.split(key, int(samples)))
    mean = jax.tree.map(lambda d: jnp.mean(d, axis=0), draws)
    if not return_std:
        return mean
    return mean, jax.tree.map(lambda d: jnp.std(d, axis=0), draws)
