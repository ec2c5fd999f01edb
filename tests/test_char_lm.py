"""examples/char_lm.py in seconds: both models learn a tiny periodic text (the loss falls far
below a uniform guess), the sequence loss's hand-written gradient is jax.grad's, nanoGPT's
schedule, clipping and weight-decay mask, and a missing corpus names where it was looked for."""
import importlib.util
import math
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "char_lm.py"
spec = importlib.util.spec_from_file_location("char_lm", EXAMPLE)
char_lm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(char_lm)

TINY = ["--context", "8", "--batch", "8", "--eval-every", "40", "--eval-batches", "2",
        "--warmup", "5", "--lr", "1e-2", "--min-lr", "1e-3", "--sample", "20"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "input.txt"
    path.write_text("the cat sat on the mat. " * 80)   # 11 characters, period 24
    return path


@pytest.mark.parametrize("model,size", [
    pytest.param("gpt", ["--layers", "1", "--heads", "2", "--width", "16"],
                 marks=pytest.mark.slow),   # ~25 s of compilation: CI runs it (pytest -m slow)
    pytest.param("lstm", ["--layers", "1", "--width", "16"], marks=pytest.mark.slow)])
def test_each_model_learns_a_periodic_text(corpus, capsys, model, size):
    val = char_lm.main(["--model", model, "--data", str(corpus), "--iters", "40", *TINY, *size])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith(f"{model}: validation loss {val:.4f} nats/char")
    assert "after 40 iterations" in lines[-1] and "iter    40" in "\n".join(lines)
    assert val < 1.2                                   # a uniform guess: ln 11 = 2.40
    start = next(i for i, line in enumerate(lines) if line.startswith("--- sample"))
    assert len(lines[start + 1]) == 21                 # the prompt and 20 sampled characters


def test_sequence_loss_gradient_is_autodiffs():
    logits = jax.random.normal(jax.random.key(0), (3, 5, 7))
    ids = jax.random.randint(jax.random.key(1), (3, 5), 0, 7)
    loss = char_lm.SequenceCrossEntropy()
    expected = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), ids[..., None], -1))
    np.testing.assert_allclose(loss(logits, ids), expected, rtol=1e-6)
    chex.assert_trees_all_close(loss.grad(logits, ids),
                                jax.grad(lambda z: loss(z, ids))(logits), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="expected logits"):
        loss(logits, ids[:, :4])


def test_schedule_is_nanogpts_get_lr():
    lr, min_lr, warmup, iters = 1e-3, 1e-4, 100, 2000

    def get_lr(it):   # nanoGPT's train.py
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        ratio = (it - warmup) / (iters - warmup)
        return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - min_lr)

    t = np.array([0, 1, 50, 99, 100, 101, 700, 1000, 1999, 2000])
    np.testing.assert_allclose(char_lm.lr_schedule(lr, min_lr, warmup, iters)(jnp.asarray(t)),
                               [get_lr(i) for i in t], rtol=1e-5)


def test_optimizer_clips_and_decays_the_matrices_only():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    opt = char_lm.optimizer(1e-3, 1e-4, 0, 10, weight_decay=0.1, clip=1.0)
    zero = jax.tree.map(jnp.zeros_like, params)     # zero gradient: only the decay, −α₀·λ·p
    updates, _ = opt.update(zero, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], -1e-3 * 0.1, rtol=1e-6)
    np.testing.assert_array_equal(updates["b"], 0.0)
    huge = {"w": jnp.full((2, 2), 1e6), "b": jnp.full(2, 1e6)}
    _, state = opt.update(huge, opt.init(params), params)
    first_moment = state[1].inner_state[0].mu          # Adam's m after one step: (1 − β₁)·g
    norm = jnp.sqrt(sum(jnp.sum(m * m) for m in jax.tree.leaves(first_moment)))
    np.testing.assert_allclose(norm, 0.1, rtol=1e-5)   # g clipped to norm 1 first


def test_missing_corpus_says_where_it_looked(tmp_path):
    nowhere = tmp_path / "nowhere"
    with pytest.raises(SystemExit, match="not found") as error:
        char_lm.main(["--data", str(nowhere)])
    assert str(nowhere / "input.txt") in str(error.value)
