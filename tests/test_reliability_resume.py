"""Save → load → continue is the same run as continue, bit for bit, for every optimizer."""
import chex
import jax
import jax.numpy as jnp
import pytest

import funcnn as fn

OPTIMIZERS = {
    "sgd": lambda: fn.optim.sgd(0.1),
    "momentum": lambda: fn.optim.sgd(0.1, momentum=0.9),
    "nesterov": lambda: fn.optim.sgd(0.1, momentum=0.9, nesterov=True),
    "adagrad": lambda: fn.optim.adagrad(0.1),
    "rmsprop": lambda: fn.optim.rmsprop(0.01, momentum=0.5),
    "adam": lambda: fn.optim.adam(1e-2),
    "adamw": lambda: fn.optim.adamw(1e-2),
    "schedule": lambda: fn.optim.sgd(fn.optim.schedules.cosine(0.1, 10)),
    "groups": lambda: fn.optim.partition({"w": fn.optim.adam(1e-2), "b": fn.optim.frozen()}),
}


@pytest.mark.parametrize("jitted", [False, True])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_restored_optimizer_state_continues_the_same_run(name, jitted, tmp_path):
    opt = OPTIMIZERS[name]()
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.full((4,), 0.3)}
    grads = [jax.tree.map(lambda p, k=k: jnp.sin(p * (k + 1.0)), params) for k in range(6)]
    update = jax.jit(opt.update) if jitted else opt.update

    def run(params, state, steps):
        for g in steps:
            updates, state = update(g, state, params)
            params = fn.optim.apply_updates(params, updates)
        return params, state

    params, state = run(params, opt.init(params), grads[:3])
    fn.checkpoint.save(tmp_path / "s.ckpt", {"params": params, "state": state})
    restored = fn.checkpoint.load(tmp_path / "s.ckpt", like={"params": params, "state": state})
    straight = run(params, state, grads[3:])
    resumed = run(restored["params"], restored["state"], grads[3:])
    chex.assert_trees_all_equal(resumed, straight)
