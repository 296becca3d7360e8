"""Per-test seconds of a pytest run as it goes, and a before/after table of two such runs (ci_s13.md).

As a pytest plugin it appends each test phase's duration to ``$PYTEST_TIMES_OUT`` as the phase ends (node id, phase,
seconds, outcome, time): a loaded suite can be read before it finishes, which ``--durations`` cannot::

    PYTEST_TIMES_OUT=/tmp/after.tsv PYTHONPATH=$PWD python -m pytest -p benchmarks.pytest_times -p no:cacheprovider -q FILES

Run as a script it prints, for two such files, the seconds per test file (setup + call + teardown summed) and the 30
slowest tests on either side (``-``: the test is not in that run); the FILES arguments keep only those files::

    python benchmarks/pytest_times.py BEFORE.tsv AFTER.tsv [FILES...]
"""
from __future__ import annotations

import os
import sys
import time
from collections import defaultdict


def pytest_runtest_logreport(report):
    """Append the phase's node id, phase, seconds, outcome and end time to ``$PYTEST_TIMES_OUT`` (under pytest-xdist
    once, by the controller: the workers, which report each phase to it, write nothing)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    with open(os.environ["PYTEST_TIMES_OUT"], "a") as f:
        f.write(f"{report.nodeid}\t{report.when}\t{report.duration:.3f}\t{report.outcome}\t{time.time():.1f}\n")


def seconds(path) -> dict:
    """Return {node id: seconds summed over its phases} of a file the plugin wrote."""
    out = defaultdict(float)
    for line in open(path):
        node, _, sec, _, _ = line.rstrip("\n").split("\t")
        out[node] += float(sec)
    return out


def table(before: dict, after: dict, files=None, slowest: int = 30) -> str:
    """Return the per-file and slowest-tests markdown tables of two runs' :func:`seconds`."""
    files = files or sorted({k.split("::")[0] for k in (*before, *after)})
    lines = ["| file | tests before | s before | tests after | s after | after − before |", "|---|---|---|---|---|---|"]
    total_b = total_a = 0.0
    for f in files:
        b = [v for k, v in before.items() if k.startswith(f + "::")]
        a = [v for k, v in after.items() if k.startswith(f + "::")]
        total_b, total_a = total_b + sum(b), total_a + sum(a)
        lines.append(f"| {f} | {len(b)} | {sum(b):.1f} | {len(a)} | {sum(a):.1f} | {sum(a) - sum(b):+.1f} |")
    lines += [f"| **total** | | **{total_b:.1f}** | | **{total_a:.1f}** | **{total_a - total_b:+.1f}** |", "",
              "| test | s before | s after |", "|---|---|---|"]
    keys = sorted(set(before) | set(after), key=lambda k: -max(before.get(k, 0), after.get(k, 0)))
    for k in keys[:slowest]:
        if any(k.startswith(f + "::") for f in files):
            b, a = before.get(k), after.get(k)
            lines.append(f"| {k} | {'-' if b is None else f'{b:.1f}'} | {'-' if a is None else f'{a:.1f}'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(seconds(sys.argv[1]), seconds(sys.argv[2]), sys.argv[3:]))
