"""State chunks written in place and kept per process (storage.state_io): Zarr's bytes, its checks, never stale."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from solvers.errors import InputError
from storage import state_io
from storage.runstore import _create_state_array, state_path
from storage.state_io import StateCache, new_owner, read_chunk_rows, read_state, write_rows, write_state

N, ROWS, WIDTH = 10, 4, 3  # chunks of rows 0-3, 4-7 and the edge chunk 8-9


def _store(path: Path) -> str:
    root = zarr.open_group(path, mode="w", zarr_format=3)
    _create_state_array(root, 0, "z1", WIDTH, N, ROWS)
    return str(path)


def _files(store: str, name: str) -> dict:
    base = Path(store) / name
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file() and p.name != "zarr.json"}


def _block(seed: int, rows: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, WIDTH), dtype=np.float32)


def test_whole_chunks_are_written_as_zarr_writes_them_and_rewritten_in_place(tmp_path):
    a, b, name = _store(tmp_path / "a.zarr"), _store(tmp_path / "b.zarr"), state_path(0, "z1")
    za = zarr.open_array(store=a, path=name, mode="r+")
    for seed in (1, 2):  # the second round rewrites every file
        inodes = {k: os.stat(Path(b) / name / k).st_ino for k in _files(b, name)}
        for start in range(0, N, ROWS):
            stop = min(start + ROWS, N)
            block = _block(seed * 10 + start, stop - start)
            za[start:stop] = block
            assert write_rows(b, name, start, stop, block) is not None  # the fast path
        assert _files(a, name) == _files(b, name)  # byte for byte, the edge chunk's NaN padding and crc32c included
        assert {k: os.stat(Path(b) / name / k).st_ino for k in inodes} == inodes  # in place (none in round 1)
        np.testing.assert_array_equal(zarr.open_array(store=b, path=name, mode="r")[...], za[...])
        for start in range(0, N, ROWS):
            stop = min(start + ROWS, N)
            assert read_chunk_rows(b, name, start, stop).tobytes() == za[start:stop].tobytes()


def test_per_shard_state_rows_are_written_as_zarr_writes_them(tmp_path):
    """A consensus shard's state row (float64, one chunk per shard: pipeline.passes.shard_round_task) takes the fast path."""
    from storage.runstore import _create_shard_array, shard_state_path

    stores = []
    for name in ("a.zarr", "b.zarr"):
        root = zarr.open_group(tmp_path / name, mode="w", zarr_format=3)
        _create_shard_array(root, 1, "v", 5, 2)
        stores.append(str(tmp_path / name))
    path = shard_state_path(1, "v")
    za = zarr.open_array(store=stores[0], path=path, mode="r+")
    for seed in (1, 2):
        for shard in (0, 1):
            row = np.random.default_rng(seed * 10 + shard).standard_normal(5)
            za[shard] = row
            assert write_rows(stores[1], path, shard, shard + 1, row.reshape(1, -1)) is not None  # the fast path
            assert read_chunk_rows(stores[1], path, shard, shard + 1)[0].tobytes() == row.tobytes()
        assert _files(stores[0], path) == _files(stores[1], path)


def test_other_ranges_and_codecs_go_through_zarr(tmp_path):
    b, name = _store(tmp_path / "b.zarr"), state_path(0, "z1")
    assert write_rows(b, name, 2, 6, _block(0, 4)) is None  # not one whole chunk
    np.testing.assert_array_equal(read_chunk_rows(b, name, 2, 6), _block(0, 4))
    root = zarr.open_group(tmp_path / "c.zarr", mode="w", zarr_format=3)
    root.create_array("z", shape=(N, WIDTH), chunks=(ROWS, WIDTH), dtype="float32", fill_value=np.nan)  # zstd
    assert write_rows(str(tmp_path / "c.zarr"), "z", 0, 4, _block(1, 4)) is None
    np.testing.assert_array_equal(read_chunk_rows(str(tmp_path / "c.zarr"), "z", 0, 4), _block(1, 4))


def test_damaged_or_missing_chunks_are_reported_as_zarr_reads_report_them(tmp_path):
    b, name = _store(tmp_path / "b.zarr"), state_path(0, "z1")
    for start in (0, 4):
        write_rows(b, name, start, start + ROWS, _block(start, ROWS))
    f = Path(b) / name / "c" / "1" / "0"
    data = bytearray(f.read_bytes())
    data[5] ^= 1  # a flipped bit: the crc32c fails
    f.write_bytes(bytes(data))
    with pytest.raises(InputError, match="rows 4-7 is corrupted or truncated"):
        read_chunk_rows(b, name, 4, 8)
    f.write_bytes(bytes(data[:-10]))  # truncated
    with pytest.raises(InputError, match="rows 4-7 is corrupted or truncated"):
        read_chunk_rows(b, name, 4, 8)
    f.unlink()
    with pytest.raises(InputError, match="rows 4-7 of .* are missing or hold NaN"):
        read_chunk_rows(b, name, 4, 8)
    write_rows(b, name, 0, 4, np.full((ROWS, WIDTH), np.nan, np.float32))
    with pytest.raises(InputError, match="missing or hold NaN"):
        read_chunk_rows(b, name, 0, 4)


def test_a_kept_chunk_is_served_only_to_its_owner_for_its_iteration_while_its_file_is_unchanged(tmp_path, monkeypatch):
    b, name = _store(tmp_path / "b.zarr"), state_path(0, "z1")
    monkeypatch.setattr(state_io, "STATE", StateCache())
    me, other = new_owner(), new_owner()
    block = _block(3, ROWS)
    write_state(b, "z1", 4, 8, block, 2, me)  # iteration 2: slot 0
    assert read_state(b, "z1", 4, 8, 2, me) is block and not block.flags.writeable  # kept, read-only
    assert state_io.STATE.hits == 1
    for iteration, owner in ((0, me), (4, me), (2, other), (2, None)):  # another iteration or trainer reads the disk
        got = read_state(b, "z1", 4, 8, iteration, owner)
        assert got is not block and got.tobytes() == block.tobytes()
    assert state_io.STATE.hits == 1
    zarr.open_array(store=b, path=name, mode="r+")[4:8] = _block(4, ROWS)  # rewritten behind the cache's back
    assert read_state(b, "z1", 4, 8, 2, me).tobytes() == _block(4, ROWS).tobytes()
    write_state(b, "z1", 4, 8, block, 2, other)  # another trainer's write drops the first one's chunks
    assert read_state(b, "z1", 4, 8, 2, other) is block and state_io.STATE.owner == other
    state_io.STATE.clear()
    assert read_state(b, "z1", 4, 8, 2, other) is not block


def test_a_full_cache_keeps_its_chunks_and_refuses_new_ones(tmp_path):
    b, name = _store(tmp_path / "b.zarr"), state_path(0, "z1")
    cache, me = StateCache(budget=ROWS * WIDTH * 4), new_owner()
    path = str(Path(b) / name / "c" / "{}" / "0")
    for k, start in enumerate((0, 4)):
        block = _block(k, ROWS)
        cache.put(me, b, name, start, 1, block, state_io.write_rows(b, name, start, start + ROWS, block))
    assert cache.get(me, b, name, 0, 4, 1, path.format(0)) is not None  # the first chunk fills the budget
    assert cache.get(me, b, name, 4, 8, 1, path.format(1)) is None  # the second was refused
    block = _block(9, ROWS)
    cache.put(me, b, name, 0, 2, block, state_io.write_rows(b, name, 0, 4, block))  # the next iteration replaces it
    assert cache.get(me, b, name, 0, 4, 1, path.format(0)) is None and cache.get(me, b, name, 0, 4, 2, path.format(0)) is block
    assert cache.nbytes == block.nbytes


def _checkpoint_bytes(store) -> bytes:
    from storage.runstore import RunStore

    ck = RunStore.open(store).load_checkpoint()
    return b"".join(np.asarray(W).tobytes() for W in [*ck.weights, *ck.carry.values()])


@pytest.mark.parametrize("solver", ["admm", "dladmm"])
def test_a_run_served_from_kept_chunks_equals_one_from_disk_and_the_next_run_in_its_place(tmp_path, monkeypatch, solver):
    """Thread workers share this process's cache: a run reads its kept chunks, bitwise as from disk, and the
    run that replaces it in the same store (another seed, same process) reads none of them."""
    from pipeline.cluster import connect
    from pipeline.training import train
    from solvers.config import TrainConfig
    from storage.data import write_data

    rng = np.random.default_rng(0)
    X = rng.normal(size=(1200, 6)).astype(np.float32)
    write_data(tmp_path / "d.zarr", X, (X[:, 0] + X[:, 1] > 0).astype(int), chunk_rows=300)
    configs = [TrainConfig(solver=solver, hidden=(8,), iterations=3, seed=s, validation_fraction=0.0) for s in (1, 2)]
    quiet = dict(report=lambda line: None, chunk_rows=300)
    with connect("local", n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as client:
        alone, hits = [], state_io.STATE.hits
        with monkeypatch.context() as m:
            m.setattr(state_io.STATE, "put", lambda *args: None)  # nothing kept: every read from disk
            for k, config in enumerate(configs):  # each in its own store
                train(client, store=tmp_path / f"alone{k}.zarr", data=tmp_path / "d.zarr", config=config, **quiet)
                alone.append(_checkpoint_bytes(tmp_path / f"alone{k}.zarr"))
        assert alone[0] != alone[1] and state_io.STATE.hits == hits
        for k, config in enumerate(configs):  # one after the other in the same store, kept chunks served
            hits = state_io.STATE.hits
            train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=config, overwrite=k > 0, **quiet)
            assert state_io.STATE.hits > hits
            assert _checkpoint_bytes(tmp_path / "r.zarr") == alone[k]


def test_a_hard_linked_chunk_file_is_replaced_not_written_through(tmp_path):
    """A snapshot taken with ``cp -al`` shares the chunk files' inodes: a write must not change it (Zarr's rename doesn't)."""
    b, name = _store(tmp_path / "b.zarr"), state_path(0, "z1")
    write_rows(b, name, 4, 8, _block(1, ROWS))
    f, snap = Path(b) / name / "c" / "1" / "0", tmp_path / "snapshot_chunk"
    os.link(f, snap)
    before = snap.read_bytes()
    assert write_rows(b, name, 4, 8, _block(2, ROWS)) is not None  # still the fast path, through a new file
    assert snap.read_bytes() == before and os.stat(snap).st_nlink == 1 and os.stat(f).st_ino != os.stat(snap).st_ino
    assert read_chunk_rows(b, name, 4, 8).tobytes() == _block(2, ROWS).tobytes()
    inode = os.stat(f).st_ino
    write_rows(b, name, 4, 8, _block(3, ROWS))  # the file is its own again: rewritten in place
    assert os.stat(f).st_ino == inode and read_chunk_rows(b, name, 4, 8).tobytes() == _block(3, ROWS).tobytes()


@pytest.mark.parametrize("compressors", [None, "auto"])
def test_a_zarr_v2_array_goes_through_zarr(tmp_path, compressors):
    store = str(tmp_path / "v2.zarr")
    root = zarr.open_group(store, mode="w", zarr_format=2)
    root.create_array("z", shape=(N, WIDTH), chunks=(ROWS, WIDTH), dtype="float32", fill_value=np.nan, compressors=compressors)
    for start in range(0, N, ROWS):
        stop = min(start + ROWS, N)
        assert write_rows(store, "z", start, stop, _block(start, stop - start)) is None
    for start in range(0, N, ROWS):
        stop = min(start + ROWS, N)
        assert read_chunk_rows(store, "z", start, stop).tobytes() == _block(start, stop - start).tobytes()


def test_a_kept_chunk_is_the_array_written_in_the_stores_dtype(tmp_path, monkeypatch):
    b = _store(tmp_path / "b.zarr")
    monkeypatch.setattr(state_io, "STATE", StateCache())
    me = new_owner()
    block = np.random.default_rng(5).standard_normal((ROWS, WIDTH))  # float64: not exact in float32
    write_state(b, "z1", 4, 8, block, 2, me)
    kept = read_state(b, "z1", 4, 8, 2, me)
    assert state_io.STATE.hits == 1
    disk = read_state(b, "z1", 4, 8, 2, None)
    assert kept.dtype == disk.dtype == np.float32 and kept.tobytes() == disk.tobytes()


def test_a_killed_writes_partial_files_go_when_the_next_run_begins_and_nothing_else_does(tmp_path):
    """A SIGKILL between a new chunk file's write and its rename leaves ``<chunk>.<uuid>.partial`` in the slot;
    the run that next holds the store removes those on its first iteration, and only those."""
    from storage.runstore import RunStore

    run = RunStore.create(tmp_path / "r.zarr", config={"task": "classification"}, data={"path": "d"},
                          state_widths={"z1": WIDTH}, n_samples=N, chunk_rows=ROWS, classes=np.array([0, 1]),
                          x_mean=np.zeros(2), x_scale=np.ones(2))
    name = state_path(1, "z1")
    write_rows(str(tmp_path / "r.zarr"), name, 0, ROWS, _block(0, ROWS))
    chunk = next(p for p in (tmp_path / "r.zarr" / name).rglob("*") if p.is_file() and p.name != "zarr.json")
    left = chunk.with_name(f"{chunk.name}.{'ab' * 16}.partial")  # as write_rows names its temporary file
    left.write_bytes(b"half a chunk")
    mine = chunk.with_name("notes.partial")  # not a name write_rows makes
    mine.write_bytes(b"keep")
    before = chunk.read_bytes()
    again = RunStore.open(tmp_path / "r.zarr")
    again.begin_iteration(1)
    assert not left.exists() and mine.read_bytes() == b"keep" and chunk.read_bytes() == before
    left.write_bytes(b"a live writer's")  # after the first iteration began, this process's writers own the slot
    again.begin_iteration(2)
    assert left.exists()
    del run


def test_a_killed_shard_state_writes_partial_file_goes_too(tmp_path):
    """Per-shard state rows go through write_rows as well (consensus): their leftovers are swept like the slots'."""
    from storage.runstore import RunStore, shard_state_path

    RunStore.create(tmp_path / "r.zarr", config={"task": "classification"}, data={"path": "d"}, state_widths={},
                    n_samples=N, chunk_rows=ROWS, classes=np.array([0, 1]), x_mean=np.zeros(2), x_scale=np.ones(2),
                    shard_widths={"v": 5}, n_shards=2)
    name = shard_state_path(1, "v")
    write_rows(str(tmp_path / "r.zarr"), name, 1, 2, np.ones((1, 5)))
    chunk = next(p for p in (tmp_path / "r.zarr" / name).rglob("*") if p.is_file() and p.name != "zarr.json")
    left = chunk.with_name(f"{chunk.name}.{'cd' * 16}.partial")
    left.write_bytes(b"half a row")
    RunStore.open(tmp_path / "r.zarr").begin_iteration(1)
    assert not left.exists() and chunk.exists()
