"""ADMM on breast cancer: is the gap to logistic regression in the hidden features or in the held-out choice of α?

Per ``defaults_real.py`` validation split (``--seed`` range), ADMM runs with the defaults (model iteration by
today's rule). Then, on the same training / held-out rows the solver used, it measures on the evaluation split:

* ``logreg_all_C1`` / ``logreg_train_C1``: ``LogisticRegression(C=1)`` on the standardised inputs, fitted on all
  training rows / on the solver's training rows only (the held-out 10 % left out);
* ``logreg_train_heldα``: the same inputs, α (``C = 1/α``, 13 values 10⁻³…10³) chosen by held-out log-loss, as
  the solver chooses its readout's α;
* ``{init,model}_feat_heldα``: the exact logistic readout on the hidden features of the initial weights / of the
  model iteration, α on every second value of the readout's grid chosen by held-out log-loss;
* ``{init,model}_feat_bestα``: the best evaluation accuracy over that grid (a diagnostic bound that looks at
  the evaluation rows; it chooses nothing); ``model_move``: ‖W₁ − W₁⁰‖ / ‖W₁⁰‖ at the model iteration.

Run::

    python benchmarks/admm_alpha_diag.py 1 7 --out diag.json   # seeds 1..6
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
from benchmarks.admm_readout_alo import fit, log_loss  # noqa: E402


def run_one(seed: int) -> dict:
    """Return the figures of the module docstring for breast cancer's validation split ``seed``."""
    from sklearn.preprocessing import StandardScaler

    from benchmarks.admm_readout_cv import features
    from benchmarks.admm_small_n import setup
    from solvers.config import TrainConfig
    from solvers.linalg import ALPHA_GRID
    from solvers.loop import initialize, iterate
    from solvers.losses import encode_labels
    from solvers.validation import EarlyStopping

    X, y, Xe, ye, _ = dr.load_task("breast-cancer", "validation", seed)
    cfg = TrainConfig(solver="admm", hidden=(300,), iterations=dr.ITERATIONS["admm"], seed=seed)
    solver, runner, held = setup(X, y, cfg)
    state, stopping, rec = initialize(solver, runner), EarlyStopping(cfg.patience), []
    w0 = [np.asarray(W).copy() for W in state.weights]
    for state, metrics in iterate(solver, runner, state, cfg.iterations):
        net = solver.network(state.weights, metrics)
        rec.append([np.asarray(W).copy() for W in state.weights])
        if stopping.update(state.iteration, net.score(X[held], y[held]), [], metrics.get("validation_loss")):
            break
    yi, yei = encode_labels(y, solver.classes), encode_labels(ye, solver.classes)
    sc = StandardScaler().fit(X)
    Z, Ze = sc.transform(X).astype(np.float64), sc.transform(Xe).astype(np.float64)
    r = {"logreg_all_C1": float(np.mean(fit(Z, yi, 1.0).predict(Ze) == yei)),
         "logreg_train_C1": float(np.mean(fit(Z[~held], yi[~held], 1.0).predict(Ze) == yei))}
    grid = np.logspace(-3, 3, 13)
    losses = [log_loss(fit(Z[~held], yi[~held], a), Z[held], yi[held]) for a in grid]
    r["heldα"] = float(grid[int(np.argmin(losses))])
    r["logreg_train_heldα"] = float(np.mean(fit(Z[~held], yi[~held], r["heldα"]).predict(Ze) == yei))
    for tag, W in (("init", w0), ("model", rec[stopping.best_iteration - 1])):
        F, Fh, Fe = (features(solver, W, A, False) for A in (X[~held], X[held], Xe))
        Fc = F - F.mean(0)
        fgrid = ALPHA_GRID[1::2] * 0.25 * np.mean(np.sum(Fc * Fc, 0))
        fits = [fit(F, yi[~held], a) for a in fgrid]
        j = int(np.argmin([log_loss(m, Fh, yi[held]) for m in fits]))
        r[f"{tag}_feat_heldα"] = float(np.mean(fits[j].predict(Fe) == yei))
        r[f"{tag}_feat_bestα"] = max(float(np.mean(m.predict(Fe) == yei)) for m in fits)
        r[f"{tag}_move"] = float(np.linalg.norm(W[0] - w0[0]) / np.linalg.norm(w0[0]))
    return r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("first", type=int)
    p.add_argument("stop", type=int)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.exists() else {}
    for seed in range(args.first, args.stop):
        if str(seed) not in res:
            res[str(seed)] = run_one(seed)
            print(seed, {k: round(v, 4) for k, v in res[str(seed)].items()}, flush=True)
            out.write_text(json.dumps(res, indent=0))


if __name__ == "__main__":
    main()
