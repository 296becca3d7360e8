"""What follows the rotate schedule's first epoch: accuracy per iteration and CPU for schedule variants, in memory.

Trains ``--layers`` (default the README's LeNet-like network) with convolutional Gauss-Newton through
:func:`solvers.reference.fit_in_memory` (the driver and chunk kernels of ``pipeline.train``, chunk after chunk in
this process, one BLAS thread) on the 60,000 MNIST training rows in chunks of ``--chunk-rows`` (compare.py's
8192), with the default held-out rows, and scores the original 10,000 test rows after every iteration (its CPU not
counted). Variants of :func:`solvers.sampling.next_sample` (patched here only):

* ``grow`` — the schedule as it is: one epoch of one-chunk windows, then samples of 2, 4, … chunks (nested);
* ``rotate2`` — two epochs of one-chunk windows, then growing;
* ``widen`` — one epoch of windows of m chunks, then an epoch of windows of 2m, 4m, … (rotating on), then all;
* ``grow4`` — one epoch of windows, then samples growing ×4.

CPU is this thread's (``time.thread_time``), so other processes barely disturb it. Writes ``--out`` (JSON) and ``.md``.

Run::

    python benchmarks/conv_schedule.py --variants grow rotate2 --iterations 16 --out /tmp/sched.json
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import provenance, write_results  # noqa: E402
from solvers import network as netmod, sampling  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.reference import fit_in_memory  # noqa: E402

LAYERS = "conv:8x5x5,pool:2,conv:16x5x5,pool:2,dense:100"
ORIGINAL = sampling.next_sample


def rotate_epochs(epochs: int):
    """Return a next_sample that walks ``epochs`` epochs of the first windows before growing."""
    def next_sample(m, window, n_chunks, accepted, last):
        if last or window < 0 or not accepted:
            return ORIGINAL(m, window, n_chunks, accepted, last)
        if window < epochs * math.ceil(n_chunks / max(m, 1)) - 1:
            return int(m), int(window) + 1
        return ORIGINAL(m, 10 ** 9, n_chunks, accepted, last)
    return next_sample


def widen(m, window, n_chunks, accepted, last):
    """One epoch of windows of m chunks, then of 2m, …; all chunks once a window would hold them all."""
    if last or window < 0 or not accepted:
        return ORIGINAL(m, window, n_chunks, accepted, last)
    if window < math.ceil(n_chunks / max(m, 1)) - 1:
        return int(m), int(window) + 1
    return (int(2 * m), 0) if 2 * m < n_chunks else (n_chunks, -1)


def grow4(m, window, n_chunks, accepted, last):
    """The schedule as it is, but a sample grows ×4 once the windows are walked."""
    if last or not accepted or (window >= 0 and window < math.ceil(n_chunks / max(m, 1)) - 1):
        return ORIGINAL(m, window, n_chunks, accepted, last)
    return int(min(n_chunks, 4 * m)), -1


VARIANTS = {"grow": ORIGINAL, "rotate2": rotate_epochs(2), "widen": widen, "grow4": grow4}


def run(variant: str, X, y, Xt, yt, args) -> list[dict]:
    sampling.next_sample = VARIANTS[variant]
    scoring = [0.0]
    score = netmod.Network.score

    def timed_score(self, *a, **k):  # the driver's test scoring: not counted
        t0 = time.thread_time()
        try:
            return score(self, *a, **k)
        finally:
            scoring[0] += time.thread_time() - t0

    netmod.Network.score = timed_score
    cfg = TrainConfig(layers=args.layers, solver="gauss-newton", iterations=args.iterations, patience=args.iterations)
    rows, last = [], [time.thread_time()]

    def callback(record):
        now = time.thread_time()
        cpu = now - last[0] - scoring[0]
        scoring[0], last[0] = 0.0, now
        rows.append({k: record.get(k) for k in ("iteration", "accepted", "sample_rows", "damping", "alpha",
                                                  "validation_accuracy", "test_accuracy", "train_accuracy")}
                    | {"cpu": cpu})
        print(variant, rows[-1], flush=True)

    t0 = time.thread_time()
    try:
        fit_in_memory(X, y, cfg, chunk_rows=args.chunk_rows, X_test=Xt, y_test=yt, callback=callback)
    finally:
        sampling.next_sample, netmod.Network.score = ORIGINAL, score
    if rows:
        rows[0]["cpu_start"] = rows[0]["cpu"]  # the first iteration's CPU includes initialisation
    print(variant, "total thread CPU", time.thread_time() - t0, flush=True)
    return rows


def markdown(res: dict) -> str:
    out = [f"# Schedule after the first epoch of windows: `{res['settings']['layers']}`, MNIST 60k/10k, in memory", "",
           f"Command: `{res['provenance'].get('command', '')}`  ", f"Date: {res['provenance'].get('date', '')}", "",
           "CPU = this thread's seconds per iteration (one BLAS thread; test scoring not counted; iteration 1 "
           "includes initialisation, whose CPU varied by 1.2 s between identical runs, so the sums below start at "
           "iteration 2). *model*: the network of the best validation accuracy so far (what the pipeline stores and "
           "`compare.py` scores); first iteration where its test accuracy, or the validation accuracy, reaches 0.985, "
           "with the CPU from iteration 2 up to it:", "",
           "| variant | model's test ≥ 0.985: iteration, CPU s | valid ≥ 0.985: iteration, CPU s | best valid | "
           "test at best valid |", "|---|---|---|---|---|"]
    for name, rows in res["variants"].items():
        cum = np.cumsum([0.0] + [r["cpu"] for r in rows[1:]])
        model, best = [], None
        for r in rows:
            if best is None or (r.get("validation_accuracy") or 0) > (best.get("validation_accuracy") or 0):
                best = r
            model.append(best)

        def first(ok, rows=rows, cum=cum):
            hit = next((i for i, r in enumerate(rows) if ok(i, r)), None)
            return "—" if hit is None else f"{rows[hit]['iteration']}, {cum[hit]:.1f}"
        top = max(rows, key=lambda r: r.get("validation_accuracy") or 0)
        out.append(f"| {name} | {first(lambda i, r, model=model: model[i]['test_accuracy'] >= 0.985)} | "
                   f"{first(lambda i, r: r['validation_accuracy'] >= 0.985)} | "
                   f"{top['validation_accuracy']:.4f} (it {top['iteration']}) | {top['test_accuracy']:.4f} |")
    for name, rows in res["variants"].items():
        out += ["", f"## {name}", "", "| iteration | accepted | sample rows | λ | α | valid acc | test acc | CPU s |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['iteration']} | {r['accepted']} | {int(r['sample_rows'])} | {r['damping']:g} | {r['alpha']:.3g} | "
                f"{r['validation_accuracy']:.4f} | {r['test_accuracy']:.4f} | {r['cpu']:.2f} |" for r in rows]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    from threadpoolctl import threadpool_limits

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default=LAYERS)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--chunk-rows", type=int, default=8192)
    p.add_argument("--iterations", type=int, default=16)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "conv_schedule_s8.json"))
    args = p.parse_args(argv)
    d = np.load(ROOT.parent / "shared" / "data" / "mnist70k_uint8.npz")
    X, y = d["X"][:60000].astype(np.float32) / 256, d["y"][:60000]
    Xt, yt = d["X"][60000:].astype(np.float32) / 256, d["y"][60000:]
    res = {"provenance": provenance(), "settings": vars(args), "variants": {}}
    with threadpool_limits(1):
        for v in args.variants:
            res["variants"][v] = run(v, X, y, Xt, yt, args)
            write_results(args.out, res, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
