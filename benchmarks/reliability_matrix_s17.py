"""Session 17's bad-input audit (benchmarks/results/audit17_s17.md + .json): the cells session 15's matrix
(reliability_matrix_s15.py, rel15_s15.md) did not have, run the same way and judged by the same rule.

New here: CSV variants (a text feature column, a label column alone, a truncated .gz, a folder given as the CSV, an
NPZ without y, an empty label), unseen labels at evaluate/predict, a store of another kind at every input and output,
a damaged run store (zarr.json, manifest.json, a model chunk, the metrics), --overwrite onto things no admm-dask
command made (a folder of the user's files, another tool's Zarr group, a symbolic link to them), a cluster that does
not start (a scheduler file naming no scheduler, a jobqueue config with a missing scheduler interface or host, sbatch
missing, a scheduler with no worker), a malformed or unknown flag on every command, a full disk at predict/report/
train-create/estimator, SIGINT in mid-run (train, ingest --overwrite, predict --overwrite), and a second process
(a plain train, a second ingest, the estimator) on a store in use. The estimator's cells: fit/predict variants.

Run (root, for the tmpfs mounts): python benchmarks/reliability_matrix_s17.py CODE_ROOT OUT.json [CASE_PREFIX…]
Scratch: /tmp/audit17_cases/<CODE_ROOT's name>. Every command runs under nice -n 15.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reliability_util import Matrix, paused  # noqa: E402

root, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
M = Matrix(root, Path("/tmp/audit17_cases") / root.name, sys.argv[3:], mounts=("full", "ro"))
W, run, cmd = M.W, M.run, M.cmd
CL = ("--workers", "1", "--dashboard-address", ":0", "--local-mode", "threads")
EST = "    import numpy as np\n    from pipeline import ADMMClassifier as C\n"
EST_FIT = EST + ("    m = C(hidden_layer_sizes=(3,), max_iter=1).fit(np.random.default_rng(0).normal(size=(60, 8)), "
                 "np.arange(60) % 2)\n")


def csv(name, n, d=8, seed=0, labels=None, header=False):
    r = np.random.default_rng(seed)
    X = r.normal(size=(n, d))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int) if labels is None else labels(X)
    head = ",".join([f"f{i}" for i in range(d)] + ["label"]) + "\n" if header else ""
    (W / name).write_text(head + "".join(",".join(f"{v:.5f}" for v in x) + f",{k}\n" for x, k in zip(X, y)))


def setup(*a):
    p = subprocess.run(cmd(*a), cwd=W, env=M.env, capture_output=True, text=True)
    assert p.returncode == 0, (a, p.stderr)


def copy(src, dst):
    if (W / dst).exists():
        shutil.rmtree(W / dst)
    shutil.copytree(W / src, W / dst)
    return dst


# ---- setup: d.zarr (4000 x 8, 0/1), r.zarr (2 iterations), p.zarr (its predictions), d3.zarr (labels 0/1/2)
csv("a.csv", 4000, seed=1)
csv("three.csv", 300, seed=2, labels=lambda X: (X[:, 0] > 0).astype(int) + 2 * (X[:, 1] > 1))
setup("pipeline.ingest", "a.csv", "--out", "d.zarr")
setup("pipeline.ingest", "three.csv", "--out", "d3.zarr")
setup("pipeline.train", "--data", "d.zarr", "--store", "r.zarr", "--hidden", "8", "--iterations", "2", "--no-progress",
      *CL)
setup("pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out", "p.zarr", *CL)
(W / "mine").mkdir()
(W / "mine" / "notes.txt").write_text("the user's own file\n")
(W / "mine.lnk").symlink_to("mine")
import zarr  # noqa: E402

g = zarr.open_group(str(W / "other.zarr"), mode="w")  # another tool's Zarr group, with an X and a y
g.create_array("X", shape=(10, 3), dtype="f4")[:] = 1.0
g.create_array("y", shape=(10,), dtype="i4")[:] = 0
M.keep = ["d.zarr", "r.zarr", "p.zarr", "d3.zarr", "mine", "other.zarr"]
READ = ("pipeline.evaluate", "--store", "r.zarr", "--data")

# ---- 1. CSV and source variants
(W / "id.csv").write_text("id,f1,label\nid0,1.5,0\nid1,2.5,1\nid2,0.5,0\n")
run("csv_text_feature_column__ingest", "pipeline.ingest", "id.csv", "--out", "id.zarr")
(W / "labelonly.csv").write_text("label\n0\n1\n0\n1\n")
run("csv_label_column_only__ingest", "pipeline.ingest", "labelonly.csv", "--out", "lo.zarr")
(W / "emptylabel.csv").write_text("1,2,0\n3,4,\n5,6,1\n")
run("csv_empty_label__ingest", "pipeline.ingest", "emptylabel.csv", "--out", "el.zarr")
(W / "inflabel.csv").write_text("1,2,0\n3,4,inf\n5,6,1\n")
run("csv_inf_label__ingest", "pipeline.ingest", "inflabel.csv", "--out", "il.zarr")
import gzip  # noqa: E402

blob = gzip.compress((W / "a.csv").read_bytes())
(W / "cut.csv.gz").write_bytes(blob[: len(blob) // 2])
run("csv_truncated_gz__ingest", "pipeline.ingest", "cut.csv.gz", "--out", "gz.zarr")
(W / "bin.csv").write_bytes(os.urandom(4096))
run("csv_binary_garbage__ingest", "pipeline.ingest", "bin.csv", "--out", "bin.zarr")
(W / "adir.csv").mkdir()
run("csv_is_a_folder__ingest", "pipeline.ingest", "adir.csv", "--out", "ad.zarr")
np.savez(W / "noy.npz", X=np.zeros((10, 3)))
run("npz_without_y__ingest", "pipeline.ingest", "noy.npz", "--out", "noy.zarr")
np.savez(W / "x1d.npz", X=np.zeros(10), y=np.zeros(10))
run("npz_1d_X__ingest", "pipeline.ingest", "x1d.npz", "--out", "x1d.zarr")
run("csv_label_column_unknown__ingest", "pipeline.ingest", "a.csv", "--out", "lc.zarr", "--label-column", "nope")
run("csv_test_fraction_bad__ingest", "pipeline.ingest", "a.csv", "--out", "tf.zarr", "--test-fraction", "1.5")

# ---- 2. labels
run("labels_unseen__evaluate", *READ, "d3.zarr", *CL, expect_ok=True)  # a warning line and rc 0 (README)
run("labels_unseen__train_test_data", "pipeline.train", "--data", "d.zarr", "--test-data", "d3.zarr", "--store",
    "rt.zarr", "--hidden", "4", "--iterations", "1", "--no-progress", *CL, expect_ok=True, out_ok=("rt.zarr",))
run("labels_unseen__estimator_score", "-c", EST_FIT + "    print(m.score(np.zeros((4, 8)), [0, 1, 2, 3]))",
    expect_ok=True)
run("labels_2d_y__estimator_fit", "-c", EST + "    C(max_iter=1).fit(np.zeros((10, 3)), np.zeros((10, 2)))")
run("labels_none__estimator_fit", "-c", EST + "    C(max_iter=1).fit(np.zeros((4, 3)), ['a', None, 'b', 'a'])")
run("X_text__estimator_fit", "-c", EST + "    C(max_iter=1).fit([['a', 'b'], ['c', 'd']], [0, 1])")
run("X_empty__estimator_fit", "-c", EST + "    C(max_iter=1).fit(np.zeros((0, 3)), np.zeros(0))")
run("predict_before_fit__estimator", "-c", EST + "    C().predict(np.zeros((3, 3)))")
run("predict_wrong_width_path__estimator", "-c", EST_FIT.replace("60, 8", "60, 3") + "    m.predict('d.zarr')")
run("unknown_param__estimator", "-c", EST + "    C(hiden_layer_sizes=(3,))")
run("fit_bad_param__estimator", "-c", EST + "    C(hidden_layer_sizes=(0,), max_iter=1).fit(np.zeros((10, 3)), "
    "np.arange(10) % 2)")

# ---- 3. a store of another kind, at every input and output
run("kind_run_as_data__train", "pipeline.train", "--data", "r.zarr", "--store", "rk.zarr", *CL)
run("kind_data_as_run__predict", "pipeline.predict", "--store", "d.zarr", "--data", "d.zarr", "--out", "pk.zarr", *CL)
run("kind_data_as_run__evaluate", "pipeline.evaluate", "--store", "d.zarr", "--data", "d.zarr", *CL)
run("kind_data_as_run__report", "pipeline.report", "--store", "d.zarr", "--out", "repk")
run("kind_data_as_run__resume", "pipeline.train", "--data", "d.zarr", "--store", "d.zarr", "--resume", *CL)
run("kind_predictions_as_data__predict", "pipeline.predict", "--store", "r.zarr", "--data", "p.zarr", "--out",
    "pk2.zarr", *CL)
run("kind_predictions_as_data__evaluate", *READ, "p.zarr", *CL)
run("kind_predictions_as_run__report", "pipeline.report", "--store", "p.zarr", "--out", "repk2")
run("kind_other_tool_zarr__train", "pipeline.train", "--data", "other.zarr", "--store", "rk3.zarr", *CL)
run("kind_other_tool_zarr__evaluate", "pipeline.evaluate", "--store", "other.zarr", "--data", "d.zarr", *CL)
run("kind_run_as_data__estimator_fit_path", "-c", EST + "    C(max_iter=1).fit('r.zarr')")
run("kind_predictions_as_data__estimator_predict", "-c", EST_FIT + "    m.predict('p.zarr').compute()")

# ---- 4. a damaged run store (each cell on its own copy)
copy("r.zarr", "rj.zarr")
(W / "rj.zarr" / "zarr.json").write_text("{not json")
copy("r.zarr", "rm.zarr")
(W / "rm.zarr" / "manifest.json").write_text("{not json")
copy("r.zarr", "rmo.zarr")
mchunks = sorted(p for p in (W / "rmo.zarr" / "model").rglob("*") if p.is_file() and "/c/" in str(p))
for p in mchunks:
    p.write_bytes(p.read_bytes()[: max(1, len(p.read_bytes()) // 3)])
copy("r.zarr", "rme.zarr")
for p in (W / "rme.zarr" / "metrics").rglob("*"):
    if p.is_file() and p.name != "zarr.json":
        p.write_bytes(b"\x00garbage")
DMG = ("rj.zarr", "rm.zarr", "rmo.zarr", "rme.zarr")
for tag, store in (("zarr_json", "rj.zarr"), ("manifest", "rm.zarr"), ("model_chunks", "rmo.zarr"),
                   ("metrics", "rme.zarr")):
    ok = tag in ("manifest", "metrics")  # a damaged manifest: the previous commit (warning); metrics: not read here
    # report reads neither model/ nor metrics/ chunks it cannot check (the manifest's history is the metrics)
    run(f"corrupt_run_{tag}__predict", "pipeline.predict", "--store", store, "--data", "d.zarr", "--out",
        f"pd-{tag}.zarr", *CL, keep=DMG, expect_ok=ok, out_ok=(f"pd-{tag}.zarr",))
    run(f"corrupt_run_{tag}__evaluate", "pipeline.evaluate", "--store", store, "--data", "d.zarr", *CL, keep=DMG,
        expect_ok=ok)
    run(f"corrupt_run_{tag}__report", "pipeline.report", "--store", store, "--out", f"rep-{tag}", keep=DMG,
        expect_ok=tag != "zarr_json", out_ok=(f"rep-{tag}",))
print("model chunks cut:", [str(p.relative_to(W)) for p in mchunks], flush=True)
copy("r.zarr", "rj2.zarr")
(W / "rj2.zarr" / "zarr.json").write_text("{not json")
run("corrupt_run_zarr_json__resume", "pipeline.train", "--store", "rj2.zarr", "--resume", "--iterations", "3",
    "--no-progress", *CL, keep=("rj2.zarr",))
run("corrupt_run_zarr_json__overwrite", "pipeline.train", "--data", "d.zarr", "--store", "rj2.zarr", "--overwrite",
    "--iterations", "1", "--no-progress", *CL, keep=("rj2.zarr",))
copy("d.zarr", "da.zarr")
meta = json.loads((W / "da.zarr" / "zarr.json").read_text())
meta["attributes"] = {k: v for k, v in meta["attributes"].items() if k not in ("n_samples", "n_features")}
(W / "da.zarr" / "zarr.json").write_text(json.dumps(meta))
run("corrupt_data_attributes__train", "pipeline.train", "--data", "da.zarr", "--store", "rda.zarr", *CL,
    keep=("da.zarr",))
run("corrupt_data_attributes__predict", "pipeline.predict", "--store", "r.zarr", "--data", "da.zarr", "--out",
    "pda.zarr", *CL, keep=("da.zarr",))

# ---- 5. --overwrite onto things no admm-dask command made
for flag in ((), ("--overwrite",)):
    t = "_overwrite" if flag else ""
    run(f"user_folder{t}__ingest", "pipeline.ingest", "a.csv", "--out", "mine", *flag)
    run(f"user_folder{t}__train", "pipeline.train", "--data", "d.zarr", "--store", "mine", "--iterations", "1", *flag,
        *CL)
    run(f"user_folder{t}__predict", "pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out", "mine",
        *flag, *CL)
    run(f"user_folder_link{t}__train", "pipeline.train", "--data", "d.zarr", "--store", "mine.lnk", "--iterations", "1",
        *flag, *CL)
    run(f"other_tool_zarr{t}__ingest", "pipeline.ingest", "a.csv", "--out", "other.zarr", *flag)
    run(f"other_tool_zarr{t}__train", "pipeline.train", "--data", "d.zarr", "--store", "other.zarr", "--iterations",
        "1", *flag, *CL)
    run(f"other_tool_zarr{t}__predict", "pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out",
        "other.zarr", *flag, *CL)
    run(f"data_store{t}__predict_out", "pipeline.predict", "--store", "r.zarr", "--data", "d3.zarr", "--out", "d.zarr",
        *flag, *CL)
    run(f"predictions_store{t}__ingest", "pipeline.ingest", "a.csv", "--out", "p.zarr", *flag)
    run(f"predictions_store{t}__train", "pipeline.train", "--data", "d.zarr", "--store", "p.zarr", "--iterations", "1",
        *flag, *CL)
run("user_folder__report_out", "pipeline.report", "--store", "r.zarr", "--out", "mine")
run("user_folder__estimator_store", "-c", EST + "    C(store='mine', max_iter=1).fit(np.zeros((20, 8)), "
    "np.arange(20) % 2)")

# ---- 6. a cluster that does not start
(W / "sched.json").write_text(json.dumps({"address": "tcp://127.0.0.1:9", "type": "Scheduler"}))
run("cluster_scheduler_file_dead__train", "pipeline.train", "--data", "d.zarr", "--store", "rcs.zarr", "--cluster",
    "sched.json", timeout=300)
run("cluster_scheduler_file_missing__predict", "pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out",
    "pcs.zarr", "--cluster", "nosuch.json", timeout=300)
run("cluster_unknown_host__evaluate", *READ, "d.zarr", "--cluster", "tcp://no-such-host.invalid:8786", timeout=300)
run("cluster_bad_spec__train", "pipeline.train", "--data", "d.zarr", "--store", "rcb.zarr", "--cluster", "nonsense",
    timeout=300)
(W / "jq_if.yaml").write_text("jobqueue:\n  slurm:\n    cores: 1\n    memory: 1GiB\n"
                              "    scheduler-options:\n      interface: nosuchif0\n")
run("jobqueue_missing_scheduler_interface__train", "pipeline.train", "--data", "d.zarr", "--store", "rqi.zarr",
    "--cluster", "slurm", "--jobqueue-config", "jq_if.yaml", "--worker-timeout", "60", "--iterations", "1",
    "--no-progress", timeout=300)
(W / "jq_host.yaml").write_text("jobqueue:\n  slurm:\n    cores: 1\n    memory: 1GiB\n"
                                "    scheduler-options:\n      host: 10.255.255.1\n")
run("jobqueue_missing_scheduler_host__train", "pipeline.train", "--data", "d.zarr", "--store", "rqh.zarr",
    "--cluster", "slurm", "--jobqueue-config", "jq_host.yaml", "--worker-timeout", "60", "--iterations", "1",
    "--no-progress", timeout=300)
run("jobqueue_config_missing__train", "pipeline.train", "--data", "d.zarr", "--store", "rqm.zarr", "--cluster",
    "slurm", "--jobqueue-config", "nosuch.yaml", "--iterations", "1", timeout=300)
NOSBATCH = ["env", "PATH=" + ":".join(p for p in os.environ["PATH"].split(":") if not (Path(p) / "sbatch").exists())]
run("jobqueue_no_sbatch__train", "pipeline.train", "--data", "d.zarr", "--store", "rqs.zarr", "--cluster", "slurm",
    "--worker-timeout", "60", "--iterations", "1", "--no-progress", pre=NOSBATCH, timeout=300)
# a scheduler nobody gives a worker (unsupervised): how long, and what is said
if not M.only or any(o.startswith("cluster_no_worker") for o in M.only):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    sched = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                              str(port), "--dashboard-address", ":0"], cwd=W, env=M.env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    time.sleep(4)
    try:
        run("cluster_no_worker__train", "pipeline.train", "--data", "d.zarr", "--store", "rnw.zarr", "--cluster",
            f"tcp://127.0.0.1:{port}", "--iterations", "1", "--no-progress", timeout=900)
        run("cluster_no_worker_timeout__train", "pipeline.train", "--data", "d.zarr", "--store", "rnw2.zarr",
            "--cluster", f"tcp://127.0.0.1:{port}", "--worker-timeout", "10", "--iterations", "1", "--no-progress",
            timeout=900)
    finally:
        sched.terminate()
        sched.wait()

# ---- 7. malformed and unknown flags, on every command
run("flag_unknown__ingest", "pipeline.ingest", "a.csv", "--out", "f.zarr", "--bogus")
run("flag_unknown__train", "pipeline.train", "--data", "d.zarr", "--store", "rf.zarr", "--hiden", "8")
run("flag_unknown__predict", "pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out", "pf.zarr", "--x")
run("flag_unknown__evaluate", *READ, "d.zarr", "--bogus")
run("flag_unknown__report", "pipeline.report", "--store", "r.zarr", "--bogus")
run("flag_missing_required__predict", "pipeline.predict", "--store", "r.zarr")
run("flag_missing_required__ingest", "pipeline.ingest")
run("flag_bad_value__train", "pipeline.train", "--data", "d.zarr", "--store", "rf.zarr", "--iterations", "-3")
run("flag_bad_value_gamma__train", "pipeline.train", "--data", "d.zarr", "--store", "rf.zarr", "--gamma", "nan", *CL)
run("flag_conflict__train", "pipeline.train", "--data", "d.zarr", "--store", "r.zarr", "--resume", "--overwrite")

# ---- 8. a full disk: predict, report, a fresh train, the estimator
if not M.only or any(o.startswith("full") for o in M.only):
    M.mount("full", "1m")
    (W / "full" / "filler").write_bytes(b"\0" * (shutil.disk_usage(W / "full").free - 8192))
    F = ("full",)
    run("full__predict_out", "pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out", "full/p.zarr", *CL,
        keep=F)
    run("full__report_out", "pipeline.report", "--store", "r.zarr", "--out", "full/rep", keep=F)
    run("full__train_new_store", "pipeline.train", "--data", "d.zarr", "--store", "full/r.zarr", "--iterations", "1",
        "--no-progress", *CL, keep=F)
    run("full__ingest", "pipeline.ingest", "a.csv", "--out", "full/d.zarr", keep=F)
    run("full__estimator_store", "-c", EST + "    C(store='full/e.zarr', max_iter=1).fit(np.zeros((20, 8)), "
        "np.arange(20) % 2)", keep=F)
    M.res["full__left_on_disk"] = sorted(p.name for p in (W / "full").iterdir())
    M.umount("full")

# ---- 9. a read-only folder: the estimator's store, an ingest --overwrite of a store in it
if not M.only or any(o.startswith("readonly") for o in M.only):
    M.mount("ro", "4m")
    shutil.copytree(W / "d.zarr", W / "ro" / "d.zarr")
    subprocess.run(["mount", "-o", "remount,ro", str(W / "ro")], check=True)
    R = ("ro",)
    run("readonly__estimator_store", "-c", EST + "    C(store='ro/e.zarr', max_iter=1).fit(np.zeros((20, 8)), "
        "np.arange(20) % 2)", keep=R)
    run("readonly__ingest_overwrite", "pipeline.ingest", "a.csv", "--out", "ro/d.zarr", "--overwrite", keep=R)
    run("readonly__train_overwrite_elsewhere", "pipeline.train", "--data", "ro/d.zarr", "--store", "ro/r.zarr",
        "--iterations", "1", *CL, keep=R)
    M.umount("ro")

# ---- 10. SIGINT in mid-run: the store it would replace is intact, nothing left, one line, rc 130
if not M.only or any(o.startswith("sigint") for o in M.only):
    copy("r.zarr", "ri.zarr")
    old_run = M.digest(W / "ri.zarr")

    def overwritten_or_kept():  # before the new run's first commit: the old run back, byte for byte; after it: the
        if M.digest(W / "ri.zarr") == old_run:  # new run, committed (README); never both, never none
            return not any(W.glob("ri.zarr.replaced-*"))
        m = json.loads((W / "ri.zarr" / "manifest.json").read_text())
        return m.get("iteration", 0) >= 1 and not any(W.glob("ri.zarr.replaced-*"))

    M.signal_case("sigint__train_overwrite", ["pipeline.train", "--data", "d.zarr", "--store", "ri.zarr",
                                              "--overwrite", "--hidden", "64", "--iterations", "50",
                                              "--no-progress", *CL],
                  lambda: any(W.glob("ri.zarr.replaced-*")), keep=(), expect_rc=130, intact=overwritten_or_kept)
    M.res.get("sigint__train_overwrite", {})["old_run_back"] = M.digest(W / "ri.zarr") == old_run
    copy("r.zarr", "ri2.zarr")
    M.signal_case("sigint__train_resume", ["pipeline.train", "--store", "ri2.zarr", "--resume", "--iterations",
                                           "400", "--no-progress", *CL],
                  lambda: (W / "ri2.zarr.lock").exists(), delay=3.0, keep=(), expect_rc=130,
                  intact=lambda: json.loads((W / "ri2.zarr" / "manifest.json").read_text()).get("iteration", 0) >= 2)
    csv("big.csv", 200_000, seed=5)
    copy("d.zarr", "di.zarr")
    M.signal_case("sigint__ingest_overwrite", ["pipeline.ingest", "big.csv", "--out", "di.zarr", "--overwrite"],
                  lambda: any(W.glob("di.zarr.partial-*")), delay=0.5, keep=("di.zarr",), expect_rc=130)
    copy("p.zarr", "pi.zarr")
    M.signal_case("sigint__predict_overwrite", ["pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out",
                                                "pi.zarr", "--overwrite", *CL],
                  lambda: (W / "pi.zarr.lock").exists(), keep=("pi.zarr",), expect_rc=130)

# ---- 11. a second process on a store in use (the first paused with SIGSTOP once its lock exists)
if not M.only or any(o.startswith("second") for o in M.only):
    first = M.popen("pipeline.train", "--data", "d.zarr", "--store", "r2.zarr", "--hidden", "8", "--iterations", "3",
                    "--no-progress", *CL)
    ok = paused(first, lambda: (W / "r2.zarr/manifest.json").exists()
                and '"iteration": 1' in (W / "r2.zarr/manifest.json").read_text())
    run("second__plain_train_same_store", "pipeline.train", "--data", "d.zarr", "--store", "r2.zarr", "--iterations",
        "1", *CL)
    run("second__estimator_same_store", "-c", EST + "    C(store='r2.zarr', max_iter=1).fit(np.zeros((20, 8)), "
        "np.arange(20) % 2)")
    run("second__report_while_training", "pipeline.report", "--store", "r2.zarr", "--out", "rep2", expect_ok=True,
        out_ok=("rep2",))
    M.res["second__plain_train_same_store"]["first_paused"] = ok
    M.res["second__plain_train_same_store"]["first_after"] = M.finish(first)
    if not (W / "big.csv").exists():  # made by the SIGINT section, which a run of "second" alone skips
        csv("big.csv", 200_000, seed=5)
    first = M.popen("pipeline.ingest", "big.csv", "--out", "d9.zarr")
    ok = paused(first, lambda: (W / "d9.zarr.lock").exists())
    run("second__ingest_same_out", "pipeline.ingest", "a.csv", "--out", "d9.zarr")
    run("second__train_on_data_being_written", "pipeline.train", "--data", "d9.zarr", "--store", "r9.zarr", *CL)
    M.res["second__ingest_same_out"]["first_paused"] = ok
    M.res["second__ingest_same_out"]["first_after"] = M.finish(first)

M.write(out)
