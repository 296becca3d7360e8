"""Drift of the kept model (issue 19) on validation splits, and kept-iteration rules replayed offline.

Each (task, seed, solver) is trained once with the defaults (only ``--hidden 300``
and the iteration budget of :data:`benchmarks.defaults_real.ITERATIONS` given)
but ``patience=0``, so the whole budget's curve is recorded. Every
iteration's network is also scored by this script (read only: the training is
the defaults' bit for bit): held-out accuracy and log-loss (of
``predict_proba``) on the held-out rows the run selects on, accuracy and
log-loss on the evaluation rows (the task's validation split,
:func:`benchmarks.defaults_real.load_task` with ``split="validation"``; the
``higgs-N`` tasks are :func:`benchmarks.consensus_paired.load`'s HIGGS-shaped
rows, never tuned on). The test splits are never read.

The stop of a default run is replayed from the curve (patience 10 on held-out
accuracy or a new lowest held-out loss, :class:`solvers.validation.EarlyStopping`),
then each kept-iteration rule of :func:`kept` picks one of the iterations run.
Drift: the best evaluation accuracy among the iterations run minus the kept
model's, in evaluation rows and as a fraction.

Run::

    python benchmarks/sel14_drift.py --tasks breast-cancer digits --solvers gauss-newton admm dladmm \
        --seeds 0 1 2 --out /tmp/sel14/drift.json
    python benchmarks/sel14_drift.py --replay-only --out /tmp/sel14/drift.json   # tables only
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

BUDGET = {"gauss-newton": 100, "admm": 20, "dladmm": 30}  # the budgets of the test tables (s12 GN, s13 ADMM)
FIELDS = ("iteration", "validation_accuracy", "validation_loss", "test_accuracy", "accepted", "alpha")


def _log_loss(network, X, y) -> float:
    p = np.asarray(network.predict_proba(X), np.float64)
    classes = list(np.asarray(network.classes)) if hasattr(network, "classes") else sorted(set(y.tolist()))
    idx = np.searchsorted(np.asarray(classes), y)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), idx], 1e-15, 1.0))))


def curve(task: str, seed: int, solver: str, iterations: int, settings: dict) -> dict:
    """Return the per-iteration records (with log-losses) of one default run with patience 0."""
    import solvers.reference as reference
    from benchmarks.consensus_paired import load
    from solvers.config import TrainConfig
    from solvers.validation import make_split

    Xtr, ytr, Xev, yev = load(task, seed)
    cfg = TrainConfig(solver=solver, hidden=(300,), iterations=iterations, seed=seed, patience=0, **settings)
    split = make_split(cfg.validation_fraction, cfg.seed, len(ytr))
    held = split.mask(0, len(ytr))
    Xho, yho = Xtr[held], ytr[held]
    extra = []
    drive = reference.drive

    def spy_drive(*args, evaluate, **kw):
        def wrapped(network, skip=()):
            out = evaluate(network, skip=skip)
            extra.append({"validation_logloss": _log_loss(network, Xho, yho),
                          "test_logloss": _log_loss(network, Xev, yev),
                          "validation_accuracy_spy": float(network.score(Xho, yho)),
                          "test_correct": np.packbits(np.asarray(network.predict(Xev)) == yev).tobytes().hex()})
            return out
        return drive(*args, evaluate=wrapped, **kw)

    reference.drive = spy_drive
    try:
        t0 = time.perf_counter()
        r = reference.fit_in_memory(Xtr, ytr, cfg, X_test=Xev, y_test=yev)
        seconds = time.perf_counter() - t0
    finally:
        reference.drive = drive
    hist = [{**{k: h.get(k) for k in FIELDS}, **e} for h, e in zip(r.history, extra)]
    if any(abs(h["validation_accuracy"] - h["validation_accuracy_spy"]) > 1e-9 for h in hist):
        for h in hist:  # the model's readout was refitted on the held-out rows too (ADMM's readout_refit): its
            h["validation_logloss"] = None  # held-out log-loss is in-sample; the solver's validation_loss is not
    return {"history": hist, "n_held": int(held.sum()), "n_eval": int(len(yev)), "n_train": int(len(ytr)),
            "seconds": seconds, "config": {k: v for k, v in cfg.to_dict().items() if k != "extra"}}


def stop_of(hist: list, patience: int = 10, budget: int | None = None) -> int:
    """Return the iteration a default run (patience on accuracy or loss, solvers.validation) stops at."""
    from solvers.validation import EarlyStopping

    es = EarlyStopping(patience)
    it = 0
    for r in hist[:budget]:
        it = r["iteration"]
        if es.update(it, r["validation_accuracy"], [], r.get("validation_loss")):
            break
    return it


RULES = ("acc", "acc-first", "acc-last", "loss", "logloss", "acc-logloss", "smooth3", "smooth5", "1se-loss",
         "1se-logloss", "1row-loss", "2row-loss", "last")


def kept(hist: list, rule: str, stop: int, n_held: int) -> int:
    """Return the iteration a kept-model ``rule`` picks among iterations 1..``stop`` (held-out rows only).

    * ``acc``: best held-out accuracy, ties to the lower solver held-out loss (today's EarlyStopping);
    * ``acc-first`` / ``acc-last``: ties to the earliest / latest;
    * ``loss``: lowest held-out loss of the solver's own objective (``validation_loss``);
    * ``logloss``: lowest held-out log-loss of ``predict_proba`` (ADMM/dlADMM with the readout refit: their
      model's readout has seen the held-out rows, so their ``validation_loss``, the held-out logistic loss of the
      readout fitted on the training rows, stands in);
    * ``acc-logloss``: best held-out accuracy, ties to the lower held-out log-loss;
    * ``smooth3`` / ``smooth5``: best centred mean of held-out accuracy over 3 / 5 iterations (those run);
    * ``1se-loss`` / ``1se-logloss``: lowest loss / log-loss among iterations within one standard error
      ``sqrt(a (1 - a) / n_held)`` of the best held-out accuracy ``a``;
    * ``1row-loss`` / ``2row-loss``: lowest loss among iterations within one / two held-out rows of the best
      accuracy (accuracy differences below the held-out rows' granularity count as ties);
    * ``last``: the iteration the run stopped at.
    """
    h = hist[:stop]
    n = len(h)
    acc = np.array([r["validation_accuracy"] for r in h], float)
    inf = float("inf")
    loss = np.array([inf if r.get("validation_loss") is None else r["validation_loss"] for r in h], float)
    ll = np.array([inf if r.get("validation_logloss") is None else r["validation_logloss"] for r in h], float)
    if not np.isfinite(loss).any():
        loss = ll
    if not np.isfinite(ll).any():  # in-sample (readout refit): the solver's held-out loss, the readout's log-loss
        ll = loss
    if rule == "acc":
        i = min(range(n), key=lambda i: (-acc[i], loss[i], i))
    elif rule == "acc-first":
        i = min(range(n), key=lambda i: (-acc[i], i))
    elif rule == "acc-last":
        i = min(range(n), key=lambda i: (-acc[i], -i))
    elif rule == "loss":
        i = int(np.argmin(loss))
    elif rule == "logloss":
        i = int(np.argmin(ll))
    elif rule == "acc-logloss":
        i = min(range(n), key=lambda i: (-acc[i], ll[i], i))
    elif rule in ("smooth3", "smooth5"):
        w = 1 if rule == "smooth3" else 2
        sm = [round(acc[max(0, i - w):i + w + 1].mean(), 12) for i in range(n)]
        i = min(range(n), key=lambda i: (-sm[i], loss[i], i))
    elif rule in ("1se-loss", "1se-logloss", "1row-loss", "2row-loss"):
        a = acc.max()
        tol = int(rule[0]) / n_held if "row" in rule else np.sqrt(a * (1 - a) / n_held)
        near = np.flatnonzero(acc >= a - tol - 1e-12)
        crit = ll if rule == "1se-logloss" else loss
        i = int(near[np.argmin(crit[near])])
    elif rule == "last":
        i = n - 1
    else:
        raise ValueError(rule)
    return h[i]["iteration"]


def table(results: dict, patience: int = 10) -> dict:
    """Return {(solver, task): {rule: [(seed, eval acc, drift, drift rows, iteration, stop), ...]}}."""
    out = {}
    for key, run in sorted(results["runs"].items()):
        solver, task, seed = key.split("/")
        hist = run["history"]
        stop = stop_of(hist, patience)
        best = max(r["test_accuracy"] for r in hist[:stop])
        for rule in RULES:
            it = kept(hist, rule, stop, run["n_held"])
            a = hist[it - 1]["test_accuracy"]
            out.setdefault((solver, task), {}).setdefault(rule, []).append(
                (int(seed), a, best - a, round((best - a) * run["n_eval"]), it, stop))
    return out


def correct_matrix(run: dict, stop: int) -> np.ndarray:
    """Return the (iterations 1..stop × evaluation rows) matrix of correct predictions recorded by :func:`curve`."""
    n = run["n_eval"]
    return np.array([np.unpackbits(np.frombuffer(bytes.fromhex(r["test_correct"]), np.uint8))[:n]
                     for r in run["history"][:stop]], bool)


def noise(run: dict, stop: int, kept_it: int, reps: int = 300, seed: int = 0) -> dict:
    """Return what the evaluation rows' own noise puts into the drift (resampling the evaluation rows).

    * ``floor``: mean over bootstrap resamples of the evaluation rows of (best resampled accuracy − the resampled
      accuracy of the iteration best on all evaluation rows): the drift of the measure itself, with the best
      iteration known;
    * ``kept``: the same for the kept iteration (its bootstrap mean drift; the observed drift is one draw);
    * ``sel_fx``: select by accuracy (ties: earliest) on m = f × the run's held-out count random evaluation
      rows (f = 0.25, 0.5, 1, 2, while m fits in half of them), and measure the drift on the other half: how
      the drift falls with more rows to select on (no new training: the same curves).
    """
    C = correct_matrix(run, stop)
    T, n = C.shape
    rng = np.random.default_rng(seed)
    full = C.mean(1)
    star = int(np.argmax(full))
    fl, kp = [], []
    for _ in range(reps):
        w = np.bincount(rng.integers(0, n, n), minlength=n)
        a = C @ w / n
        fl.append(a.max() - a[star])
        kp.append(a.max() - a[kept_it - 1])
    out = {"floor": float(np.mean(fl)), "kept": float(np.mean(kp))}
    half = n // 2
    for f in (0.25, 0.5, 1, 2):
        m = int(round(f * run["n_held"]))
        if m > n - half:
            break
        d = []
        for _ in range(reps // 3):
            perm = rng.permutation(n)
            meas, sel = perm[:half], perm[half:half + m]
            i = int(np.argmax(C[:, sel].mean(1)))
            a = C[:, meas].mean(1)
            d.append(a.max() - a[i])
        out[f"sel_{f}x"] = float(np.mean(d))
    return out


def markdown(results: dict) -> str:
    lines = ["# Kept-model drift on validation splits (sel14)", "",
             "Written by `benchmarks/sel14_drift.py` (see its docstring). Commands:", ""]
    lines += [f"- `{p['command']}` ({p['date']}, {p['cpus']} CPUs)" for p in results.get("provenance", [])]
    rows = table(results)
    lines += ["", "## Today's rule (`acc`): drift per seed", "",
              "Drift = best evaluation accuracy among the iterations run − the kept model's; rows = drift × evaluation "
              "rows. One evaluation row = 1/n_eval; held-out rows (what the rule selects on) in brackets.", "",
              "| solver | task | n_eval (1 row) | n_held | per seed: drift (rows) kept@stop | mean drift | runs > 0.005 |",
              "|---|---|---|---|---|---|---|"]
    for (solver, task), by in rows.items():
        keys = [k for k in results["runs"] if k.startswith(f"{solver}/{task}/")]
        r0 = results["runs"][keys[0]]
        v = by["acc"]
        cells = " ".join(f"s{s}: {d:.4f} ({n}) {it}@{st}" for s, _, d, n, it, st in v)
        lines.append(f"| {solver} | {task} | {r0['n_eval']} ({1 / r0['n_eval']:.4f}) | {r0['n_held']} | {cells} | "
                     f"{np.mean([d for _, _, d, _, _, _ in v]):.4f} | {sum(d > 0.005 + 1e-12 for _, _, d, _, _, _ in v)}/{len(v)} |")
    lines += ["", "## What the evaluation rows' noise puts in (today's rule)", "",
              "Means over seeds. floor: bootstrap drift of the iteration best on all evaluation rows (the measure's own "
              "noise); kept: bootstrap mean drift of the kept iteration; select on m×: pick the best-accuracy iteration "
              "on f × n_held random evaluation rows, drift measured on a disjoint half of them (the held-out count's "
              "effect; — : does not fit in half the evaluation rows).", "",
              "| solver | task | observed drift | floor | kept (bootstrap) | select on 0.25× | 0.5× | 1× | 2× |",
              "|---|---|---|---|---|---|---|---|---|"]
    for (solver, task), by in rows.items():
        nz = []
        for seed, _, _, _, it, stop in by["acc"]:
            nz.append(noise(results["runs"][f"{solver}/{task}/{seed}"], stop, it))
        cells = [f"{np.mean([x[k] for x in nz]):.4f}" if all(k in x for x in nz) else "—"
                 for k in ("floor", "kept", "sel_0.25x", "sel_0.5x", "sel_1x", "sel_2x")]
        lines.append(f"| {solver} | {task} | {np.mean([x[2] for x in by['acc']]):.4f} | " + " | ".join(cells) + " |")
    variants = sorted({s for s, _ in rows if "+" in s})
    if variants:
        lines += ["", "## Settings paired by seed against the defaults (today's rule)", "",
                  "| variant | task | seeds | mean accuracy default → variant | paired Δ (wins/losses) | mean drift "
                  "default → variant | runs > 0.005 default → variant |", "|---|---|---|---|---|---|---|"]
        for v in variants:
            base = v.split("+")[0]
            for (solver, task), by in rows.items():
                if solver != v or (base, task) not in rows:
                    continue
                b = {x[0]: x for x in rows[(base, task)]["acc"]}
                pairs = [(b[x[0]], x) for x in by["acc"] if x[0] in b]
                if not pairs:
                    continue
                d = np.array([x[1] - y[1] for y, x in pairs])
                lines.append(f"| {v} | {task} | {' '.join(str(y[0]) for y, _ in pairs)} | "
                             f"{np.mean([y[1] for y, _ in pairs]):.4f} → {np.mean([x[1] for _, x in pairs]):.4f} | "
                             f"{d.mean():+.4f} ({int((d > 1e-12).sum())}/{int((d < -1e-12).sum())}) | "
                             f"{np.mean([y[2] for y, _ in pairs]):.4f} → {np.mean([x[2] for _, x in pairs]):.4f} | "
                             f"{sum(y[2] > 0.005 + 1e-12 for y, _ in pairs)} → {sum(x[2] > 0.005 + 1e-12 for _, x in pairs)} |")
    lines += ["", "## Rules paired by seed against `acc` (same stop)", "",
              "| solver | task | rule | mean accuracy | paired Δ (wins/losses) | mean drift | worst drift (rows) | runs > 0.005 |",
              "|---|---|---|---|---|---|---|---|"]
    groups = list(rows.items())
    for solver in sorted({s for s, _ in rows}):
        groups.append(((solver, "all"), {rule: [x for (s, _), by in rows.items() if s == solver for x in by[rule]]
                                         for rule in RULES}))
    groups.append((("all", "all"), {rule: [x for (s, _), by in rows.items() if "+" not in s for x in by[rule]]
                                    for rule in RULES}))  # the defaults' runs only
    for (solver, task), by in groups:
        base = np.array([x[1] for x in by["acc"]])
        for rule in RULES:
            a = np.array([x[1] for x in by[rule]])
            d = np.array([x[2] for x in by[rule]])
            worst = max(by[rule], key=lambda x: x[2])
            diff = a - base
            lines.append(f"| {solver} | {task} ({len(a)}) | {rule} | {a.mean():.4f} | {diff.mean():+.4f} "
                         f"({int((diff > 1e-12).sum())}/{int((diff < -1e-12).sum())}) | {d.mean():.4f} | "
                         f"{worst[2]:.4f} ({worst[3]}) | {int((d > 0.005 + 1e-12).sum())} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["breast-cancer", "digits"])
    p.add_argument("--solvers", nargs="+", default=["gauss-newton"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--replay-only", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a TrainConfig setting (tuning only); its runs are keyed SOLVER+NAME=VALUE/task/seed")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results.setdefault("runs", {})
    settings = parse_settings(args.set)
    tag = "".join(f"+{item}" for item in args.set)
    if not args.replay_only:
        results.setdefault("provenance", []).append(provenance())
        for task in args.tasks:
            for seed in args.seeds:
                for solver in args.solvers:
                    key = f"{solver}{tag}/{task}/{seed}"
                    if key in results["runs"]:
                        continue
                    results["runs"][key] = curve(task, seed, solver, BUDGET[solver], dict(settings))
                    run = results["runs"][key]
                    print(f"{key}: {run['seconds']:.0f} s", flush=True)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps(results, indent=1, default=float))
    out.write_text(json.dumps(results, indent=1, default=float))
    out.with_suffix(".md").write_text(markdown(results))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
