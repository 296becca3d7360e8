"""Why are Gauss-Newton's early multi-output hidden steps small? K-FAC against the exact Gauss-Newton step (issue 21 pt 7).

Session 14, helper k10. In memory, validation rows only. A fit of the stock solver runs as it always does (its trials
are not changed); at each hidden-layer trial it makes (iterations 0, 1, 2, ...) this script also computes, on the same
rows, weights, α and λ, other steps of the hidden layer and measures them:

* ``kfac``: the solver's own step, ``n (S + aI)⁻¹ g (G + bI)⁻¹`` (``g = D − αW̃``; a, b the K-FAC damping of
  :meth:`GaussNewtonSolver.layer_step`: λ(s̄ + π√(αn)) + π√(αn) and ε'(ḡ + √(αn)/π) + √(αn)/π);
* ``exact``: the exact Gauss-Newton matrix of the hidden layer at the output layer held fixed, ``JᵀJ``, with the
  same damping, i.e. ``(JᵀJ + [(S+aI)⊗(G+bI) − S⊗G]/n)⁻¹ g`` (conjugate gradients on the exact product over the
  sample's rows, preconditioned by ``kfac``): the Kronecker factorisation is the only difference;
* ``joint``: the same with the joint Gauss-Newton matrix of (hidden, output) layers reduced to the hidden layer, the
  Schur complement ``Jᵀ(I − H)J`` (H: the output layer's ridge hat matrix at α, per output): the step that knows the
  output layer is refitted afterwards (the alternation between layers);
* ``kfac-obj``, ``exact-obj``, ``joint-obj``: the three with the objective's own damping instead of K-FAC's factored
  one, ``(S + λs̄ I)⊗(G + ε'ḡ I)/n + αI`` (and its exact / joint counterparts: the same λ, ε' parts around JᵀJ).

For each: ‖Δ‖/‖W‖; the decrease of the objective E (fixed α) the undamped block model and the joint model predict,
the decrease achieved with the output layer fixed and with it refitted at α; a step-length scan t·Δ
(t ∈ ``--scan``) of the refitted objective; and the validation-row accuracy after the step with the output layer
refitted at α auto (the solver's rule: its held-out rows). Also the Rayleigh ratio vᵀJᵀJv / vᵀ(S⊗G/n)v of the
Kronecker factorisation on a few directions and the PCG iterations (a measure of how far K-FAC is from JᵀJ).

Run::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 nice -n 15 python benchmarks/k10_kfac_diag.py mnist10 --seeds 0 --trials 3 \\
        --out /tmp/k10/diag.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from solvers import SOLVERS  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.gauss_newton import STEP_RIDGE, GaussNewtonSolver  # noqa: E402
from solvers.linalg import quadratic_error  # noqa: E402
from solvers.validation import select  # noqa: E402

VARIANTS = ("kfac", "exact", "joint", "kfac-obj", "exact-obj", "joint-obj")


def load(task: str, seed: int):
    """Return (X_train, y_train, X_val, y_val): MNIST 60k (rows 0-49,999 / 50,000-59,999) or the 2k validation split."""
    if task.endswith("-2k"):
        from benchmarks.defaults_real import load_task
        Xtr, ytr, Xva, yva, _ = load_task(task, "validation", seed)
        return Xtr, ytr, Xva, yva
    from benchmarks.bench_util import load_mnist_validation
    Xtr, ytr, Xva, yva, _ = load_mnist_validation(task)
    return Xtr, ytr, Xva, yva


class Analyst:
    """The exact products and the measurements of one trial (one hidden layer, L = 2, ReLU, squared loss)."""

    def __init__(self, solver, runner, sample, weights, curv, G, damping, alpha, val):
        self.s, self.alpha, self.lam = solver, float(alpha), float(damping)
        chunks = sample.get("chunks", range(len(runner.bounds)))
        xs, ys = [], []
        for i in sorted(chunks):
            a, b = runner.bounds[i]
            r = select(runner.split, a, b, "train")
            xs.append(runner.x[i] if r is None else runner.x[i][r])
            ys.append(runner.y[i] if r is None else runner.y[i][r])
        self.A0 = solver._inputs_with_ones(np.concatenate(xs))  # float32
        self.T = solver.task.targets(np.concatenate(ys), np.float32)
        hx, hy = [], []
        for i, (a, b) in enumerate(runner.bounds):  # the fit's held-out rows (alpha auto), every chunk
            r = select(runner.split, a, b, "held")
            if r is not None and np.any(r):
                hx.append(runner.x[i][r])
                hy.append(runner.y[i][r])
        self.H0 = solver._inputs_with_ones(np.concatenate(hx)) if hx else None
        self.HT = solver.task.targets(np.concatenate(hy), np.float32) if hx else None
        self.V0 = solver._inputs_with_ones(val[0])
        self.vy = val[1]
        self.W1 = np.asarray(weights[0], np.float64)
        self.W2 = np.asarray(weights[1], np.float64)
        self.W2t = self.W2[:, :-1].astype(np.float32)
        self.n = float(curv["n"])
        Z = self.A0 @ self.W1.T.astype(np.float32)
        self.M = (Z > 0).astype(np.float32)
        A1 = np.maximum(Z, 0)
        self.A1 = np.concatenate([A1, np.ones((len(A1), 1), np.float32)], axis=1)
        out = self.A1 @ self.W2.T.astype(np.float32)
        r = self.T - out
        delta = (r @ self.W2t) * self.M
        self.D = (delta.T @ self.A0).astype(np.float64)
        self.D_check = float(np.linalg.norm(self.D - np.asarray(curv["grad1"])) / np.linalg.norm(curv["grad1"]))
        self.g = self.D.copy()
        self.g[:, :-1] -= self.alpha * self.W1[:, :-1]
        self.S = np.asarray(solver.curvatures(weights, curv)[0], np.float64)
        self.G = np.asarray(G, np.float64)
        G1 = (self.A1.T @ self.A1).astype(np.float64)
        G1[np.diag_indices(G1.shape[0] - 1)] += self.alpha  # Ĩ spares the bias
        self.G1inv = np.linalg.inv(G1)
        self.mask = np.ones_like(self.W1)
        self.mask[:, -1] = 0  # α spares the bias column
        n, lam, alpha = self.n, self.lam, self.alpha
        s_bar = float(np.mean(np.diag(self.S)))
        g_bar = float(np.mean(np.diag(self.G)))
        g_in = float(np.mean(np.diag(self.G)[:-1]))
        pi = np.sqrt(s_bar / g_in)
        root = np.sqrt(alpha * n)
        ridge = max(solver.config.ridge, STEP_RIDGE)
        self.parts = {"s_bar": s_bar, "g_bar": g_bar, "pi": pi, "root": root}
        # K-FAC's damped factors (as step_path: shift_S, shift_G)
        self.a = pi * root + lam * (s_bar + pi * root)
        self.b = root / pi + ridge * (g_bar + root / pi)
        # the objective's damping: the λ and ε' parts around the factors, then + αI (no cross terms)
        self.a0, self.b0 = lam * s_bar, ridge * g_bar
        self.eS, self.VS = np.linalg.eigh(self.S)
        self.eG, self.VG = np.linalg.eigh(self.G)
        self.matvecs = 0

    # -- operators on 300 × 785 matrices ----------------------------------------------------------------
    def JtJ(self, V, joint=False):
        """Return JᵀJ V (joint: Jᵀ(I − H)J V) over the sample's rows (the output layer at its weights)."""
        self.matvecs += 1
        U = (self.A0 @ V.T.astype(np.float32)) * self.M  # N × h: the change of z_1 times h'
        O = U @ self.W2t.T  # N × K: the change of the outputs
        if joint:
            O = O - self.A1 @ (self.G1inv @ (self.A1.T @ O).astype(np.float64)).astype(np.float32)
        back = (O @ self.W2t) * self.M
        return (back.T @ self.A0).astype(np.float64)

    def kron(self, V):
        return self.S @ V @ self.G / self.n

    def damp_kfac(self, V):
        """[(S+aI)⊗(G+bI) − S⊗G]/n V."""
        return (self.a * (V @ self.G) + self.b * (self.S @ V) + self.a * self.b * V) / self.n

    def damp_obj(self, V):
        """[(S+a0 I)⊗(G+b0 I) − S⊗G]/n V + α V (bias spared)."""
        return (self.a0 * (V @ self.G) + self.b0 * (self.S @ V) + self.a0 * self.b0 * V) / self.n + self.alpha * V * self.mask

    def inv_kfac(self, R):
        """((S+aI)⊗(G+bI)/n)⁻¹ R: the solver's step (as layer_step, in the eigenbases)."""
        return self.n * (self.VS @ (((self.VS.T @ R @ self.VG) / (self.eS[:, None] + self.a)) / (self.eG[None, :] + self.b)) @ self.VG.T)

    def inv_obj(self, R):
        """((S+a0 I)⊗(G+b0 I)/n + αI)⁻¹ R (α on the bias column too: session 5's exact inversion)."""
        lam = np.outer(self.eS + self.a0, self.eG + self.b0) / self.n + self.alpha
        return self.VS @ ((self.VS.T @ R @ self.VG) / lam) @ self.VG.T

    def pcg(self, op, rhs, prec, x0, tol=1e-3, maxit=60):
        x = x0.copy()
        r = rhs - op(x)
        z = prec(r)
        p = z.copy()
        rz = float(np.sum(r * z))
        r0 = float(np.linalg.norm(rhs))
        it = 0
        while it < maxit and np.linalg.norm(r) > tol * r0:
            Ap = op(p)
            alpha = rz / float(np.sum(p * Ap))
            x += alpha * p
            r -= alpha * Ap
            z = prec(r)
            rz_new = float(np.sum(r * z))
            p = z + (rz_new / rz) * p
            rz = rz_new
            it += 1
        return x, it, float(np.linalg.norm(r) / r0)

    # -- objectives ------------------------------------------------------------------------------------------
    def _features(self, A0, W1):
        A1 = np.maximum(A0 @ W1.T.astype(np.float32), 0)
        return np.concatenate([A1, np.ones((len(A1), 1), np.float32)], axis=1)

    def objective_fixed(self, W1):
        A1 = self._features(self.A0, W1)
        r = self.T - A1 @ self.W2.T.astype(np.float32)
        return float(np.sum(r.astype(np.float64) ** 2)) + self.alpha * (np.sum(W1[:, :-1] ** 2) + np.sum(self.W2[:, :-1] ** 2))

    def refit(self, W1, alpha=None):
        """Return (objective at α with the output layer refitted, validation accuracy after α auto, α auto)."""
        s = self.s
        A1 = self._features(self.A0, W1)
        L = 2
        sums = {"n": float(len(A1)), "tt": float(np.sum(self.T.astype(np.float64) ** 2)),
                f"gram{L}": (A1.T @ A1).astype(np.float64), f"cross{L}": (A1.T @ self.T).T.astype(np.float64)}
        path = s._ridge_path(sums[f"cross{L}"], sums[f"gram{L}"])
        Wa = path.weights(self.alpha)
        E = quadratic_error(Wa, sums[f"cross{L}"], sums[f"gram{L}"], sums["tt"]) + self.alpha * (
            np.sum(W1[:, :-1] ** 2) + np.sum(Wa[:, :-1] ** 2))
        held = None
        if self.H0 is not None:
            H1 = self._features(self.H0, W1)
            held = {"n": float(len(H1)), "tt": float(np.sum(self.HT.astype(np.float64) ** 2)),
                    f"gram{L}": (H1.T @ H1).astype(np.float64), f"cross{L}": (H1.T @ self.HT).T.astype(np.float64)}
        Wauto, _, a_auto = s.output_layer(sums, held)
        V1 = self._features(self.V0, W1)
        z = V1 @ Wauto.T.astype(np.float32)
        pred = (z[:, 0] > 0.5).astype(int) if z.shape[1] == 1 else np.argmax(z, axis=1)
        acc = float(np.mean(s.classes[pred] == self.vy)) if hasattr(s, "classes") else float("nan")
        return float(E), acc, float(a_auto)

    def quad(self, V, joint):
        """The decrease of E the undamped Gauss-Newton model predicts for step V (block or joint)."""
        return float(2 * np.sum(self.g * V) - np.sum(V * (self.JtJ(V, joint) + self.alpha * V * self.mask)))

    def rayleigh(self, V):
        return float(np.sum(V * self.JtJ(V)) / np.sum(V * self.kron(V)))


def analyse(an: Analyst, scan, variants, maxit: int = 60) -> dict:
    t0 = time.perf_counter()
    out = {"n": an.n, "alpha": an.alpha, "damping": an.lam, "D_check": an.D_check, **an.parts,
           "a_kfac": an.a, "b_kfac": an.b, "a_obj": an.a0, "b_obj": an.b0,
           "S_diag": float(np.mean(np.diag(an.S))), "G_diag": an.parts["g_bar"]}
    E0_fixed = an.objective_fixed(an.W1)
    E0, acc0, a0 = an.refit(an.W1)
    out.update({"E0": E0, "E0_fixed": E0_fixed, "acc0": acc0})
    # the descent direction's two parts: the data's D and the weight decay's −αW̃ (and the K-FAC step of each)
    decay = an.g - an.D
    pen1, pen2 = float(np.sum(an.W1[:, :-1] ** 2)), float(np.sum(an.W2[:, :-1] ** 2))
    s_data, s_decay = an.inv_kfac(an.D), an.inv_kfac(decay)
    _, acc_data, _ = an.refit(an.W1 + s_data)
    out["parts_of_g"] = {"norm_D": float(np.linalg.norm(an.D)), "norm_decay": float(np.linalg.norm(decay)),
                         "cos_D_g": float(np.sum(an.D * an.g) / (np.linalg.norm(an.D) * np.linalg.norm(an.g))),
                         "error": E0_fixed - an.alpha * (pen1 + pen2), "alpha_pen1": an.alpha * pen1,
                         "alpha_pen2": an.alpha * pen2, "norm_W1": float(np.sqrt(pen1)),
                         "kfac_data_rel": float(np.linalg.norm(s_data) / np.linalg.norm(an.W1)),
                         "kfac_decay_rel": float(np.linalg.norm(s_decay) / np.linalg.norm(an.W1)),
                         "kfac_decay_shrink": float(-np.sum(s_decay * an.W1) / np.sum(an.W1 * an.W1)),
                         "acc_data_only": acc_data}
    steps = {}
    steps["kfac"] = (an.inv_kfac(an.g), 0, 0.0)
    steps["kfac-obj"] = (an.inv_obj(an.g), 0, 0.0)
    for name, joint, damp, prec, base in (("exact", False, an.damp_kfac, an.inv_kfac, "kfac"),
                                          ("joint", True, an.damp_kfac, an.inv_kfac, "kfac"),
                                          ("exact-obj", False, an.damp_obj, an.inv_obj, "kfac-obj"),
                                          ("joint-obj", True, an.damp_obj, an.inv_obj, "kfac-obj")):
        if name not in variants:
            continue
        m0 = an.matvecs
        x, it, res = an.pcg(lambda V, j=joint, d=damp: an.JtJ(V, j) + d(V), an.g, prec, steps[base][0], maxit=maxit)
        steps[name] = (x, it, res)
        out[f"{name}_matvecs"] = an.matvecs - m0
    rng = np.random.default_rng(0)
    ray = {"grad": an.rayleigh(an.g), "random": an.rayleigh(rng.standard_normal(an.g.shape))}
    Wn = float(np.linalg.norm(an.W1))
    res = {}
    for name in variants:
        if name not in steps:
            continue
        V, it, rres = steps[name]
        ray[name] = an.rayleigh(V)
        row = {"pcg_iterations": it, "pcg_residual": rres, "rel_norm": float(np.linalg.norm(V) / Wn),
               "pred_block": an.quad(V, False), "pred_joint": an.quad(V, True),
               "act_fixed": E0_fixed - an.objective_fixed(an.W1 + V)}
        row["cos_kfac"] = float(np.sum(V * steps["kfac"][0]) / (np.linalg.norm(V) * np.linalg.norm(steps["kfac"][0])))
        scan_rows = []
        for t in scan:
            E, acc, aa = an.refit(an.W1 + t * V)
            scan_rows.append({"t": t, "act_refit": E0 - E, "val_acc": acc, "alpha_auto": aa})
        row["scan"] = scan_rows
        res[name] = row
    out["variants"] = res
    out["rayleigh"] = ray
    out["seconds"] = time.perf_counter() - t0
    return out


def make_subclass(records: list, scan, variants, val, trials: int, maxit: int = 60):
    class Probe(GaussNewtonSolver):
        _pass = None

        def _curvature_pass(self, runner, weights, objective, k, sample, alpha, **kw):
            type(self)._pass = (runner, sample)
            return super()._curvature_pass(runner, weights, objective, k, sample, alpha, **kw)

        def trial_weights(self, weights, curv, input_gram, damping, alpha=0.0):
            trial = super().trial_weights(weights, curv, input_gram, damping, alpha)
            if len(records) < trials and self.L == 2 and type(self)._pass is not None:
                runner, sample = type(self)._pass
                an = Analyst(self, runner, sample, weights, curv, input_gram, damping, alpha, val)
                stock = np.asarray(trial[0]) - np.asarray(weights[0], np.float64)
                rec = analyse(an, scan, variants, maxit)
                rec["stock_vs_kfac"] = float(np.linalg.norm(stock - self._kfac_check(an)) / np.linalg.norm(stock))
                rec["trial"] = len(records)
                records.append(rec)
                print(json.dumps(_brief(rec)), flush=True)
            return trial

        @staticmethod
        def _kfac_check(an):
            return an.s.config.step_size * an.inv_kfac(an.g)
    return Probe


def _brief(rec):
    v = rec["variants"]
    return {"trial": rec["trial"], "n": rec["n"], "alpha": round(rec["alpha"], 2), "acc0": rec["acc0"],
            "parts": {k: round(x, 4) for k, x in rec["parts_of_g"].items()},
            **{k: (round(x["rel_norm"], 3), x["pcg_iterations"],
                   [(s["t"], round(s["act_refit"], 1), s["val_acc"]) for s in x["scan"]]) for k, x in v.items()},
            "ray": {k: round(x, 3) for k, x in rec["rayleigh"].items()}, "sec": round(rec["seconds"], 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=["mnist10", "mnist-oddeven", "mnist10-2k", "mnist-oddeven-2k"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--scan", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 3.0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--chunk-rows", type=int, default=8192)
    p.add_argument("--maxit", type=int, default=60, help="PCG iterations at most")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    from solvers.reference import fit_in_memory
    for seed in a.seeds:
        Xtr, ytr, Xva, yva = load(a.task, seed)
        records = []
        cls = make_subclass(records, a.scan, a.variants, (Xva, yva), a.trials, a.maxit)
        stock = SOLVERS["gauss-newton"]
        SOLVERS["gauss-newton"] = cls
        try:
            cfg = TrainConfig(solver="gauss-newton", hidden_alpha="readout", iterations=a.trials, seed=seed)
            hist = []
            fit_in_memory(Xtr, ytr, cfg, chunk_rows=None if a.task.endswith("-2k") else a.chunk_rows,
                          X_test=Xva, y_test=yva, callback=hist.append)
        finally:
            SOLVERS["gauss-newton"] = stock
        rec = {"task": a.task, "seed": seed, "trials": records, "load": os.getloadavg()[0],
               "history": [{k: h.get(k) for k in ("iteration", "test_accuracy", "alpha", "accepted", "damping",
                                                  "sample_rows")} for h in hist]}
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
