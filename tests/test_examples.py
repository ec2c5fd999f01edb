"""The flagship example end to end: ≥ 97 % test accuracy on real MNIST, and on the bundled 8×8
digits when MNIST is not found (what a newcomer without the data sees first)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_mnist_mlp_reaches_97_percent(mnist_dir):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "mnist_mlp.py")],
                            env=dict(os.environ, FUNCNN_DATA_DIR=mnist_dir), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert "gradient check (PASSED)" in result.stdout
    accuracy = float(re.search(r"test accuracy: ([\d.]+)%", lines[-1]).group(1))
    assert "MNIST" in lines[-1] and accuracy >= 97.0, lines[-1]


@pytest.mark.slow   # ~30 s: a whole training run (CI runs it: pytest -m slow)
def test_mnist_mlp_without_mnist_says_where_it_looked_and_reaches_97_percent_on_digits(tmp_path):
    pytest.importorskip("sklearn", reason="the digits set comes with scikit-learn")
    nowhere = tmp_path / "no-mnist"
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "mnist_mlp.py")],
                            env=dict(os.environ, FUNCNN_DATA_DIR=str(nowhere),
                                     XDG_CACHE_HOME=str(tmp_path / "cache")),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    if "MNIST not found" not in result.stdout:
        pytest.skip("this machine downloaded MNIST: the fallback did not run")
    for folder in (nowhere, tmp_path / "cache" / "funcnn" / "mnist"):   # every place it looked
        assert str(folder) in result.stdout
    assert "gradient check (PASSED)" in result.stdout
    accuracy = float(re.search(r"test accuracy: ([\d.]+)%", lines[-1]).group(1))
    assert "8×8 digits" in lines[-1] and accuracy >= 97.0, lines[-1]


@pytest.mark.slow   # ~50 s: every babysitting run and plot (CI runs it: pytest -m slow)
def test_babysit_checklist_writes_every_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need the examples extra")
    pytest.importorskip("sklearn", reason="the digits set comes with scikit-learn")
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "babysit.py"), "--dataset",
                             "digits", "--epochs", "2", "--members", "3", "--trials", "8",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(tmp_path.glob("*.png"))) == 11


def _run_claim(script: str, mnist_dir: str) -> float:
    """Run an example on real MNIST; the test accuracy of its last line, in percent."""
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script)],
                            cwd=ROOT / "examples", env=dict(os.environ, FUNCNN_DATA_DIR=mnist_dir),
                            capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    return float(re.search(r"test accuracy: ([\d.]+)% on 10000 MNIST", last).group(1))


# The README's accuracy claims, run as they are stated (CI runs them alone: pytest -m claims -n 0).
@pytest.mark.claims   # ~5 min on 2 cores
def test_mnist_cnn_reaches_its_claimed_99_3_percent(mnist_dir):
    assert _run_claim("mnist_cnn.py", mnist_dir) >= 99.3


@pytest.mark.claims   # ~16 min on 2 cores
def test_mnist_best_reaches_its_claimed_99_5_percent(mnist_dir):
    assert _run_claim("mnist_best.py", mnist_dir) >= 99.5
