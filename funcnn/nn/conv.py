"""Convolution and pooling on NHWC images: `Conv2D`, `MaxPool`, `AvgPool`, `L2Pool`.

Every backward is written as array operations over whole images — the transposed convolution
for ∂L/∂x, a convolution of the input with δ for ∂L/∂W, window sums for the pools — never a
Python loop over pixels. Padding follows XLA/TensorFlow: "SAME" puts any odd extra row/column
at the bottom/right; pools are always VALID (windows that do not fit are dropped, and the
uncovered rows/columns of the input get zero gradient).

`Conv2D` and `MaxPool` each have two formulations of one function, chosen by their `algorithm`
argument: "gemm"/"stack" (matrix products over im2col patches; a selection among stacked
windows) or "xla" (XLA's convolution; `reduce_window`), in every mode and on every backend, or
"auto", the documented policy of `auto_algorithm` (the fast one on each backend, for training
and for evaluation). For a given `train`, `apply`, `forward` and `jax.grad` of `apply` use the
same one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcnn import init as initializers
from funcnn.nn.core import (Layer, along_last_axis, carried_shape, check_entry, check_floating,
                            check_in_shape, describe_shape, first_max, in_param_dtypes,
                            is_positive_int, promoted, route_to_winner, shape_carrier)
from funcnn.values import value_factory

__all__ = ["AvgPool", "Conv2D", "L2Pool", "MaxPool", "auto_algorithm", "conv2d_as_gemm",
           "conv2d_gemm_backward", "conv2d_input_grad", "conv2d_kernel_grad", "im2col"]

_NHWC = "(batch, height, width, channels)"


def _pair(name: str, what: str, value) -> tuple[int, int]:
    """An int or a pair of ints (NumPy ints too) → a pair of positive Python ints."""
    pair = tuple(value) if np.iterable(value) else (value, value)
    if len(pair) != 2 or not all(is_positive_int(v) for v in pair):
        raise ValueError(f"{name}: expected {what} as a positive int or a pair of positive ints, "
                         f"received {value!r}")
    return int(pair[0]), int(pair[1])


def _check_image(name: str, x, channels: int | None = None) -> None:
    """Raise unless `x` is a floating NHWC batch (with `channels` channels when given)."""
    check_floating(name, x)
    expected = f"(batch, height, width, {channels})" if channels is not None else _NHWC
    if x.ndim != 4:
        raise ValueError(f"{name}: expected an NHWC input of shape {expected} (rank 4), received "
                         f"an input of shape {describe_shape(x.shape)} (rank {x.ndim})")
    if channels is not None and x.shape[-1] != channels:
        raise ValueError(f"{name}: expected an NHWC input of shape {expected} with {channels} "
                         f"channels (last axis), received an input of shape "
                         f"{describe_shape(x.shape)} with {x.shape[-1]} channels")


def _check_in_shape(name: str, in_shape) -> None:
    if len(check_in_shape(name, in_shape)) != 3:
        raise ValueError(f"{name}: expected a per-example input shape (height, width, channels), "
                         f"received {describe_shape(in_shape)}")


def _same_pads(size: int, window: int, stride: int) -> tuple[int, int]:
    """XLA/TensorFlow SAME padding of one axis: out = ⌈size/stride⌉, the odd pad at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def _conv_pads(padding: str, in_hw, kernel_hw, strides) -> tuple:
    """((top, bottom), (left, right)) of a Conv2D with this padding on an input of size in_hw."""
    if padding == "VALID":
        return ((0, 0), (0, 0))
    return tuple(_same_pads(n, k, s) for n, k, s in zip(in_hw, kernel_hw, strides))


def _out_size(name: str, size: int, window: int, stride: int, pads=(0, 0)) -> int:
    padded = size + pads[0] + pads[1]
    if padded < window:
        raise ValueError(f"{name}: expected a spatial size of at least {window} for a window of "
                         f"{window} (VALID), received {size}")
    return (padded - window) // stride + 1


# ---------------------------------------------------------------------------------------------
# Conv2D.


def _conv(lhs, rhs, *, strides=(1, 1), padding, lhs_dilation=None, rhs_dilation=None):
    """Every convolution here, forward and backward, in the one layout XLA:CPU runs fast
    everywhere: NHWC input, HWIO kernel, NHWC output. Other dimension numbers are fine in a
    single jitted step but fall off the fast path inside `lax.scan` loops (20–50× slower on
    XLA:CPU, measured with jax 0.10), so the backward passes transpose explicitly instead."""
    return lax.conv_general_dilated(lhs, rhs, window_strides=strides, padding=padding,
                                    lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv2d_input_grad(dy, w, in_hw, strides, pads):
    """∂L/∂x of y = conv(x, w): the transposed convolution of δ.

    δ is dilated by the strides (lhs_dilation), padded by kh−1−pad_lo on the top/left and by
    whatever brings the result to the input size on the bottom/right, then correlated with the
    spatially flipped kernel with its in/out channel axes swapped: (kh, kw, cout, cin).
    dy: (n, ho, wo, cout); w: (kh, kw, cin, cout) → (n, h, w, cin).
    """
    padding = []
    for size, k, s, (lo, _), out in zip(in_hw, w.shape[:2], strides, pads, dy.shape[1:3]):
        padding.append((k - 1 - lo, size + lo - (out - 1) * s - 1))
    flipped = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
    return _conv(dy, flipped, padding=padding, lhs_dilation=strides)


def conv2d_kernel_grad(x, dy, kernel_hw, strides, pads):
    """∂L/∂W of y = conv(x, w): the input correlated with δ dilated by the strides.

    dW[i, j, c, d] = Σ_{n, p, q} x_pad[n, p·s + i, q·s + j, c] δ[n, p, q, d]: a convolution whose
    "batch" is the input channel c, whose input "features" are the examples n, and whose kernel
    is δ as (ho, wo, n, cout) with rhs_dilation = strides. Input rows that no window reaches
    (stride not dividing the size) are cut by a negative bottom/right pad.
    x: (n, h, w, cin); dy: (n, ho, wo, cout) → (kh, kw, cin, cout).
    """
    padding = []
    for size, k, s, (lo, _), out in zip(x.shape[1:3], kernel_hw, strides, pads, dy.shape[1:3]):
        padding.append((lo, k + (out - 1) * s - size - lo))
    grad = _conv(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)),
                 padding=padding, rhs_dilation=strides)          # (cin, kh, kw, cout)
    return jnp.transpose(grad, (1, 2, 0, 3))


def auto_algorithm(algorithm: str, train: bool, cpu_training: str) -> str:
    """The formulation `algorithm` names, "auto" resolved: `cpu_training` ("gemm" for Conv2D,
    "stack" for MaxPool) to train on XLA:CPU (JAX's default backend), XLA's own op ("xla") to
    evaluate there and for everything on GPU/TPU, where XLA's convolutions and window reductions
    are the fast path. An explicit "gemm", "stack" or "xla" is used in both modes.

    Training on XLA:CPU (jax 0.10, 2 cores, batch 128, per step of a 20-step `lax.scan`): C's
    second conv layer (12×12×32 → 64, 5×5) trained with forward and backward as convolutions in
    40 ms, as GEMMs sharing one im2col in 21 ms; `jax.grad` of `lax.conv` took about 4 s (its
    transposes leave XLA's fast path inside loops), of the GEMM form 19 ms; a 2×2 max-pool's
    `jax.grad` 32 ms through `reduce_window`, 8 ms through stacked windows. Evaluating there is
    the other way round: C's forward on a batch of 128 or 1000 took about 1.5× as long (1.3–1.8×
    over runs) as GEMMs and stacked windows as through `lax.conv` and `reduce_window` (the
    im2col patches of the second layer, 205 MB for 1000 images, go through memory).
    The two formulations compute the same function: MaxPool's to the bit (values and the
    gradient's tie rule), Conv2D's up to float rounding (the order of the sums; tested to
    rtol 1e-5 in float32 and 1e-12 in float64, often bit-identical on XLA:CPU)."""
    if algorithm != "auto":
        return algorithm
    return cpu_training if train and jax.default_backend() == "cpu" else "xla"


def _check_algorithm(name: str, algorithm, choices: tuple[str, ...]) -> None:
    if algorithm not in choices:
        raise ValueError(f"{name}: expected algorithm to be one of {', '.join(map(repr, choices))}"
                         f", received {algorithm!r}")


def _padded(x, pads):
    return x if not any(lo or hi for lo, hi in pads) else \
        jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))


def im2col(x, kernel_hw, strides, pads):
    """The window patches of the padded input as rows: (n·ho·wo, kh·kw·cin), window entries in
    row-major (i, j, c) order — the order of w.reshape(kh·kw·cin, cout). Also returns (ho, wo).

    One gather of whole channel vectors by static pixel indices: XLA:CPU runs it in one pass,
    where kh·kw stacked slices cost a copy each and a concatenation (C's training forward took
    22 ms that way, 13 ms this way)."""
    x = _padded(x, pads)
    n, h, w, c = x.shape
    (kh, kw), (sh, sw) = kernel_hw, strides
    out_hw = ((h - kh) // sh + 1, (w - kw) // sw + 1)
    p, q, i, j = np.meshgrid(np.arange(out_hw[0]), np.arange(out_hw[1]), np.arange(kh),
                             np.arange(kw), indexing="ij")
    pixels = ((p * sh + i) * w + q * sw + j).ravel()
    patches = x.reshape(n, h * w, c)[:, pixels]
    return patches.reshape(n * out_hw[0] * out_hw[1], kh * kw * c), out_hw


def conv2d_as_gemm(x, w, strides, pads):
    """y = conv(x, w) as one matrix product: im2col(x) @ w as a (kh·kw·cin, cout) matrix.
    Returns (y, patches): the patches are the backward's operand too."""
    kh, kw, cin, cout = w.shape
    patches, out_hw = im2col(x, (kh, kw), strides, pads)
    y = (patches @ w.reshape(kh * kw * cin, cout)).reshape(x.shape[0], *out_hw, cout)
    return y, patches


def conv2d_gemm_backward(patches, w, dy, in_hw, strides, pads):
    """The GEMM path's hand-written backward: ∂L/∂W = patchesᵀ δ, and ∂L/∂x = col2im(δ Wᵀ) —
    every window's gradient scattered back onto the pixels it read, the padding cropped.
    patches: im2col(x); w: (kh, kw, cin, cout); dy: (n, ho, wo, cout) → (dW, dx)."""
    cout = w.shape[3]
    dy2 = dy.reshape(-1, cout)
    dw = (patches.T @ dy2).reshape(w.shape)
    padded_hw = tuple(size + lo + hi for size, (lo, hi) in zip(in_hw, pads))
    dx = _col2im_by_kernel_rows(dy2, w, dy.shape[:3], padded_hw, strides)
    (top, _), (left, _) = pads
    return dw, dx[:, top:top + in_hw[0], left:left + in_hw[1]]


def _col2im_by_kernel_rows(dy2, w, out_nhw, padded_hw, strides):
    """col2im(δ Wᵀ) onto the padded input, one kernel row i per loop iteration:
    dx[n, p·sh + i, q·sw + j, c] += Σ_d δ[n, p, q, d] · w[i, j, c, d] for every (p, q, j) — one
    (n·ho·wo, cout) @ (cout, kw·cin) product, then kw shifted adds into rows i, i + sh, ….

    The `fori_loop` is deliberate: XLA:CPU cannot fuse across it, so dx is computed once. As a
    single kh·kw-term sum, XLA fused col2im into the next layer's max-pool routing and
    recomputed it for every window entry (4× for a 2×2 pool): C's hand-written step took
    35.7 ms that way, 34.7 ms this way (median of 14 alternating epochs, jax 0.10, 2 cores).
    dy2: (n·ho·wo, cout); w: (kh, kw, cin, cout) → (n, h_pad, w_pad, cin)."""
    kh, kw, cin, cout = w.shape
    (n, ho, wo), (height, width) = out_nhw, padded_hw
    span = (ho - 1) * strides[0] + 1   # the padded rows one kernel row's windows reach

    def add_kernel_row(i, dx):
        w_row = lax.dynamic_index_in_dim(w, i, 0, keepdims=False).reshape(kw * cin, cout)
        dpatches = (dy2 @ w_row.T).reshape(n, ho, wo, kw, cin)
        rows = _window_unstack(dpatches, (span, width), (1, kw), strides)
        updated = lax.dynamic_slice_in_dim(dx, i, span, 1) + rows
        return lax.dynamic_update_slice_in_dim(dx, updated, i, 1)

    return lax.fori_loop(0, kh, add_kernel_row, jnp.zeros((n, height, width, cin), dy2.dtype))


@value_factory
def Conv2D(features: int, kernel, strides=1, padding: str = "VALID", w_init=initializers.he_normal,
           b_init=initializers.zeros, algorithm: str = "auto") -> Layer:
    """2-D convolution (cross-correlation, as every deep-learning library) on NHWC images.

    y[n, p, q, d] = b[d] + Σ_{i, j, c} x_pad[n, p·sh + i, q·sw + j, c] · w[i, j, c, d].
    x: (batch, h, w, cin); params {"w": (kh, kw, cin, cout), "b": (cout,)}; y: (batch, ho, wo, cout)
    with ho = ⌊(h − kh)/sh⌋ + 1 for "VALID" and ⌈h/sh⌉ for "SAME" (extra pad at the bottom/right).
    `kernel` and `strides` are an int or an (h, w) pair.
    `algorithm` — the same function, two formulations (they differ by float rounding only):
    "gemm": y = im2col(x)·W, ∂L/∂W = im2col(x)ᵀδ, ∂L/∂x = col2im(δWᵀ), matrix products sharing
    the forward's patches; "xla": `lax.conv`, ∂L/∂x = the transposed convolution of δ with the
    flipped kernel, ∂L/∂W = x ⋆ δ; "auto": "gemm" to train on XLA:CPU, "xla" otherwise
    (`auto_algorithm`). In every case ∂L/∂b = Σ_{n,p,q} δ; `apply`, `forward` and `jax.grad`
    of `apply` use the same formulation for the same `train`.

    >>> layer = Conv2D(8, 5, padding="SAME")
    >>> params, state = layer.init(jax.random.key(0), (28, 28, 1))   # w: (5, 5, 1, 8)
    """
    if not is_positive_int(features):
        raise ValueError(f"Conv2D: expected a positive int number of features, received "
                         f"{features!r}")
    features = int(features)
    kernel_hw = _pair("Conv2D", "the kernel size", kernel)
    strides = _pair("Conv2D", "the strides", strides)
    if padding not in ("VALID", "SAME"):
        raise ValueError(f"Conv2D: expected padding 'VALID' or 'SAME', received {padding!r}")
    _check_algorithm("Conv2D", algorithm, ("auto", "gemm", "xla"))

    def pads_for(in_hw):
        return _conv_pads(padding, in_hw, kernel_hw, strides)

    def output_shape(in_shape):
        _check_in_shape("Conv2D", in_shape)
        pads = pads_for(in_shape[:2])
        return tuple(_out_size("Conv2D", n, k, s, p)
                     for n, k, s, p in zip(in_shape[:2], kernel_hw, strides, pads)) + (features,)

    def init(key, in_shape):
        output_shape(in_shape)
        w_key, b_key = jax.random.split(key)
        return {"w": w_init(w_key, kernel_hw + (in_shape[-1], features)),
                "b": b_init(b_key, (features,))}, {}

    def forward(params, state, x, *, key=None, train=False):
        del key
        w = check_entry("Conv2D", "params", params, "w", kernel_hw + ("cin", features))
        b = check_entry("Conv2D", "params", params, "b", (features,))
        _check_image("Conv2D", x, w.shape[2])
        output_shape(x.shape[1:])
        xc, w, b = promoted(x, w, b)
        pads = pads_for(x.shape[1:3])
        if auto_algorithm(algorithm, train, "gemm") == "gemm":   # patches: backward's too
            y, patches = conv2d_as_gemm(xc, w, strides, pads)
            return y + along_last_axis(b, 4), state, (patches, shape_carrier(x))
        return _conv(xc, w, strides=strides, padding=pads) + along_last_axis(b, 4), state, x

    def backward(params, residuals, dy):
        w = params["w"].astype(dy.dtype)
        if isinstance(residuals, tuple):   # the GEMM forward's; x: a zero-byte carrier
            patches, x = residuals
            in_hw = carried_shape(x)[1:3]
            dw, dx = conv2d_gemm_backward(patches.astype(dy.dtype), w, dy, in_hw, strides,
                                          pads_for(in_hw))
        else:
            x = residuals
            in_hw, pads = x.shape[1:3], pads_for(x.shape[1:3])
            dw = conv2d_kernel_grad(x.astype(dy.dtype), dy, kernel_hw, strides, pads)
            dx = conv2d_input_grad(dy, w, in_hw, strides, pads)
        grads = {"w": dw, "b": jnp.sum(dy, axis=(0, 1, 2))}
        return in_param_dtypes(grads, params), dx.astype(x.dtype)

    return Layer("Conv2D", init, forward, backward, output_shape)


# ---------------------------------------------------------------------------------------------
# Pooling. Shared machinery: window geometry, and the transpose of a strided window sum.


def _pool_geometry(name, window, strides):
    window = _pair(name, "the window", window)
    strides = window if strides is None else _pair(name, "the strides", strides)
    return window, strides


def _pool_output_shape(name, window, strides):
    def output_shape(in_shape):
        _check_in_shape(name, in_shape)
        return tuple(_out_size(name, n, k, s)
                     for n, k, s in zip(in_shape[:2], window, strides)) + (in_shape[2],)

    return output_shape


def _window_reduce(x, op, init, window, strides):
    # a numpy init keeps it concrete under every trace, so lax picks the differentiable
    # reduce_window_{sum,max} primitive rather than the generic reduce_window
    return lax.reduce_window(x, np.asarray(init, x.dtype), op, (1,) + window + (1,),
                             (1,) + strides + (1,), "VALID")


def _window_sum_transpose(g, in_hw, window, strides):
    """Transpose of the strided VALID window sum: dx[i] = Σ over the windows w ∋ i of g[w].

    g is dilated by the strides, padded by window−1 on the top/left and up to the input size on
    the bottom/right, and summed over stride-1 windows. g: (n, ho, wo, c) → (n, h, w, c).
    """
    config = [(0, 0, 0)]
    for size, k, s, out in zip(in_hw, window, strides, g.shape[1:3]):
        config.append((k - 1, size - (out - 1) * s - 1, s - 1))
    config.append((0, 0, 0))
    padded = lax.pad(g, jnp.zeros((), g.dtype), config)
    return _window_reduce(padded, lax.add, 0, window, (1, 1))


def _window_stack(x, window, strides, out_hw):
    """The window entries of every output pixel: (n, ho, wo, kh·kw, c), row-major window order.

    Non-overlapping windows (strides == window) are a crop and a reshape; otherwise one strided
    slice per window offset (kh·kw slices, each covering the whole image).
    """
    (kh, kw), (sh, sw), (ho, wo) = window, strides, out_hw
    n, c = x.shape[0], x.shape[3]
    if window == strides:
        blocks = x[:, :ho * kh, :wo * kw].reshape(n, ho, kh, wo, kw, c)
        return blocks.transpose(0, 1, 3, 2, 4, 5).reshape(n, ho, wo, kh * kw, c)
    slices = [lax.slice(x, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                        (1, sh, sw, 1)) for i in range(kh) for j in range(kw)]
    return jnp.stack(slices, axis=3)


def _window_unstack(g, in_hw, window, strides):
    """Transpose of `_window_stack`: scatter-add (n, ho, wo, kh·kw, c) back onto (n, h, w, c)."""
    (kh, kw), (sh, sw) = window, strides
    n, ho, wo, _, c = g.shape
    h, w = in_hw
    if window == strides:
        blocks = g.reshape(n, ho, wo, kh, kw, c).transpose(0, 1, 3, 2, 4, 5)
        blocks = blocks.reshape(n, ho * kh, wo * kw, c)
        return jnp.pad(blocks, ((0, 0), (0, h - ho * kh), (0, w - wo * kw), (0, 0)))
    zero = jnp.zeros((), g.dtype)
    total = None
    for i in range(kh):
        for j in range(kw):
            config = [(0, 0, 0), (i, h - i - (ho - 1) * sh - 1, sh - 1),
                      (j, w - j - (wo - 1) * sw - 1, sw - 1), (0, 0, 0)]
            part = lax.pad(g[:, :, :, i * kw + j], zero, config)
            total = part if total is None else total + part
    return total


@value_factory
def MaxPool(window, strides=None, algorithm: str = "auto") -> Layer:
    """Max pooling over VALID windows of NHWC images: y[n, p, q, c] = max over the window of x.

    x: (batch, h, w, c) → (batch, ⌊(h − kh)/sh⌋ + 1, ⌊(w − kw)/sw⌋ + 1, c); strides=None means
    strides = window. Backward routes δ to the window's winner; ties go to the first maximal
    entry in row-major window order (top row first, then left to right), and so does `jax.grad`
    of `apply`. With overlapping windows an input that wins several windows receives the sum of
    their δ. `branches` is the winner's index in the window, so `fn.gradcheck` reports a winner
    change as a kink.
    `algorithm` only changes how `apply` is written for `jax.grad` (values and gradients are the
    same, to the bit): "stack", a selection of the first maximum among the stacked window
    entries (its gradient is elementwise); "xla", `lax.reduce_window` (its gradient a
    select-and-scatter); "auto": "stack" to train on XLA:CPU, "xla" otherwise
    (`auto_algorithm`). The hand-written `forward` always stacks the windows: its residual is
    the winner.
    """
    window, strides = _pool_geometry("MaxPool", window, strides)
    output_shape = _pool_output_shape("MaxPool", window, strides)
    _check_algorithm("MaxPool", algorithm, ("auto", "stack", "xla"))

    def winners(x):
        """(y, the winner's index in its window): the first maximum of the stacked windows."""
        _check_image("MaxPool", x)
        out_hw = output_shape(x.shape[1:])[:2]
        return first_max(_window_stack(x, window, strides, out_hw), axis=3)

    def apply(params, state, x, *, key=None, train=False):
        del params, key
        if auto_algorithm(algorithm, train, "stack") == "stack":
            return winners(x)[0], state
        _check_image("MaxPool", x)
        output_shape(x.shape[1:])
        return _window_reduce(x, lax.max, -jnp.inf, window, strides), state

    def forward(params, state, x, *, key=None, train=False):
        del params, key, train
        y, winner = winners(x)
        return y, state, (winner, shape_carrier(x))

    def backward(params, residuals, dy):
        del params
        winner, carrier = residuals
        routed = route_to_winner(dy, winner, window[0] * window[1], 3)
        return {}, _window_unstack(routed, carried_shape(carrier)[1:3], window, strides)

    def branches(params, state, x, *, key=None, train=False):
        del params, state, key, train
        return winners(x)[1]

    return Layer("MaxPool", _pool_init("MaxPool"), forward, backward, output_shape, branches, apply)


@value_factory
def AvgPool(window, strides=None) -> Layer:
    """Average pooling over VALID windows: y = (1/(kh·kw)) Σ_window x; shapes as `MaxPool`.

    Backward: every input receives δ/(kh·kw) from each window that contains it.
    """
    window, strides = _pool_geometry("AvgPool", window, strides)
    output_shape = _pool_output_shape("AvgPool", window, strides)
    size = window[0] * window[1]

    def forward(params, state, x, *, key=None, train=False):
        del params, key, train
        _check_image("AvgPool", x)
        output_shape(x.shape[1:])
        return _window_reduce(x, lax.add, 0, window, strides) / size, state, shape_carrier(x)

    def backward(params, carrier, dy):
        del params
        return {}, _window_sum_transpose(dy / size, carried_shape(carrier)[1:3], window, strides)

    return Layer("AvgPool", _pool_init("AvgPool"), forward, backward, output_shape)


@value_factory
def L2Pool(window, strides=None) -> Layer:
    """L2 pooling over VALID windows: y = √(Σ_window x²); shapes as `MaxPool`.

    Backward: ∂y/∂x_i = x_i / y for each window containing i, so ∂L/∂x = x ⊙ Σ_windows δ/y.
    At an all-zero window (y = 0, where √ has no derivative) the gradient is taken as 0, by the
    hand-written backward and by `jax.grad` alike (the forward's √ is guarded at 0).
    """
    window, strides = _pool_geometry("L2Pool", window, strides)
    output_shape = _pool_output_shape("L2Pool", window, strides)

    def forward(params, state, x, *, key=None, train=False):
        del params, key, train
        _check_image("L2Pool", x)
        output_shape(x.shape[1:])
        squares = _window_reduce(x * x, lax.add, 0, window, strides)
        positive = squares > 0   # √'s derivative at 0 is infinite: autodiff gets 0 there too
        y = jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, jnp.ones_like(squares))),
                      jnp.zeros_like(squares))
        return y, state, (x, y)

    def backward(params, residuals, dy):
        del params
        x, y = residuals
        positive = y > 0
        g = jnp.where(positive, dy / jnp.where(positive, y, jnp.ones_like(y)), jnp.zeros_like(y))
        return {}, x * _window_sum_transpose(g, x.shape[1:3], window, strides)

    return Layer("L2Pool", _pool_init("L2Pool"), forward, backward, output_shape)


def _pool_init(name):
    def init(key, in_shape):
        del key
        _check_in_shape(name, in_shape)
        return {}, {}

    return init
