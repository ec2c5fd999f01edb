"""One training step of the MNIST CNN: gradients from jax.grad vs the hand-written rules.

Times `fn.train.make_step(..., hand_written=False)` (jax.grad through `model.apply`) and
`hand_written=True` (`fn.backprop`: every layer's own backward) on the CNN of
examples/mnist_cnn.py, after warm-up, as the median of several repeats, and prints both and
their ratio — once as one jitted step per call, once per step of a jitted `lax.scan` (where
`fn.train.fit` runs them; on XLA:CPU, convolutions with non-canonical dimension numbers, as in
jax's own conv transpose rules, leave the fast path inside loops). `--layers` adds a per-layer
breakdown (forward + backward of one layer on its real input shape, hand-written vs jax.vjp).

    python benchmarks/cnn_backprop.py [--batch-size 128] [--repeats 20] [--scan-steps 5] [--layers]
"""
import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import funcnn as fn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from mnist_cnn import build_model, cnn_layers  # noqa: E402  (the example's model, not a copy)


def median_seconds(run, args, repeats, warmup=3):
    """Median wall time of `run(*args)` (blocking on its result) over `repeats` calls."""
    for _ in range(warmup):
        jax.block_until_ready(run(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_steps(model, x, y, repeats, scan_steps=0):
    """Median seconds of one Adam step with autodiff and with hand-written gradients: one jitted
    step per call, or (scan_steps > 0) per step of a jitted `lax.scan` over `scan_steps` steps,
    as `fn.train.fit` runs whole epochs."""
    loss, optimizer = fn.losses.softmax_cross_entropy, fn.optim.adam(1e-3)
    params, state = model.init(jax.random.key(0), x.shape[1:])
    opt_state = optimizer.init(params)
    key = jax.random.key(1)
    times = {}
    for name, hand in (("jax.grad", False), ("hand-written", True)):
        step = fn.train.make_step(model, loss, optimizer, hand_written=hand)
        if not scan_steps:
            times[name] = median_seconds(jax.jit(step), (params, state, opt_state, x, y, key),
                                         repeats)
            continue

        def body(carry, i, step=step):
            params, state, opt_state = carry
            params, state, opt_state, _ = step(params, state, opt_state, x, y,
                                               jax.random.fold_in(key, i))
            return (params, state, opt_state), None

        run = jax.jit(lambda c: jax.lax.scan(body, c, jnp.arange(scan_steps))[0])
        times[name] = median_seconds(run, ((params, state, opt_state),), repeats,
                                     warmup=1) / scan_steps
    return times


def time_layers(layers, x, repeats):
    """Per layer: median seconds of jitted forward + backward, hand-written vs jax.vjp."""
    params, state = fn.nn.serial(*layers).init(jax.random.key(0), x.shape[1:])
    key = jax.random.key(1)
    rows = []
    for i, layer in enumerate(layers):
        p, s, k = params[i], state[i], jax.random.fold_in(key, i)
        y, _ = layer.apply(p, s, x, key=k, train=True)
        dy = jnp.ones_like(y)

        def hand(p, x, dy, layer=layer, s=s, k=k):
            _, _, res = layer.forward(p, s, x, key=k, train=True)
            return layer.backward(p, res, dy)

        def auto(p, x, dy, layer=layer, s=s, k=k):
            _, vjp = jax.vjp(lambda p, x: layer.apply(p, s, x, key=k, train=True)[0], p, x)
            return vjp(dy)

        rows.append((f"{i:2d} {layer.name}{tuple(x.shape[1:])}",
                     median_seconds(jax.jit(hand), (p, x, dy), repeats),
                     median_seconds(jax.jit(auto), (p, x, dy), repeats)))
        x = y
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--layers", action="store_true", help="per-layer breakdown")
    parser.add_argument("--scan-steps", type=int, default=5,
                        help="steps per lax.scan in the second comparison (0: skip it)")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 1, (args.batch_size, 28, 28, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, args.batch_size), jnp.int32)
    model = build_model()
    print(f"CNN of examples/mnist_cnn.py, batch {args.batch_size}, {jax.devices()[0].platform}, "
          f"median of {args.repeats} steps after warm-up")
    if args.layers:
        print(f"  {'layer (input shape)':<34}{'hand-written':>14}{'jax.vjp':>11}{'ratio':>8}")
        for name, hand, auto in time_layers(cnn_layers(), x, args.repeats):
            print(f"  {name:<34}{1e3 * hand:>12.2f}ms{1e3 * auto:>9.2f}ms{hand / auto:>8.2f}")
    settings = [("one jitted step per call", 0, args.repeats)]
    if args.scan_steps:
        settings.append((f"{args.scan_steps} steps per jitted lax.scan (as fn.train.fit)",
                         args.scan_steps, max(1, args.repeats // 5)))
    for title, scan_steps, repeats in settings:
        print(title)
        times = time_steps(model, x, y, repeats, scan_steps)
        for name, seconds in times.items():
            print(f"{name:>16}: {1e3 * seconds:8.2f} ms/step  ({args.batch_size / seconds:,.0f} "
                  f"samples/s)")
        ratio = times["hand-written"] / times["jax.grad"]
        print(f"  hand-written / jax.grad = {ratio:.2f}  (target ≤ 1.30)")


if __name__ == "__main__":
    main()
