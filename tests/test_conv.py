"""Conv2D and the pools: three-way gradients, forward vs independent references, shapes, ties,
input errors, and the gradient check of a small CNN."""
import itertools

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import funcnn as fn
from funcnn import nn
from layer_checks import (assert_layer_gradients, assert_layer_gradients_compiled,
                          assert_layer_transforms)


def distinct_input(shape, seed=0):
    """float64 values a random permutation of an evenly spaced grid: no two entries closer than
    2/size apart, so a finite difference (h = 1e-5) never swaps a max-pool winner."""
    size = int(np.prod(shape))
    order = np.random.default_rng(seed).permutation(size)
    return jnp.asarray(((order - size / 2) / (size / 2)).reshape(shape), jnp.float64)


TABLE = [
    ("conv_valid", nn.Conv2D(3, 3), (5, 6, 2)),
    ("conv_same_even_kernel", nn.Conv2D(2, (2, 4), padding="SAME"), (5, 6, 1)),
    ("conv_stride2_valid_remainder", nn.Conv2D(2, 3, strides=2), (6, 7, 2)),  # (6−3) % 2 ≠ 0
    ("conv_stride_pair_same", nn.Conv2D(2, (3, 2), strides=(2, 3), padding="SAME"), (7, 8, 2)),
    ("maxpool_2_remainder", nn.MaxPool(2), (5, 7, 2)),
    ("maxpool_overlap", nn.MaxPool(3, strides=2), (7, 6, 2)),
    ("maxpool_rect_stride1", nn.MaxPool((2, 3), strides=1), (4, 5, 1)),
    ("avgpool_overlap", nn.AvgPool((3, 2), strides=(2, 1)), (7, 5, 2)),
    ("l2pool_2", nn.L2Pool(2), (4, 5, 2)),
    ("l2pool_overlap", nn.L2Pool(3, strides=2), (7, 7, 1)),
]


class ConvGradientTest(chex.TestCase):

    @parameterized.named_parameters(*TABLE)
    def test_three_way(self, layer, in_shape):
        with jax.enable_x64(True):
            assert_layer_gradients_compiled(layer, in_shape, x=distinct_input((3,) + in_shape, 1))

    # The shared helper, run eagerly (the compiled one above traces everything into one jit).
    @chex.variants(without_jit=True)
    @parameterized.named_parameters(TABLE[5])
    def test_three_way_eager(self, layer, in_shape):
        with jax.enable_x64(True):
            x = distinct_input((3,) + in_shape, 1)
            assert_layer_gradients(layer, in_shape, self.variant, x=x)


@pytest.mark.parametrize("name,layer,in_shape", TABLE[::2] + [TABLE[7]])   # every kind
def test_jit_vmap_value_and_grad_and_custom_vjp(name, layer, in_shape):
    assert_layer_transforms(layer, in_shape)


# ---------------------------------------------------------------------------------------------
# Forward against independent references (explicit loops over output pixels, in numpy).


def numpy_conv(x, w, b, strides, pads):
    x = np.pad(np.asarray(x), ((0, 0), pads[0], pads[1], (0, 0)))
    kh, kw = w.shape[:2]
    ho = (x.shape[1] - kh) // strides[0] + 1
    wo = (x.shape[2] - kw) // strides[1] + 1
    y = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    for p, q in itertools.product(range(ho), range(wo)):
        patch = x[:, p * strides[0]:p * strides[0] + kh, q * strides[1]:q * strides[1] + kw]
        y[:, p, q] = np.einsum("nijc,ijcd->nd", patch, np.asarray(w)) + np.asarray(b)
    return y


def numpy_pool(x, window, strides, reduce):
    x = np.asarray(x)
    ho = (x.shape[1] - window[0]) // strides[0] + 1
    wo = (x.shape[2] - window[1]) // strides[1] + 1
    y = np.zeros((x.shape[0], ho, wo, x.shape[3]))
    for p, q in itertools.product(range(ho), range(wo)):
        patch = x[:, p * strides[0]:p * strides[0] + window[0],
                  q * strides[1]:q * strides[1] + window[1]]
        y[:, p, q] = reduce(patch.reshape(x.shape[0], -1, x.shape[3]))
    return y


# (in_hw, kernel, strides, padding, TensorFlow's pads ((top, bottom), (left, right)))
CONV_CASES = [
    ((5, 5), (3, 3), (1, 1), "VALID", ((0, 0), (0, 0))),
    ((5, 6), (3, 3), (1, 1), "SAME", ((1, 1), (1, 1))),
    ((6, 6), (2, 2), (1, 1), "SAME", ((0, 1), (0, 1))),     # even kernel: the extra pad at the end
    ((7, 6), (3, 3), (2, 2), "SAME", ((1, 1), (0, 1))),     # ⌈7/2⌉=4: 3 pads; ⌈6/2⌉=3: 1 pad
    ((8, 5), (5, 2), (3, 2), "SAME", ((1, 2), (0, 1))),
    ((7, 9), (3, 4), (2, 3), "VALID", ((0, 0), (0, 0))),
    ((7, 9), (3, 3), (1, 3), "VALID", ((0, 0), (0, 0))),     # columns don't overlap, rows do
]


@pytest.mark.parametrize("in_hw,kernel,strides,padding,pads", CONV_CASES)
def test_conv_forward_matches_loop_reference_and_shape_inference(in_hw, kernel, strides, padding,
                                                                 pads, x64):
    layer = nn.Conv2D(3, kernel, strides, padding)
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal(kernel + (2, 3))), "b": jnp.arange(3.0)}
    x = jnp.asarray(rng.standard_normal((2,) + in_hw + (2,)))
    y, _ = jax.jit(lambda p, x: layer.apply(p, {}, x))(params, x)
    chex.assert_trees_all_close(y, numpy_conv(x, params["w"], params["b"], strides, pads),
                                rtol=1e-10, atol=1e-12)
    assert layer.output_shape(in_hw + (2,)) == y.shape[1:]
    xla_same = jax.lax.conv_general_dilated(x, params["w"], strides, padding,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    chex.assert_trees_all_close(y, xla_same + params["b"].reshape(1, 1, 1, 3), rtol=1e-10)


POOL_CASES = [((2, 2), None, (4, 6)), ((2, 2), None, (5, 7)), ((3, 3), (2, 2), (7, 8)),
              ((2, 3), (1, 2), (4, 7)), ((3, 1), (1, 1), (5, 3)), ((4, 4), None, (4, 4))]
REDUCERS = [(nn.MaxPool, lambda p: p.max(axis=1)), (nn.AvgPool, lambda p: p.mean(axis=1)),
            (nn.L2Pool, lambda p: np.sqrt((p ** 2).sum(axis=1)))]


@pytest.mark.parametrize("window,strides,in_hw", POOL_CASES)
@pytest.mark.parametrize("factory,reduce", REDUCERS)
def test_pool_forward_matches_loop_reference_and_shape_inference(factory, reduce, window, strides,
                                                                 in_hw, x64):
    layer = factory(window, strides)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2,) + in_hw + (3,)))
    y, _ = layer.apply({}, {}, x)
    y_forward, _, _ = layer.forward({}, {}, x)
    expected = numpy_pool(x, window, window if strides is None else strides, reduce)
    chex.assert_trees_all_close(y, expected, rtol=1e-12)
    chex.assert_trees_all_close(y_forward, expected, rtol=1e-12)
    assert layer.output_shape(in_hw + (3,)) == y.shape[1:]


# ---------------------------------------------------------------------------------------------
# Max-pool ties, L2 at zero, branches.


@pytest.mark.parametrize("strides", [None, (1, 1)])  # the reshape path and the strided-slice path
def test_maxpool_ties_go_to_the_first_entry_in_row_major_order(strides):
    layer = nn.MaxPool(2, strides)
    x = jnp.array([[0.0, 5.0, 1.0, 1.0],
                   [5.0, 5.0, 1.0, 1.0]]).reshape(1, 2, 4, 1)
    y, _, res = layer.forward({}, {}, x)
    _, dx = layer.backward({}, res, jnp.ones_like(y))
    if strides is None:   # windows [[0,5],[5,5]] and [[1,1],[1,1]]: winners (0,1) and (0,2)
        expected = [[0, 1, 1, 0], [0, 0, 0, 0]]
    else:                 # three windows: winners (0,1), (0,1) again (tied with (1,1)), (0,2)
        expected = [[0, 2, 1, 0], [0, 0, 0, 0]]
    chex.assert_trees_all_equal(dx[0, :, :, 0], jnp.array(expected, jnp.float32))
    chex.assert_trees_all_equal(layer.branches({}, {}, x)[0, :, :, 0],
                                jnp.array([[1, 0]] if strides is None else [[1, 0, 0]]))


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("algorithm", ["stack", "xla"])   # a selection, and reduce_window max
@pytest.mark.parametrize("strides", [None, (1, 1)])
def test_maxpool_autodiff_sends_ties_to_the_first_entry_as_the_hand_written_backward(strides,
                                                                                      algorithm,
                                                                                      train):
    layer = nn.MaxPool(2, strides, algorithm=algorithm)
    x = jnp.array([[0.0, 5.0, 1.0, 1.0],
                   [5.0, 5.0, 1.0, 1.0]]).reshape(1, 2, 4, 1)
    y, _, res = layer.forward({}, {}, x)
    _, hand = layer.backward({}, res, jnp.ones_like(y))
    auto = jax.grad(lambda x: jnp.sum(layer.apply({}, {}, x, train=train)[0]))(x)
    chex.assert_trees_all_equal(auto, hand)


def test_maxpool_overlapping_winner_collects_every_window():
    x = jnp.zeros((1, 3, 3, 1)).at[0, 1, 1, 0].set(9.0)
    layer = nn.MaxPool(2, strides=1)
    y, _, res = layer.forward({}, {}, x)
    _, dx = layer.backward({}, res, jnp.arange(1.0, 5.0).reshape(1, 2, 2, 1))
    assert float(dx[0, 1, 1, 0]) == 10.0 and float(jnp.sum(jnp.abs(dx))) == 10.0


def test_l2pool_gradient_is_zero_and_finite_at_an_all_zero_window():
    x = jnp.zeros((1, 4, 4, 1)).at[0, 2:, 2:, 0].set(jnp.array([[3.0, 0.0], [0.0, 4.0]]))
    layer = nn.L2Pool(2)
    y, _, res = layer.forward({}, {}, x)
    chex.assert_trees_all_close(y[0, :, :, 0], jnp.array([[0.0, 0.0], [0.0, 5.0]]))
    _, dx = layer.backward({}, res, jnp.ones_like(y))
    chex.assert_tree_all_finite(dx)
    expected = jnp.zeros((4, 4)).at[2, 2].set(0.6).at[3, 3].set(0.8)
    chex.assert_trees_all_close(dx[0, :, :, 0], expected)


@pytest.mark.parametrize("train", [False, True])
def test_l2pool_autodiff_is_zero_and_finite_at_an_all_zero_window(train):
    """jax.grad follows the hand-written rule: √ at 0 has no derivative, the gradient is 0."""
    layer = nn.L2Pool(2)
    x = jnp.zeros((1, 4, 4, 1)).at[0, 0, 0, 0].set(1.0)   # three of the four windows are zero
    y, _, res = layer.forward({}, {}, x)
    _, hand = layer.backward({}, res, jnp.ones_like(y))
    auto = jax.grad(lambda x: jnp.sum(layer.apply({}, {}, x, train=train)[0]))(x)
    chex.assert_tree_all_finite(auto)
    chex.assert_trees_all_close(auto, hand)
    chex.assert_trees_all_close(auto, jnp.zeros_like(x).at[0, 0, 0, 0].set(1.0))


# ---------------------------------------------------------------------------------------------
# Input errors.


@pytest.mark.parametrize("bad,words", [
    ((2, 28, 28), ["Conv2D", "(batch, height, width, 1)", "(2, 28, 28)", "rank 3"]),
    ((28, 28, 1), ["Conv2D", "(28, 28, 1)", "rank 3"]),
    ((2, 1, 28, 28), ["Conv2D", "(batch, height, width, 1)", "(2, 1, 28, 28)", "28 channels"]),
    ((2, 28, 28, 3), ["Conv2D", "(batch, height, width, 1)", "(2, 28, 28, 3)", "3 channels"]),
])
def test_conv_rejects_non_nhwc_or_wrong_channels(bad, words):
    layer = nn.Conv2D(4, 5)
    params, state = {"w": jnp.zeros((5, 5, 1, 4)), "b": jnp.zeros(4)}, {}
    for run in (layer.apply, jax.jit(layer.apply)):
        with pytest.raises(ValueError) as error:
            run(params, state, jnp.zeros(bad))
        for word in words:
            assert word in str(error.value), str(error.value)


def test_conv_and_pool_reject_inputs_smaller_than_the_window():
    with pytest.raises(ValueError, match="Conv2D: expected a spatial size of at least 5"):
        nn.Conv2D(4, 5).init(jax.random.key(0), (4, 8, 1))
    with pytest.raises(ValueError, match="MaxPool: expected an NHWC input"):
        nn.MaxPool(2).apply({}, {}, jnp.zeros((4, 4)))
    with pytest.raises(ValueError, match="AvgPool: expected a spatial size of at least 3"):
        nn.AvgPool(3).apply({}, {}, jnp.zeros((1, 2, 5, 1)))
    with pytest.raises(ValueError, match="padding"):
        nn.Conv2D(4, 3, padding="same")
    with pytest.raises(ValueError, match="kernel"):
        nn.Conv2D(4, (3, 3, 3))


@pytest.mark.parametrize("params,words", [
    ({"w": jnp.zeros((5, 5, 1, 4)), "b": jnp.zeros(4)},        # a 5×5 model's checkpoint
     ["Conv2D", "params['w']", "(3, 3, cin, 4)", "(5, 5, 1, 4)"]),
    ({"w": jnp.zeros((3, 3, 1, 8)), "b": jnp.zeros(8)},
     ["Conv2D", "(3, 3, cin, 4)", "(3, 3, 1, 8)"]),
    ({"w": jnp.zeros((9, 4)), "b": jnp.zeros(4)}, ["Conv2D", "(3, 3, cin, 4)", "(9, 4)"]),
    ({"w": jnp.zeros((3, 3, 1, 4)), "b": jnp.zeros(5)}, ["Conv2D", "params['b']", "(4,)", "(5,)"]),
    ({"w": jnp.zeros((3, 3, 1, 4))}, ["Conv2D", "'b'", "'w'"]),
])
def test_conv_rejects_parameters_of_another_layer(params, words):
    layer, x = nn.Conv2D(4, 3, padding="SAME"), jnp.zeros((2, 6, 6, 1))
    for run in (lambda p, x: layer.apply(p, {}, x), lambda p, x: layer.forward(p, {}, x),
                lambda p, x: layer.apply(p, {}, x, train=True),
                jax.jit(lambda p, x: layer.apply(p, {}, x))):
        with pytest.raises(ValueError) as error:
            run(params, x)
        for word in words:
            assert word in str(error.value), str(error.value)


def test_numpy_integers_are_accepted_as_sizes():
    layer = nn.Conv2D(np.int64(4), np.int64(3), strides=(np.int32(2), 1))
    params, _ = layer.init(jax.random.key(0), (np.int64(7), 7, 1))
    chex.assert_shape(params["w"], (3, 3, 1, 4))
    assert layer.output_shape((7, 7, 1)) == (3, 5, 4)
    assert nn.MaxPool(np.int64(2)).output_shape((4, 4, 1)) == (2, 2, 1)
    with pytest.raises(ValueError, match="Conv2D: expected the kernel size as a positive int"):
        nn.Conv2D(4, 3.0)
    with pytest.raises(ValueError, match="Conv2D: expected a per-example input shape"):
        layer.init(jax.random.key(0), 49)


# ---------------------------------------------------------------------------------------------
# The whole CNN of examples/mnist_cnn.py in miniature, through fn.gradcheck.check.


def test_gradient_check_of_a_small_cnn_passes_with_kinks_reported():
    model = nn.serial(
        nn.Conv2D(3, 3), nn.BatchNorm(), nn.Relu(), nn.MaxPool(2),
        nn.Conv2D(4, 2, padding="SAME"), nn.Relu(), nn.MaxPool(2), nn.Flatten(),
        nn.Dense(6), nn.Relu(), nn.Dropout(0.5), nn.Dense(3))
    # numpy draws instead of model.init: threefry sampling per shape costs seconds of compilation
    rng = np.random.default_rng(0)
    shapes, state = jax.eval_shape(lambda k: model.init(k, (10, 10, 1)), jax.random.key(0))
    params = jax.tree.map(lambda s: 0.5 * rng.standard_normal(s.shape), shapes)
    state = jax.tree.map(lambda s: np.full(s.shape, 0.5), state)   # only used at eval anyway
    x = rng.standard_normal((4, 10, 10, 1))
    labels = jnp.array([0, 1, 2, 1])
    report = fn.gradcheck.check(model, fn.losses.softmax_cross_entropy, params, state, x, labels,
                                key=jax.random.key(2), samples=6)
    assert report.passed, str(report)
    assert len(report.leaves) == 10   # 4 weight/bias pairs and BatchNorm's scale and offset
    for leaf in report.leaves:
        assert leaf.hand_vs_autodiff <= 1e-9, str(report)
    assert len(report.kinks) <= 3, str(report)   # kinks are rare and only excused, never hidden


def _primitives(f, *args):
    """Every primitive in the jaxpr of f(*args), loop and jit bodies included."""
    names = []

    def subjaxprs(value):   # jax.extend.core.jaxprs_in_params, which jax 0.8.0 lacks
        if hasattr(value, "eqns"):
            yield value
        elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
            yield value.jaxpr
        elif isinstance(value, (tuple, list)):
            for item in value:
                yield from subjaxprs(item)

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            names.append(eqn.primitive.name)
            for sub in subjaxprs(tuple(eqn.params.values())):
                walk(sub)

    walk(jax.make_jaxpr(f)(*args).jaxpr)
    return names


def _conv_programs(layer, params, x):
    """The hand-written forward+backward, jax.grad of apply(train=True), and apply at eval."""

    def hand(params, x):
        y, _, res = layer.forward(params, {}, x)
        return layer.backward(params, res, y)

    def autodiff(params, x):
        return jax.grad(lambda p, x: jnp.sum(layer.apply(p, {}, x, train=True)[0]),
                        argnums=(0, 1))(params, x)

    def evaluation(params, x):
        return layer.apply(params, {}, x)[0]

    return hand, autodiff, evaluation


@pytest.mark.parametrize("strides,padding", [(1, "VALID"), (2, "SAME")])
def test_gemm_algorithm_is_matrix_products_in_training_and_evaluation(strides, padding):
    """algorithm="gemm": every pass — hand-written forward/backward, jax.grad of apply, and
    evaluation — is matrix products over shared im2col patches (convolutions there ran 2-60x
    slower in lax.scan on XLA:CPU), on whatever backend the test runs."""
    layer = nn.Conv2D(4, 3, strides, padding, algorithm="gemm")
    params, x = {"w": jnp.zeros((3, 3, 2, 4)), "b": jnp.zeros(4)}, jnp.zeros((2, 7, 7, 2))
    hand, autodiff, evaluation = _conv_programs(layer, params, x)
    assert _primitives(hand, params, x).count("dot_general") == 3   # y, dW, dx per kernel row
    for f in (hand, autodiff, evaluation):
        assert "conv_general_dilated" not in _primitives(f, params, x)


@pytest.mark.parametrize("strides,padding", [(1, "VALID"), (2, "SAME")])
def test_xla_algorithm_is_canonical_convolutions_only(strides, padding):
    """algorithm="xla": evaluation is one NHWC/HWIO/NHWC conv (XLA's fast layout), the
    hand-written backward two more in the same layout, and nothing is a matrix product."""
    layer = nn.Conv2D(4, 3, strides, padding, algorithm="xla")
    params, x = {"w": jnp.zeros((3, 3, 2, 4)), "b": jnp.zeros(4)}, jnp.zeros((2, 7, 7, 2))
    hand, autodiff, evaluation = _conv_programs(layer, params, x)
    convs = [e for e in jax.make_jaxpr(evaluation)(params, x).eqns
             if e.primitive.name == "conv_general_dilated"]
    numbers = convs[0].params["dimension_numbers"]
    assert len(convs) == 1 and (numbers.lhs_spec, numbers.rhs_spec, numbers.out_spec) == \
        ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2)), numbers
    assert _primitives(hand, params, x).count("conv_general_dilated") == 3
    for f in (hand, autodiff, evaluation):
        assert "dot_general" not in _primitives(f, params, x)


@pytest.mark.parametrize("algorithm,uses_window_ops", [("stack", False), ("xla", True)])
def test_maxpool_algorithm_decides_how_autodiff_sees_the_pool(algorithm, uses_window_ops):
    """"stack": the gradient of apply avoids reduce_window's select-and-scatter, which ran 4-20x
    slower inside lax.scan on XLA:CPU; "xla": apply is reduce_window max, in train and eval."""
    layer, x = nn.MaxPool(3, strides=2, algorithm=algorithm), jnp.zeros((2, 7, 7, 2))
    for train in (False, True):
        grad = jax.grad(lambda x: jnp.sum(layer.apply({}, {}, x, train=train)[0]))
        names = _primitives(grad, x)
        assert any(name.startswith(("reduce_window", "select_and")) for name in names) == \
            uses_window_ops, names


def test_auto_is_the_fast_formulation_of_each_backend_and_mode():
    from funcnn.nn.conv import auto_algorithm
    cpu = jax.default_backend() == "cpu"
    assert auto_algorithm("auto", True, "gemm") == ("gemm" if cpu else "xla")
    assert auto_algorithm("auto", True, "stack") == ("stack" if cpu else "xla")
    assert auto_algorithm("auto", False, "gemm") == "xla"
    for name in ("gemm", "xla", "stack"):
        for train in (False, True):
            assert auto_algorithm(name, train, "gemm") == name
    with pytest.raises(ValueError, match="Conv2D: expected algorithm to be one of 'auto', "
                                         "'gemm', 'xla', received 'im2col'"):
        nn.Conv2D(4, 3, algorithm="im2col")
    with pytest.raises(ValueError, match="MaxPool: expected algorithm"):
        nn.MaxPool(2, algorithm="gemm")


def _small_cnn(conv, pool):
    return nn.serial(nn.Conv2D(8, 3, padding="SAME", algorithm=conv), nn.Relu(),
                     nn.MaxPool(2, algorithm=pool), nn.Conv2D(4, 2, strides=2, algorithm=conv))


def _outputs_by_mode(model, params, state, x):
    """apply(train=True), the hand-written forward(train=True), then the same at eval — in one
    program, so that a GPU autotunes each convolution once for all four."""
    return jax.jit(lambda p, x: [run(p, state, x, train=train)[0] for train in (True, False)
                                 for run in (model.apply, model.forward)])(params, x)


@pytest.mark.parametrize("conv,pool", [("gemm", "stack"), ("xla", "xla"), ("gemm", "xla")])
def test_an_explicit_algorithm_computes_the_same_bits_in_training_and_evaluation(conv, pool):
    model = _small_cnn(conv, pool)
    params, state = model.init(jax.random.key(0), (9, 9, 3))
    x = jax.random.normal(jax.random.key(1), (4, 9, 9, 3))
    chex.assert_trees_all_equal(*_outputs_by_mode(model, params, state, x))


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 1e-5), (jnp.float64, 1e-12)])
def test_auto_agrees_between_training_and_evaluation_and_with_every_algorithm(dtype, rtol):
    """apply and forward use one formulation per mode (the same bits); training and evaluation
    (GEMMs and lax.conv on XLA:CPU) and every explicit choice agree up to float rounding (in
    full float32: a GPU would otherwise multiply in TF32)."""
    with jax.enable_x64(dtype == jnp.float64), jax.default_matmul_precision("float32"):
        model = _small_cnn("auto", "auto")
        params, state = model.init(jax.random.key(0), (9, 9, 3))
        params = jax.tree.map(lambda a: a.astype(dtype), params)
        x = jax.random.normal(jax.random.key(1), (4, 9, 9, 3), dtype)
        train, train_forward, evaluation, eval_forward = _outputs_by_mode(model, params, state, x)
        chex.assert_trees_all_equal(train, train_forward)
        chex.assert_trees_all_equal(evaluation, eval_forward)
        for conv, pool in [("auto", "auto"), ("gemm", "stack"), ("xla", "xla")]:
            chex.assert_trees_all_close(_small_cnn(conv, pool).apply(params, state, x)[0], train,
                                        rtol=rtol, atol=rtol)


@pytest.mark.parametrize("in_hw,kernel,strides,padding,pads", CONV_CASES)
def test_gemm_and_convolution_paths_agree(in_hw, kernel, strides, padding, pads, x64):
    """im2col GEMM == lax.conv forward, and the GEMM backward == the transposed/kernel
    convolutions == jax.vjp of lax.conv, on every geometry (SAME pads, strides, remainders)."""
    from funcnn.nn import conv
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2,) + in_hw + (3,)))
    w = jnp.asarray(rng.standard_normal(kernel + (3, 4)))
    y = jax.lax.conv_general_dilated(x, w, strides, pads,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    chex.assert_trees_all_close(conv.conv2d_as_gemm(x, w, strides, pads)[0], y, rtol=1e-12,
                                atol=1e-12)
    dy = jnp.asarray(rng.standard_normal(y.shape))
    patches, _ = conv.im2col(x, kernel, strides, pads)
    gemm = conv.conv2d_gemm_backward(patches, w, dy, in_hw, strides, pads)
    convolutions = (conv.conv2d_kernel_grad(x, dy, kernel, strides, pads),
                    conv.conv2d_input_grad(dy, w, in_hw, strides, pads))
    _, vjp = jax.vjp(lambda w, x: jax.lax.conv_general_dilated(
        x, w, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC")), w, x)
    chex.assert_trees_all_close(gemm, convolutions, rtol=1e-10, atol=1e-12)
    chex.assert_trees_all_close(gemm, vjp(dy), rtol=1e-10, atol=1e-12)


ALGORITHM_TABLE = [
    (f"{name}_{algorithm}", factory(algorithm), in_shape)
    for name, factory, in_shape, algorithms in [
        ("conv_same_stride", lambda a: nn.Conv2D(2, (3, 2), strides=(2, 3), padding="SAME",
                                                 algorithm=a), (7, 8, 2), ("gemm", "xla")),
        ("conv_valid_remainder", lambda a: nn.Conv2D(2, 3, strides=2, algorithm=a), (6, 7, 2),
         ("gemm", "xla")),
        ("maxpool_overlap", lambda a: nn.MaxPool(3, strides=2, algorithm=a), (7, 6, 2),
         ("stack", "xla"))]
    for algorithm in algorithms]


class AlgorithmTest(chex.TestCase):
    """Each algorithm, whatever the backend, three-way checked in training mode."""

    @parameterized.named_parameters(*ALGORITHM_TABLE)
    def test_three_way_in_training_mode(self, layer, in_shape):
        with jax.enable_x64(True):
            assert_layer_gradients_compiled(layer, in_shape, train=True,
                                            x=distinct_input((3,) + in_shape, 1))
