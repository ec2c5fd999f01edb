"""fn.ensemble: vmapped members equal separate `fn.train.fit` runs; averaging against numpy."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn import nn

LOSS = fn.losses.softmax_cross_entropy
MEMBERS = 3


@pytest.fixture(scope="module")
def digits():
    (x, y), (xv, yv) = fn.data.digits("train"), fn.data.digits("test")
    return (x[:640], y[:640]), (xv, yv)


MODEL = nn.serial(nn.Flatten(), nn.Dense(32), nn.Relu(), nn.Dense(10))   # one instance: cached jits


@pytest.fixture(scope="module")
def trained(digits):
    train, validation = digits
    optimizer = fn.ensemble.with_averaging(fn.optim.sgd(0.1, momentum=0.9), start=20)
    result = fn.ensemble.fit(MODEL, LOSS, optimizer, train, members=MEMBERS, epochs=2,
                             batch_size=32, key=jax.random.key(0), validation=validation,
                             progress=False)
    return optimizer, result


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
def test_members_are_the_runs_fit_would_make(digits, trained):
    train, _ = digits
    optimizer, result = trained
    chex.assert_tree_shape_prefix(result.params, (MEMBERS,))
    last = MEMBERS - 1
    key = jax.random.split(jax.random.key(0), MEMBERS)[last]
    # fit initialises from split(key)[0]; the jitted init (compiled once here) gives the same.
    params, state = jax.jit(MODEL.init, static_argnums=1)(jax.random.split(key)[0], (8, 8, 1))
    chex.assert_trees_all_close(fn.ensemble.member(fn.ensemble.init(MODEL, jax.random.key(0),
                                                                    (8, 8, 1), MEMBERS)[0], last),
                                params)
    single = fn.train.fit(MODEL, LOSS, optimizer, train, epochs=2, batch_size=32, key=key,
                          params=params, state=state, progress=False)
    chex.assert_trees_all_close(fn.ensemble.member(result.params, last), single.params,
                                rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(fn.ensemble.member(result.opt_state, last), single.opt_state,
                                rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([m[last] for m in result.history["member_loss"]],
                               single.history["loss"], rtol=1e-5)
    # Members differ (own initialisation and batch order).
    w = result.params[1]["w"]
    assert float(jnp.max(jnp.abs(w[0] - w[1]))) > 1e-2
    assert len(result.history["ensemble_val_accuracy"]) == 2


def test_ensemble_prediction_is_the_mean_of_member_probabilities(digits, trained):
    _, (xv, yv) = digits
    _, result = trained
    outputs = np.asarray(fn.ensemble.predict(MODEL, result.params, result.state, xv))
    assert outputs.shape == (MEMBERS, len(xv), 10)
    z = outputs - outputs.max(axis=-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    mean = probs.mean(axis=0)
    np.testing.assert_allclose(fn.ensemble.predict_proba(MODEL, result.params, result.state, xv),
                               mean, rtol=1e-5, atol=1e-7)
    scores = fn.ensemble.evaluate(MODEL, LOSS, result.params, result.state, (xv, yv))
    assert scores["ensemble_accuracy"] == pytest.approx(np.mean(mean.argmax(-1) == yv))
    np.testing.assert_allclose(scores["member_accuracy"],
                               np.mean(outputs.argmax(-1) == yv[None], axis=1), rtol=1e-6)
    assert scores["ensemble_loss"] == pytest.approx(
        -np.mean(np.log(mean[np.arange(len(yv)), yv])), rel=1e-4)
    # Averaging the members' probabilities beats the average member here.
    assert scores["ensemble_accuracy"] >= scores["accuracy"]


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
def test_fit_scores_probability_outputs_with_from_logits_false(digits):
    """A model ending in a softmax: the recorded ensemble validation loss is −mean ln p̄_y of the
    members' own probabilities, as `evaluate(from_logits=False)` computes it."""
    train, validation = digits
    model = nn.serial(nn.Flatten(), nn.Dense(10), nn.Softmax())
    result = fn.ensemble.fit(model, fn.losses.log_likelihood, fn.optim.sgd(0.1), train,
                             members=2, epochs=1, batch_size=32, key=jax.random.key(0),
                             validation=validation, progress=False, from_logits=False)
    outputs = np.asarray(fn.ensemble.predict(model, result.params, result.state,
                                             validation[0]), np.float64)
    mean = outputs.mean(axis=0)
    expected = -np.mean(np.log(mean[np.arange(len(validation[1])), validation[1]]))
    assert result.history["ensemble_val_loss"][-1] == pytest.approx(expected, rel=1e-4)


def test_polyak_and_ema_averages_match_numpy():
    # Iterates of SGD on f(p) = ½‖p‖²: p_{t+1} = (1 − α) p_t; average them by hand.
    alpha, steps, start = 0.1, 12, 4
    p0 = {"w": jnp.array([1.0, -2.0])}
    for decay in (None, 0.7):
        opt = fn.ensemble.with_averaging(fn.optim.sgd(alpha), decay=decay, start=start)
        params, state = p0, opt.init(p0)
        iterates = []
        for _ in range(steps):
            updates, state = opt.update(params, state, params)    # ∇f(p) = p
            params = fn.optim.apply_updates(params, updates)
            iterates.append(np.asarray(params["w"], np.float64))
        if decay is None:
            expected = np.mean(iterates[start:], axis=0)
        else:
            expected = np.asarray(p0["w"], np.float64)
            for p in iterates:
                expected = decay * expected + (1 - decay) * p
        np.testing.assert_allclose(fn.optim.averaged_params(state)["w"], expected, rtol=1e-5)


def test_average_and_average_checkpoints(tmp_path):
    rng = np.random.default_rng(0)
    trees = [({"w": rng.standard_normal((3, 2)).astype(np.float32), "b": np.float32(i)}, {})
             for i in range(3)]
    mean = fn.ensemble.average(trees)
    np.testing.assert_allclose(mean[0]["w"], np.mean([t[0]["w"] for t in trees], axis=0),
                               rtol=1e-6)
    weighted = fn.ensemble.average(trees, weights=[1, 0, 3])
    assert float(weighted[0]["b"]) == pytest.approx((0 * 1 + 2 * 3) / 4)
    with pytest.raises(ValueError, match="weights"):
        fn.ensemble.average(trees, weights=[1, 1])
    with pytest.raises(ValueError, match="non-negative weights"):   # sum > 0, one below 0
        fn.ensemble.average(trees, weights=[2, -1, 1])

    save = fn.ensemble.snapshot_callback(tmp_path / "snaps")
    for epoch, tree in enumerate(trees, start=1):
        save(epoch, {}, fn.train.FitResult(tree, {}, {}, {}, epoch))
    assert [p.name for p in save.paths] == ["epoch-0001.ckpt", "epoch-0002.ckpt",
                                            "epoch-0003.ckpt"]
    loaded = fn.ensemble.average_checkpoints(save.paths, like=trees[0])
    chex.assert_trees_all_close(loaded, mean, rtol=1e-6)
