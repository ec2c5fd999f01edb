"""Schedules: functions t -> value of the update count t (t = 0 for the first update).

Any "float or schedule" hyper-parameter of `fn.optim` (learning rates, momentum, weight decay)
accepts them. They are pure jnp code, so `t` may be a traced integer inside `jit`/`vmap`:

    lr = schedules.warmup(schedules.cosine(1e-3, steps=10_000), steps=500)
    opt = fn.optim.adam(lr)

`reduce_on_plateau` is different: it watches the loss, so it is a stateful
`GradientTransformation` that scales the updates and is fed `value=loss`.
"""
from __future__ import annotations

import numbers
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from funcnn.optim.base import GradientTransformation
from funcnn.values import value_factory

__all__ = ["PlateauState", "constant", "cosine", "exponential", "inverse_after", "inverse_power",
           "inverse_time", "join", "momentum_ramp", "multistep", "polynomial", "reduce_on_plateau",
           "step_decay", "warmup"]

Schedule = Callable[[jax.Array], jax.Array]


def _schedule(formula: Callable[..., jax.Array], *integers) -> Schedule:
    """A schedule computing `formula(t, *integers)`, t and the (possibly traced) integer
    arguments as floats of the default precision.

    (jnp divides int32 counts in float32 even under x64; integer t is exact as a float.)
    """
    return lambda t: formula(*(jnp.asarray(x, jnp.result_type(float)) for x in (t, *integers)))


def _check(name: str, expected: str, value, ok: Callable[[numbers.Number], bool]) -> None:
    """Raise a ValueError unless `ok(value)`. Only concrete Python/numpy numbers are checked:
    hyper-parameters may be traced (e.g. vmapped by `fn.tune`), and those cannot be tested."""
    if isinstance(value, numbers.Number) and not ok(value):
        raise ValueError(f"{name}: expected {expected}, received {value!r}")


@value_factory
def constant(value: float) -> Schedule:
    """α_t = value."""
    return _schedule(lambda t: jnp.full_like(t, value))


@value_factory
def step_decay(init_value: float, factor: float, every: int) -> Schedule:
    """α_t = α₀·factor^⌊t/every⌋ (torch's `StepLR(step_size=every, gamma=factor)`), every > 0."""
    _check("step_decay", "every > 0", every, lambda n: n > 0)
    return _schedule(lambda t, every: init_value * factor ** (t // every), every)


@value_factory
def multistep(init_value: float, boundaries: Sequence[int], factor: float) -> Schedule:
    """α_t = α₀·factor^(number of boundaries ≤ t) (`MultiStepLR(milestones, gamma=factor)`)."""
    return _schedule(lambda t, bounds: init_value * factor ** jnp.sum(
        t[..., None] >= bounds, axis=-1, dtype=t.dtype), boundaries)


@value_factory
def exponential(init_value: float, gamma: float) -> Schedule:
    """α_t = α₀·γᵗ (`ExponentialLR(gamma)`); the notes' α₀e^{−kt} is `gamma=exp(-k)`."""
    return _schedule(lambda t: init_value * gamma ** t)


@value_factory
def inverse_time(init_value: float, k: float) -> Schedule:
    """α_t = α₀ / (1 + k·t)."""
    return _schedule(lambda t: init_value / (1 + k * t))


@value_factory
def inverse_power(init_value: float, gamma: float, power: float) -> Schedule:
    """α_t = α₀·(1 + γt)^−p."""
    return _schedule(lambda t: init_value * (1 + gamma * t) ** -power)


@value_factory
def inverse_after(init_value: float, tau: int) -> Schedule:
    """α_t = α₀·τ / max(t, τ): constant for τ > 0 steps, then decaying as 1/t."""
    _check("inverse_after", "tau > 0", tau, lambda n: n > 0)
    return _schedule(lambda t, tau: init_value * tau / jnp.maximum(t, tau), tau)


@value_factory
def polynomial(init_value: float, end_value: float, steps: int, power: float = 1.0) -> Schedule:
    """α_t = (α₀ − α_end)·(1 − min(t, T)/T)^p + α_end; holds α_end after T = `steps`.

    With end_value=0 this is `PolynomialLR(total_iters=T, power=p)`. T > 0.
    """
    _check("polynomial", "steps > 0", steps, lambda n: n > 0)
    return _schedule(
        lambda t, steps: (init_value - end_value) * (1 - jnp.minimum(t, steps) / steps) ** power
        + end_value, steps)


@value_factory
def cosine(init_value: float, steps: int, end_value: float = 0.0) -> Schedule:
    """α_t = α_end + (α₀ − α_end)·(1 + cos(π·min(t, T)/T))/2; holds α_end after T = `steps`.

    Up to T this is `CosineAnnealingLR(T_max=T, eta_min=α_end)`. T > 0.
    """
    _check("cosine", "steps > 0", steps, lambda n: n > 0)
    return _schedule(lambda t, steps: end_value + (init_value - end_value) * 0.5 * (
        1 + jnp.cos(jnp.pi * jnp.minimum(t, steps) / steps)), steps)


@value_factory
def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Schedule i runs on [b_{i−1}, b_i), called with the steps since it began: s_i(t − b_{i−1}).

    `len(schedules) == len(boundaries) + 1`; boundaries increase strictly.
    """
    if len(schedules) != len(boundaries) + 1:
        raise ValueError(f"join needs one more schedule than boundaries, got {len(schedules)} "
                         f"schedules and {len(boundaries)} boundaries")
    for before, after in zip(boundaries, boundaries[1:]):
        if isinstance(before, numbers.Number):
            _check("join", f"strictly increasing boundaries, each > {before!r}", after,
                   lambda b: b > before)

    def schedule(t):
        value = schedules[0](t)
        for start, s in zip(boundaries, schedules[1:]):
            value = jnp.where(t >= start, s(jnp.maximum(t - start, 0)), value)
        return value

    return schedule


@value_factory
def warmup(schedule: Schedule, steps: int, init_value: float = 0.0) -> Schedule:
    """Linear ramp from `init_value` to schedule(0) over `steps` updates, then schedule(t − steps).

    `warmup(constant(α), T, init_value=f·α)` is `LinearLR(start_factor=f, total_iters=T)`.
    T ≥ 0 (T = 0: no warmup).
    """
    _check("warmup", "steps >= 0", steps, lambda n: n >= 0)
    ramp = _schedule(lambda t, steps: init_value + (schedule(jnp.zeros_like(t)) - init_value)
                     * t / steps, steps)
    return join([ramp, schedule], [steps])


@value_factory
def momentum_ramp(steps: int, init_value: float = 0.5, end_value: float = 0.99) -> Schedule:
    """The notes' momentum annealing: μ rises linearly from 0.5 to 0.99 over `steps`, then holds.

    For `sgd(lr, momentum=momentum_ramp(epochs * steps_per_epoch))`.
    """
    return polynomial(init_value, end_value, steps)


class PlateauState(NamedTuple):
    scale: jax.Array        # the factor the updates are multiplied by, initially 1
    best: jax.Array         # the best (mean) value so far; 0 while `has_best` is False
    has_best: jax.Array     # False before the first improvement (torch's best = +inf)
    bad_steps: jax.Array    # values since the last improvement (torch: num_bad_epochs)
    cooldown: jax.Array     # values left before bad values count again
    value_sum: jax.Array    # sum of the values of the current accumulation window
    value_count: jax.Array  # how many values are in that window


@value_factory
def reduce_on_plateau(factor: float = 0.5, patience: int = 10, threshold: float = 1e-4,
                      threshold_mode: str = "rel", cooldown: int = 0, min_scale: float = 0.0,
                      accumulation_size: int = 1) -> GradientTransformation:
    """Scale the updates by s, and shrink s ← max(factor·s, min_scale) when the loss plateaus.

    Fed `value=loss` at every update. Each window of `accumulation_size` values (e.g. the steps
    of an epoch) gives one mean value v, treated as `torch.optim.lr_scheduler.ReduceLROnPlateau`
    (mode="min") treats a metric: v improves when v < best − threshold·|best| ("rel") or
    v < best − threshold ("abs"); after more than `patience` windows without improvement s
    shrinks, and the next `cooldown` windows do not count. The new scale applies from the update
    that completes the window. Place it after `scale_by_learning_rate` (or anywhere: it
    multiplies). Pass −metric to watch a value that should grow: that is torch's mode="max"
    (for best > 0, torch's "min" limit best·(1 − threshold) is the same as ours). `value` must
    be a scalar. Unlike torch, a reduction smaller than 1e-8 is not skipped. Every leaf of the
    state is finite while the values are: torch's initial best = +inf is the flag `has_best`.
    """
    if threshold_mode not in ("rel", "abs"):
        raise ValueError(f"reduce_on_plateau: threshold_mode must be 'rel' or 'abs', "
                         f"got {threshold_mode!r}")
    for name, expected, value, ok in [
            ("factor", "0 < factor < 1", factor, lambda x: 0 < x < 1),
            ("patience", "patience >= 0", patience, lambda x: x >= 0),
            ("threshold", "threshold >= 0", threshold, lambda x: x >= 0),
            ("cooldown", "cooldown >= 0", cooldown, lambda x: x >= 0),
            ("min_scale", "min_scale >= 0", min_scale, lambda x: x >= 0),
            ("accumulation_size", "an integer accumulation_size >= 1", accumulation_size,
             lambda x: x >= 1 and x == int(x))]:
        _check(f"reduce_on_plateau({name}=...)", expected, value, ok)

    def init(params):
        del params
        real = jnp.result_type(float)
        zero = lambda: jnp.zeros([], jnp.int32)  # a new buffer each: donatable
        return PlateauState(jnp.ones([], real), jnp.zeros([], real), jnp.zeros([], bool), zero(),
                            zero(), jnp.zeros([], real), zero())

    def judge(state, v):
        """One ReduceLROnPlateau.step(v): the new (scale, best, has_best, bad_steps, cooldown)."""
        margin = threshold * jnp.abs(state.best) if threshold_mode == "rel" else threshold
        # Before the first improvement torch's best is +inf: any v < inf improves (not NaN, inf).
        better = jnp.where(state.has_best, v < state.best - margin, v < jnp.inf)
        best = jnp.where(better, v, state.best)
        in_cooldown = state.cooldown > 0
        bad = jnp.where(better | in_cooldown, 0, state.bad_steps + 1)
        cool = jnp.where(in_cooldown, state.cooldown - 1, state.cooldown)
        reduce = bad > patience
        scale = jnp.where(reduce, jnp.maximum(state.scale * factor, min_scale), state.scale)
        return (scale, best, state.has_best | better, jnp.where(reduce, 0, bad),
                jnp.where(reduce, cooldown, cool))

    def update(updates, state, params=None, *, value=None, **extra):
        if value is None:
            raise TypeError("reduce_on_plateau needs the loss: update(grads, state, params, "
                            "value=loss)")
        if jnp.shape(value) != ():
            raise ValueError(f"reduce_on_plateau: expected a scalar value= (the mean loss), "
                             f"received shape {jnp.shape(value)}")
        total = state.value_sum + jnp.asarray(value, state.value_sum.dtype)
        count = state.value_count + 1
        full = count == accumulation_size
        judged = judge(state, total / count.astype(total.dtype))
        keep = (state.scale, state.best, state.has_best, state.bad_steps, state.cooldown)
        scale, best, has_best, bad, cool = (jnp.where(full, new, old)
                                            for new, old in zip(judged, keep))
        state = PlateauState(scale, best, has_best, bad, cool, jnp.where(full, 0, total),
                             jnp.where(full, 0, count))
        return jax.tree.map(lambda u: jnp.asarray(scale, u.dtype) * u, updates), state

    return GradientTransformation(init, update)
