"""Wall-clock and CPU of a rotate iteration's passes on one-chunk windows: each window cut into 2 tasks or not.

Convolutional Gauss-Newton walks one-chunk windows (the ``rotate`` schedule): a
pass over one chunk was one task, so one of the two worker threads idled
through it. :func:`solvers.loop.chunk_parts` cuts such a chunk's training rows
into 2 tasks of whole tiles. This script runs the passes of a rotate iteration
(pass A: the trial's forward pass over a window's training rows and every
chunk's held-out rows; pass B: the curvature pass over the next window, which
also scores the held-out rows) on a local cluster of 2 worker threads, with
and without the cut, alternately, at the weights of initialisation, and
reports each pass's wall-clock and the process's CPU seconds (its worker
threads included). The sums are the same either way (tests/test_conv_gauss_newton.py).

Run (under the benchmark lock, un-niced)::

    python benchmarks/conv_parts.py --data /tmp/conv-bench/cache/compare-mnist10-n60000-train.zarr
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import CpuWatch, provenance, write_results  # noqa: E402
from solvers import loop  # noqa: E402

LAYERS = "conv:8x5x5,pool:2,conv:16x5x5,pool:2,dense:100"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a training data store (compare.py's MNIST 10-class 60k)")
    p.add_argument("--chunk-rows", type=int, default=8192)
    p.add_argument("--layers", default=LAYERS)
    p.add_argument("--windows", type=int, default=4, help="windows (iterations) per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "conv_parts_s7.json"))
    args = p.parse_args(argv)

    from distributed import Client, LocalCluster

    from pipeline.passes import DaskRunner, bounds, data_moments
    from solvers import make_solver
    from solvers.config import TrainConfig
    from solvers.driver import model_from_moments
    from solvers.loop import run_pass_held_out
    from solvers.validation import make_split
    from storage.data import open_data

    config = TrainConfig(layers=args.layers, solver="gauss-newton")
    rows = {True: [], False: []}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client, CpuWatch() as watch:
        data = open_data(args.data)
        model = model_from_moments(config, data.n_features, *data_moments(client, data, False))
        solver = make_solver(config, data.n_features, **model)
        chunks = bounds(data.n_samples, args.chunk_rows)
        runner = DaskRunner(client, solver, data.path.resolve(), "/nonexistent-run-store", chunks,
                            split=make_split(config.validation_fraction, config.seed, data.n_samples))
        state = loop.initialize(solver, runner)
        c = state.carry
        trial = [c[f"T{l}"] for l in range(1, solver.L)]
        alpha = float(c["alpha"])
        for repeat in range(args.repeats):
            for cut in (True, False) if repeat % 2 == 0 else (False, True):
                loop.PARALLEL_TASKS = 2 if cut else 1
                for w in range(1, args.windows + 1):
                    t0, c0 = time.perf_counter(), time.process_time()
                    run_pass_held_out(runner, solver.forward_layout(False), "forward_chunk",
                                      solver._forward_params(trial, False, c), w, chunks=[w % len(chunks)])
                    t1, c1 = time.perf_counter(), time.process_time()
                    solver._curvature_pass(runner, state.weights, float(c["error"]), w,
                                           {"chunks": [(w + 1) % len(chunks)]}, alpha, new_sample=True)
                    t2, c2 = time.perf_counter(), time.process_time()
                    rows[cut].append({"repeat": repeat, "window": w, "pass_a_wall": t1 - t0, "pass_a_cpu": c1 - c0,
                                      "pass_b_wall": t2 - t1, "pass_b_cpu": c2 - c1})
        loop.PARALLEL_TASKS = 2
    summary = {("cut" if cut else "one task"): {k: float(np.mean([r[k] for r in rs])) for k in
                                                 ("pass_a_wall", "pass_a_cpu", "pass_b_wall", "pass_b_cpu")}
               for cut, rs in rows.items()}
    result = {"provenance": provenance(), "data": args.data, "chunk_rows": args.chunk_rows, "layers": args.layers,
              "windows": args.windows, "repeats": args.repeats, "summary": summary,
              "other_cpu_seconds": watch.other, "rows": {("cut" if k else "one task"): v for k, v in rows.items()}}
    write_results(args.out, result, markdown)
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    lines = ["# A rotate iteration's passes with each one-chunk window cut into 2 tasks, or not", "",
             f"Command: `{r['provenance']['command']}` ({r['provenance']['date']}); data `{r['data']}` in chunks of "
             f"{r['chunk_rows']} rows, `--layers {r['layers']}`, 2 worker threads in this process; {r['windows']} "
             f"windows × {r['repeats']} repeats per mode, alternating; other processes used "
             f"{r['other_cpu_seconds']:.0f} CPU s meanwhile. Means per pass; CPU = this process (worker threads included).",
             "", "| mode | pass A wall s | pass A CPU s | pass B wall s | pass B CPU s | A + B wall s |",
             "|---|---|---|---|---|---|"]
    for mode, s in r["summary"].items():
        lines.append(f"| {mode} | {s['pass_a_wall']:.3f} | {s['pass_a_cpu']:.3f} | {s['pass_b_wall']:.3f} | "
                     f"{s['pass_b_cpu']:.3f} | {s['pass_a_wall'] + s['pass_b_wall']:.3f} |")
    return "\n".join(lines + [""])


if __name__ == "__main__":
    sys.exit(main())
