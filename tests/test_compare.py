"""Smoke tests of the comparison runner ``benchmarks/compare.py`` (small data, few steps).

They check that one command trains our solvers and the peers side by side and
writes the JSON, markdown and PNG results with sane accuracies; they do not
measure anything. Peers that need torch or dask-ml are skipped where those
packages are not installed (``pip install -e '.[bench]'``).
"""
import dataclasses
import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import compare  # noqa: E402

FLOOR = 0.75  # the larger class is 52 % of the digits 0-vs-2 test rows


def run(tmp_path, *args, task="digits02"):
    out = tmp_path / "results"
    code = compare.main(["--task", task, "--out", str(out), "--cache", str(tmp_path / "cache"),
                         "--iterations", "3", "--epochs", "3", "--lbfgs-max-iter", "4",
                         "--logreg-max-iter", "4", "--time-budget", "60", *args])
    return code, out


def load(out, task="digits02"):
    res = json.loads((out / f"compare_{task}.json").read_text())
    return res, {m["method"]: m for m in res["methods"]}


def check_curve(m):
    assert m["status"] == "ok", m.get("error")
    assert m["points"], m["method"]
    for p in m["points"]:
        assert 0.0 <= p["test_accuracy"] <= 1.0
        assert p["seconds"] >= 0.0
    assert m["best_accuracy"] == max(p["test_accuracy"] for p in m["points"])
    assert m["best_accuracy"] > FLOOR, m["method"]


def test_compare_digits02_ours_and_cheap_peers(tmp_path):
    # the pipeline on the reference's chunks (the store's 248 rows): by default it splits small data finer to
    # hold chunks out for early stopping, and the two would no longer run the same kernels on the same rows
    code, out = run(tmp_path, "--solvers", "admm", "--peers", "logreg", "sklearn-stream", "--pipeline-chunk-rows", "248")
    assert code == 0
    res, methods = load(out)
    assert list(methods) == ["admm-reference", "admm-pipeline", "logreg", "sklearn-stream"]
    for m in methods.values():
        check_curve(m)
    # our solvers: one point per iteration, cumulative time
    for name in ("admm-reference", "admm-pipeline"):
        pts = methods[name]["points"]
        assert [p["step"] for p in pts] == [1, 2, 3]
        assert all(a["seconds"] < b["seconds"] for a, b in zip(pts, pts[1:]))
        assert all(p["seconds"] <= p["wall_seconds"] for p in pts)
    # the reference and the pipeline run the same kernels on the same data
    ref = [p["test_accuracy"] for p in methods["admm-reference"]["points"]]
    pipe = [p["test_accuracy"] for p in methods["admm-pipeline"]["points"]]
    assert np.allclose(ref, pipe, atol=0.02)
    assert len(methods["sklearn-stream"]["points"]) == 3  # one per chunk: digits is one chunk, 3 epochs
    s = res["settings"]
    assert s["target"] == 0.99 and s["hidden"] == [100] and s["data"]["n_train"] + s["data"]["n_test"] == 355
    assert {"command", "date", "host"} <= set(res["provenance"])
    # start-up: each pipeline method's own fresh cluster plus the client's imports; a peer's imports
    assert set(s["cluster_start_seconds"]) == {"admm"}
    assert s["local_processes"] == {"admm": False}  # small data: worker threads
    assert methods["admm-pipeline"]["startup_seconds"] > s["cluster_start_seconds"]["admm"] > 0
    assert methods["sklearn-stream"]["startup_seconds"] > 0 and "startup_seconds" not in methods["logreg"]
    # CPU seconds per point: our client and worker processes (the workers' CPU counted too), a peer's process
    for name in ("admm-pipeline", "sklearn-stream"):
        cpu = [p["cpu_seconds"] for p in methods[name]["points"]]
        assert cpu[0] > 0 and cpu == sorted(cpu)
    md = (out / "compare_digits02.md").read_text()
    assert "| method | family | final test acc | best test acc | time to 0.990 (s)" in md
    for name in methods:
        assert f"| {name} |" in md
    assert (out / "compare_digits02.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("peer, module", [("torch-adam", "torch"), ("dask-ml", "dask_ml")])
def test_compare_streaming_peer(tmp_path, peer, module):
    pytest.importorskip(module)
    code, out = run(tmp_path, "--ours", "none", "--peers", peer)
    assert code == 0
    _, methods = load(out)
    check_curve(methods[peer])
    assert len(methods[peer]["points"]) == 3  # one per epoch: digits is one chunk


def test_missing_peer_package_is_skipped_with_the_install_hint(tmp_path, monkeypatch, capsys):
    fake = dataclasses.replace(compare.PEERS["torch-adam"], modules=("no_such_module_for_compare",))
    monkeypatch.setitem(compare.PEERS, "torch-adam", fake)
    code, out = run(tmp_path, "--ours", "none", "--peers", "torch-adam", "logreg")
    assert code == 0
    _, methods = load(out)
    assert methods["torch-adam"]["status"] == "skipped"
    assert "pip install -e '.[bench]'" in methods["torch-adam"]["reason"]
    check_curve(methods["logreg"])
    assert "torch-adam: skipped: pip install -e '.[bench]'" in capsys.readouterr().out


def test_unknown_solver_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run(tmp_path, "--solvers", "no-such-solver")
    assert exc.value.code == 2
    assert "no-such-solver" in capsys.readouterr().err


def test_higgs_real_loader_goes_through_ingest(tmp_path):
    """A HIGGS-like CSV.gz (label first, no header) is ingested into train and test stores and trained on."""
    rng = np.random.default_rng(0)
    n = 3000
    X = rng.normal(size=(n, 28))
    y = (X[:, 0] + 0.5 * X[:, 3] > 0).astype(int)
    csv = tmp_path / "HIGGS.csv.gz"
    with gzip.open(csv, "wt") as f:
        for label, row in zip(y, X):
            f.write(f"{float(label):.18e}," + ",".join(f"{v:.18e}" for v in row) + "\n")
    code, out = run(tmp_path, "--solvers", "admm", "--ours", "reference", "--peers", "logreg",
                    "--higgs-csv", str(csv), task="higgs-real")
    assert code == 0
    res, methods = load(out, "higgs-real")
    d = res["settings"]["data"]
    assert d["n_features"] == 28 and d["n_train"] + d["n_test"] == n and 50 < d["n_test"] < 300
    assert res["settings"]["target"] == 0.64
    check_curve(methods["admm-reference"])
    check_curve(methods["logreg"])
    # the ingested stores are reused while the source file is unchanged
    from benchmarks.higgs_real import higgs_stores

    lines = []
    train, test = higgs_stores(csv, tmp_path / "cache", log=lines.append)
    assert lines and lines[0].startswith("reusing") and train.name == "higgs-real.zarr"


def test_a_failing_method_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    import solvers.reference

    real = solvers.reference.fit_in_memory

    def breaks_at_iteration_2(*args, callback=None, **kw):
        def cb(record):
            callback(record)
            if record["iteration"] == 2:
                raise RuntimeError("solver blew up")
        return real(*args, callback=cb, **kw)

    monkeypatch.setattr(solvers.reference, "fit_in_memory", breaks_at_iteration_2)
    code, out = run(tmp_path, "--solvers", "admm", "--ours", "reference", "--peers", "logreg")
    assert code == 1
    _, methods = load(out)
    failed = methods["admm-reference"]
    assert failed["status"] == "failed" and "solver blew up" in failed["error"]
    assert [p["step"] for p in failed["points"]] == [1, 2]  # the iterations done are kept
    check_curve(methods["logreg"])
    assert "`admm-reference` failed: RuntimeError: solver blew up" in (out / "compare_digits02.md").read_text()


def test_variants_run_our_solvers_with_their_own_layers(tmp_path):
    """``--variant LABEL:KEY=VALUE;…`` adds one of our runs with its own settings (a convolution here)."""
    code, out = run(tmp_path, "--ours", "reference", "--peers", "none", "--name", "conv",
                    "--variant", "conv:solver=admm;scaling=global;layers=conv:3x3x3",
                    "--variant", "dense:solver=admm;hidden=[5]")
    assert code == 0
    res = json.loads((out / "conv.json").read_text())
    methods = {m["method"]: m for m in res["methods"]}
    assert set(methods) == {"conv-reference", "dense-reference"}  # --variant alone: no solver defaults
    for m in methods.values():
        check_curve(m)
    assert res["settings"]["configs"]["conv"]["layers"] == "conv:3x3x3"
    assert "- `conv`: solver admm, layers conv:3x3x3" in (out / "conv.md").read_text()
    for bad in ("admm:ridge=0.1", ":ridge=0.1"):  # a label taken by a solver, or none
        with pytest.raises(compare.InputError, match=f"--variant '{bad}': expected a new LABEL"):
            compare.our_configs(["admm"], [bad], {})
    with pytest.raises(compare.InputError, match="--variant x: 'ridge': expected KEY=VALUE"):
        compare.our_configs([], ["x:ridge"], {})


def test_compare_gauss_newton_cnn_against_the_torch_cnn_of_the_same_layers(tmp_path):
    pytest.importorskip("torch")
    layers = "conv:4x3x3:same,pool:2,conv:4x3x3,flatten,dense:16"
    code, out = run(tmp_path, "--ours", "reference", "--peers", "torch-cnn", "--epochs", "40", "--time-budget", "600",
                    "--variant",
                    f"gn-conv:solver=gauss-newton;layers={layers};scaling=global;input_shape=8x8")
    assert code == 0
    res, methods = load(out)
    assert list(methods) == ["gn-conv-reference", "torch-cnn"]
    for m in methods.values():
        check_curve(m)
    torch_net = methods["torch-cnn"]["notes"]["network"]
    assert "Conv2d(1, 4, kernel_size=(3, 3)" in torch_net and "MaxPool2d(kernel_size=2" in torch_net
    # our hidden layers' parameters, (9+1)·4 + (36+1)·4 + (2·2·4+1)·16, and 2 cross-entropy outputs (16+1)·2
    assert methods["torch-cnn"]["notes"]["parameters"] == 40 + 148 + 272 + 34
    code, out = run(tmp_path, "--ours", "none", "--peers", "torch-cnn")
    assert code == 0 and load(out)[1]["torch-cnn"]["status"] == "skipped"


def test_the_consensus_solvers_run_on_worker_processes_as_pipeline_train_runs_them():
    from benchmarks.compare import _local_mode_text, pipeline_processes

    small = 10 * 2**20
    assert pipeline_processes("auto", small, "consensus") and pipeline_processes("auto", small, "consensus,gauss-newton")
    assert not pipeline_processes("auto", small, "gauss-newton") and not pipeline_processes("threads", small, "consensus")
    s = {"workers": 2, "local_processes": {"gauss-newton": False, "consensus": True}}
    assert _local_mode_text(s) == "gauss-newton: 2 worker threads; consensus: 2 single-threaded worker processes"
    assert _local_mode_text({"workers": 2, "local_processes": False}) == "2 worker threads"


def test_the_pipeline_runner_knows_the_iteration_a_report_line_is_about():
    """Gauss-Newton commits in the background: the runner waits for the reported iteration's commit before scoring
    it (else each point was recorded one iteration late, at the next line: HIGGS-shaped 1M's first at 10.1 s, not 4.7)."""
    from benchmarks.compare import _reported_iteration

    assert _reported_iteration("   12     2.26    0.9687    0.9692    0.9677          -   1.379e-01") == 12
    for line in ("initialised (forward) in 2.84 s", "2 workers connected", "the model is iteration 14 (best 0.98)",
                 " iter  seconds train acc", ""):
        assert _reported_iteration(line) is None


def test_the_runner_waits_for_the_reported_commit_by_reading_the_manifests_iteration(tmp_path):
    """The wait (on the clock) polls manifest.json until it names the reported iteration or a later one."""
    from benchmarks.compare import _manifest_iteration, _wait_for_commit
    from storage.runstore import MANIFEST

    assert _manifest_iteration(tmp_path / "none.zarr") is None
    (tmp_path / MANIFEST).write_text('{"format": "x", "iteration": 7}')
    assert _manifest_iteration(tmp_path) == 7
    (tmp_path / MANIFEST).write_text('{"format": "x", "iter')  # torn: not yet a commit
    assert _manifest_iteration(tmp_path) is None
    seen = iter([None, 3, 4, 5, 6])
    _wait_for_commit(tmp_path, 5, read=lambda _store: next(seen))
    assert list(seen) == [6]  # stopped at the first look naming iteration 5


def test_several_seeds_write_each_seeds_files_and_a_summary(tmp_path):
    """--seeds: per seed the files of a --seed run (reseeded: the peers' curves differ), then the summary over them."""
    code, out = run(tmp_path, "--ours", "none", "--peers", "logreg", "mlp-adam", "--seeds", "0", "3",
                    "--name", "many")
    assert code == 0
    assert not (out / "many.json").exists()
    per_seed = {}
    for seed in (0, 3):
        res = json.loads((out / f"many_seed{seed}.json").read_text())
        assert res["settings"]["seed"] == seed and res["settings"]["seeds"] == [0, 3]
        assert res["settings"]["name"] == f"many_seed{seed}" and (out / f"many_seed{seed}.md").exists()
        per_seed[seed] = {m["method"]: m for m in res["methods"]}
    assert per_seed[0]["mlp-adam"]["points"] != per_seed[3]["mlp-adam"]["points"]  # the peer was reseeded
    summary = json.loads((out / "seeds_many.json").read_text())
    assert summary["settings"]["seeds"] == [0, 3] and "one split" in summary["settings"]["data_per_seed"]
    assert [(r["seed"], r["method"]) for r in summary["per_seed"]] == [(0, "logreg"), (0, "mlp-adam"),
                                                                       (3, "logreg"), (3, "mlp-adam")]
    finals = [per_seed[s]["mlp-adam"]["final_accuracy"] for s in (0, 3)]
    acc = summary["summary"]["mlp-adam"]["final_accuracy"]
    assert (acc["min"], acc["max"], acc["median"]) == (min(finals), max(finals), sum(finals) / 2)
    assert "| mlp-adam | memory |" in (out / "seeds_many.md").read_text()


def test_a_single_seed_call_keeps_its_files_and_shape(tmp_path):
    code, out = run(tmp_path, "--ours", "none", "--peers", "logreg", "--seeds", "2")
    assert code == 0 and sorted(p.name for p in out.iterdir() if p.suffix != ".png") == [
        "compare_digits02.json", "compare_digits02.md"]
    res, _ = load(out)
    assert res["settings"]["seed"] == 2 and "seeds" not in res["settings"]


def test_the_seeds_summary_takes_ratios_to_each_seeds_best_streaming_peer():
    """Median/min/max over seeds; a seed that missed the target counts as +inf; a seed with no streaming peer at the
    target is left out of the ratios; start-up is added to both sides of the second ratio."""
    def res(seed, ours, torch, sklearn, startup=(1.0, 2.0, 0.5)):
        def m(name, family, t, s):
            return {"method": name, "family": family, "status": "ok", "time_to_target": t, "startup_seconds": s,
                    "final_accuracy": 0.97, "best_accuracy": 0.97}
        return {"settings": {"seed": seed, "task": "mnist10", "name": f"x_seed{seed}", "about": "", "target": 0.96,
                             "solvers": ["auto"], "ours": ["pipeline"], "peers": ["torch-adam", "sklearn-stream"],
                             "iterations": 6, "overrides": {}, "time_budget": 40},
                "methods": [m("auto-pipeline", "ours-pipeline", ours, startup[0]),
                            m("torch-adam", "stream", torch, startup[1]), m("sklearn-stream", "stream", sklearn, startup[2]),
                            {"method": "dask-ml", "family": "stream", "status": "skipped", "points": []}]}
    s = compare.seeds_summary([res(0, 1.0, 2.0, 4.0), res(1, 3.0, 2.0, 1.5), res(2, None, 1.0, 3.0),
                               res(3, 1.0, None, None)], "x")
    auto = s["summary"]["auto-pipeline"]
    assert auto["time_to_target"] == {"median": 2.0, "min": 1.0, "max": None, "reached": 3, "seeds": 4}
    assert auto["ratio"] == {"median": 2.0, "min": 0.5, "max": None, "reached": 2, "seeds": 3}  # 0.5, 2.0, inf
    rows = {(r["seed"], r["method"]): r for r in s["per_seed"]}
    assert rows[(1, "auto-pipeline")]["best_peer"] == "sklearn-stream" and rows[(3, "auto-pipeline")]["best_peer"] is None
    assert rows[(1, "auto-pipeline")]["ratio_with_startup"] == (3.0 + 1.0) / (1.5 + 0.5)
    assert (1, "dask-ml") not in rows
    assert s["summary"]["torch-adam"]["ratio"]["median"] == 1.0
    assert "| auto-pipeline | ours-pipeline | 3/4 | 2.00 [1.00, not reached] |" in "\n".join(compare.seeds_table(s))
