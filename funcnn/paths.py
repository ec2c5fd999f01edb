"""Readable names for the leaves of parameter pytrees: "1/w" is the "w" of layer 1."""
from __future__ import annotations

import jax

__all__ = ["leaf_paths"]


def _entry(key) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaf_paths(tree) -> list[str]:
    """The "/"-joined path of every leaf of `tree`, in `jax.tree.leaves` order."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return ["/".join(_entry(k) for k in path) or "<root>" for path, _ in flat]
