"""Optimizers as immutable transforms: `GradientTransformation(init, update)` and `chain`.

    opt = fn.optim.adam(learning_rate=1e-3)
    opt_state = opt.init(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = fn.optim.apply_updates(params, updates)

Building blocks live in `funcnn.optim.transforms`, the classic optimizers in
`funcnn.optim.aliases`, schedules (and `reduce_on_plateau`) in `funcnn.optim.schedules`,
hyper-parameters held in the state (`inject_hyperparams`, `hyperparams`, `set_hyperparams`) in
`funcnn.optim.inject`, per-parameter optimizers (`partition`, `frozen`) in
`funcnn.optim.partition`.
"""
from funcnn.optim import schedules
from funcnn.optim.aliases import adagrad, adam, adamw, rmsprop, sgd
from funcnn.optim.base import (
    EmptyState, GradientTransformation, apply_updates, chain, lift, resolve_mask, weights_only)
from funcnn.optim.inject import InjectState, hyperparams, inject_hyperparams, set_hyperparams
from funcnn.optim.partition import PartitionState, frozen, partition
from funcnn.optim.schedules import PlateauState, reduce_on_plateau
from funcnn.optim.transforms import (
    AccumulateState, AdagradState, AdamState, CountState, EmaState, RmsState, SkipState,
    TraceState, accumulate_gradients, add_decayed_weights, averaged_params, clip_by_global_norm,
    ema, l1_shrinkage, polyak, project_max_norm, scale_by_adagrad, scale_by_adam,
    scale_by_learning_rate, scale_by_rms, skip_not_finite, trace)

__all__ = ["AccumulateState", "AdagradState", "AdamState", "CountState", "EmaState", "EmptyState",
           "GradientTransformation", "InjectState", "PartitionState", "PlateauState", "RmsState",
           "SkipState", "TraceState", "accumulate_gradients", "adagrad", "adam", "adamw",
           "add_decayed_weights", "apply_updates", "averaged_params", "chain",
           "clip_by_global_norm", "ema", "frozen", "hyperparams", "inject_hyperparams",
           "l1_shrinkage", "lift", "partition", "polyak", "project_max_norm", "reduce_on_plateau",
           "resolve_mask", "rmsprop", "scale_by_adagrad", "scale_by_adam", "scale_by_learning_rate",
           "scale_by_rms", "schedules", "set_hyperparams", "sgd", "skip_not_finite", "trace",
           "weights_only"]
