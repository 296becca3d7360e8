"""Command to model on small data: the README's commands of a base commit against this tree's, and MLPClassifier.

newuser16's F11 (benchmarks/results/newuser16_s16.md): on scikit-learn's small sets our commands took 3-6 s against
MLPClassifier's 1-2 s, and a split made beforehand cost two ingest processes. Each round runs, as whole processes,
one after the other (the order rotates every round):

* ``base``: the base commit's (``--base``, exported with ``git archive``) ``pipeline.ingest`` of the train CSV, of
  the test CSV, then ``pipeline.train --data D --test-data T --store R`` (defaults);
* ``head``: this tree's ``pipeline.ingest TRAIN --out D --test-source TEST``, then the same ``pipeline.train``;
* ``mlp``: one process that imports pandas and scikit-learn, reads both CSVs and fits
  ``make_pipeline(StandardScaler(), MLPClassifier(solver="adam", early_stopping=True, random_state=0))``.

``--mnist CSV`` adds benchmarks/end_to_end.py's flow on one CSV (ingest ``--test-fraction 0.2``, then train; its
MLP script): there base and head run the same commands. The splits are newuser16's (``train_test_split(test_size=0.2,
random_state=0)``, stratified, label column ``target``). Both trees are compiled to bytecode first (as pip does). After
the rounds, the base and head models (committed weights, model arrays, history but for its timings) and data stores
are compared byte for byte. Writes ``--out`` (JSON) and ``.md`` beside it.

Run::

    python benchmarks/small_data_e2e.py --base b917d6d --mnist /tmp/sp/mnist10k.csv --out benchmarks/results/x.json
"""
from __future__ import annotations

import argparse
import hashlib
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

from benchmarks.bench_util import provenance, write_results  # noqa: E402
from benchmarks.end_to_end import MLP as MLP_ONE_CSV  # noqa: E402

SETS = ("iris", "breast_cancer", "digits")
MLP = """
import sys, pandas as pd
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
tr, te = pd.read_csv(sys.argv[1]), pd.read_csv(sys.argv[2])
clf = make_pipeline(StandardScaler(), MLPClassifier(solver="adam", early_stopping=True, random_state=0))
clf.fit(tr.drop(columns=["target"]).to_numpy(float), tr["target"].to_numpy())
print("accuracy", clf.score(te.drop(columns=["target"]).to_numpy(float), te["target"].to_numpy()))
"""


def _split(name: str, folder: Path) -> tuple[str, str]:
    """Write scikit-learn's ``name`` set as newuser16's 80/20 split (train/test CSV, label ``target``)."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    frame = getattr(datasets, f"load_{name}")(as_frame=True).frame
    tr, te = train_test_split(frame, test_size=0.2, random_state=0, stratify=frame["target"])
    paths = str(folder / f"{name}_train.csv"), str(folder / f"{name}_test.csv")
    tr.to_csv(paths[0], index=False)
    te.to_csv(paths[1], index=False)
    return paths


def _run(cmds, env) -> tuple[float, float]:
    """Run ``cmds`` one after the other; return (wall seconds, CPU seconds of the processes)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    for cmd in cmds:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr[-2000:]}")
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def _flow(py, method, w, train, test):
    """Return the commands of ``method`` ("base" or "head") from the CSV(s) to a model in folder ``w``."""
    train_cmd = [py, "-m", "pipeline.train", "--data", f"{w}/d.zarr", "--store", f"{w}/r.zarr", "--no-progress"]
    if test is None:  # end_to_end.py's flow: one CSV, a held-out fraction
        return [[py, "-m", "pipeline.ingest", train, "--out", f"{w}/d.zarr", "--test-fraction", "0.2"], train_cmd]
    train_cmd += ["--test-data", f"{w}/d-test.zarr"]
    if method == "base":
        return [[py, "-m", "pipeline.ingest", train, "--out", f"{w}/d.zarr"],
                [py, "-m", "pipeline.ingest", test, "--out", f"{w}/d-test.zarr"], train_cmd]
    return [[py, "-m", "pipeline.ingest", train, "--out", f"{w}/d.zarr", "--test-source", test], train_cmd]


def _model_digest(run: str, tree: str) -> str:
    code = ("import sys, json, hashlib, numpy as np; from storage.runstore import RunStore; r = RunStore.open(sys.argv[1]); "
            "ck = r.load_checkpoint(); m = r.model_arrays(); h = hashlib.sha256(); "
            "[h.update(np.ascontiguousarray(a).tobytes()) for a in [*ck.weights, *(ck.best_weights or []), *(m[k] for k in sorted(m))]]; "
            "h.update(json.dumps([{k: v for k, v in e.items() if 'second' not in k} for e in r.manifest()['history']], "
            "sort_keys=True, default=str).encode()); print(ck.iteration, h.hexdigest())")
    out = subprocess.run([sys.executable, "-c", code, run], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": tree},
                         check=True)
    return out.stdout.strip()


def _files_digest(path: str) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(path)).encode() + f.read_bytes())
    return h.hexdigest()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="b917d6d", help="the commit whose commands are the 'before' (default %(default)s)")
    p.add_argument("--sets", nargs="*", default=list(SETS), choices=SETS)
    p.add_argument("--mnist", default=None, metavar="CSV", help="also end_to_end.py's flow on this CSV (no header, label last)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "small_data_e2e.json"))
    args = p.parse_args(argv)
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="small-e2e-") as tmp:
        tmp = Path(tmp)
        base = tmp / "base"
        base.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.base], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        trees = {"base": str(base), "head": str(ROOT)}
        compile_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        for tree in trees.values():
            subprocess.run([py, "-m", "compileall", "-q", *(f"{tree}/{d}" for d in ("pipeline", "solvers", "storage"))],
                           check=True, env=compile_env, capture_output=True)
        tasks = {name: _split(name, tmp) for name in args.sets}
        if args.mnist:
            tasks["mnist10k"] = (str(Path(args.mnist).resolve()), None)
        runs, same = [], {}
        load_before = os.getloadavg()
        for name, (train, test) in tasks.items():
            work = {m: tmp / f"{name}-{m}" for m in ("base", "head")}

            mlp = ([[py, "-c", MLP, train, test]] if test is not None else [[py, "-c", MLP_ONE_CSV, train, "0.2", "0"]])
            order = ["base", "head", "mlp"]
            for rnd in range(args.rounds):
                for method in order[rnd % 3:] + order[:rnd % 3]:
                    env = {**os.environ, "PYTHONPATH": trees.get(method, trees["base"])}
                    if method != "mlp":
                        subprocess.run(["rm", "-rf", str(work[method])], check=True)
                        work[method].mkdir()
                    wall, cpu = _run(_flow(py, method, work[method], train, test) if method != "mlp" else mlp, env)
                    runs.append({"task": name, "round": rnd, "method": method, "wall_seconds": wall, "cpu_seconds": cpu,
                                 "load": os.getloadavg()[0]})
                    print(f"{name} round {rnd} {method}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
            same[name] = {"model": [_model_digest(f"{work[m]}/r.zarr", trees[m]) for m in ("base", "head")],
                          "data": [[_files_digest(f"{work[m]}/{s}") for m in ("base", "head")]
                                   for s in ("d.zarr", "d-test.zarr")]}
            same[name]["bitwise_same"] = (same[name]["model"][0] == same[name]["model"][1]
                                          and all(a == b for a, b in same[name]["data"]))
    res = {"provenance": provenance(), "base": args.base, "runs": runs, "same": same, "load": (load_before, os.getloadavg()),
           "summary": _summary(runs)}
    write_results(args.out, res, markdown)
    return 0


def _summary(runs) -> dict:
    out = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        by = {}
        for r in runs:
            if r["task"] == task:
                by.setdefault(r["round"], {})[r["method"]] = r
        row = {}
        for m in ("base", "head", "mlp"):
            row[f"{m}_wall_median"] = statistics.median(v[m]["wall_seconds"] for v in by.values())
        for a, b in (("head", "base"), ("head", "mlp"), ("base", "mlp")):
            for what in ("wall", "cpu"):
                row[f"{a}/{b}_{what}_median"] = statistics.median(v[a][f"{what}_seconds"] / v[b][f"{what}_seconds"]
                                                                 for v in by.values())
        out[task] = row
    return out


def markdown(res: dict) -> str:
    lines = [f"# Small data, command to model: base `{res['base']}` against this tree, and MLPClassifier", "",
             f"Command: `{res['provenance']['command']}`", f"Date {res['provenance']['date']}, "
             f"{res['provenance']['cpus']} CPUs, load (1 min) before/after {res['load'][0][0]:.1f}/{res['load'][1][0]:.1f}.", "",
             "| task | base s | head s | MLP s | head/base wall | head/base CPU | head/MLP wall | base/MLP wall | models and stores |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task, row in res["summary"].items():
        lines.append(f"| {task} | {row['base_wall_median']:.2f} | {row['head_wall_median']:.2f} | {row['mlp_wall_median']:.2f} | "
                     f"{row['head/base_wall_median']:.3f} | {row['head/base_cpu_median']:.3f} | "
                     f"{row['head/mlp_wall_median']:.2f} | {row['base/mlp_wall_median']:.2f} | "
                     f"{'bitwise the same' if res['same'][task]['bitwise_same'] else 'DIFFERENT'} |")
    lines += ["", "Medians over rounds of per-round values (ratios are per round, then the median)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
