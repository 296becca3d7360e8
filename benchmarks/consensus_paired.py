"""Consensus variants paired by seed on validation splits: the real small tasks and a noisy HIGGS-shaped one nobody tuned on.

Each seed s is one validation split *and* the run's seed (initial weights, held-out rows), the same for
every variant, so variants are compared pair by pair. Tasks: those of
:func:`benchmarks.defaults_real.load_task` (``--split validation``: 20 % of the training rows, random_state
s + 1; the test rows unused), and ``higgs-N`` (synthetic HIGGS-shaped data with label noise, Bayes accuracy
about 0.77): N rows drawn (seeded by 200 + s) from rows 0-179,999 of the cached
``higgs-1000000-seed0.zarr`` (``benchmarks/higgs_like.py``), validated on rows 180,000-199,999. Our runs are
the in-memory reference (``fit_in_memory``, one shard) through
:func:`benchmarks.consensus_real.run_ours` (``--variant NAME:key=value;…``: TrainConfig settings, or the
class attributes of ``CLASS_ATTRIBUTES``), ``--hidden 300``, one BLAS thread. Prints one JSON line per run
and writes them all to ``--out`` (merged by task, variant and seed).

    nice -n 15 python benchmarks/consensus_paired.py --tasks covtype higgs-3000 --seeds 0 1 2 \\
        --variant default: --variant s250:auto_steps=250 --out /tmp/paired.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import CpuWatch, provenance  # noqa: E402
from benchmarks.consensus_real import parse_variant, run_ours  # noqa: E402
from benchmarks.defaults_real import load_task  # noqa: E402

HIGGS = Path("/tmp/q/higgs-1000000-seed0.zarr")


def load(task: str, seed: int):
    """Return (X_train, y_train, X_validation, y_validation) of a task's validation split ``seed``."""
    if task.startswith("higgs-"):
        import zarr

        n = int(task.split("-", 1)[1])
        g = zarr.open_group(str(HIGGS), mode="r")
        X, y = np.asarray(g["X"][:200000]), np.asarray(g["y"][:200000])
        idx = np.random.default_rng(200 + seed).permutation(180000)[:n]
        return X[idx].astype(np.float32), y[idx], X[180000:].astype(np.float32), y[180000:]
    Xtr, ytr, Xva, yva, _ = load_task(task, "validation", seed)
    return Xtr, ytr, Xva, yva


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variant", action="append", default=[], metavar="NAME:key=value;…")
    p.add_argument("--hidden", default="300")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    variants = dict(parse_variant(v) for v in (args.variant or ["default:"]))
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"runs": []}
    results.setdefault("provenance", []).append(provenance())
    for task in args.tasks:
        for seed in args.seeds:
            Xtr, ytr, Xva, yva = load(task, seed)
            for name, settings in variants.items():
                with CpuWatch() as cpu, threadpool_limits(1):
                    r = run_ours(settings, Xtr, ytr, Xva, yva, hidden, seed)
                row = {"task": task, "seed": seed, "variant": name, "settings": settings, "n_train": len(ytr),
                       "n_validation": len(yva), "accuracy": r["accuracy"], "log_loss": r["log_loss"],
                       "best_iteration": r["best_iteration"], "iterations_run": r["iterations_run"],
                       "seconds": r["seconds"], "other_cpu_seconds": cpu.other}
                print(json.dumps(row, default=float), flush=True)
                results["runs"] = [x for x in results["runs"]
                                   if (x["task"], x["seed"], x["variant"]) != (task, seed, name)] + [row]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
