"""A training step with a hierarchical softmax against the flat softmax cross-entropy, at
C = 1 000, 10 000 and 50 000 classes (issue 21: faster than the flat softmax at that size).

    python benchmarks/hierarchical_softmax.py [--classes 1000 10000 50000] [--seconds 2]
                                              [--repeats 3] [--batch 128]

Both models share a body Dense(256 → 128) + ReLU on random inputs and random labels:
  flat:          body → Dense(C) → softmax_cross_entropy, O(C · 128) per example;
  hierarchical:  serial(with_labels(body), HierarchicalSoftmax(C)) → hierarchical_softmax on
                 the balanced tree, O(⌈log₂ C⌉ · 128) per example.
A step is `fn.train.make_step(..., hand_written=True)` with plain SGD, jitted with donated
buffers. SGD still updates every parameter (C · 128 for both heads: the flat head's matrix or
the tree's C − 1 node rows), so the hierarchical step is not O(log C) in full — its gradient is.
samples/s counts examples.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

import funcnn as fn  # noqa: E402
from harness import looped, measure, report  # noqa: E402

INPUTS, FEATURES = 256, 128


def batches(classes: int, batch: int, count: int = 8):
    keys = jax.random.split(jax.random.key(0), 2 * count)
    return [(jax.random.normal(keys[2 * i], (batch, INPUTS)),
             jax.random.randint(keys[2 * i + 1], (batch,), 0, classes)) for i in range(count)]


def contender(classes: int, batch: int, hierarchical: bool):
    def factory():
        body = fn.nn.serial(fn.nn.Dense(FEATURES), fn.nn.Relu())
        if hierarchical:
            model = fn.nn.serial(fn.nn.with_labels(body), fn.nn.HierarchicalSoftmax(classes))
            loss = fn.losses.hierarchical_softmax(classes)
        else:
            model, loss = fn.nn.serial(body, fn.nn.Dense(classes)), fn.losses.softmax_cross_entropy
        opt = fn.optim.sgd(0.1)
        params, state = model.init(jax.random.key(1), (INPUTS,))
        step = jax.jit(fn.train.make_step(model, loss, opt, hand_written=True),
                       donate_argnums=(0, 1, 2))
        key = jax.random.key(2)
        data = [((x, y) if hierarchical else x, y) for x, y in batches(classes, batch)]
        return looped(lambda p, s, o, x, y: step(p, s, o, x, y, key)[:3],
                      (params, state, opt.init(params)), data)
    return factory


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.devices()[0].device_kind}), "
          f"{os.cpu_count()} cores, batch {args.batch}, body Dense({INPUTS} → {FEATURES}) + ReLU")
    for classes in args.classes:
        results = measure({"flat softmax": contender(classes, args.batch, False),
                           "hierarchical softmax": contender(classes, args.batch, True)},
                          batch=args.batch, seconds=args.seconds, repeats=args.repeats)
        report(f"C = {classes} classes (tree depth {fn.losses.balanced_tree(classes).depth})",
               results, reference="flat softmax", extra={"classes": classes})


if __name__ == "__main__":
    main()
