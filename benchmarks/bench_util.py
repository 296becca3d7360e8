"""Helpers shared by the pipeline benchmarks: worker memory sampling, I/O counters, provenance."""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]


def parse_settings(items, flag: str = "--set") -> dict:
    """Return {KEY: VALUE} of ``KEY=VALUE`` items, each VALUE parsed as JSON where it can be (else kept as text)."""
    from solvers.errors import InputError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"{flag} {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def provenance() -> dict:
    """Return the exact command line, date and machine of this run."""
    return {
        "command": "cd " + shlex.quote(str(ROOT)) + " && python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "ram_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
    }


def worker_pids(client) -> list[int]:
    """Return the PIDs of the (local) worker processes."""
    return sorted(client.run(os.getpid).values())


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_hwm(pids) -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) of each process (``echo 5 > clear_refs``)."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def vm_hwm(pids) -> dict[int, int]:
    """Return the kernel's peak RSS (VmHWM, bytes) of each process."""
    return {pid: _status_kb(pid, "VmHWM") for pid in pids}


def proc_io(pids) -> dict:
    """Return the summed /proc/<pid>/io counters of the processes (bytes)."""
    total = {"rchar": 0, "wchar": 0, "read_bytes": 0, "write_bytes": 0}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/io") as f:
                for line in f:
                    k, v = line.split(":")
                    if k in total:
                        total[k] += int(v)
        except OSError:
            pass
    return total


def disk_io(device: str | None = None) -> dict:
    """Return cumulative read/write bytes of the block device holding /work (or ``device``)."""
    counters = psutil.disk_io_counters(perdisk=True)
    if device is None:
        device = next((d for d in ("vda", "sda", "nvme0n1", "xvda") if d in counters), None)
    c = counters[device]
    return {"device": device, "read_bytes": c.read_bytes, "write_bytes": c.write_bytes}


def delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] for k in after if isinstance(after[k], (int, float))}


class MemorySampler:
    """Sample the RSS of given processes (and system memory) every ``interval`` seconds in a thread."""

    def __init__(self, pids, interval: float = 0.1):
        self.pids = list(pids)
        self.interval = interval
        self.peak = {pid: 0 for pid in self.pids}
        self.peak_total = 0
        self.samples = []  # (t, [rss per pid], page cache bytes, dirty bytes)
        self._stop = threading.Event()
        self._procs = {pid: psutil.Process(pid) for pid in self.pids}
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            rss = []
            for pid, p in self._procs.items():
                try:
                    r = p.memory_info().rss
                except psutil.Error:
                    r = 0
                rss.append(r)
                self.peak[pid] = max(self.peak[pid], r)
            self.peak_total = max(self.peak_total, sum(rss))
            vm = psutil.virtual_memory()
            self.samples.append((round(time.perf_counter() - self._t0, 2), rss, vm.cached, vm.used))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def drop_caches() -> bool:
    """Flush dirty pages and drop the page cache (needs root); return whether it worked."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def gb(x) -> float:
    return round(x / 1e9, 3)


def write_results(path, result: dict, markdown) -> None:
    """Write ``result`` as JSON to ``path`` and ``markdown(result)`` beside it (.md)."""
    import json
    from pathlib import Path

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float))  # default: NumPy scalars as floats
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")


class CpuWatch:
    """CPU seconds used by other processes (not this process tree) while the block runs."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.sys0 = psutil.cpu_times()
        self.own0 = self._own()
        return self

    @staticmethod
    def _busy(t):
        return t.user + t.system + getattr(t, "nice", 0) + getattr(t, "irq", 0) + getattr(t, "softirq", 0)

    @staticmethod
    def _own():
        me = psutil.Process()
        total = 0.0
        for p in [me, *me.children(recursive=True)]:
            try:
                c = p.cpu_times()
                total += c.user + c.system
            except psutil.Error:
                pass
        return total

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.other = (self._busy(psutil.cpu_times()) - self._busy(self.sys0)) - (self._own() - self.own0)
        return False


def mean_se(values) -> str:
    """Return "mean ± standard error" of paired differences (``-`` when empty; s.e. nan for one value)."""
    v = np.asarray(values, np.float64)
    if len(v) == 0:
        return "-"
    se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return f"{v.mean():+.4f} ± {se:.4f}"


def load_mnist_validation(task: str, data: Path = ROOT.parent / "shared" / "data"):
    """Return (X_train, y_train, X_val, y_val, about) of ``mnist10`` / ``mnist-oddeven``: training rows 0-49,999
    train, rows 50,000-59,999 validate; the 10,000 test images are never loaded. Raw uint8 pixels as float32."""
    with np.load(Path(data) / "mnist70k_uint8.npz") as f:
        X, y = f["X"][:60000], f["y"][:60000]
    if task == "mnist-oddeven":
        y = y % 2
    return (X[:50000].astype(np.float32), y[:50000], X[50000:].astype(np.float32), y[50000:],
            "MNIST training rows 0-49,999 train, 50,000-59,999 validation (test images not loaded)")


def first_hit(hist, target):
    """The first iteration of ``hist`` whose ``eval_accuracy`` reaches ``target`` (None: never)."""
    return next((h for h in hist if h["eval_accuracy"] is not None and h["eval_accuracy"] >= target), None)


def seconds_to(hist, hit) -> float:
    """The driver's seconds are per iteration (solver work, scoring excluded): sum them through ``hit``."""
    return float(sum(h["seconds"] for h in hist if h["iteration"] <= hit["iteration"]))


HISTORY_KEYS = ("iteration", "seconds", "test_accuracy", "validation_accuracy", "train_accuracy", "alpha", "accepted",
                "damping", "sample_rows")


def fit_validation_run(Xtr, ytr, Xva, yva, config, target, keys=HISTORY_KEYS, **fit) -> dict:
    """Fit ``config`` in memory (:func:`solvers.reference.fit_in_memory`, ``fit``: its keywords) with the validation
    rows as ``X_test`` (the fit chooses nothing by them) and return the record of the validation-row benchmarks
    (hidden_alpha_factor.py, kout_early.py): the kept model's validation accuracy, the per-iteration history (``keys``
    of each entry; ``test_accuracy`` renamed ``eval_accuracy``), the first iteration at ``target`` and its seconds,
    wall and CPU seconds of the fit, the load average and OMP_NUM_THREADS. Also ``result``: the fit itself (pop it
    before writing the record)."""
    from solvers.reference import fit_in_memory

    t0, cpu0 = time.perf_counter(), time.process_time()
    r = fit_in_memory(Xtr, ytr, config, X_test=Xva, y_test=yva, **fit)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    hist = [{k: h.get(k) for k in keys} for h in r.history]
    for h in hist:
        h["eval_accuracy"] = h.pop("test_accuracy")  # the validation rows given as X_test (named so to avoid doubt)
    hit = target is not None and first_hit(hist, target) or None
    return {"kept": float(r.network.score(Xva, yva)), "best_iteration": r.best_iteration, "iterations_run": len(hist),
            "max_eval": max(h["eval_accuracy"] for h in hist), "target_iteration": hit and hit["iteration"],
            "target_seconds": hit and seconds_to(hist, hit), "wall": wall, "cpu": cpu, "load": os.getloadavg()[0],
            "threads": os.environ.get("OMP_NUM_THREADS"), "history": hist, "result": r}


def run_arms(seeds, arms, load, run, out, line) -> None:
    """Run every arm for every seed and append each record to the runs file ``out`` (one JSON line each).

    Even seeds take ``arms`` in the given order, odd seeds reversed (so neither arm always runs first on a warm
    machine). ``load(seed)`` returns (X_train, y_train, X_val, y_val, about); ``run(X_train, y_train, X_val, y_val,
    arm, seed)`` returns the record, which gets the data's ``about`` and ``sys.argv``; ``line(record)`` is printed
    after ``RESULT `` (hidden_alpha_factor.py, init_restore.py, kout_early.py).
    """
    for seed in seeds:
        Xtr, ytr, Xva, yva, about = load(seed)
        for arm in (arms if seed % 2 == 0 else arms[::-1]):
            record = run(Xtr, ytr, Xva, yva, arm, seed)
            record["data"], record["argv"] = about, sys.argv
            print(f"RESULT {line(record)}", flush=True)
            with open(out, "a") as fh:
                fh.write(json.dumps(record) + "\n")
