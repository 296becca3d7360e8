"""scikit-learn estimators over the out-of-core pipeline: ``ADMMClassifier`` and ``ADMMRegressor``.

Both are thin layers over :func:`pipeline.training.train`, the function
``python -m pipeline.train`` runs: ``fit`` writes NumPy or Dask inputs to a
data store (Dask arrays block by block, never whole), trains into a run store
on a Dask cluster and keeps the network in memory. Prediction runs in NumPy,
or blockwise (``map_blocks``) on Dask arrays. The two share
:class:`_ADMMEstimator` (hyperparameters, fitting, input handling) and differ
only in what ``y`` is: class labels, or real values fitted with the squared
loss (``--task regression``).

Needs scikit-learn (``pip install "admm-dask[sklearn]"``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from pipeline.estimator_input import check_labels_present, validated
from solvers.config import ALL, SETTINGS, TrainConfig, config_from_parameters, estimator_parameters, flag
from solvers.errors import InputError
from solvers.losses import predict_classes
from solvers.tasks import score_from_sums, score_sums

log = logging.getLogger(__name__)


def _is_dask(X) -> bool:
    return type(X).__module__.startswith("dask.") and hasattr(X, "map_blocks")


def _unwrap_xarray(X):
    """Return the Dask array behind a Dask-backed ``xarray.DataArray``, else ``X`` unchanged."""
    if type(X).__name__ == "DataArray" and _is_dask(getattr(X, "data", None)):
        return X.data
    return X


def _is_path(X) -> bool:
    return isinstance(X, (str, os.PathLike))


def _is_lazy(X) -> bool:
    """Return True for inputs predicted block by block: Dask arrays (or DataArrays) and data store paths."""
    X = _unwrap_xarray(X)
    return _is_path(X) or _is_dask(X)


def _outputs(X, network):
    """Return the decision values of raw rows ``X``: z_L − 0.5 for one output unit, z_L otherwise."""
    z = network.decision_function(X)
    return z - z.dtype.type(0.5) if z.shape[1] == 1 else z


def _labels(X, network, classes):
    """Return the predicted labels (taken from ``classes``) of raw rows ``X``."""
    return np.asarray(classes)[predict_classes(network.decision_function(X))]


def _proba(X, network):
    """Return the class probabilities of raw rows ``X`` (:func:`solvers.scores.probabilities`)."""
    return network.predict_proba(X)


def _block_score(pred, y, y_shift):
    """Return :func:`solvers.tasks.score_sums` of a block as one row (1, width)."""
    return score_sums(pred, y, y_shift)[None, :]


def _store_identity(store: str):
    """Return (inode, mtime) of a data store's ``zarr.json``: a store swapped in by a new write has other ones."""
    try:
        st = os.stat(os.path.join(store, "zarr.json"))
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


class _StoreRows:
    """Array ``name`` of data store ``path`` as :func:`dask.array.from_array` reads it, block by block.

    Each block is read by :func:`storage.data.read_rows` (a damaged chunk: one :class:`InputError` naming its
    rows) and refused if the store was replaced since the array was made (an ``ingest --overwrite`` into it):
    ``predict(path)`` returns a lazy array, computed when the caller chooses, so no reader record can cover it.
    """

    def __init__(self, path, name: str):
        from storage.data import open_data
        from storage.lock import check_not_written

        check_not_written(path)  # an ingest is writing it now: refused before anything is read
        ds = open_data(path)
        if name == "y":
            ds.require_labels("score")
        array = ds.X if name == "X" else ds.y
        self.path, self.store, self.name = str(path), str(ds.path.resolve()), name
        self.shape, self.dtype, self.ndim, self.chunk_rows = array.shape, array.dtype, array.ndim, ds.chunk_rows
        self.identity = _store_identity(self.store)

    def _check(self) -> None:
        if _store_identity(self.store) != self.identity:
            raise InputError(f"data store {self.path} was replaced (or removed) after this array was made from it; "
                             "make the array again (predict, score) to read the new store")

    def __getitem__(self, key):
        from storage.data import read_rows

        key = key if isinstance(key, tuple) else (key,)
        rows = key[0] if key else slice(None)
        if not isinstance(rows, slice) or rows.indices(self.shape[0])[2] != 1:
            return self[:][key]  # dask asks for blocks of rows (plain slices); any other index: every row, then NumPy's
        start, stop, _ = rows.indices(self.shape[0])  # None and negative bounds as NumPy reads them
        self._check()
        block = read_rows(self.store, self.name, start, max(start, stop))[(slice(None), *key[1:])]
        self._check()  # replaced while this block was read: its rows may mix both stores
        return block


def _store_array(path, name: str):
    """Return array ``name`` ('X' or 'y') of the data store ``path`` as a Dask array of its chunks (:class:`_StoreRows`)."""
    import dask.array as da

    rows = _StoreRows(path, name)
    return da.from_array(rows, chunks=(rows.chunk_rows, *rows.shape[1:]), name=False,  # new name: a store may change
                         meta=np.empty((0,) * rows.ndim, rows.dtype))


def _recordable(classes) -> list | None:
    """Return the classes as a data store records them (JSON strings, numbers or booleans), or None if they are not."""
    values = [v.item() if isinstance(v, np.generic) else v for v in np.asarray(classes).tolist()]
    kinds = {type(v) for v in values}
    if len(kinds) != 1 or not kinds <= {str, int, float, bool} or len(set(values)) != len(values) or any(
            isinstance(v, float) and not np.isfinite(v) for v in values):
        return None  # mixed or unusual labels: the Python object keeps them, the command line sees codes
    return values


def _codes_to_labels(codes, classes):
    """Return the labels ``classes[codes]`` of a block of a data store's label codes."""
    return np.asarray(classes)[codes.astype(np.int64)]


def _values(X, network):
    """Return the predicted values of raw rows ``X`` (a regression network's output, in y's units)."""
    return network.predict(X)


# what the estimators' parameters add to (or say differently from) the settings' help in solvers/config.py
_NOTES = {
    "hidden_layer_sizes": "An int is one layer.",
    "max_iter": "With ``validation_fraction`` 0 there is no convergence test. A fit that ``max_iter`` ends while "
                "the validation score still rises (the kept iteration is one of the last max(2, ⌈patience / 5⌉) and "
                "better than every one before them) warns with scikit-learn's ``ConvergenceWarning``.",
    "warm_start": "Unlike scikit-learn's boolean ``warm_start`` it does not reuse a previous fit; continue a run "
                  "with ``python -m pipeline.train --store STORE --resume``.",
    "random_state": "An int, a RandomState or None (one is drawn).",
    "layers": "None: ``hidden_layer_sizes``.",
}
_OWN_PARAMETERS = (
    ("chunk_rows", None, "int or None",
     "Samples per state chunk (default: ~128 MB of state per chunk, but at least 3 chunks per worker thread where "
     "chunks of 512 rows or more allow it; the model depends on it, so pass it for the same model on another "
     "cluster)."),
    ("store", None, "str, path or None",
     "Run store to train into (replaced if it is one already). NumPy and Dask inputs are then written next to it "
     "as ``<store stem>-data.zarr``, so the run can be resumed or reported on. ``None``: a temporary directory, "
     "deleted after ``fit``. With a remote cluster, use shared storage."),
    ("client", None, "distributed.Client or None",
     "Cluster to train on; ``None`` starts a local cluster for ``fit`` and closes it afterwards: threads in "
     "this process for in-memory ``X`` (nothing is spawned), for Dask or stored ``X`` threads up to 256 MB of "
     "data, else worker processes; it has no dashboard."),
    ("verbose", False, "bool",
     "Print the per-iteration lines; otherwise they go to the ``pipeline`` logger at INFO level."),
)


def _parameter_docs() -> str:
    """Return the numpydoc ``Parameters`` entries, generated from the settings' metadata and :data:`_OWN_PARAMETERS`."""
    import textwrap

    fields = {f.name: f for f in SETTINGS}
    entries = []
    for param, name, default in estimator_parameters():
        f = fields[name]
        kind = (f"{{{', '.join(repr(c) for c in f.metadata['choices'])}}}" if f.metadata["choices"] is not None
                else {"tuple[int, ...]": "tuple of int", "int | None": "int or None", "float | None": "float or None"}.get(f.type, f.type))
        if default is None and f.default is not None:
            kind += " or None"
        text = f.metadata["help"] + f" (``{flag(name)}``)."
        if f.metadata["solvers"] != ALL:
            text += f" Read by {', '.join(f.metadata['solvers'])}."
        if f.metadata["resumable"]:
            text += " May change on resume."
        if default is None and f.default is None and f.metadata["default_text"]:  # what None stands for
            text += f" None: {f.metadata['default_text']}."
        entries.append((param, kind, default, " ".join([text, _NOTES.get(param, "")]).strip()))
    entries += [(p, kind, d, text) for p, d, kind, text in _OWN_PARAMETERS]
    return "\n    ".join(f"{p} : {kind}, default {d!r}\n" + textwrap.fill(text, 100, initial_indent=" " * 8,
                                                                     subsequent_indent=" " * 8)
                       for p, kind, d, text in entries)


_PARAMETERS = _parameter_docs()

_ATTRIBUTES = """n_features_in_ : int
    coefs_, intercepts_ : list of ndarray
        ``coefs_[l]`` has shape (fan_in, fan_out), as in scikit-learn's MLPs (a
        convolution's: (kh·kw·C_in, C_out), the kernel in (p, q, c) order); they
        act on standardised inputs ``(X − x_mean_) / x_scale_``. With ``input_skip``
        (ADMM, dlADMM), when the output layer was refitted (``alpha="auto"`` with held-out
        rows), the last one has n_{{L−1}} + n_features_in_ rows: the last hidden layer's
        units, then the standardised inputs.
    x_mean_, x_scale_ : ndarray of shape (n_features_in_,)
    history_ : xarray.Dataset
        The run's metrics along ``iteration`` ({metrics}, residual, objective,
        loss, seconds), as stored in the run store's ``metrics``.
    n_iter_ : int
    solver_ : str
        The solver the run used: ``solver``, or what ``solver="auto"`` chose for the data
        (``consensus,gauss-newton`` or ``gauss-newton``, README *Which solver*).
    network_ : solvers.network.Network"""


class _ADMMEstimator(BaseEstimator):
    """What ADMMClassifier and ADMMRegressor share: hyperparameters, ``fit`` and input handling."""

    _task = "classification"  # TrainConfig.task of the subclass

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "network_")

    # -- fitting -------------------------------------------------------------------------
    def train_config(self) -> TrainConfig:
        """Return the :class:`TrainConfig` these hyperparameters stand for (the CLI's settings)."""
        params = self.get_params(deep=False)
        if isinstance(self.warm_start, (bool, np.bool_)):  # scikit-learn's MLP meaning; True was silently 1 iteration
            if self.warm_start:
                raise InputError("warm_start=True is a bool, but here warm_start is the number of first iterations "
                                 "without λ updates (ADMM), not scikit-learn's 'reuse the previous fit'; to continue "
                                 "a fit, pass store= and run python -m pipeline.train --store STORE --resume")
            params["warm_start"] = None  # scikit-learn's False (a fresh fit, as its checks set it): the default
        rs = self.random_state
        seed = int(rs) if isinstance(rs, (int, np.integer)) else int(
            check_random_state(rs).randint(np.iinfo(np.int32).max))
        return config_from_parameters({**params, "random_state": seed}, task=self._task)

    @contextlib.contextmanager
    def _connect(self, processes: bool):
        """Yield the client to fit on: ``client``, or a local cluster started for this fit.

        The fit's own cluster runs threads in this process for in-memory data
        (nothing is spawned: fits from ``python -c``, stdin and notebooks), and
        for a Dask array or data store the ``--local-mode auto`` rule decides.
        It has no dashboard (its start would cost ~0.4 s); pass ``client`` for one.
        """
        if self.client is not None:
            yield self.client
            return
        from pipeline.cluster import connect

        with connect("local", dashboard_address=None, report=log.info, processes=processes) as client:
            log.info("local Dask cluster for fit (%s)", "worker processes" if processes else "threads")
            yield client

    def _report(self, line: str) -> None:
        if self.verbose:
            print(line, flush=True)
        else:
            log.info(line)

    def fit(self, X, y=None):
        """Train on ``(X, y)`` out of core and return ``self``."""
        import xarray as xr

        from pipeline.memory import WorkersPaused, stop_when_paused
        from pipeline.signals import _resume_hint
        from pipeline.training import check_inputs, train

        # before anything is written (a data store, or a replaced one of an earlier fit); it failed later as
        # "'str' object has no attribute 'run'"
        if isinstance(self.client, (str, os.PathLike)):
            raise TypeError(f"client= takes a distributed.Client or None, not {self.client!r}: for a scheduler "
                            f"address pass client=distributed.Client({str(self.client)!r})")
        config = self.train_config()
        X = _unwrap_xarray(X)
        y = _unwrap_xarray(y)
        classes = None
        with tempfile.TemporaryDirectory(prefix="admm-estimator-") as tmp:
            run_path = Path(self.store) if self.store is not None else Path(tmp) / "run.zarr"
            data_path = run_path.with_name(f"{run_path.stem}-data.zarr") if self.store is not None \
                else Path(tmp) / "data.zarr"
            if self.store is not None:  # before anything is written: replace only what our own fit wrote
                self._check_store_paths(run_path, None if _is_path(X) else data_path, X if _is_path(X) else None)
            own_data = None if _is_path(X) else data_path  # the data store this fit writes
            data_existed = own_data is not None and own_data.exists()
            try:
                if _is_path(X):  # validate before starting a cluster (a missing store started worker processes)
                    self._use_store(X, y)
                elif not _is_dask(X):
                    classes = self._write_numpy(X, y, data_path)
                    self._owned(data_path)
                with self._connect(self._needs_processes(X, config)) as client:
                    if _is_path(X):
                        data_path = Path(X)
                    elif _is_dask(X):
                        self._write_dask(client, X, y, data_path)
                        self._owned(data_path)
                    check_inputs(store=run_path, data=data_path, overwrite=True, chunk_rows=self.chunk_rows,
                                 report=self._report)
                    existed = run_path.exists()
                    try:
                        # a worker paused for memory (its limit, or the user's cluster's other data) waits forever,
                        # silently: under the fit's own cluster and a user's client alike, one error instead
                        with stop_when_paused(client, "estimator"):
                            result = train(client, store=run_path, data=data_path, config=config,
                                           chunk_rows=self.chunk_rows, overwrite=True, report=self._report,
                                           task_given=True)  # the estimator's labels are its task's by construction
                    except WorkersPaused as exc:  # store=: the committed iterations stay, as after any error
                        hint = _resume_hint(run_path) if self.store is not None else ""
                        raise InputError(f"{exc}{hint if 'is committed' in hint else ''}") from None
                    finally:
                        if not existed and run_path.exists():
                            self._owned(run_path)
            except BaseException as exc:
                if self.store is not None and own_data is not None and not data_existed and own_data.exists() \
                        and not run_path.exists():
                    shutil.rmtree(own_data, ignore_errors=True)  # written by this fit, for a run never created
                import errno

                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):  # was "[Errno 28] No
                    mine = self.store is not None  # space left on device", naming neither where nor what to do
                    where = run_path.parent.resolve() if mine else Path(tmp).parent
                    what = f"store={self.store}" if mine else "its temporary stores"
                    todo = "pass another store=" if mine else "set TMPDIR to a folder with room"
                    raise InputError(f"{exc.strerror} in {where}, where this fit writes {what}: free disk space or "
                                     f"{todo}; nothing committed was lost") from exc
                raise
            self.history_ = xr.open_zarr(run_path, group="metrics", consolidated=False).load()
        self._set_fitted(result, classes)
        self._warn_if_still_rising(result)
        self._warn_if_auto_shared_a_gil(result)
        return self

    def _warn_if_auto_shared_a_gil(self, result) -> None:
        """Warn (scikit-learn's EfficiencyWarning) when ``solver="auto"`` ran Gauss-Newton only because the fit's
        workers share one process: on worker processes (``python -m pipeline.train``) it chooses the hand-over
        (newuser15 F7 / newuser16 F4: MNIST 60k, the CLI 0.9811 with ``consensus,gauss-newton``, the estimator 0.9751)."""
        import warnings

        from sklearn.exceptions import EfficiencyWarning

        from solvers.config import AUTO_HANDOVER_ROWS, HANDOVER

        record = result.store.attrs.get("solver_choice") or {}
        if not (record.get("given") == "auto" and record.get("solver") == "gauss-newton"
                and (record.get("shared_gil") or int(record.get("threads_per_worker", 1)) > 1)
                and int(record.get("rows_per_shard", 0)) >= int(record.get("threshold", AUTO_HANDOVER_ROWS))):
            return
        shards = int(record.get("shards", 1))
        warnings.warn(f"{type(self).__name__}: solver='auto' ran gauss-newton because the fit's worker threads share "
                      f"a GIL ({record.get('why')}); on worker processes of one thread, as python -m pipeline.train "
                      f"runs, it chooses {HANDOVER} for these rows, another model; for that choice pass "
                      f"client=distributed.Client(n_workers={shards}, threads_per_worker=1) (worker processes), or "
                      f"solver={HANDOVER!r} (on these threads: slower, its minibatch loops hold the GIL)",
                      EfficiencyWarning, stacklevel=3)

    def _warn_if_still_rising(self, result) -> None:
        """Warn (scikit-learn's ConvergenceWarning) when ``max_iter`` ended a fit whose validation score still rose."""
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        from pipeline.training import still_rising_text

        text = still_rising_text(result, "max_iter={}")
        if text is None:
            return
        more = 2 * result.solver.config.iterations
        resume = (f", or continue this run: python -m pipeline.train --store {self.store} --resume --iterations {more}"
                  if self.store is not None else "")
        warnings.warn(f"{type(self).__name__}: {text}; pass a larger max_iter (e.g. {more}){resume}",
                      ConvergenceWarning, stacklevel=3)

    def _check_store_paths(self, run_path, data_path, data_store) -> None:
        """Raise :class:`InputError` if ``store=`` (or its ``-data.zarr``) exists and an earlier fit of this estimator did not write it."""
        from storage.runstore import check_creatable

        owned = getattr(self, "_written_stores", set())
        for path in (run_path, data_path):
            if path is not None and path.exists() and str(path.resolve()) not in owned:
                raise InputError(f"{path} already exists and this estimator did not write it; choose another "
                                 f"store=, delete it yourself, or continue that run with python -m pipeline.train "
                                 f"--store {run_path} --resume")
        check_creatable(run_path, True, inputs=(data_store,))

    def _owned(self, path) -> None:
        """Remember that this estimator wrote ``path`` (a later fit may replace it)."""
        if self.store is not None:
            self._written_stores = getattr(self, "_written_stores", set()) | {str(Path(path).resolve())}

    @staticmethod
    def _needs_processes(X, config: TrainConfig) -> bool:
        """Return whether the fit's own cluster should run worker processes (big Dask or stored data, the hand-over).

        As ``python -m pipeline.train`` chooses: ``solver="auto"`` that will pick the hand-over on a worker per
        core gets processes (its consensus passes hold the GIL). In-memory arrays never spawn processes (so
        ``auto`` picks Gauss-Newton for them: the fit's worker threads share one GIL).
        """
        import os

        from pipeline.cli import data_bytes
        from pipeline.cluster import local_processes
        from pipeline.train import _gil_bound
        from storage.data import open_data

        if not (_is_path(X) or _is_dask(X)):
            return False
        if _is_path(X):
            nbytes = data_bytes(X)
            rows = None if nbytes is None else open_data(X).n_samples
        else:
            known = all(not np.isnan(s) for s in X.shape)
            nbytes, rows = (int(4 * np.prod(X.shape)), int(X.shape[0])) if known else (None, None)
        solver = config.solver
        if solver == "auto":
            cores = os.cpu_count() or 1
            solver = config.choose_solver(rows, cores)[0].solver if rows is not None else "gauss-newton"
        return local_processes("auto", nbytes, gil_bound=_gil_bound(solver))

    def _set_fitted(self, result, classes) -> None:
        """Set the fitted attributes from the training result (``classes``: the NumPy labels, or None)."""
        network = result.network
        self.network_ = network
        self.coefs_ = [np.asarray(W)[:, :-1].T.copy() for W in network.weights]
        self.intercepts_ = [np.asarray(W)[:, -1].copy() for W in network.weights]
        self.x_mean_, self.x_scale_ = np.asarray(network.x_mean), np.asarray(network.x_scale)
        self.n_iter_ = len(result.history)
        self.solver_ = result.solver.name

    def _encode_targets(self, y):
        """Return (y as written to the data store, the classes or None) of validated in-memory targets."""
        raise NotImplementedError

    def _write_numpy(self, X, y, path):
        """Validate in-memory ``(X, y)`` and write them (labels encoded); return the classes, or None."""
        from storage.data import write_data

        X, y = validated(self, X, y, action="fitting", dtype=[np.float32, np.float64],
                         y_numeric=self._task == "regression")
        y, classes = self._encode_targets(y)
        # the store records the labels of the codes it holds, so the run store does too: python -m pipeline.predict
        # on this run gives them back (strings, 2/5/9), not the codes 0, 1, 2
        write_data(path, X, y, source=f"{type(self).__name__}.fit (NumPy)", overwrite=True,
                   classes=None if classes is None else _recordable(classes))
        return classes

    def _write_dask(self, client, X, y, path):
        """Write a Dask ``X`` (and ``y``) to a data store one row block at a time."""
        from storage.data import DataWriter

        if y is None:
            raise ValueError("y is required when X is a Dask array")
        if X.ndim != 2 or np.isnan(X.shape[0]):
            raise ValueError(f"X must be a 2-D Dask array with known chunk sizes, got shape {X.shape} "
                             "(call X.compute_chunk_sizes() first)")
        X = X.rechunk({1: -1})
        if _is_dask(y):
            if y.shape != (X.shape[0],):
                raise ValueError(f"y must have shape ({X.shape[0]},), got {y.shape}")
            y = y.rechunk((X.chunks[0],))
        else:
            y = np.asarray(y)
            if y.shape != (X.shape[0],):
                raise ValueError(f"y must have shape ({X.shape[0]},), got {y.shape}")
        self.n_features_in_ = int(X.shape[1])
        if hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        starts = np.cumsum((0, *X.chunks[0]))

        def block(i):  # futures of row block i; one block is computed ahead while the last one is written
            return client.compute([X.blocks[i], y.blocks[i]] if _is_dask(y) else [X.blocks[i]])

        with DataWriter(path, X.shape[1], source=f"{type(self).__name__}.fit (Dask)", overwrite=True) as writer:
            ahead = block(0)
            for i in range(X.numblocks[0]):
                current, ahead = ahead, (block(i + 1) if i + 1 < X.numblocks[0] else None)
                parts = client.gather(current)
                writer.append(parts[0], parts[1] if _is_dask(y) else y[starts[i]:starts[i + 1]])
                del current, parts

    def _use_store(self, path, y):
        """Check a data store given as ``X`` (its ``y`` is the target; classes come from the training pass)."""
        from storage.data import open_data

        if y is not None:
            raise ValueError("y must be None when X is a data store path: the labels are read from the store")
        self.n_features_in_ = open_data(path).n_features
        if hasattr(self, "feature_names_in_"):
            del self.feature_names_in_

    # -- prediction ----------------------------------------------------------------------
    def _lazy_input(self, X):
        """Return ``X`` as a Dask array with whole rows per block, or None for in-memory input."""
        X = _unwrap_xarray(X)
        if _is_path(X):
            X = _store_array(X, "X")
        if not _is_dask(X):
            return None
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has shape {X.shape}, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input")
        return X.rechunk({1: -1})

    def _apply(self, X, fn, dtype, *args, width=None):
        """Return ``fn(rows, network_, *args)`` of ``X``: in NumPy, or per row block as a Dask array.

        ``width``: the number of columns ``fn`` returns (None: one value per row).
        """
        check_is_fitted(self)
        lazy = self._lazy_input(X)
        if lazy is None:
            return fn(validated(self, X, action="predicting", reset=False), self.network_, *args)
        if width is None:
            return lazy.map_blocks(fn, self.network_, *args, drop_axis=1, dtype=dtype)
        return lazy.map_blocks(fn, self.network_, *args, dtype=dtype, chunks=(lazy.chunks[0], (width,)))

    def _lazy_score(self, X, y, y_shift):
        """Return the score of :meth:`predict` on lazy ``X`` against ``y``, summed block by block (:func:`solvers.tasks.score_sums`)."""
        import dask.array as da

        pred = self.predict(X)
        y = self._lazy_targets(X, y, pred.chunks[0])
        width = 2 if y_shift is None else 4
        parts = da.map_blocks(_block_score, pred, y, y_shift, new_axis=1, dtype=np.float64,
                              chunks=((1,) * pred.numblocks[0], (width,)))
        with contextlib.ExitStack() as held:
            if _is_path(_unwrap_xarray(X)):  # a reader record until the sums are in: an ingest into it is refused
                from storage.lock import ReadLock

                held.enter_context(ReadLock(_unwrap_xarray(X)))
            return score_from_sums(parts.sum(axis=0).compute())

    @staticmethod
    def _lazy_targets(X, y, chunks):
        """Return ``y`` as a Dask array in row blocks ``chunks``; for a data store path it defaults to its ``y``."""
        import dask.array as da

        if y is None and _is_path(X):
            from storage.data import open_data

            y, classes = _store_array(X, "y"), open_data(X).classes
            if classes is not None:  # codes of text (or an estimator's) labels: compared as the labels
                y = y.map_blocks(_codes_to_labels, np.asarray(classes), dtype=np.asarray(classes).dtype)
        y = _unwrap_xarray(y)
        return y.rechunk((chunks,)) if _is_dask(y) else da.from_array(np.asarray(y), chunks=(chunks,))


def _init_from_settings(cls):
    """Give ``cls`` an ``__init__`` taking every setting's parameter (:func:`solvers.config.estimator_parameters`).

    scikit-learn reads the hyperparameters off ``__init__``'s signature, so it
    is written out: ``def __init__(self, hidden_layer_sizes=..., ...)`` storing each one.
    """
    params = [(p, d) for p, _, d in estimator_parameters()] + [(p, d) for p, d, _, _ in _OWN_PARAMETERS]
    namespace = {"_defaults": dict(params)}
    signature = ", ".join(f"{p}=_defaults[{p!r}]" for p, _ in params)
    body = "".join(f"\n    self.{p} = {p}" for p, _ in params)
    exec(f"def __init__(self, {signature}):{body}", namespace)  # noqa: S102 (names from our own settings)
    cls.__init__ = namespace["__init__"]
    cls.__init__.__qualname__ = f"{cls.__name__}.__init__"
    return cls


_init_from_settings(_ADMMEstimator)


class ADMMClassifier(ClassifierMixin, _ADMMEstimator):
    __doc__ = f"""Neural network classifier trained out of core on Dask (Gauss-Newton, ADMM or dlADMM).

    Parameters
    ----------
    {_PARAMETERS}

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    {_ATTRIBUTES.format(metrics="train/test accuracy")}

    Notes
    -----
    ``fit`` accepts NumPy arrays, Dask arrays (or Dask-backed DataArrays), and
    the path of a data store written by ``python -m pipeline.ingest`` (then
    ``y`` must be None). NumPy labels may be of any type (they are encoded,
    and the data store and run store record them, so ``python -m
    pipeline.predict`` on the run gives them back); Dask labels must be
    numeric; a data store ingested from a text label column gives its labels. ``decision_function``, ``predict``
    and ``score`` on a Dask array or a data store path work block by block and
    return Dask arrays (``score``: a float). The binary decision function is
    ``z_L − 0.5``, so positive values mean ``classes_[1]``. Training runs in
    float32, prediction in float64, so that a row's probabilities do not
    depend on the batch it comes in.

    On a data store path ``fit`` and ``score`` hold a reader record on the store
    while they read it, so an ``ingest --overwrite`` of it is refused meanwhile.
    ``predict``, ``predict_proba`` and ``decision_function`` return a lazy array
    and hold none: it may be computed any number of times, later, or by futures
    that outlive it, so no moment would release the record. An ingest may then
    replace the store; a block computed afterwards raises ``InputError`` (``data
    store D was replaced (or removed) after this array was made from it …``)
    instead of mixing rows of two stores. Compute the result before the store
    is written again.

    scikit-learn's ``check_estimator`` checks pass (``tests/test_estimator.py``)
    except those that do not apply: there is no ``sample_weight`` (the ADMM
    objective has no per-sample weights; the checks skip themselves), no sparse input
    (the data store is dense: sparse ``X`` is refused with a TypeError, which the
    sparse checks accept), and fitting on one sample fails with "at least two
    classes" as the checks allow.
    """

    _task = "classification"

    def _set_fitted(self, result, classes) -> None:
        super()._set_fitted(result, classes)
        if classes is None:  # a data store or Dask fit: the labels the run recorded (text), else its classes
            from pipeline.labels import run_labels

            classes = run_labels(result.store.attrs)
        self.classes_ = np.asarray(result.network.classes if classes is None else classes)
        # predict in float64, as ADMMRegressor: float32 BLAS sums a row differently by batch size (~1e-7 in
        # predict_proba), and a row's probabilities must not depend on the rows it comes with (check_estimator's
        # subset invariance failed so on the weights of 5847c32's larger held-out share)
        self.network_ = replace(result.network, dtype=np.float64)

    def _encode_targets(self, y):
        """Return the class indices of the labels ``y`` and the sorted classes."""
        import warnings

        from pipeline.checks import class_rows_problem

        check_labels_present(y, "fitting")
        check_classification_targets(y)
        classes, y_index, counts = np.unique(y, return_inverse=True, return_counts=True)
        if len(classes) < 2:
            raise ValueError(f"{type(self).__name__} needs at least two classes in y, got 1 class "
                             f"({classes[0]!r})")
        problem = class_rows_problem(counts.tolist(), len(y))
        if problem:  # a warning: ADMMClassifier is the user's choice of task (the command line refuses)
            warnings.warn(f"{problem}; fitting them as classes: use ADMMRegressor if y is a count or a measurement",
                          UserWarning, stacklevel=4)
        return y_index, classes

    def decision_function(self, X):
        """Return the output layer: (n,) for two classes (z_L − 0.5), (n, n_classes) otherwise."""
        check_is_fitted(self)
        n_out = self.network_.weights[-1].shape[0]
        out = self._apply(X, _outputs, np.float32, width=n_out)
        return out[:, 0] if n_out == 1 else out

    def predict_proba(self, X):
        """Return class probabilities (n, n_classes), columns in ``classes_`` order; rows sum to 1.

        A network fitted to 0/1 targets has outputs that estimate the
        probabilities; one fitted by cross-entropy (``loss``) gives them through
        softmax (two classes: sigmoid). They are clipped to [0.001, 0.999] and,
        for more than two classes, renormalised (:mod:`solvers.scores`). A Dask array for Dask or
        store input.
        """
        check_is_fitted(self)
        return self._apply(X, _proba, np.float64, width=len(self.classes_))

    def predict(self, X):
        """Return the predicted class of every row of ``X`` (a Dask array for Dask or store input)."""
        check_is_fitted(self)
        return self._apply(X, _labels, self.classes_.dtype, self.classes_)

    def score(self, X, y=None, sample_weight=None):
        """Return the accuracy on ``(X, y)``; for a data store path, ``y`` defaults to its labels."""
        if sample_weight is None and _is_lazy(X):
            return self._lazy_score(X, y, None)
        return super().score(X, y, sample_weight=sample_weight)


class ADMMRegressor(RegressorMixin, _ADMMEstimator):
    __doc__ = f"""Neural network regressor (squared loss) trained out of core on Dask (Gauss-Newton, ADMM or dlADMM).

    The targets are standardised with their mean and std (from the same
    statistics pass as the inputs) and the network's output is mapped back,
    so ``predict`` returns values in the units of ``y``.

    Parameters
    ----------
    {_PARAMETERS}

    Attributes
    ----------
    y_mean_, y_scale_ : ndarray of shape (1,)
        The target scaling: the network's last layer outputs
        ``(y − y_mean_) / y_scale_``.
    {_ATTRIBUTES.format(metrics="R²: train_r2, test_r2")}

    Notes
    -----
    ``fit`` accepts NumPy arrays, Dask arrays (or Dask-backed DataArrays), and
    the path of a data store written by ``python -m pipeline.ingest`` (then
    ``y`` must be None and the store's ``y`` is the target). ``y`` is one
    numeric column, fitted with the squared loss (``loss`` "auto" or
    "squared"; the hinge losses are refused). ``predict`` and ``score`` (R², as scikit-learn's
    ``RegressorMixin``) on a Dask array or a data store path work block by
    block; ``predict`` then returns a Dask array. Training runs in float32,
    prediction in float64, so that a row's prediction does not depend on the
    batch it comes in.

    On a data store path ``fit`` and ``score`` hold a reader record on the store;
    the lazy ``predict`` holds none, and a block computed after the store was
    replaced raises ``InputError``, as :class:`ADMMClassifier`'s Notes say.

    scikit-learn's ``check_estimator`` checks pass (``tests/test_estimator.py``)
    except those that do not apply: there is no ``sample_weight`` (the checks
    skip themselves), no sparse input (refused with a TypeError, which the
    sparse checks accept), and one target column only (``y`` of shape (n, 1)
    is raveled with scikit-learn's DataConversionWarning; wider ``y`` is
    refused).
    """

    _task = "regression"

    def _set_fitted(self, result, classes) -> None:
        super()._set_fitted(result, classes)
        # predict in float64: float32 BLAS sums a row differently by batch size (~1e-6), and a row's
        # prediction must not depend on the rows it comes with
        self.network_ = replace(result.network, dtype=np.float64)
        self.y_mean_ = np.asarray(result.network.y_mean)
        self.y_scale_ = np.asarray(result.network.y_scale)

    def _encode_targets(self, y):
        """Return the real targets as float64 (no classes)."""
        return np.asarray(y, np.float64), None

    def predict(self, X):
        """Return the predicted value of every row of ``X`` (a Dask array for Dask or store input)."""
        check_is_fitted(self)
        return self._apply(X, _values, np.float64)

    def score(self, X, y=None, sample_weight=None):
        """Return R² on ``(X, y)``; for a data store path, ``y`` defaults to its targets."""
        if sample_weight is None and _is_lazy(X):  # y shifted by the training mean: R²'s sums stay accurate
            return self._lazy_score(X, y, float(self.y_mean_[0]))
        return super().score(X, y, sample_weight=sample_weight)
