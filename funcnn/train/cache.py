"""The one cache of compiled programs: `compiled(build, *config)` and `clear_caches()`; and the
on-disk cache across processes, `persistent_cache()`.

Layers, losses and optimizers are values (`funcnn.values`): a rebuilt model equal to an earlier
one finds the program compiled for it here, and jit's own cache then skips recompilation. The
cache holds at most `MAX_PROGRAMS` builds, least recently used first out; a configuration that
cannot be hashed (an unhashable user object) is built afresh each time, never cached wrongly.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import jax

__all__ = ["clear_caches", "compiled", "init_program", "persistent_cache"]

CACHE_ENV = "FUNCNN_COMPILATION_CACHE"

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
        persistent_cache()   # every program built here is also kept on disk for the next run
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


def persistent_cache() -> str | None:
    """Turn on JAX's persistent compilation cache, so a second run of a script loads its
    programs from disk instead of compiling them; `compiled` calls this before each build (so
    `fit`, `fn.ensemble` and `fn.diagnostics` programs are all kept). Returns the folder, or None.

    The folder is $FUNCNN_COMPILATION_CACHE, else $XDG_CACHE_HOME/funcnn/xla (~/.cache/funcnn/xla);
    every program compiled from then on in the process is stored (jax's
    `persistent_cache_min_compile_time_secs` lowered to 0), keyed by its HLO, the jax version
    and the flags, so an entry is never reused for another program. Opt out with
    FUNCNN_COMPILATION_CACHE=off; a cache configured through jax itself
    (`jax_compilation_cache_dir`, `jax_enable_compilation_cache`) is left as it is.
    """
    chosen = os.environ.get(CACHE_ENV, "")
    if chosen.lower() in ("off", "0", "false", "no"):
        return None
    if not jax.config.jax_enable_compilation_cache or jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    folder = Path(chosen) if chosen else Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "funcnn" / "xla"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:   # a read-only home: compile as before
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return str(folder)
