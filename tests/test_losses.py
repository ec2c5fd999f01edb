"""Every loss: hand-written .grad == jax.grad (float64) == finite differences; closed forms;
stability at extreme inputs; clear errors on bad labels."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import funcnn as fn
from funcnn import losses as L
from layer_checks import is_jitted


def _inputs(name, seed=0):
    """(outputs, targets, kwargs) in float64, away from kinks, for the loss called `name`."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    z = jax.random.normal(k1, (4, 5), jnp.float64)
    labels = jnp.array([0, 3, 1, 4])
    probs = jax.nn.softmax(z, axis=-1)
    bits = (jax.random.uniform(k2, (4, 5)) > 0.5).astype(jnp.float64)
    soft_rows = jax.nn.softmax(2 * jax.random.normal(k2, (4, 5), jnp.float64), axis=-1)
    return {
        "mean_squared_error": (z, jax.random.normal(k2, (4, 5), jnp.float64), {}),
        "l1": (z, z + jnp.where(bits > 0, 0.3, -0.4), {}),
        "binary_cross_entropy": (jax.nn.sigmoid(z), jax.random.uniform(k2, (4, 5), jnp.float64), {}),
        "sigmoid_binary_cross_entropy": (3 * z, bits, {}),
        "softmax_cross_entropy": (z, labels, {}),
        "softmax_cross_entropy_rows": (z, soft_rows, {}),
        "log_likelihood": (probs, labels, {}),
        "log_likelihood_rows": (probs, soft_rows, {}),
        "multiclass_hinge": (z, labels, {"margin": 1.0}),
        "multiclass_hinge_squared": (z, labels, {"margin": 0.5, "squared": True}),
        "multilabel_hinge": (z, 2 * bits - 1, {}),
        "multilabel_logistic": (z, bits, {}),
    }[name]


LOSSES = [(case, loss, case) for case, loss in [
    ("mean_squared_error", L.mean_squared_error), ("l1", L.l1),
    ("binary_cross_entropy", L.binary_cross_entropy),
    ("sigmoid_binary_cross_entropy", L.sigmoid_binary_cross_entropy),
    ("softmax_cross_entropy", L.softmax_cross_entropy),
    ("softmax_cross_entropy_rows", L.softmax_cross_entropy),
    ("log_likelihood", L.log_likelihood), ("log_likelihood_rows", L.log_likelihood),
    ("multiclass_hinge", L.multiclass_hinge), ("multiclass_hinge_squared", L.multiclass_hinge),
    ("multilabel_hinge", L.multilabel_hinge), ("multilabel_logistic", L.multilabel_logistic)]]


class LossGradientTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*LOSSES)
    def test_hand_written_grad_three_way(self, loss, case):
        with jax.enable_x64(True):
            outputs, targets, kwargs = _inputs(case)
            hand = self.variant(lambda o, t: loss.grad(o, t, **kwargs))(outputs, targets)
            auto = jax.grad(lambda o: loss(o, targets, **kwargs))(outputs)
            chex.assert_trees_all_close(hand, auto, rtol=1e-9, atol=1e-15)
            if is_jitted(self.variant):   # the finite differences do not depend on the variant
                return
            numerical = fn.gradcheck.numerical_grad(lambda o: loss(o, targets, **kwargs), outputs)
            assert float(jnp.max(fn.gradcheck.relative_error(hand, numerical, 1e-10))) < 1e-7

    @chex.variants(with_jit=True, without_jit=True)
    def test_max_margin_pair_gradient(self):
        with jax.enable_x64(True):
            s = jnp.array([2.0, 0.3, -1.0, 0.9])
            c = jnp.array([0.5, 0.1, -2.5, 1.2])
            d_true, d_corrupt = self.variant(L.max_margin.grad)(s, c)
            auto = jax.grad(L.max_margin, argnums=(0, 1))(s, c)
            chex.assert_trees_all_close((d_true, d_corrupt), auto, rtol=1e-12)
            chex.assert_trees_all_close(d_corrupt, jnp.array([0.0, 0.25, 0.0, 0.25]))
            assert math.isclose(float(L.max_margin(s, c)), (0.8 + 1.3) / 4)


def test_closed_forms(x64):
    z = jnp.array([[3.2, 5.1, -1.7]])
    assert math.isclose(float(L.multiclass_hinge(z, jnp.array([0]))), 2.9, rel_tol=1e-12)
    assert math.isclose(float(L.multiclass_hinge(z, jnp.array([0]), squared=True)),
                        2.9**2, rel_tol=1e-12)
    assert math.isclose(float(L.softmax_cross_entropy(jnp.zeros((2, 10)), jnp.array([3, 7]))),
                        math.log(10), rel_tol=1e-12)
    p = np.exp(z[0]) / np.exp(z[0]).sum()
    assert math.isclose(float(L.log_likelihood(jnp.asarray(p[None]), jnp.array([1]))),
                        -math.log(p[1]), rel_tol=1e-12)
    f, y = jnp.array([[1.0, -2.0], [0.5, 4.0]]), jnp.array([[0.0, 0.0], [1.0, 1.0]])
    assert math.isclose(float(L.mean_squared_error(f, y)), (1 + 4 + 0.25 + 9) / 4)
    assert math.isclose(float(L.l1(f, y)), (1 + 2 + 0.5 + 3) / 4)
    scores = jnp.array([[2.0, -0.5]])
    assert math.isclose(float(L.multilabel_hinge(scores, jnp.array([[1.0, 1.0]]))), 1.5)
    t = jnp.array([[1.0, 0.0]])
    expected = -(math.log(1 / (1 + math.exp(-2))) + math.log(1 - 1 / (1 + math.exp(0.5))))
    assert math.isclose(float(L.multilabel_logistic(scores, t)), expected, rel_tol=1e-12)
    assert math.isclose(float(L.sigmoid_binary_cross_entropy(scores, t)), expected / 2,
                        rel_tol=1e-12)


def test_matches_torch_where_installed(x64):
    torch = pytest.importorskip("torch", reason="PyTorch is a test-only reference; not installed")
    F = torch.nn.functional
    z, labels, _ = _inputs("softmax_cross_entropy")
    tz, tl = torch.tensor(np.asarray(z)), torch.tensor(np.asarray(labels)).long()
    assert math.isclose(float(L.softmax_cross_entropy(z, labels)), float(F.cross_entropy(tz, tl)),
                        rel_tol=1e-12)
    assert math.isclose(float(L.multiclass_hinge(z, labels)),
                        float(F.multi_margin_loss(tz, tl)) * z.shape[1], rel_tol=1e-12)
    p, t, _ = _inputs("binary_cross_entropy")
    assert math.isclose(float(L.binary_cross_entropy(p, t)),
                        float(F.binary_cross_entropy(torch.tensor(np.asarray(p)),
                                                     torch.tensor(np.asarray(t)))), rel_tol=1e-12)


@pytest.mark.parametrize("loss,outputs,targets", [
    (L.softmax_cross_entropy, jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]]), jnp.array([1, 0])),
    (L.sigmoid_binary_cross_entropy, jnp.array([[1e4, -1e4]]), jnp.array([[0.0, 1.0]])),
    (L.multilabel_logistic, jnp.array([[1e4, -1e4]]), jnp.array([[0.0, 1.0]])),
    (L.binary_cross_entropy, jnp.array([[0.0, 1.0, 0.0, 1.0]]), jnp.array([[1.0, 0.0, 0.0, 1.0]])),
    (L.log_likelihood, jnp.array([[0.0, 1.0], [1.0, 0.0]]), jnp.array([0, 0])),
    (L.multiclass_hinge, jnp.array([[1e4, -1e4, 0.0]]), jnp.array([1])),
])
def test_finite_at_extreme_inputs(loss, outputs, targets):
    value, grad = loss(outputs, targets), loss.grad(outputs, targets)
    chex.assert_tree_all_finite((value, grad))
    assert float(value) > 0


def test_extreme_logits_give_the_exact_limits():
    z = jnp.array([[1e4, -1e4]])
    assert float(L.softmax_cross_entropy(z, jnp.array([1]))) == pytest.approx(2e4)
    assert float(L.softmax_cross_entropy(z, jnp.array([0]))) == 0.0
    assert float(L.sigmoid_binary_cross_entropy(z, jnp.array([[1.0, 0.0]]))) == 0.0
    chex.assert_trees_all_close(L.softmax_cross_entropy.grad(z, jnp.array([1])),
                                jnp.array([[1.0, -1.0]]))


@pytest.mark.parametrize("labels,match", [
    (jnp.array([0, 10]), r"expected labels in \[0, 10\).*received label 10"),
    (jnp.array([-1, 2]), r"received label -1"),
    (jnp.array([0, 1, 2]), r"expected int labels of shape \(2,\)"),
    (jnp.zeros((2, 9)), r"probability rows of shape \(2, 10\)"),
])
def test_bad_labels_raise_clear_errors(labels, match):
    with pytest.raises(ValueError, match=match):
        L.softmax_cross_entropy(jnp.zeros((2, 10)), labels)
    with pytest.raises(ValueError, match=match):
        L.softmax_cross_entropy.grad(jnp.zeros((2, 10)), labels)


def test_shape_mismatch_and_float_labels_for_hinge():
    with pytest.raises(ValueError, match=r"mean_squared_error: expected targets of the outputs' "
                                         r"shape \(2, 3\), received \(3, 2\)"):
        L.mean_squared_error(jnp.zeros((2, 3)), jnp.zeros((3, 2)))
    with pytest.raises(TypeError, match="multiclass_hinge: expected int class ids"):
        L.multiclass_hinge(jnp.zeros((2, 3)), jnp.zeros((2, 3)))


def test_labels_are_not_checked_under_jit_but_still_compile():
    loss = jax.jit(L.softmax_cross_entropy)
    assert np.isfinite(float(loss(jnp.zeros((2, 3)), jnp.array([0, 2]))))


def test_losses_have_docstrings_with_the_formula():
    for _, loss, _ in LOSSES:
        assert loss.__doc__ and "Gradient" in loss.__doc__, loss.name


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
@pytest.mark.parametrize("shape", [(6,), (2, 3, 4)])
@pytest.mark.parametrize("loss,pm1", [(L.multilabel_logistic, False), (L.multilabel_hinge, True)])
def test_multilabel_grad_for_any_rank(loss, pm1, shape, x64):
    # Sum over the last axis, mean over the others (none for a single example): the gradient
    # divides by the number of examples, not by shape[0].
    z = jax.random.normal(jax.random.key(0), shape, jnp.float64)
    bits = (jax.random.uniform(jax.random.key(1), shape) > 0.5).astype(jnp.float64)
    t = 2 * bits - 1 if pm1 else bits
    hand = loss.grad(z, t)
    chex.assert_trees_all_close(hand, jax.grad(lambda o: loss(o, t))(z), rtol=1e-12, atol=1e-15)
    numerical = fn.gradcheck.numerical_grad(lambda o: loss(o, t), z)
    assert float(jnp.max(fn.gradcheck.relative_error(hand, numerical, 1e-10))) < 1e-7


def test_multilabel_rejects_scalar_outputs():
    with pytest.raises(ValueError, match=r"multilabel_hinge: expected outputs of shape "
                                         r"\(\.\.\., attributes\), received shape \(\)"):
        L.multilabel_hinge(jnp.array(0.5), jnp.array(1.0))


# (loss, outputs, targets, kwargs) exactly at a kink or on the clamp of ln.
AT_KINKS = {
    "l1_tie": (L.l1, jnp.array([[1.0, 2.0]]), jnp.array([[1.0, 1.0]]), {}),
    "hinge_margin_exactly_0": (L.multiclass_hinge, jnp.array([[1.0, 0.0, 0.0]]), jnp.array([0]),
                               {}),
    "hinge_equal_scores": (L.multiclass_hinge, jnp.array([[1.0, 0.0, 1.0]]), jnp.array([0]), {}),
    "hinge_margin0_ties": (L.multiclass_hinge, jnp.array([[1.0, 0.0, 1.0], [2.0, 2.0, 2.0]]),
                           jnp.array([0, 1]), {"margin": 0.0}),
    "hinge_squared_tie": (L.multiclass_hinge, jnp.array([[1.0, 0.0, 1.0]]), jnp.array([0]),
                          {"squared": True, "margin": 0.0}),
    "multilabel_hinge_tie": (L.multilabel_hinge, jnp.array([[1.0, -1.0, 0.5]]),
                             jnp.array([[1.0, -1.0, 1.0]]), {}),
    "bce_p0_t0": (L.binary_cross_entropy, jnp.array([[0.0, 0.3]]), jnp.array([[0.0, 1.0]]), {}),
    "bce_p1_t1": (L.binary_cross_entropy, jnp.array([[1.0, 0.3]]), jnp.array([[1.0, 1.0]]), {}),
    "bce_p0_t1": (L.binary_cross_entropy, jnp.array([[0.0, 1.0]]), jnp.array([[1.0, 0.0]]), {}),
    "bce_p_below_1e-12": (L.binary_cross_entropy, jnp.array([[1e-15, 1 - 1e-14]]),
                          jnp.array([[0.0, 1.0]]), {}),
    "bce_p_below_1e-12_t_soft": (L.binary_cross_entropy, jnp.array([[1e-14, 0.3]]),
                                 jnp.array([[1e-3, 1.0]]), {}),
    "log_likelihood_a_on_clamp": (L.log_likelihood, jnp.array([[1e-50, 1.0 - 1e-50]]),
                                  jnp.array([0]), {}),
    "log_likelihood_a_0": (L.log_likelihood, jnp.array([[0.0, 1.0]]), jnp.array([0]), {}),
}


@pytest.mark.parametrize("case", list(AT_KINKS))
def test_hand_grad_equals_autodiff_at_kinks_and_clamps(case, x64):
    loss, outputs, targets, kwargs = AT_KINKS[case]
    hand = loss.grad(outputs, targets, **kwargs)
    auto = jax.grad(lambda o: loss(o, targets, **kwargs))(outputs)
    chex.assert_tree_all_finite(hand)
    chex.assert_trees_all_close(hand, auto, rtol=1e-12, atol=0)


def test_max_margin_grad_at_the_tie_equals_autodiff(x64):
    s, c = jnp.array([1.0, 2.0, 0.5]), jnp.array([0.0, 0.0, 0.0])   # margins 0, −1, 0.5
    chex.assert_trees_all_close(L.max_margin.grad(s, c),
                                jax.grad(L.max_margin, argnums=(0, 1))(s, c), rtol=1e-12, atol=0)


def test_bce_gradient_is_the_derivative_near_the_clamp(x64):
    # Small p (1e-15 < 1e-12, far from the clamp of ln at e⁻¹⁰⁰): the exact derivative
    # −t/p + (1 − t)/(1 − p), which finite differences confirm, not a floored (p − t)/1e-12.
    p, t = jnp.array([[1e-15, 1e-14, 1 - 1e-14]]), jnp.array([[0.0, 1e-3, 1.0]])
    expected = (-t / p + (1 - t) / (1 - p)) / 3
    hand = L.binary_cross_entropy.grad(p, t)
    chex.assert_trees_all_close(hand, expected, rtol=1e-9)
    # Finite differences at p = 1e-14 with h = 1e-17 (1 − p ± h would round away: not there).
    numerical = fn.gradcheck.numerical_grad(lambda q: L.binary_cross_entropy(q, t), p, eps=1e-17)
    assert float(hand[0, 1]) == pytest.approx(float(numerical[0, 1]), rel=1e-6)
    assert float(L.binary_cross_entropy(jnp.array([[0.0]]), jnp.array([[1.0]]))) == 100.0


def test_float16_inputs_are_computed_in_float32():
    p = jnp.array([1.0, 0.0], jnp.float16)
    grad = L.binary_cross_entropy.grad(p, p)
    assert grad.dtype == jnp.float16
    np.testing.assert_array_equal(np.asarray(grad, np.float32), [-0.5, 0.5])  # −t/p, (1−t)/(1−p)
    f, y = jnp.full((4,), 300.0, jnp.float16), jnp.zeros(4, jnp.float16)
    assert float(L.mean_squared_error(f, y)) == 90000.0                    # > float16's 65504
    assert L.mean_squared_error.grad(f, y).dtype == jnp.float16
    np.testing.assert_array_equal(np.asarray(L.mean_squared_error.grad(f, y), np.float32), 150.0)
    s, c = jnp.array([0.5, 2.0], jnp.bfloat16), jnp.array([0.0, 0.0], jnp.float32)
    d_true, d_corrupt = L.max_margin.grad(s, c)
    assert (d_true.dtype, d_corrupt.dtype) == (jnp.bfloat16, jnp.float32)


@pytest.mark.parametrize("loss", [L.softmax_cross_entropy, L.log_likelihood])
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_one_hot_rows_of_any_dtype_equal_class_ids(loss, dtype):
    outputs = jax.nn.softmax(jnp.array([[0.2, -1.0, 0.5], [1.0, 0.0, -0.3]]), axis=-1)
    ids = jnp.array([2, 0])
    rows = jnp.eye(3, dtype=dtype)[ids]
    assert float(loss(outputs, rows)) == pytest.approx(float(loss(outputs, ids)), rel=1e-6)
    chex.assert_trees_all_close(loss.grad(outputs, rows), loss.grad(outputs, ids), rtol=1e-6)


def test_multiclass_hinge_takes_class_ids_only():
    with pytest.raises(ValueError, match=r"multiclass_hinge: expected int class ids of shape "
                                         r"\(batch,\) for scores \(2, 3\), received \(2, 3\)"):
        L.multiclass_hinge(jnp.zeros((2, 3)), jnp.eye(3, dtype=int)[:2])


def test_multiclass_hinge_squared_may_be_traced():
    s, labels = jnp.array([[0.3, 0.9, -0.2], [1.0, 0.2, 0.4]]), jnp.array([0, 2])
    for squared in (False, True):
        assert float(jax.jit(L.multiclass_hinge)(s, labels, squared=squared)) == pytest.approx(
            float(L.multiclass_hinge(s, labels, squared=squared)))
        chex.assert_trees_all_close(jax.jit(L.multiclass_hinge.grad)(s, labels, squared=squared),
                                    L.multiclass_hinge.grad(s, labels, squared=squared))


# One example's (outputs, targets) per loss, built for any batch size n.
SHAPED = {
    "mean_squared_error": (L.mean_squared_error, lambda n: (jnp.ones((n, 3)), jnp.ones((n, 3)))),
    "l1": (L.l1, lambda n: (jnp.ones((n, 3)), jnp.ones((n, 3)))),
    "binary_cross_entropy": (L.binary_cross_entropy,
                             lambda n: (jnp.full((n, 3), 0.5), jnp.ones((n, 3)))),
    "sigmoid_binary_cross_entropy": (L.sigmoid_binary_cross_entropy,
                                     lambda n: (jnp.ones((n, 3)), jnp.ones((n, 3)))),
    "softmax_cross_entropy": (L.softmax_cross_entropy,
                              lambda n: (jnp.ones((n, 3)), jnp.zeros(n, jnp.int32))),
    "log_likelihood": (L.log_likelihood,
                       lambda n: (jnp.full((n, 3), 1 / 3), jnp.zeros(n, jnp.int32))),
    "multiclass_hinge": (L.multiclass_hinge,
                         lambda n: (jnp.ones((n, 3)), jnp.zeros(n, jnp.int32))),
    "multilabel_hinge": (L.multilabel_hinge, lambda n: (jnp.ones((n, 3)), jnp.ones((n, 3)))),
    "multilabel_logistic": (L.multilabel_logistic,
                            lambda n: (jnp.ones((n, 3)), jnp.ones((n, 3)))),
    "max_margin": (L.max_margin, lambda n: (jnp.ones(n), jnp.zeros(n))),
}


@pytest.mark.parametrize("name", list(SHAPED))
def test_empty_batch_is_refused_not_nan(name):
    loss, make = SHAPED[name]
    outputs, targets = make(0)
    shape = r"\(0,\)" if outputs.ndim == 1 else r"\(0, 3\)"
    message = rf"{name}: expected a non-empty batch, received outputs of shape {shape}"
    for run in (loss, loss.grad, jax.jit(loss)):
        with pytest.raises(ValueError, match=message):
            run(outputs, targets)
    assert np.isfinite(float(loss(*make(2))))


@pytest.mark.parametrize("name", list(SHAPED))
def test_complex_inputs_are_refused(name):
    loss, make = SHAPED[name]
    outputs, targets = make(2)
    with pytest.raises(TypeError, match=rf"{name}: expected real outputs, received outputs of "
                                        r"dtype complex64"):
        loss(outputs.astype(jnp.complex64), targets)
    with pytest.raises(TypeError, match=rf"{name}: expected real targets"):
        loss.grad(outputs, targets.astype(jnp.complex64))


@pytest.mark.parametrize("loss,probs,labels,bad,logits_loss", [
    (L.binary_cross_entropy, [[0.2, 1.5]], [[0.0, 1.0]], "1.5", "sigmoid_binary_cross_entropy"),
    (L.binary_cross_entropy, [[-0.25, 0.5]], [[0.0, 1.0]], "-0.25", "sigmoid_binary_cross_entropy"),
    (L.log_likelihood, [[2.0, -1.0]], [0], "-1", "softmax_cross_entropy"),
])
def test_probabilities_outside_0_1_are_refused_when_concrete(loss, probs, labels, bad,
                                                              logits_loss):
    probs, labels = jnp.array(probs), jnp.array(labels)
    message = (rf"{loss.name}: expected probabilities in \[0, 1\], received {bad}; "
               rf"for logits use {logits_loss}")
    for run in (loss, loss.grad):
        with pytest.raises(ValueError, match=message):
            run(probs, labels)
    jax.jit(loss)(probs, labels)   # traced values cannot be checked: no error under jit
    nan = jnp.full_like(probs, jnp.nan)   # let through, and not clamped to a finite loss
    assert np.isnan(float(loss(nan, labels))) and np.isnan(loss.grad(nan, labels)).all()
