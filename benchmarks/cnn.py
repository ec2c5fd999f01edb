"""CNN training throughput (workload C): funcnn against its peers, in one process, alternating.

(C) 28×28×1 images → conv 5×5×32 VALID → ReLU → max-pool 2×2 → conv 5×5×64 VALID → ReLU →
max-pool 2×2 → flatten → dense 256 → ReLU → dense 10, softmax cross-entropy, Adam(1e-3),
batch 128, random data (10 classes). funcnn's `fit` runs one 60-batch epoch (7,680 examples) per
call; "epoch s" in the table is a 60,000-example (MNIST) epoch at the measured rate. Peers in
their idiomatic form, when installed: plain JAX + optax (NHWC/HWIO convolutions), equinox +
optax (NCHW, vmapped over the batch), flax.nnx + optax (NHWC), PyTorch eager (NCHW).

    python benchmarks/cnn.py [--seconds 3] [--repeats 3]

Prints the matmul ceiling, this model's FLOP ceiling in samples/s, a table and a JSON line.
"""
import argparse
import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

import funcnn as fn  # noqa: E402
from funcnn import nn  # noqa: E402
from harness import (  # noqa: E402
    fit_epochs, looped, matmul_ceiling, measure, nnx_loop, optax_loop, report, torch_loop)

BATCH, STEPS_PER_EPOCH, MNIST_EPOCH = 128, 60, 60_000
SHAPE, CLASSES, LR = (28, 28, 1), 10, 1e-3
REFERENCE = "funcnn fit (epoch scan)"


def flops_per_sample():
    """Training ≈ 3 × the forward's multiply-adds: conv 2·ho·wo·cout·kh·kw·cin, dense 2·in·out."""
    conv1 = 2 * 24 * 24 * 32 * 5 * 5 * 1
    conv2 = 2 * 8 * 8 * 64 * 5 * 5 * 32
    dense = 2 * (4 * 4 * 64) * 256 + 2 * 256 * 10
    return 3 * (conv1 + conv2 + dense)


def data(seed=0, n=STEPS_PER_EPOCH * BATCH):
    rng = np.random.default_rng(seed)
    return rng.random((n, *SHAPE), np.float32), rng.integers(0, CLASSES, n).astype(np.int32)


def device_batches(x, y):
    return [(jnp.asarray(x[i:i + BATCH]), jnp.asarray(y[i:i + BATCH]))
            for i in range(0, len(x) - BATCH + 1, BATCH)]


# ---------------------------------------------------------------------------------------------
# funcnn.


def funcnn_model():
    return nn.serial(nn.Conv2D(32, 5), nn.Relu(), nn.MaxPool(2), nn.Conv2D(64, 5), nn.Relu(),
                     nn.MaxPool(2), nn.Flatten(), nn.Dense(256), nn.Relu(), nn.Dense(CLASSES))


def funcnn_fit(x, y, hand_written=False):
    return fit_epochs(funcnn_model(), fn.losses.softmax_cross_entropy, fn.optim.adam(LR), x, y,
                      batch=BATCH, hand_written=hand_written)


def funcnn_step_loop(batches):
    model, loss, opt = funcnn_model(), fn.losses.softmax_cross_entropy, fn.optim.adam(LR)
    params, state = model.init(jax.random.key(0), SHAPE)
    step = jax.jit(fn.train.make_step(model, loss, opt), donate_argnums=(0, 1, 2))
    key = jax.random.key(1)
    return looped(lambda p, s, o, x, y: step(p, s, o, x, y, key)[:3],
                  (params, state, opt.init(params)), batches)


# ---------------------------------------------------------------------------------------------
# Peers (idiomatic forms).


def plain_jax(batches):
    import optax
    k = jax.random.split(jax.random.key(0), 4)
    he = jax.nn.initializers.he_normal()
    params = {"c1": (he(k[0], (5, 5, 1, 32)), jnp.zeros(32)),
              "c2": (he(k[1], (5, 5, 32, 64)), jnp.zeros(64)),
              "d1": (he(k[2], (1024, 256)), jnp.zeros(256)),
              "d2": (he(k[3], (256, CLASSES)), jnp.zeros(CLASSES))}
    tx = optax.adam(LR)

    def conv(x, w, b):
        return lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + b

    def pool(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    def loss_fn(params, x, y):
        x = pool(jax.nn.relu(conv(x, *params["c1"])))
        x = pool(jax.nn.relu(conv(x, *params["c2"])))
        w, b = params["d1"]
        x = jax.nn.relu(x.reshape(len(x), -1) @ w + b)
        w, b = params["d2"]
        return optax.softmax_cross_entropy_with_integer_labels(x @ w + b, y).mean()

    return optax_loop(loss_fn, params, tx, batches)


def equinox_cnn(batches):
    import equinox as eqx
    import optax
    k = jax.random.split(jax.random.key(0), 4)
    pool = eqx.nn.MaxPool2d(2, 2)
    model = eqx.nn.Sequential([
        eqx.nn.Conv2d(1, 32, 5, key=k[0]), eqx.nn.Lambda(jax.nn.relu), pool,
        eqx.nn.Conv2d(32, 64, 5, key=k[1]), eqx.nn.Lambda(jax.nn.relu), pool,
        eqx.nn.Lambda(jnp.ravel), eqx.nn.Linear(1024, 256, key=k[2]),
        eqx.nn.Lambda(jax.nn.relu), eqx.nn.Linear(256, CLASSES, key=k[3])])
    tx = optax.adam(LR)
    nchw = [(jnp.transpose(x, (0, 3, 1, 2)), y) for x, y in batches]   # data prep, once

    @eqx.filter_jit(donate="all")
    def step(model, opt_state, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(model)(x), y).mean()
        grads = eqx.filter_grad(loss_fn)(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state

    return looped(step, (model, tx.init(eqx.filter(model, eqx.is_array))), nchw)


def flax_nnx(batches):
    import optax
    from flax import nnx

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Conv(1, 32, (5, 5), padding="VALID", rngs=rngs)
            self.conv2 = nnx.Conv(32, 64, (5, 5), padding="VALID", rngs=rngs)
            self.dense1 = nnx.Linear(1024, 256, rngs=rngs)
            self.dense2 = nnx.Linear(256, CLASSES, rngs=rngs)

        def __call__(self, x):
            x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
            x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
            return self.dense2(nnx.relu(self.dense1(x.reshape(x.shape[0], -1))))

    return nnx_loop(CNN(nnx.Rngs(0)), optax.adam(LR), batches)


def torch_eager(batches):
    import torch
    torch.manual_seed(0)
    t = torch.nn
    model = t.Sequential(t.Conv2d(1, 32, 5), t.ReLU(), t.MaxPool2d(2),
                         t.Conv2d(32, 64, 5), t.ReLU(), t.MaxPool2d(2),
                         t.Flatten(), t.Linear(1024, 256), t.ReLU(), t.Linear(256, CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    torch_batches = [(torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous(),
                      torch.tensor(np.asarray(y)).long()) for x, y in batches]
    return torch_loop(model, opt, torch_batches)


JAX_PEERS = {"plain JAX + optax": (plain_jax, ("optax",)),
             "equinox + optax": (equinox_cnn, ("equinox", "optax")),
             "flax.nnx + optax": (flax_nnx, ("flax", "optax"))}
PEERS = {**JAX_PEERS, "PyTorch eager": (torch_eager, ("torch",))}


def contenders(x, y):
    batches = device_batches(x, y)
    found = {REFERENCE: lambda: funcnn_fit(x, y),
             "funcnn fit, hand-written grads": lambda: funcnn_fit(x, y, hand_written=True),
             "funcnn make_step loop": lambda: funcnn_step_loop(batches)}
    for name, (build, modules) in PEERS.items():
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            print(f"(skipping {name}: {', '.join(missing)} not installed)")
            continue
        found[name] = lambda build=build: build(batches)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    x, y = data()
    ceiling = matmul_ceiling()
    bound = ceiling * 1e9 / flops_per_sample()
    print(f"matmul ceiling: {ceiling:.1f} GFLOP/s (float32 128×784 @ 784×512 chain)")
    print(f"FLOP ceiling for this CNN: {bound:,.0f} samples/s "
          f"({flops_per_sample() / 1e6:.1f} MFLOP per training sample)")
    results = measure(contenders(x, y), batch=BATCH, seconds=args.seconds, repeats=args.repeats,
                      epoch_steps=MNIST_EPOCH // BATCH)
    rate = {name: r["samples_per_s"] for name, r in results.items()}
    ours, hand, nan = rate[REFERENCE], rate["funcnn fit, hand-written grads"], float("nan")
    best_jax = max((rate[k] for k in JAX_PEERS if k in rate), default=nan)
    extra = {"ceiling_gflops": ceiling, "ceiling_samples_per_s": bound,
             "fit_fraction_of_ceiling": ours / bound,
             "fit_vs_pytorch_eager": ours / rate.get("PyTorch eager", nan),
             "hand_written_fit_vs_pytorch_eager": hand / rate.get("PyTorch eager", nan),
             "fit_vs_best_jax_peer": ours / best_jax,
             "hand_written_vs_jax_grad": hand / ours}
    report(f"workload C: CNN conv5x5x32-pool-conv5x5x64-pool-256-10 ReLU, adam, batch {BATCH}",
           results, reference=REFERENCE, extra=extra)
    print(f"ceiling for this model: {bound:,.0f} samples/s; funcnn fit reaches "
          f"{100 * ours / bound:.0f} % of it, {extra['fit_vs_best_jax_peer']:.2f}× the best JAX "
          f"peer, {extra['fit_vs_pytorch_eager']:.2f}× PyTorch eager; hand-written grads "
          f"{extra['hand_written_vs_jax_grad']:.2f}× jax.grad, "
          f"{extra['hand_written_fit_vs_pytorch_eager']:.2f}× PyTorch eager")


if __name__ == "__main__":
    main()
