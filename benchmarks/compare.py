"""Time-to-accuracy, side by side: this project's solvers against the peers a user would pick instead.

One command trains, one method at a time (the machine has 2 cores: never two
at once), on the same data, and records test accuracy against wall-clock time
for

* this project, for every solver in ``solvers.SOLVERS`` (``--solvers``):
  ``<solver>-reference`` — the in-memory reference
  :func:`solvers.reference.fit_in_memory` — and ``<solver>-pipeline`` — the
  out-of-core Dask pipeline :func:`pipeline.training.train` on a local cluster
  of ``--workers`` worker threads or single-threaded processes (``pipeline.cluster.connect``,
  as ``python -m pipeline.train`` runs it), reading the task's Zarr data store;
* the peers of ``benchmarks/peers.py`` (``--peers``): scikit-learn
  ``MLPClassifier.partial_fit`` streamed over the same Zarr chunks, dask-ml
  ``Incremental(MLPClassifier)`` on ``da.from_zarr`` of the same store, PyTorch
  (CPU) Adam streaming the chunks (``torch-cnn``: the convolutional network of
  the first run with ``layers``, built from the same ``--layers`` string), and in memory ``MLPClassifier`` with
  ``lbfgs``, ``adam``, ``sgd`` and ``LogisticRegression`` as a floor. A peer
  whose package is missing is skipped with one line.

**What the time is.** Seconds of wall-clock time since the method started:
statistics/standardisation pass, initialisation, every pass or epoch, reads of
the store and (pipeline) commits of the run store are included; computing the
test accuracy is not (the clock stops meanwhile). For ``*-reference`` the test
accuracy is computed inside ``fit_in_memory``; its duration is measured as the
gap between consecutive callbacks minus the iteration's own ``seconds`` and
subtracted (for the first iteration the median of the later gaps). For
``*-pipeline`` the runner loads the committed network of each iteration
(``pipeline.model.load_network``) and scores it with the clock stopped (the
pipeline is given no ``test_data``). *CPU s to target*: CPU seconds (user + system) up to the target
point: a peer's process (all its threads), our client process plus the
local cluster's worker processes (test scoring excluded both ways); unlike
seconds, robust to other load on the machine. Starting the Dask cluster (and importing
the project's modules on its workers), writing the data stores and one-time
library warm-ups (torch's lazy imports) are not timed (recorded in
``settings`` and the methods' ``notes``). Every pipeline method gets a fresh
local cluster, as a user's run does (no method inherits warm workers or their
data cache from another), and the training store is read once before any method
(``_read_through``), so every method finds it in the OS page cache (the first
method of a run had read it from disk). The table's "with start-up" column adds what a user
pays before the first step (``startup_seconds`` of each method): for our
pipeline the client's imports (timed in a fresh interpreter) plus that
method's cluster start and worker imports; for a streaming peer its library's
imports and warm-up in a fresh interpreter (torch: ``import torch`` and a
first Adam step; scikit-learn: ``import sklearn.neural_network``). The pipeline's local cluster follows
``--local-mode`` as ``python -m pipeline.train`` does (auto: threads for
data up to 256 MB). In-memory methods get the
rows already loaded from the store. Everything in this process runs under
``threadpool_limits(--threads)``, but for a pipeline on worker threads in this
process: one BLAS thread, as its cluster holds it in ``python -m pipeline.train``.

Tasks: ``digits02`` (scikit-learn digits 0 vs 2, 30 % test, ``random_state=0``
as in the tests), ``mnist-oddeven`` and ``mnist10`` (``shared/data/
mnist70k_uint8.npz``: the first 60 000 images train, or the first ``--n-train``
of them; the last 10 000 test), ``higgs`` (synthetic HIGGS-shaped data from
``benchmarks/higgs_like.py``, ``--n`` rows, default 1 M, held-out ``--test-n``;
stores cached under ``--cache``), ``higgs-real`` (``--higgs-csv HIGGS.csv.gz``
ingested by ``benchmarks/higgs_real.py``).

Writes ``<out>/compare_<task>.json`` (provenance, settings, every curve),
``compare_<task>.md`` (table: final and best test accuracy, time to the target
accuracy, total time) and ``compare_<task>.png`` (accuracy vs time, log x).
``--seeds S1 S2 …`` runs all of it once per seed (ours and every peer reseeded
alike; the data as a ``--seed`` run prepares it: one MNIST/digits split for
every seed, HIGGS-shaped data generated from the seed) and writes those three
files per seed as ``<name>_seed<S>.*``, then ``seeds_<name>.json`` / ``.md`` (named so that a
glob of ``compare_*.json`` finds the per-seed results only, each of the single-seed shape):
per-seed rows and, per method, median, min and max over the seeds of the time to
target and of its ratio to the same seed's best streaming peer, training only and
with start-up.
Exit status 1 when a method failed (its error is in the results), 2 on bad
options.

Run (nothing else heavy at the same time)::

    python benchmarks/compare.py --task digits02
    python benchmarks/compare.py --task mnist-oddeven
    python benchmarks/compare.py --task higgs --n 1000000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from benchmarks.bench_util import CpuWatch, parse_settings, provenance  # noqa: E402
from benchmarks.peers import (INSTALL_HINT, PEERS, BudgetExceeded, Clock, Curve, PeerSettings,  # noqa: E402
                              missing_modules)
from solvers import SOLVERS  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.errors import InputError  # noqa: E402
from storage.data import DataWriter, open_data, write_data  # noqa: E402

MNIST = ROOT.parent / "shared" / "data" / "mnist70k_uint8.npz"
OURS = ("reference", "pipeline")


@dataclass(frozen=True)
class TaskSpec:
    hidden: tuple
    target: float | None      # None: derived from the data (HIGGS-shaped: Bayes accuracy − 0.02)
    epochs: int               # peers' epoch cap
    budget: float             # seconds per method
    about: str


TASKS = {
    "digits02": TaskSpec((100,), 0.99, 200, 120.0, "scikit-learn digits, 0 vs 2 (the paper's SVHN 0-vs-2 analogue)"),
    "mnist-oddeven": TaskSpec((300,), 0.97, 30, 900.0, "MNIST, odd vs even digits"),
    "mnist10": TaskSpec((300,), 0.96, 30, 900.0, "MNIST, 10 classes"),
    "higgs": TaskSpec((300,), None, 10, 1800.0,
                      "synthetic HIGGS-shaped data (28 features, 28-300-1 teacher, Bayes accuracy ~0.78)"),
    "higgs-real": TaskSpec((300,), 0.64, 5, 3600.0,
                           "real HIGGS (UCI), 28 features; target 0.64 is the paper's HIGGS level"),
}


def log(line: str) -> None:
    print(line, flush=True)


# ----------------------------------------------------------------------------- CPU watch
# ----------------------------------------------------------------------------- data
@dataclass
class Task:
    """The data of one task: a training data store, a test store, the test rows in memory."""

    name: str
    train_path: Path
    test_path: Path
    X_test: np.ndarray
    y_test: np.ndarray
    info: dict = field(default_factory=dict)
    _train: tuple | None = None

    def __post_init__(self):
        self.X_test.flags.writeable = False  # shared by every method: none may change it in place
        self.y_test.flags.writeable = False

    def train_store_info(self):
        return open_data(self.train_path)

    def load_train(self):
        """Return (X, y) of the training store in memory (read once; the read is not timed)."""
        if self._train is None:
            t0 = time.perf_counter()
            store = open_data(self.train_path)
            self._train = (store.X[...], store.y[...])
            for a in self._train:
                a.flags.writeable = False
            self.info["load_seconds"] = time.perf_counter() - t0
        return self._train


def _cached_store(path: Path, X, y, source: str, chunk_rows) -> Path:
    """Write (X, y) as a data store at ``path`` unless an identical one (same ``source`` tag) is there.

    A cached store without recorded statistics (written by an older version) is rewritten: the
    pipeline would pay a statistics pass over it that a store written today does not need.
    """
    try:
        have = open_data(path)
        if have.source == source and have.n_samples == len(y) and have.statistics is not None:
            return path
    except InputError:
        pass
    write_data(path, X, y, chunk_rows=chunk_rows, source=source, overwrite=path.exists())
    return path


def _from_store(path: Path):
    store = open_data(path)
    return store.X[...], store.y[...]


def _array_task(name, X_tr, y_tr, X_te, y_te, cache: Path, tag: str, chunk_rows, info) -> Task:
    src = f"benchmarks/compare.py {name} {tag} chunk_rows={chunk_rows}"
    train = _cached_store(cache / f"compare-{name}-{tag}-train.zarr", X_tr, y_tr, src + " train", chunk_rows)
    test = _cached_store(cache / f"compare-{name}-{tag}-test.zarr", X_te, y_te, src + " test", chunk_rows)
    X_test, y_test = _from_store(test)
    return Task(name, train, test, X_test, y_test, info)


def subset_store(src: Path, dst: Path, n: int) -> Path:
    """Stream the first ``n`` rows of a data store into ``dst`` (reused when it already holds them)."""
    store = open_data(src)
    tag = f"first {n} rows of {Path(src).resolve()}"
    try:
        have = open_data(dst)
        if have.source == tag and have.n_samples == n:
            return dst
    except InputError:
        pass
    with DataWriter(dst, store.n_features, chunk_rows=store.chunk_rows, source=tag,
                    feature_names=store.feature_names, label_name=store.label_name,
                    overwrite=dst.exists()) as w:
        for s in range(0, n, store.chunk_rows):
            e = min(s + store.chunk_rows, n)
            w.append(store.X[s:e], store.y[s:e])
    return dst


def prepare_task(args) -> Task:
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    name = args.task
    if name == "digits02":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        keep = np.isin(d.target, [0, 2])
        X_tr, X_te, y_tr, y_te = train_test_split(d.data[keep].astype(np.float32), d.target[keep],
                                                  test_size=0.3, random_state=0)
        if args.n_train:
            X_tr, y_tr = X_tr[:args.n_train], y_tr[:args.n_train]
        return _array_task(name, X_tr, y_tr, X_te, y_te, cache, f"n{len(y_tr)}", args.data_chunk_rows,
                           {"source": "sklearn.datasets.load_digits, classes 0 and 2, "
                                      "train_test_split(test_size=0.3, random_state=0)"})
    if name in ("mnist-oddeven", "mnist10"):
        if not MNIST.exists():
            raise InputError(f"MNIST file not found at {MNIST} (shared/data must sit beside the repository)")
        with np.load(MNIST) as f:
            X, y = f["X"], f["y"]
        n = min(args.n_train or 60_000, 60_000)
        X_tr, y_tr = X[:n].astype(np.float32) / 256, y[:n].astype(np.int64)
        X_te, y_te = X[60_000:].astype(np.float32) / 256, y[60_000:].astype(np.int64)
        if name == "mnist-oddeven":
            y_tr, y_te = y_tr % 2, y_te % 2
        return _array_task(name, X_tr, y_tr, X_te, y_te, cache, f"n{n}", args.data_chunk_rows,
                           {"source": f"{MNIST.name}: rows 0..{n - 1} train, 60000..69999 test, pixels / 256"
                                      + (", label = digit % 2 (1 = odd)" if name == "mnist-oddeven" else "")})
    if name == "higgs":
        return _higgs_task(args, cache)
    if name == "higgs-real":
        from benchmarks.higgs_real import higgs_stores

        if not args.higgs_csv:
            raise InputError("--task higgs-real needs --higgs-csv PATH (HIGGS.csv.gz, 11 M rows, label first)")
        train, test = higgs_stores(args.higgs_csv, cache, seed=args.seed, chunk_rows=args.data_chunk_rows, log=log)
        if args.n_train and args.n_train < open_data(train).n_samples:
            train = subset_store(train, cache / f"higgs-real-first{args.n_train}.zarr", args.n_train)
        X_test, y_test = _from_store(test)
        return Task(name, train, test, X_test, y_test, {"source": str(Path(args.higgs_csv).resolve())})
    raise InputError(f"unknown task {name!r}")


def _synthetic_ok(path: Path, n: int, seed: int, chunk_rows) -> bool:
    import zarr

    try:
        store = open_data(path)
        syn = dict(zarr.open_group(path, mode="r").attrs.get("synthetic") or {})
    except (InputError, OSError, ValueError):
        return False
    return (store.n_samples == n and syn.get("seed") == seed and syn.get("generator") == "benchmarks/higgs_like.py"
            and (chunk_rows is None or store.chunk_rows == min(chunk_rows, n)) and store.statistics is not None)


def _higgs_task(args, cache: Path) -> Task:
    import zarr

    from benchmarks import higgs_like

    n = args.n_train or 1_000_000
    test_n = args.test_n
    train = cache / f"higgs-{n}-seed{args.seed}.zarr"
    test = cache / f"higgs-test-{test_n}-seed{args.seed}.zarr"
    if not (_synthetic_ok(train, n, args.seed, args.data_chunk_rows)
            and _synthetic_ok(test, test_n, args.seed, args.data_chunk_rows)):
        log(f"generating {train} ({n} rows) and {test} ({test_n} rows) with benchmarks/higgs_like.py ...")
        gen = ["--n", str(n), "--out", str(train), "--test-n", str(test_n), "--test-out", str(test),
               "--seed", str(args.seed), "--overwrite"]
        if args.data_chunk_rows:
            gen += ["--chunk-rows", str(args.data_chunk_rows)]
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()) as out:  # its JSON summary is in the store's attrs
            higgs_like.main(gen)
        for line in out.getvalue().splitlines():
            if line.startswith(("train:", "test:")):
                log("  " + line)
    syn_train = dict(zarr.open_group(train, mode="r").attrs["synthetic"])
    syn_test = dict(zarr.open_group(test, mode="r").attrs["synthetic"])
    X_test, y_test = _from_store(test)
    return Task("higgs", train, test, X_test, y_test, {
        "source": "benchmarks/higgs_like.py", "seed": args.seed,
        "bayes_accuracy_train": syn_train["bayes_accuracy"], "bayes_accuracy_test": syn_test["bayes_accuracy"],
        "bayes_rule_test_accuracy": syn_test["bayes_rule_empirical_accuracy"],
        "teacher": syn_train.get("teacher"), "temperature": syn_train.get("temperature")})


# ----------------------------------------------------------------------------- our methods
def _state_width(config: TrainConfig, n_features: int, n_classes: int) -> int:
    """Return the values per sample of the per-sample state (every z_l and λ, as ADMM keeps)."""
    from solvers.layers import build_layers

    out = 1 if n_classes == 2 else n_classes
    layers = build_layers(config.layer_specs(), n_features, out, config.input_shape)
    return sum(layer.n_out for layer in layers) + out


def run_reference(task: Task, config: TrainConfig, curve: Curve, chunk_rows) -> dict:
    """fit_in_memory with a callback; the test-scoring time inside it is subtracted (see module doc)."""
    from solvers.reference import fit_in_memory

    X, y = task.load_train()
    marks = []
    t_start = time.perf_counter()

    def callback(record):
        now = time.perf_counter()
        marks.append((now, dict(record)))
        log(f"  {curve.method:<24} iter {record['iteration']:>4}  {now - t_start:9.2f} s wall  "
            f"test acc {record.get('test_accuracy', float('nan')):.4f}")
        if curve.over(now - t_start):
            raise BudgetExceeded

    result, error, stopped = None, None, False
    try:
        result = fit_in_memory(X, y, config, chunk_rows=chunk_rows, X_test=task.X_test, y_test=task.y_test,
                               callback=callback)
    except BudgetExceeded:
        stopped = True
    except Exception as exc:  # keep the iterations done so far, report the failure
        error = exc
    gaps = [max(0.0, marks[k][0] - marks[k - 1][0] - marks[k][1]["seconds"]) for k in range(1, len(marks))]
    if gaps:
        first_eval, how = statistics.median(gaps), "median of the later scoring gaps"
    elif result is not None:
        t = time.perf_counter()
        result.network.score(task.X_test, task.y_test)
        first_eval, how = time.perf_counter() - t, "timed once after the fit"
    else:
        first_eval, how = 0.0, "not measurable (stopped after one iteration): included"
    excluded = first_eval
    for k, (t, rec) in enumerate(marks):
        if k:
            excluded += gaps[k - 1]
        point = {"step": rec["iteration"], "seconds": t - t_start - excluded, "wall_seconds": t - t_start,
                 "test_accuracy": float(rec["test_accuracy"]), "iteration_seconds": float(rec["seconds"])}
        if "train_accuracy" in rec:
            point["train_accuracy"] = float(rec["train_accuracy"])
        curve.points.append(point)
    notes = {"config": config.to_dict(), "chunk_rows": chunk_rows, "stopped_at_time_budget": stopped,
             "scoring_seconds_subtracted": excluded, "first_scoring_estimate": how}
    if error is not None:
        raise MethodFailed(error, notes)
    return notes


class MethodFailed(Exception):
    def __init__(self, error, notes):
        super().__init__(str(error))
        self.error, self.notes = error, notes


def _reported_iteration(line: str) -> int | None:
    """Return the iteration of a driver's per-iteration report line (its first field), else None."""
    fields = line.split()
    if len(fields) < 3 or not fields[0].isdigit():
        return None
    try:
        float(fields[1])  # the iteration's seconds
    except ValueError:
        return None
    return int(fields[0])


def _committed(store) -> int | None:
    """Return the run store's committed iteration, None before the store exists."""
    from storage.runstore import RunStore

    try:
        return RunStore.open(store).committed_iteration()
    except InputError:  # the store is not created yet
        return None


def _manifest_iteration(store) -> int | None:
    """Return the iteration manifest.json names (unchecked: one small read, well under a millisecond), else None."""
    from storage.runstore import MANIFEST

    try:
        return int(json.loads((Path(store) / MANIFEST).read_text())["iteration"])
    except (OSError, ValueError, KeyError, TypeError):  # no store or manifest yet, or one being replaced
        return None


def _wait_for_commit(store, iteration: int, read=_manifest_iteration, timeout: float = 120.0) -> None:
    """Return once the run store's manifest names ``iteration`` or a later one (a background commit written), or after ``timeout`` s."""
    deadline = time.perf_counter() + timeout
    while (read(store) or -1) < iteration and time.perf_counter() < deadline:
        time.sleep(0.001)


def run_pipeline(client, task: Task, config: TrainConfig, curve: Curve, run_dir: Path, chunk_rows) -> dict:
    """pipeline.training.train on the cluster; each committed network is scored with the clock stopped."""
    from pipeline.training import train
    from pipeline.model import load_network
    from storage.runstore import RunStore

    store = run_dir / f"{curve.method}.zarr"
    clock = Clock()
    lines = []

    last = [0]
    workers_cpu0 = _workers_cpu(client)

    def report(line):
        """Called by train() after each line it reports: score a newly committed iteration, clock stopped.

        The wait for the reported iteration's commit (Gauss-Newton commits in the background) runs on the
        clock, with a cheap look at manifest.json: the point is stamped once the model exists on disk, and
        the commit's CPU is in it. The harness's other look-ups (the workers' CPU, the checked committed
        iteration) and the scoring run with the clock stopped, as the peers' scoring does. Lines that are
        not an iteration's are not looked at (each look cost 10-100 ms on the clock before a first point at ~1 s).
        """
        lines.append(line)
        reported = _reported_iteration(line)
        if reported is None:
            return
        _wait_for_commit(store, reported)  # clock running
        seconds, cpu = clock.now(), clock.cpu()
        with clock.paused():
            cpu += _workers_cpu(client) - workers_cpu0  # before the scoring, as the peers' cpu_seconds
            k = _committed(store)
            if k is None or k <= last[0]:
                return
            last[0] = k
            accuracy = load_network(store).score(task.X_test, task.y_test)
        curve.add(k, seconds, accuracy, wall_seconds=clock.wall(), cpu_seconds=cpu)
        if curve.over(seconds):
            raise BudgetExceeded

    notes = {"config": config.to_dict(), "chunk_rows": chunk_rows, "run_store": str(store)}
    try:
        clock.start()
        try:
            train(client, store=str(store), data=str(task.train_path), config=config, chunk_rows=chunk_rows,
                  overwrite=True, report=report)
        except BudgetExceeded:
            notes["stopped_at_time_budget"] = True
        except Exception as exc:
            notes["report"] = lines
            raise MethodFailed(exc, notes) from exc
        if config.iterations and not curve.points:
            raise MethodFailed(RuntimeError("train() returned without reporting a committed iteration"), notes)
        try:
            history = {h["iteration"]: h for h in RunStore.open(store).manifest()["history"]}
            for p in curve.points:
                h = history.get(p["step"], {})
                for key, name in (("train_accuracy", "train_accuracy"), ("seconds", "iteration_seconds")):
                    if key in h:
                        p[name] = float(h[key])
            notes["state_chunk_rows"] = RunStore.open(store).chunk_rows
        except Exception as exc:  # the history is a nice-to-have; the curve is already recorded
            notes["history_error"] = repr(exc)
        notes["report"] = lines[:2]
    finally:
        shutil.rmtree(store, ignore_errors=True)
    return notes


def _read_through(path) -> float:
    """Read every file under ``path`` once (the OS page cache then holds it); return the seconds it took.

    Without it the first method of a run read the store from disk and the later ones from memory: on
    HIGGS-shaped 1M the first of two identical first passes took 4.0 s, the second 0.7 s.
    """
    t = time.perf_counter()
    for f in sorted(Path(path).rglob("*")):
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass
    return time.perf_counter() - t


def _own_cpu_seconds() -> tuple[int, float]:
    import psutil as ps

    t = ps.Process().cpu_times()
    return os.getpid(), t.user + t.system


def _workers_cpu(client) -> float:
    """Return the CPU seconds (user + system) of the cluster's worker processes other than this one."""
    try:
        return sum(cpu for pid, cpu in client.run(_own_cpu_seconds).values() if pid != os.getpid())
    except Exception:  # noqa: BLE001 -- no figure rather than no run
        return float("nan")


# ----------------------------------------------------------------------------- running methods
def summarize(result: dict, target: float | None) -> dict:
    pts = sorted(result["points"], key=lambda p: p["seconds"])
    accs = [p["test_accuracy"] for p in pts]
    result["final_accuracy"] = result["points"][-1]["test_accuracy"] if pts else None
    result["best_accuracy"] = max(accs) if accs else None
    result["total_seconds"] = max(p["seconds"] for p in pts) if pts else None
    hit = next((p for p in pts if target is not None and p["test_accuracy"] >= target), None)
    result["time_to_target"] = None if hit is None else hit["seconds"]
    result["cpu_to_target"] = None if hit is None else hit.get("cpu_seconds")
    return result


def run_method(method: str, family: str, description: str, fn, budget, threads: int) -> dict:
    curve = Curve(method, budget, log=log)
    result = {"method": method, "family": family, "description": description, "status": "ok", "points": curve.points}
    log(f"{method}: {description}")
    with CpuWatch() as cpu, threadpool_limits(threads):
        try:
            result["notes"] = fn(curve) or {}
            if result["notes"].get("stopped_at_time_budget"):
                result["status"] = "budget"
        except BudgetExceeded:
            result["status"] = "budget"
        except MethodFailed as exc:
            result.update(status="failed", error=f"{type(exc.error).__name__}: {exc.error}", notes=exc.notes)
        except Exception as exc:
            result.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc(limit=6))
    result["wall_seconds"] = cpu.wall
    result["other_cpu_seconds"] = cpu.other
    if result["status"] == "failed":
        log(f"{method}: FAILED: {result['error']}")
    elif result["status"] == "budget":
        log(f"{method}: stopped at the time budget ({budget:g} s)")
    return result


def skipped(method, family, description, reason) -> dict:
    log(f"{method}: skipped: {reason}")
    return {"method": method, "family": family, "description": description, "status": "skipped",
            "reason": reason, "points": []}


def fits_in_memory(nbytes: float) -> bool:
    return nbytes < 0.6 * psutil.virtual_memory().total


# ----------------------------------------------------------------------------- output
STYLE = {"ours-reference": ("-", "o"), "ours-pipeline": ("-", "s"), "stream": ("--", "^"),
         "memory": (":", "v"), "floor": ("-.", "x")}


def plot(res: dict, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"skipped: pip install -e '.[bench]' (matplotlib missing), no {path.name}"
    target = res["settings"]["target"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    curves = [m for m in res["methods"] if m["points"]]
    best = [m["best_accuracy"] for m in curves]
    for ax, zoom in zip(axes, (False, True)):
        for i, m in enumerate(curves):
            pts = m["points"]  # in the order recorded (restart methods: by max_iter)
            x = [max(p["seconds"], 1e-3) for p in pts]
            y = [p["test_accuracy"] for p in pts]
            ls, marker = STYLE.get(m["family"], ("-", "."))
            ax.plot(x, y, ls, marker=marker, ms=3, lw=2 if m["family"].startswith("ours") else 1.3,
                    color=f"C{i % 10}", label=m["method"])
        if target is not None:
            ax.axhline(target, color="k", lw=0.8, ls="--", label=f"target {target:.3f}")
        bayes = res["settings"]["data"].get("bayes_accuracy_test")
        if bayes:
            ax.axhline(bayes, color="gray", lw=0.8, ls=":", label=f"Bayes {bayes:.3f}")
        ax.set_xscale("log")
        ax.set_xlabel("training wall-clock seconds (test scoring excluded)")
        ax.set_ylabel("test accuracy")
        ax.grid(True, which="both", alpha=0.3)
        if zoom and best:
            top = max(best + [target or 0])
            low = min([b for b in best] + [target if target is not None else top]) - 0.02
            ax.set_ylim(max(0.0, low), min(1.0, top + 0.01))
            ax.set_title("zoom")
        else:
            ax.set_title(f"{res['settings']['task']}: test accuracy vs time")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _fmt(x, spec=".4f", none="—"):
    return none if x is None else format(x, spec)


def table(res: dict) -> list[str]:
    """The results table (markdown lines), then one line per skipped or failed method."""
    target = res["settings"]["target"]
    start = res["settings"].get("cluster_start_seconds")
    out = [f"| method | family | final test acc | best test acc | time to {_fmt(target, '.3f')} (s) | "
           "with start-up (s) | CPU s to target | total time (s) | points | other CPU s | status |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in res["methods"]:
        if m["status"] == "skipped":
            continue
        status = "stopped at time budget" if m["status"] == "budget" else m["status"]
        out.append(f"| {m['method']} | {m['family']} | {_fmt(m.get('final_accuracy'))} | "
                   f"{_fmt(m.get('best_accuracy'))} | {_fmt(m.get('time_to_target'), '.2f', 'not reached')} | "
                   f"{_with_start(m, start)} | {_fmt(m.get('cpu_to_target'), '.2f')} | "
                   f"{_fmt(m.get('total_seconds'), '.2f')} | {len(m['points'])} | "
                   f"{_fmt(None if m.get('other_cpu_seconds') is None else max(0.0, m['other_cpu_seconds']), '.1f')} | "
                   f"{status} |")
    extra = [m for m in res["methods"] if m["status"] in ("skipped", "failed")]
    if extra:
        out.append("")
        for m in extra:
            why = m.get("reason") if m["status"] == "skipped" else m.get("error")
            out.append(f"- `{m['method']}` {m['status']}: {why}")
    return out


# What a user pays before a method's first step, measured in a fresh interpreter (:func:`startup_seconds`):
# the client's imports (ours: plus its own fresh cluster's start and the workers' imports, timed per method)
PIPELINE_STARTUP = "import pipeline.training, pipeline.cluster, pipeline.model"
PEER_STARTUP = {
    "sklearn-stream": "import sklearn.neural_network",
    "dask-ml": "import dask_ml.wrappers, sklearn.neural_network",
    # torch also imports much of itself lazily at the first optimizer step (the peers' untimed warm-up)
    "torch-adam": "import torch; torch.optim.Adam(torch.nn.Linear(2, 1).parameters()).step()",
    "torch-cnn": "import torch; torch.optim.Adam(torch.nn.Linear(2, 1).parameters()).step()",
}


def startup_seconds(code: str) -> float:
    """Return the seconds a fresh Python interpreter (this one's path and environment) takes to run ``code``."""
    probe = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env,
                             check=True)
        return float(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return float("nan")


def _with_start(m: dict, start) -> str:
    """Time to target plus the method's start-up (``startup_seconds``: our fresh cluster and imports, a peer's imports).

    Results files written before start-ups were measured per method add the one shared cluster start ``start``
    to our pipeline runs and nothing to the peers.
    """
    t = m.get("time_to_target")
    if t is None:
        return "not reached"
    if "startup_seconds" in m:
        return f"{t + m['startup_seconds']:.2f}"
    start = start if isinstance(start, (int, float)) else 0.0
    return f"{t + start:.2f}" if m["family"] == "ours-pipeline" else f"{t:.2f}"


def markdown(res: dict) -> str:
    s = res["settings"]
    p = res["provenance"]
    target = s["target"]
    d = s["data"]
    out = [f"# Time to accuracy: `{s['task']}`", "",
           f"Command: `{p['command']}`  ", f"Date: {p['date']}, host {p['host']}, {p['cpus']} CPUs, "
           f"Python {p['python']}", "",
           f"Task: {s['about']}. {d['n_train']:,} training rows × {d['n_features']} features, "
           f"{d['n_test']:,} test rows, classes {d['classes']}; data store `{d['train_store']}` "
           f"({d['data_chunk_rows']} rows per chunk). Source: {d.get('source', '')}.", "",
           f"Network {s['n_features_in']}-{'-'.join(map(str, s['hidden']))}-{s['n_outputs']} for every "
           f"method but the floor; our solvers: {', '.join(s['solvers']) or 'none'} "
           f"({s['iterations']} iterations, TrainConfig defaults{', overrides ' + json.dumps(s['overrides']) if s['overrides'] else ''}); "
           f"peers: at most {s['epochs']} epochs, minibatches of {s['batch_size']}; time budget "
           f"{s['time_budget']:g} s per method; {s['threads']} threads in this process, pipeline on "
           f"{_local_mode_text(s)}.", ""]
    if d.get("bayes_accuracy_test"):
        out += [f"Bayes accuracy of the test rows E[max(p, 1−p)] = {d['bayes_accuracy_test']:.4f}; "
                f"target = Bayes − 0.02 unless --target.", ""]
    out += ["Time = training wall-clock seconds from the method's start (statistics pass, initialisation, "
            "store reads, pipeline commits included; test scoring excluded). *time to target*: first "
            f"recorded point with test accuracy ≥ {_fmt(target, '.3f')}. `mlp-lbfgs` and `logreg` points "
            "are independent runs with max_iter = 1, 2, 4, …", "", *table(res)]
    configs = s.get("configs") or {}
    if any(c.get("layers") or tuple(c["hidden"]) != tuple(s["hidden"]) for c in configs.values()):
        out += ["", "Our runs' layers:", ""]
        out += [f"- `{label}`: solver {c['solver']}, layers "
                f"{TrainConfig.from_dict(c).describe_layers()}" for label, c in configs.items()]
    name = s.get("name") or f"compare_{s['task']}"
    out += ["", f"Plot: `{name}.png`; every point: `{name}.json`.", ""]
    return "\n".join(out)


def pipeline_processes(local_mode: str, data_bytes: int, solver: str) -> bool:
    """Return whether a solver's local cluster runs worker processes: the choice ``python -m pipeline.train`` makes.

    The consensus solvers' Python minibatch loops get processes (on two threads of one process they share
    the GIL: HIGGS-shaped 1M's first pass took 12.4 s on threads at load ~45 against 1.1 s on processes).
    """
    from pipeline.cluster import local_processes
    from pipeline.train import _gil_bound

    return local_processes(local_mode, data_bytes, gil_bound=_gil_bound(solver))


def _local_mode_text(s: dict) -> str:
    """Return how the pipeline's local cluster ran: worker threads or processes (per solver when they differ)."""
    def text(processes):
        return f"{s['workers']} {'worker threads' if processes is False else 'single-threaded worker processes'}"
    modes = s.get("local_processes")
    if not isinstance(modes, dict):  # results of earlier versions: one mode for every solver
        return text(modes)
    if len(set(modes.values())) <= 1:
        return text(next(iter(modes.values()), None))
    return "; ".join(f"{label}: {text(p)}" for label, p in modes.items())


# ----------------------------------------------------------------------------- several seeds
DATA_PER_SEED = {  # what a seed changes in the data (our solvers and every peer are reseeded alike on every task)
    "digits02": "one split for every seed (train_test_split random_state=0)",
    "mnist-oddeven": "one split for every seed (the first training images, the last 10,000 test)",
    "mnist10": "one split for every seed (the first training images, the last 10,000 test)",
    "higgs": "data generated from the seed (benchmarks/higgs_like.py --seed S: train and test stores per seed)",
    "higgs-real": "train/test split drawn with the seed (benchmarks/higgs_real.py)",
}


def _startup_time(m: dict) -> float | None:
    """Return a method's time to target with its start-up (as the single-seed table's column), None if not reached."""
    t = m.get("time_to_target")
    return None if t is None else t + (m.get("startup_seconds") or 0.0)


def seed_rows(result: dict) -> list[dict]:
    """Return one row per method run on one seed: time to target (training only and with start-up) and the ratios
    of both to the seed's best streaming peer (family ``stream``, the one with the least training time to target;
    its own start-up for the second ratio, as the integrator's single-seed tables take it). Skipped methods: none."""
    seed = result["settings"]["seed"]
    stream = [m for m in result["methods"] if m["family"] == "stream" and m.get("time_to_target") is not None]
    best = min(stream, key=lambda m: m["time_to_target"]) if stream else None
    rows = []
    for m in result["methods"]:
        if m["status"] == "skipped":
            continue
        t, ts = m.get("time_to_target"), _startup_time(m)
        rows.append({"seed": seed, "method": m["method"], "family": m["family"], "status": m["status"],
                     "final_accuracy": m.get("final_accuracy"), "best_accuracy": m.get("best_accuracy"),
                     "time_to_target": t, "with_startup": ts,
                     "best_peer": best and best["method"],
                     "ratio": None if t is None or best is None else t / best["time_to_target"],
                     "ratio_with_startup": None if ts is None or best is None else ts / _startup_time(best)})
    return rows


def _spread(values: list, keep=None) -> dict:
    """Median, min and max over seeds, a seed where the target was not reached (None) counting as +inf
    (so the median is "not reached" once half the seeds miss it); ``reached``: seeds that reached it.
    ``keep``: per seed, False to leave it out (a ratio on a seed where no streaming peer reached the target)."""
    values = [v for v, k in zip(values, keep or [True] * len(values)) if k]
    if not values:
        return {"median": None, "min": None, "max": None, "reached": 0, "seeds": 0}
    xs = [float("inf") if v is None else float(v) for v in values]
    fin = lambda x: None if x == float("inf") else x  # noqa: E731
    return {"median": fin(statistics.median(xs)), "min": fin(min(xs)), "max": fin(max(xs)),
            "reached": sum(v is not None for v in values), "seeds": len(values)}


def seeds_summary(runs: list[dict], name: str) -> dict:
    """Return the several-seed summary of single-seed results ``runs``: every per-seed row and, per method, the
    :func:`_spread` of its time to target (training only, with start-up) and of its ratios to the best streaming peer."""
    rows = [r for res in runs for r in seed_rows(res)]
    first = runs[0]["settings"]
    summary = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        summary[method] = {"family": mine[0]["family"], "seeds": [r["seed"] for r in mine],
                           "final_accuracy": _spread([r["final_accuracy"] for r in mine]),
                           **{key: _spread([r[key] for r in mine]) for key in ("time_to_target", "with_startup")},
                           **{key: _spread([r[key] for r in mine], [r["best_peer"] is not None for r in mine])
                              for key in ("ratio", "ratio_with_startup")}}
    return {"provenance": provenance(),
            "settings": {"task": first["task"], "name": f"seeds_{name}", "about": first["about"],
                         "target": first["target"], "seeds": [res["settings"]["seed"] for res in runs],
                         "per_seed_results": [res["settings"]["name"] for res in runs],
                         "data_per_seed": DATA_PER_SEED.get(first["task"], ""), "solvers": first["solvers"],
                         "ours": first["ours"], "peers": first["peers"], "iterations": first["iterations"],
                         "overrides": first["overrides"], "time_budget": first["time_budget"],
                         "reseeded": "our solvers (TrainConfig.seed) and every peer (PeerSettings.seed) alike",
                         "best_peer": "per seed, the streaming peer with the least training time to target"},
            "per_seed": rows, "summary": summary}


def seeds_table(res: dict) -> list[str]:
    """The summary table over seeds (markdown lines): per method, median [min, max] of each figure."""
    def cell(sp, spec):
        if sp["seeds"] == 0:
            return "no peer reached it"
        if sp["reached"] == 0:
            return "not reached"
        return (f"{_fmt(sp['median'], spec, 'not reached')} [{_fmt(sp['min'], spec, 'not reached')}, "
                f"{_fmt(sp['max'], spec, 'not reached')}]")
    target = _fmt(res["settings"]["target"], ".3f")
    out = [f"| method | family | reached {target} | time to {target} (s) | with start-up (s) | ratio to best peer | "
           "ratio with start-up | final test acc |", "|---|---|---|---|---|---|---|---|"]
    for method, s in res["summary"].items():
        sp = s["time_to_target"]
        out.append(f"| {method} | {s['family']} | {sp['reached']}/{sp['seeds']} | {cell(sp, '.2f')} | "
                   f"{cell(s['with_startup'], '.2f')} | {cell(s['ratio'], '.2f')} | "
                   f"{cell(s['ratio_with_startup'], '.2f')} | {cell(s['final_accuracy'], '.4f')} |")
    return out


def seeds_markdown(res: dict) -> str:
    s, p = res["settings"], res["provenance"]
    target = _fmt(s["target"], ".3f")
    out = [f"# Time to accuracy over seeds: `{s['task']}`", "",
           f"Command: `{p['command']}`  ", f"Date: {p['date']}, host {p['host']}, {p['cpus']} CPUs, "
           f"Python {p['python']}", "",
           f"Task: {s['about']}; seeds {', '.join(map(str, s['seeds']))}: {s['reseeded']} reseeded per seed; "
           f"data: {s['data_per_seed']}. Per seed, every method ran as in a single `--seed` run (its files: "
           + ", ".join(f"`{n}.md`" for n in s["per_seed_results"]) + ").", "",
           f"Summary: median [min, max] over the seeds; a seed that did not reach {target} counts as +inf "
           "(the median says \"not reached\" once half the seeds miss). Ratio: time to target over the same "
           "seed's best streaming peer's (the streaming peer with the least training time to target; with "
           "start-up: both with their start-up); seeds where no streaming peer reached the target are left out of "
           "the ratios.", "", *seeds_table(res), "",
           "Per seed:", "",
           f"| seed | method | time to {target} (s) | with start-up (s) | ratio | ratio with start-up | best peer | "
           "final test acc | status |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["per_seed"]:
        out.append(f"| {r['seed']} | {r['method']} | {_fmt(r['time_to_target'], '.2f', 'not reached')} | "
                   f"{_fmt(r['with_startup'], '.2f', 'not reached')} | {_fmt(r['ratio'], '.2f', '—')} | "
                   f"{_fmt(r['ratio_with_startup'], '.2f', '—')} | {r['best_peer'] or '—'} | "
                   f"{_fmt(r['final_accuracy'])} | {r['status']} |")
    return "\n".join(out + [""])


# ----------------------------------------------------------------------------- command line
def our_configs(solvers, variants, base: dict) -> dict:
    """Return label → TrainConfig: one per solver, then one per ``LABEL:KEY=VALUE;KEY=VALUE`` variant."""
    configs = {s: TrainConfig(**{**base, "solver": s}) for s in solvers}
    for variant in variants or []:
        label, _, settings = variant.partition(":")
        if not label or label in configs:
            raise InputError(f"--variant {variant!r}: expected a new LABEL:KEY=VALUE;KEY=VALUE")
        configs[label] = TrainConfig(**{**base, **parse_settings(settings.split(";") if settings else [],
                                                              f"--variant {label}:")})
    return configs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/compare.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="peers: " + ", ".join(f"{k} ({v.description})" for k, v in PEERS.items()))
    p.add_argument("--task", required=True, choices=list(TASKS))
    p.add_argument("--solvers", nargs="*", default=None, metavar="NAME",
                   help=f"our solvers (default: all of solvers.SOLVERS: {', '.join(SOLVERS)}; none with --variant; "
                        "auto: what the default chooses for the data)")
    p.add_argument("--variant", action="append", metavar="LABEL:KEY=VALUE;…",
                   help="one more of our runs with its own TrainConfig settings (repeatable), e.g. "
                        "'admm-conv:solver=admm;layers=conv:8x5x5:s2,dense:100'; its methods are LABEL-reference "
                        "and LABEL-pipeline")
    p.add_argument("--name", default=None, help="stem of the results files (default compare_<task>)")
    p.add_argument("--ours", nargs="*", default=list(OURS), metavar="RUNNER",
                   help="which of our runners: reference, pipeline (default both; none for neither)")
    p.add_argument("--peers", nargs="*", default=["all"], metavar="PEER",
                   help="peers to run (default all; none for no peer): " + ", ".join(PEERS))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results directory")
    p.add_argument("--cache", default=None,
                   help="directory for data stores and run stores (default /work/bench, else a temp dir)")
    p.add_argument("--n-train", "--n", dest="n_train", type=int, default=None,
                   help="training rows: a subset for digits/MNIST/HIGGS-real; the size of the synthetic "
                        "HIGGS task (default 1000000)")
    p.add_argument("--test-n", type=int, default=200_000, help="held-out rows of the synthetic HIGGS task")
    p.add_argument("--higgs-csv", default=None, help="HIGGS.csv.gz for --task higgs-real")
    p.add_argument("--hidden", default=None, help="hidden widths, e.g. 300 or 300,100 (default per task)")
    p.add_argument("--iterations", type=int, default=None,
                   help=f"iterations of our solvers (default TrainConfig's, {TrainConfig().iterations})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="another TrainConfig setting for our solvers (repeatable), e.g. --set gamma=100")
    p.add_argument("--epochs", type=int, default=None, help="epoch cap of the peers (default per task)")
    p.add_argument("--batch-size", type=int, default=200, help="peers' minibatch rows (default 200)")
    p.add_argument("--lbfgs-max-iter", type=int, default=256, help="largest max_iter of mlp-lbfgs (default 256)")
    p.add_argument("--logreg-max-iter", type=int, default=1024, help="largest max_iter of logreg (default 1024)")
    p.add_argument("--time-budget", type=float, default=None, help="seconds per method (default per task)")
    p.add_argument("--target", type=float, default=None, help="target test accuracy (default per task)")
    seed = p.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=int, default=0,
                   help="seed of our solvers and of every peer alike (and of the HIGGS data: see --seeds; default 0)")
    seed.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                   help="run everything once per seed (instead of --seed): per seed the files of a --seed run, "
                        "<name>_seed<S>.json/.md/.png, then seeds_<name>.json/.md: per-seed rows and, per method, the "
                        "median, min and max of the time to target and of its ratio to the same seed's best streaming "
                        "peer (training only and with start-up). MNIST and digits keep their one split whatever the "
                        "seed; the synthetic HIGGS data is generated from the seed and HIGGS-real is split by it, "
                        "as a --seed run does")
    p.add_argument("--threads", type=int, default=2, help="BLAS/torch threads in this process (default 2)")
    p.add_argument("--workers", type=int, default=2, help="pipeline worker processes or threads (default 2)")
    p.add_argument("--local-mode", choices=("auto", "threads", "processes"), default="auto",
                   help="pipeline's local cluster, as python -m pipeline.train --local-mode (default auto: threads "
                        "for data up to 256 MB)")
    p.add_argument("--data-chunk-rows", type=int, default=None,
                   help="rows per chunk of the data stores written for the task (default ~32 MB chunks)")
    p.add_argument("--pipeline-chunk-rows", type=int, default=None,
                   help="state chunk rows of the pipeline (default: its own, at least 3 chunks per worker thread)")
    p.add_argument("--reference-chunk-rows", type=int, default=None,
                   help="chunk rows of the in-memory reference (default: the data store's chunk rows)")
    return p


def _default_cache() -> Path:
    bench = Path("/work/bench")
    if bench.is_dir() and os.access(bench, os.W_OK):
        return bench
    return Path(tempfile.gettempdir()) / "admm-dask-bench"


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("numpy", "scipy", "dask", "distributed", "zarr", "scikit-learn", "dask-ml", "torch", "threadpoolctl"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    spec = TASKS[args.task]
    solvers = (list(SOLVERS) if not args.variant else []) if args.solvers is None else list(args.solvers)
    unknown = [s for s in solvers if s not in SOLVERS and s != "auto"]
    if unknown:
        parser.error(f"unknown solver(s) {unknown}; available: auto, {', '.join(SOLVERS)}")
    ours = [] if args.ours in (["none"], []) else list(args.ours)
    if any(o not in OURS for o in ours):
        parser.error(f"--ours takes {list(OURS)} or none")
    peers = list(PEERS) if args.peers == ["all"] else ([] if args.peers in (["none"], []) else list(args.peers))
    if any(p not in PEERS for p in peers):
        parser.error(f"unknown peer(s) {[p for p in peers if p not in PEERS]}; available: {list(PEERS)}")
    args.cache = args.cache or str(_default_cache())
    seeds = [args.seed] if args.seeds is None else list(args.seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        parser.error(f"--seeds takes one or more distinct seeds, got {seeds}")
    name = args.name or f"compare_{args.task}"
    if len(seeds) == 1:  # today's single-seed call: the same files, the same shape
        args.seed = seeds[0]
        return run_seed(args, spec, solvers, ours, peers)[0]
    codes, runs = [], []
    for seed in seeds:
        log(f"===== seed {seed} ({len(runs) + 1} of {len(seeds)}) =====")
        code, result = run_seed(argparse.Namespace(**{**vars(args), "seed": seed, "name": f"{name}_seed{seed}"}),
                                spec, solvers, ours, peers, seeds=seeds)
        if result is None:  # bad options: the same for every seed
            return code
        codes.append(code)
        runs.append(result)
    summary = seeds_summary(runs, name)
    base = Path(args.out) / f"seeds_{name}"
    base.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=_json_default))
    base.with_suffix(".md").write_text(seeds_markdown(summary))
    log("")
    for line in seeds_table(summary):
        log(line)
    log(f"wrote {base}.json, {base}.md (per seed: {name}_seed<S>.json/.md/.png)")
    return max(codes)


def run_seed(args, spec: TaskSpec, solvers, ours, peers, seeds=None) -> tuple[int, dict | None]:
    """Run every method on one seed (``args.seed``) and write ``<out>/<name>.json/.md/.png``: (exit status, results).

    The seed reseeds our solvers (``TrainConfig.seed``) and every peer (``PeerSettings.seed``) alike; the data is
    prepared as for a single ``--seed`` call (:data:`DATA_PER_SEED`). ``seeds``: the whole ``--seeds`` list of a
    multi-seed call (recorded in the settings), None for a single-seed call (the settings as they were).
    """
    try:
        hidden = tuple(int(h) for h in args.hidden.split(",")) if args.hidden else spec.hidden
        overrides = parse_settings(args.set)
        iterations = args.iterations if args.iterations is not None else TrainConfig().iterations
        configs = our_configs(solvers, args.variant,
                              {"hidden": hidden, "iterations": iterations, "seed": args.seed, **overrides})
        task = prepare_task(args)
    except (InputError, TypeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2, None
    store = task.train_store_info()
    classes = np.unique(store.y[...])
    target = args.target if args.target is not None else (
        spec.target if spec.target is not None else round(task.info["bayes_accuracy_test"] - 0.02, 3))
    budget = args.time_budget if args.time_budget is not None else spec.budget
    epochs = args.epochs if args.epochs is not None else spec.epochs
    cnn = next((c for c in configs.values() if c.layers), None)  # torch-cnn builds the first conv network
    settings = PeerSettings(hidden=hidden, epochs=epochs, batch_size=args.batch_size,
                            lbfgs_max_iter=args.lbfgs_max_iter, logreg_max_iter=args.logreg_max_iter,
                            threads=args.threads, seed=args.seed, layers=cnn.layers if cnn else "",
                            input_shape=cnn.input_shape if cnn else ())
    n_out = 1 if len(classes) == 2 else len(classes)
    ref_chunk = args.reference_chunk_rows or store.chunk_rows
    pipe_chunks = {label: args.pipeline_chunk_rows for label in configs}  # None: the pipeline's own default
    log(f"task {args.task}: {store.n_samples} training rows x {store.n_features} features "
        f"({store.chunk_rows} rows per chunk), {len(task.y_test)} test rows, {len(classes)} classes, "
        f"hidden {hidden}, target {target:.3f}, budget {budget:g} s per method")

    methods = []
    page_cache_seconds = _read_through(task.train_path)
    log(f"read the training store once ({page_cache_seconds:.1f} s): every method finds it in the page cache")
    if "reference" in ours:
        for s, config in configs.items():
            state_bytes = store.n_samples * _state_width(config, store.n_features, len(classes)) * 4 * 4
            name = f"{s}-reference"
            desc = f"{s}: solvers.reference.fit_in_memory, in memory"
            if not fits_in_memory(state_bytes + store.n_samples * store.n_features * 4):
                methods.append(skipped(name, "ours-reference", desc,
                                       f"state (~{state_bytes / 1e9:.1f} GB) does not fit in memory; "
                                       "the pipeline trains out of core"))
                continue
            methods.append(run_method(name, "ours-reference", desc,
                                      lambda c, config=config: run_reference(task, config, c, ref_chunk),
                                      budget, args.threads))
    cluster_seconds = local_mode_processes = None
    if "pipeline" in ours and configs:
        from pipeline.cluster import connect

        run_dir = Path(args.cache) / f"compare-runs-{os.getpid()}"
        run_dir.mkdir(parents=True, exist_ok=True)
        client_import = startup_seconds(PIPELINE_STARTUP)
        cluster_seconds = {}
        try:
            local_mode_processes = {}
            for s, config in configs.items():
                solver = config.choose_solver(store.n_samples, args.workers,  # auto: as python -m pipeline.train
                                              shared_gil=args.local_mode == "threads")[0].solver
                processes = local_mode_processes[s] = pipeline_processes(args.local_mode, 4 * store.n_samples *
                                                                         store.n_features, solver)
                # a fresh cluster per method, as a user gets: no method inherits another's warm workers or cache
                t0 = time.perf_counter()
                try:
                    with connect("local", n_workers=args.workers, threads_per_worker=1, dashboard_address=":0",
                                 report=log, processes=processes) as client:
                        # the workers import the project's modules with their first task (~1-2 s); like the
                        # cluster start, a one-time cost that is not part of training: paid before the clock
                        modules = sorted({"pipeline.passes", "storage.data", "storage.runstore",
                                          SOLVERS[solver].__module__})
                        client.run(exec, "import " + ", ".join(modules))
                        cluster_seconds[s] = time.perf_counter() - t0
                        log(f"local cluster: {args.workers} worker {'processes x 1 thread' if processes else 'threads'}, "
                            f"started and modules imported in {cluster_seconds[s]:.1f} s")
                        # worker threads in this process run BLAS on one thread, as python -m pipeline.train's
                        # cluster holds it (pipeline.cluster): under --threads N every chunk task's one_blas_thread
                        # restored N on leaving, so the other worker thread's kernels ran on N BLAS threads (conv
                        # Gauss-Newton 60k: 83 CPU s to 0.985 at --threads 2 against 28 at 1, conv_s7.md)
                        result = run_method(
                            f"{s}-pipeline", "ours-pipeline",
                            f"{s}: pipeline.training.train on a local cluster, out of core",
                            lambda c, s=s, config=config: run_pipeline(client, task, config, c, run_dir, pipe_chunks[s]),
                            budget, args.threads if processes else 1)
                        result["startup_seconds"] = client_import + cluster_seconds[s]
                        methods.append(result)
                except Exception as exc:  # the cluster did not start (or close): say so, run the others anyway
                    if any(m["method"] == f"{s}-pipeline" for m in methods):
                        continue
                    log(f"{s}-pipeline: FAILED: local cluster: {type(exc).__name__}: {exc}")
                    methods.append({"method": f"{s}-pipeline", "family": "ours-pipeline", "status": "failed",
                                    "description": f"{s}: pipeline.training.train on a local cluster",
                                    "error": f"local cluster: {type(exc).__name__}: {exc}", "points": []})
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
    for name in peers:
        peer = PEERS[name]
        missing = missing_modules(peer)
        if missing:
            methods.append(skipped(name, peer.family, peer.description,
                                   f"{INSTALL_HINT} (missing: {', '.join(missing)})"))
            continue
        if name == "torch-cnn" and not settings.layers:
            methods.append(skipped(name, peer.family, peer.description,
                                   "no convolutional layers to copy (give them with --set layers=conv:… or a --variant)"))
            continue
        need = peer.memory(store.n_samples, store.n_features, hidden) if peer.memory else 0.0
        if not fits_in_memory(need):
            methods.append(skipped(name, peer.family, peer.description,
                                   f"needs ~{need / 1e9:.1f} GB in memory, more than 60 % of this machine's"))
            continue
        result = run_method(name, peer.family, peer.description,
                            lambda c, peer=peer: peer.run(task, settings, c), budget, args.threads)
        if name in PEER_STARTUP:
            result["startup_seconds"] = startup_seconds(PEER_STARTUP[name])
        methods.append(result)
    for m in methods:
        summarize(m, target)

    result = {
        "provenance": provenance(),
        "settings": {
            "task": args.task, "name": args.name or f"compare_{args.task}", "about": spec.about, "target": target,
            "time_budget": budget, "epochs": epochs,
            "iterations": iterations, "overrides": overrides, "hidden": list(hidden), "solvers": list(configs),
            "configs": {label: c.to_dict() for label, c in configs.items()},
            "ours": ours, "peers": peers, "batch_size": args.batch_size, "threads": args.threads,
            "workers": args.workers, "seed": args.seed, "n_features_in": store.n_features, "n_outputs": n_out,
            "reference_chunk_rows": ref_chunk, "pipeline_chunk_rows": pipe_chunks,
            "cluster_start_seconds": cluster_seconds, "page_cache_read_seconds": page_cache_seconds,
            "local_processes": local_mode_processes, "versions": _versions(),
            "threadpools": [{k: t.get(k) for k in ("internal_api", "num_threads", "version")}
                            for t in threadpool_info()],
            "data": {**task.info, "train_store": str(task.train_path), "test_store": str(task.test_path),
                     "n_train": store.n_samples, "n_test": int(len(task.y_test)), "n_features": store.n_features,
                     "data_chunk_rows": store.chunk_rows, "classes": [c.item() for c in classes]},
            "time": "training wall-clock seconds from the method's start; test scoring excluded",
        },
        "methods": methods,
    }
    if seeds is not None:
        result["settings"]["seeds"] = list(seeds)
        result["settings"]["data_per_seed"] = DATA_PER_SEED.get(args.task, "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = out / (args.name or f"compare_{args.task}")
    base.with_suffix(".json").write_text(json.dumps(result, indent=1, default=_json_default))
    base.with_suffix(".md").write_text(markdown(result))
    problem = plot(result, base.with_suffix(".png"))
    if problem:
        log(problem)
    log("")
    for line in table(result):
        log(line)
    log(f"wrote {base}.json, {base}.md" + ("" if problem else f", {base}.png"))
    return (1 if any(m["status"] == "failed" for m in methods) else 0), result


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
