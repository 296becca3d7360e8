"""Hardware efficiency of one Gauss-Newton iteration: FLOP rate vs GEMM rate, bytes vs disk, scaling.

FLOP count (from ``GaussNewtonSolver.forward_chunk``/``curvature_chunk``; the
matrix products only — elementwise work is overhead in the time, not in the
count). Widths ``w = (d, n_1, …, n_{L−1}, o)``; a product ``(r×k)(k×m)`` or
``(k×r)(r×m)`` costs ``2rkm``; a Gram ``aᵀa`` of an ``r×k`` block runs as SYRK
in NumPy and costs ``r·k(k+1)``. Per row:

* pass A: ``Σ_{l<L} 2 w_{l−1} w_l``  (forward)  ``+ w_{L−1}(w_{L−1}+1)``  (G_{L−1})
  ``+ 2 o w_{L−1}``  (C_L)
* pass B: ``Σ_{l<L} 2 w_{l−1} w_l``  (forward)  ``+ 2 w_{L−1} o``  (output)
  ``+ Σ_{l=1}^{L−1} [2 w_{l+1} w_l  (δ W̃)  + 2 w_l w_{l−1}  (D_l)]``
  ``+ Σ_{l=2}^{L−1} w_{l−1}(w_{l−1}+1)``  (G_{l−1})  ``+ w_{L−1}(w_{L−1}+1)``  (Σ MᵀM)
  ``+ o Σ_{l=1}^{L−2} [2 w_{l+1} w_l + w_l(w_l+1)]``  (deeper curvatures, one backprop per output)

28-300-1: A = 16,800 + 90,300 + 600 = 107,700; B = 16,800 + 600 + 600 + 16,800
+ 90,300 = 125,100; one accepted iteration = 232,800 FLOP per row.

Measured, one thing at a time:

1. float32 GEMM rate of NumPy (``threadpool_limits`` 1 and 2): a 2048² square
   product and every product shape of the kernels at the kernel's 4096-row tile.
2. In memory: the solver's own kernels over in-memory chunks (``InMemoryRunner``
   with a thread pool: 1 thread, or 2 chunks at a time with one BLAS thread
   each), ``initialize`` then ``advance``; achieved rate = FLOPs / pass seconds
   and FLOPs / iteration seconds (incl. the client solves), over the GEMM rate
   with the same number of threads (target ≥ 50 %).
3. Out of core: the disk's sequential bandwidth (``out_of_core.disk_bandwidth``),
   then the same iteration on a LocalCluster of 2 one-thread workers
   (``pipeline.passes.DaskRunner``) over a data store, the page cache dropped
   before *every* pass (as for a store larger than RAM) and, for comparison,
   warm. Bytes read per iteration = passes × (X + y bytes); efficiency = those
   bytes / iteration seconds / read bandwidth (target ≥ 60 %), beside the
   compute bound FLOPs / 2-thread GEMM rate.
4. Scaling: ``pipeline.training.train`` (2 local workers) on stores of
   ``--ns`` rows (seconds per row constant = linear), and 1 vs 2 workers.

Run (about 15 minutes; nothing else heavy at the same time)::

    python benchmarks/gn_efficiency.py --out benchmarks/results/gn_efficiency.json
    python benchmarks/gn_efficiency.py --quick --out /tmp/gn_efficiency_quick.json   # < 2 minutes
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from threadpoolctl import threadpool_limits  # noqa: E402

from benchmarks.bench_util import CpuWatch, drop_caches, proc_io, provenance, worker_pids, write_results  # noqa: E402
from benchmarks.iteration_time import data_store  # noqa: E402
from benchmarks.out_of_core import disk_bandwidth  # noqa: E402
from solvers import make_solver  # noqa: E402
from solvers.tiling import TILE_ROWS  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.linalg import one_blas_thread  # noqa: E402
from solvers.loop import chunk_kernel  # noqa: E402
from solvers.losses import encode_labels  # noqa: E402
from solvers.reference import InMemoryRunner  # noqa: E402
from solvers.stats import moment_sums, scaling_from_sums  # noqa: E402
from storage.data import open_data  # noqa: E402


# -- the count -------------------------------------------------------------------------
def products(widths) -> dict:
    """Return the matrix products of passes A and B: {pass: [(what, k, m, kind)]} for an r-row tile.

    ``gemm`` is (r×k)(k×m), ``gram`` (k×r)(r×m) (a sum over rows): 2km FLOPs per row;
    ``syrk`` is the Gram of an r×k block: k(k+1) per row.
    """
    w, L = list(widths), len(widths) - 1
    o = w[L]
    fwd = [(f"z{l} = a{l - 1} W{l}'", w[l - 1], w[l], "gemm") for l in range(1, L)]
    a = fwd + [(f"G{L - 1} = a{L - 1}'a{L - 1}", w[L - 1], w[L - 1], "syrk"),
               (f"C{L} = T'a{L - 1}", o, w[L - 1], "gram")]
    b = fwd + [(f"z{L} = a{L - 1} W{L}'", w[L - 1], o, "gemm")]
    for l in range(L - 1, 0, -1):
        b.append((f"delta{l + 1} W{l + 1}", w[l + 1], w[l], "gemm"))
        b.append((f"D{l} = delta{l}'a{l - 1}", w[l], w[l - 1], "gram"))
        if l > 1:
            b.append((f"G{l - 1} = a{l - 1}'a{l - 1}", w[l - 1], w[l - 1], "syrk"))
    if L > 1:
        b.append((f"S{L - 1} = M'M", w[L - 1], w[L - 1], "syrk"))
    for _ in range(o if L > 2 else 0):
        for l in range(L - 2, 0, -1):
            b.append((f"J{l} = J W{l + 1}", w[l + 1], w[l], "gemm"))
            b.append((f"S{l} += J'J", w[l], w[l], "syrk"))
    return {"forward_chunk": a, "curvature_chunk": b}


def flops_per_row(prods) -> float:
    """Return the FLOPs per row of a list of products (see :func:`products`)."""
    return float(sum(k * (k + 1) if kind == "syrk" else 2 * k * m for _, k, m, kind in prods))


# -- GEMM rate -------------------------------------------------------------------------
def wait_for_quiet(max_wait: float, busy: float = 15.0) -> float:
    """Wait until the machine's CPU use (all processes) stays below ``busy`` % for 3 s; return seconds waited.

    Another engineer's test runs share the 2 cores; a measurement starts in a quiet
    moment when there is one within ``max_wait`` seconds (CpuWatch still records
    what other processes used during it).
    """
    import psutil

    t0, quiet = time.perf_counter(), 0
    while quiet < 3 and time.perf_counter() - t0 < max_wait:
        quiet = quiet + 1 if psutil.cpu_percent(interval=1.0) < busy else 0
    return time.perf_counter() - t0


def _median_seconds(fn, seconds: float, *args) -> float:
    fn(*args)
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _syrk(x):
    return x.T @ x


def _gram(x, y):
    return x.T @ y


def gemm_rates(widths_list, threads=(1, 2), seconds: float = 1.0) -> dict:
    """Return measured float32 GFLOP/s (median of repeats): a 2048² product and each kernel product, 4096-row tile."""
    rng = np.random.default_rng(0)
    out = {}
    for t in threads:
        with threadpool_limits(t):
            A = rng.standard_normal((2048, 2048), dtype=np.float32)
            res = {"square_2048": 2 * 2048**3 / _median_seconds(np.matmul, 2 * seconds, A, A) / 1e9}
            for widths in widths_list:
                for prods in products(widths).values():
                    for _what, k, m, kind in prods:
                        key = f"{kind} {k}x{m}"
                        if key in res:
                            continue
                        x = rng.standard_normal((TILE_ROWS, k), dtype=np.float32)
                        y = rng.standard_normal((k, m) if kind == "gemm" else (TILE_ROWS, m), dtype=np.float32)
                        fn, fargs = {"syrk": (_syrk, (x,)), "gram": (_gram, (x, y)), "gemm": (np.matmul, (x, y))}[kind]
                        s = _median_seconds(fn, seconds / 4, *fargs)
                        res[key] = TILE_ROWS * (k * (k + 1) if kind == "syrk" else 2 * k * m) / s / 1e9
            out[str(t)] = res
    return out


def shape_bound_seconds_per_row(prods, rates: dict) -> float:
    """Return the seconds per row if every product ran at its own measured (one-thread) rate."""
    return sum((k * (k + 1) if kind == "syrk" else 2 * k * m) / (rates[f"{kind} {k}x{m}"] * 1e9)
               for _, k, m, kind in prods)


def tile_breakdown(seconds: float = 0.2) -> dict:
    """Return the measured ms of each step of the 28-300-1 kernels on one 4096-row tile (one thread)."""
    from solvers.activations import relu, relu_derivative
    from solvers.linalg import affine, cross_with_bias, gram_with_bias
    from solvers.network import standardize

    rng = np.random.default_rng(0)
    x = rng.standard_normal((TILE_ROWS, 28)).astype(np.float32)
    W1 = (rng.standard_normal((300, 29)) * 0.2).astype(np.float32)
    W2 = rng.standard_normal((1, 301)).astype(np.float32)
    t = (rng.random((TILE_ROWS, 1)) > 0.5).astype(np.float32)
    z = affine(x, W1)
    a, M = relu(z), relu_derivative(z)
    r = t - affine(a, W2)
    delta = M * (r @ W2[:, :-1])
    steps = {"standardize x (both)": (standardize, x, np.zeros(28), np.ones(28)),
             "z1 = affine(x, W1) (both)": (affine, x, W1), "a1 = relu(z1) (both)": (relu, z),
             "G = gram_with_bias(a1) (A)": (gram_with_bias, a), "C = cross_with_bias(T, a1) (A)": (cross_with_bias, t, a),
             "z2 = affine(a1, W2) (B)": (affine, a, W2), "M = relu'(z1) (B)": (relu_derivative, z),
             "delta = M * (r @ W~2) (B)": (lambda m, rr, w: m * (rr @ w), M, r, W2[:, :-1]),
             "D = cross_with_bias(delta, x) (B)": (cross_with_bias, delta, x),
             "S = (M'M).astype(float64) (B)": (lambda m: (m.T @ m).astype(np.float64), M)}
    with threadpool_limits(1):
        return {k: _median_seconds(v[0], seconds, *v[1:]) * 1e3 for k, v in steps.items()}


# -- in memory -------------------------------------------------------------------------
class TimedRunner(InMemoryRunner):
    """The in-memory runner with ``threads`` chunks at a time (one BLAS thread each); logs each pass's wall seconds.

    One thread pool for the runner's life, and BLAS held to one thread by the
    process's cached controller (:func:`solvers.linalg.one_blas_thread`, as the
    solver's client solves are): a pool and a ``threadpool_limits`` per pass cost
    about 5 ms of serial time each pass (session 13, ``kernel_s13.md``).
    """

    def __init__(self, solver, X, y_idx, chunk_rows, threads: int):
        super().__init__(solver, X, y_idx, chunk_rows)
        self.threads, self.log = threads, []
        self.pool = ThreadPoolExecutor(threads)

    def run(self, kernel, params, *, read=None, write=None, chunks=None, held_out=False):
        if held_out:  # nothing is held out here
            return self.run(kernel, params, read=read, write=write, chunks=chunks), None
        fn = getattr(self.solver, kernel)
        idx = [i for i in range(len(self.bounds)) if chunks is None or i in chunks]
        if write is not None:
            self.slots.setdefault(write % 2, [{} for _ in self.bounds])

        def one(i):
            state = None if read is None else {name: self.slots[k % 2][i][name] for name, k in read.items()}
            new, sums = chunk_kernel(fn, self.x[i], self.y[i], state, self.bounds[i][0], params, None)
            if write is not None:
                self.slots[write % 2][i].update(new)
            return sums

        t0 = time.perf_counter()
        with one_blas_thread():
            parts = list(self.pool.map(one, idx))
        self.log.append({"kernel": kernel, "seconds": time.perf_counter() - t0})
        total = 0.0
        for p in parts:  # fixed order: the sums do not depend on the threads
            total = total + p
        return total


def load_in_memory(path, n: int | None):
    """Return (X, y class indices, solver inputs) of the first ``n`` rows of a data store."""
    data = open_data(path)
    n = min(n or data.n_samples, data.n_samples)
    X, y = data.X[:n], data.y[:n]
    shift = X[0].astype(np.float64)
    scaling = scaling_from_sums(moment_sums(X, shift), shift, X.shape[1], "standard")
    classes = np.unique(y).astype(np.int64)
    return X, encode_labels(y, classes), {"classes": classes, **scaling}


def timed_iterations(solver, runner, iterations: int) -> list[dict]:
    """Run init and ``iterations`` Gauss-Newton iterations; return each one's seconds and the runner's pass log."""
    state = solver.initialize(runner)
    iters = []
    for _ in range(iterations):
        runner.log = []
        t0 = time.perf_counter()
        state, metrics = solver.advance(runner, state)
        iters.append({"seconds": time.perf_counter() - t0, "passes": runner.log,
                      "pass_seconds": sum(p["seconds"] for p in runner.log),
                      "accepted": metrics["accepted"], "train_accuracy": metrics["train_accuracy"]})
    return iters


def run_in_memory(X, y_idx, model, hidden, threads: int, iterations: int, chunk_rows: int) -> dict:
    """Time init and ``iterations`` Gauss-Newton iterations in memory; return per-pass and per-iteration seconds."""
    config = TrainConfig(hidden=hidden)
    solver = make_solver(config, X.shape[1], **model)
    runner = TimedRunner(solver, X, y_idx, chunk_rows, threads)
    with CpuWatch() as cpu:
        iters = timed_iterations(solver, runner, iterations)
    return {"threads": threads, "n_samples": X.shape[0], "iterations": iters, "other_cpu_seconds": cpu.other}


def efficiency(run: dict, widths, gemm: dict) -> dict:
    """Return the achieved GFLOP/s of each pass and of accepted iterations, over the GEMM rates."""
    per_row = {k: flops_per_row(v) for k, v in products(widths).items()}
    n, rates = run["n_samples"], gemm[str(run["threads"])]
    ones = gemm["1"]
    out = {}
    for kernel in per_row:
        secs = [p["seconds"] for it in run["iterations"] for p in it["passes"] if p["kernel"] == kernel]
        if secs:
            out[kernel] = {"median_seconds": statistics.median(secs),
                           "gflops": n * per_row[kernel] / statistics.median(secs) / 1e9}
    acc = [it for it in run["iterations"] if it["accepted"]]
    if acc:
        s = statistics.median(it["seconds"] for it in acc)
        out["iteration"] = {"median_seconds": s, "gflops": n * sum(per_row.values()) / s / 1e9}
        bound = shape_bound_seconds_per_row(sum(products(widths).values(), []), ones) * n / run["threads"]
        out["iteration"]["shape_bound_seconds"] = bound
    for part in out.values():
        part["over_square_gemm"] = part["gflops"] / rates["square_2048"]
    return out


# -- out of core -----------------------------------------------------------------------
def dask_runner_class():
    from pipeline.passes import DaskRunner

    class LoggedDaskRunner(DaskRunner):
        """DaskRunner that can drop the page cache before each pass and logs pass seconds and worker reads."""

        cold, log, pids = False, [], []

        def run(self, kernel, params, **passes):
            if self.cold:
                drop_caches()
            io0, t0 = proc_io(self.pids), time.perf_counter()
            out = super().run(kernel, params, **passes)
            io1 = proc_io(self.pids)
            self.log.append({"kernel": kernel, "seconds": time.perf_counter() - t0,
                             "disk_read_bytes": io1["read_bytes"] - io0["read_bytes"],
                             "rchar": io1["rchar"] - io0["rchar"]})
            return out

    return LoggedDaskRunner


def run_pipeline_passes(path, hidden, workers: int, iterations: int, chunk_rows: int, cold: bool) -> dict:
    """Time ``iterations`` Gauss-Newton iterations on a LocalCluster, data read by the workers from Zarr."""
    from pipeline.cluster import connect
    from pipeline.passes import bounds
    from pipeline.passes import data_moments
    from solvers.driver import model_from_moments

    data = open_data(path)
    config = TrainConfig(hidden=hidden)
    with connect("local", n_workers=workers, threads_per_worker=1, memory_limit="4GB",
                 dashboard_address=":0") as client:
        moments = data_moments(client, data, config.task == "regression")
        solver = make_solver(config, data.n_features, **model_from_moments(config, data.n_features, *moments))
        runner = dask_runner_class()(client, solver, data.path.resolve(), "/nonexistent-no-state",
                                     bounds(data.n_samples, chunk_rows))
        runner.cold, runner.log, runner.pids = cold, [], worker_pids(client)
        with CpuWatch() as cpu:
            iters = timed_iterations(solver, runner, iterations)
    return {"data": str(path), "n_samples": data.n_samples, "workers": workers, "chunk_rows": chunk_rows,
            "cold": cold, "data_bytes_per_pass": data.n_samples * (data.n_features * 4 + data.y.dtype.itemsize),
            "iterations": iters, "other_cpu_seconds": cpu.other}


def io_efficiency(run: dict, bw: dict, widths, gemm: dict) -> dict:
    """Return bytes read per iteration over the read bandwidth, beside the compute bound."""
    per_row = sum(flops_per_row(p) for p in products(widths).values())
    out = []
    for it in run["iterations"]:
        passes = len(it["passes"])
        read = passes * run["data_bytes_per_pass"]
        out.append({"passes": passes, "logical_read_bytes": read,
                    "worker_disk_read_bytes": sum(p["disk_read_bytes"] for p in it["passes"]),
                    "pass_seconds": it["pass_seconds"], "read_rate": read / it["pass_seconds"],
                    "over_read_bandwidth": read / it["pass_seconds"] / bw["read_bytes_per_s"],
                    "io_bound_seconds": read / bw["read_bytes_per_s"],
                    "compute_bound_seconds": run["n_samples"] * per_row
                    / (gemm[str(run["workers"])]["square_2048"] * 1e9) if it["accepted"] else None})
    return {"iterations": out}


# -- scaling with n and workers ----------------------------------------------------------
def train_seconds(path, hidden, workers: int, iterations: int, chunk_rows: int, run_path: Path) -> dict:
    """Return ``pipeline.training.train``'s per-iteration seconds on a LocalCluster of ``workers``."""
    import shutil

    from pipeline.cluster import connect
    from pipeline.training import train

    config = TrainConfig(hidden=hidden, iterations=iterations)
    with connect("local", n_workers=workers, threads_per_worker=1, memory_limit="4GB",
                 dashboard_address=":0") as client, CpuWatch() as cpu:
        res = train(client, store=str(run_path), data=str(path), config=config, chunk_rows=chunk_rows,
                    overwrite=True, report=lambda line: None)
    shutil.rmtree(run_path, ignore_errors=True)
    its = [{"seconds": h["seconds"], "accepted": h["accepted"]} for h in res.history]
    acc = [it["seconds"] for it in its[1:] if it["accepted"]] or [it["seconds"] for it in its if it["accepted"]]
    n = open_data(path).n_samples
    return {"data": str(path), "n_samples": n, "workers": workers, "iterations": its,
            "median_accepted_seconds": statistics.median(acc), "seconds_per_million_rows":
            statistics.median(acc) / n * 1e6, "other_cpu_seconds": cpu.other}


# -- main ------------------------------------------------------------------------------
CASES = {"28-300-1": (300,), "28-300-300-1": (300, 300)}


def part_memory(result, args, quiet) -> None:
    """GEMM rates, the tile breakdown and the in-memory runs, measured side by side."""
    print("GEMM rates ...", flush=True)
    quiet("gemm")
    with CpuWatch() as cpu:
        result["gemm_gflops"] = gemm_rates([(28, *h, 1) for h in CASES.values()], seconds=0.3 if args.quick else 1.0)
    result["gemm_other_cpu_seconds"] = cpu.other
    quiet("tile")
    with CpuWatch() as cpu:
        result["tile_ms"] = tile_breakdown(0.05 if args.quick else 0.3)
    result["tile_other_cpu_seconds"] = cpu.other
    X, y_idx, model = load_in_memory(data_store(Path(args.data_dir), 1_000_000), args.memory_n)
    result["in_memory"] = {}
    for name, hidden in CASES.items():
        for threads in (1, 2):
            print(f"in memory {name}, {threads} thread(s) ...", flush=True)
            quiet(f"in memory {name} {threads}")
            run = run_in_memory(X, y_idx, model, hidden, threads, args.iterations, args.chunk_rows // 2)
            run["efficiency"] = efficiency(run, (28, *hidden, 1), result["gemm_gflops"])
            result["in_memory"][f"{name} {threads}"] = run


def part_ooc(result, args, quiet) -> None:
    """Disk bandwidth, then the iteration out of core (page cache dropped before every pass) and warm."""
    print("disk bandwidth ...", flush=True)
    quiet("disk")
    result["disk_bandwidth"] = disk_bandwidth(Path(args.data_dir) / "gn-efficiency-bw.bin", args.bw_gb)
    result["out_of_core"] = {}
    for cold in (True, False):
        print(f"out of core, cold={cold} ...", flush=True)
        quiet(f"out of core cold={cold}")
        run = run_pipeline_passes(args.ooc_data, (300,), 2, args.ooc_iterations, args.chunk_rows, cold)
        run["io"] = io_efficiency(run, result["disk_bandwidth"], (28, 300, 1), result["gemm_gflops"])
        result["out_of_core"]["cold" if cold else "warm"] = run


def part_scaling(result, args, quiet) -> None:
    """``train`` on stores of ``--ns`` rows with 2 workers, and on ``--workers-n`` rows with 1 and 2 workers."""
    data_dir = Path(args.data_dir)
    run_path = data_dir / "gn-efficiency-run.zarr"
    result["scaling_n"] = []
    for n in [int(s) for s in args.ns.split(",")]:
        print(f"scaling: n={n} ...", flush=True)
        quiet(f"n={n}")
        result["scaling_n"].append(train_seconds(data_store(data_dir, n), (300,), 2, args.iterations,
                                                 args.chunk_rows, run_path))
    result["scaling_workers"] = []
    for w in (1, 2):
        print(f"scaling: {w} worker(s) ...", flush=True)
        quiet(f"workers={w}")
        result["scaling_workers"].append(train_seconds(data_store(data_dir, args.workers_n), (300,), w,
                                                       args.iterations, args.chunk_rows, run_path))


PARTS = {"memory": part_memory, "ooc": part_ooc, "scaling": part_scaling}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, under 2 minutes")
    p.add_argument("--data-dir", default="/work/bench")
    p.add_argument("--memory-n", type=int, default=500_000, help="rows for the in-memory part")
    p.add_argument("--ooc-data", default="/work/bench/higgs.zarr", help="store for the out-of-core part")
    p.add_argument("--ns", default="500000,1000000,2000000,4000000")
    p.add_argument("--workers-n", type=int, default=2_000_000, help="rows for the 1 vs 2 workers test")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--ooc-iterations", type=int, default=2)
    p.add_argument("--chunk-rows", type=int, default=262144)
    p.add_argument("--bw-gb", type=float, default=4.0)
    p.add_argument("--wait-quiet", type=float, default=90.0,
                   help="before each measurement wait up to this many seconds for the CPUs to be idle")
    p.add_argument("--only", default=None, help="re-measure these parts (memory, ooc, scaling; comma-separated) "
                   "and replace them in the JSON at --out; the others keep their earlier run")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gn_efficiency.json"))
    p.add_argument("--render-only", action="store_true", help="rewrite the .md from the JSON at --out")
    args = p.parse_args(argv)
    if args.render_only:
        Path(args.out).with_suffix(".md").write_text(markdown(json.loads(Path(args.out).read_text())))
        return 0
    if args.quick:
        args.memory_n, args.ns, args.workers_n, args.iterations = 50_000, "250000,500000", 250_000, 2
        args.ooc_data, args.ooc_iterations, args.bw_gb = str(data_store(Path(args.data_dir), 250_000)), 1, 0.3
        args.chunk_rows = 65536
        args.wait_quiet = 0.0
    parts = args.only.split(",") if args.only else list(PARTS)
    if args.only:
        result = json.loads(Path(args.out).read_text())
        result.setdefault("reruns", []).append({"provenance": provenance(), "parts": parts})
    else:
        result = {"provenance": provenance(), "settings": vars(args), "waited": {}, "flops": {
            name: {k: {"per_row": flops_per_row(v), "products": v} for k, v in products((28, *h, 1)).items()}
            for name, h in CASES.items()}}

    def quiet(label):
        result["waited"][label] = wait_for_quiet(args.wait_quiet)

    for part in parts:
        PARTS[part](result, args, quiet)
    write_results(args.out, result, markdown)
    return 0


def _met(ok) -> str:
    return "met" if ok else "missed"


DISTURBED = 5.0  # other processes' CPU seconds above which a measurement is marked disturbed


def _disturbed(run: dict) -> str:
    return " *disturbed*" if run["other_cpu_seconds"] > DISTURBED else ""


def _cell(e: dict, k: str) -> str:
    return f"{e[k]['median_seconds']:.2f} ({e[k]['gflops']:.1f})" if k in e else "-"


def markdown(r: dict) -> str:
    pv, g = r["provenance"], r["gemm_gflops"]
    L = ["# Gauss-Newton hardware efficiency: FLOP rate, disk bandwidth, scaling", "",
         f"- Command: `{pv['command']}`",
         f"- Date: {pv['date']} on {pv['host']} ({pv['cpus']} CPUs, {pv['ram_bytes'] / 2**30:.1f} GiB RAM)",
         *(f"- Re-measured parts {', '.join(rr['parts'])}: `{rr['provenance']['command']}` at "
           f"{rr['provenance']['date']} (the sections of those parts come from that run)" for rr in r.get("reruns", [])),
         "- FLOPs: matrix products of `forward_chunk` (pass A) and `curvature_chunk` (pass B) only; "
         "GEMM 2km per row, Gram (SYRK) k(k+1) per row (formula in `benchmarks/gn_efficiency.py`).",
         "- `other CPU s`: CPU seconds used by processes outside this benchmark during the measurement; "
         f"above {DISTURBED:.0f} s the row is marked *disturbed* (other jobs shared the 2 cores).", "",
         "## FLOPs per row", "", "| network | pass A | pass B | accepted iteration (A + B) |", "|---|---|---|---|"]
    for name, f in r["flops"].items():
        a, b = f["forward_chunk"]["per_row"], f["curvature_chunk"]["per_row"]
        L.append(f"| {name} | {a:,.0f} | {b:,.0f} | {a + b:,.0f} |")
    L += ["", f"## float32 GEMM rate of NumPy (GFLOP/s, median of repeats; other CPU s {r['gemm_other_cpu_seconds']:.1f})",
          "", "| product | 1 thread | 2 threads |", "|---|---|---|"]
    for key in g["1"]:
        L.append(f"| {key}{'' if key.startswith('square') else ' (4096-row tile)'} | {g['1'][key]:.1f} | "
                 f"{g['2'][key]:.1f} |")
    total = sum(r["tile_ms"].values())
    L += ["", f"## Where a 4096-row tile's time goes (28-300-1, one thread; other CPU s {r['tile_other_cpu_seconds']:.1f})",
          "", "(A) pass A, (B) pass B, (both) both passes.", "", "| step | ms | share of the sum |", "|---|---|---|"]
    for k, v in r["tile_ms"].items():
        L.append(f"| `{k}` | {v:.2f} | {v / total:.0%} |")
    if g["2"]["square_2048"] < 1.5 * g["1"]["square_2048"]:
        L += ["", f"**Warning:** the 2-thread GEMM rate ({g['2']['square_2048']:.0f} GFLOP/s) is under 1.5x the "
              f"1-thread rate ({g['1']['square_2048']:.0f}): other jobs held a core during this part, so the 2-thread "
              "ratios below are not valid measurements of the target."]
    L += ["", "## In memory (solver kernels over in-memory chunks; target: iteration ≥ 50 % of the square GEMM rate)",
          "", "| network, threads | n | pass A s (GFLOP/s) | pass B s (GFLOP/s) | iteration s (GFLOP/s) | "
          "/ GEMM rate | target | products alone at their shape's rate, s | other CPU s |",
          "|---|---|---|---|---|---|---|---|---|"]
    for key, run in r["in_memory"].items():
        e = run["efficiency"]
        it = e.get("iteration")
        L.append(f"| {key}{_disturbed(run)} | {run['n_samples']:,} | {_cell(e, 'forward_chunk')} | {_cell(e, 'curvature_chunk')} | "
                 f"{_cell(e, 'iteration')} | {it['over_square_gemm']:.0%} | {_met(it['over_square_gemm'] >= 0.5)} | "
                 f"{it['shape_bound_seconds']:.2f} | {run['other_cpu_seconds']:.1f} |")
    bw = r["disk_bandwidth"]
    L += ["", "## Out of core", "",
          f"Disk (sequential, 64 MiB blocks, {bw['bytes'] / 1e9:.1f} GB file): write incl. fsync "
          f"**{bw['write_bytes_per_s'] / 1e6:.0f} MB/s**, cold read **{bw['read_bytes_per_s'] / 1e6:.0f} MB/s** "
          f"(page cache dropped: {bw['page_cache_dropped']}).", ""]
    for mode, run in r["out_of_core"].items():
        L += [f"`{run['data']}`, {run['n_samples']:,} rows, {run['data_bytes_per_pass'] / 1e9:.2f} GB per pass, "
              f"{run['workers']} workers x 1 thread, {run['chunk_rows']} rows per chunk, **{mode}**{_disturbed(run)} "
              f"({'page cache dropped before every pass' if run['cold'] else 'page cache warm'}); "
              f"other CPU s {run['other_cpu_seconds']:.1f}.", "",
              "| iteration | passes | bytes read (logical) GB | workers' disk reads GB | pass s | read rate MB/s | "
              "/ read bandwidth | I/O bound s | compute bound s (2-thread GEMM) |", "|---|---|---|---|---|---|---|---|---|"]
        for i, it in enumerate(run["io"]["iterations"], 1):
            cb = it["compute_bound_seconds"]
            L.append(f"| {i} | {it['passes']} | {it['logical_read_bytes'] / 1e9:.2f} | "
                     f"{it['worker_disk_read_bytes'] / 1e9:.2f} | {it['pass_seconds']:.2f} | "
                     f"{it['read_rate'] / 1e6:.0f} | {it['over_read_bandwidth']:.0%} | {it['io_bound_seconds']:.2f} | "
                     f"{'-' if cb is None else f'{cb:.2f}'} |")
        L.append("")
    L += ["## Iteration time against n (`pipeline.training.train`, 2 workers; target: linear)", "",
          "| n | median s per accepted iteration | s per million rows | relative to the largest n | other CPU s |",
          "|---|---|---|---|---|"]
    ref = r["scaling_n"][-1]["seconds_per_million_rows"]
    for s in r["scaling_n"]:
        L.append(f"| {s['n_samples']:,} | {s['median_accepted_seconds']:.2f} | {s['seconds_per_million_rows']:.2f} | "
                 f"{s['seconds_per_million_rows'] / ref:.2f} | {s['other_cpu_seconds']:.1f} |")
    w = r["scaling_workers"]
    L += ["", f"## Workers 1 -> 2 (n = {w[0]['n_samples']:,})", "",
          "| workers | median s per accepted iteration | speed-up | other CPU s |", "|---|---|---|---|"]
    for s in w:
        L.append(f"| {s['workers']} | {s['median_accepted_seconds']:.2f} | "
                 f"{w[0]['median_accepted_seconds'] / s['median_accepted_seconds']:.2f} | {s['other_cpu_seconds']:.1f} |")
    L += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for key, run in r["in_memory"].items():
        f = run["efficiency"]["iteration"]["over_square_gemm"]
        L.append(f"| in memory, {key} thread(s): FLOP rate ≥ 50 % of GEMM | {f:.0%} | {_met(f >= 0.5)} |")
    cold = [it["over_read_bandwidth"] for it in r["out_of_core"]["cold"]["io"]["iterations"]]
    L.append(f"| out of core (cold): bytes read / s ≥ 60 % of read bandwidth | {statistics.median(cold):.0%} "
             f"(median) | {_met(statistics.median(cold) >= 0.6)} |")
    per = [x["seconds_per_million_rows"] for x in r["scaling_n"]]
    ns = np.array([x["n_samples"] for x in r["scaling_n"]], float) / 1e6
    ts = np.array([x["median_accepted_seconds"] for x in r["scaling_n"]])
    b, a = np.polyfit(ns, ts, 1)
    resid = float(np.max(np.abs(ts - (a + b * ns)) / ts))
    L.append(f"| iteration time proportional to n (s per million rows within ±10 %) | {min(per):.2f}–{max(per):.2f} | "
             f"{_met(max(per) / min(per) <= 1.1 / 0.9)} |")
    L.append(f"| iteration time affine in n: a + b·n (largest residual ≤ 10 %) | a = {a:.2f} s, b = {b:.2f} s per "
             f"million rows, largest residual {resid:.0%} | {_met(resid <= 0.1)} |")
    sp = w[0]["median_accepted_seconds"] / w[-1]["median_accepted_seconds"]
    L.append(f"| workers 1 -> 2 (ideal speed-up 2) | {sp:.2f} | {'-'} |")
    L += ["", "Seconds waited for an idle machine before each measurement (`--wait-quiet`): "
          + ", ".join(f"{k} {v:.0f}" for k, v in r.get("waited", {}).items()) + ".", ""]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
