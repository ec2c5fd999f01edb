"""examples/notes/: the mathematics behind the notes' experiments, checked against closed forms
(fast), and each script's `--quick` run on a small MNIST slice writing its figure (slow: each
compiles several training programs)."""
import functools
import importlib.util
import math
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn

NOTES = Path(__file__).resolve().parent.parent / "examples" / "notes"
SCRIPTS = ("lr_study", "lr_range", "optimizers", "regularization", "cross_entropy_vs_quadratic",
           "initialization")


@functools.cache
def script(name: str):
    """examples/notes/<name>.py as a module (its `import _common` finds examples/notes)."""
    if str(NOTES) not in sys.path:
        sys.path.insert(0, str(NOTES))
    spec = importlib.util.spec_from_file_location(f"notes_{name}", NOTES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sigma(z):
    return 1 / (1 + math.exp(-z))


# The one-neuron demo: x = 1, y = 0, w = b = 2, so z = 4 and a = σ(4).

def test_one_neuron_gradients_are_the_closed_forms():
    """Quadratic: ∂C/∂w = (a − y)σ'(z)x, ∂C/∂b = (a − y)σ'(z); cross-entropy: (a − y)x and
    (a − y) — the σ'(z) ≈ 0.018 factor is the whole slowdown."""
    ce = script("cross_entropy_vs_quadratic")
    a = sigma(4.0)
    expected = {"quadratic": a * a * (1 - a), "cross-entropy": a}   # (a − 0)·σ'(4)·1, (a − 0)·1
    for name, cost in ce.COSTS.items():
        params, grads = ce.neuron_gradients(cost)
        assert float(params[0]["w"][0, 0]) == 2.0 and float(params[0]["b"][0]) == 2.0
        np.testing.assert_allclose(float(grads[0]["w"][0, 0]), expected[name], rtol=1e-5)
        np.testing.assert_allclose(float(grads[0]["b"][0]), expected[name], rtol=1e-5)
    assert expected["quadratic"] < expected["cross-entropy"] / 50


def test_one_neuron_cost_curve_starts_as_the_closed_form():
    """Epoch 0 costs ½a² and −ln(1 − a); one step of η moves w and b by −η·gradient, and the
    quadratic cost then barely falls while cross-entropy's falls by a lot."""
    ce = script("cross_entropy_vs_quadratic")
    a = sigma(4.0)
    grad = {"quadratic": a * a * (1 - a), "cross-entropy": a}
    cost = {"quadratic": lambda a: a * a / 2, "cross-entropy": lambda a: -math.log(1 - a)}
    for name in ce.COSTS:
        curve = ce.neuron_costs(ce.COSTS[name], epochs=2)
        chex.assert_shape(curve, (3,))
        after = sigma(2 * (2 - ce.ETA * grad[name]))   # w = b, x = 1: z = w + b
        np.testing.assert_allclose(curve[:2], [cost[name](a), cost[name](after)], rtol=1e-5)
    quadratic, cross = (ce.neuron_costs(ce.COSTS[n], epochs=50) for n in ce.COSTS)
    assert quadratic[50] > 0.95 * quadratic[0]   # the plateau
    assert cross[50] < 0.05 * cross[0]


# The saddle f(x, y) = x² − y².

def test_saddle_gradient_and_sgd_trajectory_are_the_closed_forms():
    """∇f = (2x, −2y); plain SGD multiplies x by (1 − 2α) and y by (1 + 2α) each step."""
    opt = script("optimizers")
    for x, y in [(1.0, 1e-3), (-0.3, 2.0), (0.0, 0.0)]:
        grads = jax.grad(opt.saddle)({"w": jnp.array([x, y])})
        chex.assert_trees_all_close(grads["w"], jnp.array([2 * x, -2 * y]))
    alpha, steps = 0.05, 30
    points, values = opt.trajectory(fn.optim.sgd(alpha), steps=steps)
    t = np.arange(steps + 1)
    expected = np.stack([opt.START[0] * (1 - 2 * alpha) ** t,
                         opt.START[1] * (1 + 2 * alpha) ** t], axis=1)
    np.testing.assert_allclose(points, expected, rtol=1e-4)
    np.testing.assert_allclose(values, expected[:, 0] ** 2 - expected[:, 1] ** 2, rtol=1e-3,
                               atol=1e-7)


def test_adam_leaves_the_saddle_at_its_learning_rate_per_step():
    """Adam's first step is −α·g/(|g| + ε) ≈ −α·sign(g) per coordinate: y moves by α however
    small its gradient (−2y = −0.002), where SGD's first step moves y by 2αy = 10⁻⁴."""
    opt = script("optimizers")
    points, _ = opt.trajectory(fn.optim.adam(0.05), steps=1)
    np.testing.assert_allclose(points[1], [1.0 - 0.05, 1e-3 + 0.05], rtol=1e-5)
    sgd_points, _ = opt.trajectory(fn.optim.sgd(0.05), steps=1)
    np.testing.assert_allclose(sgd_points[1, 1] - 1e-3, 2 * 0.05 * 1e-3, rtol=1e-4)


# The initialisation script's saturation count.

def test_saturated_fraction_reads_the_whole_nets_hidden_layer():
    """The three-layer net of `saturated_fraction` gets the same parameters as the first three
    layers of `mlp` from the same key, and the fraction counts σ(xW + b) outside [0.02, 0.98]."""
    init = script("initialization")
    c = sys.modules["_common"]
    x = jax.random.uniform(jax.random.key(1), (64, 28, 28, 1))
    key = jax.random.key(2)
    fraction = {}
    for name, w_init in init.INITS.items():
        params, _ = c.mlp(30, w_init=w_init, b_init=fn.init.normal(1.0)).init(key, (28, 28, 1))
        a = jax.nn.sigmoid(x.reshape(64, -1) @ params[1]["w"] + params[1]["b"][None])
        fraction[name] = init.saturated_fraction(w_init, x, key)
        assert fraction[name] == pytest.approx(float(jnp.mean((a < 0.02) | (a > 0.98))))
    # 784 pixels of U(0, 1): z has std ≈ √(784/3) ≈ 16 with N(0, 1) weights, ≈ 1.2 with N(0, 1/n)
    assert fraction["N(0, 1)"] > 0.7 and fraction["N(0, 1/n_in)"] < 0.1


# The shared module.

def test_figure_is_skipped_with_a_note_without_matplotlib(monkeypatch, tmp_path, capsys):
    script("lr_study")
    c = sys.modules["_common"]
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)   # import raises ImportError
    c.plot_curves({"a": [0.1, 0.2]}, tmp_path / "f.png", title="t")
    assert "matplotlib not found" in capsys.readouterr().out
    assert not (tmp_path / "f.png").exists()


def test_default_figures_go_to_a_git_ignored_folder():
    script("lr_study")
    c = sys.modules["_common"]
    relative = c.default_out("lr_study").relative_to(c.ROOT)
    assert relative.parts[0] == "out"
    assert "/out/" in (c.ROOT / ".gitignore").read_text().split()


def test_table_aligns_columns():
    script("lr_study")
    c = sys.modules["_common"]
    assert c.table(["a", "bb"], [["1", "22222"]]).splitlines() == [
        "a     bb", "-  -----", "1  22222"]


# Each script end to end on the quick slice (MNIST needed).

@pytest.mark.slow   # 15–80 s each: every script compiles several training programs
@pytest.mark.parametrize("name", SCRIPTS)
def test_quick_run_prints_its_table_and_writes_its_figure(name, mnist_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the figure needs matplotlib")
    out = tmp_path / f"{name}.png"
    result = script(name).main(["--quick", "--epochs", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert out.stat().st_size > 10_000 and f"wrote {out}" in printed
    curves = result.get("curves", {})
    for values in curves.values():   # lr_range's 10× run may diverge: NaN, fewer epochs
        assert name == "lr_range" or len(values) == 2
        assert all(0 <= v <= 1 for v in values if not math.isnan(v))
    if name == "lr_study":
        assert ("finding reproduced" in printed) != ("finding not reproduced" in printed)
        assert result["reproduced"] == ("finding reproduced" in printed)
    if name == "regularization":
        assert len(result["train"]) == len(result["lambdas"])
