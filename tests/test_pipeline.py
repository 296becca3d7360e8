"""The Dask pipeline equals the in-memory reference on the same seed and chunking."""
import numpy as np
import pytest

from pipeline.training import train
from solvers.config import TrainConfig
from solvers.reference import fit_in_memory
from storage.data import write_data
from pipeline.model import load_network
from storage.runstore import RunStore
from tests.conftest import make_data, quiet


@pytest.mark.parametrize("hidden,n_classes,init", [
    ((16,), 2, "forward"),
    ((12, 8), 3, "forward"),
    ((10, 8, 6), 2, "gaussian"),
])
def test_pipeline_matches_reference(client, tmp_path, hidden, n_classes, init):
    X, y = make_data(n_classes=n_classes)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=1024)
    cfg = TrainConfig(solver="admm", hidden=hidden, iterations=4, warm_start=2, init=init, seed=5)
    result = train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=cfg,
                   chunk_rows=512, report=quiet)
    ref = fit_in_memory(X, y, cfg, chunk_rows=512)
    for W, W_ref in zip(result.network.weights, ref.network.weights):
        np.testing.assert_allclose(W, W_ref, rtol=2e-4, atol=2e-5)
    for h, h_ref in zip(result.history, ref.history):
        assert h["train_accuracy"] == pytest.approx(h_ref["train_accuracy"], abs=2e-3)
        assert h["residual"] == pytest.approx(h_ref["residual"], rel=1e-4)
    # the committed model is the one returned, with the link of its logistic output refit (solvers/readout.py)
    disk = load_network(tmp_path / "r.zarr")
    for W, W_disk in zip(result.network.weights, disk.weights):
        np.testing.assert_array_equal(W, W_disk)
    assert disk.link == result.network.link == ref.network.link == "logistic"
    np.testing.assert_allclose(disk.predict_proba(X[:50]), ref.network.predict_proba(X[:50]), rtol=1e-3, atol=1e-4)


def test_result_independent_of_worker_count(client, tmp_path):
    from distributed import Client, LocalCluster

    X, y = make_data(n=2000)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=256)
    cfg = TrainConfig(solver="admm", hidden=(12,), iterations=3)
    two = train(client, store=tmp_path / "a.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=256,
                report=quiet)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as c1, \
            Client(c1) as one_worker:
        one = train(one_worker, store=tmp_path / "b.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=256,
                    report=quiet)
    assert two.store.chunk_rows == 256  # several chunks, spread over both workers
    for a, b in zip(two.network.weights, one.network.weights):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_test_accuracy_and_metrics_recorded(client, tmp_path):
    import xarray as xr

    X, y = make_data(n=2500)
    write_data(tmp_path / "d.zarr", X[:2000], y[:2000])
    write_data(tmp_path / "t.zarr", X[2000:], y[2000:])
    r = train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", test_data=tmp_path / "t.zarr",
              config=TrainConfig(solver="admm", hidden=(20,), iterations=3), report=quiet)
    ds = xr.open_zarr(tmp_path / "r.zarr", group="metrics", consolidated=False)
    assert list(ds.iteration.values) == [1, 2, 3]
    np.testing.assert_allclose(ds.test_accuracy.values, [h["test_accuracy"] for h in r.history])
    # the model is the best held-out iteration's (early stopping is on by default): its recorded test accuracy
    model = list(ds.iteration.values).index(r.best_iteration)
    assert ds.test_accuracy.values[model] == pytest.approx(r.network.score(X[2000:], y[2000:]))


def test_resume_extends_a_finished_run(client, tmp_path):
    X, y = make_data(n=1500)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=512)
    cfg = TrainConfig(solver="admm", hidden=(10,), iterations=5)
    full = train(client, store=tmp_path / "full.zarr", data=tmp_path / "d.zarr", config=cfg, report=quiet)
    short = TrainConfig(solver="admm", hidden=(10,), iterations=2)
    train(client, store=tmp_path / "part.zarr", data=tmp_path / "d.zarr", config=short, report=quiet)
    resumed = train(client, store=tmp_path / "part.zarr", resume=True, iterations=5, report=quiet)
    assert [h["iteration"] for h in resumed.history] == [1, 2, 3, 4, 5]
    assert resumed.history[-1]["readout"] == "logistic"  # the logistic refit's carry resumes bitwise too
    for a, b in zip(full.network.weights, resumed.network.weights):
        np.testing.assert_array_equal(a, b)
    assert RunStore.open(tmp_path / "part.zarr").committed_iteration() == 5


def test_out_of_core_with_memory_limited_workers(tmp_path):
    """Data plus state (≈ 450 MB) exceed the 2 × 300 MB workers' limits; the run completes."""
    from distributed import Client, LocalCluster

    rng = np.random.default_rng(0)
    n, d = 200_000, 32
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=8192)
    del X
    cfg = TrainConfig(solver="admm", hidden=(256,), iterations=2)
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="300MB", dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        r = train(c, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=8192, report=quiet)
        state_bytes = 2 * n * (256 + 1 + 1) * 4
        assert state_bytes + n * d * 4 > 300e6
        assert len(r.history) == 2 and r.history[-1]["train_accuracy"] > 0.6


def test_resume_with_other_gamma_beta_and_refusals(client, tmp_path):
    from solvers.errors import InputError

    X, y = make_data(n=1500)
    write_data(tmp_path / "d.zarr", X, y)
    write_data(tmp_path / "other.zarr", X[::-1].copy(), y[::-1].copy())
    train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", report=quiet,
          config=TrainConfig(solver="admm", hidden=(10,), iterations=2))
    with pytest.raises(InputError, match=r"hidden: run has \(10,\), given \(20,\)"):
        train(client, store=tmp_path / "r.zarr", resume=True, overrides={"hidden": [20]}, report=quiet)
    def tree():
        return sorted((str(p), p.read_bytes()) for p in (tmp_path / "r.zarr").rglob("*") if p.is_file())

    before = tree()
    with pytest.raises(InputError, match="is not the data set"):  # with a changed setting: still nothing written
        train(client, store=tmp_path / "r.zarr", data=tmp_path / "other.zarr", resume=True, report=quiet,
              overrides={"gamma": 50.0, "iterations": 3})
    assert tree() == before
    lines = []
    r = train(client, store=tmp_path / "r.zarr", resume=True, overrides={"gamma": 50.0, "iterations": 3},
              report=lines.append)
    assert any("changed gamma=50.0, iterations=3" in line for line in lines)
    assert RunStore.open(tmp_path / "r.zarr").attrs["config"]["gamma"] == 50.0
    assert [h["iteration"] for h in r.history] == [1, 2, 3]


@pytest.mark.parametrize("data_rows,n,width", [(262144, 11_000_000, 302), (8192, 10_000_000, 302),
                                               (262144, 10_000_000, 3000), (1000, 5000, 20)])
def test_default_state_chunks_read_whole_data_chunks(data_rows, n, width):
    from types import SimpleNamespace

    from pipeline.memory import default_chunk_rows

    d = 28
    rows = default_chunk_rows(SimpleNamespace(chunk_rows=data_rows, n_samples=n, n_features=d), width)
    row_bytes = (width + d) * 4
    aligned = rows % data_rows == 0 or (data_rows % rows == 0 and data_rows * row_bytes > 512 * 2**20)
    assert aligned or rows == n
    assert rows * row_bytes <= 512 * 2**20 or rows == n
