"""Starting or connecting to the Dask cluster that runs the chunk tasks.

``local`` (the default) starts an embedded :class:`distributed.LocalCluster`
with one single-threaded worker process per core; an address
(``tcp://host:8786``, ``tls://…``) or a scheduler file (a ``.json`` path)
connects to a running scheduler.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import dask

from solvers.errors import InputError

log = logging.getLogger(__name__)


def _local_cluster(n_workers, threads_per_worker, memory_limit, dashboard_address):
    from distributed import LocalCluster

    cores = os.cpu_count() or 1
    threads = max(1, int(threads_per_worker or 1))
    workers = int(n_workers or max(1, cores // threads))
    # distributed's default MALLOC_TRIM_THRESHOLD_ cost ~24 % per pass here (DESIGN.md);
    # BLAS stays at one thread per worker thread (OMP/MKL/OPENBLAS_NUM_THREADS=1).
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                            memory_limit=memory_limit or "auto", dashboard_address=dashboard_address,
                            silence_logs=logging.ERROR)


@contextlib.contextmanager
def connect(cluster: str = "local", *, n_workers=None, threads_per_worker=1, memory_limit=None,
            dashboard_address="localhost:8787"):
    """Yield a :class:`distributed.Client` for the cluster spec; close what this started."""
    from distributed import Client

    spec = cluster or "local"
    started = None
    try:
        if spec == "local":
            started = _local_cluster(n_workers, threads_per_worker, memory_limit, dashboard_address)
            client = Client(started)
        elif spec.endswith(".json"):
            if not Path(spec).exists():
                raise InputError(f"scheduler file {spec} does not exist")
            client = Client(scheduler_file=spec, timeout="30s")
        elif "://" in spec or ":" in spec:
            client = Client(spec, timeout="30s")
        else:
            raise InputError(f"--cluster {spec!r}: expected 'local', a scheduler address "
                             "(tcp://host:8786) or a scheduler file (path ending in .json)")
    except InputError:
        raise
    except (OSError, TimeoutError, ValueError) as exc:
        if started is not None:
            started.close()
        raise InputError(f"could not start or reach the Dask cluster {spec!r}: {exc}") from None
    try:
        yield client
    finally:
        client.close()
        if started is not None:
            started.close()
