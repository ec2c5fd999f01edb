"""Different optimizers for different parameters: `partition` by leaf name, and `frozen`.

    opt = fn.optim.partition({"0/*": fn.optim.frozen(),          # layer 0 fixed
                              "**/b": fn.optim.sgd(0.1)},         # every bias: plain SGD
                             default=fn.optim.adam(1e-3))         # the rest: Adam

Leaves are named as `fn.paths.leaf_paths` names them ("0/w", "3/1/b").
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

from funcnn.optim.base import EmptyState, GradientTransformation
from funcnn.paths import leaf_paths
from funcnn.values import value_factory

__all__ = ["PartitionState", "frozen", "partition"]

_DEFAULT = "default"


class PartitionState(NamedTuple):
    groups: dict   # pattern (and "default") -> that group's state


def _glob(pattern: str) -> re.Pattern:
    """`pattern` as a regex over "/"-terminated paths: `*` within a segment, `**` whole segments."""
    parts = ["(?:[^/]+/)*" if segment == "**" else re.escape(segment).replace(r"\*", "[^/]*") + "/"
             for segment in pattern.split("/")]
    return re.compile("".join(parts))


@value_factory
def partition(rules: Mapping[str, GradientTransformation],
              default: GradientTransformation | None = None) -> GradientTransformation:
    """Each parameter leaf is updated by the transform of the first pattern matching its name.

    `rules` maps glob patterns over leaf names ("0/w", "3/*", "1/*/b") to transforms: `*`
    matches within one "/"-segment, `**` any number of whole segments (zero included: "**/b"
    matches "b" and "2/1/b"). A leaf that no pattern matches goes to `default` (group
    "default"); with `default=None` that is a ValueError naming the leaf, as is a pattern that
    matches no leaf at all (a typo).

    Each group's transform sees trees of the full structure in which the other groups' leaves
    are None (so name-based masks such as `weights_only` still work); `params` and `**extra`
    (e.g. `value=loss`) reach every group. State: `PartitionState(groups)`, one state per
    pattern (then "default"); `fn.optim.hyperparams` of it is `{pattern: dict}`.
    """
    groups = dict(rules)
    if default is not None:
        if _DEFAULT in groups:
            raise ValueError(f"partition: a rule is named {_DEFAULT!r}, the name of the default "
                             f"group; rename the pattern or pass default=None")
        groups[_DEFAULT] = default
    globs = [(pattern, _glob(pattern)) for pattern in rules]

    def group_of(path: str) -> str:
        for pattern, glob in globs:
            if glob.fullmatch(path + "/"):
                return pattern
        if default is None:
            raise ValueError(f"partition: no pattern matches the leaf {path!r} (patterns: "
                             f"{list(rules)}); add a rule or pass default=")
        return _DEFAULT

    def split(tree, labels, name):
        """`tree` with the leaves of the other groups replaced by None."""
        leaves, treedef = jax.tree.flatten(tree)
        return treedef.unflatten([x if label == name else None
                                  for x, label in zip(leaves, labels)])

    def init(params):
        paths = leaf_paths(params)
        labels = [group_of(path) for path in paths]
        unused = [pattern for pattern, glob in globs
                  if not any(glob.fullmatch(path + "/") for path in paths)]
        if unused:   # a typo ("O/*" for "0/*") would otherwise freeze or train nothing, silently
            raise ValueError(f"partition: the pattern(s) {unused} match no parameter; the "
                             f"parameters are {paths}")
        return PartitionState({name: t.init(split(params, labels, name))
                               for name, t in groups.items()})

    def update(updates, state, params=None, **extra):
        if not isinstance(state, PartitionState) or set(state.groups) != set(groups):
            raise ValueError(f"partition.update: expected a PartitionState with the groups "
                             f"{list(groups)}; was the state made by another optimizer's init?")
        labels = [group_of(path) for path in leaf_paths(updates)]
        leaves, treedef = jax.tree.flatten(updates)
        new_states = {}
        for name, t in groups.items():
            group_params = None if params is None else split(params, labels, name)
            group_updates, new_states[name] = t.update(split(updates, labels, name),
                                                       state.groups[name], group_params, **extra)
            leaves = [new if label == name else old for old, new, label in
                      zip(leaves, treedef.flatten_up_to(group_updates), labels)]
        return treedef.unflatten(leaves), PartitionState(new_states)

    return GradientTransformation(init, update)


@value_factory
def frozen() -> GradientTransformation:
    """Updates of −0.0 and an empty state: p + u is bit-identical to p, whatever the gradient.

    (−0.0 rather than +0.0 so that a parameter equal to −0.0 stays −0.0; a NaN gradient is
    ignored.) Its hyper-parameters are `{}`.
    """
    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra):
        return jax.tree.map(lambda g: jnp.full_like(g, -0.0), updates), state

    return GradientTransformation(init, update)
