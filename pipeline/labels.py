"""Class labels across stores: the original labels a run was trained on, and their codes in another data store.

A data store whose labels were encoded (text labels from ``python -m pipeline.ingest``, any labels written by the
estimators) records them as ``classes`` and holds the code ``k`` of ``classes[k]`` in ``y``
(:mod:`storage.data`). A run trained on it records the labels of its classes (its data record's ``class_labels``)
beside the class codes, so ``predict``, ``evaluate``, ``report`` and the estimators give back the original labels,
and a test store ingested on its own (other codes for the same labels) is scored by label, not by code.
Runs and stores without these records (numeric labels, earlier versions) use the labels in ``y`` as before.

Text labels against numeric ones (a test file whose labels were read as numbers, of a run trained on text labels,
or the other way round) are compared by the numbers' plain text (:func:`storage.data.label_text`): ``'1'`` matches
1, ``'01'`` and ``'1.0'`` do not (``python -m pipeline.ingest --text-labels`` keeps labels as written).
"""
from __future__ import annotations

import numpy as np

from solvers.errors import InputError
from storage.data import DataStore, label_text


def labels_for(data: DataStore, classes) -> list | None:
    """Return the original labels of the class codes ``classes`` of training store ``data`` (None: ``y`` holds them)."""
    if data.classes is None or classes is None:
        return None
    return [data.classes[int(c)] for c in np.asarray(classes)]


def run_labels(attrs: dict) -> np.ndarray | None:
    """Return the original labels of a run's classes from its attributes (None: the class codes are the labels)."""
    recorded = (attrs.get("data") or {}).get("class_labels")
    return None if recorded is None else np.asarray(recorded)


def shown(values, n: int = 10) -> str:
    """Return up to ``n`` labels for a message: ``setosa, versicolor …``, whole floats as integers."""
    values = list(values)
    text = ", ".join(str(int(v)) if isinstance(v, (float, np.floating)) and float(v).is_integer() else str(v)
                     for v in values[:n])
    return text + (" …" if len(values) > n else "")


def _kind(values: np.ndarray) -> str:
    return "text" if values.dtype.kind in "USO" else "numeric"


def codes_in(store: DataStore, classes, labels=None) -> np.ndarray:
    """Return a run's classes as the label codes of data store ``store`` (what its ``y`` holds for each class).

    ``classes`` are the run's class codes, ``labels`` their original labels (None: the codes are the labels).
    Both lists are sorted, so the result increases: a label ``store`` does not have gets a code between its
    neighbours' that no row holds (its rows: none; the store's rows of labels the run has not: no class). A
    run and store without label records give ``classes`` unchanged. Text labels against numbers are compared by
    the numbers' plain text (:func:`_across_kinds`; the result need not increase, a missing label's code is NaN).
    """
    classes = np.asarray(classes)
    if store.classes is None and labels is None:
        return classes
    labels = classes if labels is None else np.asarray(labels)
    ref = None if store.classes is None else np.asarray(store.classes)
    if _kind(labels) != _kind(labels if ref is None else ref) or (ref is None and _kind(labels) == "text"):
        return _across_kinds(store, labels, ref)
    if ref is None:  # numeric labels in y, numeric labels recorded by the run (an estimator's 2, 5, 9)
        return labels.astype(np.float64)
    pos = np.searchsorted(ref, labels)
    hit = (pos < len(ref)) & (ref[np.minimum(pos, len(ref) - 1)] == labels)
    gap = np.arange(len(labels)) / (2.0 * len(labels) + 2)  # distinct and below 0.5: misses stay in order
    return np.where(hit, pos, pos - 0.5 + gap).astype(np.float64)


def _across_kinds(store: DataStore, labels: np.ndarray, ref: np.ndarray | None) -> np.ndarray:
    """Return the codes in ``store`` of the run's ``labels`` when one side has text labels and the other numbers.

    A label matches by text, a number by its plain text (:func:`storage.data.label_text`: 1.0 is ``'1'``, so
    ``'01'`` matches nothing); one the store lacks gets code NaN, which no row holds. ``ref``: the store's recorded
    labels (None: ``y`` holds the numbers themselves). Raises :class:`InputError` when no label could match: the
    text side holds no plain number that the other side has (setosa against 0, 1, 2).
    """
    def as_text(values):
        return [v if isinstance(v, str) else label_text(v) for v in values.tolist()]

    run_text = as_text(labels)
    if ref is None:  # y holds numbers: those the store recorded, else every plain number may be there
        recorded = (store.statistics or {}).get("labels")
        codes = [float(t) if _plain_number(t) else np.nan for t in run_text]
        found = [c for c in codes if c == c and (recorded is None or c in set(np.asarray(recorded).tolist()))]
    else:
        where = {t: k for k, t in enumerate(as_text(ref))}
        codes = [float(where[t]) if t in where else np.nan for t in run_text]
        found = [c for c in codes if c == c]
    if not found:
        store_kind = "numeric labels" if ref is None else f"{_kind(ref)} labels ({shown(ref, 5)})"
        raise InputError(f"data store {store.path} has {store_kind}, the run's classes are {_kind(labels)} "
                         f"({shown(labels, 5)}): pass data with the labels the run was trained on (text and numeric "
                         "labels are compared by the numbers' plain text: '1' matches 1, '01' and '1.0' do not; "
                         "python -m pipeline.ingest --text-labels reads labels as text)")
    return np.asarray(codes, np.float64)


def _plain_number(text: str) -> bool:
    """Return True if ``text`` is a number's plain text (:func:`storage.data.label_text`): ``'1'``, not ``'01'``."""
    try:
        return label_text(float(text)) == text
    except ValueError:
        return False


def labels_of_codes(store: DataStore, codes) -> list:
    """Return the labels of codes of ``store``'s ``y`` (the codes themselves when it records none)."""
    if store.classes is None:
        return list(codes)
    return [store.classes[int(c)] for c in codes]
