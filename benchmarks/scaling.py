"""How cost grows: samples/s and peak memory of a 784-W-W-10 ReLU MLP (Adam 1e-3) over batch size
(32…1024 at W = 512) and over width (64…2048 at batch 128), for funcnn, stax and PyTorch eager.

funcnn runs `fn.train.make_step` jitted with donated buffers in a per-step loop over pre-made
device batches (not `fit`: every contender does the same per-step work); stax is
`jax.example_libraries` (stax layers, its adam) jitted the same way; PyTorch its idiomatic eager
step. A peer that is not installed is skipped. Each (point, contender) runs in its own
subprocess, so its peak RSS (`resource.getrusage`) is its own; speed is the median of
`--repeats` rounds of ≥ `--seconds` (benchmarks/harness.py), the contenders one after another.
Device bytes: jax's `memory_stats()["peak_bytes_in_use"]` where the backend has it (not XLA:CPU);
otherwise the compiled step's arguments + outputs + temporaries − aliased (`memory_analysis()`),
for the JAX contenders.

    python benchmarks/scaling.py [--seconds 2] [--repeats 3] [--out out/scaling.png] [--quick]

Prints one table and a JSON line, and draws samples/s against batch and against width (two
panels, log axes) into `--out`.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BATCHES, WIDTHS = (32, 64, 128, 256, 512, 1024), (64, 128, 256, 512, 1024, 2048)
CONTENDERS = {"funcnn make_step": (), "stax": (), "PyTorch eager": ("torch",)}


def points(quick):
    batches, widths = ((32, 128), (64, 256)) if quick else (BATCHES, WIDTHS)
    return [("batch", b, 512, b) for b in batches] + [("width", w, w, 128) for w in widths]


# ---------------------------------------------------------------------------------------------
# Child: one contender at one (width, batch).


def child(name, width, batch, seconds, repeats):
    sys.path.insert(0, HERE)
    import jax
    import jax.numpy as jnp
    import numpy as np

    import funcnn as fn
    import mlp
    from harness import looped, measure, peak_rss_mib, torch_loop

    spec = {"sizes": (784, width, width, 10), "activations": ("relu", "relu"),
            "optimizer": "adam", "lr": 1e-3}
    rng = np.random.default_rng(0)
    host = [(rng.random((batch, 784), np.float32), rng.integers(0, 10, batch).astype(np.int32))
            for _ in range(8)]
    batches = [(jnp.asarray(x), jnp.asarray(y)) for x, y in host]
    device_bytes = {}

    def analysed(step, *args):
        m = step.lower(*args).compile().memory_analysis()
        device_bytes["xla_step_bytes"] = (m.argument_size_in_bytes + m.output_size_in_bytes
                                          + m.temp_size_in_bytes - m.alias_size_in_bytes)

    def funcnn_loop():
        model, opt = mlp.funcnn_model(spec), mlp.funcnn_optimizer(spec)
        params, state = model.init(jax.random.key(0), (784,))
        step = jax.jit(fn.train.make_step(model, fn.losses.softmax_cross_entropy, opt),
                       donate_argnums=(0, 1, 2))
        key, carry = jax.random.key(1), (params, state, opt.init(params))
        analysed(step, *carry, *batches[0], key)
        return looped(lambda p, s, o, x, y: step(p, s, o, x, y, key)[:3], carry, batches)

    def stax_loop():
        from jax.example_libraries import optimizers, stax
        init, apply = stax.serial(stax.Dense(width), stax.Relu, stax.Dense(width), stax.Relu,
                                  stax.Dense(10))
        _, params = init(jax.random.key(0), (-1, 784))
        opt_init, opt_update, get_params = optimizers.adam(1e-3)

        def loss(params, x, y):
            logp = jax.nn.log_softmax(apply(params, x))
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

        def update(opt_state, count, x, y):
            return opt_update(count, jax.grad(loss)(get_params(opt_state), x, y), opt_state), \
                count + 1

        step = jax.jit(update, donate_argnums=(0,))
        carry = (opt_init(params), jnp.int32(0))
        analysed(step, *carry, *batches[0])
        return looped(step, carry, batches)

    def torch_eager():
        import torch
        t = torch.nn
        torch.manual_seed(0)
        model = t.Sequential(t.Linear(784, width), t.ReLU(), t.Linear(width, width), t.ReLU(),
                             t.Linear(width, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        return torch_loop(model, opt, [(torch.tensor(x), torch.tensor(y).long()) for x, y in host])

    factory = {"funcnn make_step": funcnn_loop, "stax": stax_loop,
               "PyTorch eager": torch_eager}[name]
    result = measure({name: factory}, batch=batch, seconds=seconds, repeats=repeats)[name]
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        device_bytes["peak_bytes_in_use"] = stats["peak_bytes_in_use"]
    print("RESULT " + json.dumps({"samples_per_s": result["samples_per_s"],
                                  "first_step_s": result["first_step_s"],
                                  "peak_rss_mib": peak_rss_mib(), **device_bytes}))


# ---------------------------------------------------------------------------------------------
# Parent: the sweep, the table, the plot.


def run_point(name, width, batch, args):
    command = [sys.executable, os.path.abspath(__file__), "--child", name, "--width", str(width),
               "--batch", str(batch), "--seconds", str(args.seconds), "--repeats",
               str(args.repeats)]
    proc = subprocess.run(command, capture_output=True, text=True)
    found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not found:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:120]}"}
    return json.loads(found[-1][len("RESULT "):])


def plot(rows, names, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, sweep, label in ((axes[0], "batch", "batch size (width 512)"),
                             (axes[1], "width", "width W (batch 128)")):
        for name in names:
            pts = [(r["value"], r[name]["samples_per_s"]) for r in rows
                   if r["sweep"] == sweep and "samples_per_s" in r.get(name, {})]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("training samples/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("784-W-W-10 ReLU MLP, Adam: training throughput")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="out/scaling.png")
    parser.add_argument("--quick", action="store_true", help="two batch sizes, two widths")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.width, args.batch, args.seconds, args.repeats)
    names = []
    for name, modules in CONTENDERS.items():
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            print(f"(skipping {name}: {', '.join(missing)} not installed)")
        else:
            names.append(name)
    rows = []
    for sweep, value, width, batch in points(args.quick):
        row = {"sweep": sweep, "value": value, "width": width, "batch": batch}
        for name in names:
            row[name] = run_point(name, width, batch, args)
        rows.append(row)
        print(f"  {sweep} {value}: done", flush=True)
    head = f"{'sweep':<7}{'W':>6}{'batch':>7}"
    for name in names:
        head += f" | {name[:16]:>16} {'RSS MiB':>8} {'XLA MiB':>8}"
    print(f"\nsamples/s, peak RSS of the process, XLA step bytes (args + outputs + temps)\n{head}")
    for row in rows:
        line = f"{row['sweep']:<7}{row['width']:>6}{row['batch']:>7}"
        for name in names:
            r = row[name]
            if "error" in r:
                line += f" | {r['error'][:34]:>34}"
                continue
            xla = r.get("peak_bytes_in_use", r.get("xla_step_bytes"))
            line += (f" | {r['samples_per_s']:>16,.0f} {r['peak_rss_mib']:>8.0f} "
                     f"{(f'{xla / 2**20:.1f}' if xla else '–'):>8}")
        print(line)
    print("JSON " + json.dumps(rows))
    plot(rows, names, args.out)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
