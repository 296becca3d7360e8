"""Early stopping on held-out training rows, shared by every solver and both runners.

The held-out rows are spread over every chunk: row ``r`` (0-based, in the data
store) is held out when ``u(seed, r) < fraction``, where ``u`` is a seeded hash
of the row number mapped to [0, 1) (:func:`row_uniforms`, SplitMix64). The
choice depends on nothing but the seed and the row number, so it is the same
whatever the chunking or scheduling, a resumed run holds out the same rows
(the run store records the fraction and seed), and a class-ordered file gets a
held-out set drawn from every part of it. Every chunk task reads its whole
chunk once and runs the solver on its training rows and, where asked, on its
held-out rows (:class:`RowSplit`). Run stores of earlier versions held out
whole chunks; they resume with :class:`ChunkSplit`. The best iteration's
weights are kept and become the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from solvers.errors import InputError

SPLIT_TAG = 0x5EED  # mixed into the seed: the held-out rows' hash stream
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
BLOCK = 1 << 20  # rows hashed at a time when counting


def row_uniforms(rows, seed: int) -> np.ndarray:
    """Return ``u(seed, r)`` in [0, 1) for the row numbers ``rows``: SplitMix64 of ``r + key(seed)``, top 53 bits."""
    key = np.uint64((int(seed) * 0x2545F4914F6CDD1D + SPLIT_TAG) % 2**64)
    with np.errstate(over="ignore"):
        z = np.asarray(rows, np.uint64) + key
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass(frozen=True)
class RowSplit:
    """Rows held out by their seeded hash: row r is held out iff ``row_uniforms(r, seed) < fraction``."""

    fraction: float
    seed: int

    def held(self, rows) -> np.ndarray:
        """Return which of the (global) row numbers ``rows`` are held out."""
        return row_uniforms(rows, self.seed) < self.fraction

    def mask(self, start: int, stop: int) -> np.ndarray:
        """Return which rows of ``start..stop-1`` are held out."""
        return self.held(np.arange(start, stop, dtype=np.uint64))

    def count(self, n_samples: int) -> int:
        """Return how many of rows ``0..n_samples-1`` are held out (hashed a block at a time)."""
        return int(sum(int(self.mask(a, min(n_samples, a + BLOCK)).sum()) for a in range(0, n_samples, BLOCK)))

    def record(self, n_samples: int) -> dict:
        """Return what a run store keeps of the split (with its held-out row count)."""
        return {"scheme": "rows", "fraction": float(self.fraction), "seed": int(self.seed),
                "rows": self.count(n_samples)}


@dataclass(frozen=True)
class ChunkSplit:
    """Whole chunks held out (run stores of earlier versions): ``chunks`` are their (start, stop) bounds."""

    chunks: frozenset

    def held(self, rows) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        out = np.zeros(rows.shape, bool)
        for a, b in self.chunks:
            out |= (rows >= a) & (rows < b)
        return out

    def mask(self, start: int, stop: int) -> np.ndarray:
        return np.full(stop - start, (start, stop) in self.chunks)

    def count(self, n_samples: int) -> int:
        return int(sum(b - a for a, b in self.chunks))


def make_split(fraction: float, seed: int, n_samples: int):
    """Return the :class:`RowSplit` of a new run, or None when ``fraction`` is 0 or it holds out no row.

    Raise :class:`InputError` when it would hold out every row (a handful of rows and a large fraction).
    """
    if fraction <= 0:
        return None
    split = RowSplit(float(fraction), int(seed))
    held = split.count(n_samples)
    if held == 0:
        return None
    if held == n_samples:
        raise InputError(f"--validation-fraction {fraction} holds out all {n_samples} training rows; pass a "
                         "smaller fraction (or 0 to turn early stopping off)")
    return split


def split_of(attrs: dict):
    """Return the split a run store records (``validation``; ``validation_chunks`` of earlier versions), or None."""
    v = attrs.get("validation")
    if v:
        return RowSplit(float(v["fraction"]), int(v["seed"]))
    chunks = attrs.get("validation_chunks") or []
    return ChunkSplit(frozenset(tuple(int(x) for x in b) for b in chunks)) if chunks else None


def select(split, start: int, stop: int, side: str):
    """Return the positions in rows ``start..stop-1`` of the ``side`` ("train" or "held") rows (None: all rows)."""
    if split is None:
        return None if side == "train" else np.zeros(0, np.int64)
    held = split.mask(start, stop)
    return np.flatnonzero(~held if side == "train" else held)


RISING_SHARE = 5  # "still rising": the kept model is one of the last max(2, ⌈patience / RISING_SHARE⌉) iterations


def rising_window(patience: int) -> int:
    """Return how many last iterations count as "the end of the run" for :func:`still_rising`: max(2, ⌈patience / 5⌉)."""
    return max(2, -(-int(patience) // RISING_SHARE))


def still_rising(scores: dict, best_iteration, last: int, patience: int) -> bool:
    """Return whether a run that ``--iterations`` ended (not early stopping) was still improving on validation.

    ``scores`` maps each scored iteration to its validation score; ``best_iteration`` is the kept one, ``last``
    the run's last iteration. True when the kept iteration is one of the last :func:`rising_window` iterations
    (2 for the default patience 10) and its score beats every iteration's before that window (a gain, not a
    tie broken by the validation loss). The rule reads only the run's own scores and its patience, never a
    data set's numbers: a run that needs more iterations says so (scikit-learn's ConvergenceWarning at
    ``max_iter``). A run too short to have iterations before the window never says so.
    """
    if best_iteration is None:
        return False
    window = rising_window(patience)
    if last - best_iteration >= window:
        return False
    before = [score for k, score in scores.items() if k <= last - window]
    return bool(before) and scores[best_iteration] > max(before)


class EarlyStopping:
    """Keep the weights of the best validation score; say stop after ``patience`` iterations without progress.

    A score counts as a gain if it beats the best by more than ``min_delta``, or
    if it ties the best exactly and its validation ``loss`` is lower (the tie
    breaker where the score is coarse: accuracy on a few hundred held-out rows
    moves in steps of 1/n, and the earliest of the tied iterations is often not
    the best model). Without losses the earliest of equal scores is kept.

    Progress, for patience, is a gain in the score *or* a new lowest validation
    loss (``lowest_loss``, at ``lowest_iteration``): training stops once neither
    has improved for ``patience`` iterations. The loss is a smooth sum over every
    held-out row where accuracy moves in steps of 1/n, so it tells a run still
    learning (accuracy flat within its noise, loss falling) from one that has
    stopped; measured on covtype validation splits, patience on accuracy alone
    ended runs at iterations 24–28 whose held-out accuracy was still climbing
    (``benchmarks/results/defaults_real.md``). The model is still chosen by the score.
    """

    def __init__(self, patience: int, min_delta: float = 0.0, best_score=None, best_iteration=None,
                 best_weights=None, best_loss=None, lowest_loss=None, lowest_iteration=None):
        self.patience = patience
        self.best_loss = best_loss
        self.lowest_loss = lowest_loss
        self.lowest_iteration = lowest_iteration
        self.min_delta = min_delta
        self.best_score = best_score
        self.best_iteration = best_iteration
        self.best_weights = best_weights

    def update(self, iteration: int, score: float, weights, loss: float | None = None) -> bool:
        """Record iteration ``iteration``'s score (and validation loss); return True when training should stop."""
        tie_with_lower_loss = (score == self.best_score and loss is not None and self.best_loss is not None
                               and loss < self.best_loss)
        if self.best_score is None or score > self.best_score + self.min_delta or tie_with_lower_loss:
            self.best_score, self.best_iteration = float(score), int(iteration)
            self.best_loss = None if loss is None else float(loss)
            self.best_weights = [np.array(W, copy=True) for W in weights]
        if loss is not None and (self.lowest_loss is None or loss < self.lowest_loss):
            self.lowest_loss, self.lowest_iteration = float(loss), int(iteration)
        progress = max(self.best_iteration, self.lowest_iteration or 0)
        return self.patience > 0 and iteration - progress >= self.patience

    def summary(self) -> dict:
        """Return the JSON-ready record of the best iteration (no weights)."""
        return {"best_iteration": self.best_iteration, "best_validation": self.best_score,
                "best_validation_loss": self.best_loss, "lowest_validation_loss": self.lowest_loss,
                "lowest_loss_iteration": self.lowest_iteration, "patience": self.patience}

    @classmethod
    def from_summary(cls, patience: int, record: dict, best_weights) -> EarlyStopping:
        """Return the stopping state that :meth:`summary` recorded (``best_weights`` stored beside it), for a resume.

        Records written before the validation loss or its lowest value were kept lack those entries (None).
        """
        return cls(patience, best_score=record["best_validation"], best_iteration=record["best_iteration"],
                   best_weights=best_weights, best_loss=record.get("best_validation_loss"),
                   lowest_loss=record.get("lowest_validation_loss"), lowest_iteration=record.get("lowest_loss_iteration"))
