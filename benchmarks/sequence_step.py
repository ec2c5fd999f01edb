"""One training step of examples/char_lm.py's models against PyTorch eager, in one process,
alternating (issue 19's benchmark).

    python benchmarks/sequence_step.py [--workload gpt|lstm|both] [--seconds 3] [--repeats 3]

A step is forward, backward, global-norm clipping to 1 and an AdamW update (β₂ 0.99, weight decay
0.1 on the matrices) on a batch of random character windows (vocabulary 65):
  gpt:  nanoGPT's baby config: batch 12, context 64, embedding + learned positions, 4 pre-norm
        causal blocks (4 heads, width 128, GELU MLP 512), LayerNorm, dense over the vocabulary;
        torch: the same built from `nn.TransformerEncoderLayer(norm_first=True,
        activation="gelu", dropout=0)` with a causal mask.
  lstm: batch 32, context 64, embedding 64 → LSTM(512) → dense; torch: `nn.LSTM`.
funcnn's step is `fn.train.make_step`, jitted with donated buffers, once on the hand-written
backward rules and once on jax.grad; torch's is the idiomatic eager loop (zero_grad, backward,
clip_grad_norm_, AdamW.step), on all cores and on one thread (on a busy machine its two threads
wait for each other: 7× slower here at a load average of 3–10); the faster torch is the
reference of the ratio. Torch flushes denormal floats to zero, as XLA:CPU does: without that
its GPT step here ran 20–30× slower (about 5 s instead of 0.2 s) on subnormal arithmetic.
samples/s counts windows.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import funcnn as fn  # noqa: E402
from char_lm import SequenceCrossEntropy, char_lstm, gpt, optimizer  # noqa: E402
from harness import looped, measure, report  # noqa: E402

VOCAB, CONTEXT = 65, 64
WORKLOADS = {"gpt": dict(batch=12, layers=4, heads=4, width=128),
             "lstm": dict(batch=32, layers=1, width=512, embedding=64)}


def batches(batch: int, count: int = 8):
    """`count` (x, y) batches of random ids, y = x shifted by one, as numpy int arrays."""
    ids = np.random.default_rng(0).integers(0, VOCAB, (count, batch, CONTEXT + 1))
    return [(w[:, :-1], w[:, 1:]) for w in ids]


def funcnn_contender(name: str, spec: dict, *, hand_written: bool):
    def factory():
        if name == "gpt":
            model = gpt(VOCAB, CONTEXT, spec["layers"], spec["heads"], spec["width"])
        else:
            model = char_lstm(VOCAB, spec["layers"], spec["width"], spec["embedding"])
        opt = optimizer(1e-3, 1e-4, 100, 2000, weight_decay=0.1, clip=1.0)
        params, state = model.init(jax.random.key(0), (CONTEXT,))
        step = jax.jit(fn.train.make_step(model, SequenceCrossEntropy(), opt,
                                          hand_written=hand_written), donate_argnums=(0, 1, 2))
        key = jax.random.key(1)
        device = [(jnp.asarray(x, jnp.int32), jnp.asarray(y, jnp.int32))
                  for x, y in batches(spec["batch"])]
        return looped(lambda p, s, o, x, y: step(p, s, o, x, y, key)[:3],
                      (params, state, opt.init(params)), device)
    return factory


def torch_model(name: str, spec: dict):
    """The same model in PyTorch (its default initialisation)."""
    import torch
    from torch import nn

    class GPT(nn.Module):
        def __init__(self, layers, heads, width):
            super().__init__()
            self.tokens, self.positions = nn.Embedding(VOCAB, width), nn.Embedding(CONTEXT, width)
            self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(
                width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                norm_first=True) for _ in range(layers))
            self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, VOCAB)
            self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(CONTEXT))

        def forward(self, ids):
            h = self.tokens(ids) + self.positions(torch.arange(ids.shape[1]))
            for block in self.blocks:
                h = block(h, src_mask=self.mask, is_causal=True)
            return self.head(self.norm(h))

    class LSTM(nn.Module):
        def __init__(self, layers, width, embedding):
            super().__init__()
            self.embedding = nn.Embedding(VOCAB, embedding)
            self.lstm = nn.LSTM(embedding, width, layers, batch_first=True)
            self.head = nn.Linear(width, VOCAB)

        def forward(self, ids):
            return self.head(self.lstm(self.embedding(ids))[0])

    if name == "gpt":
        return GPT(spec["layers"], spec["heads"], spec["width"])
    return LSTM(spec["layers"], spec["width"], spec["embedding"])


def torch_contender(name: str, spec: dict, threads: int):
    def factory():
        import torch
        torch.set_flush_denormal(True)   # as XLA:CPU computes (FTZ/DAZ); see the docstring
        torch.manual_seed(0)
        model = torch_model(name, spec)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        other = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                 {"params": other, "weight_decay": 0.0}], lr=1e-3,
                                betas=(0.9, 0.99))
        loss_fn = torch.nn.CrossEntropyLoss()
        data = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches(spec["batch"])]

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x).reshape(-1, VOCAB), y.reshape(-1)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return ()

        first_step, run_steps = looped(step, (), data)

        def with_threads(run):   # the thread count is global: set it before each run
            def run_with(*args):
                torch.set_num_threads(threads)
                return run(*args)
            return run_with

        return with_threads(first_step), with_threads(run_steps)
    return factory


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["gpt", "lstm", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores, "
          f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    for name in (["gpt", "lstm"] if args.workload == "both" else [args.workload]):
        spec = WORKLOADS[name]
        results = measure({"funcnn make_step (hand-written)":
                           funcnn_contender(name, spec, hand_written=True),
                           "funcnn make_step (jax.grad)":
                           funcnn_contender(name, spec, hand_written=False),
                           "torch eager": torch_contender(name, spec, os.cpu_count() or 1),
                           "torch eager (1 thread)": torch_contender(name, spec, 1)},
                          batch=spec["batch"], seconds=args.seconds, repeats=args.repeats)
        faster = max(("torch eager", "torch eager (1 thread)"),
                     key=lambda torch: results[torch]["samples_per_s"])
        report(f"{name}: one training step, batch {spec['batch']} × context {CONTEXT}", results,
               reference=faster, extra={"workload": name, **spec})


if __name__ == "__main__":
    main()
