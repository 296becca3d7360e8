"""Where a Gauss-Newton pipeline run's seconds go, iteration by iteration.

Runs :func:`pipeline.training.train` on a local cluster (as ``compare.py``
does: ``--workers`` threads or processes, ``--local-mode``) on a data store
and times, per iteration (0: the initialisation), the passes by kernel (with
the rows they read), the held-out/test scoring (``evaluate``), the commits,
the client's solves and what is left (Dask graph building, the driver), and
the process's CPU seconds (with thread workers all of the work: a measure a
loaded machine disturbs less than wall time). Prints
one table and, with ``--out``, writes it as Markdown with the command.

Run::

    python benchmarks/gn_profile.py --data /tmp/q/compare-mnist10-n60000-train.zarr --iterations 6
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class Probe:
    """Accumulates seconds by (iteration, what); the iteration is set by the commit of the one before."""

    def __init__(self):
        self.iteration = 0
        self.seconds = defaultdict(float)
        self.rows = defaultdict(int)
        self.counts = defaultdict(int)
        self.iter_start = {}
        self.iter_end = {}
        self.cpu_start = {}
        self.cpu_end = {}

    def wrap(self, owner, name, label, rows_of=None):
        original = getattr(owner, name)
        probe = self

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                lab = label(args, kwargs) if callable(label) else label
                probe.seconds[probe.iteration, lab] += time.perf_counter() - t
                probe.counts[probe.iteration, lab] += 1
                if rows_of is not None:
                    probe.rows[probe.iteration, lab] += rows_of(args, kwargs)
        setattr(owner, name, timed)
        return original


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--local-mode", default="auto")
    p.add_argument("--set", nargs="*", default=[], help="TrainConfig overrides NAME=VALUE")
    p.add_argument("--out", default=None, help="write the table here (Markdown)")
    args = p.parse_args(argv)

    from pipeline import training
    from pipeline.cluster import connect, local_processes
    from pipeline.passes import DaskRunner
    from solvers.config import TrainConfig
    from solvers.gauss_newton import GaussNewtonSolver
    from storage.data import open_data

    overrides = {}
    for item in args.set:
        k, v = item.split("=", 1)
        field = TrainConfig.__dataclass_fields__[k]
        default = field.default
        overrides[k] = v if isinstance(default, str) else type(default)(v) if default is not None else v
    config = TrainConfig(solver="gauss-newton", iterations=args.iterations, **overrides)
    probe = Probe()

    def pass_rows(a, kw):
        runner = a[0]
        chunks = kw.get("chunks")
        sample = range(len(runner.bounds)) if chunks is None else chunks
        return sum(runner.bounds[i][1] - runner.bounds[i][0] for i in sample)
    probe.wrap(DaskRunner, "run", lambda a, kw: f"pass {a[1]}", pass_rows)
    original_compute = DaskRunner.compute

    def compute(self, *values):  # scoring goes through runner.compute directly; passes through run()
        import traceback
        caller = traceback.extract_stack(limit=2)[0].name
        t = time.perf_counter()
        try:
            return original_compute(self, *values)
        finally:
            if caller != "run":
                probe.seconds[probe.iteration, "evaluate"] += time.perf_counter() - t
    DaskRunner.compute = compute
    probe.wrap(training._RunKeeper, "commit", "commit")
    for name in ("_with_trial", "output_layer", "_current_objective"):
        probe.wrap(GaussNewtonSolver, name, "client solve")
    original_commit = training._RunKeeper.commit

    def commit(self, state, *a, **kw):
        out = original_commit(self, state, *a, **kw)
        probe.iter_end[probe.iteration] = time.perf_counter()
        probe.cpu_end[probe.iteration] = time.process_time()
        probe.iteration = state.iteration + 1
        probe.iter_start[probe.iteration] = time.perf_counter()
        probe.cpu_start[probe.iteration] = time.process_time()
        return out
    training._RunKeeper.commit = commit

    data = open_data(args.data)
    lines = []
    processes = local_processes(args.local_mode, 4 * data.n_samples * data.n_features)
    tmp = Path(tempfile.mkdtemp(prefix="gn-profile-"))
    try:
        with connect("local", n_workers=args.workers, threads_per_worker=1, dashboard_address=":0",
                     processes=processes, report=lambda line: None) as client:
            client.run(exec, "import pipeline.passes, storage.data, storage.runstore, solvers.gauss_newton")
            t0 = time.perf_counter()
            probe.iter_start[0] = t0
            probe.cpu_start[0] = time.process_time()
            out = training.train(client, store=str(tmp / "run.zarr"), data=args.data, config=config,
                                 overwrite=True, report=lines.append)
            total = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    history = {h["iteration"]: h for h in out.history}
    kinds = ["pass forward_chunk", "pass curvature_chunk", "client solve", "evaluate", "commit"]
    head = ("| iter | wall s | CPU s | " + " | ".join(f"{k} s" for k in kinds)
            + " | other s | rows A | rows B | accepted | damping | alpha | valid acc |")
    table = [head, "|" + "---|" * (head.count("|") - 1)]
    for k in sorted(probe.iter_end):
        wall = probe.iter_end[k] - probe.iter_start[k]
        parts = [probe.seconds[k, kind] for kind in kinds]
        h = history.get(k, {})
        cpu = probe.cpu_end[k] - probe.cpu_start[k]
        table.append(f"| {k} | {wall:.3f} | {cpu:.3f} | " + " | ".join(f"{s:.3f}" for s in parts)
                     + f" | {wall - sum(parts):.3f} | {probe.rows[k, 'pass forward_chunk']}"
                     f" | {probe.rows[k, 'pass curvature_chunk']} | {h.get('accepted', '-')} | "
                     f"{h.get('damping', float('nan')):.3g} | {h.get('alpha', float('nan')):.3g} | "
                     f"{h.get('validation_accuracy', float('nan')):.4f} |")
    cpu_total = sum(probe.cpu_end[k] - probe.cpu_start[k] for k in probe.iter_end)
    text = "\n".join([*lines[:2], "", *table, "", f"total {total:.2f} s, this process's CPU {cpu_total:.2f} s "
                      f"({'processes: the workers CPU is not counted' if processes else 'threads: workers included'})"])
    print(text)
    if args.out:
        Path(args.out).write_text(f"# Gauss-Newton pipeline profile\n\nCommand: `python {' '.join(sys.argv)}`\n\n"
                                  + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
