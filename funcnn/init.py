"""Weight initializers: `initializer(key, shape, dtype=jnp.float32) -> array`.

Fan-in and fan-out follow the kernel layout: a dense kernel (in, out) has fan_in = in and
fan_out = out; a conv kernel (kh, kw, cin, cout) has fan_in = kh·kw·cin, fan_out = kh·kw·cout;
a vector (a bias) has fan_in = fan_out = its length. Parameter-free initializers are used
directly (`he_normal(key, shape)`); parametrised ones are factories (`normal(0.01)`) whose
results compare and hash by their arguments (`normal(0.01) == normal(0.01)`), so that layers
built with them are equal too (`Dense(3, w_init=normal(0.01))`).
"""
from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

from funcnn.values import value_factory

__all__ = ["constant", "fans", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform",
           "lecun_normal", "normal", "ones", "sparse", "uniform", "zeros"]


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a kernel: the last axis is the output, the one before the input,
    any axes in front form the receptive field (kh·kw for a conv kernel)."""
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _fans_of(name, shape) -> tuple[int, int]:
    """`fans(shape)` for the initializer `name`, after checking that `shape` is a sequence of
    non-negative ints with a positive fan-in (the standard deviation divides by it)."""
    if not isinstance(shape, (tuple, list)) or not all(_is_int(d) and d >= 0 for d in shape):
        raise ValueError(f"{name}: expected a shape as a tuple of non-negative ints, received "
                         f"{shape!r}")
    fan_in, fan_out = fans(shape)
    if fan_in == 0:
        raise ValueError(f"{name}: expected a shape with fan_in > 0, received {tuple(shape)} "
                         f"(fan_in = 0)")
    return fan_in, fan_out


def zeros(key, shape, dtype=jnp.float32):
    """All zeros (the usual bias initializer)."""
    del key
    return jnp.zeros(shape, dtype)


def ones(key, shape, dtype=jnp.float32):
    """All ones (the usual batch-norm scale)."""
    del key
    return jnp.ones(shape, dtype)


@value_factory
def constant(value):
    """Every entry equal to `value`."""

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.full(shape, value, dtype)

    return init


@value_factory
def normal(stddev=0.01):
    """N(0, stddev²) — the notes' small random numbers, e.g. 0.01·randn."""

    def init(key, shape, dtype=jnp.float32):
        return jnp.asarray(stddev, dtype) * jax.random.normal(key, shape, dtype)

    return init


@value_factory
def uniform(scale=0.01):
    """U[−scale, scale]."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


def lecun_normal(key, shape, dtype=jnp.float32):
    """N(0, 1/fan_in): the notes' w ~ randn/√n, keeping Var(z) ≈ Var(x)."""
    fan_in, _ = _fans_of("lecun_normal", shape)
    return normal(1.0 / math.sqrt(fan_in))(key, shape, dtype)


def glorot_uniform(key, shape, dtype=jnp.float32):
    """Xavier/Glorot uniform: U[−√(6/(fan_in+fan_out)), +√(6/(fan_in+fan_out))]."""
    fan_in, fan_out = _fans_of("glorot_uniform", shape)
    return uniform(math.sqrt(6.0 / (fan_in + fan_out)))(key, shape, dtype)


def glorot_normal(key, shape, dtype=jnp.float32):
    """Xavier/Glorot normal: N(0, 2/(fan_in+fan_out)) (torch.nn.init.xavier_normal_)."""
    fan_in, fan_out = _fans_of("glorot_normal", shape)
    return normal(math.sqrt(2.0 / (fan_in + fan_out)))(key, shape, dtype)


def he_normal(key, shape, dtype=jnp.float32):
    """He/Kaiming normal for ReLU nets: N(0, 2/fan_in) (torch kaiming_normal_, fan_in mode)."""
    fan_in, _ = _fans_of("he_normal", shape)
    return normal(math.sqrt(2.0 / fan_in))(key, shape, dtype)


def he_uniform(key, shape, dtype=jnp.float32):
    """He/Kaiming uniform: U[−√(6/fan_in), √(6/fan_in)] (variance 2/fan_in)."""
    fan_in, _ = _fans_of("he_uniform", shape)
    return uniform(math.sqrt(6.0 / fan_in))(key, shape, dtype)


@value_factory
def sparse(connections=10, stddev=0.01):
    """Sparse init (Martens 2010): each unit has exactly `connections` non-zero incoming weights.

    For a kernel (..., in, out), each of the `out` units draws `connections` distinct incoming
    coordinates among the fan_in = prod(shape[:-1]) of them; those weights are N(0, stddev²).
    `connections` must be an int.
    """
    if not _is_int(connections):
        raise ValueError(f"sparse: expected connections as an int, received {connections!r}")

    def init(key, shape, dtype=jnp.float32):
        shape = tuple(shape)
        if len(shape) < 2:
            raise ValueError(f"sparse: expected a kernel shape (..., in, out) with at least 2 "
                             f"axes, received {shape}")
        fan_in, units = math.prod(shape[:-1]), shape[-1]
        if not 0 < connections <= fan_in:
            raise ValueError(f"sparse: expected 1 ≤ connections ≤ fan_in = {fan_in}, "
                             f"received connections={connections}")
        pick_key, value_key = jax.random.split(key)
        ranks = jnp.argsort(jnp.argsort(jax.random.uniform(pick_key, (units, fan_in)), axis=1),
                            axis=1)
        mask = (ranks < connections).T.reshape(shape)
        return jnp.where(mask, normal(stddev)(value_key, shape, dtype), jnp.zeros(shape, dtype))

    return init
