"""Kill a training run with SIGKILL just before its N-th change to the run store, resume, compare bitwise.

A kill -9 loses the process, never the page cache: the store a kill leaves is the store as of the last file
operation that completed. So every kill moment is one of the points *between* the run's file operations on its
store; this driver reaches each of them deterministically. An audit hook (``sys.addaudithook``) in the training
process counts the operations that change a path under the run store (``open`` for writing, ``os.rename`` /
``os.replace``, ``os.remove``, ``os.rmdir``, ``os.mkdir``, ``shutil.rmtree``, ``os.truncate``) and sends SIGKILL
to its own process group at the N-th, before it runs; ``--after-open`` kills right after the N-th write-open
instead (the file created or truncated, nothing written: the torn-file case). Then the run is resumed as
tests/test_resume.py resumes it and compared bitwise (weights and history) with the uninterrupted run.

    nice -n 15 python benchmarks/resume_fault_inject.py [--points 1:400:1] [--after-open] [--skip /metrics/] OUT_DIR [-- EXTRA TRAIN ARGS]

(options before OUT_DIR: argparse takes the extra train arguments, e.g. ``-- --solver admm``, only right after it)

``--count`` runs once uninterrupted with the hook counting and prints the operations (the grid for --points).
Writes OUT_DIR/faults.jsonl (one line a point).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage.data import write_data  # noqa: E402
from tests import test_resume as tr  # noqa: E402

# Run in the training process: count the store's changes, SIGKILL at the N-th (FAULT_AT; 0: count only, FAULT_LOG).
HOOK = r"""
import os, sys, signal, threading, runpy
_store = os.path.abspath(os.environ["FAULT_STORE"])
_at = int(os.environ.get("FAULT_AT", "0"))
_after_open = os.environ.get("FAULT_AFTER_OPEN") == "1"
_log = os.environ.get("FAULT_LOG")
_skip = os.environ.get("FAULT_SKIP") or None  # paths containing this are not counted (e.g. /metrics/)
_n = [0]
_lock = threading.Lock()
_busy = threading.local()
_CHANGES = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate", "os.link", "os.symlink"}
def _mine(p):
    try:
        p = os.fsdecode(p)
    except TypeError:
        return False
    p = os.path.abspath(p)
    if _skip and _skip in p:
        return False
    return p == _store or p.startswith(_store + os.sep) or p.startswith(_store + ".partial")
def _hook(event, args):
    if getattr(_busy, "on", False):
        return
    if event == "open":
        path, mode, flags = args
        if path is None or isinstance(path, int):
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))
        if not writing or not _mine(path):
            return
        paths = [path]
    elif event in _CHANGES:
        paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        if not any(_mine(p) for p in paths):
            return
    else:
        return
    _busy.on = True
    try:
        with _lock:
            _n[0] += 1
            n = _n[0]
            if _log:
                with open(_log, "a") as f:
                    f.write(f"{n}\t{event}\t{threading.current_thread().name}\t" + "\t".join(os.fsdecode(p) for p in paths) + "\n")
        if n == _at:
            if _after_open and event == "open":
                _pending[0] = True  # the kill comes at the next operation, of any thread
                return
            os.killpg(os.getpgrp(), signal.SIGKILL)
        if _pending[0]:
            os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        _busy.on = False
_pending = [False]
sys.addaudithook(_hook)
sys.argv = ["pipeline.train", *sys.argv[1:]]
runpy.run_module("pipeline.train", run_name="__main__", alter_sys=True)
"""


def hooked_cmd(cmd: list) -> list:
    """Return ``cmd`` (``python -m pipeline.train ...``) run through :data:`HOOK`."""
    assert cmd[1:3] == ["-m", "pipeline.train"]
    return [cmd[0], "-c", HOOK, *cmd[3:]]


DROP = set()  # test_resume's train flags left out (--no-sample-start: "--sample-start"; a sampling flag pins auto to GN)


def train_cmd(data, store, *extra):
    """test_resume's train command with the flags in :data:`DROP` (and their values) left out."""
    cmd = tr.train_cmd(data, store, *extra)
    for flag in DROP:
        i = cmd.index(flag)
        del cmd[i:i + 2]
    return cmd


def cluster_flags(extra) -> list:
    """The ``--local-mode`` of ``extra``, for the resume (which is given no other train flag)."""
    extra = list(extra)
    return extra[extra.index("--local-mode"):extra.index("--local-mode") + 2] if "--local-mode" in extra else []


def run_point(data, uninterrupted, work: Path, at: int, extra, after_open: bool, skip: str = "") -> dict:
    store = work / "run.zarr"
    env = dict(os.environ, FAULT_STORE=str(store), FAULT_AT=str(at), FAULT_AFTER_OPEN="1" if after_open else "0",
               FAULT_LOG=str(work / "ops.tsv"), FAULT_SKIP=skip)
    proc = subprocess.run(hooked_cmd(train_cmd(data, store, *extra)), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, start_new_session=True)
    row = {"at": at, "after_open": after_open, "rc": proc.returncode, "killed_at": tr.committed(store)}
    ops = (work / "ops.tsv").read_text().splitlines() if (work / "ops.tsv").exists() else []
    row["op"] = ops[at - 1].split("\t", 1)[1] if 0 < at <= len(ops) else None
    if proc.returncode == 0:  # the run ended before the N-th operation
        row["ok"], row["note"] = None, "ran to the end"
        return row
    if store.exists():
        shutil.copytree(store, work / "killed.zarr", symlinks=True)
        r = subprocess.run([sys.executable, "-m", "pipeline.train", "--store", str(store), "--resume", "--workers", "1",
                            "--dashboard-address", ":0", "--no-progress", *cluster_flags(extra)], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
        row["resume_rc"] = r.returncode
        if r.returncode != 0:
            row["ok"], row["error"] = False, r.stderr[-800:]
            return row
        row["warning"] = r.stderr.strip()[-300:] or None
    else:
        r = subprocess.run(train_cmd(data, store, *extra), cwd=ROOT, capture_output=True, text=True, timeout=300)
        row["fresh_rc"] = r.returncode
        if r.returncode != 0:
            row["ok"], row["error"] = False, r.stderr[-800:]
            return row
    weights, metrics = tr.final_state(store)
    try:  # strict: a different number of layers is a difference, not a shorter comparison
        same = (all(np.array_equal(W, R) for W, R in zip(weights, uninterrupted[0], strict=True))
                and metrics == uninterrupted[1])
    except ValueError:
        same = False
    row["ok"] = bool(same)
    if not same:
        row["code_changed"] = len(uninterrupted) > 2 and tr.code_hash() != uninterrupted[2]  # not a resume bug then
        from benchmarks.resume_kill_sweep import first_difference
        row["first_difference"] = first_difference(uninterrupted[1], metrics)
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--points", default="1:400:1", help="first:last:step of N")
    parser.add_argument("--after-open", action="store_true")
    parser.add_argument("--count", action="store_true")
    parser.add_argument("--skip", default="", help="do not count operations on paths containing this (e.g. /metrics/)")
    parser.add_argument("--rows", type=int, default=20_000, help="training rows (test_resume's 20000; more, e.g. "
                        "23000, make --solver auto hand over from consensus to Gauss-Newton: solvers/config.py)")
    parser.add_argument("--no-sample-start", action="store_true", help="leave test_resume's --sample-start 2000 out "
                        "(a sampling setting makes --solver auto Gauss-Newton)")
    parser.add_argument("extra", nargs="*")
    args = parser.parse_args()
    if args.no_sample_start:
        DROP.add("--sample-start")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if (data / "train.zarr").exists():
        from storage.data import open_data
        assert open_data(data / "train.zarr").n_samples == args.rows, "OUT_DIR's data has other --rows"
    else:
        data.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)  # tests/test_resume.py's data fixture
        X = rng.normal(size=(args.rows, 20)).astype(np.float32)
        y = (X[:, 0] * X[:, 1] + X[:, 2] > 0).astype(int)
        write_data(data / "train.zarr", X, y, chunk_rows=4096)
    if args.count:
        work = out / "count"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        row = run_point(data, None, work, 0, args.extra, False, args.skip)
        print(json.dumps(row))
        print((work / "ops.tsv").read_text())
        return
    base = data / ("baseline" + "".join(a.strip("-") for a in [*args.extra, *sorted(DROP)]) + ".zarr")
    code_file = base.with_name(base.name + ".code-sha256")  # the code the baseline ran: a later edit is not a bug
    if not base.exists() and (args.rows != 20_000 or DROP):  # tr.baseline checks test_resume's 20k rows' held-out count
        code = tr.code_hash()
        tr.run_to_end(train_cmd(data, base, *args.extra))
        code_file.write_text(code)
    if base.exists():
        uninterrupted = tr.final_state(base)
    else:
        uninterrupted = tr.baseline(data, base, *args.extra)
        code_file.write_text(uninterrupted[2])
    code = code_file.read_text().strip() if code_file.exists() else None
    if code is not None and code != tr.code_hash():
        sys.exit(f"the code under test changed since the baseline {base} was run: delete it (and {code_file.name}) "
                 "to run it again with this code")
    if code is None:
        print(f"note: {base} records no code hash (an older baseline): a difference may be a code change",
              file=sys.stderr)
    uninterrupted = (*uninterrupted[:2], tr.code_hash())  # the sweep's start (= the baseline's when recorded)
    first, last, step = map(int, args.points.split(":"))
    log = open(out / "faults.jsonl", "a")
    for at in range(first, last + 1, step):
        work = out / f"f{'o' if args.after_open else ''}{at}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        t0 = time.time()
        row = run_point(data, uninterrupted, work, at, args.extra, args.after_open, args.skip)
        row["seconds"], row["load"] = round(time.time() - t0, 2), os.getloadavg()[0]
        log.write(json.dumps(row, default=str) + "\n")
        log.flush()
        print(json.dumps(row, default=str), flush=True)
        if row["ok"] is not False:
            shutil.rmtree(work, ignore_errors=True)
        if row.get("note") == "ran to the end":
            break


if __name__ == "__main__":
    main()
