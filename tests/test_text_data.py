"""fn.data.char_text and fn.data.text_windows: vocabulary, encode/decode round trips, the
contiguous train/validation split, language-model windows (y = x shifted by one), errors. The
Tiny Shakespeare figures are checked only when ../shared/data/tinyshakespeare is present."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare/input.txt"
TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler — café ✓\n" * 3


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_vocabulary_round_trip_and_contiguous_split(corpus):
    text = fn.data.char_text(corpus)
    assert text.vocab == tuple(sorted(set(TEXT)))                  # non-ASCII included
    assert all(len(c) == 1 for c in text.vocab)
    ids = text.encode(TEXT)
    assert ids.dtype == np.int32 and ids.shape == (len(TEXT),)
    np.testing.assert_array_equal(ids, [text.vocab.index(c) for c in TEXT])
    assert text.decode(ids) == TEXT
    assert text.decode(jnp.asarray(ids[:7])) == TEXT[:7]           # device arrays too
    assert text.encode("") .shape == (0,) and text.decode(np.zeros(0, np.int32)) == ""
    # The split: the first ⌊0.9 n⌋ characters, then the rest, in order.
    assert len(text.train) == int(0.9 * len(TEXT)) and text.train.dtype == np.int32
    np.testing.assert_array_equal(np.concatenate([text.train, text.val]), ids)
    assert text.decode(text.val) == TEXT[int(0.9 * len(TEXT)):]
    quarter = fn.data.char_text(corpus, split=0.25)
    assert quarter.vocab == text.vocab and len(quarter.train) == len(TEXT) // 4


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="Tiny Shakespeare not found at "
                    "../shared/data/tinyshakespeare/input.txt")
def test_tiny_shakespeare_is_nanogpts_shakespeare_char():
    text = fn.data.char_text(SHAKESPEARE)
    assert len(text.vocab) == 65 and text.vocab[:2] == ("\n", " ")
    assert (len(text.train), len(text.val)) == (1_003_854, 111_540)   # nanoGPT's prepare.py
    raw = SHAKESPEARE.read_text(encoding="utf-8")
    assert text.decode(text.train[:200]) == raw[:200]
    assert text.decode(text.val[-200:]) == raw[-200:]


def test_windows_are_contiguous_and_targets_are_shifted_by_one():
    ids = jnp.arange(50, dtype=jnp.int32)                          # id = its own position
    x, y = fn.data.text_windows(jax.random.key(0), ids, context=8, batch_size=400)
    assert x.shape == y.shape == (400, 8) and x.dtype == y.dtype == jnp.int32
    starts = np.asarray(x[:, 0])
    np.testing.assert_array_equal(x, starts[:, None] + np.arange(8))    # contiguous windows
    np.testing.assert_array_equal(y, x + 1)                             # the next id
    # Every start in [0, 50 − 8) is drawn, none outside: y's last id is still inside ids.
    assert set(starts.tolist()) == set(range(42))


def test_windows_jitted_and_deterministic_given_key():
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 65, 300), jnp.int32)
    windows = jax.jit(fn.data.text_windows, static_argnames=("context", "batch_size"))
    key = jax.random.key(3)
    first = windows(key, ids, context=16, batch_size=5)
    np.testing.assert_array_equal(first, windows(key, ids, context=16, batch_size=5))
    np.testing.assert_array_equal(first, fn.data.text_windows(key, ids, 16, 5))
    assert not np.array_equal(first[0], windows(jax.random.key(4), ids, context=16,
                                                batch_size=5)[0])
    np.testing.assert_array_equal(first[0][:, 1:], first[1][:, :-1])


def test_errors(corpus, tmp_path):
    text = fn.data.char_text(corpus)
    with pytest.raises(ValueError, match="characters of the vocabulary.*'Z'"):
        text.encode("aZ")
    with pytest.raises(TypeError, match="expected a str"):
        text.encode(["a"])
    with pytest.raises(ValueError, match=r"ids in \[0, "):
        text.decode([0, len(text.vocab)])
    with pytest.raises(ValueError, match="ids in"):
        text.decode([-1])
    with pytest.raises(ValueError, match="1-D sequence of integer ids"):
        text.decode(np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError, match="1-D sequence of integer ids"):
        text.decode(np.array([0.0, 1.0]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fn.data.char_text(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="is not a file"):
        fn.data.char_text(tmp_path)
    for split in (0, 1, 1.5, True, "0.9"):
        with pytest.raises(ValueError, match="split"):
            fn.data.char_text(corpus, split=split)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="UTF-8.*offset 3"):
        fn.data.char_text(latin1)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty file"):
        fn.data.char_text(empty)
    ids = jnp.arange(10, dtype=jnp.int32)
    key = jax.random.key(0)
    for name, kwargs in (("context", dict(context=0, batch_size=2)),
                         ("batch_size", dict(context=3, batch_size=2.0))):
        with pytest.raises(ValueError, match=f"{name} as a positive int"):
            fn.data.text_windows(key, ids, **kwargs)
    with pytest.raises(ValueError, match=r"context < len\(ids\) = 10"):
        fn.data.text_windows(key, ids, context=10, batch_size=2)
    with pytest.raises(ValueError, match="1-D integer array"):
        fn.data.text_windows(key, ids.reshape(2, 5), context=2, batch_size=2)
    with pytest.raises(ValueError, match="1-D integer array"):
        fn.data.text_windows(key, jnp.zeros(10), context=2, batch_size=2)
