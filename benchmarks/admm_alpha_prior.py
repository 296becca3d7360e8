"""ADMM / dlADMM: the logistic readout's α by held-out loss, against a prior α that held-out rows override only by > 1 SE.

Issue 19's miss (breast cancer below ``LogisticRegression``) was traced to the readout's α being chosen
on 36-46 held-out rows. Per ``defaults_real.py`` validation split (task, seed), the solver runs with its
defaults (in-memory reference, ``--hidden 300``, budgets 20 / 30; the model iteration by today's rule,
:class:`solvers.validation.EarlyStopping`). On the model iteration's hidden features ``F`` the exact L2
logistic readout ``Σℓ + α/2‖V‖²`` (bias free; scikit-learn's ``LogisticRegression(C = 1/α)``, softmax for
K > 2) is fitted on the solver's training rows for every second α of the readout's grid
(``ALPHA_GRID[1::2] · c ḡ``, :func:`solvers.readout.logistic_alphas`) and for two priors:

* ``abs``: α = 1, scikit-learn's default ``C = 1`` in the readout's units (its objective is ``C Σℓ + ½‖w‖²``);
* ``scaled``: α = ḡ / n (ḡ the mean diagonal of the centred training Gram, n the training rows): ``C = 1`` on
  features rescaled to unit mean variance, which is α = 1 on standardised inputs.

Choices, each scored on the evaluation (validation) split: ``held`` (least held-out Σℓ: today's criterion,
exact fit); ``fix_<prior>`` (the prior alone); ``1se_<prior>`` (the prior unless the best candidate's held-out
Σℓ is lower by more than the standard error ``√(m · var(ℓ_prior − ℓ_best))`` of that paired difference over
the m held-out rows); ``near_<prior>`` (of the candidates within one such SE of the best, the one nearest the
prior in log α, the prior included). The JSON also keeps ``today`` (the solver's own model) and ``logreg``.
Run::

    python benchmarks/admm_alpha_prior.py --tasks breast-cancer --seeds 0 1 2 --out prior.json
    python benchmarks/admm_alpha_prior.py --summary --out prior.json
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
from benchmarks.admm_readout_alo import fit as alo_fit, train_recorded  # noqa: E402

PRIORS = ("abs", "scaled")


def fit(F, y, alpha):
    """:func:`benchmarks.admm_readout_alo.fit` at this benchmark's solver tolerance (1000 iterations, tol 1e-6)."""
    return alo_fit(F, y, alpha, max_iter=1000, tol=1e-6)


def row_losses(m, F, y) -> np.ndarray:
    """Return each row's log-loss −log p(yᵢ) under the fit ``m`` (``y``: class indices)."""
    p = np.clip(m.predict_proba(F)[np.arange(len(y)), y], 1e-12, 1.0)
    return -np.log(p)


def choose(losses: np.ndarray, alphas: np.ndarray, prior: int) -> tuple[int, int]:
    """Return (one-SE-to-prior index, nearest-within-one-SE index) from per-row held-out ``losses`` (J × m)."""
    tot = losses.sum(axis=1)
    best = int(np.argmin(tot))
    m = losses.shape[1]

    def se(j):
        d = losses[j] - losses[best]
        return float(np.sqrt(m * np.var(d, ddof=1))) if m > 1 else 0.0

    one = best if tot[prior] - tot[best] > se(prior) else prior
    ok = [j for j in range(len(tot)) if tot[j] - tot[best] <= se(j)]
    near = min(ok, key=lambda j: abs(np.log(alphas[j]) - np.log(alphas[prior])))
    return one, near


def run_one(task, seed, solver_name) -> dict:
    """Run the solver on the task's validation split; return each α choice's accuracy at the model iteration."""
    from benchmarks.admm_readout_cv import features
    from solvers.linalg import ALPHA_GRID
    from solvers.losses import encode_labels
    from solvers.readout import bound

    X, y, Xe, ye, _ = dr.load_task(task, "validation", seed)
    solver, held, rec, stopping = train_recorded(X, y, Xe, ye, solver_name, seed)
    yi, yei = encode_labels(y, solver.classes), encode_labels(ye, solver.classes)
    out = {"today": rec[stopping.best_iteration - 1][1], "best_seen": max(e for _, e in rec), "n_held": int(held.sum())}
    W = rec[stopping.best_iteration - 1][0]
    F, Fh, Fe = (features(solver, W, A, False) for A in (X[~held], X[held], Xe))
    Fc = F - F.mean(0)
    gbar = float(np.mean(np.sum(Fc * Fc, 0)))
    grid = list(ALPHA_GRID[1::2] * bound(solver.widths[-1]) * gbar)
    priors = {"abs": 1.0, "scaled": gbar / len(F)}
    alphas = np.array(grid + [priors[p] for p in PRIORS])
    models = [fit(F, yi[~held], a) for a in alphas]
    losses = np.array([row_losses(m, Fh, yi[held]) for m in models])
    acc = [float(np.mean(m.predict(Fe) == yei)) for m in models]
    jg = int(np.argmin(losses[: len(grid)].sum(axis=1)))
    out["held"], out["held/alpha"] = acc[jg], float(alphas[jg])
    for k, p in enumerate(PRIORS):
        jp = len(grid) + k
        idx = list(range(len(grid))) + [jp]
        one, near = choose(losses[idx], alphas[idx], len(idx) - 1)
        for name, j in (("fix", len(idx) - 1), ("1se", one), ("near", near)):
            out[f"{name}_{p}"], out[f"{name}_{p}/alpha"] = acc[idx[j]], float(alphas[idx[j]])
    if X.shape[1] <= INPUT_CONTROL_MAX_D:
        out.update(input_control(X, yi, held, Xe, yei))
    return out


INPUT_CONTROL_MAX_D = 100  # the input control runs on narrow inputs only (breast cancer 30, digits 64)


def input_control(X, yi, held, Xe, yei) -> dict:
    """Return the control on standardised inputs (scaler of the solver's training rows): held / C=1 / one-SE to C=1."""
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(X[~held])
    Z, Zh, Ze = (np.nan_to_num(sc.transform(A)) for A in (X[~held], X[held], Xe))
    alphas = np.append(np.logspace(-3, 3, 13), 1.0)  # admm_alpha_diag.py's 13 values, then the prior C = 1
    models = [fit(Z, yi[~held], a) for a in alphas]
    losses = np.array([row_losses(m, Zh, yi[held]) for m in models])
    acc = [float(np.mean(m.predict(Ze) == yei)) for m in models]
    one, near = choose(losses, alphas, len(alphas) - 1)
    return {"in_held": acc[int(np.argmin(losses[:-1].sum(axis=1)))], "in_fix": acc[-1], "in_1se": acc[one], "in_near": acc[near]}


COLS = ("today", "held", "fix_abs", "1se_abs", "near_abs", "fix_scaled", "1se_scaled", "near_scaled")
IN_COLS = ("in_held", "in_fix", "in_1se", "in_near")


def summary(res: dict) -> str:
    """Return the paired markdown tables: per task and solver, mean accuracy, Δ vs ``held`` ± SE, wins / losses, runs below logreg."""
    groups: dict = {}
    for key, r in res.items():
        task, seed, s = key.split("/")
        groups.setdefault((task, s), []).append(r)
    tables = []
    for cols, ref in ((COLS, "held"), (IN_COLS, "in_held")):
        lines = ["| task | solver | runs | logreg | " + " | ".join(cols) + " |", "|" + "---|" * (4 + len(cols))]
        for (task, s), rs in sorted(groups.items()):
            if not all(ref in r for r in rs):
                continue
            lr = np.array([r["logreg"] for r in rs])
            cells = [task, s, str(len(rs)), f"{lr.mean():.4f}"]
            for c in cols:
                v = np.array([r[c] for r in rs])
                d = v - np.array([r[ref] for r in rs])
                se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
                cell = f"{v.mean():.4f}"
                if c != ref:
                    cell += f" Δ{d.mean():+.4f}±{se:.4f} ({int(np.sum(d > 1e-12))}/{int(np.sum(d < -1e-12))})"
                if ref == "held" and c not in ("today", "held"):
                    t = v - np.array([r["today"] for r in rs])
                    st = t.std(ddof=1) / np.sqrt(len(t)) if len(t) > 1 else 0.0
                    cell += f" vs today {t.mean():+.4f}±{st:.4f} ({int(np.sum(t > 1e-12))}/{int(np.sum(t < -1e-12))})"
                cells.append(cell + f" [<lr {int(np.sum(v < lr - 1e-12))}]")
            lines.append("| " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["breast-cancer"], choices=dr.TASKS[:4])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--solvers", nargs="+", default=["admm", "dladmm"], choices=["admm", "dladmm"])
    p.add_argument("--out", required=True)
    p.add_argument("--summary", action="store_true", help="print the paired table of --out and run nothing")
    args = p.parse_args(argv)
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.exists() else {}
    if args.summary:
        print(summary(res))
        return
    for task in args.tasks:
        for seed in args.seeds:
            lr = None
            for s in args.solvers:
                key = f"{task}/{seed}/{s}"
                if key in res:
                    continue
                if lr is None:
                    Xtr, ytr, Xte, yte, _ = dr.load_task(task, "validation", seed)
                    lr = dr.run_peer("logreg", Xtr, ytr, Xte, yte, (300,), seed)["accuracy"]
                res[key] = dict(run_one(task, seed, s), logreg=lr)
                print(key, {k: round(v, 4) for k, v in res[key].items() if "alpha" not in k}, flush=True)
                out.write_text(json.dumps(res, indent=0))


if __name__ == "__main__":
    main()
