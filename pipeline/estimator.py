"""A scikit-learn estimator over the out-of-core pipeline: ``ADMMClassifier``.

:class:`ADMMClassifier` is a thin layer over :func:`pipeline.training.train`,
the function ``python -m pipeline.train`` runs: ``fit`` writes NumPy or Dask
inputs to a data store (Dask arrays block by block, never whole), trains into
a run store on a Dask cluster and keeps the network in memory. Prediction runs
in NumPy, or blockwise (``map_blocks``) on Dask arrays.

Needs scikit-learn (``pip install "admm-dask[sklearn]"``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from solvers.config import TrainConfig
from solvers.losses import predict_classes

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


def _outputs(X, network):
    """Return the decision values of raw rows ``X``: z_L − 0.5 for one output unit, z_L otherwise."""
    z = network.decision_function(X)
    return z - z.dtype.type(0.5) if z.shape[1] == 1 else z


def _labels(X, network, classes):
    """Return the predicted labels (taken from ``classes``) of raw rows ``X``."""
    return np.asarray(classes)[predict_classes(network.decision_function(X))]


class ADMMClassifier(ClassifierMixin, BaseEstimator):
    """Fully connected network trained out of core by ADMM (Taylor et al. 2016) on Dask.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default (300,)
        Hidden layer widths (``--hidden``).
    activation : {"relu", "hard-sigmoid", "sigmoid"}, default "relu"
    loss : {"auto", "hinge", "ovr-hinge", "squared"}, default "auto"
        ``auto``: hinge for two classes, one-vs-all hinge for more.
    gamma, beta : float, default 10.0 and 0.1
        Weights of ``‖a − h(z)‖²`` and ``‖z − W a‖²`` (eq. 4).
    max_iter : int, default 20
        ADMM iterations (``--iterations``); there is no convergence test.
    warm_start : int, default 5
        Number of first iterations without λ updates (``--warm-start``). Unlike
        scikit-learn's boolean ``warm_start`` it does not reuse a previous fit;
        continue a run with ``python -m pipeline.train --store STORE --resume``.
    ridge : float, default 0.01
        Relative ridge of the W-solve.
    init : {"forward", "gaussian"}, default "forward"
    random_state : int, RandomState or None, default None
        Seed of the initial weights/state (``--seed``); ``None`` draws one.
    chunk_rows : int or None, default None
        Samples per state chunk (default: ~128 MB of state per chunk).
    store : str, path or None, default None
        Run store to train into (replaced if it is one already). NumPy and Dask
        inputs are then written next to it as ``<store stem>-data.zarr``, so the
        run can be resumed or reported on. ``None``: a temporary directory,
        deleted after ``fit``. With a remote cluster, use shared storage.
    client : distributed.Client or None, default None
        Cluster to train on; ``None`` starts a local cluster for ``fit`` and
        closes it afterwards.
    verbose : bool, default False
        Print the per-iteration lines; otherwise they go to the ``pipeline``
        logger at INFO level.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    coefs_, intercepts_ : list of ndarray
        ``coefs_[l]`` has shape (fan_in, fan_out), as in ``MLPClassifier``; they
        act on standardised inputs ``(X − x_mean_) / x_scale_``.
    x_mean_, x_scale_ : ndarray of shape (n_features_in_,)
    history_ : xarray.Dataset
        The run's metrics along ``iteration`` (train/test accuracy, residual,
        objective, loss, seconds), as stored in the run store's ``metrics``.
    n_iter_ : int
    network_ : solvers.network.Network

    Notes
    -----
    ``fit`` accepts NumPy arrays, Dask arrays (or Dask-backed DataArrays), and
    the path of a data store written by ``python -m pipeline.ingest`` (then
    ``y`` must be None). NumPy labels may be of any type (they are encoded);
    Dask and stored labels must be numeric. ``decision_function``, ``predict``
    and ``score`` on a Dask array or a data store path work block by block and
    return Dask arrays (``score``: a float). The binary decision function is
    ``z_L − 0.5``, so positive values mean ``classes_[1]``.

    scikit-learn's ``check_estimator`` checks pass (``tests/test_estimator.py``)
    except those that do not apply: there is no ``sample_weight`` (the ADMM
    objective has no per-sample weights; the checks skip themselves), no
    ``predict_proba`` (hinge outputs are not probabilities), no sparse input
    (the data store is dense: sparse ``X`` is refused with a TypeError, which the
    sparse checks accept), and fitting on one sample fails with "at least two
    classes" as the checks allow.
    """

    def __init__(self, hidden_layer_sizes=(300,), activation="relu", loss="auto", gamma=10.0, beta=0.1,
                 max_iter=20, warm_start=5, ridge=0.01, init="forward", random_state=None, chunk_rows=None,
                 store=None, client=None, verbose=False):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.loss = loss
        self.gamma = gamma
        self.beta = beta
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.ridge = ridge
        self.init = init
        self.random_state = random_state
        self.chunk_rows = chunk_rows
        self.store = store
        self.client = client
        self.verbose = verbose

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "network_")

    # -- fitting -------------------------------------------------------------------------
    def train_config(self) -> TrainConfig:
        """Return the :class:`TrainConfig` these hyperparameters stand for (the CLI's settings)."""
        rs = self.random_state
        seed = int(rs) if isinstance(rs, (int, np.integer)) else int(
            check_random_state(rs).randint(np.iinfo(np.int32).max))
        hidden = self.hidden_layer_sizes
        hidden = (hidden,) if isinstance(hidden, (int, np.integer)) else tuple(hidden)
        return TrainConfig(hidden=hidden, activation=self.activation, loss=self.loss, gamma=float(self.gamma),
                           beta=float(self.beta), iterations=int(self.max_iter), warm_start=int(self.warm_start),
                           ridge=float(self.ridge), init=self.init, seed=seed)

    @contextlib.contextmanager
    def _connect(self):
        """Yield the client to fit on: ``client``, or a local cluster started for this fit."""
        if self.client is not None:
            yield self.client
            return
        from pipeline.cluster import connect

        with connect("local", dashboard_address=":0", report=log.info) as client:
            log.info("local Dask cluster for fit, dashboard %s", client.dashboard_link)
            yield client

    def _report(self, line: str) -> None:
        if self.verbose:
            print(line, flush=True)
        else:
            log.info(line)

    def fit(self, X, y=None):
        """Train on ``(X, y)`` out of core and return ``self``."""
        import xarray as xr

        from pipeline.training import check_inputs, train

        config = self.train_config()
        X = _unwrap_xarray(X)
        y = _unwrap_xarray(y)
        with tempfile.TemporaryDirectory(prefix="admm-estimator-") as tmp:
            run_path = Path(self.store) if self.store is not None else Path(tmp) / "run.zarr"
            data_path = run_path.with_name(f"{run_path.stem}-data.zarr") if self.store is not None \
                else Path(tmp) / "data.zarr"
            if not _is_dask(X) and not _is_path(X):  # validate before starting a cluster
                classes = self._write_numpy(X, y, data_path)
            with self._connect() as client:
                if _is_path(X):
                    classes = self._use_store(X, y)
                    data_path = Path(X)
                elif _is_dask(X):
                    classes = self._write_dask(client, X, y, data_path)
                check_inputs(store=run_path, data=data_path, overwrite=True, chunk_rows=self.chunk_rows)
                result = train(client, store=run_path, data=data_path, config=config, chunk_rows=self.chunk_rows,
                               overwrite=True, report=self._report)
            self.history_ = xr.open_zarr(run_path, group="metrics", consolidated=False).load()
        network = result.network
        self.network_ = network
        self.classes_ = np.asarray(network.classes if classes is None else classes)
        self.coefs_ = [np.asarray(W)[:, :-1].T.copy() for W in network.weights]
        self.intercepts_ = [np.asarray(W)[:, -1].copy() for W in network.weights]
        self.x_mean_, self.x_scale_ = np.asarray(network.x_mean), np.asarray(network.x_scale)
        self.n_iter_ = len(result.history)
        return self

    def _write_numpy(self, X, y, path):
        """Validate in-memory ``(X, y)``, write them with encoded labels; return the classes."""
        from storage.data import write_data

        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        classes, y_index = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"{type(self).__name__} needs at least two classes in y, got 1 class "
                             f"({classes[0]!r})")
        write_data(path, X, y_index, source="ADMMClassifier.fit (NumPy)", overwrite=True)
        return classes

    def _write_dask(self, client, X, y, path):
        """Write a Dask ``X`` (and ``y``) to a data store one row block at a time; return None."""
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

        with DataWriter(path, X.shape[1], source="ADMMClassifier.fit (Dask)", overwrite=True) as writer:
            ahead = block(0)
            for i in range(X.numblocks[0]):
                current, ahead = ahead, (block(i + 1) if i + 1 < X.numblocks[0] else None)
                parts = client.gather(current)
                writer.append(parts[0], parts[1] if _is_dask(y) else y[starts[i]:starts[i + 1]])
                del current, parts
        return None

    def _use_store(self, path, y):
        """Check a data store given as ``X``; return None (classes come from the training pass)."""
        from storage.data import open_data

        if y is not None:
            raise ValueError("y must be None when X is a data store path: the labels are read from the store")
        self.n_features_in_ = open_data(path).n_features
        if hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return None

    # -- prediction ----------------------------------------------------------------------
    def _lazy_input(self, X):
        """Return ``X`` as a Dask array with whole rows per block, or None for in-memory input."""
        X = _unwrap_xarray(X)
        if _is_path(X):
            import dask.array as da

            from storage.data import open_data

            X = da.from_zarr(str(open_data(X).path), component="X")
        if not _is_dask(X):
            return None
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has shape {X.shape}, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input")
        return X.rechunk({1: -1})

    def decision_function(self, X):
        """Return the output layer: (n,) for two classes (z_L − 0.5), (n, n_classes) otherwise."""
        check_is_fitted(self)
        n_out = self.network_.weights[-1].shape[0]
        lazy = self._lazy_input(X)
        if lazy is not None:
            out = lazy.map_blocks(_outputs, self.network_, dtype=np.float32, chunks=(lazy.chunks[0], (n_out,)))
        else:
            out = _outputs(validate_data(self, X, reset=False), self.network_)
        return out[:, 0] if n_out == 1 else out

    def predict(self, X):
        """Return the predicted class of every row of ``X`` (a Dask array for Dask or store input)."""
        check_is_fitted(self)
        lazy = self._lazy_input(X)
        if lazy is not None:
            return lazy.map_blocks(_labels, self.network_, self.classes_, drop_axis=1, dtype=self.classes_.dtype)
        return _labels(validate_data(self, X, reset=False), self.network_, self.classes_)

    def score(self, X, y=None, sample_weight=None):
        """Return the accuracy on ``(X, y)``; for a data store path, ``y`` defaults to its labels."""
        if sample_weight is None and (_is_path(_unwrap_xarray(X)) or _is_dask(_unwrap_xarray(X))):
            import dask.array as da

            pred = self.predict(X)
            if y is None and _is_path(X):
                from storage.data import open_data

                y = da.from_zarr(str(open_data(X).path), component="y")
            y = _unwrap_xarray(y)
            y = y.rechunk((pred.chunks[0],)) if _is_dask(y) else da.from_array(np.asarray(y), chunks=(pred.chunks[0],))
            return float((pred == y).mean().compute())
        return super().score(X, y, sample_weight=sample_weight)
