"""The estimator's in-memory input check: scikit-learn's ``validate_data``, with one clear line per bad input.

scikit-learn decides what is accepted (its dtype conversion, pandas and list
input, feature names, the number of features); this module only rewrites the
messages of the bad inputs users make, which scikit-learn reports in several
lines (NaN in ``X`` adds advice to use HistGradientBoosting) or without saying
where: NaN or inf in ``X`` or ``y`` (named by row and column, 0-based, as
``X[row, column]`` indexes them), a 1-D or scalar ``X``, and ``X`` and ``y`` of
different lengths. The exception stays a ``ValueError``, so ``except
ValueError`` and scikit-learn's ``check_estimator`` see what they expect
(``inf``/``NaN`` and ``Reshape your data`` stay in the messages). Other
messages pass through unchanged.
"""
from __future__ import annotations

import numpy as np
from sklearn.utils.validation import validate_data


def validated(estimator, X, y="no_validation", *, action: str, **kwargs):
    """Return ``validate_data(estimator, X, y, **kwargs)``; a ValueError of a known bad input gets one clear line.

    ``action``: what the input is for, as the message says it ("fitting", "predicting").
    """
    try:
        return validate_data(estimator, X, y, **kwargs)
    except ValueError as error:
        line = _one_line(str(error), X, y, action)
        if line is None:
            raise
    raise ValueError(line)  # outside the except: the multi-line original is not chained under it


def _one_line(message: str, X, y, action: str) -> str | None:
    """Return the one-line message for scikit-learn's ``message`` about ``(X, y)``, or None to keep the original."""
    try:
        if message.startswith("Expected 2D array"):
            return _not_2d(np.asarray(X), action)
        if message.startswith(("Input X contains NaN", "Input X contains infinity")):
            return _first_nonfinite("X", X, action)
        if message.startswith(("Input y contains NaN", "Input y contains infinity", "Input contains NaN")):
            return _first_nonfinite("y", y, action)  # the last: text labels' NaN (X is numeric by then)
        if message.startswith("Found array with 0 sample(s)") and _rows(X) == 0:
            return f"X is empty (shape {np.shape(X)}); {action} needs at least one row"
        if message.startswith("Found input variables with inconsistent numbers of samples"):
            n_x, n_y = _rows(X), _rows(y)
            return (f"X has {n_x} rows but y has {n_y} values; give one target per row of X"
                    if n_x != n_y else None)
    except (TypeError, ValueError):  # an input we cannot read as scikit-learn did: its own message
        return None
    return None


def check_labels_present(y, action: str) -> None:
    """Raise ValueError naming the first missing class label (None, pandas' NA) of text labels ``y``.

    scikit-learn's check passes None in an object ``y``; sorting the classes then failed with a TypeError.
    """
    if np.asarray(y).dtype.kind == "O":
        line = _first_nonfinite("y", y, action)
        if line is not None:
            raise ValueError(line)


def _not_2d(A: np.ndarray, action: str) -> str:
    """Return the message for ``X`` that is not 2-D (scalar or 1-D)."""
    if A.size == 0:
        return f"X is empty (shape {A.shape}); {action} needs a 2-D array (rows, features) with at least one row"
    got = f"a scalar ({A.item()!r})" if A.ndim == 0 else f"a {A.ndim}-D array of shape {A.shape}"
    return (f"X must be 2-D (rows, features), got {got}. Reshape your data: X.reshape(-1, 1) if it is one "
            f"feature, X.reshape(1, -1) if it is one row")


def _rows(a) -> int:
    """Return the number of rows (samples) of an array-like."""
    shape = getattr(a, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) else len(a)


def _bad_mask(A: np.ndarray) -> np.ndarray:
    """Return where ``A`` is NaN, inf or missing (None, pandas' NA)."""
    if A.dtype.kind in "fc":
        return ~np.isfinite(A)
    if A.dtype.kind == "O":
        try:
            return ~np.isfinite(A.astype(np.float64))
        except (TypeError, ValueError):  # text with missing values (class labels)
            import pandas as pd

            return np.asarray(pd.isna(A), bool)
    return np.zeros(A.shape, bool)  # integers and booleans are finite


def _describe(v) -> str:
    """Return how a message names the non-finite value ``v``: NaN, inf, -inf, or its repr (None, <NA>)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return repr(v)
    return "NaN" if np.isnan(f) else "inf" if f > 0 else "-inf"


def _first_nonfinite(name: str, data, action: str) -> str | None:
    """Return the message naming the first non-finite value of ``X`` or ``y`` (row, and column for X), or None."""
    A = np.asarray(data)
    if name == "y" and A.ndim == 2 and A.shape[1] == 1:
        A = A[:, 0]  # a column vector: scikit-learn ravels it
    if A.ndim not in (1, 2):
        return None
    bad = np.flatnonzero(_bad_mask(A))
    if not len(bad):  # finite here but too large for the dtype scikit-learn converted to: its own message
        return None
    count = f"{len(bad)} non-finite value{'s' if len(bad) > 1 else ''} in {name}"
    if A.ndim == 1:
        i = int(bad[0])
        return (f"{name} contains {_describe(A[i])} at row {i} (0-based; {count}); remove those rows or fill in "
                f"their values before {action}")
    i, j = divmod(int(bad[0]), A.shape[1])
    columns = getattr(data, "columns", None)
    label = f" ({columns[j]!r})" if columns is not None and len(columns) == A.shape[1] else ""
    return (f"{name} contains {_describe(A[i, j])} at row {i}, column {j}{label} (0-based; {count}); remove "
            f"or impute non-finite values before {action}")
