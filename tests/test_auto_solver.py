"""``--solver auto``: the hand-over from enough training rows per shard, else Gauss-Newton; chosen once, kept on resume."""
import numpy as np
import pytest

import solvers.config as config_module
from solvers.config import AUTO_HANDOVER_ROWS, HANDOVER, TrainConfig
from tests.conftest import make_data, quiet, run_module


def rows_for(per_shard: int, shards: int, fraction: float = 0.1) -> int:
    """Return the fewest rows n with ⌊n·(1 − fraction)⌋ // shards == per_shard."""
    n = int(per_shard * shards / (1 - fraction))
    while int(n * (1 - fraction)) // shards < per_shard:
        n += 1
    return n


@pytest.mark.parametrize("shards", [1, 2, 8])
def test_threshold_on_rows_per_shard(shards):
    """At the threshold of training rows per shard auto is the hand-over, one row per shard fewer Gauss-Newton."""
    config = TrainConfig()
    at = rows_for(AUTO_HANDOVER_ROWS, shards)
    chosen, record = config.choose_solver(at, shards)
    assert chosen.solver == HANDOVER and record["rows_per_shard"] == AUTO_HANDOVER_ROWS
    assert record == {**record, "given": "auto", "solver": HANDOVER, "shards": shards, "threshold": AUTO_HANDOVER_ROWS}
    below, record = config.choose_solver(rows_for(AUTO_HANDOVER_ROWS - 1, shards), shards)
    assert below.solver == "gauss-newton" and record["rows_per_shard"] == AUTO_HANDOVER_ROWS - 1
    assert "<" in record["why"] and ">=" not in record["why"]
    # the same rows over twice the shards: half as many per shard, Gauss-Newton
    assert config.choose_solver(at, 2 * shards)[0].solver == "gauss-newton"


def test_given_shards_and_held_out_rows_count():
    """--shards replaces the cluster's thread count; the held-out fraction's rows are not training rows."""
    n = rows_for(AUTO_HANDOVER_ROWS, 4)
    assert TrainConfig(shards=4).choose_solver(n, 1)[0].solver == HANDOVER
    assert TrainConfig(shards=4).choose_solver(n, 64)[0].solver == HANDOVER
    assert TrainConfig(shards=8).choose_solver(n, 1)[0].solver == "gauss-newton"
    n0 = rows_for(AUTO_HANDOVER_ROWS, 2, fraction=0.0)
    assert TrainConfig(validation_fraction=0.0).choose_solver(n0, 2)[0].solver == HANDOVER
    assert TrainConfig().choose_solver(n0, 2)[0].solver == "gauss-newton"  # 10 % of those rows held out


def test_workers_sharing_a_gil_and_gauss_newton_only_settings_keep_gauss_newton():
    """Workers of several threads (the consensus loops hold the GIL), and settings only Gauss-Newton takes."""
    big = 10 * rows_for(AUTO_HANDOVER_ROWS, 2)
    chosen, record = TrainConfig().choose_solver(big, 2, threads_per_worker=2)
    assert chosen.solver == "gauss-newton" and "GIL" in record["why"]
    for settings in ({"layers": "conv:4x3x3"}, {"task": "regression"}, {"loss": "hinge"}, {"loss": "ovr-hinge"},
                     {"sample_schedule": "grow"}, {"sample_schedule": "rotate"}, {"sample_schedule": "full"},
                     {"sample_start": 4096}):
        config = TrainConfig(**settings)
        assert config.solver == "gauss-newton", settings  # pinned when the settings are read
        assert config.choose_solver(big, 2) == (config, None)
    assert TrainConfig(loss="cross-entropy").choose_solver(big, 2)[0].solver == HANDOVER
    assert TrainConfig(init="glorot").choose_solver(big, 2)[0].solver == HANDOVER  # both phases take glorot


def test_a_given_solver_is_kept():
    for solver in ("gauss-newton", "consensus", "admm", HANDOVER):
        config = TrainConfig(solver=solver)
        assert config.choose_solver(10**9, 2) == (config, None)
        assert config.choose_solver(10, 2) == (config, None)


def test_resume_with_auto_keeps_the_stored_solver():
    """``--resume --solver auto`` is no change: auto was resolved when the run was created."""
    for stored in ("gauss-newton", HANDOVER):
        config, changed = TrainConfig.resumed(TrainConfig(solver=stored).to_dict(), {"solver": "auto"})
        assert config.solver == stored and not changed
    with pytest.raises(Exception, match="solver"):
        TrainConfig.resumed(TrainConfig(solver=HANDOVER).to_dict(), {"solver": "gauss-newton"})


def test_pipeline_records_the_choice_and_resume_keeps_it(tmp_path, client, monkeypatch):
    """A run created with auto above the threshold runs the hand-over, says why, and a resume keeps it.

    The threshold is lowered for small test data; the resume runs with it raised past the data, so a
    fresh choice would be Gauss-Newton: the run keeps its stored solver all the same.
    """
    from pipeline.training import train
    from storage.data import write_data
    from storage.runstore import RunStore

    X, y = make_data(n=3000, d=4)
    data = write_data(tmp_path / "d.zarr", X, y, chunk_rows=500).path
    monkeypatch.setattr(config_module, "AUTO_HANDOVER_ROWS", 1000)  # 2 shards of 1350 training rows each
    lines = []
    config = TrainConfig(hidden=(8,), iterations=2, local_epochs=1)
    out = train(client, store=tmp_path / "run.zarr", data=data, config=config, report=lines.append)
    run = RunStore.open(tmp_path / "run.zarr")
    assert out.solver.name == HANDOVER and run.attrs["config"]["solver"] == HANDOVER
    choice = run.attrs["solver_choice"]
    assert choice["rows_per_shard"] == 1350 and choice["shards"] == 2 and choice["solver"] == HANDOVER
    assert any(f"solver {HANDOVER} (auto: 1350 training rows per shard >= 1000 over 2 shards)" in ln for ln in lines)
    from pipeline.monitor import run_info  # the /training page's settings line says it too

    assert "(auto: 1350 training rows per shard >= 1000 over 2 shards)" in run_info(run)["settings"]
    monkeypatch.setattr(config_module, "AUTO_HANDOVER_ROWS", 10**6)
    out = train(client, store=tmp_path / "run.zarr", resume=True, overrides={"solver": "auto"}, iterations=3,
                report=quiet)
    assert out.solver.name == HANDOVER and len(out.history) == 3
    assert RunStore.open(tmp_path / "run.zarr").attrs["solver_choice"] == choice
    # a new run on the same data now falls below the threshold: Gauss-Newton, and it says so
    lines = []
    out = train(client, store=tmp_path / "gn.zarr", data=data, config=config, report=lines.append)
    assert out.solver.name == "gauss-newton"
    assert RunStore.open(tmp_path / "gn.zarr").attrs["solver_choice"]["solver"] == "gauss-newton"
    assert any("solver gauss-newton (auto: 1350 training rows per shard < 1000000 over 2 shards)" in ln for ln in lines)


def test_estimator_reports_the_solver(client, monkeypatch):
    """``solver_`` is what auto chose: the hand-over on the Dask client above the threshold, else Gauss-Newton."""
    from pipeline.estimator import ADMMClassifier

    X, y = make_data(n=3000, d=4)
    monkeypatch.setattr(config_module, "AUTO_HANDOVER_ROWS", 1000)
    clf = ADMMClassifier(hidden_layer_sizes=8, max_iter=1, local_epochs=1, client=client).fit(X, y)
    assert clf.solver_ == HANDOVER and set(np.unique(clf.predict(X))) <= set(np.unique(y))
    # in-memory arrays without a client: the fit's own worker threads share one GIL, so Gauss-Newton
    assert ADMMClassifier(hidden_layer_sizes=8, max_iter=1).fit(X, y).solver_ == "gauss-newton"
    assert ADMMClassifier(hidden_layer_sizes=8, max_iter=1, solver="gauss-newton", client=client).fit(X, y).solver_ \
        == "gauss-newton"


def test_cli_says_what_auto_chose(tmp_path):
    """``python -m pipeline.train`` with the default solver names the choice and the rule in its run line."""
    from storage.data import write_data

    X, y = make_data(n=1000, d=4)
    write_data(tmp_path / "d.zarr", X, y)
    out = run_module("pipeline.train", "--data", tmp_path / "d.zarr", "--store", tmp_path / "run.zarr",
                     "--hidden", "8", "--iterations", "1", "--no-progress", "--dashboard-address", ":0")
    assert out.returncode == 0, out.stderr
    assert "solver gauss-newton (auto: " in out.stdout and f" < {AUTO_HANDOVER_ROWS} over " in out.stdout, out.stdout


def test_workers_in_one_process_share_a_gil():
    """Workers that run in one process (an in-process cluster, training in memory) keep Gauss-Newton, and say why."""
    big = 10 * rows_for(AUTO_HANDOVER_ROWS, 2)
    chosen, record = TrainConfig().choose_solver(big, 2, shared_gil=True)
    assert chosen.solver == "gauss-newton" and record["shared_gil"] is True
    assert record["why"].endswith(", the workers run in one process and share its GIL")
    assert TrainConfig().choose_solver(big, 2)[1]["shared_gil"] is False


def test_in_process_cluster_of_one_thread_workers_and_fit_in_memory_choose_gauss_newton(tmp_path, client, monkeypatch):
    """``LocalCluster(processes=False, n_workers=2, threads_per_worker=1)``: 1 thread per worker, one GIL.

    Above the (lowered) threshold the process cluster of the ``client`` fixture runs the hand-over; the
    in-process cluster and :func:`fit_in_memory` on the same rows both resolve auto to Gauss-Newton.
    """
    from distributed import Client, LocalCluster

    from pipeline.training import _shares_gil, train
    from solvers.reference import fit_in_memory
    from storage.data import write_data
    from storage.runstore import RunStore

    X, y = make_data(n=3000, d=4)
    data = write_data(tmp_path / "d.zarr", X, y, chunk_rows=500).path
    monkeypatch.setattr(config_module, "AUTO_HANDOVER_ROWS", 1000)  # 2 shards of 1350 training rows each
    config = TrainConfig(hidden=(8,), iterations=1, local_epochs=1)
    assert not _shares_gil(client)  # worker processes
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as threads:
        assert threads.nthreads() and set(threads.nthreads().values()) == {1} and _shares_gil(threads)
        lines = []
        out = train(threads, store=tmp_path / "run.zarr", data=data, config=config, report=lines.append)
    assert out.solver.name == "gauss-newton"
    choice = RunStore.open(tmp_path / "run.zarr").attrs["solver_choice"]
    assert choice["solver"] == "gauss-newton" and choice["shared_gil"] and choice["rows_per_shard"] == 1350
    assert any("(auto: 1350 training rows per shard >= 1000 over 2 shards, the workers run in one process and share "
               "its GIL)" in ln for ln in lines), lines
    assert fit_in_memory(X, y, config).solver.name == out.solver.name
