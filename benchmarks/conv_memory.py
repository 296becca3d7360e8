"""Worker peak memory of Gauss-Newton with convolutions at n and 2n training rows (out of core: flat in n).

For each n of ``--n`` (MNIST's first n images, stored in chunks of
``--chunk-rows``): a fresh LocalCluster of 2 single-threaded worker
processes, :func:`pipeline.training.train` with ``--layers`` (init + one
iteration, every chunk read: ``sample_schedule full``, nothing held out),
then the kernel's peak RSS of each worker (VmHWM, reset after the cluster
started) and a 0.1 s sample of it. Writes ``--out`` (JSON) and ``.md``.

Run::

    python benchmarks/conv_memory.py --n 15000 30000
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import CpuWatch, MemorySampler, gb, provenance, reset_hwm, vm_hwm, worker_pids, \
    write_results  # noqa: E402
from pipeline.cluster import connect  # noqa: E402
from pipeline.training import train  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from storage.data import write_data  # noqa: E402

LAYERS = "conv:8x5x5,pool:2,conv:16x5x5,pool:2,dense:100"


def measure(n: int, X, y, layers: str, chunk_rows: int, iterations: int, work: Path) -> dict:
    data = work / f"mnist-{n}.zarr"
    write_data(data, X[:n], y[:n], chunk_rows=chunk_rows)
    config = TrainConfig(layers=layers, solver="gauss-newton", scaling="global", iterations=iterations,
                         sample_schedule="full", validation_fraction=0)
    with connect("local", n_workers=2, threads_per_worker=1, memory_limit="4GB", dashboard_address=":0") as client:
        pids = worker_pids(client)
        reset_hwm(pids)
        with MemorySampler(pids) as mem, CpuWatch() as cpu:
            t0 = time.perf_counter()
            train(client, store=str(work / f"run-{n}.zarr"), data=str(data), config=config, chunk_rows=chunk_rows,
                  report=lambda line: print(f"  n={n}: {line}", flush=True))
            seconds = time.perf_counter() - t0
        hwm = vm_hwm(pids)
    return {"n": n, "chunk_rows": chunk_rows, "seconds": seconds, "other_cpu_seconds": cpu.other,
            "worker_peak_rss_bytes_vmhwm": list(hwm.values()), "worker_peak_rss_bytes_sampled": list(mem.peak.values())}


def markdown(r: dict) -> str:
    rows = r["runs"]
    out = [f"# Worker peak memory, Gauss-Newton with `--layers {r['layers']}` (MNIST)", "",
           f"Command: `{r['provenance']['command']}` ({r['provenance']['date']}); 2 worker processes x 1 thread, "
           f"{r['iterations']} iteration(s) after init, chunks of {rows[0]['chunk_rows']} rows, every chunk read.", "",
           "| n | worker peak RSS (VmHWM, GB) | sampled peak (GB) | seconds | other processes' CPU s |",
           "|---|---|---|---|---|"]
    for x in rows:
        out.append(f"| {x['n']} | {', '.join(str(gb(v)) for v in x['worker_peak_rss_bytes_vmhwm'])} | "
                   f"{', '.join(str(gb(v)) for v in x['worker_peak_rss_bytes_sampled'])} | {x['seconds']:.0f} | "
                   f"{x['other_cpu_seconds']:.0f} |")
    peaks = [max(x["worker_peak_rss_bytes_vmhwm"]) for x in rows]
    out += ["", f"Largest worker peak at {rows[-1]['n']} rows over that at {rows[0]['n']}: "
            f"{peaks[-1] / peaks[0]:.3f}x (flat means within 1.3x)."]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[15000, 30000])
    p.add_argument("--layers", default=LAYERS)
    p.add_argument("--chunk-rows", type=int, default=3000)
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "conv_memory.json"))
    args = p.parse_args(argv)
    d = np.load(ROOT.parent / "shared" / "data" / "mnist70k_uint8.npz")
    X, y = d["X"][:60000].astype(np.float32), d["y"][:60000]
    with tempfile.TemporaryDirectory(prefix="conv-memory-") as tmp:
        runs = [measure(n, X, y, args.layers, args.chunk_rows, args.iterations, Path(tmp)) for n in args.n]
    result = {"provenance": provenance(), "layers": args.layers, "iterations": args.iterations, "runs": runs}
    write_results(args.out, result, markdown)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
