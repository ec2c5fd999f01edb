"""Training: the pure step, whole-epoch scans, fit's history, guards, resume and stopping."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn import nn

LOSS = fn.losses.softmax_cross_entropy


def _model():
    return nn.serial(nn.Dense(32), nn.Relu(), nn.Dense(3))


def _fit(data, **options):
    defaults = dict(epochs=6, batch_size=30, key=jax.random.key(0), progress=False)
    return fn.train.fit(_model(), LOSS, fn.optim.sgd(0.5, momentum=0.9), data, **{**defaults, **options})


def test_step_is_pure_jittable_and_traces_once(spiral):
    (x, y), _ = spiral
    model, opt = _model(), fn.optim.adam(1e-2)
    params, state = model.init(jax.random.key(0), (2,))
    opt_state = opt.init(params)
    step = jax.jit(chex.assert_max_traces(fn.train.make_step(model, LOSS, opt), n=1))
    before = jax.tree.map(jnp.copy, params)
    for i in range(3):
        out = step(params, state, opt_state, x[:30], y[:30], jax.random.key(i))
    chex.assert_trees_all_equal(params, before)
    assert set(out[3]) == {"loss"}   # nothing that costs a pass over the parameters
    with_accuracy = jax.jit(fn.train.make_step(model, LOSS, opt, with_accuracy=True))
    metrics = with_accuracy(params, state, opt_state, x[:30], y[:30], jax.random.key(0))[3]
    logits = model.apply(params, state, x[:30])[0]
    assert float(metrics["accuracy"]) == pytest.approx(float(jnp.mean(jnp.argmax(logits, -1) == y[:30])))


def test_hand_written_step_equals_autodiff_step(spiral):
    (x, y), _ = spiral
    model, opt = _model(), fn.optim.sgd(0.1)
    params, state = model.init(jax.random.key(0), (2,))
    reg = fn.regularizers.l2(1e-2)
    outs = [jax.jit(fn.train.make_step(model, LOSS, opt, regularizer=reg, hand_written=h))(
        params, state, opt.init(params), x[:30], y[:30], jax.random.key(0)) for h in (False, True)]
    chex.assert_trees_all_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-6)
    for out in outs:
        assert float(out[3]["penalty"]) == pytest.approx(float(reg(params)), rel=1e-6)


@pytest.mark.parametrize("hand_written", [False, True])
def test_mixed_precision_computes_in_bfloat16_and_keeps_float32_state(spiral, hand_written):
    (x, y), _ = spiral
    model = nn.serial(nn.Dense(32), nn.BatchNorm(), nn.Relu(), nn.Dense(3))
    opt = fn.optim.adam(1e-2)
    params, state = model.init(jax.random.key(0), (2,))
    args = (params, state, opt.init(params), x[:60], y[:60], jax.random.key(0))
    full = fn.train.make_step(model, LOSS, opt, hand_written=hand_written)
    mixed = fn.train.make_step(model, LOSS, opt, hand_written=hand_written,
                               compute_dtype=jnp.bfloat16)
    jaxpr = str(jax.make_jaxpr(mixed)(*args))
    assert "bf16[60,32] = dot_general" in jaxpr, "the first layer's matmul should be bfloat16"
    assert "bf16[60,32] = dot_general" not in str(jax.make_jaxpr(full)(*args))
    out_full, out_mixed = jax.jit(full)(*args), jax.jit(mixed)(*args)
    for tree in out_mixed[:3]:      # params, layer state, optimizer state: float32 throughout
        assert {leaf.dtype for leaf in jax.tree.leaves(tree)
                if jnp.issubdtype(leaf.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
    assert out_mixed[3]["loss"].dtype == jnp.float32
    assert float(out_mixed[3]["loss"]) == pytest.approx(float(out_full[3]["loss"]), rel=2e-2)
    # One Adam step moves each weight by about ±lr either way; bfloat16 changes few signs.
    delta = lambda out: np.sign(np.asarray(out[0][0]["w"] - params[0]["w"]))
    assert np.mean(delta(out_mixed) == delta(out_full)) > 0.95


def test_fit_in_mixed_precision_learns_the_spiral(spiral):
    train, validation = spiral
    result = _fit(train, validation=validation, epochs=40, compute_dtype=jnp.bfloat16)
    assert result.history["val_accuracy"][-1] > 0.85
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(result.params))


def test_fit_learns_the_spiral_and_keeps_history(spiral):
    train, validation = spiral
    result = _fit(train, validation=validation, epochs=40)
    h = result.history
    assert result.epoch == 40 and len(h["loss"]) == 40 and len(h["val_accuracy"]) == 40
    assert h["loss"][-1] < 0.5 * h["loss"][0]
    assert h["accuracy"][-1] > 0.9 and h["val_accuracy"][-1] > 0.85
    assert set(h["update_ratio"][-1]) == {"0/w", "0/b", "2/w", "2/b"}
    assert all(t > 0 for t in h["epoch_time"])
    evaluated = fn.train.evaluate(_model(), LOSS, result.params, result.state, validation,
                                  batch_size=40)
    assert evaluated["accuracy"] == pytest.approx(h["val_accuracy"][-1])
    logits = fn.train.predict(_model(), result.params, result.state, validation[0], batch_size=64)
    chex.assert_shape(logits, (150, 3))


def test_resume_from_checkpoint_is_bit_identical(spiral, tmp_path):
    train, _ = spiral
    straight = _fit(train, epochs=6)
    path = tmp_path / "run.ckpt"
    _fit(train, epochs=3, checkpoint_path=path)
    resumed = _fit(train, epochs=6, checkpoint_path=path, resume=True)
    chex.assert_trees_all_equal(resumed.params, straight.params)
    chex.assert_trees_all_equal(resumed.opt_state, straight.opt_state)
    assert resumed.history["loss"] == straight.history["loss"]
    assert fn.checkpoint.load(path)["epoch"] == 6


def test_non_finite_step_stops_with_last_good_params(spiral):
    train, _ = spiral
    model, opt = _model(), fn.optim.sgd(1e20)
    with pytest.raises(fn.train.TrainingDiverged, match=r"epoch 1, step (\d+) of 10") as error:
        fn.train.fit(model, LOSS, opt, train, epochs=3, batch_size=30, key=jax.random.key(0),
                     progress=False)
    result = error.value.result
    chex.assert_tree_all_finite(result.params)
    bad = int(str(error.value).split("step ")[1].split(" ")[0])
    # Replay the first bad−1 steps by hand: the returned params are exactly those.
    init_key, train_key = jax.random.split(jax.random.key(0))
    params, state = model.init(init_key, (2,))
    opt_state = opt.init(params)
    step = jax.jit(fn.train.make_step(model, LOSS, opt))
    epoch_key = jax.random.fold_in(train_key, 1)
    order = fn.train.epoch_order(epoch_key, 300, 30)
    x, y = jnp.asarray(train[0]), jnp.asarray(train[1])
    for i in range(bad - 1):
        index = order[i]
        params, state, opt_state, _ = step(params, state, opt_state, x[index], y[index],
                                           jax.random.fold_in(jax.random.fold_in(epoch_key, i), 0))
    # lr = 1e20 amplifies rounding (scan vs per-step fusion); another step count is off by orders of magnitude.
    chex.assert_trees_all_close(result.params, params, rtol=1e-3)


def test_epoch_order_is_a_seeded_uniform_shuffle():
    key = jax.random.key(3)
    order = fn.train.epoch_order(key, 103, 10)
    assert order.shape == (10, 10) and order.dtype == np.int32
    assert len(set(order.ravel().tolist())) == 100 and order.max() < 103
    np.testing.assert_array_equal(order, fn.train.epoch_order(key, 103, 10))
    assert not np.array_equal(order, fn.train.epoch_order(jax.random.key(4), 103, 10))
    # Where example 0 lands among 4 slots, over 4000 epochs: uniform (chi-square, 3 dof, p≈1e-4).
    slots = [int(np.argwhere(fn.train.epoch_order(jax.random.fold_in(key, e), 4, 1) == 0)[0, 0])
             for e in range(4000)]
    counts = np.bincount(slots, minlength=4)
    assert ((counts - 1000) ** 2 / 1000).sum() < 21.1, counts


RATIO_EVERY = 4


def _epoch(model, opt, batch_size, **options):
    return jax.jit(fn.train.make_epoch(fn.train.make_step(model, LOSS, opt), batch_size, **options))


def test_epoch_samples_ratios_and_stops_at_the_first_bad_step(spiral):
    (x, y), _ = spiral
    x, y = jnp.asarray(x), jnp.asarray(y)
    model = _model()
    params, state = model.init(jax.random.key(0), (2,))
    order = jnp.asarray(fn.train.epoch_order(jax.random.key(1), 300, 20))

    def run(learning_rate, **options):
        opt = fn.optim.sgd(learning_rate)
        return _epoch(model, opt, 20, **options)(fn.train.start(params, state, opt.init(params)),
                                                 x, y, jax.random.key(1), order)

    carry, metrics = run(0.1, ratio_every=RATIO_EVERY)
    assert int(carry.bad_step) == -1
    ratios = np.asarray(metrics["update_ratio"])[:, 1]   # leaf order: 0/b, 0/w, 2/b, 2/w
    sampled = np.arange(15) % RATIO_EVERY == 0
    assert np.isfinite(ratios[sampled]).all() and np.isnan(ratios[~sampled]).all()
    # Step 0's ratio is ‖Δw‖/‖w‖ of that step, computed here by hand.
    w = params[0]["w"]
    grads = jax.grad(lambda p: LOSS(model.apply(p, state, x[order[0]])[0], y[order[0]]))(params)
    assert ratios[0] == pytest.approx(float(jnp.linalg.norm(0.1 * grads[0]["w"])
                                            / jnp.linalg.norm(w)), rel=1e-4)
    assert "update_ratio" not in run(0.1)[1]
    # lr = 1e20 diverges: the epoch stops at the failed step with the last finite values; the
    # failed step's row is what it computed, the rows after it never ran.
    guarded, guarded_metrics = run(1e20)
    bad = int(guarded.bad_step)
    assert bad >= 1
    chex.assert_tree_all_finite(guarded.params)
    losses = np.asarray(guarded_metrics["loss"])
    assert np.isfinite(losses[:bad]).all() and np.isnan(losses[bad + 1:]).all()


def test_epoch_is_its_steps_one_by_one(spiral):
    """The epoch's segments (the first step of each samples the update ratios) and its short
    last segment run exactly the steps, batches and keys of a per-step loop, in order."""
    (x, y), _ = spiral
    x, y = jnp.asarray(x), jnp.asarray(y)
    model, opt = _model(), fn.optim.adam(0.01)
    params, state = model.init(jax.random.key(0), (2,))
    steps = RATIO_EVERY + 3
    order = jnp.asarray(fn.train.epoch_order(jax.random.key(1), 300, 300 // steps))
    step = fn.train.make_step(model, LOSS, opt)
    epoch = _epoch(model, opt, 300 // steps, ratio_every=RATIO_EVERY)
    carry, metrics = epoch(fn.train.start(params, state, opt.init(params)), x, y,
                           jax.random.key(1), order)
    chex.assert_shape(metrics["loss"], (steps,))
    one_step, opt_state, losses, ratios = jax.jit(step), opt.init(params), [], []
    for i in range(steps):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(1), i), 0)
        new_params, state, opt_state, step_metrics = one_step(params, state, opt_state,
                                                              x[order[i]], y[order[i]], key)
        losses.append(step_metrics["loss"])
        ratios.append(float(jnp.linalg.norm(new_params[0]["w"] - params[0]["w"])
                            / jnp.linalg.norm(params[0]["w"])))
        params = new_params
    chex.assert_trees_all_close((carry.params, carry.opt_state), (params, opt_state), rtol=1e-5,
                                atol=1e-7)
    np.testing.assert_allclose(metrics["loss"], np.array(losses), rtol=1e-5)
    sampled = np.arange(steps) % RATIO_EVERY == 0
    column = np.asarray(metrics["update_ratio"])[:, 1]
    np.testing.assert_allclose(column[sampled], np.array(ratios)[sampled], rtol=1e-4)
    assert np.isnan(column[~sampled]).all()


def test_epoch_compiles_its_step_once(spiral):
    """The whole-epoch program holds one copy of the step (compilation is most of the time to the
    first step): the products of one jitted step, plus the two dot products per leaf of the
    sampled update ratios when they are asked for."""
    (x, y), _ = spiral
    x, y = jnp.asarray(x), jnp.asarray(y)
    model, opt = _model(), fn.optim.adam(0.01)
    params, state = model.init(jax.random.key(0), (2,))
    step = fn.train.make_step(model, LOSS, opt)
    carry = fn.train.start(params, state, opt.init(params))
    order = jnp.asarray(fn.train.epoch_order(jax.random.key(1), 300, 20))
    count = lambda f, *args: jax.jit(f).lower(*args).as_text().count("dot_general")
    in_step = count(step, params, state, opt.init(params), x[:20], y[:20], jax.random.key(2))
    for ratio_every, extra in ((None, 0), (RATIO_EVERY, 2 * len(jax.tree.leaves(params)))):
        in_epoch = count(fn.train.make_epoch(step, 20, ratio_every=ratio_every), carry, x, y,
                         jax.random.key(1), order)
        assert in_step > 0 and in_epoch == in_step + extra


def test_streaming_path_matches_scan(spiral):
    train, _ = spiral
    scan = _fit(train, epochs=2)
    streamed = _fit(train, epochs=2, max_device_bytes=0)
    chex.assert_trees_all_close(scan.params, streamed.params, rtol=1e-5, atol=1e-6)


def test_early_stopping_and_callbacks(spiral):
    train, validation = spiral
    stopper = fn.train.EarlyStopping(monitor="val_loss", patience=2, min_delta=10.0)
    result = _fit(train, validation=validation, epochs=20, early_stopping=stopper)
    assert len(result.history["loss"]) == 3 and result.epoch == 1
    seen = []
    result = _fit(train, epochs=20, callbacks=[lambda e, logs, r: seen.append(logs["loss"]) or e == 4])
    assert len(seen) == 4 and result.epoch == 4
    with pytest.raises(ValueError, match="needs validation"):
        _fit(train, early_stopping=fn.train.EarlyStopping())


def test_augmentation_is_applied_per_batch(spiral):
    train, _ = spiral
    calls = []

    def shift(key, x):
        calls.append(x.shape)
        return x + 0.01 * jax.random.normal(key, x.shape)

    result = _fit(train, epochs=2, augment=shift)
    assert calls and calls[0] == (30, 2)
    assert not np.allclose(result.params[0]["w"], _fit(train, epochs=2).params[0]["w"])


def test_an_augmented_epoch_is_the_loop_over_its_augmented_batches(spiral, x64):
    """Step i trains on augment(fold_in(k_i, 1), x[order[i]]) with the step key fold_in(k_i, 0),
    k_i = fold_in(epoch_key, first + i), across stretches (check_every=4: the batch made one step
    ahead crosses them) and for a chunk that starts at `first`; a hand loop of `make_step`."""
    (x, y), _ = spiral
    x, y = jnp.asarray(x, jnp.float64), jnp.asarray(y)
    model = nn.serial(nn.Dense(8), nn.Tanh(), nn.Dropout(0.3), nn.Dense(3))
    params, state = fn.backprop.cast_floats(model.init(jax.random.key(0), (2,)), jnp.float64)
    opt = fn.optim.sgd(0.1, momentum=0.9)
    step = fn.train.make_step(model, LOSS, opt)
    noisy = lambda key, batch: batch * (1 + 0.1 * jax.random.normal(key, batch.shape, batch.dtype))
    by_hand = jax.jit(lambda trees, rows, key: step(
        *trees, noisy(jax.random.fold_in(key, 1), x[rows]), y[rows], jax.random.fold_in(key, 0)))
    order, epoch_key = jnp.asarray(fn.train.epoch_order(jax.random.key(1), 300, 20)), \
        jax.random.key(2)
    for first in (0, 5):
        epoch = jax.jit(fn.train.make_epoch(step, 20, noisy, check_every=4))
        carry, metrics = epoch(fn.train.start(params, state, opt.init(params)), x, y, epoch_key,
                               order, first)
        trees, losses = (params, state, opt.init(params)), []
        for i, rows in enumerate(order):
            *trees, m = by_hand(trees, rows, jax.random.fold_in(epoch_key, first + i))
            losses.append(m["loss"])
        chex.assert_trees_all_close((carry.params, carry.opt_state), (trees[0], trees[2]),
                                    rtol=1e-10)
        np.testing.assert_allclose(metrics["loss"], losses, rtol=1e-10)


def test_bad_arguments(spiral):
    (x, y), validation = spiral
    with pytest.raises(ValueError, match="expected as many targets as inputs"):
        _fit((x, y[:-1]))
    for size in (301, 0, 30.0):
        with pytest.raises(ValueError, match=r"expected batch_size to be an int in \[1, 300\]"):
            _fit((x, y), batch_size=size)
    with pytest.raises(ValueError, match="expected checkpoint_every to be an int ≥ 1"):
        _fit((x, y), checkpoint_every=0)
    with pytest.raises(ValueError, match="expected as many validation targets"):
        _fit((x, y), validation=(validation[0], validation[1][:-1]))
    with pytest.raises(ValueError, match="expected mode None, 'min' or 'max'"):
        fn.train.EarlyStopping(mode="maximum")
    with pytest.raises(ValueError, match=r"expected patience \(epochs\) to be an int ≥ 1"):
        fn.train.EarlyStopping(patience=0)
    with pytest.raises(ValueError, match=r"'val_acc' is not in the logs; expected one of: "
                                         r"accuracy, epoch_time, learning_rate, loss, "
                                         r"samples_per_second, val_accuracy, val_loss"):
        _fit((x, y), validation=validation, early_stopping=fn.train.EarlyStopping("val_acc"))


def test_out_of_range_labels_are_refused_before_training(spiral):
    """Under jit a loss cannot check its labels: an id ≥ classes would silently score 0."""
    (x, y), (xv, yv) = spiral
    message = r"expected int class labels in \[0, 3\) for the model's 3 outputs, received " \
              r"labels from {} to {}"
    with pytest.raises(ValueError, match="fit: " + message.format(1, 3)):
        _fit((x, y + 1))
    with pytest.raises(ValueError, match=r"fit \(validation\): " + message.format(-1, 1)):
        _fit((x, y), validation=(xv, yv - 1))
    params, state = _model().init(jax.random.key(0), (2,))
    with pytest.raises(ValueError, match="evaluate: " + message.format(0, 5)):
        fn.train.evaluate(_model(), LOSS, params, state, (xv, np.where(np.arange(len(yv)) == 0,
                                                                       5, yv)))
    with pytest.raises(ValueError, match="expected batch_size to be an int ≥ 1"):
        fn.train.evaluate(_model(), LOSS, params, state, (xv, yv), batch_size=-1)
    with pytest.raises(ValueError, match="expected as many targets as inputs"):
        fn.train.evaluate(_model(), LOSS, params, state, (xv, yv[:-1]))


def test_accuracy_needs_two_or_more_output_columns():
    """One column's arg-max is always 0: such "accuracy" would be 1.0 whatever the model."""
    assert fn.train.accuracy(jnp.array([[0.3], [-2.0]]), jnp.array([[1.0], [1.0]])) is None
    assert fn.train.accuracy(jnp.array([[0.3, 0.1], [-2.0, 1.0]]), jnp.array([0, 0])) == 0.5


def test_non_finite_optimizer_state_is_divergence(spiral):
    """Adam's second moment overflows (g² > 3.4e38) while the parameters stay finite (its step
    m̂/√v̂ becomes 0): the run stops instead of training on with an inf state."""
    (x, y), _ = spiral
    opt = fn.optim.adam(1e-3)
    with pytest.raises(fn.train.TrainingDiverged, match=r"epoch 1, step \d+ of 10") as error:
        fn.train.fit(_model(), LOSS, opt, (x * 1e21, y), epochs=2, batch_size=30,
                     key=jax.random.key(0), progress=False)
    chex.assert_tree_all_finite(error.value.result.opt_state)


def test_non_finite_inputs_are_named_in_the_divergence(spiral):
    (x, y), _ = spiral
    x = np.array(x)
    x[17] = np.nan
    with pytest.raises(fn.train.TrainingDiverged, match=r"the inputs x\[17\] are not finite"):
        _fit((x, y))


def _loss_peak_stopping(**options):
    """Early stopping on the training loss in "max" mode: it falls after the first epochs, so
    the best epoch is early and patience runs out — a deterministic early stop."""
    return fn.train.EarlyStopping(monitor="loss", mode="max", patience=2, **options)


def test_early_stopping_restores_the_best_epoch(spiral):
    train, _ = spiral
    result = _fit(train, epochs=20, early_stopping=_loss_peak_stopping())
    losses = result.history["loss"]
    best = int(np.argmax(losses)) + 1
    assert len(losses) == best + 2 and result.epoch == best
    chex.assert_trees_all_equal(result.params, _fit(train, epochs=best).params)
    # Patience not run out by the last epoch: the best epoch is restored all the same.
    ended = _fit(train, epochs=best + 1, early_stopping=_loss_peak_stopping())
    assert ended.epoch == best and len(ended.history["loss"]) == best + 1
    chex.assert_trees_all_equal(ended.params, result.params)
    kept = _fit(train, epochs=best + 1, early_stopping=_loss_peak_stopping(restore_best=False))
    assert kept.epoch == best + 1


def test_resumed_early_stopping_is_the_uninterrupted_run(spiral, tmp_path):
    train, _ = spiral
    straight = _fit(train, epochs=20, early_stopping=_loss_peak_stopping())
    path = tmp_path / "run.ckpt"
    _fit(train, epochs=straight.epoch + 1, early_stopping=_loss_peak_stopping(),
         checkpoint_path=path)   # interrupted one epoch before the stop
    resumed = _fit(train, epochs=20, early_stopping=_loss_peak_stopping(), checkpoint_path=path,
                   resume=True)
    assert resumed.epoch == straight.epoch and resumed.history["loss"] == straight.history["loss"]
    chex.assert_trees_all_equal(resumed.params, straight.params)
    # The checkpoint now records a stopped run: resuming it again trains nothing.
    again = _fit(train, epochs=20, early_stopping=_loss_peak_stopping(), checkpoint_path=path,
                 resume=True)
    assert again.history["loss"] == straight.history["loss"]
    chex.assert_trees_all_equal(again.params, straight.params)


def test_reduce_on_plateau_is_fed_the_loss_by_fit(spiral):
    train, _ = spiral
    steps = 10  # 300 examples / batch 30: one plateau judgement per epoch
    optimizer = fn.optim.chain(fn.optim.sgd(0.1), fn.optim.reduce_on_plateau(
        factor=0.5, patience=0, threshold=0.9, accumulation_size=steps))
    result = fn.train.fit(_model(), LOSS, optimizer, train, epochs=3, batch_size=30,
                          key=jax.random.key(0), progress=False)
    # A 90 % improvement per epoch is never met: the scale halves after every epoch but the first.
    assert float(result.opt_state[-1].scale) == pytest.approx(0.25)


def test_fit_history_is_the_epoch_programs_metrics(spiral):
    """fit's epoch-1 history is make_epoch's epoch on the same batches, leaf by leaf."""
    train, _ = spiral
    model, opt = _model(), fn.optim.sgd(0.5, momentum=0.9)
    init_key, train_key = jax.random.split(jax.random.key(0))
    params, state = model.init(init_key, (2,))
    result = _fit(train, epochs=1, params=params, state=state,
                  callbacks=[fn.train.UpdateRatio(every=RATIO_EVERY)])
    epoch_key = jax.random.fold_in(train_key, 1)
    epoch = _epoch(model, opt, 30, ratio_every=RATIO_EVERY)
    carry, metrics = epoch(fn.train.start(params, state, opt.init(params)),
                           jnp.asarray(train[0]), jnp.asarray(train[1]), epoch_key,
                           jnp.asarray(fn.train.epoch_order(epoch_key, 300, 30)))
    chex.assert_trees_all_close(result.params, carry.params)
    assert result.history["loss"][0] == pytest.approx(float(jnp.mean(metrics["loss"])), rel=1e-6)
    assert result.history["learning_rate"] == [pytest.approx(0.5)]
    ratios = np.asarray(metrics["update_ratio"])
    for k, leaf in enumerate(fn.paths.leaf_paths(params)):
        assert result.history["update_ratio"][0][leaf] == pytest.approx(
            float(np.nanmean(ratios[:, k])), rel=1e-6)
