"""Mixed precision's effect: the same runs in float32 and with `compute_dtype=jnp.bfloat16`.

Trains (1) the flagship 784-64-16-10 sigmoid/tanh net (SGD 0.5, hand-written gradients) and
(2) workload A's 784-512-512-10 ReLU net (Adam 1e-3, jax.grad) on MNIST — the bundled 8×8
digits when MNIST is not found — from the same key in both precisions, and prints the test
accuracy and the training throughput of each. Parameters and optimizer state stay float32.

    FUNCNN_DATA_DIR=../shared/data/mnist python benchmarks/mixed_precision.py [--epochs-scale 1]
"""
import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

import funcnn as fn
from funcnn import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from mnist_mlp import build_model, load_data  # noqa: E402  (the flagship's model and data)

RUNS = {
    "flagship 784-64-16-10, SGD, hand-written": dict(
        model=build_model, optimizer=lambda: fn.optim.sgd(0.5), epochs=30, hand_written=True),
    "A 784-512-512-10 ReLU, Adam, jax.grad": dict(
        model=lambda: nn.serial(nn.Flatten(), nn.Dense(512), nn.Relu(), nn.Dense(512), nn.Relu(),
                                nn.Dense(10)),
        optimizer=lambda: fn.optim.adam(1e-3), epochs=5, hand_written=False),
}


def train(run, data, compute_dtype, epochs):
    (train_x, train_y), test = data
    model, loss = run["model"](), fn.losses.softmax_cross_entropy
    start = time.perf_counter()
    result = fn.train.fit(model, loss, run["optimizer"](), (train_x, train_y), epochs=epochs,
                          batch_size=128, key=jax.random.key(0), progress=False,
                          hand_written=run["hand_written"], compute_dtype=compute_dtype)
    seconds = time.perf_counter() - start
    accuracy = fn.train.evaluate(model, loss, result.params, result.state, test)["accuracy"]
    return accuracy, epochs * (len(train_x) // 128) * 128 / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs-scale", type=float, default=1.0)
    args = parser.parse_args()
    name, train_data, test_data = load_data()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; dataset: {name}")
    print(f"{'run':<44}{'precision':>10}{'test acc %':>12}{'samples/s':>12}")
    for title, run in RUNS.items():
        epochs = max(1, round(run["epochs"] * args.epochs_scale))
        for label, dtype in (("float32", None), ("bfloat16", jnp.bfloat16)):
            accuracy, rate = train(run, (train_data, test_data), dtype, epochs)
            print(f"{title:<44}{label:>10}{100 * accuracy:>12.2f}{rate:>12,.0f}", flush=True)


if __name__ == "__main__":
    main()
