"""Property-based tests (hypothesis) of funcnn's public boundary.

Random shapes (empty and wrong ranks included), dtypes (int, bool, complex, float16, bfloat16,
float32) and values (NaN, ±Inf) go into the losses, the layers' init/apply, checkpoint.load,
the data helpers and fit's argument checks. Each call either works and matches an independent
reference (numpy in float64, closed forms) or raises a ValueError/TypeError/CheckpointError whose
message names the function and says what was expected and what was received.

The runs are bounded and derandomized (a fixed seed per test, no example database), so CI sees the
same examples every time and the file stays fast.
"""
import io
import json
import math
import zipfile

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn import nn
from funcnn.checkpoint import CheckpointError


def bounded(examples):
    return hypothesis.settings(max_examples=examples, deadline=None, derandomize=True,
                               database=None, suppress_health_check=list(hypothesis.HealthCheck))


DTYPES = ("int32", "bool", "complex64", "float16", "bfloat16", "float32")


def assert_clear(error, name):
    """A ValueError/TypeError naming `name` that says what was expected and what was received."""
    message = str(error)
    assert isinstance(error, (ValueError, TypeError)), repr(error)
    assert name in message and "expected" in message and "received" in message, message


@st.composite
def arrays(draw, shape, dtype=st.sampled_from(DTYPES), low=-3.0, high=3.0, nonfinite=False):
    """A jax array of `shape` and a drawn dtype: ints in [low, high], bools, floats (with NaN/±Inf
    when `nonfinite`), complex numbers."""
    dtype = draw(dtype) if isinstance(dtype, st.SearchStrategy) else dtype
    n = math.prod(shape)
    if dtype == "bool":
        values = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    elif dtype == "int32":
        values = draw(st.lists(st.integers(math.floor(low), math.ceil(high)), min_size=n,
                               max_size=n))
    else:
        real = st.floats(low, high, width=16)
        if nonfinite:
            real = real | st.sampled_from([math.nan, math.inf, -math.inf])
        values = draw(st.lists(real, min_size=n, max_size=n))
        if dtype == "complex64":
            values = [complex(v, 1.0) for v in values]
    host = {"bool": bool, "int32": np.int64, "complex64": complex}.get(dtype, np.float64)
    return jnp.asarray(np.array(values, dtype=host).reshape(shape)).astype(dtype)


shapes = st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple)


def f64(a):
    return np.asarray(jnp.asarray(a).astype(jnp.float32), np.float64)


# ---------------------------------------------------------------------------------------------
# Losses: valid inputs match numpy in float64, invalid ones are refused by name.

L = fn.losses
ELEMENTWISE = ("mean_squared_error", "l1", "binary_cross_entropy", "sigmoid_binary_cross_entropy",
               "max_margin", "multilabel_hinge", "multilabel_logistic")
PROBABILITIES = ("binary_cross_entropy", "log_likelihood")


def _rows(labels, outputs):
    labels = np.asarray(labels)
    if labels.ndim == outputs.ndim - 1:
        return np.eye(outputs.shape[-1])[labels]
    return f64(labels)


def _log_softmax(z):
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _clamped_log(p):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum(np.log(p), -100.0)


def _softplus(z):
    return np.logaddexp(0.0, z)


REFERENCES = {
    "mean_squared_error": lambda f, y: np.mean((f64(f) - f64(y)) ** 2),
    "l1": lambda f, y: np.mean(np.abs(f64(f) - f64(y))),
    "binary_cross_entropy": lambda p, t: -np.mean(f64(t) * _clamped_log(f64(p))
                                                  + (1 - f64(t)) * _clamped_log(1 - f64(p))),
    "sigmoid_binary_cross_entropy": lambda z, t: np.mean(_softplus(f64(z)) - f64(t) * f64(z)),
    "max_margin": lambda s, c: np.mean(np.maximum(0.0, 1.0 + f64(c) - f64(s))),
    "multilabel_hinge": lambda s, t: np.mean(np.sum(np.maximum(0.0, 1.0 - f64(t) * f64(s)), -1)),
    "multilabel_logistic": lambda z, t: np.mean(np.sum(_softplus(f64(z)) - f64(t) * f64(z), -1)),
    "softmax_cross_entropy": lambda z, y: -np.mean(np.sum(_rows(y, z) * _log_softmax(f64(z)),
                                                          -1)),
    "log_likelihood": lambda a, y: -np.mean(np.sum(_rows(y, a) * _clamped_log(f64(a)), -1)),
    "multiclass_hinge": lambda s, y: np.mean(np.sum(
        (1 - _rows(y, s)) * np.maximum(0.0, f64(s) - np.sum(f64(s) * _rows(y, s), -1,
                                                             keepdims=True) + 1.0), -1)),
}


def _valid(name, outputs, targets) -> bool:
    """Whether (outputs, targets) is a documented input of loss `name` (see fn.losses)."""
    if jnp.iscomplexobj(outputs) or jnp.iscomplexobj(targets) or outputs.size == 0:
        return False
    in_unit = lambda a: a.dtype == jnp.bool_ or bool(jnp.all((f64(a) >= 0) & (f64(a) <= 1)))
    if name in PROBABILITIES and not in_unit(outputs):
        return False
    if name in ELEMENTWISE:
        return outputs.shape == targets.shape and (outputs.ndim >= 1 or "multilabel" not in name)
    if outputs.ndim != 2:
        return False
    int_ids = jnp.issubdtype(targets.dtype, jnp.integer) and targets.shape == outputs.shape[:1]
    if int_ids:
        return bool(jnp.all((targets >= 0) & (targets < outputs.shape[1])))
    return name != "multiclass_hinge" and targets.shape == outputs.shape


@st.composite
def loss_inputs(draw):
    name = draw(st.sampled_from(sorted(REFERENCES)))
    shape = draw(st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple)
                 | st.tuples(st.integers(1, 3), st.integers(1, 4)))
    low, high = (0.0, 1.0) if name in PROBABILITIES and draw(st.booleans()) else (-3.0, 3.0)
    outputs = draw(arrays(shape, low=low, high=high))
    target_shape = draw(st.sampled_from([shape, shape[:1], shape[:-1]]) | shapes)
    if name in ("softmax_cross_entropy", "log_likelihood", "multiclass_hinge") and \
            target_shape == shape[:1] and len(shape) == 2:
        targets = draw(arrays(target_shape, dtype=st.sampled_from(["int32", "int32", "bool"]),
                              low=-1, high=shape[1]))
    else:
        targets = draw(arrays(target_shape, low=0.0 if name in PROBABILITIES else -3.0,
                              high=1.0 if name in PROBABILITIES else 3.0))
    return name, outputs, targets


@bounded(40)
@hypothesis.given(loss_inputs())
def test_losses_match_numpy_or_refuse_by_name(case):
    name, outputs, targets = case
    loss = getattr(L, name)
    valid = _valid(name, outputs, targets)
    try:
        value = loss(outputs, targets)
    except (ValueError, TypeError) as error:
        assert not valid, f"{name} refused valid inputs: {error}"
        assert_clear(error, name)
        return
    assert valid, f"{name} accepted {outputs.dtype}{outputs.shape}, {targets.dtype}{targets.shape}"
    assert value.shape == () and value.dtype == jnp.float32
    np.testing.assert_allclose(float(value), REFERENCES[name](outputs, targets), rtol=1e-5,
                               atol=1e-5)
    grad = loss.grad(outputs, targets)
    first = grad[0] if name == "max_margin" else grad
    assert first.shape == outputs.shape
    assert first.dtype == (outputs.dtype if jnp.issubdtype(outputs.dtype, jnp.floating)
                           else jnp.float32)


SMOOTH = ("mean_squared_error", "sigmoid_binary_cross_entropy", "multilabel_logistic",
          "softmax_cross_entropy")


@bounded(12)
@hypothesis.given(st.sampled_from(SMOOTH), st.data())
def test_hand_written_loss_gradients_equal_autodiff(name, data):
    # One shape (values random): every new shape would compile jax.grad afresh.
    loss, batch, classes = getattr(L, name), 2, 3
    outputs = data.draw(arrays((batch, classes), dtype="float32"))
    targets = (data.draw(arrays((batch,), dtype="int32", low=0, high=classes - 1))
               if name == "softmax_cross_entropy" else
               data.draw(arrays((batch, classes), dtype="float32", low=0.0, high=1.0)))
    np.testing.assert_allclose(loss.grad(outputs, targets),
                               jax.grad(lambda o: loss(o, targets))(outputs), rtol=1e-5,
                               atol=1e-7)


@bounded(20)
@hypothesis.given(st.sampled_from(sorted(REFERENCES)), st.data())
def test_a_nan_output_gives_a_nan_loss(name, data):
    batch, classes = 2, 3
    # Never a silently finite loss for a diverged model (hinges used to clamp NaN margins to 0).
    # (Two classes at least: a one-class multiclass hinge sums over no margins, 0 for any score.)
    outputs = data.draw(arrays((batch, classes), dtype="float32",
                               low=0.0 if name in PROBABILITIES else -3.0, high=1.0))
    row, column = data.draw(st.integers(0, batch - 1)), data.draw(st.integers(0, classes - 1))
    outputs = outputs.at[row, column].set(jnp.nan)
    if name in ELEMENTWISE:
        targets = data.draw(arrays((batch, classes), dtype="float32", low=0.0, high=1.0))
    else:
        targets = data.draw(arrays((batch,), dtype="int32", low=0, high=classes - 1))
    assert math.isnan(float(getattr(L, name)(outputs, targets)))


# ---------------------------------------------------------------------------------------------
# Layers: init/apply on random dtypes, shapes and values.


def _pool_reference(x, window, reduce):
    b, h, w, c = x.shape
    oh, ow = h // window, w // window
    blocks = x[:, :oh * window, :ow * window].reshape(b, oh, window, ow, window, c)
    return reduce(blocks, axis=(2, 4))


LAYERS = {
    "Dense": (lambda: nn.Dense(3), 1, lambda p, x: x @ f64(p["w"]) + f64(p["b"])),
    "Conv2D": (lambda: nn.Conv2D(2, 1), 3, lambda p, x: np.einsum("bhwc,cf->bhwf", x,
                                                                  f64(p["w"])[0, 0]) + f64(p["b"])),
    "MaxPool": (lambda: nn.MaxPool(2), 3, lambda p, x: _pool_reference(x, 2, np.max)),
    "AvgPool": (lambda: nn.AvgPool(2), 3, lambda p, x: _pool_reference(x, 2, np.mean)),
    "L2Pool": (lambda: nn.L2Pool(2), 3,
               lambda p, x: np.sqrt(_pool_reference(x ** 2, 2, np.sum))),
    "Relu": (nn.Relu, 1, lambda p, x: np.maximum(x, 0.0)),
    "Sigmoid": (nn.Sigmoid, 1, lambda p, x: 1 / (1 + np.exp(-x))),
    "Tanh": (nn.Tanh, 1, lambda p, x: np.tanh(x)),
    "Softmax": (nn.Softmax, 1, lambda p, x: np.exp(_log_softmax(x))),
    "Flatten": (nn.Flatten, 3, lambda p, x: x.reshape(len(x), -1)),
    "BatchNorm": (nn.BatchNorm, 1, lambda p, x: (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)),
}


ELEMENTWISE_LAYERS = ("Relu", "Sigmoid", "Tanh", "Softmax")   # any shape (Softmax: last axis)


@st.composite
def layer_inputs(draw):
    name = draw(st.sampled_from(sorted(LAYERS)))
    _, rank, _ = LAYERS[name]
    good = draw(st.booleans())
    if good:
        shape = (draw(st.integers(1, 3)),) + tuple(draw(st.integers(2, 4)) for _ in range(rank))
    else:
        shape = draw(st.lists(st.integers(0, 3), min_size=0, max_size=5).map(tuple))
    dtype = draw(st.sampled_from(["float32", "float32", "float16", "bfloat16", "int32", "bool",
                                  "complex64"]))
    return name, draw(arrays(shape, dtype=dtype, nonfinite=draw(st.booleans())))


@bounded(30)
@hypothesis.given(layer_inputs())
def test_layers_match_numpy_or_refuse_by_name(case):
    name, x = case
    make, rank, reference = LAYERS[name]
    # Known (reported, funcnn/nn is not this file's to fix): Flatten on an empty batch raises
    # ZeroDivisionError from reshape(0, -1); Dense's init with 0 input features is refused by
    # its initializer's name (lecun_normal), not the layer's.
    hypothesis.assume(not (name == "Flatten" and x.ndim >= 1 and x.shape[0] == 0))
    hypothesis.assume(not (name == "Dense" and x.ndim == 2 and x.shape[1] == 0))
    # Softmax of a scalar (no class axis) raises JAX's "axis -1 is out of bounds" (reported).
    hypothesis.assume(not (name == "Softmax" and x.ndim == 0))
    layer = make()
    try:
        params, state = layer.init(jax.random.key(0), x.shape[1:])
        y, _ = layer.apply(params, state, x, train=True)
    except (ValueError, TypeError) as error:
        assert_clear(error, name)
        return
    assert jnp.issubdtype(x.dtype, jnp.floating), f"{name} accepted {x.dtype}"
    assert x.ndim == rank + 1 or name in ELEMENTWISE_LAYERS, f"{name} accepted {x.shape}"
    with np.errstate(all="ignore"):
        expected = reference(params, f64(x))
    assert y.shape == expected.shape
    precise = x.dtype == jnp.float32 and all(jnp.issubdtype(p.dtype, jnp.float32)
                                             for p in jax.tree.leaves(params))
    tol = 1e-4 if precise else 5e-2
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(f64(y), expected, rtol=tol, atol=tol)


@bounded(15)
@hypothesis.given(st.sampled_from(sorted(LAYERS)),
                  st.sampled_from([(), (0,), (-1,), 4, None, (2.0,), (2, 0, 1)]))
def test_layer_init_refuses_bad_in_shapes_by_name(name, in_shape):
    make, rank, _ = LAYERS[name]
    try:
        params, _ = make().init(jax.random.key(0), in_shape)
    except (ValueError, TypeError) as error:
        assert_clear(error, "lecun_normal" if name == "Dense" and in_shape == (0,) else name)
        return
    # Accepted: element-wise layers take any in_shape (they ignore it); the others only a
    # proper shape (non-negative ints).
    if name in ELEMENTWISE_LAYERS:
        return
    assert isinstance(in_shape, tuple) and all(isinstance(d, int) and d >= 0 for d in in_shape)
    assert all(0 not in np.shape(p) for p in jax.tree.leaves(params)) or not params


# ---------------------------------------------------------------------------------------------
# Checkpoints: random, truncated, damaged and crafted files are CheckpointErrors naming the path.

TREE = {"w": jnp.arange(6.0).reshape(2, 3), "opt": (jnp.ones(3, jnp.bfloat16), [1, "x", None]),
        "key": jax.random.key(0)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "good.ckpt"
    fn.checkpoint.save(path, TREE)
    return path.read_bytes()


def _crafted(structure: bytes, arrays) -> bytes:
    """A file with a valid checksum around `structure` (so only the structure's checks apply)."""
    from funcnn.checkpoint import _checksum   # the writer's own digest: a tamperer can compute it
    payload = {f"leaf_{i}": a for i, a in enumerate(arrays)}
    payload["__structure__"] = np.frombuffer(structure, np.uint8)
    payload["__checksum__"] = np.frombuffer(_checksum(structure, arrays).encode(), np.uint8)
    out = io.BytesIO()
    np.savez(out, **payload)
    return out.getvalue()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=3)
    | st.sampled_from(["dict", "list", "tuple", "array", "key", "scalar", "namedtuple", "kind",
                       "value"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["kind", "value", "dtype", "impl", "name", "a"]), inner, max_size=4),
    max_leaves=12)


@st.composite
def broken_files(draw, good):
    how = draw(st.sampled_from(["random", "truncated", "flipped", "crafted"]))
    if how == "random":
        return draw(st.binary(max_size=300))
    if how == "truncated":
        return good[:draw(st.integers(0, len(good) - 1))]
    if how == "flipped":
        data = bytearray(good)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    tree = draw(json_values)
    header = draw(st.sampled_from([{"format": fn.checkpoint.FORMAT, "tree": tree}, tree]))
    leaves = draw(st.lists(st.sampled_from([np.arange(4.0, dtype=np.float32),
                                            np.arange(3, dtype=np.uint16), np.zeros((), np.uint8),
                                            np.zeros((2, 0), np.int32)]), max_size=2))
    return _crafted(json.dumps(header).encode(), leaves)


@bounded(150)
@hypothesis.given(st.data())
def test_checkpoint_load_of_broken_files_raises_checkpoint_error(saved, tmp_path_factory, data):
    contents = data.draw(broken_files(saved))
    path = tmp_path_factory.getbasetemp() / "broken.ckpt"
    path.write_bytes(contents)
    for like in (None, TREE):
        try:
            loaded = fn.checkpoint.load(path, like=like)
        except CheckpointError as error:
            assert str(path) in str(error)
            continue
        # Loaded without like=: a crafted structure with a valid checksum is a legal tree.
        # Into TREE: only TREE's own contents (bytes the format ignores may differ) — the
        # checksum covers the structure and every array.
        if like is not None:
            assert jax.tree.structure(loaded) == jax.tree.structure(TREE)
            for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(TREE)):
                if isinstance(want, jax.Array) and jnp.issubdtype(want.dtype,
                                                                  jax.dtypes.prng_key):
                    got, want = jax.random.key_data(got), jax.random.key_data(want)
                np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_checkpoint_of_every_dtype_round_trips(tmp_path):
    tree = {d: jnp.asarray(np.arange(6).reshape(2, 3) % 2).astype(d) for d in DTYPES}
    tree["nonfinite"] = jnp.array([jnp.nan, jnp.inf, -jnp.inf, -0.0])
    tree["empty"] = jnp.zeros((0, 3), jnp.bfloat16)
    fn.checkpoint.save(tmp_path / "all.ckpt", tree)
    loaded = fn.checkpoint.load(tmp_path / "all.ckpt", like=tree)
    for name, leaf in tree.items():
        assert loaded[name].dtype == leaf.dtype and loaded[name].shape == leaf.shape
        np.testing.assert_array_equal(np.asarray(loaded[name]).view(np.uint8),
                                      np.asarray(leaf).view(np.uint8))


def test_a_zip_without_the_checkpoint_entries_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("leaf_0.npy", b"not an array")
    with pytest.raises(CheckpointError, match="other.zip"):
        fn.checkpoint.load(path)


# ---------------------------------------------------------------------------------------------
# Data: preprocessing, batches, the spiral.

FITS = ("fit_mean_subtraction", "fit_standardization", "fit_min_max", "fit_pca",
        "fit_pca_whitening", "fit_zca_whitening")


@bounded(30)
@hypothesis.given(st.sampled_from(FITS), shapes, st.data())
def test_preprocessing_works_on_real_inputs_or_refuses_by_name(name, shape, data):
    x = data.draw(arrays(shape))
    try:
        prep = getattr(fn.data, name)(x)
        y = prep(x)
    except (ValueError, TypeError) as error:
        assert_clear(error, "preprocessing" if x.ndim < 2 or jnp.iscomplexobj(x) else name)
        assert x.ndim < 2 or jnp.iscomplexobj(x) or x.shape[0] == 0
        return
    assert x.ndim >= 2 and x.shape[0] > 0 and not jnp.iscomplexobj(x)
    features = f64(x).reshape(len(x), -1)
    if name == "fit_mean_subtraction":
        np.testing.assert_allclose(f64(y).reshape(len(x), -1), features - features.mean(0),
                                   atol=1e-5)
    elif name == "fit_standardization":
        std = features.std(0)
        expected = (features - features.mean(0)) / np.where(std < 1e-8, 1.0, std)
        np.testing.assert_allclose(f64(y).reshape(len(x), -1), expected, rtol=1e-4, atol=1e-4)
    elif name == "fit_min_max":
        assert np.all((f64(y) >= -1 - 1e-5) & (f64(y) <= 1 + 1e-5))
    else:
        assert np.isfinite(f64(y)).all() and len(y) == len(x)


@bounded(20)
@hypothesis.given(st.integers(0, 4), st.sampled_from(DTYPES),
                  st.one_of(st.integers(-1, 8), st.sampled_from([1.5, "2", None, True])),
                  st.booleans())
def test_batches_cover_the_rows_once_or_refuse_by_name(n, dtype, batch_size, drop_last):
    x = jnp.arange(n).astype(dtype) if dtype != "bool" else jnp.arange(n) % 2 == 0
    rows = np.arange(n)
    try:
        got = list(fn.data.batches(jax.random.key(0), (x, rows), batch_size, drop_last=drop_last))
    except (ValueError, TypeError) as error:
        assert_clear(error, "batches")
        assert not (type(batch_size) is int and 0 < batch_size <= max(n, 0 if drop_last else 10**9)
                    and (n > 0 or not drop_last))
        return
    assert type(batch_size) is int and batch_size > 0
    seen = np.concatenate([b[1] for b in got]) if got else np.zeros(0, int)
    assert len(set(seen.tolist())) == len(seen)                    # no row twice
    assert len(seen) == (n - n % batch_size if drop_last else n)
    for bx, brows in got:                                          # x and y stay paired
        np.testing.assert_array_equal(np.asarray(bx), np.asarray(x)[brows])


@bounded(8)
@hypothesis.given(st.one_of(st.integers(-1, 4), st.just(2.5)), st.one_of(st.integers(-1, 3),
                  st.just(None)), st.sampled_from([0.0, 0.3, -1.0, math.nan, math.inf]))
def test_spiral_shapes_or_refuses_by_name(points, classes, noise):
    try:
        x, y = fn.data.spiral(jax.random.key(0), points, classes, noise)
    except (ValueError, TypeError) as error:
        assert_clear(error, "spiral")
        assert not (type(points) is int and points > 0 and type(classes) is int and classes > 0
                    and 0 <= noise < math.inf)
        return
    assert x.shape == (points * classes, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    np.testing.assert_array_equal(np.bincount(y, minlength=classes), [points] * classes)


# ---------------------------------------------------------------------------------------------
# fit: its argument checks run before anything compiles.

MODEL = nn.serial(nn.Dense(3))
X, Y = np.ones((8, 2), np.float32), np.zeros(8, np.int32)
bad_counts = st.sampled_from([0, -1, 1.5, "2", None, True, 9])


def _fit(**changes):
    arguments = dict(train=(X, Y), epochs=1, batch_size=4, key=jax.random.key(0), progress=False)
    arguments.update(changes)
    return fn.train.fit(MODEL, L.softmax_cross_entropy, fn.optim.sgd(0.1), **arguments)


@bounded(12)
@hypothesis.given(st.sampled_from(["epochs", "batch_size", "checkpoint_every"]), bad_counts)
def test_fit_refuses_bad_counts_by_name(argument, value):
    if value == 9 and argument != "batch_size":
        return   # 9 epochs or checkpoints are fine; 9 > the 8 examples is not a batch size
    with pytest.raises(ValueError) as caught:
        _fit(**{argument: value})
    assert_clear(caught.value, argument)
    assert repr(value) in str(caught.value)


@bounded(8)
@hypothesis.given(st.sampled_from([
    ((X[:0], Y[:0]), "training example"), ((X, Y[:5]), "targets"),
    ((X, np.full(8, 3, np.int32)), "labels"), ((X, np.full(8, -1, np.int32)), "labels")]),
    st.booleans())
def test_fit_refuses_bad_data_by_name(case, as_validation):
    data, words = case
    with pytest.raises(ValueError) as caught:
        _fit(validation=data) if as_validation else _fit(train=data)
    message = str(caught.value)
    assert message.startswith("fit") and "expected" in message and "received" in message
    assert words in message or (as_validation and "validation" in message)


# ---------------------------------------------------------------------------------------------
# The defects hypothesis found, pinned as plain regression tests (each failed before its fix).


@pytest.mark.parametrize("outputs,targets,mse,l1", [
    (jnp.array([[True, False]]), jnp.array([[False, False]]), 0.5, 0.5),   # bool − bool refused
    (jnp.array([[1, 0]], jnp.int32), jnp.array([[0.5, 0.0]], jnp.bfloat16), 0.125, 0.25),
])
def test_mixed_real_dtypes_are_computed_in_float32(outputs, targets, mse, l1):
    for name, value in (("mean_squared_error", mse), ("l1", l1)):
        assert float(getattr(L, name)(outputs, targets)) == pytest.approx(value)
    z = jnp.array([[2, -1]], jnp.int32)   # int logits: sigmoid refused int32
    assert float(L.sigmoid_binary_cross_entropy(z, jnp.array([[True, False]]))) == \
        pytest.approx(np.mean(_softplus(np.array([2.0, -1.0])) - np.array([2.0, 0.0])))


def test_hinges_keep_a_nan_score_nan():
    nan_scores = jnp.array([[jnp.nan, 1.0, 2.0]])   # the true class's score is NaN
    assert math.isnan(float(L.multiclass_hinge(nan_scores, jnp.array([0]))))
    assert math.isnan(float(L.max_margin(jnp.array([jnp.nan]), jnp.array([0.0]))))
    assert math.isnan(float(L.multilabel_hinge(nan_scores, jnp.ones((1, 3)))))


def test_a_list_as_a_node_kind_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "crafted.ckpt"
    structure = {"format": fn.checkpoint.FORMAT, "tree": {"kind": [], "value": None}}
    path.write_bytes(_crafted(json.dumps(structure).encode(), []))
    with pytest.raises(CheckpointError, match="crafted.ckpt.*expected a kind"):
        fn.checkpoint.load(path)


@pytest.mark.parametrize("x,message", [
    (jnp.zeros((0, 3)), "fit_standardization: expected at least one training example"),
    (jnp.ones((2, 3), jnp.complex64), "expected real inputs"),
])
def test_preprocessing_refuses_empty_and_complex_training_data(x, message):
    with pytest.raises((ValueError, TypeError), match=message):
        fn.data.fit_standardization(x)


def test_preprocessing_of_half_precision_inputs_under_strict_promotion():
    x = jnp.array([[1.0, 2.0], [3.0, 6.0]], jnp.bfloat16)
    np.testing.assert_allclose(fn.data.fit_standardization(x)(x), [[-1, -1], [1, 1]])


@pytest.mark.parametrize("call,message", [
    (lambda: list(fn.data.batches(jax.random.key(0), (jnp.ones(()),), 1)), "leading"),
    (lambda: list(fn.data.batches(jax.random.key(0), (jnp.ones(4),), 1.5)), "batch_size"),
    (lambda: fn.data.fit_pca(jnp.ones((4, 3)), k=1.5), "k=1.5"),
    (lambda: fn.data.spiral(jax.random.key(0), -1), "points_per_class"),
    (lambda: fn.data.spiral(jax.random.key(0), 2.5), "points_per_class"),
    (lambda: fn.data.spiral(jax.random.key(0), 3, 0), "classes"),
    (lambda: fn.data.spiral(jax.random.key(0), 3, 2, math.nan), "noise"),
])
def test_data_argument_errors_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()
