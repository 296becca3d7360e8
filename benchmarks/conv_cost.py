"""CPU seconds per 1000 MNIST rows: Gauss-Newton's passes A and B with convolutions against one PyTorch Adam epoch.

The same network (``--layers``, default the LeNet-like one of the README),
3000 rows, 2 BLAS/torch threads, the best of two repeats of each, measured
as this process's CPU time (``time.process_time``), which other processes
on a loaded machine disturb far less than wall time. Writes ``--out``
(JSON) and ``.md``.

Run::

    python benchmarks/conv_cost.py
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import CpuWatch, provenance, write_results  # noqa: E402
from benchmarks.peers import torch_cnn  # noqa: E402
from solvers import make_solver  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.gauss_newton import CurvatureParams, ForwardParams  # noqa: E402

LAYERS = "conv:8x5x5,pool:2,conv:16x5x5,pool:2,dense:100"


def main(argv=None) -> int:
    import torch
    from threadpoolctl import threadpool_limits

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default=LAYERS)
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tile-mib", type=float, nargs="*", default=None,
                   help="compare these im2col tile budgets (MiB; solvers.tiling.TILE_BYTES), Gauss-Newton only")
    p.add_argument("--curvature-tile-mib", type=float, nargs="*", default=None,
                   help="with --tile-mib: pass B tile budgets (MiB; conv_gauss_newton.CURVATURE_TILE_BYTES), one per tile budget")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "conv_cost.json"))
    args = p.parse_args(argv)
    if args.tile_mib:
        return tiles(args)
    d = np.load(ROOT.parent / "shared" / "data" / "mnist70k_uint8.npz")
    n = args.rows
    X, y = d["X"][:n].astype(np.float32), d["y"][:n].astype(np.int64)
    mean, scale = float(X.mean()), float(X.std())
    cfg = TrainConfig(layers=args.layers, solver="gauss-newton", scaling="global")
    solver = make_solver(cfg, 784, x_mean=np.full(784, mean), x_scale=np.full(784, scale), classes=np.arange(10))
    W = solver.cast(solver.he_weights(solver.L))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, _ = torch_cnn(torch, args.layers, 784, (), 10)
    xt = torch.from_numpy((X - mean) / scale).reshape(-1, 28, 28, 1).permute(0, 3, 1, 2).contiguous()
    yt = torch.from_numpy(y)
    model(xt[:1])
    opt = torch.optim.Adam(model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch():
        for b in range(0, n, 200):
            opt.zero_grad()
            loss_fn(model(xt[b:b + 200]), yt[b:b + 200]).backward()
            opt.step()

    def per_1000_rows(f, reps=2):
        best = float("inf")
        for _ in range(reps):
            t = time.process_time()
            f()
            best = min(best, time.process_time() - t)
        return best * 1000 / n

    with CpuWatch() as cpu, threadpool_limits(args.threads):
        a = per_1000_rows(lambda: solver.forward_chunk(X, y, None, 0, ForwardParams(W[:-1], False)))
        b = per_1000_rows(lambda: solver.curvature_chunk(X, y, None, 0, CurvatureParams(W, False)))
        e = per_1000_rows(epoch)
    result = {"provenance": provenance(), "layers": args.layers, "rows": n, "threads": args.threads,
              "cpu_seconds_per_1000_rows": {"gn_pass_a": a, "gn_pass_b": b, "gn_iteration": a + b, "torch_epoch": e},
              "other_cpu_seconds": cpu.other, "torch": torch.__version__}
    write_results(args.out, result, markdown)
    print(markdown(result))
    return 0


def tiles(args) -> int:
    """Measure passes A and B per 1000 rows for each (im2col tile, pass B tile) budget; write ``--out``."""
    from threadpoolctl import threadpool_limits

    from solvers import conv, conv_gauss_newton

    d = np.load(ROOT.parent / "shared" / "data" / "mnist70k_uint8.npz")
    n = args.rows
    X, y = d["X"][:n].astype(np.float32) / 256, d["y"][:n].astype(np.int64)
    mean, scale = float(X.mean()), float(X.std())
    curv = args.curvature_tile_mib or args.tile_mib
    rows = []
    with CpuWatch() as cpu, threadpool_limits(args.threads):
        for tile, ctile in zip(args.tile_mib, curv):
            conv.TILE_BYTES = int(tile * 2 ** 20)
            conv_gauss_newton.CURVATURE_TILE_BYTES = int(ctile * 2 ** 20)
            cfg = TrainConfig(layers=args.layers, solver="gauss-newton", scaling="global")
            solver = make_solver(cfg, 784, x_mean=np.full(784, mean), x_scale=np.full(784, scale), classes=np.arange(10))
            W = solver.cast(solver.he_weights(solver.L))
            cost = {}
            for name, f in (("a", lambda s=solver, W=W: s.forward_chunk(X, y, None, 0, ForwardParams(W[:-1], False))),
                            ("b", lambda s=solver, W=W: s.curvature_chunk(X, y, None, 0, CurvatureParams(W, False)))):
                f()
                best = float("inf")
                for _ in range(3):
                    t = time.process_time()
                    f()
                    best = min(best, time.process_time() - t)
                cost[name] = best * 1000 / n
            rows.append({"tile_mib": tile, "curvature_tile_mib": ctile, "tile_rows": solver.tile_rows,
                         "curvature_rows": solver.curvature_rows, "pass_a": cost["a"], "pass_b": cost["b"]})
            print(rows[-1], flush=True)
    result = {"provenance": provenance(), "layers": args.layers, "rows": n, "threads": args.threads, "tiles": rows,
              "other_cpu_seconds": cpu.other, "load": os.getloadavg()}
    write_results(args.out, result, tiles_markdown)
    print(tiles_markdown(result))
    return 0


def tiles_markdown(r: dict) -> str:
    lines = [f"# Conv Gauss-Newton CPU per 1000 MNIST rows against the tile budgets, `--layers {r['layers']}`", "",
             f"Command: `{r['provenance']['command']}` ({r['provenance']['date']}); {r['rows']} rows, {r['threads']} "
             f"thread(s), this process's CPU time, best of 3; other processes used {r['other_cpu_seconds']:.0f} CPU s "
             f"meanwhile (load at the end {r['load'][0]:.1f}).", "",
             "| im2col tile MiB | pass B tile MiB | tile rows | pass B rows | pass A | pass B | A + B |", "|---|---|---|---|---|---|---|"]
    for t in r["tiles"]:
        lines.append(f"| {t['tile_mib']:g} | {t['curvature_tile_mib']:g} | {t['tile_rows']} | {t['curvature_rows']} | "
                     f"{t['pass_a']:.4f} | {t['pass_b']:.4f} | {t['pass_a'] + t['pass_b']:.4f} |")
    return "\n".join(lines + [""])


def markdown(r: dict) -> str:
    c = r["cpu_seconds_per_1000_rows"]
    return "\n".join([
        f"# CPU cost per 1000 rows, `--layers {r['layers']}` (MNIST)", "",
        f"Command: `{r['provenance']['command']}` ({r['provenance']['date']}); {r['rows']} rows, "
        f"{r['threads']} threads, this process's CPU time (best of 2); other processes used "
        f"{r['other_cpu_seconds']:.0f} CPU s meanwhile.", "",
        "| work | CPU s per 1000 rows |", "|---|---|",
        f"| Gauss-Newton pass A (forward, output Grams) | {c['gn_pass_a']:.3f} |",
        f"| Gauss-Newton pass B (gradient, KFC factors) | {c['gn_pass_b']:.3f} |",
        f"| Gauss-Newton accepted iteration (A + B) | {c['gn_iteration']:.3f} |",
        f"| PyTorch Adam epoch (batches of 200) | {c['torch_epoch']:.3f} |", "",
        f"One accepted Gauss-Newton iteration costs {c['gn_iteration'] / c['torch_epoch']:.1f} PyTorch epochs.", ""])


if __name__ == "__main__":
    sys.exit(main())
