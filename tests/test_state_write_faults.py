"""A full disk while a pass writes its state (per-shard for consensus and the hand-over, per-sample for ADMM): the
run ends with the OSError (the command's one error line, tests/test_bad_inputs.py), the last commit stays intact,
no temporary file is left, and a resume once there is room again reaches the uninterrupted run's weights bit for bit.

The fault is injected into storage.state_io's writer on an in-process cluster (its workers are threads of this
process), armed after a given iteration's commit: no timing, no real full disk."""
import errno
import threading

import numpy as np
import pytest

from solvers.config import TrainConfig
from tests.conftest import quiet


@pytest.fixture(scope="module")
def threads_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


def _data(path, n=800, d=5, seed=0):
    from storage.data import write_data

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = np.argmax(X @ rng.normal(size=(d, 3)) + 0.3 * rng.normal(size=(n, 3)), axis=1)
    write_data(path, X, y, chunk_rows=200)


RUNS = {
    "consensus": dict(solver="consensus", hidden=(6,), shards=2),
    "hand-over": dict(solver="consensus,gauss-newton", hidden=(6,), shards=2, local_epochs=2, learning_rate=0.1,
                      handover_gain=0.02, validation_fraction=0.2, patience=0, seed=1),
    "admm": dict(solver="admm", hidden=(6,)),
}


@pytest.mark.parametrize("name", list(RUNS))
@pytest.mark.parametrize("after", [0, 3])  # writes that succeed once armed: none, or some (a half-written slot)
def test_a_full_disk_during_a_state_write_loses_no_commit_and_the_resume_is_exact(name, after, threads_client,
                                                                                   tmp_path, monkeypatch):
    from pipeline.training import train
    from storage import state_io
    from storage.paths import CHUNK_PARTIAL_SUFFIX
    from storage.runstore import RunStore

    _data(tmp_path / "d.zarr")
    config = TrainConfig(**RUNS[name], iterations=7)
    whole = tmp_path / "whole.zarr"
    train(threads_client, store=whole, data=tmp_path / "d.zarr", config=config, chunk_rows=200, report=quiet)
    phases = [h.get("phase") for h in RunStore.open(whole).manifest()["history"]]
    fail_in = phases.index("hand-over") if name == "hand-over" else 3  # the last consensus pass before the hand-over
    assert fail_in >= 2

    real, lock, armed = state_io._write_rows, threading.Lock(), []

    def write_rows(*args, **kwargs):
        with lock:
            if armed and armed[0] <= 0:
                raise OSError(errno.ENOSPC, "No space left on device", args[1])
            if armed:
                armed[0] -= 1
        return real(*args, **kwargs)

    def report(line):  # armed once iteration fail_in - 1 is committed (its report line follows the commit)
        if line.split()[:1] == [str(fail_in - 1)]:
            armed.append(after)

    monkeypatch.setattr(state_io, "_write_rows", write_rows)
    store = tmp_path / "r.zarr"
    with pytest.raises(OSError) as raised:
        train(threads_client, store=store, data=tmp_path / "d.zarr", config=config, chunk_rows=200, report=report)
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.setattr(state_io, "_write_rows", real)  # room again
    run = RunStore.open(store)
    assert run.committed_iteration() == fail_in - 1
    assert not [p for p in store.rglob(f"*{CHUNK_PARTIAL_SUFFIX}")]
    train(threads_client, store=store, resume=True, report=quiet)
    assert [h.get("phase") for h in RunStore.open(store).manifest()["history"]] == phases
    for W, W_ref in zip(RunStore.open(store).load_checkpoint().weights, RunStore.open(whole).load_checkpoint().weights):
        np.testing.assert_array_equal(W, W_ref)
