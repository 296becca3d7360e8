"""Decoded chunks of data stores kept in a worker's memory, so small data is read from disk once per run.

A training pass reads every row of the data store; on small data the passes
are short and the Zarr read (open, crc32c check, copy of a whole stored
chunk even when a task wants a few hundred of its rows) dominated them: 20
tasks of 398 rows each decoded the same 25 MB chunk, ~22 ms a time. A
:class:`ChunkCache` keeps whole decoded chunks of an array whose every chunk
fits its byte budget (arrays that do not fit are read as before, so an
out-of-core scan never thrashes it), least recently used out first. Data
stores are written once and only read (:mod:`storage.data`); a cached chunk
is still checked against its file's identity (inode, size, modification
time) at every read, so a store replaced or a chunk file rewritten on disk is
read again, with :func:`storage.data.read_rows`' damage checks. A chunk of an
uncompressed (bytes + crc32c) array of at least :data:`MAP_MIN_BYTES` is mapped
from its file rather than copied (:func:`storage.state_io.map_chunk_rows`: a
fresh worker's first reads spent most of their time faulting in new memory),
at most :data:`MAX_MAPPED` such chunks at a time: a mapping holds a file
descriptor while it lives, and a cache of hundreds of small mapped chunks ran
a worker out of them ("Too many open files"). Smaller chunks, and big ones
past the cap, are copied (:func:`storage.state_io.read_chunk_rows`).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np
import zarr

from storage.data import read_rows
from storage.paths import file_identity
from storage.state_io import map_chunk_rows, read_chunk_rows

MAP_MIN_BYTES = 4 * 2**20  # a smaller chunk is copied: the page faults a mapping saves are few, its file descriptor is not
MAX_MAPPED = 64  # mapped chunks a cache holds at once (one file descriptor each while mapped)


class ChunkCache:
    """Whole chunks of read-only Zarr arrays, within ``budget`` bytes; :meth:`read` is :func:`read_rows` through it."""

    def __init__(self, budget: int, map_min_bytes: int = MAP_MIN_BYTES, max_mapped: int = MAX_MAPPED):
        self.budget = int(budget)
        self.map_min_bytes, self.max_mapped = int(map_min_bytes), int(max_mapped)
        self._chunks: OrderedDict = OrderedDict()  # (store, name, chunk) -> (file identity, array, mapped)
        self._mapped = 0  # cached chunks that are file mappings
        self._layout: dict = {}  # (store, name) -> (metadata identity, rows per chunk, n rows, nbytes, key of chunk i)
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def _array_layout(self, store: str, name: str):
        key = (store, name)
        meta = file_identity(os.path.join(store, name, "zarr.json"))
        known = self._layout.get(key)
        if known is not None and known[0] == meta and meta is not None:
            return known
        a = zarr.open_array(store=store, path=name, mode="r")
        zeros = (0,) * (a.ndim - 1)
        layout = (meta, int(a.chunks[0]), int(a.shape[0]), int(a.nbytes),
                  lambda i, enc=a.metadata.encode_chunk_key: enc((i, *zeros)))
        self._layout[key] = layout
        return layout

    def read(self, store: str, name: str, start: int, stop: int) -> np.ndarray:
        """Return rows [start, stop) of array ``name`` of ``store`` (read-only when served from one cached chunk)."""
        store = os.path.abspath(store)
        try:
            _, rows, n, nbytes, chunk_key = self._array_layout(store, name)
        except (FileNotFoundError, KeyError, ValueError):
            return read_rows(store, name, start, stop)  # read_rows says what is missing or damaged
        if nbytes > self.budget or stop <= start:
            return read_rows(store, name, start, stop)
        parts = []
        for i in range(start // rows, (stop - 1) // rows + 1):
            lo = i * rows
            block = self._chunk(store, name, i, lo, min(lo + rows, n), chunk_key(i), rows * (nbytes // max(n, 1)))
            parts.append(block[max(start, lo) - lo:min(stop, lo + rows) - lo])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _chunk(self, store, name, i, lo, hi, chunk_key, chunk_bytes):
        key = (store, name, i)
        ident = file_identity(os.path.join(store, name, *chunk_key.split("/")))
        with self._lock:
            hit = self._chunks.get(key)
            if hit is not None and hit[0] == ident and ident is not None:
                self._chunks.move_to_end(key)
                self.hits += 1
                return hit[1]
        with self._lock:
            may_map = chunk_bytes >= self.map_min_bytes and self._mapped < self.max_mapped
        block = map_chunk_rows(store, name, lo, hi) if may_map else None  # mapped from the page cache, checked
        mapped = block is not None
        if block is None:
            block = read_chunk_rows(store, name, lo, hi)  # copied, checked: checksum, missing rows
            block.setflags(write=False)
        with self._lock:
            self.misses += 1
            self._drop(self._chunks.pop(key, None))
            if block.nbytes <= self.budget and (not mapped or self._mapped < self.max_mapped):
                self._chunks[key] = (ident, block, mapped)
                self._bytes += block.nbytes
                self._mapped += mapped
                while self._bytes > self.budget:
                    self._drop(self._chunks.popitem(last=False)[1])
        return block

    def _drop(self, entry) -> None:
        """Account for a cached chunk leaving the cache (under the lock)."""
        if entry is not None:
            self._bytes -= entry[1].nbytes
            self._mapped -= entry[2]

    def clear(self) -> None:
        """Forget every cached chunk."""
        with self._lock:
            self._chunks.clear()
            self._layout.clear()
            self._bytes = self._mapped = 0
