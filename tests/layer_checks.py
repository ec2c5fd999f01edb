"""The three-way gradient check shared by every layer's test table.

hand-written `backward` == `jax.vjp` (float64, rtol 1e-9) == centered finite differences
(relative error < 1e-7), for the parameters and the input, plus shape inference == apply.
Under chex's variants the finite differences run in the eager variant only: they evaluate the
layer through `fn.gradcheck.numerical_grad`'s own program, the same in every variant.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np

import funcnn as fn

BATCH = 3
FD_TOL = 1e-7     # the notes' "good" threshold for centered differences in float64
FD_FLOOR = 1e-9   # both |a|, |b| below this: numerically zero, counted as agreeing
LEAF_SCALE = 1e-3  # fn.gradcheck.check's default leaf_scale


def is_jitted(variant) -> bool:
    """Whether a chex variant is the jitted one (the finite differences are left to the other)."""
    return getattr(variant, "type", None) is chex.ChexVariantType.WITH_JIT


def init_float64(layer, in_shape, seed=0):
    """Params/state of `layer` in float64, an input batch and a random output cotangent."""
    params, state = layer.init(jax.random.key(seed), in_shape)
    params, state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, state))
    x = jax.random.normal(jax.random.key(seed + 1), (BATCH,) + tuple(in_shape), jnp.float64)
    return params, state, x


def assert_layer_gradients(layer, in_shape, variant, *, train=False, seed=0, x=None,
                           richardson=False):
    """Shape inference, forward == apply, and the three-way gradient agreement for one layer.
    `richardson`: centered differences (4·D(h) − D(2h))/3 at h = 1e-4 (truncation O(h⁴), less
    round-off than D(1e-5)) for smooth layers whose gradients span many orders of magnitude."""
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
    if is_jitted(variant):
        return hand

    def scalar(px):
        out = layer.apply(px[0], state, px[1], key=key, train=train)[0]
        return sum(jnp.sum(o * c) for o, c in zip(jax.tree.leaves(out), jax.tree.leaves(cotangent)))

    if richardson:
        fine, coarse = (fn.gradcheck.numerical_grad(scalar, (params, x), h) for h in (1e-4, 2e-4))
        numerical = jax.tree.map(lambda d1, d2: (4 * d1 - d2) / 3, fine, coarse)
    else:
        numerical = fn.gradcheck.numerical_grad(scalar, (params, x))
    assert_close_to_finite_differences(layer, hand, numerical)
    return hand


def assert_close_to_finite_differences(layer, hand, numerical):
    """Per leaf, max relative error < FD_TOL, each entry judged against max(|a|, |b|, LEAF_SCALE ×
    the leaf's largest entry) as `fn.gradcheck.check` does: an entry 1e5 times smaller than its
    leaf's largest carries centered-difference noise (~1e-12 absolute) larger than 1e-7 of itself."""
    def worst(a, b):
        scale = LEAF_SCALE * float(jnp.max(jnp.abs(b), initial=0.0))
        return float(jnp.max(fn.gradcheck.relative_error(a, b, FD_FLOOR, scale), initial=0.0))

    errors = jax.tree.map(worst, hand, numerical)
    assert max(jax.tree.leaves(errors), default=0.0) < FD_TOL, \
        f"{layer!r}: hand-written vs finite differences, max relative error per leaf {errors}"


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


def assert_layer_transforms(layer, in_shape, *, train=False, members=2, seed=0, rtol=1e-4):
    """jit + vmap over `members` parameter sets: `fn.backprop.value_and_grad` (hand-written rules)
    and `jax.grad` through `fn.backprop.custom_vjp(layer)` both agree with plain `jax.grad`, in
    full float32, on the loss value, the new state and every gradient leaf. Parameters are N(0, 1)
    draws from numpy stacked on a leading axis (cheap to compile); the state is `layer.init`'s."""
    loss = fn.losses.mean_squared_error
    rng = np.random.default_rng(seed)
    in_shape, key = tuple(in_shape), jax.random.key(seed + 3)
    param_shapes, state_shapes = jax.eval_shape(lambda k: layer.init(k, in_shape), key)
    params = jax.tree.map(lambda s: rng.standard_normal((members,) + s.shape, np.float32),
                          param_shapes)
    state = jax.jit(lambda k: jax.tree.map(lambda a: jnp.stack([a] * members),
                                           layer.init(k, in_shape)[1]))(key)
    x = rng.standard_normal((BATCH,) + in_shape, np.float32)
    target = rng.standard_normal((BATCH,) + tuple(layer.output_shape(in_shape)), np.float32)

    def autodiff(model):
        def objective(p, s):
            out, new_state = model.apply(p, s, x, key=key, train=train)
            return loss(out, target), new_state

        return jax.jit(jax.vmap(jax.value_and_grad(objective, has_aux=True),
                                axis_size=members))(params, state)

    vg = fn.backprop.value_and_grad(layer, loss)
    with jax.default_matmul_precision("float32"):   # a GPU would multiply in TF32 otherwise
        reference = autodiff(layer)
        bridged = autodiff(fn.backprop.custom_vjp(layer))
        hand = jax.jit(jax.vmap(lambda p, s: vg(p, s, x, target, key=key, train=train),
                                axis_size=members))(params, state)
    chex.assert_trees_all_close(hand, reference, rtol=rtol, atol=rtol * 1e-2)
    chex.assert_trees_all_close(bridged, reference, rtol=rtol, atol=rtol * 1e-2)
    chex.assert_tree_all_finite(hand)
    chex.assert_shape(jax.tree.leaves(hand[1]), [leaf.shape for leaf in jax.tree.leaves(params)])


def assert_layer_gradients_compiled(layer, in_shape, *, train=False, seed=0, x=None):
    """The checks of `assert_layer_gradients` (shape inference, forward == apply, hand-written ==
    `jax.vjp` at rtol 1e-9 == float64 centered differences < 1e-7), built for the larger tables:
    every JAX step is traced into one `jax.jit`, and the parameters (N(0, 1), not the layer's
    initializer), the input and the output cotangent are drawn with numpy, so a layer costs one
    XLA compilation instead of dozens (threefry sampling alone takes seconds to compile on CPU).
    The state comes from `layer.init`."""
    rng = np.random.default_rng(seed)
    in_shape, key = tuple(in_shape), jax.random.key(seed + 2)
    param_shapes = jax.eval_shape(lambda k: layer.init(k, in_shape)[0], key)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape), param_shapes)
    state = jax.jit(lambda k: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                                           layer.init(k, in_shape)[1]))(key)
    x = rng.standard_normal((BATCH,) + in_shape) if x is None else x
    out_shapes = jax.eval_shape(lambda p, x: layer.apply(p, state, x, key=key, train=train)[0],
                                params, x)
    cotangent = jax.tree.map(lambda s: rng.standard_normal(s.shape), out_shapes)

    @jax.jit
    def everything(params, x, cotangent):
        y, _, residuals = layer.forward(params, state, x, key=key, train=train)
        y_apply, _ = layer.apply(params, state, x, key=key, train=train)
        hand = layer.backward(params, residuals, cotangent)
        _, vjp = jax.vjp(lambda p, x: layer.apply(p, state, x, key=key, train=train)[0], params, x)

        def scalar(px):
            out = layer.apply(px[0], state, px[1], key=key, train=train)[0]
            return sum(jnp.sum(o * c) for o, c in zip(jax.tree.leaves(out),
                                                       jax.tree.leaves(cotangent)))

        return y, y_apply, hand, vjp(cotangent), fn.gradcheck.numerical_grad(scalar, (params, x))

    y, y_apply, hand, auto, numerical = jax.tree.map(np.asarray, everything(params, x, cotangent))
    chex.assert_trees_all_close(y, y_apply, rtol=1e-12, atol=1e-12)
    inferred = layer.output_shape(in_shape)
    assert inferred == example_shapes(y), \
        f"{layer!r}: output_shape says {inferred}, apply gives {example_shapes(y)}"
    chex.assert_trees_all_close(hand, auto, rtol=1e-9, atol=1e-12)
    chex.assert_tree_all_finite(hand)

    assert_close_to_finite_differences(layer, hand, numerical)
    return hand
