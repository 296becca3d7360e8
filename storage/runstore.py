"""The on-disk format of a *run store*: one training run as a Zarr v3 group.

::

    RUN.zarr/
      zarr.json            group attrs: format "admm-dask-run", config (with the task,
                           classification or regression), data summary, state
                           widths, chunk_rows, solver
      manifest.json        human-readable commit record: committed iteration,
                           state slot, per-iteration history (the source of truth)
      model/               x_mean, x_scale (d,); classes (K,), or for regression the
                           target scaling y_mean, y_scale (1,)
      state/slot0/, slot1/ per-sample state, e.g. z1 (n, n_1) … lam (n, n_L), float32,
                           chunks (chunk_rows, width), uncompressed, crc32c-checked;
                           fill value NaN, so a missing chunk never reads as state
      checkpoint/<k>/      W1…WL (the weights after iteration k), carry/ (what the
                           solver's next iteration needs, e.g. ADMM's W^{k+1} solved
                           ahead and the input Gram), best/W1…WL (with early
                           stopping: the weights of the best held-out iteration,
                           which are the model), float64
      metrics/             1-D arrays along "iteration" (train_accuracy,
                           test_accuracy, residual, objective, seconds, …; a
                           regression has train_r2, test_r2, validation_r2 in
                           place of the accuracies), for
                           ``xarray.open_zarr(RUN.zarr, group="metrics")``

Iteration k reads state slot (k−1) mod 2 and writes slot k mod 2, so the
committed slot is never written; the commit writes ``checkpoint/<k>`` and then
atomically replaces ``manifest.json``. Only ``storage`` knows these paths.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from solvers.errors import InputError
from storage.paths import check_target, clean_stale_partials, partial_path, swap_in

FORMAT = "admm-dask-run"
FORMAT_VERSION = 2
STATE_DTYPE = np.dtype("float32")
MANIFEST = "manifest.json"
METRIC_NAMES = ("seconds", "train_accuracy", "test_accuracy", "validation_accuracy", "residual", "objective",
                "loss", "damping")
MODEL_ARRAYS = ("x_mean", "x_scale", "classes", "y_mean", "y_scale")


def metric_names(task: str) -> tuple:
    """Return the names of the metrics arrays of a run of ``task`` (regression: R² in place of accuracy)."""
    if task == "regression":
        return tuple(name.replace("_accuracy", "_r2") for name in METRIC_NAMES)
    return METRIC_NAMES


def state_path(slot: int, name: str) -> str:
    """Return the array path of one state array inside the run store."""
    return f"state/slot{slot}/{name}"


def slot_of(iteration: int) -> int:
    """Return the state slot holding iteration k: k mod 2."""
    return iteration % 2


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=_json_default)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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

    # -- creation and opening -----------------------------------------------------------
    @classmethod
    def create(cls, path, *, config: dict, data: dict, state_widths: dict, n_samples: int,
               chunk_rows: int, classes, x_mean, x_scale, overwrite: bool = False,
               test_data: str | None = None, validation_chunks=(), y_mean=None, y_scale=None,
               report=None) -> "RunStore":
        """Create an empty run store with allocated state slots (refuses an existing path).

        A classification run passes ``classes``; a regression run ``classes=None``
        and its target scaling ``y_mean``, ``y_scale``.
        """
        path = Path(path)
        check_creatable(path, overwrite)
        if chunk_rows < 1:
            raise InputError(f"chunk rows must be at least 1, got {chunk_rows}")
        attrs = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "config": config, "data": data,
            "state_widths": dict(state_widths), "n_samples": int(n_samples),
            "chunk_rows": int(chunk_rows), "test_data": test_data,
            "validation_chunks": [[int(a), int(b)] for a, b in validation_chunks], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        # built next to its target and renamed into place: a crash leaves no half store
        clean_stale_partials(path, report=report)
        partial = partial_path(path)
        try:
            try:
                root = zarr.open_group(partial, mode="w-", zarr_format=3)
            except OSError as err:
                raise InputError(f"cannot create run store {path}: {err.strerror} ({err.filename or path.parent})") from None
            model = root.create_group("model")
            model.create_array("x_mean", data=np.asarray(x_mean, np.float64))
            model.create_array("x_scale", data=np.asarray(x_scale, np.float64))
            if classes is not None:
                model.create_array("classes", data=np.asarray(classes))
            if y_mean is not None:
                model.create_array("y_mean", data=np.atleast_1d(np.asarray(y_mean, np.float64)))
                model.create_array("y_scale", data=np.atleast_1d(np.asarray(y_scale, np.float64)))
            for slot in (0, 1):
                for name, width in state_widths.items():
                    _create_state_array(root, slot, name, width, n_samples, chunk_rows)
            root.attrs.update(attrs)
            root.create_group("checkpoint")
            check_creatable(path, overwrite)
            swap_in(partial, path)  # overwrite: the old run goes only once the new one is complete
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
        return cls(path, attrs)

    @classmethod
    def open(cls, path) -> "RunStore":
        """Open an existing run store, with a clear error if the path is not one."""
        path = Path(path)
        if not path.exists():
            raise InputError(f"run store {path} does not exist")
        if not is_run_store(path):
            raise InputError(f"{path} is not an admm-dask run store (no '{FORMAT}' format attribute)")
        attrs = zarr.open_group(path, mode="r").attrs.asdict()
        if attrs.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{path} has run-store format version {attrs.get('format_version')}, "
                             f"this version reads {FORMAT_VERSION}")
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
        g = zarr.open_group(self.path, mode="r")["model"]
        return {k: g[k][...] for k in MODEL_ARRAYS if k in g}

    def update_config(self, config: dict) -> None:
        """Record changed settings of a resumed run (those ``solvers.config.RESUMABLE`` lets ``--resume`` change)."""
        zarr.open_group(self.path, mode="r+").attrs["config"] = config
        self.attrs["config"] = config

    def release_uncommitted_slot(self) -> None:
        """Delete the chunks of the slot resume does not read, halving a finished run's disk use."""
        k = self.committed_iteration()
        if k is None:
            return
        root = zarr.open_group(self.path, mode="r+")
        for name, width in self.state_widths.items():
            _create_state_array(root, slot_of(k + 1), name, width, self.n_samples, self.chunk_rows,
                                overwrite=True)

    def disk_bytes(self) -> dict:
        """Return the bytes on disk of each state slot and of everything else."""
        sizes = {"slot0": 0, "slot1": 0, "other": 0}
        for f in self.path.rglob("*"):
            if f.is_file():
                part = f.relative_to(self.path).parts
                key = part[1] if part[0] == "state" and len(part) > 2 and part[1] in sizes else "other"
                sizes[key] += f.stat().st_size
        return sizes

    # -- commit protocol --------------------------------------------------------------------
    def manifest(self) -> dict | None:
        """Return the committed manifest, or None before iteration 0 is committed."""
        try:
            return json.loads((self.path / MANIFEST).read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise InputError(f"{self.path / MANIFEST} is corrupt ({exc}); the run cannot be resumed") from None

    def committed_iteration(self) -> int | None:
        m = self.manifest()
        return None if m is None else int(m["iteration"])

    def commit(self, checkpoint: Checkpoint, history: list, target_iterations: int, stopped: bool = False) -> None:
        """Record iteration k: write its weights, then atomically replace the manifest."""
        k = checkpoint.iteration
        root = zarr.open_group(self.path, mode="r+")
        group = f"checkpoint/{k}"
        if group in root:
            del root[group]  # leftover of an uncommitted attempt at k
        for l, W in enumerate(checkpoint.weights, start=1):
            root.create_array(f"{group}/W{l}", data=np.asarray(W, np.float64))
        for name, value in checkpoint.carry.items():
            root.create_array(f"{group}/carry/{name}", data=np.asarray(value, np.float64))
        for l, W in enumerate(checkpoint.best_weights or [], start=1):
            root.create_array(f"{group}/best/W{l}", data=np.asarray(W, np.float64))
        _write_json_atomic(self.path / MANIFEST, {
            "format": FORMAT, "iteration": k, "slot": slot_of(k), "target_iterations": target_iterations,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "early_stopping": checkpoint.best,
            "stopped_early": bool(stopped), "history": history,
        })
        for stale in [name for name in root["checkpoint"].group_keys() if name != str(k)]:
            del root[f"checkpoint/{stale}"]  # earlier commits, or attempts a crash left behind
        self._write_metrics(root, history)

    def _write_metrics(self, root, history: list) -> None:
        n = len(history)
        iters = np.array([h["iteration"] for h in history], np.int64)
        root.create_array("metrics/iteration", data=iters, dimension_names=("iteration",), overwrite=True)
        for name in metric_names(self.task):
            values = np.array([h.get(name, np.nan) for h in history], np.float64).reshape(n)
            root.create_array(f"metrics/{name}", data=values, dimension_names=("iteration",), overwrite=True)

    def load_checkpoint(self) -> Checkpoint:
        """Return the weights and solver state of the committed iteration."""
        m = self.manifest()
        if m is None:
            raise InputError(f"{self.path} has no committed iteration yet; start a new run with --overwrite")
        k = int(m["iteration"])
        root = zarr.open_group(self.path, mode="r")
        try:
            g = root[f"checkpoint/{k}"]
            ws = _numbered(g, "W")
            carry = {name: g[f"carry/{name}"][...] for name in g["carry"].array_keys()} if "carry" in g else {}
            best = _numbered(g["best"], "W") if "best" in g else None
        except KeyError as exc:
            raise InputError(f"{self.path}: committed iteration {k} is incomplete ({exc}); the store is corrupt") from None
        return Checkpoint(k, ws, carry, m.get("early_stopping"), best)

    def model_iteration(self) -> int | None:
        """Return the iteration the model comes from: the best held-out one with early stopping, else the last."""
        m = self.manifest()
        if m is None:
            return None
        best = (m.get("early_stopping") or {}).get("best_iteration")
        return int(m["iteration"]) if best is None else int(best)


def _numbered(group, prefix: str) -> list:
    """Return the arrays ``<prefix>1 … <prefix>L`` of a Zarr group."""
    L = sum(1 for name in group.array_keys() if name.startswith(prefix) and name[len(prefix):].isdigit())
    return [group[f"{prefix}{l}"][...] for l in range(1, L + 1)]


def _create_state_array(root, slot, name, width, n_samples, chunk_rows, overwrite=False):
    """Create one empty state array: float32, uncompressed, crc32c per chunk, NaN fill."""
    root.create_array(state_path(slot, name), shape=(n_samples, width), chunks=(chunk_rows, width),
                      dtype=STATE_DTYPE, compressors=[Crc32cCodec()], fill_value=np.nan,
                      dimension_names=("sample", f"{name}_unit"), overwrite=overwrite)


def check_creatable(path, overwrite: bool, inputs=()) -> None:
    """Raise :class:`InputError` unless a new run store may be created at ``path``.

    A missing path is fine; an existing run store only with ``overwrite``;
    anything else (a data store, a user's directory) is never replaced, and
    ``path`` may not be, hold or lie inside one of the ``inputs`` (data stores).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass --resume to continue that run or "
                         "--overwrite to start a new one in its place")
    check_target(path, FORMAT, overwrite, inputs=inputs, flag="--store")


def is_run_store(path) -> bool:
    """Return True if ``path`` is a Zarr group whose format attribute says run store."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and (meta.get("attributes") or {}).get("format") == FORMAT


def load_network(path):
    """Return the network of a run store: the best held-out iteration with early stopping, else the last."""
    from solvers.config import TrainConfig
    from solvers.layers import build_layers
    from solvers.network import Network

    run = RunStore.open(path)
    ck = run.load_checkpoint()
    m = run.model_arrays()
    weights = ck.best_weights or ck.weights
    config = TrainConfig.from_dict(run.attrs["config"])
    layers = build_layers(config.layer_specs(), len(m["x_mean"]), len(weights[-1]), config.input_shape)
    return Network(weights, config.activation, m.get("classes"), m["x_mean"], m["x_scale"],
                   y_mean=m.get("y_mean"), y_scale=m.get("y_scale"), layers=layers)
