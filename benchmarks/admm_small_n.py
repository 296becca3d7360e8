"""ADMM and dlADMM on a small data set over many splits: where the held-out error comes from.

One 80/20 test split of breast cancer (114 rows) moves in steps of 0.009, so
the question "why do ADMM/dlADMM lose to logistic regression there" is asked
over ``--splits`` stratified splits (``random_state`` 100, 101, …) of
scikit-learn's breast cancer (or digits), each run with the defaults (only
``--hidden``; ``validation_fraction`` 0.1: ~45 held-out rows). Per split and
method it records the test accuracy of:

* ``model``: the run's model (the driver's choice: best held-out accuracy, ties by held-out loss);
* ``by-loss``: the iteration of least held-out loss (the readout's cross-entropy);
* ``best``: the best test accuracy of any iteration (not a model anyone could pick);
* ``readout@init``: logistic regression (scikit-learn, ``C`` from a grid, and ``C`` of least held-out
  loss) on the hidden features of the initial weights, the hidden layers never moved;
* ``logreg``: ``LogisticRegression`` on standardised inputs (the peer of ``defaults_real.py``).

Run (``PYTHONPATH`` = the checkout measured)::

    python benchmarks/admm_small_n.py --splits 8 --out benchmarks/results/admm_small_n_s6.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import parse_settings, provenance  # noqa: E402

CS = (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)  # scikit-learn's C = 1/α of the readout on the initial features


def setup(X, y, config):
    """Return (solver, in-memory runner, held-out mask) as :func:`solvers.reference.fit_in_memory` makes them."""
    from solvers import make_solver
    from solvers.driver import model_from_moments, split_chunks
    from solvers.inmemory import InMemoryRunner
    from solvers.losses import encode_labels
    from solvers.stats import moment_sums

    shift = X[0].astype(np.float64)
    model = model_from_moments(config, X.shape[1], moment_sums(X, shift), shift, np.unique(y))
    solver = make_solver(config, X.shape[1], **model, dtype=np.float32)
    _, chunks, split = split_chunks(X.shape[0], None, X.shape[0], config)
    runner = InMemoryRunner(solver, X, encode_labels(y, model["classes"]), bounds=chunks, split=split)
    return solver, runner, split.mask(0, X.shape[0])


def run(X, y, X_test, y_test, config) -> dict:
    """Return every iteration's held-out accuracy and loss, test accuracy and α, and the driver's model."""
    from solvers.loop import initialize, iterate
    from solvers.validation import EarlyStopping

    solver, runner, held = setup(X, y, config)
    state = initialize(solver, runner)
    stopping, curve = EarlyStopping(config.patience), []
    for state, metrics in iterate(solver, runner, state, config.iterations):
        net = solver.network(state.weights, metrics)
        curve.append({"iteration": state.iteration, "validation": net.score(X[held], y[held]),
                      "validation_loss": metrics.get("validation_loss"), "test": net.score(X_test, y_test),
                      "alpha": metrics.get("alpha")})
        if stopping.update(state.iteration, curve[-1]["validation"], [], curve[-1]["validation_loss"]):
            break
    by_loss = min(curve, key=lambda r: r["validation_loss"])
    return {"model": curve[stopping.best_iteration - 1]["test"], "model_iteration": stopping.best_iteration,
            "by-loss": by_loss["test"], "best": max(r["test"] for r in curve), "curve": curve}


def readout_at_init(X, y, X_test, y_test, config) -> dict:
    """Return logistic regression's test accuracy on the initial weights' hidden features for every C, and by held-out loss."""
    from sklearn.linear_model import LogisticRegression

    from solvers.loop import initialize
    from solvers.network import standardize

    solver, runner, held = setup(X, y, config)
    W1 = np.asarray(initialize(solver, runner).weights[0])

    def features(A):
        return np.maximum(standardize(A, solver.x_mean, solver.x_scale) @ W1[:, :-1].T + W1[:, -1], 0)

    F, F_test = features(X), features(X_test)
    out, losses = {}, []
    for C in CS:
        lr = LogisticRegression(C=C, max_iter=5000).fit(F[~held], y[~held])
        p = np.clip(lr.predict_proba(F[held])[np.arange(held.sum()), np.searchsorted(lr.classes_, y[held])], 1e-12, 1)
        losses.append(-np.mean(np.log(p)))
        out[f"C={C:g}"] = lr.score(F_test, y_test)
    out["by-loss"] = out[f"C={CS[int(np.argmin(losses))]:g}"]
    return out


def main(argv=None):
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from solvers.config import TrainConfig

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=("breast-cancer", "digits"), default="breast-cancer")
    p.add_argument("--splits", type=int, default=8)
    p.add_argument("--solvers", nargs="+", default=["admm", "dladmm"])
    p.add_argument("--hidden", type=int, default=300)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a TrainConfig setting of the ADMM/dlADMM runs (e.g. input_skip=false)")
    p.add_argument("--no-readout-init", action="store_true", help="skip the readout@init rows")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    settings = parse_settings(args.set)
    X_all, y_all = (load_breast_cancer if args.task == "breast-cancer" else load_digits)(return_X_y=True)
    results = {"provenance": provenance(), "task": args.task, "settings": settings, "splits": []}
    t0 = time.perf_counter()
    for s in range(args.splits):
        X, X_test, y, y_test = train_test_split(X_all, y_all, test_size=0.2, random_state=100 + s, stratify=y_all)
        X, X_test = X.astype(np.float32), X_test.astype(np.float32)
        row = {"random_state": 100 + s, "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
               .fit(X, y).score(X_test, y_test)}
        if not args.no_readout_init:
            row["readout@init"] = readout_at_init(X, y, X_test, y_test, TrainConfig(solver="admm", hidden=(args.hidden,)))
        for name in args.solvers:
            row[name] = run(X, y, X_test, y_test, TrainConfig(solver=name, hidden=(args.hidden,),
                                                              iterations=20 if name == "admm" else 30, **settings))
        results["splits"].append(row)
        print(s, {k: (round(v, 4) if isinstance(v, float) else round(v.get("model", v.get("by-loss")), 4))
                  for k, v in row.items() if k != "random_state"}, flush=True)
    results["seconds"] = time.perf_counter() - t0
    summary = summarise(results)
    print(summary)
    if args.out:
        Path(args.out).write_text(json.dumps({**results, "summary": summary}, indent=1, default=float))


def summarise(results: dict) -> str:
    """Return the mean test accuracy of every method and choice over the splits."""
    rows = results["splits"]
    lines = [f"{len(rows)} splits of {results['task']}; mean test accuracy (sd):"]

    def line(name, values):
        v = np.array(values)
        lines.append(f"  {name:<26} {v.mean():.4f} ({v.std():.4f})")

    line("logreg", [r["logreg"] for r in rows])
    for key in rows[0].get("readout@init", {}):
        line(f"readout@init {key}", [r["readout@init"][key] for r in rows])
    for name in (k for k in rows[0] if k not in ("random_state", "logreg", "readout@init")):
        for choice in ("model", "by-loss", "best"):
            line(f"{name} {choice}", [r[name][choice] for r in rows])
    return "\n".join(lines)


if __name__ == "__main__":
    main()
