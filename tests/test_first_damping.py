"""--first-damping objective (Gauss-Newton alone): the first hidden trial, made at iteration 0, steps with the
objective's own damping ``(S + λs̄I) ⊗ (G + ε'ḡI) / n + αI`` instead of K-FAC's factored one; every later trial is
K-FAC's; pinned (α = 0), cross-entropy and the hand-over keep kfac; old run stores resume under kfac."""
import numpy as np
import pytest

from solvers.config import HANDOVER, STORED_BEFORE, TrainConfig
from solvers.errors import InputError
from solvers.gauss_newton import STEP_RIDGE, GaussNewtonSolver
from solvers.reference import fit_in_memory
from tests.conftest import make_data, quiet

BASE = dict(solver="gauss-newton", hidden=(32,), iterations=4, seed=1, patience=0)


def _strip(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_objective_damped_step_solves_the_kronecker_system_with_alpha_added():
    """The step is W + η [(S + a0 I) ⊗ (G + b0 I)/n + αI]⁻¹ (D − αW̃), a0 = λ s̄, b0 = max(ε, 0.01) ḡ: the dense
    Kronecker system solved directly (row-major vec: (A ⊗ B) vec(X) = vec(A X Bᵀ))."""
    rng = np.random.default_rng(0)
    h, d, n, lam, alpha = 4, 6, 50.0, 0.1, 3.0
    A, B = rng.normal(size=(h, 9)), rng.normal(size=(d, 40))
    S, G = A @ A.T, B @ B.T
    W, D = rng.normal(size=(h, d)), rng.normal(size=(h, d))
    solver = GaussNewtonSolver(TrainConfig(solver="gauss-newton", step_size=0.7), d - 1, np.arange(2),
                               np.zeros(d - 1), np.ones(d - 1))
    got = solver.objective_damped_step(W, D, S, G, lam, alpha, n)
    g = D.copy()
    g[:, :-1] -= alpha * W[:, :-1]
    a0, b0 = lam * np.mean(np.diag(S)), max(solver.config.ridge, STEP_RIDGE) * np.mean(np.diag(G))
    K = np.kron(S + a0 * np.eye(h), G + b0 * np.eye(d)) / n + alpha * np.eye(h * d)
    want = W + 0.7 * np.linalg.solve(K, g.ravel()).reshape(h, d)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_default_is_kfac_old_stores_resume_under_kfac_and_bad_values_are_refused():
    assert TrainConfig().first_damping == "kfac" and STORED_BEFORE["first_damping"] == "kfac"
    stored = TrainConfig(solver="gauss-newton").to_dict()
    del stored["first_damping"]  # written before the setting existed
    config, changed = TrainConfig.resumed(stored, {})
    assert config.first_damping == "kfac" and not changed
    with pytest.raises(InputError, match="first_damping"):
        TrainConfig(first_damping="exact")


@pytest.mark.parametrize("hidden_alpha", ["readout", "probe"])
def test_objective_damps_the_first_trial_only(monkeypatch, hidden_alpha):
    """One objective-damped layer step in the run (the first trial's; the probe's pinned trial steps at α = 0, with
    K-FAC's step), and the run differs from kfac's from iteration 1 on; kfac runs make none (α = 1: at α = 0 the two
    dampings are the same step)."""
    X, y = make_data(n=3000, n_classes=3)
    calls = []
    real = GaussNewtonSolver.objective_damped_step

    def spy(self, *args):
        calls.append(bool(self.pinned))
        return real(self, *args)
    monkeypatch.setattr(GaussNewtonSolver, "objective_damped_step", spy)
    runs = {}
    for rule in ("kfac", "objective"):
        calls.clear()
        runs[rule] = fit_in_memory(X, y, TrainConfig(**BASE, hidden_alpha=hidden_alpha, first_damping=rule, alpha=1.0),
                                   chunk_rows=500)
        assert calls == ([] if rule == "kfac" else [False])
    assert runs["kfac"].history[0]["train_accuracy"] != runs["objective"].history[0]["train_accuracy"]


def test_cross_entropy_and_the_handover_keep_kfac():
    """Where the rule does not apply the run is kfac's bit for bit: cross-entropy, and the hand-over's phase."""
    X, y = make_data(n=3000, n_classes=3)
    for extra in ({"loss": "cross-entropy"},):
        a, b = (fit_in_memory(X, y, TrainConfig(**{**BASE, **extra}, first_damping=rule), chunk_rows=500)
                for rule in ("kfac", "objective"))
        assert _strip(a.history) == _strip(b.history)
        for W, W_ref in zip(a.loop_state.weights, b.loop_state.weights):
            np.testing.assert_array_equal(W, W_ref)
    solver = GaussNewtonSolver(TrainConfig(solver=HANDOVER, first_damping="objective"), 5, np.arange(2),
                               np.zeros(5), np.ones(5))
    assert not solver._first_objective_damped()
    solver = GaussNewtonSolver(TrainConfig(solver="gauss-newton", first_damping="objective"), 5, np.arange(2),
                               np.zeros(5), np.ones(5))
    assert solver._first_objective_damped()


def test_pipeline_matches_reference_and_resumes_bitwise(client, tmp_path):
    """The pipeline takes the same first step as the in-memory reference (same seed), and a run resumed after
    iteration 1 (its first trial made before the stop) is the uninterrupted pipeline run bit for bit."""
    from pipeline.training import train
    from storage.data import write_data

    X, y = make_data(n=3000, n_classes=3)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=512)
    cfg = TrainConfig(**{**BASE, "iterations": 1}, first_damping="objective")
    train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=512, report=quiet)
    more = train(client, store=tmp_path / "r.zarr", resume=True, iterations=3, report=quiet)
    whole = train(client, store=tmp_path / "w.zarr", data=tmp_path / "d.zarr",
                  config=TrainConfig(**{**BASE, "iterations": 3}, first_damping="objective"), chunk_rows=512,
                  report=quiet)
    ref = fit_in_memory(X, y, TrainConfig(**{**BASE, "iterations": 3}, first_damping="objective"), chunk_rows=512)
    drop = ("seconds", "passes", "rows_per_second", "read_mb_per_second")
    assert [{k: v for k, v in h.items() if k not in drop} for h in more.history] == [
        {k: v for k, v in h.items() if k not in drop} for h in whole.history]
    for W, W_ref, W_mem in zip(more.network.weights, whole.network.weights, ref.network.weights):
        np.testing.assert_array_equal(W, W_ref)
        np.testing.assert_allclose(W, W_mem, rtol=1e-4, atol=1e-5)
    assert [h["accepted"] for h in more.history] == [h["accepted"] for h in ref.history]
