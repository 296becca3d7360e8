"""dlADMM in memory: test accuracy beside the 2016 ADMM, and seconds per iteration as the hidden width grows.

Part 1 (``accuracy``): ``solvers.reference.fit_in_memory`` on sklearn digits (10
classes, 70/30 split, random_state 0) and MNIST odd-vs-even (the first 20 000
images for training, the last 10 000 for testing), one hidden layer of 300,
for each setting in ``SETTINGS``: test accuracy at 10, 20, …, N iterations,
median seconds per iteration (iterations 2..N), and the largest relative
rise of the objective (≤ 0: monotone).

Part 2 (``scaling``): seconds per iteration of dlADMM (default settings) and
ADMM on the 20 000-image MNIST odd-vs-even subset as the hidden width grows,
with dlADMM's time split by pass kind (B = backward hidden-layer passes,
F = forward passes, O = output/dual pass) and the client's share.

One BLAS thread (``--threads``) and one job at a time; the CPU seconds other
processes used during each measurement are recorded (``other_cpu_s``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threadpoolctl import threadpool_limits  # noqa: E402

import solvers.reference  # noqa: E402
from benchmarks.bench_util import CpuWatch, provenance, write_results  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.reference import InMemoryRunner, fit_in_memory  # noqa: E402

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist70k_uint8.npz"

SETTINGS = {  # name -> TrainConfig keywords (hidden and iterations are added)
    "dladmm (defaults: squared, rho=4, nu=100)": {"solver": "dladmm"},
    "dladmm (hinge, rho=0.2, nu=100; no guarantee)": {"solver": "dladmm", "loss": "hinge",
                                                      "rho": 0.2, "nu": 100.0},
    "dladmm (hinge, rho=0.2, nu=100, scaling=global; no guarantee)": {
        "solver": "dladmm", "loss": "hinge", "scaling": "global", "rho": 0.2, "nu": 100.0},
    "admm (defaults)": {"solver": "admm"},
}


class TimingRunner(InMemoryRunner):
    """The in-memory runner, timing every pass by kernel name."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seconds = {}

    def run(self, kernel, params, **passes):
        t0 = time.perf_counter()
        out = super().run(kernel, params, **passes)
        self.seconds[kernel] = self.seconds.get(kernel, 0.0) + time.perf_counter() - t0
        return out


@contextlib.contextmanager
def timing_runners():
    """Make ``fit_in_memory`` run its passes through :class:`TimingRunner`; yield the runners it makes."""
    made = []

    def make(*args, **kwargs):
        made.append(TimingRunner(*args, **kwargs))
        return made[-1]

    original = solvers.reference.InMemoryRunner
    solvers.reference.InMemoryRunner = make
    try:
        yield made
    finally:
        solvers.reference.InMemoryRunner = original


def load_tasks(n_train: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0)
    tasks = {"digits10": (Xtr, ytr, Xte, yte)}
    with np.load(MNIST) as f:
        X, y = f["X"], f["y"]
    tasks["mnist_oddeven"] = (X[:n_train].astype(np.float32), y[:n_train] % 2,
                              X[60000:].astype(np.float32), y[60000:] % 2)
    return tasks


def accuracy(tasks, iterations: int, chunk_rows: int) -> list:
    rows = []
    for task, (Xtr, ytr, Xte, yte) in tasks.items():
        for name, kw in SETTINGS.items():
            cfg = TrainConfig(hidden=(300,), iterations=iterations, **kw)
            with CpuWatch() as cpu:
                r = fit_in_memory(Xtr, ytr, cfg, X_test=Xte, y_test=yte, chunk_rows=chunk_rows)
            obj = np.array([h["objective"] for h in r.history])
            row = {"task": task, "setting": name, "config": cfg.to_dict(),
                   "test_accuracy": {h["iteration"]: h["test_accuracy"] for h in r.history},
                   "train_accuracy": {h["iteration"]: h["train_accuracy"] for h in r.history},
                   "seconds_per_iteration": statistics.median(h["seconds"] for h in r.history[1:]),
                   "max_objective_rise": float(np.max(np.diff(obj) / np.abs(obj[:-1]))),
                   "wall_s": cpu.wall, "other_cpu_s": cpu.other}
            rows.append(row)
            print(f"{task:14s} {name:48s} test acc " + " ".join(
                f"{k}:{row['test_accuracy'][k]:.4f}" for k in range(10, iterations + 1, 10))
                + f"  {row['seconds_per_iteration']:.3f} s/it  rise {row['max_objective_rise']:.1e}"
                + f"  other cpu {cpu.other:.0f}s", flush=True)
    return rows


def scaling(X, y, widths, iterations: int, chunk_rows: int) -> list:
    rows = []
    for width in widths:
        for solver in ("dladmm", "admm"):
            cfg = TrainConfig(solver=solver, hidden=(width,), iterations=iterations)
            with timing_runners() as runners, CpuWatch() as cpu:
                r = fit_in_memory(X, y, cfg, chunk_rows=chunk_rows)
            per_it = statistics.median(h["seconds"] for h in r.history[1:])
            row = {"solver": solver, "width": width, "seconds_per_iteration": per_it,
                   "iteration_seconds_total": sum(h["seconds"] for h in r.history),
                   "pass_seconds_total": runners[0].seconds, "iterations": iterations,
                   "wall_s": cpu.wall, "other_cpu_s": cpu.other}
            rows.append(row)
            print(f"width {width:5d} {solver:7s} {per_it:.3f} s/it  passes {runners[0].seconds}  "
                  f"other cpu {cpu.other:.0f}s", flush=True)
    return rows


def markdown(res: dict) -> str:
    p = res["provenance"]
    out = ["# dlADMM: accuracy beside ADMM, and per-iteration time vs hidden width (in memory)", "",
           f"Command: `{p['command']}`  ", f"Date: {p['date']}  ",
           f"Machine: {p['cpus']} cores, Python {p['python']}; {res['threads']} BLAS thread(s), one job at a time; "
           f"chunks of {res['chunk_rows']} rows. `other CPU s` = CPU seconds other processes used meanwhile "
           "(the machine is shared; large values mean a disturbed measurement).", ""]
    if res.get("accuracy_provenance"):
        ap = res["accuracy_provenance"]
        out += [f"The accuracy part is kept from an earlier run: `{ap['command']}` ({ap['date']}).", ""]
    if res.get("accuracy"):
        its = sorted({int(k) for row in res["accuracy"] for k in row["test_accuracy"]})
        marks = [k for k in its if k % 10 == 0] or its[-1:]
        out += ["## Test accuracy (one hidden layer of 300)", "",
                "| task | setting | " + " | ".join(f"it {k}" for k in marks)
                + " | s / iteration | max objective rise | other CPU s |",
                "|---|---|" + "---|" * (len(marks) + 3)]
        for row in res["accuracy"]:
            acc = {int(k): v for k, v in row["test_accuracy"].items()}
            out.append(f"| {row['task']} | {row['setting']} | " + " | ".join(f"{acc[k]:.4f}" for k in marks)
                       + f" | {row['seconds_per_iteration']:.3f} | {row['max_objective_rise']:.1e} | "
                       f"{row['other_cpu_s']:.0f} |")
        out += ["", "`max objective rise` is the largest relative increase of the objective between iterations "
                "(≤ 0: monotone non-increasing; ADMM's objective is its own, eq. 5 of Taylor et al.).", ""]
    if res.get("scaling"):
        out += [f"## Seconds per iteration vs hidden width (MNIST odd/even, {res['scaling_n']} samples, "
                f"median of iterations 2..{res['scaling'][0]['iterations']})", "",
                "| width | dlADMM s/it | ADMM s/it | dlADMM / ADMM | dlADMM share B / F / O / client | other CPU s |",
                "|---|---|---|---|---|---|"]
        by = {(r["solver"], r["width"]): r for r in res["scaling"]}
        for width in sorted({r["width"] for r in res["scaling"]}):
            d, a = by[("dladmm", width)], by[("admm", width)]
            sec, total = d["pass_seconds_total"], d["iteration_seconds_total"]
            parts = [sec.get(k, 0.0) / total for k in ("backward_chunk", "forward_chunk", "output_chunk")]
            client = 1 - sum(parts)
            out.append(f"| {width} | {d['seconds_per_iteration']:.3f} | {a['seconds_per_iteration']:.3f} | "
                       f"{d['seconds_per_iteration'] / a['seconds_per_iteration']:.2f} | "
                       + " / ".join(f"{100 * x:.0f} %" for x in [*parts, client])
                       + f" | {d['other_cpu_s']:.0f} / {a['other_cpu_s']:.0f} |")
        out += ["", "Shares are of the time of dlADMM's iterations (init excluded): B = the backward pass of the "
                "hidden layer, F = its forward pass, O = the output/dual pass; *client* = the rest (the "
                "W/b steps with backtracking, τ, bookkeeping).", ""]
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--widths", default="100,200,500,1000")
    ap.add_argument("--width-iterations", type=int, default=5)
    ap.add_argument("--chunk-rows", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/dladmm_scaling.json")
    args = ap.parse_args(argv)
    res = {"provenance": provenance(), "threads": args.threads, "chunk_rows": args.chunk_rows,
           "scaling_n": args.n_train}
    out = Path(args.out)
    if args.skip_accuracy and out.exists():  # keep the accuracy part of an earlier run
        res["accuracy"] = json.loads(out.read_text()).get("accuracy")
        res["accuracy_provenance"] = json.loads(out.read_text()).get("accuracy_provenance",
                                                                     json.loads(out.read_text())["provenance"])
    tasks = load_tasks(args.n_train)
    with threadpool_limits(args.threads):
        if not args.skip_accuracy:
            res["accuracy"] = accuracy(tasks, args.iterations, args.chunk_rows)
        if not args.skip_scaling:
            Xtr, ytr, _, _ = tasks["mnist_oddeven"]
            res["scaling"] = scaling(Xtr, ytr, [int(w) for w in args.widths.split(",")], args.width_iterations,
                                     args.chunk_rows)
    write_results(args.out, res, markdown)


if __name__ == "__main__":
    main()
