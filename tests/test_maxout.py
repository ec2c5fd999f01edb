"""Maxout: three-way gradients, the closed form, ties to the first piece, branches, errors."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from funcnn import nn
from layer_checks import assert_layer_gradients_compiled, assert_layer_transforms

TABLE = [
    ("two_pieces", nn.Maxout(3), (4,)),
    ("three_pieces_leading_axes", nn.Maxout(2, pieces=3), (2, 5)),
    ("one_piece_is_dense", nn.Maxout(2, pieces=1), (3,)),
]


class MaxoutGradientTest(chex.TestCase):

    @parameterized.named_parameters(*TABLE)
    def test_three_way(self, layer, in_shape):
        with jax.enable_x64(True):
            assert_layer_gradients_compiled(layer, in_shape)


def test_jit_vmap_value_and_grad_and_custom_vjp():
    assert_layer_transforms(nn.Maxout(3, pieces=2), (4,))


def test_closed_form_and_parameter_layout(x64):
    layer = nn.Maxout(3, pieces=2)
    params, _ = layer.init(jax.random.key(0), (4,))
    chex.assert_shape([params["w"], params["b"]], [(4, 6), (6,)])
    params = {"w": params["w"], "b": jnp.asarray(np.random.default_rng(0).standard_normal(6))}
    x = np.random.default_rng(1).standard_normal((5, 4))
    w, b = np.asarray(params["w"]).reshape(4, 2, 3), np.asarray(params["b"]).reshape(2, 3)
    expected = np.maximum(x @ w[:, 0] + b[0], x @ w[:, 1] + b[1])   # piece k: columns k·out + j
    y, _ = layer.apply(params, {}, x)
    chex.assert_trees_all_close(y, expected, rtol=1e-12)
    winners = (x @ w[:, 1] + b[1] > x @ w[:, 0] + b[0]).astype(np.int32)
    chex.assert_trees_all_equal(layer.branches(params, {}, x), jnp.asarray(winners))


def test_ties_route_the_gradient_to_the_first_piece():
    layer = nn.Maxout(2, pieces=3)
    w = jnp.tile(jnp.arange(6.0).reshape(3, 2), (1, 3))      # three identical pieces
    params = {"w": w, "b": jnp.zeros(6)}
    x = jnp.ones((1, 3))
    y, _, res = layer.forward(params, {}, x)
    grads, dx = layer.backward(params, res, jnp.ones_like(y))
    chex.assert_trees_all_equal(grads["b"], jnp.array([1.0, 1.0, 0.0, 0.0, 0.0, 0.0]))
    chex.assert_trees_all_equal(grads["w"][:, 2:], jnp.zeros((3, 4)))
    chex.assert_trees_all_close(dx, jnp.array([[1.0, 5.0, 9.0]]))
    auto = jax.grad(lambda p, x: jnp.sum(layer.apply(p, {}, x)[0]), argnums=(0, 1))(params, x)
    chex.assert_trees_all_equal(auto, (grads, dx))   # jax.grad follows the first piece too


def test_wrong_input_width_names_the_layer():
    layer = nn.Maxout(2)
    params, state = layer.init(jax.random.key(0), (4,))
    with pytest.raises(ValueError, match="Maxout: expected 4 input features"):
        layer.apply(params, state, jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match="pieces"):
        nn.Maxout(2, pieces=0)
    params, _ = nn.Maxout(np.int64(2), pieces=np.int64(3)).init(jax.random.key(0), (4,))
    chex.assert_shape(params["w"], (4, 6))


@pytest.mark.parametrize("params,words", [
    ({"w": jnp.zeros((4, 4)), "b": jnp.zeros(4)}, ["Maxout", "params['w']", "(in, 6)", "(4, 4)"]),
    ({"w": jnp.zeros((4, 6)), "b": jnp.zeros(3)}, ["Maxout", "params['b']", "(6,)", "(3,)"]),
    ({"w": jnp.zeros(6), "b": jnp.zeros(6)}, ["Maxout", "(in, 6)", "(6,)"]),
])
def test_parameters_of_another_layer_are_rejected(params, words):
    layer = nn.Maxout(3, pieces=2)
    for run in (layer.apply, jax.jit(layer.apply)):
        with pytest.raises(ValueError) as error:
            run(params, {}, jnp.zeros((2, 4)))
        for word in words:
            assert word in str(error.value), str(error.value)
