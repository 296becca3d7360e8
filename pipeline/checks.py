"""Checks of a training's inputs, before any cluster starts and before anything is written."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from solvers.errors import InputError
from storage.data import DataStore, fingerprint_differences, label_text, open_data
from storage.lock import check_not_written, check_unlocked
from storage.runstore import RunStore, check_creatable, recover_replaced_locked


def recorded_data(run: RunStore, data=None):
    """Return the training data a resume of ``run`` reads: ``data`` (``--data``) or the path the run recorded.

    Raise :class:`InputError` naming ``--data`` if the run records none, or if the recorded store is not there (a
    moved data set: it may be given at its new place, its fingerprint is checked).
    """
    if data is not None:
        return data
    recorded = (run.attrs.get("data") or {}).get("path")
    if not recorded:
        raise InputError(f"run {run.path} records no training data: pass --data with the data set it was trained on "
                         "(its fingerprint is checked where the run recorded one)")
    if not Path(recorded).exists():
        raise InputError(f"the training data of run {run.path}, {recorded}, is not there (moved or deleted): pass "
                         "--data with the same data set at its new place (its fingerprint is checked)")
    return recorded


def check_resumable(store: RunStore, data: DataStore):
    """Raise :class:`InputError` unless ``data`` is the data set the run ``store`` was trained on (a run that
    records no fingerprint takes the data it is given)."""
    data.require_labels("train")
    expected = (store.attrs.get("data") or {}).get("fingerprint")
    diffs = fingerprint_differences(expected, data) if expected else []
    if diffs:
        raise InputError(f"{data.path} is not the data set run {store.path} was trained on ("
                         + "; ".join(diffs) + ")")


def check_resume_total(run: RunStore, target) -> None:
    """Raise :class:`InputError` if the resume's total ``target`` (``--iterations``) is below the iterations ``run``
    has committed: before any warning, cluster or write."""
    done = run.committed_iteration()
    if target is None or done is None or int(target) >= done:
        return
    target = int(target)
    more = (f"pass --iterations {done + target} for {target} more" if target > 0 else
            f"pass a total above {done}")
    raise InputError(f"run {run.path} already has {done} iterations and --iterations is the total: {more}")


def check_test_data(test_data, data: DataStore) -> DataStore | None:
    """Return the opened test data store (None without one); its width must be the training data's."""
    test = open_data(test_data) if test_data else None
    if test is not None:
        test.require_labels("score the model (--test-data)")
    if test is not None and test.n_features != data.n_features:
        raise InputError(f"test data {test.path} has {test.n_features} features, training data has {data.n_features}")
    if test is not None and (test.classes is not None or data.classes is not None):  # text against numeric labels
        from pipeline.labels import codes_in

        known = (data.statistics or {}).get("labels")  # the training labels (numeric: as stored)
        if data.classes or known is not None:  # else (a store of an earlier version) train's own codes_in checks
            codes_in(test, np.arange(len(data.classes)) if data.classes else known, data.classes)
    return test


def check_chunk_rows(chunk_rows, data: DataStore):
    """Raise :class:`InputError` unless ``--chunk-rows`` is between 1 and the number of samples."""
    if chunk_rows is not None and not (1 <= chunk_rows <= data.n_samples):
        raise InputError(f"--chunk-rows {chunk_rows} must be between 1 and the number of samples "
                         f"({data.n_samples})")


def check_inputs(*, store, data=None, test_data=None, resume=False, overwrite=False, chunk_rows=None,
                 iterations=None, report=None, class_rows=False):
    """Raise :class:`InputError` for unusable stores (and a resume's total ``iterations`` below the run's) before
    any cluster is started.

    First, as every train does, it finishes an ``--overwrite`` a kill -9 cut short before its new run's first commit
    (:func:`storage.runstore.recover_replaced_locked`: the run it kept aside is put back, under the run lock, and
    ``report`` says so), so what follows checks the run the store holds: a plain train is then refused as for any
    existing run, a ``--resume`` checks the run it will continue (not the killed run's data and total).

    ``class_rows``: a new classification run whose task the user did not choose (no ``--task``) gets
    :func:`check_class_rows` here, in this process, from the labels the data store recorded: a forgotten
    ``--task regression`` is then the only line, before any warning and before the cluster's lines (newuser16 F8).
    """
    recover_replaced_locked(store, report=report)
    for path in (data, test_data):
        if path is not None:  # an ingestion under way: refused before a cluster starts (and, read-locked, in train)
            check_not_written(path)
    if resume:  # the recorded stores too, and the data's fingerprint: a bad input is one line (before any warning)
        run = RunStore.open(store)
        check_resume_total(run, iterations)
        recorded = recorded_data(run, data)
        for path in (recorded if data is None else None, None if test_data else run.attrs.get("test_data")):
            if path:
                check_not_written(path)
        check_resumable(run, open_data(recorded))
        if test_data:  # a new --test-data: its width and label kind, before a cluster starts
            check_test_data(test_data, open_data(recorded))
    else:
        if data is None:
            raise InputError("no training data given: pass --data DATA.zarr")
        ds = open_data(data)
        ds.require_labels("train")
        check_chunk_rows(chunk_rows, ds)
        check_creatable(store, overwrite, inputs=(data, test_data))
        check_test_data(test_data, ds)
        if class_rows:
            check_class_rows(None, ds, (ds.statistics or {}).get("labels"))
        folder = next((p for p in Path(store).absolute().parents if p.exists()), None)
        if folder is not None and not folder.is_dir():
            raise InputError(f"cannot create run store {store}: {folder} is a file, not a folder")
    check_unlocked(store)
    if test_data:
        open_data(test_data)


MANY_CLASSES = 20  # more classes than this, most of them with fewer than FEW_ROWS rows: a count or a measurement
FEW_ROWS = 3  # a class needs a few rows to be learned and scored (held-out rows are a share of them)


def check_class_rows(client, data, classes) -> None:
    """Refuse more than :data:`MANY_CLASSES` classes most of which have fewer than :data:`FEW_ROWS` rows.

    A whole-number target with many distinct values (a count, an age, a score: diabetes' 198 values for 355
    rows) is a regression target: as classes, most have one or two rows (diabetes: 159 of 198), so nothing
    generalises (:func:`solvers.driver.classes_of` refuses such targets that are not whole numbers). One pass
    over ``y``, only with that many classes; a many-class task with a few rows for most classes trains.
    ``client`` None: the pass runs in this process, chunk by chunk (:func:`check_inputs`, before a cluster starts).
    """
    if classes is None or len(classes) <= MANY_CLASSES:
        return
    from pipeline.passes import bounds, other_labels_graph

    graph = other_labels_graph(data.path.resolve(), bounds(data.n_samples, data.chunk_rows), [])
    counts = client.compute(graph, sync=True) if client is not None else _count_labels(data)
    problem = class_rows_problem(list(counts.values()), data.n_samples)
    if problem:
        raise InputError(f"{problem}; pass --task regression, or --task classification if these are classes")


def _count_labels(data: DataStore) -> dict:
    """Return {label: rows} of a data store's ``y``, read here chunk by chunk (checked: :func:`storage.data.read_rows`)."""
    from storage.data import read_rows

    counts = {}
    for start in range(0, data.n_samples, data.chunk_rows):
        values, rows = np.unique(read_rows(str(data.path), "y", start, min(start + data.chunk_rows, data.n_samples)),
                                 return_counts=True)
        for value, n in zip(values.tolist(), rows.tolist()):
            counts[value] = counts.get(value, 0) + n
    return counts


def class_rows_problem(counts, n_samples: int) -> str | None:
    """Return why labels with these per-class row ``counts`` look like a count or a measurement, or None.

    More than :data:`MANY_CLASSES` classes, most of them with fewer than :data:`FEW_ROWS` rows
    (:func:`check_class_rows`; the estimators warn with the same words).
    """
    if len(counts) <= MANY_CLASSES:
        return None
    few = sum(1 for rows in counts if rows < FEW_ROWS)
    if 2 * few <= len(counts):
        return None
    return (f"the labels take {len(counts)} distinct values for {n_samples} rows and {few} of them have fewer than "
            f"{FEW_ROWS} rows: a count or a measurement, not classes (classification takes more than {MANY_CLASSES} "
            f"labels only when most have {FEW_ROWS} rows or more)")


def unseen_test_labels_warning(test_data, data) -> str | None:
    """Return a warning line if ``--test-data`` has class labels the training data has not (their rows count as
    wrong in every test accuracy), else None.

    From the labels both stores recorded when they were written (no pass over the data); None if either has no
    such record (written before it, or more than ``MAX_LABELS`` distinct values).
    """
    from pipeline.labels import shown

    if not test_data or data is None:
        return None
    known, test = _recorded_labels(open_data(data)), _recorded_labels(open_data(test_data))
    if known is None or test is None:
        return None
    if (known.dtype.kind in "U") != (test.dtype.kind in "U"):  # text against numbers: by the numbers' plain text
        known, test = (np.asarray([label_text(v) for v in a.tolist()]) if a.dtype.kind not in "U" else a
                       for a in (known, test))  # (pipeline.labels.codes_in); no label in common: its refusal
    unseen = np.setdiff1d(test, known)
    if not unseen.size:
        return None
    return (f"warning: test data {test_data} has labels the training data {data} does not have, so its rows with "
            f"them count as wrong in the test accuracy: {shown(unseen)}")


def _recorded_labels(ds: DataStore):
    """Return the distinct labels a data store recorded when it was written (its text labels: as text), or None."""
    codes = (ds.statistics or {}).get("labels")
    if codes is None:
        return None
    if ds.classes is None:
        return np.asarray(codes, np.float64)
    return np.asarray([ds.classes[int(c)] for c in codes])
