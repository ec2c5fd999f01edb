"""Strict numerics for every test (as equinox does): implicit rank and dtype promotion are errors.

`(N,)` silently broadcasting against `(N, 1)` is the classic wrong-gradient bug.
"""
import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

# JAX's persistent compilation cache, shared by the xdist workers, the example subprocesses
# (through the environment) and later runs: the suite compiles the same program in many tests
# (equal HLO from different closures), and a second run starts warm. Keyed by the program, the
# jax version and the flags, so an entry is never reused wrongly; FUNCNN_TEST_XLA_CACHE=off
# compiles everything afresh, and a JAX_COMPILATION_CACHE_DIR already set is respected.
if os.environ.get("FUNCNN_TEST_XLA_CACHE", "").lower() not in ("off", "0", "false"):
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                          str(Path(__file__).resolve().parent.parent / ".xla_cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


@pytest.fixture
def x64():
    """Run the test body with float64 enabled, restoring the previous setting afterwards."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def mnist_dir():
    """The folder holding the real MNIST IDX files, from $FUNCNN_DATA_DIR; skips when absent."""
    folder = os.environ.get("FUNCNN_DATA_DIR")
    if not folder or not (Path(folder) / "train-labels-idx1-ubyte.gz").exists():
        pytest.skip("real MNIST not found: set FUNCNN_DATA_DIR to a folder with the four IDX "
                    "files (e.g. ../shared/data/mnist); .ci/run does this")
    return folder


@pytest.fixture(scope="session")
def spiral():
    """The 3-class spiral: 300 training and 150 validation points, ((x, y), (xv, yv))."""
    import funcnn as fn
    return (fn.data.spiral(jax.random.key(0), points_per_class=100, classes=3),
            fn.data.spiral(jax.random.key(1), points_per_class=50, classes=3))
