"""The readings of a gradient check: the notes' verdicts, the vector form of the relative error,
and the text of `fn.gradcheck.check`'s report.

Two measures of how far an analytic gradient g is from the centered differences D:

- per coordinate (`fn.gradcheck.relative_error`): |Dᵢ − gᵢ| / max(|Dᵢ|, |gᵢ|), worst over the
  coordinates — what `check` passes or fails on;
- the vector form (`vector_relative_error`, the three-layer MNIST chapter's metric):
  ‖D − g‖₂ / (‖D‖₂ + ‖g‖₂) over all compared coordinates at once — reported, never failed on.

Both are read on the notes' scale, `VERDICTS`: ≤ 1e-7 good, ≤ 1e-4 acceptable only with kinks,
≤ 1e-2 uncomfortable, above that wrong. The same bounds serve the vector form because it never
exceeds the worst per-coordinate error (|Dᵢ − gᵢ| ≤ r·max(|Dᵢ|, |gᵢ|) for every i gives
‖D − g‖ ≤ r·‖max(|D|, |g|)‖ ≤ r·(‖D‖ + ‖g‖)), and one wrong coordinate among many is diluted
in it (×1.01 everywhere reads 0.005, not 0.01): it can call a check better than the worst
coordinate, never worse, so it is a summary beside the per-coordinate verdict, not a substitute.
Its own first bound agrees with the usual reading of it (< 1e-7 great, Ng's course); correct
float64 code with h = 1e-5 gives about 1e-10.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["VERDICTS", "render", "vector_relative_error", "verdict"]

VERDICTS = ((1e-7, "good"), (1e-4, "acceptable only with kinks"), (1e-2, "uncomfortable"),
            (np.inf, "wrong"))


def verdict(error: float) -> str:
    """The notes' reading of a relative error (`VERDICTS`); NaN is "wrong"."""
    return next((name for bound, name in VERDICTS if error <= bound), "wrong")


def vector_relative_error(a, b):
    """‖a − b‖₂ / (‖a‖₂ + ‖b‖₂) over every entry of `a` and `b` (arrays, numbers, or pytrees
    of equal structure and shapes, flattened into one vector each); 0 when both are zero.

    Scale-invariant (a, b → c·a, c·b leaves it unchanged), symmetric, in [0, 1]: 1 when one is
    zero or they point in opposite directions, 1/√2 for orthogonal vectors of equal norm.
    Computed in float64 when a leaf is float64, else float32, after dividing by the
    largest |entry| so that the squares cannot overflow; NaN in either gives NaN. NumPy inputs
    give a NumPy 0-d array; JAX arrays a JAX one, and the function is jittable and vmappable.

    >>> a = jnp.array([1.0, 0.0])
    >>> float(fn.gradcheck.vector_relative_error(a, -a))
    1.0
    >>> round(float(fn.gradcheck.vector_relative_error(a, jnp.array([0.0, 1.0]))), 4)
    0.7071
    """
    a_leaves, b_leaves = jax.tree.leaves(a), jax.tree.leaves(b)
    if jax.tree.structure(a) != jax.tree.structure(b):
        raise ValueError(f"vector_relative_error: expected a and b of the same structure, "
                         f"received {jax.tree.structure(a)} and {jax.tree.structure(b)}")
    # NumPy in, NumPy out (`check`'s tables, no device round trip); anything else: jax.numpy
    xp = np if all(isinstance(v, (np.ndarray, np.generic, float, int))
                   for v in a_leaves + b_leaves) else jnp
    a_leaves, b_leaves = ([xp.asarray(v) for v in leaves] for leaves in (a_leaves, b_leaves))
    for i, (u, v) in enumerate(zip(a_leaves, b_leaves)):
        if u.shape != v.shape:
            raise ValueError(f"vector_relative_error: expected leaf {i} of a and b to have one "
                             f"shape, received {u.shape} and {v.shape}")
    wide = any(v.dtype == np.float64 for v in a_leaves + b_leaves)
    dtype = np.dtype(np.float64 if wide else np.float32)
    a_leaves, b_leaves = ([v.astype(dtype) for v in leaves] for leaves in (a_leaves, b_leaves))
    largest = functools.reduce(xp.maximum, [xp.max(xp.abs(v), initial=0.0)
                                            for v in a_leaves + b_leaves], xp.zeros((), dtype))
    scale = xp.where(largest > 0, largest, 1.0).astype(dtype)

    def norm(leaves):
        return xp.sqrt(sum((xp.sum(xp.square(v / scale)) for v in leaves), xp.zeros((), dtype)))

    top = norm([u - v for u, v in zip(a_leaves, b_leaves)])
    bottom = norm(a_leaves) + norm(b_leaves)
    return xp.where(bottom > 0, top / xp.where(bottom > 0, bottom, 1.0), 0.0 * top)


def _vector_verdict(leaf) -> str:
    """" (‖·‖: …)" when the vector form's reading differs from the per-coordinate one."""
    mine = verdict(max(leaf.vector, leaf.autodiff_vector))
    return "" if mine == verdict(leaf.worst) else f" (‖·‖: {mine})"


def render(report) -> str:
    """The text of a `GradcheckReport`: one row per leaf, the vector form over all parameters,
    each point's outcome, the kinks."""
    at = "" if report.step is None else f" at training step {report.step},"
    header = (f"gradient check ({'PASSED' if report.passed else 'FAILED'}){at} at "
              f"{len(report.points)} point(s), float64: hand-written vs autodiff on every "
              f"coordinate (tol={report.exact_tol:g}), vs centered differences h={report.eps:g} "
              f"on sampled ones (tol={report.tol:g}); errors relative to max(|g|, "
              f"{report.leaf_scale:g}·leaf max), worst over the points; ‖·‖ form: "
              f"‖D − g‖/(‖D‖ + ‖g‖) over the sampled coordinates (reported, not judged)")
    rows = [f"  {'leaf':<16}{'shape':<16}{'hand/auto':>10}{'hand/num':>10}{'auto/num':>10}"
            f"{'hand ‖·‖':>10}{'auto ‖·‖':>10}{'sampled':>8}{'kinks':>6}  verdict"]
    for leaf in report.leaves + report.inputs:
        flag = "" if leaf.passed else (f"  <-- exceeds tol at point(s) "
                                       f"{', '.join(map(str, leaf.failed_points))}")
        rows.append(f"  {leaf.path:<16}{str(leaf.shape):<16}{leaf.hand_vs_autodiff:>10.1e}"
                    f"{leaf.hand_vs_numerical:>10.1e}{leaf.autodiff_vs_numerical:>10.1e}"
                    f"{leaf.vector:>10.1e}{leaf.autodiff_vector:>10.1e}{leaf.sampled:>8}"
                    f"{leaf.kinks:>6}  {verdict(leaf.worst)}{_vector_verdict(leaf)}{flag}")
    compared = sum(leaf.sampled - leaf.kinks for leaf in report.leaves)
    hand, auto = report.vector["hand/numerical"], report.vector["autodiff/numerical"]
    rows.append(f"  all parameters, ‖·‖ form over their {compared} sampled coordinates (worst "
                f"point): hand/num {hand:.1e} ({verdict(hand)}), auto/num {auto:.1e} "
                f"({verdict(auto)})")
    for point in report.points:
        failed = [leaf.path for leaf in point.leaves + point.inputs if not leaf.passed]
        outcome = "passed" if point.passed else f"FAILED at {', '.join(failed)}"
        rows.append(f"  point {point.index} ({point.description}): loss {point.loss:.6g}, "
                    f"{outcome}")
    if report.kinks:
        shown = ", ".join(f"{path}{list(index)}" for path, index in report.kinks[:8])
        more = f" (+{len(report.kinks) - 8} more)" if len(report.kinks) > 8 else ""
        rows.append(f"  kinks crossed by θ ± h or ± 2h (excluded from pass/fail): "
                    f"{shown}{more}")
    return "\n".join([header] + rows)
