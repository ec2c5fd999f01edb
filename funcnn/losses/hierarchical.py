"""Hierarchical softmax: a class is a leaf of a binary tree, its probability the product of the
sigmoid decisions on its path (Morin & Bengio 2005; word2vec), so that training costs O(log C)
per example instead of the flat softmax's O(C).

    p(c | h) = Π_k σ(±_k s_k),   s_k = h·w_{n_k} + b_{n_k},

n_0 … n_{d−1} the internal nodes from the root to leaf c, ±_k = +1 where the path turns left
and −1 where it turns right (σ(s) + σ(−s) = 1 at every node, so Σ_c p(c | h) = 1).
`Tree` holds the paths; `hierarchical_softmax(tree)` is the loss on the path scores s that
`fn.nn.HierarchicalSoftmax(tree)` computes from (h, labels); `Tree.log_probs` gives the full
distribution for evaluation.
"""
from __future__ import annotations

import dataclasses
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.losses.base import Loss, check_label_range, count_examples, describe_shape, per_item

__all__ = ["Tree", "as_tree", "balanced_tree", "hierarchical_softmax"]


@dataclasses.dataclass(frozen=True, eq=False)
class Tree:
    """A full binary tree over `classes` leaves, as each class's path from the root.

    nodes: int (classes, depth): the internal nodes on class c's path, ids in [0, classes − 1),
    root first; signs: (classes, depth) in {+1, −1, 0}: +1 where the path goes left (the node's
    decision has probability σ(s)), −1 right (σ(−s)), 0 past the end of a shorter path (the
    node id there is ignored). Refused unless the paths describe a full binary tree (every
    internal node has two children, each leaf one class), so that the classes' probabilities
    sum to 1. Trees compare and hash by their paths.
    """

    nodes: np.ndarray
    signs: np.ndarray

    def __post_init__(self):
        nodes, signs = np.array(self.nodes), np.array(self.signs)
        _check_paths(nodes, signs)
        nodes, signs = nodes.astype(np.int32), signs.astype(np.int8)
        for array in (nodes, signs):
            array.flags.writeable = False
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "signs", signs)
        object.__setattr__(self, "_hash", hash((nodes.shape, nodes.tobytes(), signs.tobytes())))

    @property
    def classes(self) -> int:
        return self.nodes.shape[0]

    @property
    def internal(self) -> int:
        """The number of internal nodes (decisions): classes − 1."""
        return self.nodes.shape[0] - 1

    @property
    def depth(self) -> int:
        """The longest path's length: the number of path scores per example."""
        return self.nodes.shape[1]

    def log_probs(self, node_scores):
        """log p(c | h) for every class: (..., internal) scores of every node → (..., classes).

        log p(c) = Σ_k log σ(±_k s[n_k]) over c's path; O(classes · depth) per example, for
        evaluation (argmax, accuracy, the full distribution), not for training.
        """
        node_scores = jnp.asarray(node_scores)
        if node_scores.shape[-1:] != (self.internal,):
            raise ValueError(f"Tree.log_probs: expected scores of shape (..., {self.internal}) "
                             f"for the {self.internal} internal nodes of a tree over "
                             f"{self.classes} classes, received "
                             f"{describe_shape(node_scores.shape)}")
        total = jnp.zeros(node_scores.shape[:-1] + (self.classes,), node_scores.dtype)
        for k in range(self.depth):
            s = jnp.take(node_scores, self.nodes[:, k], axis=-1)
            sign = jnp.broadcast_to(jnp.asarray(self.signs[:, k], s.dtype), s.shape)
            total = total + jnp.where(sign != 0, jax.nn.log_sigmoid(sign * s), 0)
        return total

    def __eq__(self, other):
        if not isinstance(other, Tree):
            return NotImplemented
        return self is other or (self._hash == other._hash
                                 and np.array_equal(self.nodes, other.nodes)
                                 and np.array_equal(self.signs, other.signs))

    def __hash__(self):
        return self._hash

    def __repr__(self):
        return f"Tree(classes={self.classes}, depth={self.depth})"


def _check_paths(nodes, signs) -> None:
    """Refuse (nodes, signs) that are not a full binary tree's paths (see `Tree`)."""
    if nodes.ndim != 2 or nodes.shape[0] < 2 or nodes.shape[1] < 1 or signs.shape != nodes.shape:
        raise ValueError(f"Tree: expected nodes and signs of one shape (classes ≥ 2, depth ≥ 1), "
                         f"received {describe_shape(nodes.shape)} and "
                         f"{describe_shape(signs.shape)}")
    if not np.issubdtype(nodes.dtype, np.integer) or not np.isin(signs, (-1, 0, 1)).all():
        raise ValueError(f"Tree: expected int nodes and signs in {{+1, −1, 0}}, received nodes "
                         f"of dtype {nodes.dtype} and signs {np.unique(signs)[:5]}")
    if nodes.shape[1] > 62:
        raise ValueError(f"Tree: expected paths of at most 62 decisions, received depth "
                         f"{nodes.shape[1]}")
    on_path = signs != 0
    lengths = on_path.sum(axis=1)
    if (lengths == 0).any() or (on_path != (np.arange(signs.shape[1]) < lengths[:, None])).any():
        raise ValueError("Tree: expected each class's path as nonzero signs followed by zeros "
                         "(padding), received a path that is empty or has a gap")
    internal = nodes.shape[0] - 1
    if ((nodes < 0) | (nodes >= internal))[on_path].any():
        raise ValueError(f"Tree: expected node ids in [0, {internal}) for {internal + 1} classes, "
                         f"received {int(nodes[on_path].min())}…{int(nodes[on_path].max())}")
    # Name each place by the turns that reach it (1, then 2·p + [right] per step: heap
    # numbering). One node id per internal place, none at two places, one class per leaf, no
    # leaf inside a path: then the C leaves need ≥ C − 1 internal places, which the distinct ids
    # in [0, C − 1) cap at C − 1 — a full binary tree.
    place = np.ones(nodes.shape[0], np.int64)
    inner_places, inner_ids = [], []
    for k in range(nodes.shape[1]):
        rows = on_path[:, k]
        places, first, inverse = np.unique(place[rows], return_index=True, return_inverse=True)
        ids = nodes[rows, k]
        if (ids != ids[first][inverse]).any():
            raise ValueError(f"Tree: expected one node id per place in the tree, received two "
                             f"ids for one place at depth {k}")
        inner_places.append(places)
        inner_ids.append(ids[first])
        place = np.where(rows, 2 * place + (signs[:, k] < 0), place)
    if not _distinct(np.concatenate(inner_ids)):
        raise ValueError("Tree: expected each internal node at one place in the tree, received "
                         "a node id at two places")
    if not _distinct(place):
        raise ValueError("Tree: expected one class per leaf, received two classes whose paths "
                         "end at one leaf")
    if np.isin(place, np.concatenate(inner_places)).any():
        raise ValueError("Tree: expected classes at the leaves, received a class whose path ends "
                         "inside another class's path")


def _distinct(values) -> bool:
    ordered = np.sort(values)
    return bool((ordered[1:] != ordered[:-1]).all())


def balanced_tree(classes: int) -> Tree:
    """The balanced tree over `classes` leaves in heap order: node i's children are 2i + 1
    (left) and 2i + 2 (right), internal nodes 0 … classes − 2, class c the leaf classes − 1 + c.

    Every path has ⌊log₂ classes⌋ or ⌈log₂ classes⌉ decisions. For a power of two, class c's
    turns are its binary digits, most significant first (0 = left).

    >>> balanced_tree(4).nodes.tolist(), balanced_tree(4).signs.tolist()
    ([[0, 1], [0, 1], [0, 2], [0, 2]], [[1, 1], [1, -1], [-1, 1], [-1, -1]])
    """
    if not (isinstance(classes, numbers.Integral) and not isinstance(classes, bool)
            and classes >= 2):
        raise ValueError(f"balanced_tree: expected classes as an int ≥ 2, received {classes!r}")
    # Heap index + 1 of class c's leaf, in binary: a 1, then its turns (0 = left), root first.
    leaf = np.arange(classes, 2 * classes, dtype=np.int64)
    lengths = np.frexp(leaf.astype(np.float64))[1] - 1   # ⌊log₂⌋: the number of turns
    depth = int(lengths.max())
    nodes, signs = np.zeros((classes, depth), np.int32), np.zeros((classes, depth), np.int8)
    for k in range(depth):
        rest = lengths - k   # the turns from position k on, > 0 on the path
        on = rest > 0
        nodes[:, k] = np.where(on, (leaf >> np.maximum(rest, 0)) - 1, 0)
        signs[:, k] = np.where(on, 1 - 2 * ((leaf >> np.maximum(rest - 1, 0)) & 1), 0)
    return Tree(nodes, signs)


def as_tree(tree) -> Tree:
    """`tree` itself, or `balanced_tree(tree)` for an int number of classes."""
    if isinstance(tree, Tree):
        return tree
    if isinstance(tree, numbers.Integral) and not isinstance(tree, bool):
        return balanced_tree(tree)
    raise TypeError(f"hierarchical softmax: expected a Tree or an int number of classes, "
                    f"received {type(tree).__name__}")


def hierarchical_softmax(tree) -> Loss:
    """The hierarchical-softmax loss −log p(label | h) on the label's path scores.

    tree: a `Tree`, or an int number of classes for `balanced_tree(classes)`.
    Returns a `Loss` of (path_scores (batch, depth), labels int (batch,)), path_scores from
    `fn.nn.HierarchicalSoftmax(tree)` (entries past a shorter path's end are ignored):
    L_i = −Σ_k log σ(±_k s_ik) = Σ_k softplus(∓_k s_ik) over the label's path, averaged over
    the batch ("none": L_i). Gradient: ∂L_i/∂s_ik = −±_k σ(∓_k s_ik) = σ(s_ik) − [±_k = +1],
    0 past the path's end; divided by the batch size for "mean". O(depth) per example.

    >>> loss = hierarchical_softmax(4)   # two fair decisions: −log ¼
    >>> round(float(loss(jnp.zeros((1, 2)), jnp.array([2]))), 6)
    1.386294
    """
    tree = as_tree(tree)
    table = tree.signs.astype(np.float32)

    def path_signs(labels, dtype):
        """±_k of each label's path; NaN rows for labels outside [0, classes) (under jit)."""
        return jnp.take(jnp.asarray(table, dtype), labels, axis=0, mode="fill",
                        fill_value=jnp.nan)

    def items(s, labels):
        sign = path_signs(labels, s.dtype)
        return jnp.sum(jnp.where(sign != 0, jax.nn.softplus(-sign * s), 0), axis=-1)

    def sum_grad(s, labels):
        sign = path_signs(labels, s.dtype)
        return -sign * jax.nn.sigmoid(-sign * s)

    items.__doc__ = hierarchical_softmax.__doc__

    def check(scores, labels):
        if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
            raise TypeError(f"hierarchical_softmax: expected int class ids of shape (batch,), "
                            f"received dtype {jnp.result_type(labels)}")
        if jnp.ndim(scores) != 2 or jnp.shape(scores)[1] != tree.depth \
                or jnp.shape(labels) != jnp.shape(scores)[:1]:
            raise ValueError(f"hierarchical_softmax: expected path scores (batch, {tree.depth}) "
                             f"and labels (batch,), received {describe_shape(jnp.shape(scores))} "
                             f"and {describe_shape(jnp.shape(labels))}")
        check_label_range("hierarchical_softmax", labels, tree.classes)

    return Loss("hierarchical_softmax", *per_item(items, sum_grad, count_examples), check)
