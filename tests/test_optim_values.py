"""Optimizers and schedules are values: equal configuration, equal and hash-equal results."""
import functools

import chex
import jax
import jax.numpy as jnp
import pytest

import funcnn as fn

O, S = fn.optim, fn.optim.schedules

# name: a factory of one number x; x = 0.5 and x = 0.25 must give different values.
FACTORIES = {
    "sgd": lambda x: O.sgd(x),
    "momentum": lambda x: O.sgd(0.1, momentum=x, nesterov=True),
    "adam": lambda x: O.adam(x),
    "adamw": lambda x: O.adamw(0.1, weight_decay=x),
    "rmsprop": lambda x: O.rmsprop(x, momentum=0.9),
    "adagrad": lambda x: O.adagrad(x),
    "scale_by_learning_rate": lambda x: O.scale_by_learning_rate(x),
    "trace": lambda x: O.trace(x),
    "scale_by_adagrad": lambda x: O.scale_by_adagrad(eps=x),
    "scale_by_rms": lambda x: O.scale_by_rms(decay=x),
    "scale_by_adam": lambda x: O.scale_by_adam(b1=x),
    "add_decayed_weights": lambda x: O.add_decayed_weights(x),
    "l1_shrinkage": lambda x: O.l1_shrinkage(x),
    "project_max_norm": lambda x: O.project_max_norm(x),
    "clip_by_global_norm": lambda x: O.clip_by_global_norm(x),
    "ema": lambda x: O.ema(x),
    "accumulate_gradients": lambda x: O.accumulate_gradients(O.sgd(x), every=2),
    "skip_not_finite": lambda x: O.skip_not_finite(O.adam(x)),
    "chain": lambda x: O.chain(O.clip_by_global_norm(1.0), O.sgd(x)),
    "reduce_on_plateau": lambda x: O.reduce_on_plateau(factor=x),
    "inject_hyperparams": lambda x: O.inject_hyperparams(O.clip_by_global_norm)(max_norm=x),
    "partition": lambda x: O.partition({"0/*": O.sgd(x), "1/*": O.frozen()}),
    "partition_default": lambda x: O.partition({"0/*": O.frozen()}, default=O.adam(x)),
    "sgd_cosine": lambda x: O.sgd(S.cosine(x, 100)),
    "constant": lambda x: S.constant(x),
    "step_decay": lambda x: S.step_decay(0.1, x, every=3),
    "multistep": lambda x: S.multistep(0.1, [5, 20], x),
    "exponential": lambda x: S.exponential(0.1, x),
    "inverse_time": lambda x: S.inverse_time(0.1, x),
    "inverse_power": lambda x: S.inverse_power(0.1, 0.2, x),
    "inverse_after": lambda x: S.inverse_after(x, 10),
    "polynomial": lambda x: S.polynomial(x, 0.0, 40),
    "cosine": lambda x: S.cosine(x, 40),
    "join": lambda x: S.join([S.constant(x), S.cosine(0.1, 10)], [5]),
    "warmup": lambda x: S.warmup(S.cosine(0.1, 10), 5, init_value=x),
    "momentum_ramp": lambda x: S.momentum_ramp(50, init_value=x),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_equal_configuration_gives_equal_and_hash_equal_values(name):
    make = FACTORIES[name]
    a, b, other = make(0.5), make(0.5), make(0.25)
    assert a == b and hash(a) == hash(b)
    assert a != other
    assert len({a, b, other}) == 2


def test_keyword_and_positional_arguments_and_defaults_give_the_same_value():
    assert O.adam(1e-3) == O.adam(learning_rate=1e-3) == O.adam(1e-3, b1=0.9, b2=0.999)
    assert O.sgd(S.cosine(0.1, 100)) == O.sgd(learning_rate=S.cosine(0.1, steps=100))
    assert O.adam(1e-3) != O.adamw(1e-3) and O.frozen() == O.frozen()
    assert O.adam(1e-3) != O.adam(1e-3, b2=0.99)


def test_values_unpack_as_init_update_pairs():
    init, update = O.adam(1e-3)
    params = {"w": jnp.ones(2)}
    updates, _ = update({"w": jnp.ones(2)}, init(params), params)
    chex.assert_trees_all_close(updates, {"w": jnp.full(2, -1e-3)}, rtol=1e-5)


def test_unhashable_arguments_fall_back_to_identity():
    lr = jnp.asarray(0.1)
    a, b = O.adam(lr), O.adam(lr)
    assert a == a and a != b                       # never wrongly equal
    hash(a)
    schedule = S.cosine(jnp.asarray(0.1), 10)
    assert schedule == schedule and schedule != S.cosine(jnp.asarray(0.1), 10)

    def built_from_a_traced_rate(rate):
        opt = O.sgd(rate, momentum=0.9)
        assert opt == opt and opt != O.sgd(rate, momentum=0.9)
        params = {"w": jnp.ones(2)}
        return opt.update({"w": jnp.ones(2)}, opt.init(params), params)[0]["w"]

    chex.assert_trees_all_close(jax.jit(built_from_a_traced_rate)(0.5), jnp.full(2, -0.5))


def test_an_equal_rebuilt_optimizer_reuses_the_compiled_step():
    @functools.partial(jax.jit, static_argnums=0)
    @chex.assert_max_traces(n=1)
    def step(opt, params, grads):
        updates, _ = opt.update(grads, opt.init(params), params)
        return O.apply_updates(params, updates)

    chex.clear_trace_counter()
    params = {"w": jnp.ones(3)}
    first = step(O.adamw(S.warmup(S.cosine(0.1, 100), 10)), params, params)
    again = step(O.adamw(S.warmup(S.cosine(0.1, 100), 10)), params, params)   # no new trace
    chex.assert_trees_all_equal(first, again)
