"""ADMM / dlADMM: the logistic readout refitted exactly on frozen hidden features, α by approximate leave-one-out.

Binary tasks only. The solver runs with its defaults on ``defaults_real.py``'s
validation split (in-memory reference, ``--hidden 300``, budgets 20 / 30; the model's
iteration by today's rule, :class:`solvers.validation.EarlyStopping`). On the model
iteration's hidden features, for every second α of the readout's grid
(``ALPHA_GRID[1::2] · ¼ ḡ``, ḡ the mean diagonal of the centred training Gram, as
:func:`solvers.readout.logistic_alphas`), the exact L2 logistic fit (bias free;
``LogisticRegression(C = 1/α)``) is fitted and α chosen three ways:

* ``held``: fit on the training rows, α of least held-out log-loss (today's criterion, exact fit);
* ``alo+held``: fit on the training rows, α of least ALO log-loss on the training rows + held-out log-loss;
* ``alo_all``: fit on the training **and** held-out rows, α of least ALO log-loss over all of them.

ALO (Rad & Maleki 2018) for one row of a logistic fit with Hessian
``A = F̃ᵀ D F̃ + α Ĩ``: ``z₋ᵢ ≈ zᵢ + (pᵢ − yᵢ) hᵢ / (1 − pᵢ(1 − pᵢ) hᵢ)``, ``hᵢ = f̃ᵢᵀ A⁻¹ f̃ᵢ``.
The hidden layers were fitted to the training rows, so ALO on them is biased the way
the k-fold readout of ``admm_readout_cv.py`` is. The JSON keeps per run today's
accuracy, the best seen, each choice's accuracy on the evaluation (validation) split
and its α. Run::

    python benchmarks/admm_readout_alo.py --tasks breast-cancer --seeds 0 1 2 --out alo.json
    python benchmarks/admm_readout_alo.py --split test --tasks breast-cancer --seeds 0 --out alo.json   # once, at the end
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import defaults_real as dr  # noqa: E402


def fit(F, y, alpha, max_iter: int = 2000, tol: float = 1e-8):
    """Return scikit-learn's L2 logistic fit of labels ``y`` on features ``F`` with ``Σℓ + α/2‖w‖²`` (bias free)."""
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression(C=1.0 / alpha, max_iter=max_iter, tol=tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(F, y)
    return m


def alo_loss(m, F, y, alpha) -> float:
    """Return the approximate leave-one-out log-loss Σᵢ ℓ(z₋ᵢ, yᵢ) of the fit ``m`` on rows ``F`` (Rad & Maleki 2018)."""
    z = F @ m.coef_[0] + m.intercept_[0]
    p = 1 / (1 + np.exp(-z))
    Ft = np.hstack([F, np.ones((len(F), 1))])
    D = p * (1 - p)
    P = np.eye(Ft.shape[1]) * alpha
    P[-1, -1] = 0
    h = np.einsum("ij,ij->i", Ft, np.linalg.solve(Ft.T @ (Ft * D[:, None]) + P, Ft.T).T)
    pl = np.clip(1 / (1 + np.exp(-(z + (p - y) * h / np.maximum(1 - D * h, 1e-12)))), 1e-12, 1 - 1e-12)
    return float(-np.sum(y * np.log(pl) + (1 - y) * np.log(1 - pl)))


def log_loss(m, F, y) -> float:
    """Return Σ log-loss of the fit ``m`` on rows ``F``."""
    p = np.clip(m.predict_proba(F)[:, 1], 1e-12, 1 - 1e-12)
    return float(-np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)))


def train_recorded(X, y, Xe, ye, solver_name, seed, binary_only=None):
    """Train ``solver_name`` (defaults, 300 hidden units, early stopping on its held-out rows) in memory.

    Return (solver, held-out row mask, [(weights, accuracy on Xe)] per iteration, the EarlyStopping);
    ``binary_only`` (a task name) refuses a multi-class task before training.
    """
    from benchmarks.admm_small_n import setup
    from solvers.config import TrainConfig
    from solvers.loop import initialize, iterate
    from solvers.validation import EarlyStopping

    cfg = TrainConfig(solver=solver_name, hidden=(300,), iterations=dr.ITERATIONS[solver_name], seed=seed)
    solver, runner, held = setup(X, y, cfg)
    if binary_only and solver.widths[-1] != 1:
        raise SystemExit(f"{binary_only}: binary tasks only")
    state, stopping, rec = initialize(solver, runner), EarlyStopping(cfg.patience), []
    for state, metrics in iterate(solver, runner, state, cfg.iterations):
        net = solver.network(state.weights, metrics)
        rec.append(([np.asarray(W).copy() for W in state.weights], net.score(Xe, ye)))
        if stopping.update(state.iteration, net.score(X[held], y[held]), [], metrics.get("validation_loss")):
            break
    return solver, held, rec, stopping


def run_one(task, seed, solver_name, split: str = "validation") -> dict:
    """Run the solver on the task's ``split`` (validation or test); return today's accuracy and each α choice's, at the model iteration."""
    from benchmarks.admm_readout_cv import features
    from solvers.linalg import ALPHA_GRID
    from solvers.losses import encode_labels

    X, y, Xe, ye, _ = dr.load_task(task, split, seed)
    solver, held, rec, stopping = train_recorded(X, y, Xe, ye, solver_name, seed, binary_only=task)
    yi, yei = encode_labels(y, solver.classes), encode_labels(ye, solver.classes)
    out = {"today": rec[stopping.best_iteration - 1][1], "best_seen": max(e for _, e in rec)}
    W = rec[stopping.best_iteration - 1][0]
    F, Fh, Fe = (features(solver, W, A, False) for A in (X[~held], X[held], Xe))
    Fa, ya = np.vstack([F, Fh]), np.concatenate([yi[~held], yi[held]])
    Fc = F - F.mean(0)
    grid = ALPHA_GRID[1::2] * 0.25 * np.mean(np.sum(Fc * Fc, 0))
    crit, models = {"held": [], "alo+held": [], "alo_all": []}, {"tr": [], "all": []}
    for a in grid:
        m, ma = fit(F, yi[~held], a), fit(Fa, ya, a)
        hl = log_loss(m, Fh, yi[held])
        crit["held"].append(hl)
        crit["alo+held"].append(alo_loss(m, F, yi[~held], a) + hl)
        crit["alo_all"].append(alo_loss(ma, Fa, ya, a))
        models["tr"].append(m)
        models["all"].append(ma)
    for name, v in crit.items():
        j = int(np.argmin(v))
        m = models["all" if name == "alo_all" else "tr"][j]
        out[f"model/{name}"] = float(np.mean(m.predict(Fe) == yei))
        out[f"model/{name}/alpha"] = float(grid[j])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["breast-cancer"], choices=["breast-cancer", "mnist-oddeven-2k"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--solvers", nargs="+", default=["admm", "dladmm"], choices=["admm", "dladmm"])
    p.add_argument("--split", choices=("validation", "test"), default="validation",
                   help="the evaluation split (defaults_real.py's); test only once, after choosing on validation")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.exists() else {}
    for task in args.tasks:
        for seed in args.seeds:
            for s in args.solvers:
                key = f"{task}/{seed}/{s}" + ("/test" if args.split == "test" else "")
                if key not in res:
                    res[key] = run_one(task, seed, s, args.split)
                    print(key, {k: round(v, 4) for k, v in res[key].items() if "alpha" not in k}, flush=True)
                    out.write_text(json.dumps(res, indent=0))


if __name__ == "__main__":
    main()
