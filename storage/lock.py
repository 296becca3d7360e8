"""Store locks: one writer per run store, per data store and per command output (:class:`OutputLock`: a predictions
store, a report folder), many readers per data or run store; also across a cluster's nodes.

The lock is the file ``<RUN>.lock`` beside the run store ``<RUN>``, holding
JSON: host, pid, the process's start time, the lock's start time, the command
and a random token. It is taken with an atomic create that also works on the
network file systems SLURM and PBS clusters share (NFS, Lustre, GPFS, BeeGFS):
the owner record is written to a private file first and hard-linked to
``<RUN>.lock`` (``link(2)`` fails if the name exists, and is atomic on NFS,
where ``O_CREAT|O_EXCL`` was not on old clients). On a file system without
hard links it falls back to ``O_CREAT|O_EXCL``. ``flock``/``fcntl`` locks are
not used: many cluster file systems do not propagate them between nodes.

While held, a daemon thread touches the file every :data:`HEARTBEAT` seconds.
A lock is *stale*, and is taken over with a message, when

- its holder ran on this host and that process is gone (or its pid now
  belongs to a process started later), or
- its holder ran on another host and the file has not been touched for
  :data:`STALE_AFTER` seconds, judged by the file server's clock (a file we
  just wrote there), so clocks of the nodes need not agree.

Limits: a holder on another host that is alive but frozen for longer than
:data:`STALE_AFTER` (e.g. a suspended job) loses its lock; a file system that
caches attributes for longer than that on clients (unusual; NFS ``actimeo``
is seconds) could make a live holder look stale. Two processes taking over the
same stale lock at the same instant are resolved by an atomic rename of the
stale file: only one of them removes it.

**Data stores** (:class:`DataWriteLock`, :class:`ReadLock`) use the same file
``<DATA>.lock`` for their one writer (ingestion, :class:`storage.data.DataWriter`)
and, beside it, one record per reader, ``<DATA>.reader-<host>.<pid>.<token>``
(a train, evaluate, predict, or the estimator's ``score(path)``: many at once; a report, an evaluate and a
predict also leave one beside the run store they read, ``ReadLock(run=True)``), touched by the same heartbeat and
stale by the same rules. A writer takes ``<DATA>.lock`` and then looks for live
readers; a reader writes its record and then looks at ``<DATA>.lock``; each
backs out (removing what it wrote) and refuses in one line if it finds the
other. Of a reader and a writer starting together, at least one sees the
other (both may refuse; never both proceed). A reader that cannot write its
record (a read-only folder of shared data) still refuses while a writer holds
the lock, but a writer cannot see it. A writer that replaces a store looks
for readers again right before the swap, and discards its new store if it
finds one. Every process names these files from the store's real path
(symbolic links, ``.`` and ``..`` resolved), so a reader given a link and a
writer given the real path see each other.

A process killed between writing its private record file (``.<RUN>.lock.<host>.<pid>.<token>``) and removing it
leaves that file beside the store; the next holder of the lock removes those of this host's gone processes whose
content is their own record (same pid and token), never a live taker's, another host's or any other file. The same
holds for the clock probe (``.admm-dask-clock-<host>.<pid>.<token>``) and a stale lock set aside by a take-over
(``<RUN>.lock.stale-<host>.<pid>.<token>``, removed only if the record in it is stale too):
:func:`remove_dead_lock_leftovers`, also run by readers.

Limits: on a network file system a client caches directory contents and
attributes, so both directions can miss the other side for up to the
client's cache time (NFS ``acdirmax``, up to 60 s by default): a writer's
listing can miss a reader record created on another node, and a reader's look
at ``<DATA>.lock`` can miss a writer's lock created on another node. A reader
record left by a process killed on another node (SIGKILL, a lost node) blocks
writers until it has not been touched for :data:`STALE_AFTER` seconds; the
refusal names the record, which may be deleted once that process is gone. A file of a reader record's name
that is not one (not JSON with token, host and pid, or not readable) is never removed: it blocks writers
until the user deletes it, as a ``<DATA>.lock`` that is not a lock record does. A reader killed between
writing its record's private file and renaming it leaves ``.<DATA>.reader-….tmp`` beside the store: writers
do not look at it (a reader finding one of its name writes another); the next reader on this host removes it
once that process is gone and the file holds its complete record (:func:`remove_dead_private_files`); others'
(another host's, a half-written one) may be deleted by hand.
"""
from __future__ import annotations

import glob
import json
import os
import secrets
import socket
import sys
import threading
import time
from pathlib import Path

from solvers.errors import InputError

HEARTBEAT = 30.0     # seconds between touches of a held lock
STALE_AFTER = 600.0  # seconds without a touch after which another host's lock is stale


def canonical(store) -> Path:
    """Return the store's real path (symbolic links, ``.`` and ``..`` resolved): where its lock and reader records go.

    Every process names them from this path, so a reader given a link to a store and a writer given its real path
    see each other's files.
    """
    real = Path(os.path.realpath(store))
    if not real.name:
        raise InputError(f"{store} is not a store: it is the root folder")
    return real


def lock_path(store) -> Path:
    """Return the lock file of the store ``store``: ``<store>.lock`` beside it (beside its real path)."""
    store = canonical(store)
    return store.with_name(store.name + ".lock")


def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # no such process, no psutil, no permission
        return None


def _alive(pid: int, started: float | None) -> bool:
    """Return True if process ``pid`` runs on this host and is the one that started at ``started``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now_started = _process_start(pid)
    return started is None or now_started is None or abs(now_started - started) < 2.0


def _command() -> str:
    """Return how this process was started, for the lock record: e.g. ``python -m pipeline.train``."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.parent.name == "pipeline" and argv0.suffix == ".py":
        return f"python -m pipeline.{argv0.stem}"
    return f"python {argv0.name}" if argv0 is not None and argv0.name not in ("", "-c") else "a Python process"


def read_holder(store) -> dict | None:
    """Return the record of the lock's holder (with ``age``, seconds since its last touch), or None if unlocked."""
    return _read_record(lock_path(store))


def _read_record(path: Path) -> dict | None:
    """Return the lock record in file ``path`` (with ``age``), or None if there is no such file."""
    try:
        text = path.read_text()
        mtime = path.stat().st_mtime
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:  # e.g. another user's record we may not read: its age still says whether it is stale
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        except OSError:
            return {"unreadable": True, "age": 0.0}
        return {"unreadable": True, "age": max(0.0, _fs_now(path.parent) - mtime)}
    try:
        holder = json.loads(text)
        if not isinstance(holder, dict):
            raise ValueError
    except ValueError:
        holder = {"unreadable": True}
    holder["age"] = max(0.0, _fs_now(path.parent) - mtime)
    return holder


CLOCK_PROBE = ".admm-dask-clock-"  # _fs_now's probe: ``.admm-dask-clock-<host>.<pid>.<token>``, holding its record


def _host() -> str:
    """This host's name as it appears in the names of this module's files (no ``/``)."""
    return socket.gethostname().replace("/", "_")


def _fs_now(folder: Path) -> float:
    """Return the file server's current time: the mtime of a file just written in ``folder``.

    The probe is named and filled like a private lock record (host, pid, token), so a probe left by a process
    killed between writing and removing it is removed by the next lock holder or reader on this host
    (:func:`remove_dead_lock_leftovers`)."""
    token = secrets.token_hex(8)
    probe = folder / f"{CLOCK_PROBE}{_host()}.{os.getpid()}.{token}"
    try:
        probe.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": token}))
        return probe.stat().st_mtime
    except OSError:
        return time.time()
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def is_stale(holder: dict) -> bool:
    """Return True if the lock record ``holder`` belongs to no live process (see the module docstring)."""
    if holder.get("unreadable"):
        return holder.get("age", 0.0) > 60.0  # a writer killed between create and write
    if holder.get("host") == socket.gethostname():
        return not _alive(int(holder.get("pid", -1)), holder.get("process_started"))
    return holder.get("age", 0.0) > STALE_AFTER


def is_record(holder: dict) -> bool:
    """Return True if ``holder`` (a :func:`read_holder` result) is a lock record: only those are ever taken over."""
    return (not holder.get("unreadable") and isinstance(holder.get("token"), str)
            and isinstance(holder.get("host"), str) and isinstance(holder.get("pid"), int))


def describe(holder: dict) -> str:
    """Return who holds a lock, for messages: command, pid, host and since when."""
    if holder.get("unreadable"):
        return "a process whose lock record cannot be read"
    return (f"{holder.get('command', 'a trainer')} (pid {holder.get('pid')} on host {holder.get('host')}, "
            f"since {holder.get('started')})")


def check_unlocked(store, others_only: bool = False) -> None:
    """Raise :class:`InputError` if a live process holds the lock of run store ``store`` (``others_only``: a
    process other than this one: a trainer's own lock does not refuse its own checks)."""
    holder = read_holder(store)
    if others_only and holder is not None and holder.get("pid") == os.getpid() and \
            holder.get("host") == socket.gethostname():
        return
    if holder is not None and not is_stale(holder):
        raise InputError(f"run store {store} is in use by {describe(holder)}; wait for it to finish or stop it "
                         f"(its lock is {lock_path(store)})")


def _new_record(command: str | None) -> dict:
    """Return this process's lock record: host, pid, process start, lock start, command and a random token."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "process_started": _process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command or _command(),
            "token": secrets.token_hex(8)}


def _why_unwritable(folder: Path, err: OSError) -> str:
    """Return why a lock could not be written in ``folder``: a full disk (or quota) said as such."""
    import errno

    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device of its folder {folder} ({err.strerror}); free disk space or write "
                "elsewhere (nothing was written)")
    return f"its folder {folder} is not a writable directory ({err.strerror})"


def remove_dead_private_files(folder: Path, prefix: str, suffix: str = "") -> list[Path]:
    """Remove, in ``folder``, the private record files ``<prefix><pid>.<token>[.<hex>]<suffix>`` (``prefix`` ends
    with this host's name and a dot) that processes of this host killed before renaming or removing them left;
    return them.

    Only a file of exactly that form whose process is gone and whose content is that process's record (JSON with
    the same pid and token, and this host): nothing but a lock or a reader record is written so, and a live
    process's (one taking a lock or writing its record at this moment) is never touched. Other hosts' processes
    cannot be checked from here, so theirs stay; so does any file not shown to be a record (half-written, another
    program's, a user's)."""
    removed = []
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix) and n.endswith(suffix)]
    except OSError:
        return removed
    for name in names:
        parts = name[len(prefix):len(name) - len(suffix)].split(".")
        if len(parts) not in (2, 3) or not parts[0].isdigit() or len(parts[1]) != 16:
            continue
        pid, token = int(parts[0]), parts[1]
        if pid == os.getpid() or _alive(pid, None):
            continue
        file = Path(folder) / name
        try:
            if file.is_symlink():
                continue
            holder = json.loads(file.read_text())
        except (OSError, ValueError):
            continue  # unreadable, or written only in part: not shown to be a record
        if not isinstance(holder, dict) or holder.get("token") != token or holder.get("pid") != pid or \
                not prefix.endswith(f"{str(holder.get('host')).replace('/', '_')}."):
            continue
        _unlink_into(removed, file)
    return removed


def _unlink_into(removed: list[Path], file: Path) -> None:
    """Remove ``file`` and append it to ``removed``; a file gone already or not removable is left out."""
    try:
        file.unlink()
        removed.append(file)
    except OSError:
        pass


def remove_dead_lock_leftovers(lock: Path) -> list[Path]:
    """Remove, beside lock file ``lock`` (``<STORE>.lock``), what processes of this host killed at the wrong moment
    left there of the lock protocol; return what was removed. Called by the next holder of that lock or reader of
    its store on this host.

    - Clock probes (:func:`_fs_now`, ``.admm-dask-clock-<host>.<pid>.<token>``, in the lock's folder): by the rule
      of :func:`remove_dead_private_files` (this host, a gone process, its own record inside).
    - Stale locks moved aside by a take-over (:meth:`RunLock._take_over`, ``<STORE>.lock.stale-<host>.<pid>.<token>``,
      host, pid and token of the taker): only of exactly that form, this host, the taker's process gone (nobody
      will link it back or remove it), a regular file, and holding a lock record (JSON with token, host and pid)
      that is itself stale (:func:`is_stale`: its holder on this host is gone, or on another host it has not been
      touched for :data:`STALE_AFTER`; the rename kept its mtime). A live holder's record moved aside in the
      take-over's race (its lock then missing) is never removed, nor an unreadable one, another host's taker's, a
      name of the old form without host (``<STORE>.lock.stale-<token>``) or any other file.
    """
    folder, host = lock.parent, _host()
    removed = remove_dead_private_files(folder, f"{CLOCK_PROBE}{host}.")
    prefix = f"{lock.name}.stale-{host}."
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix)]
    except OSError:
        return removed
    for name in names:
        parts = name[len(prefix):].split(".")
        if len(parts) != 2 or not parts[0].isdigit() or len(parts[1]) != 16:
            continue
        pid = int(parts[0])
        if pid == os.getpid() or _alive(pid, None):
            continue
        file = folder / name
        if file.is_symlink() or not file.is_file():
            continue
        holder = _read_record(file)
        if holder is None or not is_record(holder) or not is_stale(holder):
            continue
        _unlink_into(removed, file)
    return removed


class _Heartbeat:
    """Touch a lock file every :data:`HEARTBEAT` seconds in a daemon thread, until stopped."""

    def __init__(self, path: Path):
        self.path, self._stop = path, threading.Event()

        def beat():
            while not self._stop.wait(HEARTBEAT):
                try:
                    os.utime(self.path)
                except OSError:
                    pass
        self._thread = threading.Thread(target=beat, name="admm-dask-lock-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


READER = ".reader-"  # a reader's record: ``<DATA>.reader-<host>.<pid>.<token>``


def live_readers(store, remove_stale: bool = True) -> list[dict]:
    """Return the records of the live readers of data store ``store`` (each with ``path``, its file); stale ones are
    removed (``remove_stale``).

    A file of a reader record's name that is not one (:func:`is_record`: not JSON with token, host and pid, or one
    we may not read) is returned whatever its age and never removed: nothing shows that admm-dask wrote it (a user's
    file, another program's, a record half-written by a crash of an older version; records are written to a
    private file and renamed, so a record's name only ever holds a complete one), and a command never deletes what
    it did not create. A writer refuses while it is there, naming it (:func:`check_no_readers`)."""
    store = canonical(store)
    try:
        paths = sorted(store.parent.glob(glob.escape(store.name) + READER + "*"))
    except OSError:
        return []
    readers = []
    for path in paths:
        holder = _read_record(path)
        if holder is None:
            continue  # released meanwhile
        if is_record(holder) and is_stale(holder):
            if remove_stale:
                try:
                    path.unlink()
                except OSError:
                    pass
            continue
        readers.append({**holder, "path": str(path)})
    return readers


def check_not_written(store) -> None:
    """Raise :class:`InputError` if a live process is writing data store ``store`` (holds its lock)."""
    holder = read_holder(store)
    if holder is not None and not is_stale(holder):
        raise InputError(_being_written(store, holder))


def _being_written(store, holder: dict) -> str:
    return (f"data store {store} is being written by {describe(holder)}; wait for it to finish, or stop it "
            f"(its lock is {lock_path(store)})")


def check_no_readers(store, kind: str, undone: str) -> None:
    """Raise :class:`InputError` naming a live reader of ``store`` (a ``kind``), if there is one; ``undone``: what
    the refused command did not do (for the message)."""
    readers = live_readers(store)
    if readers and not is_record(readers[0]):  # never removed: the user decides (as a lock file that is no record)
        raise InputError(f"{kind} {store} has {readers[0]['path']} beside it, which is not a reader record of "
                         f"admm-dask (no JSON with token, host and pid, or not readable); delete it if no process "
                         f"reads the store, then write again ({undone})")
    if readers:
        more = f" and {len(readers) - 1} other reader(s)" if len(readers) > 1 else ""
        raise InputError(f"{kind} {store} is in use by {describe(readers[0])}{more}, which reads it (its record is "
                         f"{readers[0]['path']}; delete it if that process is gone); wait for it to finish or stop "
                         f"it, then write again ({undone})")


class ReadLock:
    """Read the data store ``store``: ``with ReadLock(store): …`` (see the module docstring).

    Refused (:class:`InputError`) while a live writer holds the store's lock; while held, a writer is refused.
    With ``run=True`` the store is a run store: its trainer holds ``<RUN>.lock`` while it commits iterations, which
    readers may read meanwhile, so only a trainer that replaces the store (``--overwrite``) refuses the reader, until
    its new run is in place (:meth:`RunLock.replaced`), and a reader refuses such a trainer (:func:`storage.runstore.check_creatable`).
    """

    def __init__(self, store, command: str | None = None, run: bool = False):
        self.store = Path(store)
        self.run = run
        self.record = _new_record(command)
        real = canonical(store)  # a link to the store, ".", "..": the record lies beside the real store
        self.path = real.with_name(f"{real.name}{READER}{self.record['host'].replace('/', '_')}."
                                         f"{self.record['pid']}.{self.record['token']}")
        self._heartbeat = None

    def __enter__(self) -> "ReadLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Write this reader's record, then refuse (removing it) if a live writer holds the store's lock."""
        try:
            self._acquire()
        except BaseException:  # also a signal (KeyboardInterrupt, SIGTERM) between the record's creation and the end
            self.release()
            raise

    def _acquire(self) -> None:
        # Written to a private file, then renamed to the record's name (atomic; rename replaces a file of that name,
        # but the name is this reader's own, by its token): that name only ever holds a complete record. A record
        # created empty and written afterwards would, if this process died in between (or while it is still
        # writing), be a file that is no record, which blocks writers until the user deletes it (live_readers never
        # removes one). Only a private file this call created is removed: one that exists already is someone else's.
        try:
            self._write_record()
        except OSError:  # a read-only folder (shared data), no folder at all, a full disk: no record, the check below
            if not self._record_written():  # still runs (a rename that failed after it happened keeps the record)
                self.path = None
        holder = read_holder(self.store)
        if holder is not None and (not self.run or holder.get("replacing")) and not is_stale(holder):
            self.release()
            raise InputError(_being_written(self.store, holder) if not self.run else
                             f"run store {self.store} is being replaced by {describe(holder)} (--overwrite); wait "
                             f"for it to finish (its lock is {lock_path(self.store)})")
        if self.path is not None:
            self._heartbeat = _Heartbeat(self.path)
            # private files of this host's readers killed before their rename (.<DATA>.reader-<host>.<pid>.<token>.tmp)
            remove_dead_private_files(self.path.parent, f".{canonical(self.store).name}{READER}"
                                      f"{self.record['host'].replace('/', '_')}.", ".tmp")
            live_readers(self.store)  # and stale records (a killed reader's), by the rule writers remove them with
            remove_dead_lock_leftovers(lock_path(self.store))  # and killed processes' clock probes, stale locks aside

    def _write_record(self) -> None:
        """Write this reader's record to a private file this call creates, then rename it to :attr:`path`."""
        name = "." + self.path.name
        for tmp in (self.path.with_name(name + ".tmp"), self.path.with_name(f"{name}.{secrets.token_hex(4)}.tmp")):
            try:  # not <DATA>.reader-*: writers do not see it
                fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:  # not ours (a leftover of a killed reader, another file): left alone
                continue
            try:
                os.fchmod(fd, 0o644)  # readable by every user whatever the umask: a writer judges its age and holder
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(self.record, indent=1))
                    f.flush()
                    os.fsync(f.fileno())
                os.rename(tmp, self.path)
            finally:
                try:
                    tmp.unlink()  # ours; there only if the rename did not happen
                except OSError:
                    pass
            return
        raise FileExistsError(f"no private file name free for {self.path}")

    def _record_written(self) -> bool:
        """Return whether :attr:`path` holds this reader's record (a rename reported failed may have happened)."""
        try:
            return json.loads(self.path.read_text()).get("token") == self.record["token"]
        except (OSError, ValueError, AttributeError):
            return False

    def release(self) -> None:
        """Stop the heartbeat and remove this reader's record."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self.path is not None:
            try:
                self.path.unlink()
            except OSError:
                pass


class RunLock:
    """Hold the lock of a run store: ``with RunLock(store): …`` (see the module docstring)."""

    kind = "run store"
    make_folder = True  # create the store's missing parent folders (a trainer's --store a/b/run.zarr)

    def __init__(self, store, report=None, command: str | None = None, replacing: bool = False):
        self.store = Path(store)
        self.path = lock_path(self.store)
        self.report = report or (lambda line: print(line, file=sys.stderr))
        self.record = _new_record(command)
        if replacing:  # --overwrite: readers of the store (evaluate, predict) are refused meanwhile
            self.record["replacing"] = True
        self._heartbeat = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _try_create(self) -> bool:
        """Create the lock file atomically; return False if it exists."""
        folder = self.path.parent
        if not self.make_folder:
            if not folder.exists():  # nothing is made for an output whose folder is missing (a typo in --out)
                raise InputError(f"cannot write {self.store}: its folder {folder} does not exist; create it first "
                                 "(nothing was written)")
            if not folder.is_dir():
                import errno

                raise InputError(self._unwritable(folder, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))))
        else:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise InputError(self._unwritable(folder, err)) from None
        text = json.dumps(self.record, indent=1)
        tmp = folder / f".{self.path.name}.{self.record['host']}.{os.getpid()}.{self.record['token']}"
        try:
            with open(tmp, "w") as f:
                os.fchmod(f.fileno(), 0o644)  # the lock (this file's hard link): readable by every user, any umask
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            try:  # a full disk: the private file may have been created
                tmp.unlink()
            except OSError:
                pass
            raise InputError(self._unwritable(folder, err)) from None
        try:
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass
            except OSError:  # no hard links here (or a lost NFS reply): decide below
                pass
            if os.stat(tmp).st_nlink == 2:
                return True
            if self.path.exists():
                return False
            try:  # a file system without hard links
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            return True
        finally:
            try:
                tmp.unlink()
            except OSError:
                pass

    def acquire(self) -> None:
        """Take the lock, taking over a stale one with a message; raise :class:`InputError` if it is held."""
        try:
            self._acquire()
        except BaseException:  # a signal just after the lock was created leaves nothing: release removes only ours
            self.release()
            raise

    def _acquire(self) -> None:
        for _ in range(3):
            if self._try_create():
                self._heartbeat = _Heartbeat(self.path)
                self._remove_dead_private_files()
                self._held()
                return
            holder = read_holder(self.store)
            if holder is None:
                continue  # released meanwhile: try again
            if not is_record(holder):  # a user's file of that name, or one we may not read: never removed
                raise InputError(f"cannot lock {self.kind} {self.store}: {self.path} is not a lock record of admm-dask "
                                 "(no JSON with token, host and pid); move or delete that file if it is no lock "
                                 "(nothing was written)")
            if not is_stale(holder):
                raise InputError(self._in_use(holder))
            if self._take_over(holder):
                self.report(f"taking over the stale lock of {self.store} left by {describe(holder)}: "
                            "that process is gone")
        raise InputError(f"could not lock {self.kind} {self.store}: its lock {self.path} keeps changing; "
                         "is another process starting on it?")

    def replaced(self) -> None:
        """Say the store is replaced (``--overwrite``: the new run is in place): rewrite the lock without
        ``replacing``, so evaluate and predict may read the new run meanwhile, as any trainer's run.

        The record is written to a private file and renamed onto the lock (atomic, also on NFS): a reader sees the
        old record or the new one, both with this lock's token.
        """
        if not self.record.pop("replacing", None) or self._heartbeat is None:
            return
        tmp = self.path.parent / f".{self.path.name}.{self.record['host']}.{os.getpid()}.{self.record['token']}"
        try:
            with open(tmp, "w") as f:
                os.fchmod(f.fileno(), 0o644)
                f.write(json.dumps(self.record, indent=1))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError:  # the lock keeps "replacing": readers stay refused until the run ends, nothing worse
            try:
                tmp.unlink()
            except OSError:
                pass

    def _remove_dead_private_files(self) -> list[Path]:
        """Remove the private files (``.<lock name>.<host>.<pid>.<token>``, :meth:`_try_create`) that processes of
        this host killed between writing one and removing it left beside the lock (:func:`remove_dead_private_files`)."""
        return (remove_dead_private_files(self.path.parent, f".{self.path.name}.{self.record['host']}.")
                + remove_dead_lock_leftovers(self.path))

    def _unwritable(self, folder: Path, err: OSError) -> str:
        return f"cannot lock {self.kind} {self.store}: {_why_unwritable(folder, err)}"

    def _in_use(self, holder: dict) -> str:
        return (f"run store {self.store} is in use by {describe(holder)}; wait for it to finish or stop it "
                f"(its lock is {self.path})")

    def _held(self) -> None:
        """Called once the lock is taken (a subclass checks more here, and releases and raises to refuse)."""

    def _take_over(self, holder: dict) -> bool:
        """Remove the stale lock ``holder`` unless another process replaced it meanwhile."""
        # host, pid and token of this taker: left by a kill before the unlink below, it is swept by the next holder
        # once this process is gone (remove_dead_lock_leftovers)
        aside = self.path.with_name(f"{self.path.name}.stale-{_host()}.{os.getpid()}.{self.record['token']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = {}
        if not isinstance(moved, dict):
            moved = {}
        if not holder.get("unreadable") and moved.get("token") != holder.get("token"):
            try:  # a fresh lock was moved: put it back unless yet another one appeared
                os.link(aside, self.path)
            except OSError:
                pass
        try:
            aside.unlink()
        except OSError:
            pass
        return True

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        try:
            record = json.loads(self.path.read_text())
            if isinstance(record, dict) and record.get("token") == self.record["token"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass


class DataWriteLock(RunLock):
    """Hold the writer's lock of a data store (``<DATA>.lock``), refused while another writer or a live reader has it.

    :class:`storage.data.DataWriter` holds it from its first write until the new store is in place.
    """

    kind = "data store"

    def _in_use(self, holder: dict) -> str:
        return _being_written(self.store, holder)

    def _held(self) -> None:
        try:
            check_no_readers(self.store, "data store", "nothing was written")
        except InputError:
            self.release()
            raise


class OutputLock(RunLock):
    """Hold the writer's lock of a command's output (``<OUT>.lock``): a predictions store, a report folder.

    No two commands write one output at once: a second ``predict --out P`` (or any other writer of ``P``: they all
    lock ``<P>.lock``) is refused in one line while the first holds it. Nothing reads these outputs while they are
    written (the commands build them aside and rename them into place), so there are no reader records to check.
    The output's folder must exist: a missing one is refused in one line, and nothing is created.
    """

    make_folder = False

    def __init__(self, store, kind: str, report=None, command: str | None = None):
        super().__init__(store, report=report, command=command)
        self.kind = kind

    def _unwritable(self, folder: Path, err: OSError) -> str:
        return f"cannot write {self.store}: {_why_unwritable(folder, err)}"

    def _in_use(self, holder: dict) -> str:
        return (f"{self.kind} {self.store} is being written by {describe(holder)}; wait for it to finish, or stop "
                f"it (its lock is {self.path}; nothing was written)")
