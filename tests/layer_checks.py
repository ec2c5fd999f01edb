"""The three-way gradient check shared by every layer's test table.

hand-written `backward` == `jax.vjp` (float64, rtol 1e-9) == centered finite differences
(relative error < 1e-7), for the parameters and the input, plus shape inference == apply.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np

import funcnn as fn

BATCH = 3
FD_TOL = 1e-7     # the notes' "good" threshold for centered differences in float64
FD_FLOOR = 1e-9   # both |a|, |b| below this: numerically zero, counted as agreeing


def init_float64(layer, in_shape, seed=0):
    """Params/state of `layer` in float64, an input batch and a random output cotangent."""
    params, state = layer.init(jax.random.key(seed), in_shape)
    params, state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, state))
    x = jax.random.normal(jax.random.key(seed + 1), (BATCH,) + tuple(in_shape), jnp.float64)
    return params, state, x


def assert_layer_gradients(layer, in_shape, variant, *, train=False, seed=0, x=None):
    """Shape inference, forward == apply, and the three-way gradient agreement for one layer."""
    params, state, x_random = init_float64(layer, in_shape, seed)
    x = x_random if x is None else x
    key = jax.random.key(seed + 2)

    def run(params, x):
        y, _, residuals = layer.forward(params, state, x, key=key, train=train)
        return y, residuals

    y, residuals = variant(run)(params, x)
    y_apply, _ = variant(lambda p, x: layer.apply(p, state, x, key=key, train=train))(params, x)
    chex.assert_trees_all_close(y, y_apply, rtol=1e-12, atol=1e-12)
    inferred = layer.output_shape(tuple(in_shape))
    assert inferred == example_shapes(y), \
        f"{layer!r}: output_shape says {inferred}, apply gives {example_shapes(y)}"

    cotangent = jax.tree.map(
        lambda a: jax.random.normal(jax.random.key(seed + 3), a.shape, jnp.float64), y)
    hand = variant(layer.backward)(params, residuals, cotangent)
    _, vjp = jax.vjp(lambda p, x: layer.apply(p, state, x, key=key, train=train)[0], params, x)
    auto = vjp(cotangent)
    chex.assert_trees_all_close(hand, auto, rtol=1e-9, atol=1e-12)
    chex.assert_tree_all_finite(hand)

    def scalar(px):
        out = layer.apply(px[0], state, px[1], key=key, train=train)[0]
        return sum(jnp.sum(o * c) for o, c in zip(jax.tree.leaves(out), jax.tree.leaves(cotangent)))

    numerical = fn.gradcheck.numerical_grad(scalar, (params, x))
    errors = jax.tree.map(lambda a, b: float(jnp.max(fn.gradcheck.relative_error(a, b, FD_FLOOR),
                                                     initial=0.0)), hand, numerical)
    worst = max(jax.tree.leaves(errors), default=0.0)
    assert worst < FD_TOL, f"{layer!r}: hand-written vs finite differences, max relative error " \
                           f"per leaf {errors}"
    return hand


def example_shapes(y):
    """Per-example shape of an output (batch axis dropped); a tuple of them for fan-out."""
    if isinstance(y, (tuple, list)):
        return tuple(example_shapes(part) for part in y)
    return tuple(y.shape[1:])


def branch_free_input(shape, seed=0, gap=1e-3, kinks=(0.0,)):
    """A float64 input whose entries keep at least `gap` away from every kink location."""
    x = np.asarray(jax.random.normal(jax.random.key(seed), shape, jnp.float64))
    for k in kinks:
        near = np.abs(x - k) < gap
        x = np.where(near, k + np.sign(x - k + 1e-30) * gap * 2, x)
    return jnp.asarray(x)
