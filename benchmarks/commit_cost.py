"""Per-commit cost of a run store's commit (issue 21: Gauss-Newton commits in the background; compare.py's clock waits
for each point's manifest).

It copies a run store (default: a Gauss-Newton MNIST 10-class 60k run, a 12 MB packed checkpoint), reads its last
checkpoint and commits it again as iterations k+1, k+2, ... with ``RunStore.commit``, in this thread, timing each
commit to its manifest (what compare.py's clock waits for) and to its end (the stale checkpoint's removal and, every
``METRICS_SECONDS``, metrics/), and the wall/CPU of ``_write_packed`` and the checksums. Sides (``--writers``, one
process, alternating per round): ``direct`` (this tree), ``unsynced`` (this tree's writer without its fdatasync and
folder fsyncs, review17 M1), ``zarr`` (this tree's commit with the session-16
``_write_packed``, Zarr's ``create_array``), ``base`` (also the session-16 checksums: all in one thread, before the write).

    python -m pipeline.train --data /tmp/q/compare-mnist10-n60000-train.zarr --store /tmp/idle17/gn.zarr \\
        --overwrite --solver gauss-newton --iterations 3
    PYTHONPATH=$PWD flock /work/bench.lock python benchmarks/commit_cost.py --store /tmp/idle17/gn.zarr \\
        --rounds 6 --commits 8 --out /tmp/idle17/commit_cost.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np


def zarr_write_packed(path, group: str, arrays: dict) -> None:
    """The session-16 writer (runstore b917d6d, which took the store's open group): one ``create_array`` through Zarr."""
    import zarr
    from zarr.codecs import Crc32cCodec

    root = zarr.open_group(path, mode="r+")
    flat = [a.ravel() for a in arrays.values()]
    data = np.concatenate(flat) if flat else np.zeros(0)
    root.create_array(f"{group}/packed", data=data, chunks=(max(1, data.size),), compressors=[Crc32cCodec()],
                      attributes={"layout": [[name, list(a.shape)] for name, a in arrays.items()]},
                      config={"write_empty_chunks": True})


def serial_checksums(arrays: dict, write) -> dict:
    """The session-16 order: every checksum in this thread, then the write."""
    from storage import runstore

    sums = {name: runstore._array_sha256(a) for name, a in arrays.items()}
    write()
    return sums


def side(store: Path, work: Path, writer: str, commits: int) -> dict:
    from storage import runstore
    from storage.runstore import MANIFEST, RunStore

    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(store, work)
    run = RunStore.open(work)
    ck = run.load_checkpoint()
    history = list(run.manifest()["history"])
    target = ck.iteration + commits + 10  # no commit is the last: metrics/ every METRICS_SECONDS, as in a run
    own = runstore._write_packed
    timed = {"write_packed": [], "sha": []}

    def write_packed(*a, **k):
        t, c = time.perf_counter(), time.thread_time()
        if writer == "unsynced":  # this tree's writer without its syncs (fix17: the cost of making it durable)
            sync_data, fsync_folder = runstore._sync_data, runstore._fsync_folder
            runstore._sync_data = runstore._fsync_folder = lambda x: None
            try:
                own(*a, **k)
            finally:
                runstore._sync_data, runstore._fsync_folder = sync_data, fsync_folder
        else:
            (zarr_write_packed if writer in ("zarr", "base") else own)(*a, **k)
        timed["write_packed"].append((time.perf_counter() - t, time.thread_time() - c))

    sha = runstore._array_sha256

    def array_sha256(a):
        t = time.perf_counter()
        out = sha(a)
        timed["sha"].append(time.perf_counter() - t)
        return out

    parts = {"keep_previous": [], "write_json_atomic": [], "remove_folder": [], "write_metrics": []}
    originals = {name: getattr(runstore, "_" + name) if name != "write_metrics" else RunStore.write_metrics
                 for name in parts}

    def timing(name):
        def timed_call(*a, **k):
            t = time.perf_counter()
            try:
                return originals[name](*a, **k)
            finally:
                parts[name].append(time.perf_counter() - t)
        return timed_call

    for name in parts:
        if name == "write_metrics":
            RunStore.write_metrics = timing(name)
        else:
            setattr(runstore, "_" + name, timing(name))
    runstore._write_packed, runstore._array_sha256 = write_packed, array_sha256
    beside = runstore._checksums_beside
    if writer == "base":  # the whole session-16 commit: Zarr's writer after the checksums, one thread
        runstore._checksums_beside = serial_checksums
    to_manifest, total, cpu = [], [], []
    stamp, replace = [], os.replace

    def replacing(src, dst, *a, **kw):  # the manifest's rename: the moment compare.py's wait ends
        replace(src, dst, *a, **kw)
        if str(dst).endswith("/" + MANIFEST) and not stamp:
            stamp.append(time.perf_counter())

    try:
        for i in range(commits):
            k = ck.iteration + 1 + i
            checkpoint = runstore.Checkpoint(k, [w + 0.0 for w in ck.weights], dict(ck.carry), ck.best,
                                             ck.best_weights)
            history.append(dict(history[-1], iteration=k))
            before = os.stat(work / MANIFEST).st_mtime_ns
            stamp.clear()
            t, c = time.perf_counter(), time.process_time()
            os.replace = replacing
            try:
                run.commit(checkpoint, list(history), target)
            finally:
                os.replace = replace
            total.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            to_manifest.append(stamp[0] - t)
            assert os.stat(work / MANIFEST).st_mtime_ns != before
        reread = RunStore.open(work).load_checkpoint()
        assert all(np.array_equal(a, b) for a, b in zip(reread.weights, ck.weights))
    finally:
        runstore._write_packed, runstore._array_sha256, runstore._checksums_beside = own, sha, beside
        for name, f in originals.items():
            if name == "write_metrics":
                RunStore.write_metrics = f
            else:
                setattr(runstore, "_" + name, f)
    files = sorted(str(p.relative_to(work)) for p in (work / "checkpoint").rglob("*") if p.is_file())
    return {"writer": writer, "to_manifest_s": to_manifest, "commit_s": total, "process_cpu_s": cpu,
            "write_packed_wall_s": [w for w, _ in timed["write_packed"]],
            "write_packed_thread_cpu_s": [c for _, c in timed["write_packed"]],
            "sha_s_per_commit": sum(timed["sha"]) / max(1, commits), "checkpoint_files": files,
            **{f"{name}_s_per_commit": sum(v) / max(1, commits) for name, v in parts.items()},
            "load": os.getloadavg()[0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="/tmp/idle17/gn.zarr")
    p.add_argument("--work", default="/tmp/idle17/commit_cost.zarr")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--commits", type=int, default=8)
    p.add_argument("--writers", default="base,direct")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    writers = args.writers.split(",")
    runs = []
    for r in range(args.rounds):
        for w in (writers if r % 2 == 0 else writers[::-1]):
            run = side(Path(args.store), Path(args.work), w, args.commits)
            run["round"] = r
            runs.append(run)
            print(f"r{r} {w:6s} to manifest median {1e3 * statistics.median(run['to_manifest_s']):.1f} ms, "
                  f"commit {1e3 * statistics.median(run['commit_s']):.1f} ms, write_packed "
                  f"{1e3 * statistics.median(run['write_packed_wall_s']):.1f} ms wall "
                  f"{1e3 * statistics.median(run['write_packed_thread_cpu_s']):.1f} ms thread CPU, sha "
                  f"{1e3 * run['sha_s_per_commit']:.1f} ms, " + ", ".join(
                      f"{n} {1e3 * run[n + '_s_per_commit']:.1f}" for n in
                      ("keep_previous", "write_json_atomic", "remove_folder", "write_metrics"))
                  + f" ms, load {run['load']:.1f}", flush=True)
    shutil.rmtree(args.work, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": runs, "argv": argv}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
