"""Evaluation mode: `evaluate` (mean loss and accuracy) and `predict` (outputs), in batches;
and the checks `fit` shares with them (label ranges, counts)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.nn.core import is_positive_int
from funcnn.train.cache import compiled
from funcnn.train.step import accuracy

__all__ = ["check_count", "check_labels", "check_pair", "evaluate", "evaluate_checked",
           "output_shape", "outputs_program", "predict"]


def check_count(name: str, what: str, value, most: tuple[int, str] | None = None) -> None:
    """Raise unless `value` is an int ≥ 1 (and ≤ `most`, a (bound, what the bound is) pair)."""
    if not is_positive_int(value) or (most is not None and value > most[0]):
        bound = f"an int in [1, {most[0]}] ({most[1]})" if most else "an int ≥ 1"
        raise ValueError(f"{name}: expected {what} to be {bound}, received {value!r}")


def _output_shape_of(model, in_shape: tuple, dtype):
    params, state = jax.eval_shape(lambda key: model.init(key, in_shape), jax.random.key(0))
    x = jax.ShapeDtypeStruct((2, *in_shape), dtype)
    outputs = jax.eval_shape(lambda p, s, xb: model.apply(p, s, xb, train=False)[0],
                             params, state, x)
    return getattr(outputs, "shape", None)


def output_shape(model, in_shape: tuple, dtype):
    """The model's output shape for a batch of 2 inputs (a trace, nothing runs), or None when the
    outputs are not one array."""
    return compiled(_output_shape_of, model, tuple(in_shape), jnp.dtype(dtype))


def check_labels(name: str, model, x, y) -> None:
    """Raise unless int class labels y lie in [0, classes) for a model with (batch, classes)
    outputs: under jit a loss cannot check them, and an out-of-range id silently scores 0."""
    if not (np.ndim(y) == 1 and jnp.issubdtype(jnp.result_type(y), jnp.integer)):
        return
    out_shape = output_shape(model, tuple(np.shape(x)[1:]), jnp.result_type(x))
    if out_shape is None or len(out_shape) != 2 or len(y) == 0:
        return
    classes = out_shape[1]
    low, high = int(jnp.min(y)), int(jnp.max(y))
    if low < 0 or high >= classes:
        raise ValueError(f"{name}: expected int class labels in [0, {classes}) for the model's "
                         f"{classes} outputs, received labels from {low} to {high}")


def check_pair(name: str, data, what: str = "") -> tuple:
    """`data = (x, y)` as device arrays, raising unless there are as many targets as inputs and
    at least one of each."""
    x, y = (jnp.asarray(a) for a in data)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{name}: expected as many {what}targets as inputs (at least one), "
                         f"received {len(x)} inputs and {len(y)} targets")
    return x, y


def _batched(fn_batch, arrays, batch_size):
    n = len(arrays[0])
    return [fn_batch(*(a[start:start + batch_size] for a in arrays)) for start in
            range(0, n, batch_size)]


def outputs_program(model):
    """The jitted y = model(x) in evaluation mode (cache it with `compiled`)."""
    return jax.jit(lambda params, state, x: model.apply(params, state, x, train=False)[0])


def _totals_program(model, loss):
    """Jitted (Σ loss, Σ correct) of one batch; NaN correct-count when not classification."""

    def totals(params, state, x, y):
        outputs, _ = model.apply(params, state, x, train=False)
        acc = accuracy(outputs, y)
        count = x.shape[0]
        return loss(outputs, y) * count, (jnp.nan if acc is None else acc * count)

    return jax.jit(totals)


def predict(model, params, state, x, *, batch_size=1000):
    """Model outputs in evaluation mode (train=False), computed in batches."""
    check_count("predict", "batch_size", batch_size)
    if len(x) == 0:
        raise ValueError("predict: expected at least one input, received none")
    run = compiled(outputs_program, model)
    return jnp.concatenate(_batched(lambda xb: run(params, state, xb), (jnp.asarray(x),),
                                    batch_size))


def evaluate(model, loss, params, state, data, *, batch_size=1000) -> dict:
    """Mean loss (and accuracy for classification) over `data = (x, y)`, in evaluation mode."""
    x, y = check_pair("evaluate", data)
    check_count("evaluate", "batch_size", batch_size)
    check_labels("evaluate", model, x, y)
    return evaluate_checked(model, loss, params, state, x, y, batch_size)


def evaluate_checked(model, loss, params, state, x, y, batch_size=1000) -> dict:
    """`evaluate` of checked device arrays (fit checks its validation data once, up front)."""
    totals = compiled(_totals_program, model, loss)
    parts = _batched(lambda xb, yb: totals(params, state, xb, yb), (x, y), batch_size)
    n = x.shape[0]
    result = {"loss": float(sum(p[0] for p in parts)) / n}
    acc = float(sum(p[1] for p in parts)) / n
    if not math.isnan(acc):
        result["accuracy"] = acc
    return result
