"""The damped Newton step x ← x − α(H + λI)⁻¹∇f: one step to a quadratic's minimiser, the
formula with damping on an indefinite Hessian, and convergence on a small logistic regression
to the optimum of a float64 SciPy run (test-only reference)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn

O = fn.optim
RNG = np.random.default_rng(0)
Q = RNG.normal(size=(5, 5))


def _flat(p):
    return jnp.concatenate([p["a"], p["b"].ravel()])


def _unflat(x):
    return {"a": jnp.asarray(x[:1]), "b": jnp.asarray(x[1:]).reshape(2, 2)}


def _quadratic(a, x_star):
    """f = ½(x − x*)ᵀA(x − x*) over the leaves a (1,) and b (2, 2), flattened in that order."""
    def f(p):
        r = _flat(p) - jnp.asarray(x_star)
        return 0.5 * r @ jnp.asarray(a) @ r
    return f


def _step(opt, f, params):
    updates, _ = jax.jit(lambda p: opt.update(jax.grad(f)(p), opt.init(p), p, value_fn=f))(params)
    return O.apply_updates(params, updates), updates


def test_one_undamped_newton_step_lands_on_the_minimiser_of_a_quadratic(x64):
    a, x_star = Q @ Q.T + 0.1 * np.eye(5), RNG.normal(size=5)
    params, _ = _step(O.newton(damping=0.0), _quadratic(a, x_star), _unflat(np.zeros(5)))
    assert params["b"].dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(_flat(params)), x_star, rtol=1e-10, atol=1e-10)


def test_the_damped_step_is_minus_alpha_times_the_regularised_system_solution(x64):
    """On an indefinite Hessian (eigenvalues −1 … 3) with λ = 1.5 > 1: H + λI is positive
    definite and the step is −α(H + λI)⁻¹g, a descent direction."""
    basis = np.linalg.qr(Q)[0]
    a = basis @ np.diag([-1.0, 0.5, 1.0, 2.0, 3.0]) @ basis.T
    x_star, x0 = RNG.normal(size=5), RNG.normal(size=5)
    f = _quadratic(a, x_star)
    _, updates = _step(O.newton(damping=1.5, learning_rate=0.5), f, _unflat(x0))
    g = a @ (x0 - x_star)
    expected = -0.5 * np.linalg.solve(a + 1.5 * np.eye(5), g)
    np.testing.assert_allclose(np.asarray(_flat(updates)), expected, rtol=1e-10, atol=1e-12)
    assert expected @ g < 0


# ---------------------------------------------------------------------------------------------
# A small logistic regression: Newton converges (quadratically) to SciPy's optimum.

X = RNG.normal(size=(200, 3))
Y = (X @ np.array([1.0, -2.0, 0.5]) + 0.3 + RNG.normal(size=200) > 0).astype(np.float64)
LAMBDA = 1e-2


def _logistic_numpy(v):
    """Mean logistic loss + (λ/2)‖w‖² of v = (w, b), and its gradient, in numpy float64."""
    z = X @ v[:3] + v[3]
    loss = np.mean(np.logaddexp(0, z) - Y * z) + 0.5 * LAMBDA * v[:3] @ v[:3]
    r = 1 / (1 + np.exp(-z)) - Y
    return loss, np.concatenate([X.T @ r / len(Y) + LAMBDA * v[:3], [r.mean()]])


def _logistic(p):
    z = jnp.asarray(X) @ p["w"] + p["b"]
    return jnp.mean(jnp.logaddexp(0, z) - jnp.asarray(Y) * z) + 0.5 * LAMBDA * p["w"] @ p["w"]


def test_newton_converges_on_a_logistic_regression_to_the_scipy_optimum(x64):
    scipy_optimize = pytest.importorskip("scipy.optimize")
    found = scipy_optimize.minimize(_logistic_numpy, np.zeros(4), jac=True, method="L-BFGS-B",
                                    options=dict(gtol=1e-12, ftol=1e-16, maxiter=1000))
    opt = O.newton(damping=0.0)

    @jax.jit
    def run(params):
        def body(params, _):
            value, grads = jax.value_and_grad(_logistic)(params)
            updates, _ = opt.update(grads, opt.init(params), params, value=value,
                                    value_fn=_logistic)
            norm = jnp.sqrt(grads["w"] @ grads["w"] + grads["b"] ** 2)
            return O.apply_updates(params, updates), norm
        return jax.lax.scan(body, params, None, length=8)

    params, norms = run({"w": jnp.zeros(3), "b": jnp.zeros(())})
    v = np.concatenate([np.asarray(params["w"]), [float(params["b"])]])
    loss, grad = _logistic_numpy(v)
    assert abs(loss - found.fun) < 1e-12 and np.abs(grad).max() < 1e-12
    np.testing.assert_allclose(v, found.x, atol=1e-6)
    norms = np.asarray(norms)   # ‖∇f‖ before each step: 0.38, 0.098, …, 7.8e-5, 4.1e-8, 1.1e-14
    assert np.all(norms[4:7] < 10 * norms[3:6] ** 2)   # quadratic convergence near the optimum


def test_newton_refuses_bad_settings_and_an_update_without_the_objective():
    with pytest.raises(ValueError, match="damping >= 0, received -1"):
        O.newton(damping=-1.0)
    with pytest.raises(ValueError, match="learning_rate > 0, received 0"):
        O.newton(learning_rate=0.0)
    opt, params = O.newton(), {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="newton.update reads the objective"):
        opt.update(params, opt.init(params), params)
