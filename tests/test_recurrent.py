"""SimpleRNN, LSTM, GRU and Bidirectional: three-way gradients (masked too), jitted and not,
under vmap; hand-written BPTT over 50 steps == jax.grad of a reference scan written from
DESIGN.md's formulas; a padded tail == the unpadded sequence; truncated BPTT; a learned task."""
import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import funcnn as fn
from funcnn import nn
from layer_checks import (assert_layer_gradients, assert_layer_gradients_compiled,
                          assert_layer_transforms)

LENGTHS = np.array([5, 3, 1])   # BATCH = 3 sequences of a 5-step padded batch


def with_mask(layer, lengths=LENGTHS):
    """`layer` fed the masked sequence (x, mask) for a fixed padded-tail mask, as a layer of x
    alone (its output without the passed-through mask), so layer_checks can probe it."""
    paired = isinstance(layer.output_shape(((1, 1), (1,)))[0], tuple)

    def init(key, in_shape):
        return layer.init(key, (tuple(in_shape), tuple(in_shape[:1])))

    def output_shape(in_shape):
        out = layer.output_shape((tuple(in_shape), tuple(in_shape[:1])))
        return out[0] if paired else out

    def forward(params, state, x, *, key=None, train=False):
        mask = jnp.asarray(lengths[:, None] > np.arange(x.shape[1]))
        y, state, res = layer.forward(params, state, (x, mask), key=key, train=train)
        return (y[0] if paired else y), state, res

    def backward(params, res, dy):
        grads, (dx, _) = layer.backward(params, res, (dy, None) if paired else dy)
        return grads, dx

    return dataclasses.replace(layer, name=f"masked {layer!r}", init=init, forward=forward,
                               backward=backward, output_shape=output_shape)


# The seed picks the test point. Where an entry of the true gradient is tiny (a saturated tanh
# several steps back), centered differences with h = 1e-5 carry ~1e-11 absolute noise, which
# layer_checks' element-wise relative error reports as > 1e-7 although hand-written == jax.vjp
# to 1e-16: e.g. SimpleRNN(2, return_sequences=False) at seed 0 has ∂L/∂x = −7.9448e-7 vs FD
# −7.9448e-7 (|Δ| = 4.7e-12). Seeds are chosen where every entry is well above that noise.
TABLE = [
    ("rnn", nn.SimpleRNN(3), (5, 2), 0),
    ("rnn_last", nn.SimpleRNN(2, return_sequences=False), (4, 3), 1),
    ("lstm", nn.LSTM(3), (5, 2), 0),
    ("lstm_last_masked", with_mask(nn.LSTM(2, return_sequences=False)), (5, 2), 1),
    ("gru", nn.GRU(3), (5, 2), 0),
    ("gru_masked", with_mask(nn.GRU(2)), (5, 2), 1),
    ("bidirectional_lstm_masked", with_mask(nn.Bidirectional(nn.LSTM(2))), (5, 2), 1),
    ("bidirectional_gru_last", nn.Bidirectional(nn.GRU(2, return_sequences=False)), (4, 2), 1),
]


class RecurrentGradientTest(chex.TestCase):

    @parameterized.named_parameters(*TABLE)
    def test_three_way(self, layer, in_shape, seed):
        with jax.enable_x64(True):
            assert_layer_gradients_compiled(layer, in_shape, seed=seed)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(TABLE[1], TABLE[3])   # the layers' shared scan, masked too
    def test_three_way_jitted_and_not(self, layer, in_shape, seed):
        three_way_jitted_and_not(layer, in_shape, seed, self.variant)


class RecurrentGradientEveryLayerTest(chex.TestCase):
    pytestmark = pytest.mark.slow   # ~2 CPU-minutes of compilation: CI runs them (-m slow)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*(TABLE[:1] + TABLE[2:3] + TABLE[4:]))
    def test_three_way_jitted_and_not(self, layer, in_shape, seed):
        three_way_jitted_and_not(layer, in_shape, seed, self.variant)


def three_way_jitted_and_not(layer, in_shape, seed, variant):
    # With the layers' own (small, torch-uniform) weights some gradient entries are ~1e-3 of
    # their leaf's largest: D(1e-5) leaves ~1e-11 round-off on them (1.4e-7 relative on LSTM(3)'s
    # wh at seed 0), D(1e-4) ~1e-10 truncation (GRU(3)'s wi); Richardson's
    # (4·D(1e-4) − D(2e-4))/3 has neither.
    with jax.enable_x64(True):
        assert_layer_gradients(layer, in_shape, variant, seed=seed, richardson=True)


def test_jit_vmap_value_and_grad_and_custom_vjp():
    assert_layer_transforms(nn.Bidirectional(nn.LSTM(3)), (4, 2))


def test_vmap_over_independent_masked_batches_equals_each_batch(x64):
    layer = nn.GRU(3)
    params, _ = layer.init(jax.random.key(0), (4, 2))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 3, 4, 2)))
    mask = jnp.asarray(rng.random((2, 3, 4)) < 0.7)
    state = {"h": jnp.asarray(rng.standard_normal((2, 3, 3)))}

    def run(x, mask, state):
        (y, _), state, res = layer.forward(params, state, (x, mask))
        return y, state, layer.backward(params, res, (jnp.ones_like(y), None))

    stacked = jax.jit(jax.vmap(run))(x, mask, state)
    for i in range(2):
        one = jax.jit(run)(x[i], mask[i], {"h": state["h"][i]})
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], stacked[:2]), one[:2],
                                    rtol=1e-12)
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], stacked[2][0]), one[2][0],
                                    rtol=1e-12)


@pytest.mark.slow   # ~17 s (CI: pytest -m slow)
def test_gradcheck_of_a_sequence_classifier():
    """fn.gradcheck.check (hand-written == autodiff == centered differences, at several points)
    on a stack of every recurrent layer."""
    model = nn.serial(nn.Bidirectional(nn.LSTM(3)), nn.SimpleRNN(3),
                      nn.GRU(3, return_sequences=False), nn.Dense(2))
    params, state = model.init(jax.random.key(0), (6, 2))
    x = jax.random.normal(jax.random.key(1), (3, 6, 2))
    report = fn.gradcheck.check(model, fn.losses.softmax_cross_entropy, params, state, x,
                                jnp.array([0, 1, 1]), tol=1e-7)
    assert report.passed, str(report)


# ---------------------------------------------------------------------------------------------
# A reference written from DESIGN.md's formulas, one step at a time.


def reference_step(kind, p, carry, x_t):
    h, c = carry
    sigmoid = jax.nn.sigmoid
    if kind == "SimpleRNN":
        return jnp.tanh(x_t @ p["wi"] + h @ p["wh"] + p["b"][None, :]), c
    if kind == "LSTM":
        i, f, g, o = jnp.split(x_t @ p["wi"] + h @ p["wh"] + p["b"][None, :], 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * jnp.tanh(g)
        return sigmoid(o) * jnp.tanh(c), c
    xr, xz, xn = jnp.split(x_t @ p["wi"] + p["bi"][None, :], 3, axis=-1)
    hr, hz, hn = jnp.split(h @ p["wh"] + p["bh"][None, :], 3, axis=-1)
    r, z = sigmoid(xr + hr), sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return (1 - z) * n + z * h, c


def reference_run(kind, p, x, h0, c0):
    """Every step's h (batch, time, hidden) and the final (h, c): `reference_step` scanned over
    time (its autodiff, jax's own BPTT, is the reference; unroll=True compiles for minutes)."""
    def step(carry, x_t):
        carry = reference_step(kind, p, carry, x_t)
        return carry, carry[0]

    carry, outputs = jax.lax.scan(step, (h0, c0), jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(outputs, 0, 1), carry


@functools.cache
def reference_grad(kind, return_sequences=True):
    """jitted (⟨δy, output⟩, (h_T, c_T)) and its gradient w.r.t. (params, x), of the reference run
    from (h0, c0); the output is every step's h, or h_T with return_sequences=False."""
    def loss(p, x, h0, c0, dy):
        steps, final = reference_run(kind, p, x, h0, c0)
        return jnp.sum((steps if return_sequences else final[0]) * dy), final

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def draw(layer, in_shape, batch, seed=0):
    params, _ = layer.init(jax.random.key(seed), in_shape)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    x = jnp.asarray(np.random.default_rng(seed).standard_normal((batch,) + in_shape))
    return params, x


def forward_backward(layer):
    """jitted (output, final state, hand-written (grads, input cotangent)) of `layer`."""
    def run(params, state, inputs, dy):
        y, final, res = layer.forward(params, state, inputs)
        return y, final, layer.backward(params, res, dy)

    return jax.jit(run)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_bptt_by_hand_over_50_steps_equals_grad_of_the_reference_scan(kind, x64):
    layer = getattr(nn, kind)(4)
    params, x = draw(layer, (50, 3), 2)
    rng = np.random.default_rng(1)
    dy = jnp.asarray(rng.standard_normal((2, 50, 4)))
    h0, c0 = (jnp.asarray(rng.standard_normal((2, 4))) for _ in range(2))
    state = {"h": h0, "c": c0} if kind == "LSTM" else {"h": h0}

    # loss Σ_t ⟨δy_t, h_t⟩, from a non-zero initial state
    (value, (h_ref, c_ref)), (dp_ref, dx_ref) = reference_grad(kind)(params, x, h0, c0, dy)
    y, final, (dp, dx) = forward_backward(layer)(params, state, x, dy)
    chex.assert_trees_all_close(jnp.sum(y * dy), value, rtol=1e-12)
    chex.assert_trees_all_close(final["h"], h_ref, rtol=1e-12)
    if kind == "LSTM":
        chex.assert_trees_all_close(final["c"], c_ref, rtol=1e-12)
    chex.assert_trees_all_close((dp, dx), (dp_ref, dx_ref), rtol=1e-9, atol=1e-13)


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
@pytest.mark.parametrize("kind,return_sequences", [("LSTM", True), ("GRU", True),
                                                   ("LSTM", False), ("GRU", False)])
def test_a_padded_tail_gives_the_loss_and_gradients_of_the_unpadded_sequences(
        kind, return_sequences, x64):
    """lengths (50, 37, 20) padded to 50 with garbage: hand-written forward/backward on the
    masked batch == jax.grad of the reference run on each sequence alone, at its own length."""
    layer = getattr(nn, kind)(4, return_sequences=return_sequences)
    params, x = draw(layer, (50, 3), 3)
    lengths = np.array([50, 37, 20])
    mask = jnp.asarray(lengths[:, None] > np.arange(50))
    dy = jnp.asarray(np.random.default_rng(2).standard_normal((3, 50, 4) if return_sequences
                                                              else (3, 4)))
    y, _, (dp, dx) = forward_backward(layer)(params, {}, (x, mask),
                                             (dy, None) if return_sequences else dy)
    dx = dx[0]
    if return_sequences:
        y = y[0]
        chex.assert_trees_all_equal(y[1, 37:], jnp.zeros((13, 4)))   # masked outputs are zero
        dy = jnp.where(mask[..., None], dy, 0.0)                     # padded steps' δ unused
    value = jnp.sum(y * dy)

    total, grads = 0.0, jax.tree.map(jnp.zeros_like, params)
    zero = jnp.zeros((1, 4))
    for b, n in enumerate(lengths):
        dy_b = dy[b:b + 1, :n] if return_sequences else dy[b:b + 1]
        (v, _), (g, dx_b) = reference_grad(kind, return_sequences)(params, x[b:b + 1, :n], zero,
                                                                    zero, dy_b)
        total, grads = total + v, jax.tree.map(jnp.add, grads, g)
        chex.assert_trees_all_close(dx[b, :n], dx_b[0], rtol=1e-9, atol=1e-13)
        chex.assert_trees_all_equal(dx[b, n:], jnp.zeros((50 - n, 3)))
    chex.assert_trees_all_close(value, total, rtol=1e-12)
    chex.assert_trees_all_close(dp, grads, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("layer", [nn.LSTM(3), nn.GRU(3), nn.SimpleRNN(3)])
def test_truncated_bptt_two_halves_carry_the_state_of_the_full_sequence(layer, x64):
    params, x = draw(layer, (12, 2), 2)
    names = ("h", "c") if layer.name == "LSTM" else ("h",)
    start = {n: jnp.zeros((2, 3)) for n in names}
    dy = jnp.asarray(np.random.default_rng(3).standard_normal((2, 6, 3)))

    @jax.jit
    def run(params, x):
        full, full_state = layer.apply(params, start, x)
        first, middle = layer.apply(params, start, x[:, :6])
        second, end, res = layer.forward(params, middle, x[:, 6:])
        zero_start, nothing = layer.apply(params, {}, x)
        # the second window's gradient: the carried state is a constant (no gradient crosses)
        hand, _ = layer.backward(params, res, dy)
        auto = jax.grad(lambda p: jnp.sum(layer.apply(p, middle, x[:, 6:])[0] * dy))(params)
        return full, full_state, first, second, end, zero_start, nothing, hand, auto

    full, full_state, first, second, end, zero_start, nothing, hand, auto = run(params, x)
    exact = dict(rtol=1e-12, atol=1e-15)   # float64 round-off (entries go down to ~1e-5)
    chex.assert_trees_all_close(jnp.concatenate([first, second], axis=1), full, **exact)
    chex.assert_trees_all_close(end, full_state, **exact)
    assert nothing == {}   # a {} state: zero start, nothing carried
    chex.assert_trees_all_close(zero_start, full, **exact)
    chex.assert_trees_all_close(hand, auto, rtol=1e-9)


def test_bidirectional_is_the_forward_layer_and_the_reversed_backward_layer(x64):
    inner = nn.LSTM(3)
    layer = nn.Bidirectional(inner)
    params, state = layer.init(jax.random.key(0), (5, 2))
    assert state == {"forward": {}, "backward": {}}
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 2)))
    y, _ = layer.apply(params, state, x)
    forward, _ = inner.apply(params["forward"], {}, x)
    backward, _ = inner.apply(params["backward"], {}, x[:, ::-1])
    chex.assert_trees_all_close(y, jnp.concatenate([forward, backward[:, ::-1]], axis=-1))
    last = nn.Bidirectional(nn.LSTM(3, return_sequences=False))
    h, _ = last.apply(params, state, x)
    chex.assert_trees_all_close(h, jnp.concatenate([forward[:, -1], backward[:, -1]], axis=-1))
    assert layer.output_shape((5, 2)) == (5, 6) and last.output_shape((5, 2)) == (6,)
    assert layer.output_shape(((5, 2), (5,))) == ((5, 6), (5,))


def test_init_is_torchs_uniform_and_layers_are_values():
    params, state = nn.GRU(16).init(jax.random.key(0), (7, 5))
    assert state == {}
    chex.assert_shape([params["wi"], params["wh"], params["bi"], params["bh"]],
                      [(5, 48), (16, 48), (48,), (48,)])
    for leaf in jax.tree.leaves(params):
        assert float(jnp.max(jnp.abs(leaf))) <= 0.25 and float(jnp.std(leaf)) > 0.1
    assert nn.LSTM(4) == nn.LSTM(4) and hash(nn.LSTM(4)) == hash(nn.LSTM(4))
    assert nn.LSTM(4) != nn.LSTM(4, return_sequences=False)
    assert nn.Bidirectional(nn.GRU(2)) == nn.Bidirectional(nn.GRU(2))


@pytest.mark.parametrize("inputs,state,error,words", [
    (jnp.zeros((2, 5)), {}, ValueError, ["LSTM", "rank 3", "(2, 5)"]),
    (jnp.zeros((2, 5, 4)), {}, ValueError, ["LSTM", "3 input features", "4"]),
    ((jnp.zeros((2, 5, 3)), jnp.ones((2, 5))), {}, TypeError, ["LSTM", "bool mask", "float32"]),
    ((jnp.zeros((2, 5, 3)), jnp.ones((2, 4), bool)), {}, ValueError,
     ["LSTM", "mask of shape (2, 5)", "(2, 4)"]),
    (jnp.zeros((2, 5, 3)), {"h": jnp.zeros((2, 4))}, ValueError, ["LSTM", "'h'", "'c'"]),
    (jnp.zeros((2, 5, 3)), {"h": jnp.zeros((2, 3)), "c": jnp.zeros((2, 4))}, ValueError,
     ["LSTM", "state['h']", "(2, 4)", "(2, 3)"]),
])
def test_bad_input_or_state_names_the_layer_expected_and_received(inputs, state, error, words):
    layer = nn.LSTM(4)
    params, _ = layer.init(jax.random.key(0), (5, 3))
    with pytest.raises(error) as raised:
        layer.apply(params, state, inputs)
    for word in words:
        assert word in str(raised.value), str(raised.value)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="GRU: expected a positive int hidden size, received 0"):
        nn.GRU(0)
    with pytest.raises(TypeError, match="return_sequences as a bool"):
        nn.LSTM(3, return_sequences=1)
    with pytest.raises(TypeError, match="Bidirectional"):
        nn.Bidirectional(nn.LSTM)
    with pytest.raises(ValueError, match=r"Bidirectional: expected params as a dict"):
        nn.Bidirectional(nn.LSTM(2)).apply({}, {}, jnp.zeros((1, 3, 2)))


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
def test_fit_learns_to_carry_the_first_bit_through_five_distractors():
    """y = x_0 of 6 random bits, read from the final hidden state: step 0 reaches the output only
    through the carried state (chance is 1/2), so ≥ 97 % means state carries information across
    time, learned by `fit` with the hand-written BPTT. (Parity of the bits, an XOR over time,
    stays at chance for 25 epochs with hand-written and autodiff gradients alike: a known
    plateau of gradient descent on parity, not a test of the layer.)"""
    bits = np.random.default_rng(0).integers(0, 2, (512, 6))
    x, y = bits[..., None].astype(np.float32), bits[:, 0].astype(np.int32)
    model = nn.serial(nn.GRU(8, return_sequences=False), nn.Dense(2))
    result = fn.train.fit(model, fn.losses.softmax_cross_entropy, fn.optim.adam(0.05),
                          (x[:384], y[:384]), epochs=8, batch_size=32, key=jax.random.key(0),
                          validation=(x[384:], y[384:]), progress=False, hand_written=True)
    assert result.history["val_accuracy"][0] < 0.7, result.history["val_accuracy"]
    assert result.history["val_accuracy"][-1] >= 0.97, result.history["val_accuracy"]
