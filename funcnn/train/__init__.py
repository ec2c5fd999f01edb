"""Training, as small parts that compose:

    step.py       make_step: one pure, jittable update — (params, state, opt_state, x, y, key) →
                  (params, state, opt_state, metrics)
    epoch.py      make_epoch: one compiled, guarded loop of steps over shuffled batches
    loop.py       fit: a short loop over epochs that runs the epoch program and the callbacks
    batching.py   each epoch's batch size (an int or a schedule), the data on device or streamed
    callbacks.py  EarlyStopping, ReduceLROnPlateau, Checkpoint, ProgressBar, CSVLogger,
                  JSONLLogger, UpdateRatio — values with an explicit, checkpointed memory
    loggers.py    TensorBoard (scalars and parameter histograms; the tensorboardX extra)
    evaluate.py   evaluate, predict
    cache.py      the one cache of compiled programs, and clear_caches()

    result = fn.train.fit(model, loss, fn.optim.sgd(0.1), (x, y), epochs=30, batch_size=10,
                          key=key, validation=(xv, yv),
                          callbacks=[fn.train.ReduceLROnPlateau("val_accuracy", patience=10)])
"""
from funcnn.train import callbacks
from funcnn.train.cache import clear_caches
from funcnn.train.callbacks import (
    Callback, Changes, Checkpoint, CSVLogger, EarlyStopping, EpochInfo, JSONLLogger, ProgressBar,
    ReduceLROnPlateau, UpdateRatio)
from funcnn.train.epoch import DIVERGENCE, EpochCarry, epoch_order, make_epoch, start
from funcnn.train.evaluate import evaluate, predict
from funcnn.train.loggers import TensorBoard
from funcnn.train.loop import FitResult, TrainingDiverged, fit
from funcnn.train.step import accuracy, make_step, update_ratios

__all__ = ["CSVLogger", "Callback", "Changes", "Checkpoint", "DIVERGENCE", "EarlyStopping",
           "EpochCarry", "EpochInfo", "FitResult", "JSONLLogger", "ProgressBar",
           "ReduceLROnPlateau", "TensorBoard", "TrainingDiverged", "UpdateRatio", "accuracy",
           "callbacks", "clear_caches", "epoch_order", "evaluate", "fit", "make_epoch", "make_step",
           "predict", "start", "update_ratios"]
