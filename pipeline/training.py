"""The training loop on Dask: statistics pass, run-store creation or resume, iterate, commit.

:func:`train` is what ``python -m pipeline.train`` runs; it needs a connected
:class:`distributed.Client` and reports one line per iteration through
``report``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.cluster import check_worker_access
from pipeline.passes import DaskRunner, accuracy_graph, data_statistics
from solvers import SOLVERS
from solvers.config import TrainConfig
from solvers.errors import InputError, NumericalError
from solvers.loop import LoopState, initialize, iterate
from solvers.stats import moments_from_sums
from storage.data import DataStore, fingerprint, open_data
from storage.runstore import Checkpoint, RunStore, check_creatable

STATE_CHUNK_BYTES = 128 * 2**20  # target size of one state chunk (DESIGN: 64–256 MB)
MAX_CLASSES = 1000


@dataclass
class TrainResult:
    """The outcome of :func:`train`: the network, the history, the run store."""

    network: object
    history: list = field(default_factory=list)
    store: RunStore | None = None


def default_chunk_rows(data: DataStore, state_width: int) -> int:
    """Return rows per state chunk: a whole number of data chunks holding ~128 MB of float32 state.

    A task then reads whole data chunks (Zarr reads a chunk whole, so a state
    chunk of half a data chunk would read it twice per pass). Only when one
    data chunk alone would carry over 512 MB of state is it split in halves.
    """
    bytes_per_row = 4 * max(1, state_width)
    if data.chunk_rows * bytes_per_row > 4 * STATE_CHUNK_BYTES:
        halvings = math.ceil(math.log2(data.chunk_rows * bytes_per_row / STATE_CHUNK_BYTES))
        rows = max(1, data.chunk_rows >> halvings)
    else:
        rows = data.chunk_rows * max(1, round(STATE_CHUNK_BYTES / bytes_per_row / data.chunk_rows))
    return int(min(rows, data.n_samples))


def _classes(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size > MAX_CLASSES:
        raise InputError(f"the labels take {labels.size} distinct values; classification needs at "
                         f"most {MAX_CLASSES} classes (are the labels continuous?)")
    if labels.size < 2:
        raise InputError(f"training needs at least two classes, the labels are all {labels.tolist()}")
    if np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    return labels


def _solver_for_new_run(client, data: DataStore, config: TrainConfig):
    shift = np.asarray(data.X[0], np.float64)
    sums, labels = data_statistics(client, data.path, data.n_samples, data.chunk_rows, shift)
    classes = _classes(labels)
    mean, scale = moments_from_sums(sums, shift)
    return SOLVERS[config.solver](config, data.n_features, classes, mean, scale)


def _check_resumable(store: RunStore, data: DataStore):
    expected = store.attrs["data"]["fingerprint"]
    actual = fingerprint(data)
    diffs = [f"{k}: run has {expected.get(k)!r}, data has {v!r}" for k, v in actual.items() if expected.get(k) != v]
    if diffs:
        raise InputError(f"{data.path} is not the data set run {store.path} was trained on ("
                         + "; ".join(diffs) + ")")


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
        _check_chunk_rows(chunk_rows, open_data(data))
        check_creatable(store, overwrite)
    if test_data:
        open_data(test_data)


RESUMABLE_CHANGES = ("iterations", "gamma", "beta", "warm_start", "ridge")


def resumed_config(stored: dict, overrides: dict | None) -> tuple[TrainConfig, bool]:
    """Return the run's config with allowed overrides applied, and whether γ, β or the ridge changed.

    Raises :class:`InputError` listing every setting that would change the
    shape or meaning of the stored state (widths, activation, loss, init, seed, solver).
    """
    config = TrainConfig.from_dict(stored)
    overrides = {k: (tuple(v) if k == "hidden" else v) for k, v in (overrides or {}).items()}
    clashes = [f"{k}: run has {getattr(config, k)!r}, given {v!r}" for k, v in overrides.items()
               if k not in RESUMABLE_CHANGES and getattr(config, k) != v]
    if clashes:
        raise InputError("cannot resume with settings that change the stored state (" + "; ".join(clashes)
                         + "); start a new run with --overwrite or another --store")
    new = replace(config, **{k: v for k, v in overrides.items() if k in RESUMABLE_CHANGES})
    return new, any(getattr(new, k) != getattr(config, k) for k in ("gamma", "beta", "ridge"))


def train(client, *, store, data=None, config: TrainConfig | None = None, test_data=None,
          chunk_rows=None, resume=False, overwrite=False, iterations=None, overrides=None,
          progress=False, report=print) -> TrainResult:
    """Train out of core on ``data`` into the run store ``store``; return the network and history.

    With ``resume=True`` the run continues from its last committed iteration:
    ``data`` and the settings default to the run's own, ``overrides`` may change
    γ, β, warm start, ridge and the iteration target (others must match), and
    ``iterations`` sets a new target. Otherwise a new run is created (an
    existing store is refused unless ``overwrite``).
    """
    resolve_again = False
    if iterations is not None:
        overrides = {**(overrides or {}), "iterations": int(iterations)}
    if resume:
        run = RunStore.open(store)
        config, resolve_again = resumed_config(run.attrs["config"], overrides)
        if config.to_dict() != run.attrs["config"]:
            run.update_config(config.to_dict())
        data = open_data(data or run.attrs["data"]["path"])
        test_data = test_data or run.attrs.get("test_data")
        check_worker_access(client, [data.path, *([test_data] if test_data else [])], [run.path])
        _check_resumable(run, data)
        m = run.model_arrays()
        solver = SOLVERS[config.solver](config, data.n_features, m["classes"], m["x_mean"], m["x_scale"])
    else:
        if data is None:
            raise InputError("no training data given: pass --data DATA.zarr")
        config = replace(config or TrainConfig(), **(overrides or {}))
        data = open_data(data)
        _check_chunk_rows(chunk_rows, data)
        check_worker_access(client, [data.path, *([test_data] if test_data else [])],
                            [Path(store).resolve().parent])
        solver = _solver_for_new_run(client, data, config)
        rows = chunk_rows or default_chunk_rows(data, sum(solver.state_widths().values()))
        run = RunStore.create(store, config=config.to_dict(), state_widths=solver.state_widths(),
                              data={"path": str(data.path.resolve()), "fingerprint": fingerprint(data)},
                              n_samples=data.n_samples, chunk_rows=rows, classes=solver.classes,
                              x_mean=solver.x_mean, x_scale=solver.x_scale, overwrite=overwrite,
                              test_data=str(Path(test_data).resolve()) if test_data else None)
    test = open_data(test_data) if test_data else None
    if test is not None and test.n_features != data.n_features:
        raise InputError(f"test data {test.path} has {test.n_features} features, training data has {data.n_features}")

    runner = DaskRunner(client, solver, data.path.resolve(), run.path.resolve(), data.n_samples,
                        run.chunk_rows, progress=progress)
    report(f"run store {run.path}: {data.n_samples} samples in {math.ceil(data.n_samples / run.chunk_rows)} "
           f"chunks of {run.chunk_rows} rows, layers {'-'.join(map(str, solver.widths))}, "
           f"classes {solver.classes.tolist()[:10]}{' …' if len(solver.classes) > 10 else ''}")
    manifest = run.manifest()
    history = list(manifest["history"]) if manifest else []
    if manifest is None:
        t0 = time.perf_counter()
        state = initialize(solver, runner)
        run.commit(Checkpoint(0, state.weights, state.next_weights, state.input_gram), history, config.iterations)
        report(f"initialised state ({config.init}) in {time.perf_counter() - t0:.2f} s")
    else:
        ck = run.load_checkpoint()
        state = LoopState(ck.iteration, ck.weights, ck.next_weights, ck.input_gram)
        report(f"resuming after iteration {ck.iteration}")
        if resolve_again:  # W^{k+1} depends on γ, β (eq. 6) and the ridge: solve it again
            sums = solver.layout(True).unpack(runner.grams(state.weights, ck.iteration))
            try:
                state.next_weights = solver.solve(sums, state.input_gram)
            except NumericalError as exc:
                raise NumericalError(f"iteration {ck.iteration + 1}: {exc}; iteration {ck.iteration} "
                                     "is still the committed one") from None
            report(f"new gamma={config.gamma}, beta={config.beta}, ridge={config.ridge}: weights for "
                   f"iteration {ck.iteration + 1} solved again")
    result = TrainResult(solver.network(state.weights), history, run)
    report(f"{'iter':>5} {'seconds':>8} {'train acc':>9} {'test acc':>9} {'residual':>10} {'objective':>11}")
    t0 = time.perf_counter()
    for state, metrics in iterate(solver, runner, state, config.iterations):
        network = solver.network(state.weights)
        record = {"iteration": state.iteration, "seconds": time.perf_counter() - t0, **metrics}
        if test is not None:
            n, correct = runner.compute(accuracy_graph(client, network, test.path.resolve(),
                                                       test.n_samples, test.chunk_rows))[0]
            record["test_accuracy"] = correct / n
        history.append(record)
        run.commit(Checkpoint(state.iteration, state.weights, state.next_weights, state.input_gram),
                   history, config.iterations)
        result.network = network
        test_txt = f"{record['test_accuracy']:9.4f}" if "test_accuracy" in record else f"{'-':>9}"
        report(f"{state.iteration:5d} {record['seconds']:8.2f} {record['train_accuracy']:9.4f} {test_txt} "
               f"{record['residual']:10.3e} {record['objective']:11.4e}")
        t0 = time.perf_counter()
    run.release_uncommitted_slot()
    return result
