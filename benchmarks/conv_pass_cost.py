"""CPU seconds per 1000 MNIST rows of convolutional Gauss-Newton's passes, as an accepted iteration runs them.

On ``--rows`` training rows (one chunk, one BLAS thread, this process's CPU
time, best of ``--repeats``): pass A (forward, output Grams) with the
activation key set, pass B right after it at the same hidden weights (what a
growing or full sample does: it starts from the forward pass pass A kept),
pass B alone (``cold``: the rotate schedule's case, another window), and the
held-out rows' pass B part (their score) after their pass A, or (earlier
code) the driver's scoring of them by the network. Run it on two
checkouts (``PYTHONPATH``) to compare code versions. Prints one JSON line.

Run::

    python benchmarks/conv_pass_cost.py --label new
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LAYERS = "conv:8x5x5,pool:2,conv:16x5x5,pool:2,dense:100"


def main(argv=None) -> int:
    from threadpoolctl import threadpool_limits

    from solvers import make_solver
    from solvers.activation_cache import CACHE, weights_key
    from solvers.config import TrainConfig
    from solvers.gauss_newton import CurvatureParams

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layers", default=LAYERS)
    p.add_argument("--label", default="")
    args = p.parse_args(argv)
    d = np.load(ROOT.parent / "shared" / "data" / "mnist70k_uint8.npz")
    n = args.rows
    X, y = d["X"][:n].astype(np.float32) / 256, d["y"][:n].astype(np.int64)
    cfg = TrainConfig(layers=args.layers, solver="gauss-newton", scaling="global")
    s = make_solver(cfg, 784, x_mean=np.full(784, X.mean()), x_scale=np.full(784, X.std()), classes=np.arange(10))
    W = s.cast(s.he_weights(s.L))
    fp = s._forward_params(W[:-1], False)  # the solver's own pass A broadcast (its key names these weights)
    cp = CurvatureParams(W, False, None, weights_key(s.run_token, W[:-1]))
    from solvers.gauss_newton import GaussNewtonSolver

    own = type(s).curvature_chunk_held is not GaussNewtonSolver.curvature_chunk_held  # earlier code: the driver scored
    held_b = s.curvature_chunk_held if own else None

    def best(setup, f):
        out = float("inf")
        for _ in range(args.repeats):
            setup()
            t = time.process_time()
            f()
            out = min(out, time.process_time() - t)
        return out * 1000 / n

    def nothing():
        pass

    res = {}
    with threadpool_limits(1):
        res["pass_a"] = best(CACHE.clear, lambda: s.forward_chunk(X, y, None, 0, fp))
        res["pass_b_after_a"] = best(lambda: (CACHE.clear(), s.forward_chunk(X, y, None, 0, fp)),
                                     lambda: s.curvature_chunk(X, y, None, 0, cp))
        res["pass_b_cold"] = best(CACHE.clear, lambda: s.curvature_chunk(X, y, None, 0, cp))
        res["held_pass_a"] = best(CACHE.clear, lambda: s.forward_chunk_held(X, y, None, 0, fp))
        res["held_scoring_by_the_network"] = best(nothing, lambda: s.network(W).score(X, y))
        if held_b is not None:
            res["held_pass_b_after_a"] = best(lambda: (CACHE.clear(), s.forward_chunk_held(X, y, None, 0, fp)),
                                              lambda: held_b(X, y, None, 0, cp))
    print(json.dumps({"label": args.label, "rows": n, "cpu_seconds_per_1000_rows":
                      {k: round(v, 4) for k, v in res.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
