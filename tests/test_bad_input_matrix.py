"""The cheap cells of session 15's bad-input matrix (benchmarks/reliability_matrix_s15.py): each bad input gets one
``error: …`` line (exit 2, no traceback), every store that existed is byte-for-byte the same, and nothing is left
behind (no store, lock, reader record or partial folder)."""
import hashlib
import json
import re
import shutil

import numpy as np
import pytest

from pipeline.training import train
from solvers.config import TrainConfig
from solvers.errors import InputError
from storage.data import write_data
from tests.conftest import quiet, run_mains, run_module


def digest(path):
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path]:
        h.update(str(p.relative_to(path.parent)).encode() + p.read_bytes())
    return h.hexdigest()


def set_format_version(store, version):
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["format_version"] = version
    (store / "zarr.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("matrix")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 4)).astype(np.float32)
    write_data(d / "d.zarr", X, (X[:, 0] > 0).astype(int))
    r = run_module("pipeline.train", "--data", d / "d.zarr", "--store", d / "r.zarr", "--hidden", "4",
                   "--iterations", "1", "--no-progress", "--dashboard-address", ":0", "--local-mode", "threads",
                   "--workers", "1")
    assert r.returncode == 0, r.stderr
    (d / "afile").write_text("a file, not a store")
    (d / "head.csv").write_text("f0,f1,label\n")
    (d / "empty.csv").write_text("")
    (d / "semi.csv").write_text("f0;f1;label\n1;2;0\n3;4;1\n")
    (d / "inf.csv").write_text("1,2,0\n3,inf,1\n")
    (d / "huge.csv").write_text("1,2,0\n3,1e400,1\n")
    for name, version in (("dv3.zarr", 3), ("dv0.zarr", 0)):
        shutil.copytree(d / "d.zarr", d / name)
        set_format_version(d / name, version)
    for name, version in (("rv9.zarr", 9), ("rv0.zarr", 0)):
        shutil.copytree(d / "r.zarr", d / name)
        set_format_version(d / name, version)
    shutil.copytree(d / "d.zarr", d / "dj.zarr")
    (d / "dj.zarr" / "zarr.json").write_text("{not json")
    shutil.copytree(d / "r.zarr", d / "rmo.zarr")  # audit17: the model's scaling and classes cut to a third
    for p in (d / "rmo.zarr" / "model").rglob("*"):
        if p.is_file() and p.parent.name == "c":
            p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 3)])
    return d


DATA_FORMAT = r"data store .*dv[03].zarr has format_version [03]; this version reads 1 and 2: re-ingest"
RUN_FORMAT = r"rv[09].zarr has run-store format version [09], this version reads"
DAMAGED = r"dj.zarr is not a usable Zarr store: its zarr.json is damaged"
MODEL_DAMAGED = r"run store .*rmo.zarr is damaged: its model/x_mean .* cannot be read \(RuntimeError: Zstd"
CL = ["--dashboard-address", ":0", "--local-mode", "threads", "--workers", "1"]
CELLS = [  # (name, command, the error line's pattern)
    ("csv_header_only__ingest", ["pipeline.ingest", "{d}/head.csv", "--out", "{d}/n.zarr"], r"holds no data rows"),
    ("csv_empty__ingest", ["pipeline.ingest", "{d}/empty.csv", "--out", "{d}/n.zarr"], r"the first line is empty"),
    ("csv_semicolon__ingest", ["pipeline.ingest", "{d}/semi.csv", "--out", "{d}/n.zarr"], r"holds ';'"),
    ("inf__ingest", ["pipeline.ingest", "{d}/inf.csv", "--out", "{d}/n.zarr"], r"'inf' is NaN or infinite"),
    ("inf_overflow__ingest", ["pipeline.ingest", "{d}/huge.csv", "--out", "{d}/n.zarr"], r"'1e400' is NaN or inf"),
    ("file__ingest_out", ["pipeline.ingest", "{d}/inf.csv", "--out", "{d}/afile"], r"afile already exists and is not"),
    ("file__ingest_out_overwrite", ["pipeline.ingest", "{d}/inf.csv", "--out", "{d}/afile", "--overwrite"],
     r"refusing to overwrite .*afile"),
    ("file__train_data", ["pipeline.train", "--data", "{d}/afile", "--store", "{d}/n.zarr", *CL], r"it is a file"),
    ("file__train_store", ["pipeline.train", "--data", "{d}/d.zarr", "--store", "{d}/afile", "--overwrite", *CL],
     r"refusing to overwrite .*afile"),
    ("file__resume_store", ["pipeline.train", "--data", "{d}/d.zarr", "--store", "{d}/afile", "--resume", *CL],
     r"afile is not an admm-dask run store"),
    ("file__predict_out", ["pipeline.predict", "--store", "{d}/r.zarr", "--data", "{d}/d.zarr", "--out", "{d}/afile",
                           "--overwrite", *CL], r"refusing to overwrite .*afile"),
    ("file__evaluate_store", ["pipeline.evaluate", "--store", "{d}/afile", "--data", "{d}/d.zarr", *CL],
     r"afile is not an admm-dask run store"),
    ("file__report_out", ["pipeline.report", "--store", "{d}/r.zarr", "--out", "{d}/afile"], r"afile is a file"),
    ("format_newer__train", ["pipeline.train", "--data", "{d}/dv3.zarr", "--store", "{d}/n.zarr", *CL], DATA_FORMAT),
    ("format_older__train", ["pipeline.train", "--data", "{d}/dv0.zarr", "--store", "{d}/n.zarr", *CL], DATA_FORMAT),
    ("format_newer__predict_data", ["pipeline.predict", "--store", "{d}/r.zarr", "--data", "{d}/dv3.zarr", "--out",
                                    "{d}/p.zarr", *CL], DATA_FORMAT),
    ("format_newer__evaluate_data", ["pipeline.evaluate", "--store", "{d}/r.zarr", "--data", "{d}/dv3.zarr", *CL],
     DATA_FORMAT),
    ("format_newer__resume", ["pipeline.train", "--data", "{d}/d.zarr", "--store", "{d}/rv9.zarr", "--resume",
                              "--iterations", "3", *CL], RUN_FORMAT),
    ("format_older__resume", ["pipeline.train", "--data", "{d}/d.zarr", "--store", "{d}/rv0.zarr", "--resume",
                              "--iterations", "3", *CL], RUN_FORMAT),
    ("format_newer__predict_store", ["pipeline.predict", "--store", "{d}/rv9.zarr", "--data", "{d}/d.zarr", "--out",
                                     "{d}/p.zarr", *CL], RUN_FORMAT),
    ("format_older__evaluate", ["pipeline.evaluate", "--store", "{d}/rv0.zarr", "--data", "{d}/d.zarr", *CL],
     RUN_FORMAT),
    ("format_newer__report", ["pipeline.report", "--store", "{d}/rv9.zarr", "--out", "{d}/rep"], RUN_FORMAT),
    ("zarr_json_damaged__train", ["pipeline.train", "--data", "{d}/dj.zarr", "--store", "{d}/n.zarr", *CL], DAMAGED),
    ("zarr_json_damaged__predict", ["pipeline.predict", "--store", "{d}/r.zarr", "--data", "{d}/dj.zarr", "--out",
                                    "{d}/p.zarr", *CL], DAMAGED),
    ("zarr_json_damaged__evaluate", ["pipeline.evaluate", "--store", "{d}/r.zarr", "--data", "{d}/dj.zarr", *CL],
     DAMAGED),
    # audit17: a damaged model/ chunk of the run store was "unexpected RuntimeError: Zstd decompression error"
    ("model_chunks_damaged__predict", ["pipeline.predict", "--store", "{d}/rmo.zarr", "--data", "{d}/d.zarr", "--out",
                                       "{d}/p.zarr", *CL], MODEL_DAMAGED),
    ("model_chunks_damaged__evaluate", ["pipeline.evaluate", "--store", "{d}/rmo.zarr", "--data", "{d}/d.zarr", *CL],
     MODEL_DAMAGED),
    ("model_chunks_damaged__resume", ["pipeline.train", "--store", "{d}/rmo.zarr", "--resume", "--iterations", "2",
                                      *CL], MODEL_DAMAGED),
]


@pytest.fixture(scope="module")
def outcomes(folder):
    """Every cell's command run in one process (tests.conftest.run_mains): {name: completed process}, and the
    folder's entries whose digest changed and the entries that are new after all of them."""
    before = {p.name: digest(p) for p in folder.iterdir()}
    results = run_mains(*([a.format(d=folder) for a in args] for _, args, _ in CELLS))
    after = {p.name: digest(p) for p in folder.iterdir()}
    return ({name: r for (name, _, _), r in zip(CELLS, results)},
            sorted(k for k in before if after.get(k) != before[k]), sorted(set(after) - set(before)))


@pytest.mark.parametrize("name,pattern", [(n, p) for n, _, p in CELLS], ids=[n for n, _, _ in CELLS])
def test_a_bad_input_is_one_line(outcomes, name, pattern):
    r = outcomes[0][name]
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert re.search(pattern, lines[0]), lines[0]


def test_the_bad_inputs_changed_nothing_and_left_nothing(outcomes):
    assert outcomes[1:] == ([], [])


def test_a_fresh_run_on_data_with_a_missing_chunk_leaves_no_store_and_the_retry_works(client, tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(900, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=300)
    chunk = sorted(p for p in (tmp_path / "d.zarr" / "X" / "c").rglob("*") if p.is_file())[1]
    saved = chunk.read_bytes()
    chunk.unlink()
    config = TrainConfig(solver="gauss-newton", hidden=(4,), iterations=1)
    with pytest.raises(InputError, match=r"rows 300-599 of 'X' are missing"):
        train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", report=quiet, config=config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]  # no run store, lock or partial folder
    chunk.write_bytes(saved)
    r = train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", report=quiet, config=config)
    assert [h["iteration"] for h in r.history] == [1]


@pytest.mark.parametrize("cause, expected", [
    (OSError(30, "Read-only file system"),
     r"could not start the local cluster's worker processes \(OSError: Read-only file system\); run with "
     r"--local-mode threads, or lift what stops new processes here"),
    (TimeoutError("Nanny start timed out after 60s."),  # review2 R4: a worker that timed out starting (busy machine)
     r"worker processes \(TimeoutError: Nanny start timed out after 60s.\); run with --local-mode threads, or try "
     r"again: a worker took too long to start \(a busy machine\?\)$"),
])
def test_worker_processes_that_cannot_be_spawned_are_one_input_error(monkeypatch, cause, expected):
    """Was 'unexpected RuntimeError: Nanny failed to start. … please report it' (exit 1); the matrix's cell runs the
    real thing (/dev/shm read-only in a private mount namespace)."""
    import distributed

    from pipeline.cluster import connect

    def fails(*args, **kwargs):
        try:
            raise cause
        except type(cause) as exc:
            raise RuntimeError("Nanny failed to start.") from exc

    monkeypatch.setattr(distributed, "LocalCluster", fails)
    with pytest.raises(InputError, match=expected):
        with connect("local", n_workers=1, processes=True, dashboard_address=None):
            pass


def test_a_batch_cluster_on_a_dashboard_port_in_use_gives_no_warning(monkeypatch, tmp_path):
    """distributed's four-line 'Port N is already in use' came before a batch cluster's lines (the local cluster's
    were silenced already: test_bad_inputs.py::test_a_dashboard_port_in_use_is_no_warning_on_stderr)."""
    import socket
    import warnings

    from pipeline.cluster import jobqueue_cluster, load_jobqueue_config

    monkeypatch.setenv("DASK_JOBQUEUE__SLURM__INTERFACE", "lo")
    monkeypatch.setenv("DASK_JOBQUEUE__SLURM__SHARED_TEMP_DIRECTORY", str(tmp_path / "tls"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with jobqueue_cluster("slurm", load_jobqueue_config(), dashboard_address=f"localhost:{port}") as cluster:
                assert cluster.scheduler_address.startswith("tls://")
    assert not [w for w in seen if "already in use" in str(w.message)], [str(w.message) for w in seen]


def test_overwrite_with_data_that_fails_in_the_first_pass_keeps_the_old_run(client, tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(600, 4)).astype(np.float32)
    write_data(tmp_path / "d.zarr", X, (X[:, 0] > 0).astype(int), chunk_rows=300)
    write_data(tmp_path / "bad.zarr", X, (X[:, 0] > 0).astype(int), chunk_rows=300)
    sorted(p for p in (tmp_path / "bad.zarr" / "X" / "c").rglob("*") if p.is_file())[0].unlink()
    config = TrainConfig(solver="gauss-newton", hidden=(4,), iterations=1)
    train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", report=quiet, config=config)
    before = digest(tmp_path / "r.zarr")
    with pytest.raises(InputError, match=r"rows 0-299 of 'X' are missing"):
        train(client, store=tmp_path / "r.zarr", data=tmp_path / "bad.zarr", report=quiet, config=config,
              overwrite=True)
    assert (tmp_path / "r.zarr").exists() and digest(tmp_path / "r.zarr") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zarr", "d.zarr", "r.zarr"]  # no .replaced-, lock


def test_a_threads_cluster_pass_over_deleted_chunks_raises_the_missing_rows_line(tmp_path):
    """--local-mode threads (claimed chunk queue): a chunk failing on every try used to be claimed again after its
    retried task found the queue empty, recursing until a RecursionError (rc 1, "unexpected TypeError: Could not
    serialize object of type _MapExpr", after 36 s here and ~8 min in rel15's matrix at load 17)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 4)).astype(np.float32)
    write_data(tmp_path / "dd2.zarr", X, (X[:, 0] > 0).astype(int))
    for p in list((tmp_path / "dd2.zarr").rglob("c")):
        shutil.rmtree(p)
    r = run_module("pipeline.train", "--data", tmp_path / "dd2.zarr", "--store", tmp_path / "r.zarr",
                   "--iterations", "1", "--no-progress", *CL, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'dd2.zarr'}: rows 0-599 of 'X' are missing or hold NaN; a chunk file was deleted or "
        "never completely written"], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dd2.zarr"]


def test_a_full_disk_under_the_estimator_is_one_input_error_naming_where_and_what_to_do(monkeypatch, tmp_path):
    """audit17: ADMMClassifier(store=…).fit on a full disk raised the bare 'OSError: [Errno 28] No space left on
    device' (no path, no advice); now one InputError naming the folder, the store and what to do. (Real ENOSPC:
    benchmarks/reliability_matrix_s17.py's full__estimator_store, a 1 MB tmpfs.)"""
    import errno

    from pipeline import ADMMClassifier

    def full(self, X, y, path):
        path.mkdir()  # part of the data store written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ADMMClassifier, "_write_numpy", full)
    with pytest.raises(InputError, match=r"^No space left on device in .*, where this fit writes store=.*e.zarr: free "
                                         r"disk space or pass another store=; nothing committed was lost$"):
        ADMMClassifier(store=str(tmp_path / "e.zarr"), max_iter=1).fit(np.zeros((20, 3)), np.arange(20) % 2)
    assert list(tmp_path.iterdir()) == []  # the partial data store it wrote is removed
