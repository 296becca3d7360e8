"""Starting or connecting to the Dask cluster that runs the chunk tasks.

``--cluster`` picks one of:

========================  =========================================================
``local`` (default)       an embedded :class:`distributed.LocalCluster`: one
                          single-threaded worker process per core, or for small
                          data one in-process worker with a thread per core
                          (``local_mode``, :func:`local_processes`)
``slurm``, ``pbs``        a dask-jobqueue cluster: the scheduler runs here, every
                          worker is a batch job configured by ``jobqueue.yaml``
``tls://host:8786``       a running scheduler (``host:8786`` means TLS when the
                          dask config holds certificates, else plain TCP)
``scheduler.json``        a running scheduler, by its scheduler file
========================  =========================================================

Batch clusters are secure by default: the scheduler speaks TLS only (fresh
temporary certificates per run, written with mode 0600 to the shared directory
the worker jobs read them from, or the certificates of the dask config), and
the dashboard listens on localhost unless ``dashboard_address`` says otherwise.
Their jobs are supervised for the whole run (:mod:`pipeline.supervisor`: failed
submissions retried, ended jobs replaced, one error line when the cluster cannot
go on) and cancelled when :func:`connect` exits, normally, by an error or by a
signal (:mod:`pipeline.signals`).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import dask
from dask.utils import parse_timedelta

from solvers.errors import InputError

log = logging.getLogger(__name__)

PROJECT_JOBQUEUE = Path(__file__).resolve().parents[1] / "jobqueue.yaml"
JOBQUEUE_KINDS = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}
SECURITY_MODES = ("temporary", "config", "none")
DEFAULT_WORKER_TIMEOUT = 600.0
# A scheduler nobody here starts workers for (a scheduler address or file; an estimator's client= with no cluster
# object behind it, e.g. Client("tcp://...")): nobody submits or replaces its workers, so waiting only helps while
# the user brings one right now; `dask worker` connects in seconds. 60 s (distributed's connect timeout is 30 s) then
# one line saying how to wait longer; a worker job queued behind the user's own scheduler: --worker-timeout (dask
# config admm-dask.worker-timeout). A client with a cluster object (the local cluster this process starts, whose
# nannies restart workers; a user's LocalCluster, an adaptive or dask-jobqueue cluster whose workers are requested
# but not yet running) keeps DEFAULT_WORKER_TIMEOUT: something there is starting workers (review17 M3).
UNSUPERVISED_WORKER_TIMEOUT = 60.0
PROGRESS_EVERY = 5.0  # seconds between "waiting for N workers" lines
LOCAL_MODES = ("auto", "threads", "processes")
THREADS_MAX_BYTES = 256 * 2**20  # auto: data up to this size runs on threads in this process
# The in-process cluster's scheduler and worker share this process's event loop thread and GIL with the
# client's solves and the chunk kernels. distributed's defaults wake that loop ~200 times a second for
# diagnostics: each server's event-loop tick (20 ms) and the worker's statistical profiler (10 ms; the
# dashboard's Profile page). That cost ~40 ms of CPU per 784-300-10 Gauss-Newton iteration on 2 cores
# (benchmarks/results/p784_s14.md). Work stealing stays on: turning it off measured no change there and
# breaks the dashboard's /stealing page (HTTP 500). Applied where the dask config holds distributed's
# default (a user's own setting is kept), for the cluster's whole life. The profiler is off unless
# connect(profile=True) asks for it: a performance report shows the workers' profiles.
IN_PROCESS_CONFIG = {"distributed.admin.tick.interval": "500ms"}
PROFILER_OFF = {"distributed.worker.profile.enabled": False}


class DryRun(Exception):
    """Raised by :func:`connect` with ``dry_run=True`` once the job script is printed (exit status 0)."""


# --------------------------------------------------------------------------- configuration
def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as exc:
        raise InputError(f"cannot read the jobqueue config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text file; the jobqueue config is YAML text like the project's "
                         "jobqueue.yaml") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None  # one line
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a mapping with a 'jobqueue:' section")
    return data


def _without_defaults(user: dict, defaults: dict) -> dict:
    """Return the entries of ``user`` that differ from ``defaults`` (recursively)."""
    out = {}
    for key, value in user.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            sub = _without_defaults(value, defaults[key])
            if sub:
                out[key] = sub
        elif key not in defaults or defaults[key] != value:
            out[key] = value
    return out


def load_jobqueue_config(path=None) -> dict:
    """Return the layered config ``{"jobqueue": {...}, "admm-dask": {...}}`` for batch clusters.

    Layers, later wins: dask-jobqueue's built-in defaults; ``path`` (default:
    the project's ``jobqueue.yaml``, skipped if absent); the user's dask config
    (``~/.config/dask/*.yaml``, ``DASK_JOBQUEUE__SLURM__QUEUE=…`` variables).
    User values equal to dask-jobqueue's defaults (the copy it writes to
    ``~/.config/dask/jobqueue.yaml``) do not override the file.
    """
    builtin = _read_yaml(Path(_jobqueue().__file__).with_name("jobqueue.yaml"))
    if path is None:
        given = _read_yaml(PROJECT_JOBQUEUE) if PROJECT_JOBQUEUE.exists() else {}
    else:
        given = _read_yaml(Path(path).expanduser())
        if "jobqueue" not in given:
            raise InputError(f"{path} has no 'jobqueue:' section (see the project's jobqueue.yaml)")
    for kind, section in (given.get("jobqueue") or {}).items():
        known = builtin["jobqueue"].get(kind)
        if known is None or not isinstance(section, dict):
            continue
        unknown = sorted({k.replace("_", "-") for k in section} - set(known))
        if unknown:
            raise InputError(f"unknown key(s) {', '.join(unknown)} in jobqueue.{kind} of {path or PROJECT_JOBQUEUE}; "
                             f"dask-jobqueue knows: {', '.join(sorted(known))}")
    user = dask.config.collect(paths=dask.config.paths, env=os.environ)
    user = _without_defaults({k: user[k] for k in ("jobqueue", "admm-dask") if k in user}, builtin)
    merged = dask.config.merge(builtin, {k: given.get(k) or {} for k in ("jobqueue", "admm-dask")}, user)
    merged.setdefault("admm-dask", {})
    return merged


def _setting(conf: dict, key: str, default):
    value = conf.get("admm-dask", {}).get(key)
    return default if value is None else value


def _security(conf: dict):
    """Return the :class:`distributed.security.Security` of a batch cluster (None: plain TCP)."""
    from distributed.security import Security

    mode = str(_setting(conf, "security", "temporary")).lower()
    if mode not in SECURITY_MODES:
        raise InputError(f"admm-dask.security is {mode!r}; expected one of {', '.join(SECURITY_MODES)}")
    if mode == "none":
        log.warning("admm-dask.security is 'none': the scheduler accepts plain TCP from anyone who can reach it")
        return None
    if mode == "config":
        sec = Security(require_encryption=True)
        if not (sec.tls_ca_file and sec.tls_scheduler_cert and sec.tls_worker_cert and sec.tls_client_cert):
            raise InputError("admm-dask.security is 'config' but the dask config lacks TLS certificates: set "
                             "distributed.comm.tls.ca-file and the scheduler, worker and client cert/key")
        return sec
    return Security.temporary()


def _jobqueue():
    """Import dask_jobqueue without its process-wide SIGINT handler.

    Its runner module (imported by its SLURM support) installs a handler calling
    ``sys.exit()``, so Ctrl-C would end a run with exit status 0 and no clean-up.
    The handler in force before the import is put back.
    """
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    import dask_jobqueue

    if main and getattr(signal.getsignal(signal.SIGINT), "__module__", "") == "dask_jobqueue.runner":
        if getattr(before, "__module__", "") == "dask_jobqueue.runner" or before is None:
            before = signal.default_int_handler
        signal.signal(signal.SIGINT, before)
    return dask_jobqueue


def _jobqueue_class(kind: str):
    return getattr(_jobqueue(), JOBQUEUE_KINDS[kind])


LEGACY_CERT_AGE = 86400.0  # seconds: certificate files of the old flat layout this old are removed


def _process_start(pid: int) -> int | None:
    """Start time (whole seconds since the epoch) of process ``pid``, or None if it is gone."""
    import psutil

    try:
        return int(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def _run_cert_dir(base: Path) -> Path:
    """A fresh directory for this run's temporary certificates: ``run_HOST_PID_START`` under ``base``."""
    import socket

    pid = os.getpid()
    path = base / f"run_{socket.gethostname()}_{pid}_{_process_start(pid)}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def clean_stale_certificates(base: Path) -> list[Path]:
    """Delete certificate directories that killed runs (SIGKILL, a crash) left in ``base``; return them.

    A run directory is stale when it was made on this host by a process that no
    longer runs (its pid is gone or now belongs to a later process). Runs of other
    hosts sharing the directory are left alone. Files of the old flat layout
    (``.dask-jobqueue.worker.*``) are removed once a day old.
    """
    import socket

    host, removed = socket.gethostname(), []
    for path in base.glob("run_*"):
        try:
            _, owner, pid, start = path.name.rsplit("_", 3)
            pid = int(pid)
        except ValueError:
            continue
        if owner != host or pid == os.getpid():
            continue
        if str(_process_start(pid)) != start:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    for path in base.glob(".dask-jobqueue.worker.*"):
        try:
            if time.time() - path.stat().st_mtime > LEGACY_CERT_AGE:
                path.unlink()
                removed.append(path)
        except OSError:
            pass
    return removed


@contextlib.contextmanager
def jobqueue_cluster(kind: str, conf: dict, *, dashboard_address="localhost:8787"):
    """Start the dask-jobqueue cluster ``kind`` (no jobs yet) under ``conf``; close it and cancel its jobs on exit.

    ``conf`` comes from :func:`load_jobqueue_config`; it stays in force
    (``dask.config.set``) while the cluster lives, since jobs read it when submitted.
    Even rendering a job script needs this: the cluster starts a scheduler. Jobs
    are :func:`pipeline.supervisor.supervised_job_class`; temporary certificates
    go to a directory of this run, deleted on exit (and by the next run, should
    this one be killed).
    """
    from pipeline.supervisor import supervised_job_class

    section = conf["jobqueue"][kind]
    _check_section(kind, section)
    security = _security(conf)
    shared = section.get("shared-temp-directory")
    cls = _jobqueue_class(kind)
    # the scheduler runs here: its own error lines (a task failed, a worker died) would repeat ours
    quiet = logging.getLogger("pipeline").getEffectiveLevel() > logging.DEBUG
    kwargs = {"job_cls": supervised_job_class(cls.job_cls), "silence_logs": logging.CRITICAL if quiet else "error"}
    run_dir = None
    if security is not None:
        # workers read the temporary certificates from here: a directory only this user can read
        shared = Path(os.path.expandvars(shared or "~/.admm-dask/tls")).expanduser().resolve()
        try:
            shared.mkdir(parents=True, exist_ok=True, mode=0o700)
            for stale in clean_stale_certificates(shared):
                log.info("removed certificates a killed run left: %s", stale)
            run_dir = _run_cert_dir(shared)
        except OSError as exc:
            raise InputError(f"cannot create the certificate directory {shared} "
                             f"(jobqueue.{kind}.shared-temp-directory): {exc.strerror}") from None
        kwargs.update(security=security, shared_temp_directory=str(run_dir))
    options = dict(section.get("scheduler-options") or {})
    options.setdefault("dashboard_address", dashboard_address)
    try:
        with dask.config.set({"jobqueue": conf["jobqueue"], "admm-dask": conf["admm-dask"]}):
            try:
                with _port_taken_quietly():  # the dashboard port in use: no four-line warning before our lines
                    cluster = cls(scheduler_options=options, **kwargs)
            except (OSError, ValueError, TypeError, RuntimeError) as exc:  # RuntimeError: "Cluster failed to start"
                interface = section.get("interface")
                hint = (f" (jobqueue.{kind}.interface is {interface!r}: does it exist on this machine?)"
                        if interface else "")
                given = {k: options[k] for k in ("host", "interface", "port") if options.get(k) not in (None, "")}
                if given and not interface:  # where the scheduler was told to listen: the likely cause
                    hint = (f" (jobqueue.{kind}.scheduler-options {given}: the scheduler listens here, so host must be "
                            "an address of this machine, interface one of its network interfaces, port a free one)")
                cause = exc
                while cause is not None and not isinstance(cause, OSError):  # "cannot get address of non-running
                    cause = cause.__cause__ or cause.__context__  # Server" hides the OSError that stopped it
                raise InputError(f"could not start the {kind} cluster's scheduler{hint}: "
                                 f"{cause.strerror if isinstance(cause, OSError) and cause.strerror else exc}") from None
            try:
                yield cluster
            finally:
                try:
                    cluster.close(timeout=60)
                finally:
                    for key in ("ca_file", "cert", "key"):  # the certificate files dask-jobqueue wrote
                        handle = getattr(cluster, f"_job_{key}", None)
                        if handle is not None:
                            handle.close()
    finally:
        if run_dir is not None:
            _close_certificate_files(run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)


def _close_certificate_files(run_dir: Path) -> None:
    """Close (which deletes) the certificate files dask-jobqueue holds open in ``run_dir``.

    Also those of a cluster whose start a signal interrupted, which nothing else
    references: left to the garbage collector they would complain that
    ``run_dir`` is gone.
    """
    import gc
    import tempfile

    prefix = str(run_dir) + os.sep
    for obj in gc.get_objects():
        if isinstance(obj, tempfile._TemporaryFileWrapper) and str(obj.name).startswith(prefix):
            with contextlib.suppress(OSError):
                obj.close()


def _check_section(kind: str, section: dict) -> None:
    """One clear line for the values dask-jobqueue would reject with a traceback."""
    from dask.utils import parse_bytes

    for key in ("cores", "processes"):
        value = section.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"jobqueue.{kind}.{key} is {value!r}; expected a whole number >= 1")
    memory = section.get("memory")
    if memory is not None:
        try:
            parse_bytes(memory)
        except (ValueError, TypeError):
            raise InputError(f"jobqueue.{kind}.memory is {memory!r}; expected a size like 4GiB") from None


# --------------------------------------------------------------------------- batch workers
class ClusterFailure(InputError):
    """The batch cluster cannot go on (see :mod:`pipeline.supervisor`); one ``error:`` line, exit status 2."""


def _wait_for_workers(client, cluster, supervisor, n, timeout, kind, report):
    """Block until ``n`` workers are connected; raise :class:`ClusterFailure` on timeout or a failed submission."""
    t0, next_report = time.monotonic(), 0.0
    while True:
        have = len(client.nthreads())
        elapsed = time.monotonic() - t0
        if supervisor.fatal is not None:
            raise ClusterFailure(supervisor.fatal)
        if have >= n:
            report(f"{kind}: {have} workers connected after {elapsed:.1f} s (jobs {', '.join(supervisor.job_ids())})")
            supervisor.mark_started(cluster.scheduler.workers)
            return
        if elapsed >= timeout:
            logs = cluster._dummy_job.log_directory
            advice = (", or wait longer with --worker-timeout" if supervisor.waiting_heals()
                      else "; the queue gives a reason above that waiting will not cure")
            raise ClusterFailure(
                f"only {have} of {n} {kind} workers connected within {timeout:.0f} s ({supervisor.situation()}): "
                f"check the queue ({'squeue' if kind == 'slurm' else 'qstat'}) and the job logs"
                f"{f' in {logs}' if logs else ''}{advice}")
        if elapsed >= next_report:
            report(f"{kind}: waiting for {n} workers ({have} connected, {elapsed:.0f} s of "
                   f"{timeout:.0f} s; {supervisor.situation() if supervisor.job_ids() else 'jobs being submitted'})")
            next_report += PROGRESS_EVERY
        try:
            client.wait_for_workers(n, timeout=min(1.0, max(0.1, timeout - elapsed)))
        except TimeoutError:
            pass


@contextlib.contextmanager
def _interrupt_on_failure(supervisor):
    """While the run lasts, a supervisor stop raises :class:`ClusterFailure` in the main thread.

    The supervisor runs on the event loop's thread; it wakes the main thread with
    SIGUSR1 (a real signal interrupts a blocked wait), whose handler raises.
    Outside the main thread the failure surfaces when the cluster is next waited on.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    main = threading.main_thread().ident

    def raise_failure(signum, frame):
        if supervisor.fatal is not None:
            raise ClusterFailure(supervisor.fatal)

    previous = signal.signal(signal.SIGUSR1, raise_failure)
    supervisor.on_fatal = lambda: signal.pthread_kill(main, signal.SIGUSR1)
    try:
        yield
    finally:
        supervisor.on_fatal = None
        signal.signal(signal.SIGUSR1, previous)


def dashboard_link(client, kind: str | None = None) -> str:
    """A dashboard link the user can open, with the ssh tunnel to use for batch clusters.

    distributed's link names the scheduler's host address even when the
    dashboard listens on localhost only; here the host is the one it listens on.
    """
    import socket

    link = client.dashboard_link
    scheduler = getattr(getattr(client, "cluster", None), "scheduler", None)
    server = getattr(scheduler, "http_server", None)
    try:
        host, port = next(iter(server._sockets.values())).getsockname()[:2]
    except (AttributeError, StopIteration, OSError):
        return link
    local = host in ("127.0.0.1", "::1", "localhost")
    shown = "localhost" if local else (socket.gethostname() if host in ("0.0.0.0", "::") else host)
    link = f"http://{shown}:{port}/status"
    if kind in JOBQUEUE_KINDS:
        tunnel_host = socket.gethostname()
        link += (f" (from your computer: ssh -L {port}:localhost:{port} {tunnel_host}, then open "
                 f"http://localhost:{port}/status)") if local else ""
    return link


def _batch_client(stack, kind, conf, jobs, adapt, dashboard_address, timeout, dry_run, report, chunk_bytes=None):
    from distributed import Client

    cls = _jobqueue_class(kind)
    command = cls.job_cls.submit_command
    if not dry_run and shutil.which(command) is None:
        raise InputError(f"--cluster {kind} submits jobs with {command!r}, which is not on PATH here: run on a "
                         f"{kind.upper()} login node, or use --cluster local")
    cluster = stack.enter_context(jobqueue_cluster(kind, conf, dashboard_address=dashboard_address))
    if dry_run:
        from pipeline.memory import fits_message, parse_limit

        print(cluster.job_script(), flush=True)
        job = cluster._dummy_job
        warning = fits_message(chunk_bytes, parse_limit(job.worker_process_memory), kind)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        raise DryRun(kind)
    from pipeline.supervisor import SUBMIT_ATTEMPTS, SUBMIT_BACKOFF, Supervisor

    rotate_after = _setting(conf, "rotate-after", None)
    supervisor = Supervisor(cluster, kind, report=report, timeout=timeout,
                            attempts=_setting(conf, "submit-attempts", SUBMIT_ATTEMPTS),
                            backoff=parse_timedelta(_setting(conf, "submit-backoff", SUBMIT_BACKOFF)),
                            rotate_after=parse_timedelta(rotate_after) if rotate_after else None)
    stack.callback(supervisor.stop)
    stack.enter_context(_interrupt_on_failure(supervisor))
    lo, hi = adapt if adapt else (jobs, jobs)
    cluster.scale(jobs=lo)
    if adapt:
        cluster.adapt(minimum_jobs=lo, maximum_jobs=hi)
    client = stack.enter_context(Client(cluster))
    client.admm_supervisor = supervisor
    processes = cluster._dummy_job.worker_processes
    report(f"{kind}: scheduler {cluster.scheduler_address}; jobs submitted with {command}, "
           f"supervised (README: Running on SLURM or PBS)")
    _wait_for_workers(client, cluster, supervisor, max(1, lo) * processes, timeout, kind, report)
    return client


# --------------------------------------------------------------------------- local and remote
def local_processes(mode: str = "auto", data_bytes: int | None = None, memory_limit=None, gil_bound: bool = False) -> bool:
    """Return whether the local cluster runs worker processes (True) or threads in this process (False).

    ``auto``: threads when the training data is known to be at most
    :data:`THREADS_MAX_BYTES` (no process start-up, ~1.3 s here, and nothing
    spawned, so it works from ``python -c``, stdin and notebooks), processes
    otherwise (the GIL-free option for long out-of-core runs), and always with a
    ``memory_limit``: only a worker process can be held to one (a thread worker
    over its limit would pause for ever). ``gil_bound`` work (the consensus
    solver's minibatch loops in Python: 5-7x slower per pass on two threads of
    one process, benchmarks/results/compare_consensus_*_threads.md) also gets
    processes.
    """
    if mode not in LOCAL_MODES:
        raise InputError(f"--local-mode {mode!r}: expected one of {', '.join(LOCAL_MODES)}")
    if mode == "threads" and memory_limit is not None:
        raise InputError("--memory-limit holds worker processes to a limit; with --local-mode threads the workers "
                         "share this process: drop one of the two flags")
    if mode != "auto":
        return mode == "processes"
    return gil_bound or memory_limit is not None or data_bytes is None or data_bytes > THREADS_MAX_BYTES


@contextlib.contextmanager
def _local_cluster(n_workers, threads_per_worker, memory_limit, dashboard_address, processes=True, profile=False):
    from distributed import LocalCluster

    cores = os.cpu_count() or 1
    threads = max(1, int(threads_per_worker or 1))
    workers = int(n_workers or max(1, cores // threads))
    quiet = logging.getLogger("pipeline").getEffectiveLevel() > logging.DEBUG  # our error lines say it once
    lazy = dashboard_address is not None and importlib.util.find_spec("bokeh") is not None
    scheduler_kwargs = {"dashboard": False} if lazy else None  # Bokeh imported at the first request (_lazy)
    if not processes:  # one in-process worker, a thread per would-be worker process; BLAS at one thread
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1), dask.config.set(_in_process_config(profile)):
            with _port_taken_quietly():
                cluster = LocalCluster(
                    n_workers=1, threads_per_worker=workers * threads, processes=False,
                    memory_limit=memory_limit or "auto", dashboard_address=dashboard_address,
                    scheduler_kwargs=scheduler_kwargs, silence_logs=logging.CRITICAL if quiet else logging.ERROR)
            with cluster:
                _lazy(cluster, lazy)
                yield cluster
        return
    # distributed's default MALLOC_TRIM_THRESHOLD_ cost ~24 % per pass here (measured when the pipeline was designed);
    # BLAS stays at one thread per worker thread (OMP/MKL/OPENBLAS_NUM_THREADS=1).
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), _port_taken_quietly():
        try:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                                   memory_limit=memory_limit or "auto", dashboard_address=dashboard_address,
                                   scheduler_kwargs=scheduler_kwargs,
                                   silence_logs=logging.CRITICAL if quiet else logging.ERROR,
                                   preload=["pipeline.worker_setup"])
        except RuntimeError as exc:  # distributed's "Nanny failed to start.": a process could not be spawned, or
            if "failed to start" not in str(exc):  # was too slow to start (a loaded machine: a TimeoutError)
                raise
            cause = _first_cause(exc)
            why = ("or try again: a worker took too long to start (a busy machine?)" if cause.startswith("TimeoutError")
                   else "or lift what stops new processes here (a process limit, a read-only or full /dev/shm)")
            raise InputError(f"could not start the local cluster's worker processes ({cause}); run with "
                             f"--local-mode threads, {why}") from None
    with cluster:
        _lazy(cluster, lazy)
        yield cluster


def _first_cause(exc: BaseException) -> str:
    """Return the first operating-system error in ``exc``'s chain of causes (else its deepest cause) as short text."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    found = next((e for e in chain if isinstance(e, OSError)), chain[-1])
    text = (found.strerror if isinstance(found, OSError) and found.strerror else str(found)).splitlines()
    return f"{type(found).__name__}: {text[0] if text else ''}".rstrip(": ")


def _in_process_config(profile: bool = False) -> dict:
    """Return the :data:`IN_PROCESS_CONFIG` entries (and :data:`PROFILER_OFF`'s unless ``profile``) whose key the
    dask config holds at distributed's default."""
    import distributed  # noqa: F401 -- registers its defaults

    defaults = dask.config.merge(*dask.config.defaults)
    wanted = IN_PROCESS_CONFIG if profile else {**IN_PROCESS_CONFIG, **PROFILER_OFF}
    return {key: value for key, value in wanted.items()
            if dask.config.get(key, None) == dask.config.get(key, None, config=defaults)}


@contextlib.contextmanager
def _port_taken_quietly():
    """Silence distributed's four-line 'Port 8787 is already in use … Hosting the HTTP server on port N instead'.

    Another run (or user) on this machine holds the default dashboard port: the scheduler takes a free one, and
    ``train`` prints the link it really got (:func:`dashboard_link`); the warning only broke the one-line errors.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Port \d+ is already in use", category=UserWarning)
        yield


def _lazy(cluster, lazy: bool) -> None:
    """Serve the local scheduler's Bokeh dashboard from its first request on (:func:`pipeline.dashboard.lazy_dashboard`)."""
    if lazy:
        from pipeline.dashboard import lazy_dashboard

        lazy_dashboard(cluster.scheduler)


def _remote_security(address: str):
    """Return ``(address, security)`` for a running scheduler; bare ``host:port`` is TLS when certificates are configured."""
    from distributed.security import Security

    sec = Security()
    has_tls = bool(sec.tls_ca_file and sec.tls_client_cert)
    if "://" not in address:
        address = ("tls://" if has_tls else "tcp://") + address
    if address.startswith("tls://"):
        if not has_tls:
            raise InputError(f"{address} needs TLS certificates: set distributed.comm.tls.ca-file and "
                             "distributed.comm.tls.client.cert/key in your dask config")
        return address, sec
    return address, None


def _probe_scheduler(address: str, timeout: float = 5.0, scheduler_file=None) -> None:
    """Raise :class:`InputError` at once when nothing listens at a tcp:// or tls:// ``address`` or its host is unknown.

    ``Client`` retries a refused connection until its 30 s timeout; a mistyped port or host is told in a second
    instead. A probe that times out (a firewall that drops packets) leaves the verdict to ``Client``. The probe
    opens and closes one TCP connection. ``scheduler_file``: where ``address`` was read, named in the errors.
    """
    import socket
    from urllib.parse import urlsplit

    where = f" (the address in scheduler file {scheduler_file})" if scheduler_file is not None else ""
    if not address.startswith(("tcp://", "tls://")):
        return
    try:
        parts = urlsplit(address)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise InputError(f"--cluster {address}{where}: expected a scheduler address like tls://host:8786") from None
    if not host or port is None:
        raise InputError(f"--cluster {address}{where}: expected a scheduler address like tls://host:8786")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except socket.gaierror as exc:
        raise InputError(f"could not reach the Dask scheduler at {address}{where}: host {host!r} not found "
                         f"({exc.strerror})") from None
    except ConnectionRefusedError:
        raise InputError(f"could not reach the Dask scheduler at {address}{where}: connection refused (no scheduler "
                         "listens there: check the address, or start one with dask scheduler)") from None
    except OSError:  # a timeout or an unreachable network: Client says what it finds
        return


MIN_LOCAL_WORKER_BYTES = 256 * 2**20  # a Dask worker process alone takes ~100-150 MB


@contextlib.contextmanager
def connect(cluster: str = "local", *, n_workers=None, threads_per_worker=1, memory_limit=None,
            dashboard_address="localhost:8787", jobs=None, adapt=None, jobqueue_config=None,
            worker_timeout=None, dry_run=False, report=None, chunk_bytes=None, processes=True, profile=False):
    """Yield a :class:`distributed.Client` for the cluster spec; close what this started.

    ``local``: ``n_workers`` worker processes of ``threads_per_worker`` threads,
    or with ``processes=False`` one in-process worker with as many threads
    (:func:`local_processes` chooses), whose statistical profiler runs only with
    ``profile`` (a performance report's worker profiles).
    For ``slurm``/``pbs``: ``jobs`` batch jobs (default 1), or ``adapt=(min, max)``
    jobs; the config is :func:`load_jobqueue_config` of ``jobqueue_config``; waits
    up to ``worker_timeout`` seconds (default ``admm-dask.worker-timeout``, 600) for
    the workers, reporting progress; jobs that end are resubmitted; all jobs are
    cancelled on exit. ``dry_run`` prints the job script (and a warning when a chunk
    task of ``chunk_bytes`` would not fit a worker) and raises :class:`DryRun`.
    A scheduler address, given or read from a scheduler file, is probed first
    (:func:`_probe_scheduler`): no scheduler there is one error in seconds.
    """
    from distributed import Client

    spec = cluster or "local"
    if spec == "local" and memory_limit is not None and str(memory_limit).strip().lower() not in ("auto", "0", "none"):
        from dask.utils import format_bytes, parse_bytes

        if parse_bytes(memory_limit) < MIN_LOCAL_WORKER_BYTES:  # a starved worker pauses: a silent hang
            raise InputError(f"--memory-limit {memory_limit} is too small: a worker needs at least "
                             f"{format_bytes(MIN_LOCAL_WORKER_BYTES)}")
    if isinstance(dashboard_address, str) and dashboard_address.startswith(":"):
        dashboard_address = "localhost" + dashboard_address  # a bare :PORT listens where its link points
    report = report or (lambda line: print(line, file=sys.stderr, flush=True))
    batch = spec in JOBQUEUE_KINDS
    if not batch and (jobs is not None or adapt is not None):
        raise InputError(f"--jobs and --adapt size batch clusters (--cluster slurm|pbs), not {spec!r}; "
                         "the local cluster's size is --workers")
    if dry_run and not batch:
        raise InputError(f"--dry-run prints a batch job script: it needs --cluster slurm or pbs, not {spec!r}")
    if jobs is not None and jobs < 1:
        raise InputError(f"--jobs {jobs}: at least one job is needed")
    if adapt is not None and not 1 <= adapt[0] <= adapt[1]:
        raise InputError(f"--adapt {adapt[0]}:{adapt[1]}: expected 1 <= MIN <= MAX")
    with contextlib.ExitStack() as stack:
        try:
            if batch:
                conf = load_jobqueue_config(jobqueue_config)
                timeout = float(worker_timeout if worker_timeout is not None
                                else _setting(conf, "worker-timeout", DEFAULT_WORKER_TIMEOUT))
                client = _batch_client(stack, spec, conf, jobs or 1, adapt, dashboard_address, timeout,
                                       dry_run, report, chunk_bytes)
            elif spec == "local":
                started = stack.enter_context(_local_cluster(n_workers, threads_per_worker, memory_limit,
                                                             dashboard_address, processes, profile))
                client = stack.enter_context(Client(started))
            elif spec.endswith(".json"):
                if not Path(spec).exists():
                    raise InputError(f"scheduler file {spec} does not exist")
                import json

                address = json.loads(Path(spec).read_text()).get("address", "") or ""
                if not address:  # else probed as "tcp://", or Client's own wait
                    raise InputError(f"scheduler file {spec} holds no scheduler address (its \"address\" is empty "
                                     "or missing): name the file dask scheduler --scheduler-file wrote")
                address, security = _remote_security(address)
                _probe_scheduler(address, scheduler_file=spec)
                client = stack.enter_context(Client(scheduler_file=spec, security=security, timeout="30s"))
            elif "://" in spec or ":" in spec:
                address, security = _remote_security(spec)
                _probe_scheduler(address)
                client = stack.enter_context(Client(address, security=security, timeout="30s"))
            else:
                raise InputError(f"--cluster {spec!r}: expected 'local', 'slurm', 'pbs', a scheduler address "
                                 "(tls://host:8786) or a scheduler file (path ending in .json)")
            if not batch and spec != "local" and address.startswith("tcp://"):  # said once connected, not before an error
                log.warning("connected to %s without encryption; prefer a tls:// scheduler", address)
            if not batch and spec != "local":  # nobody supervises this cluster's workers: wait_for_a_worker's limit
                client.admm_address = address
                if worker_timeout is not None:
                    client.admm_worker_timeout = float(worker_timeout)
        except (InputError, DryRun):
            raise
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(f"could not start or reach the Dask cluster {spec!r}: {exc}") from None
        except RuntimeError as exc:  # LocalCluster: "Cluster failed to start: <its cause>"
            cause = exc.__cause__
            if spec != "local" or not str(exc).startswith("Cluster failed to start"):
                raise
            hint = (f"; is --dashboard-address {dashboard_address} a free host:port of this machine?"
                    if isinstance(cause, OSError) else "")
            raise InputError(f"could not start the local Dask cluster: {cause or exc}{hint}") from None
        try:
            yield client
        except Exception as exc:
            supervisor = getattr(client, "admm_supervisor", None)
            if supervisor is not None and supervisor.fatal is not None and not isinstance(exc, InputError):
                raise ClusterFailure(supervisor.fatal) from None  # what broke the run, not its echo
            raise


# --------------------------------------------------------------------------- shared storage
def _probe_access(read_paths, write_paths):
    """On one worker: return ``[(path, problem), …]`` for paths it cannot read or write into."""
    import socket
    import tempfile

    problems = []
    for p in read_paths:
        if not os.path.exists(p):
            problems.append((p, "does not exist"))
        elif not os.access(p, os.R_OK | (os.X_OK if os.path.isdir(p) else 0)):
            problems.append((p, "is not readable"))
    for p in write_paths:
        if not os.path.isdir(p):
            problems.append((p, "does not exist" if not os.path.exists(p) else "is not a directory"))
            continue
        try:  # create a file: os.access can be wrong on network file systems (root squash, ACLs)
            with tempfile.NamedTemporaryFile(dir=p, prefix=".admm-dask-probe-"):
                pass
        except OSError as exc:
            problems.append((p, f"is not writable ({exc.strerror})"))
    return socket.gethostname(), problems


def _unstarted(client) -> bool:
    """True for a scheduler nobody here starts workers for: one given by address or scheduler file (``connect``
    marks it ``admm_address``), or a client without a cluster object (a user's ``Client("tcp://...")``)."""
    return getattr(client, "admm_address", None) is not None or getattr(client, "cluster", None) is None


def _worker_timeout(client) -> float:
    """The longest a run waits without a worker: its batch cluster's ``--worker-timeout``; for a scheduler nobody
    here starts workers for (:func:`_unstarted`), ``--worker-timeout``, else dask config ``admm-dask.worker-timeout``,
    else :data:`UNSUPERVISED_WORKER_TIMEOUT`; for any other cluster (local, or a user's cluster object: adaptive,
    dask-jobqueue) :data:`DEFAULT_WORKER_TIMEOUT`."""
    supervisor = getattr(client, "admm_supervisor", None)
    if supervisor is not None:
        return float(supervisor.timeout)
    if not _unstarted(client):
        return DEFAULT_WORKER_TIMEOUT
    given = getattr(client, "admm_worker_timeout", None)
    if given is not None:
        return float(given)
    import dask

    return float(dask.config.get("admm-dask.worker-timeout", None) or UNSUPERVISED_WORKER_TIMEOUT)


def wait_for_a_worker(client, timeout=None, report=None) -> None:
    """Return once the cluster has a worker; raise :class:`InputError` after ``timeout`` seconds without one.

    A batch cluster is empty for a moment whenever the jobs whose workers ended (``--lifetime``, a walltime) are
    being replaced: a run that starts then waits for their successors, up to the run's ``--worker-timeout`` (the
    supervisor's, the same limit as for an empty spell later in the run; ``timeout`` None: that, or
    :func:`_worker_timeout`'s for a cluster nobody supervises), saying every :data:`PROGRESS_EVERY` seconds
    that it waits. A client that cannot count its workers is not waited on.
    """
    supervisor = getattr(client, "admm_supervisor", None)
    timeout = _worker_timeout(client) if timeout is None else timeout
    report = report or getattr(supervisor, "report", None) or (lambda line: print(line, file=sys.stderr, flush=True))
    kind = getattr(supervisor, "kind", "the cluster")
    address = getattr(client, "admm_address", None) or getattr(getattr(client, "scheduler", None), "address", None)
    start = f"dask worker {address}" if isinstance(address, str) and "://" in address else "dask worker SCHEDULER"
    if _unstarted(client):  # nobody here will start a worker: what to do, and how to wait longer
        how = (f"start workers for its scheduler ({start}), or wait longer with --worker-timeout SECONDS "
               "(Python: dask config admm-dask.worker-timeout)")
    else:  # a cluster object: this process's local cluster, or the user's own (adaptive, dask-jobqueue)
        how = (f"its {type(client.cluster).__name__} started none (are its workers failing to start? an adaptive "
               "cluster: is adapt(minimum=1) set and are its jobs running?)")
    t0, next_report = time.monotonic(), PROGRESS_EVERY
    while True:
        try:
            if client.nthreads():
                return
        except Exception:  # noqa: BLE001 -- a client that cannot say (as _threads in pipeline.training)
            return
        if supervisor is not None and supervisor.fatal is not None:
            raise ClusterFailure(supervisor.fatal)
        elapsed = time.monotonic() - t0
        situation = f": {supervisor.situation()}" if supervisor is not None else ""
        if elapsed >= timeout and supervisor is not None:  # as the supervisor's own stop later in the run
            raise ClusterFailure(f"{kind}: no worker for {timeout:.0f} s (--worker-timeout){situation}")
        if elapsed >= timeout:
            raise InputError(f"the cluster has had no worker for {timeout:.0f} s: {how}")
        if elapsed >= next_report:
            report(f"{kind}: no worker connected; waiting for one ({elapsed:.0f} s of {timeout:.0f} s)"
                   + (situation if supervisor is not None else f": {how}" if next_report == PROGRESS_EVERY else ""))
            next_report += PROGRESS_EVERY
        try:
            client.wait_for_workers(1, timeout=min(1.0, max(0.1, timeout - elapsed)))
        except TimeoutError:
            pass


def check_worker_access(client, read_paths=(), write_paths=(), timeout=None) -> None:
    """Raise :class:`InputError` unless every worker can read ``read_paths`` and create files in ``write_paths``.

    Batch workers run on other machines: the data store and the run store must
    be on a file system all of them mount at the same path. An empty cluster (jobs
    being replaced) is waited for: :func:`wait_for_a_worker` with ``timeout``.
    """
    read_paths = [str(Path(p).resolve()) for p in read_paths]
    write_paths = [str(Path(p).resolve()) for p in write_paths]
    timeout = _worker_timeout(client) if timeout is None else timeout
    t0 = time.monotonic()
    while True:
        try:
            results = client.run(_probe_access, read_paths, write_paths)
        except OSError:  # a worker left while asked (CommClosedError): ask those there are now
            results = {}
        if results:
            break
        wait_for_a_worker(client, max(0.0, timeout - (time.monotonic() - t0)))  # one limit for all the waits
        if client.nthreads() and time.monotonic() - t0 > timeout:  # workers come and go faster than we can ask
            raise InputError(f"the cluster's workers left whenever asked to check the stores, for {timeout:.0f} s")
    by_problem: dict[tuple, list] = {}
    for worker, (host, problems) in sorted(results.items()):
        for path, problem in problems:
            by_problem.setdefault((path, problem), []).append(f"{worker} on {host}")
    if by_problem:
        lines = [f"{path} {problem} for {len(ws)} of {len(results)} workers ({', '.join(ws[:3])}"
                 f"{', …' if len(ws) > 3 else ''})" for (path, problem), ws in by_problem.items()]
        raise InputError("the workers cannot use the stores: " + "; ".join(lines)
                         + ". Put the data and the run store on a file system every worker mounts at "
                           "the same path (shared storage), or fix the permissions")
