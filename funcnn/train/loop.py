"""`fit`: a short loop over epochs — run the compiled epoch, log, let the callbacks steer.

Each epoch is one call of the guarded epoch program (`make_epoch`), compiled once per
configuration and kept in `fn.train`'s one cache. Everything a run needs to continue — trees,
history, key, the explosion guard's scale, every callback's memory — is one checkpointable
snapshot, so `resume=True` continues a run bit for bit.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import checkpoint, parallel
from funcnn.optim.base import reads_value_fn
from funcnn.train import callbacks as cbs
from funcnn.train.batching import TrainingData, batch_sizes, prepare
from funcnn.train.cache import compiled, init_program
from funcnn.train.epoch import (
    DIVERGENCE, exploded, full_batch_step, make_epoch, ratio_columns, start)
from funcnn.train.evaluate import check_count, check_labels, check_pair, evaluate_checked
from funcnn.train.step import make_step

__all__ = ["FitResult", "TrainingDiverged", "epoch_logs", "fit"]


class FitResult(NamedTuple):
    """What `fit` returns: the trained pytrees, the per-epoch history and the epochs run."""

    params: Any
    state: Any
    opt_state: Any
    history: dict
    epoch: int


class TrainingDiverged(FloatingPointError):
    """A step whose loss, parameters or states were not finite, or whose loss exploded.

    `.result` holds the last good FitResult; `.report` (computed on first access) is
    `fn.diagnostics.find_nonfinite`'s report of the failed step, or None when the cause was an
    exploding but finite loss.
    """

    def __init__(self, message: str, result: FitResult, diagnose: Callable[[], Any] | None = None):
        super().__init__(message)
        self.result = result
        self._diagnose, self._report = diagnose, None

    @property
    def report(self):
        if self._diagnose is not None:
            self._report, self._diagnose = self._diagnose(), None
        return self._report


class _Config(NamedTuple):
    """Everything the compiled epoch depends on: its key in the cache of programs."""

    model: Any
    loss: Any
    optimizer: Any
    regularizer: Any
    hand_written: bool
    compute_dtype: Any
    batch_size: int
    augment: Any
    mesh: Any
    divergence: float | None
    ratio_every: int | None


def _epoch_program(config: _Config):
    make = lambda optimizer: make_step(config.model, config.loss, optimizer,
                                       regularizer=config.regularizer,
                                       hand_written=config.hand_written,
                                       compute_dtype=config.compute_dtype, with_accuracy=True)
    step = full_batch_step(make, config.model, config.loss, config.optimizer,
                           regularizer=config.regularizer, compute_dtype=config.compute_dtype) \
        if reads_value_fn(config.optimizer) else make(config.optimizer)
    if config.mesh is not None:
        step = parallel.data_parallel(step, config.mesh)
    return jax.jit(make_epoch(step, config.batch_size, config.augment,
                              divergence=config.divergence, ratio_every=config.ratio_every))


def epoch_logs(metrics, bad_step: int, params) -> dict:
    """Each per-step metric's mean over the steps applied (finite rows), update ratios by leaf."""
    if bad_step >= 0:
        metrics = jax.tree.map(lambda m: m[:bad_step], metrics)
    metrics = ratio_columns(metrics, params)

    def mean(values):
        values = np.asarray(values, np.float64)
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else float("nan")

    return {name: ({k: mean(v) for k, v in value.items()} if isinstance(value, dict)
                   else mean(value)) for name, value in metrics.items()}


def _assemble(callbacks, early_stopping, progress, checkpoint_path, checkpoint_every) -> tuple:
    """The run's callbacks: the user's, then the ones `fit`'s arguments ask for, the
    checkpointing ones last (they save what the others decided)."""
    found = [cbs.as_callback(c) for c in callbacks]
    if early_stopping is not None:
        found.append(early_stopping)
    if progress and not any(isinstance(c, cbs.ProgressBar) for c in found):
        found.append(cbs.ProgressBar())
    if checkpoint_path is not None:
        found.append(cbs.Checkpoint(checkpoint_path, checkpoint_every))
    return tuple(sorted(found, key=lambda c: isinstance(c, cbs.Checkpoint)))


def _memory_keys(callbacks) -> list[str]:
    """Each callback's name in a checkpoint: its type and its rank among callbacks of that type
    ("ReduceLROnPlateau:0"), so a resumed run may add or drop stateless callbacks."""
    names = [type(c).__name__ for c in callbacks]
    return [f"{name}:{names[:i].count(name)}" for i, name in enumerate(names)]


def _snapshot(result: FitResult, callbacks, memories, key, reference: float,
              stopped: bool) -> dict:
    return {"params": result.params, "state": result.state, "opt_state": result.opt_state,
            "epoch": result.epoch, "key": key, "history": json.dumps(result.history),
            "reference": reference, "stopped": stopped,
            "callbacks": dict(zip(_memory_keys(callbacks), memories))}


def _resume(path, fresh: FitResult, callbacks, memories, key):
    """(result, memories, reference, stopped) of the run checkpointed at `path`; a callback
    without a stored memory starts afresh."""
    stored_names = set(checkpoint.load(path).get("callbacks", {}))
    like = _snapshot(fresh, callbacks, memories, key, 0.0, False)
    like["callbacks"] = {k: m for k, m in like["callbacks"].items() if k in stored_names}
    stored, report = checkpoint.load(path, like={**like, "history": ""}, strict=False)
    dropped = [name for name in report.unexpected if name.startswith("callbacks/")]
    if report.missing or report.mismatched or len(dropped) != len(report.unexpected):
        raise checkpoint.CheckpointError(f"fit: the checkpoint {path} does not fit this run "
                                         f"(resume with the same model and optimizer): {report}")
    if not np.array_equal(jax.random.key_data(stored["key"]), jax.random.key_data(key)):
        raise ValueError(f"fit: the checkpoint {path} was written by a run with another key; "
                         f"pass the same key to resume it")
    result = FitResult(stored["params"], stored["state"], stored["opt_state"],
                       json.loads(stored["history"]), stored["epoch"])
    restored = [stored["callbacks"][name] if name in stored_names else memory
                for name, memory in zip(_memory_keys(callbacks), memories)]
    return result, tuple(restored), stored["reference"], stored["stopped"]


def _apply(result: FitResult, changes: cbs.Changes | None) -> FitResult:
    if changes is None:
        return result
    replaced = {name: getattr(changes, name) for name in ("params", "state", "opt_state", "epoch")
                if getattr(changes, name) is not None}
    return result._replace(**replaced)


def _begin(model, optimizer, in_shape, key, trees, callbacks, resume: bool):
    """The run's start: (result, callback memories, explosion reference, stopped) — fresh (the
    given trees, the missing ones initialised from split(key)[0]) or, with `resume`, from the
    checkpoint of the run's `Checkpoint` callback when it exists."""
    params, state, opt_state = trees
    if params is None or state is None:   # given params without state: the layers' fresh state
        fresh_params, fresh_state = compiled(init_program, model)(jax.random.split(key)[0],
                                                                  tuple(in_shape))
        params = fresh_params if params is None else params
        state = fresh_state if state is None else state
    opt_state = optimizer.init(params) if opt_state is None else opt_state
    result = FitResult(params, state, opt_state, {}, 0)
    memories = tuple(c.init(result) for c in callbacks)
    path = next((c.path for c in callbacks if isinstance(c, cbs.Checkpoint)), None)
    if resume and path is not None and Path(path).exists():
        return _resume(path, result, callbacks, memories, key)
    return result, memories, float("inf"), False


def _check_arguments(x, y, epochs, batch_size, validation, model, mesh):
    """(validation, the batch size of each epoch), or raise."""
    if len(x) != len(y):
        raise ValueError(f"fit: expected as many targets as inputs, received {len(x)} inputs and "
                         f"{len(y)} targets")
    if len(x) == 0:
        raise ValueError("fit: expected at least one training example, received none")
    check_count("fit", "epochs", epochs)
    sizes = batch_sizes(batch_size, epochs, len(x), mesh)
    check_labels("fit", model, x, y)
    if validation is None:
        return None, sizes
    validation = check_pair("fit", validation, "validation ")
    check_labels("fit (validation)", model, *validation)
    return validation, sizes


def fit(model, loss, optimizer, train: Sequence, *, epochs: int,
        batch_size: int | Callable[[int], int], key,
        validation: Sequence | None = None, params=None, state=None, opt_state=None,
        regularizer=None, hand_written: bool = False, augment: Callable | None = None,
        callbacks: Sequence = (), early_stopping: cbs.EarlyStopping | None = None,
        progress: bool = True, checkpoint_path=None, checkpoint_every: int = 1,
        resume: bool = False, max_device_bytes: int = 2**31, mesh=None,
        compute_dtype=None, divergence: float | None = DIVERGENCE) -> FitResult:
    """Train `model` on `train = (x, y)` for `epochs` epochs of shuffled mini-batches.

    Parameters are initialised from split(key)[0] unless given; epoch e's shuffle, dropout
    masks and augmentation (`augment(key, x) -> x`, per batch) derive from
    fold_in(split(key)[1], e), so a run is reproducible. After each epoch the `callbacks`
    (`fn.train.callbacks`, or functions `(epoch, logs, result) -> bool`) see the logs and may
    stop, change hyper-parameters or restore parameters; `early_stopping`, `progress` and `checkpoint_path` (with
    `checkpoint_every`) add EarlyStopping, ProgressBar and Checkpoint. `resume=True`
    continues the run checkpointed there bit for bit, callbacks' memory included. Compiled
    programs are kept on disk for the next run (`fn.train.cache.persistent_cache`; opt out with
    FUNCNN_COMPILATION_CACHE=off).

    `batch_size` is an int B or a schedule: a callable epoch (1, 2, …) -> B, e.g.
    `fn.optim.batch_size_schedule({1: 128, 30: 256})` (growing the batch instead of decaying the
    rate, Smith et al. 2018: `fn.optim.batch_size_for_decay`). Epoch e runs ⌊len(x)/B(e)⌋ steps
    (the len(x) mod B(e) examples left after the shuffle sit that epoch out); every B(e) is checked
    before training (an int in [1, len(x)], divisible by a mesh's devices); each distinct B
    compiles its epoch program once.

    A step that is not finite, or whose loss exceeds `divergence` × (|first loss| + 1) (None:
    no bound), stops training with `TrainingDiverged`, whose `.result` holds the last good
    values. `history`: per-epoch "loss", "accuracy", "penalty", "val_loss", "val_accuracy",
    "learning_rate" (of the epoch's last step; {group: rate} with `fn.optim.partition`),
    "update_ratio" (leaf → mean ‖Δθ‖/‖θ‖ of every 32nd step; see `UpdateRatio`), "epoch_time"
    and "batch_size" (history only: not in the callbacks' logs). A device `mesh` splits every
    batch across its devices (`funcnn.parallel`); `compute_dtype` (e.g. `jnp.bfloat16`) is
    mixed precision as in `make_step`; data over `max_device_bytes` streams from the host in
    chunks. An optimizer that reads the objective (`fn.optim.lbfgs`, `fn.optim.newton`) trains
    full-batch only (batch_size = len(x) in every epoch, one update per epoch): its update gets
    value= and value_fn= (params -> loss + penalty on the training set).
    """
    x, y = train
    validation, sizes = _check_arguments(x, y, epochs, batch_size, validation, model, mesh)
    partial = next((e for e, size in enumerate(sizes, 1) if size != len(x)), None)
    if reads_value_fn(optimizer) and (partial is not None or mesh is not None):
        received = batch_size if partial is None or not callable(batch_size) else \
            f"a schedule giving {sizes[partial - 1]} at epoch {partial}"
        raise ValueError(f"fit: the optimizer reads the objective on the whole training set "
                         f"(value_fn=, as fn.optim.lbfgs and fn.optim.newton do): expected "
                         f"full-batch training, batch_size={len(x)} (the number of training "
                         f"examples) and no mesh, received batch_size={received}"
                         + ("" if mesh is None else " and a mesh"))
    check_count("fit", "checkpoint_every", checkpoint_every)
    callbacks = _assemble(callbacks, early_stopping, progress, checkpoint_path, checkpoint_every)
    for callback in callbacks:
        if validation is None and getattr(callback, "monitor", "").startswith("val_"):
            raise ValueError(f"fit: {type(callback).__name__} monitors {callback.monitor!r}, "
                             f"which needs validation=(x, y)")
    result, memories, reference, stopped = _begin(model, optimizer, np.shape(x)[1:], key,
                                                  (params, state, opt_state), callbacks, resume)
    ratio_every = next((c.every for c in callbacks if isinstance(c, cbs.UpdateRatio)),
                       cbs.UpdateRatio().every)
    configs = {size: _Config(model, loss, optimizer, regularizer, hand_written, compute_dtype,
                             size, augment, mesh, divergence, ratio_every) for size in set(sizes)}
    programs = {}   # batch size -> its epoch program, fetched from the cache on first use
    data, train_key = prepare(x, y, max_device_bytes, mesh), jax.random.split(key)[1]

    def epoch_input(epoch):   # the epoch's key and batch order: functions of (key, epoch, B)
        epoch_key = jax.random.fold_in(train_key, epoch)
        return epoch_key, data.order(epoch_key, sizes[epoch - 1])

    upcoming = {}   # epoch -> its input, prepared while the epoch before ran on the device
    info = lambda logs, stopping=False: cbs.EpochInfo(
        result.epoch, epochs, logs, result, stopping,
        lambda: _snapshot(result, callbacks, memories, key, reference, stopping))
    for callback, memory in zip(callbacks, memories):
        callback.on_train_begin(memory, info({}))

    try:
        for epoch in range(result.epoch + 1, epochs + 1):
            if stopped:
                break
            config = configs[sizes[epoch - 1]]
            if config.batch_size not in programs:
                programs[config.batch_size] = compiled(_epoch_program, config)
            following = (lambda e=epoch + 1: {e: epoch_input(e)}) if epoch < epochs else dict
            result, logs, reference, upcoming = _train_epoch(
                programs[config.batch_size], config, data, result, reference,
                upcoming.pop(epoch, None) or epoch_input(epoch), following, validation)
            memories = list(memories)
            for i, callback in enumerate(callbacks):
                memories[i], changes = callback.on_epoch_end(memories[i], info(logs, stopped))
                result, stopped = _apply(result, changes), stopped or bool(changes and changes.stop)
        for callback, memory in zip(callbacks, memories):
            result = _apply(result, callback.on_train_end(memory, info({})))
    except (KeyboardInterrupt, Exception) as error:   # Ctrl-C, a failing callback
        if not isinstance(error, TrainingDiverged):
            error.result = result   # the last completed epoch's result; its checkpoint is whole
            if hasattr(error, "add_note"):   # Python ≥ 3.11
                error.add_note(f"fit: interrupted after epoch {result.epoch}; the exception's "
                               f".result holds that epoch's FitResult")
        raise
    return result


def _train_epoch(program, config: _Config, data: TrainingData, result: FitResult, reference: float,
                 epoch_input, meanwhile, validation):
    """Run the epoch after `result`'s on `epoch_input` = (epoch key, order) and log it:
    (result, logs, reference, meanwhile() — run while the device works), or raise
    TrainingDiverged."""
    begin, (epoch_key, order) = time.perf_counter(), epoch_input
    carry, metrics, ahead = data.run(program, start(result.params, result.state, result.opt_state,
                                                    reference), epoch_key, config.batch_size,
                                     order, meanwhile)
    reference, bad_step = float(carry.reference), int(carry.bad_step)
    logs = epoch_logs(metrics, bad_step, carry.params)
    if validation is not None and bad_step < 0:
        logs.update({f"val_{k}": v for k, v in evaluate_checked(
            config.model, config.loss, carry.params, carry.state, *validation).items()})
    rates = cbs.learning_rates(carry.opt_state)
    logs.update({} if rates is None else {"learning_rate": rates})
    logs["epoch_time"] = time.perf_counter() - begin
    record = {**logs, "batch_size": config.batch_size}   # in the history, not the logs
    history = {k: [*v, record.get(k, float("nan"))] for k, v in result.history.items()}
    history.update({k: [v] for k, v in record.items() if k not in history})
    result = FitResult(carry.params, carry.state, carry.opt_state, history, result.epoch + 1)
    if bad_step >= 0:
        raise _diverged(config, data, result, epoch_key, np.asarray(order)[bad_step],
                        metrics["loss"][bad_step], bad_step, reference)
    logs["samples_per_second"] = len(metrics["loss"]) * config.batch_size / logs["epoch_time"]
    return result, logs, reference, ahead


def _diverged(config: _Config, data: TrainingData, result: FitResult, epoch_key, rows, bad_loss,
              bad_step, reference) -> TrainingDiverged:
    """The error for step `bad_step` of epoch `result.epoch` (its examples: `rows` of the data),
    with what is known of its cause."""
    divergence = config.divergence
    x, y = (np.asarray(a)[rows] for a in (data.images, data.labels))   # no gather to compile
    steps = len(data.images) // config.batch_size
    where = f"fit: at epoch {result.epoch}, step {bad_step + 1} of {steps}"
    if np.isfinite(bad_loss) and exploded(np.float32(bad_loss), np.float32(reference),
                                          divergence, xp=np):
        return TrainingDiverged(
            f"{where} the loss exploded to {float(bad_loss):.3g}, past divergence={divergence:g} "
            f"× (|first loss {reference:.3g}| + 1); training stopped and the last good parameters "
            f"(before that step) are in .result (lower the learning rate, or pass "
            f"divergence=None to allow it)", result)
    bad_rows = [int(r) for r, example in zip(rows, x.reshape(len(rows), -1))
                if np.issubdtype(example.dtype, np.inexact) and not np.isfinite(example).all()]
    cause = "" if not bad_rows else (f"; the inputs x[{bad_rows[0]}]" + (
        f" and {len(bad_rows) - 1} more of that batch" if len(bad_rows) > 1 else "") +
        " are not finite: clean the data")
    step_key = jax.random.fold_in(epoch_key, bad_step)

    def diagnose():
        """find_nonfinite on the failed step's batch, augmented as it was (the regularizer,
        mixed precision and a mesh are not modelled)."""
        from funcnn import diagnostics   # diagnostics builds on fn.train: imported when asked
        inputs = x if config.augment is None else \
            config.augment(jax.random.fold_in(step_key, 1), jnp.asarray(x))
        return diagnostics.find_nonfinite(config.model, config.loss, result.params,
                                          result.state, inputs, y,
                                          key=jax.random.fold_in(step_key, 0),
                                          optimizer=None if reads_value_fn(config.optimizer)
                                          else config.optimizer, opt_state=result.opt_state)

    return TrainingDiverged(
        f"{where} non-finite loss, gradient, parameter or state{cause}; training stopped and the "
        f"last finite parameters (before that step) are in .result (.report says which layer)",
        result, diagnose)
