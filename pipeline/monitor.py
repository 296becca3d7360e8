"""The client's side of the live ``/training`` page: publish a run's history to the scheduler.

:class:`TrainingMonitor` keeps the run's description and history and, after
every commit (and every pass), hands the latest snapshot to the client's
event loop, which stores it on the scheduler with ``set_metadata`` under
:data:`METADATA_KEY`: a commit's snapshot synchronously (one small message;
the page then has it before the next iteration starts), a pass's in the
background. A snapshot that cannot be delivered is dropped with a debug log
line (the run store stays the record); training never fails for the page.
``pipeline.dashboard`` serves the page from that metadata.
"""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

METADATA_KEY = "admm-dask-training"
PAGE = "training"


def training_link(dashboard_link: str | None) -> str | None:
    """Return the training page's address beside a dashboard link (``…/status`` → ``…/training``)."""
    if not dashboard_link:
        return None
    base = dashboard_link[: -len("status")] if dashboard_link.endswith("status") else dashboard_link.rstrip("/") + "/"
    return base + PAGE


def run_info(run, *, n_chunks: int | None = None, n_held_out: int = 0) -> dict:
    """Return what the page shows about a run: store, data, settings, chunks, committed and target iterations."""
    from solvers.config import TrainConfig, choice_text, describe

    c = run.attrs["config"]
    config = TrainConfig.from_dict(c)
    manifest = run.manifest() or {}
    settings = describe(config) + choice_text(run.attrs.get("solver_choice"))  # what --solver auto chose and why
    chunks = f"{run.n_samples} samples in chunks of {run.chunk_rows} rows"
    if n_chunks is not None:
        chunks += f" ({n_chunks} training chunks" + (f", {n_held_out} rows held out)" if n_held_out else ")")
    stopped = None
    if manifest.get("stopped_early"):
        best = (manifest.get("early_stopping") or {}).get("best_iteration")
        stopped = f"stopped early; the model is iteration {best}"
    return {"store": str(run.path), "data": (run.attrs.get("data") or {}).get("path"), "settings": settings,
            "task": run.task, "solver": config.solver + choice_text(run.attrs.get("solver_choice")), "chunks": chunks, "n_chunks": n_chunks,
            "committed": manifest.get("iteration"),
            "target_iterations": manifest.get("target_iterations", c.get("iterations")), "stopped": stopped}


class TrainingMonitor:
    """Publish a run's description, history and pass speeds to the scheduler for the /training page."""

    def __init__(self, client, key: str = METADATA_KEY):
        self.client, self.key = client, key
        self.info: dict = {}
        self.history: list = []
        self._pending = None
        self._sending = False
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self.published = 0          # snapshots handed to the event loop
        self.client_seconds = 0.0   # time the training thread spent in this class

    def start(self, info: dict, history: list) -> None:
        """Begin a run (a resumed one with its stored history) and publish it."""
        t0 = time.perf_counter()
        self.info, self.history = dict(info), list(history)
        self.info["started"] = time.time()
        self._publish_now(t0)

    def on_pass(self, kernel: str, seconds: float, rows: int, read_bytes: int) -> None:
        """Record the speed of the pass that just ended and publish it."""
        t0 = time.perf_counter()
        self.info["last_pass"] = {"kernel": kernel, "seconds": seconds, "rows_per_second": rows / max(seconds, 1e-9),
                                  "read_mb_per_second": read_bytes / 1e6 / max(seconds, 1e-9)}
        self._publish(t0)

    def on_commit(self, history: list, committed: int, target: int | None = None, stopped: str | None = None) -> None:
        """Publish the history up to the iteration just committed."""
        t0 = time.perf_counter()
        self.history = list(history)
        self.info.update(committed=committed, committed_at=time.time())
        if target is not None:
            self.info["target_iterations"] = target
        if stopped:
            self.info["stopped"] = stopped
        self._publish_now(t0)

    def _snapshot(self) -> dict:
        return {"info": dict(self.info), "history": list(self.history), "published_at": time.time()}

    def _publish_now(self, t0: float, timeout: float = 5.0) -> None:
        """Publish and wait (at most ``timeout`` seconds) until the scheduler has this snapshot.

        It goes through the same one-at-a-time sender as the passes' snapshots,
        so an older snapshot can never overwrite it.
        """
        self._publish(t0)
        t1 = time.perf_counter()
        if not self._idle.wait(timeout):
            log.debug("training page: the scheduler did not take the snapshot within %.0f s", timeout)
        self.client_seconds += time.perf_counter() - t1

    # -- delivery: the latest snapshot wins; one send at a time on the client's event loop -----------------
    def _publish(self, t0: float) -> None:
        with self._lock:  # taken and queued at once: the commit thread's newer snapshot cannot be overwritten by an older
            self._pending = self._snapshot()
            self.published += 1
            start, self._sending = not self._sending, True
            self._idle.clear()
        if start:
            try:
                self.client.loop.add_callback(self._drain)
            except Exception as exc:  # noqa: BLE001 -- a closed client: the page just stops updating
                with self._lock:
                    self._sending, self._pending = False, None
                    self._idle.set()
                log.debug("training page: cannot publish (%s)", exc)
        self.client_seconds += time.perf_counter() - t0

    async def _drain(self) -> None:
        while True:
            with self._lock:
                snapshot, self._pending = self._pending, None
                if snapshot is None:
                    self._sending = False
                    self._idle.set()
                    return
            try:
                await self.client.scheduler.set_metadata(keys=[self.key], value=snapshot)
            except Exception as exc:  # noqa: BLE001 -- never disturb training for the page
                log.debug("training page: publishing failed (%s)", exc)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the latest snapshot has reached the scheduler; return False on timeout."""
        return self._idle.wait(timeout)
