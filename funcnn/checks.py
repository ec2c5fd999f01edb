"""Checks shared by every module (the bottom of the import graph: numbers only, no jax)."""
from __future__ import annotations

import numbers

__all__ = ["describe_shape", "is_positive_int"]


def describe_shape(shape) -> str:
    """(2, 3), (4,), (): a shape as it reads in an error message."""
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def is_positive_int(value) -> bool:
    """A positive integer: a Python or NumPy int (np.int64(3) too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0
