"""Starting or connecting to the Dask cluster that runs the chunk tasks.

``--cluster`` picks one of:

========================  =========================================================
``local`` (default)       an embedded :class:`distributed.LocalCluster`, one
                          single-threaded worker process per core
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
Their jobs are cancelled when :func:`connect` exits, normally or by an error.
"""
from __future__ import annotations

import contextlib
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
PROGRESS_EVERY = 5.0  # seconds between "waiting for N workers" lines


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
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML: {exc}") from None
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
    import dask_jobqueue

    builtin = _read_yaml(Path(dask_jobqueue.__file__).with_name("jobqueue.yaml"))
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


def _jobqueue_class(kind: str):
    import dask_jobqueue

    return getattr(dask_jobqueue, JOBQUEUE_KINDS[kind])


@contextlib.contextmanager
def jobqueue_cluster(kind: str, conf: dict, *, dashboard_address="localhost:8787"):
    """Start the dask-jobqueue cluster ``kind`` (no jobs yet) under ``conf``; close it and cancel its jobs on exit.

    ``conf`` comes from :func:`load_jobqueue_config`; it stays in force
    (``dask.config.set``) while the cluster lives, since jobs read it when submitted.
    Even rendering a job script needs this: the cluster starts a scheduler.
    """
    section = conf["jobqueue"][kind]
    security = _security(conf)
    shared = section.get("shared-temp-directory")
    kwargs = {}
    if security is not None:
        # workers read the temporary certificates from here: a directory only this user can read
        shared = Path(os.path.expandvars(shared or "~/.admm-dask/tls")).expanduser().resolve()
        try:
            shared.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise InputError(f"cannot create the certificate directory {shared} "
                             f"(jobqueue.{kind}.shared-temp-directory): {exc.strerror}") from None
        kwargs.update(security=security, shared_temp_directory=str(shared))
    options = dict(section.get("scheduler-options") or {})
    options.setdefault("dashboard_address", dashboard_address)
    with dask.config.set({"jobqueue": conf["jobqueue"], "admm-dask": conf["admm-dask"]}):
        try:
            cluster = _jobqueue_class(kind)(scheduler_options=options, **kwargs)
        except (OSError, ValueError, TypeError, RuntimeError) as exc:  # RuntimeError: "Cluster failed to start"
            interface = section.get("interface")
            hint = (f" (jobqueue.{kind}.interface is {interface!r}: does it exist on this machine?)"
                    if interface else "")
            raise InputError(f"could not start the {kind} cluster's scheduler{hint}: {exc}") from None
        try:
            yield cluster
        finally:
            cluster.close()
            for key in ("ca_file", "cert", "key"):  # delete the certificate files dask-jobqueue wrote
                handle = getattr(cluster, f"_job_{key}", None)
                if handle is not None:
                    handle.close()


# --------------------------------------------------------------------------- batch workers
class _Keeper:
    """Keep a batch cluster's workers: resubmit ended jobs, rotate old workers, remember submission errors.

    Jobs whose worker ended (walltime, ``--lifetime``) are resubmitted. With
    ``rotate_after`` seconds, a worker that old gets a successor job first and
    is retired gracefully (its data moves to the others) only once the successor
    has connected, so the cluster never empties before a walltime.
    """

    def __init__(self, cluster, rotate_after=None, interval=1.0):
        from tornado.ioloop import PeriodicCallback

        self.cluster, self.rotate_after, self.error = cluster, rotate_after, None
        self.first_seen: dict[str, float] = {}
        self.rotating: dict[str, str] = {}  # old spec name -> successor spec name
        self.rotations = 0
        self._pc = PeriodicCallback(self._tick, interval * 1000)
        cluster.loop.add_callback(self._pc.start)

    async def _tick(self):
        if self.cluster.status.name != "running":
            return
        try:
            if self.rotate_after:
                self._rotate()
            await self.cluster._correct_state()
        except Exception as exc:  # noqa: BLE001 -- reported to the user by _wait_for_workers
            self.error = exc

    def _spec_name(self, worker_name) -> str | None:
        spec, name = self.cluster.worker_spec, str(worker_name)
        return name if name in spec else (name.rsplit("-", 1)[0] if name.rsplit("-", 1)[0] in spec else None)

    def _bump_adaptive(self, delta):
        adaptive = getattr(self.cluster, "_adaptive", None)
        if adaptive is not None and adaptive.periodic_callback is not None:
            n = delta * self.cluster._dummy_job.worker_processes
            adaptive.minimum, adaptive.maximum = adaptive.minimum + n, adaptive.maximum + n

    def _rotate(self):
        now, spec = time.monotonic(), self.cluster.worker_spec
        connected = {self._spec_name(ws.name) for ws in self.cluster.scheduler.workers.values()} - {None}
        for name in connected:
            self.first_seen.setdefault(name, now)
        # retire only mid-pass, when the successor has connected: the scheduler then moves the old
        # worker's results and the pass's parameters (a graph literal) to the workers that stay
        busy = any(ws.processing for ws in self.cluster.scheduler.workers.values())
        for old, new in list(self.rotating.items()):
            if (new in connected and busy) or new not in spec or old not in spec:
                spec.pop(old, None)  # _correct_state retires it gracefully, then cancels its job
                del self.rotating[old]
                self._bump_adaptive(-1)
                self.rotations += 1
        if self.rotating:
            return  # one rotation at a time
        old = [n for n in connected if n in spec and now - self.first_seen[n] > self.rotate_after]
        if old:
            successor = self.cluster.new_worker_spec()
            spec.update(successor)
            self._bump_adaptive(+1)
            self.rotating[min(old, key=self.first_seen.get)] = next(iter(successor))

    def stop(self):
        self.cluster.loop.add_callback(self._pc.stop)


def _job_ids(cluster) -> list[str]:
    return sorted(str(job.job_id) for job in list(cluster.workers.values()) if getattr(job, "job_id", None))


def _wait_for_workers(client, cluster, keeper, n, timeout, kind, report):
    """Block until ``n`` workers are connected; raise :class:`InputError` on timeout or a failed submission."""
    t0, next_report = time.monotonic(), 0.0
    while True:
        have = len(client.nthreads())
        elapsed = time.monotonic() - t0
        if have >= n:
            report(f"{kind}: {have} workers connected after {elapsed:.1f} s (jobs {', '.join(_job_ids(cluster))})")
            return
        if keeper.error is not None:
            raise InputError(f"submitting a {kind} job failed: {keeper.error}")
        if elapsed >= timeout:
            logs = cluster._dummy_job.log_directory
            raise InputError(
                f"only {have} of {n} {kind} workers connected within {timeout:.0f} s (jobs "
                f"{', '.join(_job_ids(cluster)) or 'none submitted'}): check the queue "
                f"({'squeue' if kind == 'slurm' else 'qstat'}) and the job logs"
                f"{f' in {logs}' if logs else ''}, or wait longer with --worker-timeout")
        if elapsed >= next_report:
            report(f"{kind}: waiting for {n} workers ({have} connected, {elapsed:.0f} s of "
                   f"{timeout:.0f} s; jobs {', '.join(_job_ids(cluster)) or 'being submitted'})")
            next_report += PROGRESS_EVERY
        try:
            client.wait_for_workers(n, timeout=min(1.0, max(0.1, timeout - elapsed)))
        except TimeoutError:
            pass


def _batch_client(stack, kind, conf, jobs, adapt, dashboard_address, timeout, dry_run, report):
    from distributed import Client

    cls = _jobqueue_class(kind)
    command = cls.job_cls.submit_command
    if not dry_run and shutil.which(command) is None:
        raise InputError(f"--cluster {kind} submits jobs with {command!r}, which is not on PATH here: run on a "
                         f"{kind.upper()} login node, or use --cluster local")
    cluster = stack.enter_context(jobqueue_cluster(kind, conf, dashboard_address=dashboard_address))
    if dry_run:
        print(cluster.job_script(), flush=True)
        raise DryRun(kind)
    rotate_after = _setting(conf, "rotate-after", None)
    keeper = _Keeper(cluster, rotate_after=parse_timedelta(rotate_after) if rotate_after else None)
    stack.callback(keeper.stop)
    lo, hi = adapt if adapt else (jobs, jobs)
    cluster.scale(jobs=lo)
    try:
        cluster.sync(cluster._correct_state)  # submit now, so sbatch/qsub errors surface here
    except Exception as exc:  # noqa: BLE001 -- any submission failure is the user's to fix
        raise InputError(f"submitting {lo} {kind} job(s) failed: {exc}") from None
    if adapt:
        cluster.adapt(minimum_jobs=lo, maximum_jobs=hi)
    client = stack.enter_context(Client(cluster))
    processes = cluster._dummy_job.worker_processes
    report(f"{kind}: scheduler {cluster.scheduler_address}, dashboard {cluster.dashboard_link}")
    _wait_for_workers(client, cluster, keeper, max(1, lo) * processes, timeout, kind, report)
    return client


# --------------------------------------------------------------------------- local and remote
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
    if address.startswith("tcp://"):
        log.warning("connecting to %s without encryption; prefer a tls:// scheduler", address)
    return address, None


@contextlib.contextmanager
def connect(cluster: str = "local", *, n_workers=None, threads_per_worker=1, memory_limit=None,
            dashboard_address="localhost:8787", jobs=None, adapt=None, jobqueue_config=None,
            worker_timeout=None, dry_run=False, report=None):
    """Yield a :class:`distributed.Client` for the cluster spec; close what this started.

    For ``slurm``/``pbs``: ``jobs`` batch jobs (default 1), or ``adapt=(min, max)``
    jobs; the config is :func:`load_jobqueue_config` of ``jobqueue_config``; waits
    up to ``worker_timeout`` seconds (default ``admm-dask.worker-timeout``, 600) for
    the workers, reporting progress; jobs that end are resubmitted; all jobs are
    cancelled on exit. ``dry_run`` prints the job script and raises :class:`DryRun`.
    """
    from distributed import Client

    spec = cluster or "local"
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
                                       dry_run, report)
            elif spec == "local":
                started = stack.enter_context(_local_cluster(n_workers, threads_per_worker, memory_limit,
                                                             dashboard_address))
                client = stack.enter_context(Client(started))
            elif spec.endswith(".json"):
                if not Path(spec).exists():
                    raise InputError(f"scheduler file {spec} does not exist")
                import json

                address = json.loads(Path(spec).read_text()).get("address", "")
                _, security = _remote_security(address)
                client = stack.enter_context(Client(scheduler_file=spec, security=security, timeout="30s"))
            elif "://" in spec or ":" in spec:
                address, security = _remote_security(spec)
                client = stack.enter_context(Client(address, security=security, timeout="30s"))
            else:
                raise InputError(f"--cluster {spec!r}: expected 'local', 'slurm', 'pbs', a scheduler address "
                                 "(tls://host:8786) or a scheduler file (path ending in .json)")
        except (InputError, DryRun):
            raise
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(f"could not start or reach the Dask cluster {spec!r}: {exc}") from None
        yield client


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


def check_worker_access(client, read_paths=(), write_paths=()) -> None:
    """Raise :class:`InputError` unless every worker can read ``read_paths`` and create files in ``write_paths``.

    Batch workers run on other machines: the data store and the run store must
    be on a file system all of them mount at the same path.
    """
    read_paths = [str(Path(p).resolve()) for p in read_paths]
    write_paths = [str(Path(p).resolve()) for p in write_paths]
    results = client.run(_probe_access, read_paths, write_paths)
    if not results:
        raise InputError("the cluster has no workers to check the stores with")
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
