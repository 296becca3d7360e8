"""ADMM and dlADMM with alpha auto: the model's output layer is the targets refitted on the hidden features,
α of least held-out error (solvers/readout.py: logistic for classification, ridge for regression); the W-solves'
α term and the logistic readout's steps against brute-force minimisation."""
import numpy as np
import pytest
import scipy.optimize

from solvers import readout
from solvers.config import TrainConfig
from solvers.linalg import ALPHA_GRID, solve_weights
from solvers.losses import encode_labels, targets
from solvers.reference import fit_in_memory
from solvers.validation import RowSplit


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
def test_nothing_held_out_keeps_the_iterate_as_the_model(solver_name):
    """validation_fraction 0: no refit (GCV picks α ≈ 0 when the width nears the rows), the model is the iterate."""
    rng = np.random.default_rng(9)
    X, y = rng.normal(size=(300, 4)), rng.integers(0, 2, 300)
    r = fit_in_memory(X, y, TrainConfig(solver=solver_name, hidden=(8,), iterations=2, validation_fraction=0),
                      chunk_rows=40)
    assert "U" not in r.loop_state.carry and "alpha" not in r.history[-1]
    assert r.solver.iterate(r.loop_state) == r.loop_state.weights


def test_readout_fit_uses_gcv_without_held_out_rows():
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
    picked = []
    for chunk_rows in (70, 100):
        r = fit_in_memory(X, y, cfg, chunk_rows=chunk_rows, dtype=np.float64)
        solver = r.solver
        _, chunks, split = split_chunks(len(X), chunk_rows, len(X), cfg)
        from solvers.reference import InMemoryRunner

        runner = InMemoryRunner(solver, X, y, bounds=chunks, split=split)
        W0 = solver.initial_weights(runner)
        rows = data_init.pick_rows(chunks, 18, cfg.seed, split)
        assert len(set(rows)) == 18 and not split.held(rows).any()
        picked.append(rows)
        D = solver.inputs(X[rows[:9]]) - solver.inputs(X[rows[9:]])
        np.testing.assert_allclose(W0[0][:, :-1], D / np.linalg.norm(D, axis=1, keepdims=True) * np.sqrt(2),
                                   rtol=1e-12)
        assert np.all(W0[0][:, -1] == 0)
        np.testing.assert_array_equal(W0[1], solver.he_weights(2)[1])
    np.testing.assert_array_equal(*picked)  # the held-out rows, and so the picked rows, do not depend on the chunking
    bounds = [(0, 350), (350, 700)]
    np.testing.assert_array_equal(data_init.pick_rows(bounds, 40, 1), data_init.pick_rows([(0, 700)], 40, 1))
    np.testing.assert_array_equal(data_init.pick_rows(bounds, 40, 1, split), data_init.pick_rows([(0, 700)], 40, 1, split))


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


# -- the logistic readout (classification) ------------------------------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402

from solvers import cross_entropy as ce  # noqa: E402


def penalised_loss(W, A, T, alpha):
    """Return Σℓ(W ã, t) + α/2‖W̃‖² (cross-entropy of σ(z − ½) or the softmax; bias spared)."""
    return ce.loss_sum(ones(A) @ W.T, T) + alpha / 2 * float(np.sum(W[:, :-1] ** 2))


def mm_iterate(A, T, alphas, steps, ridge=0.0):
    """Return the candidates after ``steps`` MM steps from V = 0 on fixed features, and each step's objectives."""
    K = T.shape[1]
    stack = readout.zero_stack(A.shape[1], K)[:len(alphas)]
    history = []
    for _ in range(steps):
        parts = readout.logistic_parts(A, T, stack.reshape(-1, A.shape[1] + 1))
        history.append([penalised_loss(stack[j], A, T, a) for j, a in enumerate(alphas)])
        stack = readout.mm_step(stack, parts["lr_grad"], parts["out_gram"], alphas, ridge)
    return stack, np.array(history)


def brute_force_logistic(A, T, alpha):
    K = T.shape[1]
    w0 = np.zeros((K, A.shape[1] + 1))
    if K == 1:
        w0[0, -1] = ce.SHIFT

    def f(w):
        return penalised_loss(w.reshape(w0.shape), A, T, alpha)

    def grad(w):
        W = w.reshape(w0.shape)
        Z = ones(A) @ W.T
        P = ce.probabilities(Z)
        G = (P - T).T @ ones(A)
        G[:, :-1] += alpha * W[:, :-1]
        return G.ravel()

    return scipy.optimize.minimize(f, w0.ravel(), jac=grad, method="BFGS", options={"gtol": 1e-10}).x.reshape(w0.shape)


def noisy_classes(rng, n, d, K):
    """Return features and one-hot (or 0/1) targets of a noisy linear K-class problem (never separable)."""
    A = rng.normal(size=(n, d)) + rng.normal(size=d)
    y = np.argmax(A @ rng.normal(size=(d, K)) + rng.gumbel(size=(n, K)) * 2.0, axis=1) if K > 2 else \
        (A @ rng.normal(size=d) + rng.logistic(size=n) * 2.0 > np.median(A @ np.ones(d))).astype(int)
    return A, targets(y, K, np.float64)


@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("alpha", [0.0, 0.7, 25.0])
def test_mm_steps_converge_to_the_brute_force_regularised_logistic_fit(K, alpha):
    """The fixed point of the MM steps minimises Σℓ + α/2‖W̃‖² (bias spared); α = 0 is the unregularised logistic fit."""
    rng = np.random.default_rng(K)
    A, T = noisy_classes(rng, 300, 4, K)
    stack, _ = mm_iterate(A, T, np.array([alpha]), 400)
    best = brute_force_logistic(A, T, alpha)
    W = stack[0]
    if K > 2:  # a softmax is invariant to adding one vector to every class row: compare centred rows
        W, best = W - W.mean(axis=0), best - best.mean(axis=0)
    np.testing.assert_allclose(W, best, rtol=1e-4, atol=1e-5)
    assert penalised_loss(stack[0], A, T, alpha) <= penalised_loss(brute_force_logistic(A, T, alpha), A, T, alpha) + 1e-7
    if alpha == 0 and K == 2:  # scikit-learn's unpenalised logistic regression, in our logit σ(z − ½)
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(A, T[:, 0])
        np.testing.assert_allclose(stack[0, 0, :-1], lr.coef_[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(stack[0, 0, -1] - ce.SHIFT, lr.intercept_[0], rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.sampled_from([2, 4]), n=st.integers(5, 60),
       log_alpha=st.floats(-4, 2))
def test_mm_step_never_raises_the_penalised_loss(seed, K, n, log_alpha):
    """The bound c G + α Ĩ majorises the Hessian: every step lowers (or keeps) Σℓ + α/2‖W̃‖², separable data included."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, 3)) * rng.uniform(0.1, 5)
    T = targets(rng.integers(0, K, n), K, np.float64)
    alphas = np.array([0.0, 10.0 ** log_alpha])
    _, history = mm_iterate(A, T, alphas, 12, ridge=1e-9)
    assert np.all(np.diff(history, axis=0) <= 1e-9 * (1 + np.abs(history[:-1])))


def test_first_step_from_zero_is_the_scaled_least_squares_fit():
    """From V = 0 (p = 1/K) the step is 1/c times the ridge fit of t − 1/K at α/c: it predicts as the squared-loss refit."""
    rng = np.random.default_rng(4)
    for K in (2, 3):
        A, T = noisy_classes(rng, 200, 5, K)
        alpha = 3.0
        stack, _ = mm_iterate(A, T, np.array([alpha]), 1)
        c = readout.bound(T.shape[1])
        p0 = 0.5 if K == 2 else 1 / K
        expected = refit(A, T - p0, alpha / c) / c
        if K == 2:
            expected[0, -1] += ce.SHIFT
        np.testing.assert_allclose(stack[0], expected, rtol=1e-9, atol=1e-10)


def test_acceleration_restarts_where_the_step_turns_back():
    """FISTA momentum (t_k) extrapolates the MM steps, and drops to a plain step where ∇F(y)·(x_new − x) > 0."""
    R = np.zeros((2, 1, 3))
    x_old = np.zeros((2, 1, 3))
    x_old[:, 0, 0] = -1.0
    new = np.zeros((2, 1, 3))
    new[:, 0, 0] = [1.0, -2.0]
    grad = np.zeros((2, 3))
    grad[:, 0] = 1.0  # −∇F(y) points to +x: candidate 0 moved along it, candidate 1 against it
    out = readout.accelerate({"R": R, "R_x": x_old, "R_t": np.array([2.0, 2.0])}, grad, np.zeros(2), new)
    t1 = (1 + np.sqrt(17)) / 2
    np.testing.assert_allclose(out["R_t"], [t1, 1.0])
    np.testing.assert_allclose(out["R"][:, 0, 0], [1.0 + (2 - 1) / t1 * 2.0, -2.0])
    np.testing.assert_array_equal(out["R_x"], new)


@pytest.mark.parametrize("solver_name", ["admm", "dladmm"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_model_output_layer_is_the_held_out_logistic_candidate(solver_name, n_classes):
    """Each iteration evaluates the candidates of the last step on its hidden features: the model's output layer is
    the one of least held-out cross-entropy (computed here row by row), the link is logistic, and every candidate then
    takes the MM step solved densely from the training rows (the carry's R_x)."""
    rng = np.random.default_rng(1)
    n = 600
    X = rng.normal(size=(n, 6))
    y = (X[:, 0] + X[:, 1] ** 2 + rng.normal(scale=0.5, size=n) > 1).astype(int) + (X[:, 2] > 1) * (n_classes - 2)
    chunk_rows, k = 50, 3
    cfg = TrainConfig(solver=solver_name, hidden=(12,), iterations=k, seed=4, validation_fraction=0.2,
                      readout_refit=False)  # the model is R_j (the default refit on all rows: test_readout_refit.py)
    before = fit_in_memory(X, y, replace_iterations(cfg, k - 1), chunk_rows=chunk_rows, dtype=np.float64)
    r = fit_in_memory(X, y, cfg, chunk_rows=chunk_rows, dtype=np.float64)
    held = RowSplit(0.2, cfg.seed).mask(0, n)  # the held-out rows, spread over every chunk
    tr, ho = np.flatnonzero(~held), np.flatnonzero(held)
    T = targets(encode_labels(y, np.unique(y)), n_classes, np.float64)
    solver, state = r.solver, r.loop_state
    own = solver.iterate(state)
    A_tr, A_ho = forward_hidden(solver, X[tr], own), forward_hidden(solver, X[ho], own)
    evaluated = np.asarray(before.loop_state.carry["R"])  # the candidates iteration k evaluated
    losses = np.array([ce.loss_sum(ones(A_ho) @ W.T, T[ho]) for W in evaluated])
    j = len(losses) - 1 - int(np.argmin(losses[::-1]))
    record = r.history[-1]
    assert record["readout"] == "logistic"
    assert record["validation_loss"] == pytest.approx(losses[j] / len(ho), rel=1e-9)
    assert record["alpha"] == pytest.approx(float(before.loop_state.carry["R_alphas"][j]), rel=1e-12)
    np.testing.assert_allclose(state.weights[-1], evaluated[j], rtol=1e-12, atol=1e-12)
    assert r.network.link == "logistic"
    Z = r.network.decision_function(X[ho])
    np.testing.assert_allclose(r.network.predict_proba(X[ho]), np.clip(
        np.column_stack([1 - ce.probabilities(Z)[:, 0], ce.probabilities(Z)[:, 0]]) if n_classes == 2
        else ce.probabilities(Z), 1e-3, None) / (1 if n_classes == 2 else np.clip(ce.probabilities(Z), 1e-3, None).sum(
            axis=1, keepdims=True)), rtol=1e-6, atol=1e-6)
    # the MM step of every candidate, solved densely: V + (g − α Ṽ)(c G + (α + ε c ḡ) Ĩ)⁻¹
    c = readout.bound(T.shape[1])
    alphas = np.asarray(state.carry["R_alphas"])
    At = ones(A_tr)
    gbar = np.mean(np.var(A_tr, axis=0)) * len(tr)
    P = np.diag(np.r_[np.ones(A_tr.shape[1]), 0.0])
    for jj, alpha in enumerate(alphas):
        V = evaluated[jj]
        g = (T[tr] - ce.probabilities(At @ V.T)).T @ At
        g[:, :-1] -= alpha * V[:, :-1]
        step = np.linalg.solve(c * At.T @ At + (alpha + cfg.ridge * c * gbar) * P, g.T).T
        np.testing.assert_allclose(state.carry["R_x"][jj], V + step, rtol=1e-7, atol=1e-9)


def replace_iterations(cfg, iterations):
    from dataclasses import replace

    return replace(cfg, iterations=iterations)


@pytest.mark.parametrize("solver_name", ["admm", "dladmm"])
def test_regression_keeps_the_ridge_readout(solver_name):
    """Regression under alpha auto refits W_L(α) by ridge (no link): α of least held-out squared error."""
    rng = np.random.default_rng(3)
    n = 600
    X = rng.normal(size=(n, 5))
    y = X[:, 0] - X[:, 1] ** 2 + rng.normal(scale=0.3, size=n)
    cfg = TrainConfig(solver=solver_name, task="regression", hidden=(10,), iterations=2, seed=2,
                      validation_fraction=0.2)
    r = fit_in_memory(X, y, cfg, chunk_rows=50, dtype=np.float64)
    solver, state = r.solver, r.loop_state
    held = RowSplit(0.2, cfg.seed).mask(0, n)  # the held-out rows, spread over every chunk
    tr, ho = np.flatnonzero(~held), np.flatnonzero(held)
    T = ((y - solver.task.y_mean) / solver.task.y_scale)[:, None]
    own = solver.iterate(state)
    A_tr, A_ho = forward_hidden(solver, X[tr], own), forward_hidden(solver, X[ho], own)
    gbar = np.mean(np.var(A_tr, axis=0)) * len(tr)
    floor = cfg.ridge * gbar
    errors = [np.sum((T[ho] - ones(A_ho) @ refit(A_tr, T[tr], a + floor).T) ** 2) for a in ALPHA_GRID * gbar]
    best = len(errors) - 1 - int(np.argmin(errors[::-1]))
    np.testing.assert_allclose(state.weights[-1], refit(A_tr, T[tr], ALPHA_GRID[best] * gbar + floor),
                               rtol=1e-6, atol=1e-8)
    assert "readout" not in r.history[-1] and r.network.link == "identity"


def test_mm_step_refuses_alphas_that_do_not_match_the_candidates():
    """One α per candidate: a shorter grid would leave candidates unset (uninitialised memory, read as NaN later)."""
    stack = readout.zero_stack(3, 2)
    A, T = noisy_classes(np.random.default_rng(0), 20, 3, 2)
    parts = readout.logistic_parts(A, T, stack.reshape(-1, 4))
    with pytest.raises(ValueError, match="alphas for"):
        readout.mm_step(stack, parts["lr_grad"], parts["out_gram"], np.array([0.0, 1.0]), 0.0)
