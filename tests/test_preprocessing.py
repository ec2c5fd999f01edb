"""Preprocessing fitted on the training split: the statistics it promises, against numpy."""
import chex
import jax
import numpy as np
import pytest

from funcnn import data


@pytest.fixture
def correlated():
    """Correlated 6-feature data shaped like tiny images (n, 3, 2, 1), train and test."""
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(6, 6))
    train = (rng.normal(size=(2000, 6)) @ mixing + 3.0).reshape(-1, 3, 2, 1)
    test = (rng.normal(size=(500, 6)) @ mixing - 1.0).reshape(-1, 3, 2, 1)
    return train.astype(np.float32), test.astype(np.float32)


def _cov(x):
    f = np.asarray(x, np.float64).reshape(len(x), -1)
    f = f - f.mean(0)
    return f.T @ f / len(f)


def test_mean_subtraction_and_standardization(correlated):
    train, test = correlated
    prep, train_c, test_c = data.split(data.fit_mean_subtraction, train, test)
    np.testing.assert_allclose(np.asarray(train_c).reshape(-1, 6).mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(test_c, test - train.reshape(-1, 6).mean(0).reshape(3, 2, 1),
                               rtol=1e-4, atol=1e-4)
    _, train_s, test_s = data.split(data.fit_standardization, train, test)
    f = np.asarray(train_s).reshape(-1, 6)
    np.testing.assert_allclose(f.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(f.std(0), 1, rtol=1e-4)
    flat = train.reshape(-1, 6)
    expected = (test.reshape(-1, 6) - flat.mean(0)) / flat.std(0)
    np.testing.assert_allclose(np.asarray(test_s).reshape(-1, 6), expected, rtol=1e-3, atol=1e-4)


def test_min_max_maps_training_range_to_minus_one_one(correlated):
    train, test = correlated
    prep, train_m, test_m = data.split(data.fit_min_max, train, test)
    f = np.asarray(train_m).reshape(-1, 6)
    np.testing.assert_allclose(f.min(0), -1, atol=1e-5)
    np.testing.assert_allclose(f.max(0), 1, atol=1e-5)
    lo, hi = train.reshape(-1, 6).min(0), train.reshape(-1, 6).max(0)
    np.testing.assert_allclose(np.asarray(test_m).reshape(-1, 6),
                               -1 + 2 * (test.reshape(-1, 6) - lo) / (hi - lo), rtol=1e-4, atol=1e-4)


def test_pca_matches_numpy_svd(correlated):
    train, test = correlated
    prep = data.fit_pca(train, k=3)
    projected = np.asarray(prep(test))
    chex.assert_shape(projected, (500, 3))
    f = train.reshape(-1, 6).astype(np.float64)
    _, _, vt = np.linalg.svd(f - f.mean(0), full_matrices=False)
    expected = (test.reshape(-1, 6) - f.mean(0)) @ vt[:3].T
    signs = np.sign(np.sum(projected * expected, axis=0))
    np.testing.assert_allclose(projected * signs, expected, rtol=1e-3, atol=1e-3)
    variances = np.asarray(prep(train)).var(0)
    assert np.all(np.diff(variances) < 0), "components not sorted by variance"


@pytest.mark.parametrize("fit,k", [(data.fit_pca_whitening, None), (data.fit_pca_whitening, 4),
                                   (data.fit_zca_whitening, None)])
def test_whitened_training_data_has_identity_covariance(correlated, fit, k):
    train, test = correlated
    options = {} if k is None else {"k": k}
    prep, white, _ = data.split(fit, train, test, eps=1e-8, **options)
    cov = _cov(white)
    np.testing.assert_allclose(cov, np.eye(cov.shape[0]), atol=2e-3)


def test_zca_keeps_shape_and_stays_close_to_input(correlated):
    train, _ = correlated
    prep = data.fit_zca_whitening(train)
    white = prep(train)
    chex.assert_shape(white, train.shape)
    pca = data.fit_pca_whitening(train)(train)
    centred = train.reshape(-1, 6) - train.reshape(-1, 6).mean(0)
    zca_dist = np.sum((np.asarray(white).reshape(-1, 6) - centred) ** 2)
    pca_dist = np.sum((np.asarray(pca) - centred) ** 2)
    assert zca_dist < pca_dist  # ZCA: the whitening closest to the data


def test_transform_of_test_split_uses_training_statistics_only(correlated):
    train, test = correlated
    prep, _, test_a = data.split(data.fit_zca_whitening, train, test)
    _, _, test_b = data.split(data.fit_zca_whitening, train, test * 10 + 5)
    chex.assert_trees_all_close(prep(test * 10 + 5), test_b)
    own = data.fit_zca_whitening(test)
    assert not np.allclose(own(test), test_a, atol=1e-2)


def test_fitted_transforms_are_pytrees_that_jit(correlated):
    train, test = correlated
    for fit in (data.fit_standardization, data.fit_min_max, data.fit_pca, data.fit_zca_whitening):
        prep = fit(train)
        chex.assert_trees_all_close(jax.jit(lambda p, x: p(x))(prep, test), prep(test),
                                    rtol=1e-5, atol=1e-5)


def test_errors(correlated):
    train, _ = correlated
    with pytest.raises(ValueError, match="fitted on 6 features, received inputs with 4"):
        data.fit_standardization(train)(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"expected 1 ≤ k ≤ 6 components, received k=7"):
        data.fit_pca(train, k=7)


def test_batches_cover_every_row_once_per_epoch():
    x, y = np.arange(10)[:, None] * 1.0, np.arange(10)
    seen = [b for b in data.batches(jax.random.key(0), (x, y), 3)]
    assert [len(b[1]) for b in seen] == [3, 3, 3]
    rows = np.concatenate([b[1] for b in seen])
    assert len(set(rows)) == 9
    np.testing.assert_array_equal(np.concatenate([b[0][:, 0] for b in seen]), rows)
    again = np.concatenate([b[1] for b in data.batches(jax.random.key(0), (x, y), 3)])
    np.testing.assert_array_equal(rows, again)
    everything = np.concatenate([b[1] for b in data.batches(jax.random.key(1), (x, y), 3,
                                                             drop_last=False)])
    assert sorted(everything) == list(range(10))


@pytest.mark.parametrize("per", ["pixel", "channel", "global"])
def test_mean_subtraction_forms_match_numpy_fitted_on_train_only(per):
    """The notes' three forms on (n, 4, 3, 2) images: the mean image, one mean per channel, one
    global mean — computed from the training split and subtracted unchanged from the test split."""
    rng = np.random.default_rng(3)
    offsets = np.arange(24, dtype=np.float64).reshape(1, 4, 3, 2)
    train = (rng.normal(size=(500, 4, 3, 2)) + offsets).astype(np.float32)
    test = (rng.normal(size=(50, 4, 3, 2)) * 3 - 7).astype(np.float32)
    axes = {"pixel": (0,), "channel": (0, 1, 2), "global": (0, 1, 2, 3)}[per]
    mean = train.astype(np.float64).mean(axis=axes, keepdims=True)
    prep, train_c, test_c = data.split(data.fit_mean_subtraction, train, test, per=per)
    np.testing.assert_allclose(train_c, train - mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(test_c, test - mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(train_c).astype(np.float64).mean(axis=axes), 0,
                               atol=1e-5)
    chex.assert_shape(prep.mean, (24,))
    chex.assert_trees_all_close(jax.jit(lambda p, x: p(x))(prep, test), test_c, atol=1e-6)


def test_mean_subtraction_default_is_per_pixel_and_channels_of_flat_inputs_are_features(
        correlated):
    train, test = correlated
    chex.assert_trees_all_equal(data.fit_mean_subtraction(train),
                                data.fit_mean_subtraction(train, per="pixel"))
    flat = train.reshape(-1, 6)
    chex.assert_trees_all_close(data.fit_mean_subtraction(flat, per="channel"),
                                data.fit_mean_subtraction(flat), rtol=1e-6)
    with pytest.raises(ValueError, match=r"fit_mean_subtraction: expected per='pixel', "
                                         r"'channel' or 'global', received 'image'"):
        data.fit_mean_subtraction(train, per="image")
