"""ADMM / dlADMM on breast cancer (issue 19): larger coupling, and a skip path whose input block has its own α.

Per validation split of ``defaults_real.py`` (the test split is never read) and per solver setting (``--variants``:
``base`` = the defaults; ``b1``/``b10`` = ADMM's β = 1 / 10 at γ = 10; ``g100b1`` = γ = 100, β = 1; ``nu10``/``nu1`` =
dlADMM's ν = 10 / 1, i.e. ρ/ν = 0.4 / 4 against 0.04) this script runs the solver in memory and records
- the model's accuracy on the evaluation rows, its best iteration, and how far W_1 moved:
  ``‖W_1 − W_1⁰‖_F / ‖W_1⁰‖_F`` (weights only) of the kept model;
- readouts refitted on the kept model's hidden features ``h = relu(W_1 x̂)`` (x̂ the solver's standardisation)
  **with the solver's own selection protocol**: fitted (scikit-learn's exact L2 logistic regression) on the
  solver's training rows, the penalty chosen by the least log-loss on the solver's held-out rows
  (:class:`solvers.validation.RowSplit`, 10 %), scored on the evaluation rows:
  ``hid``: h alone, one C (the solver's readout); ``skip1``: ``[h, x̂]``, one C for both blocks (today's
  ``input_skip``); ``skip2``: ``[h, x̂]``, its own C for each block (C_h, C_x on a 7 x 7 grid, plus C_h = 0:
  x̂ alone); ``lin``: x̂ alone, C by the held-out rows.
Logistic regression (StandardScaler, C = 1, all training rows) is the target, as in ``defaults_real.py``.

Run::

    python benchmarks/admm_bc.py --tasks breast-cancer --seeds 0 1 2 --solvers admm --variants base b1 --out r.json
    python benchmarks/admm_bc.py --summary --out r.json
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

from benchmarks import admm_first_layer as afl  # noqa: E402
from benchmarks import defaults_real as dr  # noqa: E402

NO_SKIP = {"input_skip": False, "readout_refit": False}  # session 12's defaults, spelled out: variants outlive a flip
VARIANTS = {"base": NO_SKIP, "b1": {**NO_SKIP, "beta": 1.0}, "b10": {**NO_SKIP, "beta": 10.0},
            "g100b1": {**NO_SKIP, "gamma": 100.0, "beta": 1.0}, "nu10": {**NO_SKIP, "nu": 10.0},
            "nu1": {**NO_SKIP, "nu": 1.0}, "skip": {"input_skip": True, "readout_refit": False},
            "refit": {**NO_SKIP, "readout_refit": True}, "skiprefit": {"input_skip": True, "readout_refit": True},
            # session 14 (b): the z_L update's loss, readout refit on (today's default): dlADMM's auto is squared, ADMM's hinge
            "hinge": {**NO_SKIP, "readout_refit": True, "loss": "hinge"},
            "squared": {**NO_SKIP, "readout_refit": True, "loss": "squared"},
            # (c): each feature's own std (scikit-learn's StandardScaler) instead of auto's kurtosis floor, refit on
            "std": {**NO_SKIP, "readout_refit": True, "scaling": "standard"}}
SOLVER_OF = {"b1": "admm", "b10": "admm", "g100b1": "admm", "nu10": "dladmm", "nu1": "dladmm"}
CS = np.logspace(-3, 3, 7)
READOUTS = ("hid", "lin", "skip1", "skip2", "cv", "skip2cv")
CS13 = np.logspace(-3, 3, 13)  # the K-fold readouts' grid (half decades)
FOLD_TAG = 0xF01D  # the folds' hash stream (as admm_readout_cv.py): fold of row r = floor(K · u(seed ^ tag, r))


def _fit_score(P, y, Pe, ye, Ph, yh, C):
    """Return (held-out log-loss, evaluation accuracy) of L2 logistic regression(C) fitted on (P, y)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    m = LogisticRegression(C=C, max_iter=5000).fit(P, y)
    return float(log_loss(yh, m.predict_proba(Ph), labels=m.classes_)), float((m.predict(Pe) == ye).mean())


def readouts(F, A, y, Fe, Ae, ye, held, which=READOUTS) -> dict:
    """Return the evaluation accuracy of each readout (``hid``, ``skip1``, ``skip2``, ``lin``) chosen on ``held``."""
    tr = ~held
    out = {}

    def choose(build, grid):  # grid: (label, C, scale of the hidden block); the least held-out loss wins
        best = None
        for label, C, s in grid:
            P, Pe = build(F, A, s), build(Fe, Ae, s)
            loss, acc = _fit_score(P[tr], y[tr], Pe, ye, P[held], y[held], C)
            if best is None or loss < best[0] - 1e-12:
                best = (loss, acc, label, C, s)
        return best

    def refit(name, build):  # the chosen penalty, refitted on all training rows (train + held-out): refit=True
        loss, _, label, C, s = out[name]
        P, Pe = build(F, A, s), build(Fe, Ae, s)
        out[name + "+"] = (loss, _fit_score(P, y, Pe, ye, P[held], y[held], C)[1], label)

    def hid(F, A, s):
        return F

    def lin(F, A, s):
        return A

    def skip(F, A, s):
        return np.concatenate([s * F, A], axis=1) if s > 0 else A

    out["hid"] = choose(hid, [(f"C={C:g}", C, 1.0) for C in CS])
    out["lin"] = choose(lin, [(f"C={C:g}", C, 1.0) for C in CS])
    refit("hid", hid)
    refit("lin", lin)
    if "skip1" in which:
        out["skip1"] = choose(skip, [(f"C={C:g}", C, 1.0) for C in CS])
        refit("skip1", skip)
    if "skip2" not in which:
        return {k: {"acc": v[1], "held_loss": v[0], "chose": v[2]} for k, v in out.items()}
    # own α per block: F = Σℓ + ½‖V_x‖²/C_x + ½‖V_h‖²/C_h; scaling h by s = √(C_h/C_x) at C = C_x gives exactly that
    grid = [(f"Cx={Cx:g},Ch=0", Cx, 0.0) for Cx in CS]
    grid += [(f"Cx={Cx:g},Ch={Ch:g}", Cx, float(np.sqrt(Ch / Cx))) for Cx in CS for Ch in CS]
    out["skip2"] = choose(skip, grid)
    return {k: {"acc": v[1], "held_loss": v[0], "chose": v[2]} for k, v in out.items()}


def folds(n: int, seed: int, k: int) -> np.ndarray:
    """Return each training row's fold 0..k−1 by its seeded hash (what a pipeline can draw per chunk, no pass)."""
    from solvers.validation import row_uniforms

    return np.minimum((row_uniforms(np.arange(n, dtype=np.uint64), seed ^ FOLD_TAG) * k).astype(int), k - 1)


def ridge_fold_errors(Z, t, fold, k: int, alphas) -> list:
    """Return, per α, the out-of-fold squared error of the ridge readout (bias column last, unpenalised).

    From per-fold sums only: with ``G_f = Σ_f z zᵀ``, ``c_f = Σ_f z t``, ``‖t_f‖²`` and
    ``w_{−f} = (Σ_g G_g − G_f + α Ĩ)⁻¹ (Σ_g c_g − c_f)``, fold f's error is ``w_{−f}ᵀ G_f w_{−f} − 2 w_{−f}ᵀ c_f + ‖t_f‖²``.
    """
    G = [Z[fold == f].T @ Z[fold == f] for f in range(k)]
    c = [Z[fold == f].T @ t[fold == f] for f in range(k)]
    tt = [float(t[fold == f] @ t[fold == f]) for f in range(k)]
    Gs, cs = sum(G), sum(c)
    pen = np.eye(Z.shape[1])
    pen[-1, -1] = 0
    return [sum(float(w @ G[f] @ w - 2 * w @ c[f] + tt[f])
                for f in range(k) for w in [np.linalg.solve(Gs - G[f] + a * pen, cs - c[f])]) for a in alphas]


def cv_readouts(F, A, y, Fe, Ae, ye, seed: int, k: int = 5) -> dict:
    """Return readouts whose penalty is chosen by k-fold CV over **all** training rows, then refitted on them.

    ``{hid,lin,skip1}cv``: L2 logistic regression on h / x̂ / [h, x̂], C of least out-of-fold log-loss on the
    13-point grid :data:`CS13`; ``…cvacc``: C of most out-of-fold correct rows (ties: less loss);
    ``…@C=1``: C = 1 refitted on all rows (no choice); ``…oracle``: the best C on the evaluation rows (reads the
    evaluation labels: an upper bound, never a rule); ``ridgecv``: the ridge readout on 0/1 targets (squared
    loss, unpenalised bias, class 1 when > 0.5), α of least out-of-fold squared error computed from per-fold
    Grams alone, ``Σ_f tr(W_{−f}ᵀ W_{−f} G_f) − 2 tr(W_{−f} C_f) + ‖T_f‖²`` with ``W_{−f}`` solved on the sums
    minus fold f's (what a pipeline could compute from sums of the pass it makes, no extra pass);
    ``hidsvm``: the hinge loss (linear SVM) on h, C by out-of-fold accuracy.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    fold = folds(len(y), seed, k)
    out = {}
    feats = {"hid": (F, Fe), "lin": (A, Ae), "skip1": (np.concatenate([F, A], 1), np.concatenate([Fe, Ae], 1))}
    for name, (P, Pe) in feats.items():
        loss, corr, ev = np.zeros(len(CS13)), np.zeros(len(CS13)), np.zeros(len(CS13))
        for j, C in enumerate(CS13):
            loss[j], corr[j] = _oof_log_loss(P, y, fold, k, C)
            ev[j] = float((LogisticRegression(C=C, max_iter=5000).fit(P, y).predict(Pe) == ye).mean())
        j_loss = int(np.argmin(loss))
        j_acc = int(np.lexsort((loss, -corr))[0])
        out[name + "cv"] = {"acc": ev[j_loss], "held_loss": float(loss[j_loss] / len(y)), "chose": f"C={CS13[j_loss]:g}"}
        out[name + "cvacc"] = {"acc": ev[j_acc], "held_loss": float(loss[j_acc] / len(y)), "chose": f"C={CS13[j_acc]:g}"}
        out[name + "@C=1"] = {"acc": ev[6], "held_loss": float(loss[6] / len(y)), "chose": "C=1"}
        out[name + "oracle"] = {"acc": float(ev.max()), "held_loss": float("nan"), "chose": f"C={CS13[int(np.argmax(ev))]:g}"}
    # ridge on 0/1 targets from per-fold sums
    Z, Ze = np.concatenate([F, np.ones((len(F), 1))], 1), np.concatenate([Fe, np.ones((len(Fe), 1))], 1)
    t = y.astype(np.float64)
    scale = float(np.mean(np.sum(Z[:, :-1] ** 2, axis=0)))
    alphas = scale * np.logspace(-5, 1, 13)
    err = ridge_fold_errors(Z, t, fold, k, alphas)
    j = int(np.argmin(err))
    pen = np.eye(Z.shape[1])
    pen[-1, -1] = 0
    w = np.linalg.solve(Z.T @ Z + alphas[j] * pen, Z.T @ t)
    out["ridgecv"] = {"acc": float(((Ze @ w > 0.5) == (ye == 1)).mean()), "held_loss": err[j] / len(y),
                      "chose": f"alpha/diag={alphas[j] / scale:g}"}
    # hinge readout on h, C by out-of-fold accuracy
    corr = np.zeros(len(CS13))
    for j, C in enumerate(CS13):
        for f in range(k):
            m = LinearSVC(C=C, loss="hinge", max_iter=20000).fit(F[fold != f], y[fold != f])
            corr[j] += np.sum(m.predict(F[fold == f]) == y[fold == f])
    j = int(np.argmax(corr))
    m = LinearSVC(C=CS13[j], loss="hinge", max_iter=20000).fit(F, y)
    out["hidsvm"] = {"acc": float((m.predict(Fe) == ye).mean()), "held_loss": float(-corr[j]), "chose": f"C={CS13[j]:g}"}
    return out


def _oof_log_loss(P, y, fold, k: int, C: float) -> tuple[float, int]:
    """Return the k-fold out-of-fold log-loss (summed over rows) of a logistic regression at ``C`` on features ``P``,
    and how many rows it classified right (probability > 0.5)."""
    from sklearn.linear_model import LogisticRegression

    loss, correct = 0.0, 0
    for f in range(k):
        tr, te = fold != f, fold == f
        pr = np.clip(LogisticRegression(C=C, max_iter=5000).fit(P[tr], y[tr]).predict_proba(P[te])[:, 1],
                     1e-15, 1 - 1e-15)
        loss -= np.sum(np.where(y[te] == 1, np.log(pr), np.log1p(-pr)))
        correct += int(np.sum((pr > 0.5) == (y[te] == 1)))
    return float(loss), correct


def skip2_cv(F, A, y, Fe, Ae, ye, seed: int, k: int = 5) -> dict:
    """Return ``skip2cv``: ``[s·h, x̂]`` (the hidden block's own penalty C_h = s²·C_x), (C_x, s) by k-fold log-loss.

    The grid: C_x ∈ {0.1, 0.316, 1, 3.16, 10}, C_h / C_x ∈ {0 (x̂ alone), 0.01, 0.1, 1}; refitted on all rows.
    ``skip2oracle``: the best of those 20 on the evaluation rows (an upper bound, never a rule).
    """
    from sklearn.linear_model import LogisticRegression

    fold = folds(len(y), seed, k)
    grid = [(Cx, r) for Cx in np.logspace(-1, 1, 5) for r in (0.0, 0.01, 0.1, 1.0)]
    loss, ev = np.zeros(len(grid)), np.zeros(len(grid))
    for j, (Cx, r) in enumerate(grid):
        P = np.concatenate([np.sqrt(r) * F, A], 1) if r > 0 else A
        Pe = np.concatenate([np.sqrt(r) * Fe, Ae], 1) if r > 0 else Ae
        loss[j] = _oof_log_loss(P, y, fold, k, Cx)[0]
        ev[j] = float((LogisticRegression(C=Cx, max_iter=5000).fit(P, y).predict(Pe) == ye).mean())
    j = int(np.argmin(loss))
    return {"skip2cv": {"acc": ev[j], "held_loss": float(loss[j] / len(y)), "chose": f"Cx={grid[j][0]:g},Ch/Cx={grid[j][1]:g}"},
            "skip2oracle": {"acc": float(ev.max()), "held_loss": float("nan"),
                            "chose": f"Cx={grid[int(np.argmax(ev))][0]:g},Ch/Cx={grid[int(np.argmax(ev))][1]:g}"}}


HIGGS = ("higgs-3000", "higgs-9000")  # HIGGS-shaped (benchmarks/higgs_like.py), nobody tuned on: consensus_paired.load


def load(task: str, seed: int):
    """Return (X_train, y_train, X_eval, y_eval): a validation split of ``defaults_real.py`` or of the HIGGS-shaped store."""
    if task in HIGGS:
        from benchmarks.consensus_paired import load as higgs

        return higgs(task, seed)
    return afl.load_task(task, seed)[:4]


def run(tasks, seeds, solvers, variants, out: Path, offline: bool, base_only: bool = False, which=READOUTS,
        folds_k: int = 5) -> dict:
    from solvers.config import TrainConfig
    from solvers.reference import fit_in_memory
    from solvers.validation import RowSplit

    warnings.filterwarnings("ignore")
    res = json.loads(out.read_text()) if out.exists() else {}
    for task in tasks:
        for seed in seeds:
            X, y, Xe, ye = load(task, seed)
            r = res.setdefault(f"{task}/{seed}", {"n_eval": len(ye)})
            if "logreg" not in r:
                r["logreg"] = dr.run_peer("logreg", X, y, Xe, ye, (300,), seed)["accuracy"]
            for s in solvers:
                for v in variants:
                    if SOLVER_OF.get(v, s) != s or f"{s}/{v}" in r:
                        continue
                    with afl.variant("base") as seen:
                        cfg = TrainConfig(solver=s, hidden=(300,), iterations=dr.ITERATIONS[s], seed=seed,
                                          **VARIANTS[v])
                        o = fit_in_memory(X, y, cfg, X_test=Xe, y_test=ye)
                    net = o.network
                    W = np.asarray(net.weights[0], np.float64)
                    W0 = np.asarray(seen["start"], np.float64)
                    curve = [h.get("test_accuracy") for h in o.history]
                    e = {"acc": net.score(Xe, ye), "it": o.best_iteration, "best_seen": max(curve),
                         "last": curve[-1], "move": float(np.linalg.norm(W[:, :-1] - W0[:, :-1])
                                                          / np.linalg.norm(W0[:, :-1]))}
                    if offline and (v == "base" or not base_only) and len(np.unique(y)) == 2:
                        A, Ae = (((M - net.x_mean) / net.x_scale).astype(np.float64) for M in (X, Xe))
                        F, Fe = (np.maximum(M @ W[:, :-1].T + W[:, -1], 0) for M in (A, Ae))
                        held = RowSplit(cfg.validation_fraction, seed).mask(0, len(y))
                        e["readouts"] = readouts(F, A, y, Fe, Ae, ye, held, which)
                        if "skip2cv" in which:
                            e["readouts"].update(skip2_cv(F, A, y, Fe, Ae, ye, seed, folds_k))
                        if "cv" in which:
                            e["readouts"].update(cv_readouts(F, A, y, Fe, Ae, ye, seed, folds_k))
                    r[f"{s}/{v}"] = e
                    extra = {k: round(x["acc"], 4) for k, x in e.get("readouts", {}).items()}
                    print(f"{task}/{seed} {s}/{v} acc {e['acc']:.4f} it {e['it']} move {e['move']:.3f} {extra} "
                          f"logreg {r['logreg']:.4f}", flush=True)
                    out.write_text(json.dumps(res, indent=0))
    return res


def _acc(entry: dict, name: str) -> float:
    """Return the accuracy of the model or of readout ``name``; ``a|b``: of a or b, whichever has less held-out loss."""
    if name == "model":
        return entry["acc"]
    r = entry["readouts"]
    if "|" in name:
        return min((r[k] for k in name.split("|")), key=lambda x: x["held_loss"])["acc"]
    return r[name]["acc"]


def summary(res: dict, against: str = "base") -> str:
    """Return the paired table: per task, solver and variant (and readout), mean accuracy, Δ rows vs ``against``'s model
    (the variant of the same solver and split: ``base``, or ``refit``, today's default) and vs logreg."""
    rows = [f"| task | solver | variant | readout | splits | mean acc | Δ rows vs same split's {against} model: mean ± sd "
            f"(SE) | wins / losses vs {against} | Δ rows vs logreg (SE) | splits < logreg | W_1 move | best it |", "|" + "---|" * 12]
    tasks = sorted({k.split("/")[0] for k in res})
    for task in tasks:
        splits = {k: v for k, v in res.items() if k.split("/")[0] == task}
        keys = sorted({k for v in splits.values() for k in v if "/" in k})
        for key in keys:
            s = key.split("/")[0]
            have = [v for v in splits.values() if key in v and f"{s}/{against}" in v]
            if not have:
                continue
            n = have[0]["n_eval"]
            with_readouts = [v for v in have if "readouts" in v[key]]
            names = ["model"] + (list(with_readouts[0][key]["readouts"]) + ["hid|lin"] if with_readouts else [])
            if with_readouts and "hidcv" in with_readouts[0][key]["readouts"]:
                names.append("hidcv|lincv")  # network or linear, by the k-fold log-loss
            everything = have
            for name in names:
                have = everything if name == "model" else with_readouts
                acc = np.array([_acc(v[key], name) for v in have])
                base = np.array([v[f"{s}/{against}"]["acc"] for v in have])
                lr = np.array([v["logreg"] for v in have])
                d, dl = (acc - base) * n, (acc - lr) * n
                se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
                sel = dl.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
                move = np.mean([v[key]["move"] for v in have])
                it = np.mean([v[key]["it"] for v in have])
                rows.append(f"| {task} | {s} | {key.split('/')[1]} | {name} | {len(have)} | {acc.mean():.4f} | "
                            f"{d.mean():+.2f} ± {d.std(ddof=1) if len(d) > 1 else 0:.2f} ({se:.2f}) | "
                            f"{int((d > 0.5).sum())} / {int((d < -0.5).sum())} | "
                            f"{dl.mean():+.2f} ({sel:.2f}) | {int((dl < 0).sum())} | {move:.3f} | {it:.1f} |")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["breast-cancer"], choices=[*dr.TASKS, *afl.SYNTHETIC, *HIGGS])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--solvers", nargs="+", default=["admm", "dladmm"], choices=["admm", "dladmm"])
    p.add_argument("--variants", nargs="+", default=["base"], choices=list(VARIANTS))
    p.add_argument("--no-offline", action="store_true", help="skip the offline readouts (only the solver's model)")
    p.add_argument("--offline-base-only", action="store_true", help="the offline readouts of the base variant only")
    p.add_argument("--readouts", nargs="+", default=["hid", "lin", "skip1", "skip2"], choices=READOUTS,
                   help="hid and lin always run; cv and skip2cv only when named (admm_bc_s12.md's commands ran the "
                        "other four)")
    p.add_argument("--folds", type=int, default=5, help="k of the cv readouts (session 14)")
    p.add_argument("--summary", action="store_true", help="print the paired table of --out and exit")
    p.add_argument("--against", default="base", choices=list(VARIANTS), help="--summary: the variant Δ is paired against")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.summary:
        print(summary(json.loads(out.read_text()), a.against))
        return
    run(a.tasks, a.seeds, a.solvers, a.variants, out, not a.no_offline, a.offline_base_only, a.readouts, a.folds)


if __name__ == "__main__":
    main()
