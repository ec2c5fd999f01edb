"""fn.testing.check_layer: correct layers pass every check; a layer broken in one way fails the
check named for that way (and only that one, where the others can still run)."""
import dataclasses
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn import nn

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_layer.py"
CHECKS = ("init", "output_shape", "forward", "pure", "eval", "dtypes", "jit", "vmap", "gradients")


def _example():
    spec = importlib.util.spec_from_file_location("custom_layer", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclasses.dataclass(frozen=True)
class Scale:
    """y = w ⊙ x with w per feature: the base of the planted faults below."""

    def init(self, key, in_shape):
        return {"w": jax.random.normal(key, in_shape[-1:], jnp.float32)}, ()

    def forward(self, params, state, x, *, key=None, train=False):
        return x * params["w"].astype(x.dtype)[None, :], state, x

    def apply(self, params, state, x, *, key=None, train=False):
        y, state, _ = self.forward(params, state, x, key=key, train=train)
        return y, state

    def backward(self, params, x, dy):
        dw = jnp.sum(dy * x, axis=0).astype(params["w"].dtype)
        return {"w": dw}, dy * params["w"].astype(dy.dtype)[None, :]


class ImpureInit(Scale):
    def init(self, key, in_shape):
        return {"w": jnp.asarray(np.random.standard_normal(in_shape[-1:]), jnp.float32)}, ()


class WrongShape(Scale):
    def output_shape(self, in_shape):
        return tuple(in_shape) + (1,)


class ForwardDiffers(Scale):
    def apply(self, params, state, x, *, key=None, train=False):
        return 2 * x * params["w"].astype(x.dtype)[None, :], state


class KeyInEval(Scale):
    """Noise even at evaluation: eval must not depend on the key."""

    def forward(self, params, state, x, *, key=None, train=False):
        noise = 0.0 if key is None else 0.1 * jax.random.normal(key, x.shape, x.dtype)
        return x * params["w"].astype(x.dtype)[None, :] + noise, state, x


class Float32Gradient(Scale):
    """∂L/∂w always float32, whatever the parameters' dtype (also too coarse for float64)."""

    def backward(self, params, x, dy):
        dparams, dx = super().backward(params, x, dy)
        return {"w": dparams["w"].astype(jnp.float32)}, dx


class HostOnly(Scale):
    """Reads its input on the host: works eagerly, cannot be traced."""

    def forward(self, params, state, x, *, key=None, train=False):
        return jnp.asarray(np.asarray(x)) * params["w"].astype(x.dtype)[None, :], state, x


class WrongGradient(Scale):
    def backward(self, params, x, dy):
        dparams, dx = super().backward(params, x, dy)
        return dparams, 1.01 * dx


@pytest.mark.parametrize("layer,in_shape", [
    (nn.Dense(4), (5,)),
    pytest.param(nn.Conv2D(3, (3, 2), padding="SAME"), (5, 4, 2),
                 marks=pytest.mark.slow),   # ~20 s: every conv algorithm compiled (pytest -m slow)
    (nn.BatchNorm(), (4,)),
    (nn.Dropout(0.5), (6,)),
    (Scale(), (3,)),
], ids=lambda v: type(v).__name__ if not isinstance(v, tuple) else None)
def test_correct_layers_pass_every_check(layer, in_shape):
    report = fn.testing.check_layer(layer, in_shape)
    assert report.passed, str(report)
    assert tuple(check.name for check in report.checks) == CHECKS


@pytest.mark.parametrize("layer,failing", [
    (ImpureInit(), {"init"}),
    (WrongShape(), {"output_shape"}),
    (ForwardDiffers(), {"forward", "gradients"}),   # autodiff differentiates apply
    (KeyInEval(), {"eval"}),
    (Float32Gradient(), {"dtypes", "gradients"}),
    (HostOnly(), {"output_shape", "jit", "vmap", "gradients"}),   # shape inference traces too
    (WrongGradient(), {"gradients"}),
], ids=lambda v: type(v).__name__ if not isinstance(v, set) else None)
def test_a_planted_fault_fails_the_check_named_for_it(layer, failing):
    report = fn.testing.check_layer(layer, (3,))
    assert not report.passed
    assert {check.name for check in report.checks if not check.passed} == failing, str(report)
    assert all(name in str(report) for name in failing)


def test_the_example_swish_passes_and_its_forgetful_twin_is_caught():
    example = _example()
    assert fn.testing.check_layer(example.Swish(), (4,)).passed
    bad = fn.testing.check_layer(example.ForgetfulSwish(), (4,))
    assert not bad["gradients"].passed and "input" in bad["gradients"].detail
    assert all(bad[name].passed for name in CHECKS if name != "gradients")


def test_integer_inputs_and_bad_arguments():
    report = fn.testing.check_layer(nn.Dense(2), (3,), x=jnp.ones((2, 3)))
    assert report.passed, str(report)
    with pytest.raises(ValueError, match=r"expected x of shape \(batch,\) \+ \(3,\), received \(2, 4\)"):
        fn.testing.check_layer(nn.Dense(2), (3,), x=jnp.ones((2, 4)))
    with pytest.raises(TypeError, match="lacks"):
        fn.testing.check_layer(object(), (3,))
    with pytest.raises(KeyError, match="no check named 'speed'"):
        fn.testing.check_layer(Scale(), (3,))["speed"]


EVERY_LAYER = [   # every built-in layer, on shapes that expose axis mistakes (batch 3 ≠ any size)
    (nn.Dense(4), (5,)), (nn.Flatten(), (2, 3, 2)), (nn.Identity(), (4,)),
    (nn.Conv2D(3, (3, 2), strides=(2, 1)), (7, 5, 2)), (nn.MaxPool((2, 3)), (4, 6, 2)),
    (nn.AvgPool((2, 2)), (4, 6, 2)), (nn.L2Pool((2, 2)), (4, 6, 2)), (nn.GlobalAvgPool(), (4, 5, 2)),
    (nn.ConvTranspose2D(2, (3, 2), strides=2, padding="SAME"), (3, 4, 2)),
    (nn.BatchNorm(), (4, 5, 2)), (nn.LayerNorm(), (4, 5)), (nn.GroupNorm(2), (4, 5, 4)),
    (nn.RMSNorm(), (6,)), (nn.Maxout(4, 3), (5,)), (nn.Dropout(0.3), (6,)),
    (nn.DropConnect(4, 0.3), (5,)), (nn.Relu(), (6,)), (nn.LeakyRelu(), (6,)), (nn.PRelu(), (4, 3)),
    (nn.Sigmoid(), (6,)), (nn.Tanh(), (6,)), (nn.HardTanh(), (6,)), (nn.Softsign(), (6,)),
    (nn.Softmax(), (6,)), (nn.LogSoftmax(), (6,)), (nn.Gelu(), (6,)), (nn.Silu(), (6,)),
    (nn.Elu(), (6,)), (nn.Softplus(), (6,)),
    (nn.SimpleRNN(4), (5, 3)), (nn.LSTM(4, return_sequences=False), (5, 3)), (nn.GRU(4), (5, 3)),
    (nn.Bidirectional(nn.LSTM(3)), (4, 2)), (nn.MultiHeadAttention(2, causal=True), (5, 4)),
    (nn.TransformerBlock(2, causal=True), (5, 4)), (nn.PositionalEmbedding(8), (5, 4)),
    (nn.SinusoidalPositionalEncoding(), (5, 4)),
    (nn.residual(nn.serial(nn.Dense(5), nn.Tanh())), (5,)),
]


@pytest.mark.slow   # about 40 layers, a few compilations each: CI runs it (`pytest -m slow`)
@pytest.mark.parametrize("layer,in_shape", EVERY_LAYER, ids=lambda v: repr(v)[:40])
def test_every_built_in_layer_passes_check_layer(layer, in_shape):
    report = fn.testing.check_layer(layer, in_shape)
    assert report.passed, str(report)


@pytest.mark.slow
def test_embedding_passes_check_layer_on_token_ids():
    ids = jnp.asarray([[0, 3, 9], [9, 1, 1], [4, 4, 2]], jnp.int32)
    report = fn.testing.check_layer(nn.Embedding(10, 4), (3,), x=ids)
    assert report.passed, str(report)
