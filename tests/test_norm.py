"""BatchNorm: three-way gradients in train mode (through the batch statistics) and eval mode,
closed forms, running statistics converging to the data's, state never mutated, errors."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import funcnn as fn
from funcnn import nn
from layer_checks import assert_layer_gradients_compiled, assert_layer_transforms


def with_state(layer, mean, var):
    """`layer` whose init returns non-trivial running statistics (to exercise eval mode)."""
    def init(key, in_shape):
        params, _ = layer.init(key, in_shape)
        return params, {"mean": jnp.asarray(mean), "var": jnp.asarray(var)}

    return dataclasses.replace(layer, init=init)


TABLE = [
    ("train_features", nn.BatchNorm(), (4,), True),
    ("train_image", nn.BatchNorm(momentum=0.5, eps=1e-3), (3, 2, 2), True),
    ("eval_features", with_state(nn.BatchNorm(), [0.5, -1.0, 2.0], [0.3, 2.0, 1.5]), (3,), False),
    ("eval_image", with_state(nn.BatchNorm(), [0.1, 0.2], [0.5, 4.0]), (2, 3, 2), False),
]


class BatchNormGradientTest(chex.TestCase):

    @parameterized.named_parameters(*TABLE)
    def test_three_way(self, layer, in_shape, train):
        with jax.enable_x64(True):   # (seed 0 leaves one small ∂L/∂x entry at FD noise, 1.7e-7)
            assert_layer_gradients_compiled(layer, in_shape, train=train, seed=1)


@pytest.mark.parametrize("name,layer,in_shape,train", TABLE[1:3])
def test_jit_vmap_value_and_grad_and_custom_vjp(name, layer, in_shape, train):
    assert_layer_transforms(layer, in_shape, train=train)


def test_init_and_closed_form_in_training(x64):
    layer = nn.BatchNorm(momentum=0.8)
    params, state = layer.init(jax.random.key(0), (4, 4, 3))
    chex.assert_trees_all_equal(params, {"scale": jnp.ones(3), "offset": jnp.zeros(3)})
    chex.assert_trees_all_equal(state, {"mean": jnp.zeros(3), "var": jnp.ones(3)})
    rng = np.random.default_rng(0)
    x = rng.normal([1.0, -2.0, 5.0], [0.5, 2.0, 3.0], (8, 4, 4, 3))
    params = {"scale": jnp.array([1.0, 2.0, -1.0]), "offset": jnp.array([0.0, 1.0, 3.0])}
    state = {"mean": jnp.array([0.5, 0.5, 0.5]), "var": jnp.array([2.0, 2.0, 2.0])}
    y, new_state = layer.apply(params, state, jnp.asarray(x), train=True)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))   # numpy: biased variance
    expected = (x - mean) / np.sqrt(var + 1e-5) * np.array([1.0, 2.0, -1.0]) + [0.0, 1.0, 3.0]
    chex.assert_trees_all_close(y, expected, rtol=1e-10)
    chex.assert_trees_all_close(new_state, {"mean": 0.8 * 0.5 + 0.2 * mean,
                                            "var": 0.8 * 2.0 + 0.2 * var}, rtol=1e-12)
    chex.assert_trees_all_close(state["mean"], jnp.array([0.5, 0.5, 0.5]))   # not mutated


def test_eval_uses_running_statistics_and_keeps_the_state(x64):
    layer = nn.BatchNorm(eps=1e-3)
    params = {"scale": jnp.array([2.0, 0.5]), "offset": jnp.array([1.0, -1.0])}
    state = {"mean": jnp.array([1.0, -3.0]), "var": jnp.array([4.0, 0.25])}
    x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 2)))
    y, new_state = layer.apply(params, state, x)
    row = {name: np.asarray(v).reshape(1, 2) for name, v in {**params, **state}.items()}
    expected = (np.asarray(x) - row["mean"]) / np.sqrt(row["var"] + 1e-3) * row["scale"] \
        + row["offset"]
    chex.assert_trees_all_close(y, expected, rtol=1e-12)
    assert new_state is state or all(np.array_equal(new_state[k], state[k]) for k in state)


def test_running_statistics_converge_to_the_data_statistics():
    layer = nn.BatchNorm(momentum=0.9)
    mu, sigma = np.array([3.0, -1.0, 0.5]), np.array([2.0, 0.5, 1.0])
    batches = np.random.default_rng(0).normal(mu, sigma, (150, 256, 3)).astype(np.float32)
    params, state = layer.init(jax.random.key(0), (3,))

    def step(state, x):
        _, state = layer.apply(params, state, x, train=True)
        return state, None

    state, _ = jax.lax.scan(step, state, batches)
    # 0.9^150 ≈ 1e-7 of the initial (0, 1) is left; the EMA averages ~19 batches of 256
    chex.assert_trees_all_close(state["mean"], mu, atol=0.05 * sigma.max())
    chex.assert_trees_all_close(state["var"], sigma ** 2, rtol=0.05)
    y, _ = layer.apply(params, state, jnp.asarray(batches[0]))   # eval now standardises the data
    chex.assert_trees_all_close(jnp.mean(y, axis=0), jnp.zeros(3), atol=0.15)
    chex.assert_trees_all_close(jnp.std(y, axis=0), jnp.ones(3), atol=0.1)


def test_gradient_sums_to_zero_per_channel_in_training(x64):
    """Through the batch mean, a shift of every x of a channel changes nothing: Σ ∂L/∂x = 0."""
    layer = nn.BatchNorm()
    params = {"scale": jnp.array([1.5, -0.5]), "offset": jnp.zeros(2)}
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 3, 2)))
    _, _, res = layer.forward(params, layer.init(jax.random.key(0), (3, 2))[1], x, train=True)
    dy = jnp.asarray(np.random.default_rng(1).standard_normal((6, 3, 2)))
    _, dx = layer.backward(params, res, dy)
    chex.assert_trees_all_close(jnp.sum(dx, axis=(0, 1)), jnp.zeros(2), atol=1e-12)


def test_wrong_channel_count_names_the_layer():
    layer = nn.BatchNorm()
    params, state = layer.init(jax.random.key(0), (4, 4, 3))
    with pytest.raises(ValueError, match="BatchNorm: expected 3 input channels"):
        layer.apply(params, state, jnp.zeros((2, 4, 4, 2)))


@pytest.mark.parametrize("shape,count", [((1, 3), 1), ((0, 3), 0), ((0, 4, 4, 3), 0)])
def test_training_needs_more_than_one_value_per_channel(shape, count):
    """With one value per channel the batch variance is 0: y = β, ∂L/∂x = 0, and the running
    variance collapses; with none the statistics are NaN. Eval is fine (running statistics)."""
    layer = nn.BatchNorm()
    params, state = layer.init(jax.random.key(0), shape[1:])
    x = jnp.ones(shape)
    message = (f"BatchNorm: expected more than 1 value per channel in training, received "
               f"an input of shape .* \\({count} per channel\\)")
    for run in (layer.apply, jax.jit(layer.apply, static_argnames="train")):
        with pytest.raises(ValueError, match=message):
            run(params, state, x, train=True)
    with pytest.raises(ValueError, match=message):
        layer.forward(params, state, x, train=True)
    y, _ = layer.apply(params, state, x)
    chex.assert_shape(y, shape)


@pytest.mark.parametrize("params,state,words", [
    ({"scale": jnp.ones(3), "offset": jnp.zeros(4)}, {"mean": jnp.zeros(3), "var": jnp.ones(3)},
     ["BatchNorm", "params['offset']", "(3,)", "(4,)"]),
    ({"scale": jnp.ones(3), "offset": jnp.zeros(3)}, {"mean": jnp.zeros(3), "var": jnp.ones(2)},
     ["BatchNorm", "state['var']", "(3,)", "(2,)"]),
    ({"scale": jnp.ones(3), "offset": jnp.zeros(3)}, {},
     ["BatchNorm", "state", "'mean'"]),
    ({"scale": jnp.ones((1, 3)), "offset": jnp.zeros(3)},
     {"mean": jnp.zeros(3), "var": jnp.ones(3)},
     ["BatchNorm", "params['scale']", "(channels,)", "(1, 3)"]),
])
def test_parameters_or_state_of_another_layer_are_rejected(params, state, words):
    layer = nn.BatchNorm()
    for train in (False, True):
        with pytest.raises(ValueError) as error:
            layer.apply(params, state, jnp.zeros((2, 3)), train=train)
        for word in words:
            assert word in str(error.value), str(error.value)


def test_a_cnn_with_batch_norm_trains_its_state_through_value_and_grad():
    model = nn.serial(nn.Conv2D(2, 3), nn.BatchNorm(), nn.Relu(), nn.Flatten(), nn.Dense(2))
    params, state = model.init(jax.random.key(0), (5, 5, 1))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 5, 5, 1)), jnp.float32)
    vg = fn.backprop.value_and_grad(model, fn.losses.softmax_cross_entropy)
    (_, new_state), _ = jax.jit(vg)(params, state, x, jnp.array([0, 1, 1, 0]))
    assert not np.allclose(new_state[1]["mean"], state[1]["mean"])
    chex.assert_trees_all_equal(new_state[0], state[0])
