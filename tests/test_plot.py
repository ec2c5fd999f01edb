"""fn.plot: every figure has labelled axes, a title, a legend where it draws several lines, and
saves a PNG; `import funcnn` works without matplotlib."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

import funcnn as fn
from funcnn import nn

matplotlib.use("Agg")

PNG = b"\x89PNG\r\n\x1a\n"
HISTORY = {"loss": [2.0, 1.0, 0.5], "accuracy": [0.5, 0.8, 0.9], "val_loss": [2.1, 1.2, 0.7],
           "val_accuracy": [0.45, 0.75, 0.85],
           "update_ratio": [{"0/w": 2e-3, "0/b": 1e-3}, {"0/w": 1e-3, "0/b": 8e-4},
                            {"0/w": 9e-4, "0/b": 5e-4}]}


def _lines(ax):
    """Labelled artists a legend would list (lines, scatters, bars), "_"-prefixed ones excluded."""
    return [label for label in ax.get_legend_handles_labels()[1] if not label.startswith("_")]


def assert_labelled(fig):
    """Labelled axes and a title on every panel that shows data; a legend where >1 line."""
    assert fig._suptitle is not None or any(ax.get_title() for ax in fig.axes)
    for ax in fig.axes:
        if not ax.axison:      # image grids: the figure carries the axis labels
            assert fig._supxlabel is not None and fig._supxlabel.get_text()
            assert fig._supylabel is not None and fig._supylabel.get_text()
            continue
        assert ax.get_xlabel() and ax.get_ylabel(), ax
        assert ax.get_title() or fig._suptitle.get_text(), ax
        drawn = len(ax.lines) + len(ax.collections) + len(ax.patches)
        if drawn > 1 and len(_lines(ax)) > 1:
            assert ax.get_legend() is not None, (ax.get_title(), _lines(ax))


def assert_png(path):
    assert path.read_bytes()[:8] == PNG


def test_curves(tmp_path):
    for log in (False, True):
        fig = fn.plot.loss_curve(HISTORY, log=log, path=tmp_path / f"loss{log}.png")
        assert_labelled(fig)
        assert_png(tmp_path / f"loss{log}.png")
        ax = fig.axes[0]
        assert ax.get_yscale() == ("log" if log else "linear")
        assert ax.get_legend() is not None and len(ax.lines) == 2
    alone = fn.plot.loss_curve([3.0, 2.0, 1.5], xlabel="step")
    assert_labelled(alone)
    assert alone.axes[0].get_legend() is None and alone.axes[0].get_xlabel() == "step"
    acc = fn.plot.accuracy_curve(HISTORY, path=tmp_path / "acc.png")
    assert_labelled(acc)
    assert [t.get_text() for t in acc.axes[0].get_legend().get_texts()] == [
        "training accuracy", "validation accuracy"]
    ratios = fn.plot.update_ratios(HISTORY, path=tmp_path / "ratios.png")
    assert_labelled(ratios)
    assert ratios.axes[0].get_yscale() == "log" and len(ratios.axes[0].lines) == 3
    assert_labelled(fn.plot.update_ratios(HISTORY["update_ratio"][0]))
    with pytest.raises(ValueError, match="accuracy"):
        fn.plot.accuracy_curve({"loss": [1.0]})


def test_histograms_and_filters(tmp_path):
    layers = [nn.Flatten(), nn.Dense(12), nn.Tanh(), nn.Dense(3)]
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 12), np.float32) / 4
    params = ({}, {"w": w1, "b": np.zeros(12, np.float32)},
              {}, {"w": rng.standard_normal((12, 3), np.float32), "b": np.zeros(3, np.float32)})
    state = ({}, {}, {}, {})
    x = rng.standard_normal((16, 4, 4, 1)).astype(np.float32)
    stats = jax.jit(lambda p, s, x, y: fn.diagnostics.layer_stats(
        layers, fn.losses.softmax_cross_entropy, p, s, x, y))(params, state, x,
                                                              jnp.zeros(16, jnp.int32))
    fig = fn.plot.histograms(stats, path=tmp_path / "hist.png")
    assert_labelled(fig)
    assert len(fig.axes) == 2 * len(layers) and "saturated" in fig.axes[4].get_title()
    assert_png(tmp_path / "hist.png")

    grid = fn.plot.filters(params[1]["w"], path=tmp_path / "filters.png")
    assert_labelled(grid)
    assert len(grid.axes[0].images) == 1 and grid.axes[0].images[0].get_array().shape == (4, 4)
    assert sum(len(ax.images) for ax in grid.axes) == 12
    conv = fn.plot.filters(np.zeros((5, 5, 3, 8)))
    assert conv.axes[0].images[0].get_array().shape == (5, 5, 3)
    with pytest.raises(ValueError, match="image_shape"):
        fn.plot.filters(np.zeros((10, 4)))


def test_lr_range_and_search_results(tmp_path):
    lrs = np.logspace(-5, 0, 40)
    losses = (np.log10(lrs) + 1.5) ** 2 + 1.0
    result = fn.tune.LRRangeResult(lrs, losses, losses, 3e-3, True, "min/10")
    fig = fn.plot.lr_range(result, path=tmp_path / "lr.png")
    assert_labelled(fig)
    assert fig.axes[0].get_xscale() == "log" and len(fig.axes[0].get_legend().get_texts()) == 3
    assert_png(tmp_path / "lr.png")

    space = {"learning_rate": fn.tune.log_uniform(1e-4, 1.0), "act": fn.tune.choice("a", "b")}
    objective = lambda c: abs(np.log10(c["learning_rate"]) + 2) + (c["act"] == "b")
    search = fn.tune.random_search(objective, space, key=jax.random.key(0), trials=12)
    fig = fn.plot.search_results(search, path=tmp_path / "search.png")
    assert_labelled(fig)
    assert fig.axes[0].get_xscale() == "log" and fig.axes[1].get_xscale() == "linear"
    assert_png(tmp_path / "search.png")
    rounds = fn.tune.coarse_to_fine(objective, space, key=jax.random.key(1), rounds=2, trials=8)
    fig = fn.plot.search_results(rounds)
    assert_labelled(fig)
    assert "round 2" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_import_funcnn_never_needs_matplotlib():
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import funcnn as fn\n"
            "fn.plot, fn.diagnostics, fn.tune, fn.ensemble\n"
            "try:\n    fn.plot.loss_curve([1.0])\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "funcnn[examples]" in out.stdout
