"""Hierarchical softmax: `fn.losses.hierarchical_softmax(tree)` on the path scores of
`fn.nn.HierarchicalSoftmax(tree)`.

The probabilities are checked against products of path sigmoids computed here by walking the
heap-ordered tree in numpy float64, and against a flat softmax over the same tree's classes;
the hand-written gradients against `jax.vjp` (float64, rtol 1e-9) and centered differences;
then a model learns a task with 2048 classes.
"""
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn import losses as L
from funcnn import nn

B, FEATURES = 5, 4


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _heap_probs(classes, node_scores):
    """p(c) = Π σ(±s) walking from leaf classes − 1 + c up to the root of the heap-ordered tree
    (children of i: 2i + 1 on the left, σ(s_i); 2i + 2 on the right, σ(−s_i))."""
    s = np.asarray(node_scores, np.float64)
    p = np.ones(s.shape[:-1] + (classes,))
    for c in range(classes):
        node = classes - 1 + c
        while node > 0:
            parent = (node - 1) // 2
            p[..., c] *= _sigmoid(s[..., parent] if node == 2 * parent + 1 else -s[..., parent])
            node = parent
    return p


def _head(classes, seed=0):
    """A head with random float64 parameters, features h and labels covering the classes."""
    layer = nn.HierarchicalSoftmax(classes)
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = {"w": jax.random.normal(k1, (classes - 1, FEATURES), jnp.float64),
              "b": jax.random.normal(k2, (classes - 1,), jnp.float64)}
    h = jax.random.normal(k3, (B, FEATURES), jnp.float64)
    labels = jnp.arange(B) * 3 % classes
    return layer, params, {}, h, labels


def test_probabilities_sum_to_one_and_are_the_path_products(x64):
    for classes in (2, 7, 8):   # one decision; ragged paths of 2 and 3; even paths of 3
        tree = L.balanced_tree(classes)
        assert (tree.classes, tree.internal) == (classes, classes - 1)
        assert tree.depth == int(np.ceil(np.log2(classes)))
        scores = 2 * jax.random.normal(jax.random.key(classes), (B, classes - 1), jnp.float64)
        p = np.exp(np.asarray(jax.jit(tree.log_probs)(scores)))
        np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-13)
        np.testing.assert_allclose(p, _heap_probs(classes, scores), rtol=1e-12)
    layer, params, state, h, labels = _head(7)
    np.testing.assert_allclose(
        np.exp(jax.jit(nn.hierarchical_log_probs, static_argnums=0)(7, params, h)),
        _heap_probs(7, h @ params["w"].T + params["b"][None]), rtol=1e-12)


def test_loss_is_the_flat_softmax_over_the_trees_log_probs(x64):
    # The flat softmax built from the same tree: logits log p(c | h) for all C classes, O(C);
    # its cross-entropy and its gradients are those of the O(log C) path loss.
    classes = 7
    layer, params, state, h, labels = _head(classes)
    loss = L.hierarchical_softmax(classes)

    def path(params, h):
        return loss(layer.apply(params, state, (h, labels))[0], labels, reduction="none")

    def flat(params, h):
        logits = nn.hierarchical_log_probs(classes, params, h)
        return L.softmax_cross_entropy(logits, labels, reduction="none")

    @jax.jit
    def both(params, h):
        mean_grad = lambda f: jax.grad(lambda *a: jnp.mean(f(*a)), argnums=(0, 1))(params, h)
        softmax = jax.nn.softmax(nn.hierarchical_log_probs(classes, params, h))
        return path(params, h), flat(params, h), softmax, mean_grad(path), mean_grad(flat)

    path_items, flat_items, softmax, path_grads, flat_grads = both(params, h)
    probs = _heap_probs(classes, h @ params["w"].T + params["b"][None])
    np.testing.assert_allclose(path_items, -np.log(probs[np.arange(B), labels]), rtol=1e-12)
    np.testing.assert_allclose(path_items, flat_items, rtol=1e-12)
    np.testing.assert_allclose(softmax, probs, rtol=1e-12)
    chex.assert_trees_all_close(path_grads, flat_grads, rtol=1e-10, atol=1e-14)


def test_backward_is_the_vjp_and_the_finite_differences(x64):
    layer, params, state, h, labels = _head(7)   # ragged paths: of 2 and 3 decisions
    cotangent = jax.random.normal(jax.random.key(9), (B, 3), jnp.float64)

    @jax.jit
    def run(params, h):
        s, _, residuals = layer.forward(params, state, (h, labels))
        _, vjp = jax.vjp(lambda p, h: layer.apply(p, state, (h, labels))[0], params, h)
        return s, layer.apply(params, state, (h, labels))[0], layer.backward(
            params, residuals, cotangent), vjp(cotangent)

    s, applied, (dparams, (dh, dlabels)), auto = run(params, h)
    assert s.shape == (B, *layer.output_shape((FEATURES,)))
    chex.assert_trees_all_close(s, applied, rtol=1e-14)
    assert dlabels.shape == labels.shape and dlabels.dtype == jax.dtypes.float0
    chex.assert_trees_all_close((dparams, dh), auto, rtol=1e-9, atol=1e-14)
    numerical = fn.gradcheck.numerical_grad(
        lambda ph: jnp.sum(layer.apply(ph[0], state, (ph[1], labels))[0] * cotangent),
        (params, h))
    errors = jax.tree.map(lambda a, b: float(jnp.max(fn.gradcheck.relative_error(
        a, b, 1e-10, 1e-3 * float(jnp.max(jnp.abs(b)))))), (dparams, dh), numerical)
    assert max(jax.tree.leaves(errors)) < 1e-7, errors
    # eagerly (concrete labels, checked) the same
    s_eager, _, residuals = layer.forward(params, state, (h, labels))
    chex.assert_trees_all_close((s_eager, layer.backward(params, residuals, cotangent)[0]),
                                (s, dparams), rtol=1e-13)


def test_loss_grad_is_jax_grad_and_the_finite_differences(x64):
    # (every reduction against jax.grad: tests/test_losses_reduction.py)
    loss = L.hierarchical_softmax(7)
    s = jax.random.normal(jax.random.key(3), (B, 3), jnp.float64)
    labels = jnp.array([0, 1, 6, 3, 4])
    hand = loss.grad(s, labels)
    chex.assert_trees_all_close(jax.jit(loss.grad)(s, labels), hand, rtol=1e-14)
    chex.assert_trees_all_close(hand, jax.grad(loss)(s, labels), rtol=1e-12, atol=1e-15)
    numerical = fn.gradcheck.numerical_grad(lambda s: loss(s, labels), s)
    assert float(jnp.max(fn.gradcheck.relative_error(hand, numerical, 1e-10))) < 1e-7
    # class 0's path has 2 decisions: its third score is ignored
    assert float(hand[0, 2]) == 0.0
    # stable at extreme scores: the right decisions cost 0, the wrong ones |s| each
    sign = jnp.asarray(L.balanced_tree(7).signs[np.asarray(labels)], jnp.float64)
    np.testing.assert_allclose(loss(1e4 * sign, labels, reduction="none"), 0.0, atol=1e-300)
    np.testing.assert_allclose(loss(-1e4 * sign, labels, reduction="none"),
                               1e4 * np.sum(np.asarray(sign) != 0, axis=-1), rtol=1e-15)
    assert np.isfinite(loss.grad(-1e4 * sign, labels)).all()


def test_a_whole_model_passes_gradcheck_and_backprop_agrees(x64):
    head = nn.HierarchicalSoftmax(7, w_init=fn.init.normal(0.5))
    model = nn.serial(nn.with_labels(nn.serial(nn.Dense(6), nn.Tanh())), head)
    loss = L.hierarchical_softmax(7)
    params, state = model.init(jax.random.key(0), (3,))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.normal(jax.random.key(1), (B, 3), jnp.float64)
    labels = jnp.array([0, 6, 5, 3, 3])
    report = fn.gradcheck.check(model, loss, params, state, (x, labels), labels)
    assert report.passed, str(report)
    objective = lambda p: loss(model.apply(p, state, (x, labels))[0], labels)

    @jax.jit
    def both(params):
        (value, _), grads = fn.backprop.value_and_grad(model, loss)(params, state, (x, labels),
                                                                    labels)
        return value, grads, jax.value_and_grad(objective)(params)

    value, grads, (auto_value, auto_grads) = both(params)
    np.testing.assert_allclose(value, auto_value, rtol=1e-14)
    chex.assert_trees_all_close(grads, auto_grads, rtol=1e-10, atol=1e-15)


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
def test_a_hand_built_unbalanced_tree(x64):
    # root 0: left → class 0; right → node 1: left → class 1, right → class 2.
    tree = L.Tree(nodes=[[0, 0], [0, 1], [0, 1]], signs=[[1, 0], [-1, 1], [-1, -1]])
    s = jnp.array([[0.3, -1.2], [2.0, 0.5]], jnp.float64)
    sig = _sigmoid(np.asarray(s))
    expected = np.stack([sig[:, 0], (1 - sig[:, 0]) * sig[:, 1],
                         (1 - sig[:, 0]) * (1 - sig[:, 1])], axis=-1)
    np.testing.assert_allclose(np.exp(tree.log_probs(s)), expected, rtol=1e-13)
    layer = nn.HierarchicalSoftmax(tree, w_init=fn.init.normal(1.0))
    params, state = layer.init(jax.random.key(0), (2,))
    h, labels = jnp.eye(2, dtype=jnp.float64), jnp.array([0, 2])
    params = {"w": params["w"].astype(jnp.float64), "b": jnp.zeros(2, jnp.float64)}
    path, _ = layer.apply(params, state, (h, labels))
    assert float(path[0, 1]) == 0.0   # past class 0's one decision
    node = h @ params["w"].T
    np.testing.assert_allclose(L.hierarchical_softmax(tree)(path, labels, reduction="none"),
                               -np.log(np.exp(tree.log_probs(node))[np.arange(2), labels]),
                               rtol=1e-13)


@pytest.mark.parametrize("nodes,signs,match", [
    ([[0, 1]], [[1, 1]], r"classes ≥ 2"),
    ([[0], [0]], [[1, 1]], r"one shape"),
    ([[0, 0], [0, 1], [0, 1]], [[1, 0], [-1, 2], [-1, -1]], r"signs in \{\+1, −1, 0\}"),
    ([[0, 0], [0, 1], [0, 1]], [[0, 1], [-1, 1], [-1, -1]], r"nonzero signs followed by zeros"),
    ([[0, 0], [0, 2], [0, 2]], [[1, 0], [-1, 1], [-1, -1]], r"node ids in \[0, 2\) for 3"),
    ([[0, 0], [0, 1], [0, 1]], [[1, 0], [-1, 1], [-1, 1]], r"one class per leaf"),
    ([[0, 0], [0, 1], [0, 1]], [[-1, 0], [-1, 1], [-1, -1]], r"inside another class's path"),
    ([[0, 0], [0, 0], [0, 0]], [[1, 0], [-1, 1], [-1, -1]], r"a node id at two places"),
    ([[0, 0], [0, 1], [1, 1]], [[1, 0], [-1, 1], [-1, -1]], r"two ids for one place at depth 0"),
])
def test_trees_that_are_not_full_binary_trees_are_refused(nodes, signs, match):
    with pytest.raises(ValueError, match=r"Tree: expected .*" + match):
        L.Tree(np.array(nodes), np.array(signs))


def test_trees_compare_by_their_paths_and_layers_by_their_tree():
    assert L.balanced_tree(8) == L.balanced_tree(8) != L.balanced_tree(9)
    assert hash(L.balanced_tree(8)) == hash(L.balanced_tree(8))
    assert repr(L.balanced_tree(13)) == "Tree(classes=13, depth=4)"
    assert nn.HierarchicalSoftmax(L.balanced_tree(8)) == nn.HierarchicalSoftmax(L.balanced_tree(8))
    assert nn.HierarchicalSoftmax(8) != nn.HierarchicalSoftmax(9)
    for bad in (1, 2.0, True):
        with pytest.raises(ValueError, match=rf"balanced_tree: expected classes as an int ≥ 2, "
                                             rf"received {bad!r}"):
            L.balanced_tree(bad)
    with pytest.raises(TypeError, match="expected a Tree or an int number of classes, received "
                                        "str"):
        L.hierarchical_softmax("8")


def test_bad_inputs_are_named(x64):
    layer, params, state, h, labels = _head(7)
    loss = L.hierarchical_softmax(7)
    with pytest.raises(TypeError, match=r"HierarchicalSoftmax: expected the input as a pair "
                                        r"\(features, labels\), received ArrayImpl"):
        layer.apply(params, state, h)
    with pytest.raises(TypeError, match="HierarchicalSoftmax: expected int labels"):
        layer.apply(params, state, (h, labels.astype(jnp.float64)))
    with pytest.raises(ValueError, match=r"HierarchicalSoftmax: expected labels in \[0, 7\) for "
                                         r"7 classes, received label 7"):
        layer.apply(params, state, (h, labels.at[1].set(7)))
    with pytest.raises(ValueError, match=r"expected labels of shape \(5,\) for features \(5, 4\), "
                                         r"received \(4,\)"):
        layer.apply(params, state, (h, labels[:4]))
    with pytest.raises(ValueError, match=r"hierarchical_softmax: expected path scores \(batch, 3\) "
                                         r"and labels \(batch,\), received \(5, 4\) and \(5,\)"):
        loss(jnp.zeros((B, 4)), labels)
    with pytest.raises(ValueError, match=r"hierarchical_softmax: expected labels in \[0, 7\)"):
        loss.grad(jnp.zeros((B, 3)), labels.at[0].set(-1))
    with pytest.raises(ValueError, match=re.escape("Tree.log_probs: expected scores of shape "
                                                   "(..., 6) for the 6 internal nodes of a tree "
                                                   "over 7 classes, received (5, 7)")):
        L.balanced_tree(7).log_probs(jnp.zeros((B, 7)))
    # Under jit labels cannot be checked: an out-of-range label's row is NaN, not a wrapped row.
    bad = labels.at[1].set(7)
    s = jax.jit(lambda h, y: layer.apply(params, state, (h, y))[0])(h, bad)
    assert np.isnan(s[1]).all() and np.isfinite(np.delete(np.asarray(s), 1, axis=0)).all()
    values = jax.jit(lambda s, y: loss(s, y, reduction="none"))(jnp.zeros((B, 3)), bad)
    assert np.isnan(values[1]) and np.isfinite(np.delete(np.asarray(values), 1)).all()


def test_vmaps_over_an_ensemble_of_heads(x64):
    layer, params, state, h, labels = _head(7)
    loss = L.hierarchical_softmax(7)
    members = jax.tree.map(lambda a: jnp.stack([a, -a, 2 * a]), params)
    run = lambda p: loss(layer.apply(p, state, (h, labels))[0], labels, reduction="none")
    looped = lambda m: jnp.stack([run(jax.tree.map(lambda a: a[i], m)) for i in range(3)])
    vmapped, expected = jax.jit(lambda m: (jax.vmap(run)(m), looped(m)))(members)
    chex.assert_shape(vmapped, (3, B))
    chex.assert_trees_all_close(vmapped, expected, rtol=1e-13)


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
def test_learns_a_task_with_2048_classes():
    # Each of 2048 input ids has its class (a fixed random permutation), with 20 % label noise;
    # embedding → hierarchical softmax, trained by make_step on the hand-written backward.
    classes, features, batch, steps = 2048, 32, 256, 250
    model = nn.serial(nn.with_labels(nn.Embedding(classes, features)),
                      nn.HierarchicalSoftmax(classes))
    loss, opt = L.hierarchical_softmax(classes), fn.optim.adam(0.05)
    params, state = model.init(jax.random.key(0), ())
    step = fn.train.make_step(model, loss, opt, hand_written=True)
    target = jax.random.permutation(jax.random.key(1), classes)

    @jax.jit
    def train(params, opt_state, key):
        def one(carry, key):
            params, opt_state = carry
            kx, kn, kr = jax.random.split(key, 3)
            x = jax.random.randint(kx, (batch,), 0, classes)
            y = jnp.where(jax.random.uniform(kn, (batch,)) < 0.2,
                          jax.random.randint(kr, (batch,), 0, classes), target[x])
            params, _, opt_state, metrics = step(params, state, opt_state, (x, y), y, key)
            return (params, opt_state), metrics["loss"]
        return jax.lax.scan(one, (params, opt_state), jax.random.split(key, steps))

    (params, _), losses = train(params, opt.init(params), jax.random.key(2))
    # zero-initialised node weights: every decision ½, so the first loss is log₂C · ln 2 = ln C
    assert float(losses[0]) == pytest.approx(np.log(classes), rel=1e-6)
    assert float(jnp.mean(losses[-20:])) < 0.6 * np.log(classes)
    predict = jax.jit(lambda head, h: jnp.argmax(nn.hierarchical_log_probs(classes, head, h), -1))
    accuracy = float(jnp.mean(predict(params[1], params[0]["table"]) == target))   # every id
    assert accuracy > 0.9, accuracy   # chance: 1/2048
