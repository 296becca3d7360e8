"""Loose worker placement that survives losing every worker at once.

The pipeline places some tasks on a chosen worker with a *loose* restriction
(``workers=[address], allow_other_workers=True``: a shard's chunks on the worker
whose cache holds them, see :func:`pipeline.passes.shard_places`). When no worker
is running at all as such a task is scheduled (every job of a batch cluster
ended, a local cluster restarting), distributed parks it in ``no-worker``; when
a worker joins, it re-checks only the strict restriction and not the loose flag,
so the task waits for a worker address that never comes back and the pass hangs
(dask/distributed#7346 describes the strict half of this). Measured here with
distributed 2026.8.0: a loose task in ``no-worker`` stayed there after a new
worker joined.

:class:`LoosePlacement` is a scheduler plugin that drops the worker restriction
of a loosely placed task as it enters ``no-worker``: it then runs on the first
worker that joins, which is what "loose" means.
"""
from __future__ import annotations

from distributed.diagnostics.plugin import SchedulerPlugin

PLUGIN_NAME = "admm-dask-loose-placement"


class LoosePlacement(SchedulerPlugin):
    """Scheduler plugin: a loosely restricted task that finds no worker may run on any worker that joins."""

    name = PLUGIN_NAME
    idempotent = True  # registering it twice on one scheduler keeps the first

    def __init__(self):
        self.scheduler = None

    def start(self, scheduler) -> None:
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish != "no-worker" or self.scheduler is None:
            return
        ts = self.scheduler.tasks.get(key)
        if ts is not None and ts.loose_restrictions and ts.worker_restrictions:
            ts.worker_restrictions = set()


def loose_placement(client) -> bool:
    """Register :class:`LoosePlacement` on the client's scheduler once; return whether it is in place.

    False when the scheduler cannot take it (e.g. a remote scheduler that cannot
    import this package): callers then place nothing and let the scheduler choose.
    """
    ready = getattr(client, "_admm_dask_loose_placement", None)
    if ready is None:
        try:
            client.register_plugin(LoosePlacement())
            ready = True
        except Exception:  # noqa: BLE001 -- any refusal: no placement rather than a pass that can hang
            ready = False
        try:
            client._admm_dask_loose_placement = ready
        except AttributeError:  # a client-like object without attributes: ask again next time
            pass
    return ready
