"""Gauss-Newton's hidden layers at a fraction F of the readout's α, on 60k data at convergence (validation only).

The question (session 11, issues 19 and 21): with ``--alpha auto`` the output layer's α is chosen on held-out rows
and the hidden layers take the same α (``--hidden-alpha readout``). Would a fraction ``F`` of it for the hidden layers
(session 10's ``ha=F`` of ``generalise_s10_exp.py.txt``: in their step, i.e. the gradient's ``−F α W̃`` and K-FAC's
``√(F α n)`` damping terms, AND in the objective the Levenberg–Marquardt test compares,
``E = error + α (‖W̃_L‖² + F Σ_{l<L} ‖W̃_l‖²)``) generalise as well or better and reach a target sooner?

``F = 1`` runs the stock :class:`solvers.gauss_newton.GaussNewtonSolver` (the default, bit for bit); any other F runs
:class:`HiddenAlphaFactorSolver`, a subclass registered under ``gauss-newton`` for the duration of the fit only.
An arm ``F@K`` (``--arms 0.1@2``) runs :class:`EarlyHiddenAlphaSolver`: F in iterations 1..K only, then the stock
rule, the current objective re-evaluated under the new F at the switch (session 12, ``hidden_alpha_early_s12.md``).
Besides the MNIST and HIGGS 1M tasks below: ``higgs3k`` / ``higgs9k`` (session 10's HIGGS-shaped protocol) and
``defaults_real.py``'s small tasks on their validation split (``covtype``, ``digits``, ``breast-cancer``, MNIST 2k).
``synth5`` (session 12): a 5-class ``make_classification`` set nobody tuned on (6,000 train / 2,000 validation rows).
An arm ``iC`` runs the stock solver with ``--init-scale C`` (``init_scale_classes_s12.md``).

Tasks (the test split is never read):

* ``mnist10``, ``mnist-oddeven``: ``shared/data/mnist70k_uint8.npz``; the first 50 000 training images train, the
  last 10 000 training images (rows 50 000-59 999) are the validation rows scored here; the 10 000 test images are
  not loaded. Raw uint8 pixels as float32, as ``benchmarks/defaults_real.py`` passes them (the model standardises).
* ``higgs1m``: a HIGGS-shaped store from ``benchmarks/higgs_like.py`` (``--higgs``): its first 900 000 rows train,
  the next 100 000 are the validation rows.

Each fit is :func:`solvers.reference.fit_in_memory` with the defaults (``TrainConfig``: 300 hidden units, α auto,
validation_fraction 0.1 held out of the training rows for α and early stopping, patience 10) except
``--iterations``; the validation rows above are passed as ``X_test`` (the fit never uses them to choose anything).
Per iteration it records the validation accuracy (``eval``), the fit's own held-out accuracy, α, accepted,
damping, sample rows and the driver's seconds of the iteration (solver work only: the initialisation and the
scoring of the validation rows are excluded). Reported per run: (a) ``kept``: the validation accuracy of the model the fit
returns (the default early stopping's choice), (b) the first iteration whose validation accuracy reaches
``--target`` (default 0.96 for mnist10, 0.97 for mnist-oddeven, 0.76 for higgs1m) and the seconds of the iterations
through it.

Run (one JSON line per fit appended to ``--out``), then the tables (per run, and F's runs minus F = 1's by seed)::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 nice -n 15 python benchmarks/hidden_alpha_factor.py mnist10 \\
        --seeds 0 1 --factors 1 0.1 --out /tmp/hafactor/runs.jsonl
    python benchmarks/hidden_alpha_factor.py summary /tmp/hafactor/runs.jsonl --json out.json > tables.md
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from solvers import SOLVERS  # noqa: E402
from benchmarks.bench_util import (first_hit, fit_validation_run, load_mnist_validation, mean_se, run_arms,  # noqa: E402
                                   seconds_to)
from solvers.config import TrainConfig  # noqa: E402
from solvers.gauss_newton import GaussNewtonSolver  # noqa: E402
from solvers.linalg import penalty  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
TARGETS = {"mnist10": 0.96, "mnist-oddeven": 0.97, "higgs1m": 0.76}
SMALL = ("digits", "breast-cancer", "covtype", "mnist-oddeven-2k", "mnist10-2k")  # defaults_real.py, --split validation
HIGGS_SMALL = {"higgs3k": 3000, "higgs9k": 9000}  # session 10's HIGGS-shaped protocol (generalise_s10_exp.py.txt)
HIGGS_SMALL_STORE = "/tmp/q/higgs-1000000-seed0.zarr"  # read only
SYNTH = {"synth5": 5}  # scikit-learn make_classification, nobody tuned on it (session 12, init_scale_classes_s12.md)


class HiddenAlphaFactorSolver(GaussNewtonSolver):
    """Gauss-Newton whose hidden layers take ``hidden_alpha_factor × α`` (the readout keeps α), in step and objective."""

    hidden_alpha_factor = 1.0

    def trial_weights(self, weights, curv: dict, input_gram, damping: float, alpha: float = 0.0) -> list:
        return super().trial_weights(weights, curv, input_gram, damping, self.hidden_alpha_factor * alpha)

    def objective(self, error: float, weights, alpha: float) -> float:
        F = self.hidden_alpha_factor
        return float(error) + float(alpha) * (penalty(weights[-1]) + F * sum(penalty(W) for W in weights[:-1]))


class EarlyHiddenAlphaSolver(HiddenAlphaFactorSolver):
    """F × α for the hidden layers in iterations 1..K only (``hidden_alpha_early`` = K), the readout's α from K + 1 on.

    "Iteration k uses F_k" means: the trial that iteration k evaluates is made at F_k·α (it is made when iteration
    k − 1 ends, or at the initialisation, or when a deferred pass B opens iteration k), and iteration k's
    Levenberg–Marquardt test compares ``E_{F_k}`` of that trial against ``E_{F_k}`` of the current weights.

    The current weights' objective (the carry's ``error``) was computed under the F of the iteration that stored it.
    When F changes (iteration K + 1), it is re-evaluated under the new F before any comparison: with the carry's
    α (the α ``error`` is at), ``E_{F'} = E_F + α (F' − F) Σ_{l<L} ‖W̃_l‖²`` of the current hidden weights (the error
    term and the readout's penalty do not depend on F). Without this, iteration K + 1 would compare the trial's
    E_1 against the current weights' E_F < E_1, and reject a step that lowers E_1. The F ``error`` is under is kept in
    the carry (``hidden_factor_of_error``), so nothing depends on the order of the calls. A new α at the test is
    already handled by :meth:`_current_objective` (it recomputes under :meth:`objective`, at the new F).
    """

    hidden_alpha_early = 0  # K; 0: every iteration (HiddenAlphaFactorSolver, bit for bit)
    _trial_F = _obj_F = None

    def factor_at(self, k: int) -> float:
        K = self.hidden_alpha_early
        return float(self.hidden_alpha_factor) if (K <= 0 or k <= K) else 1.0

    def trial_weights(self, weights, curv: dict, input_gram, damping: float, alpha: float = 0.0) -> list:
        return GaussNewtonSolver.trial_weights(self, weights, curv, input_gram, damping, self._trial_F * alpha)

    def objective(self, error: float, weights, alpha: float) -> float:
        F = self._obj_F
        return float(error) + float(alpha) * (penalty(weights[-1]) + F * sum(penalty(W) for W in weights[:-1]))

    def _with_trial(self, state):
        self._trial_F = self.factor_at(state.iteration + 1)  # the trial iteration state.iteration + 1 evaluates
        return super()._with_trial(state)

    def _retag(self, state):
        c = state.carry
        F_new, F_old = self._obj_F, float(c.get("hidden_factor_of_error", self._obj_F))
        if F_new != F_old:
            hidden = sum(penalty(W) for W in state.weights[:-1])
            c["error"] = np.float64(float(c["error"]) + float(c["alpha"]) * (F_new - F_old) * hidden)
        c["hidden_factor_of_error"] = np.float64(F_new)
        return state

    def initialize(self, runner, hidden=None, output=None, damping=None):
        self._obj_F = self.factor_at(1)  # the initial objective is what iteration 1's trial must beat
        state = super().initialize(runner, hidden, output, damping)
        state.carry["hidden_factor_of_error"] = np.float64(self._obj_F)
        return state

    def prepare(self, runner, state):
        self._obj_F = self.factor_at(state.iteration + 1)  # prepare opens iteration state.iteration + 1
        return super().prepare(runner, self._retag(state))

    def _advance(self, runner, state):
        new, metrics = super()._advance(runner, state)  # its prepare set _obj_F = F_k and re-evaluated ``error``
        new.carry["hidden_factor_of_error"] = np.float64(self._obj_F)  # accepted / current / pass B: all under F_k
        return new, {**metrics, "hidden_factor": self._obj_F}


def parse_arm(arm: str) -> tuple[float, int]:
    """``"F"``: F in every iteration; ``"F@K"``: F in iterations 1..K, then 1. Return (F, K) (K = 0: every iteration).
    ``"iC"`` (``--init-scale C``, F = 1) parses as (1, 0); :func:`parse_init` reads its C; so does any other arm
    named by a letter (``benchmarks/init_restore.py``'s ``rS@K``, ``nS@K``)."""
    if str(arm)[:1].isalpha():
        return 1.0, 0
    F, _, K = str(arm).partition("@")
    return float(F), int(K or 0)


def parse_init(arm: str) -> float:
    """The init scale of arm ``"iC"`` (C); 1 for every other arm."""
    return float(str(arm)[1:]) if str(arm).startswith("i") else 1.0


def arm_name(F: float, K: int) -> str:
    return f"{F:g}" if K <= 0 or F == 1.0 else f"{F:g}@{K}"


@contextmanager
def hidden_alpha_factor(F: float, K: int = 0):
    """Register the F (for iterations 1..K; K = 0: all) solver as ``gauss-newton`` inside the block (F = 1: stock)."""
    if F == 1.0:
        yield GaussNewtonSolver
        return
    stock = SOLVERS["gauss-newton"]
    if K > 0:
        cls = type(f"HiddenAlphaFactor{F:g}Early{K}", (EarlyHiddenAlphaSolver,),
                   {"hidden_alpha_factor": float(F), "hidden_alpha_early": int(K)})
    else:
        cls = type(f"HiddenAlphaFactor{F:g}", (HiddenAlphaFactorSolver,), {"hidden_alpha_factor": float(F)})
    SOLVERS["gauss-newton"] = cls
    try:
        yield cls
    finally:
        SOLVERS["gauss-newton"] = stock


def load(task: str, higgs: str | None, seed: int = 0):
    """Return (X_train, y_train, X_val, y_val, about); the test split is never loaded (small tasks: ``seed``'s split)."""
    if task in SMALL:
        from benchmarks.defaults_real import load_task
        return load_task(task, "validation", seed)[:5]
    if task in SYNTH:  # 10,000 rows (random_state 12); rows 8,000-9,999 are a test part never used
        from sklearn.datasets import make_classification
        X, y = make_classification(n_samples=10000, n_features=20, n_informative=12, n_redundant=4,
                                   n_classes=SYNTH[task], n_clusters_per_class=2, flip_y=0.02, random_state=12)
        idx = np.random.default_rng(300 + seed).permutation(8000)
        tr, va = idx[:6000], idx[6000:]
        return (X[tr].astype(np.float32), y[tr], X[va].astype(np.float32), y[va],
                f"make_classification(10000, 20 features, 12 informative, {SYNTH[task]} classes, random_state=12): "
                "6,000 of rows 0-7,999 train, the other 2,000 validate (rng 300+seed); rows 8,000-9,999 unused")
    if task in HIGGS_SMALL:  # n rows drawn with seed 200 + seed from rows 0-179,999; validation rows 180,000-199,999
        import zarr
        g = zarr.open_group(higgs or HIGGS_SMALL_STORE, mode="r")
        X, y = np.asarray(g["X"][:200000]), np.asarray(g["y"][:200000])
        idx = np.random.default_rng(200 + seed).permutation(180000)[:HIGGS_SMALL[task]]
        return (X[idx].astype(np.float32), y[idx], X[180000:200000].astype(np.float32), y[180000:200000],
                f"{higgs or HIGGS_SMALL_STORE}: {HIGGS_SMALL[task]} of rows 0-179,999 (rng 200+seed), "
                "validation rows 180,000-199,999")
    if task.startswith("mnist"):
        return load_mnist_validation(task, DATA)
    if task == "higgs1m":
        import zarr
        g = zarr.open_group(higgs, mode="r")
        X, y = np.asarray(g["X"][:1000000], np.float32), np.asarray(g["y"][:1000000])
        return X[:900000], y[:900000], X[900000:], y[900000:], f"{higgs}: rows 0-899,999 train, 900,000-999,999 validation"
    raise SystemExit(f"unknown task {task}")


def seed_loader(task: str, higgs: str | None):
    """Return ``load(seed)`` for :func:`benchmarks.bench_util.run_arms`: the small tasks' rows depend on the seed (loaded
    for each), the others' not (loaded once)."""
    loaded = {}

    def load_seed(seed):
        key = seed if task in SMALL or task in HIGGS_SMALL or task in SYNTH else None
        if key not in loaded:
            loaded.clear()
            loaded[key] = load(task, higgs, seed)
        return loaded[key]
    return load_seed


def result_line(out: dict) -> str:
    """Return the middle of a ``RESULT`` line: kept, its iteration, the max and the target's iteration."""
    return (f"kept {out['kept']:.4f} (it {out['best_iteration']}/{out['iterations_run']}) max {out['max_eval']:.4f} "
            f"target {out['target']} at it {out['target_iteration']}")


def run(task, Xtr, ytr, Xva, yva, F: float, seed: int, iterations: int, target: float | None, K: int = 0,
        init_scale: float = 1.0) -> dict:
    cfg = TrainConfig(solver="gauss-newton", seed=seed, iterations=iterations, init_scale=init_scale)
    with hidden_alpha_factor(F, K):
        fit = fit_validation_run(Xtr, ytr, Xva, yva, cfg, target)
    fit.pop("result")
    arm = f"i{init_scale:g}" if init_scale != 1.0 else arm_name(F, K)
    return {"task": task, "factor": F, "early": K, "init_scale": init_scale, "arm": arm, "seed": seed,
            "iterations": iterations, "target": target, **fit}


def summary(argv) -> None:
    """Print the per-run table and the paired differences (markdown) of runs files; ``--json``: write them too.

    Arms: ``F`` (every iteration) or ``F@K`` (iterations 1..K); each is paired by (task, seed) with the F = 1 run.
    A run found twice (same task, seed, arm, iterations) counts once (the first file's).
    """
    p = argparse.ArgumentParser(prog="hidden_alpha_factor.py summary")
    p.add_argument("runs", nargs="+")
    p.add_argument("--json", default=None)
    p.add_argument("--tasks", nargs="+", default=None)
    p.add_argument("--iterations", type=int, default=None, help="only runs of this many iterations")
    a = p.parse_args(argv)
    runs, seen = [], set()
    for path in a.runs:
        for line in open(path):
            if not line.strip():
                continue
            r = json.loads(line)
            r.setdefault("arm", arm_name(r["factor"], r.get("early", 0)))
            key = (r["task"], r["seed"], r["arm"], r["iterations"])
            if key in seen or (a.tasks and r["task"] not in a.tasks) or (a.iterations and r["iterations"] != a.iterations):
                continue
            seen.add(key)
            runs.append(r)
    for r in runs:  # recomputed from the history (runs written before the fix stored one iteration's seconds)
        hit = r["target"] is not None and first_hit(r["history"], r["target"]) or None
        r["target_iteration"], r["target_seconds"] = hit and hit["iteration"], hit and seconds_to(r["history"], hit)
    print("| task | seed | arm | kept (it / run) | max | target at it | s to target | α it 1-4 | α last | accepted | "
          "wall s | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(runs, key=lambda r: (r["task"], r["seed"], -r["factor"], r.get("early", 0))):
        h = r["history"]
        alphas = ", ".join(f"{x['alpha']:.3g}" for x in h[:4])
        acc = sum(bool(x["accepted"]) for x in h)
        ts = "-" if r["target_seconds"] is None else f"{r['target_seconds']:.1f}"
        tgt = "-" if r["target"] is None else (r["target_iteration"] or "never")
        print(f"| {r['task']} | {r['seed']} | {r['arm']} | {r['kept']:.4f} ({r['best_iteration']} / "
              f"{r['iterations_run']}) | {r['max_eval']:.4f} | {tgt} | {ts} | {alphas} | "
              f"{h[-1]['alpha']:.3g} | {acc}/{len(h)} | {r['wall']:.0f} | {r['load']:.1f} |")
    paired = {}
    for r in runs:
        paired.setdefault((r["task"], r["seed"]), {})[r["arm"]] = r
    rows = []
    for task in sorted({t for t, _ in paired}):
        arms = sorted({f for (t, _), d in paired.items() if t == task for f in d if f != "1"}, key=parse_arm)
        for arm in arms:
            pairs = [(d["1"], d[arm]) for (t, s), d in sorted(paired.items()) if t == task and "1" in d and arm in d]
            dk = [b["kept"] - a["kept"] for a, b in pairs]
            has_target = pairs and pairs[0][0]["target"] is not None
            di = [(b["target_iteration"] or 99) - (a["target_iteration"] or 99) for a, b in pairs] if has_target else []
            both = [(a, b) for a, b in pairs if a["target_seconds"] is not None and b["target_seconds"] is not None]
            dt = [b["target_seconds"] - a["target_seconds"] for a, b in both]
            rows.append({"task": task, "arm": arm, "factor": parse_arm(arm)[0], "early": parse_arm(arm)[1],
                         "seeds": [a["seed"] for a, _ in pairs], "kept_diff": dk,
                         "kept_default": [a["kept"] for a, _ in pairs], "kept_arm": [b["kept"] for _, b in pairs],
                         "target_iteration_default": [a["target_iteration"] for a, _ in pairs] if has_target else [],
                         "target_iteration_arm": [b["target_iteration"] for _, b in pairs] if has_target else [],
                         "target_iteration_diff": di, "target_seconds_diff": dt,
                         "wins": sum(d > 0 for d in dk), "losses": sum(d < 0 for d in dk)})
    print("\n| task | arm | seeds | kept default | kept: arm − default (mean ± s.e.) | wins / losses | per seed | "
          "target iteration default → arm (per seed) | seconds to target: arm − default |")
    print("|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        its = ", ".join(f"{d or '-'}→{b or '-'}" for d, b in zip(x["target_iteration_default"],
                                                                  x["target_iteration_arm"])) or "-"
        print(f"| {x['task']} | {x['arm']} | {len(x['seeds'])} | {np.mean(x['kept_default']):.4f} | "
              f"{mean_se(x['kept_diff'])} | {x['wins']} / {x['losses']} | "
              f"{', '.join(f'{d:+.4f}' for d in x['kept_diff'])} | {its} | "
              f"{', '.join(f'{d:+.1f}' for d in x['target_seconds_diff']) or '-'} |")
    print("\n| task | arm | iteration | seeds | default | arm | arm − default (mean ± s.e.) | wins / losses |")
    print("|---|---|---|---|---|---|---|---|")
    for x in rows:
        for it in (1, 2, 3, 5, 10, 20, 50, 100):
            pairs = [(d["1"], d[x["arm"]]) for (t, s), d in sorted(paired.items())
                     if t == x["task"] and "1" in d and x["arm"] in d]
            at = [(a_["history"][it - 1]["eval_accuracy"], b_["history"][it - 1]["eval_accuracy"]) for a_, b_ in pairs
                  if len(a_["history"]) >= it and len(b_["history"]) >= it]
            if not at:
                continue
            d = [v - u for u, v in at]
            print(f"| {x['task']} | {x['arm']} | {it} | {len(at)} | {np.mean([u for u, _ in at]):.4f} | "
                  f"{np.mean([v for _, v in at]):.4f} | {mean_se(d)} | {sum(v > 0 for v in d)} / {sum(v < 0 for v in d)} |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"paired": rows, "runs": runs}, fh, separators=(",", ":"))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["summary"]:
        return summary(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("task", choices=sorted([*TARGETS, *SMALL, *HIGGS_SMALL, *SYNTH]))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--factors", type=float, nargs="+", default=None, help="F in every iteration (old form of --arms)")
    p.add_argument("--arms", nargs="+", default=None,
                   help="F (every iteration) or F@K (F in iterations 1..K, then 1), or iC (--init-scale C, F = 1); "
                        "default: 1 0.1")
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--target", type=float, default=None)
    p.add_argument("--higgs", default=None, help="higgs1m: the HIGGS-shaped data store (>= 1,000,000 rows); "
                                                 f"higgs3k/9k: default {HIGGS_SMALL_STORE}")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    arms = [(*parse_arm(x), parse_init(x)) for x in (a.arms or [])] + [(F, 0, 1.0) for F in (a.factors or [])] \
        or [(1.0, 0, 1.0), (0.1, 0, 1.0)]
    target = a.target if a.target is not None else TARGETS.get(a.task)
    run_arms(a.seeds, arms, seed_loader(a.task, a.higgs),
             lambda Xtr, ytr, Xva, yva, arm, seed: run(a.task, Xtr, ytr, Xva, yva, arm[0], seed, a.iterations,
                                                       target, *arm[1:]),
             a.out, lambda out: (f"{a.task} seed {out['seed']} arm {out['arm']}: {result_line(out)} "
                                 f"({out['target_seconds'] and round(out['target_seconds'], 2)} s) wall "
                                 f"{out['wall']:.1f} s load {out['load']:.1f}"))


if __name__ == "__main__":
    main()
