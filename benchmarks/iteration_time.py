"""Per-iteration time of the Dask pipeline vs an in-memory NumPy loop, and worker memory vs n.

Part 1 (ratio): on one HIGGS-shaped data store that fits in memory (default
2 M samples, 28-300-1, 131072-row chunks) it times, side by side in one run,

* ``inmemory``: the data and the state held in this process as NumPy chunks;
  every pass runs the solver's own kernels (``init_chunk``, ``step_chunk``)
  two chunks at a time in a ``ThreadPoolExecutor(2)``, each call under
  ``threadpoolctl.threadpool_limits(1)``, and the client loop is
  ``solvers.loop.initialize/iterate`` (the same W-solves as the pipeline);
* ``pipeline``: :func:`pipeline.training.train` on a LocalCluster of 2
  single-threaded worker processes (``pipeline.cluster.connect``), reading
  and writing the state in a Zarr run store (page cache: state fits in RAM).

The ratio is median(pipeline seconds) / median(in-memory seconds) over the
iterations after the first. ``--rounds 2`` repeats both (A B A B) to expose
disturbance by other jobs; the CPU time used by *other* processes during each
measurement is recorded (``other_cpu_seconds``).

Part 2 (memory): for each n in ``--memory-ns`` a fresh cluster runs init +
``--memory-iterations`` iterations; the peak RSS of each worker is taken from
the kernel (``VmHWM``, reset after cluster start) and from a 0.1 s RSS sampler.

Writes ``--out`` (JSON, every number) and the same name with ``.md``.
Data stores ``<data-dir>/higgs-<n>.zarr`` are made with ``benchmarks/higgs_like.py``
(seed 0) if missing.

Run (nothing else heavy at the same time)::

    python benchmarks/iteration_time.py --out benchmarks/results/iteration_time.json
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from threadpoolctl import threadpool_limits  # noqa: E402

from benchmarks.bench_util import (CpuWatch, MemorySampler, gb, provenance, reset_hwm, vm_hwm, write_results,  # noqa: E402
                                   worker_pids)
from pipeline.cluster import connect  # noqa: E402
from pipeline.training import train  # noqa: E402
from solvers import SOLVERS  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.loop import initialize, iterate  # noqa: E402
from solvers.losses import encode_labels  # noqa: E402
from solvers.tiling import chunk_bounds  # noqa: E402
from solvers.stats import moment_sums, moments_from_sums  # noqa: E402
from storage.data import open_data  # noqa: E402


class ThreadedRunner:
    """The in-memory comparison: state in memory, two chunks at a time, one BLAS thread each."""

    def __init__(self, solver, X, y_idx, chunk_rows, pool):
        self.solver = solver
        self.bounds = chunk_bounds(X.shape[0], chunk_rows)
        self.x = [X[a:b] for a, b in self.bounds]
        self.y = [y_idx[a:b] for a, b in self.bounds]
        self.state = [None] * len(self.bounds)
        self.pool = pool

    def _run(self, fn):
        # the outer limit makes the per-task limits nest safely: threadpoolctl limits are
        # process-wide, so a task exiting its limit must not restore 2 threads under the other.
        with threadpool_limits(1):
            parts = list(self.pool.map(fn, range(len(self.bounds))))
        total = 0.0
        for p in parts:  # fixed order: deterministic sums
            total = total + p
        return total

    def init(self, weights):
        def one(i):
            with threadpool_limits(1):
                self.state[i], sums = self.solver.init_chunk(self.x[i], self.y[i], self.bounds[i][0], weights)
            return sums
        return self._run(one)

    def grams(self, weights):
        def one(i):
            with threadpool_limits(1):
                return self.solver.grams_chunk(self.x[i], self.y[i], self.state[i], weights)
        return self._run(one)

    def step(self, iteration, params):
        def one(i):
            with threadpool_limits(1):
                self.state[i], sums = self.solver.step_chunk(self.x[i], self.y[i], self.state[i], params)
            return sums
        return self._run(one)


def data_store(data_dir: Path, n: int) -> Path:
    path = data_dir / f"higgs-{n}.zarr"
    if not path.exists():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "higgs_like.py"), "--n", str(n),
                        "--out", str(path), "--seed", "0"], check=True)
    return path


def run_inmemory(data_path: Path, config: TrainConfig, chunk_rows: int) -> dict:
    data = open_data(data_path)
    X = data.X[...]
    y = data.y[...]
    classes = np.unique(y)
    shift = X[0].astype(np.float64)
    sums = sum(moment_sums(X[a:b], shift) for a, b in chunk_bounds(len(X), data.chunk_rows))
    mean, scale = moments_from_sums(sums, shift)
    solver = SOLVERS[config.solver](config, X.shape[1], classes, mean, scale)
    out = {"iterations": []}
    with ThreadPoolExecutor(2) as pool, CpuWatch() as cpu:
        runner = ThreadedRunner(solver, X, encode_labels(y, classes), chunk_rows, pool)
        t0 = time.perf_counter()
        state = initialize(solver, runner)
        out["init_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for state, metrics in iterate(solver, runner, state, config.iterations):
            t = time.perf_counter() - t0
            out["iterations"].append({"iteration": state.iteration, "seconds": t,
                                      "train_accuracy": metrics["train_accuracy"]})
            print(f"  inmemory iter {state.iteration}: {t:.2f} s acc {metrics['train_accuracy']:.4f}", flush=True)
            t0 = time.perf_counter()
    out["other_cpu_seconds"] = cpu.other
    out["wall_seconds"] = cpu.wall
    del runner, X, y
    return out


def run_pipeline(data_path: Path, run_path: Path, config: TrainConfig, chunk_rows: int,
                 memory_limit: str) -> dict:
    out = {"iterations": []}
    lines = []
    with connect("local", n_workers=2, threads_per_worker=1, memory_limit=memory_limit,
                 dashboard_address=":0") as client:
        pids = worker_pids(client)
        reset_hwm(pids)
        with MemorySampler(pids) as mem, CpuWatch() as cpu:
            t_start = time.perf_counter()
            result = train(client, store=str(run_path), data=str(data_path), config=config,
                           chunk_rows=chunk_rows, overwrite=True, report=lines.append)
            out["total_seconds"] = time.perf_counter() - t_start
        hwm = vm_hwm(pids)
    init_line = next(line for line in lines if line.startswith("initialised"))
    out["init_seconds"] = float(init_line.split(" in ")[1].split()[0])
    for h in result.history:
        out["iterations"].append({"iteration": h["iteration"], "seconds": h["seconds"],
                                  "train_accuracy": h["train_accuracy"]})
        print(f"  pipeline iter {h['iteration']}: {h['seconds']:.2f} s acc {h['train_accuracy']:.4f}", flush=True)
    out["worker_peak_rss_bytes_vmhwm"] = list(hwm.values())
    out["worker_peak_rss_bytes_sampled"] = list(mem.peak.values())
    out["other_cpu_seconds"] = cpu.other
    out["wall_seconds"] = cpu.wall
    out["report"] = lines
    shutil.rmtree(run_path, ignore_errors=True)
    return out


def median_after_first(run: dict) -> float:
    return statistics.median(it["seconds"] for it in run["iterations"][1:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="/work/bench")
    p.add_argument("--run-dir", default="/work/bench", help="where the temporary run stores go")
    p.add_argument("--ratio-n", type=int, default=2_000_000)
    p.add_argument("--iterations", type=int, default=5, help="iterations per ratio run (median over 2..N)")
    p.add_argument("--rounds", type=int, default=1, help="repeat (in-memory, pipeline) this many times")
    p.add_argument("--memory-ns", default="500000,1000000,2000000,4000000")
    p.add_argument("--memory-iterations", type=int, default=3)
    p.add_argument("--chunk-rows", type=int, default=131072)
    p.add_argument("--hidden", type=int, default=300)
    p.add_argument("--memory-limit", default="4GB", help="per worker")
    p.add_argument("--skip-ratio", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "iteration_time.json"))
    args = p.parse_args(argv)

    data_dir, run_dir = Path(args.data_dir), Path(args.run_dir)
    result = {"provenance": provenance(),
              "settings": {"hidden": args.hidden, "chunk_rows": args.chunk_rows, "workers": 2,
                           "threads_per_worker": 1, "memory_limit": args.memory_limit,
                           "config": TrainConfig(hidden=(args.hidden,), solver="gauss-newton").to_dict()}}
    if not args.skip_ratio:
        # Gauss-Newton on both sides: the in-memory loop runs per-chunk kernels (no shards), and --solver auto
        # would resolve to the hand-over on the pipeline's 2 worker processes at these sizes
        config = TrainConfig(hidden=(args.hidden,), iterations=args.iterations, solver="gauss-newton")
        path = data_store(data_dir, args.ratio_n)
        rounds = []
        for r in range(args.rounds):
            print(f"round {r + 1}: in-memory loop, n={args.ratio_n}", flush=True)
            a = run_inmemory(path, config, args.chunk_rows)
            print(f"round {r + 1}: pipeline, n={args.ratio_n}", flush=True)
            b = run_pipeline(path, run_dir / "iteration-time-run.zarr", config, args.chunk_rows, args.memory_limit)
            ratio = median_after_first(b) / median_after_first(a)
            print(f"round {r + 1}: ratio pipeline/in-memory = {ratio:.3f}", flush=True)
            rounds.append({"inmemory": a, "pipeline": b, "inmemory_median_s": median_after_first(a),
                           "pipeline_median_s": median_after_first(b), "ratio": ratio})
        result["ratio"] = {"n_samples": args.ratio_n, "data": str(path), "rounds": rounds}
    if not args.skip_memory:
        config = TrainConfig(hidden=(args.hidden,), iterations=args.memory_iterations, solver="gauss-newton")  # its state
        mem = []
        for n in [int(s) for s in args.memory_ns.split(",")]:
            path = data_store(data_dir, n)
            print(f"memory: pipeline, n={n}", flush=True)
            b = run_pipeline(path, run_dir / "iteration-time-run.zarr", config, args.chunk_rows, args.memory_limit)
            mem.append({"n_samples": n, "data": str(path),
                        "state_bytes_per_slot": n * (args.hidden + 2) * 4,
                        "worker_peak_rss_bytes_vmhwm": b["worker_peak_rss_bytes_vmhwm"],
                        "worker_peak_rss_bytes_sampled": b["worker_peak_rss_bytes_sampled"],
                        "init_seconds": b["init_seconds"],
                        "median_iteration_seconds": median_after_first(b),
                        "iterations": b["iterations"], "other_cpu_seconds": b["other_cpu_seconds"]})
            print(f"  peak worker RSS (VmHWM) {[gb(v) for v in b['worker_peak_rss_bytes_vmhwm']]} GB", flush=True)
        result["memory"] = mem

    write_results(args.out, result, markdown)
    return 0


def markdown(r: dict) -> str:
    pv = r["provenance"]
    s = r["settings"]
    lines = ["# Iteration time: Dask pipeline vs in-memory NumPy loop; worker memory vs n", "",
             f"- Command: `{pv['command']}`", f"- Date: {pv['date']} on {pv['host']} ({pv['cpus']} CPUs, "
             f"{pv['ram_bytes'] / 2**30:.1f} GiB RAM)",
             f"- Network 28-{s['hidden']}-1 (ReLU, hinge, paper ADMM, defaults of TrainConfig), "
             f"{s['chunk_rows']} rows per chunk; pipeline: LocalCluster, 2 worker processes x 1 thread, "
             f"memory limit {s['memory_limit']} per worker; in-memory: ThreadPoolExecutor(2), "
             "threadpool_limits(1), same `step_chunk` kernels, state in NumPy.",
             "- Iteration seconds exclude init; medians are over iterations 2..N. `other CPU s` = CPU "
             "seconds used by processes outside this benchmark during the run (disturbance check).", ""]
    if "ratio" in r:
        ra = r["ratio"]
        lines += [f"## Ratio (n = {ra['n_samples']:,}; data and state fit in RAM / page cache)", "",
                  "| round | in-memory s/iter (median) | pipeline s/iter (median) | ratio | in-memory per-iter | "
                  "pipeline per-iter | other CPU s (in-mem / pipeline) |",
                  "|---|---|---|---|---|---|---|"]
        for i, rd in enumerate(ra["rounds"], 1):
            a, b = rd["inmemory"], rd["pipeline"]
            lines.append(f"| {i} | {rd['inmemory_median_s']:.2f} | {rd['pipeline_median_s']:.2f} | "
                         f"**{rd['ratio']:.3f}** | {', '.join('%.2f' % it['seconds'] for it in a['iterations'])} | "
                         f"{', '.join('%.2f' % it['seconds'] for it in b['iterations'])} | "
                         f"{a['other_cpu_seconds']:.0f} / {b['other_cpu_seconds']:.0f} |")
        rd = ra["rounds"][-1]
        lines += ["", f"Init: in-memory {rd['inmemory']['init_seconds']:.2f} s, pipeline "
                  f"{rd['pipeline']['init_seconds']:.2f} s. Train accuracy per iteration (in-memory / pipeline): "
                  + "; ".join(f"{a['train_accuracy']:.4f}/{b['train_accuracy']:.4f}"
                              for a, b in zip(rd['inmemory']['iterations'], rd['pipeline']['iterations'])), ""]
    if "memory" in r:
        lines += ["## Worker peak memory as n doubles", "",
                  "| n | state per slot | peak RSS per worker (VmHWM) | peak RSS (0.1 s samples) | init s | "
                  "median s/iter | other CPU s |", "|---|---|---|---|---|---|---|"]
        for m in r["memory"]:
            lines.append(f"| {m['n_samples']:,} | {gb(m['state_bytes_per_slot'])} GB | "
                         f"{', '.join(str(gb(v)) for v in m['worker_peak_rss_bytes_vmhwm'])} GB | "
                         f"{', '.join(str(gb(v)) for v in m['worker_peak_rss_bytes_sampled'])} GB | "
                         f"{m['init_seconds']:.2f} | {m['median_iteration_seconds']:.2f} | {m['other_cpu_seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
