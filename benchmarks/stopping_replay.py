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
    python benchmarks/stopping_replay.py --from-jsonl benchmarks/results/generalise_s10_runs.jsonl --budgets 100 \
        --out benchmarks/results/kept_model_s11.json   # session 10's recorded default curves, no training

The second table of the output replays kept-model rules (:func:`kept`) at today's stop.
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

FIELDS = ("iteration", "validation_accuracy", "validation_loss", "test_accuracy", "train_accuracy", "alpha",
          "accepted")


def curve(task: str, seed: int, iterations: int, solver: str, settings: dict) -> tuple[list, int]:
    """Return the per-iteration records of one run with patience 0 (``test_accuracy``: the validation split).

    and how many training rows the run held out for early stopping. ``higgs-N`` tasks are
    :func:`benchmarks.consensus_paired.load`'s (never tuned on by any stopping rule).
    """
    from benchmarks.consensus_paired import load
    from solvers.config import TrainConfig
    from solvers.reference import fit_in_memory
    from solvers.validation import make_split

    Xtr, ytr, Xva, yva = load(task, seed)
    cfg = TrainConfig(solver=solver, hidden=(300,), iterations=iterations, seed=seed, patience=0, **settings)
    r = fit_in_memory(Xtr, ytr, cfg, X_test=Xva, y_test=yva)
    split = make_split(cfg.validation_fraction, cfg.seed, len(ytr))
    return [{k: h.get(k) for k in FIELDS} for h in r.history], split.count(len(ytr))


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


PICKS = ("acc", "acc-first", "acc-last", "loss", "smooth3", "1se-loss", "last")


def kept(history: list, rule: str, stop: int, n_held: int) -> int:
    """Return the iteration a kept-model ``rule`` picks among iterations 1..``stop`` (held-out scores only).

    * ``acc``: best held-out accuracy, ties to the lower held-out loss (:class:`solvers.validation.EarlyStopping`);
    * ``acc-first``: best held-out accuracy, ties to the earliest iteration;
    * ``acc-last``: best held-out accuracy, ties to the latest iteration;
    * ``loss``: lowest held-out loss;
    * ``smooth3``: best mean held-out accuracy of the iteration and its neighbours (those run), ties as ``acc``;
    * ``1se-loss``: lowest held-out loss among the iterations whose held-out accuracy is within one standard
      error, ``sqrt(a (1 - a) / n_held)``, of the best ``a`` (the one-standard-error rule);
    * ``last``: the iteration the run stopped at (no choice; for reference).

    A run that recorded no held-out loss (consensus) gets ``acc`` for the two loss rules.
    """
    h = history[:stop]
    acc = np.array([r["validation_accuracy"] for r in h], float)
    loss = np.array([r.get("validation_loss") if r.get("validation_loss") is not None else np.inf for r in h], float)
    if rule in ("loss", "1se-loss") and not np.isfinite(loss).any():
        rule = "acc"  # the solver recorded no held-out loss (consensus): the loss rules are today's
    if rule == "acc":
        order = min(range(len(h)), key=lambda i: (-acc[i], loss[i], i))
    elif rule == "acc-first":
        order = max(range(len(h)), key=lambda i: (acc[i], -i))
    elif rule == "last":
        order = len(h) - 1
    elif rule == "acc-last":
        order = max(range(len(h)), key=lambda i: (acc[i], i))
    elif rule == "loss":
        order = int(np.argmin(loss))
    elif rule == "smooth3":
        sm = [acc[max(0, i - 1):i + 2].mean() for i in range(len(h))]
        order = min(range(len(h)), key=lambda i: (-round(sm[i], 12), loss[i], i))
    elif rule == "1se-loss":
        a = acc.max()
        near = np.flatnonzero(acc >= a - np.sqrt(a * (1 - a) / n_held) - 1e-12)
        order = int(near[np.argmin(loss[near])])
    else:
        raise ValueError(rule)
    return h[order]["iteration"]


def picks(results: dict, budget: int, patience: int = 10) -> dict:
    """Return {task: {rule: [(model's eval accuracy, drift below the best eval accuracy seen, iteration), ...]}}.

    Every rule stops where today's rule stops (``acc|loss`` patience); only the kept model differs.
    """
    out = {}
    for key, hist in results["runs"].items():
        task = key.split("/")[0]
        _, stop, best = replay(hist, "acc|loss", budget, patience)
        n_held = results.get("n_held", {}).get(key) or 1
        for rule in PICKS:
            it = kept(hist, rule, stop, n_held)
            a = hist[it - 1]["test_accuracy"]
            out.setdefault(task, {}).setdefault(rule, []).append((a, best - a, it))
    return out


def picks_markdown(results: dict, budget: int) -> list:
    """Return the lines of the kept-model table: per task and rule, accuracy and drift, paired against ``acc``."""
    lines = ["", f"Kept-model rules at budget {budget} (stop: today's patience 10 on accuracy or loss). Drift: best "
             "validation-split accuracy seen up to the stop minus the model's; paired: rule minus `acc` per seed.", "",
             "| task | rule | mean accuracy | paired Δ (wins/losses) | mean drift | worst drift | runs drift > 0.005 |",
             "|---|---|---|---|---|---|---|"]
    chosen = picks(results, budget)
    for task, by in [*sorted(chosen.items()), ("all", {rule: [x for by in chosen.values() for x in by[rule]]
                                                      for rule in PICKS})]:
        base = np.array([a for a, _, _ in by["acc"]])
        for rule in PICKS:
            a = np.array([x for x, _, _ in by[rule]])
            d = np.array([x for _, x, _ in by[rule]])
            diff = a - base
            lines.append(f"| {task} ({len(a)}) | {rule} | {a.mean():.4f} | {diff.mean():+.4f} "
                         f"({int((diff > 0).sum())}/{int((diff < 0).sum())}) | {d.mean():.4f} | {d.max():.4f} | "
                         f"{int((d > 0.005 + 1e-12).sum())} |")
    return lines


def from_jsonl(path: str, args=("patience=0",)) -> dict:
    """Return the runs (``{"task/seed": records}``) of a session-10 scratch file (``generalise_s10_runs.jsonl``).

    Its ``hist`` rows are [iteration, test (the validation split), held-out accuracy, train accuracy, α, damping,
    objective, held-out loss, accepted]; only the runs made with exactly ``args`` are taken.
    """
    runs = {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        if tuple(r["args"]) != tuple(args):
            continue
        runs[f"{r['task']}/{r['seed']}"] = [
            {"iteration": h[0], "test_accuracy": h[1], "validation_accuracy": h[2], "train_accuracy": h[3],
             "alpha": h[4], "validation_loss": h[7], "accepted": h[8]} for h in r["hist"]]
    return runs


def held_counts(runs: dict) -> dict:
    """Return how many training rows each run (``task/seed``) held out for early stopping, from its split's rule."""
    from benchmarks.consensus_paired import load
    from solvers.config import TrainConfig
    from solvers.validation import make_split

    n_train, counts = {"higgs3k": 3000, "higgs9k": 9000}, {}
    for key in runs:
        task, seed = key.split("/")
        if task not in n_train:
            n_train[task] = len(load(task, int(seed))[1])
        counts[key] = make_split(TrainConfig().validation_fraction, int(seed), n_train[task]).count(n_train[task])
    return counts


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
    for budget in budgets:
        lines += picks_markdown(results, budget)
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["covtype", "digits", "breast-cancer"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--budgets", nargs="+", type=int, default=[30, 100])
    p.add_argument("--solver", default="gauss-newton")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a TrainConfig setting")
    p.add_argument("--from-jsonl", default=None, metavar="FILE",
                   help="replay the default runs (patience=0) of a session-10 scratch file instead of training")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    settings = parse_settings(args.set)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results.setdefault("runs", {})  # a --from-jsonl output keeps the picks only
    results.setdefault("provenance", []).append(provenance())
    if args.from_jsonl:
        results["runs"].update(from_jsonl(args.from_jsonl))
        results["n_held"] = {**results.get("n_held", {}), **held_counts(results["runs"])}
        args.tasks = []
    for task in args.tasks:
        for seed in args.seeds:
            key = f"{task}/{seed}"
            if key in results["runs"]:
                continue
            t0 = time.perf_counter()
            results["runs"][key], results.setdefault("n_held", {})[key] = curve(task, seed, args.iterations,
                                                                               args.solver, settings)
            print(f"{key}: {time.perf_counter() - t0:.0f} s", flush=True)
            out.write_text(json.dumps(results, indent=1, default=float))
    saved = results if not args.from_jsonl else {  # the curves stay in the scratch file: keep what was picked
        "provenance": results["provenance"], "from_jsonl": args.from_jsonl, "n_held": results["n_held"],
        "picks": {str(b): picks(results, b) for b in args.budgets}}
    out.write_text(json.dumps(saved, indent=1, default=float))
    out.with_suffix(".md").write_text(markdown(results, args.budgets))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
