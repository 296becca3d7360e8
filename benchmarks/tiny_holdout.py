"""Tiny data: does early stopping on a handful of held-out rows help or hurt? (newuser14 F2, session 15)

For each task and seed, a fixed 20 % test split (seed 0, never read here) is set aside; the
remaining rows are split again by the seed into 80 % fit / 20 % *validation* (the score of this
table). Two arms are fitted on the same fit rows, in memory (:func:`solvers.reference.fit_in_memory`,
the pipeline's code chunk by chunk) with the defaults (Gauss-Newton, 20 iterations, 300 hidden):

* ``split``: the default ``validation_fraction`` 0.1 of the fit rows held out for early stopping and
  the kept iteration (as before session 15 on every size);
* ``all``: no held-out rows (``validation_fraction`` 0): every fit row trains, the last iteration is kept
  (HistGradientBoosting's ``early_stopping="auto"`` on small data);
* ``floor``: the held-out fraction raised to ``min(0.25, 30 / n)`` where 0.1 would hold out fewer than 30 rows
  (the rule session 15 adopted, :func:`solvers.validation.held_out_fraction`), else 0.1 as ``split``.

Tasks: iris (150), wine (178), breast cancer (569) and its 150- and 300-row subsets, 30 iris rows, and the
HIGGS-shaped task nobody tuned on (``benchmarks/higgs_like.py``: teacher seed 0, width 300, Bayes accuracy 0.78),
250 rows.
Run::

    python benchmarks/tiny_holdout.py --seeds 0 1 2 3 4 5 6 7 8 9 --out benchmarks/results/debt15_tiny_s15.json
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

TASKS = ("iris", "wine", "bc150", "bc300", "breast-cancer", "iris30", "higgs250")


def load(task: str):
    from sklearn import datasets

    if task == "higgs250":
        from benchmarks import higgs_like

        teacher = higgs_like.make_teacher(0, 300)
        teacher.temperature = higgs_like.calibrate(teacher, 0, 0.78)
        rng = np.random.default_rng([0, 7])
        X = higgs_like.features(rng, 250)
        return X.astype(np.float32), (rng.random(250) < teacher.prob(X)).astype(np.int64)
    if task.startswith("iris"):
        X, y = datasets.load_iris(return_X_y=True)
    elif task == "wine":
        X, y = datasets.load_wine(return_X_y=True)
    else:
        X, y = datasets.load_breast_cancer(return_X_y=True)
    keep = {"bc150": 150, "bc300": 300, "iris30": 30}.get(task)
    if keep is not None:
        rows = np.random.default_rng(123).permutation(len(y))[:keep]
        X, y = X[rows], y[rows]
    return X.astype(np.float32), y


def split(X, y, seed: int):
    """Return the fit and validation rows of ``seed`` (the test 20 % of seed 0 set aside first, never read)."""
    from sklearn.model_selection import train_test_split

    Xtr, _, ytr, _ = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    return train_test_split(Xtr, ytr, test_size=0.2, random_state=1000 + seed, stratify=ytr)


def run(task: str, seed: int, arm: str) -> dict:
    from solvers.config import TrainConfig
    from solvers.reference import fit_in_memory
    from solvers.validation import RowSplit

    X, y = load(task)
    Xf, Xv, yf, yv = split(X, y, seed)
    from solvers import validation

    fraction = {"split": 0.1, "all": 0.0, "floor": max(0.1, min(0.25, 30 / len(yf)))}[arm]
    cfg = TrainConfig(seed=seed, validation_fraction=fraction)
    floor, validation.MIN_HELD_OUT = validation.MIN_HELD_OUT, (0 if arm == "split" else validation.MIN_HELD_OUT)
    try:  # "split": the rule before session 15 (no floor); "floor" gives the floor's share explicitly
        out = fit_in_memory(Xf, yf, cfg)
    finally:
        validation.MIN_HELD_OUT = floor
    acc = float(np.mean(out.network.predict(Xv) == yv))
    held = RowSplit(fraction, seed).count(len(yf)) if fraction else 0
    return {"task": task, "seed": seed, "arm": arm, "fit_rows": len(yf), "held_out": held,
            "validation_rows": len(yv), "accuracy": acc, "kept": out.best_iteration, "iterations": len(out.history)}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    p.add_argument("--arms", nargs="+", default=["split", "all"], choices=["split", "all", "floor"])
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    rows = []
    for task in a.tasks:
        for seed in a.seeds:
            for arm in (a.arms if seed % 2 == 0 else a.arms[::-1]):
                r = run(task, seed, arm)
                rows.append(r)
                print(json.dumps(r), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")
    for task in a.tasks:
        acc = {arm: np.array([r["accuracy"] for r in rows if r["task"] == task and r["arm"] == arm]) for arm in a.arms}
        for arm in a.arms[1:]:
            d = acc[arm] - acc[a.arms[0]]
            held = sorted({r["held_out"] for r in rows if r["task"] == task and r["arm"] == arm})
            print(f"{task}: {arm} held out {held[0]}-{held[-1]}, {a.arms[0]} {acc[a.arms[0]].mean():.4f}, {arm} "
                  f"{acc[arm].mean():.4f}, paired diff {d.mean():+.4f} (wins {int((d > 0).sum())}, losses "
                  f"{int((d < 0).sum())}, ties {int((d == 0).sum())})")


if __name__ == "__main__":
    main()
