"""What the notes' experiment scripts share: the command line, MNIST split into training and
validation, the notes' MLP, a text table, and curve figures (matplotlib optional).

MNIST's 60 000 training images are split as the notes do: the first 50 000 train, the last
10 000 validate; the 10 000 test images are read once, at the end, by the scripts that print a
test number. `--quick` keeps 1 000 training and 500 validation images (for the tests).
"""
from __future__ import annotations

import argparse
import functools
from pathlib import Path

import jax
import numpy as np

import funcnn as fn
from funcnn import nn

ROOT = Path(__file__).resolve().parents[2]
VALIDATION = 10_000                       # the last 10 000 training images
QUICK_TRAIN, QUICK_VALIDATION = 1_000, 500


def default_out(name: str) -> Path:
    """Where a script writes its figure unless told: out/notes/ at the repository root
    (git-ignored)."""
    return ROOT / "out" / "notes" / f"{name}.png"


def parser(doc: str, name: str, epochs: int) -> argparse.ArgumentParser:
    """The options every script takes: --epochs, --out (the PNG), --quick, --seed."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--epochs", type=int, default=epochs, help=f"epochs per run (default {epochs})")
    p.add_argument("--out", type=Path, default=default_out(name),
                   help=f"figure to write (default {default_out(name)})")
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run: {QUICK_TRAIN} training and {QUICK_VALIDATION} validation "
                        f"images, at most 2 epochs")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of every run")
    return p


def epochs_of(args) -> int:
    return min(args.epochs, 2) if args.quick else args.epochs


@functools.lru_cache(maxsize=2)
def _mnist(split: str):
    """fn.data.mnist(split), read once per process (the tests run every script in one)."""
    return fn.data.mnist(split)


def mnist_split(quick: bool = False):
    """((x_train, y_train), (x_validation, y_validation)): the first 50 000 and the last 10 000
    MNIST training images (1 000 and 500 with `quick`)."""
    x, y = _mnist("train")
    train, validation = (x[:-VALIDATION], y[:-VALIDATION]), (x[-VALIDATION:], y[-VALIDATION:])
    if quick:
        train = tuple(a[:QUICK_TRAIN] for a in train)
        validation = tuple(a[:QUICK_VALIDATION] for a in validation)
    return train, validation


def mnist_test(quick: bool = False):
    """The MNIST test split (its first 500 images with `quick`)."""
    x, y = _mnist("test")
    return (x[:QUICK_VALIDATION], y[:QUICK_VALIDATION]) if quick else (x, y)


def one_hot(pair):
    """(x, labels) → (x, one-hot float32 rows): the targets of the quadratic and binary
    cross-entropy costs (fit's accuracy takes the arg-max of such rows)."""
    x, y = pair
    return x, np.eye(10, dtype=np.float32)[y]


def mlp(hidden: int, *, sigmoid_outputs: bool = False, w_init=fn.init.lecun_normal,
        b_init=fn.init.zeros):
    """The notes' 784-hidden-10 network: Flatten → Dense → Sigmoid → Dense (→ Sigmoid)."""
    layers = [nn.Flatten(), nn.Dense(hidden, w_init, b_init), nn.Sigmoid(),
              nn.Dense(10, w_init, b_init)]
    return nn.serial(*layers, *([nn.Sigmoid()] if sigmoid_outputs else []))


def fit(model, loss, optimizer, train, validation, args, *, hyperparams=None, **kwargs):
    """fn.train.fit for `epochs_of(args)` epochs with the script's seed, no progress bar.

    `hyperparams` (e.g. {"learning_rate": 0.5}) are set in the optimizer's state
    (fn.optim.set_hyperparams), so runs that differ only in them share one compiled epoch; the
    parameters are then initialised here as fit would, from split(key)[0].
    """
    key = jax.random.key(args.seed)
    if hyperparams:
        params, state = model.init(jax.random.split(key)[0], tuple(train[0].shape[1:]))
        kwargs.update(params=params, state=state, opt_state=fn.optim.set_hyperparams(
            optimizer.init(params), **hyperparams))
    return fn.train.fit(model, loss, optimizer, train, epochs=epochs_of(args),
                        batch_size=min(kwargs.pop("batch_size", 128), len(train[0])), key=key,
                        validation=validation, progress=False, **kwargs)


def table(headers, rows) -> str:
    """A plain-text table, columns right-aligned (floats already formatted by the caller)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    line = lambda row: "  ".join(c.rjust(w) for c, w in zip(row, widths))
    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in
                                                                          cells[1:]])


def figure(cols: int = 1, size=(6.4, 4.4)):
    """(Figure, axes list) built without pyplot, or (None, None) with a note when matplotlib is
    missing (it is optional: the tables are the result, the figure an illustration)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib not found: no figure written (pip install matplotlib)")
        return None, None
    fig = Figure(figsize=(size[0] * cols, size[1]), layout="constrained")
    return fig, list(np.atleast_1d(fig.subplots(1, cols)))


def save(fig, path) -> None:
    if fig is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def draw_curves(ax, curves: dict, *, ylabel: str, title: str, xlabel: str = "epoch",
                log: bool = False) -> None:
    """One line per label of `curves` {label: values per epoch}, epochs counted from 1."""
    for label, values in curves.items():
        ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if xlabel == "epoch":
        from matplotlib.ticker import MaxNLocator   # noqa: PLC0415 (matplotlib is optional)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()


def plot_curves(curves: dict, path, *, ylabel: str = "validation accuracy", title: str) -> None:
    """One axes of curves per epoch, saved to `path` (nothing without matplotlib)."""
    fig, axes = figure()
    if fig is not None:
        draw_curves(axes[0], curves, ylabel=ylabel, title=title)
    save(fig, path)


def percent(value: float) -> str:
    return f"{100 * value:.2f}%"
