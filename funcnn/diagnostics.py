"""Babysitting a network: sanity checks before training and health statistics during it.

The notes' checklist, as pure functions:

    fn.diagnostics.initial_loss_check(model, loss, x, y, key=key)   # loss at init ≈ ln C?
    fn.diagnostics.overfit_check(model, loss, opt, x, y, key=key)   # can it memorise 20 examples?
    stats = fn.diagnostics.layer_stats(layers, loss, params, state, x, y)   # jittable
    fn.diagnostics.update_ratios(params, updates)                   # ‖Δθ‖/‖θ‖ ≈ 1e-3 per leaf
    fn.diagnostics.find_nonfinite(model, loss, params, state, x, y)   # where did a NaN start?

Per-layer statistics walk the layers one by one: pass a `fn.nn.serial` model (its `.children`)
or the list of layers given to it (the serial model's params tuple matches either).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import backprop
from funcnn import train as _train
from funcnn.train.cache import compiled
from funcnn.train.evaluate import outputs_program
from funcnn.nn.core import Layer, child_key
from funcnn.paths import leaf_paths
from funcnn.hessian import classify_curvature, hessian_spectrum   # Lanczos on Hv

update_ratios = _train.update_ratios   # ‖update‖ / ‖param‖ per leaf, keyed by leaf path


def ratio_health(ratios: dict, target: float = 1e-3, decades: float = 1.0) -> dict:
    """"ok" where |log10(r / target)| ≤ decades, else "too small" (LR too low?) or "too large".

    The notes' rule of thumb: updates about 1e-3 of the parameters' scale.
    """
    verdict = {}
    for name, ratio in ratios.items():
        r = float(ratio)
        distance = math.log10(r / target) if r > 0 else -math.inf
        verdict[name] = ("ok" if abs(distance) <= decades else
                         "too small" if distance < 0 else "too large")
    return verdict


# ---------------------------------------------------------------------------------------------
# Per-layer activation and gradient statistics.


@functools.partial(jax.tree_util.register_dataclass, data_fields=["activation", "gradient"],
                   meta_fields=["index", "name"])
@dataclasses.dataclass(frozen=True)
class LayerStats:
    """Statistics of one layer's output a (and of δ = ∂L/∂a), a pytree usable as a jit output.

    Each of `activation` / `gradient` is a dict of arrays: "mean", "std", "min", "max",
    "hist" (counts) and "edges" (bins + 1 edges); for Sigmoid/Tanh/HardTanh outputs also
    "saturated", for Relu outputs "zero" and "dead". `gradient` is None without a loss.
    """

    index: int
    name: str
    activation: dict
    gradient: dict | None = None


def _children(model) -> tuple[tuple[Layer, ...], bool]:
    """(layers, single): the children of `model`, and whether it is one non-serial layer."""
    if isinstance(model, Layer):
        return (model.children, False) if model.children else ((model,), True)
    layers = tuple(model)
    if not layers or not all(isinstance(layer, Layer) for layer in layers):
        raise TypeError(f"diagnostics: expected a Layer or a sequence of Layers, received "
                        f"{type(model).__name__}")
    return layers, False


def _summary(a, bins: int) -> dict:
    """Mean, std, min, max and a histogram of every entry of `a`."""
    flat = a.ravel()
    counts, edges = jnp.histogram(flat, bins=bins)       # bins span [min, max]
    return {"mean": jnp.mean(flat), "std": jnp.std(flat), "min": jnp.min(flat),
            "max": jnp.max(flat), "hist": counts, "edges": edges}


def _saturation(name: str, a, eps: float) -> dict:
    """Fractions of saturated (σ within eps of 0/1, |tanh| within eps of 1) or dead units.

    Relu: "zero" = fraction of outputs equal to 0; "dead" = fraction of units (last axis)
    that are 0 for every example (and position) of the batch — they get no gradient at all.
    """
    if name == "Sigmoid":
        return {"saturated": jnp.mean((a < eps) | (a > 1 - eps))}
    if name in ("Tanh", "HardTanh"):
        return {"saturated": jnp.mean(jnp.abs(a) >= 1 - eps)}
    if name == "Relu":
        zero = a <= 0
        units = jnp.all(zero.reshape(-1, a.shape[-1]), axis=0)
        return {"zero": jnp.mean(zero), "dead": jnp.mean(units)}
    return {}


def _stats(name, a, bins, eps):
    return {**_summary(a, bins), **_saturation(name, a, eps)}


def layer_stats(model, loss, params, state, x, y=None, *, key=None, train: bool = False,
                bins: int = 30, eps: float = 0.01, autodiff: bool = False,
                **loss_kwargs) -> tuple[LayerStats, ...]:
    """Forward (and backward) statistics of every layer: a tuple of `LayerStats`.

    Runs each child's `forward`, recording its output aˡ, then — when `y` is given — the
    children's hand-written `backward` from δᴸ = loss.grad(a, y) (or `jax.vjp` with
    `autodiff=True`), recording δˡ = ∂L/∂aˡ. Pure: jit a closure over `model` and `loss`.
    `model` is the list of layers given to `fn.nn.serial` (params: that serial's tuple).
    """
    layers, single = _children(model)
    if single:
        params, state = (params,), (state,)
    outputs, residuals, vjps, a = [], [], [], x
    for i, layer in enumerate(layers):
        k = None if key is None else jax.random.fold_in(key, i)
        if autodiff:
            run = lambda p, inp, layer=layer, i=i, k=k: layer.apply(p, state[i], inp, key=k,
                                                                 train=train)[0]
            a, vjp = jax.vjp(run, params[i], a)
            vjps.append(vjp)
        else:
            a, _, res = layer.forward(params[i], state[i], a, key=k, train=train)
            residuals.append(res)
        outputs.append(a)

    deltas = [None] * len(layers)
    if y is not None:
        dy = backprop.loss_delta(loss, a, y, **loss_kwargs)
        for i in reversed(range(len(layers))):
            deltas[i] = dy
            _, dy = vjps[i](dy) if autodiff else layers[i].backward(params[i], residuals[i], dy)

    return tuple(
        LayerStats(i, layer.name, _stats(layer.name, outputs[i], bins, eps),
                   None if deltas[i] is None else _stats("", deltas[i], bins, eps))
        for i, layer in enumerate(layers))


def format_stats(stats: Sequence[LayerStats]) -> str:
    """A table of per-layer statistics, one line per layer."""
    lines = [f"{'layer':<16}{'act mean':>10}{'act std':>10}{'sat/dead':>10}"
             f"{'grad mean':>12}{'grad std':>12}"]
    for s in stats:
        extra = s.activation.get("saturated", s.activation.get("dead"))
        extra = "" if extra is None else f"{float(extra):.3f}"
        grad = ("", "") if s.gradient is None else (f"{float(s.gradient['mean']):.2e}",
                                                     f"{float(s.gradient['std']):.2e}")
        lines.append(f"{f'{s.index}:{s.name}':<16}{float(s.activation['mean']):>10.3f}"
                     f"{float(s.activation['std']):>10.3f}{extra:>10}{grad[0]:>12}{grad[1]:>12}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The origin of a NaN or an Inf.


@dataclasses.dataclass(frozen=True)
class NonFiniteReport:
    """Where the first NaN or Inf of a training step appeared (`find_nonfinite`).

    `layer`: the layer's path name ("2/Dense"; "3/1/Dense" inside a nested serial), "input" for
    the data, "loss" for the loss. `where`: "forward" (its output), "backward" (its input
    gradient dx), "gradient" (a parameter gradient), "update" (the optimizer's update).
    `leaf`: the parameter ("w") whose gradient or update is non-finite; for "backward", the
    first non-finite parameter gradient of the same call; for "forward", a non-finite parameter
    of the layer, if any. `stats` of the offending array: "min" and "max" (over its non-NaN
    entries), "nan" and "inf" (counts), "size".
    """

    layer: str
    where: str
    leaf: str | None
    stats: dict

    def __str__(self):
        s = self.stats
        leaf = f" ({self.leaf})" if self.leaf else ""
        return (f"first non-finite value: {self.where} of {self.layer}{leaf}: {s['nan']} NaN and "
                f"{s['inf']} Inf among {s['size']} values, others in [{s['min']:g}, {s['max']:g}]")


def _first_nonfinite(tree):
    """(path, leaf) of the first floating-point leaf of `tree` holding a NaN or an Inf, or None."""
    for name, leaf in zip(leaf_paths(tree), jax.tree.leaves(tree)):
        if (jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
                and not np.isfinite(np.asarray(leaf)).all()):   # numpy: no compile per shape
            return name, leaf
    return None


def _nonfinite_stats(a) -> dict:
    a = np.asarray(a, np.float64)
    nan = np.isnan(a)
    seen = a[~nan]
    return {"min": float(seen.min()) if seen.size else math.nan,
            "max": float(seen.max()) if seen.size else math.nan,
            "nan": int(nan.sum()), "inf": int(np.isinf(a).sum()), "size": int(a.size)}


def _leaf_layers(layers, params, state, key, index=()):
    """(path name, index path, layer, params, state, key) of every layer below `layers` that is
    not a serial, in forward order, with the keys that `fn.nn.serial` gives them."""
    for i, layer in enumerate(layers):
        where, k = index + (i,), child_key(key, i)
        if layer.children:
            yield from _leaf_layers(layer.children, params[i], state[i], k, where)
        else:
            yield "/".join(map(str, where + (layer.name,))), where, layer, params[i], state[i], k


def _at(tree, index):
    for i in index:
        tree = tree[i]
    return tree


def _assemble(params, grads: dict, index=()):
    """The gradient tree of `params` from the gradients of its layers, keyed by index path."""
    if index in grads:
        return grads[index]
    return tuple(_assemble(p, grads, index + (i,)) for i, p in enumerate(params))


def find_nonfinite(model, loss, params, state, x, y, *, key=None, optimizer=None,
                   opt_state=None, train: bool = True) -> NonFiniteReport | None:
    """The first NaN or Inf of one training step on (x, y), by layer and pass; None if none.

    Runs the layers' hand-written `forward` one layer at a time (nested serials are walked into
    and named by their full path, "3/1/Dense"), then the loss and its gradient δᴸ, then the
    layers' `backward` in reverse, then — given an `optimizer` — its update (from `opt_state`,
    or a fresh `optimizer.init(params)`), and reports the first non-finite array met: a
    layer's output ("forward"), a non-finite loss gradient (layer "loss", "backward") or loss
    value ("loss", "forward"), a layer's input gradient ("backward") or parameter gradient
    ("gradient"), an update ("update"). Non-finite data is reported as layer "input". Eager:
    call it on the batch where training diverged (`fn.train.TrainingDiverged.report`).

    >>> report = fn.diagnostics.find_nonfinite(model, loss, params, state, x, y, key=key)
    >>> print(report)
    first non-finite value: backward of 2/Sqrt: 3 NaN and 0 Inf among 64 values, others in [...]
    """
    layers, single = _children(model)
    walk = ([(model.name, (), model, params, state, key)] if single
            else list(_leaf_layers(layers, params, state, key)))
    bad = _first_nonfinite(x)
    if bad:
        return NonFiniteReport("input", "forward", None, _nonfinite_stats(bad[1]))

    a, ran = x, []
    for name, index, layer, p, s, k in walk:
        a, _, residuals = layer.forward(p, s, a, key=k, train=train)
        bad = _first_nonfinite(a)
        if bad:
            param = _first_nonfinite(p)
            return NonFiniteReport(name, "forward", param and param[0], _nonfinite_stats(bad[1]))
        ran.append((name, index, layer, p, residuals))

    delta, value = backprop.loss_delta(loss, a, y), loss(a, y)
    for where, array in (("backward", delta), ("forward", value)):
        if _first_nonfinite(array):
            return NonFiniteReport("loss", where, None, _nonfinite_stats(array))

    grads = {}
    for name, index, layer, p, residuals in reversed(ran):
        grads[index], delta = layer.backward(p, residuals, delta)
        bad_dx, bad_grad = _first_nonfinite(delta), _first_nonfinite(grads[index])
        if bad_dx:
            return NonFiniteReport(name, "backward", bad_grad and bad_grad[0],
                                   _nonfinite_stats(bad_dx[1]))
        if bad_grad:
            return NonFiniteReport(name, "gradient", bad_grad[0], _nonfinite_stats(bad_grad[1]))

    if optimizer is None:
        return None
    opt_state = optimizer.init(params) if opt_state is None else opt_state
    updates, _ = optimizer.update(_assemble(params, grads), opt_state, params, value=value)
    for name, index, *_ in ran:
        bad = _first_nonfinite(_at(updates, index))
        if bad:
            return NonFiniteReport(name, "update", bad[0], _nonfinite_stats(bad[1]))
    return None


# ---------------------------------------------------------------------------------------------
# Initial loss.


def expected_initial_loss(loss, classes: int, *, margin: float = 1.0,
                          squared: bool = False) -> float:
    """The loss of a network whose scores are all ≈ 0 at initialisation (uniform prediction).

    softmax_cross_entropy / log_likelihood: ln C (−ln of the uniform probability 1/C).
    multiclass_hinge (Weston–Watkins): (C − 1)·Δ, each of the C−1 margins being Δ at s = 0
    (Δ² if squared). sigmoid/binary cross-entropy: ln 2 per element; multilabel_logistic:
    C·ln 2; multilabel_hinge: C·Δ.

    >>> expected_initial_loss(fn.losses.softmax_cross_entropy, 10)   # ln 10
    2.302585092994046
    """
    name = getattr(loss, "name", None)
    # One output column is a valid binary model for the element-wise losses.
    fewest = 2 if name in ("softmax_cross_entropy", "log_likelihood", "multiclass_hinge") else 1
    if isinstance(classes, bool) or not (isinstance(classes, int) and classes >= fewest):
        raise ValueError(f"expected_initial_loss: expected an int number of classes ≥ {fewest} "
                         f"for {name or loss!r}, received {classes!r}")
    hinge = margin**2 if squared else margin
    table = {"softmax_cross_entropy": math.log(classes), "log_likelihood": math.log(classes),
             "multiclass_hinge": (classes - 1) * hinge,
             "sigmoid_binary_cross_entropy": math.log(2.0),
             "binary_cross_entropy": math.log(2.0),
             "multilabel_logistic": classes * math.log(2.0),
             "multilabel_hinge": classes * margin}
    if name not in table:
        raise ValueError(f"expected_initial_loss: no closed form for the loss {loss!r}; known: "
                         f"{', '.join(sorted(table))}")
    return table[name]


class InitialLossCheck(NamedTuple):
    """Expected vs measured loss of a freshly initialised model."""

    expected: float
    measured: float
    relative_error: float
    passed: bool

    def __str__(self):
        verdict = "PASSED" if self.passed else "FAILED"
        hint = "" if self.passed else (
            " — the scores at init are not ≈ 0: initialise the last layer smaller "
            "(e.g. Dense(classes, w_init=fn.init.normal(0.01))) or check the loss/labels")
        return (f"initial loss ({verdict}): measured {self.measured:.4f}, expected "
                f"{self.expected:.4f} (relative error {100 * self.relative_error:.1f}%){hint}")


def initial_loss_check(model, loss, x, y, *, key=None, params=None, state=None,
                       classes: int | None = None, rtol: float = 0.05,
                       **loss_kwargs) -> InitialLossCheck:
    """Compare the measured loss at initialisation with `expected_initial_loss`.

    passed ⇔ |measured − expected| ≤ rtol·expected. `classes` defaults to the model's last
    output dimension; params/state are initialised from `key` unless given.
    """
    if params is None:
        if key is None:
            raise ValueError("initial_loss_check: pass key= (to initialise) or params=")
        params, state = jax.jit(model.init, static_argnums=1)(key, tuple(np.shape(x)[1:]))
    outputs = compiled(outputs_program, model)(params, state, jnp.asarray(x))
    classes = int(outputs.shape[-1]) if classes is None else classes
    expected = expected_initial_loss(loss, classes, **loss_kwargs)
    measured = float(loss(outputs, jnp.asarray(y), **loss_kwargs))
    error = abs(measured - expected) / expected
    return InitialLossCheck(expected, measured, error, bool(error <= rtol))


# ---------------------------------------------------------------------------------------------
# Overfitting a tiny subset.


class OverfitReport(NamedTuple):
    """Outcome of `overfit_check`: the loss curve on the tiny subset and a verdict."""

    passed: bool
    initial_loss: float
    final_loss: float
    accuracy: float | None
    losses: np.ndarray
    message: str

    def __str__(self):
        return f"overfit check ({'PASSED' if self.passed else 'FAILED'}): {self.message}"


def overfit_check(model, loss, optimizer, x, y, *, key, examples: int = 20, steps: int = 200,
                  rtol: float = 0.02, params=None, state=None,
                  hand_written: bool = False) -> OverfitReport:
    """Train on `examples` rows drawn with `key`, full batch, no regularizer, for `steps` steps.

    Pass an optimizer without weight decay. A correct set-up memorises them: passed ⇔ the
    final loss ≤ rtol·initial loss (and 100 % training accuracy for classification). A loss
    that never moves means a learning rate of 0 or a cut gradient; a non-finite loss means
    divergence. One compiled `lax.scan`.
    `hand_written=True` trains on the layers' `backward` (as `fn.train.make_step`).
    """
    init_key, train_key, pick_key = jax.random.split(key, 3)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(pick_key)))
    rows = rng.choice(len(x), min(examples, len(x)), replace=False)
    xs, ys = jnp.asarray(np.asarray(x)[rows]), jnp.asarray(np.asarray(y)[rows])
    if params is None:
        params, state = jax.jit(model.init, static_argnums=1)(init_key, tuple(xs.shape[1:]))
    step = _train.make_step(model, loss, optimizer, hand_written=hand_written)

    @jax.jit
    def run(params, state, opt_state):
        def body(carry, t):
            p, s, o = carry
            p, s, o, metrics = step(p, s, o, xs, ys, jax.random.fold_in(train_key, t))
            return (p, s, o), metrics["loss"]

        (p, s, _), losses = jax.lax.scan(body, (params, state, opt_state), jnp.arange(steps))
        outputs, _ = model.apply(p, s, xs, train=False)
        return losses, loss(outputs, ys), _train.accuracy(outputs, ys)

    losses, final, acc = run(params, state, optimizer.init(params))
    losses, final = np.asarray(losses), float(final)
    initial = float(losses[0])
    acc = None if acc is None else float(acc)
    memorised = acc is None or acc == 1.0
    if not np.all(np.isfinite(losses)) or not math.isfinite(final):
        passed, message = False, ("the loss became non-finite: the learning rate is too high "
                                  "or the loss is unstable")
    elif abs(final - initial) <= 1e-6 * max(abs(initial), 1.0):
        passed, message = False, (f"the loss never moved from {initial:.4f}: a learning rate of "
                                  f"0, or a layer whose backward cuts the gradient")
    elif final <= rtol * initial and memorised:
        passed, message = True, (f"loss {initial:.4f} → {final:.2e} on {len(xs)} examples in "
                                 f"{steps} steps")
    else:
        acc_text = "" if acc is None else f", training accuracy {100 * acc:.0f}%"
        passed, message = False, (f"loss {initial:.4f} → {final:.4f} (not ≤ {rtol:g}× the "
                                  f"initial loss{acc_text}) on {len(xs)} examples: too few "
                                  f"steps, too small a learning rate, or a bug")
    return OverfitReport(passed, initial, final, acc, losses, message)


__all__ = ["LayerStats", "InitialLossCheck", "NonFiniteReport", "OverfitReport",
           "expected_initial_loss", "find_nonfinite", "format_stats", "initial_loss_check",
           "classify_curvature", "hessian_spectrum",
           "layer_stats", "overfit_check", "ratio_health", "update_ratios"]
