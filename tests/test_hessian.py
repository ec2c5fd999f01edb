"""hessian_spectrum: Lanczos on forward-over-reverse Hessian-vector products, against
numpy.linalg.eigvalsh of known Hessians (float64), a closed-form saddle of a two-layer linear net,
and a trained minimum; classify_curvature tells them apart."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import funcnn as fn

spectrum = fn.diagnostics.hessian_spectrum


def _quadratic(eigenvalues, seed=0):
    """f(p) = ½θᵀAθ + bᵀθ over params {"w": (4, 5), "b": (n − 20,)}, A = Q diag(λ) Qᵀ."""
    rng = np.random.default_rng(seed)
    n = len(eigenvalues)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = (q * np.asarray(eigenvalues)) @ q.T
    a = (a + a.T) / 2
    b = rng.standard_normal(n)
    params = {"w": rng.standard_normal((4, 5)), "b": rng.standard_normal(n - 20)}

    def f(p):
        theta = jnp.concatenate([p["b"], p["w"].reshape(-1)])   # ravel_pytree's order: "b", "w"
        return 0.5 * theta @ (jnp.asarray(a) @ theta) + jnp.asarray(b) @ theta

    return f, params, a


def test_full_krylov_space_gives_the_exact_indefinite_spectrum(x64):
    rng = np.random.default_rng(1)
    f, params, a = _quadratic(rng.uniform(-3, 5, 30))
    params = jax.tree.map(jnp.asarray, params)
    smallest, largest = spectrum(f, params, k=3, steps=30)
    exact = np.linalg.eigvalsh(a)
    np.testing.assert_allclose(smallest, exact[:3], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(largest, exact[-3:], rtol=1e-10, atol=1e-10)
    assert smallest[0] < 0 < largest[-1] and np.all(np.diff(largest) >= 0)
    chex.assert_shape((smallest, largest), (3,))


def test_extremes_converge_long_before_n_steps(x64):
    """n = 300, 40 products: well-separated end eigenvalues (−4, −3 | bulk in [−1, 1] | 8, 10)."""
    rng = np.random.default_rng(2)
    eigenvalues = np.concatenate([[-4.0, -3.0, 8.0, 10.0], rng.uniform(-1, 1, 296)])
    f, params, _ = _quadratic(eigenvalues, seed=3)
    smallest, largest = spectrum(f, jax.tree.map(jnp.asarray, params), k=2, steps=40)
    np.testing.assert_allclose(smallest, [-4.0, -3.0], atol=1e-8)
    np.testing.assert_allclose(largest, [8.0, 10.0], atol=1e-8)


def test_float32_params_agree_to_float32_precision():
    f, params, a = _quadratic(np.random.default_rng(4).uniform(-2, 2, 24), seed=5)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    smallest, largest = spectrum(f, params, k=2, steps=24)
    assert smallest.dtype == jnp.float32
    exact = np.linalg.eigvalsh(a)
    np.testing.assert_allclose(smallest, exact[:2], atol=1e-4)
    np.testing.assert_allclose(largest, exact[-2:], atol=1e-4)


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
def test_non_quadratic_matches_eigvalsh_of_jax_hessian(x64):
    """A tanh net at a random (non-critical) point: the spectrum of the dense jax.hessian."""
    f, params = _two_layer(jnp.tanh)
    rng = np.random.default_rng(9)
    params = jax.tree.map(lambda p: p + 0.5 * rng.standard_normal(p.shape), params)
    exact = _dense_spectrum(f, params)
    smallest, largest = spectrum(f, params, k=2, steps=len(exact))
    np.testing.assert_allclose(smallest, exact[:2], atol=1e-10)
    np.testing.assert_allclose(largest, exact[-2:], atol=1e-10)


def _dense_spectrum(f, params):
    """numpy.linalg.eigvalsh of the dense Hessian that jax.hessian builds (the reference)."""
    theta, unravel = ravel_pytree(params)
    return np.linalg.eigvalsh(np.asarray(jax.jit(jax.hessian(lambda t: f(unravel(t))))(theta)))


def _two_layer(activation, hidden=3, features=4, examples=20):
    """f(W1, w2) = (1/2N) Σ (w2·σ(W1 x) − y)², y from a linear teacher, at W1 = 0, w2 = 0."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((examples, features)))
    y = x @ jnp.arange(1.0, features + 1.0, dtype=jnp.float64)

    def f(p):
        prediction = activation(x @ p["w1"].T) @ p["w2"]
        return 0.5 * jnp.mean((prediction - y) ** 2)

    f.x, f.y = x, y
    return f, {"w1": jnp.zeros((hidden, features), jnp.float64),
               "w2": jnp.zeros(hidden, jnp.float64)}


@pytest.mark.parametrize("activation", [lambda z: z, jnp.tanh], ids=["linear", "tanh"])
def test_two_layer_net_at_zero_is_a_saddle_of_known_curvature(x64, activation):
    """At W1 = 0, w2 = 0 the gradient is 0 and ∂²f/∂W1[i,a]∂w2[j] = −δ_ij c_a with
    c = (1/N) Σ y x (tanh: tanh'(0) = 1, tanh''(0) = 0): eigenvalues ±‖c‖, each h times, and
    zeros — the three found by the restarts after the Krylov space is exhausted."""
    f, params = _two_layer(activation)
    chex.assert_trees_all_close(jax.grad(f)(params), jax.tree.map(jnp.zeros_like, params))
    c = float(jnp.linalg.norm(f.y @ f.x / f.x.shape[0]))
    smallest, largest = spectrum(f, params, k=4)
    np.testing.assert_allclose(smallest, [-c, -c, -c, 0.0], atol=1e-9 * c)
    np.testing.assert_allclose(largest, [0.0, c, c, c], atol=1e-9 * c)
    assert fn.diagnostics.classify_curvature(smallest, largest) == "saddle"


def test_trained_minimum_is_positive_semidefinite(x64):
    """Gradient descent from a small random start reaches the global minimum (loss 0); there
    H = JᵀJ/N (Gauss–Newton, zero residual): λ_min ≈ 0 (over-parametrised), λ_max > 0."""
    f, zero = _two_layer(lambda z: z)
    rng = np.random.default_rng(1)
    start = jax.tree.map(lambda p: 0.1 * rng.standard_normal(p.shape), zero)
    grad = jax.grad(f)
    params = jax.jit(lambda p: jax.lax.fori_loop(0, 3000, lambda _, p: jax.tree.map(
        lambda a, g: a - 0.02 * g, p, grad(p)), p))(start)
    assert float(f(params)) < 1e-20
    smallest, largest = spectrum(f, params, k=2)
    exact = _dense_spectrum(f, params)
    np.testing.assert_allclose(smallest, exact[:2], atol=1e-9)
    np.testing.assert_allclose(largest, exact[-2:], rtol=1e-9)
    assert float(smallest[0]) >= -1e-8 and float(largest[-1]) > 1.0
    assert fn.diagnostics.classify_curvature(smallest, largest, tol=1e-8) == "minimum"


def test_jittable_and_pure_in_the_key(x64):
    f, params, a = _quadratic(np.random.default_rng(6).uniform(-1, 3, 25), seed=7)
    params = jax.tree.map(jnp.asarray, params)
    run = jax.jit(lambda p, key: spectrum(f, p, k=2, steps=25, key=key))
    jitted = run(params, jax.random.key(1))
    chex.assert_trees_all_close(jitted, (np.linalg.eigvalsh(a)[:2], np.linalg.eigvalsh(a)[-2:]),
                                rtol=1e-9)
    chex.assert_trees_all_close(jitted, run(params, jax.random.key(2)), rtol=1e-9)


@pytest.mark.parametrize("smallest,largest,tol,kind", [
    ([-0.5], [2.0], 1e-6, "saddle"), ([0.0], [2.0], 1e-6, "minimum"),
    ([-1e-7], [2.0], 1e-6, "minimum"), ([-3.0], [-1.0], 1e-6, "maximum"),
    ([-1e-9], [1e-9], 1e-6, "flat"), ([-0.5], [2.0], 1.0, "minimum")])
def test_classify_curvature(smallest, largest, tol, kind):
    assert fn.diagnostics.classify_curvature(jnp.asarray(smallest), jnp.asarray(largest),
                                             tol=tol) == kind


def test_bad_arguments_are_clear_errors():
    f = lambda p: jnp.sum(p ** 2)   # noqa: E731
    p = jnp.ones(3)
    with pytest.raises(ValueError, match=r"hessian_spectrum: expected a positive int k"):
        spectrum(f, p, k=0)
    with pytest.raises(ValueError, match=r"expected k ≤ 3, the number of parameters, received k=4"):
        spectrum(f, p, k=4)
    with pytest.raises(ValueError, match=r"expected an int number of steps ≥ k=2, received 1"):
        spectrum(f, p, k=2, steps=1)
    with pytest.raises(ValueError, match=r"floating-point scalar, received shape \(3,\)"):
        spectrum(lambda p: p ** 2, p)
    with pytest.raises(ValueError, match=r"floating-point entry, received 3 entries of dtype int"):
        spectrum(f, jnp.arange(3))
