"""The one cache of compiled programs: `compiled(build, *config)` and `clear_caches()`.

Layers, losses and optimizers are values (`funcnn.values`): a rebuilt model equal to an earlier
one finds the program compiled for it here, and jit's own cache then skips recompilation. The
cache holds at most `MAX_PROGRAMS` builds, least recently used first out; a configuration that
cannot be hashed (an unhashable user object) is built afresh each time, never cached wrongly.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import jax

__all__ = ["clear_caches", "compiled", "init_program"]

MAX_PROGRAMS = 64
_programs: OrderedDict = OrderedDict()


def compiled(build: Callable[..., Any], *config) -> Any:
    """`build(*config)`, reused for an equal (build, *config) while it stays in the cache."""
    key = (build, *config)
    try:
        found = _programs.get(key)
    except TypeError:   # an unhashable argument: nothing to key on
        return build(*config)
    if found is None:
        found = _programs[key] = build(*config)
        if len(_programs) > MAX_PROGRAMS:
            _programs.popitem(last=False)
    else:
        _programs.move_to_end(key)
    return found


def init_program(model):
    """The jitted `model.init(key, in_shape)` (in_shape static): cache it with `compiled`."""
    return jax.jit(model.init, static_argnums=1)


def clear_caches() -> None:
    """Forget every compiled program of `fn.train`, `fn.ensemble` and `fn.diagnostics` (and
    jax's own caches of them); the next call recompiles."""
    _programs.clear()
    jax.clear_caches()
