"""The notes' three-layer network on MNIST: 784-64-16-10, sigmoid → tanh → softmax, plain SGD.

First the library proves its hand-written gradients (float64: hand-written vs jax.grad vs
centered finite differences), then `fn.train.fit` trains on those hand-written gradients with
mini-batch SGD, each epoch one compiled loop. The last 10 000 training images (a sixth of the
8×8 digits) are held out for validation, as the notes do: the learning rate halves whenever
five epochs bring no gain in validation accuracy (`fn.train.ReduceLROnPlateau`), and the test
split is touched once, at the end. The last line states the test accuracy.

    FUNCNN_DATA_DIR=../shared/data/mnist python examples/mnist_mlp.py

Without the MNIST files it trains on scikit-learn's bundled 8×8 digits instead and says so.
"""
import argparse
import sys
import time

import jax

import funcnn as fn
from funcnn import nn


def load_data():
    """(name, train, test): MNIST when its files are found, else the bundled 8×8 digits."""
    try:
        return "MNIST", fn.data.mnist("train"), fn.data.mnist("test")
    except FileNotFoundError as error:
        print(f"MNIST not found ({str(error).splitlines()[0]})")
        print("Falling back to the UCI 8×8 digits bundled with scikit-learn (1437 train / 360 "
              "test). To train on MNIST, point FUNCNN_DATA_DIR at a folder holding the four IDX "
              "files, e.g. FUNCNN_DATA_DIR=../shared/data/mnist, or let funcnn download them.")
        return "8×8 digits", fn.data.digits("train"), fn.data.digits("test")


def build_model():
    return nn.serial(nn.Flatten(), nn.Dense(64), nn.Sigmoid(), nn.Dense(16), nn.Tanh(),
                     nn.Dense(10))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    name, (train_x, train_y), (test_x, test_y) = load_data()
    held_out = 10_000 if len(train_x) > 50_000 else len(train_x) // 6
    (train_x, val_x), (train_y, val_y) = ((a[:-held_out], a[-held_out:]) for a in (train_x, train_y))
    print(f"dataset: {name}: {len(train_x)} training, {len(val_x)} validation and {len(test_x)} "
          f"test images of shape {train_x.shape[1:]}")
    model, loss = build_model(), fn.losses.softmax_cross_entropy
    init_key, check_key, train_key = jax.random.split(jax.random.key(args.seed), 3)
    params, state = model.init(init_key, train_x.shape[1:])

    sample = jax.random.choice(check_key, len(train_x), (16,), replace=False)
    report = fn.gradcheck.check(model, loss, params, state, train_x[sample], train_y[sample])
    print(report)
    if not report.passed:
        sys.exit("the hand-written gradients disagree with jax.grad / finite differences")

    start = time.perf_counter()
    result = fn.train.fit(model, loss, fn.optim.sgd(args.learning_rate), (train_x, train_y),
                          epochs=args.epochs, batch_size=args.batch_size, key=train_key,
                          params=params, state=state, hand_written=True,
                          validation=(val_x, val_y), callbacks=[fn.train.ReduceLROnPlateau(
                              "val_accuracy", factor=0.5, patience=5)])
    final = fn.train.evaluate(model, loss, result.params, result.state, (test_x, test_y))
    print(f"test accuracy: {100 * final['accuracy']:.2f}% on {len(test_x)} {name} test images "
          f"after {args.epochs} epochs ({time.perf_counter() - start:.1f} s of training; final "
          f"learning rate {result.history['learning_rate'][-1]:g})")


if __name__ == "__main__":
    main()
