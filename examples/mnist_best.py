"""The strongest MNIST model funcnn trains here: the CNN of mnist_cnn.py, longer, on an expanded
training set (random shifts, and for digits rotations, drawn afresh every epoch), batch norm, dropout,
Adam with warm-up and cosine decay, evaluated with Polyak-averaged (EMA) parameters.

    FUNCNN_DATA_DIR=../shared/data/mnist python examples/mnist_best.py            # ≥ 99.5 %
    FUNCNN_DATA_DIR=../shared/data/mnist python examples/mnist_best.py --dataset fashion

Fashion-MNIST is looked for beside the MNIST folder (e.g. ../shared/data/fashion-mnist). The
last line states the test accuracy; val_* in the per-epoch lines is the test set, for display
only (nothing is selected on it).
"""
import argparse
import time

import jax

import funcnn as fn
from funcnn.data import augment
from mnist_cnn import build_model


def expand(max_shift, max_degrees):
    """The notes' expanded training set: a random rotation, then a random shift, per image."""

    def transform(key, x):
        rotate_key, shift_key = jax.random.split(key)
        x = augment.random_rotation(rotate_key, x, max_degrees) if max_degrees else x
        return augment.random_shift(shift_key, x, max_shift) if max_shift else x

    return transform


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["mnist", "fashion"], default="mnist")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay of the parameters")
    parser.add_argument("--max-shift", type=int, default=2)
    parser.add_argument("--max-degrees", type=float, default=None,
                        help="random rotations up to this angle (default: 10 for MNIST, 0 for "
                             "Fashion-MNIST, whose garments are always upright)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-size", type=int, default=None,
                        help="use only the first N training images (quick runs)")
    args = parser.parse_args(argv)

    if args.max_degrees is None:
        args.max_degrees = 10.0 if args.dataset == "mnist" else 0.0
    load = fn.data.mnist if args.dataset == "mnist" else fn.data.fashion_mnist
    name = "MNIST" if args.dataset == "mnist" else "Fashion-MNIST"
    (train_x, train_y), (test_x, test_y) = load("train"), load("test")
    train_x, train_y = train_x[:args.train_size], train_y[:args.train_size]
    print(f"{name}: {len(train_x)} training and {len(test_x)} test images")
    model, loss = build_model(), fn.losses.softmax_cross_entropy

    steps = args.epochs * (len(train_x) // args.batch_size)
    warm = len(train_x) // args.batch_size // 2
    schedule = fn.optim.schedules.warmup(
        fn.optim.schedules.cosine(args.learning_rate, steps - warm), warm)
    optimizer = fn.optim.chain(fn.optim.adam(schedule), fn.optim.ema(args.ema))
    start = time.perf_counter()
    result = fn.train.fit(model, loss, optimizer, (train_x, train_y), epochs=args.epochs,
                          batch_size=args.batch_size, key=jax.random.key(args.seed),
                          hand_written=True, augment=expand(args.max_shift, args.max_degrees),
                          validation=(test_x, test_y))
    last = fn.train.evaluate(model, loss, result.params, result.state, (test_x, test_y))
    averaged = fn.optim.averaged_params(result.opt_state)
    final = fn.train.evaluate(model, loss, averaged, result.state, (test_x, test_y))
    print(f"last parameters: {100 * last['accuracy']:.2f}%; EMA-averaged parameters: "
          f"{100 * final['accuracy']:.2f}%")
    print(f"test accuracy: {100 * final['accuracy']:.2f}% on {len(test_x)} {name} test images "
          f"after {args.epochs} epochs ({time.perf_counter() - start:.0f} s of training)")


if __name__ == "__main__":
    main()
