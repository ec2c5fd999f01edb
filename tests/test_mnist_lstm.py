"""examples/mnist_lstm.py in seconds: one epoch on a small slice of MNIST runs end to end with
the validation split held out and prints the test accuracy last; without MNIST it says so and
exits non-zero. (The full run's ≥ 98.5 % is the example's own claim, too slow for the suite.)"""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mnist_lstm.py"


def test_one_epoch_on_a_slice_prints_the_test_accuracy_last(mnist_dir):
    result = subprocess.run([sys.executable, str(EXAMPLE), "--limit", "1200", "--epochs", "1",
                             "--hidden", "32", "--batch-size", "50", "--learning-rate", "1e-2",
                             "--no-check"],
                            env=dict(os.environ, FUNCNN_DATA_DIR=mnist_dir), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert "1000 training, 200 validation images" in lines[0]   # the last 1/6 held out
    assert any(line.startswith("epoch 1/1") and "val_accuracy" in line for line in lines)
    match = re.fullmatch(r"test accuracy: ([\d.]+)% on 1200 MNIST test images after 1 epochs "
                         r"\(\d+ s of training\)", lines[-1])
    assert match, lines[-1]
    assert float(match.group(1)) > 20.0   # chance is 10 %; 20 steps reach ~28 % (seed 0)


def test_without_mnist_it_says_so_and_exits_non_zero(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("mnist_lstm", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    def absent(split):
        raise FileNotFoundError(f"no MNIST {split} files in /nowhere")

    monkeypatch.setattr(example.fn.data, "mnist", absent)
    with pytest.raises(SystemExit) as exit_:
        example.main(["--epochs", "1"])
    assert "MNIST not found" in str(exit_.value.code)
    assert "/nowhere" in str(exit_.value.code)   # where it looked
