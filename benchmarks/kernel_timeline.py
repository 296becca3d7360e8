"""Timeline of one Gauss-Newton-alone ``compare.py`` pipeline run: where the seconds to the target go (issue 21).

Runs ``benchmarks/compare.py`` in this process (``--solvers gauss-newton --ours pipeline --peers none``: the
in-process cluster of 2 worker threads, the clock as compare.py keeps it) with named functions wrapped to record
their wall interval and the CPU time of the thread that ran them, and snapshots every thread's CPU time (/proc) at
each iteration boundary. Per iteration (from the keeper's ``begin`` to the next) it prints:

- the sample (chunks) and every pass in order: its kernel, chunks, wall, the chunk tasks' CPU (data reads apart),
  the busiest worker thread's share;
- client steps in the main thread (trial, output layer / α auto, objective, probe, eigendecompositions, solves);
- the commit (background thread) wall and CPU, and compare.py's wait for it (on the clock) and scoring (off it);
- the CPU of every thread (main, workers, event loop, commit, BLAS/Zarr helpers) and idle (2 cores minus CPU).

``--memory`` also runs the same run in memory (the store's rows in memory, the pipeline's chunks, held-out split
and model: :func:`benchmarks.kernel_efficiency.store_model`) with a 2-thread pool of one-BLAS-thread chunk tasks
(:class:`PoolRunner`), through the same driver, for its iteration times.

Run (under the benchmark lock; about 20 s)::

    flock /work/bench.lock python benchmarks/kernel_timeline.py --out /tmp/tl.json -- --iterations 6
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import kernel_trace  # noqa: E402

EV: list = []  # [name, thread, wall start, wall end, thread CPU, info]
SNAP: list = []  # (wall, label, {thread: CPU seconds})
T0 = time.perf_counter()

WRAPPED = {
    "solvers.gauss_newton": ["GaussNewtonSolver._initialize", "GaussNewtonSolver.prepare",
                             "GaussNewtonSolver._evaluate", "GaussNewtonSolver._finish",
                             "GaussNewtonSolver._curvature_pass", "GaussNewtonSolver._score_pass",
                             "GaussNewtonSolver._with_trial", "GaussNewtonSolver.output_layer",
                             "GaussNewtonSolver._current_objective", "GaussNewtonSolver.held_loss",
                             ],
    "solvers.base": ["SolverBase.network"],
    "solvers.hidden_race": ["initialize", "_probe"],
    "solvers.linalg": ["ShiftedGram.__init__", "RidgePath.__init__", "RidgePath.choose"],
    "pipeline.passes": ["DaskRunner.run", "DaskRunner.compute", "chunk_task", "_read_xy", "data_moments"],
    "pipeline.training": ["_RunKeeper.commit", "_RunKeeper._commit", "_RunKeeper.flush", "_shares_gil",
                          "check_class_rows", "check_worker_access", "_forget_data", "_train"],
    "storage.runstore": ["RunStore.create", "_array_sha256", "_write_packed", "RunStore._resolve",
                         "RunStore.write_metrics", "_write_json_atomic"],
    "benchmarks.compare": ["_wait_for_commit", "_committed", "_workers_cpu"],
}
FUNCTIONS = {"spd_solve": ["solvers.linalg", "solvers.gauss_newton"],
             "solve_weights": ["solvers.linalg", "solvers.gauss_newton"]}


def _thread_label(label: str) -> str:
    """One label per pool (every ThreadPoolExecutor, Dask's default and offload threads, asyncio's), the worker
    threads by their number (``worker 1``)."""
    for prefix in ("ThreadPoolExecutor", "Dask-Default-Threads", "Dask-Offload", "asyncio"):
        if label.startswith(prefix):
            label = prefix
    if label.startswith("Dask-Worker-Threads"):
        label = "worker " + label.rsplit("-", 1)[-1]
    return label


def thread_cpu() -> dict:
    """Return {thread label: CPU seconds} of this process's threads (:func:`benchmarks.kernel_trace.thread_cpu`,
    labels folded by :func:`_thread_label`)."""
    return kernel_trace.thread_cpu(fold=_thread_label)


def _info(qualname, args, kwargs):
    if qualname == "DaskRunner.run" or qualname == "PoolRunner.run":
        chunks = kwargs.get("chunks")
        n = len(args[0].bounds) if chunks is None else len(chunks)
        return {"kernel": args[1], "chunks": n, "held": bool(kwargs.get("held_out"))}
    if qualname == "chunk_task":
        return {"kernel": args[0][1], "train": bool(args[7]) if len(args) > 7 else True}
    if qualname == "_RunKeeper.begin":
        return {"iteration": args[1]}
    return None


def _timed(qualname: str):
    def decorate(fn):
        def timed(*args, **kwargs):
            t, c = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                EV.append([qualname, threading.current_thread().name, t, time.perf_counter(),
                           time.thread_time() - c, _info(qualname, args, kwargs)])
        return timed
    return decorate


def wrap(module: str, qualname: str) -> None:
    kernel_trace.patch(module, qualname, _timed(qualname))


def install() -> None:
    for module, names in WRAPPED.items():
        for name in names:
            wrap(module, name)
    for name, modules in FUNCTIONS.items():
        kernel_trace.patch_function(modules, name, _timed(name))
    from pipeline import training
    from benchmarks import peers

    begin = training._RunKeeper.begin

    def begin_marked(self, iteration):
        SNAP.append((time.perf_counter(), f"begin {iteration}", thread_cpu()))
        return begin(self, iteration)
    training._RunKeeper.begin = begin_marked

    paused = peers.Clock.paused

    @contextlib.contextmanager
    def paused_marked(self):
        t = time.perf_counter()
        SNAP.append((t, "pause", thread_cpu()))
        with paused(self):
            yield
        EV.append(["clock paused (scoring)", threading.current_thread().name, t, time.perf_counter(), 0.0, None])
    peers.Clock.paused = paused_marked


# -- the in-memory run ----------------------------------------------------------------------
class PoolRunner:
    """In-memory chunks run as the pipeline runs them: one task per chunk (training rows, then the held-out rows of
    the same chunk), ``threads`` at a time on one BLAS thread each; sums in chunk order."""

    def __init__(self, solver, X, y_idx, bounds, split, threads: int = 2):
        from solvers.linalg import one_blas_thread

        self.solver, self.bounds, self.split = solver, list(bounds), split
        self.x = [X[a:b] for a, b in self.bounds]
        self.y = [y_idx[a:b] for a, b in self.bounds]
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="Dask-Worker-Threads")
        self.one_blas_thread = one_blas_thread

    def run(self, kernel, params, *, read=None, write=None, chunks=None, held_out=False):
        from pipeline.passes import _sum
        from solvers.loop import chunk_kernel

        fn = getattr(self.solver, kernel)
        held = held_out and self.split is not None
        sample = range(len(self.bounds)) if chunks is None else set(chunks)
        idx = [i for i in range(len(self.bounds)) if held or i in sample]

        def one(i):
            with self.one_blas_thread():
                t0, c0 = time.perf_counter(), time.thread_time()
                start = self.bounds[i][0]
                sums = chunk_kernel(fn, self.x[i], self.y[i], None, start, params, self.split)[1] if i in sample else None
                h = chunk_kernel(fn, self.x[i], self.y[i], None, start, params, self.split, "held")[1] if held else None
                EV.append(["chunk_task", threading.current_thread().name, t0, time.perf_counter(),
                           time.thread_time() - c0, {"kernel": kernel, "train": i in sample}])
                return (sums, h) if held else sums

        results = list(self.pool.map(one, idx))
        sums = _sum(*results)
        if held_out and not held:
            sums = sums, None
        return sums


def run_memory(args, n_iter: int) -> dict:
    """Run the compare run's Gauss-Newton in memory through the driver; return its per-iteration seconds."""
    from benchmarks.kernel_efficiency import store_model
    from solvers import make_solver
    from solvers.config import TrainConfig
    from solvers.driver import drive, split_chunks
    from solvers.losses import encode_labels
    from storage.data import open_data

    data = open_data(args.data)
    X, y = data.X[...], data.y[...]
    config = TrainConfig(solver="gauss-newton", hidden=(300,), iterations=n_iter)
    model = store_model(config, Path(args.data))
    solver = make_solver(config, X.shape[1], **model)
    _, bounds, split = split_chunks(X.shape[0], args.chunk_rows, args.chunk_rows, config)
    runner = PoolRunner(solver, X, encode_labels(y, model["classes"]), bounds, split)
    if not hasattr(PoolRunner.run, "__wrapped__"):
        wrap(__name__, "PoolRunner.run")

    class Keeper:
        def begin(self, iteration):
            SNAP.append((time.perf_counter(), f"begin {iteration}", thread_cpu()))

        def commit(self, *a):
            pass

    lines = []
    t0 = time.perf_counter()
    SNAP.append((t0, "start", thread_cpu()))
    out = drive(solver, runner, Keeper(), config, evaluate=lambda network, skip=(): {}, held_out=True,
                report=lines.append)
    SNAP.append((time.perf_counter(), "end", thread_cpu()))
    return {"history": out.history, "report": lines, "start": t0}


# -- the summary ------------------------------------------------------------------------------
CLIENT = ("GaussNewtonSolver._with_trial", "GaussNewtonSolver.output_layer", "GaussNewtonSolver._current_objective",
          "GaussNewtonSolver.held_loss", "SolverBase.network", "RidgePath.__init__", "RidgePath.choose",
          "ShiftedGram.__init__", "spd_solve", "solve_weights", "initialize")


def _within(e, a, b) -> bool:
    return a <= e[2] and e[3] <= b


def _overlap(e, a, b) -> float:
    return max(0.0, min(e[3], b) - max(e[2], a))


def windows(snaps, end: float) -> list:
    """Return [(label, start, end, CPU delta per thread)] between consecutive ``begin`` snapshots (the last to ``end``)."""
    begins = [s for s in snaps if s[1].startswith("begin") or s[1] == "start"]
    out = []
    for i, (t, label, cpu) in enumerate(begins):
        nxt = begins[i + 1] if i + 1 < len(begins) else None
        t_end = nxt[0] if nxt else end
        cpu_end = nxt[2] if nxt else None
        out.append((label, t, t_end, cpu, cpu_end))
    return out


def iteration_rows(ev, snaps, end: float, end_cpu: dict) -> list[dict]:
    rows = []
    main = [e for e in ev if e[1] == "MainThread"]
    passes = [e for e in main if e[0] in ("DaskRunner.run", "PoolRunner.run")]
    tasks = [e for e in ev if e[0] == "chunk_task"]
    reads = [e for e in ev if e[0] == "_read_xy"]
    for label, a, b, cpu0, cpu1 in windows(snaps, end):
        cpu1 = cpu1 if cpu1 is not None else end_cpu
        row = {"label": label, "start_s": a - T0, "wall_s": b - a, "passes": []}
        for p in (p for p in passes if _within(p, a, b)):
            ts = [t for t in tasks if _within(t, p[2], p[3] + 1e-3)]
            per = {}
            for t in ts:
                per[t[1]] = per.get(t[1], 0.0) + t[3] - t[2]
            rd = [r for r in reads if _within(r, p[2], p[3] + 1e-3)]
            row["passes"].append({**(p[5] or {}), "wall_s": p[3] - p[2], "tasks": len(ts),
                                  "task_cpu_s": sum(t[4] for t in ts), "read_cpu_s": sum(r[4] for r in rd),
                                  "busiest_s": max(per.values()) if per else 0.0,
                                  "to_first_task_s": (min(t[2] for t in ts) - p[2]) if ts else None,
                                  "after_last_task_s": (p[3] - max(t[3] for t in ts)) if ts else None})
        row["passes_s"] = sum(p["wall_s"] for p in row["passes"])
        client = {}
        for e in main:
            if e[0] in CLIENT and _within(e, a, b):
                nested = any(o is not e and o[0] in CLIENT and o[2] <= e[2] and e[3] <= o[3] for o in main)
                if not nested:  # outermost client steps only (a trial's solves are inside _with_trial)
                    client[e[0]] = client.get(e[0], 0.0) + e[3] - e[2]
        inner = {}
        for name in ("spd_solve", "solve_weights", "ShiftedGram.__init__", "RidgePath.__init__", "RidgePath.choose"):
            inner[name] = sum(e[3] - e[2] for e in main if e[0] == name and _within(e, a, b))
        row["client_s"] = client
        row["client_inner_s"] = {k: v for k, v in inner.items() if v}
        row["client_total_s"] = sum(client.values())
        for name in ("_wait_for_commit", "clock paused (scoring)", "_RunKeeper.commit", "_RunKeeper.flush",
                     "DaskRunner.compute", "hidden_race._probe"):
            row[name] = sum(e[3] - e[2] for e in main if e[0] == name.split(".", 1)[-1] and _within(e, a, b))
        commits = [e for e in ev if e[0] == "_RunKeeper._commit"]
        row["commit_overlap_s"] = sum(_overlap(c, a, b) for c in commits)
        row["commit_cpu_s"] = sum(c[4] * _overlap(c, a, b) / max(c[3] - c[2], 1e-9) for c in commits)
        sha = [e for e in ev if e[0] == "_array_sha256" and e[1] != "MainThread"]
        row["commit_sha_s"] = sum(_overlap(e, a, b) for e in sha)
        row["commit_write_packed_s"] = sum(_overlap(e, a, b) for e in ev if e[0] == "_write_packed" and e[1] != "MainThread")
        row["threads_cpu_s"] = {k: round(cpu1.get(k, 0.0) - cpu0.get(k, 0.0), 3) for k in cpu1
                                if cpu1.get(k, 0.0) - cpu0.get(k, 0.0) > 0}
        row["cpu_s"] = sum(row["threads_cpu_s"].values())
        row["idle_core_s"] = 2 * row["wall_s"] - row["cpu_s"]
        rows.append(row)
    return rows


def show(rows: list[dict], points=None) -> str:
    out = []
    for r in rows:
        out.append(f"== {r['label']}: at {r['start_s']:.3f} s, wall {r['wall_s']:.3f} s, CPU {r['cpu_s']:.2f} s "
                   f"(idle core-s {r['idle_core_s']:.2f})")
        for p in r["passes"]:
            out.append(f"   pass {p.get('kernel', '?'):16s} {p.get('chunks', '?')} chunks{' +held' if p.get('held') else ''}: "
                       f"{1000 * p['wall_s']:6.1f} ms, {p['tasks']} tasks, CPU {1000 * p['task_cpu_s']:6.1f} ms "
                       f"(reads {1000 * p['read_cpu_s']:.1f}), busiest {1000 * p['busiest_s']:.1f} ms, hops "
                       f"{1000 * (p['to_first_task_s'] or 0):.1f} / {1000 * (p['after_last_task_s'] or 0):.1f} ms")
        out.append(f"   client {1000 * r['client_total_s']:.1f} ms: " +
                   ", ".join(f"{k.split('.')[-1]} {1000 * v:.1f}" for k, v in r["client_s"].items()) +
                   " | inner: " + ", ".join(f"{k} {1000 * v:.1f}" for k, v in r["client_inner_s"].items()))
        out.append(f"   other main: passes {1000 * r['passes_s']:.1f} ms, keeper.commit {1000 * r['_RunKeeper.commit']:.1f} "
                   f"(flush {1000 * r['_RunKeeper.flush']:.1f}), wait_for_commit {1000 * r['_wait_for_commit']:.1f}, "
                   f"scoring (paused) {1000 * r['clock paused (scoring)']:.1f}, compute {1000 * r['DaskRunner.compute']:.1f}")
        out.append(f"   commit thread: overlap {1000 * r['commit_overlap_s']:.1f} ms, CPU {1000 * r['commit_cpu_s']:.1f} ms "
                   f"(sha256 {1000 * r['commit_sha_s']:.1f}, write_packed {1000 * r['commit_write_packed_s']:.1f} ms wall)")
        out.append("   threads CPU: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["threads_cpu_s"].items(),
                                                                                     key=lambda kv: -kv[1])))
    if points:
        out.append("compare points: " + "; ".join(f"{p['step']}: {p['seconds']:.3f} s (iteration {p.get('iteration_seconds', 0):.3f}) "
                                                  f"acc {p['test_accuracy']:.4f}" for p in points))
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="write the rows and the raw events here (JSON)")
    p.add_argument("--memory", action="store_true", help="also the same run in memory (PoolRunner)")
    p.add_argument("--data", default="/tmp/q/compare-mnist10-n60000-train.zarr", help="--memory: the data store")
    p.add_argument("--chunk-rows", type=int, default=8192, help="--memory: the pipeline's chunk rows")
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--defer-all", action="store_true",
                   help="experiment: every accepted iteration ends after pass A and a score pass (pass B opens the next)")
    p.add_argument("--tmp", default="/tmp/kernel_timeline")
    p.add_argument("compare_args", nargs=argparse.REMAINDER, help="more compare.py arguments (after --)")
    args = p.parse_args(argv)
    install()
    from benchmarks import compare

    if args.defer_all:
        from solvers.gauss_newton import GaussNewtonSolver

        GaussNewtonSolver.defer_curvature = True

    result = {}
    EV.clear(), SNAP.clear()
    Path(args.tmp).mkdir(parents=True, exist_ok=True)
    cargs = ["--task", "mnist10", "--n-train", "60000", "--solvers", "gauss-newton", "--ours", "pipeline",
             "--peers", "none", "--iterations", str(args.iterations), "--cache", "/tmp/q", "--out", args.tmp,
             "--name", "timeline", *[a for a in args.compare_args if a != "--"]]
    SNAP.append((time.perf_counter(), "start", thread_cpu()))
    compare.main(cargs)
    end = time.perf_counter()
    res = json.loads((Path(args.tmp) / "timeline.json").read_text())
    points = res["methods"][0]["points"]
    rows = iteration_rows(EV, SNAP, end, thread_cpu())
    print(show(rows, points))
    result["pipeline"] = {"rows": rows, "points": points, "events": list(EV), "load": os.getloadavg()}
    if args.memory:
        EV.clear(), SNAP.clear()
        mem = run_memory(args, args.iterations)
        rows = iteration_rows(EV, SNAP, SNAP[-1][0], SNAP[-1][2])
        print("---- in memory (PoolRunner, 2 threads)")
        print(show(rows))
        print("history seconds: " + ", ".join(f"{h['iteration']}: {h['seconds']:.3f}" for h in mem["history"]))
        result["memory"] = {"rows": rows, "history": mem["history"], "report": mem["report"], "load": os.getloadavg()}
        pipe = {p["step"]: p.get("iteration_seconds") for p in points}
        for h in mem["history"]:
            k = h["iteration"]
            if pipe.get(k):
                print(f"iteration {k}: pipeline {pipe[k]:.3f} s, in memory {h['seconds']:.3f} s, "
                      f"ratio {pipe[k] / h['seconds']:.3f}; train acc {h.get('train_accuracy', float('nan')):.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
