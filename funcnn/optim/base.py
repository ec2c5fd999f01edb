"""The optimizer protocol: a `GradientTransformation` is a pair of pure functions.

    state = transform.init(params)
    updates, state = transform.update(grads, state, params=None, **extra)
    params = apply_updates(params, updates)

`extra` carries side information that some transforms read (e.g. `value=loss` for
`reduce_on_plateau`, `value_fn=` params -> loss for `lbfgs`); every transform accepts and ignores
what it does not use, so `chain` hands it to all of them. States are NamedTuples of arrays: they
jit, vmap, flatten and checkpoint like any pytree.

Masks (`mask=` of weight decay, max-norm, L1 shrinkage, regularizers) select leaves: a pytree
of bools with the structure of params (or a prefix of it), or a function params -> such a tree.
The default, `weights_only`, selects the leaves named "w" (Dense and Conv2D kernels), never
biases "b", BatchNorm's "scale"/"offset" or PReLU's "slope". A mask describes the structure of
params, not their values: its leaves are Python bools.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from funcnn.paths import leaf_paths
from funcnn.values import Configured, value_factory

__all__ = ["EmptyState", "GradientTransformation", "all_finite", "apply_updates", "chain", "lift",
           "reads_value_fn", "require_params", "resolve_mask", "weights_only"]


class GradientTransformation(NamedTuple):
    """An optimizer piece: a pair of pure functions.

    init(params) -> state;  update(updates, state, params=None, **extra) -> (updates, state).
    Made by a factory of `fn.optim`, it is a value: `adam(1e-3) == adam(1e-3)`, hash equal.
    """

    init: Callable[..., Any]
    update: Callable[..., tuple[Any, Any]]

    def with_config(self, config: tuple) -> GradientTransformation:
        """The same functions, compared and hashed by `config` (see `funcnn.values`)."""
        return GradientTransformation(Configured(self.init, config + ("init",)),
                                      Configured(self.update, config + ("update",)))


class EmptyState(NamedTuple):
    """The state of a transform that keeps none."""


@value_factory
def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Compose transforms left to right: each one's updates are the next one's input.

    The state is the tuple of the parts' states; `params` and `**extra` reach every part.
    """
    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(updates, state, params=None, **extra):
        if len(state) != len(transforms):
            raise ValueError(f"chain.update: expected a state with one entry per transform "
                             f"({len(transforms)}), received {len(state)} entries; was it made "
                             f"by another optimizer's init?")
        new_state = []
        for t, s in zip(transforms, state):
            updates, s = t.update(updates, s, params, **extra)
            new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformation(init, update)


def _check_shapes(name: str, what: str, tree, like, like_what: str = "parameter") -> None:
    """Raise a ValueError naming the leaf where `tree` and `like` differ in shape.

    Explicit, because broadcasting would silently turn a (4,) parameter and a (4, 1) gradient
    into a (4, 4) parameter.
    """
    like_leaves, treedef = jax.tree.flatten(like)
    for path, x, y in zip(leaf_paths(like), like_leaves, treedef.flatten_up_to(tree)):
        if jnp.shape(x) != jnp.shape(y):
            raise ValueError(f"{name}: at leaf {path}: expected the {what} to have the shape of "
                             f"its {like_what} {jnp.shape(x)}, received {jnp.shape(y)}")


def apply_updates(params, updates):
    """params + updates, leaf by leaf, each result in its parameter's dtype and shape.

    Mixed precision is on purpose: bfloat16 params + float32 updates are summed in float32 and
    rounded once (under strict dtype promotion too).
    """
    _check_shapes("apply_updates", "update", updates, params)

    def add(p, u):
        with jax.numpy_dtype_promotion("standard"):
            return (p + u).astype(p.dtype)

    return jax.tree.map(add, params, updates)


def lift(leaf_fn: Callable[..., tuple], tree, *rest, outputs: int) -> tuple:
    """Lift a rule written for one array to pytrees: `leaf_fn(x, *ys)` returns `outputs` arrays.

    Returns `outputs` trees with the structure of `tree`; `rest` are trees of the same structure
    and leaf shapes (e.g. gradients, then optimizer state shaped like the parameters).
    """
    leaves, treedef = jax.tree.flatten(tree)
    for r in rest:
        _check_shapes("optimizer update", "gradient", tree, r, "optimizer state")
    rest_leaves = [treedef.flatten_up_to(r) for r in rest]
    results = [leaf_fn(*xs) for xs in zip(leaves, *rest_leaves)]
    return tuple(treedef.unflatten([r[i] for r in results]) for i in range(outputs))


def weights_only(params):
    """The default mask: True for leaves whose dict key is "w", False for every other leaf."""
    def is_weight(path, _):
        return bool(path) and isinstance(path[-1], jax.tree_util.DictKey) and path[-1].key == "w"

    return jax.tree_util.tree_map_with_path(is_weight, params)


def resolve_mask(mask, params):
    """The mask as a tree of Python bools with exactly the structure of `params`.

    `mask` is a tree of bools shaped like params or a prefix of it (a bool for a whole subtree),
    or a function params -> such a tree.
    """
    tree = mask(params) if callable(mask) else mask
    try:
        return jax.tree.map(lambda m, sub: jax.tree.map(lambda _: bool(m), sub), tree, params)
    except ValueError as err:
        raise ValueError(f"mask structure {jax.tree.structure(tree)} does not match the "
                         f"parameters' structure {jax.tree.structure(params)}") from err


def all_finite(*trees):
    """True (a traced bool) when every floating-point leaf of every tree is finite."""
    checks = [jnp.all(jnp.isfinite(leaf)) for tree in trees for leaf in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


def require_params(params, name: str):
    """Raise a clear error when a transform that reads the parameters was not given them."""
    if params is None:
        raise ValueError(f"{name} reads the parameters: call update(grads, state, params)")


def reads_value_fn(transform) -> bool:
    """Whether `transform`, or a transform inside it (e.g. a `chain`'s part), reads the objective
    `value_fn=` (params -> loss) in its update, as `lbfgs` and `newton` do.

    Such an update function carries the attribute `reads_value_fn = True`; the transforms inside
    another are found through its configuration record (`funcnn.values`).
    """
    if isinstance(transform, GradientTransformation):
        return reads_value_fn(transform.update)
    if isinstance(transform, Configured):
        return getattr(transform.fn, "reads_value_fn", False) or reads_value_fn(transform.config)
    if isinstance(transform, tuple):
        return any(reads_value_fn(part) for part in transform)
    return getattr(transform, "reads_value_fn", False) is True
