"""The notes' gradient-checking advice beyond one bare check: the vector form of the relative
error, the loss checked with its weight penalty, and a check after a burn-in of training."""
import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn import nn

LOSS = fn.losses.softmax_cross_entropy
MODEL = nn.serial(nn.Dense(6), nn.Tanh(), nn.Dense(3))
L2 = fn.regularizers.l2(0.3, n=2)      # R = (0.3/4)·Σw², ∂R/∂w = 0.15·w
L1 = fn.regularizers.l1(0.05)          # R = 0.05·Σ|w|, ∂R/∂w = 0.05·sign(w)


def _problem(seed=0, batch=6):
    params, state = MODEL.init(jax.random.key(seed), (4,))
    x = jax.random.normal(jax.random.key(seed + 1), (batch, 4))
    return params, state, x, jnp.arange(batch) % 3


def _loss64(params, x, y, regularizer=None, state=({}, {}, {})):
    """loss(model(x), y) (+ R(params)) in float64, computed directly."""
    with jax.enable_x64(True):
        params, x = (fn.backprop.cast_floats(t, jnp.float64) for t in (params, x))
        value = LOSS(MODEL.apply(params, state, x)[0], y)
        return float(value + (regularizer(params) if regularizer is not None else 0.0))


class VectorRelativeErrorTest(chex.TestCase):
    """‖a − b‖ / (‖a‖ + ‖b‖) against its closed form on hand-picked vectors, in float64."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_closed_forms(self):
        error = self.variant(fn.gradcheck.vector_relative_error)
        with jax.enable_x64(True):
            a, b = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
            cases = [
                (a, b, math.sqrt(2) / 2),                      # orthogonal, equal norms: √2/2
                (a, -a, 1.0),                                  # opposite: the maximum
                (a, jnp.zeros(2), 1.0),                        # one of them zero
                (jnp.array([3.0, 4.0]), jnp.array([3.0, 0.0]), 4 / (5 + 3)),
                (jnp.array([1.0, 2.0, 2.0]), jnp.array([1.0, 2.0, 2.0]), 0.0),   # a = b
                (jnp.zeros(3), jnp.zeros(3), 0.0),             # both zero: 0, not NaN
            ]
            for u, v, expected in cases:
                value = error(u, v)
                assert value.dtype == jnp.float64
                chex.assert_trees_all_close(value, jnp.float64(expected), rtol=1e-15, atol=0)
            # scale invariance, far beyond where the squares of the entries would overflow
            u, v = jnp.array([0.3, -1.7, 2.2]), jnp.array([0.31, -1.69, 2.25])
            reference = np.linalg.norm(np.subtract(u, v)) / (np.linalg.norm(u) + np.linalg.norm(v))
            for c in (1e-200, 1.0, 1e200):
                chex.assert_trees_all_close(error(c * u, c * v), jnp.float64(reference),
                                            rtol=1e-14)

    @chex.variants(with_jit=True, without_jit=True)
    def test_a_pytree_is_one_vector(self):
        error = self.variant(fn.gradcheck.vector_relative_error)
        with jax.enable_x64(True):
            a = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.25])}
            b = {"w": jnp.array([[1.1, -2.0], [0.5, 2.0]]), "b": jnp.array([-0.25])}
            flat = [jnp.concatenate([t["b"], t["w"].ravel()]) for t in (a, b)]
            chex.assert_trees_all_close(error(a, b), error(*flat), rtol=1e-15)
            # symmetric, in [0, 1], NaN in ⇒ NaN out (a NaN gradient must not read as good)
            chex.assert_trees_all_close(error(a, b), error(b, a), rtol=1e-15)
            assert 0.0 < float(error(a, b)) < 1.0
            assert np.isnan(float(error(jnp.array([np.nan, 1.0]), jnp.ones(2))))

    def test_numpy_in_numpy_out(self):
        # `check` calls it on NumPy arrays: computed by NumPy, equal to the JAX path
        a, b = np.array([0.3, -1.7, 2.2]), np.array([0.31, -1.69, 2.25])
        value = fn.gradcheck.vector_relative_error([a, 2.0], [b, 2.5])
        assert isinstance(value, np.ndarray) and value.dtype == np.float64
        with jax.enable_x64(True):
            chex.assert_trees_all_close(
                value, np.asarray(fn.gradcheck.vector_relative_error(
                    [jnp.asarray(a), jnp.float64(2.0)], [jnp.asarray(b), jnp.float64(2.5)])),
                rtol=1e-15)
        assert float(fn.gradcheck.vector_relative_error([], [])) == 0.0

    def test_mismatched_arguments_are_a_clear_error(self):
        with pytest.raises(ValueError, match=r"vector_relative_error: expected leaf 0 of a and b "
                                             r"to have one shape, received \(2,\) and \(3,\)"):
            fn.gradcheck.vector_relative_error(jnp.ones(2), jnp.ones(3))
        with pytest.raises(ValueError, match="expected a and b of the same structure"):
            fn.gradcheck.vector_relative_error({"w": jnp.ones(2)}, [jnp.ones(2)])


def test_report_carries_the_vector_form_per_leaf_and_over_all_parameters():
    report = fn.gradcheck.check(MODEL, LOSS, *_problem())
    assert report.passed, str(report)
    for leaf in report.leaves + report.inputs:
        assert 0.0 <= leaf.vector < 1e-7 and 0.0 <= leaf.autodiff_vector < 1e-7, str(report)
    assert set(report.vector) == {"hand/numerical", "autodiff/numerical"}
    assert 0.0 < report.vector["hand/numerical"] < 1e-7
    text = str(report)
    assert "hand ‖·‖" in text and "auto ‖·‖" in text
    assert "all parameters, ‖·‖ form over their" in text and "(good)" in text


def test_l2_penalty_checked_alone_and_with_the_loss():
    params, state, x, y = _problem()
    report = fn.gradcheck.check(MODEL, LOSS, params, state, x, y, regularizer=L2)
    assert isinstance(report, fn.gradcheck.RegularizedReport)
    assert report.passed and report.data.passed and report.penalty.passed and report.total.passed
    # the sections really are C₀, R and C₀ + R: their losses at the given point, computed directly
    assert report.data.points[0].loss == pytest.approx(_loss64(params, x, y), rel=1e-12)
    assert report.total.points[0].loss == pytest.approx(_loss64(params, x, y, L2), rel=1e-12)
    with jax.enable_x64(True):
        w = [np.asarray(layer["w"], np.float64) for layer in (params[0], params[2])]
    assert report.penalty.points[0].loss == pytest.approx(0.075 * sum((v * v).sum() for v in w),
                                                          rel=1e-12)
    # R does not depend on x: the penalty section has no input row, the others do
    assert report.penalty.inputs == () and report.total.inputs and report.data.inputs
    text = str(report)
    for title in ("[data term C₀]", "[penalty R = l2(0.3, n=2)]", "[C₀ + R]"):
        assert title in text
    assert text.startswith("gradient check of loss + l2(0.3, n=2): PASSED")


def test_l1_penalty_away_from_zero_and_at_its_kink():
    params, state, x, y = _problem()
    assert min(float(jnp.min(jnp.abs(layer["w"]))) for layer in (params[0], params[2])) > 1e-3
    report = fn.gradcheck.check(MODEL, LOSS, params, state, x, y, regularizer=L1)
    assert report.passed and not report.penalty.kinks, str(report)
    # every weight of layer 0 3e-6 from 0: the steps ±h, ±2h cross |w|'s kink at each sampled
    # one, which is reported and left out (not failed); layer 2 is still compared
    near = (dict(params[0], w=3e-6 * jnp.sign(params[0]["w"])),) + params[1:]
    report = fn.gradcheck.check(MODEL, LOSS, near, state, x, y, regularizer=L1)
    assert report.passed, str(report)
    for section in (report.penalty, report.total):
        first, last = (next(leaf for leaf in section.points[0].leaves if leaf.path == path)
                       for path in ("0/w", "2/w"))
        assert first.kinks == first.sampled > 0 and last.kinks == 0, str(section)


def test_without_a_regularizer_the_check_is_unchanged():
    # The "max-norm-free" case: no penalty, a plain report, equal to the data section's. A
    # max-norm constraint is a projection (fn.optim.project_max_norm), not a penalty with a
    # gradient: passing one is a clear error.
    problem = _problem()
    plain = fn.gradcheck.check(MODEL, LOSS, *problem)
    assert isinstance(plain, fn.gradcheck.GradcheckReport) and plain.step is None
    assert plain.max_errors == fn.gradcheck.check(MODEL, LOSS, *problem,
                                                  regularizer=L2).data.max_errors
    with pytest.raises(TypeError, match=r"expected regularizer to be a penalty R\(params\) with "
                                        r"a hand-written \.grad\(params\).*project_max_norm"):
        fn.gradcheck.check(MODEL, LOSS, *problem,
                           regularizer=fn.optim.project_max_norm(3.0))


class _SignFlippedOnLastLeaf:
    """A wrapped regularizer: R itself, but its hand-written gradient's sign is wrong on the
    output layer's kernel (as if the penalty's derivative were written −λw there)."""

    def __init__(self, inner):
        self.inner, self.mask = inner, inner.mask

    def __call__(self, params):
        return self.inner(params)

    def grad(self, params):
        grads = self.inner.grad(params)
        return grads[:2] + (dict(grads[2], w=-grads[2]["w"]),)

    def __repr__(self):
        return "sign-flipped l2"


@pytest.mark.parametrize("wrong,leaves", [
    (dataclasses.replace(L2, name="l2 ×1.05", derivative=lambda w: 1.05 * L2.derivative(w)),
     {"0/w", "2/w"}),
    (_SignFlippedOnLastLeaf(L2), {"2/w"}),
], ids=["derivative x1.05", "sign flipped on one leaf"])
def test_a_wrong_penalty_gradient_is_caught(wrong, leaves):
    report = fn.gradcheck.check(MODEL, LOSS, *_problem(), regularizer=wrong)
    assert not report.passed and report.data.passed, str(report)
    assert not report.penalty.passed and not report.total.passed
    for section in (report.penalty, report.total):
        assert {leaf.path for leaf in section.leaves if not leaf.passed} == leaves
    penalty = {leaf.path: leaf for leaf in report.penalty.leaves}
    for path in leaves:   # autodiff and centered differences of R agree; .grad does not
        assert penalty[path].autodiff_vs_numerical < 1e-7 and penalty[path].autodiff_vector < 1e-7
    if "0/w" in leaves:   # g = 1.05·D: per coordinate 0.05/1.05, vector form 0.05/2.05
        assert penalty["0/w"].hand_vs_autodiff == pytest.approx(0.05 / 1.05, rel=1e-9)
        assert penalty["0/w"].vector == pytest.approx(0.05 / 2.05, rel=1e-6)
    else:                 # g = −D: the vector form's maximum, 1
        assert penalty["2/w"].vector == pytest.approx(1.0, rel=1e-9)
    assert "FAILED" in str(report) and "exceeds tol" in str(report)


def test_check_after_trains_then_checks_and_says_at_which_step():
    params, state, x, y = _problem()
    report = fn.gradcheck.check_after(MODEL, LOSS, params, state, x, y, steps=8,
                                      optimizer=fn.optim.sgd(0.5), key=jax.random.key(3),
                                      regularizer=L2)
    assert isinstance(report, fn.gradcheck.RegularizedReport) and report.passed, str(report)
    assert report.step == 8 and all(s.step == 8 for s in (report.data, report.penalty,
                                                         report.total))
    assert "at training step 8" in str(report).splitlines()[0]
    # an independent burn-in: 8 steps of θ ← θ − 0.5·∇(C₀ + R), jax.grad written out here
    grad = jax.jit(jax.grad(lambda p: LOSS(MODEL.apply(p, state, x)[0], y) + L2(p)))
    trained = params
    for _ in range(8):
        trained = jax.tree.map(lambda p, g: p - 0.5 * g, trained, grad(trained))
    assert report.total.points[0].loss == pytest.approx(_loss64(trained, x, y, L2), rel=1e-5)
    assert report.total.points[0].loss < 0.9 * _loss64(params, x, y, L2)   # it did train


def test_check_after_without_regularizer_and_bad_arguments():
    params, state, x, y = _problem()
    report = fn.gradcheck.check_after(MODEL, LOSS, params, state, x, y, steps=3,
                                      optimizer=fn.optim.sgd(0.5), points=1)
    assert isinstance(report, fn.gradcheck.GradcheckReport) and report.passed, str(report)
    assert report.step == 3 and "PASSED) at training step 3, at 1 point(s)" in str(report)
    with pytest.raises(ValueError, match=r"check_after: expected steps to be an int ≥ 0, "
                                         r"received -1"):
        fn.gradcheck.check_after(MODEL, LOSS, params, state, x, y, steps=-1,
                                 optimizer=fn.optim.sgd(0.5))
    with pytest.raises(TypeError, match="expected optimizer to be an optimizer with init and "
                                        "update"):
        fn.gradcheck.check_after(MODEL, LOSS, params, state, x, y, steps=1, optimizer=0.5)


def test_check_after_stops_on_a_diverging_burn_in():
    model = nn.serial(nn.Dense(1))
    params, state = model.init(jax.random.key(0), (3,))
    x = 10.0 * jax.random.normal(jax.random.key(1), (4, 3))
    with pytest.raises(ValueError, match=r"check_after: the training loss is (inf|nan) at step "
                                         r"\d+; expected a finite loss"):
        fn.gradcheck.check_after(model, fn.losses.mean_squared_error, params, state, x,
                                 jnp.zeros((4, 1)), steps=60, optimizer=fn.optim.sgd(100.0))
