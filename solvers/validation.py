"""Early stopping on held-out training chunks, shared by every solver and both runners.

The held-out part is a seeded random choice of whole chunks, so the
pipeline's tasks stay whole-chunk reads and a resumed run holds out the same
rows. The best iteration's weights are kept and become the model.
"""
from __future__ import annotations

import math

import numpy as np

from solvers.errors import InputError

MIN_CHUNKS_PER_HELD_OUT = 2  # with fraction f, ask for at least 2/f chunks (and at least MIN_CHUNKS)
MIN_CHUNKS = 10
MIN_CHUNKS_TO_HOLD_OUT = 4  # fewer chunks than this: no hold-out (one would be a quarter of the data or more)


def chunk_rows_for_validation(n_samples: int, chunk_rows: int, fraction: float) -> int:
    """Return ``chunk_rows``, made smaller when needed so a ``fraction`` of the chunks is a fair hold-out."""
    if fraction <= 0:
        return chunk_rows
    wanted = max(MIN_CHUNKS, math.ceil(MIN_CHUNKS_PER_HELD_OUT / fraction))
    return max(1, min(chunk_rows, math.ceil(n_samples / wanted)))


def validation_split(bounds: list, fraction: float, seed: int) -> tuple[list, list]:
    """Return (training chunks, held-out chunks): ``round(fraction · #chunks)`` chunks chosen by ``seed``.

    At least one chunk is held out; with fewer than :data:`MIN_CHUNKS_TO_HOLD_OUT`
    chunks (an explicit ``--chunk-rows`` on small data) nothing is, and early
    stopping is off (the run's first report line says how many rows are held out).
    """
    if fraction <= 0 or len(bounds) < MIN_CHUNKS_TO_HOLD_OUT:
        return list(bounds), []
    n_val = max(1, round(fraction * len(bounds)))
    if not 0 < n_val < len(bounds):
        raise InputError(f"--validation-fraction {fraction} of {len(bounds)} chunks holds out "
                         f"{n_val} chunks; pass a smaller --chunk-rows so that it is at least one chunk "
                         "and leaves some for training")
    rng = np.random.default_rng([seed, 0x5EED])
    held = set(rng.choice(len(bounds), n_val, replace=False).tolist())
    return ([b for i, b in enumerate(bounds) if i not in held],
            [b for i, b in enumerate(bounds) if i in held])


class EarlyStopping:
    """Keep the weights of the best validation score; say stop after ``patience`` iterations without gain.

    A score counts as a gain if it beats the best by more than ``min_delta``, or
    if it ties the best exactly and its validation ``loss`` is lower (the tie
    breaker where the score is coarse: accuracy on a few hundred held-out rows
    moves in steps of 1/n, and the earliest of the tied iterations is often not
    the best model). Without losses the earliest of equal scores is kept.
    """

    def __init__(self, patience: int, min_delta: float = 0.0, best_score=None, best_iteration=None,
                 best_weights=None, best_loss=None):
        self.patience = patience
        self.best_loss = best_loss
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
        return self.patience > 0 and iteration - self.best_iteration >= self.patience

    def summary(self) -> dict:
        """Return the JSON-ready record of the best iteration (no weights)."""
        return {"best_iteration": self.best_iteration, "best_validation": self.best_score,
                "best_validation_loss": self.best_loss, "patience": self.patience}
