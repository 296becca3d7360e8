"""Helpers of the batch-cluster tests (test_cluster*.py): the SLURM check, jobqueue.yaml, squeue, the faults data."""
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.training import train
from solvers.config import TrainConfig
from storage.data import write_data
from tests.conftest import quiet

N, FEATURES, CHUNK_ROWS, HIDDEN = 6000, 20, 1000, 16
ITERATIONS, CHURN_ITERATIONS = 10, 24  # the SIGKILL run, the run through worker lifetimes


def _slurm_missing() -> str | None:
    """Return why the SLURM tests cannot run here, or None when a SLURM node is up."""
    if shutil.which("sbatch") is None:
        return "SLURM is not installed here (no sbatch); run .ci/slurm-up.sh as root to bring one up"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed ({exc}); run .ci/slurm-up.sh"
    states = r.stdout.split()
    if r.returncode != 0 or not any(s.startswith(("idle", "mixed", "allocated")) for s in states):
        return f"SLURM is not running here (sinfo: {r.stderr.strip() or states or 'no nodes'}); run .ci/slurm-up.sh"
    return None


SLURM_MISSING = _slurm_missing()
needs_slurm = pytest.mark.skipif(SLURM_MISSING is not None, reason=str(SLURM_MISSING))


def _jobqueue_yaml(tmp_path, worker_extra_args=(), **admm_dask):
    """Write the project's jobqueue.yaml with the overrides one test machine needs (loopback, partition, logs)."""
    conf = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("jobqueue.yaml").read_text())
    for kind in ("slurm", "pbs"):
        conf["jobqueue"][kind].update({
            "interface": "lo", "memory": "1GiB", "walltime": "00:10:00",
            "log-directory": str(tmp_path / "logs"), "shared-temp-directory": str(tmp_path / "tls"),
            "worker-extra-args": list(worker_extra_args)})
    conf["jobqueue"]["slurm"]["queue"] = "debug"
    conf["admm-dask"].update(admm_dask)
    path = tmp_path / "jobqueue.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def _squeue() -> set[str]:
    return set(subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split())


def _gone_from_squeue(job_ids, within=60.0) -> bool:
    """True once none of ``job_ids`` is in squeue (polled: on a quiet machine within a few seconds; a job left
    behind stays for its walltime, 10 minutes)."""
    end = time.monotonic() + within
    while _squeue() & set(job_ids):
        if time.monotonic() > end:
            return False
        time.sleep(0.25)
    return True


def _config(iterations=ITERATIONS):
    """The faults runs' settings: ADMM, so the slots hold per-sample state; every iteration runs (patience 0:
    ADMM's model is often iteration 1, and early stopping would end the run long before the workers' lifetimes)."""
    return TrainConfig(solver="admm", hidden=(HIDDEN,), iterations=iterations, patience=0)


def make_faults_data(tmp_path_factory, client):
    """The ``faults_data`` fixture (tests/conftest.py): 6 chunks of 1000×20, and the weights after 10 and after
    24 iterations on the local cluster."""
    d = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(7)
    X = rng.normal(size=(N, FEATURES)).astype(np.float32)
    write_data(d / "data.zarr", X, (X[:, 0] * X[:, 1] + X[:, 2] > 0).astype(int), chunk_rows=CHUNK_ROWS)
    store = d / "local.zarr"
    at_10 = train(client, store=store, data=d / "data.zarr", chunk_rows=CHUNK_ROWS, config=_config(),
                  report=quiet).network.weights
    # resuming equals an uninterrupted run bitwise (tests/test_resume.py)
    at_24 = train(client, store=store, resume=True, iterations=CHURN_ITERATIONS, report=quiet).network.weights
    return d / "data.zarr", {ITERATIONS: at_10, CHURN_ITERATIONS: at_24}
