"""A penalty's gradient as an optimizer step: several penalties at once, one per parameter group.

    opt = fn.optim.partition({
        "0/*": fn.optim.chain(fn.optim.add_penalty(fn.regularizers.l2(1e-3)), fn.optim.sgd(0.1)),
        "1/*": fn.optim.chain(fn.optim.add_penalty(fn.regularizers.l1(1e-4)), fn.optim.sgd(0.1)),
        "2/*": fn.optim.chain(fn.optim.sgd(0.1), fn.optim.project_max_norm(3.0)),
    })

L2 on layer 0, L1 on layer 1, max-norm on layer 2 (each on the kernels "w" only, the regularizers'
default mask); the decoupled `add_decayed_weights` and the proximal `l1_shrinkage` go in a group's
chain the same way.
"""
from __future__ import annotations

import jax

from funcnn.optim.base import EmptyState, GradientTransformation, require_params
from funcnn.values import value_factory

__all__ = ["add_penalty"]


@value_factory
def add_penalty(regularizer) -> GradientTransformation:
    """Coupled penalty: u ← u + ∂R/∂p, R a `fn.regularizers` penalty (its `.grad`; 0 off its mask).

    First in a chain, the steps are those of the loss C₀ + R: `chain(add_penalty(l1(λ)), sgd(α))`
    is the notes' L1 step w ← w − α·λ·sign(w) − α·∂C₀/∂w, and the penalty's gradient enters
    momentum and Adam's moments as the loss's does. Inside a `partition` group it sees only
    that group's leaves (the others are None).
    """
    if not callable(getattr(regularizer, "grad", None)):
        raise TypeError(f"add_penalty: expected a regularizer with a .grad(params) method (e.g. "
                        f"fn.regularizers.l2(1e-4)), received {regularizer!r}")

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra):
        require_params(params, "add_penalty")
        penalty = regularizer.grad(params)
        return jax.tree.map(lambda u, d: u + d.astype(u.dtype), updates, penalty), state

    return GradientTransformation(init, update)
