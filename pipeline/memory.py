"""How big a chunk is (default_chunk_rows) and whether it fits a worker: --dry-run's warning, the out-of-memory message.

A chunk task holds its rows of X and of the per-sample state (read and
written), the row tiles of the layers' activations, and the layers' Gram and
curvature matrices (float64):
``bytes ≈ 2·4·rows·(d + S) + 2.5·8·Σ_l ((n_{l−1}+1)² + n_l²) + 32 MiB``
(d features, n_l the layer widths, S the solver's per-sample state width).
Measured peaks of one chunk task (one worker process, 2 iterations; the
process itself used 90 MiB more):

====================================  ===========  ========
solver, d, hidden, rows               measured     estimate
====================================  ===========  ========
gauss-newton, 50, 2000, 2000          171 MiB      185 MiB
admm, 50, 2000, 2000                  159 MiB      216 MiB
gauss-newton, 200, 300, 20000          54 MiB       67 MiB
admm, 200, 300, 20000                  97 MiB      113 MiB
dladmm, 50, 500, 4000                  67 MiB       74 MiB
====================================  ===========  ========

(the estimate errs high, by 8-36 %; peaks sampled every 50 ms by distributed's
MemorySampler, minus the worker's memory after a restart, on a loaded 2-core
machine). Measured from a fresh worker instead, the first row's peak was
222 MiB: the first task's imports (the solvers, Zarr) add about 50 MiB to the
process, counted in :data:`WORKER_BASE`.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time

import numpy as np
from dask.utils import format_bytes, parse_bytes

from solvers.errors import InputError

WORKER_BASE = 140 * 2**20   # a worker process's own memory: 90 MiB idle (measured) + ~50 MiB of imports
# The worker caches' budgets as shares of its memory limit (pipeline.passes.data_cache): decoded data chunks 1/4,
# kept activations or written state chunks 1/8 (a run fills one of them), input and last-hidden-layer tiles 1/16 each.
CACHE_SHARE = 1 / 4 + 1 / 8 + 1 / 16 + 1 / 16
PAUSED_FOR = 60.0           # seconds a paused, idle worker may stall the whole cluster before the run ends

STATE_CHUNK_BYTES = 128 * 2**20  # target size of one state chunk (64–256 MB)
CHUNKS_PER_THREAD = 3  # small data is split so every worker thread gets at least this many chunks
MIN_CHUNK_ROWS = 512  # but not into chunks smaller than this (per-task overhead ~ms)


def default_chunk_rows(data, state_width: int, threads: int = 1) -> int:
    """Return rows per chunk: ~128 MB of float32 state and data, but at least 3 chunks per worker thread.

    Big data: a whole number of data chunks holding ~128 MB, so a task reads
    whole data chunks (Zarr reads a chunk whole, so a state chunk of half a
    data chunk would read it twice per pass); only when one data chunk alone
    would carry over 512 MB of state is it split in halves. Data too small to
    give every one of the cluster's ``threads`` :data:`CHUNKS_PER_THREAD`
    chunks that way is split finer (no chunk under :data:`MIN_CHUNK_ROWS`
    rows): into whole data chunks, or a power-of-two fraction of one, so that
    tasks still read aligned rows.
    """
    bytes_per_row = 4 * (state_width + data.n_features)
    if data.chunk_rows * bytes_per_row > 4 * STATE_CHUNK_BYTES:
        halvings = math.ceil(math.log2(data.chunk_rows * bytes_per_row / STATE_CHUNK_BYTES))
        rows = max(1, data.chunk_rows >> halvings)
    else:
        rows = data.chunk_rows * max(1, round(STATE_CHUNK_BYTES / bytes_per_row / data.chunk_rows))
    rows = int(min(rows, data.n_samples))
    wanted = CHUNKS_PER_THREAD * max(1, int(threads))
    if math.ceil(data.n_samples / rows) >= wanted:
        return rows
    most = max(MIN_CHUNK_ROWS, math.ceil(data.n_samples / wanted))  # the largest rows that give `wanted` chunks
    if data.chunk_rows >= data.n_samples:  # one data chunk: every split reads the same chunk
        fine = most
    elif most >= data.chunk_rows:
        fine = data.chunk_rows * (most // data.chunk_rows)
    else:
        fine = data.chunk_rows >> max(0, math.ceil(math.log2(data.chunk_rows / most)))
    return int(min(rows, max(1, fine), data.n_samples))


def chunk_working_bytes(rows: int, n_features: int, widths, state_width: int = 0) -> int:
    """Estimated working memory of one chunk task; ``widths`` are the layer widths n_1 … n_L (module docstring)."""
    fan_in = [n_features, *widths[:-1]]
    grams = sum((a + 1) ** 2 + b ** 2 for a, b in zip(fan_in, widths))
    return int(2 * 4 * rows * (n_features + state_width) + 2.5 * 8 * grams + 32 * 2**20)


def worker_limit_setting(kind: str) -> str:
    """The setting that sizes a worker of cluster ``kind`` (``"estimator"``: a fit's, on its own or the user's)."""
    if kind in ("slurm", "pbs"):
        return f"jobqueue.{kind}.memory (DASK_JOBQUEUE__{kind.upper()}__MEMORY)"
    if kind == "estimator":
        return "the memory limit of the client's workers (LocalCluster(memory_limit=…))"
    return "--memory-limit"


def chunk_rows_setting(kind: str) -> str:
    """The setting that sets the rows of a chunk: the estimator's keyword or the command's flag."""
    return "chunk_rows=" if kind == "estimator" else "--chunk-rows"


def dry_run_chunk_bytes(args, config=None, threads: int = 1) -> int | None:
    """For ``--dry-run --data D``: the working memory of one chunk of the run these flags would start (on ``threads``)."""
    if not getattr(args, "data", None):
        return None
    from solvers.config import TrainConfig
    from storage.data import open_data

    data = open_data(args.data)
    config = config or TrainConfig()
    widths = list(config.hidden)
    if config.task == "classification":
        classes = len(np.unique(np.asarray(data.y[: min(data.n_samples, 100_000)])))
        widths.append(1 if classes <= 2 else classes)
    else:
        widths.append(1)
    state = {"gauss-newton": 0, "admm": sum(widths) + widths[-1],
             "dladmm": 2 * sum(widths) + widths[-1]}.get(config.solver, sum(widths))
    rows = args.chunk_rows or default_chunk_rows(data, state, threads)
    return chunk_working_bytes(rows, data.n_features, widths, state)


def pause_fraction() -> float:
    """The share of its memory limit at which a worker pauses: distributed.worker.memory.pause (else terminate, else 1)."""
    import dask
    import distributed  # noqa: F401  (its defaults join dask's config on import)

    for key in ("pause", "terminate"):
        value = dask.config.get(f"distributed.worker.memory.{key}", default=None)
        if value not in (None, False) and 0 < float(value) <= 1:
            return float(value)
    return 1.0


def worker_need_bytes(chunk_bytes: int) -> int:
    """The smallest memory limit a worker process running chunk tasks of ``chunk_bytes`` stays unpaused under.

    The process itself (:data:`WORKER_BASE`), one chunk task and the caches, which fill up to
    :data:`CACHE_SHARE` of the limit, must stay below the pause fraction of it.
    """
    return int((chunk_bytes + WORKER_BASE) / max(0.05, pause_fraction() - CACHE_SHARE))


def fits_message(chunk_bytes: int | None, worker_bytes: int | None, kind: str) -> str | None:
    """A warning line when a chunk of ``chunk_bytes`` (plus the process itself) does not fit ``worker_bytes``."""
    if not chunk_bytes or not worker_bytes or worker_need_bytes(chunk_bytes) <= worker_bytes:
        return None
    return (f"warning: a chunk needs about {format_bytes(chunk_bytes)} of working memory and a worker process about "
            f"{format_bytes(WORKER_BASE)} itself, but a worker pauses at {100 * pause_fraction():g}% of its "
            f"{format_bytes(worker_bytes)} and its caches take up to {CACHE_SHARE:.0%} of it: raise "
            f"{worker_limit_setting(kind)} (to {format_bytes(worker_need_bytes(chunk_bytes))}) or lower --chunk-rows")


def killed_worker_error(exc, client, args, store) -> InputError:
    """One line for a chunk task that killed its workers: memory (the nanny's restart events) or another cause."""
    kind = args.cluster
    try:
        events = [msg for _, msg in client.get_events("worker-restart-memory")]
    except Exception:  # noqa: BLE001 -- the scheduler may be going down
        events = []
    limit = getattr(exc.last_worker, "memory_limit", None)
    work = rows = None
    try:
        from storage.runstore import RunStore

        run = RunStore.open(store)
        rows = run.chunk_rows
        config = run.attrs["config"]
        n_features = len(run.model_arrays()["x_mean"])
        classes = run.model_arrays().get("classes")
        widths = [*(config.get("hidden") or ()), 1 if classes is None or len(classes) <= 2 else len(classes)]
        work = chunk_working_bytes(rows, n_features, widths, sum(run.state_widths.values()))
    except Exception:  # noqa: BLE001 -- the message must come out whatever the store holds
        pass
    tries = exc.allowed_failures + 1
    chunk = (f"a chunk of {rows} rows needs about {format_bytes(work)} of working memory (a worker process "
             f"about {format_bytes(WORKER_BASE)} more)" if work else "a chunk's working memory")
    has = f"a worker has {format_bytes(limit)}" if limit else "a worker's memory limit"
    if events:
        peak = max(e.get("rss", 0) for e in events)
        return InputError(f"workers ran out of memory: {len(events)} worker process(es) killed for memory (up to "
                          f"{format_bytes(peak)} in use), a chunk task failed on {tries}; {chunk}, "
                          f"{has}: raise {worker_limit_setting(kind)} or lower --chunk-rows"
                          + (f" (now {rows})" if rows else ""))
    return InputError(f"a chunk task ({exc.task!r}) was running on each of {tries} workers that died "
                      f"(not for memory, as far as the scheduler knows: see the worker logs); {chunk}, {has}")


def parse_limit(text) -> int | None:
    try:
        return parse_bytes(text) if text not in (None, "auto") else None
    except (ValueError, TypeError):
        return None


class WorkersPaused(BaseException):
    """Raised in the main thread when workers stayed paused for memory with no task progress (a silent hang).

    A BaseException, like KeyboardInterrupt, so no ``except Exception`` on the way eats it; the command turns it
    into its one error line once the cluster is closed.
    """


def _scheduler_transitions(dask_scheduler=None) -> int:
    return int(getattr(dask_scheduler, "transition_counter", 0))


def _worker_paused(dask_worker=None) -> tuple[bool, int, int, int]:
    """(paused, tasks executing, process memory, memory limit) of this worker."""
    from distributed.core import Status

    state = dask_worker.state
    manager = dask_worker.memory_manager
    rss = int(dask_worker.monitor.get_process_memory())
    return dask_worker.status == Status.paused, int(state.executing_count), rss, int(manager.memory_limit or 0)


def paused_message(seconds: float, rss: int, limit: int, kind: str) -> str:
    pause = pause_fraction()
    return (f"workers ran out of memory: a worker was paused for {seconds:.0f} s with no task progress "
            f"({format_bytes(rss)} in use, it pauses at {100 * pause:g}% of its {format_bytes(limit)}); raise "
            f"{worker_limit_setting(kind)} or lower {chunk_rows_setting(kind)}"
            + (" (or wait longer: dask config admm-dask.paused-timeout, in seconds)" if kind == "estimator" else ""))


@contextlib.contextmanager
def stop_when_paused(client, kind: str = "local", seconds: float | None = None, poll: float | None = None):
    """Within the block, raise :class:`WorkersPaused` in this (main) thread once a worker has been paused for memory
    and idle for ``seconds`` while the scheduler made no transition: distributed would otherwise wait forever.

    A watcher thread polls the workers and the scheduler every ``poll`` seconds and, on a stall, signals the main
    thread (SIGUSR1), whose wait the signal interrupts. Outside the main thread (an estimator fitted in a thread: a
    notebook's background job, a thread pool), or where SIGUSR1 is taken, the exception is raised in the calling
    thread asynchronously (``PyThreadState_SetAsyncExc``): distributed waits for results in steps of at most 10 s
    of Python code, so it comes out within ~10 s, with its message wherever it fires. A stall declared as the block
    ends (its work done) raises nothing: the block's result stands. ``seconds`` defaults to dask's config
    ``admm-dask.paused-timeout`` (env ``DASK_ADMM_DASK__PAUSED_TIMEOUT``), else :data:`PAUSED_FOR`; ``poll`` to a
    twelfth of it (at most 5 s).
    """
    import dask

    seconds = float(seconds if seconds is not None else dask.config.get("admm-dask.paused-timeout", default=PAUSED_FOR))
    poll = float(poll if poll is not None else min(5.0, seconds / 12))
    by_signal = threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_kill") and \
        signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)
    caller = threading.get_ident()
    found: list[str] = []
    done, lock = threading.Event(), threading.Lock()

    def handler(signum, frame):
        if found:
            raise WorkersPaused(found[0])

    def interrupt():
        if by_signal:
            signal.pthread_kill(caller, signal.SIGUSR1)
        else:  # raised when the caller next runs Python code, wherever that is: the type made with no arguments
            import ctypes  # carries the message (review16 R1: one raised after the block was a bare WorkersPaused())

            posted = type("WorkersPaused", (WorkersPaused,),
                          {"__init__": lambda self, *args: WorkersPaused.__init__(self, *(args or found[:1]))})
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(caller), ctypes.py_object(posted))

    def watch():
        since, transitions = None, None
        while not done.wait(poll):
            try:
                now_transitions = client.run_on_scheduler(_scheduler_transitions)
                workers = client.run(_worker_paused)
            except Exception:  # noqa: BLE001 -- a closing cluster, a remote scheduler without this package
                since = None
                continue
            stalled = [w for w in workers.values() if w[0] and w[1] == 0]
            if not stalled or now_transitions != transitions or since is None:
                since, transitions = (time.monotonic() if stalled else None), now_transitions
                continue
            if time.monotonic() - since >= seconds:
                _, _, rss, limit = max(stalled, key=lambda w: w[2])
                with lock:
                    if not done.is_set():
                        found.append(paused_message(time.monotonic() - since, rss, limit, kind))
                        interrupt()
                return

    previous = signal.signal(signal.SIGUSR1, handler) if by_signal else None
    watcher = threading.Thread(target=watch, name="stop-when-paused", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        # A stall declared just as the block ended (the watcher posted while this thread left the block): the
        # block's work is done, so its result stands and the late exception is dropped here, whether it fires in
        # these lines or is still pending (review16 R1). One raised inside the block ends the block as before.
        try:
            with lock:  # no signal or exception is posted after this: SIGUSR1's default action ends the process
                done.set()
            if found and not by_signal:
                import ctypes

                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(caller), None)  # NULL: drop a pending one
        except WorkersPaused:
            done.set()
        finally:
            if by_signal:
                for _ in range(2):  # signal.signal first runs a pending handler: the late signal's, once
                    try:
                        signal.signal(signal.SIGUSR1, previous)
                        break
                    except WorkersPaused:
                        continue
