"""ADMM and dlADMM with ``input_skip``: the model's refitted output layer reads ``[ã_{L−1}; a_0]`` (solvers/readout.py).

The closed-form (ridge) and logistic refits on the wider features against dense and brute-force solutions, the
network's forward pass with the skip block, the iterations left as they are, the Dask pipeline equal to the
in-memory reference, and a resumed run bitwise equal to an uninterrupted one.
"""
from dataclasses import replace

import numpy as np
import pytest
import scipy.optimize

from solvers import cross_entropy as ce
from solvers import readout
from solvers.config import TrainConfig
from solvers.linalg import ALPHA_GRID
from solvers.losses import encode_labels, targets
from solvers.reference import fit_in_memory
from solvers.validation import RowSplit
from tests.conftest import make_data, quiet


def ones(a):
    return np.column_stack([a, np.ones(len(a))])


def skip_features(solver, X, weights):
    """Return ``[h(… W_1 a_0); a_0]`` of raw rows ``X`` for the hidden ``weights`` (float64), as the refit sees them."""
    x = solver.inputs(X)
    a = x
    for W in weights[:-1]:
        a = solver.act.h(a @ W[:, :-1].T.astype(a.dtype) + W[:, -1].astype(a.dtype))
    return np.column_stack([a, x]).astype(np.float64)


def split_rows(n, cfg):
    held = RowSplit(cfg.validation_fraction, cfg.seed).mask(0, n)  # the held-out rows, spread over every chunk
    return np.flatnonzero(~held), np.flatnonzero(held)


@pytest.mark.parametrize("solver_name", ["admm", "dladmm"])
def test_regression_refit_with_the_skip_block_is_the_brute_force_ridge_fit(solver_name):
    """W_L(α) = C (G + α Ĩ)⁻¹ on the features [ã_{L−1}; a_0]: α of least held-out squared error over the grid, and
    the chosen W_L minimises Σ‖T − W [ã; a_0; 1]‖² + α‖W̃‖² (both blocks penalised alike, bias spared) by BFGS."""
    rng = np.random.default_rng(3)
    n = 600
    X = rng.normal(size=(n, 5))
    y = 2 * X[:, 0] - X[:, 1] ** 2 + rng.normal(scale=0.3, size=n)
    cfg = TrainConfig(solver=solver_name, task="regression", hidden=(10,), iterations=2, seed=2,
                      validation_fraction=0.2, input_skip=True)
    r = fit_in_memory(X, y, cfg, chunk_rows=50, dtype=np.float64)
    solver, state = r.solver, r.loop_state
    tr, ho = split_rows(n, cfg)
    T = ((y - solver.task.y_mean) / solver.task.y_scale)[:, None]
    own = solver.iterate(state)
    assert own[-1].shape == (1, 10 + 1)  # the iteration's own W_L reads a_{L−1} only (the paper's)
    assert state.weights[-1].shape == (1, 10 + 5 + 1)  # the model's: [ã_{L−1}; a_0; 1]
    F_tr, F_ho = skip_features(solver, X[tr], own), skip_features(solver, X[ho], own)
    gbar = np.mean(np.var(F_tr, axis=0)) * len(tr)
    floor = cfg.ridge * gbar
    P = np.diag(np.r_[np.ones(F_tr.shape[1]), 0.0])

    def dense(alpha):
        return np.linalg.solve(ones(F_tr).T @ ones(F_tr) + alpha * P, ones(F_tr).T @ T[tr]).T

    errors = [np.sum((T[ho] - ones(F_ho) @ dense(a + floor).T) ** 2) for a in ALPHA_GRID * gbar]
    best = len(errors) - 1 - int(np.argmin(errors[::-1]))
    alpha = ALPHA_GRID[best] * gbar + floor
    W = state.weights[-1]
    np.testing.assert_allclose(W, dense(alpha), rtol=1e-6, atol=1e-8)
    assert r.history[-1]["alpha"] == pytest.approx(ALPHA_GRID[best] * gbar, rel=1e-9)

    def objective(w):
        Wm = w.reshape(W.shape)
        return float(np.sum((T[tr] - ones(F_tr) @ Wm.T) ** 2) + alpha * np.sum(Wm[:, :-1] ** 2))

    def gradient(w):
        Wm = w.reshape(W.shape)
        g = -2 * (T[tr] - ones(F_tr) @ Wm.T).T @ ones(F_tr)
        g[:, :-1] += 2 * alpha * Wm[:, :-1]
        return g.ravel()

    brute = scipy.optimize.minimize(objective, np.zeros(W.size), jac=gradient, method="BFGS",
                                    options={"gtol": 1e-10, "maxiter": 10_000}).x
    np.testing.assert_allclose(W.ravel(), brute, rtol=1e-4, atol=1e-5)
    assert objective(W.ravel()) <= objective(brute) + 1e-7
    # the network computes W_L [h(…); a_0; 1], mapped back to the target's units
    pred = ones(skip_features(solver, X[:40], own)) @ W.T * solver.task.y_scale + solver.task.y_mean
    np.testing.assert_allclose(solver.network(state.weights).predict(X[:40]), pred[:, 0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("solver_name", ["admm", "dladmm"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_logistic_refit_with_the_skip_block(solver_name, n_classes):
    """Classification: the candidates live on [ã_{L−1}; a_0]: the model is the one of least held-out cross-entropy
    (computed here row by row on the wider features), and each candidate takes the MM step solved densely."""
    rng = np.random.default_rng(1)
    n = 600
    X = rng.normal(size=(n, 6))
    y = (X[:, 0] + X[:, 1] ** 2 + rng.normal(scale=0.5, size=n) > 1).astype(int) + (X[:, 2] > 1) * (n_classes - 2)
    k = 3
    cfg = TrainConfig(solver=solver_name, hidden=(12,), iterations=k, seed=4, validation_fraction=0.2, input_skip=True,
                      readout_refit=False)  # the model is R_j (the refit on all rows: test_readout_refit.py)
    before = fit_in_memory(X, y, replace(cfg, iterations=k - 1), chunk_rows=50, dtype=np.float64)
    r = fit_in_memory(X, y, cfg, chunk_rows=50, dtype=np.float64)
    tr, ho = split_rows(n, cfg)
    T = targets(encode_labels(y, np.unique(y)), n_classes, np.float64)
    solver, state = r.solver, r.loop_state
    own = solver.iterate(state)
    F_tr, F_ho = skip_features(solver, X[tr], own), skip_features(solver, X[ho], own)
    evaluated = np.asarray(before.loop_state.carry["R"])
    assert evaluated.shape[1:] == (T.shape[1], 12 + 6 + 1)
    losses = np.array([ce.loss_sum(ones(F_ho) @ W.T, T[ho]) for W in evaluated])
    j = len(losses) - 1 - int(np.argmin(losses[::-1]))
    assert r.history[-1]["validation_loss"] == pytest.approx(losses[j] / len(ho), rel=1e-9)
    np.testing.assert_allclose(state.weights[-1], evaluated[j], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(solver.network(state.weights).decision_function(X[ho]), ones(F_ho) @ evaluated[j].T,
                               rtol=1e-9, atol=1e-9)
    c = readout.bound(T.shape[1])
    At = ones(F_tr)
    gbar = np.mean(np.var(F_tr, axis=0)) * len(tr)
    P = np.diag(np.r_[np.ones(F_tr.shape[1]), 0.0])
    for jj, alpha in enumerate(np.asarray(state.carry["R_alphas"])):
        V = evaluated[jj]
        g = (T[tr] - ce.probabilities(At @ V.T)).T @ At
        g[:, :-1] -= alpha * V[:, :-1]
        step = np.linalg.solve(c * At.T @ At + (alpha + cfg.ridge * c * gbar) * P, g.T).T
        np.testing.assert_allclose(state.carry["R_x"][jj], V + step, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("solver_name", ["admm", "dladmm"])
def test_the_iterations_are_those_without_the_skip_path(solver_name):
    """The skip path lives in the model's refit only: the iterates (hidden weights, own W_L, objective) are the same."""
    X, y = make_data(n=800, n_classes=3)
    cfg = TrainConfig(solver=solver_name, hidden=(12,), iterations=3, seed=1)
    a = fit_in_memory(X, y, replace(cfg, input_skip=False), chunk_rows=200)
    b = fit_in_memory(X, y, replace(cfg, input_skip=True), chunk_rows=200)
    for W, W_b in zip(a.solver.iterate(a.loop_state), b.solver.iterate(b.loop_state)):
        np.testing.assert_array_equal(W, W_b)
    assert [h["objective"] for h in a.history] == [h["objective"] for h in b.history]
    assert b.network.weights[-1].shape == (3, 12 + 10 + 1)


@pytest.mark.parametrize("solver_name", ["admm", "dladmm"])
def test_no_skip_path_without_a_refit(solver_name):
    """A numeric alpha or nothing held out: no refit, so the model is the iterate, whose W_L reads a_{L−1} only."""
    X, y = make_data(n=600)
    for cfg in (TrainConfig(solver=solver_name, hidden=(8,), iterations=2, alpha=0.01, input_skip=True),
                TrainConfig(solver=solver_name, hidden=(8,), iterations=2, validation_fraction=0, input_skip=True)):
        r = fit_in_memory(X, y, cfg, chunk_rows=200)
        assert r.network.weights[-1].shape == (1, 8 + 1)


@pytest.mark.parametrize("solver_name", ["admm", "dladmm"])
def test_pipeline_equals_in_memory_and_the_stored_model_predicts(client, tmp_path, solver_name):
    """The Dask pipeline with input_skip equals the in-memory reference; the committed model (load_network) and
    the estimator predict with the skip block."""
    from pipeline.model import load_network
    from pipeline.training import train
    from storage.data import write_data

    X, y = make_data(n=2000, n_classes=3)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=512)
    cfg = TrainConfig(solver=solver_name, hidden=(12, 8), iterations=3, seed=3, input_skip=True)
    result = train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=512,
                   report=quiet)
    ref = fit_in_memory(X, y, cfg, chunk_rows=512)
    assert ref.network.weights[-1].shape == (3, 8 + 10 + 1)
    for W, W_ref in zip(result.network.weights, ref.network.weights):
        np.testing.assert_allclose(W, W_ref, rtol=2e-4, atol=2e-5)
    disk = load_network(tmp_path / "r.zarr")
    for W, W_disk in zip(result.network.weights, disk.weights):
        np.testing.assert_array_equal(W, W_disk)
    np.testing.assert_allclose(disk.predict_proba(X[:50]), ref.network.predict_proba(X[:50]), rtol=1e-3, atol=1e-4)
    assert np.mean(disk.predict(X) == ref.network.predict(X)) > 0.99


def test_pipeline_resume_with_the_skip_path_equals_an_uninterrupted_run(client, tmp_path):
    """ADMM and dlADMM with input_skip: 2 iterations then --resume to 4 is bitwise the 4-iteration run."""
    from pipeline.training import train
    from storage.data import write_data

    X, y = make_data(n=1500, n_classes=3)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=512)
    for name in ("admm", "dladmm"):
        cfg = TrainConfig(solver=name, hidden=(10, 6), iterations=4, input_skip=True)
        full = train(client, store=tmp_path / f"{name}-full.zarr", data=tmp_path / "d.zarr", config=cfg, report=quiet)
        train(client, store=tmp_path / f"{name}-part.zarr", data=tmp_path / "d.zarr", report=quiet,
              config=replace(cfg, iterations=2))
        resumed = train(client, store=tmp_path / f"{name}-part.zarr", resume=True, iterations=4, report=quiet)
        assert [h["iteration"] for h in resumed.history] == [1, 2, 3, 4]
        assert resumed.network.weights[-1].shape == (3, 6 + 10 + 1)
        for a, b in zip(full.network.weights, resumed.network.weights):
            np.testing.assert_array_equal(a, b)


def test_estimator_exposes_the_skip_block_in_coefs():
    """The classifier's last ``coefs_`` has ``n_{L−1} + d`` rows (hidden units, then inputs); predict uses them."""
    from pipeline.estimator import ADMMClassifier

    X, y = make_data(n=600)
    est = ADMMClassifier(solver="admm", hidden_layer_sizes=(8,), max_iter=2, input_skip=True, random_state=0).fit(X, y)
    assert est.coefs_[-1].shape == (8 + 10, 1)
    a = np.maximum(0, est.network_.decision_function(X[:5]))  # smoke: finite outputs
    assert np.all(np.isfinite(a)) and est.predict(X[:5]).shape == (5,)


def test_partial_gram_completed_by_the_input_gram_is_the_whole_gram():
    """Tiles sum Σ f̃ f̃ᵀ of f = [a, x] without the [x, 1] block; the input Gram added on the client completes it."""
    from solvers.linalg import gram_with_bias

    rng = np.random.default_rng(5)
    a, x = rng.normal(size=(50, 7)), rng.normal(size=(50, 4)) + 2
    f = np.column_stack([a, x])
    np.testing.assert_allclose(readout.complete_gram(readout.partial_gram(f, 4), gram_with_bias(x), 4), gram_with_bias(f),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(readout.partial_gram(f, 0), gram_with_bias(f))
    with pytest.raises(ValueError, match="needs the 5 x 5 input Gram"):  # e.g. a conv layer's patch Gram
        readout.complete_gram(readout.partial_gram(f, 4), gram_with_bias(x[:, :2]), 4)


def test_the_skip_path_with_convolutional_layers_is_refused_in_one_line():
    """A conv first layer reduces patch Grams, not the dense input Gram the skip block needs (review finding)."""
    with pytest.raises(ValueError, match="input_skip .*needs dense layers"):
        TrainConfig(solver="admm", layers="conv:4x3x3,conv:4x3x3:s2:same", input_shape=(8, 8, 1), input_skip=True)
    TrainConfig(solver="admm", layers="conv:4x3x3,conv:4x3x3:s2:same", input_shape=(8, 8, 1))  # without it: fine
