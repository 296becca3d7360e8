"""Progressive sampling: the first iterations run on a growing, seeded subset of whole training chunks.

A full-batch method pays a whole pass for its first steps, when a fraction of
the data already points the same way. With the ``grow`` schedule iteration k
reads the first ``m_k`` chunks of one seeded permutation of the training
chunks (so every sample contains the previous one), starting from the fewest
chunks holding ``sample_start`` rows (default :data:`START_ROWS`; at least 2 chunks), doubling ``m`` after
every accepted step, and reaching all chunks at the latest for the last
iteration. ``m`` is part of the solver's checkpointed client state, so a
resumed run reads the same chunks as an uninterrupted one. ``full`` reads
every chunk every time (the method as it was).
"""
from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("auto", "grow", "full")
START_ROWS = 49152  # rows of the first sample (rounded up to whole chunks)
GROWTH = 2


def resolve(schedule: str, solver: str) -> str:
    """Return ``grow`` or ``full``: ``auto`` grows for the stateless Gauss-Newton solver only."""
    if schedule == "auto":
        return "grow" if solver == "gauss-newton" else "full"
    return schedule


def order(n_chunks: int, seed: int) -> np.ndarray:
    """Return the seeded permutation of chunk indices whose prefixes are the samples."""
    return np.random.default_rng([seed, 0x5A3]).permutation(n_chunks)


def initial_count(bounds: list, schedule: str, start_rows: int = START_ROWS) -> int:
    """Return m_0: all chunks for ``full``, else the fewest (≥ 2) whose mean size reaches ``start_rows``."""
    n = len(bounds)
    if schedule == "full" or n <= 2:
        return n
    mean_rows = sum(b - a for a, b in bounds) / n
    return int(min(n, max(2, math.ceil(start_rows / mean_rows))))


def next_count(m: int, n_chunks: int, accepted: bool, last: bool) -> int:
    """Return m_{k+1}: doubled after an accepted step, all chunks for the last iteration."""
    if last:
        return n_chunks
    return int(min(n_chunks, m * GROWTH)) if accepted else int(m)


def sample(n_chunks: int, m: int, seed: int) -> list[int] | None:
    """Return the sorted chunk indices of the sample of ``m`` chunks (None: all of them)."""
    if m >= n_chunks:
        return None
    return sorted(order(n_chunks, seed)[:m].tolist())
