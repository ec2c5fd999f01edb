"""The README's quick start runs as written (on real MNIST)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_quick_start_runs(mnist_dir, monkeypatch, capsys):
    monkeypatch.setenv("FUNCNN_DATA_DIR", mnist_dir)
    quick_start = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    namespace = {}
    exec(compile(quick_start, str(README), "exec"), namespace)
    assert "gradient check (PASSED)" in capsys.readouterr().out
    assert namespace["result"].history["val_accuracy"][-1] > 0.9
