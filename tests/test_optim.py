"""The optimizer protocol, the building blocks against closed forms, and convergence."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn

O = fn.optim


def _params(seed=0):
    """A serial-like parameter tree: Dense, a parameter-free layer, BatchNorm, Conv2D."""
    rng = np.random.default_rng(seed)
    return ({"w": jnp.asarray(rng.normal(size=(3, 4))), "b": jnp.asarray(rng.normal(size=4))},
            {},
            {"scale": jnp.ones(4), "offset": jnp.zeros(4)},
            {"w": jnp.asarray(rng.normal(size=(2, 2, 4, 5))), "b": jnp.asarray(rng.normal(size=5))})


def _grads(params, seed=1):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)


def _loss(params):
    """A non-quadratic function of every leaf, so gradients depend on the parameters."""
    return sum(jnp.sum(jnp.sin(x) + 0.1 * x ** 4) for x in jax.tree.leaves(params))


ALIASES = {
    "sgd": O.sgd(0.1),
    "momentum": O.sgd(0.1, momentum=0.9),
    "nesterov": O.sgd(0.1, momentum=0.9, nesterov=True),
    "adagrad": O.adagrad(0.1),
    "rmsprop": O.rmsprop(0.01),
    "rmsprop_momentum": O.rmsprop(0.01, momentum=0.9),
    "adam": O.adam(0.01),
    "adamw": O.adamw(0.01),
}

# Every building block in one chain, with schedules where hyper-parameters take them.
EVERYTHING = O.skip_not_finite(O.accumulate_gradients(O.chain(
    O.clip_by_global_norm(10.0),
    O.trace(O.schedules.momentum_ramp(20)),
    O.scale_by_adam(),
    O.scale_by_rms(),
    O.scale_by_adagrad(),
    O.add_decayed_weights(O.schedules.exponential(1e-2, 0.99)),
    O.scale_by_learning_rate(O.schedules.warmup(O.schedules.cosine(0.1, 100), 10)),
    O.reduce_on_plateau(patience=2),
    O.l1_shrinkage(1e-3),
    O.project_max_norm(3.0),
    O.polyak(),
), every=2))

OPTIMIZERS = {**ALIASES, "everything": EVERYTHING,
              "partition": O.partition({"0/*": O.adam(0.01), "2/*": O.frozen()},
                                       default=O.sgd(O.schedules.cosine(0.1, 10), momentum=0.9))}


def _step(opt):
    def step(params, state):
        value, grads = jax.value_and_grad(_loss)(params)
        updates, state = opt.update(grads, state, params, value=value)
        return O.apply_updates(params, updates), state
    return step


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_is_a_pytree_that_jits_once_flattens_checkpoints_and_vmaps(name, tmp_path):
    chex.clear_trace_counter()
    opt = OPTIMIZERS[name]
    step = jax.jit(chex.assert_max_traces(_step(opt), n=1))
    params = _params()
    state = opt.init(params)
    for _ in range(3):
        params, state = step(params, state)
    chex.assert_tree_all_finite((params, state))
    chex.assert_trees_all_equal_shapes_and_dtypes(params, _params())

    leaves, treedef = jax.tree.flatten(state)
    chex.assert_trees_all_equal(jax.tree.unflatten(treedef, leaves), state)
    restored = fn.checkpoint.load(fn.checkpoint.save(tmp_path / "opt.ckpt", state), like=state)
    chex.assert_trees_all_equal(restored, state)
    chex.assert_trees_all_equal(step(params, restored), step(params, state))

    # A batch of 3 parameter sets: vmapped steps equal the steps of each set alone.
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), *[_params(k) for k in range(3)])
    vstep = jax.jit(jax.vmap(_step(opt)))
    vparams, vstate = vstep(*vstep(batch, jax.jit(jax.vmap(opt.init))(batch)))
    for i in range(3):
        one = _params(i)
        one_params, one_state = step(*step(one, opt.init(one)))
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], (vparams, vstate)),
                                    (one_params, one_state), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fresh_state_can_be_donated_with_the_params(name):
    """No two leaves of params and a fresh state share a buffer (donating both would fail)."""
    opt = OPTIMIZERS[name]
    params = _params()
    state = opt.init(params)
    step = jax.jit(_step(opt), donate_argnums=(0, 1))
    params, state = step(params, state)
    chex.assert_tree_all_finite(params)  # (a plateau's "best so far" starts at +inf)
    fresh = _params()
    pointers = [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves((fresh, opt.init(fresh)))
                if isinstance(leaf, jax.Array) and leaf.size]
    assert len(set(pointers)) == len(pointers), "aliased buffers in params + optimizer state"


@pytest.mark.parametrize("name", list(ALIASES))
def test_transforms_accept_and_ignore_unknown_extra_arguments(name):
    opt = ALIASES[name]
    params, grads = _params(), _grads(_params())
    state = opt.init(params)
    with_extra = opt.update(grads, state, params, value=1.0, epoch=3)
    chex.assert_trees_all_equal(with_extra, opt.update(grads, state, params))


def test_apply_updates_keeps_each_parameter_dtype():
    params = {"w": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(3, jnp.float32)}
    updates = {"w": jnp.full(3, 0.5, jnp.float32), "b": jnp.full(3, 0.5, jnp.float32)}
    new = O.apply_updates(params, updates)
    assert new["w"].dtype == jnp.bfloat16 and new["b"].dtype == jnp.float32
    chex.assert_trees_all_close(new["b"], jnp.full(3, 1.5))


def test_chain_state_is_the_tuple_of_its_parts():
    params = _params()
    opt = O.chain(O.trace(0.9), O.scale_by_learning_rate(0.1))
    state = opt.init(params)
    assert isinstance(state, tuple) and isinstance(state[0], O.TraceState)
    grads = _grads(params)
    updates, state = opt.update(grads, state, params)
    chex.assert_trees_all_close(updates, jax.tree.map(lambda g: -0.1 * g, grads))
    chex.assert_trees_all_close(state[0].trace, grads)


def test_nesterov_without_momentum_is_an_error():
    with pytest.raises(ValueError, match="Nesterov"):
        O.sgd(0.1, nesterov=True)


def test_transforms_that_read_params_say_so():
    params = _params()
    opt = O.adamw(0.1)
    with pytest.raises(ValueError, match="add_decayed_weights reads the parameters"):
        opt.update(_grads(params), opt.init(params), None)


# --- masks -----------------------------------------------------------------------------------

def test_default_mask_selects_kernels_only():
    mask = O.weights_only(_params())
    assert mask == ({"w": True, "b": False}, {}, {"scale": False, "offset": False},
                    {"w": True, "b": False})


def test_masks_accept_functions_prefixes_and_reject_wrong_structures():
    params = _params()
    full = O.resolve_mask((True, False, False, {"w": False, "b": True}), params)
    assert full == ({"w": True, "b": True}, {}, {"scale": False, "offset": False},
                    {"w": False, "b": True})
    assert O.resolve_mask(lambda p: jax.tree.map(lambda _: False, p), params) == \
        jax.tree.map(lambda _: False, params)
    with pytest.raises(ValueError, match="mask structure"):
        O.resolve_mask((True, False), params)


@pytest.mark.parametrize("opt", [O.adamw(0.1, weight_decay=0.5),
                                 O.chain(O.add_decayed_weights(0.5),
                                         O.scale_by_learning_rate(0.1))])
def test_weight_decay_leaves_biases_and_norm_parameters_untouched(opt):
    params = _params()
    zero = jax.tree.map(jnp.zeros_like, params)
    state = opt.init(params)
    new = params
    for _ in range(3):
        updates, state = opt.update(zero, state, new)
        new = O.apply_updates(new, updates)
    for before, after in [(params[0], new[0]), (params[3], new[3])]:
        chex.assert_trees_all_equal(after["b"], before["b"])
        chex.assert_trees_all_close(after["w"], before["w"] * (1 - 0.1 * 0.5) ** 3, rtol=1e-6)
    chex.assert_trees_all_equal(new[2], params[2])


# --- projections and clipping -----------------------------------------------------------------

def _unit_norms(w):
    return jnp.sqrt(jnp.sum(w * w, axis=tuple(range(w.ndim - 1))))


def test_max_norm_keeps_every_unit_inside_the_ball():
    params = _params()
    c = 1.5
    opt = O.chain(O.sgd(1.0), O.project_max_norm(c))
    state = opt.init(params)
    for k in range(5):
        grads = jax.tree.map(lambda g: 3 * g, _grads(params, seed=k))
        updates, state = opt.update(grads, state, params)
        params = O.apply_updates(params, updates)
        for kernel in (params[0]["w"], params[3]["w"]):
            assert jnp.all(_unit_norms(kernel) <= c * (1 + 1e-6))
    assert jnp.max(_unit_norms(params[3]["w"])) > c * (1 - 1e-6)   # the constraint was active
    assert jnp.max(jnp.abs(params[0]["b"])) > c                       # biases are not projected


class ClosedFormsTest(chex.TestCase):
    """One update of a projection or clip against its formula, jitted and not."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_max_norm_moves_only_units_outside_the_ball(self):
        w = jnp.array([[3.0, 0.1], [4.0, 0.2]])                 # unit norms 5 and ~0.22
        params = {"w": w}
        opt = O.project_max_norm(2.0)
        updates, _ = self.variant(opt.update)({"w": jnp.zeros_like(w)}, opt.init(params), params)
        new = O.apply_updates(params, updates)["w"]
        chex.assert_trees_all_close(new, jnp.array([[1.2, 0.1], [1.6, 0.2]]), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_l1_shrinkage_is_soft_thresholding(self):
        params = {"w": jnp.array([0.5, -0.5, 0.05, -0.05]), "b": jnp.array([0.05])}
        grads = {"w": jnp.array([1.0, 1.0, 0.0, 0.0]), "b": jnp.array([0.0])}
        opt = O.chain(O.sgd(0.1), O.l1_shrinkage(0.1))
        updates, _ = self.variant(opt.update)(grads, opt.init(params), params)
        new = O.apply_updates(params, updates)
        q = np.array([0.4, -0.6, 0.05, -0.05])                     # the plain SGD step
        expected = np.sign(q) * np.maximum(np.abs(q) - 0.1, 0)
        chex.assert_trees_all_close(new, {"w": expected, "b": np.array([0.05])}, atol=1e-7)
        assert np.all(np.asarray(new["w"])[2:] == 0)                 # exact zeros

    @chex.variants(with_jit=True, without_jit=True)
    def test_clip_by_global_norm(self):
        for scale in (0.1, 10.0):
            grads = jax.tree.map(lambda g: scale * g, _grads(_params()))
            norm = np.sqrt(sum(np.sum(np.asarray(g) ** 2) for g in jax.tree.leaves(grads)))
            clipped, _ = self.variant(O.clip_by_global_norm(1.0).update)(grads, O.EmptyState())
            expected = jax.tree.map(lambda g: g * min(1.0, 1.0 / norm), grads)
            chex.assert_trees_all_close(clipped, expected, rtol=1e-6)


# --- averaging, accumulation, skipping -------------------------------------------------------

def _run(opt, params, grads_seq):
    state, update = opt.init(params), jax.jit(opt.update)
    path = []
    for grads in grads_seq:
        updates, state = update(grads, state, params, value=_loss(params))
        params = O.apply_updates(params, updates)
        path.append(params)
    return path, state


def test_ema_and_polyak_average_the_iterates():
    params = _params()
    grads_seq = [_grads(params, seed=k) for k in range(4)]
    path, state = _run(O.chain(O.sgd(0.1), O.polyak()), params, grads_seq)
    mean = jax.tree.map(lambda *xs: sum(xs) / len(xs), *path)
    chex.assert_trees_all_close(O.averaged_params(state), mean, rtol=1e-5, atol=1e-6)

    d = 0.7
    path, state = _run(O.chain(O.sgd(0.1), O.ema(d)), params, grads_seq)
    expected = params
    for p in path:
        expected = jax.tree.map(lambda a, x: d * a + (1 - d) * x, expected, p)
    chex.assert_trees_all_close(O.averaged_params(state), expected, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(path[-1], _run(O.sgd(0.1), params, grads_seq)[0][-1])

    with pytest.raises(ValueError, match="exactly one ema"):
        O.averaged_params(O.adam(0.1).init(params))


def test_accumulating_k_gradients_steps_like_their_mean(x64):
    params = _params()
    grads_seq = [_grads(params, seed=k) for k in range(6)]
    path, state = _run(O.accumulate_gradients(O.adam(0.1), every=3), params, grads_seq)
    means = [jax.tree.map(lambda *g: sum(g) / 3, *grads_seq[i:i + 3]) for i in (0, 3)]
    reference, reference_state = _run(O.adam(0.1), params, means)
    chex.assert_trees_all_equal(path[0], params)                # nothing moves in between
    chex.assert_trees_all_equal(path[1], params)
    chex.assert_trees_all_close(path[2], reference[0], rtol=1e-12)
    chex.assert_trees_all_close(path[5], reference[1], rtol=1e-12)
    chex.assert_trees_all_close(state.inner, reference_state, rtol=1e-12)
    assert int(state.mini_step) == 0


def test_non_finite_updates_are_skipped_and_counted():
    params = _params()
    opt = O.skip_not_finite(O.adam(0.1))
    good = _grads(params)
    bad = jax.tree.map(lambda g: g.at[0].set(jnp.nan), good)
    state = opt.init(params)
    updates, skipped = opt.update(bad, state, params)
    chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
    chex.assert_trees_all_equal(skipped.inner, state.inner)
    assert int(skipped.skipped) == 1
    updates, after = opt.update(good, skipped, params)
    chex.assert_trees_all_close(updates, O.adam(0.1).update(good, state.inner, params)[0])
    assert int(after.skipped) == 1 and int(after.inner.inner_state[0].count) == 1


# --- convergence -----------------------------------------------------------------------------

def _parabola(p):
    return jnp.sum(jnp.array([1.0, 10.0]) * (p["w"] - jnp.array([1.0, -2.0])) ** 2)


def _rosenbrock(p):
    x, y = p["w"][0], p["w"][1]
    return (1 - x) ** 2 + 100 * (y - x ** 2) ** 2


WARMUP_COSINE_CLIP = O.chain(O.clip_by_global_norm(1.0), O.sgd(
    O.schedules.warmup(O.schedules.cosine(2e-3, 10_000, end_value=1e-3), 100), momentum=0.5))

CONVERGENCE = {   # name: (optimizer on the parabola, optimizer on Rosenbrock)
    "sgd": (O.sgd(0.02), O.sgd(2e-3)),
    "momentum": (O.sgd(0.02, momentum=0.9), O.sgd(1e-3, momentum=0.9)),
    "nesterov": (O.sgd(0.02, momentum=0.9, nesterov=True),
                 O.sgd(1e-3, momentum=0.9, nesterov=True)),
    "adagrad": (O.adagrad(0.5), O.adagrad(0.5)),
    "rmsprop": (O.rmsprop(1e-2), O.rmsprop(3e-3)),
    "rmsprop_momentum": (O.rmsprop(1e-3, momentum=0.9), O.rmsprop(1e-3, momentum=0.9)),
    "adam": (O.adam(0.1), O.adam(3e-2)),
    "adamw": (O.adamw(0.1, weight_decay=1e-4), O.adamw(1e-2, weight_decay=1e-4)),
    "warmup_cosine_clip": (WARMUP_COSINE_CLIP, WARMUP_COSINE_CLIP),
}


def _minimise(opt, f, start, steps):
    def body(_, carry):
        p, s = carry
        updates, s = opt.update(jax.grad(f)(p), s, p)
        return O.apply_updates(p, updates), s

    params = {"w": jnp.array(start)}
    return jax.jit(lambda p: jax.lax.fori_loop(0, steps, body, (p, opt.init(p)))[0])(params)


@pytest.mark.parametrize("name", list(CONVERGENCE))
@pytest.mark.parametrize("problem", ["parabola", "rosenbrock"])
def test_every_optimizer_converges(name, problem):
    f, start, steps, optimum, tol = {
        "parabola": (_parabola, [0.0, 0.0], 2000, [1.0, -2.0], 1e-3),
        "rosenbrock": (_rosenbrock, [-1.0, 1.0], 10_000, [1.0, 1.0], 2e-2),
    }[problem]
    opt = CONVERGENCE[name][problem == "rosenbrock"]
    final = _minimise(opt, f, start, steps)
    chex.assert_trees_all_close(final["w"], jnp.array(optimum), atol=tol)


# --- wrong inputs ----------------------------------------------------------------------------

def test_a_state_from_a_different_optimizer_is_rejected():
    params, grads = _params(), _grads(_params())
    with pytest.raises(ValueError, match=r"inject_hyperparams.update: expected a state holding "
                                         r"the hyper-parameters \['b1', 'b2', 'eps', "
                                         r"'learning_rate', 'weight_decay'\]; was it made by "
                                         r"another optimizer's init"):
        O.adamw(1e-3).update(grads, O.adam(1e-3).init(params), params)
    two = O.chain(O.scale_by_adam(), O.scale_by_learning_rate(1e-3))
    three = O.chain(O.scale_by_adam(), O.add_decayed_weights(0.1), O.scale_by_learning_rate(1e-3))
    with pytest.raises(ValueError, match=r"chain.update: expected .* \(3\), received 2 entries"):
        three.update(grads, two.init(params), params)
    with pytest.raises(ValueError, match=r"chain.update: expected .* \(2\), received 3 entries"):
        two.update(grads, three.init(params), params)
    with pytest.raises(ValueError, match=r"partition.update: expected a PartitionState with the "
                                         r"groups \['0/\*', 'default'\]"):
        O.partition({"0/*": O.sgd(0.1)}, default=O.frozen()).update(grads, two.init(params))


@pytest.mark.parametrize("name", list(ALIASES))
def test_a_wrongly_shaped_gradient_is_an_error_naming_the_leaf(name):
    """(1, 4) against a (3, 4) kernel broadcasts without rank promotion: it must not pass."""
    opt, params = ALIASES[name], _params()
    grads = _grads(params)
    grads[3]["b"] = grads[3]["b"][:1]                        # (1,) for a (5,) bias
    grads[0]["w"] = grads[0]["w"][:1]                        # (1, 4) for a (3, 4) kernel
    with pytest.raises(ValueError, match=r"at leaf 0/w: expected .* \(3, 4\), received \(1, 4\)"):
        updates, _ = opt.update(grads, opt.init(params), params)
        O.apply_updates(params, updates)


def test_apply_updates_rejects_a_wrongly_shaped_update():
    params = {"layer": {"w": jnp.ones(4)}}
    with pytest.raises(ValueError, match=r"apply_updates: at leaf layer/w: .*\(4,\), "
                                         r"received \(1,\)"):
        O.apply_updates(params, {"layer": {"w": jnp.ones(1)}})


@pytest.mark.parametrize("make", [lambda mu: O.sgd(0.1, momentum=mu),
                                  lambda mu: O.sgd(0.1, momentum=mu, nesterov=True),
                                  lambda mu: O.rmsprop(0.01, momentum=mu)])
def test_momentum_may_be_traced_for_vectorised_tuning(make):
    params = _params()
    grads_seq = [_grads(params, seed=k) for k in range(3)]

    def final_params(mu):
        return _run(make(mu), params, grads_seq)[0][-1]

    traced = jax.jit(jax.vmap(final_params))(jnp.array([0.5, 0.9]))
    for i, mu in enumerate([0.5, 0.9]):
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], traced), final_params(mu),
                                    rtol=1e-5)


def test_traced_zero_momentum_steps_like_no_momentum():
    params = _params()
    grads_seq = [_grads(params, seed=k) for k in range(3)]
    traced = jax.jit(lambda mu: _run(O.sgd(0.1, momentum=mu), params, grads_seq)[0][-1])(0.0)
    chex.assert_trees_all_close(traced, _run(O.sgd(0.1), params, grads_seq)[0][-1], rtol=1e-6)


@pytest.mark.parametrize("inner", [O.sgd(0.1), O.adam(0.1)], ids=["sgd", "adam"])
def test_accumulating_bfloat16_gradients_into_float32_params(inner):
    params = {"w": jnp.arange(3.0)}
    grads_seq = [{"w": jnp.array([1.0, -2.0, 0.5], jnp.bfloat16) * (k + 1)} for k in range(4)]
    path, _ = _run(O.accumulate_gradients(inner, every=2), params, grads_seq)
    means = [jax.tree.map(lambda a, b: (a.astype(jnp.float32) + b.astype(jnp.float32)) / 2,
                          *grads_seq[i:i + 2])
             for i in (0, 2)]
    reference, _ = _run(inner, params, means)
    chex.assert_trees_all_equal(path[0], params)
    chex.assert_trees_all_close(path[1], reference[0], rtol=1e-6)
    chex.assert_trees_all_close(path[3], reference[1], rtol=1e-6)
