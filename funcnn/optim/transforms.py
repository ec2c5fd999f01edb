"""Building blocks of optimizers: each update rule is written for one array and lifted once.

Chain them with `fn.optim.chain`; every alias (`sgd`, `adam`, ...) is such a chain. Updates are
what `apply_updates` adds to the parameters, so a descent step ends with
`scale_by_learning_rate` (u = −α·direction). A hyper-parameter documented as "float or
schedule" may be a function t -> value of the update count t = 0, 1, 2, ... (see
`fn.optim.schedules`); transforms holding one keep `count` in their state.

Order in a chain: direction (trace / adagrad / rms / adam), then decoupled decay, then the
learning rate; transforms that read the parameters the step leads to (`l1_shrinkage`,
`project_max_norm`, `ema`, `polyak`) come last, because they look at params + updates.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp

from funcnn.optim.base import (
    EmptyState, GradientTransformation, all_finite, lift, require_params, resolve_mask,
    weights_only)
from funcnn.optim.schedules import Schedule
from funcnn.values import value_factory

__all__ = ["AccumulateState", "AdagradState", "AdamState", "CountState", "EmaState", "RmsState",
           "SkipState", "TraceState", "accumulate_gradients", "add_decayed_weights",
           "averaged_params", "clip_by_global_norm", "ema", "l1_shrinkage", "polyak",
           "project_max_norm", "scale_by_adagrad", "scale_by_adam", "scale_by_learning_rate",
           "scale_by_rms", "skip_not_finite", "trace"]

ScalarOrSchedule = Union[float, Schedule]


def _at(hyper: ScalarOrSchedule, count):
    """A hyper-parameter's value at update `count`: `hyper(count)` for a schedule, else `hyper`."""
    return hyper(count) if callable(hyper) else hyper


def _zero_count():
    return jnp.zeros([], jnp.int32)


def _schedule_state(*hypers):
    """A `CountState` when a hyper-parameter is a schedule (it reads the count), else none: a
    counter no one reads would cost a kernel and a buffer per step."""
    return CountState(_zero_count()) if any(map(callable, hypers)) else EmptyState()


def _counted(state):
    """The state after one more update."""
    return CountState(state.count + 1) if isinstance(state, CountState) else state


def _cast(x, like):
    """A (possibly traced, possibly float64) scalar in the dtype of array `like`."""
    return jnp.asarray(x, like.dtype)


def _real(count):
    """An integer count as a float of the default precision (for β^t and t/(t+1))."""
    return jnp.asarray(count, jnp.result_type(float))


class CountState(NamedTuple):
    """The state of a transform whose only memory is how many updates it has made."""

    count: jax.Array


@value_factory
def scale_by_learning_rate(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    """Descent step: u = −α_t·g, α a float or schedule; t = 0 for the first update."""
    def init(params):
        del params
        return _schedule_state(learning_rate)

    def update(updates, state, params=None, **extra):
        lr = _at(learning_rate, getattr(state, "count", None))
        updates = jax.tree.map(lambda g: -_cast(lr, g) * g, updates)
        return updates, _counted(state)

    return GradientTransformation(init, update)


class TraceState(NamedTuple):
    count: jax.Array
    trace: Any      # the velocity v, like params


@value_factory
def trace(decay: ScalarOrSchedule, nesterov: bool = False, ema: bool = False
          ) -> GradientTransformation:
    """Momentum: v ← μ_t·v + g (v₀ = 0); output v, or g + μ_t·v with `nesterov`.

    μ (`decay`) is a float or schedule (e.g. `schedules.momentum_ramp`). Followed by
    `scale_by_learning_rate(α)` this is `torch.optim.SGD(momentum=μ, nesterov=..., dampening=0)`.
    `ema=True` is the EMA form v ← μ_t·v + (1−μ_t)·g, output v or (1−μ_t)·g + μ_t·v: for a
    constant μ, (1−μ) times the classical form (the same steps under the learning rate α/(1−μ)).
    """
    def leaf(g, v, mu):
        mu = _cast(mu, g)
        g = (1 - mu) * g if ema else g
        v = mu * v + g
        return (g + mu * v if nesterov else v), v

    def init(params):
        return TraceState(_zero_count(), jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None, **extra):
        mu = _at(decay, state.count)
        updates, velocity = lift(lambda g, v: leaf(g, v, mu), updates, state.trace, outputs=2)
        return updates, TraceState(state.count + 1, velocity)

    return GradientTransformation(init, update)


class AdagradState(NamedTuple):
    sum_of_squares: Any   # G, like params


@value_factory
def scale_by_adagrad(eps: float = 1e-10, initial_accumulator_value: float = 0.0
                     ) -> GradientTransformation:
    """Adagrad: G ← G + g², output g / (√G + ε); as `torch.optim.Adagrad` (lr_decay=0)."""
    def leaf(g, acc):
        acc = acc + g * g
        return g / (jnp.sqrt(acc) + _cast(eps, acc)), acc

    def init(params):
        return AdagradState(jax.tree.map(
            lambda p: jnp.full_like(p, initial_accumulator_value), params))

    def update(updates, state, params=None, **extra):
        updates, acc = lift(leaf, updates, state.sum_of_squares, outputs=2)
        return updates, AdagradState(acc)

    return GradientTransformation(init, update)


class RmsState(NamedTuple):
    mean_square: Any   # s, like params


def _root(v, eps, eps_in_sqrt: bool):
    """√v + ε, or √(v + ε) with `eps_in_sqrt`."""
    eps = _cast(eps, v)
    return jnp.sqrt(v + eps) if eps_in_sqrt else jnp.sqrt(v) + eps


@value_factory
def scale_by_rms(decay: float = 0.99, eps: float = 1e-8, eps_in_sqrt: bool = False
                 ) -> GradientTransformation:
    """RMSProp: s ← ρ·s + (1−ρ)·g² (s₀ = 0), output g / (√s + ε), ε outside the root.

    As `torch.optim.RMSprop(alpha=ρ, eps=ε)`; its `momentum=μ` is this followed by `trace(μ)`.
    `eps_in_sqrt=True` puts ε inside the root: output g / √(s + ε) (Keras, optax's default).
    """
    def leaf(g, s):
        s = _cast(decay, s) * s + _cast(1 - decay, g) * g * g
        return g / _root(s, eps, eps_in_sqrt), s

    def init(params):
        return RmsState(jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None, **extra):
        updates, mean_square = lift(leaf, updates, state.mean_square, outputs=2)
        return updates, RmsState(mean_square)

    return GradientTransformation(init, update)


class AdamState(NamedTuple):
    count: jax.Array
    mu: Any    # first moment m, like params
    nu: Any    # second moment v, like params


@value_factory
def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                  eps_in_sqrt: bool = False, bias_correction: bool = True
                  ) -> GradientTransformation:
    """Adam moments: m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², output m̂ / (√v̂ + ε).

    Bias-corrected m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ) at the t-th update (t = 1, 2, ...), as
    `torch.optim.Adam`. `bias_correction=False`: m̂ = m, v̂ = v (the notes' simplified Adam);
    `eps_in_sqrt=True`: output m̂ / √(v̂ + ε).
    """
    def leaf(g, m, v, t):
        m = _cast(b1, m) * m + _cast(1 - b1, g) * g
        v = _cast(b2, v) * v + _cast(1 - b2, g) * g * g
        m_hat = m / _cast(1 - b1 ** t, m) if bias_correction else m
        v_hat = v / _cast(1 - b2 ** t, v) if bias_correction else v
        return m_hat / _root(v_hat, eps, eps_in_sqrt), m, v

    def init(params):
        # Two separate trees: aliased buffers could not both be donated to a jitted update.
        return AdamState(_zero_count(), jax.tree.map(jnp.zeros_like, params),
                         jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None, **extra):
        t = state.count + 1
        updates, mu, nu = lift(lambda g, m, v: leaf(g, m, v, _real(t)), updates, state.mu,
                               state.nu, outputs=3)
        return updates, AdamState(t, mu, nu)

    return GradientTransformation(init, update)


@value_factory
def add_decayed_weights(weight_decay: ScalarOrSchedule, mask=weights_only
                        ) -> GradientTransformation:
    """Decoupled weight decay: u ← u + λ_t·p on the masked leaves (weights only by default).

    Followed by `scale_by_learning_rate(α)`: p ← p − α_t(u + λ_t·p), the decay of
    `torch.optim.AdamW` (which multiplies λ by the learning rate, schedule included).
    """
    def init(params):
        del params
        return _schedule_state(weight_decay)

    def update(updates, state, params=None, **extra):
        require_params(params, "add_decayed_weights")
        lam = _at(weight_decay, getattr(state, "count", None))
        updates = jax.tree.map(lambda keep, u, p: u + _cast(lam, p) * p if keep else u,
                               resolve_mask(mask, params), updates, params)
        return updates, _counted(state)

    return GradientTransformation(init, update)


def _projection(name: str, project: Callable, mask) -> GradientTransformation:
    """Move the masked leaves from p + u to `project(p + u, count)`: returns project(p + u) − p."""
    def init(params):
        del params
        return CountState(_zero_count())

    def update(updates, state, params=None, **extra):
        require_params(params, name)
        updates = jax.tree.map(
            lambda keep, u, p: (project(p + u, state.count) - p).astype(u.dtype) if keep else u,
            resolve_mask(mask, params), updates, params)
        return updates, CountState(state.count + 1)

    return GradientTransformation(init, update)


@value_factory
def l1_shrinkage(strength: ScalarOrSchedule, mask=weights_only) -> GradientTransformation:
    """Proximal L1 step (soft thresholding) on the masked leaves after the update.

    p' = sign(q)·max(|q| − τ_t, 0) with q = p + u; weights smaller than τ become exactly 0.
    For the penalty λ‖w‖₁ under learning rate α_t use τ_t = α_t·λ (a schedule if α is one).
    Place it last in the chain: it reads params + updates.
    """
    def shrink(q, count):
        tau = _cast(_at(strength, count), q)
        return jnp.sign(q) * jnp.maximum(jnp.abs(q) - tau, 0)

    return _projection("l1_shrinkage", shrink, mask)


@value_factory
def project_max_norm(max_value: ScalarOrSchedule, mask=weights_only) -> GradientTransformation:
    """Max-norm constraint: each unit's incoming weights are projected onto ‖w‖₂ ≤ c.

    A unit's incoming weights are `w[..., j]`: the column j of a Dense kernel (in, out), the
    (kh, kw, cin) slice of a Conv2D kernel (kh, kw, cin, cout). Returns updates u' such that
    params + u' = proj(params + u): place it last in the chain, so it sees where the step leads.
    """
    def project(q, count):
        c = _cast(_at(max_value, count), q)
        norms = jnp.sqrt(jnp.sum(q * q, axis=tuple(range(q.ndim - 1)), keepdims=True))
        return q * jnp.minimum(1, c / jnp.maximum(norms, jnp.finfo(q.dtype).tiny))

    return _projection("project_max_norm", project, mask)


@value_factory
def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """g ← g·min(1, c/‖g‖), ‖g‖ the 2-norm of all leaves together.

    As `torch.nn.utils.clip_grad_norm_`, without its +1e-6 in the denominator.
    """
    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra):
        norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(updates)))
        factor = _cast(max_norm, norm) / jnp.maximum(norm, _cast(max_norm, norm))
        return jax.tree.map(lambda g: _cast(factor, g) * g, updates), state

    return GradientTransformation(init, update)


class EmaState(NamedTuple):
    count: jax.Array
    average: Any    # the averaged parameters p̄, like params


@value_factory
def ema(decay: ScalarOrSchedule) -> GradientTransformation:
    """Exponential moving average of the parameters: p̄ ← d_t·p̄ + (1−d_t)·(p + u), p̄₀ = p₀.

    Updates pass through unchanged; the average lives in the state (`averaged_params(state)`).
    Place it last in the chain: it averages the parameters the updates lead to.
    """
    def init(params):
        return EmaState(_zero_count(), jax.tree.map(jnp.copy, params))  # a copy: donatable

    def update(updates, state, params=None, **extra):
        require_params(params, "ema")
        d = _at(decay, state.count)
        average = jax.tree.map(lambda a, p, u: _cast(d, a) * a + (1 - _cast(d, a)) * (p + u),
                               state.average, params, updates)
        return updates, EmaState(state.count + 1, average)

    return GradientTransformation(init, update)


@value_factory
def polyak() -> GradientTransformation:
    """Polyak–Ruppert averaging: p̄_t = (p₁ + … + p_t)/t, the mean of the iterates so far.

    That is `ema` with d_t = t/(t+1); read the average with `averaged_params(state)`.
    """
    return ema(_polyak_decay)


def _polyak_decay(t):
    """d_t = t/(t+1)."""
    t = _real(t)
    return t / (t + 1)


def averaged_params(state):
    """The averaged parameters held by the one `ema` / `polyak` transform inside `state`."""
    found = [s for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, EmaState))
             if isinstance(s, EmaState)]
    if len(found) != 1:
        raise ValueError(f"averaged_params expects exactly one ema/polyak state in the "
                         f"optimizer state, found {len(found)}")
    return found[0].average


class AccumulateState(NamedTuple):
    mini_step: jax.Array   # calls since the last real update, in [0, every)
    grad_sum: Any          # sum of the gradients of those calls, like params
    inner: Any             # the wrapped transform's state


@value_factory
def accumulate_gradients(transform: GradientTransformation, every: int) -> GradientTransformation:
    """Gradient accumulation: apply `transform` to the mean gradient of every `every` calls.

    The every-th call returns transform(mean of the last `every` gradients); the calls in
    between return zero updates and leave the inner state untouched, so k micro-batches of
    size b step like one batch of size k·b. `extra` reaches the inner transform on the
    every-th call only.
    """
    if every < 1:
        raise ValueError(f"accumulate_gradients needs every >= 1, got {every}")

    def init(params):
        return AccumulateState(_zero_count(), jax.tree.map(jnp.zeros_like, params),
                               transform.init(params))

    def update(updates, state, params=None, **extra):
        grad_sum = jax.tree.map(lambda s, g: s + g.astype(s.dtype), state.grad_sum, updates)

        def step(_):
            mean = jax.tree.map(lambda s: s / every, grad_sum)
            new_updates, inner = transform.update(mean, state.inner, params, **extra)
            return new_updates, inner, jax.tree.map(jnp.zeros_like, grad_sum)

        def wait(_):  # zeros of the dtypes `step` returns (e.g. float32 for bfloat16 grads)
            zeros = jax.tree.map(lambda u: jnp.zeros(u.shape, u.dtype),
                                 jax.eval_shape(step, None)[0])
            return zeros, state.inner, grad_sum

        last = state.mini_step == every - 1
        updates, inner, grad_sum = jax.lax.cond(last, step, wait, None)
        mini_step = jnp.where(last, 0, state.mini_step + 1)
        return updates, AccumulateState(mini_step, grad_sum, inner)

    return GradientTransformation(init, update)


class SkipState(NamedTuple):
    skipped: jax.Array   # how many updates were skipped so far
    inner: Any           # the wrapped transform's state


@value_factory
def skip_not_finite(transform: GradientTransformation) -> GradientTransformation:
    """Apply `transform`, unless the gradients or its updates hold a NaN or ±inf.

    Then the updates are zero, the inner state is not advanced, and `skipped` counts the call.
    """
    def init(params):
        return SkipState(_zero_count(), transform.init(params))

    def update(updates, state, params=None, **extra):
        new_updates, inner = transform.update(updates, state.inner, params, **extra)
        ok = all_finite(updates, new_updates)
        new_updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_updates)
        inner = jax.tree.map(lambda new, old: jnp.where(ok, new, old), inner, state.inner)
        return new_updates, SkipState(state.skipped + jnp.where(ok, 0, 1), inner)

    return GradientTransformation(init, update)
