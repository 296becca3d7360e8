"""Data stores are locked: one writer (ingestion) or many readers (train, evaluate, predict), never both at once."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from solvers.errors import InputError
from storage import lock as lockmod
from storage.data import DataWriter, open_data, write_data
from storage.ingest import ingest
from storage.lock import DataWriteLock, ReadLock, live_readers, lock_path

ROOT = Path(__file__).resolve().parents[1]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_csv(path: Path, n: int = 300, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = (X[:, 0] > 0).astype(int)
    path.write_text("a,b,c,label\n" + "".join(f"{a:.6f},{b:.6f},{c:.6f},{k}\n" for (a, b, c), k in zip(X, y)))
    return path


def snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def store(tmp_path):
    X = np.arange(40, dtype=np.float32).reshape(20, 2)
    write_data(tmp_path / "d.zarr", X, np.arange(20) % 2)
    return tmp_path / "d.zarr"


def test_a_reader_refuses_an_overwrite_and_the_store_is_unchanged(store, tmp_path):
    before = snapshot(store)
    with ReadLock(store):
        with pytest.raises(InputError, match=r"d.zarr is in use by .*pid %d.*which reads it.*nothing was "
                                             r"written" % os.getpid()):
            ingest(write_csv(tmp_path / "new.csv"), store, overwrite=True)
    assert snapshot(store) == before
    assert not lock_path(store).exists() and not list(tmp_path.glob("d.zarr.*"))  # nothing left beside it
    ingest(write_csv(tmp_path / "new.csv"), store, overwrite=True)  # released: the overwrite goes through
    assert open_data(store).n_samples == 300


def test_many_readers_at_once(store):
    with ReadLock(store), ReadLock(store):
        assert len(live_readers(store)) == 2
    assert live_readers(store) == []


def test_a_writer_refuses_a_second_writer_and_any_reader(store, tmp_path):
    with DataWriteLock(store):
        with pytest.raises(InputError, match=r"data store .*d.zarr is being written by .*pid %d" % os.getpid()):
            ingest(write_csv(tmp_path / "new.csv"), store, overwrite=True)
        with pytest.raises(InputError, match="is being written by"):
            ReadLock(store).acquire()
        assert live_readers(store) == []  # the refused reader took its record back
    with ReadLock(store):
        pass


def test_records_of_killed_processes_block_nothing(store, tmp_path):
    """A reader or writer killed without releasing (kill -9) leaves a record; the next command goes on."""
    host = socket.gethostname()
    gone = {"host": host, "pid": dead_pid(), "started": "then", "command": "python -m pipeline.train", "token": "t"}
    reader = tmp_path / f"d.zarr.reader-{host}.{gone['pid']}.t"
    reader.write_text(json.dumps(gone))
    ingest(write_csv(tmp_path / "new.csv"), store, overwrite=True)
    assert not reader.exists()  # removed by the writer that found it stale
    lock_path(store).write_text(json.dumps({**gone, "command": "python -m pipeline.ingest"}))
    with ReadLock(store):  # a stale writer's lock does not stop a reader
        pass
    lines = []
    with DataWriter(store, 2, overwrite=True, report=lines.append) as w:
        w.append(np.ones((5, 2)), np.arange(5) % 2)
    assert any("taking over the stale lock" in line for line in lines), lines
    assert not lock_path(store).exists()


def test_a_reader_on_another_host_is_stale_only_without_heartbeat(store, tmp_path):
    record = tmp_path / "d.zarr.reader-elsewhere.123.t"
    record.write_text(json.dumps({"host": "node-that-is-not-here", "pid": 123, "started": "then",
                                  "command": "python -m pipeline.train", "token": "t"}))
    with pytest.raises(InputError, match="in use by python -m pipeline.train .*node-that-is-not-here"):
        DataWriteLock(store).acquire()
    old = time.time() - lockmod.STALE_AFTER - 60
    os.utime(record, (old, old))
    with DataWriteLock(store):
        pass
    assert not record.exists()


def test_a_reader_in_a_read_only_folder_still_sees_a_writer(store, monkeypatch):
    real_open = os.open

    def refuse(path, *args, **kwargs):
        if ".reader-" in str(path):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with ReadLock(store) as held:
        assert held.path is None  # no record could be written: the read goes on
    with DataWriteLock(store):
        with pytest.raises(InputError, match="is being written by"):
            ReadLock(store).acquire()


def _wait_for(path_glob, proc, what, timeout=120):
    deadline = time.time() + timeout
    while not path_glob():
        assert proc.poll() is None, f"{what} ended first: {proc.communicate()}"
        assert time.time() < deadline, f"{what} never appeared"
        time.sleep(0.02)


def run_modules_at_once(*commands, timeout=300):
    """Run each ``[module, arg, …]`` as ``python -m`` from the repository root, all at once (commands that are each
    refused on their own: their interpreter starts overlap); return their completed processes in order."""
    procs = [subprocess.Popen([sys.executable, "-m", *map(str, command)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for command in commands]
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
        return [subprocess.CompletedProcess(p.args, p.returncode, *o) for p, o in zip(procs, outputs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_commands_refuse_each_other_and_a_kill_9_blocks_nothing(tmp_path, capsys):
    """Real processes: an ingest paused (SIGSTOP) while it writes: a second ingest into the same --out and a train
    on it (run at once) are refused in one line; the ingest, killed with -9, leaves a lock the next ingest takes
    over (in this process: the lock's owner is the killed process either way)."""
    big = write_csv(tmp_path / "big.csv", n=60_000)
    small = write_csv(tmp_path / "small.csv")
    out = tmp_path / "d.zarr"
    ingest(small, out)
    before = snapshot(out)
    first = subprocess.Popen([sys.executable, "-m", "pipeline.ingest", str(big), "--out", str(out), "--overwrite",
                              "--chunk-rows", "1024"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        _wait_for(lambda: lock_path(out).exists(), first, "the ingest's lock")
        first.send_signal(signal.SIGSTOP)
        second, train = run_modules_at_once(
            ["pipeline.ingest", small, "--out", out, "--overwrite"],
            ["pipeline.train", "--data", out, "--store", tmp_path / "r.zarr", "--workers", "1", "--dashboard-address", ":0"])
        for refused in (second, train):
            assert refused.returncode == 2, refused.stderr
            assert refused.stderr.startswith("error: data store ") and "is being written by python -m " \
                "pipeline.ingest" in refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert not (tmp_path / "r.zarr").exists()
        first.kill()  # kill -9 while it holds the lock
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert lock_path(out).exists() and snapshot(out) == before  # the killed ingest replaced nothing
    capsys.readouterr()
    ingest(small, out, overwrite=True)
    assert "taking over the stale lock" in capsys.readouterr().err  # and a partial store it left, if any, is removed
    assert not lock_path(out).exists() and not list(tmp_path.glob("d.zarr.*"))


def test_a_training_read_locks_its_data_and_test_data_until_it_returns(client, tmp_path):
    from pipeline.training import train
    from solvers.config import TrainConfig

    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    write_data(tmp_path / "d.zarr", X, y)
    write_data(tmp_path / "t.zarr", X[:100], y[:100])
    seen = []

    def report(line):  # during the run: both stores have a live reader, an ingestion into either is refused
        for path in (tmp_path / "d.zarr", tmp_path / "t.zarr"):
            seen.append(len(live_readers(path)))
            with pytest.raises(InputError, match="which reads it"):
                DataWriteLock(path).acquire()

    train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", test_data=tmp_path / "t.zarr",
          config=TrainConfig(hidden=(3,), iterations=1), report=report)
    assert seen and set(seen) == {1}
    assert not list(tmp_path.glob("*.reader-*")) and not list(tmp_path.glob("*.lock"))
    with pytest.raises(InputError, match="is being written by"), DataWriteLock(tmp_path / "d.zarr"):
        train(client, store=tmp_path / "r2.zarr", data=tmp_path / "d.zarr",
              config=TrainConfig(hidden=(3,), iterations=1), report=lambda line: None)
    assert not (tmp_path / "r2.zarr").exists()


def fake_run_store(path: Path) -> Path:
    path.mkdir()
    (path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                "attributes": {"format": "admm-dask-run"}}))
    (path / "manifest.json").write_text("{}")
    return path


def held_evaluate(run: Path, data: Path) -> subprocess.Popen:
    """Start ``python -m pipeline.evaluate --store run --data data`` with its input checks held up (as a long
    evaluation holds it): once both reader records are there it holds them until it is signalled or killed, on any
    machine (a stopped evaluate, SIGSTOP once the records appeared, raced the refused evaluate's exit on a fake run
    store). Its records name it ``python -m pipeline.evaluate``."""
    code = ("import sys, time; from pipeline import evaluate; from pipeline.cli import exit_process; "
            "sys.argv[0] = evaluate.__file__; evaluate.check_inputs = lambda store, data: time.sleep(600); "
            "exit_process(evaluate.main(sys.argv[1:]))")
    return subprocess.Popen([sys.executable, "-c", code, "--store", str(run), "--data", str(data)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def both_records(tmp_path: Path):
    """Return a check that the evaluate's reader records on d.zarr and r.zarr (in ``tmp_path``) are both there."""
    return lambda: list(tmp_path.glob("d.zarr.reader-*")) and list(tmp_path.glob("r.zarr.reader-*"))


def test_a_run_store_being_read_is_not_replaced_and_a_trainer_that_only_commits_blocks_no_reader(tmp_path):
    from storage.lock import RunLock
    from storage.runstore import check_creatable

    run = fake_run_store(tmp_path / "r.zarr")
    with ReadLock(run, run=True):
        with pytest.raises(InputError, match=r"run store .*r.zarr is in use by .*which reads it.*nothing was replaced"):
            check_creatable(run, overwrite=True)
    check_creatable(run, overwrite=True)
    with RunLock(run):  # a trainer committing iterations (a new run, or --resume): evaluate and predict read on
        with ReadLock(run, run=True):
            pass
    with RunLock(run, replacing=True):  # train --overwrite under way
        with pytest.raises(InputError, match=r"run store .*r.zarr is being replaced by .*\(--overwrite\)"):
            ReadLock(run, run=True).acquire()
    assert live_readers(run) == []


def test_ingest_and_train_overwrite_are_refused_while_an_evaluate_reads_and_a_killed_reader_blocks_nothing(tmp_path):
    """Real processes: an evaluate holds reader records on --data and --store: ingest --overwrite of the data
    and train --overwrite of that run store (run at once) are each refused in one line (train before any cluster),
    both stores unchanged; after kill -9 of the evaluate, its records are left and an ingest goes through."""
    out = tmp_path / "d.zarr"
    ingest(write_csv(tmp_path / "small.csv"), out)
    run = fake_run_store(tmp_path / "r.zarr")
    before, run_before = snapshot(out), snapshot(run)
    reader = held_evaluate(run, out)
    try:
        _wait_for(both_records(tmp_path), reader, "the evaluate's reader records")
        refused, train = run_modules_at_once(
            ["pipeline.ingest", tmp_path / "small.csv", "--out", out, "--overwrite"],
            ["pipeline.train", "--data", out, "--store", run, "--overwrite", "--workers", "1", "--dashboard-address", ":0"])
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith("error: data store ") and "is in use by python -m pipeline.evaluate" \
            in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert train.returncode == 2, train.stderr
        assert train.stderr.startswith("error: run store ") and "is in use by python -m pipeline.evaluate" \
            in train.stderr and len(train.stderr.strip().splitlines()) == 1, train.stderr
        assert snapshot(out) == before and snapshot(run) == run_before
        reader.kill()
        reader.wait()
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert list(tmp_path.glob("d.zarr.reader-*"))  # left by the kill
    ingest(tmp_path / "small.csv", out, overwrite=True)
    assert not list(tmp_path.glob("d.zarr.*"))


def test_a_reader_through_a_symlink_and_a_writer_on_the_real_path_see_each_other(store, tmp_path):
    """Lock and reader records are named from the store's real path: a reader given a link blocks an ingest
    --overwrite of the real path (which would otherwise swap the store under it), and the other way round."""
    link = tmp_path / "link.zarr"
    link.symlink_to(store)
    before = snapshot(store)
    with ReadLock(link):
        assert list(tmp_path.glob("d.zarr.reader-*")) and not list(tmp_path.glob("link.zarr.*"))
        with pytest.raises(InputError, match="which reads it"):
            ingest(write_csv(tmp_path / "new.csv"), store, overwrite=True)
    assert snapshot(store) == before
    with DataWriteLock(store):
        with pytest.raises(InputError, match="is being written by"):
            ReadLock(link).acquire()
    (tmp_path / "sub").mkdir()
    with ReadLock(tmp_path / "sub" / ".."), ReadLock(tmp_path / "d.zarr" / ".." / "d.zarr"):  # records beside the real paths
        assert len(list(tmp_path.parent.glob(f"{tmp_path.name}.reader-*"))) == 1
        assert len(live_readers(store)) == 1


def test_evaluate_with_data_dot_is_one_error_line(tmp_path):
    """`--data .` was a ValueError (a reader record with an empty name) and an 'unexpected' line."""
    work = tmp_path / "work"
    work.mkdir()
    r = subprocess.run([sys.executable, "-m", "pipeline.evaluate", "--store", str(tmp_path / "run.zarr"), "--data", "."],
                       cwd=work, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and "unexpected" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not list(tmp_path.glob("*.reader-*"))


def test_a_refusal_names_the_reader_record(store, tmp_path):
    with ReadLock(store) as held:
        with pytest.raises(InputError, match=f"its record is {held.path}; delete it if that process is gone"):
            DataWriteLock(store).acquire()


@pytest.mark.parametrize("kind", ["forbidden", "not json", "no token"])
def test_a_reader_file_that_is_no_record_is_never_removed_and_blocks_writers_whatever_its_age(store, tmp_path,
                                                                                            monkeypatch, kind):
    """A file of a reader record's name that is not one of our records (another user's we may not read, not JSON,
    JSON without token/host/pid) was removed once a minute old: nothing shows admm-dask wrote it, and a command never
    deletes what it did not create. Now a writer refuses in one line naming it, however old, and leaves it; once
    the user deletes it the writer goes through. (Session 12 removed another user's unreadable record by its age.)"""
    record = tmp_path / "d.zarr.reader-elsewhere.123.t"
    record.write_text({"forbidden": "{}", "not json": "half a rec", "no token": '{"host": "h", "pid": 1}'}[kind])
    if kind == "forbidden":
        real_read = Path.read_text

        def forbidden(self, *args, **kwargs):
            if ".reader-" in self.name:
                raise PermissionError(13, "Permission denied", str(self))
            return real_read(self, *args, **kwargs)

        monkeypatch.setattr(Path, "read_text", forbidden)
    old = time.time() - lockmod.STALE_AFTER - 60
    os.utime(record, (old, old))
    before = snapshot(store)
    with pytest.raises(InputError, match=rf"data store .*d.zarr has {record} beside it, which is not a reader "
                                         r"record of admm-dask .*delete it if no process reads the store"):
        ingest(write_csv(tmp_path / "new.csv"), store, overwrite=True)
    assert record.exists() and snapshot(store) == before
    assert [r["path"] for r in live_readers(store)] == [str(record)] and record.exists()
    record.unlink()
    ingest(write_csv(tmp_path / "new.csv"), store, overwrite=True)
    assert open_data(store).n_samples == 300


def test_a_reader_killed_while_writing_its_record_leaves_no_record_name(store, tmp_path, monkeypatch):
    """A record created empty and written afterwards was, for a reader killed in between, a file that is no record:
    it blocked writers for ever (live_readers never removes one). The record is written to a private file and
    renamed: while it is being written, and after a kill then (nothing cleans up: release does nothing here), no
    file of a record's name is there, and a writer goes through."""
    seen = []

    def killed(fd):
        seen.append(sorted(p.name for p in tmp_path.glob("d.zarr.reader-*")))
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(lockmod.os, "fsync", killed)
    monkeypatch.setattr(ReadLock, "release", lambda self: None)  # SIGKILL: no clean-up
    with pytest.raises(KeyboardInterrupt):
        ReadLock(store).acquire()
    monkeypatch.undo()
    assert seen == [[]] and not list(tmp_path.glob("d.zarr.reader-*")) and live_readers(store) == []
    with DataWriteLock(store):
        pass


def test_an_existing_private_file_of_the_records_name_is_left_alone_and_the_reader_still_writes_its_record(store):
    """A file at the private name (`.<DATA>.reader-….tmp`) made the create fail, the clean-up deleted that file (not
    this reader's) and the reader ran with no record, invisible to writers; now it is kept and the record written."""
    lock = ReadLock(store)
    other = lock.path.with_name("." + lock.path.name + ".tmp")
    other.write_text("someone else's file")
    with lock:
        assert lock.path is not None and json.loads(lock.path.read_text())["token"] == lock.record["token"]
        with pytest.raises(InputError, match="in use by"):
            DataWriteLock(store).acquire()
    assert other.read_text() == "someone else's file"
    assert not lock.path.exists() and sorted(p.name for p in store.parent.glob(".d.zarr.reader-*")) == [other.name]


def test_a_rename_reported_failed_after_it_happened_keeps_the_record(store, monkeypatch):
    """NFS can report a rename failed after doing it (a retried request): the record is this reader's, so kept."""
    rename = os.rename

    def lost_reply(src, dst):
        rename(src, dst)
        raise OSError("rename: reply lost")

    monkeypatch.setattr(lockmod.os, "rename", lost_reply)
    with ReadLock(store) as lock:
        assert lock.path is not None and lock.path.exists() and live_readers(store)
    assert not lock.path.exists()


def test_records_and_locks_are_readable_by_everyone_whatever_the_umask(store):
    old = os.umask(0o077)
    try:
        with ReadLock(store) as held, DataWriteLock(store.with_name("e.zarr")) as lock:
            assert held.path.stat().st_mode & 0o777 == 0o644
            assert lock.path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def _terminated(proc, ready, what) -> str:
    """Wait until ``ready()`` while ``proc`` runs, send it SIGTERM and return its stderr once it ended (killed if it
    has not after 120 s)."""
    try:
        _wait_for(ready, proc, what)
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_removes_the_ingests_lock_and_the_evaluates_records(tmp_path):
    """SIGTERM (kill, scancel) unwinds ingest, evaluate and predict like Ctrl-C: exit 143, one line, nothing left."""
    big = write_csv(tmp_path / "big.csv", n=60_000)
    out = tmp_path / "d.zarr"
    first = subprocess.Popen([sys.executable, "-m", "pipeline.ingest", str(big), "--out", str(out),
                              "--chunk-rows", "1024"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    err = _terminated(first, lambda: lock_path(out).exists(), "the ingest's lock")
    assert first.returncode == 143, err
    assert err.strip().splitlines()[-1] == "terminated (SIGTERM): no store was written or replaced", err
    assert not lock_path(out).exists() and not list(tmp_path.glob("d.zarr.reader-*"))
    # a partial store may be left when the signal lands inside a zarr call (its event-loop thread finishes the write
    # after the clean-up removed it): the next writer removes it, its process being gone
    ingest(write_csv(tmp_path / "small.csv"), out)
    assert not list(tmp_path.glob("d.zarr.*"))
    reader = held_evaluate(fake_run_store(tmp_path / "r.zarr"), out)  # SIGTERM lands while it holds its records
    err = _terminated(reader, both_records(tmp_path), "the evaluate's reader records")
    assert reader.returncode == 143, err
    # held in its input checks, before any cluster starts: the line is true then too
    assert err.strip().splitlines() == ["terminated (SIGTERM): nothing was evaluated; any cluster it started was "
                                        "shut down"], err
    assert not list(tmp_path.glob("*.reader-*"))
    code = ("import sys, time; from pipeline import predict; from pipeline.cli import exit_process; "
            "sys.argv[0] = predict.__file__; predict.check_inputs = lambda *a: time.sleep(600); "
            "exit_process(predict.main(sys.argv[1:]))")
    reader = subprocess.Popen([sys.executable, "-c", code, "--store", str(tmp_path / "r.zarr"), "--data", str(out),
                               "--out", str(tmp_path / "p.zarr")], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    err = _terminated(reader, both_records(tmp_path), "the predict's reader records")
    assert reader.returncode == 143, err
    assert err.strip().splitlines() == ["terminated (SIGTERM): no predictions store was written or replaced; any "
                                        "cluster it started was shut down"], err
    assert not list(tmp_path.glob("*.reader-*")) and not list(tmp_path.glob("p.zarr*"))


def test_evaluate_dry_run_takes_no_read_lock(store, tmp_path, capsys):
    """--dry-run only prints a job script: an ingest under way does not refuse it."""
    from pipeline.evaluate import main

    with DataWriteLock(store):
        assert main(["--store", str(tmp_path / "r.zarr"), "--data", str(store), "--cluster", "slurm",
                     "--dry-run"]) == 0
    assert "#!" in capsys.readouterr().out


def test_a_reader_that_appeared_while_the_new_store_was_written_keeps_the_old_store(store, tmp_path):
    """The writer's look for readers can miss one (NFS directory caches): it looks again right before the swap,
    and discards the new store."""
    before = snapshot(store)
    with pytest.raises(InputError, match=r"which reads it.*the new store was discarded; nothing was replaced"):
        with DataWriter(store, 2, overwrite=True) as w:
            w.append(np.ones((5, 2)), np.arange(5) % 2)
            record = {"host": socket.gethostname(), "pid": os.getpid(), "process_started": lockmod._process_start(
                os.getpid()), "started": "now", "command": "python -m pipeline.evaluate", "token": "t"}
            (tmp_path / "d.zarr.reader-here.1.t").write_text(json.dumps(record))  # missed by the first look
    assert snapshot(store) == before
    (tmp_path / "d.zarr.reader-here.1.t").unlink()
    assert not lock_path(store).exists() and not list(tmp_path.glob("d.zarr.*"))


def test_a_failed_buffer_allocation_releases_the_lock(tmp_path):
    with pytest.raises(MemoryError):
        with DataWriter(tmp_path / "d.zarr", 1000, chunk_rows=2**50):
            pass
    assert not lock_path(tmp_path / "d.zarr").exists() and not list(tmp_path.glob("d.zarr*"))


def test_a_run_being_replaced_lets_readers_in_once_the_new_run_is_in_place(tmp_path):
    from storage.lock import RunLock

    run = fake_run_store(tmp_path / "r.zarr")
    with RunLock(run, replacing=True) as lock:
        with pytest.raises(InputError, match="is being replaced by"):
            ReadLock(run, run=True).acquire()
        token = json.loads(lock.path.read_text())["token"]
        lock.replaced()
        held = json.loads(lock.path.read_text())
        assert "replacing" not in held and held["token"] == token and lock.path.stat().st_mode & 0o777 == 0o644
        with ReadLock(run, run=True):
            pass
    assert not lock_path(run).exists() and not list(tmp_path.glob(".r.zarr.lock*"))


def test_train_overwrite_refuses_readers_only_until_the_old_run_is_deleted(client, tmp_path):
    """Until the new run's first commit the old run is kept aside (and put back if the new run fails): readers are
    refused ('being replaced'), not let in to a store with no commit; once the old run is deleted they read the new."""
    from pipeline.training import train
    from solvers.config import TrainConfig

    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 3)).astype(np.float32)
    write_data(tmp_path / "d.zarr", X, (X[:, 0] > 0).astype(int))
    config = TrainConfig(solver="gauss-newton", hidden=(3,), iterations=2)
    train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=config, report=lambda line: None)
    let_in = []

    def report(line):
        # the old run is looked for AFTER the reader's try: the commit that deletes it may run in the background while
        # this line is reported, and it renames the old run away before it lets readers in, so an old run still there
        # after the try was there, and readers refused, during all of it (looked for before, a deletion between the
        # look and the try made a let-in reader look like one let in beside the old run)
        try:
            with ReadLock(tmp_path / "r.zarr", run=True):
                allowed = True
        except InputError as err:
            assert "is being replaced by" in str(err)
            allowed = False
        let_in.append((bool(list(tmp_path.glob("r.zarr.replaced-*"))), allowed))

    train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=config, overwrite=True, report=report)
    assert let_in[0] == (True, False), let_in  # the run line: the new store is in place, the old one kept aside
    assert all(not allowed for kept, allowed in let_in if kept), let_in
    with ReadLock(tmp_path / "r.zarr", run=True):
        pass


def test_predict_dry_run_takes_no_lock_but_checks_its_out(store, tmp_path, capsys):
    """--dry-run only prints a job script: an ingest under way does not refuse it, nothing is locked or made; an
    --out it could never write is still refused."""
    from pipeline.predict import main

    args = ["--store", str(tmp_path / "r.zarr"), "--data", str(store), "--cluster", "slurm", "--dry-run"]
    with DataWriteLock(store):
        assert main([*args, "--out", str(tmp_path / "p.zarr")]) == 0
    assert "#!" in capsys.readouterr().out
    assert not list(tmp_path.glob("p.zarr*")) and live_readers(store) == []
    assert main([*args, "--out", str(store), "--overwrite"]) == 2
    assert "is (or holds, or lies inside) the input" in capsys.readouterr().err


def test_a_full_disk_when_taking_a_lock_is_said_as_such(tmp_path, monkeypatch):
    """A lock that cannot be written for lack of space: 'no space left', not 'not a writable directory'."""
    import errno

    from storage.lock import OutputLock, RunLock

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lockmod.os, "fsync", full)
    for lock, start in ((OutputLock(tmp_path / "p.zarr", "predictions store"), "cannot write "),
                        (RunLock(tmp_path / "r.zarr"), "cannot lock run store ")):
        with pytest.raises(InputError, match=r"no space left on the device of its folder .*free disk space") as e:
            lock.acquire()
        assert str(e.value).startswith(start)
    (tmp_path / "d.zarr").mkdir()
    with ReadLock(tmp_path / "d.zarr") as reader:  # no record (as in a read-only folder), and no empty file left
        assert reader.path is None
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]


def test_an_outputs_lock_refuses_a_missing_folder_and_creates_none(tmp_path):
    """predict --out a/b/p.zarr, report --out a/b/rep: one line, and no a/ or a/b/ left behind (a run store's lock
    still makes its folders: train --store a/b/r.zarr)."""
    from storage.lock import OutputLock, RunLock

    for kind in ("predictions store", "report folder"):
        with pytest.raises(InputError, match=r"cannot write .*p: its folder .*b does not exist; create it first"):
            OutputLock(tmp_path / "a" / "b" / "p", kind).acquire()
    assert list(tmp_path.iterdir()) == []
    with RunLock(tmp_path / "a" / "b" / "r.zarr"):
        assert (tmp_path / "a" / "b").is_dir()


@pytest.mark.parametrize("text", ["my notes, not JSON", '{"note": "JSON, but no token, host or pid"}', "[1, 2]"])
def test_a_file_named_like_a_lock_that_is_no_lock_record_is_refused_never_removed(tmp_path, text):
    """A user's own <OUT>.lock (or <RUN>.lock, <DATA>.lock), however old: refused in one line naming it, kept."""
    from storage.lock import OutputLock, RunLock

    for lock in (OutputLock(tmp_path / "p.zarr", "predictions store"), RunLock(tmp_path / "r.zarr"),
                 DataWriteLock(tmp_path / "d.zarr")):
        lock.path.write_text(text)
        old = time.time() - lockmod.STALE_AFTER - 60
        os.utime(lock.path, (old, old))
        with pytest.raises(InputError, match=r"^cannot lock .*\.lock is not a lock record of admm-dask .*move or "
                                             r"delete that file if it is no lock"):
            lock.acquire()
        assert lock.path.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr.lock", "p.zarr.lock", "r.zarr.lock"]
