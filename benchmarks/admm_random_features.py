"""Breast cancer: is any fixed random ReLU feature map of width 300 as good as logistic regression on the inputs, at C = 1?

ADMM's hidden layer moves 7-10 % from its start on breast cancer (``admm_alpha_diag.py``), so its readout
is close to logistic regression on random features. Per ``defaults_real.py`` validation split (seeds
0-11), on standardised inputs, ``LogisticRegression(C)`` (all training rows) is fitted on:

* ``inputs``: the inputs (this is logistic regression);
* ``diff``: ``relu(W x)``, rows of W He-norm differences of two random training rows (the solvers' ``init="data"``),
  ``he``: He-scaled Gaussian rows, ``pm_axes``: ``diff`` with the first 2d rows ``±√2 e_i`` (so x is
  representable: ``relu(x) − relu(−x) = x``), ``pm_diff``: ``diff`` with antithetic pairs (w, −w),
  ``white_diff``: differences in whitened coordinates;
* ``skip_s``: ``[x, s · relu(W_diff x)]`` (the inputs beside features penalised 1/s² as much);
* ``b*``: ``relu(W_diff x + b)``: b 0, hinge through a random training row, +1 / +2 sd of the unit, U(±2 sd).

Run::

    python benchmarks/admm_random_features.py
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import defaults_real as dr  # noqa: E402


def feature_sets(A, B, seed: int, k: int = 300) -> dict:
    """Return {name: (train features, evaluation features)} of the module docstring for standardised ``A``, ``B``."""
    d = A.shape[1]
    rng = np.random.default_rng(seed)
    he = rng.standard_normal((k, d)) * np.sqrt(2 / d)
    i = rng.permutation(len(A))[:2 * k].reshape(2, -1) if 2 * k <= len(A) else np.array([rng.choice(len(A), k),
                                                                                           rng.choice(len(A), k)])
    i[1] = np.where(i[0] == i[1], (i[1] + 1) % len(A), i[1])
    diff = A[i[0]] - A[i[1]]
    diff = diff / np.linalg.norm(diff, axis=1, keepdims=True) * np.sqrt(2)
    ax = diff.copy()
    ax[:d], ax[d:2 * d] = np.sqrt(2) * np.eye(d), -np.sqrt(2) * np.eye(d)
    pmd = diff.copy()
    pmd[k // 2:] = -diff[:k // 2]
    e, V = np.linalg.eigh(np.cov(A.T))
    wd = diff @ (V @ np.diag(1 / np.sqrt(np.maximum(e, 1e-3))) @ V.T)
    wd = wd / np.linalg.norm(wd, axis=1, keepdims=True) * np.sqrt(2)
    out = {"inputs": (A, B)}
    for name, W in (("diff", diff), ("he", he), ("pm_axes", ax), ("pm_diff", pmd), ("white_diff", wd)):
        out[name] = (np.maximum(A @ W.T, 0), np.maximum(B @ W.T, 0))
    Fd, Gd = out["diff"]
    for s in (1, 0.5, 0.3, 0.1):
        out[f"skip_s{s}"] = (np.hstack([A, s * Fd]), np.hstack([B, s * Gd]))
    j = rng.integers(len(A), size=k)
    pre, pre_e = A @ diff.T, B @ diff.T
    sd = pre.std(0)
    for name, b in (("b_data", -(A[j] * diff).sum(1)), ("b_1sd", sd), ("b_2sd", 2 * sd), ("b_unif", rng.uniform(-2, 2, k) * sd)):
        out[name] = (np.maximum(pre + b, 0), np.maximum(pre_e + b, 0))
    return out


def main():
    from sklearn.linear_model import LogisticRegression

    warnings.filterwarnings("ignore", module="sklearn")
    res = {}
    for seed in range(12):
        X, y, Xe, ye, _ = dr.load_task("breast-cancer", "validation", seed)
        mu, sd = X.mean(0), X.std(0)
        A, B = ((X - mu) / sd).astype(np.float64), ((Xe - mu) / sd).astype(np.float64)
        for name, (F, G) in feature_sets(A, B, seed).items():
            for C in (1.0, 0.1):
                res.setdefault((name, C), []).append(LogisticRegression(C=C, max_iter=2000).fit(F, y).score(G, ye))
    lr = np.array(res[("inputs", 1.0)])
    print("| features | C | mean acc | Δ rows vs logistic regression (C = 1, inputs) | splits below it |")
    print("|---|---|---|---|---|")
    for (name, C), v in res.items():
        v = np.array(v)
        print(f"| {name} | {C} | {v.mean():.4f} | {((v - lr) * len(ye)).mean():+.2f} | {int((v < lr - 1e-9).sum())} |")


if __name__ == "__main__":
    main()
