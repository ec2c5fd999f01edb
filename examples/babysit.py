"""Babysitting a network on MNIST, the notes' checklist end to end, every plot written as a PNG.

1. initial loss ≈ ln 10 for a small-init softmax model (and the SVM's 9, for reference);
2. activation / gradient histograms per layer at initialisation;
3. overfit 20 examples (and show that a broken set-up — learning rate 0 — fails);
4. LR range test → suggested learning rate;
5. short random search over learning rate and weight decay (log-uniform), all trials in one vmap;
6. train with the best setting: loss (linear and log), accuracy, update ratios, filters, histograms;
   parameter averaging: Polyak average of the second half of the run, and the average of the
   last epochs' checkpoints;
7. a 5-member ensemble trained at once (one vmapped fit): members vs their averaged prediction.

    FUNCNN_DATA_DIR=../shared/data/mnist python examples/babysit.py --out babysit_out
    python examples/babysit.py --dataset digits --epochs 2 --members 3 --trials 8   # 30 s

Without the MNIST files it runs on scikit-learn's 8×8 digits instead and says so.
"""
import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import funcnn as fn
from funcnn import nn

LOSS = fn.losses.softmax_cross_entropy


def load_data(dataset="mnist"):
    """(name, train, validation, test): the last 5000 MNIST training images validate."""
    try:
        if dataset != "mnist":
            raise FileNotFoundError("--dataset digits")
        (x, y), test = fn.data.mnist("train"), fn.data.mnist("test")
        name, held_out = "MNIST", 5000
    except FileNotFoundError as error:
        print(f"MNIST not used ({str(error).splitlines()[0]}); using the 8×8 digits instead")
        (x, y), test = fn.data.digits("train"), fn.data.digits("test")
        name, held_out = "8×8 digits", 300
    return name, (x[:-held_out], y[:-held_out]), (x[-held_out:], y[-held_out:]), test


def build_layers(hidden):
    """784-hidden-10 ReLU network; the last layer starts small so that the scores are ≈ 0."""
    return [nn.Flatten(), nn.Dense(hidden, w_init=fn.init.he_normal), nn.Relu(),
            nn.Dense(10, w_init=fn.init.normal(0.01))]


def make_optimizer(learning_rate, weight_decay=0.0):
    """SGD with momentum 0.9; weight decay λ·w added to the gradient (an L2 penalty λ/2·‖w‖²)."""
    return fn.optim.chain(fn.optim.add_decayed_weights(weight_decay),
                          fn.optim.sgd(learning_rate, momentum=0.9))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="babysit_out", help="folder for the PNGs")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--search-epochs", type=int, default=2)
    parser.add_argument("--search-examples", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", choices=("mnist", "digits"), default="mnist",
                        help="digits: the bundled 8×8 digits (fast, offline)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    keys = iter(jax.random.split(jax.random.key(args.seed), 16))
    summary = {}

    name, train, validation, test = load_data(args.dataset)
    print(f"dataset: {name}: {len(train[0])} train / {len(validation[0])} validation / "
          f"{len(test[0])} test images")
    layers = build_layers(args.hidden)
    model = nn.serial(*layers)

    # 1. Initial loss.
    print("\n== 1. initial loss")
    init_key = next(keys)
    check = fn.diagnostics.initial_loss_check(model, LOSS, train[0][:2000], train[1][:2000],
                                              key=init_key)
    print(check)
    svm = fn.diagnostics.initial_loss_check(model, fn.losses.multiclass_hinge, train[0][:2000],
                                            train[1][:2000], key=init_key)
    print(f"(multiclass SVM on the same scores: {svm})")
    summary["initial_loss"] = {"expected": check.expected, "measured": check.measured,
                               "relative_error": check.relative_error}

    # 2. Activation and gradient histograms at initialisation.
    print("\n== 2. per-layer statistics at initialisation")
    params, state = jax.jit(model.init, static_argnums=1)(init_key, train[0].shape[1:])
    stats_fn = jax.jit(lambda p, s, x, y: fn.diagnostics.layer_stats(layers, LOSS, p, s, x, y))
    stats = stats_fn(params, state, train[0][:1000], train[1][:1000])
    print(fn.diagnostics.format_stats(stats))
    fn.plot.histograms(stats, path=out / "histograms_init.png")

    # 3. Overfit a tiny subset; a learning rate of 0 must fail.
    print("\n== 3. overfit 20 examples")
    overfit = fn.diagnostics.overfit_check(model, LOSS, make_optimizer(0.1), *train,
                                           key=next(keys), steps=200)
    print(overfit)
    broken = fn.diagnostics.overfit_check(model, LOSS, make_optimizer(0.0), *train,
                                          key=next(keys), steps=200)
    print(f"(broken set-up, learning rate 0: {broken})")
    fn.plot.loss_curve(overfit.losses, log=True, xlabel="step",
                       title="Overfitting 20 examples (log scale)", path=out / "overfit.png")
    summary["overfit"] = {"passed": overfit.passed, "final_loss": overfit.final_loss,
                          "broken_passed": broken.passed}

    # 4. LR range test.
    print("\n== 4. learning-rate range test")
    lr_test = fn.tune.lr_range_test(model, LOSS, make_optimizer, train, key=next(keys),
                                    min_lr=1e-5, max_lr=10.0, steps=200,
                                    batch_size=args.batch_size)
    print(f"LR range test: {len(lr_test.losses)} steps, smoothed minimum at "
          f"{lr_test.learning_rates[np.argmin(lr_test.smoothed)]:.3g}, suggestion "
          f"{lr_test.suggestion:.3g} (rule {lr_test.rule}), diverged: {lr_test.diverged}")
    fn.plot.lr_range(lr_test, path=out / "lr_range.png")

    # 5. Random search (learning rate, weight decay), all trials as one vmap.
    print(f"\n== 5. random search: {args.trials} trials × {args.search_epochs} epochs on "
          f"{args.search_examples} examples, one vmapped program")
    subset = tuple(a[:args.search_examples] for a in train)
    objective = fn.tune.training_objective(model, LOSS, make_optimizer, subset, validation,
                                           epochs=args.search_epochs,
                                           batch_size=args.batch_size, key=next(keys),
                                           metric="val_error")
    space = {"learning_rate": fn.tune.log_uniform(1e-4, 3.0),
             "weight_decay": fn.tune.log_uniform(1e-6, 1e-2)}
    t0 = time.perf_counter()
    search = fn.tune.random_search(objective, space, key=next(keys), trials=args.trials,
                                   vectorized=True)
    print(search)
    print(f"({time.perf_counter() - t0:.1f} s for all trials)")
    for message in fn.tune.boundary_warnings(search):
        print(f"note: {message}")
    fn.plot.search_results(search, score_label="validation error", path=out / "search.png")
    best = search.best
    decades = abs(math.log10(lr_test.suggestion) - math.log10(best["learning_rate"]))
    print(f"LR range suggestion {lr_test.suggestion:.3g} vs random search's best "
          f"{best['learning_rate']:.3g}: {decades:.2f} decades apart")
    summary["lr"] = {"range_test": lr_test.suggestion, "search_best": best["learning_rate"],
                     "search_best_weight_decay": best["weight_decay"],
                     "search_best_val_error": search.best_score, "decades_apart": decades}

    # 6. Train with the best setting; Polyak average of the second half; checkpoint average.
    print(f"\n== 6. training {args.epochs} epochs with learning_rate={best['learning_rate']:.3g}, "
          f"weight_decay={best['weight_decay']:.3g}")
    steps_per_epoch = len(train[0]) // args.batch_size
    optimizer = fn.ensemble.with_averaging(make_optimizer(**best),
                                           start=steps_per_epoch * (args.epochs // 2))
    with tempfile.TemporaryDirectory() as folder:
        snapshots = fn.ensemble.snapshot_callback(folder)
        result = fn.train.fit(model, LOSS, optimizer, train, epochs=args.epochs,
                              batch_size=args.batch_size, key=next(keys), validation=validation,
                              callbacks=[snapshots])
        last = snapshots.paths[-3:]
        checkpoint_average = fn.ensemble.average_checkpoints(last, like=result.params)
    polyak = fn.optim.averaged_params(result.opt_state)
    scores = {label: fn.train.evaluate(model, LOSS, p, result.state, test)["accuracy"]
              for label, p in (("final", result.params), ("polyak", polyak),
                               ("checkpoint_average", checkpoint_average))}
    print(f"test accuracy: final parameters {100 * scores['final']:.2f}%, Polyak average of the "
          f"second half {100 * scores['polyak']:.2f}%, average of the last {len(last)} epoch "
          f"checkpoints {100 * scores['checkpoint_average']:.2f}%")
    summary["averaging"] = scores
    history = result.history
    fn.plot.loss_curve(history, path=out / "loss.png")
    fn.plot.loss_curve(history, log=True, path=out / "loss_log.png")
    fn.plot.accuracy_curve(history, path=out / "accuracy.png")
    fn.plot.update_ratios(history, path=out / "update_ratios.png")
    fn.plot.filters(result.params[1]["w"], path=out / "filters.png")
    trained = stats_fn(result.params, result.state, train[0][:1000], train[1][:1000])
    fn.plot.histograms(trained, path=out / "histograms_trained.png")
    print("update/param ratios in the last epoch:",
          {k: f"{v:.1e}" for k, v in history["update_ratio"][-1].items()},
          fn.diagnostics.ratio_health(history["update_ratio"][-1]))

    # 7. Ensemble: N members in one vmapped fit.
    print(f"\n== 7. {args.members}-member ensemble, one vmapped fit")
    ensemble = fn.ensemble.fit(model, LOSS, optimizer, train, members=args.members,
                               epochs=args.epochs, batch_size=args.batch_size, key=next(keys),
                               validation=validation)
    final = fn.ensemble.evaluate(model, LOSS, ensemble.params, ensemble.state, test)
    averaged = fn.ensemble.evaluate(model, LOSS, fn.optim.averaged_params(ensemble.opt_state),
                                    ensemble.state, test)
    print("member test accuracies: " + ", ".join(f"{100 * a:.2f}%"
                                                 for a in final["member_accuracy"]))
    print(f"mean member {100 * final['accuracy']:.2f}% → ensemble (mean of softmax) "
          f"{100 * final['ensemble_accuracy']:.2f}%; with Polyak-averaged members: mean member "
          f"{100 * averaged['accuracy']:.2f}% → ensemble "
          f"{100 * averaged['ensemble_accuracy']:.2f}%")
    fn.plot.accuracy_curve(ensemble.history, title="Ensemble: training and validation accuracy",
                           path=out / "ensemble_accuracy.png")
    summary["ensemble"] = {"member_accuracy": final["member_accuracy"],
                           "mean_member_accuracy": final["accuracy"],
                           "ensemble_accuracy": final["ensemble_accuracy"],
                           "polyak_mean_member_accuracy": averaged["accuracy"],
                           "polyak_ensemble_accuracy": averaged["ensemble_accuracy"]}

    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    pngs = sorted(p.name for p in out.glob("*.png"))
    print(f"\nwrote {len(pngs)} plots to {out}/: {', '.join(pngs)} "
          f"({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
