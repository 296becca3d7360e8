"""CPU seconds to a target accuracy of a ``python -m pipeline.train`` run, its Dask workers included.

Runs the command given after ``--`` and reads its iteration table as it is
printed; at each row it records the wall seconds since the command started
and the CPU seconds (user + system) used so far by the command's process and
all its descendants (the Dask worker processes), sampled with psutil. On a
machine shared with other work, CPU seconds are a fairer measure than wall
time. The CPU includes everything the command does: start-up, statistics,
the held-out and ``--test-data`` scoring of every iteration. Ctrl-C (or
SIGTERM) is passed on to the command, which commits its iteration and stops;
the rows recorded so far are written. Writes ``--out`` (JSON) and ``.md``.

Run::

    python benchmarks/cpu_to_target.py --out benchmarks/results/x.json --target 0.985 -- \\
        python -m pipeline.train --data d.zarr --test-data t.zarr --layers ...
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import provenance, write_results  # noqa: E402

ROW = re.compile(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+|-)\s+([\d.]+|-)\s+([\d.]+|-)\s")


def tree_cpu(proc: psutil.Process) -> float:
    """Return the user + system CPU seconds of ``proc`` and its live descendants."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def number(text: str):
    return None if text == "-" else float(text)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("error: give the command to run after --", file=sys.stderr)
        return 2
    cut = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="results JSON (and .md next to it)")
    p.add_argument("--target", type=float, default=0.985, help="test accuracy to reach")
    p.add_argument("--note", default="", help="a line on how the machine was used, for the results file")
    args = p.parse_args(argv[:cut])
    command = argv[cut + 1:]
    t0 = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    proc = psutil.Process(child.pid)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: child.send_signal(signal.SIGINT))
    rows, init = [], None
    load0 = os.getloadavg()
    for line in child.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        wall, cpu = time.perf_counter() - t0, tree_cpu(proc)
        m = ROW.match(line)
        if m:
            it, sec, train, test, valid = m.groups()
            rows.append({"iteration": int(it), "iteration_seconds": float(sec), "train_accuracy": number(train),
                         "test_accuracy": number(test), "valid_accuracy": number(valid),
                         "wall_seconds": wall, "cpu_seconds": cpu, "load": os.getloadavg()[0]})
        elif line.startswith("initialised"):
            init = {"wall_seconds": wall, "cpu_seconds": cpu}
    code = child.wait()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    hit = next((r for r in rows if r["test_accuracy"] is not None and r["test_accuracy"] >= args.target), None)
    result = {"provenance": provenance(), "command": command, "exit_code": code, "target": args.target,
              "note": args.note, "initialised": init, "iterations": rows, "reached": hit,
              "total_wall_seconds": time.perf_counter() - t0,
              "total_cpu_seconds_reaped": usage.ru_utime + usage.ru_stime,
              "load_start": load0, "load_end": os.getloadavg()}
    write_results(args.out, result, markdown)
    print(markdown(result))
    return 0 if code in (0, 130) else code


def markdown(r: dict) -> str:
    hit = r["reached"]
    lines = [f"# CPU seconds to {r['target']} test accuracy: `pipeline.train`", "",
             f"Command: `{r['provenance']['command']}` ({r['provenance']['date']}, {r['provenance']['cpus']} CPUs)", "",
             "Run: `" + " ".join(r["command"]) + "`", "",
             "CPU = user + system seconds of the command and its Dask worker processes (psutil, sampled when each "
             "iteration's row is printed); it includes start-up, statistics, initialisation and the scoring of the "
             "held-out and test rows every iteration.", ""]
    if r.get("note"):
        lines += [r["note"], ""]
    lines += [f"Load average at start {r['load_start'][0]:.1f}, at end {r['load_end'][0]:.1f}; "
              f"exit code {r['exit_code']}; total wall {r['total_wall_seconds']:.0f} s, CPU of the reaped "
              f"processes {r['total_cpu_seconds_reaped']:.0f} s.", ""]
    if r["initialised"]:
        lines += [f"Initialised at {r['initialised']['wall_seconds']:.0f} s wall, "
                  f"{r['initialised']['cpu_seconds']:.0f} CPU s.", ""]
    lines += [f"**Reached {r['target']}:** " + (f"iteration {hit['iteration']}, {hit['cpu_seconds']:.0f} CPU s, "
                                                f"{hit['wall_seconds']:.0f} s wall" if hit else "not reached"), "",
              "| iteration | wall s | CPU s | train acc | test acc | valid acc | load |", "|---|---|---|---|---|---|---|"]
    for x in r["iterations"]:
        cells = [f"{x[k]:.4f}" if x[k] is not None else "-" for k in ("train_accuracy", "test_accuracy",
                                                                      "valid_accuracy")]
        lines.append(f"| {x['iteration']} | {x['wall_seconds']:.0f} | {x['cpu_seconds']:.0f} | " + " | ".join(cells)
                     + f" | {x['load']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
