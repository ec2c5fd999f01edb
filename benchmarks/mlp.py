"""MLP training throughput: funcnn against its peers, in one process, alternating.

(A) 784-512-512-10 ReLU, Adam(1e-3), batch 128.  (B) the notes' 784-64-16-10 sigmoid → tanh →
softmax, SGD(0.5), batch 128. Peers in their idiomatic form, when installed (`pip install
'funcnn[bench]' torch`): plain JAX + optax, equinox + optax, flax.nnx + optax, PyTorch eager.
Each JAX contender is jitted with donated buffers and fed pre-made device batches.

    python benchmarks/mlp.py [--workload A|B|both] [--seconds 3] [--repeats 3]

Prints a table and a JSON line per workload, plus the matmul ceiling measured in the same run
and workload A's funcnn rate as a fraction of it.
"""
import argparse
import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import funcnn as fn  # noqa: E402
from funcnn import nn  # noqa: E402
from harness import (  # noqa: E402
    fit_epochs, looped, matmul_ceiling, measure, nnx_loop, optax_loop, report, torch_loop)

BATCH, EPOCH = 128, 60_000
WORKLOADS = {
    "A": {"sizes": (784, 512, 512, 10), "activations": ("relu", "relu"), "optimizer": "adam",
          "lr": 1e-3},
    "B": {"sizes": (784, 64, 16, 10), "activations": ("sigmoid", "tanh"), "optimizer": "sgd",
          "lr": 0.5},
}


def flops_per_sample(sizes):
    """Training ≈ 3 × the forward's 2·Σ in·out multiply-adds (forward, two backward GEMMs)."""
    return 3 * 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def data(seed=0, n=EPOCH):
    rng = np.random.default_rng(seed)
    return rng.random((n, 784), np.float32), rng.integers(0, 10, n).astype(np.int32)


def device_batches(x, y, count=64):
    return [(jnp.asarray(x[i * BATCH:(i + 1) * BATCH]), jnp.asarray(y[i * BATCH:(i + 1) * BATCH]))
            for i in range(count)]


# ---------------------------------------------------------------------------------------------
# funcnn.


def funcnn_model(spec):
    layers = [nn.Flatten()]
    acts = {"relu": nn.Relu, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
    for width, act in zip(spec["sizes"][1:-1], spec["activations"]):
        layers += [nn.Dense(width), acts[act]()]
    return nn.serial(*layers, nn.Dense(spec["sizes"][-1]))


def funcnn_optimizer(spec):
    return getattr(fn.optim, spec["optimizer"])(spec["lr"])


def funcnn_fit(spec, x, y, hand_written=False):
    return fit_epochs(funcnn_model(spec), fn.losses.softmax_cross_entropy, funcnn_optimizer(spec),
                      x, y, batch=BATCH, hand_written=hand_written)


def funcnn_step_loop(spec, batches):
    model, loss, opt = funcnn_model(spec), fn.losses.softmax_cross_entropy, funcnn_optimizer(spec)
    params, state = model.init(jax.random.key(0), (784,))
    step = jax.jit(fn.train.make_step(model, loss, opt), donate_argnums=(0, 1, 2))
    key = jax.random.key(1)
    return looped(lambda p, s, o, x, y: step(p, s, o, x, y, key)[:3],
                  (params, state, opt.init(params)), batches)


# ---------------------------------------------------------------------------------------------
# Peers (idiomatic forms).


def optax_optimizer(spec):
    import optax
    return getattr(optax, spec["optimizer"])(spec["lr"])


def _jax_act(name):
    return {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}[name]


def plain_jax(spec, batches):
    import optax
    keys = jax.random.split(jax.random.key(0), len(spec["sizes"]))
    params = [(jax.random.normal(k, (a, b)) / np.sqrt(a), jnp.zeros(b))
              for k, a, b in zip(keys, spec["sizes"][:-1], spec["sizes"][1:])]
    tx = optax_optimizer(spec)

    def loss_fn(params, x, y):
        for (w, b), act in zip(params[:-1], spec["activations"]):
            x = _jax_act(act)(x @ w + b)
        w, b = params[-1]
        return optax.softmax_cross_entropy_with_integer_labels(x @ w + b, y).mean()

    return optax_loop(loss_fn, params, tx, batches)


def equinox_mlp(spec, batches):
    import equinox as eqx
    import optax
    sizes, acts = spec["sizes"], [_jax_act(a) for a in spec["activations"]]
    keys = jax.random.split(jax.random.key(0), len(sizes))
    layers = [eqx.nn.Linear(a, b, key=k) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]
    tx = optax_optimizer(spec)

    def forward(layers, x):
        for layer, act in zip(layers[:-1], acts):
            x = act(jax.vmap(layer)(x))
        return jax.vmap(layers[-1])(x)

    @eqx.filter_jit(donate="all")
    def step(layers, opt_state, x, y):
        def loss_fn(layers):
            return optax.softmax_cross_entropy_with_integer_labels(forward(layers, x), y).mean()
        grads = eqx.filter_grad(loss_fn)(layers)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(layers, eqx.is_array))
        return eqx.apply_updates(layers, updates), opt_state

    return looped(step, (layers, tx.init(eqx.filter(layers, eqx.is_array))), batches)


def flax_nnx(spec, batches):
    from flax import nnx
    sizes, acts = spec["sizes"], [_jax_act(a) for a in spec["activations"]]

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs)
                                    for a, b in zip(sizes[:-1], sizes[1:])])

        def __call__(self, x):
            for layer, act in zip(self.layers[:-1], acts):
                x = act(layer(x))
            return self.layers[-1](x)

    return nnx_loop(MLP(nnx.Rngs(0)), optax_optimizer(spec), batches)


def torch_eager(spec, batches):
    import torch
    sizes = spec["sizes"]
    acts = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh}
    layers = []
    for a, b, act in zip(sizes[:-2], sizes[1:-1], spec["activations"]):
        layers += [torch.nn.Linear(a, b), acts[act]()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-2], sizes[-1]))
    opt = getattr(torch.optim, {"adam": "Adam", "sgd": "SGD"}[spec["optimizer"]])(
        model.parameters(), lr=spec["lr"])
    torch_batches = [(torch.tensor(np.asarray(x)), torch.tensor(np.asarray(y)).long())
                     for x, y in batches]
    return torch_loop(model, opt, torch_batches)


PEERS = {"plain JAX + optax": (plain_jax, ("optax",)),
         "equinox + optax": (equinox_mlp, ("equinox", "optax")),
         "flax.nnx + optax": (flax_nnx, ("flax", "optax")),
         "PyTorch eager": (torch_eager, ("torch",))}


def contenders(spec, x, y):
    batches = device_batches(x, y)
    found = {"funcnn fit (epoch scan)": lambda: funcnn_fit(spec, x, y),
             "funcnn fit, hand-written grads": lambda: funcnn_fit(spec, x, y, hand_written=True),
             "funcnn make_step loop": lambda: funcnn_step_loop(spec, batches)}
    for name, (build, modules) in PEERS.items():
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            print(f"(skipping {name}: {', '.join(missing)} not installed)")
            continue
        found[name] = lambda build=build: build(spec, batches)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["A", "B", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    x, y = data()
    ceiling = matmul_ceiling()
    print(f"matmul ceiling: {ceiling:.1f} GFLOP/s (float32 128×784 @ 784×512 chain)")
    for name in (["A", "B"] if args.workload == "both" else [args.workload]):
        spec = WORKLOADS[name]
        results = measure(contenders(spec, x, y), batch=BATCH, seconds=args.seconds,
                          repeats=args.repeats, epoch_steps=EPOCH // BATCH)
        bound = ceiling * 1e9 / flops_per_sample(spec["sizes"])
        best_peer = max((r["samples_per_s"] for k, r in results.items() if not k.startswith("funcnn")),
                        default=float("nan"))
        ours = results["funcnn fit (epoch scan)"]["samples_per_s"]
        extra = {"ceiling_gflops": ceiling, "ceiling_samples_per_s": bound,
                 "fit_fraction_of_ceiling": ours / bound, "fit_vs_best_peer": ours / best_peer}
        report(f"workload {name}: {'-'.join(map(str, spec['sizes']))} "
               f"{'/'.join(spec['activations'])}, {spec['optimizer']}, batch {BATCH}", results,
               reference="funcnn fit (epoch scan)", extra=extra)
        print(f"ceiling for this model: {bound:,.0f} samples/s; funcnn fit reaches "
              f"{100 * ours / bound:.0f} % of it and {ours / best_peer:.2f}× the best peer")


if __name__ == "__main__":
    main()
