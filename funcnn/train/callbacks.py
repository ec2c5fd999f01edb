"""Callbacks that steer `fit`: each sees the epoch's logs and the trainer's state and may return
changes — stop, new hyper-parameters (in a new optimizer state), restored parameters.

A callback is an immutable value with an explicit memory, so a checkpoint can hold it:

    memory = callback.init(result)                       # a pytree, fixed structure
    callback.on_train_begin(memory, info)                # side effects only (open a file)
    memory, changes = callback.on_epoch_end(memory, info)
    changes = callback.on_train_end(memory, info)

`info` is an `EpochInfo`; `changes` a `Changes` or None. A plain function
`callback(epoch, logs, result) -> bool` is accepted too (True stops).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from funcnn import checkpoint, optim
from funcnn.train.epoch import CHECK_EVERY

__all__ = ["CSVLogger", "Callback", "Changes", "Checkpoint", "EarlyStopping", "EpochInfo",
           "FunctionCallback", "JSONLLogger", "ProgressBar", "ReduceLROnPlateau", "UpdateRatio",
           "as_callback", "flat_scalars", "learning_rates"]


class EpochInfo(NamedTuple):
    """What a callback sees at the end of an epoch (or at the start or end of training)."""

    epoch: int          # epochs completed (0 before the first)
    epochs: int         # epochs asked for
    logs: dict          # this epoch's logged values: "loss", "val_loss", "learning_rate", …
    result: Any         # the FitResult after this epoch (params, state, opt_state, history)
    stopping: bool      # whether an earlier callback has asked to stop after this epoch
    snapshot: Callable[[], dict]   # the run as a checkpointable tree (what `Checkpoint` saves)


class Changes(NamedTuple):
    """What a callback asks of the trainer; None fields change nothing."""

    stop: bool = False
    params: Any = None
    state: Any = None
    opt_state: Any = None
    epoch: int | None = None   # the epoch the restored trees come from (EarlyStopping)


class Callback:
    """A callback that changes nothing; subclass and override what you need."""

    def init(self, result) -> Any:
        del result
        return {}

    def on_train_begin(self, memory, info: EpochInfo) -> None:
        del memory, info

    def on_epoch_end(self, memory, info: EpochInfo) -> tuple[Any, Changes | None]:
        del info
        return memory, None

    def on_train_end(self, memory, info: EpochInfo) -> Changes | None:
        del memory, info
        return None


def _mode(monitor: str, mode: str | None, name: str) -> str:
    if mode not in (None, "min", "max"):
        raise ValueError(f"{name}: expected mode None, 'min' or 'max', received {mode!r}")
    return mode or ("max" if "accuracy" in monitor else "min")


def _monitored(name: str, monitor: str, logs: dict) -> float:
    if monitor not in logs:
        known = ", ".join(sorted(k for k, v in logs.items() if isinstance(v, (int, float))))
        raise ValueError(f"{name}: monitor {monitor!r} is not in the logs; expected one of: "
                         f"{known}")
    return float(logs[monitor])


def _check_int(name: str, what: str, value, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"{name}: expected {what} to be an int ≥ {least}, received {value!r}")


@dataclasses.dataclass(frozen=True)
class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs.

    `mode` is "min" or "max" (default: "max" for accuracies, "min" otherwise); a NaN value never
    improves. With `restore_best`, training ends (stopped or not) with the parameters, states and
    epoch number of the best epoch (the history stays whole); its optimizer state comes back
    too, so a learning rate reduced after the best epoch is undone with it.
    """

    monitor: str = "val_loss"
    patience: int = 5
    min_delta: float = 0.0
    mode: str | None = None
    restore_best: bool = True

    def __post_init__(self):
        _mode(self.monitor, self.mode, "EarlyStopping")
        _check_int("EarlyStopping", "patience (epochs)", self.patience, 1)

    def better(self, value: float, best: float) -> bool:
        if _mode(self.monitor, self.mode, "EarlyStopping") == "max":
            return value > best + self.min_delta
        return value < best - self.min_delta

    def init(self, result):
        worst = -math.inf if _mode(self.monitor, self.mode, "EarlyStopping") == "max" else math.inf
        return {"best": worst, "epoch": 0, "params": result.params, "state": result.state,
                "opt_state": result.opt_state}

    def on_epoch_end(self, memory, info):
        value = _monitored("EarlyStopping", self.monitor, info.logs)
        if not math.isnan(value) and self.better(value, memory["best"]):
            memory = {"best": value, "epoch": info.epoch, "params": info.result.params,
                      "state": info.result.state, "opt_state": info.result.opt_state}
        if info.epoch - memory["epoch"] < self.patience:
            return memory, None
        return memory, Changes(stop=True)

    def on_train_end(self, memory, info):
        if not self.restore_best or memory["epoch"] in (0, info.result.epoch):
            return None
        return Changes(params=memory["params"], state=memory["state"],
                       opt_state=memory["opt_state"], epoch=memory["epoch"])


@dataclasses.dataclass(frozen=True)
class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by `factor` (never below `min_lr`) when `monitor` plateaus.

    Counts as `fn.optim.schedules.reduce_on_plateau` and torch's ReduceLROnPlateau: an epoch
    improves when v < best − threshold·|best| (mode "min"; "max" watches −v, torch's rule for
    non-negative monitors); a reduction comes at the end of the epoch in which the number of
    consecutive epochs without improvement exceeds `patience`, and the next `cooldown` epochs
    do not count. With `stop_at_min_lr`, training stops when a reduction is due and every rate
    is already at `min_lr`. The optimizer must hold its rate in its state
    (`fn.optim.inject_hyperparams`, as every alias does): a schedule is scaled, and every group
    of a `fn.optim.partition` that has a learning rate is reduced.
    """

    monitor: str = "val_loss"
    factor: float = 0.5
    patience: int = 10
    min_lr: float = 0.0
    stop_at_min_lr: bool = False
    threshold: float = 1e-4
    cooldown: int = 0
    mode: str | None = None

    def __post_init__(self):
        _mode(self.monitor, self.mode, "ReduceLROnPlateau")
        if not 0 < self.factor < 1:
            raise ValueError(f"ReduceLROnPlateau: expected 0 < factor < 1, received "
                             f"{self.factor!r}")
        _check_int("ReduceLROnPlateau", "patience (epochs)", self.patience, 0)
        _check_int("ReduceLROnPlateau", "cooldown (epochs)", self.cooldown, 0)
        if not self.min_lr >= 0 or not self.threshold >= 0:
            raise ValueError(f"ReduceLROnPlateau: expected min_lr ≥ 0 and threshold ≥ 0, "
                             f"received {self.min_lr!r} and {self.threshold!r}")

    def init(self, result):
        _rates(result.opt_state)   # refuse an optimizer without a learning rate in its state
        return {"best": math.inf, "bad_epochs": 0, "cooldown": 0}

    def on_epoch_end(self, memory, info):
        value = _monitored("ReduceLROnPlateau", self.monitor, info.logs)
        value = -value if _mode(self.monitor, self.mode, "ReduceLROnPlateau") == "max" else value
        best = memory["best"]
        better = value < (best if math.isinf(best) else best - self.threshold * abs(best))
        best = value if better else best
        bad = 0 if better or memory["cooldown"] > 0 else memory["bad_epochs"] + 1
        cooldown = max(memory["cooldown"] - 1, 0)
        if bad <= self.patience:
            return {"best": best, "bad_epochs": bad, "cooldown": cooldown}, None
        memory = {"best": best, "bad_epochs": 0, "cooldown": self.cooldown}
        rates = _rates(info.result.opt_state)
        floor = lambda rate: rate <= self.min_lr * (1 + 1e-6) + 1e-30
        if self.stop_at_min_lr and all(floor(rate) for rate in rates.values()):
            return memory, Changes(stop=True)
        opt_state = info.result.opt_state
        for group, rate in rates.items():
            new = min(rate, max(rate * self.factor, self.min_lr))   # never raised to min_lr
            if new == rate:
                continue
            opt_state = optim.set_hyperparams(opt_state, learning_rate=new) if group is None \
                else optim.set_hyperparams(opt_state, group=group, learning_rate=new)
        return memory, Changes(opt_state=opt_state)


def _rates(opt_state) -> dict:
    """{group (None without partition): learning rate} of an optimizer state."""
    found = learning_rates(opt_state)
    if found is None:
        raise ValueError("ReduceLROnPlateau: the optimizer holds no learning_rate in its state; "
                         "build it with fn.optim.inject_hyperparams (every fn.optim alias is)")
    return found if isinstance(found, dict) else {None: found}


def learning_rates(opt_state):
    """The learning rate of an optimizer state (a float), {group: rate} for a partition's groups
    that have one, or None when the state holds none."""
    hyper = optim.hyperparams(opt_state)
    if "learning_rate" in hyper:
        return float(np.asarray(hyper["learning_rate"]).ravel()[0])
    groups = {group: float(np.asarray(h["learning_rate"]).ravel()[0])
              for group, h in hyper.items() if isinstance(h, dict) and "learning_rate" in h}
    return groups or None


@dataclasses.dataclass(frozen=True)
class Checkpoint(Callback):
    """Save the run (trees, history, key, every callback's memory) atomically to `path` every
    `every` epochs, after the last epoch and when training stops; `fit(resume=True)` continues
    it bit for bit. Runs after the other callbacks of the epoch."""

    path: Any
    every: int = 1

    def __post_init__(self):
        _check_int("Checkpoint", "every (epochs)", self.every, 1)

    def on_epoch_end(self, memory, info):
        if info.epoch % self.every == 0 or info.epoch == info.epochs or info.stopping:
            checkpoint.save(self.path, info.snapshot())
        return memory, None


@dataclasses.dataclass(frozen=True)
class ProgressBar(Callback):
    """One line per epoch: loss, accuracy, validation scores, learning rate, samples/s."""

    stream: Any = None

    def on_epoch_end(self, memory, info):
        logs = info.logs
        parts = [f"epoch {info.epoch}/{info.epochs}"]
        parts += [f"{name} {logs[name]:.4f}" for name in ("loss", "accuracy", "val_loss",
                                                         "val_accuracy") if name in logs]
        if isinstance(logs.get("learning_rate"), float):
            parts.append(f"lr {logs['learning_rate']:.3g}")
        if logs.get("samples_per_second"):
            parts.append(f"{logs['samples_per_second']:,.0f} samples/s")
        print("  ".join(parts), file=self.stream or sys.stdout, flush=True)
        return memory, None


def flat_scalars(logs: dict) -> dict:
    """The logs' numbers, nested dicts flattened to "name/key" (e.g. "update_ratio/0/w")."""
    flat = {}
    for name, value in logs.items():
        if isinstance(value, dict):
            flat.update({f"{name}/{k}": v for k, v in flat_scalars(value).items()})
        elif isinstance(value, (int, float)):
            flat[name] = value
    return flat


def _kept_lines(path: Path, epoch: int, parse: Callable[[str], int | None]) -> list[str]:
    """The lines of a log file up to `epoch` (a resumed run rewrites what came after)."""
    if epoch == 0 or not path.exists():
        return []
    return [line for line in path.read_text().splitlines(keepends=True)
            if (parse(line) or 0) <= epoch]


def _rewrite(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
    temporary.write_text("".join(lines))
    os.replace(temporary, path)


def _append(path: Path, line: str) -> None:
    with open(path, "a") as file:
        file.write(line)
        file.flush()


@dataclasses.dataclass(frozen=True)
class CSVLogger(Callback):
    """One CSV row per epoch: "epoch" and every logged number (nested logs as "name/key");
    the columns are those of the first epoch written. A resumed run keeps the rows up to its
    checkpoint and continues the file."""

    path: Any

    def on_train_begin(self, memory, info):
        def epoch_of(line):
            head = line.split(",", 1)[0]
            return int(head) if head.isdigit() else None
        _rewrite(Path(self.path), _kept_lines(Path(self.path), info.epoch, epoch_of))

    def on_epoch_end(self, memory, info):
        path, row = Path(self.path), {"epoch": info.epoch, **flat_scalars(info.logs)}
        text = path.read_text() if path.exists() else ""
        columns = next(csv.reader([text.splitlines()[0]])) if text else list(row)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        if not text:
            writer.writerow(columns)
        writer.writerow([row.get(c, "") for c in columns])
        _append(path, out.getvalue())
        return memory, None


@dataclasses.dataclass(frozen=True)
class JSONLLogger(Callback):
    """One JSON object per epoch and line: {"epoch": e, **logs} (nested logs stay nested)."""

    path: Any

    def on_train_begin(self, memory, info):
        _rewrite(Path(self.path), _kept_lines(Path(self.path), info.epoch,
                                               lambda line: json.loads(line).get("epoch")))

    def on_epoch_end(self, memory, info):
        _append(Path(self.path), json.dumps({"epoch": info.epoch, **info.logs}) + "\n")
        return memory, None


@dataclasses.dataclass(frozen=True)
class UpdateRatio(Callback):
    """Log "update_ratio": per leaf, the mean ‖Δθ‖/‖θ‖ of every `every`-th step (the notes'
    ~1e-3 health check). `fit` samples every 32nd step by default: the first step of each
    stretch the epoch program checks in full, measured against the copy it keeps of the
    stretch's start anyway; `every=None` turns the measurement off (the epoch program then has
    no trace of it)."""

    every: int | None = CHECK_EVERY

    def __post_init__(self):
        if self.every is not None:
            _check_int("UpdateRatio", "every (steps)", self.every, 1)


@dataclasses.dataclass(frozen=True)
class FunctionCallback(Callback):
    """A plain `callback(epoch, logs, result) -> bool` (True stops) as a Callback."""

    function: Callable

    def on_epoch_end(self, memory, info):
        return memory, Changes(stop=True) if self.function(info.epoch, info.logs,
                                                           info.result) else None


def as_callback(callback) -> Callback:
    """A Callback as is; a plain function wrapped in `FunctionCallback`."""
    if isinstance(callback, Callback):
        return callback
    if callable(callback):
        return FunctionCallback(callback)
    raise TypeError(f"fit: expected callbacks to be fn.train.Callback values or functions "
                    f"(epoch, logs, result) -> bool, received {callback!r}")
