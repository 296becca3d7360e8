"""Issue 21 (fls16): ``--first-lr-scale`` in auto's hand-over consensus phase, judged on the KEPT model at convergence.

In memory (:func:`solvers.reference.fit_in_memory`) with ``--solver consensus,gauss-newton``, ``--shards 2`` and
chunks of 8,192 rows, as benchmarks/seeds16_first_pass.py runs auto's hand-over; but with the default iterations
and patience (``TrainConfig`` defaults, as ``python -m pipeline.train`` uses them) and the kept model (the
iteration with the best held-out score) scored on the validation split
(``benchmarks/defaults_real.load_task(task, "validation", seed)``, or seeds16's HIGGS-shaped 100k). The test split
is never read. Each run appends one row (per-iteration history included) to ``--out`` as soon as it ends.

Run::

    python benchmarks/fls16_convergence.py --task mnist10 --seeds 3 --scales 1 2 --out /tmp/fls16/mnist10.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import provenance  # noqa: E402


def _plain(v):
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    try:
        return float(v)
    except (TypeError, ValueError):
        return repr(v)


def run(task, seed, scale, settings):
    from benchmarks.defaults_real import load_task
    from benchmarks.seeds16_first_pass import higgs_task
    from solvers.config import TrainConfig
    from solvers.reference import fit_in_memory

    Xtr, ytr, Xva, yva, about = higgs_task(seed) if task == "higgs100k" else load_task(task, "validation", seed)
    cfg = TrainConfig(solver="consensus,gauss-newton", hidden=(300,), seed=seed, shards=2,
                      first_lr_scale=scale, **{"handover_delay": 0, **settings})  # the arms fls16/fls17 recorded:
    # delay 0 unless --set handover_delay=D (the hand-over's default is 1 since session 17's delay17)
    t0 = time.perf_counter()
    def progress(h):
        print(f"  {task} seed {seed} x{scale:g} it {h.get('iteration')} {h.get('phase')}: val {h.get('test_accuracy')}"
              f" held-out {h.get('validation_accuracy')} alpha {h.get('alpha')}", flush=True)

    r = fit_in_memory(Xtr, ytr, cfg, X_test=Xva, y_test=yva, chunk_rows=8192, callback=progress)
    seconds = time.perf_counter() - t0
    return {"task": task, "seed": seed, "scale": scale, "seconds": seconds,
            "kept_iteration": r.best_iteration, "kept_val": float(r.network.score(Xva, yva)),
            "iterations_run": len(r.history), "iterations": cfg.iterations, "patience": cfg.patience,
            "val": [h.get("test_accuracy") for h in r.history],
            "held_out": [h.get("validation_accuracy") for h in r.history],
            "history": _plain(list(r.history)), "about": about}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="mnist10", choices=("mnist10", "mnist-oddeven", "higgs100k"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from benchmarks.bench_util import parse_settings

    settings = parse_settings(args.set)
    out = Path(args.out)
    for seed in args.seeds:
        for scale in args.scales:
            r = run(args.task, seed, scale, dict(settings))
            r["command"] = "python " + " ".join(sys.argv)
            r["settings"] = dict(settings)  # the --set settings (e.g. handover_delay) of the run
            print(f"{args.task} seed {seed} x{scale:g}: kept it {r['kept_iteration']} val {r['kept_val']:.4f} "
                  f"of {r['iterations_run']} its; per-it val " + " ".join(f"{v:.4f}" for v in r["val"])
                  + f" ({r['seconds']:.0f} s)", flush=True)
            old = json.loads(out.read_text())["rows"] if out.exists() else []
            out.write_text(json.dumps({"provenance": provenance(), "rows": old + [r]}, indent=1))


if __name__ == "__main__":
    main()
