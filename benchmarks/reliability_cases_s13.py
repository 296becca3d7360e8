"""Session 13's fresh-eyes pass over the bad-input promise (benchmarks/results/reliability_s13.md).

Every CLI command (ingest, train, evaluate, predict, report) and the estimator's path methods, given each kind of
bad input: a missing file, a wrong shape, NaN, wrong labels, an existing store, a corrupt store, a cluster that does
not start, a full disk, a second process on the same store. Each case records the exit code, the stderr lines
(the promise: one clear line) and whether any store that existed before changed (the promise: nothing lost).

Run: python benchmarks/reliability_cases_s13.py CODE_ROOT OUT.json [FULL_DISK_DIR]
(CODE_ROOT: a checkout whose code the commands run; FULL_DISK_DIR: an empty small file system, e.g. a 3 MB tmpfs,
for the full-disk cases, skipped without it). Commands run under nice -n 15 in a scratch folder; a command that
must run while another holds a store pauses that one with SIGSTOP once its lock or record exists.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reliability_util import finish, paused, start  # noqa: E402

root, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
FULL = Path(sys.argv[3]) if len(sys.argv) > 3 else None
W = Path(f"/tmp/relia13_cases/w-{root.name}")
shutil.rmtree(W, ignore_errors=True)
W.mkdir(parents=True)
env = {**os.environ, "PYTHONPATH": str(root)}
CL = ("--workers", "1", "--dashboard-address", ":0")


def cmd(*a):
    return ["nice", "-n", "15", sys.executable, *(("-m",) if not a[0] == "-c" else ()), *map(str, a)]


def tree(path):
    path = Path(path)
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return sorted((str(p.relative_to(path)), p.read_bytes()) for p in path.rglob("*") if p.is_file())


def run(name, *a, keep=(), timeout=600):
    """Run ``python -m A…``; record rc, stderr lines and whether the stores in ``keep`` changed."""
    before = {k: tree(W / k) for k in keep}
    t = time.time()
    r = subprocess.run(cmd(*a), cwd=W, env=env, capture_output=True, text=True, timeout=timeout)
    err = [line for line in r.stderr.strip().splitlines() if line.strip()]
    res = {"cmd": ("python -c …" if a[0] == "-c" else "python -m " + " ".join(map(str, a))).replace(str(W) + "/", ""),
           "rc": r.returncode, "stderr_lines": len(err), "stderr": err[-3:],
           "stdout_last": (r.stdout.strip().splitlines() or [""])[-1][:300], "seconds": round(time.time() - t, 1),
           "changed": [k for k in keep if tree(W / k) != before[k]],
           "left_beside": sorted(p.name for k in keep for p in W.glob(f"{k}.*")
                                 if not p.name.endswith(".csv"))}
    RES[name] = res
    print(name, res["rc"], res["stderr"][-1:] if res["stderr"] else res["stdout_last"], flush=True)
    return res


def popen(*a):
    return start(cmd(*a), W, env)


def csv(name, n, d=8, seed=0, labels=None, header=False):
    r = np.random.default_rng(seed)
    X = r.normal(size=(n, d))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int) if labels is None else labels(X)
    head = ",".join([f"f{i}" for i in range(d)] + ["label"]) + "\n" if header else ""
    (W / name).write_text(head + "".join(",".join(f"{v:.5f}" for v in x) + f",{k}\n" for x, k in zip(X, y)))


RES = {}
csv("a.csv", 4000, seed=1)
csv("five.csv", 300, d=5, seed=2)
run("setup_ingest", "pipeline.ingest", "a.csv", "--out", "d.zarr")
run("setup_ingest5", "pipeline.ingest", "five.csv", "--out", "d5.zarr")
run("setup_train", "pipeline.train", "--data", "d.zarr", "--store", "r.zarr", "--hidden", "8", "--iterations", "2",
    "--no-progress", *CL)
KEEP = ("d.zarr", "r.zarr", "d5.zarr")

# 1. missing files
run("missing_ingest_source", "pipeline.ingest", "nope.csv", "--out", "n.zarr", keep=KEEP)
run("missing_train_data", "pipeline.train", "--data", "nope.zarr", "--store", "rn.zarr", *CL, keep=KEEP)
run("missing_evaluate_data", "pipeline.evaluate", "--store", "r.zarr", "--data", "nope.zarr", *CL, keep=KEEP)
run("missing_evaluate_store", "pipeline.evaluate", "--store", "nope.zarr", "--data", "d.zarr", *CL, keep=KEEP)
run("missing_predict_data", "pipeline.predict", "--store", "r.zarr", "--data", "nope.zarr", "--out", "p.zarr", *CL,
    keep=KEEP)
run("missing_report_store", "pipeline.report", "--store", "nope.zarr", keep=KEEP)
run("missing_estimator_path", "-c", "from pipeline import ADMMClassifier as C; C().fit('nope.zarr')", keep=KEEP)

# 2. wrong shapes
run("shape_evaluate", "pipeline.evaluate", "--store", "r.zarr", "--data", "d5.zarr", *CL, keep=KEEP)
run("shape_predict", "pipeline.predict", "--store", "r.zarr", "--data", "d5.zarr", "--out", "p5.zarr", *CL, keep=KEEP)
run("shape_resume_other_data", "pipeline.train", "--data", "d5.zarr", "--store", "r.zarr", "--resume",
    "--iterations", "3", "--no-progress", *CL, keep=KEEP)
(W / "ragged.csv").write_text("1,2,3,0\n4,5,1\n6,7,8,1\n")
run("shape_ragged_csv", "pipeline.ingest", "ragged.csv", "--out", "rg.zarr", keep=KEEP)
np.savez(W / "x1d.npz", X=np.arange(5.0), y=np.arange(5) % 2)
run("shape_npz_1d", "pipeline.ingest", "x1d.npz", "--out", "x1d.zarr", keep=KEEP)
run("shape_estimator_predict_path", "-c", "import numpy as np; from pipeline import ADMMClassifier as C; "
    "m = C(hidden_layer_sizes=(3,), max_iter=1).fit(np.random.default_rng(0).normal(size=(60, 3)), np.arange(60) % 2); "
    "m.predict('d.zarr')", keep=KEEP)

# 3. NaN and inf
(W / "nan.csv").write_text("1,2,0\n3,nan,1\n4,5,0\n")
run("nan_in_csv", "pipeline.ingest", "nan.csv", "--out", "nan.zarr", keep=KEEP)
(W / "nanlabel.csv").write_text("1,2,0\n3,4,nan\n4,5,0\n")
run("nan_label_in_csv", "pipeline.ingest", "nanlabel.csv", "--out", "nanl.zarr", keep=KEEP)
np.savez(W / "inf.npz", X=np.array([[1.0, np.inf], [2.0, 3.0]]), y=np.array([0, 1]))
run("inf_in_npz", "pipeline.ingest", "inf.npz", "--out", "inf.zarr", keep=KEEP)

# 4. wrong labels
(W / "s.csv").write_text("a,b,label\n1,2,yes\n3,4,no\n5,6,maybe\n")
run("labels_strings", "pipeline.ingest", "s.csv", "--out", "s.zarr", keep=KEEP)
csv("one.csv", 300, seed=3, labels=lambda X: np.zeros(len(X), int))
run("setup_one_class", "pipeline.ingest", "one.csv", "--out", "one.zarr")
run("labels_one_class_train", "pipeline.train", "--data", "one.zarr", "--store", "r1.zarr", "--iterations", "1",
    "--no-progress", *CL, keep=KEEP)
csv("real.csv", 300, seed=4, labels=lambda X: np.round(X[:, 0], 3))
run("setup_real_labels", "pipeline.ingest", "real.csv", "--out", "real.zarr")
run("labels_real_valued_classification", "pipeline.train", "--data", "real.zarr", "--store", "rr.zarr",
    "--iterations", "1", "--no-progress", *CL, keep=KEEP)
csv("other.csv", 300, seed=5, labels=lambda X: (X[:, 0] > 0).astype(int) + 5)
run("setup_other_labels", "pipeline.ingest", "other.csv", "--out", "other.zarr")
run("labels_evaluate_unseen", "pipeline.evaluate", "--store", "r.zarr", "--data", "other.zarr", *CL, keep=KEEP)
run("labels_train_test_data_unseen", "pipeline.train", "--data", "d.zarr", "--test-data", "other.zarr",
    "--store", "rt.zarr", "--hidden", "4", "--iterations", "1", "--no-progress", *CL, keep=KEEP)

# 5. existing stores and paths of other kinds
(W / "mine").mkdir()
(W / "mine" / "notes.txt").write_text("my notes")
KEEP2 = KEEP + ("mine",)
run("exists_ingest_out", "pipeline.ingest", "a.csv", "--out", "d.zarr", keep=KEEP2)
run("exists_ingest_onto_run_store", "pipeline.ingest", "a.csv", "--out", "r.zarr", "--overwrite", keep=KEEP2)
run("exists_ingest_onto_user_folder", "pipeline.ingest", "a.csv", "--out", "mine", "--overwrite", keep=KEEP2)
run("exists_train_store", "pipeline.train", "--data", "d.zarr", "--store", "r.zarr", "--iterations", "1", *CL,
    keep=KEEP2)
run("exists_train_onto_data", "pipeline.train", "--data", "d5.zarr", "--store", "d.zarr", "--overwrite",
    "--iterations", "1", *CL, keep=KEEP2)
run("exists_train_onto_user_folder", "pipeline.train", "--data", "d.zarr", "--store", "mine", "--overwrite",
    "--iterations", "1", *CL, keep=KEEP2)
run("exists_predict_onto_input_data", "pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out", "d.zarr",
    "--overwrite", *CL, keep=KEEP2)
run("exists_predict_onto_run_store", "pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out", "r.zarr",
    "--overwrite", *CL, keep=KEEP2)
run("exists_predict_onto_other_data", "pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out",
    "d5.zarr", "--overwrite", *CL, keep=KEEP2)
run("exists_predict_onto_user_folder", "pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out", "mine",
    "--overwrite", *CL, keep=KEEP2)
run("exists_report_into_user_folder", "pipeline.report", "--store", "r.zarr", "--out", "mine", keep=KEEP2)
run("exists_report_into_data_store", "pipeline.report", "--store", "r.zarr", "--out", "d.zarr", keep=KEEP2)
run("exists_estimator_store_of_user", "-c", "import numpy as np; from pipeline import ADMMClassifier as C; "
    "C(store='mine', max_iter=1).fit(np.random.default_rng(0).normal(size=(60, 3)), np.arange(60) % 2)", keep=KEEP2)

# 6. corrupt stores (copies)
shutil.copytree(W / "d.zarr", W / "dc.zarr")
chunk = sorted(p for p in (W / "dc.zarr" / "X").rglob("*") if p.is_file() and p.name != "zarr.json")[0]
chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])
KEEP3 = KEEP + ("dc.zarr",)
run("corrupt_chunk_evaluate", "pipeline.evaluate", "--store", "r.zarr", "--data", "dc.zarr", *CL, keep=KEEP3)
run("corrupt_chunk_predict", "pipeline.predict", "--store", "r.zarr", "--data", "dc.zarr", "--out", "pc.zarr", *CL,
    keep=KEEP3)
run("corrupt_chunk_train", "pipeline.train", "--data", "dc.zarr", "--store", "rc.zarr", "--iterations", "1",
    "--no-progress", *CL, keep=KEEP3)
run("corrupt_chunk_estimator_score", "-c", "import numpy as np; from pipeline import ADMMClassifier as C; "
    "m = C(hidden_layer_sizes=(3,), max_iter=1).fit(np.random.default_rng(0).normal(size=(60, 8)), np.arange(60) % 2); "
    "print(m.score('dc.zarr'))", keep=KEEP3)
shutil.copytree(W / "d.zarr", W / "dj.zarr")
(W / "dj.zarr" / "zarr.json").write_text("{not json")
run("corrupt_zarr_json_evaluate", "pipeline.evaluate", "--store", "r.zarr", "--data", "dj.zarr", *CL, keep=KEEP)
shutil.copytree(W / "r.zarr", W / "rm.zarr")
for m in (W / "rm.zarr").glob("manifest*"):
    m.unlink()
run("corrupt_run_no_manifest_evaluate", "pipeline.evaluate", "--store", "rm.zarr", "--data", "d.zarr", *CL, keep=KEEP)
run("corrupt_run_no_manifest_report", "pipeline.report", "--store", "rm.zarr", "--out", "rep-m", keep=KEEP)
run("corrupt_run_no_manifest_predict", "pipeline.predict", "--store", "rm.zarr", "--data", "d.zarr", "--out",
    "pm.zarr", *CL, keep=KEEP)
shutil.copytree(W / "r.zarr", W / "rj.zarr")
(W / "rj.zarr" / "zarr.json").write_text("")
run("corrupt_run_zarr_json_report", "pipeline.report", "--store", "rj.zarr", "--out", "rep-j", keep=KEEP)

# 7. a cluster that does not start
run("cluster_unreachable_train", "pipeline.train", "--data", "d.zarr", "--store", "ru.zarr", "--cluster",
    "tcp://127.0.0.1:9", "--iterations", "1", keep=KEEP, timeout=300)
run("cluster_unreachable_evaluate", "pipeline.evaluate", "--store", "r.zarr", "--data", "d.zarr", "--cluster",
    "tcp://127.0.0.1:9", keep=KEEP, timeout=300)
run("cluster_unreachable_predict", "pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out", "pu.zarr",
    "--cluster", "tcp://127.0.0.1:9", keep=KEEP, timeout=300)
(W / "sched.json").write_text("{}")
run("cluster_bad_scheduler_file", "pipeline.evaluate", "--store", "r.zarr", "--data", "d.zarr", "--cluster",
    "sched.json", keep=KEEP, timeout=300)
run("cluster_workers_zero", "pipeline.train", "--data", "d.zarr", "--store", "rz.zarr", "--workers", "0", keep=KEEP)

# 8. a full disk (FULL: a small empty file system)
if FULL is not None:
    csv("big.csv", 120000, seed=6)
    run("full_ingest", "pipeline.ingest", "big.csv", "--out", FULL / "d.zarr", keep=KEEP)
    RES["full_ingest"]["left_on_disk"] = sorted(p.name for p in FULL.iterdir())
    for p in FULL.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    free = shutil.disk_usage(FULL).free
    (FULL / "filler").write_bytes(b"\0" * max(0, free - 16 * 1024))
    run("full_predict", "pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out", FULL / "p.zarr", *CL,
        keep=KEEP)
    RES["full_predict"]["left_on_disk"] = sorted(p.name for p in FULL.iterdir())
    run("full_train", "pipeline.train", "--data", "d.zarr", "--store", FULL / "r.zarr", "--hidden", "8",
        "--iterations", "2", "--no-progress", *CL, keep=KEEP)
    RES["full_train"]["left_on_disk"] = sorted(p.name for p in FULL.iterdir())
    run("full_report", "pipeline.report", "--store", "r.zarr", "--out", FULL / "rep", keep=KEEP)
    RES["full_report"]["left_on_disk"] = sorted(p.name for p in FULL.iterdir())
    for p in FULL.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()

# 9. a second process on the same store
first = popen("pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out", "p2.zarr", *CL)
ok = paused(first, lambda: (W / "p2.zarr.lock").exists() or list(W.glob("p2.zarr.partial-*")))
run("second_predict_same_out", "pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out", "p2.zarr",
    "--overwrite", *CL, keep=KEEP)
RES["second_predict_same_out"]["first_paused"] = ok
RES["second_predict_same_out"]["first_after"] = finish(first)
RES["second_predict_same_out"]["left_beside"] = sorted(p.name for p in W.glob("p2.zarr*"))
first = popen("pipeline.report", "--store", "r.zarr", "--out", "rep2")
ok = paused(first, lambda: (W / "rep2.lock").exists() or (W / "rep2").exists())
run("second_report_same_out", "pipeline.report", "--store", "r.zarr", "--out", "rep2", keep=KEEP)
run("train_overwrite_while_report_reads", "pipeline.train", "--data", "d.zarr", "--store", "r.zarr", "--overwrite",
    "--hidden", "8", "--iterations", "1", "--no-progress", *CL, keep=KEEP)
RES["second_report_same_out"]["first_paused"] = ok
RES["second_report_same_out"]["first_after"] = finish(first)
first = popen("-c", "import time, numpy as np; from pipeline import ADMMClassifier as C; "
              "m = C(hidden_layer_sizes=(3,), max_iter=1).fit(np.random.default_rng(0).normal(size=(60, 8)), "
              "np.arange(60) % 2); p = m.predict('d.zarr'); open('lazy-made', 'w').close(); "
              "time.sleep(1); print(p.compute()[:3])")
ok = paused(first, lambda: (W / "lazy-made").exists())
csv("b.csv", 4000, seed=7)  # the same shape, other rows
run("ingest_overwrite_under_a_lazy_estimator_predict", "pipeline.ingest", "b.csv", "--out", "d.zarr", "--overwrite")
RES["ingest_overwrite_under_a_lazy_estimator_predict"]["estimator_after"] = finish(first)
out.write_text(json.dumps(RES, indent=1))
