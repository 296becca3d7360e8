"""The command-line tools as a user runs them: demo, errors, evaluate, predict."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from solvers.config import TrainConfig
from storage.data import write_data
from tests.conftest import run_mains, run_module

ROOT = Path(__file__).resolve().parents[1]


run = run_module


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1200, 6)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    write_data(d / "train.zarr", X[:1000], y[:1000], chunk_rows=256)
    write_data(d / "test.zarr", X[1000:], y[1000:])
    return d


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """The demo as documented (no arguments) and with only --store (a forgotten --data), both run at once: their
    interpreter and cluster starts overlap. {"none": …, "store": …} completed processes; "store" trains into ``path``."""
    path = tmp_path_factory.mktemp("demo") / "r.zarr"
    commands = {"none": ["pipeline.train"],
                "store": ["pipeline.train", "--store", path, "--iterations", "1", "--workers", "1"]}
    procs = {k: subprocess.Popen([sys.executable, "-m", *map(str, c)], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for k, c in commands.items()}
    try:
        outputs = {k: p.communicate(timeout=300) for k, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    out = {k: subprocess.CompletedProcess(p.args, p.returncode, *outputs[k]) for k, p in procs.items()}
    out["path"] = path
    return out


def test_demo_runs_with_no_arguments(demos):
    r = demos["none"]
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("no --data given: training the bundled demo data"), r.stdout[:300]
    assert "Dask dashboard: http" in r.stdout
    lines = [l.split() for l in r.stdout.splitlines() if l.strip()[:1].isdigit()]
    # early stopping is on by default: iterations 1, 2, … up to at most the default count
    assert [int(l[0]) for l in lines] == list(range(1, len(lines) + 1)) and len(lines) <= TrainConfig().iterations
    assert float(lines[-1][3]) >= 0.9  # test accuracy of the 10-class digits demo


def test_store_without_data_says_in_its_first_line_that_it_trains_the_demo(demos):
    """A forgotten --data trains the documented demo into --store: the first line says so, and how to fix it."""
    r = demos["store"]
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("no --data given: training the bundled demo data") and f"into {demos['path']}" \
        in first and "pass --data DATA.zarr" in first, first


def test_overwrite_without_data_is_refused_in_one_line(tmp_path):
    """`train --store R --overwrite` without --data replaced the run R with the digits demo."""
    from pipeline.train import main

    (tmp_path / "r.zarr").mkdir()
    r = run("pipeline.train", "--store", tmp_path / "r.zarr", "--overwrite")
    assert r.returncode == 2 and r.stderr.startswith("error: --overwrite needs --data"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not r.stdout, (r.stdout, r.stderr)
    assert not any((tmp_path / "r.zarr").iterdir())
    with pytest.raises(SystemExit) as exit_:
        main(["--overwrite"])
    assert exit_.value.code == 2


def zarr_y(path):
    import zarr

    return zarr.open_group(path, mode="r")["y"][:]


def test_train_evaluate_predict(small_data):
    d = small_data
    r = run("pipeline.train", "--data", str(d / "train.zarr"), "--store", str(d / "run.zarr"),
            "--test-data", str(d / "test.zarr"), "--hidden", "20", "--iterations", "3", "--workers", "1")
    assert r.returncode == 0, r.stderr
    e = run("pipeline.evaluate", "--store", str(d / "run.zarr"), "--data", str(d / "test.zarr"), "--json",
            "--workers", "1")
    assert e.returncode == 0, e.stderr
    result = json.loads(e.stdout)
    assert result["n_samples"] == 200 and 1 <= result["iteration"] <= 3  # the best held-out iteration
    assert result["unseen_labels"] == {} and "warning" not in e.stderr
    assert result["log_loss"] > 0 and ("roc_auc" in result) == (len(np.unique(zarr_y(d / "test.zarr"))) == 2)
    last_line = [l for l in r.stdout.splitlines() if l.strip().startswith(f"{result['iteration']} ")][0]
    assert result["accuracy"] == pytest.approx(float(last_line.split()[3]), abs=1e-4)
    p = run("pipeline.predict", "--store", str(d / "run.zarr"), "--data", str(d / "test.zarr"),
            "--out", str(d / "pred.zarr"), "--workers", "1")
    assert p.returncode == 0, p.stderr
    import zarr

    pred = zarr.open_group(d / "pred.zarr", mode="r")["prediction"][:]
    y = zarr.open_group(d / "test.zarr", mode="r")["y"][:]
    assert np.mean(pred == y) == pytest.approx(result["accuracy"])


BAD_INPUTS = [
    (["--data", "{d}/missing.zarr", "--store", "{d}/r1.zarr"], "does not exist"),
    (["--data", "{d}/train.zarr", "--store", "{d}/r2.zarr", "--gamma", "0"], "gamma must be a positive"),
    (["--data", "{d}/train.zarr", "--store", "{d}/r3.zarr", "--hidden", "0"], "hidden widths must be positive"),
    (["--data", "{d}/train.zarr", "--store", "{d}/r4.zarr", "--chunk-rows", "5000"], "--chunk-rows 5000"),
    (["--data", "{d}/train.zarr", "--store", "{d}/test.zarr"], "already exists"),
    (["--store", "{d}/nothing.zarr", "--resume"], "does not exist"),
    (["--store", "{d}/train.zarr", "--resume", "--overwrite"], "argument --overwrite: not allowed with argument --resume"),
]
ADMM_INITS = [["--init", "data"], ["--init", "gaussian", "--solver", "consensus"]]


@pytest.fixture(scope="module")
def refused(small_data):
    """``pipeline.train``'s refusals of BAD_INPUTS and ADMM_INITS, all in one process (tests.conftest.run_mains):
    {argv: completed process}. Each is refused before a cluster starts or anything is written; ``python -m`` itself
    is run by the other tests here."""
    argvs = [[a.format(d=small_data) for a in args] + ["--workers", "1"] for args, _ in BAD_INPUTS]
    argvs += [["--data", str(small_data / "train.zarr"), "--store", str(small_data / "r-init.zarr"), *flags,
               "--workers", "1"] for flags in ADMM_INITS]
    return {tuple(argv): r for argv, r in zip(argvs, run_mains(*[["pipeline.train", *argv] for argv in argvs]))}


@pytest.mark.parametrize("args,message", BAD_INPUTS)
def test_bad_input_one_clear_error(small_data, refused, args, message):
    r = refused[(*[a.format(d=small_data) for a in args], "--workers", "1")]
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and message in r.stderr
    assert "Traceback" not in r.stderr
    assert (small_data / "test.zarr" / "zarr.json").exists()  # nothing stored was lost


def test_resume_and_overwrite_together_are_refused_in_the_api_too(tmp_path):
    """--resume won silently over --overwrite; the API (pipeline.training.train) refuses the pair as the CLI does."""
    from pipeline.training import train
    from solvers.errors import InputError

    with pytest.raises(InputError, match="resume and overwrite exclude each other"):
        train(None, store=tmp_path / "r.zarr", resume=True, overwrite=True)
    assert not (tmp_path / "r.zarr").exists()


@pytest.mark.parametrize("module", ["pipeline.train", "pipeline.evaluate", "pipeline.predict", "pipeline.ingest"])
def test_help(module):
    r = run(module, "--help")
    assert r.returncode == 0 and "usage: python -m " + module in r.stdout


@pytest.mark.parametrize("flags", ADMM_INITS)
def test_admm_inits_refused_by_other_solvers(small_data, refused, flags):
    """--init data or gaussian with a solver that would ignore it: one error line, exit 2, no run store."""
    r = refused[("--data", str(small_data / "train.zarr"), "--store", str(small_data / "r-init.zarr"), *flags,
                 "--workers", "1")]
    assert r.returncode == 2 and r.stderr.startswith(f"error: init {flags[1]} is a start of the admm"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (small_data / "r-init.zarr").exists()


def test_evaluate_names_labels_the_run_never_saw(client, tmp_path):
    """Rows whose label is not among the run's classes count as wrong: one warning line names them with their rows,
    and the result has unseen_labels (empty when every label is known: no pass over the data for that)."""
    from pipeline.evaluate import evaluate, unseen_warning
    from pipeline.training import train

    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    write_data(tmp_path / "d.zarr", X, y)
    train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=TrainConfig(hidden=(3,), iterations=1),
          report=lambda line: None)
    y_new = y[:100].copy()
    y_new[:7], y_new[7:10] = 5, 2
    write_data(tmp_path / "t.zarr", X[:100], y_new, chunk_rows=32)
    result = evaluate(client, tmp_path / "r.zarr", tmp_path / "t.zarr")
    assert result["unseen_labels"] == {"2": 3, "5": 7}
    assert result["n_correct"] <= 90
    line = unseen_warning(result["unseen_labels"], result["n_samples"])
    assert line == "warning: 10 of 100 rows have labels the run never saw in training, counted as wrong: 2 (3 rows), " \
                   "5 (7 rows)"
    assert evaluate(client, tmp_path / "r.zarr", tmp_path / "d.zarr")["unseen_labels"] == {}
