"""The manual backprop engine: gradients from the layers' and losses' hand-written rules only.

The four equations of the notes, run by `Layer.backward` in reverse layer order:
    δᴸ = ∇ₐC ⊙ σ'(zᴸ)   (the loss's `.grad`, then the last layer's backward)
    δˡ = ((Wˡ⁺¹)ᵀ δˡ⁺¹) ⊙ σ'(zˡ),   ∂C/∂Wˡ = (aˡ⁻¹)ᵀ δˡ,   ∂C/∂bˡ = Σ_batch δˡ.
No `jax.grad` or `jax.vjp` is involved; `fn.gradcheck` compares the result with both.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.nn.core import Layer

__all__ = ["at_least_float32", "cast_floats", "custom_vjp", "forward_backward", "loss_delta",
           "value_and_grad"]


def loss_delta(loss, outputs, y, **loss_kwargs):
    """δᴸ = ∂loss/∂outputs from the loss's hand-written `.grad`; `y` is data, so of a pair
    (`max_margin(s_true, s_corrupt)`'s (∂/∂s_true, ∂/∂s_corrupt)) the first entry."""
    delta = loss.grad(outputs, y, **loss_kwargs)
    return delta[0] if isinstance(delta, tuple) else delta


def forward_backward(model: Layer, loss, **loss_kwargs):
    """Build `f(params, state, x, y, *, key=None, train=True) -> (loss, outputs, new_state, grads)`.

    One forward pass keeping residuals, the loss's hand-written `.grad` (δᴸ) — both evaluated
    in at least float32 — then the model's hand-written backward; the outputs are returned too
    (for metrics such as accuracy). `y` is data (`loss_delta`).
    """

    def run(params, state, x, y, *, key=None, train=True):
        outputs, new_state, residuals = model.forward(params, state, x, key=key, train=train)
        wide = at_least_float32(outputs)
        value = loss(wide, y, **loss_kwargs)
        delta = loss_delta(loss, wide, y, **loss_kwargs).astype(outputs.dtype)
        grads, _ = model.backward(params, residuals, delta)
        return value, outputs, new_state, grads

    return run


def cast_floats(tree, dtype):
    """The floating-point leaves of `tree` (arrays or Python numbers) as `dtype` arrays; other
    leaves as arrays, unchanged in dtype."""
    return jax.tree.map(lambda a: jnp.asarray(a, dtype)
                        if jnp.issubdtype(jnp.result_type(a), jnp.floating) else jnp.asarray(a),
                        tree)


def at_least_float32(outputs):
    """Outputs as float32 when narrower (bfloat16, float16), so losses never run in less."""
    narrow = jnp.issubdtype(outputs.dtype, jnp.floating) and jnp.finfo(outputs.dtype).bits < 32
    return outputs.astype(jnp.float32) if narrow else outputs


def value_and_grad(model: Layer, loss, **loss_kwargs):
    """Build `f(params, state, x, y, *, key=None, train=True) -> ((loss, new_state), grads)`.

    `grads` has the structure of `params` and comes from `loss.grad` and `model.backward`.
    Keyword arguments are passed to the loss and its gradient (e.g. `margin=` of a hinge).

    >>> vg = fn.backprop.value_and_grad(model, fn.losses.softmax_cross_entropy)
    >>> (value, state), grads = jax.jit(vg)(params, state, x, labels)
    """
    run = forward_backward(model, loss, **loss_kwargs)

    def value_and_grad_fn(params, state, x, y, *, key=None, train=True):
        value, _, new_state, grads = run(params, state, x, y, key=key, train=train)
        return (value, new_state), grads

    return value_and_grad_fn


def _zero_cotangent(leaf):
    """The zero cotangent of a primal leaf: zeros for floats, float0 for ints and bools."""
    if jnp.issubdtype(leaf.dtype, jnp.inexact):
        return jnp.zeros_like(leaf)
    return np.zeros(leaf.shape, jax.dtypes.float0)


def _cotangent(grad, leaf):
    """`grad` as the cotangent of the primal `leaf`: in its dtype (a layer may promote, e.g. a
    float32 PRelu slope on bfloat16 inputs), float0 for int and bool leaves."""
    if jnp.issubdtype(leaf.dtype, jnp.inexact):
        return grad.astype(leaf.dtype)
    return _zero_cotangent(leaf)


def custom_vjp(model: Layer) -> Layer:
    """The same model, whose `apply` differentiates through the hand-written `backward`.

    `jax.grad` of anything built on the returned model's `apply` calls `model.forward` on the way
    forward and `model.backward` on the way back (via `jax.custom_vjp`), so an optimiser loop
    written with `jax.grad` trains on the hand-written rules. The returned state carries no
    gradient (its cotangent is dropped), as for running statistics.
    """

    def apply(params, state, x, *, key=None, train=False):
        @jax.custom_vjp
        def run(params, state, x):
            return model.apply(params, state, x, key=key, train=train)

        def run_forward(params, state, x):
            y, new_state, residuals = model.forward(params, state, x, key=key, train=train)
            return (y, new_state), (params, state, x, residuals)

        def run_backward(saved, cotangents):
            params, state, x, residuals = saved
            dy, _ = cotangents
            dparams, dx = model.backward(params, residuals, dy)
            return (jax.tree.map(_cotangent, dparams, params),
                    jax.tree.map(_zero_cotangent, state), _cotangent(dx, x))

        run.defvjp(run_forward, run_backward)
        return run(params, state, x)

    return dataclasses.replace(model, name=f"custom_vjp({model!r})", apply_fn=apply)
