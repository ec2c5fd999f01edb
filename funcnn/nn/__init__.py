"""Layers, combinators and activation functions; see `funcnn.nn.core` for the Layer contract."""
from funcnn.nn.activations import (
    HardTanh, Identity, LeakyRelu, LogSoftmax, PRelu, Relu, Sigmoid, Softmax, Softsign, Tanh,
    hard_tanh, hard_tanh_prime, leaky_relu, leaky_relu_prime, log_softmax, log_softmax_vjp, relu,
    relu_prime, sigmoid, sigmoid_prime, softmax, softmax_vjp, softsign, softsign_prime, tanh,
    tanh_prime)
from funcnn.nn.core import Layer, parallel, residual, serial
from funcnn.nn.dense import Dense, Flatten
from funcnn.nn.conv import AvgPool, Conv2D, L2Pool, MaxPool
from funcnn.nn.maxout import Maxout
from funcnn.nn.norm import BatchNorm
from funcnn.nn.layer_norm import GroupNorm, LayerNorm, RMSNorm
from funcnn.nn.embedding import Embedding
from funcnn.nn.conv_transpose import ConvTranspose2D, GlobalAvgPool
from funcnn.nn.activations import (Elu, Gelu, Silu, Softplus, elu, elu_prime, gelu, gelu_prime,
                                   silu, silu_prime, softplus, softplus_prime)
from funcnn.nn.stochastic import DropConnect, Dropout, mc_predict
from funcnn.nn.recurrent import GRU, LSTM, SimpleRNN
from funcnn.nn.bidirectional import Bidirectional
from funcnn.nn.attention import (MultiHeadAttention, PositionalEmbedding,
                                 SinusoidalPositionalEncoding)
from funcnn.nn.transformer import TransformerBlock
from funcnn.nn.hierarchical_softmax import HierarchicalSoftmax, hierarchical_log_probs, with_labels

__all__ = ["AvgPool", "BatchNorm", "Bidirectional", "Conv2D", "ConvTranspose2D", "Dense",
           "DropConnect", "Dropout", "Elu", "Embedding", "Flatten", "GRU", "Gelu", "GlobalAvgPool",
           "GroupNorm", "HardTanh", "HierarchicalSoftmax", "Identity", "L2Pool", "LSTM", "Layer",
           "LayerNorm", "LeakyRelu",
           "LogSoftmax", "MaxPool", "Maxout", "MultiHeadAttention", "PRelu", "PositionalEmbedding",
           "RMSNorm", "Relu", "Sigmoid", "Silu", "SimpleRNN", "SinusoidalPositionalEncoding",
           "Softmax", "Softplus", "Softsign", "Tanh", "TransformerBlock", "elu", "elu_prime",
           "gelu", "gelu_prime", "hard_tanh", "hard_tanh_prime", "hierarchical_log_probs",
           "leaky_relu", "leaky_relu_prime",
           "log_softmax", "log_softmax_vjp", "mc_predict",
           "parallel", "relu", "relu_prime", "residual", "serial",
           "sigmoid", "sigmoid_prime", "silu", "silu_prime", "softmax", "softmax_vjp", "softplus",
           "softplus_prime", "softsign", "softsign_prime", "tanh", "tanh_prime", "with_labels"]
