"""Dropout and DropConnect: three-way gradients under a fixed key, expectation preserved, eval
identity, determinism per key, and the missing-key error."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from funcnn import nn
from layer_checks import assert_layer_gradients_compiled, assert_layer_transforms

TABLE = [
    ("dropout_train", nn.Dropout(0.3), (5,), True),
    ("dropout_train_image", nn.Dropout(0.5), (2, 3, 2), True),
    ("dropout_eval", nn.Dropout(0.5), (4,), False),
    ("dropconnect_train", nn.DropConnect(4, 0.5), (6,), True),
    ("dropconnect_train_leading_axes", nn.DropConnect(3, 0.2), (2, 5), True),
    ("dropconnect_eval", nn.DropConnect(4, 0.5), (6,), False),
]


class StochasticGradientTest(chex.TestCase):

    @parameterized.named_parameters(*TABLE)
    def test_three_way_under_a_fixed_key(self, layer, in_shape, train):
        with jax.enable_x64(True):
            hand = assert_layer_gradients_compiled(layer, in_shape, train=train)
        if train:   # the mask really dropped something: some input or weight got zero gradient
            dropped = hand[1] if layer.name == "Dropout" else hand[0]["w"]
            assert np.any(dropped == 0.0) and np.any(dropped != 0.0)


@pytest.mark.parametrize("name,layer,in_shape,train", TABLE[::2])
def test_jit_vmap_value_and_grad_and_custom_vjp(name, layer, in_shape, train):
    assert_layer_transforms(layer, in_shape, train=train)


@pytest.mark.parametrize("layer", [nn.Dropout(0.5), nn.DropConnect(3, 0.5),
                                   nn.serial(nn.Dense(3), nn.Dropout(0.1))])
def test_train_without_a_key_is_a_clear_value_error(layer):
    params, state = layer.init(jax.random.key(0), (4,))
    with pytest.raises(ValueError, match=r"(Dropout|DropConnect): train=True needs a PRNG key"):
        layer.apply(params, state, jnp.ones((2, 4)), train=True)
    layer.apply(params, state, jnp.ones((2, 4)))   # eval needs no key


def test_dropout_preserves_the_expected_activation():
    rate = 0.3
    x = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, (4000, 100)), jnp.float32)
    y, _ = nn.Dropout(rate).apply({}, {}, x, key=jax.random.key(0), train=True)
    dropped = float(jnp.mean(y == 0))
    assert abs(dropped - rate) < 0.005                         # 400k Bernoulli draws: σ ≈ 7e-4
    assert abs(float(jnp.mean(y)) / float(jnp.mean(x)) - 1) < 0.005
    kept = y != 0
    chex.assert_trees_all_close(jnp.where(kept, y, 0.0), jnp.where(kept, x / (1 - rate), 0.0),
                                rtol=1e-6)


def test_dropconnect_preserves_the_expected_output():
    layer = nn.DropConnect(3, 0.5)
    params, _ = layer.init(jax.random.key(0), (8,))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 8)), jnp.float32)
    keys = jax.random.split(jax.random.key(1), 4000)
    ys = jax.vmap(lambda k: layer.apply(params, {}, x, key=k, train=True)[0])(keys)
    dense = x @ params["w"] + params["b"].reshape(1, 3)
    # E[y] = x·W + b; per-draw std ≤ |x|·|W|, the mean of 4000 draws is within ~4σ/√4000
    chex.assert_trees_all_close(jnp.mean(ys, axis=0), dense, atol=0.15)
    assert float(jnp.std(ys, axis=0).min()) > 0.05


def test_eval_is_identity_and_plain_dense():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 5)), jnp.float32)
    y, _ = nn.Dropout(0.9).apply({}, {}, x)
    chex.assert_trees_all_equal(y, x)
    layer = nn.DropConnect(2, 0.9)
    params, _ = layer.init(jax.random.key(0), (5,))
    y, _ = layer.apply(params, {}, x, key=jax.random.key(1))   # a key at eval changes nothing
    chex.assert_trees_all_close(y, x @ params["w"] + params["b"].reshape(1, 2), rtol=1e-6)


def test_same_key_same_mask_other_key_other_mask_and_legacy_keys():
    layer, x = nn.Dropout(0.5), jnp.ones((4, 64))
    a, _ = layer.apply({}, {}, x, key=jax.random.key(3), train=True)
    b, _ = layer.apply({}, {}, x, key=jax.random.key(3), train=True)
    c, _ = layer.apply({}, {}, x, key=jax.random.key(4), train=True)
    legacy, _ = layer.apply({}, {}, x, key=jax.random.PRNGKey(3), train=True)
    chex.assert_trees_all_equal(a, b)
    assert not np.array_equal(a, c)
    chex.assert_shape(legacy, x.shape)
    assert set(np.unique(legacy)) <= {0.0, 2.0}


def test_backward_reuses_the_forward_mask():
    layer = nn.Dropout(0.5)
    x = jnp.ones((3, 10))
    y, _, mask = layer.forward({}, {}, x, key=jax.random.key(0), train=True)
    _, dx = layer.backward({}, mask, jnp.ones_like(y))
    chex.assert_trees_all_equal(dx, y)   # x = 1 and δ = 1: both are the scaled mask


@pytest.mark.parametrize("factory", [nn.Dropout, lambda rate: nn.DropConnect(2, rate)])
@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_rate_outside_unit_interval_is_rejected(factory, rate):
    with pytest.raises(ValueError, match="drop rate"):
        factory(rate)


def test_numpy_numbers_are_accepted_as_rates_and_sizes():
    x = jnp.ones((2, 4))
    y, _ = nn.Dropout(np.float32(0.5)).apply({}, {}, x, key=jax.random.key(0), train=True)
    assert set(np.unique(y)) <= {0.0, 2.0}
    layer = nn.DropConnect(np.int64(3), np.float64(0.5))
    params, _ = layer.init(jax.random.key(0), (4,))
    chex.assert_shape(params["w"], (4, 3))
    with pytest.raises(ValueError, match="drop rate"):
        nn.Dropout(False)
