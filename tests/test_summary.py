"""fn.summary: paths, shapes, parameter counts, frozen groups, and FLOPs as XLA counts them."""
import jax
import jax.numpy as jnp
import pytest
from jax import lax

import funcnn as fn
from funcnn import nn
from funcnn.paths import leaf_paths


def xla_flops(f, *shapes) -> float:
    """flops + transcendentals of XLA's cost analysis of jit(f) on zero arrays of `shapes`."""
    cost = jax.jit(f).lower(*[jnp.zeros(s) for s in shapes]).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost.get("flops", 0) + cost.get("transcendentals", 0)


def test_notes_mlp_rows_counts_and_totals():
    model = nn.serial(nn.Dense(64), nn.Sigmoid(), nn.Dense(16), nn.Tanh(), nn.Dense(10))
    table = fn.summary(model, (784,))
    assert [r.path for r in table.rows] == ["0", "1", "2", "3", "4"]
    assert [r.layer for r in table.rows] == ["Dense", "Sigmoid", "Dense", "Tanh", "Dense"]
    assert [r.output_shape for r in table.rows] == [(64,), (64,), (16,), (16,), (10,)]
    assert [r.params for r in table.rows] == [784 * 64 + 64, 0, 64 * 16 + 16, 0, 16 * 10 + 10]
    params, _ = model.init(jax.random.key(0), (784,))
    assert table.total_params == sum(a.size for a in jax.tree.leaves(params)) == 51_450
    assert table.total_flops == sum(r.flops for r in table.rows)
    assert table.trainable_params == table.total_params
    text = str(table)
    assert "Dense" in text and "51,450" in text and "FLOPs per example" in text


@pytest.mark.parametrize("lead", [(), (5,)])
def test_dense_and_elementwise_flops_equal_xla(lead):
    """Dense: 2·in·out + out per row; an element-wise function: 1 per element (relu: a max,
    tanh: one transcendental)."""
    table = fn.summary(nn.serial(nn.Dense(7), nn.Relu(), nn.Tanh()), lead + (13,))
    dense, relu, tanh = (r.flops for r in table.rows)
    assert dense == xla_flops(lambda x, w, b: x @ w + b[(None,) * (x.ndim - 1)],
                              (1,) + lead + (13,), (13, 7), (7,))
    assert relu == xla_flops(lambda x: jnp.maximum(x, 0.0), (1,) + lead + (7,))
    assert tanh == xla_flops(jnp.tanh, (1,) + lead + (7,))


@pytest.mark.parametrize("shape, kernel, strides, padding", [
    ((28, 28, 1), (5, 5), 1, "SAME"),
    ((9, 13, 3), (3, 2), (2, 1), "SAME"),
    ((10, 7, 2), (4, 3), 2, "SAME"),
    ((11, 8, 2), (3, 3), (2, 3), "VALID"),
])
def test_conv_flops_count_only_taps_inside_the_input_as_xla(shape, kernel, strides, padding):
    """XLA does not count multiply-adds with the zero padding: neither does the closed form."""
    layer = nn.Conv2D(4, kernel, strides=strides, padding=padding)
    (row,) = fn.summary(layer, shape).rows
    s = (strides, strides) if isinstance(strides, int) else strides

    def reference(x, w, b):
        return lax.conv_general_dilated(x, w, s, padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + b[None, None, None]
    assert row.flops == xla_flops(reference, (1,) + shape, kernel + (shape[2], 4), (4,))
    assert row.output_shape == layer.output_shape(shape)


@pytest.mark.parametrize("pool, op, init", [(nn.MaxPool, lax.max, -jnp.inf),
                                            (nn.AvgPool, lax.add, 0.0)])
@pytest.mark.parametrize("window, strides", [((2, 2), None), ((3, 2), (1, 2))])
def test_pool_flops_equal_xla(pool, op, init, window, strides):
    shape = (9, 8, 3)
    (row,) = fn.summary(pool(window, strides), shape).rows
    s = window if strides is None else strides

    def reference(x):
        y = lax.reduce_window(x, init, op, (1,) + window + (1,), (1,) + s + (1,), "VALID")
        return y / (window[0] * window[1]) if op is lax.add else y
    assert row.flops == xla_flops(reference, (1,) + shape)


def test_cnn_total_equals_xla_of_the_whole_model():
    """The parameters are arguments (as constants, XLA would fold the zero biases away)."""
    model = nn.serial(nn.Conv2D(6, 5, padding="SAME", algorithm="xla"), nn.Tanh(),
                      nn.MaxPool(2, algorithm="xla"), nn.Flatten(), nn.Dense(10))
    table = fn.summary(model, (12, 10, 1))
    params, state = model.init(jax.random.key(0), (12, 10, 1))
    cost = jax.jit(lambda p, x: model.apply(p, state, x)[0]).lower(
        params, jnp.zeros((1, 12, 10, 1))).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert table.total_flops == cost["flops"] + cost.get("transcendentals", 0)


def test_nested_paths_skip_rows_and_fan_out():
    model = nn.serial(nn.Dense(8), nn.residual(nn.Dense(8), nn.Relu()),
                      nn.parallel(nn.Dense(3), nn.Dense(4)))
    table = fn.summary(model, (5,))
    params, _ = model.init(jax.random.key(0), (5,))
    names = leaf_paths(params)
    leaf_layers = {name.rsplit("/", 1)[0] for name in names}
    rows = {r.path: r for r in table.rows}
    assert leaf_layers <= set(rows)   # every parameter's layer is a row, by the same path
    assert rows["1/0"].layer == "Dense" and rows["1/1"].layer == "Relu"
    assert rows["2/1"].output_shape == (4,) and rows["2/0"].params == 8 * 3 + 3
    assert rows["1"].flops == 8   # the skip addition x + f(x)
    assert table.total_params == sum(a.size for a in jax.tree.leaves(params))


def test_frozen_groups_are_reported():
    model = nn.serial(nn.Dense(8), nn.Relu(), nn.Dense(2))
    opt = fn.optim.partition({"0/*": fn.optim.frozen()}, default=fn.optim.adam(1e-3))
    table = fn.summary(model, (5,), optimizer=opt)
    assert [r.trainable for r in table.rows if r.params] == [False, True]
    assert table.trainable_params == 8 * 2 + 2
    assert "frozen" in str(table)


def test_a_users_own_layer_is_measured_by_xla():
    square = nn.Layer("Square", init=lambda key, shape: ({}, {}),
                      forward=lambda p, s, x, key=None, train=False: (x * x, s, x),
                      backward=lambda p, x, dy: ({}, 2 * x * dy))
    (row,) = fn.summary(square, (6, 2)).rows
    assert row.layer == "Square" and row.output_shape == (6, 2) and row.flops == 12


def test_dropout_flops_at_evaluation_are_xlas():
    """Inverted dropout is the identity at evaluation; the notes' vanilla form scales by 1 − rate."""
    shape = (5, 6)
    (inverted,) = fn.summary(nn.Dropout(0.3), shape).rows
    (vanilla,) = fn.summary(nn.Dropout(0.3, mode="vanilla"), shape).rows
    layer = nn.Dropout(0.3, mode="vanilla")
    assert inverted.flops == 0
    assert vanilla.flops == xla_flops(lambda x: layer.apply({}, {}, x)[0], (1,) + shape) == 30
