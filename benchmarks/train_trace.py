"""Where a small ``pipeline.train`` run's wall time goes: named functions timed in the main thread and the workers.

Runs ``pipeline.train`` in this process (an in-process cluster's worker threads are in it too) with wrappers that
record the wall interval of: the Gauss-Newton client steps (``_advance``, ``_with_trial``, ``output_layer``,
``_current_objective``), the passes (``DaskRunner.run``) and their chunk tasks, the run store's commits; then prints
per-iteration medians (iteration 1, the hidden-α probe's ``_probe``, apart) and each pass's latency from
``run`` to its first chunk task and from its last to ``run``'s return. Writes the raw intervals as JSON (``--trace``).

Run::

    python benchmarks/train_trace.py --trace /tmp/t.json -- --data D.zarr --store R.zarr --overwrite --no-progress
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import statistics as st
import sys
import threading
import time
from pathlib import Path

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
EV: list = []  # (name, thread, start, end)

WRAPPED = {
    "solvers.gauss_newton": ["GaussNewtonSolver._with_trial", "GaussNewtonSolver.output_layer",
                             "GaussNewtonSolver._current_objective", "GaussNewtonSolver._advance",
                             "GaussNewtonSolver._initialize"],
    "pipeline.passes": ["DaskRunner.run", "chunk_task"],
    "storage.runstore": ["RunStore.commit", "RunStore.create"],
    "solvers.hidden_race": ["_probe"],
}


def wrap(module: str, qualname: str) -> None:
    owner = importlib.import_module(module)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)

    @functools.wraps(original)  # keeps the function's attributes (GaussNewtonSolver._advance.evaluate_then_finish)
    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            EV.append((qualname, threading.current_thread().name, t, time.perf_counter()))
    setattr(owner, name, timed)


def summary(trace: dict) -> list[str]:
    ev, t0 = trace["ev"], trace["T0"]
    main = [e for e in ev if e[1] == "MainThread"]
    ms = lambda e: 1000 * (e[3] - e[2])  # noqa: E731
    probe = [e for e in main if e[0] == "_probe"]
    nested = lambda e, outer: any(o[2] <= e[2] and e[3] <= o[3] for o in outer)  # noqa: E731
    adv = sorted((e for e in main if e[0] == "GaussNewtonSolver._advance" and not nested(e, probe)), key=lambda e: e[2])
    if not probe:  # a trace written before _probe was wrapped: its first two _advance calls were the probe's
        adv = adv[2:]
    parts = {"iteration (_advance)": [], "passes (DaskRunner.run)": [], "trial (_with_trial)": [],
             "output layer": [], "current objective": [], "between iterations": []}
    names = {"passes (DaskRunner.run)": "DaskRunner.run", "trial (_with_trial)": "GaussNewtonSolver._with_trial",
             "output layer": "GaussNewtonSolver.output_layer", "current objective": "GaussNewtonSolver._current_objective"}
    for i, a in enumerate(adv):
        inside = [e for e in main if e[2] >= a[2] and e[3] <= a[3]]
        parts["iteration (_advance)"].append(ms(a))
        for key, name in names.items():
            parts[key].append(sum(ms(e) for e in inside if e[0] == name))
        if i + 1 < len(adv):
            parts["between iterations"].append(1000 * (adv[i + 1][2] - a[3]))
    lines = [f"process from the script's start {trace['end'] - t0:.2f} s"]
    for name in ("RunStore.create", "GaussNewtonSolver._initialize"):
        lines += [f"{name}: at {e[2] - t0:.2f} s, {ms(e):.0f} ms" for e in main if e[0] == name]
    for e in probe:
        runs = [r for r in main if r[0] == "DaskRunner.run" and nested(r, [e])]
        lines.append(f"iteration 1 (hidden_race._probe): {ms(e):.0f} ms, {len(runs)} passes "
                     f"({sum(ms(r) for r in runs):.0f} ms)")
    lines += [f"{k:26s} median {st.median(v):6.1f} ms (n={len(v)})" for k, v in parts.items() if v]
    tasks = [e for e in ev if e[0] == "chunk_task"]
    start, end, busiest = [], [], []
    for r in (e for e in main if e[0] == "DaskRunner.run"):
        ts = [t for t in tasks if t[2] >= r[2] and t[3] <= r[3]]
        if ts:
            start.append(1000 * (min(t[2] for t in ts) - r[2]))
            end.append(1000 * (r[3] - max(t[3] for t in ts)))
            per = {}
            for t in ts:
                per[t[1]] = per.get(t[1], 0.0) + ms(t)
            busiest.append(max(per.values()) / ms(r))
    if start:
        lines.append(f"pass: run to first chunk task median {st.median(start):.1f} ms, last task to return "
                     f"{st.median(end):.1f} ms, busiest worker thread {100 * st.median(busiest):.0f} % of the pass")
    commits = [ms(e) for e in ev if e[0] == "RunStore.commit"]
    if commits:
        lines.append(f"commits (background thread) median {st.median(commits):.1f} ms wall")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trace", default=None, help="write the intervals here (JSON)")
    p.add_argument("--summarise", default=None, help="only print the summary of a trace written before")
    p.add_argument("train_args", nargs=argparse.REMAINDER)
    args = p.parse_args()
    if args.summarise:
        print("\n".join(summary(json.loads(Path(args.summarise).read_text()))))
        return 0
    for module, names in WRAPPED.items():
        for name in names:
            wrap(module, name)
    import pipeline.train as train

    try:
        train.main([a for a in args.train_args if a != "--"])
    except SystemExit:
        pass
    trace = {"T0": T0, "end": time.perf_counter(), "ev": EV}
    if args.trace:
        Path(args.trace).write_text(json.dumps(trace))
    print("\n".join(summary(trace)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
