"""One training step, pure and jittable, and the per-step metrics it reports.

    step = make_step(model, loss, optimizer)
    params, state, opt_state, metrics = step(params, state, opt_state, x, y, key)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from funcnn import backprop
from funcnn.optim.base import apply_updates
from funcnn.paths import leaf_paths

__all__ = ["accuracy", "make_step", "update_ratios"]


def accuracy(outputs, targets):
    """Fraction of rows whose arg-max output is the label (int ids, or the arg-max of rows);
    None when the outputs are not (batch, classes ≥ 2) scores — a single output column's
    arg-max is always 0, so it says nothing."""
    if outputs.ndim != 2 or outputs.shape[1] < 2:
        return None
    if targets.ndim == 1 and jnp.issubdtype(targets.dtype, jnp.integer):
        return jnp.mean(jnp.argmax(outputs, axis=-1).astype(targets.dtype) == targets)
    if targets.shape == outputs.shape:
        return jnp.mean(jnp.argmax(outputs, axis=-1) == jnp.argmax(targets, axis=-1))
    return None


def update_ratios(params, updates) -> dict:
    """‖update‖ / ‖param‖ per leaf (the notes' ~1e-3 health check), keyed by leaf path.

    The norms are √(v·v): dot products, which XLA:CPU calls into its GEMM library for rather
    than compiling one reduction kernel per leaf."""
    norm = lambda v: jnp.sqrt(jnp.vdot(v.ravel(), v.ravel()))
    return {name: norm(u) / (norm(p) + jnp.asarray(1e-12, p.dtype))
            for name, p, u in zip(leaf_paths(params), jax.tree.leaves(params),
                                  jax.tree.leaves(updates))}


def make_step(model, loss, optimizer, *, regularizer=None, hand_written=False,
              compute_dtype=None, with_accuracy=False):
    """A pure, jittable `step(params, state, opt_state, x, y, key) -> (params, state,
    opt_state, metrics)`: gradients of loss(model(x), y) (+ regularizer(params)), one optimizer
    update, params + updates.

    Gradients come from `jax.grad`, or with `hand_written=True` from the layers' hand-written
    rules (`fn.backprop`; the regularizer's hand-written `.grad`). The optimizer receives
    `value=loss` (for `reduce_on_plateau`). metrics: "loss" (the data loss), "penalty" (with a
    regularizer), and with `with_accuracy=True` "accuracy" (classification only; `fit` asks for
    it) — no norms or checks over the parameters, so a loop of steps runs as fast as the bare
    arithmetic.

    Mixed precision (off by default): with `compute_dtype=jnp.bfloat16` the forward and backward
    passes run on the parameters and inputs cast to bfloat16, the loss in float32; gradients
    come back in the parameters' dtype, and the optimizer state, the parameters and the layer
    state (running statistics) never leave it.
    """
    run_backward = backprop.forward_backward(model, loss)
    compute = (lambda tree: tree) if compute_dtype is None else \
        (lambda tree: backprop.cast_floats(tree, compute_dtype))

    def gradients(params, state, x, y, key):
        if hand_written:
            value, outputs, new_state, grads = run_backward(compute(params), state, compute(x), y,
                                                            key=key, train=True)
            grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
            metrics = {"loss": value}
            if regularizer is not None:
                grads = jax.tree.map(jnp.add, grads, regularizer.grad(params))
                metrics["penalty"] = regularizer(params)
            return metrics, outputs, new_state, grads

        def objective(p):
            outputs, new_state = model.apply(compute(p), state, compute(x), key=key, train=True)
            metrics = {"loss": loss(backprop.at_least_float32(outputs), y)}
            if regularizer is not None:
                metrics["penalty"] = regularizer(p)
            return sum(metrics.values()), (metrics, outputs, new_state)

        (_, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return (*aux, grads)

    def step(params, state, opt_state, x, y, key):
        metrics, outputs, new_state, grads = gradients(params, state, x, y, key)
        new_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_state, state)
        updates, opt_state = optimizer.update(grads, opt_state, params, value=metrics["loss"])
        acc = accuracy(outputs, y) if with_accuracy else None
        if acc is not None:
            metrics["accuracy"] = acc
        return apply_updates(params, updates), new_state, opt_state, metrics

    return step
