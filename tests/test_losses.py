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
