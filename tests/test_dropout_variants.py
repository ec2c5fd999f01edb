"""The notes' two dropouts — vanilla (unscaled mask in training, ×(1 − rate) at evaluation) and
inverted (mask ×1/(1 − rate), identity at evaluation) — equal in expectation, with hand-written
gradients checked three ways; and Monte-Carlo dropout at prediction time against a manual loop."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import nn
from layer_checks import assert_layer_gradients_compiled, assert_layer_transforms


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_vanilla_three_way_gradients(train):
    layer = nn.Dropout(0.4, mode="vanilla")
    with jax.enable_x64(True):
        _, dx = assert_layer_gradients_compiled(layer, (2, 5), train=train)
    if train:   # some units dropped (zero gradient), the rest passed through unscaled
        assert np.any(dx == 0.0) and np.any(dx != 0.0)


def test_vanilla_under_jit_vmap_value_and_grad_and_custom_vjp():
    assert_layer_transforms(nn.Dropout(0.3, mode="vanilla"), (6,), train=True)


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.9])
def test_same_key_same_units_dropped_and_the_closed_forms(rate):
    """E[m] = 1 − rate: vanilla keeps x unscaled and evaluates (1 − rate)·x; inverted scales the
    kept units by 1/(1 − rate) and evaluates x; one key drops the same units in both."""
    keep = 1.0 - rate
    x = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, (8, 32)), jnp.float32)
    key = jax.random.key(7)
    vanilla, inverted = nn.Dropout(rate, mode="vanilla"), nn.Dropout(rate)
    y_v, _ = vanilla.apply({}, {}, x, key=key, train=True)
    y_i, _ = inverted.apply({}, {}, x, key=key, train=True)
    kept = np.asarray(y_v != 0)
    np.testing.assert_array_equal(np.asarray(y_i != 0), kept)
    np.testing.assert_array_equal(np.where(kept, y_v, 0.0), np.where(kept, x, 0.0))
    np.testing.assert_allclose(y_i, y_v / keep, rtol=1e-6)
    np.testing.assert_allclose(vanilla.apply({}, {}, x)[0], keep * x, rtol=1e-7)
    chex.assert_trees_all_equal(inverted.apply({}, {}, x)[0], x)


@pytest.mark.parametrize("mode", ["vanilla", "inverted"])
def test_training_output_averages_to_the_evaluation_output(mode):
    """Mean over K = 4000 keys of the training output vs the evaluation output, per element.
    One draw is x·s·m with m ~ Bernoulli(p = 1 − rate), s = 1 (vanilla) or 1/p (inverted), so
    the K-mean has standard deviation σ = |x|·s·√(p(1 − p)/K); allow 5σ on each of 120 entries."""
    rate, draws = 0.3, 4000
    keep = 1.0 - rate
    layer = nn.Dropout(rate, mode=mode)
    x = jnp.asarray(np.random.default_rng(1).uniform(-2, 2, (4, 30)), jnp.float32)
    mean = jax.jit(lambda key: jnp.mean(jax.vmap(
        lambda k: layer.apply({}, {}, x, key=k, train=True)[0])(jax.random.split(key, draws)),
        axis=0))(jax.random.key(0))
    evaluated, _ = layer.apply({}, {}, x)
    scale = 1.0 if mode == "vanilla" else 1.0 / keep
    sigma = np.abs(np.asarray(x)) * scale * np.sqrt(keep * (1 - keep) / draws)
    z = np.abs(np.asarray(mean - evaluated)) / sigma
    assert z.max() < 5.0, f"largest deviation {z.max():.2f}σ"
    assert z.mean() < 1.2   # |N(0, 1)| averages 0.80: a wrong scale shows up here first


def test_modes_are_values_and_bad_modes_are_refused():
    assert nn.Dropout(0.5) == nn.Dropout(0.5, mode="inverted")
    assert nn.Dropout(0.5, mode="vanilla") == nn.Dropout(0.5, "vanilla")
    assert nn.Dropout(0.5) != nn.Dropout(0.5, mode="vanilla")
    with pytest.raises(ValueError, match=r"Dropout: expected mode 'inverted' or 'vanilla', "
                                         r"received 'scaled'"):
        nn.Dropout(0.5, mode="scaled")


# ---------------------------------------------------------------------------------------------
# Monte-Carlo dropout.

MODEL = nn.serial(nn.Dense(16), nn.Relu(), nn.Dropout(0.5), nn.Dense(3))


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(2)
    shapes, state = jax.eval_shape(lambda k: MODEL.init(k, (5,)), jax.random.key(0))
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), jnp.float32), shapes)
    x = jnp.asarray(rng.standard_normal((6, 5)), jnp.float32)
    return params, state, x


def test_mc_predict_is_the_mean_and_spread_of_a_manual_loop(setup):
    """T passes of the model in training mode, one key each from split(key, T), softmaxed."""
    params, state, x = setup
    key, samples = jax.random.key(3), 12
    one_pass = jax.jit(lambda k: MODEL.apply(params, state, x, key=k, train=True)[0])
    logits = np.stack([np.asarray(one_pass(k), np.float64)
                       for k in jax.random.split(key, samples)])
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    passes = exp / exp.sum(-1, keepdims=True)
    mean, std = jax.jit(lambda k: nn.mc_predict(MODEL, params, state, x, key=k, samples=samples,
                                                transform=nn.softmax, return_std=True))(key)
    np.testing.assert_allclose(mean, passes.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, passes.std(0), rtol=1e-4, atol=1e-6)
    assert float(jnp.min(jnp.max(std, axis=1))) > 0   # the passes really differ
    chex.assert_trees_all_close(jnp.sum(mean, axis=1), jnp.ones(6), rtol=1e-6)


def test_mc_predict_approaches_the_deterministic_prediction(setup):
    """Dropout just before the last (linear) layer: E over masks of the output is exactly the
    evaluation output, and the mean of T passes is within a few σ/√T of it."""
    params, state, x = setup
    run = jax.jit(functools.partial(nn.mc_predict, MODEL, samples=2000, return_std=True))
    mean, std = run(params, state, x, key=jax.random.key(4))
    evaluated, _ = MODEL.apply(params, state, x)
    z = np.abs(np.asarray(mean - evaluated)) / (np.asarray(std) / np.sqrt(2000))
    assert z.max() < 5.0, f"largest deviation {z.max():.2f}σ"


def test_mc_predict_bad_arguments(setup):
    params, state, x = setup
    with pytest.raises(ValueError, match="mc_predict: expected a PRNG key"):
        nn.mc_predict(MODEL, params, state, x, key=None)
    with pytest.raises(ValueError, match="expected a positive int number of samples, received 0"):
        nn.mc_predict(MODEL, params, state, x, key=jax.random.key(0), samples=0)
