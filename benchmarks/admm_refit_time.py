"""Seconds of ADMM / dlADMM in memory with and without ``readout_refit`` on a validation split (seed 0), alternated.

Run (from the repository root, un-niced, under the bench lock)::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 flock /work/bench.lock python benchmarks/admm_refit_time.py mnist10-2k
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import admm_first_layer as afl  # noqa: E402
from benchmarks import defaults_real as dr  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.reference import fit_in_memory  # noqa: E402

X, y, Xe, ye = afl.load_task(sys.argv[1], 0)[:4]
for rnd in range(2):
    for solver in ("admm", "dladmm"):
        for refit in (False, True):
            cfg = TrainConfig(solver=solver, hidden=(300,), iterations=dr.ITERATIONS[solver], seed=0, input_skip=False,
                              readout_refit=refit, patience=0)
            t = time.perf_counter()
            r = fit_in_memory(X, y, cfg)
            s = time.perf_counter() - t
            print(f"{sys.argv[1]} round {rnd} {solver} refit={refit} {s:.2f} s, {len(r.history)} iterations, "
                  f"acc {r.network.score(Xe, ye):.4f}", flush=True)
