"""Where one consensus shard task's time goes: minibatch gradient, Adam's step, standardisation, scores, the rest.

Runs :meth:`solvers.consensus.ConsensusSolver.shard_kernel` in this process on the first ``--chunks`` chunks of
``--chunk-rows`` rows of a data store, one round per chunk as pass 1 runs them (``--set`` overrides TrainConfig),
on one BLAS thread, with timers around its parts; then times the two large products of a minibatch step
(forward ``x W̃ᵀ`` and the weight gradient ``δᵀ x``) alone, as GFLOPS. Run it under ``flock /work/bench.lock``.

    python benchmarks/consensus_kernel_profile.py --data /tmp/q/compare-mnist-oddeven-n60000-train.zarr
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--chunk-rows", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=300)
    args = p.parse_args(argv)

    from threadpoolctl import threadpool_limits

    from solvers import adam as adam_mod, consensus as cons, make_solver
    from solvers.config import TrainConfig
    from solvers.inmemory import _Chunks
    from solvers.losses import encode_labels
    from storage.data import open_data

    d = open_data(args.data)
    n = args.chunks * args.chunk_rows
    X, y = d.X[:n], d.y[:n]
    config = TrainConfig(solver="consensus", hidden=(args.hidden,), shards=2)
    mean, scale = X.mean(0).astype(np.float64), X.std(0).astype(np.float64)
    scale[scale == 0] = 1
    s = make_solver(config, X.shape[1], classes=np.unique(y), x_mean=mean, x_scale=scale, dtype=np.float32)
    yi = encode_labels(y, np.unique(y))
    r = args.chunk_rows
    chunks = _Chunks([X[i * r:(i + 1) * r] for i in range(args.chunks)], [yi[i * r:(i + 1) * r] for i in range(args.chunks)])
    parts = defaultdict(float)

    def timed(fn, key):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                parts[key] += time.perf_counter() - t
        return wrapper

    cons.gradient = timed(cons.gradient, "gradient")
    cons.standardize = timed(cons.standardize, "standardize")
    adam_mod.Adam.step = timed(adam_mod.Adam.step, "adam_step")
    task = type(s.task)
    task.score_parts = timed(task.score_parts, "score_parts")
    task.targets = timed(task.targets, "targets")
    center = s.flat.from_weights(s.he_weights(s.L))
    with threadpool_limits(1):
        t0 = time.perf_counter()
        for rnd in range(args.chunks):
            params = cons.ShardParams(center, 1, s.rho_at(1), 0.0, 0.0, 0, args.chunks, rnd, s.lr_at(1), 0, 1)
            s.shard_kernel(chunks, None, 0, params)
        total = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        B, dim, h = int(config.batch_size), X.shape[1], args.hidden
        x = rng.standard_normal((B, dim)).astype(np.float32)
        W = rng.standard_normal((h, dim)).astype(np.float32)
        delta = rng.standard_normal((B, h)).astype(np.float32)
        g = np.empty((h, dim), np.float32)
        gemm = {}
        for name, fn in (("forward x W^T", lambda: x @ W.T), ("gradient delta^T x", lambda: np.matmul(delta.T, x, out=g))):
            fn()
            t = time.perf_counter()
            for _ in range(100):
                fn()
            sec = (time.perf_counter() - t) / 100
            gemm[name] = {"ms": round(sec * 1e3, 3), "gflops": round(2 * B * dim * h / sec / 1e9, 1)}
    out = {"total_seconds": round(total, 3), "parts_seconds": {k: round(v, 3) for k, v in parts.items()},
           "rest_seconds": round(total - sum(parts.values()), 3), "rows": n, "gemm": gemm}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
