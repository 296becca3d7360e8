"""The input Gram ``Σ ã_0 ã_0ᵀ`` of chunks a progressive sample has not reached yet, summed ahead while workers idle.

Gauss-Newton's pass B sums the first layer's input Gram of the chunks a grown sample adds
(:meth:`solvers.gauss_newton.GaussNewtonSolver.curvature_chunk`, ``gram_chunks``): MNIST's 785² per row, ~80 ms of
CPU a chunk of 7,500 rows, about a third of such a chunk's task. It does not depend on the weights, so a runner may
sum it before the sample grows, while its worker threads idle (the client's solves, a commit, a pass's tail):
:func:`sum_ahead`, which ``pipeline.passes`` runs on an in-process cluster. Pass B then takes the kept sum
(:func:`take`) in place of its tiles' products.

Bitwise: the kept sum is the tiles' Grams (the same :meth:`_gram` of the same standardised tiles, from
:data:`~solvers.activation_cache.INPUTS` or made alike) added in tile order from +0.0, elementwise, as pass B's packed
vector adds them (:meth:`solvers.stats.StatsLayout.add`), so the pass's sums are the same bits whether it took the
kept sum or summed its tiles. Keys name the run (its ``run_token``), the chunk's training rows
(:func:`solvers.gauss_newton._rows_key`), the tile rows and the dtype; a kept sum serves one pass and is dropped
(a retried task, a resumed process or another worker's process sums its own: a miss only costs the products).
"""
from __future__ import annotations

import threading

import numpy as np

from solvers.tiling import row_tiles

BUDGET = 64 * 2**20  # bytes of kept input Grams a process holds (MNIST: 4.9 MB a chunk, 13 chunks)


class _Kept:
    """Input Grams by key within ``budget`` bytes, for one run at a time (thread-safe); a full budget refuses more."""

    def __init__(self, budget: int = BUDGET):
        self.budget = int(budget)
        self.items: dict = {}
        self.nbytes = 0
        self.owner = None
        self.taken = 0  # sums a pass took (tests, profiles)
        self.lock = threading.Lock()

    def room(self, nbytes: int, owner) -> bool:
        """Return whether a sum of ``nbytes`` for ``owner`` would be kept."""
        with self.lock:
            used = self.nbytes if owner == self.owner else 0
        return used + nbytes <= self.budget

    def put(self, key, value: np.ndarray, owner) -> None:
        with self.lock:
            if owner != self.owner:
                self.items.clear()
                self.nbytes, self.owner = 0, owner
            if key in self.items or self.nbytes + value.nbytes > self.budget:
                return
            self.items[key] = value
            self.nbytes += value.nbytes

    def has(self, key, owner) -> bool:
        with self.lock:
            return owner == self.owner and key in self.items

    def take(self, key, owner):
        """Return the sum kept under ``key`` and forget it, or None."""
        with self.lock:
            if owner != self.owner:
                return None
            value = self.items.pop(key, None)
            if value is not None:
                self.nbytes -= value.nbytes
                self.taken += 1
            return value

    def forget(self, owner) -> None:
        """Forget ``owner``'s sums (its run ended); another run's stay."""
        with self.lock:
            if owner == self.owner:
                self.items.clear()
                self.nbytes, self.owner = 0, None

    def drop(self, key, owner) -> bool:
        """Forget the sum kept under ``key`` (no pass took it); return whether there was one."""
        with self.lock:
            value = self.items.pop(key, None) if owner == self.owner else None
            if value is not None:
                self.nbytes -= value.nbytes
            return value is not None

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.nbytes, self.owner = 0, None


KEPT = _Kept()


def applies(solver) -> bool:
    """Return whether ``solver``'s pass B sums an input Gram by chunk that :func:`take` can stand in for.

    Gauss-Newton's dense kernels with a hidden layer (the input Gram is then not also the output layer's).
    """
    dense = getattr(solver, "_dense_kernels", None)
    return getattr(solver, "L", 0) > 1 and dense is not None and dense() and hasattr(solver, "run_token")


def _key(solver, rows) -> tuple:
    return ("gram1", rows, int(solver.tile_rows), np.dtype(solver.dtype).str)


def take(solver, rows):
    """Return the kept input Gram of the training rows named ``rows`` (flat, float64), forgotten here, or None."""
    return KEPT.take(_key(solver, rows), solver.run_token)


def drop(solver, rows) -> bool:
    """Forget the kept input Gram of the training rows named ``rows`` (a pass summed them itself); return whether
    there was one."""
    return KEPT.drop(_key(solver, rows), solver.run_token)


def future_chunks(solver, n_chunks: int, sample) -> list[int]:
    """Return the chunks outside ``sample`` in the order a growing sample adds them (:func:`solvers.sampling.order`)."""
    from solvers import sampling

    inside = set(sample)
    return [int(i) for i in sampling.order(n_chunks, solver.config.seed) if int(i) not in inside]


def sum_ahead(solver, x_train, rows, between=None) -> bool:
    """Keep the input Gram of a chunk's training rows ``x_train``, named ``rows``, as pass B sums it.

    ``rows``: :func:`solvers.gauss_newton._rows_key` of the rows as pass B's kernel sees them (training side).
    ``between()`` runs before each tile and before the sum is kept; False abandons the chunk (nothing is kept). Return whether the sum is
    kept (already, or now); False too when the budget has no room for it.
    """
    key, owner = _key(solver, rows), solver.run_token
    width = int(solver.widths[0]) + 1
    if KEPT.has(key, owner):
        return True
    if not KEPT.room(width * width * 8, owner):
        return False
    total = np.zeros(width * width)
    with np.errstate(all="ignore"):  # as SolverBase.tiled
        for sl in row_tiles(x_train.shape[0], solver.tile_rows):
            if between is not None and not between():
                return False
            total += np.ravel(solver._gram(solver._kept_inputs(x_train, rows, sl)))
    if between is not None and not between():  # a pass read the chunk while its last tile was summed (review16 R3):
        return False  # its pass B summed the Gram itself; kept, it would hold budget until the run ends
    KEPT.put(key, total, owner)
    return KEPT.has(key, owner)
