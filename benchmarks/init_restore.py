"""Start small, then restore: ``--init-scale s`` for the first iteration(s), then the hidden layer rescaled (session 13, gn10).

The question (issue 21 point 7): ``--init-scale 0.5`` reaches MNIST 10-class's 0.96 one iteration sooner (its first
hidden step is 4× less damped relative to the curvature, ``kout_early_s12.md``) but loses at convergence on MNIST
10-class 2k (``init_scale_classes_s12.md``). Does it keep the fast start and lose nothing if, after iteration K, the
hidden layer is put back into the default start's units?

The rescale is exact under ReLU: with one hidden layer, ``W_1 ← c W_1`` (weights and bias) and ``W̃_2 ← W̃_2 / c`` (the
readout's weights, not its bias) compute the same function, since ``relu(c z) = c relu(z)`` for c > 0. It is not
invariant for the objective: the weight decay ``α (‖W̃_1‖² + ‖W̃_2‖²)`` changes, and so do K-FAC's α terms in the
hidden step. Two rules for c (arms):

* ``rS@K`` ("undo"): c = 1 / S. The start ``S W_1⁰`` is then exactly the default's start ``W_1⁰``, so every unit is
  in the default's units and the hidden α penalty means what it means in a default run; only the first K steps differ
  (they were taken 4× less damped).
* ``nS@K`` ("norm"): c = ‖W̃_1⁰‖ / (S ‖W̃_1‖): the hidden weights get back the Frobenius norm of the default's start.

Where: the rescale is applied to the committed state of iteration K, when iteration K + 1 opens (before the pass B
that a growing sample defers, so that pass B's sums are of the rescaled weights; otherwise the carry's pass-B sums
are rescaled exactly — the input Gram and Σ MᵀM do not change, the gradient Σ δ_1ᵀ ã_0 is divided by c — and the trial
recomputed). The carry's objective and the readout's kept pass-A sums (``acc_gram``, ``acc_cross``) are rescaled to
the new weights, so the LM test compares like with like. The carry gets ``init_restored = 1``, so it happens once.

Arms: ``1`` (the stock default), ``iS`` (``--init-scale S``), ``rS@K``, ``nS@K``. Tasks and data are those of
:mod:`benchmarks.hidden_alpha_factor` (validation rows only; the test split is never read); its ``summary`` reads the
runs files written here. One hidden layer, squared loss only.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 nice -n 15 python benchmarks/init_restore.py mnist10-2k --seeds 0 1 \\
        --arms 1 r0.5@1 --iterations 100 --out /tmp/gn10/runs.jsonl
    python benchmarks/init_restore.py baseline benchmarks/results/init_scale_classes_s12.json --out /tmp/gn10/s12.jsonl
    python benchmarks/hidden_alpha_factor.py summary /tmp/gn10/runs.jsonl /tmp/gn10/s12.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import hidden_alpha_factor as haf  # noqa: E402
from solvers import SOLVERS  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.gauss_newton import GaussNewtonSolver  # noqa: E402
from solvers.loop import LoopState  # noqa: E402
from benchmarks.bench_util import HISTORY_KEYS, fit_validation_run, run_arms  # noqa: E402


def rescale_state(solver: GaussNewtonSolver, state: LoopState, c: float) -> LoopState:
    """Return ``state`` with W_1 ← c W_1 and W̃_2 ← W̃_2 / c, its carry rescaled to match (one hidden layer, squared loss).

    The function computed is the same; the objective (weight decay) and the pass-B gradient are rescaled exactly;
    a trial not left to a pending pass B is recomputed from the rescaled sums.
    """
    assert solver.L == 2 and not solver.cross_entropy, "one hidden layer, squared loss"
    W1, W2 = np.asarray(state.weights[0], np.float64), np.array(state.weights[1], np.float64)
    new1 = W1 * c
    new2 = W2.copy()
    new2[:, :-1] /= c
    weights = [new1.astype(np.asarray(state.weights[0]).dtype), new2.astype(np.asarray(state.weights[1]).dtype)]
    carry = dict(state.carry)
    alpha = float(carry["alpha"])
    carry["error"] = np.float64(float(carry["error"]) - solver.objective(0.0, state.weights, alpha)
                                + solver.objective(0.0, weights, alpha))
    if "acc_gram" in carry:  # pass-A sums of ã_1 = [a_1, 1]: a_1 → c a_1
        d = np.ones(W1.shape[0] + 1)
        d[:-1] = c
        carry["acc_gram"] = np.asarray(carry["acc_gram"]) * np.outer(d, d)
        carry["acc_cross"] = np.asarray(carry["acc_cross"]) * d[None, :]
    pending = bool(float(carry.get("pending", 0.0)))
    if not pending:
        layout = solver.curvature_layout()
        curv = layout.unpack(carry["curvature"])
        curv = {k: np.array(v, np.float64) for k, v in curv.items()}
        curv["grad1"] = curv["grad1"] / c  # Σ δ_1ᵀ ã_0, δ_1 = M ⊙ (δ_2 W̃_2); curv1 = Σ MᵀM and the input Gram unchanged
        carry["curvature"] = layout.pack(curv)
    carry["init_restored"] = np.float64(1.0)
    new = LoopState(state.iteration, weights, carry)
    return new if pending else solver._with_trial(new)


class InitRestoreSolver(GaussNewtonSolver):
    """Gauss-Newton from ``init_scale`` S whose hidden layer is rescaled when iteration ``restore_after`` + 1 opens."""

    restore_after = 1  # K
    restore_rule = "undo"  # "undo": c = 1/S; "norm": the default start's ‖W̃_1‖

    def restore_factor(self, state: LoopState) -> float:
        S = float(self.config.init_scale)
        if self.restore_rule == "undo":
            return 1.0 / S
        start = np.asarray(self.initial_hidden()[0], np.float64)[:, :-1] / S  # the default's start (seeded draw)
        return float(np.linalg.norm(start) / np.linalg.norm(np.asarray(state.weights[0], np.float64)[:, :-1]))

    def _advance(self, runner, state):
        if state.iteration == self.restore_after and not float(state.carry.get("init_restored", 0.0)):
            c = self.restore_factor(state)
            state = rescale_state(self, state, c)
            new, metrics = super()._advance(runner, state)
            return new, {**metrics, "restore_factor": c}
        return super()._advance(runner, state)


def parse(arm: str) -> tuple[str, float, int]:
    """``1`` → ("stock", 1, 0); ``iS`` → ("init", S, 0); ``rS@K`` / ``nS@K`` → ("undo" / "norm", S, K)."""
    if arm == "1":
        return "stock", 1.0, 0
    if arm.startswith("i"):
        return "init", float(arm[1:]), 0
    S, _, K = arm[1:].partition("@")
    return {"r": "undo", "n": "norm"}[arm[0]], float(S), int(K or 1)


@contextmanager
def registered(rule: str, K: int):
    if rule in ("stock", "init"):
        yield GaussNewtonSolver
        return
    stock = SOLVERS["gauss-newton"]
    SOLVERS["gauss-newton"] = type(f"InitRestore_{rule}_{K}", (InitRestoreSolver,),
                                   {"restore_after": K, "restore_rule": rule})
    try:
        yield SOLVERS["gauss-newton"]
    finally:
        SOLVERS["gauss-newton"] = stock


def run(task, Xtr, ytr, Xva, yva, arm: str, seed: int, iterations: int, target, extra: dict,
        chunk_rows=None) -> dict:
    rule, S, K = parse(arm)
    cfg = TrainConfig(solver="gauss-newton", seed=seed, iterations=iterations, init_scale=S, **extra)
    with registered(rule, K):
        fit = fit_validation_run(Xtr, ytr, Xva, yva, cfg, target, (*HISTORY_KEYS, "restore_factor"),
                                 chunk_rows=chunk_rows)
    fit.pop("result")
    return {"task": task, "factor": 1.0, "early": 0, "init_scale": S, "arm": arm, "seed": seed,
            "iterations": iterations, "target": target, "extra": extra, "chunk_rows": chunk_rows, **fit}


def baseline(argv) -> None:
    """Write session 12's stored runs (``init_scale_classes_s12.json``, ``kout_early_s12.json``) as runs lines that
    :func:`benchmarks.hidden_alpha_factor.summary` pairs with these (arms ``base`` → ``1``, ``init0.5`` → ``i0.5``).

    Their settings are those of arm ``1`` / ``i0.5`` here, and they reproduce bit for bit (checked: every iteration's
    validation accuracy of seeds 0-5 on MNIST 10-class 2k, iterations 1-4 of seeds 0-1 on MNIST 10-class 60k).
    """
    p = argparse.ArgumentParser(prog="init_restore.py baseline")
    p.add_argument("stored", nargs="+")
    p.add_argument("--tasks", nargs="+", default=None)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    with open(a.out, "w") as fh:
        for path in a.stored:
            for r in json.load(open(path))["runs"]:
                if a.tasks and r["task"] not in a.tasks:
                    continue
                r = {**r, "arm": {"base": "1", "init0.5": "i0.5"}.get(r["arm"], r["arm"]), "factor": 1.0,
                     "early": 0, "stored": path}
                fh.write(json.dumps(r) + "\n")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["baseline"]:
        return baseline(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("task", choices=sorted([*haf.TARGETS, *haf.SMALL, *haf.HIGGS_SMALL, *haf.SYNTH]))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--arms", nargs="+", default=["1", "r0.5@1"])
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--target", type=float, default=None)
    p.add_argument("--hidden-alpha", default=None, help="pin hidden_alpha in every arm (default: each arm's default)")
    p.add_argument("--higgs", default=None)
    p.add_argument("--chunk-rows", type=int, default=None, help="as the pipeline chunks (8192: compare.py's stores)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    target = a.target if a.target is not None else haf.TARGETS.get(a.task)
    extra = {"hidden_alpha": a.hidden_alpha} if a.hidden_alpha else {}
    run_arms(a.seeds, a.arms, haf.seed_loader(a.task, a.higgs),
             lambda Xtr, ytr, Xva, yva, arm, seed: run(a.task, Xtr, ytr, Xva, yva, arm, seed, a.iterations, target,
                                                       extra, a.chunk_rows),
             a.out, lambda out: (f"{a.task} seed {out['seed']} arm {out['arm']}: {haf.result_line(out)} acc it1-3 "
                                 f"{[h['eval_accuracy'] for h in out['history'][:3]]} wall {out['wall']:.1f} s "
                                 f"load {out['load']:.1f}"))


if __name__ == "__main__":
    main()
