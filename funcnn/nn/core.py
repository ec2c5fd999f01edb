"""The Layer contract and the combinators that derive forward/backward from their children.

A layer is an immutable value holding pure functions (shapes exclude the batch axis):

    params, state = layer.init(key, in_shape)
    y, state      = layer.apply(params, state, x, *, key=None, train=False)
    y, state, res = layer.forward(params, state, x, *, key=None, train=False)
    dparams, dx   = layer.backward(params, res, dy)      # hand-written vector-Jacobian product
    out_shape     = layer.output_shape(in_shape)
    branches      = layer.branches(params, state, x, *, key=None, train=False)

`branches` returns the discrete choice taken at every kink of a piecewise function (the sign of
a ReLU pre-activation, the winner of a max); a smooth layer returns `()`. `fn.gradcheck` compares
branches at θ ± h to tell a real gradient error from a kink crossed by the finite difference.

Layers are values: every factory of `fn.nn` (`Dense(3)`, `serial(...)`) records its
configuration (`funcnn.values`), and two layers with equal configurations are equal and hash
equal, so a rebuilt model reuses the compiled programs cached for the first. A user's own layer
may be a `Layer(...)` built directly (equal only to itself) or any object with `init`, `apply`,
`forward` and `backward`; the combinators accept both (`as_layer`).

Dtypes: a layer computes in the standard promotion of its input's and its parameters' dtypes
(what `x @ w` gives in JAX's default mode), and casts explicitly, so it runs unchanged under
`jax_numpy_dtype_promotion="strict"`; its `backward` returns ∂L/∂x in x's dtype and each
∂L/∂θ in θ's dtype, as `jax.vjp` does.
"""
from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from funcnn.checks import describe_shape, is_positive_int
from funcnn.values import config_of, describe, tag

__all__ = ["Layer", "along_last_axis", "as_layer", "carried_shape", "check_entry", "check_floating",
           "check_in_shape", "check_key", "check_last_dim", "check_rank", "child_key",
           "describe_shape", "first_max", "in_param_dtypes", "is_positive_int", "parallel",
           "promoted", "residual", "route_to_winner", "serial", "shape_carrier"]

Shape = tuple[int, ...]


def _no_branches(params, state, x, *, key=None, train=False):
    del params, state, x, key, train
    return ()


def _same_shape(in_shape):
    return tuple(in_shape)


@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
    """A layer: pure `init`, `forward`, `backward` (and `apply`, `output_shape`, `branches`).

    `config` is the record of the factory call that built it (`funcnn.values`): layers with
    equal configs are equal and hash equal; a layer without one (built directly) is equal only
    to itself. Only `with_config` sets it: a copy made by `dataclasses.replace` (another name,
    another apply) has none, so that it is never taken for the layer it was derived from.
    """

    name: str
    init: Callable[..., tuple[Any, Any]]
    forward: Callable[..., tuple[Any, Any, Any]]
    backward: Callable[..., tuple[Any, Any]]
    output_shape: Callable[[Shape], Any] = _same_shape
    branches: Callable[..., Any] = _no_branches
    apply_fn: Callable[..., tuple[Any, Any]] | None = None
    children: tuple = ()   # a serial's layers, in order (for per-layer diagnostics)
    config: tuple | None = dataclasses.field(default=None, init=False)

    def apply(self, params, state, x, *, key=None, train=False):
        """y, state = layer.apply(params, state, x): the forward pass without residuals."""
        if self.apply_fn is not None:
            return self.apply_fn(params, state, x, key=key, train=train)
        y, state, _ = self.forward(params, state, x, key=key, train=train)
        return y, state

    def with_config(self, config: tuple) -> Layer:
        """A copy of this layer, compared and hashed by `config`."""
        tagged = dataclasses.replace(self)
        object.__setattr__(tagged, "config", config)
        return tagged

    def __eq__(self, other):
        if self is other:
            return True
        if not isinstance(other, Layer):
            return NotImplemented
        return self.config is not None and self.config == other.config

    def __hash__(self):
        return id(self) if self.config is None else hash(self.config)

    def __repr__(self):
        if "(" in self.name:   # a combinator: its children's reprs
            return self.name
        return describe(self.config) if self.config is not None else f"{self.name}()"


# ---------------------------------------------------------------------------------------------
# Input checks shared by every layer: clear errors before XLA sees a bad array.


def check_floating(layer: str, x) -> None:
    """Raise TypeError unless `x` is a floating-point array."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{layer}: expected a floating-point input array, received "
                        f"{type(x).__name__} of dtype {dtype}")


def check_rank(layer: str, x, rank: int, layout: str) -> None:
    """Raise ValueError unless `x` has `rank` axes, described as e.g. "(batch, height, width, channels)"."""
    check_floating(layer, x)
    if x.ndim != rank:
        raise ValueError(f"{layer}: expected an input of rank {rank} {layout}, received an "
                         f"input of shape {describe_shape(x.shape)} (rank {x.ndim})")


def check_last_dim(layer: str, x, expected: int, what: str = "features") -> None:
    """Raise ValueError unless the last axis of `x` has `expected` entries."""
    check_floating(layer, x)
    if x.ndim < 2:
        raise ValueError(f"{layer}: expected an input of shape (batch, {expected}) with a batch "
                         f"axis, received shape {describe_shape(x.shape)}")
    if x.shape[-1] != expected:
        raise ValueError(f"{layer}: expected {expected} input {what} (last axis), received "
                         f"{x.shape[-1]} in an input of shape {describe_shape(x.shape)}")


def check_in_shape(layer: str, in_shape, min_rank: int = 0) -> Shape:
    """`in_shape` as a tuple, raising ValueError unless it is one example's shape: a sequence of
    at least `min_rank` non-negative ints, no batch axis — (784,), not a bare 784."""
    if not (isinstance(in_shape, Sequence) and len(in_shape) >= min_rank and all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 0
            for d in in_shape)):
        raise ValueError(f"{layer}: expected a per-example input shape (a tuple of ints without "
                         f"the batch axis, e.g. (784,) or (28, 28, 1)), received {in_shape!r}")
    return tuple(int(d) for d in in_shape)


def check_entry(layer: str, kind: str, tree, name: str, expected: tuple):
    """Return `tree[name]` (kind: "params" or "state"), raising ValueError unless it exists and
    has the shape `expected`: ints, or a word for a size that any value matches, e.g. ("in", 4).
    Catches parameters built for another layer (another kernel size, width, channel count)."""
    shown = describe_shape(expected)
    if not isinstance(tree, Mapping) or name not in tree:
        received = f"entries {sorted(tree)}" if isinstance(tree, Mapping) else type(tree).__name__
        raise ValueError(f"{layer}: expected {kind} with an entry {name!r} of shape {shown}, "
                         f"received {kind} with {received}")
    shape = jnp.shape(tree[name])
    if len(shape) != len(expected) or any(isinstance(e, int) and e != d
                                          for e, d in zip(expected, shape)):
        raise ValueError(f"{layer}: expected {kind}[{name!r}] of shape {shown}, received shape "
                         f"{describe_shape(shape)}")
    return tree[name]


def check_key(layer: str, key, train: bool) -> None:
    """Stochastic layers need an explicit PRNG key when training."""
    if train and key is None:
        raise ValueError(f"{layer}: train=True needs a PRNG key for its randomness; call "
                         f"apply(..., key=jax.random.key(seed), train=True), or train=False "
                         f"for the deterministic evaluation pass")


def child_key(key, index: int):
    """Key of a combinator's `index`-th child: fold_in(key, index), or None without a key."""
    return None if key is None else jax.random.fold_in(key, index)


# ---------------------------------------------------------------------------------------------
# Combinators.


_LAYER_METHODS = ("init", "apply", "forward", "backward")


def as_layer(layer, where: str = "as_layer") -> Layer:
    """`layer` as a `Layer`: itself when it is one; any other object with `init`, `apply`,
    `forward` and `backward` (a NamedTuple, a dataclass) is adapted — its output shape inferred
    with `jax.eval_shape` when it has no `output_shape`, smooth (`branches` → ()) when it has no
    `branches`. Raises TypeError for anything else, e.g. the factory `Relu` uncalled."""
    if isinstance(layer, Layer):
        return layer
    missing = [m for m in _LAYER_METHODS if not callable(getattr(layer, m, None))]
    if missing:
        name = getattr(layer, "__name__", None)
        hint = f"; call the factory: {name}()" if callable(layer) and name else ""
        raise TypeError(f"{where}: expected a Layer (an object with init, apply, forward and "
                        f"backward), received {layer!r}, which lacks {', '.join(missing)}{hint}")
    name = type(layer).__name__
    return Layer(name, layer.init, layer.forward, layer.backward,
                 getattr(layer, "output_shape", None) or _inferred_output_shape(name, layer),
                 getattr(layer, "branches", None) or _no_branches, layer.apply)


def _inferred_output_shape(name: str, layer):
    """output_shape(in_shape) of a layer that has none: its eval-mode apply on one example,
    traced by `jax.eval_shape` (nothing runs); a tuple of shapes for a tuple of outputs."""

    def output_shape(in_shape):
        in_shape = check_in_shape(name, in_shape)

        def run(key):
            params, state = layer.init(key, in_shape)
            return layer.apply(params, state, jnp.zeros((1,) + in_shape), train=False)[0]

        outputs = jax.eval_shape(run, jax.random.key(0))
        return jax.tree.map(lambda out: tuple(out.shape[1:]), outputs)

    return output_shape


def _as_layers(combinator: str, layers) -> tuple[Layer, ...]:
    return tuple(as_layer(layer, f"{combinator}, position {i}") for i, layer in enumerate(layers))


def _as_value(combinator, made: Layer, layers) -> Layer:
    """`made` compared and hashed by its combinator and its children, as `value_factory` would,
    a child that is not a `Layer` recorded with its type: a NamedTuple layer alone compares as
    the tuple of its fields, equal to any other class's with the same fields."""
    record = tuple(c if isinstance(c, Layer) else (type(c), c) for c in layers)
    return tag(made, config_of(combinator, *record))


def _check_per_layer(combinator: str, count: int, **trees) -> None:
    """Raise ValueError unless each of `trees` (params, state) is a tuple with one entry per
    layer: params or state of another model would otherwise be zipped silently."""
    for kind, tree in trees.items():
        if not isinstance(tree, (tuple, list)) or len(tree) != count:
            received = (f"{len(tree)} entries" if isinstance(tree, (tuple, list))
                        else type(tree).__name__)
            raise ValueError(f"{combinator}: expected {kind} as a tuple of {count} entries, one "
                             f"per layer, received {received}")


def serial(*layers) -> Layer:
    """Composition f_n ∘ … ∘ f_1. params and state are tuples with one entry per layer.

    Backward runs the children's backward in reverse: δ flows from the last layer to the first.
    """
    if not layers:
        raise ValueError("serial: expected at least one layer, received none")
    given, layers = layers, _as_layers("serial", layers)
    count = len(layers)

    def init(key, in_shape):
        params, state, shape = [], [], check_in_shape("serial", in_shape)
        for i, layer in enumerate(layers):
            p, s = layer.init(jax.random.fold_in(key, i), shape)
            params.append(p)
            state.append(s)
            shape = layer.output_shape(shape)
        return tuple(params), tuple(state)

    def output_shape(in_shape):
        shape = tuple(in_shape)
        for layer in layers:
            shape = layer.output_shape(shape)
        return shape

    def forward(params, state, x, *, key=None, train=False):
        _check_per_layer("serial", count, params=params, state=state)
        new_state, residuals = [], []
        for i, layer in enumerate(layers):
            x, s, r = layer.forward(params[i], state[i], x, key=child_key(key, i), train=train)
            new_state.append(s)
            residuals.append(r)
        return x, tuple(new_state), tuple(residuals)

    def apply(params, state, x, *, key=None, train=False):
        _check_per_layer("serial", count, params=params, state=state)
        new_state = []
        for i, layer in enumerate(layers):
            x, s = layer.apply(params[i], state[i], x, key=child_key(key, i), train=train)
            new_state.append(s)
        return x, tuple(new_state)

    def backward(params, residuals, dy):
        _check_per_layer("serial", count, params=params)
        dparams = [None] * count
        for i in reversed(range(count)):
            dparams[i], dy = layers[i].backward(params[i], residuals[i], dy)
        return tuple(dparams), dy

    def branches(params, state, x, *, key=None, train=False):
        _check_per_layer("serial", count, params=params, state=state)
        found = []
        for i, layer in enumerate(layers):
            k = child_key(key, i)
            found.append(layer.branches(params[i], state[i], x, key=k, train=train))
            x, _ = layer.apply(params[i], state[i], x, key=k, train=train)
        return tuple(found)

    names = ", ".join(repr(layer) for layer in layers)
    return _as_value(serial, Layer(f"serial({names})", init, forward, backward, output_shape,
                                   branches, apply, children=layers), given)


def residual(*layers) -> Layer:
    """Skip connection y = x + f(x) with f = serial(*layers); ∂L/∂x = δ + f'(x)ᵀδ."""
    body = serial(*_as_layers("residual", layers))

    def output_shape(in_shape):
        out = body.output_shape(in_shape)
        if tuple(out) != tuple(in_shape):
            raise ValueError(f"residual: expected the body to keep the shape "
                             f"{describe_shape(in_shape)} so that x + f(x) is defined, received "
                             f"{describe_shape(out)}")
        return out

    def init(key, in_shape):
        output_shape(in_shape)
        return body.init(key, in_shape)

    def forward(params, state, x, *, key=None, train=False):
        fx, state, res = body.forward(params, state, x, key=key, train=train)
        x, fx = promoted(x, fx)
        return x + fx, state, res

    def apply(params, state, x, *, key=None, train=False):
        fx, state = body.apply(params, state, x, key=key, train=train)
        x, fx = promoted(x, fx)
        return x + fx, state

    def backward(params, res, dy):
        dparams, dx = body.backward(params, res, dy)
        return dparams, dx + dy.astype(dx.dtype)

    return _as_value(residual, Layer(f"residual({body!r})", init, forward, backward,
                                     output_shape, body.branches, apply), layers)


def parallel(*layers) -> Layer:
    """Fan-out: y = (f_1(x), …, f_n(x)), every child sees the same x; ∂L/∂x = Σ_i f_i'(x)ᵀδ_i."""
    if not layers:
        raise ValueError("parallel: expected at least one layer, received none")
    given, layers = layers, _as_layers("parallel", layers)
    count = len(layers)

    def init(key, in_shape):
        in_shape = check_in_shape("parallel", in_shape)
        pairs = [layer.init(jax.random.fold_in(key, i), in_shape) for i, layer in enumerate(layers)]
        return tuple(p for p, _ in pairs), tuple(s for _, s in pairs)

    def output_shape(in_shape):
        return tuple(layer.output_shape(in_shape) for layer in layers)

    def forward(params, state, x, *, key=None, train=False):
        _check_per_layer("parallel", count, params=params, state=state)
        outs = [layer.forward(params[i], state[i], x, key=child_key(key, i), train=train)
                for i, layer in enumerate(layers)]
        return tuple(o[0] for o in outs), tuple(o[1] for o in outs), tuple(o[2] for o in outs)

    def apply(params, state, x, *, key=None, train=False):
        _check_per_layer("parallel", count, params=params, state=state)
        outs = [layer.apply(params[i], state[i], x, key=child_key(key, i), train=train)
                for i, layer in enumerate(layers)]
        return tuple(o[0] for o in outs), tuple(o[1] for o in outs)

    def backward(params, residuals, dys):
        _check_per_layer("parallel", count, params=params)
        grads = [layer.backward(params[i], residuals[i], dys[i]) for i, layer in enumerate(layers)]
        dx = grads[0][1]
        for _, dxi in grads[1:]:
            dx = dx + dxi
        return tuple(dp for dp, _ in grads), dx

    def branches(params, state, x, *, key=None, train=False):
        _check_per_layer("parallel", count, params=params, state=state)
        return tuple(layer.branches(params[i], state[i], x, key=child_key(key, i), train=train)
                     for i, layer in enumerate(layers))

    names = ", ".join(repr(layer) for layer in layers)
    return _as_value(parallel, Layer(f"parallel({names})", init, forward, backward, output_shape,
                                     branches, apply), given)


def promoted(*arrays):
    """`arrays` cast to their common dtype under JAX's standard promotion (float32 with float64
    → float64, bfloat16 with float32 → float32): what mixing them gives in the default mode,
    made explicit so that it holds under `jax_numpy_dtype_promotion="strict"` too."""
    with jax.numpy_dtype_promotion("standard"):
        dtype = jnp.result_type(*arrays)
    return tuple(jnp.asarray(a, dtype) for a in arrays)


def in_param_dtypes(grads: Mapping, params: Mapping) -> dict:
    """Each gradient in its parameter's dtype, as `jax.vjp` returns it."""
    return {name: g.astype(jnp.result_type(params[name])) for name, g in grads.items()}


def shape_carrier(x):
    """A zero-byte array of shape x.shape + (0,): carries a static shape inside residuals.

    Residuals must be arrays (they cross `jax.custom_vjp`); `carried_shape` reads it back.
    """
    return jnp.zeros(tuple(x.shape) + (0,), x.dtype)


def carried_shape(carrier) -> Shape:
    return tuple(carrier.shape[:-1])


def along_last_axis(v, ndim: int):
    """Reshape a per-channel vector (c,) to (1, …, 1, c) of rank `ndim`: explicit broadcasting
    that also works under `jax_numpy_rank_promotion="raise"`."""
    return v.reshape((1,) * (ndim - 1) + (-1,))


def first_max(z, axis: int):
    """max over `axis` as a selection of its first maximal entry: y = Σ_k 1[k = argmax z] z_k.

    Same value as jnp.max, but `jax.grad` sends the whole gradient to that first entry on
    ties — the hand-written backward's rule — where jnp.max's own rule splits it between the
    tied entries. The selection is elementwise after the argmax, so its gradient is too: a 2×2
    max-pool's value_and_grad on XLA:CPU took 2.4 ms this way, 4.6 ms through jnp.max (batch
    128, 24×24×32, median of 7 alternating rounds, jax 0.10, 2 cores).
    Returns (y, winner): y without `axis`, winner the argmax as int32.
    """
    axis = axis % z.ndim
    winner = jnp.argmax(z, axis=axis).astype(jnp.int32)
    chosen = _is_winner(winner, z.shape[axis], axis)
    return jnp.sum(jnp.where(chosen, z, jnp.zeros((), z.dtype)), axis=axis), winner


def route_to_winner(dy, winner, size: int, axis: int):
    """The transpose of `first_max`'s selection: δ at each winner's slot of a new `axis` of
    `size` entries, zeros elsewhere (the backward of a max over that axis)."""
    axis = axis % (dy.ndim + 1)
    return jnp.where(_is_winner(winner, size, axis), jnp.expand_dims(dy, axis),
                     jnp.zeros((), dy.dtype))


def _is_winner(winner, size: int, axis: int):
    """1[k = winner] for k along a new `axis` (≥ 0) of `size` entries, as a bool array."""
    expanded = jnp.expand_dims(winner, axis)
    shape = tuple(size if a == axis else 1 for a in range(expanded.ndim))
    return expanded == lax.broadcasted_iota(jnp.int32, shape, axis)
