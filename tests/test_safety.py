"""Nothing lost: outputs replace only their own kind of store, one trainer per run store (the lock)."""
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
from pipeline.predict import predict
from pipeline.training import train
from solvers.config import TrainConfig
from solvers.errors import InputError
from storage import lock as lockmod
from storage.data import write_data
from storage.lock import RunLock, check_unlocked, lock_path
from tests.conftest import quiet

ROOT = Path(__file__).resolve().parents[1]




def tree_snapshot(path: Path) -> dict:
    """Return {relative file: bytes} of everything under ``path``."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A data store and a finished 2-iteration Gauss-Newton run, built in a subprocess."""
    d = tmp_path_factory.mktemp("safety")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 5)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    write_data(d / "d.zarr", X, y, chunk_rows=1000)
    r = subprocess.run([sys.executable, "-m", "pipeline.train", "--data", str(d / "d.zarr"), "--store",
                        str(d / "r.zarr"), "--hidden", "8", "--iterations", "2", "--workers", "1",
                        "--dashboard-address", ":0", "--no-progress"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return d


# ------------------------------------------------------------------ 1. outputs never replace other things

@pytest.mark.parametrize("target", ["user folder", "run store", "input data", "inside input data",
                                    "holds the run"])
def test_predict_overwrite_never_deletes_what_it_did_not_make(client, trained, tmp_path, target):
    d = trained
    if target == "user folder":
        out = tmp_path / "project"
        out.mkdir()
        (out / "notes.txt").write_text("my notes")
        message = "not an admm-dask predictions store"
    elif target == "run store":
        out = tmp_path / "other-run.zarr"
        subprocess.run(["cp", "-r", str(d / "r.zarr"), str(out)], check=True)
        message = "not an admm-dask predictions store .*run store"
    elif target == "input data":
        out, message = d / "d.zarr", "is .* the input"
    elif target == "inside input data":
        out, message = d / "d.zarr" / "X", "is .* the input"
    else:
        out, message = d, "is .* the input"
    before = tree_snapshot(out) if out.exists() else None
    data_before, run_before = tree_snapshot(d / "d.zarr"), tree_snapshot(d / "r.zarr")
    with pytest.raises(InputError, match=message):
        predict(client, d / "r.zarr", d / "d.zarr", out, overwrite=True)
    assert tree_snapshot(out) == before
    assert tree_snapshot(d / "d.zarr") == data_before and tree_snapshot(d / "r.zarr") == run_before
    assert not list(out.parent.glob(f"{out.name}.partial-*"))


def test_predict_overwrite_replaces_its_own_store(client, trained, tmp_path, monkeypatch):
    import pipeline.predict as cli

    d, out, checks, real = trained, tmp_path / "p.zarr", [], cli.check_inputs
    monkeypatch.setattr(cli, "check_inputs", lambda *a, **k: checks.append(a) or real(*a, **k))
    predict(client, d / "r.zarr", d / "d.zarr", out)
    assert len(checks) == 1  # the network and data store are read once (under the locks), not again in _predict
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        predict(client, d / "r.zarr", d / "d.zarr", out)
    (out / "prediction" / "zarr.json").unlink()  # damaged: the next --overwrite must rebuild it whole
    predict(client, d / "r.zarr", d / "d.zarr", out, overwrite=True)
    g = zarr.open_group(out, mode="r")
    assert g.attrs["format"] == "admm-dask-predictions" and g["prediction"].shape == (3000,)
    assert not list(tmp_path.glob("p.zarr.*"))


def test_a_second_predict_into_one_out_is_refused_and_a_killed_ones_lock_blocks_nothing(client, trained, tmp_path,
                                                                                        capsys):
    """predict holds <OUT>.lock from before its cluster until its store is in place: a second writer of --out is
    refused in one line (exit 2) and leaves nothing; the lock of a predict killed with -9 is taken over."""
    from pipeline.predict import main
    from storage.lock import OutputLock, live_readers

    d, out = trained, tmp_path / "p.zarr"
    with OutputLock(out, "predictions store"):  # another predict writing --out
        with pytest.raises(InputError, match=r"predictions store .*p.zarr is being written by .*pid %d" % os.getpid()):
            predict(client, d / "r.zarr", d / "d.zarr", out, overwrite=True)
        capsys.readouterr()
        assert main(["--store", str(d / "r.zarr"), "--data", str(d / "d.zarr"), "--out", str(out),
                     "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: predictions store ") and len(err.splitlines()) == 1, err
        assert live_readers(d / "d.zarr") == [] and live_readers(d / "r.zarr") == []  # its reader records went
        assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr.lock"]  # only the holder's lock
    write_lock(out, host=__import__("socket").gethostname(), pid=dead_pid())  # a predict killed with -9
    predict(client, d / "r.zarr", d / "d.zarr", out)
    assert "taking over the stale lock of" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr"]  # its lock went with it


def test_a_signal_after_the_predictions_are_in_place_says_they_were_written(trained, tmp_path, capsys, monkeypatch):
    """Ctrl-C once the store is swapped in (the cluster's shutdown takes seconds afterwards) said 'no predictions
    store was written or replaced'; it was: the line now says where."""
    import contextlib

    from pipeline import predict

    d, out, connect = trained, tmp_path / "p.zarr", predict.connect_from_args

    @contextlib.contextmanager
    def interrupted_at_shutdown(*args, **kwargs):
        with connect(*args, **kwargs) as client:
            yield client
            raise KeyboardInterrupt  # Ctrl-C while the cluster shuts down

    monkeypatch.setattr(predict, "connect_from_args", interrupted_at_shutdown)
    with pytest.raises(SystemExit) as stop:
        predict.main(["--store", str(d / "r.zarr"), "--data", str(d / "d.zarr"), "--out", str(out), "--workers", "1",
              "--dashboard-address", ":0"])
    assert stop.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"interrupted (SIGINT, Ctrl-C): the predictions were written to {out}; any cluster it started was shut down")
    assert (out / "prediction" / "zarr.json").exists()


def test_predict_cli_refuses_overwriting_its_input_in_one_line(trained):
    d = trained
    r = subprocess.run([sys.executable, "-m", "pipeline.predict", "--store", str(d / "r.zarr"), "--data",
                        str(d / "d.zarr"), "--out", str(d / "d.zarr"), "--overwrite", "--workers", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1, r.stderr
    assert (d / "d.zarr" / "zarr.json").exists()


def test_train_store_equal_to_its_data_is_refused(trained):
    from pipeline.training import check_inputs

    with pytest.raises(InputError, match="--store .* the input"):
        check_inputs(store=trained / "d.zarr" / "run.zarr", data=trained / "d.zarr")


def test_estimator_refuses_a_store_it_did_not_write(client, trained, tmp_path):
    from pipeline import ADMMClassifier

    d = trained
    store = tmp_path / "r.zarr"
    subprocess.run(["cp", "-r", str(d / "r.zarr"), str(store)], check=True)
    before = tree_snapshot(store)
    X = np.random.default_rng(0).normal(size=(200, 5))
    y = (X[:, 0] > 0).astype(int)
    clf = ADMMClassifier(hidden_layer_sizes=(4,), max_iter=1, store=str(store), client=client)
    with pytest.raises(InputError, match="already exists and this estimator did not write it"):
        clf.fit(X, y)
    assert tree_snapshot(store) == before
    assert not (tmp_path / "r-data.zarr").exists()
    # a store this estimator wrote is replaced by its next fit
    fresh = ADMMClassifier(hidden_layer_sizes=(4,), max_iter=1, store=str(tmp_path / "new.zarr"), client=client)
    fresh.fit(X, y).fit(X, y)
    assert fresh.n_iter_ == 1


@pytest.mark.parametrize("failure", [RuntimeError("cluster lost right after the new store was swapped in"),
                                     KeyboardInterrupt()], ids=["exception", "ctrl-c"])
def test_a_train_overwrite_that_fails_before_its_first_commit_puts_the_old_run_back(client, trained, tmp_path,
                                                                                    monkeypatch, failure):
    """--overwrite keeps the replaced run aside until the new run's first commit; an error or Ctrl-C before it
    puts the old run back, bytes unchanged, and leaves no sibling folder (rel15_s15.md F4)."""
    import pipeline.training

    store = tmp_path / "r.zarr"
    train(client, store=store, data=trained / "d.zarr", config=TrainConfig(hidden=(3,), iterations=1), report=quiet)
    before = tree_snapshot(store)

    def failing_runner(*args, **kwargs):
        assert list(tmp_path.glob("r.zarr.replaced-*")) and not (store / "manifest.json").exists()  # in the window
        raise failure

    monkeypatch.setattr(pipeline.training, "DaskRunner", failing_runner)
    lines = []
    with pytest.raises(type(failure)):
        train(client, store=store, data=trained / "d.zarr", config=TrainConfig(hidden=(4,), iterations=1),
              overwrite=True, report=lines.append)
    assert tree_snapshot(store) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr"]  # no lock, .replaced-, .partial- or .old- left
    assert any("is as it was before --overwrite" in line for line in lines)


def test_a_full_disk_at_the_first_commit_of_train_overwrite_keeps_the_old_run(client, trained, tmp_path,
                                                                              monkeypatch):
    """ENOSPC while writing the new run's first manifest: the old run is back, and the retry replaces it."""
    import errno

    import storage.runstore as rs

    store = tmp_path / "r.zarr"
    cfg = TrainConfig(hidden=(3,), iterations=1)
    train(client, store=store, data=trained / "d.zarr", config=cfg, report=quiet)
    before = tree_snapshot(store)
    real = rs._write_json_atomic

    def full_disk(path, obj):
        if Path(path).name == "manifest.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, obj)

    monkeypatch.setattr(rs, "_write_json_atomic", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train(client, store=store, data=trained / "d.zarr", config=replace_hidden(cfg, 4), overwrite=True,
              report=quiet)
    assert tree_snapshot(store) == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr"]
    monkeypatch.setattr(rs, "_write_json_atomic", real)
    train(client, store=store, data=trained / "d.zarr", config=replace_hidden(cfg, 4), overwrite=True, report=quiet)
    assert 4 in load_network(store).weights[0].shape  # replaced once the new run committed (width 3 before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr"]


def replace_hidden(config, width):
    from dataclasses import replace

    return replace(config, hidden=(width,))


def test_a_train_overwrite_of_a_path_that_is_no_run_store_is_refused_and_deletes_nothing(client, trained, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    rng = np.random.default_rng(3)
    write_data(tmp_path / "other.zarr", rng.normal(size=(50, 5)).astype(np.float32), np.arange(50) % 2)
    for target in (folder, tmp_path / "other.zarr"):
        before = tree_snapshot(target)
        with pytest.raises(InputError, match="refusing to overwrite"):
            train(client, store=target, data=trained / "d.zarr", config=TrainConfig(hidden=(3,), iterations=1),
                  overwrite=True, report=quiet)
        assert tree_snapshot(target) == before


# ------------------------------------------------------------------ 2. the run-store lock

def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_lock(store, **record):
    path = lock_path(store)
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "then", "command": "x",
                                "token": "t0", **record}))
    return path


def test_lock_is_exclusive_and_released(tmp_path):
    store = tmp_path / "r.zarr"
    with RunLock(store) as held:
        record = json.loads(lock_path(store).read_text())
        assert record["pid"] == os.getpid() and record["host"] and record["started"]
        with pytest.raises(InputError, match=r"r.zarr is in use by .*pid %d" % os.getpid()):
            RunLock(store).acquire()
        with pytest.raises(InputError, match="is in use by"):
            check_unlocked(store)
        assert held.path.exists()
    assert not lock_path(store).exists()
    check_unlocked(store)


def test_taking_a_lock_removes_the_private_files_of_this_hosts_dead_takers_and_nothing_else(tmp_path):
    """rel16: a process killed between writing its private record file and removing it (RunLock._try_create) left
    .<RUN>.lock.<host>.<pid>.<token> beside the store for good. The next holder removes exactly those of this
    host's dead processes whose content is their own record; a live taker's, another host's, a mismatched or
    half-written one and a user's file stay."""
    import socket

    host, store = socket.gethostname(), tmp_path / "r.zarr"

    def private(pid, token, record_host=host, name_host=host, text=None):
        path = tmp_path / f".r.zarr.lock.{name_host}.{pid}.{token}"
        path.write_text(text if text is not None else json.dumps({"host": record_host, "pid": pid, "token": token}))
        return path

    dead = dead_pid()
    gone = private(dead, "0123456789abcdef")
    kept = [private(os.getppid(), "1123456789abcdef"),  # a live process taking the lock right now
            private(dead, "2123456789abcdef", record_host="elsewhere", name_host="elsewhere"),  # another host's
            private(dead, "3123456789abcdef", text=json.dumps({"host": host, "pid": dead, "token": "other"})),
            private(dead, "4123456789abcdef", text='{"host": '),  # killed while writing it: not shown to be ours
            tmp_path / ".r.zarr.lock.notes", tmp_path / "r.zarr.lock.txt"]
    for path in kept[-2:]:
        path.write_text("a user's file")
    with RunLock(store):
        assert not gone.exists() and all(p.exists() for p in kept)
    assert not lock_path(store).exists() and all(p.exists() for p in kept)


def test_a_reader_removes_the_private_record_files_of_this_hosts_dead_readers_only(tmp_path):
    """rel16: a reader killed between writing its record's private file and renaming it left
    .<DATA>.reader-<host>.<pid>.<token>.tmp (or .….<hex>.tmp) for good; the next reader removes this host's gone
    processes' complete ones, never a live reader's, another host's, a half-written one or a user's file."""
    import socket

    from storage.lock import ReadLock

    host, store = socket.gethostname().replace("/", "_"), tmp_path / "d.zarr"
    store.mkdir()

    def private(pid, token, extra="", name_host=host, text=None):
        path = tmp_path / f".d.zarr.reader-{name_host}.{pid}.{token}{extra}.tmp"
        path.write_text(text if text is not None else json.dumps({"host": name_host, "pid": pid, "token": token}))
        return path

    dead = dead_pid()
    gone = [private(dead, "0123456789abcdef"), private(dead, "1123456789abcdef", ".0a1b2c3d")]
    kept = [private(os.getppid(), "2123456789abcdef"), private(dead, "3123456789abcdef", name_host="elsewhere"),
            private(dead, "4123456789abcdef", text="{"), tmp_path / ".d.zarr.reader-notes.tmp"]
    kept[-1].write_text("a user's file")
    with ReadLock(store):
        assert not any(p.exists() for p in gone) and all(p.exists() for p in kept)
    assert all(p.exists() for p in kept)


_DIE_IN_UNLINK = """
import os, pathlib, sys
from storage import lock
real = pathlib.Path.unlink
def unlink(self, *a, **k):  # a kill -9 right before the lock's clean-up removes {what}
    if {cond}:
        os._exit(9)
    return real(self, *a, **k)
pathlib.Path.unlink = unlink
{call}
"""


def _killed_in_unlink(tmp_path, what, cond, call):
    """Run ``call`` in a child process that dies (exit 9, no clean-up) when it is about to unlink ``what``."""
    p = subprocess.run([sys.executable, "-c", _DIE_IN_UNLINK.format(what=what, cond=cond, call=call)], cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert p.returncode == 9


def test_a_stale_lock_set_aside_and_clock_probes_of_killed_processes_are_swept_by_the_next_holder(tmp_path):
    """audit17 (rel16's leftover): a process killed between renaming a stale lock aside and removing it
    (RunLock._take_over) left R.lock.stale-<token>, and one killed inside _fs_now left .admm-dask-clock-<pid>-<hex>,
    for good: their names carried no host. Now both carry host, pid and token, and the next holder of the lock
    removes them once that process is gone (and a reader its clock probes)."""
    import socket

    store = tmp_path / "r.zarr"
    write_lock(store, host=socket.gethostname(), pid=dead_pid(), token="0123456789abcdef")
    _killed_in_unlink(tmp_path, "the stale lock set aside", "'.stale-' in self.name",
                      "lock.RunLock('r.zarr', report=lambda line: None).acquire()")
    _killed_in_unlink(tmp_path, "its clock probe", "'admm-dask-clock' in self.name", "lock._fs_now(pathlib.Path('.'))")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert any(".stale-" in n for n in left) and any("admm-dask-clock" in n for n in left), left
    with RunLock(store):
        assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr.lock"]
    _killed_in_unlink(tmp_path, "its clock probe", "'admm-dask-clock' in self.name", "lock._fs_now(pathlib.Path('.'))")
    store.mkdir()
    from storage.lock import ReadLock

    with ReadLock(store):
        assert not any("admm-dask-clock" in p.name for p in tmp_path.iterdir())


def test_the_sweep_of_stale_locks_set_aside_and_clock_probes_removes_nothing_else(tmp_path):
    """Only this host's, a gone process's, holding what that process wrote there: a live process's (taking over a
    lock or probing the clock right now), another host's, the old names without host, a record that is no lock
    record, a live holder's record set aside in the take-over's race, a link and a user's file all stay."""
    import socket

    host, store, dead = socket.gethostname(), tmp_path / "r.zarr", dead_pid()
    live_holder = {"host": host, "pid": os.getppid(), "token": "5123456789abcdef", "command": "x"}
    dead_holder = {**live_holder, "pid": dead, "token": "6123456789abcdef"}

    def put(name, content):
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
        return tmp_path / name

    gone = [put(f"r.zarr.lock.stale-{host}.{dead}.0123456789abcdef", dead_holder),
            put(f".admm-dask-clock-{host}.{dead}.1123456789abcdef",
                {"host": host, "pid": dead, "token": "1123456789abcdef"})]
    kept = [put(f"r.zarr.lock.stale-{host}.{os.getppid()}.0123456789abcdef", dead_holder),  # its taker is alive
            put(f"r.zarr.lock.stale-{host}.{dead}.2123456789abcdef", live_holder),  # a live holder's record
            put(f"r.zarr.lock.stale-{host}.{dead}.3123456789abcdef", "{not json"),
            put(f"r.zarr.lock.stale-elsewhere.{dead}.4123456789abcdef", dead_holder),
            put("r.zarr.lock.stale-0123456789abcdef", dead_holder),  # the old name: whose it is cannot be shown
            put(f".admm-dask-clock-{host}.{os.getppid()}.7123456789abcdef",
                {"host": host, "pid": os.getppid(), "token": "7123456789abcdef"}),
            put(f".admm-dask-clock-{host}.{dead}.8123456789abcdef", {"host": host, "pid": dead, "token": "other"}),
            put(f".admm-dask-clock-elsewhere.{dead}.9123456789abcdef",
                {"host": "elsewhere", "pid": dead, "token": "9123456789abcdef"}),
            put(f".admm-dask-clock-{dead}-0a1b2c", ""), put("r.zarr.lock.stale-notes", "a user's file")]
    link = tmp_path / f"r.zarr.lock.stale-{host}.{dead}.aa23456789abcdef"
    link.symlink_to(gone[0].name)
    kept.append(link)
    with RunLock(store):
        assert not any(p.exists() for p in gone) and all(p.is_symlink() or p.exists() for p in kept)
    assert all(p.is_symlink() or p.exists() for p in kept)


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path):
    import socket

    store = tmp_path / "r.zarr"
    write_lock(store, host=socket.gethostname(), pid=dead_pid())
    lines = []
    with RunLock(store, report=lines.append):
        assert json.loads(lock_path(store).read_text())["pid"] == os.getpid()
    assert len(lines) == 1 and "taking over the stale lock" in lines[0]


def test_lock_of_another_host_is_stale_only_without_heartbeat(tmp_path):
    store = tmp_path / "r.zarr"
    path = write_lock(store, host="node-that-is-not-here", pid=12345)
    with pytest.raises(InputError, match="in use by .*node-that-is-not-here"):
        RunLock(store).acquire()
    old = time.time() - lockmod.STALE_AFTER - 60
    os.utime(path, (old, old))
    lines = []
    with RunLock(store, report=lines.append):
        pass
    assert "stale lock" in lines[0]


def test_heartbeat_touches_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(lockmod, "HEARTBEAT", 0.05)
    store = tmp_path / "r.zarr"
    with RunLock(store) as held:
        old = time.time() - 1000
        os.utime(held.path, (old, old))
        time.sleep(0.5)
        assert time.time() - held.path.stat().st_mtime < 100


def test_a_plain_train_on_a_run_being_trained_says_in_use_not_pass_resume(trained, tmp_path):
    """audit17: a plain train (no --resume/--overwrite) on a store a trainer holds said 'R already exists; pass
    --resume to continue that run …', advice that is refused in turn ('in use'); now it names the trainer."""
    from storage.runstore import check_creatable

    subprocess.run(["cp", "-r", str(trained / "r.zarr"), str(tmp_path / "r.zarr")], check=True)
    import socket

    held = write_lock(tmp_path / "r.zarr", host=socket.gethostname(), pid=os.getppid(), token="0123456789abcdef",
                      command="python -m pipeline.train")  # a live trainer: another process of this host
    with pytest.raises(InputError, match=r"^run store .*r.zarr is in use by python -m pipeline.train \(pid %d"
                                         % os.getppid()):
        check_creatable(tmp_path / "r.zarr", overwrite=False)
    held.unlink()
    with pytest.raises(InputError, match=r"r.zarr already exists; pass --resume"):
        check_creatable(tmp_path / "r.zarr", overwrite=False)
    with RunLock(tmp_path / "r.zarr"):  # train() checks holding the lock itself: its own lock is not "in use"
        with pytest.raises(InputError, match=r"r.zarr already exists; pass --resume"):
            check_creatable(tmp_path / "r.zarr", overwrite=False)


def test_second_trainer_is_refused_and_the_store_equals_a_single_run(trained, tmp_path):
    """Two --resume trainers on one store: the second gets one error line; the result is one clean run's."""
    d = trained
    for name in ("a.zarr", "b.zarr"):
        subprocess.run(["cp", "-r", str(d / "r.zarr"), str(tmp_path / name)], check=True)

    def cmd(store, *extra):
        return [sys.executable, "-m", "pipeline.train", "--store", str(store), "--resume", "--iterations", "30",
                "--workers", "1", "--dashboard-address", ":0", "--no-progress", *extra]

    single = subprocess.run(cmd(tmp_path / "b.zarr"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    first = subprocess.Popen(cmd(tmp_path / "a.zarr"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.time() + 120
        while not lock_path(tmp_path / "a.zarr").exists():
            assert first.poll() is None and time.time() < deadline, "the first trainer never took the lock"
            time.sleep(0.05)
        # the first trainer pauses (SIGSTOP: alive, holding the lock) while the second starts: its 28 iterations took
        # about as long as the second's start-up on a loaded 2-core machine, and a second trainer starting after the
        # first one ended rightly succeeds
        first.send_signal(signal.SIGSTOP)
        try:
            second = subprocess.run(cmd(tmp_path / "a.zarr", "--gamma", "50"), cwd=ROOT, capture_output=True,
                                    text=True, timeout=300)
        finally:
            first.send_signal(signal.SIGCONT)
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert second.returncode == 2 and second.stderr.startswith("error: ") and "is in use by" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    a, b = load_network(tmp_path / "a.zarr"), load_network(tmp_path / "b.zarr")
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(wa, wb)
    ca = zarr.open_group(tmp_path / "a.zarr", mode="r").attrs["config"]
    cb = zarr.open_group(tmp_path / "b.zarr", mode="r").attrs["config"]
    assert ca == cb and ca["gamma"] != 50
    assert not lock_path(tmp_path / "a.zarr").exists()


# ------------------------------------------------------------------ 3. checksums and the fallback commit

def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def chunk_files(store, array):
    return sorted(p for p in (Path(store) / array).rglob("*") if p.is_file() and p.name != "zarr.json")


@pytest.fixture(scope="module")
def gn_runs(client, tmp_path_factory):
    """A Gauss-Newton data set, its uninterrupted 5-iteration run, and a factory of 3-iteration runs."""
    d = tmp_path_factory.mktemp("fallback")
    rng = np.random.default_rng(3)
    X = rng.normal(size=(4000, 6)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    write_data(d / "d.zarr", X, y, chunk_rows=1000)
    cfg = TrainConfig(hidden=(8,), iterations=5)
    full = train(client, store=d / "full.zarr", data=d / "d.zarr", config=cfg, report=quiet)
    return d, cfg, full


def test_corrupt_last_checkpoint_falls_back_to_the_previous_with_a_warning(client, gn_runs, tmp_path, capsys):
    from dataclasses import replace

    d, cfg, full = gn_runs
    store = tmp_path / "r.zarr"
    train(client, store=store, data=d / "d.zarr", config=replace(cfg, iterations=3), report=quiet)
    flip_a_byte(chunk_files(store, "checkpoint/3/packed")[0])
    capsys.readouterr()
    lines = []
    result = train(client, store=store, resume=True, iterations=5, report=lines.append)
    err = capsys.readouterr().err
    assert "warning:" in err and "last commit is damaged" in err and "iteration 2, which is intact" in err
    assert "resuming after iteration 2" in lines
    for W, W_ref in zip(result.network.weights, full.network.weights):
        np.testing.assert_array_equal(W, W_ref)
    assert [h["iteration"] for h in result.history] == [1, 2, 3, 4, 5]


def test_a_deleted_manifest_falls_back_with_one_warning_and_resume_continues(client, gn_runs, tmp_path, capsys):
    """manifest.json gone (commits never delete it): resume restarted from the initialisation without a word and
    evaluate said 'no committed iteration'; predict and evaluate printed the fallback warning twice."""
    from dataclasses import replace

    from storage.runstore import RunStore

    d, cfg, full = gn_runs
    store = tmp_path / "r.zarr"
    train(client, store=store, data=d / "d.zarr", config=replace(cfg, iterations=3), report=quiet)
    (store / "manifest.json").unlink()
    capsys.readouterr()
    assert RunStore.open(store).committed_iteration() == 2
    assert RunStore.open(store).committed_iteration() == 2  # a second reader in the same process: no second line
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "(manifest.json is missing); using the previous commit, iteration 2" in err
    lines = []
    result = train(client, store=store, resume=True, iterations=5, report=lines.append)
    assert "resuming after iteration 2" in lines
    for W, W_ref in zip(result.network.weights, full.network.weights):
        np.testing.assert_array_equal(W, W_ref)


def test_both_manifests_gone_is_damage_not_a_new_run_and_a_vanished_manifest_is_read_again(client, gn_runs, tmp_path,
                                                                                          monkeypatch, capsys):
    """checkpoint/ holding iterations 2 and 3 with no manifest at all read as 'never committed' (resume started
    over); a manifest.json that is back on a second read is no damage."""
    import types
    from dataclasses import replace

    from storage import runstore
    from storage.runstore import RunStore

    d, cfg, _ = gn_runs
    store = tmp_path / "r.zarr"
    train(client, store=store, data=d / "d.zarr", config=replace(cfg, iterations=3), report=quiet)
    manifest, aside = store / "manifest.json", tmp_path / "manifest.json"
    manifest.rename(aside)

    def put_back(seconds):  # the re-read's wait: the manifest is back (a slow atomic replace elsewhere)
        aside.rename(manifest)

    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setattr(runstore, "time", types.SimpleNamespace(sleep=put_back, monotonic=time.monotonic,
                                                          strftime=time.strftime, time=time.time))
        assert RunStore.open(store).committed_iteration() == 3
    assert "warning" not in capsys.readouterr().err
    manifest.unlink()
    (store / "manifest.previous.json").unlink()
    before = tree_snapshot(store)
    with pytest.raises(InputError, match=r"manifest.json is missing and so is manifest.previous.json, though "
                                         r"checkpoint/ holds iterations 2, 3\) and there is no earlier commit"):
        RunStore.open(store).committed_iteration()
    with pytest.raises(InputError, match="checkpoint/ holds iterations 2, 3"):
        train(client, store=store, resume=True, iterations=5, report=quiet)
    with pytest.raises(InputError, match="already exists and is damaged: its manifests are gone"):
        runstore.check_creatable(store, False)  # not "holds no committed iteration: pass --resume"
    after = tree_snapshot(store)  # nothing deleted, no checkpoint touched
    assert set(after) == set(before) and all(after[f] == before[f] for f in before if f.startswith("checkpoint/"))


def test_the_fallback_warning_is_printed_again_when_the_store_is_damaged_again(client, gn_runs, tmp_path, capsys):
    """Once per damaged commit, not once per process: a second damage of the store (or another store with the same
    path and problem) in a long-lived process was silent."""
    from dataclasses import replace

    from storage.runstore import RunStore

    d, cfg, _ = gn_runs
    store = tmp_path / "r.zarr"
    train(client, store=store, data=d / "d.zarr", config=replace(cfg, iterations=3), report=quiet)
    manifest = store / "manifest.json"
    m = json.loads(manifest.read_text())
    capsys.readouterr()
    for n, value in enumerate((0.123, 0.456)):
        m["history"][0]["train_accuracy"] = value  # the checksum catches it
        manifest.write_text(json.dumps(m))
        os.utime(manifest, ns=(10**18 + n, 10**18 + n))
        for _ in range(2):
            assert RunStore.open(store).committed_iteration() == 2
        assert capsys.readouterr().err.count("warning:") == 1


def test_manifest_edited_falls_back_and_both_damaged_is_one_error(client, gn_runs, tmp_path):
    from dataclasses import replace

    from storage.runstore import RunStore

    d, cfg, _ = gn_runs
    store = tmp_path / "r.zarr"
    train(client, store=store, data=d / "d.zarr", config=replace(cfg, iterations=3), report=quiet)
    manifest = store / "manifest.json"
    m = json.loads(manifest.read_text())
    m["history"][0]["train_accuracy"] = 0.123  # a plausible but false number: the checksum catches it
    manifest.write_text(json.dumps(m))
    assert RunStore.open(store).committed_iteration() == 2
    flip_a_byte(chunk_files(store, "checkpoint/2/packed")[0])
    with pytest.raises(InputError, match=r"last commit is damaged \(manifest.json fails its checksum\) and the "
                                         r"previous commit is damaged too \(checkpoint 2"):
        RunStore.open(store).load_checkpoint()


def test_admm_cannot_fall_back_once_the_next_iteration_wrote_its_slot(client, gn_runs, tmp_path):
    d, _, _ = gn_runs
    store = tmp_path / "r.zarr"
    train(client, store=store, data=d / "d.zarr", config=TrainConfig(solver="admm", hidden=(8,), iterations=3),
          report=quiet)
    flip_a_byte(chunk_files(store, "checkpoint/3/packed")[0])
    with pytest.raises(InputError, match="state of the previous commit .* has been overwritten"):
        train(client, store=store, resume=True, iterations=4, report=quiet)


def test_reader_during_commits_sees_a_consistent_commit(client, gn_runs, tmp_path):
    """predict/evaluate while a trainer commits: every read is one whole commit, never an error."""
    import threading
    from dataclasses import replace

    from storage.runstore import RunStore

    d, cfg, _ = gn_runs
    store = tmp_path / "r.zarr"
    train(client, store=store, data=d / "d.zarr", config=replace(cfg, iterations=1), report=quiet)
    done, seen = threading.Event(), []

    def read():
        while not done.is_set():
            run = RunStore.open(store)
            ck = run.load_checkpoint()
            seen.append((ck.iteration, run.manifest()["iteration"]))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        train(client, store=store, resume=True, iterations=8, report=quiet)
    finally:
        done.set()
        reader.join()
    assert seen and all(a == b for a, b in seen) and len({a for a, _ in seen}) > 1


# ------------------------------------------------------------------ 4. a fingerprint over every chunk

def test_resume_refuses_data_with_labels_changed_in_middle_chunks(client, tmp_path):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(2000, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=400)
    flipped = y.copy()
    flipped[800:1200] = 1 - flipped[800:1200]
    write_data(tmp_path / "flipped.zarr", X, flipped, chunk_rows=400)
    train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", report=quiet,
          config=TrainConfig(hidden=(4,), iterations=1))
    with pytest.raises(InputError, match=r"not the data set .*1 of 5 chunks hold other values, the first rows "
                                         r"800-1199"):
        train(client, store=tmp_path / "r.zarr", data=tmp_path / "flipped.zarr", resume=True, iterations=2,
              report=quiet)


def test_fingerprint_comes_from_metadata_without_reading_the_data(tmp_path):
    from storage.data import fingerprint, open_data

    rng = np.random.default_rng(6)
    write_data(tmp_path / "d.zarr", rng.normal(size=(3000, 3)), rng.integers(0, 2, 3000), chunk_rows=1000)
    ds = open_data(tmp_path / "d.zarr")
    recorded = fingerprint(ds)
    assert len(recorded["chunk_crc32"]) == 3
    meta = tmp_path / "d.zarr" / "zarr.json"
    m = json.loads(meta.read_text())
    del m["attributes"]["chunk_crc32"]  # a store written before per-chunk checksums: computed by one read
    meta.write_text(json.dumps(m))
    assert fingerprint(open_data(tmp_path / "d.zarr")) == recorded
    m["attributes"]["chunk_crc32"] = recorded["chunk_crc32"]
    meta.write_text(json.dumps(m))
    for f in chunk_files(tmp_path / "d.zarr", "X"):
        f.unlink()  # no data left to read: the fingerprint is the metadata's
    assert fingerprint(open_data(tmp_path / "d.zarr")) == recorded


# ------------------------------------------------------------------ 7. data without labels

def test_unlabeled_data_is_ingested_and_predicted_but_not_trained_on(client, trained, tmp_path):
    d = trained
    X = np.random.default_rng(7).normal(size=(300, 5))
    np.savetxt(tmp_path / "new.csv", X, delimiter=",", header="a,b,c,d,e", comments="")
    r = subprocess.run([sys.executable, "-m", "pipeline.ingest", str(tmp_path / "new.csv"), "--out",
                        str(tmp_path / "new.zarr"), "--no-labels"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "new.zarr" / "y").exists()
    predict(client, d / "r.zarr", tmp_path / "new.zarr", tmp_path / "p.zarr")
    pred = zarr.open_group(tmp_path / "p.zarr", mode="r")["prediction"][:]
    expected = load_network(d / "r.zarr").predict(X.astype(np.float32))
    np.testing.assert_array_equal(pred, expected)
    t = subprocess.run([sys.executable, "-m", "pipeline.train", "--data", str(tmp_path / "new.zarr"), "--store",
                        str(tmp_path / "run.zarr"), "--workers", "1"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert t.returncode == 2 and "has no labels (written with --no-labels)" in t.stderr
    assert len(t.stderr.strip().splitlines()) == 1 and not (tmp_path / "run.zarr").exists()


def test_estimator_predicts_an_unlabeled_store(client, trained, tmp_path):
    from pipeline import ADMMClassifier
    from storage.ingest import ingest

    X = np.random.default_rng(8).normal(size=(400, 5))
    y = (X[:, 0] > 0).astype(int)
    np.savez(tmp_path / "new.npz", X=X)
    ingest(tmp_path / "new.npz", tmp_path / "new.zarr", labels=False)
    clf = ADMMClassifier(hidden_layer_sizes=(4,), max_iter=2, client=client).fit(X, y)
    np.testing.assert_array_equal(clf.predict(str(tmp_path / "new.zarr")).compute(), clf.predict(X))
    with pytest.raises(InputError, match="has no labels"):
        ADMMClassifier(hidden_layer_sizes=(4,), max_iter=1, client=client).fit(str(tmp_path / "new.zarr"))
