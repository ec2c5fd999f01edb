"""Hyper-parameters held in the optimizer state: inject_hyperparams, (set_)hyperparams."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn

O, S = fn.optim, fn.optim.schedules


def _params():
    return {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.25, -1.0])}


def _grads(k):
    rng = np.random.default_rng(k)
    return {"w": jnp.asarray(rng.normal(size=(2, 2)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=2), jnp.float32)}


def _close(tree, expected, **kw):
    chex.assert_trees_all_close(jax.tree.map(np.asarray, tree), expected, **kw)


@pytest.mark.parametrize("opt,expected", [
    (O.sgd(0.1), {"learning_rate": 0.1}),
    (O.sgd(0.1, momentum=0.9, nesterov=True), {"learning_rate": 0.1, "momentum": 0.9}),
    (O.adagrad(0.1), {"learning_rate": 0.1, "eps": 1e-10}),
    (O.rmsprop(0.01), {"learning_rate": 0.01, "decay": 0.99, "eps": 1e-8}),
    (O.rmsprop(0.01, momentum=0.5),
     {"learning_rate": 0.01, "decay": 0.99, "eps": 1e-8, "momentum": 0.5}),
    (O.adam(1e-3), {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8}),
    (O.adamw(1e-3, weight_decay=0.5),
     {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.5}),
], ids=["sgd", "nesterov", "adagrad", "rmsprop", "rmsprop_momentum", "adam", "adamw"])
def test_every_alias_holds_its_numeric_hyperparameters(opt, expected):
    state = opt.init(_params())
    values = O.hyperparams(state)
    assert isinstance(state, O.InjectState) and set(values) == set(expected)
    assert all(v.dtype == jnp.float32 and v.shape == () for v in values.values())
    _close(values, expected)
    assert O.hyperparams(O.sgd(0.1).init(_params())) == {"learning_rate": 0.1}


def test_sgd_without_momentum_keeps_no_velocity_and_no_unread_counter():
    state = O.sgd(0.1).init(_params())
    assert len(state.inner_state) == 1 and state.inner_state[0] == O.EmptyState()
    assert isinstance(O.scale_by_learning_rate(O.schedules.constant(0.1)).init(_params()),
                      O.CountState)   # a schedule reads the count
    momentum = O.sgd(0.1, momentum=0.9).init(_params())
    assert isinstance(momentum.inner_state[0], O.TraceState)


@pytest.mark.parametrize("make,name", [
    (lambda v: O.sgd(v), "learning_rate"), (lambda v: O.sgd(0.1, momentum=v), "momentum"),
    (lambda v: O.adam(v), "learning_rate"), (lambda v: O.adam(0.1, b2=v), "b2"),
    (lambda v: O.adamw(0.1, weight_decay=v), "weight_decay"),
    (lambda v: O.rmsprop(v), "learning_rate"), (lambda v: O.adagrad(0.1, eps=v), "eps")])
@pytest.mark.parametrize("value", [None, "0.1", True])
def test_an_alias_refuses_a_non_number_naming_the_parameter(make, name, value):
    with pytest.raises(TypeError, match=f"expected {name} to be a number or a schedule.*"
                                        f"received {value!r}"):
        make(value)


def test_changing_the_learning_rate_between_steps_does_not_recompile():
    """SGD with momentum against the hand-written v ← μv + g, p ← p − α_k·v."""
    opt = O.sgd(0.1, momentum=0.9)
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return O.apply_updates(params, updates), state

    params, state = _params(), opt.init(_params())
    p, v = jax.tree.map(np.asarray, _params()), {"w": 0.0, "b": 0.0}
    for k, lr in enumerate([0.1, 0.1, 0.05, 0.01]):
        state = O.set_hyperparams(state, learning_rate=lr)
        params, state = step(params, state, _grads(k))
        for name, g in _grads(k).items():
            v[name] = 0.9 * v[name] + np.asarray(g)
            p[name] = p[name] - lr * v[name]
        _close(O.hyperparams(state), {"learning_rate": lr, "momentum": 0.9})
    _close(params, p, rtol=1e-6)


def test_a_schedule_stays_a_schedule_and_set_hyperparams_rescales_it():
    """α_k = 0.1·0.5^k; after the rate is halved at k = 2, α_k = 0.5·0.1·0.5^k."""
    opt = O.sgd(S.exponential(0.1, 0.5))
    params, state = _params(), opt.init(_params())
    _close(O.hyperparams(state), {"learning_rate": 0.1})               # schedule(0) at count 0
    p = jax.tree.map(np.asarray, params)
    for k in range(5):
        if k == 2:
            reported = O.hyperparams(state)["learning_rate"]               # schedule(1) = 0.05
            _close(reported, 0.05)
            state = O.set_hyperparams(state, learning_rate=reported / 2)
            _close(O.hyperparams(state), {"learning_rate": 0.025})
            _close(state.scales, {"learning_rate": 0.5})
        updates, state = opt.update(_grads(k), state, params)
        params = O.apply_updates(params, updates)
        rate = 0.1 * 0.5 ** k * (0.5 if k >= 2 else 1.0)
        p = {name: p[name] - rate * np.asarray(g) for name, g in _grads(k).items()}
        _close(O.hyperparams(state), {"learning_rate": rate}, rtol=1e-6)  # the last update's
    _close(params, p, rtol=1e-6)


def test_a_schedule_at_zero_cannot_be_rescaled():
    state = O.sgd(S.warmup(S.constant(0.1), 10)).init(_params())
    _close(O.hyperparams(state), {"learning_rate": 0.0})
    _close(O.hyperparams(O.set_hyperparams(state, learning_rate=0.5)), {"learning_rate": 0.0})


def test_unknown_names_and_states_without_hyperparameters_are_errors():
    state = O.adam(1e-3).init(_params())
    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['lr'\]; known: "
                                         r"\['b1', 'b2', 'eps', 'learning_rate'\]"):
        O.set_hyperparams(state, lr=0.1)
    plain = O.chain(O.trace(0.9), O.scale_by_learning_rate(0.1)).init(_params())
    assert O.hyperparams(plain) == {}
    with pytest.raises(ValueError, match="not built with fn.optim.inject_hyperparams"):
        O.set_hyperparams(plain, learning_rate=0.1)
    with pytest.raises(ValueError, match="no group 'x'"):
        O.set_hyperparams(state, group="x", learning_rate=0.1)


def test_hyperparameters_are_found_inside_a_chain():
    """chain(adam, ema): Adam's step is linear in α, and the average follows the new step."""
    params, grads = _params(), _grads(0)
    opt = O.chain(O.adam(1e-3), O.ema(0.9))
    state = opt.init(params)
    _close(O.hyperparams(state), {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8})
    before, _ = opt.update(grads, state, params)
    faster = O.set_hyperparams(state, learning_rate=3e-3)
    after, new_state = opt.update(grads, faster, params)
    _close(after, jax.tree.map(lambda u: 3 * np.asarray(u), before), rtol=1e-6)
    _close(O.averaged_params(new_state),
           jax.tree.map(lambda p, u: 0.9 * p + 0.1 * (p + u), params, after), rtol=1e-6)
    assert isinstance(faster, tuple) and isinstance(faster[1], O.EmaState)


def test_inject_hyperparams_of_any_factory():
    """clip_by_global_norm's c held in the state: g·min(1, c/‖g‖) with the current c."""
    opt = O.inject_hyperparams(O.clip_by_global_norm)(max_norm=1.0)
    grads = {"w": jnp.array([3.0, 4.0])}                                # ‖g‖ = 5
    state = opt.init(grads)
    _close(O.hyperparams(state), {"max_norm": 1.0})
    _close(opt.update(grads, state)[0], {"w": np.array([0.6, 0.8])})
    _close(opt.update(grads, O.set_hyperparams(state, max_norm=2.5))[0],
           {"w": np.array([1.5, 2.0])})


def test_static_args_bools_and_strings_stay_static():
    opt = O.inject_hyperparams(O.reduce_on_plateau, static_args=("patience",))(
        factor=0.5, patience=0, threshold_mode="abs", threshold=0.1)
    state = opt.init({"w": jnp.zeros(1)})
    assert set(O.hyperparams(state)) == {"factor", "threshold"}
    state = O.set_hyperparams(state, factor=0.25)
    for loss in [1.0, 0.95]:                       # the second is no improvement by 0.1: reduce
        updates, state = opt.update({"w": jnp.ones(1)}, state, value=loss)
    _close(updates, {"w": np.array([0.25])})


def test_injecting_an_alias_injects_once():
    """inject_hyperparams(adam): the outer transform holds the rate, the inner Adam does not."""
    params, grads = _params(), _grads(0)
    opt = O.inject_hyperparams(O.adam)(learning_rate=1e-3)
    state = opt.init(params)
    assert set(O.hyperparams(state)) == {"learning_rate"}
    assert not isinstance(state.inner_state, O.InjectState)
    updates, _ = opt.update(grads, O.set_hyperparams(state, learning_rate=0.02), params)
    plain = O.chain(O.scale_by_adam(), O.scale_by_learning_rate(0.02))   # b1, b2, eps constants
    _close(updates, plain.update(grads, plain.init(params), params)[0], rtol=1e-6)

    rate = S.exponential(0.1, 0.5)
    opt = O.inject_hyperparams(lambda learning_rate: O.chain(O.clip_by_global_norm(1e3),
                                                             O.sgd(learning_rate)))(
        learning_rate=rate)
    state = opt.init(params)
    for k in range(3):
        updates, state = opt.update(grads, state, params)
        _close(updates, jax.tree.map(lambda g: -0.1 * 0.5 ** k * np.asarray(g), grads),
               rtol=1e-6)


def test_vmapped_states_hold_one_value_per_member():
    """Three SGD members with their own rates: p_i ← p_i − α_i·g_i."""
    opt = O.sgd(0.1)
    stacked = jax.tree.map(lambda x: jnp.stack([x, 2 * x, 3 * x]), _params())
    grads = jax.tree.map(lambda x: jnp.stack([x, -x, 0.5 * x]), _grads(0))
    state = jax.vmap(opt.init)(stacked)
    _close(O.hyperparams(state), {"learning_rate": np.full(3, 0.1)})
    state = O.set_hyperparams(state, learning_rate=jnp.array([0.1, 0.2, 0.3]))
    updates, state = jax.jit(jax.vmap(opt.update))(grads, state, stacked)
    rates = np.array([0.1, 0.2, 0.3])
    _close(updates, jax.tree.map(lambda g: -rates.reshape(-1, *[1] * (g.ndim - 1))
                                 * np.asarray(g), grads), rtol=1e-6)
    _close(O.hyperparams(O.set_hyperparams(state, learning_rate=0.5)),
           {"learning_rate": np.full(3, 0.5)})

    traced = jax.vmap(lambda lr: O.sgd(lr, momentum=0.9).init(_params()))(jnp.array([0.1, 0.2]))
    _close(O.hyperparams(traced),
           {"learning_rate": np.array([0.1, 0.2]), "momentum": np.full(2, 0.9)})


def test_hyperparameters_follow_the_float_precision(x64):
    state = O.adam(1e-3).init({"w": jnp.zeros(2)})
    assert all(v.dtype == jnp.float64 for v in O.hyperparams(state).values())
