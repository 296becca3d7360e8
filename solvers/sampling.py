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

``rotate`` (the ``auto`` choice for convolutional layers) first walks one
epoch of disjoint windows: window j is the chunks ``j·m … j·m + m − 1`` (mod
the chunk count) of the same permutation, the next window after every
accepted step, ``⌈n_chunks / m⌉`` windows in all; then it grows like
``grow`` from the first ``2m`` chunks. Large-batch steps on fresh rows
learn the filters faster per row read than full-batch steps (measured on
MNIST, ``benchmarks/results/conv_defaults_s5.md``). Window 0 is grow's first
sample; the window index (−1 once growing) is checkpointed with ``m``.
"""
from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("auto", "grow", "rotate", "full")
START_ROWS = 16384  # rows of the first sample (rounded up to whole chunks; benchmarks/results/gn_profile_mnist10_s5.md)
CONV_START_ROWS = 6000  # convolutional layers: rows of each window of the rotate schedule
GROWTH = 2


def resolve(schedule: str, solver: str, conv: bool = False) -> str:
    """Return ``grow``, ``rotate`` or ``full``: ``auto`` is grow (``conv``: rotate) for the stateless Gauss-Newton solver only."""
    if schedule == "auto":
        return ("rotate" if conv else "grow") if solver == "gauss-newton" else "full"
    return schedule


def start_rows(sample_start: int, conv: bool = False) -> int:
    """Return the rows of the first sample: ``sample_start``, or for 0 :data:`START_ROWS` (``conv``: :data:`CONV_START_ROWS`)."""
    return int(sample_start) if sample_start else (CONV_START_ROWS if conv else START_ROWS)


def initial_window(schedule: str, m: int, n_chunks: int) -> int:
    """Return the first window index: 0 for ``rotate`` on fewer than all chunks, else −1 (growing)."""
    return 0 if schedule == "rotate" and m < n_chunks else -1


def order(n_chunks: int, seed: int) -> np.ndarray:
    """Return the seeded permutation of chunk indices whose prefixes are the samples."""
    return np.random.default_rng([seed, 0x5A3]).permutation(n_chunks)


def initial_count(bounds: list, schedule: str, start_rows: int = START_ROWS) -> int:
    """Return m_0: all chunks for ``full``, else the fewest (≥ 2; ``rotate``: ≥ 1) whose mean size reaches ``start_rows``.

    A rotate window may be one chunk: the pipeline's default chunks of MNIST 60k are 10,000 rows, and
    windows of two would hold a third of the data. (One chunk is one task: one worker thread runs it.)
    """
    n = len(bounds)
    least = 1 if schedule == "rotate" else 2
    if schedule == "full" or n <= least:
        return n
    mean_rows = sum(b - a for a, b in bounds) / n
    return int(min(n, max(least, math.ceil(start_rows / mean_rows))))


def next_count(m: int, n_chunks: int, accepted: bool, last: bool) -> int:
    """Return m_{k+1}: doubled after an accepted step, all chunks for the last iteration."""
    if last:
        return n_chunks
    return int(min(n_chunks, m * GROWTH)) if accepted else int(m)


def next_sample(m: int, window: int, n_chunks: int, accepted: bool, last: bool) -> tuple[int, int]:
    """Return (m, window) of the next iteration.

    Rotating (``window`` ≥ 0): the same window after a rejected step, the next
    one after an accepted step until ``⌈n_chunks/m⌉`` windows were read, then
    grow's 2m chunks; growing (−1): :func:`next_count`. All chunks for the last iteration.
    """
    if last:
        return n_chunks, -1
    if window >= 0:
        if not accepted:
            return int(m), int(window)
        if window < math.ceil(n_chunks / max(m, 1)) - 1:
            return int(m), int(window) + 1
    return next_count(m, n_chunks, accepted, last), -1


def sample(n_chunks: int, m: int, seed: int, window: int = -1) -> list[int] | None:
    """Return the sorted chunk indices of the sample of ``m`` chunks, or of window ``window`` ≥ 0 (None: all of them)."""
    if m >= n_chunks:
        return None
    perm = order(n_chunks, seed)
    if window <= 0:
        return sorted(perm[:m].tolist())
    return sorted(perm[(window * m + np.arange(m)) % n_chunks].tolist())
