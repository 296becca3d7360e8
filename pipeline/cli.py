"""Pieces shared by the command-line tools: cluster flags and the one-line error exit."""
from __future__ import annotations

import argparse
import functools
import gc
import os
import sys

from solvers.errors import InputError


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose argument errors are one line ``error: …`` (exit 2), not a usage dump."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """Parse an integer of at least 1 (``--workers``, ``--jobs``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _memory_limit(text: str) -> str:
    """Parse a per-worker memory limit like 2GB, 500MiB or 'auto' (checked by dask's parser)."""
    from dask.utils import parse_bytes

    if text.strip().lower() in ("auto", "0", "none"):
        return text
    try:
        parse_bytes(text)
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"expected a size like 2GB or 500MiB, got {text!r}") from None
    return text


def _adapt_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX job counts like 1:8, got {text!r}") from None
    return lo, hi


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """Add --cluster, --workers, --memory-limit, --dashboard-address and the batch-cluster flags."""
    g = p.add_argument_group("execution")
    g.add_argument("--cluster", default="local",
                   help="'local' (embedded LocalCluster), 'slurm' or 'pbs' (workers are batch jobs configured by "
                        "jobqueue.yaml), a scheduler address (tls://host:8786) or a scheduler file (.json) "
                        "[%(default)s]")
    g.add_argument("--workers", type=positive_int, default=None,
                   help="local cluster: worker processes, or threads with --local-mode threads (default: one per core)")
    g.add_argument("--local-mode", choices=("auto", "threads", "processes"), default="auto",
                   help="local cluster: worker threads in this process (starts in ~0.1 s), worker processes "
                        "(start in ~1.3 s, no shared GIL), or auto: threads for data up to 256 MB, else "
                        "processes [%(default)s]")
    g.add_argument("--memory-limit", type=_memory_limit, default=None, help="local cluster: memory limit per worker, e.g. 2GB")
    g.add_argument("--dashboard-address", default="localhost:8787",
                   help="where the Dask dashboard listens (default %(default)s; a bare :PORT is localhost:PORT; "
                        "0.0.0.0:PORT listens on every interface; reach it through ssh -L)")
    size = g.add_mutually_exclusive_group()
    size.add_argument("--jobs", type=int, default=None,
                      help="slurm/pbs: number of worker jobs, replaced when they end (default 1)")
    size.add_argument("--adapt", type=_adapt_range, default=None, metavar="MIN:MAX",
                      help="slurm/pbs: scale between MIN and MAX worker jobs with the load")
    g.add_argument("--jobqueue-config", default=None, metavar="PATH",
                   help="slurm/pbs: dask-jobqueue settings (default: the project's jobqueue.yaml); the "
                        "user's dask config (~/.config/dask, DASK_JOBQUEUE__… variables) overrides it")
    g.add_argument("--worker-timeout", type=float, default=None, metavar="SECONDS",
                   help="slurm/pbs: how long to wait for the workers' jobs to start, and the longest time "
                        "without any worker later in the run (default: admm-dask.worker-timeout of the config, "
                        "600); a scheduler address or file: how long to wait for a first worker (default: "
                        "admm-dask.worker-timeout of the dask config, else 60); the local cluster ignores it (600)")
    g.add_argument("--dry-run", action="store_true",
                   help="slurm/pbs: print the job script that would be submitted and exit")


def data_bytes(path) -> int | None:
    """Return the size of a data store's X in bytes (float32), or None when it cannot be opened."""
    from storage.data import open_data

    if path is None:
        return None
    try:
        store = open_data(path)
    except InputError:
        return None
    return 4 * store.n_samples * store.n_features


def connect_from_args(args, data=None, gil_bound=False, **kwargs):
    """Return the :func:`pipeline.cluster.connect` context for parsed cluster flags (and ``kwargs`` of it).

    ``data``: the data store the work reads, whose size picks threads or
    processes for ``--local-mode auto`` (None: processes); ``gil_bound`` work
    gets processes too (:func:`pipeline.cluster.local_processes`).
    """
    from pipeline.cluster import connect, local_processes

    processes = local_processes(getattr(args, "local_mode", "auto"), data_bytes(data),
                                memory_limit=args.memory_limit, gil_bound=gil_bound)
    return connect(args.cluster, **kwargs, n_workers=args.workers, memory_limit=args.memory_limit, processes=processes,
                   dashboard_address=args.dashboard_address, jobs=getattr(args, "jobs", None),
                   adapt=getattr(args, "adapt", None), jobqueue_config=getattr(args, "jobqueue_config", None),
                   worker_timeout=getattr(args, "worker_timeout", None), dry_run=getattr(args, "dry_run", False))


def exit_process(code) -> None:
    """End a command's process with status ``code``, skipping the interpreter's last garbage collections.

    At exit Python collects the objects of every imported module (NumPy, Dask,
    distributed, Zarr, pandas): 0.2-0.3 s per command here, once the work is done
    (``benchmarks/results/speed_s7.md``). ``gc.freeze()`` moves them to the
    permanent generation those collections skip. The atexit handlers still run
    (Dask's, logging's, the thread pools' joins); the commands have closed their
    files and stores by then.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()
    sys.exit(code)


def collect_again() -> None:
    """Turn the garbage collector back on if ``python -m pipeline.<command>`` imported its modules without it
    (:data:`pipeline.IMPORTS_WITHOUT_GC`), after moving the objects imported so far to the permanent generation
    (``gc.freeze()``, as :func:`exit_process` does) so that no collection of the run walks them."""
    package = sys.modules["pipeline"]  # this module's package (not an import: pipeline imports the estimator, this)
    if package.IMPORTS_WITHOUT_GC:
        package.IMPORTS_WITHOUT_GC = False
        gc.freeze()
        gc.enable()


def exits_on_input_error(main):
    """Wrap a CLI ``main`` so an :class:`InputError` prints ``error: …`` and returns 2 (a finished --dry-run: 0).

    It first turns the garbage collector back on (:func:`collect_again`): the command runs with it.
    """
    @functools.wraps(main)
    def wrapper(argv=None) -> int:
        collect_again()
        try:
            return main(argv)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # full disk, read-only or forbidden path, here or on a worker
            log = write_error_log(exc)
            print(f"error: {os_error_line(exc)} (details in {log})", file=sys.stderr)
            return 2
        except Exception as exc:  # noqa: BLE001 -- a bug: one line here, the traceback in the log
            from pipeline.cluster import DryRun  # imported late: ingest starts without Dask

            if isinstance(exc, DryRun):
                return 0
            log = write_error_log(exc)
            print(f"error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                  f"(traceback in {log}; please report it)", file=sys.stderr)
            return 1
    return wrapper


def os_error_line(exc: OSError) -> str:
    """Return one line for an operating-system error: what failed, on which path, and what to do."""
    import errno

    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    advice = {errno.ENOSPC: "free disk space or write elsewhere; nothing committed was lost",
              errno.EDQUOT: "your disk quota is used up; free space or write elsewhere",
              errno.EROFS: "the file system is read-only; write the output elsewhere",
              errno.EACCES: "no permission; write the output elsewhere or fix the permissions",
              errno.EPERM: "not permitted; write the output elsewhere or fix the permissions"}.get(exc.errno, "")
    text = exc.strerror or str(exc) or type(exc).__name__
    return f"{text}{where}" + (f": {advice}" if advice else "")


def write_error_log(exc: BaseException) -> str:
    """Write the full traceback of ``exc`` (a worker's included) to a log file; return its path."""
    import tempfile
    import time
    import traceback
    from pathlib import Path

    folder = Path(tempfile.gettempdir()) / "admm-dask-logs"
    command = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] not in ("", "-c") else "python"
    name = f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        path.write_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        return str(path)
    except OSError:
        return "(no log: the temporary folder is not writable)"
