"""The one-pass reference equals a literal transcription of Algorithm 1 (Taylor et al. 2016).

The transcription below is written independently of ``solvers/admm.py``: samples
are columns as in the paper, the W-step is ``z a†`` with NumPy's pseudo-inverse (or, where a
test sets a ridge, ``z aᵀ(a aᵀ + ε·mean diag·I)⁻¹`` by a dense solve),
the a-step is a dense solve of eq. 6, and the loop order is the algorithm box's.
"""
import numpy as np
import pytest

from solvers import SOLVERS
from solvers.activations import ACTIVATIONS
from solvers.config import TrainConfig
from solvers.losses import LOSSES, encode_labels, targets
from solvers.loop import initialize, iterate
from solvers.reference import InMemoryRunner, fit_in_memory
from solvers.stats import moment_sums, moments_from_sums


def ones_row(a):
    return np.vstack([a, np.ones((1, a.shape[1]))])


def w_step(z, a, ridge, alpha=0.0):
    """Return z a† (ridge and α 0) or the normal equations with the ridge and α‖W̃‖² (bias spared)."""
    A = ones_row(a)
    if ridge == 0 and alpha == 0:
        return z @ np.linalg.pinv(A)
    G = A @ A.T
    if alpha == "auto":
        alpha = 0.01 * np.mean(np.diag(G)[:-1])
    G += ridge * np.mean(np.diag(G)) * np.eye(G.shape[0]) + alpha * np.diag(np.r_[np.ones(len(G) - 1), 0])
    return np.linalg.solve(G, A @ z.T).T


def algorithm1(a0, T, W0, act, loss, gamma, beta, iterations, warm_start, ridge, alpha=0.0):
    """Literal Algorithm 1 (columns are samples), state initialised by a forward pass of W0."""
    L = len(W0)
    h, zupd = ACTIVATIONS[act].h, ACTIVATIONS[act].z_update
    W = [None] + [w.copy() for w in W0]
    a, z = [a0], [None]
    for l in range(1, L + 1):
        z.append(W[l] @ ones_row(a[l - 1]))
        if l < L:
            a.append(h(z[l]))
    lam = np.zeros_like(z[L])
    for k in range(1, iterations + 1):
        for l in range(1, L):
            W[l] = w_step(z[l], a[l - 1], ridge, alpha)
            Wn, bn = W[l + 1][:, :-1], W[l + 1][:, -1:]
            n_l = Wn.shape[1]
            a[l] = np.linalg.solve(beta * Wn.T @ Wn + gamma * np.eye(n_l),
                                   beta * Wn.T @ (z[l + 1] - bn) + gamma * h(z[l]))
            z[l] = zupd(a[l], W[l] @ ones_row(a[l - 1]), gamma, beta)
        W[L] = w_step(z[L], a[L - 1], ridge, alpha)
        m = W[L] @ ones_row(a[L - 1])
        z[L] = LOSSES[loss].z_update(T, lam, m, beta)
        if k > warm_start:
            lam = lam + beta * (z[L] - m)
    return W[1:], z[1:], lam


@pytest.mark.parametrize("hidden,n_classes,act,loss,chunk_rows,ridge,alpha", [
    ((6,), 2, "relu", "hinge", None, 0.0, 0.0),
    ((6, 4), 3, "relu", "ovr-hinge", 70, 0.0, 0.0),
    ((8, 7, 6), 2, "hard-sigmoid", "squared", 33, 1e-6, 0.0),
    ((8, 7, 6), 4, "relu", "squared", 50, 1e-6, 0.0),
    ((4,), 2, "sigmoid", "hinge", None, 0.0, 0.0),
    ((6, 4), 3, "relu", "ovr-hinge", 70, 1e-6, 25.0),
    ((6,), 2, "relu", "hinge", None, 1e-6, "auto"),
])
def test_reference_equals_literal_algorithm1(hidden, n_classes, act, loss, chunk_rows, ridge, alpha):
    """α = 0 is the paper's Algorithm 1; α > 0 adds weight decay α‖W̃‖² to every W-solve."""
    rng = np.random.default_rng(7)
    n, d = 240, 5
    X = rng.normal(size=(n, d)) * 3 + 1
    y = rng.integers(0, n_classes, n)
    cfg = TrainConfig(solver="admm", hidden=hidden, activation=act, loss=loss, gamma=5.0, beta=0.5,
                      iterations=5, warm_start=2, ridge=ridge, seed=3, alpha=alpha, validation_fraction=0,
                      init="forward")
    shift = X[0].astype(np.float64)
    mean, scale = moments_from_sums(moment_sums(X, shift), shift)
    classes = np.unique(y)
    solver = SOLVERS["admm"](cfg, d, classes, mean, scale, dtype=np.float64)
    y_idx = encode_labels(y, classes)
    runner = InMemoryRunner(solver, X, y_idx, chunk_rows)
    state = initialize(solver, runner)
    w0 = solver.initial_weights()
    for state, _ in iterate(solver, runner, state, cfg.iterations):
        pass
    W_lit, z_lit, lam_lit = algorithm1(((X - mean) / scale).T, targets(y_idx, n_classes, np.float64).T, w0,
                                       act, loss, cfg.gamma, cfg.beta, cfg.iterations, cfg.warm_start, ridge, alpha)
    for W_ours, W_ref in zip(solver.iterate(state), W_lit):
        np.testing.assert_allclose(W_ours, W_ref, rtol=1e-7, atol=1e-8)
    if alpha == "auto":  # the model keeps the hidden weights; its output layer is the refit (test_readout.py)
        for W_ours, W_ref in zip(state.weights[:-1], W_lit[:-1]):
            np.testing.assert_allclose(W_ours, W_ref, rtol=1e-7, atol=1e-8)
    else:  # the model is the iterate
        assert "U" not in state.carry
    z_ours = runner.state_of(cfg.iterations)
    for l, zl in enumerate(z_lit, start=1):
        np.testing.assert_allclose(z_ours[f"z{l}"], zl.T, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(z_ours["lam"], lam_lit.T, rtol=1e-7, atol=1e-8)
    assert np.any(lam_lit != 0)  # the multiplier really was updated


def test_float32_reference_tracks_float64():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8))
    y = (X[:, 0] + X[:, 1] ** 2 > 1).astype(int)
    cfg = TrainConfig(solver="admm", hidden=(16,), iterations=4, validation_fraction=0)
    r32 = fit_in_memory(X, y, cfg, dtype=np.float32)
    r64 = fit_in_memory(X, y, cfg, dtype=np.float64)
    for a, b in zip(r32.network.weights, r64.network.weights):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3)


def test_result_does_not_depend_on_chunking():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 6))
    y = rng.integers(0, 3, 500)
    cfg = TrainConfig(solver="admm", hidden=(10, 5), iterations=4, validation_fraction=0)
    whole = fit_in_memory(X, y, cfg)
    chunked = fit_in_memory(X, y, cfg, chunk_rows=64)
    for a, b in zip(whole.network.weights, chunked.network.weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert [h["train_accuracy"] for h in whole.history] == pytest.approx(
        [h["train_accuracy"] for h in chunked.history], abs=0.01)


def test_seed_reproducible_and_gaussian_init_runs():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 4))
    y = (X[:, 0] > 0).astype(int)
    for init in ("forward", "gaussian"):
        cfg = TrainConfig(solver="admm", hidden=(8,), iterations=3, init=init, seed=11)
        a = fit_in_memory(X, y, cfg, chunk_rows=50)
        b = fit_in_memory(X, y, cfg, chunk_rows=50)
        for wa, wb in zip(a.network.weights, b.network.weights):
            np.testing.assert_array_equal(wa, wb)
    other = fit_in_memory(X, y, TrainConfig(solver="admm", hidden=(8,), iterations=3, seed=12))
    assert not np.allclose(other.network.weights[0], a.network.weights[0])


def test_history_records_metrics_and_outputs_are_float32():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(150, 4))
    y = (X[:, 0] > 0).astype(int)
    r = fit_in_memory(X, y, TrainConfig(solver="admm", hidden=(8,), iterations=3), X_test=X, y_test=y)
    assert [h["iteration"] for h in r.history] == [1, 2, 3]
    for h in r.history:
        assert {"seconds", "train_accuracy", "test_accuracy", "residual", "objective"} <= set(h)
        assert np.isfinite(h["residual"]) and np.isfinite(h["objective"])
    assert r.network.decision_function(X).dtype == np.float32
    assert set(np.unique(r.network.predict(X))) <= {0, 1}
