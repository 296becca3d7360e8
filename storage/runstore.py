"""The on-disk format of a *run store*: one training run as a Zarr v3 group.

::

    RUN.zarr/
      zarr.json            group attrs: format "admm-dask-run", config (with the task,
                           classification or regression), data summary, state
                           widths, chunk_rows, solver; solver_choice: how
                           --solver auto chose the solver (rows per shard, rule)
      manifest.json        human-readable commit record: committed iteration,
                           state slot, per-iteration history (the source of truth),
                           SHA-256 of every checkpoint array and of itself
      manifest.previous.json  the commit before it: the fallback when the last is damaged
      writing.json         the iteration whose state slot is being written (solvers
                           with per-sample state: the previous commit's slot is gone)
      model/               x_mean, x_scale (d,); classes (K,), or for regression the
                           target scaling y_mean, y_scale (1,)
      state/slot0/, slot1/ per-sample state, e.g. z1 (n, n_1) … lam (n, n_L), float32,
                           chunks (chunk_rows, width), uncompressed, crc32c-checked;
                           fill value NaN, so a missing chunk never reads as state
      shards/slot0/, slot1/ per-shard state of a sharded solver (consensus: v, m, s, t; the slot2/ of session-5 stores is unused),
                           (n_shards, width) float64, one chunk per shard, same checks
      checkpoint/<k>/      (and <k−1>/) one float64 array ``packed`` holding, in the order
                           its ``layout`` attribute lists them ([name, shape] pairs):
                           W1…WL (the weights after iteration k), carry/<name> (what
                           the solver's next iteration needs, e.g. ADMM's W^{k+1}
                           solved ahead and the input Gram), best/W1…WL (with early
                           stopping: the weights of the best held-out iteration,
                           which are the model). One array, not one per name: a
                           commit writes one array's files, in Zarr v3's format but
                           not through Zarr, synced before the manifest (format
                           version 2 stored one array per name; it is still read)
      metrics/             1-D arrays along "iteration", one per number the
                           history records (seconds, train_accuracy, test_accuracy,
                           residual for the ADMM solvers, …; a regression has
                           train_r2, test_r2, validation_r2 in place of the
                           accuracies; NaN where a record lacks it), for
                           ``xarray.open_zarr(RUN.zarr, group="metrics")``; rewritten at
                           most every METRICS_SECONDS during a run and when it ends
                           (manifest.json has every committed iteration at once)

Iteration k reads state slot (k−1) mod 2 and writes slot k mod 2, so the
committed slot is never written; the commit writes ``checkpoint/<k>`` (crc32c per
chunk), keeps the manifest it follows as ``manifest.previous.json`` (a hard link
to that manifest's file where it can, else a copy), atomically replaces
``manifest.json`` and deletes checkpoints older than the previous one.
Only ``storage`` knows these paths.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.codecs import BytesCodec, Crc32cCodec

from solvers.errors import InputError
from storage.lock import RunLock, check_no_readers, check_unlocked
from storage.paths import (check_target, clean_stale_partials, discard, partial_path,
                           remove_stale_chunk_partials, rewrite_file, swap_in)

FORMAT = "admm-dask-run"
FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)  # 2: one checkpoint array per name (read the same; new commits are packed)
PACKED = "packed"
METRICS_SECONDS = 2.0  # while a run commits, metrics/ is rewritten at most this often (and at its end)
STATE_DTYPE = np.dtype("float32")
MANIFEST = "manifest.json"
_WARNED: set = set()  # (store, manifest mtime) whose fallback warning this process printed
PREVIOUS = "manifest.previous.json"  # the commit before the last: the fallback when the last is damaged
WRITING = "writing.json"             # the iteration whose state slot is being written
MODEL_ARRAYS = ("x_mean", "x_scale", "classes", "y_mean", "y_scale")
REPLACED = ".replaced-"  # <RUN>.replaced-<host>.<pid>.<random>: the run an --overwrite replaces, until the new one's
                         # first commit (RunStore.create); put back if the new run ends before it (recover_replaced)


def metric_names(history: list) -> list:
    """Return the names of the numeric values of the ``history`` records but ``iteration``, in order of appearance."""
    names = {}
    for record in history:
        names.update((k, None) for k, v in record.items()
                     if k != "iteration" and isinstance(v, (int, float, np.number)) and not isinstance(v, str))
    return list(names)


def metric_arrays(history: list) -> dict:
    """Return ``metrics/``' arrays of ``history``: ``iteration`` (int64), then each :func:`metric_names` (float64, NaN where absent)."""
    n = len(history)
    arrays = {"iteration": np.array([h["iteration"] for h in history], np.int64)}
    arrays.update((name, np.array([h.get(name, np.nan) for h in history], np.float64).reshape(n))
                  for name in metric_names(history))
    return arrays


def state_path(slot: int, name: str) -> str:
    """Return the array path of one state array inside the run store."""
    return f"state/slot{slot}/{name}"


def shard_state_path(slot: int, name: str) -> str:
    """Return the array path of one per-shard state array inside the run store."""
    return f"shards/slot{slot}/{name}"


def slot_of(iteration: int) -> int:
    """Return the state slot holding iteration k: k mod 2."""
    return iteration % 2


_TEMPORARY = re.compile(r"^\.(manifest\.json|manifest\.previous\.json|writing\.json)\.tmp-([0-9]+)$")
"""``.<name>.tmp-<pid>``: a manifest, the previous manifest's hard link or ``writing.json`` on its way into place
(:func:`_write_text_atomic`, :func:`_keep_previous`); a process killed before its rename leaves it."""


def remove_stale_temporaries(path) -> list[str]:
    """Remove the ``.<name>.tmp-<pid>`` files (:data:`_TEMPORARY`) other processes left in the run store ``path``;
    return their names.

    Call it only holding the run's lock (:mod:`storage.lock`), as a trainer does: only a trainer writes these files
    and it holds that lock, so no process that could still rename one is alive. Removed: files of exactly these
    names (only :func:`_write_text_atomic` and :func:`_keep_previous` make them, only in a run store's top folder),
    of a process id other than this one's (this process's own may be a commit under way in its commit thread).
    Left: every other name (a user's note, ``.manifest.json.tmp-x``, folders), and anything outside ``path``. Such a
    file was never the store's content (the renames make manifests; a kill before one leaves the old manifest in
    place), so removing it changes nothing a command reads: it was left for good, since a process removes only
    its own process id's (:func:`_keep_previous`).
    """
    removed = []
    try:
        names = os.listdir(path)
    except OSError:
        return removed
    for name in names:
        match = _TEMPORARY.match(name)
        if match is None or int(match.group(2)) == os.getpid():
            continue
        file = Path(path) / name
        try:
            if not file.is_file() or file.is_symlink():
                continue
            file.unlink()
            removed.append(name)
        except OSError:
            pass
    return removed


def _write_json_atomic(path: Path, obj) -> None:
    _write_text_atomic(path, json.dumps(obj, indent=1, default=_json_default))


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _keep_previous(path: Path, manifest: dict, linked: bool) -> None:
    """Make ``manifest`` the content of ``manifest.previous.json`` in the run store ``path``, atomically.

    ``linked``: ``manifest`` is manifest.json's content (the commit resolved from it), whose file was written and
    synced whole by its own commit and is never written in place, only replaced: a hard link to that file, renamed
    over the previous one, saves rewriting and syncing its bytes (one of a commit's two fsyncs, ~5-10 ms of its wall;
    t10prof_s15.md). Elsewhere (a fallback resolved from the previous manifest; a file system without hard links) the
    manifest is written out as before.
    """
    target = path / PREVIOUS
    if linked:
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            try:
                os.unlink(tmp)  # a leftover of this process id's killed commit
            except FileNotFoundError:
                pass
            os.link(path / MANIFEST, tmp)
            os.replace(tmp, target)
            # previous already a link of manifest.json's file (a commit killed between its two renames): POSIX
            # rename of one link over another of the same file does nothing and leaves tmp, so remove it here
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            return
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    _write_json_atomic(target, manifest)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


@dataclass
class Checkpoint:
    """What a committed iteration k holds besides the state slot."""

    iteration: int
    weights: list                                 # W^k
    carry: dict = field(default_factory=dict)     # name -> array, the solver's client state
    best: dict | None = None                      # early stopping: iteration, score, patience
    best_weights: list | None = None              # the weights of best["best_iteration"]


class RunStore:
    """A training run on disk: create, open, commit iterations, read the model back."""

    def __init__(self, path: Path, attrs: dict):
        self.path = Path(path)
        self.attrs = attrs
        self._unwritten_metrics = None  # the history of a commit whose metrics/ are not written yet
        self._metrics_time = -float("inf")
        self._metrics_swept = False  # the same for metrics/ (the first write of metrics/)
        self._partials_swept = False  # the state chunk files killed writers left (begin_iteration's first call)
        self._temporaries_swept = False  # the .manifest*.tmp-<pid> files killed trainers left (remove_stale_temporaries)
        self.replaced: Path | None = None  # the run this one replaced (overwrite), kept aside until the first commit
        self.on_replaced_gone = None  # called once that run is deleted (the trainer's lock stops refusing readers)
        self._background_discard = False

    # -- creation and opening -----------------------------------------------------------
    @classmethod
    def create(cls, path, *, config: dict, data: dict, state_widths: dict, n_samples: int,
               chunk_rows: int, classes, x_mean, x_scale, overwrite: bool = False,
               test_data: str | None = None, validation: dict | None = None, y_mean=None, y_scale=None,
               report=None, shard_widths: dict | None = None, n_shards: int = 0,
               background_discard: bool = False, solver_choice: dict | None = None) -> "RunStore":
        """Create an empty run store with allocated state slots (refuses an existing path).

        A classification run passes ``classes``; a regression run ``classes=None``
        and its target scaling ``y_mean``, ``y_scale``. A sharded solver passes
        its per-shard state widths and the number of shards. ``validation``
        records the held-out rows (``solvers.validation.RowSplit.record``; None: none).
        ``overwrite``: an existing run store is renamed aside as ``<RUN>.replaced-<host>.<pid>.<random>``
        (:attr:`replaced`) and kept, bytes unchanged, until this run's first commit is written (:meth:`commit`
        deletes it then); a run that ends before that puts it back (:meth:`restore_replaced`), and after a kill -9
        the next trainer does (:func:`recover_replaced`). So a new run that fails in its first pass (bad data, a
        full disk, Ctrl-C) loses nothing; the cost is the old run's disk space until the first commit.
        ``background_discard``: that deletion runs in a thread; the caller waits for it with
        :func:`storage.paths.join_discards`. ``solver_choice``: how ``--solver auto``
        chose the run's solver (kept in the attrs; a resume reads the chosen solver from ``config``).
        """
        path = Path(path)
        check_creatable(path, overwrite)
        if chunk_rows < 1:
            raise InputError(f"chunk rows must be at least 1, got {chunk_rows}")
        attrs = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "config": config, "data": data,
            "state_widths": dict(state_widths), "n_samples": int(n_samples),
            "chunk_rows": int(chunk_rows), "test_data": test_data,
            "validation": validation, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if shard_widths:
            attrs.update(shard_widths=dict(shard_widths), n_shards=int(n_shards))
        if solver_choice:
            attrs["solver_choice"] = dict(solver_choice)
        # built next to its target and renamed into place: a crash leaves no half store
        clean_stale_partials(path, report=report)
        partial = partial_path(path)
        try:
            try:
                root = zarr.open_group(partial, mode="w-", zarr_format=3)
            except OSError as err:
                raise InputError(f"cannot create run store {path}: {err.strerror} ({err.filename or path.parent})") from None
            model = {"x_mean": np.asarray(x_mean, np.float64), "x_scale": np.asarray(x_scale, np.float64)}
            if classes is not None:
                model["classes"] = np.asarray(classes)
            if y_mean is not None:
                model["y_mean"] = np.atleast_1d(np.asarray(y_mean, np.float64))
                model["y_scale"] = np.atleast_1d(np.asarray(y_scale, np.float64))
            specs = [(f"model/{name}", {"data": data}) for name, data in model.items()]
            specs += [_state_array_spec(slot, name, width, n_samples, chunk_rows)
                      for slot in (0, 1) for name, width in state_widths.items()]
            specs += [_shard_array_spec(slot, name, width, n_shards)
                      for slot in (0, 1) for name, width in (shard_widths or {}).items()]
            _create_many(root, partial, specs)  # together: 11 arrays of a consensus run ~75-145 ms one by one (load 10)
            root.update_attributes(attrs)  # one write of zarr.json (attrs.update writes it once a key)
            root.create_group("checkpoint")
            check_creatable(path, overwrite)
            run = cls(path, attrs)
            run._background_discard = background_discard
            run.replaced = swap_in(partial, path, keep_old=REPLACED)  # overwrite: the old run goes at the first commit
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
        return run

    def restore_replaced(self, report=None) -> bool:
        """Put back the run store this one replaced (:attr:`replaced`), while it holds no commit; return whether it did.

        The new store is renamed aside (``<RUN>.partial-…``) and deleted; the old one is renamed back, bytes
        unchanged. A kill between the two renames leaves the old one at its ``.replaced-`` name, which the next
        trainer puts back (:func:`recover_replaced`); a failed rename is reported in one line naming where it is.
        """
        old = self.replaced
        if old is None:
            return False
        aside = partial_path(self.path)
        try:
            os.rename(self.path, aside)  # the new run (no commit): its name is that of a killed write's leftovers
            os.rename(old, self.path)
        except OSError as err:
            if report is not None:
                report(f"note: could not put the replaced run back in {self.path} ({err.strerror}); it is kept "
                       f"at {old}: rename it to {self.path.name} to keep it (the next train on {self.path} does)")
            return False
        self.replaced = None
        shutil.rmtree(aside, ignore_errors=True)
        return True

    def _drop_replaced(self) -> None:
        """Delete the run store this one replaced: called once this run's first commit is written."""
        old, self.replaced = self.replaced, None
        if old is None:
            return
        gone = old.with_name(old.name.replace(REPLACED, ".old-", 1))  # being deleted: a kill leaves an .old- folder,
        try:                                                           # which the next write to this store removes
            os.rename(old, gone)
        except OSError:
            gone = old
        if self._background_discard:
            discard(gone)
        else:
            shutil.rmtree(gone, ignore_errors=True)
        if self.on_replaced_gone is not None:
            self.on_replaced_gone()

    @classmethod
    def open(cls, path) -> "RunStore":
        """Open an existing run store, with a clear error if the path is not one."""
        path = Path(path)
        if not path.exists():
            raise InputError(f"run store {path} does not exist")
        if not is_run_store(path):
            if (path / "manifest.json").is_file() or (path / "manifest.previous.json").is_file():
                raise InputError(f"run store {path} is damaged: its zarr.json is missing or is not the run store's "
                                 "group metadata (manifest.json is there); restore it from a copy, or start a new "
                                 "run in another store")
            raise InputError(f"{path} is not an admm-dask run store (no '{FORMAT}' format attribute)")
        attrs = zarr.open_group(path, mode="r").attrs.asdict()
        if attrs.get("format_version") not in READABLE_VERSIONS:
            raise InputError(f"{path} has run-store format version {attrs.get('format_version')}, "
                             f"this version reads {' and '.join(map(str, READABLE_VERSIONS))}")
        return cls(path, attrs)

    # -- layout accessors -----------------------------------------------------------------
    @property
    def chunk_rows(self) -> int:
        return int(self.attrs["chunk_rows"])

    @property
    def n_samples(self) -> int:
        return int(self.attrs["n_samples"])

    @property
    def state_widths(self) -> dict:
        return dict(self.attrs["state_widths"])

    @property
    def task(self) -> str:
        """Return the run's task: ``"classification"`` (also for runs stored before regression existed) or ``"regression"``."""
        return self.attrs["config"].get("task", "classification")

    def model_arrays(self) -> dict:
        """Return x_mean, x_scale and classes (a regression: y_mean, y_scale instead of classes)."""
        name = "model"
        try:
            g = zarr.open_group(self.path, mode="r")["model"]
            out = {}
            for name in MODEL_ARRAYS:
                if name in g:
                    out[name] = g[name][...]
            return out
        except Exception as exc:  # noqa: BLE001 -- a damaged chunk or metadata (zstd, JSON, a missing file): one line
            where = "model" if name == "model" else f"model/{name}"
            raise InputError(f"run store {self.path} is damaged: its {where} (the inputs' scaling and the classes) "
                             f"cannot be read ({type(exc).__name__}: {exc}); restore the store from a copy, or start "
                             "a new run in another store") from None

    def update_config(self, config: dict) -> None:
        """Record changed settings of a resumed run (those ``solvers.config.RESUMABLE`` lets ``--resume`` change)."""
        zarr.open_group(self.path, mode="r+").attrs["config"] = config
        self.attrs["config"] = config

    def release_uncommitted_slot(self) -> None:
        """Delete the chunks of the slot resume does not read, halving a finished run's disk use."""
        k = self.committed_iteration()
        if k is None:
            return
        self.begin_iteration(k + 1)  # the previous commit's slot is emptied: it can no longer stand in
        root = zarr.open_group(self.path, mode="r+")
        for name, width in self.state_widths.items():
            _create_state_array(root, slot_of(k + 1), name, width, self.n_samples, self.chunk_rows,
                                overwrite=True)
        for name, width in (self.attrs.get("shard_widths") or {}).items():
            _create_shard_array(root, slot_of(k + 1), name, width, int(self.attrs["n_shards"]), overwrite=True)

    @property
    def keeps_slot_state(self) -> bool:
        """Return True when the run keeps state in the two slots: per-sample or per-shard (consensus)."""
        return bool(self.state_widths or self.attrs.get("shard_widths"))

    def disk_bytes(self) -> dict:
        """Return the bytes on disk of each state slot and of everything else."""
        sizes = {"slot0": 0, "slot1": 0, "other": 0}
        for f in self.path.rglob("*"):
            if f.is_file():
                part = f.relative_to(self.path).parts
                key = part[1] if part[0] in ("state", "shards") and len(part) > 2 and part[1] in sizes else "other"
                sizes[key] += f.stat().st_size
        return sizes

    # -- commit protocol --------------------------------------------------------------------
    def manifest(self) -> dict | None:
        """Return the committed manifest (checked; after a damaged last commit, the intact previous one), or None.

        None means iteration 0 was never committed.
        """
        resolved = self._resolve()
        return None if resolved is None else resolved[0]

    def committed_iteration(self) -> int | None:
        m = self.manifest()
        return None if m is None else int(m["iteration"])

    def begin_iteration(self, iteration: int) -> None:
        """Record, before any chunk of state slot ``iteration`` mod 2 is written, that iteration ``iteration`` started.

        The previous commit can stand in for a damaged last one only while its
        state slot is untouched; solvers without per-sample state need no record.
        """
        self._sweep_temporaries()
        if self.keeps_slot_state:
            _write_json_atomic(self.path / WRITING, {"iteration": int(iteration)})
            if not self._partials_swept:  # before this process writes any chunk: leftovers of a killed run's writes
                for folder in ("state", "shards"):  # per-sample and per-shard (consensus) state chunks
                    remove_stale_chunk_partials(self.path / folder)
                self._partials_swept = True

    def _sweep_temporaries(self) -> None:
        """Once per process, before its first write of the commit record: :func:`remove_stale_temporaries` (the
        caller, a trainer, holds the run lock)."""
        if not self._temporaries_swept:
            self._temporaries_swept = True
            remove_stale_temporaries(self.path)

    def commit(self, checkpoint: Checkpoint, history: list, target_iterations: int, stopped: bool = False) -> None:
        """Record iteration k: write its weights with checksums, keep the last manifest, atomically replace it."""
        k = checkpoint.iteration
        self._sweep_temporaries()
        group = f"checkpoint/{k}"
        _remove_folder(self.path / "checkpoint" / str(k))  # leftover of an uncommitted attempt at k (_remove_folder)
        arrays = {f"W{l}": W for l, W in enumerate(checkpoint.weights, start=1)}
        arrays.update({f"carry/{name}": value for name, value in checkpoint.carry.items()})
        arrays.update({f"best/W{l}": W for l, W in enumerate(checkpoint.best_weights or [], start=1)})
        arrays = {name: np.asarray(value, np.float64) for name, value in arrays.items()}
        sums = _checksums_beside(arrays, lambda: _write_packed(self.path, group, arrays))
        try:
            last = self._resolve()  # the intact commit this one follows (after a fallback: the one resumed from)
        except InputError:
            last = None
        previous = None if last is None or int(last[0]["iteration"]) == k else int(last[0]["iteration"])
        if previous is not None:  # the manifest it follows: manifest.json's own file, when that is the one resolved
            _keep_previous(self.path, last[0], linked=getattr(self, "_resolved_from", None) == MANIFEST)
        manifest = {
            "format": FORMAT, "iteration": k, "slot": slot_of(k), "target_iterations": target_iterations,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "early_stopping": checkpoint.best,
            "stopped_early": bool(stopped), "history": history, "checksums": sums,
        }
        manifest["manifest_sha256"] = _manifest_sha256(manifest)
        _write_json_atomic(self.path / MANIFEST, manifest)
        if self.replaced is not None:  # the first commit is on disk (checkpoint files and folders synced by
            # _write_packed, the manifest by _write_json_atomic; this syncs its rename): the run it replaced may go
            _fsync_folder(self.path)
            self._drop_replaced()
        keep = {str(k)} | ({str(previous)} if previous is not None else set())
        for stale in [p for p in (self.path / "checkpoint").iterdir() if p.is_dir() and p.name not in keep]:
            _remove_folder(stale)  # older commits, or attempts a crash left behind (Zarr groups or not)
        self._unwritten_metrics = list(history)
        if stopped or k >= target_iterations or time.monotonic() - self._metrics_time >= METRICS_SECONDS:
            self.write_metrics()
        self._resolved_from = MANIFEST  # what _resolve returns next is this commit's manifest.json
        self._resolved = (json.loads(json.dumps(manifest, default=_json_default)),
                          Checkpoint(k, [np.asarray(W, np.float64) for W in checkpoint.weights],
                                     {n: np.asarray(v, np.float64) for n, v in checkpoint.carry.items()},
                                     checkpoint.best, checkpoint.best_weights))

    def write_metrics(self, root=None) -> None:
        """Write ``metrics/`` from the history of the last commit, if a commit since the last write has not.

        :meth:`commit` writes them at most every :data:`METRICS_SECONDS` and at the
        last iteration; the trainer calls this when it ends for any other reason.
        """
        history, self._unwritten_metrics = self._unwritten_metrics, None
        if history is not None:
            self._write_metrics(root, history)
            self._metrics_time = time.monotonic()

    def _write_metrics(self, root, history: list) -> None:
        """Write each ``metrics/`` array: an existing one of one chunk rewritten in place and a new one of at most
        :data:`ONE_CHUNK_MAX` values created, both as Zarr would (:func:`_rewrite_one_chunk`); others created through
        Zarr (``root``: the store's group, opened here if None and needed). A run's first commit created its ~15 arrays
        through Zarr in ~55 ms of a background thread that shares the GIL with the client (idle17_s17.md)."""
        arrays = metric_arrays(history)
        if not self._metrics_swept:  # a run killed while rewriting a file of metrics/ left its temporary file
            remove_stale_chunk_partials(self.path / "metrics", old_small_files=True)
            self._metrics_swept = True
        folder = self.path / "metrics"
        if not (folder / "zarr.json").exists():  # the group, as Zarr makes a missing parent group of an array
            _write_small_file(folder / "zarr.json", _GROUP_JSON)
        rest = {f"metrics/{name}": values for name, values in arrays.items()
                if not _rewrite_one_chunk(folder / name, values, create=True)}
        if rest:
            _create_arrays(root if root is not None else zarr.open_group(self.path, mode="r+"), self.path, rest,
                           dimension_names=("iteration",), overwrite=True, compressors=[Crc32cCodec()])

    def load_checkpoint(self) -> Checkpoint:
        """Return the weights and solver state of the committed iteration (checked; see :meth:`manifest`)."""
        resolved = self._resolve()
        if resolved is None:
            note = replaced_note(self.path)
            raise InputError(f"{self.path} has no committed iteration yet"
                             + (note if note else "; start a new run with --overwrite"))
        return resolved[1]

    def _resolve(self, attempts: int = 5):
        """Return (manifest, checkpoint) of the last intact commit, or None before the first one.

        A commit is intact when manifest.json matches its own checksum and every
        checkpoint array its checksum. A damaged last commit falls back, with a
        warning, to the previous one when that is intact and its state slot was
        not written since; otherwise one :class:`InputError` says what is damaged.
        A commit by a running trainer while this reads is waited out (re-read).
        No manifest at all is "never committed" only while ``checkpoint/`` holds at
        most iteration 0 (the first commit writes it before its manifest); later
        iterations without any manifest are damage, reported, nothing deleted.
        """
        if getattr(self, "_resolved", None) is not None:
            return self._resolved
        for attempt in range(attempts):
            try:
                text = (self.path / MANIFEST).read_text()
            except FileNotFoundError:  # commits replace it atomically, never delete it: gone after a commit is damage
                later = checkpoints_after_0(self.path)
                if not (self.path / PREVIOUS).exists() and not later:
                    return None  # iteration 0 was never committed
                if attempt == 0:  # read it once more before calling it damage
                    time.sleep(0.2)
                    continue
                problem = f"{MANIFEST} is missing"
                if not (self.path / PREVIOUS).exists():
                    problem += (f" and so is {PREVIOUS}, though checkpoint/ holds iteration"
                                f"{'s' if len(later) > 1 else ''} {', '.join(map(str, later))}")
                break
            try:
                manifest = _checked_manifest(text)
                self._resolved = (manifest, self._read_checkpoint(manifest))
                self._resolved_from = MANIFEST
                return self._resolved
            except InputError as exc:
                problem = str(exc)
            try:
                changed = (self.path / MANIFEST).read_text() != text
            except FileNotFoundError:
                changed = True
            if changed:  # a trainer committed meanwhile: read the new commit
                time.sleep(0.2 * (attempt + 1))
                continue
            break
        else:
            raise InputError(f"run store {self.path} kept changing while it was read (a trainer is committing); "
                             "try again")
        fallback, why_not = self._previous_commit()
        if fallback is None:
            raise InputError(f"run store {self.path}: the last commit is damaged ({problem}) and {why_not}; the "
                             "run cannot be resumed or used: start a new run with --overwrite")
        line = (f"warning: run store {self.path}: the last commit is damaged ({problem}); using the previous "
                f"commit, iteration {fallback[0]['iteration']}, which is intact")
        key = (str(self.path.resolve()), self._manifest_mtime())
        if key not in _WARNED:  # once per damaged commit: predict and evaluate open the store before and after the
            _WARNED.add(key)    # cluster starts; a store damaged again later in this process warns again
            print(line, file=sys.stderr)
        self._resolved, self._resolved_from = fallback, PREVIOUS
        return fallback

    def _manifest_mtime(self) -> int | None:
        """Return the mtime (ns) of manifest.json, else of the previous manifest, else None."""
        for name in (MANIFEST, PREVIOUS):
            try:
                return (self.path / name).stat().st_mtime_ns
            except OSError:
                pass
        return None

    def _previous_commit(self):
        """Return ((manifest, checkpoint), None) of the intact previous commit, or (None, why it cannot be used)."""
        try:
            manifest = _checked_manifest((self.path / PREVIOUS).read_text())
        except FileNotFoundError:
            return None, "there is no earlier commit to fall back to"
        except InputError as exc:
            return None, f"the previous commit is damaged too ({exc})"
        k = int(manifest["iteration"])
        if self.keeps_slot_state:
            try:
                started = int(json.loads((self.path / WRITING).read_text())["iteration"])
            except (OSError, ValueError, KeyError, TypeError):
                started = None
            if started is None or started > k + 1:
                return None, (f"the state of the previous commit (iteration {k}) has been overwritten since "
                              "(only solvers without per-sample or per-shard state, such as gauss-newton, can always fall back)")
        try:
            return (manifest, self._read_checkpoint(manifest)), None
        except InputError as exc:
            return None, f"the previous commit is damaged too ({exc})"

    def _read_checkpoint(self, manifest: dict) -> Checkpoint:
        """Read ``checkpoint/<k>`` of a manifest, checking every array against the manifest's checksums."""
        k = int(manifest["iteration"])
        sums = manifest.get("checksums")  # None: a store committed before checksums existed
        try:
            g = zarr.open_group(self.path, mode="r")[f"checkpoint/{k}"]
            if PACKED in g.array_keys():
                arrays = _read_packed(g[PACKED])
            else:  # format version 2: one array per name
                names = sorted(g.array_keys()) + [f"{sub}/{n}" for sub in ("carry", "best") if sub in g
                                                   for n in sorted(g[sub].array_keys())]
                arrays = {name: g[name][...] for name in names}
        except KeyError as exc:
            raise InputError(f"checkpoint {k} is incomplete: {exc} is missing") from None
        except Exception as exc:  # a chunk failing its crc32c, unreadable metadata
            raise InputError(f"checkpoint {k} cannot be read: {type(exc).__name__}: {exc}") from None
        if sums is not None:
            if set(sums) != set(arrays):
                missing = sorted(set(sums) ^ set(arrays))
                raise InputError(f"checkpoint {k} does not hold the arrays its manifest lists ({', '.join(missing)})")
            for name, value in arrays.items():
                if _array_sha256(value) != sums[name]:
                    raise InputError(f"checkpoint {k}: array {name} fails its checksum")
        ws = [arrays[f"W{l}"] for l in range(1, 1 + sum(1 for n in arrays if n[:1] == "W" and n[1:].isdigit()))]
        carry = {n.split("/", 1)[1]: v for n, v in arrays.items() if n.startswith("carry/")}
        nbest = sum(1 for n in arrays if n.startswith("best/"))
        best = [arrays[f"best/W{l}"] for l in range(1, nbest + 1)] if nbest else None
        return Checkpoint(k, ws, carry, manifest.get("early_stopping"), best)

    def model_iteration(self) -> int | None:
        """Return the iteration the model comes from: the best held-out one with early stopping, else the last."""
        m = self.manifest()
        if m is None:
            return None
        best = (m.get("early_stopping") or {}).get("best_iteration")
        return int(m["iteration"]) if best is None else int(best)


def _remove_folder(folder: Path) -> None:
    """Delete ``folder`` (a checkpoint's) and all in it, if it exists: by path, not as a Zarr group.

    Zarr writes a new array's ``zarr.json`` before those of its missing parent groups, so a kill -9 inside a
    commit can leave ``checkpoint/<k>/packed`` without ``checkpoint/<k>/zarr.json``: no group to Zarr (``del
    root[...]`` never saw it), yet an array it refuses to create again. The resumed run's commit of k then
    failed with ContainsArrayError (benchmarks/resume_fault_inject.py, results/resume14_s14.md).
    """
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass


def _write_packed(path, group: str, arrays: dict) -> None:
    """Write float64 ``arrays`` ({name: array}) as one array ``<group>/packed`` (crc32c) with their layout, in the
    run store at ``path``.

    The files are those Zarr's ``create_array`` writes for it (uncompressed bytes and their crc32c, one chunk written
    even when it holds only the fill value; missing parent groups' ``zarr.json``; :func:`_packed_files`), written
    here directly: through Zarr the commit's wall was 10-60 ms on top of its own 2-4 ms of CPU (its event-loop
    thread, one file at a time, each written aside and renamed), and ~240 ms at a run's first commit
    (idle16_s16.md, idle17_s17.md). No rename: the folder is new (the commit removed any killed attempt's first),
    and nothing reads it before the manifest that names it is written after it.

    Durable before it returns: each file's data is synced (``fdatasync``) and so is every folder a file or folder was
    created in, up to the run store's own folder, so the fsynced manifest written after it never names a checkpoint
    that a power loss can leave empty or short (with ``--overwrite`` the replaced run is deleted right after the first
    commit). Zarr never synced these files (session 16's commit path).
    """
    folders = set()
    for rel, parts in _packed_files(path, group, arrays):
        target = os.path.join(path, rel)
        folder = os.path.dirname(target)
        _make_folders(folder, folders)
        with open(target, "wb") as f:
            for part in parts:
                f.write(part)  # contiguous buffers: a large one is written straight through
            f.flush()
            _sync_data(f.fileno())
        folders.add(folder)  # its new entry
    for folder in sorted(folders, key=len, reverse=True):  # the deepest first: each entry is durable before its parent's
        _fsync_folder(Path(folder))


def _sync_data(fd: int) -> None:
    """Sync a file's data and the metadata needed to read it (its size): ``fdatasync``, or ``fsync`` where there is
    none (macOS)."""
    getattr(os, "fdatasync", os.fsync)(fd)


def _make_folders(folder: str, made: set) -> None:
    """``os.makedirs(folder, exist_ok=True)``, adding to ``made`` the parent of each folder it creates (whose new
    entry :func:`_write_packed` syncs)."""
    missing = []
    while not os.path.isdir(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    for new in reversed(missing):
        os.makedirs(new, exist_ok=True)
        made.add(os.path.dirname(new))


def _packed_files(path, group: str, arrays: dict) -> list:
    """Return [(path relative to the store, [buffers])] of the files Zarr 3 writes for :func:`_write_packed`'s array:
    ``zarr.json`` of each missing parent group (``attributes`` empty), then the array's ``zarr.json`` (as Zarr formats
    it: ``json.dumps(..., indent=2)``) and its chunk ``c/0``: the values' little-endian bytes and their crc32c
    (none for an empty array). tests/test_runstore.py compares these files with Zarr's own, byte for byte."""
    values = [np.ascontiguousarray(a, "<f8").reshape(-1) for a in arrays.values()]
    n = sum(int(v.size) for v in values)
    meta = _one_chunk_meta(n, "float64", 0.0, {"layout": [[name, list(np.shape(a))] for name, a in arrays.items()]})
    files, parts = [], group.split("/")
    for i in range(1, len(parts) + 1):
        rel = os.path.join(*parts[:i], "zarr.json")
        if not os.path.exists(os.path.join(path, rel)):
            files.append((rel, [_GROUP_JSON]))
    files.append((os.path.join(group, PACKED, "zarr.json"), [json.dumps(meta, indent=2).encode()]))
    if n:
        crc = 0
        for v in values:
            view = v.view(np.uint8)
            view.flags.writeable = False  # google_crc32c takes read-only buffers only (no copy made)
            crc = google_crc32c.extend(crc, view)
        files.append((os.path.join(group, PACKED, "c", "0"), [*values, np.array([crc], "<u4")]))
    return files


_GROUP_JSON = json.dumps({"attributes": {}, "zarr_format": 3, "node_type": "group"}, indent=2).encode()


ONE_CHUNK_MAX = 10_000  # Zarr makes a 1-D float64 or int64 array of at most this many values one chunk (10^5: four)
FAST_CODECS = (BytesCodec(endian="little"), Crc32cCodec())  # uncompressed values + a crc32c per chunk: written without Zarr
_FAST_CODECS_JSON = [codec.to_dict() for codec in FAST_CODECS]  # as zarr.json lists them


def _rewrite_one_chunk(folder: Path, values: np.ndarray, create: bool = False) -> bool:
    """Rewrite the 1-D array at ``folder`` (bytes + crc32c, one chunk) with ``values`` as Zarr would create it; False if not such an array.

    ``create``: where ``folder`` does not exist, create the array as Zarr's ``create_array(data=values,
    dimension_names=("iteration",), compressors=[Crc32cCodec()])`` does (a ``metrics/`` array: :func:`_metric_meta`).

    Its ``zarr.json`` with the new shape as Zarr formats it (one chunk of all the values, as Zarr chooses
    at these sizes), its chunk the values and their crc32c, or no chunk when every value is the fill
    value (Zarr stores none), each file in one write (:func:`_write_small_file`). Zarr's own ``create_array``
    (``overwrite``) deletes and recreates the folder: 15 ``metrics/`` arrays took 70-150 ms at the end of
    a run (load 8), on its last commit's path; rewritten here they take a few ms. An empty array (a run's first
    commit has no history: ``iteration`` of 0 values) is Zarr's chunk shape [1] and no chunk.
    """
    n = int(values.size)
    if values.ndim != 1 or not 0 <= n <= ONE_CHUNK_MAX or values.dtype not in (np.dtype(np.float64), np.dtype(np.int64)):
        return False
    try:
        if create and not folder.exists():
            meta = _metric_meta(values)
        else:
            meta = json.loads((folder / "zarr.json").read_text())
        grid = meta["chunk_grid"]
        plain = (meta.get("zarr_format") == 3 and meta.get("node_type") == "array" and len(meta["shape"]) == 1
                 and meta.get("data_type") == values.dtype.name and meta.get("codecs") == _FAST_CODECS_JSON
                 and grid.get("name") == "regular"
                 and grid["configuration"]["chunk_shape"] in (meta["shape"], [1] if meta["shape"] == [0] else None)
                 and meta.get("chunk_key_encoding") == {"name": "default", "configuration": {"separator": "/"}}
                 and not meta.get("storage_transformers") and sys.byteorder == "little")
        fill = meta["fill_value"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    if not plain or not isinstance(fill, (int, float)) or isinstance(fill, bool):  # e.g. a "NaN" fill: Zarr writes it
        return False
    meta["shape"], grid["configuration"]["chunk_shape"] = [n], [max(1, n)]
    chunk = folder / "c" / "0"
    if not n or np.all(values == fill):
        chunk.unlink(missing_ok=True)
    else:
        data = np.ascontiguousarray(values)
        _write_small_file(chunk, data.tobytes() + np.array([google_crc32c.value(data)], "<u4").tobytes())
    _write_small_file(folder / "zarr.json", json.dumps(meta, indent=2).encode())
    return True


def _metric_meta(values: np.ndarray) -> dict:
    """Return the ``zarr.json`` content Zarr 3 writes for a new 1-D ``metrics/`` array of ``values`` (one chunk, fill 0)."""
    return _one_chunk_meta(int(values.size), values.dtype.name, 0.0 if values.dtype.kind == "f" else 0, {},
                           dimension_names=["iteration"])


def _one_chunk_meta(n: int, data_type: str, fill, attributes: dict, dimension_names=None) -> dict:
    """Return the ``zarr.json`` content Zarr 3 writes for a 1-D array of ``n`` values in one chunk (crc32c codecs),
    its keys in Zarr's order (the files are compared with Zarr's byte for byte)."""
    meta = {"shape": [n], "data_type": data_type,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [max(1, n)]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": fill, "codecs": _FAST_CODECS_JSON, "attributes": attributes}
    if dimension_names is not None:
        meta["dimension_names"] = dimension_names
    return {**meta, "zarr_format": 3, "node_type": "array", "storage_transformers": []}


def _write_small_file(path: Path, data: bytes) -> None:
    """Make ``data`` the content of the file ``path`` (no fsync: a view of the manifest's history), in place when it
    has no other link (:func:`storage.paths.rewrite_file`): each file a rename replaced cost ~2 ms on this machine's
    disk (its freed block), 60 ms for the 30 files of ``metrics/``."""
    rewrite_file(path, [data])


def _create_arrays(root, path, arrays: dict, **kwargs) -> None:
    """Create the arrays ``{name: data}`` of the store at ``path`` as ``root.create_array(name, data=data, **kwargs)`` would.

    Zarr's synchronous ``create_array`` waits for each array's files in turn (replacing one first
    deletes its folder, ~2 ms an ``rmdir`` on this disk); created together on one event loop of this
    thread's own they overlap: the 15 ``metrics/`` arrays of a run took ~0.2 s one by one against
    ~0.12 s, and a third less CPU. In a thread already running an event loop (a notebook's) they are
    created one after the other.
    """
    _create_many(root, path, [(name, dict(kwargs, data=data)) for name, data in arrays.items()])


def _create_many(root, path, specs) -> None:
    """Create arrays ``root.create_array(name, **kwargs)`` for each ``(name, kwargs)`` of ``specs``, together (:func:`_create_arrays`).

    Missing parent groups are made as Zarr makes them for one array (each written only if absent).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        for name, kwargs in specs:
            root.create_array(name, **kwargs)
        return

    async def create():
        group = await zarr.api.asynchronous.open_group(store=str(path), mode="r+")
        await asyncio.gather(*(group.create_array(name, **kwargs) for name, kwargs in specs))

    loop = asyncio.new_event_loop()  # not made the thread's current loop: nothing of the caller's changes
    try:
        loop.run_until_complete(create())
    finally:
        try:
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def _read_packed(array) -> dict:
    """Return the {name: float64 array} that :func:`_write_packed` wrote into ``array``."""
    data, out, at = array[...], {}, 0
    layout = array.attrs.get("layout")
    if not isinstance(layout, list):
        raise InputError("its array layout is missing")
    for name, shape in layout:
        size = int(np.prod(shape, dtype=np.int64))
        if at + size > data.size:
            raise InputError(f"its packed array is shorter than its layout ({name})")
        out[name] = data[at:at + size].reshape(shape)
        at += size
    if at != data.size:
        raise InputError("its packed array is longer than its layout")
    return out


def _array_sha256(a) -> str:
    """Return the SHA-256 of an array's float64 values and shape: of ``repr(shape)`` then the C-order bytes.

    The bytes are hashed where they lie (no ``tobytes`` copy of a checkpoint's ~14 MB at every commit).
    """
    a = np.ascontiguousarray(np.asarray(a, np.float64))
    h = hashlib.sha256(repr(a.shape).encode())
    h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


HASH_BESIDE_BYTES = 1 << 20  # arrays from this size are hashed in a second thread while the checkpoint is written


def _checksums_beside(arrays: dict, write) -> dict:
    """Return {name: :func:`_array_sha256`} of ``arrays`` while ``write()`` runs in this thread.

    A second thread hashes the large arrays, largest first (SHA-256 releases the GIL; the writer's system calls do
    too); once ``write`` returns this thread takes the large ones still left, then hashes the small ones.
    compare.py's clock waits for the commit while the workers idle, so on two cores the two overlap (MNIST
    10-class: ~7 ms of SHA-256 and ~5 ms of writing for a 12 MB checkpoint). ``write``'s error wins; the
    hashing's is raised after it.
    """
    big = collections.deque(sorted((name for name, a in arrays.items() if a.nbytes >= HASH_BESIDE_BYTES),
                                   key=lambda name: -arrays[name].nbytes))
    sums, errors = {}, []

    def hash_big():
        try:
            while True:
                try:
                    name = big.popleft()  # atomic: each name is hashed once, by one of the two threads
                except IndexError:
                    return
                sums[name] = _array_sha256(arrays[name])
        except BaseException as exc:  # noqa: BLE001 -- raised in the caller's thread below
            errors.append(exc)

    thread = threading.Thread(target=hash_big, name="admm-dask-checksums", daemon=True) if big else None
    if thread is not None:
        thread.start()
    try:
        write()
        hash_big()
        for name, a in arrays.items():
            if name not in sums:
                sums[name] = _array_sha256(a)
    finally:
        if thread is not None:
            thread.join()
    if errors:
        raise errors[0]
    return {name: sums[name] for name in arrays}  # the manifest lists them in the checkpoint's order


def _manifest_sha256(manifest: dict) -> str:
    """Return the SHA-256 of a manifest without its own checksum (canonical JSON)."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=_json_default).encode()).hexdigest()


def _checked_manifest(text: str) -> dict:
    """Return a manifest parsed from ``text``, or raise :class:`InputError` if it is damaged."""
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or "iteration" not in manifest:
        raise InputError(f"{MANIFEST} names no committed iteration")
    stored = manifest.get("manifest_sha256")
    if stored is not None and stored != _manifest_sha256(manifest):
        raise InputError(f"{MANIFEST} fails its checksum")
    return manifest


def _numbered(group, prefix: str) -> list:
    """Return the arrays ``<prefix>1 … <prefix>L`` of a Zarr group."""
    L = sum(1 for name in group.array_keys() if name.startswith(prefix) and name[len(prefix):].isdigit())
    return [group[f"{prefix}{l}"][...] for l in range(1, L + 1)]


def _state_array_spec(slot, name, width, n_samples, chunk_rows, overwrite=False):
    """Return (path, ``create_array`` arguments) of one empty state array: float32, uncompressed, crc32c per chunk, NaN fill."""
    return state_path(slot, name), dict(shape=(n_samples, width), chunks=(chunk_rows, width), dtype=STATE_DTYPE,
                                        compressors=[Crc32cCodec()], fill_value=np.nan,
                                        dimension_names=("sample", f"{name}_unit"), overwrite=overwrite)


def _create_state_array(root, slot, name, width, n_samples, chunk_rows, overwrite=False):
    """Create one empty state array (:func:`_state_array_spec`)."""
    path, kwargs = _state_array_spec(slot, name, width, n_samples, chunk_rows, overwrite)
    root.create_array(path, **kwargs)


def _shard_array_spec(slot, name, width, n_shards, overwrite=False):
    """Return (path, ``create_array`` arguments) of one empty per-shard state array: float64 (resume is bitwise exact),
    one chunk per shard, NaN fill."""
    return shard_state_path(slot, name), dict(shape=(n_shards, width), chunks=(1, width), dtype="float64",
                                              compressors=[Crc32cCodec()], fill_value=np.nan,
                                              dimension_names=("shard", f"{name}_unit"), overwrite=overwrite)


def _create_shard_array(root, slot, name, width, n_shards, overwrite=False):
    """Create one empty per-shard state array (:func:`_shard_array_spec`)."""
    path, kwargs = _shard_array_spec(slot, name, width, n_shards, overwrite)
    root.create_array(path, **kwargs)


def check_creatable(path, overwrite: bool, inputs=()) -> None:
    """Raise :class:`InputError` unless a new run store may be created at ``path``.

    A missing path is fine; an existing run store only with ``overwrite``;
    anything else (a data store, a user's directory) is never replaced, and
    ``path`` may not be, hold or lie inside one of the ``inputs`` (data stores).
    """
    path = Path(path)
    if path.exists() and not overwrite and is_run_store(path) and not path.is_symlink():  # else: check_target says
        check_unlocked(path, others_only=True)  # another trainer on it now: "in use by … pid", not advice (--resume)
        # that would be refused too (train() holds the lock itself when it checks: its own lock is no refusal)
        if not (path / MANIFEST).exists() and not (path / PREVIOUS).exists() and checkpoints_after_0(path):
            raise InputError(f"{path} already exists and is damaged: its manifests are gone though checkpoint/ holds "
                             f"iterations; it cannot be resumed: pass --overwrite to start a new run in its place, or "
                             "choose another path")
        if not (path / MANIFEST).exists() and not (path / PREVIOUS).exists():
            kept = replaced_runs(path)
            if len(kept) > 1:  # more than one interrupted --overwrite: recover_replaced leaves the choice to the user
                raise InputError(f"{path} holds a new run that was killed before its first commit, and "
                                 f"{len(kept)} runs that interrupted --overwrite runs of it kept aside are beside it "
                                 f"({', '.join(p.name for p in kept)}): rename the one to keep to {path.name} (after "
                                 f"moving {path.name} away), or pass --overwrite to start a new run in its place")
            if kept:  # an --overwrite killed before its first commit; a train puts the kept run back (recover_replaced)
                raise InputError(f"{path} holds a new run that was killed before its first commit; the run it "
                                 f"replaced is kept at {kept[0]}: pass --resume to put that run back and continue "
                                 "it, or --overwrite to put it back and replace it with a new run")
            raise InputError(f"{path} already exists and holds no committed iteration (its run failed or was "
                             "stopped before its first commit): pass --resume to start it again with its own "
                             "settings and data, or --overwrite to start a new one in its place")
        raise InputError(f"{path} already exists; pass --resume to continue that run or "
                         "--overwrite to start a new one in its place")
    check_target(path, FORMAT, overwrite, inputs=inputs, flag="--store")
    if overwrite and path.exists() and not path.is_symlink():  # a run store evaluate or predict reads is not replaced
        check_no_readers(path, "run store", "nothing was replaced")


def _fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (its directory entry); a file system that cannot is left as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replaced_runs(path) -> list[Path]:
    """Return the ``<RUN>.replaced-*`` folders beside ``path``: runs an interrupted ``--overwrite`` kept aside."""
    path = Path(path)
    try:
        return sorted(p for p in path.parent.glob(f"{path.name}{REPLACED}*") if p.is_dir())
    except OSError:
        return []


def _holds_commit(path: Path) -> bool:
    return (path / MANIFEST).exists() or (path / PREVIOUS).exists()


def replaced_note(path) -> str:
    """Return ``"; the run it replaced is kept at …"`` when an interrupted ``--overwrite`` left one beside ``path``
    and ``path`` holds no commit (else ""): the tail of an error line of a command that may not put it back."""
    old = replaced_runs(path)
    if not old or _holds_commit(Path(path)):
        return ""
    return (f"; the run it replaced is kept at {old[0]} (an --overwrite stopped before the new run's first commit): "
            f"the next python -m pipeline.train on {path}, with any flags, puts it back (--resume then continues it)")


def recover_replaced(path, report=None) -> None:
    """Finish an ``--overwrite`` that a kill -9 interrupted: call only holding the run lock of ``path``.

    The replacing trainer held that lock, so it is gone. If the new run at ``path`` holds no commit (or ``path`` is
    missing: killed between two renames) the kept run ``<RUN>.replaced-…`` is put back; if it holds one, the kept
    run was due to be deleted and is. Each is reported in one line. Several kept runs, or a ``path`` that is no
    run store, are left to the user (named in a note).
    """
    path = Path(path)
    kept = replaced_runs(path)
    if not kept:
        return
    say = report or (lambda line: print(line, file=sys.stderr))
    if len(kept) > 1 or (path.exists() and not is_run_store(path)):
        say(f"note: {', '.join(map(str, kept))} {'are runs' if len(kept) > 1 else 'is the run'} that interrupted "
            f"--overwrite runs of {path} kept aside; rename the one to keep to {path.name}")
        return
    old = kept[0]
    if path.exists() and _holds_commit(path):
        gone = old.with_name(old.name.replace(REPLACED, ".old-", 1))
        try:
            os.rename(old, gone)
        except OSError:
            gone = old
        shutil.rmtree(gone, ignore_errors=True)
        say(f"removed {old}: the run that {path} replaced, whose deletion a killed trainer left undone")
        return
    aside = partial_path(path) if path.exists() else None
    try:
        if aside is not None:
            os.rename(path, aside)  # the killed run, no commit: removed as an interrupted write's leftover would be
        os.rename(old, path)
    except OSError as err:
        raise InputError(f"cannot put back {old}, the run an interrupted --overwrite of {path} kept aside "
                         f"({err.strerror}; nothing was deleted): rename it to {path.name} yourself once "
                         f"{aside if aside is not None and aside.exists() else path} is out of the way") from None
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    say(f"restored {path} from {old.name}: an --overwrite of it was killed before its new run's first commit, "
        "so the run it held is back, as it was")


def recover_replaced_locked(path, report=None) -> None:
    """:func:`recover_replaced` holding the run lock of ``path`` for it (a no-op, taking no lock, when no
    ``<RUN>.replaced-*`` lies beside ``path``); raises :class:`InputError` if a live process holds that lock.

    Every train calls it (the CLI before its cluster starts, :func:`pipeline.checks.check_inputs`; the API's
    :func:`pipeline.training.train` once it holds the lock), whatever its flags: readers' error lines say the next
    train on ``path`` puts the kept run back. Putting it back is safe for a plain train too: the lock shows no
    trainer is alive; the run at ``path`` holds no commit (no weights, nothing a command can read; its settings are
    those of the killed command); what comes back is the user's run, bytes unchanged; and a plain train is then
    refused as before the interrupted --overwrite ("already exists; pass --resume … or --overwrite …"). The lock is
    marked ``replacing`` meanwhile, so evaluate and predict are refused while the two folders are renamed.
    """
    if not replaced_runs(path):
        return
    with RunLock(path, report=report, replacing=True):
        recover_replaced(path, report=report)


def checkpoints_after_0(path) -> list[int]:
    """Return the iterations above 0 in a run store's ``checkpoint/`` (each needs an earlier commit's manifest)."""
    try:
        names = [p.name for p in (Path(path) / "checkpoint").iterdir() if p.is_dir()]
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and int(n) > 0)


def is_run_store(path) -> bool:
    """Return True if ``path`` is a Zarr group whose format attribute says run store."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and (meta.get("attributes") or {}).get("format") == FORMAT
