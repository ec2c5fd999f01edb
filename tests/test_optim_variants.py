"""The optimizer variants as the notes write them, each against its formula written out step by
step in numpy float64: momentum in the EMA and classical forms, Nesterov in the look-ahead and
cs231n forms (the same trajectory), ε inside and outside the square root, Adam without bias
correction; and several penalties at once, one per parameter group."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn

O = fn.optim
STEPS = 6


def _grads(steps=STEPS, shape=(3, 4), seed=0):
    """A fixed sequence of gradients (as if from a loss), float64."""
    return np.random.default_rng(seed).normal(size=(steps, *shape))


def _run(opt, grads, p0):
    """The parameters after each update of `opt` fed the gradients `grads` in turn."""
    params, state, path = jnp.asarray(p0), opt.init(jnp.asarray(p0)), []
    update = jax.jit(opt.update)
    for g in grads:
        updates, state = update(jnp.asarray(g), state, params)
        params = O.apply_updates(params, updates)
        path.append(np.asarray(params))
    return np.stack(path)


def _close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# Momentum: classical v ← μv + g and the EMA form v ← βv + (1−β)g.


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_in_the_classical_and_the_ema_form_follow_their_formulas(x64, nesterov):
    grads, p0, lr, mu = _grads(), np.ones((3, 4)), 0.1, 0.9
    for ema in (False, True):
        p, v, expected = p0.copy(), np.zeros_like(p0), []
        for g in grads:
            g = (1 - mu) * g if ema else g        # the EMA form weighs the new gradient by 1−β
            v = mu * v + g
            p = p - lr * (g + mu * v if nesterov else v)
            expected.append(p)
        _close(_run(O.sgd(lr, momentum=mu, nesterov=nesterov, ema=ema), grads, p0),
               np.stack(expected))


def test_ema_momentum_is_the_classical_one_under_the_learning_rate_scaled_by_1_minus_beta(x64):
    grads, p0, mu = _grads(), np.ones((3, 4)), 0.8
    ema = _run(O.sgd(0.5, momentum=mu, ema=True), grads, p0)
    _close(ema, _run(O.sgd(0.5 * (1 - mu), momentum=mu), grads, p0))
    assert not np.allclose(ema, _run(O.sgd(0.5, momentum=mu), grads, p0))


def test_ema_or_nesterov_without_momentum_is_an_error():
    with pytest.raises(ValueError, match="EMA momentum needs momentum > 0"):
        O.sgd(0.1, ema=True)


# ---------------------------------------------------------------------------------------------
# Nesterov: the look-ahead form and cs231n's form make the same trajectory.

A = np.array([[3.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.3]])
B = np.array([1.0, -2.0, 0.5])


def _grad_quadratic(x):
    """∇f for f(x) = ½xᵀAx − bᵀx."""
    return A @ x - B


def test_nesterov_look_ahead_and_cs231n_forms_make_the_same_trajectory(x64):
    lr, mu, steps, x0 = 0.2, 0.8, 100, np.array([2.0, 1.0, -1.0])
    # The look-ahead form: the gradient at x̃ = x + μv, v ← μv − α∇f(x̃), x ← x + v.
    x, v, ahead = x0.copy(), np.zeros(3), []
    for _ in range(steps):
        v = mu * v - lr * _grad_quadratic(x + mu * v)
        x = x + v
        ahead.append(x + mu * v)   # the look-ahead point of the next step
    # cs231n's form on φ (the parameters): v ← μv − α∇f(φ), φ ← φ − μ·v_prev + (1+μ)·v.
    phi, v, cs231n = x0.copy(), np.zeros(3), []
    for _ in range(steps):
        v_prev = v
        v = mu * v - lr * _grad_quadratic(phi)
        phi = phi - mu * v_prev + (1 + mu) * v
        cs231n.append(phi)
    _close(np.stack(cs231n), np.stack(ahead))
    # fn.optim.sgd(nesterov=True), fed ∇f at its own parameters, makes the cs231n steps.
    opt = O.sgd(lr, momentum=mu, nesterov=True)
    params, state, library = jnp.asarray(x0), opt.init(jnp.asarray(x0)), []
    for _ in range(steps):
        updates, state = opt.update(jnp.asarray(_grad_quadratic(np.asarray(params))), state,
                                    params)
        params = O.apply_updates(params, updates)
        library.append(np.asarray(params))
    _close(np.stack(library), np.stack(cs231n))
    # Both converge to the minimiser A⁻¹b, where x and its look-ahead point meet.
    np.testing.assert_allclose(x, np.linalg.solve(A, B), atol=1e-3)
    np.testing.assert_allclose(library[-1], np.linalg.solve(A, B), atol=1e-3)


# ---------------------------------------------------------------------------------------------
# ε inside and outside the square root; Adam without bias correction.


@pytest.mark.parametrize("eps_in_sqrt", [False, True])
def test_rmsprop_with_eps_outside_and_inside_the_root(x64, eps_in_sqrt):
    grads, p0, lr, rho, eps = _grads(), np.ones((3, 4)), 0.01, 0.9, 0.1  # ε large: it shows
    p, s, expected = p0.copy(), np.zeros_like(p0), []
    for g in grads:
        s = rho * s + (1 - rho) * g * g
        p = p - lr * g / (np.sqrt(s + eps) if eps_in_sqrt else np.sqrt(s) + eps)
        expected.append(p)
    made = _run(O.rmsprop(lr, decay=rho, eps=eps, eps_in_sqrt=eps_in_sqrt), grads, p0)
    _close(made, np.stack(expected))
    other = _run(O.rmsprop(lr, decay=rho, eps=eps, eps_in_sqrt=not eps_in_sqrt), grads, p0)
    assert np.abs(made - other).max() > 1e-3


@pytest.mark.parametrize("eps_in_sqrt,bias_correction",
                         [(False, True), (True, True), (False, False), (True, False)])
def test_adam_variants_follow_their_formulas(x64, eps_in_sqrt, bias_correction):
    grads, p0, lr, b1, b2, eps = _grads(), np.ones((3, 4)), 0.01, 0.9, 0.99, 1e-2
    p, m, v, expected = p0.copy(), np.zeros_like(p0), np.zeros_like(p0), []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = (m / (1 - b1 ** t), v / (1 - b2 ** t)) if bias_correction else (m, v)
        p = p - lr * m_hat / (np.sqrt(v_hat + eps) if eps_in_sqrt else np.sqrt(v_hat) + eps)
        expected.append(p)
    options = dict(b1=b1, b2=b2, eps=eps, eps_in_sqrt=eps_in_sqrt,
                   bias_correction=bias_correction)
    _close(_run(O.adam(lr, **options), grads, p0), np.stack(expected))
    # AdamW takes the same options (no decay on a leaf that the mask leaves out).
    _close(_run(O.adamw(lr, weight_decay=0.5, mask=False, **options), grads, p0),
           np.stack(expected))


def test_the_notes_simplified_adam_takes_larger_first_steps_than_bias_corrected_adam(x64):
    """Without bias correction m₁ = (1−β₁)g and v₁ = (1−β₂)g²: the first step is
    α(1−β₁)/√(1−β₂) ≈ 3.16α·sign(g) for β = (0.9, 0.999), not α·sign(g)."""
    g = np.array([[2.0, -0.5]])   # one update
    first = _run(O.adam(0.01, eps=0.0, bias_correction=False), g, np.zeros(2))[0]
    _close(first, -0.01 * 0.1 / np.sqrt(0.001) * np.sign(g[0]))
    _close(_run(O.adam(0.01, eps=0.0), g, np.zeros(2))[0], -0.01 * np.sign(g[0]))


def test_the_flags_are_static_and_leave_the_held_hyperparameters_as_they_were():
    state = O.adam(1e-3, eps_in_sqrt=True, bias_correction=False).init(jnp.zeros(2))
    assert set(O.hyperparams(state)) == {"learning_rate", "b1", "b2", "eps"}
    assert O.adam(1e-3) == O.adam(1e-3, eps_in_sqrt=False, bias_correction=True)
    assert O.adam(1e-3) != O.adam(1e-3, bias_correction=False)
    assert O.sgd(0.1, momentum=0.9) != O.sgd(0.1, momentum=0.9, ema=True)


# ---------------------------------------------------------------------------------------------
# Several penalties at once, by path: L2 on layer 0, L1 on layer 1, max-norm on layer 2.


def _layers(seed=0):
    rng = np.random.default_rng(seed)
    return [{"w": rng.normal(size=(4, 3)), "b": rng.normal(size=(3,))} for _ in range(3)]


def test_l2_l1_and_max_norm_on_three_groups_follow_the_formula_of_each(x64):
    lr, mu, lam2, lam1, c = 0.1, 0.9, 0.3, 0.05, 2.0
    opt = O.partition({
        "0/*": O.chain(O.add_penalty(fn.regularizers.l2(lam2)), O.sgd(lr, momentum=mu)),
        "1/*": O.chain(O.add_penalty(fn.regularizers.l1(lam1)), O.sgd(lr, momentum=mu)),
        "2/*": O.chain(O.sgd(lr, momentum=mu), O.project_max_norm(c)),
    })
    params = jax.tree.map(jnp.asarray, _layers())
    state, update = opt.init(params), jax.jit(opt.update)
    expected, velocity = _layers(), [{k: np.zeros_like(v) for k, v in layer.items()}
                                     for layer in _layers()]
    rng = np.random.default_rng(1)
    for _ in range(STEPS):
        grads = [{k: rng.normal(size=v.shape) for k, v in layer.items()} for layer in _layers()]
        updates, state = update(jax.tree.map(jnp.asarray, grads), state, params)
        params = O.apply_updates(params, updates)
        for i, (layer, g, v) in enumerate(zip(expected, grads, velocity)):
            penalty = {0: lam2 * layer["w"], 1: lam1 * np.sign(layer["w"]), 2: 0.0}[i]
            for name in ("w", "b"):   # the penalties and the constraint touch the kernels only
                v[name] = mu * v[name] + g[name] + (penalty if name == "w" else 0.0)
                layer[name] = layer[name] - lr * v[name]
            if i == 2:   # each unit's incoming weights (a column) projected onto ‖w‖ ≤ c
                norms = np.linalg.norm(layer["w"], axis=0, keepdims=True)
                layer["w"] = layer["w"] * np.minimum(1.0, c / norms)
        chex.assert_trees_all_close(params, expected, rtol=1e-12, atol=1e-14)
    assert np.linalg.norm(np.asarray(params[2]["w"]), axis=0).max() <= c + 1e-12
    assert np.linalg.norm(np.asarray(params[2]["w"]), axis=0).min() < c   # not all clipped


def test_add_penalty_is_the_gradient_of_the_penalty_added_to_the_loss(x64):
    """chain(add_penalty(R), sgd) on ∇C₀ steps as sgd on ∇(C₀ + R), R by jax.grad."""
    reg = fn.regularizers.elastic_net(0.1, 0.2)
    params = jax.tree.map(jnp.asarray, _layers(2)[0])
    grads = jax.tree.map(jnp.asarray, _layers(3)[0])
    opt = O.chain(O.add_penalty(reg), O.sgd(0.1))
    updates, _ = opt.update(grads, opt.init(params), params)
    total = jax.tree.map(jnp.add, grads, jax.grad(reg)(params))
    chex.assert_trees_all_close(updates, jax.tree.map(lambda g: -0.1 * g, total), rtol=1e-12)
    assert float(jnp.abs(updates["b"] + 0.1 * grads["b"]).max()) == 0.0   # biases unpenalised


def test_add_penalty_rejects_what_is_not_a_regularizer():
    with pytest.raises(TypeError, match="add_penalty: expected a regularizer"):
        O.add_penalty(0.1)
    with pytest.raises(ValueError, match="add_penalty reads the parameters"):
        O.add_penalty(fn.regularizers.l2(0.1)).update({"w": jnp.ones(2)}, O.EmptyState())
