"""The training core's overheads, in one process, alternating (issue 17's speed bars).

    python benchmarks/train_core.py [--workload A|B|both] [--seconds 3] [--repeats 3]
                                    [--only steps|epochs] [--contenders fit,bare]

Per workload (benchmarks/mlp.py's A: 784-512-512-10 ReLU Adam; B: the notes' 784-64-16-10
sigmoid/tanh SGD; batch 128, 60 000 examples on the device):
  - per-step loops over pre-made device batches, jitted with donated buffers: `make_step`
    against plain JAX written with `jax.example_libraries` (stax layers, its sgd/adam), once
    discarding the loss and once returning it (`value_and_grad`) as `make_step` does, and
    `make_step` with its metrics returned or dropped inside the jit (equal work to each stax loop);
  - whole epochs: a bare `lax.scan` of `make_step` over the permuted device-resident epoch,
    against `fn.train.fit`'s epoch program (guarded; with and without the update-ratio
    sampling) and against `fit` itself (one call of k epochs).
"""
import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.example_libraries import optimizers, stax  # noqa: E402

import funcnn as fn  # noqa: E402
from harness import block, fit_epochs, looped, measure, report  # noqa: E402
from mlp import BATCH, WORKLOADS, data, device_batches, funcnn_model, funcnn_optimizer  # noqa: E402

LOSS = fn.losses.softmax_cross_entropy


def stax_loop(spec, batches, *, with_loss=False):
    acts = {"relu": stax.Relu, "sigmoid": stax.Sigmoid, "tanh": stax.Tanh}
    layers = []
    for width, act in zip(spec["sizes"][1:-1], spec["activations"]):
        layers += [stax.Dense(width), acts[act]]
    init, apply = stax.serial(*layers, stax.Dense(spec["sizes"][-1]))
    _, params = init(jax.random.key(0), (-1, 784))
    opt_init, opt_update, get_params = getattr(optimizers, spec["optimizer"])(spec["lr"])

    def loss(params, x, y):
        logits = apply(params, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(opt_state, count, x, y):
        value, grads = jax.value_and_grad(loss)(get_params(opt_state), x, y)
        return opt_update(count, grads, opt_state), count + 1, (value if with_loss else None)

    return looped(lambda opt_state, count, x, y: step(opt_state, count, x, y)[:2],
                  (opt_init(params), jnp.int32(0)), batches)


def make_step_loop(spec, batches, *, with_loss=True):
    """`make_step` jitted as a user's loop would: returning its metrics (the loss), or with them
    dropped inside the jit (so XLA never computes the loss value, as the plain stax loop)."""
    model, opt = funcnn_model(spec), funcnn_optimizer(spec)
    params, state = model.init(jax.random.key(0), (784,))
    make = fn.train.make_step(model, LOSS, opt)
    step = jax.jit(make if with_loss else lambda *args: make(*args)[:3], donate_argnums=(0, 1, 2))
    key = jax.random.key(1)
    return looped(lambda p, s, o, x, y: step(p, s, o, x, y, key)[:3],
                  (params, state, opt.init(params)), batches)


def epochs_of(run_epoch, carry, x, y):
    """(first_step, run_steps) for a jitted `run_epoch(carry, x, y, order) -> carry`, one whole
    epoch per call over a fresh permutation."""
    steps = len(x) // BATCH
    holder = {"carry": carry, "epoch": 0}

    def run(epochs):
        carry = holder["carry"]
        for _ in range(epochs):
            holder["epoch"] += 1
            order = jnp.asarray(fn.train.epoch_order(jax.random.key(holder["epoch"]), len(x),
                                                     BATCH))
            carry = run_epoch(carry, x, y, order)
        holder["carry"] = block(carry)

    def run_steps(n):
        epochs = max(1, round(n / steps))
        run(epochs)
        return epochs * steps

    def first_step():
        import time
        start = time.perf_counter()
        run(1)
        first = time.perf_counter() - start
        start = time.perf_counter()
        run(1)
        steady = time.perf_counter() - start
        return first - steady + steady / steps

    return first_step, run_steps


def bare_scan(spec, x, y):
    model, opt = funcnn_model(spec), funcnn_optimizer(spec)
    params, state = model.init(jax.random.key(0), (784,))
    step = fn.train.make_step(model, LOSS, opt)
    key = jax.random.key(1)

    @jax.jit
    def run_epoch(carry, x, y, order):
        def body(carry, index):
            params, state, opt_state, metrics = step(*carry, x[index], y[index], key)
            return (params, state, opt_state), metrics["loss"]
        return jax.lax.scan(body, carry, order)[0]

    return epochs_of(run_epoch, (params, state, opt.init(params)), x, y)


def epoch_program(spec, x, y, ratio_every):
    model, opt = funcnn_model(spec), funcnn_optimizer(spec)
    params, state = model.init(jax.random.key(0), (784,))
    epoch = jax.jit(fn.train.make_epoch(fn.train.make_step(model, LOSS, opt), BATCH,
                                        ratio_every=ratio_every))
    run_epoch = lambda carry, x, y, order: epoch(carry, x, y, jax.random.key(1), order)[0]
    return epochs_of(run_epoch, fn.train.start(params, state, opt.init(params)), x, y)


def chosen(contenders, fragments, reference):
    """The reference and the contenders whose names contain one of the comma-separated fragments
    (all when fragments is None): fewer contenders make each alternating round shorter."""
    if fragments is None:
        return contenders
    wanted = [f.strip() for f in fragments.split(",")]
    return {name: make for name, make in contenders.items()
            if name == reference or any(f in name for f in wanted)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=["A", "B", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["steps", "epochs"], default=None)
    parser.add_argument("--contenders", default=None,
                        help="comma-separated name fragments: run only the reference and these")
    args = parser.parse_args()
    x, y = data()
    batches = device_batches(x, y)
    dx, dy = jnp.asarray(x), jnp.asarray(y)
    for name in (["A", "B"] if args.workload == "both" else [args.workload]):
        spec = WORKLOADS[name]
        steps = {"stax loop (plain JAX)": lambda: stax_loop(spec, batches),
                 "stax loop returning the loss": lambda: stax_loop(spec, batches, with_loss=True),
                 "make_step loop": lambda: make_step_loop(spec, batches),
                 "make_step loop, metrics dropped in the jit": lambda: make_step_loop(
                     spec, batches, with_loss=False)}
        steps = chosen(steps, args.contenders, "stax loop (plain JAX)")
        if args.only != "epochs":
            report(f"{name}: per-step loops", measure(steps, batch=BATCH, seconds=args.seconds,
                                                      repeats=args.repeats),
                   reference="stax loop (plain JAX)")
        if args.only == "steps":
            continue
        epochs = {"bare lax.scan of make_step": lambda: bare_scan(spec, dx, dy),
                  "epoch program (guarded, ratios)": lambda: epoch_program(
                      spec, dx, dy, fn.train.UpdateRatio().every),
                  "epoch program (guarded)": lambda: epoch_program(spec, dx, dy, None),
                  "fit": lambda: fit_epochs(funcnn_model(spec), LOSS, funcnn_optimizer(spec),
                                            x, y, batch=BATCH)}
        epochs = chosen(epochs, args.contenders, "bare lax.scan of make_step")
        report(f"{name}: whole epochs", measure(epochs, batch=BATCH, seconds=args.seconds,
                                                repeats=args.repeats),
               reference="bare lax.scan of make_step")


if __name__ == "__main__":
    main()
