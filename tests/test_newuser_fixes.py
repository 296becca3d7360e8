"""A new user's findings (benchmarks/results/newuser_s14.md F1, F7, F8): the lines they read, the refusals they need."""
import numpy as np
import pytest

from pipeline.training import train
from solvers.config import TrainConfig
from solvers.errors import InputError
from storage.data import write_data
from storage.runstore import RunStore
from tests.conftest import make_data, quiet


def test_whole_number_target_with_mostly_few_row_classes_is_refused(client, tmp_path):
    """F1: diabetes-like (a whole-number target, 198 values for 355 rows): before, a 198-class classifier, rc 0,
    validation accuracy 0; now the refusal names the counts and --task regression, and writes no run store."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(355, 5))
    y = np.round(150 + 77 * X[:, 0] + 10 * rng.normal(size=355))  # a whole-number measurement
    write_data(tmp_path / "d.zarr", X, y)
    with pytest.raises(InputError, match=r"the labels take \d+ distinct values for 355 rows and \d+ of them have "
                                         r"fewer than 3 rows.*pass --task regression"):
        train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr",
              config=TrainConfig(hidden=(8,), iterations=1), report=quiet)
    assert not (tmp_path / "r.zarr").exists()


def test_many_classes_with_rows_each_still_train(client, tmp_path):
    """F1's rule is not 'many classes': 30 classes of 10 rows each train as a classifier."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(30), 10)
    X = rng.normal(size=(300, 4)) + y[:, None] * 0.5
    write_data(tmp_path / "d.zarr", X, y)
    r = train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr",
              config=TrainConfig(hidden=(8,), iterations=1), report=quiet)
    assert len(r.network.classes) == 30


def _few_row_classes(path, classes=40, rows=2):
    """Write ``classes`` classes of ``rows`` rows each (identities, few-shot): classes, though most have few rows."""
    y = np.repeat(np.arange(classes), rows)
    X = np.random.default_rng(2).normal(size=(len(y), 4)) + y[:, None]
    write_data(path, X, y)
    return X, y


def test_estimator_classes_with_few_rows_each_train(tmp_path):
    """ADMMClassifier's labels are classes by construction (it has no --task): 40 classes of 2 rows each fit (with
    the command line's words as a warning since session 15, not a refusal)."""
    from pipeline.estimator import ADMMClassifier

    X, y = _few_row_classes(tmp_path / "d.zarr")
    with pytest.warns(UserWarning, match="fitting them as classes: use ADMMRegressor"):
        model = ADMMClassifier(max_iter=1, hidden_layer_sizes=(4,)).fit(X, y)
    assert len(model.classes_) == 40


def test_cli_explicit_task_classification_overrides_the_class_rows_check(tmp_path, capsys):
    """From the command line the refusal is one line naming both ways out; --task classification trains."""
    from pipeline.train import main

    _few_row_classes(tmp_path / "d.zarr")
    argv = ["--data", str(tmp_path / "d.zarr"), "--store", str(tmp_path / "r.zarr"), "--hidden", "4",
            "--iterations", "1", "--workers", "1", "--dashboard-address", ":0"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("pass --task regression, or --task classification if these are "
                                             "classes"), err
    assert main([*argv, "--task", "classification"]) == 0
    assert RunStore.open(tmp_path / "r.zarr").manifest()["iteration"] == 1


def test_cli_forgotten_task_regression_is_the_only_line_before_any_cluster(tmp_path, capsys, monkeypatch):
    """newuser16 F8: the refusal came last, after the test data's unseen-labels warning and the dashboard lines
    (it needed the cluster's pass over y); now it runs first, in this process, and no cluster starts."""
    import pipeline.train as cli

    X, y = _few_row_classes(tmp_path / "d.zarr")
    write_data(tmp_path / "t.zarr", X[:10], y[:10] + 100)  # labels the training data lacks: the warning's case
    monkeypatch.setattr(cli, "connect_from_args", lambda *a, **k: pytest.fail("a cluster was started"))
    argv = ["--data", str(tmp_path / "d.zarr"), "--test-data", str(tmp_path / "t.zarr"),
            "--store", str(tmp_path / "r.zarr"), "--hidden", "4", "--iterations", "1"]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, (out, err)
    assert err.startswith("error: the labels take 40 distinct values for 80 rows and 40 of them have fewer than 3 "
                          "rows") and err.strip().endswith("--task classification if these are classes"), err
    assert not (tmp_path / "r.zarr").exists()


def test_a_run_the_iteration_limit_ended_while_rising_says_how_to_go_on(tmp_path, capsys, monkeypatch):
    """newuser16 F1: covtype and MNIST kept iteration 19 of 20 and nothing said that more iterations would help;
    now the command line prints the resume command with twice the limit, and the estimator warns
    (ConvergenceWarning) naming max_iter and, with store=, that command. The rule: tests/test_driver.py."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    import pipeline.train as cli
    import solvers.driver as driver
    from pipeline.estimator import ADMMClassifier

    X, y = make_data(n=400)
    write_data(tmp_path / "d.zarr", X, y)
    argv = ["--data", str(tmp_path / "d.zarr"), "--store", str(tmp_path / "r.zarr"), "--hidden", "4",
            "--iterations", "3", "--workers", "1", "--dashboard-address", ":0", "--no-progress"]
    monkeypatch.setattr(driver, "still_rising", lambda scores, best, last, patience: False)
    assert cli.main(argv) == 0
    assert "still rising" not in capsys.readouterr().out
    monkeypatch.setattr(driver, "still_rising", lambda scores, best, last, patience: True)
    assert cli.main([*argv, "--overwrite"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("validation accuracy was still rising when --iterations 3 ended the run (the model "
                                "is iteration ") and lines[-2].endswith(
        f": python -m pipeline.train --store {tmp_path / 'r.zarr'} --resume --iterations 6 goes on"), lines
    assert lines[-1].startswith("done: ")
    with pytest.warns(ConvergenceWarning, match=r"ADMMClassifier: validation accuracy was still rising when "
                      r"max_iter=2 ended the run .*; pass a larger max_iter \(e\.g\. 4\), or continue this run: "
                      r"python -m pipeline.train --store .*e\.zarr --resume --iterations 4$"):
        ADMMClassifier(hidden_layer_sizes=(4,), max_iter=2, store=tmp_path / "e.zarr").fit(X, y)
    monkeypatch.setattr(driver, "still_rising", lambda scores, best, last, patience: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        ADMMClassifier(hidden_layer_sizes=(4,), max_iter=2).fit(X, y)


@pytest.fixture(scope="module")
def two_iterations(client, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    X, y = make_data(n=600)
    write_data(tmp / "d.zarr", X[:500], y[:500])
    write_data(tmp / "t.zarr", X[500:], y[500:])
    lines = []
    train(client, store=tmp / "r.zarr", data=tmp / "d.zarr", test_data=tmp / "t.zarr",
          config=TrainConfig(solver="admm", hidden=(8,), iterations=2), report=lines.append)
    return tmp, lines


def test_resume_with_fewer_total_iterations_is_refused(client, two_iterations):
    """F8: --iterations is the total; fewer than the run has done ran nothing with rc 0 and an empty table."""
    tmp, _ = two_iterations
    before = RunStore.open(tmp / "r.zarr").manifest()
    with pytest.raises(InputError, match=r"already has 2 iterations and --iterations is the total: pass "
                                         r"--iterations 3 for 1 more"):
        train(client, store=tmp / "r.zarr", resume=True, iterations=1, report=quiet)
    assert RunStore.open(tmp / "r.zarr").manifest() == before


def test_resume_of_a_finished_run_says_so(client, two_iterations):
    """F8: the same total (a resume after a kill past the last commit) stays rc 0, and says nothing ran."""
    tmp, _ = two_iterations
    lines = []
    train(client, store=tmp / "r.zarr", resume=True, iterations=2, report=lines.append)
    assert any("already has 2 iterations and --iterations is the total: nothing to run" in s for s in lines)
    assert not any(s.split()[:2] == ["iter", "seconds"] for s in lines), lines  # no table without rows


def test_resume_of_a_stopped_run_at_its_done_count_changes_nothing(client, tmp_path):
    """F8 for a run that stopped early: --iterations equal to its done count said nothing and rewrote the
    recorded total (30 -> the done count); now it says nothing ran and the config keeps 30."""
    rng = np.random.default_rng(0)
    write_data(tmp_path / "d.zarr", rng.normal(size=(300, 3)), rng.integers(0, 2, 300))  # noise: stops early
    train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr",
          config=TrainConfig(hidden=(4,), iterations=30, patience=1), report=quiet)
    manifest = RunStore.open(tmp_path / "r.zarr").manifest()
    done = int(manifest["iteration"])
    assert manifest.get("stopped_early") and done < 30
    lines = []
    train(client, store=tmp_path / "r.zarr", resume=True, iterations=done, report=lines.append)
    assert any(f"already has {done} iterations and --iterations is the total: nothing to run" in s for s in lines)
    assert not any(s.split()[:2] == ["iter", "seconds"] for s in lines), lines
    assert RunStore.open(tmp_path / "r.zarr").attrs["config"]["iterations"] == 30


def test_run_line_and_kept_models_test_score(two_iterations):
    """F7: one chunk is 'chunk', and the last line gives the kept model's test accuracy (users read the last line)."""
    _, lines = two_iterations
    assert any(" training samples in 1 chunk of " in s for s in lines), lines
    assert not any(" 1 chunks " in s for s in lines)
    assert lines[-1].startswith("the model (iteration ") and ") has test accuracy 0." in lines[-1], lines


def test_cli_resume_with_fewer_total_iterations_is_refused_and_writes_nothing(two_iterations, capsys, monkeypatch):
    """F8 from the command line: rc 2 and exactly one line, before the unseen-labels warning (the test data has a
    label the training data lacks) and before any cluster starts; the store unchanged."""
    import pipeline.train as cli

    tmp, _ = two_iterations
    X, y = make_data(n=20)
    write_data(tmp / "t7.zarr", X, np.where(np.arange(20) < 3, 7, y))  # label 7 unseen: would warn
    monkeypatch.setattr(cli, "connect_from_args", lambda *a, **k: pytest.fail("a cluster was started"))
    before = {p: p.read_bytes() for p in (tmp / "r.zarr").rglob("*") if p.is_file()}
    argv = ["--store", str(tmp / "r.zarr"), "--resume", "--test-data", str(tmp / "t7.zarr"), "--iterations"]
    assert cli.main([*argv, "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already has 2 iterations and --iterations is the total: pass --iterations 3 for 1 " \
        "more" in err[0], err
    assert cli.main([*argv, "0"]) == 2  # 0: no "--iterations 2 for 0 more"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("--iterations is the total: pass a total above 2"), err
    assert {p: p.read_bytes() for p in (tmp / "r.zarr").rglob("*") if p.is_file()} == before


def test_resume_with_the_training_data_moved_or_unrecorded_names_data(two_iterations, tmp_path, capsys):
    """A moved training store said 'does not exist; create one with python -m pipeline.ingest' (it exists, elsewhere);
    a run recording no data ended in a TypeError traceback. Both: one line naming --data; --data at the new place
    resumes (fingerprint checked)."""
    import shutil

    import zarr

    from pipeline.checks import check_inputs
    from pipeline.train import main

    tmp, _ = two_iterations
    shutil.copytree(tmp / "r.zarr", tmp_path / "r.zarr")
    shutil.copytree(tmp / "d.zarr", tmp_path / "d.zarr")
    zarr.open_group(tmp_path / "r.zarr", mode="r+").update_attributes(
        {"data": {**RunStore.open(tmp_path / "r.zarr").attrs["data"], "path": str(tmp_path / "gone.zarr")}})
    assert main(["--store", str(tmp_path / "r.zarr"), "--resume", "--iterations", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gone.zarr, is not there (moved or deleted): pass --data with the same data set at its " \
        "new place (its fingerprint is checked)" in err[0], err
    check_inputs(store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", resume=True, iterations=3)  # the way out
    with pytest.raises(InputError, match="is not the data set run"):
        check_inputs(store=tmp_path / "r.zarr", data=tmp / "t.zarr", resume=True)
    zarr.open_group(tmp_path / "r.zarr", mode="r+").update_attributes({"data": None})
    assert main(["--store", str(tmp_path / "r.zarr"), "--resume", "--iterations", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "records no training data: pass --data with the data set it was trained on" in err[0]


def test_kept_models_test_line_says_when_it_was_not_scored_on_this_test_data():
    """The last line gave no word when the kept iteration had no test score, and after a resume with another
    --test-data it reported the earlier test set's score as the model's."""
    from types import SimpleNamespace

    from pipeline.training import _report_kept_test

    out = SimpleNamespace(best_iteration=2, history=[{"iteration": 2, "test_accuracy": 0.9}])
    config = TrainConfig()

    def last(*args):
        lines = []
        _report_kept_test(out, config, lines.append, *args)
        return lines

    assert last("t.zarr") == ["the model (iteration 2) has test accuracy 0.9000"]
    assert last(None) == []  # no test data: nothing to say
    assert last("new.zarr", 2) == ["the model (iteration 2, from before this resume) was not scored on the test "
                                   "data new.zarr"]
    assert last("new.zarr", 1) == ["the model (iteration 2) has test accuracy 0.9000"]  # scored after the resume
    out.history = [{"iteration": 2}]
    assert last("t.zarr") == ["the model (iteration 2) was not scored on the test data"]


def test_one_held_out_chunk_is_one_chunk():
    """The run line of an older store holding out whole chunks said 'in 1 chunks'."""
    from pipeline.training import _count

    assert (_count(1, "chunk"), _count(3, "chunk"), _count(0, "chunk")) == ("1 chunk", "3 chunks", "0 chunks")


def test_estimator_warns_when_auto_ran_gauss_newton_only_for_a_shared_gil(monkeypatch):
    """newuser16 F4 (newuser15 F7): on MNIST 60k the command line's auto chose consensus,gauss-newton (worker
    processes), the estimator on in-memory arrays gauss-newton (its threads share a GIL): another model, silently.
    Now an EfficiencyWarning names both ways to the hand-over (the threshold lowered here: 400 rows)."""
    import warnings

    from sklearn.exceptions import EfficiencyWarning

    import solvers.config
    from pipeline.estimator import ADMMClassifier

    X, y = make_data(n=400)
    monkeypatch.setattr(solvers.config, "AUTO_HANDOVER_ROWS", 100)
    with pytest.warns(EfficiencyWarning, match=r"ADMMClassifier: solver='auto' ran gauss-newton because the fit's "
                      r"worker threads share a GIL \(.*\); on worker processes of one thread, as python -m "
                      r"pipeline.train runs, it chooses consensus,gauss-newton .*client=distributed.Client\(n_workers="
                      r"\d+, threads_per_worker=1\) .*solver='consensus,gauss-newton'"):
        model = ADMMClassifier(hidden_layer_sizes=(4,), max_iter=1).fit(X, y)
    assert model.solver_ == "gauss-newton"
    with warnings.catch_warnings():
        warnings.simplefilter("error", EfficiencyWarning)
        ADMMClassifier(hidden_layer_sizes=(4,), max_iter=1, solver="gauss-newton").fit(X, y)  # given: no word
        monkeypatch.setattr(solvers.config, "AUTO_HANDOVER_ROWS", 20000)
        ADMMClassifier(hidden_layer_sizes=(4,), max_iter=1).fit(X, y)  # auto on small data: gauss-newton anyway
