"""The manual backprop engine agrees with jax.grad, uses no autodiff, and bridges into jax.grad."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import pytest

import funcnn as fn
from funcnn import nn

MODELS = {
    "notes_mlp": (lambda: nn.serial(nn.Flatten(), nn.Dense(16), nn.Sigmoid(), nn.Dense(8),
                                     nn.Tanh(), nn.Dense(5)), (3, 4, 1)),
    "relu_residual": (lambda: nn.serial(nn.Dense(6), nn.residual(nn.Dense(6), nn.Relu()),
                                         nn.PRelu(), nn.Dense(5)), (7,)),
    "softmax_head": (lambda: nn.serial(nn.Dense(8), nn.LeakyRelu(), nn.Dense(5), nn.Softmax()), (4,)),
}
LOSS_FOR = {"softmax_head": fn.losses.log_likelihood}


def _setup(name, seed=0):
    build, in_shape = MODELS[name]
    model = build()
    params, state = model.init(jax.random.key(seed), in_shape)
    x = jax.random.normal(jax.random.key(seed + 1), (6,) + in_shape)
    y = jnp.array([0, 1, 2, 3, 4, 0])
    return model, LOSS_FOR.get(name, fn.losses.softmax_cross_entropy), params, state, x, y


@pytest.mark.parametrize("name", MODELS)
def test_value_and_grad_matches_jax_grad(name, x64):
    model, loss, params, state, x, y = _setup(name)
    params, x = jax.tree.map(lambda a: a.astype(jnp.float64), (params, x))
    (value, new_state), grads = jax.jit(fn.backprop.value_and_grad(model, loss))(params, state, x, y)
    expected_value, expected = jax.value_and_grad(
        lambda p: loss(model.apply(p, state, x)[0], y))(params)
    assert float(value) == pytest.approx(float(expected_value), rel=1e-12)
    chex.assert_trees_all_close(grads, expected, rtol=1e-9, atol=1e-14)
    chex.assert_trees_all_equal_structs(grads, params)


def test_value_and_grad_uses_no_autodiff(monkeypatch):
    model, loss, params, state, x, y = _setup("relu_residual")

    def forbidden(*args, **kwargs):
        raise AssertionError("autodiff called inside fn.backprop.value_and_grad")

    for name in ("grad", "vjp", "value_and_grad", "jvp", "linearize"):
        monkeypatch.setattr(jax, name, forbidden)
    (value, _), grads = fn.backprop.value_and_grad(model, loss)(params, state, x, y)
    chex.assert_tree_all_finite((value, grads))


@pytest.mark.parametrize("name", MODELS)
def test_custom_vjp_routes_jax_grad_through_backward(name):
    model, loss, params, state, x, y = _setup(name)
    bridged = fn.backprop.custom_vjp(model)
    calls = []

    def spy_backward(params, residuals, dy):
        calls.append(1)
        return model.backward(params, residuals, dy)

    spied = fn.backprop.custom_vjp(dataclasses.replace(model, backward=spy_backward))
    g_bridge = jax.jit(jax.grad(lambda p: loss(bridged.apply(p, state, x)[0], y)))(params)
    g_plain = jax.grad(lambda p: loss(model.apply(p, state, x)[0], y))(params)
    chex.assert_trees_all_close(g_bridge, g_plain, rtol=1e-5, atol=1e-7)
    jax.grad(lambda p: loss(spied.apply(p, state, x)[0], y))(params)
    assert calls, "jax.grad did not go through the hand-written backward"
    y_bridge, _ = bridged.apply(params, state, x)
    chex.assert_trees_all_close(y_bridge, model.apply(params, state, x)[0])


def test_custom_vjp_gives_input_gradients_and_vmaps():
    model, loss, params, state, x, y = _setup("notes_mlp")
    bridged = fn.backprop.custom_vjp(model)
    dx = jax.grad(lambda x: loss(bridged.apply(params, state, x)[0], y))(x)
    chex.assert_trees_all_close(dx, jax.grad(lambda x: loss(model.apply(params, state, x)[0], y))(x),
                                rtol=1e-5, atol=1e-7)
    stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params)
    per_model = jax.vmap(jax.grad(lambda p: loss(bridged.apply(p, state, x)[0], y)))(stacked)
    chex.assert_shape([per_model[1]["w"], per_model[3]["w"]], [(2, 12, 16), (2, 16, 8)])


def test_custom_vjp_returns_cotangents_in_the_primal_dtypes():
    # PRelu's float32 slope promotes bfloat16 inputs; the cotangents must still match the primals.
    model = nn.PRelu()
    params, state = model.init(jax.random.key(0), (5,))
    x = jnp.linspace(-1, 1, 10, dtype=jnp.bfloat16).reshape(2, 5)
    bridged = fn.backprop.custom_vjp(model)

    def total(m):
        return lambda p, x: jnp.sum(m.apply(p, state, x)[0]).astype(jnp.float32)

    dp, dx = jax.grad(total(bridged), argnums=(0, 1))(params, x)
    assert dx.dtype == jnp.bfloat16 and dp["slope"].dtype == params["slope"].dtype
    chex.assert_trees_all_close((dp, dx), jax.grad(total(model), argnums=(0, 1))(params, x),
                                rtol=1e-2)


def test_value_and_grad_with_max_margin_differentiates_the_true_scores(x64):
    # max_margin(s_true, s_corrupt).grad is a pair; the outputs are s_true, y the fixed s_corrupt.
    model = nn.serial(nn.Dense(1), nn.Flatten())
    params, state = model.init(jax.random.key(0), (3,))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.normal(jax.random.key(1), (6, 3), jnp.float64)
    corrupt = model.apply(params, state, x)[0] + jnp.linspace(-2.0, 1.5, 6)[:, None]
    (value, _), grads = fn.backprop.value_and_grad(model, fn.losses.max_margin)(
        params, state, x, corrupt)
    expected_value, expected = jax.value_and_grad(
        lambda p: fn.losses.max_margin(model.apply(p, state, x)[0], corrupt))(params)
    assert float(value) == pytest.approx(float(expected_value), rel=1e-12)
    chex.assert_trees_all_close(grads, expected, rtol=1e-12)
    assert float(jnp.abs(grads[0]["b"][0])) > 0
