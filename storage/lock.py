"""The run-store lock: one writer per run store, also across the nodes of a cluster.

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
"""
from __future__ import annotations

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


def lock_path(store) -> Path:
    """Return the lock file of the run store ``store``: ``<store>.lock`` beside it."""
    store = Path(store)
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
    path = lock_path(store)
    try:
        text = path.read_text()
        mtime = path.stat().st_mtime
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return {"unreadable": True, "age": 0.0}
    try:
        holder = json.loads(text)
        if not isinstance(holder, dict):
            raise ValueError
    except ValueError:
        holder = {"unreadable": True}
    holder["age"] = max(0.0, _fs_now(path.parent) - mtime)
    return holder


def _fs_now(folder: Path) -> float:
    """Return the file server's current time: the mtime of a file just written in ``folder``."""
    probe = folder / f".admm-dask-clock-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        probe.write_bytes(b"")
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


def describe(holder: dict) -> str:
    """Return who holds a lock, for messages: command, pid, host and since when."""
    if holder.get("unreadable"):
        return "a process whose lock record cannot be read"
    return (f"{holder.get('command', 'a trainer')} (pid {holder.get('pid')} on host {holder.get('host')}, "
            f"since {holder.get('started')})")


def check_unlocked(store) -> None:
    """Raise :class:`InputError` if a live process holds the lock of run store ``store``."""
    holder = read_holder(store)
    if holder is not None and not is_stale(holder):
        raise InputError(f"run store {store} is in use by {describe(holder)}; wait for it to finish or stop it "
                         f"(its lock is {lock_path(store)})")


class RunLock:
    """Hold the lock of a run store: ``with RunLock(store): …`` (see the module docstring)."""

    def __init__(self, store, report=None, command: str | None = None):
        self.store = Path(store)
        self.path = lock_path(self.store)
        self.report = report or (lambda line: print(line, file=sys.stderr))
        self.record = {"host": socket.gethostname(), "pid": os.getpid(),
                       "process_started": _process_start(os.getpid()),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "command": command or _command(),
                       "token": secrets.token_hex(8)}
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _try_create(self) -> bool:
        """Create the lock file atomically; return False if it exists."""
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot lock run store {self.store}: its folder {folder} is not a writable "
                             f"directory ({err.strerror})") from None
        text = json.dumps(self.record, indent=1)
        tmp = folder / f".{self.path.name}.{self.record['host']}.{os.getpid()}.{self.record['token']}"
        try:
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            raise InputError(f"cannot lock run store {self.store}: its folder {folder} is not a writable "
                             f"directory ({err.strerror})") from None
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
        for _ in range(3):
            if self._try_create():
                self._start_heartbeat()
                return
            holder = read_holder(self.store)
            if holder is None:
                continue  # released meanwhile: try again
            if not is_stale(holder):
                raise InputError(f"run store {self.store} is in use by {describe(holder)}; wait for it to finish "
                                 f"or stop it (its lock is {self.path})")
            if self._take_over(holder):
                self.report(f"taking over the stale lock of {self.store} left by {describe(holder)}: "
                            "that process is gone")
        raise InputError(f"could not lock run store {self.store}: its lock {self.path} keeps changing; "
                         "is another trainer starting on it?")

    def _take_over(self, holder: dict) -> bool:
        """Remove the stale lock ``holder`` unless another process replaced it meanwhile."""
        aside = self.path.with_name(f"{self.path.name}.stale-{self.record['token']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
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

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(HEARTBEAT):
                try:
                    os.utime(self.path)
                except OSError:
                    pass
        self._stop.clear()
        self._thread = threading.Thread(target=beat, name="admm-dask-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            if json.loads(self.path.read_text()).get("token") == self.record["token"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass
