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

Coarse to fine with more training in later rounds (the notes: a few epochs coarse, more fine),
one objective per round; then the k best configurations, e.g. for an ensemble
(`fn.ensemble.fit_configs`):

    objectives = [fn.tune.training_objective(model, loss, make_opt, (x, y), (xv, yv),
                                             epochs=e, batch_size=64, key=key) for e in (2, 8)]
    search = fn.tune.coarse_to_fine(objectives, space, key=key, vectorized=True)
    configs = fn.tune.top_configs(search, k=4)      # [{"learning_rate": ...}, ...] best first
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

from funcnn.tune_training import LRRangeResult, lr_range_test, training_objective


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
    """The rounds of a coarse-to-fine search (each a SearchResult with its space) and the best.

    `ranked`: the indices of the rounds whose scores `best` and `trials()` compare — those the
    last round's objective scored (every round when one objective scored them all).
    """

    rounds: list
    best: dict
    best_score: float
    ranked: tuple = ()

    def trials(self) -> list[dict]:
        """The ranked rounds' trials as {name: value, ..., "score": s}, best first."""
        ranked = [self.rounds[r] for r in (self.ranked or range(len(self.rounds)))]
        configs = {n: np.concatenate([res.configs[n] for res in ranked]) for n in ranked[0].configs}
        return SearchResult(configs, np.concatenate([res.scores for res in ranked])).trials()


def top_configs(search: SearchResult | CoarseToFine, k: int) -> list[dict]:
    """The hyper-parameters {name: value} of the k best trials of a search, best first (ties in
    trial order; a coarse-to-fine search ranks the rounds of its last objective): e.g. the
    members of an ensemble, `fn.ensemble.fit_configs(..., top_configs(search, k), ...)`."""
    trials = search.trials()
    if not isinstance(k, numbers.Integral) or not 1 <= k <= len(trials):
        raise ValueError(f"top_configs: expected an int k with 1 ≤ k ≤ {len(trials)} (the "
                         f"ranked trials), received {k!r}")
    if not math.isfinite(trials[k - 1]["score"]):
        finite = sum(math.isfinite(t["score"]) for t in trials)
        raise ValueError(f"top_configs: only {finite} trials scored a finite value, fewer than "
                         f"k={k}: the others failed (NaN, ±inf or diverged)")
    return [{n: v for n, v in trial.items() if n != "score"} for trial in trials[:k]]


def _per_round(objective, rounds: int | None) -> list:
    """One objective per round: `objective` repeated, or the sequence given (of length rounds)."""
    if callable(objective):
        return [objective] * (3 if rounds is None else rounds)
    objectives = list(objective) if isinstance(objective, Sequence) else []
    if not objectives or not all(callable(f) for f in objectives):
        raise TypeError(f"coarse_to_fine: objective must be a callable or a non-empty sequence "
                        f"of callables (one per round), received {objective!r}")
    if rounds is not None and rounds != len(objectives):
        raise ValueError(f"coarse_to_fine: {len(objectives)} objectives (one per round) but "
                         f"rounds={rounds}; leave rounds out or make them agree")
    return objectives


def coarse_to_fine(objective: Callable | Sequence[Callable], space: dict, *, key,
                   rounds: int | None = None, trials: int = 16, top: int = 4, pad: float = 0.1,
                   edge: float = 0.1, vectorized: bool = False) -> CoarseToFine:
    """Random search in rounds, each narrowing every range to the span of the previous round's
    `top` best trials, padded on each side by `pad` × the previous range's width (log scale
    for log-uniform); a choice keeps the options seen among the top trials.

    `objective`: one callable for every round (`rounds` of them, 3 by default), or a sequence
    with one objective per round — the notes' coarse stage trains a few epochs and the fine
    stage more, e.g. `[training_objective(..., epochs=e) for e in (2, 5, 10)]`. Scores of
    different objectives do not compare: `best`, `best_score` and `trials()` rank only the
    rounds scored by the last objective (`ranked`).

    After each round, a `warnings.warn` names every dimension whose best value sits within
    `edge` of a boundary (the notes' advice: the optimum may lie outside the range). The next
    range then extends past that boundary by the padding.
    """
    objectives = _per_round(objective, rounds)
    results, current = [], dict(space)
    for r, score in enumerate(objectives):
        result = random_search(score, current, key=jax.random.fold_in(key, r), trials=trials,
                               vectorized=vectorized)
        results.append(result)
        for message in boundary_warnings(result, current, edge):
            warnings.warn(f"coarse_to_fine round {r + 1}: {message}", stacklevel=2)
        order = np.argsort(result.scores, kind="stable")[:top]
        current = {n: _narrow(d, result.configs[n][order], pad) for n, d in current.items()}
    ranked = tuple(r for r, score in enumerate(objectives) if score is objectives[-1])
    best = min((results[r] for r in ranked), key=lambda res: res.best_score)
    return CoarseToFine(results, best.best, best.best_score, ranked)


__all__ = ["Choice", "CoarseToFine", "LRRangeResult", "LogUniform", "SearchResult", "Uniform",
           "boundary_warnings", "choice", "coarse_to_fine", "grid_search", "log_uniform",
           "lr_range_test", "random_search", "sample", "top_configs", "training_objective",
           "uniform"]
