"""Consensus solver variants, measured: test accuracy after each pass for a grid of settings (in memory).

Every run is :func:`solvers.reference.fit_in_memory` with ``--solver consensus``
(the shards run one after another in this process, one BLAS thread), so the
accuracies are exactly the pipeline's (tests/test_consensus.py) and the
seconds are the sum of the shards' work, not wall-clock time on a cluster.
Each ``--grid`` entry is ``LABEL:KEY=VALUE;KEY=VALUE`` over ``TrainConfig``
settings (and ``carry_moments=0`` to restart every shard's Adam moments each
pass); they are run one at a time.

Run::

    python benchmarks/consensus_variants.py --task mnist-oddeven --passes 4 \\
        --grid 's2:shards=2' --grid 's2-elastic:shards=2;consensus=elastic'
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

from threadpoolctl import threadpool_limits  # noqa: E402

from benchmarks.bench_util import CpuWatch, provenance  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.consensus import ConsensusSolver  # noqa: E402
from solvers.reference import fit_in_memory  # noqa: E402

MNIST = ROOT.parent / "shared" / "data" / "mnist70k_uint8.npz"


def load(task: str, n: int | None, seed: int):
    """Return (X_train, y_train, X_test, y_test, default settings) of a task."""
    if task in ("mnist-oddeven", "mnist10"):
        with np.load(MNIST) as f:
            X, y = f["X"], f["y"]
        n = min(n or 60_000, 60_000)
        Xtr, ytr, Xte, yte = X[:n].astype(np.float32) / 256, y[:n], X[60_000:].astype(np.float32) / 256, y[60_000:]
        if task == "mnist-oddeven":
            ytr, yte = ytr % 2, yte % 2
        return Xtr, ytr, Xte, yte, {"hidden": (300,), "scaling": "global"}
    if task == "higgs":
        from benchmarks import higgs_like
        from storage.data import open_data

        n = n or 1_000_000
        from benchmarks.compare import _default_cache

        cache = _default_cache()
        train, test = cache / f"higgs-{n}-seed{seed}.zarr", cache / f"higgs-test-200000-seed{seed}.zarr"
        if not (train.exists() and test.exists()):
            higgs_like.main(["--n", str(n), "--out", str(train), "--test-n", "200000", "--test-out", str(test),
                             "--seed", str(seed), "--overwrite"])
        a, b = open_data(train), open_data(test)
        return a.X[...], a.y[...], b.X[...], b.y[...], {"hidden": (300,)}
    raise SystemExit(f"error: unknown task {task!r}")


def parse_grid(entries) -> list[tuple[str, dict]]:
    out = []
    for entry in entries:
        label, _, body = entry.partition(":")
        settings = {}
        for item in filter(None, body.split(";")):
            k, v = item.split("=", 1)
            try:
                settings[k] = json.loads(v)
            except ValueError:
                settings[k] = v
        out.append((label, settings))
    return out


def run_one(data, base: dict, settings: dict, passes: int, chunk_rows: int | None) -> dict:
    Xtr, ytr, Xte, yte = data
    settings = dict(settings)
    carry = bool(settings.pop("carry_moments", 1))
    config = TrainConfig(**{**base, "solver": "consensus", "iterations": passes, **settings})
    points = []
    ConsensusSolver.carry_moments = carry
    try:
        with threadpool_limits(1):
            fit_in_memory(Xtr, ytr, config, chunk_rows=chunk_rows, X_test=Xte, y_test=yte,
                          callback=lambda r: points.append(
                              {"pass": r["iteration"], "seconds": r["seconds"], "test_accuracy": r["test_accuracy"],
                               "train_accuracy": r.get("train_accuracy"), "residual": r.get("residual")}))
    finally:
        ConsensusSolver.carry_moments = True
    return {"config": config.to_dict(), "carry_moments": carry, "points": points}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=("mnist-oddeven", "mnist10", "higgs"))
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--passes", type=int, default=4)
    p.add_argument("--grid", action="append", required=True, metavar="LABEL:KEY=VALUE;…")
    p.add_argument("--chunk-rows", type=int, default=None,
                   help="chunk rows (default: the rows split evenly over the largest --shards of the grid)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    Xtr, ytr, Xte, yte, base = load(args.task, args.n, args.seed)
    base["seed"] = args.seed
    grid = parse_grid(args.grid)
    results = []
    for label, settings in grid:
        t0 = time.perf_counter()
        with CpuWatch() as cpu:
            res = run_one((Xtr, ytr, Xte, yte), base, settings, args.passes, args.chunk_rows)
        res.update(label=label, settings=settings, wall_seconds=time.perf_counter() - t0,
                   other_cpu_seconds=cpu.other)
        accs = " ".join(f"{q['test_accuracy']:.4f}" for q in res["points"])
        print(f"{label:<28} {accs}   ({res['wall_seconds']:.1f} s, other CPU {cpu.other:.1f} s)", flush=True)
        results.append(res)
    name = args.name or f"consensus_variants_{args.task}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"provenance": provenance(), "task": args.task, "n_train": int(len(ytr)), "passes": args.passes,
           "base": {k: list(v) if isinstance(v, tuple) else v for k, v in base.items()}, "results": results}
    (out / f"{name}.json").write_text(json.dumps(doc, indent=1, default=str))
    lines = [f"# Consensus variants: `{args.task}` ({len(ytr):,} training rows, test {len(yte):,})", "",
             f"Command: `{doc['provenance']['command']}`  ", f"Date: {doc['provenance']['date']}", "",
             "Test accuracy after each pass; in memory, shards one after another on one BLAS thread "
             "(*seconds* = the sum of the shards' work per pass; other CPU = other processes' CPU seconds "
             "meanwhile: the machine was shared).", "",
             "| variant | settings | " + " | ".join(f"pass {k}" for k in range(1, args.passes + 1))
             + " | s/pass | other CPU s |", "|---|---|" + "---|" * args.passes + "---|---|"]
    for r in results:
        accs = [f"{q['test_accuracy']:.4f}" for q in r["points"]] + ["—"] * (args.passes - len(r["points"]))
        sec = np.median([q["seconds"] for q in r["points"]]) if r["points"] else float("nan")
        lines.append(f"| {r['label']} | `{';'.join(f'{k}={v}' for k, v in r['settings'].items())}` | "
                     + " | ".join(accs) + f" | {sec:.2f} | {max(0.0, r['other_cpu_seconds']):.0f} |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / name}.json, .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
