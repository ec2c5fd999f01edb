"""The classic optimizers, each a short chain of building blocks.

Every learning rate (and SGD's momentum, AdamW's weight decay) may be a float or a schedule
t -> value, t = 0 for the first update. For the same hyper-parameters each alias makes the
same steps as its `torch.optim` namesake (tested in float64 to rtol 1e-6 over 100 steps).

Every alias is built with `inject_hyperparams`: its numeric hyper-parameters live in its state
(`InjectState`), so `fn.optim.hyperparams(state)` reads them and `fn.optim.set_hyperparams`
changes them without recompiling. They are held as float32 scalars (float64 under x64), so the
step is computed from float32(β₂) rather than from the Python float (1 − β₂ then differs from
0.001 by 1e-5 relative). A concrete momentum of 0 is not one of them: it removes the momentum
trace (no velocity is kept), so momentum cannot be turned on later.
"""
from __future__ import annotations

import numbers

from funcnn.optim.base import GradientTransformation, chain, weights_only
from funcnn.optim.inject import _is_number, inject_hyperparams
from funcnn.optim.transforms import (
    ScalarOrSchedule, add_decayed_weights, scale_by_adagrad, scale_by_adam,
    scale_by_learning_rate, scale_by_rms, trace)
from funcnn.values import value_factory

__all__ = ["adagrad", "adam", "adamw", "rmsprop", "sgd"]


def _check(alias: str, **hyperparams) -> None:
    """Raise a TypeError unless each value is a number (or numeric array) or a schedule."""
    for name, value in hyperparams.items():
        if not (callable(value) or _is_number(value)):
            raise TypeError(f"{alias}: expected {name} to be a number or a schedule t -> value, "
                            f"received {value!r}")


def _is_zero(momentum: ScalarOrSchedule) -> bool:
    """Whether momentum is a concrete 0 (a traced value, e.g. while tuning, may be anything)."""
    return isinstance(momentum, numbers.Number) and momentum == 0


def _momentum(momentum: ScalarOrSchedule, nesterov: bool = False, ema: bool = False) -> tuple:
    """A momentum trace, or nothing for a concrete momentum of 0."""
    return () if _is_zero(momentum) else (trace(momentum, nesterov, ema),)


def _sgd(learning_rate, momentum, nesterov, ema):
    return chain(*_momentum(momentum, nesterov, ema), scale_by_learning_rate(learning_rate))


@value_factory
def sgd(learning_rate: ScalarOrSchedule, momentum: ScalarOrSchedule = 0.0,
        nesterov: bool = False, ema: bool = False) -> GradientTransformation:
    """Stochastic gradient descent, with optional (Nesterov) momentum.

    Plain: p ← p − α·g. Momentum μ: v ← μv + g, p ← p − α·v (v₀ = 0). Nesterov:
    v ← μv + g, p ← p − α(g + μv). Equals `torch.optim.SGD(lr=α, momentum=μ, nesterov=...)`
    (dampening 0); the notes' v ← μv − αg, p ← p + v is the same step for constant α.
    `ema=True`: the EMA form v ← μv + (1−μ)g (see `trace`).

    Nesterov is the notes' look-ahead form — x̃ = x + μv, v ← μv − α∇f(x̃), x ← x + v — run on
    the look-ahead point φ = x + μv, which the parameters hold: v ← μv − α∇f(φ),
    φ ← φ − μ·v_prev + (1+μ)·v (cs231n's form), the step above for constant α.
    """
    _check("sgd", learning_rate=learning_rate, momentum=momentum)
    if (nesterov or ema) and _is_zero(momentum):
        raise ValueError(f"sgd: {'Nesterov' if nesterov else 'EMA'} momentum needs momentum > 0")
    static = ("momentum",) if _is_zero(momentum) else ()
    return inject_hyperparams(_sgd, static)(learning_rate=learning_rate, momentum=momentum,
                                            nesterov=nesterov, ema=ema)


def _adagrad(learning_rate, eps):
    return chain(scale_by_adagrad(eps), scale_by_learning_rate(learning_rate))


@value_factory
def adagrad(learning_rate: ScalarOrSchedule, eps: float = 1e-10) -> GradientTransformation:
    """Adagrad: G ← G + g², p ← p − α·g / (√G + ε).

    Equals `torch.optim.Adagrad(lr=α, eps=ε)` (lr_decay=0, initial_accumulator_value=0).
    """
    _check("adagrad", learning_rate=learning_rate, eps=eps)
    return inject_hyperparams(_adagrad)(learning_rate=learning_rate, eps=eps)


def _rmsprop(learning_rate, decay, eps, momentum, eps_in_sqrt):
    return chain(scale_by_rms(decay, eps, eps_in_sqrt), *_momentum(momentum),
                 scale_by_learning_rate(learning_rate))


@value_factory
def rmsprop(learning_rate: ScalarOrSchedule, decay: float = 0.99, eps: float = 1e-8,
            momentum: ScalarOrSchedule = 0.0, eps_in_sqrt: bool = False
            ) -> GradientTransformation:
    """RMSProp: s ← ρs + (1−ρ)g², p ← p − α·g / (√s + ε) (ε outside the root).

    With momentum μ: v ← μv + g/(√s + ε), p ← p − α·v. Equals
    `torch.optim.RMSprop(lr=α, alpha=ρ, eps=ε, momentum=μ)` (centered=False).
    `eps_in_sqrt=True`: p ← p − α·g / √(s + ε), ε inside the root.
    """
    _check("rmsprop", learning_rate=learning_rate, decay=decay, eps=eps, momentum=momentum)
    static = ("momentum",) if _is_zero(momentum) else ()
    return inject_hyperparams(_rmsprop, static)(learning_rate=learning_rate, decay=decay, eps=eps,
                                                momentum=momentum, eps_in_sqrt=eps_in_sqrt)


def _adam(learning_rate, b1, b2, eps, eps_in_sqrt, bias_correction):
    return chain(scale_by_adam(b1, b2, eps, eps_in_sqrt, bias_correction),
                 scale_by_learning_rate(learning_rate))


@value_factory
def adam(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8, eps_in_sqrt: bool = False, bias_correction: bool = True
         ) -> GradientTransformation:
    """Adam: m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², p ← p − α·m̂ / (√v̂ + ε).

    m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ) at the t-th update (t = 1, 2, ...). Equals
    `torch.optim.Adam(lr=α, betas=(β₁, β₂), eps=ε)`. `bias_correction=False` is the notes'
    simplified Adam, p ← p − α·m / (√v + ε); `eps_in_sqrt=True` puts ε inside the root,
    p ← p − α·m̂ / √(v̂ + ε).
    """
    _check("adam", learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)
    return inject_hyperparams(_adam)(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
                                     eps_in_sqrt=eps_in_sqrt, bias_correction=bias_correction)


def _adamw(learning_rate, b1, b2, eps, weight_decay, mask, eps_in_sqrt, bias_correction):
    return chain(scale_by_adam(b1, b2, eps, eps_in_sqrt, bias_correction),
                 add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))


@value_factory
def adamw(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: ScalarOrSchedule = 1e-2, mask=weights_only, eps_in_sqrt: bool = False,
          bias_correction: bool = True) -> GradientTransformation:
    """Adam with decoupled weight decay (Loshchilov & Hutter) on the masked leaves.

    p ← p − α_t(m̂ / (√v̂ + ε) + λ·p), the decay on weights only by default (never biases or
    norm scales). Equals `torch.optim.AdamW(lr=α, betas, eps, weight_decay=λ)` with the
    unmasked leaves in a param group of weight_decay=0 — the decay is scaled by the learning
    rate, also when α_t is a schedule. `eps_in_sqrt` and `bias_correction` as in `adam`.
    """
    _check("adamw", learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
           weight_decay=weight_decay)
    return inject_hyperparams(_adamw, ("mask",))(learning_rate=learning_rate, b1=b1, b2=b2,
                                                 eps=eps, weight_decay=weight_decay, mask=mask,
                                                 eps_in_sqrt=eps_in_sqrt,
                                                 bias_correction=bias_correction)
