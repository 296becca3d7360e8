"""How ``python -m pipeline.train`` ends on a signal: clean up, say so in one line, exit 128 + signal.

SIGINT (Ctrl-C) exits 130, SIGTERM (``kill``, SLURM's walltime or ``scancel`` of a
driver running in a batch job) exits 143. Either one unwinds the run like an
error: the cluster closes (batch jobs cancelled, temporary certificates
deleted), the last committed iteration stays intact, and the line names the
command that resumes. A second signal during that clean-up is noted, not obeyed,
for :data:`GRACE` seconds (so the jobs do get cancelled); after that it ends the
clean-up. An interrupted run never exits 0: a signal whose exception landed in a
finalizer (Python prints it as "Exception ignored in ..." and carries on) ends the
run at its next iteration boundary, once the iteration's commit is written
(:func:`stop_if_signalled`, which the training loop calls there), or at the end of
the block, whichever comes first. A second signal between the lost one and that
stop is obeyed as a first one is (nothing is being cleaned up yet); once the stop
raises, the clean-up runs, and a signal during it is noted for :data:`GRACE`
seconds counted from the stop, not from the lost signal. SIGKILL cannot be handled: what it
leaves (certificates) is removed by the next run (:func:`pipeline.cluster.clean_stale_certificates`).
"""
from __future__ import annotations

import atexit
import contextlib
import signal
import sys
import threading
import time
import warnings

GRACE = 60.0  # seconds a second signal is ignored while the first one's clean-up runs
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
NAMES = {signal.SIGINT: "interrupted (SIGINT, Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM (a BaseException, like KeyboardInterrupt: no ``except Exception`` eats it)."""


class _Handler:
    def __init__(self):
        self.first: tuple[int, float] | None = None
        self.lost = False  # the exception of the last signal obeyed met a finalizer, which ate it: no clean-up runs

    def __call__(self, signum, frame):
        if self.first is not None and not self.lost and time.monotonic() - self.first[1] < GRACE:
            print(f"{NAMES[signum].split(' (')[0]} again: still cleaning up (cancelling jobs); "
                  f"one more after {GRACE:.0f} s ends the clean-up", file=sys.stderr, flush=True)
            return
        self.first = (self.first[0], time.monotonic()) if self.first else (signum, time.monotonic())
        self.lost = False
        _quiet_shutdown()
        raise self.exception()

    def rearm(self) -> BaseException:
        """Return the exception of a lost signal, to raise now: its clean-up starts, so a second signal is noted for GRACE s."""
        self.lost = False
        self.first = (self.first[0], time.monotonic())
        return self.exception()

    def exception(self) -> BaseException:
        """Return the exception the first signal raises: Terminated for SIGTERM, else KeyboardInterrupt."""
        return Terminated() if self.first[0] == signal.SIGTERM else KeyboardInterrupt()

    def unraisable(self, previous):
        """Return a ``sys.unraisablehook`` that notes when a finalizer ate this handler's exception, then calls ``previous``."""
        def hook(unraisable):
            if self.first is not None and issubclass(unraisable.exc_type, (KeyboardInterrupt, Terminated)):
                self.lost = True
            previous(unraisable)
        return hook


_active: list[_Handler] = []  # the handlers of the open exit_on_signals blocks (main thread), innermost last


def stop_if_signalled(before=None) -> None:
    """Raise the interruption of a signal whose exception was lost (eaten by a finalizer), after calling ``before``.

    The training loop calls this at each iteration boundary, where stopping loses nothing: the
    iteration is committed (``before`` waits for a commit under way). No-op outside an
    :func:`exit_on_signals` block, off the main thread, or when no signal came.
    """
    if not _active or threading.current_thread() is not threading.main_thread() or _active[-1].first is None:
        return
    handler = _active[-1]
    if before is not None:
        before()
    raise handler.rearm()


def _resume_hint(store) -> str:
    if store is None:
        return ""
    try:
        from storage.runstore import RunStore, is_run_store

        iteration = RunStore.open(store).committed_iteration() if is_run_store(store) else None
    except Exception:  # noqa: BLE001 -- the hint must never hide the interruption
        iteration = None
    if iteration is None:
        from pathlib import Path

        return ("; no iteration was committed: start again with the same command"
                + (" and --overwrite" if Path(store).exists() else ""))
    return (f"; iteration {iteration} is committed: resume with "
            f"python -m pipeline.train --store {store} --resume")


def _quiet_shutdown() -> None:
    """The run is over: the event loop's complaints about the computations we abandoned are noise."""
    import logging

    for name in ("asyncio", "distributed", "tornado"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _zarr_exit() -> None:
    """zarr's exit hook, minus its traceback when the signal landed while zarr started its IO thread.

    ``zarr.core.sync._get_loop`` stores the thread before it starts it; a signal between the two leaves a thread
    that was never started, and zarr's ``cleanup_resources`` then raises "cannot join thread before it is started"
    at exit, after the one line. The run is over: a never-started thread is dropped and any failure is silent.
    """
    sync = sys.modules.get("zarr.core.sync")
    if sync is None:
        return
    try:
        thread = sync.iothread[0]
        if thread is not None and thread.ident is None:  # stored, never started
            sync.iothread[0] = None
        sync.cleanup_resources()
    except Exception:  # noqa: BLE001 -- nothing may print after the one line
        pass


def _guard_zarr_exit() -> None:
    """Replace zarr's exit hook (if zarr is loaded) by :func:`_zarr_exit`."""
    sync = sys.modules.get("zarr.core.sync")
    if sync is not None and hasattr(sync, "cleanup_resources"):
        atexit.unregister(sync.cleanup_resources)
        atexit.unregister(_zarr_exit)
        atexit.register(_zarr_exit)


def done_with_cluster(what: str, batch: bool = False) -> str:
    """Return ``done`` for :func:`exit_on_signals` of a command that may be stopped before or after it starts its
    cluster (evaluate and predict check their inputs first): ``what`` was (not) done, and the cluster, if any, went."""
    cluster = ("any worker jobs it submitted were cancelled and the temporary certificates deleted" if batch
               else "any cluster it started was shut down")
    return f"{what}; {cluster}"


@contextlib.contextmanager
def exit_on_signals(store=None, batch=False, done=None):
    """Turn SIGINT/SIGTERM inside the block into one line on stderr and ``SystemExit(130/143)``.

    ``store`` (a callable returning the run store path, or the path) names the
    resume command; ``batch`` says the clean-up cancelled batch jobs; ``done`` (a callable returning the text, or
    the text) replaces what the line says was cleaned up (a command without a run store: evaluate, predict,
    ingest). Either way the ``with`` blocks inside unwind, so locks and reader records (:mod:`storage.lock`) are removed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = _Handler()
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    previous_hook = sys.unraisablehook
    sys.unraisablehook = hook = handler.unraisable(previous_hook)
    _active.append(handler)
    try:
        yield
        if handler.first is not None:  # its exception met a finalizer ("Exception ignored in ..."), which ate it
            raise handler.rearm()
    except (KeyboardInterrupt, Terminated):
        signum = handler.first[0] if handler.first else signal.SIGINT
        # a signal landing inside a zarr call leaves its coroutine unawaited: Python would warn about it at exit,
        # after the one line below
        warnings.filterwarnings("ignore", category=RuntimeWarning, message="coroutine .* was never awaited")
        _quiet_shutdown()
        path = store() if callable(store) else store
        done_ = (done() if callable(done) else done) or ("the worker jobs were cancelled and the temporary certificates deleted" if batch
                         else "the cluster was shut down")
        print(f"{NAMES[signum]}: {done_}{_resume_hint(path)}", file=sys.stderr, flush=True)
        _guard_zarr_exit()
        raise SystemExit(EXIT[signum]) from None
    finally:
        _active.remove(handler)
        if sys.unraisablehook is hook:
            sys.unraisablehook = previous_hook
        for s, h in previous.items():
            signal.signal(s, h)
