"""Which Gauss-Newton iterate to keep as the model: selection rules, patience and iterate averages, measured offline.

For every task and seed (``benchmarks/defaults_real.py``'s tasks and splits;
use ``--split validation`` to tune) Gauss-Newton runs with its defaults for
``--iterations`` with early stopping's patience off, and every iteration's
weights, held-out accuracy and loss (the run's own held-out rows), and
evaluation-split accuracy are kept. Each rule then picks a model from that
record as if it had run during training (the patience is simulated: the rule
sees only the iterations up to where it would have stopped):

* ``acc``: the best held-out accuracy, ties by the lower held-out loss (the default);
* ``loss``: the least held-out loss;
* ``avgK``: the mean of the last K accepted iterates' weights up to the ``acc`` pick;
* ``last``: the last iteration (no early stopping).

Run::

    python benchmarks/gn_selection.py --split validation --seeds 0 1 2 --out benchmarks/results/gn_selection.json
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

from benchmarks.bench_util import CpuWatch, parse_settings, provenance, write_results  # noqa: E402
from benchmarks.defaults_real import load_task  # noqa: E402

TASKS = ("breast-cancer", "digits", "mnist-oddeven-2k", "mnist10-2k", "covtype")


def record_run(Xtr, ytr, Xev, yev, hidden, seed, iterations, settings):
    """Return per-iteration (held-out acc, held-out loss, eval acc, accepted, weights) of one patience-0 run."""
    from solvers.config import TrainConfig
    from solvers.reference import fit_in_memory

    cfg = TrainConfig(solver="gauss-newton", hidden=hidden, iterations=iterations, seed=seed, patience=0, **settings)
    nets = []

    def cb(record):
        pass

    t0 = time.perf_counter()
    import solvers.driver as driver

    orig = driver.drive

    def drive(solver, runner, keeper, config, *, evaluate, **kw):
        def ev(network):
            nets.append([np.array(W) for W in network.weights])
            return evaluate(network)
        return orig(solver, runner, keeper, config, evaluate=ev, **kw)

    import solvers.reference as reference
    reference.drive = drive
    try:
        r = fit_in_memory(Xtr, ytr, cfg, X_test=Xev, y_test=yev)
    finally:
        reference.drive = orig
    seconds = time.perf_counter() - t0
    return r, nets, seconds


def pick(history, rule, patience):
    """Return the index of the iteration ``rule`` keeps when training stops after ``patience`` without a gain."""
    best, best_key = None, None
    for i, h in enumerate(history):
        acc, loss = h["validation_accuracy"], h.get("validation_loss", 0.0)
        key = (acc, -loss) if rule == "acc" else (-loss,)
        if best is None or key > best_key:
            best, best_key = i, key
        if patience and i - best >= patience:
            break
    return best, i


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--split", choices=("test", "validation"), default="validation")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--hidden", default="300")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--solver-attr", action="append", default=[], metavar="NAME=VALUE",
                   help="tuning only: set a GaussNewtonSolver class attribute (e.g. alpha_tolerance=1)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from solvers.gauss_newton import GaussNewtonSolver
    for item in args.solver_attr:
        k, v = item.split("=", 1)
        setattr(GaussNewtonSolver, k, json.loads(v))
    settings = parse_settings(args.set)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    out = Path(args.out) if args.out else None
    results = json.loads(out.read_text()) if out and out.exists() else {"runs": {}}
    results.setdefault("provenance", []).append({**provenance(), "settings": settings,
                                                 "solver_attrs": args.solver_attr})
    for task in args.tasks:
        for seed in args.seeds:
            Xtr, ytr, Xev, yev, about = load_task(task, args.split, seed)
            with CpuWatch() as cpu:
                r, nets, seconds = record_run(Xtr, ytr, Xev, yev, hidden, seed, args.iterations, settings)
            hist = r.history
            from solvers.network import Network  # noqa: F401
            solver = r.solver
            row = {"seconds": seconds, "other_cpu_seconds": cpu.other,
                   "validation_accuracy": [h["validation_accuracy"] for h in hist],
                   "validation_loss": [h.get("validation_loss") for h in hist],
                   "eval_accuracy": [h["test_accuracy"] for h in hist],
                   "accepted": [bool(h.get("accepted", True)) for h in hist], "alpha": [h.get("alpha") for h in hist]}
            # iterate averages up to each iteration: the mean of the last K accepted iterates' weights
            for K in (3, 5):
                accs = []
                for i in range(len(hist)):
                    idx = [j for j in range(i + 1) if row["accepted"][j]][-K:] or [i]
                    W = [np.mean([nets[j][l] for j in idx], axis=0) for l in range(len(nets[i]))]
                    accs.append(float(solver.network(W, hist[i]).score(Xev, yev)))
                row[f"avg{K}_eval_accuracy"] = accs
            results["runs"].setdefault(task, {})[str(seed)] = row
            print(f"{task} seed {seed}: {seconds:.1f} s, eval acc last {row['eval_accuracy'][-1]:.4f}, "
                  f"max {max(row['eval_accuracy']):.4f}", flush=True)
            if out:
                out.write_text(json.dumps(results, indent=1, default=float))
    if out:
        write_results(out, results, markdown)


def summarise(results, patience=10, iterations=None):
    """Return {rule: {task: mean eval accuracy over seeds}} and drift (best eval seen − picked)."""
    table = {}
    for task, by_seed in results["runs"].items():
        for seed, row in by_seed.items():
            n = len(row["eval_accuracy"]) if iterations is None else min(iterations, len(row["eval_accuracy"]))
            hist = [{"validation_accuracy": row["validation_accuracy"][i], "validation_loss": row["validation_loss"][i]
                     or 0.0} for i in range(n)]
            for rule in ("acc", "loss", "avg3", "avg5", "last"):
                if rule == "last":
                    i, stop = n - 1, n - 1
                else:
                    i, stop = pick(hist, "loss" if rule == "loss" else "acc", patience)
                acc = row[f"{rule}_eval_accuracy"][i] if rule.startswith("avg") else row["eval_accuracy"][i]
                seen = max(row["eval_accuracy"][:stop + 1])
                table.setdefault(rule, {}).setdefault(task, []).append((acc, seen - acc, stop + 1))
    return table


def markdown(results: dict) -> str:
    lines = ["# Which Gauss-Newton iterate to keep (offline, from patience-0 runs)", "",
             "Written by `benchmarks/gn_selection.py` (see its docstring). Commands:", ""]
    for prov in results.get("provenance", []):
        lines.append(f"- `{prov['command']}` ({prov['date']}, {prov['cpus']} CPUs)")
    for patience in (10, 20):
        for iterations in (30, 60):
            t = summarise(results, patience, iterations)
            tasks = list(results["runs"])
            lines += ["", f"Patience {patience}, at most {iterations} iterations: mean evaluation accuracy over seeds "
                      "(mean drift below the best seen in brackets; mean iterations run)", "",
                      "| rule | " + " | ".join(tasks) + " | mean |", "|---|" + "---|" * (len(tasks) + 1)]
            for rule, by in t.items():
                cells = [f"{np.mean([a for a, _, _ in by[k]]):.4f} ({np.mean([d for _, d, _ in by[k]]):.4f}; "
                         f"{np.mean([s for _, _, s in by[k]]):.0f})" for k in tasks]
                mean = np.mean([np.mean([a for a, _, _ in by[k]]) for k in tasks])
                lines.append(f"| {rule} | " + " | ".join(cells) + f" | {mean:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
