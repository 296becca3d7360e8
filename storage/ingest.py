"""Streaming ingestion of CSV, NPZ and Parquet files into data stores.

:func:`ingest` reads a source file block by block (never whole, except that
an NPZ member stored compressed is loaded once), checks every value, and
writes features as float32 and labels as float64 through
:class:`storage.data.DataWriter`, so a failure leaves no store behind and
replaces nothing. Supported sources:

===========================  ==============================================
``.csv``, ``.txt`` (``.gz``)  comma-separated, header line optional
                              (auto-detected), label column chosen by name
                              or index, default the last column
``.npz``                      arrays ``X`` (n x d) and ``y`` (n,), optional
                              ``feature_names``
``.parquet``, ``.pq``         numeric feature columns (the label column may
                              hold text), read with pyarrow
===========================  ==============================================

A label column is text (class labels, stored as codes of the sorted labels,
which the store records as ``classes``) when more of its first block's values
are words than numbers, or always with ``text_labels`` (``--text-labels``);
else numeric, and a stray word is an error naming its line. As text, labels are
compared as written: ``'01'`` and ``'1'`` are two classes; as numbers both are
1.0. An NPZ or Parquet numeric column read as text gives each number's plain
text (:func:`storage.data.label_text`: ``1.0`` → ``'1'``).

An optional held-out test split goes to a second store: source row ``r``
(0-based) is held out when ``default_rng([seed, r // 65536]).random(65536)[r
% 65536] < test_fraction`` -- reproducible and independent of block sizes.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import functools
import gzip
import math
import re
import struct
import zipfile
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

from solvers.errors import InputError
from storage.data import DataStore, DataWriter, check_writable, label_text
from storage.paths import GZIP_KINDS, SOURCE_SUFFIXES, source_kind

SPLIT_BLOCK = 65536
NO_LABELS = object()  # label_column of features-only data (--no-labels): every column is a feature
_F32_MAX = float(np.finfo(np.float32).max)
LABEL_HINT = ("; the label column's first rows are numbers, so it is read as numeric labels: fix or remove that row "
              "(a label column of text, e.g. 'setosa', is read as class labels), or pass --text-labels to read every "
              "label as text (class names such as '1', 'cat')")
FEATURE_HINT = ("; features must be numbers (only the label column may hold text): drop such a column first, e.g. "
                "pandas.read_csv(f).drop(columns=[NAME]).to_csv(g, index=False), or, if it is the label, pass "
                "--label-column NAME (default: the last column)")
MAX_TEXT_CLASSES = 1000  # distinct text labels a label column may hold (as storage.data.MAX_LABELS)


class _Source(NamedTuple):
    """What a reader returns: the columns' names and how to read the rows."""

    feats: list  # feature names
    label_name: str
    blocks: Callable  # blocks(vocab=None) -> iterator of (first row, X, y); vocab: text labels, y their codes
    label_blocks: Callable | None  # () -> iterator of (first row, raw label values): the label column alone
    where: Callable  # where(row) -> "FILE: line N" / "FILE: row N" of a 0-based data row
    what: str  # how messages name the label column


class _BadValue(Exception):
    """Internal: value ``row`` (0-based in its block) of a column is unusable."""

    def __init__(self, row: int, reason: str):
        super().__init__(reason)
        self.row, self.reason = row, reason


def default_test_out(out) -> Path:
    """Return the default test-store path: ``DATA.zarr`` -> ``DATA-test.zarr``."""
    out = Path(out)
    if out.suffix == ".zarr":
        return out.with_name(out.stem + "-test.zarr")
    return out.with_name(out.name + "-test")


@functools.lru_cache(maxsize=4)
def _split_uniforms(seed: int, block: int) -> np.ndarray:
    """Return the uniforms that decide the split of source rows in one 65536-row block."""
    return np.random.default_rng([seed, block]).random(SPLIT_BLOCK)


def held_out_mask(start: int, stop: int, fraction: float, seed: int) -> np.ndarray:
    """Return, for source rows ``start..stop-1`` (0-based), which go to the test split."""
    mask = np.zeros(stop - start, dtype=bool)
    if fraction <= 0 or stop <= start:
        return mask
    for b in range(start // SPLIT_BLOCK, (stop - 1) // SPLIT_BLOCK + 1):
        lo, hi = max(start, b * SPLIT_BLOCK), min(stop, (b + 1) * SPLIT_BLOCK)
        u = _split_uniforms(seed, b)[lo - b * SPLIT_BLOCK:hi - b * SPLIT_BLOCK]
        mask[lo - start:hi - start] = u < fraction
    return mask


def _numeric(values, what: str, is_label: bool) -> np.ndarray:
    """Return one column as float64, raising _BadValue at its first non-number."""
    series = pd.Series(values)
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    if not (pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)):
        raise _BadValue(0, f"{what} has type {dtype}, not a number")
    converted = pd.to_numeric(series, errors="coerce")
    bad = np.flatnonzero(converted.isna().to_numpy() & series.notna().to_numpy())
    if bad.size:
        hint = LABEL_HINT if is_label else FEATURE_HINT.replace("NAME", _quoted_name(what))
        raise _BadValue(int(bad[0]), f"{what}: {series.iloc[bad[0]]!r} is not a number{hint}")
    return converted.to_numpy(dtype=np.float64, na_value=np.nan)


def _split_xy(columns, names: list[str], label: int):
    """Return (X float32, y float64) from per-column float64 arrays (or their rows × columns stack); _BadValue if not finite."""
    arr = columns if isinstance(columns, np.ndarray) else np.column_stack(columns)
    feats = [j for j in range(arr.shape[1]) if j != label]
    with np.errstate(over="ignore", invalid="ignore"):
        X = (arr[:, :-1] if label == arr.shape[1] - 1 else arr[:, feats]).astype(np.float32)
    y = np.zeros(len(arr)) if label is None else arr[:, label]  # no label column: zeros, never stored
    ok = np.isfinite(X).all(axis=1) & np.isfinite(y)
    if not ok.all():
        i = int(np.argmin(ok))
        row_ok = np.isfinite(np.append(X[i], y[i]))
        k = int(np.argmin(row_ok))
        j = label if k == len(feats) else feats[k]
        v = arr[i, j]
        why = ("is missing or NaN" if np.isnan(v) else "is infinite" if np.isinf(v)
               else f"{v!r} is too large for float32")
        raise _BadValue(int(i), f"{_colname(j, names)} {why}; remove or impute non-finite "
                                "values before ingesting")
    return X, y


def _quoted_name(what: str) -> str:
    """Return the quoted column name inside a message's ``column 3 ('id')`` (``'id'``), or ``'...'``."""
    m = re.search(r"\(('.*')\)$", what)
    return m[1] if m else "'...'"


def _colname(j: int, names: list[str]) -> str:
    """Return how messages name source column ``j`` (0-based)."""
    return f"column {j + 1} ({names[j]!r})"


def _frame_xy(df: pd.DataFrame, names: list[str], label: int, vocab=None):
    """Return (X, y) from a block of source columns, raising _BadValue at the first bad cell.

    ``vocab``: the sorted text labels of a text label column (:func:`_text_classes`); y is then their codes.
    """
    if vocab is None and all(isinstance(dtype, np.dtype) and dtype.kind in "iuf" for dtype in df.dtypes):
        return _split_xy(df.to_numpy(dtype=np.float64), names, label)  # all numbers: one conversion
    cols = [_encode_text(df.iloc[:, j], vocab, _colname(j, names)) if vocab is not None and j == label
            else _numeric(df.iloc[:, j], _colname(j, names), j == label) for j in range(df.shape[1])]
    return _split_xy(cols, names, label)


def _text(values) -> pd.Series:
    """Return label values as stripped text, missing ones (None, NaN) as ''; numbers (an NPZ or Parquet numeric
    column read as text) as their plain text (:func:`storage.data.label_text`)."""
    series = pd.Series(values)
    if series.dtype.kind in "iuf":
        v = series.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(v)
        distinct, index = np.unique(np.where(missing, 0.0, v), return_inverse=True)
        text = np.asarray([label_text(u) for u in distinct] or [""], dtype=object)[index.reshape(-1)]
        text[missing] = ""
        return pd.Series(text, index=series.index, dtype=object)
    return series.where(series.notna(), "").astype(str).str.strip()


def _encode_text(values, vocab: np.ndarray, what: str) -> np.ndarray:
    """Return the codes (index in the sorted ``vocab``) of text labels as float64; _BadValue at a missing or unknown one."""
    text = _text(values).to_numpy(dtype=str)
    codes = np.searchsorted(vocab, text)
    bad = np.flatnonzero((codes >= len(vocab)) | (vocab[np.minimum(codes, len(vocab) - 1)] != text))
    if bad.size:
        i = int(bad[0])
        raise _BadValue(i, f"{what} is empty (missing label)" if not text[i] else
                        f"{what}: {text[i]!r} was not there when the labels were read (the file changed?)")
    return codes.astype(np.float64)


def _text_classes(label_blocks, what: str, where, force: bool = False) -> np.ndarray | None:
    """Return the sorted distinct text labels of a label column, or None if it holds numbers (numeric labels).

    ``label_blocks()`` yields (first row, raw label values) block by block; ``where(row)`` names a 0-based data
    row in messages. The first block decides: no text there, or more numbers than text, numeric labels (a stray
    word is the numeric reading's error, naming its line); more text than numbers, every label is text (``'1'``
    too) and one more pass over the label column collects them. ``force`` (``--text-labels``): text, whatever the
    first block holds -- a test file from the same source whose first rows are mostly ``'1'``. An empty text label
    is an error.
    """
    blocks = iter(label_blocks())
    first = next(blocks, None)
    if first is None:
        return None
    start, values = first
    if not force:
        if getattr(values, "dtype", np.dtype(object)).kind in "iuf":  # a numeric NPZ array or Parquet column
            return None
        text = _text(values)
        numeric = pd.to_numeric(text.where(text != ""), errors="coerce").notna().to_numpy()
        words = np.flatnonzero(~numeric & (text != "").to_numpy())
        if not words.size:
            return None
        if numeric.sum() > words.size:  # numbers with a stray word: the numeric reading names its line (after any
            return None                 # bad feature before it, e.g. a header line read as data)
    seen: set[str] = set()
    for start, values in _chain(first, blocks):
        text = _text(values)
        empty = np.flatnonzero((text == "").to_numpy())
        if empty.size:
            raise InputError(f"{where(start + int(empty[0]))}: {what} is empty (missing label)")
        seen.update(text.unique().tolist())
        if len(seen) > MAX_TEXT_CLASSES:
            raise InputError(f"{what} holds more than {MAX_TEXT_CLASSES} distinct text values: an identifier or a "
                             "free-text column, not class labels; choose the label column with --label-column")
    return np.asarray(sorted(seen), dtype=str)


def _chain(first, rest):
    yield first
    yield from rest


def _resolve_label(label_column, names: list[str], has_names: bool, source: Path) -> int:
    """Return the 0-based index of the label column chosen by name, index or default."""
    n = len(names)
    if label_column is NO_LABELS:
        return None
    if n < 2:
        sep = next((c for c in ";\t|" if c in (names[0] if names else "")), None)
        hint = (f" (its first line holds {sep!r}: only commas separate columns here; save the file with commas, "
                f"e.g. pandas.read_csv(f, sep={sep!r}).to_csv(g, index=False))" if sep else "")
        raise InputError(f"{source}: found {n} column; need at least one feature and a label{hint}")
    if label_column is None:
        return n - 1
    if isinstance(label_column, str) and has_names and label_column in names:
        if names.count(label_column) > 1:
            raise InputError(f"{source}: label column name {label_column!r} appears "
                             f"{names.count(label_column)} times; pass its index instead")
        return names.index(label_column)
    if isinstance(label_column, str) and re.fullmatch(r"\s*-?\d+\s*", label_column):
        label_column = int(label_column)
    if isinstance(label_column, (int, np.integer)) and not isinstance(label_column, bool):
        if not -n <= label_column < n:
            raise InputError(f"{source}: label column index {label_column} is out of range "
                             f"for {n} columns (use 0..{n - 1} or -{n}..-1)")
        return int(label_column) % n
    if not has_names:
        raise InputError(f"{source}: label column {label_column!r} not found: the file has no "
                         "header line; pass an integer index, or --header if the first line "
                         "is a header")
    shown = ", ".join(map(repr, names[:11] + ["..."] + names[-1:] if n > 12 else names)).replace("'...'", "...")
    raise InputError(f"{source}: label column {label_column!r} not found; columns are {shown}"
                     + _did_you_mean(str(label_column), names))


def _did_you_mean(name: str, names: list) -> str:
    """Return ``" (did you mean 'Cover_Type'?)"`` for a name that differs in case or by a typo, else ``""``."""
    same = [c for c in names if str(c).casefold() == name.casefold()]
    close = same or difflib.get_close_matches(name, [str(c) for c in names], n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _default_names(n: int, label: int) -> list[str]:
    """Return names for unnamed columns: features x0, x1, ... and the label 'label'."""
    names, k = [], 0
    for j in range(n):
        names.append("label" if j == label else f"x{k}")
        k += j != label
    return names


# ----------------------------------------------------------------------------- CSV

def _open_text(path: Path):
    """Open a plain or gzip-compressed text file for reading lines."""
    if path.suffix.lower() == ".gz":  # as source_kind: HIGGS.CSV.GZ is gzip too
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _is_number(field: str) -> bool:
    """Return whether a CSV field parses as a number."""
    try:
        float(field)
        return True
    except ValueError:
        return False


def _data_line(path: Path, header: bool, row: int) -> tuple[int, str]:
    """Return (1-based line number, text) of data row ``row`` (0-based), skipping blank lines."""
    with _open_text(path) as f:
        k = -1
        for lineno, line in enumerate(f, start=1):
            if (header and lineno == 1) or not line.strip():
                continue
            k += 1
            if k == row:
                return lineno, line
    return -1, ""


def _diagnose_line(text: str, names: list[str], label: int, text_label: int | None = None) -> str | None:
    """Return what is wrong with one CSV data line, or None if it looks fine (``text_label``: a text label column)."""
    fields = next(csv.reader([text]), [])
    if len(fields) != len(names):
        return f"expected {len(names)} columns, found {len(fields)}"
    for j, field in enumerate(fields):
        field = field.strip()
        if j == text_label:
            if not field:
                return f"{_colname(j, names)} is empty (missing label)"
            continue
        if not field:
            return f"{_colname(j, names)} is empty (missing value)"
        if not _is_number(field):
            hint = LABEL_HINT if j == label else FEATURE_HINT.replace("NAME", repr(names[j]))
            return f"{_colname(j, names)}: {field!r} is not a number{hint}"
        v = float(field)
        if not math.isfinite(v):
            return f"{_colname(j, names)}: {field!r} is NaN or infinite"
        if j != label and abs(v) > _F32_MAX:
            return f"{_colname(j, names)}: {field!r} is too large for float32"
    return None


def _read_csv(path: Path, label_column, header, block_rows):
    """Return (feature names, label name, blocks(vocab) -> block iterator, label column reader or None) for a CSV file."""
    try:
        with _open_text(path) as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise InputError(f"{path}: cannot read as (gzip) UTF-8 text: {err}") from None
    if not first.strip():
        raise InputError(f"{path}: the first line is empty; the file must start with a "
                         "header or a data line")
    fields = [f.strip() for f in next(csv.reader([first]))]
    if header is None:
        header = any(f and not _is_number(f) for f in fields)
    names = fields if header else [""] * len(fields)
    label = _resolve_label(label_column, names, header, path)
    if not header:
        names = _default_names(len(fields), label)
    rows = block_rows or _default_block_rows(len(fields))

    def read(**options):  # text labels: the label column as text, '' for an empty cell ('NA' is a label then)
        return pd.read_csv(path, header=None, skiprows=1 if header else 0, chunksize=rows, compression="infer",
                           encoding="utf-8", **options)

    def label_blocks():
        start = 0
        try:
            with read(usecols=[label], dtype=str, keep_default_na=False) as reader:
                for df in reader:
                    yield start, df.iloc[:, 0]
                    start += len(df)
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError, EOFError, gzip.BadGzipFile,
                zipfile.BadZipFile):
            return  # a damaged file: the full read below names the line

    def blocks(vocab=None):
        start = 0
        try:
            reader = read(**({} if vocab is None else {"dtype": {label: str}, "keep_default_na": False}))
            with reader:
                for df in reader:
                    try:
                        if df.shape[1] != len(names):
                            raise _BadValue(0, f"expected {len(names)} columns, "
                                               f"found {df.shape[1]}")
                        X, y = _frame_xy(df, names, label, vocab)
                    except _BadValue as bad:
                        lineno, text = _data_line(path, header, start + bad.row)
                        why = (_diagnose_line(text, names, None if vocab is not None else label,
                                              text_label=label if vocab is not None else None) or bad.reason)
                        raise InputError(f"{path}: line {lineno}: {why}") from None
                    yield start, X, y
                    start += len(df)
        except pd.errors.ParserError as err:
            m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
            if m:
                raise InputError(f"{path}: line {m[2]}: expected {m[1]} columns, "
                                 f"found {m[3]}") from None
            raise InputError(f"{path}: cannot parse as CSV: {err}") from None
        except pd.errors.EmptyDataError:
            return
        except (UnicodeDecodeError, EOFError, gzip.BadGzipFile, zipfile.BadZipFile) as err:
            raise InputError(f"{path}: cannot read past data row {start} (corrupt or "
                             f"truncated file?): {err}") from None

    feats = [n for j, n in enumerate(names) if j != label]
    return _Source(feats, "" if label is None else names[label], blocks, None if label is None else label_blocks,
                   lambda row: f"{path}: line {_data_line(path, header, row)[0]}",
                   "" if label is None else _colname(label, names))


# ----------------------------------------------------------------------------- NPZ

def _mmap_member(path: Path, key: str):
    """Return an uncompressed NPZ member as a read-only memmap, or None if impossible."""
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(key + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            if local[:4] != b"PK\x03\x04":
                return None
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
        if dtype.hasobject or 0 in shape:
            return None
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                         order="F" if fortran else "C")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _read_npz(path: Path, label_column, block_rows):
    """Return (feature names, label name, block iterator) for an NPZ file with X and y."""
    labels = label_column is not NO_LABELS
    if label_column is not None and labels:
        raise InputError(f"{path}: --label-column applies to CSV and Parquet; an NPZ file "
                         "holds separate arrays X and y")
    if path.is_file() and not zipfile.is_zipfile(path):  # np.load reads it as a pickle and advises allow_pickle=
        raise InputError(f"{path}: not a readable .npz file (not a zip archive; np.savez writes one)")
    try:
        npz = np.load(path, allow_pickle=False)
        keys = set(npz.files)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not a readable .npz file: {err}") from None
    with npz:
        if not ({"X", "y"} if labels else {"X"}) <= keys:
            raise InputError(f"{path}: an NPZ source needs arrays 'X' and 'y' ('X' with --no-labels); "
                             f"it has {sorted(keys)}")
        arrays = {}
        for key in ("X", "y") if labels else ("X",):
            a = _mmap_member(path, key)
            try:
                arrays[key] = a if a is not None else npz[key]
            except ValueError as err:
                raise InputError(f"{path}: cannot load array {key!r} ({err}); save numeric arrays (text labels "
                                 "as a str array: numpy.asarray(y, dtype=str))") from None
        names = [str(n) for n in npz["feature_names"]] if "feature_names" in keys else None
    X = arrays["X"]
    y = arrays["y"] if labels else np.zeros(X.shape[0] if X.ndim else 0)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise InputError(f"{path}: X must be 2-D and y 1-D with one label per row of X; "
                         f"got shapes {X.shape} and {y.shape}")
    if X.dtype.kind not in "biuf":
        raise InputError(f"{path}: X has dtype {X.dtype}; it must be numeric")
    if names is None or len(names) != X.shape[1]:
        names = [f"x{j}" for j in range(X.shape[1])]
    cols = names + ["y"]
    rows = block_rows or _default_block_rows(X.shape[1] + 1)

    def blocks(vocab=None):
        for start in range(0, X.shape[0], rows):
            xb, yb = np.asarray(X[start:start + rows], dtype=np.float64), y[start:start + rows]
            try:
                yf = _numeric(yb, "label y", True) if vocab is None else _encode_text(yb, vocab, "label y")
                yield (start, *_split_xy([*xb.T, yf], cols, len(cols) - 1))
            except _BadValue as bad:
                raise InputError(f"{path}: row {start + bad.row + 1}: {bad.reason}") from None

    def label_blocks():
        for start in range(0, y.shape[0], rows):
            yield start, np.asarray(y[start:start + rows])

    return _Source(names, "y", blocks, label_blocks if labels and y.dtype.kind in "USiuf" else None,
                   lambda row: f"{path}: row {row + 1}", "label y")


# ----------------------------------------------------------------------------- Parquet

def _read_parquet(path: Path, label_column, block_rows):
    """Return (feature names, label name, block iterator) for a Parquet file."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError('reading Parquet needs pyarrow: '
                         'pip install "admm-dask[parquet]"') from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise InputError(f"{path}: not a readable Parquet file: {err}") from None
    names = [str(n) for n in pf.schema_arrow.names]
    label = _resolve_label(label_column, names, True, path)
    rows = block_rows or _default_block_rows(len(names))

    def blocks(vocab=None):
        start = 0
        for batch in pf.iter_batches(batch_size=rows):
            try:
                yield (start, *_frame_xy(batch.to_pandas(), names, label, vocab))
            except _BadValue as bad:
                raise InputError(f"{path}: row {start + bad.row + 1}: {bad.reason}") from None
            start += batch.num_rows

    def label_blocks():
        start = 0
        for batch in pf.iter_batches(batch_size=rows, columns=[names[label]]):
            yield start, batch.to_pandas().iloc[:, 0]
            start += batch.num_rows

    feats = [n for j, n in enumerate(names) if j != label]
    return _Source(feats, "" if label is None else names[label], blocks, None if label is None else label_blocks,
                   lambda row: f"{path}: row {row + 1}", "" if label is None else _colname(label, names))


# ----------------------------------------------------------------------------- driver

def _default_block_rows(n_columns: int) -> int:
    """Return source rows per read block: about 4 M values, within [1024, 262144]."""
    return int(min(max(2**22 // max(n_columns, 1), 1024), 262144))


def _reader_for(source: Path):
    """Return the reader of a source file, chosen by its suffix (:func:`storage.paths.source_kind`)."""
    kind = source_kind(source)
    if kind is not None:
        return kind
    gz = [s for s, k in SOURCE_SUFFIXES.items() if k in GZIP_KINDS]
    raise InputError(f"{source}: unknown file type {''.join(source.suffixes)!r}; supported are "
                     f"{', '.join(SOURCE_SUFFIXES)} ({', '.join(gz)} also gzip-compressed: {gz[0]}.gz)")


def _open_source(path: Path, kind: str, label_column, header, block_rows, text_labels):
    """Return (feature names, label name, block iterator, text labels or None) of one source file."""
    if kind == "csv":
        src = _read_csv(path, label_column, header, block_rows)
    elif kind == "npz":
        src = _read_npz(path, label_column, block_rows)
    else:
        src = _read_parquet(path, label_column, block_rows)
    vocab = None if src.label_blocks is None else _text_classes(src.label_blocks, src.what, src.where, text_labels)
    return src.feats, src.label_name, src.blocks(vocab), vocab


def ingest(source, out, *, label_column=None, test_fraction=0.0, test_out=None, seed=0,
           chunk_rows=None, header=None, overwrite=False, progress=None, block_rows=None,
           labels=True, text_labels=False, test_source=None) -> tuple[DataStore, DataStore | None]:
    """Stream a CSV, NPZ or Parquet file into a data store (and a held-out test store, or one of a second file).

    Parameters
    ----------
    source : str or path-like
        Input file; its type is chosen by suffix (see the module docstring).
    out : str or path-like
        Target data store for the training rows.
    label_column : str or int, optional
        Label column by header name or index (negative counts from the end);
        default the last column. Not allowed for NPZ (arrays X and y).
    test_fraction : float
        Fraction in [0, 1) of rows held out into ``test_out``.
    test_out : str or path-like, optional
        Default ``out`` with ``.zarr`` replaced by ``-test.zarr``.
    test_source : str or path-like, optional
        A second file, the held-out rows of a split made beforehand, written
        whole to ``test_out`` with the same options (``--test-source``): the
        same two stores as two ingestions, one file each, in one process; not
        with ``test_fraction`` > 0 or ``labels=False``. Neither store is
        written when either file is bad.
    seed : int
        Non-negative seed of the reproducible split rule.
    chunk_rows : int, optional
        Rows per stored chunk; default :func:`storage.data.default_chunk_rows`.
    header : bool, optional
        CSV only: force a header line (True) or none (False); default detect.
    overwrite : bool
        Replace existing data stores, but only once the new ones are complete.
    labels : bool
        False: every column is a feature and the store has no ``y`` (data to
        predict on; ``python -m pipeline.ingest --no-labels``).
    text_labels : bool
        Read the label column as text (class names) whatever its first rows
        hold (``--text-labels``); default: text when words are the majority
        of the first block (see the module docstring).
    progress : callable, optional
        Called as ``progress(rows_read)`` after each block.
    block_rows : int, optional
        Source rows read per block (memory bound); default about 4 M values.

    Returns
    -------
    (DataStore, DataStore or None)
        The training store, and the test store when ``test_fraction > 0`` or ``test_source`` is given.

    Raises
    ------
    solvers.errors.InputError
        For a bad source (naming the 1-based line or row and the problem),
        bad options, an empty split, or an existing output without ``overwrite``.
    """
    source, out = Path(source), Path(out)
    if not 0 <= test_fraction < 1:
        raise InputError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    for name, value in (("chunk_rows", chunk_rows), ("block_rows", block_rows)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    test_source = None if test_source is None else Path(test_source)
    if test_source is not None and test_fraction > 0:
        raise InputError("--test-source and --test-fraction exclude each other: the test rows are the second "
                         "file's, or held out of the first")
    if test_source is not None and not labels:
        raise InputError("--test-source and --no-labels exclude each other: a test store needs labels")
    if test_fraction == 0 and test_source is None and test_out is not None:
        raise InputError("a test output path needs test_fraction > 0 (--test-fraction) or a test source file "
                         "(--test-source)")
    test_out = None if test_fraction == 0 and test_source is None else Path(test_out or default_test_out(out))
    for path in (source, test_source):
        if path is None:
            continue
        if not path.exists():
            raise InputError(f"source file {path} does not exist")
        if path.is_dir():
            raise InputError(f"source {path} is a directory; pass a CSV, NPZ or Parquet file")
    if test_out is not None and test_out.resolve() == out.resolve():
        raise InputError(f"the test store must differ from the training store ({out})")
    if not labels:
        if label_column is not None:
            raise InputError("--label-column and --no-labels exclude each other: data without labels has "
                             "no label column")
        label_column = NO_LABELS
        if text_labels:
            raise InputError("--text-labels and --no-labels exclude each other: data without labels has no label "
                             "column")
    paths = [path for path in (source, test_source) if path is not None]
    kinds = [_reader_for(path) for path in paths]  # both files checked before either is read
    for path, kind in zip(paths, kinds):
        if header is not None and kind != "csv":
            raise InputError(f"{path}: --header/--no-header apply to CSV files only")
    for path in (out, test_out):
        if path is not None:
            check_writable(path, overwrite)
    feats, label_name, blocks, vocab = _open_source(source, kinds[0], label_column, header, block_rows, text_labels)
    options = dict(chunk_rows=chunk_rows, feature_names=feats, label_name=label_name, source=source.name,
                   overwrite=overwrite, labels=labels, classes=None if vocab is None else vocab.tolist())
    test_options, test_blocks = options, None
    if test_source is not None:  # its own header, label kind and text labels: as an ingestion of that file alone
        test_feats, test_label, test_blocks, test_vocab = _open_source(test_source, kinds[1], label_column, header,
                                                                       block_rows, text_labels)
        if len(test_feats) != len(feats):
            raise InputError(f"{test_source} has {len(test_feats)} feature columns but {source} has {len(feats)}: "
                             "the test file must hold the same columns")
        unnamed = [f"x{j}" for j in range(len(feats))]  # a file without names (headerless CSV, NPZ without them)
        if unnamed not in (feats, test_feats) and test_feats != feats:  # both named, differently (review17 L1)
            j = next(j for j, (a, b) in enumerate(zip(feats, test_feats)) if a != b)
            raise InputError(f"{test_source}'s feature column {j + 1} is {test_feats[j]!r} but {source}'s is "
                             f"{feats[j]!r}: the test file must hold the same columns in the same order")
        test_options = dict(options, feature_names=test_feats, label_name=test_label, source=test_source.name,
                            classes=None if test_vocab is None else test_vocab.tolist())
    with contextlib.ExitStack() as stack:  # a bad row of either file: neither store is written
        train = stack.enter_context(DataWriter(out, len(feats), **options))
        test = (stack.enter_context(DataWriter(test_out, len(feats), **test_options))
                if test_out is not None else None)
        read = 0
        for start, X, y in blocks:
            mask = held_out_mask(start, start + len(y), test_fraction, seed)
            if test is not None and mask.any():
                train.append(X[~mask], y[~mask])
                test.append(X[mask], y[mask])
            else:
                train.append(X, y)
            read = start + len(y)
            if progress is not None:
                progress(read)
        if read == 0:
            raise InputError(f"{source} holds no data rows")
        if test_blocks is not None:
            test_read = 0
            for start, X, y in test_blocks:
                test.append(X, y)
                test_read = start + len(y)
                if progress is not None:
                    progress(read + test_read)
            if test_read == 0:
                raise InputError(f"{test_source} holds no data rows")
        for writer, what in ((train, "training"), (test, "test")):
            if writer is not None and writer.n_rows == 0:
                raise InputError(f"the {what} split of {source} is empty ({read} rows, "
                                 f"test_fraction={test_fraction}); change --test-fraction")
    return train.store, (test.store if test is not None else None)
