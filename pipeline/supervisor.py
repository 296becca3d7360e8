"""Supervision of a batch cluster's worker jobs for the whole run (``--cluster slurm|pbs``).

Rules (README, *Running on SLURM or PBS*), checked once a second on the
cluster's event loop:

* a failed submission (``sbatch``/``qsub`` exits non-zero) is retried after
  ``submit-backoff`` seconds, doubling up to 60 s; ``submit-attempts`` failed
  rounds in a row stop the run with the batch system's own message. Before any
  worker has connected a failed submission stops the run at once (a wrong
  partition, account or QoS does not heal by waiting);
* a job that left the queue (``squeue``/``qstat``) without a connected worker
  (cancelled while pending, failed at start), or whose worker left, leaves the
  cluster's worker table and is resubmitted;
* no connected worker for ``timeout`` seconds (``--worker-timeout``) stops the
  run, quoting the queue's pending reasons;
* workers older than ``rotate_after`` get a successor job first and retire once
  it has connected, so the cluster never empties before a walltime.

A stop sets :attr:`Supervisor.fatal` and calls ``on_fatal`` (which interrupts
the main thread). The worker table used here (``cluster.workers``,
``cluster.worker_spec``, ``cluster._correct_state``) is dask-jobqueue's
``SpecCluster`` internals; pyproject.toml pins the versions this is tested with.
"""
from __future__ import annotations

import asyncio
import getpass
import logging
import re
import time

log = logging.getLogger(__name__)

SUBMIT_ATTEMPTS = 8    # failed submission rounds in a row before the run stops
SUBMIT_BACKOFF = 2.0   # seconds before the first retry; doubles up to BACKOFF_MAX
BACKOFF_MAX = 60.0
POLL_EVERY = 2.0       # seconds between queue polls
QUEUE_GRACE = 5.0      # a job younger than this may not be in the queue listing yet
TICK_ERRORS = 5        # supervision steps failing in a row that stop the run
QUIET_REASONS = {"", "None", "Priority", "Resources", "BeginTime", "(null)"}  # pending reasons that heal by waiting


def batch_message(exc: BaseException) -> str:
    """The batch system's own words from a failed submission (its stderr, else stdout), on one line."""
    text = str(exc)
    match = re.search(r"stderr:\n(.*)", text, re.S)
    err = match.group(1).strip() if match else ""
    if not err:
        match = re.search(r"stdout:\n(.*?)\nstderr:", text, re.S)
        err = (match.group(1).strip() if match else "") or text.strip()
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    return "; ".join(dict.fromkeys(lines)) or type(exc).__name__


def supervised_job_class(base):
    """``base`` (a dask-jobqueue Job class) whose failed submission is recorded, not raised.

    dask-jobqueue raises it inside ``SpecCluster._correct_state`` (a traceback on
    the event loop) and keeps the unstarted job in the worker table for ever, where
    ``close`` fails on it (``AssertionError: Status.created``). Here the job is
    marked (``submit_error``) for :class:`Supervisor` to remove and retry. The
    worker's memory limit is 90 % of the job's share (headroom for the nanny and
    the batch system's accounting).
    """
    from distributed.core import Status

    class SupervisedJob(base):
        submit_error = None
        counted = False

        async def start(self):
            try:
                await super().start()
            except Exception as exc:  # noqa: BLE001 -- any failed submission is retried, then reported
                self.submit_error = batch_message(exc)
                self.status = Status.running  # ProcessInterface.__await__ asserts it; the supervisor removes us

        async def close(self):
            try:
                await super().close()
            finally:
                self.status = Status.closed
                self._event_finished.set()

        @property
        def worker_process_memory(self):
            from dask.utils import format_bytes

            return format_bytes(0.9 * self.worker_memory / self.worker_processes).replace(" ", "")

    SupervisedJob.__name__ = SupervisedJob.__qualname__ = f"Supervised{base.__name__}"
    return SupervisedJob


async def _run(cmd: list[str], timeout=30.0) -> tuple[int, str, str]:
    try:
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        return 127, "", str(exc)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        return 124, "", f"{cmd[0]} did not answer within {timeout:.0f} s"
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def queue_states(kind: str) -> dict[str, tuple[str, str]] | None:
    """``{job id: (state, pending reason)}`` of this user's jobs, or None if the queue cannot be read."""
    if kind == "slurm":
        rc, out, _ = await _run(["squeue", "-h", "-u", getpass.getuser(), "-o", "%i|%T|%r"])
        if rc != 0:
            return None
        states = {}
        for line in out.splitlines():
            parts = line.strip().split("|", 2)
            if len(parts) == 3:
                states[parts[0]] = (parts[1], parts[2])
        return states
    rc, out, _ = await _run(["qstat"])
    if rc != 0:
        return None
    states = {}
    for line in out.splitlines():
        tokens = line.split()
        if tokens and tokens[0][:1].isdigit():  # skip qstat's header lines
            state = tokens[4] if len(tokens) >= 6 else tokens[-1]
            states[tokens[0].split(".")[0]] = (state, "")
    return states


class Supervisor:
    """Keep a batch cluster's jobs for the whole run (see the module docstring for the rules)."""

    def __init__(self, cluster, kind, *, report, timeout, attempts=SUBMIT_ATTEMPTS, backoff=SUBMIT_BACKOFF,
                 rotate_after=None, interval=1.0, poll=POLL_EVERY):
        from tornado.ioloop import PeriodicCallback

        self.cluster, self.kind, self.report = cluster, kind, report
        self.timeout, self.attempts, self.backoff, self.poll = timeout, int(attempts), float(backoff), poll
        self.rotate_after = rotate_after
        self.command = {"slurm": "sbatch", "pbs": "qsub"}.get(kind, "the submit command")
        self.fatal: str | None = None
        self.on_fatal = None
        self.started = False           # set once the first workers connected (the start-up wait is over)
        self.failures = 0              # failed submission rounds in a row
        self.last_error: str | None = None
        self.retry_at = 0.0
        self.jobs: dict[str, str] = {}          # spec name -> job id
        self.submitted: dict[str, float] = {}   # job id -> when we first saw it
        self.replacing: dict[str, str] = {}     # spec name -> job id it had before
        self.queue: dict[str, tuple[str, str]] = {}
        self.queue_ok = False
        self.missing: dict[str, int] = {}       # job id -> polls in a row it was not in the queue
        self.workers: dict[str, str] = {}       # connected worker address -> spec name
        self.had_worker: set[str] = set()       # job ids whose worker connected
        self.empty_since = time.monotonic()
        self.next_poll = 0.0
        self.first_seen: dict[str, float] = {}
        self.rotating: dict[str, str] = {}      # old spec name -> successor spec name
        self.rotations = 0
        self._busy = False
        self.tick_errors = 0
        self._pc = PeriodicCallback(self._tick, interval * 1000)
        cluster.loop.add_callback(self._pc.start)

    def mark_started(self, scheduler_workers):
        """The start-up wait is over: later arrivals and departures are reported."""
        self._set_workers({addr: self._spec_name(ws.name) for addr, ws in list(scheduler_workers.items())})
        self.started = True

    def _set_workers(self, current: dict):
        """Record the connected workers (address -> spec name); their jobs have had a worker from now on, so
        a job that leaves the queue before the next tick is reported as ended, not as never started."""
        self.workers = current
        jobs = self.cluster.workers  # the job table itself: self.jobs may not have seen a new job yet
        self.had_worker.update(str(job.job_id) for name in current.values()
                               if getattr(job := jobs.get(name), "job_id", None))

    # ------------------------------------------------------------------ the tick
    async def _tick(self):
        if self._busy or self.fatal or self.cluster.status.name != "running":
            return
        self._busy = True
        try:
            now = time.monotonic()
            self._failed_submissions(now)
            self._note_jobs(now)
            if now >= self.next_poll:
                self.next_poll = now + self.poll
                await self._poll_queue(now)
            self._note_workers(now)
            if self.rotate_after:
                self._rotate()
            if not self.fatal and time.monotonic() >= self.retry_at:
                await self.cluster._correct_state()
                self._failed_submissions(time.monotonic())
                self._note_jobs(time.monotonic())
            self.tick_errors = 0
        except Exception as exc:  # noqa: BLE001 -- never let the supervisor die silently
            # a scheduler call can fail once (a worker leaving mid-retire); five ticks in a row stop the run
            self.tick_errors += 1
            log.warning("job supervision: %r (%d in a row)", exc, self.tick_errors)
            if self.tick_errors >= TICK_ERRORS:
                self._stop(f"{self.kind}: supervising the jobs failed {self.tick_errors} times in a row: {exc!r}")
        finally:
            self._busy = False

    def _stop(self, message: str):
        if self.fatal is None:
            self.fatal = message
            if self.on_fatal is not None:
                self.on_fatal()

    def _failed_submissions(self, now):
        workers = self.cluster.workers
        new = [job for job in workers.values() if getattr(job, "submit_error", None) and not job.counted]
        if new:
            for job in new:
                job.counted = True
            self.failures += 1
            self.last_error = new[-1].submit_error
            if not self.started:
                self._stop(f"{self.kind}: {self.command} refused the worker job: {self.last_error}")
                return
            if self.failures >= self.attempts:
                self._stop(f"{self.kind}: {self.failures} {self.command} submissions in a row failed "
                           f"(admm-dask.submit-attempts); the last said: {self.last_error}")
                return
            delay = min(self.backoff * 2 ** (self.failures - 1), BACKOFF_MAX)
            self.retry_at = now + delay
            self.report(f"{self.kind}: {self.command} failed ({self.last_error}); retrying in {delay:.3g} s "
                        f"(attempt {self.failures} of {self.attempts})")
        if now >= self.retry_at:  # back-off over: the failed entries leave the table, _correct_state resubmits
            for name, job in list(workers.items()):
                if getattr(job, "submit_error", None):
                    del workers[name]
                    job.status = type(job.status).closed

    def _note_jobs(self, now):
        current = {name: str(job.job_id) for name, job in self.cluster.workers.items()
                   if getattr(job, "job_id", None)}
        for name, job_id in list(self.jobs.items()):
            if current.get(name) != job_id:  # the job left the table (ended, lost, scaled down, rotated)
                del self.jobs[name]
                if name in self.cluster.worker_spec and name not in self.replacing:
                    self.replacing[name] = job_id
                    if self.started:
                        self.report(f"{self.kind}: job {job_id} ended; submitting a replacement")
        for name, job_id in current.items():
            if self.jobs.get(name) != job_id:
                self.jobs[name] = job_id
                self.submitted[job_id] = now
                self.failures = 0
                old = self.replacing.pop(name, None)
                if old is not None:
                    self.report(f"{self.kind}: job {job_id} submitted to replace job {old}")
        for name in list(self.replacing):
            if name not in self.cluster.worker_spec:
                del self.replacing[name]

    async def _poll_queue(self, now):
        states = await queue_states(self.kind)
        self.queue_ok = states is not None
        if states is None:
            return
        self.queue = states
        connected = set(self.workers.values())
        for name, job_id in list(self.jobs.items()):
            key = job_id.split(".")[0]
            if key in states or name in connected or now - self.submitted.get(job_id, now) < QUEUE_GRACE:
                self.missing.pop(job_id, None)
                continue
            self.missing[job_id] = self.missing.get(job_id, 0) + 1
            had_worker = job_id in self.had_worker
            # gone from the queue, no worker: it ended (its worker left), or was cancelled or failed before
            # its worker connected (seen twice: a listing may lag a submission)
            if self.missing[job_id] >= (1 if had_worker else 2):
                job = self.cluster.workers.pop(name, None)
                self.missing.pop(job_id, None)
                if job is not None:
                    self.report(f"{self.kind}: job {job_id} " + (
                        "ended" if had_worker else "left the queue before its worker connected (cancelled or "
                                                   "failed)") + "; submitting a replacement")
                    self.replacing[name] = job_id
                    del self.jobs[name]
                    await job.close()

    def _spec_name(self, worker_name) -> str | None:
        spec, name = self.cluster.worker_spec, str(worker_name)
        if name in spec:
            return name
        base = name.rsplit("-", 1)[0]
        return base if base in spec or base in self.cluster.workers else name

    def _note_workers(self, now):
        current = {addr: self._spec_name(ws.name) for addr, ws in list(self.cluster.scheduler.workers.items())}
        want = len(self.cluster.worker_spec) * self.cluster._dummy_job.worker_processes
        for addr in set(self.workers) - set(current):
            name = self.workers[addr]
            if name in self.cluster.worker_spec:  # not a rotation or a scale-down
                self.report(f"{self.kind}: worker {addr} (job {self.jobs.get(name, '?')}) lost; "
                            f"{len(current)} of {want} workers connected")
        if self.started:
            for addr in set(current) - set(self.workers):
                self.report(f"{self.kind}: worker {addr} (job {self.jobs.get(current[addr], '?')}) connected; "
                            f"{len(current)} of {want} workers")
        self._set_workers(current)
        if current:
            self.empty_since = None
        elif self.empty_since is None:
            self.empty_since = now
        if self.started and self.empty_since is not None and now - self.empty_since > self.timeout:
            self._stop(f"{self.kind}: no worker for {self.timeout:.0f} s (--worker-timeout): {self.situation()}")

    # ------------------------------------------------------------------ messages
    def job_ids(self) -> list[str]:
        """The ids of the jobs in the cluster's job table now (the main thread asks between ticks: :attr:`jobs`
        may not have seen a job submitted since the last tick)."""
        return sorted({str(job.job_id) for job in list(self.cluster.workers.values()) if getattr(job, "job_id", None)})

    def situation(self) -> str:
        """What the queue says about our jobs, and the last submission error, on one line."""
        parts = []
        for job_id in self.job_ids():
            state, reason = self.queue.get(job_id.split(".")[0], ("", ""))
            if state:
                parts.append(f"job {job_id} {state}" + (f" ({reason})" if reason and reason not in QUIET_REASONS
                                                        else ""))
            else:
                parts.append(f"job {job_id}")
        text = ", ".join(parts) if parts else "no job in the queue"
        if self.last_error and self.failures:
            text += f"; the last {self.command} failed: {self.last_error}"
        return text

    def waiting_heals(self) -> bool:
        """True when every pending job waits for a reason that time cures (priority, resources)."""
        reasons = [self.queue.get(j.split(".")[0], ("", ""))[1] for j in self.job_ids()]
        return not self.failures and all(r in QUIET_REASONS for r in reasons)

    # ------------------------------------------------------------------ rotation
    def _bump_adaptive(self, delta):
        adaptive = getattr(self.cluster, "_adaptive", None)
        if adaptive is not None and adaptive.periodic_callback is not None:
            n = delta * self.cluster._dummy_job.worker_processes
            adaptive.minimum, adaptive.maximum = adaptive.minimum + n, adaptive.maximum + n

    def _rotate(self):
        now, spec = time.monotonic(), self.cluster.worker_spec
        connected = {self._spec_name(ws.name) for ws in self.cluster.scheduler.workers.values()} & set(spec)
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
        # not one retired just above (still connected while it retires): rotating it again would add a successor
        # that replaces nobody, and the cluster would grow by a job with every other rotation
        old = [n for n in connected if n in spec and now - self.first_seen[n] > self.rotate_after]
        if old:
            successor = self.cluster.new_worker_spec()
            spec.update(successor)
            self._bump_adaptive(+1)
            self.rotating[min(old, key=self.first_seen.get)] = next(iter(successor))

    def stop(self, timeout=40.0):
        """Stop supervising; wait for a step in flight (a submission, a queue poll) so that no job is submitted
        after the cluster's jobs are cancelled and no subprocess outlives the event loop."""
        async def _stop():
            self._pc.stop()
            end = time.monotonic() + timeout
            while self._busy and time.monotonic() < end:
                await asyncio.sleep(0.02)

        try:
            self.cluster.sync(_stop)
        except Exception:  # noqa: BLE001 -- the loop may already be gone
            log.debug("stopping the supervision", exc_info=True)
