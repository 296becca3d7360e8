"""One true out-of-core run: state (two slots) larger than RAM, against the disk's bandwidth.

1. Measures the sequential bandwidth of the disk holding ``--store``: writes
   ``--bw-gb`` GB of incompressible bytes in 64 MiB blocks and fsyncs (time
   includes the fsync), drops the page cache (``sync; echo 3 >
   /proc/sys/vm/drop_caches``, needs root), reads the file back cold in 64 MiB
   blocks, deletes it.
2. Drops the page cache again and runs :func:`pipeline.training.train`
   (init + ``--iterations``) on a LocalCluster of 2 single-threaded worker
   processes. After init and after every iteration (in ``train``'s report
   callback, outside the timed part) it samples the ``/proc/<pid>/io``
   counters of the workers and of this process, the block-device counters,
   and the page-cache size; a thread samples worker RSS every 0.1 s and the
   kernel's peak RSS (VmHWM) is read at the end.
3. Computes the bytes each pass must move (iteration: read X, y and the
   committed state slot, write the other slot; init: read X, y, write slot 0),
   the achieved throughput, and the lower bound on an iteration's time from the
   measured bandwidth (``read/read_bw + write/write_bw``: one disk, reads and
   writes share it).
4. Deletes the run store (``--keep-store`` keeps it); the data store is kept.

Writes ``--out`` (JSON) and the same name with ``.md``.

Run (nothing else on the machine; about 10 minutes for 11 M samples)::

    python benchmarks/higgs_like.py --n 11000000 --out /work/bench/higgs.zarr \\
        --test-n 500000 --test-out /work/bench/higgs-test.zarr --seed 0
    python benchmarks/out_of_core.py --data /work/bench/higgs.zarr \\
        --test-data /work/bench/higgs-test.zarr --store /work/bench/ooc-run.zarr \\
        --out benchmarks/results/out_of_core.json
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import (MemorySampler, delta, disk_io, drop_caches, gb, proc_io, write_results,  # noqa: E402
                                   provenance, reset_hwm, vm_hwm, worker_pids)
from benchmarks.iteration_time import CpuWatch  # noqa: E402
from pipeline.cluster import connect  # noqa: E402
from pipeline.training import train  # noqa: E402
from solvers import make_solver  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from storage.data import open_data  # noqa: E402

MiB = 2**20


def disk_bandwidth(path: Path, size_gb: float) -> dict:
    """Return sequential write (fsync'ed) and cold read bandwidth in bytes/s of a file at ``path``."""
    block = np.random.default_rng(0).integers(0, 256, 64 * MiB, dtype=np.uint8).tobytes()
    n_blocks = max(1, int(size_gb * 1e9 // len(block)))
    size = n_blocks * len(block)
    drop_caches()
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(n_blocks):
            os.write(fd, block)
        t_buffered = time.perf_counter() - t0
        os.fsync(fd)
    finally:
        os.close(fd)
    t_write = time.perf_counter() - t0
    dropped = drop_caches()
    buf = bytearray(64 * MiB)
    t0 = time.perf_counter()
    got = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            got += k
    t_read = time.perf_counter() - t0
    os.unlink(path)
    return {"file": str(path), "bytes": size, "write_seconds_incl_fsync": t_write,
            "write_seconds_buffered_part": t_buffered, "write_bytes_per_s": size / t_write,
            "read_seconds_cold": t_read, "read_bytes_per_s": got / t_read, "page_cache_dropped": dropped}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/work/bench/higgs.zarr")
    p.add_argument("--test-data", default=None)
    p.add_argument("--store", default="/work/bench/ooc-run.zarr")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--hidden", type=int, default=300)
    p.add_argument("--solver", default="admm",
                   help="admm (default) or dladmm keep per-sample state, the point of this benchmark; others keep none")
    p.add_argument("--chunk-rows", type=int, default=131072)
    p.add_argument("--memory-limit", default="2GB", help="per worker")
    p.add_argument("--bw-gb", type=float, default=4.0, help="size of the bandwidth test file")
    p.add_argument("--skip-bw", action="store_true")
    p.add_argument("--keep-store", action="store_true")
    p.add_argument("--keep-page-cache", action="store_true",
                   help="do not drop the page cache before the run (as root it is dropped for the whole machine: on "
                        "a shared machine that slows every other process's reads; the workers' peak RSS, the "
                        "point of a memory-vs-n run, does not depend on it)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "out_of_core.json"))
    args = p.parse_args(argv)

    result = {"provenance": provenance()}
    store = Path(args.store)
    if not args.skip_bw:
        print("disk bandwidth ...", flush=True)
        bw = disk_bandwidth(store.parent / "bandwidth-test.bin", args.bw_gb)
        print(f"  write {bw['write_bytes_per_s'] / 1e6:.0f} MB/s (fsync'ed), cold read "
              f"{bw['read_bytes_per_s'] / 1e6:.0f} MB/s", flush=True)
        result["disk_bandwidth"] = bw

    data = open_data(args.data)
    n, d, h = data.n_samples, data.n_features, args.hidden
    solver = make_solver(TrainConfig(solver=args.solver, hidden=(h,)), d, x_mean=np.zeros(d), x_scale=np.ones(d),
                         classes=np.array([0, 1]))
    state_width = sum(solver.state_widths().values())  # admm: z1 (h), z2 (1), lam (1)
    slot_bytes = n * state_width * 4
    xy_bytes = n * d * 4 + n * 8
    expected = {
        "state_bytes_per_slot": slot_bytes, "state_bytes_two_slots": 2 * slot_bytes,
        "data_bytes_X_y": xy_bytes,
        "iteration_read_bytes": xy_bytes + slot_bytes, "iteration_write_bytes": slot_bytes,
        "init_read_bytes": xy_bytes, "init_write_bytes": slot_bytes,
    }
    result["run"] = {"data": str(data.path), "n_samples": n, "n_features": d, "hidden": h, "solver": args.solver,
                     "chunk_rows": args.chunk_rows, "workers": 2, "threads_per_worker": 1,
                     "memory_limit": args.memory_limit, "ram_bytes": psutil.virtual_memory().total,
                     "test_data": args.test_data, "expected": expected}
    print(f"n={n}: state {gb(slot_bytes)} GB per slot, {gb(2 * slot_bytes)} GB both "
          f"(RAM {gb(psutil.virtual_memory().total)} GB)", flush=True)

    config = TrainConfig(solver=args.solver, hidden=(h,), iterations=args.iterations)
    marks = []
    dropped = False if args.keep_page_cache else drop_caches()
    with connect("local", n_workers=2, threads_per_worker=1, memory_limit=args.memory_limit,
                 dashboard_address=":0") as client:
        pids = worker_pids(client)
        all_pids = pids + [os.getpid()]
        reset_hwm(pids)

        def mark(label):
            vm = psutil.virtual_memory()
            marks.append({"label": label, "t": time.perf_counter(), "proc_io_workers": proc_io(pids),
                          "proc_io_all": proc_io(all_pids), "disk": disk_io(),
                          "page_cache_bytes": vm.cached, "dirty_bytes": _meminfo("Dirty")})

        def report(line):
            print(line, flush=True)
            if line.startswith("initialised") or line.strip()[:1].isdigit():
                mark(line.split()[0] if line.startswith("initialised") else f"iteration {line.split()[0]}")
            elif line.startswith("run store"):
                mark("stats pass done")

        with MemorySampler(pids) as mem, CpuWatch() as cpu:
            mark("start")
            t0 = time.perf_counter()
            res = train(client, store=str(store), data=str(data.path), config=config,
                        test_data=args.test_data, chunk_rows=args.chunk_rows, overwrite=True, report=report)
            total = time.perf_counter() - t0
        hwm = vm_hwm(pids)
    history = res.store.manifest()["history"]

    # per-pass deltas: the pass between two marks
    passes = []
    for a, b in zip(marks, marks[1:]):
        passes.append({"pass": b["label"], "wall_seconds_between_marks": b["t"] - a["t"],
                       "proc_io_workers": delta(b["proc_io_workers"], a["proc_io_workers"]),
                       "proc_io_all": delta(b["proc_io_all"], a["proc_io_all"]),
                       "disk": delta(b["disk"], a["disk"]),
                       "page_cache_bytes_after": b["page_cache_bytes"], "dirty_bytes_after": b["dirty_bytes"]})
    iters = []
    for hrec in history:
        k = hrec["iteration"]
        ps = next(x for x in passes if x["pass"] == f"iteration {k}")
        s = hrec["seconds"]
        moved = expected["iteration_read_bytes"] + expected["iteration_write_bytes"]
        iters.append({"iteration": k, "seconds": s, "train_accuracy": hrec["train_accuracy"],
                      "test_accuracy": hrec.get("test_accuracy"),
                      "expected_bytes_moved": moved, "throughput_bytes_per_s": moved / s, **ps})
    result["page_cache_dropped_before_run"] = dropped
    result["total_seconds"] = total
    result["other_cpu_seconds"] = cpu.other
    result["passes"] = passes
    result["iterations"] = iters
    result["worker_peak_rss_bytes_vmhwm"] = list(hwm.values())
    result["worker_peak_rss_bytes_sampled"] = list(mem.peak.values())
    result["client_peak_rss_bytes"] = vm_hwm([os.getpid()])[os.getpid()]  # this process's lifetime peak (VmHWM)
    result["max_page_cache_bytes_sampled"] = max(smp[2] for smp in mem.samples)
    if "disk_bandwidth" in result:
        bw = result["disk_bandwidth"]
        bound = expected["iteration_read_bytes"] / bw["read_bytes_per_s"] + \
            expected["iteration_write_bytes"] / bw["write_bytes_per_s"]
        result["iteration_lower_bound_seconds_from_bandwidth"] = bound
        for it in iters:
            it["bound_over_seconds"] = bound / it["seconds"]
    synthetic = {}
    try:
        import zarr
        synthetic = zarr.open_group(str(data.path), mode="r").attrs.get("synthetic", {})
    except Exception:
        pass
    result["bayes_accuracy"] = synthetic.get("bayes_accuracy")
    if args.keep_store:
        result["run_store"] = str(store)
    else:
        shutil.rmtree(store, ignore_errors=True)
        result["run_store"] = f"{store} (deleted after the run)"

    write_results(args.out, result, markdown)
    return 0


def _meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def markdown(r: dict) -> str:
    pv, run, e = r["provenance"], r["run"], r["run"]["expected"]
    L = ["# Out-of-core run: state larger than RAM", "",
         f"- Command: `{pv['command']}`",
         f"- Date: {pv['date']} on {pv['host']} ({pv['cpus']} CPUs, {pv['ram_bytes'] / 2**30:.1f} GiB RAM)",
         f"- Data: `{run['data']}` ({run['n_samples']:,} x {run['n_features']}, Bayes accuracy "
         f"{r['bayes_accuracy']}); network {run['n_features']}-{run['hidden']}-1, solver {run.get('solver', 'admm')}, "
         f"{run['chunk_rows']} rows per "
         f"chunk, 2 worker processes x 1 thread, memory limit {run['memory_limit']} per worker.",
         f"- State: {gb(e['state_bytes_per_slot'])} GB per slot, {gb(e['state_bytes_two_slots'])} GB for both "
         f"slots vs {run['ram_bytes'] / 1e9:.1f} GB RAM; X and y {gb(e['data_bytes_X_y'])} GB.",
         f"- Run store: {r['run_store']}; page cache dropped before the run: "
         f"{r.get('page_cache_dropped_before_run')}.", ""]
    if "disk_bandwidth" in r:
        bw = r["disk_bandwidth"]
        L += ["## Disk bandwidth (sequential, 64 MiB blocks)", "",
              f"- write {bw['bytes'] / 1e9:.1f} GB incl. fsync: {bw['write_seconds_incl_fsync']:.1f} s = "
              f"**{bw['write_bytes_per_s'] / 1e6:.0f} MB/s**",
              f"- cold read (page cache dropped: {bw['page_cache_dropped']}): {bw['read_seconds_cold']:.1f} s = "
              f"**{bw['read_bytes_per_s'] / 1e6:.0f} MB/s**", ""]
    L += ["## Per pass", "",
          f"Expected bytes of one iteration: read {gb(e['iteration_read_bytes'])} GB (X, y, committed slot), "
          f"write {gb(e['iteration_write_bytes'])} GB (other slot). Measured: `proc read/write` = "
          "/proc/<pid>/io read_bytes/write_bytes of the workers and the client (bytes that went to/came from "
          "the block layer on behalf of the process; writes counted when dirtied), `rchar` = bytes the "
          "processes read through read() (incl. page-cache hits), `device` = block-device counters "
          "(include other processes and write-back of earlier passes).", "",
          "| pass | s | rchar GB | proc read GB | proc write GB | device read GB | device write GB | "
          "page cache after GB |", "|---|---|---|---|---|---|---|---|"]
    for ps in r["passes"]:
        pio, dk = ps["proc_io_all"], ps["disk"]
        L.append(f"| {ps['pass']} | {ps['wall_seconds_between_marks']:.1f} | {gb(pio['rchar'])} | "
                 f"{gb(pio['read_bytes'])} | {gb(pio['write_bytes'])} | {gb(dk['read_bytes'])} | "
                 f"{gb(dk['write_bytes'])} | {gb(ps['page_cache_bytes_after'])} |")
    L += ["", "(`s` here is wall time between report callbacks: it includes the commit and the test-set "
          "evaluation; the iteration table uses train()'s own seconds.)", "",
          "## Iterations", "",
          "| iteration | seconds | throughput (expected bytes / s) | lower bound from bandwidth / seconds | "
          "train acc | test acc |", "|---|---|---|---|---|---|"]
    for it in r["iterations"]:
        L.append(f"| {it['iteration']} | {it['seconds']:.1f} | {it['throughput_bytes_per_s'] / 1e6:.0f} MB/s | "
                 f"{it.get('bound_over_seconds', float('nan')):.2f} | {it['train_accuracy']:.4f} | "
                 f"{it['test_accuracy'] if it['test_accuracy'] is None else round(it['test_accuracy'], 4)} |")
    if "iteration_lower_bound_seconds_from_bandwidth" in r:
        L += ["", f"Lower bound of one iteration from the measured bandwidth (read/read_bw + write/write_bw): "
              f"{r['iteration_lower_bound_seconds_from_bandwidth']:.1f} s."]
    L += ["", f"Worker peak RSS (VmHWM): {', '.join(str(gb(v)) for v in r['worker_peak_rss_bytes_vmhwm'])} GB; "
          f"sampled every 0.1 s: {', '.join(str(gb(v)) for v in r['worker_peak_rss_bytes_sampled'])} GB"
          + (f"; client process (VmHWM) {gb(r['client_peak_rss_bytes'])} GB" if "client_peak_rss_bytes" in r else "")
          + ". "
          f"Largest page cache seen: {gb(r['max_page_cache_bytes_sampled'])} GB. Total wall time "
          f"(stats pass, init, {len(r['iterations'])} iterations, commits, test evaluation): "
          f"{r['total_seconds']:.0f} s. CPU seconds used by other processes during the run (disturbance): "
          f"{r['other_cpu_seconds']:.0f}.", ""]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
