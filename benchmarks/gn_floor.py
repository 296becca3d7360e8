"""Gauss-Newton alone on MNIST 10-class 60k: a measured floor of its time to 0.96 (session 17, helper floor17, issue 21).

Issue 21's one open target: ``--solver gauss-newton`` (the pipeline) reaches 0.96 test accuracy at iteration 3 in
2.14-2.71 s (seeds 0-2) against PyTorch Adam streaming's 1.27-1.52 s (``compare_mnist10_60k_s16quiet1_seed*.json``).
This script measures the three parts of the argument "can the gap close?":

``count``  (a)+(b): the stock solver (and any ``--set`` variant) in memory, with every matrix product of its chunk
           kernels counted (FLOPs by product, per iteration, per pass) and each kernel's thread-CPU and wall seconds
           timed; the rest of an iteration's wall is the client (solves, eigendecompositions, LM test, probe).
           ``--data pipeline``: all 60,000 MNIST training rows in 8,192-row chunks, exactly the compare.py store's rows
           (the pipeline's run up to summation order; its held-out rows are its own 10 %; the test split is not read).
           ``--data validation``: rows 0-49,999 train, 50,000-59,999 validate (bench_util.load_mnist_validation),
           for the iteration floor: the first iteration whose validation accuracy reaches 0.96, per seed and lever.
``gemm``   the float32 GEMM rate (2048², 1 and 2 BLAS threads) and the rate of each product shape of the kernels
           (8,192-row chunk, 4,096-row tile as the kernels tile), and the time to read one chunk's rows from the
           compare.py Zarr store (page cache warm) and to standardise them (``_inputs_with_ones``).
``table``  the floor: per iteration, FLOPs / 2-thread GEMM rate + reads, against the measured pipeline seconds
           (compare.py's quiet JSON) and in-memory seconds; PyTorch Adam's FLOPs to 0.96 over the same rate; writes
           ``--out`` .md and .json.

Levers (``--set key=value`` on TrainConfig; ``--growth G`` patches :data:`solvers.sampling.GROWTH` for the process:
a benchmark-only prototype of a slower-growing sample, never the solver's code).

Run (non-timing parts niced; timings un-niced under the lock)::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 nice -n 15 python benchmarks/gn_floor.py count --data pipeline --seeds 0 1 2 \\
        --iterations 4 --arm stock --out /tmp/floor/count.jsonl
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 nice -n 15 python benchmarks/gn_floor.py count --data validation --seeds 0 1 2 \\
        --iterations 4 --arm t15 --set step_choice=held-out-1.5 --out /tmp/floor/levers.jsonl
    PYTHONPATH=$PWD flock /work/bench.lock python benchmarks/gn_floor.py gemm --out /tmp/floor/gemm.json
    python benchmarks/gn_floor.py table --count /tmp/floor/count.jsonl --levers /tmp/floor/levers.jsonl \\
        --gemm /tmp/floor/gemm.json --out benchmarks/results/gn_floor_s17
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from solvers import sampling  # noqa: E402
from solvers import gauss_newton as gn_module  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from solvers.gauss_newton import GaussNewtonSolver  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
STORE = Path("/tmp/q/compare-mnist10-n60000-train.zarr")
TARGET = 0.96
CHUNK_ROWS = 8192
RESULTS = ROOT / "benchmarks" / "results"
COMPARE = "compare_mnist10_60k_s16quiet1_seed{}.json"

# -- (a)+(b): counting the chunk kernels' products ---------------------------------------------------------------
TALLY: dict = defaultdict(lambda: defaultdict(float))  # iteration -> {product key: FLOPs}
TIMES: dict = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0, 0]))  # iteration -> {kernel: [cpu, wall, rows]}
NOW = {"iteration": 0, "depth": 0}


def _add(key: str, flops: float) -> None:
    TALLY[NOW["iteration"]][key] += float(flops)


def _counted_times(a, W):
    _add(f"gemm {a.shape[1]}x{W.shape[1]}", 2.0 * a.shape[0] * a.shape[1] * W.shape[1])
    return a @ W if a.shape[1] != 1 else a * W


def _timed(name, original):
    def wrap(self, x_raw, y, state, start_row, p, *rest, **kw):
        top = NOW["depth"] == 0
        NOW["depth"] += 1
        c0, w0 = time.thread_time(), time.perf_counter()
        try:
            return original(self, x_raw, y, state, start_row, p, *rest, **kw)
        finally:
            NOW["depth"] -= 1
            if top:
                t = TIMES[NOW["iteration"]][name]
                t[0] += time.thread_time() - c0
                t[1] += time.perf_counter() - w0
                t[2] += x_raw.shape[0]
    wrap.__name__ = name
    return wrap


def _out_products(self, rows: int, curvature: bool) -> None:
    """The inline products of pass B / the score pass: output z_L = ã W_Lᵀ (and pass B's Σ MᵀM), from the rows."""
    o, h = self.widths[-1], self.widths[-2] + 1
    _add(f"output {h}x{o}", 2.0 * rows * h * o)
    if curvature and self.L == 2 and not self.cross_entropy:
        _add(f"syrk M {h - 1}", float(rows) * (h - 1) * h)


class counting:
    """Patch :class:`GaussNewtonSolver` itself (not a subclass: the solver tests ``type(self).curvature_chunk is
    GaussNewtonSolver.curvature_chunk`` to choose its dense paths) for the duration of a fit, so the run is the stock
    run bit for bit with its matrix products counted and its chunk kernels timed per iteration.

    Counted where the products are made: ``_hidden_forward`` (z = ã W̃ᵀ per layer), ``_gram`` (SYRK k(k+1) per row),
    ``_cross`` (2km per row), ``times`` (δ W̃, patched in the module), and the inline products of pass B / the score
    pass (:func:`_out_products`), added per call from the rows. ``initialize`` / ``advance`` set the iteration.
    """

    KERNELS = ("forward_chunk", "forward_chunk_held", "curvature_chunk", "curvature_chunk_held", "score_chunk",
               "score_chunk_held")

    def __enter__(self):
        C = GaussNewtonSolver
        self.saved = {n: C.__dict__[n] for n in (*self.KERNELS, "_hidden_forward", "_gram", "_cross", "initialize",
                                                 "advance")}
        self.times = gn_module.times
        S = self.saved
        for n in self.KERNELS:
            setattr(C, n, _timed(n, S[n]))
        timed_curv, timed_held, timed_score = C.curvature_chunk, C.curvature_chunk_held, C.score_chunk

        def curvature_chunk(self, x_raw, y, state, start_row, p):
            _out_products(self, x_raw.shape[0], True)  # x_raw: the chunk's training rows (chunk_kernel's selection)
            return timed_curv(self, x_raw, y, state, start_row, p)

        def curvature_chunk_held(self, x_raw, y, state, start_row, p):
            _out_products(self, x_raw.shape[0], False)
            return timed_held(self, x_raw, y, state, start_row, p)

        def score_chunk(self, x_raw, y, state, start_row, p, held=False):
            _out_products(self, x_raw.shape[0], False)
            return timed_score(self, x_raw, y, state, start_row, p, held)

        def _hidden_forward(self, x1, hidden_aug):
            k = x1.shape[1]
            for W in hidden_aug:
                _add(f"forward {k}x{W.shape[0]}", 2.0 * x1.shape[0] * W.shape[1] * W.shape[0])
                k = W.shape[0]
            return S["_hidden_forward"](self, x1, hidden_aug)

        def _gram(a):
            k = a.shape[1]
            _add(f"syrk {k}", float(a.shape[0]) * k * (k + 1))
            return S["_gram"].__func__(a)

        def _cross(z, a):
            _add(f"cross {a.shape[1]}x{z.shape[1]}", 2.0 * a.shape[0] * a.shape[1] * z.shape[1])
            return S["_cross"].__func__(z, a)

        def _whole(k, fn, *args, **kw):  # the iteration's thread CPU and wall (the in-memory runner is serial)
            NOW["iteration"] = k
            c0, w0 = time.thread_time(), time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                t = TIMES[k]["_iteration"]
                t[0] += time.thread_time() - c0
                t[1] += time.perf_counter() - w0

        def initialize(self, runner, *args, **kw):
            return _whole(0, S["initialize"], self, runner, *args, **kw)

        def advance(self, runner, state):
            return _whole(state.iteration + 1, S["advance"], self, runner, state)
        C.curvature_chunk, C.curvature_chunk_held, C.score_chunk = curvature_chunk, curvature_chunk_held, score_chunk
        C._hidden_forward, C._gram, C._cross = _hidden_forward, staticmethod(_gram), staticmethod(_cross)
        C.initialize, C.advance = initialize, advance
        gn_module.times = _counted_times
        return self

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(GaussNewtonSolver, n, f)
        gn_module.times = self.times
        return False


def load_rows(data: str):
    """(X_train, y_train, X_val, y_val, about); ``pipeline``: all 60,000 training rows, no validation rows."""
    with np.load(DATA / "mnist70k_uint8.npz") as f:
        X, y = f["X"][:60000], f["y"][:60000]
    if data == "pipeline":
        return (X.astype(np.float32), y, None, None,
                "MNIST training rows 0-59,999 (compare.py's training store rows; test split not read), pixels / 256")
    return (X[:50000].astype(np.float32), y[:50000], X[50000:].astype(np.float32), y[50000:],
            "MNIST training rows 0-49,999 train, 50,000-59,999 validate")


def count(argv) -> None:
    p = argparse.ArgumentParser(prog="gn_floor.py count")
    p.add_argument("--data", choices=("pipeline", "validation"), default="pipeline")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--arm", default="stock")
    p.add_argument("--set", action="append", default=[], help="TrainConfig key=value (a lever)")
    p.add_argument("--growth", type=float, default=None, help="patch solvers.sampling.GROWTH (prototype)")
    p.add_argument("--no-count", action="store_true", help="the stock solver unpatched (checks the counted run is the same)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    from solvers.reference import fit_in_memory

    sets = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        default = getattr(TrainConfig(), k)
        sets[k] = type(default)(v) if not isinstance(default, str) else v
    Xtr, ytr, Xva, yva, about = load_rows(a.data)
    if a.data == "pipeline":
        Xtr = Xtr / np.float32(256)  # compare.py's store: pixels / 256 (its Source line)
    stock_growth = sampling.GROWTH
    for seed in a.seeds:
        TALLY.clear()
        TIMES.clear()
        if a.growth is not None:
            sampling.GROWTH = a.growth
        try:
            cfg = TrainConfig(solver="gauss-newton", seed=seed, iterations=a.iterations, **sets)
            t0 = time.perf_counter()
            if a.no_count:
                r = fit_in_memory(Xtr, ytr, cfg, chunk_rows=CHUNK_ROWS, X_test=Xva, y_test=yva)
            else:
                with counting():
                    r = fit_in_memory(Xtr, ytr, cfg, chunk_rows=CHUNK_ROWS, X_test=Xva, y_test=yva)
            wall = time.perf_counter() - t0
        finally:
            sampling.GROWTH = stock_growth
        rows = []
        for h in r.history:
            k = h["iteration"]
            rows.append({"iteration": k, "seconds": h.get("seconds"), "validation_accuracy": h.get("validation_accuracy"),
                         "eval_accuracy": h.get("test_accuracy"), "train_accuracy": h.get("train_accuracy"),
                         "accepted": h.get("accepted"), "sample_rows": h.get("sample_rows"), "alpha": h.get("alpha"),
                         "flops": dict(TALLY.get(k, {})),
                         "kernels": {n: {"cpu": v[0], "wall": v[1], "rows": v[2]} for n, v in TIMES.get(k, {}).items()}})
        init = {"flops": dict(TALLY.get(0, {})),
                "kernels": {n: {"cpu": v[0], "wall": v[1], "rows": v[2]} for n, v in TIMES.get(0, {}).items()}}
        acc_key = "eval_accuracy" if a.data == "validation" else "validation_accuracy"
        hit = next((x["iteration"] for x in rows if (x[acc_key] or 0) >= TARGET), None)
        rec = {"arm": a.arm, "data": a.data, "about": about, "seed": seed, "sets": sets, "growth": a.growth,
               "iterations": a.iterations, "wall": wall, "init": init, "history": rows, "target_iteration": hit,
               "accuracy_key": acc_key, "load": os.getloadavg()[0], "threads": os.environ.get("OMP_NUM_THREADS"),
               "argv": sys.argv}
        with open(a.out, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        print(a.arm, a.data, seed, "hit", hit, [round(x[acc_key] or 0, 4) for x in rows],
              [round(sum(x["flops"].values()) / 1e9, 1) for x in rows], flush=True)


# -- GEMM rates and reads --------------------------------------------------------------------------------------------
def _median(fn, seconds: float) -> float:
    fn()
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


SHAPES = [  # (name, rows-side k, m, kind) of 784-300-10's products; a 4096-row tile as the kernels tile
    ("forward 785x301", 785, 301, "gemm"), ("syrk 301", 301, 301, "syrk"), ("cross 301x10", 301, 10, "gram"),
    ("syrk 785 (input Gram)", 785, 785, "syrk"), ("cross 785x300 (D1)", 785, 300, "gram"),
    ("syrk M 300", 300, 300, "syrk"), ("gemm 10x300 (delta W)", 10, 300, "gemm"), ("output 301x10", 301, 10, "gemm")]


def gemm(argv) -> None:
    from threadpoolctl import threadpool_limits

    p = argparse.ArgumentParser(prog="gn_floor.py gemm")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    out = {"load_before": os.getloadavg()[0], "rates": {}, "argv": sys.argv}
    tile = 4096
    for threads in (1, 2):
        res = {}
        with threadpool_limits(threads):
            A = rng.standard_normal((2048, 2048), dtype=np.float32)
            res["square_2048"] = 2 * 2048 ** 3 / _median(lambda A=A: A @ A, 2 * a.seconds) / 1e9
            for name, k, m, kind in SHAPES:
                x = rng.standard_normal((tile, k), dtype=np.float32)
                if kind == "syrk":
                    fn, fl = (lambda x=x: x.T @ x), tile * k * (k + 1)
                elif kind == "gram":
                    y = rng.standard_normal((tile, m), dtype=np.float32)
                    fn, fl = (lambda x=x, y=y: x.T @ y), 2 * tile * k * m
                else:
                    W = rng.standard_normal((k, m), dtype=np.float32)
                    fn, fl = (lambda x=x, W=W: x @ W), 2 * tile * k * m
                res[name] = fl / _median(fn, a.seconds / 4) / 1e9
        out["rates"][str(threads)] = res
    # reads: one 8,192-row chunk from the compare store (warm page cache), and its standardisation to ã_0
    import zarr

    g = zarr.open_group(str(STORE), mode="r")
    X = g["X"]
    X[:CHUNK_ROWS]
    out["store"] = {"dtype": str(X.dtype), "shape": list(X.shape), "chunks": list(X.chunks)}
    out["read_chunk_s"] = _median(lambda: np.asarray(X[:CHUNK_ROWS]), a.seconds)
    xr = np.asarray(X[:CHUNK_ROWS], np.float32)
    mean, scale = xr.mean(0), xr.std(0) + 1e-3

    def standardise():
        x1 = np.empty((xr.shape[0], xr.shape[1] + 1), np.float32)
        x1[:, :-1] = xr
        x1[:, :-1] -= mean
        x1[:, :-1] /= scale
        x1[:, -1] = 1
    out["standardise_chunk_s"] = _median(standardise, a.seconds)
    out["load_after"] = os.getloadavg()[0]
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


# -- the table ------------------------------------------------------------------------------------------------------
def _load(path):
    return [json.loads(x) for x in open(path) if x.strip()]


def _compare_points(seed: int) -> dict:
    d = json.loads((RESULTS / COMPARE.format(seed)).read_text())
    out = {}
    for m in d["methods"]:
        if m["method"] in ("gauss-newton-pipeline", "torch-adam"):
            out[m["method"]] = m
    return out


ARM_COMPARE = {"stock": "gauss-newton-pipeline", "t15": "gn-t15-pipeline"}  # arms compare.py timed (s16quiet1)
TORCH_FLOPS_PER_ROW = 2 * (784 * 300 + 300 * 10) * 2 + 2 * 300 * 10  # forward, weight gradients, layer-2 input gradient
QUIET_GEMM = {"1": 98.8, "2": 182.9}  # kernel_efficiency_s16quiet1.json, 784-300-10 entry: float32 2048², 1 / 2 threads
GROUPS = {"forward (pass A, the probe's candidates, misses)": ("forward",), "input Gram Σ ã0ᵀã0 (new rows)": ("syrk 785",),
          "gradient D1 = δ1ᵀã0 (pass B)": ("cross 785",), "readout Gram / curvature Σ MᵀM (301², 300²)": ("syrk 301", "syrk M"),
          "thin (10-wide) products": ("cross 301", "output", "gemm 10")}


def _iter_rows(rec) -> list:
    """Per iteration (0 = initialisation) of a count record: GFLOP by group, kernel and whole CPU, rows read."""
    out = []
    for h in [{"iteration": 0, **rec["init"]}, *rec["history"]]:
        ker = {n: v for n, v in h["kernels"].items() if not n.startswith("_")}
        whole = h["kernels"].get("_iteration", {})
        fl = h["flops"]
        groups = {g: sum(v for k, v in fl.items() if k.startswith(pre)) / 1e9 for g, pre in GROUPS.items()}
        # unavoidable reads: every row an iteration touches, once (its sample's training rows and the held-out rows)
        read_rows = max((v["rows"] for n, v in ker.items() if n in ("forward_chunk", "curvature_chunk", "score_chunk")),
                        default=0) + max((v["rows"] for n, v in ker.items() if n.endswith("_held")), default=0)
        out.append({"iteration": h["iteration"], "gflop": sum(fl.values()) / 1e9, "groups": groups,
                    "kernel_cpu": sum(v["cpu"] for v in ker.values()), "iteration_cpu": whole.get("cpu"),
                    "rows_read": read_rows, "sample_rows": h.get("sample_rows"),
                    "accuracy": h.get(rec["accuracy_key"]) if h["iteration"] else None})
    return out


def _hit(rows, upto=None) -> float:
    return sum(r["gflop"] for r in rows if upto is None or r["iteration"] <= upto)


def _model_seconds(rows, upto: int) -> float:
    """Kernel CPU over 2 threads plus the serial client CPU, initialisation and iterations 1..``upto``."""
    return sum(r["kernel_cpu"] / 2 + (r["iteration_cpu"] - r["kernel_cpu"]) for r in rows if r["iteration"] <= upto)


def _pipeline_levers(path, res, L) -> None:
    """Table (d): each lever's work on the pipeline's rows, and its time predicted by the stock run's calibration."""
    stock = {s: d for s, d in res["pipeline"].items()}
    for d in stock.values():
        d["model_seconds_to_target"] = _model_seconds(d["iterations"], d["pipeline_hit_iteration"])
        d["other_seconds"] = d["pipeline_time_to_target"] - d["model_seconds_to_target"]
    L += ["", "## (d) The levers on the pipeline's rows: work, and predicted pipeline seconds", "",
          "`count --data pipeline` with the lever (the compare store's 60,000 rows; *held-out* = the solver's own 10 % "
          "held-out rows, not the test split). *model s*: initialisation and iterations 1..k of kernel CPU / 2 threads + "
          "client CPU (this loaded in-memory run). *predicted pipeline s* = model s + the stock run's *other* seconds "
          "of the same seed (its quiet pipeline time to 0.96 minus its model s: store, commits, graph, imbalance). "
          "Stock's own model s / other s per seed: "
          + "; ".join(f"seed {s}: {d['model_seconds_to_target']:.2f} / {d['other_seconds']:.2f}" for s, d in stock.items())
          + ". PyTorch to 0.96 (same seeds, quiet): "
          + ", ".join(f"{d['torch_time_to_target']:.2f}" for d in stock.values()) + " s.", "",
          "| arm | seed | held-out accuracy by iteration | GFLOP by iteration (0 = init) | GFLOP to 2 / 3 / 4 | "
          "predicted pipeline s to 2 / 3 / 4 | ratio to PyTorch at 2 / 3 / 4 | measured quietly (s16quiet1) |",
          "|---|---|---|---|---|---|---|---|"]
    res["pipeline_levers"] = {}
    for rec in _load(path):
        rows = _iter_rows(rec)
        d = stock.get(rec["seed"]) or stock.get(str(rec["seed"]))
        pred = [_model_seconds(rows, k) + d["other_seconds"] for k in (2, 3, 4)]
        measured = None
        if rec["arm"] in ARM_COMPARE:  # the same setting timed quietly by the integrator (s16quiet1)
            m = json.loads((RESULTS / COMPARE.format(rec["seed"])).read_text())
            pts = next(x for x in m["methods"] if x["method"] == ARM_COMPARE[rec["arm"]])["points"]
            measured = [pts[k - 1]["seconds"] for k in (2, 3, 4)]
        res["pipeline_levers"].setdefault(rec["arm"], {})[rec["seed"]] = {
            "rows": rows, "predicted_pipeline_seconds_2_3_4": pred, "measured_pipeline_seconds_2_3_4": measured,
            "sets": rec["sets"], "growth": rec["growth"]}
        L.append(f"| {rec['arm']} | {rec['seed']} | " + " / ".join(f"{r['accuracy']:.4f}" for r in rows if r["iteration"])
                 + " | " + " / ".join(f"{r['gflop']:.0f}" for r in rows) + " | "
                 + " / ".join(f"{_hit(rows, k):.0f}" for k in (2, 3, 4)) + " | " + " / ".join(f"{x:.2f}" for x in pred)
                 + " | " + " / ".join(f"{x / d['torch_time_to_target']:.2f}x" for x in pred) + " | "
                 + ("" if measured is None else " / ".join(f"{x:.2f}" for x in measured)) + " |")


def table(argv) -> None:
    p = argparse.ArgumentParser(prog="gn_floor.py table")
    p.add_argument("--count", required=True, help="count records of --data pipeline (seeds 0-2)")
    p.add_argument("--levers", default=None, help="count records of --data validation (arms x seeds)")
    p.add_argument("--gemm", required=True)
    p.add_argument("--pipeline-levers", default=None, help="count records of --data pipeline for lever arms")
    p.add_argument("--summary", default=None, help="a Markdown file put after the title (the measured conclusions)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    G = json.loads(Path(a.gemm).read_text())
    r2, r1 = QUIET_GEMM["2"], QUIET_GEMM["1"]
    read_row = (G["read_chunk_s"] + G["standardise_chunk_s"]) / CHUNK_ROWS  # one core, page cache warm
    res = {"gemm_measured_here": G, "gemm_quiet_used": QUIET_GEMM, "read_seconds_per_row_one_core": read_row,
           "pipeline": {}, "levers": {}}
    L = ["# Gauss-Newton alone on MNIST 10-class 60k: the floor of its time to 0.96 (session 17, helper floor17, issue 21)",
         "", f"Tables written by `python benchmarks/gn_floor.py table {' '.join(argv)}`.", ""]
    if a.summary:
        L += [Path(a.summary).read_text().rstrip(), ""]
    L += ["Float32 GEMM rates used for the floor: the integrator's quiet `kernel_efficiency_s16quiet1.json` (784-300-10 "
          f"entry): **{r1} GFLOP/s at 1 thread, {r2} at 2 threads** (2048²). Measured here under load by `gn_floor.py gemm` "
          f"(load {G['load_before']:.1f} → {G['load_after']:.1f}): 2048² {G['rates']['1']['square_2048']:.1f} / "
          f"{G['rates']['2']['square_2048']:.1f}; the kernels' shapes at 1 thread (4,096-row tile): "
          + ", ".join(f"{k} {v:.0f}" for k, v in G["rates"]["1"].items() if k != "square_2048") + ". Reads: one 8,192-row "
          f"float32 chunk of the compare store from the page cache {G['read_chunk_s'] * 1e3:.1f} ms + standardising it "
          f"{G['standardise_chunk_s'] * 1e3:.1f} ms (one core) = {read_row * 1e6:.2f} µs a row.", ""]
    # -- (b) per-iteration floor of the pipeline's run
    L += ["## (b) The work of each iteration of the pipeline's run, and its floor", "",
          "`count --data pipeline`: the compare.py store's 60,000 training rows in 8,192-row chunks, the stock solver "
          "(`--solver gauss-newton`, defaults: probe, grow schedule 3 → 6 → 8 chunks, deferred pass B), in memory, "
          "every matrix product of the chunk kernels counted where it is made. The run is the pipeline's: its train "
          "accuracy equals the quiet compare run's bit for bit at every iteration of every seed (checked here: "
          "`same_run_checked` in the JSON). Floor = GFLOP / "
          f"{r2} GFLOP/s + rows the iteration touches (sample + held-out, once) × {read_row * 1e6:.2f} µs "
          "/ 2 cores. *pipeline s*: the quiet compare run's seconds "
          "of that point (s16quiet1; point 1 includes initialisation and the store's creation). *kernel CPU*: the chunk "
          "kernels' thread CPU in this (loaded, 1 BLAS thread) run; *client CPU*: the rest of the iteration's CPU "
          "(solves, eigendecompositions, LM test, probe), same run.", ""]
    seeds_hdr = "| seed | iteration | sample rows | GFLOP | " + " | ".join(GROUPS) + \
        " | floor s | kernel CPU s (share of 1-thread GEMM) | client CPU s | pipeline s | accuracy (held-out) |"
    L += [seeds_hdr, "|" + "---|" * (seeds_hdr.count("|") - 1)]
    for rec in _load(a.count):
        seed = rec["seed"]
        cmp_ = _compare_points(seed)
        gnp, tp = cmp_["gauss-newton-pipeline"], cmp_["torch-adam"]
        pts = gnp["points"]
        pipe = [pts[0]["seconds"]] + [pts[i]["seconds"] - pts[i - 1]["seconds"] for i in range(1, len(pts))]
        hit = next(i + 1 for i, q in enumerate(pts) if q["test_accuracy"] >= TARGET)
        rows = _iter_rows(rec)
        same = [h["train_accuracy"] == q.get("train_accuracy") for h, q in zip(rec["history"], pts)]
        res.setdefault("same_run_checked", {})[seed] = same
        for r in rows:
            r["floor_s"] = r["gflop"] / r2 + read_row * r["rows_read"] / 2
            r["client_cpu"] = None if r["iteration_cpu"] is None else r["iteration_cpu"] - r["kernel_cpu"]
            r["pipeline_s"] = pipe[r["iteration"] - 1] if r["iteration"] else None
            share = r["gflop"] / max(r["kernel_cpu"], 1e-9) / r1
            L.append(f"| {seed} | {r['iteration'] or 'init'} | {r['sample_rows'] or ''} | {r['gflop']:.1f} | "
                     + " | ".join(f"{v:.1f}" for v in r["groups"].values())
                     + f" | {r['floor_s']:.3f} | {r['kernel_cpu']:.2f} ({share:.0%}) | "
                     + ("" if r["client_cpu"] is None else f"{r['client_cpu']:.2f}") + " | "
                     + ("" if r["pipeline_s"] is None else f"{r['pipeline_s']:.2f}"
                        + (" (+init)" if r["iteration"] == 1 else "")) + " | "
                     + ("" if r["accuracy"] is None else f"{r['accuracy']:.4f}") + " |")
        tpts = tp["points"]
        thit = next(i for i, q in enumerate(tpts) if q["test_accuracy"] >= TARGET)
        t_rows = tpts[thit]["step"] * 60000
        gfl = _hit(rows, hit)
        res["pipeline"][seed] = {
            "iterations": rows, "pipeline_point_seconds": pipe, "pipeline_hit_iteration": hit,
            "pipeline_time_to_target": gnp["time_to_target"], "pipeline_cpu_to_target": gnp["cpu_to_target"],
            "gn_gflop_to_target": gfl, "gn_floor_to_target": sum(r["floor_s"] for r in rows if r["iteration"] <= hit),
            "gn_gflop_to_iteration2": _hit(rows, 2), "gn_floor_to_iteration2": sum(r["floor_s"] for r in rows if r["iteration"] <= 2),
            "torch_time_to_target": tp["time_to_target"], "torch_cpu_to_target": tp["cpu_to_target"],
            "torch_epochs_to_target": tpts[thit]["step"], "torch_rows_to_target": t_rows,
            "torch_gflop_to_target": t_rows * TORCH_FLOPS_PER_ROW / 1e9,
            "torch_floor_s": t_rows * TORCH_FLOPS_PER_ROW / 1e9 / r2 + t_rows * read_row / 2,
            "torch_first_point_s": tpts[0]["seconds"]}
    L += ["", "## (c) Time to 0.96: Gauss-Newton alone against PyTorch Adam, each against its FLOP floor", "",
          f"PyTorch's FLOPs: {TORCH_FLOPS_PER_ROW:,} a row (forward, weight gradients, layer 2's input gradient of "
          "784-300-10), times the rows it streamed to its 0.96 point (its points are every 1/8 epoch); its floor adds "
          "the same read cost a row as ours. "
          "*achieved*: GFLOP to the target / seconds to the target.", "",
          "| seed | GN hit iteration (test) | GN GFLOP | GN floor s | GN pipeline s (achieved GFLOP/s) | "
          "GN GFLOP / floor to iteration 2 | PyTorch epochs | PyTorch GFLOP | PyTorch floor s | "
          "PyTorch s (achieved GFLOP/s; first point s) | ratio measured | ratio of floors |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for seed, d in res["pipeline"].items():
        L.append(f"| {seed} | {d['pipeline_hit_iteration']} | {d['gn_gflop_to_target']:.0f} | {d['gn_floor_to_target']:.2f} | "
                 f"{d['pipeline_time_to_target']:.2f} ({d['gn_gflop_to_target'] / d['pipeline_time_to_target']:.0f}) | "
                 f"{d['gn_gflop_to_iteration2']:.0f} / {d['gn_floor_to_iteration2']:.2f} | {d['torch_epochs_to_target']:.3f} | "
                 f"{d['torch_gflop_to_target']:.0f} | {d['torch_floor_s']:.2f} | {d['torch_time_to_target']:.2f} "
                 f"({d['torch_gflop_to_target'] / d['torch_time_to_target']:.0f}; {d['torch_first_point_s']:.2f}) | "
                 f"{d['pipeline_time_to_target'] / d['torch_time_to_target']:.2f}x | "
                 f"{d['gn_floor_to_target'] / d['torch_floor_s']:.1f}x |")
    # -- (a) iteration floor by lever
    if a.levers:
        recs = _load(a.levers)
        L += ["", "## (a) The iteration floor: the first iteration at 0.96 on validation rows, by lever", "",
              "`count --data validation`: MNIST training rows 0-49,999 train (8,192-row chunks, the solver's own 10 % "
              "held out inside them), rows 50,000-59,999 are the validation rows scored after every iteration (the "
              "test split is never read). 5 iterations (the 5th reads every chunk). GFLOP: initialisation + iterations "
              "to the hit, counted as above.", "",
              "| arm | settings | seed | validation accuracy by iteration | sample rows by iteration | hit | GFLOP to hit | "
              "GFLOP to iteration 2 / 3 / 4 |", "|---|---|---|---|---|---|---|---|"]
        for rec in recs:
            rows = _iter_rows(rec)
            its = [r for r in rows if r["iteration"]]
            hit = rec["target_iteration"]
            res["levers"].setdefault(rec["arm"], {})[rec["seed"]] = {
                "sets": rec["sets"], "growth": rec["growth"], "hit": hit, "accuracy": [r["accuracy"] for r in its],
                "sample_rows": [r["sample_rows"] for r in its], "gflop": [r["gflop"] for r in rows],
                "gflop_to_hit": hit and _hit(rows, hit)}
            sets = ", ".join(f"{k}={v}" for k, v in rec["sets"].items()) + (f" GROWTH={rec['growth']:g}" if rec["growth"] else "")
            L.append(f"| {rec['arm']} | {sets or 'defaults'} | {rec['seed']} | "
                     + " / ".join(f"{r['accuracy']:.4f}" for r in its) + " | "
                     + " / ".join(str(int(r["sample_rows"] or 0)) for r in its) + f" | {hit or '-'} | "
                     + (f"{_hit(rows, hit):.0f}" if hit else "-")
                     + f" | {_hit(rows, 2):.0f} / {_hit(rows, 3):.0f} / {_hit(rows, 4):.0f} |")
    if a.pipeline_levers:
        _pipeline_levers(a.pipeline_levers, res, L)
    Path(a.out + ".json").write_text(json.dumps(res, indent=1))
    Path(a.out + ".md").write_text("\n".join(L) + "\n")
    print("\n".join(L))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cmd, rest = (argv[0], argv[1:]) if argv else ("", [])
    {"count": count, "gemm": gemm, "table": table}.get(cmd, lambda _: sys.exit(__doc__))(rest)


if __name__ == "__main__":
    main()
