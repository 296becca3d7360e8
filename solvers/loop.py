"""The client side of training, shared by the in-memory reference and the Dask pipeline.

A *runner* executes one pass of one solver chunk kernel over every sample
chunk and returns the float64 sums; the solver's client step
(``initialize``/``advance``) turns sums into weights with small solves and
decides which passes an iteration needs; :func:`iterate` yields after every
iteration so the caller can checkpoint, validate and report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy as np

from solvers.errors import InputError, NumericalError
from solvers.validation import select


class PassRunner(Protocol):
    """Runs one pass of a solver's chunk kernel over all sample chunks."""

    def run(self, kernel: str, params, *, read: dict | None = None, write: int | None = None,
            held_out: bool = False):
        """Run ``solver.<kernel>(x, y, state, start_row, params)`` on every chunk; return the summed stats.

        The kernel sees a chunk's training rows only (:mod:`solvers.validation`:
        the held-out rows are spread over every chunk; :func:`chunk_kernel`).
        With ``held_out=True`` it also runs on every chunk's held-out rows in
        the same pass (the same task: the chunk is read once), with
        ``state=None`` and nothing written, and the result is the pair
        (training sums, held-out sums; None when nothing is held out).

        ``state`` holds the chunk's rows of the per-sample state arrays
        ``read`` names, each of the iteration it maps to (``{array name:
        iteration}``; None: no state is read; :func:`run_pass` turns a
        solver's plain iteration into that dict); the kernel returns
        ``(new_state, sums)`` and ``new_state`` is stored as the state of
        iteration ``write`` (None: nothing is written). Runners keep two
        slots, so only iterations k−1 and k are ever held. A pass must not
        write an array it reads from the same iteration (a retried chunk task
        would read its own output).
        """

    def run_shard_rounds(self, kernel: str, params, next_params, rounds: int, *, read: int | None = None,
                         write: int | None = None, score=None):
        """Run ``rounds`` rounds of ``solver.<kernel>(chunks, state, shard, params)`` per shard as one computation.

        Returns each round's stats, summed over the shards. A shard is a fixed group of
        consecutive training chunks (:func:`shard_groups` of ``solver.config.shards``);
        ``chunks`` gives ``len(chunks)``, ``chunks.n_rows()`` and ``chunks.read(i) -> (x, y)``,
        read when asked; ``state`` is the shard's per-shard state (``solver.shard_state_widths()``).
        Round 0 runs with ``params`` and reads the per-shard state of iteration
        ``read``; round r > 0 runs with ``next_params(r, sums of round r − 1)`` from
        the shard states round r − 1 returned, held in memory (not stored); the
        last round's states are stored as iteration ``write``'s. Nothing else is
        written, and the two slots (:func:`shard_slot`) differ, so a retried task (recomputed from
        its inputs) reads what it read before and rewrites the same bytes.
        With ``score`` (classification, rows held out of every chunk) the same computation
        also scores ``score(sums of the last round)``, a network, on the held-out rows of every
        shard's chunks, and the result is the pair (the list, summed :func:`solvers.tasks.score_sums`).
        """


def shard_slot(k) -> int:
    """Return the per-shard state slot of iteration k: k mod 2 (run stores of session 5 also have a slot 2, unused)."""
    return int(k) % 2


@dataclass
class LoopState:
    """Client state after iteration k: the model W^k and what the next iteration needs.

    ``carry`` maps names to arrays (a solver's solved-ahead weights, constant
    Grams, step-size control): a checkpoint stores it, a resume restores it.
    """

    iteration: int
    weights: list
    carry: dict = field(default_factory=dict)


PARALLEL_TASKS = 2  # a pass over fewer sample chunks than this cuts each one's training rows into parts (chunk_parts)


def chunk_parts(solver, n_chunks: int) -> int:
    """Return how many tasks each of a pass's ``n_chunks`` sample chunks is cut into (their training rows, by whole tiles).

    1, unless the solver's kernels are stateless and walk tiles of ``solver.part_rows`` rows (convolutional
    Gauss-Newton) and the sample has fewer than :data:`PARALLEL_TASKS` chunks: a rotate window of one chunk
    was one task, and one of two worker threads idled through it. The parts walk the chunk's own tiles
    (:func:`part_rows`), so the kernels compute what the whole chunk's task did; only the order in which
    the tiles' float64 sums are added changes. A fixed number, not the cluster's threads: a resumed run
    cuts alike on any cluster (bitwise).
    """
    if not getattr(solver, "part_rows", None) or n_chunks >= PARALLEL_TASKS:
        return 1
    return -(-PARALLEL_TASKS // max(n_chunks, 1))


def part_rows(n: int, tile: int, part: tuple[int, int] | None) -> tuple[int, int]:
    """Return the rows ``[lo, hi)`` of part ``(j, parts)`` of ``n`` rows: whole tiles of ``tile`` rows, split evenly."""
    if part is None:
        return 0, n
    j, parts = part
    tiles = -(-n // tile)
    return min(n, tiles * j // parts * tile), min(n, tiles * (j + 1) // parts * tile)


def chunk_kernel(fn, x, y, state, start: int, params, split, side: str = "train", part=None):
    """Run kernel ``fn`` on the ``side`` rows ("train" or "held") of the chunk starting at row ``start``; return (new state, sums).

    Both runners call this, so they select the same rows: ``select(split, …)``
    of the chunk (every row for "train" without a split). ``state`` holds the
    whole chunk's rows and the new state comes back whole too, with zeros in
    the rows the kernel did not see (held-out rows keep no state). A kernel
    with ``row_numbers = True`` gets the global row numbers of the rows it
    sees in place of ``start`` (the data start gathers picked rows by number).
    The held-out rows run the solver's ``<kernel>_held`` in place of the kernel when it has one
    (e.g. the score alone). (None, None) when the chunk has no such rows.
    ``part`` = (j, parts) (:func:`chunk_parts`; stateless kernels told their first row only): the kernel sees the j-th of the parts
    :func:`part_rows` cuts the selected rows into, told they start at ``start + lo``, so its tiles, their first
    row numbers and the rows they seed are the whole chunk's.
    """
    if side == "held":  # a kernel's held-out variant (``<kernel>_held``), when the solver has one
        fn = getattr(getattr(fn, "__self__", None), getattr(fn, "__name__", "") + "_held", fn)
    n = x.shape[0]
    pos = select(split, start, start + n, side)
    if pos is not None and len(pos) == 0:
        return None, None
    if part is not None:
        if state is not None or getattr(fn, "row_numbers", False):
            raise ValueError("a chunk is cut into parts only for stateless kernels told their first row")
        lo, hi = part_rows(n if pos is None else len(pos), fn.__self__.part_rows, part)
        if hi <= lo:
            return None, None
        x, y = (x[lo:hi], y[lo:hi]) if pos is None else (x[pos[lo:hi]], y[pos[lo:hi]])
        return fn(x, y, None, start + lo, params)
    if pos is not None and len(pos) < n:
        x, y = x[pos], y[pos]
        state = None if state is None else {k: v[pos] for k, v in state.items()}
    else:
        pos = None
    where = start
    if getattr(fn, "row_numbers", False):
        where = start + (np.arange(n) if pos is None else pos)
    new, sums = fn(x, y, state, where, params)
    if new and pos is not None:
        whole = {}
        for name, v in new.items():
            whole[name] = np.zeros((n, *v.shape[1:]), v.dtype)
            whole[name][pos] = v
        new = whole
    return new, sums


def training_rows(runner) -> int:
    """Return the number of training rows of a runner's chunks (``bounds``) less those its ``split`` holds out (kept on it)."""
    n = getattr(runner, "_training_rows", None)
    if n is None:
        split = getattr(runner, "split", None)
        n = sum(b - a if split is None else int((~split.mask(a, b)).sum()) for a, b in runner.bounds)
        runner._training_rows = n
    return n


def add_sums(total, sums):
    """Return ``total + sums``, where either may be None (a chunk without such rows, or nothing summed yet)."""
    if sums is None:
        return total
    return sums if total is None else total + sums


def _layer_of(name: str):
    digits = name[len(name.rstrip("0123456789")):]
    return int(digits) if digits else None


DIVERGENCE_HINT = "other settings or a larger --ridge"


def check_finite(sums: dict, iteration: int, hint: str = DIVERGENCE_HINT) -> dict:
    """Return ``sums``, or raise :class:`NumericalError` naming the first layer whose sums are not finite.

    ``hint`` names the settings to resume with (each solver has its own ``divergence_hint``).
    """
    by_layer = sorted(sums, key=lambda k: (_layer_of(k) is None, _layer_of(k) or 0))
    for name in by_layer:
        if not np.all(np.isfinite(sums[name])):
            layer = _layer_of(name)
            where = f"layer {layer} ({name})" if layer is not None else name
            raise NumericalError(
                f"non-finite values (NaN/inf) in {where} at iteration {iteration}; the last committed "
                f"iteration is intact: resume with {hint}", iteration=iteration)
    return sums


def read_plan(read, names) -> dict | None:
    """Return ``{array name: iteration}`` for a runner's ``read`` argument (int, dict or None)."""
    if read is None:
        return None
    return dict(read) if isinstance(read, dict) else {name: read for name in names}


def run_pass(runner: PassRunner, layout, kernel: str, params, iteration: int, **slots) -> dict:
    """Run one pass and return its sums unpacked by ``layout`` and checked to be finite.

    ``read`` may be one iteration for every state array or ``{array name: iteration}``;
    the runner always gets the dict (:func:`read_plan`).
    """
    solver = getattr(runner, "solver", None)
    if slots.get("read") is not None:
        slots["read"] = read_plan(slots["read"], solver.state_widths())
    hint = getattr(solver, "divergence_hint", DIVERGENCE_HINT)
    return check_finite(layout.unpack(runner.run(kernel, params, **slots)), iteration, hint)


def run_shard_rounds(runner: PassRunner, layout, kernel: str, params, next_params, rounds: int, iteration: int,
                     **slots) -> list[dict]:
    """Run the rounds of :meth:`PassRunner.run_shard_rounds`; return each round's sums, unpacked and checked to be finite.

    With ``score=`` the pair (those, the held-out score sums).
    """
    hint = getattr(getattr(runner, "solver", None), "divergence_hint", DIVERGENCE_HINT)
    out = runner.run_shard_rounds(kernel, params, next_params, rounds, **slots)
    passes, held = out if slots.get("score") is not None else (out, None)
    passes = [check_finite(layout.unpack(sums), iteration, hint) for sums in passes]
    return passes if slots.get("score") is None else (passes, held)

def shard_groups(n_chunks: int, n_shards: int) -> list[list[int]]:
    """Return the chunk indices of each shard: ``n_shards`` groups of consecutive chunks, sizes differing by ≤ 1."""
    if not 1 <= n_shards <= n_chunks:
        raise InputError(f"--shards {n_shards} needs between 1 and {n_chunks} shards: the training rows are "
                         f"{n_chunks} chunks; pass a smaller --chunk-rows or fewer --shards")
    return [part.tolist() for part in np.array_split(np.arange(n_chunks), n_shards)]


def run_pass_held_out(runner: PassRunner, layout, kernel: str, params, iteration: int, checked=None,
                      **slots) -> tuple[dict, dict | None]:
    """Run one pass over the training rows (``chunks=``: of a sample of the chunks) and all held-out rows.

    The training rows read and write state as in :func:`run_pass`; the
    held-out rows are passed ``state=None`` and write nothing. Return both
    sums, unpacked and checked (held-out: None when nothing is held out). ``checked``: the names of the sums
    checked (None: all; Gauss-Newton's step choice leaves its further trials' sums to its own test).
    """
    solver = getattr(runner, "solver", None)
    if slots.get("read") is not None:
        slots["read"] = read_plan(slots["read"], solver.state_widths())
    hint = getattr(solver, "divergence_hint", DIVERGENCE_HINT)
    train, held = runner.run(kernel, params, held_out=True, **slots)

    def check(sums: dict) -> dict:
        check_finite(sums if checked is None else {name: sums[name] for name in checked}, iteration, hint)
        return sums

    return check(layout.unpack(train)), (None if held is None else check(layout.unpack(held)))


def initialize(solver, runner: PassRunner) -> LoopState:
    """Write the initial state (if the solver keeps one) and return the client state of iteration 0."""
    return solver.initialize(runner)


def iterate(solver, runner: PassRunner, state: LoopState, until: int) -> Iterator[tuple[LoopState, dict]]:
    """Yield (client state, metrics) after each iteration ``state.iteration + 1 .. until``."""
    while state.iteration < until:
        k = state.iteration + 1
        try:
            state, metrics = solver.advance(runner, state)
        except NumericalError as exc:
            if exc.iteration is not None:
                raise
            raise NumericalError(f"iteration {k}: {exc}", iteration=k) from None
        yield state, metrics
