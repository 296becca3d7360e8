"""The in-memory reference trainer: the oracle every distributed test compares against.

It runs exactly the chunk kernels and the driver (:mod:`solvers.driver`) the
Dask pipeline runs, on NumPy arrays held in memory, one chunk after another
(:class:`solvers.inmemory.InMemoryRunner`). Used directly it is a
small-data trainer; ``tests/test_algorithm1.py`` checks it against a literal
transcription of Algorithm 1.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from solvers import SOLVERS, make_solver
from solvers.activation_cache import CACHE, INPUTS, OUTPUTS
from solvers.config import TrainConfig
from solvers.driver import Outcome, drive, model_from_moments, split_chunks
from solvers.errors import InputError
from solvers.inmemory import InMemoryRunner
from solvers.losses import encode_labels
from solvers.stats import moment_sums

FitResult = Outcome  # what fit_in_memory returns (the name the tests and benchmarks know)
__all__ = ["FitResult", "InMemoryRunner", "check_xy", "fit_in_memory"]


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


@dataclass
class _Callback:
    """The in-memory :class:`~solvers.driver.Keeper`: no checkpoints, ``callback(record)`` after each iteration."""

    callback: object = None

    def begin(self, iteration):
        pass

    def commit(self, state, history, stopping, stopped):
        if self.callback is not None and state.iteration > 0:
            self.callback(history[-1])


def fit_in_memory(X, y, config: TrainConfig | None = None, *, chunk_rows=None, X_test=None,
                  y_test=None, dtype=np.float32, callback=None, report=None) -> Outcome:
    """Train on in-memory ``(X, y)`` with :func:`solvers.driver.drive`; return the network and its history.

    ``chunk_rows`` splits the samples like the pipeline does (the result is the
    pipeline's up to float summation order); ``callback(record)`` is called
    after each iteration with the history record, ``report(line)`` with the
    pipeline's report lines. With ``config.validation_fraction`` > 0 that
    share of the rows is held out (:mod:`solvers.validation`: the same rows
    as the pipeline's) and the returned network is the iteration
    with the best held-out score (accuracy, or R² for ``config.task == "regression"``). ``solver="auto"``
    resolves as the pipeline's does on an in-process cluster (its shards share this process's GIL):
    Gauss-Newton; pass the solver to match a run on worker processes that chose the hand-over.
    """
    config = config or TrainConfig()
    X, y = check_xy(X, y)
    config, _ = config.choose_solver(X.shape[0], 1, shared_gil=True)  # one process: as a pipeline on an in-process cluster
    if X_test is not None:
        X_test, y_test = check_xy(X_test, y_test, "test data")
    if config.task == "regression":  # the moments of [X, y] give the target scaling too
        if not np.issubdtype(y.dtype, np.number):
            raise InputError(f"training data: regression needs numeric targets y, got dtype {y.dtype}")
        y = y.astype(np.float64)
        columns, labels = np.column_stack([X, y]), None
    else:
        columns, labels = X, np.unique(y)
    shift = columns[0].astype(np.float64)
    model = model_from_moments(config, X.shape[1], moment_sums(columns, shift), shift, labels)
    if getattr(SOLVERS[config.solver], "sharded", False) and config.shards == 0:
        config = replace(config, shards=1)  # in memory the shards run one after another: one is fastest
    solver = make_solver(config, X.shape[1], **model, dtype=dtype)
    default_rows = -(-X.shape[0] // max(1, config.shards)) if solver.sharded else X.shape[0]
    _, chunks, split = split_chunks(X.shape[0], chunk_rows, default_rows, config)
    targets = y if config.task == "regression" else encode_labels(y, model["classes"])
    runner = InMemoryRunner(solver, X, targets, bounds=chunks, split=split)
    held_out = split is not None
    if held_out:
        rows_out = split.mask(0, X.shape[0])
        X_val, y_val = X[rows_out], y[rows_out]

    def evaluate(network, skip=()) -> dict:
        scores = {"validation": network.score(X_val, y_val)} if held_out and "validation" not in skip else {}
        return scores if X_test is None else {**scores, "test": network.score(X_test, y_test)}

    try:
        return drive(solver, runner, _Callback(callback), config, evaluate=evaluate, held_out=held_out,
                     report=report or (lambda line: None))
    finally:
        CACHE.clear()  # the activations Gauss-Newton's passes kept (solvers.activation_cache)
        INPUTS.clear()
        OUTPUTS.clear()
