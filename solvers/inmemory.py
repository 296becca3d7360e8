"""The in-memory :class:`~solvers.loop.PassRunner`: a solver's chunk kernels over NumPy chunks, one after another.

The in-memory reference trainer (:mod:`solvers.reference`) runs passes with
it, as the Dask pipeline runs them with :class:`pipeline.passes.DaskRunner`;
tests drive solvers through it directly. Per-chunk and per-shard state live
in two slots (iteration mod 2), as in a run store. With a ``split``
(:mod:`solvers.validation`) the kernels see each chunk's training rows, and a
held-out pass its held-out rows (:func:`solvers.loop.chunk_kernel`, as the pipeline).
"""
from __future__ import annotations

import numpy as np

from solvers.loop import add_sums, chunk_kernel, chunk_parts, shard_groups, shard_slot
from solvers.tasks import score_sums
from solvers.tiling import chunk_bounds
from solvers.validation import select


class InMemoryRunner:
    """Runs a solver's chunk kernels over in-memory chunks (the :class:`PassRunner` protocol)."""

    def __init__(self, solver, X, y_idx, chunk_rows=None, bounds=None, split=None):
        self.solver = solver
        self.bounds = bounds if bounds is not None else chunk_bounds(X.shape[0], chunk_rows)
        self.split = split
        self.x = [X[a:b] for a, b in self.bounds]
        self.y = [y_idx[a:b] for a, b in self.bounds]
        self.slots = {}  # iteration mod 2 -> per-chunk state
        self.shard_slots = {}  # iteration mod 2 -> per-shard state

    def run(self, kernel, params, *, read=None, write=None, chunks=None, held_out=False):
        fn = getattr(self.solver, kernel)
        plan = read  # {array name: iteration} or None (run_pass makes the dict)
        total = held = None
        parts = chunk_parts(self.solver, len(self.bounds) if chunks is None else len(set(chunks))) \
            if plan is None and write is None else 1
        for i, ((start, _), x, y) in enumerate(zip(self.bounds, self.x, self.y)):
            if held_out and self.split is not None:
                held = add_sums(held, chunk_kernel(fn, x, y, None, start, params, self.split, "held")[1])
            if chunks is not None and i not in chunks:
                continue
            if parts > 1:  # the pipeline's tasks (solvers.loop.chunk_parts), summed in the same order
                for j in range(parts):
                    total = add_sums(total, chunk_kernel(fn, x, y, None, start, params, self.split, part=(j, parts))[1])
                continue
            # a chunk the split holds out whole (earlier run stores) has no state: chunk_kernel skips it unread
            state = None if plan is None else {name: self.slots[k % 2][i].get(name) for name, k in plan.items()}
            new, sums = chunk_kernel(fn, x, y, state, start, params, self.split)
            if write is not None and new is not None:
                self.slots.setdefault(write % 2, [{} for _ in self.bounds])[i].update(new)
            total = add_sums(total, sums)
        return (total, held) if held_out else total

    def _chunks(self, group):
        """Return the training rows of the chunks of one shard."""
        rows = [select(self.split, self.bounds[i][0], self.bounds[i][1], "train") for i in group]
        xs = [self.x[i] if r is None else self.x[i][r] for i, r in zip(group, rows)]
        ys = [self.y[i] if r is None else self.y[i][r] for i, r in zip(group, rows)]
        return _Chunks(xs, ys)

    def run_shard_rounds(self, kernel, params, next_params, rounds, *, read=None, write=None, score=None):
        fn = getattr(self.solver, kernel)
        groups = shard_groups(len(self.bounds), self.solver.config.shards)
        states, out = None, []
        for r in range(rounds):
            total, kept = 0.0, []
            for shard, group in enumerate(groups):
                if r:
                    state = states[shard]
                else:
                    state = None if read is None else dict(self.shard_slots[shard_slot(read)][shard])
                new, sums = fn(self._chunks(group), state, shard, params)
                if r == rounds - 1 and write is not None:
                    self.shard_slots.setdefault(shard_slot(write), [{} for _ in groups])[shard] = dict(new)
                kept.append(dict(new))
                total = total + sums
            out.append(total)
            if r < rounds - 1:
                params, states = next_params(r + 1, total), kept
        if score is None:
            return out
        network, held = score(out[-1]), 0.0
        for group in groups:
            for i in group:
                rows = select(self.split, self.bounds[i][0], self.bounds[i][1], "held")
                held = held + score_sums(network.predict(self.x[i][rows]), self.solver.classes[self.y[i][rows]])
        return out, held

    def state_of(self, iteration: int) -> dict:
        """Return the whole state of ``iteration`` (arrays concatenated over chunks; zeros in held-out rows)."""
        chunks = self.slots[iteration % 2]
        return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


class _Chunks:
    """A shard's chunks held in memory (their training rows): ``len()`` and ``read(i) -> (x, y)``."""

    def __init__(self, xs, ys):
        self.xs, self.ys = xs, ys

    def __len__(self):
        return len(self.xs)

    def read(self, i):
        return self.xs[i], self.ys[i]

    def n_rows(self):
        return sum(len(y) for y in self.ys)
