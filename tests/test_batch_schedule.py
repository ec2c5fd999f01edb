"""Learning rate and batch size: the scaling rules, Smith et al.'s decay-as-batch-growth, and
`fit` with a batch-size schedule (sizes and steps used, one program per size, bit-exact resume,
refusals)."""
import math
import types

import chex
import jax
import numpy as np
import pytest

import funcnn as fn
from funcnn import nn
from funcnn.train import cache, loop
from funcnn.train.batching import batch_sizes

from compile_count import compilations

LOSS = fn.losses.softmax_cross_entropy


def _fit(data, batch_size, optimizer=None, **options):
    defaults = dict(epochs=4, key=jax.random.key(0), progress=False)
    optimizer = fn.optim.sgd(0.5, momentum=0.9) if optimizer is None else optimizer
    return fn.train.fit(nn.serial(nn.Dense(32), nn.Relu(), nn.Dense(3)), LOSS, optimizer, data,
                        batch_size=batch_size, **{**defaults, **options})


# ---------------------------------------------------------------------------------------------
# The rules, against their closed forms.


@pytest.mark.parametrize("batch, base", [(256, 32), (32, 256), (100, 100), (3, 7)])
def test_scaling_rules_are_the_closed_forms(batch, base):
    assert fn.optim.scale_learning_rate(0.1, batch, base) == pytest.approx(0.1 * batch / base,
                                                                          rel=1e-15)
    assert fn.optim.scale_learning_rate(0.1, batch, base, rule="sqrt") == \
        pytest.approx(0.1 * math.sqrt(batch / base), rel=1e-15)
    assert fn.optim.scale_learning_rate(2e-3, 256, 32) == pytest.approx(1.6e-2)   # ×8
    assert fn.optim.scale_learning_rate(2e-3, 128, 32, "sqrt") == pytest.approx(4e-3)   # ×2


def test_scaling_refusals():
    with pytest.raises(ValueError, match="expected rule 'linear' or 'sqrt', received 'cubic'"):
        fn.optim.scale_learning_rate(0.1, 64, 32, rule="cubic")
    with pytest.raises(ValueError, match="expected base_batch_size to be an int ≥ 1, received 0"):
        fn.optim.scale_learning_rate(0.1, 64, 0)


def test_batch_size_schedule_is_a_step_function_of_the_epoch():
    schedule = fn.optim.batch_size_schedule({30: 256, 1: 128, 60: 512})
    assert [schedule(e) for e in (1, 29, 30, 59, 60, 1000)] == [128, 128, 256, 256, 512, 512]
    assert schedule == fn.optim.batch_size_schedule({1: 128, 30: 256, 60: 512})   # a value
    with pytest.raises(ValueError, match="expected a batch size for epoch 1"):
        fn.optim.batch_size_schedule({2: 64})
    with pytest.raises(ValueError, match="expected int epochs ≥ 1 mapped to int batch sizes"):
        fn.optim.batch_size_schedule({1: 64, 5: 0})
    with pytest.raises(TypeError, match="expected a non-empty mapping"):
        fn.optim.batch_size_schedule([64])


def test_decay_as_batch_growth_keeps_the_noise_scale_of_the_lr_decay():
    """ε(e)/B(e) equals the step decay's ε₀·Πf/B₀ in every epoch, whether the batch takes the
    whole decay, part of it (cap) or a rounded share (f = 0.3: 100/0.3 is not an int)."""
    milestones = {4: 0.2, 7: 0.3, 9: 0.5}
    decayed = lambda e: math.prod(f for m, f in milestones.items() if m <= e)   # ε(e)/ε₀
    for cap in (None, 100, 1000, 4000):
        plan = fn.optim.batch_size_for_decay(100, milestones, max_batch_size=cap)
        for e in range(1, 12):
            assert plan.lr_factor(e) / plan.batch_size(e) == pytest.approx(decayed(e) / 100,
                                                                           rel=1e-12)
            assert plan.batch_size(e) <= (cap or math.inf) and plan.lr_factor(e) <= 1
    assert fn.optim.batch_size_for_decay(100, milestones).batch_size.values == (100, 500, 1666,
                                                                                3332)
    capped = fn.optim.batch_size_for_decay(100, milestones, max_batch_size=1000)
    assert capped.batch_size.values == (100, 500, 1000)
    assert capped.lr_factor.starts == (1, 7, 9)   # the rate moves only once the batch cannot
    assert capped.lr_factor.values == pytest.approx([1, 0.6, 0.3])
    plain = fn.optim.batch_size_for_decay(100, milestones, max_batch_size=100)
    assert plain.batch_size.values == (100,) and plain.lr_factor.values == pytest.approx(
        [1, 0.2, 0.06, 0.03])


def test_plain_decay_matches_torch_multistep_lr():
    """max_batch_size = B₀ is the LR step decay; milestone m (first decayed epoch) is torch's
    MultiStepLR milestone m − 1 (completed epochs)."""
    torch = pytest.importorskip("torch")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    torch_lr = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[3, 5], gamma=0.2)
    plan = fn.optim.batch_size_for_decay(64, {4: 0.2, 6: 0.2}, max_batch_size=64)
    for epoch in range(1, 9):
        assert 0.1 * plan.lr_factor(epoch) == pytest.approx(torch_lr.get_last_lr()[0], rel=1e-12)
        optimizer.step()
        torch_lr.step()


def test_decay_refusals():
    with pytest.raises(ValueError, match=r"each factor in \(0, 1\], received 2 at epoch 3"):
        fn.optim.batch_size_for_decay(32, {3: 2})
    with pytest.raises(ValueError, match="expected milestone epochs to be ints ≥ 2"):
        fn.optim.batch_size_for_decay(32, {1: 0.5})
    with pytest.raises(ValueError, match="expected max_batch_size to be an int ≥ "
                                         "base_batch_size=32"):
        fn.optim.batch_size_for_decay(32, {3: 0.5}, max_batch_size=16)
    with pytest.raises(ValueError, match="expected examples to be an int ≥ the largest batch"):
        fn.optim.batch_size_for_decay(32, {3: 0.5}).learning_rate(0.1, 50)


# ---------------------------------------------------------------------------------------------
# fit with a schedule.


def test_one_compiled_epoch_per_distinct_batch_size(spiral):
    """Sizes 30 and 70 build two epoch programs (the cache's entries); going back to a size,
    or an int run of either size, compiles nothing more."""
    train, _ = spiral
    fn.train.clear_caches()
    with compilations() as count:
        _fit(train, fn.optim.batch_size_schedule({1: 30, 2: 70}), epochs=2)
        assert count() > 0
    programs = [key for key in cache._programs if key[0] is loop._epoch_program]
    assert sorted(key[1].batch_size for key in programs) == [30, 70]
    with compilations() as count:
        _fit(train, lambda epoch: (30, 70)[epoch % 2], epochs=5)
        _fit(train, 30, epochs=1)
        _fit(train, 70, epochs=1)
        assert count() == 0


def test_fit_uses_each_epochs_batch_size_steps_and_rate(spiral):
    """Smith et al.'s plan on 300 examples: B₀ = 30, decay 3/7 at epoch 2 (B → 70) and 0.5 at
    epoch 3 (B capped at 70: the rate takes it). Epochs run 10, 4 (280 examples used), 4, 4
    steps — the update count in the optimizer state and fit's samples/s × time / B both say so —
    and the learning rate of each epoch's last step is 0.5·lr_factor(e): the rate schedule's
    boundaries (in updates) fall where fit's epochs begin."""
    train, _ = spiral
    plan = fn.optim.batch_size_for_decay(30, {2: 3 / 7, 3: 0.5}, max_batch_size=70)
    assert plan.batch_size.values == (30, 70) and plan.lr_factor.values == pytest.approx([1, 0.5])
    counts, steps = [], []

    def record(epoch, logs, result):
        counts.append(int(result.opt_state.count))
        steps.append(logs["samples_per_second"] * logs["epoch_time"] / plan.batch_size(epoch))

    result = _fit(train, plan.batch_size, fn.optim.sgd(plan.learning_rate(0.5, 300)),
                  callbacks=[record])
    assert result.history["batch_size"] == [30, 70, 70, 70]
    assert np.diff([0, *counts]).tolist() == [10, 4, 4, 4] == [300 // b for b in
                                                               result.history["batch_size"]]
    assert steps == pytest.approx([10, 4, 4, 4])
    assert result.history["learning_rate"] == pytest.approx([0.5, 0.5, 0.25, 0.25])
    assert _fit(train, 30, epochs=2).history["batch_size"] == [30, 30]   # an int: recorded too


def test_resume_across_a_change_of_batch_size_is_bit_identical(spiral, tmp_path):
    train, validation = spiral
    sizes = fn.optim.batch_size_schedule({1: 30, 3: 70})
    options = dict(validation=validation, epochs=4)
    straight = _fit(train, sizes, **options)
    path = tmp_path / "run.ckpt"
    first = _fit(train, sizes, checkpoint_path=path, **{**options, "epochs": 2})
    assert first.history["batch_size"] == [30, 30]
    resumed = _fit(train, sizes, checkpoint_path=path, resume=True, **options)
    assert resumed.epoch == 4 and resumed.history["batch_size"] == [30, 30, 70, 70]
    chex.assert_trees_all_equal(resumed.params, straight.params)
    chex.assert_trees_all_equal(resumed.opt_state, straight.opt_state)
    assert resumed.history["loss"] == straight.history["loss"]


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
def test_streaming_with_a_schedule_equals_training_on_the_device(spiral):
    train, _ = spiral
    sizes = fn.optim.batch_size_schedule({1: 30, 2: 70})
    on_device = _fit(train, sizes, epochs=2)
    streamed = _fit(train, sizes, epochs=2, max_device_bytes=0)   # one batch per chunk
    chex.assert_trees_all_equal(streamed.params, on_device.params)


def test_bad_schedules_are_refused_naming_the_epoch(spiral):
    train, _ = spiral
    expected = r"fit: expected batch_size\(3\), the schedule's batch size for epoch 3, to be an " \
               r"int in \[1, 300\] \(the training examples\), received "
    for bad in (0, 301, 60.0, "60"):
        with pytest.raises(ValueError, match=expected + repr(bad).replace(".", r"\.")):
            _fit(train, lambda epoch, bad=bad: 30 if epoch < 3 else bad)
    with pytest.raises(ValueError, match=r"expected batch_size to be an int in \[1, 300\]"):
        _fit(train, "30")
    lbfgs = fn.optim.lbfgs(memory=3)
    with pytest.raises(ValueError, match="received batch_size=a schedule giving 30 at epoch 2"):
        _fit(train, lambda epoch: 300 if epoch == 1 else 30, lbfgs, epochs=2)
    mesh = types.SimpleNamespace(size=4)   # only the device count matters to the check
    assert batch_sizes(fn.optim.batch_size_schedule({1: 32, 2: 64}), 3, 300, mesh) == (32, 64, 64)
    with pytest.raises(ValueError, match=r"divisible by the 4 devices of the mesh, received "
                                         r"batch_size\(2\) = 30"):
        batch_sizes(fn.optim.batch_size_schedule({1: 32, 2: 30}), 3, 300, mesh)
