"""Kernel efficiency (issue 21, point 6): the Gauss-Newton passes' FLOP rate against float32 GEMM, and pipeline / in memory.

Part ``kernels`` (in memory, one thing at a time):

1. the float32 GEMM rate of NumPy: a 2048² product, 1 thread (wall and the
   thread's CPU time) and 2 threads (wall), measured before every network;
2. one chunk of 65,536 rows through ``forward_chunk`` (pass A) and
   ``curvature_chunk`` (pass B), 1 BLAS thread, timed by the thread's CPU time
   (robust to other processes taking the core), over the 1-thread GEMM rate
   in the same clock;
3. the solver's own iteration in memory (``initialize`` then ``advance``,
   ``--sample-schedule full``): chunks of 65,536 rows (a quarter of the rows when
   fewer), 1 thread, or 2 chunks at
   a time with one BLAS thread each, wall seconds per pass and per accepted
   iteration (client solves included), over the GEMM rate with as many threads;
   and (session 17) its parts: the CPU share (FLOPs / process CPU seconds / the
   1-thread GEMM rate in CPU time, robust to other processes), the threads' use
   of the wall, and the GEMM reference after the run and with one product per
   thread (the runner's threading) beside OpenBLAS's 2-thread product.

FLOPs per row are counted from the shapes of the kernels' products
(``benchmarks/gn_efficiency.py``: GEMM 2km, Gram (SYRK) k(k+1)). Networks:
28-300-1 on HIGGS-shaped synthetic rows (``benchmarks/higgs_like.py``'s
teacher) and 784-300-10 on MNIST's 60,000 training images.

Part ``pipeline``: seconds per iteration of ``pipeline.training.train`` (a
local cluster of one in-process worker with 2 threads, as ``--local-mode
auto`` picks for data this small, the data read from a Zarr store, the state
and checkpoints in a run store) against the same solver in memory with 2
threads (:class:`benchmarks.gn_efficiency.TimedRunner`), for Gauss-Newton and ADMM, same settings and the
pipeline's own input scaling (:func:`store_model`: the same run, step for step), median over the iterations after the first.

Run (each part a few minutes; under the benchmark lock, nothing else heavy)::

    flock /work/bench.lock python benchmarks/kernel_efficiency.py --out benchmarks/results/kernel_efficiency.json
"""
from __future__ import annotations

import argparse
import shutil
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
from solvers import make_solver  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.gauss_newton import CurvatureParams, ForwardParams  # noqa: E402
from solvers.losses import encode_labels  # noqa: E402
from solvers.stats import moment_sums, scaling_from_sums  # noqa: E402

CHUNK = 65_536  # rows per chunk, or a quarter of the rows when fewer (four chunks: both threads busy)


def chunk_rows(n: int) -> int:
    return min(CHUNK, n // 4)
MNIST = Path("/work/shared/data/mnist70k_uint8.npz")


# -- data -------------------------------------------------------------------------------
def higgs_rows(n: int, seed: int = 0):
    """Return (X float32, y 0/1) HIGGS-shaped rows from ``benchmarks/higgs_like.py``'s teacher."""
    from benchmarks import higgs_like

    rng = np.random.default_rng(seed)
    teacher = higgs_like.make_teacher(seed, 64)
    X = higgs_like.features(rng, n).astype(np.float32)
    y = (rng.random(n) < teacher.prob(X)).astype(np.int64)
    return X, y


def mnist_rows():
    """Return MNIST's first 60,000 images (784 columns, float32 as a data store holds them) and their digits."""
    with np.load(MNIST) as f:
        return f["X"][:60_000].astype(np.float32), f["y"][:60_000].astype(np.int64)


def model_of(X, y) -> dict:
    """Return the solver inputs (classes, x_mean, x_scale) of in-memory rows."""
    shift = X[0].astype(np.float64)
    scaling = scaling_from_sums(moment_sums(X, shift), shift, X.shape[1], "standard")
    return {"classes": np.unique(y).astype(np.int64), **scaling}


# -- timing ----------------------------------------------------------------------------
def _median(fn, repeats: int, clock=time.perf_counter) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def gemm_rate(threads: int, clock=time.perf_counter) -> float:
    """Return NumPy's float32 GFLOP/s of a 2048² product with ``threads`` BLAS threads (median of 7)."""
    A = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    with threadpool_limits(threads):
        return 2 * 2048 ** 3 / _median(lambda: A @ A, 7, clock) / 1e9


def concurrent_gemm_rate(threads: int, repeats: int = 7) -> float:
    """Return the float32 GFLOP/s of ``threads`` Python threads each running its own 2048² product on one BLAS thread
    (median of ``repeats`` rounds, wall): the threading of the solver's in-memory runner (one chunk per thread, one
    BLAS thread each), beside :func:`gemm_rate`'s one product on OpenBLAS's own threads."""
    from concurrent.futures import ThreadPoolExecutor

    from solvers.linalg import one_blas_thread

    rng = np.random.default_rng(0)
    mats = [rng.standard_normal((2048, 2048), dtype=np.float32) for _ in range(threads)]
    with ThreadPoolExecutor(threads) as pool, one_blas_thread():
        def round_():
            list(pool.map(lambda A: A @ A, mats))
        return threads * 2 * 2048 ** 3 / _median(round_, repeats) / 1e9


def in_memory_iterations(config: TrainConfig, X, y, model: dict, threads: int, iterations: int) -> dict:
    """Run ``initialize`` and ``iterations`` × ``advance`` in memory; return each iteration's and pass's seconds."""
    solver = make_solver(config, X.shape[1], **model)
    runner = TimedRunner(solver, X, encode_labels(y, model["classes"]), chunk_rows(X.shape[0]), threads)
    with CpuWatch() as cpu:
        t0 = time.perf_counter()
        state = solver.initialize(runner)
        init = time.perf_counter() - t0
        iters = []
        for _ in range(iterations):
            runner.log = []
            c0, t0 = time.process_time(), time.perf_counter()
            state, metrics = solver.advance(runner, state)
            iters.append({"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                          "passes": runner.log, "accepted": bool(metrics.get("accepted", True)),
                          "train_accuracy": metrics.get("train_accuracy")})
    return {"threads": threads, "n_samples": int(X.shape[0]), "init_seconds": init, "iterations": iters,
            "other_cpu_seconds": cpu.other}


# -- part kernels ------------------------------------------------------------------------
def chunk_rates(widths, X, y, model: dict) -> dict:
    """Return pass A's and pass B's seconds (thread CPU) on one chunk, 1 BLAS thread."""
    hidden = widths[1:-1]
    solver = make_solver(TrainConfig(hidden=hidden), X.shape[1], **model)
    rng = np.random.default_rng(1)
    W = solver.cast(solver.he_weights(len(hidden)) + [rng.standard_normal((widths[-1], widths[-2] + 1)) * 0.05])
    x, yi = X[:CHUNK], encode_labels(y[:CHUNK], model["classes"])  # one chunk of 65,536 rows
    with threadpool_limits(1):
        a = _median(lambda: solver.forward_chunk(x, yi, None, 0, ForwardParams(W[:-1], False)), 7, time.thread_time)
        b = _median(lambda: solver.curvature_chunk(x, yi, None, 0, CurvatureParams(W, False)), 7, time.thread_time)
    return {"rows": int(x.shape[0]), "forward_chunk": a, "curvature_chunk": b}


def part_kernels(result: dict, args) -> None:
    result["kernels"] = {}
    for name, widths, (X, y) in networks(args):
        print(f"kernels: {name} ...", flush=True)
        model = model_of(X, y)
        per_row = {k: flops_per_row(v) for k, v in products(widths).items()}
        with CpuWatch() as cpu:
            gemm = {"1 cpu": gemm_rate(1, time.thread_time), "1": gemm_rate(1), "2": gemm_rate(2)}
            chunk = chunk_rates(widths, X, y, model)
        entry = {"widths": list(widths), "flops_per_row": per_row, "gemm_gflops": gemm, "chunk": chunk,
                 "chunk_other_cpu_seconds": cpu.other, "in_memory": {}}
        for threads in (1, 2):
            config = TrainConfig(hidden=tuple(widths[1:-1]), sample_schedule="full", validation_fraction=0.0,
                                 iterations=args.iterations)
            gemm_now = gemm_rate(threads)
            run = in_memory_iterations(config, X, y, model, threads, args.iterations)
            run["gemm_gflops"] = gemm_now
            run["gemm_gflops_after"] = gemm_rate(threads)  # the spread of the reference over the run
            run["gemm_gflops_concurrent"] = concurrent_gemm_rate(threads)
            run["gemm_gflops_1_cpu"] = gemm_rate(1, time.thread_time)  # the CPU share's reference
            entry["in_memory"][str(threads)] = run
        result["kernels"][name] = entry


def networks(args):
    if "28-300-1" in args.networks:
        yield "28-300-1", (28, 300, 1), higgs_rows(args.higgs_n)
    if "784-300-10" in args.networks:
        yield "784-300-10", (784, 300, 10), mnist_rows()


# -- part pipeline -----------------------------------------------------------------------
def write_store(path: Path, X, y) -> Path:
    from storage.data import write_data

    shutil.rmtree(path, ignore_errors=True)
    write_data(path, X, y, chunk_rows=chunk_rows(X.shape[0]))
    return path


def pipeline_iterations(config: TrainConfig, data: Path, run: Path, n: int) -> dict:
    """Return ``pipeline.training.train``'s per-iteration seconds on one in-process worker of 2 threads."""
    from pipeline.cluster import connect
    from pipeline.training import train

    with connect("local", n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as client, \
            CpuWatch() as cpu:
        t0 = time.perf_counter()
        res = train(client, store=str(run), data=str(data), config=config, chunk_rows=chunk_rows(n), overwrite=True,
                    report=lambda line: None)
        total = time.perf_counter() - t0
    shutil.rmtree(run, ignore_errors=True)
    return {"total_seconds": total, "other_cpu_seconds": cpu.other,
            "iterations": [{"seconds": h["seconds"], "accepted": bool(h.get("accepted", True)),
                            "train_accuracy": h.get("train_accuracy")} for h in res.history]}


def store_model(config: TrainConfig, data: Path) -> dict:
    """Return the solver inputs ``pipeline.training.train`` makes for a new run on the data store ``data``.

    The input scaling is the config's (``auto``: each feature's std with a floor, :func:`solvers.stats.input_scale`)
    from the moments the store recorded, so the in-memory run beside the pipeline's is the same run (the same
    steps, accepted or rejected alike). :func:`model_of` (``standard`` scaling, the kernels part) differs: before
    session 14 the two runs of a row took different steps, and a rejected step (one pass) in one run only counted
    in its median.
    """
    from pipeline.passes import data_moments
    from solvers.driver import model_from_moments
    from storage.data import open_data

    store = open_data(data)
    return model_from_moments(config, store.n_features, *data_moments(None, store, config.task == "regression"))


def median_after_first(iters) -> float:
    return statistics.median(it["seconds"] for it in (iters[1:] or iters))


def part_pipeline(result: dict, args) -> None:
    result["pipeline"] = {}
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    for name, widths, (X, y) in networks(args):
        data = write_store(tmp / f"{name}.zarr", X, y)
        for solver in args.solvers:
            print(f"pipeline: {name} {solver} ...", flush=True)
            config = TrainConfig(solver=solver, hidden=tuple(widths[1:-1]), sample_schedule="full",
                                 validation_fraction=0.0, iterations=args.iterations)
            model = model_of(X, y) if args.standard_scaling else store_model(config, data)
            mem = in_memory_iterations(config, X, y, model, 2, args.iterations)
            pipe = pipeline_iterations(config, data, tmp / "run.zarr", X.shape[0])
            result["pipeline"][f"{name} {solver}"] = {
                "in_memory": mem, "pipeline": pipe,
                "ratio": median_after_first(pipe["iterations"]) / median_after_first(mem["iterations"])}
        shutil.rmtree(data, ignore_errors=True)


# -- report ------------------------------------------------------------------------------
def _eff(r: dict) -> dict:
    """Return the in-memory rates of a kernels entry: per pass and per accepted iteration, GFLOP/s and share of GEMM."""
    out = {}
    for threads, run in r["in_memory"].items():
        n, g = run["n_samples"], run["gemm_gflops"]
        row = {}
        for kernel, per_row in r["flops_per_row"].items():
            secs = [p["seconds"] for it in run["iterations"] for p in it["passes"] if p["kernel"] == kernel]
            if secs:
                s = statistics.median(secs)
                row[kernel] = (s, n * per_row / s / 1e9, n * per_row / s / 1e9 / g)
        acc = [it for it in run["iterations"] if it["accepted"] and len(it["passes"]) == 2]
        if acc:
            s = statistics.median(it["seconds"] for it in acc)
            f = n * sum(r["flops_per_row"].values())
            row["iteration"] = (s, f / s / 1e9, f / s / 1e9 / g)
            if "cpu_seconds" in acc[0]:  # session 17 on: CPU share (load-robust) and the threads' use of the wall
                c = statistics.median(it["cpu_seconds"] for it in acc)
                row["cpu"] = (c, f / c / 1e9 / run["gemm_gflops_1_cpu"], c / (int(threads) * s))
        out[threads] = row
    return out


def markdown(r: dict) -> str:
    pv = r["provenance"]
    L = ["# Gauss-Newton kernel efficiency and pipeline / in memory (issue 21, point 6)", "",
         f"- Command: `{pv['command']}`",
         f"- Date: {pv['date']} on {pv['host']} ({pv['cpus']} CPUs, {pv['ram_bytes'] / 2**30:.1f} GiB RAM)",
         f"- Load average before / after: {r.get('load_before')} / {r.get('load_after')}",
         "- FLOPs: the kernels' matrix products (`benchmarks/gn_efficiency.py`: GEMM 2km, Gram (SYRK) k(k+1) per row).",
         "- `other CPU s`: CPU seconds of other processes during the measurement (bench_util.CpuWatch).", ""]
    if "kernels" in r:
        L += ["## One chunk of 65,536 rows, 1 BLAS thread (thread CPU time; GEMM in the same clock)", "",
              "| network | GEMM GFLOP/s | pass A ms (GFLOP/s, share) | pass B ms (GFLOP/s, share) | A + B share | other CPU s |",
              "|---|---|---|---|---|---|"]
        for name, e in r["kernels"].items():
            c, g, f = e["chunk"], e["gemm_gflops"]["1 cpu"], e["flops_per_row"]
            cells = []
            for k in ("forward_chunk", "curvature_chunk"):
                rate = c["rows"] * f[k] / c[k] / 1e9
                cells.append(f"{c[k] * 1e3:.1f} ({rate:.1f}, {rate / g:.0%})")
            both = c["rows"] * sum(f.values()) / (c["forward_chunk"] + c["curvature_chunk"]) / 1e9
            L.append(f"| {name} | {g:.1f} | {cells[0]} | {cells[1]} | **{both / g:.0%}** | "
                     f"{e['chunk_other_cpu_seconds']:.1f} |")
        L += ["", "## In memory: the solver's iterations (wall; chunks of 65,536 rows or a quarter of n; GEMM with as many threads, "
              "measured just before)", "",
              "| network | threads | n | GEMM GFLOP/s | pass A s (GFLOP/s, share) | pass B s (GFLOP/s, share) | "
              "accepted iteration s (GFLOP/s, share) | other CPU s |", "|---|---|---|---|---|---|---|---|"]
        for name, e in r["kernels"].items():
            for threads, row in _eff(e).items():
                run = e["in_memory"][threads]
                cells = [f"{row[k][0]:.2f} ({row[k][1]:.1f}, {row[k][2]:.0%})" if k in row else "-"
                         for k in ("forward_chunk", "curvature_chunk", "iteration")]
                L.append(f"| {name} | {threads} | {run['n_samples']:,} | {run['gemm_gflops']:.1f} | {cells[0]} | "
                         f"{cells[1]} | **{cells[2]}** | {run['other_cpu_seconds']:.1f} |")
        rows = [(name, threads, row, e["in_memory"][threads]) for name, e in r["kernels"].items()
                for threads, row in _eff(e).items() if "cpu" in row]
        if rows:
            L += ["", "### The share's parts (session 17 on): CPU share x threads' use of the wall x the reference", "",
                  "CPU share = FLOPs / process CPU s of an accepted iteration / the 1-thread GEMM rate in CPU time (robust "
                  "to other processes taking the cores); wall use = CPU s / (threads x wall s): below 1 by the serial "
                  "client solves, the passes' ends and other processes. GEMM before / after the run (OpenBLAS's "
                  "threads) and with one product per thread on one BLAS thread each (the runner's threading).", "",
                  "| network | threads | CPU s | CPU share | wall use | GEMM before / after / per-thread GFLOP/s | "
                  "share of per-thread GEMM |", "|---|---|---|---|---|---|---|"]
            for name, threads, row, run in rows:
                c, share, use = row["cpu"]
                conc = run["gemm_gflops_concurrent"]
                f = row["iteration"][1]
                L.append(f"| {name} | {threads} | {c:.2f} | {share:.0%} | {use:.0%} | {run['gemm_gflops']:.1f} / "
                         f"{run['gemm_gflops_after']:.1f} / {conc:.1f} | {f / conc:.0%} |")
    if "pipeline" in r:
        L += ["", "## Pipeline / in memory (median s per iteration after the first; 2 threads each)", "",
              "| network, solver | in memory s | pipeline s | ratio | in memory per iteration | pipeline per iteration | "
              "other CPU s (in memory / pipeline) |", "|---|---|---|---|---|---|---|"]
        for name, e in r["pipeline"].items():
            m, p = e["in_memory"], e["pipeline"]
            per = [", ".join(f"{it['seconds']:.2f}" for it in run["iterations"]) for run in (m, p)]
            L.append(f"| {name} | {median_after_first(m['iterations']):.2f} | {median_after_first(p['iterations']):.2f} | "
                     f"**{e['ratio']:.2f}** | {per[0]} | {per[1]} | "
                     f"{m['other_cpu_seconds']:.1f} / {p['other_cpu_seconds']:.1f} |")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    import json
    import os

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="kernels,pipeline")
    p.add_argument("--networks", default="28-300-1,784-300-10")
    p.add_argument("--solvers", nargs="+", default=["gauss-newton", "admm"])
    p.add_argument("--higgs-n", type=int, default=262_144, help="HIGGS-shaped rows (28-300-1)")
    p.add_argument("--iterations", type=int, default=5, help="iterations per run (the share: median of the accepted ones)")
    p.add_argument("--standard-scaling", action="store_true",
                   help="part pipeline: the in-memory run scales as the kernels part (before session 14; not the pipeline's run)")
    p.add_argument("--tmp", default="/tmp/kernel_efficiency", help="where the temporary data and run stores go")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kernel_efficiency.json"))
    p.add_argument("--render-only", action="store_true", help="rewrite the .md from the JSON at --out")
    args = p.parse_args(argv)
    if args.render_only:
        Path(args.out).with_suffix(".md").write_text(markdown(json.loads(Path(args.out).read_text())))
        return 0
    result = {"provenance": provenance(), "settings": vars(args), "load_before": os.getloadavg()[0]}
    for part in args.parts.split(","):
        {"kernels": part_kernels, "pipeline": part_pipeline}[part](result, args)
        write_results(args.out, result, markdown)  # what is measured so far
    result["load_after"] = os.getloadavg()[0]
    write_results(args.out, result, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
