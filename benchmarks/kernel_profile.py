"""Where the 28-300-1 Gauss-Newton iteration's time goes (issue 21, point 6): per step, and 1 vs 2 threads.

Part ``steps``: the steps of one 4096-row tile of pass A (``forward_chunk``) and
pass B (``curvature_chunk``) as the solver runs them, each timed alone by the
thread's CPU time (median of ``--repeats``; 1 BLAS thread), beside a 2048²
float32 GEMM in the same clock. Pass B both ways: the mask, a SYRK of it and a
GEMM for D_1 (session 12), and the one SYRK of ``[M, x ⊙ r]``
(:func:`solvers.linalg.relu_curvature_sums`, session 13).

Part ``iterations``: the solver's own iterations in memory
(:class:`benchmarks.gn_efficiency.TimedRunner`: chunks of 65,536 rows, 1 chunk
or 2 chunks at a time with one BLAS thread each), with the CPU seconds split
into the pool threads' (the chunk kernels) and the main thread's (the client's
solves and the runner: serial), the process's minor page faults, and the
activation cache's hits in pass B. CPU seconds are robust to other processes
taking the cores, wall seconds are not: on a loaded machine the CPU columns say
where the time goes, the wall columns only give direction.

Run (about a minute; under the benchmark lock)::

    flock /work/bench.lock python benchmarks/kernel_profile.py --out benchmarks/results/kernel_s13.json
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from threadpoolctl import threadpool_limits  # noqa: E402

from benchmarks.bench_util import CpuWatch, provenance, write_results  # noqa: E402
from benchmarks.gn_efficiency import TimedRunner, flops_per_row, products  # noqa: E402
from benchmarks.kernel_efficiency import chunk_rows, higgs_rows, model_of  # noqa: E402
from solvers import make_solver  # noqa: E402
from solvers.activation_cache import CACHE  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.losses import encode_labels  # noqa: E402

WIDTHS = (28, 300, 1)
TILE = 4096


def _cpu_median(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return statistics.median(times)


def part_steps(result: dict, args, X, y, model) -> None:
    from solvers.linalg import relu_curvature_sums

    solver = make_solver(TrainConfig(hidden=WIDTHS[1:-1]), WIDTHS[0], **model)
    rng = np.random.default_rng(1)
    W = solver.cast(solver.he_weights(1) + [rng.standard_normal((1, WIDTHS[1] + 1)) * 0.05])
    Wa = solver._augmented(W[:-1])[0]
    x1 = solver._inputs_with_ones(X[:TILE])
    t = solver.task.targets(y[:TILE], solver.dtype)
    a = np.maximum(x1 @ Wa.T, 0)
    w = W[-1]
    w64 = w[0, :-1].astype(np.float64)[:, None]
    r = t - a @ w.T

    def fwd():
        z = x1 @ Wa.T
        np.maximum(z, 0, out=z)

    M = (a[:, :-1] > 0).astype(a.dtype)
    zb = np.empty_like(a)

    def old_b():
        m = (a[:, :-1] > 0).astype(a.dtype)
        d = ((x1 * r).T @ m).T.astype(np.float64) * w64
        return d, (m.T @ m).astype(np.float64)

    steps = {
        "A: z = x1 W~1' (28+1 -> 301)": lambda: x1 @ Wa.T,
        "A: ReLU in place": lambda: np.maximum(a, 0, out=zb),
        "A: forward (product + ReLU)": fwd,
        "A: G = a'a (SYRK 301) to float64": lambda: (a.T @ a).astype(np.float64),
        "A: C = a't (GEMV)": lambda: (a.T @ t).T.astype(np.float64),
        "B: out = a w2', r, loss": lambda: float(np.sum(np.square(t - a @ w.T), dtype=np.float64)),
        "B s12: M = (a > 0).astype": lambda: (a[:, :-1] > 0).astype(a.dtype),
        "B s12: D1 = (x1 r)'M (GEMM 29x300)": lambda: ((x1 * r).T @ M).T.astype(np.float64) * w64,
        "B s12: S1 = M'M (SYRK 300)": lambda: (M.T @ M).astype(np.float64),
        "B s12: mask + D1 + S1": old_b,
        "B s13: one SYRK of [M, x1 r] (329), mask and operand in scratch": lambda: relu_curvature_sums(a, x1, r),
    }
    A = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    out = {}
    with threadpool_limits(1):
        gemm = 2 * 2048 ** 3 / _cpu_median(lambda: A @ A, 5) / 1e9
        for name, fn in steps.items():
            out[name] = _cpu_median(fn, args.repeats)
        gemm_after = 2 * 2048 ** 3 / _cpu_median(lambda: A @ A, 5) / 1e9
    d_old, s_old = old_b()
    s_new, d_new = relu_curvature_sums(a, x1, r)
    result["steps"] = {"rows": TILE, "gemm_gflops_cpu": [gemm, gemm_after], "seconds": out,
                       "s1_bitwise_equal": bool(np.array_equal(s_old, s_new)),
                       "d1_max_abs_diff": float(np.max(np.abs(d_old - d_new * w64))),
                       "d1_max_abs": float(np.max(np.abs(d_old)))}


class _CpuSplit:
    """CPU seconds of the main thread and of the whole process (``resource``), and minor faults, over a block."""

    def __enter__(self):
        self.main0, self.ru0 = time.thread_time(), resource.getrusage(resource.RUSAGE_SELF)
        self.wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        self.wall = time.perf_counter() - self.wall0
        self.main = time.thread_time() - self.main0
        self.process = (ru1.ru_utime - self.ru0.ru_utime) + (ru1.ru_stime - self.ru0.ru_stime)
        self.sys = ru1.ru_stime - self.ru0.ru_stime
        self.minflt = ru1.ru_minflt - self.ru0.ru_minflt


def part_iterations(result: dict, args, X, y, model) -> None:
    yi = encode_labels(y, model["classes"])
    per_row = sum(flops_per_row(v) for v in products(WIDTHS).values())
    A = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    result["iterations"] = {}
    for threads in args.threads:
        with threadpool_limits(threads):
            gemm = 2 * 2048 ** 3 / statistics.median(
                [_wall(lambda: A @ A) for _ in range(7)]) / 1e9
        with threadpool_limits(1):
            gemm_cpu1 = 2 * 2048 ** 3 / _cpu_median(lambda: A @ A, 5) / 1e9
        config = TrainConfig(hidden=WIDTHS[1:-1], sample_schedule="full", validation_fraction=0.0,
                             iterations=args.iterations + 1)
        solver = make_solver(config, WIDTHS[0], **model)
        runner = TimedRunner(solver, X, yi, chunk_rows(X.shape[0]), threads)
        state = solver.initialize(runner)
        pass_cpu = []  # (kernel, process CPU s) of each pass
        plain = runner.run

        def run(kernel, params, plain=plain, pass_cpu=pass_cpu, depth=[0], **kw):  # noqa: B006 (the call depth)
            depth[0] += 1  # TimedRunner.run calls itself for a held-out pass: count the outer call
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            try:
                out = plain(kernel, params, **kw)
            finally:
                depth[0] -= 1
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            if not depth[0]:
                pass_cpu.append((kernel, ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime))
            return out
        runner.run = run
        its = []
        with CpuWatch() as cpu:
            for _ in range(args.iterations):
                runner.log, pass_cpu[:] = [], []
                hits0 = CACHE.hits
                with _CpuSplit() as c:
                    state, metrics = solver.advance(runner, state)
                its.append({"wall": c.wall, "process_cpu": c.process, "main_cpu": c.main, "sys": c.sys,
                            "minflt": c.minflt, "cache_hits": CACHE.hits - hits0,
                            "accepted": bool(metrics.get("accepted", True)),
                            "passes": [(p["kernel"], p["seconds"]) for p in runner.log],
                            "pass_cpu": [list(p) for p in pass_cpu]})
        if hasattr(runner, "pool"):  # session 12's TimedRunner made a pool per pass
            runner.pool.shutdown()
        result["iterations"][str(threads)] = {
            "gemm_gflops_wall": gemm, "gemm_gflops_cpu_1thread": gemm_cpu1, "n": int(X.shape[0]),
            "flops_per_iteration": per_row * X.shape[0], "tiles": -(-X.shape[0] // TILE),
            "iterations": its, "other_cpu_seconds": cpu.other, "load": os.getloadavg()[0]}


def _wall(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def markdown(r: dict) -> str:
    pv = r["provenance"]
    L = ["# Where the 28-300-1 Gauss-Newton iteration's time goes (issue 21, point 6; session 13)", "",
         f"- Command: `{pv['command']}`",
         f"- Date: {pv['date']} on {pv['host']} ({pv['cpus']} CPUs); load average before / after: "
         f"{r.get('load_before'):.2f} / {r.get('load_after', float('nan')):.2f}",
         f"- Commit: {r.get('commit', '?')}; activation cache budget {r.get('activation_cache_bytes', 0) / 2**20:.0f} MiB", ""]
    if "steps" in r:
        s = r["steps"]
        g = statistics.mean(s["gemm_gflops_cpu"])
        L += [f"## One {s['rows']}-row tile, 1 BLAS thread, thread CPU ms (median); float32 GEMM {g:.1f} GFLOP/s "
              f"(before / after: {s['gemm_gflops_cpu'][0]:.1f} / {s['gemm_gflops_cpu'][1]:.1f})", "",
              "| step | ms |", "|---|---|"]
        L += [f"| {k} | {v * 1e3:.3f} |" for k, v in s["seconds"].items()]
        L += ["", f"S_1 of the one SYRK bitwise equal to session 12's: {s['s1_bitwise_equal']}; "
              f"D_1 max abs difference {s['d1_max_abs_diff']:.3g} (max |D_1| {s['d1_max_abs']:.3g}).", ""]
    if "iterations" in r:
        L += ["## The solver's iterations in memory (TimedRunner; median over iterations)", "",
              "CPU share = FLOPs / process CPU s / 1-thread GEMM rate (CPU clock): robust to load. "
              "Wall share = FLOPs / wall s / GEMM rate with as many threads (wall): what kernel_efficiency.py reports. "
              "Model wall = (process CPU − main-thread CPU) / threads + main-thread CPU (no waits).", "",
              "| threads | wall s | process CPU s | main-thread (serial) CPU s | sys s | minor faults | "
              "pass A / B CPU s | activation cache hits / tiles | CPU share | wall share | model wall s (share) | "
              "GEMM wall / CPU-1 GFLOP/s | "
              "other CPU s | load |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for threads, e in r["iterations"].items():
            its = [it for it in e["iterations"] if it["accepted"]] or e["iterations"]
            med = {k: statistics.median(it[k] for it in its)
                   for k in ("wall", "process_cpu", "main_cpu", "sys", "minflt", "cache_hits")}
            for kernel in ("forward_chunk", "curvature_chunk"):
                cpu_s = [sum(c for k, c in it.get("pass_cpu", []) if k == kernel) for it in its]
                med[kernel] = statistics.median(cpu_s) if cpu_s else float("nan")
            t, f = int(threads), e["flops_per_iteration"]
            model = (med["process_cpu"] - med["main_cpu"]) / t + med["main_cpu"]
            g1, gw = e["gemm_gflops_cpu_1thread"], e["gemm_gflops_wall"]
            L.append(f"| {threads} | {med['wall']:.3f} | {med['process_cpu']:.3f} | {med['main_cpu']:.4f} | "
                     f"{med['sys']:.3f} | {med['minflt']:.0f} | {med['forward_chunk']:.3f} / {med['curvature_chunk']:.3f} | "
                     f"{med['cache_hits']:.0f} / {e['tiles']} | "
                     f"{f / med['process_cpu'] / 1e9 / g1:.1%} | {f / med['wall'] / 1e9 / gw:.1%} | "
                     f"{model:.3f} ({f / model / 1e9 / (g1 * t):.1%} of {t} × CPU-1) | {gw:.1f} / {g1:.1f} | "
                     f"{e['other_cpu_seconds']:.1f} | {e['load']:.1f} |")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    import json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="steps,iterations")
    p.add_argument("--higgs-n", type=int, default=262_144)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--repeats", type=int, default=41)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kernel_s13.json"))
    p.add_argument("--activation-cache-mib", type=int, default=None,
                   help="the activation cache's budget for this run (default: solvers.activation_cache.BUDGET)")
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args(argv)
    if args.render_only:
        Path(args.out).with_suffix(".md").write_text(markdown(json.loads(Path(args.out).read_text())))
        return 0
    import subprocess

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    result = {"provenance": provenance(), "settings": vars(args), "load_before": os.getloadavg()[0],
              "commit": commit + (" (+ uncommitted changes)" if dirty else "")}
    if args.activation_cache_mib is not None:
        CACHE.budget = args.activation_cache_mib * 2 ** 20
    result["activation_cache_bytes"] = CACHE.budget
    X, y = higgs_rows(args.higgs_n)
    model = model_of(X, y)
    for part in args.parts.split(","):
        {"steps": part_steps, "iterations": part_iterations}[part](result, args, X, y, model)
    result["load_after"] = os.getloadavg()[0]
    write_results(args.out, result, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
