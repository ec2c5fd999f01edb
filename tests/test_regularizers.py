"""Penalties against closed forms; hand-written .grad == jax.grad == float64 finite differences."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn

R = fn.regularizers


def _params():
    rng = np.random.default_rng(0)
    return ({"w": jnp.asarray(rng.normal(size=(3, 4))), "b": jnp.asarray(rng.normal(size=4))},
            {},
            {"scale": jnp.asarray(rng.normal(size=4)), "offset": jnp.asarray(rng.normal(size=4))},
            {"w": jnp.asarray(rng.normal(size=(2, 2, 4, 3))), "b": jnp.asarray(rng.normal(size=3))})


def _kernels(params):
    return [np.asarray(params[0]["w"]), np.asarray(params[3]["w"])]


# name: (regularizer, its value on the kernels, in NumPy)
CASES = {
    "l2": (R.l2(0.3), lambda ws: 0.15 * sum(np.sum(w ** 2) for w in ws)),
    "l2_over_n": (R.l2(0.3, n=50), lambda ws: 0.3 / 100 * sum(np.sum(w ** 2) for w in ws)),
    "l1": (R.l1(0.3), lambda ws: 0.3 * sum(np.sum(np.abs(w)) for w in ws)),
    "l1_over_n": (R.l1(0.3, n=50), lambda ws: 0.3 / 50 * sum(np.sum(np.abs(w)) for w in ws)),
    "elastic_net": (R.elastic_net(0.2, 0.4, n=10),
                    lambda ws: sum(0.02 * np.sum(np.abs(w)) + 0.02 * np.sum(w ** 2) for w in ws)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_value_is_the_closed_form_on_the_kernels_only(name, x64):
    reg, closed_form = CASES[name]
    params = _params()
    np.testing.assert_allclose(float(reg(params)), closed_form(_kernels(params)), rtol=1e-12)


def _numerical_grad(f, params, eps=1e-6):
    leaves, treedef = jax.tree.flatten(params)
    grads = []
    for i, leaf in enumerate(leaves):
        g = np.zeros(leaf.shape)
        for idx in np.ndindex(leaf.shape):
            def at(delta):
                shifted = list(leaves)
                shifted[i] = leaf.at[idx].add(delta)
                return float(f(treedef.unflatten(shifted)))
            g[idx] = (at(eps) - at(-eps)) / (2 * eps)
        grads.append(g)
    return treedef.unflatten(grads)


@pytest.mark.parametrize("name", list(CASES))
def test_grad_matches_autodiff_and_finite_differences(name, x64):
    reg, _ = CASES[name]
    params = _params()
    manual = reg.grad(params)
    chex.assert_trees_all_equal_shapes_and_dtypes(manual, params)
    chex.assert_trees_all_close(manual, jax.grad(reg)(params), rtol=1e-12)
    chex.assert_trees_all_close(manual, _numerical_grad(jax.jit(reg), params),
                                rtol=1e-7, atol=1e-9)
    for leaf in (manual[0]["b"], manual[2]["scale"], manual[2]["offset"], manual[3]["b"]):
        assert not np.any(np.asarray(leaf))                     # zeros where masked out


def test_lambda_over_n_is_lambda_divided_by_n(x64):
    params = _params()
    np.testing.assert_allclose(float(R.l2(0.3, n=60)(params)), float(R.l2(0.005)(params)),
                               rtol=1e-12)


def test_custom_masks():
    params = _params()
    everything = R.l1(1.0, mask=True)
    expected = sum(np.sum(np.abs(np.asarray(x))) for x in jax.tree.leaves(params))
    np.testing.assert_allclose(float(everything(params)), expected, rtol=1e-5)
    chex.assert_trees_all_close(everything.grad(params), jax.tree.map(jnp.sign, params))
    dense_only = R.l2(2.0, mask=(True, False, False, False))
    grad = dense_only.grad(params)
    chex.assert_trees_all_close(grad[0], jax.tree.map(lambda x: 2.0 * x, params[0]))
    assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(grad[1:]))


def test_l1_subgradient_is_zero_at_zero():
    assert float(R.l1(1.0).grad({"w": jnp.zeros(3)})["w"].sum()) == 0.0


def test_no_masked_leaves_gives_zero():
    assert float(R.l2(1.0)({"b": jnp.ones(3)})) == 0.0


@pytest.mark.parametrize("reg", [R.l1(0.3), R.elastic_net(0.2, 0.4)])
def test_grad_equals_autodiff_at_zero_weights(reg, x64):
    # |w| has a kink at 0: the hand-written rule takes sign(0) = 0, and autodiff must agree.
    params = {"w": jnp.array([[0.0, 1.5], [-2.0, 0.0]]), "b": jnp.zeros(2)}
    chex.assert_trees_all_close(reg.grad(params), jax.grad(reg)(params), rtol=1e-12, atol=0)
