"""The notes' optimizer comparison: on a saddle the adaptive methods escape at once where plain
SGD creeps; on MNIST, each at a sensible rate, they end close together.

(a) The saddle f(x, y) = x² − y², ∇f = (2x, −2y), started at (1, 10⁻³), almost on the ridge
y = 0 that leads into the saddle point (0, 0): SGD (lr 0.05), momentum 0.9 and Nesterov 0.9
(lr 0.05), Adagrad (0.1), RMSProp (0.01), Adam (0.05), 50 steps each. Plain SGD multiplies y by
(1 + 2α) per step, so it needs many steps to leave the saddle; momentum compounds that growth
(the velocity accumulates it) and, once y has grown, leaves fastest of all; the adaptive methods
divide the tiny y-gradient by its own scale and move along y at about their learning rate per
step from the first step on.
Table: final f, final point and distance from the saddle point.
(b) MNIST: the notes' 784-30-10 MLP (sigmoid hidden, softmax cross-entropy), batch 128, the same
initialisation and shuffles, 10 epochs, each optimizer at a usual rate for it (SGD 0.5, momentum
and Nesterov 0.9 at 0.05, Adagrad 0.05, RMSProp and Adam 10⁻³); validation accuracy on the last
10 000 training images per epoch. Momentum 0.9 at 0.05 takes steps of about 0.05/(1 − 0.9) =
0.5 times the gradient, the same as SGD at 0.5, so those three curves nearly coincide. The
figure: trajectories, f per step, MNIST curves.

(examples/optimizers.py draws the saddle and Rosenbrock's valley for every optimizer; this is
the notes' experiment with its numbers.)

    FUNCNN_DATA_DIR=../shared/data/mnist python examples/notes/optimizers.py [--epochs 10]
"""
import jax
import jax.numpy as jnp
import numpy as np

import _common as c

import funcnn as fn

O = fn.optim
START, STEPS = (1.0, 1e-3), 50
SADDLE = {"SGD": O.sgd(0.05), "Momentum 0.9": O.sgd(0.05, momentum=0.9),
          "Nesterov 0.9": O.sgd(0.05, momentum=0.9, nesterov=True), "Adagrad": O.adagrad(0.1),
          "RMSProp": O.rmsprop(0.01), "Adam": O.adam(0.05)}
MNIST = {"SGD": O.sgd(0.5), "Momentum 0.9": O.sgd(0.05, momentum=0.9),
         "Nesterov 0.9": O.sgd(0.05, momentum=0.9, nesterov=True), "Adagrad": O.adagrad(0.05),
         "RMSProp": O.rmsprop(1e-3), "Adam": O.adam(1e-3)}


def saddle(params):
    """f(x, y) = x² − y²: a minimum along x, a maximum along y, the saddle point at (0, 0)."""
    x, y = params["w"]
    return x ** 2 - y ** 2


def trajectory(optimizer, start=START, steps=STEPS):
    """(points, values): the `steps + 1` points visited on the saddle, start included, and f at
    each."""
    def step(carry, _):
        p, s = carry
        value, grads = jax.value_and_grad(saddle)(p)
        updates, s = optimizer.update(grads, s, p, value=value)
        p = O.apply_updates(p, updates)
        return (p, s), p["w"]

    params = {"w": jnp.asarray(start, jnp.float32)}
    _, points = jax.jit(lambda p: jax.lax.scan(step, (p, optimizer.init(p)), None,
                                               length=steps))(params)
    points = np.concatenate([np.asarray(start, np.float32)[None], np.asarray(points)])
    return points, points[:, 0] ** 2 - points[:, 1] ** 2


def main(argv=None):
    p = c.parser(__doc__, "optimizers", epochs=10)
    args = p.parse_args(argv)

    paths = {name: trajectory(opt) for name, opt in SADDLE.items()}
    print(f"(a) saddle f = x² − y² from {START}, {STEPS} steps")
    print(c.table(["optimizer", "final f", "final (x, y)", "distance from (0, 0)"],
                  [[name, f"{values[-1]:.4g}", f"({points[-1, 0]:.3g}, {points[-1, 1]:.3g})",
                    f"{np.hypot(*points[-1]):.3g}"] for name, (points, values) in paths.items()]))

    train, validation = c.mnist_split(args.quick)
    model, loss = c.mlp(30), fn.losses.softmax_cross_entropy
    curves = {name: c.fit(model, loss, opt, train, validation, args).history["val_accuracy"]
              for name, opt in MNIST.items()}
    print(f"(b) MNIST 784-30-10, batch 128, {c.epochs_of(args)} epochs: validation accuracy")
    print(c.table(["optimizer", "epoch 1", "final", "best"],
                  [[name, c.percent(v[0]), c.percent(v[-1]), c.percent(max(v))]
                   for name, v in curves.items()]))

    fig, axes = c.figure(cols=3)
    if fig is not None:
        xs, ys = np.meshgrid(np.linspace(-1.2, 1.2, 200), np.linspace(-1, 3.5, 200))
        axes[0].contour(xs, ys, xs ** 2 - ys ** 2, levels=25, cmap="Greys", linewidths=0.6)
        for name, (points, values) in paths.items():
            axes[0].plot(points[:, 0], points[:, 1], ".-", ms=2, lw=1, label=name)
            axes[1].plot(values, label=name)
        axes[0].plot(*START, "k*", ms=10)
        axes[0].set(xlim=(-1.2, 1.2), ylim=(-1, 3.5), xlabel="x", ylabel="y",
                    title="Saddle x² − y²: trajectories")
        axes[0].legend(fontsize=8)
        axes[1].set(xlabel="step", ylabel="f (symlog)", yscale="symlog",
                    title="Saddle: f per step")
        axes[1].legend(fontsize=8)
        c.draw_curves(axes[2], curves, ylabel="validation accuracy",
                      title="MNIST 784-30-10: validation accuracy")
    c.save(fig, args.out)
    return {"paths": paths, "curves": curves}


if __name__ == "__main__":
    main()
