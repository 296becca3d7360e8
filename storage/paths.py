"""Where a command may write: its own kind of store only, built beside the target and renamed into place.

Every store this project writes (data, run, predictions) is a Zarr v3 group
whose ``format`` attribute names its kind. :func:`check_target` is the one
rule all writers share: a missing path is fine; an existing one is replaced
only with ``overwrite`` and only if it is a store of the same kind; an output
equal to, inside, or holding one of the command's inputs is refused.

A store is built under ``<target>.partial-<host>.<pid>.<random>`` and renamed
to the target only when complete (:func:`partial_path`, :func:`swap_in`). A
crash (SIGKILL, power loss) can leave such a folder behind, or a replaced store
renamed aside as ``<target>.old-<host>.<pid>.<random>``; the next write to the
same target removes those whose writer process is gone
(:func:`clean_stale_partials`), and tells the user. A run store replaced by
``train --overwrite`` is kept as ``<target>.replaced-…`` until the new run's first
commit (:mod:`storage.runstore`): :func:`clean_stale_partials` never removes it.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import threading
import uuid
from pathlib import Path

from solvers.errors import InputError

CHUNK_PARTIAL_SUFFIX = ".partial"  # a state chunk file being written: ``<chunk>.<uuid hex>.partial``
_CHUNK_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")
_OLD_SMALL_TMP = re.compile(r"^\..+\.tmp-\d+-\d+$")  # ``.<name>.tmp-<pid>-<thread>``: metrics/ files written aside before

KIND_NAMES = {"admm-dask-data": "data store", "admm-dask-run": "run store",
              "admm-dask-predictions": "predictions store"}


SOURCE_SUFFIXES = {".csv": "csv", ".txt": "csv", ".data": "csv", ".npz": "npz", ".parquet": "parquet",
                   ".pq": "parquet"}  # the files ingestion reads, by (case-insensitive) last suffix
GZIP_KINDS = {"csv"}  # kinds also read gzip-compressed: ``<name>.csv.gz``


def source_kind(path) -> str | None:
    """Return which reader ingestion uses for the source file ``path`` ('csv', 'npz', 'parquet'), or None.

    Chosen by suffix, case-insensitively: ``.csv``, ``.txt``, ``.data`` (and each ``.gz``), ``.npz``,
    ``.parquet``, ``.pq``. A bare ``x.gz`` or ``x.npz.gz`` is none of them.
    """
    suffixes = [s.lower() for s in Path(path).suffixes]
    if not suffixes:
        return None
    if suffixes[-1] == ".gz":
        kind = SOURCE_SUFFIXES.get(suffixes[-2]) if len(suffixes) > 1 else None
        return kind if kind in GZIP_KINDS else None
    return SOURCE_SUFFIXES.get(suffixes[-1])


def source_stem(path) -> str:
    """Return the name of the source file ``path`` without its source suffixes: ``HIGGS.csv.gz`` -> ``HIGGS``."""
    name = Path(path).name
    if source_kind(path) is None:
        return name
    cut = 2 if name.lower().endswith(".gz") else 1
    return name.rsplit(".", cut)[0]


def file_identity(path: str):
    """Return (inode, size, mtime_ns) of a file, or None if it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def store_format(path) -> str | None:
    """Return the ``format`` attribute of the Zarr v3 group at ``path``, or None if it is none."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    fmt = (meta.get("attributes") or {}).get("format")
    return fmt if isinstance(fmt, str) else None


def _overlaps(a: Path, b: Path) -> bool:
    """Return True if ``a`` and ``b`` are the same path or one lies inside the other."""
    return a == b or a in b.parents or b in a.parents


def check_target(path, kind: str, overwrite: bool, inputs=(), flag: str = "--out") -> None:
    """Raise :class:`InputError` unless a store of format ``kind`` may be written at ``path``.

    ``inputs`` are the paths the command reads: writing onto, into or around
    one of them is refused. An existing path needs ``overwrite`` and must be
    a store of the same ``kind``; anything else (another kind of store, a
    user's folder or file) is never replaced.
    """
    path = Path(path)
    target = path.resolve()
    for source in inputs:
        if source is not None and _overlaps(target, Path(source).resolve()):
            raise InputError(f"{flag} {path} is (or holds, or lies inside) the input {source}; "
                             "write the output to another path")
    if not path.exists() and not path.is_symlink():
        return
    what = KIND_NAMES.get(kind, kind)
    link = path.is_symlink()  # never written through: the link, not its target, would be replaced
    fmt = store_format(path) if path.is_dir() and not link else None
    found = (f"it is a symlink (to {os.readlink(path)}), which is never replaced" if link
             else f"it is an admm-dask {KIND_NAMES[fmt]}" if fmt in KIND_NAMES
             else "it is no admm-dask store" if fmt is None else f"its format is {fmt!r}")
    if not overwrite:
        if fmt != kind:  # --overwrite would be refused too: do not suggest it
            raise InputError(f"{path} already exists and is not an admm-dask {what} ({found}); choose another "
                             f"path (nothing but a {what} is ever replaced)")
        raise InputError(f"{path} already exists; pass --overwrite to replace it (only a {what} is "
                         "replaced), or choose another path")
    if fmt != kind:
        raise InputError(f"refusing to overwrite {path}: it is not an admm-dask {what} ({found}); choose "
                         "another path (--overwrite replaces only a store of the kind this command writes)")


def _this_host() -> str:
    return socket.gethostname().replace("/", "_")


def rewrite_file(path, parts, size: int | None = None) -> None:
    """Make the bytes of ``parts`` (contiguous buffers, in order) the content of the file ``path``.

    Over the old file in place when it has one link (a hard-linked snapshot, ``cp -al``, keeps its bytes)
    and, given ``size``, that size; else written beside it as ``<path>.<uuid hex>.partial`` and renamed
    into place, as Zarr writes (a killed writer's leftovers: :func:`remove_stale_chunk_partials`). In
    place saves the rename's freed block (~2 ms a file on this machine's disk) and keeps the file's pages.
    """
    path = os.fspath(path)
    total = sum(memoryview(part).nbytes for part in parts)
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        fd = None
    if fd is not None:
        try:
            st = os.fstat(fd)
            if st.st_nlink == 1 and (size is None or st.st_size == size):
                _write_all(fd, parts)
                if st.st_size != total:
                    os.ftruncate(fd, total)
                return
        finally:
            os.close(fd)
    os.makedirs(os.path.dirname(path), exist_ok=True)  # a new (or resized) file: written aside, renamed into place
    tmp = f"{path}.{uuid.uuid4().hex}{CHUNK_PARTIAL_SUFFIX}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, parts)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_all(fd: int, parts) -> None:
    for part in parts:
        view = memoryview(part).cast("B")
        while view.nbytes:
            view = view[os.write(fd, view):]


def remove_stale_chunk_partials(folder, old_small_files: bool = False) -> int:
    """Remove the ``<chunk>.<uuid>.partial`` files a killed :func:`rewrite_file` left under ``folder``; return how many.

    With ``old_small_files`` also the ``.<name>.tmp-<pid>-<thread>`` files the previous writer of
    ``metrics/`` files left (a run store's ``metrics/`` folder only).

    Call it only while holding the run's lock (:mod:`storage.lock`): then no writer of this run is alive to own them.
    (On an external cluster a worker may still run a killed client's task: it loses its temporary file and its rename
    fails, no new hazard, since it was writing into the state slot the new run is about to write.)
    Files of any other name are left alone.
    """
    removed = 0
    for root, _, files in os.walk(folder):
        for f in files:
            if _CHUNK_PARTIAL.search(f) or (old_small_files and _OLD_SMALL_TMP.match(f)):
                try:
                    os.unlink(os.path.join(root, f))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def partial_path(target) -> Path:
    """Return a fresh ``<target>.partial-<host>.<pid>.<random>`` path beside ``target``."""
    target = Path(target)
    return target.with_name(f"{target.name}.partial-{_this_host()}.{os.getpid()}.{secrets.token_hex(4)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_partials(target, report=None) -> list:
    """Remove the ``<target>.partial-*`` and ``<target>.old-*`` folders left by writers on this host that are gone.

    ``.old-*`` is a replaced store renamed aside by :func:`swap_in`; a killed
    writer can leave it half deleted. It is removed only if ``target`` exists
    (else it is the only copy, and the report says how to restore it). A
    folder whose writer ran on another host is kept (its process cannot be
    checked from here) and named in the report. Returns the removed paths.
    """
    target = Path(target)
    removed = []
    try:
        siblings = [(p, kind) for kind in (".partial-", ".old-") for p in target.parent.glob(f"{target.name}{kind}*")]
    except OSError:
        return removed
    for p, kind in siblings:
        tail = p.name[len(target.name) + len(kind):]
        parts = tail.rsplit(".", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            continue  # not written by this version: leave it to the user
        host, pid = parts[0], int(parts[1])
        if host == _this_host() and pid != os.getpid() and not _pid_alive(pid):
            if kind == ".old-" and not target.exists():  # killed between swap_in's two renames: this is the only copy
                if report is not None:
                    report(f"note: {p} is the store {target} as it was before an interrupted replacement "
                           f"(process {pid} is gone); rename it back to {target.name} to keep it")
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
            if report is not None:
                what = "an interrupted write" if kind == ".partial-" else "an interrupted replacement (the old store)"
                report(f"removed {p}, left by {what} (process {pid} is gone)")
        elif host != _this_host() and report is not None:
            report(f"note: {p} was left by process {pid} on host {host}; delete it if that write is over")
    return removed


def swap_in(partial: Path, target: Path, background: bool = False, keep_old: str | None = None) -> Path | None:
    """Rename the complete store ``partial`` to ``target``; an old ``target`` goes only after the rename.

    With ``background`` the old store, renamed aside, is deleted in a thread
    (:func:`discard`; :func:`join_discards` waits for it); otherwise before
    this returns. With ``keep_old`` (a tag such as ``".replaced-"``) it is not
    deleted: it stays renamed aside as ``<target><tag><host>.<pid>.<random>``, and
    that path is returned (None: there was no old store); the caller deletes it
    or renames it back (a run store: :meth:`storage.runstore.RunStore.create`).
    Raises :class:`InputError` if another writer created ``target`` meanwhile.
    """
    partial, target = Path(partial), Path(target)
    if not target.exists():
        try:
            os.rename(partial, target)
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
            raise InputError(f"{target} was created by another process meanwhile; nothing was replaced") from None
        return None
    old = aside_path(target, keep_old or ".old-")
    os.rename(target, old)
    try:
        os.rename(partial, target)
    except BaseException:
        os.rename(old, target)
        raise
    if keep_old:
        return old
    if background:
        discard(old)
    else:
        shutil.rmtree(old, ignore_errors=True)
    return None


def aside_path(target, tag: str) -> Path:
    """Return a fresh ``<target><tag><host>.<pid>.<random>`` path beside ``target`` (``tag``: ``.old-``, …)."""
    target = Path(target)
    return target.with_name(f"{target.name}{tag}{_this_host()}.{os.getpid()}.{secrets.token_hex(4)}")


def discard(path: Path) -> None:
    """Delete the folder ``path`` (renamed out of the way: nothing reads it) in a thread (:func:`join_discards`).

    The work goes on meanwhile: a replaced run store of a few dozen folders took
    0.2-0.4 s to delete on this machine's disk under load. The thread is not a
    daemon: a process waits for it before it exits.
    """
    thread = threading.Thread(target=shutil.rmtree, args=(path,), kwargs={"ignore_errors": True},
                              name="admm-dask-discard")
    with _DISCARDING_LOCK:
        _DISCARDING.append(thread)
    thread.start()


_DISCARDING: list[threading.Thread] = []
_DISCARDING_LOCK = threading.Lock()


def join_discards() -> None:
    """Wait for every :func:`discard` thread of this process started so far: their folders are gone on return."""
    with _DISCARDING_LOCK:
        threads, _DISCARDING[:] = list(_DISCARDING), []
    for thread in threads:
        thread.join()
