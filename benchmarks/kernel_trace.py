"""Where a Gauss-Newton iteration's wall time goes, in memory against the pipeline (issue 21, point 6).

Runs :mod:`benchmarks.kernel_efficiency`'s two runs of one network (``--network``: 784-300-10 on MNIST's
60,000 training images, or 28-300-1 on HIGGS-shaped rows) with the same settings: the solver in memory with
2 threads (:class:`benchmarks.gn_efficiency.TimedRunner`) and ``pipeline.training.train`` on one in-process
worker of 2 threads. Named functions are wrapped to record their wall intervals and the CPU time of the thread
that ran them: the iteration (``_advance``), the passes (the runner's ``run``), the chunk kernels (in the worker
or pool threads), the client steps (trial, output layer, objective, eigendecompositions) and the pipeline's
commits (a background thread). Per iteration after the first it prints medians, for both runs side by side:

- iteration wall; the passes' wall; client time in the main thread outside the passes;
- per pass: run to first kernel, last kernel to return (the scheduling hops), the busiest thread's kernel
  seconds and the kernels' CPU seconds;
- the commit thread's wall and CPU overlapping the iteration.

Run (under the benchmark lock; about a minute)::

    flock /work/bench.lock python benchmarks/kernel_trace.py --network 784-300-10 --iterations 7 --out /tmp/t.json
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import shutil
import statistics as st
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EV: list = []  # (name, thread name, wall start, wall end, thread CPU seconds, process CPU seconds)

WRAPPED = {
    "solvers.gauss_newton": ["GaussNewtonSolver._advance", "GaussNewtonSolver._with_trial",
                             "GaussNewtonSolver.output_layer", "GaussNewtonSolver._current_objective",
                             "GaussNewtonSolver.forward_chunk", "GaussNewtonSolver.curvature_chunk",
                             "GaussNewtonSolver.score_chunk"],
    "solvers.linalg": ["ShiftedGram.__init__", "RidgePath.__init__"],
    "pipeline.passes": ["DaskRunner.run", "claimed_chunk_tasks"],
    "benchmarks.gn_efficiency": ["TimedRunner.run"],
    "pipeline.training": ["_RunKeeper._commit"],
}
PASSES = ("DaskRunner.run", "TimedRunner.run")
KERNELS = ("GaussNewtonSolver.forward_chunk", "GaussNewtonSolver.curvature_chunk", "GaussNewtonSolver.score_chunk")
CLIENT = ("GaussNewtonSolver._with_trial", "GaussNewtonSolver.output_layer", "GaussNewtonSolver._current_objective")


def patch(module: str, qualname: str, decorate) -> None:
    """Replace the function or method ``qualname`` of ``module`` by ``decorate(fn)`` (static and class methods kept so)."""
    owner = importlib.import_module(module)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
    is_static = isinstance(original, (staticmethod, classmethod))
    fn = original.__func__ if is_static else original
    wrapped = functools.wraps(fn)(decorate(fn))  # keeps fn's attributes (GaussNewtonSolver._advance.evaluate_then_finish)
    setattr(owner, name, type(original)(wrapped) if is_static else wrapped)


def patch_function(modules, name: str, decorate) -> None:
    """:func:`patch` the function ``name`` of the first module and put the wrapper in every module that imported it."""
    patch(modules[0], name, decorate)
    first = importlib.import_module(modules[0])
    for module in modules[1:]:
        setattr(importlib.import_module(module), name, getattr(first, name))


def _timed(qualname: str):
    def decorate(fn):
        def timed(*args, **kwargs):
            t, c, pc = time.perf_counter(), time.thread_time(), time.process_time()
            if qualname == "GaussNewtonSolver._advance":
                THREAD_CPU.append((t, thread_cpu()))
            try:
                return fn(*args, **kwargs)
            finally:
                EV.append((qualname, threading.current_thread().name, t, time.perf_counter(),
                           time.thread_time() - c, time.process_time() - pc))
                if qualname == "GaussNewtonSolver._advance":
                    THREAD_CPU.append((time.perf_counter(), thread_cpu()))
        return timed
    return decorate


def wrap(module: str, qualname: str) -> None:
    patch(module, qualname, _timed(qualname))


def wrap_function(modules, name: str) -> None:
    """Wrap the function ``name`` of the first module and put the wrapper in every module that imported it."""
    patch_function(modules, name, _timed(name))


THREAD_CPU: list = []  # (wall, {thread label: CPU seconds}) at each _advance's start and end


def _pool_label(label: str) -> str:
    """One label per thread pool: ``ThreadPoolExecutor-0_1`` → ``ThreadPoolExecutor-0``."""
    return label.rsplit("_", 1)[0] if label.startswith("ThreadPoolExecutor") else label


def thread_cpu(fold=_pool_label) -> dict:
    """Return {thread label: CPU seconds} of this process's threads (/proc; Python threads by name, others by comm).

    ``fold(label)`` names the entry a thread's CPU adds to (threads given one label are summed); also
    :func:`benchmarks.kernel_timeline.thread_cpu`'s, with its own folding.
    """
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            comm = open(f"/proc/self/task/{tid}/comm").read().strip()
        except OSError:
            continue
        label = fold(names.get(int(tid), f"native {comm}"))
        out[label] = out.get(label, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _within(e, outer) -> bool:
    return outer[2] <= e[2] and e[3] <= outer[3]


def _overlap(e, outer) -> float:
    return max(0.0, min(e[3], outer[3]) - max(e[2], outer[2]))


def summary(ev: list, snapshots=()) -> dict:
    """Return per-iteration (after the first) figures of one run's events, and their medians."""
    main = [e for e in ev if e[1] == "MainThread"]
    advances = sorted((e for e in main if e[0] == "GaussNewtonSolver._advance"), key=lambda e: e[2])
    rows = []
    for a in advances:
        inside = [e for e in ev if _within(e, a)]
        passes = [e for e in inside if e[0] in PASSES and e[1] == "MainThread"]
        passes = [e for e in passes if not any(o is not e and _within(e, o) for o in passes)]  # outermost (held_out: nested)
        row = {"iteration_s": a[3] - a[2], "iteration_main_cpu_s": a[4], "iteration_process_cpu_s": a[5],
               "passes": len(passes),
               "accepted": float(len(passes) == 2),
               "passes_s": sum(p[3] - p[2] for p in passes)}
        row["outside_passes_s"] = row["iteration_s"] - row["passes_s"]
        for name in CLIENT + ("ShiftedGram.__init__", "RidgePath.__init__", "spd_solve"):
            row[name] = sum(e[3] - e[2] for e in inside if e[0] == name and e[1] == "MainThread")
        first, last, busiest, kcpu, kwall, task_first, task_last = [], [], [], [], [], [], []
        for p in passes:
            ks = [e for e in inside if e[0] in KERNELS and _within(e, p)]
            if not ks:
                continue
            first.append(min(k[2] for k in ks) - p[2])
            tasks = [e for e in inside if e[0] == "claimed_chunk_tasks" and _within(e, p)]
            if tasks:  # the pipeline's task functions: the hops alone, without the task's reads before its kernel
                task_first.append(min(t[2] for t in tasks) - p[2])
                task_last.append(p[3] - max(t[3] for t in tasks))
            last.append(p[3] - max(k[3] for k in ks))
            per = {}
            for k in ks:
                per[k[1]] = per.get(k[1], 0.0) + (k[3] - k[2])
            busiest.append(max(per.values()))
            kcpu.append(sum(k[4] for k in ks))
            kwall.append(sum(k[3] - k[2] for k in ks))
        row.update({"to_first_task_s": sum(task_first), "after_last_task_s": sum(task_last),
                    "to_first_kernel_s": sum(first), "after_last_kernel_s": sum(last), "busiest_thread_s": sum(busiest),
                    "kernel_cpu_s": sum(kcpu), "kernel_wall_s": sum(kwall),
                    "pass_idle_s": row["passes_s"] - sum(busiest)})
        row["chunk_tasks_cpu_s"] = sum(e[4] for e in inside if e[0] == "claimed_chunk_tasks")
        row["other_threads_cpu_s"] = row["iteration_process_cpu_s"] - row["iteration_main_cpu_s"] - row["kernel_cpu_s"]
        commits = [e for e in ev if e[0] == "_RunKeeper._commit"]
        row["commit_overlap_s"] = sum(_overlap(c, a) for c in commits)
        row["commit_cpu_s"] = sum(c[4] * _overlap(c, a) / max(c[3] - c[2], 1e-9) for c in commits)
        ends = [(t, cpu) for t, cpu in snapshots if abs(t - a[2]) < 0.05 or abs(t - a[3]) < 0.05]
        if len(ends) >= 2:
            (_, before), (_, after) = min(ends, key=lambda x: abs(x[0] - a[2])), min(ends, key=lambda x: abs(x[0] - a[3]))
            row["threads_cpu_s"] = {k: after[k] - before.get(k, 0.0) for k in after if after[k] - before.get(k, 0.0) > 0}
        rows.append(row)
    later = [r for r in rows[1:] if r["accepted"]] or rows  # accepted iterations (2 passes) after the first
    median = {k: st.median(r[k] for r in later) for k in later[0] if k != "threads_cpu_s"} if later else {}
    threads = sorted({k for r in later for k in r.get("threads_cpu_s", {})})
    median.update((f"cpu {k}", st.median(r.get("threads_cpu_s", {}).get(k, 0.0) for r in later)) for k in threads)
    return {"iterations": rows, "median": median}


def run_both(args) -> dict:
    from benchmarks import kernel_efficiency as ke
    from solvers.config import TrainConfig

    name = args.network
    widths = {"784-300-10": (784, 300, 10), "28-300-1": (28, 300, 1)}[name]
    X, y = ke.mnist_rows() if name == "784-300-10" else ke.higgs_rows(args.higgs_n)
    config = TrainConfig(solver="gauss-newton", hidden=tuple(widths[1:-1]), sample_schedule="full",
                         validation_fraction=0.0, iterations=args.iterations)
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    data = ke.write_store(tmp / f"{name}.zarr", X, y)
    model = ke.model_of(X, y) if args.standard_scaling else ke.store_model(config, data)  # the pipeline's run
    out = {}
    try:
        for rnd in range(args.rounds):
            for which in args.order.split(","):
                EV.clear()
                THREAD_CPU.clear()
                t0 = time.perf_counter()
                if which == "memory":
                    res = ke.in_memory_iterations(config, X, y, model, 2, args.iterations)
                else:
                    res = ke.pipeline_iterations(config, data, tmp / "run.zarr", X.shape[0])
                s = summary(list(EV), list(THREAD_CPU))
                s["reported_s"] = [it["seconds"] for it in res["iterations"]]
                s["wall_s"] = time.perf_counter() - t0
                s["load"] = os.getloadavg()[0]
                out[f"{which} {rnd}"] = s
                print(f"{which} {rnd}: reported {', '.join(f'{v:.3f}' for v in s['reported_s'])}", flush=True)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return out


def table(out: dict) -> str:
    keys = list(dict.fromkeys(k for r in out.values() for k in r["median"]))
    lines = [f"{'median after the first, s':40s}" + "".join(f"{k:>12s}" for k in out)]
    for k in keys:
        lines.append(f"{k[:40]:40s}" + "".join(f"{out[r]['median'].get(k, 0.0):12.4f}" for r in out))
    lines.append(f"{'load (1 min)':40s}" + "".join(f"{out[r]['load']:12.2f}" for r in out))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--network", default="784-300-10", choices=("784-300-10", "28-300-1"))
    p.add_argument("--iterations", type=int, default=7)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--order", default="memory,pipeline")
    p.add_argument("--standard-scaling", action="store_true", help="in memory: kernel_efficiency's model_of (not the pipeline's)")
    p.add_argument("--sync-commit", action="store_true",
                   help="experiment: the pipeline commits between iterations, not beside the next one's passes")
    p.add_argument("--higgs-n", type=int, default=262_144)
    p.add_argument("--tmp", default="/tmp/kernel_trace")
    p.add_argument("--out", default=None, help="write the per-iteration figures here (JSON)")
    args = p.parse_args(argv)
    for module, names in WRAPPED.items():
        for name in names:
            wrap(module, name)
    wrap_function(["solvers.linalg", "solvers.gauss_newton"], "spd_solve")
    if args.sync_commit:  # experiment: commit in the driver's thread between iterations (outside their seconds)
        from pipeline.training import _RunKeeper

        commit = _RunKeeper.commit

        def in_caller(self, *a, **k):
            self.background = False
            return commit(self, *a, **k)
        _RunKeeper.commit = in_caller
    out = run_both(args)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    print(table(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
