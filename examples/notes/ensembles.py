"""Search, then ensembles, as the notes teach them, on MNIST with a 784-100-10 ReLU network.

1. Coarse to fine over the learning rate α and the L2 strength λ of SGD with momentum 0.9:
   a coarse round of a few epochs per trial, then a fine round, around the coarse round's best
   trials, with more epochs (`fn.tune.coarse_to_fine` with one `training_objective` per round;
   every round's trials train as one `vmap`). Trials are scored on the validation split (the
   last 10 000 training images).
2. Three ways to use the search, each scored on validation and, once at the end, on test:
   (a) the best configuration, trained alone;
   (b) the top-k configurations, one member each (`fn.ensemble.fit_configs`), whose prediction
       averages probabilities: p̄(x) = (1/k) Σ_i softmax(f(x; θ_i));
   (c) a snapshot ensemble (Huang et al. 2017): ONE run of the best configuration with a cyclic
       cosine learning rate (restarts every few epochs), a checkpoint at the end of each cycle
       (`fn.ensemble.snapshot_callback`), the snapshots stacked (`fn.ensemble.from_checkpoints`)
       and their probabilities averaged; beside it, the averaged weights of the same snapshots
       (`fn.ensemble.average_checkpoints`: one model).

    FUNCNN_DATA_DIR=../shared/data/mnist python examples/notes/ensembles.py [--quick]

`--quick` runs a tiny version (subsets, few trials and epochs) as a smoke test.
"""
import argparse
import math
import tempfile
import time

import jax

import _common as c

import funcnn as fn
from funcnn import nn

LOSS = fn.losses.softmax_cross_entropy


def make_optimizer(learning_rate, weight_decay):
    """SGD with momentum 0.9 on the loss + (λ/2)‖W‖² (weights only): p ← p − α·v,
    v ← 0.9·v + g + λ·W."""
    return fn.optim.chain(fn.optim.add_decayed_weights(weight_decay),
                          fn.optim.sgd(learning_rate, momentum=0.9))


def settings(quick: bool) -> dict:
    if quick:
        return dict(train=3000, validation=1000, test=2000, trials=4, epochs_per_round=(1, 2),
                    epochs=2, members=3, cycles=2, batch_size=100)
    return dict(train=50_000, validation=10_000, test=10_000, trials=12,
                epochs_per_round=(2, 6), epochs=16, members=4, cycles=4, batch_size=128)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    s = settings(args.quick)
    begin = time.perf_counter()
    key = jax.random.key(args.seed)

    train, validation = c.mnist_split()   # the first 50 000 / the last 10 000, cut for --quick
    train = tuple(a[:s["train"]] for a in train)
    validation = tuple(a[:s["validation"]] for a in validation)
    model = nn.serial(nn.Flatten(), nn.Dense(100), nn.Relu(), nn.Dense(10))
    batch_size, epochs, k = s["batch_size"], s["epochs"], s["members"]

    # 1. Coarse to fine: more epochs per trial in the later round.
    objectives = [fn.tune.training_objective(model, LOSS, make_optimizer, train, validation,
                                             epochs=e, batch_size=batch_size, metric="val_error",
                                             key=jax.random.fold_in(key, 1))
                  for e in s["epochs_per_round"]]
    space = {"learning_rate": fn.tune.log_uniform(1e-3, 1.0),
             "weight_decay": fn.tune.log_uniform(1e-6, 1e-2)}
    search = fn.tune.coarse_to_fine(objectives, space, key=jax.random.fold_in(key, 2),
                                    trials=s["trials"], top=max(2, s["trials"] // 3),
                                    vectorized=True)
    for r, (result, e) in enumerate(zip(search.rounds, s["epochs_per_round"]), start=1):
        ranges = ", ".join(f"{n} ∈ [{d.low:.3g}, {d.high:.3g}]" for n, d in result.space.items())
        print(f"round {r} ({e} epochs per trial; {ranges}): best validation error "
              f"{result.best_score:.4f}")
    configs = fn.tune.top_configs(search, k)
    for i, config in enumerate(configs, start=1):
        print(f"  top {i}: " + ", ".join(f"{n}={v:.3g}" for n, v in config.items()))
    best = configs[0]
    print(f"search: {time.perf_counter() - begin:.0f} s")

    # (a) The best configuration alone.
    single = fn.train.fit(model, LOSS, make_optimizer(**best), train, epochs=epochs,
                          batch_size=batch_size, key=jax.random.fold_in(key, 3), progress=False)
    # (b) One member per top-k configuration.
    top = fn.ensemble.fit_configs(model, LOSS, make_optimizer, configs, train, epochs=epochs,
                                  batch_size=batch_size, key=jax.random.fold_in(key, 4),
                                  progress=False)
    # (c) One run, cosine learning-rate cycles restarting every `cycle` epochs; a snapshot at the
    # end of each cycle (where the learning rate has annealed to 0).
    cycle = epochs // s["cycles"]
    steps = cycle * math.ceil(len(train[0]) / batch_size)
    cosine = fn.optim.schedules.cosine(best["learning_rate"], steps)
    schedule = fn.optim.schedules.join([cosine] * s["cycles"],
                                       [steps * c for c in range(1, s["cycles"])])
    with tempfile.TemporaryDirectory() as folder:
        save = fn.ensemble.snapshot_callback(folder, every=cycle)
        run = fn.train.fit(model, LOSS, make_optimizer(schedule, best["weight_decay"]), train,
                           epochs=cycle * s["cycles"], batch_size=batch_size,
                           key=jax.random.fold_in(key, 5), callbacks=[save], progress=False)
        paths = save.paths[-k:]
        snapshots = fn.ensemble.from_checkpoints(paths, state=run.state, like=run.params)
        averaged = fn.ensemble.average_checkpoints(paths, like=run.params)
    print(f"training: {time.perf_counter() - begin:.0f} s")

    # name: (stacked params, stacked state, members, training epochs).
    one = lambda params, state: (fn.ensemble.stack([params]), fn.ensemble.stack([state]))
    rows = {"best single": (*one(single.params, single.state), epochs),
            f"top-{k} ensemble": (top.params, top.state, k * epochs),
            "snapshot run, last snapshot": (*one(run.params, run.state), cycle * s["cycles"]),
            f"snapshot ensemble ({len(paths)})": (*snapshots, cycle * s["cycles"]),
            f"snapshot weight average ({len(paths)})": (*one(averaged, run.state),
                                                        cycle * s["cycles"])}
    scores = {name: fn.ensemble.evaluate(model, LOSS, p, st, validation)
              for name, (p, st, _) in rows.items()}
    member_mean = scores[f"top-{k} ensemble"]["accuracy"]
    print(f"top-{k} members' mean validation accuracy: {member_mean:.4f}")

    test = tuple(a[:s["test"]] for a in c.mnist_test())   # the test split, touched once, here
    tested = {name: fn.ensemble.evaluate(model, LOSS, p, st, test)["ensemble_accuracy"]
              for name, (p, st, _) in rows.items()}
    print("\n" + c.table(["", "epochs", "val acc", "test acc"],
                         [[name, cost, f"{scores[name]['ensemble_accuracy']:.4f}",
                           f"{tested[name]:.4f}"] for name, (_, _, cost) in rows.items()]))
    print(f"\nwall time {time.perf_counter() - begin:.0f} s "
          f"({len(test[0])} test images{', quick' if args.quick else ''})")


if __name__ == "__main__":
    main()
