"""Pieces shared by the command-line tools: cluster flags and the one-line error exit."""
from __future__ import annotations

import argparse
import functools
import sys

from solvers.errors import InputError


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """Add --cluster, --workers, --memory-limit and --dashboard-address."""
    g = p.add_argument_group("execution")
    g.add_argument("--cluster", default="local",
                   help="'local' (embedded LocalCluster), a scheduler address, or a scheduler file (.json)")
    g.add_argument("--workers", type=int, default=None, help="local cluster: worker processes (default: one per core)")
    g.add_argument("--memory-limit", default=None, help="local cluster: memory limit per worker, e.g. 2GB")
    g.add_argument("--dashboard-address", default="localhost:8787",
                   help="where the Dask dashboard listens (default %(default)s)")


def connect_from_args(args):
    """Return the :func:`pipeline.cluster.connect` context for parsed cluster flags."""
    from pipeline.cluster import connect

    return connect(args.cluster, n_workers=args.workers, memory_limit=args.memory_limit,
                   dashboard_address=args.dashboard_address)


def exits_on_input_error(main):
    """Wrap a CLI ``main`` so an :class:`InputError` prints ``error: …`` and returns 2."""
    @functools.wraps(main)
    def wrapper(argv=None) -> int:
        try:
            return main(argv)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return wrapper
