"""Data parallelism on 8 simulated CPU devices (a subprocess: the device count is fixed at import).

One sharded step equals one single-device step; fit converges on the mesh; BatchNorm's batch
statistics are global (over all devices), not per-device.
"""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    import funcnn as fn
    from funcnn import nn

    mesh = fn.parallel.mesh()
    # SGD for the step comparison: Adam's first step is ±lr·sign(g), which amplifies rounding.
    loss, opt = fn.losses.softmax_cross_entropy, fn.optim.sgd(0.1)
    x, y = fn.data.spiral(jax.random.key(0))
    out = {"devices": len(jax.devices())}

    def compare(model, in_x):
        params, state = model.init(jax.random.key(1), in_x.shape[1:])
        step = fn.train.make_step(model, loss, opt)
        args = (params, state, opt.init(params))
        one = jax.jit(step)(*args, in_x, y[:64], jax.random.key(2))
        many = jax.jit(fn.parallel.data_parallel(step, mesh))(
            *fn.parallel.replicate(args, mesh), *fn.parallel.shard_batch((in_x, y[:64]), mesh),
            jax.random.key(2))
        diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), one[:3], many[:3])
        return max(jax.tree.leaves(diff)), many

    dense = nn.serial(nn.Dense(32), nn.Relu(), nn.Dense(3))
    out["dense_step_diff"], many = compare(dense, x[:64])

    bn = nn.serial(nn.Dense(16), nn.BatchNorm(), nn.Relu(), nn.Dense(3))
    skewed = x[:64] + jnp.arange(64.0)[:, None] / 8  # every device's slice has another mean
    out["bn_step_diff"], many = compare(bn, skewed)
    params, state = bn.init(jax.random.key(1), (2,))
    hidden = skewed @ params[0]["w"] + params[0]["b"][None]
    expected = 0.1 * jnp.mean(hidden, axis=0)  # running = 0.9·0 + 0.1·(global batch mean)
    out["bn_running_mean_error"] = float(jnp.max(jnp.abs(many[1][1]["mean"] - expected)))

    result = fn.train.fit(dense, loss, fn.optim.adam(1e-2), (x, y), epochs=25, batch_size=32,
                          key=jax.random.key(0), mesh=mesh, progress=False)
    out["fit_accuracy"] = result.history["accuracy"][-1]
    out["fit_params_replicated"] = all(
        leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(result.params))
    try:
        fn.train.fit(dense, loss, opt, (x, y), epochs=1, batch_size=30, key=jax.random.key(0),
                     mesh=mesh, progress=False)
    except ValueError as error:
        out["bad_batch_error"] = str(error)
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def measured():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
def test_eight_devices_step_equals_one_device_step(measured):
    assert measured["devices"] == 8
    assert measured["dense_step_diff"] < 1e-5


def test_batch_norm_uses_global_batch_statistics(measured):
    assert measured["bn_step_diff"] < 1e-5
    assert measured["bn_running_mean_error"] < 1e-5


def test_fit_on_the_mesh_converges_with_replicated_params(measured):
    assert measured["fit_accuracy"] > 0.8
    assert measured["fit_params_replicated"]


def test_batch_size_must_divide_across_devices(measured):
    assert "divisible by the 8 devices" in measured["bad_batch_error"]


@pytest.mark.slow   # ~20 s: two processes, each compiling the run (CI: pytest -m slow)
def test_multihost_recipe_runs_two_processes():
    example = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "multihost.py")
    result = subprocess.run([sys.executable, example, "--launch", "2", "--epochs", "3",
                             "--coordinator", "localhost:12387"], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr[-3000:]
    # Searched anywhere in the output: Gloo's connection log is written without newlines, so a
    # final report need not start a line.
    finals = dict(re.findall(r"process (\d)/2: 2 devices in the mesh, 1 local; final training "
                             r"accuracy (\d\.\d+)", result.stdout))
    assert set(finals) == {"0", "1"}, result.stdout[-3000:]
    assert finals["0"] == finals["1"]  # one model, one result
