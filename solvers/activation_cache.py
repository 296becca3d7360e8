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


def weights_key(run: str, weights) -> str:
    """Return the key part naming ``weights`` (the arrays the kernels get) of run ``run``: a SHA-1 of their bytes."""
    h = hashlib.sha1(run.encode())
    for W in weights:
        W = np.ascontiguousarray(W)
        h.update(str((W.dtype.str, W.shape)).encode())
        h.update(W.tobytes())
    return h.hexdigest()


class ActivationCache:
    """Row tiles' activations by key, least recently used out beyond ``budget`` bytes (thread-safe)."""

    def __init__(self, budget: int = BUDGET):
        self.budget = int(budget)
        self.items: OrderedDict = OrderedDict()
        self.nbytes = 0
        self.hits = 0  # lookups answered (for tests and profiles)
        self.lock = threading.Lock()

    def put(self, key, arrays: tuple) -> None:
        """Keep ``arrays`` (a tuple of ndarrays or None) under ``key``, read-only."""
        size = sum(a.nbytes for a in arrays if a is not None)
        if size > self.budget:
            return
        for a in arrays:
            if a is not None:
                a.flags.writeable = False
        with self.lock:
            if key in self.items:
                self.nbytes -= self.items.pop(key)[1]
            self.items[key] = (arrays, size)
            self.nbytes += size
            while self.nbytes > self.budget:
                self.nbytes -= self.items.popitem(last=False)[1][1]

    def get(self, key):
        """Return the arrays kept under ``key``, or None."""
        with self.lock:
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


CACHE = ActivationCache()
