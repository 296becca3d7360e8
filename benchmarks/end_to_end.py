"""End to end on a CSV: ``pipeline.ingest`` + ``pipeline.train`` (defaults) against ``MLPClassifier(adam, early_stopping=True)``.

Each round runs, as whole processes and one after the other (A B A B …):

* ``ours``: ``python -m pipeline.ingest CSV --out D --test-fraction F`` then
  ``python -m pipeline.train --data D --store R`` with the defaults; the
  model's accuracy on the held-out split is measured afterwards with
  ``python -m pipeline.evaluate`` (not timed);
* ``mlp``: one Python process that reads the same CSV with pandas, holds out
  the same rows (``storage.ingest.held_out_mask``, seed 0), and fits
  ``make_pipeline(StandardScaler(), MLPClassifier(solver="adam",
  early_stopping=True, random_state=0))`` (scikit-learn's defaults otherwise),
  then scores the held-out rows (scoring inside the timed process).

Wall seconds come from the parent (``time.perf_counter`` around the
processes); the CPU seconds used by other processes meanwhile are recorded
(the machine is shared). Writes ``--out`` (JSON) and ``.md`` beside it.

Before timing, the project's modules are compiled to bytecode (``compileall``),
as ``pip install`` does and as scikit-learn's installed modules are: with
``PYTHONDONTWRITEBYTECODE`` set (this machine's environment) every timed
process would otherwise compile them from source again.

Run::

    python benchmarks/end_to_end.py --csv ../shared/data/covtype_balanced_10k.csv --name covtype
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import CpuWatch, provenance, write_results  # noqa: E402

MLP = """
import sys, numpy as np, pandas as pd
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from storage.ingest import held_out_mask
df = pd.read_csv(sys.argv[1], header=None if sys.argv[3] == "0" else "infer")
X, y = df.iloc[:, :-1].to_numpy(np.float32), df.iloc[:, -1].to_numpy()
test = held_out_mask(0, len(y), float(sys.argv[2]), 0)
clf = make_pipeline(StandardScaler(), MLPClassifier(solver="adam", early_stopping=True, random_state=0))
clf.fit(X[~test], y[~test])
print("accuracy", clf.score(X[test], y[test]), "epochs", clf[-1].n_iter_)
"""


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd, env, cpu: list | None = None) -> tuple[float, str]:
    """Run ``cmd``; return (wall seconds, stdout), and append its CPU seconds (user + system, all threads) to ``cpu``."""
    t0, c0 = time.perf_counter(), _children_cpu()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if cpu is not None:
        cpu.append(_children_cpu() - c0)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr[-2000:]}")
    return seconds, out.stdout


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train-args", default="", help="extra flags for pipeline.train (default: none, the defaults)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    csv = str(Path(args.csv).resolve())
    header = "1" if any(c.isalpha() for c in open(csv).readline()) else "0"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    compile_env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(ROOT / d) for d in ("pipeline", "solvers", "storage"))],
                   check=True, env=compile_env, capture_output=True)
    py = sys.executable
    runs = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="e2e-") as tmp:
        data, run_store = f"{tmp}/d.zarr", f"{tmp}/r.zarr"
        ours = [[py, "-m", "pipeline.ingest", csv, "--out", data, "--test-fraction", str(args.test_fraction),
                 "--overwrite"],
                [py, "-m", "pipeline.train", "--data", data, "--store", run_store, "--overwrite", "--no-progress",
                 *args.train_args.split()]]
        mlp = [py, "-c", MLP, csv, str(args.test_fraction), header]
        for rnd in range(args.rounds):
            for method in (("ours", "mlp") if rnd % 2 == 0 else ("mlp", "ours")):
                own = []  # the timed processes' CPU seconds (a loaded machine stretches wall time, less so CPU time)
                with CpuWatch() as cpu:
                    if method == "ours":
                        seconds = [run(cmd, env, own)[0] for cmd in ours]
                        wall = sum(seconds)
                    else:
                        wall, out = run(mlp, env, own)
                        seconds = [wall]
                if method == "ours":
                    _, ev = run([py, "-m", "pipeline.evaluate", "--store", run_store, "--data",
                                 data.replace(".zarr", "-test.zarr"), "--json"], env)
                    metrics = json.loads(ev.strip().splitlines()[-1])
                    acc = metrics["accuracy"]
                    extra = {"ingest_seconds": seconds[0], "train_seconds": seconds[1],
                             "model_iteration": metrics.get("iteration")}
                else:
                    acc, extra = float(out.split()[1]), {"epochs": int(out.split()[3])}
                runs.append({"round": rnd, "method": method, "wall_seconds": wall, "cpu_seconds": sum(own),
                             "test_accuracy": acc, "other_cpu_seconds": cpu.other - sum(own), **extra})
                print(f"round {rnd} {method}: {wall:.2f} s, CPU {sum(own):.2f} s, accuracy {acc:.4f}, "
                      f"other CPU {cpu.other - sum(own):.1f} s", flush=True)
    load = (load_before, os.getloadavg()[0])
    ratios = []
    cpu_ratios = []
    for rnd in range(args.rounds):
        by = {r["method"]: r for r in runs if r["round"] == rnd}
        ratios.append(by["ours"]["wall_seconds"] / by["mlp"]["wall_seconds"])
        cpu_ratios.append(by["ours"]["cpu_seconds"] / by["mlp"]["cpu_seconds"])
    res = {"provenance": provenance(), "csv": csv, "test_fraction": args.test_fraction, "runs": runs,
           "ratio_ours_over_mlp": ratios, "median_ratio": statistics.median(ratios),
           "cpu_ratio_ours_over_mlp": cpu_ratios, "load": load}
    out = args.out or str(ROOT / "benchmarks" / "results" / f"end_to_end_{args.name}.json")
    write_results(out, res, markdown)
    return 0


def markdown(res: dict) -> str:
    lines = [f"# End to end on `{Path(res['csv']).name}`: ingest + train (defaults) vs MLPClassifier(adam, "
             "early_stopping=True)", "", f"Command: `{res['provenance']['command']}`",
             f"Date {res['provenance']['date']}, {res['provenance']['cpus']} CPUs, shared with other jobs "
             "(other processes' CPU seconds per run are listed; files written before the CPU s column counted the timed "
             "processes' own CPU in them too).", "",
             "| round | method | wall s | CPU s | ingest s | train s | held-out accuracy | model iteration / epochs | other CPU s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(f"| {r['round']} | {r['method']} | {r['wall_seconds']:.2f} | {r.get('cpu_seconds', float('nan')):.2f} | "
                     f"{r.get('ingest_seconds', float('nan')):.2f} | "
                     f"{r.get('train_seconds', float('nan')):.2f} | {r['test_accuracy']:.4f} | "
                     f"{r.get('model_iteration', r.get('epochs', '—'))} | {r['other_cpu_seconds']:.1f} |")
    lines += ["", "Ratio ours / MLPClassifier per round: " + ", ".join(f"{x:.2f}" for x in res["ratio_ours_over_mlp"])
              + f" (median {res['median_ratio']:.2f})."]
    if res.get("cpu_ratio_ours_over_mlp"):
        lines += ["", "CPU seconds (user + system of the timed processes, all their threads), ours / MLPClassifier "
                  "per round: " + ", ".join(f"{x:.2f}" for x in res["cpu_ratio_ours_over_mlp"]) + "."]
    if res.get("load"):
        lines += ["", f"Load average (1 min) before / after: {res['load'][0]:.2f} / {res['load'][1]:.2f}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
