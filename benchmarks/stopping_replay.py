"""Early-stopping rules replayed on full training curves of our defaults, on validation splits.

Each (task, seed) is trained once with ``patience=0`` for ``--iterations``
(defaults otherwise; the task's validation split, :func:`benchmarks.defaults_real.load_task`
with ``split="validation"``, is the scored split, never the test split). The
recorded curves (held-out accuracy and loss, validation-split accuracy) are then
replayed through two stopping rules with patience 10:

* ``acc``: patience counts iterations without a gain in held-out accuracy
  (ties broken by a lower held-out loss): the rule before session 5;
* ``acc|loss``: a new lowest held-out loss also restarts patience
  (:class:`solvers.validation.EarlyStopping` since session 5).

The model is the best held-out-accuracy iteration under both. Reported per
rule and budget: validation-split accuracy of the model and the iteration the
run stopped at, and the drift (best validation-split accuracy seen up to the
stop minus the model's).

Run::

    python benchmarks/stopping_replay.py --tasks covtype digits breast-cancer --seeds 0 1 2 \
        --out benchmarks/results/stopping_replay.json
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

from benchmarks.bench_util import parse_settings, provenance  # noqa: E402
from benchmarks.defaults_real import load_task  # noqa: E402

FIELDS = ("iteration", "validation_accuracy", "validation_loss", "test_accuracy", "train_accuracy", "alpha",
          "accepted")


def curve(task: str, seed: int, iterations: int, solver: str, settings: dict) -> list:
    """Return the per-iteration records of one run with patience 0 (``test_accuracy``: the validation split)."""
    from solvers.config import TrainConfig
    from solvers.reference import fit_in_memory

    Xtr, ytr, Xva, yva, _ = load_task(task, "validation", seed)
    cfg = TrainConfig(solver=solver, hidden=(300,), iterations=iterations, seed=seed, patience=0, **settings)
    r = fit_in_memory(Xtr, ytr, cfg, X_test=Xva, y_test=yva)
    return [{k: h.get(k) for k in FIELDS} for h in r.history]


def replay(history: list, rule: str, budget: int, patience: int = 10) -> tuple[float, int, float]:
    """Return (model's validation-split accuracy, iteration stopped at, best validation-split accuracy seen)."""
    best = best_loss = lowest = None
    best_it = lowest_it = 0
    it = 0
    for r in history[:budget]:
        it, score, loss = r["iteration"], r["validation_accuracy"], r.get("validation_loss")
        tie = best is not None and score == best and loss is not None and best_loss is not None and loss < best_loss
        if best is None or score > best or tie:
            best, best_it, best_loss = score, it, loss
        if loss is not None and (lowest is None or loss < lowest):
            lowest, lowest_it = loss, it
        if it - (best_it if rule == "acc" else max(best_it, lowest_it)) >= patience:
            break
    return history[best_it - 1]["test_accuracy"], it, max(h["test_accuracy"] for h in history[:it])


def markdown(results: dict, budgets) -> str:
    lines = ["# Early-stopping rules replayed on validation splits", "",
             "Written by `benchmarks/stopping_replay.py` (see its docstring). Commands:", ""]
    lines += [f"- `{p['command']}` ({p['date']}, {p['cpus']} CPUs)" for p in results.get("provenance", [])]
    lines += ["", "| task | budget | rule | mean accuracy | per seed: accuracy @ stop | worst drift |",
              "|---|---|---|---|---|---|"]
    runs = results["runs"]
    for task in sorted({k.split("/")[0] for k in runs}):
        keys = sorted(k for k in runs if k.startswith(task + "/"))
        for budget in budgets:
            for rule in ("acc", "acc|loss"):
                v = [replay(runs[k], rule, budget) for k in keys]
                lines.append(f"| {task} | {budget} | {rule.replace('|', ' or ')} | {np.mean([a for a, _, _ in v]):.4f} | "
                             + " ".join(f"{a:.4f} @ {i}" for a, i, _ in v)
                             + f" | {max(m - a for a, _, m in v):.4f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["covtype", "digits", "breast-cancer"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--budgets", nargs="+", type=int, default=[30, 100])
    p.add_argument("--solver", default="gauss-newton")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a TrainConfig setting")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    settings = parse_settings(args.set)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    results.setdefault("provenance", []).append(provenance())
    for task in args.tasks:
        for seed in args.seeds:
            key = f"{task}/{seed}"
            if key in results["runs"]:
                continue
            t0 = time.perf_counter()
            results["runs"][key] = curve(task, seed, args.iterations, args.solver, settings)
            print(f"{key}: {time.perf_counter() - t0:.0f} s", flush=True)
            out.write_text(json.dumps(results, indent=1, default=float))
    out.write_text(json.dumps(results, indent=1, default=float))
    out.with_suffix(".md").write_text(markdown(results, args.budgets))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
