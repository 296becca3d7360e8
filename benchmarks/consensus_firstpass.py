"""Where a fresh cluster's first consensus pass spends its time: task placement, CPU and waiting, run after run.

Mirrors compare.py's pipeline path (a fresh ``connect("local")`` of 2 single-threaded worker
processes, the modules imported before the clock, this process at ``--client-threads`` BLAS
threads), trains ``--iterations`` iterations and records per run: the iterations' wall seconds,
the CPU seconds of this process and of each worker (per thread, from /proc), other processes'
CPU (bench_util.CpuWatch) and the VM's steal time, this process's garbage collections, the
modules a worker first imports during training, and unless ``--no-stream`` Dask's task stream
(each task's worker, start, duration) plus each shard and scoring task's wall and thread-CPU
seconds, minor page faults and involuntary context switches (the task functions wrapped in the
workers). Results: benchmarks/results/consensus_s7_firstpass.md.

    python benchmarks/consensus_firstpass.py --data /tmp/q/compare-mnist10-n60000-train.zarr --repeats 5
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import CpuWatch  # noqa: E402
from pipeline.cluster import connect  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402


def _cpu():
    """Return this process's CPU seconds: total, user, system, and per thread (by name) from /proc."""
    import resource
    import threading

    r = resource.getrusage(resource.RUSAGE_SELF)
    names = {t.native_id: t.name for t in threading.enumerate()}
    threads = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
            comm = open(f"/proc/self/task/{tid}/comm").read().strip()
        except OSError:
            continue
        key = names.get(int(tid), comm)
        threads[key] = threads.get(key, 0.0) + (int(f[11]) + int(f[12])) / tick
    return {"total": r.ru_utime + r.ru_stime, "user": r.ru_utime, "sys": r.ru_stime, "threads": threads}


class _GcClock:
    """Seconds spent in this process's garbage collections, by generation (gc.callbacks)."""

    def __init__(self):
        self.seconds, self.counts, self._t = [0.0, 0.0, 0.0], [0, 0, 0], None

    def __call__(self, phase, info):
        if phase == "start":
            self._t = time.perf_counter()
        elif self._t is not None:
            g = info["generation"]
            self.seconds[g] += time.perf_counter() - self._t
            self.counts[g] += 1


def _steal() -> float:
    import psutil

    return float(getattr(psutil.cpu_times(), "steal", 0.0))


def _modules():
    return sorted(sys.modules)


def _prefix(key) -> str:
    k = key[0] if isinstance(key, tuple) else key
    return str(k).rsplit("-", 1)[0]


def _instrument():
    """In a worker: wrap the pass tasks to note each call's wall and thread-CPU seconds and minor page faults."""
    import resource
    import time as _t

    import pipeline.passes as passes

    log = passes.__dict__.setdefault("_firstpass_log", [])
    for name in ("shard_round_task", "_score_shard"):
        fn = getattr(passes, name)
        if getattr(fn, "_wrapped", False):
            continue

        def wrapper(*a, _fn=fn, _name=name, **k):
            r0, w0, c0 = resource.getrusage(resource.RUSAGE_THREAD), _t.perf_counter(), _t.thread_time()
            try:
                return _fn(*a, **k)
            finally:
                r1 = resource.getrusage(resource.RUSAGE_THREAD)
                log.append({"task": _name, "start": _t.time() - (_t.perf_counter() - w0), "wall": _t.perf_counter() - w0,
                            "cpu": _t.thread_time() - c0, "minflt": r1.ru_minflt - r0.ru_minflt,
                            "nivcsw": r1.ru_nivcsw - r0.ru_nivcsw})
        wrapper._wrapped = True
        setattr(passes, name, wrapper)


def _take_log():
    import pipeline.passes as passes

    out = list(passes.__dict__.get("_firstpass_log", []))
    passes.__dict__["_firstpass_log"] = []
    return out


def one_run(data: str, solver: str, iterations: int, workdir: Path, stream: bool, client_threads: int) -> dict:
    from distributed import get_task_stream
    from threadpoolctl import threadpool_limits

    from pipeline.training import train
    from storage.runstore import RunStore

    t0 = time.perf_counter()
    with connect("local", n_workers=2, threads_per_worker=1, dashboard_address=":0", report=lambda s: None,
                 processes=True) as client:
        client.run(exec, "import pipeline.passes, storage.data, storage.runstore, solvers.consensus")
        startup = time.perf_counter() - t0
        if stream:
            client.run(_instrument)
        mods0 = client.run(_modules)
        cpu0 = client.run(_cpu)
        workers = sorted(client.nthreads())
        pids = client.run(os.getpid)
        store = workdir / f"run-{time.time_ns()}.zarr"
        marks = []

        def report(line):
            marks.append((time.perf_counter(), line))

        config = TrainConfig(hidden=(300,), iterations=iterations, seed=0, solver=solver)
        ctx = get_task_stream(client) if stream else None
        if ctx is not None:
            ts = ctx.__enter__()
        c0 = time.perf_counter()
        wall0 = time.time()
        steal0 = _steal()
        import gc
        gcclock = _GcClock()
        gc.callbacks.append(gcclock)
        objects = len(gc.get_objects())
        try:
            with CpuWatch() as watch, threadpool_limits(client_threads):
                client_cpu0 = time.process_time()
                threads0 = _cpu()["threads"]
                train(client, store=str(store), data=data, config=config, overwrite=True, report=report)
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
        total = time.perf_counter() - c0
        client_cpu = time.process_time() - client_cpu0
        gc.callbacks.remove(gcclock)
        threads1 = _cpu()["threads"]
        client_threads_cpu = {t: round(c - threads0.get(t, 0.0), 2) for t, c in threads1.items() if c - threads0.get(t, 0.0) > 0}
        cpu1 = client.run(_cpu)
        mods1 = client.run(_modules)
        new_modules = {workers.index(w): sorted(set(mods1[w]) - set(mods0[w])) for w in mods0}
        calls = {workers.index(w): v for w, v in client.run(_take_log).items()} if stream else {}
        history = RunStore.open(store).manifest()["history"]
        shutil.rmtree(store, ignore_errors=True)
        tasks = []
        for t in (ts.data if ctx is not None else []):
            comp = next((s for s in t["startstops"] if s["action"] == "compute"), None)
            xfer = sum(s["stop"] - s["start"] for s in t["startstops"] if s["action"] == "transfer")
            if comp is None:
                continue
            tasks.append({"task": _prefix(t["key"]), "worker": workers.index(t["worker"]) if t["worker"] in workers else t["worker"],
                          "start": round(comp["start"] - wall0, 4), "seconds": round(comp["stop"] - comp["start"], 4),
                          "transfer": round(xfer, 4)})
        tasks.sort(key=lambda r: r["start"])
    worker_cpu = {workers.index(w): {k: cpu1[w][k] - cpu0[w][k] for k in ("total", "user", "sys")} for w in cpu0}
    worker_threads = {workers.index(w): {t: round(c - cpu0[w]["threads"].get(t, 0.0), 3) for t, c in cpu1[w]["threads"].items()
                                         if c - cpu0[w]["threads"].get(t, 0.0) > 0} for w in cpu0}
    return {"client_gc": {"objects": objects, "seconds": [round(x, 4) for x in gcclock.seconds], "counts": gcclock.counts},
            "client_threads": client_threads_cpu, "client_cpu": client_cpu, "other_cpu": watch.other,
            "steal": _steal() - steal0, "new_modules": new_modules, "calls": calls, "worker_cpu": worker_cpu,
            "worker_threads": worker_threads,
            "startup": startup, "train_seconds": total, "pids": pids,
            "iteration_seconds": [h.get("seconds") for h in history],
            "marks": [(round(t - c0, 3), line[:120]) for t, line in marks], "tasks": tasks}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--solver", default="consensus")
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-stream", action="store_true", help="do not record the task stream (its own overhead)")
    p.add_argument("--client-threads", type=int, default=2, help="BLAS threads of this process (compare.py: --threads 2)")
    p.add_argument("--verbose", action="store_true", help="print every task")
    p.add_argument("--out", default=None, help="JSON lines of every run")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="firstpass-"))
    try:
        for r in range(args.repeats):
            res = one_run(args.data, args.solver, args.iterations, workdir, not args.no_stream, args.client_threads)
            on = {}
            for t in res["tasks"]:
                if t["task"].startswith("shard_round_task"):
                    on.setdefault(t["worker"], []).append(t["seconds"])
            workers_cpu = sum(v["total"] for v in res["worker_cpu"].values())
            print(f"run {r}: client CPU {res['client_cpu']:.2f} s, workers CPU {workers_cpu:.2f} s, other CPU {res['other_cpu']:.2f} s, "
                  f"steal {res['steal']:.2f} s, startup {res['startup']:.2f} s, train {res['train_seconds']:.2f} s, iterations "
                  f"{[round(s, 3) for s in res['iteration_seconds']]}, shard tasks per worker "
                  f"{ {w: [round(s, 3) for s in v] for w, v in sorted(on.items(), key=str)} }", flush=True)
            for w, calls in sorted(res["calls"].items()):
                print(f"    w{w} cpu {res['worker_cpu'][w]['total']:.2f} s (sys {res['worker_cpu'][w]['sys']:.2f}) "
                      f"{res['worker_threads'][w]}: " + ", ".join(
                    f"{c['task'][:5]} {c['wall']:.3f}/{c['cpu']:.3f} f{c['minflt']} v{c['nivcsw']}" for c in calls))
            print(f"    client threads: {res['client_threads']}; client gc {res['client_gc']}")
            print(f"    modules first imported during training: { {w: m for w, m in res['new_modules'].items()} }")
            if args.verbose:
                for t in res["tasks"]:
                    print(f"    {t['start']:7.3f} +{t['seconds']:.3f} (xfer {t['transfer']:.3f}) w{t['worker']} {t['task']}")
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(res) + "\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
