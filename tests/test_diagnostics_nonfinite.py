"""fn.diagnostics.find_nonfinite on models with a recurrent layer (fn.nn.LSTM): the first NaN or
Inf is traced to the right layer and pass (forward, backward, gradient, update) — through the
LSTM's own hand-written forward and backward over time, and at a layer path nested in a serial.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn import nn

LOSS = fn.losses.softmax_cross_entropy
X = jax.random.normal(jax.random.key(2), (4, 6, 3))        # (batch, time, features)
Y = jnp.array([0, 1, 2, 1], dtype=jnp.int32)


def _model(lstm=None):
    lstm = nn.LSTM(5, return_sequences=False) if lstm is None else lstm
    return nn.serial(nn.Dense(4), nn.serial(nn.Tanh(), lstm), nn.Dense(3))


def _find(model, x=X, edit=lambda params: params, **kw):
    params, state = model.init(jax.random.key(0), x.shape[1:])
    return fn.diagnostics.find_nonfinite(model, LOSS, edit(params), state, x, Y,
                                         key=jax.random.key(1), **kw)


def _edit_lstm(params, leaf, change):
    """params of `_model` with the LSTM's `leaf` replaced by change(leaf)."""
    lstm = params[1][1]
    return (params[0], (params[1][0], {**lstm, leaf: change(lstm[leaf])}), params[2])


def _plant(a):
    return a.at[(0,) * a.ndim].set(jnp.nan)


def _planted_backward(lstm, where):
    """The LSTM with its own forward and its own backward, whose result gets one NaN planted in
    dx ("backward"), in the gradient of `wh` ("gradient"), or in both ("both")."""
    def backward(params, residuals, dy):
        grads, dx = lstm.backward(params, residuals, dy)
        if where in ("gradient", "both"):
            grads = {**grads, "wh": _plant(grads["wh"])}
        return grads, (_plant(dx) if where in ("backward", "both") else dx)

    return dataclasses.replace(lstm, backward=backward)


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
def test_the_lstm_model_is_finite_end_to_end():
    assert _find(_model(), optimizer=fn.optim.adam(1e-3)) is None


def test_a_nan_recurrent_weight_is_reported_in_the_lstm_forward():
    # h₀ = 0, so the NaN in wh reaches the output from step 2 on: every example's last state.
    report = _find(_model(), edit=lambda p: _edit_lstm(p, "wh", lambda w: w.at[1, 2].set(jnp.nan)))
    assert (report.layer, report.where, report.leaf) == ("1/1/LSTM", "forward", "wh")
    assert report.stats["nan"] > 0 and report.stats["size"] == 4 * 5
    assert str(report).startswith("first non-finite value: forward of 1/1/LSTM (wh)")


def test_planted_nans_in_the_lstm_backward_are_named_by_pass():
    for planted, where, leaf, size in (("backward", "backward", None, 4 * 6 * 4),
                                       ("gradient", "gradient", "wh", 5 * 20),
                                       ("both", "backward", "wh", 4 * 6 * 4)):
        lstm = _planted_backward(nn.LSTM(5, return_sequences=False), planted)
        report = _find(_model(lstm))
        assert (report.layer, report.where, report.leaf) == ("1/1/LSTM", where, leaf), planted
        assert (report.stats["nan"], report.stats["inf"], report.stats["size"]) == (1, 0, size)


def test_a_nan_update_of_an_lstm_weight_with_a_zero_gradient():
    # An input feature that is 0 everywhere gives ∂L/∂wi[0] = 0 exactly; Adagrad without ε
    # divides it by √0: NaN updates in that row of wi, and nowhere else.
    model = nn.serial(nn.LSTM(5, return_sequences=False), nn.Dense(3))
    adagrad = fn.optim.chain(fn.optim.scale_by_adagrad(eps=0.0),
                             fn.optim.scale_by_learning_rate(0.1))
    x = X.at[..., 0].set(0.0)
    assert _find(model, x) is None
    report = _find(model, x, optimizer=adagrad)
    assert (report.layer, report.where, report.leaf) == ("0/LSTM", "update", "wi")
    assert (report.stats["nan"], report.stats["inf"], report.stats["size"]) == (20, 0, 3 * 20)
    np.testing.assert_allclose([report.stats["min"], report.stats["max"]], [-0.1, 0.1],
                               rtol=1e-5)
