"""The Gauss-Newton solver: its sums against brute-force Jacobians, one dense iteration, LM control, Dask."""
import numpy as np
import pytest

from solvers.config import TrainConfig
from solvers.errors import InputError
from solvers.gauss_newton import CurvatureParams, GaussNewtonSolver
from solvers.losses import targets
from solvers.reference import InMemoryRunner, fit_in_memory
from solvers.stats import moment_sums, moments_from_sums
from tests.conftest import net_output, output_jacobian, quiet, weight_gradient

ACTS = {"relu": lambda z: np.maximum(z, 0), "sigmoid": lambda z: 1 / (1 + np.exp(-z))}


def make_problem(n=60, d=3, hidden=(5, 4), n_classes=3, activation="relu", seed=0, alpha="auto"):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 2, d)
    y = rng.integers(0, n_classes, n)
    cfg = TrainConfig(solver="gauss-newton", hidden=hidden, activation=activation, seed=seed, iterations=3,
                      alpha=alpha, validation_fraction=0)
    shift = X[0].copy()
    mean, scale = moments_from_sums(moment_sums(X, shift), shift)
    solver = GaussNewtonSolver(cfg, d, np.arange(n_classes), mean, scale, dtype=np.float64)
    weights = [W + rng.normal(0, 0.1, W.shape) for W in solver.initial_hidden()]  # nonzero biases too
    weights.append(rng.normal(0, 0.5, (solver.widths[-1], solver.widths[-2] + 1)))
    return X, y, solver, weights


def brute_force_sums(solver, weights, X, y, act):
    """Return S_l, D_l, G_{l−1} per hidden layer by finite differences, sample by sample."""
    x = (X - solver.x_mean) / solver.x_scale
    T = targets(y, solver.n_classes, np.float64)
    h, out = 1e-6, {}
    for l in range(1, solver.L):
        width = solver.widths[l]
        S = np.zeros((width, width))
        for i in range(len(x)):
            J = output_jacobian(solver, weights, x[i:i + 1], act, l, h)  # ∂ output / ∂ z_l of sample i
            S += J.T @ J
        # D_l = −½ ∂E/∂W_l with E = Σ‖T − output‖²
        D = -0.5 * weight_gradient(lambda w: np.sum((T - net_output(solver, w, x, act)) ** 2), weights, l, h)
        a = x
        for W in weights[:l - 1]:
            a = act(a @ W[:, :-1].T + W[:, -1])
        a1 = np.hstack([a, np.ones((len(a), 1))])
        out[l] = (S, D, a1.T @ a1)
    return out


@pytest.mark.parametrize("hidden,n_classes,activation", [
    ((5,), 2, "relu"), ((5, 4), 3, "relu"), ((4, 3, 3), 2, "sigmoid"), ((5, 4), 3, "sigmoid"),
])
def test_curvature_gradient_and_grams_match_brute_force(hidden, n_classes, activation):
    X, y, solver, weights = make_problem(hidden=hidden, n_classes=n_classes, activation=activation)
    _, packed = solver.curvature_chunk(X, y, None, 0, tuple(weights))
    curv = solver.curvature_layout().unpack(packed)
    S_ours = solver.curvatures(weights, curv)
    for l, (S, D, G) in brute_force_sums(solver, weights, X, y, ACTS[activation]).items():
        np.testing.assert_allclose(S_ours[l - 1], S, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(curv[f"grad{l}"], D, rtol=1e-5, atol=1e-6)
        if l > 1:
            np.testing.assert_allclose(curv[f"gram{l}"], G, rtol=1e-10)


def test_output_layer_error_equals_direct_residual():
    X, y, solver, weights = make_problem()
    _, packed = solver.forward_chunk(X, y, None, 0, solver._forward_params(weights[:-1], True))
    W_out, error, _ = solver.output_layer(solver.forward_layout(True).unpack(packed))
    x = (X - solver.x_mean) / solver.x_scale
    resid = targets(y, 3, np.float64) - net_output(solver, [*weights[:-1], W_out], x, ACTS["relu"])
    assert error == pytest.approx(np.sum(resid ** 2), rel=1e-9)


@pytest.mark.parametrize("chunk_rows,alpha", [(None, 0.0), (7, 0.0), (25, 0.0), (7, 0.7), (None, 3.0)])
def test_chunked_first_step_equals_dense_gauss_newton(chunk_rows, alpha):
    """The trial weights after initialisation equal a dense, full-batch transcription of the update.

    With α = 0 it is the unregularised Gauss-Newton step; with α > 0 the output
    layer is the ridge solve with the bias spared and the hidden step descends
    ``D − αW̃`` under K-FAC's factored damping of ``S ⊗ G / n + α I``.
    """
    from solvers.gauss_newton import STEP_RIDGE

    X, y, solver, _ = make_problem(n=50, hidden=(5, 4), alpha=alpha)
    state = solver.initialize(InMemoryRunner(solver, X, y, chunk_rows))
    c, act = solver.config, ACTS["relu"]
    hidden = solver.initial_hidden()
    x = (X - solver.x_mean) / solver.x_scale
    a = x
    for W in hidden:
        a = act(a @ W[:, :-1].T + W[:, -1])
    a1 = np.hstack([a, np.ones((len(a), 1))])
    G = a1.T @ a1
    T = targets(y, 3, np.float64)
    # W_L: argmin Σ‖T − W ã‖² + (α + floor)‖W̃‖², floor = ridge · mean diagonal of the centred Gram
    centred = a - a.mean(axis=0)
    spare_bias = np.diag(np.r_[np.ones(a.shape[1]), 0.0])
    floor = c.ridge * np.mean(np.sum(centred ** 2, axis=0))
    W_out = np.linalg.solve(G + (alpha + floor) * spare_bias, a1.T @ T).T
    np.testing.assert_allclose(state.weights[-1], W_out, rtol=1e-8, atol=1e-10)
    sums = brute_force_sums(solver, [*hidden, W_out], X, y, act)
    x1 = np.hstack([x, np.ones((len(x), 1))])
    n = len(X)
    for l, (S, D, G_in) in sums.items():
        G_in = x1.T @ x1 if l == 1 else G_in
        W = hidden[l - 1]
        if alpha:
            D = D - alpha * np.column_stack([W[:, :-1], np.zeros(len(W))])
            pi = np.sqrt(np.mean(np.diag(S)) / np.mean(np.diag(G_in)[:-1]))
            S = S + pi * np.sqrt(alpha * n) * np.eye(len(S))
            G_in = G_in + np.sqrt(alpha * n) / pi * np.eye(len(G_in))
        Sd = S + c.damping * np.mean(np.diag(S)) * np.eye(len(S))
        Gd = G_in + max(c.ridge, STEP_RIDGE) * np.mean(np.diag(G_in)) * np.eye(len(G_in))
        expected = W + c.step_size * n * np.linalg.solve(Sd, D) @ np.linalg.inv(Gd)
        np.testing.assert_allclose(state.carry[f"T{l}"], expected, rtol=1e-5, atol=1e-7)


def test_objective_includes_weight_decay(digits_0_vs_2):
    """With a fixed α the LM test compares E + αΣ‖W̃‖², and that objective never rises."""
    X, _, y, _ = digits_0_vs_2
    alpha = 5.0
    cfg = TrainConfig(solver="gauss-newton", hidden=(20,), step_size=4.0, damping=0.05, iterations=10,
                      alpha=alpha, validation_fraction=0)
    result = fit_in_memory(X, y, cfg, chunk_rows=100)
    history, solver = result.history, result.solver
    assert any(not h["accepted"] for h in history)
    weights = result.loop_state.weights
    decay = alpha * sum(np.sum(np.asarray(W)[:, :-1] ** 2) for W in weights)
    n = len(X)
    assert history[-1]["objective"] * n == pytest.approx(history[-1]["loss"] * n + decay, rel=1e-5)  # float32 passes
    assert all(h["alpha"] == alpha for h in history)
    for prev, h in zip(history, history[1:]):
        assert h["accepted"] == (h["trial_loss"] <= prev["objective"])
        assert h["objective"] <= prev["objective"] + 1e-12
    assert solver.objective(0.0, weights, 0.0) == 0.0


def test_levenberg_marquardt_never_accepts_a_rise_in_training_error(digits_0_vs_2):
    X, _, y, _ = digits_0_vs_2
    # a step 8x the default overshoots, so some trials must be rejected
    cfg = TrainConfig(solver="gauss-newton", hidden=(20,), step_size=4.0, damping=0.05, iterations=12, alpha=0,
                      validation_fraction=0)
    history = fit_in_memory(X, y, cfg, chunk_rows=100).history
    assert any(not h["accepted"] for h in history) and any(h["accepted"] for h in history)
    previous = None
    for h in history:
        if previous is not None:
            assert h["accepted"] == (h["trial_loss"] <= previous["loss"])
            assert h["loss"] <= previous["loss"]
            expected = previous["damping"] * (0.5 if h["accepted"] else 4.0)
            assert h["damping"] == pytest.approx(max(expected, 1e-2) if h["accepted"] else expected)
        previous = h


def test_gauss_newton_learns_the_hidden_layer(digits_0_vs_2):
    """On digits 0 vs 2 the fitted network beats its random-feature start (iteration 0)."""
    X, Xt, y, yt = digits_0_vs_2
    result = fit_in_memory(X, y, TrainConfig(solver="gauss-newton", hidden=(32,), iterations=5), X_test=Xt, y_test=yt)
    assert result.history[-1]["loss"] < 0.5 * result.history[0]["trial_loss"] or result.history[-1]["loss"] < 1e-3
    assert result.history[-1]["test_accuracy"] >= 0.99


def test_gauss_newton_refuses_hinge_loss():
    with pytest.raises(InputError, match="squared loss"):
        GaussNewtonSolver(TrainConfig(solver="gauss-newton", loss="hinge"), 3, [0, 1], np.zeros(3), np.ones(3))


@pytest.mark.parametrize("hidden_alpha", ["readout", "pinned"])
def test_pipeline_gauss_newton_matches_reference(client, tmp_path, hidden_alpha):
    """The pipeline's run equals the in-memory reference and resumes on its trajectory (pinned: under pinned)."""
    from pipeline.training import train
    from storage.data import write_data

    from tests.conftest import make_data

    X, y = make_data(n_classes=3)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=512)
    cfg = TrainConfig(solver="gauss-newton", hidden=(12, 8), iterations=4, seed=3, hidden_alpha=hidden_alpha)
    result = train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=512,
                   report=quiet)
    ref = fit_in_memory(X, y, cfg, chunk_rows=512)
    assert [h["accepted"] for h in result.history] == [h["accepted"] for h in ref.history]
    for W, W_ref in zip(result.network.weights, ref.network.weights):
        np.testing.assert_allclose(W, W_ref, rtol=1e-4, atol=1e-5)
    assert result.store.state_widths == {}  # nothing per sample on disk
    # resume continues the same trajectory
    more = train(client, store=tmp_path / "r.zarr", resume=True, iterations=6, report=quiet)
    assert more.solver.config.hidden_alpha == hidden_alpha  # stored with the run
    ref6 = fit_in_memory(X, y, TrainConfig(**{**cfg.to_dict(), "iterations": 6}), chunk_rows=512)
    for W, W_ref in zip(more.network.weights, ref6.network.weights):
        np.testing.assert_allclose(W, W_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("solver,flags", [("gauss-newton", "--step-size"), ("admm", "--gamma/--beta"),
                                          ("dladmm", "--rho")])
def test_divergence_message_names_the_solvers_own_settings(solver, flags):
    """A pass whose sums are not finite says which of *this* solver's settings to resume with."""
    from solvers import make_solver
    from solvers.errors import NumericalError
    from solvers.loop import run_pass
    from solvers.stats import StatsLayout

    class NaNRunner:
        def __init__(self, solver):
            self.solver = solver

        def run(self, kernel, params, **slots):
            return np.full(2, np.nan)

    s = make_solver(TrainConfig(solver=solver), 3, x_mean=np.zeros(3), x_scale=np.ones(3), classes=np.arange(2))
    with pytest.raises(NumericalError, match=f"at iteration 4; .*resume with .*{flags}"):
        run_pass(NaNRunner(s), StatsLayout({"n": (), "loss": ()}), "any", None, 4)


@pytest.mark.parametrize("hidden,n_classes,activation", [
    ((5,), 2, "relu"), ((5,), 2, "sigmoid"), ((6, 4), 3, "relu"), ((5,), 3, "sigmoid"), ((4, 3), 2, "hard-sigmoid"),
])
def test_float32_kernels_equal_float64_kernels(hidden, n_classes, activation):
    """Float32 passes over several row tiles give the float64 sums (checked against brute force above) up to rounding.

    Covers what the float32 kernels do differently from a plain transcription: the
    bias inside the products and the ones column of ã (Σa and n come out of the
    Gram), ReLU in place, and one output's D_1 = w̃ ⊙ M_1ᵀ(r ã_0) without δ_1.
    """
    X, y, s64, weights = make_problem(n=90, hidden=hidden, n_classes=n_classes, activation=activation)
    s32 = GaussNewtonSolver(s64.config, X.shape[1], np.arange(n_classes), s64.x_mean, s64.x_scale, dtype=np.float32)
    s32.tile_rows = 16  # six tiles, the last one short
    for kernel, params in (("forward_chunk", lambda s: s._forward_params(weights[:-1], True)),
                           ("curvature_chunk", lambda s: CurvatureParams(s.cast(weights), True))):
        want = getattr(s64, kernel)(X, y, None, 0, params(s64))[1]
        got = getattr(s32, kernel)(X.astype(np.float32), y, None, 0, params(s32))[1]
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.max(np.abs(want)))


@pytest.mark.parametrize("activation,n_classes", [("relu", 3), ("sigmoid", 2)])
def test_kept_activations_change_nothing(monkeypatch, activation, n_classes):
    """Pass B takes pass A's activations from the cache, every pass the kept standardised inputs: the run is bitwise the
    run that recomputes them."""
    from solvers import activation_cache

    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 6))
    y = rng.integers(0, n_classes, 3000)
    cfg = TrainConfig(solver="gauss-newton", hidden=(8, 5), activation=activation, iterations=4, sample_start=1000)
    hits, input_hits = activation_cache.CACHE.hits, activation_cache.INPUTS.hits
    kept = fit_in_memory(X, y, cfg, chunk_rows=500)
    assert activation_cache.CACHE.hits > hits and activation_cache.CACHE.nbytes == 0  # used, and emptied after the run
    assert activation_cache.INPUTS.hits > input_hits and activation_cache.INPUTS.nbytes == 0  # the standardised inputs too
    monkeypatch.setattr(activation_cache.CACHE, "budget", 0)  # nothing is kept: pass B recomputes
    monkeypatch.setattr(activation_cache.INPUTS, "budget", 0)  # and every pass standardises its rows again
    again = fit_in_memory(X, y, cfg, chunk_rows=500)
    for a, b in zip(kept.network.weights, again.network.weights):
        np.testing.assert_array_equal(a, b)
    assert [h["accepted"] for h in kept.history] == [h["accepted"] for h in again.history]


@pytest.mark.parametrize("seed", range(12))
def test_pass_b_from_kept_activations_is_pass_b_recomputed_bitwise(seed):
    """One hidden ReLU layer, the squared loss: pass A keeps ã_1 as the leading columns of its ``[ã_1, T]`` buffer;
    pass B from the kept tiles and pass B recomputing them give the same bits, whatever the widths (OpenBLAS's GEMV
    ã_1 w̃ differs in the last bits between row strides: the recomputed ã_1 has the kept one's)."""
    from solvers import activation_cache
    from solvers.stats import moment_sums, scaling_from_sums

    rng = np.random.default_rng(seed)
    n, d, h, K = int(rng.integers(50, 700)), int(rng.integers(2, 30)), int(rng.integers(2, 40)), int(rng.integers(1, 4))
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, 2 if K == 1 else K, n)
    shift = X[0].astype(np.float64)
    classes = np.arange(2 if K == 1 else K)
    s = GaussNewtonSolver(TrainConfig(hidden=(h,)), d, classes, **scaling_from_sums(moment_sums(X, shift), shift, d, "standard"))
    s.tile_rows = 256
    W = s.cast(s.he_weights(1) + [rng.standard_normal((K, h + 1)) * 0.3])
    forward = s._forward_params(W[:-1], False)
    activation_cache.CACHE.clear()
    s.forward_chunk(X, y, None, 0, forward)
    hits = activation_cache.CACHE.hits
    kept = s.curvature_chunk(X, y, None, 0, CurvatureParams(W, False, None, forward.key))[1]
    assert activation_cache.CACHE.hits > hits
    activation_cache.CACHE.clear()
    recomputed = s.curvature_chunk(X, y, None, 0, CurvatureParams(W, False, None, forward.key))[1]
    np.testing.assert_array_equal(kept, recomputed)


@pytest.mark.parametrize("hidden,activation", [((5,), "relu"), ((6, 4), "sigmoid")])
def test_pass_b_scores_the_held_out_rows_from_pass_a_kept_activations(hidden, activation):
    """Pass A keeps the held-out rows' activations too; pass B's held-out score takes them: the same sums, no forward pass."""
    from dataclasses import replace

    from solvers import activation_cache

    X, y, s, weights = make_problem(n=90, hidden=hidden, activation=activation)
    s.tile_rows = 16  # several tiles, the last one short
    activation_cache.CACHE.clear()
    forward = s._forward_params(weights[:-1], False)
    s.forward_chunk_held(X, y, None, 7, forward)  # pass A over a chunk's held-out rows
    params = CurvatureParams(s.cast(weights), False, None, forward.key)
    want = s.curvature_chunk_held(X, y, None, 7, replace(params, key=None))[1]  # recomputed
    hits = activation_cache.CACHE.hits
    got = s.curvature_chunk_held(X, y, None, 7, params)[1]
    assert activation_cache.CACHE.hits - hits == 6  # every tile from the cache
    np.testing.assert_array_equal(got, want)
    activation_cache.CACHE.clear()


def test_held_out_rows_that_share_first_and_last_rows_with_the_training_rows_are_not_taken_for_them():
    """A chunk's training and held-out rows start at the same row number; with duplicate first and last rows (tabular
    data) only the side tells them apart: pass B on the training rows must not read the held-out rows' activations."""
    from solvers import activation_cache

    X, y, s, weights = make_problem(n=40, hidden=(5,), activation="relu")
    held = X.copy()
    held[1:-1] = X[1:-1][::-1] + 1.0  # same count, same first and last row, other rows in between
    activation_cache.CACHE.clear()
    forward = s._forward_params(weights[:-1], False)
    s.forward_chunk_held(held, y, None, 0, forward)  # pass A over the held-out rows only
    params = CurvatureParams(s.cast(weights), False, None, forward.key)
    got = s.curvature_chunk(X, y, None, 0, params)[1]
    want = s.curvature_chunk(X, y, None, 0, CurvatureParams(s.cast(weights), False))[1]  # recomputed
    np.testing.assert_array_equal(got, want)
    activation_cache.CACHE.clear()


def test_the_accepted_weights_objective_at_a_new_alpha_reuses_their_ridge_path(monkeypatch):
    """The accepted trial's pass-A sums come back in the next iteration: their W_L refit at a new α needs no new eigendecomposition."""
    from solvers import gauss_newton

    made, refits = [], []
    real_init, real_current = gauss_newton.RidgePath.__init__, GaussNewtonSolver._current_objective

    def init(self, *args, **kwargs):
        made.append(1)
        real_init(self, *args, **kwargs)

    def current(self, state, c, alpha):
        if float(c["alpha"]) != float(alpha) and float(c.get("acc_valid", 0.0)):
            refits.append(alpha)
        return real_current(self, state, c, alpha)
    monkeypatch.setattr(gauss_newton.RidgePath, "__init__", init)
    monkeypatch.setattr(GaussNewtonSolver, "_current_objective", current)
    rng = np.random.default_rng(4)
    X = rng.normal(size=(1500, 5))
    y = (X[:, 0] * X[:, 1] + rng.normal(0, 0.5, 1500) > 0).astype(int)
    fit = fit_in_memory(X, y, TrainConfig(solver="gauss-newton", hidden=(8,), iterations=6, hidden_alpha="readout"),
                        chunk_rows=300)  # readout: one candidate, so one pass A per iteration (probe adds one)
    assert refits, "alpha auto kept one alpha throughout: nothing to check"
    assert len(made) == len(fit.history) + 1  # one path per pass A (and the initial fit), none for the refits


def test_the_step_checks_the_curvature_by_cholesky_but_not_the_ridged_input_gram(monkeypatch):
    """The input Gram side of the step is a Gram plus ≥ 1 % of its mean diagonal (positive definite): no Cholesky test there."""
    X, y, s, weights = make_problem(n=90, hidden=(5,))
    rng = np.random.default_rng(1)
    A, J = rng.normal(size=(90, 4)), rng.normal(size=(90, 5))
    G, S, D = A.T @ A, J.T @ J, rng.normal(size=(5, 4))
    want = s.layer_step(1, weights[0], D, S, G, 0.1, 0.5, 90.0)
    sizes = []
    real = np.linalg.cholesky
    monkeypatch.setattr(np.linalg, "cholesky", lambda a: (sizes.append(a.shape[0]), real(a))[1])
    got = s.layer_step(1, weights[0], D, S, G, 0.1, 0.5, 90.0)
    assert sizes == [5]  # S only
    np.testing.assert_array_equal(got, want)


def test_a_grown_sample_sums_the_input_gram_of_the_added_chunks_onto_the_last_one():
    """Pass B on a grown sample sums Σ ã_0 ã_0ᵀ over the added chunks only: the carried Gram is still the sample's."""
    from solvers import make_solver, sampling
    from solvers.inmemory import InMemoryRunner

    rng = np.random.default_rng(5)
    X = rng.normal(size=(4000, 6))
    y = rng.integers(0, 3, 4000)
    cfg = TrainConfig(solver="gauss-newton", hidden=(8, 5), iterations=6, sample_start=1000, validation_fraction=0)
    s = make_solver(cfg, X.shape[1], x_mean=X.mean(0), x_scale=X.std(0), classes=np.arange(3))
    runner = InMemoryRunner(s, X, y, chunk_rows=500)
    state, sizes = s.initialize(runner), set()
    for _ in range(5):
        state, _ = s.advance(runner, state)
        state = s.prepare(runner, state)  # a growing sample's pass B is deferred to the next iteration: run it now
        m, window = int(state.carry["sample_chunks"]), int(state.carry["sample_window"])
        chunks = sampling.sample(len(runner.bounds), m, cfg.seed, window) or range(len(runner.bounds))
        x1 = np.concatenate([s._inputs_with_ones(runner.x[i]) for i in chunks]).astype(np.float64)
        want = x1.T @ x1
        np.testing.assert_allclose(state.carry["input_gram"], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        sizes.add(m)
    assert len(sizes) > 1  # the sample grew


@pytest.mark.parametrize("loss", ["squared", "cross-entropy"])
def test_pass_b_scores_the_held_out_rows_as_the_driver_would(monkeypatch, loss):
    """Pass B's held-out score of the accepted weights is the score the driver's own scoring pass gives them."""
    from solvers.gauss_newton import GaussNewtonSolver

    rng = np.random.default_rng(8)
    X = rng.normal(size=(3000, 6))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    cfg = TrainConfig(solver="gauss-newton", hidden=(8,), loss=loss, iterations=5, sample_start=1000,
                      validation_fraction=0.2, patience=0, hidden_alpha="readout")  # probe needs pass B's scores
    scored = fit_in_memory(X, y, cfg, chunk_rows=500)
    monkeypatch.setattr(GaussNewtonSolver, "_scores_held_out", lambda self, runner: False)  # the driver scores
    driver = fit_in_memory(X, y, cfg, chunk_rows=500)
    assert [h["validation_accuracy"] for h in scored.history] == [h["validation_accuracy"] for h in driver.history]
    assert len({h["validation_accuracy"] for h in scored.history}) > 1


def test_glorot_start_is_scikit_learns_uniform_start_and_forward_keeps_he():
    """init glorot: every hidden layer's weights and biases are U(±√(6/(fan_in + fan_out))) (scikit-learn's MLP
    start), seeded by ``seed``; init forward keeps He-normal weights (variance 2/fan_in) with zero biases."""
    from dataclasses import replace

    d, classes = 30, np.arange(3)

    def start(cfg):
        return GaussNewtonSolver(cfg, d, classes, np.zeros(d), np.ones(d), dtype=np.float64).initial_hidden()

    cfg = TrainConfig(solver="gauss-newton", hidden=(200, 50), init="glorot", seed=4)
    hidden = start(cfg)
    assert [W.shape for W in hidden] == [(200, 31), (50, 201)]
    for W, fan_in, fan_out in zip(hidden, (30, 200), (200, 50)):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        assert 0.99 * limit < np.abs(W).max() <= limit
        assert abs(W.var() / (limit ** 2 / 3) - 1) < 0.05  # uniform: variance limit²/3 (6,200 and 10,050 draws)
        assert abs(W.mean()) < 0.05 * limit and np.all(W[:, -1] != 0)  # centred, and the biases drawn too
    np.testing.assert_array_equal(hidden[0], start(cfg)[0])  # seeded
    assert not np.array_equal(hidden[0], start(replace(cfg, seed=5))[0])
    he = start(replace(cfg, init="forward"))
    assert np.all(he[0][:, -1] == 0) and abs(he[0][:, :-1].var() / (2 / 30) - 1) < 0.05


def test_glorot_start_is_refused_where_it_does_not_apply():
    for solver, layers, words in (("admm", None, "the admm solver starts from"),
                                  ("gauss-newton", "conv:4x3x3,dense:10", "convolutional --layers start from")):
        for init in ("glorot", "he-bias"):
            with pytest.raises(InputError, match=f"init {init} is the start of gauss-newton \\(dense layers\\) and consensus; {words}"):
                TrainConfig(solver=solver, layers=layers, init=init)


def test_he_bias_start_is_forwards_weights_with_glorots_random_biases():
    """init he-bias: the hidden weights are init forward's exactly (He-normal), the biases U(±√(6/(fan_in + fan_out))),
    seeded; consensus draws every layer's the same way."""
    from dataclasses import replace

    d, classes = 30, np.arange(3)
    cfg = TrainConfig(solver="gauss-newton", hidden=(200, 50), init="he-bias", seed=4)

    def start(cfg):
        return GaussNewtonSolver(cfg, d, classes, np.zeros(d), np.ones(d), dtype=np.float64).initial_hidden()

    hidden, forward = start(cfg), start(replace(cfg, init="forward"))
    for W, F, fan_in, fan_out in zip(hidden, forward, (30, 200), (200, 50)):
        np.testing.assert_array_equal(W[:, :-1], F[:, :-1])
        assert np.all(F[:, -1] == 0)
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        assert 0.95 * limit < np.abs(W[:, -1]).max() <= limit and np.all(W[:, -1] != 0)
    np.testing.assert_array_equal(hidden[1], start(cfg)[1])  # seeded
    assert not np.array_equal(hidden[0][:, -1], start(replace(cfg, seed=5))[0][:, -1])
    from solvers import make_solver

    ccfg = replace(cfg, solver="consensus")
    theta = make_solver(ccfg, d, x_mean=np.zeros(d), x_scale=np.ones(d), classes=classes).initialize(None).weights
    for W, H in zip(theta, hidden):
        np.testing.assert_array_equal(W, H)
    assert len(theta) == 3 and np.all(theta[2][:, -1] != 0)


def expected_deferrals(history, first_full: bool) -> list:
    """The deferral decisions (one per iteration that was accepted or moved its sample) of a growing run's ``history``:
    pass B deferred when the next sample differs, and (``first_full``: the stored rule ``defer_first_full``) when the
    iteration opened with a deferred pass B that moved the sample (the first accepted iteration on every chunk)."""
    rows = [h["sample_rows"] for h in history]
    out, opened = [], False
    for k, h in enumerate(history):
        moved = rows[min(k + 1, len(rows) - 1)] != rows[k] or (k + 1 == len(rows) and rows[k] != max(rows))
        if h["accepted"] or moved:
            out.append(moved or (first_full and opened))
            opened = out[-1] and moved
        else:
            opened = False
    return out


@pytest.mark.parametrize("loss,activation", [("squared", "relu"), ("cross-entropy", "sigmoid")])
def test_a_growing_samples_pass_b_deferred_to_the_next_iteration_gives_the_same_steps(monkeypatch, loss, activation):
    """While the sample grows an iteration ends after pass A and the score pass (its pass B, on the next sample, opens
    the next iteration); a run whose first sample was not every chunk (``defer_first_full`` in its carry) does so at
    its first iteration on every chunk too, then takes pass B at each iteration's end again; without that rule (stores
    of older code) pass B is back at the iteration's end once every chunk is read; with session 15's integrate rule
    (``defer_all``) every accepted iteration defers and the last pass B is not run. Weights, acceptances, damping, α,
    sample rows, trial losses and validation scores are bitwise those of pass B at every iteration's end, with the
    activation cache and without it (the score pass then recomputes the forward pass)."""
    from solvers import activation_cache

    rng = np.random.default_rng(11)
    X = rng.normal(size=(4000, 6))
    y = (X[:, 0] * X[:, 1] + X[:, 2] > 0).astype(int) + (X[:, 3] > 0.5)
    cfg = TrainConfig(solver="gauss-newton", hidden=(8, 5), activation=activation, loss=loss, iterations=7,
                      sample_start=500)  # 2 → 4 → 8 chunks: two growing iterations, then full samples
    deferrals, original = [], GaussNewtonSolver._defers
    monkeypatch.setattr(GaussNewtonSolver, "_defers", lambda self, moved, carry=None, opened=False: deferrals.append(
        original(self, moved, carry, opened)) or deferrals[-1])
    deferred = fit_in_memory(X, y, cfg, chunk_rows=500)
    assert float(deferred.loop_state.carry["defer_first_full"]) == 1.0 and "defer_all" not in deferred.loop_state.carry
    assert deferrals == expected_deferrals(deferred.history, first_full=True) and True in deferrals
    deferrals.clear()
    monkeypatch.setattr(GaussNewtonSolver, "defer_grown", False)  # the rule of stores without a key
    counted = fit_in_memory(X, y, cfg, chunk_rows=500)
    assert deferrals == expected_deferrals(counted.history, first_full=False)  # not once every chunk is read
    assert "pending" not in counted.loop_state.carry and "defer_first_full" not in counted.loop_state.carry
    deferrals.clear()
    initialize = GaussNewtonSolver._initialize

    def integrate_store(self, *args, **kwargs):  # a store of the integrate branch before defer15: defer_all
        state = initialize(self, *args, **kwargs)
        state.carry["defer_all"] = np.float64(1.0)
        return state

    monkeypatch.setattr(GaussNewtonSolver, "_initialize", integrate_store)
    every = fit_in_memory(X, y, cfg, chunk_rows=500)
    assert all(deferrals) and len(deferrals) == len(expected_deferrals(every.history, first_full=True)) >= 4
    assert ("pending" in every.loop_state.carry) == every.history[-1]["accepted"]  # an accepted last: no pass B
    monkeypatch.setattr(GaussNewtonSolver, "_initialize", initialize)
    monkeypatch.setattr(GaussNewtonSolver, "defer_growing", False)
    at_end = fit_in_memory(X, y, cfg, chunk_rows=500)
    monkeypatch.setattr(GaussNewtonSolver, "defer_growing", True)
    monkeypatch.setattr(GaussNewtonSolver, "defer_grown", True)
    monkeypatch.setattr(activation_cache.CACHE, "budget", 0)  # nothing kept: the score pass recomputes a_{L−1}
    uncached = fit_in_memory(X, y, cfg, chunk_rows=500)
    assert len({h["sample_rows"] for h in at_end.history}) > 2 and [h["accepted"] for h in at_end.history].count(True) > 3
    for run in (deferred, counted, every, uncached):
        for name in ("accepted", "damping", "alpha", "sample_rows", "validation_accuracy", "trial_loss"):
            assert [h[name] for h in run.history] == [h[name] for h in at_end.history], name
        for W, W_end in zip(run.loop_state.weights, at_end.loop_state.weights):
            assert W.tobytes() == W_end.tobytes()


@pytest.mark.parametrize("targets", [True, False])
def test_the_stacked_forward_never_takes_the_maximum_over_unwritten_target_columns(monkeypatch, targets):
    """review17 L3: ``[ã_{L−1}, T]`` is allocated with np.empty; its T columns must be written before the ReLU's
    maximum runs over the whole buffer (garbage bits can be a signalling NaN: FE_INVALID, a RuntimeWarning), and the
    result is the same: ã_{L−1} with its ones column, then T (or zeros)."""
    rng = np.random.default_rng(3)
    d, h, K, n = 5, 7, 3, 40
    s = GaussNewtonSolver(TrainConfig(hidden=(h,)), d, np.arange(K), np.zeros(d), np.ones(d), dtype=np.float32)
    assert s._stacks_targets()
    hidden = s._augmented(s.cast(s.he_weights(1)))
    x1 = s._inputs_with_ones(rng.normal(size=(n, d)).astype(np.float32))
    t = s.task.targets(rng.integers(0, K, n), np.float32) if targets else None
    real_empty, real_maximum, seen = np.empty, np.maximum, []

    def garbage(shape, dtype=float, *args, **kwargs):
        return np.full(shape, np.nan, dtype)

    def checked(x, *args, **kwargs):
        seen.append(bool(np.isnan(x).any()))
        return real_maximum(x, *args, **kwargs)

    monkeypatch.setattr(np, "empty", garbage)
    monkeypatch.setattr(np, "maximum", checked)
    a, _ = s._hidden_forward(x1, hidden, t)
    monkeypatch.setattr(np, "empty", real_empty)
    monkeypatch.setattr(np, "maximum", real_maximum)
    assert seen and not any(seen)
    want = np.maximum(x1 @ hidden[0].T, 0)
    np.testing.assert_array_equal(a[-1], want)
    buf = a[-1].base if a[-1].base is not None else a[-1]
    np.testing.assert_array_equal(buf[:, h + 1:], t if targets else np.zeros((n, K), np.float32))
