"""partition: one optimizer per group of leaves, chosen by glob patterns; frozen leaves."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn

O = fn.optim


def _params():
    """A serial-like tree: Dense (0), a parameter-free layer (1), BatchNorm (2), Dense (3)."""
    rng = np.random.default_rng(0)
    return ({"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
             "b": jnp.array([0.0, -0.0, 1.5, -2.0])},
            {},
            {"scale": jnp.ones(4), "offset": jnp.zeros(4)},
            {"w": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32), "b": jnp.zeros(2)})


def _grads(k):
    rng = np.random.default_rng(k + 1)
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), _params())


def _run(opt, steps=4, params=None, grads=_grads):
    params = _params() if params is None else params
    state, update = opt.init(params), jax.jit(opt.update)
    for k in range(steps):
        updates, state = update(grads(k), state, params)
        params = O.apply_updates(params, updates)
    return params, state


def _bits(tree):
    return jax.tree.map(lambda x: np.asarray(x).view(np.uint32), tree)


def _nan_biases(k):
    grads = _grads(k)
    for layer in (0, 3):
        grads[layer]["b"] = grads[layer]["b"].at[0].set(jnp.nan)
    return grads


def test_frozen_leaves_stay_bit_identical_while_the_others_train():
    opt = O.partition({"0/*": O.frozen(), "**/b": O.frozen()}, default=O.adam(0.1))
    params, state = _run(opt, grads=_nan_biases)     # NaN gradients reach only frozen leaves
    before = _params()
    chex.assert_trees_all_equal(_bits(params[0]), _bits(before[0]))        # -0.0 stays -0.0
    chex.assert_trees_all_equal(_bits(params[3]["b"]), _bits(before[3]["b"]))
    chex.assert_tree_all_finite(params)
    assert not np.allclose(params[3]["w"], before[3]["w"])
    assert not np.allclose(params[2]["scale"], before[2]["scale"])
    assert state.groups["0/*"] == O.EmptyState() and state.groups["**/b"] == O.EmptyState()


def _adam_by_hand(p, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return p


def test_two_groups_follow_their_own_update_rules():
    """Adam on layer 0, SGD(0.1) on layer 3, BatchNorm frozen: each by its hand-written rule."""
    opt = O.partition({"0/*": O.adam(0.01), "3/*": O.sgd(0.1), "2/*": O.frozen()})
    params, _ = _run(opt, steps=4)
    start = jax.tree.map(np.float64, _params())
    grads = [jax.tree.map(np.float64, _grads(k)) for k in range(4)]
    for name in ("w", "b"):
        chex.assert_trees_all_close(np.asarray(params[0][name]), _adam_by_hand(
            start[0][name], [g[0][name] for g in grads], 0.01), rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(np.asarray(params[3][name]), start[3][name] - 0.1 * sum(
            g[3][name] for g in grads), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_equal(params[2], _params()[2])

    # Exactly each optimizer run alone on its own layer.
    alone = lambda opt, i: _run(opt, params=_params()[i], grads=lambda k: _grads(k)[i])[0]
    chex.assert_trees_all_equal(params[0], alone(O.adam(0.01), 0))
    chex.assert_trees_all_equal(params[3], alone(O.sgd(0.1), 3))


def test_groups_see_the_full_structure_so_name_masks_work():
    """adamw's default mask decays "0/w" only: with zero gradients w ← w·(1 − αλ)^k."""
    opt = O.partition({"0/*": O.adamw(0.1, weight_decay=0.5)}, default=O.frozen())
    params, state = _run(opt, steps=3, grads=lambda k: jax.tree.map(jnp.zeros_like, _params()))
    chex.assert_trees_all_close(params[0]["w"], _params()[0]["w"] * (1 - 0.1 * 0.5) ** 3,
                                rtol=1e-6)
    chex.assert_trees_all_equal(params[0]["b"], _params()[0]["b"])
    chex.assert_trees_all_equal(params[3], _params()[3])
    mu = state.groups["0/*"].inner_state[0].mu
    assert mu[3] == {"w": None, "b": None} and mu[0]["w"].shape == (3, 4)


TREE = {"a": {"w": jnp.zeros(1), "b": jnp.zeros(1)}, "b": jnp.zeros(1),
        "c": {"d": {"b": jnp.zeros(1), "w": jnp.zeros(1)}}}


def _rule_of_each_leaf(rules, default=None):
    """Which rule updates each leaf: rule i is a step of size i + 1 on gradients of ones."""
    marked = {pattern: O.scale_by_learning_rate(-(i + 1.0)) for i, pattern in enumerate(rules)}
    opt = O.partition(marked, None if default is None else O.scale_by_learning_rate(-100.0))
    updates, _ = opt.update(jax.tree.map(jnp.ones_like, TREE), opt.init(TREE))
    rule = {i + 1.0: pattern for i, pattern in enumerate(rules)} | {100.0: "default"}
    return {name: rule[float(u[0])]
            for name, u in zip(fn.paths.leaf_paths(TREE), jax.tree.leaves(updates))}


def test_star_matches_within_a_segment_and_double_star_across_segments():
    assert _rule_of_each_leaf({"*/b": 0, "**": 0}) == {
        "a/b": "*/b", "a/w": "**", "b": "**", "c/d/b": "**", "c/d/w": "**"}
    assert _rule_of_each_leaf({"**/b": 0, "c/**": 0, "a/**/w": 0}) == {
        "a/b": "**/b", "a/w": "a/**/w", "b": "**/b", "c/d/b": "**/b", "c/d/w": "c/**"}
    assert _rule_of_each_leaf({"*/*/w": 0}, default=True) == {
        "a/b": "default", "a/w": "default", "b": "default", "c/d/b": "default",
        "c/d/w": "*/*/w"}
    # `*` never crosses a "/", and glob characters other than * are literal: these match nothing,
    # which is refused (a typo would otherwise freeze or train nothing without a word).
    with pytest.raises(ValueError, match=r"the pattern\(s\) \['c/\*', '\?'\] match no parameter"):
        _rule_of_each_leaf({"c/*": 0, "*/*/w": 0, "?": 0}, default=True)


def test_the_first_matching_pattern_wins():
    assert _rule_of_each_leaf({"a/*": 0, "a/w": 0, "**": 0}) == {
        "a/b": "a/*", "a/w": "a/*", "b": "**", "c/d/b": "**", "c/d/w": "**"}


def test_an_unmatched_leaf_without_default_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"no pattern matches the leaf 'c/d/b' \(patterns: "
                                         r"\['a/\*', 'c/\*/w', 'b'\]\)"):
        O.partition({"a/*": O.sgd(0.1), "c/*/w": O.sgd(0.1), "b": O.sgd(0.1)}).init(TREE)
    with pytest.raises(ValueError, match="a rule is named 'default'"):
        O.partition({"default": O.sgd(0.1)}, default=O.sgd(0.2))


def test_hyperparams_of_a_partition_are_per_group():
    opt = O.partition({"0/*": O.adam(0.01), "3/*": O.sgd(0.1, momentum=0.9),
                       "2/*": O.frozen()}, default=O.sgd(0.5))
    state = opt.init(_params())
    values = O.hyperparams(state)
    assert values["2/*"] == {} and set(values) == {"0/*", "3/*", "2/*", "default"}
    chex.assert_trees_all_close(values["3/*"], {"learning_rate": 0.1, "momentum": 0.9})

    every = O.hyperparams(O.set_hyperparams(state, learning_rate=0.2))
    assert all(float(every[g]["learning_rate"]) == pytest.approx(0.2)
               for g in ("0/*", "3/*", "default"))
    one = O.hyperparams(O.set_hyperparams(state, group="3/*", learning_rate=0.2, momentum=0.5))
    chex.assert_trees_all_close((one["0/*"]["learning_rate"], one["3/*"], one["default"]),
                                (0.01, {"learning_rate": 0.2, "momentum": 0.5},
                                 {"learning_rate": 0.5}))
    only_adam = O.hyperparams(O.set_hyperparams(state, b1=0.8))
    chex.assert_trees_all_close(only_adam["0/*"]["b1"], 0.8)

    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['b1'\] in group "
                                         r"'3/\*'; known: \['learning_rate', 'momentum'\]"):
        O.set_hyperparams(state, group="3/*", b1=0.5)
    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['rho'\]"):
        O.set_hyperparams(state, rho=0.5)
    with pytest.raises(ValueError, match=r"no group '1/\*'; the groups are"):
        O.set_hyperparams(state, group="1/*", learning_rate=0.5)
    frozen_only = O.partition({"**": O.frozen()}).init(_params())
    assert O.hyperparams(frozen_only) == {"**": {}}
    with pytest.raises(ValueError, match="not built with fn.optim.inject_hyperparams"):
        O.set_hyperparams(frozen_only, learning_rate=0.1)


def test_changed_group_rates_drive_the_updates():
    """SGD groups: after set_hyperparams(group=...), u = −α_group·g for that group only."""
    opt = O.partition({"0/*": O.sgd(0.1)}, default=O.sgd(0.01))
    params, grads = _params(), _grads(0)
    state = O.set_hyperparams(opt.init(params), group="0/*", learning_rate=0.3)
    updates, _ = jax.jit(opt.update)(grads, state, params)
    expected = jax.tree.map(lambda g: -0.01 * g, grads)
    expected[0].update({k: -0.3 * g for k, g in grads[0].items()})
    chex.assert_trees_all_close(updates, expected, rtol=1e-6)


def test_extra_arguments_reach_every_group():
    opt = O.partition({"0/*": O.chain(O.sgd(1.0), O.reduce_on_plateau(patience=0))},
                      default=O.frozen())
    params, state = _params(), opt.init(_params())
    for loss in [1.0, 2.0]:                      # the second value is worse: the scale halves
        updates, state = opt.update(_grads(0), state, params, value=loss)
    chex.assert_trees_all_close(updates[0], jax.tree.map(lambda g: -0.5 * g, _grads(0)[0]))


class PartitionTransformsTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_init_and_update_jit_and_vmap(self):
        opt = O.partition({"0/*": O.adam(0.01), "3/*": O.sgd(0.1, momentum=0.9)},
                          default=O.frozen())
        init, update = self.variant(opt.init), self.variant(opt.update)
        params = _params()
        state = init(params)
        updates, state = update(_grads(0), state, params)
        reference = opt.update(_grads(0), opt.init(params), params)
        chex.assert_trees_all_close((updates, state), reference, rtol=1e-6)

        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), _params(), _params())
        grads = jax.tree.map(lambda *xs: jnp.stack(xs), _grads(0), _grads(1))
        v_updates, v_state = self.variant(jax.vmap(opt.update))(
            grads, self.variant(jax.vmap(opt.init))(stacked), stacked)
        for i in range(2):
            one = opt.update(_grads(i), opt.init(_params()), _params())
            chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], (v_updates, v_state)), one,
                                        rtol=1e-6)
        chex.assert_trees_all_close(O.hyperparams(v_state)["0/*"]["learning_rate"],
                                    jnp.full(2, 0.01))
