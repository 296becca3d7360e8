"""Where a consensus pipeline run's wall time goes: start-up, α's pass A, shard passes, scoring, commits, gaps.

Runs :func:`pipeline.training.train` (``--solver consensus`` unless
``--set solver=…``) on a local cluster of ``--workers`` single-threaded
worker processes over a compare.py data store, with the phases of the
client timed by wrapping their functions, and the workers' task stream
(:func:`distributed.get_task_stream`) recorded: per iteration, the seconds of
α's pass A, the shard pass (and its tasks' busy time on the workers), the
held-out scoring, the commit, and the rest (client step, reports). It also
times what compare.py's clock would see (the time to the first committed
iteration from the start of ``train``).

    python benchmarks/consensus_profile.py --data /tmp/admm-dask-bench/compare-mnist-oddeven-n60000-train.zarr \
        --test /tmp/admm-dask-bench/compare-mnist-oddeven-n60000-test.zarr --iterations 3
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _parse_value(text):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--test", default=None, help="test store: accuracy of each committed iteration (clock stopped)")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--set", nargs="*", default=[], help="TrainConfig overrides NAME=VALUE")
    p.add_argument("--chunk-rows", type=int, default=None)
    p.add_argument("--threads", action="store_true", help="worker threads instead of processes")
    p.add_argument("--out", default=None, help="write the timings as JSON here")
    args = p.parse_args(argv)

    import numpy as np
    from distributed import get_task_stream

    import pipeline.training as training
    from pipeline.cluster import connect
    from pipeline.model import load_network
    from pipeline.passes import DaskRunner
    from solvers.config import TrainConfig
    from storage.data import open_data
    from storage.runstore import RunStore

    overrides = {"solver": "consensus", "iterations": args.iterations}
    for item in args.set:
        name, value = item.split("=", 1)
        overrides[name] = _parse_value(value)
    config = TrainConfig(**overrides)
    phases = defaultdict(float)
    log = []
    clock0 = [None]

    def timed(name, fn):
        @functools.wraps(fn)  # keeps the signature: the driver asks whether evaluate takes ``skip``
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t
                phases[name] += dt
                log.append((name, t - (clock0[0] or t), dt))
        return wrapper

    from solvers import consensus as cons

    cons.ConsensusSolver.held_out_alpha = timed("alpha_pass_a", cons.ConsensusSolver.held_out_alpha)
    if hasattr(DaskRunner, "run_shards"):  # a tree before session 6
        DaskRunner.run_shards = timed("shard_pass", DaskRunner.run_shards)
    if hasattr(DaskRunner, "run_shard_rounds"):
        DaskRunner.run_shard_rounds = timed("shard_rounds", DaskRunner.run_shard_rounds)
    DaskRunner.run = timed("chunk_pass", DaskRunner.run)
    training._RunKeeper.commit = timed("commit", training._RunKeeper.commit)
    training._RunKeeper.begin = timed("begin", training._RunKeeper.begin)
    training.data_moments = timed("data_moments", training.data_moments)
    training.RunStore.create = timed("store_create", training.RunStore.create)
    real_drive = training.drive

    def drive(*a, evaluate, **k):
        return timed("drive", real_drive)(*a, evaluate=timed("evaluate", evaluate), **k)

    training.drive = drive
    test = open_data(args.test) if args.test else None
    x_test = y_test = None
    if test is not None:
        x_test, y_test = test.X[...], test.y[...]
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "run.zarr")
        t0 = time.perf_counter()
        with connect("local", n_workers=args.workers, threads_per_worker=1, dashboard_address=":0",
                     processes=not args.threads, report=lambda line: None) as client:
            client.run(exec, "import pipeline.passes, storage.data, storage.runstore, solvers.consensus")
            start = time.perf_counter() - t0
            paused = [0.0]
            last = [0]

            def report(line):
                now = time.perf_counter()
                try:
                    k = RunStore.open(store).committed_iteration()
                except Exception:  # noqa: BLE001
                    k = None
                if k and k > last[0]:
                    last[0] = k
                    acc = load_network(store).score(x_test, y_test) if x_test is not None else None
                    points.append({"iteration": k, "seconds": now - clock0[0] - paused[0], "test_accuracy": acc})
                    paused[0] += time.perf_counter() - now

            with get_task_stream(client) as ts:
                clock0[0] = time.perf_counter()
                wall0 = time.time()
                out = training.train(client, store=store, data=args.data, config=config, chunk_rows=args.chunk_rows,
                                     overwrite=True, report=report)
            history = out.history
    busy = defaultdict(float)
    tasks = []
    for task in ts.data:
        name = task["key"] if isinstance(task["key"], str) else str(task["key"][0])
        for part in task.get("startstops", ()):
            if part.get("action") == "compute" and clock0[0] is not None:
                tasks.append((name.split("-")[0], task.get("worker"), round(part["start"] - wall0, 3),
                              round(part["stop"] - part["start"], 3)))
    for task in ts.data:
        for part in task.get("startstops", ()):
            if part.get("action") == "compute":
                busy[task["key"].split("-")[0] if isinstance(task["key"], str) else str(task["key"][0]).split("-")[0]] \
                    += part["stop"] - part["start"]
    result = {"tasks": sorted(tasks, key=lambda t: t[2]), "config": overrides, "cluster_start_seconds": start,
              "phases": dict(phases), "points": points,
              "history": [{k: v for k, v in h.items() if isinstance(v, (int, float, str))} for h in history],
              "worker_busy_seconds": dict(busy),
              "timeline": [(n, round(t, 3), round(d, 3)) for n, t, d in log]}
    print(json.dumps({k: result[k] for k in ("cluster_start_seconds", "phases", "points", "worker_busy_seconds")},
                     indent=1, default=float))
    for t in result["tasks"]:
        print("task", *t)
    for n, t, d in result["timeline"]:
        print(f"{t:8.3f} {d:7.3f} {n}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    np.seterr(all="ignore")
    return 0


if __name__ == "__main__":
    sys.exit(main())
