"""Flips, random crops with padding and zoom: exact closed forms (a flip of a known array, a crop
is the slice of the zero-padded image at the drawn offset, bilinear zoom of a ramp and of a
constant), randomness from the key only, jit, and errors that name what was received."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn.data import augment


@pytest.fixture
def known():
    return jnp.arange(4 * 3 * 5 * 2, dtype=jnp.float32).reshape(4, 3, 5, 2)


@pytest.mark.parametrize("horizontal,vertical,expected", [
    (True, False, lambda x: x[:, :, ::-1, :]), (False, True, lambda x: x[:, ::-1, :, :]),
    (True, True, lambda x: x[:, ::-1, ::-1, :]), (False, False, lambda x: x)])
def test_certain_flips_are_the_reversed_arrays(known, horizontal, vertical, expected):
    flipped = augment.random_flip(jax.random.key(0), known, horizontal=horizontal,
                                  vertical=vertical, probability=1.0)
    np.testing.assert_array_equal(flipped, expected(np.asarray(known)))
    never = augment.random_flip(jax.random.key(0), known, horizontal=horizontal,
                                vertical=vertical, probability=0.0)
    np.testing.assert_array_equal(never, known)


def test_each_image_is_flipped_independently_with_probability_one_half():
    x = np.random.default_rng(1).uniform(size=(400, 3, 4, 1)).astype(np.float32)
    y = np.asarray(augment.random_flip(jax.random.key(2), jnp.asarray(x), vertical=True))
    variants = [x, x[:, :, ::-1], x[:, ::-1], x[:, ::-1, ::-1]]
    which = np.array([[np.array_equal(y[i], v[i]) for v in variants] for i in range(400)])
    assert np.all(which.sum(1) == 1), "an output is none of the four flips of its input"
    counts = which.sum(0)
    assert np.all(np.abs(counts - 100) < 5 * np.sqrt(400 * 0.25 * 0.75)), counts   # Binomial(400, ¼)


def _offsets_of(crops, padded):
    """The (oy, ox) at which each crop is a slice of its padded image (asserting exactly one)."""
    _, ch, cw, _ = crops.shape
    found = []
    for crop, image in zip(crops, padded):
        hits = [(oy, ox) for oy in range(image.shape[0] - ch + 1)
                for ox in range(image.shape[1] - cw + 1)
                if np.array_equal(image[oy:oy + ch, ox:ox + cw], crop)]
        assert len(hits) == 1, f"crop matches {len(hits)} windows of the padded image"
        found.append(hits[0])
    return found


@pytest.mark.parametrize("size,padding", [(None, 1), ((5, 6), 2), (4, 0)])
def test_crop_is_the_padded_slice_at_the_drawn_offset(size, padding):
    x = np.random.default_rng(3).uniform(0.1, 1.0, (300, 7, 8, 2)).astype(np.float32)
    crops = np.asarray(augment.random_crop(jax.random.key(4), jnp.asarray(x), size, padding))
    ch, cw = (7, 8) if size is None else (size, size) if isinstance(size, int) else size
    chex.assert_shape(crops, (300, ch, cw, 2))
    padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = _offsets_of(crops, padded)
    positions = {(oy, ox) for oy in range(7 + 2 * padding - ch + 1)
                 for ox in range(8 + 2 * padding - cw + 1)}
    assert set(offsets) == positions, "some offsets were never drawn (or impossible ones were)"


def test_random_shift_is_random_crop_with_padding(known):
    key = jax.random.key(5)
    chex.assert_trees_all_equal(augment.random_shift(key, known, max_shift=2),
                                augment.random_crop(key, known, padding=2))


def test_zoom_by_one_is_the_identity_and_a_ramp_zooms_exactly():
    x = jnp.asarray(np.random.default_rng(6).uniform(size=(3, 9, 8, 2)), jnp.float32)
    chex.assert_trees_all_close(augment.zoom(x, jnp.ones(3)), x, atol=1e-6)
    chex.assert_trees_all_close(augment.random_zoom(jax.random.key(0), x, 1.0, 1.0), x, atol=1e-6)
    # bilinear sampling reproduces a linear image: ramp(r, c) = r + 10c zoomed by s about the
    # centre (r₀, c₀) is r₀ + (r − r₀)/s + 10(c₀ + (c − c₀)/s) wherever s ≥ 1 (no border)
    r, c = np.meshgrid(np.arange(9.0), np.arange(8.0), indexing="ij")
    ramp = jnp.asarray(np.broadcast_to((r + 10 * c)[None, :, :, None], (3, 9, 8, 1)), jnp.float32)
    scales = np.array([1.0, 1.5, 3.0])
    expected = [4 + (r - 4) / s + 10 * (3.5 + (c - 3.5) / s) for s in scales]
    np.testing.assert_allclose(augment.zoom(ramp, jnp.asarray(scales, jnp.float32))[..., 0],
                               np.stack(expected), atol=1e-4)


def test_zoom_of_a_constant_image_stays_constant_inside():
    x = jnp.full((2, 7, 7, 3), 0.7, jnp.float32)
    zoomed_in = augment.random_zoom(jax.random.key(7), x, 1.0, 2.0)
    chex.assert_trees_all_close(zoomed_in, x, atol=1e-6)
    # zoomed out by ½: pixels whose source (3 + (r − 3)·2) lies in [0, 6] keep the value, the
    # rest sample the zero background
    out = np.asarray(augment.zoom(x, jnp.full((2,), 0.5, jnp.float32)))
    inside = np.abs(np.arange(7) - 3) * 2 <= 3
    np.testing.assert_allclose(out[:, inside][:, :, inside], 0.7, atol=1e-6)
    np.testing.assert_allclose(out[:, ~inside], 0.0, atol=1e-6)


def test_random_zoom_draws_one_scale_per_image_in_range():
    r = np.arange(9.0)
    ramp = jnp.asarray(np.broadcast_to(r[None, :, None, None], (64, 9, 3, 1)), jnp.float32)
    zoomed = np.asarray(augment.random_zoom(jax.random.key(8), ramp, 1.1, 1.6))
    scales = (r[-1] - 4) / (zoomed[:, -1, 1, 0] - 4)     # the last row samples 4 + 4/s
    assert np.all((scales > 1.1 - 1e-4) & (scales < 1.6 + 1e-4))
    assert np.std(scales) > 0.1   # uniform on [1.1, 1.6]: σ ≈ 0.14


@pytest.mark.parametrize("f", [augment.random_flip, augment.random_crop, augment.random_zoom])
def test_pure_in_the_key_and_jittable(f):
    x = jnp.asarray(np.random.default_rng(9).uniform(size=(16, 6, 6, 2)), jnp.float32)
    g = {augment.random_crop: lambda k, x: augment.random_crop(k, x, padding=2)}.get(f, f)
    a = jax.jit(g)(jax.random.key(5), x)
    chex.assert_trees_all_close(a, g(jax.random.key(5), x), atol=1e-6)
    assert not np.allclose(a, g(jax.random.key(6), x))
    chex.assert_shape(a, x.shape)


def test_errors_name_what_was_received():
    x = jnp.zeros((2, 5, 5, 1))
    with pytest.raises(ValueError, match=r"random_crop: expected a crop size \(height, width\) "
                                         r"of positive ints at most the padded image's \(7, 7\), "
                                         r"received \(8, 3\)"):
        augment.random_crop(jax.random.key(0), x, (8, 3), padding=1)
    with pytest.raises(ValueError, match="random_crop: expected a non-negative int padding, "
                                         "received -1"):
        augment.random_crop(jax.random.key(0), x, padding=-1)
    with pytest.raises(ValueError, match=r"zoom: expected one scale per image, shape \(2,\), "
                                         r"received shape \(3,\)"):
        augment.zoom(x, jnp.ones(3))
    with pytest.raises(ValueError, match=r"random_zoom: expected 0 < min_scale ≤ max_scale, "
                                         r"received min_scale=1.2, max_scale=0.8"):
        augment.random_zoom(jax.random.key(0), x, 1.2, 0.8)
    with pytest.raises(ValueError, match=r"random_flip: expected a probability in \[0, 1\], "
                                         r"received 1.5"):
        augment.random_flip(jax.random.key(0), x, probability=1.5)
    with pytest.raises(ValueError, match=r"random_flip: expected images of shape \(batch, height, "
                                         r"width, channels\), received shape \(5, 5\)"):
        augment.random_flip(jax.random.key(0), jnp.zeros((5, 5)))
