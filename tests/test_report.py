"""python -m pipeline.report: files written, plots showing the recorded metrics; train's monitoring flags."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.report import main, performance_report_path, write_report
from solvers.errors import InputError
from storage.data import write_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_store(tmp_path_factory):
    """A 3-iteration run trained by the CLI with --performance-report and --verbose."""
    d = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(600, 5)).astype(np.float32)
    y = (X[:, 0] - X[:, 2] > 0).astype(int)
    write_data(d / "train.zarr", X[:500], y[:500], chunk_rows=128)
    write_data(d / "test.zarr", X[500:], y[500:])
    r = subprocess.run([sys.executable, "-m", "pipeline.train", "--data", str(d / "train.zarr"),
                        "--test-data", str(d / "test.zarr"), "--store", str(d / "run.zarr"), "--hidden", "6",
                        "--iterations", "3", "--workers", "1", "--dashboard-address", ":0",
                        "--performance-report", "--verbose"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return d / "run.zarr", r


def test_train_monitoring_flags(run_store):
    store, r = run_store
    perf = performance_report_path(store)
    assert perf == store.with_name("run.performance.html") and perf.stat().st_size > 1000
    assert f"Dask performance report: {perf}" in r.stdout
    assert "DEBUG pipeline.train: settings" in r.stderr  # --verbose turns the 'pipeline' logger on
    lines = [l.split() for l in r.stdout.splitlines() if l.strip()[:1].isdigit()]
    assert [int(l[0]) for l in lines] == [1, 2, 3]  # the progress lines are unchanged


def test_report_files_and_plotted_values(run_store, tmp_path):
    import xarray as xr

    store, _ = run_store
    result = write_report(store, tmp_path / "out", html=True)
    names = sorted(f.name for f in result["files"])
    # the default solver (Gauss-Newton) records no ADMM residual: no empty residual.png
    assert names == ["accuracy.png", "damping.png", "objective.png", "performance.html", "read.png",
                     "seconds.png", "summary.txt", "throughput.png", "training.html"]
    for f in result["files"]:
        assert f.stat().st_size > 0
        if f.suffix == ".png":
            assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ds = xr.open_zarr(store, group="metrics", consolidated=False)
    it, wall = ds.iteration.values.astype(float), np.cumsum(ds.seconds.values)
    acc, obj, sec = (result["plotted"][k] for k in ("accuracy", "objective", "seconds"))
    for axes, x in ((0, it), (1, wall)):
        for label, name in (("train", "train_accuracy"), ("test", "test_accuracy")):
            np.testing.assert_array_equal(acc[(axes, label)][0], x)
            np.testing.assert_array_equal(acc[(axes, label)][1], ds[name].values)
    np.testing.assert_array_equal(obj[(0, "objective")][1], ds.objective.values)
    np.testing.assert_allclose(sec[(0, "seconds")][0], it)
    np.testing.assert_array_equal(sec[(0, "seconds")][1], ds.seconds.values)
    for name in ("rows_per_second", "read_mb_per_second"):
        assert np.all(ds[name].values > 0), name
    np.testing.assert_array_equal(result["plotted"]["throughput"][(0, "rows/s")][1], ds.rows_per_second.values)
    assert f"test accuracy  {ds.test_accuracy.values[-1]:.4f} (last)" in result["summary"]
    assert "3 committed of 3" in result["summary"]
    from storage.runstore import RunStore  # the model's iteration (train's last lines), not only the last one
    k = RunStore.open(store).model_iteration()
    row = ds.sel(iteration=k)
    assert (f"model          iteration {k} (validation accuracy {float(row.validation_accuracy):.4f}, "
            f"test accuracy {float(row.test_accuracy):.4f})") in result["summary"]


def test_offline_html_holds_the_run_store_metrics(run_store, tmp_path):
    """training.html: BokehJS inline (no script fetched from anywhere) and the run's metrics in its document."""
    import json
    import re

    import xarray as xr

    store, _ = run_store
    write_report(store, tmp_path / "out")
    page = (tmp_path / "out" / "training.html").read_text()
    assert not re.search(r"<script[^>]+src=", page), "the offline page must not load scripts"
    doc = json.loads(re.search(r'<script type="application/json" id="[^"]+">\s*(.*?)\s*</script>', page, re.S)[1])
    ds = xr.open_zarr(store, group="metrics", consolidated=False)
    found = []

    def visit(obj):
        if isinstance(obj, dict):
            if (obj.get("attributes") or {}).get("name") == "metrics" and "data" in obj["attributes"]:
                found.append(obj["attributes"]["data"])
            for v in obj.values():
                visit(v)
        elif isinstance(obj, list):
            for v in obj:
                visit(v)

    visit(doc)
    assert len(found) == 1
    data = found[0]
    data = dict(data["entries"]) if data.get("type") == "map" else data

    def values(column):
        v = data[column]
        if isinstance(v, dict):  # bokeh's encoding of a NumPy array: base64 bytes
            import base64

            return np.frombuffer(base64.b64decode(v["array"]["data"]), dtype=v["dtype"])
        return np.asarray(v, float)

    np.testing.assert_array_equal(values("train_accuracy"), ds.train_accuracy.values)
    np.testing.assert_array_equal(values("iteration"), ds.iteration.values)


def test_cli_prints_summary_and_refuses_missing_html(run_store, tmp_path, capsys):
    store, _ = run_store
    assert main(["--store", str(store), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"run store      {store}") and "wrote accuracy.png" in out
    assert (tmp_path / "r" / "summary.txt").read_text() in out
    assert main(["--store", str(store), "--out", str(tmp_path / "r"), "--html", str(tmp_path / "none.html")]) == 2
    assert "error: no performance report at" in capsys.readouterr().err
    assert main(["--store", str(tmp_path / "r")]) == 2  # not a run store: one error line


def test_missing_matplotlib_says_which_extra(run_store, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(InputError, match=r'pip install "admm-dask\[report\]"'):
        write_report(run_store[0], tmp_path)


def _tear_metrics(store: Path) -> Path:
    """A kill -9 between a metrics/ chunk's in-place rewrite and its zarr.json's: the chunk has one value more."""
    import google_crc32c

    folder = store / "metrics" / "loss"
    chunk = folder / "c" / "0"
    values = np.append(np.frombuffer(chunk.read_bytes()[:-4], "<f8"), 0.5)
    chunk.write_bytes(values.tobytes() + np.array([google_crc32c.value(values)], "<u4").tobytes())
    return folder


def test_a_torn_metrics_array_is_read_from_the_manifest_and_the_next_write_repairs_it(run_store, tmp_path):
    """report reads the manifest's history where metrics/ is torn; the next metrics write sweeps the writers' leftovers
    (only theirs) and rewrites the array."""
    import shutil

    import xarray as xr

    from pipeline.report import load_metrics
    from storage.runstore import RunStore

    store = tmp_path / "run.zarr"
    shutil.copytree(run_store[0], store)
    good = load_metrics(store)
    folder = _tear_metrics(store)
    with pytest.raises(Exception):  # noqa: B017 -- Zarr's error for it, whichever it is
        xr.open_zarr(store, group="metrics", consolidated=False).load()  # what load_metrics read before
    xr.testing.assert_equal(load_metrics(store), good)
    assert main(["--store", str(store), "--out", str(tmp_path / "out")]) == 0
    stale = [folder / "c" / f".0.{'ab' * 16}.partial", folder / ".zarr.json.tmp-123-456"]
    kept = folder / ".zarr.json.tmp-other"
    for f in (*stale, kept):
        f.write_bytes(b"x")
    run = RunStore.open(store)
    run._write_metrics(None, run.manifest()["history"])
    assert not any(f.exists() for f in stale) and kept.exists()
    xr.testing.assert_equal(xr.open_zarr(store, group="metrics", consolidated=False).load(), good)


def test_a_report_while_the_trainer_has_not_written_metrics_yet_reads_the_manifest(run_store, tmp_path):
    """audit17: metrics/ is written at most every METRICS_SECONDS, so beside a running trainer it lags the manifest
    (at first it is empty): report said "R has no finished iteration yet; nothing to plot" of a run with committed
    iterations. The manifest's history decides."""
    import shutil

    from pipeline.report import load_metrics
    from storage.runstore import RunStore

    store = tmp_path / "run.zarr"
    shutil.copytree(run_store[0], store)
    good = load_metrics(store)
    run = RunStore.open(store)
    for n in (0, 1):  # metrics/ as a trainer left it n commits in
        run._write_metrics(None, run.manifest()["history"][:n])
        assert list(load_metrics(store).iteration.values) == [1, 2, 3]
        np.testing.assert_allclose(load_metrics(store)["loss"].values, good["loss"].values)
    assert main(["--store", str(store), "--out", str(tmp_path / "out")]) == 0


def test_report_never_writes_into_a_folder_it_did_not_make(run_store, tmp_path):
    """--out onto a user's folder, a data store or into the run store is refused; its own folder is rewritten."""
    store, _ = run_store
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.txt").write_text("my notes")
    (mine / "plan.txt").write_text("keep")
    data = store.with_name("train.zarr")
    before = sorted(p.name for p in data.iterdir())
    for out, message in ((mine, r"holds files a report did not write \(plan.txt, summary.txt\)"),
                         (data, r"it is an admm-dask data store"),
                         (store / "plots", r"lies inside\) the run store")):
        with pytest.raises(InputError, match=message):
            write_report(store, out)
    assert (mine / "summary.txt").read_text() == "my notes" and sorted(p.name for p in mine.iterdir()) == [
        "plan.txt", "summary.txt"]
    assert sorted(p.name for p in data.iterdir()) == before and not (store / "plots").exists()
    assert main(["--store", str(store), "--out", str(mine)]) == 2
    out = tmp_path / "r"
    write_report(store, out)
    write_report(store, out)  # its own folder (marker file): rewritten
    legacy = tmp_path / "old"  # a report folder of an earlier version, without the marker
    legacy.mkdir()
    for name in ("summary.txt", "accuracy.png", "training.html"):
        (legacy / name).write_text("old")
    assert "accuracy.png" in {f.name for f in write_report(store, legacy)["files"]}
    empty = tmp_path / "empty"
    empty.mkdir()
    write_report(store, empty)


@pytest.mark.parametrize("files", [("summary.txt",), ("summary.txt", "holiday.png"), ("summary.txt", "performance.html")])
def test_report_refuses_a_folder_with_a_summary_txt_but_no_report_plot(run_store, tmp_path, files):
    """Before the marker a report folder is recognised by its summary.txt *and* training.html or one of its own
    PNG names: a user's folder with only a summary.txt (and their pictures) is not overwritten."""
    store, _ = run_store
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in files:
        (mine / name).write_text("mine")
    with pytest.raises(InputError, match="holds files a report did not write"):
        write_report(store, mine)
    assert sorted(p.name for p in mine.iterdir()) == sorted(files)
    assert all((mine / name).read_text() == "mine" for name in files)


def test_report_holds_a_reader_record_and_its_folders_lock(run_store, tmp_path, monkeypatch):
    """A train --overwrite of the run store is refused while a report reads it (and refuses a report); a second
    report into the same folder is refused; nothing is left beside either afterwards."""
    from pipeline import report as rep
    from storage.lock import OutputLock, RunLock, live_readers, lock_path

    store, _ = run_store
    out, seen, real = tmp_path / "rep", {}, rep._write_report

    def spy(s, o, h, made):
        seen.update(readers=len(live_readers(store)), lock=lock_path(o).exists())
        return real(s, o, h, made)

    monkeypatch.setattr(rep, "_write_report", spy)
    write_report(store, out)
    assert seen == {"readers": 1, "lock": True}
    assert live_readers(store) == [] and not lock_path(out).exists()
    with RunLock(store, replacing=True), pytest.raises(InputError, match=r"run store .*run.zarr is being replaced"):
        write_report(store, tmp_path / "rep2")  # train --overwrite under way
    with OutputLock(out, "report folder"), pytest.raises(InputError, match=r"report folder .*rep is being written"):
        write_report(store, out)
    assert not (tmp_path / "rep2").exists() and not lock_path(out).exists() and live_readers(store) == []


def test_a_failed_report_removes_the_folder_it_made_and_keeps_one_it_did_not(run_store, tmp_path, monkeypatch):
    """A full disk half way: the folder this report created goes; an existing report folder stays."""
    import errno

    from pipeline import report as rep

    store, _ = run_store

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    write_report(store, tmp_path / "old")
    monkeypatch.setattr(rep, "training_html", full)
    for out in (tmp_path / "new", tmp_path / "old"):
        with pytest.raises(OSError, match="No space left"):
            write_report(store, out)
    assert not (tmp_path / "new").exists() and (tmp_path / "old" / "summary.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_a_folder_that_appears_while_the_report_starts_is_never_removed(run_store, tmp_path, monkeypatch):
    """Whether the report made its folder is decided by its own mkdir, not sampled before: a folder that appears
    meanwhile (someone else's) stays, whether the second check refuses it or a later step fails."""
    import errno

    from pipeline import report as rep

    store, _ = run_store
    real_load = rep.load_metrics

    def appears(out, files):
        def load(s):
            out.mkdir()
            for name in files:
                (out / name).write_text("mine")
            return real_load(s)
        return load

    monkeypatch.setattr(rep, "load_metrics", appears(tmp_path / "theirs", ["notes.txt"]))
    with pytest.raises(InputError, match="refusing to write the report into"):
        write_report(store, tmp_path / "theirs")
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "mine"

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rep, "load_metrics", appears(tmp_path / "empty", []))
    monkeypatch.setattr(rep, "training_html", full)
    with pytest.raises(OSError, match="No space left"):
        write_report(store, tmp_path / "empty")
    assert (tmp_path / "empty").is_dir()


def test_performance_report_keeps_the_in_process_workers_profiler(tmp_path, monkeypatch):
    """Small data runs on the in-process cluster, whose profiler is off (p784_s14.md) unless a performance report
    is asked for: the report's worker profiles (README, Performance report) come from it."""
    import contextlib

    import pipeline.train as train_cli

    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 3)).astype(np.float32)
    write_data(tmp_path / "train.zarr", X, (X[:, 0] > 0).astype(int))
    profiling = []
    connect = train_cli.connect_from_args

    @contextlib.contextmanager
    def recording(*args, **kwargs):
        with connect(*args, **kwargs) as client:
            cluster = client.cluster
            profiling.append((cluster.processes, ["profile" in w.periodic_callbacks for w in cluster.workers.values()]))
            yield client

    monkeypatch.setattr(train_cli, "connect_from_args", recording)
    base = ["--data", str(tmp_path / "train.zarr"), "--hidden", "4", "--iterations", "1", "--workers", "1",
            "--dashboard-address", ":0"]
    assert train_cli.main([*base, "--store", str(tmp_path / "a.zarr"), "--performance-report"]) == 0
    assert train_cli.main([*base, "--store", str(tmp_path / "b.zarr")]) == 0
    assert profiling == [(False, [True]), (False, [False])]
