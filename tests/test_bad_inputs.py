"""Damaged stores and numerical faults: one clear error, the last committed iteration kept."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.training import train
from solvers.config import TrainConfig
from solvers.errors import InputError, NumericalError
from storage.data import write_data
from storage.runstore import RunStore, state_path


def quiet(_line):
    pass


@pytest.fixture
def finished_run(client, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=1000)
    train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", chunk_rows=1000, report=quiet,
          config=TrainConfig(solver="admm", hidden=(8,), iterations=3))
    return tmp_path


def manifest(store):
    return json.loads((Path(store) / "manifest.json").read_text())


def chunk_file(store, array_path, index=1):
    files = sorted(p for p in (Path(store) / array_path / "c").rglob("*") if p.is_file())
    return files[index]


def test_inf_in_state_stops_with_layer_and_iteration(client, finished_run):
    store = finished_run / "r.zarr"
    before = manifest(store)
    z = zarr.open_array(store=str(store), path=state_path(3 % 2, "z1"), mode="r+")
    z[1500, 0] = np.inf
    with pytest.raises(NumericalError, match=r"in layer 1 \(\w+\) at iteration 4"):
        train(client, store=store, resume=True, iterations=5, report=quiet)
    assert manifest(store) == before


def test_settings_fault_keeps_last_commit_and_resumes_with_other_settings(client, tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(2000, 5)).astype(np.float32)
    X[:, 3] = 1.0  # constant feature: singular input Gram without a ridge
    y = (X[:, 0] > 0).astype(int)
    write_data(tmp_path / "d.zarr", X, y)
    store = tmp_path / "r.zarr"
    train(client, store=store, data=tmp_path / "d.zarr", report=quiet, config=TrainConfig(solver="admm", hidden=(6,), iterations=2))
    before = manifest(store)
    with pytest.raises(NumericalError, match=r"iteration 3: W_1: .*not positive definite.*iteration 2 is still"):
        train(client, store=store, resume=True, overrides={"ridge": 0.0, "iterations": 4}, report=quiet)
    assert manifest(store) == before
    r = train(client, store=store, resume=True, overrides={"ridge": 1e-4, "iterations": 4}, report=quiet)
    assert [h["iteration"] for h in r.history] == [1, 2, 3, 4]


def test_corrupted_state_chunk_is_reported_not_read(client, finished_run):
    store = finished_run / "r.zarr"
    f = chunk_file(store, state_path(3 % 2, "z1"))
    f.write_bytes(f.read_bytes()[:-100])  # truncated
    with pytest.raises(InputError, match=r"rows 1000-1999 is corrupted or truncated"):
        train(client, store=store, resume=True, iterations=4, report=quiet)
    assert manifest(store)["iteration"] == 3


def test_missing_data_chunk_is_reported(client, finished_run):
    store = finished_run / "r.zarr"
    chunk_file(finished_run / "d.zarr", "X").unlink()
    with pytest.raises(InputError, match=r"'X' are missing or hold NaN"):
        train(client, store=store, resume=True, iterations=4, report=quiet)


def test_finished_run_keeps_one_state_slot(finished_run):
    sizes = RunStore.open(finished_run / "r.zarr").disk_bytes()
    committed = f"slot{3 % 2}"
    other = "slot0" if committed == "slot1" else "slot1"
    state_bytes = 3000 * (8 + 1 + 1) * 4
    assert sizes[committed] >= state_bytes
    assert sizes[other] < 0.05 * state_bytes  # metadata only


@pytest.mark.parametrize("make,match", [
    (lambda d: d / "nothing.zarr", "does not exist"),
    (lambda d: d / "d.zarr", "not an admm-dask run store"),
])
def test_resume_on_a_path_that_is_not_a_run(client, finished_run, make, match):
    with pytest.raises(InputError, match=match):
        train(client, store=make(finished_run), resume=True, report=quiet)


def test_store_workers_cannot_write_is_refused_before_anything_runs(client, tmp_path):
    rng = np.random.default_rng(1)
    write_data(tmp_path / "d.zarr", rng.normal(size=(100, 3)), rng.integers(0, 2, 100))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits: use a path that cannot exist
            target = tmp_path / "not-a-dir" / "r.zarr"
            (tmp_path / "not-a-dir").write_text("a file, not a directory")
        else:
            target = locked / "r.zarr"
        # the client's lock (storage.lock) or the workers' check refuses the folder
        with pytest.raises(InputError, match="the workers cannot use the stores|cannot lock run store .* not a "
                                             "writable directory"):
            train(client, store=target, data=tmp_path / "d.zarr", report=quiet,
                  config=TrainConfig(solver="admm", hidden=(4,), iterations=1))
        assert not target.exists()
    finally:
        locked.chmod(0o700)
