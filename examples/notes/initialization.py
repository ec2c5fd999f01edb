"""Weight initialisation: weights N(0, 1/n_in) (the 1/√n scaling) learn faster early than
weights N(0, 1), whose hidden sigmoids start saturated.

Why: with N(0, 1) weights a hidden unit's z = Σⱼ wⱼxⱼ + b over MNIST's ~100-200 lit pixels has
a standard deviation of several units, so σ(z) sits near 0 or 1 and σ'(z) ≈ 0; scaling the
weights by 1/√n_in keeps z of order 1.

Setting (the notes' comparison): 784-30-10, sigmoid hidden units, softmax cross-entropy, plain
SGD (lr 0.5, batch 128) for 30 epochs on the first 50 000 MNIST training images, the same
shuffles; biases N(0, 1) in both runs, weights N(0, 1) (fn.init.normal(1.0)) against
N(0, 1/n_in) (fn.init.lecun_normal). Validation accuracy per epoch on the last 10 000 training
images (table at a few epochs, both curves on one figure); the fraction of saturated hidden
units (σ(z) < 0.02 or > 0.98) at the start is printed too.

    FUNCNN_DATA_DIR=../shared/data/mnist python examples/notes/initialization.py [--epochs 30]
"""
import jax
import jax.numpy as jnp

import _common as c

import funcnn as fn
from funcnn import nn

INITS = {"N(0, 1)": fn.init.normal(1.0), "N(0, 1/n_in)": fn.init.lecun_normal}


def saturated_fraction(w_init, x, key) -> float:
    """The fraction of hidden sigmoids with σ(z) < 0.02 or > 0.98 on `x` at initialisation:
    the first three layers of `c.mlp` alone, initialised by `serial` from the same key (it folds
    in the layer index), so with the same parameters as the whole net's."""
    hidden = nn.serial(nn.Flatten(), nn.Dense(30, w_init, fn.init.normal(1.0)), nn.Sigmoid())
    a = hidden.apply(*hidden.init(key, tuple(x.shape[1:])), jnp.asarray(x))[0]
    return float(jnp.mean((a < 0.02) | (a > 0.98)))


def main(argv=None):
    p = c.parser(__doc__, "initialization", epochs=30)
    args = p.parse_args(argv)
    train, validation = c.mnist_split(args.quick)
    loss = fn.losses.softmax_cross_entropy
    curves, saturated = {}, {}
    for name, w_init in INITS.items():
        model = c.mlp(30, w_init=w_init, b_init=fn.init.normal(1.0))
        saturated[name] = saturated_fraction(w_init, validation[0][:1000],
                                             jax.random.split(jax.random.key(args.seed))[0])
        curves[name] = c.fit(model, loss, fn.optim.sgd(0.5), train, validation,
                             args).history["val_accuracy"]
    epochs = len(curves["N(0, 1)"])
    shown = sorted({1, 2, 3, 5, 10, 20, epochs} & set(range(1, epochs + 1)))
    print("784-30-10 sigmoid/softmax, SGD 0.5, batch 128: validation accuracy")
    print(c.table(["epoch"] + list(curves),
                  [[e] + [c.percent(curves[n][e - 1]) for n in curves] for e in shown]))
    print("saturated hidden units at the start: " + ", ".join(
        f"{n} {c.percent(s)}" for n, s in saturated.items()))
    early = curves["N(0, 1/n_in)"][0] - curves["N(0, 1)"][0]
    print(f"after epoch 1, N(0, 1/n_in) is {100 * early:+.2f} points ahead; final "
          f"{c.percent(curves['N(0, 1/n_in)'][-1])} vs {c.percent(curves['N(0, 1)'][-1])}")
    c.plot_curves(curves, args.out, title="Initialisation: 784-30-10 sigmoid, SGD 0.5")
    return {"curves": curves, "saturated": saturated}


if __name__ == "__main__":
    main()
