"""Training: a pure step, whole epochs compiled into one `lax.scan`, and `fit` around them.

    step = make_step(model, loss, optimizer)
    params, state, opt_state, metrics = step(params, state, opt_state, x, y, key)

`fit` keeps the training data on the device and runs each epoch as one compiled scan over
shuffled index batches (a streaming path feeds batches from the host when the data is larger
than `max_device_bytes`). A step whose loss, gradients, new parameters or new states are not
finite is not applied: the epoch finishes as no-ops, and `fit` raises `TrainingDiverged` naming
the epoch and step, with `.result` holding the last good parameters.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import backprop, checkpoint, parallel
from funcnn.nn.core import is_positive_int
from funcnn.optim.base import all_finite, apply_updates
from funcnn.paths import leaf_paths


class FitResult(NamedTuple):
    """What `fit` returns: the trained pytrees, the per-epoch history and the epochs run."""

    params: Any
    state: Any
    opt_state: Any
    history: dict
    epoch: int


class TrainingDiverged(FloatingPointError):
    """A non-finite loss, gradient, parameter or state; `.result` holds the last good FitResult."""

    def __init__(self, message: str, result: FitResult):
        super().__init__(message)
        self.result = result


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs.

    `mode` is "min" or "max" (default: "max" for accuracies, "min" otherwise); with
    `restore_best` the result carries the parameters of the best epoch.
    """

    monitor: str = "val_loss"
    patience: int = 5
    min_delta: float = 0.0
    mode: str | None = None
    restore_best: bool = True

    def __post_init__(self):
        if self.mode not in (None, "min", "max"):
            raise ValueError(f"EarlyStopping: expected mode None, 'min' or 'max', received "
                             f"{self.mode!r}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) \
                or self.patience < 1:
            raise ValueError(f"EarlyStopping: expected a patience of at least 1 epoch (an int), "
                             f"received {self.patience!r}")

    def monitored(self, history: dict) -> list:
        """The monitored metric's values, one per epoch, from a `fit` history."""
        if self.monitor not in history:
            known = ", ".join(sorted(k for k in history if k not in ("update_ratio",
                                                                      "epoch_time")))
            raise ValueError(f"EarlyStopping: monitor {self.monitor!r} is not in the history; "
                             f"expected one of: {known}")
        return history[self.monitor]

    def better(self, value: float, best: float) -> bool:
        mode = self.mode or ("max" if "accuracy" in self.monitor else "min")
        return value > best + self.min_delta if mode == "max" else value < best - self.min_delta


# ---------------------------------------------------------------------------------------------
# Metrics.


def accuracy(outputs, targets):
    """Fraction of rows whose arg-max output is the label (int ids, or the arg-max of rows);
    None when the outputs are not (batch, classes ≥ 2) scores — a single output column's
    arg-max is always 0, so it says nothing."""
    if outputs.ndim != 2 or outputs.shape[1] < 2:
        return None
    if targets.ndim == 1 and jnp.issubdtype(targets.dtype, jnp.integer):
        return jnp.mean(jnp.argmax(outputs, axis=-1) == targets)
    if targets.shape == outputs.shape:
        return jnp.mean(jnp.argmax(outputs, axis=-1) == jnp.argmax(targets, axis=-1))
    return None


def update_ratios(params, updates) -> dict:
    """‖update‖ / ‖param‖ per leaf (the notes' ~1e-3 health check), keyed by leaf path.

    The norms are √(v·v): dot products, which XLA:CPU calls into its GEMM library for rather
    than compiling one reduction kernel per leaf."""
    norm = lambda v: jnp.sqrt(jnp.vdot(v.ravel(), v.ravel()))
    return {name: norm(u) / (norm(p) + 1e-12)
            for name, p, u in zip(leaf_paths(params), jax.tree.leaves(params),
                                  jax.tree.leaves(updates))}


# ---------------------------------------------------------------------------------------------
# The step.


def make_step(model, loss, optimizer, *, regularizer=None, hand_written=False,
              compute_dtype=None):
    """A pure, jittable `step(params, state, opt_state, x, y, key) -> (params, state,
    opt_state, metrics)`.

    Gradients come from `jax.grad`, or with `hand_written=True` from the layers' hand-written
    rules (`fn.backprop`). A `regularizer(params)` is added to the objective (its hand-written
    `.grad` on the hand-written path). The optimizer receives `value=loss` (for
    `reduce_on_plateau`). metrics: "loss" (data loss), "accuracy" (classification only),
    "penalty", "update_ratio" (per leaf), "finite" (loss, gradients, new parameters,
    optimizer state and layer state all finite).

    Mixed precision (off by default): with `compute_dtype=jnp.bfloat16` the forward and backward
    passes run on the parameters and inputs cast to bfloat16, the loss in float32; gradients
    come back in the parameters' dtype, and the optimizer state, the parameters and the layer
    state (running statistics) never leave it.
    """
    run_backward = backprop.forward_backward(model, loss)
    compute = (lambda tree: tree) if compute_dtype is None else \
        (lambda tree: backprop.cast_floats(tree, compute_dtype))

    def gradients(params, state, x, y, key):
        if hand_written:
            value, outputs, new_state, grads = run_backward(compute(params), state, compute(x), y,
                                                            key=key, train=True)
            grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
            if regularizer is not None:
                grads = jax.tree.map(jnp.add, grads, regularizer.grad(params))
            return value, outputs, new_state, grads

        def objective(p):
            outputs, new_state = model.apply(compute(p), state, compute(x), key=key, train=True)
            value = loss(backprop.at_least_float32(outputs), y)
            total = value if regularizer is None else value + regularizer(p)
            return total, (value, outputs, new_state)

        (_, (value, outputs, new_state)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return value, outputs, new_state, grads

    def step(params, state, opt_state, x, y, key):
        value, outputs, new_state, grads = gradients(params, state, x, y, key)
        new_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_state, state)
        updates, opt_state = optimizer.update(grads, opt_state, params, value=value)
        new_params = apply_updates(params, updates)
        metrics = {"loss": value, "update_ratio": update_ratios(params, updates),
                   "finite": all_finite(value, grads, new_params, opt_state, new_state)}
        if regularizer is not None:
            metrics["penalty"] = regularizer(params)
        acc = accuracy(outputs, y)
        if acc is not None:
            metrics["accuracy"] = acc
        return new_params, new_state, opt_state, metrics

    return step


class EpochCarry(NamedTuple):
    """What an epoch carries from step to step."""

    params: Any
    state: Any
    opt_state: Any
    bad_step: jax.Array   # index of the first non-finite step of the epoch, −1 if none


RATIO_EVERY = 8   # fit records ‖Δθ‖/‖θ‖ on every 8th step: it is a trend, not a per-step signal


def _ratio_row(sample, params, before):
    """‖θ − θ_before‖ / ‖θ_before‖ of every leaf, stacked in leaf order (one buffer per step, not
    one per leaf), when `sample`; NaN otherwise, without reading either tree."""
    def ratios():
        updates = jax.tree.map(jnp.subtract, params, before)
        return jnp.stack([v.astype(jnp.float32) for v in update_ratios(before, updates).values()])

    unsampled = lambda: jnp.full((len(jax.tree.leaves(params)),), jnp.nan, jnp.float32)
    return jax.lax.cond(sample, ratios, unsampled)


def _unstack_ratios(metrics, params):
    """The epoch's (steps, leaves) ratio rows as {leaf path: (steps,)}: slices of device arrays
    under a trace, numpy views on the host."""
    rows = metrics["update_ratio"]
    return {**metrics, "update_ratio": {name: rows[:, k]
                                        for k, name in enumerate(leaf_paths(params))}}


def _epoch_body(step, images, labels, epoch_key, augment, guard):
    """Loop body `body(carry, i, index, sample, before)`: gather batch `index`, (augment,) step
    `i`; when `sample`, record ‖Δθ‖/‖θ‖ against the parameters `before` (the step's own
    "update_ratio", if any, is dropped: XLA removes its dead code). With `guard`, record the
    first non-finite step and keep the old values from it on (NaN metrics)."""

    def body(carry: EpochCarry, i, index, sample, before):
        x, y = images[index], labels[index]
        key = jax.random.fold_in(epoch_key, i)
        if augment is not None:
            x = augment(jax.random.fold_in(key, 1), x)
        params, state, opt_state, metrics = step(carry.params, carry.state, carry.opt_state,
                                                 x, y, jax.random.fold_in(key, 0))
        metrics = {**metrics, "update_ratio": _ratio_row(sample, params, before)}
        finite = metrics.pop("finite")
        if not guard:   # the finite check is dead code here: XLA drops it
            return EpochCarry(params, state, opt_state, carry.bad_step), metrics
        ok = finite & (carry.bad_step < 0)
        bad_step = jnp.where((carry.bad_step < 0) & ~ok, i, carry.bad_step)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        carry = EpochCarry(keep(params, carry.params), keep(state, carry.state),
                           keep(opt_state, carry.opt_state), bad_step)
        return carry, jax.tree.map(lambda m: jnp.where(ok, m, jnp.nan), metrics)

    return body


def _flag_divergence(carry: EpochCarry, losses, np_like=jnp) -> EpochCarry:
    """An unguarded epoch's verdict from its per-step losses: bad_step is the first step with a
    non-finite loss (unless already set). `np_like=np` runs it on the host."""
    bad_loss = ~np_like.isfinite(losses)
    bad_step = np_like.where((carry.bad_step < 0) & bad_loss.any(), np_like.argmax(bad_loss),
                             carry.bad_step)
    return carry._replace(bad_step=bad_step.astype(carry.bad_step.dtype))


def _host_finite(*trees) -> bool:
    """Whether every floating-point leaf is finite, checked on the host (no compiled kernels)."""
    return all(np.isfinite(np.asarray(leaf)).all() for tree in trees
               for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact))


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


def make_epoch(step, batch_size: int, augment: Callable | None = None, *, guard: bool = True):
    """A pure `epoch(carry, images, labels, key, order=None) -> (carry, metrics)`: one compiled
    loop over the shuffled full batches of (images, labels), each gathered on the device.

    `order` holds the (steps, batch_size) example indices (`epoch_order`, as `fit` uses); by
    default they come from `jax.random.permutation`, so the epoch stays traceable end to end.
    `carry` is an `EpochCarry` with `bad_step = -1`. With `guard`, a step whose loss, gradients,
    new parameters or new states are not finite (make_step's "finite") is not applied, nor any
    after it (their metric rows are NaN): the carry keeps the last good values and `bad_step`
    is that step's index. Without it the epoch runs faster and `bad_step` is the first step with
    a non-finite loss, which only flags divergence: `fit` also checks the final values (NaN and
    ±inf persist through every update rule) and replays a diverged epoch guarded to find the
    step. Metrics have one row per step; "update_ratio" is sampled every `RATIO_EVERY` steps
    (NaN rows between). Jit it, or vmap it over carries and keys.
    """

    scan = _epoch_scan(step, batch_size, augment, guard)

    def epoch(carry, images, labels, epoch_key, order=None):
        carry, metrics = scan(carry, images, labels, epoch_key, order)
        metrics = _unstack_ratios(metrics, carry.params)
        return (carry if guard else _flag_divergence(carry, metrics["loss"])), metrics

    return epoch


def _epoch_scan(step, batch_size, augment, guard):
    """`make_epoch`'s loop alone: the ratio rows stacked and, unguarded, bad_step left unset
    (`fit` finishes both on the host, keeping them out of the compiled program).

    A loop over segments of `RATIO_EVERY` steps, each a loop over its steps (fewer in the last
    segment), so the step is compiled once (compilation is most of the time to `fit`'s first
    step). Each segment's first step records ‖Δθ‖/‖θ‖ against a copy of the parameters taken
    before it: one copy per segment. Reading the step's own update u, or the parameters it
    replaces, would keep both alive in every step: two more passes over every weight per step,
    5 % of workload A's step and 7 % of B's (benchmarks/mlp.py)."""

    def scan(carry, images, labels, epoch_key, order=None):
        if order is None:
            order = _device_order(epoch_key, images.shape[0], batch_size)
        steps = order.shape[0]
        body = _epoch_body(step, images, labels, epoch_key, augment, guard)
        # One step's metric shapes (a trace, nothing runs), for the (steps, ...) metric rows.
        row = jax.eval_shape(lambda c: body(c, 0, order[0], True, c.params)[1], carry)
        rows = jax.tree.map(lambda r: jnp.zeros((steps, *r.shape), r.dtype), row)

        def segment(k, loop):
            first, before = k * RATIO_EVERY, loop[0].params

            def next_step(i, loop):
                carry, rows = loop
                carry, step_row = body(carry, i, order[i], i == first, before)
                return carry, jax.tree.map(lambda rs, r: rs.at[i].set(r), rows, step_row)

            return jax.lax.fori_loop(first, jnp.minimum(first + RATIO_EVERY, steps), next_step,
                                     loop)

        return jax.lax.fori_loop(0, -(-steps // RATIO_EVERY), segment, (carry, rows))

    return scan


def _make_streaming_epoch(step, batch_size, augment, guard):
    """Same arithmetic as the scan, one compiled step per host batch, for data too big to hold."""

    @jax.jit
    def one(carry, x, y, epoch_key, i, sample):
        body = _epoch_body(step, x, y, epoch_key, augment, guard)
        return body(carry, i, jnp.arange(x.shape[0]), sample, carry.params)

    def epoch(carry, images, labels, epoch_key, order):
        collected = []
        for i, index in enumerate(order):
            carry, metrics = one(carry, images[index], labels[index], epoch_key, i,
                                 i % RATIO_EVERY == 0)
            collected.append(metrics)
        return carry, jax.tree.map(lambda *m: np.stack(m), *collected)

    return epoch


def _finish_on_host(carry: EpochCarry, metrics, guard: bool):
    """`make_epoch`'s last touches to a raw scan's results, in numpy: per-leaf ratio columns
    and, unguarded, the divergence flag."""
    metrics = _unstack_ratios(jax.tree.map(np.asarray, metrics), carry.params)
    carry = carry._replace(bad_step=np.asarray(carry.bad_step))
    return (carry if guard else _flag_divergence(carry, metrics["loss"], np)), metrics


def _cached_when_hashable(maxsize: int):
    """`functools.lru_cache` for functions of layers, losses and optimizers (immutable values,
    hence hashable), computing afresh when an argument is not hashable."""
    def decorate(build):
        cached = functools.lru_cache(maxsize=maxsize)(build)

        @functools.wraps(build)
        def lookup(*args):
            try:
                return cached(*args)
            except TypeError:   # an unhashable argument
                return build(*args)

        return lookup

    return decorate


@_cached_when_hashable(maxsize=16)
def _epoch_runner(model, loss, optimizer, regularizer, hand_written, compute_dtype, batch_size,
                  augment, mesh, streaming, guard):
    """The compiled epoch for this configuration, reused across `fit` calls."""
    step = make_step(model, loss, optimizer, regularizer=regularizer, hand_written=hand_written,
                     compute_dtype=compute_dtype)
    if mesh is not None:
        step = parallel.data_parallel(step, mesh)
    run = _make_streaming_epoch(step, batch_size, augment, guard) if streaming else \
        jax.jit(_epoch_scan(step, batch_size, augment, guard))

    def epoch(carry, images, labels, epoch_key, order):
        return _finish_on_host(*run(carry, images, labels, epoch_key, order), guard)

    return epoch


# ---------------------------------------------------------------------------------------------
# Evaluation.


def _batched(fn_batch, arrays, batch_size):
    n = len(arrays[0])
    return [fn_batch(*(a[start:start + batch_size] for a in arrays)) for start in
            range(0, n, batch_size)]


@functools.lru_cache(maxsize=32)
def _compiled_outputs(model):
    return jax.jit(lambda params, state, x: model.apply(params, state, x, train=False)[0])


@functools.lru_cache(maxsize=32)
def _compiled_totals(model, loss):
    """Jitted (Σ loss, Σ correct) of one batch; NaN correct-count when not classification."""

    def totals(params, state, x, y):
        outputs, _ = model.apply(params, state, x, train=False)
        acc = accuracy(outputs, y)
        count = x.shape[0]
        return loss(outputs, y) * count, (jnp.nan if acc is None else acc * count)

    return jax.jit(totals)


def predict(model, params, state, x, *, batch_size=1000):
    """Model outputs in evaluation mode (train=False), computed in batches."""
    _check_count("predict", "batch_size", batch_size)
    if len(x) == 0:
        raise ValueError("predict: expected at least one input, received none")
    run = _compiled_outputs(model)
    return jnp.concatenate(_batched(lambda xb: run(params, state, xb), (jnp.asarray(x),),
                                    batch_size))


def evaluate(model, loss, params, state, data, *, batch_size=1000) -> dict:
    """Mean loss (and accuracy for classification) over `data = (x, y)`, in evaluation mode."""
    x, y = (jnp.asarray(a) for a in data)
    _check_count("evaluate", "batch_size", batch_size)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"evaluate: expected as many targets as inputs (at least one), received "
                         f"{len(x)} inputs and {len(y)} targets")
    _check_labels("evaluate", model, x, y)
    return _evaluate(model, loss, params, state, x, y, batch_size)


def _evaluate(model, loss, params, state, x, y, batch_size=1000) -> dict:
    """`evaluate` of checked device arrays (fit checks its validation data once, up front)."""
    totals = _compiled_totals(model, loss)
    parts = _batched(lambda xb, yb: totals(params, state, xb, yb), (x, y), batch_size)
    n = x.shape[0]
    result = {"loss": float(sum(p[0] for p in parts)) / n}
    acc = float(sum(p[1] for p in parts)) / n
    if not math.isnan(acc):
        result["accuracy"] = acc
    return result


# ---------------------------------------------------------------------------------------------
# fit.


def _save(path, result: FitResult, key, best: FitResult | None):
    """An atomic checkpoint of `result`; with `best` (early stopping's best epoch, when it is not
    `result`'s), that epoch's trees too, so a resumed run can still restore them."""
    tree = {"params": result.params, "state": result.state, "opt_state": result.opt_state,
            "epoch": result.epoch, "key": key, "history": json.dumps(result.history)}
    if best is not None:
        tree["best"] = {"params": best.params, "state": best.state, "opt_state": best.opt_state,
                        "epoch": best.epoch}
    checkpoint.save(path, tree)


def _resume(path, params, state, opt_state, key):
    """The checkpointed FitResult, and early stopping's stored best epoch (a FitResult) or None."""
    trees = {"params": params, "state": state, "opt_state": opt_state}
    like = {**trees, "epoch": 0, "key": key, "history": ""}
    if "best" in checkpoint.load(path):
        like["best"] = {**trees, "epoch": 0}
    stored = checkpoint.load(path, like=like)
    restored_key = stored["key"]
    if not np.array_equal(jax.random.key_data(restored_key), jax.random.key_data(key)):
        raise ValueError(f"fit: the checkpoint {path} was written by a run with another key; "
                         f"pass the same key to resume it")
    as_jax = lambda tree: jax.tree.map(jnp.asarray, tree)
    history = json.loads(stored["history"])
    rebuild = lambda entry: FitResult(as_jax(entry["params"]), as_jax(entry["state"]),
                                      as_jax(entry["opt_state"]), history, entry["epoch"])
    return rebuild(stored), (rebuild(stored["best"]) if "best" in stored else None)


class _Best(NamedTuple):
    """Early stopping's record: the best monitored value, its epoch and that epoch's result."""

    value: float
    epoch: int
    result: FitResult | None


def _replay_early_stopping(early_stopping: EarlyStopping, result: FitResult,
                           stored_best: FitResult | None) -> tuple[_Best | None, bool]:
    """Early stopping's state after a resumed run's epochs, rebuilt from its history: the best
    epoch so far and whether the run had already stopped."""
    best, stopped = None, False
    for epoch, value in enumerate(early_stopping.monitored(result.history), start=1):
        best, stopped = _judge_epoch(early_stopping, best, value, epoch, None)
    if best is not None:
        at_best = result if best.epoch == result.epoch else stored_best
        best = best._replace(result=at_best)
    return best, stopped


def _judge_epoch(early_stopping: EarlyStopping, best: _Best | None, value: float, epoch: int,
                 result: FitResult | None) -> tuple[_Best, bool]:
    """Early stopping after `epoch` scored `value`: the best epoch so far, and whether patience
    has run out."""
    if best is None or early_stopping.better(value, best.value):
        best = _Best(value, epoch, result)
    return best, epoch - best.epoch >= early_stopping.patience


def _restored(early_stopping: EarlyStopping | None, best: _Best | None, result: FitResult):
    """`result`, or with `restore_best` the best epoch's trees and epoch (`result`'s history)."""
    if early_stopping is None or not early_stopping.restore_best or best is None \
            or best.result is None:
        return result
    return best.result._replace(history=result.history)


def _check_labels(name: str, model, x, y) -> None:
    """Raise unless int class labels y lie in [0, classes) for a model with (batch, classes)
    outputs: under jit a loss cannot check them, and an out-of-range id silently scores 0."""
    if not (np.ndim(y) == 1 and jnp.issubdtype(jnp.result_type(y), jnp.integer)):
        return
    out_shape = _output_shape(model, tuple(np.shape(x)[1:]), jnp.result_type(x))
    if out_shape is None or len(out_shape) != 2 or len(y) == 0:
        return
    classes = out_shape[1]
    low, high = int(jnp.min(y)), int(jnp.max(y))
    if low < 0 or high >= classes:
        raise ValueError(f"{name}: expected int class labels in [0, {classes}) for the model's "
                         f"{classes} outputs, received labels from {low} to {high}")


@_cached_when_hashable(maxsize=32)
def _output_shape(model, in_shape: tuple, dtype):
    """The model's output shape for a batch of 2 inputs (a trace, nothing runs), or None when the
    outputs are not one array."""
    params, state = jax.eval_shape(lambda key: model.init(key, in_shape), jax.random.key(0))
    x = jax.ShapeDtypeStruct((2, *in_shape), dtype)
    outputs = jax.eval_shape(lambda p, s, xb: model.apply(p, s, xb, train=False)[0],
                             params, state, x)
    return getattr(outputs, "shape", None)


def _nbytes(array) -> int:
    """Size in bytes, without copying a device array back to the host."""
    return array.nbytes if hasattr(array, "nbytes") else np.asarray(array).nbytes


def _epoch_logs(metrics) -> dict:
    good = jax.tree.map(lambda m: np.asarray(m)[np.isfinite(np.asarray(m))], metrics)
    mean = lambda values: float(values.mean()) if values.size else float("nan")
    logs = {"loss": mean(good["loss"])}
    if "accuracy" in good:
        logs["accuracy"] = mean(good["accuracy"])
    if "penalty" in good:
        logs["penalty"] = mean(good["penalty"])
    logs["update_ratio"] = {k: mean(v) for k, v in good["update_ratio"].items()}
    return logs


def fit(model, loss, optimizer, train: Sequence, *, epochs: int, batch_size: int, key,
        validation: Sequence | None = None, params=None, state=None, opt_state=None,
        regularizer=None, hand_written: bool = False, augment: Callable | None = None,
        callbacks: Sequence[Callable] = (), early_stopping: EarlyStopping | None = None,
        progress: bool = True, checkpoint_path=None, checkpoint_every: int = 1,
        resume: bool = False, max_device_bytes: int = 2**31, mesh=None,
        compute_dtype=None) -> FitResult:
    """Train `model` on `train = (x, y)` for `epochs` epochs of shuffled mini-batches.

    Parameters are initialised from `key` unless given. Each epoch's shuffle, dropout masks
    and augmentation (`augment(key, x) -> x`, applied per batch) derive from
    `fold_in(key, epoch)`, so a run is reproducible and resumable bit for bit: with
    `checkpoint_path`, a checkpoint is written atomically every `checkpoint_every` epochs, and
    `resume=True` continues from it. `history` holds per-epoch "loss", "accuracy",
    "val_loss", "val_accuracy", "update_ratio" (dict of leaf → mean ‖Δθ‖/‖θ‖ over every
    `RATIO_EVERY`-th step) and "epoch_time". `callbacks(epoch, logs, result)` may return True
    to stop. With a device `mesh` (`fn.parallel.mesh()`), every batch is split across its
    devices and the parameters and states are replicated (data parallelism; see
    `funcnn.parallel`). `compute_dtype` (e.g. `jnp.bfloat16`) turns on mixed precision as in
    `make_step`.
    """
    x, y = train
    if validation is not None:
        validation = tuple(jnp.asarray(a) for a in validation)
    if len(x) != len(y):
        raise ValueError(f"fit: expected as many targets as inputs, received {len(x)} inputs and "
                         f"{len(y)} targets")
    _check_count("fit", "batch_size", batch_size, (len(x), "the training examples"))
    _check_count("fit", "checkpoint_every", checkpoint_every)
    if early_stopping is not None and early_stopping.monitor.startswith("val_") and validation is None:
        raise ValueError(f"fit: early_stopping monitors {early_stopping.monitor!r}, which needs "
                         f"validation=(x, y)")
    _check_labels("fit", model, x, y)
    if validation is not None:
        if len(validation[0]) != len(validation[1]):
            raise ValueError(f"fit: expected as many validation targets as inputs, received "
                             f"{len(validation[0])} inputs and {len(validation[1])} targets")
        _check_labels("fit (validation)", model, validation[0], validation[1])
    init_key, train_key = jax.random.split(key)
    if params is None or state is None:   # given params without state: the layers' fresh state
        fresh_params, fresh_state = jax.jit(model.init, static_argnums=1)(
            init_key, tuple(np.shape(x)[1:]))
        params = fresh_params if params is None else params
        state = fresh_state if state is None else state
    opt_state = optimizer.init(params) if opt_state is None else opt_state

    history: dict = {"loss": [], "update_ratio": [], "epoch_time": []}
    result, best, stopped = FitResult(params, state, opt_state, history, 0), None, False
    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        result, stored_best = _resume(checkpoint_path, params, state, opt_state, key)
        if early_stopping is not None:
            best, stopped = _replay_early_stopping(early_stopping, result, stored_best)
            if stopped:   # the checkpointed run had stopped early: it is finished
                return _restored(early_stopping, best, result)

    place = lambda tree: tree
    if mesh is not None:
        parallel.check_batch_size(batch_size, mesh)
        place = lambda tree: parallel.replicate(tree, mesh)
    streaming = _nbytes(x) + _nbytes(y) > max_device_bytes
    images, labels = (np.asarray(x), np.asarray(y)) if streaming else \
        place((jnp.asarray(x), jnp.asarray(y)))
    configuration = (model, loss, optimizer, regularizer, hand_written, compute_dtype, batch_size,
                     augment, mesh, streaming)
    run_epoch = _epoch_runner(*configuration, False)

    for epoch in range(result.epoch + 1, epochs + 1):
        start = time.perf_counter()
        epoch_key = jax.random.fold_in(train_key, epoch)
        order = epoch_order(epoch_key, len(x), batch_size)
        order = order if streaming else place(jnp.asarray(order))
        start_carry = place(EpochCarry(result.params, result.state, result.opt_state,
                                       jnp.array(-1, jnp.int32)))   # not donated: reusable
        carry, metrics = run_epoch(start_carry, images, labels, epoch_key, order)
        diverged = int(carry.bad_step) >= 0 or not _host_finite(carry.params, carry.state,
                                                                carry.opt_state)
        if diverged:  # replay the epoch guarded: stop at the last good values
            carry, metrics = _epoch_runner(*configuration, True)(start_carry, images, labels,
                                                                  epoch_key, order)
        bad_step = int(carry.bad_step)
        logs = _epoch_logs(metrics)
        elapsed = time.perf_counter() - start
        history = {k: list(v) for k, v in result.history.items()}
        for name, value in logs.items():
            history.setdefault(name, []).append(value)
        if validation is not None:
            for name, value in _evaluate(model, loss, carry.params, carry.state,
                                         *validation).items():
                history.setdefault(f"val_{name}", []).append(value)
        history["epoch_time"].append(elapsed)
        result = FitResult(carry.params, carry.state, carry.opt_state, history, epoch)
        if bad_step >= 0:
            rows = _nonfinite_rows(images, np.asarray(order)[bad_step])
            cause = "" if not rows else (f"; the inputs x[{rows[0]}]" + (
                f" and {len(rows) - 1} more of that batch" if len(rows) > 1 else "") +
                " are not finite: clean the data")
            raise TrainingDiverged(
                f"fit: non-finite loss, gradient, parameter or state at epoch {epoch}, step "
                f"{bad_step + 1} of {len(x) // batch_size}{cause}; training stopped and the last "
                f"finite parameters (before that step) are in .result", result)
        if progress:
            _print_progress(epoch, epochs, history, (len(x) // batch_size) * batch_size / elapsed)
        if early_stopping is not None:
            best, stopped = _judge_epoch(early_stopping, best,
                                         early_stopping.monitored(history)[-1], epoch, result)
        stopped = stopped or any(callback(epoch, {k: v[-1] for k, v in history.items()}, result)
                                 for callback in callbacks)
        if checkpoint_path is not None and (epoch % checkpoint_every == 0 or epoch == epochs
                                            or stopped):
            keep_best = early_stopping is not None and early_stopping.restore_best \
                and best.epoch != epoch
            _save(checkpoint_path, result, key, best.result if keep_best else None)
        if stopped:
            break
    return _restored(early_stopping, best, result)


def _nonfinite_rows(images, rows) -> list[int]:
    """The example indices among `rows` whose inputs hold NaN or ±inf."""
    batch = np.asarray(images[rows] if isinstance(images, np.ndarray) else
                       jnp.take(images, jnp.asarray(rows), axis=0))
    if not np.issubdtype(batch.dtype, np.inexact):
        return []
    bad = ~np.isfinite(batch.reshape(len(rows), -1)).all(axis=1)
    return [int(r) for r in np.asarray(rows)[bad]]


def _check_count(name: str, what: str, value, most: tuple[int, str] | None = None) -> None:
    """Raise unless `value` is an int ≥ 1 (and ≤ `most`, a (bound, what the bound is) pair)."""
    if not is_positive_int(value) or (most is not None and value > most[0]):
        bound = f"an int in [1, {most[0]}] ({most[1]})" if most else "an int ≥ 1"
        raise ValueError(f"{name}: expected {what} to be {bound}, received {value!r}")


def _print_progress(epoch, epochs, history, samples_per_second):
    parts = [f"epoch {epoch}/{epochs}"]
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if name in history:
            parts.append(f"{name} {history[name][-1]:.4f}")
    parts.append(f"{samples_per_second:,.0f} samples/s")
    print("  ".join(parts), file=sys.stdout, flush=True)
