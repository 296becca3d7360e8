"""Damaged stores and numerical faults: one clear error, the last committed iteration kept."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.training import train
from solvers.config import TrainConfig
from solvers.errors import InputError, NumericalError
from storage.data import write_data
from storage.runstore import RunStore, state_path
from tests.conftest import quiet, run_mains, run_module




@pytest.fixture
def finished_run(client, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=1000)
    train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", chunk_rows=1000, report=quiet,
          config=TrainConfig(solver="admm", hidden=(8,), iterations=3))
    return tmp_path


def manifest(store):
    return json.loads((Path(store) / "manifest.json").read_text())


def chunk_file(store, array_path, index=1):
    files = sorted(p for p in (Path(store) / array_path / "c").rglob("*") if p.is_file())
    return files[index]


def test_inf_in_state_stops_with_layer_and_iteration(client, finished_run):
    store = finished_run / "r.zarr"
    before = manifest(store)
    z = zarr.open_array(store=str(store), path=state_path(3 % 2, "z1"), mode="r+")
    z[1500, 0] = np.inf
    with pytest.raises(NumericalError, match=r"in layer 1 \(\w+\) at iteration 4"):
        train(client, store=store, resume=True, iterations=5, report=quiet)
    assert manifest(store) == before


def test_settings_fault_keeps_last_commit_and_resumes_with_other_settings(client, tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(2000, 5)).astype(np.float32)
    X[:, 3] = 1.0  # constant feature: singular input Gram without a ridge and without weight decay
    y = (X[:, 0] > 0).astype(int)
    write_data(tmp_path / "d.zarr", X, y)
    store = tmp_path / "r.zarr"
    train(client, store=store, data=tmp_path / "d.zarr", report=quiet,
          config=TrainConfig(solver="admm", hidden=(6,), iterations=2, alpha=0.0))
    before = manifest(store)
    with pytest.raises(NumericalError, match=r"iteration 3: W_1: .*not positive definite.*iteration 2 is still"):
        train(client, store=store, resume=True, overrides={"ridge": 0.0, "iterations": 4}, report=quiet)
    assert manifest(store) == before
    r = train(client, store=store, resume=True, overrides={"ridge": 1e-4, "iterations": 4}, report=quiet)
    assert [h["iteration"] for h in r.history] == [1, 2, 3, 4]


def test_corrupted_state_chunk_is_reported_not_read(client, finished_run):
    store = finished_run / "r.zarr"
    f = chunk_file(store, state_path(3 % 2, "z1"))
    f.write_bytes(f.read_bytes()[:-100])  # truncated
    with pytest.raises(InputError, match=r"rows 1000-1999 is corrupted or truncated"):
        train(client, store=store, resume=True, iterations=4, report=quiet)
    assert manifest(store)["iteration"] == 3


def test_missing_data_chunk_is_reported(client, finished_run):
    store = finished_run / "r.zarr"
    chunk_file(finished_run / "d.zarr", "X").unlink()
    with pytest.raises(InputError, match=r"'X' are missing or hold NaN"):
        train(client, store=store, resume=True, iterations=4, report=quiet)


def test_finished_run_keeps_one_state_slot(finished_run):
    sizes = RunStore.open(finished_run / "r.zarr").disk_bytes()
    committed = f"slot{3 % 2}"
    other = "slot0" if committed == "slot1" else "slot1"
    state_bytes = 3000 * (8 + 1 + 1) * 4
    assert sizes[committed] >= state_bytes
    assert sizes[other] < 0.05 * state_bytes  # metadata only


@pytest.mark.parametrize("make,match", [
    (lambda d: d / "nothing.zarr", "does not exist"),
    (lambda d: d / "d.zarr", "not an admm-dask run store"),
])
def test_resume_on_a_path_that_is_not_a_run(client, finished_run, make, match):
    with pytest.raises(InputError, match=match):
        train(client, store=make(finished_run), resume=True, report=quiet)


def test_store_workers_cannot_write_is_refused_before_anything_runs(client, tmp_path):
    rng = np.random.default_rng(1)
    write_data(tmp_path / "d.zarr", rng.normal(size=(100, 3)), rng.integers(0, 2, 100))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits: use a path that cannot exist
            target = tmp_path / "not-a-dir" / "r.zarr"
            (tmp_path / "not-a-dir").write_text("a file, not a directory")
        else:
            target = locked / "r.zarr"
        # the client's lock (storage.lock) or the workers' check refuses the folder
        with pytest.raises(InputError, match="the workers cannot use the stores|cannot lock run store .* not a "
                                             "writable directory"):
            train(client, store=target, data=tmp_path / "d.zarr", report=quiet,
                  config=TrainConfig(solver="admm", hidden=(4,), iterations=1))
        assert not target.exists()
    finally:
        locked.chmod(0o700)


# ------------------------------------------------------------------ command lines: one `error:` line, exit 2

def cli(*args, timeout=120):
    return run_module(*args, timeout=timeout)


def one_error_line(r, message):
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if not re.fullmatch(r"\s*read [\d,]+ rows", l)]  # progress
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    assert re.search(message, lines[0]), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-errors")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 4)).astype(np.float32)
    write_data(d / "d.zarr", X, (X[:, 0] > 0).astype(int))
    write_data(d / "wide.zarr", rng.normal(size=(200, 5)), rng.integers(0, 2, 200))
    (d / "afile").write_text("a file, not a folder")
    np.savetxt(d / "t.csv", X[:100], delimiter=",")
    r = run_module("pipeline.train", "--data", d / "d.zarr", "--store", d / "r.zarr", "--hidden", "4",
                   "--iterations", "1", "--dashboard-address", ":0")
    assert r.returncode == 0, r.stderr
    return d


COMMAND_LINE_ERRORS = [
    (["pipeline.train", "--hidden", "8,,x"], r"argument --hidden: expected comma-separated integers"),
    (["pipeline.train", "--workers", "0"], r"argument --workers: expected a positive integer, got '0'"),
    (["pipeline.train", "--memory-limit", "lots"], r"argument --memory-limit: expected a size like 2GB"),
    (["pipeline.train", "--data", "{d}/d.zarr", "--store", "{d}/m.zarr", "--memory-limit", "1MB"],
     r"--memory-limit 1MB is too small: .*a worker needs at least"),
    (["pipeline.predict", "--store", "{d}/r.zarr", "--data", "{d}/d.zarr", "--out", "{d}/d.zarr",
      "--overwrite"], r"--out .* the input"),
    (["pipeline.predict", "--store", "{d}/r.zarr", "--data", "{d}/d.zarr", "--out", "{d}/afile/p.zarr"],
     r"cannot write .*afile/p.zarr: its folder .* is not a writable directory"),
    (["pipeline.evaluate", "--store", "{d}/r.zarr", "--data", "{d}/d.zarr", "--memory-limit", "10MB"],
     r"--memory-limit 10MB is too small"),
    (["pipeline.ingest", "{d}/t.csv", "--out", "{d}/afile/d.zarr"], r"its folder .*afile is not a writable"),
    (["pipeline.ingest", "{d}/t.csv", "--out", "{d}/x.zarr", "--bogus"], r"unrecognized arguments: --bogus"),
    (["pipeline.report", "--store", "{d}/r.zarr", "--out", "{d}/afile"], r"report --out .*afile is a file"),
    (["pipeline.train", "--data", "{d}/d.zarr", "--store", "{d}/afile/r.zarr"], r"afile is a file, not a folder"),
    (["pipeline.train", "--data", "{d}/d.zarr", "--store", "{d}/t.zarr", "--test-data", "{d}/wide.zarr"],
     r"test data .* has 5 features, training data has 4"),
]


def _command(args, d) -> tuple:
    extra = ["--dashboard-address", ":0"] if args[0] in ("pipeline.train", "pipeline.predict", "pipeline.evaluate") \
        else []
    return (*[a.format(d=d) for a in args], *extra)


@pytest.fixture(scope="module")
def command_line_errors(cli_files):
    """Every command of COMMAND_LINE_ERRORS run in one process (tests.conftest.run_mains), {command: completed
    process}: each is refused before a cluster starts or anything is written, so one interpreter start serves all."""
    commands = [_command(args, cli_files) for args, _ in COMMAND_LINE_ERRORS]
    return dict(zip(commands, run_mains(*commands)))


@pytest.mark.parametrize("args,message", COMMAND_LINE_ERRORS)
def test_command_line_errors_are_one_line(cli_files, command_line_errors, args, message):
    one_error_line(command_line_errors[_command(args, cli_files)], message)


def test_bad_test_data_leaves_no_store_and_the_retry_works(cli_files, tmp_path):
    d = cli_files
    store = tmp_path / "r.zarr"
    r = cli("pipeline.train", "--data", d / "d.zarr", "--store", store, "--test-data", d / "wide.zarr",
            "--iterations", "1", "--dashboard-address", ":0")
    one_error_line(r, "test data .* has 5 features")
    assert not store.exists() and not list(tmp_path.iterdir())
    r = cli("pipeline.train", "--data", d / "d.zarr", "--store", store, "--test-data", d / "d.zarr",
            "--iterations", "1", "--hidden", "4", "--dashboard-address", ":0", timeout=300)
    assert r.returncode == 0, r.stderr


def test_many_distinct_real_labels_ask_for_regression(client, tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(2000, 3)).astype(np.float32)
    y = np.round(X[:, 0] * 30 + 0.5 + rng.normal(size=2000), 1)[:] + 0.05  # ~198 distinct real values
    assert len(np.unique(y)) > 100
    write_data(tmp_path / "d.zarr", X, y)
    with pytest.raises(InputError, match=r"distinct values that are not whole numbers.*pass --task regression"):
        train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", report=quiet,
              config=TrainConfig(hidden=(4,), iterations=1))
    assert not (tmp_path / "r.zarr").exists()


def test_a_bare_dashboard_port_listens_on_localhost():
    from pipeline.cluster import connect, dashboard_link

    with connect("local", n_workers=1, dashboard_address=":0", processes=False) as client:
        server = client.cluster.scheduler.http_server
        hosts = {sock.getsockname()[0] for sock in server._sockets.values()}
        assert hosts <= {"127.0.0.1", "::1"}, hosts
        assert dashboard_link(client).startswith("http://localhost:")


def test_unexpected_errors_are_one_line_with_the_traceback_in_a_log(capsys):
    import errno

    from pipeline.cli import exits_on_input_error

    @exits_on_input_error
    def disk_full(argv=None):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run.zarr/state/slot1/z1/c/3/0")

    @exits_on_input_error
    def bug(argv=None):
        raise KeyError("oops")

    assert disk_full() == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: No space left on device (/data/run.zarr/state/slot1/z1/c/3/0): free disk "
                           "space") and "\n" not in line
    log = Path(re.search(r"details in (\S+)\)", line)[1])
    assert "OSError" in log.read_text()
    assert bug() == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: unexpected KeyError") and "traceback in" in line


def _mount_small_tmpfs(path: Path) -> bool:
    import subprocess

    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def test_full_disk_is_one_line_and_loses_nothing(cli_files, tmp_path):
    """Ingest and train onto a 3 MB file system: one error line each, the log named, no partial left."""
    import subprocess

    full = tmp_path / "full"
    if not _mount_small_tmpfs(full):
        pytest.skip("cannot mount a small tmpfs here (needs root): the full-disk message is tested in-process above")
    try:
        rng = np.random.default_rng(3)
        np.savetxt(tmp_path / "big.csv", rng.normal(size=(40000, 20)), delimiter=",")
        r = cli("pipeline.ingest", tmp_path / "big.csv", "--out", full / "d.zarr")
        line = one_error_line(r, r"No space left on device.*free disk space")
        assert Path(re.search(r"details in (\S+)\)", line)[1]).exists()
        assert not list(full.iterdir())  # the partial store was removed
        r = cli("pipeline.train", "--data", cli_files / "d.zarr", "--store", full / "r.zarr", "--hidden", "3000",
                "--solver", "admm", "--iterations", "1", "--dashboard-address", ":0", timeout=300)
        one_error_line(r, r"No space left on device")
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)


def test_stale_partial_folders_are_cleaned_up_on_the_next_write(tmp_path, capsys):
    import socket
    import subprocess
    import sys

    from storage.paths import partial_path

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "d.zarr"
    mine = out.with_name(f"d.zarr.partial-{socket.gethostname()}.{gone.pid}.0bad")
    other = out.with_name("d.zarr.partial-another-node.4242.0bad")
    live = partial_path(out)  # this process: alive, kept
    for p in (mine, other, live):
        p.mkdir()
        (p / "zarr.json").write_text("{}")
    write_data(out, np.ones((10, 2)), np.arange(10) % 2)
    err = capsys.readouterr().err
    assert not mine.exists() and other.exists() and live.exists()
    assert f"removed {mine}" in err and "another-node" in err


def test_a_replaced_store_left_by_a_killed_writer_is_removed_only_when_its_replacement_exists(tmp_path, capsys):
    """swap_in renames the old store to .old-<host>.<pid>.<random>: a kill before its deletion ends leaves it behind."""
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "d.zarr"
    old = out.with_name(f"d.zarr.old-{socket.gethostname()}.{gone.pid}.0bad")
    old.mkdir()
    (old / "zarr.json").write_text("{}")
    write_data(out, np.ones((10, 2)), np.arange(10) % 2)  # no d.zarr before: killed between the renames, keep it
    err = capsys.readouterr().err
    assert old.exists() and f"rename it back to {out.name}" in err
    write_data(out, np.ones((10, 2)), np.arange(10) % 2, overwrite=True)  # d.zarr exists: the leftover goes
    err = capsys.readouterr().err
    assert not old.exists() and f"removed {old}" in err
    assert not list(tmp_path.glob("d.zarr.old-*"))


# ------------------------------------------------------------------ clusters that do not start (session 11)

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_scheduler_address_nobody_listens_on_is_refused_at_once(caplog):
    """Client retried a refused tcp:// address for 30 s, after a warning line: now one error within seconds."""
    import time

    from pipeline.cluster import connect

    t0 = time.monotonic()
    with pytest.raises(InputError, match=r"could not reach the Dask scheduler at tcp://127.0.0.1:\d+: connection "
                                         r"refused"):
        with connect(f"tcp://127.0.0.1:{_free_port()}"):
            pass
    assert time.monotonic() - t0 < 10
    with pytest.raises(InputError, match=r"host 'no-such-host.invalid' not found"):
        with connect("tcp://no-such-host.invalid:8786"):
            pass
    assert "without encryption" not in caplog.text  # the warning is for a connection made, not a failed one


def test_a_scheduler_file_without_an_address_or_with_a_dead_one_is_named(tmp_path):
    """An empty "address" was probed as "tcp://" ('--cluster tcp://: expected a scheduler address'), the file unnamed."""
    from pipeline.cluster import connect

    spec = tmp_path / "scheduler.json"
    spec.write_text(json.dumps({"address": ""}))
    with pytest.raises(InputError, match=rf"scheduler file {re.escape(str(spec))} holds no scheduler address"):
        with connect(str(spec)):
            pass
    spec.write_text(json.dumps({"address": f"tcp://127.0.0.1:{_free_port()}"}))
    with pytest.raises(InputError, match=rf"\(the address in scheduler file {re.escape(str(spec))}\): connection "
                                         "refused"):
        with connect(str(spec)):
            pass


def test_a_dashboard_address_that_cannot_be_served_is_one_input_error():
    """LocalCluster's RuntimeError('Cluster failed to start') was 'unexpected RuntimeError … please report it'."""
    from pipeline.cluster import connect

    with pytest.raises(InputError, match=r"could not start the local Dask cluster: .*--dashboard-address "
                                         r"no-such-host.invalid:8787"):
        with connect("local", n_workers=1, processes=False, dashboard_address="no-such-host.invalid:8787"):
            pass


def test_a_dashboard_port_in_use_is_no_warning_on_stderr():
    """distributed warned in four lines (Port N is already in use … Hosting the HTTP server on port M instead)."""
    import socket
    import warnings

    from pipeline.cluster import connect

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with connect("local", n_workers=1, processes=False, dashboard_address=f"localhost:{port}") as client:
                assert client.submit(lambda: 1).result() == 1
    assert not [w for w in seen if "already in use" in str(w.message)], [str(w.message) for w in seen]


def test_a_source_file_given_as_data_store_says_how_to_convert_it(tmp_path):
    """--data data.csv.gz said 'create one with … --out data.csv.gz' (onto the user's file, which ingest refuses)."""
    from storage.data import open_data

    for name, store in (("data.csv.gz", "data.zarr"), ("x.npz", "x.zarr"), ("t.parquet", "t.zarr")):
        (tmp_path / name).write_text("1,2\n")
        with pytest.raises(InputError, match=re.escape(f"is not a Zarr store: it is a file (a data store is a folder); "
                                                       f"convert it into one first: `python -m pipeline.ingest "
                                                       f"{tmp_path / name} --out {tmp_path / store}`")):
            open_data(tmp_path / name)
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match=r"folder is not a Zarr store .*--out DATA.zarr`$"):
        open_data(tmp_path / "folder")


def test_evaluate_checks_its_inputs_before_a_cluster_starts(tmp_path, monkeypatch, capsys):
    """A missing --data started worker processes (~10-18 s under load) before its one error line."""
    import pipeline.evaluate as evaluate

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(evaluate, "connect_from_args", no_cluster)
    rng = np.random.default_rng(0)
    write_data(tmp_path / "d.zarr", rng.normal(size=(50, 3)), rng.integers(0, 2, 50))
    assert evaluate.main(["--store", str(tmp_path / "nope.zarr"), "--data", str(tmp_path / "d.zarr")]) == 2
    assert capsys.readouterr().err.startswith("error: run store")


def test_a_jobqueue_config_that_is_not_yaml_is_one_line(tmp_path):
    from pipeline.cluster import load_jobqueue_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("jobqueue:\n  slurm:\n    cores: [oops\n")
    with pytest.raises(InputError, match="is not valid YAML") as info:
        load_jobqueue_config(bad)
    assert "\n" not in str(info.value)


def test_an_existing_path_is_refused_with_advice_that_works(tmp_path):
    """A user's folder at --store was told 'pass --resume … or --overwrite' (both refused); a run store with no
    commit (its run failed before the first) is told so, and that --resume starts it again."""
    from storage.runstore import check_creatable

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match=r"mine already exists and is not an admm-dask run store \(it is no admm-dask "
                                         r"store\); choose another path") as info:
        check_creatable(mine, overwrite=False)
    assert "--overwrite" not in str(info.value) and "--resume" not in str(info.value)
    rng = np.random.default_rng(0)
    write_data(tmp_path / "d.zarr", rng.normal(size=(50, 3)), rng.integers(0, 2, 50))
    with pytest.raises(InputError, match=r"is not an admm-dask run store \(it is an admm-dask data store\)"):
        check_creatable(tmp_path / "d.zarr", overwrite=False)
    run = RunStore.create(tmp_path / "r.zarr", config=TrainConfig(hidden=(4,)).to_dict(), data={"path": "d"},
                          state_widths={}, n_samples=50, chunk_rows=50, classes=[0, 1], x_mean=np.zeros(3),
                          x_scale=np.ones(3))
    with pytest.raises(InputError, match=r"r.zarr already exists and holds no committed iteration .*pass --resume "
                                         r"to start it again"):
        check_creatable(run.path, overwrite=False)
    assert mine.exists() and (mine / "notes.txt").read_text() == "keep"


def test_a_symlink_output_is_named_as_one_and_overwrite_is_not_suggested(tmp_path):
    """A symlink to a data store was 'no admm-dask store' with --overwrite, or 'exists; pass --overwrite': and
    --overwrite was then refused. The link and its target are left alone."""
    from storage.runstore import check_creatable

    X = np.zeros((10, 2), np.float32)
    y = np.arange(10) % 2
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=5)
    (tmp_path / "run.zarr").mkdir()
    before = sorted(p.name for p in (tmp_path / "d.zarr").iterdir())
    for target in ("d.zarr", "run.zarr", "nothing"):
        link = tmp_path / f"link-{target}"
        link.symlink_to(tmp_path / target)
        for check in (lambda p=link: write_data(p, X, y, chunk_rows=5), lambda p=link: check_creatable(p, False)):
            with pytest.raises(InputError, match=rf"it is a symlink \(to .*{target}\), which is never replaced") as e:
                check()
            assert "--overwrite" not in str(e.value) and "overwrite=True" not in str(e.value)
        with pytest.raises(InputError, match="refusing to overwrite .*it is a symlink"):
            write_data(link, X, y, chunk_rows=5, overwrite=True)
        assert link.is_symlink()
    assert sorted(p.name for p in (tmp_path / "d.zarr").iterdir()) == before


def test_test_data_with_labels_the_training_data_lacks_gets_one_warning_line(tmp_path):
    """train --test-data whose labels the training data has not: one warning (they count as wrong), from the stores'
    recorded labels, no pass over the data; nothing for a store whose labels are all known."""
    from pipeline.checks import unseen_test_labels_warning
    from storage.data import write_data

    X = np.zeros((6, 2), np.float32)
    write_data(tmp_path / "d.zarr", X, [0, 1, 2, 0, 1, 2])
    write_data(tmp_path / "t.zarr", X, [0, 1, 5, 5, 7.5, 1])
    write_data(tmp_path / "k.zarr", X, [2, 1, 1, 1, 1, 1])
    line = unseen_test_labels_warning(tmp_path / "t.zarr", tmp_path / "d.zarr")
    assert line.startswith("warning: test data ") and line.endswith("count as wrong in the test accuracy: 5, 7.5")
    assert unseen_test_labels_warning(tmp_path / "k.zarr", tmp_path / "d.zarr") is None
    assert unseen_test_labels_warning(None, tmp_path / "d.zarr") is None


def test_a_resumed_run_warns_about_unseen_test_labels_as_a_fresh_one_does(tmp_path, monkeypatch, capsys):
    """train --resume scores test data too: the same one warning line as a fresh train --test-data, with
    --test-data given or the run's recorded one (before: a resume printed nothing). Stopped before a cluster."""
    from pipeline import train as cli
    from storage.data import fingerprint, open_data

    X = np.zeros((6, 2), np.float32)
    data, test = str(tmp_path / "d.zarr"), str(tmp_path / "t.zarr")
    write_data(data, X, [0, 1, 2, 0, 1, 2])
    write_data(test, X, [0, 1, 5, 5, 1, 1])

    def no_cluster(*args, **kwargs):
        raise InputError("no cluster in this test")

    monkeypatch.setattr(cli, "connect_from_args", no_cluster)
    monkeypatch.setattr(cli, "setup_logging", lambda verbose: None)  # this process's 'pipeline' logger stays as it is
    assert cli.main(["--data", data, "--test-data", test, "--store", str(tmp_path / "new.zarr"),
                       "--solver", "gauss-newton"]) == 2
    fresh = capsys.readouterr().err.splitlines()
    assert fresh[0].startswith("warning: test data ") and fresh[0].endswith("test accuracy: 5")
    assert fresh[1:] == ["error: no cluster in this test"]
    for recorded, given in ((None, ["--test-data", test]), (test, [])):
        run = tmp_path / f"r{len(given)}.zarr"
        RunStore.create(run, config=TrainConfig(solver="gauss-newton").to_dict(), test_data=recorded,
                        data={"path": data, "fingerprint": fingerprint(open_data(data))}, state_widths={},
                        n_samples=6, chunk_rows=6, classes=[0, 1, 2], x_mean=np.zeros(2), x_scale=np.ones(2))
        assert cli.main(["--resume", "--store", str(run), *given]) == 2
        assert capsys.readouterr().err.splitlines() == fresh


def test_a_resume_on_other_data_is_refused_in_one_line_without_the_test_labels_warning(tmp_path, monkeypatch, capsys):
    """train --resume --data OTHER --test-data T printed the unseen-labels warning (read from OTHER and T), then
    the refusal: two lines for one bad input. The resume checks (the recorded stores not being written, the data's
    fingerprint) now run before the warning, and the recorded stores are checked like the given ones."""
    from pipeline import train as cli
    from storage.data import fingerprint, open_data
    from storage.lock import DataWriteLock

    X = np.zeros((6, 2), np.float32)
    data, other, test = str(tmp_path / "d.zarr"), str(tmp_path / "o.zarr"), str(tmp_path / "t.zarr")
    write_data(data, X, [0, 1, 2, 0, 1, 2])
    write_data(other, X + 1, [0, 1, 2, 0, 1, 2])
    write_data(test, X, [0, 1, 5, 5, 1, 1])
    run = tmp_path / "r.zarr"
    RunStore.create(run, config=TrainConfig(solver="gauss-newton").to_dict(), test_data=test,
                    data={"path": data, "fingerprint": fingerprint(open_data(data))}, state_widths={},
                    n_samples=6, chunk_rows=6, classes=[0, 1, 2], x_mean=np.zeros(2), x_scale=np.ones(2))
    monkeypatch.setattr(cli, "connect_from_args", lambda *a, **k: pytest.fail("a cluster was started"))
    monkeypatch.setattr(cli, "setup_logging", lambda verbose: None)
    assert cli.main(["--resume", "--store", str(run), "--data", other, "--test-data", test]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {other} is not the data set run "), err
    for held in (data, test):  # the recorded training and test data, being written: refused before any warning
        with DataWriteLock(held):
            assert cli.main(["--resume", "--store", str(run)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: data store {held} is being written by "), err


def test_a_run_store_with_a_damaged_zarr_json_is_named_damaged(tmp_path):
    """Its manifest is there: a damaged run store, not 'not a run store' (evaluate, predict, report, --resume)."""
    run = tmp_path / "r.zarr"
    run.mkdir()
    (run / "zarr.json").write_text("")
    (run / "manifest.json").write_text("{}")
    with pytest.raises(InputError, match=r"run store .*r.zarr is damaged: its zarr.json is missing or is not"):
        RunStore.open(run)
    (run / "manifest.json").unlink()
    with pytest.raises(InputError, match=r"is not an admm-dask run store"):
        RunStore.open(run)


def test_predict_on_a_csv_says_ingest_with_no_labels_and_names_a_label_column_taken_from_the_features(finished_run):
    """predict's hint said plain ingest, which turns a label-less file's last feature into a label (newuser15 F5)."""
    from pipeline.predict import check_inputs

    d = finished_run
    X = np.random.default_rng(1).normal(size=(20, 6)).astype(np.float32)
    np.savetxt(d / "new.csv", X, delimiter=",", header=",".join(f"f{i}" for i in range(6)), comments="")
    with pytest.raises(InputError, match=re.escape(f"`python -m pipeline.ingest {d / 'new.csv'} --out {d / 'new.zarr'} "
                                                   "--no-labels` for a file without a label column; for a "
                                                   "labelled file (predict ignores its labels) the same without "
                                                   "`--no-labels`") + "$"):  # newuser16: it ended in a stray `
        check_inputs(d / "r.zarr", d / "new.csv", d / "p.zarr")
    write_data(d / "new.zarr", X[:, :5], X[:, 5])  # what ingest without --no-labels made of it
    with pytest.raises(InputError, match="has 5 features, the model expects 6: one column fewer; if its file has no "
                                         "label column, ingest it with --no-labels"):
        check_inputs(d / "r.zarr", d / "new.zarr", d / "p.zarr")
