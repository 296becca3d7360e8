"""ADMM and dlADMM with ``readout_refit``: the chosen readout refitted on the training and held-out rows.

The candidates R are chosen on the held-out rows as before; the model's output layer is S_j, the same α fitted
on all rows (solvers/readout.py). Checked here: the kernel sums of the two stacks, the held-out accuracy early
stopping reads (R_j's, S_j has seen those rows), S's MM step on all rows solved densely, the iterates and the
kept iteration unchanged, the Dask pipeline equal to the in-memory reference, and a run killed with SIGKILL
resuming bitwise.
"""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from solvers import cross_entropy as ce
from solvers import readout
from solvers.config import STORED_BEFORE, TrainConfig, describe
from solvers.errors import InputError
from solvers.losses import encode_labels, predict_classes, targets
from solvers.reference import fit_in_memory
from solvers.validation import RowSplit
from tests.conftest import make_data, quiet, resume_as_older_store

ROOT = Path(__file__).resolve().parents[1]


def ones(a):
    return np.column_stack([a, np.ones(len(a))])


def features(solver, X, weights):
    """Return ``h(… W_1 a_0)`` of raw rows ``X`` for the hidden ``weights`` (float64), as the refit sees them."""
    a = solver.inputs(X)
    for W in weights[:-1]:
        a = solver.act.h(a @ W[:, :-1].T.astype(a.dtype) + W[:, -1].astype(a.dtype))
    return a.astype(np.float64)


@pytest.mark.parametrize("K", [1, 3])
def test_the_kernel_sums_of_both_stacks(K):
    """``[R; S]``: R's losses and gradient are those without the refit; S's gradient on every row; held-out rows
    also the whole Gram and R's correct predictions."""
    rng = np.random.default_rng(0)
    a, idx = rng.normal(size=(40, 5)), rng.integers(0, max(K, 2), size=40)
    t = targets(idx, max(K, 2), np.float64)
    R, S = rng.normal(size=(readout.N_ALPHAS, K, 6)), rng.normal(size=(readout.N_ALPHAS, K, 6))
    plain = readout.logistic_parts(a, t, readout.broadcast({"R": R}, np.float64), known=2)
    both = readout.logistic_parts(a, t, readout.broadcast({"R": R, "S": S}, np.float64), known=2, refit=True)
    for name in plain:
        np.testing.assert_array_equal(both[name], plain[name])
    np.testing.assert_allclose(both["lr_grad_all"],
                               readout.logistic_parts(a, t, readout.broadcast({"R": S}, np.float64))["lr_grad"],
                               rtol=1e-12)
    held = readout.logistic_parts(a, t, readout.broadcast({"R": R, "S": S}, np.float64), held_out=True, refit=True)
    np.testing.assert_array_equal(held["lr_loss"], plain["lr_loss"])
    np.testing.assert_array_equal(held["lr_grad_all"], both["lr_grad_all"])
    np.testing.assert_allclose(held["out_gram"], ones(a).T @ ones(a), rtol=1e-12)
    correct = [np.sum(predict_classes(ones(a) @ V.T) == idx) for V in R]
    np.testing.assert_array_equal(held["lr_correct"], correct)


@pytest.mark.parametrize("solver_name", ["admm", "dladmm"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_the_model_is_the_chosen_alpha_refitted_on_all_rows(solver_name, n_classes):
    """The chosen j is R's (least held-out loss); the model's output layer is S_j; the held-out accuracy is R_j's;
    every S_j takes the MM step on the training and held-out rows together (solved densely here)."""
    rng = np.random.default_rng(1)
    n = 600
    X = rng.normal(size=(n, 6))
    y = (X[:, 0] + X[:, 1] ** 2 + rng.normal(scale=0.5, size=n) > 1).astype(int) + (X[:, 2] > 1) * (n_classes - 2)
    k = 3
    cfg = TrainConfig(solver=solver_name, hidden=(12,), iterations=k, seed=4, validation_fraction=0.2,
                      readout_refit=True)
    before = fit_in_memory(X, y, replace(cfg, iterations=k - 1), chunk_rows=50, dtype=np.float64)
    r = fit_in_memory(X, y, cfg, chunk_rows=50, dtype=np.float64)
    held = RowSplit(cfg.validation_fraction, cfg.seed).mask(0, n)
    T = targets(encode_labels(y, np.unique(y)), n_classes, np.float64)
    solver, state = r.solver, r.loop_state
    own = solver.iterate(state)
    F = features(solver, X, own)
    R, S = np.asarray(before.loop_state.carry["R"]), np.asarray(before.loop_state.carry["S"])
    losses = np.array([ce.loss_sum(ones(F[held]) @ W.T, T[held]) for W in R])
    j = len(losses) - 1 - int(np.argmin(losses[::-1]))
    assert r.history[-1]["validation_loss"] == pytest.approx(losses[j] / held.sum(), rel=1e-9)
    np.testing.assert_allclose(state.weights[-1], S[j], rtol=1e-12, atol=1e-12)
    truth = encode_labels(y, np.unique(y))
    assert r.history[-1]["validation_accuracy"] == np.mean(predict_classes(ones(F[held]) @ R[j].T) == truth[held])
    c = readout.bound(T.shape[1])
    At = ones(F)
    gbar = np.mean(np.var(F[~held], axis=0)) * (~held).sum()  # R's α and floor: the training rows' Gram
    P = np.diag(np.r_[np.ones(F.shape[1]), 0.0])
    for jj, alpha in enumerate(np.asarray(state.carry["R_alphas"])):
        V = S[jj]
        g = (T - ce.probabilities(At @ V.T)).T @ At
        g[:, :-1] -= alpha * V[:, :-1]
        floor = cfg.ridge * c * np.mean(np.var(F, axis=0)) * n  # mm_step's floor: of the Gram it is given
        step = np.linalg.solve(c * At.T @ At + (alpha + floor) * P, g.T).T
        np.testing.assert_allclose(state.carry["S_x"][jj], V + step, rtol=1e-7, atol=1e-9)
    assert gbar > 0


@pytest.mark.parametrize("solver_name", ["admm", "dladmm"])
def test_the_iterations_and_the_kept_iteration_are_those_without_the_refit(solver_name):
    """The refit changes the model's output layer only: iterates, R's candidates, held-out loss and accuracy
    (early stopping's inputs, float64) are the same as without it."""
    X, y = make_data(n=800, n_classes=3)
    cfg = TrainConfig(solver=solver_name, hidden=(12,), iterations=4, seed=1, readout_refit=False)
    a = fit_in_memory(X, y, cfg, chunk_rows=200, dtype=np.float64)
    b = fit_in_memory(X, y, replace(cfg, readout_refit=True), chunk_rows=200, dtype=np.float64)
    for W, W_b in zip(a.solver.iterate(a.loop_state), b.solver.iterate(b.loop_state)):
        np.testing.assert_array_equal(W, W_b)
    np.testing.assert_array_equal(a.loop_state.carry["R"], b.loop_state.carry["R"])
    for h, h_b in zip(a.history, b.history):
        assert h["validation_loss"] == h_b["validation_loss"] and h["alpha"] == h_b["alpha"]
        assert h["validation_accuracy"] == h_b["validation_accuracy"]
    assert a.best_iteration == b.best_iteration
    assert not np.array_equal(a.network.weights[-1], b.network.weights[-1])


def test_no_refit_without_held_out_rows_or_for_regression():
    """Nothing held out, a numeric alpha or a regressor: the flag changes nothing."""
    X, y = make_data(n=600)
    for cfg in (TrainConfig(solver="admm", hidden=(8,), iterations=2, validation_fraction=0, readout_refit=False),
                TrainConfig(solver="dladmm", hidden=(8,), iterations=2, alpha=0.01, readout_refit=False)):
        a = fit_in_memory(X, y, cfg, chunk_rows=200)
        b = fit_in_memory(X, y, replace(cfg, readout_refit=True), chunk_rows=200)
        for W, W_b in zip(a.network.weights, b.network.weights):
            np.testing.assert_array_equal(W, W_b)
    r = np.random.default_rng(2).normal(size=600)
    cfg = TrainConfig(solver="admm", task="regression", hidden=(8,), iterations=2)
    a, b = (fit_in_memory(X, r, replace(cfg, readout_refit=v), chunk_rows=200) for v in (False, True))
    for W, W_b in zip(a.network.weights, b.network.weights):
        np.testing.assert_array_equal(W, W_b)


def test_nothing_held_out_carries_no_second_stack():
    """With no held-out rows there is nothing to refit on: no S stack is carried, checkpointed or stepped."""
    from solvers.admm import ADMMSolver
    from solvers.dladmm import DLADMMSolver
    for cls, name in ((ADMMSolver, "admm"), (DLADMMSolver, "dladmm")):
        held = cls(TrainConfig(solver=name, hidden=(8,)), 3, [0, 1], np.zeros(3), np.ones(3))
        none = cls(TrainConfig(solver=name, hidden=(8,), validation_fraction=0), 3, [0, 1], np.zeros(3), np.ones(3))
        assert held.refit_all and not none.refit_all


@pytest.mark.parametrize("solver_name", ["admm", "dladmm"])
def test_pipeline_equals_in_memory_with_the_refit(client, tmp_path, solver_name):
    """The Dask pipeline with readout_refit (and the skip path) equals the in-memory reference."""
    from pipeline.model import load_network
    from pipeline.training import train
    from storage.data import write_data

    X, y = make_data(n=2000, n_classes=3)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=512)
    cfg = TrainConfig(solver=solver_name, hidden=(12, 8), iterations=3, seed=3, readout_refit=True, input_skip=True)
    result = train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=512,
                   report=quiet)
    ref = fit_in_memory(X, y, cfg, chunk_rows=512)
    assert [h["validation_accuracy"] for h in result.history] == pytest.approx(
        [h["validation_accuracy"] for h in ref.history], abs=1e-3)
    for W, W_ref in zip(result.network.weights, ref.network.weights):
        np.testing.assert_allclose(W, W_ref, rtol=2e-4, atol=2e-5)
    disk = load_network(tmp_path / "r.zarr")
    for W, W_disk in zip(result.network.weights, disk.weights):
        np.testing.assert_array_equal(W, W_disk)


@pytest.mark.parametrize("refit", [False, True])
def test_admm_resumed_after_iteration_1_equals_the_uninterrupted_run_with_three_classes(client, tmp_path, refit):
    """ADMM's W-solves are kept in C order: a resume (which reads them back in C order) is bitwise the run
    (before, eq. 6's operators of a transposed solve rounded differently: 1e-7 off after the resume, 3 classes)."""
    from pipeline.training import train
    from storage.data import write_data

    X, y = make_data(n=6000, n_classes=3)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=1000)
    cfg = TrainConfig(solver="admm", hidden=(32,), iterations=3, readout_refit=refit)
    full = train(client, store=tmp_path / "full.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=1000,
                 report=quiet)
    train(client, store=tmp_path / "part.zarr", data=tmp_path / "d.zarr", config=replace(cfg, iterations=1),
          chunk_rows=1000, report=quiet)
    resumed = train(client, store=tmp_path / "part.zarr", resume=True, iterations=3, report=quiet)
    assert [h["objective"] for h in resumed.history] == [h["objective"] for h in full.history]
    for W, W_ref in zip(resumed.network.weights, full.network.weights):
        np.testing.assert_array_equal(W, W_ref)


def _committed(store) -> int:
    try:
        return json.loads((Path(store) / "manifest.json").read_text())["iteration"]
    except (OSError, ValueError):
        return -1


def _final(store):
    from pipeline.model import load_network

    m = json.loads((Path(store) / "manifest.json").read_text())
    timings = ("seconds", "rows_per_second", "read_mb_per_second")
    return load_network(store).weights, [{k: v for k, v in h.items() if k not in timings} for h in m["history"]]


@pytest.mark.slow
@pytest.mark.parametrize("solver_name", ["admm", "dladmm"])
def test_sigkill_with_the_refit_then_resume_equals_uninterrupted(tmp_path, solver_name):
    """Killed (SIGKILL) inside iteration 2 or 3, the resume (no flag given) goes on with the refit, bitwise."""
    from storage.data import write_data

    X, y = make_data(n=6000, n_classes=3)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=1000)

    def cmd(store):
        return [sys.executable, "-m", "pipeline.train", "--data", str(tmp_path / "d.zarr"), "--store", str(store),
                "--solver", solver_name, "--hidden", "32", "--iterations", "5", "--readout-refit", "--chunk-rows", "1000",
                "--workers", "1", "--dashboard-address", ":0", "--no-progress"]

    def run(c):
        r = subprocess.run(c, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr

    run(cmd(tmp_path / "full.zarr"))
    full = _final(tmp_path / "full.zarr")
    store = tmp_path / "run.zarr"
    proc = subprocess.Popen(cmd(store), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while _committed(store) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGSTOP)
    killed_at = _committed(store)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= killed_at < 5
    run([sys.executable, "-m", "pipeline.train", "--store", str(store), "--resume", "--workers", "1",
         "--dashboard-address", ":0", "--no-progress"])
    weights, metrics = _final(store)
    for W, W_ref in zip(weights, full[0]):
        np.testing.assert_array_equal(W, W_ref)
    assert metrics == full[1]


def test_refit_is_the_default_and_old_stores_config_resumes_without_it():
    """Session 13 made the refit the default; a store written before the setting existed ran without it."""
    assert TrainConfig().readout_refit
    stored = TrainConfig(solver="admm").to_dict()
    del stored["readout_refit"]  # written before the setting existed
    config, changed = TrainConfig.resumed(stored, {})
    assert config.readout_refit is False and not changed
    assert STORED_BEFORE["readout_refit"] is False  # whatever the field's default becomes
    with pytest.raises(InputError, match="cannot resume with settings that change the stored state.*readout_refit"):
        TrainConfig.resumed(stored, {"readout_refit": True})
    assert "readout refit True" in describe(TrainConfig(solver="dladmm"))
    assert "readout refit" not in describe(TrainConfig(solver="gauss-newton"))  # only admm and dladmm read it


@pytest.mark.parametrize("solver_name", ["admm", "dladmm"])
def test_an_old_store_resumes_bitwise_without_the_refit(client, tmp_path, solver_name):
    """A run store whose config predates readout_refit resumes (no flag given) as the run without the refit."""
    from pipeline.training import train
    from storage.data import write_data

    X, y = make_data(n=3000, n_classes=3)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=1000)
    cfg = TrainConfig(solver=solver_name, hidden=(16,), iterations=3, readout_refit=False)
    full = train(client, store=tmp_path / "full.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=1000,
                 report=quiet)
    train(client, store=tmp_path / "old.zarr", data=tmp_path / "d.zarr", config=replace(cfg, iterations=1),
          chunk_rows=1000, report=quiet)
    resumed = resume_as_older_store(client, tmp_path / "old.zarr", "readout_refit", 3)  # as before session 13
    assert resumed.solver.config.readout_refit is False
    assert [h["objective"] for h in resumed.history] == [h["objective"] for h in full.history]
    for W, W_ref in zip(resumed.network.weights, full.network.weights):
        np.testing.assert_array_equal(W, W_ref)
