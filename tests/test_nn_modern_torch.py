"""PyTorch 2.13 parity for the modern layers, float64: the same weights go into both libraries and
the same outputs and gradients (weights and input; the table only, for Embedding) come out.

funcnn is channels-last and multiplies `x @ w`; torch is channels-first. The layout mapping each
case writes down (funcnn → torch):
- LayerNorm(d, eps): scale → weight, offset → bias; same (batch, …, d) input.
- RMSNorm(d, eps): scale → weight; same input.
- GroupNorm(groups, c, eps): scale → weight, offset → bias; x (n, h, w, c) → x.permute(0, 3, 1, 2).
- Embedding(vocab, d): table → weight (vocab, d); the same int ids.
- ConvTranspose2d(cin, cout, k, stride, padding=0): w (kh, kw, cin, cout) → weight
  w.transpose(2, 3, 0, 1) (cin, cout, kh, kw), b → bias; x NHWC → NCHW. funcnn "VALID" is torch's
  output as is; "SAME" is it cropped to rows [lo, lo + h·s) with lo = ⌊(k − s)/2⌋ (k ≥ s), or torch
  with output_padding = s − k (k < s).
- gelu (approximate="none" / "tanh"), silu, elu(alpha), softplus: element-wise, same input.
Every funcnn case runs its hand-written forward and backward in one jitted program.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import nn

torch = pytest.importorskip(
    "torch", reason="torch is the independent reference for the layers (test-only; "
                    "`pip install torch==2.13.0`, .ci/run installs it)")
pytestmark = pytest.mark.slow   # PyTorch parity: CI runs it (`pytest -m slow`)
F = torch.nn.functional

RNG_SEED = 0


def _t(a, grad=True):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def _torch_run(module_or_fn, inputs, weights, dy, to_torch=lambda a: a, from_torch=lambda a: a):
    """torch output and gradients (input, then each named weight) for the cotangent dy, every
    array mapped from funcnn's layout with `to_torch` and back with `from_torch`."""
    y = module_or_fn(inputs)
    y.backward(torch.tensor(to_torch(dy)))
    grad_x = None if inputs.grad is None else from_torch(inputs.grad.numpy())
    return from_torch(y.detach().numpy()), grad_x, {k: w.grad.numpy() for k, w in weights.items()}


def _norm_cases(rng):
    cases = []
    x = rng.normal(1.0, 2.0, (3, 4, 6))
    scale, offset = rng.standard_normal(6), rng.standard_normal(6)
    dy = rng.standard_normal(x.shape)

    module = torch.nn.LayerNorm(6, eps=1e-3, dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(torch.tensor(scale))
        module.bias.copy_(torch.tensor(offset))
    xt = _t(x)
    y, dx, g = _torch_run(module, xt, {"scale": module.weight, "offset": module.bias}, dy)
    cases.append(("LayerNorm", nn.LayerNorm(eps=1e-3), {"scale": scale, "offset": offset}, x, dy,
                  y, dx, {"scale": g["scale"], "offset": g["offset"]}))

    module = torch.nn.RMSNorm(6, eps=1e-6, dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(torch.tensor(scale))
    xt = _t(x)
    y, dx, g = _torch_run(module, xt, {"scale": module.weight}, dy)
    cases.append(("RMSNorm", nn.RMSNorm(eps=1e-6), {"scale": scale}, x, dy, y, dx, g))

    # GroupNorm on an image: NHWC here, NCHW in torch.
    x = rng.normal(-1.0, 3.0, (2, 3, 4, 6))
    dy = rng.standard_normal(x.shape)
    for groups in (1, 3, 6):
        module = torch.nn.GroupNorm(groups, 6, eps=1e-5, dtype=torch.float64)
        with torch.no_grad():
            module.weight.copy_(torch.tensor(scale))
            module.bias.copy_(torch.tensor(offset))
        xt = _t(x.transpose(0, 3, 1, 2))
        y, dx, g = _torch_run(module, xt, {"scale": module.weight, "offset": module.bias}, dy,
                              to_torch=lambda a: a.transpose(0, 3, 1, 2),
                              from_torch=lambda a: a.transpose(0, 2, 3, 1))
        cases.append((f"GroupNorm({groups})", nn.GroupNorm(groups),
                      {"scale": scale, "offset": offset}, x, dy, y, dx, g))
    # ... and on a sequence (batch, time, c): torch's (batch, c, time).
    x = rng.normal(0.5, 2.0, (2, 5, 6))
    dy = rng.standard_normal(x.shape)
    module = torch.nn.GroupNorm(2, 6, dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(torch.tensor(scale))
        module.bias.copy_(torch.tensor(offset))
    xt = _t(x.transpose(0, 2, 1))
    y, dx, g = _torch_run(module, xt, {"scale": module.weight, "offset": module.bias}, dy,
                          to_torch=lambda a: a.transpose(0, 2, 1),
                          from_torch=lambda a: a.transpose(0, 2, 1))
    cases.append(("GroupNorm(2) sequence", nn.GroupNorm(2), {"scale": scale, "offset": offset},
                  x, dy, y, dx, g))
    return cases


def _conv_transpose_cases(rng):
    """(kernel, stride, padding) with torch's padding=0 output cropped (SAME, k ≥ s) or extended by
    output_padding (SAME, k < s); non-square kernels and strides included."""
    cases = []
    for kernel, stride, padding in [((3, 3), (2, 2), "VALID"), ((2, 4), (3, 1), "VALID"),
                                    ((4, 4), (2, 2), "SAME"), ((5, 3), (2, 1), "SAME"),
                                    ((2, 1), (3, 2), "SAME"), ((1, 1), (1, 1), "SAME")]:
        (kh, kw), (sh, sw) = kernel, stride
        x = rng.standard_normal((2, 3, 4, 3))
        w, b = rng.standard_normal(kernel + (3, 2)), rng.standard_normal(2)
        h, wd = x.shape[1:3]
        out = (((h - 1) * sh + kh, (wd - 1) * sw + kw) if padding == "VALID"
               else (h * sh, wd * sw))
        output_padding = (max(sh - kh, 0), max(sw - kw, 0)) if padding == "SAME" else (0, 0)
        module = torch.nn.ConvTranspose2d(3, 2, kernel, stride, padding=0,
                                          output_padding=output_padding, dtype=torch.float64)
        with torch.no_grad():
            module.weight.copy_(torch.tensor(w.transpose(2, 3, 0, 1)))   # (cin, cout, kh, kw)
            module.bias.copy_(torch.tensor(b))
        lo = (max(kh - sh, 0) // 2, max(kw - sw, 0) // 2) if padding == "SAME" else (0, 0)

        def cropped(xt, module=module, lo=lo, out=out):
            y = module(xt)
            return y[:, :, lo[0]:lo[0] + out[0], lo[1]:lo[1] + out[1]]

        dy = rng.standard_normal((2,) + out + (2,))
        xt = _t(x.transpose(0, 3, 1, 2))
        y, dx, g = _torch_run(cropped, xt, {"w": module.weight, "b": module.bias}, dy,
                              to_torch=lambda a: a.transpose(0, 3, 1, 2),
                              from_torch=lambda a: a.transpose(0, 2, 3, 1))
        g["w"] = g["w"].transpose(2, 3, 0, 1)            # back to (kh, kw, cin, cout)
        cases.append((f"ConvTranspose2D({kernel}, {stride}, {padding})",
                      nn.ConvTranspose2D(2, kernel, strides=stride, padding=padding),
                      {"w": w, "b": b}, x, dy, y, dx, g))
    return cases


def _activation_cases(rng):
    x = 3.0 * rng.standard_normal((4, 7))
    x = np.where(np.abs(x) < 1e-3, 0.5, x)   # keep ELU (α ≠ 1) off its kink
    dy = rng.standard_normal(x.shape)
    cases = []
    for name, layer, f in [("gelu", nn.Gelu(), lambda t: F.gelu(t, approximate="none")),
                           ("gelu tanh", nn.Gelu(approximate=True),
                            lambda t: F.gelu(t, approximate="tanh")),
                           ("silu", nn.Silu(), F.silu),
                           ("elu", nn.Elu(), F.elu),
                           ("elu alpha=0.3", nn.Elu(alpha=0.3), lambda t: F.elu(t, alpha=0.3)),
                           ("softplus", nn.Softplus(), F.softplus)]:
        y, dx, _ = _torch_run(f, _t(x), {}, dy)
        cases.append((name, layer, {}, x, dy, y, dx, {}))
    return cases


def test_layers_match_torch(x64):
    """Outputs, input gradients and weight gradients of the hand-written forward/backward equal
    torch autograd's (rtol 1e-10), float64, for every norm, ConvTranspose2D geometry and
    activation."""
    rng = np.random.default_rng(RNG_SEED)
    cases = _norm_cases(rng) + _conv_transpose_cases(rng) + _activation_cases(rng)

    @jax.jit
    def funcnn_all(params, xs, dys):
        out = []
        for (_, layer, *_), p, x, dy in zip(cases, params, xs, dys):
            y, _, residuals = layer.forward(p, {}, x)
            grads, dx = layer.backward(p, residuals, dy)
            out.append((y, dx, grads))
        return out

    args = [[jax.tree.map(jnp.asarray, c[i]) for c in cases] for i in (2, 3, 4)]
    for (name, *_, y, dx, grads), got in zip(cases, funcnn_all(*args)):
        chex.assert_trees_all_close(got, (y, dx, grads), rtol=1e-10, atol=1e-12,
                                    custom_message=name)


def test_embedding_matches_torch(x64):
    """Rows gathered and the table's scatter-added gradient (repeated ids add up, unused rows
    get 0) equal torch.nn.Embedding's, float64."""
    rng = np.random.default_rng(1)
    table = rng.standard_normal((9, 4))
    ids = np.array([[1, 2, 2, 8, 0], [2, 7, 1, 1, 1]])
    dy = rng.standard_normal(ids.shape + (4,))
    module = torch.nn.Embedding(9, 4, dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(torch.tensor(table))
    y = module(torch.tensor(ids))
    y.backward(torch.tensor(dy))

    layer = nn.Embedding(9, 4)
    params = {"table": jnp.asarray(table)}

    @jax.jit
    def run(params, ids, dy):
        got, _, residuals = layer.forward(params, {}, ids)
        return got, layer.backward(params, residuals, dy)[0]

    got, grads = run(params, jnp.asarray(ids, jnp.int32), jnp.asarray(dy))
    chex.assert_trees_all_close(got, y.detach().numpy(), rtol=0, atol=0)
    chex.assert_trees_all_close(grads["table"], module.weight.grad.numpy(), rtol=1e-13)
    assert not np.any(module.weight.grad.numpy()[[3, 4, 5, 6]])   # the check has zero rows too
