"""Second-order methods for full-batch training: L-BFGS and a damped Newton step.

    opt = fn.optim.lbfgs(memory=10)
    state = opt.init(params)
    value, grads = jax.value_and_grad(f)(params)            # f: params -> loss, whole data set
    updates, state = opt.update(grads, state, params, value=value, value_fn=f)
    params = fn.optim.apply_updates(params, updates)

Both read the objective itself (`value_fn=`, for L-BFGS's line search and Newton's Hessian), so
the loss must be a fixed function of the parameters: the whole training set, not a mini-batch.
`fn.train.fit` passes value= and value_fn= when batch_size is the number of training examples,
and refuses these optimizers otherwise. The parameters are flattened into one vector x
(`jax.flatten_util.ravel_pytree`, so all leaves share one dtype); every loop is a `lax` loop, so
`update` jits.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from funcnn.optim.base import EmptyState, GradientTransformation, require_params
from funcnn.values import value_factory

__all__ = ["LbfgsState", "lbfgs", "newton"]

_HIGHEST = lax.Precision.HIGHEST   # no TF32 in the inner products on a GPU


def _dot(a, b):
    return jnp.vdot(a, b, precision=_HIGHEST)


def _flat(name: str, params, updates, extra):
    """(x, g, unravel, value_fn): the flattened parameters and gradients, and the objective; a
    ValueError when update was not given what it reads."""
    require_params(params, name)
    value_fn = extra.get("value_fn")
    if not callable(value_fn):
        raise ValueError(f"{name}.update reads the objective: call update(grads, state, params, "
                         f"value_fn=f) with f: params -> loss on the whole training set "
                         f"(fn.train.fit passes it when batch_size is the number of training "
                         f"examples); received value_fn={value_fn!r}")
    if any(leaf is None for leaf in jax.tree.leaves(params, is_leaf=lambda v: v is None)):
        raise ValueError(f"{name} moves all the parameters at once (value_fn takes them all): "
                         f"it cannot be one group of fn.optim.partition")
    x, unravel = ravel_pytree(params)
    g, _ = ravel_pytree(updates)
    if g.shape != x.shape:
        raise ValueError(f"{name}.update: expected gradients shaped like the parameters "
                         f"({x.size} numbers), received {g.size}")
    return x, g.astype(x.dtype), unravel, value_fn


def _check_positive(name: str, **values) -> None:
    for what, value in values.items():
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"{name}: expected {what} > 0, received {value!r}")


class LbfgsState(NamedTuple):
    """L-BFGS memory: the last `memory` pairs sᵢ = xᵢ₊₁ − xᵢ, yᵢ = gᵢ₊₁ − gᵢ in a ring."""

    count: jax.Array    # updates made (int32)
    params: jax.Array   # x at the last update, flattened (n,)
    grads: jax.Array    # g at the last update (n,)
    s: jax.Array        # (memory, n) steps
    y: jax.Array        # (memory, n) gradient changes
    rho: jax.Array      # (memory,) 1/(sᵢ·yᵢ); 0 marks an empty slot
    head: jax.Array     # the slot the next pair is written to (int32)


def _two_loop(g, s, y, rho, head):
    """H·g, H the L-BFGS inverse-Hessian estimate of the stored pairs (Nocedal & Wright, Alg. 7.4).

    q ← g; newest to oldest: aᵢ = ρᵢ sᵢ·q, q ← q − aᵢyᵢ; r ← γq with γ = s·y / y·y of the newest
    pair (1 if none); oldest to newest: b = ρᵢ yᵢ·r, r ← r + (aᵢ − b)sᵢ. Empty slots (ρ = 0)
    change nothing.
    """
    newest_first = (head - 1 - jnp.arange(rho.shape[0], dtype=jnp.int32)) % rho.shape[0]

    def backward(q, i):
        a = rho[i] * _dot(s[i], q)
        return q - a * y[i], a

    q, a = lax.scan(backward, g, newest_first)
    newest = newest_first[0]
    stored = rho[newest] > 0   # then s·y > 0 and y·y > 0
    gamma = jnp.where(stored, _dot(s[newest], y[newest])
                      / jnp.where(stored, _dot(y[newest], y[newest]), 1), 1)

    def forward(r, ia):
        i, a_i = ia
        return r + (a_i - rho[i] * _dot(y[i], r)) * s[i], None

    r, _ = lax.scan(forward, gamma * q, (newest_first[::-1], a[::-1]))
    return r


def _backtrack(objective, x, f, d, slope, t0, c1, factor, steps):
    """Backtracking (Armijo) line search: the first t in t0, t0·factor, t0·factor², … (at most
    `steps` reductions) with f(x + t·d) ≤ f + c1·t·(g·d); returns (t, whether one was found)."""
    def accepted(t, f_t):
        return jnp.isfinite(f_t) & (f_t <= f + c1 * t * slope)

    def value(t):
        return jnp.asarray(objective(x + t * d)).astype(x.dtype)

    def shorter(carry):
        i, t, _ = carry
        return i + 1, t * factor, value(t * factor)

    _, t, f_t = lax.while_loop(lambda c: (c[0] < steps) & ~accepted(c[1], c[2]), shorter,
                               (jnp.int32(0), t0, value(t0)))
    return t, accepted(t, f_t)


@value_factory
def lbfgs(memory: int = 10, max_linesearch_steps: int = 30, slope_rtol: float = 1e-4,
          decrease_factor: float = 0.5) -> GradientTransformation:
    """Limited-memory BFGS with a backtracking (Armijo) line search, for full-batch training.

    Update k: store the pair s = xₖ − xₖ₋₁, y = gₖ − gₖ₋₁ when s·y > ε_mach·y·y (curvature:
    keeps H positive definite; the oldest of `memory` pairs goes); d = −H·g by the two-loop
    recursion; t the first of t₀, t₀/2, … (`decrease_factor`) with the sufficient decrease
    f(x + t·d) ≤ f(x) + c₁·t·g·d (c₁ = `slope_rtol`), t₀ = 1, or min(1, 1/‖g‖) while the memory
    is empty; the update is t·d. When no step of `max_linesearch_steps` reductions qualifies
    the update is 0 and the memory is emptied (the next direction is −g).

    `update(grads, state, params, value=f(params), value_fn=f)`: f maps params to the loss on the
    whole training set (value is computed from it when not given). State: `LbfgsState`.
    """
    if not (isinstance(memory, int) and not isinstance(memory, bool) and memory >= 1):
        raise ValueError(f"lbfgs: expected memory to be an int >= 1, received {memory!r}")
    if not (isinstance(max_linesearch_steps, int) and not isinstance(max_linesearch_steps, bool)
            and max_linesearch_steps >= 0):
        raise ValueError(f"lbfgs: expected max_linesearch_steps to be an int >= 0, received "
                         f"{max_linesearch_steps!r}")
    _check_positive("lbfgs", slope_rtol=slope_rtol, decrease_factor=decrease_factor)
    if not (slope_rtol < 1 and decrease_factor < 1):
        raise ValueError(f"lbfgs: expected slope_rtol and decrease_factor in (0, 1), received "
                         f"{slope_rtol!r} and {decrease_factor!r}")

    def init(params):
        x, _ = ravel_pytree(params)
        ring = jnp.zeros((memory, x.size), x.dtype)
        return LbfgsState(jnp.zeros([], jnp.int32), jnp.zeros_like(x), jnp.zeros_like(x), ring,
                          jnp.copy(ring), jnp.zeros((memory,), x.dtype), jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, **extra):
        x, g, unravel, value_fn = _flat("lbfgs", params, updates, extra)
        f = extra.get("value")
        f = jnp.asarray(value_fn(params) if f is None else f).astype(x.dtype)
        s_new, y_new = x - state.params, g - state.grads
        sy = _dot(s_new, y_new)
        keep = (state.count > 0) & (sy > jnp.finfo(x.dtype).eps * _dot(y_new, y_new))
        head = state.head
        s = jnp.where(keep, state.s.at[head].set(s_new), state.s)
        y = jnp.where(keep, state.y.at[head].set(y_new), state.y)
        rho = jnp.where(keep, state.rho.at[head].set(1 / jnp.where(keep, sy, 1)), state.rho)
        head = jnp.where(keep, (head + 1) % memory, head)

        d = -_two_loop(g, s, y, rho, head)
        slope = _dot(g, d)
        descent = slope < 0   # always, for positive-definite H and g ≠ 0
        d = jnp.where(descent, d, -g)
        slope = jnp.where(descent, slope, -_dot(g, g))
        empty = jnp.all(rho == 0)
        t0 = jnp.where(empty, jnp.minimum(1, 1 / jnp.sqrt(_dot(g, g))), 1).astype(x.dtype)
        t, found = _backtrack(lambda v: value_fn(unravel(v)), x, f, d, slope, t0, slope_rtol,
                              decrease_factor, max_linesearch_steps)
        step = jnp.where(found, t, 0) * d
        rho = jnp.where(found, rho, jnp.zeros_like(rho))
        return unravel(step), LbfgsState(state.count + 1, x, g, s, y, rho, head)

    update.reads_value_fn = True
    return GradientTransformation(init, update)


@value_factory
def newton(damping: float = 1e-4, learning_rate: float = 1.0) -> GradientTransformation:
    """Damped Newton step: x ← x − α·(H + λI)⁻¹·g, H = ∇²f(x) the full Hessian of `value_fn`.

    λ (`damping`) ≥ 0 keeps the system solvable where H is singular or indefinite (λ = 0, α = 1:
    the notes' x ← x − H⁻¹∇f(x), one step to the minimum of a quadratic). H is n × n
    (`jax.hessian` of f over the flattened parameters, n forward-over-reverse passes): small
    models only. `update(grads, state, params, value_fn=f)`; no state.
    """
    if not (isinstance(damping, (int, float)) and not isinstance(damping, bool) and damping >= 0):
        raise ValueError(f"newton: expected damping >= 0, received {damping!r}")
    _check_positive("newton", learning_rate=learning_rate)

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra):
        x, g, unravel, value_fn = _flat("newton", params, updates, extra)
        hessian = jax.hessian(lambda v: value_fn(unravel(v)))(x).astype(x.dtype)
        system = hessian + jnp.asarray(damping, x.dtype) * jnp.eye(x.size, dtype=x.dtype)
        direction = jnp.linalg.solve(system, g)
        return unravel(jnp.asarray(-learning_rate, x.dtype) * direction), state

    update.reads_value_fn = True
    return GradientTransformation(init, update)
