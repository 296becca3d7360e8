"""Where the CPU of convolutional Gauss-Newton goes: per-phase and per-kernel-part CPU of an in-memory run.

Trains ``--layers`` (default the README's LeNet-like network) with the
Gauss-Newton solver through :func:`solvers.reference.fit_in_memory` (the
driver and chunk kernels ``pipeline.train`` runs, chunk after chunk in this
process, one BLAS thread) on MNIST training rows, and times with
``time.thread_time`` (this thread's CPU, which other processes on a loaded
machine barely disturb):

* phases: initialisation, pass A on the training rows, pass A on the held-out
  rows (the α choice), pass B, the client's solves (output layer, trial
  weights), and the driver's scoring of the held-out and test rows;
* kernel parts, exclusive of one another: im2col, col2im, pooling forward and
  adjoint, the layer products, patch Grams, gradient products, activations,
  the rest of each kernel (S products, reshapes, targets).

The test rows here are the validation tail of the original training set
(rows 50,000..54,999; never the test split). Dask's own cost is not in this
run: compare its total with ``pipeline.train``'s on the same data
(``benchmarks/cpu_to_target.py``). Writes ``--out`` (JSON) and ``.md``.

Run::

    python benchmarks/conv_profile.py --rows 20000 --iterations 6
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import CpuWatch, provenance, write_results  # noqa: E402
from solvers import conv_gauss_newton as cgn, inmemory, network as netmod  # noqa: E402
from solvers.conv import Conv2D  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.pooling import Pool2D  # noqa: E402
from solvers.reference import fit_in_memory  # noqa: E402

LAYERS = "conv:8x5x5,pool:2,conv:16x5x5,pool:2,dense:100"


class Profile:
    """Exclusive thread-CPU seconds per (phase, part): a part's time excludes the parts called inside it."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self.phase = "client"
        self.stack = []  # [part, start, children's seconds]

    def timed(self, part: str, fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            self.stack.append([part, time.thread_time(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                _, t0, inner = self.stack.pop()
                total = time.thread_time() - t0
                self.seconds[(self.phase, part)] += total - inner
                self.calls[(self.phase, part)] += 1
                if self.stack:
                    self.stack[-1][2] += total
        return run

    def in_phase(self, phase_of, fn):
        """Wrap ``fn`` so that calls inside it count to ``phase_of(*args)`` (the enclosing phase after)."""
        @functools.wraps(fn)
        def run(*args, **kwargs):
            before, self.phase = self.phase, phase_of(*args, **kwargs)
            try:
                return fn(*args, **kwargs)
            finally:
                self.phase = before
        return run


def patch(obj, name: str, wrap):
    setattr(obj, name, wrap(getattr(obj, name)))


def main(argv=None) -> int:
    from threadpoolctl import threadpool_limits

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default=LAYERS)
    p.add_argument("--rows", type=int, default=20000, help="training rows (the first of the MNIST file)")
    p.add_argument("--chunk-rows", type=int, default=2500)
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--alpha", default="auto")
    p.add_argument("--sample-start", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "conv_profile_s5.json"))
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    d = np.load(ROOT.parent / "shared" / "data" / "mnist70k_uint8.npz")
    X, y = d["X"][:args.rows].astype(np.float32) / 256, d["y"][:args.rows]
    Xt, yt = d["X"][50000:55000].astype(np.float32) / 256, d["y"][50000:55000]
    extra = {} if args.sample_start is None else {"sample_start": args.sample_start}
    cfg = TrainConfig(layers=args.layers, solver="gauss-newton", scaling="global", alpha=args.alpha,
                      iterations=args.iterations, patience=args.iterations, **extra)

    prof = Profile()
    t = prof.timed
    for cls, name, part in ((Conv2D, "patches", "im2col"), (Conv2D, "adjoint", "col2im"),
                            (Pool2D, "forward", "pool forward"), (Pool2D, "adjoint", "pool adjoint")):
        patch(cls, name, lambda f, part=part: t(part, f))
    for name, part in (("rows_affine", "layer products z = P Wᵀ"), ("rows_gram", "patch Grams PᵀP"),
                       ("rows_cross", "gradient products δᵀP"), ("gram_with_bias", "output Grams"),
                       ("cross_with_bias", "output Grams")):
        patch(cgn, name, lambda f, part=part: t(part, f))
    patch(cgn.ConvGaussNewtonSolver, "forward_chunk", lambda f: t("rest of pass A", f))
    patch(cgn.ConvGaussNewtonSolver, "curvature_parts", lambda f: t("rest of pass B (S products, signs)", f))
    patch(cgn.ConvGaussNewtonSolver, "inputs", lambda f: t("standardise inputs", f))
    patch(cgn.ConvGaussNewtonSolver, "output_layer", lambda f: t("output layer ridge path (α grid)", f))
    patch(cgn.ConvGaussNewtonSolver, "trial_weights", lambda f: t("trial weights (factor solves)", f))
    patch(netmod, "forward", lambda f: t("network forward (scoring)", f))

    def kernel_phase(fn, x, y, state, start, params, split, side="train", part=None):
        kind = {"forward_chunk": "pass A", "curvature_chunk": "pass B"}.get(fn.__name__, fn.__name__)
        init = "initialisation: " if prof.phase == "initialisation" else ""
        return f"{init}{kind} {'held-out rows' if side == 'held' else 'training rows'}"
    patch(inmemory, "chunk_kernel", lambda f: prof.in_phase(kernel_phase, f))
    patch(netmod.Network, "score", lambda f: prof.in_phase(
        lambda self, X, y: "scoring: test rows" if X is Xt else "scoring: held-out rows", f))
    patch(cgn.ConvGaussNewtonSolver, "initialize", lambda f: prof.in_phase(lambda *a: "initialisation", f))

    history = []
    with CpuWatch() as cpu, threadpool_limits(1):
        t0, w0 = time.thread_time(), time.perf_counter()
        fit_in_memory(X, y, cfg, chunk_rows=args.chunk_rows, X_test=Xt, y_test=yt, callback=history.append)
        total, wall = time.thread_time() - t0, time.perf_counter() - w0
    accounted = sum(prof.seconds.values())
    prof.seconds[("client", "client: other (driver, carry, objective)")] += total - accounted
    by_phase, by_part = defaultdict(float), defaultdict(float)
    for (phase, part), s in prof.seconds.items():
        by_phase[phase] += s
        by_part[part] += s
    result = {"provenance": provenance(), "layers": args.layers, "rows": args.rows, "chunk_rows": args.chunk_rows,
              "config": {"alpha": args.alpha, "sample_start": cfg.sample_start, "iterations": args.iterations},
              "thread_cpu_seconds": total, "wall_seconds": wall, "other_cpu_seconds": cpu.other, "note": args.note,
              "by_phase": dict(by_phase), "by_part": dict(by_part),
              "cells": [{"phase": ph, "part": pa, "seconds": s, "calls": prof.calls[(ph, pa)]}
                        for (ph, pa), s in sorted(prof.seconds.items(), key=lambda kv: -kv[1])],
              "history": [{k: r.get(k) for k in ("iteration", "accepted", "sample_rows", "alpha", "damping",
                                                 "validation_accuracy", "test_accuracy", "train_accuracy")}
                          for r in history]}
    write_results(args.out, result, markdown)
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    total = r["thread_cpu_seconds"]
    lines = [f"# CPU profile of convolutional Gauss-Newton, in memory, `--layers {r['layers']}`", "",
             f"Command: `{r['provenance']['command']}` ({r['provenance']['date']}); {r['rows']} MNIST training rows in "
             f"chunks of {r['chunk_rows']}, alpha {r['config']['alpha']}, sample start {r['config']['sample_start']}, "
             f"{r['config']['iterations']} iterations after initialisation, one BLAS thread; thread CPU "
             f"{total:.1f} s, wall {r['wall_seconds']:.1f} s; other processes used {r['other_cpu_seconds']:.0f} CPU s "
             "meanwhile.", ""]
    if r.get("note"):
        lines += [r["note"], ""]
    lines += ["| phase | CPU s | share |", "|---|---|---|"]
    lines += [f"| {ph} | {s:.2f} | {s / total:.1%} |" for ph, s in sorted(r["by_phase"].items(), key=lambda kv: -kv[1])]
    lines += ["", "| kernel part (all phases) | CPU s | share |", "|---|---|---|"]
    lines += [f"| {pa} | {s:.2f} | {s / total:.1%} |" for pa, s in sorted(r["by_part"].items(), key=lambda kv: -kv[1])]
    lines += ["", "| phase | part | CPU s | calls |", "|---|---|---|---|"]
    lines += [f"| {c['phase']} | {c['part']} | {c['seconds']:.2f} | {c['calls']} |" for c in r["cells"] if c["seconds"] >= 0.05]
    lines += ["", "| iteration | accepted | sample rows | α | λ | valid acc | test acc |", "|---|---|---|---|---|---|---|"]
    for h in r["history"]:
        lines.append(f"| {h['iteration']} | {h['accepted']} | {h['sample_rows']:.0f} | {h['alpha']:.3g} | "
                     f"{h['damping']:.3g} | {h['validation_accuracy']:.4f} | {h['test_accuracy']:.4f} |")
    return "\n".join(lines + [""])


if __name__ == "__main__":
    sys.exit(main())
