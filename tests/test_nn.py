"""Every dense-family layer and combinator: three-way gradients, shapes, and input errors."""
import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import funcnn as fn
from funcnn import nn
from layer_checks import assert_layer_gradients, branch_free_input

ACTIVATIONS = [nn.Sigmoid(), nn.Tanh(), nn.HardTanh(), nn.Softsign(), nn.Relu(), nn.LeakyRelu(),
               nn.LeakyRelu(0.2), nn.PRelu(), nn.Softmax(), nn.LogSoftmax(), nn.Identity()]
KINKS = {"HardTanh": (-1.0, 1.0)}

TABLE = [(f"{layer.name}_{'x'.join(map(str, shape))}_{i}", layer, shape)
         for i, layer in enumerate(ACTIVATIONS) for shape in [(5,), (2, 3)]] + [
    ("Dense", nn.Dense(5), (4,)),
    ("Dense_leading_axes", nn.Dense(3), (2, 4)),
    ("Dense_glorot", nn.Dense(2, w_init=fn.init.glorot_uniform, b_init=fn.init.normal(1.0)), (6,)),
    ("Flatten", nn.Flatten(), (2, 3, 2)),
    ("serial", nn.serial(nn.Flatten(), nn.Dense(6), nn.Sigmoid(), nn.Dense(4), nn.Tanh(),
                         nn.Dense(3), nn.Softmax()), (2, 4)),
    ("residual", nn.residual(nn.Dense(4), nn.Tanh(), nn.Dense(4)), (4,)),
    ("parallel", nn.parallel(nn.Dense(3), nn.Tanh(), nn.serial(nn.Dense(2), nn.Relu())), (4,)),
    ("nested", nn.serial(nn.residual(nn.Dense(4), nn.Relu()), nn.parallel(nn.Identity(),
                                                                            nn.Dense(2))), (4,)),
]


class LayerGradientTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*TABLE)
    def test_three_way(self, layer, in_shape):
        with jax.enable_x64(True):
            x = branch_free_input((3,) + in_shape, kinks=KINKS.get(layer.name, (0.0,)))
            assert_layer_gradients(layer, in_shape, self.variant, x=x)


def test_prelu_learns_the_negative_slope(x64):
    layer = nn.PRelu()
    params, _ = layer.init(jax.random.key(0), (3,))
    x = jnp.array([[-2.0, 1.0, -1.0], [-1.0, -3.0, 2.0]])
    y, _ = layer.apply(params, {}, x)
    chex.assert_trees_all_close(y, jnp.where(x > 0, x, 0.25 * x))
    grads, _ = layer.backward(params, layer.forward(params, {}, x)[2], jnp.ones_like(x))
    chex.assert_trees_all_close(grads["slope"], jnp.array([-3.0, -3.0, -1.0]))


@pytest.mark.parametrize("layer,in_shape,bad,words", [
    (nn.Dense(4), (784,), (32, 783), ["Dense", "784", "783"]),
    (nn.serial(nn.Dense(4), nn.Relu()), (10,), (2, 9), ["Dense", "10", "9"]),
    (nn.Dense(4), (5,), (5,), ["Dense", "batch"]),
    (nn.PRelu(), (3,), (2, 4), ["PRelu", "3", "4"]),
])
def test_wrong_input_shape_names_layer_expected_and_received(layer, in_shape, bad, words):
    params, state = layer.init(jax.random.key(0), in_shape)
    with pytest.raises(ValueError) as error:
        layer.apply(params, state, jnp.zeros(bad))
    for word in words:
        assert word in str(error.value)


def test_wrong_shape_error_raised_under_jit_too():
    layer = nn.Dense(4)
    params, state = layer.init(jax.random.key(0), (6,))
    with pytest.raises(ValueError, match="Dense: expected 6 input features"):
        jax.jit(lambda x: layer.apply(params, state, x))(jnp.zeros((2, 5)))


@pytest.mark.parametrize("params,words", [
    ({"w": jnp.zeros((4, 5)), "b": jnp.zeros(3)}, ["Dense", "params['w']", "(in, 3)", "(4, 5)"]),
    ({"w": jnp.zeros((4, 3)), "b": jnp.zeros(5)}, ["Dense", "params['b']", "(3,)", "(5,)"]),
    ({"w": jnp.zeros(4), "b": jnp.zeros(3)}, ["Dense", "(in, 3)", "(4,)"]),
    ({"w": jnp.zeros((4, 3))}, ["Dense", "'b'", "'w'"]),
])
def test_dense_rejects_parameters_of_another_layer(params, words):
    layer = nn.Dense(3)
    for run in (layer.apply, jax.jit(layer.apply)):
        with pytest.raises(ValueError) as error:
            run(params, {}, jnp.zeros((2, 4)))
        for word in words:
            assert word in str(error.value), str(error.value)


@pytest.mark.parametrize("combinator", [nn.serial, nn.parallel])
def test_combinators_reject_params_or_state_of_another_model(combinator):
    model = combinator(nn.Dense(3), nn.Relu())
    params, state = model.init(jax.random.key(0), (4,))
    x = jnp.zeros((2, 4))
    name = combinator.__name__
    for bad_params, bad_state, what in [(params[:1], state, "params"), (params[0], state, "params"),
                                        (params, state + ({},), "state")]:
        for run in (model.apply, model.forward):
            with pytest.raises(ValueError, match=f"{name}: expected {what} as a tuple of 2 "
                                                 f"entries, one per layer, received"):
                run(bad_params, bad_state, x)
    y, _, res = model.forward(params, state, x)
    with pytest.raises(ValueError, match=f"{name}: expected params as a tuple of 2 entries"):
        model.backward(params + ({},), res, y)


@pytest.mark.parametrize("combinator", [nn.serial, nn.parallel, nn.residual])
def test_combinators_reject_arguments_that_are_not_layers(combinator):
    name = combinator.__name__
    with pytest.raises(TypeError, match=rf"{name}, position 1: expected a Layer \(an object with "
                                        rf"init, apply, forward and backward\), received "
                                        rf"<function Relu .*call the factory: Relu\(\)"):
        combinator(nn.Dense(3), nn.Relu)
    with pytest.raises(TypeError, match=f"{name}, position 0: expected a Layer .*, received 3, "
                                        f"which lacks init, apply, forward, backward"):
        combinator(3)


def test_relu_keeps_nan_as_jax_nn_relu_does(x64):
    z = jnp.array([jnp.nan, -1.0, 0.0, 2.0])
    chex.assert_trees_all_equal(nn.relu(z), jax.nn.relu(z))
    y, _ = nn.Relu().apply({}, {}, z.reshape(1, 4))
    assert bool(jnp.isnan(y[0, 0]))
    chex.assert_trees_all_equal(nn.relu_prime(z), jax.vmap(jax.grad(nn.relu))(z))


def test_numpy_integers_are_accepted_as_sizes_and_bools_are_not():
    layer = nn.Dense(np.int64(3))
    params, _ = layer.init(jax.random.key(0), (np.int64(4),))
    chex.assert_shape(params["w"], (4, 3))
    assert layer.output_shape((4,)) == (3,) and type(layer.output_shape((4,))[0]) is int
    with pytest.raises(ValueError, match="Dense: expected a positive int number of outputs"):
        nn.Dense(True)


@pytest.mark.parametrize("layer,name", [(nn.Dense(3), "Dense"), (nn.PRelu(), "PRelu"),
                                        (nn.serial(nn.Dense(3)), "serial"),
                                        (nn.parallel(nn.Relu()), "parallel")])
def test_init_with_a_bare_int_shape_is_a_clear_error(layer, name):
    with pytest.raises(ValueError, match=rf"{name}: expected a per-example input shape \(a "
                                         rf"tuple of ints .*\), received 784"):
        layer.init(jax.random.key(0), 784)


def test_integer_input_is_a_type_error():
    layer = nn.Relu()
    with pytest.raises(TypeError, match="Relu: expected a floating-point input"):
        layer.apply({}, {}, jnp.arange(3))


def test_residual_rejects_shape_changing_body():
    with pytest.raises(ValueError, match="residual"):
        nn.residual(nn.Dense(3)).init(jax.random.key(0), (4,))


def test_combinators_give_each_child_its_own_key():
    seen = []

    def probe(params, state, x, *, key=None, train=False):
        seen.append(key)
        return x, state, ()

    layer = nn.Layer("Probe", lambda k, s: ({}, {}), probe, lambda p, r, dy: ({}, dy))
    model = nn.serial(layer, nn.parallel(layer, layer))
    params, state = model.init(jax.random.key(0), (2,))
    model.forward(params, state, jnp.zeros((1, 2)), key=jax.random.key(7))
    data = [np.asarray(jax.random.key_data(k)) for k in seen]
    assert len(data) == 3 and len({d.tobytes() for d in data}) == 3
    model.forward(params, state, jnp.zeros((1, 2)))
    assert seen[3:] == [None, None, None]


def test_init_is_pure_and_deterministic():
    model = nn.serial(nn.Dense(8), nn.Tanh(), nn.Dense(2))
    a = model.init(jax.random.key(3), (5,))
    b = model.init(jax.random.key(3), (5,))
    c = model.init(jax.random.key(4), (5,))
    chex.assert_trees_all_equal(a, b)
    assert not np.allclose(a[0][0]["w"], c[0][0]["w"])
    chex.assert_shape([a[0][0]["w"], a[0][2]["w"]], [(5, 8), (8, 2)])


def test_model_vmaps_over_parameter_sets():
    model = nn.serial(nn.Dense(8), nn.Relu(), nn.Dense(2))
    keys = jax.random.split(jax.random.key(0), 4)
    params, state = jax.vmap(lambda k: model.init(k, (3,)))(keys)
    x = jnp.ones((5, 3))
    y = jax.vmap(lambda p: model.apply(p, state, x)[0])(params)
    chex.assert_shape(y, (4, 5, 2))


@pytest.mark.parametrize("f,prime", [
    (nn.sigmoid, nn.sigmoid_prime), (nn.tanh, nn.tanh_prime), (nn.relu, nn.relu_prime),
    (nn.hard_tanh, nn.hard_tanh_prime), (nn.softsign, nn.softsign_prime),
    (nn.leaky_relu, nn.leaky_relu_prime)])
def test_activation_derivatives_match_autodiff(f, prime, x64):
    z = jnp.linspace(-3.0, 3.0, 61)  # includes 0 and ±1 exactly: kink conventions must agree
    chex.assert_trees_all_close(prime(z), jax.vmap(jax.grad(f))(z), rtol=1e-12)


def test_softmax_is_stable_at_extreme_logits():
    z = jnp.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]])
    chex.assert_tree_all_finite((nn.softmax(z), nn.log_softmax(z)))
    chex.assert_trees_all_close(nn.softmax(z)[1], jnp.full(3, 1 / 3), rtol=1e-6)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
                  out=st.integers(1, 6), which=st.integers(0, len(ACTIVATIONS) + 2))
def test_inferred_shape_equals_apply_shape(shape, out, which):
    layers = ACTIVATIONS + [nn.Dense(out), nn.Flatten(), nn.serial(nn.Flatten(), nn.Dense(out),
                                                                   nn.Relu())]
    layer = layers[which]
    params, state = layer.init(jax.random.key(0), shape)
    y, _ = layer.apply(params, state, jnp.ones((2,) + shape))
    assert (2,) + tuple(layer.output_shape(shape)) == y.shape
