"""L-BFGS: the two-loop recursion against the explicit BFGS inverse-Hessian recursion, the
Armijo line search, a quadratic's known minimiser, and full-batch `fit` on the 8×8 digits
softmax regression reaching the optimum of a float64 SciPy L-BFGS-B run (test-only reference)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn import nn

O = fn.optim
RNG = np.random.default_rng(0)
Q = RNG.normal(size=(7, 7))
A = Q @ Q.T + 0.5 * np.eye(7)          # symmetric positive definite, condition ~100
X_STAR = RNG.normal(size=7)            # the known minimiser


def _flat(p):
    return jnp.concatenate([p["a"], p["b"].ravel()])


def _quadratic(p):
    """f = ½(x − x*)ᵀA(x − x*) over the leaves a (3,) and b (2, 2) flattened in that order."""
    r = _flat(p) - jnp.asarray(X_STAR)
    return 0.5 * r @ jnp.asarray(A) @ r


def _start():
    return {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}


MEMORY, C1 = 3, 1e-4
STEPS = 40


@pytest.fixture(scope="module")
def quadratic_run():
    """The float64 trajectory of `STEPS` updates of lbfgs(memory=3) on the quadratic, each fed
    value and gradient at the current parameters; and the final state."""
    with jax.enable_x64(True):
        opt = O.lbfgs(memory=MEMORY, slope_rtol=C1)
        params = _start()
        state, path = opt.init(params), [params]

        @jax.jit
        def step(params, state):
            value, grads = jax.value_and_grad(_quadratic)(params)
            updates, state = opt.update(grads, state, params, value=value, value_fn=_quadratic)
            return O.apply_updates(params, updates), state

        for _ in range(STEPS):
            params, state = step(params, state)
            path.append(params)
        return [np.asarray(_flat(p)) for p in path], state


def test_lbfgs_finds_the_known_minimiser_of_a_quadratic(quadratic_run):
    xs, state = quadratic_run
    assert xs[-1].dtype == np.float64
    np.testing.assert_allclose(xs[-1], X_STAR, atol=1e-8)
    assert int(state.count) == STEPS and state.s.shape == (MEMORY, 7)


def _bfgs_direction(g, pairs):
    """−H·g with H from the explicit recursion H ← (I − ρsyᵀ)H(I − ρysᵀ) + ρssᵀ over the pairs,
    oldest first, from H₀ = γI, γ = sᵀy / yᵀy of the newest pair (Nocedal & Wright, (7.19))."""
    if not pairs:
        return -g
    s, y = pairs[-1]
    h = (s @ y) / (y @ y) * np.eye(len(g))
    for s, y in pairs:
        rho, eye = 1 / (s @ y), np.eye(len(g))
        h = (eye - rho * np.outer(s, y)) @ h @ (eye - rho * np.outer(y, s)) + rho * np.outer(s, s)
    return -h @ g


def test_each_step_is_the_bfgs_direction_of_the_last_pairs_with_the_first_armijo_step(
        quadratic_run):
    xs = quadratic_run[0][:12]   # (later steps are at the minimum to rounding)
    gs = [A @ (x - X_STAR) for x in xs]
    f = lambda x: 0.5 * (x - X_STAR) @ A @ (x - X_STAR)
    c1 = C1
    for k in range(len(xs) - 1):
        pairs = [(xs[i + 1] - xs[i], gs[i + 1] - gs[i]) for i in range(max(0, k - MEMORY), k)]
        d = _bfgs_direction(gs[k], pairs)
        u = xs[k + 1] - xs[k]
        t = (u @ d) / (d @ d)
        np.testing.assert_allclose(u, t * d, rtol=1e-9, atol=1e-12)   # along the direction
        t0 = 1.0 if pairs else min(1.0, 1 / np.linalg.norm(gs[k]))
        halvings = np.log2(t0 / t)
        assert abs(halvings - round(halvings)) < 1e-9 and round(halvings) >= 0   # t = t₀/2^j
        assert f(xs[k] + t * d) <= f(xs[k]) + c1 * t * gs[k] @ d            # Armijo holds
        if round(halvings) > 0:                                              # and 2t failed it
            assert f(xs[k] + 2 * t * d) > f(xs[k]) + c1 * 2 * t * gs[k] @ d


def test_value_is_computed_from_value_fn_when_not_given_and_update_jits(x64):
    opt, params = O.lbfgs(), _start()

    @jax.jit
    def both(params, state):
        grads = jax.grad(_quadratic)(params)
        return (opt.update(grads, state, params, value=_quadratic(params), value_fn=_quadratic),
                opt.update(grads, state, params, value_fn=_quadratic))

    with_value, without = both(params, opt.init(params))
    chex.assert_trees_all_close(with_value, without, rtol=1e-12)
    assert float(jnp.abs(_flat(with_value[0])).max()) > 0   # a step was taken


def test_lbfgs_refuses_an_update_without_the_objective_and_bad_settings():
    opt, params = O.lbfgs(), {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="lbfgs.update reads the objective.*value_fn"):
        opt.update(params, opt.init(params), params, value=1.0)
    with pytest.raises(ValueError, match="lbfgs reads the parameters"):
        opt.update(params, opt.init(params), value_fn=lambda p: 0.0)
    grouped = O.partition({"w": O.frozen()}, default=O.lbfgs())
    both = {"w": jnp.ones(2), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match="cannot be one group of fn.optim.partition"):
        grouped.update(both, grouped.init(both), both, value_fn=lambda p: 0.0)
    with pytest.raises(ValueError, match="memory to be an int >= 1, received 0"):
        O.lbfgs(memory=0)
    with pytest.raises(ValueError, match="slope_rtol and decrease_factor in \\(0, 1\\)"):
        O.lbfgs(decrease_factor=1.5)


def test_transforms_that_read_the_objective_are_found_inside_others():
    assert O.reads_value_fn(O.lbfgs()) and O.reads_value_fn(O.newton())
    assert O.reads_value_fn(O.chain(O.clip_by_global_norm(1.0), O.lbfgs()))
    assert O.reads_value_fn(O.skip_not_finite(O.newton(damping=1.0)))
    assert not O.reads_value_fn(O.adam(1e-3))
    assert not O.reads_value_fn(O.chain(O.sgd(0.1, momentum=0.9), O.ema(0.99)))


# ---------------------------------------------------------------------------------------------
# Full-batch fit on the digits: the optimum of SciPy's float64 L-BFGS-B.

LAMBDA = 1e-3   # the L2 penalty (λ/2)·Σw² on the kernel: the optimum is unique


def _digits():
    x, y = fn.data.digits()
    return x.reshape(len(x), -1), y


def _objective(w, b, x, y):
    """Mean softmax cross-entropy + (λ/2)‖w‖² and its gradient, in numpy float64."""
    z = x @ w + b
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(len(y)), y])) + 0.5 * LAMBDA * np.sum(w * w)
    p[np.arange(len(y)), y] -= 1
    return loss, x.T @ p / len(y) + LAMBDA * w, p.mean(axis=0)


@pytest.fixture(scope="module")
def scipy_optimum():
    """The minimum of the regularised softmax regression by SciPy's L-BFGS-B in float64."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    x, y = _digits()
    x = x.astype(np.float64)

    def fun(v):
        loss, gw, gb = _objective(v[:640].reshape(64, 10), v[640:], x, y)
        return loss, np.concatenate([gw.ravel(), gb])

    # One BLAS thread: numpy's small products otherwise contend with the test workers (20×).
    with pytest.importorskip("threadpoolctl").threadpool_limits(1):
        found = scipy_optimize.minimize(fun, np.zeros(650), jac=True, method="L-BFGS-B",
                                        options=dict(maxiter=5000, maxcor=10, gtol=1e-10,
                                                     ftol=1e-15))
    assert np.abs(fun(found.x)[1]).max() < 1e-6
    return found.fun


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
def test_fit_with_lbfgs_reaches_the_scipy_optimum_of_digits_softmax_regression(scipy_optimum):
    """float32 training, one L-BFGS update per epoch; the loss of its parameters evaluated in
    float64 is within 1e-6 of SciPy's float64 minimum."""
    x, y = _digits()
    params = [{}, {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}]
    result = fn.train.fit(nn.serial(nn.Flatten(), nn.Dense(10)), fn.losses.softmax_cross_entropy,
                          O.lbfgs(), (x, y), epochs=140, batch_size=len(x),
                          key=jax.random.key(0), params=params, progress=False,
                          regularizer=fn.regularizers.l2(LAMBDA))
    w, b = (np.asarray(result.params[1][k], np.float64) for k in ("w", "b"))
    reached = _objective(w, b, x.astype(np.float64), y)[0]
    assert scipy_optimum - 1e-9 <= reached <= scipy_optimum + 1e-6, (reached, scipy_optimum)
    losses = np.add(result.history["loss"], result.history["penalty"])
    assert np.all(np.diff(losses) <= 1e-6)   # every step decreases the objective (Armijo)
    assert losses[0] - losses[-1] > 2.0      # from log 10 ≈ 2.30 at zero weights


def test_fit_refuses_lbfgs_with_mini_batches():
    x, y = np.zeros((30, 2), np.float32), np.arange(30, dtype=np.int32) % 3
    with pytest.raises(ValueError, match="full-batch training, batch_size=30 .* received "
                                         "batch_size=10"):
        fn.train.fit(nn.Dense(3), fn.losses.softmax_cross_entropy, O.lbfgs(), (x, y), epochs=1,
                     batch_size=10, key=jax.random.key(0), progress=False)
