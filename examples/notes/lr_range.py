"""The learning-rate range test: sweep the rate up exponentially in one short run, read a good
rate off the loss curve, and check it against ten times more and ten times less.

Setting: the notes' MNIST MLP (784-30-10, sigmoid hidden, softmax cross-entropy), plain SGD,
batches of 128. `fn.tune.lr_range_test` runs 200 steps with α from 1e-4 to 100 (one random batch
of the first 50 000 training images each) and suggests the rate where the smoothed loss falls
fastest per decade. Then three short trainings (5 epochs, same initialisation and shuffles) at
the suggestion, 10× and 0.1× of it, judged on the last 10 000 training images. The figure shows
the loss against the rate (left) and the three validation curves (right).

    FUNCNN_DATA_DIR=../shared/data/mnist python examples/notes/lr_range.py [--epochs 5]
"""
import jax
import numpy as np

import _common as c

import funcnn as fn

FACTORS = (0.1, 1.0, 10.0)


def main(argv=None):
    p = c.parser(__doc__, "lr_range", epochs=5)
    p.add_argument("--steps", type=int, default=200, help="steps of the range test (default 200)")
    args = p.parse_args(argv)
    train, validation = c.mnist_split(args.quick)
    model, loss = c.mlp(30), fn.losses.softmax_cross_entropy
    sweep = fn.tune.lr_range_test(model, loss, fn.optim.sgd, train,
                                  key=jax.random.key(args.seed), min_lr=1e-4, max_lr=100.0,
                                  steps=args.steps, batch_size=128)
    lowest = int(np.nanargmin(sweep.smoothed))
    print(f"range test: {len(sweep.learning_rates)} of {args.steps} steps run"
          f"{' (stopped at divergence)' if sweep.diverged else ''}; smoothed loss lowest "
          f"({sweep.smoothed[lowest]:.3f}) at lr {sweep.learning_rates[lowest]:.3g}")
    print(f"suggested learning rate ({sweep.rule}): {sweep.suggestion:.3g}")

    curves, rows = {}, []
    for factor in FACTORS:
        lr = factor * sweep.suggestion
        try:
            result = c.fit(model, loss, fn.optim.sgd(1.0), train, validation, args,
                           hyperparams={"learning_rate": lr})
            status = f"{result.epoch}"
        except fn.train.TrainingDiverged as error:   # 10× may be past the edge
            result, status = error.result, f"diverged in epoch {error.result.epoch}"
        accuracy = result.history.get("val_accuracy") or [float("nan")]
        curves[f"{factor:g}× suggestion (lr {lr:.3g})"] = accuracy
        rows.append([f"{factor:g}×", f"{lr:.3g}", f"{result.history['loss'][-1]:.4f}",
                     c.percent(accuracy[-1]), status])
    print(c.table(["rate", "lr", "final train loss", "validation accuracy", "epochs"], rows))

    fig, axes = c.figure(cols=2)
    if fig is not None:
        left = axes[0]
        left.plot(sweep.learning_rates, sweep.losses, alpha=0.35, label="loss per step")
        left.plot(sweep.learning_rates, sweep.smoothed, linewidth=2, label="smoothed loss")
        for factor in FACTORS:
            left.axvline(factor * sweep.suggestion, linestyle="--" if factor == 1 else ":",
                         color="black", label=f"{factor:g}× suggestion")
        left.set(xscale="log", xlabel="learning rate (log scale)", ylabel="training loss",
                 title="Learning-rate range test")
        left.legend()
        c.draw_curves(axes[1], curves, ylabel="validation accuracy",
                      title="Training at the suggestion, 10× and 0.1×")
    c.save(fig, args.out)
    return {"sweep": sweep, "curves": curves}


if __name__ == "__main__":
    main()
