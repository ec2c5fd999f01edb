"""MultiHeadAttention, the positional encodings and TransformerBlock: three-way gradients
(hand-written == jax.vjp == finite differences, float64), jitted and not, under vmap; the forward
against a numpy reference; causality and padding by perturbation; TransformerBlock == its
composition; the key bias's exactly-zero gradient; errors. (PyTorch parity:
tests/test_attention_torch.py.)"""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import funcnn as fn
from funcnn import nn
from layer_checks import (BATCH, assert_layer_gradients, assert_layer_gradients_compiled,
                          assert_layer_transforms)

# Padding masks for BATCH = 3 sequences of 5 steps: no padding, a padded tail, holes. With
# causal=True the third row's query 0 sees no real key (its weights are all zero).
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 1, 0, 1]], bool)


def on_masked(layer, mask):
    """`layer` applied to (x, mask) with a fixed mask, as a plain x → y layer (the pair's y
    taken from a TransformerBlock), so that the shared checks differentiate in x alone."""

    def first(value):
        return value[0] if isinstance(value, tuple) else value

    def forward(params, state, x, *, key=None, train=False):
        y, state, residuals = layer.forward(params, state, (x, jnp.asarray(mask)), key=key,
                                            train=train)
        return first(y), state, residuals

    def backward(params, residuals, dy):
        dparams, (dx, nothing) = layer.backward(params, residuals, dy)
        assert nothing is None
        return dparams, dx

    return nn.Layer(f"masked {layer!r}", layer.init, forward, backward, layer.output_shape)


def numpy_setup(layer, in_shape, batch=2, seed=0):
    """N(0, 1) float64 params in `layer`'s layout, its state and an input batch (batch,
    *in_shape), all drawn with numpy: eager `init`s and `jax.random` draws of new shapes each
    compile threefry, which costs seconds on CPU. (`init`'s own draws are tested below.)"""
    rng = np.random.default_rng(seed)
    shapes, state = jax.eval_shape(lambda k: layer.init(k, tuple(in_shape)), jax.random.key(0))
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape)), shapes)
    state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state)
    return params, state, jnp.asarray(rng.standard_normal((batch,) + tuple(in_shape)))


TABLE = [
    ("attention_one_head", nn.MultiHeadAttention(1), (4, 3)),
    ("attention_two_heads", nn.MultiHeadAttention(2), (5, 4)),
    ("attention_causal", nn.MultiHeadAttention(3, causal=True), (4, 6)),
    ("attention_padding", on_masked(nn.MultiHeadAttention(2), MASK), (5, 4)),
    ("attention_causal_padding", on_masked(nn.MultiHeadAttention(2, causal=True), MASK), (5, 4)),
    ("learned_positions", nn.PositionalEmbedding(7), (5, 3)),
    ("sinusoidal_odd_width", nn.SinusoidalPositionalEncoding(), (4, 5)),
    # The unmasked block is its composition (test below) and in the gradcheck model.
    ("block_causal_padding", on_masked(nn.TransformerBlock(2, causal=True), MASK), (5, 4)),
]


class AttentionGradientTest(chex.TestCase):

    @parameterized.named_parameters(*TABLE[:4], *TABLE[5:])     # TABLE[4]: jitted and not, below
    def test_three_way(self, layer, in_shape):
        with jax.enable_x64(True):
            assert_layer_gradients_compiled(layer, in_shape, seed=1)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(TABLE[4])
    def test_three_way_jitted_and_not(self, layer, in_shape):
        with jax.enable_x64(True):
            assert_layer_gradients(layer, in_shape, self.variant)


def _with_key_bias(params, fill):
    """`params` with every attention's "bk" (a dict holding "wq") replaced by fill(that dict)."""
    if isinstance(params, dict):
        if "wq" in params:
            return {**params, "bk": fill(params)}
        return {name: _with_key_bias(value, fill) for name, value in params.items()}
    if isinstance(params, (tuple, list)):
        return type(params)(_with_key_bias(value, fill) for value in params)
    return params


def without_key_bias(layer):
    """`layer` with its attention key biases fixed at zero and out of its params (None there).

    ∂L/∂bk is exactly zero (softmax is shift-invariant along the keys), which
    `test_key_bias_gradient_is_zero` checks against the size of ∂L/∂bq. Elsewhere it would
    compare round-off with round-off: in float32 autodiff returns its cancelling sum as ~1e-6
    (the float32 transform checks hold rtol 1e-4, atol 1e-6), and a centered difference of an
    exactly flat direction is f's round-off over 2h, which no relative test can judge."""

    def restore(params):
        return _with_key_bias(params, lambda p: jnp.zeros(p["wq"].shape[-1], p["wq"].dtype))

    def drop(params):
        return _with_key_bias(params, lambda p: None)

    def init(key, in_shape):
        params, state = layer.init(key, in_shape)
        return drop(params), state

    def forward(params, state, x, *, key=None, train=False):
        return layer.forward(restore(params), state, x, key=key, train=train)

    def backward(params, residuals, dy):
        grads, dx = layer.backward(restore(params), residuals, dy)
        return drop(grads), dx

    return nn.Layer(f"{layer!r} without bk", init, forward, backward, layer.output_shape)


@pytest.mark.parametrize("name,layer,in_shape", [
    TABLE[2], TABLE[5], ("block", nn.TransformerBlock(2, hidden=6), (4, 4))])
def test_jit_vmap_value_and_grad_and_custom_vjp(name, layer, in_shape):
    assert_layer_transforms(without_key_bias(layer), in_shape)


@pytest.mark.parametrize("causal,masked", [(False, False), (True, True)])
def test_key_bias_gradient_is_zero(causal, masked):
    """∂L/∂bk = Σ_t Q[t]/√dh · Σ_s ∂L/∂S_ts = 0: the hand-written rule returns exact zeros;
    autodiff's value, and in float64 the centered difference's, is round-off against the size
    of the terms summed (those of ∂L/∂bq, which the difference reproduces)."""
    layer = nn.MultiHeadAttention(2, causal)
    rng = np.random.default_rng(0)
    params = {n: rng.standard_normal((4, 4) if n[0] == "w" else (4,))
              for n in ("wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo")}
    x, dy = rng.standard_normal((2, BATCH, 5, 4))

    def hand_and_auto(params, x, dy):
        inputs = (x, jnp.asarray(MASK)) if masked else x
        _, _, residuals = layer.forward(params, {}, inputs)
        return (layer.backward(params, residuals, dy)[0],
                jax.vjp(lambda p: layer.apply(p, {}, inputs)[0], params)[1](dy)[0])

    for dtype, noise in ((np.float32, 1e-4), (np.float64, 1e-13)):
        with jax.enable_x64(dtype == np.float64):
            cast = jax.tree.map(lambda a: jnp.asarray(a, dtype), (params, x, dy))
            hand, auto = jax.jit(hand_and_auto)(*cast)
            np.testing.assert_array_equal(hand["bk"], np.zeros(4, dtype))
            scale = float(jnp.max(jnp.abs(auto["bq"])))
            assert scale > 0.1
            assert float(jnp.max(jnp.abs(auto["bk"]))) < noise * scale
    with jax.enable_x64(True):                    # float64 centered differences
        params, x, dy = cast
        inputs = (x, jnp.asarray(MASK)) if masked else x
        numerical = fn.gradcheck.numerical_grad(
            lambda b: jnp.sum(layer.apply({**params, **b}, {}, inputs)[0] * dy),
            {"bq": params["bq"], "bk": params["bk"]})
        chex.assert_trees_all_close(numerical["bq"], auto["bq"], rtol=1e-7)
        assert float(jnp.max(jnp.abs(numerical["bk"]))) < 1e-7 * scale


def test_gradcheck_of_a_small_causal_model():
    """fn.gradcheck.check at three points. The key bias is left out (`without_key_bias`): its
    gradient is exactly 0, so f(bk ± h) differ by round-off alone, and a centered difference of
    round-off has no relative accuracy (the test above bounds it against ∂L/∂bq instead)."""
    model = without_key_bias(
        nn.serial(nn.SinusoidalPositionalEncoding(), nn.PositionalEmbedding(6),
                  nn.TransformerBlock(2, hidden=8, causal=True), nn.Dense(3)))
    params, state, x = numpy_setup(model, (5, 4))
    y = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 3)))
    report = fn.gradcheck.check(model, fn.losses.mean_squared_error, params, state, x, y,
                                tol=1e-7)
    assert report.passed, str(report)


def reference_attention(params, x, heads, causal=False, mask=None):
    """Vaswani's formula, one head at a time, in numpy float64."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.asarray(x, np.float64)
    batch, time, d = x.shape
    dh = d // heads
    q, k, v = (x @ p["w" + n] + p["b" + n] for n in "qkv")
    allowed = np.ones((batch, time, time), bool)
    if causal:
        allowed &= np.tril(np.ones((time, time), bool))[None]
    if mask is not None:
        allowed &= np.asarray(mask)[:, None, :]
    outputs = []
    for i in range(heads):
        cols = slice(i * dh, (i + 1) * dh)
        scores = q[..., cols] @ np.swapaxes(k[..., cols], 1, 2) / math.sqrt(dh)
        scores = np.where(allowed, scores, -np.inf)
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
        outputs.append(weights / weights.sum(axis=-1, keepdims=True) @ v[..., cols])
    return np.concatenate(outputs, axis=-1) @ p["wo"] + p["bo"]


@pytest.mark.parametrize("heads,causal,masked", [(1, False, False), (2, True, False),
                                                 (4, False, True), (2, True, True)])
def test_forward_matches_a_numpy_reference(x64, heads, causal, masked):
    layer = nn.MultiHeadAttention(heads, causal)
    params, _, x = numpy_setup(layer, (5, 8), batch=3)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 1, 0]], bool)   # key 0 is real
    y, _ = layer.apply(params, {}, (x, jnp.asarray(mask)) if masked else x)
    expected = reference_attention(params, x, heads, causal, mask if masked else None)
    chex.assert_trees_all_close(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer", [nn.MultiHeadAttention(2, causal=True),
                                   nn.TransformerBlock(2, causal=True)], ids=["mha", "block"])
def test_causal_output_at_t_ignores_inputs_after_t(x64, layer):
    params, state, x = numpy_setup(layer, (6, 4))
    apply = jax.jit(layer.apply)
    y, _ = apply(params, state, x)
    # A random step, not a constant one: LayerNorm ignores adding c·(1, …, 1) to x[t].
    step = jnp.asarray(np.random.default_rng(2).standard_normal(4))
    for t in range(6):
        changed, _ = apply(params, state, x.at[:, t].add(step))
        np.testing.assert_array_equal(changed[:, :t], y[:, :t])      # bit for bit
        assert np.all(np.abs(changed[:, t:] - y[:, t:]).max(axis=-1) > 1e-6)


def test_without_causal_every_output_depends_on_every_input(x64):
    layer = nn.MultiHeadAttention(2)
    params, _, x = numpy_setup(layer, (6, 4))
    y, _ = layer.apply(params, {}, x)
    changed, _ = layer.apply(params, {}, x.at[:, 5].add(1.0))
    assert np.all(np.abs(changed - y).max(axis=-1) > 1e-6)


@pytest.mark.parametrize("layer", [nn.MultiHeadAttention(2), nn.MultiHeadAttention(2, True),
                                   nn.TransformerBlock(2)], ids=["mha", "mha_causal", "block"])
def test_padded_keys_do_not_change_the_outputs(x64, layer):
    """Real positions' outputs: unchanged by anything at the padded positions, and equal to the
    layer applied to the sequence with its padded tail cut off."""
    params, state, x = numpy_setup(layer, (6, 4))
    apply = jax.jit(layer.apply)
    mask = jnp.array([[1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 0, 1]], bool)
    out, _ = apply(params, state, (x, mask))
    y = out[0] if isinstance(out, tuple) else out
    noise = jnp.asarray(np.random.default_rng(2).standard_normal(x.shape))
    moved, _ = apply(params, state, (jnp.where(mask[..., None], x, x + 10 * noise), mask))
    moved = moved[0] if isinstance(moved, tuple) else moved
    chex.assert_trees_all_close(moved[mask], y[mask], rtol=1e-12, atol=1e-12)
    cut, _ = apply(params, state, x[:1, :4])
    chex.assert_trees_all_close(y[0, :4], cut[0], rtol=1e-12, atol=1e-12)


def test_all_true_mask_is_no_mask(x64):
    layer = nn.TransformerBlock(2, causal=True)
    params, state, x = numpy_setup(layer, (5, 4), batch=3)
    (y, mask), _ = layer.apply(params, state, (x, jnp.ones((3, 5), bool)))
    chex.assert_trees_all_close(y, layer.apply(params, state, x)[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(mask, np.ones((3, 5), bool))


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
@pytest.mark.parametrize("causal", [False, True])
def test_transformer_block_is_its_composition(x64, causal):
    block = nn.TransformerBlock(2, causal=causal)
    composed = nn.serial(nn.residual(nn.LayerNorm(), nn.MultiHeadAttention(2, causal)),
                         nn.residual(nn.LayerNorm(), nn.Dense(32), nn.Gelu(), nn.Dense(8)))
    key = jax.random.key(3)
    params, state = block.init(key, (5, 8))
    chex.assert_trees_all_equal((params, state), composed.init(key, (5, 8)))   # same draws
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), params)
    x = jnp.asarray(rng.standard_normal((3, 5, 8)))
    dy = jnp.asarray(rng.standard_normal((3, 5, 8)))
    y, _, residuals = block.forward(params, state, x)
    y_ref, _, residuals_ref = composed.forward(params, state, x)
    chex.assert_trees_all_close(y, y_ref, rtol=1e-13, atol=1e-13)
    chex.assert_trees_all_close(block.apply(params, state, x)[0], y_ref, rtol=1e-13, atol=1e-13)
    chex.assert_trees_all_close(block.backward(params, residuals, dy),
                                composed.backward(params, residuals_ref, dy), rtol=1e-12,
                                atol=1e-13)


def test_positional_encodings_closed_forms(x64):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 6)))
    y, _ = nn.SinusoidalPositionalEncoding().apply({}, {}, x)
    for t, j in [(0, 0), (0, 1), (3, 0), (3, 1), (2, 4), (1, 5)]:
        angle = t / 10000 ** ((j - j % 2) / 6)
        expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
        np.testing.assert_allclose(y[:, t, j] - x[:, t, j], expected, rtol=1e-14, atol=1e-15)
    layer = nn.PositionalEmbedding(9)
    params, _ = layer.init(jax.random.key(0), (4, 6))
    chex.assert_shape(params["table"], (9, 6))
    assert 0.01 < float(jnp.std(params["table"])) < 0.03          # N(0, 0.02²), as GPT-2
    y, _ = layer.apply(params, {}, x)
    table = params["table"].astype(jnp.float64)                   # float32 from its initializer
    chex.assert_trees_all_close(y, x + table[None, :4], rtol=1e-15, atol=1e-15)


def test_attention_init_and_values():
    params, state = nn.MultiHeadAttention(4).init(jax.random.key(0), (7, 8))
    assert state == {}
    chex.assert_shape([params[n] for n in ("wq", "wk", "wv", "wo")], (8, 8))
    chex.assert_trees_all_equal([params[n] for n in ("bq", "bk", "bv", "bo")], [jnp.zeros(8)] * 4)
    assert not np.allclose(params["wq"], params["wk"])          # independent draws
    assert nn.MultiHeadAttention(4) == nn.MultiHeadAttention(4, causal=False)
    assert nn.MultiHeadAttention(4) != nn.MultiHeadAttention(4, causal=True)
    assert nn.TransformerBlock(2, 8) == nn.TransformerBlock(2, hidden=8)
    assert nn.TransformerBlock(2).output_shape((5, 8)) == (5, 8)


def test_errors():
    layer = nn.MultiHeadAttention(3)
    with pytest.raises(ValueError, match="divisible by heads=3"):
        layer.init(jax.random.key(0), (5, 8))
    with pytest.raises(ValueError, match="positive int number of heads"):
        nn.MultiHeadAttention(0)
    with pytest.raises(ValueError, match="hidden"):
        nn.TransformerBlock(2, hidden=0)
    params, _, x = numpy_setup(nn.MultiHeadAttention(2), (5, 4))
    with pytest.raises(ValueError, match="rank 3"):
        nn.MultiHeadAttention(2).apply(params, {}, x[0])
    with pytest.raises(ValueError, match="expected 4 input features"):
        nn.MultiHeadAttention(2).apply(params, {}, jnp.zeros((2, 5, 6)))
    with pytest.raises(TypeError, match="bool padding mask"):
        nn.MultiHeadAttention(2).apply(params, {}, (x, jnp.ones((2, 5))))
    with pytest.raises(ValueError, match=r"mask of shape \(batch, time\) = \(2, 5\)"):
        nn.MultiHeadAttention(2).apply(params, {}, (x, jnp.ones((2, 4), bool)))
    with pytest.raises(ValueError, match="pair"):
        nn.MultiHeadAttention(2).apply(params, {}, (x, x, x))
    table = {"table": jnp.zeros((4, 4))}
    with pytest.raises(ValueError, match="at most max_len=4 time steps, received 5"):
        nn.PositionalEmbedding(4).apply(table, {}, x)
    with pytest.raises(ValueError, match="at most max_len=4"):
        nn.PositionalEmbedding(4).init(jax.random.key(0), (5, 4))
    with pytest.raises(ValueError, match="positive int max_len"):
        nn.PositionalEmbedding(0)


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
def test_batch_is_vmapped_and_masked_pairs_stack_in_serial(x64):
    """Two blocks in `serial` pass (x, mask) along; vmap over a stack of sequences equals the
    batched call."""
    model = nn.serial(nn.TransformerBlock(2), nn.TransformerBlock(2))
    params, state, x = numpy_setup(model, (5, 4), batch=BATCH)
    mask = jnp.asarray(MASK)
    (y, out_mask), _ = model.apply(params, state, (x, mask))
    np.testing.assert_array_equal(out_mask, MASK)
    single = jax.vmap(lambda xi, mi: model.apply(params, state, (xi[None], mi[None]))[0][0][0])
    chex.assert_trees_all_close(single(x, mask), y, rtol=1e-12, atol=1e-12)
