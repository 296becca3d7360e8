"""ADMM / dlADMM pipeline against in memory (issue 21, point 6): seconds per iteration and where the pipeline's go.

For each network and solver: the solver's iterations in memory (2 threads,
:func:`benchmarks.kernel_efficiency.in_memory_iterations`) and through
``pipeline.training.train`` on one in-process worker of 2 threads (as
``benchmarks/kernel_efficiency.py`` runs them), the same settings. Inside the
pipeline the chunk tasks' time is summed per iteration, over both threads, by
what it did: reading the per-sample state, writing it, reading the data, and
the kernel (``pipeline.passes``' ``_read_state``, ``_write_state``,
``_read_xy`` and ``chunk_kernel``, wrapped). It runs whatever checkout is on
``PYTHONPATH`` (those names exist since session 4), so the same script
compares two versions of the code. The run store's checkpoint checksums are
recorded (a change must not move them).

Run (under the benchmark lock)::

    flock /work/bench.lock python benchmarks/admm_pipeline.py --out benchmarks/results/admm_pipeline_s8.json
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import CpuWatch, provenance, write_results  # noqa: E402
from benchmarks.kernel_efficiency import (chunk_rows, higgs_rows, in_memory_iterations, median_after_first,  # noqa: E402
                                          mnist_rows, model_of, write_store)

PARTS = ("_read_state", "_write_state", "_read_xy", "chunk_kernel")
_spent: dict = collections.defaultdict(float)
_lock = threading.Lock()


def _timed(name, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            with _lock:
                _spent[name] += time.perf_counter() - t0
    return wrapper


def instrument() -> None:
    """Wrap the chunk task's parts in ``pipeline.passes`` so their seconds are summed in ``_spent``."""
    import pipeline.passes as passes

    for name in PARTS:
        setattr(passes, name, _timed(name, getattr(passes, name)))


def pipeline_run(config, data: Path, run: Path, n: int) -> dict:
    """Return the pipeline's seconds per iteration, the parts' seconds per iteration and the checkpoint checksums."""
    from pipeline.cluster import connect
    from pipeline.training import train

    marks = []

    def report(line):
        if line.split()[:1] and line.split()[0].isdigit():
            with _lock:
                marks.append(dict(_spent))

    with connect("local", n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as client, \
            CpuWatch() as cpu:
        with _lock:
            marks.append(dict(_spent))
        res = train(client, store=str(run), data=str(data), config=config, chunk_rows=chunk_rows(n), overwrite=True,
                    report=report)
    manifest = json.loads((run / "manifest.json").read_text())
    shutil.rmtree(run, ignore_errors=True)
    parts = [{k: after.get(k, 0.0) - before.get(k, 0.0) for k in PARTS} for before, after in zip(marks, marks[1:])]
    return {"iterations": [{"seconds": h["seconds"]} for h in res.history], "parts": parts,
            "other_cpu_seconds": cpu.other,
            "checksums": hashlib.sha256(json.dumps(manifest["checksums"], sort_keys=True).encode()).hexdigest()}


def networks(names, higgs_n):
    if "28-300-1" in names:
        yield "28-300-1", (28, 300, 1), higgs_rows(higgs_n)
    if "784-300-10" in names:
        yield "784-300-10", (784, 300, 10), mnist_rows()


def markdown(r: dict) -> str:
    pv = r["provenance"]
    L = ["# ADMM / dlADMM pipeline / in memory: seconds per iteration and the chunk tasks' parts", "",
         f"- Command: `{pv['command']}`",
         f"- Code: `{r['code']}` (git {r.get('commit', '?')})",
         f"- Date: {pv['date']} on {pv['host']} ({pv['cpus']} CPUs)",
         f"- Load average before / after: {r['load_before']:.2f} / {r.get('load_after', float('nan')):.2f}",
         "- Medians over the iterations after the first; parts are summed over the chunk tasks of an iteration "
         "(both threads), so they add up to about twice its wall time.", "",
         "| network, solver | in memory s | pipeline s | ratio | state read s | state write s | data read s | kernel s | "
         "other CPU s (in memory / pipeline) | checkpoint sha256 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in r["runs"].items():
        m, p = e["in_memory"], e["pipeline"]
        med = {k: statistics.median(part[k] for part in (p["parts"][1:] or p["parts"])) for k in PARTS}
        L.append(f"| {name} | {median_after_first(m['iterations']):.2f} | {median_after_first(p['iterations']):.2f} | "
                 f"**{e['ratio']:.2f}** | {med['_read_state']:.2f} | {med['_write_state']:.2f} | {med['_read_xy']:.2f} | "
                 f"{med['chunk_kernel']:.2f} | {m['other_cpu_seconds']:.1f} / {p['other_cpu_seconds']:.1f} | "
                 f"`{p['checksums'][:16]}` |")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    import subprocess

    from solvers.config import TrainConfig

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--networks", default="28-300-1,784-300-10")
    p.add_argument("--solvers", nargs="+", default=["admm"])
    p.add_argument("--higgs-n", type=int, default=262_144)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--tmp", default="/tmp/admm_pipeline")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "admm_pipeline.json"))
    args = p.parse_args(argv)
    instrument()
    code = os.environ.get("PYTHONPATH", str(ROOT)).split(os.pathsep)[0]
    try:
        commit = subprocess.run(["git", "-C", code, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    result = {"provenance": provenance(), "settings": vars(args), "code": code, "commit": commit,
              "load_before": os.getloadavg()[0], "runs": {}}
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    for name, widths, (X, y) in networks(args.networks, args.higgs_n):
        data = write_store(tmp / f"{name}.zarr", X, y)
        for solver in args.solvers:
            print(f"{name} {solver} ...", flush=True)
            config = TrainConfig(solver=solver, hidden=tuple(widths[1:-1]), sample_schedule="full",
                                 validation_fraction=0.0, iterations=args.iterations)
            mem = in_memory_iterations(config, X, y, model_of(X, y), 2, args.iterations)
            pipe = pipeline_run(config, data, tmp / "run.zarr", X.shape[0])
            result["runs"][f"{name} {solver}"] = {
                "in_memory": mem, "pipeline": pipe,
                "ratio": median_after_first(pipe["iterations"]) / median_after_first(mem["iterations"])}
            write_results(args.out, result, markdown)
        shutil.rmtree(data, ignore_errors=True)
    result["load_after"] = os.getloadavg()[0]
    write_results(args.out, result, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
