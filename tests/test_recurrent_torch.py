"""SimpleRNN, LSTM, GRU and Bidirectional against torch's nn.RNN, nn.LSTM, nn.GRU (batch_first,
float64): the same weights in, the same outputs, final states and gradients (w.r.t. every weight
and the input) out, from a given initial state, and under masks against torch's packed sequences.

The weight layout mapping (DESIGN.md, "Sequence and modern layers"), for torch's layer 0; a
bidirectional torch module's `*_l0_reverse` entries are our Bidirectional's "backward" copy:

    ours                       torch
    wi     (in, blocks·h)      weight_ih_l0ᵀ  (blocks·h, in)
    wh     (h, blocks·h)       weight_hh_l0ᵀ  (blocks·h, h)
    b      (blocks·h,)         bias_ih_l0 + bias_hh_l0    (SimpleRNN, LSTM: one bias)
    bi, bh (3h,)               bias_ih_l0, bias_hh_l0     (GRU: two, as r⊙(h·wh_n + bh_n) needs)
    gate blocks                LSTM (i, f, g, o), GRU (r, z, n): torch's order, unchanged
    state {"h": (B, h)}        h_0 / h_n (layers·directions, B, h), direction d at index d
    state {"c": (B, h)}        c_0 / c_n (LSTM)

Our b is split at random into torch's two biases, so their sum is what is tested; the gradient
of each of torch's two biases must equal ours. Torch's final state h_n of a bidirectional module is
[forward's final state, backward's final state] = our Bidirectional(return_sequences=False).
Our backward carries no gradient into the initial state (truncated BPTT), so the losses compared
are ⟨δy, output⟩ only.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import nn

torch = pytest.importorskip(
    "torch", reason="torch is the independent reference for the recurrent layers (test-only; "
                    "`pip install torch==2.13.0`, .ci/run installs it)")
pytestmark = pytest.mark.slow   # PyTorch parity: CI runs it (`pytest -m slow`)

TORCH = {"SimpleRNN": "RNN", "LSTM": "LSTM", "GRU": "GRU"}
BATCH, TIME, FEATURES, HIDDEN = 3, 7, 4, 5
LENGTHS = np.array([7, 4, 2])


def torch_weights(kind, p, rng):
    """Our params `p` (one direction) as torch's {suffix-less name: tensor}, per the table."""
    t = {"weight_ih": p["wi"].T, "weight_hh": p["wh"].T}
    if kind == "GRU":
        t |= {"bias_ih": p["bi"], "bias_hh": p["bh"]}
    else:
        split = rng.standard_normal(p["b"].shape)
        t |= {"bias_ih": p["b"] - split, "bias_hh": split}
    return {name: torch.tensor(np.array(a), dtype=torch.float64, requires_grad=True)
            for name, a in t.items()}


def our_grads(kind, named):
    """torch's gradients, in our layout: the inverse of `torch_weights`."""
    g = {"wi": named["weight_ih"].grad.numpy().T, "wh": named["weight_hh"].grad.numpy().T}
    if kind == "GRU":
        return g | {"bi": named["bias_ih"].grad.numpy(), "bh": named["bias_hh"].grad.numpy()}
    np.testing.assert_allclose(named["bias_ih"].grad.numpy(), named["bias_hh"].grad.numpy(),
                               rtol=1e-12)
    return g | {"b": named["bias_ih"].grad.numpy()}


def run_torch(kind, directions, x, state, mask, weights, dy, last):
    """torch's output (padded), final state(s) and the gradients of ⟨δy, output⟩ (of ⟨δy, h_n⟩,
    directions concatenated, when `last`) w.r.t. x and every weight."""
    module = getattr(torch.nn, TORCH[kind])(FEATURES, HIDDEN, batch_first=True,
                                            bidirectional=directions == 2).double()
    suffixes = ["_l0", "_l0_reverse"][:directions]
    for suffix, named in zip(suffixes, weights):
        for name, tensor in named.items():
            setattr(module, name + suffix, torch.nn.Parameter(tensor))
    xt = torch.tensor(np.asarray(x), requires_grad=True)
    inputs = xt
    if mask is not None:
        inputs = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(LENGTHS),
                                                         batch_first=True, enforce_sorted=False)
    init = tuple(torch.tensor(np.stack([np.asarray(s[n]) for s in state]))
                 for n in (("h", "c") if kind == "LSTM" else ("h",)))
    out, final = module(inputs, init if kind == "LSTM" else init[0])
    if mask is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=TIME)
    final = final if kind == "LSTM" else (final,)
    h_n = torch.cat(list(final[0]), dim=-1)   # (B, directions·h): [forward, backward]
    target = h_n if last else out
    torch.sum(target * torch.tensor(np.asarray(dy))).backward()
    params = [our_grads(kind, {n: getattr(module, n + s) for n in named})
              for s, named in zip(suffixes, weights)]
    finals = [{n: f[d].detach().numpy() for n, f in zip(("h", "c"), final)}
              for d in range(directions)]
    return target.detach().numpy(), finals, params, xt.grad.numpy()


CASES = [   # kind, directions, masked, return_sequences=False
    ("SimpleRNN", 1, False, False),
    ("LSTM", 1, False, False),
    ("GRU", 1, False, False),
    ("LSTM", 1, False, True),
    ("GRU", 1, True, True),
    ("LSTM", 2, False, False),
    ("GRU", 2, True, False),
]


@pytest.mark.parametrize("kind,directions,masked,last", CASES)
def test_same_outputs_final_states_and_gradients_as_torch(kind, directions, masked, last, x64):
    inner = getattr(nn, kind)(HIDDEN, return_sequences=not last)
    layer = inner if directions == 1 else nn.Bidirectional(inner)
    params, _ = layer.init(jax.random.key(0), (TIME, FEATURES))
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((BATCH, TIME, FEATURES)))
    names = ("h", "c") if kind == "LSTM" else ("h",)
    states = [{n: jnp.asarray(rng.standard_normal((BATCH, HIDDEN))) for n in names}
              for _ in range(directions)]
    mask = jnp.asarray(LENGTHS[:, None] > np.arange(TIME)) if masked else None
    dy = jnp.asarray(rng.standard_normal((BATCH, directions * HIDDEN) if last
                                         else (BATCH, TIME, directions * HIDDEN)))
    split = [params] if directions == 1 else [params["forward"], params["backward"]]
    weights = [torch_weights(kind, p, rng) for p in split]
    y_t, finals_t, grads_t, dx_t = run_torch(kind, directions, x, states, mask, weights, dy, last)

    state = states[0] if directions == 1 else {"forward": states[0], "backward": states[1]}
    y, final, res = layer.forward(params, state, x if mask is None else (x, mask))
    grads, dx = layer.backward(params, res, dy if mask is None or last else (dy, None))
    if mask is not None:
        y, dx = (y if last else y[0]), dx[0]
    final = [final] if directions == 1 else [final["forward"], final["backward"]]
    grads = [grads] if directions == 1 else [grads["forward"], grads["backward"]]

    np.testing.assert_allclose(y, y_t, rtol=1e-10, atol=1e-12)
    for ours, theirs in zip(final, finals_t):
        for n in names:
            np.testing.assert_allclose(ours[n], theirs[n], rtol=1e-10, atol=1e-12)
    for ours, theirs in zip(grads, grads_t):
        assert set(ours) == set(theirs)
        for n in ours:
            np.testing.assert_allclose(ours[n], theirs[n], rtol=1e-9, atol=1e-12, err_msg=n)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-9, atol=1e-12)
