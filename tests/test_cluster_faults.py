"""Faults on a real batch cluster (``.ci/slurm-up.sh``): training goes on, and gives the local result,
while SLURM worker jobs end and are replaced (issue 6.3) or a worker process is SIGKILLed (issue 5.3)."""
import json
import os
import re
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

import dask
import numpy as np
import pytest

from pipeline.cluster import connect
from pipeline.training import train
from tests.batch import CHUNK_ROWS, CHURN_ITERATIONS, ITERATIONS, _config, _gone_from_squeue, _jobqueue_yaml, needs_slurm
from tests.conftest import quiet


pytestmark = [pytest.mark.slurm, needs_slurm]


def _committed(store) -> int:
    try:
        return json.loads((Path(store) / "manifest.json").read_text())["iteration"]
    except (OSError, ValueError):
        return -1


# a lambda is pickled by value: the workers cannot import this test module
_job_id = lambda: os.environ.get("SLURM_JOB_ID")  # noqa: E731

# seconds since the worker's process started (its --lifetime counts from about then); a lambda, as _job_id, so that
# client.run sends it by value (the workers cannot import this test module by its name)
_age = lambda: time.time() - __import__("psutil").Process().create_time()  # noqa: E731


def _chunk_tasks(task_stream) -> list[dict]:
    """The solver's chunk tasks of a task stream."""
    return [t for t in task_stream if str(t["key"]).startswith("chunk_task")]


def _busy_windows(task_stream, gap=0.1) -> list[tuple[float, float]]:
    """Time windows in which the cluster computed tasks (roughly the passes), from a task stream."""
    spans = sorted((s["start"], s["stop"]) for t in task_stream for s in t["startstops"] if s["action"] == "compute")
    windows = []
    for a, b in spans:
        if windows and a <= windows[-1][1] + gap:
            windows[-1] = (windows[-1][0], max(windows[-1][1], b))
        else:
            windows.append((a, b))
    return windows


def _lifetime_ends(logs: Path) -> list[float]:
    """Times (epoch seconds) at which workers began to close for their --lifetime, from the job logs."""
    ends = []
    for p in logs.glob("*.err"):
        for line in p.read_text().splitlines():
            if "Closing worker gracefully" in line and "worker-lifetime-reached" in line:
                ends.append(datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return ends


def _worker_addresses(logs: Path, jobs) -> set[str]:
    """The addresses of the workers the SLURM jobs ``jobs`` started, from their job logs."""
    return {line.split()[-1] for job in jobs for p in logs.glob(f"*-{job}.err")
            for line in p.read_text().splitlines() if "Start worker at:" in line}


def test_training_through_worker_lifetimes_matches_local(faults_data, tmp_path):
    """Worker jobs end 6–10 s after they start (--lifetime 8s ± 2s) and are resubmitted while 24 iterations
    run: the run completes on the successor jobs with the weights of the local run.

    (Much shorter lifetimes make a test artefact: a fresh worker that dies before its first task is done,
    alone, cannot hand its work over, so the scheduler counts it as a crash of that task; four make a
    KilledWorker.)"""
    from distributed import get_task_stream

    data, local_weights = faults_data
    config = _jobqueue_yaml(tmp_path, worker_extra_args=["--lifetime", "8s", "--lifetime-stagger", "2s"],
                            **{"rotate-after": None})
    waited, started = [], []
    logs = tmp_path / "logs"
    t0 = time.perf_counter()
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "0.5s"}), \
            connect("slurm", jobs=2, jobqueue_config=config, dashboard_address="localhost:0",
                    worker_timeout=120, report=started.append) as client:
        # the jobs whose workers were connected when connect returned, as it said then (asking the workers now
        # can find them gone on a loaded machine: at load 25 both lifetimes ended before the test asked)
        first_jobs = set(next(re.search(r"workers connected after .* \(jobs (.*)\)$", line)[1].split(", ")
                              for line in started if "workers connected after" in line))
        # start training ~4 s into the workers' 6–10 s, so that they end mid-run on a fast machine too; at once if
        # they are older or gone (train waits for the successors of an empty cluster)
        time.sleep(max(0.0, 4.0 - max(client.run(_age, on_error="ignore").values(), default=4.0)))

        def report(line):
            # before the last iteration, should the run have been faster than the lifetimes: let the first
            # workers end (they all do within 10 s of starting), so that it surely runs on resubmitted jobs
            if line.split()[:1] == [str(CHURN_ITERATIONS - 1)]:
                w0, end = time.monotonic(), time.monotonic() + 30
                while set(client.nthreads()) & _worker_addresses(logs, first_jobs) and time.monotonic() < end:
                    time.sleep(0.1)
                waited.append(time.monotonic() - w0)

        with get_task_stream(client) as stream:
            result = train(client, store=tmp_path / "run.zarr", data=data, chunk_rows=CHUNK_ROWS,
                           config=_config(CHURN_ITERATIONS), report=report)
    seconds = time.perf_counter() - t0
    jobs = {p.stem.rsplit("-", 1)[-1] for p in logs.glob("*.err")}
    first_workers = _worker_addresses(logs, first_jobs)
    ran = {t["worker"] for t in _chunk_tasks(stream.data)}
    ends = _lifetime_ends(logs)
    mid_pass = sum(any(a <= t <= b for a, b in _busy_windows(stream.data)) for t in ends)
    print(f"lifetime churn: {seconds:.1f} s, {len(jobs)} jobs, {len(ran)} workers ran chunk tasks, "
          f"{len(ends)} lifetime ends ({mid_pass} mid-pass), waited {sum(waited):.1f} s before the last iteration")
    assert len(first_jobs) == 2 and len(first_workers) == 2 and first_jobs <= jobs
    assert len(jobs - first_jobs) >= 1, f"no job was resubmitted (jobs {sorted(jobs)})"
    assert ends, "no worker reached its --lifetime"
    assert ran - first_workers, "no resubmitted worker ran a chunk task"
    for W, W_local in zip(result.network.weights, local_weights[CHURN_ITERATIONS]):
        np.testing.assert_array_equal(W, W_local)
    assert result.store.committed_iteration() == CHURN_ITERATIONS
    assert _gone_from_squeue(jobs)


def test_sigkilled_slurm_worker_mid_iteration_matches_local(faults_data, tmp_path):
    """SIGKILL a SLURM worker process while it runs chunk tasks: its nanny restarts it inside the same
    job, the tasks run again, and the weights equal the local run's."""
    data, local_weights = faults_data
    store = tmp_path / "run.zarr"
    killed, errors, done = {}, [], threading.Event()
    t0 = time.perf_counter()
    with connect("slurm", jobs=2, jobqueue_config=_jobqueue_yaml(tmp_path), dashboard_address="localhost:0",
                 worker_timeout=120, report=quiet) as client:
        pids = client.run(os.getpid)
        jobs = client.run(_job_id)

        def kill_a_busy_worker():
            try:
                while _committed(store) < 2 and not done.wait(0.005):
                    pass
                while not done.is_set():  # a worker with chunk tasks in flight
                    busy = {w: keys for w, keys in client.processing().items() if keys and w in pids}
                    if busy:
                        worker, keys = next(iter(busy.items()))
                        killed.update(worker=worker, during=_committed(store), tasks=keys)
                        os.kill(pids[worker], signal.SIGKILL)
                        return
                    done.wait(0.005)
                errors.append("training ended before a worker could be killed")
            except Exception as exc:  # noqa: BLE001 -- reported by the test
                errors.append(repr(exc))

        killer = threading.Thread(target=kill_a_busy_worker)
        killer.start()
        try:
            result = train(client, store=store, data=data, chunk_rows=CHUNK_ROWS, config=_config(), report=quiet)
        finally:
            done.set()
            killer.join()
        assert not errors, errors
        client.wait_for_workers(2, timeout=60)
        after_pids, after_jobs = client.run(os.getpid), client.run(_job_id)
    print(f"sigkill: {time.perf_counter() - t0:.1f} s, killed {killed['worker']} (pid {pids[killed['worker']]}) "
          f"after iteration {killed['during']} committed, with {len(killed['tasks'])} task(s) in flight")
    assert 2 <= killed["during"] < ITERATIONS  # mid-run, not after the last commit
    assert pids[killed["worker"]] not in after_pids.values()  # that process is gone …
    assert sorted(after_jobs.values()) == sorted(jobs.values())  # … and was restarted within its job
    for W, W_local in zip(result.network.weights, local_weights[ITERATIONS]):
        np.testing.assert_array_equal(W, W_local)
    assert result.store.committed_iteration() == ITERATIONS
    assert _gone_from_squeue(set(jobs.values()))
