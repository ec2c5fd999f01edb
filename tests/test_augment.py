"""Augmentation: exact geometric identities, randomness from the key only, jit and shapes."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn.data import augment


@pytest.fixture
def images():
    x = np.zeros((4, 9, 9, 2), np.float32)
    x[:, 3:6, 4, :] = 1.0           # a short vertical bar, off-centre
    x[:, 4, 2:7, 1] = 0.5           # a horizontal bar in channel 1
    return jnp.asarray(x)


def test_random_shift_is_an_integer_translation(images):
    shifted = np.asarray(augment.random_shift(jax.random.key(0), images, max_shift=2))
    for original, moved in zip(np.asarray(images), shifted):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(np.roll(original, (dy, dx), axis=(0, 1)), moved)]
        assert matches, "not a translation of the input"
    assert len({s.tobytes() for s in shifted}) > 1, "every image got the same shift"


def test_rotation_by_zero_is_identity_and_by_90_matches_rot90(images):
    chex.assert_trees_all_close(augment.random_rotation(jax.random.key(0), images, 0.0), images,
                                atol=1e-6)
    quarter = augment.rotate(images, jnp.full((4,), np.pi / 2))
    np.testing.assert_allclose(quarter, np.rot90(np.asarray(images), k=-1, axes=(1, 2)),
                               atol=1e-5)


def test_small_rotation_preserves_mass_roughly(images):
    rotated = augment.random_rotation(jax.random.key(1), images, 10.0)
    np.testing.assert_allclose(rotated.sum(axis=(1, 2, 3)), images.sum(axis=(1, 2, 3)), rtol=0.15)


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
def test_elastic_with_zero_alpha_is_identity(images):
    chex.assert_trees_all_close(augment.elastic_distortion(jax.random.key(0), images, alpha=0.0),
                                images, atol=1e-6)
    warped = augment.elastic_distortion(jax.random.key(0), images, alpha=3.0, sigma=2.0)
    chex.assert_shape(warped, images.shape)
    assert float(jnp.abs(warped - images).max()) > 1e-3


@pytest.mark.parametrize("f", [augment.random_shift, augment.random_rotation,
                               augment.elastic_distortion, augment.gaussian_noise])
def test_pure_in_the_key_and_jittable(images, f):
    a = jax.jit(f)(jax.random.key(5), images)
    chex.assert_trees_all_close(a, f(jax.random.key(5), images), atol=1e-6)
    assert not np.allclose(a, f(jax.random.key(6), images))
    chex.assert_shape(a, images.shape)
    chex.assert_tree_all_finite(a)


def test_rejects_non_nhwc():
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, height, width, "
                                         r"channels\), received shape \(9, 9\)"):
        augment.random_shift(jax.random.key(0), jnp.zeros((9, 9)))
