"""The strongest MNIST model funcnn trains here: an ensemble of the CNN of mnist_cnn.py, each
member trained on an expanded training set (random shifts, and for digits rotations, drawn afresh
every epoch) with batch norm, dropout, Adam with warm-up and cosine decay, and Polyak-averaged
(EMA) parameters; the ensemble predicts the mean of its members' probabilities,
p̄(x) = (1/K) Σ_k softmax(f_k(x)) (the notes' "ensemble of networks").

    FUNCNN_DATA_DIR=../shared/data/mnist python examples/mnist_best.py               # 99.61 %
    FUNCNN_DATA_DIR=../shared/data/mnist python examples/mnist_best.py --validation  # selection
    FUNCNN_DATA_DIR=../shared/data/mnist python examples/mnist_best.py --dataset fashion

`--validation` is for choosing settings: it trains on the first 50 000 training images and
scores every member and the ensemble on the last 10 000, never reading the test set. The
defaults were chosen there, at equal epochs per member: rotations up to 10° with shifts up to 2
pixels gave members of 99.50, 99.45, 99.58 % (ensemble of 3: 99.59 %), shifts alone 99.38, 99.27,
99.47, 99.39 % (ensemble of 4: 99.43 %), 11 epochs each; three members of 11 epochs fit in 20
minutes of training here. The default run trains on all 60 000 and reads the test set once, at
the end (its last line): 99.61 % (members 99.58, 99.53, 99.54 %) in 894 s of training on 2 CPU
cores.
Fashion-MNIST is looked for beside the MNIST folder (e.g. ../shared/data/fashion-mnist).
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


def make_optimizer(train_size, args):
    """Adam with half an epoch of linear warm-up, then cosine decay to 0; EMA of the weights."""
    steps = args.epochs * (train_size // args.batch_size)
    warm = train_size // args.batch_size // 2
    schedule = fn.optim.schedules.warmup(
        fn.optim.schedules.cosine(args.learning_rate, steps - warm), warm)
    return fn.optim.chain(fn.optim.adam(schedule), fn.optim.ema(args.ema))


def train_member(model, loss, optimizer, transform, train, key, args):
    """One member: (EMA-averaged parameters, state) after `args.epochs` epochs."""
    result = fn.train.fit(model, loss, optimizer, train, epochs=args.epochs,
                          batch_size=args.batch_size, key=key, hand_written=True,
                          augment=transform, progress=False)
    return fn.optim.averaged_params(result.opt_state), result.state


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["mnist", "fashion"], default="mnist")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=11, help="epochs per member")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay of the parameters")
    parser.add_argument("--max-shift", type=int, default=2)
    parser.add_argument("--max-degrees", type=float, default=None,
                        help="random rotations up to this angle (default: 10 for MNIST, 0 for "
                             "Fashion-MNIST, whose garments are always upright)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validation", action="store_true",
                        help="train on the first 50 000 images, score on the last 10 000")
    parser.add_argument("--train-size", type=int, default=None,
                        help="use only the first N training images (quick runs)")
    args = parser.parse_args(argv)

    if args.max_degrees is None:
        args.max_degrees = 10.0 if args.dataset == "mnist" else 0.0
    load = fn.data.mnist if args.dataset == "mnist" else fn.data.fashion_mnist
    name = "MNIST" if args.dataset == "mnist" else "Fashion-MNIST"
    train_x, train_y = load("train")
    if args.validation:
        (train_x, train_y), held_out = (train_x[:50_000], train_y[:50_000]), \
            (train_x[50_000:], train_y[50_000:])
    train_x, train_y = train_x[:args.train_size], train_y[:args.train_size]
    print(f"{name}: {args.members} members × {args.epochs} epochs on {len(train_x)} training "
          f"images")
    model, loss = build_model(), fn.losses.softmax_cross_entropy

    # one optimizer and one augmentation for every member: they share one compiled program
    optimizer, transform = make_optimizer(len(train_x), args), expand(args.max_shift,
                                                                      args.max_degrees)
    start, members = time.perf_counter(), []
    for i in range(args.members):
        members.append(train_member(model, loss, optimizer, transform, (train_x, train_y),
                                    jax.random.fold_in(jax.random.key(args.seed), i), args))
        print(f"member {i + 1}/{args.members} trained ({time.perf_counter() - start:.0f} s)",
              flush=True)
    seconds = time.perf_counter() - start
    params, state = (fn.ensemble.stack(trees) for trees in zip(*members))

    if args.validation:
        scores = fn.ensemble.evaluate(model, loss, params, state, held_out)
        members_text = ", ".join(f"{100 * a:.2f}%" for a in scores["member_accuracy"])
        print(f"validation accuracy ({len(held_out[0])} held-out training images): members "
              f"{members_text}; ensemble {100 * scores['ensemble_accuracy']:.2f}% "
              f"({seconds:.0f} s of training)")
        return
    scores = fn.ensemble.evaluate(model, loss, params, state, load("test"))
    members_text = ", ".join(f"{100 * a:.2f}%" for a in scores["member_accuracy"])
    print(f"members' test accuracy: {members_text}")
    print(f"test accuracy: {100 * scores['ensemble_accuracy']:.2f}% on 10000 {name} test images "
          f"(ensemble of {args.members}, {args.epochs} epochs each, {seconds:.0f} s of training)")


if __name__ == "__main__":
    main()
