"""A/B of two checkouts end to end: ``pipeline.ingest`` + ``pipeline.train`` (defaults) of each, alternating, as processes.

For a pure speed change: both checkouts must print the same last iteration line, and
the wall and CPU seconds show what the change saved at the same load. Each checkout's
modules are compiled to bytecode first (as ``benchmarks/end_to_end.py`` does).

Run (a checkout of the base commit, e.g. ``git archive BASE | tar -x -C /tmp/base``)::

    flock /work/bench.lock python benchmarks/ab_end_to_end.py --base /tmp/base --csv data.csv --rounds 4
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the base checkout (a directory holding pipeline/, solvers/, storage/)")
    p.add_argument("--new", default=str(ROOT), help="the new checkout (default: this one)")
    p.add_argument("--csv", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--test-fraction", type=float, default=0.2)
    args = p.parse_args(argv)
    trees = {"base": str(Path(args.base).resolve()), "new": str(Path(args.new).resolve())}
    compile_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for root in trees.values():
        subprocess.run([sys.executable, "-m", "compileall", "-q", *(f"{root}/{d}" for d in ("pipeline", "solvers", "storage"))],
                       env=compile_env, check=True, capture_output=True)
    csv = str(Path(args.csv).resolve())
    res = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="ab-") as tmp:
        for rnd in range(args.rounds):
            for name in (("base", "new") if rnd % 2 == 0 else ("new", "base")):
                root, env = trees[name], {**os.environ, "PYTHONPATH": trees[name]}
                data, run = f"{tmp}/{name}_d.zarr", f"{tmp}/{name}_r.zarr"
                out = []
                for cmd in ([sys.executable, "-m", "pipeline.ingest", csv, "--out", data, "--test-fraction",
                             str(args.test_fraction), "--overwrite"],
                            [sys.executable, "-m", "pipeline.train", "--data", data, "--store", run, "--overwrite",
                             "--no-progress"]):
                    t, c = time.perf_counter(), _children_cpu()
                    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=root)
                    if proc.returncode != 0:
                        raise RuntimeError(f"{name}: {' '.join(cmd)} failed: {proc.stderr[-2000:]}")
                    out.append((time.perf_counter() - t, _children_cpu() - c))
                last = [line for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()][-1].strip()
                res[name].append(out)
                print(f"round {rnd} {name}: ingest {out[0][0]:.2f} s (CPU {out[0][1]:.2f}), train {out[1][0]:.2f} s "
                      f"(CPU {out[1][1]:.2f}), total {out[0][0] + out[1][0]:.2f}; last line: {last}", flush=True)
    for name, rows in res.items():
        print(f"{name}: median total wall {statistics.median(a[0] + b[0] for a, b in rows):.2f} s, CPU "
              f"{statistics.median(a[1] + b[1] for a, b in rows):.2f} s, ingest {statistics.median(a[0] for a, _ in rows):.2f} s, "
              f"train {statistics.median(b[0] for _, b in rows):.2f} s")
    print("load average", " ".join(f"{v:.1f}" for v in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
