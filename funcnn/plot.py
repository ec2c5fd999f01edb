"""Plots of the babysitting checklist: curves, update ratios, histograms, filters, LR range, search.

Every function returns a `matplotlib.figure.Figure` (built without pyplot: no global state, no
window) with labelled axes, a title and a legend wherever it draws more than one line, and
saves it as a PNG when given `path=`. matplotlib is an optional dependency (the `examples`
extra); `import funcnn` never needs it.

    fn.plot.loss_curve(result.history, log=True, path="out/loss.png")
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np


def _figure(rows: int = 1, cols: int = 1, size=(6.4, 4.0)):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("fn.plot needs matplotlib, an optional dependency: pip install "
                          "'funcnn[examples]' (or matplotlib)") from error
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _finish(fig, path):
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig


def _legend_if_many(ax):
    handles, labels = ax.get_legend_handles_labels()
    if len([label for label in labels if not label.startswith("_")]) > 1:
        ax.legend()


def _series(history, name):
    values = history.get(name) if isinstance(history, dict) else None
    return None if values is None else np.asarray(values, np.float64)


def loss_curve(history, *, log: bool = False, xlabel: str = "epoch", title: str | None = None,
               path=None):
    """Training (and validation) loss per epoch; `log=True` uses a log-scaled loss axis.

    `history` is a `fit` history dict, or a sequence of loss values (e.g. per step).
    """
    fig, axes = _figure()
    ax = axes[0, 0]
    if isinstance(history, dict):
        curves = [(name, label) for name, label in (("loss", "training loss"),
                                                     ("val_loss", "validation loss"))
                  if _series(history, name) is not None]
        for name, label in curves:
            values = _series(history, name)
            ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, label=label)
    else:
        values = np.asarray(history, np.float64)
        ax.plot(np.arange(1, len(values) + 1), values, label="training loss")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss (log scale)" if log else "loss")
    ax.set_title(title or ("Loss" + (" (log scale)" if log else "")))
    _legend_if_many(ax)
    return _finish(fig, path)


def accuracy_curve(history: dict, *, title: str = "Training and validation accuracy", path=None):
    """Train / validation accuracy per epoch (and the ensemble's, for `fn.ensemble.fit`): the
    gap between them is the overfitting the notes tell you to watch."""
    fig, axes = _figure()
    ax = axes[0, 0]
    mean = " (member mean)" if "ensemble_val_accuracy" in history else ""
    names = (("accuracy", f"training accuracy{mean}"),
             ("val_accuracy", f"validation accuracy{mean}"),
             ("ensemble_val_accuracy", "ensemble validation accuracy"))
    drawn = 0
    for name, label in names:
        values = _series(history, name)
        if values is not None:
            ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, label=label)
            drawn += 1
    if not drawn:
        raise ValueError("accuracy_curve: the history holds no 'accuracy' or 'val_accuracy'")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    _legend_if_many(ax)
    return _finish(fig, path)


def update_ratios(history_or_ratios, *, target: float = 1e-3, path=None):
    """‖Δθ‖/‖θ‖ per parameter leaf (log scale) against the notes' target of about 1e-3.

    Zero-initialised biases show huge ratios in the first epoch (‖θ‖ ≈ 0); watch the weights.

    Takes a `fit` history (a line per leaf over epochs) or one dict of leaf → ratio (bars).
    """
    fig, axes = _figure()
    ax = axes[0, 0]
    data = history_or_ratios
    if isinstance(data, dict) and "update_ratio" in data:
        epochs = data["update_ratio"]
        for leaf in epochs[0]:
            values = [row[leaf] for row in epochs]
            ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, label=leaf)
        ax.set_xlabel("epoch")
    else:
        leaves = list(data)
        ax.bar(np.arange(len(leaves)), [float(data[k]) for k in leaves], label="update ratio")
        ax.set_xticks(np.arange(len(leaves)), leaves, rotation=45, ha="right")
        ax.set_xlabel("parameter leaf")
    ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.set_yscale("log")
    ax.set_ylabel("‖update‖ / ‖parameter‖")
    ax.set_title("Update / parameter ratio per leaf")
    ax.legend()
    return _finish(fig, path)


def histograms(stats: Sequence, *, path=None):
    """Per-layer histograms of activations (left) and of gradients ∂L/∂a (right) from
    `fn.diagnostics.layer_stats`; titles carry the saturated / dead fractions."""
    has_grad = any(s.gradient is not None for s in stats)
    fig, axes = _figure(len(stats), 2 if has_grad else 1, size=(4.0, 2.2))
    for row, s in enumerate(stats):
        parts = [("activation", s.activation, "activation value")]
        if has_grad:
            parts.append(("gradient", s.gradient, "∂L/∂a"))
        for col, (what, summary, xlabel) in enumerate(parts):
            ax = axes[row, col]
            if summary is None:
                ax.set_axis_off()
                continue
            ax.stairs(np.asarray(summary["hist"]), np.asarray(summary["edges"]), fill=True)
            extra = ""
            if "saturated" in summary:
                extra = f", {100 * float(summary['saturated']):.0f}% saturated"
            elif "dead" in summary:
                extra = f", {100 * float(summary['dead']):.0f}% dead units"
            ax.set_title(f"layer {s.index} {s.name}: {what}s (std {float(summary['std']):.2g}"
                         f"{extra})", fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("count")
            ax.locator_params(axis="x", nbins=5)
    fig.suptitle("Per-layer activation and gradient histograms")
    return _finish(fig, path)


def _filter_images(w, image_shape):
    w = np.asarray(w, np.float64)
    if w.ndim == 4:                                   # conv kernel (kh, kw, cin, cout)
        kh, kw, cin, cout = w.shape
        images = np.moveaxis(w, -1, 0)
        return images if cin == 3 else images[..., 0]
    if w.ndim != 2:
        raise ValueError(f"filters: expected a Dense kernel (in, out) or a Conv2D kernel "
                         f"(kh, kw, cin, cout), received shape {w.shape}")
    fan_in, out = w.shape
    if image_shape is None:
        side = math.isqrt(fan_in)
        if side * side != fan_in:
            raise ValueError(f"filters: {fan_in} inputs are not a square image; pass "
                             f"image_shape=(height, width[, channels])")
        image_shape = (side, side)
    image_shape = tuple(image_shape)
    if image_shape[-1] == 1:
        image_shape = image_shape[:-1]
    return w.T.reshape((out,) + image_shape)


def filters(w, *, image_shape=None, max_filters: int = 64, title: str = "First-layer filters",
            path=None):
    """A grid of first-layer filters, each min–max scaled to its own gray range.

    w: a Dense kernel (in, out), each column shown as an image of `image_shape` (a square by
    default), or a Conv2D kernel (kh, kw, cin, cout) (RGB when cin = 3, else input channel 0).
    """
    images = _filter_images(w, image_shape)[:max_filters]
    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = _figure(rows, cols, size=(1.1, 1.2))
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i < n:
            img = images[i]
            img = (img - img.min()) / (img.max() - img.min() + 1e-12)
            ax.imshow(img, cmap="gray", interpolation="nearest")
            ax.set_title(f"unit {i}", fontsize=7)
    fig.suptitle(title)
    fig.supxlabel("input column (pixels)")
    fig.supylabel("input row (pixels)")
    return _finish(fig, path)


def lr_range(result, *, path=None):
    """The LR range test: raw and smoothed loss against the learning rate (log scale), with the
    suggested learning rate marked."""
    fig, axes = _figure()
    ax = axes[0, 0]
    ax.plot(result.learning_rates, result.losses, alpha=0.35, label="loss per step")
    ax.plot(result.learning_rates, result.smoothed, linewidth=2, label="smoothed loss")
    ax.axvline(result.suggestion, color="black", linestyle="--",
               label=f"suggested LR {result.suggestion:.3g} ({result.rule})")
    ax.set_xscale("log")
    finite = result.smoothed[np.isfinite(result.smoothed)]
    if finite.size:
        low, high = float(finite.min()), float(finite[0])
        ax.set_ylim(low - 0.1 * (high - low + 1e-12), max(high, low) * 1.5 + 1e-12)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title("Learning-rate range test" + (" (stopped at divergence)" if result.diverged
                                                else ""))
    ax.legend()
    return _finish(fig, path)


def _spans_decades(values) -> bool:
    values = np.asarray(values)
    return (np.issubdtype(values.dtype, np.number) and bool(np.all(values > 0))
            and float(values.max()) >= 10 * float(values.min()))


def search_results(result, *, score_label: str = "validation score (lower is better)",
                   path=None):
    """Score against each hyper-parameter, one panel per dimension (log x for log-uniform
    ranges, choices by option), the best trial marked; coarse-to-fine rounds in colours."""
    from funcnn.tune import Choice, LogUniform   # noqa: PLC0415 (tune imports jax; keep it lazy)

    rounds = list(getattr(result, "rounds", [result]))
    names = list(rounds[0].configs)
    fig, axes = _figure(1, len(names), size=(4.5, 3.6))
    best = min(rounds, key=lambda r: r.best_score)
    failed = sum(int(np.sum(~np.isfinite(r.scores))) for r in rounds)
    for ax, name in zip(axes[0], names):
        dist = (rounds[0].space or {}).get(name)
        for i, r in enumerate(rounds):
            values, scores = r.configs[name], np.asarray(r.scores)
            ok = np.isfinite(scores)
            xs = values[ok]
            if isinstance(dist, Choice) or not np.issubdtype(np.asarray(values).dtype, np.number):
                options = list(dist.options) if isinstance(dist, Choice) else sorted(set(values))
                xs = np.asarray([options.index(v) for v in values[ok]])
                ax.set_xticks(np.arange(len(options)), [str(o) for o in options])
            label = f"round {i + 1}" if len(rounds) > 1 else "trials"
            ax.scatter(xs, scores[ok], s=18, alpha=0.8, label=label)
        value = best.best[name]
        if isinstance(dist, Choice):
            value = list(dist.options).index(value)
        ax.scatter([value], [best.best_score], marker="*", s=160, color="black",
                   label=f"best ({best.best[name]:.3g})" if isinstance(best.best[name], float)
                   else f"best ({best.best[name]})")
        if isinstance(dist, LogUniform) or (dist is None and _spans_decades(r.configs[name])):
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(score_label)
        ax.set_title(f"{name}")
        ax.legend(fontsize=8)
    trials = sum(len(r.scores) for r in rounds)
    fig.suptitle(f"Hyper-parameter search: {trials} trials"
                 + (f" ({failed} diverged, not shown)" if failed else ""))
    return _finish(fig, path)


__all__ = ["accuracy_curve", "filters", "histograms", "loss_curve", "lr_range", "search_results",
           "update_ratios"]
