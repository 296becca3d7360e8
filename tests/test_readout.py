"""ADMM and dlADMM with alpha auto: the model's output layer is the targets refitted on the hidden features,
α of least held-out error (solvers/readout.py); the W-solves' α term against brute-force minimisation."""
import numpy as np
import pytest
import scipy.optimize

from solvers import readout
from solvers.config import TrainConfig
from solvers.linalg import ALPHA_GRID, solve_weights
from solvers.losses import encode_labels, targets
from solvers.reference import fit_in_memory
from solvers.validation import validation_split
from solvers.tiling import chunk_bounds


def ones(a):
    return np.column_stack([a, np.ones(len(a))])


def refit(A, T, alpha):
    """Return argmin_W ‖T − W ã‖² + α‖W̃‖² (bias spared) by a dense solve of the normal equations."""
    At = ones(A)
    P = np.diag(np.r_[np.ones(A.shape[1]), 0.0])
    return np.linalg.solve(At.T @ At + alpha * P, At.T @ T).T


@pytest.mark.parametrize("alpha", [0.0, 0.3, 40.0])
def test_w_solve_with_alpha_is_the_brute_force_minimiser(alpha):
    """solve_weights minimises Σ‖t − W ã‖² + α‖W̃‖² (bias not penalised); α = 0 is plain least squares."""
    rng = np.random.default_rng(0)
    a, t = rng.normal(size=(80, 4)) + 1.0, rng.normal(size=(80, 2))
    At = ones(a)
    W = solve_weights(t.T @ At, At.T @ At, 0.0, alpha=alpha)

    def objective(w):
        Wm = w.reshape(W.shape)
        return float(np.sum((t - At @ Wm.T) ** 2) + alpha * np.sum(Wm[:, :-1] ** 2))

    best = scipy.optimize.minimize(objective, np.zeros(W.size), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(W.ravel(), best, rtol=1e-5, atol=1e-6)
    assert objective(W.ravel()) <= objective(best) + 1e-9
    if alpha == 0:
        np.testing.assert_allclose(W, np.linalg.lstsq(At, t, rcond=None)[0].T, rtol=1e-8, atol=1e-10)


def forward_hidden(solver, X, weights):
    a = solver.inputs(X)
    for W in weights[:-1]:
        a = solver.act.h(a @ W[:, :-1].T.astype(a.dtype) + W[:, -1].astype(a.dtype))
    return a.astype(np.float64)


@pytest.mark.parametrize("solver_name", ["admm", "dladmm"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_model_output_layer_is_the_held_out_refit(solver_name, n_classes):
    """Every iteration's model: the iterate's hidden layers and W_L(α) refitted on the targets; α is the grid
    value of least held-out error, each W_L(α) solved directly from the samples."""
    rng = np.random.default_rng(1)
    n = 600
    X = rng.normal(size=(n, 6))
    y = (X[:, 0] + X[:, 1] ** 2 + rng.normal(scale=0.5, size=n) > 1).astype(int) + (X[:, 2] > 1) * (n_classes - 2)
    cfg = TrainConfig(solver=solver_name, hidden=(12,), iterations=3, seed=4, validation_fraction=0.2)
    chunk_rows = 50
    r = fit_in_memory(X, y, cfg, chunk_rows=chunk_rows, dtype=np.float64)
    solver, state = r.solver, r.loop_state
    train, held = validation_split(chunk_bounds(n, chunk_rows), 0.2, cfg.seed)
    rows = lambda bounds: np.concatenate([np.arange(a, b) for a, b in bounds])  # noqa: E731
    tr, ho = rows(train), rows(held)
    T = targets(encode_labels(y, np.unique(y)), n_classes, np.float64)
    own = solver.iterate(state)
    for W_model, W_own in zip(state.weights[:-1], own[:-1]):
        np.testing.assert_array_equal(W_model, W_own)  # the hidden layers are the iterate's
    A_tr, A_ho = forward_hidden(solver, X[tr], own), forward_hidden(solver, X[ho], own)
    gbar = np.mean(np.var(A_tr, axis=0)) * len(tr)  # the mean diagonal of the centred Gram
    floor = cfg.ridge * gbar
    errors = [np.sum((T[ho] - ones(A_ho) @ refit(A_tr, T[tr], alpha + floor).T) ** 2) for alpha in ALPHA_GRID * gbar]
    best = len(errors) - 1 - int(np.argmin(errors[::-1]))  # ties: the larger α
    assert r.history[-1]["alpha"] == pytest.approx(ALPHA_GRID[best] * gbar, rel=1e-9)
    np.testing.assert_allclose(state.weights[-1], refit(A_tr, T[tr], ALPHA_GRID[best] * gbar + floor),
                               rtol=1e-6, atol=1e-8)
    assert not np.allclose(state.weights[-1], own[-1])  # the refit is not the iterate's W_L


@pytest.mark.parametrize("solver_name", ["admm", "dladmm"])
def test_nothing_held_out_keeps_the_iterate_as_the_model(solver_name):
    """validation_fraction 0: no refit (GCV picks α ≈ 0 when the width nears the rows), the model is the iterate."""
    rng = np.random.default_rng(9)
    X, y = rng.normal(size=(300, 4)), rng.integers(0, 2, 300)
    r = fit_in_memory(X, y, TrainConfig(solver=solver_name, hidden=(8,), iterations=2, validation_fraction=0),
                      chunk_rows=40)
    assert "U" not in r.loop_state.carry and "alpha" not in r.history[-1]
    assert r.solver.iterate(r.loop_state) == r.loop_state.weights


def test_readout_fit_uses_gcv_without_held_out_chunks():
    """Nothing held out: α minimises generalised cross-validation on the training sums."""
    rng = np.random.default_rng(2)
    a, t = rng.normal(size=(200, 5)), rng.normal(size=(200, 1))
    sums = {"n": 200, **readout.parts(a, t)}
    W, alpha = readout.fit(sums, None, 0.0)
    from solvers.linalg import RidgePath

    path = RidgePath(sums["out_cross"], sums["out_gram"], 0.0)
    gcv = [path.gcv(al, sums["out_tt"]) for al in path.grid()]
    assert path.gcv(alpha, sums["out_tt"]) == pytest.approx(min(gcv))
    np.testing.assert_allclose(W, refit(a, t, alpha), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("solver_name", ["admm", "dladmm"])
def test_numeric_alpha_keeps_the_iterate_as_the_model(solver_name):
    """alpha = a number: no refit, no held-out sums in the pass; the model is the iterate (α = 0: the paper's)."""
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(300, 4)), rng.integers(0, 2, 300)
    r = fit_in_memory(X, y, TrainConfig(solver=solver_name, hidden=(8,), iterations=2, alpha=0.0), chunk_rows=40)
    assert "U" not in r.loop_state.carry
    assert "alpha" not in r.history[-1]
    assert r.solver.iterate(r.loop_state) == r.loop_state.weights


@pytest.mark.parametrize("solver_name", ["admm", "dladmm"])
def test_data_init_first_layer_points_along_differences_of_training_rows(solver_name):
    """init auto is data for the ADMM solvers: each W_1⁰ row is √2 (x_i − x_i')/‖x_i − x_i'‖ for two picked
    training rows (held-out rows never picked), the same for any chunking; deeper layers stay He."""
    from solvers import data_init
    from solvers.driver import split_chunks

    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(700, 5)) * [1, 2, 3, 4, 5], rng.integers(0, 2, 700)
    cfg = TrainConfig(solver=solver_name, hidden=(9, 4), iterations=1, seed=6)
    assert cfg.resolved_init() == "data"
    for chunk_rows in (70, 100):
        r = fit_in_memory(X, y, cfg, chunk_rows=chunk_rows, dtype=np.float64)
        solver = r.solver
        _, train, held = split_chunks(len(X), chunk_rows, len(X), cfg)
        from solvers.reference import InMemoryRunner

        runner = InMemoryRunner(solver, X, y, bounds=train, held_out=held)
        W0 = solver.initial_weights(runner)
        rows = data_init.pick_rows(train, 18, cfg.seed)
        assert not set(rows) & {i for a, b in held for i in range(a, b)}
        D = solver.inputs(X[rows[:9]]) - solver.inputs(X[rows[9:]])
        np.testing.assert_allclose(W0[0][:, :-1], D / np.linalg.norm(D, axis=1, keepdims=True) * np.sqrt(2),
                                   rtol=1e-12)
        assert np.all(W0[0][:, -1] == 0)
        np.testing.assert_array_equal(W0[1], solver.he_weights(2)[1])
    # another chunking holds out other rows, so compare the picking rule itself
    bounds = [(0, 350), (350, 700)]
    np.testing.assert_array_equal(data_init.pick_rows(bounds, 40, 1), data_init.pick_rows([(0, 700)], 40, 1))


def test_data_init_keeps_he_rows_for_equal_pairs_and_refuses_convolutions():
    from solvers import data_init
    from solvers.errors import InputError

    he = np.arange(12.0).reshape(3, 4)
    rows = np.array([[1.0, 2, 3], [0, 0, 1], [5, 5, 5], [1.0, 2, 3], [0, 0, 0], [5, 5, 5]])
    W = data_init.first_layer(rows, he, 2.0)
    np.testing.assert_array_equal(W[0, :-1], he[0, :-1])  # x_i = x_i': the He row
    np.testing.assert_allclose(W[1, :-1], [0, 0, np.sqrt(2)])
    assert np.all(W[:, -1] == 0)
    with pytest.raises(InputError, match="init data needs a dense first layer"):
        TrainConfig(solver="admm", layers="conv:4x3x3,dense:10", init="data")
    assert TrainConfig(solver="admm", layers="conv:4x3x3,dense:10").resolved_init() == "forward"
    assert TrainConfig(solver="gauss-newton").resolved_init() == "forward"


def test_data_init_keeps_he_rows_when_the_rows_are_too_wide_to_gather(monkeypatch):
    from solvers import data_init
    from solvers.reference import InMemoryRunner

    rng = np.random.default_rng(8)
    X, y = rng.normal(size=(200, 6)), rng.integers(0, 2, 200)
    r = fit_in_memory(X, y, TrainConfig(solver="admm", hidden=(5,), iterations=1, validation_fraction=0))
    runner = InMemoryRunner(r.solver, X, y, chunk_rows=50)
    assert not np.array_equal(r.solver.initial_weights(runner)[0], r.solver.he_weights(1)[0])
    monkeypatch.setattr(data_init, "MAX_VALUES", 2 * 5 * 6 - 1)
    np.testing.assert_array_equal(r.solver.initial_weights(runner)[0], r.solver.he_weights(1)[0])
