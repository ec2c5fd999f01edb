"""Learning rate and batch size: scaling rules, and decaying by growing the batch.

SGD's gradient noise scale is g ≈ ε·N/B (learning rate ε, N training examples, batch B; Smith,
Kindermans, Ying & Le 2018, "Don't decay the learning rate, increase the batch size"). Rules
that keep g fixed when B changes:

    scale_learning_rate(0.1, 256, 32)           # linear rule (Goyal et al. 2017): ε·B/B₀ = 0.8
    scale_learning_rate(1e-3, 256, 32, "sqrt")  # square-root rule (Krizhevsky 2014; Hoffer et
                                                # al. 2017), for adaptive methods: ε·√(B/B₀)

and the Smith et al. equivalence: a step decay ε ← f·ε at epoch m is, for g, the same as
B ← B/f at constant ε (the same accuracy, 1/f times fewer updates after m):

    plan = batch_size_for_decay(128, {31: 0.2, 61: 0.2}, max_batch_size=2048)
    fit(..., optimizer=sgd(plan.learning_rate(0.1, len(x)), momentum=0.9),
        batch_size=plan.batch_size)

`fn.train.fit` takes any `epoch -> int` as its batch size; `batch_size_schedule` makes the usual
step function. Epochs are numbered from 1, as `fit` numbers them.
"""
from __future__ import annotations

import bisect
import math
import numbers
from typing import Mapping, NamedTuple

from funcnn.checks import is_positive_int
from funcnn.optim import schedules

__all__ = ["BatchDecay", "EpochSchedule", "batch_size_for_decay", "batch_size_schedule",
           "scale_learning_rate"]

_RULES = ("linear", "sqrt")


def scale_learning_rate(base_lr, batch_size: int, base_batch_size: int, rule: str = "linear"):
    """The learning rate for batch B given ε₀ tuned at batch B₀.

    "linear": ε = ε₀·B/B₀ (Goyal et al. 2017: SGD, with a warm-up for large B/B₀);
    "sqrt": ε = ε₀·√(B/B₀) (keeps the update's variance; the rule for Adam, RMSprop, Adagrad).
    `base_lr` may be a number or an array (e.g. traced by `fn.tune`).

    >>> fn.optim.scale_learning_rate(0.1, 256, 32)
    0.8
    >>> fn.optim.scale_learning_rate(0.01, 128, 32, rule="sqrt")
    0.02
    """
    for name, value in (("batch_size", batch_size), ("base_batch_size", base_batch_size)):
        if not is_positive_int(value):
            raise ValueError(f"scale_learning_rate: expected {name} to be an int ≥ 1, received "
                             f"{value!r}")
    if rule not in _RULES:
        raise ValueError(f"scale_learning_rate: expected rule 'linear' or 'sqrt', received "
                         f"{rule!r}")
    ratio = batch_size / base_batch_size
    return base_lr * (ratio if rule == "linear" else math.sqrt(ratio))


class EpochSchedule(NamedTuple):
    """A step function of the epoch e = 1, 2, …: values[i] for the last starts[i] ≤ e.

    starts[0] = 1 and starts increase strictly. A value (hashable, comparable); call it:
    `EpochSchedule((1, 30), (128, 640))(45) == 640`.
    """

    starts: tuple[int, ...]
    values: tuple

    def __call__(self, epoch: int):
        if not is_positive_int(epoch):
            raise ValueError(f"EpochSchedule: expected an epoch ≥ 1, received {epoch!r}")
        return self.values[bisect.bisect_right(self.starts, epoch) - 1]


def batch_size_schedule(sizes: Mapping[int, int]) -> EpochSchedule:
    """The batch size B(e) = sizes[s] for the latest start s ≤ e: {first epoch: batch size}.

    `batch_size_schedule({1: 128, 30: 256, 60: 512})`: 128 in epochs 1–29, 256 in 30–59, 512
    from 60 on. Must give epoch 1 a size; `fn.train.fit(..., batch_size=schedule)`.

    >>> schedule = fn.optim.batch_size_schedule({1: 128, 30: 256, 60: 512})
    >>> [schedule(epoch) for epoch in (1, 29, 30, 60, 99)]
    [128, 128, 256, 512, 512]
    """
    if not isinstance(sizes, Mapping) or not sizes:
        raise TypeError(f"batch_size_schedule: expected a non-empty mapping {{first epoch: batch "
                        f"size}}, received {sizes!r}")
    for start, size in sizes.items():
        if not is_positive_int(start) or not is_positive_int(size):
            raise ValueError(f"batch_size_schedule: expected int epochs ≥ 1 mapped to int batch "
                             f"sizes ≥ 1, received {start!r}: {size!r}")
    if 1 not in sizes:
        raise ValueError(f"batch_size_schedule: expected a batch size for epoch 1, received "
                         f"starts {sorted(sizes)}")
    starts = tuple(sorted(sizes))
    return EpochSchedule(tuple(int(s) for s in starts), tuple(int(sizes[s]) for s in starts))


class BatchDecay(NamedTuple):
    """A learning-rate step decay carried by the batch size: `batch_size_for_decay`'s result.

    batch_size: B(e), an EpochSchedule for `fit`; lr_factor: the epoch's multiplier of the base
    learning rate (1 until the batch size reaches its cap), an EpochSchedule.
    """

    batch_size: EpochSchedule
    lr_factor: EpochSchedule

    def learning_rate(self, base_lr: float, examples: int):
        """The optimizer's learning rate, a schedule of the update count t: base_lr·lr_factor(e)
        from the first update of epoch e, t_e = Σ_{k<e} ⌊examples / B(k)⌋ (`fit` drops each
        epoch's last examples mod B). A constant schedule when lr_factor is 1 throughout."""
        if not is_positive_int(examples) or examples < max(self.batch_size.values):
            raise ValueError(f"BatchDecay.learning_rate: expected examples to be an int ≥ the "
                             f"largest batch size {max(self.batch_size.values)}, received "
                             f"{examples!r}")
        steps = lambda end: sum(examples // self.batch_size(e) for e in range(1, end))
        pieces = [schedules.constant(base_lr * f) for f in self.lr_factor.values]
        return pieces[0] if len(pieces) == 1 else \
            schedules.join(pieces, [steps(start) for start in self.lr_factor.starts[1:]])


def batch_size_for_decay(base_batch_size: int, milestones: Mapping[int, float], *,
                         max_batch_size: int | None = None) -> BatchDecay:
    """Smith et al.'s equivalence: the LR decay {epoch m: factor f} as batch-size increases.

    At each milestone (in epoch order) B ← min(⌊B/f⌋, max_batch_size), and whatever the
    batch could not take (the cap, the rounding) goes to the learning rate, whose factor is
    multiplied by f·B_new/B_old ≤ 1: so ε/B, hence the noise scale, falls by exactly f at every
    milestone, as under the LR decay. m is the first epoch of the decayed value (torch's
    MultiStepLR milestones, which count completed epochs, are m − 1); 0 < f ≤ 1.
    `max_batch_size=base_batch_size` gives the plain LR step decay at constant batch.

    >>> plan = fn.optim.batch_size_for_decay(128, {31: 0.2, 61: 0.2}, max_batch_size=2048)
    >>> plan.batch_size, [round(f, 9) for f in plan.lr_factor.values]   # 0.2·2048/640 at 61
    (EpochSchedule(starts=(1, 31, 61), values=(128, 640, 2048)), [1.0, 0.64])
    """
    if not is_positive_int(base_batch_size):
        raise ValueError(f"batch_size_for_decay: expected base_batch_size to be an int ≥ 1, "
                         f"received {base_batch_size!r}")
    if max_batch_size is not None and not (is_positive_int(max_batch_size)
                                           and max_batch_size >= base_batch_size):
        raise ValueError(f"batch_size_for_decay: expected max_batch_size to be an int ≥ "
                         f"base_batch_size={base_batch_size} (or None: no cap), received "
                         f"{max_batch_size!r}")
    if not isinstance(milestones, Mapping):
        raise TypeError(f"batch_size_for_decay: expected milestones as a mapping {{epoch: "
                        f"factor}}, received {milestones!r}")
    sizes, factors, size, decay = {1: base_batch_size}, {1: 1.0}, base_batch_size, 1.0
    for epoch in sorted(milestones):
        factor = milestones[epoch]
        if not (is_positive_int(epoch) and epoch >= 2):
            raise ValueError(f"batch_size_for_decay: expected milestone epochs to be ints ≥ 2 "
                             f"(the first epoch of each decayed value), received {epoch!r}")
        if not (isinstance(factor, numbers.Real) and 0 < factor <= 1):
            raise ValueError(f"batch_size_for_decay: expected each factor in (0, 1], received "
                             f"{factor!r} at epoch {epoch}")
        size, decay = math.floor(size / factor + 1e-9), decay * factor   # B/f, rounded down
        size = size if max_batch_size is None else min(size, max_batch_size)
        if size != list(sizes.values())[-1]:
            sizes[epoch] = size
        lr_factor = decay * size / base_batch_size   # ε/B = ε₀·decay/B₀: the LR's share
        if not math.isclose(lr_factor, list(factors.values())[-1], rel_tol=1e-12):
            factors[epoch] = lr_factor   # (a batch that took all of f leaves the rate alone)
    return BatchDecay(batch_size_schedule(sizes),
                      EpochSchedule(tuple(factors), tuple(factors.values())))
