"""The composable training core: callbacks that steer, parameter groups, one guarded epoch
program, values instead of closures (compilations counted), loggers, argument checks."""
import csv
import io
import json
import math
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn import nn

from compile_count import compilations

LOSS = fn.losses.softmax_cross_entropy


def _model():
    return nn.serial(nn.Dense(32), nn.Relu(), nn.Dense(3))


def _fit(data, optimizer=None, **options):
    defaults = dict(epochs=6, batch_size=30, key=jax.random.key(0), progress=False)
    optimizer = fn.optim.sgd(0.5, momentum=0.9) if optimizer is None else optimizer
    return fn.train.fit(_model(), LOSS, optimizer, data, **{**defaults, **options})


def _info(epoch, logs, result):
    return fn.train.EpochInfo(epoch, 100, logs, result, False, lambda: {})


# ---------------------------------------------------------------------------------------------
# ReduceLROnPlateau: torch's rule, as a callback that changes the optimizer state.


def _plateau_rates(callback, values, learning_rate=0.1):
    """The learning rate after each epoch when the monitor reads `values`."""
    params = {"w": jnp.ones(2)}
    opt_state = fn.optim.sgd(learning_rate).init(params)
    result = fn.train.FitResult(params, {}, opt_state, {}, 0)
    memory, rates = callback.init(result), []
    for epoch, value in enumerate(values, start=1):
        memory, changes = callback.on_epoch_end(memory, _info(epoch, {"val_loss": value}, result))
        if changes is not None and changes.opt_state is not None:
            result = result._replace(opt_state=changes.opt_state)
        rates.append(float(fn.optim.hyperparams(result.opt_state)["learning_rate"]))
        if changes is not None and changes.stop:
            break
    return rates


def test_reduce_on_plateau_counts_as_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    values = list(np.concatenate([np.linspace(1.0, 0.5, 5), 0.5 + 0.01 * rng.random(30),
                                  np.linspace(0.49, 0.3, 5), np.full(20, 0.3)]))
    for patience, cooldown, threshold in ((3, 0, 1e-4), (2, 2, 1e-2), (0, 1, 0.0)):
        ours = _plateau_rates(fn.train.ReduceLROnPlateau(
            "val_loss", factor=0.5, patience=patience, cooldown=cooldown, threshold=threshold,
            min_lr=1e-3), values)
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=0.5, patience=patience, cooldown=cooldown, threshold=threshold,
            min_lr=1e-3)
        theirs = []
        for value in values:
            scheduler.step(value)
            theirs.append(opt.param_groups[0]["lr"])
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_reduce_on_plateau_by_hand():
    """patience 2: the third epoch without improvement halves the rate; NaN never improves."""
    callback = fn.train.ReduceLROnPlateau("val_loss", factor=0.5, patience=2)
    rates = _plateau_rates(callback, [1.0, 1.0, 1.0, 1.0, 0.5, math.nan, 0.6, 0.7, 0.4])
    assert rates == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025])
    stopping = fn.train.ReduceLROnPlateau("val_loss", factor=0.5, patience=0, min_lr=0.025,
                                          stop_at_min_lr=True)
    assert _plateau_rates(stopping, [1.0] * 10) == pytest.approx([0.1, 0.05, 0.025, 0.025])


def test_fit_halves_the_learning_rate_on_a_plateau_without_recompiling(spiral):
    """The notes' rule in fit: history records each epoch's rate; it halves after each plateau
    (patience 1 on the training loss with a large threshold: every epoch is a plateau); one
    compilation of the epoch serves every rate."""
    train, validation = spiral
    callback = fn.train.ReduceLROnPlateau("loss", factor=0.5, patience=1, threshold=0.5,
                                          min_lr=0.05, stop_at_min_lr=True)
    fn.train.clear_caches()
    with compilations() as count:
        result = _fit(train, fn.optim.sgd(0.4), epochs=30, callbacks=[callback])
        compiled = count()
    rates = result.history["learning_rate"]
    # Epoch 1 sets the best; epochs 2 and 3 do not improve: the count (2) exceeds the patience
    # at the end of epoch 3, and every second epoch after.
    assert rates == pytest.approx([0.4, 0.4, 0.4, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05])
    # Stopped at the epoch where a reduction was due with the rate already at min_lr.
    assert result.epoch == 9
    assert compiled >= 1
    with compilations() as count:   # an equal optimizer: nothing new to compile
        _fit(train, fn.optim.sgd(0.4), epochs=2, callbacks=[callback])
        assert count() == 0


def test_fit_steers_a_schedule_and_every_group(spiral):
    train, _ = spiral
    schedule = fn.optim.schedules.exponential(0.4, 0.99)
    callback = fn.train.ReduceLROnPlateau("loss", factor=0.5, patience=0, threshold=0.9)
    result = _fit(train, fn.optim.sgd(schedule), epochs=4, callbacks=[callback])
    # 10 steps per epoch; history has the rate of each epoch's last step. Epoch 1 sets the best,
    # every later one misses the 90 % improvement: the rate halves after epochs 2 and 3.
    expected = [0.4 * 0.99 ** 9, 0.4 * 0.99 ** 19, 0.5 * 0.4 * 0.99 ** 29,
                0.25 * 0.4 * 0.99 ** 39]
    assert result.history["learning_rate"] == pytest.approx(expected, rel=1e-5)
    groups = fn.optim.partition({"0/*": fn.optim.adam(0.01), "2/*": fn.optim.sgd(0.2)})
    result = _fit(train, groups, epochs=3, callbacks=[callback])
    assert result.history["learning_rate"] == [pytest.approx({"0/*": 0.01, "2/*": 0.2}),
                                               pytest.approx({"0/*": 0.01, "2/*": 0.2}),
                                               pytest.approx({"0/*": 0.005, "2/*": 0.1})]


def test_resume_keeps_the_plateau_counters_and_the_rate(spiral, tmp_path):
    train, validation = spiral
    callback = lambda: fn.train.ReduceLROnPlateau("val_accuracy", factor=0.5, patience=1)
    options = dict(validation=validation, epochs=8)
    straight = _fit(train, fn.optim.sgd(0.3), callbacks=[callback()], **options)
    path = tmp_path / "run.ckpt"
    _fit(train, fn.optim.sgd(0.3), callbacks=[callback(), fn.train.Checkpoint(path)],
         **{**options, "epochs": 5})
    resumed = _fit(train, fn.optim.sgd(0.3), callbacks=[callback(), fn.train.Checkpoint(path)],
                   resume=True, **options)
    assert resumed.history == straight.history or (
        resumed.history["learning_rate"] == straight.history["learning_rate"]
        and resumed.history["loss"] == straight.history["loss"])
    assert len(set(straight.history["learning_rate"])) > 1   # the rate did change
    chex.assert_trees_all_equal(resumed.params, straight.params)
    chex.assert_trees_all_equal(resumed.opt_state, straight.opt_state)


def test_reduce_on_plateau_refusals(spiral):
    train, _ = spiral
    with pytest.raises(ValueError, match="monitor 'val_acc' is not in the logs; expected one "
                                         "of: .*learning_rate, loss"):
        _fit(train, epochs=1, callbacks=[fn.train.ReduceLROnPlateau("val_acc")],
             validation=spiral[1])
    bare = fn.optim.chain(fn.optim.trace(0.9), fn.optim.scale_by_learning_rate(0.1))
    with pytest.raises(ValueError, match="holds no learning_rate in its state"):
        _fit(train, bare, epochs=1, callbacks=[fn.train.ReduceLROnPlateau("loss")])
    for bad in (dict(factor=1.0), dict(patience=-1), dict(min_lr=-1.0), dict(mode="up")):
        with pytest.raises(ValueError, match="ReduceLROnPlateau"):
            fn.train.ReduceLROnPlateau("loss", **bad)


# ---------------------------------------------------------------------------------------------
# Parameter groups.


def test_a_frozen_layer_stays_bit_identical_while_the_rest_trains(spiral):
    train, _ = spiral
    params, state = _model().init(jax.random.key(5), (2,))
    groups = fn.optim.partition({"0/*": fn.optim.frozen()}, default=fn.optim.adam(0.01))
    result = _fit(train, groups, epochs=3, params=params, state=state)
    chex.assert_trees_all_equal(result.params[0], params[0])
    assert not np.allclose(result.params[2]["w"], params[2]["w"])


def test_two_groups_follow_their_own_update_rules():
    """adam on the first layer and sgd(0.1) on the last: one step equals the two rules by hand."""
    model = _model()
    params, state = model.init(jax.random.key(0), (2,))
    x = jax.random.normal(jax.random.key(1), (16, 2))
    y = jnp.arange(16) % 3
    groups = fn.optim.partition({"0/*": fn.optim.adam(0.01), "2/*": fn.optim.sgd(0.1)})
    step = jax.jit(fn.train.make_step(model, LOSS, groups))
    new, _, _, _ = step(params, state, groups.init(params), x, y, jax.random.key(2))
    grads = jax.grad(lambda p: LOSS(model.apply(p, state, x)[0], y))(params)
    # Adam's first step: m̂ = g, v̂ = g², so the update is −α·g/(|g| + ε).
    adam = lambda p, g: p - 0.01 * g / (jnp.abs(g) + 1e-8)
    chex.assert_trees_all_close(new[0], jax.tree.map(adam, params[0], grads[0]), rtol=1e-5,
                                atol=1e-7)
    chex.assert_trees_all_close(new[2], jax.tree.map(lambda p, g: p - 0.1 * g, params[2],
                                                     grads[2]), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Values, not closures: a rebuilt equal configuration reuses the compiled epoch.


def test_fitting_a_rebuilt_equal_model_does_not_recompile(spiral):
    train, _ = spiral
    assert nn.Dense(3) == nn.Dense(3) and fn.optim.adam(1e-3) == fn.optim.adam(1e-3)
    fn.train.clear_caches()
    build = lambda: fn.train.fit(nn.serial(nn.Dense(32), nn.Relu(), nn.Dense(3)), LOSS,
                                 fn.optim.adam(1e-2), train, epochs=1, batch_size=30,
                                 key=jax.random.key(0), progress=False)
    build()
    with compilations() as count:
        build()
        assert count() == 0
    fn.train.clear_caches()
    with compilations() as count:
        build()
        assert count() > 0


# ---------------------------------------------------------------------------------------------
# Divergence: inside the compiled epoch, no second compilation.


def test_nan_and_explosion_stop_inside_the_epoch_without_recompiling(spiral):
    (x, y), _ = spiral
    x = np.array(x)
    x[200:] = np.nan    # every batch holding one of these examples gives a NaN loss
    fn.train.clear_caches()
    _fit((np.zeros_like(x), y), epochs=1)   # compile this configuration first
    with compilations() as count:
        with pytest.raises(fn.train.TrainingDiverged, match="non-finite") as error:
            _fit((x, y), epochs=2)
        assert count() == 0
    chex.assert_tree_all_finite(error.value.result.params)
    assert error.value.report.layer == "input"   # find_nonfinite, run on the failed step
    # A finite loss that runs away: growing inputs with a large rate push the loss past 1e6×.
    exploding = fn.optim.sgd(1e3)
    with pytest.raises(fn.train.TrainingDiverged, match="loss exploded to") as error:
        _fit((np.asarray(spiral[0][0]) * 30, y), exploding, epochs=5)
    result = error.value.result
    chex.assert_tree_all_finite(result.params)
    assert error.value.report is None
    # Off: the same run is not stopped by the bound (it may still reach NaN).
    try:
        _fit((np.asarray(spiral[0][0]) * 30, y), exploding, epochs=5, divergence=None)
    except fn.train.TrainingDiverged as other:
        assert "non-finite" in str(other)


def test_the_last_good_values_are_those_before_the_failed_step(spiral):
    """The carry after a failed step is bit for bit the carry after the step before it."""
    (x, y), _ = spiral
    model, opt = _model(), fn.optim.sgd(0.1)
    params, state = model.init(jax.random.key(0), (2,))
    xs = np.array(x)
    order = fn.train.epoch_order(jax.random.key(1), 300, 30)
    xs[order[6, 3]] = np.inf   # step 6's batch
    epoch = jax.jit(fn.train.make_epoch(fn.train.make_step(model, LOSS, opt), 30))
    carry, metrics = epoch(fn.train.start(params, state, opt.init(params)), jnp.asarray(xs),
                           jnp.asarray(y), jax.random.key(1), jnp.asarray(order[:6]))
    failed, failed_metrics = epoch(fn.train.start(params, state, opt.init(params)),
                                   jnp.asarray(xs), jnp.asarray(y), jax.random.key(1),
                                   jnp.asarray(order))
    assert int(carry.bad_step) == -1 and int(failed.bad_step) == 6
    chex.assert_trees_all_equal(failed.params, carry.params)
    chex.assert_trees_all_equal(failed.opt_state, carry.opt_state)
    assert np.isnan(np.asarray(failed_metrics["loss"])[7:]).all()


# ---------------------------------------------------------------------------------------------
# Loggers and custom callbacks.


def test_loggers_write_one_row_per_epoch_and_continue_on_resume(spiral, tmp_path):
    train, validation = spiral
    csv_path, jsonl_path, path = tmp_path / "log.csv", tmp_path / "log.jsonl", tmp_path / "c"
    loggers = lambda: [fn.train.CSVLogger(csv_path), fn.train.JSONLLogger(jsonl_path),
                       fn.train.Checkpoint(path, every=2)]
    _fit(train, epochs=3, validation=validation, callbacks=loggers())   # checkpoint at 2 and 3
    stream = io.StringIO()
    result = _fit(train, epochs=5, validation=validation, resume=True,
                  callbacks=[*loggers(), fn.train.ProgressBar(stream)])
    rows = list(csv.DictReader(csv_path.read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([float(r["val_loss"]) for r in rows], result.history["val_loss"])
    assert "update_ratio/0/w" in rows[0] and "learning_rate" in rows[0]
    lines = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    assert [entry["epoch"] for entry in lines] == [1, 2, 3, 4, 5]
    assert lines[-1]["loss"] == pytest.approx(result.history["loss"][-1])
    printed = stream.getvalue().splitlines()
    assert len(printed) == 2 and printed[0].startswith("epoch 4/5  loss ")


def test_a_callback_can_change_the_rate_restore_and_stop(spiral):
    train, _ = spiral

    class Warmup(fn.train.Callback):
        """Rate 0.05 in epoch 1, then 0.5; stop after epoch 3 with the params of epoch 1."""

        def init(self, result):
            return {"first": result.params}

        def on_epoch_end(self, memory, info):
            if info.epoch == 1:
                memory = {"first": info.result.params}
                return memory, fn.train.Changes(opt_state=fn.optim.set_hyperparams(
                    info.result.opt_state, learning_rate=0.5))
            if info.epoch == 3:
                return memory, fn.train.Changes(stop=True, params=memory["first"])
            return memory, None

    result = _fit(train, fn.optim.sgd(0.05), epochs=10, callbacks=[Warmup()])
    assert result.history["learning_rate"] == pytest.approx([0.05, 0.5, 0.5])
    chex.assert_trees_all_equal(result.params, _fit(train, fn.optim.sgd(0.05), epochs=1).params)


# ---------------------------------------------------------------------------------------------
# Arguments that used to be accepted silently.


def test_fit_refuses_bad_epochs_and_empty_data(spiral):
    (x, y), validation = spiral
    for epochs in (-1, 0, 1.5, "3"):
        with pytest.raises(ValueError, match=r"expected epochs to be an int ≥ 1"):
            _fit((x, y), epochs=epochs)
    with pytest.raises(ValueError, match="expected at least one training example"):
        _fit((x[:0], y[:0]))


def test_early_stopping_never_picks_a_nan_epoch(spiral):
    train, _ = spiral
    stopper = fn.train.EarlyStopping(monitor="val_loss", patience=2)
    memory = stopper.init(fn.train.FitResult({}, {}, {}, {}, 0))
    for epoch, value in enumerate([math.nan, 0.5, math.nan, math.nan], start=1):
        memory, changes = stopper.on_epoch_end(
            memory, _info(epoch, {"val_loss": value}, fn.train.FitResult({}, {}, {}, {}, epoch)))
    assert memory["epoch"] == 2 and memory["best"] == 0.5 and changes.stop


# ---------------------------------------------------------------------------------------------
# Interruptions: the last completed epoch survives, in the checkpoint and on the exception.


def test_a_failing_callback_keeps_the_last_completed_epoch(spiral, tmp_path):
    train, _ = spiral
    path = tmp_path / "run.ckpt"

    def explode(epoch, logs, result):
        if epoch == 3:
            raise RuntimeError("callback bug")

    with pytest.raises(RuntimeError, match="callback bug") as error:
        _fit(train, epochs=6, callbacks=[explode], checkpoint_path=path)
    assert error.value.result.epoch == 3
    chex.assert_trees_all_equal(error.value.result.params, _fit(train, epochs=3).params)
    assert fn.checkpoint.load(path)["epoch"] == 2   # written after epoch 2, never half-written


CHILD = """
import signal, sys, jax, numpy as np, funcnn as fn
signal.signal(signal.SIGINT, signal.default_int_handler)   # a pytest-xdist worker ignores SIGINT
x, y = fn.data.spiral(jax.random.key(0), points_per_class=2000, classes=3)
model = fn.nn.serial(fn.nn.Dense(256), fn.nn.Relu(), fn.nn.Dense(256), fn.nn.Relu(), fn.nn.Dense(3))
class Announce(fn.train.Callback):
    def on_epoch_end(self, memory, info):
        print("epoch", info.epoch, flush=True)
        return memory, None
try:
    fn.train.fit(model, fn.losses.softmax_cross_entropy, fn.optim.sgd(0.01), (x, y), epochs=10000,
                 batch_size=8, key=jax.random.key(0), progress=False, callbacks=[Announce()],
                 checkpoint_path=sys.argv[1])
except KeyboardInterrupt as error:
    print("interrupted after", error.result.epoch, flush=True)
"""


def test_ctrl_c_mid_epoch_leaves_a_loadable_checkpoint(tmp_path):
    import signal
    import subprocess
    import sys
    path = tmp_path / "run.ckpt"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().split() == ["epoch", "1"]
        for _ in range(600):   # the Checkpoint callback runs after the others: wait for its file
            if path.exists():
                break
            time.sleep(0.1)
        child.send_signal(signal.SIGINT)   # Ctrl-C during epoch 2 (or later)
        try:
            out, err = child.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
            pytest.fail(f"fit went on for 120 s after a SIGINT; its stderr ends:\n{err[-3000:]}")
    finally:
        if child.poll() is None:
            child.kill()
    lines = out.strip().splitlines()
    assert lines[-1].startswith("interrupted after"), (lines[-3:], err[-3000:])
    last = int(lines[-1].split()[-1])
    assert last >= 1 and fn.checkpoint.load(path)["epoch"] == last


def test_fit_trains_in_float64_under_strict_promotion(x64):
    """Under x64 (int64 arg-max, float64 loss) fit keeps float64 parameters and trains: the
    accuracy metric and the divergence bound used to mix int32/int64 and float32/float64."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 5)), rng.integers(0, 3, 64).astype(np.int32)
    model = nn.serial(nn.Dense(8), nn.Tanh(), nn.Dense(3))
    params, state = model.init(jax.random.key(0), (5,))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    result = fn.train.fit(model, fn.losses.softmax_cross_entropy, fn.optim.sgd(0.1), (x, y),
                          params=params, state=state, epochs=4, batch_size=16,
                          key=jax.random.key(1), progress=False)
    chex.assert_trees_all_equal_dtypes(result.params, params)
    losses = result.history["loss"]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
