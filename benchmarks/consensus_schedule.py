"""Consensus learning-rate schedules on MNIST 60k: held-out accuracy per pass (validation split), or test once.

Runs ``--solver consensus`` in memory (:func:`solvers.reference.fit_in_memory`,
the pipeline's code path: 2 shards, 8,192-row chunks, 10 % of the rows of
every chunk held out as the pipeline holds them out for early stopping,
``TrainConfig`` defaults otherwise) on MNIST's 60,000 training images (odd vs
even, or 10 classes; pixels / 256 as ``benchmarks/compare.py``). Each variant
is ``NAME:key=value;key=value`` of TrainConfig settings. ``--split validation``
(the default) reports the held-out rows' accuracy after every pass, the
numbers to choose by; ``--split test`` also scores MNIST's 10,000 test images
after every pass (to confirm a choice once). One BLAS thread.

    python benchmarks/consensus_schedule.py --task oe --variant default: --variant "d07:lr_decay=0.7" --out /tmp/s.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import parse_settings, provenance  # noqa: E402

MNIST = ROOT.parent / "shared" / "data" / "mnist70k_uint8.npz"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=("oe", "m10"), required=True, help="oe: odd vs even digits; m10: 10 classes")
    p.add_argument("--variant", action="append", default=[], help="NAME:key=value;key=value (TrainConfig settings)")
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--split", choices=("validation", "test"), default="validation")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from solvers.config import TrainConfig
    from solvers.reference import fit_in_memory

    d = np.load(MNIST)
    X = d["X"].reshape(len(d["X"]), -1).astype(np.float32) / 256
    y = d["y"].astype(int) % (2 if args.task == "oe" else 10)
    Xtr, ytr, Xte, yte = X[:60000], y[:60000], X[60000:], y[60000:]
    rows = []
    for text in args.variant or ["default:"]:
        name, _, rest = text.partition(":")
        settings = {"solver": "consensus", "hidden": (300,), "shards": 2, "iterations": args.iterations,
                    **parse_settings(filter(None, rest.split(";")), f"--variant {name}:")}
        config = TrainConfig(**settings)
        t0 = time.process_time()
        test = dict(X_test=Xte, y_test=yte) if args.split == "test" else {}
        with threadpool_limits(1):
            fit = fit_in_memory(Xtr, ytr, config, chunk_rows=8192, **test)
        row = {"task": args.task, "variant": name, "settings": {k: v for k, v in settings.items() if k != "hidden"},
               "validation_accuracy": [round(h["validation_accuracy"], 4) for h in fit.history],
               "cpu_seconds": round(time.process_time() - t0, 1)}
        if args.split == "test":
            row["test_accuracy"] = [round(h["test_accuracy"], 4) for h in fit.history]
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"provenance": provenance(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
