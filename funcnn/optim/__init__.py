"""Optimizers as immutable transforms: `GradientTransformation(init, update)` and `chain`.

    opt = fn.optim.adam(learning_rate=1e-3)
    opt_state = opt.init(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = fn.optim.apply_updates(params, updates)

Building blocks live in `funcnn.optim.transforms`, the classic optimizers in
`funcnn.optim.aliases`, schedules (and `reduce_on_plateau`) in `funcnn.optim.schedules`,
hyper-parameters held in the state (`inject_hyperparams`, `hyperparams`, `set_hyperparams`) in
`funcnn.optim.inject`, per-parameter optimizers (`partition`, `frozen`) in
`funcnn.optim.partition`, a regularizer's gradient as a step (`add_penalty`) in
`funcnn.optim.penalties`, full-batch second-order methods (`lbfgs`, `newton`) in
`funcnn.optim.second_order`, learning rate and batch size (`scale_learning_rate`,
`batch_size_schedule`, `batch_size_for_decay`) in `funcnn.optim.scaling`.
"""
from funcnn.optim import schedules
from funcnn.optim.aliases import adagrad, adam, adamw, rmsprop, sgd
from funcnn.optim.base import (
    EmptyState, GradientTransformation, apply_updates, chain, lift, reads_value_fn, resolve_mask,
    weights_only)
from funcnn.optim.inject import InjectState, hyperparams, inject_hyperparams, set_hyperparams
from funcnn.optim.partition import PartitionState, frozen, partition
from funcnn.optim.penalties import add_penalty
from funcnn.optim.schedules import PlateauState, reduce_on_plateau
from funcnn.optim.scaling import (
    BatchDecay, EpochSchedule, batch_size_for_decay, batch_size_schedule, scale_learning_rate)
from funcnn.optim.second_order import LbfgsState, lbfgs, newton
from funcnn.optim.transforms import (
    AccumulateState, AdagradState, AdamState, CountState, EmaState, RmsState, SkipState,
    TraceState, accumulate_gradients, add_decayed_weights, averaged_params, clip_by_global_norm,
    ema, l1_shrinkage, polyak, project_max_norm, scale_by_adagrad, scale_by_adam,
    scale_by_learning_rate, scale_by_rms, skip_not_finite, trace)

__all__ = ["AccumulateState", "AdagradState", "AdamState", "BatchDecay", "CountState", "EmaState",
           "EmptyState", "EpochSchedule", "GradientTransformation", "InjectState", "LbfgsState",
           "PartitionState", "PlateauState", "RmsState", "SkipState", "TraceState",
           "accumulate_gradients", "adagrad", "adam", "adamw", "add_decayed_weights",
           "add_penalty", "apply_updates", "averaged_params", "batch_size_for_decay",
           "batch_size_schedule", "chain", "clip_by_global_norm", "ema", "frozen", "hyperparams",
           "inject_hyperparams", "l1_shrinkage", "lbfgs", "lift", "newton", "partition", "polyak",
           "project_max_norm", "reads_value_fn", "reduce_on_plateau", "resolve_mask", "rmsprop",
           "scale_by_adagrad", "scale_by_adam", "scale_by_learning_rate", "scale_by_rms",
           "scale_learning_rate", "schedules", "set_hyperparams", "sgd", "skip_not_finite",
           "trace", "weights_only"]
