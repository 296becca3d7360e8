"""Our defaults against scikit-learn on real data, side by side, every task with a held-out test split.

Our solvers run with their defaults: only the hidden width and the iteration
count are given (everything else, α, early stopping, scaling, loss, comes from
:class:`solvers.config.TrainConfig`). The peers run with scikit-learn's
defaults at the same width: ``MLPClassifier(adam, early_stopping=True)``,
``MLPClassifier(adam)`` (its default ``max_iter=200`` epochs),
``LogisticRegression`` (``max_iter=1000``) and
``HistGradientBoostingClassifier``; MLPs and logistic regression see
``StandardScaler``-ed inputs, as scikit-learn's user guide recommends.

Tasks (each split once with ``--seed``; the test split is never used to
choose anything):

* ``digits``: scikit-learn's 8×8 digits, 10 classes, 20 % test;
* ``breast-cancer``: scikit-learn's breast cancer, 2 classes, 20 % test;
* ``mnist-oddeven``, ``mnist10``: ``shared/data/mnist70k_uint8.npz``, the first
  60 000 images train, the last 10 000 test; ``-2k``: the first 2 000 training images;
* ``covtype``: ``shared/data/covtype_balanced_10k.csv``, 7 classes, 80/20 split.

``--split validation`` replaces every test split by a validation split carved
out of the training rows (20 %), for tuning: the committed table uses
``--split test``. Methods ``gn``, ``admm``, ``dladmm`` run the in-memory
reference (:func:`solvers.reference.fit_in_memory`, the code the pipeline
runs chunk by chunk; so do ``consensus`` and ``handover``, i.e. ``--solver consensus,gauss-newton``, when
asked for); ``gn-pipeline`` runs ``python -m pipeline.train`` as a
user does (ingested data store, local Dask cluster of 2 workers, then
``python -m pipeline.evaluate --json``); ``gn-squared`` and ``gn-ce`` are ``gn``
with ``--loss squared`` and ``--loss cross-entropy`` (the two losses side by side). Seconds are wall-clock seconds of the
fit alone (data loading excluded; for ``gn-pipeline`` the whole training
command, cluster start included). The CPU time other processes used meanwhile
is recorded (``other CPU s``): the machine is shared.

Run::

    python benchmarks/defaults_real.py --split test --out benchmarks/results/defaults_real.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import CpuWatch, parse_settings, provenance, write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
TASKS = ("digits", "breast-cancer", "mnist-oddeven-2k", "mnist10-2k", "covtype", "mnist-oddeven", "mnist10")
OURS = {"gn": "gauss-newton", "admm": "admm", "dladmm": "dladmm",
        "consensus": "consensus", "handover": "consensus,gauss-newton",  # not by default
        "gn-squared": "gauss-newton", "gn-ce": "gauss-newton"}  # the two losses of gauss-newton, side by side
LOSS_OF = {"gn-squared": "squared", "gn-ce": "cross-entropy"}  # --loss given to these (not by default)
PEERS = ("mlp-adam-es", "mlp-adam", "logreg", "hgb")
ITERATIONS = {"gauss-newton": 30, "admm": 20, "dladmm": 30, "consensus": 20, "consensus,gauss-newton": 20}


def load_task(name: str, split: str, seed: int):
    """Return (X_train, y_train, X_eval, y_eval, description) of a task; eval is the test or a validation split."""
    from sklearn.model_selection import train_test_split

    if name in ("digits", "breast-cancer"):
        from sklearn.datasets import load_breast_cancer, load_digits

        X, y = (load_digits if name == "digits" else load_breast_cancer)(return_X_y=True)
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=seed, stratify=y)
        about = f"scikit-learn {name}, 80/20 stratified split (random_state={seed})"
    elif name.startswith("mnist"):
        with np.load(DATA / "mnist70k_uint8.npz") as f:
            X, y = f["X"], f["y"]
        if "oddeven" in name:
            y = y % 2
        n = 2000 if name.endswith("-2k") else 60000
        Xtr, ytr, Xte, yte = X[:n], y[:n], X[60000:], y[60000:]
        about = f"MNIST, first {n} training images, the 10 000 test images"
    elif name == "covtype":
        raw = np.loadtxt(DATA / "covtype_balanced_10k.csv", delimiter=",", skiprows=1)
        X, y = raw[:, :-1], raw[:, -1].astype(np.int64)
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=seed, stratify=y)
        about = f"covtype_balanced_10k.csv, 80/20 stratified split (random_state={seed})"
    else:
        raise SystemExit(f"unknown task {name}")
    if split == "validation":  # tune here: carve a validation split out of the training rows
        Xtr, Xte, ytr, yte = train_test_split(Xtr, ytr, test_size=0.2, random_state=seed + 1, stratify=ytr)
        about += "; VALIDATION split: 20 % of the training rows (test rows unused)"
    return Xtr.astype(np.float32), ytr, Xte.astype(np.float32), yte, about


def run_ours(solver, Xtr, ytr, Xte, yte, hidden, seed, settings):
    from solvers.config import TrainConfig
    from solvers.reference import fit_in_memory

    cfg = TrainConfig(solver=solver, hidden=hidden, iterations=settings.pop("iterations", ITERATIONS[solver]),
                      seed=seed, **settings)
    t0 = time.perf_counter()
    r = fit_in_memory(Xtr, ytr, cfg, X_test=Xte, y_test=yte)
    seconds = time.perf_counter() - t0 - sum(0 for _ in ())
    curve = [h.get("test_accuracy") for h in r.history]
    return {"accuracy": r.network.score(Xte, yte), "seconds": seconds, "best_iteration": r.best_iteration,
            "iterations_run": len(r.history), "best_accuracy_seen": max(curve) if curve else None,
            "alpha": [h.get("alpha") for h in r.history],
            "curve": curve, "config": {k: v for k, v in cfg.to_dict().items() if k != "extra"}}


def run_pipeline(Xtr, ytr, Xte, yte, hidden, seed, iterations, workdir: Path):
    """Train through the CLI as a user does (ingested stores, local cluster), evaluate with pipeline.evaluate."""
    from storage.data import write_data

    train, test, run = workdir / "train.zarr", workdir / "test.zarr", workdir / "run.zarr"
    write_data(train, Xtr, ytr, source="defaults_real train", overwrite=True)
    write_data(test, Xte, yte, source="defaults_real test", overwrite=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pipeline.train", "--data", str(train), "--store", str(run), "--overwrite",
           "--hidden", ",".join(map(str, hidden)), "--iterations", str(iterations), "--seed", str(seed),
           "--workers", "2", "--dashboard-address", ":0", "--no-progress"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    ev = subprocess.run([sys.executable, "-m", "pipeline.evaluate", "--store", str(run), "--data", str(test),
                         "--json", "--workers", "2", "--dashboard-address", ":0"], env=env, capture_output=True,
                        text=True, cwd=ROOT)
    if ev.returncode:
        raise RuntimeError(ev.stderr[-2000:])
    metrics = json.loads(ev.stdout.strip().splitlines()[-1])
    return {"accuracy": metrics["accuracy"], "seconds": seconds, "evaluate": metrics,
            "command": " ".join(cmd[1:]).replace(str(workdir), "$WORK"),
            "log_tail": out.stdout.strip().splitlines()[-3:]}


def run_peer(name, Xtr, ytr, Xte, yte, hidden, seed):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "mlp-adam-es":
        model = make_pipeline(StandardScaler(), MLPClassifier(hidden, early_stopping=True, random_state=seed))
    elif name == "mlp-adam":
        model = make_pipeline(StandardScaler(), MLPClassifier(hidden, random_state=seed))
    elif name == "logreg":
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    else:
        model = HistGradientBoostingClassifier(random_state=seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(Xtr, ytr)
    seconds = time.perf_counter() - t0
    est = model[-1] if hasattr(model, "steps") else model
    return {"accuracy": float(model.score(Xte, yte)), "seconds": seconds,
            "iterations_run": int(np.max(getattr(est, "n_iter_", 0)))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--methods", nargs="+", default=[*(m for m in OURS if m in ("gn", "admm", "dladmm")), "gn-pipeline",
                                                    *PEERS],
                   choices=[*OURS, "gn-pipeline", *PEERS])
    p.add_argument("--split", choices=("test", "validation"), default="test")
    p.add_argument("--hidden", default="300")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", action="append", default=[], metavar="SOLVER=N",
                   help="iteration budget of one of our solvers (a user's --iterations), e.g. gauss-newton=100; "
                        f"default {ITERATIONS}")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="tuning only: a TrainConfig setting for our in-memory solvers (the table uses none)")
    p.add_argument("--out", default=None, help="JSON results (merged into an existing file by task and method)")
    args = p.parse_args(argv)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    for item in args.iterations:
        name, value = item.split("=", 1)
        ITERATIONS[name] = int(value)
    settings = parse_settings(args.set)
    out = Path(args.out) if args.out else None
    results = json.loads(out.read_text()) if out and out.exists() else {"runs": {}}
    results.setdefault("provenance", []).append({**provenance(), "tasks": args.tasks, "methods": args.methods,
                                                 "iterations": dict(ITERATIONS)})
    for task in args.tasks:
        Xtr, ytr, Xte, yte, about = load_task(task, args.split, args.seed)
        print(f"== {task}: {len(ytr)} train / {len(yte)} {args.split} rows, {Xtr.shape[1]} features; {about}",
              flush=True)
        for method in args.methods:
            with CpuWatch() as cpu:
                if method in OURS:
                    given = {**settings, **({"loss": LOSS_OF[method]} if method in LOSS_OF else {})}
                    r = run_ours(OURS[method], Xtr, ytr, Xte, yte, hidden, args.seed, given)
                elif method == "gn-pipeline":
                    with tempfile.TemporaryDirectory(prefix="defaults-real-") as tmp:
                        r = run_pipeline(Xtr, ytr, Xte, yte, hidden, args.seed, ITERATIONS["gauss-newton"],
                                         Path(tmp))
                else:
                    r = run_peer(method, Xtr, ytr, Xte, yte, hidden, args.seed)
            r.update(other_cpu_seconds=cpu.other, about=about, split=args.split, n_train=len(ytr),
                     budget=ITERATIONS[OURS.get(method, "gauss-newton")] if method in (*OURS, "gn-pipeline") else None,
                     settings=given if method in OURS else {})
            results["runs"].setdefault(task, {})[method] = r
            extra = (f" best it {r.get('best_iteration')}/{r.get('iterations_run')}, best seen "
                     f"{r.get('best_accuracy_seen') or 0:.4f}" if method in OURS else "")
            print(f"  {method:<14} {r['accuracy']:.4f}  {r['seconds']:7.1f} s  other CPU {cpu.other:6.1f} s{extra}",
                  flush=True)
            if out:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(results, indent=1, default=float))
    if out:
        write_results(out, results, markdown)


def markdown(results: dict) -> str:
    runs = results["runs"]
    methods = [m for m in [*OURS, "gn-pipeline", *PEERS] if any(m in r for r in runs.values())]
    lines = ["# Defaults on real data, side by side", "",
             "Written by `benchmarks/defaults_real.py` (see its docstring). Accuracy on each task's held-out split, "
             "seconds of the fit in brackets. Ours: defaults, only `--hidden` and `--iterations` given "
             f"(each command's budgets on its line, each run's below; the script's defaults: {ITERATIONS}). "
             "Commands:", ""]
    for prov in results.get("provenance", []):
        budget = f"; iterations {prov['iterations']}" if "iterations" in prov else ""
        lines.append(f"- `{prov['command']}` ({prov['date']}, {prov['cpus']} CPUs{budget})")
    lines += ["", "| task | n train | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for task, by in runs.items():
        any_run = next(iter(by.values()))
        cells = []
        for m in methods:
            r = by.get(m)
            cells.append("—" if r is None else f"{r['accuracy']:.4f} ({r['seconds']:.1f} s)")
        lines.append(f"| {task} ({any_run['split']}) | {any_run['n_train']} | " + " | ".join(cells) + " |")
    lines += ["", "Per run: best iteration (early stopping) / iterations run, best held-out accuracy seen at any "
              "iteration, CPU seconds other processes used meanwhile:", ""]
    for task, by in runs.items():
        for m, r in by.items():
            bits = [f"other CPU {r['other_cpu_seconds']:.0f} s"]
            if "best_iteration" in r:
                bits.insert(0, f"model = iteration {r['best_iteration']} of {r['iterations_run']}"
                               + (f" (budget {r['budget']})" if r.get("budget") else "") + ", best seen "
                               f"{r['best_accuracy_seen']:.4f} (gap {r['best_accuracy_seen'] - r['accuracy']:+.4f})")
                if r.get("alpha") and r["alpha"][0] is not None:
                    bits.append("α " + ", ".join(f"{a:.3g}" for a in r["alpha"][:8] if a is not None))
            if "evaluate" in r:
                bits.append("evaluate " + json.dumps(r["evaluate"]))
            if "command" in r:
                bits.append(f"`{r['command']}`")
            if r.get("settings"):
                bits.append(f"settings {r['settings']}")
            lines.append(f"- {task} / {m}: " + "; ".join(bits))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
