"""Consensus variants on the generalisation issue's real data, beside scikit-learn's MLPClassifier: accuracy and log-loss.

Tasks and splits are :func:`benchmarks.defaults_real.load_task`'s (breast
cancer, digits, MNIST odd/even and 10-class 2k, covtype 80/20). With
``--split validation`` every number is on a validation split carved out of
the training rows (for tuning); ``--split test`` scores on the test split,
which no choice may use. Each variant is a name and TrainConfig settings
(``--variant "NAME:key=value;key=value"``; ``decay_in_shards=0`` moves the weight
decay into the consensus step, a class attribute of
:class:`solvers.consensus.ConsensusSolver`); our runs are the in-memory
reference (``fit_in_memory``, the code the pipeline runs per shard) with
``--hidden 300`` and the other defaults. Peers: ``MLPClassifier(300)`` with
adam, with and without ``early_stopping``, on ``StandardScaler``-ed inputs.
Log-loss is of ``predict_proba`` on the same split (ours: the consensus
network's logistic / softmax link). Every method runs under
``threadpool_limits(--threads)`` (default one BLAS thread). Other processes'
CPU seconds are recorded: the machine is shared.

Run::

    python benchmarks/consensus_real.py --split validation --variant default: --variant "a1e-3:alpha=1e-3;iterations=40" \\
        --out /tmp/consensus_real_validation.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import CpuWatch, parse_settings, provenance, write_results  # noqa: E402
from benchmarks.defaults_real import TASKS, load_task  # noqa: E402

PEERS = ("mlp-adam", "mlp-adam-es")
CLASS_ATTRIBUTES = ("decay_in_shards", "carry_moments", "auto_alpha_factor", "auto_steps")


def parse_variant(text: str) -> tuple[str, dict]:
    """Return (name, settings) of ``NAME:key=value;key=value`` (values parsed as JSON where they can be)."""
    name, _, rest = text.partition(":")
    return name, parse_settings(filter(None, rest.split(";")), f"--variant {name}:")


def log_loss(proba, y, classes) -> float:
    idx = np.searchsorted(np.asarray(classes), y)
    p = np.clip(np.asarray(proba, np.float64)[np.arange(len(y)), idx], 1e-15, 1.0)
    return float(-np.mean(np.log(p)))


def run_ours(settings: dict, Xtr, ytr, Xte, yte, hidden, seed) -> dict:
    from solvers import SOLVERS
    from solvers.config import TrainConfig
    from solvers.reference import fit_in_memory

    settings = dict(settings)
    attrs = {k: settings.pop(k) for k in CLASS_ATTRIBUTES if k in settings}
    cfg = TrainConfig(**{"solver": "consensus", "hidden": hidden, "seed": seed, **settings})
    cls = SOLVERS[cfg.solver]
    saved = {k: getattr(cls, k) for k in attrs if hasattr(cls, k)}
    for k, v in attrs.items():
        setattr(cls, k, type(getattr(cls, k))(v))
    try:
        t0 = time.perf_counter()
        r = fit_in_memory(Xtr, ytr, cfg)
        seconds = time.perf_counter() - t0
    finally:
        for k, v in saved.items():
            setattr(cls, k, v)
    net = r.network
    return {"accuracy": net.score(Xte, yte), "log_loss": log_loss(net.predict_proba(Xte), yte, net.classes),
            "seconds": seconds, "best_iteration": r.best_iteration, "iterations_run": len(r.history),
            "alpha": [h.get("alpha") for h in r.history], "link": net.link,
            "validation_curve": [h.get("validation_accuracy") for h in r.history]}


def run_peer(name: str, Xtr, ytr, Xte, yte, hidden, seed) -> dict:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), MLPClassifier(hidden, early_stopping=name.endswith("-es"),
                                                          random_state=seed))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(Xtr, ytr)
    seconds = time.perf_counter() - t0
    return {"accuracy": float(model.score(Xte, yte)), "log_loss": log_loss(model.predict_proba(Xte), yte,
                                                                           model.classes_),
            "seconds": seconds, "iterations_run": int(model[-1].n_iter_)}


def markdown(results: dict) -> str:
    runs = results["runs"]
    names = []
    for by in runs.values():
        names += [m for m in by if m not in names]
    lines = ["# Consensus on real data: accuracy (log-loss) per task", "",
             "Written by `benchmarks/consensus_real.py` (see its docstring). Commands:", ""]
    lines += [f"- `{p['command']}` ({p['date']}, {p['cpus']} CPUs)" for p in results.get("provenance", [])]
    lines += ["", "Variants: " + "; ".join(f"`{k}` = {v or 'defaults'}" for k, v in results.get("variants", {}).items()),
              "", "| task (split, train rows) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for task, by in runs.items():
        r0 = next(iter(by.values()))
        cells = ["—" if m not in by else f"{by[m]['accuracy']:.4f} ({by[m]['log_loss']:.3f})" for m in names]
        lines.append(f"| {task} ({r0['split']}, {r0['n_train']}) | " + " | ".join(cells) + " |")
    lines += ["", "Per run: seconds, best iteration / iterations run, other processes' CPU seconds:", ""]
    for task, by in runs.items():
        for m, r in by.items():
            extra = (f", model = iteration {r['best_iteration']} of {r['iterations_run']}"
                     if "best_iteration" in r else f", {r['iterations_run']} epochs")
            lines.append(f"- {task} / {m}: {r['seconds']:.1f} s{extra}, other CPU {r['other_cpu_seconds']:.0f} s")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["breast-cancer", "digits", "mnist-oddeven-2k", "mnist10-2k",
                                                   "covtype"], choices=TASKS)
    p.add_argument("--split", choices=("test", "validation"), default="validation")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:key=value;…")
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    p.add_argument("--hidden", default="300")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (and of every run unless --run-seeds)")
    p.add_argument("--run-seeds", type=int, nargs="*", default=None,
                   help="seeds of our runs (initial weights, held-out rows) on the one split; names get @sSEED")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads of every method (default 1)")
    p.add_argument("--out", default=None, help="JSON results (merged into an existing file by task and name)")
    args = p.parse_args(argv)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    variants = dict(parse_variant(v) for v in (args.variant or ["default:"]))
    out = Path(args.out) if args.out else None
    results = json.loads(out.read_text()) if out and out.exists() else {"runs": {}}
    results.setdefault("provenance", []).append(provenance())
    results.setdefault("variants", {}).update(variants)
    for task in args.tasks:
        Xtr, ytr, Xte, yte, about = load_task(task, args.split, args.seed)
        print(f"== {task}: {len(ytr)} train / {len(yte)} {args.split} rows; {about}", flush=True)
        seeds = args.run_seeds
        jobs = [(f"{v}@s{s}" if seeds else v, v, args.seed if seeds is None else s)
                for v in variants for s in (seeds or [None])] + [(peer, peer, args.seed) for peer in args.peers]
        for name, method, seed in jobs:
            with CpuWatch() as cpu, threadpool_limits(args.threads):
                if method in variants:
                    r = run_ours(variants[method], Xtr, ytr, Xte, yte, hidden, seed)
                else:
                    r = run_peer(method, Xtr, ytr, Xte, yte, hidden, seed)
            r.update(other_cpu_seconds=cpu.other, split=args.split, n_train=len(ytr))
            results["runs"].setdefault(task, {})[name] = r
            extra = f"  it {r['best_iteration']}/{r['iterations_run']}" if "best_iteration" in r else ""
            print(f"  {name:<16} {r['accuracy']:.4f}  log-loss {r['log_loss']:.4f}  {r['seconds']:6.1f} s  "
                  f"other CPU {cpu.other:6.1f} s{extra}", flush=True)
            if out:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(results, indent=1, default=float))
    if out:
        write_results(out, results, markdown)


if __name__ == "__main__":
    main()
