"""The epoch program: one compiled, guarded loop of steps over shuffled batches.

    epoch = jax.jit(make_epoch(step, batch_size))
    carry, metrics = epoch(start(params, state, opt_state), images, labels, epoch_key, order)

Every step is guarded inside the loop: a step whose loss, new parameters, optimizer state or
layer state is not finite — or whose loss exceeds `divergence` × (|the run's first loss| + 1) —
is not applied, and the loop ends there. The carry then holds the last good values and
`bad_step` the failed step's index: no host check, no replay, no second compilation. Data too
large for the device goes through the same program in chunks (`first` numbers their steps).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import backprop
from funcnn.optim.base import GradientTransformation, all_finite
from funcnn.paths import leaf_paths
from funcnn.train.step import update_ratios

__all__ = ["DIVERGENCE", "EpochCarry", "epoch_order", "exploded", "full_batch_step", "make_epoch",
           "ratio_columns", "start"]

DIVERGENCE = 1e6   # default explosion bound: loss > 1e6·(|first loss| + 1) is divergence
CHECK_EVERY = 32   # the parameters and states are checked in full every 32 steps


class EpochCarry(NamedTuple):
    """What an epoch carries from step to step."""

    params: Any
    state: Any
    opt_state: Any
    bad_step: jax.Array    # index of the step that diverged (not applied), −1 if none
    reference: jax.Array   # the run's first-step loss (+inf until a step ran): the explosion scale


def start(params, state, opt_state, reference=float("inf")) -> EpochCarry:
    """An EpochCarry before any step of the epoch (the trees as given: not donated by `fit`)."""
    return EpochCarry(params, state, opt_state, jnp.array(-1, jnp.int32),
                      jnp.array(reference, jnp.float32))


def full_batch_step(make_step: Callable, model, loss, optimizer, *, regularizer=None,
                    compute_dtype=None):
    """The step for an optimizer that reads the objective (`fn.optim.lbfgs`, `newton`): its
    update also receives value_fn(p) = loss(model(p, x), y) + regularizer(p) on the step's batch
    (`fit` makes it the whole training set), under the step's key and layer state, and
    value = value_fn(params): the very function whose gradient the step takes.

    `make_step(optimizer)` builds the ordinary step around a given optimizer.
    """
    compute = (lambda tree: tree) if compute_dtype is None else \
        (lambda tree: backprop.cast_floats(tree, compute_dtype))

    def step(params, state, opt_state, x, y, key):
        def value_fn(p):
            outputs, _ = model.apply(compute(p), state, compute(x), key=key, train=True)
            value = loss(backprop.at_least_float32(outputs), y)
            return value if regularizer is None else value + regularizer(p)

        def update(grads, opt_state, params=None, **extra):
            return optimizer.update(grads, opt_state, params,
                                    **{**extra, "value": value_fn(params), "value_fn": value_fn})

        reading = GradientTransformation(optimizer.init, update)
        return make_step(reading)(params, state, opt_state, x, y, key)

    return step


def epoch_order(epoch_key, n: int, batch_size: int) -> np.ndarray:
    """The (n // batch_size, batch_size) example indices of `fit`'s epoch `epoch_key`: a uniform
    shuffle (numpy's permutation, seeded by the key's bits), the last n mod batch_size dropped.

    Shuffling 60 000 indices this way takes about 1 ms; `jax.random.permutation`'s sorts take
    about 35 ms on a 2-core CPU, a fifth of an epoch of a small MLP.
    """
    seed = np.asarray(jax.random.key_data(jax.random.fold_in(epoch_key, 0))).ravel()
    order = np.random.default_rng([int(word) for word in seed]).permutation(n)
    steps = n // batch_size
    return order[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def _device_order(epoch_key, n: int, batch_size: int):
    steps = n // batch_size
    return jax.random.permutation(jax.random.fold_in(epoch_key, 0), n)[: steps * batch_size] \
        .reshape(steps, batch_size)


def _ratio_row(params, before):
    """‖θ − θ_before‖ / ‖θ_before‖ of every leaf, stacked in leaf order (one buffer, not one per
    leaf)."""
    updates = jax.tree.map(jnp.subtract, params, before)
    return jnp.stack([v.astype(jnp.float32) for v in update_ratios(before, updates).values()])


def exploded(loss, reference, divergence, xp=jnp):
    """loss > divergence·(|reference| + 1): a loss that has run away upwards (a loss that keeps
    falling below zero, e.g. a Gaussian negative log-likelihood, is not held against it).
    `xp=np` evaluates the same rule on the host."""
    if divergence is None:
        return xp.array(False)
    scale = xp.where(xp.isinf(reference), xp.abs(loss), xp.abs(reference)) + 1
    return loss > xp.asarray(divergence, scale.dtype) * scale


class _Loop(NamedTuple):
    """The epoch loop's state: the next step, the end of a stretch being replayed one step at a
    time (≤ i when not replaying), the carry and the metric rows."""

    i: jax.Array
    replay_until: jax.Array
    carry: EpochCarry
    rows: Any


def _sound(new: EpochCarry):
    """The full check of a stretch of steps: every parameter, layer state and optimizer state
    leaf finite (no transform keeps a non-finite sentinel in its state)."""
    return all_finite(new.params, new.state, new.opt_state)


def make_epoch(step, batch_size: int, augment: Callable | None = None, *,
               divergence: float | None = DIVERGENCE, check_every: int = CHECK_EVERY,
               ratio_every: int | None = None):
    """A pure `epoch(carry, images, labels, epoch_key, order=None, first=0) -> (carry, metrics)`.

    One loop over the batches `order` (a (steps, batch_size) int array of example indices,
    `epoch_order`; by default `jax.random.permutation`'s, so the epoch traces end to end), each
    gathered on the device and (with `augment(key, x) -> x`) augmented. Step i uses the key
    fold_in(epoch_key, first + i): fold_in(·, 0) for the step, fold_in(·, 1) for augmentation.

    Guarded: the first step whose loss is not finite or exceeds `divergence` × (|first loss| +
    1) (`None`: no bound), or that leaves a parameter or state non-finite, is not applied; the
    loop stops with the values before it and `carry.bad_step = first + i`. The loss is checked
    at every step (a scalar: free); the parameters and states every `check_every` steps, against
    a copy taken at the start of the stretch. A stretch that fails is run again from that copy
    one step at a time, each step checked in full, up to the failing step: the same compiled
    step, no host round trip. `metrics` has one row per step of `step`'s metrics; rows of steps
    not applied are NaN, the failed step's row is what it computed. With `ratio_every = k`
    (stretches of k steps), "update_ratio" holds (steps, leaves) rows ‖Δθ‖/‖θ‖ of the steps
    first + i ≡ 0 mod k, NaN between. Jit it, or vmap it over carries and keys.
    """
    stretch = check_every if ratio_every is None else ratio_every

    def epoch(carry: EpochCarry, images, labels, epoch_key, order=None, first=0):
        if order is None:
            order = _device_order(epoch_key, images.shape[0], batch_size)
        steps = order.shape[0]
        if steps == 0:
            raise ValueError(f"make_epoch: expected at least one batch of {batch_size} examples, "
                             f"received {images.shape[0]} examples")
        first = jnp.asarray(first, jnp.int32)

        def batch(i):
            """Step i's batch, augmented."""
            x, y = images[order[i]], labels[order[i]]
            if augment is not None:
                x = augment(jax.random.fold_in(jax.random.fold_in(epoch_key, first + i), 1), x)
            return x, y

        def body(carry: EpochCarry, i, sample, before, xy):
            """Step i on its batch `xy` from `carry` (with ‖Δθ‖/‖θ‖ against `before` when
            `sample`); its metrics row; whether its loss fails the check."""
            key = jax.random.fold_in(epoch_key, first + i)
            params, state, opt_state, metrics = step(carry.params, carry.state, carry.opt_state,
                                                     *xy, jax.random.fold_in(key, 0))
            if ratio_every is not None:
                metrics = {**metrics, "update_ratio": jax.lax.cond(
                    sample, lambda: _ratio_row(params, before),
                    lambda: jnp.full((len(jax.tree.leaves(params)),), jnp.nan, jnp.float32))}
            loss = metrics["loss"].astype(jnp.float32)   # the bound's scale, float64 runs too
            failed = ~jnp.isfinite(loss) | exploded(loss, carry.reference, divergence)
            reference = jnp.where(jnp.isinf(carry.reference), loss, carry.reference)
            return carry._replace(params=params, state=state, opt_state=opt_state,
                                  reference=reference.astype(jnp.float32)), metrics, failed

        row = jax.eval_shape(lambda c: body(c, 0, True, c.params, batch(0))[1], carry)
        rows = jax.tree.map(lambda r: jnp.full((steps, *r.shape), jnp.nan, jnp.float32)
                            .astype(r.dtype) if jnp.issubdtype(r.dtype, jnp.inexact) else
                            jnp.zeros((steps, *r.shape), r.dtype), row)

        def run_stretch(loop: _Loop) -> _Loop:
            """Steps i … end − 1 (up to the next multiple of `stretch` in the epoch's numbering,
            or one step when replaying), then the full check: keep their values, or go back to
            the stretch's start (the carry that came in: kept alive for that)."""
            replaying = loop.i < loop.replay_until
            stretch_end = ((first + loop.i) // stretch + 1) * stretch - first
            end = jnp.minimum(jnp.where(replaying, loop.i + 1, stretch_end), steps)
            sample = (first + loop.i) % stretch == 0   # ratios only where `before` is the start

            def next_step(inner):
                j, current, rows, _, ahead = inner
                xy = batch(j) if ahead is None else ahead
                current, step_row, failed = body(current, j, sample & (j == loop.i),
                                                 loop.carry.params, xy)
                rows = jax.tree.map(lambda rs, r: rs.at[j].set(r), rows, step_row)
                ahead = None if ahead is None else batch(jnp.minimum(j + 1, steps - 1))
                return j + 1, current, rows, failed, ahead

            # An augmented batch is made one step ahead and carried, so that it is computed once:
            # fused into its consumer (e.g. a convolution's patch gather, which reads each pixel
            # up to k² times), a resampling augmentation would be recomputed for every read.
            _, after, rows, failed, _ = jax.lax.while_loop(
                lambda inner: (inner[0] < end) & ~inner[3], next_step,
                (loop.i, loop.carry, loop.rows, jnp.array(False),
                 None if augment is None else batch(loop.i)))
            ok = ~failed & _sound(after)
            kept = jax.tree.map(lambda a, b: jnp.where(ok, a, b), after, loop.carry)
            bad_step = jnp.where(ok | ~replaying, -1, first + loop.i).astype(jnp.int32)
            return _Loop(jnp.where(ok, end, loop.i),
                         jnp.where(ok | replaying, loop.replay_until, end),
                         kept._replace(bad_step=bad_step), rows)

        loop = jax.lax.while_loop(lambda loop: (loop.i < steps) & (loop.carry.bad_step < 0),
                                  run_stretch, _Loop(jnp.int32(0), jnp.int32(0), carry, rows))
        applied = jnp.where(loop.carry.bad_step < 0, steps, loop.carry.bad_step - first)
        unapplied = jnp.arange(steps, dtype=jnp.int32) > applied   # the failed step's own row stays
        rows = jax.tree.map(lambda r: jnp.where(
            unapplied.reshape((steps,) + (1,) * (r.ndim - 1)), jnp.nan, r)
            if jnp.issubdtype(r.dtype, jnp.inexact) else r, loop.rows)
        return loop.carry, rows

    return epoch


def ratio_columns(metrics, params) -> dict:
    """The epoch's (steps, leaves) "update_ratio" rows as {leaf path: (steps,)} columns."""
    if "update_ratio" not in metrics:
        return metrics
    rows = metrics["update_ratio"]
    return {**metrics, "update_ratio": {name: rows[:, k]
                                        for k, name in enumerate(leaf_paths(params))}}
