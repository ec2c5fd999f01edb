"""The configurations of the gradcheck mutation table (tests/gradcheck_mutants.py): every built
layer and loss, on shapes chosen to expose axis and padding mistakes — batch 5 ≠ every spatial
size, non-square images and kernels, SAME padding on every side, inputs of rank 2, 3 and 4.

Adding a layer is one line in `LAYERS`: Case(name, layer factory, per-example input shape); a
loss, one line in `LOSSES`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

import funcnn as fn
from funcnn import nn

class Case(NamedTuple):
    """A layer in the table: `factory()` builds it; `x` draws its input (rng, shape) → array."""
    name: str
    factory: Callable[[], Any]
    in_shape: tuple
    train: bool = True
    x: Callable | None = None


def _with_state(layer, mean, var):
    """`layer` (a BatchNorm) whose init returns non-trivial running statistics."""
    def init(key, in_shape):
        params, _ = layer.init(key, in_shape)
        return params, {"mean": jnp.asarray(mean, jnp.float32), "var": jnp.asarray(var, jnp.float32)}

    return dataclasses.replace(layer, init=init)


IMAGE = (7, 6, 2)   # non-square, 2 channels, batch 5 differs from both sides
LAYERS = [
    Case("Dense rank 2", lambda: nn.Dense(4), (6,)),
    Case("Dense rank 3", lambda: nn.Dense(4), (3, 6)),
    Case("Flatten", nn.Flatten, IMAGE),
    Case("Conv2D gemm SAME 3x4", lambda: nn.Conv2D(3, (3, 4), padding="SAME", algorithm="gemm"),
         IMAGE),
    Case("Conv2D xla SAME 3x4", lambda: nn.Conv2D(3, (3, 4), padding="SAME", algorithm="xla"),
         IMAGE),
    Case("Conv2D gemm VALID s(2,1)", lambda: nn.Conv2D(3, (3, 2), strides=(2, 1),
                                                       algorithm="gemm"), IMAGE),
    Case("Conv2D xla SAME s(2,1)", lambda: nn.Conv2D(3, (3, 2), strides=(2, 1), padding="SAME",
                                                     algorithm="xla"), IMAGE),
    Case("MaxPool (2,3)", lambda: nn.MaxPool((2, 3)), IMAGE),
    Case("MaxPool 3 s(2,1) xla", lambda: nn.MaxPool(3, strides=(2, 1), algorithm="xla"), IMAGE),
    Case("AvgPool (2,3) s(1,2)", lambda: nn.AvgPool((2, 3), strides=(1, 2)), IMAGE),
    Case("L2Pool (3,2) s2", lambda: nn.L2Pool((3, 2), strides=2), IMAGE),
    Case("BatchNorm rank 2", nn.BatchNorm, (4,)),
    Case("BatchNorm rank 3", nn.BatchNorm, (3, 4)),
    Case("BatchNorm rank 4", lambda: nn.BatchNorm(momentum=0.5, eps=1e-3), IMAGE),
    Case("BatchNorm eval", lambda: _with_state(nn.BatchNorm(), [0.5, -1.0, 0.2], [0.3, 2.0, 1.5]),
         (4, 3), train=False),
    Case("Sigmoid", nn.Sigmoid, (6,)),
    Case("Tanh", nn.Tanh, (3, 4)),
    Case("HardTanh", nn.HardTanh, (6,)),
    Case("Softsign", nn.Softsign, (3, 4)),
    Case("Relu", nn.Relu, (6,)),
    Case("Relu rank 4", nn.Relu, IMAGE),
    Case("LeakyRelu", lambda: nn.LeakyRelu(0.1), (3, 4)),
    Case("Identity", nn.Identity, (6,)),
    Case("PRelu rank 2", nn.PRelu, (4,)),
    Case("PRelu rank 4", lambda: nn.PRelu(0.1), IMAGE),
    Case("Softmax rank 3", nn.Softmax, (3, 4)),
    Case("LogSoftmax rank 3", nn.LogSoftmax, (3, 4)),
    Case("Maxout", lambda: nn.Maxout(3, pieces=3), (6,)),
    Case("Maxout rank 3", lambda: nn.Maxout(2), (3, 4)),
    Case("Dropout", lambda: nn.Dropout(0.5), (3, 4)),
    Case("Dropout eval", lambda: nn.Dropout(0.5), (6,), train=False),
    Case("Dropout vanilla", lambda: nn.Dropout(0.3, mode="vanilla"), (3, 4)),
    Case("Dropout vanilla eval", lambda: nn.Dropout(0.3, mode="vanilla"), (6,), train=False),
    Case("DropConnect", lambda: nn.DropConnect(4, 0.5), (6,)),
    Case("DropConnect rank 3", lambda: nn.DropConnect(3, 0.3), (3, 4)),
    Case("residual(Dense, Tanh)", lambda: nn.residual(nn.Dense(4), nn.Tanh()), (3, 4)),
    Case("LayerNorm rank 3", nn.LayerNorm, (3, 4)),
    Case("LayerNorm rank 4", nn.LayerNorm, IMAGE),
    Case("GroupNorm 2 groups", lambda: nn.GroupNorm(2), (7, 6, 4)),
    Case("RMSNorm rank 3", nn.RMSNorm, (3, 4)),
    Case("Embedding", lambda: nn.Embedding(7, 4), (3,),
         x=lambda rng, shape: rng.integers(0, 7, shape).astype(np.int32)),
    Case("ConvTranspose2D VALID (2,3)", lambda: nn.ConvTranspose2D(3, (2, 3)), IMAGE),
    Case("ConvTranspose2D SAME (3,2) s(2,1)",
         lambda: nn.ConvTranspose2D(3, (3, 2), strides=(2, 1), padding="SAME"), IMAGE),
    Case("GlobalAvgPool", nn.GlobalAvgPool, IMAGE),
    Case("Gelu", nn.Gelu, (3, 4)),
    Case("Gelu tanh", lambda: nn.Gelu(approximate=True), (6,)),
    Case("Silu", nn.Silu, (3, 4)),
    Case("Elu", lambda: nn.Elu(0.5), (3, 4)),
    Case("Softplus", nn.Softplus, (3, 4)),
    Case("SimpleRNN", lambda: nn.SimpleRNN(4), (6, 3)),
    Case("LSTM last state", lambda: nn.LSTM(4, return_sequences=False), (6, 3)),
    Case("GRU", lambda: nn.GRU(4), (6, 3)),
    Case("Bidirectional(LSTM)", lambda: nn.Bidirectional(nn.LSTM(3)), (6, 3)),
    Case("MultiHeadAttention 2 heads", lambda: nn.MultiHeadAttention(2), (6, 4)),
    Case("MultiHeadAttention causal", lambda: nn.MultiHeadAttention(2, causal=True), (6, 4)),
    Case("TransformerBlock causal", lambda: nn.TransformerBlock(2, hidden=6, causal=True), (6, 4)),
    Case("PositionalEmbedding", lambda: nn.PositionalEmbedding(8), (6, 4)),
    Case("SinusoidalPositionalEncoding", nn.SinusoidalPositionalEncoding, (6, 4)),
]


class LossCase(NamedTuple):
    """A loss in the table: outputs of serial(Dense(width), *after) on (batch, *in_shape)."""
    name: str
    loss: Any
    targets: Callable          # (rng, outputs' shape) -> targets
    width: int = 4
    in_shape: tuple = (6,)
    after: tuple = ()
    kwargs: dict = {}


def _normal(rng, shape):
    return rng.standard_normal(shape)


def _bits(rng, shape):
    return rng.integers(0, 2, shape).astype(np.float64)


def _signs(rng, shape):
    return 2 * _bits(rng, shape) - 1


def _labels(rng, shape):
    return rng.integers(0, shape[-1], shape[0]).astype(np.int32)


def _rows(rng, shape):
    p = rng.uniform(0.1, 1.0, shape)
    return p / p.sum(-1, keepdims=True)


L = fn.losses
LOSSES = [
    LossCase("mean_squared_error", L.mean_squared_error, _normal),
    LossCase("mean_squared_error rank 3", L.mean_squared_error, _normal, in_shape=(3, 6)),
    LossCase("l1", L.l1, _normal),
    LossCase("half_squared_error", L.half_squared_error, _normal),
    LossCase("mean_squared_error sum", L.mean_squared_error, _normal, kwargs={"reduction": "sum"}),
    LossCase("binary_cross_entropy", L.binary_cross_entropy, lambda r, s: r.uniform(0, 1, s),
             after=(nn.Sigmoid,)),
    LossCase("sigmoid_binary_cross_entropy", L.sigmoid_binary_cross_entropy, _bits),
    LossCase("multilabel_logistic rank 3", L.multilabel_logistic, _bits, in_shape=(3, 6)),
    LossCase("multilabel_hinge", L.multilabel_hinge, _signs),
    LossCase("softmax_cross_entropy labels", L.softmax_cross_entropy, _labels),
    LossCase("softmax_cross_entropy rows", L.softmax_cross_entropy, _rows),
    LossCase("log_likelihood", L.log_likelihood, _labels, after=(nn.Softmax,)),
    LossCase("multiclass_hinge", L.multiclass_hinge, _labels),
    LossCase("multiclass_hinge squared margin 0.5", L.multiclass_hinge, _labels,
             kwargs={"squared": True, "margin": 0.5}),
    LossCase("max_margin", L.max_margin, _normal, width=8),   # 8 corrupt scores per example
    LossCase("hierarchical_softmax 8 classes", L.hierarchical_softmax(8),   # path scores, depth 3
             lambda r, s: r.integers(0, 8, s[0]).astype(np.int32), width=3),
    LossCase("softmax_cross_entropy sum", L.softmax_cross_entropy, _labels,
             kwargs={"reduction": "sum"}),
]
