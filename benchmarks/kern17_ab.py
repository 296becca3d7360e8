"""Session 17 (kern17): paired A/B of Gauss-Newton's 28-300-1 / 784-300-10 kernels, old (session 16) vs new, in ONE process.

The machine is shared, so every comparison alternates the two variants rep by rep inside one process (the same
data, caches and load drift for both) and reports the ratio of the paired medians. "old" is this tree's code
with the session-16 paths put back by monkeypatching (exactly session 16's code paths):

* pass A: ã_{L−1} in its own array and ``ãᵀã`` (SYRK) and ``Tᵀã`` (GEMV / thin GEMM) as two products
  (new: one SYRK of ``[ã, T]``, :func:`solvers.linalg.gram_and_cross`);
* pass B: the ReLU mask compared on the column slice ``a[:, :k]`` (new: on the whole contiguous buffer).

``mask`` is the old pass A with the new pass B (each change alone); ``fold1`` also folds one output's ``Tᵀã``
(not this tree's rule: it changes that cross product in the last bits).

Parts:

* ``chunk``: one chunk of 65,536 rows, 1 BLAS thread, pass A then pass B (cache warm), thread CPU ms.
* ``iteration``: the solver's own in-memory iteration (``benchmarks.kernel_efficiency.in_memory_iterations``'s
  set-up: 262,144 HIGGS-shaped rows, chunks of 65,536, 2 threads), variants alternating iteration by iteration
  (each advance starts from the same state: a copy of one accepted state), wall and process CPU seconds;
  ``--cache-mib`` adds the new code with a larger activation cache (pass B then finds every tile pass A kept).

Run::

    flock /work/bench.lock python benchmarks/kern17_ab.py --out benchmarks/results/kern17_ab.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from threadpoolctl import threadpool_limits  # noqa: E402

from benchmarks import kernel_efficiency as ke  # noqa: E402
from benchmarks.bench_util import provenance  # noqa: E402
from benchmarks.gn_efficiency import TimedRunner, flops_per_row, products  # noqa: E402
from solvers import gauss_newton as gn, linalg, make_solver  # noqa: E402
from solvers.activation_cache import CACHE, weights_key  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.gauss_newton import CurvatureParams, ForwardParams  # noqa: E402
from solvers.losses import encode_labels  # noqa: E402


def old_relu_curvature_sums(a, x, r):
    """Session 16's :func:`solvers.linalg.relu_curvature_sums` (mask compared on the column slice)."""
    n, k = a.shape[0], a.shape[1] - 1
    B = linalg.scratch("relu_curvature", n, k + x.shape[1], a.dtype)
    mask = linalg.scratch("relu_mask_old", n, k, np.bool_)
    np.greater(a[:, :k], 0, out=mask)
    np.copyto(B[:, :k], mask)
    np.multiply(x, r, out=B[:, k:])
    G = B.T @ B
    return G[:k, :k].astype(np.float64), G[:k, k:].astype(np.float64)


_NEW = {"relu_curvature_sums": gn.relu_curvature_sums, "_stacks_targets": gn.GaussNewtonSolver._stacks_targets}


def _fold_any_width(self) -> bool:
    """The fold for one output too (``fold1``): not this tree's rule (one output keeps its GEMV and its bits)."""
    return self.L > 1 and not self.cross_entropy and self.act.name == "relu"


def use(variant: str) -> None:
    """Put the session-16 paths back (``old``), this tree's (``new``), only pass B's new mask (``mask``), or this
    tree's with pass A's fold for one output too (``fold1``; changes 28-300-1's cross product in the last bits).

    Without the fold (``_stacks_targets`` False) ã_{L−1} is its own array and pass A runs the two products, as in
    session 16."""
    mask = variant in ("new", "mask", "fold1")
    gn.relu_curvature_sums = _NEW["relu_curvature_sums"] if mask else old_relu_curvature_sums
    gn.GaussNewtonSolver._stacks_targets = {"new": _NEW["_stacks_targets"], "fold1": _fold_any_width}.get(
        variant, lambda self: False)


def part_chunk(args) -> dict:
    out = {}
    for name, widths, (X, y) in ke.networks(args):
        model = ke.model_of(X, y)
        solver = make_solver(TrainConfig(hidden=tuple(widths[1:-1])), X.shape[1], **model)
        rng = np.random.default_rng(1)
        W = solver.cast(solver.he_weights(len(widths) - 2) + [rng.standard_normal((widths[-1], widths[-2] + 1)) * 0.05])
        key = weights_key(solver.run_token, W[:-1])
        x, yi = X[:ke.CHUNK], encode_labels(y[:ke.CHUNK], model["classes"])
        fp, cp = ForwardParams(W[:-1], False, None, key), CurvatureParams(W, False, None, key)
        variants = ("old", "mask", "new", "fold1")
        times = {v: {"A": [], "B": []} for v in variants}
        with threadpool_limits(1):
            for rep in range(args.reps + 1):
                for v in (variants if rep % 2 else variants[::-1]):
                    use(v)
                    c0 = time.thread_time()
                    solver.forward_chunk(x, yi, None, 0, fp)
                    c1 = time.thread_time()
                    solver.curvature_chunk(x, yi, None, 0, cp)
                    c2 = time.thread_time()
                    if rep:  # rep 0 warms both
                        times[v]["A"].append(c1 - c0)
                        times[v]["B"].append(c2 - c1)
        use("new")
        med = {v: {p: statistics.median(t) for p, t in d.items()} for v, d in times.items()}
        out[name] = {"rows": int(x.shape[0]), "times": times, "median": med,
                     "ratios_to_old": {v: {"A": med[v]["A"] / med["old"]["A"], "B": med[v]["B"] / med["old"]["B"],
                                           "A+B": sum(med[v].values()) / sum(med["old"].values())}
                                       for v in variants[1:]}}
        print(name, {v: {k: round(x, 4) for k, x in d.items()} for v, d in out[name]["ratios_to_old"].items()},
              {v: {p: round(1e3 * t, 1) for p, t in d.items()} for v, d in med.items()}, flush=True)
    return out


def part_iteration(args) -> dict:
    out = {}
    for name, widths, (X, y) in ke.networks(args):
        model = ke.model_of(X, y)
        config = TrainConfig(hidden=tuple(widths[1:-1]), sample_schedule="full", validation_fraction=0.0,
                             iterations=10 ** 6)
        solver = make_solver(config, X.shape[1], **model)
        runner = TimedRunner(solver, X, encode_labels(y, model["classes"]), ke.chunk_rows(X.shape[0]), args.threads)
        state = solver.initialize(runner)
        state, _ = solver.advance(runner, state)  # one accepted step: every later advance starts from this state
        start = state
        variants = ["old", "mask", "new", "fold1"] + [f"new+cache{m}" for m in args.cache_mib]
        rows = {v: [] for v in variants}
        budget = CACHE.budget
        for rep in range(args.iter_reps + 1):
            for v in (variants if rep % 2 else variants[::-1]):
                use(v.split("+")[0])
                CACHE.budget = int(v.split("cache")[1]) * 2 ** 20 if "cache" in v else budget
                # (no CACHE.clear(): each pass A's puts evict the tiles before them, as in a run, so that the
                # allocator recycles their memory; pass B reads the tiles its own pass A just put, same keys)
                runner.log = []
                c0, t0 = time.process_time(), time.perf_counter()
                new_state, metrics = solver.advance(runner, start)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if rep:
                    rows[v].append({"wall": wall, "cpu": cpu, "passes": [(p["kernel"], p["seconds"]) for p in runner.log],
                                    "accepted": bool(metrics.get("accepted", True))})
        use("new")
        CACHE.budget = budget
        f = X.shape[0] * sum(flops_per_row(p) for p in products(widths).values())
        med = {v: {"wall": statistics.median(r["wall"] for r in rs), "cpu": statistics.median(r["cpu"] for r in rs)}
               for v, rs in rows.items()}
        out[name] = {"threads": args.threads, "n": int(X.shape[0]), "flops": f, "rows": rows, "median": med,
                     "paired_wall_ratios": {v: [n["wall"] / o["wall"] for n, o in zip(rows[v], rows["old"])]
                                            for v in variants[1:]},
                     "ratios_to_old": {v: {k: med[v][k] / med["old"][k] for k in ("wall", "cpu")} for v in variants[1:]}}
        print(name, {v: {k: round(x, 4) for k, x in d.items()} for v, d in out[name]["ratios_to_old"].items()},
              {v: {k: round(t, 3) for k, t in d.items()} for v, d in med.items()}, flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="chunk,iteration")
    p.add_argument("--networks", default="28-300-1,784-300-10")
    p.add_argument("--higgs-n", type=int, default=262_144)
    p.add_argument("--reps", type=int, default=20, help="part chunk: paired repeats")
    p.add_argument("--iter-reps", type=int, default=8, help="part iteration: paired repeats")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-mib", type=int, nargs="*", default=[],
                   help="part iteration: also the new code with the activation cache's budget at these MiB")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    result = {"provenance": provenance(), "settings": vars(args), "load_before": os.getloadavg()}
    for part in args.parts.split(","):
        result[part] = {"chunk": part_chunk, "iteration": part_iteration}[part](args)
    result["load_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
