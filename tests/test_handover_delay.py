"""``handover_delay`` d (consensus,gauss-newton): the hand-over comes d consensus passes after the first pass that
gained less than ``handover_gain`` (default 1 in the hand-over since session 17, 0 elsewhere); stored with the run
(old stores resume with 0, their rule), and a run killed with -9 in the delayed pass resumes to the uninterrupted run
bit for bit."""
import numpy as np
import pytest

from solvers import make_solver
from solvers.config import HANDOVER, STORED_BEFORE, TrainConfig
from solvers.errors import InputError
from solvers.reference import fit_in_memory


def _solver(delay, gain=0.01):
    return make_solver(TrainConfig(solver=HANDOVER, handover_gain=gain, handover_delay=delay), 3,
                       x_mean=np.zeros(3), x_scale=np.ones(3), classes=np.arange(2))


def test_the_hand_over_waits_delay_passes_after_the_first_small_gain():
    scores = [0.80, 0.85, 0.855, 0.857, 0.90]  # pass 3 is the first to gain < 0.01
    now, later, two = _solver(0), _solver(1), _solver(2)
    assert [now.should_hand_over(scores[:k]) for k in range(6)] == [False, False, False, True, True, False]
    assert [later.should_hand_over(scores[:k]) for k in range(6)] == [False, False, False, False, True, True]
    assert [two.should_hand_over(scores[:k]) for k in range(6)] == [False, False, False, False, False, True]
    # delay 0 is the rule as before the setting: the last pass's gain alone
    for k in range(6):
        s = np.asarray(scores[:k])
        assert now.should_hand_over(s) == (s.size >= 2 and s[-1] - s[-2] < 0.01)


def test_default_one_in_the_hand_over_only_and_stored_before_zero_and_not_resumable():
    """The default: HANDOVER_DELAY (1) for consensus,gauss-newton, given or chosen by auto from the data's size; 0
    for consensus alone and Gauss-Newton (which do not read it); a given value as it is; stored as the number."""
    from solvers.config import HANDOVER_DELAY

    assert HANDOVER_DELAY == 1 and STORED_BEFORE["handover_delay"] == 0
    assert TrainConfig(solver=HANDOVER).handover_delay == 1
    assert TrainConfig(solver="consensus").handover_delay == 0 and TrainConfig(solver="gauss-newton").handover_delay == 0
    assert TrainConfig(solver=HANDOVER, handover_delay=0).handover_delay == 0
    assert TrainConfig().handover_delay is None  # auto: resolved with the solver
    chosen, _ = TrainConfig().choose_solver(60_000, 2)
    assert (chosen.solver, chosen.handover_delay) == (HANDOVER, 1)
    small, _ = TrainConfig().choose_solver(10_000, 2)
    assert (small.solver, small.handover_delay) == ("gauss-newton", 0)
    assert TrainConfig(solver=HANDOVER).to_dict()["handover_delay"] == 1  # stored as the number it ran with
    assert _solver(None).config.handover_delay == 1
    stored = TrainConfig(solver=HANDOVER).to_dict()
    del stored["handover_delay"]  # written before the setting existed
    config, changed = TrainConfig.resumed(stored, {})
    assert config.handover_delay == 0 and not changed
    with pytest.raises(InputError, match="cannot resume with settings that change the stored state.*handover_delay"):
        TrainConfig.resumed(stored, {"handover_delay": 1})
    kept, _ = TrainConfig.resumed(TrainConfig(solver=HANDOVER, handover_delay=1).to_dict(), {})
    assert kept.handover_delay == 1
    with pytest.raises(InputError, match="handover_delay must be >= 0"):
        TrainConfig(handover_delay=-1)


def test_in_memory_the_delay_runs_one_more_consensus_pass_and_changes_nothing_before_it():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 8)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] + X[:, 2] > 0).astype(int)
    cfg = dict(solver=HANDOVER, hidden=(16,), shards=2, first_lr_scale=2.0, handover_gain=0.05,
               validation_fraction=0.2, patience=0, iterations=6, seed=1)
    runs = {d: fit_in_memory(X, y, TrainConfig(**cfg, handover_delay=d), chunk_rows=500) for d in (0, 1)}
    phases = {d: [h["phase"] for h in r.history] for d, r in runs.items()}
    h0 = phases[0].index("hand-over")
    assert h0 >= 2 and phases[1].index("hand-over") == h0 + 1 and phases[1][h0] == "consensus"
    timings = ("seconds", "rows_per_second", "read_mb_per_second")
    strip = [[{k: v for k, v in h.items() if k not in timings} for h in r.history[:h0]] for r in runs.values()]
    assert strip[0] == strip[1]  # the same consensus passes up to the one the delay adds


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from storage.data import write_data

    d = tmp_path_factory.mktemp("handover_delay")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20_000, 20)).astype(np.float32)
    write_data(d / "train.zarr", X, (X[:, 0] * X[:, 1] + X[:, 2] > 0).astype(int), chunk_rows=4096)
    return d


# the hand-over's consensus phase with x2 in pass 1: pass 3 gains < 0.05, so delay 0 hands over at iteration 4,
# delay 1 runs consensus pass 4 and hands over at 5
DELAYED = ("--solver", "consensus,gauss-newton", "--shards", "2", "--first-lr-scale", "2", "--handover-gain", "0.05",
           "--handover-delay", "1")


def _train(*args):
    from tests.conftest import run_module

    r = run_module("pipeline.train", *args, "--workers", "1", "--dashboard-address", ":0", "--no-progress")
    assert r.returncode == 0, r.stderr


def _run(data, store):
    _train("--data", data / "train.zarr", "--store", store, "--hidden", "64", "--iterations", "6", "--chunk-rows",
           "1000", *DELAYED)


def _committed(store) -> int:
    import json

    try:
        return json.loads((store / "manifest.json").read_text())["iteration"]
    except (OSError, ValueError):
        return -1


def _final(store):
    import json

    from pipeline.model import load_network

    timings = ("seconds", "rows_per_second", "read_mb_per_second")
    history = json.loads((store / "manifest.json").read_text())["history"]
    return load_network(store).weights, [{k: v for k, v in h.items() if k not in timings} for h in history]


@pytest.fixture(scope="module")
def uninterrupted(data):
    from storage.runstore import RunStore

    _run(data, data / "baseline.zarr")
    weights, history = _final(data / "baseline.zarr")
    assert [h["phase"] for h in history][2:5] == ["consensus", "consensus", "hand-over"]
    assert RunStore.open(data / "baseline.zarr").attrs["config"]["handover_delay"] == 1
    return weights, history


@pytest.mark.parametrize("after", [3, pytest.param(4, marks=pytest.mark.slow)])
def test_sigkill_in_or_after_the_delayed_pass_then_resume_equals_uninterrupted(data, uninterrupted, tmp_path, after):
    """Killed (-9) once iteration 3 (the first small gain) is committed, inside the delayed consensus pass 4, the
    resume (no flag given: the stored setting) runs pass 4 and hands over at 5; killed after 4, inside the hand-over;
    bitwise the uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    store = tmp_path / "run.zarr"
    cmd = [sys.executable, "-m", "pipeline.train", "--data", str(data / "train.zarr"), "--store", str(store),
           "--hidden", "64", "--iterations", "6", "--chunk-rows", "1000", *DELAYED, "--workers", "1",
           "--dashboard-address", ":0", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while _committed(store) < after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGSTOP)
    killed_at = _committed(store)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed_at == after  # the run was killed, not finished
    _train("--store", store, "--resume")
    weights, history = _final(store)
    for W, V in zip(weights, uninterrupted[0], strict=True):
        np.testing.assert_array_equal(W, V)
    assert history == uninterrupted[1]


def test_first_lr_scale_defaults_to_2_in_the_hand_over_only():
    """--first-lr-scale's default: HANDOVER_FIRST_LR_SCALE (2) for consensus,gauss-newton, given or chosen by auto
    from the data's size; 1 for consensus alone and for Gauss-Newton; a given value as it is."""
    from solvers.config import HANDOVER_FIRST_LR_SCALE

    assert HANDOVER_FIRST_LR_SCALE == 2.0
    assert TrainConfig(solver=HANDOVER).first_lr_scale == 2.0
    assert TrainConfig(solver="consensus").first_lr_scale == 1.0
    assert TrainConfig(solver=HANDOVER, first_lr_scale=1.0).first_lr_scale == 1.0
    assert TrainConfig().first_lr_scale is None  # auto: resolved with the solver
    chosen, _ = TrainConfig().choose_solver(60_000, 2)
    assert (chosen.solver, chosen.first_lr_scale) == (HANDOVER, 2.0)
    small, _ = TrainConfig().choose_solver(10_000, 2)
    assert (small.solver, small.first_lr_scale) == ("gauss-newton", 1.0)
    assert TrainConfig(solver=HANDOVER).to_dict()["first_lr_scale"] == 2.0  # stored as the number it ran with
    solver = make_solver(TrainConfig(solver=HANDOVER), 3, x_mean=np.zeros(3), x_scale=np.ones(3), classes=np.arange(2))
    assert solver.first.lr_at(1) == 2 * solver.first.lr_at(2)


def _three_class_store(path):
    """Write the two old-store tests' data: 800 rows of 5 features, 3 classes, 4 chunks of 200 rows."""
    from storage.data import write_data

    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 5)).astype(np.float32)
    write_data(path, X, np.argmax(X @ rng.normal(size=(5, 3)), axis=1), chunk_rows=200)


def test_an_old_hand_over_store_resumes_under_its_first_lr_scale_1_bitwise(client, tmp_path):
    """A hand-over run store written before first_lr_scale existed (no key: STORED_BEFORE's 1), stopped before pass 1,
    resumes (no flag given) with pass 1 at 1 despite the default of 2: the run at 1 without a stop, bit for bit."""
    from pipeline.training import train
    from tests.conftest import quiet, resume_as_older_store

    _three_class_store(tmp_path / "d.zarr")
    cfg = dict(solver=HANDOVER, hidden=(6,), shards=2, validation_fraction=0.2, patience=0, seed=1, first_lr_scale=1.0)
    whole = train(client, store=tmp_path / "whole.zarr", data=tmp_path / "d.zarr",
                  config=TrainConfig(**cfg, iterations=2), chunk_rows=200, report=quiet)
    train(client, store=tmp_path / "old.zarr", data=tmp_path / "d.zarr", config=TrainConfig(**cfg, iterations=0),
          chunk_rows=200, report=quiet)
    resumed = resume_as_older_store(client, tmp_path / "old.zarr", "first_lr_scale", 2)
    assert resumed.solver.config.first_lr_scale == 1.0
    assert [h["learning_rate"] for h in resumed.history] == [h["learning_rate"] for h in whole.history]
    for W, V in zip(resumed.network.weights, whole.network.weights, strict=True):
        np.testing.assert_array_equal(W, V)
    new = train(client, store=tmp_path / "new.zarr", data=tmp_path / "d.zarr",
                config=TrainConfig(**{**cfg, "first_lr_scale": None}, iterations=1), chunk_rows=200, report=quiet)
    assert new.history[0]["learning_rate"] == 2 * whole.history[0]["learning_rate"]  # a new store: the default 2


def test_an_old_hand_over_store_resumes_under_its_handover_delay_0_bitwise_and_a_new_store_gets_1(client, tmp_path):
    """A hand-over run store written before handover_delay existed (no key: STORED_BEFORE's 0), stopped after pass 2
    (before the first gain test), resumes (no flag given) handing over at iteration 3 despite the default of 1: the
    run at 0 without a stop, bit for bit. A new store (no setting given) hands over a pass later and stores 1."""
    from pipeline.training import train
    from storage.runstore import RunStore
    from tests.conftest import quiet, resume_as_older_store

    _three_class_store(tmp_path / "d.zarr")
    # gain 1: every pass gains less, so the gain test holds at its first chance (after pass 2)
    cfg = dict(solver=HANDOVER, hidden=(6,), shards=2, validation_fraction=0.2, patience=0, seed=1, handover_gain=1.0,
               handover_delay=0)
    whole = train(client, store=tmp_path / "whole.zarr", data=tmp_path / "d.zarr",
                  config=TrainConfig(**cfg, iterations=4), chunk_rows=200, report=quiet)
    assert [h["phase"] for h in whole.history] == ["consensus", "consensus", "hand-over", "gauss-newton"]
    train(client, store=tmp_path / "old.zarr", data=tmp_path / "d.zarr", config=TrainConfig(**cfg, iterations=2),
          chunk_rows=200, report=quiet)
    resumed = resume_as_older_store(client, tmp_path / "old.zarr", "handover_delay", 4)
    assert resumed.solver.config.handover_delay == 0
    assert [h["phase"] for h in resumed.history] == [h["phase"] for h in whole.history]
    for W, V in zip(resumed.network.weights, whole.network.weights, strict=True):
        np.testing.assert_array_equal(W, V)
    new = train(client, store=tmp_path / "new.zarr", data=tmp_path / "d.zarr",
                config=TrainConfig(**{**cfg, "handover_delay": None}, iterations=4), chunk_rows=200, report=quiet)
    assert [h["phase"] for h in new.history] == ["consensus", "consensus", "consensus", "hand-over"]  # the default 1
    assert RunStore.open(tmp_path / "new.zarr").attrs["config"]["handover_delay"] == 1
