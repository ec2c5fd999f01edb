"""Multi-class losses, per example: `softmax_cross_entropy`, `log_likelihood`,
`multiclass_hinge`; and the ranking loss `max_margin` (per pair)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from funcnn.losses.base import (Loss, are_class_ids, check_label_range, check_probabilities,
                                check_same_shape, clamped_log, count_elements, count_examples,
                                describe_shape, hinge, log_and_inverse, per_item)

__all__ = ["log_likelihood", "max_margin", "multiclass_hinge", "softmax_cross_entropy"]


def _check_labels(name):
    """Outputs (batch, classes); labels int (batch,) in [0, classes), or rows (batch, classes)
    of any dtype (probabilities, one-hot ints or bools)."""

    def check(outputs, labels):
        shape, lshape = jnp.shape(outputs), jnp.shape(labels)
        if len(shape) != 2:
            raise ValueError(f"{name}: expected outputs of shape (batch, classes), received "
                             f"{describe_shape(shape)}")
        if are_class_ids(labels, outputs) and jnp.issubdtype(jnp.result_type(labels), jnp.integer):
            if lshape != shape[:1]:
                raise ValueError(f"{name}: expected int labels of shape ({shape[0]},) for "
                                 f"outputs {describe_shape(shape)}, received "
                                 f"{describe_shape(lshape)}")
            check_label_range(name, labels, shape[1])
        elif lshape != shape:
            raise ValueError(f"{name}: expected labels as int class ids of shape ({shape[0]},) or "
                             f"probability rows of shape {describe_shape(shape)}, received "
                             f"{describe_shape(lshape)} of dtype {jnp.result_type(labels)}")
    return check


def _as_rows(labels, outputs):
    """Int class ids → one-hot rows in the outputs' dtype; rows (any dtype) are cast to it."""
    if are_class_ids(labels, outputs):
        return jax.nn.one_hot(labels, outputs.shape[-1], dtype=outputs.dtype)
    return labels.astype(outputs.dtype)


def _softmax_xent(z, labels):
    """Softmax cross-entropy on logits z: L_i = −Σ_j y_ij log softmax(z_i)_j.

    Averaged over the batch; reduction="none": L_i, (batch,). labels: int (batch,) or
    probability rows (batch, classes).
    Gradient: (softmax(z)·Σ_j y_j − y)/batch, i.e. (a − y)/batch for one-hot y (without the
    1/batch for "sum" and "none").

    >>> float(softmax_cross_entropy(jnp.zeros((1, 10)), jnp.array([3])))  # ln 10
    2.302585...
    """
    return -jnp.sum(_as_rows(labels, z) * jax.nn.log_softmax(z, axis=-1), axis=-1)


def _softmax_xent_grad(z, labels):
    y = _as_rows(labels, z)
    # ∂/∂z of −Σ_j y_j log softmax(z)_j = softmax(z)·Σ_j y_j − y  (= a − y for one-hot rows).
    return jax.nn.softmax(z, axis=-1) * jnp.sum(y, axis=-1, keepdims=True) - y


softmax_cross_entropy = Loss("softmax_cross_entropy",
                             *per_item(_softmax_xent, _softmax_xent_grad, count_examples),
                             _check_labels("softmax_cross_entropy"))


def _log_likelihood(a, labels):
    """Negative log-likelihood on probabilities: L_i = −Σ_j y_ij ln a_ij.

    For a softmax output layer: the notes' C = −ln a_y. Averaged over the batch ("none": L_i).
    ln clamped at −100, so a = 0 gives a finite loss. Gradient: −y/a/batch (−y/a for "sum" and
    "none"); 0 where ln a is on the clamp.
    """
    return -jnp.sum(_as_rows(labels, a) * clamped_log(a), axis=-1)


def _log_likelihood_grad(a, labels):
    return -_as_rows(labels, a) * log_and_inverse(a)[1]


log_likelihood = Loss("log_likelihood",
                      *per_item(_log_likelihood, _log_likelihood_grad, count_examples),
                      check_probabilities("log_likelihood", _check_labels("log_likelihood"),
                                          "softmax_cross_entropy"))


def _hinge_margins(s, labels, margin):
    y = _as_rows(labels, s)
    s_true = jnp.sum(s * y, axis=-1, keepdims=True)
    return jnp.where(y > 0, jnp.zeros_like(s), s - s_true + margin), y


def _multiclass_hinge(s, labels, margin=1.0, squared=False):
    """Weston–Watkins multiclass SVM loss.

    L_i = Σ_{j≠y_i} max(0, s_j − s_{y_i} + Δ) (squared: the hinge squared), averaged over the
    batch ("none": L_i). scores: (batch, classes) float; labels: (batch,) int in [0, classes).
    Gradient: ∂L_i/∂s_j = 1[m_j > 0] for j≠y_i (2·m_j if squared), and −Σ_j of those for j=y_i;
    m_j = s_j − s_{y_i} + Δ, and a margin exactly 0 counts as inactive; divided by the batch
    size for "mean".

    >>> round(float(multiclass_hinge(jnp.array([[3.2, 5.1, -1.7]]), jnp.array([0]))), 4)
    2.9
    """
    margins, _ = _hinge_margins(s, labels, margin)
    active = hinge(margins)
    # `where`, not `if`: `squared` may be traced under jit.
    return jnp.sum(jnp.where(squared, active**2, active), axis=-1)


def _multiclass_hinge_grad(s, labels, margin=1.0, squared=False):
    margins, y = _hinge_margins(s, labels, margin)
    slope = jnp.where(squared, 2 * margins, jnp.ones_like(s))
    active = jnp.where(margins > 0, slope, jnp.zeros_like(s))
    return active - y * jnp.sum(active, axis=-1, keepdims=True)


def _multiclass_hinge_branches(s, labels, margin=1.0, squared=False):
    return _hinge_margins(s, labels, margin)[0] > 0


def _check_int_labels(name):
    check_rows = _check_labels(name)

    def check(scores, labels):
        if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
            raise TypeError(f"{name}: expected int class ids of shape (batch,), received "
                            f"dtype {jnp.result_type(labels)}")
        if not are_class_ids(labels, scores):
            raise ValueError(f"{name}: expected int class ids of shape (batch,) for scores "
                             f"{describe_shape(jnp.shape(scores))}, received "
                             f"{describe_shape(jnp.shape(labels))}")
        check_rows(scores, labels)
    return check


multiclass_hinge = Loss("multiclass_hinge",
                        *per_item(_multiclass_hinge, _multiclass_hinge_grad, count_examples),
                        _check_int_labels("multiclass_hinge"), _multiclass_hinge_branches)


def _max_margin(s_true, s_corrupt, margin=1.0):
    """Max-margin ranking loss mean(max(0, Δ + s_corrupt − s_true)) over pairs ("none": one
    value per pair).

    `.grad` returns the pair (∂L/∂s_true, ∂L/∂s_corrupt) = (−a/n, a/n), a = 1[margin > 0]
    (a margin exactly 0 counts as inactive); (−a, a) for "sum" and "none".
    """
    return hinge(margin + s_corrupt - s_true)


def _max_margin_grad(s_true, s_corrupt, margin=1.0):
    active = (margin + s_corrupt - s_true > 0).astype(s_true.dtype)
    return -active, active


def _max_margin_branches(s_true, s_corrupt, margin=1.0):
    return margin + s_corrupt - s_true > 0


max_margin = Loss("max_margin", *per_item(_max_margin, _max_margin_grad, count_elements),
                  check_same_shape("max_margin"), _max_margin_branches)
