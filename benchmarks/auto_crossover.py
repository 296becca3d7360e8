"""Where should ``--solver auto`` switch from Gauss-Newton to the hand-over? Both on growing subsets, validation only.

For each task and training size n, ``python -m pipeline.train`` runs once per
solver (``--solvers``, default ``gauss-newton`` and ``consensus,gauss-newton``)
with its defaults (only ``--iterations`` and ``--set`` flags given), as a user
runs it: a local cluster of this machine's cores, the run's own 10 % held-out
rows for early stopping. Its ``--test-data`` is a **validation split carved out
of the task's training rows** (never the task's test rows), so the rule chosen
from this table is tuned on validation data only:

* ``mnist-oddeven``, ``mnist10``: ``shared/data/mnist70k_uint8.npz``; validation
  rows 50 000..59 999, training subsets the first n of rows 0..49 999;
* ``higgs``: the cached HIGGS-shaped store ``--higgs`` (``benchmarks/higgs_like.py``,
  1 M rows); validation its last ``--validation-rows`` rows, training subsets the first n.

Per run: the model's accuracy on the validation split (the iteration early
stopping chose, as the user gets it), the best and last iterations' accuracy,
iterations run, and time: ``init`` (the command's "initialised in" seconds)
plus the iterations' own seconds (scoring excluded), up to the first iteration
at ``--target`` and in total; the command's wall time (cluster start included)
and the CPU seconds of the command and its worker processes. Other processes'
CPU meanwhile is recorded (CpuWatch): run under ``nice`` the seconds only
show direction.

Run::

    python benchmarks/auto_crossover.py --task mnist10 --sizes 5000 10000 20000 50000 --out /tmp/x.json
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import CpuWatch, provenance, write_results  # noqa: E402

MNIST = ROOT.parent / "shared" / "data" / "mnist70k_uint8.npz"
TARGETS = {"mnist-oddeven": 0.97, "mnist10": 0.96, "higgs": 0.76}
ROW = re.compile(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)")


def pools(task: str, validation_rows: int, higgs: Path):
    """Return (X_pool, y_pool, X_val, y_val): the training pool and the validation split of a task."""
    if task.startswith("mnist"):
        with np.load(MNIST) as f:
            X, y = f["X"][:60_000].astype(np.float32) / 256, f["y"][:60_000].astype(np.int64)
        if task == "mnist-oddeven":
            y = y % 2
        cut = 60_000 - validation_rows
        return X[:cut], y[:cut], X[cut:], y[cut:]
    from storage.data import open_data

    store = open_data(higgs)
    cut = store.n_samples - validation_rows
    return store.X[:cut], store.y[:cut], store.X[cut:], store.y[cut:]


def write_store(path: Path, X, y, source: str) -> Path:
    from storage.data import open_data, write_data

    try:
        if open_data(path).source == source:
            return path
    except Exception:  # noqa: BLE001 -- absent or stale: rewrite
        pass
    write_data(path, X, y, source=source, overwrite=path.exists())
    return path


def parse(lines, target: float) -> dict:
    """Return the run's numbers from ``python -m pipeline.train``'s report lines."""
    init, rows, model = 0.0, [], None
    for line in lines:
        m = re.search(r"initialised \(\w+\) in ([\d.]+) s", line)
        if m:
            init = float(m.group(1))
        m = ROW.match(line)
        if m and "." not in m.group(1):
            rows.append((int(m.group(1)), float(m.group(2)), float(m.group(4))))  # iteration, seconds, test acc
        m = re.search(r"the model is iteration (\d+)", line)
        if m:
            model = int(m.group(1))
        m = re.search(r"solver (\S+),", line)
        if m and "run store" in line:
            solver = m.group(1)
    t, curve = init, []
    for k, s, acc in rows:
        t += s
        curve.append((k, round(t, 3), acc))
    acc = {k: a for k, _, a in curve}
    hit = next((t for _, t, a in curve if a >= target), None)
    return {"solver_run": locals().get("solver"), "init_seconds": init, "curve": curve,
            "model_iteration": model, "model_accuracy": acc.get(model if model is not None else (curve[-1][0] if curve else None)),
            "last_accuracy": curve[-1][2] if curve else None, "best_accuracy": max(acc.values()) if acc else None,
            "iterations_run": len(curve), "train_seconds": curve[-1][1] if curve else None,
            "seconds_to_target": hit}


def run_one(train: Path, val: Path, store: Path, solver: str, iterations: int, extra: list, target: float) -> dict:
    cmd = [sys.executable, "-m", "pipeline.train", "--data", str(train), "--test-data", str(val), "--store", str(store),
           "--overwrite", "--iterations", str(iterations), "--no-progress", *(["--solver", solver] if solver else []), *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with CpuWatch() as watch:
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    lines = out.stdout.splitlines()
    res = parse(lines, target)
    res.update(wall_seconds=round(wall, 3), cpu_seconds=round((after.ru_utime + after.ru_stime)
                                                              - (before.ru_utime + before.ru_stime), 3),
               other_cpu_seconds=round(watch.other, 1), command=" ".join(cmd),
               run_line=next((ln for ln in lines if ln.startswith("run store")), None))
    return res


def markdown(res: dict) -> str:
    out = ["# `--solver auto`: Gauss-Newton or the hand-over, by training size (validation split only)", "",
           f"Written by `benchmarks/auto_crossover.py` (its docstring says what every number is). Command: "
           f"`{res['provenance']['command']}` ({res['provenance']['date']}, {res['provenance']['cpus']} CPUs).", "",
           f"Task {res['task']}: validation = {res['validation']}; target {res['target']}; "
           f"{res['iterations']} iterations; extra flags {res['extra'] or 'none'}.", "",
           "| n train | solver | model acc (valid) | model iter / run | best | time to target (s) | train s | wall s "
           "| CPU s | other CPU s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        def f(x, spec=".4f"):
            return "—" if x is None else format(x, spec)
        out.append(f"| {r['n']} | {r['solver']} | {f(r['model_accuracy'])} | {r['model_iteration']} / {r['iterations_run']} "
                   f"| {f(r['best_accuracy'])} | {f(r['seconds_to_target'], '.2f')} | {f(r['train_seconds'], '.2f')} "
                   f"| {f(r['wall_seconds'], '.1f')} | {f(r['cpu_seconds'], '.1f')} | {f(r['other_cpu_seconds'], '.0f')} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True, choices=list(TARGETS))
    p.add_argument("--sizes", type=int, nargs="+", required=True)
    p.add_argument("--solvers", nargs="+", default=["gauss-newton", "consensus,gauss-newton"])
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--validation-rows", type=int, default=10_000)
    p.add_argument("--higgs", default="/tmp/q/higgs-1000000-seed0.zarr", help="HIGGS-shaped store (benchmarks/higgs_like.py)")
    p.add_argument("--work", default="/tmp/auto8", help="where the data and run stores go")
    p.add_argument("--set", action="append", default=[], metavar="FLAG=VALUE",
                   help="extra python -m pipeline.train flag, e.g. shards=4 (--shards 4)")
    p.add_argument("--out", required=True, help="results JSON (Markdown beside it)")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    extra = [a for item in args.set for a in (f"--{item.split('=', 1)[0].replace('_', '-')}", item.split("=", 1)[1])]
    Xp, yp, Xv, yv = pools(args.task, args.validation_rows, Path(args.higgs))
    tag = f"{args.task}-v{args.validation_rows}"
    val = write_store(work / f"{tag}-valid.zarr", Xv, yv, f"auto_crossover {tag} validation")
    res = {"provenance": provenance(), "task": args.task, "target": TARGETS[args.task], "iterations": args.iterations,
           "validation": f"{len(yv)} rows after the training pool of {len(yp)}", "extra": " ".join(extra), "runs": []}
    for n in args.sizes:
        if n > len(yp):
            raise SystemExit(f"error: size {n} > the training pool's {len(yp)} rows")
        train = write_store(work / f"{tag}-n{n}.zarr", Xp[:n], yp[:n], f"auto_crossover {tag} first {n}")
        for solver in args.solvers:
            r = run_one(train, val, work / "run.zarr", solver if solver != "auto" else "", args.iterations, extra,
                        TARGETS[args.task])
            r.update(n=n, solver=solver)
            res["runs"].append(r)
            print(f"{args.task} n={n} {solver}: model {r['model_accuracy']} (iter {r['model_iteration']}/"
                  f"{r['iterations_run']}), to target {r['seconds_to_target']}, wall {r['wall_seconds']}, "
                  f"other CPU {r['other_cpu_seconds']}", flush=True)
            write_results(args.out, res, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
