"""The notes' learning-rate rule on MNIST: halve η whenever ten epochs bring no gain in
validation accuracy, and stop once η has fallen to η₀/128.

The notes' 784-64-16-10 network (sigmoid → tanh → softmax), plain SGD, trained on the first
50 000 training images and judged on the last 10 000 (the test split is used once, at the end).
`fn.train.ReduceLROnPlateau` changes the rate held in the optimizer state, so halving it never
recompiles the epoch. Prints one line per epoch (rate, validation accuracy), the epochs at which
the rate halved, and the test accuracy; `--csv` also writes the per-epoch log.

    FUNCNN_DATA_DIR=../shared/data/mnist python examples/lr_plateau.py [--csv run.csv]
"""
import argparse

import jax

import funcnn as fn
from funcnn import nn


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=0.5)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--csv", default=None)
    args = parser.parse_args(argv)

    x, y = fn.data.mnist("train")
    train, validation = (x[:50_000], y[:50_000]), (x[50_000:], y[50_000:])
    model = nn.serial(nn.Flatten(), nn.Dense(64), nn.Sigmoid(), nn.Dense(16), nn.Tanh(),
                      nn.Dense(10))
    loss = fn.losses.softmax_cross_entropy
    halve = fn.train.ReduceLROnPlateau("val_accuracy", factor=0.5, patience=args.patience,
                                       min_lr=args.learning_rate / 128, stop_at_min_lr=True)
    callbacks = [halve] + ([fn.train.CSVLogger(args.csv)] if args.csv else [])
    result = fn.train.fit(model, loss, fn.optim.sgd(args.learning_rate), train,
                          epochs=args.epochs, batch_size=args.batch_size, key=jax.random.key(0),
                          validation=validation, callbacks=callbacks)
    rates = result.history["learning_rate"]
    halvings = [i for i in range(1, len(rates)) if rates[i] < rates[i - 1]]   # after epoch i
    test = fn.train.evaluate(model, loss, result.params, result.state, fn.data.mnist("test"))
    print(f"rate halved after epochs {halvings}; stopped after epoch {result.epoch} at rate "
          f"{rates[-1]:g}; best validation accuracy "
          f"{100 * max(result.history['val_accuracy']):.2f}%; test accuracy "
          f"{100 * test['accuracy']:.2f}%")


if __name__ == "__main__":
    main()
