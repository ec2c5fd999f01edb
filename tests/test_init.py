"""Initializers: fan-in/fan-out for dense and conv kernels, the variances they promise, sparsity."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn import init

DENSE, CONV = (400, 300), (5, 5, 16, 32)


def test_fans():
    assert init.fans(DENSE) == (400, 300)
    assert init.fans(CONV) == (5 * 5 * 16, 5 * 5 * 32)
    assert init.fans((7,)) == (7, 7)


@pytest.mark.parametrize("shape", [DENSE, CONV])
@pytest.mark.parametrize("initializer,expected_std", [
    (init.lecun_normal, lambda fi, fo: 1 / math.sqrt(fi)),
    (init.glorot_normal, lambda fi, fo: math.sqrt(2 / (fi + fo))),
    (init.glorot_uniform, lambda fi, fo: math.sqrt(6 / (fi + fo)) / math.sqrt(3)),
    (init.he_normal, lambda fi, fo: math.sqrt(2 / fi)),
    (init.he_uniform, lambda fi, fo: math.sqrt(2 / fi)),
    (init.normal(0.01), lambda fi, fo: 0.01),
    (init.uniform(0.5), lambda fi, fo: 0.5 / math.sqrt(3)),
])
def test_standard_deviation_follows_the_fans(shape, initializer, expected_std):
    w = initializer(jax.random.key(0), shape)
    chex.assert_shape(w, shape)
    assert w.dtype == jnp.float32
    expected = expected_std(*init.fans(shape))
    assert float(jnp.std(w)) == pytest.approx(expected, rel=0.03)
    assert abs(float(jnp.mean(w))) < 0.03 * expected


@pytest.mark.parametrize("initializer,bound", [
    (init.glorot_uniform, math.sqrt(6 / 700)), (init.he_uniform, math.sqrt(6 / 400)),
    (init.uniform(0.2), 0.2)])
def test_uniform_bounds(initializer, bound):
    w = initializer(jax.random.key(1), DENSE)
    assert float(jnp.max(jnp.abs(w))) <= bound
    assert float(jnp.max(jnp.abs(w))) > 0.99 * bound


def test_constants_and_dtype():
    chex.assert_trees_all_equal(init.zeros(None, (3,)), jnp.zeros(3))
    chex.assert_trees_all_equal(init.ones(None, (2, 2), jnp.float16), jnp.ones((2, 2), jnp.float16))
    chex.assert_trees_all_equal(init.constant(0.1)(None, (2,)), jnp.full(2, 0.1))


@pytest.mark.parametrize("shape", [(50, 30), (3, 3, 4, 8)])
def test_sparse_has_exactly_k_incoming_weights_per_unit(shape):
    w = np.asarray(init.sparse(connections=10, stddev=1.0)(jax.random.key(2), shape))
    per_unit = (w.reshape(-1, shape[-1]) != 0).sum(axis=0)
    np.testing.assert_array_equal(per_unit, np.full(shape[-1], 10))
    columns = [tuple(np.flatnonzero(c)) for c in w.reshape(-1, shape[-1]).T]
    assert len(set(columns)) > 1, "every unit got the same connections"


def test_sparse_rejects_too_many_connections():
    with pytest.raises(ValueError, match="connections ≤ fan_in = 5"):
        init.sparse(connections=6)(jax.random.key(0), (5, 3))


def test_initializers_are_deterministic_in_the_key():
    a = init.he_normal(jax.random.key(3), DENSE)
    chex.assert_trees_all_equal(a, init.he_normal(jax.random.key(3), DENSE))
    assert not np.allclose(a, init.he_normal(jax.random.key(4), DENSE))


def test_dense_uses_its_initializers():
    layer = fn.nn.Dense(3, w_init=init.constant(0.5), b_init=init.ones)
    params, _ = layer.init(jax.random.key(0), (2,))
    chex.assert_trees_all_equal(params, {"w": jnp.full((2, 3), 0.5), "b": jnp.ones(3)})


@pytest.mark.parametrize("initializer", [init.lecun_normal, init.glorot_uniform,
                                         init.glorot_normal, init.he_normal, init.he_uniform])
def test_fan_initializers_reject_bad_shapes(initializer):
    name = initializer.__name__
    with pytest.raises(ValueError, match=f"{name}: expected a shape as a tuple of non-negative "
                                         f"ints, received 5"):
        initializer(jax.random.key(0), 5)
    with pytest.raises(ValueError, match=fr"{name}: expected a shape with fan_in > 0, received "
                                         fr"\(0, 5\)"):
        initializer(jax.random.key(0), (0, 5))


def test_sparse_rejects_a_non_int_number_of_connections():
    with pytest.raises(ValueError, match="sparse: expected connections as an int, received 2.5"):
        init.sparse(2.5)


def test_array_stddev_keeps_the_requested_dtype():
    w = init.normal(jnp.float32(0.1))(jax.random.key(0), (3, 4), jnp.bfloat16)
    assert w.dtype == jnp.bfloat16
