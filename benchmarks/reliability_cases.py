"""Before/after cases of benchmarks/results/reliability_s12.md: every command under nice -n 15, in a scratch folder.

Run: python benchmarks/reliability_cases.py CODE_ROOT OUT.json (CODE_ROOT: a checkout whose code the commands run).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

root, out = Path(sys.argv[1]), Path(sys.argv[2])
W = Path(f"/tmp/relia_demo/w-{root.name}")
shutil.rmtree(W, ignore_errors=True)
W.mkdir(parents=True)
env = {**os.environ, "PYTHONPATH": str(root)}
def cmd(*a):
    return ["nice", "-n", "15", sys.executable, "-m", *map(str, a)]
def run(*a, timeout=600):
    t = time.time()
    r = subprocess.run(cmd(*a), cwd=W, env=env, capture_output=True, text=True, timeout=timeout)
    return {"cmd": "python -m " + " ".join(map(str, a)).replace(str(W) + "/", ""), "rc": r.returncode,
            "stderr": r.stderr.strip().splitlines()[-3:], "stdout_first": (r.stdout.splitlines() or [""])[0],
            "stdout_last": (r.stdout.splitlines() or [""])[-1], "seconds": round(time.time() - t, 1)}
def popen(*a):
    return subprocess.Popen(cmd(*a), cwd=W, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
def wait(cond, p, t=180):
    d = time.time() + t
    while not cond():
        if p.poll() is not None or time.time() > d:
            return False
        time.sleep(0.02)
    return True
def tree(path):
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in Path(path).rglob("*") if p.is_file())

rng = np.random.default_rng(0)
def csv(name, n, seed):
    r = np.random.default_rng(seed)
    X = r.normal(size=(n, 8))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    (W / name).write_text("".join(",".join(f"{v:.5f}" for v in x) + f",{k}\n" for x, k in zip(X, y)))
csv("a.csv", 40000, 1)
csv("b.csv", 40000, 2)
csv("small.csv", 500, 3)
res = {}
res["setup"] = run("pipeline.ingest", "a.csv", "--out", "d.zarr", "--test-fraction", "0.1")

# 1a. ingest --overwrite while a train reads d.zarr (train paused by SIGSTOP once its run store exists)
tr = popen("pipeline.train", "--data", "d.zarr", "--store", "r.zarr", "--hidden", "16", "--iterations", "6",
           "--workers", "1", "--dashboard-address", ":0", "--no-progress", "--validation-fraction", "0")
ok = wait(lambda: (W / "r.zarr" / "zarr.json").exists(), tr)
tr.send_signal(signal.SIGSTOP)
before = tree(W / "d.zarr")
res["ingest_overwrite_while_train_reads"] = run("pipeline.ingest", "b.csv", "--out", "d.zarr", "--overwrite")
res["ingest_overwrite_while_train_reads"]["data_store_replaced"] = tree(W / "d.zarr") != before
tr.send_signal(signal.SIGCONT)
o, e = tr.communicate(timeout=600)
res["the_train_after_it"] = {"rc": tr.returncode, "stdout_last": o.strip().splitlines()[-1:],
                             "stderr": e.strip().splitlines()[-2:], "waited": ok}

# 1b. two ingests into one --out: the first paused (SIGSTOP) once it writes
shutil.rmtree(W / "d.zarr", ignore_errors=True)
run("pipeline.ingest", "small.csv", "--out", "d.zarr")
first = popen("pipeline.ingest", "a.csv", "--out", "d.zarr", "--overwrite", "--chunk-rows", "1024")
wait(lambda: list(W.glob("d.zarr.partial-*")) or (W / "d.zarr.lock").exists(), first)
first.send_signal(signal.SIGSTOP)
res["second_ingest_same_out"] = run("pipeline.ingest", "b.csv", "--out", "d.zarr", "--overwrite")
# 1c. a train and an evaluate on the store being written
res["train_on_store_being_written"] = run("pipeline.train", "--data", "d.zarr", "--store", "r2.zarr", "--hidden", "8",
                                          "--iterations", "1", "--workers", "1", "--dashboard-address", ":0", "--no-progress")
res["evaluate_on_store_being_written"] = run("pipeline.evaluate", "--store", "r.zarr", "--data", "d.zarr", "--workers", "1",
                                             "--dashboard-address", ":0")
# 1d. kill -9 of the paused ingest, then the next ingest
first.kill()
first.wait()
res["ingest_after_kill9_of_an_ingest"] = run("pipeline.ingest", "small.csv", "--out", "d.zarr", "--overwrite")
res["leftovers_after"] = sorted(p.name for p in W.glob("d.zarr.*"))
# 1e. kill -9 of a paused evaluate (reader), then ingest --overwrite
ev = popen("pipeline.evaluate", "--store", "r.zarr", "--data", "d-test.zarr", "--workers", "1", "--dashboard-address", ":0")
wait(lambda: list(W.glob("d-test.zarr.reader-*")) or False, ev, 60)
ev.send_signal(signal.SIGSTOP)
res["ingest_overwrite_while_evaluate_reads"] = run("pipeline.ingest", "small.csv", "--out", "d-test.zarr", "--overwrite")
ev.kill()
ev.wait()
res["ingest_after_kill9_of_the_evaluate"] = run("pipeline.ingest", "small.csv", "--out", "d-test.zarr", "--overwrite")

# 2. --resume --overwrite
res["resume_overwrite"] = run("pipeline.train", "--store", "r.zarr", "--resume", "--overwrite", "--iterations", "7",
                              "--workers", "1", "--dashboard-address", ":0", "--no-progress")
# 3. evaluate with labels the run never saw
r = np.random.default_rng(4)
X = r.normal(size=(300, 8))
y = (X[:, 0] > 0).astype(int)
y[:20] = 7
y[20:25] = 9
(W / "unseen.csv").write_text("".join(",".join(f"{v:.5f}" for v in x) + f",{k}\n" for x, k in zip(X, y)))
run("pipeline.ingest", "unseen.csv", "--out", "unseen.zarr")
res["evaluate_unseen_labels"] = run("pipeline.evaluate", "--store", "r.zarr", "--data", "unseen.zarr", "--json",
                                    "--workers", "1", "--dashboard-address", ":0")
# 4. string labels
(W / "s.csv").write_text("a,b,label\n1,2,yes\n3,4,no\n5,6,maybe\n")
res["string_labels"] = run("pipeline.ingest", "s.csv", "--out", "s.zarr")
# 5. --store without --data
res["store_without_data"] = run("pipeline.train", "--store", "demo.zarr", "--iterations", "1", "--workers", "1",
                                "--dashboard-address", ":0", "--no-progress")
# 6. a bare x.gz given as --data
(W / "x.gz").write_bytes(b"")
res["bare_gz_as_data"] = run("pipeline.evaluate", "--store", "r.zarr", "--data", "x.gz")
(W / "X.CSV").write_text("1,0\n")
res["upper_CSV_as_data"] = run("pipeline.evaluate", "--store", "r.zarr", "--data", "X.CSV")
out.write_text(json.dumps(res, indent=1))
