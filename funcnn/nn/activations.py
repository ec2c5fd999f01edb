"""Activation functions, their hand-written derivatives, and the activation layers.

Every element-wise activation `f` comes with `f_prime(z)` = f'(z), the σ'(z) of the backprop
equation δˡ = ((Wˡ⁺¹)ᵀδˡ⁺¹) ⊙ σ'(zˡ). Conventions at kinks: relu'(0) = leaky_relu'(0) = 0
(the left derivative), elu'(0) = α (the left one too), hard_tanh'(±1) = 1 (the inside
derivative); `jax.grad` of the functions below agrees with these choices. Softmax and
log-softmax act on the last axis and have a full Jacobian, so they expose vector-Jacobian
products `softmax_vjp` / `log_softmax_vjp`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import erf

from funcnn.nn.core import (Layer, along_last_axis, check_floating, check_in_shape,
                            in_param_dtypes, promoted)
from funcnn.values import value_factory

__all__ = ["Elu", "Gelu", "HardTanh", "Identity", "LeakyRelu", "LogSoftmax", "PRelu", "Relu",
           "Sigmoid", "Silu", "Softmax", "Softplus", "Softsign", "Tanh", "elu", "elu_prime", "gelu",
           "gelu_prime", "hard_tanh", "hard_tanh_prime", "leaky_relu", "leaky_relu_prime",
           "log_softmax", "log_softmax_vjp", "relu", "relu_prime", "sigmoid", "sigmoid_prime",
           "silu", "silu_prime", "softmax", "softmax_vjp", "softplus", "softplus_prime", "softsign",
           "softsign_prime", "tanh", "tanh_prime"]


def sigmoid(z):
    """σ(z) = 1 / (1 + e^{−z})."""
    return jax.nn.sigmoid(z)


def sigmoid_prime(z):
    """σ'(z) = σ(z)(1 − σ(z))."""
    s = sigmoid(z)
    return s * (1 - s)


def tanh(z):
    """tanh(z)."""
    return jnp.tanh(z)


def tanh_prime(z):
    """tanh'(z) = 1 − tanh²(z)."""
    return 1 - jnp.tanh(z) ** 2


def hard_tanh(z):
    """max(−1, min(1, z))."""
    return jnp.where(z > 1, jnp.ones_like(z), jnp.where(z < -1, -jnp.ones_like(z), z))


def hard_tanh_prime(z):
    """1 on [−1, 1], 0 outside."""
    return ((z >= -1) & (z <= 1)).astype(z.dtype)


def softsign(z):
    """z / (1 + |z|)."""
    return z / (1 + jnp.abs(z))


def softsign_prime(z):
    """1 / (1 + |z|)²."""
    return 1 / (1 + jnp.abs(z)) ** 2


def relu(z):
    """max(0, z); NaN stays NaN (as jax.nn.relu), so that a divergence is not hidden."""
    return jnp.where(z <= 0, jnp.zeros_like(z), z)


def relu_prime(z):
    """1[z > 0] (1 at NaN, as `jax.grad` of `relu`)."""
    return jnp.where(z <= 0, jnp.zeros_like(z), jnp.ones_like(z))


def leaky_relu(z, slope=0.01):
    """z for z > 0, slope·z otherwise."""
    return jnp.where(z > 0, z, slope * z)


def leaky_relu_prime(z, slope=0.01):
    """1 for z > 0, slope otherwise."""
    return jnp.where(z > 0, jnp.ones_like(z), jnp.full_like(z, slope))


def softmax(z):
    """softmax(z)_j = e^{z_j} / Σ_k e^{z_k} over the last axis (shifted by max z: stable)."""
    return jax.nn.softmax(z, axis=-1)


def softmax_vjp(y, dy):
    """Vector-Jacobian product of softmax from its output y: ∂L/∂z = y ⊙ (dy − ⟨dy, y⟩)."""
    return y * (dy - jnp.sum(dy * y, axis=-1, keepdims=True))


def log_softmax(z):
    """log softmax(z) = z − logsumexp(z) over the last axis."""
    return jax.nn.log_softmax(z, axis=-1)


def log_softmax_vjp(y, dy):
    """VJP of log-softmax from its output y: ∂L/∂z = dy − softmax(z)·Σ_j dy_j, softmax = e^y."""
    return dy - jnp.exp(y) * jnp.sum(dy, axis=-1, keepdims=True)


_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_GELU_CUBIC = 0.044715


def _gelu_inner(z):
    return _SQRT_2_OVER_PI * (z + _GELU_CUBIC * z * z * z)


def gelu(z, approximate=False):
    """GELU (Hendrycks & Gimpel 2016): z·Φ(z) = ½z(1 + erf(z/√2)), Φ the standard normal CDF;
    `approximate=True`: the tanh form ½z(1 + tanh(√(2/π)(z + 0.044715z³)))."""
    if approximate:
        return 0.5 * z * (1 + jnp.tanh(_gelu_inner(z)))
    return 0.5 * z * (1 + erf(z * _SQRT_HALF))


def gelu_prime(z, approximate=False):
    """Exact: Φ(z) + z·φ(z), φ(z) = e^{−z²/2}/√(2π). Tanh form, t = tanh(u), u = √(2/π)(z +
    0.044715z³): ½(1 + t) + ½z(1 − t²)·√(2/π)(1 + 3·0.044715z²)."""
    if approximate:
        t = jnp.tanh(_gelu_inner(z))
        du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * z * z)
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * du
    cdf = 0.5 * (1 + erf(z * _SQRT_HALF))
    return cdf + z * jnp.exp(-0.5 * z * z) * _INV_SQRT_2PI


def silu(z):
    """SiLU / swish (Elfwing et al. 2017; Ramachandran et al. 2017): z·σ(z)."""
    return z * jax.nn.sigmoid(z)


def silu_prime(z):
    """σ(z)(1 + z(1 − σ(z)))."""
    s = jax.nn.sigmoid(z)
    return s * (1 + z * (1 - s))


def elu(z, alpha=1.0):
    """ELU (Clevert et al. 2015): z for z > 0, α(e^z − 1) otherwise."""
    return jnp.where(z > 0, z, alpha * jnp.expm1(jnp.minimum(z, 0)))


def elu_prime(z, alpha=1.0):
    """1 for z > 0, α·e^z otherwise (α at 0, the left derivative; a kink unless α = 1)."""
    return jnp.where(z > 0, jnp.ones_like(z), alpha * jnp.exp(jnp.minimum(z, 0)))


def softplus(z):
    """log(1 + e^z), computed as max(z, 0) + log1p(e^{−|z|}) (no overflow)."""
    return jnp.logaddexp(z, jnp.zeros_like(z))


def softplus_prime(z):
    """σ(z)."""
    return jax.nn.sigmoid(z)


# ---------------------------------------------------------------------------------------------
# Layers.


def _no_params(key, in_shape):
    del key, in_shape
    return {}, {}


def _elementwise(name, f, f_prime, kink=None):
    """A parameter-free layer y = f(z) with backward ∂L/∂z = dy ⊙ f'(z)."""

    def forward(params, state, z, *, key=None, train=False):
        del params, key, train
        check_floating(name, z)
        return f(z), state, z

    def backward(params, z, dy):
        del params
        return {}, dy * f_prime(z)

    def branches(params, state, z, *, key=None, train=False):
        del params, state, key, train
        return () if kink is None else kink(z)

    return Layer(name, _no_params, forward, backward, branches=branches)


def _sign_of(z):
    return z > 0


def _hard_tanh_region(z):
    return (z >= -1).astype(jnp.int8) + (z > 1).astype(jnp.int8)


@value_factory
def Sigmoid() -> Layer:
    """σ(z) = 1/(1+e^{−z}); backward dy ⊙ σ(z)(1−σ(z))."""
    return _elementwise("Sigmoid", sigmoid, sigmoid_prime)


@value_factory
def Tanh() -> Layer:
    """tanh(z); backward dy ⊙ (1 − tanh²z)."""
    return _elementwise("Tanh", tanh, tanh_prime)


@value_factory
def HardTanh() -> Layer:
    """clip(z, −1, 1); backward dy ⊙ 1[−1 ≤ z ≤ 1]."""
    return _elementwise("HardTanh", hard_tanh, hard_tanh_prime, _hard_tanh_region)


@value_factory
def Softsign() -> Layer:
    """z/(1+|z|); backward dy / (1+|z|)²."""
    return _elementwise("Softsign", softsign, softsign_prime)


@value_factory
def Relu() -> Layer:
    """max(0, z); backward dy ⊙ 1[z > 0]."""
    return _elementwise("Relu", relu, relu_prime, _sign_of)


@value_factory
def LeakyRelu(slope: float = 0.01) -> Layer:
    """z if z > 0 else slope·z; backward dy ⊙ (1 or slope)."""
    return _elementwise("LeakyRelu", lambda z: leaky_relu(z, slope),
                        lambda z: leaky_relu_prime(z, slope), _sign_of)


@value_factory
def Identity() -> Layer:
    """y = x; backward dx = dy."""
    return _elementwise("Identity", lambda z: z, jnp.ones_like)


@value_factory
def PRelu(init_slope: float = 0.25) -> Layer:
    """Parametric ReLU (He et al. 2015): y = z if z > 0 else a·z, one learned slope per channel.

    params {"slope": (channels,)} (the last axis), initially `init_slope`.
    Backward: ∂L/∂z = dy ⊙ (1 or a);  ∂L/∂a_c = Σ over every axis but the last of dy ⊙ min(z, 0).
    """

    def init(key, in_shape):
        del key
        channels = check_in_shape("PRelu", in_shape, 1)[-1]
        return {"slope": jnp.full((channels,), init_slope, jnp.float32)}, {}

    def forward(params, state, z, *, key=None, train=False):
        del key, train
        check_floating("PRelu", z)
        if z.shape[-1] != params["slope"].shape[0]:
            raise ValueError(f"PRelu: expected {params['slope'].shape[0]} channels (last axis), "
                             f"received {z.shape[-1]} in an input of shape {tuple(z.shape)}")
        z_c, slope = promoted(z, params["slope"])
        return jnp.where(z_c > 0, z_c, along_last_axis(slope, z.ndim) * z_c), state, z

    def backward(params, z, dy):
        z_c, slope, dy = promoted(z, params["slope"], dy)
        negative = jnp.where(z_c > 0, jnp.zeros_like(z_c), z_c)
        dslope = jnp.sum(dy * negative, axis=tuple(range(z.ndim - 1)))
        dz = dy * jnp.where(z_c > 0, jnp.ones_like(z_c), along_last_axis(slope, z.ndim))
        return in_param_dtypes({"slope": dslope}, params), dz.astype(z.dtype)

    def branches(params, state, z, *, key=None, train=False):
        del params, state, key, train
        return _sign_of(z)

    return Layer("PRelu", init, forward, backward, branches=branches)


def _from_output(name, f, vjp):
    """A parameter-free layer y = f(z) whose backward needs only its output: dz = vjp(y, dy)."""

    def forward(params, state, z, *, key=None, train=False):
        del params, key, train
        check_floating(name, z)
        y = f(z)
        return y, state, y

    def backward(params, y, dy):
        del params
        return {}, vjp(y, dy)

    return Layer(name, _no_params, forward, backward)


@value_factory
def Softmax() -> Layer:
    """softmax over the last axis; backward y ⊙ (dy − ⟨dy, y⟩)."""
    return _from_output("Softmax", softmax, softmax_vjp)


@value_factory
def LogSoftmax() -> Layer:
    """log-softmax over the last axis; backward dy − softmax(z)·Σdy."""
    return _from_output("LogSoftmax", log_softmax, log_softmax_vjp)


@value_factory
def Gelu(approximate: bool = False) -> Layer:
    """GELU: z·Φ(z) (exact, erf; torch GELU(approximate="none")) or, with `approximate=True`,
    the tanh form (torch GELU(approximate="tanh")); backward dy ⊙ gelu_prime(z)."""
    return _elementwise("Gelu", lambda z: gelu(z, approximate),
                        lambda z: gelu_prime(z, approximate))


@value_factory
def Silu() -> Layer:
    """SiLU / swish z·σ(z) (torch SiLU); backward dy ⊙ σ(z)(1 + z(1 − σ(z)))."""
    return _elementwise("Silu", silu, silu_prime)


@value_factory
def Elu(alpha: float = 1.0) -> Layer:
    """ELU: z if z > 0 else α(e^z − 1) (torch ELU(alpha)); backward dy ⊙ (1 or α·e^z)."""
    return _elementwise("Elu", lambda z: elu(z, alpha), lambda z: elu_prime(z, alpha), _sign_of)


@value_factory
def Softplus() -> Layer:
    """log(1 + e^z); backward dy ⊙ σ(z). torch Softplus() returns z itself above z = 20 (its
    `threshold`), a relative difference below 1e-10 there."""
    return _elementwise("Softplus", softplus, softplus_prime)
