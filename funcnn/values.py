"""Factories whose results are values: `Dense(3) == Dense(3)`, `adam(1e-3) == adam(1e-3)`.

    @value_factory
    def Dense(out, w_init=he_normal, b_init=zeros): ...

A decorated factory records how it was called: its qualified name and its arguments bound to its
signature with the defaults filled in (so `adam(1e-3) == adam(learning_rate=1e-3)`). Two results
with equal records compare and hash equal, so caches keyed on them (jit's, `fn.train`'s compiled
programs) reuse one compilation for a rebuilt model. Numbers are recorded with their type
(`sgd(1) != sgd(1.0)`: a configuration is what was written); dicts and lists are recorded as tuples of
their items, in order. When an argument cannot be hashed (an array, a traced value), the result
falls back to identity: equal only to itself, never wrongly equal.

A result that has a `with_config(config)` method (a `fn.nn.Layer`, a
`fn.optim.GradientTransformation`) is tagged through it; any other callable (a schedule, an
initializer) is wrapped in `Configured`, which calls through and compares by the record.
"""
from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Mapping
from typing import Any, Callable

__all__ = ["Configured", "config_of", "describe", "tag", "value_factory"]


class Configured:
    """A callable that behaves as `fn` and compares and hashes by `config`."""

    __slots__ = ("fn", "config", "__wrapped__", "__weakref__")   # jax.jit holds weak references

    def __init__(self, fn: Callable, config: tuple):
        self.fn, self.config, self.__wrapped__ = fn, config, fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __eq__(self, other):
        return isinstance(other, Configured) and self.config == other.config

    def __hash__(self):
        return hash(self.config)

    def __repr__(self):
        return describe(self.config)


def _recorded(value):
    """`value` as a hashable record: numbers with their type, containers as tuples."""
    if isinstance(value, bool) or isinstance(value, numbers.Number):
        return (type(value).__name__, value)
    if isinstance(value, Mapping):
        return ("dict", tuple((k, _recorded(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return (type(value).__name__, tuple(_recorded(v) for v in value))
    return value


def config_of(factory: Callable, *args, **kwargs) -> tuple | None:
    """The record of `factory(*args, **kwargs)`, or None when an argument is not hashable."""
    bound = inspect.signature(factory).bind(*args, **kwargs)
    bound.apply_defaults()
    config = (factory.__module__, factory.__qualname__,
              tuple((name, _recorded(value)) for name, value in bound.arguments.items()))
    try:
        hash(config)
    except TypeError:   # an array, a tracer, an unhashable user object: identity semantics
        return None
    return config


def tag(made: Any, config: tuple | None):
    """`made` compared by `config` (unchanged when config is None)."""
    if config is None:
        return made
    with_config = getattr(made, "with_config", None)
    if with_config is not None:
        return with_config(config)
    if callable(made):
        return Configured(made, config)
    raise TypeError(f"value_factory: cannot tag a {type(made).__name__}; expected a callable or "
                    f"an object with a with_config method")


def value_factory(factory: Callable) -> Callable:
    """Decorate a factory so that its results compare and hash by configuration."""

    @functools.wraps(factory)
    def build(*args, **kwargs):
        return tag(factory(*args, **kwargs), config_of(factory, *args, **kwargs))

    return build


def describe(config: tuple) -> str:
    """A short readable form of a record: `adam(learning_rate=0.001, b1=0.9, …)`."""
    _, name, arguments, *role = config   # role: e.g. "update" for a transformation's half
    shown = ", ".join(f"{key}={_show(value)}" for key, value in arguments)
    return f"{name}({shown})" + "".join(f".{part}" for part in role)


def _show(record) -> str:
    if isinstance(record, tuple) and len(record) == 2 and record[0] in ("int", "float", "bool"):
        return repr(record[1])
    if isinstance(record, tuple) and len(record) == 2 and record[0] in ("tuple", "list"):
        return "(" + ", ".join(_show(r) for r in record[1]) + ")"
    if isinstance(record, tuple) and len(record) == 2 and record[0] == "dict":
        return "{" + ", ".join(f"{k!r}: {_show(v)}" for k, v in record[1]) + "}"
    return getattr(record, "__name__", None) or repr(record)
