"""The modern layers — LayerNorm, GroupNorm, RMSNorm, GELU, SiLU, ELU, softplus, GlobalAvgPool,
ConvTranspose2D, Embedding: three-way gradients (hand-written == jax.vjp == finite differences),
jitted and not, under vmap; forward against independent numpy references; ConvTranspose2D as
the adjoint of Conv2D; Embedding's integer input through gradcheck and backprop; input errors.
(PyTorch parity: tests/test_nn_modern_torch.py.)"""
import functools
import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import funcnn as fn
from funcnn import nn
from layer_checks import assert_layer_gradients_compiled, assert_layer_transforms

TABLE = [
    ("layer_norm", nn.LayerNorm(), (4, 5)),
    ("rms_norm", nn.RMSNorm(), (4, 5)),
    ("group_norm_image", nn.GroupNorm(2), (3, 2, 4)),
    ("group_norm_features", nn.GroupNorm(2), (6,)),
    ("gelu", nn.Gelu(), (2, 5)),
    ("gelu_tanh", nn.Gelu(approximate=True), (2, 5)),
    ("silu", nn.Silu(), (2, 5)),
    ("elu_alpha", nn.Elu(alpha=0.5), (2, 5)),
    ("softplus", nn.Softplus(), (2, 5)),
    ("global_avg_pool", nn.GlobalAvgPool(), (3, 4, 2)),
    ("conv_t_valid_stride2", nn.ConvTranspose2D(2, 3, strides=2), (3, 2, 2)),
    ("conv_t_valid_k_lt_s", nn.ConvTranspose2D(2, 2, strides=3), (2, 2, 2)),
    ("conv_t_same_odd", nn.ConvTranspose2D(2, (3, 2), strides=(2, 1), padding="SAME"), (3, 2, 1)),
    ("conv_t_same_k_lt_s", nn.ConvTranspose2D(2, (1, 2), strides=3, padding="SAME"), (2, 2, 2)),
]

# The finite-difference leg, every layer above in one of four groups: a `parallel` of layers is
# one XLA compilation (each check compiles the layer, its vjp and a map over every coordinate),
# and its per-leaf errors still name each child's parameters.
FD_GROUPS = [
    ("norms_sequence", nn.parallel(nn.LayerNorm(), nn.RMSNorm(), nn.GroupNorm(2),
                                   nn.GroupNorm(1, eps=1e-3), nn.GlobalAvgPool()), (3, 4)),
    ("norms_image", nn.parallel(nn.GroupNorm(2), nn.GroupNorm(4), nn.LayerNorm(eps=1e-3),
                                nn.GlobalAvgPool()), (2, 3, 4)),
    ("activations", nn.parallel(nn.Gelu(), nn.Gelu(approximate=True), nn.Silu(), nn.Elu(),
                                nn.Elu(alpha=0.5), nn.Softplus()), (2, 5)),
    ("conv_transposes", nn.parallel(*(layer for name, layer, _ in TABLE if "conv_t" in name)),
     (2, 2, 2)),
]
# Rows that differ from another only in geometry, left to FD_GROUPS (jitted, in a parallel); the
# others are also checked alone, jitted and eagerly (op by op, slow to dispatch).
FD_ONLY = {"conv_t_valid_stride2", "conv_t_same_k_lt_s"}
KINKED = {"Elu", "parallel(Gelu"}   # ELU with α ≠ 1 has a kink at 0: keep the inputs off it


def input_for(layer, in_shape, seed=1):
    """A float64 N(0, 1) batch of 3; entries of a KINKED layer's input kept ≥ 1e-3 from 0."""
    x = np.random.default_rng(seed).standard_normal((3,) + in_shape)
    if any(repr(layer).startswith(name) for name in KINKED):
        x = np.where(np.abs(x) < 1e-3, np.copysign(2e-3, x), x)
    return jnp.asarray(x)


def random_params(layer, in_shape, seed=0):
    """float64 N(0, 1) parameters (scales far from 1, offsets far from 0) of the shapes `init`
    gives (found without running it: no random-number program to compile) and the (empty)
    state."""
    params, state = jax.eval_shape(lambda k: layer.init(k, in_shape), jax.random.key(seed))
    assert state == {}, layer
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), params), {}


@functools.cache
def variant_cases():
    """The rows of TABLE but FD_ONLY with float64 parameters, inputs and output cotangents, and the
    jax.vjp reference for each (computed once, jitted, for both variants)."""
    with jax.enable_x64(True):
        cases = [(name, layer, in_shape) + random_params(layer, in_shape)
                 + (input_for(layer, in_shape),) for name, layer, in_shape in TABLE
                 if name not in FD_ONLY]
        cotangents = [jnp.asarray(np.random.default_rng(2).standard_normal(
            (3,) + layer.output_shape(in_shape))) for _, layer, in_shape, *_ in cases]

        @jax.jit
        def autodiff(params, xs, dys):
            return [jax.vjp(lambda p, x, layer=layer, state=state:
                            layer.apply(p, state, x)[0], p, x)[1](dy)
                    for (_, layer, _, _, state, _), p, x, dy in zip(cases, params, xs, dys)]

        args = ([c[3] for c in cases], [c[5] for c in cases], cotangents)
        return cases, args, jax.tree.map(np.asarray, autodiff(*args))


class ModernGradientTest(chex.TestCase):

    @parameterized.named_parameters(*FD_GROUPS)
    def test_three_way(self, layer, in_shape):
        """hand-written == jax.vjp (rtol 1e-9) == centered differences (< 1e-7), float64."""
        with jax.enable_x64(True):
            assert_layer_gradients_compiled(layer, in_shape, x=input_for(layer, in_shape))

    @chex.variants(with_jit=True, without_jit=True)
    def test_hand_written_equals_vjp_for_each_layer(self):
        """Every row of TABLE but FD_ONLY (one per layer and code path), alone, jitted (one
        program for them all) and eagerly: forward == apply, output_shape == apply's,
        hand-written backward == jax.vjp of apply (float64, rtol 1e-9), every leaf."""
        with jax.enable_x64(True):
            cases, args, reference = variant_cases()

            def hand_written(params, xs, dys):
                out = []
                for (_, layer, _, _, state, _), p, x, dy in zip(cases, params, xs, dys):
                    y, _, res = layer.forward(p, state, x)
                    out.append((y, layer.apply(p, state, x)[0], layer.backward(p, res, dy)))
                return out

            for (name, layer, in_shape, *_), (y, y_apply, hand), auto in zip(
                    cases, self.variant(hand_written)(*args), reference):
                chex.assert_trees_all_close(y, y_apply, rtol=1e-12, atol=1e-14, custom_message=name)
                chex.assert_shape(y, (3,) + layer.output_shape(in_shape), custom_message=name)
                chex.assert_trees_all_close(hand, auto, rtol=1e-9, atol=1e-12, custom_message=name)


def test_jit_vmap_value_and_grad_and_custom_vjp():
    """Under jit + vmap over parameter sets, float32: backprop's value_and_grad and jax.grad
    through custom_vjp both equal plain jax.grad, for every kind of layer (two stacks)."""
    assert_layer_transforms(nn.serial(nn.LayerNorm(), nn.Gelu(), nn.RMSNorm(), nn.GroupNorm(2),
                                      nn.Silu(), nn.Elu(alpha=0.5), nn.Softplus(),
                                      nn.Gelu(approximate=True)), (3, 4))
    assert_layer_transforms(nn.serial(nn.ConvTranspose2D(2, 3, strides=2, padding="SAME"),
                                      nn.GroupNorm(1), nn.GlobalAvgPool()), (2, 2, 2))


def test_layers_vmap_over_examples(x64):
    """Statistics are per example: vmap over single examples of forward and hand-written
    backward equals the layer on the whole batch (parameter gradients summed)."""
    layers = [(nn.LayerNorm(), (4, 5)), (nn.RMSNorm(), (4, 5)), (nn.GroupNorm(2), (3, 2, 4)),
              (nn.ConvTranspose2D(2, 3, strides=2, padding="SAME"), (3, 2, 2)),
              (nn.GlobalAvgPool(), (3, 2, 2)), (nn.Gelu(), (4,))]
    rng = np.random.default_rng(0)
    cases = [(layer,) + random_params(layer, in_shape)
             + (jnp.asarray(rng.standard_normal((4,) + in_shape)),
                jnp.asarray(rng.standard_normal((4,) + layer.output_shape(in_shape))))
             for layer, in_shape in layers]

    @jax.jit
    def both(arrays):
        out = []
        for (layer, *_), (params, state, x, dy) in zip(cases, arrays):
            def one(x, dy):
                y, _, res = layer.forward(params, state, x[None])
                dparams, dx = layer.backward(params, res, dy[None])
                return y[0], dparams, dx[0]

            y, dparams, dx = jax.vmap(one)(x, dy)
            y_batch, _, res = layer.forward(params, state, x)
            out.append(((y, jax.tree.map(lambda g: g.sum(0), dparams), dx),
                        (y_batch,) + layer.backward(params, res, dy)))
        return out

    for (layer, *_), (mapped, batched) in zip(cases, both([tuple(c[1:]) for c in cases])):
        chex.assert_trees_all_close(mapped, batched, rtol=1e-12, atol=1e-14,
                                    custom_message=repr(layer))


# ---------------------------------------------------------------------------------------------
# Forward against independent references.


def numpy_norm(x, axes, eps, centre=True):
    mean = x.mean(axis=axes, keepdims=True) if centre else 0.0
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def test_layer_norm_and_rms_norm_closed_forms(x64):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (2, 3, 5))
    scale, offset = rng.standard_normal(5), rng.standard_normal(5)
    y, _ = nn.LayerNorm(eps=1e-3).apply({"scale": jnp.asarray(scale),
                                         "offset": jnp.asarray(offset)},
                                        {}, jnp.asarray(x))
    chex.assert_trees_all_close(y, numpy_norm(x, -1, 1e-3) * scale + offset, rtol=1e-12)
    y, _ = nn.RMSNorm().apply({"scale": jnp.asarray(scale)}, {}, jnp.asarray(x))
    rms = np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6)
    chex.assert_trees_all_close(y, x / rms * scale, rtol=1e-12)


def test_group_norm_normalises_each_block_of_contiguous_channels(x64):
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 3.0, (2, 3, 4, 6))
    scale, offset = rng.standard_normal(6), rng.standard_normal(6)
    expected = np.empty_like(x)
    for n, g in itertools.product(range(2), range(3)):        # groups of channels (0,1),(2,3),(4,5)
        block = x[n, :, :, 2 * g:2 * g + 2]
        expected[n, :, :, 2 * g:2 * g + 2] = (block - block.mean()) / np.sqrt(block.var() + 1e-5)
    layer = nn.GroupNorm(3)
    y, _ = layer.apply({"scale": jnp.asarray(scale), "offset": jnp.asarray(offset)}, {},
                       jnp.asarray(x))
    chex.assert_trees_all_close(y, expected * scale + offset, rtol=1e-11)
    params, state = layer.init(jax.random.key(0), (3, 4, 6))
    chex.assert_trees_all_equal(params, {"scale": jnp.ones(6), "offset": jnp.zeros(6)})
    assert state == {}


def numpy_gelu(z, approximate):
    if approximate:
        return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))
    return np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in z])


@pytest.mark.parametrize("f,reference", [
    (nn.gelu, lambda z: numpy_gelu(z, False)),
    (lambda z: nn.gelu(z, approximate=True), lambda z: numpy_gelu(z, True)),
    (nn.silu, lambda z: z / (1 + np.exp(-z))),
    (nn.elu, lambda z: np.where(z > 0, z, np.exp(z) - 1)),
    (lambda z: nn.elu(z, 0.3), lambda z: np.where(z > 0, z, 0.3 * (np.exp(z) - 1))),
    (nn.softplus, lambda z: np.log1p(np.exp(z))),
])
def test_activation_values(f, reference, x64):
    z = np.linspace(-6.0, 6.0, 49)
    chex.assert_trees_all_close(f(jnp.asarray(z)), reference(z), rtol=1e-13, atol=1e-15)


def test_activation_derivatives_match_autodiff(x64):
    """The hand-written f' against jax.grad of f, on a grid including 0 exactly (ELU's kink
    convention, α at 0, must agree)."""
    pairs = [(nn.gelu, nn.gelu_prime), (lambda z: nn.gelu(z, approximate=True),
                                        lambda z: nn.gelu_prime(z, approximate=True)),
             (nn.silu, nn.silu_prime), (nn.elu, nn.elu_prime), (nn.softplus, nn.softplus_prime),
             (lambda z: nn.elu(z, 0.3), lambda z: nn.elu_prime(z, 0.3))]
    z = jnp.linspace(-6.0, 6.0, 61)
    hand, auto = jax.jit(lambda z: ([prime(z) for _, prime in pairs],
                                    [jax.vmap(jax.grad(f))(z) for f, _ in pairs]))(z)
    # (atol: autodiff of expm1 differentiates as expm1(z) + 1, which cancels far left)
    chex.assert_trees_all_close(hand, auto, rtol=1e-12, atol=1e-13)
    assert float(nn.elu_prime(jnp.array(0.0), 0.3)) == 0.3   # the left derivative at the kink


def test_activations_are_finite_far_out_in_float32():
    """f, the hand-written f' and jax.grad of f stay finite at ±100 and ±1e4 in float32, with the
    limits they should have (one jitted program)."""
    z = jnp.array([-1e4, -100.0, 100.0, 1e4], jnp.float32)
    pairs = [(nn.gelu, nn.gelu_prime), (nn.silu, nn.silu_prime), (nn.elu, nn.elu_prime),
             (nn.softplus, nn.softplus_prime),
             (lambda z: nn.gelu(z, True), lambda z: nn.gelu_prime(z, True))]
    values = jax.jit(lambda z: [(f(z), prime(z), jax.vmap(jax.grad(f))(z))
                                for f, prime in pairs])(z)
    chex.assert_tree_all_finite(values)
    ramp, step = jnp.array([0.0, 0.0, 100.0, 1e4]), jnp.array([0.0, 0.0, 1.0, 1.0])
    for (f, prime, grad), name in zip(values, ["gelu", "silu", "elu", "softplus", "gelu tanh"]):
        chex.assert_trees_all_close(f, ramp if name != "elu" else jnp.array([-1.0, -1.0, 100.0,
                                                                             1e4]),
                                    atol=1e-30, custom_message=name)
        chex.assert_trees_all_close((prime, grad), (step, step), atol=1e-30, custom_message=name)


def test_global_avg_pool_is_the_mean_over_positions(x64):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 4, 5)))
    y, _ = nn.GlobalAvgPool().apply({}, {}, x)
    chex.assert_trees_all_close(y, np.asarray(x).mean(axis=(1, 2)), rtol=1e-13)


# ---------------------------------------------------------------------------------------------
# ConvTranspose2D: the adjoint of Conv2D, and a numpy scatter reference.

# k < s, k = s, k > s with k − s odd and even, for each padding.
GEOMETRIES = [(k, s, p) for k, s in ((2, 1), (3, 1), (1, 2), (2, 2), (3, 2), (4, 2), (1, 3),
                                     (2, 3), (5, 3)) for p in ("VALID", "SAME")]


def test_conv_transpose_is_the_adjoint_of_conv2d(x64):
    """For each of GEOMETRIES (and two non-square ones):
    ⟨Conv(u), x⟩ = ⟨u, ConvT(x)⟩ for the Conv2D with the same kernel (its channel axes read the
    other way), strides and padding, on inputs of ConvT's output size; and ConvT's sizes are the
    pinned ones: VALID (h − 1)·s + k, SAME h·s. (One jitted program for all geometries.)"""
    h, w = 4, 3
    rng = np.random.default_rng(0)
    cases = []
    for kernel, stride, padding in GEOMETRIES + [((3, 2), (2, 3), "SAME"),
                                                 ((2, 4), (3, 1), "VALID")]:
        (kh, kw), (sh, sw) = (tuple(np.broadcast_to(kernel, 2)), tuple(np.broadcast_to(stride, 2)))
        size = ((h - 1) * sh + kh, (w - 1) * sw + kw) if padding == "VALID" else (h * sh, w * sw)
        cases.append(((kernel, stride, padding), size, {
            "w": rng.standard_normal((kh, kw, 3, 2)), "b": np.zeros(2),
            "x": rng.standard_normal((2, h, w, 3)), "u": rng.standard_normal((2,) + size + (2,))}))

    @jax.jit
    def pairings(arrays):
        out = []
        for ((kernel, stride, padding), _, _), a in zip(cases, arrays):
            layer = nn.ConvTranspose2D(2, kernel, strides=stride, padding=padding)
            conv = nn.Conv2D(3, kernel, strides=stride, padding=padding, algorithm="xla")
            y, _ = layer.apply({"w": a["w"], "b": a["b"]}, {}, a["x"])
            cu, _ = conv.apply({"w": jnp.transpose(a["w"], (0, 1, 3, 2)), "b": jnp.zeros(3)}, {},
                               a["u"])
            out.append((y, cu, jnp.vdot(cu, a["x"]), jnp.vdot(a["u"], y)))
        return out

    for (geometry, size, a), (y, cu, conv_u_x, u_convt_x) in zip(
            cases, pairings([c[2] for c in cases])):
        chex.assert_shape(y, (2,) + size + (2,), custom_message=str(geometry))
        chex.assert_shape(cu, a["x"].shape, custom_message=str(geometry))
        np.testing.assert_allclose(float(conv_u_x), float(u_convt_x), rtol=1e-12,
                                   err_msg=str(geometry))


def numpy_conv_transpose(x, w, b, strides, padding):
    """Every input pixel scatters x[n, p, q, :]·w into the full output at (p·s, q·s); SAME then
    keeps [lo, lo + h·s) with lo = ⌊max(k − s, 0)/2⌋ (zeros beyond the full output)."""
    n, h, wd, _ = x.shape
    kh, kw, _, cout = w.shape
    (sh, sw) = strides
    full = np.zeros((n, (h - 1) * sh + kh, (wd - 1) * sw + kw, cout))
    for p, q in itertools.product(range(h), range(wd)):
        full[:, p * sh:p * sh + kh, q * sw:q * sw + kw] += np.einsum("nc,ijcd->nijd", x[:, p, q], w)
    if padding == "SAME":
        out = np.zeros((n, h * sh, wd * sw, cout))
        top, left = max(kh - sh, 0) // 2, max(kw - sw, 0) // 2
        crop = full[:, top:top + h * sh, left:left + wd * sw]
        out[:, :crop.shape[1], :crop.shape[2]] = crop
        full = out
    return full + b


@pytest.mark.parametrize("kernel,stride,padding", [(3, 2, "VALID"), (4, 2, "SAME"), (5, 2, "SAME"),
                                                   (2, 3, "SAME"), ((3, 1), (1, 2), "SAME")])
def test_conv_transpose_against_a_numpy_scatter(kernel, stride, padding, x64):
    layer = nn.ConvTranspose2D(2, kernel, strides=stride, padding=padding)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 3))
    w = rng.standard_normal(tuple(np.broadcast_to(kernel, 2)) + (3, 2))
    b = rng.standard_normal(2)
    y, _ = layer.apply({"w": jnp.asarray(w), "b": jnp.asarray(b)}, {}, jnp.asarray(x))
    strides = tuple(np.broadcast_to(stride, 2))
    chex.assert_trees_all_close(y, numpy_conv_transpose(x, w, b, strides, padding), rtol=1e-11)


# ---------------------------------------------------------------------------------------------
# Embedding: gather forward, scatter-add backward, integer input.


def embedding_case():
    layer = nn.Embedding(7, 3)
    params, state = {"table": jnp.asarray(np.random.default_rng(5).standard_normal((7, 3)))}, {}
    ids = jnp.array([[1, 2, 2, 6], [0, 2, 6, 1]], jnp.int32)   # repeated ids: their δ add up
    return layer, params, state, ids


class EmbeddingTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_three_way_and_scatter_add_reference(self):
        with jax.enable_x64(True):
            layer, params, state, ids = embedding_case()
            y, _, res = self.variant(lambda p, i: layer.forward(p, state, i))(params, ids)
            chex.assert_trees_all_close(y, np.asarray(params["table"])[np.asarray(ids)], rtol=0)
            dy = jnp.asarray(np.random.default_rng(0).standard_normal(y.shape))
            hand, dx = self.variant(layer.backward)(params, res, dy)
            expected = np.zeros((7, 3))
            np.add.at(expected, np.asarray(ids), np.asarray(dy))
            chex.assert_trees_all_close(hand["table"], expected, rtol=1e-14)
            assert dx.dtype == jax.dtypes.float0 and dx.shape == ids.shape   # ids have no gradient
            _, vjp = jax.vjp(lambda p: layer.apply(p, state, ids)[0], params)
            chex.assert_trees_all_close(hand, vjp(dy)[0], rtol=1e-9)

            def scalar(p):
                return jnp.sum(layer.apply(p, state, ids)[0] * dy)

            chex.assert_trees_all_close(hand, fn.gradcheck.numerical_grad(scalar, params),
                                        rtol=1e-7, atol=1e-9)


def test_embedding_output_shape_and_init():
    layer = nn.Embedding(10, 4)
    params, state = layer.init(jax.random.key(0), (5, 2))
    chex.assert_shape(params["table"], (10, 4))
    assert state == {} and layer.output_shape((5, 2)) == (5, 2, 4)
    y, _ = layer.apply(params, state, jnp.zeros((3, 5, 2), jnp.int32))
    chex.assert_shape(y, (3, 5, 2, 4))
    y, _ = layer.apply(params, state, jnp.arange(3))   # ids (batch,) → (batch, features)
    chex.assert_shape(y, (3, 4))


@pytest.mark.parametrize("bad", [7, -1])
def test_embedding_out_of_range_ids(bad, x64):
    """Eagerly: a ValueError naming the id. Under jit (values unknown): NaN rows, no gradient."""
    layer, params, state, ids = embedding_case()
    ids = ids.at[0, 1].set(bad)
    for run in (layer.apply, lambda p, s, i: layer.forward(p, s, i)[:2]):
        with pytest.raises(ValueError, match=rf"Embedding: expected ids in \[0, 7\) for a "
                                             rf"vocabulary of 7, received id {bad}"):
            run(params, state, ids)
    y, _, res = jax.jit(lambda p, i: layer.forward(p, state, i))(params, ids)
    assert bool(jnp.all(jnp.isnan(y[0, 1]))) and bool(jnp.all(jnp.isfinite(jnp.delete(y, 1, 1))))
    dy = jnp.ones(y.shape)
    hand = jax.jit(layer.backward)(params, res, dy)[0]["table"]
    counts = np.zeros(7)
    np.add.at(counts, np.delete(np.asarray(ids), 1, axis=1).ravel(), 1.0)
    np.add.at(counts, np.asarray(ids)[1, 1], 1.0)
    chex.assert_trees_all_close(hand, np.repeat(counts[:, None], 3, axis=1))   # bad id: dropped
    _, vjp = jax.vjp(lambda p: jax.jit(layer.apply)(p, state, ids)[0], params)
    chex.assert_trees_all_close(vjp(dy)[0]["table"], hand)


def test_embedding_rejects_float_ids_and_ids_without_batch_axis():
    layer = nn.Embedding(5, 2)
    params, state = layer.init(jax.random.key(0), (3,))
    with pytest.raises(TypeError, match="Embedding: expected an integer array of token ids, "
                                        "received .* float32"):
        layer.apply(params, state, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="Embedding: expected ids of shape .* with a batch axis"):
        layer.apply(params, state, jnp.array(1))
    with pytest.raises(ValueError,
                       match=r"Embedding: expected params\['table'\] of shape \(5, 2\)"):
        layer.apply({"table": jnp.zeros((4, 2))}, state, jnp.zeros((2, 3), jnp.int32))


def language_model(members=None):
    """An embedding → LayerNorm → Dense → GELU → pool → Dense classifier of token windows, with
    float32 N(0, 0.5²) parameters (a leading axis of `members` sets if given), int32 ids, labels."""
    model = nn.serial(nn.Embedding(11, 6), nn.LayerNorm(), nn.Dense(8), nn.Gelu(),
                      nn.GlobalAvgPool(), nn.Dense(4))
    shapes, state = jax.eval_shape(lambda k: model.init(k, (5,)), jax.random.key(0))
    rng = np.random.default_rng(0)
    lead = () if members is None else (members,)
    params = jax.tree.map(lambda a: jnp.asarray(0.5 * rng.standard_normal(lead + a.shape),
                                                jnp.float32), shapes)
    ids = jnp.asarray(rng.integers(0, 11, (3, 5)), jnp.int32)
    labels = jnp.array([0, 3, 1])
    return model, params, state, ids, labels


def test_gradcheck_takes_integer_ids():
    """gradcheck keeps the ids integer (no input gradient, ids never perturbed: only floats are
    moved or cast to float64) and checks the table's gradient with the other leaves, at each of
    its points."""
    model, params, state, ids, labels = language_model()
    report = fn.gradcheck.check(model, fn.losses.softmax_cross_entropy, params, state, ids, labels)
    assert report.passed, str(report)
    assert report.inputs == () and len(report.points) == 3, str(report)
    for point in report.points:
        assert point.inputs == () and point.passed, str(report)
        table = point.leaves[0]
        assert table.path.endswith("table") and table.shape == (11, 6), str(report)
        assert table.sampled == 10 and table.kinks == 0 and table.passed, str(report)
    assert report.leaves[0].sampled == 10 * len(report.points)


def test_backprop_takes_integer_ids_jitted_and_under_vmap():
    """Jitted and vmapped over three parameter sets, float32: backprop's value_and_grad
    (hand-written rules) and jax.grad through custom_vjp equal plain jax.grad of the loss through
    the embedding (the single, unmapped set in float64: test_gradcheck_takes_integer_ids)."""
    model, stacked, state, ids, labels = language_model(members=3)
    loss = fn.losses.softmax_cross_entropy
    vg = fn.backprop.value_and_grad(model, loss)

    def objective(model, p):
        return loss(model.apply(p, state, ids)[0], labels)

    def three_ways(p):
        (value, _), hand = vg(p, state, ids, labels)
        bridged = jax.grad(lambda q: objective(fn.backprop.custom_vjp(model), q))(p)
        auto_value, auto = jax.value_and_grad(lambda q: objective(model, q))(p)
        return (value, hand, bridged), (auto_value, auto, auto)

    with jax.default_matmul_precision("float32"):
        got, expected = jax.jit(jax.vmap(three_ways))(stacked)
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-7)
    chex.assert_tree_all_finite(got)
    chex.assert_shape(jax.tree.leaves(got[1])[0], (3, 11, 6))   # the tables' gradients


# ---------------------------------------------------------------------------------------------
# Errors and values.


@pytest.mark.parametrize("layer,in_shape,bad,words", [
    (nn.LayerNorm(), (5,), (2, 4), ["LayerNorm", "expected 5 input features", "received 4"]),
    (nn.RMSNorm(), (5,), (2, 4), ["RMSNorm", "expected 5 input features"]),
    (nn.GroupNorm(2), (4, 4), (2, 4, 6), ["GroupNorm", "expected 4 input channels", "received 6"]),
    (nn.GlobalAvgPool(), (3, 4, 2), (2, 3), ["GlobalAvgPool", "(batch, height, width, channels)",
                                             "(2, 3)"]),
    (nn.ConvTranspose2D(2, 3), (4, 4, 3), (2, 4, 4, 2), ["ConvTranspose2D", "3 channels",
                                                         "2 channels"]),
    (nn.ConvTranspose2D(2, 3), (4, 4, 3), (2, 4, 3), ["ConvTranspose2D", "rank 4", "(2, 4, 3)"]),
])
def test_wrong_input_names_layer_expected_and_received(layer, in_shape, bad, words):
    params, state = random_params(layer, in_shape)
    with pytest.raises(ValueError) as error:
        layer.apply(params, state, jnp.zeros(bad))
    for word in words:
        assert word in str(error.value), str(error.value)


@pytest.mark.parametrize("layer,in_shape,bad,error,message", [
    (nn.LayerNorm(), (4,), jnp.zeros(()), ValueError,
     "LayerNorm: expected an input of shape (batch, 4) with a batch axis, received shape ()"),
    (nn.GroupNorm(2), (4,), jnp.zeros((4,)), ValueError,
     "GroupNorm: expected an input of shape (batch, 4) with a batch axis, received shape (4,)"),
    (nn.RMSNorm(), (4,), jnp.zeros((2, 4), jnp.int32), TypeError,
     "RMSNorm: expected a floating-point input array, received ArrayImpl of dtype int32"),
    (nn.Gelu(), (4,), jnp.zeros((2, 4), jnp.int32), TypeError,
     "Gelu: expected a floating-point input array"),
    (nn.ConvTranspose2D(2, 3), (4, 4, 3), jnp.zeros((2, 4, 4, 3), jnp.int32), TypeError,
     "ConvTranspose2D: expected a floating-point input array"),
    (nn.Embedding(5, 2), (3,), jnp.zeros((2, 3), bool), TypeError,
     "Embedding: expected an integer array of token ids, received ArrayImpl of dtype bool"),
])
def test_wrong_rank_or_dtype_is_a_clear_error(layer, in_shape, bad, error, message):
    params, state = random_params(layer, in_shape)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        layer.apply(params, state, bad)


@pytest.mark.parametrize("build,message", [
    (lambda: nn.GroupNorm(4).init(jax.random.key(0), (3, 6)),
     "GroupNorm: expected a channel count divisible by groups=4, received 6 channels"),
    (lambda: nn.GroupNorm(0), "GroupNorm: expected a positive int number of groups, received 0"),
    (lambda: nn.LayerNorm(eps=0.0), "LayerNorm: expected eps > 0, received 0.0"),
    (lambda: nn.RMSNorm(eps=-1.0), "RMSNorm: expected eps > 0"),
    (lambda: nn.Embedding(0, 3), "Embedding: expected vocab as a positive int, received 0"),
    (lambda: nn.ConvTranspose2D(2, 3, padding="FULL"), "ConvTranspose2D: expected padding"),
    (lambda: nn.ConvTranspose2D(2, 0), "ConvTranspose2D: expected the kernel size"),
])
def test_bad_configuration_is_a_clear_error(build, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()


def test_layers_with_equal_configuration_are_equal():
    assert nn.Gelu() == nn.Gelu(approximate=False) != nn.Gelu(approximate=True)
    assert nn.LayerNorm() == nn.LayerNorm() and hash(nn.GroupNorm(2)) == hash(nn.GroupNorm(2))
    assert nn.ConvTranspose2D(3, 2, strides=2) == nn.ConvTranspose2D(3, 2, 2)
    assert nn.Embedding(5, 2) == nn.Embedding(5, 2) != nn.Embedding(5, 3)


DTYPE_LAYERS = [(nn.LayerNorm(), (4,)), (nn.GroupNorm(2), (2, 4)), (nn.RMSNorm(), (4,)),
                (nn.ConvTranspose2D(2, 2, 2), (2, 2, 1)),
                (nn.ConvTranspose2D(2, 3, 2, padding="SAME"), (2, 2, 1)),
                (nn.GlobalAvgPool(), (2, 2, 3)), (nn.Gelu(), (3,)), (nn.Gelu(True), (3,)),
                (nn.Silu(), (3,)), (nn.Elu(0.5), (3,)), (nn.Softplus(), (3,))]


def test_float32_and_bfloat16_inputs_keep_their_dtype():
    """Float32 params and input give a float32 output, input gradient and parameter gradients;
    bfloat16 ones give bfloat16; Embedding's output and table gradient take the table's dtype.
    (The dtypes of the traced forward and backward, by `jax.eval_shape`: nothing is compiled.)"""
    rng = np.random.default_rng(0)
    cases = []
    for dtype in (jnp.float32, jnp.bfloat16):
        for layer, shape in DTYPE_LAYERS:
            shapes = jax.eval_shape(lambda k, layer=layer, shape=shape: layer.init(k, shape)[0],
                                    jax.random.key(0))
            params = jax.tree.map(lambda a, dtype=dtype: jnp.asarray(
                rng.standard_normal(a.shape), dtype), shapes)
            x = jnp.asarray(rng.standard_normal((2,) + shape), dtype)
            cases.append((layer, dtype, params, x))
        cases.append((nn.Embedding(5, 3), dtype,
                      {"table": jnp.asarray(rng.standard_normal((5, 3)), dtype)},
                      jnp.array([[0, 4], [2, 2]], jnp.int32)))

    def run(arrays):
        out = []
        for (layer, *_), (params, x) in zip(cases, arrays):
            y, _, res = layer.forward(params, {}, x)
            out.append((y,) + layer.backward(params, res, jnp.ones_like(y)))
        return out

    for (layer, dtype, *_), (y, grads, dx) in zip(cases, jax.eval_shape(run,
                                                                         [c[2:] for c in cases])):
        message = f"{layer!r} in {jnp.dtype(dtype).name}"
        assert y.dtype == dtype, message
        assert all(g.dtype == dtype for g in jax.tree.leaves(grads)), message
        assert dx.dtype == (jax.dtypes.float0 if repr(layer).startswith("Embedding") else dtype), \
            message
