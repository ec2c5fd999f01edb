"""Weight penalties R(params) added to the loss, each with a hand-written gradient `.grad`.

    reg = fn.regularizers.l2(1e-4, n=len(x_train))     # the notes' (λ/2n)·Σw²
    total = loss + reg(params);  grads = loss_grads + reg.grad(params)

Each penalty is written for one array and summed over the masked leaves; the mask (a pytree of
bools or a function params -> pytree of bools) defaults to `fn.optim.weights_only`: kernels "w"
only, never biases or norm scales. `n` divides λ by the training-set size, as in the notes'
C = C₀ + (λ/2n)·Σw²; `l2(lam, n=n)` is `l2(lam / n)`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from funcnn.optim.base import resolve_mask, weights_only

__all__ = ["Regularizer", "elastic_net", "l1", "l2"]


@dataclasses.dataclass(frozen=True)
class Regularizer:
    """R(params) = Σ over masked leaves w of r(w); `.grad(params)` = r'(w) there, 0 elsewhere."""

    name: str
    penalty: Callable[[jax.Array], jax.Array]      # r(w), a scalar
    derivative: Callable[[jax.Array], jax.Array]   # r'(w), shaped like w
    mask: Any = weights_only

    def __call__(self, params) -> jax.Array:
        keep = jax.tree.leaves(resolve_mask(self.mask, params))
        terms = [self.penalty(w) for k, w in zip(keep, jax.tree.leaves(params)) if k]
        return jnp.asarray(sum(terms, 0.0))

    def grad(self, params):
        """The hand-written gradient ∂R/∂params: a pytree like params, zeros on unmasked leaves."""
        return jax.tree.map(lambda k, w: self.derivative(w) if k else jnp.zeros_like(w),
                            resolve_mask(self.mask, params), params)

    def __repr__(self):
        return self.name


def _abs(w):
    """Σ|w| written as Σ sign(w)·w, so that autodiff gives sign(w), 0 at w = 0, like `.grad`."""
    return jnp.sum(jnp.sign(w) * w)


def l2(lam: float, *, n: int = 1, mask=weights_only) -> Regularizer:
    """Weight decay penalty R = (λ/2n)·Σw²; ∂R/∂w = (λ/n)·w."""
    c = lam / n
    return Regularizer(f"l2({lam}, n={n})", lambda w: 0.5 * c * jnp.sum(w * w),
                       lambda w: c * w, mask)


def l1(lam: float, *, n: int = 1, mask=weights_only) -> Regularizer:
    """Sparsity penalty R = (λ/n)·Σ|w|; ∂R/∂w = (λ/n)·sign(w) (the subgradient 0 at w = 0)."""
    c = lam / n
    return Regularizer(f"l1({lam}, n={n})", lambda w: c * _abs(w), lambda w: c * jnp.sign(w), mask)


def elastic_net(lam1: float, lam2: float, *, n: int = 1, mask=weights_only) -> Regularizer:
    """R = (λ₁/n)·Σ|w| + (λ₂/2n)·Σw² (Zou & Hastie); ∂R/∂w = (λ₁/n)·sign(w) + (λ₂/n)·w."""
    c1, c2 = lam1 / n, lam2 / n
    return Regularizer(f"elastic_net({lam1}, {lam2}, n={n})",
                       lambda w: c1 * _abs(w) + 0.5 * c2 * jnp.sum(w * w),
                       lambda w: c1 * jnp.sign(w) + c2 * w, mask)
