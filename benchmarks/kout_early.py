"""Gauss-Newton's early multi-output steps (issue 21 point 7): per-iteration diagnosis and levers, validation rows only.

Session 12, helper kout2. MNIST 10-class needs three iterations to 0.96 where odd/even needs one to 0.97. This script
runs :func:`solvers.reference.fit_in_memory` with the pipeline's chunking (``--chunk-rows``, 8,192 as the compare.py
stores, so the progressive sample grows 2 → 4 → all chunks as in the pipeline) and records per iteration the
validation-row accuracy, the fit's own held-out accuracy, α, accepted, λ, sample rows, seconds, and (the ``diag``
hooks of :class:`DiagnosedSolver`) the parts of the hidden step's damping: ``λ s̄`` and K-FAC's ``π√(αn)`` on the
curvature factor S, ``ε' ḡ`` and ``√(αn)/π`` on the input Gram, and the step's norm relative to W.

Arms (``--arms``; each a name from :data:`ARMS`): config settings and/or a registered subclass of the stock solver for
the duration of the fit only (as ``benchmarks/hidden_alpha_factor.py`` does). The hidden layers' α is NOT varied here
(helper earlyf's topic).

Tasks (the test split is never read):

* ``mnist10``, ``mnist-oddeven``: ``shared/data/mnist70k_uint8.npz``; training rows 0-49,999 train, rows
  50,000-59,999 are the validation rows scored (``eval``); the 10,000 test images are not loaded.
* ``higgs``: a HIGGS-shaped store of ``benchmarks/higgs_like.py`` (``--higgs``): rows 0 … ``--higgs-train`` − 1
  train, the next ``--higgs-val`` rows are the validation rows.

Run (one JSON line per fit appended to ``--out``), then the tables::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 nice -n 15 python benchmarks/kout_early.py run mnist10 --seeds 0 1 \\
        --arms base eta2 --iterations 4 --out /tmp/kout2/screen.jsonl
    python benchmarks/kout_early.py summary /tmp/kout2/screen.jsonl
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

from solvers import SOLVERS, data_init, gauss_newton as gn  # noqa: E402
from benchmarks.bench_util import HISTORY_KEYS, fit_validation_run, load_mnist_validation, mean_se, run_arms  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.gauss_newton import GaussNewtonSolver  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
TARGETS = {"mnist10": 0.96, "mnist-oddeven": 0.97, "higgs": 0.76}


class DiagnosedSolver(GaussNewtonSolver):
    """The stock solver that records the parts of each hidden step's damping (no arithmetic changed)."""

    diag: list = []

    def layer_step(self, l, W, D, S, G, damping, alpha, n):
        out = super().layer_step(l, W, D, S, G, damping, alpha, n)
        S, G = np.asarray(S, np.float64), np.asarray(G, np.float64)
        s_bar = max(float(np.mean(np.diag(S))), 1e-300)
        g_in = max(float(np.mean(np.diag(G)[:-1])), 1e-300)
        pi = np.sqrt(s_bar / g_in)
        root = np.sqrt(alpha * n) if alpha > 0 else 0.0
        eS = np.linalg.eigvalsh(S)
        W = np.asarray(W, np.float64)
        type(self).diag.append({"layer": l, "n": n, "alpha": alpha, "s_bar": s_bar, "lambda_s": damping * (s_bar + pi * root),
                                "kfac_S": pi * root, "g_bar": float(np.mean(np.diag(G))),
                                "kfac_G": root / pi if root else 0.0, "S_top": float(eS[-1]), "S_10": float(eS[-10]),
                                "S_11": float(eS[-11]) if len(eS) > 10 else None, "S_median": float(np.median(eS)),
                                "step_rel": float(np.linalg.norm(out - W) / np.linalg.norm(W))})
        return out


def _data_rows_subclass(Xtr):
    """Return a subclass whose hidden layer starts along differences of random training rows (ADMM's ``init=data``)."""

    class DataInit(DiagnosedSolver):
        def initial_hidden(self):
            weights = super().initial_hidden()
            k = weights[0].shape[0]
            rng = np.random.default_rng([self.config.seed, data_init.SEED_TAG])
            pick = rng.choice(len(Xtr), 2 * k, replace=False)
            rows = (np.asarray(Xtr[pick], np.float64) - self.x_mean) / self.x_scale
            weights[0] = data_init.first_layer(rows, weights[0], self.act.he_gain)
            return weights
    return DataInit


def _scaled_init_subclass(scale):
    class ScaledInit(DiagnosedSolver):
        def initial_hidden(self):
            return [W * scale for W in super().initial_hidden()]
    return ScaledInit


def _early_eta_subclass(factor, iterations):
    """Return a subclass whose trials made at iterations 0 … ``iterations`` − 1 (evaluated at 1 … ``iterations``) take
    ``factor`` × the stock step (η·factor: the step is linear in η), later ones the stock step."""

    class EarlyEta(DiagnosedSolver):
        def _with_trial(self, state):
            self._made_at = state.iteration
            return super()._with_trial(state)

        def trial_weights(self, weights, curv, input_gram, damping, alpha=0.0):
            trial = super().trial_weights(weights, curv, input_gram, damping, alpha)
            if getattr(self, "_made_at", 0) >= iterations:
                return trial
            return [W + factor * (T - W) for W, T in zip(weights, trial)]
    return EarlyEta


# name: (TrainConfig settings, subclass maker or None, module constants patched {name: value})
ARMS = {
    "base": ({}, None, {}),
    "eta1.5": ({"step_size": 1.5}, None, {}),
    "eta2": ({"step_size": 2.0}, None, {}),
    "eta3": ({"step_size": 3.0}, None, {}),
    "eta2first2": ({}, ("eta", 2.0, 2), {}),
    "eta2first3": ({}, ("eta", 2.0, 3), {}),
    "eta3first2": ({}, ("eta", 3.0, 2), {}),
    "eta1.5first2": ({}, ("eta", 1.5, 2), {}),
    "lam0.01": ({"damping": 0.01}, None, {}),
    "lam0.01s10": ({"damping": 0.01}, None, {"DAMPING_SHRINK": 10.0}),
    "lam0.001": ({"damping": 0.001}, None, {"DAMPING_FLOOR": 1e-3}),
    "datainit": ({}, "data", {}),
    "init0.5": ({}, 0.5, {}),
    "init0.25": ({}, 0.25, {}),
    "init2": ({}, 2.0, {}),
    "start32k": ({"sample_start": 32768}, None, {}),
    "start8k": ({"sample_start": 8192}, None, {}),
}


@contextmanager
def arm(name: str, Xtr):
    settings, sub, consts = ARMS[name]
    if sub is None:
        cls = DiagnosedSolver
    elif isinstance(sub, tuple):
        cls = _early_eta_subclass(sub[1], sub[2])
    elif sub == "data":
        cls = _data_rows_subclass(Xtr)
    else:
        cls = _scaled_init_subclass(float(sub))
    stock, saved = SOLVERS["gauss-newton"], {k: getattr(gn, k) for k in consts}
    SOLVERS["gauss-newton"] = cls
    for k, v in consts.items():
        setattr(gn, k, v)
    cls.diag = []
    try:
        yield settings, cls
    finally:
        SOLVERS["gauss-newton"] = stock
        for k, v in saved.items():
            setattr(gn, k, v)


def load(task: str, a):
    """Return (X_train, y_train, X_val, y_val, about); the test split is never loaded."""
    if task.startswith("mnist"):
        return load_mnist_validation(task, DATA)
    if task == "higgs":
        import zarr
        g = zarr.open_group(a.higgs, mode="r")
        n, v = a.higgs_train, a.higgs_val
        X, y = np.asarray(g["X"][:n + v], np.float32), np.asarray(g["y"][:n + v])
        return X[:n], y[:n], X[n:], y[n:], f"{a.higgs}: rows 0-{n - 1:,} train, {n:,}-{n + v - 1:,} validation"
    raise SystemExit(f"unknown task {task}")


def run_one(task, Xtr, ytr, Xva, yva, name, seed, iterations, target, chunk_rows) -> dict:
    with arm(name, Xtr) as (settings, cls):
        cfg = TrainConfig(solver="gauss-newton", seed=seed, iterations=iterations, **settings)
        fit = fit_validation_run(Xtr, ytr, Xva, yva, cfg, target, (*HISTORY_KEYS, "trial_loss", "objective"),
                                 chunk_rows=chunk_rows)
        diag = list(cls.diag)
    fit.pop("result")
    return {"task": task, "arm": name, "seed": seed, "iterations": iterations, "target": target,
            "chunk_rows": chunk_rows, **fit, "diag": diag[:12]}


def summary(argv) -> None:
    p = argparse.ArgumentParser(prog="kout_early.py summary")
    p.add_argument("runs", nargs="+")
    p.add_argument("--json", default=None)
    p.add_argument("--upto", type=int, default=4, help="iterations shown per run")
    a = p.parse_args(argv)
    runs = [json.loads(line) for f in a.runs for line in open(f) if line.strip()]
    print("| task | arm | seed | eval acc it 1..k | accepted | λ after | α | rows | target at | kept (it / run) | wall s | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(runs, key=lambda r: (r["task"], r["arm"] != "base", r["arm"], r["seed"])):
        h = r["history"][:a.upto]
        acc = ", ".join("%.4f" % x["eval_accuracy"] for x in h)
        yn = "".join("y" if x["accepted"] else "n" for x in h)
        lam = ", ".join("%.3g" % x["damping"] for x in h)
        alp = ", ".join("%.3g" % x["alpha"] for x in h)
        rws = ", ".join("%.0f" % x["sample_rows"] for x in h)
        print(f"| {r['task']} | {r['arm']} | {r['seed']} | {acc} | {yn} | {lam} | {alp} | {rws} | "
              f"{r['target_iteration'] or 'never'} | {r['kept']:.4f} ({r['best_iteration']} / {r['iterations_run']}) | "
              f"{r['wall']:.0f} | {r['load']:.1f} |")
    paired = {}
    for r in runs:
        paired.setdefault((r["task"], r["seed"], r["iterations"]), {})[r["arm"]] = r
    rows = []
    print("\n| task | arm | iterations run | seeds | eval acc arm − base at it 1, 2, 3 (mean ± s.e.) | kept: arm − base | "
          "wins / losses (kept) | target iteration: arm − base per seed |")
    print("|---|---|---|---|---|---|---|---|")
    for task in sorted({t for t, _, _ in paired}):
        for its in sorted({i for t, _, i in paired if t == task}):
            arms = sorted({x for (t, _, i), d in paired.items() if t == task and i == its for x in d if x != "base"})
            for name in arms:
                pairs = [(d["base"], d[name]) for (t, s, i), d in sorted(paired.items())
                         if t == task and i == its and "base" in d and name in d]
                if not pairs:
                    continue
                early = []
                for k in range(3):
                    diffs = [b["history"][k]["eval_accuracy"] - a_["history"][k]["eval_accuracy"] for a_, b in pairs
                             if len(a_["history"]) > k and len(b["history"]) > k]
                    early.append(mean_se(diffs))
                dk = [b["kept"] - a_["kept"] for a_, b in pairs]
                di = [(b["target_iteration"] or 99) - (a_["target_iteration"] or 99) for a_, b in pairs]
                rows.append({"task": task, "arm": name, "iterations": its, "seeds": [a_["seed"] for a_, _ in pairs],
                             "early_diff": early, "kept_diff": dk, "target_iteration_diff": di})
                print(f"| {task} | {name} | {its} | {len(pairs)} | {'; '.join(early)} | {mean_se(dk)} | "
                      f"{sum(d > 0 for d in dk)} / {sum(d < 0 for d in dk)} | {', '.join(f'{d:+d}' for d in di)} |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"paired": rows, "runs": runs}, fh, separators=(",", ":"))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["summary"]:
        return summary(argv[1:])
    if argv[:1] == ["run"]:
        argv = argv[1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("task", choices=sorted(TARGETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--arms", nargs="+", default=["base"], choices=sorted(ARMS))
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--chunk-rows", type=int, default=8192)
    p.add_argument("--target", type=float, default=None)
    p.add_argument("--higgs", default="/tmp/q/higgs-1000000-seed0.zarr")
    p.add_argument("--higgs-train", type=int, default=200000)
    p.add_argument("--higgs-val", type=int, default=50000)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    Xtr, ytr, Xva, yva, about = load(a.task, a)
    target = a.target if a.target is not None else TARGETS[a.task]
    run_arms(a.seeds, a.arms, lambda seed: (Xtr, ytr, Xva, yva, about),
             lambda Xtr, ytr, Xva, yva, name, seed: run_one(a.task, Xtr, ytr, Xva, yva, name, seed, a.iterations,
                                                            target, a.chunk_rows),
             a.out, lambda out: (f"{a.task} {out['arm']} seed {out['seed']}: eval "
                                 f"{[round(x['eval_accuracy'], 4) for x in out['history'][:5]]} kept {out['kept']:.4f} "
                                 f"(it {out['best_iteration']}/{out['iterations_run']}) target at "
                                 f"{out['target_iteration']} wall {out['wall']:.1f} s load {out['load']:.1f}"))


if __name__ == "__main__":
    main()
