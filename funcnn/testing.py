"""Prove a layer: the contract checks every funcnn layer passes, public for users' own layers.

    report = fn.testing.check_layer(MySwish(), (5,))
    print(report)                     # one named row per check, with what failed and by how much
    assert report.passed

A layer is any object with `init`, `apply`, `forward` and `backward` (`fn.nn.Layer`, a NamedTuple,
a dataclass; see `funcnn.nn.core`). The checks, in order:

    init           init(key, in_shape) → (params, state) of arrays, finite; the same key ⇒ the
                   same values (purity)
    output_shape   output_shape(in_shape) (inferred with jax.eval_shape when absent) == apply's
    forward        forward's output and new state == apply's
    pure           apply twice with the same key ⇒ identical outputs and states (train and eval)
    eval           in eval mode (train=False) the output does not depend on the key and the
                   layer state comes back unchanged
    dtypes         float32 (and bfloat16) params and input ⇒ output of that dtype; backward
                   returns ∂L/∂θ with the params' structure, shapes and dtypes, and ∂L/∂x with
                   x's shape and dtype
    jit            jax.jit of apply and of forward → backward == eager (float32, rtol 1e-5)
    vmap           jax.vmap over two (parameters, input) pairs == each pair run alone (forward
                   and backward)
    gradients      `fn.gradcheck.check` of ½‖layer(x) − t‖²/n in float64 (train mode): the
                   hand-written backward == autodiff on every coordinate of every parameter and
                   of the input, == centered differences on sampled ones, at several points,
                   kinks handled by the layer's `branches`

A check that raises counts as failed, with the exception as its detail. The gradient check needs
one array as output; a layer with several outputs is checked inside a model that merges them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import gradcheck, losses
from funcnn.nn.core import as_layer

__all__ = ["Check", "LayerReport", "check_layer"]

_RTOL, _ATOL = 1e-5, 1e-6   # float32: jit/vmap against eager
_MEMBERS = 2                # parameter sets under vmap


@dataclasses.dataclass(frozen=True)
class Check:
    """One contract check: its name, whether it held, and what was seen."""
    name: str
    passed: bool
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """`check_layer`'s result: `.passed` when every check holds; `report["jit"]` one check."""
    layer: str
    in_shape: tuple
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def __getitem__(self, name: str) -> Check:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"no check named {name!r}; the checks are "
                       f"{[check.name for check in self.checks]}")

    def __str__(self):
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [f"check_layer({self.layer}, in_shape={self.in_shape}): {verdict}"]
        for check in self.checks:
            detail = check.detail.replace("\n", "\n" + " " * 22)
            lines.append(f"  {check.name:<13} {'ok  ' if check.passed else 'FAIL'}  {detail}")
        return "\n".join(lines)


class _Failed(Exception):
    """A check's own verdict, as opposed to an exception raised by the layer."""


def _expect(condition: bool, message: str):
    if not condition:
        raise _Failed(message)


def _max_difference(a, b) -> float:
    """max |a − b| over the leaves of two trees of equal structure (inf on a mismatch)."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return float("inf")
    gaps = [np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64)), initial=0.0)
            if np.shape(u) == np.shape(v) else np.inf
            for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return float(max(gaps, default=0.0))


def _close(a, b, what: str, rtol=_RTOL, atol=_ATOL):
    """Fail unless every leaf of `a` is within atol + rtol·|b| of `b`'s."""
    _expect(jax.tree.structure(a) == jax.tree.structure(b),
            f"{what}: structures differ: {jax.tree.structure(a)} vs {jax.tree.structure(b)}")
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        du, dv = (t.dtype if hasattr(t, "dtype") else np.result_type(t) for t in (u, v))
        if jax.dtypes.float0 in (du, dv):   # ∂/∂(integer ids)
            _expect(np.shape(u) == np.shape(v) and du == dv,
                    f"{what}: {np.shape(u)} {du} vs {np.shape(v)} {dv}")
            continue
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        _expect(u.shape == v.shape, f"{what}: shapes differ: {u.shape} vs {v.shape}")
        _expect(np.allclose(u, v, rtol=rtol, atol=atol, equal_nan=True),
                f"{what}: differ by up to {_max_difference(u, v):.3g}")


def _identical(a, b, what: str):
    _close(a, b, what, rtol=0.0, atol=0.0)


def _example_shape(y):
    return jax.tree.map(lambda a: tuple(np.shape(a)[1:]), y)


def _floats(tree):
    return [a for a in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(a), jnp.floating)]


def _run(name: str, body: Callable[[], str | None]) -> Check:
    try:
        detail = body()
    except _Failed as failure:
        return Check(name, False, str(failure))
    except Exception as error:   # the layer raised: a failed check, reported with the message
        return Check(name, False, f"raised {type(error).__name__}: {error}")
    return Check(name, True, detail or "")


def check_layer(layer, in_shape, *, key=None, x=None, batch: int = 3) -> LayerReport:
    """Run the module docstring's contract checks on `layer` for inputs of per-example shape
    `in_shape`: a `LayerReport` with `.passed` and one named `Check` per contract item.

    `x` (a batch, leading axis the batch) replaces the default float32 N(0, 1) input of `batch`
    examples, e.g. integer token ids for an embedding; an integer input leaves the input
    gradient out of the gradient check. `key` (default `jax.random.key(0)`) seeds everything.
    Cost: a few compilations of the layer (seconds for a small layer on a CPU).
    """
    model = as_layer(layer, "check_layer")
    in_shape = tuple(in_shape)
    key = jax.random.key(0) if key is None else key
    init_key, data_key, run_key, other_key, member_key = jax.random.split(key, 5)
    if x is None:
        x = jax.random.normal(data_key, (batch,) + in_shape, jnp.float32)
    x = jnp.asarray(x)
    _expect_batch(x, in_shape)
    setup: dict[str, Any] = {}

    def init():
        params, state = model.init(init_key, in_shape)
        again = model.init(init_key, in_shape)
        _identical(again, (params, state), "init twice with one key")
        for leaf in jax.tree.leaves((params, state)):
            _expect(isinstance(leaf, (jax.Array, np.ndarray)),
                    f"init returned a {type(leaf).__name__} leaf; expected arrays")
        _expect(all(bool(jnp.all(jnp.isfinite(a))) for a in _floats((params, state))),
                "init returned a non-finite value")
        setup.update(params=params, state=state)
        count = sum(np.size(a) for a in jax.tree.leaves(params))
        return f"{count} parameters in {len(jax.tree.leaves(params))} leaves"

    checks = [_run("init", init)]
    if not checks[0].passed:   # nothing else can run without parameters
        return LayerReport(repr(layer), in_shape, tuple(checks))
    params, state = setup["params"], setup["state"]

    def apply(p=params, s=state, inputs=x, k=run_key, train=True):
        return model.apply(p, s, inputs, key=k, train=train)

    def output_shape():
        y, _ = apply()
        inferred, actual = model.output_shape(in_shape), _example_shape(y)
        _expect(jax.tree.map(tuple, inferred, is_leaf=lambda s: isinstance(s, tuple)) == actual,
                f"output_shape says {inferred}, apply gives {actual}")
        return f"{actual}"

    def forward():
        y, new_state, _ = model.forward(params, state, x, key=run_key, train=True)
        _close((y, new_state), apply(), "forward vs apply")

    def pure():
        for train in (True, False):
            _identical(apply(train=train), apply(train=train), f"apply twice (train={train})")

    def evaluation():
        y, new_state = apply(train=False)
        _identical(model.apply(params, state, x, key=other_key, train=False)[0], y,
                   "eval outputs under two keys")
        _identical(model.apply(params, state, x, train=False)[0], y,
                   "eval outputs with and without a key")
        _identical(new_state, state, "layer state after an eval apply")

    def dtypes():
        for dtype in (jnp.float32, jnp.bfloat16):
            _dtypes_kept(model, _cast(params, dtype), state, _cast(x, dtype), run_key)
        return "float32 and bfloat16"

    def backward_of(p, inputs, k):
        y, _, residuals = model.forward(p, state, inputs, key=k, train=True)
        return y, model.backward(p, residuals, jax.tree.map(jnp.ones_like, y))

    def jitted():
        _close(jax.jit(apply)(), apply(), "jit(apply) vs apply")
        _close(jax.jit(backward_of)(params, x, run_key), backward_of(params, x, run_key),
               "jit(forward → backward) vs eager")

    def vmapped():
        keys = jax.random.split(member_key, 2 * _MEMBERS)
        members = [(jax.tree.map(lambda a, k=k: _jitter(a, k), params), _jitter(x, j))
                   for k, j in zip(keys[:_MEMBERS], keys[_MEMBERS:])]
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *members)
        together = jax.vmap(backward_of, in_axes=(0, 0, None))(*stacked, run_key)
        alone = [backward_of(p, inputs, run_key) for p, inputs in members]
        _close(together, jax.tree.map(lambda *a: jnp.stack(a), *alone), "vmap vs one by one")

    def gradients():
        y, _ = apply()
        _expect(isinstance(y, jax.Array), "the gradient check needs one array as output; "
                f"received {jax.tree.structure(y)}: check it inside a model that merges them")
        target = jax.random.normal(other_key, y.shape, jnp.float32)
        report = gradcheck.check(model, losses.mean_squared_error, params, state, x, target,
                                 key=run_key)
        _expect(report.passed, str(report))
        leaves = report.leaves + getattr(report, "inputs", ())
        worst = max((leaf.worst for leaf in leaves), default=0.0)
        return f"{len(getattr(report, 'points', ())) or 1} point(s), worst relative error {worst:.1e}"

    for name, body in (("output_shape", output_shape), ("forward", forward), ("pure", pure),
                       ("eval", evaluation), ("dtypes", dtypes), ("jit", jitted),
                       ("vmap", vmapped), ("gradients", gradients)):
        checks.append(_run(name, body))
    return LayerReport(repr(layer), in_shape, tuple(checks))


def _dtypes_kept(model, params, state, x, key):
    """Parameters and input of one float dtype: the output in it, ∂L/∂θ like θ, ∂L/∂x like x."""
    y, _, residuals = model.forward(params, state, x, key=key, train=True)
    wanted = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else _floats(params)[0].dtype
    _expect(all(a.dtype == wanted for a in _floats(y)),
            f"{wanted} parameters and input give {[str(a.dtype) for a in _floats(y)]} out")
    dp, dx = model.backward(params, residuals, jax.tree.map(jnp.ones_like, y))
    _expect(jax.tree.structure(dp) == jax.tree.structure(params),
            f"∂L/∂θ has structure {jax.tree.structure(dp)}, params {jax.tree.structure(params)}")
    for g, p in zip(jax.tree.leaves(dp), jax.tree.leaves(params)):
        _expect((g.shape, g.dtype) == (p.shape, p.dtype),
                f"∂L/∂θ leaf {g.shape} {g.dtype} for a parameter {p.shape} {p.dtype}")
    if jnp.issubdtype(x.dtype, jnp.floating):
        _expect((dx.shape, dx.dtype) == (x.shape, x.dtype),
                f"∂L/∂x is {dx.shape} {dx.dtype}; x is {x.shape} {x.dtype}")


def _expect_batch(x, in_shape):
    if tuple(x.shape[1:]) != in_shape or x.ndim != len(in_shape) + 1:
        raise ValueError(f"check_layer: expected x of shape (batch,) + {in_shape}, received "
                         f"{tuple(x.shape)}")


def _cast(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype)
                        if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _jitter(leaf, key):
    """Another parameter set or input for the vmap check: float leaves plus N(0, 0.1) noise."""
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
        return leaf
    return leaf + 0.1 * jax.random.normal(key, leaf.shape, leaf.dtype)
