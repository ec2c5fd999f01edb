"""fn.diagnostics against closed forms and numpy: initial loss, per-layer statistics, overfit."""
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


@pytest.fixture(scope="module")
def digits():
    x, y = fn.data.digits("train")
    return x[:200], y[:200]


LAYERS = [nn.Flatten(), nn.Dense(32), nn.Relu(), nn.Dense(10, w_init=fn.init.normal(1e-3))]
SMALL_INIT = nn.serial(*LAYERS)   # one instance for the whole module: its jits compile once


# ---------------------------------------------------------------------------------------------
# Initial loss.


def test_expected_initial_loss_closed_forms():
    d = fn.diagnostics.expected_initial_loss
    assert d(LOSS, 10) == pytest.approx(2.302585, abs=1e-6)
    assert d(fn.losses.log_likelihood, 3) == pytest.approx(math.log(3))
    assert d(fn.losses.multiclass_hinge, 10) == 9.0
    assert d(fn.losses.multiclass_hinge, 10, margin=2.0) == 18.0
    assert d(fn.losses.multiclass_hinge, 10, margin=2.0, squared=True) == 36.0
    # The closed forms are the losses of all-zero scores.
    zeros, labels = jnp.zeros((4, 10)), jnp.array([0, 3, 9, 2])
    assert float(LOSS(zeros, labels)) == pytest.approx(d(LOSS, 10), rel=1e-6)
    assert float(fn.losses.multiclass_hinge(zeros, labels)) == pytest.approx(9.0)
    with pytest.raises(ValueError, match="no closed form"):
        d(fn.losses.mean_squared_error, 10)
    with pytest.raises(ValueError, match="classes ≥ 2"):
        d(LOSS, 1)
    # One sigmoid output is a binary model: ln 2, the loss of a zero logit.
    assert d(fn.losses.sigmoid_binary_cross_entropy, 1) == pytest.approx(math.log(2))
    assert float(fn.losses.sigmoid_binary_cross_entropy(jnp.zeros((4, 1)), jnp.array(
        [[0.0], [1.0], [1.0], [0.0]]))) == pytest.approx(math.log(2), rel=1e-6)


def test_initial_loss_of_a_small_init_model_within_5_percent(digits):
    x, y = digits
    for loss, expected in ((LOSS, math.log(10)), (fn.losses.multiclass_hinge, 9.0)):
        check = fn.diagnostics.initial_loss_check(SMALL_INIT, loss, x, y, key=jax.random.key(0))
        assert check.passed, str(check)
        assert check.expected == pytest.approx(expected)
        assert abs(check.measured - expected) <= 0.05 * expected
    # Large initial scores (the notes' warning sign) fail the check and say why.
    big = nn.serial(nn.Flatten(), nn.Dense(10))
    w = 3.0 * np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32)
    check = fn.diagnostics.initial_loss_check(big, LOSS, x, y, params=({}, {"w": w, "b": np.zeros(
        10, np.float32)}), state=({}, {}))
    assert not check.passed and check.measured > 1.05 * math.log(10)
    assert "initialise the last layer smaller" in str(check)


# ---------------------------------------------------------------------------------------------
# Per-layer statistics.


def _numpy_forward(params, x):
    w1, b1, w2, b2 = (np.asarray(params[i][k], np.float64) for i, k in
                      ((0, "w"), (0, "b"), (2, "w"), (2, "b")))
    z1 = x @ w1 + b1
    a1 = np.maximum(z1, 0)
    z2 = a1 @ w2 + b2
    return z1, a1, z2, 1 / (1 + np.exp(-z2))


def test_layer_stats_match_numpy(x64):
    rng = np.random.default_rng(0)
    layers = [nn.Dense(6), nn.Relu(), nn.Dense(4), nn.Sigmoid()]
    # N(0, 1/fan_in) weights; two dead ReLU units (bias −100); a saturating second layer (×8).
    b1 = np.zeros(6)
    b1[:2] = -100.0
    params = ({"w": rng.standard_normal((5, 6)) / np.sqrt(5), "b": b1}, {},
              {"w": 8.0 * rng.standard_normal((6, 4)) / np.sqrt(6), "b": np.zeros(4)}, {})
    state = ({}, {}, {}, {})
    x = rng.standard_normal((64, 5))
    target = rng.uniform(size=(64, 4))
    loss = fn.losses.mean_squared_error
    stats = jax.jit(lambda p, s, x, y: fn.diagnostics.layer_stats(layers, loss, p, s, x, y))(
        params, state, x, target)

    z1, a1, z2, a2 = _numpy_forward(params, x)
    for s, a in zip(stats, (z1, a1, z2, a2)):
        chex.assert_trees_all_close((s.activation["mean"], s.activation["std"]),
                                    (a.mean(), a.std()), rtol=1e-9)
        counts, edges = np.histogram(a, bins=30)
        np.testing.assert_array_equal(np.asarray(s.activation["hist"]), counts)
        np.testing.assert_allclose(np.asarray(s.activation["edges"]), edges, rtol=1e-9)
    assert [s.name for s in stats] == ["Dense", "Relu", "Dense", "Sigmoid"]
    assert float(stats[1].activation["dead"]) == pytest.approx(
        np.mean(np.all(a1 <= 0, axis=0))) and np.all(a1[:, :2] == 0)
    assert float(stats[1].activation["dead"]) >= 2 / 6
    assert float(stats[1].activation["zero"]) == pytest.approx(np.mean(a1 <= 0))
    saturated = np.mean((a2 < 0.01) | (a2 > 0.99))
    assert saturated > 0.1
    assert float(stats[3].activation["saturated"]) == pytest.approx(saturated)

    # δ at the output: ∂/∂a of mean((a − t)²) = 2(a − t)/size, by hand; then δ before the
    # sigmoid: ⊙ σ'(z) — numpy references for the two last layers.
    delta_out = 2 * (a2 - target) / a2.size
    delta_z2 = delta_out * a2 * (1 - a2)
    chex.assert_trees_all_close((stats[3].gradient["mean"], stats[3].gradient["std"]),
                                (delta_out.mean(), delta_out.std()), rtol=1e-9)
    chex.assert_trees_all_close((stats[2].gradient["mean"], stats[2].gradient["std"]),
                                (delta_z2.mean(), delta_z2.std()), rtol=1e-9)
    # The hand-written walk and the jax.vjp walk agree on every statistic of every layer.
    auto = jax.jit(lambda p, s, x, y: fn.diagnostics.layer_stats(layers, loss, p, s, x, y,
                                                                 autodiff=True))(
        params, state, x, target)
    chex.assert_trees_all_close(stats, auto, rtol=1e-9, atol=1e-15)
    assert "Relu" in fn.diagnostics.format_stats(stats)


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
def test_layer_stats_of_a_serial_model_equal_those_of_its_layers():
    params, state = SMALL_INIT.init(jax.random.key(0), (8, 8, 1))
    x, y = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1)), jnp.array([0, 1, 2, 3])
    chex.assert_trees_all_close(fn.diagnostics.layer_stats(SMALL_INIT, LOSS, params, state, x, y),
                                fn.diagnostics.layer_stats(LAYERS, LOSS, params, state, x, y))
    # A single layer works alone, without a loss (forward statistics only).
    (stats,) = jax.jit(lambda x: fn.diagnostics.layer_stats(nn.Tanh(), None, {}, {}, x))(
        jnp.full((3, 2), 10.0))
    assert stats.gradient is None and float(stats.activation["saturated"]) == 1.0


def test_ratio_health():
    verdict = fn.diagnostics.ratio_health({"0/w": 1e-3, "0/b": 5e-3, "2/w": 1e-6, "2/b": 1.0})
    assert verdict == {"0/w": "ok", "0/b": "ok", "2/w": "too small", "2/b": "too large"}


# ---------------------------------------------------------------------------------------------
# Overfitting 20 examples.


def _zero_backward(layer):
    """The same layer with its gradient cut: backward returns zeros (public contract only)."""
    def backward(params, res, dy):
        dparams, dx = layer.backward(params, res, dy)
        return jax.tree.map(jnp.zeros_like, dparams), jnp.zeros_like(dx)

    return dataclasses.replace(layer, backward=backward)


def test_overfit_check_passes_on_a_correct_model_and_fails_on_broken_ones(digits):
    x, y = digits
    opt = fn.optim.adam(1e-2)
    run = lambda model, optimizer, **kw: fn.diagnostics.overfit_check(
        model, LOSS, optimizer, x, y, key=jax.random.key(0), steps=150, **kw)

    good = run(SMALL_INIT, opt, hand_written=True)
    # The broken model starts from the same parameters (its init would compile again).
    good_params, good_state = jax.jit(SMALL_INIT.init, static_argnums=1)(jax.random.key(5),
                                                                         (8, 8, 1))
    assert good.passed, str(good)
    assert good.final_loss < 0.02 * good.initial_loss and good.accuracy == 1.0
    assert good.losses.shape == (150,) and good.losses[-1] < good.losses[0]

    frozen = run(SMALL_INIT, fn.optim.adam(0.0))
    assert not frozen.passed and "never moved" in frozen.message

    cut = run(nn.serial(*LAYERS[:-1], _zero_backward(LAYERS[-1])), opt, hand_written=True,
              params=good_params, state=good_state)
    assert not cut.passed and "cuts the gradient" in str(cut)



@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
def test_layer_stats_with_a_pair_valued_loss_grad():
    """max_margin's `.grad` is (∂/∂s_true, ∂/∂s_corrupt): the model's δ is the first entry, and
    the hand-written statistics equal autodiff's."""
    model = nn.serial(nn.Dense(4), nn.Relu(), nn.Dense(1))
    params, state = model.init(jax.random.key(0), (3,))
    x = jax.random.normal(jax.random.key(1), (5, 3))
    s_corrupt = jax.random.normal(jax.random.key(2), (5, 1))
    hand = fn.diagnostics.layer_stats(model, fn.losses.max_margin, params, state, x, s_corrupt)
    auto = fn.diagnostics.layer_stats(model, fn.losses.max_margin, params, state, x, s_corrupt,
                                      autodiff=True)
    chex.assert_trees_all_close([h.gradient for h in hand], [a.gradient for a in auto],
                                rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# The origin of a NaN: find_nonfinite.


def _plant(a):
    """`a` with one NaN, in its first entry."""
    return a.at[(0,) * a.ndim].set(jnp.nan)


def Planted(where: str):
    """y = s·x with a scalar parameter s, whose hand-written pass plants one NaN: in its output
    ("forward"), its input gradient ("backward"), its gradient ds ("gradient") or both ("both")."""
    def init(key, in_shape):
        return {"s": jnp.ones(())}, {}

    def forward(params, state, x, *, key=None, train=False):
        y = params["s"] * x
        return (_plant(y) if where == "forward" else y), state, x

    def backward(params, x, dy):
        ds, dx = jnp.sum(dy * x), params["s"] * dy
        return ({"s": _plant(ds) if where in ("gradient", "both") else ds},
                _plant(dx) if where in ("backward", "both") else dx)

    return nn.Layer("Planted", init, forward, backward)


def _find(model, x, y, loss=fn.losses.softmax_cross_entropy, edit=lambda params: params,
          edit_state=lambda state: state, **kw):
    params, state = model.init(jax.random.key(0), x.shape[1:])
    return fn.diagnostics.find_nonfinite(model, loss, edit(params), edit_state(state), x, y,
                                         key=jax.random.key(1), **kw)


X, Y = jax.random.normal(jax.random.key(2), (8, 5)), jnp.arange(8, dtype=jnp.int32) % 3


@pytest.mark.parametrize("planted,where,leaf", [
    ("forward", "forward", None), ("backward", "backward", None), ("gradient", "gradient", "s"),
    ("both", "backward", "s")])
def test_find_nonfinite_names_the_layer_and_pass_of_a_planted_nan(planted, where, leaf):
    flat = nn.serial(nn.Dense(4), nn.Tanh(), Planted(planted), nn.Dense(3))
    nested = nn.serial(nn.Dense(4), nn.serial(nn.Tanh(), Planted(planted)), nn.Dense(3))
    for model, layer in ((flat, "2/Planted"), (nested, "1/1/Planted")):
        report = _find(model, X, Y)
        assert (report.layer, report.where, report.leaf) == (layer, where, leaf)
        size = 1 if where == "gradient" else 32   # ds is a scalar; y and dx are (8, 4)
        assert (report.stats["nan"], report.stats["inf"], report.stats["size"]) == (1, 0, size)
    assert str(_find(flat, X, Y)).startswith(f"first non-finite value: {where} of 2/Planted")


def test_find_nonfinite_returns_none_when_everything_is_finite():
    model = nn.serial(nn.Dense(4), nn.serial(nn.Relu(), nn.Dense(3)), nn.Dropout(0.5))
    assert _find(model, X, Y, optimizer=fn.optim.adam(1e-3)) is None


def test_find_nonfinite_in_dense_conv_and_batch_norm_models():
    # A NaN weight: the forward of its layer, naming the weight (inside a nested serial).
    dense = nn.serial(nn.Dense(4), nn.Relu(), nn.Dense(4), nn.serial(nn.Relu(), nn.Dense(3)))
    poison = lambda params: params[:3] + ((params[3][0], {**params[3][1],
                                                           "w": _plant(params[3][1]["w"])}),)
    report = _find(dense, X, Y, edit=poison)
    assert (report.layer, report.where, report.leaf) == ("3/1/Dense", "forward", "w")
    assert report.stats["nan"] == 8   # one column of the output, for each of the 8 examples

    # An infinite kernel entry: Inf and NaN (∞ − ∞, 0·∞) in the convolution's output.
    images = jax.random.normal(jax.random.key(3), (2, 6, 6, 1))
    conv = nn.serial(nn.Conv2D(2, 3), nn.Relu(), nn.Flatten(), nn.Dense(3))
    infinite = lambda params: ({**params[0], "w": params[0]["w"].at[0, 0, 0, 0].set(jnp.inf)},
                               *params[1:])
    report = _find(conv, images, Y[:2], edit=infinite)
    assert (report.layer, report.where, report.leaf) == ("0/Conv2D", "forward", "w")
    assert report.stats["inf"] + report.stats["nan"] > 0

    # Batch norm at evaluation with a corrupted (negative) running variance: √ of a negative.
    norm = nn.serial(nn.Dense(4), nn.BatchNorm(), nn.Dense(3))
    negative = lambda state: (state[0], {**state[1], "var": state[1]["var"].at[2].set(-1.0)},
                              state[2])
    report = _find(norm, X, Y, edit_state=negative, train=False)
    assert (report.layer, report.where, report.leaf) == ("1/BatchNorm", "forward", None)
    assert report.stats["nan"] == 8
    assert _find(norm, X, Y, edit_state=negative) is None   # training uses the batch statistics


def test_find_nonfinite_at_the_input_and_the_loss():
    model = nn.serial(nn.Dense(3))
    report = _find(model, X.at[1, 2].set(jnp.inf), Y)
    assert (report.layer, report.where) == ("input", "forward") and report.stats["inf"] == 1

    nan_gradient = fn.losses.Loss("nan_gradient", fn.losses.mean_squared_error.value_fn,
                                  lambda f, y: _plant(f - y), lambda f, y: None)
    report = _find(model, X, jnp.zeros((8, 3)), loss=nan_gradient)
    assert (report.layer, report.where, report.leaf) == ("loss", "backward", None)

    # mean((1e20)²) overflows float32 while its gradient 2·1e20/n does not.
    huge = lambda params: ({"w": jnp.full((5, 3), 1e20), "b": jnp.zeros(3)},)
    report = _find(model, jnp.ones((8, 5)), jnp.zeros((8, 3)), loss=fn.losses.mean_squared_error,
                   edit=huge)
    assert (report.layer, report.where) == ("loss", "forward") and report.stats["inf"] == 1


def test_find_nonfinite_in_the_optimizer_update():
    # A dead ReLU unit gets an exactly zero gradient; Adagrad without ε divides 0 by √0.
    model = nn.serial(nn.Dense(4), nn.Relu(), nn.Dense(3))
    dead = lambda params: ({**params[0], "b": params[0]["b"].at[0].set(-100.0)}, *params[1:])
    adagrad = fn.optim.chain(fn.optim.scale_by_adagrad(eps=0.0),
                             fn.optim.scale_by_learning_rate(0.1))
    assert _find(model, X, Y, edit=dead) is None
    report = _find(model, X, Y, edit=dead, optimizer=adagrad)
    assert (report.layer, report.where, report.leaf) == ("0/Dense", "update", "b")
    assert (report.stats["nan"], report.stats["inf"], report.stats["size"]) == (1, 0, 4)
    # The other units' updates are −0.1·g/|g| = ∓0.1.
    assert (report.stats["min"], report.stats["max"]) == (pytest.approx(-0.1), pytest.approx(0.1))
    params, _ = model.init(jax.random.key(0), (5,))
    report = _find(model, X, Y, edit=dead, optimizer=adagrad, opt_state=adagrad.init(params))
    assert (report.layer, report.where, report.leaf) == ("0/Dense", "update", "b")
