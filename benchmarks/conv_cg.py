"""The a-update below a convolution: conjugate-gradient steps against the exact solve, error and time.

ADMM's a-update of a hidden layer whose next layer is a convolution T (eq. 6),

    a = argmin γ‖a − h(z_l)‖² + β‖z_{l+1} − T a − b‖²  ⇔  ((β/γ) TᵀT + I) a = (β/γ) Tᵀ(z_{l+1} − b) + h,

is solved per sample by ``cg_steps`` CG steps started at ``a = h``
(:class:`solvers.conv.CGActivationUpdate`), or with ``cg_steps = 0`` exactly
through T's dense Toeplitz matrix, inverted once on the client.

Part 1 (operator): ADMM runs ``--warm-iterations`` in memory on MNIST
odd-vs-even (``--n-train`` rows, ``--layers``); then, for the trained
weights and state, the a-update of layer 1 (below the convolution of layer
2) is computed with k = 1, 2, 4, … steps and exactly; reported are the
relative error ‖a_k − a*‖/‖a*‖ (a* the exact float64 solution), the relative
residual, and the seconds per 1000 rows (one thread).

Part 2 (training): the same network trained for ``--iterations`` with each
``cg_steps`` in ``--train-steps`` (0 = exact); reported are the test
accuracy per iteration and the seconds per iteration.

Writes ``--out`` (JSON) and the same name with ``.md``. Run (nothing else
heavy at the same time)::

    python benchmarks/conv_cg.py --out benchmarks/results/conv_cg.json
    python benchmarks/conv_cg.py --quick --out /tmp/conv_cg.json   # a minute
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_util import CpuWatch, provenance, write_results  # noqa: E402
from solvers import make_solver  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.conv import CGActivationUpdate  # noqa: E402
from solvers.linalg import ActivationUpdate  # noqa: E402
from solvers.loop import initialize, iterate  # noqa: E402
from solvers.reference import InMemoryRunner, fit_in_memory  # noqa: E402
from solvers.tiling import chunk_bounds  # noqa: E402
from solvers.stats import moment_sums, scaling_from_sums  # noqa: E402

MNIST = ROOT.parent / "shared" / "data" / "mnist70k_uint8.npz"


def mnist_oddeven(n_train: int):
    """Return (X_train, y_train, X_test, y_test): the first ``n_train`` images, the last 10 000; odd vs even."""
    with np.load(MNIST) as f:
        X, y = f["X"], f["y"]
    return X[:n_train], y[:n_train] % 2, X[-10_000:], y[-10_000:] % 2


def trained_solver(X, y, config: TrainConfig, iterations: int, chunk_rows: int):
    """Return (solver, loop state, state arrays) after ``iterations`` of ADMM in memory."""
    shift = X[0].astype(np.float64)
    model = {"classes": np.unique(y), **scaling_from_sums(moment_sums(X, shift), shift, X.shape[1], config.scaling)}
    solver = make_solver(config, X.shape[1], **model)
    runner = InMemoryRunner(solver, X, np.searchsorted(model["classes"], y), bounds=chunk_bounds(len(X), chunk_rows))
    state = initialize(solver, runner)
    for state, _ in iterate(solver, runner, state, iterations):
        pass
    return solver, state, runner.state_of(state.iteration)


def operator_table(solver, state, arrays, rows: int, steps_list, repeats: int, ratio: float) -> list[dict]:
    """Return error, residual and seconds per 1000 rows of the layer-1 a-update for each number of CG steps."""
    layer, W = solver.layers[1], np.asarray(state.weights[1])
    gamma, beta = 1.0, ratio
    h = solver.act.h(arrays["z1"][:rows])
    z_next = arrays["z2"][:rows]
    h64, z64 = h.astype(np.float64), z_next.astype(np.float64)
    t0 = time.perf_counter()
    exact = ActivationUpdate.from_weights(layer.dense_weights(W), gamma, beta)
    build = time.perf_counter() - t0  # once per iteration on the client
    a_star = exact.apply(h64, z64)
    T, b = layer.dense_weights(W)[:, :-1], layer.bias_row(W)
    rhs = (beta / gamma) * (z64 - b) @ T + h64
    ops = {f"cg {k}": CGActivationUpdate.from_weights(layer, W, gamma, beta, k).astype(np.float32)
           for k in steps_list}
    ops["exact"] = exact.astype(np.float32)
    out = []
    for name, op in ops.items():
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a = op.apply(h, z_next)
            best = min(best, time.perf_counter() - t0)
        a = a.astype(np.float64)
        residual = (beta / gamma) * ((a @ T.T) @ T) + a - rhs
        out.append({"method": name, "ratio": ratio, "rel_error": float(np.linalg.norm(a - a_star) / np.linalg.norm(a_star)),
                    "rel_residual": float(np.linalg.norm(residual) / np.linalg.norm(rhs)),
                    "seconds_per_1000_rows": 1000 * best / rows,
                    **({"client_build_seconds": build} if name == "exact" else {})})
        print(f"  β/γ {ratio:g} {name:>8}: error {out[-1]['rel_error']:.2e}, residual {out[-1]['rel_residual']:.2e}, "
              f"{out[-1]['seconds_per_1000_rows']:.4f} s / 1000 rows", flush=True)
    return out


def training_table(data, base: TrainConfig, steps_list, chunk_rows: int) -> list[dict]:
    """Return test accuracy per iteration and seconds per iteration for each ``cg_steps``."""
    X, y, X_test, y_test = data
    out = []
    for k in steps_list:
        config = TrainConfig(**{**base.to_dict(), "cg_steps": k})
        with CpuWatch() as watch:
            r = fit_in_memory(X, y, config, chunk_rows=chunk_rows, X_test=X_test, y_test=y_test)
        acc = [h["test_accuracy"] for h in r.history]
        seconds = [h["seconds"] for h in r.history]
        out.append({"cg_steps": k, "test_accuracy": acc, "seconds": seconds,
                    "median_seconds": float(np.median(seconds)), "other_cpu_seconds": watch.other})
        print(f"  cg_steps {k:>2}: best test acc {max(acc):.4f}, last {acc[-1]:.4f}, "
              f"median {np.median(seconds):.2f} s/iteration", flush=True)
    return out


def markdown(res: dict) -> str:
    s = res["settings"]
    lines = ["# a-update below a convolution: CG steps vs exact", "",
             f"- Command: `{res['provenance']['command']}`",
             f"- Date: {res['provenance']['date']} on {res['provenance']['host']} ({res['provenance']['cpus']} CPUs)",
             f"- MNIST odd vs even, {s['n_train']:,} training images, 10,000 test; layers `{s['layers']}`, "
             f"ADMM γ {s['gamma']}, β {s['beta']}, `--scaling global`, {s['threads']} BLAS thread(s).", "",
             f"## Operator (layer-1 a-update after {s['warm_iterations']} iterations, {s['operator_rows']} rows)", "",
             "| β/γ | method | ‖a − a*‖/‖a*‖ | relative residual | s per 1000 rows |", "|---|---|---|---|---|"]
    for r in res["operator"]:
        lines.append(f"| {r['ratio']:g} | {r['method']} | {r['rel_error']:.2e} | {r['rel_residual']:.2e} | "
                     f"{r['seconds_per_1000_rows']:.4f} |")
    exact = next(r for r in res["operator"] if r["method"] == "exact")
    lines += ["", "The weights and state are those of the training run (its own β/γ); the ratio changes only "
              "the a-update solved here. CG starts at a = h(z) and stops a row once its residual fell 10⁴-fold."]
    lines += ["", f"`exact` forms the Toeplitz matrix and inverts the {s['n_hidden1']}-square normal matrix (or its "
              f"Woodbury form) on the client, once per iteration ({exact['client_build_seconds']:.2f} s, not in "
              "the per-row time), then is two dense products per row.", "",
              f"## Training ({s['iterations']} iterations, in memory)", "",
              "| cg_steps | best test acc | last test acc | median s / iteration | other CPU s |", "|---|---|---|---|---|"]
    for r in res["training"]:
        name = "0 (exact)" if r["cg_steps"] == 0 else str(r["cg_steps"])
        lines.append(f"| {name} | {max(r['test_accuracy']):.4f} | {r['test_accuracy'][-1]:.4f} | "
                     f"{r['median_seconds']:.2f} | {r['other_cpu_seconds']:.0f} |")
    lines += ["", "Test accuracy per iteration:", ""]
    lines += [f"- cg_steps {r['cg_steps']}: " + ", ".join(f"{a:.4f}" for a in r["test_accuracy"])
              for r in res["training"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", default="conv:8x5x5:s2:same,conv:16x5x5:s2:same,dense:100")
    p.add_argument("--n-train", type=int, default=10_000)
    p.add_argument("--warm-iterations", type=int, default=5)
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--operator-rows", type=int, default=2000)
    p.add_argument("--steps", default="1,2,4,8,16,32", help="CG steps of part 1")
    p.add_argument("--ratios", default="0.01,1", help="β/γ of part 1 (the defaults' is 0.01)")
    p.add_argument("--train-steps", default="1,2,4,8,0", help="cg_steps of part 2 (0: exact)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk-rows", type=int, default=2500)
    p.add_argument("--quick", action="store_true", help="2000 images, 3 iterations: a smoke run")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "conv_cg.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.n_train, args.warm_iterations, args.iterations, args.operator_rows = 2000, 2, 3, 500
    data = mnist_oddeven(args.n_train)
    base = TrainConfig(solver="admm", layers=args.layers, scaling="global", iterations=args.iterations, cg_steps=8)
    steps = [int(k) for k in args.steps.split(",")]
    with threadpool_limits(args.threads):
        print(f"part 1: operator after {args.warm_iterations} iterations", flush=True)
        solver, state, arrays = trained_solver(data[0], data[1], base, args.warm_iterations, args.chunk_rows)
        operator = [row for ratio in args.ratios.split(",") for row in
                    operator_table(solver, state, arrays, args.operator_rows, steps, 3, float(ratio))]
        print("part 2: training", flush=True)
        training = training_table(data, base, [int(k) for k in args.train_steps.split(",")], args.chunk_rows)
    res = {"provenance": provenance(),
           "settings": {"layers": base.layers, "n_train": args.n_train, "warm_iterations": args.warm_iterations,
                        "iterations": args.iterations, "operator_rows": args.operator_rows, "gamma": base.gamma,
                        "beta": base.beta, "threads": args.threads, "chunk_rows": args.chunk_rows,
                        "widths": list(solver.widths), "n_hidden1": solver.widths[1]},
           "operator": operator, "training": training}
    write_results(args.out, res, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
