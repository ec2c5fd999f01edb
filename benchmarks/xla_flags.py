"""XLA:CPU options against workloads A, B and C: steady samples/s per XLA_FLAGS setting, and
whether the setting changes the trained result.

Each setting runs in its own subprocess (XLA reads XLA_FLAGS once, when jax starts its backend):
A (784-512-512-10 ReLU Adam) and B (784-64-16-10 sigmoid/tanh SGD) from benchmarks/mlp.py and
C (the CNN of benchmarks/cnn.py), each as `fn.train.fit` (harness.fit_epochs), measured alternating
inside the child with benchmarks/harness.py. The child also runs `--check-steps` jitted
`make_step` steps of each workload from the same init on the same batches and saves the
parameters; the parent prints max |Δθ| against the baseline's (0 = bit-identical) and the largest
per-leaf ‖Δθ‖/‖θ‖. It also counts the library fusions (YNNPACK / XNNPACK / oneDNN custom
fusions) in C's compiled step, to show whether a flag took effect. A flag this jaxlib does not
know kills XLA at start-up; that setting is reported as "not supported by this jaxlib".

    python benchmarks/xla_flags.py [--seconds 2] [--repeats 3] [--examples 60000]
                                   [--flags="--xla_cpu_enable_fast_math=true" ...]
                                   [--combine-winners] [--list]

`--list` prints the xla_cpu_* option names found in the installed jaxlib's binary and exits.
`--cpus 1` runs a setting on one core (sched_setaffinity before jax starts: XLA's intra-op
thread pool follows the affinity); the default list includes that setting as "1 CPU".
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
# (label, XLA_FLAGS, cpus or None). Option names from this jaxlib (0.10.2; `--list`).
SETTINGS = [
    ("baseline", "", None),
    ("legacy runtime (thunks off)", "--xla_cpu_use_thunk_runtime=false", None),
    ("fast math", "--xla_cpu_enable_fast_math=true", None),
    ("fast min/max", "--xla_cpu_enable_fast_min_max=true", None),
    ("YNN off (Eigen dots/convs)", "--xla_cpu_experimental_ynn_fusion_type=", None),
    ("YNN, no convolutions", "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
     None),
    ("YNN + eltwise,reduce fusions",
     "--xla_cpu_experimental_ynn_fusion_type=+dot,+eltwise,+reduce", None),
    ("XNN fusions dot,eltwise,reduce",
     "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce", None),
    ("XNN graph fusion greedy",
     "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY", None),
    ("XNNPACK on", "--xla_cpu_use_xnnpack=true", None),
    ("oneDNN on", "--xla_cpu_use_onednn=true", None),
    ("oneDNN custom calls",
     "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true", None),
    ("oneDNN fusions dot,eltwise,reduce",
     "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce", None),
    ("multi-thread Eigen off", "--xla_cpu_multi_thread_eigen=false", None),
    ("concurrency-optimized scheduler",
     "--xla_cpu_enable_concurrency_optimized_scheduler=true", None),
    ("prefer 512-bit vectors", "--xla_cpu_prefer_vector_width=512", None),
    ("1 CPU", "", 1),
]
WORKLOADS = ("A", "B", "C")


# ---------------------------------------------------------------------------------------------
# Child: one setting, in a fresh process.


def child(args):
    if args.cpus:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.cpus]))
    sys.path.insert(0, HERE)
    import jax
    import jax.numpy as jnp
    import numpy as np

    import cnn
    import mlp
    import funcnn as fn
    from harness import fit_epochs, measure

    def workload(name):
        if name == "C":
            x, y = cnn.data()
            return cnn.funcnn_model(), fn.optim.adam(cnn.LR), x, y
        spec = mlp.WORKLOADS[name]
        x, y = mlp.data(n=args.examples)
        return mlp.funcnn_model(spec), mlp.funcnn_optimizer(spec), x, y

    built = {name: workload(name) for name in WORKLOADS}
    loss = fn.losses.softmax_cross_entropy
    contenders = {name: (lambda m=m, o=o, x=x, y=y: fit_epochs(m, loss, o, x, y, batch=128))
                  for name, (m, o, x, y) in built.items()}
    results = measure(contenders, batch=128, seconds=args.seconds, repeats=args.repeats)
    out = {"rates": {k: r["samples_per_s"] for k, r in results.items()}, "fusions": {}}
    saved = {}
    for name, (model, opt, x, y) in built.items():
        step = jax.jit(fn.train.make_step(model, loss, opt))
        params, state = model.init(jax.random.key(0), x.shape[1:])
        opt_state, key = opt.init(params), jax.random.key(1)
        if name == "C":
            text = step.lower(params, state, opt_state, x[:128], y[:128], key).compile().as_text()
            for kind in ("__ynn_fusion", "__xnn_fusion", "__onednn"):
                out["fusions"][kind.strip("_")] = len(re.findall(re.escape(kind), text))
            out["fusions"]["onednn custom calls"] = len(re.findall(r'custom_call_target="__onednn',
                                                                   text))
        for i in range(args.check_steps):
            j = i % (len(x) // 128)
            params, state, opt_state, _ = step(params, state, opt_state,
                                               jnp.asarray(x[j * 128:(j + 1) * 128]),
                                               jnp.asarray(y[j * 128:(j + 1) * 128]), key)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params):
            saved[f"{name}{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
    np.savez(args.save, **saved)
    print("RESULT " + json.dumps(out))


# ---------------------------------------------------------------------------------------------
# Parent: the sweep.


def jaxlib_flags():
    """xla_cpu_* option names in the installed jaxlib's binaries (read from their strings)."""
    import jaxlib
    names = set()
    for path in glob.glob(os.path.join(os.path.dirname(jaxlib.__file__), "*.so")):
        with open(path, "rb") as f:
            names.update(m.decode() for m in re.findall(rb"(?<=\x00)xla_cpu_[a-z0-9_]+(?=\x00)",
                                                              f.read()))
    names = {n for n in names if "__" not in n and not n.endswith("_")}
    return sorted(n for n in names if not any(m != n and m.startswith(n) for m in names))


def run_setting(label, flags, cpus, args, save):
    env = dict(os.environ, XLA_FLAGS=flags)
    command = [sys.executable, os.path.abspath(__file__), "--child", "--save", save,
               "--seconds", str(args.seconds), "--repeats", str(args.repeats),
               "--examples", str(args.examples), "--check-steps", str(args.check_steps)]
    if cpus:
        command += ["--cpus", str(cpus)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=args.timeout)
    found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if "Unknown flag" in proc.stderr or "Unknown flags" in proc.stderr:
        return {"status": "not supported by this jaxlib"}
    if proc.returncode or not found:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"status": f"failed (exit {proc.returncode}): {tail[:100]}"}
    result = json.loads(found[-1][len("RESULT "):])
    result["status"] = "ok"
    if "no longer supported" in proc.stderr:
        result["status"] = "ok, flag ignored (no longer supported)"
    return result


def differences(base_file, other_file):
    """Per workload: (max |Δθ|, max over leaves of ‖Δθ‖/‖θ‖) against the baseline."""
    import numpy as np
    base, other = np.load(base_file), np.load(other_file)
    out = {}
    for name in WORKLOADS:
        keys = [k for k in base.files if k.startswith(name)]
        abs_d = max(float(np.max(np.abs(base[k] - other[k]))) for k in keys)
        rel_d = max(float(np.linalg.norm(base[k] - other[k]) / max(np.linalg.norm(base[k]), 1e-30))
                    for k in keys)
        out[name] = (abs_d, rel_d)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=60_000,
                        help="examples per epoch of A and B (C: cnn.py's 7,680)")
    parser.add_argument("--check-steps", type=int, default=20)
    parser.add_argument("--flags", action="append",
                        help="an XLA_FLAGS setting to run instead of the default list "
                             "(repeatable; the baseline always runs)")
    parser.add_argument("--combine-winners", action="store_true",
                        help="then run all settings that won ≥ 2 %% on some workload, together")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    parser.add_argument("--cpus", type=int, default=0)
    args = parser.parse_args()
    if args.child:
        return child(args)
    known = jaxlib_flags()
    print(f"xla_cpu_* options in this jaxlib ({len(known)}): {' '.join(known)}")
    if args.list:
        return
    settings = SETTINGS if not args.flags else [SETTINGS[0]] + [(f, f, None) for f in args.flags]
    if args.cpus:
        settings = [(f"{label}, {args.cpus} CPU", flags, args.cpus) for label, flags, _ in settings]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        def sweep(items):
            for i, (label, flags, cpus) in enumerate(items):
                save = os.path.join(tmp, f"{len(results)}.npz")
                r = run_setting(label, flags, cpus, args, save)
                r["save"], r["flags"] = save, flags
                results[label] = r
                print(f"  {label}: {r['status']}", flush=True)
        sweep(settings)
        if args.combine_winners:
            base = results["baseline"]
            winners = [r["flags"] for label, r in results.items() if label != "baseline"
                       and r.get("rates") and r["flags"]
                       and any(r["rates"][w] > 1.02 * base["rates"][w] for w in WORKLOADS)]
            if len(winners) > 1:
                sweep([("winners combined", " ".join(winners), None)])
            else:
                print(f"  (combine: {len(winners)} winning flag setting(s), nothing to combine)")
        report(results)


def report(results):
    base = results["baseline"]
    print(f"\n{'setting':<34}" + "".join(f"{w + ' samples/s':>15}{'×':>6}" for w in WORKLOADS)
          + "  max|Δθ| A/B/C (rel.)  library fusions in C")
    for label, r in results.items():
        if not r.get("rates"):
            print(f"{label[:33]:<34}{r['status']}")
            continue
        line = f"{label[:33]:<34}"
        for w in WORKLOADS:
            rate = r["rates"][w]
            line += f"{rate:>15,.0f}{rate / base['rates'][w]:>5.2f}x"
        if r is base:
            diff = "reference"
        else:
            d = differences(base["save"], r["save"])
            diff = " ".join(f"{d[w][0]:.1e}({d[w][1]:.0e})" for w in WORKLOADS)
        fusions = ",".join(f"{k}={v}" for k, v in r["fusions"].items() if v) or "none"
        print(f"{line}  {diff:<30}{fusions}" + ("" if r["status"] == "ok" else f"  [{r['status']}]"))
    print("(×: samples/s ÷ the baseline's; max|Δθ| after the check steps, 0 = bit-identical; "
          "rel. = the largest per-leaf ‖Δθ‖/‖θ‖)")
    print("JSON " + json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "save"}
                               for k, v in results.items()}))


if __name__ == "__main__":
    main()
