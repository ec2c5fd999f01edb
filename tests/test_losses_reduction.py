"""`reduction="mean" | "sum" | "none"` on every loss, and the notes' ½-scaled squared error.

"none" is checked against per-item formulas written here in numpy float64 (and against torch's
reduction="none" where torch has the same loss); "mean"/"sum" against their mean/sum; `.grad`
against `jax.grad` of the reduced loss (of the sum for "none") in float64; `reduction` is static
under jit, vmaps, and reaches the losses through fn.backprop and fn.gradcheck.
"""
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn import losses as L

B, K = 4, 5   # batch, classes / attributes
TREE = L.balanced_tree(6)   # ragged: paths of 2 and 3 decisions
HSM = L.hierarchical_softmax(TREE)


def _softplus(z):
    return np.logaddexp(0.0, z)


def _clamped_log(p):
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(p), -100.0)


def _log_softmax(z):
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _one_hot(labels, classes=K):
    return np.eye(classes)[np.asarray(labels)]


def _multiclass_hinge(s, labels, margin, squared):
    y = _one_hot(labels)
    m = np.maximum(0.0, s - (s * y).sum(-1, keepdims=True) + margin) * (1 - y)
    return (m**2 if squared else m).sum(-1)


def _hierarchical(s, labels):
    sign = np.asarray(TREE.signs, np.float64)[np.asarray(labels)]
    return np.where(sign != 0, _softplus(-sign * s), 0.0).sum(-1)


def _cases():
    """name → (loss, outputs, targets, kwargs, per-item numpy reference, items shape)."""
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    z = jax.random.normal(k1, (B, K), jnp.float64)
    y = jax.random.normal(k2, (B, K), jnp.float64)
    bits = (jax.random.uniform(k3, (B, K)) > 0.5).astype(jnp.float64)
    labels = jnp.array([0, 3, 1, 4])
    rows = jax.nn.softmax(2 * y, axis=-1)
    probs = jax.nn.softmax(z, axis=-1)
    path = jax.random.normal(k3, (B, TREE.depth), jnp.float64)
    n = lambda a: np.asarray(a, np.float64)
    return {
        "mean_squared_error": (L.mean_squared_error, z, y, {}, lambda: (n(z) - n(y)) ** 2, (B, K)),
        "l1": (L.l1, z, y, {}, lambda: np.abs(n(z) - n(y)), (B, K)),
        "binary_cross_entropy": (L.binary_cross_entropy, jax.nn.sigmoid(z), bits, {},
                                 lambda: -(n(bits) * _clamped_log(n(jax.nn.sigmoid(z)))
                                           + (1 - n(bits)) * _clamped_log(1 - n(jax.nn.sigmoid(z)))),
                                 (B, K)),
        "sigmoid_binary_cross_entropy": (L.sigmoid_binary_cross_entropy, 3 * z, bits, {},
                                         lambda: _softplus(3 * n(z)) - n(bits) * 3 * n(z), (B, K)),
        "multilabel_logistic": (L.multilabel_logistic, z, bits, {},
                                lambda: (_softplus(n(z)) - n(bits) * n(z)).sum(-1), (B,)),
        "multilabel_hinge": (L.multilabel_hinge, z, 2 * bits - 1, {"margin": 0.5},
                             lambda: np.maximum(0, 0.5 - (2 * n(bits) - 1) * n(z)).sum(-1), (B,)),
        "softmax_cross_entropy": (L.softmax_cross_entropy, z, labels, {},
                                  lambda: -(_one_hot(labels) * _log_softmax(n(z))).sum(-1), (B,)),
        "softmax_cross_entropy_rows": (L.softmax_cross_entropy, z, rows, {},
                                       lambda: -(n(rows) * _log_softmax(n(z))).sum(-1), (B,)),
        "log_likelihood": (L.log_likelihood, probs, labels, {},
                           lambda: -(_one_hot(labels) * np.log(n(probs))).sum(-1), (B,)),
        "multiclass_hinge": (L.multiclass_hinge, z, labels, {},
                             lambda: _multiclass_hinge(n(z), labels, 1.0, False), (B,)),
        "multiclass_hinge_squared": (L.multiclass_hinge, z, labels,
                                     {"margin": 0.5, "squared": True},
                                     lambda: _multiclass_hinge(n(z), labels, 0.5, True), (B,)),
        "max_margin": (L.max_margin, z[:, 0], y[:, 0], {},
                       lambda: np.maximum(0.0, 1.0 + n(y[:, 0]) - n(z[:, 0])), (B,)),
        "half_squared_error": (L.half_squared_error, z, y, {},
                               lambda: 0.5 * ((n(z) - n(y)) ** 2).sum(-1), (B,)),
        "hierarchical_softmax": (HSM, path, labels, {}, lambda: _hierarchical(n(path), labels),
                                 (B,)),
    }


NAMES = ["binary_cross_entropy", "half_squared_error", "hierarchical_softmax", "l1",
         "log_likelihood", "max_margin", "mean_squared_error", "multiclass_hinge",
         "multiclass_hinge_squared", "multilabel_hinge", "multilabel_logistic",
         "sigmoid_binary_cross_entropy", "softmax_cross_entropy", "softmax_cross_entropy_rows"]


def test_the_table_covers_every_loss(x64):
    cases = _cases()
    assert sorted(cases) == NAMES
    public = {name for name in L.__all__ if isinstance(getattr(L, name), L.Loss)}
    assert public | {"hierarchical_softmax"} == {case[0].name for case in cases.values()}


def _grad(loss, outputs, targets, kwargs, reduction):
    """jax.grad of the reduced loss (of the sum for "none"), w.r.t. the outputs (both score
    arrays for max_margin)."""
    argnums = (0, 1) if loss is L.max_margin else 0
    return jax.grad(lambda o, t: jnp.sum(loss(o, t, reduction=reduction, **kwargs)),
                    argnums=argnums)(outputs, targets)


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
@pytest.mark.parametrize("name", NAMES)
def test_none_is_the_per_item_formula_and_mean_sum_reduce_it(name, x64):
    loss, outputs, targets, kwargs, reference, shape = _cases()[name]
    items = loss(outputs, targets, reduction="none", **kwargs)
    assert items.shape == shape and items.dtype == jnp.float64
    np.testing.assert_allclose(items, reference(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(loss(outputs, targets, reduction="sum", **kwargs),
                               reference().sum(), rtol=1e-12)
    mean = loss(outputs, targets, reduction="mean", **kwargs)
    np.testing.assert_allclose(mean, reference().mean(), rtol=1e-12)
    assert float(loss(outputs, targets, **kwargs)) == float(mean)   # "mean" is the default


@pytest.mark.parametrize("name", NAMES)
def test_grad_is_the_gradient_of_the_reduced_loss(name, x64):
    loss, outputs, targets, kwargs, _, shape = _cases()[name]
    grads = {}
    for reduction in ("mean", "sum", "none"):
        grads[reduction] = loss.grad(outputs, targets, reduction=reduction, **kwargs)
        chex.assert_trees_all_close(grads[reduction],
                                    _grad(loss, outputs, targets, kwargs, reduction),
                                    rtol=1e-9, atol=1e-15)
    chex.assert_trees_all_equal(grads["none"], grads["sum"])
    count = int(np.prod(shape))
    chex.assert_trees_all_close(jax.tree.map(lambda g: g * count, grads["mean"]), grads["sum"],
                                rtol=1e-14, atol=1e-15)
    chex.assert_trees_all_equal(grads["mean"], loss.grad(outputs, targets, **kwargs))


def test_none_gives_each_example_its_own_gradient(x64):
    loss, z, labels, _, _, _ = _cases()["softmax_cross_entropy"]
    per_example = loss.grad(z, labels, reduction="none")
    for i in range(B):
        alone = loss.grad(z[i:i + 1], labels[i:i + 1])   # the mean over a batch of one
        np.testing.assert_allclose(per_example[i:i + 1], alone, rtol=1e-14)


REDUCTIONS = ("mean", "sum", "none")


def _all_reduced(cases):
    """Every loss's value and gradient under every reduction, for the inputs in `cases`."""
    return {name: [(loss(o, t, reduction=r, **kw), loss.grad(o, t, reduction=r, **kw))
                   for r in REDUCTIONS]
            for name, (loss, o, t, kw) in cases.items()}


def test_reduction_is_static_under_jit(x64):
    # One program for every loss and reduction: `reduction` is a Python string, closed over.
    cases = {name: case[:4] for name, case in _cases().items()}
    arrays = {name: (o, t) for name, (_, o, t, _) in cases.items()}
    jitted = jax.jit(lambda arrays: _all_reduced(
        {name: (loss, *arrays[name], kw) for name, (loss, _, _, kw) in cases.items()}))(arrays)
    chex.assert_trees_all_close(jitted, _all_reduced(cases), rtol=1e-12, atol=1e-15)
    loss, z, labels, _, reference, _ = _cases()["softmax_cross_entropy"]
    static = jax.jit(loss, static_argnames="reduction")
    np.testing.assert_allclose(static(z, labels, reduction="none"), reference(), rtol=1e-12)
    np.testing.assert_allclose(static(z, labels, reduction="sum"), reference().sum(), rtol=1e-12)


def test_vmap_over_members(x64):
    # An ensemble axis in front: "none" keeps (members, batch), "sum" one value per member.
    for name in ("softmax_cross_entropy", "mean_squared_error", "hierarchical_softmax"):
        loss, outputs, targets, kwargs, _, shape = _cases()[name]
        stacked = jnp.stack([outputs, 2 * outputs])

        @jax.jit
        def run(stacked):
            return [jax.vmap(lambda o: (loss(o, targets, reduction=r, **kwargs),
                                        loss.grad(o, targets, reduction=r, **kwargs)))(stacked)
                    for r in ("none", "sum")]

        expected = [jax.tree.map(lambda *m: jnp.stack(m),
                                 *[(loss(o, targets, reduction=r, **kwargs),
                                    loss.grad(o, targets, reduction=r, **kwargs))
                                   for o in stacked]) for r in ("none", "sum")]
        got = run(stacked)
        chex.assert_shape(got[0][0], (2, *shape))
        chex.assert_trees_all_close(got, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("bad", ["avg", "MEAN", None, 1, ("mean",)])
def test_bad_reduction_names_the_loss_the_choices_and_the_value(bad, x64):
    for name in NAMES:
        loss, outputs, targets, kwargs, _, _ = _cases()[name]
        message = (rf"{loss.name}: expected reduction 'mean', 'sum' or 'none', received "
                   rf"{re.escape(repr(bad))}")
        for run in (loss, loss.grad, loss.branches):
            with pytest.raises(ValueError, match=message):
                run(outputs, targets, reduction=bad, **kwargs)


def test_matches_torch_reduction_none_and_sum(x64):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    c = _cases()
    t = lambda a: torch.from_numpy(np.array(a, np.float64))
    ids = lambda a: torch.from_numpy(np.array(a, np.int64))
    pairs = {
        "mean_squared_error": lambda o, y, r: F.mse_loss(t(o), t(y), reduction=r),
        "l1": lambda o, y, r: F.l1_loss(t(o), t(y), reduction=r),
        "binary_cross_entropy": lambda o, y, r: F.binary_cross_entropy(t(o), t(y), reduction=r),
        "sigmoid_binary_cross_entropy":
            lambda o, y, r: F.binary_cross_entropy_with_logits(t(o), t(y), reduction=r),
        "softmax_cross_entropy": lambda o, y, r: F.cross_entropy(t(o), ids(y), reduction=r),
        "softmax_cross_entropy_rows": lambda o, y, r: F.cross_entropy(t(o), t(y), reduction=r),
        "log_likelihood": lambda o, y, r: F.nll_loss(torch.log(t(o)), ids(y), reduction=r),
        # torch divides these by the class count, per example
        "multiclass_hinge": lambda o, y, r: K * F.multi_margin_loss(t(o), ids(y), reduction=r),
        "multilabel_logistic":
            lambda o, y, r: K * F.multilabel_soft_margin_loss(t(o), t(y), reduction=r),
        "max_margin": lambda o, y, r: F.margin_ranking_loss(t(o), t(y), torch.ones(B),
                                                            margin=1.0, reduction=r),
    }
    for name, reference in pairs.items():
        loss, outputs, targets, kwargs, _, _ = c[name]
        for reduction in ("none", "sum"):
            np.testing.assert_allclose(loss(outputs, targets, reduction=reduction, **kwargs),
                                       reference(outputs, targets, reduction).numpy(),
                                       rtol=1e-10, err_msg=f"{name}, {reduction}")


# ---------------------------------------------------------------------------------------------
# half_squared_error: the notes' C = (1/2n) Σₓ ‖y(x) − a(x)‖².


@pytest.mark.parametrize("shape", [(3,), (2, 3, 2)])
def test_half_squared_error_is_the_notes_quadratic_cost(shape, x64):
    k1, k2 = jax.random.split(jax.random.key(1))
    a, y = (jax.random.normal(k, shape, jnp.float64) for k in (k1, k2))
    n = shape[0]
    norms = [np.sum((np.asarray(y[i]) - np.asarray(a[i])) ** 2) for i in range(n)]
    np.testing.assert_allclose(L.half_squared_error(a, y), sum(norms) / (2 * n), rtol=1e-13)
    np.testing.assert_allclose(L.half_squared_error(a, y, reduction="none"),
                               0.5 * np.array(norms), rtol=1e-13)
    # ½ × features × mean squared error, and ∂C/∂a = (a − y)/n by hand == jax.grad == FD
    features = int(np.prod(shape[1:]))
    np.testing.assert_allclose(L.half_squared_error(a, y),
                               0.5 * features * L.mean_squared_error(a, y), rtol=1e-13)
    hand = L.half_squared_error.grad(a, y)
    np.testing.assert_allclose(hand, (a - y) / n, rtol=1e-14)
    np.testing.assert_allclose(hand, jax.grad(L.half_squared_error)(a, y), rtol=1e-12)
    if len(shape) == 3:   # one shape: each numerical gradient compiles a program
        numerical = fn.gradcheck.numerical_grad(lambda o: L.half_squared_error(o, y), a)
        assert float(jnp.max(fn.gradcheck.relative_error(hand, numerical, 1e-10))) < 1e-7


def test_half_squared_error_refuses_a_scalar_and_a_shape_mismatch():
    with pytest.raises(ValueError, match=r"half_squared_error: expected outputs of shape "
                                         r"\(batch, …\) with a batch axis, received shape \(\)"):
        L.half_squared_error(jnp.float32(1.0), jnp.float32(0.0))
    with pytest.raises(ValueError, match=r"half_squared_error: expected targets of the outputs' "
                                         r"shape \(2, 3\), received \(2,\)"):
        L.half_squared_error.grad(jnp.zeros((2, 3)), jnp.zeros(2))


# ---------------------------------------------------------------------------------------------
# The machinery: fn.backprop and fn.gradcheck pass `reduction` on to the loss.


def _dense(x64_dtype=jnp.float64):
    model = fn.nn.serial(fn.nn.Dense(3))
    params, state = model.init(jax.random.key(2), (4,))
    params = jax.tree.map(lambda p: p.astype(x64_dtype) + 0.1, params)
    x = jax.random.normal(jax.random.key(3), (5, 4), x64_dtype)
    return model, params, state, x


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_backprop_passes_the_reduction_to_the_loss(reduction, x64):
    model, params, state, x = _dense()
    y = jnp.zeros((5, 3), jnp.float64)
    (value, _), grads = fn.backprop.value_and_grad(model, L.mean_squared_error,
                                                   reduction=reduction)(params, state, x, y)
    expected = L.mean_squared_error(model.apply(params, state, x)[0], y, reduction=reduction)
    np.testing.assert_allclose(value, expected, rtol=1e-13)   # (5, 3) values for "none"
    auto = jax.grad(lambda p: jnp.sum(L.mean_squared_error(model.apply(p, state, x)[0], y,
                                                           reduction=reduction)))(params)
    chex.assert_trees_all_close(grads, auto, rtol=1e-10)


def test_gradcheck_with_a_summed_kinked_loss(x64):
    model, params, state, x = _dense()
    targets = jnp.array([0, 2, 1, 1, 0])
    report = fn.gradcheck.check(model, L.multiclass_hinge, params, state, x, targets,
                                reduction="sum")
    assert report.passed, str(report)
    with pytest.raises(ValueError, match="multiclass_hinge: expected reduction"):
        fn.gradcheck.check(model, L.multiclass_hinge, params, state, x, targets,
                           reduction="batchmean")
