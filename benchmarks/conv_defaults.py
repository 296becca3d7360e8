"""Conv Gauss-Newton settings on a validation split of MNIST's training rows: accuracy against CPU seconds.

Trains ``--layers`` (default the README's LeNet-like network) in memory
(:func:`solvers.reference.fit_in_memory`: the pipeline's driver and kernels,
one BLAS thread) on the first ``--rows`` MNIST training rows for each
``--config`` (JSON of :class:`~solvers.config.TrainConfig` settings), scoring
every iteration on rows 50,000..54,999: the validation tail of the original
training set, never the test split. CPU = this thread's CPU seconds
(``time.thread_time``) since the start of the run, the scoring of those
5,000 rows excluded. Writes ``--out`` (JSON) and ``.md``.

Run::

    python benchmarks/conv_defaults.py --config '{}' --config '{"alpha": 3}'
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import CpuWatch, provenance, write_results  # noqa: E402
from solvers import network as netmod  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.reference import fit_in_memory  # noqa: E402

LAYERS = "conv:8x5x5,pool:2,conv:16x5x5,pool:2,dense:100"
TARGETS = (0.97, 0.975, 0.98)


def main(argv=None) -> int:
    from threadpoolctl import threadpool_limits

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default=LAYERS)
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--chunk-rows", type=int, default=3334, help="default: 6 chunks of 20k rows, as the pipeline "
                   "cuts MNIST 60k for 2 workers")
    p.add_argument("--iterations", type=int, default=14)
    p.add_argument("--config", action="append", default=[], help="JSON settings of one run (repeatable)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "conv_defaults_s5.json"))
    args = p.parse_args(argv)
    d = np.load(ROOT.parent / "shared" / "data" / "mnist70k_uint8.npz")
    X, y = d["X"][:args.rows].astype(np.float32) / 256, d["y"][:args.rows]
    Xv, yv = d["X"][50000:55000].astype(np.float32) / 256, d["y"][50000:55000]
    scoring = [0.0]
    score = netmod.Network.score

    def timed_score(self, X, y):
        t = time.thread_time()
        try:
            return score(self, X, y)
        finally:
            if X is Xv:
                scoring[0] += time.thread_time() - t
    netmod.Network.score = timed_score
    runs = []
    with CpuWatch() as cpu, threadpool_limits(1):
        for spec in args.config or ["{}"]:
            settings = json.loads(spec)
            cfg = TrainConfig(layers=args.layers, solver="gauss-newton", scaling="global", iterations=args.iterations,
                              patience=args.iterations, **settings)
            scoring[0], history = 0.0, []
            t0 = time.thread_time()

            def record(r, t0=t0, history=history, settings=settings):
                history.append({"iteration": r["iteration"], "cpu": time.thread_time() - t0 - scoring[0],
                                **{k: r.get(k) for k in ("accepted", "sample_rows", "alpha", "damping",
                                                         "validation_accuracy", "test_accuracy")}})
                print(json.dumps(settings), history[-1], flush=True)
            fit_in_memory(X, y, cfg, chunk_rows=args.chunk_rows, X_test=Xv, y_test=yv, callback=record)
            runs.append({"settings": settings, "history": history})
    result = {"provenance": provenance(), "layers": args.layers, "rows": args.rows, "chunk_rows": args.chunk_rows,
              "iterations": args.iterations, "runs": runs, "other_cpu_seconds": cpu.other}
    write_results(args.out, result, markdown)
    print(markdown(result))
    return 0


def first(history, target):
    return next((h for h in history if h["test_accuracy"] >= target), None)


def markdown(r: dict) -> str:
    lines = [f"# Conv Gauss-Newton settings on a validation split of MNIST's training rows, `--layers {r['layers']}`", "",
             f"Command: `{r['provenance']['command']}` ({r['provenance']['date']}); in memory, one BLAS thread; "
             f"training rows 0..{r['rows'] - 1} in chunks of {r['chunk_rows']} (10 % of every chunk held out for "
             "α auto and early stopping); 'val acc' on rows 50,000..54,999 (the validation tail of the original "
             "training set, never the test split). CPU = the run's thread CPU seconds, the scoring of the 5,000 "
             f"validation rows excluded; other processes used {r['other_cpu_seconds']:.0f} CPU s meanwhile.", "",
             "| settings | " + " | ".join(f"CPU s (iteration) to {t}" for t in TARGETS)
             + f" | val acc at iteration {r['iterations']} (CPU s) | rejected trials |",
             "|---|" + "---|" * (len(TARGETS) + 2)]
    for run in r["runs"]:
        h = run["history"]
        cells = []
        for t in TARGETS:
            f = first(h, t)
            cells.append("–" if f is None else f"{f['cpu']:.1f} ({f['iteration']})")
        last = h[-1]
        lines.append(f"| `{json.dumps(run['settings'])}` | " + " | ".join(cells)
                     + f" | {last['test_accuracy']:.4f} ({last['cpu']:.1f}) | {sum(not x['accepted'] for x in h)} |")
    lines += ["", "Per iteration (sample rows, α, λ, val acc, CPU s):", ""]
    for run in r["runs"]:
        lines.append(f"- `{json.dumps(run['settings'])}`: " + "; ".join(
            f"{h['iteration']}{'' if h['accepted'] else ' rejected'}: {h['sample_rows']:.0f} rows, α {h['alpha']:.3g}, "
            f"λ {h['damping']:.3g}, {h['test_accuracy']:.4f}, {h['cpu']:.1f}" for h in run["history"]))
    return "\n".join(lines + [""])


if __name__ == "__main__":
    sys.exit(main())
