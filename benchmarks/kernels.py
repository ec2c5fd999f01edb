"""Where a compiled training epoch spends its time: XLA's kernels, from a profiler trace.

Runs one warm `fn.train.make_epoch` epoch of workload A, B (benchmarks/mlp.py) or C
(benchmarks/cnn.py) under `jax.profiler.trace`, and prints the kernels (fusions, GEMMs, copies)
by total time: per step, calls per step, output shape and the operation they came from. On a
2-core CPU the GEMMs and independent kernels overlap, so the column need not add up to the step.

    python benchmarks/kernels.py [--workload A|B|C] [--hand-written] [--top 25]
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import funcnn as fn  # noqa: E402


def workload(name):
    """(model, optimizer, x, y) of a benchmark workload, with its own random data."""
    if name == "C":
        import cnn
        x, y = cnn.data()
        return cnn.funcnn_model(), fn.optim.adam(cnn.LR), x, y
    import mlp
    spec = mlp.WORKLOADS[name]
    x, y = mlp.data()
    return mlp.funcnn_model(spec), mlp.funcnn_optimizer(spec), x, y


def kernel_times(trace_dir) -> tuple[collections.Counter, collections.Counter]:
    """Total microseconds and call counts per kernel name, from the Perfetto trace JSON."""
    path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
        events = json.load(f)["traceEvents"]
    total, calls = collections.Counter(), collections.Counter()
    for event in events:
        name = event.get("name", "")
        # Python frames start with "$"; runtime and compiler scopes contain "::".
        if event.get("ph") != "X" or name.startswith("$") or "::" in name or "Pjit" in name:
            continue
        total[name] += event.get("dur", 0)
        calls[name] += 1
    return total, calls


def describe(hlo_text: str, kernel: str) -> tuple[str, str]:
    """(output shape, jax operation) of the HLO instruction named `kernel`."""
    match = re.search(r"%" + re.escape(kernel) + r" = (\S+) [^\n]*", hlo_text)
    if not match:
        return "", ""
    op = re.search(r'op_name="([^"]*)"', match.group(0))
    return match.group(1), (op.group(1).split("/")[-1] if op else "")


def warm_epoch(model, optimizer, x, y, batch: int, hand_written: bool = False):
    """fit's guarded epoch program over (x, y), compiled and run once: (compiled, run() -> one more
    epoch, ms per step of a timed warm epoch)."""
    step = fn.train.make_step(model, fn.losses.softmax_cross_entropy, optimizer,
                              hand_written=hand_written)
    epoch = jax.jit(fn.train.make_epoch(step, batch))
    params, state = model.init(jax.random.key(0), x.shape[1:])
    carry = fn.train.start(params, state, optimizer.init(params))
    x, y = jnp.asarray(x), jnp.asarray(y)
    order = jnp.asarray(fn.train.epoch_order(jax.random.key(1), len(x), batch))
    compiled = epoch.lower(carry, x, y, jax.random.key(1), order).compile()
    run = lambda: jax.block_until_ready(compiled(carry, x, y, jax.random.key(1), order))
    run()
    start = time.perf_counter()
    run()
    return compiled, run, (time.perf_counter() - start) / (len(x) // batch) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["A", "B", "C"], default="C")
    parser.add_argument("--hand-written", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    model, optimizer, x, y = workload(args.workload)
    batch = 128
    steps = len(x) // batch
    compiled, run, ms = warm_epoch(model, optimizer, x, y, batch, args.hand_written)
    print(f"workload {args.workload} ({'hand-written' if args.hand_written else 'jax.grad'}): "
          f"{ms:.2f} ms per step unprofiled")
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            run()
        total, calls = kernel_times(trace_dir)
    hlo = compiled.as_text()
    print(f"{'kernel':<40}{'ms/step':>9}{'calls/step':>12}  {'output':<34}operation")
    for name, micros in total.most_common(args.top):
        shape, op = describe(hlo, name)
        print(f"{name[:39]:<40}{micros / steps / 1e3:>9.3f}{calls[name] / steps:>12.2f}  "
              f"{shape[:33]:<34}{op}")
    print(f"all listed kernels: {sum(total.values()) / steps / 1e3:.2f} ms per step "
          f"(profiled; overlapping kernels count twice)")


if __name__ == "__main__":
    main()
