"""Character-level text: a vocabulary, encode/decode, a contiguous train/validation split, and
random windows of `context` characters as language-model batches (x, y = x shifted by one).

    text = fn.data.char_text("../shared/data/tinyshakespeare/input.txt")   # 65 characters
    train = jnp.asarray(text.train)            # on the device once, not at every step
    x, y = fn.data.text_windows(key, train, context=64, batch_size=12)
"""
from __future__ import annotations

import dataclasses
import numbers
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CharText", "char_text", "text_windows"]


def _code_points(text: str) -> np.ndarray:
    """The Unicode code points of `text` as uint32, without a Python loop."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


@dataclasses.dataclass(frozen=True, eq=False)
class CharText:
    """A character-level corpus: `vocab` (its distinct characters, sorted; id i is vocab[i]),
    `train` and `val` (int32 ids: the first `split` fraction of the text and the rest)."""

    vocab: tuple[str, ...]
    train: np.ndarray
    val: np.ndarray

    def encode(self, text: str) -> np.ndarray:
        """The int32 ids of the characters of `text`; ValueError for a character not in vocab."""
        if not isinstance(text, str):
            raise TypeError(f"CharText.encode: expected a str, received {type(text).__name__}")
        codes = _code_points(text)
        table = _code_points("".join(self.vocab))
        ids = np.minimum(np.searchsorted(table, codes), len(table) - 1)
        unknown = table[ids] != codes
        if unknown.any():
            missing = sorted({chr(c) for c in codes[unknown]})
            raise ValueError(f"CharText.encode: expected characters of the vocabulary "
                             f"({len(self.vocab)} characters), received {len(missing)} others: "
                             f"{''.join(missing)[:40]!r}")
        return ids.astype(np.int32)

    def decode(self, ids) -> str:
        """The string of a 1-D sequence of ids in [0, len(vocab))."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"CharText.decode: expected a 1-D sequence of integer ids, received "
                             f"shape {ids.shape} and dtype {ids.dtype}; decode a batch row by row")
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.vocab)):
            raise ValueError(f"CharText.decode: expected ids in [0, {len(self.vocab)}), received "
                             f"ids from {ids.min()} to {ids.max()}")
        return "".join(self.vocab[i] for i in ids.tolist())


def char_text(path, split: float = 0.9) -> CharText:
    """A character-level dataset from the UTF-8 text file at `path`.

    vocab = sorted distinct characters; `train` = the ids of the first ⌊split·n⌋ characters,
    `val` = the other n − ⌊split·n⌋ (a contiguous split: nanoGPT's shakespeare_char, whose 90 %
    of Tiny Shakespeare's 1,115,394 characters is 1,003,854). The vocabulary is the whole file's.
    """
    if not (isinstance(split, numbers.Real) and not isinstance(split, bool) and 0 < split < 1):
        raise ValueError(f"char_text: expected split, the training fraction, in (0, 1), received "
                         f"{split!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"char_text: expected a text file at path, received {str(path)!r},"
                                f" which {'is not a file' if path.exists() else 'does not exist'}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"char_text: expected a UTF-8 text file, received {str(path)!r} with an "
                         f"invalid byte at offset {error.start}") from None
    n_train = int(len(text) * split)
    if n_train == 0 or n_train == len(text):
        raise ValueError(f"char_text: expected a text long enough that split={split} leaves "
                         f"characters on both sides, received {len(text)} characters from "
                         f"{str(path)!r}" + (" (an empty file)" if not text else ""))
    codes = _code_points(text)
    table = np.unique(codes)
    ids = np.searchsorted(table, codes).astype(np.int32)
    vocab = tuple(chr(c) for c in table.tolist())
    return CharText(vocab, ids[:n_train], ids[n_train:])


def text_windows(key, ids, context: int, batch_size: int):
    """(x, y): `batch_size` windows of `context` ids starting at uniform random positions of
    the 1-D `ids`, and y the same windows one step later (y[b, t] = x[b, t + 1] = the next id).

    Starts are drawn from [0, len(ids) − context), so every y is inside `ids`. Jittable with
    `context` and `batch_size` static: `jax.jit(text_windows, static_argnames=("context",
    "batch_size"))`. Returns two (batch_size, context) arrays of ids' dtype.
    """
    for name, value in (("context", context), ("batch_size", batch_size)):
        if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"text_windows: expected {name} as a positive int, received "
                             f"{value!r}")
    ids = jnp.asarray(ids)
    if ids.ndim != 1 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"text_windows: expected ids as a 1-D integer array, received shape "
                         f"{ids.shape} and dtype {ids.dtype}")
    if context >= ids.shape[0]:
        raise ValueError(f"text_windows: expected context < len(ids) = {ids.shape[0]} (a window "
                         f"and its next id), received context {context}")
    starts = jax.random.randint(key, (batch_size, 1), 0, ids.shape[0] - context)
    windows = ids[starts + jnp.arange(context + 1)[None, :]]
    return windows[:, :-1], windows[:, 1:]
