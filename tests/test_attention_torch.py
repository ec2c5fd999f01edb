"""Parity with PyTorch (test-only reference), float64: `MultiHeadAttention` against
`torch.nn.MultiheadAttention(batch_first=True)` with a causal `attn_mask` and a
`key_padding_mask`, and `TransformerBlock` against `torch.nn.TransformerEncoderLayer(norm_first=
True)`: same weights in, same outputs and same gradients (of the hand-written backward) out.

Weight mapping (funcnn computes x @ w, torch x @ weight.T):
    MultiheadAttention.in_proj_weight (3d, d) = concat([wq.T, wk.T, wv.T], axis=0)
    MultiheadAttention.in_proj_bias   (3d,)   = concat([bq, bk, bv])
    MultiheadAttention.out_proj.weight (d, d) = wo.T,   out_proj.bias = bo
    attn_mask = triu(ones(T, T), 1), True = may not attend (our causal=True)
    key_padding_mask = ~mask, True = padding (our mask is True at real tokens)
    TransformerEncoderLayer: norm1/norm2.weight, .bias = LayerNorm scale, offset;
    linear1.weight = w1.T (hidden, d), linear2.weight = w2.T (d, hidden), biases as they are;
    self_attn as above. Block params: ((ln1, attention), (ln2, dense1, {}, dense2)).
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import nn

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow   # PyTorch parity: CI runs it (`pytest -m slow`)

BATCH, TIME, D, HEADS = 3, 5, 8, 2
# Key 0 is real in every row, so that with causal=True every query sees a key (torch gives NaN
# for a query that sees none; funcnn gives weights 0, tested in test_attention.py).
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 1, 0]], bool)


def t64(a):
    return torch.tensor(np.asarray(a, np.float64), requires_grad=True)


def load_attention(module, p):
    with torch.no_grad():
        module.in_proj_weight.copy_(torch.tensor(np.concatenate(
            [np.asarray(p[w]).T for w in ("wq", "wk", "wv")])))
        module.in_proj_bias.copy_(torch.tensor(np.concatenate(
            [np.asarray(p[b]) for b in ("bq", "bk", "bv")])))
        module.out_proj.weight.copy_(torch.tensor(np.asarray(p["wo"]).T))
        module.out_proj.bias.copy_(torch.tensor(np.asarray(p["bo"])))


def attention_grads(module):
    """The torch gradients in funcnn's layout (the inverse of `load_attention`)."""
    w = module.in_proj_weight.grad.numpy()
    b = module.in_proj_bias.grad.numpy()
    return {"wq": w[:D].T, "wk": w[D:2 * D].T, "wv": w[2 * D:].T,
            "bq": b[:D], "bk": b[D:2 * D], "bv": b[2 * D:],
            "wo": module.out_proj.weight.grad.numpy().T, "bo": module.out_proj.bias.grad.numpy()}


def torch_masks(causal, masked):
    attn_mask = torch.triu(torch.ones(TIME, TIME, dtype=torch.bool), 1) if causal else None
    padding = torch.tensor(~MASK) if masked else None
    return attn_mask, padding


def random_params(layer, seed):
    """N(0, 0.5²) float64 params in `layer`'s layout (scales and offsets away from 1 and 0), and
    its (empty) state."""
    rng = np.random.default_rng(seed)
    shapes, state = jax.eval_shape(lambda k: layer.init(k, (TIME, D)), jax.random.key(0))
    assert not jax.tree.leaves(state)
    params = jax.tree.map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape)), shapes)
    return params, state


@pytest.mark.parametrize("causal,masked", [(False, False), (True, False), (False, True),
                                           (True, True)])
def test_multi_head_attention_matches_torch(x64, causal, masked):
    layer = nn.MultiHeadAttention(HEADS, causal)
    params, state = random_params(layer, 0)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((BATCH, TIME, D)))
    dy = jnp.asarray(rng.standard_normal((BATCH, TIME, D)))
    inputs = (x, jnp.asarray(MASK)) if masked else x
    y, _, residuals = layer.forward(params, state, inputs)
    grads, dx = layer.backward(params, residuals, dy)
    dx = dx[0] if masked else dx

    module = torch.nn.MultiheadAttention(D, HEADS, batch_first=True, dtype=torch.float64)
    load_attention(module, params)
    xt = t64(x)
    attn_mask, padding = torch_masks(causal, masked)
    yt, _ = module(xt, xt, xt, attn_mask=attn_mask, key_padding_mask=padding, need_weights=False)
    (yt * torch.tensor(np.asarray(dy))).sum().backward()

    chex.assert_trees_all_close(np.asarray(y), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    chex.assert_trees_all_close(np.asarray(dx), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    chex.assert_trees_all_close(jax.tree.map(np.asarray, grads), attention_grads(module),
                                rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal,masked", [(False, False), (True, True)])
def test_transformer_block_matches_torch_encoder_layer(x64, causal, masked):
    hidden = 12
    layer = nn.TransformerBlock(HEADS, hidden=hidden, causal=causal)
    params, state = random_params(layer, 2)
    (ln1, attention), (ln2, dense1, _, dense2) = params
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((BATCH, TIME, D)))
    dy = jnp.asarray(rng.standard_normal((BATCH, TIME, D)))
    inputs = (x, jnp.asarray(MASK)) if masked else x
    y, _, residuals = layer.forward(params, state, inputs)
    grads, dx = layer.backward(params, residuals, (dy, None) if masked else dy)
    y, dx = (y[0], dx[0]) if masked else (y, dx)

    module = torch.nn.TransformerEncoderLayer(D, HEADS, hidden, dropout=0.0, activation="gelu",
                                              batch_first=True, norm_first=True,
                                              dtype=torch.float64)
    load_attention(module.self_attn, attention)
    with torch.no_grad():
        for norm, ln in ((module.norm1, ln1), (module.norm2, ln2)):
            norm.weight.copy_(torch.tensor(np.asarray(ln["scale"])))
            norm.bias.copy_(torch.tensor(np.asarray(ln["offset"])))
        for linear, dense in ((module.linear1, dense1), (module.linear2, dense2)):
            linear.weight.copy_(torch.tensor(np.asarray(dense["w"]).T))
            linear.bias.copy_(torch.tensor(np.asarray(dense["b"])))
    xt = t64(x)
    attn_mask, padding = torch_masks(causal, masked)
    yt = module(xt, src_mask=attn_mask, src_key_padding_mask=padding)
    (yt * torch.tensor(np.asarray(dy))).sum().backward()

    expected = (({"scale": module.norm1.weight.grad.numpy(),
                  "offset": module.norm1.bias.grad.numpy()}, attention_grads(module.self_attn)),
                ({"scale": module.norm2.weight.grad.numpy(),
                  "offset": module.norm2.bias.grad.numpy()},
                 {"w": module.linear1.weight.grad.numpy().T,
                  "b": module.linear1.bias.grad.numpy()},
                 {},
                 {"w": module.linear2.weight.grad.numpy().T,
                  "b": module.linear2.bias.grad.numpy()}))
    chex.assert_trees_all_close(np.asarray(y), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    chex.assert_trees_all_close(np.asarray(dx), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    chex.assert_trees_all_close(jax.tree.map(np.asarray, grads), expected, rtol=1e-10,
                                atol=1e-12)
