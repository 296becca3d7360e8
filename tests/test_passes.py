"""pipeline/passes.py on its own: the Dask runner against the in-memory one, the tree sums, and the scores,
predictions and statistics computed as Dask collections over a data store."""
import dask
import numpy as np
import pytest

from pipeline.passes import DaskRunner, bounds, chunk_sums, data_statistics, predictions, score_sums_graph, tree
from solvers.config import TrainConfig
from solvers.errors import InputError
from solvers.loop import initialize, iterate
from solvers.reference import fit_in_memory
from solvers.stats import moment_sums
from solvers.tasks import score_from_sums, score_sums
from solvers.validation import ChunkSplit, RowSplit
from storage.data import write_data
from tests.conftest import in_memory_and_store, make_data, make_regression

ROWS = 250  # the data store's chunk rows


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A classification and a regression data store (2000 rows, chunks of 250) and a network trained on each."""
    d = tmp_path_factory.mktemp("passes")
    out = {}
    for task, (X, y) in {"classification": make_data(n=2000, d=5, n_classes=3),
                         "regression": make_regression(n=2000, d=4)}.items():
        write_data(d / f"{task}.zarr", X, y, chunk_rows=ROWS)
        net = fit_in_memory(X, y, TrainConfig(hidden=(6,), iterations=2, task=task)).network
        out[task] = (d / f"{task}.zarr", X, y, net)
    return out


def test_tree_sums_split_every_at_a_time_in_order(client):
    values = [np.array([v]) for v in np.random.default_rng(0).normal(size=19) * 10.0 ** np.arange(19)]
    got = client.compute(tree([dask.delayed(v) for v in values], split_every=4), sync=True)
    # groups of 4 in order, then groups of 4 of those: the order the sums are added in is fixed
    level = [np.sum(values[i:i + 4], axis=0) for i in range(0, 19, 4)]
    level = [np.sum(level[i:i + 4], axis=0) for i in range(0, len(level), 4)]
    assert got.tobytes() == np.sum(level, axis=0).tobytes()
    assert client.compute(tree([dask.delayed(values[0])]), sync=True).tobytes() == values[0].tobytes()


def test_the_sum_of_parts_is_np_sums_bitwise():
    from pipeline.passes import _sum

    rng = np.random.default_rng(3)
    for n in range(2, 11):
        for shape in [(1,), (2,), (5,), (3, 1), (1, 4), (17, 3), (40, 9), (2, 3, 4)]:
            for dtype in (np.float64, np.float32):
                parts = [(rng.normal(size=shape) * 10.0 ** rng.integers(-8, 8, size=shape)).astype(dtype) for _ in range(n)]
                for p in parts:  # signed zeros and infinities: the order and the start value show in them
                    p.flat[0] = -0.0 if rng.random() < 0.7 else p.flat[0]
                    p.flat[-1] = rng.choice([np.inf, -np.inf]) if rng.random() < 0.1 else p.flat[-1]
                parts[-1] = np.asfortranarray(parts[-1])
                with np.errstate(invalid="ignore"):
                    want, got = np.sum(parts, axis=0), _sum(*parts)
                assert got.dtype == want.dtype and got.flags.c_contiguous and got.tobytes() == want.tobytes()
    ints = [np.arange(3, dtype=np.int32)] * 3  # not floats: np.sum's own (wider) result
    assert _sum(*ints).dtype == np.sum(ints, axis=0).dtype and _sum(None, 2.0, 3.0) == 5.0
    pair = _sum((np.ones(2), None), (np.ones(2), np.ones(1)))
    assert pair[0].tolist() == [2.0, 2.0] and pair[1].tolist() == [1.0]


@pytest.mark.parametrize("n_chunks", [1, 8, 9, 64, 70])
def test_chunk_sums_equal_the_tree_of_the_chunk_sums_bitwise(client, tmp_path, n_chunks):
    """The Dask bag reduction adds the chunks' sums in the order :func:`tree` does (results stay bitwise)."""
    from pipeline.passes import _moments_chunk

    rng = np.random.default_rng(n_chunks)
    X = (rng.normal(size=(n_chunks * 30, 3)) * 10.0 ** rng.integers(-6, 6, size=(n_chunks * 30, 1))).astype(np.float32)
    write_data(tmp_path / "d.zarr", X, np.arange(len(X)) % 2, chunk_rows=30)
    chunks, path, shift = bounds(len(X), 30), str(tmp_path / "d.zarr"), np.zeros(4)
    got = client.compute(chunk_sums(_moments_chunk, path, chunks, shift, True), sync=True)
    want = client.compute(tree([dask.delayed(_moments_chunk)(path, a, b, shift, True) for a, b in chunks]), sync=True)
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_scores_equal_the_networks_on_the_same_rows(client, stores, task):
    path, X, y, net = stores[task]
    shift = None if task == "classification" else float(net.y_mean[0])
    sums = client.compute(score_sums_graph(net, path, bounds(2000, ROWS)), sync=True)
    by_chunk = np.concatenate([net.predict(X[a:b]) for a, b in bounds(2000, ROWS)])  # float32 sums depend on the batch
    want = score_sums(by_chunk, y, shift)
    np.testing.assert_allclose(sums, want, rtol=1e-12, atol=1e-8)  # Σ(y − ȳ) is ~0
    assert score_from_sums(sums) == pytest.approx(net.score(X, y), rel=1e-6)
    # a choice of blocks, in another chunking: the rows of those chunks only, in the order given
    rows, blocks = 300, [5, 0, 3]
    some = client.compute(score_sums_graph(net, path, [bounds(2000, rows)[i] for i in blocks]), sync=True)
    keep = np.concatenate([np.arange(a, b) for a, b in (bounds(2000, rows)[i] for i in blocks)])
    pred = np.concatenate([net.predict(X[a:b]) for a, b in (bounds(2000, rows)[i] for i in blocks)])
    np.testing.assert_allclose(some, score_sums(pred, y[keep], shift), rtol=1e-12, atol=1e-8)


def test_evaluation_metrics_of_a_classifier(client, stores):
    from solvers.scores import classification_sums, metrics_from_sums, probabilities

    path, X, y, net = stores["classification"]
    sums = client.compute(score_sums_graph(net, path, bounds(2000, ROWS), metrics=True), sync=True)
    z = net.decision_function(X)
    want = metrics_from_sums(classification_sums(probabilities(z), np.searchsorted(net.classes, y)))
    got = metrics_from_sums(sums)
    assert got["n_samples"] == 2000 and got["n_correct"] == want["n_correct"]
    assert got["log_loss"] == pytest.approx(want["log_loss"], rel=1e-12)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_predictions_are_the_networks_block_by_block(client, stores, task):
    path, X, _, net = stores[task]
    pred = predictions(net, path, ROWS)
    assert pred.chunks == ((ROWS,) * 8,) and pred.dtype == (np.float64 if task == "regression" else net.classes.dtype)
    got = client.compute(pred, sync=True)
    want = np.concatenate([net.predict(X[a:b]) for a, b in bounds(2000, ROWS)])
    assert got.tobytes() == want.tobytes()


def test_statistics_pass_equals_the_chunk_moments(client, stores):
    path, X, y, _ = stores["classification"]
    shift = X[0].astype(np.float64)
    sums, labels = data_statistics(client, path, 2000, ROWS, shift)
    want = np.sum([moment_sums(X[a:b], shift) for a, b in bounds(2000, ROWS)], axis=0)
    assert sums.tobytes() == want.tobytes()
    assert labels.tolist() == [0, 1, 2]
    path, X, y, _ = stores["regression"]
    shift = np.append(X[0], y[0]).astype(np.float64)
    sums, labels = data_statistics(client, path, 2000, ROWS, shift, labels=False)
    Xy = np.column_stack([X, y])
    assert labels is None
    assert sums.tobytes() == np.sum([moment_sums(Xy[a:b], shift) for a, b in bounds(2000, ROWS)], axis=0).tobytes()


def test_a_deleted_chunk_is_one_error_naming_its_rows(client, tmp_path, stores):
    import shutil

    X, y = make_data(n=1000, d=5, n_classes=3)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=ROWS)
    chunk = tmp_path / "d.zarr" / "X" / "c" / "2" / "0"
    assert chunk.exists()
    chunk.unlink()
    net = stores["classification"][3]
    for graph in (score_sums_graph(net, tmp_path / "d.zarr", bounds(1000, ROWS)), predictions(net, tmp_path / "d.zarr", ROWS)):
        with pytest.raises(InputError, match=r"rows 500-749 of 'X' are missing or hold NaN"):
            client.compute(graph, sync=True)
    shutil.rmtree(tmp_path / "d.zarr")


def _state_reads():
    """Return a worker's (hits, misses) of its kept state chunks (:mod:`storage.state_io`)."""
    from storage.state_io import STATE

    return STATE.hits, STATE.misses


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("solver", ["admm", "gauss-newton"])
def test_dask_runner_equals_the_in_memory_runner(client, tmp_path, solver, legacy):
    """Up to 8 training chunks both runners add the chunk sums in the same order: the iterations agree bitwise.

    ADMM keeps per-sample state (the run store's two slots); Gauss-Newton scores the held-out rows in its passes.
    Both runners see every chunk's training rows and its held-out rows (a seeded 30 %), the same ones;
    ``legacy``: whole chunks held out, as run stores of earlier versions recorded.
    """
    X, y = make_data(n=1400, d=5)
    config = TrainConfig(solver=solver, hidden=(6,), iterations=2)
    split = (lambda chunks: ChunkSplit(frozenset(chunks[5:]))) if legacy else RowSplit(0.3, seed=3)
    mem, solver_d, run, chunks, split = in_memory_and_store(tmp_path, X, y, config, 200, split)
    dsk = DaskRunner(client, solver_d, tmp_path / "d.zarr", run.path, chunks, split=split)
    reads_before = client.run(_state_reads)
    a, b = initialize(mem.solver, mem), initialize(solver_d, dsk)
    for (sa, ma), (sb, mb) in zip(iterate(mem.solver, mem, a, 2), iterate(solver_d, dsk, b, 2)):
        for Wa, Wb in zip(sa.weights, sb.weights):
            assert Wa.tobytes() == Wb.tobytes()
        assert ma == mb
    if solver == "admm" and not legacy:  # the per-sample state: the training rows' as in memory, zeros in the held-out rows
        import zarr

        from storage.runstore import slot_of, state_path
        held, trained = split.mask(0, 1400), []
        for name, value in mem.state_of(2).items():
            stored = zarr.open_array(store=str(run.path), path=state_path(slot_of(2), name), mode="r")[:]
            assert stored.tobytes() == value.tobytes() and not stored[held].any()
            trained.append(stored[~held].all(axis=1).mean())
        assert max(trained) > 0.5  # e.g. z_1: nonzero in the training rows
    if solver == "admm":  # each chunk runs on the worker that wrote (and kept) its state: every state read is a hit
        reads = {w: np.subtract(after, reads_before[w]) for w, after in client.run(_state_reads).items()}
        assert sum(r[1] for r in reads.values()) == 0 and sum(r[0] for r in reads.values()) > 0, reads
    rates = dsk.take_pass_rates()
    assert rates["passes"] >= 2 and rates["rows_per_second"] > 0 and dsk.take_pass_rates() == {}


@pytest.mark.parametrize("solver", ["admm", "gauss-newton"])
def test_an_in_process_runner_groups_chunks_by_thread_and_equals_the_in_memory_runner(tmp_path, solver):
    """On an in-process cluster a pass of more chunks than worker threads is one task per thread (fewer round trips);
    the results come back in the chunks' order, so the iterations still agree with the in-memory runner bitwise."""
    from distributed import Client, LocalCluster, get_task_stream

    X, y = make_data(n=1400, d=5)
    config = TrainConfig(solver=solver, hidden=(6,), iterations=2)
    mem, solver_d, run, chunks, split = in_memory_and_store(tmp_path, X, y, config, 200, RowSplit(0.3, seed=3))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as c, get_task_stream(c) as stream:
        dsk = DaskRunner(c, solver_d, tmp_path / "d.zarr", run.path, chunks, split=split)
        passes, run_pass = [], dsk.run
        dsk.run = lambda *args, **kwargs: passes.append(1) or run_pass(*args, **kwargs)
        a, b = initialize(mem.solver, mem), initialize(solver_d, dsk)
        for (sa, ma), (sb, mb) in zip(iterate(mem.solver, mem, a, 2), iterate(solver_d, dsk, b, 2)):
            for Wa, Wb in zip(sa.weights, sb.weights):
                assert Wa.tobytes() == Wb.tobytes()
            assert ma == mb
    tasks = [t for t in stream.data if str(t["key"]).startswith("chunk_task")]
    assert len(passes) >= 2 and len(tasks) == 2 * len(passes)  # 7 chunks a pass, as two tasks (one per thread)


def test_a_pass_on_an_in_process_cluster_takes_chunks_from_a_shared_queue_and_runs_a_lost_one_again(monkeypatch):
    """One task per worker thread takes chunks one at a time, those of the most rows first (unequal chunks spread as
    a pool's do); the results come back in the specs' order; a chunk taken by a task that failed and was retried runs
    again on its own."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from pipeline import passes

    where, order = {}, []

    def fake_task(bundle, seconds, i, *rest):
        order.append(i)
        time.sleep(seconds)
        where[i] = threading.current_thread().name
        return 10 * i

    class Client:  # each mapped task in its own thread, as an in-process cluster's worker threads run them
        lose = True

        def map(self, fn, *columns, key=None, pure=None, retries=None, **place):
            if fn is passes.claimed_chunk_tasks and Client.lose:  # a task failed after taking a chunk, then was retried
                Client.lose = False
                with passes._CLAIMS_LOCK:
                    next(passes._CLAIMS[columns[2][0]])
            with ThreadPoolExecutor(len(columns[0])) as pool:
                return list(pool.map(fn, *columns))

        def gather(self, futures):
            return futures

    monkeypatch.setattr(passes, "chunk_task", fake_task)
    runner = passes.DaskRunner.__new__(passes.DaskRunner)
    runner.client, runner.retries, runner.progress, runner._nthreads = Client(), 0, False, 2
    runner.split = SimpleNamespace(fraction=0.1)
    # chunk_task's arguments after the bundle: (…, start, stop, split, train, held, part, owner); chunk 6 held-out rows only
    specs = [((0.2 if i == 1 else 0.01, i, None, None, 100 * i, 100 * i + 100, None, i != 6, True, None, None), {})
             for i in range(7)]
    assert runner._submit(None, specs) == [10 * i for i in range(7)]
    assert passes._CLAIMS == {} and sorted(where) == list(range(7))
    assert order[-2:] == [6, 0]  # the lost chunk 0 ran again last; held-out rows alone (chunk 6) were taken last
    busy = [name for i, name in where.items() if i not in (0, 1)]
    assert where[1] not in busy  # the long chunk's thread took no other (fixed groups of equal rows gave it 3)


def test_a_chunk_failing_on_every_try_among_more_lost_chunks_than_threads_raises_its_error_once(monkeypatch):
    """review2 R1 (/work/rv15b.em88/t/recur.py): a claimed task that raises on chunk 2 loses the chunks it took; its
    retry finds the queue empty and "succeeds". The lost chunks (more than the threads) were claimed again, so chunk
    2 failed again and _submit recursed until a RecursionError. They now run one task each: chunk 2's error, once."""
    import sys
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from pipeline import passes

    calls = {"submit": 0, "chunk 2": 0}

    def fake_task(bundle, i, *rest):
        if i == 2:
            calls["chunk 2"] += 1
            raise OSError("chunk 2 is missing")
        return 10 * i

    class Client:  # Dask's retries: a task that raises runs again up to `retries` times, then its error propagates
        def map(self, fn, *columns, key=None, pure=None, retries=0, **place):
            def run(*args):
                for attempt in range(retries + 1):
                    try:
                        return fn(*args)
                    except OSError:
                        if attempt == retries:
                            raise

            with ThreadPoolExecutor(1) as pool:  # one thread runs the tasks in turn (as a busy worker may)
                return list(pool.map(run, *columns))

        def gather(self, futures):
            return futures

    submit = passes.DaskRunner._submit

    def counted(self, *args, **kwargs):
        calls["submit"] += 1
        return submit(self, *args, **kwargs)

    monkeypatch.setattr(passes, "chunk_task", fake_task)
    monkeypatch.setattr(passes.DaskRunner, "_submit", counted)
    runner = passes.DaskRunner.__new__(passes.DaskRunner)
    runner.client, runner.retries, runner.progress, runner._nthreads = Client(), 3, False, 2
    runner.split = SimpleNamespace(fraction=0.1)
    specs = [((i, None, None, None, 100 * i, 100 * i + 100, None, True, False, None, None), {}) for i in range(6)]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 1000))
    try:
        with pytest.raises(OSError, match="^chunk 2 is missing$"):
            runner._submit(None, specs)
    finally:
        sys.setrecursionlimit(limit)
    assert calls["submit"] == 2 and calls["chunk 2"] <= 2 * (runner.retries + 1)
    assert passes._CLAIMS == {}


def _imports_dask_array():
    import sys

    return "dask.array" in sys.modules


def test_training_and_evaluation_leave_dask_array_unimported_on_the_workers(tmp_path):
    """Held-out and test scores, the statistics pass and evaluate run as bag reductions: importing dask.array on
    a worker would add ~140 MiB to it (its duck-array backends), beyond pipeline/memory.py's WORKER_BASE."""
    import zarr
    from distributed import Client, LocalCluster

    from pipeline.evaluate import evaluate
    from pipeline.training import train

    X, y = make_data(n=1200, d=5)
    write_data(tmp_path / "d.zarr", X[:1000], y[:1000], chunk_rows=250)
    write_data(tmp_path / "t.zarr", X[1000:], y[1000:], chunk_rows=100)
    del zarr.open_group(tmp_path / "d.zarr", mode="r+").attrs["statistics"]  # a store without statistics: the pass
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        train(c, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", test_data=tmp_path / "t.zarr",
              config=TrainConfig(hidden=(4,), iterations=1, validation_fraction=0.25), report=lambda line: None)
        evaluate(c, tmp_path / "r.zarr", tmp_path / "t.zarr")
        assert list(c.run(_imports_dask_array).values()) == [False]


def test_tree_sum_adds_in_the_delayed_trees_grouping_bit_for_bit():
    """next_round_task's _tree_sum copies tree()'s grouping: the same float32 bytes for 1..12 parts, at every split."""
    from pipeline.passes import SPLIT_EVERY, _tree_sum, tree

    rng = np.random.default_rng(5)
    for split_every in (2, 3, SPLIT_EVERY):
        for n in range(1, 13):
            parts = [(rng.normal(size=(7, 3)) * 10.0 ** rng.integers(-3, 4)).astype(np.float32) for _ in range(n)]
            delayed = tree([dask.delayed(p) for p in parts], split_every=split_every)
            (computed,) = dask.compute(delayed, scheduler="sync")
            assert _tree_sum(parts, split_every).tobytes() == np.asarray(computed).tobytes(), (split_every, n)
