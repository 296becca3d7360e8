"""A process's cache of hidden activations, so that a pass at the weights of the pass before need not recompute them.

Gauss-Newton's pass A evaluates a trial's hidden weights; when the trial is
accepted, pass B runs at the same hidden weights on (a superset of) the same
chunks. The forward pass ``ã_l = h(ã_{l−1} W_lᵀ)`` is the same product on
the same rows, so pass A keeps each row tile's activations here and pass B
takes them instead of recomputing (bitwise the same numbers: the same product
on the same tile). Keys name the run, the chunk's rows, the tile and the
weights (:func:`weights_key`), so a hit can only be the identical product; a
miss (another worker ran the chunk, the budget evicted it, a resumed process)
just recomputes. At most :data:`BUDGET` bytes are kept, least recently used
first out; arrays are stored read-only.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

BUDGET = 192 * 2**20  # bytes of activations a process keeps (thread workers share one cache)
INPUTS_BUDGET = 64 * 2**20  # bytes of standardised input tiles a process keeps (:data:`INPUTS`)
OUTPUTS_BUDGET = 64 * 2**20  # bytes of last-hidden-layer activations a process keeps (:data:`OUTPUTS`)


def weights_key(run: str, weights) -> str:
    """Return the key part naming ``weights`` (the arrays the kernels get) of run ``run``: a SHA-1 of their bytes."""
    h = hashlib.sha1(run.encode())
    for W in weights:
        W = np.ascontiguousarray(W)
        h.update(str((W.dtype.str, W.shape)).encode())
        h.update(W.tobytes())
    return h.hexdigest()


def held_bytes(a) -> int:
    """Return the bytes an array keeps alive: a column slice of a wider buffer of the same rows (Gauss-Newton's
    ``[ã_{L−1}, T]``, :func:`solvers.linalg.gram_and_cross`) counts the whole buffer."""
    b = a.base
    if isinstance(b, np.ndarray) and a.ndim == b.ndim == 2 and b.shape[0] == a.shape[0] and b.nbytes > a.nbytes:
        return b.nbytes
    return a.nbytes


class ActivationCache:
    """Row tiles' activations by key, least recently used out beyond ``budget`` bytes (thread-safe)."""

    def __init__(self, budget: int = BUDGET, evict: bool = True):
        self.budget = int(budget)
        self.evict = evict  # False: a put that would pass the budget is dropped (a scan keeps its first tiles)
        self.items: OrderedDict = OrderedDict()
        self.nbytes = 0
        self.hits = 0  # lookups answered (for tests and profiles)
        self.owner = None  # whose items these are (put's owner)
        self.lock = threading.Lock()

    def put(self, key, arrays: tuple, owner=None) -> None:
        """Keep ``arrays`` (a tuple of ndarrays or None) under ``key``, read-only.

        ``owner`` (a run's token): the items of another owner are dropped first (a process runs one run at a time;
        a non-evicting cache would otherwise stay full of a finished run's tiles).
        """
        size = sum(held_bytes(a) for a in arrays if a is not None)
        if size > self.budget:
            return
        for a in arrays:
            if a is not None:
                a.flags.writeable = False
        with self.lock:
            if owner is not None and owner != self.owner:
                self.items.clear()
                self.nbytes, self.owner = 0, owner
            old = self.items.get(key)
            if not self.evict and self.nbytes - (old[1] if old else 0) + size > self.budget:
                return  # refused: what the key held stays
            if old is not None:
                self.nbytes -= self.items.pop(key)[1]
            self.items[key] = (arrays, size)
            self.nbytes += size
            while self.nbytes > self.budget:
                self.nbytes -= self.items.popitem(last=False)[1][1]

    def get(self, key, owner=None):
        """Return the arrays kept under ``key`` (by ``owner``, when given), or None."""
        with self.lock:
            if owner is not None and owner != self.owner:
                return None
            hit = self.items.get(key)
            if hit is None:
                return None
            self.items.move_to_end(key)
            self.hits += 1
            return hit[0]

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.nbytes = 0
            self.owner = None


CACHE = ActivationCache()
# The standardised inputs [(x − x̄)/s, 1] of row tiles: every pass of a run computes them alike, whatever the weights
# (1.4 of a forward pass's 8.3 ms per 1326-row MNIST tile). Kept until the budget is full, never evicting: passes scan
# the chunks in order, and an evicting cache smaller than the scan would lose every tile before its next use.
INPUTS = ActivationCache(INPUTS_BUDGET, evict=False)
# The last hidden layer's activations a_{L−1} of row tiles at a trial's hidden weights (convolutional Gauss-Newton's
# pass A keeps them, ~1 KB a MNIST row): the scores of an accepted trial need one output product a row. Apart from
# CACHE, so that the large tiles kept for pass B do not push them out.
OUTPUTS = ActivationCache(OUTPUTS_BUDGET)
