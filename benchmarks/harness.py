"""Timing helpers shared by the benchmark scripts: warm-up, repeats, medians, a table and JSON.

A contender is a factory returning `(first_step, run_steps)`:
    first_step() -> seconds     time to the first finished training step (compilation
                                included), once;
    run_steps(n) -> int | None  about n more training steps, blocking until they are done;
                                returns how many it ran when that is not exactly n (whole epochs).
Contenders are measured in rounds, alternating, so a noisy machine hits them all alike.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def steps_for(run_steps, seconds: float, batch: int) -> int:
    """How many steps take about `seconds`, from a short probe."""
    start = time.perf_counter()
    done = run_steps(5) or 5
    per_step = (time.perf_counter() - start) / done
    return max(5, int(seconds / per_step))


def measure(contenders: dict, *, batch: int, seconds: float = 3.0, repeats: int = 3,
            epoch_steps: int | None = None) -> dict:
    """Steady-state samples/s (median of `repeats` rounds of ≥ `seconds`), compile time, epoch
    time (epoch_steps steps at the median rate) and peak RSS after each contender's set-up."""
    prepared, results = {}, {}
    for name, factory in contenders.items():
        first_step, run_steps = factory()
        compile_s = first_step()
        run_steps(3)
        prepared[name] = (run_steps, steps_for(run_steps, seconds, batch))
        results[name] = {"first_step_s": compile_s, "rates": [], "peak_rss_mib": peak_rss_mib()}
    for _ in range(repeats):
        for name, (run_steps, n) in prepared.items():
            start = time.perf_counter()
            done = run_steps(n) or n
            results[name]["rates"].append(done * batch / (time.perf_counter() - start))
    for name, r in results.items():
        r["samples_per_s"] = statistics.median(r["rates"])
        if epoch_steps:
            r["epoch_s"] = epoch_steps * batch / r["samples_per_s"]
    return results


def matmul_ceiling(m=128, k=784, n=512, seconds=2.0) -> float:
    """GFLOP/s of a jitted float32 (m×k)@(k×n) chain: the CPU's practical GEMM ceiling here."""
    a = jax.random.normal(jax.random.key(0), (m, k))
    b = jax.random.normal(jax.random.key(1), (k, n)) / k**0.5
    c = jax.random.normal(jax.random.key(2), (n, k)) / n**0.5

    @jax.jit
    def chain(a):
        for _ in range(8):
            a = (a @ b) @ c
        return a

    chain(a).block_until_ready()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a = chain(a)
        count += 1
    a.block_until_ready()
    elapsed = time.perf_counter() - start
    return count * 8 * 2 * (2 * m * k * n) / elapsed / 1e9


def report(title: str, results: dict, *, reference: str | None = None, extra: dict | None = None):
    """Print a table (and a JSON line) of the results; ratios against `reference`: of the median
    rates, and paired (the median over rounds of each round's rate ÷ the reference's rate in the
    same round, which cancels the machine's slow drift between rounds)."""
    print(f"\n{title}")
    header = f"{'contender':<34}{'samples/s':>12}{'first step s':>14}{'epoch s':>10}{'peak MiB':>10}"
    if reference:
        header += f"{'ratio':>8}{'paired':>8}"
        print(f"(ratio: samples/s ÷ {reference}'s; paired: median of per-round ratios)")
    print(header)
    for name, r in sorted(results.items(), key=lambda kv: -kv[1]["samples_per_s"]):
        line = (f"{name:<34}{r['samples_per_s']:>12,.0f}{r['first_step_s']:>14.2f}"
                f"{r.get('epoch_s', float('nan')):>10.2f}{r['peak_rss_mib']:>10.0f}")
        if reference:
            line += f"{r['samples_per_s'] / results[reference]['samples_per_s']:>7.2f}x"
            r["paired_ratio"] = statistics.median(
                a / b for a, b in zip(r["rates"], results[reference]["rates"]))
            line += f"{r['paired_ratio']:>7.2f}x"
        print(line)
    print("JSON " + json.dumps({"title": title, "results": results, **(extra or {})}))
    sys.stdout.flush()


def block(tree):
    """Wait for every array of a pytree."""
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jnp.ndarray):
            leaf.block_until_ready()
    return tree


def looped(step, carry, batches):
    """(first_step, run_steps) for a per-step loop over pre-made device batches."""
    state = {"carry": carry, "i": 0}

    def run_steps(n):
        carry = state["carry"]
        for _ in range(n):
            x, y = batches[state["i"] % len(batches)]
            carry = step(*carry, x, y)
            state["i"] += 1
        state["carry"] = block(carry)

    def first_step():
        start = time.perf_counter()
        run_steps(1)
        return time.perf_counter() - start

    return first_step, run_steps


def fit_epochs(model, loss, optimizer, x, y, *, batch: int, hand_written: bool = False):
    """(first_step, run_steps) for `fn.train.fit`: run_steps(n) is one call of ≈ n steps' worth
    of epochs, continuing from the previous call's state (as a user's fit(epochs=k) runs). Its
    first step runs inside the first compiled epoch, so first_step reports that epoch's time
    less a steady epoch's, plus one steady step."""
    import funcnn as fn
    x, y = jnp.asarray(x), jnp.asarray(y)   # on the device once, as fit(epochs=k) would
    steps_per_call = len(x) // batch
    params, model_state = model.init(jax.random.key(0), x.shape[1:])   # as the peers: untimed
    state = {"result": (params, model_state, optimizer.init(params))}

    def run_epochs(epochs):
        params, model_state, opt_state = state["result"]
        params, model_state, opt_state, *_ = fn.train.fit(
            model, loss, optimizer, (x, y), epochs=epochs, batch_size=batch,
            key=jax.random.key(0), progress=False, hand_written=hand_written, params=params,
            state=model_state, opt_state=opt_state)
        state["result"] = block((params, model_state, opt_state))

    def timed_epoch():
        start = time.perf_counter()
        run_epochs(1)
        return time.perf_counter() - start

    def run_steps(n):
        epochs = max(1, round(n / steps_per_call))
        run_epochs(epochs)
        return epochs * steps_per_call

    def first_step():
        first, steady = timed_epoch(), timed_epoch()
        return first - steady + steady / steps_per_call

    return first_step, run_steps


def optax_loop(loss_fn, params, tx, batches):
    """Plain JAX's idiomatic step (jax.grad, optax update, donated buffers), per step."""
    import optax

    def step(params, opt_state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return looped(jax.jit(step, donate_argnums=(0, 1)), (params, tx.init(params)), batches)


def nnx_loop(model, tx, batches):
    """flax.nnx's idiomatic training step (nnx.jit, nnx.grad, nnx.Optimizer), per step."""
    import optax
    from flax import nnx
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit(donate_argnums=(0, 1))
    def step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
        grads = nnx.grad(loss_fn)(model)
        optimizer.update(model, grads)
        return model, optimizer

    return looped(step, (model, optimizer), batches)


def torch_loop(model, optimizer, batches):
    """PyTorch's idiomatic eager step on (inputs, int64 labels) tensor batches."""
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
        return ()

    return looped(step, (), batches)
