"""Session 15's bad-input matrix (benchmarks/results/rel15_s15.md + .json).

Every kind of bad input x every entry point (pipeline.ingest, pipeline.train fresh and --resume, pipeline.predict,
pipeline.evaluate, pipeline.report, the estimator's fit/predict on arrays and on paths). For each cell: the exit
status, the stderr (all of it, trimmed), whether a traceback leaked, whether any store that existed before changed
(SHA-256 over every file of it, before and after), and which files the command left behind (new top-level entries
of the scratch folder, and new files inside the stores: locks, reader records, partial or temp files).

The promise checked: one clear line ``error: …`` (exit 2; the estimator: one exception whose message is the line),
no traceback, nothing that existed changed, nothing left behind that the command made.

Run (root, for the tmpfs mounts): python benchmarks/reliability_matrix_s15.py CODE_ROOT OUT.json [CASE_PREFIX…]
Scratch: /tmp/rel15_cases (full-disk and read-only cells mount small tmpfs file systems inside it). Every command runs
under nice -n 15. A command that must run while another holds a store pauses that one with SIGSTOP once its lock or
record exists, so nothing depends on timing.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reliability_util import finish as finish_paused  # noqa: E402
from benchmarks.reliability_util import paused, start  # noqa: E402

root, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
ONLY = sys.argv[3:]
W = Path("/tmp/rel15_cases") / root.name
for m in ("full", "ro", "fullt"):
    subprocess.run(["umount", str(W / m)], capture_output=True)
shutil.rmtree(W, ignore_errors=True)
W.mkdir(parents=True)
env = {**os.environ, "PYTHONPATH": str(root)}
CL = ("--workers", "1", "--dashboard-address", ":0", "--local-mode", "threads")
RES = {}
TRACE = re.compile(r"Traceback \(most recent call last\)|^\s+File \"", re.M)


def cmd(*a):
    if a[0] == "-c":
        return ["nice", "-n", "15", sys.executable, "-c", EST_WRAP.format(code=a[1])]
    return ["nice", "-n", "15", sys.executable, "-m", *map(str, a)]


# the estimator's cells: the exception's type and message on one line (as a notebook shows its last line), plus
# whether a non-InputError/ValueError/TypeError type surfaced (a leak of an internal error)
EST_WRAP = """
import sys, traceback
try:
{code}
except Exception as exc:
    sys.stderr.write(type(exc).__module__ + "." + type(exc).__name__ + ": " + str(exc) + "\\n")
    sys.exit(1)
"""


def digest(path):
    """SHA-256 over every file (relative name + bytes) of ``path``; None if absent."""
    path = Path(path)
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(path.parent)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def listing():
    return {str(p.relative_to(W)) for p in W.rglob("*")}


STORES = ["d.zarr", "r.zarr", "d5.zarr", "one.zarr"]


def record(name, a, r, before, files_before, seconds, expect_ok=False, out_ok=()):
    err = [line for line in r["stderr"].strip().splitlines() if line.strip()
           and not re.match(r"(slurm|pbs): (scheduler|waiting)", line)]  # a batch cluster's progress lines
    new = sorted(p for p in listing() - files_before
                 if not any(p == o or p.startswith(o + "/") for o in out_ok))
    new_top = sorted({p.split("/")[0] for p in new if "/" not in p or p.split("/")[0] in before})
    res = {"cmd": ("python -c …" if a[0] == "-c" else "python -m " + " ".join(map(str, a))).replace(str(W) + "/", ""),
           "code": a[1].strip() if a[0] == "-c" else None,
           "rc": r["rc"], "stderr_lines": len(err), "stderr": [e[:400] for e in err[-4:]],
           "traceback": bool(TRACE.search(r["stderr"])),
           "stdout_last": (r["stdout"].strip().splitlines() or [""])[-1][:300], "seconds": round(seconds, 1),
           "changed": [k for k, v in before.items() if digest(W / k) != v],
           "left": [p for p in new if p.split("/")[0] in before] + [p for p in new_top if p not in before]}
    if expect_ok:
        res["ok"] = r["rc"] == 0 and not set(res["changed"]) - set(out_ok) and not res["traceback"]
    else:
        one = len(err) == 1 and (err[0].startswith("error: ") or a[0] == "-c") and "unexpected" not in err[0]
        res["ok"] = r["rc"] != 0 and one and not res["traceback"] and not res["changed"] and not res["left"]
    RES[name] = res
    print(("ok  " if res["ok"] else "BAD ") + name, res["rc"], err[-1][:200] if err else res["stdout_last"][:200],
          res["changed"] or "", res["left"] or "", flush=True)
    return res


def run(name, *a, keep=(), expect_ok=False, out_ok=(), timeout=600, pre=None):
    if ONLY and not any(name.startswith(o) for o in ONLY):
        return None
    keep = tuple(STORES) + tuple(keep)
    before = {k: digest(W / k) for k in keep if (W / k).exists()}
    files_before = listing()
    t = time.time()
    p = subprocess.run((pre or []) + cmd(*a), cwd=W, env=env, capture_output=True, text=True, timeout=timeout)
    return record(name, a, {"rc": p.returncode, "stderr": p.stderr, "stdout": p.stdout}, before, files_before,
                  time.time() - t, expect_ok, out_ok)


def popen(*a):
    return start(cmd(*a), W, env)


def finish(proc):
    return finish_paused(proc, lines=3, trace=TRACE)


def csv(name, n, d=8, seed=0, labels=None, header=False, sep=","):
    r = np.random.default_rng(seed)
    X = r.normal(size=(n, d))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int) if labels is None else labels(X)
    head = sep.join([f"f{i}" for i in range(d)] + ["label"]) + "\n" if header else ""
    (W / name).write_text(head + "".join(sep.join(f"{v:.5f}" for v in x) + f"{sep}{k}\n" for x, k in zip(X, y)))


def mount(name, size="20m", ro=False):
    (W / name).mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}" + (",ro" if ro else ""), "tmpfs", str(W / name)],
                   check=True)


def umount(name):
    subprocess.run(["umount", str(W / name)], check=False)


def set_attr(store, **kv):
    meta = json.loads((W / store / "zarr.json").read_text())
    meta["attributes"].update(kv)
    (W / store / "zarr.json").write_text(json.dumps(meta))


def copy(src, dst):
    shutil.copytree(W / src, W / dst)
    return dst


def fit_code(X, y, more=""):
    return (f"    import numpy as np\n    from pipeline import ADMMClassifier as C\n    X = {X}\n    y = {y}\n"
            f"    m = C(hidden_layer_sizes=(3,), max_iter=1).fit(X, y)\n{more}")


# ---- setup
csv("a.csv", 4000, seed=1)
csv("five.csv", 300, d=5, seed=2)
csv("one.csv", 300, seed=3, labels=lambda X: np.zeros(len(X), int))
for name, a in (("setup_ingest", ("pipeline.ingest", "a.csv", "--out", "d.zarr")),
                ("setup_ingest5", ("pipeline.ingest", "five.csv", "--out", "d5.zarr")),
                ("setup_ingest_one_class", ("pipeline.ingest", "one.csv", "--out", "one.zarr")),
                ("setup_train", ("pipeline.train", "--data", "d.zarr", "--store", "r.zarr", "--hidden", "8",
                                 "--iterations", "2", "--no-progress", *CL))):
    p = subprocess.run(cmd(*a), cwd=W, env=env, capture_output=True, text=True)
    assert p.returncode == 0, (name, p.stderr)
(W / "afile").write_text("not a store\n")
READ = ("pipeline.evaluate", "--store", "r.zarr", "--data")
EST = "    import numpy as np\n    from pipeline import ADMMClassifier as C\n"
EST_FIT = EST + "    m = C(hidden_layer_sizes=(3,), max_iter=1).fit(np.random.default_rng(0).normal(size=(60, 8)), np.arange(60) % 2)\n"

# ---- 1. missing file
run("missing__ingest", "pipeline.ingest", "nope.csv", "--out", "n.zarr")
run("missing__train", "pipeline.train", "--data", "nope.zarr", "--store", "rn.zarr", *CL)
run("missing__resume", "pipeline.train", "--data", "d.zarr", "--store", "nope.zarr", "--resume", *CL)
run("missing__predict_data", "pipeline.predict", "--store", "r.zarr", "--data", "nope.zarr", "--out", "p.zarr", *CL)
run("missing__predict_store", "pipeline.predict", "--store", "nope.zarr", "--data", "d.zarr", "--out", "p.zarr", *CL)
run("missing__evaluate", *READ, "nope.zarr", *CL)
run("missing__report", "pipeline.report", "--store", "nope.zarr", "--out", "rep")
run("missing__estimator_fit_path", "-c", EST + "    C().fit('nope.zarr')")
run("missing__estimator_predict_path", "-c", EST_FIT + "    m.predict('nope.zarr')")

# ---- 2. wrong shape
run("shape__evaluate", *READ, "d5.zarr", *CL)
run("shape__predict", "pipeline.predict", "--store", "r.zarr", "--data", "d5.zarr", "--out", "p5.zarr", *CL)
run("shape__resume", "pipeline.train", "--data", "d5.zarr", "--store", "r.zarr", "--resume", "--iterations", "3",
    "--no-progress", *CL)
(W / "ragged.csv").write_text("1,2,3,0\n4,5,1\n6,7,8,1\n")
run("shape__ingest_ragged_csv", "pipeline.ingest", "ragged.csv", "--out", "rg.zarr")
run("shape__estimator_predict_array", "-c", EST_FIT + "    m.predict(np.zeros((4, 5)))")
run("shape__estimator_predict_path", "-c", EST_FIT.replace("60, 8", "60, 5") + "    m.predict('d.zarr').compute()")
run("shape__estimator_fit_lengths", "-c", EST + "    C().fit(np.zeros((10, 3)), np.arange(9) % 2)")
run("shape__estimator_fit_1d", "-c", EST + "    C().fit(np.zeros(10), np.arange(10) % 2)")

# ---- 3. NaN and Inf
(W / "nan.csv").write_text("1,2,0\n3,nan,1\n4,5,0\n")
run("nan__ingest_csv", "pipeline.ingest", "nan.csv", "--out", "nan.zarr")
(W / "inf.csv").write_text("1,2,0\n3,inf,1\n4,-Infinity,0\n")
run("inf__ingest_csv", "pipeline.ingest", "inf.csv", "--out", "inf.zarr")
(W / "big.csv").write_text("1,2,0\n3,1e400,1\n4,5,0\n")
run("inf__ingest_csv_overflow", "pipeline.ingest", "big.csv", "--out", "big.zarr")
run("nan__estimator_fit", "-c", fit_code("np.array([[1.0, np.nan], [2, 3], [4, 5], [6, 7]])", "[0, 1, 0, 1]"))
run("inf__estimator_fit", "-c", fit_code("np.array([[1.0, np.inf], [2, 3], [4, 5], [6, 7]])", "[0, 1, 0, 1]"))
run("nan__estimator_fit_label", "-c", fit_code("np.arange(8.0).reshape(4, 2)", "np.array([0, 1, np.nan, 1])"))
run("nan__estimator_predict", "-c", EST_FIT + "    X = np.zeros((3, 8)); X[1, 2] = np.nan; print(m.predict(X))")
run("inf__estimator_predict", "-c", EST_FIT + "    X = np.zeros((3, 8)); X[1, 2] = np.inf; print(m.predict(X))")

# ---- 4. wrong labels
run("labels_one_class__train", "pipeline.train", "--data", "one.zarr", "--store", "r1.zarr", "--iterations", "1",
    "--no-progress", *CL)
run("labels_one_class__estimator_fit", "-c", fit_code("np.zeros((20, 3))", "np.zeros(20)"))
run("labels_one_class__estimator_fit_path", "-c", EST + "    C(max_iter=1).fit('one.zarr')")
(W / "s.csv").write_text("a,b,label\n1,2,yes\n3,4,no\n5,6,maybe\n")
run("labels_strings__ingest", "pipeline.ingest", "s.csv", "--out", "s.zarr")  # refused on main (debt15 may take them)

# ---- 5. CSV shapes
(W / "head.csv").write_text("f0,f1,label\n")
run("csv_header_only__ingest", "pipeline.ingest", "head.csv", "--out", "h.zarr")
(W / "empty.csv").write_text("")
run("csv_empty__ingest", "pipeline.ingest", "empty.csv", "--out", "e.zarr")
csv("semi.csv", 50, d=3, header=True, sep=";")
run("csv_semicolon__ingest", "pipeline.ingest", "semi.csv", "--out", "semi.zarr")
csv("semi_nohead.csv", 50, d=3, sep=";")
run("csv_semicolon_no_header__ingest", "pipeline.ingest", "semi_nohead.csv", "--out", "semi2.zarr")

# ---- 6. an existing store (every command, no flags and the replacing flag)
run("exists__ingest", "pipeline.ingest", "a.csv", "--out", "d.zarr")
run("exists__ingest_overwrite_run_store", "pipeline.ingest", "a.csv", "--out", "r.zarr", "--overwrite")
run("exists__train", "pipeline.train", "--data", "d.zarr", "--store", "r.zarr", "--iterations", "1", *CL)
run("exists__train_overwrite_data_store", "pipeline.train", "--data", "d5.zarr", "--store", "d.zarr", "--overwrite",
    *CL)
run("exists__predict_out", "pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out", "d5.zarr",
    "--overwrite", *CL)
run("exists__report_out_store", "pipeline.report", "--store", "r.zarr", "--out", "d.zarr")
run("exists__estimator_store", "-c", EST + "    C(store='d.zarr', max_iter=1).fit(np.zeros((20, 8)), np.arange(20) % 2)")

# ---- 7. a path that is a file
run("file__ingest_out", "pipeline.ingest", "a.csv", "--out", "afile", keep=("afile",))
run("file__ingest_out_overwrite", "pipeline.ingest", "a.csv", "--out", "afile", "--overwrite", keep=("afile",))
run("file__train_data", "pipeline.train", "--data", "afile", "--store", "rf.zarr", *CL, keep=("afile",))
run("file__train_store", "pipeline.train", "--data", "d.zarr", "--store", "afile", "--overwrite", *CL,
    keep=("afile",))
run("file__resume_store", "pipeline.train", "--data", "d.zarr", "--store", "afile", "--resume", *CL, keep=("afile",))
run("file__predict_out", "pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out", "afile",
    "--overwrite", *CL, keep=("afile",))
run("file__evaluate_store", "pipeline.evaluate", "--store", "afile", "--data", "d.zarr", *CL, keep=("afile",))
run("file__report_out", "pipeline.report", "--store", "r.zarr", "--out", "afile", keep=("afile",))
run("file__estimator_fit_path", "-c", EST + "    C().fit('afile')", keep=("afile",))
run("file__under_a_file_train", "pipeline.train", "--data", "d.zarr", "--store", "afile/r.zarr", *CL,
    keep=("afile",))

# ---- 8. a store of a newer / older format
copy("d.zarr", "dv3.zarr")
set_attr("dv3.zarr", format_version=3)
copy("r.zarr", "rv9.zarr")
set_attr("rv9.zarr", format_version=9)
copy("r.zarr", "rv0.zarr")
set_attr("rv0.zarr", format_version=0)
V = ("dv3.zarr", "rv9.zarr", "rv0.zarr")
run("format_newer__train", "pipeline.train", "--data", "dv3.zarr", "--store", "rn2.zarr", *CL, keep=V)
run("format_newer__predict_data", "pipeline.predict", "--store", "r.zarr", "--data", "dv3.zarr", "--out", "pv.zarr",
    *CL, keep=V)
run("format_newer__estimator_fit_path", "-c", EST + "    C(max_iter=1).fit('dv3.zarr')", keep=V)
run("format_newer__resume", "pipeline.train", "--data", "d.zarr", "--store", "rv9.zarr", "--resume",
    "--iterations", "3", *CL, keep=V)
run("format_newer__overwrite", "pipeline.train", "--data", "d.zarr", "--store", "rv9.zarr", "--overwrite",
    "--iterations", "1", "--no-progress", *CL, expect_ok=True)  # the user asked to replace that run: expected
copy("r.zarr", "rv9.zarr") if not (W / "rv9.zarr").exists() else None
run("format_older__predict_store", "pipeline.predict", "--store", "rv0.zarr", "--data", "d.zarr", "--out",
    "pv.zarr", *CL, keep=V)
run("format_older__report", "pipeline.report", "--store", "rv0.zarr", "--out", "repv", keep=V)
run("format_older__evaluate", "pipeline.evaluate", "--store", "rv0.zarr", "--data", "d.zarr", *CL, keep=V)

# ---- 9. a corrupt store: a truncated chunk, deleted chunks, a truncated checkpoint, a damaged zarr.json
copy("d.zarr", "dc.zarr")
chunk = sorted(p for p in (W / "dc.zarr" / "X").rglob("*") if p.is_file() and p.name != "zarr.json")[0]
chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])
copy("d.zarr", "dd.zarr")
for p in (W / "dd.zarr").rglob("c"):
    shutil.rmtree(p)
copy("r.zarr", "rt.zarr")
ck = max((p for p in (W / "rt.zarr" / "checkpoint").rglob("*") if p.is_file() and "/c/" in str(p)),
         key=lambda p: p.stat().st_size)
ck.write_bytes(ck.read_bytes()[: len(ck.read_bytes()) // 3])
copy("d.zarr", "dj.zarr")
(W / "dj.zarr" / "zarr.json").write_text("{not json")
C = ("dc.zarr", "dd.zarr", "rt.zarr", "dj.zarr")
for tag, data in (("chunk_truncated", "dc.zarr"), ("chunks_deleted", "dd.zarr"), ("zarr_json", "dj.zarr")):
    run(f"corrupt_{tag}__train", "pipeline.train", "--data", data, "--store", f"rc-{tag}.zarr", "--iterations", "1",
        "--no-progress", *CL, keep=C)
    run(f"corrupt_{tag}__predict", "pipeline.predict", "--store", "r.zarr", "--data", data, "--out",
        f"pc-{tag}.zarr", *CL, keep=C)
    run(f"corrupt_{tag}__evaluate", *READ, data, *CL, keep=C)
    run(f"corrupt_{tag}__estimator_fit_path", "-c", EST + f"    C(max_iter=1).fit('{data}')", keep=C)
    run(f"corrupt_{tag}__estimator_predict_path", "-c", EST_FIT + f"    m.predict('{data}').compute()", keep=C)
# a truncated checkpoint: the readers use model/ and the history (expected to work); a resume falls back to the
# previous commit with one warning line (expected to work); each cell on its own copy
copy("rt.zarr", "rt2.zarr")
copy("rt.zarr", "rt3.zarr")
run("corrupt_checkpoint__predict", "pipeline.predict", "--store", "rt.zarr", "--data", "d.zarr", "--out",
    "pct.zarr", *CL, keep=C, expect_ok=True, out_ok=("pct.zarr",))
run("corrupt_checkpoint__evaluate", "pipeline.evaluate", "--store", "rt.zarr", "--data", "d.zarr", *CL, keep=C,
    expect_ok=True)
run("corrupt_checkpoint__report", "pipeline.report", "--store", "rt.zarr", "--out", "rept", keep=C,
    expect_ok=True, out_ok=("rept",))
run("corrupt_checkpoint__resume", "pipeline.train", "--data", "d.zarr", "--store", "rt2.zarr", "--resume",
    "--iterations", "3", "--no-progress", *CL, keep=C, expect_ok=True)
for p in (W / "rt3.zarr").glob("manifest*"):  # both commits' records gone too: nothing to fall back to
    p.unlink()
run("corrupt_checkpoint_no_manifest__resume", "pipeline.train", "--data", "d.zarr", "--store", "rt3.zarr",
    "--resume", "--iterations", "3", "--no-progress", *CL, keep=C + ("rt3.zarr",))

# ---- 10. a read-only directory (a read-only tmpfs; this runs as root, so chmod would not stop it)
mount("ro", "1m")
shutil.copytree(W / "r.zarr", W / "ro" / "r.zarr")
shutil.copytree(W / "d.zarr", W / "ro" / "d.zarr")
subprocess.run(["mount", "-o", "remount,ro", str(W / "ro")], check=True)
R = ("ro",)
run("readonly__ingest", "pipeline.ingest", "a.csv", "--out", "ro/n.zarr", keep=R)
run("readonly__train", "pipeline.train", "--data", "d.zarr", "--store", "ro/rn.zarr", *CL, keep=R)
run("readonly__resume", "pipeline.train", "--data", "ro/d.zarr", "--store", "ro/r.zarr", "--resume",
    "--iterations", "3", *CL, keep=R)
run("readonly__predict_out", "pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out", "ro/p.zarr", *CL,
    keep=R)
run("readonly__report_out", "pipeline.report", "--store", "r.zarr", "--out", "ro/rep", keep=R)
run("readonly_inputs__evaluate", "pipeline.evaluate", "--store", "ro/r.zarr", "--data", "ro/d.zarr", *CL, keep=R,
    expect_ok=True)
run("readonly_inputs__predict", "pipeline.predict", "--store", "ro/r.zarr", "--data", "ro/d.zarr", "--out",
    "pro.zarr", *CL, keep=R, expect_ok=True, out_ok=("pro.zarr",))
run("readonly_inputs__train", "pipeline.train", "--data", "ro/d.zarr", "--store", "rro.zarr", "--iterations", "1",
    "--no-progress", *CL, keep=R, expect_ok=True, out_ok=("rro.zarr",))
run("readonly_inputs__estimator_fit_path", "-c", EST + "    C(max_iter=1).fit('ro/d.zarr')", keep=R, expect_ok=True)
umount("ro")

# ---- 11. a cluster that does not start
run("cluster_unreachable__train", "pipeline.train", "--data", "d.zarr", "--store", "ru.zarr", "--cluster",
    "tcp://127.0.0.1:9", timeout=300)
run("cluster_unreachable__resume", "pipeline.train", "--data", "d.zarr", "--store", "r.zarr", "--resume",
    "--iterations", "3", "--cluster", "tcp://127.0.0.1:9", timeout=300)
run("cluster_unreachable__predict", "pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out", "pu.zarr",
    "--cluster", "tcp://127.0.0.1:9", timeout=300)
(W / "jq_queue.yaml").write_text("jobqueue:\n  slurm:\n    cores: 1\n    memory: 1GiB\n    queue: nosuchqueue\n")
run("jobqueue_missing_queue__train", "pipeline.train", "--data", "d.zarr", "--store", "rq.zarr", "--cluster", "slurm",
    "--jobqueue-config", "jq_queue.yaml", "--worker-timeout", "60", "--iterations", "1", "--no-progress",
    timeout=300)
(W / "jq_bad.yaml").write_text("jobqueue:\n  slurm:\n    cores: 1\n   memory: [1GiB\n")
run("jobqueue_yaml_error__train", "pipeline.train", "--data", "d.zarr", "--store", "ry.zarr", "--cluster", "slurm",
    "--jobqueue-config", "jq_bad.yaml", "--iterations", "1", timeout=300)
run("jobqueue_yaml_error__resume", "pipeline.train", "--data", "d.zarr", "--store", "r.zarr", "--resume",
    "--iterations", "3", "--cluster", "slurm", "--jobqueue-config", "jq_bad.yaml", timeout=300)
# spawn fails: /dev/shm read-only in a private mount namespace (multiprocessing's semaphores live there)
SPAWN_FAIL = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o ro,size=1m tmpfs /dev/shm && exec "$@"', "sh"]
run("spawn_fails__train", "pipeline.train", "--data", "d.zarr", "--store", "rs.zarr", "--local-mode", "processes",
    "--workers", "1", "--dashboard-address", ":0", "--iterations", "1", "--no-progress", pre=SPAWN_FAIL, timeout=300)
run("spawn_fails__predict", "pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out", "ps.zarr",
    "--local-mode", "processes", "--workers", "1", "--dashboard-address", ":0", pre=SPAWN_FAIL, timeout=300)

# ---- 12. a full disk (a 20 MB tmpfs): during ingest, and during a training commit
if not ONLY or any(o.startswith("full") for o in ONLY):
    mount("full", "20m")
    csv("huge.csv", 900_000, seed=6)  # ~29 MB of float32 in the store
    run("full__ingest", "pipeline.ingest", "huge.csv", "--out", "full/d.zarr", keep=("full",))
    RES["full__ingest"]["left_on_disk"] = sorted(p.name for p in (W / "full").iterdir())
    for p in (W / "full").iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    # training commit: pause the run once iteration 1 is committed, fill the disk, let it commit iteration 2
    first = popen("pipeline.train", "--data", "d.zarr", "--store", "full/r.zarr", "--hidden", "64", "--iterations",
                  "4", "--no-progress", *CL)
    ok = paused(first, lambda: (W / "full/r.zarr/manifest.json").exists()
                and '"iteration": 1' in (W / "full/r.zarr/manifest.json").read_text())
    m1 = digest(W / "full/r.zarr/manifest.json")
    free = shutil.disk_usage(W / "full").free
    (W / "full" / "filler").write_bytes(b"\0" * max(0, free - 4096))
    res = finish(first)
    RES["full__train_commit"] = {"cmd": "python -m pipeline.train --data d.zarr --store full/r.zarr --hidden 64 "
                                 "--iterations 4 (paused after iteration 1's commit, then the disk filled)",
                                 "paused_after_iteration_1": ok, **res,
                                 "manifest_unchanged": digest(W / "full/r.zarr/manifest.json") == m1,
                                 "left_on_disk": sorted(str(p.relative_to(W / "full")) for p in
                                                        (W / "full").glob("r.zarr*"))}
    err = res["stderr"]
    RES["full__train_commit"]["ok"] = res["rc"] != 0 and len(err) == 1 and not res["traceback"]
    print("full__train_commit", RES["full__train_commit"], flush=True)
    run("full__evaluate_after", "pipeline.evaluate", "--store", "full/r.zarr", "--data", "d.zarr", *CL,
        keep=("full",), expect_ok=True)
    run("full__resume_on_full_disk", "pipeline.train", "--data", "d.zarr", "--store", "full/r.zarr", "--resume",
        "--no-progress", *CL, keep=("full",))
    (W / "full" / "filler").unlink()
    run("full__resume_after_freeing", "pipeline.train", "--data", "d.zarr", "--store", "full/r.zarr", "--resume",
        "--no-progress", *CL, expect_ok=True)
    umount("full")

# ---- 13. a second process on the same store
if not ONLY or any(o.startswith("second") for o in ONLY):
    first = popen("pipeline.train", "--data", "d.zarr", "--store", "r2.zarr", "--hidden", "8", "--iterations", "3",
                  "--no-progress", *CL)
    ok = paused(first, lambda: (W / "r2.zarr/manifest.json").exists())
    run("second__train_same_store_overwrite", "pipeline.train", "--data", "d.zarr", "--store", "r2.zarr",
        "--overwrite", "--iterations", "1", *CL)
    run("second__train_same_store_resume", "pipeline.train", "--data", "d.zarr", "--store", "r2.zarr", "--resume",
        "--iterations", "5", *CL)
    run("second__predict_while_training", "pipeline.predict", "--store", "r2.zarr", "--data", "d.zarr", "--out",
        "p2.zarr", *CL, expect_ok=True, out_ok=("p2.zarr",))
    run("second__ingest_over_data_being_read", "pipeline.ingest", "a.csv", "--out", "d.zarr", "--overwrite")
    RES["second__train_same_store_overwrite"]["first_paused"] = ok
    RES["second__train_same_store_overwrite"]["first_after"] = finish(first)
    print("first train then:", RES["second__train_same_store_overwrite"]["first_after"], flush=True)
    # a predict paused while it reads, then a train --resume of that store
    first = popen("pipeline.predict", "--store", "r.zarr", "--data", "d.zarr", "--out", "p3.zarr", *CL)
    ok = paused(first, lambda: (W / "p3.zarr.lock").exists())
    run("second__resume_while_predict_reads", "pipeline.train", "--data", "d.zarr", "--store", "r.zarr", "--resume",
        "--iterations", "3", "--no-progress", *CL, expect_ok=True, out_ok=("r.zarr",))
    RES["second__resume_while_predict_reads"]["predict_paused"] = ok
    RES["second__resume_while_predict_reads"]["predict_after"] = finish(first)
    print("predict then:", RES["second__resume_while_predict_reads"]["predict_after"], flush=True)

# ---- 14. --overwrite with a bad input: is the store it would replace still there?
if not ONLY or any(o.startswith("overwrite") for o in ONLY):
    copy("d.zarr", "dd2.zarr")
    for p in (W / "dd2.zarr").rglob("c"):
        shutil.rmtree(p)
    copy("r.zarr", "rw.zarr")
    run("overwrite_bad_data__train", "pipeline.train", "--data", "dd2.zarr", "--store", "rw.zarr", "--overwrite",
        "--iterations", "1", "--no-progress", *CL, keep=("rw.zarr",))
    RES["overwrite_bad_data__train"]["store_after"] = sorted(p.name for p in (W / "rw.zarr").iterdir()) \
        if (W / "rw.zarr").exists() else None
    copy("d.zarr", "dw.zarr")
    run("overwrite_bad_source__ingest", "pipeline.ingest", "nan.csv", "--out", "dw.zarr", "--overwrite",
        keep=("dw.zarr",))
    copy("d.zarr", "dw2.zarr")
    run("overwrite_bad_source__estimator", "-c", EST + "    C(store='dw2.zarr', max_iter=1).fit(np.zeros((4, 2)), "
        "[0, 1, 0, np.nan])", keep=("dw2.zarr",))

leftovers = sorted(str(p.relative_to(W)) for p in W.rglob("*")
                   if re.search(r"\.lock$|\.reader-|partial|\.tmp|\.swap|\.old-|\.replaced-", p.name))
RES["_leftover_locks_and_temps_at_the_end"] = leftovers
out.write_text(json.dumps(RES, indent=1))
bad = [k for k, v in RES.items() if isinstance(v, dict) and not v.get("ok", True)]
print(f"{len(RES) - 1} cells, {len(bad)} not ok: {bad}; left at the end: {leftovers}")
