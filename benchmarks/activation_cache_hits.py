"""Activation-cache hits per Gauss-Newton step of a ``pipeline.train`` run (probe2_s13.md): ``CACHE.hits`` (this
process's :mod:`solvers.activation_cache`) before and after each ``hidden_race._probe`` and
``GaussNewtonSolver._advance`` call, with its process CPU seconds; a nested ``_advance`` (a probe that runs whole
iterations) is listed apart. The counts are this process's: they are the run's when its workers are this process's
threads (the embedded local cluster of a small data store).

    PYTHONPATH=$PWD python benchmarks/activation_cache_hits.py DATA.zarr RUN.zarr [--iterations 4] [--checkout DIR]

``--checkout``: import the solvers and pipeline from another tree (e.g. ``git archive ef28bea``), to compare.
Prints one JSON line: [step, hits, CPU s] per call, in order.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("store", help="the run store to write (replaced)")
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--checkout", default=str(Path(__file__).resolve().parents[1]))
    a = p.parse_args(argv)
    sys.path.insert(0, a.checkout)
    import pipeline.train as train
    import solvers.activation_cache as ac
    import solvers.gauss_newton as gn
    import solvers.hidden_race as hr

    calls = []

    def count(owner, name, label):
        orig = getattr(owner, name)

        @functools.wraps(orig)  # keeps _advance.evaluate_then_finish: the probe takes the same path
        def counted(*args, **kwargs):
            hits, cpu = ac.CACHE.hits, time.process_time()
            out = orig(*args, **kwargs)
            calls.append((label, ac.CACHE.hits - hits, round(time.process_time() - cpu, 3)))
            return out
        setattr(owner, name, counted)

    count(hr, "_probe", "probe")
    count(gn.GaussNewtonSolver, "_advance", "advance")
    try:
        train.main(["--data", a.data, "--store", a.store, "--overwrite", "--no-progress",
                    "--iterations", str(a.iterations)])
    except SystemExit:
        pass
    print(json.dumps(calls))


if __name__ == "__main__":
    main()
