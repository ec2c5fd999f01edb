"""A model at a glance: every layer by path, its output shape, parameters, trainable or frozen,
and FLOPs per example.

    print(fn.summary(model, (784,)))
    print(fn.summary(model, (784,), optimizer=fn.optim.partition({"0/*": fn.optim.frozen()},
                                                                  default=fn.optim.adam(1e-3))))

FLOPs are counted as XLA's cost analysis counts them: a multiply-add is 2, an add, a comparison
or an element-wise function 1 per element. The layers of `fn.nn` whose cost is set by their
shapes have a closed form (`Dense`: 2·in·out + out per row; `Conv2D`: 2·cin·cout per kernel tap
that falls inside the unpadded input, plus the bias; pools: the window's adds or comparisons);
any other layer (a user's own included) is measured by XLA's cost analysis of its `apply` on one
example. Shapes exclude the batch axis.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.nn.core import as_layer

__all__ = ["Row", "Summary", "summary"]


class Row(NamedTuple):
    path: str            # "3/1": layer 1 inside layer 3, as `fn.paths` names its parameters
    layer: str           # the layer's type, e.g. "Dense"
    output_shape: Any    # without the batch axis (a tuple of shapes for a fan-out)
    params: int          # parameter count
    trainable: bool      # False when the optimizer moves none of its parameters
    flops: int           # per example


class Summary(NamedTuple):
    rows: tuple
    total_params: int
    trainable_params: int
    total_flops: int

    def __str__(self):
        header = ("path", "layer", "output shape", "params", "trainable", "FLOPs")
        lines = [(r.path, r.layer, str(r.output_shape), f"{r.params:,}",
                  "-" if not r.params else "yes" if r.trainable else "frozen", f"{r.flops:,}")
                 for r in self.rows]
        widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
        fmt = lambda line: "  ".join(cell.rjust(w) if i >= 3 else cell.ljust(w)
                                     for i, (cell, w) in enumerate(zip(line, widths)))
        rule = "-" * len(fmt(header))
        return "\n".join([fmt(header), rule, *map(fmt, lines), rule,
                          f"params: {self.total_params:,} ({self.trainable_params:,} trainable)"
                          f"   FLOPs per example: {self.total_flops:,}"])


def summary(model, in_shape, *, params=None, state=None, optimizer=None, key=None) -> Summary:
    """The table of `model` on inputs of shape `in_shape` (without the batch axis).

    `params`/`state` default to `model.init(key, in_shape)`. With an `optimizer` (e.g. a
    `fn.optim.partition` holding `fn.optim.frozen()` groups), a layer is trainable when one
    update from a gradient of ones moves any of its parameters.
    """
    model = as_layer(model, "summary")
    in_shape = tuple(in_shape)
    if params is None or state is None:
        params, state = model.init(jax.random.key(0) if key is None else key, in_shape)
    moved = _moved(optimizer, params)
    rows = tuple(Row(path, _kind(layer), out_shape, _count(p),
                     bool(jax.tree.leaves(m) == [] or any(jax.tree.leaves(m))),
                     int(_flops(layer, shape, out_shape, p, s)))
                 for path, layer, shape, out_shape, p, s, m in
                 _leaves(model, "", in_shape, params, state, moved))
    return Summary(rows, sum(r.params for r in rows),
                   sum(r.params for r in rows if r.trainable), sum(r.flops for r in rows))


class _Skip(NamedTuple):
    """The addition x + f(x) of a residual: one add per element."""
    name: str = "skip (x + f(x))"


_SKIP = _Skip()


def _kind(layer) -> str:
    if layer is _SKIP:
        return _SKIP.name
    config = getattr(layer, "config", None)
    return config[1] if config else getattr(layer, "name", type(layer).__name__)


def _count(tree) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(tree)))


def _moved(optimizer, params):
    """Per leaf: does one update from a gradient of ones change it? (True without optimizer)."""
    if optimizer is None:
        return jax.tree.map(lambda _: True, params)
    ones = jax.tree.map(jnp.ones_like, params)
    updates, _ = optimizer.update(ones, optimizer.init(params), params, value=jnp.float32(1))
    return jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)


def _leaves(layer, path, in_shape, params, state, moved):
    """(path, layer, in_shape, out_shape, params, state, moved) of every non-combinator layer;
    a residual's skip addition x + f(x) is a row of its own (layer `_SKIP`, at the residual's
    path)."""
    children = _parts(layer)
    if not children:
        yield path, layer, in_shape, _output_shape(layer, in_shape, params, state), \
            params, state, moved
        return
    fan_out, shape = _kind(layer) == "parallel", in_shape
    for i, child in enumerate(children):
        sub = f"{path}/{i}" if path else str(i)
        yield from _leaves(child, sub, in_shape if fan_out else shape, params[i], state[i],
                           moved[i])
        if not fan_out:
            shape = _output_shape(child, shape, params[i], state[i])
    if _kind(layer) == "residual":
        yield path, _SKIP, in_shape, in_shape, (), (), ()


def _parts(layer) -> tuple:
    """The layers inside a `serial`, `residual` or `parallel` (from its configuration), else ()."""
    config = getattr(layer, "config", None)
    if not (config and config[:2] in {("funcnn.nn.core", name)
                                      for name in ("serial", "residual", "parallel")}):
        return getattr(layer, "children", ())
    recorded = _arguments(layer)["layers"]   # a user's layer is recorded as (its type, it)
    return tuple(as_layer(c[1] if isinstance(c, tuple) and isinstance(c[0], type) else c)
                 for c in recorded)


def _output_shape(layer, in_shape, params, state):
    if hasattr(layer, "output_shape"):
        return layer.output_shape(in_shape)
    x = jax.ShapeDtypeStruct((1,) + tuple(in_shape), jnp.float32)
    y = jax.eval_shape(lambda x: layer.apply(params, state, x)[0], x)
    return jax.tree.map(lambda a: tuple(a.shape[1:]), y)


# ---------------------------------------------------------------------------------------------
# FLOPs per example.

_FREE = {"Flatten", "Identity", "Embedding"}   # reshapes, gathers, identities at evaluation
_ELEMENTWISE = {"Relu", "Tanh", "Sigmoid", "HardTanh", "LeakyRelu", "PRelu", "Softsign", "Gelu",
                "Silu", "Elu", "Softplus"}   # one element-wise function per output element


def _flops(layer, in_shape, out_shape, params, state) -> float:
    if layer is _SKIP:
        return math.prod(out_shape)
    config = getattr(layer, "config", None)
    if not (config and config[0].startswith("funcnn.")):   # a user's layer: measured
        return _measured(layer, in_shape, params, state)
    kind = config[1]
    if kind in _FREE:
        return 0
    if kind == "Dropout":   # at evaluation: the identity, or (vanilla) x · (1 − rate)
        return math.prod(out_shape) if _arguments(layer)["mode"] == "vanilla" else 0
    if kind in _ELEMENTWISE:
        return math.prod(out_shape)
    if kind in ("Dense", "DropConnect"):
        fan_in, fan_out = params["w"].shape
        return math.prod(in_shape[:-1]) * (2 * fan_in * fan_out + fan_out)
    if kind == "Conv2D":
        kh, kw, cin, cout = params["w"].shape
        args = _arguments(layer)
        taps = _valid_taps(in_shape[:2], (kh, kw), _pair(args["strides"]), args["padding"])
        return 2 * cin * cout * taps + math.prod(out_shape)
    if kind in ("MaxPool", "AvgPool"):
        window = _pair(_arguments(layer)["window"])
        reduce = math.prod(window) - 1   # adds or comparisons per window
        return math.prod(out_shape) * (reduce + (kind == "AvgPool"))   # and the average's divide
    return _measured(layer, in_shape, params, state)


def _measured(layer, in_shape, params, state) -> float:
    """flops + transcendentals of XLA's cost analysis of `apply` on one example."""
    x = jnp.zeros((1,) + tuple(in_shape), jnp.float32)
    compiled = jax.jit(lambda p, s, x: layer.apply(p, s, x)[0]).lower(params, state, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return (cost or {}).get("flops", 0) + (cost or {}).get("transcendentals", 0)


def _valid_taps(in_hw, kernel_hw, strides, padding: str) -> int:
    """Σ over output positions of the kernel taps that land inside the unpadded input."""
    total = 1
    for size, k, s in zip(in_hw, kernel_hw, strides):
        if padding == "SAME":
            out = -(-size // s)
            lo = max((out - 1) * s + k - size, 0) // 2
        else:
            out, lo = (size - k) // s + 1, 0
        starts = np.arange(out) * s - lo
        total *= int(np.sum(np.minimum(starts + k, size) - np.maximum(starts, 0)))
    return total


def _pair(value) -> tuple:
    return (value, value) if isinstance(value, int) else tuple(value)


def _arguments(layer) -> dict:
    """The factory arguments a layer was built with, as plain Python values."""
    return {name: _plain(record) for name, record in layer.config[2]}


def _plain(record):
    if isinstance(record, tuple) and len(record) == 2 and record[0] in ("int", "float", "bool"):
        return record[1]
    if isinstance(record, tuple) and len(record) == 2 and record[0] in ("tuple", "list"):
        return tuple(_plain(r) for r in record[1])
    return record
