"""Command to first iteration (issue 21, point 5): wall seconds from starting ``python -m pipeline.train`` to its iteration-1 line.

Each round starts a fresh interpreter running ``python -m pipeline.train
--iterations 1 ARGS`` (default ARGS: none, the bundled digits demo with the
defaults) and timestamps every line it prints (stdout and stderr), so the
seconds to the demo data, the cluster (its dashboard line), the run store,
the initialisation and iteration 1 are read off one run. The process's CPU
seconds (user + sys, whole run) and other processes' CPU seconds
(bench_util.CpuWatch) are recorded too. ``--importtime`` adds one run under
``python -X importtime`` and lists the slowest top-level imports.

Run (under the benchmark lock, un-niced)::

    flock /work/bench.lock python benchmarks/fast_start.py --rounds 5 --out benchmarks/results/fast_start.json
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import CpuWatch, provenance, write_results  # noqa: E402

MARKS = {"data": re.compile(r"^no --data given: training the bundled demo"),
         "cluster": re.compile(r"^Dask dashboard|^Dask: no dashboard|^cluster"),
         "run store": re.compile(r"^run store "), "initialised": re.compile(r"^initialised"),
         "iteration 1": re.compile(r"^\s+1\s")}


def one_run(args_: list[str]) -> dict:
    """Run the command once; return the seconds at which each mark's first line appeared, and CPU seconds."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "pipeline.train", "--iterations", "1", *args_]
    with tempfile.TemporaryDirectory() as tmp, CpuWatch() as cpu:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        marks, lines = {}, []
        for line in proc.stdout:
            t = time.perf_counter() - t0
            lines.append(f"{t:6.2f} {line.rstrip()}")
            for name, pat in MARKS.items():
                if name not in marks and pat.search(line):
                    marks[name] = t
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    return {"command": " ".join(cmd[1:]), "marks": marks, "exit_wall_seconds": wall,
            "cpu_seconds": usage.ru_utime + usage.ru_stime, "status": status, "lines": lines,
            "other_cpu_seconds": cpu.other}


def import_times(args_: list[str], top: int = 12) -> list:
    """Return the ``top`` slowest imports (cumulative µs) of one run under ``python -X importtime``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        err = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline.train", "--iterations", "1", *args_],
                             cwd=tmp, env=env, capture_output=True, text=True).stderr
    rows = []
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(3)) <= 3:  # top-level and second-level imports
            rows.append((int(m.group(2)), m.group(4)))
    return sorted(rows, reverse=True)[:top]


def markdown(r: dict) -> str:
    pv = r["provenance"]
    L = ["# Fast start: command to first iteration", "", f"- Command: `{pv['command']}`",
         f"- Timed: `python {r['runs'][0]['command']}` (a fresh interpreter per round)",
         f"- Date: {pv['date']} on {pv['host']} ({pv['cpus']} CPUs); load average before / after: "
         f"{r['load_before']:.2f} / {r['load_after']:.2f}", "",
         "| round | " + " | ".join(f"{m} s" for m in MARKS) + " | whole run s | CPU s (whole run) | other CPU s |",
         "|---" * (len(MARKS) + 4) + "|"]
    for i, run in enumerate(r["runs"], 1):
        L.append(f"| {i} | " + " | ".join(f"{run['marks'][m]:.2f}" if m in run["marks"] else "-" for m in MARKS)
                 + f" | {run['exit_wall_seconds']:.2f} | {run['cpu_seconds']:.2f} | {run['other_cpu_seconds']:.1f} |")
    firsts = [run["marks"]["iteration 1"] for run in r["runs"] if "iteration 1" in run["marks"]]
    if firsts:
        L += ["", f"Median command to iteration 1: **{statistics.median(firsts):.2f} s** "
              f"(min {min(firsts):.2f}, max {max(firsts):.2f}; target < 1.5 s)."]
    if r.get("imports"):
        L += ["", "Slowest imports of one run (`-X importtime`, cumulative, top two levels):", ""]
        L += [f"- `{name}` {us / 1e6:.3f} s" for us, name in r["imports"]]
    L += ["", "Output of the last round (seconds since the start):", "", "```", *r["runs"][-1]["lines"], "```"]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--importtime", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fast_start.json"))
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="arguments after -- go to pipeline.train")
    args = p.parse_args(argv)
    train_args = [a for a in args.train_args if a != "--"]
    result = {"provenance": provenance(), "load_before": os.getloadavg()[0], "runs": []}
    for i in range(args.rounds):
        run = one_run(train_args)
        print(f"round {i + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in run["marks"].items())
              + f"; CPU {run['cpu_seconds']:.2f} s", flush=True)
        result["runs"].append(run)
    if args.importtime:
        result["imports"] = import_times(train_args)
    result["load_after"] = os.getloadavg()[0]
    write_results(args.out, result, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
