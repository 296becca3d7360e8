"""One training driver for every runner: model → chunk split → initialise or resume → iterate → record → score → stop.

The in-memory reference (:mod:`solvers.reference`) and the Dask pipeline
(:mod:`pipeline.training`) both call :func:`drive`; they differ only in how a
pass runs (their :class:`~solvers.loop.PassRunner`), how held-out and test
scores are computed (``evaluate``) and where state and checkpoints live (their
:class:`Keeper`). A record is ``{iteration, seconds, <solver metrics>, <pass
rates>, validation_<score>, test_<score>}``; with held-out rows the model is
the iteration of the best validation score and training stops after
``patience`` iterations without a gain.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from solvers.config import TrainConfig
from solvers.errors import InputError, NumericalError
from solvers.loop import LoopState, initialize, iterate
from solvers.stats import scaling_from_sums
from solvers.tasks import TASKS
from solvers.tiling import chunk_bounds
from solvers.validation import EarlyStopping, make_split, still_rising

MAX_CLASSES = 1000  # more distinct labels than this: not a classification (pass --task regression)
MAX_REAL_CLASSES = 20  # more distinct labels that are not all whole numbers: a real-valued target


def classes_of(labels) -> np.ndarray:
    """Return the sorted distinct ``labels`` as the classes: at least 2, at most :data:`MAX_CLASSES`, whole floats as int64.

    More than :data:`MAX_REAL_CLASSES` distinct labels that are not all whole numbers are refused too.
    """
    if labels is None:  # a data store records at most MAX_CLASSES distinct labels
        raise InputError(f"the labels take more than {MAX_CLASSES} distinct values; classification needs at "
                         "most that many classes (are the labels continuous? then pass --task regression)")
    labels = np.asarray(labels)
    if labels.size > MAX_CLASSES:
        raise InputError(f"the labels take {labels.size} distinct values; classification needs at "
                         f"most {MAX_CLASSES} classes (are the labels continuous? then pass --task regression)")
    whole = not np.issubdtype(labels.dtype, np.floating) or bool(np.all(labels == np.round(labels)))
    if labels.size > MAX_REAL_CLASSES and not whole:
        raise InputError(f"the labels take {labels.size} distinct values that are not whole numbers: a real-valued "
                         f"target, not classes (classification takes at most {MAX_REAL_CLASSES} distinct "
                         "non-integer labels); pass --task regression")
    if labels.size < 2:
        raise InputError(f"training needs at least two classes, the labels are all {labels.tolist()}")
    if np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    return labels


def describe_model(model: dict) -> str:
    """Return the classes, or the regression target's mean and std, for the first report line."""
    if "classes" not in model:
        return f"regression, y mean {float(model['y_mean'][0]):.4g}, std {float(model['y_scale'][0]):.4g}"
    classes = np.asarray(model["classes"])
    return f"classes {classes.tolist()[:10]}{' …' if len(classes) > 10 else ''}"


def model_from_moments(config: TrainConfig, n_features: int, sums, shift, labels=None) -> dict:
    """Return the model arrays of a new run: input scaling (and y's for regression) from moment sums, and the classes.

    ``sums``/``shift`` are :func:`solvers.stats.moment_sums` of ``X`` (of
    ``[X, y]`` for regression); ``labels`` the distinct labels (classification;
    None: more than a data store records).
    """
    model = scaling_from_sums(sums, shift, n_features, config.resolved_scaling())
    if config.task != "regression":
        model["classes"] = classes_of(labels)
    return model


def split_chunks(n_samples: int, chunk_rows: int | None, default_rows: int, config: TrainConfig):
    """Return (rows per chunk, chunks, held-out split or None) of a new run.

    ``chunk_rows`` if given, else ``default_rows``; the held-out rows are a
    seeded ``validation_fraction`` of the rows of every chunk (:func:`solvers.validation.make_split`).
    """
    rows = chunk_rows or default_rows
    return rows, chunk_bounds(n_samples, rows), make_split(config.validation_fraction, config.seed, n_samples)


class Keeper(Protocol):
    """Where a run's checkpoints live: the run store (Dask) or nowhere (in memory)."""

    def begin(self, iteration: int) -> None:
        """Iteration ``iteration`` starts writing its state (an iteration boundary: a keeper may stop the run here by raising)."""

    def commit(self, state: LoopState, history: list, stopping: EarlyStopping | None, stopped: bool) -> None:
        """Record iteration ``state.iteration`` (0: the initial state) and the history up to it."""


@dataclass
class Outcome:
    """What training returns (:func:`drive`, ``fit_in_memory``, ``train``): the network, history, client state, solver.

    With held-out rows the network is that of ``best_iteration``;
    ``loop_state`` is the last iteration's client state either way. ``store``
    is the run store of a Dask run (None in memory).
    """

    network: object
    history: list = field(default_factory=list)
    loop_state: LoopState | None = None
    best_iteration: int | None = None
    solver: object = None
    store: object = None
    still_rising: bool = False  # --iterations ended the run while validation still improved (solvers.validation.still_rising)


def _record_of(history: list, iteration) -> dict | None:
    """Return the history record of ``iteration`` (None: the initial weights, or not recorded)."""
    return next((r for r in history if r.get("iteration") == iteration), None)


def _fmt(value, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.3e}"


def _scores(evaluate, network, record: dict, score: str) -> dict:
    """Return ``evaluate(network)``, skipping the held-out scoring when the solver's metrics already hold it.

    A solver whose pass also scores the held-out rows (Gauss-Newton's pass B) puts
    ``validation_<score>`` in its metrics; an ``evaluate`` that takes ``skip`` then scores the rest only.
    """
    if f"validation_{score}" in record and "skip" in inspect.signature(evaluate).parameters:
        return {k: v for k, v in evaluate(network, skip=("validation",)).items() if k != "validation"}
    return evaluate(network)


def drive(solver, runner, keeper: Keeper, config: TrainConfig, *, evaluate: Callable[[object], dict],
          held_out: bool, resume: LoopState | None = None, history=(), stopping: EarlyStopping | None = None,
          changed=frozenset(), stopped_early: bool = False, report: Callable[[str], None] = lambda line: None
          ) -> Outcome:
    """Train ``solver`` through ``runner`` up to ``config.iterations``, committing every iteration to ``keeper``.

    A new run starts from :func:`solvers.loop.initialize`; a resumed one from
    ``resume`` (the committed client state, brought up to date for the
    ``changed`` settings), its ``history`` and early-stopping ``stopping``.
    ``evaluate(network)`` returns ``{"validation": score, "test": score}``
    (each when there is one); given ``skip=("validation",)`` (when it takes it) it leaves that score out.
    ``report`` gets the human-readable lines.
    """
    history = list(history)
    stopping = stopping or EarlyStopping(config.patience)
    if resume is None:
        t0 = time.perf_counter()
        state = initialize(solver, runner)
        keeper.commit(state, history, None, False)
        report(f"initialised ({config.resolved_init()}) in {time.perf_counter() - t0:.2f} s")
    else:
        k = resume.iteration
        report(f"resuming after iteration {k}")
        try:
            state = solver.resume(runner, resume, changed, history=history)  # the hand-over reads an older store's records
        except NumericalError as exc:
            raise NumericalError(f"iteration {k + 1}: {exc}; iteration {k} is still the committed one",
                                 iteration=k + 1) from None
        if changed:
            report("changed " + ", ".join(f"{name}={getattr(config, name)}" for name in sorted(changed))
                   + f"; the client state of iteration {k} was brought up to date")
    model_record = _record_of(history, stopping.best_iteration if stopping.best_weights else state.iteration)
    out = Outcome(solver.network(stopping.best_weights or state.weights, model_record), history, state,
                  stopping.best_iteration, solver)
    if stopped_early and not changed:
        report(f"the run stopped early at iteration {state.iteration} (its model is iteration "
               f"{stopping.best_iteration}); pass a larger --patience or --iterations to go on")
        return out
    if state.iteration >= config.iterations:  # a finished run resumed at its total: no table without rows
        return out
    score = TASKS[config.task].score_name  # accuracy, or r2 for regression: train_r2, test_r2, …
    short = {"accuracy": "acc"}.get(score, score)
    columns = ((f"test_{score}", f"test {short}"),) + (((f"validation_{score}", f"valid {short}"),) if held_out else ())
    report(f"{'iter':>5} {'seconds':>8} {'train ' + short:>9} " + " ".join(f"{title:>9}" for _, title in columns)
           + f" {'residual':>10} {'objective':>11}")
    pass_rates = getattr(runner, "take_pass_rates", dict)
    pass_rates()  # forget the initialisation's passes
    keeper.begin(state.iteration + 1)
    t0 = time.perf_counter()
    for state, metrics in iterate(solver, runner, state, config.iterations):
        network = solver.network(state.weights, metrics)
        record = {"iteration": state.iteration, "seconds": time.perf_counter() - t0, **metrics, **pass_rates()}
        record.update((f"{kind}_{score}", value) for kind, value in _scores(evaluate, network, record, score).items())
        if hasattr(solver, "observe"):  # a schedule that acts on the scores (consensus, gauss-newton)
            solver.observe(state, record)
        stop = held_out and stopping.update(state.iteration, record[f"validation_{score}"], state.weights,
                                                record.get("validation_loss"))
        history.append(record)
        keeper.commit(state, history, stopping if held_out else None, bool(stop))
        out.network = (solver.network(stopping.best_weights, _record_of(history, stopping.best_iteration))
                       if held_out else network)
        out.loop_state, out.best_iteration = state, stopping.best_iteration
        rejected = record.get("accepted") is False  # Gauss-Newton's LM kept the weights
        # a rejected row's objective is the kept weights' at this iteration's α (the one the LM test compared at):
        # below the row before whenever α fell, it read as "the loss fell 5x and the step was rejected" (newuser16 F9)
        report(" ".join([f"{state.iteration:5d} {record['seconds']:8.2f} {record[f'train_{score}']:9.4f}",
                         *(f"{record[k]:9.4f}" if k in record else f"{'-':>9}" for k, _ in columns),
                         _fmt(record.get("residual"), 10), _fmt(None if rejected else record.get("objective"), 11)])
               + ("  rejected" if rejected else ""))
        if getattr(solver, "note", None):  # choices the solver made (gauss-newton's --hidden-alpha race, --step-choice)
            for line in solver.note.splitlines():
                report(line)
            solver.note = None
        if stop:
            report(f"stopping early: no gain in validation {score} or loss for {config.patience} iterations; the model "
                   f"is iteration {stopping.best_iteration} (validation {score} {stopping.best_score:.4f})")
            break
        keeper.begin(state.iteration + 1)
        t0 = time.perf_counter()
    else:
        if held_out and stopping.best_iteration is not None:
            report(f"the model is iteration {stopping.best_iteration} (best validation {score} "
                   f"{stopping.best_score:.4f})")
            scores = {r["iteration"]: r[f"validation_{score}"] for r in history if f"validation_{score}" in r}
            out.still_rising = still_rising(scores, stopping.best_iteration, state.iteration, config.patience)
    return out
