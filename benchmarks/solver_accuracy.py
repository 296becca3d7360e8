"""Accuracy of each solver against the targets of the Gauss-Newton issue, with early stopping.

Every run holds out ``--validation-fraction`` of the training chunks for early
stopping (the model is the best held-out iteration); the test split is never
seen while training and is reported only. Tasks:

* ``higgs1``: synthetic HIGGS-shaped data (``benchmarks/higgs_like.py``), 1 M training rows,
  28-300-1; target ≥ 0.768 within 3 iterations;
* ``higgs2``: the same with two hidden layers 300,300; target ≥ 0.76;
* ``mnist-oddeven``: MNIST 60 k / 10 k, 784-300-1; target ≥ 0.972;
* ``mnist10``: MNIST 10 classes, 784-300-10; target ≥ 0.955.

Run (one job at a time on this 2-core machine)::

    python benchmarks/solver_accuracy.py --solver gauss-newton --out benchmarks/results/solver_accuracy_gn.json

HIGGS stores come from ``higgs_like.py`` (``--higgs-train``, ``--higgs-test``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import provenance, write_results  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.reference import fit_in_memory  # noqa: E402

MNIST = ROOT.parent / "shared" / "data" / "mnist70k_uint8.npz"
TASKS = {
    # name: (hidden, target accuracy, iterations, per-task settings)
    "higgs1": ((300,), 0.768, 3, {}),
    "higgs2": ((300, 300), 0.76, 10, {}),
    "mnist-oddeven": ((300,), 0.972, 15, {"scaling": "global", "ridge": 0.1}),
    "mnist10": ((300,), 0.955, 15, {"scaling": "global", "ridge": 0.1}),
}


def load(task: str, args):
    if task.startswith("higgs"):
        import zarr

        tr, te = zarr.open_group(args.higgs_train, mode="r"), zarr.open_group(args.higgs_test, mode="r")
        return tr["X"][: args.higgs_n], tr["y"][: args.higgs_n], te["X"][...], te["y"][...]
    with np.load(MNIST) as f:
        X, y = f["X"].astype(np.float32), f["y"]
    if task == "mnist-oddeven":
        y = y % 2
    return X[:60000], y[:60000], X[60000:], y[60000:]


def run(task: str, args) -> dict:
    hidden, target, iterations, settings = TASKS[task]
    X, y, Xt, yt = load(task, args)
    cfg = TrainConfig(solver=args.solver, hidden=hidden, iterations=args.iterations or iterations,
                      validation_fraction=args.validation_fraction, patience=args.patience, **settings)
    print(f"{task}: {X.shape[0]} train rows, {Xt.shape[0]} test rows, {cfg}", flush=True)
    t0 = time.perf_counter()
    result = fit_in_memory(X, y, cfg, X_test=Xt, y_test=yt, callback=lambda h: print(
        f"  it {h['iteration']:3d} {h['seconds']:7.1f}s train {h['train_accuracy']:.4f} "
        f"valid {h.get('validation_accuracy', float('nan')):.4f} test {h['test_accuracy']:.4f}", flush=True))
    seconds = time.perf_counter() - t0
    best = result.best_iteration
    test = result.network.score(Xt, yt)
    return {"task": task, "hidden": list(hidden), "target": target, "settings": cfg.to_dict(),
            "n_train": int(X.shape[0]), "n_test": int(Xt.shape[0]), "best_iteration": best,
            "test_accuracy": test, "met": bool(test >= target), "seconds": seconds, "history": result.history}


def markdown(res: dict) -> str:
    lines = [f"# Solver accuracy with early stopping: {res['solver']}", "",
             f"`{res['provenance']['command']}` — {res['provenance']['date']}, {res['provenance']['cpus']} cores.",
             f"Validation: {res['validation_fraction']} of the training chunks held out, patience "
             f"{res['patience']}; the test split is unseen during training.", "",
             "| task | layers | settings | iterations run | model from iteration | test accuracy | target | met | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        s = r["settings"]
        lines.append(f"| {r['task']} | {'-'.join(map(str, r['hidden']))} | scaling {s['scaling']}, ridge {s['ridge']}"
                     f" | {len(r['history'])} | {r['best_iteration']} | {r['test_accuracy']:.4f} | {r['target']} | "
                     f"{'yes' if r['met'] else 'no'} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--solver", default="gauss-newton")
    p.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--iterations", type=int, default=None, help="override the per-task iteration cap")
    p.add_argument("--validation-fraction", type=float, default=0.1)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--default-settings", action="store_true", help="ignore the per-task settings")
    p.add_argument("--higgs-train", default="/work/bench/higgs-1000000.zarr")
    p.add_argument("--higgs-test", default="/work/bench/higgs-test.zarr")
    p.add_argument("--higgs-n", type=int, default=1_000_000)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "solver_accuracy.json"))
    args = p.parse_args(argv)
    if args.default_settings:
        for name, (h, t, it, _) in list(TASKS.items()):
            TASKS[name] = (h, t, it, {})
    res = {"provenance": provenance(), "solver": args.solver, "validation_fraction": args.validation_fraction,
           "patience": args.patience, "runs": []}
    for task in args.tasks:
        res["runs"].append(run(task, args))
        write_results(args.out, res, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
