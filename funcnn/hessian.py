"""The extreme eigenvalues of a loss's Hessian: Lanczos on Hessian-vector products.

The notes' saddle-point section: at a critical point (∇f = 0) the Hessian's eigenvalues tell a
minimum (all λ ≥ 0) from a saddle (λ_min < 0 < λ_max, a direction of descent remains) and from a
maximum (all λ ≤ 0). In high dimensions most critical points of a network's loss are saddles.

    smallest, largest = fn.diagnostics.hessian_spectrum(loss_of_params, params, k=3)
    fn.diagnostics.classify_curvature(smallest, largest)   # "minimum", "saddle", "maximum", "flat"

Hv is computed forward-over-reverse, Hv = ∂/∂ε ∇f(θ + εv) at ε = 0 (`jax.jvp` of `jax.grad`),
at the cost of about two gradients and without ever forming H; m-step Lanczos with full
reorthogonalisation turns m such products into an m × m tridiagonal T = VᵀHV whose extreme
eigenvalues (Ritz values) converge to H's first.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from funcnn.nn.core import is_positive_int

__all__ = ["classify_curvature", "hessian_spectrum"]

_HIGHEST = lax.Precision.HIGHEST   # no TF32 in the reorthogonalisation on a GPU


def _hvp(f, unravel):
    """v ↦ H v for θ ↦ f(unravel(θ)), forward-over-reverse."""
    grad = jax.grad(lambda theta: f(unravel(theta)))
    return lambda theta, v: jax.jvp(grad, (theta,), (v,))[1]


def _orthogonalised(basis, w):
    """w minus its projection on the rows of `basis` (orthonormal or zero), twice: classical
    Gram–Schmidt repeated once keeps w orthogonal to working precision ("twice is enough")."""
    for _ in range(2):
        w = w - jnp.dot(jnp.dot(basis, w, precision=_HIGHEST), basis, precision=_HIGHEST)
    return w


def _lanczos(hvp, theta, draws, steps):
    """α (steps,), β (steps − 1,) of T = VᵀHV for the Krylov basis V of draws[0].

    When the basis becomes invariant under H (β ≈ 0: H has fewer distinct eigenvalues than
    `steps`), the next vector is a fresh random one orthogonal to V and β is recorded as 0, so
    that T is block diagonal and repeated eigenvalues are found once per block. `draws`
    (steps + 1, n): the start vector, then the fresh vector of each step.
    """
    n, dtype = draws.shape[1], draws.dtype
    eps = jnp.finfo(dtype).eps
    basis = jnp.zeros((steps + 1, n), dtype).at[0].set(draws[0] / jnp.linalg.norm(draws[0]))

    def step(j, carry):
        basis, alphas, betas, scale = carry
        v = basis[j]
        w = hvp(theta, v) - betas[j] * basis[jnp.maximum(j - 1, 0)]
        alpha = jnp.dot(v, w, precision=_HIGHEST)
        w = _orthogonalised(basis, w - alpha * v)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.maximum(jnp.abs(alpha), beta))
        invariant = beta <= 10 * math.sqrt(n) * eps * scale
        fresh = _orthogonalised(basis, draws[j + 1])
        w = jnp.where(invariant, fresh, w)
        norm = jnp.linalg.norm(w)
        w = jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1), 0)   # norm 0 only when j = n − 1
        beta = jnp.where(invariant, 0, beta)
        return basis.at[j + 1].set(w), alphas.at[j].set(alpha), betas.at[j + 1].set(beta), scale

    carry = (basis, jnp.zeros(steps, dtype), jnp.zeros(steps + 1, dtype), jnp.zeros((), dtype))
    _, alphas, betas, _ = lax.fori_loop(0, steps, step, carry)
    return alphas, betas[1:steps]


def hessian_spectrum(f, params, k: int = 1, *, steps: int | None = None, key=None):
    """The k smallest and the k largest eigenvalues of the Hessian ∇²f(params), by Lanczos.

    f: params → scalar loss; params: any pytree of float arrays (flattened with `ravel_pytree`
    into n numbers, in their common dtype). Returns `(smallest, largest)`, two ascending arrays
    of k eigenvalues each. `steps` (default min(n, max(64, 4k))) Hessian-vector products build
    the Krylov basis, started from a N(0, I) vector drawn from `key` (default `key(0)`); with
    `steps = n` the result is H's exact spectrum up to round-off, with fewer the extremes
    converge first (k small against n). Pure JAX: jit it with `f` and `k` closed over.

    >>> f = lambda p: p["x"] ** 2 - 3 * p["y"] ** 2 + p["x"] * p["y"]   # H = [[2, 1], [1, -6]]
    >>> smallest, largest = fn.diagnostics.hessian_spectrum(f, {"x": 0.0, "y": 0.0})
    >>> np.round([float(smallest[0]), float(largest[0])], 4)   # −2 ± √17
    array([-6.1231,  2.1231])
    >>> fn.diagnostics.classify_curvature(smallest, largest)
    'saddle'
    """
    if not is_positive_int(k):
        raise ValueError(f"hessian_spectrum: expected a positive int k (eigenvalues at each end), "
                         f"received {k!r}")
    theta, unravel = ravel_pytree(params)
    n = theta.shape[0]
    if n == 0 or not jnp.issubdtype(theta.dtype, jnp.floating):
        raise ValueError(f"hessian_spectrum: expected params with at least one floating-point "
                         f"entry, received {n} entries of dtype {theta.dtype}")
    if k > n:
        raise ValueError(f"hessian_spectrum: expected k ≤ {n}, the number of parameters, "
                         f"received k={k}")
    out = jax.eval_shape(f, params)
    if getattr(out, "shape", None) != () or not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"hessian_spectrum: expected f(params) to be a floating-point scalar, "
                         f"received shape {getattr(out, 'shape', None)} and dtype "
                         f"{getattr(out, 'dtype', type(out).__name__)}")
    steps = min(n, max(64, 4 * k)) if steps is None else steps
    if not (is_positive_int(steps) and k <= steps):
        raise ValueError(f"hessian_spectrum: expected an int number of steps ≥ k={k}, received "
                         f"{steps!r}")
    steps = min(int(steps), n)

    @jax.jit   # one program (a fresh trace of f each call: nothing is cached across calls)
    def run(theta, draws):
        alphas, betas = _lanczos(_hvp(f, unravel), theta, draws, steps)
        tridiagonal = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
        ritz = jnp.linalg.eigvalsh(tridiagonal)   # ascending
        return ritz[:k], ritz[steps - k:]

    key = jax.random.key(0) if key is None else key
    return run(theta, jax.random.normal(key, (steps + 1, n), theta.dtype))


def classify_curvature(smallest, largest, *, tol: float = 1e-6) -> str:
    """What the Hessian's extreme eigenvalues say about a critical point (∇f = 0).

    "saddle" when λ_min < −tol < tol < λ_max; "minimum" when λ_min ≥ −tol (positive
    semi-definite: a minimum, or a flat valley floor, to second order); "maximum" when
    λ_max ≤ tol; "flat" when every |λ| ≤ tol. Relative to the loss's scale, pick `tol` a little
    above the round-off of λ (float32: ~1e-5·max|λ|). Away from a critical point the labels
    describe only the local curvature.

    >>> fn.diagnostics.classify_curvature(jnp.array([-0.5]), jnp.array([2.0]))
    'saddle'
    """
    low, high = float(jnp.min(smallest)), float(jnp.max(largest))
    if low >= -tol and high <= tol:
        return "flat"
    if low >= -tol:
        return "minimum"
    if high <= tol:
        return "maximum"
    return "saddle"
