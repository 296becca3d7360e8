"""Whole chunks of a run store's per-sample state: written in place, read without Zarr's per-call work, and kept.

A chunk task of an ADMM solver reads its rows of the state of iteration k − 1
and writes those of iteration k, one whole chunk of each state array
(:mod:`storage.runstore`: uncompressed float32, a crc32c per chunk, NaN fill).
Through Zarr's array API a 79 MB chunk took 0.06 s to read and 0.06-0.37 s to
write: every call opens the array's metadata, runs the codecs on Zarr's one
event-loop thread (the worker threads' I/O queues behind it), copies the
chunk to append its checksum, writes a new file and renames it over the old
one (new blocks, the old ones freed). Here a whole chunk is

- **written** as the same bytes Zarr writes (the values, the edge chunk's
  rows padded with the fill value, then the crc32c of both): over the old
  file in place when it has that size and no other link (a hard-linked
  snapshot, ``cp -al``, keeps its bytes), else to a new file renamed into
  place, as Zarr writes;
- **read** with one ``readinto`` and the checksum checked; anything unusual
  (a missing, short or damaged file, NaN rows, an array with other codecs or
  in Zarr format 2, a range that is not one whole chunk) goes through Zarr and
  :func:`storage.data.read_rows`, which reports it;
- **kept** (:class:`StateCache`): a process keeps the chunks it wrote, so its
  next read of the same iteration's chunk is served from memory. The store
  stays the source of truth: a cached chunk is served only to its owner
  (one trainer, :func:`new_owner`), for the iteration it was written as, and
  while its file is the one written (inode, size, modification time); a
  process running another trainer drops the rest. Bounded: a full cache
  refuses new chunks (a pass scans the chunks in order; an evicting cache
  smaller than the scan would lose each before its next use).

Writing in place is safe by the run store's protocol: a pass writes only the
slot of the iteration it runs, never the committed one, and a retried or
resumed task rewrites the whole chunk; a kill -9 mid-write leaves a chunk
that fails its checksum in a slot nothing reads before rewriting it. A solver
writes each state array once per iteration, so (array, iteration) names one
content. An all-fill chunk is written, where Zarr would delete its file: both
read as the fill value.
"""
from __future__ import annotations

import mmap
import os
import sys
import threading
import uuid
from collections import OrderedDict

import google_crc32c
import numpy as np
import zarr

from storage.data import read_rows
from storage.paths import file_identity, rewrite_file
from storage.runstore import FAST_CODECS as _FAST_CODECS
from storage.runstore import slot_of, state_path

STATE_BUDGET = 2**30  # bytes of written state chunks a process keeps (a worker: at most an eighth of its limit)


def new_owner() -> str:
    """Return a fresh token naming one trainer's state chunks in the caches (:class:`StateCache`)."""
    return uuid.uuid4().hex


class _Layout:
    """Where one state array's whole chunks lie on disk and how they are encoded (``fast``: bytes + crc32c only)."""

    def __init__(self, store: str, name: str):
        a = zarr.open_array(store=store, path=name, mode="r")
        self.meta = file_identity(os.path.join(store, name, "zarr.json"))
        self.dir = os.path.join(store, name)
        self.rows, self.n = int(a.chunks[0]), int(a.shape[0])
        self.dtype = np.dtype(a.dtype)
        self.row_shape = tuple(int(s) for s in a.shape[1:])
        self.chunk_bytes = self.rows * int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        fill = np.asarray(a.metadata.fill_value, self.dtype)
        self.fill_row = np.full(self.row_shape, fill, self.dtype)
        self.key = a.metadata.encode_chunk_key
        codecs = getattr(a.metadata, "codecs", None)  # Zarr v2 metadata has none: read and written through Zarr
        self.fast = (sys.byteorder == "little" and a.metadata.zarr_format == 3 and codecs is not None
                     and tuple(codecs) == _FAST_CODECS and self.dtype.kind == "f" and tuple(a.chunks[1:]) == self.row_shape)

    def chunk(self, start: int, stop: int):
        """Return the chunk index of rows [start, stop) when they are one whole chunk, else None."""
        if start % self.rows or stop != min(start + self.rows, self.n) or stop <= start:
            return None
        return start // self.rows

    def path(self, i: int) -> str:
        return os.path.join(self.dir, *self.key((i, *(0,) * len(self.row_shape))).split("/"))


_layouts: dict = {}


def _layout(store: str, name: str) -> _Layout:
    key = (store, name)
    known = _layouts.get(key)
    if known is not None and known.meta is not None and known.meta == file_identity(os.path.join(store, name, "zarr.json")):
        return known
    _layouts[key] = layout = _Layout(store, name)
    return layout


def write_rows(store: str, name: str, start: int, stop: int, block: np.ndarray):
    """Write ``block`` as rows [start, stop) of state array ``name``; return the chunk file's identity, or None.

    A whole chunk of a bytes + crc32c array is written as Zarr would encode it, in place when its
    file has that size and one link (None is returned for anything written through Zarr instead).
    """
    return _write_rows(store, name, start, stop, block)[0]


def _write_rows(store: str, name: str, start: int, stop: int, block: np.ndarray):
    """:func:`write_rows`, returning (identity, the rows as written: ``block`` cast to the array's dtype), or (None, None)."""
    store = os.path.abspath(store)
    layout = _layout(store, name)
    i = layout.chunk(start, stop) if layout.fast else None
    block = np.asarray(block)
    if i is None or block.shape != (stop - start, *layout.row_shape):
        zarr.open_array(store=store, path=name, mode="r+")[start:stop] = block
        return None, None
    same = block.dtype == layout.dtype and block.flags.c_contiguous  # block itself, not a view: the cache makes it read-only
    data = block if same else np.ascontiguousarray(block, layout.dtype)
    parts = [data]
    if stop - start < layout.rows:  # the edge chunk: Zarr stores it whole, padded with the fill value
        parts.append(np.broadcast_to(layout.fill_row, (layout.rows - (stop - start), *layout.row_shape)).copy())
    crc = 0
    for part in parts:
        crc = google_crc32c.extend(crc, part)  # a contiguous ndarray (it refuses a memoryview)
    parts.append(np.array([crc], "<u4"))
    path = layout.path(i)
    rewrite_file(path, parts, size=layout.chunk_bytes + 4)  # a hard-linked file (``cp -al`` snapshot) is replaced, as Zarr does
    return file_identity(path), data


def _fast_chunk(store: str, name: str, start: int, stop: int):
    """Return (layout, chunk index) when rows [start, stop) are one whole chunk of a fast array, else (None, None).

    A missing or damaged array is (None, None): :func:`storage.data.read_rows` then says what is wrong.
    """
    try:
        layout = _layout(store, name)
    except (FileNotFoundError, KeyError, ValueError):
        return None, None
    return (layout, layout.chunk(start, stop)) if layout.fast else (layout, None)


def map_chunk_rows(store: str, name: str, start: int, stop: int) -> np.ndarray | None:
    """Return rows [start, stop), one whole chunk of a bytes + crc32c array, mapped read-only from its file; else None.

    The array's elements are the page cache's pages, not a copy in new memory: a fresh worker's
    read of a 25 MB data chunk spent 20-70 ms faulting in the buffer it copied into (transparent
    huge pages waiting on compaction), a mapping ~5 ms, most of it the checksum. The checks are
    :func:`read_chunk_rows`' (size, crc32c, NaN rows); None for anything it would pass to Zarr.
    For files written once and only replaced whole (a data store's chunks; the project's writers
    swap a file by rename, which leaves a mapping of the old one intact): a file rewritten in place
    would change under the mapping, and one truncated in place by someone else kills the process
    that reads the lost pages with SIGBUS (no exception to catch).
    """
    store = os.path.abspath(store)
    layout, i = _fast_chunk(store, name, start, stop)
    if i is None:
        return None
    try:
        with open(layout.path(i), "rb") as f:
            if os.fstat(f.fileno()).st_size != layout.chunk_bytes + 4:
                return None
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    count = layout.chunk_bytes // layout.dtype.itemsize
    block = np.frombuffer(mapped, layout.dtype, count=count).reshape(layout.rows, *layout.row_shape)
    if google_crc32c.value(block) != int(np.frombuffer(mapped, "<u4", count=1, offset=layout.chunk_bytes)[0]):
        return None
    block = block[:stop - start]
    if np.isnan(block.reshape(block.shape[0], -1)[:, 0]).any():
        return None
    return block


def read_chunk_rows(store: str, name: str, start: int, stop: int) -> np.ndarray:
    """Return rows [start, stop) of state array ``name``, checked as :func:`storage.data.read_rows` checks them."""
    store = os.path.abspath(store)
    return _read_chunk_rows(store, name, start, stop, *_fast_chunk(store, name, start, stop))


def _read_chunk_rows(store: str, name: str, start: int, stop: int, layout, i) -> np.ndarray:
    """:func:`read_chunk_rows` with the :func:`_fast_chunk` of the rows already found (one stat of the array's metadata)."""
    if i is not None:
        block = _read_file(layout, i)
        if block is not None:
            block = block[:stop - start]
            if not np.isnan(block.reshape(block.shape[0], -1)[:, 0]).any():
                return block
    return read_rows(store, name, start, stop)


def _read_file(layout: _Layout, i: int):
    """Return chunk i decoded from its file, or None when the file is missing, has another size or fails its crc32c."""
    out = np.empty((layout.rows, *layout.row_shape), layout.dtype)
    crc = np.empty(1, "<u4")
    try:
        with open(layout.path(i), "rb", buffering=0) as f:
            if os.fstat(f.fileno()).st_size != layout.chunk_bytes + 4:
                return None
            view = memoryview(out).cast("B")
            while view.nbytes:
                n = f.readinto(view)
                if not n:
                    return None
                view = view[n:]
            if f.readinto(memoryview(crc).cast("B")) != 4:
                return None
    except OSError:
        return None
    if google_crc32c.value(out) != int(crc[0]):
        return None
    return out


class StateCache:
    """The state chunks a process wrote, within ``budget`` bytes, each served to its owner for its iteration only."""

    def __init__(self, budget: int = STATE_BUDGET):
        self.budget = int(budget)
        self.items: OrderedDict = OrderedDict()  # (store, name, start) -> (iteration, identity, block)
        self.nbytes = 0
        self.owner = None
        self.hits = self.misses = 0
        self.lock = threading.Lock()

    def put(self, owner: str, store: str, name: str, start: int, iteration: int, block: np.ndarray, identity) -> None:
        """Keep ``block``, just written as rows from ``start`` of state ``name`` of iteration ``iteration``, read-only.

        ``identity``: its file's (:func:`write_rows`; None: not kept, ``block`` may be None). The chunk's rows of an earlier
        iteration are dropped (so a run keeps one slot's worth); a chunk new to a full cache is not kept.
        """
        key = (os.path.abspath(store), name, int(start))
        with self.lock:
            if owner != self.owner:
                self._clear()
                self.owner = owner
            old = self.items.pop(key, None)
            if old is not None:
                self.nbytes -= old[2].nbytes
            if identity is None or self.nbytes + block.nbytes > self.budget:
                return
            block.flags.writeable = False
            self.items[key] = (int(iteration), identity, block)
            self.nbytes += block.nbytes

    def get(self, owner: str, store: str, name: str, start: int, stop: int, iteration: int, path: str):
        """Return the kept rows [start, stop) of state ``name`` of ``iteration``: only to ``owner``, while file ``path`` is unchanged."""
        key = (os.path.abspath(store), name, int(start))
        with self.lock:
            hit = self.items.get(key) if owner == self.owner else None
        if hit is None or hit[0] != iteration or hit[2].shape[0] != stop - start or file_identity(path) != hit[1]:
            self.misses += 1
            return None
        self.hits += 1
        return hit[2]

    def _clear(self) -> None:
        self.items.clear()
        self.nbytes = 0

    def clear(self) -> None:
        """Forget every kept chunk (a finished run's)."""
        with self.lock:
            self._clear()
            self.owner = None


STATE = StateCache()


def read_state(store: str, name: str, start: int, stop: int, iteration: int, owner: str | None = None) -> np.ndarray:
    """Return rows [start, stop) of per-sample state ``name`` (e.g. ``z1``) of ``iteration`` (its slot, iteration mod 2).

    From :data:`STATE` when ``owner`` wrote them there, else from disk (:func:`read_chunk_rows`).
    """
    store, path = os.path.abspath(store), state_path(slot_of(iteration), name)
    layout, i = _fast_chunk(store, path, start, stop)
    if owner is not None and i is not None:
        hit = STATE.get(owner, store, name, start, stop, iteration, layout.path(i))
        if hit is not None:
            return hit
    return _read_chunk_rows(store, path, start, stop, layout, i)


def write_state(store: str, name: str, start: int, stop: int, block: np.ndarray, iteration: int,
                owner: str | None = None) -> None:
    """Write rows [start, stop) of per-sample state ``name`` of ``iteration`` into its slot (:func:`write_rows`).

    With ``owner`` they are kept in :data:`STATE` too, in place of the chunk's rows of an earlier iteration.
    """
    identity, written = _write_rows(store, state_path(slot_of(iteration), name), start, stop, block)
    if owner is not None:  # the rows as written (the store's dtype), so a hit equals a disk read; None: through Zarr, not kept
        STATE.put(owner, store, name, start, iteration, written, identity)
