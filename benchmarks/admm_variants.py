"""ADMM / dlADMM: paired validation-split runs of readout and split variants against today's defaults and logistic regression.

Issue 19 asks ADMM and dlADMM to reach ``LogisticRegression`` on every task and to end
within 0.005 of their best held-out accuracy. Each run here is
:func:`benchmarks.defaults_real.run_ours` (the in-memory reference, defaults, ``--hidden 300``,
budgets 20 / 30) on ``defaults_real.py``'s validation split of one task and seed, with one
variant's :class:`~solvers.config.TrainConfig` settings; every variant sees the same split
and seed, so the differences are paired. Variants:

* ``base``: the defaults;
* ``skip``: ``input_skip=True`` (the readout also reads the inputs: contains logistic regression);
* ``vf2``: ``validation_fraction=0.2`` (twice the held-out rows for choosing α and the iteration);
* ``skip_vf2``: both; ``forward``: ``init="forward"`` (He rows in place of data differences).

Per run the JSON keeps the evaluation accuracy, the best evaluation accuracy of any
iteration (``defaults_real.py``'s "best seen"), the model's iteration and the iterations run,
and per split logistic regression's accuracy. ``--summary`` prints the paired table. Run::

    python benchmarks/admm_variants.py --tasks breast-cancer digits --seeds 0 1 2 --variants base skip --out v.json
    python benchmarks/admm_variants.py --summary --out v.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import defaults_real as dr  # noqa: E402

VARIANTS = {"base": {}, "skip": {"input_skip": True}, "vf2": {"validation_fraction": 0.2},
            "skip_vf2": {"input_skip": True, "validation_fraction": 0.2}, "forward": {"init": "forward"}}


def run(tasks, seeds, variants, solvers, out: Path) -> dict:
    """Run every (task, seed, solver, variant) not yet in ``out``; write ``out`` after each run."""
    res = json.loads(out.read_text()) if out.exists() else {}
    for task in tasks:
        for seed in seeds:
            Xtr, ytr, Xte, yte, _ = dr.load_task(task, "validation", seed)
            r = res.setdefault(f"{task}/{seed}", {"n_eval": len(yte)})
            if "logreg" not in r:
                r["logreg"] = dr.run_peer("logreg", Xtr, ytr, Xte, yte, (300,), seed)["accuracy"]
            for s in solvers:
                for v in variants:
                    if f"{s}/{v}" in r:
                        continue
                    o = dr.run_ours(s, Xtr, ytr, Xte, yte, (300,), seed, dict(VARIANTS[v]))
                    r[f"{s}/{v}"] = {"acc": o["accuracy"], "best": o["best_accuracy_seen"], "it": o["best_iteration"],
                                     "run": o["iterations_run"]}
                    print(f"{task}/{seed} {s}/{v} {o['accuracy']:.4f} best seen {o['best_accuracy_seen']:.4f} "
                          f"logreg {r['logreg']:.4f}", flush=True)
                    out.write_text(json.dumps(res, indent=0))
    return res


def summary(res: dict) -> str:
    """Return per task and solver: each variant's mean accuracy, paired Δ in rows (± SE), wins/losses, runs below logreg, drift."""
    lines = ["| task | solver | splits | rows | variant | mean acc | Δ rows vs base (± SE) | wins / losses | < logreg | "
             "drift > 0.005 | logreg mean |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for task in sorted({k.split("/")[0] for k in res}):
        keys = [k for k in res if k.split("/")[0] == task]
        for s in ("admm", "dladmm"):
            for v in VARIANTS:
                have = [k for k in keys if f"{s}/{v}" in res[k] and f"{s}/base" in res[k]]
                if not have:
                    continue
                n = res[have[0]]["n_eval"]
                acc = np.array([res[k][f"{s}/{v}"]["acc"] for k in have])
                best = np.array([res[k][f"{s}/{v}"]["best"] for k in have])
                lr = np.array([res[k]["logreg"] for k in have])
                d = (acc - np.array([res[k][f"{s}/base"]["acc"] for k in have])) * n
                se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
                below = int(np.sum(acc < lr - 1e-9))
                lines.append(f"| {task} | {s} | {len(have)} | {n} | {v} | {acc.mean():.4f} | {d.mean():+.1f} ± {se:.1f} | "
                             f"{int((d > 0.5).sum())} / {int((d < -0.5).sum())} | {below} | {int((best - acc > 0.005).sum())} | "
                             f"{lr.mean():.4f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["breast-cancer", "digits"], choices=dr.TASKS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--solvers", nargs="+", default=["admm", "dladmm"], choices=["admm", "dladmm"])
    p.add_argument("--summary", action="store_true", help="print the paired table of --out and exit")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    if not args.summary:
        run(args.tasks, args.seeds, args.variants, args.solvers, out)
    print(summary(json.loads(out.read_text())))


if __name__ == "__main__":
    main()
