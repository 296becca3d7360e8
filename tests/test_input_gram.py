"""The input Gram of chunks a growing sample has not reached, summed ahead while the in-process workers idle
(solvers/input_gram.py, pipeline/passes.py's _Ahead): the iterations are bitwise those summed in pass B."""
import threading

import numpy as np
import pytest

from pipeline import passes
from pipeline.passes import DaskRunner
from solvers import input_gram, make_solver
from solvers.config import TrainConfig
from solvers.driver import model_from_moments
from solvers.loop import initialize, iterate
from solvers.losses import encode_labels
from solvers.stats import moment_sums
from solvers.validation import RowSplit
from storage.data import write_data
from tests.conftest import in_memory_and_store, make_data


@pytest.mark.parametrize("loss, settle", [("squared", True), ("cross-entropy", False)])
def test_grams_summed_ahead_give_the_in_memory_runners_iterations_bitwise(tmp_path, monkeypatch, loss, settle):
    """12 chunks, a first sample of 3 growing to all: with ``settle`` every pass first waits until the Grams ahead are
    kept, so each grown pass B takes them (hits); without, the thread races the passes. Both agree with the in-memory
    runner (no thread) bitwise, and the thread ends with the run's caches."""
    from distributed import Client, LocalCluster

    monkeypatch.setattr(passes, "AHEAD", True)  # off by default (it did not pay on a quiet machine)
    monkeypatch.setattr(passes, "AHEAD_SETTLE", settle)
    X, y = make_data(n=2400, d=30, n_classes=3)
    config = TrainConfig(solver="gauss-newton", hidden=(8,), iterations=4, loss=loss, sample_start=500)
    mem, solver_d, run, chunks, split = in_memory_and_store(tmp_path, X, y, config, 200, RowSplit(0.2, seed=3))
    taken = input_gram.KEPT.taken
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        dsk = DaskRunner(c, solver_d, tmp_path / "d.zarr", run.path, chunks, split=split)
        a, b = initialize(mem.solver, mem), initialize(solver_d, dsk)
        rows = []
        for (sa, ma), (sb, mb) in zip(iterate(mem.solver, mem, a, 4), iterate(solver_d, dsk, b, 4)):
            for Wa, Wb in zip(sa.weights, sb.weights):
                assert Wa.tobytes() == Wb.tobytes()
            assert ma == mb
            rows.append(ma["sample_rows"])
        ahead = dsk._ahead
        assert ahead is not None and rows[0] < rows[-1]  # the sample grew
        if settle:
            assert ahead.done >= 9 and input_gram.KEPT.taken - taken == ahead.done  # every Gram ahead served a pass B
        c.run(passes.clear_data_cache)
    assert not ahead.thread.is_alive() and input_gram.KEPT.items == {}


def test_a_kept_gram_is_the_tiles_grams_added_in_order(monkeypatch):
    """sum_ahead keeps what pass B's packed vector adds tile by tile (several tiles), and pass B's sums equal bitwise."""
    from solvers.gauss_newton import CurvatureParams, _rows_key

    X, y = make_data(n=700, d=12, n_classes=3)
    config = TrainConfig(solver="gauss-newton", hidden=(6,), iterations=1)
    shift = X[0].astype(np.float64)
    model = model_from_moments(config, 12, moment_sums(X, shift), shift, np.unique(y))
    solver = make_solver(config, 12, **model)
    monkeypatch.setattr(solver, "tile_rows", 128)  # 6 tiles
    weights = [np.asarray(W, solver.dtype) for W in solver.initial_hidden()]
    weights.append(np.zeros((3, 7), solver.dtype))
    params = CurvatureParams(tuple(weights), True, (0,))
    yi = encode_labels(y, model["classes"])
    plain = solver.curvature_chunk(X, yi, None, 0, params)[1]
    assert input_gram.sum_ahead(solver, X, _rows_key(X, 0, False)) and input_gram.KEPT.has(
        input_gram._key(solver, _rows_key(X, 0, False)), solver.run_token)
    took = input_gram.KEPT.taken
    ahead = solver.curvature_chunk(X, yi, None, 0, params)[1]
    assert input_gram.KEPT.taken == took + 1 and ahead.tobytes() == plain.tobytes()
    assert solver.curvature_chunk(X, yi, None, 0, params)[1].tobytes() == plain.tobytes()  # taken once: summed again
    stopped = input_gram.sum_ahead(solver, X[:600], _rows_key(X[:600], 0, False), between=iter([True, True, False]).__next__)
    assert not stopped and not input_gram.KEPT.has(input_gram._key(solver, _rows_key(X[:600], 0, False)), solver.run_token)
    input_gram.KEPT.clear()


def test_a_run_whose_cluster_is_gone_stops_its_thread_and_forgets_its_grams(monkeypatch):
    """review16 R2: the thread and KEPT were stopped and cleared only by clear_data_cache through client.run, which a
    cluster already gone (a killed worker, a closed client) never runs: the thread went on reading the data store
    after the run. _train's end now stops the runner's thread in this process. Deterministic: a sum that checks
    _between between its tiles, as the real one, and never ends on its own."""
    import time
    import types

    from pipeline.training import _forget_data

    def summing(self, i):
        while self._between(i):
            time.sleep(0.01)

    class GoneClient:
        def run(self, fn):
            raise RuntimeError("the cluster is gone")

    monkeypatch.setattr(passes._Ahead, "_sum", summing)
    solver = types.SimpleNamespace(run_token="r16")
    runner = DaskRunner(GoneClient(), solver, "d.zarr", "r.zarr", [(0, 10), (10, 20)])
    runner._ahead = ahead = passes._Ahead(runner, [0, 1])
    input_gram.KEPT.put("k", np.zeros(4), "r16")
    try:
        _forget_data(runner.client, runner)
        assert not ahead.thread.is_alive() and not input_gram.KEPT.has("k", "r16")
    finally:
        ahead.stop()
        input_gram.KEPT.clear()


def _gauss_newton(tmp_path, n=700, d=12, tile_rows=128):
    from solvers.gauss_newton import _rows_key

    X, y = make_data(n=n, d=d, n_classes=3)
    config = TrainConfig(solver="gauss-newton", hidden=(6,), iterations=1)
    shift = X[0].astype(np.float64)
    solver = make_solver(config, d, **model_from_moments(config, d, moment_sums(X, shift), shift, np.unique(y)))
    solver.tile_rows = tile_rows
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=350)
    return solver, X, lambda a, b: input_gram._key(solver, _rows_key(X[a:b], a, False))


def test_a_sum_a_pass_read_during_its_last_tile_is_not_kept(tmp_path):
    """review16 R3: between() ran before each tile but not before the put: a pass that began during the last tile
    and read the chunk (its take missed: pass B summed the Gram itself) left the sum kept, holding budget until the
    run ended. sum_ahead now asks between() once more before it keeps the sum."""
    from solvers.gauss_newton import _rows_key

    solver, X, key = _gauss_newton(tmp_path)
    rows = _rows_key(X[:600], 0, False)  # 5 tiles of 128 rows
    try:
        assert not input_gram.sum_ahead(solver, X[:600], rows, between=iter([True] * 5 + [False]).__next__)
        assert not input_gram.KEPT.has(key(0, 600), solver.run_token)
        assert input_gram.sum_ahead(solver, X[:600], rows, between=iter([True] * 6).__next__)
        assert input_gram.KEPT.has(key(0, 600), solver.run_token)
    finally:
        input_gram.KEPT.clear()


def test_a_sum_kept_as_a_pass_read_its_chunk_is_dropped(tmp_path, monkeypatch):
    """review16 R3, the rest of the window: a pass that begins between sum_ahead's last between() and its put, and
    reads the chunk, misses it; the thread then drops the sum once the pass ended. Deterministic: the put runs the
    pass around itself."""
    solver, X, key = _gauss_newton(tmp_path)
    runner = DaskRunner(None, solver, tmp_path / "d.zarr", tmp_path / "r.zarr", [(0, 350), (350, 700)])
    put, box = input_gram.KEPT.put, {}

    def put_in_a_pass(k, value, owner):
        box["ahead"].pass_begins()  # the pass began; its pass B's take missed (nothing kept yet)
        put(k, value, owner)
        box["kept"] = input_gram.KEPT.has(k, owner)
        box["ahead"].pass_ends({1})  # it read chunk 1 as a training chunk

    monkeypatch.setattr(input_gram.KEPT, "put", put_in_a_pass)
    passes_between = passes._Ahead._between
    started = threading.Event()
    monkeypatch.setattr(passes._Ahead, "_between", lambda self, i: started.wait(10) and passes_between(self, i))
    try:
        box["ahead"] = ahead = passes._Ahead(runner, [1])
        started.set()
        ahead.thread.join(10)
        assert not ahead.thread.is_alive() and box["kept"]
        assert not input_gram.KEPT.has(key(350, 700), solver.run_token) and ahead.done == 0
    finally:
        box.get("ahead") and box["ahead"].stop()
        input_gram.KEPT.clear()
