"""Worker peak memory of Gauss-Newton with convolutions at n and 2n training rows (out of core: flat in n).

For each n of ``--n`` (MNIST's first n images, stored in chunks of
``--chunk-rows``): a fresh LocalCluster of 2 single-threaded worker
processes, :func:`pipeline.training.train` with ``--layers`` (init + one
iteration, every chunk read: ``sample_schedule full``, nothing held out),
then the kernel's peak RSS of each worker (VmHWM, reset after the cluster
started) and a 0.1 s sample of it. Writes ``--out`` (JSON) and ``.md``.

The workers keep decoded data chunks (:func:`pipeline.passes.data_cache`:
an array is kept whole when it fits the budget, min(512 MiB, a quarter of the
worker's memory limit), else streamed from disk every pass), so on data that
fits, a worker's memory grows with n by up to the data's bytes; that is the
cache, not the kernels. ``--data-cache-mib`` sets the workers' budget for
every n (0: none); a fair "flat in n" test gives them less than the data at
the smallest n (the default, 32 MiB), as on data bigger than the cache. It may
list several budgets: every n is run under each. Likewise the activation cache
(:mod:`solvers.activation_cache`, min(192 MiB, limit/8)): pass A keeps the
forward pass of the training rows when pass B reads them next (here, every
chunk every pass: ~12 KB a row), so on small data it fills with n up to its
bound; ``--activation-cache-mib`` (default 16) holds it below one worker's
share of the smallest n's rows, full at every n.

Run::

    python benchmarks/conv_memory.py --n 15000 30000 60000
    python benchmarks/conv_memory.py --n 15000 30000 60000 --data-cache-mib default --activation-cache-mib default
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


def _set_caches(data_budget: int | None, activation_budget: int | None) -> None:
    """Give this worker an empty data-chunk cache and an activation cache of these budgets (bytes; None: its own)."""
    import pipeline.passes as passes
    from solvers.activation_cache import CACHE, OUTPUTS
    from storage.cache import ChunkCache

    passes._data_cache = None
    passes.data_cache()  # the worker's own budgets
    if data_budget is not None:
        passes._data_cache = ChunkCache(data_budget)
    if activation_budget is not None:
        CACHE.budget = activation_budget
        OUTPUTS.budget = min(OUTPUTS.budget, activation_budget)


def _data_cache_bytes() -> int:
    """Return the bytes this worker's data-chunk cache holds (0 if it made none)."""
    import pipeline.passes as passes

    return 0 if passes._data_cache is None else int(passes._data_cache._bytes)


def measure(n: int, X, y, layers: str, chunk_rows: int, iterations: int, work: Path, cache_mib=None,
            activation_mib=None, timeline: bool = False) -> dict:
    data = work / f"mnist-{n}.zarr"
    if not data.exists():
        write_data(data, X[:n], y[:n], chunk_rows=chunk_rows)
    config = TrainConfig(layers=layers, solver="gauss-newton", scaling="global", iterations=iterations,
                         sample_schedule="full", validation_fraction=0)
    with connect("local", n_workers=2, threads_per_worker=1, memory_limit="4GB", dashboard_address=":0") as client:
        pids = worker_pids(client)
        client.run(_set_caches, None if cache_mib is None else int(cache_mib * 2**20),
                   None if activation_mib is None else int(activation_mib * 2**20))
        held = []  # the workers' data-cache bytes, read just before the run's end clears them
        reset_hwm(pids)
        marks = []  # (seconds, report line): when each step ended, for the memory timeline
        with MemorySampler(pids) as mem, CpuWatch() as cpu:
            t0 = time.perf_counter()

            def report(line):
                held.append(list(client.run(_data_cache_bytes).values()))
                marks.append((time.perf_counter() - t0, line))
                print(f"  n={n}: {line}", flush=True)
            train(client, store=str(work / f"run-{n}-{cache_mib}-{activation_mib}.zarr"), data=str(data), config=config,
                  chunk_rows=chunk_rows, report=report)
            seconds = time.perf_counter() - t0
        hwm = vm_hwm(pids)
    if timeline:
        for t, rss, *_ in mem.samples[::10]:
            print(f"    {t:7.1f} s  " + ", ".join(f"{gb(v):.3f}" for v in rss), flush=True)
        print("    marks:", [(round(t, 1), line[:40]) for t, line in marks], flush=True)
    return {"n": n, "chunk_rows": chunk_rows, "data_cache_mib": cache_mib, "activation_cache_mib": activation_mib,
            "seconds": seconds,
            "other_cpu_seconds": cpu.other, "data_cache_bytes_held": max(held, key=max) if held else [],
            "worker_peak_rss_bytes_vmhwm": list(hwm.values()), "worker_peak_rss_bytes_sampled": list(mem.peak.values())}


def markdown(r: dict) -> str:
    rows = r["runs"]
    out = [f"# Worker peak memory, Gauss-Newton with `--layers {r['layers']}` (MNIST)", "",
           f"Command: `{r['provenance']['command']}` ({r['provenance']['date']}); 2 worker processes x 1 thread, "
           f"{r['iterations']} iteration(s) after init, chunks of {rows[0]['chunk_rows']} rows, every chunk read; "
           f"activation cache {_budget(r.get('activation_cache_mib'), 'min(192 MiB, limit/8)')}.", "",
           "| data cache budget | n | X bytes (GB) | data cache held (GB) | worker peak RSS (VmHWM, GB) | sampled peak (GB) "
           "| seconds | other processes' CPU s |",
           "|---|---|---|---|---|---|---|---|"]
    for x in rows:
        out.append(f"| {_budget(x['data_cache_mib'])} | {x['n']} | {gb(4 * 784 * x['n'])} | "
                   f"{', '.join(str(gb(v)) for v in x['data_cache_bytes_held'])} | "
                   f"{', '.join(str(gb(v)) for v in x['worker_peak_rss_bytes_vmhwm'])} | "
                   f"{', '.join(str(gb(v)) for v in x['worker_peak_rss_bytes_sampled'])} | {x['seconds']:.0f} | "
                   f"{x['other_cpu_seconds']:.0f} |")
    out.append("")
    for budget in dict.fromkeys(x["data_cache_mib"] for x in rows):
        runs = [x for x in rows if x["data_cache_mib"] == budget]
        peaks = [max(x["worker_peak_rss_bytes_vmhwm"]) for x in runs]
        out.append(f"Data cache {_budget(budget)}: largest worker peak at {runs[-1]['n']} rows over that at "
                   f"{runs[0]['n']}: {peaks[-1] / peaks[0]:.3f}x (flat means within 1.3x).")
    return "\n".join(out) + "\n"


def _budget(mib, own: str = "min(512 MiB, limit/4)") -> str:
    return f"the worker's own ({own})" if mib is None else f"{mib:g} MiB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[15000, 30000])
    p.add_argument("--layers", default=LAYERS)
    p.add_argument("--chunk-rows", type=int, default=3000)
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--data-cache-mib", nargs="+", default=["32"],
                   help="the workers' data-chunk cache budget(s) in MiB ('default': the worker's own; 0: none); "
                        "the default, 32, is less than the data at 15000 rows (47 MB): data bigger than the cache")
    p.add_argument("--activation-cache-mib", default="16",
                   help="the workers' activation cache budget in MiB ('default': their own, min(192 MiB, limit/8))")
    p.add_argument("--timeline", action="store_true", help="print the workers' sampled RSS every second")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "conv_memory.json"))
    args = p.parse_args(argv)
    d = np.load(ROOT.parent / "shared" / "data" / "mnist70k_uint8.npz")
    X, y = d["X"][:60000].astype(np.float32), d["y"][:60000]
    with tempfile.TemporaryDirectory(prefix="conv-memory-") as tmp:
        budgets = [None if b == "default" else float(b) for b in args.data_cache_mib]
        activation = None if args.activation_cache_mib == "default" else float(args.activation_cache_mib)
        runs = [measure(n, X, y, args.layers, args.chunk_rows, args.iterations, Path(tmp), b,
                        activation, args.timeline) for b in budgets for n in args.n]
    result = {"provenance": provenance(), "layers": args.layers, "iterations": args.iterations, "runs": runs,
              "activation_cache_mib": activation}
    write_results(args.out, result, markdown)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
