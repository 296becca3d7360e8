"""One pass of a solver's chunk kernels over the sample chunks, as Dask work.

Each chunk is one task: it reads its rows of the data and of the committed
state slot from Zarr, runs the solver's NumPy kernel (one BLAS thread),
writes the new state into the *uncommitted* slot (so a retried task rewrites
the same bytes) and returns its partial sums as one float64 vector. A sharded
solver's pass (``run_shard_rounds``) is one task per shard and averaging round, a
fixed group of consecutive chunks read one after another, with per-shard state in
the same two-slot scheme, all rounds of a pass one graph. The
vectors are tree-reduced (``split_every`` at a time) and only the sum — a few
MB at most — reaches the client. No full-size array ever leaves a worker.

Scores, predictions and the statistics pass are Dask collections over the
data store: sums over its chunks are a Dask bag reduction
(:func:`chunk_sums`), predictions a Dask array (:func:`storage.data.rows_array`,
a checked ``da.from_zarr``, and ``map_blocks``) stored into Zarr.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
import uuid

import dask
import numpy as np
import zarr

from pipeline.alignment import aligned
from pipeline.placement import loose_placement
from solvers.linalg import one_blas_thread
from solvers.loop import chunk_kernel, chunk_parts, shard_groups, shard_slot
from solvers.losses import encode_labels, predict_classes
from solvers.scores import classification_sums, probabilities
from solvers.tiling import chunk_bounds
from solvers.stats import moment_sums
from solvers.tasks import score_sums
from solvers.validation import select
from storage.cache import ChunkCache
from storage.data import read_rows, rows_array
from storage import state_io
from storage.runstore import shard_state_path
from storage.state_io import new_owner

SPLIT_EVERY = 8
DATA_CACHE_MAX = 512 * 2**20  # a worker keeps at most this much decoded data (a quarter of its memory limit if less)
_data_cache: ChunkCache | None = None


# -- worker side ------------------------------------------------------------------------
def _array(store: str, path: str, mode: str = "r"):
    return zarr.open_array(store=store, path=path, mode=mode)


def data_cache() -> ChunkCache:
    """Return this process's cache of decoded data chunks (:mod:`storage.cache`), made at first use.

    Its budget is :data:`DATA_CACHE_MAX`, or a quarter of the worker's memory
    limit when that is less: data bigger than that is streamed from disk every pass.
    The process's activation cache (:mod:`solvers.activation_cache`) is held to an
    eighth of the limit likewise (a 256 MiB worker pauses at 205 MiB: 192 MiB of
    kept activations on top of its base and a chunk task would not fit), its input
    and last-hidden-layer caches to a sixteenth each, and its cache of written state
    chunks (:mod:`storage.state_io`) to an eighth: a run fills that or the activation
    cache, not both (Gauss-Newton keeps activations, the ADMM solvers state).
    """
    global _data_cache
    if _data_cache is None:
        budget = DATA_CACHE_MAX
        try:
            from distributed import get_worker

            limit = get_worker().memory_manager.memory_limit
            if limit:
                budget = min(budget, int(limit) // 4)
                from solvers.activation_cache import BUDGET, CACHE, INPUTS, INPUTS_BUDGET, OUTPUTS, OUTPUTS_BUDGET

                CACHE.budget = min(BUDGET, int(limit) // 8)
                INPUTS.budget = min(INPUTS_BUDGET, int(limit) // 16)
                OUTPUTS.budget = min(OUTPUTS_BUDGET, int(limit) // 16)
                state_io.STATE.budget = min(state_io.STATE_BUDGET, int(limit) // 8)
        except (ImportError, ValueError, AttributeError):  # not in a worker (an in-memory test, a benchmark)
            pass
        _data_cache = ChunkCache(budget)
    return _data_cache


def clear_data_cache() -> None:
    """Forget this process's decoded data chunks and kept activations (after a run: thread workers live in the caller's process)."""
    from solvers.activation_cache import CACHE, INPUTS, OUTPUTS

    CACHE.clear()
    INPUTS.clear()
    OUTPUTS.clear()
    state_io.STATE.clear()
    if _data_cache is not None:
        _data_cache.clear()


def _read_xy(data: str, start: int, stop: int, classes=None):
    """Return rows [start, stop) of X and y (via :func:`data_cache`); y as class indices of ``classes``, or as stored if None."""
    cache = data_cache()
    x = cache.read(data, "X", start, stop)
    y = cache.read(data, "y", start, stop)
    return x, (y if classes is None else encode_labels(y, classes))


def _read_state(run: str, reads: dict, start: int, stop: int, owner=None) -> dict:
    """Return the chunk's rows of each state array ``name`` of iteration ``reads[name]`` (:func:`storage.state_io.read_state`)."""
    return {name: state_io.read_state(run, name, start, stop, k, owner) for name, k in reads.items()}


def _write_state(run: str, iteration: int, state: dict, start: int, stop: int, owner=None) -> None:
    """Write the chunk's rows of the state of ``iteration`` into its slot, kept for ``owner``'s next read."""
    for name, block in state.items():
        state_io.write_state(run, name, start, stop, block, iteration, owner)


def chunk_task(bundle, data, run, reads, write, start, stop, split=None, train=True, held=False, part=None, owner=None):
    """Run one solver kernel on the rows [start, stop) of a chunk; return its sums (``held``: the pair).

    ``bundle`` is (solver, kernel name, params). The kernel sees y as class
    indices, or as the stored real values for a regression solver (its
    ``classes`` is None). With ``train`` it runs on the chunk's training rows
    (all rows without a ``split``): the state arrays are read as of the
    iterations ``reads`` names ({name: iteration}) and the kernel's new state is
    written as iteration ``write``'s (either may be None; held-out rows get
    zeros), each in its slot (iteration mod 2). The slot written is never the
    committed one, so a retried task rewrites the same bytes. ``owner`` (the
    runner's token): the chunks this process writes are kept for its next read
    (:mod:`storage.state_io`). With ``held`` it also runs statelessly on the chunk's held-out rows
    from the same read, and the task returns (training sums, held-out sums),
    either None where the chunk has no such rows (:func:`solvers.loop.chunk_kernel`).
    ``part`` = (j, parts): this task runs the j-th part of the training rows (:func:`solvers.loop.chunk_parts`,
    stateless kernels) and, if j is 0, the held-out rows.
    """
    solver, kernel, params = bundle
    params = aligned(params)
    fn = getattr(solver, kernel)
    sums = held_sums = None
    with one_blas_thread():
        x, y = _read_xy(data, start, stop, solver.classes)
        if train and (split is None or len(select(split, start, stop, "train"))):  # earlier stores: whole chunks held
            state = None if reads is None else _read_state(run, reads, start, stop, owner)
            new_state, sums = chunk_kernel(fn, x, y, state, start, params, split, part=part)
            if write is not None and new_state is not None:
                _write_state(run, write, new_state, start, stop, owner)
        if held and (part is None or part[0] == 0):
            held_sums = chunk_kernel(fn, x, y, None, start, params, split, "held")[1]
    return (sums, held_sums) if held else sums


_CLAIMS: dict = {}  # a pass's token -> the iterator of its spec indices not yet taken (in-process clusters: shared)
_CLAIMS_LOCK = threading.Lock()


def claimed_chunk_tasks(bundle, specs, token: str) -> list:
    """Run :func:`chunk_task` of ``bundle`` on the ``specs`` this thread takes, one at a time, from the pass ``token``'s
    shared queue (:data:`_CLAIMS`) until it is empty; return ``[(index, result)]``.

    One such task per worker thread of an in-process cluster runs a whole pass: a thread that finishes a chunk takes
    the next one not taken, so chunks of unequal cost (a grown sample's new chunks sum the input Gram and miss the
    kept activations: ~3x a kept one's CPU) spread over the threads as a pool's do. A task retried after an error
    finds the chunks it had taken gone from the queue: the caller runs the missing ones again (:meth:`DaskRunner._submit`).
    """
    out = []
    queue = _CLAIMS.get(token)
    while queue is not None:
        with _CLAIMS_LOCK:
            i = next(queue, None)
        if i is None:
            break
        out.append((i, chunk_task(bundle, *specs[i])))
    return out


class _Rows:
    """Rows ``rows`` of the array ``x``, gathered only when indexed: ``view[i]`` is ``x[rows][i]`` without the copy of ``x[rows]``."""

    def __init__(self, x, rows):
        self.x, self.rows = x, rows
        self.shape = (len(rows), *x.shape[1:])

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.x[self.rows[i]]


class _ZarrChunks:
    """A shard's chunks in a data store (their training rows), each read from Zarr when the kernel asks for it.

    With rows held out, ``read`` gives x as :class:`_Rows` of the cached chunk: the kernel gathers its
    minibatches' rows (the same values) from it, rather than a copy of the chunk's training rows (22 MB
    of new memory for an MNIST chunk in every round: 4-60 ms, faulting it in).
    """

    def __init__(self, data, bounds, classes, split=None):
        self.data, self.bounds, self.classes, self.split = data, bounds, classes, split

    def __len__(self):
        return len(self.bounds)

    def read(self, i):
        x, y = _read_xy(self.data, *self.bounds[i], self.classes)
        rows = select(self.split, *self.bounds[i], "train")
        return (x, y) if rows is None else (_Rows(x, rows), y[rows])

    def n_rows(self):
        return sum(b - a if (r := select(self.split, a, b, "train")) is None else len(r) for a, b in self.bounds)


def _read_shard_state(run: str, slot: int, names, shard: int) -> dict:
    """Return the shard's row of each per-shard state array of ``slot``, checked (:func:`storage.state_io.read_chunk_rows`)."""
    return {name: state_io.read_chunk_rows(run, shard_state_path(slot, name), shard, shard + 1)[0] for name in names}


def shard_round_task(solver, kernel, params, data, run, read_slot, state, write_slot, shard, chunk_bounds, split=None,
                     keep=True):
    """Run one round of a shard pass (:meth:`DaskRunner.run_shard_rounds`); return (new state if ``keep``, sums).

    The state is ``state`` (round r − 1's, from memory) or, if None, read from slot ``read_slot``
    (round 0); it is written to ``write_slot`` if given (the last round), never to the slot read.
    """
    params = aligned(params)
    with one_blas_thread():
        if state is None and read_slot is not None:
            state = _read_shard_state(run, read_slot, solver.shard_state_widths(), shard)
        new_state, sums = getattr(solver, kernel)(_ZarrChunks(data, chunk_bounds, solver.classes, split), state,
                                                  shard, params)
        if write_slot is not None:  # Zarr's bytes, written directly (storage.state_io): ~1 ms against ~25 for 3 × 1.9 MB
            for name, value in new_state.items():
                state_io.write_rows(run, shard_state_path(write_slot, name), shard, shard + 1,
                                    np.asarray(value, np.float64).reshape(1, -1))
    return (new_state if keep else None), sums


def _round_sum(previous, shard: int):
    """Return the sum of a round's shard sums, in shard order as :func:`tree` adds them (``previous[shard]``: the (state, sums) pair)."""
    previous = aligned(previous)
    return _tree_sum([p[1] if j == shard else p for j, p in enumerate(previous)])


def next_round_task(solver, kernel, step, r: int, previous, data, run, write_slot, shard, chunk_bounds, split=None,
                    keep=True):
    """Run round r > 0 of a shard pass from round r − 1's results (:meth:`DaskRunner.run_shard_rounds`): (state if ``keep``, sums).

    ``previous`` holds round r − 1's results in shard order: this shard's (state, sums) pair, the other
    shards' sums. The task takes the consensus step itself, ``step(r, Σ_s sums_s)`` (the client's
    function on the same sums in the same order: every shard's task gets the same bytes), so a round
    follows the last in one hop from the shard tasks, without a step task between them.
    """
    params = step(r, _round_sum(previous, shard))
    return shard_round_task(solver, kernel, params, data, run, None, previous[shard][0], write_slot, shard, chunk_bounds,
                            split, keep)


def _score_shard(data, chunk_bounds, network, split):
    """Return the summed :func:`_score_chunk` of the network over the held-out rows of a shard's chunks."""
    with one_blas_thread():
        return np.sum([_score_chunk(data, a, b, network, split) for a, b in chunk_bounds], axis=0)


def _score_shard_after(data, chunk_bounds, score, previous, shard: int, split):
    """Return :func:`_score_shard` of ``score(Σ_s sums_s)``, the network of the last round's shard sums (``previous``)."""
    return _score_shard(data, chunk_bounds, score(_round_sum(previous, shard)), split)


# -- client side ------------------------------------------------------------------------
def bounds(n: int, chunk_rows: int):
    """Return the (start, stop) rows of every chunk."""
    return chunk_bounds(n, chunk_rows)


def broadcast(obj):
    """Return ``obj`` as one literal task of the graph, fetched by every chunk task that needs it.

    Unlike scattered data, a literal in the graph is recomputed by the scheduler
    if the worker holding it leaves (walltime, lifetime, a crash).
    """
    return dask.delayed(obj, pure=False, traverse=False)


def _sum(*parts):
    """Return the sum of the parts (None: a chunk without such rows), or of each side of (train, held) pairs."""
    if parts and isinstance(parts[0], tuple):
        return tuple(_sum(*side) for side in zip(*parts))
    parts = [p for p in parts if p is not None]
    if len(parts) > 1 and _same_float_arrays(parts):
        out = np.add(parts[0].dtype.type(0), parts[0], order="C")  # np.sum's order, 0 + p0 + p1 + ..., without stacking a copy
        for p in parts[1:]:
            out += p
        return out
    return np.sum(parts, axis=0) if parts else None


def _same_float_arrays(parts) -> bool:
    """Return whether the parts are float arrays of one dtype and shape with more than one element.

    For those ``np.sum(parts, axis=0)`` adds the stacked parts elementwise in order
    from its identity (``tests/test_passes.py`` checks it bitwise); for a single
    element it would sum pairwise, and mixed dtypes would be cast.
    """
    first = parts[0]
    if type(first) is not np.ndarray or first.dtype.kind not in "fc" or first.size < 2:
        return False
    return all(type(p) is np.ndarray and p.dtype == first.dtype and p.shape == first.shape for p in parts)


def _tree_sum(parts, split_every: int = SPLIT_EVERY):
    """Return what ``tree(parts)`` computes, here and now: :func:`_sum` of ``split_every`` parts at a time, level by level."""
    while len(parts) > 1:
        parts = [_sum(*parts[i:i + split_every]) for i in range(0, len(parts), split_every)]
    return parts[0]


def tree(parts, combine=_sum, split_every: int = SPLIT_EVERY):
    """Return a delayed tree reduction of delayed parts, ``split_every`` at a time."""
    combine = dask.delayed(combine, pure=False)
    while len(parts) > 1:
        parts = [combine(*parts[i:i + split_every]) for i in range(0, len(parts), split_every)]
    return parts[0]


class DaskRunner:
    """Runs solver passes over a data store and a run store on a Dask cluster (a PassRunner)."""

    def __init__(self, client, solver, data_path, run_path, chunks, progress: bool = False, retries: int = 3,
                 recorder=None, split=None):
        self.client = client
        self.solver = solver
        self.data = str(data_path)
        self.run_path = str(run_path)
        self.bounds = list(chunks)
        self.split = split  # the held-out rows (solvers.validation), or None
        self.progress = progress
        self.retries = retries
        self.recorder = recorder  # .on_pass(kernel, seconds, rows, read_bytes) after each pass (the /training page)
        self.passes: list[tuple] = []  # (seconds, rows, read bytes) of the passes since take_pass_rates()
        self._data_row_bytes = None
        self._local = None  # whether the scheduler is in this process (_in_process)
        self._nthreads = None  # the cluster's worker threads (_threads)
        self.owner = new_owner()  # names this runner's state chunks in the workers' caches (storage.state_io)

    def compute(self, *delayed_values):
        """Compute delayed values on the cluster, with a progress bar when asked."""
        return self._gather(self.client.compute(list(delayed_values), retries=self.retries))

    def _gather(self, futures):
        """Return the futures' results (aligned), with a progress bar when asked."""
        if self.progress:
            from distributed import progress

            with contextlib.redirect_stdout(sys.stderr):
                progress(futures, notebook=False)
            print(file=sys.stderr)
        return aligned(self.client.gather(futures))

    def run(self, kernel, params, *, read=None, write=None, chunks=None, held_out=False):
        plan = read  # {array name: iteration} or None (solvers.loop.run_pass makes the dict)
        sample = range(len(self.bounds)) if chunks is None else set(chunks)  # a sample of the chunks
        held = held_out and self.split is not None  # every chunk's held-out rows, read with its training rows
        t0 = time.perf_counter()
        places = self._chunk_places()
        parts = chunk_parts(self.solver, len(sample)) if plan is None and write is None else 1
        specs = []  # (chunk_task's arguments after the bundle, the task's worker annotation)
        for i, (a, b) in enumerate(self.bounds):
            if held or i in sample:
                cut = parts if i in sample and parts > 1 else 1
                specs.extend(((self.data, self.run_path, plan, write, a, b, self.split, i in sample, held,
                               (j, cut) if cut > 1 else None, self.owner), places[i]) for j in range(cut))
        if 1 <= len(specs) <= SPLIT_EVERY and self._in_process():  # the sum on the client: one task and hop less
            results = self._submit((self.solver, kernel, params), specs)
            sums = results[0] if len(results) == 1 else _sum(*results)  # what tree() would give, same parts in order
        else:
            shared = broadcast((self.solver, kernel, params))
            fn = dask.delayed(chunk_task, pure=False)
            tasks = []
            for args, place in specs:
                with dask.annotate(**place):
                    tasks.append(fn(shared, *args))
            sums = self.compute(tree(tasks))[0]
        if held_out and not held:
            sums = sums, None
        self._record(kernel, time.perf_counter() - t0, plan, [b for i, b in enumerate(self.bounds) if i in sample])
        return sums

    def _submit(self, bundle, specs, claim: bool = True) -> list:
        """Run chunk_task(bundle, *args) for each spec as futures of an in-process cluster; return their results in order.

        On an in-process cluster the bundle reaches every task by reference; submitted as
        futures it is not tokenized (pickled) as a graph literal is, which cost ~10-15 ms a pass.
        More specs than worker threads (all placed alike) become one task per thread
        (:func:`claimed_chunk_tasks`: each thread takes the next chunk not taken when it finishes one, the chunks of
        the most rows first, then those of held-out rows alone; keys
        ``chunk_task_xk-…`` for about k chunks, which the /training page counts as k): each task
        costs the scheduler's round trip through the event loop, which the worker
        threads wait on (MNIST 10k: 6 chunk tasks a pass on 2 threads, ~10 ms a pass;
        ``benchmarks/results/end_to_end_breakdown_s9.md``). Taken from a shared queue, not split in fixed groups
        of equal rows beforehand (to session 14): a grown sample's pass B has chunks of ~3x the others' cost, and
        one thread ran 100-150 ms longer than the other (``benchmarks/results/t10prof_s15.md``). The results come
        back in the specs' order, so the client sums the same parts in the same order (bitwise), whichever thread
        ran which chunk.
        """
        place = specs[0][1]
        alike = all(p == place for _, p in specs)
        threads = self._threads()
        if claim and len(specs) > threads and alike:
            token = uuid.uuid4().hex
            # the largest first (rows the kernel runs on; ties: the chunk order), so small tasks fill the ends
            _CLAIMS[token] = iter(sorted(range(len(specs)), key=lambda i: (-self._spec_rows(specs[i][0]), i)))
            sizes = [len(specs) // threads + (j < len(specs) % threads) for j in range(threads)]
            keys = [f"chunk_task_x{k}-{uuid.uuid4().hex}" for k in sizes]  # the /training page counts k chunks
            args = [a for a, _ in specs]
            try:
                futures = self.client.map(claimed_chunk_tasks, [bundle] * threads, [args] * threads, [token] * threads,
                                          key=keys, pure=False, retries=self.retries, **place)
                results = [None] * len(specs)
                done = [False] * len(specs)
                for out in self._gather(futures):
                    for i, r in out:
                        results[i], done[i] = r, True
            finally:
                _CLAIMS.pop(token, None)
            missing = [i for i in range(len(specs)) if not done[i]]  # taken by a task that failed, then retried
            # one task each (claim=False): a chunk that fails on every try (a deleted data chunk) raises its error
            # after the retries; claimed again, its retried task found the queue empty and "succeeded", forever
            for i, r in zip(missing, self._submit(bundle, [specs[i] for i in missing], claim=False) if missing else ()):
                results[i] = r
            return results
        if alike:
            columns = list(zip(*(args for args, _ in specs)))
            futures = self.client.map(chunk_task, [bundle] * len(specs), *columns, pure=False, retries=self.retries, **place)
        else:
            futures = [self.client.submit(chunk_task, bundle, *args, pure=False, retries=self.retries, **p) for args, p in specs]
        return self._gather(futures)

    def _spec_rows(self, args) -> float:
        """Return about how many rows a chunk task of ``args`` runs its kernel on: its part of the chunk, or its held-out rows."""
        a, b, in_sample, part = args[4], args[5], args[7], args[9]
        if in_sample:
            return (b - a) / (part[1] if part else 1)
        return (b - a) * getattr(self.split, "fraction", 1.0)

    def _threads(self) -> int:
        """Return the cluster's worker threads, asked once (an in-process cluster keeps its one worker)."""
        if self._nthreads is None:
            self._nthreads = max(1, sum(self.client.nthreads().values()))
        return self._nthreads

    def _in_process(self) -> bool:
        """Return whether the scheduler runs in this process (a threads cluster): its results reach the client uncopied."""
        if self._local is None:
            self._local = str(getattr(self.client.scheduler, "address", "")).startswith("inproc://")
        return self._local

    def _record(self, kernel, seconds, plan, bounds):
        """Note a pass's time, rows and bytes read (data rows plus the float32 state arrays it read)."""
        if self._data_row_bytes is None:
            arrays = [_array(self.data, name) for name in ("X", "y")]  # each opened once
            self._data_row_bytes = sum(a.dtype.itemsize * int(np.prod(a.shape[1:])) for a in arrays)
        widths = self.solver.state_widths()
        rows = sum(b - a for a, b in bounds)
        read = rows * (self._data_row_bytes + 4 * sum(widths[name] for name in (plan or {})))
        self.passes.append((seconds, rows, read))
        if self.recorder is not None:
            self.recorder.on_pass(kernel, seconds, rows, read)

    def take_pass_rates(self) -> dict:
        """Return rows/s and MB/s read over the passes since the last call (an iteration's), and forget them."""
        seconds = sum(p[0] for p in self.passes)
        rows, read = sum(p[1] for p in self.passes), sum(p[2] for p in self.passes)
        n, self.passes = len(self.passes), []
        if not n or seconds <= 0:
            return {}
        return {"passes": n, "rows_per_second": rows / seconds, "read_mb_per_second": read / 1e6 / seconds}

    def _chunk_places(self) -> list[dict]:
        """Return each chunk task's worker annotation: a sharded solver's chunk on its shard's worker, a chunk
        with per-sample state on one worker thread every pass (:func:`shard_places`), else none.

        A sharded solver's chunk passes (α's pass A, a hand-over's Gauss-Newton passes)
        then read each chunk on the worker whose data cache its shard task fills and reads
        again: placed by the scheduler, about half the chunks of a pass were decoded a second
        time on the other worker (a fresh cluster's first iteration reads every chunk twice).
        A chunk's state is kept by the worker that wrote it (:mod:`storage.state_io`): placed by
        the scheduler, half the state reads of two process workers missed it.
        """
        if self.solver.state_widths():
            return shard_places(self.client, len(self.bounds))
        if not getattr(self.solver, "sharded", False) or not self.solver.config.shards:
            return [{} for _ in self.bounds]
        groups = shard_groups(len(self.bounds), self.solver.config.shards)
        places = shard_places(self.client, len(groups))
        out = [{} for _ in self.bounds]
        for shard, group in enumerate(groups):
            for i in group:
                out[i] = places[shard]
        return out

    def run_shard_rounds(self, kernel, params, next_params, rounds, *, read=None, write=None, score=None):
        """One graph for all rounds: round r's shard tasks take round r − 1's results (worker memory) and ``next_params``.

        Only the round trips to the client are saved: every round's sums come back (the client's
        metrics). Each shard task of round r > 0 takes the consensus step ``next_params`` itself from
        round r − 1's shard sums (:func:`next_round_task`), and each held-out scoring task the network
        ``score`` of the last round's, so a round starts one hop after the last ends (a step task
        between them cost two more hops and a transfer: ~25 ms a round on two process workers).
        """
        solver = broadcast(self.solver)
        first = dask.delayed(shard_round_task, pure=False, nout=2)
        later = dask.delayed(next_round_task, pure=False, nout=2)
        step = broadcast(next_params)
        groups = shard_groups(len(self.bounds), self.solver.config.shards)
        read_slot = None if read is None else shard_slot(read)
        write_slot = None if write is None else shard_slot(write)
        places = shard_places(self.client, len(groups))
        shared, tasks, out = broadcast(params), [], []
        for r in range(rounds):
            last = r == rounds - 1
            done, tasks = tasks, []
            for shard, group in enumerate(groups):
                chunks, write_to = [self.bounds[i] for i in group], write_slot if last else None
                with dask.annotate(**places[shard]):
                    if r == 0:
                        tasks.append(first(solver, kernel, shared, self.data, self.run_path, read_slot, None, write_to,
                                           shard, chunks, self.split, not last))
                    else:
                        tasks.append(later(solver, kernel, step, r, _previous(done, shard), self.data, self.run_path,
                                           write_to, shard, chunks, self.split, not last))
            out.append(tree([t[1] for t in tasks]))
        if score is None:
            return list(self.compute(*out))
        network, held = broadcast(score), []
        for shard, group in enumerate(groups):  # the held-out rows of the shard's chunks, on its worker (cached)
            with dask.annotate(**places[shard]):
                held.append(dask.delayed(_score_shard_after, pure=False)(
                    self.data, [self.bounds[i] for i in group], network, _previous(tasks, shard), shard, self.split))
        *sums, held = self.compute(*out, tree(held))
        return sums, held


def _previous(tasks, shard: int) -> list:
    """Return a round's shard tasks as shard ``shard``'s next task takes them: its own (state, sums) pair, the others' sums."""
    return [t if j == shard else t[1] for j, t in enumerate(tasks)]


def shard_places(client, n_shards: int) -> list[dict]:
    """Return each shard task's worker annotation: shard s on worker thread s mod T of the sorted worker threads.

    Without it every shard task depends only on the broadcast parameters, and
    the scheduler puts them all on the one worker that holds those (measured: the
    two shard tasks of a pass ran one after the other on one of two workers). A
    fixed place also keeps a shard's chunks in one worker's data cache. The
    restriction is loose: a shard whose worker has gone runs elsewhere, also
    when every worker had gone (:mod:`pipeline.placement`); a scheduler that
    cannot take that plugin gets no placement.
    """
    if not loose_placement(client):
        return [{} for _ in range(n_shards)]
    try:
        threads = sorted(client.nthreads().items())
    except Exception:  # noqa: BLE001 -- a client that cannot say: let the scheduler choose
        threads = []
    slots = [address for address, n in threads for _ in range(max(1, int(n)))]
    if not slots:
        return [{} for _ in range(n_shards)]
    return [{"workers": [slots[s % len(slots)]], "allow_other_workers": True} for s in range(n_shards)]


# -- inference and statistics: Dask collections over the data store ---------------------------
# Sums over a store's chunks are a Dask bag (one partition per chunk, reduced SPLIT_EVERY at a time, in
# order: the sums are bitwise those of :func:`tree`). Not a Dask array: importing dask.array on a worker
# costs ~140 MiB (its duck-array backends), twice the worker base that pipeline/memory.py budgets.
def _sum_all(parts):
    return np.sum(list(parts), axis=0)


def _union_all(parts):
    return np.unique(np.concatenate(list(parts)))


def _on_chunk(bounds, fn, data, *args):
    with one_blas_thread():
        return fn(data, *bounds, *args)


def chunk_sums(fn, data_path, chunks, *args, combine=_sum_all):
    """Return the Dask sum (``combine``) of ``fn(data, start, stop, *args)`` over the (start, stop) chunks of a data store.

    ``args`` (e.g. a :func:`broadcast` network) go to every chunk; each
    chunk runs on one BLAS thread.
    """
    import dask.bag as db

    bag = db.from_sequence([tuple(b) for b in chunks], npartitions=len(chunks))
    return bag.map(_on_chunk, fn, str(data_path), *args).reduction(combine, combine, split_every=SPLIT_EVERY)


def _score_chunk(data, start, stop, network, split=None):
    """Return :func:`solvers.tasks.score_sums` of the network's predictions on rows [start, stop) (those ``split`` holds out)."""
    x, y, network = *_read_xy(data, start, stop), aligned(network)
    if split is not None:
        rows = select(split, start, stop, "held")
        x, y = x[rows], y[rows]
    return score_sums(network.predict(x), y, None if network.classes is not None else float(np.asarray(network.y_mean)[0]))


def _metrics_chunk(data, start, stop, network):
    """Return :func:`solvers.scores.classification_sums` (n, correct, log-loss, AUC histograms) of rows [start, stop)."""
    x, y, network = *_read_xy(data, start, stop), aligned(network)
    classes = np.asarray(network.classes)
    order = np.argsort(classes, kind="stable")  # the codes of a run's text labels in a numeric store need not increase
    pos = np.minimum(np.searchsorted(classes[order], y), len(classes) - 1)
    idx = np.where(classes[order][pos] == y, order[pos], -1)
    z = network.decision_function(x)
    return classification_sums(probabilities(z, network.link), idx, predict_classes(z))


def score_sums_graph(network, data_path, chunks, metrics=False, split=None):
    """Return the Dask sums of :func:`solvers.tasks.score_sums` of the network over the given chunks of a data store.

    ``metrics`` (a classifier): :func:`_metrics_chunk`'s sums instead (accuracy, log-loss, AUC).
    ``split``: over the rows it holds out only (the early-stopping score; not with ``metrics``).
    """
    if split is not None:
        return chunk_sums(_score_chunk, data_path, chunks, broadcast(network), split)
    fn = _metrics_chunk if metrics and not network.is_regressor else _score_chunk
    return chunk_sums(fn, data_path, chunks, broadcast(network))


def other_labels_graph(data_path, chunks, classes):
    """Return the Dask {label: rows} of the labels of a data store's chunks that are not among ``classes``."""
    return chunk_sums(_other_labels, data_path, chunks, np.asarray(classes, np.float64), combine=_merge_counts)


def _other_labels(data, start, stop, classes):
    """Return {label: rows} of the labels in rows [start, stop) that are not among ``classes``."""
    y = data_cache().read(data, "y", start, stop)
    values, counts = np.unique(y[~np.isin(y, classes)], return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def _merge_counts(parts):
    total = {}
    for part in parts:
        for label, rows in part.items():
            total[label] = total.get(label, 0) + rows
    return total


def predictions(network, data_path, chunk_rows: int):
    """Return the Dask array of the network's predicted labels (a regressor: values), one block per ``chunk_rows`` rows.

    Its blocks read X through :func:`storage.data.rows_array` (a damaged chunk is one error line).
    """
    dtype = np.dtype(np.float64 if network.is_regressor else np.asarray(network.classes).dtype)
    x = rows_array(data_path, "X", chunk_rows)  # an unlabeled store (--no-labels) has no y
    return x.map_blocks(_predict_block, broadcast(network), drop_axis=1, dtype=dtype, meta=np.empty((0,), dtype))


def _predict_block(x, network):
    """Return the network's predictions of a row block, on one BLAS thread."""
    with one_blas_thread():
        return aligned(network).predict(x)


def data_moments(client, data, regression: bool):
    """Return (moment sums, shift, distinct labels or None) of a data store: of ``X``, or of ``[X, y]`` for regression.

    They come from the statistics the data store recorded when it was written
    (no pass over the data); a store without them gets one :func:`data_statistics` pass.
    """
    d = data.n_features
    recorded = data.statistics
    if recorded is None:
        shift = np.asarray(data.X[0], np.float64)
        if regression:  # the moments of [X, y]: the target scaling comes from the same pass
            shift = np.append(shift, data.y[0])
        sums, labels = data_statistics(client, data.path, data.n_samples, data.chunk_rows, shift,
                                       labels=not regression)
        return sums, shift, labels
    shift, sums, labels = recorded["shift"], recorded["sums"], recorded["labels"]
    if regression:
        return sums, shift, None
    # the moments of X alone: drop y's column; labels None: more distinct values than the store records
    moments = (sums[1 + p * (d + 1):1 + p * (d + 1) + d] for p in range(4))  # Σ(v − s)^p, p = 1..4
    return np.concatenate([sums[:1], *moments]), shift[:d], labels


def _moments_chunk(data, start, stop, shift, with_y):
    """Return the shifted moment sums of X rows [start, stop), or of [X, y] (standardisation statistics)."""
    x = read_rows(data, "X", start, stop)
    return moment_sums(np.column_stack([x, read_rows(data, "y", start, stop)]) if with_y else x, shift)


def _labels_chunk(data, start, stop):
    return np.unique(read_rows(data, "y", start, stop))


def data_statistics(client, data_path, n_samples, chunk_rows, shift, labels=True):
    """Return (moment sums, distinct labels) of a data store in one pass.

    With ``labels=False`` (regression) the moments are those of the columns
    ``[X, y]`` (``shift`` has d + 1 entries) and the labels are None.
    """
    chunks = bounds(n_samples, chunk_rows)
    moments = chunk_sums(_moments_chunk, data_path, chunks, shift, not labels)
    if not labels:
        return client.compute(moments, sync=True), None
    return client.compute([moments, chunk_sums(_labels_chunk, data_path, chunks, combine=_union_all)], sync=True)
