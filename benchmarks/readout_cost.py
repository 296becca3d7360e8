"""CPU seconds of one ADMM ``step_chunk`` on 10,000 MNIST rows (784-300-10, one BLAS thread): the output refit's cost.

Runs the kernel of iteration 5 three times with ``alpha=0`` (no refit) and
``alpha="auto"`` (the refit's sums in the same pass; on a held-out chunk the
refit's sums alone) and prints the least process CPU seconds of each. Run it
on an older checkout (``PYTHONPATH`` at it) to compare refits; the kernels'
signatures are those of this checkout and of the squared-loss refit before
it (main 107e2cb)::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/readout_cost.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist70k_uint8.npz"


def main() -> None:
    from solvers import make_solver
    from solvers.config import TrainConfig

    with np.load(DATA) as f:
        X, y = f["X"][:10000].astype(np.float32), f["y"][:10000]
    for name, alpha in (("no refit (alpha 0)", 0.0), ("refit (alpha auto)", "auto")):
        s = make_solver(TrainConfig(solver="admm", hidden=(300,), alpha=alpha), 784, classes=np.arange(10),
                        x_mean=X.mean(0), x_scale=X.std(0) + 1)
        w0 = s.he_weights(2)
        state, _ = s.init_chunk(X, y, None, 0, w0)
        if getattr(s, "logistic", False):
            from solvers import readout

            p = s.step_params(w0, w0, 5, readout.broadcast(readout.zero_carry(300, 10), np.float32))
        else:
            p = s.step_params(w0, w0, 5)
        seconds = {}
        for kind, st in (("training chunk", state), ("held-out chunk", None)):
            if st is None and alpha != "auto":
                continue
            runs = []
            for _ in range(3):
                t0 = time.process_time()
                s.step_chunk(X, y, st, 0, p)
                runs.append(time.process_time() - t0)
            seconds[kind] = min(runs)
        print(f"{name}: " + ", ".join(f"{k} {v:.3f} s CPU" for k, v in seconds.items()), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, ".")
    main()
