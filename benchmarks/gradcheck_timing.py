"""Wall time of `fn.gradcheck.check` on the two example models, as the examples call it, against
the committed version of the checker.

The notes' 784-64-16-10 net (examples/mnist_mlp.py: 16 MNIST images, default options) and the
example CNN (examples/mnist_cnn.py: 4 images, samples=4), at their initial parameters (random
images of MNIST's shape when the MNIST files are absent). Every call starts cold
(`fn.train.clear_caches()` first: compilation included, as a user's first check), and the two
versions alternate, so that a machine shared with other work slows both alike; the median of
`--repeats` is printed for each, with their ratio.

    .venv/bin/python benchmarks/gradcheck_timing.py [--repeats 5] [--before PATH | --rev REV]

`--before` is another copy of gradcheck.py; by default the single-point checker as it was
before issue 24 (`git show 08008c5:funcnn/gradcheck.py`; `--rev` names another revision).
"""
import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import funcnn as fn  # noqa: E402
from examples import mnist_cnn  # noqa: E402
from funcnn import nn  # noqa: E402


def load(path):
    spec = importlib.util.spec_from_file_location("gradcheck_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def committed_copy(rev: str) -> str:
    source = subprocess.run(["git", "show", f"{rev}:funcnn/gradcheck.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as file:
        file.write(source)
    return file.name


def images():
    """MNIST's training images, or, without the files, 64 random images of MNIST's shape (the
    time of a check does not depend on the pixel values)."""
    try:
        return fn.data.mnist("train")
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        return (rng.uniform(0, 1, (64, 28, 28, 1)).astype(np.float32),
                rng.integers(0, 10, 64).astype(np.int32))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", default=None)
    parser.add_argument("--rev", default="08008c5")
    args = parser.parse_args(argv)
    versions = {"before": load(args.before or committed_copy(args.rev)), "after": fn.gradcheck}
    x, y = images()
    loss = fn.losses.softmax_cross_entropy
    mlp = nn.serial(nn.Flatten(), nn.Dense(64), nn.Sigmoid(), nn.Dense(16), nn.Tanh(),
                    nn.Dense(10))   # examples/mnist_mlp.py's MNIST model
    mlp_params, mlp_state = mlp.init(jax.random.key(0), x.shape[1:])
    sample = jax.random.choice(jax.random.key(1), len(x), (16,), replace=False)
    cnn = mnist_cnn.build_model()
    cnn_params, cnn_state = cnn.init(jax.random.key(0), x.shape[1:])
    cases = {"784-64-16-10 MLP": lambda g: g.check(mlp, loss, mlp_params, mlp_state, x[sample],
                                                   y[sample]),
             "example CNN": lambda g: g.check(cnn, loss, cnn_params, cnn_state, x[:4], y[:4],
                                              samples=4)}
    for name, run in cases.items():
        times = {version: [] for version in versions}
        for _ in range(args.repeats):
            for version, module in versions.items():
                fn.train.clear_caches()
                start = time.perf_counter()
                report = run(module)
                times[version].append(time.perf_counter() - start)
                assert report.passed, str(report)
        medians = {v: statistics.median(t) for v, t in times.items()}
        for version, t in times.items():
            print(f"{name:<18} {version:<7} median {medians[version]:6.2f} s of {args.repeats} "
                  f"({', '.join(f'{s:.2f}' for s in t)})")
        print(f"{name:<18} after/before {medians['after'] / medians['before']:.2f}")


if __name__ == "__main__":
    main()
