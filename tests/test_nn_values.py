"""Layers are values: equal configurations give equal, equally hashed layers (and initializers);
a user's own layer keeps identity equality; combinators accept any object with init, apply,
forward and backward."""
import dataclasses
import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import pytest

import funcnn as fn
from funcnn import nn
from funcnn.nn.core import along_last_axis
from layer_checks import assert_layer_gradients

# (build, a build that differs in one argument or in the factory)
PAIRS = [
    (lambda: nn.Dense(3), lambda: nn.Dense(4)),
    (lambda: nn.Dense(3), lambda: nn.Dense(3, b_init=fn.init.ones)),
    (lambda: nn.Conv2D(4, 3), lambda: nn.Conv2D(4, 3, padding="SAME")),
    (lambda: nn.Conv2D(4, (3, 2), strides=2), lambda: nn.Conv2D(4, (3, 2), strides=1)),
    (lambda: nn.Conv2D(4, 3), lambda: nn.Conv2D(4, 3, algorithm="xla")),
    (lambda: nn.MaxPool(2), lambda: nn.MaxPool(2, strides=1)),
    (lambda: nn.MaxPool(2), lambda: nn.AvgPool(2)),
    (lambda: nn.AvgPool(3), lambda: nn.L2Pool(3)),
    (lambda: nn.L2Pool(2), lambda: nn.L2Pool(3)),
    (lambda: nn.Flatten(), lambda: nn.Identity()),
    (lambda: nn.Dropout(0.5), lambda: nn.Dropout(0.25)),
    (lambda: nn.DropConnect(3, 0.5), lambda: nn.DropConnect(3, 0.2)),
    (lambda: nn.BatchNorm(), lambda: nn.BatchNorm(momentum=0.99)),
    (lambda: nn.Maxout(3), lambda: nn.Maxout(3, pieces=3)),
    (lambda: nn.Sigmoid(), lambda: nn.Tanh()),
    (lambda: nn.HardTanh(), lambda: nn.Softsign()),
    (lambda: nn.Relu(), lambda: nn.LeakyRelu()),
    (lambda: nn.LeakyRelu(), lambda: nn.LeakyRelu(0.2)),
    (lambda: nn.PRelu(), lambda: nn.PRelu(0.1)),
    (lambda: nn.Softmax(), lambda: nn.LogSoftmax()),
    (lambda: nn.serial(nn.Dense(3), nn.Relu()), lambda: nn.serial(nn.Dense(3), nn.Tanh())),
    (lambda: nn.serial(nn.Dense(3), nn.Relu()), lambda: nn.parallel(nn.Dense(3), nn.Relu())),
    (lambda: nn.residual(nn.Dense(3), nn.Relu()), lambda: nn.serial(nn.Dense(3), nn.Relu())),
    (lambda: nn.serial(nn.residual(nn.Dense(4)), nn.parallel(nn.Identity(), nn.Dense(2))),
     lambda: nn.serial(nn.residual(nn.Dense(4)), nn.parallel(nn.Identity(), nn.Dense(3)))),
    (lambda: nn.Dense(3, w_init=fn.init.normal(0.01)),
     lambda: nn.Dense(3, w_init=fn.init.normal(0.1))),
    (lambda: nn.Dense(3, w_init=fn.init.normal(0.01)),
     lambda: nn.Dense(3, w_init=fn.init.uniform(0.01))),
    (lambda: nn.Dense(3, w_init=fn.init.sparse(2)), lambda: nn.Dense(3, w_init=fn.init.sparse(3))),
    (lambda: fn.init.constant(0.5), lambda: fn.init.constant(0.25)),
    (lambda: fn.init.normal(), lambda: fn.init.normal(0.02)),
    (lambda: fn.init.uniform(1.0), lambda: fn.init.normal(1.0)),
]


@pytest.mark.parametrize("build,other", PAIRS)
def test_equal_configurations_are_equal_values_and_others_are_not(build, other):
    a, b, c = build(), build(), other()
    assert a is not b and a == b and hash(a) == hash(b)
    assert a != c and c != a and c == other()
    assert len({a, b, c}) == 2


def test_arguments_compare_as_the_factory_binds_them():
    assert nn.Dense(3) == nn.Dense(out=3) == nn.Dense(3, fn.init.lecun_normal, fn.init.zeros)
    assert nn.Conv2D(4, 3) == nn.Conv2D(4, kernel=3, strides=1, padding="VALID")
    assert nn.MaxPool(2) == nn.MaxPool(window=2, strides=None, algorithm="auto")
    assert fn.init.normal(0.01) == fn.init.normal(stddev=0.01) == fn.init.normal()
    assert nn.Dropout(0) != nn.Dropout(0.0)   # numbers keep their type (they trace differently)


def test_equal_layers_build_equal_parameters_and_compute_the_same():
    model, rebuilt = (nn.serial(nn.Dense(4, w_init=fn.init.normal(0.5)), nn.Tanh(), nn.Dense(2))
                      for _ in range(2))
    params, state = model.init(jax.random.key(0), (3,))
    chex.assert_trees_all_equal((params, state), rebuilt.init(jax.random.key(0), (3,)))
    x = jax.random.normal(jax.random.key(1), (5, 3))
    chex.assert_trees_all_equal(model.apply(params, state, x), rebuilt.apply(params, state, x))


def test_a_rebuilt_model_reuses_the_compiled_program():
    """jit keyed on the model (a static argument): equal rebuilt models trace once."""
    chex.clear_trace_counter()

    @functools.partial(jax.jit, static_argnums=0)
    @chex.assert_max_traces(n=1)
    def predict(model, x):
        params, state = model.init(jax.random.key(0), x.shape[1:])
        return model.apply(params, state, x)[0]

    x = jnp.ones((2, 3))
    for _ in range(3):
        predict(nn.serial(nn.Dense(4, w_init=fn.init.normal(0.1)), nn.Relu(), nn.Dense(2)), x)
    with pytest.raises(AssertionError, match="traced > 1"):   # another model: a new program
        predict(nn.serial(nn.Dense(5), nn.Relu(), nn.Dense(2)), x)


def test_reprs_show_the_configuration():
    assert repr(nn.Dense(3)) == "Dense(out=3, w_init=lecun_normal, b_init=zeros)"
    assert repr(nn.Relu()) == "Relu()"
    assert repr(nn.MaxPool(2)) == "MaxPool(window=2, strides=None, algorithm='auto')"
    assert repr(nn.Dense(2, w_init=fn.init.normal(0.01))) == \
        "Dense(out=2, w_init=normal(stddev=0.01), b_init=zeros)"
    assert repr(nn.serial(nn.Conv2D(4, (3, 3)), nn.residual(nn.Tanh()))) == (
        "serial(Conv2D(features=4, kernel=(3, 3), strides=1, padding='VALID', w_init=he_normal, "
        "b_init=zeros, algorithm='auto'), residual(serial(Tanh())))")
    assert repr(fn.init.sparse(5)) == "sparse(connections=5, stddev=0.01)"


def test_configured_initializers_draw_as_the_plain_ones():
    key = jax.random.key(0)
    chex.assert_trees_all_equal(fn.init.normal(0.5)(key, (3, 4)),
                                0.5 * jax.random.normal(key, (3, 4)))
    chex.assert_trees_all_equal(fn.init.constant(2.0)(key, (2,), jnp.float32),
                                jnp.full((2,), 2.0))
    assert fn.init.sparse.__name__ == "sparse" and "Martens" in fn.init.sparse.__doc__


def test_a_layer_built_directly_keeps_identity_equality():
    def forward(params, state, x, *, key=None, train=False):
        return 2 * x, state, ()

    def make():
        return nn.Layer("Double", lambda k, s: ({}, {}), forward, lambda p, r, dy: ({}, 2 * dy))

    a, b = make(), make()
    assert a == a and a != b and hash(a) != hash(b)
    assert nn.serial(a, nn.Relu()) == nn.serial(a, nn.Relu())
    assert nn.serial(a, nn.Relu()) != nn.serial(b, nn.Relu())


def test_a_derived_layer_is_not_taken_for_its_source():
    """dataclasses.replace (e.g. fn.backprop.custom_vjp's other apply) drops the config."""
    model = nn.serial(nn.Dense(3), nn.Relu())
    renamed = dataclasses.replace(model, name="other")
    assert renamed != model and renamed.config is None and renamed == renamed
    bridged = fn.backprop.custom_vjp(model)
    assert bridged != model and hash(bridged) != hash(model)
    assert model.with_config(model.config) == model


def test_unhashable_arguments_fall_back_to_identity():
    table = jnp.arange(3.0)
    a, b = fn.init.constant(table), fn.init.constant(table)   # an array: not hashable
    assert a == a and a != b
    assert nn.Dense(3, b_init=a) == nn.Dense(3, b_init=a)   # the same initializer object
    assert nn.Dense(3, b_init=a) != nn.Dense(3, b_init=b)
    chex.assert_trees_all_equal(nn.Dense(3, b_init=a).init(jax.random.key(0), (2,))[0]["b"],
                                table)
    slope = jnp.array(0.1)
    layer = nn.LeakyRelu(slope)
    assert layer == layer and layer != nn.LeakyRelu(slope) and layer.config is None


# ---------------------------------------------------------------------------------------------
# Duck-typed layers in combinators.


class Stack2(NamedTuple):
    """y = [x, x²] on the last axis: no output_shape (inferred), no branches (smooth)."""
    scale: float = 1.0

    def init(self, key, in_shape):
        return {"a": jnp.full(in_shape[-1:], self.scale)}, {}

    def forward(self, params, state, x, *, key=None, train=False):
        a = along_last_axis(params["a"], x.ndim)
        return jnp.concatenate([a * x, x * x], axis=-1), state, x

    def apply(self, params, state, x, *, key=None, train=False):
        return self.forward(params, state, x, key=key, train=train)[:2]

    def backward(self, params, x, dy):
        n = x.shape[-1]
        da = jnp.sum(dy[..., :n] * x, axis=tuple(range(x.ndim - 1)))
        return {"a": da}, dy[..., :n] * along_last_axis(params["a"], x.ndim) + 2 * x * dy[..., n:]


@dataclasses.dataclass(frozen=True)
class Halve:
    """y = x/2 with its own output_shape and branches (a frozen dataclass: hashable)."""

    def init(self, key, in_shape):
        return {}, {}

    def output_shape(self, in_shape):
        return tuple(in_shape)

    def branches(self, params, state, x, *, key=None, train=False):
        return x > 0

    def forward(self, params, state, x, *, key=None, train=False):
        return x / 2, state, ()

    def apply(self, params, state, x, *, key=None, train=False):
        return x / 2, state

    def backward(self, params, residuals, dy):
        return {}, dy / 2


def test_combinators_accept_duck_typed_layers_and_infer_their_shapes(x64):
    model = nn.serial(nn.Dense(3), Stack2(), Halve(), nn.Tanh(), nn.Dense(2))
    params, _ = model.init(jax.random.key(0), (4,))
    chex.assert_shape([params[1]["a"], params[4]["w"]], [(3,), (6, 2)])
    assert model.output_shape((4,)) == (2,)
    assert nn.parallel(Stack2(), Halve()).output_shape((5, 4)) == ((5, 8), (5, 4))
    assert_layer_gradients(model, (4,), lambda f: f)
    assert_layer_gradients(nn.residual(Halve(), nn.Sigmoid()), (3,), jax.jit)


def test_duck_typed_layers_are_smooth_unless_they_say_otherwise():
    model = nn.serial(Stack2(), Halve())
    params, state = model.init(jax.random.key(0), (2,))
    x = jnp.array([[1.0, -1.0]])
    found = model.branches(params, state, x)
    assert found[0] == ()
    chex.assert_trees_all_equal(found[1], jnp.array([[True, False, True, True]]))   # [x, x²] > 0


def test_combinators_of_equal_duck_typed_layers_are_equal():
    assert nn.serial(Stack2(), Halve()) == nn.serial(Stack2(), Halve())
    assert nn.serial(Stack2(), Halve()) != nn.serial(Stack2(2.0), Halve())


def test_duck_typed_layers_of_different_classes_are_different_children():
    """Two field-less NamedTuples are equal as tuples; the combinators still tell them apart."""

    class Negate(NamedTuple):
        def init(self, key, in_shape):
            return {}, {}

        def forward(self, params, state, x, *, key=None, train=False):
            return -x, state, ()

        def apply(self, params, state, x, *, key=None, train=False):
            return -x, state

        def backward(self, params, residuals, dy):
            return {}, -dy

    class Same(Negate):   # a subclass is another type too
        pass

    assert Negate() == Same() == ()
    for combinator in (nn.serial, nn.residual, nn.parallel):
        assert combinator(Negate()) == combinator(Negate())
        assert combinator(Negate()) != combinator(Same())
        assert hash(combinator(Negate())) == hash(combinator(Negate()))


def test_an_object_missing_a_method_is_named_in_the_error():
    class NoBackward(NamedTuple):
        def init(self, key, in_shape):
            return {}, {}

        def apply(self, params, state, x, *, key=None, train=False):
            return x, state

        def forward(self, params, state, x, *, key=None, train=False):
            return x, state, ()

    with pytest.raises(TypeError, match=r"parallel, position 1: expected a Layer \(an object with "
                                        r"init, apply, forward and backward\), received "
                                        r"NoBackward\(\), which lacks backward"):
        nn.parallel(nn.Relu(), NoBackward())
