"""fn.interop against torch (float64, eval mode): a torch model and its converted funcnn model
give the same outputs, both ways (from_torch, and to_torch writing into a fresh torch module), for
a CNN (Conv2d → BatchNorm2d → ReLU → MaxPool → Flatten → Linear, the Flatten's channel-first order
permuted into the Linear), an MLP after a Flatten with a BatchNorm1d, and the sequence layers;
clear errors on mismatches. And fn.optim transforms inside optax.chain (test-only optax).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn import nn

torch = pytest.importorskip("torch", reason="torch is the interop target (test-only)")


def ours(model, params, state, x):
    return np.asarray(jax.jit(lambda p, s, x: model.apply(p, s, x)[0])(params, state, x))


def theirs(module, x):
    with torch.no_grad():
        return module(torch.as_tensor(x)).numpy()


def init64(model, in_shape, seed=0):
    params, state = jax.jit(model.init, static_argnums=1)(jax.random.key(seed), in_shape)
    cast = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
    return cast(params), cast(state)


def randomise(module, seed):
    """Every parameter and BatchNorm statistic drawn at random (running_var positive)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5 if "var" in name
                        else torch.randn(t.shape, generator=g, dtype=t.dtype))
    return module.eval()


def torch_cnn():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                               torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 2 * 3, 5)).double()


CNN = nn.serial(nn.Conv2D(4, 3), nn.BatchNorm(), nn.Relu(), nn.MaxPool(2), nn.Flatten(),
                nn.Dense(5))
IMAGE = (7, 9, 3)   # → conv 5×7 → pool 2×3 (×4 channels): a non-square map, c > 1


def nchw(x):
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
def test_cnn_from_torch_gives_torch_outputs_with_the_flatten_order_permuted(x64):
    module = randomise(torch_cnn(), 1)
    x = np.random.default_rng(0).normal(size=(3, *IMAGE))
    params, state = init64(CNN, IMAGE)
    params, state = fn.interop.from_torch(module, CNN, params, state, in_shape=IMAGE)
    np.testing.assert_allclose(ours(CNN, params, state, x), theirs(module, nchw(x)),
                               atol=1e-10)
    # the same from a state_dict of numpy arrays, and the statistics landed in our state
    arrays = {name: t.numpy() for name, t in module.state_dict().items()}
    again = fn.interop.from_torch(arrays, CNN, *init64(CNN, IMAGE), in_shape=IMAGE)
    jax.tree.map(np.testing.assert_array_equal, again, (params, state))
    np.testing.assert_array_equal(state[1]["var"], module[1].running_var.numpy())
    # the permutation matters: the Linear's weight copied as is gives other outputs
    weight = jnp.asarray(module[5].weight.detach().numpy().T)
    naive = params[:5] + ({"w": weight, "b": params[5]["b"]},)
    assert np.abs(ours(CNN, naive, state, x) - theirs(module, nchw(x))).max() > 1e-2
    with pytest.raises(ValueError, match=r"4/Flatten.*in_shape="):
        fn.interop.from_torch(module, CNN, params, state)


def test_cnn_to_torch_writes_a_module_that_gives_our_outputs(x64):
    params, state = init64(CNN, IMAGE, seed=3)
    key = jax.random.key(4)
    state = state[:1] + ({"mean": jax.random.normal(key, (4,), jnp.float64),
                          "var": jax.random.uniform(key, (4,), jnp.float64) + 0.5},) + state[2:]
    module = torch_cnn().eval()
    assert fn.interop.to_torch(CNN, params, state, module, in_shape=IMAGE) is module
    x = np.random.default_rng(1).normal(size=(2, *IMAGE))
    np.testing.assert_allclose(theirs(module, nchw(x)), ours(CNN, params, state, x), atol=1e-10)
    back = fn.interop.from_torch(module, CNN, *init64(CNN, IMAGE), in_shape=IMAGE)
    jax.tree.map(np.testing.assert_array_equal, back, (params, state))


def test_mlp_after_a_flatten_permutes_batchnorm1d_and_linear_both_ways(x64):
    shape = (3, 4, 2)
    model = nn.serial(nn.Flatten(), nn.BatchNorm(), nn.Dense(8), nn.Tanh(), nn.Dense(3))
    module = randomise(torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.BatchNorm1d(24), torch.nn.Linear(24, 8), torch.nn.Tanh(),
        torch.nn.Linear(8, 3)).double(), 2)
    x = np.random.default_rng(2).normal(size=(4, *shape))
    params, state = fn.interop.from_torch(module, model, *init64(model, shape), in_shape=shape)
    np.testing.assert_allclose(ours(model, params, state, x), theirs(module, nchw(x)), atol=1e-10)
    fresh = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(24),
                                torch.nn.Linear(24, 8), torch.nn.Tanh(),
                                torch.nn.Linear(8, 3)).double().eval()
    fn.interop.to_torch(model, params, state, fresh, in_shape=shape)
    for name, t in module.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], t, rtol=0, atol=0)


def test_a_missing_torch_bias_reads_as_zero_and_needs_zero_to_be_written(x64):
    model = nn.serial(nn.Dense(3))
    module = torch.nn.Linear(4, 3, bias=False).double()
    params, state = fn.interop.from_torch(module, model, *init64(model, (4,)))
    np.testing.assert_array_equal(params[0]["b"], np.zeros(3))
    x = np.random.default_rng(3).normal(size=(2, 4))
    np.testing.assert_allclose(ours(model, params, state, x), theirs(module, x), atol=1e-12)
    params = (dict(params[0], b=jnp.ones(3, jnp.float64)),)
    with pytest.raises(ValueError, match=r"0/Dense.*no 'bias'"):
        fn.interop.to_torch(model, params, state, module)


class Recurrent(torch.nn.Module):
    """Embedding → RNN/LSTM/GRU (batch_first) → LayerNorm → Linear, registered in that order."""

    def __init__(self, kind, vocab=11, features=6, hidden=5, out=4):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, features)
        self.rnn = getattr(torch.nn, kind)(features, hidden, batch_first=True)
        self.norm = torch.nn.LayerNorm(hidden)
        self.head = torch.nn.Linear(hidden, out)

    def forward(self, ids):
        return self.head(self.norm(self.rnn(self.embed(ids))[0]))


@pytest.mark.slow   # second line of the default run (CI runs it: pytest -m slow)
@pytest.mark.parametrize("kind", ["SimpleRNN", "LSTM", "GRU"])
def test_sequence_models_match_torch_both_ways(kind, x64):
    torch_kind = {"SimpleRNN": "RNN"}.get(kind, kind)
    model = nn.serial(nn.Embedding(11, 6), getattr(nn, kind)(5), nn.LayerNorm(), nn.Dense(4))
    module = randomise(Recurrent(torch_kind).double(), 5)
    ids = np.random.default_rng(4).integers(0, 11, size=(3, 7))
    params, state = fn.interop.from_torch(module, model, *init64(model, (7,)))
    np.testing.assert_allclose(ours(model, params, state, ids),
                               theirs(module, torch.as_tensor(ids)), atol=1e-10)
    fresh = Recurrent(torch_kind).double().eval()
    fn.interop.to_torch(model, params, state, fresh)
    np.testing.assert_allclose(theirs(fresh, torch.as_tensor(ids)),
                               ours(model, params, state, ids), atol=1e-10)


class Attention(torch.nn.Module):
    def __init__(self, d=6, heads=2):
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(d, heads, batch_first=True)
        self.head = torch.nn.Linear(d, 3)

    def forward(self, x):
        return self.head(self.attention(x, x, x, need_weights=False)[0])


def test_multi_head_attention_matches_torch_both_ways_and_checks_heads(x64):
    model = nn.serial(nn.MultiHeadAttention(2), nn.Dense(3))
    module = randomise(Attention().double(), 6)
    x = np.random.default_rng(5).normal(size=(2, 5, 6))
    params, state = fn.interop.from_torch(module.state_dict(), model, *init64(model, (5, 6)))
    np.testing.assert_allclose(ours(model, params, state, x), theirs(module, x), atol=1e-10)
    fresh = Attention().double().eval()
    fn.interop.to_torch(model, params, state, fresh)
    np.testing.assert_allclose(theirs(fresh, x), theirs(module, x), atol=1e-12)
    with pytest.raises(ValueError, match=r"0/MultiHeadAttention.*num_heads 3 \(ours 2\)"):
        fn.interop.from_torch(Attention(heads=3).double(), model, params, state)


def test_mismatches_name_the_layer_and_the_shapes():
    model = nn.serial(nn.Dense(5), nn.Relu(), nn.Dense(2))
    params, state = model.init(jax.random.key(0), (10,))
    wrong_width = torch.nn.Sequential(torch.nn.Linear(10, 7), torch.nn.ReLU(),
                                      torch.nn.Linear(7, 2))
    with pytest.raises(ValueError, match=r"0/Dense ↔ torch '0' \(Linear\): expected 'weight' of "
                                         r"shape \(5, 10\) \(torch layout\), received shape "
                                         r"\(7, 10\)"):
        fn.interop.from_torch(wrong_width, model, params, state)
    with pytest.raises(ValueError, match=r"2 \(0/Dense, 2/Dense\), received 3"):
        fn.interop.from_torch(torch.nn.Sequential(torch.nn.Linear(10, 5), torch.nn.Linear(5, 5),
                                                  torch.nn.Linear(5, 2)), model, params, state)
    with pytest.raises(ValueError, match=r"2/Dense ↔ torch '1' \(Conv2d\): expected a torch "
                                         r"Linear, received a Conv2d"):
        fn.interop.from_torch(torch.nn.Sequential(torch.nn.Linear(10, 5),
                                                  torch.nn.Conv2d(5, 2, 1)), model, params, state)
    with pytest.raises(NotImplementedError, match=r"0/Maxout has no PyTorch mapping"):
        maxout = nn.serial(nn.Maxout(3))
        fn.interop.from_torch(torch.nn.Linear(4, 6), maxout,
                              *maxout.init(jax.random.key(0), (4,)))
    conv = nn.serial(nn.Conv2D(2, 3, padding="SAME"))
    with pytest.raises(ValueError, match=r"stride \(2, 2\) \(ours \(1, 1\)\)"):
        fn.interop.from_torch(torch.nn.Conv2d(1, 2, 3, stride=2, padding=1), conv,
                              *conv.init(jax.random.key(0), (6, 6, 1)))


def test_to_torch_checks_every_layer_before_writing_any():
    model = nn.serial(nn.Dense(5), nn.Dense(2))
    params, state = model.init(jax.random.key(0), (10,))
    module = torch.nn.Sequential(torch.nn.Linear(10, 5), torch.nn.Linear(5, 3))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(ValueError, match=r"1/Dense.*expected 'weight' of shape \(2, 5\)"):
        fn.interop.to_torch(model, params, state, module)
    for name, t in module.state_dict().items():
        torch.testing.assert_close(t, before[name], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# fn.optim transforms where optax expects an (init, update) pair.


@pytest.mark.parametrize("ours_opt, optax_opt", [
    (lambda: fn.optim.adam(1e-2), lambda optax: optax.adam(1e-2)),
    (lambda: fn.optim.sgd(0.05, momentum=0.9), lambda optax: optax.sgd(0.05, momentum=0.9)),
])
def test_an_fn_optim_transform_chains_into_optax(ours_opt, optax_opt):
    optax = pytest.importorskip("optax", reason="optax is a test-only reference")
    target = jnp.arange(6.0).reshape(2, 3)
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    loss = lambda p: jnp.sum((p["w"] - target) ** 2) + jnp.sum(jnp.sin(p["b"] - 1.0))
    mixed = optax.chain(optax.clip_by_global_norm(1.0), ours_opt())
    pure = optax.chain(optax.clip_by_global_norm(1.0), optax_opt(optax))

    def run(opt):
        @jax.jit
        def step(p, s):
            updates, s = opt.update(jax.grad(loss)(p), s, p)
            return optax.apply_updates(p, updates), s
        p, s = params, opt.init(params)
        for _ in range(20):
            p, s = step(p, s)
        return p

    result = run(mixed)   # under the suite's strict dtype promotion
    with jax.numpy_dtype_promotion("standard"):   # optax's adam mixes int and float counts
        reference = run(pure)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), result,
                 reference)
    assert float(loss(result)) < float(loss(params)) - 1.0   # it moved, and downhill
