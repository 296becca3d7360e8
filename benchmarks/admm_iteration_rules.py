"""ADMM / dlADMM: the model's iteration by other rules, replayed on session 8's recorded curves (no new runs).

Reads ``benchmarks/results/defaults_real_admm_s8.json`` (``admm_readout_cv.py``'s runs; the
readout as the solver runs it, ``plain/held/curve``: per iteration the held-out accuracy and
loss and the evaluation accuracy) and, for the validation runs and the eight breast-cancer
splits only (never the ``test_*`` entries), picks the model's iteration by:

``today`` (best held-out accuracy, exact ties by lower held-out loss: :class:`solvers.validation.EarlyStopping`);
``first`` / ``last`` (ties to the earliest / latest iteration); ``margin2`` (a new best only when at least
two held-out rows better); ``tol1-loss`` / ``tol1-first`` (among iterations within one held-out row of the
best, the least held-out loss / the earliest); ``loss`` (least held-out loss).

Prints per group the mean evaluation accuracy, the mean and largest drift (best evaluation accuracy of any
iteration − the kept one's: ``defaults_real.py``'s "best seen" gap) and how many runs drift more than 0.005. Run::

    python benchmarks/admm_iteration_rules.py
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).resolve().parent / "results" / "defaults_real_admm_s8.json"


def rules(curve) -> dict:
    """Return {rule: index of the kept iteration} for one run's curve."""
    acc = np.array([c["held_acc"] for c in curve])
    loss = np.array([c["held_loss"] for c in curve])
    best = acc.max()
    ties = np.flatnonzero(np.abs(acc - best) < 1e-9)
    steps = np.diff(np.unique(np.round(acc, 9)))
    row = steps.min() if len(steps) else 1.0  # one held-out row
    near = np.flatnonzero(acc >= best - row - 1e-9)
    kept = 0
    for i in range(1, len(acc)):
        if acc[i] >= acc[kept] + 2 * row - 1e-9:
            kept = i
    return {"today": int(ties[np.argmin(loss[ties])]), "first": int(ties[0]), "last": int(ties[-1]), "margin2": kept,
            "tol1-loss": int(near[np.argmin(loss[near])]), "tol1-first": int(near[0]), "loss": int(np.argmin(loss))}


def main():
    data = json.loads(SOURCE.read_text())
    groups: dict = {}
    for key, entry in data.items():
        if key.startswith("test"):
            continue  # the test split is not for choosing
        group = "bc8" if key.startswith("bc8") else "validation"
        for by in entry["runs"].values():
            for run in by.values():
                curve = run["plain/held/curve"]
                ev = np.array([c["eval"] for c in curve])
                for rule, i in rules(curve).items():
                    groups.setdefault((group, rule), []).append((ev[i], ev.max() - ev[i]))
    print("| runs | rule | mean accuracy | mean drift | largest drift | drift > 0.005 |\n|---|---|---|---|---|---|")
    for (group, rule), v in sorted(groups.items()):
        v = np.array(v)
        print(f"| {group} | {rule} | {v[:, 0].mean():.4f} | {v[:, 1].mean():.4f} | {v[:, 1].max():.4f} | "
              f"{int((v[:, 1] > 0.005).sum())} / {len(v)} |")


if __name__ == "__main__":
    main()
