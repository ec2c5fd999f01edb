"""`ConvTranspose2D` — the adjoint of `Conv2D` in its input — and `GlobalAvgPool`, on NHWC images.

A transposed convolution is what `Conv2D`'s backward does to δ, made a layer of its own: its
forward is `conv2d_input_grad`, and its backward is a `Conv2D` forward (for ∂L/∂x) and
`Conv2D`'s kernel gradient (for ∂L/∂W), with the roles of input and output exchanged.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from funcnn import init as initializers
from funcnn.nn.conv import (_check_image, _check_in_shape, _conv, _conv_pads, _pair,
                            conv2d_input_grad, conv2d_kernel_grad)
from funcnn.nn.core import (Layer, along_last_axis, carried_shape, check_entry, check_floating,
                            check_in_shape, describe_shape, in_param_dtypes, is_positive_int,
                            promoted, shape_carrier)
from funcnn.values import value_factory

__all__ = ["ConvTranspose2D", "GlobalAvgPool"]


def _as_conv_kernel(w):
    """(kh, kw, cin, cout) ↔ (kh, kw, cout, cin): the transpose's kernel as the kernel of the
    `Conv2D` it is the adjoint of (that conv maps cout channels back to cin), and back."""
    return jnp.transpose(w, (0, 1, 3, 2))


@value_factory
def ConvTranspose2D(features: int, kernel, strides=1, padding: str = "VALID",
                    w_init=initializers.he_normal, b_init=initializers.zeros) -> Layer:
    """Transposed 2-D convolution: the adjoint of `Conv2D` in its input, plus a bias.

    y = Cᵀx + b, where C is `Conv2D` with the same kernel, strides and padding whose input is
    y's shape: ⟨C(u), x⟩ = ⟨u, Cᵀx⟩ for every u. Entry-wise, every input pixel scatters its
    kernel-weighted values into the (padded) output:
        y_pad[n, p·sh + i, q·sw + j, d] += Σ_c x[n, p, q, c] · w[i, j, c, d],
    then y = y_pad cropped by C's padding (the kernel is effectively flipped: the true
    transpose, not flax's default `ConvTranspose`).
    x: (batch, h, w, cin); params {"w": (kh, kw, cin, cout), "b": (cout,)}; y: (batch, H, W, cout)
    with H = (h − 1)·sh + kh for "VALID" and H = h·sh for "SAME" (the full output with the extra
    row dropped at the bottom as XLA's SAME pads there, or zero-extended by sh − kh at the bottom
    when kh < sh); likewise W.
    torch.nn.ConvTranspose2d(cin, cout, kernel, stride, padding=0).weight = w.transpose(2, 3, 0, 1),
    bias = b; it equals "VALID", and "SAME" after cropping [lo : lo + H] with lo = ⌊(kh − sh)/2⌋
    (kh ≥ sh) or with output_padding = sh − kh (kh < sh).
    Backward: ∂L/∂x = C(δ) (a `Conv2D` forward of δ); ∂L/∂W = Conv2D's kernel gradient with δ
    as its input and x as its output gradient, channel axes swapped; ∂L/∂b = Σ_{n,p,q} δ.
    """
    if not is_positive_int(features):
        raise ValueError(f"ConvTranspose2D: expected a positive int number of features, "
                         f"received {features!r}")
    features = int(features)
    kernel_hw = _pair("ConvTranspose2D", "the kernel size", kernel)
    strides = _pair("ConvTranspose2D", "the strides", strides)
    if padding not in ("VALID", "SAME"):
        raise ValueError(f"ConvTranspose2D: expected padding 'VALID' or 'SAME', received "
                         f"{padding!r}")

    def out_hw(in_hw):
        if padding == "VALID":
            return tuple((n - 1) * s + k for n, k, s in zip(in_hw, kernel_hw, strides))
        return tuple(n * s for n, s in zip(in_hw, strides))

    def conv_pads(y_hw):
        """The padding of the adjoint `Conv2D` on an input of y's size."""
        return _conv_pads(padding, y_hw, kernel_hw, strides)

    def output_shape(in_shape):
        _check_in_shape("ConvTranspose2D", in_shape)
        if min(in_shape[:2]) < 1:
            raise ValueError(f"ConvTranspose2D: expected a spatial size of at least 1, received "
                             f"{describe_shape(in_shape[:2])}")
        return out_hw(in_shape[:2]) + (features,)

    def init(key, in_shape):
        output_shape(in_shape)
        w_key, b_key = jax.random.split(key)
        return {"w": w_init(w_key, kernel_hw + (in_shape[-1], features)),
                "b": b_init(b_key, (features,))}, {}

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        w = check_entry("ConvTranspose2D", "params", params, "w", kernel_hw + ("cin", features))
        b = check_entry("ConvTranspose2D", "params", params, "b", (features,))
        _check_image("ConvTranspose2D", x, w.shape[2])
        y_hw = output_shape(x.shape[1:])[:2]
        xc, w, b = promoted(x, w, b)
        y = conv2d_input_grad(xc, _as_conv_kernel(w), y_hw, strides, conv_pads(y_hw))
        return y + along_last_axis(b, 4), state, x

    def backward(params, x, dy):
        xc, w, dy = promoted(x, params["w"], dy)
        pads = conv_pads(dy.shape[1:3])
        dx = _conv(dy, _as_conv_kernel(w), strides=strides, padding=pads)
        dw = _as_conv_kernel(conv2d_kernel_grad(dy, xc, kernel_hw, strides, pads))
        grads = {"w": dw, "b": jnp.sum(dy, axis=(0, 1, 2))}
        return in_param_dtypes(grads, params), dx.astype(x.dtype)

    return Layer("ConvTranspose2D", init, forward, backward, output_shape)


@value_factory
def GlobalAvgPool() -> Layer:
    """The mean over every position of each channel: (batch, h, w, c) → (batch, c).

    y[n, c] = (1/(h·w)) Σ_{p,q} x[n, p, q, c] (= torch AdaptiveAvgPool2d(1), flattened). Any
    rank ≥ 3 works the same way, e.g. (batch, time, c) → (batch, c).
    Backward: every position receives δ[n, c]/(h·w).
    """

    def output_shape(in_shape):
        in_shape = check_in_shape("GlobalAvgPool", in_shape)
        if len(in_shape) < 2:
            raise ValueError(f"GlobalAvgPool: expected a per-example input shape (height, width, "
                             f"channels), received {describe_shape(in_shape)}")
        return in_shape[-1:]

    def init(key, in_shape):
        del key
        output_shape(in_shape)
        return {}, {}

    def forward(params, state, x, *, key=None, train=False):
        del params, key, train
        check_floating("GlobalAvgPool", x)
        if x.ndim < 3:
            raise ValueError(f"GlobalAvgPool: expected an input of shape (batch, height, width, "
                             f"channels), received an input of shape {describe_shape(x.shape)} "
                             f"(rank {x.ndim})")
        return jnp.mean(x, axis=tuple(range(1, x.ndim - 1))), state, shape_carrier(x)

    def backward(params, carrier, dy):
        del params
        shape = carried_shape(carrier)
        positions = math.prod(shape[1:-1])
        spread = dy.reshape((shape[0],) + (1,) * (len(shape) - 2) + (shape[-1],))
        return {}, jnp.broadcast_to(spread / positions, shape).astype(carrier.dtype)

    return Layer("GlobalAvgPool", init, forward, backward, output_shape)
