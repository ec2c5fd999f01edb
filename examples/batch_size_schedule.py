"""Don't decay the learning rate, increase the batch size (Smith, Kindermans, Ying & Le 2018) —
and the linear scaling rule (Goyal et al. 2017) — on MNIST.

SGD's noise scale is g ≈ ε·N/B (rate ε, N examples, batch B). Dividing ε by 5 at a milestone
and multiplying B by 5 there lower g alike, so they should reach the same accuracy — the second
with far fewer parameter updates. Runs, all with SGD (momentum 0.9) on a 784-100-10 ReLU MLP,
trained on the first 50 000 training images and judged on the last 10 000:

    decay lr      batch 128 throughout, ε ×0.2 at the two milestones
    grow batch    ε constant, B ×5 at the milestones (`fn.optim.batch_size_for_decay`)
    capped        the same, B capped at 1024: the rest of the last decay goes to ε
    batch 32      ε₀ at batch 32 …
    batch 256     … and 8·ε₀ at batch 256 (`fn.optim.scale_learning_rate`, linear rule)

Prints one row per run: the batch sizes, the final validation accuracy, the number of parameter
updates, the test accuracy (each final model tested once) and the wall time (compilation
included).

    FUNCNN_DATA_DIR=../shared/data/mnist python examples/batch_size_schedule.py
"""
import argparse
import time

import jax

import funcnn as fn
from funcnn import nn


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--milestones", type=int, nargs="+", default=[6, 11],
                        help="first epochs of each decayed value")
    parser.add_argument("--factor", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--max-batch-size", type=int, default=1024)
    parser.add_argument("--scaling-epochs", type=int, default=8)
    parser.add_argument("--scaling-learning-rate", type=float, default=0.01,
                        help="the rate at batch 32 (batch 256 gets 8×)")
    args = parser.parse_args(argv)

    x, y = fn.data.mnist("train")
    train, validation = (x[:50_000], y[:50_000]), (x[50_000:], y[50_000:])
    test = fn.data.mnist("test")
    model = nn.serial(nn.Flatten(), nn.Dense(100), nn.Relu(), nn.Dense(10))
    loss = fn.losses.softmax_cross_entropy
    milestones = {m: args.factor for m in args.milestones}

    def run(name, plan_or_size, learning_rate, epochs):
        """Train one configuration; its table row."""
        if isinstance(plan_or_size, int):
            batch_size, rate = plan_or_size, learning_rate
        else:   # a BatchDecay: its batch sizes, and its rate schedule (in updates)
            batch_size = plan_or_size.batch_size
            rate = plan_or_size.learning_rate(learning_rate, len(train[0]))
        begin = time.perf_counter()
        result = fn.train.fit(model, loss, fn.optim.sgd(rate, momentum=0.9), train,
                              epochs=epochs, batch_size=batch_size, key=jax.random.key(0),
                              validation=validation, progress=False)
        seconds = time.perf_counter() - begin
        tested = fn.train.evaluate(model, loss, result.params, result.state, test)
        sizes = "→".join(str(b) for i, b in enumerate(result.history["batch_size"])
                         if i == 0 or b != result.history["batch_size"][i - 1])
        rates = result.history["learning_rate"]
        row = (f"{name:<11} {sizes:<15} {rates[0]:.3g}→{rates[-1]:.3g}".ljust(40) +
               f"{100 * result.history['val_accuracy'][-1]:8.2f}%"
               f"{int(result.opt_state.count):9d} {100 * tested['accuracy']:8.2f}%"
               f"{seconds:8.1f} s")
        print(row, flush=True)
        return row

    print(f"{'run':<11} {'batch size':<15} {'rate':<12} {'val acc':>9}{'updates':>9}"
          f"{'test acc':>10}{'wall':>10}")
    b, lr = args.batch_size, args.learning_rate
    run("decay lr", fn.optim.batch_size_for_decay(b, milestones, max_batch_size=b), lr,
        args.epochs)
    run("grow batch", fn.optim.batch_size_for_decay(b, milestones), lr, args.epochs)
    run("capped", fn.optim.batch_size_for_decay(b, milestones, max_batch_size=args.max_batch_size),
        lr, args.epochs)
    small = args.scaling_learning_rate
    run("batch 32", 32, small, args.scaling_epochs)
    run("batch 256", 256, fn.optim.scale_learning_rate(small, 256, 32), args.scaling_epochs)


if __name__ == "__main__":
    main()
