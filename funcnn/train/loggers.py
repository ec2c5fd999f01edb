"""TensorBoard logging as a `fit` callback, through `tensorboardX` (an optional extra:
`pip install 'funcnn[tensorboard]'`). CSV and JSONL loggers are built in (`CSVLogger`,
`JSONLLogger` in `funcnn.train.callbacks`); this one writes TensorBoard's event files:

    fit(..., callbacks=[fn.train.TensorBoard("runs/mlp")])      # then: tensorboard --logdir runs
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from funcnn import paths
from funcnn.train.callbacks import Callback, _check_int, flat_scalars

__all__ = ["TensorBoard"]


def _tensorboardx():
    """tensorboardX's summary builders, its synchronous event-file writer and its protos."""
    try:
        from tensorboardX import summary
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
    except ImportError as error:
        raise ImportError("TensorBoard: expected the optional package tensorboardX, which is not "
                          "installed; pip install 'funcnn[tensorboard]' (or pip install "
                          "tensorboardX)") from error
    return summary, EventsWriter, Event, SessionLog


@dataclasses.dataclass(frozen=True)
class TensorBoard(Callback):
    """Each epoch's logged numbers as TensorBoard scalars at step = epoch (nested logs as
    "name/key": "update_ratio/0/w", a partition's "learning_rate/<group>"), and every
    `histograms` epochs (None: never) a histogram of each parameter leaf ("params/0/w"), in
    an event file under `logdir`, written and flushed to disk at the end of every epoch.

    A run that starts at epoch e (0, or a resumed checkpoint's epoch) hides the events of steps
    > e that an earlier run left in `logdir` (TensorBoard's purge: a crashed run resumed from
    its last checkpoint shows each epoch once), as `CSVLogger` keeps its rows up to e.
    """

    logdir: Any
    histograms: int | None = 1
    _open: dict = dataclasses.field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self):
        if self.histograms is not None:
            _check_int("TensorBoard", "histograms (epochs)", self.histograms, 1)
        _tensorboardx()   # a missing extra is reported now, not after the first epoch

    def on_train_begin(self, memory, info):
        _, EventsWriter, Event, SessionLog = _tensorboardx()
        self._close()   # a file left open by a run that raised
        Path(self.logdir).mkdir(parents=True, exist_ok=True)
        writer = EventsWriter(str(Path(self.logdir) / "events"), f".{time.time_ns()}")
        writer.write_event(Event(wall_time=time.time(), step=info.epoch + 1,
                                 session_log=SessionLog(status=SessionLog.START)))   # the purge
        writer.flush()
        self._open["writer"] = writer

    def on_epoch_end(self, memory, info):
        summary, _, Event, _ = _tensorboardx()
        found = [summary.scalar(name, float(value))
                 for name, value in flat_scalars(info.logs).items()]
        if self.histograms is not None and info.epoch % self.histograms == 0:
            params = info.result.params
            found += [summary.histogram(f"params/{name}", np.asarray(leaf, np.float64),
                                        "auto")   # numpy's bin rule
                      for name, leaf in zip(paths.leaf_paths(params), jax.tree.leaves(params))]
        writer, now = self._open["writer"], time.time()
        for value in found:
            writer.write_event(Event(wall_time=now, step=info.epoch, summary=value))
        writer.flush()
        return memory, None

    def on_train_end(self, memory, info):
        self._close()
        return None

    def _close(self):
        writer = self._open.pop("writer", None)
        if writer is not None:
            writer.close()
