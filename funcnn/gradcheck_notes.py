"""The notes' advice on gradient checking beyond one bare `check`: check the loss *with* its
weight penalty, and check again after a short burn-in of training, not only at initialisation.

    reg = fn.regularizers.l2(1e-2)
    report = fn.gradcheck.check(model, loss, params, state, x, y, regularizer=reg)
    print(report)        # three sections: the data term C₀, the penalty R alone, C₀ + R
    later = fn.gradcheck.check_after(model, loss, params, state, x, y, steps=20,
                                     optimizer=fn.optim.sgd(0.1), key=key, regularizer=reg)
    print(later.step)    # 20: the report says where it checked

With a regularizer the objective is C = C₀(θ) + R(θ), and its hand-written gradient is the
layers' backward plus the penalty's own `.grad` (`fn.regularizers`: (λ/n)·w for
(λ/2n)·Σw², (λ/n)·sign(w) for (λ/n)·Σ|w|) — exactly what `fn.train.make_step(...,
hand_written=True)` trains on; `fn.backprop` itself knows only C₀. Each of the three is checked
(hand-written vs autodiff vs centered differences, `check`'s rules unchanged), so that a wrong
`.grad` shows in the penalty's section and a wrong combination only in the total's. The penalty
is written into the model's output as one extra row, [f(x); R(θ), 0, …], and the loss reads it
back: L'([f; r]) = L(f) + r, so `check` needs nothing new. w = 0 is the kink of |w|: a weight
within 2h of it (sign(w) changes) is reported as a kink and left out, as for a ReLU.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import backprop
from funcnn.nn.core import Layer, as_layer
from funcnn.optim.base import resolve_mask, weights_only

if TYPE_CHECKING:
    from funcnn.gradcheck import GradcheckReport

__all__ = ["RegularizedReport", "check_after", "penalty_sections"]


@dataclasses.dataclass(frozen=True)
class RegularizedReport:
    """`check(..., regularizer=R)`: the check of the data term C₀ alone (`data`), of the
    penalty R alone (`penalty`: R's `.grad` against autodiff and centered differences of R; no
    input gradient) and of C₀ + R (`total`: the layers' backward plus `.grad`); `passed` when
    all three pass. `step`: the training step checked at (`check_after`), None if not known."""

    regularizer: str
    data: GradcheckReport
    penalty: GradcheckReport
    total: GradcheckReport
    step: int | None = None

    @property
    def passed(self) -> bool:
        return self.data.passed and self.penalty.passed and self.total.passed

    @property
    def sections(self) -> dict[str, GradcheckReport]:
        return {"data term C₀": self.data, f"penalty R = {self.regularizer}": self.penalty,
                "C₀ + R": self.total}

    def __str__(self):
        at = "" if self.step is None else f" at training step {self.step}"
        lines = [f"gradient check of loss + {self.regularizer}{at}: "
                 f"{'PASSED' if self.passed else 'FAILED'} ("
                 + ", ".join(f"{title} {'passed' if report.passed else 'FAILED'}"
                             for title, report in self.sections.items()) + ")"]
        for title, report in self.sections.items():
            lines += [f"[{title}]", "  " + str(report).replace("\n", "\n  ")]
        return "\n".join(lines)


def penalty_sections(model, loss, regularizer) -> tuple[tuple[Any, Any, bool], ...]:
    """The three (model, loss, with_input_gradient) that `check(..., regularizer=)` checks: the
    data term C₀, the penalty R alone, and C₀ + R (module docstring)."""
    if not (callable(regularizer) and callable(getattr(regularizer, "grad", None))):
        raise TypeError(f"gradcheck.check: expected regularizer to be a penalty R(params) with a "
                        f"hand-written .grad(params) (e.g. fn.regularizers.l2(1e-4)), received "
                        f"{regularizer!r}")
    model = as_layer(model, "gradcheck.check")
    return ((model, loss, True), (_penalty_alone(regularizer), _Sum(), False),
            (_penalized(model, regularizer), _PlusPenalty(loss), True))


def _sides(regularizer, params):
    """sign(w) on the penalty's leaves: where |w| has its kink (changes only at w = 0)."""
    keep = jax.tree.leaves(resolve_mask(getattr(regularizer, "mask", weights_only), params))
    return tuple(jnp.sign(w) for k, w in zip(keep, jax.tree.leaves(params)) if k)


def _scaled_grad(regularizer, params, scale):
    """scale · ∂R/∂params (the hand-written `.grad`), in each parameter's dtype."""
    return jax.tree.map(lambda g, p: (scale * g).astype(p.dtype), regularizer.grad(params),
                        params)


def _with_row(outputs, value):
    """[outputs; value, 0, …]: one more row along the batch axis, holding `value` first."""
    row = jnp.zeros((1,) + outputs.shape[1:], outputs.dtype)
    row = row.reshape(-1).at[0].set(jnp.asarray(value).astype(outputs.dtype)).reshape(row.shape)
    return jnp.concatenate([outputs, row])


def _penalized(model: Layer, regularizer) -> Layer:
    """`model` with R(params) appended as an extra output row; backward adds r̄ · R.grad."""

    def forward(params, state, x, *, key=None, train=False):
        outputs, new_state, residuals = model.forward(params, state, x, key=key, train=train)
        return _with_row(outputs, regularizer(params)), new_state, residuals

    def backward(params, residuals, dy):
        dparams, dx = model.backward(params, residuals, dy[:-1])
        extra = _scaled_grad(regularizer, params, dy[-1].reshape(-1)[0])
        return jax.tree.map(jnp.add, dparams, extra), dx

    def branches(params, state, x, *, key=None, train=False):
        return (model.branches(params, state, x, key=key, train=train),
                _sides(regularizer, params))

    layer = Layer(f"penalized({model!r}, {regularizer!r})", model.init, forward, backward,
                  model.output_shape, branches)
    return layer.with_config((__name__, "penalized", (("model", model),
                                                      ("regularizer", regularizer))))


def _penalty_alone(regularizer) -> Layer:
    """A "model" whose output is (R(params),), whatever x; backward r̄ · R.grad, ∂/∂x = 0."""

    def forward(params, state, x, *, key=None, train=False):
        return jnp.reshape(regularizer(params), (1,)), state, x

    def backward(params, x, dy):
        return _scaled_grad(regularizer, params, dy[0]), jnp.zeros_like(x)

    def branches(params, state, x, *, key=None, train=False):
        return _sides(regularizer, params)

    layer = Layer(f"penalty({regularizer!r})", lambda key, in_shape: ({}, ()), forward, backward,
                  lambda in_shape: (), branches)
    return layer.with_config((__name__, "penalty", (("regularizer", regularizer),)))


@dataclasses.dataclass(frozen=True)
class _Sum:
    """L(f) = Σf with ∂L/∂f = 1: the loss of the penalty-alone section."""

    def __call__(self, outputs, targets, **loss_kwargs):
        return jnp.sum(outputs)

    def grad(self, outputs, targets, **loss_kwargs):
        return jnp.ones_like(outputs)

    def branches(self, outputs, targets, **loss_kwargs):
        return ()


@dataclasses.dataclass(frozen=True)
class _PlusPenalty:
    """L'([f; r, 0, …], y) = L(f, y) + r, with ∂L'/∂[f; r, 0, …] = [∂L/∂f; 1, 0, …]."""

    loss: Any

    def __call__(self, outputs, targets, **loss_kwargs):
        return self.loss(outputs[:-1], targets, **loss_kwargs) + outputs[-1].reshape(-1)[0]

    def grad(self, outputs, targets, **loss_kwargs):
        delta = backprop.loss_delta(self.loss, outputs[:-1], targets, **loss_kwargs)
        return _with_row(delta.astype(outputs.dtype), 1.0)

    def branches(self, outputs, targets, **loss_kwargs):
        return self.loss.branches(outputs[:-1], targets, **loss_kwargs)


def _step_program(model, loss, optimizer, regularizer):
    from funcnn.train import make_step   # training sits above the checker
    return jax.jit(make_step(model, loss, optimizer, regularizer=regularizer))


def check_after(model, loss, params, state, x, y, *, steps: int, optimizer, key=None,
                regularizer=None, **check_kwargs):
    """Train `steps` steps on (x, y), then `check` at the trained parameters and state; the
    report's `step` (and its text: "at training step k") says where it checked.

    The notes check after a short burn-in as well as at initialisation: a fresh network sits at
    special values (scales of 1, biases of 0, units not yet specialised) where some bugs are
    invisible, and training moves it into the state the gradients are used in. Step i is
    `fn.train.make_step(model, loss, optimizer, regularizer=regularizer)` under
    `jax.random.fold_in(key, i)`, with autodiff gradients, so that a wrong hand-written rule
    cannot steer where it is checked; then `check(..., key=fold_in(key, steps),
    regularizer=regularizer, **check_kwargs)` (a `RegularizedReport` with a regularizer).
    `key` defaults to `jax.random.key(0)`; `steps=0` checks the given point. The loss's own
    keyword arguments (e.g. `margin=`) go to training and check alike. Raises ValueError if a
    training loss is not finite (lower the learning rate), naming the step.
    """
    from funcnn.gradcheck import check
    from funcnn.train.cache import compiled

    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"gradcheck.check_after: expected steps to be an int ≥ 0, received "
                         f"{steps!r}")
    if not all(callable(getattr(optimizer, m, None)) for m in ("init", "update")):
        raise TypeError(f"gradcheck.check_after: expected optimizer to be an optimizer with init "
                        f"and update (e.g. fn.optim.sgd(0.1)), received {optimizer!r}")
    settings = inspect.signature(check).parameters
    loss_kwargs = {k: v for k, v in check_kwargs.items() if k not in settings}
    key = jax.random.key(0) if key is None else key
    train_loss = (lambda f, t: loss(f, t, **loss_kwargs)) if loss_kwargs else loss
    step = compiled(_step_program, as_layer(model, "gradcheck.check_after"), train_loss,
                    optimizer, regularizer)
    opt_state = optimizer.init(params)
    for i in range(steps):
        params, state, opt_state, metrics = step(params, state, opt_state, x, y,
                                                 jax.random.fold_in(key, i))
        if not np.isfinite(float(metrics["loss"])):
            raise ValueError(f"gradcheck.check_after: the training loss is {metrics['loss']} at "
                             f"step {i}; expected a finite loss (lower the learning rate)")
    report = check(model, loss, params, state, x, y, key=jax.random.fold_in(key, steps),
                   regularizer=regularizer, **check_kwargs)
    if isinstance(report, RegularizedReport):
        return dataclasses.replace(report, step=steps, **{
            name: dataclasses.replace(getattr(report, name), step=steps)
            for name in ("data", "penalty", "total")})
    return dataclasses.replace(report, step=steps)
