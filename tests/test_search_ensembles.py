"""Search, then ensembles: coarse_to_fine with one objective per round, the k best configurations,
one member per configuration (`fn.ensemble.fit_configs`) and snapshot ensembles of one run
(`fn.ensemble.from_checkpoints`) — against `fn.train.fit`, numpy float64 forward passes and
hand-computed probability averages."""
import math
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn import nn

ROOT = Path(__file__).resolve().parent.parent
LOSS = fn.losses.softmax_cross_entropy
MODEL = nn.serial(nn.Flatten(), nn.Dense(16), nn.Relu(), nn.Dense(10))   # one instance: cached jits
STATE = ({}, {}, {}, {})                             # the MLP has no state


def random_params(seed, scale=1.0, dtype=np.float32):
    """MODEL's parameters (layout of MODEL.init), drawn by numpy: N(0, scale²/fan_in) weights."""
    rng = np.random.default_rng(seed)
    dense = lambda n, m: {"w": (rng.standard_normal((n, m)) * scale / np.sqrt(n)).astype(dtype),
                          "b": (rng.standard_normal(m) * 0.1).astype(dtype)}
    return ({}, dense(64, 16), {}, dense(16, 10))


@pytest.fixture(scope="module")
def digits():
    (x, y), (xv, yv) = fn.data.digits("train"), fn.data.digits("test")
    return (x[:320], y[:320]), (xv[:100], yv[:100])


def forward(params, x):
    """The MLP by hand in numpy float64: relu(x W₁ + b₁) W₂ + b₂."""
    p = [{k: np.asarray(v, np.float64) for k, v in layer.items()} for layer in params]
    h = np.asarray(x, np.float64).reshape(len(x), -1) @ p[1]["w"] + p[1]["b"]
    return np.maximum(h, 0.0) @ p[3]["w"] + p[3]["b"]


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def quadratic(config):
    """Minimum at learning_rate = 1e-2: (log10 lr + 2)²."""
    return (math.log10(config["learning_rate"]) + 2) ** 2


# ---------------------------------------------------------------------------------------------
# coarse_to_fine with more training per round, and the k best configurations.


def test_coarse_to_fine_scores_each_round_with_its_own_objective():
    """Round r calls objective r on every one of its trials; best and trials() rank only the
    rounds the last objective scored (the coarse round's cheap scores are lower here, so ranking
    them too would pick a coarse trial)."""
    calls = []

    def objective_for(epochs):
        def objective(config):
            calls.append(epochs)
            return quadratic(config) + (-10.0 if epochs == 2 else 1.0 / epochs)
        return objective

    space = {"learning_rate": fn.tune.log_uniform(1e-5, 1.0)}
    short, longer = objective_for(2), objective_for(10)
    search = fn.tune.coarse_to_fine([short, objective_for(5), longer], space,
                                    key=jax.random.key(0), trials=6, top=2)
    assert calls == [2] * 6 + [5] * 6 + [10] * 6
    assert len(search.rounds) == 3 and search.ranked == (2,)
    last = search.rounds[2]
    assert search.best == last.best and search.best_score == last.best_score
    np.testing.assert_allclose(last.scores, [quadratic({"learning_rate": v}) + 0.1
                                             for v in last.configs["learning_rate"]])
    assert [t["score"] for t in search.trials()] == sorted(last.scores)

    # The same objective in the last two rounds: both are ranked.
    calls.clear()
    search = fn.tune.coarse_to_fine([short, longer, longer], space, key=jax.random.key(0),
                                    trials=4, top=2)
    assert calls == [2] * 4 + [10] * 8 and search.ranked == (1, 2)
    assert len(search.trials()) == 8
    assert search.best_score == min(search.rounds[1].best_score, search.rounds[2].best_score)
    # One callable: the old behaviour, 3 rounds all ranked.
    calls.clear()
    search = fn.tune.coarse_to_fine(longer, space, key=jax.random.key(0), trials=4)
    assert calls == [10] * 12 and search.ranked == (0, 1, 2)
    assert search.best_score == min(r.best_score for r in search.rounds)

    with pytest.raises(ValueError, match="2 objectives .* rounds=3"):
        fn.tune.coarse_to_fine([short, longer], space, key=jax.random.key(0), rounds=3)
    with pytest.raises(TypeError, match="objective must be a callable"):
        fn.tune.coarse_to_fine([short, 3], space, key=jax.random.key(0))


def test_top_configs_are_the_k_best_in_score_order():
    values = [1e-1, 1e-4, 3e-3, 1e-2, 2e-2, 1.0]
    grid = fn.tune.grid_search(quadratic, {"learning_rate": values, "momentum": [0.9]})
    scores = [quadratic({"learning_rate": v}) for v in values]
    expected = [values[i] for i in np.argsort(scores)[:3]]        # 1e-2, 2e-2, 3e-3
    top = fn.tune.top_configs(grid, 3)
    assert top == [{"learning_rate": v, "momentum": 0.9} for v in expected]
    assert all(type(c["learning_rate"]) is float for c in top)

    # A coarse-to-fine search ranks only its last objective's trials.
    space = {"learning_rate": fn.tune.log_uniform(1e-4, 1.0)}
    search = fn.tune.coarse_to_fine([lambda c: quadratic(c) - 5.0, quadratic], space,
                                    key=jax.random.key(1), trials=8, top=3)
    last = search.rounds[1]
    order = np.argsort(last.scores, kind="stable")[:4]
    assert [c["learning_rate"] for c in fn.tune.top_configs(search, 4)] == \
        [float(last.configs["learning_rate"][i]) for i in order]

    failing = fn.tune.grid_search(lambda c: c["a"] if c["a"] < 3 else math.inf, {"a": [1, 2, 3]})
    assert fn.tune.top_configs(failing, 2) == [{"a": 1}, {"a": 2}]
    with pytest.raises(ValueError, match="only 2 trials scored a finite value"):
        fn.tune.top_configs(failing, 3)
    with pytest.raises(ValueError, match="1 ≤ k ≤ 3"):
        fn.tune.top_configs(failing, 0)


# ---------------------------------------------------------------------------------------------
# One member per configuration.


def momentum_with_decay(learning_rate, weight_decay):
    return fn.optim.chain(fn.optim.add_decayed_weights(weight_decay),
                          fn.optim.sgd(learning_rate, momentum=0.9))


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
def test_fit_configs_members_are_the_fit_runs_of_their_configs(digits):
    """Member i is fit's run with make_optimizer(**configs[i]) and key split(key, k)[i] (checked
    for the last member: a shifted or swapped pairing of configs, keys and members fails)."""
    train, _ = digits
    configs = [{"learning_rate": 0.003, "weight_decay": 0.0},
               {"learning_rate": 0.1, "weight_decay": 1e-2}]
    key = jax.random.key(4)
    result = fn.ensemble.fit_configs(MODEL, LOSS, momentum_with_decay, configs, train, epochs=2,
                                     batch_size=32, key=key, progress=False)
    chex.assert_tree_shape_prefix(result.params, (2,))
    assert result.members == 2
    single = fn.train.fit(MODEL, LOSS, momentum_with_decay(**configs[1]), train, epochs=2,
                          batch_size=32, key=jax.random.split(key, 2)[1], progress=False)
    chex.assert_trees_all_close(fn.ensemble.member(result.params, 1), single.params,
                                rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([m[1] for m in result.history["member_loss"]],
                               single.history["loss"], rtol=1e-5)
    # The hyper-parameters made a difference (a swapped pairing would fail above).
    assert result.history["member_loss"][-1][1] < result.history["member_loss"][-1][0] - 0.2

    with pytest.raises(ValueError, match="config 1's 'learning_rate' is 'fast'"):
        fn.ensemble.fit_configs(MODEL, LOSS, momentum_with_decay,
                                [configs[0], {"learning_rate": "fast", "weight_decay": 0.0}],
                                train, epochs=1, batch_size=32, key=key)
    with pytest.raises(ValueError, match="config 1 has \\['learning_rate'\\]"):
        fn.ensemble.fit_configs(MODEL, LOSS, momentum_with_decay,
                                [configs[0], {"learning_rate": 0.1}], train, epochs=1,
                                batch_size=32, key=key)


# ---------------------------------------------------------------------------------------------
# Averaged probabilities.


def test_identical_members_predict_exactly_the_single_model(digits):
    _, (xv, yv) = digits
    params, state = random_params(2, scale=4.0), STATE                # confident predictions
    layout = jax.eval_shape(lambda k: MODEL.init(k, (8, 8, 1))[0], jax.random.key(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(params, layout)
    stacked = fn.ensemble.stack([params] * 4), fn.ensemble.stack([state] * 4)
    single = np.asarray(jax.nn.softmax(fn.train.predict(MODEL, params, state, xv), axis=-1))
    probs = np.asarray(fn.ensemble.predict_proba(MODEL, *stacked, xv))
    np.testing.assert_allclose(probs, single, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.argmax(probs, -1), np.argmax(single, -1))
    scores = fn.ensemble.evaluate(MODEL, LOSS, *stacked, (xv, yv))
    accuracy = np.mean(np.argmax(single, -1) == yv)
    assert scores["ensemble_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert scores["member_accuracy"] == [scores["ensemble_accuracy"]] * 4


def test_probability_average_matches_a_float64_hand_computation(x64):
    """p̄ = (1/K) Σ_k softmax(f_k(x)) of three float64 members, against numpy's forward pass and
    a max-shifted softmax (logits scaled to ±60: a naive exp would overflow float32)."""
    rng = np.random.default_rng(0)
    members = [(random_params(k, scale=8.0, dtype=np.float64), STATE) for k in range(3)]
    x = rng.uniform(0, 1, (7, 8, 8, 1))
    stacked = fn.ensemble.stack([m[0] for m in members]), fn.ensemble.stack([m[1] for m in members])
    probs = fn.ensemble.predict_proba(MODEL, *stacked, x)
    logits = [forward(p, x) for p, _ in members]
    assert max(np.abs(z).max() for z in logits) > 30
    expected = np.mean([softmax(z) for z in logits], axis=0)
    assert probs.dtype == jnp.float64
    np.testing.assert_allclose(probs, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(fn.ensemble.average_predictions(
        jnp.asarray([softmax(z) for z in logits]), from_logits=False), expected, rtol=1e-14)


def test_snapshot_ensemble_from_one_runs_checkpoints(digits, tmp_path):
    """from_checkpoints stacks the snapshots `snapshot_callback` wrote during one fit run; its
    prediction is the mean of the snapshots' softmax outputs (numpy float64 reference), not the
    prediction of the averaged weights (average_checkpoints)."""
    train, (xv, _) = digits
    save = fn.ensemble.snapshot_callback(tmp_path / "snaps")
    run = fn.train.fit(MODEL, LOSS, fn.optim.sgd(0.3, momentum=0.9), train, epochs=3,
                       batch_size=32, key=jax.random.key(5), callbacks=[save], progress=False)
    assert [p.name for p in save.paths] == ["epoch-0001.ckpt", "epoch-0002.ckpt",
                                            "epoch-0003.ckpt"]
    params, state = fn.ensemble.from_checkpoints(save.paths, state=run.state, like=run.params)
    chex.assert_tree_shape_prefix(params, (3,))
    chex.assert_trees_all_equal(fn.ensemble.member(params, 2), run.params)   # the last epoch
    snapshots = [fn.checkpoint.load(path) for path in save.paths]            # an independent read
    logits = [forward(p, xv) for p in snapshots]
    assert np.abs(logits[0] - logits[2]).max() > 0.5                         # snapshots differ
    expected = np.mean([softmax(z) for z in logits], axis=0)
    probs = fn.ensemble.predict_proba(MODEL, params, state, xv)
    np.testing.assert_allclose(probs, expected, rtol=2e-5, atol=1e-6)
    weights = fn.ensemble.average_checkpoints(save.paths, like=run.params)
    assert np.abs(softmax(forward(weights, xv)) - expected).max() > 1e-3
    with pytest.raises(ValueError, match="non-empty sequence of checkpoint paths"):
        fn.ensemble.from_checkpoints([], state=run.state)


# ---------------------------------------------------------------------------------------------
# The notes' script.


@pytest.mark.slow   # ~1 min on 2 cores: a whole (tiny) search, ensembles and the table
def test_ensembles_script_quick_run_prints_its_table(mnist_dir):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "notes" / "ensembles.py"),
                             "--quick"], env=dict(os.environ, FUNCNN_DATA_DIR=mnist_dir),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("best single", "top-3 ensemble", "snapshot ensemble"):
        assert row in result.stdout, result.stdout[-2000:]
