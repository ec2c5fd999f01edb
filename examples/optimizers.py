"""Every optimizer of fn.optim on a saddle and on Rosenbrock's narrow valley, in one picture.

    python examples/optimizers.py --out optimizers.png

The saddle f(x, y) = x² − y² starts almost on its ridge: plain SGD creeps away from it, the
adaptive methods (Adagrad, RMSProp, Adam) rescale the tiny y-gradient and escape at once.
Rosenbrock's (1 − x)² + 100(y − x²)² has a curved, narrow valley: momentum carries the step
along it, plain SGD needs a small learning rate to stay stable across it.
"""
import argparse

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
import numpy as np  # noqa: E402

import funcnn as fn  # noqa: E402

O = fn.optim


def saddle(p):
    x, y = p["w"]
    return x ** 2 - y ** 2


def rosenbrock(p):
    x, y = p["w"]
    return (1 - x) ** 2 + 100 * (y - x ** 2) ** 2


# problem: (function, start, steps, {name: optimizer}, plot window)
PROBLEMS = {
    "saddle  x² − y²": (saddle, [-1.0, 1e-3], 60, {
        "SGD": O.sgd(0.05),
        "Momentum 0.9": O.sgd(0.05, momentum=0.9),
        "Nesterov 0.9": O.sgd(0.05, momentum=0.9, nesterov=True),
        "Adagrad": O.adagrad(0.1),
        "RMSProp": O.rmsprop(0.01),
        "Adam": O.adam(0.05),
        "AdamW": O.adamw(0.05, weight_decay=0.1),
    }, ((-1.2, 1.2), (-1.2, 1.2))),
    "Rosenbrock  (1 − x)² + 100(y − x²)²": (rosenbrock, [-1.0, 1.5], 1000, {
        "SGD": O.sgd(1e-3),
        "Momentum 0.9": O.sgd(1e-3, momentum=0.9),
        "Nesterov 0.9": O.sgd(1e-3, momentum=0.9, nesterov=True),
        "Adagrad": O.adagrad(0.3),
        "RMSProp": O.rmsprop(3e-3),
        "Adam": O.adam(0.05),
        "AdamW": O.adamw(0.05, weight_decay=1e-3),
    }, ((-1.6, 1.6), (-0.6, 2.2))),
}


def trajectory(opt, f, start, steps):
    """The points visited and the loss at each, starting point included."""
    def step(carry, _):
        p, s = carry
        value, grads = jax.value_and_grad(f)(p)
        updates, s = opt.update(grads, s, p, value=value)
        return (O.apply_updates(p, updates), s), (p["w"], value)

    params = {"w": jnp.array(start, jnp.float32)}
    _, (points, losses) = jax.jit(
        lambda p: jax.lax.scan(step, (p, opt.init(p)), None, length=steps))(params)
    return np.asarray(points), np.asarray(losses)


def draw(out):
    fig, axes = plt.subplots(2, 2, figsize=(13, 11))
    for row, (title, (f, start, steps, optimizers, (xlim, ylim))) in zip(axes, PROBLEMS.items()):
        xs, ys = np.meshgrid(np.linspace(*xlim, 200), np.linspace(*ylim, 200))
        zs = np.asarray(jax.vmap(jax.vmap(lambda x, y: f({"w": jnp.stack([x, y])})))(
            jnp.asarray(xs), jnp.asarray(ys)))
        levels = np.logspace(-1, 3.3, 25) if f is rosenbrock else 25
        row[0].contour(xs, ys, zs, levels=levels, cmap="Greys", linewidths=0.6)
        for name, opt in optimizers.items():
            points, losses = trajectory(opt, f, start, steps)
            row[0].plot(points[:, 0], points[:, 1], ".-", ms=2, lw=1, label=name)
            row[1].plot(losses, label=name)
        row[0].plot(*start, "k*", ms=10)
        row[0].set(title=f"{title}: trajectories", xlim=xlim, ylim=ylim, xlabel="x", ylabel="y")
        row[1].set(title=f"{title}: loss", xlabel="step", ylabel="f",
                   yscale="symlog" if f is saddle else "log")
        row[1].legend(fontsize=8)
    axes[1, 0].plot(1, 1, "r+", ms=12)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="optimizers.png", help="PNG to write")
    draw(parser.parse_args().out)
