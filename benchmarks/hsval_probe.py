"""Paired-seed validation of ``hs2@1`` (the held-out step length at Gauss-Newton's iteration 1) under the default
``--hidden-alpha auto`` (the probe) — session 15, helper hsval, issue 21 point 7.

``hs2@1``: at iteration 1 only, the hidden trial is evaluated at step length t = 1 and t = 2 (``W + t (T − W)``) and
the one whose refitted output layer has the lower loss on the fit's own held-out rows is kept (k10_s14.md §4). Each
seed runs two arms on the same rows:

* ``stock``: the stock solver with ``TrainConfig`` defaults (``--hidden-alpha auto``: the probe for Gauss-Newton alone);
* ``hs2@1``: the same with the held-out step length at iteration 1, by one of two implementations (``--impl``):
  ``prototype`` (``benchmarks/k10_heldstep.py``'s :class:`HeldStepSolver` registered as ``gauss-newton`` for the fit;
  under the probe its ``_evaluate`` runs for each candidate, so readout and pinned each make the choice) or
  ``setting`` (helper step15's ``TrainConfig(step_choice="held-out")``, once it exists on this branch).

``--hidden-alpha readout`` runs both arms under readout instead (k10's protocol; the stock arm is then named
``readout``, as k10's runs files name it). Tasks and their rows are ``benchmarks/hidden_alpha_factor.py``'s ``load``
(validation rows only; the test split is never loaded): ``defaults_real.py``'s small tasks on their validation
split, the HIGGS-shaped 3k/9k, MNIST 10-class / odd-even 60k (rows 50,000-59,999 validate).

Run (one JSON line per fit appended to ``--out``), then the per-task tables::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 nice -n 15 python benchmarks/hsval_probe.py covtype --seeds 0 1 \\
        --out /tmp/hsval/probe.jsonl
    python benchmarks/hsval_probe.py summary /tmp/hsval/probe.jsonl [--json out.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from solvers import SOLVERS  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from benchmarks.bench_util import HISTORY_KEYS, fit_validation_run, run_arms  # noqa: E402
from benchmarks.hidden_alpha_factor import TARGETS, seed_loader  # noqa: E402
from benchmarks.k10_heldstep import HeldStepSolver  # noqa: E402
from solvers.gauss_newton import GaussNewtonSolver  # noqa: E402

KEYS = (*HISTORY_KEYS, "hidden_pinned", "validation_loss", "race_validation_loss", "step_length", "step_held_losses")


class LoggedHeldStep(HeldStepSolver):
    """k10's prototype, its log entries tagged with the candidate that made the choice (the probe runs both)."""

    factors, early, log = (1.0, 2.0), 1, []

    def _evaluate(self, runner, state):
        n = len(type(self).log)
        out = super()._evaluate(runner, state)
        for entry in type(self).log[n:]:
            entry["pinned"] = bool(self.pinned)
        return out


class ProbeFirstStepChoice(GaussNewtonSolver):
    """``hs2@1p`` (run with ``step_choice="held-out"``): the probe decides on the stock (t = 1) trials, then the
    winner keeps its held-out step length (step15's choice, pinned rows and all).

    :meth:`_evaluate` at a choosing iteration returns the stock step (what ``hidden_race._probe`` reads: ``accepted``
    and the held-out loss) with the chosen step beside it (``alt``) when the choice is t ≠ 1 (t = 1: the chosen step,
    bitwise the stock one); :meth:`_finish` finishes ``alt`` when there is one. Without the probe (``_advance`` =
    ``_finish(_evaluate())``) it is ``step_choice="held-out"`` plus one pass A.
    """

    _stock_only = False

    def _chooses_step(self, runner, k):
        return not self._stock_only and super()._chooses_step(runner, k)

    def _evaluate(self, runner, state):
        state = self.prepare(runner, state)
        chosen = super()._evaluate(runner, state)
        if chosen.get("step_choice") is None or float(chosen["step_choice"][0]) == 1.0:
            return chosen
        self._stock_only = True
        try:
            stock = super()._evaluate(runner, state)
        finally:
            self._stock_only = False
        stock["alt"] = chosen
        return stock

    def _finish(self, runner, step):
        return super()._finish(runner, step.get("alt", step))


STEP_CHOICE = "held-out"  # the step_choice setting of the hs2@1 (--impl setting) and hs2@1p arms (step16_t15.py: held-out-1.5)


def fit_arm(task, Xtr, ytr, Xva, yva, arm, seed, a) -> dict:
    kw = {"chunk_rows": a.chunk_rows} if a.chunk_rows else {}
    cfg = TrainConfig(solver="gauss-newton", seed=seed, iterations=a.iterations, hidden_alpha=a.hidden_alpha)
    log: list = []
    stock = SOLVERS["gauss-newton"]
    if (arm == "hs2@1" and a.impl == "setting") or arm == "hs2@1p":
        if "step_choice" not in {f.name for f in dataclasses.fields(TrainConfig)}:
            raise SystemExit("--impl setting: this branch's TrainConfig has no step_choice (rebase on integrate)")
        cfg = dataclasses.replace(cfg, step_choice=STEP_CHOICE)
        if arm == "hs2@1p":
            SOLVERS["gauss-newton"] = ProbeFirstStepChoice
    elif arm == "hs2@1":
        SOLVERS["gauss-newton"] = type("HS21", (LoggedHeldStep,), {"log": log})
    try:
        fit = fit_validation_run(Xtr, ytr, Xva, yva, cfg, TARGETS.get(task), keys=KEYS, **kw)
    finally:
        SOLVERS["gauss-newton"] = stock
    r = fit.pop("result")
    note = getattr(r, "note", None) or getattr(getattr(r, "solver", None), "note", None)
    name = arm if arm != "stock" or a.hidden_alpha == "auto" else a.hidden_alpha
    impl = {"stock": "stock", "hs2@1": a.impl, "hs2@1p": "setting"}[arm]
    return {"task": task, "arm": name, "impl": impl, "hidden_alpha": a.hidden_alpha,
            "seed": seed, "iterations": a.iterations, "chunk_rows": a.chunk_rows, "target": TARGETS.get(task),
            "n_val": int(len(yva)), "n_train": int(len(ytr)), **fit, "choices": log, "note": note}


def line(rec: dict) -> str:
    h = rec["history"]
    return (f"{rec['task']} seed {rec['seed']} {rec['arm']}/{rec['impl']}: kept {rec['kept']:.4f} "
            f"(it {rec['best_iteration']}/{rec['iterations_run']}) it1-3 {[round(x['eval_accuracy'], 4) for x in h[:3]]} "
            f"pinned {h[0].get('hidden_pinned')} choices {[(c['iteration'], c.get('pinned'), c['chosen']) for c in rec['choices']]}"
            f" step_length {h[0].get('step_length')} wall {rec['wall']:.0f}s load {rec['load']:.1f}")


def mean_se(d):
    d = np.asarray(d, float)
    return float(d.mean()), (float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan"))


def chosen_t(rec: dict):
    """Return the t iteration 1 kept for the reported candidate (prototype: its log; setting: the metric)."""
    h0 = rec["history"][0] if rec["history"] else {}
    if h0.get("step_length") is not None:
        return float(h0["step_length"])
    pinned = bool(h0.get("hidden_pinned") or 0.0)
    ts = [c["chosen"] for c in rec["choices"] if c["iteration"] == 1 and c.get("pinned", False) == pinned]
    return ts[-1] if ts else None


def same_run(a: dict, b: dict) -> bool:
    """Return whether two runs report the same iterations (every history entry but the seconds and the probe loser's
    held-out loss) and the same kept model's accuracy: the stock run bit for bit, as far as the record shows."""
    def strip(r):
        skip = ("seconds", "race_validation_loss", "step_length", "step_held_losses")
        return [{k: v for k, v in h.items() if k not in skip} for h in r["history"]]
    return strip(a) == strip(b) and a["kept"] == b["kept"]


def summary(argv) -> dict:
    p = argparse.ArgumentParser(prog="hsval_probe.py summary")
    p.add_argument("runs", nargs="+")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    runs = [json.loads(x) for path in a.runs for x in open(path) if x.strip()]
    out = {}
    groups = sorted({(r["task"], r["hidden_alpha"], r["iterations"], r["arm"], r["impl"]) for r in runs
                     if r["arm"].startswith("hs2@1")})
    for task, ha, its, arm_name, impl in groups:
        base_arm = "stock" if ha == "auto" else ha
        base = {r["seed"]: r for r in runs if r["task"] == task and r["hidden_alpha"] == ha and r["arm"] == base_arm
                and r["iterations"] == its}
        arm = {r["seed"]: r for r in runs if r["task"] == task and r["hidden_alpha"] == ha and r["arm"] == arm_name
               and r["iterations"] == its and r["impl"] == impl}
        seeds = sorted(set(base) & set(arm))
        if not seeds:
            continue
        d = [arm[s]["kept"] - base[s]["kept"] for s in seeds]
        row = 1.0 / arm[seeds[0]]["n_val"]
        m, se = mean_se(d)
        ts = [chosen_t(arm[s]) for s in seeds]
        bitwise = [same_run(arm[s], base[s]) for s in seeds]
        tgt = arm[seeds[0]]["target"]

        def first(r, tgt=tgt):
            return next((h["iteration"] for h in r["history"] if h["eval_accuracy"] >= tgt), None)
        per_it = {}
        for it in (1, 2, 3, 5, 10, 20, 40):
            dd = [arm[s]["history"][it - 1]["eval_accuracy"] - base[s]["history"][it - 1]["eval_accuracy"]
                  for s in seeds if len(arm[s]["history"]) >= it and len(base[s]["history"]) >= it]
            if dd:
                per_it[it] = {"mean": float(np.mean(dd)), "wins": sum(x > 0 for x in dd), "losses": sum(x < 0 for x in dd),
                              "n": len(dd)}
        key = f"{task} | {ha} | {its} it | {arm_name} | {impl}"
        out[key] = {
            "seeds": seeds, "n_val": arm[seeds[0]]["n_val"], "one_row": row,
            "t_at_1": ts, "t2_count": sum(t == 2.0 for t in ts),
            "pinned_stock": [base[s]["history"][0].get("hidden_pinned") for s in seeds],
            "pinned_arm": [arm[s]["history"][0].get("hidden_pinned") for s in seeds],
            "bitwise": bitwise, "probe_flips": [s for s in seeds if base[s]["history"][0].get("hidden_pinned")
                                                != arm[s]["history"][0].get("hidden_pinned")],
            "stock_kept_mean": float(np.mean([base[s]["kept"] for s in seeds])),
            "delta": d, "delta_mean": m, "delta_se": se, "wins": sum(x > 0 for x in d), "losses": sum(x < 0 for x in d),
            "ties": sum(x == 0 for x in d), "hurts_gt_one_row": [s for s, x in zip(seeds, d) if x < -row - 1e-12],
            "per_iteration": per_it,
            "target": tgt, "target_iteration": ([(first(base[s]), first(arm[s])) for s in seeds] if tgt else None),
        }
        o = out[key]
        print(f"\n{key}: seeds {seeds}; t=2 at it 1 in {o['t2_count']}/{len(seeds)} ({ts}); bitwise stock "
              f"{sum(bitwise)}/{len(seeds)}; probe's choice changed on seeds {o['probe_flips']} (pinned: stock "
              f"{sum(bool(x) for x in o['pinned_stock'])}, arm {sum(bool(x) for x in o['pinned_arm'])} of {len(seeds)})")
        print(f"  kept: stock mean {o['stock_kept_mean']:.4f}; arm − stock {m:+.4f} ± {se:.4f} "
              f"({o['wins']} W / {o['losses']} L / {o['ties']} T); one row = {row:.4f}; worse than one row: "
              f"{o['hurts_gt_one_row']}")
        print("  per seed: " + ", ".join(f"{s}:{x:+.4f}" for s, x in zip(seeds, d)))
        for it, v in per_it.items():
            print(f"  it {it}: {v['mean']:+.4f} ({v['wins']}/{v['losses']} of {v['n']})")
        if tgt:
            print(f"  {tgt} at iteration stock → arm: {o['target_iteration']}")
    if a.json:
        Path(a.json).write_text(json.dumps({"summary": out, "runs": runs}, indent=1))
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["summary"]:
        summary(argv[1:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--arms", nargs="+", default=["stock", "hs2@1"], choices=("stock", "hs2@1", "hs2@1p"))
    p.add_argument("--hidden-alpha", default="auto", choices=("auto", "readout"))
    p.add_argument("--impl", default="prototype", choices=("prototype", "setting"))
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--chunk-rows", type=int, default=None)
    p.add_argument("--higgs", default=None)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    run_arms(a.seeds, a.arms, seed_loader(a.task, a.higgs),
             lambda Xtr, ytr, Xva, yva, arm, seed: fit_arm(a.task, Xtr, ytr, Xva, yva, arm, seed, a), a.out, line)


if __name__ == "__main__":
    main()
