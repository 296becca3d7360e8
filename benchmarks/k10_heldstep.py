"""Held-out step length for Gauss-Newton's first iterations (issue 21 pt 7; session 14, helper k10): a screen.

``k10_kfac_diag.py`` found that the hidden step K-FAC takes is about 1.5× too short on MNIST 10-class 60k at
iteration 1 (its damping's α cross terms), while a longer step loses where it overfits (MNIST 10-class 2k) or where
it overshoots (odd/even 60k iteration 2, kout_early_s12.md). A fixed η cannot tell these apart; the held-out rows
can. :class:`HeldStepSolver` evaluates, in iterations 1..``early``, the trial at step lengths ``t ∈ factors``
(``W + t (T − W)``; t = 1 is the stock trial) with pass A each, and keeps the one with the least held-out loss (the
output layer refitted at its α auto, as always); the LM test then judges the kept trial as usual. Nothing else
changes. Without held-out rows it is the stock solver. The prototype runs one pass A per candidate plus the stock
pass A of the kept trial (in memory, for iterations and accuracy; not for timing).

Run (one JSON line per fit; the stock arm of each task is in session 12's runs files, bitwise)::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 nice -n 15 python benchmarks/k10_heldstep.py mnist10 --seeds 0 1 \\
        --factors 1.5 2 --early 2 --iterations 4 --chunk-rows 8192 --out /tmp/k10/hs.jsonl
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

from solvers import SOLVERS  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.gauss_newton import GaussNewtonSolver  # noqa: E402
from solvers.loop import LoopState, run_pass_held_out  # noqa: E402
from benchmarks.bench_util import fit_validation_run  # noqa: E402
from benchmarks.hidden_alpha_factor import TARGETS, load  # noqa: E402


class HeldStepSolver(GaussNewtonSolver):
    """The stock solver whose first ``early`` trials take the step length of least held-out loss among ``factors``."""

    factors = (1.0, 2.0)
    early = 2
    log: list = []

    def _evaluate(self, runner, state):
        state = self.prepare(runner, state)
        k = state.iteration + 1
        if k > self.early or getattr(runner, "split", None) is None or self.cross_entropy:
            return super()._evaluate(runner, state)
        c = dict(state.carry)
        n_chunks = len(getattr(runner, "bounds", ()))
        m, window = int(c.get("sample_chunks", n_chunks)), int(c.get("sample_window", -1))
        base = [np.asarray(c[f"T{l}"], np.float64) for l in range(1, self.L)]
        olds = [np.asarray(W, np.float64) for W in state.weights[:-1]]
        tried = []
        for t in self.factors:
            trial = [W + t * (T - W) for W, T in zip(olds, base)]
            sums, held = run_pass_held_out(runner, self.forward_layout(False), "forward_chunk",
                                           self._forward_params(trial, False, c), k, **self._sample(runner, m, window))
            W_out, error, alpha = self.output_layer(sums, held, c)
            tried.append((self.held_loss(held, W_out, alpha, c), t, trial, alpha))
        loss, t, trial, alpha = min(tried, key=lambda x: (x[0], x[1]))
        type(self).log.append({"iteration": k, "chosen": t, "held_losses": {str(x[1]): x[0] for x in tried},
                               "alphas": {str(x[1]): x[3] for x in tried}})
        for l, W in enumerate(trial, start=1):
            c[f"T{l}"] = W
        return super()._evaluate(runner, LoopState(state.iteration, list(state.weights), c))



def summary(argv) -> None:
    """Pair runs files with stock runs (session 12's ``init_scale_classes_s12.json`` arm 1, ``kout_early_s12.json``
    arm base: bitwise the stock solver) by (task, seed); print kept and per-iteration differences."""
    p = argparse.ArgumentParser(prog="k10_heldstep.py summary")
    p.add_argument("runs", nargs="+")
    p.add_argument("--base", nargs="+", default=[str(ROOT / "benchmarks/results/init_scale_classes_s12.json"),
                                                  str(ROOT / "benchmarks/results/kout_early_s12.json")])
    a = p.parse_args(argv)
    base = {}
    for path in a.base:
        rows = json.load(open(path))["runs"] if path.endswith(".json") else [json.loads(x) for x in open(path) if x.strip()]
        for r in rows:
            if r.get("arm") in ("1", "base", "readout"):
                base[(r["task"], r["seed"])] = r
    runs = [json.loads(line) for path in a.runs for line in open(path) if line.strip()]
    runs = [r for r in runs if r["arm"] != "readout"]
    for task in sorted({r["task"] for r in runs}):
        rs = sorted((r for r in runs if r["task"] == task and (task, r["seed"]) in base), key=lambda r: r["seed"])
        print(f"\n{task}: {len(rs)} seeds paired ({[r['seed'] for r in rs]})")
        full = all(r["iterations"] >= base[(task, r["seed"])]["iterations"] for r in rs)
        if full:
            d = [r["kept"] - base[(task, r["seed"])]["kept"] for r in rs]
            print(f"  kept: base {np.mean([base[(task, r['seed'])]['kept'] for r in rs]):.4f}, arm − base "
                  f"{np.mean(d):+.4f} ± {np.std(d, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float('nan'):.4f} "
                  f"({sum(x > 0 for x in d)} wins / {sum(x < 0 for x in d)} losses); per seed "
                  + ", ".join(f"{x:+.4f}" for x in d))
        for it in (1, 2, 3, 4, 5, 10):
            d = [r["history"][it - 1]["eval_accuracy"] - base[(task, r["seed"])]["history"][it - 1]["eval_accuracy"]
                 for r in rs if len(r["history"]) >= it and len(base[(task, r["seed"])]["history"]) >= it]
            if d:
                print(f"  it {it}: arm − base {np.mean(d):+.4f} ({sum(x > 0 for x in d)}/{sum(x < 0 for x in d)}); "
                      + ", ".join(f"{x:+.4f}" for x in d))
        tgt = rs[0]["target"] if rs else None
        if tgt:
            hit = [(next((h["iteration"] for h in base[(task, r["seed"])]["history"] if h["eval_accuracy"] >= tgt), None),
                    next((h["iteration"] for h in r["history"] if h["eval_accuracy"] >= tgt), None)) for r in rs]
            print(f"  {tgt} at iteration base → arm: {hit}")
        print("  chosen t per iteration:", [[(c["iteration"], c["chosen"]) for c in r["choices"]] for r in rs])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["summary"]:
        return summary(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--factors", type=float, nargs="*", default=[2.0],
                   help="step lengths besides 1 (none: the stock solver with --hidden-alpha readout, arm 'readout')")
    p.add_argument("--early", type=int, default=2)
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--chunk-rows", type=int, default=None)
    p.add_argument("--higgs", default=None)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    factors = (1.0, *a.factors)
    cls = type("HeldStep", (HeldStepSolver,), {"factors": factors, "early": a.early, "log": []})
    arm = "hs" + "-".join(f"{f:g}" for f in a.factors) + f"@{a.early}" if a.factors else "readout"
    for seed in a.seeds:
        Xtr, ytr, Xva, yva, about = load(a.task, a.higgs, seed)
        cls.log = []
        stock = SOLVERS["gauss-newton"]
        SOLVERS["gauss-newton"] = cls if a.factors else stock
        try:  # readout: the probe's choice on MNIST every seed (gn10_s13.md); the race's candidates would both run this
            cfg = TrainConfig(solver="gauss-newton", seed=seed, iterations=a.iterations, hidden_alpha="readout")
            fit = fit_validation_run(Xtr, ytr, Xva, yva, cfg, TARGETS.get(a.task),
                                     **({"chunk_rows": a.chunk_rows} if a.chunk_rows else {}))
        finally:
            SOLVERS["gauss-newton"] = stock
        fit.pop("result")
        rec = {"task": a.task, "factor": 1.0, "early": 0, "arm": arm, "seed": seed, "iterations": a.iterations,
               "target": TARGETS.get(a.task), **fit, "choices": cls.log, "data": about, "argv": sys.argv[1:]}
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(arm, a.task, seed, round(rec["kept"], 4), [round(h["eval_accuracy"], 4) for h in rec["history"][:5]],
              [(x["iteration"], x["chosen"]) for x in cls.log], flush=True)


if __name__ == "__main__":
    main()
