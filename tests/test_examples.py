"""The flagship example, end to end on real MNIST: the issue's bar is ≥ 97 % test accuracy."""
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


def test_babysit_checklist_writes_every_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need the examples extra")
    pytest.importorskip("sklearn", reason="the digits set comes with scikit-learn")
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "babysit.py"), "--dataset",
                             "digits", "--epochs", "2", "--members", "3", "--trials", "8",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(tmp_path.glob("*.png"))) == 11
