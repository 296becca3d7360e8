"""Paired-seed validation of ``hs1.5@1``: ``--step-choice held-out`` with the step lengths t ∈ {1, 1.5} instead of
{1, 2} (session 16, helper step16, issue 21 point 7; hsval_s15.md found t = 2 overshooting on breast cancer, covtype
and the untuned HIGGS-shaped 3k).

It runs ``benchmarks/hsval_probe.py``'s ``hs2@1`` arm (``--impl setting``) with ``TrainConfig(step_choice=
"held-out-1.5")`` (helper t15's setting; step16 patched ``solvers.step_choice.STEP_LENGTHS`` to (1, 1.5) for the
process, the same run: t15_s16.md checks the records agree) under the default ``--hidden-alpha auto``, the records'
arm named ``hs2@1-t1.5`` (so ``hsval_probe.py summary`` pairs them with the stock arm).
Validation rows only, as hsval_probe.py. Stock runs: ``--arms stock`` (the same code as hsval_probe's stock arm).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 nice -n 15 python benchmarks/step16_t15.py covtype --seeds 0 1 --out /tmp/x.jsonl
    python benchmarks/step16_t15.py summary STOCK.jsonl ARM.jsonl [--json out.json]

``summary`` pairs by (task, iterations, seed) and compares the history entries on the keys both records hold (the
stock records taken from ``hsval_s15.json`` hold fewer keys than today's), so "bitwise" there means every shared key
of every iteration and the kept accuracy are equal.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import hsval_probe  # noqa: E402

ARM = "hs2@1-t1.5"


def summary(argv) -> dict:
    import argparse
    import json

    import numpy as np

    p = argparse.ArgumentParser(prog="step16_t15.py summary")
    p.add_argument("stock")
    p.add_argument("arm")
    p.add_argument("--json", default=None)
    p.add_argument("--arm", dest="arm_name", default=ARM)
    a = p.parse_args(argv)
    load = lambda path: [json.loads(x) for x in open(path) if x.strip()]  # noqa: E731
    base = {(r["task"], r["iterations"], r["seed"]): r for r in load(a.stock) if r["arm"] == "stock"}
    arm = {(r["task"], r["iterations"], r["seed"]): r for r in load(a.arm) if r["arm"] == a.arm_name}
    skip = {"seconds", "race_validation_loss", "step_length", "step_held_losses", "step_validation_loss_1",
            "step_validation_loss_1.5", "passes", "rows_per_second", "read_mb_per_second"}

    def same(x, y):
        if x["kept"] != y["kept"] or len(x["history"]) != len(y["history"]):
            return False
        return all(all(h[k] == g[k] for k in set(h) & set(g) - skip) for h, g in zip(x["history"], y["history"]))
    out = {}
    for task, its in sorted({k[:2] for k in arm}):
        seeds = sorted(s for (t, i, s) in arm if (t, i) == (task, its) and (t, i, s) in base)
        if not seeds:
            continue
        pairs = [(base[(task, its, s)], arm[(task, its, s)]) for s in seeds]
        d = np.array([y["kept"] - x["kept"] for x, y in pairs])
        ts = [y["history"][0].get("step_length") for _, y in pairs]
        row = 1.0 / pairs[0][1]["n_val"]
        tgt = pairs[0][1]["target"]
        first = lambda r, tgt=tgt: next((h["iteration"] for h in r["history"] if tgt and h["eval_accuracy"] >= tgt), None)  # noqa: E731
        per_it = {}
        for it in (1, 2, 3):
            dd = [y["history"][it - 1]["eval_accuracy"] - x["history"][it - 1]["eval_accuracy"] for x, y in pairs
                  if len(x["history"]) >= it and len(y["history"]) >= it]
            per_it[it] = {"mean": float(np.mean(dd)), "wins": int(sum(v > 0 for v in dd)),
                          "losses": int(sum(v < 0 for v in dd)), "n": len(dd)}
        o = out[f"{task} | {its} it"] = {
            "seeds": seeds, "n_val": pairs[0][1]["n_val"], "t_at_1": ts, "t15_count": sum(t == 1.5 for t in ts),
            "bitwise": [same(x, y) for x, y in pairs], "stock_kept_mean": float(np.mean([x["kept"] for x, _ in pairs])),
            "delta": d.tolist(), "delta_mean": float(d.mean()),
            "delta_se": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan"),
            "wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "ties": int((d == 0).sum()),
            "worse_than_one_row": [s for s, v in zip(seeds, d) if v < -row - 1e-12], "per_iteration": per_it,
            "probe_flips": [s for s, (x, y) in zip(seeds, pairs)
                            if x["history"][0].get("hidden_pinned") != y["history"][0].get("hidden_pinned")],
            "target": tgt, "target_iteration": [(first(x), first(y)) for x, y in pairs] if tgt else None}
        print(f"\n{task} ({its} it): {len(seeds)} seeds; t = 1.5 at it 1 on {o['t15_count']}; bitwise stock "
              f"{sum(o['bitwise'])}; probe flips {o['probe_flips']}")
        print(f"  kept: stock {o['stock_kept_mean']:.4f}; arm - stock {o['delta_mean']:+.4f} ± {o['delta_se']:.4f} "
              f"({o['wins']} W / {o['losses']} L / {o['ties']} T); one row {row:.4f}; worse than a row: "
              f"{o['worse_than_one_row']}")
        print("  per seed: " + ", ".join(f"{s}:{v:+.4f}" for s, v in zip(seeds, d) if v))
        for it, v in per_it.items():
            print(f"  it {it}: {v['mean']:+.4f} ({v['wins']} W / {v['losses']} L of {v['n']})")
        if tgt:
            print(f"  {tgt} at iteration stock -> arm: {o['target_iteration']}")
    if a.json:
        Path(a.json).write_text(json.dumps({"summary": out}, indent=1))
    return out


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["summary"]:
        summary(argv[1:])
        return
    stock_only = "--arms" in argv and argv[argv.index("--arms") + 1] == "stock"
    if not stock_only:
        hsval_probe.STEP_CHOICE = "held-out-1.5"
        fit = hsval_probe.fit_arm

        def renamed(task, Xtr, ytr, Xva, yva, arm, seed, a):
            rec = fit(task, Xtr, ytr, Xva, yva, arm, seed, a)
            if arm == "hs2@1":
                rec["arm"] = ARM
            return rec
        hsval_probe.fit_arm = renamed
        if "--arms" not in argv:
            argv += ["--arms", "hs2@1"]
        if "--impl" not in argv:
            argv += ["--impl", "setting"]
    hsval_probe.main(argv)


if __name__ == "__main__":
    main()
