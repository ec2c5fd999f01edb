"""Gradient checking: hand-written vs autodiff vs centered finite differences, in float64.

The notes' recipe: compare analytic and numerical gradients with the relative error
|a − b| / max(|a|, |b|) and centered differences (f(θ + h) − f(θ − h)) / 2h; < 1e-7 is good,
> 1e-2 is wrong; a kink (ReLU, max, hinge) crossed between θ − h and θ + h explains a mismatch
and is reported, not counted. Everything here runs in float64 and leaves `jax_enable_x64` as it
found it.

What `check` guarantees, at each of its points (`funcnn.gradcheck_points`: the given one and,
by default, two moved off it) — for every parameter leaf and for the gradient with respect to
the model's input, with S the largest |entry| of the leaf's hand-written or autodiff gradient:

- hand-written == autodiff on *every* coordinate: |g − a| ≤ exact_tol · max(|g|, |a|,
  leaf_scale·S) (1e-9 and 1e-3 by default; both are exact up to float64 round-off, 1e-13 or
  less on correct code). An entry a thousand times smaller than its leaf's largest is judged
  against leaf_scale·S, not against itself, so that round-off on it is no alarm.
- both == the centered difference D(h) on `samples` coordinates per leaf: |D − g| − η ≤ tol ·
  max(|D|, |g|, leaf_scale·S), where η = |D(h) − D(2h)| + 4ε(|f(θ + h)| + |f(θ − h)|)/2h
  bounds the difference's own error (truncation, and the round-off of f that D(h) and D(2h)
  can share), so that finite-difference noise on small entries is no alarm.
  The notes' vector form ‖D − g‖ / (‖D‖ + ‖g‖) over the sampled coordinates (hand-written and
  autodiff g; per leaf and over all parameters) is reported beside it, never judged.
- a sampled coordinate where a kink is crossed between θ − 2h and θ + 2h (any layer's or the
  loss's `branches` changes) is reported and left out of all comparisons.
Entries where both values are ≤ `floor` count as equal. Readings: `funcnn.gradcheck_report`;
`regularizer=` and `check_after` (after a burn-in of training): `funcnn.gradcheck_notes`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from funcnn import backprop
from funcnn.gradcheck_notes import RegularizedReport, check_after, penalty_sections
from funcnn.gradcheck_points import is_floating
from funcnn.gradcheck_points import check_points as _check_points
from funcnn.gradcheck_report import VERDICTS, render, vector_relative_error
from funcnn.nn.core import Layer, as_layer
from funcnn.paths import leaf_paths

__all__ = ["GradcheckReport", "LeafCheck", "PointCheck", "RegularizedReport", "VERDICTS", "check",
           "check_after", "numerical_grad", "relative_error", "vector_relative_error"]
_LANES = 64   # finite-difference evaluations per vectorised batch
_ROUNDING = 4 * np.finfo(np.float64).eps   # relative round-off allowed in each f(θ ± h)


def relative_error(a, b, floor=0.0, scale=0.0):
    """Element-wise |a − b| / max(|a|, |b|, scale); 0 where both |a| and |b| are ≤ `floor`.

    `scale` > 0 judges entries much smaller than it against it instead of against themselves
    (`check` passes leaf_scale × the leaf's largest entry)."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    size = jnp.maximum(jnp.abs(a), jnp.abs(b))
    agree = size <= floor
    denominator = jnp.maximum(size, scale)
    return jnp.where(agree, 0.0, jnp.abs(a - b) / jnp.where(agree, 1.0, denominator))


def _padded_count(count, lanes=_LANES):
    """`count` rounded up to a whole number of batches of `lanes` (itself when smaller)."""
    return count if count <= lanes else -(-count // lanes) * lanes


def _lanes(evaluate, coords, steps):
    """`evaluate(i, h)` for every (coordinate, step) pair, `_LANES` at a time (vectorised)."""
    return jax.lax.map(lambda pair: evaluate(*pair), (coords, steps),
                       batch_size=min(_LANES, coords.shape[0]))


def _pad(array, count):
    return np.concatenate([array, np.zeros(count - len(array), array.dtype)])


def numerical_grad(f, params, eps=1e-5):
    """Centered-difference gradient of scalar `f` at `params`, every coordinate, in float64.

    ∂f/∂θᵢ ≈ (f(θ + h eᵢ) − f(θ − h eᵢ)) / 2h with h = `eps`. `f` must be a JAX function of the
    pytree `params` (all leaves floating point). Returns a pytree of float64 leaves.
    """
    with jax.enable_x64(True):
        flat, unravel = ravel_pytree(backprop.cast_floats(params, jnp.float64))
        n = flat.size
        padded = _padded_count(2 * n)

        @jax.jit
        def run(coords, steps, theta):
            return _lanes(lambda i, h: f(unravel(theta.at[i].add(h))), coords, steps)

        values = run(_pad(np.tile(np.arange(n), 2), padded),
                     _pad(np.repeat(np.array([eps, -eps]), n), padded), flat)
        return unravel((values[:n] - values[n:2 * n]) / (2 * eps))


@dataclasses.dataclass(frozen=True)
class LeafCheck:
    """Errors of one leaf (kink coordinates excluded): the maximum over the points checked.

    `hand_vs_autodiff` covers every coordinate; the two numerical ones the sampled coordinates;
    all are scaled as the module docstring says. `vector` and `autodiff_vector`: the notes'
    ‖D − g‖/(‖D‖ + ‖g‖) over the sampled coordinates for the hand-written and the autodiff g
    (unscaled). `failed_points`: the indices of the points where this leaf failed.
    """

    path: str
    shape: tuple[int, ...]
    hand_vs_autodiff: float
    hand_vs_numerical: float
    autodiff_vs_numerical: float
    sampled: int
    kinks: int
    vector: float = 0.0
    autodiff_vector: float = 0.0
    passed: bool = True
    failed_points: tuple[int, ...] = ()

    @property
    def worst(self) -> float:
        return max(self.hand_vs_autodiff, self.hand_vs_numerical, self.autodiff_vs_numerical)


@dataclasses.dataclass(frozen=True)
class PointCheck:
    """The comparisons at one point: its parameter leaves, its input rows, its kinks, its loss,
    and `vector`: the ‖·‖ form over all parameter leaves' sampled coordinates (hand, autodiff)."""

    index: int
    description: str
    passed: bool
    leaves: tuple[LeafCheck, ...]
    inputs: tuple[LeafCheck, ...]
    kinks: tuple[tuple[str, tuple[int, ...]], ...]
    loss: float
    vector: tuple[float, float] = (0.0, 0.0)


@dataclasses.dataclass(frozen=True)
class GradcheckReport:
    """Outcome of `check`: `passed`, per-leaf errors (worst over the points), the coordinates
    where a kink was crossed, `inputs` (the input gradient's rows) and `points` (each point's
    own `PointCheck`; `failed_points` names those that failed); `vector` the ‖·‖ form over all
    parameters, worst over the points; `step` the training step checked at (`check_after`)."""

    passed: bool
    leaves: tuple[LeafCheck, ...]
    kinks: tuple[tuple[str, tuple[int, ...]], ...]
    tol: float
    eps: float
    floor: float
    inputs: tuple[LeafCheck, ...] = ()
    points: tuple[PointCheck, ...] = ()
    exact_tol: float = 1e-9
    leaf_scale: float = 1e-3
    step: int | None = None

    @property
    def max_errors(self) -> dict[str, dict[str, float]]:
        return {leaf.path: {"hand/autodiff": leaf.hand_vs_autodiff,
                            "hand/numerical": leaf.hand_vs_numerical,
                            "autodiff/numerical": leaf.autodiff_vs_numerical}
                for leaf in self.leaves}

    @property
    def failed_points(self) -> tuple[PointCheck, ...]:
        return tuple(point for point in self.points if not point.passed)

    @property
    def vector(self) -> dict[str, float]:
        return {"hand/numerical": _worst([p.vector[0] for p in self.points]),
                "autodiff/numerical": _worst([p.vector[1] for p in self.points])}

    def __str__(self):
        return render(self)

def check(model: Layer, loss, params, state, x, y, *, key=None, train=True, samples=10,
          eps=1e-5, tol=1e-6, floor=1e-10, seed=0, points=3, exact_tol=1e-9, leaf_scale=1e-3,
          perturbation=0.5, input_grad=True, regularizer=None,
          **loss_kwargs) -> GradcheckReport | RegularizedReport:
    """Compare hand-written, autodiff and numerical gradients of loss(model(x), y) w.r.t. the
    params and the input x, at `points` points; `passed` when every comparison of the module
    docstring holds at every point.

    Everything is cast to float64. Point 0 is (params, x, y, key) as given; points 1, 2, … move
    the parameters off their initial values, then also redraw the data, with fresh stochastic
    keys (`funcnn.gradcheck_points`; `perturbation` sets the move, `seed` the draws and the
    sampled coordinates); `points=1` is the single check at the given point. Stochastic layers
    run under one key per point (`key`, else `jax.random.key(seed)`), so f(θ ± h) sees the same
    masks. `samples` coordinates per leaf (and of x) are compared with centered differences;
    every coordinate with autodiff. `input_grad=False`, or an integer x (token ids), leaves the
    input gradient out. A hand-written gradient whose structure, shapes or dtypes differ from
    the params' (or the input gradient from x's) raises `ValueError` naming the leaf. With a
    `regularizer` R (`fn.regularizers`), a `RegularizedReport`: the checks of the loss, of R
    alone (its hand-written `.grad`) and of loss + R (`funcnn.gradcheck_notes`).

    Cost: the three programs (hand-written, autodiff, finite differences) compile once per
    check and run once per point; compilation dominates on small batches, so three points cost
    about 1.1–1.4× one (the 784-64-16-10 net on 16 images, cold: about half the time of the
    single-point check this replaced; benchmarks/gradcheck_timing.py), and an equal model
    checked again reuses the compiled programs (`fn.train.clear_caches` drops them).
    """
    from funcnn.train.cache import compiled   # the one cache of compiled programs

    if regularizer is not None:
        options = dict(key=key, train=train, samples=samples, eps=eps, tol=tol, floor=floor,
                       seed=seed, points=points, exact_tol=exact_tol, leaf_scale=leaf_scale,
                       perturbation=perturbation)
        return RegularizedReport(repr(regularizer), *(
            check(m, f, params, state, x, y, input_grad=input_grad and uses_x, **options,
                  **loss_kwargs) for m, f, uses_x in penalty_sections(model, loss, regularizer)))
    model = as_layer(model, "gradcheck.check")
    with jax.enable_x64(True):
        params, state, x, y = (backprop.cast_floats(t, jnp.float64) for t in (params, state, x, y))
        key = jax.random.key(seed) if key is None else key
        x_leaves = jax.tree.leaves(x)
        with_input = bool(input_grad and x_leaves and all(is_floating(a) for a in x_leaves))
        tree = (params, x) if with_input else params
        layout = (jax.tree.structure(tree),
                  tuple(jax.ShapeDtypeStruct(np.shape(a), a.dtype) for a in jax.tree.leaves(tree)))
        try:
            hashed_kwargs = tuple(sorted(loss_kwargs.items()))
            hash(hashed_kwargs)
        except TypeError:
            hashed_kwargs = loss_kwargs   # unhashable: `compiled` builds afresh
        grads, probe = compiled(_programs, model, loss, bool(train), with_input, hashed_kwargs,
                                layout)
        settings = dict(samples=samples, eps=eps, tol=tol, floor=floor, seed=seed,
                        exact_tol=exact_tol, leaf_scale=leaf_scale)
        names = leaf_paths(params) + ([_input_name(p) for p in leaf_paths(x)] if with_input else [])
        results = []
        for point in _check_points(params, x, y, key, count=points, seed=seed,
                                   perturbation=perturbation):
            hand_p, hand_x, auto_p, auto_x, value = grads(point.params, state, point.x, point.y,
                                                          point.key)
            if point.index == 0:
                _check_like_params(hand_p, params, leaf_paths(params))
                if with_input:
                    _check_like_input(hand_x, x)
            tree = (point.params, point.x) if with_input else point.params
            hand, auto = ((p, dx) if with_input else p for p, dx in ((hand_p, hand_x),
                                                                      (auto_p, auto_x)))
            results.append(_compare(point, len(jax.tree.leaves(params)), float(value), tree,
                                    hand, auto, names, probe,
                                    (state, point.x, point.y, point.key), settings))
        return _report(results, settings)


def _input_name(path):
    return "input" if path == "<root>" else f"input/{path}"


def _with_input(model: Layer) -> Layer:
    """`model` with x as a parameter: params (params, x), so the backprop engine returns the
    hand-written (∂L/∂params, ∂L/∂x) — the engine users train with, input gradient included."""

    def forward(params, state, x, *, key=None, train=False):
        del x
        return model.forward(params[0], state, params[1], key=key, train=train)

    def backward(params, residuals, dy):
        dparams, dx = model.backward(params[0], residuals, dy)
        return (dparams, dx), dx

    return Layer(f"with_input({model!r})", model.init, forward, backward)


def _programs(model, loss, train, with_input, loss_kwargs, layout):
    """The jitted hand-written and autodiff gradients, and the jitted finite-difference probe:
    f(θ + h eᵢ) for (coordinate i, step h) pairs, with whether any kink changed side there."""
    loss_kwargs = dict(loss_kwargs)
    treedef, shapes = layout
    _, unravel = ravel_pytree(jax.tree.unflatten(treedef, [jnp.zeros(s.shape, s.dtype)
                                                           for s in shapes]))

    def grads(params, state, x, y, key):
        def objective(p, xin):
            return loss(model.apply(p, state, xin, key=key, train=train)[0], y, **loss_kwargs)

        if with_input:
            run = backprop.value_and_grad(_with_input(model), loss, **loss_kwargs)
            (value, _), (hand_p, hand_x) = run((params, x), state, x, y, key=key, train=train)
            auto_p, auto_x = jax.grad(objective, argnums=(0, 1))(params, x)
            return hand_p, hand_x, auto_p, auto_x, value
        (value, _), hand_p = backprop.value_and_grad(model, loss, **loss_kwargs)(
            params, state, x, y, key=key, train=train)
        return hand_p, None, jax.grad(objective)(params, x), None, value

    def evaluate(theta, state, x, y, key):
        """(f(θ), every kink's side) for the flat θ of (params, x), or of params."""
        params, x = unravel(theta) if with_input else (unravel(theta), x)
        outputs, _ = model.apply(params, state, x, key=key, train=train)
        sides = (model.branches(params, state, x, key=key, train=train),
                 loss.branches(outputs, y, **loss_kwargs))
        return loss(outputs, y, **loss_kwargs), sides

    @jax.jit
    def probe(coords, steps, theta, state, x, y, key):
        _, centre = evaluate(theta, state, x, y, key)

        def moved(i, h):
            value, sides = evaluate(theta.at[i].add(h), state, x, y, key)
            changed = [jnp.any(a != b) for a, b in zip(jax.tree.leaves(sides),
                                                         jax.tree.leaves(centre))]
            return value, jnp.any(jnp.array(changed + [False]))

        return _lanes(moved, coords, steps)

    return jax.jit(grads), probe


def _error(a, b, scale, floor, slack=0.0):
    """max(|a − b| − slack, 0) / max(|a|, |b|, scale), 0 where |a|, |b| ≤ floor; NaN stays NaN."""
    size = np.maximum(np.abs(a), np.abs(b))
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.maximum(np.abs(a - b) - slack, 0.0) / np.maximum(size, scale)
    return np.where(size <= floor, 0.0, error)


def _compare(point, n_params, value, tree, hand, auto, names, probe, args, s) -> PointCheck:
    """Every comparison of the module docstring at one point; `tree` is what is differentiated
    ((params, x) or params), `hand` and `auto` its two gradients, `names` its leaves' names."""
    flat = ravel_pytree(tree)[0]
    leaves = jax.tree.leaves(tree)
    hand_flat, auto_flat = (np.asarray(ravel_pytree(g)[0]) for g in (hand, auto))
    offsets = np.cumsum([0] + [leaf.size for leaf in leaves])
    rng = np.random.default_rng((s["seed"], point.index, 1))
    coords = [offsets[i] + np.sort(rng.choice(leaf.size, min(s["samples"], leaf.size),
                                              replace=False))
              for i, leaf in enumerate(leaves) if leaf.size]
    coords = np.concatenate(coords) if coords else np.zeros(0, int)
    n, h = len(coords), s["eps"]
    count = _padded_count(4 * n)
    values, crossed = (np.asarray(a) for a in probe(
        _pad(np.tile(coords, 4), count), _pad(np.repeat([h, -h, 2 * h, -2 * h], n), count),
        flat, *args))
    values, crossed = values[:4 * n].reshape(4, n), crossed[:4 * n].reshape(4, n).any(axis=0)
    central = (values[0] - values[1]) / (2 * h)
    noise = (np.abs(central - (values[2] - values[3]) / (4 * h))
             + _ROUNDING * (np.abs(values[0]) + np.abs(values[1])) / (2 * h))
    checks, kinks, compared = [], [], []
    for i, leaf in enumerate(leaves):
        lo, hi = offsets[i], offsets[i + 1]
        if lo == hi:
            continue
        mine = (coords >= lo) & (coords < hi)
        c, smooth = coords[mine], ~crossed[mine]
        g, a = hand_flat[lo:hi], auto_flat[lo:hi]
        scale = s["leaf_scale"] * max(np.max(np.abs(g)), np.max(np.abs(a)))
        off_kink = np.ones(hi - lo, bool)
        off_kink[c[~smooth] - lo] = False
        d, eta = central[mine][smooth], noise[mine][smooth]
        gs, as_ = hand_flat[c][smooth], auto_flat[c][smooth]
        errors = (_worst(_error(g, a, scale, s["floor"])[off_kink]),
                  _worst(_error(gs, d, scale, s["floor"], eta)),
                  _worst(_error(as_, d, scale, s["floor"], eta)))
        vectors = [float(vector_relative_error(d, v)) for v in (gs, as_)]
        compared += [(d, gs, as_)] if i < n_params else []
        passed = errors[0] <= s["exact_tol"] and errors[1] <= s["tol"] and errors[2] <= s["tol"]
        checks.append((i < n_params, LeafCheck(
            names[i], tuple(leaf.shape), *errors, sampled=int(mine.sum()),
            kinks=int((~smooth).sum()), vector=vectors[0], autodiff_vector=vectors[1],
            passed=bool(passed), failed_points=() if passed else (point.index,))))
        kinks += [(names[i], tuple(int(v) for v in np.unravel_index(j - lo, leaf.shape)))
                  for j in c[~smooth]]
    return PointCheck(point.index, point.description, all(leaf.passed for _, leaf in checks),
                      tuple(leaf for is_param, leaf in checks if is_param),
                      tuple(leaf for is_param, leaf in checks if not is_param), tuple(kinks),
                      value, tuple(float(vector_relative_error([c[0] for c in compared],
                                                               [c[k] for c in compared]))
                                   for k in (1, 2)))


def _merged(checks) -> LeafCheck:
    """One leaf's checks at several points as one: worst errors, summed counts."""
    first = checks[0]
    return LeafCheck(first.path, first.shape,
                     *(_worst([getattr(c, f) for c in checks]) for f in
                       ("hand_vs_autodiff", "hand_vs_numerical", "autodiff_vs_numerical")),
                     sampled=sum(c.sampled for c in checks), kinks=sum(c.kinks for c in checks),
                     vector=_worst([c.vector for c in checks]),
                     autodiff_vector=_worst([c.autodiff_vector for c in checks]),
                     passed=all(c.passed for c in checks),
                     failed_points=tuple(p for c in checks for p in c.failed_points))


def _report(results, s) -> GradcheckReport:
    leaves = tuple(_merged(group) for group in zip(*(r.leaves for r in results)))
    inputs = tuple(_merged(group) for group in zip(*(r.inputs for r in results)))
    kinks = tuple(dict.fromkeys(k for r in results for k in r.kinks))
    return GradcheckReport(all(r.passed for r in results), leaves, kinks, s["tol"], s["eps"],
                           s["floor"], inputs, tuple(results), s["exact_tol"], s["leaf_scale"])


def _check_like_params(grads, params, paths):
    """Raise `ValueError` unless the hand-written `grads` match `params` leaf by leaf."""
    grad_paths = leaf_paths(grads)
    if jax.tree.structure(grads) != jax.tree.structure(params):
        missing = [p for p in paths if p not in grad_paths]
        extra = [p for p in grad_paths if p not in paths]
        raise ValueError(f"gradcheck.check: expected the hand-written gradient to have the "
                         f"params' structure {jax.tree.structure(params)}, received "
                         f"{jax.tree.structure(grads)} (missing leaves {missing}, unexpected "
                         f"leaves {extra})")
    for path, g, p in zip(paths, jax.tree.leaves(grads), jax.tree.leaves(params)):
        if jnp.shape(g) != jnp.shape(p) or jnp.result_type(g) != jnp.result_type(p):
            raise ValueError(f"gradcheck.check: expected the hand-written gradient of leaf "
                             f"{path!r} to have the parameter's shape {tuple(jnp.shape(p))} and "
                             f"dtype {jnp.result_type(p)}, received shape {tuple(jnp.shape(g))} "
                             f"and dtype {jnp.result_type(g)}")


def _check_like_input(dx, x):
    """Raise `ValueError` unless the hand-written input gradient `dx` matches `x`."""
    if jax.tree.structure(dx) != jax.tree.structure(x) or any(
            jnp.shape(g) != jnp.shape(a) or jnp.result_type(g) != jnp.result_type(a)
            for g, a in zip(jax.tree.leaves(dx), jax.tree.leaves(x))):
        described = jax.tree.map(lambda a: f"{tuple(jnp.shape(a))} {jnp.result_type(a)}", dx)
        raise ValueError(f"gradcheck.check: expected the hand-written input gradient to have "
                         f"the input's shape and dtype "
                         f"{jax.tree.map(lambda a: f'{tuple(a.shape)} {a.dtype}', x)}, received "
                         f"{described}")


def _worst(errors) -> float:
    """The largest error, NaN if any is NaN (a NaN gradient must fail), 0 for none."""
    errors = np.asarray(errors, float)
    return float(errors.max()) if errors.size else 0.0
