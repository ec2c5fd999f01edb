"""Mixed dtypes under jax_numpy_dtype_promotion="strict": a layer computes in the standard
promotion of its input's and its parameters' dtypes, keeps its state's dtype, and returns
∂L/∂x in x's dtype and ∂L/∂θ in θ's dtype, as `jax.vjp` does."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import nn

TABLE = [
    ("dense", nn.Dense(3), (4,), False),
    ("maxout", nn.Maxout(3), (2, 4), False),
    ("dropconnect_train", nn.DropConnect(3, 0.5), (4,), True),
    ("dropconnect_eval", nn.DropConnect(3, 0.5), (4,), False),
    ("prelu", nn.PRelu(), (2, 3), False),
    ("batchnorm_train", nn.BatchNorm(), (2, 3), True),
    ("batchnorm_eval", nn.BatchNorm(), (2, 3), False),
    ("conv_gemm", nn.Conv2D(2, 3, padding="SAME", algorithm="gemm"), (5, 4, 2), True),
    ("conv_xla", nn.Conv2D(2, 3, strides=2, algorithm="xla"), (5, 4, 2), True),
    ("maxpool_dropout", nn.serial(nn.MaxPool(2), nn.Dropout(0.5)), (4, 4, 2), True),
    ("residual", nn.residual(nn.Dense(4), nn.Tanh()), (4,), False),
    ("parallel", nn.parallel(nn.Dense(2), nn.serial(nn.Dense(3), nn.Softmax())), (4,), False),
]


def _dtypes(tree):
    return jax.tree.map(lambda a: jnp.result_type(a), tree)


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
@pytest.mark.parametrize("x_dtype,param_dtype", [(jnp.float32, jnp.float64),
                                                 (jnp.float64, jnp.float32)])
@pytest.mark.parametrize("name,layer,in_shape,train", TABLE)
def test_mixed_dtypes_promote_like_the_default_mode(name, layer, in_shape, train, x_dtype,
                                                    param_dtype, x64):
    params, state = layer.init(jax.random.key(0), in_shape)   # state stays float32
    params = jax.tree.map(lambda a: a.astype(param_dtype), params)
    x = jax.random.normal(jax.random.key(1), (3,) + in_shape, x_dtype)
    key = jax.random.key(2)
    with jax.numpy_dtype_promotion("strict"):
        y, new_state = layer.apply(params, state, x, key=key, train=train)
        y_forward, _, residuals = layer.forward(params, state, x, key=key, train=train)
        cotangent = jax.tree.map(lambda a: jnp.ones_like(a) / 3, y)
        hand = layer.backward(params, residuals, cotangent)
        _, vjp = jax.vjp(lambda p, x: layer.apply(p, state, x, key=key, train=train)[0],
                         params, x)
        auto = vjp(cotangent)
    wide = jax.tree.map(lambda a: a.astype(jnp.float64), (params, x))
    reference, reference_state = layer.apply(*wide[:1], state, wide[1], key=key, train=train)

    promoted = jnp.float64 if jax.tree.leaves(params) else x_dtype
    assert all(leaf.dtype == promoted for leaf in jax.tree.leaves(y))
    chex.assert_trees_all_close(y, y_forward, reference, rtol=1e-12, atol=1e-12)
    assert _dtypes(new_state) == _dtypes(state)
    chex.assert_trees_all_close(new_state, reference_state, rtol=1e-6)
    assert _dtypes(hand) == _dtypes(auto) == _dtypes((params, x))
    chex.assert_trees_all_close(hand, auto, rtol=1e-6, atol=1e-7)


def test_batchnorm_running_statistics_average_in_the_wider_dtype(x64):
    """momentum·running + (1 − momentum)·batch with a float64 batch and float32 running
    statistics: computed in float64, stored in float32 (as the default mode does)."""
    layer = nn.BatchNorm(momentum=0.9)
    params, state = layer.init(jax.random.key(0), (2,))
    x = jnp.asarray(np.array([[1.0, 2.0], [3.0, 6.0]]))
    with jax.numpy_dtype_promotion("strict"):
        _, new_state = layer.apply(params, state, x, train=True)
    chex.assert_trees_all_equal(new_state, {"mean": jnp.array([0.2, 0.4], jnp.float32),
                                            "var": jnp.array([0.9 + 0.1, 0.9 + 0.4], jnp.float32)})
