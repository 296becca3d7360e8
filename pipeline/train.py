"""``python -m pipeline.train``: train a network out of core on a Dask cluster (Gauss-Newton, consensus, ADMM, dlADMM).

Run with no arguments it trains on the bundled demo data set (scikit-learn's
8×8 digits, 10 classes) in a temporary directory, on an embedded local cluster.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import sys
import tempfile
import textwrap
from pathlib import Path

from pipeline.cli import ArgumentParser, add_cluster_arguments, connect_from_args, exit_process, exits_on_input_error
from pipeline.cluster import dashboard_link
from pipeline.memory import (CACHE_SHARE, WORKER_BASE, WorkersPaused, dry_run_chunk_bytes, killed_worker_error,
                             pause_fraction, stop_when_paused, worker_need_bytes)
from pipeline.monitor import TrainingMonitor
from pipeline.signals import exit_on_signals
from solvers.config import TrainConfig, add_arguments, given_settings
from solvers.errors import InputError

log = logging.getLogger("pipeline.train")  # not __name__: "__main__" under python -m
DEMO = Path(__file__).resolve().parent / "demo" / "digits.npz"


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, never breaking a line inside a flag such as --rho-growth."""

    def _split_lines(self, text, width):
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)

    def _fill_text(self, text, width, indent):
        return textwrap.fill(self._whitespace_matcher.sub(" ", text).strip(), width, initial_indent=indent,
                             subsequent_indent=indent, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m pipeline.train", formatter_class=_HelpFormatter,
        description="Train a neural network out of core with layerwise Gauss-Newton, consensus ADMM over data "
                    "shards, both in turn (consensus passes, then Gauss-Newton: what --solver auto picks for data "
                    "with enough rows per shard, else Gauss-Newton), the ADMM "
                    "method of Taylor et al. (2016) or dlADMM: data and per-sample state live in Zarr stores, "
                    "Dask runs passes over the sample chunks and the small weight solves run here. With no "
                    "arguments, trains on the bundled digits demo.",
    )
    io = p.add_argument_group("data and run store")
    io.add_argument("--data", help="training data store (made by python -m pipeline.ingest); default: the bundled "
                                   "demo data (scikit-learn's digits), also when --store is given")
    io.add_argument("--store", help="run store to create (or resume); default for the demo: a temporary directory")
    io.add_argument("--test-data", help="held-out data store; its accuracy is reported every iteration")
    again = io.add_mutually_exclusive_group()  # both at once had no meaning (--resume won silently): one error line
    again.add_argument("--resume", action="store_true",
                       help="continue the run in --store from its last committed iteration")
    again.add_argument("--overwrite", action="store_true",
                       help="replace an existing run store at --store (only a run store; not with --resume; needs "
                            "--data: the demo never replaces a run). The old run is kept aside as "
                            "STORE.replaced-* until the new run's first commit, and put back if the new run "
                            "fails before it")
    add_arguments(p)  # one flag per TrainConfig setting (solvers/config.py)
    add_cluster_arguments(p)
    p.add_argument("--chunk-rows", type=int, default=None,
                   help="samples per state chunk (default: ~128 MB of state per chunk, but at least 3 chunks per "
                        "worker thread where chunks of 512 rows or more allow it)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar within each pass (default: when stderr is a terminal)")
    mon = p.add_argument_group("monitoring")
    mon.add_argument("--verbose", "-v", action="store_true",
                     help="log the pipeline's steps (logger 'pipeline' at DEBUG) and Dask's client-side messages "
                          "(INFO; the embedded local cluster keeps its own to errors) to stderr")
    mon.add_argument("--performance-report", nargs="?", const="", default=None, metavar="FILE",
                     help="save Dask's performance report (HTML) of the training to FILE; without FILE to "
                          "RUN.performance.html beside the run store, where python -m pipeline.report --html "
                          "finds it")
    return p


def setup_logging(verbose: bool) -> None:
    """Send the 'pipeline' logger to stderr: warnings only, everything with ``verbose`` (and Dask's INFO)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("pipeline")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    if verbose:
        logging.getLogger("distributed").setLevel(logging.INFO)


def _demo_data(workdir: Path) -> tuple[str, str]:
    """Write the bundled digits as train/test data stores under ``workdir``."""
    import numpy as np

    from storage.data import write_data

    with np.load(DEMO) as f:
        X, y = f["X"].astype(np.float32), f["y"]
    test = np.random.default_rng(0).random(len(y)) < 0.2
    train_path, test_path = workdir / "digits-train.zarr", workdir / "digits-test.zarr"
    write_data(train_path, X[~test], y[~test], source="bundled sklearn digits", overwrite=True)
    write_data(test_path, X[test], y[test], source="bundled sklearn digits", overwrite=True)
    return str(train_path), str(test_path)


@exits_on_input_error
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.overwrite and args.data is None:  # the demo would replace the run in --store
        parser.error("--overwrite needs --data: without it the bundled demo data would replace the run in --store")
    setup_logging(args.verbose)
    where = {"store": args.store}
    with exit_on_signals(store=lambda: where["store"], batch=args.cluster in ("slurm", "pbs")):
        return _main(args, where)


def _main(args, where) -> int:
    from distributed import KilledWorker

    from pipeline.training import check_inputs, still_rising_text, train

    data, test_data, store = args.data, args.test_data, args.store
    if args.dry_run:  # print the job script (and whether a chunk fits a worker); create nothing
        with connect_from_args(args, chunk_bytes=dry_run_chunk_bytes(args, TrainConfig(**given_settings(args)))):
            pass
    if data is None and not args.resume:  # the first line says so: with --store, a forgotten --data trains the demo
        workdir = Path(tempfile.mkdtemp(prefix="admm-demo-"))
        data, demo_test = _demo_data(workdir)
        test_data = test_data or demo_test
        into = f" into {store}" if store else ""
        store = store or str(workdir / "run.zarr")
        print(f"no --data given: training the bundled demo data (scikit-learn's digits, 10 classes, written to "
              f"{workdir}){into}; pass --data DATA.zarr to train on your own data", flush=True)
    if store is None:
        raise InputError("--store RUN.zarr is required (where the run's state and model are kept)")
    where["store"] = store
    given = given_settings(args)
    if "hidden" in given and "layers" in given:
        raise InputError("give --hidden or --layers, not both (--layers dense:300 is --hidden 300)")
    config = None if args.resume else TrainConfig(**given)
    check_inputs(store=store, data=data, test_data=test_data, resume=args.resume, overwrite=args.overwrite,
                 chunk_rows=args.chunk_rows, iterations=given.get("iterations") if args.resume else None,
                 class_rows=config is not None and config.task == "classification" and "task" not in given,
                 report=lambda line: print(line, flush=True))  # train's report: a kept run put back, a stale lock
    warning = _unseen_labels_warning(store, config, data, test_data)
    if warning:  # one line, from the stores' metadata; a fresh run and a resume alike
        print(warning, file=sys.stderr, flush=True)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    log.debug("settings %s, store %s, data %s, test data %s, resume %s", given, store, data, test_data, args.resume)
    perf = None
    if args.performance_report is not None:
        from pipeline.report import performance_report_path

        try:
            import bokeh  # noqa: F401  (distributed renders the report with it; fail before training)
        except ImportError:
            raise InputError('--performance-report needs bokeh: pip install "admm-dask[report]"') from None
        perf = Path(args.performance_report or performance_report_path(store))
    size_from = data if data is not None else _run_data_path(store)
    solver = config.solver if config is not None else _run_solver(store)
    if solver == "auto":  # chosen for the data once the cluster runs (pipeline.training); its workers depend on it
        solver = _auto_solver(config, args, size_from)
    gil_bound = _gil_bound(solver)
    paused = None
    _check_memory_limit(args, size_from, config or TrainConfig(**given), gil_bound)
    with _training_page_preload(), connect_from_args(args, data=size_from, gil_bound=gil_bound,
                                                       profile=perf is not None) as client, \
            _performance_report(perf):
        link = dashboard_link(client, args.cluster)
        print(f"Dask dashboard: {link}", flush=True)
        print(f"Training page: {_training_page(client, link)}", flush=True)
        log.debug("cluster: %s", client)
        try:
            with stop_when_paused(client, args.cluster):  # a worker paused for memory would wait forever, silently
                result = train(client, store=store, data=data, config=config, test_data=test_data,
                               chunk_rows=args.chunk_rows, resume=args.resume, overwrite=args.overwrite,
                               overrides=given if args.resume else None, progress=progress,
                               task_given="task" in given, report=lambda line: print(line, flush=True),
                               monitor=TrainingMonitor(client))
        except KilledWorker as exc:
            raise killed_worker_error(exc, client, args, store) from None
        except WorkersPaused as exc:
            paused = exc
    if paused is not None:  # said once the cluster is closed
        from pipeline.signals import _resume_hint

        rows = f" (now {args.chunk_rows})" if args.chunk_rows else ""
        raise InputError(f"{paused}{rows}{_resume_hint(store)}")
    if perf is not None:
        print(f"Dask performance report: {perf}")
    rising = still_rising_text(result)
    if rising:  # scikit-learn's ConvergenceWarning at max_iter: --iterations is a cap, and this run wants more
        more = 2 * result.solver.config.iterations
        print(f"{rising}: python -m pipeline.train --store {store} --resume --iterations {more} goes on", flush=True)
    print(f"done: model and history in {result.store.path}")
    return 0


def _training_page_preload():
    """Return a config context under which the schedulers this process starts serve the /training page."""
    import dask

    preload = dask.config.get("distributed.scheduler.preload", default=None) or []
    preload = [preload] if isinstance(preload, str) else list(preload)
    return dask.config.set({"distributed.scheduler.preload": [*preload, "pipeline.dashboard"]})


def _training_page(client, link: str) -> str:
    """Return the /training page's address beside the dashboard ``link``, or why this scheduler does not serve it."""
    from pipeline.dashboard import is_installed
    from pipeline.monitor import training_link

    try:
        served = client.run_on_scheduler(is_installed)
    except Exception:  # noqa: BLE001 -- a remote scheduler that cannot import this package
        served = False
    if not served:
        return ("not served by this scheduler (start it with: dask scheduler --preload pipeline.dashboard; "
                "see README, Monitoring)")
    if not link:
        return "the scheduler has no dashboard (install bokeh)"
    url, _, rest = link.partition(" ")  # a batch cluster's link carries its ssh tunnel: same port, same tunnel
    return training_link(url) + (" " + rest.replace("/status)", "/training)") if rest else "")


def _check_memory_limit(args, data, config, gil_bound: bool = False) -> None:
    """Refuse a local --memory-limit too small for one chunk task (a starved worker would otherwise hang)."""
    import os

    from dask.utils import format_bytes, parse_bytes

    from pipeline.cli import data_bytes
    from pipeline.cluster import MIN_LOCAL_WORKER_BYTES, local_processes

    limit = args.memory_limit
    if args.cluster != "local" or limit is None or str(limit).strip().lower() in ("auto", "0", "none"):
        return
    limit = parse_bytes(limit)
    chunk = None
    if data is not None:
        try:
            chunk = dry_run_chunk_bytes(argparse.Namespace(data=data, chunk_rows=args.chunk_rows), config,
                                        int(args.workers or os.cpu_count() or 1))
        except InputError:
            chunk = None
    need = max(MIN_LOCAL_WORKER_BYTES, worker_need_bytes(chunk) if chunk else 0)  # a paused worker hangs the run
    threads = not local_processes(getattr(args, "local_mode", "auto"), data_bytes(data), args.memory_limit, gil_bound)
    if threads:  # one in-process worker: this process (client, data statistics) counts against its limit
        import psutil

        need += psutil.Process(os.getpid()).memory_info().rss
    if limit < need:
        what = (f"one chunk task needs about {format_bytes(chunk)} (a worker pauses at {100 * pause_fraction():g}% of "
                f"its limit and holds its own ~{format_bytes(WORKER_BASE)} and caches of up to "
                f"{CACHE_SHARE:.0%} of it besides), " if chunk else "")
        raise InputError(f"--memory-limit {args.memory_limit} is too small: {what}a worker needs at least "
                         f"{format_bytes(need)}{' (the worker runs in this process)' if threads else ''}; raise "
                         "--memory-limit or lower --chunk-rows")


def _gil_bound(solver) -> bool:
    """Return whether the solver (or a hand-over's first phase) runs Python loops that hold the GIL: consensus."""
    return str(solver or "").split(",")[0].strip() == "consensus"


def _auto_solver(config, args, data) -> str:
    """Return the solver ``--solver auto`` will choose for ``data`` on the local cluster these flags start.

    Its worker threads are the shards (:meth:`solvers.config.TrainConfig.choose_solver`); with the hand-over
    the cluster must run worker processes (its consensus passes hold the GIL). Other clusters: gauss-newton
    (the choice there is made in pipeline.training, on the cluster's own threads).
    """
    import os

    from storage.data import open_data

    if data is None or args.cluster != "local":
        return "gauss-newton"
    try:
        n = open_data(data).n_samples
    except InputError:
        return "gauss-newton"
    workers = int(args.workers or os.cpu_count() or 1)
    return config.choose_solver(n, workers, shared_gil=args.local_mode == "threads")[0].solver


def _run_solver(store):
    """Return the solver recorded in a run store, or None."""
    from storage.runstore import RunStore

    try:
        return RunStore.open(store).attrs["config"]["solver"]
    except (InputError, KeyError, TypeError):
        return None


def _unseen_labels_warning(store, config, data, test_data):
    """Return the warning line for test data with labels the training data lacks, or None.

    A fresh run (``config``) and a resume (``config`` None) alike: a resume reads the run's task, training data and,
    without ``--test-data``, the test data it recorded.
    """
    from pipeline.checks import recorded_data, unseen_test_labels_warning

    if config is None:
        from storage.runstore import RunStore

        run = RunStore.open(store)
        task = TrainConfig.from_dict(run.attrs["config"]).task
        data = recorded_data(run, data)  # check_inputs has taken it already
        test_data = test_data or run.attrs.get("test_data")
    else:
        task = config.task
    return unseen_test_labels_warning(test_data, data) if task == "classification" else None


def _run_data_path(store):
    """Return the training data path recorded in a run store, or None."""
    from storage.runstore import RunStore

    try:
        return RunStore.open(store).attrs["data"]["path"]
    except (InputError, KeyError, TypeError):
        return None


def _performance_report(path):
    """Return a context recording Dask's performance report into ``path``, or a no-op for None."""
    if path is None:
        return contextlib.nullcontext()
    from distributed import performance_report

    path.parent.mkdir(parents=True, exist_ok=True)
    return performance_report(filename=str(path))


if __name__ == "__main__":
    gc.freeze()  # the objects of the modules imported so far: the run's garbage collections skip them (~0.07 s less)
    exit_process(main())
