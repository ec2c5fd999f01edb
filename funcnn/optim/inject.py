"""Hyper-parameters held in the optimizer state, read and changed between steps without
recompiling (the values are arrays of the state, not constants of the compiled program).

    opt = fn.optim.sgd(0.1, momentum=0.9)         # every alias is built with inject_hyperparams
    state = opt.init(params)
    fn.optim.hyperparams(state)                   # {"learning_rate": 0.1, "momentum": 0.9}
    state = fn.optim.set_hyperparams(state, learning_rate=0.05)

    opt = fn.optim.inject_hyperparams(fn.optim.clip_by_global_norm)(max_norm=1.0)
"""
from __future__ import annotations

import contextvars
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from funcnn.optim.base import GradientTransformation
from funcnn.optim.partition import PartitionState
from funcnn.values import value_factory

__all__ = ["InjectState", "hyperparams", "inject_hyperparams", "set_hyperparams"]

# True while an inject_hyperparams builds its factory: an alias built then (e.g. the `adam` of
# `inject_hyperparams(adam)`) is not injected again, the outer one holds the values.
_INSIDE = contextvars.ContextVar("funcnn_optim_inside_inject", default=False)


class InjectState(NamedTuple):
    count: jax.Array   # updates made so far (int32)
    hyperparams: dict  # name -> scalar: a number's value; a schedule's own value at the last
                       # update, schedule(count − 1) (schedule(0) before the first), unscaled
    scales: dict       # schedule name -> the multiplier of that schedule, initially 1
    inner_state: Any   # the state of factory(**values)


def _is_number(value) -> bool:
    """A number or numeric array, possibly traced (bools are not numbers here)."""
    return ((isinstance(value, numbers.Number) or hasattr(value, "dtype"))
            and jnp.issubdtype(jnp.result_type(value), jnp.number))


def _values(held: dict, scales: dict) -> dict:
    """The values in use: the numbers, and each schedule's value times its scale."""
    return {name: value * scales[name] if name in scales else value
            for name, value in held.items()}


@value_factory
def inject_hyperparams(factory: Callable[..., GradientTransformation],
                       static_args: tuple = ()) -> Callable[..., GradientTransformation]:
    """`inject_hyperparams(factory)(**hyperparams)`: factory(**hyperparams), its numeric
    hyper-parameters held in its state.

    Numbers (and numeric arrays, traced ones included) are held as scalars of the default float
    dtype; bools, strings, None and the names in `static_args` stay static (hyper-parameters
    that must stay integers go there too). A callable that is not static is a schedule
    t -> value: at update t (t = 0, 1, ...) the transform uses schedule(t)·scale, the scale held
    in the state (initially 1). Each update rebuilds factory(**current values) and runs its
    update, so `set_hyperparams` changes a value without recompiling.

    State: `InjectState(count, hyperparams, scales, inner_state)`. Read and change the values
    with `fn.optim.hyperparams` and `fn.optim.set_hyperparams`. A transform built inside the
    factory by an alias (itself injected) is not injected again: the outer one holds the values.
    """
    return lambda **hyperparams: _injected(factory, tuple(static_args),
                                           dict(sorted(hyperparams.items())))


@value_factory
def _injected(factory, static_args: tuple, hyperparams: dict) -> GradientTransformation:
    if _INSIDE.get():
        return factory(**hyperparams)
    static = {name: value for name, value in hyperparams.items()
              if name in static_args or not (callable(value) or _is_number(value))}
    schedules = {name: value for name, value in hyperparams.items()
                 if name not in static and callable(value)}
    fixed = {name: value for name, value in hyperparams.items()
             if name not in static and name not in schedules}
    held_names = sorted({**fixed, **schedules})

    def build(values: dict) -> GradientTransformation:
        inside = _INSIDE.set(True)
        try:
            return factory(**static, **values)
        finally:
            _INSIDE.reset(inside)

    def scheduled(count) -> dict:
        return {name: jnp.asarray(s(count), jnp.result_type(float))
                for name, s in schedules.items()}

    def init(params):
        real = jnp.result_type(float)
        held = {**{name: jnp.array(v, real) for name, v in fixed.items()},
                **scheduled(jnp.zeros([], jnp.int32))}
        scales = {name: jnp.ones([], real) for name in schedules}
        return InjectState(jnp.zeros([], jnp.int32), held, scales,
                           build(_values(held, scales)).init(params))

    def update(updates, state, params=None, **extra):
        if not isinstance(state, InjectState) or sorted(state.hyperparams) != held_names:
            raise ValueError(f"inject_hyperparams.update: expected a state holding the "
                             f"hyper-parameters {held_names}; was it made by another "
                             f"optimizer's init?")
        held = {**state.hyperparams, **scheduled(state.count)}
        updates, inner = build(_values(held, state.scales)).update(
            updates, state.inner_state, params, **extra)
        return updates, InjectState(state.count + 1, held, state.scales, inner)

    return GradientTransformation(init, update)


def _is_node(x) -> bool:
    return isinstance(x, (InjectState, PartitionState))


def _nodes(tree) -> list:
    """The outermost injected and partition states inside `tree`, in tree order."""
    return [s for s in jax.tree.leaves(tree, is_leaf=_is_node) if _is_node(s)]


def hyperparams(opt_state) -> dict:
    """The hyper-parameters held in an optimizer state: name -> value (arrays).

    A schedule's value is the rate of the last update made, schedule(count − 1)·scale
    (schedule(0)·scale before the first). Injected states are found anywhere in the state
    (e.g. in a `chain`'s tuple); a name held twice is reported with its first holder's value.
    A `partition` state gives `{pattern: dict}`. A state holding none: `{}`. Stacked (vmapped)
    states give arrays with the leading members axis.
    """
    found = {}
    for node in reversed(_nodes(opt_state)):
        if isinstance(node, PartitionState):
            found.update({pattern: hyperparams(s) for pattern, s in node.groups.items()})
        else:
            found.update({**hyperparams(node.inner_state),
                          **_values(node.hyperparams, node.scales)})
    return found


def _names(tree, group) -> set:
    """The names that set_hyperparams(tree, group, ...) can set."""
    names = set()
    for node in _nodes(tree):
        if isinstance(node, PartitionState):
            for pattern, s in node.groups.items():
                names |= _names(s, None) if group in (None, pattern) else set()
        else:
            names |= _names(node.inner_state, group)
            names |= set(node.hyperparams) if group is None else set()
    return names


def _groups(tree) -> list:
    """The group names of the partitions inside `tree`."""
    return [pattern for node in _nodes(tree) for pattern in (
        node.groups if isinstance(node, PartitionState) else _groups(node.inner_state))]


def set_hyperparams(opt_state, group: str | None = None, **values):
    """A copy of `opt_state` with hyper-parameters changed: every holder of each name, or with
    `group=pattern` only the holders inside that group of a `partition`.

    A number is replaced. A schedule s is rescaled, scale ← v / s(count − 1) (s(0) at count 0),
    so that its reported value becomes v and every later rate s(t)·scale changes by the same
    factor; where s(count − 1) = 0 the scale is kept (0 cannot be rescaled). Values broadcast
    against stacked (vmapped) states. Unknown names raise a ValueError listing the known ones.
    """
    if not _names(opt_state, None):
        raise ValueError("set_hyperparams: the optimizer state holds no hyper-parameters: the "
                         "optimizer was not built with fn.optim.inject_hyperparams")
    if group is not None and group not in _groups(opt_state):
        raise ValueError(f"set_hyperparams: no group {group!r}; the groups are "
                         f"{_groups(opt_state)}")
    known = _names(opt_state, group)
    unknown = sorted(set(values) - known)
    if unknown:
        where = "" if group is None else f" in group {group!r}"
        raise ValueError(f"set_hyperparams: unknown hyper-parameter(s) {unknown}{where}; "
                         f"known: {sorted(known)}")
    return _set(opt_state, values, group)


def _set(tree, values: dict, group):
    """`tree` with `values` set in the injected states in scope (`group`: see set_hyperparams)."""
    def node(s):
        if isinstance(s, PartitionState):
            return PartitionState({pattern: _set(g, values, None) if group in (None, pattern)
                                   else g for pattern, g in s.groups.items()})
        if isinstance(s, InjectState):
            own = _set_own(s, values) if group is None else s
            return own._replace(inner_state=_set(s.inner_state, values, group))
        return s

    return jax.tree.map(node, tree, is_leaf=_is_node)


def _set_own(state: InjectState, values: dict) -> InjectState:
    """A number is replaced; a schedule's scale becomes value / (its own current value)."""
    held, scales = dict(state.hyperparams), dict(state.scales)
    for name in set(values) & set(held):
        new = jnp.broadcast_to(jnp.array(values[name], held[name].dtype), held[name].shape)
        if name in scales:
            scales[name] = jnp.where(held[name] != 0, new / held[name], scales[name])
        else:
            held[name] = new
    return state._replace(hyperparams=held, scales=scales)
