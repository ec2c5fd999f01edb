"""Mutation testing of `fn.gradcheck.check`: plant bugs in every layer's and loss's backward,
and check that the checker, at its defaults, catches every bug that changes the gradient.

A mutant wraps a hand-written rule so that it returns a perturbed result (the families below);
its forward pass, and so autodiff and finite differences, are untouched. Whether a mutant
changes the gradient is decided by computing it, never by hand: its hand-written gradient
(parameters and input) is compared with the true one at `check`'s own points and at three
independent "witness" points (other parameter, data and key draws), entry by entry, with the
checker's own measure (|g − t| ≤ 1e-9 · max(|g|, |t|, 1e-3 · leaf max)). A mutant is

    caught      `check` fails (or refuses the gradient's shape),
    equivalent  not caught, and equal to the true gradient at every point,
    missed      not caught, yet different somewhere: "hidden" when only at a witness point
                (a blind spot of the choice of points), a checker bug when at a check point.

All the mutants of a case live in one model, `switched(layer, rules)`: its backward runs
`lax.switch` on a mutant number carried in the layer's state (0: the true rule), so a case
compiles once and each mutant is a different state, not a different program. Loss mutants that
act on δᴸ alone sit in an identity layer on top of the model (the model's backward then receives
the mutated δᴸ, exactly as from a mutated `loss.grad`); those that need the targets mutate
`loss.grad` itself.

The cases (every layer and loss, and their shapes) are in tests/gradcheck_cases.py.
Each layer runs first in serial(layer, Flatten(), Dense(3)) under softmax cross-entropy, so a
bug in its input gradient shows only in the model's input gradient; shapes are chosen to expose
axis and padding mistakes (batch 5 ≠ every spatial size, non-square images and kernels, SAME
padding on every side, inputs of rank 2, 3 and 4).
"""
from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import funcnn as fn
from funcnn import nn
from funcnn.gradcheck_points import check_points
from funcnn.paths import leaf_paths
from funcnn.train.cache import compiled
from gradcheck_cases import LAYERS, LOSSES, Case, LossCase  # noqa: F401 (the table's rows)

BATCH = 5
CLASSES = 3
EXACT_TOL, LEAF_SCALE = 1e-9, 1e-3   # the checker's defaults, used to judge equivalence
WITNESS_SEED = 101


# ---------------------------------------------------------------------------------------------
# Problems: a model, a loss and data for a case and a seed.


class Problem(NamedTuple):
    model: Any
    loss: Any
    params: Any
    state: Any
    x: Any
    y: Any
    train: bool
    kwargs: dict


def layer_problem(case: Case, seed: int, model=None) -> Problem:
    """`case`'s layer first in serial(layer, Flatten(), Dense(3)) (or `model`, a switched one)."""
    if model is None:
        model = nn.serial(case.factory(), nn.Flatten(), nn.Dense(CLASSES))
    rng = np.random.default_rng((seed, 7))
    params, state = model.init(jax.random.key(seed), case.in_shape)
    shape = (BATCH,) + tuple(case.in_shape)
    x = rng.standard_normal(shape) if case.x is None else case.x(rng, shape)
    return Problem(model, fn.losses.softmax_cross_entropy, params, state, x,
                   rng.integers(0, CLASSES, BATCH).astype(np.int32), case.train, {})


def loss_problem(case: LossCase, seed: int, loss=None, tap=None) -> Problem:
    """serial(Dense(width), *after) under `case`'s loss (or `loss`); `tap`, a switched
    Identity, goes on top."""
    layers = [nn.Dense(case.width)] + [make() for make in case.after]
    model = nn.serial(*layers, *([tap] if tap is not None else []))
    rng = np.random.default_rng((seed, 7))
    params, state = model.init(jax.random.key(seed), case.in_shape)
    x = rng.standard_normal((BATCH,) + tuple(case.in_shape))
    out_shape = (BATCH,) + tuple(model.output_shape(case.in_shape))
    return Problem(model, case.loss if loss is None else loss, params, state, x,
                   case.targets(rng, out_shape), True, dict(case.kwargs))


def run_check(problem: Problem, seed: int = 0):
    """`fn.gradcheck.check` at its defaults (the key and seed aside); a refused gradient (a
    shape or structure error) counts as a failed check."""
    p = problem
    try:
        return fn.gradcheck.check(p.model, p.loss, p.params, p.state, p.x, p.y,
                                  key=jax.random.key(seed + 11), train=p.train, seed=seed,
                                  **p.kwargs).passed
    except ValueError as error:
        if "gradcheck.check: expected the hand-written" in str(error):
            return False
        raise


# ---------------------------------------------------------------------------------------------
# Mutation families: rules f(dparams, dx, params, residuals, dy) -> (dparams, dx).


def _index(name: str, shape):
    """A reproducible random index into `shape`, drawn from the mutant's name."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return tuple(int(rng.integers(0, d)) for d in shape)


def _scaled_at(a, index, factor=1.1):
    return a.at[index].multiply(factor)


def array_families(label: str, shape) -> list[tuple[str, Callable]]:
    """The families that act on one gradient array of `shape` named `label`."""
    found = [(f"{label} ×1.1 at random index", lambda a: _scaled_at(a, _index(label, shape))),
             (f"{label} ×1.1 at last index", lambda a: _scaled_at(a, tuple(d - 1 for d in shape))),
             (f"{label} rolled on axis 0", lambda a: jnp.roll(a, 1, axis=0))]
    if len(shape) >= 2:
        found.append((f"{label} rolled on last axis", lambda a: jnp.roll(a, 1, axis=-1)))
    if len(shape) >= 2 and shape[-1] == shape[-2]:
        found.append((f"{label} transposed", lambda a: jnp.swapaxes(a, -1, -2)))
    return found


def _replace_leaf(tree, k, f):
    """`tree` with its k-th leaf replaced by f(leaf)."""
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, leaves[:k] + [f(leaves[k])] + leaves[k + 1:])


def layer_rules(layer, params, x_shape, out_channels, with_input=True):
    """Every mutation rule of `layer`'s backward, as [(name, rule)], for parameters like
    `params`, an input of `x_shape` (its gradient mutated when `with_input`) and outputs with
    `out_channels` entries on the last axis."""
    rules = [("all ×1.01", lambda g, dx, *_: (jax.tree.map(lambda a: 1.01 * a, g), 1.01 * dx)),
             ("sign flipped", lambda g, dx, *_: (jax.tree.map(jnp.negative, g), -dx))]
    if with_input:
        rules.append(("input gradient zeroed", lambda g, dx, *_: (g, jnp.zeros_like(dx))))
    for k, (name, leaf) in enumerate(zip(leaf_paths(params), jax.tree.leaves(params))):
        shape = jnp.shape(leaf)
        rules.append((f"{name} zeroed",
                      lambda g, dx, *_, k=k: (_replace_leaf(g, k, jnp.zeros_like), dx)))
        rules.append((f"backward with 1/{name}", lambda g, dx, p, res, dy, k=k: layer.backward(
            _replace_leaf(p, k, lambda a: 1 / a), res, dy)))
        if shape == (out_channels,):
            rules.append((f"{name} summed over the wrong axis",
                          lambda g, dx, p, res, dy, k=k: (
                              _replace_leaf(g, k, lambda a: _wrong_axis_sum(dy, a)), dx)))
        for label, f in array_families(name, shape):
            rules.append((label, lambda g, dx, *_, k=k, f=f: (_replace_leaf(g, k, f), dx)))
    if with_input:
        for label, f in array_families("dx", x_shape):
            rules.append((label, lambda g, dx, *_, f=f: (g, f(dx))))
    rules.append(("residuals shifted by 0.25",
                  lambda g, dx, p, res, dy: layer.backward(p, _shifted(res), dy)))
    return rules


def _wrong_axis_sum(dy, like):
    """Σ of δ over the wrong axis, as a bias gradient: δ read channel-major, (c, rest).sum(1)."""
    return dy.reshape(like.shape[0], -1).sum(axis=1).astype(like.dtype)


def _shifted(residuals):
    return jax.tree.map(lambda r: r + 0.25 if jnp.issubdtype(r.dtype, jnp.floating) and r.size
                        else r, residuals)


def switched(layer, rules):
    """`layer` whose backward applies rule m (m = state["mutant"], 0: none) to its result.

    State {"inner": layer's state, "mutant": int32}; forward, apply and branches are the
    layer's. A rule whose result has another structure, shape or dtype than the true
    gradient's is cast back where it can be and otherwise raises at trace time."""

    def init(key, in_shape):
        params, state = layer.init(key, in_shape)
        return params, {"inner": state, "mutant": jnp.zeros((), jnp.int32)}

    def forward(params, state, x, *, key=None, train=False):
        y, inner, residuals = layer.forward(params, state["inner"], x, key=key, train=train)
        return y, {"inner": inner, "mutant": state["mutant"]}, (residuals, state["mutant"])

    def branches(params, state, x, *, key=None, train=False):
        return layer.branches(params, state["inner"], x, key=key, train=train)

    def backward(params, residuals, dy):
        residuals, m = residuals
        g, dx = layer.backward(params, residuals, dy)
        floating = jnp.issubdtype(jnp.result_type(dx), jnp.floating)

        def branch(rule):
            def run():   # an integer input's float0 gradient is kept out of the rules
                mg, mdx = rule(g, dx if floating else jnp.zeros(()), params, residuals, dy)
                mg = jax.tree.map(lambda a, t: a.astype(t.dtype), mg, g)
                return (mg, mdx.astype(dx.dtype)) if floating else mg
            return run

        result = jax.lax.switch(m, [branch(lambda g, dx, *_: (g, dx))] +
                                [branch(rule) for _, rule in rules])
        return result if floating else (result, dx)

    return dataclasses.replace(layer, name=f"switched({layer.name})", init=init, forward=forward,
                               backward=backward, branches=branches, apply_fn=None)


def with_mutant(problem: Problem, position: int, m: int) -> Problem:
    """`problem` with mutant `m` switched on in the model's layer at `position`."""
    state = list(problem.state)
    state[position] = dict(state[position], mutant=jnp.asarray(m, jnp.int32))
    return problem._replace(state=tuple(state))


def loss_rules(outputs_shape) -> list[tuple[str, Callable]]:
    """The rules that act on δᴸ alone (as the input gradient of an identity layer on top)."""
    rules = [("δ ×1.01", lambda d: 1.01 * d), ("δ sign flipped", jnp.negative),
             ("δ zeroed", jnp.zeros_like)] + array_families("δ", outputs_shape)
    return [(name, lambda g, dx, *_, r=rule: (g, r(dx))) for name, rule in rules]


def loss_mutants(loss, kwargs) -> list[tuple[str, Any]]:
    """The mutants of `loss.grad` that need the targets: separate losses."""
    mutants = [("δ at outputs + 0.25", _mutated_loss(
        loss, lambda f, y, kw: loss.grad_fn(f + 0.25, y, **kw)))]
    if loss.name in ("multiclass_hinge", "multilabel_hinge", "max_margin"):
        mutants.append(("δ with margin + 1", _mutated_loss(loss, lambda f, y, kw: loss.grad_fn(
            f, y, **{**kw, "margin": kw.get("margin", 1.0) + 1.0}))))
    return mutants


def _mutated_loss(loss, grad):
    return dataclasses.replace(loss, name=f"mutant({loss.name})",
                               grad_fn=lambda f, y, **kw: grad(f, y, kw))


# ---------------------------------------------------------------------------------------------
# Equivalence: the mutant's gradient against the true one, computed at check and witness points.


def _gradient_program(model, loss, train, kwargs):
    kwargs = dict(kwargs)

    @jax.jit
    def gradient(params, state, x, y, key):
        out, _, res = model.forward(params, state, x, key=key, train=train)
        delta = fn.backprop.loss_delta(loss, out, y, **kwargs)
        return model.backward(params, res, delta)

    return gradient


def hand_gradients(problem: Problem, seed: int = 0):
    """The hand-written (∂L/∂params, ∂L/∂x) at `check`'s points and at the witness points, in
    float64: a list of ("check" | "witness", gradients)."""
    p = problem
    with jax.enable_x64(True):
        params, state, x, y = (fn.backprop.cast_floats(t, jnp.float64)
                               for t in (p.params, p.state, p.x, p.y))
        key = jax.random.key(seed + 11)
        gradient = compiled(_gradient_program, p.model, p.loss, p.train,
                            tuple(sorted(p.kwargs.items())))
        points = [("check", q) for q in check_points(params, x, y, key, seed=seed)]
        points += [("witness", q) for q in check_points(params, x, y, key, count=4,
                                                        seed=WITNESS_SEED + seed)[1:]]
        return [(kind, jax.tree.map(np.asarray, gradient(q.params, state, q.x, q.y, q.key)))
                for kind, q in points]


def differs(truth, mutant) -> bool:
    """Whether some entry of `mutant` is off `truth` by more than the checker's exact measure."""
    if jax.tree.structure(truth) != jax.tree.structure(mutant):
        return True
    for t, m in zip(jax.tree.leaves(truth), jax.tree.leaves(mutant)):
        if np.shape(t) != np.shape(m):
            return True
        if t.size == 0 or not np.issubdtype(t.dtype, np.floating):
            continue
        scale = LEAF_SCALE * max(np.max(np.abs(t)), np.max(np.abs(m)))
        size = np.maximum(np.abs(t), np.abs(m))
        with np.errstate(invalid="ignore"):
            if not np.all(np.abs(t - m) <= EXACT_TOL * np.maximum(size, scale)):
                return True
    return False


class Outcome(NamedTuple):
    table: str      # the row of the table: a layer's or a loss's case name
    mutant: str
    caught: bool
    at_check: bool  # differs from the true gradient at a check point
    at_witness: bool

    @property
    def verdict(self) -> str:
        if self.caught:
            return "caught" if self.at_check or self.at_witness else "false alarm"
        if not (self.at_check or self.at_witness):
            return "equivalent"
        return "MISSED" if self.at_check else "hidden"


def judge(table: str, name: str, mutant_problem: Problem, truth, seed: int = 0) -> Outcome:
    try:
        mutated = hand_gradients(mutant_problem, seed)
        at = {kind: any(differs(t, m) for (k, t), (_, m) in zip(truth, mutated) if k == kind)
              for kind in ("check", "witness")}
    except (ValueError, TypeError):   # a gradient of the wrong shape: it differs everywhere
        at = {"check": True, "witness": True}
    return Outcome(table, name, not run_check(mutant_problem, seed), at["check"], at["witness"])


def _wanted(name, only):
    return only is None or (only(name) if callable(only) else only in name)


@functools.lru_cache(maxsize=8)
def switched_model(case: Case):
    """serial(switched(layer, rules), Flatten(), Dense(3)) and the rules, for `case`: one
    object per case, so that its programs compile once (mutant 0 is the unmutated model)."""
    plain = layer_problem(case, 0)
    layer = case.factory()
    x = np.asarray(plain.x)
    with_input = np.issubdtype(x.dtype, np.floating)
    out_channels = layer.output_shape(tuple(case.in_shape))[-1]
    rules = layer_rules(layer, plain.params[0], x.shape, out_channels, with_input)
    return nn.serial(switched(layer, rules), nn.Flatten(), nn.Dense(CLASSES)), rules


def layer_outcomes(case: Case, seed: int = 0, only=None) -> list[Outcome]:
    """Every mutant of `case`'s layer (or those whose name contains `only`, or for which
    `only(name)` holds), judged; one compiled model serves them all."""
    model, rules = switched_model(case)
    base = layer_problem(case, seed, model)
    truth = hand_gradients(base, seed)
    return [judge(case.name, name, with_mutant(base, 0, m), truth, seed)
            for m, (name, _) in enumerate(rules, start=1) if _wanted(name, only)]


def loss_outcomes(case: LossCase, seed: int = 0, only=None) -> list[Outcome]:
    plain = loss_problem(case, seed)
    shape = (BATCH,) + tuple(plain.model.output_shape(case.in_shape))
    rules = loss_rules(shape)
    base = loss_problem(case, seed, tap=switched(nn.Identity(), rules))
    truth = hand_gradients(base, seed)
    outcomes = [judge(case.name, name, with_mutant(base, -1, m), truth, seed)
                for m, (name, _) in enumerate(rules, start=1) if _wanted(name, only)]
    plain_truth = hand_gradients(plain, seed)
    outcomes += [judge(case.name, name, loss_problem(case, seed, mutant), plain_truth, seed)
                 for name, mutant in loss_mutants(case.loss, case.kwargs) if _wanted(name, only)]
    return outcomes


def unmutated_failures(problem_of, seeds) -> list[int]:
    """The seeds at which `check` fails a correct model: `problem_of(seed)` → Problem."""
    return [seed for seed in seeds if not run_check(problem_of(seed), seed)]
