"""Gauss-Newton with softmax/sigmoid cross-entropy: sums against brute force, the damped step, LM, pipeline, resume."""
import numpy as np
import pytest

from solvers.config import TrainConfig
from solvers.cross_entropy import SHIFT
from solvers.errors import InputError
from solvers.gauss_newton import STEP_RIDGE, GaussNewtonSolver
from solvers.losses import targets
from solvers.reference import InMemoryRunner, fit_in_memory
from solvers.stats import moment_sums, moments_from_sums
from tests.conftest import make_data, net_output, output_jacobian, quiet, weight_gradient

ACTS = {"relu": lambda z: np.maximum(z, 0), "sigmoid": lambda z: 1 / (1 + np.exp(-z))}


def make_problem(n=40, d=3, hidden=(5, 4), n_classes=3, activation="relu", seed=0, alpha=0.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 2, d)
    y = rng.integers(0, n_classes, n)
    cfg = TrainConfig(solver="gauss-newton", loss="cross-entropy", hidden=hidden, activation=activation, seed=seed,
                      iterations=3, alpha=alpha, validation_fraction=0)
    shift = X[0].copy()
    mean, scale = moments_from_sums(moment_sums(X, shift), shift)
    solver = GaussNewtonSolver(cfg, d, np.arange(n_classes), mean, scale, dtype=np.float64)
    weights = [W + rng.normal(0, 0.1, W.shape) for W in solver.initial_hidden()]
    weights.append(rng.normal(0, 0.5, (solver.widths[-1], solver.widths[-2] + 1)))
    return X, y, solver, weights


def brute_probabilities(z):
    """Return p of the outputs: σ(z − ½) for one unit, softmax otherwise (a plain transcription)."""
    if z.shape[1] == 1:
        return 1 / (1 + np.exp(-(z - SHIFT)))
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def brute_loss(z, T):
    """Return Σ −t log p, with the 0/1 classes of one unit as t log p + (1 − t) log(1 − p)."""
    p = brute_probabilities(z)
    if z.shape[1] == 1:
        return -float(np.sum(T * np.log(p) + (1 - T) * np.log(1 - p)))
    return -float(np.sum(T * np.log(p)))


def brute_curvature(p):
    """Return the per-row output curvature H = ∂²ℓ/∂z² (by its textbook formula)."""
    if p.shape[1] == 1:
        return np.array([[p[0, 0] * (1 - p[0, 0])]])
    return np.diag(p[0]) - np.outer(p[0], p[0])


def brute_force_sums(solver, weights, X, y, act):
    """Return the loss and, per layer l = 1..L, S_l = Σ J_iᵀ H_i J_i and D_l = −∂Σℓ/∂W_l by finite differences."""
    x = (X - solver.x_mean) / solver.x_scale
    T = targets(y, solver.n_classes, np.float64)
    h, out, L = 1e-6, {}, solver.L
    for l in range(1, L + 1):
        width = solver.widths[l]
        S = np.zeros((width, width))
        for i in range(len(x)):
            J = np.eye(width) if l == L else output_jacobian(solver, weights, x[i:i + 1], act, l, h)
            H = brute_curvature(brute_probabilities(net_output(solver, weights, x[i:i + 1], act)))
            S += J.T @ H @ J
        D = -weight_gradient(lambda w: brute_loss(net_output(solver, w, x, act), T), weights, l, h)
        out[l] = (S, D)
    return brute_loss(net_output(solver, weights, x, act), T), out


@pytest.mark.parametrize("hidden,n_classes,activation", [
    ((5,), 2, "relu"), ((5, 4), 3, "relu"), ((4, 3, 3), 2, "sigmoid"), ((4, 3, 3), 3, "relu"), ((5,), 4, "sigmoid"),
])
def test_gradient_and_generalised_gauss_newton_curvature_match_brute_force(hidden, n_classes, activation):
    """Pass B's D_l, S_l (hidden: Σ Jᵀ H J; output: Σ H) and loss equal finite differences and the textbook H."""
    X, y, solver, weights = make_problem(hidden=hidden, n_classes=n_classes, activation=activation)
    _, packed = solver.curvature_chunk(X, y, None, 0, tuple(weights))
    curv = solver.curvature_layout().unpack(packed)
    S_ours = [*solver.curvatures(weights, curv), curv[f"curv{solver.L}"]]
    loss, sums = brute_force_sums(solver, weights, X, y, ACTS[activation])
    assert float(curv["loss"]) == pytest.approx(loss, rel=1e-10)
    for l, (S, D) in sums.items():
        np.testing.assert_allclose(S_ours[l - 1], S, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(curv[f"grad{l}"], D, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_forward_pass_losses_are_each_output_trials_cross_entropy(n_classes):
    X, y, solver, weights = make_problem(n_classes=n_classes, alpha="auto")
    rng = np.random.default_rng(1)
    J = len(solver.output_alphas(1.0))
    trials = np.stack([weights[-1] + rng.normal(0, 0.3, weights[-1].shape) for _ in range(J)])
    params = solver._forward_params(weights[:-1], False, {"T_out": trials})
    _, packed = solver.forward_chunk(X, y, None, 0, params)
    sums = solver.forward_layout(False).unpack(packed)
    x = (X - solver.x_mean) / solver.x_scale
    T = targets(y, n_classes, np.float64)
    for j in range(J):
        expected = brute_loss(net_output(solver, [*weights[:-1], trials[j]], x, ACTS["relu"]), T)
        assert sums["ce"][j] == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("alpha,n_classes", [(0.0, 3), (0.0, 2), (0.8, 3), (2.0, 2)])
def test_first_step_equals_dense_generalised_gauss_newton(alpha, n_classes):
    """The trials after initialisation equal a dense transcription of the damped GGN step (α = 0: unregularised).

    The output layer starts at p = 1/K; every layer l (the output one too) steps
    ``W + η n (S_l + (λ s̄ + π√(αn)) I)⁻¹ (D_l − α W̃_l) (G_{l−1} + (ε' ḡ + √(αn)/π) I)⁻¹``.
    """
    X, y, solver, _ = make_problem(n=30, hidden=(5, 4), n_classes=n_classes, alpha=alpha)
    state = solver.initialize(InMemoryRunner(solver, X, y, 7))
    c, act, n = solver.config, ACTS["relu"], len(X)
    weights = [*solver.initial_hidden(), solver.initial_output()]
    assert np.allclose(brute_probabilities(net_output(solver, weights, (X - solver.x_mean) / solver.x_scale, act)),
                       1 / max(n_classes, 2))
    _, sums = brute_force_sums(solver, weights, X, y, act)
    a = (X - solver.x_mean) / solver.x_scale
    inputs = []
    for W in weights:
        a1 = np.hstack([a, np.ones((len(a), 1))])
        inputs.append(a1.T @ a1)
        a = act(a1 @ W.T)
    for l, (S, D) in sums.items():
        G, W = inputs[l - 1], weights[l - 1]
        ours = state.carry["T_out"][0] if l == solver.L else state.carry[f"T{l}"]
        if l < solver.L:  # the zero output layer hides the hidden ones from the loss: they stay
            assert not np.any(S) and not np.any(D)
            np.testing.assert_array_equal(ours, W)
            continue
        if alpha:
            D = D - alpha * np.column_stack([W[:, :-1], np.zeros(len(W))])
            pi = np.sqrt(np.mean(np.diag(S)) / np.mean(np.diag(G)[:-1]))
            S = S + pi * np.sqrt(alpha * n) * np.eye(len(S))
            G = G + np.sqrt(alpha * n) / pi * np.eye(len(G))
        s_mean = np.mean(np.diag(S)) or 1.0
        Sd = S + c.damping * s_mean * np.eye(len(S))
        Gd = G + max(c.ridge, STEP_RIDGE) * np.mean(np.diag(G)) * np.eye(len(G))
        expected = W + c.step_size * n * np.linalg.solve(Sd, D) @ np.linalg.inv(Gd)
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-8)
    assert list(state.carry["out_alphas"]) == [alpha]


@pytest.mark.parametrize("n_classes", [2, 3])
def test_objective_with_alpha_never_rises(digits_0_vs_2, n_classes):
    """Fixed α: the LM test compares Σℓ + αΣ‖W̃‖², accepts exactly when it does not rise, and the record says so."""
    X, _, y, _ = digits_0_vs_2
    if n_classes == 3:
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        keep = y < 3
        X, y = X[keep], y[keep]
    alpha = 2.0
    cfg = TrainConfig(solver="gauss-newton", loss="cross-entropy", hidden=(20,), step_size=4.0, damping=0.05,
                      iterations=10, alpha=alpha, validation_fraction=0)
    result = fit_in_memory(X, y, cfg, chunk_rows=100)
    history = result.history
    assert any(not h["accepted"] for h in history) and any(h["accepted"] for h in history)
    weights = result.loop_state.weights
    decay = alpha * sum(np.sum(np.asarray(W)[:, :-1] ** 2) for W in weights)
    n = len(X)
    assert history[-1]["objective"] * n == pytest.approx(history[-1]["loss"] * n + decay, rel=1e-5)
    for prev, h in zip(history, history[1:]):
        assert h["accepted"] == (h["trial_loss"] <= prev["objective"])
        assert h["objective"] <= prev["objective"] + 1e-12
        assert h["alpha"] == alpha


def test_auto_alpha_takes_the_trial_of_least_held_out_loss(digits_0_vs_2):
    """alpha auto: pass A's held-out Σℓ of every trial W_L(α_j) picks α (ties: the larger); the fit learns."""
    X, y, solver, weights = make_problem(alpha="auto")
    J = len(solver.output_alphas(1.0))
    carry = {"out_alphas": np.arange(J, dtype=float), "T_out": np.arange(J)[:, None, None] * np.ones((J, 3, 5))}
    held = {"ce": np.full(J, 5.0)}
    held["ce"][[3, 7]] = 1.0
    W, loss, alpha = solver.output_layer({"ce": 10.0 + np.arange(J)}, held, carry)
    assert (alpha, loss) == (7.0, 17.0) and np.all(W == 7)
    X, Xt, y, yt = digits_0_vs_2
    cfg = TrainConfig(solver="gauss-newton", loss="cross-entropy", hidden=(16,), iterations=4, validation_fraction=0.2)
    result = fit_in_memory(X, y, cfg, X_test=Xt, y_test=yt)
    assert len(result.loop_state.carry["out_alphas"]) == J and result.loop_state.carry["out_alphas"][0] == 0
    assert result.history[-1]["test_accuracy"] >= 0.95


@pytest.mark.parametrize("n_classes", [2, 4])
def test_output_trial_path_equals_one_damped_step_per_alpha(n_classes):
    """alpha auto: the grid of output trials from one eigendecomposition equals :meth:`layer_step` α by α."""
    X, y, solver, weights = make_problem(n_classes=n_classes, alpha="auto")
    _, packed = solver.curvature_chunk(X, y, None, 0, tuple(weights))
    curv = solver.curvature_layout().unpack(packed)
    alphas, trials = solver.output_trials(weights, curv, None, 0.3)
    L, n = solver.L, float(curv["n"])
    assert len(alphas) > 1 and alphas[0] == 0 and np.all(np.diff(alphas) > 0)
    for alpha, trial in zip(alphas, trials):
        expected = solver.layer_step(L, weights[-1], curv[f"grad{L}"], curv[f"curv{L}"], curv[f"gram{L}"], 0.3,
                                     alpha, n)
        np.testing.assert_allclose(trial, expected, rtol=1e-7, atol=1e-9)


def test_cross_entropy_network_gives_softmax_probabilities():
    from solvers.cross_entropy import probabilities

    X, y, solver, weights = make_problem(n_classes=3)
    net = solver.network(weights)
    assert net.link == "logistic"
    z = net.decision_function(X)
    np.testing.assert_allclose(net.predict_proba(X), np.clip(probabilities(z), 1e-3, None)
                               / np.clip(probabilities(z), 1e-3, None).sum(axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(net.predict(X), np.argmax(net.predict_proba(X), axis=1))
    X2, y2, solver2, weights2 = make_problem(n_classes=2)
    net2 = solver2.network(weights2)
    p1 = 1 / (1 + np.exp(-(net2.decision_function(X2)[:, 0] - 0.5)))
    np.testing.assert_allclose(net2.predict_proba(X2)[:, 1], np.clip(p1, 1e-3, 1 - 1e-3), rtol=1e-5)
    np.testing.assert_array_equal(net2.predict(X2), (p1 > 0.5).astype(int))


def test_cross_entropy_is_refused_where_it_is_not_fitted():
    with pytest.raises(InputError, match="loss cross-entropy is fitted by the gauss-newton and consensus"):
        TrainConfig(solver="admm", loss="cross-entropy")
    with pytest.raises(InputError, match="regression fits the squared loss"):
        TrainConfig(task="regression", loss="cross-entropy")
    assert TrainConfig(solver="gauss-newton", loss="squared").output_link() == "identity"
    assert TrainConfig(solver="gauss-newton", loss="cross-entropy").output_link() == "logistic"


def test_pipeline_cross_entropy_matches_reference_and_resumes_bitwise(client, tmp_path):
    from pipeline.model import load_network
    from pipeline.training import train
    from storage.data import write_data

    X, y = make_data(n=2400, n_classes=3)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=200)
    cfg = TrainConfig(solver="gauss-newton", loss="cross-entropy", hidden=(12,), iterations=6, seed=3)
    full = train(client, store=tmp_path / "full.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=200,
                 report=quiet)
    ref = fit_in_memory(X, y, cfg, chunk_rows=200)
    assert [h["accepted"] for h in full.history] == [h["accepted"] for h in ref.history]
    assert [h["alpha"] for h in full.history] == pytest.approx([h["alpha"] for h in ref.history], rel=1e-5)
    for W, W_ref in zip(full.network.weights, ref.network.weights):
        np.testing.assert_allclose(W, W_ref, rtol=1e-4, atol=1e-5)
    part = TrainConfig(**{**cfg.to_dict(), "iterations": 3})
    train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=part, chunk_rows=200, report=quiet)
    more = train(client, store=tmp_path / "r.zarr", resume=True, iterations=6, report=quiet)
    for W, W_full in zip(more.network.weights, full.network.weights):
        np.testing.assert_array_equal(W, W_full)
    assert [h["objective"] for h in more.history] == [h["objective"] for h in full.history]
    assert load_network(tmp_path / "r.zarr").link == "logistic"
