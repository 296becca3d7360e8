"""Issue 21 (seeds16): the default's first iteration on MNIST 10-class is one consensus pass; how far above the
target it ends, seed by seed, and whether a step-size schedule *inside* pass 1 makes it robust (prototype).

In memory (:func:`solvers.reference.fit_in_memory`) with ``--solver consensus,gauss-newton`` and ``--shards 2``,
the hand-over that ``--solver auto`` picks on 2 worker processes (compare.py's pipeline): on 60k MNIST its pass 1
is one sweep over each shard's chunks, averaged after every chunk (``--averaging chunk``). Validation splits only
(``benchmarks/defaults_real.load_task(task, "validation", seed)``): the test split is never read.

Variants (``--schedule``) replace Adam's constant step size within the chosen passes by
``lr(f) = peak · s(f)``, f the fraction of the pass done (round r of R, minibatch b of B: (r + b/B)/R):

* ``const``: s = 1 (the default: the solver's own kernel, not patched);
* ``linear``: s = 1 − f (to 0 at the end of the pass);
* ``cosine``: s = (1 + cos πf)/2;
* ``tail``: s = 1 for f < 1/2, then linear to 0.

``--peak`` multiplies the pass's step size (default 1); ``--passes first|all`` (default first).

Run::

    python benchmarks/seeds16_first_pass.py --task mnist10 --seeds 0 1 2 3 4 5 --variants const:1 const:1.5 linear:2 \\
        --out benchmarks/results/seeds16_first_pass.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import provenance  # noqa: E402
from solvers import consensus as cons  # noqa: E402

SCHEDULES = {
    "const": lambda f: 1.0,
    "linear": lambda f: max(0.0, 1.0 - f),
    "cosine": lambda f: 0.5 * (1.0 + math.cos(math.pi * min(1.0, f))),
    "tail": lambda f: 1.0 if f < 0.5 else max(0.0, 2.0 * (1.0 - f)),
}
ORIGINAL = cons.ConsensusSolver.shard_kernel


class _ScheduledAdam(cons.Adam):
    """Adam whose step size is ``lr · sched(f)``, f advanced by the kernel's minibatch count (see :func:`patch`)."""


def patch(schedule: str, peak: float, passes: str):
    """Patch ConsensusSolver.shard_kernel: the Adam steps of the chosen passes take ``peak·lr·s(f)``."""
    if schedule == "const" and peak == 1.0:
        cons.ConsensusSolver.shard_kernel = ORIGINAL
        return
    s = SCHEDULES[schedule]

    def shard_kernel(self, chunks, state, shard, p):
        if passes == "first" and p.iteration != 1:
            return ORIGINAL(self, chunks, state, shard, p)
        # count this call's minibatches: the pass's rows over the rounds (one chunk each) or the epochs' sweeps
        B = int(self.config.batch_size)
        start, count = cons.pass_window(p.iteration, len(chunks), p.first_chunks)
        if p.rounds > 1:
            sweep = [p.round] if p.round < count else []
            epochs = 1
        else:
            sweep = range(count)
            epochs = p.epochs if count == len(chunks) else 1
        sizes = []
        for j in sweep:
            n = chunks.read((start + j) % len(chunks))[1].shape[0]
            if p.first_rows:
                n = min(n, p.first_rows)
            sizes.append(-(-n // B))
        total = max(1, sum(sizes) * epochs)
        offset, span = (p.round / p.rounds, 1.0 / p.rounds) if p.rounds > 1 else (0.0, 1.0)
        step = [0]
        base_lr = self.config.learning_rate if p.learning_rate is None else p.learning_rate
        real_step = cons.Adam.step

        def scheduled(adam, theta, grad, lr):
            f = offset + span * step[0] / total
            step[0] += 1
            return real_step(adam, theta, grad, peak * base_lr * s(f))

        cons.Adam.step = scheduled
        try:
            return ORIGINAL(self, chunks, state, shard, p)
        finally:
            cons.Adam.step = real_step

    cons.ConsensusSolver.shard_kernel = shard_kernel


HIGGS = Path("/tmp/q/higgs-1000000-seed0.zarr")  # compare.py's HIGGS-shaped 1M store (higgs_like.py --seed 0)


def higgs_task(seed: int):
    """HIGGS-shaped (untuned here): the first 100,000 rows of compare's 1M store, 20 % of them a validation split
    drawn with ``seed + 1`` as defaults_real's; the 1M store's test rows are never read."""
    from sklearn.model_selection import train_test_split

    from storage.data import open_data

    store = open_data(HIGGS)
    X, y = store.X[:100_000], store.y[:100_000]
    Xtr, Xva, ytr, yva = train_test_split(X, y, test_size=0.2, random_state=seed + 1, stratify=y)
    return (Xtr.astype("float32"), ytr, Xva.astype("float32"), yva,
            f"HIGGS-shaped: first 100000 rows of {HIGGS}; VALIDATION split 20 % (random_state={seed + 1})")


def run(task, seed, schedule, peak, passes, iterations, settings):
    from benchmarks.defaults_real import load_task
    from solvers.config import TrainConfig
    from solvers.reference import fit_in_memory

    Xtr, ytr, Xva, yva, about = higgs_task(seed) if task == "higgs100k" else load_task(task, "validation", seed)
    patch(schedule, peak, passes)
    cfg = TrainConfig(solver="consensus,gauss-newton", hidden=(300,), iterations=iterations, seed=seed, shards=2,
                      **{"first_lr_scale": 1.0, "handover_delay": 0, **settings})  # the variants scale the step
    # size of 1 (session 16's default; the hand-over's default is 2 since session 17): --set first_lr_scale=2 as before;
    # the hand-over as session 16 ran it (delay 0; the default is 1 since session 17: --iterations 6 reaches it)
    t0 = time.perf_counter()
    r = fit_in_memory(Xtr, ytr, cfg, X_test=Xva, y_test=yva, chunk_rows=8192)
    seconds = time.perf_counter() - t0
    cons.ConsensusSolver.shard_kernel = ORIGINAL
    return {"task": task, "seed": seed, "schedule": schedule, "peak": peak, "passes": passes, "seconds": seconds,
            "val": [h.get("test_accuracy") for h in r.history],
            "inner": [h.get("validation_accuracy") for h in r.history],
            "phase_seconds": [h.get("seconds") for h in r.history],
            "lr": [h.get("learning_rate") for h in r.history], "about": about}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="mnist10")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(6)))
    p.add_argument("--variants", nargs="+", default=["const:1"], metavar="SCHEDULE:PEAK")
    p.add_argument("--passes", choices=("first", "all"), default="first")
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from benchmarks.bench_util import parse_settings

    settings = parse_settings(args.set)
    rows = []
    for seed in args.seeds:
        for variant in args.variants:
            schedule, _, peak = variant.partition(":")
            peak = float(peak or 1.0)
            if True:
                r = run(args.task, seed, schedule, peak, args.passes, args.iterations, dict(settings))
                rows.append(r)
                print(f"{args.task} seed {seed} {schedule:>6} x{peak:g}: val " +
                      " ".join(f"{v:.4f}" for v in r["val"]) + f"  ({r['seconds']:.1f} s)", flush=True)
    if args.out:
        out = Path(args.out)
        old = json.loads(out.read_text())["rows"] if out.exists() else []
        out.write_text(json.dumps({"provenance": provenance(), "rows": old + rows}, indent=1))


if __name__ == "__main__":
    main()
