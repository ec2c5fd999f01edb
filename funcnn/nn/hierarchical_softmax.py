"""The hierarchical-softmax output layer: per-example path scores of the label's tree nodes, for
`fn.losses.hierarchical_softmax`, in O(depth · features) per example instead of O(classes ·
features).

    head = HierarchicalSoftmax(tree)                 # tree: fn.losses.balanced_tree(C), or C
    loss = fn.losses.hierarchical_softmax(tree)
    s, _ = head.apply(params, {}, (h, labels))       # (batch, depth)
    value = loss(s, labels)                          # mean −log p(label | h)
    log_p = hierarchical_log_probs(tree, params, h)  # (batch, C), for evaluation

A whole model takes the pair (inputs, labels): `serial(with_labels(body), head)`, trained by
`fn.train.make_step(model, loss, optimizer)` on x = (inputs, labels), y = labels (`fit` takes
array inputs only).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import init as initializers
from funcnn.losses.hierarchical import as_tree
from funcnn.nn.core import (Layer, along_last_axis, as_layer, check_entry, check_in_shape,
                            check_last_dim, check_rank, describe_shape, in_param_dtypes, promoted)
from funcnn.values import value_factory

__all__ = ["HierarchicalSoftmax", "hierarchical_log_probs", "with_labels"]


def _check_labels(labels, h, classes: int) -> None:
    """Int (batch,) labels for features (batch, features); concrete ones in [0, classes)."""
    dtype = getattr(labels, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"HierarchicalSoftmax: expected int labels, received "
                        f"{type(labels).__name__} of dtype {dtype}")
    if labels.shape != h.shape[:1]:
        raise ValueError(f"HierarchicalSoftmax: expected labels of shape ({h.shape[0]},) for "
                         f"features {describe_shape(h.shape)}, received "
                         f"{describe_shape(labels.shape)}")
    if not isinstance(labels, jax.core.Tracer) and labels.size:
        values = np.asarray(labels)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= classes:
            raise ValueError(f"HierarchicalSoftmax: expected labels in [0, {classes}) for "
                             f"{classes} classes, received label {low if low < 0 else high}")


def _pair(x, layer="HierarchicalSoftmax"):
    if not (isinstance(x, (tuple, list)) and len(x) == 2):
        raise TypeError(f"{layer}: expected the input as a pair (features, labels), received "
                        f"{type(x).__name__}")
    return x


@value_factory
def HierarchicalSoftmax(tree, w_init=initializers.zeros, b_init=initializers.zeros) -> Layer:
    """Scores of the label's path nodes: s_k = h·w_{n_k} + b_{n_k} for the internal nodes
    n_0 … n_{d−1} from the root to the label's leaf (`fn.losses.Tree`).

    tree: a `fn.losses.Tree`, or an int number of classes for `fn.losses.balanced_tree`.
    x: the pair (h (batch, features) float, labels (batch,) int in [0, classes)) → s: (batch,
    depth), 0 past the end of a shorter path; params {"w": (classes − 1, features), one row per
    internal node (word2vec's syn1), "b": (classes − 1,)}, zero by default as word2vec (every
    decision starts at ½; `w_init` receives the shape (classes − 1, features)).
    Backward: ∂L/∂h = Σ_k δ_k w_{n_k}; ∂L/∂w_n = Σ over the (example, k) with n_k = n of δ_k h,
    ∂L/∂b_n = Σ of those δ_k — a scatter-add, O(depth · features) per example; labels get no
    gradient (a float0 array, as `jax.vjp`). Labels outside [0, classes) raise ValueError when
    concrete; under jit their scores are NaN.
    Evaluation: `hierarchical_log_probs(tree, params, h)`, every class's log p(c | h).
    """
    tree = as_tree(tree)
    nodes_table, signs_table = tree.nodes, tree.signs
    nodes = tree.internal

    def init(key, in_shape):
        features = check_in_shape("HierarchicalSoftmax", in_shape, 1)[-1]
        w_key, b_key = jax.random.split(key)
        return {"w": w_init(w_key, (nodes, features)), "b": b_init(b_key, (nodes,))}, {}

    def output_shape(in_shape):
        return (tree.depth,)

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        h, labels = _pair(x)
        w = check_entry("HierarchicalSoftmax", "params", params, "w", (nodes, "features"))
        b = check_entry("HierarchicalSoftmax", "params", params, "b", (nodes,))
        check_rank("HierarchicalSoftmax", h, 2, "(batch, features)")
        check_last_dim("HierarchicalSoftmax", h, w.shape[1])
        _check_labels(labels, h, tree.classes)
        valid = (labels >= 0) & (labels < tree.classes)
        ids = jnp.clip(labels, 0, tree.classes - 1)
        path = jnp.asarray(nodes_table)[ids]                   # (batch, depth)
        on_path = (jnp.asarray(signs_table)[ids] != 0) & valid[:, None]
        hc, w, b = promoted(h, w, b)
        s = jnp.einsum("bf,bkf->bk", hc, jnp.take(w, path, axis=0)) + jnp.take(b, path)
        s = jnp.where(on_path, s, jnp.zeros((), s.dtype))
        s = jnp.where(valid[:, None], s, jnp.full((), jnp.nan, s.dtype))   # no gradient there
        return s, state, (h, path, on_path)

    def backward(params, residuals, ds):
        h, path, on_path = residuals
        hc, w, ds = promoted(h, params["w"], ds)
        ds = jnp.where(on_path, ds, jnp.zeros((), ds.dtype))
        dh = jnp.einsum("bk,bkf->bf", ds, jnp.take(w, path, axis=0))
        dw = jnp.zeros_like(w).at[path].add(ds[..., None] * hc[:, None, :])
        db = jnp.zeros(w.shape[:1], ds.dtype).at[path].add(ds)
        grads = in_param_dtypes({"w": dw, "b": db}, params)
        return grads, (dh.astype(h.dtype), np.zeros(path.shape[:1], jax.dtypes.float0))

    return Layer("HierarchicalSoftmax", init, forward, backward, output_shape)


def hierarchical_log_probs(tree, params, h):
    """log p(c | h) for every class c, (batch, classes): the scores of every internal node,
    s = h·wᵀ + b, through `Tree.log_probs`. O(classes · features) per example: for evaluation
    (`argmax` for the prediction), not training. tree and params as `HierarchicalSoftmax`'s."""
    tree = as_tree(tree)
    w = check_entry("hierarchical_log_probs", "params", params, "w", (tree.internal, "features"))
    b = check_entry("hierarchical_log_probs", "params", params, "b", (tree.internal,))
    check_last_dim("hierarchical_log_probs", h, w.shape[1])
    h, w, b = promoted(h, w, b)
    return tree.log_probs(h @ w.T + along_last_axis(b, h.ndim))


@value_factory
def with_labels(body) -> Layer:
    """The pair (inputs, labels) → (body(inputs), labels): carries the labels past `body` to a
    `HierarchicalSoftmax` head, as in `serial(with_labels(body), HierarchicalSoftmax(tree))`.

    params and state are body's; in_shape and output_shape are those of body's inputs and
    outputs. Backward: body's, and a float0 array for the labels (they have no gradient).
    """
    body = as_layer(body, "with_labels")

    def forward(params, state, x, *, key=None, train=False):
        inputs, labels = _pair(x, "with_labels")
        h, state, residuals = body.forward(params, state, inputs, key=key, train=train)
        return (h, labels), state, (residuals, labels)

    def apply(params, state, x, *, key=None, train=False):
        inputs, labels = _pair(x, "with_labels")
        h, state = body.apply(params, state, inputs, key=key, train=train)
        return (h, labels), state

    def backward(params, residuals, dy):
        body_residuals, labels = residuals
        dparams, dx = body.backward(params, body_residuals, dy[0])
        return dparams, (dx, np.zeros(labels.shape, jax.dtypes.float0))

    def branches(params, state, x, *, key=None, train=False):
        return body.branches(params, state, _pair(x, "with_labels")[0], key=key, train=train)

    return Layer(f"with_labels({body!r})", body.init, forward, backward, body.output_shape,
                 branches, apply, children=(body,))
