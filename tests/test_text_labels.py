"""Class labels as the user wrote them (newuser_s14 F5, F6): text labels on the command line, the labels a run
records, predictions that give them back, test stores ingested on their own, and the estimator's class-rows warning."""
import json

import numpy as np
import pandas as pd
import pytest
import zarr

from pipeline.training import train
from solvers.config import TrainConfig
from solvers.errors import InputError
from storage.data import open_data, write_data
from storage.ingest import ingest
from tests.conftest import quiet

NAMES = np.array(["setosa", "versicolor", "virginica"])


def _iris_frame(names=NAMES):
    from sklearn.datasets import load_iris

    d = load_iris(as_frame=True)
    frame = d.frame.copy()
    frame["target"] = np.asarray(names, dtype=object)[d.target]
    return frame


def test_ingest_text_labels_records_sorted_classes(tmp_path):
    """A text label column: y holds codes of the sorted labels, the store records them; the test split shares them."""
    frame = _iris_frame(np.array(["virginica", "setosa", "versicolor"]))  # first seen: virginica
    frame.to_csv(tmp_path / "i.csv", index=False)
    train_store, test_store = ingest(tmp_path / "i.csv", tmp_path / "i.zarr", test_fraction=0.2)
    for ds in (train_store, test_store):
        assert ds.classes == ("setosa", "versicolor", "virginica")
        y = ds.y[:]
        assert set(np.unique(y)) <= {0.0, 1.0, 2.0}
    rows = np.flatnonzero(np.asarray(frame["target"]) == "setosa")
    assert open_data(tmp_path / "i.zarr").statistics["labels"].tolist() == [0.0, 1.0, 2.0]
    assert rows.size == 50


@pytest.mark.parametrize("kind", ["parquet", "npz"])
def test_ingest_text_labels_parquet_and_npz(tmp_path, kind):
    frame = _iris_frame()
    if kind == "parquet":
        frame.to_parquet(tmp_path / "i.parquet")
        source = tmp_path / "i.parquet"
    else:
        np.savez(tmp_path / "i.npz", X=frame.iloc[:, :4].to_numpy(), y=np.asarray(frame["target"], dtype=str))
        source = tmp_path / "i.npz"
    ds, _ = ingest(source, tmp_path / "i.zarr")
    assert ds.classes == tuple(NAMES)
    assert np.bincount(ds.y[:].astype(int)).tolist() == [50, 50, 50]


def test_numeric_labels_record_no_classes(tmp_path):
    """Numeric labels are stored as before (no classes attribute: old readings unchanged)."""
    pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, 0, 1]}).to_csv(tmp_path / "n.csv", index=False)
    ds, _ = ingest(tmp_path / "n.csv", tmp_path / "n.zarr")
    assert ds.classes is None
    assert "classes" not in json.loads((tmp_path / "n.zarr" / "zarr.json").read_text())["attributes"]


def test_stray_string_in_numeric_labels_is_one_clear_error(tmp_path):
    frame = _iris_frame(np.array([0, 1, 2]))
    frame.loc[7, "target"] = "x"
    frame.to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(InputError, match=r"line 9: column 5 \('target'\): 'x' is not a number; the label "
                                         r"column's first rows are numbers, so it is read as numeric labels: fix or "
                                         r"remove that row"):
        ingest(tmp_path / "s.csv", tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


def test_stray_string_after_the_first_block_is_one_clear_error(tmp_path):
    frame = _iris_frame(np.array([0, 1, 2]))
    frame.loc[140, "target"] = "?"
    frame.to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(InputError, match=r"line 142: column 5 \('target'\): '\?' is not a number; the label "
                                         r"column's first rows are numbers"):
        ingest(tmp_path / "s.csv", tmp_path / "s.zarr", block_rows=50)


@pytest.mark.parametrize("block_rows", [None, 50])
def test_empty_text_label_is_one_clear_error(tmp_path, block_rows):
    frame = _iris_frame()
    frame.loc[120, "target"] = ""
    frame.to_csv(tmp_path / "e.csv", index=False)
    with pytest.raises(InputError, match=r"line 122: column 5 \('target'\) is empty \(missing label\)"):
        ingest(tmp_path / "e.csv", tmp_path / "e.zarr", block_rows=block_rows)


def test_identifier_column_as_labels_is_refused(tmp_path):
    frame = pd.DataFrame({"a": np.arange(1200.0), "id": [f"id{i}" for i in range(1200)]})
    frame.to_csv(tmp_path / "id.csv", index=False)
    with pytest.raises(InputError, match=r"more than 1000 distinct text values: an identifier"):
        ingest(tmp_path / "id.csv", tmp_path / "id.zarr")


def test_old_store_without_classes_reads_as_before(tmp_path):
    """A store written before session 15 has no classes attribute: its y are the labels."""
    ds = write_data(tmp_path / "d.zarr", np.eye(4), [0, 1, 0, 1])
    assert ds.classes is None


def _cli_run(client, tmp_path, frame):
    frame.to_csv(tmp_path / "i.csv", index=False)
    ingest(tmp_path / "i.csv", tmp_path / "i.zarr", test_fraction=0.2)
    return train(client, store=tmp_path / "r.zarr", data=tmp_path / "i.zarr", test_data=tmp_path / "i-test.zarr",
                 config=TrainConfig(hidden=(16,), iterations=3), report=quiet)


def test_text_labels_train_predict_evaluate(client, tmp_path):
    """The command line end to end: the run records the labels, predict writes them, evaluate scores by label."""
    from pipeline.evaluate import evaluate
    from pipeline.predict import predict
    from storage.runstore import RunStore

    frame = _iris_frame()
    _cli_run(client, tmp_path, frame)
    assert RunStore.open(tmp_path / "r.zarr").attrs["data"]["class_labels"] == NAMES.tolist()
    import xarray as xr

    from pipeline.report import summary

    metrics = xr.open_zarr(tmp_path / "r.zarr", group="metrics", consolidated=False).load()
    assert "classes        setosa, versicolor, virginica" in summary(tmp_path / "r.zarr", metrics).splitlines()
    frame.drop(columns="target").to_csv(tmp_path / "f.csv", index=False)
    ingest(tmp_path / "f.csv", tmp_path / "f.zarr", labels=False)
    predict(client, tmp_path / "r.zarr", tmp_path / "f.zarr", tmp_path / "p.zarr")
    pred = zarr.open_group(tmp_path / "p.zarr", mode="r")["prediction"][:]
    assert set(pred.tolist()) <= set(NAMES.tolist())
    assert np.mean(np.asarray(pred.tolist()) == np.asarray(frame["target"], dtype=str)) > 0.8
    # a store ingested on its own, without setosa and with a label the run never saw: other codes, scored by label
    other = frame.copy()
    other.loc[other["target"] == "virginica", "target"] = "other"
    other[other["target"] != "setosa"].to_csv(tmp_path / "o.csv", index=False)
    ingest(tmp_path / "o.csv", tmp_path / "o.zarr")
    assert open_data(tmp_path / "o.zarr").classes == ("other", "versicolor")
    result = evaluate(client, tmp_path / "r.zarr", tmp_path / "o.zarr")
    assert result["unseen_labels"] == {"other": 50}
    assert result["n_correct"] > 40  # versicolor's rows, scored by label (by code they would be 'setosa')


def test_text_labels_against_numeric_test_data_are_one_line(client, tmp_path):
    frame = _iris_frame()
    frame.to_csv(tmp_path / "i.csv", index=False)
    ingest(tmp_path / "i.csv", tmp_path / "i.zarr")
    _iris_frame(np.array([0, 1, 2])).to_csv(tmp_path / "n.csv", index=False)
    ingest(tmp_path / "n.csv", tmp_path / "n.zarr")
    with pytest.raises(InputError, match=r"has numeric labels, the run's classes are text \(setosa, versicolor, "
                                         r"virginica\): pass data with the labels the run was trained on"):
        train(client, store=tmp_path / "r.zarr", data=tmp_path / "i.zarr", test_data=tmp_path / "n.zarr",
              config=TrainConfig(hidden=(4,), iterations=1), report=quiet)
    assert not (tmp_path / "r.zarr").exists()
    with pytest.raises(InputError, match="regression needs a numeric target"):
        train(client, store=tmp_path / "r.zarr", data=tmp_path / "i.zarr",
              config=TrainConfig(hidden=(4,), iterations=1, task="regression"), report=quiet)


def test_unseen_test_labels_warning_names_text_labels(tmp_path):
    from pipeline.checks import unseen_test_labels_warning

    frame = _iris_frame()
    frame[frame["target"] != "virginica"].to_csv(tmp_path / "a.csv", index=False)
    ingest(tmp_path / "a.csv", tmp_path / "a.zarr")
    frame.to_csv(tmp_path / "b.csv", index=False)
    ingest(tmp_path / "b.csv", tmp_path / "b.zarr")
    line = unseen_test_labels_warning(tmp_path / "b.zarr", tmp_path / "a.zarr")
    assert line.endswith("count as wrong in the test accuracy: virginica")


def test_estimator_string_labels_from_the_command_line(tmp_path):
    """F5: a run the estimator fitted on strings (or on 2/5/9) predicts those labels from the command line too."""
    from pipeline.estimator import ADMMClassifier
    from pipeline.predict import main

    frame = _iris_frame()
    X = frame.iloc[:, :4]
    for labels, name in ((frame["target"], "s"), (np.array([2, 5, 9])[np.searchsorted(NAMES, frame["target"])], "n")):
        model = ADMMClassifier(max_iter=2, hidden_layer_sizes=(8,), random_state=0,
                               store=str(tmp_path / f"r{name}.zarr")).fit(X, labels)
        write_data(tmp_path / f"x{name}.zarr", X.to_numpy(), np.zeros(len(X)))
        assert main(["--store", str(tmp_path / f"r{name}.zarr"), "--data", str(tmp_path / f"x{name}.zarr"),
                     "--out", str(tmp_path / f"p{name}.zarr"), "--local-mode", "threads"]) == 0
        pred = zarr.open_group(tmp_path / f"p{name}.zarr", mode="r")["prediction"][:]
        assert pred.tolist() == model.predict(X).tolist()


def test_estimator_on_a_text_label_store(tmp_path):
    """fit / score on a data store path with text labels: classes_ are the labels, score compares labels."""
    from pipeline.estimator import ADMMClassifier

    _iris_frame().to_csv(tmp_path / "i.csv", index=False)
    ingest(tmp_path / "i.csv", tmp_path / "i.zarr")
    model = ADMMClassifier(max_iter=2, hidden_layer_sizes=(8,), random_state=0).fit(str(tmp_path / "i.zarr"))
    assert model.classes_.tolist() == NAMES.tolist()
    assert model.score(str(tmp_path / "i.zarr")) > 0.8


def test_estimator_warns_on_many_few_row_classes():
    """The command line's class-rows check, in the in-memory estimator path: a warning (the classifier is the
    user's choice of task), with the same words."""
    from pipeline.estimator import ADMMClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    y = np.round(100 + 60 * X[:, 0])  # a whole-number measurement
    with pytest.warns(UserWarning, match=r"the labels take \d+ distinct values for 120 rows and \d+ of them have "
                                         r"fewer than 3 rows: a count or a measurement.*use ADMMRegressor"):
        ADMMClassifier(max_iter=1, hidden_layer_sizes=(4,)).fit(X, y)


def test_resume_with_text_labels_and_a_new_test_set(client, tmp_path, capsys):
    """A resume keeps the run's labels; a new --test-data with a label the run never saw gets one warning line
    naming it, and one with numeric labels is refused in one line before a cluster starts."""
    from pipeline.train import main

    frame = _iris_frame()
    frame[frame["target"] != "virginica"].to_csv(tmp_path / "a.csv", index=False)
    ingest(tmp_path / "a.csv", tmp_path / "a.zarr")
    frame.to_csv(tmp_path / "b.csv", index=False)
    ingest(tmp_path / "b.csv", tmp_path / "b.zarr")
    _iris_frame(np.array([0, 1, 2])).to_csv(tmp_path / "n.csv", index=False)
    ingest(tmp_path / "n.csv", tmp_path / "n.zarr")
    common = ["--local-mode", "threads", "--hidden", "4"]
    assert main(["--data", str(tmp_path / "a.zarr"), "--store", str(tmp_path / "r.zarr"), "--iterations", "1",
                 *common]) == 0
    capsys.readouterr()
    assert main(["--store", str(tmp_path / "r.zarr"), "--resume", "--iterations", "2", "--test-data",
                 str(tmp_path / "b.zarr"), "--local-mode", "threads"]) == 0
    out, err = capsys.readouterr()
    assert "classes ['setosa', 'versicolor']" in out
    assert [line for line in err.splitlines() if "virginica" in line] == [
        f"warning: test data {tmp_path / 'b.zarr'} has labels the training data {tmp_path / 'a.zarr'} does not "
        "have, so its rows with them count as wrong in the test accuracy: virginica"]
    assert main(["--store", str(tmp_path / "r.zarr"), "--resume", "--iterations", "3", "--test-data",
                 str(tmp_path / "n.zarr"), "--local-mode", "threads"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has numeric labels, the run's classes are text" in err, err


def test_text_feature_column_names_how_to_drop_it(tmp_path):
    """newuser_s14 F7: a string id column was 'not a number' with no way out named; the line now says how to drop it."""
    frame = _iris_frame()
    frame.insert(0, "id", [f"id{i}" for i in range(len(frame))])
    frame.to_csv(tmp_path / "id.csv", index=False)
    with pytest.raises(InputError, match=r"line 2: column 1 \('id'\): 'id0' is not a number; features must be numbers "
                                         r"\(only the label column may hold text\): drop such a column first, e\.g\. "
                                         r"pandas\.read_csv\(f\)\.drop\(columns=\['id'\]\)"):
        ingest(tmp_path / "id.csv", tmp_path / "id.zarr")
    frame.to_parquet(tmp_path / "id.parquet")
    with pytest.raises(InputError, match=r"row 1: column 1 \('id'\): 'id0' is not a number; .*columns=\['id'\]"):
        ingest(tmp_path / "id.parquet", tmp_path / "id.zarr")


def _labelled_csv(path, labels, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(len(labels), 3))
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    frame["label"] = labels
    frame.to_csv(path, index=False)
    return frame


def test_text_labels_flag_reads_a_test_file_whose_first_rows_are_numbers_as_text(tmp_path):
    """review2 R2: a test file from a source labelled {cat, dog, 1} whose rows are mostly '1' was read as numeric
    labels and refused at 'dog' with no way out; the line names --text-labels, which reads it as text."""
    from pipeline.ingest import main

    _labelled_csv(tmp_path / "t.csv", ["1", "dog", "1"] * 20)
    with pytest.raises(InputError, match=r"'dog' is not a number; the label column's first rows are numbers, so it "
                                         r"is read as numeric labels: fix or remove that row .*or pass --text-labels"):
        ingest(tmp_path / "t.csv", tmp_path / "t.zarr")
    ds, _ = ingest(tmp_path / "t.csv", tmp_path / "t.zarr", text_labels=True)
    assert ds.classes == ("1", "dog") and np.bincount(ds.y[:].astype(int)).tolist() == [40, 20]
    assert main([str(tmp_path / "t.csv"), "--out", str(tmp_path / "c.zarr"), "--text-labels"]) == 0
    assert open_data(tmp_path / "c.zarr").classes == ("1", "dog")
    with pytest.raises(InputError, match="--text-labels and --no-labels exclude each other"):
        ingest(tmp_path / "t.csv", tmp_path / "n.zarr", labels=False, text_labels=True)


def test_01_and_1_are_two_text_labels_and_one_number(tmp_path):
    """As text labels are compared as written; as numbers '01' and '1' are both 1 (documented in ingest --help)."""
    _labelled_csv(tmp_path / "z.csv", ["01", "1", "1", "2"] * 5)
    assert ingest(tmp_path / "z.csv", tmp_path / "t.zarr", text_labels=True)[0].classes == ("01", "1", "2")
    numeric, _ = ingest(tmp_path / "z.csv", tmp_path / "n.zarr")
    assert numeric.classes is None and sorted(set(numeric.y[:].tolist())) == [1.0, 2.0]


@pytest.mark.parametrize("kind", ["npz", "parquet"])
def test_text_labels_of_a_numeric_npz_or_parquet_column_are_the_numbers_plain_text(tmp_path, kind):
    y = np.array([0.0, 1.0, 2.5, 1.0] * 5)
    X = np.random.default_rng(0).normal(size=(len(y), 2))
    if kind == "npz":
        np.savez(tmp_path / "s.npz", X=X, y=y)
    else:
        pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "y": y}).to_parquet(tmp_path / "s.parquet")
    ds, _ = ingest(tmp_path / f"s.{kind}", tmp_path / "t.zarr", text_labels=True)
    assert ds.classes == ("0", "1", "2.5") and ds.y[:].tolist() == [0.0, 1.0, 2.0, 1.0] * 5
    assert ingest(tmp_path / f"s.{kind}", tmp_path / "n.zarr")[0].classes is None  # default: numbers, as before


def test_a_store_with_classes_has_format_version_2_and_old_ones_still_read(tmp_path):
    """Versions before the classes attribute read format_version 1 only: they refuse a store of codes instead of
    training on them. Numeric stores stay version 1; version-1 stores with classes (session 15 before the bump) read."""
    _labelled_csv(tmp_path / "t.csv", ["cat", "dog"] * 10)
    ingest(tmp_path / "t.csv", tmp_path / "t.zarr")
    meta = json.loads((tmp_path / "t.zarr" / "zarr.json").read_text())
    assert meta["attributes"]["format_version"] == 2
    assert json.loads((tmp_path / "t.zarr" / "zarr.json").read_text())["attributes"]["classes"] == ["cat", "dog"]
    write_data(tmp_path / "n.zarr", np.eye(4), [0, 1, 0, 1])
    assert json.loads((tmp_path / "n.zarr" / "zarr.json").read_text())["attributes"]["format_version"] == 1
    meta["attributes"]["format_version"] = 1
    (tmp_path / "t.zarr" / "zarr.json").write_text(json.dumps(meta))
    assert open_data(tmp_path / "t.zarr").classes == ("cat", "dog")


def test_text_and_numeric_labels_are_compared_by_the_numbers_plain_text(tmp_path):
    """pipeline.labels.codes_in across kinds: a text run's '1' is a numeric store's 1 (its other labels: NaN, which
    no row holds); a numeric run's 1 is a text store's '1'; '01' matches no number, and no match at all is refused."""
    from pipeline.labels import codes_in

    numeric = write_data(tmp_path / "n.zarr", np.eye(4), [1, 1, 2, 1])
    codes = codes_in(numeric, np.arange(3), np.array(["1", "cat", "dog"]))
    assert codes[0] == 1.0 and np.isnan(codes[1:]).all()
    assert codes_in(numeric, np.arange(3), np.array(["1", "10", "2"])).tolist() == [1.0, 10.0, 2.0]
    with pytest.raises(InputError, match=r"has numeric labels, the run's classes are text \(01, 02\): pass data with "
                                         r"the labels the run was trained on \(text and numeric labels are compared "
                                         r"by the numbers' plain text: '1' matches 1, '01' and '1.0' do not"):
        codes_in(numeric, np.arange(2), np.array(["01", "02"]))
    _labelled_csv(tmp_path / "t.csv", ["1", "0", "x", "1"] * 5)
    text, _ = ingest(tmp_path / "t.csv", tmp_path / "t.zarr", text_labels=True)  # classes 0, 1, x
    assert codes_in(text, np.array([0.0, 1.0, 2.0])).tolist()[:2] == [0.0, 1.0]
    assert np.isnan(codes_in(text, np.array([0.0, 1.0, 2.0]))[2])


def test_evaluate_scores_a_numeric_test_store_against_a_text_run_by_label(client, tmp_path):
    """review2 R2: a run trained on labels {cat, dog, 1} and a test file of '1' only (ingested as numbers) was
    refused by evaluate and train --test-data; now it is scored by label. With --text-labels the run's classes
    '1', '10', '2' are numbers 1, 10, 2 in the test store: codes that do not increase (the metrics pass's lookup)."""
    from pipeline.checks import unseen_test_labels_warning
    from pipeline.evaluate import evaluate
    from pipeline.model import labelled_network

    rng = np.random.default_rng(1)
    for name, vocab, text in (("a", ["cat", "dog", "1"], False), ("b", ["1", "10", "2"], True)):
        frame = _labelled_csv(tmp_path / f"{name}.csv", rng.choice(vocab, 300).tolist())
        ingest(tmp_path / f"{name}.csv", tmp_path / f"{name}.zarr", text_labels=text)
        test = frame.sample(120, random_state=0)
        if name == "a":
            test = test[test["label"] == "1"]
        test.to_csv(tmp_path / f"{name}t.csv", index=False)
        assert ingest(tmp_path / f"{name}t.csv", tmp_path / f"{name}t.zarr")[0].classes is None  # numbers
        train(client, store=tmp_path / f"{name}r.zarr", data=tmp_path / f"{name}.zarr",
              test_data=tmp_path / f"{name}t.zarr", config=TrainConfig(hidden=(8,), iterations=3), report=quiet)
        result = evaluate(client, tmp_path / f"{name}r.zarr", tmp_path / f"{name}t.zarr")
        pred = labelled_network(tmp_path / f"{name}r.zarr").predict(open_data(tmp_path / f"{name}t.zarr").X[:])
        expected = int(np.sum(np.asarray(pred, dtype=str) == test["label"].astype(str).to_numpy()))
        assert result["n_correct"] == expected and result["n_samples"] == len(test) and result["unseen_labels"] == {}
        assert unseen_test_labels_warning(tmp_path / f"{name}t.zarr", tmp_path / f"{name}.zarr") is None
