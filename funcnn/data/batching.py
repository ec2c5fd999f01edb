"""Shuffled mini-batches from an explicit PRNG key."""
from __future__ import annotations

import jax
import numpy as np

from funcnn.nn.core import is_positive_int

__all__ = ["batches"]


def batches(key, arrays, batch_size: int, *, drop_last: bool = True):
    """Yield tuples of mini-batches of `arrays` (a tuple sharing the leading axis), shuffled by `key`.

    `arrays` is a tuple or list such as (x, y), or (x,) for one array. The same key gives the
    same order; a new epoch should fold the epoch number into the key. With `drop_last`, the
    final partial batch is skipped so every batch has `batch_size` rows (one compiled shape);
    then batch_size may not exceed the number of rows.
    """
    if not isinstance(arrays, (tuple, list)) or not arrays:
        received = (f"a single array of shape {np.shape(arrays)}; wrap it as (x,)"
                    if hasattr(arrays, "shape") else f"{type(arrays).__name__} {repr(arrays)[:60]}")
        raise ValueError(f"batches: expected a non-empty tuple of arrays sharing the leading "
                         f"axis, e.g. (x, y), received {received}")
    arrays = tuple(arrays)
    if any(np.ndim(a) == 0 for a in arrays):
        raise ValueError(f"batches: expected arrays with a leading (rows) axis, received shapes "
                         f"{[np.shape(a) for a in arrays]}")
    n = len(arrays[0])
    for a in arrays:
        if len(a) != n:
            raise ValueError(f"batches: expected arrays with the same number of rows, received "
                             f"{[len(a) for a in arrays]}")
    if not is_positive_int(batch_size):
        raise ValueError(f"batches: expected batch_size to be an int ≥ 1, received "
                         f"{batch_size!r}")
    if drop_last and batch_size > n:
        raise ValueError(f"batches: expected batch_size <= the {n} rows with drop_last=True "
                         f"(else no batch at all), received batch_size {batch_size}")
    order = np.asarray(jax.random.permutation(key, n))
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        yield tuple(a[index] for a in arrays)
