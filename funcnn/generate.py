"""Sampling from a trained language model, with temperature and top-k, in one compiled loop.

    ids = fn.generate.sample(model, params, state, text.encode("ROMEO:"), key, steps=200,
                             context=64, temperature=0.8, top_k=10)
    print(text.decode(ids))

The model maps ids (batch, context) to next-id logits (batch, context, vocab) and must be causal
(the logits at position t depend on the ids at positions ≤ t only: a char-LSTM, a GPT with
causal attention), because a window that is not yet full is padded with id 0 after the known ids.
"""
from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["sample", "sample_logits"]


def _check_options(where: str, temperature, top_k) -> None:
    if not (isinstance(temperature, numbers.Real) and not isinstance(temperature, bool)
            and temperature >= 0):
        raise ValueError(f"{where}: expected a temperature ≥ 0 (0: greedy), received "
                         f"{temperature!r}")
    if top_k is not None and not (isinstance(top_k, numbers.Integral)
                                  and not isinstance(top_k, bool) and top_k > 0):
        raise ValueError(f"{where}: expected top_k as a positive int or None, received {top_k!r}")


def sample_logits(key, logits, *, temperature: float = 1.0, top_k: int | None = None):
    """One id per row of `logits` (..., vocab), int32: id ~ softmax(logits/temperature) over the
    `top_k` largest logits (all when None; ties with the k-th largest are kept; top_k ≥ vocab
    keeps every id). temperature = 0 is the greedy argmax (the limit T → 0)."""
    _check_options("sample_logits", temperature, top_k)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, jnp.asarray(-jnp.inf, logits.dtype), logits)
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


def sample(model, params, state, prompt, key, *, steps: int, context: int,
           temperature: float = 1.0, top_k: int | None = None):
    """`prompt` followed by `steps` ids drawn one at a time from the model.

    Step i reads the model's logits at the last known position of the window of the last
    `context` ids (fewer at the start: the window then begins at 0 and its unknown tail is id 0)
    and draws the next id with `sample_logits(fold_in(key, i), …)`; evaluation mode
    (train=False), the model's new state discarded. prompt: int ids (batch, p) or (p,), p ≥ 1;
    returns int32 (batch, p + steps) or (p + steps,). One `lax.fori_loop` under `jax.jit`
    (model, steps, context, temperature and top_k are static: a new value compiles anew).
    """
    _check_options("sample", temperature, top_k)
    for name, value in (("steps", steps), ("context", context)):
        if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"sample: expected {name} as a positive int, received {value!r}")
    prompt = jnp.asarray(prompt)
    if prompt.ndim not in (1, 2) or prompt.shape[-1] == 0 or not jnp.issubdtype(prompt.dtype,
                                                                                 jnp.integer):
        raise ValueError(f"sample: expected a non-empty prompt of integer ids, (p,) or (batch, "
                         f"p), received shape {prompt.shape} and dtype {prompt.dtype}")
    top_k = None if top_k is None else int(top_k)
    ids = _sample(model, params, state, jnp.atleast_2d(prompt).astype(jnp.int32), key,
                  int(steps), int(context), float(temperature), top_k)
    return ids if prompt.ndim == 2 else ids[0]


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7, 8))
def _sample(model, params, state, prompt, key, steps, context, temperature, top_k):
    batch, known = prompt.shape
    total = known + steps
    tokens = jnp.zeros((batch, max(total, context)), jnp.int32).at[:, :known].set(prompt)

    def step(i, tokens):
        filled = known + i                               # ids known so far; the next goes here
        start = jnp.maximum(filled - context, 0)
        window = lax.dynamic_slice_in_dim(tokens, start, context, axis=1)
        logits, _ = model.apply(params, state, window, train=False)
        if logits.ndim != 3 or logits.shape[:2] != window.shape:
            raise ValueError(f"sample: expected the model to map ids (batch, context) = "
                             f"{window.shape} to logits (batch, context, vocab), received "
                             f"shape {logits.shape}")
        last = lax.dynamic_index_in_dim(logits, filled - start - 1, axis=1, keepdims=False)
        chosen = sample_logits(jax.random.fold_in(key, i), last, temperature=temperature,
                               top_k=top_k)
        return lax.dynamic_update_index_in_dim(tokens, chosen, filled, axis=1)

    return lax.fori_loop(0, steps, step, tokens)[:, :total]
