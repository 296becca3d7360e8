"""``init="data"``: the first layer's initial weights point along differences of random training rows.

Row j of ``W_1⁰`` is ``√g · (x_i − x_i') / ‖x_i − x_i'‖`` for two seeded random
training rows ``i, i'`` (standardised inputs; ``g`` the activation's He gain,
so every row has He initialisation's expected norm), bias 0; deeper layers
keep He-scaled Gaussian weights. Random directions in input space are
isotropic, while the data rarely is (MNIST's pixels live near a small
subspace): differences of samples are directions the data varies along, so
the random features ``h(W_1⁰ x)`` separate the samples far better
(measured: ``benchmarks/results/defaults_real_admm.md``). A pair of equal rows keeps its He row, and
so does every row when ``2 n_1 d`` exceeds :data:`MAX_VALUES` (very wide inputs).

The rows are gathered in one pass over the training chunks: the client picks
global row numbers of training rows (seeded, independent of chunking and
scheduling; held-out rows are skipped), every chunk puts the rows it holds
into their slots of a zero block, and the sum of the blocks holds every
picked row (:func:`rows_kernel`).
"""
from __future__ import annotations

import numpy as np

from solvers.stats import StatsLayout

SEED_TAG = 0xDA7A  # the rng stream of the picked rows: [seed, SEED_TAG]
MAX_VALUES = 1 << 24  # at most this many gathered values (128 MB of float64 per chunk's sums): beyond, He rows


def fits(count: int, width: int) -> bool:
    """Return whether ``count`` rows of ``width`` values may be gathered in one pass (:data:`MAX_VALUES`)."""
    return count * width <= MAX_VALUES


def pick_rows(bounds, count: int, seed: int, split=None) -> np.ndarray:
    """Return ``count`` global row numbers of the training rows of chunks ``bounds`` ((start, stop) pairs), seeded.

    Without replacement when there are enough rows, else with it. Rows the
    ``split`` holds out (:mod:`solvers.validation`) are never picked: the
    candidates are drawn as without a split (twice as many, plus 64) and the
    first ``count`` training rows among them kept.
    """
    sizes = np.array([b - a for a, b in bounds], np.int64)
    n = int(sizes.sum())
    rng = np.random.default_rng([seed, SEED_TAG])
    starts = np.array([a for a, _ in bounds], np.int64)

    def global_rows(pos):
        chunk = np.searchsorted(np.cumsum(sizes), pos, side="right")
        return starts[chunk] + (pos - (np.cumsum(sizes) - sizes)[chunk])

    if split is None:
        return global_rows(rng.choice(n, count, replace=n < count))
    rows = global_rows(rng.choice(n, min(n, 2 * count + 64), replace=False))
    rows = rows[~split.held(rows)]
    if len(rows) >= count:
        return rows[:count]
    return rows[rng.integers(len(rows), size=count)]  # fewer training rows than asked: with replacement


def layout(count: int, width: int) -> StatsLayout:
    """Return the layout of the gathered rows: ``count × width``."""
    return StatsLayout({"rows": (count, width)})


def rows_kernel(x, row_numbers, rows) -> dict:
    """Return ``{"rows": block}``: the rows of ``x`` (global numbers ``row_numbers``, ascending) in the slots that pick them."""
    rows, row_numbers = np.asarray(rows, np.int64), np.asarray(row_numbers, np.int64)
    block = np.zeros((len(rows), x.shape[1]))
    at = np.minimum(np.searchsorted(row_numbers, rows), len(row_numbers) - 1)
    mine = row_numbers[at] == rows
    block[mine] = x[at[mine]]
    return {"rows": block}


def first_layer(rows, he_row_weights, gain: float) -> np.ndarray:
    """Return ``W_1⁰`` (bias 0) from the gathered ``rows`` (2·n_1 of them, pairs i, n_1 + i).

    ``he_row_weights`` (n_1 × (d + 1)) gives the rows of pairs whose difference is 0.
    """
    k = he_row_weights.shape[0]
    diff = np.asarray(rows[:k], np.float64) - np.asarray(rows[k:2 * k], np.float64)
    norm = np.linalg.norm(diff, axis=1, keepdims=True)
    W = np.array(he_row_weights, np.float64)
    ok = norm[:, 0] > 0
    W[ok, :-1] = diff[ok] / norm[ok] * np.sqrt(gain)
    W[:, -1] = 0.0
    return W
