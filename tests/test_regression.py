"""Regression (``--task regression``): targets and R², the pipeline against the reference, resume, CLI, errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.training import train
from solvers import SOLVERS, make_solver
from solvers.config import TrainConfig
from solvers.errors import InputError
from solvers.reference import fit_in_memory
from solvers.tasks import Regression, r2_from_sums
from storage.data import write_data
from pipeline.model import load_network
from storage.runstore import RunStore
from tests.conftest import make_regression, quiet, run_module

ROOT = Path(__file__).resolve().parents[1]


def sk_r2(y, pred):
    from sklearn.metrics import r2_score

    return r2_score(y, pred)


# -- the task: targets and R² ------------------------------------------------------------
def test_targets_standardised_and_r2_sums_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.normal(50, 7, size=300)
    task = Regression(y.mean(), y.std())
    t = task.targets(y, np.float64)
    assert t.shape == (300, 1) and abs(t.mean()) < 1e-12 and t.std() == pytest.approx(1)
    z = t + rng.normal(0, 0.5, size=t.shape)  # an imperfect output layer, in standardised units
    halves = [task.score_parts(z[s], y[s]) for s in (slice(0, 120), slice(120, None))]  # summed over chunks
    sums = {k: halves[0][k] + halves[1][k] for k in halves[0]} | {"n": 300}
    assert task.score(sums) == pytest.approx(sk_r2(y, z[:, 0] * y.std() + y.mean()), rel=1e-12)
    # shifted sums give the same R²; a constant y gives scikit-learn's 1.0 / 0.0
    d = y - 1e6
    assert r2_from_sums(300, 12.0, d.sum(), (d * d).sum()) == pytest.approx(1 - 12.0 / ((y - y.mean()) ** 2).sum())
    assert r2_from_sums(4, 0.0, 8.0, 16.0) == 1.0 and r2_from_sums(4, 1.0, 8.0, 16.0) == 0.0


def test_config_task_and_loss():
    assert TrainConfig(task="regression").resolved_loss(0) == "squared"
    assert TrainConfig(task="regression", loss="squared").to_dict()["task"] == "regression"
    for loss in ("hinge", "ovr-hinge"):
        with pytest.raises(InputError, match=f"loss '{loss}' is for class labels; regression fits the squared"):
            TrainConfig(task="regression", loss=loss)
    with pytest.raises(InputError, match="task 'ordinal' is not one of"):
        TrainConfig(task="ordinal")
    assert TrainConfig.from_dict({"hidden": [3]}).task == "classification"  # run stores from before


def test_bad_regression_data_one_clear_error(monkeypatch):
    cfg = TrainConfig(hidden=(3,), iterations=1, task="regression")
    X = np.zeros((4, 2))
    with pytest.raises(InputError, match="row 2 has NaN"):
        fit_in_memory(X, np.array([0.0, 1.0, np.nan, 2.0]), cfg)
    with pytest.raises(InputError, match="regression needs numeric targets"):
        fit_in_memory(X, np.array(["a", "b", "c", "d"]), cfg)

    class ClassesOnly:  # a solver that does not declare regression (as a new one may not)
        tasks = ("classification",)

    monkeypatch.setitem(SOLVERS, "classes-only", ClassesOnly)
    with pytest.raises(InputError, match="the classes-only solver does not fit regression; use --solver admm or "
                                         ".*gauss-newton"):
        make_solver(TrainConfig(solver="classes-only", task="regression"), 2, x_mean=np.zeros(2),
                    x_scale=np.ones(2))


@pytest.mark.parametrize("solver", ["admm", "gauss-newton"])
def test_reference_fits_a_smooth_function(solver):
    X, y = make_regression()
    cfg = TrainConfig(hidden=(64,), iterations=15, seed=0, task="regression", solver=solver, validation_fraction=0)
    r = fit_in_memory(X[:3000], y[:3000], cfg, chunk_rows=1000, X_test=X[3000:], y_test=y[3000:])
    assert r.history[-1]["test_r2"] == pytest.approx(sk_r2(y[3000:], r.network.predict(X[3000:])))
    assert r.history[-1]["test_r2"] >= 0.9 and r.history[-1]["train_r2"] >= 0.9
    assert "train_accuracy" not in r.history[-1]


# -- the Dask pipeline -----------------------------------------------------------------
@pytest.mark.parametrize("solver,hidden,init", [("admm", (16,), "forward"), ("admm", (12, 8), "gaussian"),
                                                ("gauss-newton", (12, 8), "forward")])
def test_pipeline_regression_matches_reference(client, tmp_path, solver, hidden, init):
    import xarray as xr

    X, y = make_regression(n=3000)
    write_data(tmp_path / "d.zarr", X[:2500], y[:2500], chunk_rows=1024)
    write_data(tmp_path / "t.zarr", X[2500:], y[2500:])
    cfg = TrainConfig(hidden=hidden, iterations=4, warm_start=2, init=init, seed=5, task="regression", solver=solver,
                      validation_fraction=0)
    lines = []
    result = train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", test_data=tmp_path / "t.zarr",
                   config=cfg, chunk_rows=512, report=lines.append)
    ref = fit_in_memory(X[:2500], y[:2500], cfg, chunk_rows=512, X_test=X[2500:], y_test=y[2500:])
    for W, W_ref in zip(result.network.weights, ref.network.weights):
        np.testing.assert_allclose(W, W_ref, rtol=2e-4, atol=2e-5)
    for h, h_ref in zip(result.history, ref.history):
        assert h["train_r2"] == pytest.approx(h_ref["train_r2"], abs=1e-5)
        assert h["test_r2"] == pytest.approx(h_ref["test_r2"], abs=1e-5)
    # the target scaling comes from the statistics pass and is stored with the model
    m = RunStore.open(tmp_path / "r.zarr").model_arrays()
    assert "classes" not in m
    np.testing.assert_allclose(m["y_mean"], [y[:2500].mean()], rtol=1e-12)
    np.testing.assert_allclose(m["y_scale"], [y[:2500].std()], rtol=1e-9)
    net = load_network(tmp_path / "r.zarr")
    np.testing.assert_allclose(net.predict(X[2500:]), ref.network.predict(X[2500:]), rtol=1e-4)
    assert result.history[-1]["test_r2"] == pytest.approx(sk_r2(y[2500:], net.predict(X[2500:])), abs=1e-9)
    # metrics: R² in place of the accuracies; the report line has an R² column per score
    ds = xr.open_zarr(tmp_path / "r.zarr", group="metrics", consolidated=False)
    # the metrics stored are those recorded: R² in place of accuracy, no held-out chunks here
    assert {"train_r2", "test_r2"} <= set(ds) and not {"train_accuracy", "validation_r2"} & set(ds)
    np.testing.assert_allclose(ds.test_r2.values, [h["test_r2"] for h in result.history])
    assert "regression, y mean" in lines[0] and lines[2].split()[2:5] == ["train", "r2", "test"]
    last = lines[-1].split()
    assert float(last[2]) == pytest.approx(result.history[-1]["train_r2"], abs=1e-4)
    assert float(last[3]) == pytest.approx(result.history[-1]["test_r2"], abs=1e-4)


def test_regression_run_resumes_and_stops_early_on_r2(client, tmp_path):
    X, y = make_regression(n=3000)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=500)
    cfg = TrainConfig(hidden=(10,), iterations=5, task="regression", validation_fraction=0.2, patience=0)
    full = train(client, store=tmp_path / "full.zarr", data=tmp_path / "d.zarr", config=cfg, report=quiet)
    train(client, store=tmp_path / "part.zarr", data=tmp_path / "d.zarr", report=quiet,
          config=TrainConfig(**{**cfg.to_dict(), "iterations": 2}))
    resumed = train(client, store=tmp_path / "part.zarr", resume=True, iterations=5, report=quiet)
    assert [h["iteration"] for h in resumed.history] == [1, 2, 3, 4, 5]
    assert all("validation_r2" in h for h in resumed.history)
    for a, b in zip(full.network.weights, resumed.network.weights):
        np.testing.assert_array_equal(a, b)
    best = max(full.history, key=lambda h: h["validation_r2"])["iteration"]
    assert RunStore.open(tmp_path / "full.zarr").model_iteration() == best
    with pytest.raises(InputError, match="task: run has 'regression', given 'classification'"):
        train(client, store=tmp_path / "part.zarr", resume=True, overrides={"task": "classification"}, report=quiet)


def test_continuous_labels_hint_at_regression(client, tmp_path):
    X, y = make_regression(n=1500)
    write_data(tmp_path / "d.zarr", X, y)
    with pytest.raises(InputError, match="are the labels continuous\\? then pass --task regression"):
        train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", report=quiet,
              config=TrainConfig(hidden=(4,), iterations=1))


# -- the command-line tools --------------------------------------------------------------
def run(*args):
    return run_module(*args, "--workers", "1", "--dashboard-address", ":0")


def test_cli_train_resume_evaluate_predict_report(tmp_path):
    from pipeline.report import write_report

    X, y = make_regression(n=2000)
    write_data(tmp_path / "train.zarr", X[:1600], y[:1600], chunk_rows=400)
    write_data(tmp_path / "test.zarr", X[1600:], y[1600:])
    store = str(tmp_path / "run.zarr")
    r = run("pipeline.train", "--task", "regression", "--solver", "gauss-newton", "--data",
            str(tmp_path / "train.zarr"), "--test-data", str(tmp_path / "test.zarr"), "--store", store,
            "--hidden", "32", "--iterations", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "train r2   test r2" in r.stdout
    bad = run("pipeline.train", "--task", "regression", "--loss", "hinge", "--data", str(tmp_path / "train.zarr"),
              "--store", str(tmp_path / "other.zarr"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: loss 'hinge' is for class labels")
    r = run("pipeline.train", "--store", store, "--resume", "--iterations", "4", "--no-progress")
    assert r.returncode == 0, r.stderr
    lines = [l.split() for l in r.stdout.splitlines() if l.strip()[:1].isdigit()]
    assert [int(l[0]) for l in lines] == [3, 4]
    e = run("pipeline.evaluate", "--store", store, "--data", str(tmp_path / "test.zarr"), "--json")
    assert e.returncode == 0, e.stderr
    result = json.loads(e.stdout)
    net = load_network(store)
    pred = net.predict(X[1600:])
    assert result["r2"] == pytest.approx(sk_r2(y[1600:], pred)) and result["r2"] == pytest.approx(float(lines[-1][3]),
                                                                                                 abs=1e-4)
    assert result["rmse"] == pytest.approx(np.sqrt(np.mean((y[1600:] - pred) ** 2))) and result["r2"] > 0.8
    p = run("pipeline.predict", "--store", store, "--data", str(tmp_path / "test.zarr"), "--out",
            str(tmp_path / "pred.zarr"))
    assert p.returncode == 0, p.stderr
    np.testing.assert_allclose(zarr.open_group(tmp_path / "pred.zarr", mode="r")["prediction"][:], pred)
    report = write_report(store, tmp_path / "report")
    assert (tmp_path / "report" / "r2.png").stat().st_size > 0
    assert f"test R²        {result['r2']:.4f} (last)" in report["summary"]
