"""The on-disk format of a *data store*: user data as chunked Zarr.

A data store is a Zarr v3 group in a directory, written once by ingestion
(``python -m pipeline.ingest``) or :func:`write_data`, then only read:

======  =========  ============  ===================  =======================
array   dtype      shape         chunks               dimension names
======  =========  ============  ===================  =======================
``X``   float32    (n, d)        (chunk_rows, d)      ("sample", "feature")
``y``   float64    (n,)          (chunk_rows,)        ("sample",)
======  =========  ============  ===================  =======================

Both arrays are uncompressed (compression saves little on float data and
halves read speed) but carry a crc32c checksum per chunk, and their fill value
is NaN: a corrupted, truncated or missing chunk file is reported, never read
as data (see :func:`read_rows`). The group attributes are ``format`` (always
``"admm-dask-data"``), ``format_version``, ``n_samples``, ``n_features``,
``chunk_rows``, ``feature_names``, ``label_name``, ``source``, ``statistics``,
``has_labels`` (False for features only: no ``y``, data to predict on) and
``chunk_crc32`` (the crc32 of each chunk's X bytes followed by its y bytes,
recorded as it is written: the data's fingerprint, compared on resume without
reading the data). ``statistics`` holds the shifted moment sums of the columns ``[X, y]`` summed while
the rows were written (``shift`` = the first row, ``sums`` = [n, Σ(v − s),
Σ(v − s)², Σ(v − s)³, Σ(v − s)⁴] per column, float64: the fourth moment
floors the default input scaling) and ``labels``, the sorted distinct values of
``y`` (None when there are more than :data:`MAX_LABELS`). Training reads its
input scaling and class list from them instead of a pass over the data; a
store without them (older versions, or the two-moment statistics of the
previous version) gets that pass.

``classes`` (optional, since session 15) holds the original class labels of
a store whose labels were encoded: text labels ingested from a CSV, NPZ or
Parquet file, or any labels written by the estimators. ``y`` then holds the
code ``k`` of label ``classes[k]``; the list is sorted (as ``numpy.unique``
sorts), so codes and labels are in the same order. Its items are JSON strings,
integers, floats or booleans. A store without it (every store written before,
and numeric labels from the command line) has the labels themselves in ``y``.
A store with ``classes`` has ``format_version`` 2, so that versions before it
(which read version 1 only) refuse it instead of training on the codes; a store
without it keeps version 1. Both are read, also version-1 stores with
``classes`` (written during session 15 before the bump).

A store is written under ``<path>.partial-<random>`` next to its target and
renamed into place only when complete, so a failed or interrupted write never
leaves a store that looks valid and never destroys an existing one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from solvers.errors import InputError
from storage.lock import DataWriteLock, check_no_readers
from storage.paths import (KIND_NAMES, check_target, clean_stale_partials, partial_path, source_kind, source_stem,
                           store_format, swap_in)

FORMAT = "admm-dask-data"
FORMAT_VERSION = 1  # y holds the labels themselves
CLASSES_FORMAT_VERSION = 2  # y holds codes of the recorded ``classes``: version-1 readers would train on the codes
READ_VERSIONS = (FORMAT_VERSION, CLASSES_FORMAT_VERSION)
X_DTYPE = np.dtype("float32")
Y_DTYPE = np.dtype("float64")
_CHUNK_BYTES = 32 * 2**20
_MIN_CHUNK_ROWS, _MAX_CHUNK_ROWS = 1024, 262144
MAX_LABELS = 1000  # distinct label values recorded in the statistics; more: labels is None
_HOW_TO_CREATE = "create one with `python -m pipeline.ingest SOURCE --out {path}`"


def label_text(value) -> str:
    """Return a numeric label's plain text: a whole number without a decimal point (``1.0`` → ``'1'``), else the
    shortest text that reads back as the same float (``0.5``, ``1e-05``).

    The text that numeric labels are compared with text labels by (``'1'`` matches 1; ``'01'`` and ``'1.0'`` do
    not) and that ``ingest --text-labels`` gives the numbers of an NPZ or Parquet numeric label column.
    """
    v = float(value)
    return str(int(v)) if v.is_integer() and abs(v) < 2.0**53 else repr(v)


def default_chunk_rows(n_features: int) -> int:
    """Return the rows per chunk that make one X chunk about 32 MB.

    Parameters
    ----------
    n_features : int
        Number of features (columns of X, stored as float32).

    Returns
    -------
    int
        A power of two in [1024, 262144].
    """
    rows = _CHUNK_BYTES / (X_DTYPE.itemsize * max(int(n_features), 1))
    rows = 2 ** round(math.log2(rows))
    return int(min(max(rows, _MIN_CHUNK_ROWS), _MAX_CHUNK_ROWS))


@dataclass(frozen=True)
class DataStore:
    """An opened, validated data store (metadata only; arrays open lazily).

    Attributes
    ----------
    path : pathlib.Path
        Directory of the Zarr group.
    n_samples, n_features, chunk_rows : int
        Shape of ``X`` and rows per chunk of ``X`` and ``y``.
    feature_names : tuple of str
        One name per column of ``X``.
    label_name : str
        Name of the label column ``y``.
    source : str
        Where the data came from (a file name, or ``"array"``).
    statistics : dict or None
        ``shift`` (d + 1,), ``sums`` (1 + 2(d + 1),) and ``labels`` (sorted
        distinct y, or None) as recorded at write time (see the module
        docstring), as float64 arrays; None for a store written without them.
    has_labels : bool
        False for a store of features only (``--no-labels``: data to predict).
    classes : tuple or None
        The original labels of the codes ``0 .. K-1`` in ``y`` (text labels, or
        an estimator's labels; module docstring), or None: ``y`` holds the labels.
    """

    path: Path
    n_samples: int
    n_features: int
    chunk_rows: int
    feature_names: tuple[str, ...]
    label_name: str
    source: str = ""
    statistics: dict | None = field(default=None, compare=False, repr=False)
    has_labels: bool = True
    classes: tuple | None = field(default=None, compare=False)

    @property
    def n_chunks(self) -> int:
        """Return the number of row chunks of ``X`` and ``y``."""
        return -(-self.n_samples // self.chunk_rows)

    @property
    def X(self) -> zarr.Array:
        """Open the feature matrix ``X`` (n_samples x n_features) read-only."""
        return zarr.open_group(self.path, mode="r")["X"]

    @property
    def y(self) -> zarr.Array:
        """Open the label vector ``y`` (n_samples,) read-only."""
        self.require_labels("read its labels")
        return zarr.open_group(self.path, mode="r")["y"]

    def require_labels(self, purpose: str = "train or evaluate") -> None:
        """Raise :class:`InputError` if the store has no labels (ingested with ``--no-labels``)."""
        if not self.has_labels:
            raise InputError(f"data store {self.path} has no labels (written with --no-labels): it can be "
                             f"predicted on, but not used to {purpose}")


def _read_group_attrs(path: Path) -> dict | None:
    """Return the attributes of the Zarr v3 group at ``path``, or None if it is none."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return None
    return meta.get("attributes") or {}


def features_hint(ds: DataStore, expected: int) -> str:
    """The likely cause of a store one feature off the model's: how its label column was ingested ('' if not that)."""
    if ds.n_features == expected - 1 and ds.has_labels:
        return (": one column fewer; if its file has no label column, ingest it with --no-labels (without it the "
                "last column became the label)")
    if ds.n_features == expected + 1 and not ds.has_labels:
        return (": one column more; if its file has a label column, ingest it without --no-labels (with it the "
                "label became a feature)")
    return ""


def open_data(path: str | os.PathLike, ingest_hint: str = "") -> DataStore:
    """Open and validate a data store, raising one clear error if it is unusable.

    Parameters
    ----------
    path : str or path-like
        Directory of a data store written by ingestion or :func:`write_data`.
    ingest_hint : str
        Appended to the ingest command the error names when ``path`` is a source file (predict: ``--no-labels``).

    Returns
    -------
    DataStore

    Raises
    ------
    solvers.errors.InputError
        If the path is missing, is not a Zarr group, is not an admm-dask data
        store, or its arrays have the wrong names, shapes, lengths or dtypes.
    """
    path = Path(path)
    how = _HOW_TO_CREATE.format(path=path)
    if not path.exists():
        raise InputError(f"data store {path} does not exist; {how}")
    if not path.is_dir():  # a source file given where its store is meant: say how to convert it, into which path
        if source_kind(path) is None:  # not a source ingest reads
            raise InputError(f"{path} is not a Zarr store: it is a file (a data store is a folder written by "
                             "python -m pipeline.ingest)")
        raise InputError(f"{path} is not a Zarr store: it is a file (a data store is a folder); convert it into one "
                         f"first: `python -m pipeline.ingest {path} --out {path.with_name(source_stem(path) + '.zarr')}"
                         f"{ingest_hint}`")
    attrs = _read_group_attrs(path)
    how = _HOW_TO_CREATE.format(path="DATA.zarr")  # not into this existing folder: ingest refuses to replace it
    if attrs is None:
        if ((path / ".zgroup").exists() or (path / ".zarray").exists()):
            raise InputError(f"{path} is a Zarr v2 store, not an admm-dask data store; {how}")
        if (path / "zarr.json").is_file():  # there, but not a group's metadata: damaged (or another tool's array)
            raise InputError(f"{path} is not a usable Zarr store: its zarr.json is damaged or not a Zarr v3 group's "
                             f"metadata (an interrupted copy?); {how}")
        raise InputError(f"{path} is not a Zarr store (no Zarr v3 group metadata "
                         f"zarr.json); {how}")
    fmt = attrs.get("format")
    if fmt != FORMAT:
        what = f"an admm-dask {KIND_NAMES[fmt]}" if fmt in KIND_NAMES else (
            f"another tool's Zarr store (format attribute {fmt!r})" if fmt is not None
            else "a Zarr store without the admm-dask format attribute")
        raise InputError(f"{path} is {what}, not an admm-dask data store; "
                         f"pass a data store, or {how}")
    if attrs.get("format_version") not in READ_VERSIONS:
        raise InputError(f"data store {path} has format_version "
                         f"{attrs.get('format_version')!r}; this version reads "
                         f"{' and '.join(map(str, READ_VERSIONS))}: re-ingest the data with this version")
    group = zarr.open_group(path, mode="r")
    arrays = {}
    has_labels = attrs.get("has_labels", True) is not False
    for name in ("X", "y") if has_labels else ("X",):
        try:
            node = group[name]
        except Exception:  # missing, or metadata zarr cannot parse
            node = None
        if not isinstance(node, zarr.Array):
            raise InputError(f"data store {path} has no array {name!r}; it is "
                             f"damaged or incomplete: re-ingest it with --overwrite")
        arrays[name] = node
    X, y = arrays["X"], arrays.get("y")
    _check_arrays(path, X, y, attrs)
    names = attrs.get("feature_names") or [f"x{j}" for j in range(X.shape[1])]
    return DataStore(path=path, n_samples=int(X.shape[0]), n_features=int(X.shape[1]),
                     chunk_rows=int(X.chunks[0]), feature_names=tuple(map(str, names)),
                     label_name=str(attrs.get("label_name", "label")),
                     source=str(attrs.get("source", "")), has_labels=has_labels,
                     classes=_parse_classes(path, attrs.get("classes")),
                     statistics=_parse_statistics(attrs.get("statistics"), X.shape[0], X.shape[1]))


def _parse_classes(path: Path, raw) -> tuple | None:
    """Return the recorded class labels (``classes`` attribute) as a tuple, None when absent; InputError if damaged."""
    if raw is None:
        return None
    ok = isinstance(raw, list) and len(raw) >= 1 and all(
        isinstance(v, (str, int, float, bool)) for v in raw) and len({type(v) for v in raw}) == 1
    if not ok or len(set(raw)) != len(raw):
        raise InputError(f"data store {path}: its 'classes' attribute is not a list of distinct labels of one type; "
                         "re-ingest it with --overwrite")
    return tuple(raw)


def _parse_statistics(raw, n: int, d: int) -> dict | None:
    """Return the recorded statistics as arrays, or None when absent or not of a store of n x d."""
    if not isinstance(raw, dict):
        return None
    try:
        shift = np.asarray(raw["shift"], np.float64)
        sums = np.asarray(raw["sums"], np.float64)
        labels = raw.get("labels")
        labels = None if labels is None else np.asarray(labels, np.float64)
    except (KeyError, TypeError, ValueError):
        return None
    if shift.shape != (d + 1,) or sums.shape != (1 + 4 * (d + 1),) or sums[0] != n \
            or not (np.all(np.isfinite(shift)) and np.all(np.isfinite(sums))) \
            or (labels is not None and (labels.ndim != 1 or labels.size > MAX_LABELS)):
        return None
    return {"shift": shift, "sums": sums, "labels": labels}


SUB_ROWS = 256  # rows of [X, y] whose four float64 powers _Statistics.add holds at a time (MNIST: 4 x 256 x 785 x 8 B = 6.4 MB)
SUB_BYTES = 8 * 2**20  # and at most this many bytes of them (wide data: fewer rows)


class _Statistics:
    """Running moment sums of the columns ``[X, y]`` and the distinct labels, block by block."""

    def __init__(self):
        self.shift = self.sums = None
        self.labels = np.empty(0)

    def add(self, X: np.ndarray, y: np.ndarray) -> None:
        """Add the block's shifted one-pass moments ``Σ(v − s)^p``, p = 1..4, per column of ``[X, y]`` (float64).

        The rows are taken :data:`SUB_ROWS` at a time (at most :data:`SUB_BYTES` of buffers), so the four power buffers stay in the CPU's
        cache (10,000 MNIST rows: 4x faster than whole-block temporaries). Each column is still one
        sum over the block's rows in order: a later sub-block's first row gets the running sum added
        before NumPy sums it (its axis-0 sum adds the rows one after another, starting from the
        first), which is bitwise the whole block's ``sum(axis=0)``.
        """
        if X.shape[0] == 0:
            return
        d = X.shape[1] + 1
        if self.shift is None:
            self.shift = np.empty(d)
            self.shift[:-1], self.shift[-1] = X[0], y[0]
            self.sums = np.zeros(1 + 4 * d)
        rows = max(1, min(SUB_ROWS, SUB_BYTES // (32 * d), X.shape[0]))
        buffers = np.empty((4, rows, d))
        totals = None
        for a in range(0, X.shape[0], rows):
            k = min(rows, X.shape[0] - a)
            dev, dev2, dev3, dev4 = buffers[:, :k]
            dev[:, :-1] = X[a:a + k]
            dev[:, -1] = y[a:a + k]
            dev -= self.shift
            np.multiply(dev, dev, out=dev2)
            np.multiply(dev2, dev, out=dev3)
            np.multiply(dev2, dev2, out=dev4)
            if totals is not None:  # continue each column's sum in row order
                for power, total in zip((dev, dev2, dev3, dev4), totals):
                    power[0] += total
            totals = [power.sum(axis=0) for power in (dev, dev2, dev3, dev4)]
        self.sums += np.concatenate([[X.shape[0]], *totals])
        if self.labels is not None:
            self.labels = np.union1d(self.labels, np.unique(y))
            if self.labels.size > MAX_LABELS:
                self.labels = None

    def attrs(self) -> dict:
        return {"shift": self.shift.tolist(), "sums": self.sums.tolist(),
                "labels": None if self.labels is None else self.labels.tolist()}


def _check_arrays(path: Path, X: zarr.Array, y, attrs: dict) -> None:
    """Raise InputError unless X and y have the shapes, dtypes and metadata of a data store (y None: unlabeled)."""
    fix = "re-ingest it with --overwrite"
    if X.ndim != 2:
        raise InputError(f"data store {path}: X must be 2-D (samples x features) "
                         f"but has shape {X.shape}; {fix}")
    if y is None:  # an unlabeled store (--no-labels): the checks of X alone
        if X.shape[0] == 0:
            raise InputError(f"data store {path} is empty (0 samples); ingest a non-empty file")
        if X.dtype != X_DTYPE or X.chunks[1] != X.shape[1]:
            raise InputError(f"data store {path}: X must be float32 and chunked by rows only; {fix}")
        return
    if y.ndim != 1:
        raise InputError(f"data store {path}: y must be 1-D (one label per sample) "
                         f"but has shape {y.shape}; {fix}")
    if X.shape[0] != y.shape[0]:
        raise InputError(f"data store {path}: X has {X.shape[0]} rows but y has "
                         f"{y.shape[0]}; {fix}")
    if X.shape[0] == 0:
        raise InputError(f"data store {path} is empty (0 samples); ingest a non-empty file")
    if X.dtype != X_DTYPE or y.dtype != Y_DTYPE:
        raise InputError(f"data store {path}: X must be float32 and y float64, found "
                         f"{X.dtype} and {y.dtype}; {fix}")
    if X.chunks[1] != X.shape[1] or y.chunks[0] != X.chunks[0]:
        raise InputError(f"data store {path}: X must be chunked by rows only and y "
                         f"like X, found chunks {X.chunks} and {y.chunks}; {fix}")
    expected = {"n_samples": X.shape[0], "n_features": X.shape[1], "chunk_rows": X.chunks[0]}
    for key, value in expected.items():
        if attrs.get(key) != value:
            raise InputError(f"data store {path}: attribute {key}={attrs.get(key)!r} "
                             f"does not match the arrays ({value}); {fix}")
    names = attrs.get("feature_names")
    if names is not None and len(names) != X.shape[1]:
        raise InputError(f"data store {path}: {len(names)} feature names for "
                         f"{X.shape[1]} features; {fix}")


def _first_bad_row(a: np.ndarray) -> int | None:
    """Return the index of the first row of ``a`` holding NaN or inf, or None."""
    ok = np.isfinite(a)
    if ok.ndim == 2:
        ok = ok.all(axis=1)
    return None if ok.all() else int(np.argmin(ok))


class DataWriter:
    """Write a data store from streamed row blocks, whole chunks at a time.

    Use as a context manager; rows go to ``<path>.partial-<random>`` and the
    store is renamed to ``path`` only when the ``with`` block ends without an
    exception. An existing data store at ``path`` is replaced only if
    ``overwrite=True``, and only after the new store is complete.

    Parameters
    ----------
    path : str or path-like
        Target directory of the data store.
    n_features : int
        Columns of ``X``.
    chunk_rows : int, optional
        Rows per chunk; default :func:`default_chunk_rows`, or the row count
        if all rows fit in one such chunk.
    feature_names : sequence of str, optional
        Default ``x0, x1, ...``.
    label_name : str
        Name of the label.
    source : str
        Where the data came from, recorded in the attributes.
    overwrite : bool
        Replace an existing data store at ``path``.
    classes : sequence, optional
        The original labels of the codes ``0 .. K-1`` the caller appends as ``y``
        (sorted, distinct; recorded as the ``classes`` attribute).

    Examples
    --------
    >>> with DataWriter("d.zarr", 3, chunk_rows=1024) as w:  # doctest: +SKIP
    ...     for X_block, y_block in blocks:
    ...         w.append(X_block, y_block)
    >>> w.store  # doctest: +SKIP
    """

    def __init__(self, path, n_features, *, chunk_rows=None, feature_names=None,
                 label_name="label", source="", overwrite=False, report=None, labels=True, classes=None):
        self.path = Path(path)
        self.classes = None if classes is None else [v.item() if isinstance(v, np.generic) else v for v in classes]
        self.n_features = int(n_features)
        if self.n_features < 1:
            raise InputError(f"cannot write {self.path}: data needs at least one feature column")
        self._auto_chunks = chunk_rows is None
        self.chunk_rows = (default_chunk_rows(n_features) if chunk_rows is None
                           else int(chunk_rows))
        if self.chunk_rows < 1:
            raise InputError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        names = [f"x{j}" for j in range(self.n_features)] if feature_names is None else [
            str(n) for n in feature_names]
        if len(names) != self.n_features:
            raise InputError(f"{len(names)} feature names given for {self.n_features} features")
        self.feature_names, self.label_name, self.source = names, str(label_name), str(source)
        self.overwrite = bool(overwrite)
        self.labels = bool(labels)
        self.chunk_crc32: list[int] = []
        self.report = report if report is not None else _to_stderr
        check_writable(self.path, self.overwrite)
        self.n_rows = 0
        self._stats = _Statistics()
        self.store: DataStore | None = None
        self._partial: Path | None = None

    def __enter__(self) -> DataWriter:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot write {self.path}: its folder {self.path.parent} is not a writable "
                             f"directory ({err.strerror})") from None
        self._lock = DataWriteLock(self.path, report=self.report)  # no second writer, no live reader, until __exit__
        try:
            self._lock.acquire()
            clean_stale_partials(self.path, report=self.report)
            self._partial = partial_path(self.path)
            try:
                self._group = zarr.open_group(self._partial, mode="w-", zarr_format=3)
            except OSError as err:
                raise InputError(f"cannot write {self.path}: {err.strerror} ({err.filename or self.path.parent})") \
                    from None
            self._X = self._y = None
            c, d = self.chunk_rows, self.n_features
            self._bx = np.empty((c, d), X_DTYPE)  # a MemoryError here must release the lock too
            self._by = np.empty(c, Y_DTYPE)
            self._fill = 0
        except BaseException:
            if self._partial is not None:
                shutil.rmtree(self._partial, ignore_errors=True)
                self._partial = None
            self._lock.release()
            raise
        return self

    def append(self, X_block, y_block) -> None:
        """Append rows ``X_block`` (m x d) with labels ``y_block`` (m,).

        Raises
        ------
        solvers.errors.InputError
            If the shapes disagree or a value is NaN, inf or overflows float32;
            the message names the 0-based row index among all appended rows.
        """
        if self._partial is None:
            raise RuntimeError("DataWriter.append called outside its `with` block")
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                X_block = np.asarray(X_block, dtype=X_DTYPE)
                y_block = None if not self.labels else np.asarray(y_block, dtype=Y_DTYPE)
        except (TypeError, ValueError) as err:
            raise InputError(f"X and y must be numeric arrays: {err}") from None
        if X_block.ndim != 2 or X_block.shape[1] != self.n_features:
            raise InputError(f"X block must have shape (rows, {self.n_features}), "
                             f"got {X_block.shape}")
        if not self.labels:
            y_block = np.zeros(X_block.shape[0], Y_DTYPE)  # buffered, never stored
        if y_block.shape != (X_block.shape[0],):
            raise InputError(f"y block must have shape ({X_block.shape[0]},) like X's rows, "
                             f"got {y_block.shape}")
        for name, a in (("X", X_block), ("y", y_block)):
            bad = _first_bad_row(a)
            if bad is not None:
                raise InputError(f"{name} row {self.n_rows + bad} (0-based) contains NaN or inf "
                                 "(or a value too large for float32); remove or impute "
                                 "non-finite values first")
        self._stats.add(X_block, y_block)
        start, m = 0, X_block.shape[0]
        while start < m:
            take = min(self.chunk_rows - self._fill, m - start)
            self._bx[self._fill:self._fill + take] = X_block[start:start + take]
            self._by[self._fill:self._fill + take] = y_block[start:start + take]
            self._fill += take
            start += take
            if self._fill == self.chunk_rows:
                self._flush()
        self.n_rows += m

    def _create_arrays(self) -> None:
        """Create empty X and y; data smaller than a defaulted chunk gets one exact chunk."""
        if self._auto_chunks and self._fill < self.chunk_rows:
            self.chunk_rows = self._fill
        c, d = self.chunk_rows, self.n_features
        self._X = self._group.create_array(
            "X", shape=(0, d), chunks=(c, d), dtype=X_DTYPE, compressors=[Crc32cCodec()],
            fill_value=np.nan, dimension_names=("sample", "feature"))
        if self.labels:
            self._y = self._group.create_array(
                "y", shape=(0,), chunks=(c,), dtype=Y_DTYPE, compressors=[Crc32cCodec()],
                fill_value=np.nan, dimension_names=("sample",))

    def _flush(self) -> None:
        """Write the buffered rows as the next chunk (the last one may be short)."""
        if self._fill == 0:
            return
        if self._X is None:
            self._create_arrays()
        n0 = self._X.shape[0]
        n1 = n0 + self._fill
        self._X.resize((n1, self.n_features))
        self._X[n0:n1] = self._bx[:self._fill]
        crc = zlib.crc32(memoryview(np.ascontiguousarray(self._bx[:self._fill])).cast("B"))
        if self.labels:
            self._y.resize((n1,))
            self._y[n0:n1] = self._by[:self._fill]
            crc = zlib.crc32(memoryview(np.ascontiguousarray(self._by[:self._fill])).cast("B"), crc)
        self.chunk_crc32.append(int(crc))
        self._fill = 0

    def __exit__(self, exc_type, exc, tb) -> bool:
        partial, self._partial = self._partial, None
        try:
            if exc_type is not None:
                return False
            if self.n_rows == 0:
                raise InputError(f"no rows to write to {self.path}: the data is empty")
            self._flush()
            self._group.update_attributes({  # one write of zarr.json (attrs.update writes it once a key: 11 times)
                "format": FORMAT, "format_version": FORMAT_VERSION if self.classes is None else CLASSES_FORMAT_VERSION,
                "n_samples": self.n_rows, "n_features": self.n_features,
                "chunk_rows": self.chunk_rows, "feature_names": self.feature_names,
                "label_name": self.label_name, "source": self.source,
                "statistics": self._stats.attrs(), "has_labels": self.labels,
                "chunk_crc32": self.chunk_crc32, **({"classes": self.classes} if self.classes is not None else {})})
            _replace(partial, self.path, self.overwrite)
            partial = None
            self.store = open_data(self.path)
            return False
        finally:
            if partial is not None:
                shutil.rmtree(partial, ignore_errors=True)
            self._lock.release()


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def check_writable(path: str | os.PathLike, overwrite: bool) -> None:
    """Raise InputError unless a data store may be written at ``path``.

    A missing path is writable; an existing admm-dask data store only with
    ``overwrite=True``; anything else (a run store, a user's directory or
    file) is never replaced.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        if path.is_symlink() or store_format(path) != FORMAT:  # --overwrite would be refused too: not suggested
            check_target(path, FORMAT, overwrite)
        raise StoreExists(path)
    check_target(path, FORMAT, overwrite)


class StoreExists(InputError):
    """An existing data store written without ``overwrite``: the message names the Python keyword ``overwrite=True``;
    a command line names its own flag (:meth:`with_flag`: ``python -m pipeline.ingest`` says ``--overwrite``)."""

    def __init__(self, path):
        self.path = Path(path)
        super().__init__(self._message("overwrite=True"))

    def _message(self, how: str) -> str:
        return f"{self.path} exists; pass {how} to replace it"

    def with_flag(self, flag: str) -> InputError:
        """Return the same error in the words of a command line whose flag is ``flag``."""
        return InputError(self._message(flag))


def _replace(partial: Path, target: Path, overwrite: bool) -> None:
    """Rename the complete store ``partial`` to ``target``, replacing an old one last.

    An old store is replaced only if no live reader appeared meanwhile: the writer's lock keeps new readers out,
    but on a network file system its first look for readers (:class:`storage.lock.DataWriteLock`) can miss one that
    started on another node just before (:mod:`storage.lock`, Limits), so it looks again right before the swap.
    """
    check_writable(target, overwrite)
    if overwrite and target.exists() and not target.is_symlink():
        check_no_readers(target, "data store", "the new store was discarded; nothing was replaced")
    swap_in(partial, target)


def write_data(path, X, y, *, chunk_rows=None, feature_names=None, label_name="label",
               source="array", overwrite=False, classes=None) -> DataStore:
    """Write in-memory arrays ``X`` (n x d) and ``y`` (n,) as a data store.

    Parameters
    ----------
    path : str or path-like
        Target directory.
    X : array_like, shape (n, d)
        Features; stored as float32.
    y : array_like, shape (n,)
        Labels; stored as float64.
    chunk_rows : int, optional
        Rows per chunk; default :func:`default_chunk_rows`.
    feature_names, label_name, source, overwrite, classes
        See :class:`DataWriter` (``classes``: ``y`` holds codes of these labels).

    Returns
    -------
    DataStore

    Raises
    ------
    solvers.errors.InputError
        On shape disagreement, empty data, non-numeric, NaN or inf values
        (naming the first bad row), or an existing ``path`` without ``overwrite``.
    """
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2:
        raise InputError(f"X must be 2-D (samples x features), got shape {X.shape}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise InputError(f"y must be 1-D with one label per row of X ({X.shape[0]}), "
                         f"got shape {y.shape}")
    if X.shape[0] == 0:
        raise InputError(f"cannot write {path}: X has no rows")
    with DataWriter(path, X.shape[1], chunk_rows=chunk_rows, feature_names=feature_names,
                    label_name=label_name, source=source, overwrite=overwrite, classes=classes) as writer:
        writer.append(X, y)
    return writer.store


def chunk_checksums(store: DataStore) -> list[int]:
    """Return the crc32 of every chunk's X and y bytes: recorded at writing, computed (one read) for older stores."""
    attrs = _read_group_attrs(store.path) or {}
    sums = attrs.get("chunk_crc32")
    if isinstance(sums, list) and len(sums) == store.n_chunks:
        return [int(v) for v in sums]
    X = store.X
    y = store.y if store.has_labels else None
    sums = []
    for start in range(0, store.n_samples, store.chunk_rows):
        stop = min(start + store.chunk_rows, store.n_samples)
        crc = zlib.crc32(memoryview(np.ascontiguousarray(X[start:stop])).cast("B"))
        if y is not None:
            crc = zlib.crc32(memoryview(np.ascontiguousarray(y[start:stop])).cast("B"), crc)
        sums.append(int(crc))
    return sums


def fingerprint(store: DataStore) -> dict:
    """Return the identity of a data store: its shape and the crc32 of every chunk (from metadata, no data read).

    ``chunks_sha256`` digests the per-chunk list; two stores with equal
    fingerprints hold the same bytes in every chunk (up to crc32 collisions).
    """
    import hashlib

    sums = chunk_checksums(store)
    return {"n_samples": store.n_samples, "n_features": store.n_features, "chunk_rows": store.chunk_rows,
            "chunks_sha256": hashlib.sha256(json.dumps(sums).encode()).hexdigest(), "chunk_crc32": sums}


def fingerprint_differences(expected: dict, store: DataStore) -> list[str]:
    """Return how ``store`` differs from a recorded fingerprint (empty if it is the same data)."""
    import hashlib

    if "sha256_first_last_chunks" in expected:  # recorded before per-chunk checksums: first and last chunk
        h = hashlib.sha256()
        c, X, y = store.chunk_rows, store.X, store.y
        for start in sorted({0, max(0, (store.n_chunks - 1) * c)}):
            h.update(np.ascontiguousarray(X[start:start + c]).tobytes())
            h.update(np.ascontiguousarray(y[start:start + c]).tobytes())
        actual = {"n_samples": store.n_samples, "n_features": store.n_features,
                  "sha256_first_last_chunks": h.hexdigest()}
        return [f"{k}: run has {expected.get(k)!r}, data has {v!r}" for k, v in actual.items()
                if expected.get(k) != v]
    actual = fingerprint(store)
    diffs = [f"{k}: run has {expected.get(k)!r}, data has {actual[k]!r}"
             for k in ("n_samples", "n_features", "chunk_rows") if expected.get(k) != actual[k]]
    if not diffs and expected.get("chunks_sha256") != actual["chunks_sha256"]:
        old = expected.get("chunk_crc32") or []
        bad = [i for i, (a, b) in enumerate(zip(old, actual["chunk_crc32"])) if a != b]
        if bad:
            i, c = bad[0], store.chunk_rows
            diffs.append(f"{len(bad)} of {store.n_chunks} chunks hold other values, the first rows "
                         f"{i * c}-{min((i + 1) * c, store.n_samples) - 1}")
        else:
            diffs.append("the chunk checksums differ")
    return diffs


def read_rows(store: str, name: str, start: int, stop: int) -> np.ndarray:
    """Return rows [start, stop) of array ``name`` of a Zarr store, checked for damage.

    Raises :class:`InputError` naming the array and rows when a chunk fails its
    checksum (corrupted or truncated file) or reads as the NaN fill value
    (missing file). Used by every worker task for data and state alike.
    """
    try:
        block = zarr.open_array(store=store, path=name, mode="r")[start:stop]
    except ValueError as exc:
        raise InputError(f"{store}: a chunk of '{name}' holding rows {start}-{stop - 1} is corrupted "
                         f"or truncated ({exc})") from None
    except FileNotFoundError:
        raise InputError(f"{store}: array '{name}' is missing; the store is damaged") from None
    if block.size and np.isnan(block.reshape(block.shape[0], -1)[:, 0]).any():
        raise InputError(f"{store}: rows {start}-{stop - 1} of '{name}' are missing or hold NaN; "
                         "a chunk file was deleted or never completely written")
    return block


class _CheckedRows:
    """Array ``name`` of a Zarr store as :func:`dask.array.from_array` reads it: each block through :func:`read_rows`."""

    def __init__(self, store: str, name: str):
        z = zarr.open_array(store=store, path=name, mode="r")
        self.store, self.name, self.shape, self.dtype, self.ndim = store, name, z.shape, z.dtype, z.ndim

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        return read_rows(self.store, self.name, key[0].start or 0, key[0].stop)[(slice(None), *key[1:])]


def rows_array(store, name: str, chunk_rows: int):
    """Return array ``name`` of a Zarr store as a Dask array of ``chunk_rows``-row blocks (whole rows).

    Like ``da.from_zarr``, but every block is read by :func:`read_rows`, so a
    damaged chunk is one :class:`InputError` naming the array and rows.
    """
    import dask.array as da

    rows = _CheckedRows(str(store), name)
    return da.from_array(rows, chunks=(chunk_rows, *rows.shape[1:]), name=False,  # a new name: a store may be rewritten
                         meta=np.empty((0,) * rows.ndim, rows.dtype))
