"""Damaged stores and numerical faults: one clear error, the last committed iteration kept."""
import json
from pathlib import Path

import numpy as np
import pytest

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
          config=TrainConfig(hidden=(8,), iterations=3))
    return tmp_path


def manifest(store):
    return json.loads((Path(store) / "manifest.json").read_text())


def chunk_file(store, array_path, index=1):
    files = sorted(p for p in (Path(store) / array_path / "c").rglob("*") if p.is_file())
    return files[index]


def test_numerical_fault_names_layer_and_iteration_and_run_stays_resumable(client, finished_run):
    store = finished_run / "r.zarr"
    before = manifest(store)
    with pytest.raises(NumericalError, match=r"layer 1 .* at iteration 4"):
        train(client, store=store, resume=True, overrides={"gamma": 1e38, "iterations": 5}, report=quiet)
    assert manifest(store)["iteration"] == 3 and manifest(store)["history"] == before["history"]
    r = train(client, store=store, resume=True, overrides={"gamma": 10.0, "iterations": 5}, report=quiet)
    assert [h["iteration"] for h in r.history] == [1, 2, 3, 4, 5]


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
