"""Binary and multi-label losses: `binary_cross_entropy`, `sigmoid_binary_cross_entropy`
(element-wise), `multilabel_logistic` and `multilabel_hinge` (per example)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from funcnn.losses.base import (Loss, check_probabilities, check_same_shape, clamped_log,
                                count_elements, count_examples, hinge, log_and_inverse,
                                log_sigmoid_pair, per_item)

__all__ = ["binary_cross_entropy", "multilabel_hinge", "multilabel_logistic",
           "sigmoid_binary_cross_entropy"]


def _bce(p, t):
    """Binary cross-entropy on probabilities, averaged over all elements.

    L = mean(−t ln p − (1 − t) ln(1 − p)), each ln clamped at −100 as torch.nn.BCELoss, so
    p ∈ {0, 1} gives a finite loss. Gradient: (−t/p + (1 − t)/(1 − p))/n, = (p − t)/(p(1 − p))/n;
    a term whose ln is on the clamp (p or 1 − p below e⁻¹⁰⁰, e.g. 0) is flat and contributes 0.
    reduction="none": the bracket per element; "sum" (and its gradient): without the 1/n.
    """
    return -(t * clamped_log(p) + (1 - t) * clamped_log(1 - p))


def _bce_grad(p, t):
    _, inv_p = log_and_inverse(p)
    _, inv_not_p = log_and_inverse(1 - p)
    return -t * inv_p + (1 - t) * inv_not_p


binary_cross_entropy = Loss("binary_cross_entropy", *per_item(_bce, _bce_grad, count_elements),
                            check_probabilities("binary_cross_entropy",
                                                check_same_shape("binary_cross_entropy"),
                                                "sigmoid_binary_cross_entropy"))


def _sigmoid_bce(z, t):
    """Binary cross-entropy on logits, averaged over all elements.

    L = mean(softplus(z) − t·z), computed with log σ(z) = −softplus(−z) (stable at |z| = 1e4).
    Gradient: (σ(z) − t)/n. reduction="none": softplus(z) − t·z per element; "sum" (and its
    gradient): without the 1/n.
    """
    log_p, log_not_p = log_sigmoid_pair(z)
    return -(t * log_p + (1 - t) * log_not_p)


def _sigmoid_bce_grad(z, t):
    return jax.nn.sigmoid(z) - t


sigmoid_binary_cross_entropy = Loss(
    "sigmoid_binary_cross_entropy", *per_item(_sigmoid_bce, _sigmoid_bce_grad, count_elements),
    check_same_shape("sigmoid_binary_cross_entropy"))


def _check_attributes(name):
    return check_same_shape(name, "(..., attributes)")


def _multilabel_logistic(z, t):
    """Independent logistic regression per attribute (cs231n).

    L_i = Σ_j −y_ij log σ(s_j) − (1 − y_ij) log(1 − σ(s_j)), y ∈ {0, 1}, summed over the last
    axis and averaged over the examples (all other axes; none for a single example (attributes,)).
    reduction="none": L_i per example, the outputs' shape without its last axis.
    Gradient: (σ(s) − y)/examples ("sum" and "none": σ(s) − y).
    """
    log_p, log_not_p = log_sigmoid_pair(z)
    return -jnp.sum(t * log_p + (1 - t) * log_not_p, axis=-1)


multilabel_logistic = Loss("multilabel_logistic",
                           *per_item(_multilabel_logistic, _sigmoid_bce_grad, count_examples),
                           _check_attributes("multilabel_logistic"))


def _multilabel_hinge(s, y, margin=1.0):
    """Binary hinge per attribute: L_i = Σ_j max(0, Δ − y_ij s_j), y ∈ {−1, +1}.

    Summed over the last axis, averaged over the examples (all other axes); reduction="none":
    L_i per example. Gradient: −y_ij/examples where the margin Δ − y_ij s_j > 0, else 0 (also
    at 0); without the 1/examples for "sum" and "none".
    """
    return jnp.sum(hinge(margin - y * s), axis=-1)


def _multilabel_hinge_grad(s, y, margin=1.0):
    return jnp.where(margin - y * s > 0, -y, jnp.zeros_like(s))


def _multilabel_hinge_branches(s, y, margin=1.0):
    return margin - y * s > 0


multilabel_hinge = Loss("multilabel_hinge",
                        *per_item(_multilabel_hinge, _multilabel_hinge_grad, count_examples),
                        _check_attributes("multilabel_hinge"), _multilabel_hinge_branches)
