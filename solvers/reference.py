"""The in-memory reference trainer: the oracle every distributed test compares against.

It runs exactly the chunk kernels and client loop the Dask pipeline runs, on
NumPy arrays held in memory, one chunk after another. Used directly it is a
small-data trainer; ``tests/test_algorithm1.py`` checks it against a literal
transcription of Algorithm 1.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from solvers import SOLVERS, make_solver
from solvers.config import TrainConfig
from solvers.errors import InputError
from solvers.loop import initialize, iterate, read_plan, shard_groups
from solvers.losses import encode_labels
from solvers.network import Network
from solvers.tasks import TASKS
from solvers.stats import moment_sums, scaling_from_sums
from solvers.tiling import chunk_bounds
from solvers.validation import EarlyStopping, chunk_rows_for_validation, validation_split


def check_xy(X, y, what: str = "training data"):
    """Return X (2-D) and y (1-D) after checking shapes, emptiness and finiteness."""
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2:
        raise InputError(f"{what}: X must be 2-D (samples × features), got shape {X.shape}")
    if y.ndim != 1:
        raise InputError(f"{what}: y must be 1-D, got shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise InputError(f"{what}: X has {X.shape[0]} rows but y has {y.shape[0]}")
    if X.shape[0] == 0:
        raise InputError(f"{what}: no samples")
    if not np.issubdtype(X.dtype, np.number):
        raise InputError(f"{what}: X must be numeric, got dtype {X.dtype}")
    bad = ~np.isfinite(X).all(axis=1)
    if np.issubdtype(y.dtype, np.floating):
        bad |= ~np.isfinite(y)
    if np.any(bad):
        raise InputError(f"{what}: row {int(np.flatnonzero(bad)[0])} has NaN or inf values")
    return X, y


class InMemoryRunner:
    """Runs a solver's chunk kernels over in-memory chunks (the :class:`PassRunner` protocol)."""

    def __init__(self, solver, X, y_idx, chunk_rows=None, bounds=None):
        self.solver = solver
        self.bounds = bounds if bounds is not None else chunk_bounds(X.shape[0], chunk_rows)
        self.x = [X[a:b] for a, b in self.bounds]
        self.y = [y_idx[a:b] for a, b in self.bounds]
        self.slots = {}  # iteration mod 2 -> per-chunk state
        self.shard_slots = {}  # iteration mod 2 -> per-shard state

    def run(self, kernel, params, *, read=None, write=None):
        fn = getattr(self.solver, kernel)
        plan = read_plan(read, self.solver.state_widths())
        total = 0.0
        for i, ((start, _), x, y) in enumerate(zip(self.bounds, self.x, self.y)):
            state = None if plan is None else {name: self.slots[k % 2][i][name] for name, k in plan.items()}
            new, sums = fn(x, y, state, start, params)
            if write is not None:
                self.slots.setdefault(write % 2, [{} for _ in self.bounds])[i].update(new)
            total = total + sums
        return total

    def run_shards(self, kernel, params, *, read=None, write=None):
        fn = getattr(self.solver, kernel)
        groups = shard_groups(len(self.bounds), self.solver.config.shards)
        total = 0.0
        for shard, group in enumerate(groups):
            state = None if read is None else dict(self.shard_slots[read % 2][shard])
            new, sums = fn(_Chunks([self.x[i] for i in group], [self.y[i] for i in group]), state, shard, params)
            if write is not None:
                self.shard_slots.setdefault(write % 2, [{} for _ in groups])[shard] = dict(new)
            total = total + sums
        return total

    def state_of(self, iteration: int) -> dict:
        """Return the whole state of ``iteration`` (arrays concatenated over chunks)."""
        chunks = self.slots[iteration % 2]
        return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


class _Chunks:
    """A shard's chunks held in memory: ``len()`` and ``read(i) -> (x, y)``."""

    def __init__(self, xs, ys):
        self.xs, self.ys = xs, ys

    def __len__(self):
        return len(self.xs)

    def read(self, i):
        return self.xs[i], self.ys[i]


@dataclass
class FitResult:
    """What :func:`fit_in_memory` returns: the network, per-iteration history, final client state."""

    network: Network
    history: list = field(default_factory=list)
    loop_state: object = None
    solver: object = None
    best_iteration: int | None = None  # with early stopping: the iteration the network is from


def fit_in_memory(X, y, config: TrainConfig | None = None, *, chunk_rows=None, X_test=None,
                  y_test=None, dtype=np.float32, callback=None) -> FitResult:
    """Train on in-memory ``(X, y)`` and return the network and its history.

    ``chunk_rows`` splits the samples like the pipeline does (the result is the
    pipeline's up to float summation order); ``callback(record)`` is called
    after each iteration with the history record. With
    ``config.validation_fraction`` > 0 that share of the chunks is held out
    and the returned network is the iteration with the best held-out score
    (accuracy, or R² for ``config.task == "regression"``).
    """
    config = config or TrainConfig()
    X, y = check_xy(X, y)
    if config.task == "regression":  # the moments of [X, y] give the target scaling too
        if not np.issubdtype(y.dtype, np.number):
            raise InputError(f"training data: regression needs numeric targets y, got dtype {y.dtype}")
        y = y.astype(np.float64)
        Xy = np.column_stack([X, y])
        shift = Xy[0].astype(np.float64)
        model = scaling_from_sums(moment_sums(Xy, shift), shift, X.shape[1], config.scaling)
        labels = y
    else:
        classes = np.unique(y)
        shift = X[0].astype(np.float64)
        model = {"classes": classes, **scaling_from_sums(moment_sums(X, shift), shift, X.shape[1], config.scaling)}
        labels = encode_labels(y, classes)
    if getattr(SOLVERS[config.solver], "sharded", False) and config.shards == 0:
        config = replace(config, shards=1)  # in memory the shards run one after another: one is fastest
    solver = make_solver(config, X.shape[1], **model, dtype=dtype)
    rows = chunk_rows or chunk_rows_for_validation(
        X.shape[0], -(-X.shape[0] // max(1, config.shards)) if solver.sharded else X.shape[0],
        config.validation_fraction)
    train_bounds, held_out = validation_split(chunk_bounds(X.shape[0], rows), config.validation_fraction,
                                              config.seed)
    runner = InMemoryRunner(solver, X, labels, bounds=train_bounds)
    if held_out:
        rows_out = np.concatenate([np.arange(a, b) for a, b in held_out])
        X_val, y_val = X[rows_out], y[rows_out]
    if X_test is not None:
        X_test, y_test = check_xy(X_test, y_test, "test data")
    score = TASKS[config.task].score_name  # accuracy, or r2 for regression
    stopping = EarlyStopping(config.patience)
    t0 = time.perf_counter()
    state = initialize(solver, runner)
    result = FitResult(solver.network(state.weights), [], state, solver)
    for state, metrics in iterate(solver, runner, state, config.iterations):
        network = solver.network(state.weights)
        record = {"iteration": state.iteration, "seconds": time.perf_counter() - t0, **metrics}
        if X_test is not None:
            record[f"test_{score}"] = network.score(X_test, y_test)
        stop = False
        if held_out:
            record[f"validation_{score}"] = network.score(X_val, y_val)
            stop = stopping.update(state.iteration, record[f"validation_{score}"], state.weights)
        if hasattr(solver, "observe"):  # a schedule that acts on the scores (consensus,gauss-newton)
            solver.observe(state, record)
        result.history.append(record)
        result.network, result.loop_state = network, state
        if callback is not None:
            callback(record)
        if stop:
            break
        t0 = time.perf_counter()
    if held_out and stopping.best_weights is not None:
        result.network = solver.network(stopping.best_weights)
        result.best_iteration = stopping.best_iteration
    return result
