"""The notes' three-layer network on MNIST: 784-64-16-10, sigmoid → tanh → softmax, plain SGD.

First the library proves its hand-written gradients (float64: hand-written vs jax.grad vs
centered finite differences), then `fn.train.fit` trains on those hand-written gradients with
mini-batch SGD, each epoch one compiled loop. The last 10 000 training images are held out
for validation, as the notes do: the learning rate halves whenever five epochs bring no gain in
validation accuracy (`fn.train.ReduceLROnPlateau`), and the test split is touched once, at the
end. The last line states the test accuracy.

    FUNCNN_DATA_DIR=../shared/data/mnist python examples/mnist_mlp.py

Without the MNIST files it says where it looked and trains on scikit-learn's bundled 8×8 digits
instead (1437 training images, a random sixth of them held out): 64 inputs are too few for the
784-64-16-10 design, so there it trains the notes' small convnet (3×3 convolutions, ReLU, 2×2
max-pooling, a ReLU layer of 128) with momentum, 98–99 % on the 360 test images.
"""
import argparse
import sys
import time
from typing import NamedTuple

import jax
import numpy as np

import funcnn as fn
from funcnn import nn


class Setup(NamedTuple):
    """A dataset and what trains well on it."""
    name: str
    train: tuple
    test: tuple
    held_out: int
    model: nn.Layer
    optimizer: fn.optim.GradientTransformation
    epochs: int
    batch_size: int
    patience: int


def mnist_setup(args) -> Setup:
    """The notes' 784-64-16-10 net: sigmoid → tanh → softmax, plain SGD."""
    model = nn.serial(nn.Flatten(), nn.Dense(64), nn.Sigmoid(), nn.Dense(16), nn.Tanh(),
                      nn.Dense(10))
    return Setup("MNIST", fn.data.mnist("train"), fn.data.mnist("test"), 10_000, model,
                 fn.optim.sgd(args.learning_rate or 0.5), args.epochs or 30,
                 args.batch_size or 128, 5)


def digits_setup(args) -> Setup:
    """A small convnet for the 8×8 digits: conv 3×3 (32) → ReLU → 2×2 max-pool → 128 → 10."""
    model = nn.serial(nn.Conv2D(32, (3, 3), padding="SAME"), nn.Relu(), nn.MaxPool((2, 2)),
                      nn.Flatten(), nn.Dense(128), nn.Relu(), nn.Dense(10))
    train = fn.data.digits("train")
    return Setup("8×8 digits", train, fn.data.digits("test"), len(train[0]) // 6, model,
                 fn.optim.sgd(args.learning_rate or 0.05, momentum=0.9), args.epochs or 80,
                 args.batch_size or 32, 10)


def load_setup(args) -> Setup:
    """MNIST when its files are found, else the bundled 8×8 digits, saying where it looked."""
    try:
        return mnist_setup(args)
    except FileNotFoundError as error:
        print(f"MNIST not found. {error}")
        print("Falling back to the UCI 8×8 digits bundled with scikit-learn (1437 train / 360 "
              "test) and a small convnet. To train the notes' net on MNIST, point "
              "FUNCNN_DATA_DIR at a folder holding the four IDX files, e.g. "
              "FUNCNN_DATA_DIR=../shared/data/mnist.")
        return digits_setup(args)


def hold_out(train, count: int, seed: int):
    """(train, validation): `count` examples drawn at random (numpy, `seed`) held out."""
    order = np.random.default_rng(seed).permutation(len(train[0]))
    keep, held = order[:-count], order[-count:]
    return tuple(a[keep] for a in train), tuple(a[held] for a in train)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="default: 30 on MNIST, 80 on the digits")
    parser.add_argument("--batch-size", type=int, help="default: 128 on MNIST, 32 on the digits")
    parser.add_argument("--learning-rate", type=float,
                        help="default: 0.5 on MNIST, 0.05 (momentum 0.9) on the digits")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    setup = load_setup(args)
    name, model, loss = setup.name, setup.model, fn.losses.softmax_cross_entropy
    (test_x, test_y) = setup.test
    if name == "MNIST":   # the conventional split: the last 10 000 training images
        (train_x, val_x), (train_y, val_y) = ((a[:-setup.held_out], a[-setup.held_out:])
                                              for a in setup.train)
    else:
        (train_x, train_y), (val_x, val_y) = hold_out(setup.train, setup.held_out, args.seed)
    print(f"dataset: {name}: {len(train_x)} training, {len(val_x)} validation and {len(test_x)} "
          f"test images of shape {train_x.shape[1:]}")
    init_key, check_key, train_key = jax.random.split(jax.random.key(args.seed), 3)
    params, state = model.init(init_key, train_x.shape[1:])

    sample = jax.random.choice(check_key, len(train_x), (16,), replace=False)
    report = fn.gradcheck.check(model, loss, params, state, train_x[sample], train_y[sample])
    print(report)
    if not report.passed:
        sys.exit("the hand-written gradients disagree with jax.grad / finite differences")

    start = time.perf_counter()
    result = fn.train.fit(model, loss, setup.optimizer, (train_x, train_y),
                          epochs=setup.epochs, batch_size=setup.batch_size, key=train_key,
                          params=params, state=state, hand_written=True,
                          validation=(val_x, val_y), callbacks=[fn.train.ReduceLROnPlateau(
                              "val_accuracy", factor=0.5, patience=setup.patience)])
    final = fn.train.evaluate(model, loss, result.params, result.state, (test_x, test_y))
    print(f"test accuracy: {100 * final['accuracy']:.2f}% on {len(test_x)} {name} test images "
          f"after {setup.epochs} epochs ({time.perf_counter() - start:.1f} s of training; final "
          f"learning rate {result.history['learning_rate'][-1]:g})")


if __name__ == "__main__":
    main()
