"""fn.tune: spaces, random / grid / coarse-to-fine search, the vmapped training objective and the
LR range test — against closed-form objectives, numpy and `fn.train.fit`."""
import math
import warnings

import jax
import numpy as np
import pytest

import funcnn as fn
from funcnn import nn

LOSS = fn.losses.softmax_cross_entropy


@pytest.fixture(scope="module")
def digits():
    (x, y), (xv, yv) = fn.data.digits("train"), fn.data.digits("test")
    return (x[:640], y[:640]), (xv, yv)


MODEL = nn.serial(nn.Flatten(), nn.Dense(32), nn.Relu(), nn.Dense(10))   # one instance: cached jits


def sgd_momentum(learning_rate):
    return fn.optim.sgd(learning_rate, momentum=0.9)


def quadratic(config):
    """Minimum at learning_rate = 1e-2, momentum = 0.9: (log10 lr + 2)² + (m − 0.9)²."""
    return (math.log10(config["learning_rate"]) + 2) ** 2 + (config["momentum"] - 0.9) ** 2


# ---------------------------------------------------------------------------------------------
# Spaces and searches on closed-form objectives.


def test_sample_respects_the_distributions():
    space = {"lr": fn.tune.log_uniform(1e-5, 1e-1), "p": fn.tune.uniform(0.2, 0.6),
             "act": fn.tune.choice("relu", "tanh")}
    draws = fn.tune.sample(space, jax.random.key(0), 4000)
    logs = np.log10(draws["lr"])
    assert logs.min() >= -5 and logs.max() <= -1
    # log-uniform: each decade equally likely (≈ 1000 of 4000 draws, 5σ ≈ 140).
    counts = np.histogram(logs, bins=4, range=(-5, -1))[0]
    assert np.all(np.abs(counts - 1000) < 140), counts
    assert abs(draws["p"].mean() - 0.4) < 0.01 and draws["p"].min() >= 0.2
    assert set(draws["act"]) == {"relu", "tanh"}
    again = fn.tune.sample(space, jax.random.key(0), 4000)
    np.testing.assert_array_equal(again["lr"], draws["lr"])
    with pytest.raises(ValueError, match="low < high"):
        fn.tune.log_uniform(1.0, 0.1)


def test_grid_search_visits_the_product_and_finds_the_minimum():
    grid = {"learning_rate": [1e-3, 1e-2, 1e-1], "momentum": [0.0, 0.9]}
    result = fn.tune.grid_search(quadratic, grid)
    assert len(result.scores) == 6
    assert result.trials()[0] == {"learning_rate": 1e-2, "momentum": 0.9, "score": 0.0}
    np.testing.assert_allclose(result.configs["learning_rate"],
                               [1e-3] * 2 + [1e-2] * 2 + [1e-1] * 2)


def test_choices_of_tuples_and_strings_reach_the_objective_unchanged():
    """Layer sizes as tuples and activation names as strings: a loop objective sees the options
    themselves (not numpy's 2-D array or string casts); a vectorized one is refused by name."""
    seen = []

    def objective(config):
        seen.append(config)
        return sum(config["sizes"]) + (config["activation"] == "tanh")

    space = {"sizes": fn.tune.choice((32, 32), (64,), (16, 8)),
             "activation": fn.tune.choice("relu", "tanh")}
    result = fn.tune.random_search(objective, space, key=jax.random.key(0), trials=12)
    assert all(isinstance(c["sizes"], tuple) and c["activation"] in ("relu", "tanh")
               for c in seen)
    assert result.best == {"sizes": (16, 8), "activation": "relu"}
    grid = fn.tune.grid_search(objective, {"sizes": [(32, 32), (40,)], "activation": ["relu"]})
    assert grid.best == {"sizes": (40,), "activation": "relu"} and grid.best_score == 40
    with pytest.raises(ValueError, match="dimension 'activation' has non-numeric options"):
        fn.tune.random_search(lambda c: c["activation"], {"activation": space["activation"]},
                              key=jax.random.key(0), trials=2, vectorized=True)
    rounds = fn.tune.coarse_to_fine(objective, space, key=jax.random.key(0), rounds=2,
                                    trials=8, top=2)
    assert rounds.best["sizes"] in space["sizes"].options


def test_a_search_whose_every_trial_failed_warns():
    with pytest.warns(UserWarning, match="all 2 trials scored NaN or ±inf"):
        fn.tune.grid_search(lambda config: float("nan"), {"a": [1, 2]})


def test_random_search_vectorized_equals_the_loop():
    space = {"learning_rate": fn.tune.log_uniform(1e-4, 1.0),
             "momentum": fn.tune.uniform(0.5, 0.99)}
    key = jax.random.key(3)
    loop = fn.tune.random_search(quadratic, space, key=key, trials=64)

    def vectorized(c):
        return (np.log10(np.asarray(c["learning_rate"])) + 2) ** 2 + (
            np.asarray(c["momentum"]) - 0.9) ** 2

    vec = fn.tune.random_search(vectorized, space, key=key, trials=64, vectorized=True)
    np.testing.assert_allclose(vec.scores, loop.scores, rtol=1e-5)
    assert loop.best_score == pytest.approx(min(loop.scores))
    assert abs(math.log10(loop.best["learning_rate"]) + 2) < 0.5


def test_coarse_to_fine_narrows_and_warns_at_a_boundary():
    space = {"learning_rate": fn.tune.log_uniform(1e-5, 1.0), "momentum": fn.tune.uniform(0.0, 1.0)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # optimum well inside: no boundary warning
        search = fn.tune.coarse_to_fine(quadratic, space, key=jax.random.key(0), rounds=3,
                                        trials=20, top=4)
    first, last = search.rounds[0], search.rounds[-1]
    width = lambda r: np.ptp(np.log10(r.configs["learning_rate"]))
    assert width(last) < 0.5 * width(first)
    assert search.best_score <= first.best_score
    assert abs(math.log10(search.best["learning_rate"]) + 2) < 0.2

    # The optimum (1e-2) lies above the range: the best trial sits at the upper boundary.
    low = {"learning_rate": fn.tune.log_uniform(1e-6, 1e-3), "momentum": fn.tune.choice(0.9)}
    with pytest.warns(UserWarning, match="learning_rate.*upper boundary"):
        search = fn.tune.coarse_to_fine(quadratic, low, key=jax.random.key(1), rounds=2, trials=12)
    # ... and the next round's range extends past it.
    assert search.rounds[1].configs["learning_rate"].max() > 1e-3 or \
        search.rounds[1].space["learning_rate"].high > 1e-3


# ---------------------------------------------------------------------------------------------
# Training: the vmapped objective and the LR range test.


@pytest.fixture(scope="module")
def search(digits):
    """16 vmapped trials of 3 epochs, SGD with momentum, LR log-uniform in [1e-5, 10]."""
    train, validation = digits
    objective = fn.tune.training_objective(MODEL, LOSS, sgd_momentum, train, validation,
                                           epochs=3, batch_size=32, key=jax.random.key(1))
    space = {"learning_rate": fn.tune.log_uniform(1e-5, 10.0)}
    return objective, fn.tune.random_search(objective, space, key=jax.random.key(2), trials=16,
                                            vectorized=True)


def test_training_objective_matches_fit_and_scores_divergence_inf(digits, search):
    train, validation = digits
    objective, result = search
    # A trial is exactly the run fn.train.fit makes with the same key (a separate code path).
    lr = float(result.configs["learning_rate"][0])
    key = jax.random.key(1)
    params, state = jax.jit(MODEL.init, static_argnums=1)(jax.random.split(key)[0], (8, 8, 1))
    fitted = fn.train.fit(MODEL, LOSS, sgd_momentum(lr), train, epochs=3, batch_size=32,
                          key=key, params=params, state=state, progress=False)
    reference = fn.train.evaluate(MODEL, LOSS, fitted.params, fitted.state, validation)["loss"]
    assert result.scores[0] == pytest.approx(reference, rel=1e-4)
    # A trial meeting a non-finite step scores +inf (same trial count: no recompilation).
    scores = np.asarray(objective({"learning_rate": np.full(16, 1e30)}))
    assert np.all(np.isinf(scores))


def test_lr_range_test_smooths_stops_and_agrees_with_random_search(digits, search):
    train, _ = digits
    test = fn.tune.lr_range_test(MODEL, LOSS, sgd_momentum, train, key=jax.random.key(0),
                                 min_lr=1e-5, max_lr=100.0, steps=100, batch_size=32)
    # Stops at divergence: fewer steps than asked, smoothed loss 4× above its minimum.
    assert test.diverged and len(test.losses) < 100
    assert test.smoothed[-1] > 4 * test.smoothed.min() or not np.isfinite(test.losses[-1])
    # The smoothed curve is the bias-corrected EMA of the raw losses (numpy reference).
    mean, reference = 0.0, []
    for t, value in enumerate(test.losses):
        mean = 0.9 * mean + 0.1 * value
        reference.append(mean / (1 - 0.9 ** (t + 1)))
    finite = np.isfinite(reference)
    np.testing.assert_allclose(test.smoothed[finite], np.asarray(reference)[finite], rtol=1e-5)
    ratio = np.diff(np.log(test.learning_rates))
    np.testing.assert_allclose(ratio, math.log(1e7) / 99, rtol=1e-6)
    # Default rule: steepest descent of the smoothed loss per unit of ln α, before the minimum.
    lrs, smooth, low = test.learning_rates, test.smoothed, int(np.argmin(test.smoothed))
    slopes = [(smooth[i + 1] - smooth[i - 1]) / math.log(lrs[i + 1] / lrs[i - 1])
              for i in range(1, low)]
    assert test.rule == "steepest"
    assert test.suggestion == pytest.approx(lrs[1 + int(np.argmin(slopes))])
    assert smooth[1 + int(np.argmin(slopes))] < smooth[0]

    # The suggestion lies within one decade of the best LR of the random search.
    best = search[1].best["learning_rate"]
    assert abs(math.log10(test.suggestion) - math.log10(best)) <= 1.0, (test.suggestion, best)
