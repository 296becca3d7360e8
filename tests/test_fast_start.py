"""Fixed costs of a run: statistics recorded at write time, chunks for every thread, a threaded local cluster."""
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zarr

from pipeline.cluster import THREADS_MAX_BYTES, connect, local_processes
from pipeline.memory import CHUNKS_PER_THREAD, MIN_CHUNK_ROWS, default_chunk_rows
from pipeline.training import train
from solvers.config import TrainConfig
from solvers.errors import InputError
from solvers.stats import moment_sums
from storage.data import MAX_LABELS, open_data, write_data
from storage.ingest import ingest
from tests.conftest import quiet

ROOT = Path(__file__).resolve().parents[1]




def test_ingest_records_moments_and_labels_of_every_block(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 2.0, size=(5000, 4)).astype(np.float32)
    y = rng.integers(0, 3, 5000) * 2 + 1
    csv = tmp_path / "t.csv"
    np.savetxt(csv, np.column_stack([X, y]), delimiter=",", fmt="%.9g")
    store, _ = ingest(csv, tmp_path / "d.zarr", block_rows=700, chunk_rows=1024)
    stats = store.statistics
    xy = np.column_stack([store.X[...].astype(np.float64), store.y[...]])
    np.testing.assert_array_equal(stats["shift"], xy[0])
    np.testing.assert_allclose(stats["sums"], moment_sums(xy, xy[0]), rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(stats["labels"], [1.0, 3.0, 5.0])


def test_too_many_labels_recorded_as_none_and_refused_for_classification(client, tmp_path):
    X = np.arange(2 * (MAX_LABELS + 1), dtype=np.float32).reshape(-1, 2)
    y = np.arange(MAX_LABELS + 1) * 0.5
    store = write_data(tmp_path / "d.zarr", X, y)
    assert store.statistics["labels"] is None
    with pytest.raises(InputError, match=f"more than {MAX_LABELS} distinct values.*--task regression"):
        train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", report=quiet,
              config=TrainConfig(hidden=(4,), iterations=1))


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_recorded_statistics_give_the_model_of_a_statistics_pass(client, tmp_path, monkeypatch, task):
    """A store with statistics trains without the pass; an older store without them gets it, same model."""
    import pipeline.passes as passes

    rng = np.random.default_rng(1)
    X = (rng.normal(size=(3000, 6)) * [1, 10, 100, 0.1, 1, 5] + 7).astype(np.float32)
    y = (X[:, 0] > 7).astype(int) if task == "classification" else X[:, 1] * 0.3 + rng.normal(size=3000)
    write_data(tmp_path / "new.zarr", X, y, chunk_rows=512)
    write_data(tmp_path / "old.zarr", X, y, chunk_rows=512)
    group = zarr.open_group(tmp_path / "old.zarr", mode="r+")
    del group.attrs["statistics"]
    assert open_data(tmp_path / "old.zarr").statistics is None
    cfg = TrainConfig(hidden=(8,), iterations=2, task=task)
    calls = []
    real = passes.data_statistics
    monkeypatch.setattr(passes, "data_statistics", lambda *a, **k: calls.append(1) or real(*a, **k))
    new = train(client, store=tmp_path / "a.zarr", data=tmp_path / "new.zarr", config=cfg, report=quiet)
    assert calls == []  # no statistics pass
    old = train(client, store=tmp_path / "b.zarr", data=tmp_path / "old.zarr", config=cfg, report=quiet)
    assert calls == [1]
    for name in ("x_mean", "x_scale", "y_mean", "y_scale"):
        a, b = getattr(new.network, name), getattr(old.network, name)
        if a is None:
            assert b is None
        else:
            np.testing.assert_allclose(a, b, rtol=1e-9)
    if task == "classification":
        np.testing.assert_array_equal(new.network.classes, old.network.classes)
    for a, b in zip(new.network.weights, old.network.weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _store(n, chunk_rows, d=28):
    return SimpleNamespace(n_samples=n, chunk_rows=chunk_rows, n_features=d)


@pytest.mark.parametrize("n,data_rows,threads", [(7951, 7951, 2), (10_000, 8192, 2), (60_000, 8192, 2),
                                                 (1_000_000, 262144, 2), (100_000, 4096, 8)])
def test_small_data_gives_every_thread_chunks_with_aligned_reads(n, data_rows, threads):
    rows = default_chunk_rows(_store(n, data_rows), 0, threads)
    chunks = -(-n // rows)
    assert chunks >= CHUNKS_PER_THREAD * threads or rows == MIN_CHUNK_ROWS
    if data_rows < n:  # several data chunks: a task reads whole ones, or a power-of-two share of one
        assert rows % data_rows == 0 or data_rows % rows == 0


def test_big_data_keeps_large_chunks_and_tiny_data_no_tiny_chunks():
    big = _store(50_000_000, 262144)
    assert default_chunk_rows(big, 300, 2) == default_chunk_rows(big, 300, 1) >= 262144
    assert default_chunk_rows(_store(1000, 1000), 0, 8) == MIN_CHUNK_ROWS  # 24 chunks wanted, 2 given
    assert default_chunk_rows(_store(300, 300), 0, 8) == 300


def test_local_mode_rule():
    assert local_processes("auto", THREADS_MAX_BYTES) is False
    assert local_processes("auto", THREADS_MAX_BYTES + 1) is True
    assert local_processes("auto", None) is True
    assert local_processes("threads", 10**12) is False
    assert local_processes("processes", 10) is True
    assert local_processes("auto", 10, gil_bound=True) is True  # consensus: Python minibatch loops hold the GIL
    assert local_processes("threads", 10, gil_bound=True) is False  # an explicit mode wins
    from pipeline.train import _gil_bound

    assert _gil_bound("consensus") and _gil_bound("consensus,gauss-newton")
    assert not _gil_bound("gauss-newton") and not _gil_bound(None) and not _gil_bound("auto")
    with pytest.raises(InputError, match="--local-mode 'fast'"):
        local_processes("fast", 10)


def test_threaded_local_cluster_runs_in_this_process(tmp_path):
    import os

    with connect("local", n_workers=2, dashboard_address=None, processes=False, report=quiet) as client:
        assert list(client.nthreads().values()) == [2]
        assert set(client.run(os.getpid).values()) == {os.getpid()}


def test_threaded_local_cluster_wakes_its_event_loop_less_unless_the_user_configured_it():
    """The in-process cluster shares the client's event loop and GIL: no worker profiler and a 500 ms tick
    (distributed's defaults: 10 ms, 20 ms); a setting the user's dask config changed is kept. Work stealing stays
    on: the dashboard's /stealing page needs it."""
    import dask
    from dask.utils import parse_timedelta

    from pipeline.cluster import IN_PROCESS_CONFIG

    key = "distributed.admin.tick.interval"
    before = dask.config.get(key)
    with connect("local", n_workers=1, dashboard_address=None, processes=False, report=quiet) as client:
        worker = next(iter(client.cluster.workers.values()))
        assert "profile" not in worker.periodic_callbacks
        assert worker._tick_interval == parse_timedelta(IN_PROCESS_CONFIG[key])
        assert "stealing" in client.cluster.scheduler.extensions
        assert dask.config.get(key) == IN_PROCESS_CONFIG[key]  # set for the cluster's whole life
    assert dask.config.get(key) == before  # and restored once it is closed
    with dask.config.set({"distributed.admin.tick.interval": "40ms"}), \
            connect("local", n_workers=1, dashboard_address=None, processes=False, report=quiet) as client:
        worker = next(iter(client.cluster.workers.values()))
        assert worker._tick_interval == 0.04 and "profile" not in worker.periodic_callbacks


def test_estimator_fits_from_stdin_without_spawning(tmp_path):
    """In-memory fits use threads in this process: a script piped to python (no __main__ guard) works."""
    script = ("import numpy as np\n"
              "from pipeline.estimator import ADMMClassifier\n"
              "rng = np.random.default_rng(0)\n"
              "X = rng.normal(size=(400, 3)); y = (X[:, 0] > 0).astype(int)\n"
              "clf = ADMMClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X, y)\n"
              "print('score', clf.score(X, y))\n")
    out = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.split("score")[1]) > 0.8


def test_local_dashboard_imports_bokeh_at_its_first_request():
    """A local cluster serves its dashboard without importing it (a third of a small run's start) until asked for it."""
    code = """
import sys, urllib.request
from pipeline.cluster import connect, dashboard_link
from pipeline.train import _training_page_preload
with _training_page_preload(), connect("local", processes=False, dashboard_address="localhost:0",
                                       report=lambda line: None) as client:
    assert "distributed.dashboard.scheduler" not in sys.modules and "bokeh" not in sys.modules
    link = dashboard_link(client)
    assert urllib.request.urlopen(link).status == 200          # /status, connected at this request
    assert "distributed.dashboard.scheduler" in sys.modules
    root = link.rsplit("/", 1)[0]
    assert urllib.request.urlopen(root + "/").geturl().endswith("/status")   # the dashboard's own routes now
    assert b"training" in urllib.request.urlopen(root + "/workers").read()  # the page is in its navigation bar
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_local_worker_processes_import_the_task_modules_as_they_start():
    """Workers of the local process cluster import the pass tasks' modules before any task (pipeline.worker_setup)."""
    code = """
import sys, time
from distributed import Client, LocalCluster
from pipeline.cluster import connect
def loaded():
    return all(m in sys.modules for m in ("pipeline.passes", "solvers.consensus", "solvers.gauss_newton"))
with connect("local", n_workers=1, processes=True, dashboard_address=None, report=lambda line: None) as client:
    for _ in range(300):  # no task is ever submitted: only the preload's thread imports them
        if all(client.run(loaded).values()):
            break
        time.sleep(0.1)
    assert all(client.run(loaded).values())
with LocalCluster(n_workers=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
    time.sleep(2)
    assert not any(client.run(loaded).values())  # a worker without the preload has not imported them
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=180)


_GC_WATCH = r"""
import atexit, gc, json, sys
seen = []
gc.callbacks.append(lambda phase, info: seen.append(info["generation"]) if phase == "stop" else None)
atexit.register(lambda: sys.stderr.write("WATCH " + json.dumps({
    "collections": len(seen), "enabled": gc.isenabled(),
    "loaded": sorted({m.split(".")[0] for m in sys.modules} & {"dask", "distributed", "scipy", "torch", "matplotlib"})}) + "\n"))
"""


def test_a_command_imports_its_modules_without_garbage_collections_and_ingest_without_dask(tmp_path):
    """``python -m pipeline.<command>`` imports NumPy, pandas, Zarr (… Dask) with the cyclic collector off
    (pipeline.IMPORTS_WITHOUT_GC; ~200 collections, 20-50 ms a command, that found almost nothing) and turns it back
    on as its main starts (pipeline.cli.collect_again); ingest starts without Dask, SciPy, PyTorch or Matplotlib."""
    import json
    import os

    (tmp_path / "sitecustomize.py").write_text(_GC_WATCH)  # runs at interpreter start, before -m locates the module
    src = tmp_path / "t.csv"
    np.savetxt(src, np.c_[np.random.default_rng(0).normal(size=(30, 3)), np.arange(30) % 2], delimiter=",")
    r = subprocess.run([sys.executable, "-m", "pipeline.ingest", str(src), "--out", str(tmp_path / "d.zarr")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])})
    assert r.returncode == 0, r.stderr
    watch = json.loads(r.stderr.split("WATCH ", 1)[1])
    assert watch["enabled"] and watch["loaded"] == []
    assert watch["collections"] < 50  # ~200 with the collector on while pandas and Zarr import


def test_another_module_run_with_dash_m_that_imports_pipeline_keeps_its_garbage_collector(tmp_path):
    """Only ``python -m pipeline.<command>`` imports without the collector: a user's ``python -m their_package``
    whose import pulls in ``pipeline`` (while argv[0] is still "-m") keeps the collector on, as it started."""
    import os

    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("import pipeline\n")
    (package / "__main__.py").write_text("import gc, pipeline\nprint(gc.isenabled(), pipeline.IMPORTS_WITHOUT_GC)\n")
    r = subprocess.run([sys.executable, "-m", "userpkg"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False"]


def test_a_pipeline_module_without_a_main_run_with_dash_m_keeps_its_garbage_collector(tmp_path):
    """review17 L8: only the five commands (whose main turns the collector back on) import without it; ``python -m
    pipeline.memory`` (no main) ends with the collector on, and every command with a main is in the list."""
    import json
    import os

    import pipeline

    (tmp_path / "sitecustomize.py").write_text(_GC_WATCH)
    r = subprocess.run([sys.executable, "-m", "pipeline.memory"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stderr.split("WATCH ", 1)[1])["enabled"]
    mains = sorted(f"pipeline.{p.stem}" for p in (ROOT / "pipeline").glob("*.py")
                   if 'if __name__ == "__main__"' in p.read_text())
    assert sorted(pipeline.COMMANDS) == mains
