"""Schedules against their closed forms and torch.optim.lr_scheduler; reduce_on_plateau vs torch."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn

S = fn.optim.schedules
T = np.arange(60)

# name: (schedule, the closed form for one integer t written independently, in Python floats)
CLOSED_FORMS = {
    "constant": (S.constant(0.3), lambda t: 0.3),
    "step_decay": (S.step_decay(0.1, 0.5, every=7), lambda t: 0.1 * 0.5 ** (t // 7)),
    "multistep": (S.multistep(0.1, [5, 20, 33], 0.1),
                  lambda t: 0.1 * 0.1 ** ((t >= 5) + (t >= 20) + (t >= 33))),
    "exponential": (S.exponential(0.1, math.exp(-0.05)), lambda t: 0.1 * math.exp(-0.05 * t)),
    "inverse_time": (S.inverse_time(0.1, 0.3), lambda t: 0.1 / (1 + 0.3 * t)),
    "inverse_power": (S.inverse_power(0.1, 0.2, 0.75), lambda t: 0.1 * (1 + 0.2 * t) ** -0.75),
    "inverse_after": (S.inverse_after(0.1, 10), lambda t: 0.1 if t < 10 else 0.1 * 10 / t),
    "polynomial": (S.polynomial(0.1, 0.01, 40, power=2.0),
                   lambda t: 0.09 * (1 - min(t, 40) / 40) ** 2 + 0.01),
    "cosine": (S.cosine(0.1, 40, end_value=0.01),
               lambda t: 0.01 + 0.045 * (1 + math.cos(math.pi * min(t, 40) / 40))),
    "warmup": (S.warmup(S.exponential(0.1, 0.9), 10, init_value=0.02),
               lambda t: 0.02 + 0.08 * t / 10 if t < 10 else 0.1 * 0.9 ** (t - 10)),
    "join": (S.join([S.constant(0.1), S.inverse_time(0.2, 1.0), S.constant(0.05)], [10, 30]),
             lambda t: 0.1 if t < 10 else 0.2 / (1 + (t - 10)) if t < 30 else 0.05),
    "momentum_ramp": (S.momentum_ramp(50), lambda t: 0.5 + 0.49 * min(t, 50) / 50),
}


@pytest.mark.parametrize("name", list(CLOSED_FORMS))
def test_schedule_equals_its_closed_form(name, x64):
    schedule, closed_form = CLOSED_FORMS[name]
    expected = np.array([closed_form(int(t)) for t in T])
    eager = np.array([float(schedule(int(t))) for t in T[:5]])
    traced = jax.jit(jax.vmap(schedule))(jnp.asarray(T, jnp.int32))   # int32 counts, traced
    chex.assert_trees_all_close(eager, expected[:5], rtol=1e-12)
    chex.assert_trees_all_close(traced, expected, rtol=1e-12)


def test_schedules_run_inside_jit_in_float32():
    for schedule, closed_form in CLOSED_FORMS.values():
        values = jax.jit(jax.vmap(schedule))(jnp.asarray(T, jnp.int32))
        assert values.dtype == jnp.float32
        chex.assert_trees_all_close(values, np.array([closed_form(int(t)) for t in T]),
                                    rtol=1e-5, atol=1e-8)


def test_join_rejects_a_wrong_number_of_boundaries():
    with pytest.raises(ValueError, match="one more schedule than boundaries"):
        S.join([S.constant(1.0)], [3])


# --- torch.optim.lr_scheduler, where the definitions coincide --------------------------------

def _torch_lrs(make_scheduler, steps=len(T), lr=0.1):
    torch = pytest.importorskip("torch", reason="torch.optim.lr_scheduler is the reference "
                                "(test-only; `pip install torch==2.13.0`, .ci/run installs it)")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make_scheduler(torch.optim.lr_scheduler, opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return np.array(lrs)


TORCH = {
    "StepLR": (S.step_decay(0.1, 0.5, 7), lambda m, o: m.StepLR(o, step_size=7, gamma=0.5)),
    "MultiStepLR": (S.multistep(0.1, [5, 20, 33], 0.3),
                    lambda m, o: m.MultiStepLR(o, milestones=[5, 20, 33], gamma=0.3)),
    "ExponentialLR": (S.exponential(0.1, 0.95), lambda m, o: m.ExponentialLR(o, gamma=0.95)),
    "CosineAnnealingLR": (S.cosine(0.1, len(T) - 1, end_value=0.001),
                          lambda m, o: m.CosineAnnealingLR(o, T_max=len(T) - 1, eta_min=0.001)),
    "PolynomialLR": (S.polynomial(0.1, 0.0, 40, power=2.0),
                     lambda m, o: m.PolynomialLR(o, total_iters=40, power=2.0)),
    "LinearLR": (S.warmup(S.constant(0.1), 10, init_value=0.1 / 3),
                 lambda m, o: m.LinearLR(o, start_factor=1 / 3, total_iters=10)),
    "SequentialLR": (S.warmup(S.cosine(0.1, 50), 10, init_value=0.01),
                     lambda m, o: m.SequentialLR(o, [m.LinearLR(o, 0.1, total_iters=10),
                                                     m.CosineAnnealingLR(o, T_max=50)], [10])),
}


@pytest.mark.parametrize("name", list(TORCH))
def test_schedule_equals_torch_lr_scheduler(name, x64):
    schedule, make_scheduler = TORCH[name]
    ours = jax.vmap(schedule)(jnp.asarray(T, jnp.int32))
    chex.assert_trees_all_close(ours, _torch_lrs(make_scheduler), rtol=1e-9, atol=1e-15)


# --- reduce_on_plateau -----------------------------------------------------------------------

def _losses(seed=0, n=120):
    """A loss that falls, plateaus, falls again and plateaus, with noise: every branch is hit."""
    t = np.arange(n)
    trend = 1 / (1 + 0.1 * np.minimum(t, 30)) - 0.005 * np.clip(t - 60, 0, 30)
    return trend + 0.01 * np.random.default_rng(seed).normal(size=n) * (t > 30)


PLATEAU_CONFIGS = [
    dict(factor=0.5, patience=3),
    dict(factor=0.1, patience=0, threshold=0.05, threshold_mode="abs", min_scale=1e-3),
    dict(factor=0.5, patience=2, cooldown=4, min_scale=0.05),
    dict(factor=0.7, patience=1, threshold=1e-2, threshold_mode="rel", cooldown=1),
]


@pytest.mark.parametrize("config", PLATEAU_CONFIGS, ids=str)
@pytest.mark.parametrize("window", [1, 4])
def test_reduce_on_plateau_equals_torch(config, window, x64):
    losses = _losses()
    means = losses.reshape(-1, window).mean(axis=1)
    torch_config = {("min_lr" if k == "min_scale" else k): v for k, v in config.items()}
    expected = _torch_lrs(lambda m, o: _Fed(m.ReduceLROnPlateau(o, **torch_config), means),
                          steps=len(means), lr=1.0)

    opt = S.reduce_on_plateau(**config, accumulation_size=window)
    update = jax.jit(opt.update)
    state = opt.init({"w": jnp.zeros(1)})
    ones = {"w": jnp.ones(1)}
    scales = []
    for i, v in enumerate(losses):
        updates, state = update(ones, state, value=v)
        chex.assert_trees_all_close(updates["w"], state.scale * ones["w"])
        if i % window == window - 1:
            scales.append(float(state.scale))
    # torch's lr after step(v_k) is the scale our update k uses; `expected` lists lrs before.
    chex.assert_trees_all_close(np.array(scales), np.append(expected[1:], _Fed.last_lr),
                                rtol=1e-12)
    assert len(set(scales)) > 1                                   # it did reduce


class _Fed:
    """Calls scheduler.step(metric) with the next value of a sequence, as an epoch loop would."""

    last_lr = None

    def __init__(self, scheduler, values):
        self.scheduler, self.values = scheduler, iter(values)

    def step(self):
        self.scheduler.step(next(self.values))
        _Fed.last_lr = self.scheduler.optimizer.param_groups[0]["lr"]


def test_reduce_on_plateau_needs_the_loss():
    opt = S.reduce_on_plateau()
    state = opt.init({"w": jnp.zeros(1)})
    with pytest.raises(TypeError, match="value=loss"):
        opt.update({"w": jnp.ones(1)}, state)


@pytest.mark.parametrize("config", PLATEAU_CONFIGS, ids=str)
def test_reduce_on_plateau_of_minus_a_metric_equals_torch_mode_max(config, x64):
    """The documented recipe for a metric that should grow: feed −metric (negative values)."""
    accuracy = 0.5 + 0.3 * (1 - _losses(seed=1))            # rises, plateaus, rises, plateaus
    torch_config = {("min_lr" if k == "min_scale" else k): v for k, v in config.items()}
    expected = _torch_lrs(lambda m, o: _Fed(m.ReduceLROnPlateau(o, mode="max", **torch_config),
                                            accuracy), steps=len(accuracy), lr=1.0)
    opt = S.reduce_on_plateau(**config)
    update = jax.jit(opt.update)
    state = opt.init({"w": jnp.zeros(1)})
    scales = []
    for a in accuracy:
        _, state = update({"w": jnp.ones(1)}, state, value=-a)
        scales.append(float(state.scale))
    chex.assert_trees_all_close(np.array(scales), np.append(expected[1:], _Fed.last_lr),
                                rtol=1e-12)


def test_reduce_on_plateau_negative_values_that_worsen_are_not_improvements():
    """Closed form: −accuracy rising slowly (accuracy worsening) never improves on the first."""
    opt = S.reduce_on_plateau(factor=0.5, patience=2, threshold=1e-2)
    state = opt.init({"w": jnp.zeros(1)})
    scales = []
    for i in range(12):
        _, state = opt.update({"w": jnp.ones(1)}, state, value=-(0.9 - 0.001 * i))
        scales.append(float(state.scale))
    # value 0 sets best; values 1, 2, 3 are bad; the third bad one (> patience) halves the scale.
    assert scales == [1.0] * 3 + [0.5] * 3 + [0.25] * 3 + [0.125] * 3
    assert float(state.best) == pytest.approx(-0.9)


def test_reduce_on_plateau_rejects_a_vector_value():
    opt = S.reduce_on_plateau()
    state = opt.init({"w": jnp.zeros(3)})
    with pytest.raises(ValueError, match=r"reduce_on_plateau: expected a scalar .* shape \(3,\)"):
        opt.update({"w": jnp.ones(3)}, state, value=jnp.array([0.5, 2.0, 2.0]))


@pytest.mark.parametrize("kwargs,message", [
    (dict(factor=2.0), "0 < factor < 1"), (dict(factor=0.0), "0 < factor < 1"),
    (dict(factor=1.0), "0 < factor < 1"), (dict(patience=-1), "patience >= 0"),
    (dict(threshold=-0.1), "threshold >= 0"), (dict(cooldown=-2), "cooldown >= 0"),
    (dict(min_scale=-1.0), "min_scale >= 0"), (dict(accumulation_size=0), "accumulation_size"),
    (dict(accumulation_size=2.5), "accumulation_size"),
])
def test_reduce_on_plateau_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=f"reduce_on_plateau.*{message}.*received"):
        S.reduce_on_plateau(**kwargs)


@pytest.mark.parametrize("make,message", [
    (lambda: S.cosine(0.1, 0), "cosine: expected steps > 0, received 0"),
    (lambda: S.polynomial(0.1, 0.0, 0), "polynomial: expected steps > 0, received 0"),
    (lambda: S.momentum_ramp(-5), "polynomial: expected steps > 0, received -5"),
    (lambda: S.inverse_after(0.1, 0), "inverse_after: expected tau > 0, received 0"),
    (lambda: S.step_decay(0.1, 0.5, 0), "step_decay: expected every > 0, received 0"),
    (lambda: S.warmup(S.constant(0.1), -1), "warmup: expected steps >= 0, received -1"),
    (lambda: S.join([S.constant(1.0)] * 3, [30, 10]), "join: expected strictly increasing"),
    (lambda: S.join([S.constant(1.0)] * 3, [10, 10]), "join: expected strictly increasing"),
])
def test_degenerate_schedule_arguments_are_refused_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_traced_schedule_arguments_are_not_checked():
    """fn.tune may vmap over a schedule's steps: construction must not branch on tracers."""
    values = jax.vmap(lambda n: S.cosine(1.0, n)(jnp.asarray(5)))(jnp.array([10, 20]))
    chex.assert_trees_all_close(values, jnp.array([0.5, 0.5 * (1 + math.cos(math.pi / 4))]),
                                rtol=1e-6)
    joined = jax.jit(lambda b: S.join([S.constant(1.0)] * 3, [b, b + 5])(jnp.asarray(7)))(4)
    assert float(joined) == 1.0
