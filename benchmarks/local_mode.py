"""Threads or processes for the local cluster: start-up and per-iteration time, side by side.

For each data set (``--data NAME=STORE``, repeatable) and each local mode
(``pipeline.cluster.connect(..., processes=False|True)``: one in-process
worker with 2 threads, or 2 single-threaded worker processes), in turn
A B A B for ``--rounds``, it times

* ``start``: the cluster's start (dashboard off) and the workers' first task;
* ``first``: from the start of :func:`pipeline.training.train` (run-store
  creation, initialisation) to the end of iteration 1;
* ``iteration``: the median of the ``seconds`` of iterations 2..K
  (Gauss-Newton defaults, ``--iterations`` K).

The CPU seconds used by other processes meanwhile are recorded (the machine
is shared); compare the modes by their ratio within one round. Writes
``--out`` (JSON) and the same name with ``.md``. The threshold
``pipeline.cluster.THREADS_MAX_BYTES`` of ``--local-mode auto`` comes from
these figures.

Run::

    python benchmarks/local_mode.py --data mnist60k=/tmp/mnist60k.zarr --data higgs1m=/tmp/higgs1m.zarr
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import CpuWatch, provenance, write_results  # noqa: E402
from pipeline.cluster import connect  # noqa: E402
from pipeline.training import train  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from storage.data import open_data  # noqa: E402

MODES = {"threads": False, "processes": True}


def one(data: str, processes: bool, iterations: int, workdir: Path, config: dict) -> dict:
    store = workdir / f"run-{'p' if processes else 't'}.zarr"
    with CpuWatch() as cpu:
        t0 = time.perf_counter()
        with connect("local", n_workers=2, dashboard_address=None, processes=processes,
                     report=lambda _l: None) as client:
            client.submit(sum, [1, 2]).result()
            started = time.perf_counter() - t0
            t1 = time.perf_counter()
            marks = []
            result = train(client, store=store, data=data, overwrite=True,
                           config=TrainConfig(iterations=iterations, **config),
                           report=lambda line: marks.append(time.perf_counter()))
            total = time.perf_counter() - t1
    seconds = [h["seconds"] for h in result.history]
    shutil.rmtree(store, ignore_errors=True)
    return {"start_seconds": started, "train_seconds": total,
            "first_iteration_seconds": marks[3] - t1,
            "iteration_seconds": seconds, "median_iteration_seconds": statistics.median(seconds[1:] or seconds),
            "chunk_rows": result.store.chunk_rows, "wall_seconds": cpu.wall, "other_cpu_seconds": cpu.other}


def markdown(res: dict) -> str:
    out = ["# Local cluster: threads or processes", "", f"Command: `{res['provenance']['command']}`",
           f"Date {res['provenance']['date']}, {res['provenance']['cpus']} CPUs (shared with other jobs: "
           "the other processes' CPU seconds are listed).", "",
           "| data | round | mode | cluster start s | train() to end of iteration 1 s | median iteration s "
           "| chunks of | other CPU s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        out.append(f"| {r['data']} | {r['round']} | {r['mode']} | {r['start_seconds']:.2f} | "
                   f"{r['first_iteration_seconds']:.2f} | {r['median_iteration_seconds']:.3f} | {r['chunk_rows']} | "
                   f"{r['other_cpu_seconds']:.1f} |")
    out += ["", "Ratio threads / processes of the median iteration, per round:", ""]
    for name, ratios in res["ratios"].items():
        out.append(f"- {name}: " + ", ".join(f"{x:.2f}" for x in ratios))
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", required=True, metavar="NAME=STORE")
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig setting")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "local_mode.json"))
    args = p.parse_args(argv)
    import json

    config = {k: json.loads(v) if v[:1].isdigit() or v[:1] in "[{-" else v
              for k, v in (s.split("=", 1) for s in args.set)}
    runs, ratios = [], {}
    with tempfile.TemporaryDirectory(prefix="local-mode-") as tmp:
        for item in args.data:
            name, path = item.split("=", 1)
            ds = open_data(path)
            for rnd in range(args.rounds):
                medians = {}
                for mode in (MODES if rnd % 2 == 0 else reversed(list(MODES))):
                    r = one(path, MODES[mode], args.iterations, Path(tmp), config)
                    r.update(data=name, n_samples=ds.n_samples, n_features=ds.n_features,
                             data_bytes=4 * ds.n_samples * ds.n_features, round=rnd, mode=mode)
                    runs.append(r)
                    medians[mode] = r["median_iteration_seconds"]
                    print(f"{name} round {rnd} {mode}: start {r['start_seconds']:.2f} s, first "
                          f"{r['first_iteration_seconds']:.2f} s, iteration {r['median_iteration_seconds']:.3f} s, "
                          f"other CPU {r['other_cpu_seconds']:.1f} s", flush=True)
                ratios.setdefault(name, []).append(medians["threads"] / medians["processes"])
    write_results(args.out, {"provenance": provenance(), "config": config, "runs": runs, "ratios": ratios},
                  markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
