"""Every alias makes the same steps as its torch.optim namesake: float64, 100 steps, rtol 1e-6.

Both libraries start from the same parameters of a small tanh network and each computes its own
gradients of the same mean squared error, so the gradients depend on where each trajectory is.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn

torch = pytest.importorskip(
    "torch", reason="torch is the independent reference for the update rules (test-only; "
                    "`pip install torch==2.13.0`, .ci/run installs it)")

STEPS = 100
sch = fn.optim.schedules


def _problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3))
    y = np.sin(x @ rng.normal(size=(3, 1)))
    params = ({"w": rng.normal(size=(3, 4)) * 0.5, "b": rng.normal(size=(4,)) * 0.1},
              {"w": rng.normal(size=(4, 1)) * 0.5, "b": np.zeros(1)})
    return x, y, params


def _jax_trajectory(opt, x, y, params, **extra):
    def loss(p):
        h = jnp.tanh(x @ p[0]["w"] + p[0]["b"][None])
        return jnp.mean((h @ p[1]["w"] + p[1]["b"][None] - y) ** 2)

    def step(carry, _):
        p, s = carry
        value, g = jax.value_and_grad(loss)(p)
        u, s = opt.update(g, s, p, value=value)
        p = fn.optim.apply_updates(p, u)
        return (p, s), p

    params = jax.tree.map(jnp.asarray, params)
    _, path = jax.lax.scan(step, (params, opt.init(params)), None, length=STEPS)
    return jax.tree.map(np.asarray, path)


def _torch_trajectory(make_opt, x, y, params, make_scheduler=None, before_step=None):
    tensors = [{k: torch.tensor(v, requires_grad=True) for k, v in layer.items()}
               for layer in params]
    weights = [layer["w"] for layer in tensors]
    biases = [layer["b"] for layer in tensors]
    opt = make_opt(weights, biases)
    scheduler = make_scheduler(opt) if make_scheduler else None
    xt, yt = torch.tensor(x), torch.tensor(y)
    path = []
    for t in range(STEPS):
        opt.zero_grad()
        h = torch.tanh(xt @ tensors[0]["w"] + tensors[0]["b"])
        loss = torch.mean((h @ tensors[1]["w"] + tensors[1]["b"] - yt) ** 2)
        loss.backward()
        if before_step:
            before_step(opt, t)
        opt.step()
        if scheduler:
            scheduler.step()
        path.append(tuple({k: v.detach().numpy().copy() for k, v in layer.items()}
                          for layer in tensors))
    return jax.tree.map(lambda *xs: np.stack(xs), *path)


def _all(cls, **kw):
    return lambda w, b: cls(w + b, **kw)


def _set_momentum(schedule):
    def before_step(opt, t):
        opt.param_groups[0]["momentum"] = float(schedule(t))
    return before_step


CASES = {
    "sgd": (fn.optim.sgd(0.1), _all(torch.optim.SGD, lr=0.1), {}),
    "momentum": (fn.optim.sgd(0.05, momentum=0.9),
                 _all(torch.optim.SGD, lr=0.05, momentum=0.9), {}),
    "nesterov": (fn.optim.sgd(0.05, momentum=0.9, nesterov=True),
                 _all(torch.optim.SGD, lr=0.05, momentum=0.9, nesterov=True), {}),
    "adagrad": (fn.optim.adagrad(0.1), _all(torch.optim.Adagrad, lr=0.1), {}),
    "rmsprop": (fn.optim.rmsprop(0.01), _all(torch.optim.RMSprop, lr=0.01), {}),
    "rmsprop_momentum": (fn.optim.rmsprop(0.003, momentum=0.9),
                         _all(torch.optim.RMSprop, lr=0.003, momentum=0.9), {}),
    "adam": (fn.optim.adam(0.01), _all(torch.optim.Adam, lr=0.01), {}),
    "adamw": (fn.optim.adamw(0.01, weight_decay=0.5),
              lambda w, b: torch.optim.AdamW([{"params": w}, {"params": b, "weight_decay": 0.0}],
                                             lr=0.01, weight_decay=0.5), {}),
    # Schedules: torch changes the learning rate between steps, we read it from the count.
    "adamw_cosine": (fn.optim.adamw(sch.cosine(0.02, STEPS), weight_decay=0.5),
                     lambda w, b: torch.optim.AdamW(
                         [{"params": w}, {"params": b, "weight_decay": 0.0}], lr=0.02,
                         weight_decay=0.5),
                     {"make_scheduler": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(
                         o, T_max=STEPS)}),
    "momentum_step_decay": (fn.optim.sgd(sch.step_decay(0.05, 0.5, 30), momentum=0.9),
                            _all(torch.optim.SGD, lr=0.05, momentum=0.9),
                            {"make_scheduler": lambda o: torch.optim.lr_scheduler.StepLR(
                                o, step_size=30, gamma=0.5)}),
    "momentum_ramp": (fn.optim.sgd(0.05, momentum=sch.momentum_ramp(60)),
                      _all(torch.optim.SGD, lr=0.05, momentum=0.5),
                      {"before_step": _set_momentum(sch.momentum_ramp(60))}),
}


def max_relative_deviation(ours, theirs):
    """max over every step and coordinate of |ours − theirs| / |theirs|."""
    return max(float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))
               for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)))


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
@pytest.mark.parametrize("name", list(CASES))
def test_trajectory_matches_torch(name, x64):
    opt, make_torch_opt, torch_kwargs = CASES[name]
    x, y, params = _problem()
    ours = _jax_trajectory(opt, x, y, params)
    theirs = _torch_trajectory(make_torch_opt, x, y, params, **torch_kwargs)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-6, atol=1e-12)
    assert not np.allclose(ours[0]["w"][-1], params[0]["w"])   # the parameters did move


def test_adamw_leaves_biases_to_adam(x64):
    """Decay reaches only the kernels: with the mask, biases follow plain Adam."""
    x, y, params = _problem()
    decayed = _jax_trajectory(fn.optim.adamw(0.01, weight_decay=0.5), x, y, params)
    no_mask = _jax_trajectory(fn.optim.adamw(0.01, weight_decay=0.5, mask=True), x, y, params)
    biases = _torch_trajectory(_all(torch.optim.AdamW, lr=0.01, weight_decay=0.5), x, y, params)
    chex.assert_trees_all_close(no_mask, biases, rtol=1e-6, atol=1e-12)
    assert not np.allclose(decayed[1]["b"], no_mask[1]["b"])
