"""A/B of the input Grams summed ahead (``pipeline.passes.AHEAD``) on plain ``pipeline.training.train`` runs (issue 21).

compare.py stops its clock while it scores each committed model, and the workers idle then: work done ahead in
that pause is free on its clock, not in a user's run. This script times ``train`` itself: the MNIST 10-class 60k
compare store, ``--solver gauss-newton`` as compare.py configures it (hidden 300, ``--iterations``, ``--seed``), on
an in-process cluster of 2 worker threads, one BLAS thread each (as compare.py's), sides alternating in one process.
Per run it records when each iteration's progress line is reported (seconds from the call; no scoring, no wait
for the commit) and the total, and checks that the last committed weights of every run are the same bytes.

    flock /work/bench.lock python benchmarks/ahead_ab.py --rounds 3 --out /tmp/ahead_ab.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def one_run(client, data: str, store: str, config, ahead: bool) -> dict:
    from pipeline import passes
    from pipeline.training import train
    from storage.runstore import RunStore

    passes.AHEAD = ahead
    marks = []
    t0 = time.perf_counter()

    def report(line):
        fields = line.split()  # a per-iteration line: iteration, seconds, ... (compare.py's _reported_iteration)
        if len(fields) >= 3 and fields[0].isdigit() and re.fullmatch(r"[0-9.]+", fields[1]):
            marks.append((int(fields[0]), time.perf_counter() - t0))

    train(client, store=store, data=data, config=config, overwrite=True, report=report)
    total = time.perf_counter() - t0
    ck = RunStore.open(store).load_checkpoint()
    digest = hashlib.sha256(b"".join(W.tobytes() for W in ck.weights)).hexdigest()[:16]
    history = RunStore.open(store).manifest()["history"]
    return {"ahead": ahead, "iterations": marks, "total": total, "weights_sha256": digest,
            "iteration_seconds": [h.get("seconds") for h in history],
            "train_accuracy": [h.get("train_accuracy") for h in history], "load": os.getloadavg()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/tmp/q/compare-mnist10-n60000-train.zarr")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--store", default="/tmp/ahead_ab.zarr")
    p.add_argument("--nice", type=int, default=None, help="pipeline.passes.AHEAD_NICE (default: the module's)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    from pipeline.cluster import connect
    from solvers.config import TrainConfig

    if args.nice is not None:
        from pipeline import passes

        passes.AHEAD_NICE = args.nice
    config = TrainConfig(solver="gauss-newton", hidden=(300,), iterations=args.iterations, seed=args.seed)
    runs = []
    with threadpool_limits(1), connect("local", n_workers=2, threads_per_worker=1, dashboard_address=":0",
                                       processes=False) as client:
        client.run(exec, "import pipeline.passes, storage.data, storage.runstore, solvers.gauss_newton")
        one_run(client, args.data, args.store, config, False)  # warm: page cache, imports
        for r in range(args.rounds):
            for ahead in ((True, False) if r % 2 == 0 else (False, True)):
                run = one_run(client, args.data, args.store, config, ahead)
                run["round"] = r
                runs.append(run)
                its = " ".join(f"{k}:{s:.3f}" for k, s in run["iterations"])
                print(f"r{r} {'ahead' if ahead else 'plain'}: {its} total {run['total']:.3f} "
                      f"weights {run['weights_sha256']} load {run['load'][0]:.1f}", flush=True)
    same = len({r["weights_sha256"] for r in runs}) == 1
    print(f"weights identical across all runs: {same}")
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": runs, "same_weights": same, "argv": sys.argv}, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
