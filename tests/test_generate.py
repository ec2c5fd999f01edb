"""fn.generate: temperature and top-k sampling of one step (against argmax and the softmax
restricted to the top k, over many draws), and whole generations from a model whose next id is
known in closed form (the window slides as documented), jitted, deterministic given the key."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn import nn

sample, sample_logits = fn.generate.sample, fn.generate.sample_logits

VOCAB = 7
LOGITS = jnp.array([[0.3, 2.0, -1.0, 1.5, 0.0, 1.9, -0.5],
                    [1.0, -2.0, 0.5, 0.4, 3.0, 0.1, 0.2]])
DRAWS = 4000


def draws(logits, **options):
    """DRAWS samples of each row of `logits`: (DRAWS, rows), from independent keys."""
    keys = jax.random.split(jax.random.key(0), DRAWS)
    return np.asarray(jax.jit(jax.vmap(lambda k: sample_logits(k, logits, **options)))(keys))


def frequencies(ids):
    return np.stack([np.bincount(ids[:, r], minlength=VOCAB) for r in range(ids.shape[1])]) / DRAWS


def test_temperature_zero_is_argmax_and_its_limit():
    greedy = sample_logits(jax.random.key(0), LOGITS, temperature=0)
    np.testing.assert_array_equal(greedy, jnp.argmax(LOGITS, axis=-1))
    assert greedy.dtype == jnp.int32
    cold = draws(LOGITS, temperature=1e-3)             # T → 0: every draw is the argmax
    np.testing.assert_array_equal(cold, np.broadcast_to(greedy, cold.shape))


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.7, 3), (2.0, 1), (1.0, 100)])
def test_draws_follow_the_softmax_of_the_top_k(temperature, top_k):
    ids = draws(LOGITS, temperature=temperature, top_k=top_k)
    k = VOCAB if top_k is None else min(top_k, VOCAB)
    top = np.argsort(-np.asarray(LOGITS), axis=-1)[:, :k]
    for r in range(LOGITS.shape[0]):
        assert set(ids[:, r].tolist()) == set(top[r].tolist())    # never outside the top k
    in_top = np.stack([np.isin(np.arange(VOCAB), row) for row in top])
    kept = np.where(in_top, np.asarray(LOGITS, np.float64) / temperature, -np.inf)
    p = np.exp(kept - kept.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    sigma = np.sqrt(p * (1 - p) / DRAWS)
    np.testing.assert_array_less(np.abs(frequencies(ids) - p), 5 * sigma + 1e-12)


def test_top_k_keeps_ties_and_is_deterministic_given_key():
    tied = jnp.array([[1.0, 3.0, 2.0, 2.0, 0.0, -1.0, 2.0]])
    ids = draws(tied, top_k=2)                          # 3 and the three 2s: four ids
    assert set(ids[:, 0].tolist()) == {1, 2, 3, 6}
    key = jax.random.key(5)
    np.testing.assert_array_equal(sample_logits(key, LOGITS, top_k=3),
                                  sample_logits(key, LOGITS, top_k=3))
    np.testing.assert_array_equal(sample_logits(key, LOGITS, top_k=VOCAB),
                                  sample_logits(key, LOGITS))   # k ≥ vocab: nothing cut


def successor_table(scale=50.0):
    """A per-position bigram model: id i → logits peaked at (i + 1) mod VOCAB."""
    return {"table": scale * jnp.roll(jnp.eye(VOCAB), 1, axis=1)}


class WindowSum:
    """A causal model whose greedy next id is (Σ of the window's ids up to t) mod VOCAB, so a
    generation checks which ids were in the window at every step. Only `apply` is needed."""

    def apply(self, params, state, ids, *, key=None, train=False):
        total = jnp.cumsum(ids, axis=1) % VOCAB
        return params["scale"] * jax.nn.one_hot(total, VOCAB), state


def window_sum_reference(prompt, steps, context):
    ids = list(prompt)
    for _ in range(steps):
        ids.append(sum(ids[-context:]) % VOCAB)
    return ids


def test_greedy_generation_slides_the_window():
    model, params = WindowSum(), {"scale": jnp.float32(30.0)}
    for prompt, steps, context in (([3], 6, 4), ([1, 2, 4], 12, 4), ([5, 6], 5, 16)):
        out = sample(model, params, {}, jnp.array(prompt), jax.random.key(0), steps=steps,
                     context=context, temperature=0)
        assert out.shape == (len(prompt) + steps,) and out.dtype == jnp.int32
        np.testing.assert_array_equal(out, window_sum_reference(prompt, steps, context))


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
def test_generation_batched_jitted_and_deterministic_given_key():
    model = nn.Embedding(VOCAB, VOCAB)
    prompt = jnp.array([[2, 3], [6, 0]])
    out = sample(model, successor_table(), {}, prompt, jax.random.key(0), steps=9, context=3,
                 temperature=0)
    np.testing.assert_array_equal(out, (prompt[:, :1] + jnp.arange(11)[None]) % VOCAB)
    flat = {"table": jnp.zeros((VOCAB, VOCAB))}          # uniform next-id distribution
    run = jax.jit(lambda key: sample(model, flat, {}, prompt, key, steps=40, context=8))
    first = run(jax.random.key(1))
    np.testing.assert_array_equal(first, run(jax.random.key(1)))
    np.testing.assert_array_equal(first, sample(model, flat, {}, prompt, jax.random.key(1),
                                                steps=40, context=8))
    assert not np.array_equal(first, run(jax.random.key(2)))
    np.testing.assert_array_equal(first[:, :2], prompt)
    assert len(set(np.asarray(first[:, 2:]).ravel().tolist())) == VOCAB
    top1 = sample(model, successor_table(1.0), {}, prompt, jax.random.key(3), steps=40,
                  context=8, top_k=1)
    np.testing.assert_array_equal(top1, (prompt[:, :1] + jnp.arange(42)[None]) % VOCAB)


def test_a_small_causal_attention_model_generates_what_its_full_pass_predicts():
    """Greedy ids from `sample` (windows padded with id 0 after the known ids) equal the argmax
    of the model's logits on the finished sequence, position by position (causality)."""
    model = nn.serial(nn.Embedding(VOCAB, 8), nn.PositionalEmbedding(12),
                      nn.MultiHeadAttention(2, causal=True), nn.Dense(VOCAB))
    shapes, state = jax.eval_shape(lambda k: model.init(k, (12,)), jax.random.key(0))
    rng = np.random.default_rng(0)             # numpy draws: eager threefry compiles slowly
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), shapes)
    out = sample(model, params, state, jnp.array([[1, 4, 2]]), jax.random.key(0), steps=9,
                 context=12, temperature=0)
    logits, _ = model.apply(params, state, out)
    np.testing.assert_array_equal(out[:, 3:], jnp.argmax(logits[:, 2:-1], axis=-1))


def test_errors():
    model, params = nn.Embedding(VOCAB, VOCAB), successor_table()
    prompt, key = jnp.array([1]), jax.random.key(0)
    for options, match in ((dict(temperature=-1.0), "temperature ≥ 0"),
                           (dict(top_k=0), "top_k as a positive int"),
                           (dict(top_k=2.5), "top_k as a positive int")):
        with pytest.raises(ValueError, match=match):
            sample_logits(key, LOGITS, **options)
        with pytest.raises(ValueError, match=match):
            sample(model, params, {}, prompt, key, steps=2, context=4, **options)
    with pytest.raises(ValueError, match="steps as a positive int"):
        sample(model, params, {}, prompt, key, steps=0, context=4)
    with pytest.raises(ValueError, match="context as a positive int"):
        sample(model, params, {}, prompt, key, steps=2, context=None)
    for bad in (jnp.zeros((0,), jnp.int32), jnp.array([1.0]), jnp.zeros((1, 1, 1), jnp.int32)):
        with pytest.raises(ValueError, match="non-empty prompt of integer ids"):
            sample(model, params, {}, bad, key, steps=2, context=4)
    flat = nn.serial(nn.Embedding(VOCAB, 3), nn.Flatten())
    flat_params = ({"table": jnp.zeros((VOCAB, 3))}, {})
    flat_state = ({}, {})
    with pytest.raises(ValueError, match=r"logits \(batch, context, vocab\)"):
        sample(flat, flat_params, flat_state, prompt, key, steps=2, context=4)
