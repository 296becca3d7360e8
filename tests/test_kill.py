"""kill -9 in every phase (ingest, initialisation, a pass, a commit, predict): nothing stored is lost."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.model import load_network
from solvers.config import TrainConfig
from storage.data import open_data, write_data
from storage.runstore import RunStore

ROOT = Path(__file__).resolve().parents[1]


def snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def start(*args):
    return subprocess.Popen([sys.executable, "-m", *map(str, args)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _stopped(pid) -> bool:
    """True once process ``pid`` is stopped (or has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "tTZX"
    except (OSError, IndexError):
        return True


def stop_when(proc, condition, timeout=120):
    """Stop (SIGSTOP) the process group of ``proc`` in a state where ``condition()`` holds.

    Seen true, the condition is checked again with the group stopped, so a signal sent next lands in that very
    state: between a check and a signal a loaded machine can let the command go on (finish its pass, commit).
    """
    deadline = time.time() + timeout
    while True:
        if condition():
            os.killpg(proc.pid, signal.SIGSTOP)
            while not _stopped(proc.pid):
                assert time.time() < deadline + 60, "the command did not stop"
                time.sleep(0.001)
            if condition():
                return
            os.killpg(proc.pid, signal.SIGCONT)  # it moved on between the checks: not the point
        assert proc.poll() is None, "the command finished before the point"
        assert time.time() < deadline, "the point never came"
        time.sleep(0.01)


def kill_when(proc, condition, timeout=120):
    """SIGKILL the process group of ``proc`` in a state where ``condition()`` holds (:func:`stop_when`); return
    whether it was still running."""
    stop_when(proc, condition, timeout)
    alive = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return alive


def run(*args, timeout=300):
    r = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r


def test_kill_during_ingest_keeps_the_old_store_and_the_next_run_cleans_up(tmp_path):
    rng = np.random.default_rng(0)
    np.savetxt(tmp_path / "big.csv", rng.normal(size=(150_000, 20)), delimiter=",", fmt="%.6f")
    np.savetxt(tmp_path / "small.csv", rng.normal(size=(100, 20)), delimiter=",")
    out = tmp_path / "d.zarr"
    run("pipeline.ingest", tmp_path / "small.csv", "--out", out)
    before = snapshot(out)
    proc = start("pipeline.ingest", tmp_path / "big.csv", "--out", out, "--overwrite", "--chunk-rows", "4096")
    assert kill_when(proc, lambda: any(p.glob("X/c/*") for p in tmp_path.glob("d.zarr.partial-*")))
    assert snapshot(out) == before and open_data(out).n_samples == 100
    assert list(tmp_path.glob("d.zarr.partial-*"))
    r = run("pipeline.ingest", tmp_path / "big.csv", "--out", out, "--overwrite", "--chunk-rows", "4096")
    assert "left by an interrupted write" in r.stderr
    assert not list(tmp_path.glob("d.zarr.partial-*")) and open_data(out).n_samples == 150_000


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20_000, 20)).astype(np.float32)
    write_data(d / "d.zarr", X, (X[:, 0] * X[:, 1] > 0).astype(int), chunk_rows=4096)
    return d


def train_args(d, store, *extra):
    return ("pipeline.train", "--data", d / "d.zarr", "--store", store, "--solver", "admm", "--hidden", "64",
            "--iterations", "4", "--chunk-rows", "1000", "--workers", "1", "--dashboard-address", ":0",
            "--no-progress", *extra)


@pytest.fixture(scope="module")
def uninterrupted(data):
    run(*train_args(data, data / "full.zarr"))
    return load_network(data / "full.zarr").weights


def resume_and_compare(store, uninterrupted):
    """Resume the run in ``store`` to its end and check it against the uninterrupted weights."""
    run("pipeline.train", "--store", store, "--resume", "--workers", "1", "--dashboard-address", ":0",
        "--no-progress")
    for W, W_ref in zip(load_network(store).weights, uninterrupted):
        np.testing.assert_array_equal(W, W_ref)
    return True


def committed(store) -> int:
    try:
        return json.loads((Path(store) / "manifest.json").read_text())["iteration"]
    except (OSError, ValueError):
        return -1


def started(store) -> int:
    try:
        return json.loads((Path(store) / "writing.json").read_text())["iteration"]
    except (OSError, ValueError):
        return -1


def test_kill_during_initialisation_leaves_a_store_the_same_command_replaces(data, uninterrupted, tmp_path):
    store = tmp_path / "r.zarr"
    proc = start(*train_args(data, store))
    kill_when(proc, lambda: store.exists() and committed(store) < 0)  # created, iteration 0 not committed
    assert RunStore.open(store).committed_iteration() is None
    run(*train_args(data, store, "--overwrite"))
    for W, W_ref in zip(load_network(store).weights, uninterrupted):
        np.testing.assert_array_equal(W, W_ref)


def test_kill_during_a_pass_then_resume_equals_uninterrupted(data, uninterrupted, tmp_path):
    store = tmp_path / "r.zarr"
    proc = start(*train_args(data, store))
    kill_when(proc, lambda: started(store) == 3 and any((store / "state" / "slot1").rglob("c/*")))
    assert committed(store) == 2
    assert resume_and_compare(store, uninterrupted)


def test_crash_inside_a_commit_then_resume_equals_uninterrupted(client, data, uninterrupted, tmp_path,
                                                              monkeypatch):
    """The commit of iteration 2 dies after writing its weights, before the manifest: resume redoes iteration 2."""
    import storage.runstore as rs
    from pipeline.training import train

    store = tmp_path / "r.zarr"
    real = rs._write_json_atomic

    def die_at_manifest_2(path, obj):
        if Path(path).name == "manifest.json" and obj.get("iteration") == 2:
            raise SystemExit("killed inside the commit")
        real(path, obj)

    monkeypatch.setattr(rs, "_write_json_atomic", die_at_manifest_2)
    cfg = TrainConfig(solver="admm", hidden=(64,), iterations=4)
    with pytest.raises(SystemExit):
        train(client, store=store, data=data / "d.zarr", config=cfg, chunk_rows=1000, report=lambda _l: None)
    monkeypatch.setattr(rs, "_write_json_atomic", real)
    assert committed(store) == 1 and (store / "checkpoint" / "2").exists()  # half a commit on disk
    (store.with_name(store.name + ".lock")).unlink(missing_ok=True)  # the lock of the "killed" process
    assert resume_and_compare(store, uninterrupted)


def test_kill_during_predict_keeps_the_old_predictions(data, uninterrupted, tmp_path):
    out = tmp_path / "p.zarr"
    rng = np.random.default_rng(2)
    write_data(tmp_path / "many.zarr", rng.normal(size=(200_000, 20)), rng.integers(0, 2, 200_000),
               chunk_rows=1024)
    run("pipeline.predict", "--store", data / "full.zarr", "--data", data / "d.zarr", "--out", out, "--workers",
        "1", "--dashboard-address", ":0")
    before = snapshot(out)
    proc = start("pipeline.predict", "--store", data / "full.zarr", "--data", tmp_path / "many.zarr", "--out", out,
                 "--overwrite", "--workers", "1", "--dashboard-address", ":0")
    assert kill_when(proc, lambda: any(p.glob("prediction/c/*") for p in tmp_path.glob("p.zarr.partial-*")))
    assert snapshot(out) == before
    assert zarr.open_group(out, mode="r")["prediction"].shape == (20_000,)
    assert list(tmp_path.glob("p.zarr.partial-*"))
    r = run("pipeline.predict", "--store", data / "full.zarr", "--data", data / "d.zarr", "--out", out,
            "--overwrite", "--workers", "1", "--dashboard-address", ":0")
    assert "left by an interrupted write" in r.stderr and not list(tmp_path.glob("p.zarr.partial-*"))
    assert "taking over the stale lock of" in r.stderr and not (tmp_path / "p.zarr.lock").exists()  # its <OUT>.lock


def signal_when(proc, condition, signum, timeout=120):
    """Send ``signum`` to the process group of ``proc`` in a state where ``condition()`` holds (:func:`stop_when`)."""
    stop_when(proc, condition, timeout)
    os.killpg(proc.pid, signum)
    os.killpg(proc.pid, signal.SIGCONT)
    return proc.wait(timeout=300)


def overwriting(store):
    """True while a train --overwrite of ``store`` holds the old run aside and the new run has no commit."""
    return lambda: bool(list(store.parent.glob(f"{store.name}.replaced-*"))) and store.exists() and committed(store) < 0


def test_kill_9_of_train_overwrite_before_its_first_commit_loses_nothing(data, uninterrupted, tmp_path):
    """rel15_s15.md F4: the old run stays whole beside the store; readers name it in one line; the next train, with
    any flags, puts it back (rel16: a plain train too, then refused as for any existing run; with --overwrite it
    puts it back and replaces it once its own first commit is written)."""
    import shutil

    store = tmp_path / "r.zarr"
    shutil.copytree(data / "full.zarr", store)
    before = snapshot(store)
    proc = start(*train_args(data, store, "--overwrite"))
    assert kill_when(proc, overwriting(store))
    kept = list(tmp_path.glob("r.zarr.replaced-*"))
    assert len(kept) == 1 and snapshot(kept[0]) == before
    for cmd in (("pipeline.evaluate", "--store", store, "--data", data / "d.zarr", "--workers", "1",
                 "--dashboard-address", ":0"), ("pipeline.report", "--store", store, "--out", tmp_path / "rep")):
        r = subprocess.run([sys.executable, "-m", *map(str, cmd)], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2 and len(lines) == 1 and str(kept[0]) in lines[0], (cmd, r.stderr)
        assert "the next python -m pipeline.train on" in lines[0]
    # the plain train the readers point to (no --resume, no --overwrite): puts the run back, then is refused as for
    # any existing run, in one error line that says what to do
    r = subprocess.run([sys.executable, "-m", *map(str, train_args(data, store))], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and lines == [f"error: {store} already exists; pass --resume to continue that run or "
                                           "--overwrite to start a new one in its place"], r.stderr
    assert f"restored {store} from {kept[0].name}" in r.stdout
    assert snapshot(store) == before and not list(tmp_path.glob("r.zarr.*[!k]"))  # only r.zarr.lock's name is left
    proc = start(*train_args(data, store, "--overwrite"))  # killed again in the window: the same, then finished
    assert kill_when(proc, overwriting(store))
    r = run(*train_args(data, store, "--overwrite"))
    assert f"restored {store}" in r.stdout + r.stderr
    for W, W_ref in zip(load_network(store).weights, uninterrupted):
        np.testing.assert_array_equal(W, W_ref)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("r.zarr")) == ["r.zarr"]


def test_ctrl_c_of_train_overwrite_before_its_first_commit_puts_the_old_run_back(data, tmp_path):
    import shutil

    store = tmp_path / "r.zarr"
    shutil.copytree(data / "full.zarr", store)
    before = snapshot(store)
    proc = start(*train_args(data, store, "--overwrite"))
    # before the first commit has begun: a Ctrl-C while it is written (in the background, iteration 0) lets it finish,
    # and the run it replaced then goes (fix17: its files are synced now, so that window is no longer ~1 ms)
    not_committing = overwriting(store)
    assert signal_when(proc, lambda: not_committing() and not (store / "checkpoint" / "0").exists(), signal.SIGINT) == 130
    restored = snapshot(store) == before  # (a bool: pytest's diff of two large snapshots runs for many minutes)
    if not restored:  # the commit began between the check and the signal (a loaded machine): it was let finish, so
        # the new run is committed and the old one went; never both, never neither (audit17's SIGINT cells)
        assert RunStore.open(store).committed_iteration() is not None, "neither the old run nor a committed new one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr"]  # no .replaced-, .partial-, lock


# Run in the training process: SIGKILL its process group right before the N-th (KILL_NTH) of its operations KILL_EVENTS
# whose argument KILL_ARG ends in KILL_TAIL ({pid}: its process id), e.g. a commit's rename of a temporary it linked.
KILL_BEFORE = r"""
import os, signal, sys, runpy
_tail, _nth, _seen = os.environ["KILL_TAIL"].format(pid=os.getpid()), int(os.environ.get("KILL_NTH", "1")), [0]
_events, _arg = os.environ.get("KILL_EVENTS", "os.rename,os.replace").split(","), int(os.environ.get("KILL_ARG", "0"))
def _hook(event, args):
    if event in _events and len(args) > _arg and isinstance(args[_arg], (str, bytes, os.PathLike)) and \
            os.fsdecode(args[_arg]).endswith(_tail):
        _seen[0] += 1
        if _seen[0] == _nth:
            os.killpg(os.getpgrp(), signal.SIGKILL)
sys.addaudithook(_hook)
sys.argv = ["pipeline.train", *sys.argv[1:]]
runpy.run_module("pipeline.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow  # ~30 s each at load ~10; test_runstore's in-process test covers the rule fast
@pytest.mark.parametrize("name", [".manifest.previous.json.tmp-", ".manifest.json.tmp-"])
def test_kill_9_between_a_commits_temporary_and_its_rename_then_resume_removes_it(data, uninterrupted, tmp_path,
                                                                                  name):
    """rel16: the resumed trainer (another process id) left the killed one's .manifest.previous.json.tmp-PID (a hard
    link of manifest.json) or .manifest.json.tmp-PID for good. It now removes exactly those; a user's file of
    another name in the store, and files beside it, stay; the run resumes bitwise."""
    store = tmp_path / "r.zarr"
    cmd = train_args(data, store)
    proc = subprocess.Popen([sys.executable, "-c", KILL_BEFORE, *map(str, cmd[1:])], cwd=ROOT,
                            env=dict(os.environ, KILL_TAIL=name + "{pid}", KILL_NTH="2"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    assert proc.wait(timeout=300) == -signal.SIGKILL
    left = [p.name for p in store.iterdir() if p.name.startswith(name)]
    assert len(left) == 1 and int(left[0][len(name):]) == proc.pid, sorted(p.name for p in store.iterdir())
    (store / f"{name}notes").write_text("a user's file")
    (tmp_path / f"r.zarr{name}{proc.pid}").write_text("beside the store: not the run store's")
    assert resume_and_compare(store, uninterrupted)
    assert sorted(p.name for p in store.iterdir() if ".tmp-" in p.name) == [f"{name}notes"]
    assert (tmp_path / f"r.zarr{name}{proc.pid}").read_text() == "beside the store: not the run store's"


@pytest.mark.slow  # ~25 s at load ~10; test_safety's in-process test covers the rule fast
def test_kill_9_between_the_lock_records_private_file_and_its_link_then_train_removes_it(data, tmp_path):
    """rel16: a trainer killed after writing its private lock record (.<RUN>.lock.<host>.<pid>.<token>) and before
    linking it to <RUN>.lock left that file beside the store for good; the next train on the store removes it (and
    trains: no lock was ever taken)."""
    store = tmp_path / "r.zarr"
    cmd = train_args(data, store)
    proc = subprocess.Popen([sys.executable, "-c", KILL_BEFORE, *map(str, cmd[1:])], cwd=ROOT,
                            env=dict(os.environ, KILL_TAIL="r.zarr.lock", KILL_EVENTS="os.link", KILL_ARG="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    assert proc.wait(timeout=300) == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".r.zarr.lock.")]
    assert len(left) == 1 and f".{proc.pid}." in left[0] and not (tmp_path / "r.zarr.lock").exists(), left
    (tmp_path / ".r.zarr.lock.notes").write_text("a user's file")
    run(*train_args(data, store, "--iterations", "1"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".r.zarr.lock.notes", "r.zarr"]
