"""Loggers as fit callbacks: CSV and JSONL (every logged key, one row per epoch, on disk before the
next epoch, a crashed run resumed from its checkpoint logging each epoch once), TensorBoard
(scalars and parameter histograms read back from the event files, parsed here as TFRecords with
their CRCs checked; TensorBoard's purge on resume), and ProgressBar on a stdout that is not a
terminal (one line per epoch, no carriage returns).
"""
import contextlib
import csv
import importlib.util
import io
import json
import struct
import sys

import jax
import numpy as np
import pytest

import funcnn as fn
from funcnn import nn
from funcnn.train.callbacks import flat_scalars

LOSS = fn.losses.softmax_cross_entropy


def _fit(spiral, **options):
    train, validation = spiral
    defaults = dict(epochs=3, batch_size=30, key=jax.random.key(0), progress=False,
                    validation=validation)
    return fn.train.fit(nn.serial(nn.Dense(16), nn.Relu(), nn.Dense(3)), LOSS,
                        fn.optim.sgd(0.5, momentum=0.9), train, **{**defaults, **options})


class Crash(fn.train.Callback):
    """Raise at the end of epoch `at`, after the callbacks before it (before Checkpoint)."""

    def __init__(self, at):
        self.at = at

    def on_epoch_end(self, memory, info):
        if info.epoch == self.at:
            raise KeyboardInterrupt
        return memory, None


class Record(fn.train.Callback):
    """Keep each epoch's logs, and what the log files hold when the epoch's callbacks run."""

    def __init__(self, *files):
        self.files, self.logs, self.seen = files, [], []

    def on_epoch_end(self, memory, info):
        self.logs.append(dict(info.logs))
        self.seen.append([len(f.read_text().splitlines()) for f in self.files])
        return memory, None


def test_csv_and_jsonl_log_every_key_each_epoch_on_disk_at_once(spiral, tmp_path):
    csv_path, jsonl_path = tmp_path / "log.csv", tmp_path / "log.jsonl"
    record = Record(csv_path, jsonl_path)
    result = _fit(spiral, callbacks=[fn.train.CSVLogger(csv_path),
                                     fn.train.JSONLLogger(jsonl_path), record])
    assert record.seen == [[2, 1], [3, 2], [4, 3]]   # header + one row per epoch, already written
    rows = list(csv.DictReader(csv_path.read_text().splitlines()))
    assert list(rows[0]) == ["epoch", *flat_scalars(record.logs[0])]
    for row, logs in zip(rows, record.logs):
        assert {k: float(v) for k, v in row.items() if k != "epoch"} == pytest.approx(
            flat_scalars(logs), rel=1e-12)
    lines = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    assert lines == [{"epoch": e, **logs} for e, logs in enumerate(record.logs, 1)]
    assert [row["val_loss"] for row in lines] == result.history["val_loss"]


def test_a_crashed_run_resumed_from_its_checkpoint_logs_each_epoch_once(spiral, tmp_path):
    csv_path, jsonl_path, events = tmp_path / "log.csv", tmp_path / "log.jsonl", tmp_path / "tb"
    board = importlib.util.find_spec("tensorboardX") is not None   # the optional extra
    loggers = lambda: [fn.train.CSVLogger(csv_path), fn.train.JSONLLogger(jsonl_path)] + (
        [fn.train.TensorBoard(events, histograms=None)] if board else [])
    checkpoint = fn.train.Checkpoint(tmp_path / "run", every=2)
    with pytest.raises(KeyboardInterrupt):   # epoch 3 logged, its checkpoint never written
        _fit(spiral, epochs=5, callbacks=[*loggers(), Crash(3), checkpoint])
    assert len(csv_path.read_text().splitlines()) == 1 + 3
    result = _fit(spiral, epochs=5, resume=True,   # the Crash callback dropped on resume
                  callbacks=[*loggers(), checkpoint])
    rows = list(csv.DictReader(csv_path.read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([float(r["loss"]) for r in rows], result.history["loss"],
                               rtol=1e-12)
    assert [json.loads(line)["epoch"] for line in jsonl_path.read_text().splitlines()] == \
        [1, 2, 3, 4, 5]
    if not board:
        return
    written = read_events(events)
    assert [step for step, _ in scalars(written)["loss"]] == [1, 2, 3, 3, 4, 5]   # two files
    shown = scalars(visible(written))["loss"]
    assert [step for step, _ in shown] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([v for _, v in shown], result.history["loss"], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# TensorBoard: the event files, read back.


def _masked_crc(data: bytes) -> int:
    from tensorboardX.crc32c import crc32c
    crc = crc32c(data) & 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(logdir) -> list:
    """Every Event of every event file in `logdir`, in TensorBoard's file order (by name).
    A TFRecord: u64 length, u32 masked CRC-32C of the length, data, u32 masked CRC of the data."""
    from tensorboardX.proto import event_pb2
    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            header = data[at:at + 8]
            (length,), (header_crc,) = struct.unpack("<Q", header), \
                struct.unpack("<I", data[at + 8:at + 12])
            body = data[at + 12:at + 12 + length]
            (body_crc,) = struct.unpack("<I", data[at + 12 + length:at + 16 + length])
            assert (header_crc, body_crc) == (_masked_crc(header), _masked_crc(body))
            events.append(event_pb2.Event.FromString(body))
            at += 16 + length
    return events


def visible(events) -> list:
    """What TensorBoard shows: a SessionLog START at step s hides the earlier events of step ≥ s."""
    shown = []
    for event in events:
        if event.HasField("session_log") and event.session_log.status == 1:   # START
            shown = [e for e in shown if e.step < event.step]
        shown.append(event)
    return shown


def scalars(events) -> dict:
    found = {}
    for event in events:
        for value in event.summary.value:
            if value.HasField("simple_value"):
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def histograms(events) -> dict:
    return {(value.tag, event.step): value.histo for event in events
            for value in event.summary.value if value.HasField("histo")}


def test_tensorboard_writes_every_logged_number_and_parameter_histograms(spiral, tmp_path):
    pytest.importorskip("tensorboardX", reason="the optional tensorboard extra")
    record, on_disk = Record(), []
    peek = lambda epoch, logs, result: on_disk.append(len(scalars(read_events(tmp_path))["loss"]))
    result = _fit(spiral, callbacks=[fn.train.TensorBoard(tmp_path, histograms=2), record, peek])
    assert on_disk == [1, 2, 3]   # flushed at the end of each epoch
    written = scalars(read_events(tmp_path))
    assert set(written) == set(flat_scalars(record.logs[0]))   # loss, val_*, lr, update_ratio/…
    for name in ("loss", "val_loss", "val_accuracy", "learning_rate"):
        np.testing.assert_allclose([v for _, v in written[name]], result.history[name],
                                   rtol=1e-6)
        assert [step for step, _ in written[name]] == [1, 2, 3]
    assert "update_ratio/0/w" in written
    histos = histograms(read_events(tmp_path))
    assert sorted(histos) == [(f"params/{leaf}", 2) for leaf in ("0/b", "0/w", "2/b", "2/w")]
    # epoch 2's parameters: rerun two epochs (the run is reproducible) and compare the summary
    w = np.asarray(_fit(spiral, epochs=2).params[0]["w"], np.float64)
    histo = histos[("params/0/w", 2)]
    assert (histo.num, histo.min, histo.max) == (w.size, w.min(), w.max())
    np.testing.assert_allclose([histo.sum, histo.sum_squares], [w.sum(), (w * w).sum()],
                               rtol=1e-12)
    assert sum(histo.bucket) == w.size


def test_tensorboard_without_tensorboardx_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)   # import raises ImportError
    with pytest.raises(ImportError, match=r"TensorBoard: .*tensorboardX.*funcnn\[tensorboard\]"):
        fn.train.TensorBoard(tmp_path)
    with pytest.raises(ValueError, match=r"TensorBoard: expected histograms"):
        fn.train.TensorBoard(tmp_path, histograms=0)


# ---------------------------------------------------------------------------------------------
# Progress.


def test_progress_on_a_stdout_that_is_not_a_terminal_is_one_line_per_epoch(spiral):
    out = io.StringIO()   # as a pipe, a log file or a notebook's stream: isatty() is False
    bar = fn.train.ProgressBar()   # made before stdout is redirected: it reads sys.stdout late
    with contextlib.redirect_stdout(out):
        _fit(spiral, callbacks=[bar])
        _fit(spiral, epochs=2, progress=True)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3",
                                                       "epoch 1/2", "epoch 2/2"]
    assert all(" val_loss " in line and "samples/s" in line for line in lines)


def test_resume_with_another_model_is_refused_naming_the_difference(spiral, tmp_path):
    checkpoint = fn.train.Checkpoint(tmp_path / "run")
    _fit(spiral, epochs=1, callbacks=[checkpoint])
    train, validation = spiral
    with pytest.raises(fn.checkpoint.CheckpointError, match=r"(?s)does not fit this run.*params/0/w"):
        fn.train.fit(nn.serial(nn.Dense(8), nn.Relu(), nn.Dense(3)), LOSS,
                     fn.optim.sgd(0.5, momentum=0.9), train, epochs=2, batch_size=30,
                     key=jax.random.key(0), progress=False, resume=True, callbacks=[checkpoint])
