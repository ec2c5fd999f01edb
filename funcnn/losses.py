"""Losses `loss(outputs, targets, **kw) -> scalar`, each with its hand-written `loss.grad`.

`loss.grad(outputs, targets, **kw)` is ∂loss/∂outputs (the δᴸ that starts backprop), written
by hand from the formula in the docstring, never by autodiff. `loss.branches(...)` returns the
discrete side of every kink (hinge active or not, sign of f − y) for `fn.gradcheck`.

Reductions: element-wise losses (mean_squared_error, l1, binary_cross_entropy,
sigmoid_binary_cross_entropy) average over all elements, as PyTorch; per-example losses sum
over the classes of an example and average over the batch. Labels are int class ids of shape
(batch,) or probability rows of shape (batch, classes) where the docstring says so, told apart by
rank (rows may be of any dtype, e.g. one-hot ints).

Dtypes: the value and the gradient are computed in the inputs' promoted floating dtype, at
least float32: float16 and bfloat16 are widened, int and bool outputs or targets are cast (int
class ids stay ints), so mixed dtypes work under `jax_numpy_dtype_promotion="strict"` too;
`.grad` returns the outputs' dtype (float32 for int or bool outputs).

Refused, for the value and the gradient alike: complex outputs or targets (`TypeError`), an
empty batch (`ValueError` naming the loss and the shape: a mean over nothing is no loss), and,
when the values are concrete (not traced under jit), probabilities outside [0, 1] for
`binary_cross_entropy` and `log_likelihood` and labels outside [0, classes).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.nn.core import describe_shape

__all__ = ["Loss", "binary_cross_entropy", "l1", "log_likelihood", "max_margin",
           "mean_squared_error", "multiclass_hinge", "multilabel_hinge", "multilabel_logistic",
           "sigmoid_binary_cross_entropy", "softmax_cross_entropy"]

LOG_FLOOR = -100.0  # log p is clamped here (as PyTorch's BCELoss) so p = 0 gives a finite loss


@dataclasses.dataclass(frozen=True)
class Loss:
    """A loss with its hand-written gradient; call it, or call `.grad` for ∂loss/∂outputs."""

    name: str
    value_fn: Callable[..., Any]
    grad_fn: Callable[..., Any]
    check_fn: Callable[..., None]
    branches_fn: Callable[..., Any] | None = None

    def __call__(self, outputs, targets, **kwargs):
        return self.value_fn(*self._prepare(outputs, targets), **kwargs)

    def grad(self, outputs, targets, **kwargs):
        """∂loss/∂outputs in the outputs' dtype (float32 for int or bool outputs), from the
        hand-written formula (a pair for `max_margin`, in the dtypes of its two arguments)."""
        outputs, targets = jnp.asarray(outputs), jnp.asarray(targets)
        grads = self.grad_fn(*self._prepare(outputs, targets), **kwargs)
        like = (outputs, targets) if isinstance(grads, tuple) else outputs
        return jax.tree.map(lambda g, a: g.astype(a.dtype) if _is_floating(a) else g, grads, like)

    def _prepare(self, outputs, targets):
        """Check, then cast both to one real floating dtype (int class ids stay ints)."""
        outputs, targets = jnp.asarray(outputs), jnp.asarray(targets)
        self._check(outputs, targets)
        dtype = _compute_dtype(outputs, targets)
        class_ids = (_are_class_ids(targets, outputs)
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

    def branches(self, outputs, targets, **kwargs):
        """The side of every kink at these outputs; `()` for a smooth loss."""
        if self.branches_fn is None:
            return ()
        return self.branches_fn(outputs, targets, **kwargs)

    @property
    def __doc__(self):
        return self.value_fn.__doc__

    def __repr__(self):
        return f"funcnn.losses.{self.name}"


# ---------------------------------------------------------------------------------------------
# Input checks and dtypes.


def _is_floating(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _compute_dtype(*arrays):
    """The dtype a loss computes in: the floating inputs' promoted dtype, at least float32
    (float16 overflows at 65504); int and bool inputs are values in it (a 0/1 target, a score)."""
    floats = [a.dtype for a in arrays if _is_floating(a)]
    return max([jnp.dtype(jnp.float32), *floats], key=lambda dtype: dtype.itemsize)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_same_shape(name):
    def check(outputs, targets):
        if jnp.shape(outputs) != jnp.shape(targets):
            raise ValueError(f"{name}: expected targets of the outputs' shape "
                             f"{describe_shape(jnp.shape(outputs))}, received "
                             f"{describe_shape(jnp.shape(targets))}")
    return check


def _check_probabilities(name, check, logits_loss):
    """`check`, then refuse concrete probabilities outside [0, 1] (NaN is let through)."""
    def checked(probs, targets):
        check(probs, targets)
        if _is_concrete(probs) and jnp.issubdtype(probs.dtype, jnp.number):   # bools: 0 or 1
            low, high = float(jnp.nanmin(probs)), float(jnp.nanmax(probs))
            if low < 0 or high > 1:
                raise ValueError(f"{name}: expected probabilities in [0, 1], received "
                                 f"{low if low < 0 else high:g}; for logits use {logits_loss}")
    return checked


def _are_class_ids(labels, outputs) -> bool:
    """Labels one rank below the outputs are class ids; labels of the outputs' rank are rows."""
    return jnp.ndim(labels) == jnp.ndim(outputs) - 1


def _check_labels(name):
    """Outputs (batch, classes); labels int (batch,) in [0, classes), or rows (batch, classes)
    of any dtype (probabilities, one-hot ints or bools)."""

    def check(outputs, labels):
        shape, lshape = jnp.shape(outputs), jnp.shape(labels)
        if len(shape) != 2:
            raise ValueError(f"{name}: expected outputs of shape (batch, classes), received "
                             f"{describe_shape(shape)}")
        if _are_class_ids(labels, outputs) and jnp.issubdtype(jnp.result_type(labels), jnp.integer):
            if lshape != shape[:1]:
                raise ValueError(f"{name}: expected int labels of shape ({shape[0]},) for "
                                 f"outputs {describe_shape(shape)}, received "
                                 f"{describe_shape(lshape)}")
            if _is_concrete(labels):
                values = np.asarray(labels)
                low, high = int(values.min()), int(values.max())
                if low < 0 or high >= shape[1]:
                    bad = low if low < 0 else high
                    raise ValueError(f"{name}: expected labels in [0, {shape[1]}) for "
                                     f"{shape[1]} classes, received label {bad}")
        elif lshape != shape:
            raise ValueError(f"{name}: expected labels as int class ids of shape ({shape[0]},) or "
                             f"probability rows of shape {describe_shape(shape)}, received "
                             f"{describe_shape(lshape)} of dtype {jnp.result_type(labels)}")
    return check


def _as_rows(labels, outputs):
    """Int class ids → one-hot rows in the outputs' dtype; rows (any dtype) are cast to it."""
    if _are_class_ids(labels, outputs):
        return jax.nn.one_hot(labels, outputs.shape[-1], dtype=outputs.dtype)
    return labels.astype(outputs.dtype)


def _log_and_inverse(p):
    """(max(ln p, −100), its derivative 1[ln p > −100]/p): 0 on the clamp, never inf; NaN where
    p is NaN (or negative, under jit), as torch's clamp, so that a diverged model shows.

    Written with `where` on both sides so that autodiff of the clamped log gives that same
    derivative (no 0/0 at p = 0, no ½ at the tie).
    """
    clamped = jnp.log(p) <= LOG_FLOOR
    safe = jnp.where(clamped, jnp.ones_like(p), p)
    return (jnp.where(clamped, LOG_FLOOR, jnp.log(safe)),
            jnp.where(clamped, jnp.zeros_like(p), 1 / safe))


def _clamped_log(p):
    return _log_and_inverse(p)[0]


def _hinge(m):
    """max(m, 0) written so that autodiff gives 1[m > 0], the hand-written rule, also at m = 0;
    NaN stays NaN (a diverged model must not score a zero loss)."""
    return jnp.where(m <= 0, jnp.zeros_like(m), m)


# ---------------------------------------------------------------------------------------------
# Regression losses.


def _mse(f, y):
    """Mean squared error mean((f − y)²) over all elements (torch mse_loss).

    Gradient: ∂L/∂f = 2(f − y)/n, n the number of elements.
    """
    return jnp.mean((f - y) ** 2)


def _mse_grad(f, y):
    return 2 * (f - y) / f.size


mean_squared_error = Loss("mean_squared_error", _mse, _mse_grad, _check_same_shape("mean_squared_error"))


def _l1(f, y):
    """Mean absolute error mean|f − y| over all elements. Gradient sign(f − y)/n (0 at f = y)."""
    d = f - y
    return jnp.mean(jnp.sign(d) * d)  # |d| written so that autodiff also gives sign(d), 0 at 0


def _l1_grad(f, y):
    return jnp.sign(f - y) / f.size


def _l1_branches(f, y):
    return jnp.sign(f - y)


l1 = Loss("l1", _l1, _l1_grad, _check_same_shape("l1"), _l1_branches)


# ---------------------------------------------------------------------------------------------
# Binary and multi-label losses.


def _bce(p, t):
    """Binary cross-entropy on probabilities, averaged over all elements.

    L = mean(−t ln p − (1 − t) ln(1 − p)), each ln clamped at −100 as torch.nn.BCELoss, so
    p ∈ {0, 1} gives a finite loss. Gradient: (−t/p + (1 − t)/(1 − p))/n, = (p − t)/(p(1 − p))/n;
    a term whose ln is on the clamp (p or 1 − p below e⁻¹⁰⁰, e.g. 0) is flat and contributes 0.
    """
    return -jnp.mean(t * _clamped_log(p) + (1 - t) * _clamped_log(1 - p))


def _bce_grad(p, t):
    _, inv_p = _log_and_inverse(p)
    _, inv_not_p = _log_and_inverse(1 - p)
    return (-t * inv_p + (1 - t) * inv_not_p) / p.size


binary_cross_entropy = Loss("binary_cross_entropy", _bce, _bce_grad, _check_probabilities(
    "binary_cross_entropy", _check_same_shape("binary_cross_entropy"),
    "sigmoid_binary_cross_entropy"))


def _log_sigmoid_pair(z):
    """(log σ(z), log(1 − σ(z))) computed stably: log σ(z) = −softplus(−z)."""
    return -jax.nn.softplus(-z), -jax.nn.softplus(z)


def _sigmoid_bce(z, t):
    """Binary cross-entropy on logits, averaged over all elements.

    L = mean(softplus(z) − t·z), computed with log σ(z) = −softplus(−z) (stable at |z| = 1e4).
    Gradient: (σ(z) − t)/n.
    """
    log_p, log_not_p = _log_sigmoid_pair(z)
    return -jnp.mean(t * log_p + (1 - t) * log_not_p)


def _sigmoid_bce_grad(z, t):
    return (jax.nn.sigmoid(z) - t) / z.size


sigmoid_binary_cross_entropy = Loss("sigmoid_binary_cross_entropy", _sigmoid_bce, _sigmoid_bce_grad,
                                    _check_same_shape("sigmoid_binary_cross_entropy"))


def _examples(z) -> int:
    """The number of examples of per-example outputs (..., attributes): all axes but the last."""
    return math.prod(z.shape[:-1])


def _check_attributes(name):
    check_same_shape = _check_same_shape(name)

    def check(outputs, targets):
        if jnp.ndim(outputs) == 0:
            raise ValueError(f"{name}: expected outputs of shape (..., attributes), received a "
                             f"scalar")
        check_same_shape(outputs, targets)
    return check


def _multilabel_logistic(z, t):
    """Independent logistic regression per attribute (cs231n).

    L_i = Σ_j −y_ij log σ(s_j) − (1 − y_ij) log(1 − σ(s_j)), y ∈ {0, 1}, summed over the last
    axis and averaged over the examples (all other axes; none for a single example (attributes,)).
    Gradient: (σ(s) − y)/examples.
    """
    log_p, log_not_p = _log_sigmoid_pair(z)
    return -jnp.mean(jnp.sum(t * log_p + (1 - t) * log_not_p, axis=-1))


def _multilabel_logistic_grad(z, t):
    return (jax.nn.sigmoid(z) - t) / _examples(z)


multilabel_logistic = Loss("multilabel_logistic", _multilabel_logistic, _multilabel_logistic_grad,
                           _check_attributes("multilabel_logistic"))


def _multilabel_hinge(s, y, margin=1.0):
    """Binary hinge per attribute: L_i = Σ_j max(0, Δ − y_ij s_j), y ∈ {−1, +1}.

    Summed over the last axis, averaged over the examples (all other axes).
    Gradient: −y_ij/examples where the margin Δ − y_ij s_j > 0, else 0 (also at 0).
    """
    return jnp.mean(jnp.sum(_hinge(margin - y * s), axis=-1))


def _multilabel_hinge_grad(s, y, margin=1.0):
    return jnp.where(margin - y * s > 0, -y, jnp.zeros_like(s)) / _examples(s)


def _multilabel_hinge_branches(s, y, margin=1.0):
    return margin - y * s > 0


multilabel_hinge = Loss("multilabel_hinge", _multilabel_hinge, _multilabel_hinge_grad,
                        _check_attributes("multilabel_hinge"), _multilabel_hinge_branches)


# ---------------------------------------------------------------------------------------------
# Multi-class losses.


def _softmax_xent(z, labels):
    """Softmax cross-entropy on logits z: L_i = −Σ_j y_ij log softmax(z_i)_j.

    Averaged over the batch. labels: int (batch,) or probability rows (batch, classes).
    Gradient: (softmax(z)·Σ_j y_j − y)/batch, i.e. (a − y)/batch for one-hot y.

    >>> float(softmax_cross_entropy(jnp.zeros((1, 10)), jnp.array([3])))  # ln 10
    2.302585...
    """
    return -jnp.mean(jnp.sum(_as_rows(labels, z) * jax.nn.log_softmax(z, axis=-1), axis=-1))


def _softmax_xent_grad(z, labels):
    y = _as_rows(labels, z)
    # ∂/∂z of −Σ_j y_j log softmax(z)_j = softmax(z)·Σ_j y_j − y  (= a − y for one-hot rows).
    return (jax.nn.softmax(z, axis=-1) * jnp.sum(y, axis=-1, keepdims=True) - y) / z.shape[0]


softmax_cross_entropy = Loss("softmax_cross_entropy", _softmax_xent, _softmax_xent_grad,
                             _check_labels("softmax_cross_entropy"))


def _log_likelihood(a, labels):
    """Negative log-likelihood on probabilities: L_i = −Σ_j y_ij ln a_ij.

    For a softmax output layer: the notes' C = −ln a_y. Averaged over the batch. ln clamped at
    −100, so a = 0 gives a finite loss. Gradient: −y/a/batch; 0 where ln a is on the clamp.
    """
    return -jnp.mean(jnp.sum(_as_rows(labels, a) * _clamped_log(a), axis=-1))


def _log_likelihood_grad(a, labels):
    return -_as_rows(labels, a) * _log_and_inverse(a)[1] / a.shape[0]


log_likelihood = Loss("log_likelihood", _log_likelihood, _log_likelihood_grad,
                      _check_probabilities("log_likelihood", _check_labels("log_likelihood"),
                                           "softmax_cross_entropy"))


def _hinge_margins(s, labels, margin):
    y = _as_rows(labels, s)
    s_true = jnp.sum(s * y, axis=-1, keepdims=True)
    return jnp.where(y > 0, jnp.zeros_like(s), s - s_true + margin), y


def _multiclass_hinge(s, labels, margin=1.0, squared=False):
    """Weston–Watkins multiclass SVM loss.

    L_i = Σ_{j≠y_i} max(0, s_j − s_{y_i} + Δ) (squared: the hinge squared), averaged over the batch.
    scores: (batch, classes) float; labels: (batch,) int in [0, classes).
    Gradient: ∂L_i/∂s_j = 1[m_j > 0] for j≠y_i (2·m_j if squared), and −Σ_j of those for j=y_i;
    m_j = s_j − s_{y_i} + Δ, and a margin exactly 0 counts as inactive.

    >>> round(float(multiclass_hinge(jnp.array([[3.2, 5.1, -1.7]]), jnp.array([0]))), 4)
    2.9
    """
    margins, _ = _hinge_margins(s, labels, margin)
    hinge = _hinge(margins)
    # `where`, not `if`: `squared` may be traced under jit.
    return jnp.mean(jnp.sum(jnp.where(squared, hinge**2, hinge), axis=-1))


def _multiclass_hinge_grad(s, labels, margin=1.0, squared=False):
    margins, y = _hinge_margins(s, labels, margin)
    slope = jnp.where(squared, 2 * margins, jnp.ones_like(s))
    active = jnp.where(margins > 0, slope, jnp.zeros_like(s))
    return (active - y * jnp.sum(active, axis=-1, keepdims=True)) / s.shape[0]


def _multiclass_hinge_branches(s, labels, margin=1.0, squared=False):
    return _hinge_margins(s, labels, margin)[0] > 0


def _check_int_labels(name):
    check_rows = _check_labels(name)

    def check(scores, labels):
        if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
            raise TypeError(f"{name}: expected int class ids of shape (batch,), received "
                            f"dtype {jnp.result_type(labels)}")
        if not _are_class_ids(labels, scores):
            raise ValueError(f"{name}: expected int class ids of shape (batch,) for scores "
                             f"{describe_shape(jnp.shape(scores))}, received "
                             f"{describe_shape(jnp.shape(labels))}")
        check_rows(scores, labels)
    return check


multiclass_hinge = Loss("multiclass_hinge", _multiclass_hinge, _multiclass_hinge_grad,
                        _check_int_labels("multiclass_hinge"), _multiclass_hinge_branches)


def _max_margin(s_true, s_corrupt, margin=1.0):
    """Max-margin ranking loss mean(max(0, Δ + s_corrupt − s_true)) over pairs.

    `.grad` returns the pair (∂L/∂s_true, ∂L/∂s_corrupt) = (−a/n, a/n), a = 1[margin > 0]
    (a margin exactly 0 counts as inactive).
    """
    return jnp.mean(_hinge(margin + s_corrupt - s_true))


def _max_margin_grad(s_true, s_corrupt, margin=1.0):
    active = (margin + s_corrupt - s_true > 0).astype(s_true.dtype) / s_true.size
    return -active, active


def _max_margin_branches(s_true, s_corrupt, margin=1.0):
    return margin + s_corrupt - s_true > 0


max_margin = Loss("max_margin", _max_margin, _max_margin_grad, _check_same_shape("max_margin"),
                  _max_margin_branches)

