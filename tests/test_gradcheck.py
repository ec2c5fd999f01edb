"""gradcheck: passes correct rules, catches wrong ones built through the Layer contract,
reports kinks, works in float64 from a float32 session."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn import nn


def _problem(model, in_shape=(6,), batch=8, seed=0):
    params, state = model.init(jax.random.key(seed), in_shape)
    x = jax.random.normal(jax.random.key(seed + 1), (batch,) + in_shape)
    y = jnp.arange(batch) % 4
    return params, state, x, y


def _mlp(dense=nn.Dense):
    return nn.serial(dense(10), nn.Tanh(), dense(4))


def _broken_dense(out, wrong):
    """A Dense whose hand-written backward is wrong in the way `wrong(grads)` says."""
    honest = nn.Dense(out)

    def backward(params, residuals, dy):
        grads, dx = honest.backward(params, residuals, dy)
        return wrong(grads), dx

    return dataclasses.replace(honest, name="BrokenDense", backward=backward)


def test_correct_model_passes_and_report_reads_well():
    model = _mlp()
    report = fn.gradcheck.check(model, fn.losses.softmax_cross_entropy, *_problem(model))
    assert report.passed, str(report)
    assert not report.kinks
    text = str(report)
    assert "PASSED" in text and "0/w" in text and "2/b" in text
    assert set(report.max_errors) == {"0/w", "0/b", "2/w", "2/b"}
    assert all(leaf.sampled > 0 for leaf in report.leaves)


@pytest.mark.parametrize("wrong,leaf", [
    (lambda g: {"w": 1.01 * g["w"], "b": g["b"]}, "w"),
    (lambda g: {"w": g["w"], "b": jnp.zeros_like(g["b"])}, "b"),
])
def test_wrong_backward_fails(wrong, leaf):
    model = nn.serial(_broken_dense(10, wrong), nn.Tanh(), nn.Dense(4))
    report = fn.gradcheck.check(model, fn.losses.softmax_cross_entropy, *_problem(model))
    assert not report.passed
    assert report.max_errors[f"0/{leaf}"]["hand/autodiff"] > 1e-3
    assert report.max_errors[f"0/{leaf}"]["hand/numerical"] > 1e-3
    assert report.max_errors[f"0/{leaf}"]["autodiff/numerical"] < 1e-7
    assert "FAILED" in str(report) and "exceeds tol" in str(report)


def test_relu_kinks_within_h_are_reported_not_failed():
    model = nn.serial(nn.Dense(5), nn.Relu(), nn.Dense(4))
    params, state, x, y = _problem(model)
    # Put unit 0's pre-activation for example 0 at 3e-6 > 0: a bias step of ±h = 1e-5 crosses 0.
    z0 = (x @ params[0]["w"] + params[0]["b"][None])[0, 0]
    params = (dict(params[0], b=params[0]["b"].at[0].add(3e-6 - z0)),) + params[1:]
    report = fn.gradcheck.check(model, fn.losses.softmax_cross_entropy, params, state, x, y,
                                samples=1000)
    assert ("0/b", (0,)) in report.kinks, str(report)
    assert report.passed, str(report)
    assert "kinks crossed" in str(report)


def test_hinge_loss_kinks_are_detected():
    model = nn.serial(nn.Dense(3))
    params, state, x, y = _problem(model, batch=4)
    y = y % 3
    scores = x @ params[0]["w"] + params[0]["b"][None]
    # margin of class j≠y for example 0 exactly 2e-6 below zero: the bias step crosses it.
    j = (int(y[0]) + 1) % 3
    shift = -1.0 - (scores[0, j] - scores[0, int(y[0])]) + 2e-6
    params = ({"w": params[0]["w"], "b": params[0]["b"].at[j].add(shift)},)
    report = fn.gradcheck.check(model, fn.losses.multiclass_hinge, params, state, x, y)
    assert any(path == "0/b" for path, _ in report.kinks), str(report)


def test_float32_inputs_are_checked_in_float64_and_flag_restored():
    assert not jax.config.jax_enable_x64
    model = _mlp()
    params, state, x, y = _problem(model)
    assert params[0]["w"].dtype == jnp.float32
    report = fn.gradcheck.check(model, fn.losses.softmax_cross_entropy, params, state, x, y)
    assert report.passed and max(l.hand_vs_numerical for l in report.leaves) < 1e-7
    assert not jax.config.jax_enable_x64


def test_numerical_grad_equals_closed_form():
    x = jnp.linspace(-2.0, 2.0, 7)
    params = {"a": x, "b": (jnp.array(0.5), jnp.ones((2, 2)))}

    def f(p):
        return jnp.sum(jnp.sin(p["a"])) + p["b"][0] ** 3 + jnp.sum(p["b"][1] ** 2)

    g = fn.gradcheck.numerical_grad(f, params)
    assert g["a"].dtype == jnp.float64
    expected = {"a": np.cos(np.asarray(x, np.float64)), "b": (0.75, np.full((2, 2), 2.0))}
    chex.assert_trees_all_close(jax.tree.map(np.asarray, g), expected, rtol=1e-9)
    assert not jax.config.jax_enable_x64


def test_relative_error():
    err = fn.gradcheck.relative_error(jnp.array([1.0, 0.0, 1e-12, -1.0, 2.0]),
                                      jnp.array([1.0, 0.0, 2e-12, 1.0, 1.0]), floor=1e-10)
    np.testing.assert_allclose(err, [0.0, 0.0, 0.0, 2.0, 0.5])
    assert float(fn.gradcheck.relative_error(0.0, 1e-20)) == 1.0


def _zero_dense(out):
    model = nn.serial(nn.Dense(out, w_init=fn.init.zeros))
    params, state = model.init(jax.random.key(0), (3,))
    return model, params, state, jax.random.normal(jax.random.key(1), (4, 3))


def test_outputs_exactly_at_the_l1_kink_pass():
    # Zero outputs against zero targets: every coordinate sits on the kink of |f − y|.
    model, params, state, x = _zero_dense(2)
    report = fn.gradcheck.check(model, fn.losses.l1, params, state, x, jnp.zeros((4, 2)))
    assert report.passed, str(report)
    assert len(report.kinks) == 8


def test_equal_scores_with_zero_margin_pass():
    model, params, state, x = _zero_dense(3)
    report = fn.gradcheck.check(model, fn.losses.multiclass_hinge, params, state, x,
                                jnp.array([0, 1, 2, 0]), margin=0.0)
    assert report.passed, str(report)
    assert report.kinks


def test_kink_coordinates_are_left_out_of_hand_vs_autodiff():
    # A loss whose autodiff disagrees with its hand-written subgradient at the kink (jax.grad of
    # jnp.abs at 0 is 1, the rule says 0): the sampled kink coordinates must not fail the check.
    abs_loss = fn.losses.Loss("abs", lambda f, y: jnp.mean(jnp.abs(f - y)),
                              lambda f, y: jnp.sign(f - y) / f.size, lambda f, y: None,
                              lambda f, y: jnp.sign(f - y))
    model, params, state, x = _zero_dense(2)
    report = fn.gradcheck.check(model, abs_loss, params, state, x, jnp.zeros((4, 2)))
    assert report.passed, str(report)
    # at the given point every output sits on the kink; the moved points are off it
    assert all(leaf.kinks == leaf.sampled for leaf in report.points[0].leaves)


@pytest.mark.parametrize("wrong,match", [
    (lambda g: {"w": g["w"].T, "b": g["b"]},
     r"leaf '2/w' to have the parameter's shape \(10, 4\) and dtype float64, received shape "
     r"\(4, 10\)"),
    (lambda g: {"w": g["w"], "b": g["b"][None]},
     r"leaf '2/b' to have the parameter's shape \(4,\) and dtype float64, received shape \(1, 4\)"),
    (lambda g: {"w": g["w"].astype(jnp.float32), "b": g["b"]},
     r"leaf '2/w' .* dtype float64, received shape \(10, 4\) and dtype float32"),
    (lambda g: {"w": g["w"]}, r"params' structure .*missing leaves \['2/b'\]"),
])
def test_hand_gradient_of_the_wrong_shape_is_a_clear_error(wrong, match):
    model = nn.serial(nn.Dense(10), nn.Tanh(), _broken_dense(4, wrong))
    with pytest.raises(ValueError, match=r"gradcheck\.check: expected the hand-written gradient.*"
                                         + match):
        fn.gradcheck.check(model, fn.losses.softmax_cross_entropy, *_problem(model))


def _first_layer_with_input_grad(wrong):
    """A Dense whose hand-written input gradient is `wrong(dx)`; its parameter gradient is right."""
    honest = nn.Dense(10)

    def backward(params, residuals, dy):
        grads, dx = honest.backward(params, residuals, dy)
        return grads, wrong(dx)

    return dataclasses.replace(honest, name="WrongInputDense", backward=backward)


@pytest.mark.parametrize("wrong", [jnp.zeros_like, lambda dx: dx.at[-1, -1].multiply(1.1)],
                         ids=["zeroed", "last entry x1.1"])
def test_wrong_input_gradient_of_the_first_layer_is_caught(wrong):
    # The first layer's dx reaches no parameter: only the comparison of ∂L/∂x can see it.
    model = nn.serial(_first_layer_with_input_grad(wrong), nn.Tanh(), nn.Dense(4))
    report = fn.gradcheck.check(model, fn.losses.softmax_cross_entropy, *_problem(model))
    assert not report.passed
    assert all(leaf.passed for leaf in report.leaves), str(report)
    (inputs,) = report.inputs
    assert inputs.path == "input" and not inputs.passed and inputs.hand_vs_autodiff > 1e-3
    assert inputs.autodiff_vs_numerical < 1e-7
    assert "input" in str(report) and "exceeds tol" in str(report)
    honest = nn.serial(nn.Dense(10), nn.Tanh(), nn.Dense(4))
    assert fn.gradcheck.check(honest, fn.losses.softmax_cross_entropy,
                              *_problem(honest)).passed


def _batchnorm_dividing_by_scale():
    """BatchNorm whose backward uses dy / scale for dy * scale: right while scale = 1."""
    honest = nn.BatchNorm()

    def backward(params, residuals, dy):
        return honest.backward(dict(params, scale=1 / params["scale"]), residuals, dy)

    return dataclasses.replace(honest, name="DividingBatchNorm", backward=backward)


def test_bug_invisible_at_initialisation_is_caught_at_a_moved_point():
    model = nn.serial(nn.Dense(5), _batchnorm_dividing_by_scale(), nn.Tanh(), nn.Dense(4))
    problem = _problem(model)
    single = fn.gradcheck.check(model, fn.losses.softmax_cross_entropy, *problem, points=1)
    assert single.passed, str(single)   # at scale = 1 the bug has no effect
    report = fn.gradcheck.check(model, fn.losses.softmax_cross_entropy, *problem)
    assert not report.passed and len(report.points) == 3
    assert report.points[0].passed and [p.index for p in report.failed_points] == [1, 2]
    # the wrong dx of BatchNorm reaches the Dense below it and the model's input
    assert "point 1 (parameters moved" in str(report) and "FAILED at 0/w, input" in str(report)
    below = next(leaf for leaf in report.leaves if leaf.path == "0/w")
    assert below.failed_points == (1, 2) and report.inputs[0].failed_points == (1, 2)


def test_hinge_threshold_bug_is_caught_on_moved_points():
    # `margins > -1` for `margins > 0` (the gradient's threshold at margin 2 for 1): with zero
    # initial weights every margin is 1, none falls in (−1, 0], and only moved points see it.
    hinge = fn.losses.multiclass_hinge
    wrong = dataclasses.replace(hinge, name="wrong_hinge",
                                grad_fn=lambda f, y, **kw: hinge.grad_fn(f, y, margin=2.0))
    model = nn.serial(nn.Dense(4, w_init=fn.init.zeros))
    problem = _problem(model)
    assert fn.gradcheck.check(model, hinge, *problem).passed
    assert fn.gradcheck.check(model, wrong, *problem, points=1).passed
    report = fn.gradcheck.check(model, wrong, *problem)
    assert not report.passed and report.points[0].passed, str(report)


def test_entries_tiny_against_their_leaf_are_judged_against_the_leaf():
    scale = 1e-3 * 0.73
    # −2.35e-7 computed two ways differing by 2.35e-12: 1e-5 relative to itself, 4e-9 to the leaf
    assert float(fn.gradcheck.relative_error(-2.35e-7, -2.35e-7 + 2.35e-12)) > 1e-6
    assert float(fn.gradcheck.relative_error(-2.35e-7, -2.35e-7 + 2.35e-12, scale=scale)) < 1e-8
    # a wrong entry as large as the leaf's scale still fails
    assert float(fn.gradcheck.relative_error(0.73, 0.7373, scale=scale)) > 1e-3


def test_vector_form_and_points_are_reported():
    model = _mlp()
    report = fn.gradcheck.check(model, fn.losses.softmax_cross_entropy, *_problem(model))
    assert [p.index for p in report.points] == [0, 1, 2] and not report.failed_points
    assert all(0 <= leaf.vector < 1e-7 for leaf in report.leaves + report.inputs)
    assert "‖·‖ form" in str(report)
    one = fn.gradcheck.check(model, fn.losses.softmax_cross_entropy, *_problem(model), points=1)
    assert len(one.points) == 1
    with pytest.raises(ValueError, match="points to be a positive int, received 0"):
        fn.gradcheck.check(model, fn.losses.softmax_cross_entropy, *_problem(model), points=0)
