"""storage/cache.py: decoded data chunks kept in memory read the same rows as the store, and never stale ones."""
import numpy as np
import pytest

from solvers.errors import InputError
from storage.cache import ChunkCache
from storage.data import read_rows, write_data


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, 5)).astype(np.float32)
    y = rng.integers(0, 3, 1000)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=300)
    return str(tmp_path / "d.zarr")


def test_cached_rows_equal_the_stored_rows_across_chunk_edges(store):
    cache = ChunkCache(2**20)
    spans = [(0, 10), (290, 310), (0, 1000), (599, 601), (950, 1000), (5, 6)]
    for _ in range(2):
        for a, b in spans:
            for name in ("X", "y"):
                np.testing.assert_array_equal(cache.read(store, name, a, b), read_rows(store, name, a, b))
    assert cache.misses == 8 and cache.hits > 0  # 4 chunks of X and of y, each decoded once


def test_a_replaced_chunk_file_is_read_again_and_checked(store, tmp_path):
    cache = ChunkCache(2**20)
    cache.read(store, "X", 0, 10)
    chunk = tmp_path / "d.zarr" / "X" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (chunk.parent / "new").write_bytes(bytes(data))
    (chunk.parent / "new").replace(chunk)  # another file (inode) in its place, as a rewritten store has
    with pytest.raises(InputError, match="corrupted"):
        cache.read(store, "X", 0, 10)


def test_arrays_bigger_than_the_budget_are_not_cached(store):
    cache = ChunkCache(1000)  # X is 20 kB
    for _ in range(2):
        np.testing.assert_array_equal(cache.read(store, "X", 0, 50), read_rows(store, "X", 0, 50))
    assert cache.hits == cache.misses == 0


def test_cached_chunks_cannot_be_changed_through_what_read_returns(store):
    cache = ChunkCache(2**20)
    rows = cache.read(store, "X", 0, 10)
    with pytest.raises(ValueError):
        rows[0, 0] = 1.0


def test_training_leaves_no_decoded_data_on_the_workers(client, store, tmp_path):
    from pipeline import passes
    from pipeline.training import train
    from solvers.config import TrainConfig

    def cached_bytes():
        return None if passes._data_cache is None else passes._data_cache._bytes

    train(client, store=tmp_path / "r.zarr", data=store, config=TrainConfig(hidden=(4,), iterations=2),
          report=lambda _line: None)
    assert set(client.run(cached_bytes).values()) <= {None, 0}


def test_a_workers_memory_limit_bounds_its_data_and_activation_caches(monkeypatch):
    """A worker of 256 MiB (the least --memory-limit) keeps a quarter of it as data and an eighth as activations."""
    from types import SimpleNamespace

    import distributed

    from pipeline import passes
    from solvers import activation_cache

    limit = 256 * 2**20
    monkeypatch.setattr(distributed, "get_worker",
                        lambda: SimpleNamespace(memory_manager=SimpleNamespace(memory_limit=limit)))
    monkeypatch.setattr(passes, "_data_cache", None)
    monkeypatch.setattr(activation_cache.CACHE, "budget", activation_cache.BUDGET)
    monkeypatch.setattr(activation_cache.INPUTS, "budget", activation_cache.INPUTS_BUDGET)
    assert passes.data_cache().budget == limit // 4
    assert activation_cache.CACHE.budget == limit // 8 < activation_cache.BUDGET
    assert activation_cache.INPUTS.budget == limit // 16 < activation_cache.INPUTS_BUDGET


def test_the_inputs_cache_keeps_its_first_tiles_and_one_runs_only():
    """Full, it drops new tiles rather than evicting (a scan would lose every tile); another run's put empties it."""
    from solvers.activation_cache import ActivationCache

    cache = ActivationCache(budget=2 * 800, evict=False)
    for i in range(3):
        cache.put(i, (np.zeros(100),), owner="run")  # 800 bytes each: the third does not fit
    assert cache.get(0, owner="run") is not None and cache.get(1, owner="run") is not None
    assert cache.get(2, owner="run") is None and cache.get(0, owner="other") is None
    cache.put(0, (np.zeros(300),), owner="run")  # a bigger value for a kept key does not fit: the old one stays
    assert cache.get(0, owner="run")[0].shape == (100,) and cache.nbytes == 2 * 800
    cache.put(5, (np.zeros(100),), owner="other")
    assert cache.get(0, owner="run") is None and cache.get(5, owner="other") is not None and cache.nbytes == 800


def test_whole_chunks_are_mapped_checked_and_read_only(store, tmp_path):
    """A data chunk of a bytes + crc32c array is its file mapped (the same values); a damaged file is not mapped."""
    from storage.state_io import map_chunk_rows

    for a, b in [(0, 300), (300, 600), (900, 1000)]:  # the last chunk's file is padded to 300 rows
        rows = map_chunk_rows(store, "X", a, b)
        assert rows is not None and not rows.flags.writeable
        np.testing.assert_array_equal(rows, read_rows(store, "X", a, b))
    assert map_chunk_rows(store, "X", 0, 10) is None  # part of a chunk: not mapped
    chunk = tmp_path / "d.zarr" / "X" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[7] ^= 0xFF
    chunk.write_bytes(bytes(data))
    assert map_chunk_rows(store, "X", 300, 600) is None
    with pytest.raises(InputError, match="corrupted"):
        ChunkCache(2**20).read(store, "X", 300, 310)


def _mapped(a) -> bool:
    import mmap
    while a is not None:
        if isinstance(a, mmap.mmap):
            return True
        a = getattr(a, "base", None) if not isinstance(a, memoryview) else a.obj
    return False


_FEW_FDS = r"""
import os, resource, sys
import numpy as np
from storage.cache import ChunkCache
from storage.data import read_rows
store = sys.argv[1]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(128, hard), hard))
cache = ChunkCache(2**20)
before = len(os.listdir("/proc/self/fd"))
for start in range(0, 600, 2):
    assert (cache.read(store, "X", start, start + 2) == read_rows(store, "X", start, start + 2)).all()
print(len(os.listdir("/proc/self/fd")) - before, cache.misses)
"""


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_many_small_chunks_are_copied_not_mapped_so_file_descriptors_stay_few(tmp_path):
    """300 small chunks kept in the cache under a 128-descriptor limit (mapped, each held a descriptor: EMFILE)."""
    import os
    import subprocess
    import sys

    X = np.random.default_rng(1).normal(size=(600, 1)).astype(np.float32)  # one feature: 8-byte chunks
    write_data(tmp_path / "d.zarr", X, np.zeros(600, np.int64), chunk_rows=2)
    out = subprocess.run([sys.executable, "-c", _FEW_FDS, str(tmp_path / "d.zarr")], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    grown, misses = map(int, out.stdout.split())
    assert misses == 300 and grown <= 8


def test_big_chunks_are_mapped_and_the_mappings_a_cache_holds_are_capped(tmp_path):
    """Chunks of >= MAP_MIN_BYTES are served mapped, at most max_mapped of them cached; the rest copied, same values."""
    from storage import cache as cache_module

    X = np.random.default_rng(2).normal(size=(2048, 1024)).astype(np.float32)  # two 4 MiB chunks
    write_data(tmp_path / "d.zarr", X, np.zeros(2048, np.int64), chunk_rows=1024)
    store = str(tmp_path / "d.zarr")
    cache = ChunkCache(2**24)
    assert 1024 * 1024 * 4 >= cache_module.MAP_MIN_BYTES
    rows = cache.read(store, "X", 0, 1024)
    assert _mapped(rows) and not rows.flags.writeable
    np.testing.assert_array_equal(rows, X[:1024])
    capped = ChunkCache(2**24, max_mapped=1)
    first, second = capped.read(store, "X", 0, 1024), capped.read(store, "X", 1024, 2048)
    assert _mapped(first) and not _mapped(second) and not second.flags.writeable
    np.testing.assert_array_equal(second, X[1024:])
    small = ChunkCache(2**24, map_min_bytes=2**23)
    assert not _mapped(small.read(store, "X", 0, 1024))
