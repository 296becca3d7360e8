"""Does averaging more often than once per pass help consensus? Held-out accuracy per pass, MNIST validation split.

Simulates ``--solver consensus`` passes in memory with the solver's own shard
kernel (:meth:`solvers.consensus.ConsensusSolver.shard_kernel`, Adam carried
per shard, ρ = 1e-3, α = 0, one local epoch): the training rows are the first
54,000 of MNIST's 60,000 training images, the held-out rows the last 6,000
(never the test rows), in 8 chunks of 6,750 rows; pass 1 reads 3 of each
shard's chunks (``--first-pass-rows`` 49,152 over 8,192-row chunks does the
same), later passes whole shards. A variant ``shards:rounds:lr`` averages the
shard models ``rounds`` times per chunk (local SGD: every round starts all
shards from the average); ``1:1:lr`` is plain Adam on one core.

    python benchmarks/consensus_rounds.py --task oe --variants 2:0:2e-3 2:1:2e-3 2:4:2e-3 1:1:2e-3

(rounds 0: once per pass, the solver's default.) Prints one line per variant; ``--out`` writes them as JSON.
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

from solvers import make_solver  # noqa: E402
from solvers.adam import gradient  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.consensus import ShardParams, consensus_step  # noqa: E402
from solvers.inmemory import _Chunks  # noqa: E402
from solvers.network import standardize  # noqa: E402

MNIST = ROOT.parent / "shared" / "data" / "mnist70k_uint8.npz"
N_TRAIN, CHUNK, PASSES = 54_000, 6_750, 3


def run_variant(X, y, classes, shards: int, rounds: int, lr: float, seed: int = 0) -> dict:
    mean, scale = np.full(X.shape[1], X[:N_TRAIN].mean()), np.full(X.shape[1], X[:N_TRAIN].std())
    cfg = TrainConfig(solver="consensus", hidden=(300,), shards=shards, alpha=0.0, local_epochs=1, scaling="global",
                      learning_rate=lr, seed=seed)
    s = make_solver(cfg, X.shape[1], x_mean=mean, x_scale=scale, classes=classes)
    xv, yv = standardize(X[N_TRAIN:], mean, scale, np.float32), y[N_TRAIN:]
    tv = s.task.targets(yv, np.float32)

    def accuracy(theta):
        _, scores = gradient(theta.astype(np.float32), s.flat, s.act, s.loss_kind, xv, tv, np.empty(s.flat.size, np.float32))
        return float(s.task.score_parts(scores, yv)["correct"]) / len(yv)

    bounds = [(a, a + CHUNK) for a in range(0, N_TRAIN, CHUNK)]
    per = len(bounds) // shards
    groups = [bounds[i * per:(i + 1) * per] for i in range(shards)]
    first = 6 // shards  # pass 1: 3 of the 4 chunks of each of 2 shards (40,500 rows); the same rows for one shard
    theta = s.flat.from_weights(s.he_weights(s.L))
    states, out, it, cpu = [None] * shards, [], 0, 0.0
    for k in range(PASSES):
        window = [g[:first] for g in groups] if k == 0 else groups
        if rounds == 0:
            steps = [window]
        else:  # every chunk of the window cut into `rounds` pieces, each a round on every shard
            steps = []
            for j in range(len(window[0])):
                for q in range(rounds):
                    def piece(b, q=q):
                        a, e = b
                        size = (e - a) // rounds
                        return [(a + q * size, e if q == rounds - 1 else a + (q + 1) * size)]
                    steps.append([piece(w[j]) for w in window])
        for chunks in steps:
            it += 1
            p = ShardParams(theta, it, 1e-3, 0.0, 0.0, 0, epochs=s.local_epochs(N_TRAIN))  # as the solver passes it
            total = 0.0
            for shard in range(shards):
                t0 = time.process_time()
                data = _Chunks([X[a:b] for a, b in chunks[shard]], [y[a:b] for a, b in chunks[shard]])
                states[shard], sums = s.shard_kernel(data, states[shard], shard, p)
                cpu += time.process_time() - t0
                total = total + sums
            u = s.shard_layout().unpack(total)
            theta = consensus_step(u["v"] / u["w"], 1e-3, 0.0, s._bias)
        out.append(round(accuracy(theta), 4))
    return {"shards": shards, "rounds_per_chunk": rounds, "learning_rate": lr, "averagings": it,
            "held_out_accuracy_per_pass": out, "shard_cpu_seconds": round(cpu, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=("oe", "m10"), required=True, help="oe: odd vs even digits; m10: 10 classes")
    p.add_argument("--variants", nargs="+", default=["2:0:2e-3", "2:1:2e-3", "2:4:2e-3", "1:0:2e-3"],
                   help="shards:rounds per chunk (0: once per pass):learning rate")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    d = np.load(MNIST)
    X = d["X"][:60000].reshape(60000, -1).astype(np.float32) / 256
    y = d["y"][:60000].astype(int) % (2 if args.task == "oe" else 10)
    classes = np.unique(y)
    y = np.searchsorted(classes, y)
    rows = []
    for v in args.variants:
        shards, rounds, lr = v.split(":")
        r = run_variant(X, y, classes, int(shards), int(rounds), float(lr))
        rows.append({"task": args.task, **r})
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
