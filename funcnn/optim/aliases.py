"""The classic optimizers, each a short chain of building blocks.

Every learning rate (and SGD's momentum, AdamW's weight decay) may be a float or a schedule
t -> value, t = 0 for the first update. For the same hyper-parameters each alias makes the
same steps as its `torch.optim` namesake (tested in float64 to rtol 1e-6 over 100 steps).
"""
from __future__ import annotations

import numbers

from funcnn.optim.base import GradientTransformation, chain, weights_only
from funcnn.optim.transforms import (
    ScalarOrSchedule, add_decayed_weights, scale_by_adagrad, scale_by_adam,
    scale_by_learning_rate, scale_by_rms, trace)


def _is_zero(momentum: ScalarOrSchedule) -> bool:
    """Whether momentum is a concrete 0 (a traced value, e.g. while tuning, may be anything)."""
    return isinstance(momentum, numbers.Number) and momentum == 0


def _momentum(momentum: ScalarOrSchedule, nesterov: bool = False) -> tuple:
    """A momentum trace, or nothing for a concrete momentum of 0."""
    return () if _is_zero(momentum) else (trace(momentum, nesterov),)


def sgd(learning_rate: ScalarOrSchedule, momentum: ScalarOrSchedule = 0.0,
        nesterov: bool = False) -> GradientTransformation:
    """Stochastic gradient descent, with optional (Nesterov) momentum.

    Plain: p ← p − α·g. Momentum μ: v ← μv + g, p ← p − α·v (v₀ = 0). Nesterov:
    v ← μv + g, p ← p − α(g + μv). Equals `torch.optim.SGD(lr=α, momentum=μ, nesterov=...)`
    (dampening 0); the notes' v ← μv − αg, p ← p + v is the same step for constant α.
    """
    if nesterov and _is_zero(momentum):
        raise ValueError("sgd: Nesterov momentum needs momentum > 0")
    return chain(*_momentum(momentum, nesterov), scale_by_learning_rate(learning_rate))


def adagrad(learning_rate: ScalarOrSchedule, eps: float = 1e-10) -> GradientTransformation:
    """Adagrad: G ← G + g², p ← p − α·g / (√G + ε).

    Equals `torch.optim.Adagrad(lr=α, eps=ε)` (lr_decay=0, initial_accumulator_value=0).
    """
    return chain(scale_by_adagrad(eps), scale_by_learning_rate(learning_rate))


def rmsprop(learning_rate: ScalarOrSchedule, decay: float = 0.99, eps: float = 1e-8,
            momentum: ScalarOrSchedule = 0.0) -> GradientTransformation:
    """RMSProp: s ← ρs + (1−ρ)g², p ← p − α·g / (√s + ε) (ε outside the root).

    With momentum μ: v ← μv + g/(√s + ε), p ← p − α·v. Equals
    `torch.optim.RMSprop(lr=α, alpha=ρ, eps=ε, momentum=μ)` (centered=False).
    """
    return chain(scale_by_rms(decay, eps), *_momentum(momentum),
                 scale_by_learning_rate(learning_rate))


def adam(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8) -> GradientTransformation:
    """Adam: m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², p ← p − α·m̂ / (√v̂ + ε).

    m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ) at the t-th update (t = 1, 2, ...). Equals
    `torch.optim.Adam(lr=α, betas=(β₁, β₂), eps=ε)`.
    """
    return chain(scale_by_adam(b1, b2, eps), scale_by_learning_rate(learning_rate))


def adamw(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: ScalarOrSchedule = 1e-2, mask=weights_only) -> GradientTransformation:
    """Adam with decoupled weight decay (Loshchilov & Hutter) on the masked leaves.

    p ← p − α_t(m̂ / (√v̂ + ε) + λ·p), the decay on weights only by default (never biases or
    norm scales). Equals `torch.optim.AdamW(lr=α, betas, eps, weight_decay=λ)` with the
    unmasked leaves in a param group of weight_decay=0 — the decay is scaled by the learning
    rate, also when α_t is a schedule.
    """
    return chain(scale_by_adam(b1, b2, eps), add_decayed_weights(weight_decay, mask),
                 scale_by_learning_rate(learning_rate))
