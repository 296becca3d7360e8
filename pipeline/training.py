"""The training loop on Dask: scaling from the data store's statistics, run-store creation or resume, iterate, commit.

:func:`train` is what ``python -m pipeline.train`` runs; it needs a connected
:class:`distributed.Client` and reports one line per iteration through
``report``.
"""
from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.cluster import check_worker_access
from pipeline.memory import default_chunk_rows
from pipeline.passes import DaskRunner, bounds, data_statistics, score_graph
from solvers import SOLVERS, make_solver
from solvers.config import RESUMABLE, TrainConfig
from solvers.errors import InputError, NumericalError
from solvers.loop import LoopState, initialize, iterate
from solvers.stats import scaling_from_sums
from solvers.tasks import TASKS
from solvers.validation import EarlyStopping, chunk_rows_for_validation, validation_split
from storage.data import MAX_LABELS, DataStore, fingerprint, fingerprint_differences, open_data
from storage.lock import RunLock, check_unlocked
from storage.runstore import Checkpoint, RunStore, check_creatable

MAX_CLASSES = MAX_LABELS


@dataclass
class TrainResult:
    """The outcome of :func:`train`: the network, the history, the run store."""

    network: object
    history: list = field(default_factory=list)
    store: RunStore | None = None


def _threads(client) -> int:
    """Return the number of worker threads of the cluster (at least 1)."""
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # noqa: BLE001 -- a client that cannot say: assume one
        return 1


def _classes(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size > MAX_CLASSES:
        raise InputError(f"the labels take {labels.size} distinct values; classification needs at "
                         f"most {MAX_CLASSES} classes (are the labels continuous? then pass --task regression)")
    if labels.size < 2:
        raise InputError(f"training needs at least two classes, the labels are all {labels.tolist()}")
    if np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    return labels


def _model_for_new_run(client, data: DataStore, config: TrainConfig) -> dict:
    """Return the model arrays of a new run: input scaling, and classes or target scaling.

    They come from the statistics the data store recorded when it was written
    (no pass over the data); a store without them gets one statistics pass.
    """
    regression = config.task == "regression"
    d = data.n_features
    recorded = data.statistics
    if recorded is not None:
        shift, sums, labels = recorded["shift"], recorded["sums"], recorded["labels"]
        if not regression:  # the moments of X alone: drop y's column
            shift, sums = shift[:d], np.concatenate([sums[:1], sums[1:1 + d], sums[2 + d:2 + 2 * d]])
            if labels is None:
                raise InputError(f"the labels take more than {MAX_CLASSES} distinct values; classification "
                                 "needs at most that many classes (are the labels continuous? then pass "
                                 "--task regression)")
    else:
        shift = np.asarray(data.X[0], np.float64)
        if regression:  # the moments of [X, y]: the target scaling comes from the same pass
            shift = np.append(shift, data.y[0])
        sums, labels = data_statistics(client, data.path, data.n_samples, data.chunk_rows, shift,
                                       labels=not regression)
    model = scaling_from_sums(sums, shift, d, config.scaling)
    if not regression:
        model["classes"] = _classes(labels)
    return model


def _describe(model: dict) -> str:
    """Return the classes, or the regression target's mean and std, for the first report line."""
    if "classes" not in model:
        return f"regression, y mean {float(model['y_mean'][0]):.4g}, std {float(model['y_scale'][0]):.4g}"
    classes = np.asarray(model["classes"])
    return f"classes {classes.tolist()[:10]}{' …' if len(classes) > 10 else ''}"


def _check_resumable(store: RunStore, data: DataStore):
    data.require_labels("train")
    diffs = fingerprint_differences(store.attrs["data"]["fingerprint"], data)
    if diffs:
        raise InputError(f"{data.path} is not the data set run {store.path} was trained on ("
                         + "; ".join(diffs) + ")")


def _check_test_data(test_data, data: DataStore) -> DataStore | None:
    """Return the opened test data store (None without one); its width must be the training data's."""
    test = open_data(test_data) if test_data else None
    if test is not None:
        test.require_labels("score the model (--test-data)")
    if test is not None and test.n_features != data.n_features:
        raise InputError(f"test data {test.path} has {test.n_features} features, training data has {data.n_features}")
    return test


def _check_chunk_rows(chunk_rows, data: DataStore):
    if chunk_rows is not None and not (1 <= chunk_rows <= data.n_samples):
        raise InputError(f"--chunk-rows {chunk_rows} must be between 1 and the number of samples "
                         f"({data.n_samples})")


def check_inputs(*, store, data=None, test_data=None, resume=False, overwrite=False, chunk_rows=None):
    """Raise :class:`InputError` for unusable stores before any cluster is started."""
    if resume:
        RunStore.open(store)
    else:
        if data is None:
            raise InputError("no training data given: pass --data DATA.zarr")
        ds = open_data(data)
        ds.require_labels("train")
        _check_chunk_rows(chunk_rows, ds)
        check_creatable(store, overwrite, inputs=(data, test_data))
        _check_test_data(test_data, ds)
    check_unlocked(store)
    if test_data:
        open_data(test_data)


RESUMABLE_CHANGES = RESUMABLE  # the settings marked resumable in solvers/config.py


def resumed_config(stored: dict, overrides: dict | None) -> tuple[TrainConfig, set]:
    """Return the run's config with allowed overrides applied, and the names of the settings that changed.

    Raises :class:`InputError` listing every setting that would change the
    shape or meaning of the stored state (those not in :data:`RESUMABLE_CHANGES`).
    """
    config = TrainConfig.from_dict(stored)
    overrides = {k: (tuple(v) if k == "hidden" else v) for k, v in (overrides or {}).items()}
    clashes = [f"{k}: run has {getattr(config, k)!r}, given {v!r}" for k, v in overrides.items()
               if k not in RESUMABLE_CHANGES and getattr(config, k) != v]
    if clashes:
        raise InputError("cannot resume with settings that change the stored state (" + "; ".join(clashes)
                         + "); start a new run with --overwrite or another --store")
    new = replace(config, **{k: v for k, v in overrides.items() if k in RESUMABLE_CHANGES})
    return new, {k for k in RESUMABLE_CHANGES if getattr(new, k) != getattr(config, k)}


def train(client, *, store, report=print, **kwargs) -> TrainResult:
    """Train out of core into the run store ``store``, holding its lock (:mod:`storage.lock`); see :func:`_train`.

    A second trainer on the same store, while this one runs, gets an :class:`InputError` naming this one.
    """
    with RunLock(store, report=report):
        return _train(client, store=store, report=report, **kwargs)


def _train(client, *, store, data=None, config: TrainConfig | None = None, test_data=None,
           chunk_rows=None, resume=False, overwrite=False, iterations=None, overrides=None,
           progress=False, report=print, monitor=None) -> TrainResult:
    """Train out of core on ``data`` into the run store ``store``; return the network and history.

    With ``resume=True`` the run continues from its last committed iteration:
    ``data`` and the settings default to the run's own, ``overrides`` may change
    the settings of :data:`RESUMABLE_CHANGES` (others must match), and ``iterations`` sets a new target. Otherwise a new run is
    created (an existing store is refused unless ``overwrite``). With
    ``validation_fraction`` > 0 the returned network is the best held-out
    iteration's. ``monitor`` (a :class:`pipeline.monitor.TrainingMonitor`) is
    told about the run, every pass and every commit: the dashboard's /training page.
    """
    changed = set()
    if iterations is not None:
        overrides = {**(overrides or {}), "iterations": int(iterations)}
    if resume:
        run = RunStore.open(store)
        config, changed = resumed_config(run.attrs["config"], overrides)
        if changed:
            run.update_config(config.to_dict())
        data = open_data(data or run.attrs["data"]["path"])
        test_data = test_data or run.attrs.get("test_data")
        check_worker_access(client, [data.path, *([test_data] if test_data else [])], [run.path])
        _check_resumable(run, data)
        model = run.model_arrays()
        solver = make_solver(config, data.n_features, **model)
    else:
        if data is None:
            raise InputError("no training data given: pass --data DATA.zarr")
        config = replace(config or TrainConfig(), **(overrides or {}))
        if SOLVERS[config.solver].sharded and config.shards == 0:  # one shard per worker thread
            config = replace(config, shards=max(1, sum(client.nthreads().values())))
        data = open_data(data)
        data.require_labels("train")
        _check_chunk_rows(chunk_rows, data)
        check_creatable(store, overwrite, inputs=(data.path, test_data))
        _check_test_data(test_data, data)  # before the store exists: a bad --test-data leaves nothing behind
        check_worker_access(client, [data.path, *([test_data] if test_data else [])],
                            [Path(store).resolve().parent])
        model = _model_for_new_run(client, data, config)
        solver = make_solver(config, data.n_features, **model)
        rows = chunk_rows or chunk_rows_for_validation(
            data.n_samples, default_chunk_rows(data, sum(solver.state_widths().values()),
                                               max(_threads(client), config.shards if solver.sharded else 1)),
            config.validation_fraction)
        _, held_out = validation_split(bounds(data.n_samples, rows), config.validation_fraction, config.seed)
        run = RunStore.create(store, config=config.to_dict(), state_widths=solver.state_widths(),
                              data={"path": str(data.path.resolve()), "fingerprint": fingerprint(data)},
                              n_samples=data.n_samples, chunk_rows=rows, classes=model.get("classes"),
                              x_mean=model["x_mean"], x_scale=model["x_scale"], y_mean=model.get("y_mean"),
                              y_scale=model.get("y_scale"), overwrite=overwrite,
                              test_data=str(Path(test_data).resolve()) if test_data else None,
                              validation_chunks=held_out, report=report,
                              shard_widths=solver.shard_state_widths() if solver.sharded else None,
                              n_shards=config.shards)
    test = _check_test_data(test_data, data)

    held_out = [tuple(b) for b in run.attrs.get("validation_chunks") or []]
    train_chunks = [b for b in bounds(data.n_samples, run.chunk_rows) if b not in set(held_out)]
    runner = DaskRunner(client, solver, data.path.resolve(), run.path.resolve(), train_chunks, progress=progress,
                        recorder=monitor)
    n_held = sum(b - a for a, b in held_out)
    report(f"run store {run.path}: {data.n_samples - n_held} training samples in {len(train_chunks)} chunks of "
           f"{run.chunk_rows} rows" + (f", {n_held} held out for early stopping in {len(held_out)} chunks"
                                        if held_out else "")
           + f", layers {'-'.join(map(str, solver.widths))}, solver {solver.name}, {_describe(model)}")
    manifest = run.manifest()
    history = list(manifest["history"]) if manifest else []
    stopping = EarlyStopping(config.patience)
    if monitor is not None:
        from pipeline.monitor import run_info

        monitor.start(run_info(run, n_chunks=len(train_chunks), n_held_out=len(held_out)), history)
    if manifest is None:
        t0 = time.perf_counter()
        state = initialize(solver, runner)
        run.commit(Checkpoint(0, state.weights, state.carry), history, config.iterations)
        report(f"initialised ({config.init}) in {time.perf_counter() - t0:.2f} s")
        if monitor is not None:
            monitor.on_commit(history, 0, config.iterations)
    else:
        ck = run.load_checkpoint()
        state = LoopState(ck.iteration, ck.weights, ck.carry)
        if ck.best:
            stopping = EarlyStopping(config.patience, best_score=ck.best["best_validation"],
                                     best_iteration=ck.best["best_iteration"], best_weights=ck.best_weights)
        report(f"resuming after iteration {ck.iteration}")
        try:
            state = solver.resume(runner, state, changed)
        except NumericalError as exc:
            raise NumericalError(f"iteration {ck.iteration + 1}: {exc}; iteration {ck.iteration} "
                                 "is still the committed one") from None
        if changed:
            report("changed " + ", ".join(f"{k}={getattr(config, k)}" for k in sorted(changed))
                   + f"; the client state of iteration {ck.iteration} was brought up to date")
    result = TrainResult(solver.network(stopping.best_weights or state.weights), history, run)
    if manifest and manifest.get("stopped_early") and not changed:
        report(f"the run stopped early at iteration {state.iteration} (its model is iteration "
               f"{stopping.best_iteration}); pass a larger --patience or --iterations to go on")
        return result
    score = TASKS[config.task].score_name  # accuracy, or r2 for regression: train_r2, test_r2, …
    short = {"accuracy": "acc"}.get(score, score)
    columns = ((f"test_{score}", f"test {short}"),) + (((f"validation_{score}", f"valid {short}"),) if held_out else ())
    report(f"{'iter':>5} {'seconds':>8} {'train ' + short:>9} " + " ".join(f"{title:>9}" for _, title in columns)
           + f" {'residual':>10} {'objective':>11}")
    runner.take_pass_rates()  # forget the initialisation's passes
    t0 = time.perf_counter()
    run.begin_iteration(state.iteration + 1)
    for state, metrics in iterate(solver, runner, state, config.iterations):
        network = solver.network(state.weights)
        record = {"iteration": state.iteration, "seconds": time.perf_counter() - t0, **metrics,
                  **runner.take_pass_rates()}
        graphs = {}
        if held_out:
            graphs[f"validation_{score}"] = score_graph(network, data.path.resolve(), held_out)
        if test is not None:
            graphs[f"test_{score}"] = score_graph(network, test.path.resolve(), bounds(test.n_samples, test.chunk_rows))
        for name, value in zip(graphs, runner.compute(*graphs.values())):
            record[name] = value
        if hasattr(solver, "observe"):  # a schedule that acts on the scores (consensus,gauss-newton)
            solver.observe(state, record)
        stop = held_out and stopping.update(state.iteration, record[f"validation_{score}"], state.weights)
        history.append(record)
        run.commit(Checkpoint(state.iteration, state.weights, state.carry,
                              stopping.summary() if held_out else None, stopping.best_weights if held_out else None),
                   history, config.iterations, stopped=bool(stop))
        if monitor is not None:
            monitor.on_commit(history, state.iteration, config.iterations,
                              stopped=f"stopped early; the model is iteration {stopping.best_iteration}" if stop else None)
        result.network = solver.network(stopping.best_weights if held_out else state.weights)
        report(" ".join([f"{state.iteration:5d} {record['seconds']:8.2f} {record[f'train_{score}']:9.4f}",
                         *(f"{record[k]:9.4f}" if k in record else f"{'-':>9}" for k, _ in columns),
                         _fmt(record.get("residual"), 10), _fmt(record.get("objective"), 11)]))
        if stop:
            report(f"stopping early: no gain in validation {score} for {config.patience} iterations; the model "
                   f"is iteration {stopping.best_iteration} (validation {score} {stopping.best_score:.4f})")
            break
        run.begin_iteration(state.iteration + 1)
        t0 = time.perf_counter()
    run.release_uncommitted_slot()
    return result


def _fmt(value, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.3e}"
