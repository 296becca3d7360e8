"""Progressive sampling (--sample-schedule): growing seeded samples of whole chunks, the same in both runners."""
import numpy as np
import pytest

from pipeline.training import train
from solvers import sampling
from solvers.config import TrainConfig
from solvers.errors import InputError
from solvers.reference import fit_in_memory
from storage.data import write_data
from tests.conftest import quiet




def make_data(n=24_000, d=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] + X[:, 2] - 0.3 * X[:, 3] ** 2 > 0).astype(int)
    return X, y


def test_samples_are_nested_seeded_prefixes_and_grow_to_all():
    first = sampling.sample(20, 4, seed=3)
    assert first == sorted(first) and len(first) == 4
    assert set(first) <= set(sampling.sample(20, 8, seed=3))
    assert sampling.sample(20, 20, seed=3) is None
    assert sampling.sample(20, 4, seed=4) != first
    bounds = [(i * 1000, (i + 1) * 1000) for i in range(20)]
    assert sampling.initial_count(bounds, "grow", 4500) == 5
    assert sampling.initial_count(bounds, "grow", 10) == 2
    assert sampling.initial_count(bounds, "full", 10) == 20
    assert sampling.next_count(5, 20, accepted=True, last=False) == 10
    assert sampling.next_count(5, 20, accepted=False, last=False) == 5
    assert sampling.next_count(5, 20, accepted=False, last=True) == 20
    assert sampling.resolve("auto", "gauss-newton") == "grow" and sampling.resolve("auto", "admm") == "full"


def test_grow_needs_gauss_newton():
    with pytest.raises(InputError, match="sample_schedule grow needs the gauss-newton solver"):
        TrainConfig(solver="admm", sample_schedule="grow")
    for solver in ("admm", "dladmm", "consensus"):  # rotate samples too: not silently ignored by the others
        with pytest.raises(InputError, match="sample_schedule rotate needs the gauss-newton solver"):
            TrainConfig(solver=solver, sample_schedule="rotate")
    TrainConfig(solver="admm")  # auto: full for admm


def test_grow_schedule_reaches_all_rows_and_the_full_batch_result():
    X, y = make_data()
    grow = fit_in_memory(X, y, TrainConfig(hidden=(32,), iterations=10, sample_start=2000, validation_fraction=0),
                         chunk_rows=1000)
    full = fit_in_memory(X, y, TrainConfig(hidden=(32,), iterations=10, sample_schedule="full",
                                           validation_fraction=0), chunk_rows=1000)
    rows = [h["sample_rows"] for h in grow.history]
    assert rows[0] < 24_000 and rows == sorted(rows) and rows[-1] == 24_000
    assert {h["sample_rows"] for h in full.history} == {24_000}
    # the same model class at convergence: training accuracy within a point of the full-batch run
    assert abs(grow.network.score(X, y) - full.network.score(X, y)) < 0.01
    assert grow.network.score(X, y) > 0.9


def test_pipeline_samples_like_the_reference(client, tmp_path):
    X, y = make_data()
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=1000)
    cfg = TrainConfig(hidden=(16,), iterations=5, sample_start=3000, seed=2, validation_fraction=0)
    result = train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=1000,
                   report=quiet)
    ref = fit_in_memory(X, y, cfg, chunk_rows=1000)
    assert [h["sample_rows"] for h in result.history] == [h["sample_rows"] for h in ref.history]
    assert result.history[0]["sample_rows"] < 24_000
    for W, W_ref in zip(result.network.weights, ref.network.weights):
        np.testing.assert_allclose(W, W_ref, rtol=2e-4, atol=2e-5)


class Crash(Exception):
    pass


def test_resume_with_a_growing_sample_is_exact(client, tmp_path):
    """A run that dies after committing iteration 2 resumes on the same samples (kill -9: tests/test_resume.py)."""
    X, y = make_data()
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=1000)
    cfg = TrainConfig(hidden=(16,), iterations=6, sample_start=2000, validation_fraction=0)
    whole = train(client, store=tmp_path / "a.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=1000,
                  report=quiet)

    def crash_after_2(line):
        if line.split()[:1] == ["2"]:
            raise Crash

    with pytest.raises(Crash):
        train(client, store=tmp_path / "b.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=1000,
              report=crash_after_2)
    resumed = train(client, store=tmp_path / "b.zarr", resume=True, report=quiet)
    rows = [h["sample_rows"] for h in resumed.history]
    assert rows == [h["sample_rows"] for h in whole.history] and rows[0] < rows[-1]
    for a, b in zip(whole.network.weights, resumed.network.weights):
        np.testing.assert_array_equal(a, b)


def test_rotate_walks_one_epoch_of_disjoint_windows_then_grows():
    n, m = 20, 6  # ⌈20/6⌉ = 4 windows; the last wraps round onto the first chunks of the permutation
    windows = [sampling.sample(n, m, seed=3, window=w) for w in range(4)]
    assert windows[0] == sampling.sample(n, m, seed=3)  # window 0 is grow's first sample
    assert all(len(w) == m and w == sorted(w) for w in windows)
    assert not set(windows[0]) & set(windows[1]) and not set(windows[1]) & set(windows[2])
    assert set().union(*windows) == set(range(n))
    assert sampling.initial_window("rotate", m, n) == 0 and sampling.initial_window("grow", m, n) == -1
    assert sampling.initial_window("rotate", n, n) == -1
    bounds = [(i * 10_000, (i + 1) * 10_000) for i in range(6)]
    assert sampling.initial_count(bounds, "rotate", 6000) == 1 and sampling.initial_count(bounds, "grow", 6000) == 2
    state, seen = (m, 0), []
    for accepted in (True, False, True, True, True, True):
        seen.append(state)
        state = sampling.next_sample(*state, n, accepted, last=False)
    assert seen == [(6, 0), (6, 1), (6, 1), (6, 2), (6, 3), (12, -1)]  # a rejected step keeps its window
    assert state == (20, -1)
    assert sampling.next_sample(6, 2, n, True, last=True) == (20, -1)
    assert sampling.next_sample(5, -1, n, True, last=False) == (10, -1)  # grow as before
    assert sampling.resolve("auto", "gauss-newton", conv=True) == "rotate"
    assert sampling.start_rows(0, conv=True) == sampling.CONV_START_ROWS
    assert sampling.start_rows(0) == sampling.START_ROWS and sampling.start_rows(700, conv=True) == 700


def test_rotate_schedule_in_memory_reads_new_windows_and_ends_on_all_rows(monkeypatch):
    X, y = make_data()
    cfg = TrainConfig(hidden=(16,), iterations=8, sample_schedule="rotate", sample_start=4000, validation_fraction=0)
    windows = []
    sample = sampling.sample

    def record(n, m, seed, window=-1):
        windows.append((m, window))
        return sample(n, m, seed, window)

    monkeypatch.setattr(sampling, "sample", record)
    fit = fit_in_memory(X, y, cfg, chunk_rows=1000)
    assert all(h["accepted"] for h in fit.history)
    assert [h["sample_rows"] for h in fit.history] == [4000] * 6 + [8000, 24_000]  # 6 windows of 4 of 24 chunks
    assert sorted({w for m, w in windows if w >= 0}) == list(range(6))
    assert fit.loop_state.carry["sample_window"] == -1
    assert fit.network.score(X, y) > 0.85


def test_the_first_full_sample_iteration_defers_pass_b_once_and_resumes_bitwise(client, tmp_path, monkeypatch):
    """A run whose first sample is not every chunk (``defer_first_full``) runs a score pass at its growing iterations
    (1-3 here) and at its first iteration on every chunk (4: opened by the pass B that grew the sample), none after it
    (pass B back at each iteration's end). Killed after iteration 3 (a pass B that grows is pending), 4 (an unmoved
    pass B pending: the switch) or 5 (none pending), the resume decides alike from the stored carry: bitwise."""
    from solvers.gauss_newton import GaussNewtonSolver
    from storage.runstore import RunStore

    X, y = make_data()
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=1000)
    cfg = TrainConfig(hidden=(16,), iterations=7, sample_start=4000)  # 4 → 8 → 16 → 24 chunks; 10 % held out
    scored, original = [], GaussNewtonSolver._score_pass
    monkeypatch.setattr(GaussNewtonSolver, "_score_pass",
                        lambda self, runner, weights, k, sample: scored.append(k) or original(self, runner, weights, k, sample))
    whole = train(client, store=tmp_path / "a.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=1000,
                  report=quiet)
    rows = [h["sample_rows"] for h in whole.history]
    assert all(h["accepted"] for h in whole.history) and rows[2] < rows[3] == rows[-1]  # iteration 4: every chunk
    assert scored == [1, 2, 3, 4]  # no score pass after the first full-sample iteration
    timings = ("seconds", "rows_per_second", "read_mb_per_second")
    for crash_at in (3, 4, 5):
        def crash(line, at=str(crash_at)):
            if line.split()[:1] == [at]:
                raise Crash

        store = tmp_path / f"b{crash_at}.zarr"
        with pytest.raises(Crash):
            train(client, store=store, data=tmp_path / "d.zarr", config=cfg, chunk_rows=1000, report=crash)
        checkpoint = RunStore.open(store).load_checkpoint()
        assert checkpoint.iteration == crash_at and "defer_first_full" in checkpoint.carry
        assert ("pending" in checkpoint.carry) == (crash_at < 5)
        scored.clear()
        resumed = train(client, store=store, resume=True, report=quiet)
        assert scored == [k for k in (4,) if k > crash_at], crash_at
        assert ([{k: v for k, v in h.items() if k not in timings} for h in resumed.history]
                == [{k: v for k, v in h.items() if k not in timings} for h in whole.history]), crash_at
        for a, b in zip(whole.network.weights, resumed.network.weights, strict=True):
            np.testing.assert_array_equal(a, b)
