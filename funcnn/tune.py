"""Choosing hyper-parameters: the LR range test and random / grid / coarse-to-fine search.

    make_opt = lambda learning_rate: fn.optim.sgd(learning_rate, momentum=0.9)
    lr = fn.tune.lr_range_test(model, loss, make_opt, (x, y), key=key).suggestion

    space = {"learning_rate": fn.tune.log_uniform(1e-4, 1.0)}
    objective = fn.tune.training_objective(model, loss, make_opt, (x, y), (xv, yv),
                                           epochs=3, batch_size=64, key=key)
    result = fn.tune.random_search(objective, space, key=key, trials=16, vectorized=True)

A vectorized objective receives every trial's hyper-parameters at once (arrays with one entry
per trial) and returns one score per trial: `training_objective` trains all the trials as one
`jax.vmap` of whole-epoch scans — the optimizer is built inside the vmapped function from
traced hyper-parameters, so the trials share one compiled program. Scores are minimised;
non-finite scores count as +inf.
"""
from __future__ import annotations

import itertools
import math
import numbers
import warnings
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import train as _train
from funcnn.train.cache import compiled, init_program


# ---------------------------------------------------------------------------------------------
# Search spaces.


class LogUniform(NamedTuple):
    """x = exp(u), u ~ U(ln low, ln high): every decade equally likely (learning rates, decays)."""

    low: float
    high: float


class Uniform(NamedTuple):
    """x ~ U(low, high) (dropout rates, momenta)."""

    low: float
    high: float


class Choice(NamedTuple):
    """x drawn uniformly from a finite set of options."""

    options: tuple


def log_uniform(low: float, high: float) -> LogUniform:
    """A log-uniform range [low, high], 0 < low < high."""
    if not 0 < low < high:
        raise ValueError(f"log_uniform: expected 0 < low < high, received low={low}, high={high}")
    return LogUniform(float(low), float(high))


def uniform(low: float, high: float) -> Uniform:
    """A uniform range [low, high], low < high."""
    if not low < high:
        raise ValueError(f"uniform: expected low < high, received low={low}, high={high}")
    return Uniform(float(low), float(high))


def choice(*options) -> Choice:
    """A choice among `options` (numbers stay vmappable; anything else needs vectorized=False)."""
    if not options:
        raise ValueError("choice: expected at least one option")
    return Choice(tuple(options))


def _to_unit(dist, value):
    """Position of `value` in its range: 0 at low, 1 at high (in log space for LogUniform)."""
    if isinstance(dist, LogUniform):
        return (math.log(value) - math.log(dist.low)) / (math.log(dist.high) - math.log(dist.low))
    return (value - dist.low) / (dist.high - dist.low)


def sample(space: dict, key, n: int) -> dict:
    """n draws of every dimension of `space`: {name: np.ndarray of shape (n,)}.

    Dimension j uses fold_in(key, j) in the order of `space`, so adding a dimension at the end
    leaves the others' draws unchanged.
    """
    drawn = {}
    for j, (name, dist) in enumerate(space.items()):
        k = jax.random.fold_in(key, j)
        if isinstance(dist, Choice):
            index = np.asarray(jax.random.randint(k, (n,), 0, len(dist.options)))
            drawn[name] = _column([dist.options[i] for i in index])
        elif isinstance(dist, (LogUniform, Uniform)):
            u = np.asarray(jax.random.uniform(k, (n,), jnp.float32), np.float64)
            if isinstance(dist, LogUniform):
                lo, hi = math.log(dist.low), math.log(dist.high)
                drawn[name] = np.exp(lo + u * (hi - lo))
            else:
                drawn[name] = dist.low + u * (dist.high - dist.low)
        else:
            raise TypeError(f"sample: dimension {name!r} is {dist!r}; expected log_uniform, "
                            f"uniform or choice")
    return drawn


def _column(values: list) -> np.ndarray:
    """The trials' values of one dimension: a numeric array when every value is a number (so a
    vectorized objective can take it), else an object array holding the values unchanged."""
    if all(isinstance(v, (numbers.Number, np.number)) for v in values):
        return np.asarray(values)
    column = np.empty(len(values), object)
    column[:] = values
    return column


def _python(value):
    """A trial's value as a Python scalar (numbers), or the option itself (tuples, strings)."""
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------------------------------------
# Search results.


class SearchResult(NamedTuple):
    """Trials of a search: `configs` {name: (trials,) array}, `scores` (trials,), lower better."""

    configs: dict
    scores: np.ndarray
    space: dict | None = None

    @property
    def best_index(self) -> int:
        return int(np.argmin(self.scores))

    @property
    def best(self) -> dict:
        """The hyper-parameters of the best trial, as Python scalars."""
        return {name: _python(values[self.best_index]) for name, values in self.configs.items()}

    @property
    def best_score(self) -> float:
        return float(self.scores[self.best_index])

    def trials(self) -> list[dict]:
        """Every trial as {name: value, ..., "score": s}, best first."""
        order = np.argsort(self.scores, kind="stable")
        return [{**{n: _python(v[i]) for n, v in self.configs.items()},
                 "score": float(self.scores[i])} for i in order]

    def __str__(self):
        lines = [f"{len(self.scores)} trials, best score {self.best_score:.4g}:"]
        for trial in self.trials()[:5]:
            lines.append("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in trial.items()))
        return "\n".join(lines)


def _evaluate(objective, configs: dict, vectorized: bool) -> np.ndarray:
    n = len(next(iter(configs.values())))
    if vectorized:
        for name, values in configs.items():
            if values.dtype == object:
                raise ValueError(f"search: dimension {name!r} has non-numeric options "
                                 f"({_python(values[0])!r}, ...); a vectorized objective takes "
                                 f"numbers only: use vectorized=False")
        scores = np.asarray(objective({k: jnp.asarray(v) for k, v in configs.items()}), np.float64)
        if scores.shape != (n,):
            raise ValueError(f"search: a vectorized objective must return one score per trial, "
                             f"shape ({n},); received {scores.shape}")
    else:
        scores = np.asarray([float(objective({k: _python(v[i]) for k, v in configs.items()}))
                             for i in range(n)], np.float64)
    if not np.isfinite(scores).any():
        warnings.warn(f"search: all {n} trials scored NaN or ±inf; the 'best' trial is arbitrary",
                      stacklevel=3)
    return np.where(np.isfinite(scores), scores, np.inf)


def random_search(objective: Callable, space: dict, *, key, trials: int,
                  vectorized: bool = False) -> SearchResult:
    """Random search (Bergstra & Bengio 2012): `trials` independent draws from `space`.

    objective(config) -> score (config: {name: scalar}); with `vectorized=True`,
    objective({name: (trials,) array}) -> (trials,) scores, e.g. `training_objective`.
    """
    configs = sample(space, key, trials)
    return SearchResult(configs, _evaluate(objective, configs, vectorized), dict(space))


def grid_search(objective: Callable, grid: dict, *, vectorized: bool = False) -> SearchResult:
    """Every combination of the values in `grid` ({name: sequence of values}), in product order."""
    names = list(grid)
    rows = list(itertools.product(*(list(grid[n]) for n in names)))
    configs = {n: _column([row[j] for row in rows]) for j, n in enumerate(names)}
    return SearchResult(configs, _evaluate(objective, configs, vectorized), None)


def boundary_warnings(result: SearchResult, space: dict | None = None,
                      edge: float = 0.1) -> list[str]:
    """Messages for every numeric dimension whose best value lies in the outer `edge` fraction of
    its range (measured on a log scale for log-uniform ranges): the optimum may lie outside."""
    space = result.space if space is None else space
    messages = []
    for name, dist in (space or {}).items():
        if isinstance(dist, Choice):
            continue
        value = result.best[name]
        position = _to_unit(dist, value)
        if position < edge or position > 1 - edge:
            side = "lower" if position < edge else "upper"
            messages.append(f"the best {name} = {value:.4g} lies at the {side} boundary of its "
                            f"range [{dist.low:.4g}, {dist.high:.4g}]: the optimum may lie "
                            f"outside; widen the range that way")
    return messages


def _narrow(dist, values: np.ndarray, pad: float):
    """The span of the top trials' values, padded by `pad` of the current range's width."""
    if isinstance(dist, Choice):
        kept = tuple(o for o in dist.options if any(bool(np.all(v == o)) for v in values))
        return Choice(kept or dist.options)
    log = isinstance(dist, LogUniform)
    f = np.log if log else (lambda v: v)
    lo, hi = float(f(np.min(values))), float(f(np.max(values)))
    width = float(f(dist.high) - f(dist.low)) * pad
    lo, hi = lo - width, hi + width
    if log:
        return LogUniform(math.exp(lo), math.exp(hi))
    return Uniform(lo, hi)


class CoarseToFine(NamedTuple):
    """The rounds of a coarse-to-fine search (each a SearchResult with its space) and the best."""

    rounds: list
    best: dict
    best_score: float


def coarse_to_fine(objective: Callable, space: dict, *, key, rounds: int = 3, trials: int = 16,
                   top: int = 4, pad: float = 0.1, edge: float = 0.1,
                   vectorized: bool = False) -> CoarseToFine:
    """Random search in rounds, each narrowing every range to the span of the previous round's
    `top` best trials, padded on each side by `pad` × the previous range's width (log scale
    for log-uniform); a choice keeps the options seen among the top trials.

    After each round, a `warnings.warn` names every dimension whose best value sits within
    `edge` of a boundary (the notes' advice: the optimum may lie outside the range). The next
    range then extends past that boundary by the padding.
    """
    results, current = [], dict(space)
    for r in range(rounds):
        result = random_search(objective, current, key=jax.random.fold_in(key, r), trials=trials,
                               vectorized=vectorized)
        results.append(result)
        for message in boundary_warnings(result, current, edge):
            warnings.warn(f"coarse_to_fine round {r + 1}: {message}", stacklevel=2)
        order = np.argsort(result.scores, kind="stable")[:top]
        current = {n: _narrow(d, result.configs[n][order], pad) for n, d in current.items()}
    best = min(results, key=lambda res: res.best_score)
    return CoarseToFine(results, best.best, best.best_score)


# ---------------------------------------------------------------------------------------------
# A vmapped training objective.


def _score(model, loss, params, state, data, metric: str):
    outputs, _ = model.apply(params, state, data[0], train=False)
    if metric == "val_loss":
        return loss(outputs, data[1])
    accuracy = _train.accuracy(outputs, data[1])
    if metric != "val_error" or accuracy is None:
        raise ValueError(f"training_objective: metric must be 'val_loss' or 'val_error' "
                         f"(classification), received {metric!r}")
    return 1.0 - accuracy


def training_objective(model, loss, make_optimizer: Callable, train: Sequence,
                       validation: Sequence, *, epochs: int, batch_size: int, key,
                       metric: str = "val_loss", hand_written: bool = False,
                       regularizer=None) -> Callable:
    """A vectorized objective: hypers {name: (trials,) array} -> (trials,) validation scores.

    Every trial starts from the same initial parameters and sees the same batches (common
    random numbers: differences come from the hyper-parameters alone), trains `epochs`
    epochs with `make_optimizer(**hypers)` — built inside `jax.vmap` from traced values — and
    is scored on `validation` ("val_loss", or "val_error" = 1 − accuracy). A trial that meets a
    non-finite step stops there and scores +inf. Hyper-parameters must be numbers (they are
    traced); a choice among optimizers or architectures needs a loop (`vectorized=False`).
    """
    x, y = (jnp.asarray(a) for a in train)
    validation = tuple(jnp.asarray(a) for a in validation)
    init_key, train_key = jax.random.split(key)
    params, state = compiled(init_program, model)(init_key, tuple(x.shape[1:]))
    orders = jnp.asarray(np.stack([_train.epoch_order(jax.random.fold_in(train_key, epoch),
                                                      len(x), batch_size)
                                   for epoch in range(1, epochs + 1)]))   # fit's batches

    def one_trial(hypers):
        optimizer = make_optimizer(**hypers)
        step = _train.make_step(model, loss, optimizer, regularizer=regularizer,
                                hand_written=hand_written)
        run_epoch = _train.make_epoch(step, batch_size)

        def body(carry, epoch_and_order):
            epoch, order = epoch_and_order
            carry, _ = run_epoch(carry, x, y, jax.random.fold_in(train_key, epoch), order)
            return carry, None

        carry = _train.start(params, state, optimizer.init(params))
        carry, _ = jax.lax.scan(body, carry, (jnp.arange(1, epochs + 1), orders))
        score = _score(model, loss, carry.params, carry.state, validation, metric)
        return jnp.where(carry.bad_step >= 0, jnp.inf, score)

    run = jax.jit(jax.vmap(one_trial))

    def objective(hypers: dict):
        return run({k: jnp.asarray(v, jnp.float32) for k, v in hypers.items()})

    return objective


# ---------------------------------------------------------------------------------------------
# The learning-rate range test.


class LRRangeResult(NamedTuple):
    """Loss against an exponentially growing learning rate, up to divergence."""

    learning_rates: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float
    diverged: bool
    rule: str


def _suggest(lrs, smoothed, rule: str) -> float:
    best = int(np.argmin(smoothed))
    if rule == "min/10":
        return float(lrs[best] / 10.0)
    if rule == "steepest":
        if best < 2:
            return float(lrs[best])
        slope = np.gradient(smoothed[: best + 1], np.log(lrs[: best + 1]))
        return float(lrs[int(np.argmin(slope))])
    raise ValueError(f"lr_range_test: rule must be 'min/10' or 'steepest', received {rule!r}")


def lr_range_test(model, loss, make_optimizer: Callable, train: Sequence, *, key,
                  min_lr: float = 1e-6, max_lr: float = 10.0, steps: int = 100,
                  batch_size: int = 64, smoothing: float = 0.9, divergence: float = 4.0,
                  rule: str = "steepest", hand_written: bool = False, params=None,
                  state=None) -> LRRangeResult:
    """The LR range test (Smith 2017): one short run with α_t = α_min·(α_max/α_min)^{t/(T−1)}.

    Each step trains on a random batch; the loss is smoothed by a bias-corrected moving
    average ℓ̄_t = (β·m_{t−1} + (1−β)ℓ_t)/(1−β^{t+1}). The run stops (remaining steps are
    skipped inside the compiled scan) once ℓ̄ > `divergence` × its minimum so far or a loss is
    not finite. Suggested LR, `rule="steepest"` (default): the LR where ℓ̄ falls fastest per
    decade, argmin_t dℓ̄/d(ln α) before the minimum (central differences); `rule="min/10"`: the
    LR at the smoothed minimum divided by 10. Both land below the edge of divergence; the
    steepest point moves less with batch noise (on MNIST over 4 seeds and batch sizes 128 and
    512: 0.048–0.068 against 0.019–0.14 for min/10).
    `make_optimizer(schedule)` builds the optimizer from a learning-rate schedule.
    """
    if not 0 < min_lr < max_lr:
        raise ValueError(f"lr_range_test: expected 0 < min_lr < max_lr, received {min_lr}, "
                         f"{max_lr}")
    if steps < 3:
        raise ValueError(f"lr_range_test: expected at least 3 steps, received {steps}")
    x, y = (jnp.asarray(a) for a in train)
    init_key, train_key = jax.random.split(key)
    if params is None:
        params, state = compiled(init_program, model)(init_key, tuple(x.shape[1:]))
    log_ratio = math.log(max_lr / min_lr)
    schedule = lambda t: min_lr * jnp.exp(log_ratio * jnp.asarray(t, jnp.float32) / (steps - 1))
    optimizer = make_optimizer(schedule)
    step = _train.make_step(model, loss, optimizer, hand_written=hand_written)
    n = x.shape[0]

    @jax.jit
    def run(params, state, opt_state):
        def active(carry, t):
            p, s, o, mean, best, _ = carry
            k = jax.random.fold_in(train_key, t)
            index = jax.random.randint(jax.random.fold_in(k, 1), (batch_size,), 0, n)
            p, s, o, metrics = step(p, s, o, x[index], y[index], k)
            value = metrics["loss"]
            mean = smoothing * mean + (1 - smoothing) * value
            smooth = mean / (1 - smoothing ** (jnp.asarray(t, mean.dtype) + 1))
            stop = ~jnp.isfinite(smooth) | (smooth > divergence * best)
            return (p, s, o, mean, jnp.minimum(best, smooth), stop), (value, smooth, True)

        def skipped(carry, t):
            return carry, (jnp.nan, jnp.nan, False)

        def body(carry, t):
            return jax.lax.cond(carry[-1], skipped, active, carry, t)

        start = (params, state, opt_state, jnp.zeros([]), jnp.array(jnp.inf), jnp.array(False))
        carry, (values, smooth, ran) = jax.lax.scan(body, start, jnp.arange(steps))
        return values, smooth, ran, carry[-1]

    values, smooth, ran, stopped = run(params, state, optimizer.init(params))
    ran = np.asarray(ran)
    lrs = np.asarray(min_lr * np.exp(log_ratio * np.arange(steps) / (steps - 1)))[ran]
    values, smooth = np.asarray(values, np.float64)[ran], np.asarray(smooth, np.float64)[ran]
    finite = np.isfinite(smooth)
    suggestion = _suggest(lrs[finite], smooth[finite], rule)
    return LRRangeResult(lrs, values, smooth, suggestion, bool(stopped), rule)


__all__ = ["Choice", "CoarseToFine", "LRRangeResult", "LogUniform", "SearchResult", "Uniform",
           "boundary_warnings", "choice", "coarse_to_fine", "grid_search", "log_uniform",
           "lr_range_test", "random_search", "sample", "training_objective", "uniform"]
