"""fit's persistent compilation cache: a second process loads the programs the first compiled,
trains bit for bit as the first did, and FUNCNN_COMPILATION_CACHE=off keeps it off."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from funcnn.train.cache import persistent_cache

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import json, jax, numpy as np
import funcnn as fn
from funcnn import nn
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
x = np.asarray(jax.random.normal(jax.random.key(0), (64, 5)), np.float32)
y = (x[:, 0] > 0).astype(np.int32)
result = fn.train.fit(nn.serial(nn.Dense(8), nn.Relu(), nn.Dense(2)),
                      fn.losses.softmax_cross_entropy, fn.optim.sgd(0.1), (x, y), epochs=2,
                      batch_size=16, key=jax.random.key(1), progress=False)
print(json.dumps({"hits": len(hits), "dir": jax.config.jax_compilation_cache_dir,
                  "params": [np.asarray(p).tolist() for p in jax.tree.leaves(result.params)]}))
"""


def _run(env_cache: str, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}   # conftest's cache
    env.update(FUNCNN_COMPILATION_CACHE=env_cache, XDG_CACHE_HOME=str(home),
               PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_run_loads_its_programs_from_disk_and_trains_identically(tmp_path):
    folder = tmp_path / "xla"
    first, second = _run(str(folder), tmp_path), _run(str(folder), tmp_path)
    assert first["dir"] == second["dir"] == str(folder)
    assert first["hits"] == 0 and second["hits"] >= 2   # at least init and the epoch program
    assert len(list(folder.iterdir())) >= 2
    for a, b in zip(first["params"], second["params"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture
def no_cache_configured():
    """jax's cache settings as a process that configured none (restored afterwards)."""
    saved = {name: getattr(jax.config, name) for name in (
        "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")}
    jax.config.update("jax_compilation_cache_dir", None)
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


def test_the_default_folder_the_opt_out_and_a_cache_set_through_jax(tmp_path, monkeypatch,
                                                                   no_cache_configured):
    monkeypatch.setenv("FUNCNN_COMPILATION_CACHE", "off")
    assert persistent_cache() is None and jax.config.jax_compilation_cache_dir is None
    monkeypatch.setenv("FUNCNN_COMPILATION_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert persistent_cache() == str(tmp_path / "funcnn" / "xla")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "funcnn" / "xla")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))   # the user's own
    assert persistent_cache() == str(tmp_path / "mine")
