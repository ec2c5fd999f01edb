"""The L2 (weight-decay) sweep: as λ grows, training accuracy falls towards validation accuracy
and the overfitting gap closes; too large a λ underfits both.

Setting (the notes' overfitting set-up): a 784-100-10 MLP (sigmoid hidden, softmax
cross-entropy) trained on the first 1 000 MNIST training images — so few that the
unregularised net learns them all — with plain SGD (lr 0.5, batch 128) for 200 epochs, the same
initialisation and shuffles for every λ; validation on the last 10 000 training images. The
penalty is fn.regularizers.l2(λ): R = (λ/2)·Σw² over the kernels (not the biases), added to the
batch-mean loss, for λ ∈ {0, 10⁻⁵, 10⁻⁴, 10⁻³, 3·10⁻³, 10⁻²}. Training and validation accuracy
are measured after training, in evaluation mode; the table and the figure show both and their
gap per λ. What we saw: a 12-point gap at λ = 0, halved at λ = 10⁻²; validation accuracy best
at 3·10⁻³ by a fraction of a point. (On 10 000 images for 30 epochs, `--train-size 10000
--epochs 30`, the net overfits little, 3 points, and every λ > 0 lowers validation accuracy.)

    FUNCNN_DATA_DIR=../shared/data/mnist python examples/notes/regularization.py [--epochs 200]
"""
import numpy as np

import _common as c

import funcnn as fn

LAMBDAS = (0.0, 1e-5, 1e-4, 1e-3, 3e-3, 1e-2)


def main(argv=None):
    p = c.parser(__doc__, "regularization", epochs=200)
    p.add_argument("--train-size", type=int, default=1_000,
                   help="training images, the first of the split (default 1 000)")
    args = p.parse_args(argv)
    train, validation = c.mnist_split(args.quick)
    train = tuple(a[:args.train_size] for a in train)
    model, loss = c.mlp(100), fn.losses.softmax_cross_entropy
    train_acc, val_acc = [], []
    for lam in LAMBDAS:
        result = c.fit(model, loss, fn.optim.sgd(0.5), train, validation, args,
                       regularizer=fn.regularizers.l2(lam) if lam else None)
        train_acc.append(fn.train.evaluate(model, loss, result.params, result.state,
                                           train)["accuracy"])
        val_acc.append(result.history["val_accuracy"][-1])
    gaps = np.subtract(train_acc, val_acc)
    print(f"784-100-10 on {len(train[0])} training images, SGD 0.5, {c.epochs_of(args)} epochs, "
          f"L2 penalty (λ/2)·Σw²")
    print(c.table(["λ", "train accuracy", "validation accuracy", "gap (points)"],
                  [[f"{lam:g}", c.percent(t), c.percent(v), f"{100 * g:.2f}"]
                   for lam, t, v, g in zip(LAMBDAS, train_acc, val_acc, gaps)]))
    closed = next((lam for lam, g in zip(LAMBDAS, gaps) if g < gaps[0] / 2), None)
    best = LAMBDAS[int(np.argmax(val_acc))]
    print(f"gap at λ = 0: {100 * gaps[0]:.2f} points; "
          + (f"first λ that halves it: {closed:g} ({100 * gaps[LAMBDAS.index(closed)]:.2f} "
             f"points)" if closed is not None else "no λ of the grid halves it")
          + f"; smallest gap at λ = {LAMBDAS[int(np.argmin(gaps))]:g}; best validation "
            f"accuracy at λ = {best:g} ({c.percent(max(val_acc))})")

    fig, axes = c.figure()
    if fig is not None:
        ax, at = axes[0], np.arange(len(LAMBDAS))
        ax.plot(at, train_acc, marker="o", label="training accuracy")
        ax.plot(at, val_acc, marker="o", label="validation accuracy")
        ax.fill_between(at, val_acc, train_acc, alpha=0.15, label="gap")
        ax.set_xticks(at, [f"{lam:g}" for lam in LAMBDAS])
        ax.set(xlabel="λ (L2 strength)", ylabel="accuracy after training",
               title=f"L2 sweep: 784-100-10 on {len(train[0])} images")
        ax.grid(alpha=0.3)
        ax.legend()
    c.save(fig, args.out)
    return {"lambdas": LAMBDAS, "train": train_acc, "validation": val_acc}


if __name__ == "__main__":
    main()
