"""Gradient checking: hand-written vs autodiff vs centered finite differences, in float64.

The notes' recipe: compare analytic and numerical gradients with the relative error
|a − b| / max(|a|, |b|) and centered differences (f(θ + h) − f(θ − h)) / 2h; < 1e-7 is good,
> 1e-2 is wrong; a kink (ReLU, max, hinge) crossed between θ − h and θ + h explains a mismatch
and is reported, not counted. Everything here runs in float64 and leaves `jax_enable_x64` as it
found it.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from funcnn import backprop
from funcnn.nn.core import Layer
from funcnn.paths import leaf_paths

VERDICTS = ((1e-7, "good"), (1e-4, "acceptable only with kinks"), (1e-2, "uncomfortable"),
            (np.inf, "wrong"))


def relative_error(a, b, floor=0.0):
    """Element-wise |a − b| / max(|a|, |b|); 0 where both |a| and |b| are ≤ `floor` (0 at 0)."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    scale = jnp.maximum(jnp.abs(a), jnp.abs(b))
    agree = scale <= floor
    return jnp.where(agree, 0.0, jnp.abs(a - b) / jnp.where(agree, 1.0, scale))


def _probe(f, branches, flat_params, unravel, eps, batch_size=64):
    """Jitted map over flat coordinates i: (centered difference of f, kink crossed at i).

    A kink is crossed when the branch pattern at θ + h eᵢ or θ − h eᵢ differs from the one at θ.
    """

    def at(theta):
        return f(unravel(theta))

    centre = None if branches is None else branches(unravel(flat_params))

    def differs(theta):
        if branches is None:
            return jnp.array(False)
        changed = jax.tree.map(lambda a, b: jnp.any(a != b), branches(unravel(theta)), centre)
        return jnp.any(jnp.array(jax.tree.leaves(changed) + [False]))

    def one(i):
        step = jnp.zeros_like(flat_params).at[i].set(eps)
        plus, minus = flat_params + step, flat_params - step
        return (at(plus) - at(minus)) / (2 * eps), differs(plus) | differs(minus)

    return jax.jit(lambda coords: jax.lax.map(one, coords, batch_size=batch_size))


def numerical_grad(f, params, eps=1e-5):
    """Centered-difference gradient of scalar `f` at `params`, every coordinate, in float64.

    ∂f/∂θᵢ ≈ (f(θ + h eᵢ) − f(θ − h eᵢ)) / 2h with h = `eps`. `f` must be a JAX function of the
    pytree `params` (all leaves floating point). Returns a pytree of float64 leaves.
    """
    with jax.enable_x64(True):
        flat, unravel = ravel_pytree(backprop.cast_floats(params, jnp.float64))
        differences, _ = _probe(f, None, flat, unravel, eps)(jnp.arange(flat.size))
        return unravel(differences)


@dataclasses.dataclass(frozen=True)
class LeafCheck:
    """Maximum relative errors of one parameter leaf (kink coordinates excluded)."""

    path: str
    shape: tuple[int, ...]
    hand_vs_autodiff: float      # over every coordinate but the sampled kink coordinates
    hand_vs_numerical: float     # over the sampled coordinates
    autodiff_vs_numerical: float
    sampled: int
    kinks: int

    @property
    def worst(self) -> float:
        return max(self.hand_vs_autodiff, self.hand_vs_numerical, self.autodiff_vs_numerical)


@dataclasses.dataclass(frozen=True)
class GradcheckReport:
    """Outcome of `check`: `passed`, per-leaf errors, and the coordinates where a kink was crossed."""

    passed: bool
    leaves: tuple[LeafCheck, ...]
    kinks: tuple[tuple[str, tuple[int, ...]], ...]
    tol: float
    eps: float
    floor: float

    @property
    def max_errors(self) -> dict[str, dict[str, float]]:
        return {leaf.path: {"hand/autodiff": leaf.hand_vs_autodiff,
                            "hand/numerical": leaf.hand_vs_numerical,
                            "autodiff/numerical": leaf.autodiff_vs_numerical}
                for leaf in self.leaves}

    def __str__(self):
        header = (f"gradient check ({'PASSED' if self.passed else 'FAILED'}): max relative error "
                  f"per leaf, float64, h={self.eps:g}, tol={self.tol:g}")
        rows = [f"  {'leaf':<16}{'shape':<14}{'hand/auto':>11}{'hand/num':>11}{'auto/num':>11}"
                f"{'sampled':>9}{'kinks':>7}  verdict"]
        for leaf in self.leaves:
            verdict = next(name for bound, name in VERDICTS if leaf.worst <= bound)
            flag = "" if leaf.worst <= self.tol else "  <-- exceeds tol"
            rows.append(f"  {leaf.path:<16}{str(leaf.shape):<14}{leaf.hand_vs_autodiff:>11.1e}"
                        f"{leaf.hand_vs_numerical:>11.1e}{leaf.autodiff_vs_numerical:>11.1e}"
                        f"{leaf.sampled:>9}{leaf.kinks:>7}  {verdict}{flag}")
        if self.kinks:
            shown = ", ".join(f"{path}{list(index)}" for path, index in self.kinks[:8])
            more = f" (+{len(self.kinks) - 8} more)" if len(self.kinks) > 8 else ""
            rows.append(f"  kinks crossed by θ ± h (excluded from pass/fail): {shown}{more}")
        return "\n".join([header] + rows)


def check(model: Layer, loss, params, state, x, y, *, key=None, train=True, samples=10,
          eps=1e-5, tol=1e-6, floor=1e-10, seed=0, **loss_kwargs) -> GradcheckReport:
    """Compare hand-written, autodiff and numerical gradients of loss(model(x), y) w.r.t. params.

    Everything is cast to float64. Stochastic layers run under one fixed key (`key`, else
    `jax.random.key(seed)`) so f(θ ± h) sees the same dropout masks. For each parameter leaf
    (biases included) `samples` coordinates are drawn at random; hand-written vs autodiff is
    compared on every coordinate. A sampled coordinate where any layer's or the loss's kink
    branch differs between θ − h, θ and θ + h is reported in `.kinks` and excluded from all three
    comparisons. `passed` holds when every other relative error is ≤ `tol` (both values ≤ `floor`
    count as equal). A hand-written gradient whose structure, leaf shapes or dtypes differ from
    the params' raises `ValueError` naming the leaf.
    """
    with jax.enable_x64(True):
        params, state, x, y = (backprop.cast_floats(t, jnp.float64) for t in (params, state, x, y))
        key = jax.random.key(seed) if key is None else key

        def objective(p):
            outputs, _ = model.apply(p, state, x, key=key, train=train)
            return loss(outputs, y, **loss_kwargs)

        def branches(p):
            outputs, _ = model.apply(p, state, x, key=key, train=train)
            return (model.branches(p, state, x, key=key, train=train),
                    loss.branches(outputs, y, **loss_kwargs))

        _, hand = jax.jit(backprop.value_and_grad(model, loss, **loss_kwargs),
                          static_argnames="train")(params, state, x, y, key=key, train=train)
        auto = jax.jit(jax.grad(objective))(params)
        paths = leaf_paths(params)
        _check_like_params(hand, params, paths)

        flat, unravel = ravel_pytree(params)
        leaves = jax.tree.leaves(params)
        offsets = np.cumsum([0] + [leaf.size for leaf in leaves])
        rng = np.random.default_rng(seed)
        coords = [offsets[i] + np.sort(rng.choice(leaf.size, min(samples, leaf.size), replace=False))
                  for i, leaf in enumerate(leaves) if leaf.size]
        coords = np.concatenate(coords) if coords else np.zeros(0, int)
        numerical, crossed = (np.asarray(a) for a in
                              _probe(objective, branches, flat, unravel, eps)(jnp.asarray(coords)))
        hand_flat, auto_flat = np.asarray(ravel_pytree(hand)[0]), np.asarray(ravel_pytree(auto)[0])
        results, kinks = [], []
        for i, leaf in enumerate(leaves):
            lo, hi = offsets[i], offsets[i + 1]
            if lo == hi:
                continue
            mine = (coords >= lo) & (coords < hi)
            c, smooth = coords[mine], ~crossed[mine]
            off_kink = np.ones(hi - lo, bool)
            off_kink[c[~smooth] - lo] = False
            results.append(LeafCheck(
                path=paths[i], shape=tuple(leaf.shape),
                hand_vs_autodiff=_max(relative_error(hand_flat[lo:hi], auto_flat[lo:hi],
                                                     floor)[off_kink]),
                hand_vs_numerical=_max(relative_error(hand_flat[c], numerical[mine], floor)[smooth]),
                autodiff_vs_numerical=_max(relative_error(auto_flat[c], numerical[mine], floor)[smooth]),
                sampled=int(mine.sum()), kinks=int((~smooth).sum())))
            kinks += [(paths[i], tuple(int(v) for v in np.unravel_index(j - lo, leaf.shape)))
                      for j in c[~smooth]]
        passed = all(leaf.worst <= tol for leaf in results)
        return GradcheckReport(passed, tuple(results), tuple(kinks), tol, eps, floor)


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


def _max(errors) -> float:
    errors = np.asarray(errors)
    return float(errors.max()) if errors.size else 0.0
