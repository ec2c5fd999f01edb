"""The `Loss` value, its reductions, and the input checks and dtype helpers every loss shares.

A built-in loss is written per item — one value per element (element-wise losses) or per
example (per-example losses) — with the hand-written gradient of the items' sum; `per_item`
turns that pair into the `value_fn` and `grad_fn` of a `Loss`, reduced by `reduction=`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.checks import describe_shape

__all__ = ["LOG_FLOOR", "Loss", "REDUCTIONS", "are_class_ids", "check_label_range",
           "check_probabilities", "check_same_shape", "clamped_log", "compute_dtype",
           "count_elements", "count_examples", "describe_shape", "hinge", "is_concrete",
           "log_and_inverse", "log_sigmoid_pair", "per_item"]

LOG_FLOOR = -100.0  # log p is clamped here (as PyTorch's BCELoss) so p = 0 gives a finite loss
REDUCTIONS = ("mean", "sum", "none")


@dataclasses.dataclass(frozen=True)
class Loss:
    """A loss with its hand-written gradient; call it, or call `.grad` for ∂loss/∂outputs.

    `reduction="mean" | "sum" | "none"` (a keyword of the built-in losses, static under jit):
    "none" gives one value per item, "mean" (the default) their mean and "sum" their sum;
    `.grad(..., reduction=)` is the gradient of the reduced loss, of the sum for "none" (each
    example's own gradient).
    """

    name: str
    value_fn: Callable[..., Any]
    grad_fn: Callable[..., Any]
    check_fn: Callable[..., None]
    branches_fn: Callable[..., Any] | None = None

    def __call__(self, outputs, targets, **kwargs):
        self._check_reduction(kwargs)
        return self.value_fn(*self._prepare(outputs, targets), **kwargs)

    def grad(self, outputs, targets, **kwargs):
        """∂loss/∂outputs in the outputs' dtype (float32 for int or bool outputs), from the
        hand-written formula (a pair for `max_margin`, in the dtypes of its two arguments)."""
        self._check_reduction(kwargs)
        outputs, targets = jnp.asarray(outputs), jnp.asarray(targets)
        grads = self.grad_fn(*self._prepare(outputs, targets), **kwargs)
        like = (outputs, targets) if isinstance(grads, tuple) else outputs
        return jax.tree.map(lambda g, a: g.astype(a.dtype) if _is_floating(a) else g, grads, like)

    def _prepare(self, outputs, targets):
        """Check, then cast both to one real floating dtype (int class ids stay ints)."""
        outputs, targets = jnp.asarray(outputs), jnp.asarray(targets)
        self._check(outputs, targets)
        dtype = compute_dtype(outputs, targets)
        class_ids = (are_class_ids(targets, outputs)
                     and jnp.issubdtype(targets.dtype, jnp.integer))
        return outputs.astype(dtype), (targets if class_ids else targets.astype(dtype))

    def _check(self, outputs, targets):
        """Refuse complex numbers and an empty batch, then run the loss's own checks."""
        for what, x in (("outputs", outputs), ("targets", targets)):
            if jnp.iscomplexobj(x):
                raise TypeError(f"{self.name}: expected real {what}, received {what} of dtype "
                                f"{x.dtype}")
        if outputs.size == 0:
            raise ValueError(f"{self.name}: expected a non-empty batch, received outputs of shape "
                             f"{describe_shape(outputs.shape)}")
        self.check_fn(outputs, targets)

    def _check_reduction(self, kwargs):
        reduction = kwargs.get("reduction", "mean")
        if not (isinstance(reduction, str) and reduction in REDUCTIONS):
            raise ValueError(f"{self.name}: expected reduction 'mean', 'sum' or 'none', received "
                             f"{reduction!r}")

    def branches(self, outputs, targets, **kwargs):
        """The side of every kink at these outputs; `()` for a smooth loss."""
        self._check_reduction(kwargs)
        if self.branches_fn is None:
            return ()
        kwargs.pop("reduction", None)   # a kink's side does not depend on the reduction
        return self.branches_fn(outputs, targets, **kwargs)

    @property
    def __doc__(self):
        return self.value_fn.__doc__

    def __repr__(self):
        return f"funcnn.losses.{self.name}"


def per_item(items_fn: Callable, sum_grad_fn: Callable, count: Callable[[Any], int]):
    """(value_fn, grad_fn) of a `Loss` from its items and the gradient of their sum.

    `items_fn(outputs, targets, **kw)` gives one value per item, `sum_grad_fn` ∂(Σ items)/∂outputs
    (a pair for a loss of two score arrays), `count(outputs)` the number of items. The value is
    mean(items), sum(items) or the items; the gradient is sum_grad/count for "mean", sum_grad
    otherwise. Both carry `items_fn`'s docstring (the formula).
    """

    def value(outputs, targets, reduction="mean", **kwargs):
        items = items_fn(outputs, targets, **kwargs)
        if reduction == "none":
            return items
        return jnp.mean(items) if reduction == "mean" else jnp.sum(items)

    def grad(outputs, targets, reduction="mean", **kwargs):
        grads = sum_grad_fn(outputs, targets, **kwargs)
        if reduction != "mean":
            return grads
        n = count(outputs)
        return jax.tree.map(lambda g: g / n, grads)

    value.__doc__ = grad.__doc__ = items_fn.__doc__
    return value, grad


# ---------------------------------------------------------------------------------------------
# Item counts, input checks and dtypes.


def count_elements(z) -> int:
    """The number of items of an element-wise loss: every element."""
    return z.size


def count_examples(z) -> int:
    """The number of examples of per-example outputs (..., attributes): all axes but the last."""
    return math.prod(z.shape[:-1])


def _is_floating(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def compute_dtype(*arrays):
    """The dtype a loss computes in: the floating inputs' promoted dtype, at least float32
    (float16 overflows at 65504); int and bool inputs are values in it (a 0/1 target, a score)."""
    floats = [a.dtype for a in arrays if _is_floating(a)]
    return max([jnp.dtype(jnp.float32), *floats], key=lambda dtype: dtype.itemsize)


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_same_shape(name, outputs_shape=None):
    """Refuse targets whose shape differs from the outputs'; with `outputs_shape` (the expected
    shape in words, e.g. "(batch, …)"), also refuse scalar outputs."""
    def check(outputs, targets):
        if outputs_shape is not None and jnp.ndim(outputs) == 0:
            raise ValueError(f"{name}: expected outputs of shape {outputs_shape}, received "
                             f"shape ()")
        if jnp.shape(outputs) != jnp.shape(targets):
            raise ValueError(f"{name}: expected targets of the outputs' shape "
                             f"{describe_shape(jnp.shape(outputs))}, received "
                             f"{describe_shape(jnp.shape(targets))}")
    return check


def check_probabilities(name, check, logits_loss):
    """`check`, then refuse concrete probabilities outside [0, 1] (NaN is let through)."""
    def checked(probs, targets):
        check(probs, targets)
        if is_concrete(probs) and jnp.issubdtype(probs.dtype, jnp.number):   # bools: 0 or 1
            low, high = float(jnp.nanmin(probs)), float(jnp.nanmax(probs))
            if low < 0 or high > 1:
                raise ValueError(f"{name}: expected probabilities in [0, 1], received "
                                 f"{low if low < 0 else high:g}; for logits use {logits_loss}")
    return checked


def are_class_ids(labels, outputs) -> bool:
    """Labels one rank below the outputs are class ids; labels of the outputs' rank are rows."""
    return jnp.ndim(labels) == jnp.ndim(outputs) - 1


def check_label_range(name, labels, classes: int) -> None:
    """Refuse concrete class ids outside [0, classes) (traced ones cannot be checked)."""
    if is_concrete(labels):
        values = np.asarray(labels)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= classes:
            raise ValueError(f"{name}: expected labels in [0, {classes}) for {classes} classes, "
                             f"received label {low if low < 0 else high}")


def log_and_inverse(p):
    """(max(ln p, −100), its derivative 1[ln p > −100]/p): 0 on the clamp, never inf; NaN where
    p is NaN (or negative, under jit), as torch's clamp, so that a diverged model shows.

    Written with `where` on both sides so that autodiff of the clamped log gives that same
    derivative (no 0/0 at p = 0, no ½ at the tie).
    """
    clamped = jnp.log(p) <= LOG_FLOOR
    safe = jnp.where(clamped, jnp.ones_like(p), p)
    return (jnp.where(clamped, LOG_FLOOR, jnp.log(safe)),
            jnp.where(clamped, jnp.zeros_like(p), 1 / safe))


def clamped_log(p):
    return log_and_inverse(p)[0]


def hinge(m):
    """max(m, 0) written so that autodiff gives 1[m > 0], the hand-written rule, also at m = 0;
    NaN stays NaN (a diverged model must not score a zero loss)."""
    return jnp.where(m <= 0, jnp.zeros_like(m), m)


def log_sigmoid_pair(z):
    """(log σ(z), log(1 − σ(z))) computed stably: log σ(z) = −softplus(−z)."""
    return -jax.nn.softplus(-z), -jax.nn.softplus(z)
