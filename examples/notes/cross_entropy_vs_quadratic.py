"""Cross-entropy against the quadratic cost with sigmoid outputs: the quadratic cost learns slowly
from a badly wrong, saturated start; cross-entropy does not.

Why: for a = σ(z), z = wx + b, the quadratic cost C = (a − y)²/2 has ∂C/∂w = (a − y)σ'(z)x,
and σ'(z) ≈ 0 when the neuron saturates; the cross-entropy C = −[y ln a + (1 − y) ln(1 − a)]
has ∂C/∂w = (a − y)x: the larger the error, the faster it learns.

(1) The notes' one neuron: input x = 1, target y = 0, start w = b = 2 (a = σ(4) ≈ 0.98),
gradient descent with η = 0.15 for 300 epochs, gradients from the library's hand-written
backprop. The cost is printed at a few epochs and both cost curves are plotted.
(2) MNIST: a 784-30-10 network with sigmoid hidden and output units, one-hot targets, SGD
η = 0.5, batch 128, the same initialisation (N(0, 1/n_in) weights) and shuffles, 10 epochs;
the quadratic cost C = (1/n)Σₓ ½‖y − a‖² (fn.losses.half_squared_error) against the
cross-entropy C = −(1/n)Σₓ Σⱼ [yⱼ ln aⱼ + (1 − yⱼ) ln(1 − aⱼ)], computed from the output
pre-activations z (aⱼ = σ(zⱼ)) by fn.losses.multilabel_logistic — the same function of the
weights, numerically stable. Validation accuracy per epoch on the last 10 000 training images.

    FUNCNN_DATA_DIR=../shared/data/mnist python examples/notes/cross_entropy_vs_quadratic.py
"""
import jax
import jax.numpy as jnp
import numpy as np

import _common as c

import funcnn as fn
from funcnn import nn

ETA, NEURON_EPOCHS, SHOWN = 0.15, 300, (0, 10, 50, 100, 200, 300)
X, Y = jnp.ones((1, 1)), jnp.zeros((1, 1))
COSTS = {"quadratic": fn.losses.half_squared_error,
         "cross-entropy": fn.losses.binary_cross_entropy}


def neuron():
    """The one sigmoid neuron a = σ(wx + b), started saturated at w = b = 2."""
    return nn.serial(nn.Dense(1, fn.init.constant(2.0), fn.init.constant(2.0)), nn.Sigmoid())


def neuron_gradients(cost):
    """(params, grads) of `cost` at the start, from the hand-written backprop."""
    model = neuron()
    params, state = model.init(jax.random.key(0), (1,))
    _, grads = fn.backprop.value_and_grad(model, cost)(params, state, X, Y)
    return params, grads


def neuron_costs(cost, epochs=NEURON_EPOCHS):
    """The cost before training and after each of `epochs` gradient-descent steps, (epochs + 1,)."""
    model = neuron()
    params, state = model.init(jax.random.key(0), (1,))
    optimizer = fn.optim.sgd(ETA)
    step = fn.train.make_step(model, cost, optimizer, hand_written=True)

    def body(carry, _):
        p, s, o = carry
        p, s, o, metrics = step(p, s, o, X, Y, jax.random.key(0))
        return (p, s, o), metrics["loss"]

    (p, s, _), losses = jax.jit(lambda p, s, o: jax.lax.scan(body, (p, s, o), None,
                                                             length=epochs))(
        params, state, optimizer.init(params))
    last = cost(model.apply(p, s, X)[0], Y)   # the metrics hold each step's loss before it
    return np.append(np.asarray(losses), float(last))


def main(argv=None):
    p = c.parser(__doc__, "cross_entropy_vs_quadratic", epochs=10)
    args = p.parse_args(argv)

    neuron_curves = {name: neuron_costs(cost) for name, cost in COSTS.items()}
    print(f"(1) one sigmoid neuron, x = 1, y = 0, w = b = 2, η = {ETA}: cost after each epoch")
    print(c.table(["epoch"] + list(COSTS),
                  [[e] + [f"{neuron_curves[name][e]:.4f}" for name in COSTS] for e in SHOWN]))

    train, validation = c.mnist_split(args.quick)
    train, validation = c.one_hot(train), c.one_hot(validation)
    runs = {"quadratic": (c.mlp(30, sigmoid_outputs=True), fn.losses.half_squared_error),
            "cross-entropy": (c.mlp(30), fn.losses.multilabel_logistic)}
    curves = {name: c.fit(model, cost, fn.optim.sgd(0.5), train, validation,
                          args).history["val_accuracy"] for name, (model, cost) in runs.items()}
    epochs = len(curves["quadratic"])
    shown = sorted({1, 2, 3, 5, epochs} & set(range(1, epochs + 1)))
    print("(2) MNIST 784-30-10, sigmoid outputs, SGD η = 0.5, batch 128: validation accuracy")
    print(c.table(["epoch"] + list(curves),
                  [[e] + [c.percent(curves[name][e - 1]) for name in curves] for e in shown]))

    fig, axes = c.figure(cols=2)
    if fig is not None:
        axes[0].plot(neuron_curves["quadratic"], label="quadratic cost")
        axes[0].plot(neuron_curves["cross-entropy"], label="cross-entropy cost")
        axes[0].set(xlabel="epoch", ylabel="cost", title="One saturated sigmoid neuron "
                                                          "(x = 1, y = 0, w = b = 2)")
        axes[0].legend()
        c.draw_curves(axes[1], curves, ylabel="validation accuracy",
                      title="MNIST 784-30-10, sigmoid outputs")
    c.save(fig, args.out)
    return {"neuron": neuron_curves, "curves": curves}


if __name__ == "__main__":
    main()
