"""Choose the defaults of ``TrainConfig`` by measurement (issue "defaults chosen by measurement").

For five tasks (digits 0-vs-2, breast cancer, digits 10-class, MNIST odd-vs-even
and MNIST 10-class on 20k training images) this trains the in-memory reference
ADMM trainer on a grid of settings and records, after every iteration, the
accuracy on a held-out *validation* split (used for choosing) and on the test
split (reported only), plus the seconds each iteration took.

The grid is pruned in stages; every stage picks the setting with the highest
*score*, the best (over iterations 1..N) mean-over-tasks validation accuracy:

1. γ/β ∈ {10, 100, 1000} × β ∈ {0.01, 0.1, 1}, warm_start 5, forward init, ridge 1e-6;
2. warm_start ∈ {1, 5, 10, 1000 (= λ never updated)} at the best (γ, β);
3. ridge ∈ {1e-6, 1e-3, 1e-2} at the best (γ, β, warm_start) (and 1e-1 if 1e-2 wins:
   a winner at the edge of the grid is checked one step further);
4. gaussian init at the paper's γ = 10, β = 1 (warm_start 1 and 5) and at the best setting;
5. confirmation: γ/β ∈ {10, 100, 1000} again at the final β, warm_start, ridge, init
   (ratio was tuned at ridge 1e-6; this checks the choice survives the later stages).

A setting that fails (NumericalError) scores 0 from the failing iteration on.
The recommended iteration count is the smallest k ≤ N whose mean validation
accuracy is within ``--tolerance`` of the best k of the recommended setting.

The small scikit-learn tasks are split 60/20/20 (train/validation/test,
stratified, fixed split) and averaged over ``--seeds`` initialisation seeds;
MNIST uses rows 0..19999 for training, 50000..59999 (validation) and
60000..69999 (test), one seed.

Run (one job at a time: two BLAS jobs on 2 cores slow each other 3-10x)::

    python benchmarks/tune_defaults.py --out benchmarks/results/defaults.json

It writes the JSON (every curve) and a markdown summary next to it
(``defaults.md``, or ``--md``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from solvers import SOLVERS  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.loop import initialize, iterate  # noqa: E402
from solvers.losses import encode_labels  # noqa: E402
from solvers.reference import InMemoryRunner, check_xy, fit_in_memory  # noqa: E402
from solvers.stats import moment_sums, moments_from_sums  # noqa: E402

MNIST = Path("/work/shared/data/mnist70k_uint8.npz")
TASKS = ("digits02", "breast_cancer", "digits10", "mnist_oddeven", "mnist10")
RATIOS = (10, 100, 1000)
BETAS = (0.01, 0.1, 1.0)
WARM_STARTS = (1, 5, 10, 1000)
RIDGES = (1e-6, 1e-3, 1e-2)
RIDGE_EDGE = 1e-1  # tried only if the best ridge is the largest of RIDGES
PAPER = dict(gamma=10.0, beta=1.0, init="gaussian")
BASE = dict(warm_start=5, init="forward", ridge=1e-6)


# -- data ----------------------------------------------------------------------------
def _split_sklearn(X, y, seed=0):
    """Return a stratified 60/20/20 train/validation/test split."""
    from sklearn.model_selection import train_test_split

    X_rest, X_te, y_rest, y_te = train_test_split(X, y, test_size=0.2, stratify=y, random_state=seed)
    X_tr, X_va, y_tr, y_va = train_test_split(X_rest, y_rest, test_size=0.25, stratify=y_rest,
                                              random_state=seed)
    return dict(train=(X_tr, y_tr), val=(X_va, y_va), test=(X_te, y_te))


def load_task(name: str, mnist_train: int) -> dict:
    """Return the splits, hidden widths and a description of task ``name``."""
    if name in ("digits02", "digits10", "breast_cancer"):
        from sklearn.datasets import load_breast_cancer, load_digits

        if name == "breast_cancer":
            X, y = load_breast_cancer(return_X_y=True)
            hidden, what = (100,), "sklearn breast_cancer (569 x 30, binary)"
        else:
            X, y = load_digits(return_X_y=True)
            if name == "digits02":
                keep = (y == 0) | (y == 2)
                X, y = X[keep], y[keep]
                hidden, what = (100,), "sklearn digits, labels 0 vs 2"
            else:
                hidden, what = (300,), "sklearn digits, 10 classes"
        task = dict(splits=_split_sklearn(X.astype(np.float64), y), hidden=hidden, what=what)
    else:
        d = np.load(MNIST)
        X, y = d["X"], d["y"].astype(np.int64)
        if name == "mnist_oddeven":
            y = y % 2
            hidden, what = (300,), f"MNIST odd-vs-even, {mnist_train} training images"
        else:
            hidden, what = (300,), f"MNIST 10 classes, {mnist_train} training images"
        sl = dict(train=slice(0, mnist_train), val=slice(50000, 60000), test=slice(60000, 70000))
        # X / 256 reproduces the source intensities exactly (data README).
        task = dict(splits={k: (X[s] / 256.0, y[s]) for k, s in sl.items()}, hidden=hidden, what=what)
    task["sizes"] = {k: int(v[1].shape[0]) for k, v in task["splits"].items()}
    return task


# -- one run ---------------------------------------------------------------------------
def fit_curves(X, y, config: TrainConfig, evals: dict, dtype=np.float32) -> dict:
    """Train like :func:`fit_in_memory` and score the network on every ``evals`` split per iteration.

    ``fit_in_memory`` scores only one held-out set; this is its loop with
    several (checked against it by :func:`self_check`). ``seconds`` is the
    training time of each iteration, excluding the scoring.
    """
    from solvers.errors import NumericalError

    X, y = check_xy(X, y)
    classes = np.unique(y)
    shift = X[0].astype(np.float64)
    mean, scale = moments_from_sums(moment_sums(X, shift), shift)
    config, _ = config.choose_solver(X.shape[0], 1, shared_gil=True)  # a config given auto: as fit_in_memory resolves it
    solver = SOLVERS[config.solver](config, X.shape[1], classes, mean, scale, dtype=dtype)
    runner = InMemoryRunner(solver, X, encode_labels(y, classes))
    out = {"iteration": [], "seconds": [], "train_accuracy": [], "residual": [], "objective": [],
           **{f"{k}_accuracy": [] for k in evals}, "error": None}
    busy0, own0 = _cpu_busy(), _own_cpu()
    w0 = t0 = time.perf_counter()
    try:
        state = initialize(solver, runner)
        out["init_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for state, metrics in iterate(solver, runner, state, config.iterations):
            network = solver.network(state.weights)
            out["seconds"].append(time.perf_counter() - t0)
            out["iteration"].append(state.iteration)
            for key in ("train_accuracy", "residual", "objective"):
                out[key].append(float(metrics[key]))
            for k, (Xe, ye) in evals.items():
                out[f"{k}_accuracy"].append(network.score(Xe, ye))
            t0 = time.perf_counter()
    except NumericalError as exc:
        out["error"] = str(exc)
    # share of the 2 cores used by *other* processes during the run (timing contamination)
    wall = time.perf_counter() - w0
    if busy0 is not None and wall > 0:
        other = (_cpu_busy() - busy0) - (_own_cpu() - own0)
        out["other_cpu_share"] = max(0.0, other) / (wall * (os.cpu_count() or 1))
    return out


def _cpu_busy():
    """Return the machine's busy CPU seconds since boot (from /proc/stat), or None."""
    try:
        f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu():
    t = os.times()
    return t.user + t.system


def self_check(task: dict, iterations: int = 3):
    """Fail loudly if :func:`fit_curves` no longer reproduces :func:`fit_in_memory`."""
    (X, y), (Xv, yv) = task["splits"]["train"], task["splits"]["val"]
    cfg = TrainConfig(solver="admm", hidden=task["hidden"], iterations=iterations, gamma=1.0, beta=0.01)
    ref = fit_in_memory(X, y, cfg, X_test=Xv, y_test=yv).history
    mine = fit_curves(X, y, cfg, {"val": (Xv, yv)})
    got = (mine["train_accuracy"], mine["val_accuracy"])
    want = ([h["train_accuracy"] for h in ref], [h["test_accuracy"] for h in ref])
    if got != want:
        raise SystemExit(f"self-check failed: fit_curves {got} != fit_in_memory {want}")


# -- grid bookkeeping ------------------------------------------------------------------
def key_of(s: dict) -> str:
    return (f"g={s['gamma']:g} b={s['beta']:g} ws={s['warm_start']} ridge={s['ridge']:g} "
            f"init={s['init']}")


def setting(gamma, beta, warm_start=BASE["warm_start"], ridge=BASE["ridge"], init=BASE["init"]):
    return dict(gamma=float(gamma), beta=float(beta), warm_start=int(warm_start), ridge=float(ridge),
                init=init)


class Study:
    """Runs settings on all tasks (each once, cached) and scores them."""

    def __init__(self, tasks: dict, args):
        self.tasks, self.args = tasks, args
        self.runs: dict[str, dict] = {}  # key -> {setting, stage, per_task: {task: {seeds: [curve]}}}

    def seeds(self, task_name):
        return [0] if task_name.startswith("mnist") else list(range(self.args.seeds))

    def run(self, s: dict, stage: str) -> dict:
        key = key_of(s)
        if key in self.runs:
            self.runs[key]["stages"].append(stage)
            return self.runs[key]
        entry = {"setting": s, "stages": [stage], "tasks": {}}
        for name, task in self.tasks.items():
            sp = task["splits"]
            curves = []
            for seed in self.seeds(name):
                cfg = TrainConfig(solver="admm", hidden=task["hidden"], iterations=self.args.iterations, seed=seed, **s)
                curves.append(fit_curves(*sp["train"], cfg, {"val": sp["val"], "test": sp["test"]}))
            entry["tasks"][name] = {"curves": curves, **self.summarise(curves)}
            last = entry["tasks"][name]
            print(f"  {key:52s} {name:14s} val@N={last['val'][-1]:.4f} test@N={last['test'][-1]:.4f} "
                  f"s/it={last['seconds_per_iteration']:.3f}"
                  + (f"  FAILED: {curves[0]['error']}" if any(c['error'] for c in curves) else ""),
                  flush=True)
        n = self.args.iterations
        entry["mean_val"] = [float(np.mean([entry["tasks"][t]["val"][k] for t in self.tasks]))
                             for k in range(n)]
        entry["mean_test"] = [float(np.mean([entry["tasks"][t]["test"][k] for t in self.tasks]))
                              for k in range(n)]
        best = int(np.argmax(entry["mean_val"]))
        entry["score"], entry["best_iteration"] = entry["mean_val"][best], best + 1
        self.runs[key] = entry
        return entry

    def summarise(self, curves: list) -> dict:
        """Mean val/test curves over seeds (0 after a failure) and seconds per iteration."""
        n = self.args.iterations

        def padded(c, name):
            v = c[f"{name}_accuracy"]
            return list(v) + [0.0] * (n - len(v))

        secs = [s for c in curves for s in c["seconds"]]
        return {
            "val": np.mean([padded(c, "val") for c in curves], axis=0).tolist(),
            "test": np.mean([padded(c, "test") for c in curves], axis=0).tolist(),
            "failed": sum(c["error"] is not None for c in curves),
            "seconds_per_iteration": float(np.median(secs)) if secs else float("nan"),
            "other_cpu_share": float(np.mean([c.get("other_cpu_share", np.nan) for c in curves])),
        }

    def best(self, keys):
        return max(keys, key=lambda k: (self.runs[k]["score"], -self.runs[k]["best_iteration"]))


def tune(study: Study) -> dict:
    t0 = time.perf_counter()
    print("stage 1: gamma/beta ratio x beta (warm_start 5, forward init, ridge 1e-6)", flush=True)
    s1 = [key_of(study.run(setting(r * b, b), "1 ratio x beta")["setting"]) for r in RATIOS for b in BETAS]
    b1 = study.runs[study.best(s1)]["setting"]

    print(f"stage 2: warm_start at {key_of(b1)}", flush=True)
    s2 = [key_of(study.run(setting(b1["gamma"], b1["beta"], ws), "2 warm_start")["setting"])
          for ws in WARM_STARTS]
    b2 = study.runs[study.best(s2)]["setting"]

    print(f"stage 3: ridge at {key_of(b2)}", flush=True)
    s3 = [key_of(study.run(setting(b2["gamma"], b2["beta"], b2["warm_start"], rd), "3 ridge")["setting"])
          for rd in RIDGES]
    if study.runs[study.best(s3)]["setting"]["ridge"] == max(RIDGES):
        print(f"  best ridge at the edge of the grid: also {RIDGE_EDGE:g}", flush=True)
        s3.append(key_of(study.run(setting(b2["gamma"], b2["beta"], b2["warm_start"], RIDGE_EDGE),
                                   "3 ridge (edge check)")["setting"]))
    b3 = study.runs[study.best(s3)]["setting"]

    print("stage 4: gaussian init (paper settings, and the best setting)", flush=True)
    paper = [key_of(study.run(setting(10, 1, ws, 1e-6, "gaussian"), "4 paper")["setting"]) for ws in (1, 5)]
    g = study.run(dict(b3, init="gaussian"), "4 init")["setting"]
    s4 = [key_of(b3), key_of(g)]
    b4 = study.runs[study.best(s4)]["setting"]

    print(f"stage 5: confirm gamma/beta at {key_of(b4)}", flush=True)
    s5 = [key_of(study.run(dict(b4, gamma=r * b4["beta"]), "5 confirm ratio")["setting"]) for r in RATIOS]
    final_key = study.best(s5)
    final = study.runs[final_key]

    mv = final["mean_val"]
    within = [k for k in range(len(mv)) if mv[k] >= max(mv) - study.args.tolerance]
    iterations = within[0] + 1
    rec = dict(final["setting"], iterations=iterations)
    print(f"recommended: {rec}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return dict(recommended=rec, recommended_key=final_key, stage_keys=dict(
        ratio_beta=s1, warm_start=s2, ridge=s3, init=s4, confirm_ratio=s5, paper=paper),
        stage_winners=[key_of(b1), key_of(b2), key_of(b3), key_of(b4), final_key],
        previous_default_key=key_of(setting(10, 0.1)))


# -- report ----------------------------------------------------------------------------
def _short(key: str) -> str:
    return key.replace(" init=", " ").replace("ridge=", "r=")


def markdown(result: dict, study: Study, args, command: str) -> str:
    T = list(study.tasks)
    rec, rk = result["recommended"], result["recommended_key"]
    K = rec["iterations"]
    N = args.iterations
    L = []
    L.append("# TrainConfig defaults chosen by measurement\n")
    L.append(f"Command: `{command}`  ")
    L.append(f"Date: {result['date']}  ")
    m = result["machine"]
    L.append(f"Machine: {m['cores']} cores ({m['cpu']}), Python {m['python']}, NumPy {m['numpy']}; "
             f"one job at a time; total {result['total_seconds'] / 60:.1f} min.\n")
    L.append("Selection: every stage keeps the setting with the highest *score* = best over "
             f"iterations 1..{N} of the mean-over-tasks **validation** accuracy; test accuracy is "
             "reported, never used. Small tasks: stratified 60/20/20 split, mean over "
             f"{args.seeds} init seeds; MNIST: 1 seed. The iteration default is the smallest k "
             f"within {args.tolerance} of the best mean validation accuracy of the chosen setting.\n")
    L.append("Tasks:\n")
    for t in T:
        task = study.tasks[t]
        L.append(f"- `{t}`: {task['what']}, hidden {list(task['hidden'])}, "
                 f"train/val/test {task['sizes']['train']}/{task['sizes']['val']}/{task['sizes']['test']}")
    L.append("")
    L.append("## Recommended defaults\n")
    L.append("`" + ", ".join(f"{k}={v!r}" for k, v in rec.items()) + "`\n")

    def row(key, k):
        e = study.runs[key]
        cells = []
        for t in T:
            r = e["tasks"][t]
            fail = "†" if r["failed"] else ""
            cells.append(f"{r['val'][k - 1]:.3f} / {r['test'][k - 1]:.3f}{fail}")
        return cells, e

    def table(keys, title, k_fixed=None):
        L.append(f"### {title}\n")
        hdr = "| setting | score (best k) | " + " | ".join(f"{t} val / test" for t in T) + " |"
        L.append(hdr)
        L.append("|" + "---|" * (2 + len(T)))
        for key in keys:
            k = k_fixed or study.runs[key]["best_iteration"]
            cells, e = row(key, k)
            mark = " **(chosen)**" if key == rk else ""
            L.append(f"| `{_short(key)}`{mark} | {e['score']:.4f} ({e['best_iteration']}) | "
                     + " | ".join(cells) + " |")
        L.append("")

    L.append(f"## Headline: at k = {K} iterations and at k = {N}\n")
    head = [rk, *result["stage_keys"]["paper"], result["previous_default_key"], key_of(setting(10, 1))]
    head = list(dict.fromkeys(head))
    table(head, f"accuracy after {K} iterations (validation / test)", K)
    table(head, f"accuracy after {N} iterations (validation / test)", N)
    L.append("Rows: recommended; the paper (γ=10, β=1, gaussian init, warm_start 1 and 5); the "
             "previous default (γ=10, β=0.1, warm_start 5, forward); the paper's γ, β with forward init.\n")
    L.append("## Stages (each row at its own best k; † = a seed failed with NumericalError)\n")
    names = dict(ratio_beta="1. γ/β × β (warm_start 5, forward, ridge 1e-6)", warm_start="2. warm_start",
                 ridge="3. ridge", init="4. init (forward vs gaussian at the best setting)",
                 confirm_ratio="5. γ/β again at the final β, warm_start, ridge, init",
                 paper="paper settings (gaussian init)")
    for stage, keys in result["stage_keys"].items():
        table(keys, names[stage])
    L.append("## Validation curve of the recommended setting (mean over tasks, then per task)\n")
    ks = [k for k in (1, 2, 3, 4, 5, 7, 10, 15, 20, 30, 50) if k <= N]
    L.append("| k | mean | " + " | ".join(T) + " |")
    L.append("|" + "---|" * (2 + len(T)))
    e = study.runs[rk]
    for k in ks:
        L.append(f"| {k} | {e['mean_val'][k - 1]:.4f} | "
                 + " | ".join(f"{e['tasks'][t]['val'][k - 1]:.3f}" for t in T) + " |")
    L.append("")
    L.append("## Seconds per iteration (training only, over all runs and iterations)\n")
    L.append("Other processes' share of the 2 cores during the runs (other developers' jobs) is "
             "shown: the minimum is the best estimate of the uncontended cost.\n")
    L.append("| task | n train | hidden | median s/it | min | max | other CPU share |")
    L.append("|---|---|---|---|---|---|---|")
    for t in T:
        curves = [c for e in study.runs.values() for c in e["tasks"][t]["curves"]]
        secs = [s for c in curves for s in c["seconds"]]
        other = np.nanmean([c.get("other_cpu_share", np.nan) for c in curves])
        task = study.tasks[t]
        L.append(f"| {t} | {task['sizes']['train']} | {list(task['hidden'])} | {np.median(secs):.4f} | "
                 f"{np.min(secs):.4f} | {np.max(secs):.4f} | {other:.0%} |")
    L.append("")
    return "\n".join(L)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/defaults.json", help="JSON output path")
    p.add_argument("--md", default=None, help="markdown output (default: <out dir>/defaults.md)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--iterations", type=int, default=20, help="iterations per run (the curve length)")
    p.add_argument("--seeds", type=int, default=3, help="init seeds for the small sklearn tasks")
    p.add_argument("--mnist-train", type=int, default=20000, help="MNIST training images")
    p.add_argument("--tolerance", type=float, default=0.002,
                   help="iteration default: smallest k within this of the best mean validation accuracy")
    args = p.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *sys.argv[1:]]) \
        if argv is None else "python benchmarks/tune_defaults.py " + " ".join(map(shlex.quote, argv))

    t_start = time.perf_counter()
    tasks = {t: load_task(t, args.mnist_train) for t in args.tasks}
    self_check(tasks[args.tasks[0]])
    study = Study(tasks, args)
    result = tune(study)
    result.update(
        command=command,
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        machine=dict(cores=os.cpu_count(), cpu=_cpu(), python=platform.python_version(),
                     numpy=np.__version__, platform=platform.platform()),
        args=vars(args),
        tasks={t: dict(what=v["what"], hidden=list(v["hidden"]), sizes=v["sizes"]) for t, v in tasks.items()},
        seconds_per_iteration={t: float(np.median([s for e in study.runs.values()
                                                   for c in e["tasks"][t]["curves"] for s in c["seconds"]]))
                               for t in tasks},
        runs=study.runs,
    )
    result["total_seconds"] = time.perf_counter() - t_start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    md = Path(args.md) if args.md else out.parent / "defaults.md"
    md.write_text(markdown(result, study, args, command))
    print(f"wrote {out} and {md} ({result['total_seconds'] / 60:.1f} min)")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
