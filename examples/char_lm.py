"""A character-level language model on Tiny Shakespeare: a small GPT or a char-LSTM.

    python examples/char_lm.py --model gpt      # nanoGPT's "baby" CPU config (val 1.88)
    python examples/char_lm.py --model lstm     # embedding → LSTM(512) → dense

The corpus is the first 90 % of Tiny Shakespeare's characters for training, the last 10 % for
validation (nanoGPT's shakespeare_char split); a batch is `batch` random windows of `context`
characters, each predicting the next character at every position, so the loss is the mean of
−ln p(next char) over batch × context positions (nats/char; a uniform guess is ln 65 ≈ 4.17).

gpt: token embedding + learned positions → 4 pre-norm causal `TransformerBlock`s (4 heads, width
128) → LayerNorm → dense over the vocabulary; AdamW (β₂ 0.99, weight decay 0.1 on the matrices
and tables, as nanoGPT: every parameter of rank ≥ 2), gradients clipped to global norm 1, the
learning rate warmed up linearly over 100 iterations to 1e-3, then cosine-decayed to 1e-4 at the
last iteration. That is nanoGPT's `train_shakespeare_char.py` with its README's CPU overrides
(context 64, batch 12, 4 layers, 4 heads, width 128, 2,000 iterations, no dropout), for which it
reports a validation loss of 1.88 (nanoGPT ties the output layer to the token table and has no
biases; here the head is its own and the layers keep their biases and default inits).
lstm: embedding 64 → LSTM(512) → dense, batch 32, context 64, 2,000 iterations, the same
optimizer with lr 2e-3; each window is read from a zero state (windows are independent: no
truncated BPTT).

Gradients come from the layers' hand-written backward rules (`--autodiff` switches to jax.grad);
the iterations between two evaluations run as one compiled `lax.scan`. The validation loss is
estimated on a fixed set of validation windows (`--eval-batches` batches, the same every time).
The corpus is read from --data when given, else $FUNCNN_DATA_DIR (the folder holding
input.txt, or its parent), else ../shared/data/tinyshakespeare/input.txt next to the
repository. The last lines are a 300-character sample and the figures.
"""
import argparse
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

import funcnn as fn
from funcnn import nn

ROOT = Path(__file__).resolve().parent.parent

# Per-model defaults; every one can be overridden on the command line.
DEFAULTS = {
    "gpt": dict(layers=4, heads=4, width=128, context=64, batch=12, iters=2000, lr=1e-3,
                min_lr=1e-4, warmup=100, weight_decay=0.1, eval_every=250),
    "lstm": dict(layers=1, heads=0, width=512, context=64, batch=32, iters=2000, lr=2e-3,
                 min_lr=1e-4, warmup=100, weight_decay=0.1, eval_every=500),
}


def gpt(vocab: int, context: int, layers: int = 4, heads: int = 4, width: int = 128):
    """ids (batch, time ≤ context) → logits (batch, time, vocab), causal."""
    return nn.serial(nn.Embedding(vocab, width, table_init=fn.init.normal(0.02)),
                     nn.PositionalEmbedding(context),
                     *[nn.TransformerBlock(heads, causal=True) for _ in range(layers)],
                     nn.LayerNorm(), nn.Dense(vocab))


def char_lstm(vocab: int, layers: int = 2, width: int = 512, embedding: int = 64):
    """ids (batch, time) → logits (batch, time, vocab), each window read from a zero state."""
    return nn.serial(nn.Embedding(vocab, embedding),
                     *[nn.LSTM(width) for _ in range(layers)], nn.Dense(vocab))


class SequenceCrossEntropy:
    """Mean over every (example, position) of −ln softmax(z[b, t])[y[b, t]]: softmax
    cross-entropy on the (batch·time, vocab) rows. logits (batch, time, vocab), ids (batch, time);
    `.grad` is the hand-written (softmax − onehot)/(batch·time), reshaped back."""

    def __call__(self, logits, ids):
        return fn.losses.softmax_cross_entropy(*self._rows(logits, ids))

    def grad(self, logits, ids):
        return fn.losses.softmax_cross_entropy.grad(*self._rows(logits, ids)).reshape(logits.shape)

    @staticmethod
    def _rows(logits, ids):
        if logits.ndim != 3 or ids.shape != logits.shape[:2]:
            raise ValueError(f"SequenceCrossEntropy: expected logits (batch, time, vocab) and ids "
                             f"(batch, time), received shapes {logits.shape} and {ids.shape}")
        return logits.reshape(-1, logits.shape[-1]), ids.reshape(-1)


def matrices(params):
    """nanoGPT's weight-decay mask: decay every parameter of rank ≥ 2 (weights, embedding
    tables), not the biases or the LayerNorm scales and offsets."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def lr_schedule(lr, min_lr, warmup, iters):
    """nanoGPT's get_lr: α_t = lr·(t + 1)/(warmup + 1) for t < warmup, then a cosine from lr
    at t = warmup to min_lr at t = iters (t = 0 for the first update)."""
    return fn.optim.schedules.warmup(
        fn.optim.schedules.cosine(lr, max(iters - warmup, 1), end_value=min_lr), warmup,
        init_value=lr / (warmup + 1))


def optimizer(lr, min_lr, warmup, iters, weight_decay, clip=1.0):
    """Clip the gradient to global norm `clip`, then AdamW on nanoGPT's schedule."""
    return fn.optim.chain(fn.optim.clip_by_global_norm(clip),
                          fn.optim.adamw(lr_schedule(lr, min_lr, warmup, iters), b1=0.9, b2=0.99,
                                         weight_decay=weight_decay, mask=matrices))


def find_corpus(data):
    """The path of input.txt: --data (a file or its folder) when given, else $FUNCNN_DATA_DIR
    (the folder or its parent), else the shared data folder beside the repository. SystemExit
    naming each place tried."""
    tried = []
    env = os.environ.get("FUNCNN_DATA_DIR")
    if data:
        places = [Path(data), Path(data) / "input.txt"]
    else:
        places = ([Path(env) / "input.txt", Path(env) / "tinyshakespeare" / "input.txt"]
                  if env else []) + [ROOT.parent / "shared" / "data" / "tinyshakespeare" /
                                     "input.txt"]
    for place in places:
        if place.is_file():
            return place
        tried.append(str(place))
    raise SystemExit("char_lm: Tiny Shakespeare (input.txt) not found; looked at:\n  "
                     + "\n  ".join(tried) + "\nPass --data PATH/input.txt or set FUNCNN_DATA_DIR "
                     "to its folder (the corpus: karpathy/char-rnn data/tinyshakespeare/input.txt)")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(DEFAULTS), default="gpt")
    parser.add_argument("--data", default=None, help="input.txt, or the folder holding it")
    for name, kind in (("layers", int), ("heads", int), ("width", int), ("context", int),
                       ("batch", int), ("iters", int), ("lr", float), ("min-lr", float),
                       ("warmup", int), ("weight-decay", float), ("eval-every", int)):
        parser.add_argument(f"--{name}", type=kind, default=None, help="default: per model")
    parser.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip")
    parser.add_argument("--eval-batches", type=int, default=100,
                        help="validation batches (of --batch windows) in every estimate")
    parser.add_argument("--sample", type=int, default=300, help="characters sampled at the end")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--autodiff", action="store_true",
                        help="jax.grad instead of the hand-written backward rules")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args(argv)
    for name, value in DEFAULTS[args.model].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv=None):
    args = parse(argv)
    path = find_corpus(args.data)
    text = fn.data.char_text(path)
    vocab = len(text.vocab)
    print(f"{path}: {len(text.train):,} training and {len(text.val):,} validation characters, "
          f"vocabulary {vocab}")
    if args.model == "gpt":
        model = gpt(vocab, args.context, args.layers, args.heads, args.width)
        shape = f"{args.layers} layers, {args.heads} heads, width {args.width}"
    else:
        model = char_lstm(vocab, args.layers, args.width)
        shape = f"{args.layers} × LSTM({args.width})"
    key = jax.random.key(args.seed)
    init_key, train_key, val_key, sample_key = jax.random.split(key, 4)
    params, state = model.init(init_key, (args.context,))
    count = sum(p.size for p in jax.tree.leaves(params))
    print(f"{args.model}: {shape}, {count:,} parameters; context {args.context}, batch "
          f"{args.batch}, {args.iters} iterations, AdamW lr {args.lr:g} (warm-up {args.warmup}, "
          f"cosine to {args.min_lr:g}), weight decay {args.weight_decay:g}, clip {args.clip:g}, "
          f"{'jax.grad' if args.autodiff else 'hand-written backward'}")

    loss = SequenceCrossEntropy()
    opt = optimizer(args.lr, args.min_lr, args.warmup, args.iters, args.weight_decay, args.clip)
    step = fn.train.make_step(model, loss, opt, hand_written=not args.autodiff)
    opt_state = opt.init(params)
    train, val = jnp.asarray(text.train), jnp.asarray(text.val)

    @jax.jit
    def run(params, state, opt_state, keys, train):
        """One training step per key (a fresh random batch of `train` each), in one `lax.scan`."""

        def body(carry, key):
            params, state, opt_state = carry
            batch_key, step_key = jax.random.split(key)
            x, y = fn.data.text_windows(batch_key, train, args.context, args.batch)
            params, state, opt_state, metrics = step(params, state, opt_state, x, y, step_key)
            return (params, state, opt_state), metrics["loss"]

        return lax.scan(body, (params, state, opt_state), keys)

    windows = jax.vmap(lambda k: fn.data.text_windows(k, val, args.context, args.batch))(
        jax.random.split(val_key, args.eval_batches))

    @jax.jit
    def evaluate(params, state):
        """Mean loss over the fixed validation windows, one batch at a time."""
        def one(xy):
            logits, _ = model.apply(params, state, xy[0], train=False)
            return loss(logits, xy[1])
        return jnp.mean(lax.map(one, windows))

    start, done = time.perf_counter(), 0
    keys = jax.random.split(train_key, args.iters)
    while done < args.iters:
        n = min(args.eval_every, args.iters - done)
        (params, state, opt_state), losses = run(params, state, opt_state, keys[done:done + n],
                                                   train)
        done += n
        val_loss = float(evaluate(params, state))
        print(f"iter {done:5d}: train loss {float(jnp.mean(losses)):.4f} (mean of the last {n}), "
              f"val loss {val_loss:.4f}, {time.perf_counter() - start:.0f} s", flush=True)
    elapsed = time.perf_counter() - start

    prompt = text.val[:1]                  # the validation text's first character
    ids = fn.generate.sample(model, params, state, prompt, sample_key, steps=args.sample,
                             context=args.context, temperature=args.temperature, top_k=args.top_k)
    print(f"--- sample (temperature {args.temperature:g}, top-k {args.top_k}) ---")
    print(text.decode(ids))
    print("---")
    print(f"{args.model}: validation loss {val_loss:.4f} nats/char ({args.eval_batches} × "
          f"{args.batch} windows of {args.context}) after {args.iters} iterations, "
          f"{elapsed:.0f} s (training and evaluations, compilation included)")
    return val_loss


if __name__ == "__main__":
    main()
