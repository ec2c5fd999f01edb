"""Where one training step of workload C goes, side by side: funcnn (XLA) and PyTorch eager.

Workload C (benchmarks/cnn.py): conv 5×5×32 → ReLU → max-pool 2 → conv 5×5×64 → ReLU →
max-pool 2 → dense 256 → ReLU → dense 10, softmax cross-entropy, Adam(1e-3), batch 128.
funcnn runs the guarded epoch program `fn.train.fit` runs (`make_epoch(make_step(...))`, jitted,
`--steps` steps) under `jax.profiler.trace`; PyTorch runs benchmarks/cnn.py's eager step
(`torch_loop`) for `--steps` steps under `torch.profiler`. One table, in ms per step:

    python benchmarks/profile_step.py [--steps 20] [--show-kernels]

Both columns add up to the profiled step's wall time (profiler overhead included; the unprofiled
rates are printed above the table). Mapping rules:

funcnn — every trace event named after an instruction of the compiled HLO is a kernel; a kernel's
  time is its wall time less its nested kernels' (a while loop keeps only its own time), and where
  kernels run at once on several threads each instant is shared evenly among them, so kernels
  never count twice. A fusion is named by its "anchor": the fused instruction with the heaviest
  opcode (dot/convolution > gather/scatter/window ops > reduce > the rest, then the largest
  output). The anchor's source stack (the HLO's StackFrames) names the layer: the innermost of
  Conv2D / MaxPool / Dense / the elementwise ReLU / the loss / the optimizer (scale_by_adam,
  apply_updates, …); "transpose(" in its op_name marks backward (jax.grad) work. Which conv, and
  input against weight gradient, come from element counts: a backward conv kernel producing the
  kernel's or the bias's size is a weight gradient, anything else an input gradient; conv 1 vs 2
  by the patch/output/weight sizes of each layer at batch 128. Kernels with no stack (copies XLA
  inserted) go by the same element counts, else to "other kernels"; time with no kernel running
  is "runtime gaps / host". Work XLA fused into another row's kernel (a pool's backward routing
  into the ReLU's backward, say) is counted in that row.
PyTorch — each op's self CPU time goes to the row of its nearest ancestor-or-self that names one:
  aten::convolution (conv 1 or 2 by the weight's shape) forward; aten::convolution_backward and
  ConvolutionBackward0 — conv 1's is its weight (and bias) gradient only (the input needs none),
  conv 2's computes the input and weight gradients in one op, so it has its own row and the
  funcnn side is compared with the sum of its two rows; max_pool2d(_with_indices)(_backward);
  relu / threshold_backward; addmm/linear (forward) and AddmmBackward0 (backward); log_softmax /
  nll_loss / cross_entropy and their backward; Optimizer.* / Adam / _foreach_* (optimizer).
  Unnamed ops go to "other kernels"; wall time outside every op is "runtime gaps / host".
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
import cnn  # noqa: E402
import kernels  # noqa: E402

B = cnn.BATCH
ROWS = ["conv1 forward", "conv2 forward", "conv1 input grad", "conv2 input grad",
        "conv1 weight grad", "conv2 weight grad", "conv2 input+weight grad (torch: one op)",
        "pool forward", "pool backward", "ReLU fwd/bwd", "dense forward", "dense backward",
        "loss fwd/bwd", "optimizer", "other kernels", "runtime gaps / host"]
# Element counts of each conv layer's tensors at batch 128: input, im2col patches, output,
# kernel, bias (patch counts are funcnn's GEMM path; the rest any formulation's).
CONV_SIZES = {1: {B * 28 * 28: "x", B * 24 * 24 * 25: "patches", B * 24 * 24 * 32: "y",
                  5 * 5 * 1 * 32: "w", 32: "b"},
              2: {B * 12 * 12 * 32: "x", B * 8 * 8 * 800: "patches", B * 8 * 8 * 64: "y",
                  5 * 5 * 32 * 64: "w", 64: "b"}}
WEIGHT = {"w", "b"}
OPCODE_WEIGHT = {"dot": 4, "convolution": 4, "gather": 3, "scatter": 3, "reduce-window": 3,
                 "select-and-scatter": 3, "reduce": 2}
OPTIMIZER_FUNCS = ("scale_by_adam", "apply_updates", "_injected", "scale_by_learning_rate",
                   "chain.<locals>.update")


# ---------------------------------------------------------------------------------------------
# funcnn: the compiled HLO, its source stacks, and the trace.


def _elements(shape_text):
    """Element count of the first array shape in an HLO type ("f32[8,5]{1,0}" → 40)."""
    match = re.search(r"\w+\[([\d,]*)\]", shape_text)
    if not match:
        return 0
    count = 1
    for d in filter(None, match.group(1).split(",")):
        count *= int(d)
    return count


class Hlo:
    """Instructions of a compiled HLO module (name → dict) and their source stacks."""

    LINE = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = (.+?) ([a-z][a-z0-9\-]*)\((.*)$")

    def __init__(self, text):
        self.inst, self.comps, comp = {}, collections.defaultdict(list), None
        for line in text.splitlines():
            head = re.match(r"^(?:ENTRY\s+)?%([\w.\-]+) .*\{$", line)
            if head:
                comp = head.group(1)
                continue
            match = self.LINE.match(line)
            if not match or comp is None:
                continue
            name, shape, opcode, rest = match.groups()
            op_name = re.search(r'op_name="([^"]*)"', rest)
            frame = re.search(r"stack_frame_id=(\d+)", rest)
            calls = re.findall(r"calls=%([\w.\-]+)", rest)
            self.inst[name] = {"comp": comp, "shape": shape, "opcode": opcode,
                               "elements": _elements(shape), "calls": calls,
                               "operands": re.findall(r"%([\w.\-]+)", rest.split(")")[0]),
                               "op_name": op_name.group(1) if op_name else "",
                               "frame": int(frame.group(1)) if frame else 0}
            self.comps[comp].append(name)
        self._frames(text)

    def _frames(self, text):
        def table(title):
            match = re.search(r"^" + title + r"\n(.*?)\n\n", text, re.S | re.M)
            rows = match.group(1).splitlines() if match else []
            return {int(r.split(" ", 1)[0]): r.split(" ", 1)[1] for r in rows}
        self.funcs = {k: v.strip('"') for k, v in table("FunctionNames").items()}
        self.locs = {k: dict(re.findall(r"(\w+)=(\d+)", v))
                     for k, v in table("FileLocations").items()}
        self.frames = {k: dict(re.findall(r"(\w+)=(\d+)", v))
                       for k, v in table("StackFrames").items()}

    def stack(self, frame):
        """Function names, innermost first (a frame's printed parent id is one above its key)."""
        names, seen = [], set()
        while frame in self.frames and frame not in seen:
            seen.add(frame)
            loc = self.locs.get(int(self.frames[frame]["file_location_id"]), {})
            names.append(self.funcs.get(int(loc.get("function_name_id", 0)), "?"))
            frame = int(self.frames[frame]["parent_frame_id"]) - 1
        return names

    def anchor(self, name):
        """The instruction that names kernel `name`: itself, or its heaviest fused instruction."""
        inst = self.inst[name]
        candidates = [name]
        if inst["opcode"] in ("fusion", "custom-call"):
            todo = list(inst["calls"])
            while todo:
                comp = todo.pop()
                for member in self.comps.get(comp, []):
                    candidates.append(member)
                    todo += self.inst[member]["calls"]
        def weight(n):
            i = self.inst[n]
            return (OPCODE_WEIGHT.get(i["opcode"], 1), bool(i["frame"]), i["elements"])
        return max(candidates, key=weight)

    def sizes(self, name):
        """Element counts of an instruction's output and operands."""
        inst = self.inst[name]
        return [inst["elements"]] + [self.inst[o]["elements"] for o in inst["operands"]
                                     if o in self.inst]


def _conv_role(hlo, anchor, backward):
    sizes = hlo.sizes(anchor)
    for layer in (1, 2):
        table = CONV_SIZES[layer]
        if any(s in table and table[s] in ("patches", "w") for s in sizes) or \
                sizes[0] in table:
            if not backward:
                return f"conv{layer} forward"
            kind = "weight" if table.get(sizes[0]) in WEIGHT else "input"
            return f"conv{layer} {kind} grad"
    return None


def funcnn_row(hlo, name):
    """(row, reason) of a kernel, by the rules in the module docstring."""
    anchor = hlo.anchor(name)
    inst = hlo.inst[anchor]
    stack = hlo.stack(inst["frame"])
    backward = "transpose(" in inst["op_name"] or any("backward" in f for f in stack)
    for func in stack:
        if func.startswith("Conv2D.") or func in ("conv2d_as_gemm", "im2col"):
            return _conv_role(hlo, anchor, backward) or "other kernels", func
        if func.startswith("MaxPool."):
            return ("pool backward" if backward else "pool forward"), func
        if func.startswith("Dense."):
            return ("dense backward" if backward else "dense forward"), func
        if func.startswith("_elementwise") or func == "relu":
            return "ReLU fwd/bwd", func
        if func.startswith(("Loss.", "_softmax_xent")):
            return "loss fwd/bwd", func
        if func.startswith(OPTIMIZER_FUNCS):
            return "optimizer", func
    if not inst["frame"]:   # no source: a copy or layout change XLA inserted
        role = _conv_role(hlo, anchor, backward=True)
        if role:
            return role, "by size"
    return "other kernels", "unmapped"


def _leaf_segments(events):
    """Per thread, each event's wall interval less its nested events': (start, end, name)."""
    segments = []
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[e["tid"]].append((e["ts"], e["ts"] + e["dur"], e["name"]))
    for items in by_thread.values():
        items.sort(key=lambda t: (t[0], -t[1]))
        stack = []   # [end, name, cursor]
        def close_until(t):
            while stack and stack[-1][0] <= t:
                end, nm, cur = stack.pop()
                if end > cur:
                    segments.append((cur, end, nm))
                if stack:
                    stack[-1][2] = max(stack[-1][2], end)
        for start, end, nm in items:
            close_until(start)
            if stack:
                top = stack[-1]
                if start > top[2]:
                    segments.append((top[2], start, top[1]))
                top[2] = max(top[2], start)
            stack.append([end, nm, start])
        close_until(float("inf"))
    return segments


def shared_time(segments):
    """Microseconds per name, each instant split evenly among the segments running then."""
    points = sorted({p for s in segments for p in s[:2]})
    index = {p: i for i, p in enumerate(points)}
    starts, ends = collections.defaultdict(list), collections.defaultdict(list)
    for start, end, name in segments:
        if end > start:
            starts[index[start]].append(name)
            ends[index[end]].append(name)
    active, total = collections.Counter(), collections.Counter()
    for i, p in enumerate(points[:-1]):
        for name in ends[i]:
            active[name] -= 1
        for name in starts[i]:
            active[name] += 1
        running = sum(active.values())
        if running:
            width = (points[i + 1] - p) / running
            for name, count in active.items():
                if count:
                    total[name] += width * count
    return total


def profile_funcnn(steps, show):
    x, y = cnn.data(n=steps * B)
    model, optimizer = cnn.funcnn_model(), fn.optim.adam(cnn.LR)
    compiled, run, plain = kernels.warm_epoch(model, optimizer, x, y, B)
    hlo = Hlo(compiled.as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            start = time.perf_counter()
            run()
            wall = time.perf_counter() - start
        path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
        with gzip.open(path) as f:
            events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    # Kernels and the executor scopes around them (whose own time is runtime, not a kernel).
    device = [e for e in events if e["name"] in hlo.inst or e["name"].startswith("ThunkExecutor")]
    per_kernel = shared_time(_leaf_segments(device))
    rows, detail = collections.Counter(), []
    for name, micros in per_kernel.items():
        if name not in hlo.inst:
            continue
        row, reason = funcnn_row(hlo, name)
        rows[row] += micros / steps / 1e3
        detail.append((micros / steps / 1e3, name, row, reason, hlo.inst[hlo.anchor(name)]))
    rows["runtime gaps / host"] = wall / steps * 1e3 - sum(rows.values())
    if show:
        print("\nfuncnn kernels (ms/step, shared wall time) → row")
        for ms, name, row, reason, anchor in sorted(detail, key=lambda t: -t[0]):
            print(f"  {ms:8.3f}  {name[:28]:<28} {row:<22} {reason[:26]:<26} "
                  f"{anchor['opcode']} {anchor['shape'][:30]}")
    return rows, plain, wall / steps * 1e3


# ---------------------------------------------------------------------------------------------
# PyTorch eager.


def torch_own_row(event):
    """The row an op names by itself (None: it inherits its caller's)."""
    name = event.name
    shapes = getattr(event, "input_shapes", None) or []
    conv = 1 if [32, 1, 5, 5] in shapes else 2 if [64, 32, 5, 5] in shapes else None
    if name == "aten::convolution" and conv:
        return f"conv{conv} forward"
    if name == "aten::convolution_backward" and conv:
        return "conv1 weight grad" if conv == 1 else "conv2 input+weight grad (torch: one op)"
    if name.endswith("ConvolutionBackward0"):
        for child in event.cpu_children:
            row = torch_own_row(child) or (torch_own_row(child.cpu_children[0])
                                           if child.cpu_children else None)
            if row:
                return row
        return None
    if "max_pool2d" in name or "MaxPool2D" in name:
        return "pool backward" if "ackward" in name else "pool forward"
    if name in ("aten::relu", "aten::relu_", "aten::threshold_backward") or "ReluBackward" in name:
        return "ReLU fwd/bwd"
    if name in ("aten::linear", "aten::addmm"):
        return "dense forward"
    if "AddmmBackward" in name or "TBackward" in name:
        return "dense backward"
    if any(k in name for k in ("log_softmax", "nll_loss", "cross_entropy", "LogSoftmaxBackward",
                               "NllLossBackward")):
        return "loss fwd/bwd"
    if name.startswith("Optimizer.") or "Adam" in name or "_foreach_" in name:
        return "optimizer"
    return None


def profile_torch(steps):
    import torch
    x, y = cnn.data(n=8 * B)
    batches = [(jnp.asarray(x[i:i + B]), jnp.asarray(y[i:i + B])) for i in range(0, len(x), B)]
    first_step, run_steps = cnn.torch_eager(batches)
    first_step()
    run_steps(5)
    start = time.perf_counter()
    run_steps(steps)
    plain = (time.perf_counter() - start) / steps * 1e3
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=True) as prof:
        start = time.perf_counter()
        run_steps(steps)
        wall = time.perf_counter() - start
    rows = collections.Counter()
    for event in prof.events():
        row, node = None, event
        while node is not None and row is None:
            row = torch_own_row(node)
            node = node.cpu_parent
        rows[row or "other kernels"] += event.self_cpu_time_total / steps / 1e3
    rows["runtime gaps / host"] = wall / steps * 1e3 - sum(rows.values())
    return rows, plain, wall / steps * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="profiled steps per side")
    parser.add_argument("--show-kernels", action="store_true",
                        help="also list funcnn's kernels with their rows")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, batch {B}, {args.steps} steps")
    ours, ours_plain, ours_wall = profile_funcnn(args.steps, args.show_kernels)
    try:
        import torch
        theirs, theirs_plain, theirs_wall = profile_torch(args.steps)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    except ImportError:
        print("(PyTorch not installed: funcnn column only)")
        theirs, theirs_plain, theirs_wall = collections.Counter(), float("nan"), float("nan")
    print(f"unprofiled: funcnn {ours_plain:.2f} ms/step, PyTorch eager {theirs_plain:.2f} "
          f"ms/step; profiled: {ours_wall:.2f} and {theirs_wall:.2f}")
    print(f"\n{'row':<42}{'funcnn ms':>10}{'torch ms':>10}{'ratio':>8}")

    def line(label, a, b):
        ratio = f"{a / b:7.2f}x" if b > 1e-3 and a > 1e-3 else f"{'–':>8}"
        print(f"{label:<42}{a:>10.2f}{b:>10.2f}{ratio}")
    for row in ROWS:
        line(row, ours.get(row, 0.0), theirs.get(row, 0.0))
    line("step (sum of the rows)", sum(ours.values()), sum(theirs.values()))
    conv2 = ROWS[6]
    line("  conv2 input + weight grad, compared",
         ours.get("conv2 input grad", 0) + ours.get("conv2 weight grad", 0),
         theirs.get(conv2, 0) + theirs.get("conv2 input grad", 0)
         + theirs.get("conv2 weight grad", 0))
    print("(ratio: funcnn time ÷ PyTorch time; above 1 means funcnn is slower on that row)")
    print("JSON " + json.dumps({"funcnn_ms": dict(ours), "torch_ms": dict(theirs),
                               "funcnn_unprofiled_ms": ours_plain,
                               "torch_unprofiled_ms": theirs_plain}))


if __name__ == "__main__":
    main()
