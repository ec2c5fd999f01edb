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
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

Shape = tuple[int, ...]


def _no_branches(params, state, x, *, key=None, train=False):
    del params, state, x, key, train
    return ()


def _same_shape(in_shape):
    return tuple(in_shape)


@dataclasses.dataclass(frozen=True)
class Layer:
    """A layer: pure `init`, `forward`, `backward` (and `apply`, `output_shape`, `branches`)."""

    name: str
    init: Callable[..., tuple[Any, Any]]
    forward: Callable[..., tuple[Any, Any, Any]]
    backward: Callable[..., tuple[Any, Any]]
    output_shape: Callable[[Shape], Any] = _same_shape
    branches: Callable[..., Any] = _no_branches
    apply_fn: Callable[..., tuple[Any, Any]] | None = None
    children: tuple = ()   # a serial's layers, in order (for per-layer diagnostics)

    def apply(self, params, state, x, *, key=None, train=False):
        """y, state = layer.apply(params, state, x): the forward pass without residuals."""
        if self.apply_fn is not None:
            return self.apply_fn(params, state, x, key=key, train=train)
        y, state, _ = self.forward(params, state, x, key=key, train=train)
        return y, state

    def __repr__(self):
        return self.name if "(" in self.name else f"{self.name}()"


# ---------------------------------------------------------------------------------------------
# Input checks shared by every layer: clear errors before XLA sees a bad array.


def describe_shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


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


def serial(*layers: Layer) -> Layer:
    """Composition f_n ∘ … ∘ f_1. params and state are tuples with one entry per layer.

    Backward runs the children's backward in reverse: δ flows from the last layer to the first.
    """
    if not layers:
        raise ValueError("serial: expected at least one layer, received none")

    def init(key, in_shape):
        params, state, shape = [], [], tuple(in_shape)
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
        new_state, residuals = [], []
        for i, layer in enumerate(layers):
            x, s, r = layer.forward(params[i], state[i], x, key=child_key(key, i), train=train)
            new_state.append(s)
            residuals.append(r)
        return x, tuple(new_state), tuple(residuals)

    def apply(params, state, x, *, key=None, train=False):
        new_state = []
        for i, layer in enumerate(layers):
            x, s = layer.apply(params[i], state[i], x, key=child_key(key, i), train=train)
            new_state.append(s)
        return x, tuple(new_state)

    def backward(params, residuals, dy):
        dparams = [None] * len(layers)
        for i in reversed(range(len(layers))):
            dparams[i], dy = layers[i].backward(params[i], residuals[i], dy)
        return tuple(dparams), dy

    def branches(params, state, x, *, key=None, train=False):
        found = []
        for i, layer in enumerate(layers):
            k = child_key(key, i)
            found.append(layer.branches(params[i], state[i], x, key=k, train=train))
            x, _ = layer.apply(params[i], state[i], x, key=k, train=train)
        return tuple(found)

    names = ", ".join(repr(layer) for layer in layers)
    return Layer(f"serial({names})", init, forward, backward, output_shape, branches, apply,
                 children=tuple(layers))


def residual(*layers: Layer) -> Layer:
    """Skip connection y = x + f(x) with f = serial(*layers); ∂L/∂x = δ + f'(x)ᵀδ."""
    body = serial(*layers)

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
        return x + fx, state, res

    def apply(params, state, x, *, key=None, train=False):
        fx, state = body.apply(params, state, x, key=key, train=train)
        return x + fx, state

    def backward(params, res, dy):
        dparams, dx = body.backward(params, res, dy)
        return dparams, dx + dy

    return Layer(f"residual({body!r})", init, forward, backward, output_shape,
                 body.branches, apply)


def parallel(*layers: Layer) -> Layer:
    """Fan-out: y = (f_1(x), …, f_n(x)), every child sees the same x; ∂L/∂x = Σ_i f_i'(x)ᵀδ_i."""
    if not layers:
        raise ValueError("parallel: expected at least one layer, received none")

    def init(key, in_shape):
        pairs = [layer.init(jax.random.fold_in(key, i), in_shape) for i, layer in enumerate(layers)]
        return tuple(p for p, _ in pairs), tuple(s for _, s in pairs)

    def output_shape(in_shape):
        return tuple(layer.output_shape(in_shape) for layer in layers)

    def forward(params, state, x, *, key=None, train=False):
        outs = [layer.forward(params[i], state[i], x, key=child_key(key, i), train=train)
                for i, layer in enumerate(layers)]
        return tuple(o[0] for o in outs), tuple(o[1] for o in outs), tuple(o[2] for o in outs)

    def apply(params, state, x, *, key=None, train=False):
        outs = [layer.apply(params[i], state[i], x, key=child_key(key, i), train=train)
                for i, layer in enumerate(layers)]
        return tuple(o[0] for o in outs), tuple(o[1] for o in outs)

    def backward(params, residuals, dys):
        grads = [layer.backward(params[i], residuals[i], dys[i]) for i, layer in enumerate(layers)]
        dx = grads[0][1]
        for _, dxi in grads[1:]:
            dx = dx + dxi
        return tuple(dp for dp, _ in grads), dx

    def branches(params, state, x, *, key=None, train=False):
        return tuple(layer.branches(params[i], state[i], x, key=child_key(key, i), train=train)
                     for i, layer in enumerate(layers))

    names = ", ".join(repr(layer) for layer in layers)
    return Layer(f"parallel({names})", init, forward, backward, output_shape, branches, apply)


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
