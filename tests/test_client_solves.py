"""The client's small solves: halved products, the damped curvature solve, the kept decomposition of the input Gram,
and Gauss-Newton's use of them (the same steps to rounding, a sample's first trial by LU, bitwise resumes)."""
import numpy as np
import pytest

from solvers.config import TrainConfig
from solvers.errors import NumericalError
from solvers.gauss_newton import GaussNewtonSolver
from solvers.linalg import ShiftedGram, halves_matmul, one_blas_thread, solve_weights, spd_solve
from solvers.loop import LoopState
from solvers.reference import InMemoryRunner
from solvers.stats import moment_sums, moments_from_sums


def spd(rng, n, rows=None):
    A = rng.normal(size=(rows or 3 * n, n))
    return A.T @ A


def test_halves_are_the_two_one_thread_halves_side_by_side_and_small_products_are_plain():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(301, 120)), rng.normal(size=(120, 90))
    with one_blas_thread():
        serial = np.vstack([a[:150] @ b, a[150:] @ b])
        plain = a @ b
    got = halves_matmul(a, b)
    np.testing.assert_array_equal(got, serial)  # the helper thread changes no bit
    np.testing.assert_array_equal(halves_matmul(a, b), got)
    np.testing.assert_allclose(got, plain, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(halves_matmul(a[:10], b), a[:10] @ b)  # too few rows: one product
    np.testing.assert_array_equal(halves_matmul(a, b[:, :1]), a @ b[:, :1])  # too little work: one product


def test_spd_solve_is_the_damped_solve():
    rng = np.random.default_rng(1)
    S, D = spd(rng, 40), rng.normal(size=(40, 70))
    np.testing.assert_allclose(spd_solve(S, D, 0.05), solve_weights(D.T, S, 0.05).T, rtol=1e-10, atol=1e-12)
    with pytest.raises(NumericalError, match="not positive definite.*--damping"):
        spd_solve(-S, D, 0.0, what="S_1")
    D[0, 0] = np.nan
    with pytest.raises(NumericalError, match="NaN"):
        spd_solve(S, D, 0.05)


@pytest.mark.parametrize("extra", [0.0, 0.3, 250.0])
def test_a_kept_decomposition_solves_every_shift_as_the_lu_solve(extra):
    rng = np.random.default_rng(2)
    G, left = spd(rng, 60, rows=80), rng.normal(size=(25, 60))
    want = solve_weights(left, G + extra * np.eye(60), 0.01, check=False)
    got = ShiftedGram.of(G).solve(left, extra, 0.01)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())


def test_the_kept_decomposition_is_found_by_value_and_a_new_one_has_the_same_bits():
    rng = np.random.default_rng(3)
    G, left = spd(rng, 30), rng.normal(size=(5, 30))
    first = ShiftedGram.of(G)
    assert ShiftedGram.of(G.copy()) is first  # equal values: no second decomposition
    assert ShiftedGram.of(G + np.eye(30)) is not first
    fresh = ShiftedGram(G)  # what a resumed process makes: the same bits
    np.testing.assert_array_equal(fresh.solve(left, 0.5, 0.01), first.solve(left, 0.5, 0.01))
    bad = G.copy()
    bad[0, 0] = np.inf
    with pytest.raises(NumericalError, match="NaN or inf"):
        ShiftedGram(bad)


def problem(n=900, d=12, hidden=(16,), seed=0, **settings):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 2, d)
    y = (X[:, 0] * X[:, 1] + X[:, 2] > 0).astype(int) + (X[:, 3] > 1)
    cfg = TrainConfig(solver="gauss-newton", hidden=hidden, seed=seed, iterations=8, validation_fraction=0,
                      **settings)
    mean, scale = moments_from_sums(moment_sums(X, X[0].copy()), X[0].copy())
    return X, y, GaussNewtonSolver(cfg, d, np.arange(3), mean, scale, dtype=np.float64)


def spy_on_kept(monkeypatch) -> list:
    """Count the calls of ShiftedGram.of (the kept decomposition's path), which still runs as it does."""
    calls, real = [], ShiftedGram.of.__func__

    def of(cls, *args, **kwargs):
        calls.append(1)
        return real(cls, *args, **kwargs)
    monkeypatch.setattr(ShiftedGram, "of", classmethod(of))
    return calls


def test_layer_ones_step_through_the_kept_decomposition_equals_the_lu_step(monkeypatch):
    X, y, s = problem()
    calls = spy_on_kept(monkeypatch)
    rng = np.random.default_rng(5)
    W = rng.normal(size=(16, 13))
    G, S, D = spd(rng, 13), spd(rng, 16), rng.normal(size=(16, 13))
    for alpha in (0.0, 0.4):
        want = s.layer_step(1, W, D, S, G, 0.1, alpha, 900.0)
        s._input_gram_reused = True
        try:
            got = s.layer_step(1, W, D, S, G, 0.1, alpha, 900.0)
        finally:
            s._input_gram_reused = False
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert len(calls) == 2  # each "got" took the kept path (and no "want" did)


def run(solver, runner, iterations, state=None):
    state = state or solver.initialize(runner)
    states = [state]
    for _ in range(iterations):
        state, _ = solver.advance(runner, state)
        states.append(state)
    return states


@pytest.mark.parametrize("schedule", ["full", "grow"])
def test_a_samples_first_trial_solves_by_lu_and_later_ones_through_its_kept_gram(monkeypatch, schedule):
    """Which trials take the kept decomposition: those whose sample's Gram the last trial used too (stored as gram_sample),
    and every one when the first sample is every chunk."""
    X, y, s = problem(sample_schedule=schedule, sample_start=150, hidden_alpha="readout")
    kept = []
    real = GaussNewtonSolver.trial_weights

    def trial_weights(self, *args, **kwargs):
        kept.append(self._input_gram_reused)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(GaussNewtonSolver, "trial_weights", trial_weights)
    states = run(s, InMemoryRunner(s, X, y, 100), 6)
    samples = [float(st.carry["sample_chunks"]) for st in states]
    if schedule == "full":  # every chunk from the start: the Gram serves every trial, the first included
        assert kept == [True] * 7
    else:  # grown: the first trial of a new sample's Gram (its pass B deferred to prepare) solves by LU
        assert samples[:3] == [2.0, 4.0, 8.0] and not kept[0] and kept[-1]
        assert kept.count(False) == len(set(samples))


def test_a_resumed_run_takes_the_uninterrupted_runs_steps_bitwise(monkeypatch):
    """A resume (a new process: no decomposition kept, the carry as stored) steps as the uninterrupted run."""
    X, y, s = problem(hidden_alpha="readout")
    runner = InMemoryRunner(s, X, y, 300)
    calls = spy_on_kept(monkeypatch)
    whole = run(s, runner, 6)
    assert calls  # the uninterrupted run took the kept path
    del calls[:]
    ShiftedGram._kept = []
    stored = whole[3]
    resumed_solver = problem(hidden_alpha="readout")[2]
    state = resumed_solver.resume(runner, LoopState(stored.iteration, [np.array(W, np.float64) for W in stored.weights],
                                                    {k: np.array(v, np.float64) for k, v in stored.carry.items()}), set())
    resumed = run(resumed_solver, InMemoryRunner(resumed_solver, X, y, 300), 3, state)
    assert calls  # and so did the resumed one
    for a, b in zip(resumed[-1].weights, whole[-1].weights):
        np.testing.assert_array_equal(a, b)


def test_a_store_from_before_the_rule_steps_by_lu_throughout(monkeypatch):
    """A carry without gram_sample (stores written before the kept decomposition) never takes it: it resumes as it ran."""
    X, y, s = problem(hidden_alpha="readout")
    runner = InMemoryRunner(s, X, y, 300)
    state = s.initialize(runner)
    del state.carry["gram_sample"]
    monkeypatch.setattr(ShiftedGram, "of", classmethod(lambda cls, *a, **k: pytest.fail("kept decomposition used")))
    states = run(s, runner, 3, state)
    assert "gram_sample" not in states[-1].carry


def test_a_gram_wider_than_the_kept_limit_steps_by_lu(monkeypatch):
    """Inputs wider than ShiftedGram.MAX_WIDTH (its n³ decomposition against n² a step) keep the LU step, bit for bit."""
    X, y, s = problem()
    rng = np.random.default_rng(6)
    W, G, S, D = rng.normal(size=(16, 13)), spd(rng, 13), spd(rng, 16), rng.normal(size=(16, 13))
    want = s.layer_step(1, W, D, S, G, 0.1, 0.4, 900.0)
    monkeypatch.setattr(ShiftedGram, "MAX_WIDTH", 12)
    monkeypatch.setattr(ShiftedGram, "of", classmethod(lambda cls, *a, **k: pytest.fail("kept decomposition used")))
    s._input_gram_reused = True
    try:
        np.testing.assert_array_equal(s.layer_step(1, W, D, S, G, 0.1, 0.4, 900.0), want)
    finally:
        s._input_gram_reused = False


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_halves_work_in_a_forked_child_after_the_parent_used_them():
    """A forked child has no helper thread of its parent's: it makes its own (a submit to the parent's would hang)."""
    import multiprocessing

    a, b = np.ones((128, 200)), np.ones((200, 100))
    halves_matmul(a, b)  # the parent's helper thread exists now
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(halves_matmul, (a, b)).get(timeout=60)
    np.testing.assert_array_equal(got, halves_matmul(a, b))
