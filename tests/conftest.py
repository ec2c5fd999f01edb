"""Strict numerics for every test (as equinox does): implicit rank and dtype promotion are errors.

`(N,)` silently broadcasting against `(N, 1)` is the classic wrong-gradient bug.
"""
import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


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
