"""Counting XLA compilations in a test: `with compilations() as count: ...; count()`."""
import contextlib

import jax


@contextlib.contextmanager
def compilations():
    """Count XLA compilations inside the block (jax's backend-compile duration events)."""
    events = []
    listener = lambda name, seconds, **kw: events.append(name)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield lambda: events.count("/jax/core/compile/backend_compile_duration")
    finally:
        unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
        if unregister is None:   # jax < 0.8.1 has only the private one
            from jax._src.monitoring import (
                _unregister_event_duration_listener_by_callback as unregister)
        unregister(listener)
