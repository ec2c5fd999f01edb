"""Ensembles trained at once with `jax.vmap`, averaged predictions, and parameter averaging.

    result = fn.ensemble.fit(model, loss, opt, (x, y), members=5, epochs=10, batch_size=128,
                             key=key)                  # one compiled, vmapped epoch per epoch
    probs = fn.ensemble.predict_proba(model, result.params, result.state, x_test)

Member i is trained exactly as `fn.train.fit(..., key=jax.random.split(key, members)[i])`
would train it (its own initialisation and batch order), but all members run as one `vmap` of
`fn.train`'s epoch program (`make_epoch`): one compiled program, N models per step. Every stacked pytree (params,
state, opt_state) carries the member on its leading axis; `member(tree, i)` takes one out.
`fit_configs` trains one member per configuration (the k best of a search, each its own
optimizer); `from_checkpoints` stacks snapshots of one run into a snapshot ensemble.

Parameter averaging: `with_averaging(opt)` adds a Polyak (or EMA) average of one run's iterates
to the optimizer state (read it with `fn.optim.averaged_params(opt_state)`); `average(trees)` and
`average_checkpoints(paths)` average snapshots of one run (never independent members: their
hidden units are permuted relative to each other).
"""
from __future__ import annotations

import numbers
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import checkpoint
from funcnn.losses import log_likelihood
from funcnn import optim
from funcnn import train as _train
from funcnn.train.cache import compiled, init_program
from funcnn.train.loop import epoch_logs


class EnsembleResult(NamedTuple):
    """Stacked params/state/opt_state (leading axis = member) and the per-epoch history.

    history: "loss", "accuracy" (means over members), "member_loss", "member_accuracy" (one
    value per member), with validation also "val_loss", "val_accuracy" (member means),
    "member_val_accuracy", "ensemble_val_accuracy", "ensemble_val_loss"; "update_ratio"
    (member mean per leaf) and "epoch_time".
    """

    params: Any
    state: Any
    opt_state: Any
    history: dict
    members: int


def member(tree, i: int):
    """Member i of a stacked pytree."""
    return jax.tree.map(lambda a: a[i], tree)


def stack(trees: Sequence):
    """Stack pytrees of one structure on a new leading (member) axis."""
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def _member_keys(key, members: int):
    split = lambda k: jax.vmap(jax.random.split)(jax.random.split(k, members))
    pairs = jax.jit(split)(key)               # (members, 2): fit's init_key and train_key
    return pairs[:, 0], pairs[:, 1]


def init(model, key, in_shape, members: int):
    """Stacked (params, state) of `members` models, member i initialised as `fn.train.fit` with
    key = split(key, members)[i] would initialise it."""
    init_keys, _ = _member_keys(key, members)
    one = compiled(init_program, model)     # a loop: vmapped RNG compiles slowly on CPU
    return stack([one(k, tuple(in_shape)) for k in init_keys])


def fit(model, loss, optimizer, train: Sequence, *, members: int, epochs: int, batch_size: int,
        key, validation: Sequence | None = None, regularizer=None, hand_written: bool = False,
        augment: Callable | None = None, progress: bool = True,
        from_logits: bool = True) -> EnsembleResult:
    """Train `members` models at once: each epoch is one jitted `vmap` of `fn.train.make_epoch`.

    Member i uses key_i = split(key, members)[i] as `fn.train.fit(key=key_i)` does (init from
    split(key_i)[0], epoch e shuffled by fold_in(split(key_i)[1], e)), so members differ in
    initialisation and batch order. A non-finite step raises `fn.train.TrainingDiverged`.
    The validation scores average the members' probabilities: softmax of their outputs, or
    the outputs themselves when `from_logits=False` (models ending in a softmax).
    """
    if members < 1:
        raise ValueError(f"ensemble.fit: expected at least one member, received {members}")
    return _fit("ensemble.fit", model, loss, optimizer, None, members, train, epochs, batch_size,
                key, validation, regularizer, hand_written, augment, progress, from_logits)


def fit_configs(model, loss, make_optimizer: Callable, configs: Sequence[dict],
                train: Sequence, *, epochs: int, batch_size: int, key,
                validation: Sequence | None = None, regularizer=None, hand_written: bool = False,
                augment: Callable | None = None, progress: bool = True,
                from_logits: bool = True) -> EnsembleResult:
    """One member per configuration, e.g. the k best of a search (`fn.tune.top_configs`):

        configs = fn.tune.top_configs(search, k=5)
        result = fn.ensemble.fit_configs(model, loss, make_opt, configs, (x, y), epochs=10,
                                          batch_size=128, key=key)
        probs = fn.ensemble.predict_proba(model, result.params, result.state, x_test)

    Member i trains as `fn.train.fit(model, loss, make_optimizer(**configs[i]), ...,
    key=split(key, k)[i])` would; all run as one `vmap`, each member's optimizer built inside
    it from its traced hyper-parameters (as `fn.tune.training_objective` does), so the values
    must be numbers (traced as float32) and every config must name the same ones. Otherwise as
    `fit`.
    """
    hypers = _stacked_configs(configs)
    return _fit("ensemble.fit_configs", model, loss, make_optimizer, hypers, len(configs), train,
                epochs, batch_size, key, validation, regularizer, hand_written, augment, progress,
                from_logits)


def _stacked_configs(configs: Sequence[dict]) -> dict:
    """{name: (k,) float32 array} from k configurations {name: number}."""
    if isinstance(configs, dict) or not configs or not all(isinstance(c, dict) for c in configs):
        raise TypeError(f"ensemble.fit_configs: configs must be a non-empty sequence of dicts "
                        f"{{name: number}} (e.g. fn.tune.top_configs(search, k)), received "
                        f"{configs!r}")
    names = list(configs[0])
    for i, config in enumerate(configs):
        if set(config) != set(names):
            raise ValueError(f"ensemble.fit_configs: every config must name the same "
                             f"hyper-parameters; config 0 has {sorted(names)}, config {i} has "
                             f"{sorted(config)}")
        for name, value in config.items():
            if not isinstance(value, (numbers.Real, np.number)) or np.ndim(value) != 0:
                raise ValueError(f"ensemble.fit_configs: config {i}'s {name!r} is {value!r}; "
                                 f"the members' hyper-parameters are traced, so each must be a "
                                 f"number (train other choices one by one with fn.train.fit)")
    return {n: jnp.asarray(np.asarray([c[n] for c in configs], np.float32)) for n in names}


def _fit(name, model, loss, optimizer, hypers, members, train, epochs, batch_size, key,
         validation, regularizer, hand_written, augment, progress, from_logits) -> EnsembleResult:
    """The members' training loop; with `hypers` ({name: (members,) array}) `optimizer` is a
    factory, member i's optimizer being optimizer(**hypers[i])."""
    x, y = train
    if not 0 < batch_size <= len(x):
        raise ValueError(f"{name}: expected 0 < batch_size ≤ {len(x)} training examples, "
                         f"received {batch_size}")
    factory = hypers is not None
    hypers = hypers if factory else {}
    images, labels = jnp.asarray(x), jnp.asarray(y)
    params, state = init(model, key, images.shape[1:], members)
    _, train_keys = _member_keys(key, members)
    opt_state = compiled(_vmapped_init, optimizer, factory)(params, hypers)
    run_epoch = compiled(_ensemble_program, model, loss, optimizer, factory, regularizer,
                         hand_written, batch_size, augment)
    fold_in = compiled(_vmapped_fold_in)
    history: dict = {"loss": [], "member_loss": [], "update_ratio": [], "epoch_time": []}
    result = EnsembleResult(params, state, opt_state, history, members)
    reference = jnp.full((members,), jnp.inf, jnp.float32)
    for epoch in range(1, epochs + 1):
        begin = time.perf_counter()
        carry = jax.vmap(_train.start)(result.params, result.state, result.opt_state, reference)
        epoch_keys = fold_in(train_keys, epoch)
        orders = np.stack([_train.epoch_order(k, len(images), batch_size) for k in epoch_keys])
        carry, metrics = run_epoch(carry, images, labels, epoch_keys, jnp.asarray(orders), hypers)
        bad, reference = np.asarray(carry.bad_step), carry.reference
        _log_epoch(history, metrics, carry.params, bad)
        result = EnsembleResult(carry.params, carry.state, carry.opt_state, history, members)
        if validation is not None:
            scores = evaluate(model, loss, carry.params, carry.state, validation,
                              from_logits=from_logits)
            for entry, value in scores.items():
                history.setdefault(_VAL_NAMES[entry], []).append(value)
        history["epoch_time"].append(time.perf_counter() - begin)
        if np.any(bad >= 0):
            which = [int(i) for i in np.nonzero(bad >= 0)[0]]
            raise _train.TrainingDiverged(
                f"{name}: non-finite or exploding loss, gradient, parameter or state at "
                f"epoch {epoch} in member(s) {which}; .result holds the last good parameters",
                result)
        if progress:
            parts = [f"epoch {epoch}/{epochs}", f"loss {history['loss'][-1]:.4f}"]
            if validation is not None:
                parts += [f"member val_accuracy {history['val_accuracy'][-1]:.4f}",
                          f"ensemble val_accuracy {history['ensemble_val_accuracy'][-1]:.4f}"]
            print("  ".join(parts), file=sys.stdout, flush=True)
    return result


def _vmapped_init(optimizer, factory: bool):
    init_one = lambda p, h: (optimizer(**h) if factory else optimizer).init(p)
    return jax.jit(jax.vmap(init_one))


def _vmapped_fold_in():
    return jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))


def _ensemble_program(model, loss, optimizer, factory, regularizer, hand_written, batch_size,
                      augment):
    """`fn.train`'s epoch program, vmapped over members (their carries, keys, batch orders and
    hyper-parameters; the data is shared): one compiled program trains every member. With
    `factory`, a member's optimizer is optimizer(**its hyper-parameters), built traced."""
    def epoch(carry, x, y, key, order, hypers):
        member_optimizer = optimizer(**hypers) if factory else optimizer
        step = _train.make_step(model, loss, member_optimizer, regularizer=regularizer,
                                hand_written=hand_written, with_accuracy=True)
        run = _train.make_epoch(step, batch_size, augment, ratio_every=_train.UpdateRatio().every)
        return run(carry, x, y, key, order)

    return jax.jit(jax.vmap(epoch, in_axes=(0, None, None, 0, 0, 0)))


_VAL_NAMES = {"loss": "val_loss", "accuracy": "val_accuracy",
              "member_loss": "member_val_loss", "member_accuracy": "member_val_accuracy",
              "ensemble_loss": "ensemble_val_loss", "ensemble_accuracy": "ensemble_val_accuracy"}


def _log_epoch(history: dict, metrics, params, bad) -> None:
    """Each member's epoch logged as `fn.train.fit` logs it (means over the steps it applied),
    then "loss"/"accuracy" and every leaf's update ratio averaged over the members."""
    metrics, one = jax.tree.map(np.asarray, metrics), member(params, 0)
    logs = [epoch_logs(member(metrics, i), int(b), one) for i, b in enumerate(bad)]
    for name in ("loss", "accuracy"):
        if name in logs[0]:
            values = [entry[name] for entry in logs]
            history.setdefault(name, []).append(float(np.mean(values)))
            history.setdefault(f"member_{name}", []).append(values)
    history["update_ratio"].append({leaf: float(np.nanmean([entry["update_ratio"][leaf]
                                                            for entry in logs]))
                                    for leaf in logs[0]["update_ratio"]})


# ---------------------------------------------------------------------------------------------
# Predictions.


def _predictor(model):
    """One compiled vmapped forward pass per model (params and x are arguments, not constants)."""
    return jax.jit(jax.vmap(lambda p, s, xb: model.apply(p, s, xb, train=False)[0],
                            in_axes=(0, 0, None)))


def predict(model, params, state, x, *, batch_size: int = 1000):
    """Every member's outputs in evaluation mode: an array (members, n, ...)."""
    run, x = compiled(_predictor, model), jnp.asarray(x)
    parts = [run(params, state, x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return jnp.concatenate(parts, axis=1)


def average_predictions(outputs, *, from_logits: bool = True):
    """The ensemble's prediction p̄ = (1/N) Σ_i softmax(z_i): the mean of the members'
    probabilities (outputs: (members, n, classes); probabilities already if not from_logits)."""
    probs = jax.nn.softmax(outputs, axis=-1) if from_logits else outputs
    return jnp.mean(probs, axis=0)


def predict_proba(model, params, state, x, *, from_logits: bool = True, batch_size: int = 1000):
    """Mean of the members' softmax probabilities, (n, classes)."""
    return average_predictions(predict(model, params, state, x, batch_size=batch_size),
                               from_logits=from_logits)


def _scorer(loss, from_logits: bool):
    @jax.jit
    def score(outputs, y):
        result = {"member_loss": jax.vmap(lambda o: loss(o, y))(outputs)}
        if _train.accuracy(outputs[0], y) is not None:
            result["member_accuracy"] = jax.vmap(lambda o: _train.accuracy(o, y))(outputs)
            probs = average_predictions(outputs, from_logits=from_logits)
            result["ensemble_accuracy"] = _train.accuracy(probs, y)
            if y.ndim == 1:
                result["ensemble_loss"] = log_likelihood(probs, y)
        return result

    return score


def evaluate(model, loss, params, state, data: Sequence, *, from_logits: bool = True,
             batch_size: int = 1000) -> dict:
    """Members and ensemble on `data = (x, y)`.

    "member_loss"/"member_accuracy" (one per member), "loss"/"accuracy" (their means),
    "ensemble_accuracy" (arg-max of the mean probability p̄) and "ensemble_loss"
    (−mean ln p̄_y, for int labels).
    """
    x, y = data
    outputs = predict(model, params, state, x, batch_size=batch_size)
    scores = jax.device_get(compiled(_scorer, loss, from_logits)(outputs, jnp.asarray(y)))
    result = {"member_loss": [float(v) for v in scores["member_loss"]]}
    result["loss"] = float(np.mean(result["member_loss"]))
    if "member_accuracy" in scores:
        result["member_accuracy"] = [float(v) for v in scores["member_accuracy"]]
        result["accuracy"] = float(np.mean(result["member_accuracy"]))
        result["ensemble_accuracy"] = float(scores["ensemble_accuracy"])
    if "ensemble_loss" in scores:
        result["ensemble_loss"] = float(scores["ensemble_loss"])
    return result


# ---------------------------------------------------------------------------------------------
# Parameter averaging.


def polyak_after(start: int) -> Callable:
    """EMA decay schedule giving Polyak averaging from update `start` on: d_t = 0 for t < start
    (the average follows the iterate), then (t−start)/(t−start+1) (the running mean)."""
    def decay(t):
        k = jnp.maximum(t - start, 0).astype(jnp.float32)
        return jnp.where(t < start, 0.0, k / (k + 1.0))
    return decay


def with_averaging(optimizer, *, decay=None, start: int = 0):
    """`optimizer` followed by a parameter average kept in its state.

    decay=None: Polyak averaging of the iterates from update `start` on (p̄ = mean of
    p_{start+1}, …, p_t); a float or schedule: EMA p̄ ← d·p̄ + (1−d)·p. Read the average with
    `fn.optim.averaged_params(opt_state)` (works on stacked ensemble states too).
    """
    average = optim.ema(polyak_after(start) if decay is None else decay)
    return optim.chain(optimizer, average)


averaged_params = optim.averaged_params


def average(trees: Sequence, weights: Sequence[float] | None = None):
    """Weighted mean Σ_i w_i·θ_i / Σ_i w_i of pytrees of one structure (uniform by default)."""
    if not trees:
        raise ValueError("average: expected at least one pytree")
    weights = np.ones(len(trees)) if weights is None else np.asarray(weights, np.float64)
    if weights.shape != (len(trees),) or not np.all(weights >= 0) or weights.sum() <= 0:
        raise ValueError(f"average: expected {len(trees)} non-negative weights with a positive "
                         f"sum, received {weights.tolist()}")
    w = weights / weights.sum()
    return jax.tree.map(lambda *leaves: sum(float(wi) * jnp.asarray(leaf)
                                            for wi, leaf in zip(w, leaves)).astype(
                                                jnp.asarray(leaves[0]).dtype), *trees)


def _load_all(name: str, paths: Sequence, like, field: str | None) -> list:
    """The trees stored at `paths` (`fn.checkpoint.load(path, like=like)`, entry `field`)."""
    if isinstance(paths, (str, Path)) or not paths:
        raise ValueError(f"{name}: expected a non-empty sequence of checkpoint paths, received "
                         f"{paths!r}")
    trees = [checkpoint.load(path, like=like) for path in paths]
    return [tree[field] for tree in trees] if field is not None else trees


def average_checkpoints(paths: Sequence, *, like=None, field: str | None = None):
    """Average the parameters stored in checkpoints of one run (e.g. its last epochs).

    Each file is read with `fn.checkpoint.load(path, like=like)`; `field` picks an entry of
    the stored dict (e.g. "params" of a `fn.train.fit` checkpoint).
    """
    return average(_load_all("average_checkpoints", paths, like, field))


def from_checkpoints(paths: Sequence, *, state, like=None, field: str | None = None) -> tuple:
    """A snapshot ensemble: the parameters θ_1 … θ_K saved along ONE run (e.g. its last epochs
    or LR cycles, by `snapshot_callback`), stacked as K members: `(params, state)` for
    `predict`, `predict_proba` and `evaluate`, whose prediction averages probabilities,
    p̄(x) = (1/K) Σ_k softmax(f(x; θ_k)). (`average_checkpoints` averages the weights instead:
    one model f(x; (1/K) Σ_k θ_k).)

    `state` (e.g. the run's `result.state`) serves every snapshot — `snapshot_callback` saves
    parameters only, which is exact for models without running statistics. Files are read as in
    `average_checkpoints` (`like`, `field`).
    """
    trees = _load_all("from_checkpoints", paths, like, field)
    return stack(trees), stack([state] * len(trees))


def snapshot_callback(folder, *, every: int = 1) -> Callable:
    """A `fn.train.fit` callback saving `result.params` to folder/epoch-XXXX.ckpt every `every`
    epochs (for `average_checkpoints` or `from_checkpoints`); `.paths` lists the files written."""
    folder = Path(folder)
    paths: list[Path] = []

    def callback(epoch, logs, result):
        del logs
        if epoch % every == 0:
            folder.mkdir(parents=True, exist_ok=True)
            paths.append(checkpoint.save(folder / f"epoch-{epoch:04d}.ckpt", result.params))
        return False

    callback.paths = paths
    return callback


__all__ = ["EnsembleResult", "average", "average_checkpoints", "average_predictions",
           "averaged_params", "evaluate", "fit", "fit_configs", "from_checkpoints", "init",
           "member", "polyak_after", "predict", "predict_proba", "snapshot_callback", "stack",
           "with_averaging"]
