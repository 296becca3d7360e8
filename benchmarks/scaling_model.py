"""Strong-scaling model of one Gauss-Newton iteration, built from quantities measured here.

One accepted iteration is pass A, a client solve, pass B (``solvers/gauss_newton.py``).
With ``P`` workers of one core each and ``n`` rows, the model of one pass ``p`` is ::

    T_p(P) = t_p · n/P                                  per-worker compute (measured s/row, 1 thread)
           + q · n/P · b_row / R_disk                  per-worker read (out-of-core variant only)
           + ⌈log₂ P⌉ (α + W_p/β)                      broadcast of the weights (binomial tree)
           + ⌈log₈ P⌉ (α + 7 B_p/β + c_add · 8 B_p)    tree-reduce of the sums (split_every = 8)
           + (α + B_p/β)                               the final sum to the client
           + s_task · (P + ⌈P/7⌉)                      Dask's central scheduler (Dask variant only)

    T(P) = T_A(P) + T_B(P) + t_client

``t_p`` is the median pass time / rows of the solver's own kernels in memory
(one BLAS thread); ``B_p`` the bytes of the pass's float64 sums (the solver's
``forward_layout``/``curvature_layout``); ``W_p`` the float32 weights sent;
``c_add`` the measured seconds per byte of NumPy's sum of 8 vectors;
``s_task`` the measured scheduler cost per task (a LocalCluster running
trivial trees of k = 64…1024 tasks, slope in k); ``t_client`` the measured
client step (iteration time − pass times); ``b_row`` the bytes per row of X
and y, ``R_disk`` the measured cold read bandwidth of this disk per worker.
Network: **assumed** α = 50 µs latency and β = 10 Gb/s per link (sensitivity:
1 Gb/s with 100 µs, 100 Gb/s with 2 µs). The "allreduce" variant drops the
scheduler term (an MPI-style implementation such as the paper's).

Validation: the model with the *local* constants (compute ``t_p n/P``, the
measured LocalCluster reduce of the real sums over the real number of chunk
tasks, the client step) against measured iterations on 1 and 2 LocalCluster
workers, and — with ``--slurm`` — 1 and 2 SLURM worker jobs via
``python -m pipeline.train --cluster slurm --jobs J`` (``.ci/slurm-up.sh``
starts a one-node SLURM).

Consensus (``--solver consensus``, one shard per worker) is projected beside
it with the same Dask and network terms (:func:`consensus_pass_seconds`: one
task per shard, one tree-reduce of model-sized sums, compute = local Adam
epochs × measured s/row / P, calibrated by its own 1-worker pipeline
measurement), from ``benchmarks/results/consensus_scaling.json`` (written by
``benchmarks/consensus_scaling.py``, which also measures the accuracy cost of
more shards: accuracy after each pass at 1, 8, 64 shards).

Problem sizes of the paper (Taylor et al. 2016): HIGGS 10.5 M rows, 28-300-1
(7,200 cores: 64 % test accuracy in 7.8 s); SVHN 0-vs-2 HOG features, 120,290
rows, 648-100-50-1 (1,024 cores: 95 % in 13.3 s; here synthetic data of that
shape, since kernel time does not depend on the values).

Run (about 6 minutes; nothing else heavy at the same time)::

    python benchmarks/scaling_model.py --slurm --out benchmarks/results/scaling_model.json
    python benchmarks/scaling_model.py --quick --out /tmp/scaling_model_quick.json   # < 2 minutes
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_util import CpuWatch, provenance, write_results  # noqa: E402
from benchmarks.gn_efficiency import TimedRunner, load_in_memory, run_pipeline_passes, wait_for_quiet  # noqa: E402
from benchmarks.iteration_time import data_store  # noqa: E402
from solvers import make_solver  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402

PROBLEMS = {  # name: (rows, hidden, features, paper cores, paper seconds, paper accuracy)
    "HIGGS": (10_500_000, (300,), 28, 7200, 7.8, 0.64),
    "SVHN 0-vs-2": (120_290, (100, 50), 648, 1024, 13.3, 0.95),
}
NETWORKS = {"10 Gb/s, 50 us (assumed)": (10e9 / 8, 50e-6), "1 Gb/s, 100 us": (1e9 / 8, 100e-6),
            "100 Gb/s, 2 us": (100e9 / 8, 2e-6)}
WORKERS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 7200, 10000]


# -- measured per-row and client costs ----------------------------------------------------
def kernel_costs(X, y_idx, model, hidden, iterations: int) -> dict:
    """Return s/row of pass A and B (1 thread), the client step's seconds, and the bytes sent and summed."""
    solver = make_solver(TrainConfig(hidden=hidden), X.shape[1], **model)
    runner = TimedRunner(solver, X, y_idx, 65536, threads=1)
    state = solver.initialize(runner)
    per = {"forward_chunk": [], "curvature_chunk": []}
    client = []
    for _ in range(iterations):
        runner.log = []
        t0 = time.perf_counter()
        state, _ = solver.advance(runner, state)
        total = time.perf_counter() - t0
        for p in runner.log:
            per[p["kernel"]].append(p["seconds"] / X.shape[0])
        client.append(total - sum(p["seconds"] for p in runner.log))
    weights = sum(np.asarray(W, np.float32).nbytes for W in state.weights)
    hidden_bytes = sum(np.asarray(W, np.float32).nbytes for W in state.weights[:-1])
    return {"rows_measured": X.shape[0], "widths": list(solver.widths),
            "seconds_per_row": {k: statistics.median(v) for k, v in per.items()},
            "client_seconds": statistics.median(client),
            "sum_bytes": {"forward_chunk": solver.forward_layout(False).size * 8,
                          "curvature_chunk": solver.curvature_layout().size * 8},
            "broadcast_bytes": {"forward_chunk": hidden_bytes, "curvature_chunk": weights},
            "bytes_per_row": X.shape[1] * 4 + 8}


def synthetic(n: int, d: int, seed: int = 0):
    """Return (X, y class indices, solver inputs) of random standardised data of shape n × d."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d), dtype=np.float32)
    y = (X[:, :8].sum(axis=1) > 0).astype(np.int64)
    return X, y, {"classes": np.array([0, 1]), "x_mean": np.zeros(d), "x_scale": np.ones(d)}


# -- measured Dask costs ------------------------------------------------------------------
def _vector(nbytes: int, i: int):
    return np.full(max(1, nbytes // 8), float(i))


def _time_tree(client, k: int, nbytes: int, repeats: int) -> float:
    import dask

    from pipeline.passes import tree

    make = dask.delayed(_vector, pure=False)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        client.compute(tree([make(nbytes, i) for i in range(k)]), sync=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def dask_costs(sum_bytes: list, ks=(64, 128, 256, 512, 1024), sum_ks=(2, 8, 64), repeats: int = 3) -> dict:
    """Return the scheduler's seconds per task, and reduce times of sums of the given sizes on a LocalCluster."""
    from pipeline.cluster import connect

    out = {"tiny": {}, "sums": {}}
    with connect("local", n_workers=2, threads_per_worker=1, memory_limit="4GB", dashboard_address=":0") as client, \
            CpuWatch() as cpu:
        _time_tree(client, 8, 8, 2)  # warm up
        for k in ks:
            out["tiny"][k] = _time_tree(client, k, 8, repeats)
        for b in sum_bytes:
            out["sums"][b] = {k: _time_tree(client, k, b, repeats) for k in sorted(set(sum_ks))}
    tasks = np.array([k + math.ceil(k / 7) for k in ks], float)
    slope, intercept = np.polyfit(tasks, [out["tiny"][k] for k in ks], 1)
    out["scheduler_seconds_per_task"] = float(slope)
    out["fixed_seconds"] = float(intercept)
    a = np.random.default_rng(0).standard_normal((8, max(sum_bytes) // 8))
    t0 = time.perf_counter()
    for _ in range(20):
        np.sum(a, axis=0)
    out["add_seconds_per_byte"] = (time.perf_counter() - t0) / 20 / a.nbytes
    out["other_cpu_seconds"] = cpu.other
    return out


# -- the model ----------------------------------------------------------------------------
def iteration_seconds(P: int, n: int, cost: dict, d: dict, alpha: float, beta: float, *,
                      scheduler: bool = True, disk_bw: float | None = None) -> dict:
    """Return the modelled seconds of one accepted iteration on P workers, by term."""
    terms = {"compute": 0.0, "read": 0.0, "broadcast": 0.0, "reduce": 0.0, "scheduler": 0.0,
             "client": cost["client_seconds"]}
    for p in ("forward_chunk", "curvature_chunk"):
        B, W = cost["sum_bytes"][p], cost["broadcast_bytes"][p]
        terms["compute"] += cost["seconds_per_row"][p] * n / P
        if disk_bw:
            terms["read"] += n / P * cost["bytes_per_row"] / disk_bw
        terms["broadcast"] += math.ceil(math.log2(P)) * (alpha + W / beta)
        terms["reduce"] += math.ceil(math.log(P, 8) - 1e-9) * (alpha + 7 * B / beta + d["add_seconds_per_byte"] * 8 * B)
        terms["reduce"] += alpha + B / beta
        if scheduler:
            terms["scheduler"] += d["scheduler_seconds_per_task"] * (P + math.ceil(P / 7))
    terms["total"] = sum(terms.values())
    return terms


ASSUMED = "10 Gb/s, 50 us (assumed)"
CONSENSUS_RESULTS = ROOT / "benchmarks" / "results" / "consensus_scaling.json"


def consensus_pass_seconds(P: int, n: int, cost: dict, d: dict, alpha: float, beta: float, epochs: int = 1,
                           scheduler: bool = True, client: float = 0.005) -> dict:
    """Return the modelled seconds of one consensus pass on P workers (one shard each), by term.

    ``T(P) = E t_adam n/P + ⌈log₂ P⌉(α + W/β) + ⌈log₈ P⌉(α + 7B/β + c_add 8B) + (α + B/β) + s_task(P + ⌈P/7⌉) + t_client``
    """
    B, W = cost["sum_bytes"], cost["broadcast_bytes"]
    terms = {"compute": epochs * cost["seconds_per_row"] * n / P,
             "broadcast": math.ceil(math.log2(P)) * (alpha + W / beta),
             "reduce": math.ceil(math.log(P, 8) - 1e-9) * (alpha + 7 * B / beta + d["add_seconds_per_byte"] * 8 * B)
             + alpha + B / beta,
             "scheduler": d["scheduler_seconds_per_task"] * (P + math.ceil(P / 7)) if scheduler else 0.0,
             "client": client}
    terms["total"] = sum(terms.values())
    return terms


def consensus_projection(result: dict, n: int) -> dict | None:
    """Return consensus pass seconds on HIGGS-sized data for P in WORKERS (None without consensus_scaling.json).

    Variants as Gauss-Newton's: ``Dask``, ``Dask, calibrated`` (compute × the measured / modelled pass time
    of one local worker) and ``allreduce``, all on the assumed network.
    """
    if not CONSENSUS_RESULTS.exists():
        return None
    cs = json.loads(CONSENSUS_RESULTS.read_text())
    cost, d = cs["kernel"], result["dask"]
    one = next((w for w in cs.get("measured_workers", []) if w["workers"] == 1), None)
    rows = (one or {}).get("training_rows") or cs.get("n_accuracy_rows")
    calibration = (one["seconds_per_pass"] / (cost["seconds_per_row"] * rows)) if one and rows else 1.0
    slow = {**cost, "seconds_per_row": cost["seconds_per_row"] * calibration}
    beta, alpha = NETWORKS[ASSUMED]
    out = {"calibration": calibration, "accuracy_by_shards": cs.get("accuracy_by_shards"),
           "accuracy_rows": cs.get("n_accuracy_rows"), "measured_workers": cs.get("measured_workers"),
           "kernel": cost, "source": CONSENSUS_RESULTS.name, "passes": {}}
    for key, c, kw in ((f"Dask; {ASSUMED}", cost, {}), (f"Dask, calibrated; {ASSUMED}", slow, {}),
                       (f"allreduce; {ASSUMED}", cost, {"scheduler": False})):
        out["passes"][key] = {str(P): consensus_pass_seconds(P, n, c, d, alpha, beta, **kw) for P in WORKERS}
    return out


def project(cost: dict, d: dict, n: int, disk_bw: float, calibration: float) -> dict:
    """Return projected iteration seconds for each variant and network assumption, P in WORKERS.

    ``calibrated`` multiplies the compute term by ``calibration`` = measured / predicted
    iteration time of one local Dask worker (the kernels run slower in a worker than in-process).
    """
    slow = {**cost, "seconds_per_row": {k: v * calibration for k, v in cost["seconds_per_row"].items()}}
    variants = {f"Dask; {ASSUMED}": (cost, {}), f"Dask, calibrated; {ASSUMED}": (slow, {}),
                f"Dask, calibrated, out of core; {ASSUMED}": (slow, {"disk_bw": disk_bw}),
                f"allreduce; {ASSUMED}": (cost, {"scheduler": False})}
    for net in list(NETWORKS)[1:]:
        variants[f"Dask; {net}"] = (cost, {})
        variants[f"allreduce; {net}"] = (cost, {"scheduler": False})
    out = {}
    for key, (c, kw) in variants.items():
        beta, alpha = NETWORKS[key.split("; ")[1]]
        out[key] = {str(P): iteration_seconds(P, n, c, d, alpha, beta, **kw) for P in WORKERS}
    return out


# -- validation runs ----------------------------------------------------------------------
def slurm_run(path, jobs: int, iterations: int, chunk_rows: int, store: Path) -> dict:
    """Run ``python -m pipeline.train --cluster slurm --jobs J``; return its per-iteration seconds or the error."""
    up = subprocess.run(["bash", str(ROOT / ".ci" / "slurm-up.sh")], check=False, capture_output=True, text=True)
    cmd = [sys.executable, "-m", "pipeline.train", "--cluster", "slurm", "--jobs", str(jobs), "--data", str(path),
           "--store", str(store), "--overwrite", "--iterations", str(iterations), "--chunk-rows", str(chunk_rows),
           "--no-progress", "--dashboard-address", ":0"]
    import tempfile

    with CpuWatch() as cpu, tempfile.TemporaryDirectory() as logs:  # the jobs' slurm-*.out land in the cwd
        res = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=logs)
    out = {"command": " ".join(cmd), "slurm_up": up.stdout.strip().splitlines()[-1:] if up.stdout else [],
           "returncode": res.returncode, "other_cpu_seconds": cpu.other, "wall_seconds": cpu.wall}
    if res.returncode != 0:
        out["error"] = (res.stderr or res.stdout)[-2000:]
        return out
    from storage.runstore import RunStore

    manifest = RunStore.open(store).manifest()
    out["iterations"] = [{"seconds": h["seconds"], "accepted": h["accepted"]} for h in manifest["history"]]
    import shutil

    shutil.rmtree(store, ignore_errors=True)
    return out


def median_accepted(iters, key="seconds") -> float:
    acc = [it[key] for it in iters[1:] if it["accepted"]] or [it[key] for it in iters if it["accepted"]]
    return statistics.median(acc)


def predict_local(P: int, n: int, cost: dict, d: dict, chunks: int) -> dict:
    """Return the model on this machine: compute t_p n/P + the measured local reduce of ``chunks`` tasks + client."""
    compute = sum(cost["seconds_per_row"][p] * n / P for p in cost["sum_bytes"])
    overhead = sum(d["sums"][cost["sum_bytes"][p]][chunks] for p in cost["sum_bytes"])
    return {"compute": compute, "reduce_and_tasks": overhead, "client": cost["client_seconds"],
            "total": compute + overhead + cost["client_seconds"]}


def validate(args, cost, d) -> dict:
    """Measure 1 and 2 local workers (and SLURM jobs) on the validation store; predict each with the model."""
    path = data_store(Path(args.data_dir), args.validate_n)
    out = {"data": str(path), "n_samples": args.validate_n, "local": [], "slurm": []}
    for w in (1, 2):
        print(f"validation: {w} local worker(s) ...", flush=True)
        wait_for_quiet(args.wait_quiet)
        run = run_pipeline_passes(path, (300,), w, args.iterations, args.chunk_rows, cold=False)
        pred = predict_local(w, args.validate_n, cost, d, math.ceil(args.validate_n / args.chunk_rows))
        out["local"].append({"workers": w, "measured_seconds": median_accepted(run["iterations"]),
                             "predicted": pred, "other_cpu_seconds": run["other_cpu_seconds"],
                             "iterations": run["iterations"]})
    if args.slurm:
        for j in (1, 2):
            print(f"validation: {j} SLURM job(s) ...", flush=True)
            wait_for_quiet(args.wait_quiet)
            run = slurm_run(path, j, args.iterations, args.chunk_rows, Path(args.data_dir) / "gn-slurm-run.zarr")
            if "iterations" in run:
                run["measured_seconds"] = median_accepted(run["iterations"])
                run["predicted"] = predict_local(j, args.validate_n, cost, d,
                                                 math.ceil(args.validate_n / args.chunk_rows))
            out["slurm"].append({"jobs": j, **run})
    return out


# -- main -------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, no SLURM, under 2 minutes")
    p.add_argument("--data-dir", default="/work/bench")
    p.add_argument("--kernel-n", type=int, default=262144, help="rows for the per-row kernel timing")
    p.add_argument("--validate-n", type=int, default=2_000_000)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--chunk-rows", type=int, default=262144)
    p.add_argument("--disk-read-bytes-per-s", type=float, default=None,
                   help="cold read bandwidth (default: from benchmarks/results/gn_efficiency.json)")
    p.add_argument("--slurm", action="store_true", help="also validate with 1 and 2 SLURM worker jobs")
    p.add_argument("--wait-quiet", type=float, default=90.0,
                   help="before each measurement wait up to this many seconds for the CPUs to be idle")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scaling_model.json"))
    p.add_argument("--render-only", action="store_true",
                   help="recompute the projections, markdown and plot from the measurements in the JSON at --out")
    args = p.parse_args(argv)
    if args.render_only:
        finish(json.loads(Path(args.out).read_text()), args.out)
        return 0
    if args.quick:
        args.kernel_n, args.validate_n, args.iterations, args.slurm, args.wait_quiet = 65536, 500_000, 2, False, 0.0
    result = {"provenance": provenance(), "settings": vars(args), "problems": {}}

    disk_bw = args.disk_read_bytes_per_s
    eff = ROOT / "benchmarks" / "results" / "gn_efficiency.json"
    if disk_bw is None and eff.exists():
        disk_bw = json.loads(eff.read_text())["disk_bandwidth"]["read_bytes_per_s"]
    result["disk_read_bytes_per_s"] = disk_bw = disk_bw or 480e6

    costs = {}
    wait_for_quiet(args.wait_quiet)
    with CpuWatch() as cpu:
        for name, (n, hidden, d, *_) in PROBLEMS.items():
            print(f"kernel costs: {name} ...", flush=True)
            if d == 28:
                X, y, model = load_in_memory(data_store(Path(args.data_dir), 1_000_000), args.kernel_n)
            else:
                X, y, model = synthetic(min(args.kernel_n, n), d)
            costs[name] = kernel_costs(X, y, model, hidden, args.iterations)
    result["kernel_other_cpu_seconds"] = cpu.other
    print("Dask reduce and scheduler costs ...", flush=True)
    wait_for_quiet(args.wait_quiet)
    sizes = sorted({b for c in costs.values() for b in c["sum_bytes"].values()})
    dc = dask_costs(sizes, ks=(64, 128, 256) if args.quick else (64, 128, 256, 512, 1024),
                    sum_ks=(2, 8, 64, math.ceil(args.validate_n / args.chunk_rows)), repeats=2 if args.quick else 3)
    result["dask"] = dc
    for name, (n, hidden, d, cores, secs, acc) in PROBLEMS.items():
        result["problems"][name] = {"n": n, "hidden": list(hidden), "features": d, "paper": {
            "cores": cores, "seconds": secs, "accuracy": acc}, "cost": costs[name]}
    result["validation"] = validate(args, costs["HIGGS"], dc)
    finish(result, args.out)
    return 0


def finish(result: dict, out) -> None:
    """Calibrate on one local worker, project every problem, write JSON, markdown and the plot."""
    one = result["validation"]["local"][0]
    c = one["measured_seconds"] / one["predicted"]["total"]
    result["calibration"] = c
    for runs in (result["validation"]["local"], result["validation"]["slurm"]):
        for run in runs:
            if "predicted" in run:
                pr = run["predicted"]
                pr["total_calibrated"] = pr["total"] + (c - 1) * pr["compute"]
    for p in result["problems"].values():
        p["projection"] = project(p["cost"], result["dask"], p["n"], result["disk_read_bytes_per_s"], c)
    result["consensus"] = consensus_projection(result, result["problems"]["HIGGS"]["n"])
    write_results(out, result, markdown)
    plot(result, Path(out).with_suffix(".png"))


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, (name, pr) in zip(axes, r["problems"].items(), strict=True):
        for key, style in ((f"Dask; {ASSUMED}", "C0-"), (f"Dask, calibrated; {ASSUMED}", "C2-"),
                           (f"Dask, calibrated, out of core; {ASSUMED}", "C2--"), (f"allreduce; {ASSUMED}", "C1-"),
                           ("Dask; 1 Gb/s, 100 us", "C0:"), ("allreduce; 100 Gb/s, 2 us", "C1:")):
            proj = pr["projection"][key]
            ax.plot([int(P) for P in proj], [v["total"] for v in proj.values()], style, label=key)
        one = pr["projection"][f"allreduce; {ASSUMED}"]["1"]
        ps = np.array(WORKERS, float)
        ax.plot(ps, (one["compute"]) / ps + one["client"], "k:", lw=0.8, label="compute / P + client (ideal)")
        cons = r.get("consensus")
        if name == "HIGGS" and cons:
            for key, style in ((f"Dask, calibrated; {ASSUMED}", "C3-"), (f"allreduce; {ASSUMED}", "C3:")):
                proj = cons["passes"][key]
                ax.plot([int(P) for P in proj], [v["total"] for v in proj.values()], style,
                        label=f"consensus, one pass (one shard per worker): {key}")
        pp = pr["paper"]
        ax.plot([pp["cores"]], [pp["seconds"]], "r*", ms=12,
                label=f"paper ADMM: {pp['accuracy']:.0%} test acc. in {pp['seconds']} s (time to accuracy)")
        ax.set(xscale="log", yscale="log", xlabel="workers (one core each)", ylabel="seconds per iteration",
               title=f"{name}: {pr['n']:,} rows, {'-'.join(map(str, pr['cost']['widths']))}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Projected Gauss-Newton iteration time (model from measured per-row, reduce and scheduler costs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def markdown(r: dict) -> str:
    pv, d = r["provenance"], r["dask"]
    L = ["# Strong-scaling model of one Gauss-Newton iteration", "",
         f"- Command: `{pv['command']}`",
         f"- Date: {pv['date']} on {pv['host']} ({pv['cpus']} CPUs, {pv['ram_bytes'] / 2**30:.1f} GiB RAM)",
         "- Model and its terms: docstring of `benchmarks/scaling_model.py`. Network **assumed** 10 Gb/s and "
         "50 µs per message (sensitivity: 1 Gb/s / 100 µs and 100 Gb/s / 2 µs); everything else measured here.",
         f"- Other processes' CPU seconds: kernel timing {r['kernel_other_cpu_seconds']:.1f}, Dask timing "
         f"{d['other_cpu_seconds']:.1f}.", "", "## Measured inputs", "",
         "| quantity | " + " | ".join(r["problems"]) + " |", "|---|" + "---|" * len(r["problems"])]
    pr = list(r["problems"].values())
    rows = [("widths", lambda c: "-".join(map(str, c["widths"]))),
            ("pass A µs per row (1 thread)", lambda c: f"{c['seconds_per_row']['forward_chunk'] * 1e6:.2f}"),
            ("pass B µs per row (1 thread)", lambda c: f"{c['seconds_per_row']['curvature_chunk'] * 1e6:.2f}"),
            ("client step s", lambda c: f"{c['client_seconds'] * 1e3:.1f} ms"),
            ("sums of pass A / B (float64)", lambda c: f"{c['sum_bytes']['forward_chunk'] / 1e3:.0f} kB / "
                                                      f"{c['sum_bytes']['curvature_chunk'] / 1e3:.0f} kB"),
            ("weights sent to pass A / B (float32)", lambda c: f"{c['broadcast_bytes']['forward_chunk'] / 1e3:.0f} kB / "
                                                              f"{c['broadcast_bytes']['curvature_chunk'] / 1e3:.0f} kB")]
    for label, fn in rows:
        L.append(f"| {label} | " + " | ".join(fn(p["cost"]) for p in pr) + " |")
    L += ["", f"Dask on this machine (LocalCluster, 2 workers): scheduler cost **{d['scheduler_seconds_per_task'] * 1e6:.0f} µs "
          f"per task** (slope of trivial trees of {', '.join(map(str, d['tiny']))} tasks: "
          + ", ".join(f"{v:.3f} s" for v in d["tiny"].values()) + "); reduce of the sums over 2 / 8 / 64 tasks: "
          + "; ".join(f"{int(b) / 1e3:.0f} kB: " + ", ".join(f"{k} tasks {t:.3f} s" for k, t in v.items())
                      for b, v in d["sums"].items())
          + f"; NumPy sum {1 / d['add_seconds_per_byte'] / 1e9:.1f} GB/s. Disk read bandwidth per worker: "
          f"{r['disk_read_bytes_per_s'] / 1e6:.0f} MB/s.", ""]
    v = r["validation"]
    L += [f"## Validation (n = {v['n_samples']:,}, `{v['data']}`, 28-300-1)", "",
          "| cluster | workers | measured s per iteration | predicted s | compute part | reduce, tasks, client | "
          "measured / predicted | predicted, compute calibrated on 1 local worker | measured / calibrated | "
          "other CPU s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for kind, runs in (("LocalCluster", v["local"]), ("SLURM", v["slurm"])):
        for run in runs:
            w = run.get("workers", run.get("jobs"))
            if "measured_seconds" not in run:
                L.append(f"| {kind} | {w} | failed: {run.get('error', '')[-200:]!r} | | | | | | | |")
                continue
            pdt = run["predicted"]
            L.append(f"| {kind} | {w} | {run['measured_seconds']:.2f} | {pdt['total']:.2f} | {pdt['compute']:.2f} | "
                     f"{pdt['total'] - pdt['compute']:.2f} | {run['measured_seconds'] / pdt['total']:.2f} | "
                     f"{pdt['total_calibrated']:.2f} | {run['measured_seconds'] / pdt['total_calibrated']:.2f} | "
                     f"{run['other_cpu_seconds']:.1f} |")
    L += ["", f"Calibration: one local Dask worker ran the iteration {r['calibration']:.2f}x slower than the model "
          "built from the in-process kernel time (reading the chunk and running the kernel inside a worker); the "
          "*calibrated* variants multiply the compute term by that factor. SLURM rows: the worker jobs are started "
          "by slurmd, not by this process, so their own CPU time is counted in `other CPU s`.", ""]
    for name, p in r["problems"].items():
        pp = p["paper"]
        keys = list(p["projection"])
        L += [f"## Projection: {name} ({p['n']:,} rows, {'-'.join(map(str, p['cost']['widths']))})", "",
              "Seconds per accepted iteration (two passes + client step).", "",
              "| workers | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for P in WORKERS:
            L.append(f"| {P:,} | " + " | ".join(f"{p['projection'][k][str(P)]['total']:.3g}" for k in keys) + " |")
        main = p["projection"][f"Dask, calibrated; {ASSUMED}"]
        best = min(main, key=lambda P: main[P]["total"])
        at = main[str(pp["cores"])]
        ar = p["projection"][f"allreduce; {ASSUMED}"][str(pp["cores"])]
        L += ["", f"At the paper's {pp['cores']:,} cores (paper: ADMM reached {pp['accuracy']:.0%} test accuracy in "
              f"{pp['seconds']} s): Dask (calibrated) {at['total']:.3g} s per iteration (compute {at['compute']:.3g}, scheduler "
              f"{at['scheduler']:.3g}, reduce {at['reduce']:.3g}, broadcast {at['broadcast']:.3g}, client "
              f"{at['client']:.3g}) = {pp['seconds'] / at['total']:.1f} iterations in {pp['seconds']} s; allreduce "
              f"{ar['total']:.3g} s = {pp['seconds'] / ar['total']:.0f} iterations. Fastest Dask (calibrated) point: {int(best):,} "
              f"workers, {main[best]['total']:.3g} s.", ""]
    L += consensus_markdown(r)
    L += ["![projected iteration time](scaling_model.png)", ""]
    return "\n".join(L)


def _nearest_shards(acc: dict, rows: int, rows_per_shard: float):
    """Return the measured shard count whose rows per shard are nearest ``rows_per_shard`` (within 2×), else None."""
    best = min(acc, key=lambda S: abs(math.log(rows / int(S)) - math.log(rows_per_shard)))
    return best if abs(math.log(rows / int(best)) - math.log(rows_per_shard)) <= math.log(2) else None


def consensus_markdown(r: dict) -> list:
    """Return the markdown lines of the consensus projection beside Gauss-Newton and the paper (HIGGS)."""
    cons = r.get("consensus")
    if not cons:
        return []
    higgs = r["problems"]["HIGGS"]
    n, pp, gn = higgs["n"], higgs["paper"], higgs["projection"]
    acc, rows = cons.get("accuracy_by_shards") or {}, cons.get("accuracy_rows") or 1
    L = [f"## Consensus beside Gauss-Newton and the paper: HIGGS ({n:,} rows, 28-300-1)", "",
         f"From `{cons['source']}` (`benchmarks/consensus_scaling.py`): shard kernel "
         f"{cons['kernel']['seconds_per_row'] * 1e6:.2f} µs per row per local epoch (one thread), sums "
         f"{cons['kernel']['sum_bytes'] / 1e3:.0f} kB per pass; one local worker ran a pass "
         f"{cons['calibration']:.2f}x the modelled compute (the *calibrated* column; that pass includes `--alpha "
         "auto`'s pass A over a sample, and the machine's load is in the measured line below: Gauss-Newton's "
         "calibration was measured on a quieter machine, so compare the uncalibrated columns too). One shard per worker, one "
         "local epoch per pass (the default from 20,000 rows per shard up; below that the auto rule runs more "
         "epochs and the compute term grows accordingly). A Gauss-Newton iteration is two passes, a consensus "
         "pass one; the accuracy column is measured on 1 M HIGGS-shaped rows at the shard count whose rows per "
         "shard are nearest (within 2×) to the projection's, and assumes accuracy per pass depends on the rows "
         "each shard sees.", "",
         "| workers | rows per shard | gauss-newton s per iteration (Dask, calibrated) | consensus s per pass "
         "(Dask) | consensus s per pass (Dask, calibrated) | consensus, allreduce | consensus test acc. after pass "
         "1 / 2 (shards measured) |", "|---|---|---|---|---|---|---|"]
    for P in WORKERS:
        g = gn[f"Dask, calibrated; {ASSUMED}"][str(P)]["total"]
        u = cons["passes"][f"Dask; {ASSUMED}"][str(P)]["total"]
        c = cons["passes"][f"Dask, calibrated; {ASSUMED}"][str(P)]["total"]
        a = cons["passes"][f"allreduce; {ASSUMED}"][str(P)]["total"]
        S = _nearest_shards(acc, rows, n / P) if acc else None
        measured = "not measured" if S is None else " / ".join(f"{v:.4f}" for v in acc[S][:2]) + f" ({S})"
        L.append(f"| {P:,} | {n // P:,} | {g:.3g} | {u:.3g} | {c:.3g} | {a:.3g} | {measured} |")
    at = cons["passes"][f"Dask, calibrated; {ASSUMED}"][str(pp["cores"])]
    L += ["", f"At the paper's {pp['cores']:,} cores (ADMM: {pp['accuracy']:.0%} test accuracy in {pp['seconds']} s) "
          f"a consensus pass is modelled at {at['total']:.3g} s (scheduler {at['scheduler']:.3g} s of it; "
          f"{n // pp['cores']:,} rows per shard, more shards than measured for accuracy).", "",
          "Accuracy cost of more shards (measured, in memory, test accuracy after each pass):", "",
          "| shards | rows per shard | " + " | ".join(f"pass {i + 1}" for i in range(max(map(len, acc.values()), default=0)))
          + " |", "|---|---|" + "---|" * max(map(len, acc.values()), default=0)]
    for S, v in acc.items():
        L.append(f"| {S} | {rows // int(S):,} | " + " | ".join(f"{a:.4f}" for a in v) + " |")
    mw = cons.get("measured_workers") or []
    if mw:
        L += ["", "Measured pipeline passes (HIGGS-shaped 1 M rows, LocalCluster, one thread per worker): "
              + "; ".join(f"{w['workers']} worker(s) {w['seconds_per_pass']:.2f} s per pass (other processes' CPU "
                          f"{max(0, w['other_cpu_seconds']):.0f} s)" for w in mw) + "."]
    return L + [""]


if __name__ == "__main__":
    sys.exit(main())
