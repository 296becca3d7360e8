"""What the live /training page costs and how fast it follows: time per iteration with and without it, commit → page delay.

Side by side in one process, alternating (off, on, off, on, …), the same
data, settings and local cluster (2 single-threaded worker processes):

* off: ``train(..., monitor=None)``, nothing published;
* on:  ``train(..., monitor=TrainingMonitor(client))`` while a separate
  process fetches ``/training/data.json`` every 0.5 s, as an open page does.

The ratio of median seconds per iteration (on / off) is the overhead. Then one
more run with a real browser (headless chromium) on the page records, for each
commit, the delay until the page's data source holds it, and saves a
screenshot (``--screenshot``). Results: ``benchmarks/results/dashboard_overhead.{json,md}``.

    PYTHONPATH=. python benchmarks/dashboard_overhead.py [--rows 300000] [--iterations 6] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from bench_util import CpuWatch  # noqa: E402
from pipeline.dashboard import install  # noqa: E402
from pipeline.monitor import TrainingMonitor  # noqa: E402
from pipeline.training import train  # noqa: E402
from solvers.config import TrainConfig  # noqa: E402
from storage.data import write_data  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
POLLER = """
import sys, time, urllib.request
url = sys.argv[1]
while True:
    try:
        urllib.request.urlopen(url, timeout=5).read()
    except Exception:
        pass
    time.sleep(0.5)
"""


def make_data(path: Path, test_path: Path, rows: int, test_rows: int = 50_000, features: int = 28, seed: int = 0):
    """A HIGGS-shaped binary task (a small random teacher network on Gaussian features), train and test stores."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows + test_rows, features)).astype(np.float32)
    W = rng.normal(size=(features, 16))
    y = (np.tanh(X @ W) @ rng.normal(size=16) + 0.5 * rng.normal(size=len(X)) > 0).astype(np.int8)
    write_data(path, X[:rows], y[:rows], chunk_rows=50_000, overwrite=True)
    write_data(test_path, X[rows:], y[rows:], overwrite=True)
    return path, test_path


def one_run(client, data, test, store, config, monitor):
    with CpuWatch() as cpu:
        result = train(client, store=store, data=data, test_data=test, config=config, overwrite=True,
                       report=lambda _: None, monitor=monitor)
    seconds = [h["seconds"] for h in result.history]
    return {"seconds": seconds, "wall": cpu.wall, "other_cpu_seconds": cpu.other,
            "monitor_client_seconds": monitor.client_seconds if monitor else 0.0}


def browser_run(client, data, test, store, config, page_url, screenshot):
    """Train with a real browser on the page; return the commit → page delays and save a screenshot."""
    from browser_util import chrome, unavailable, wait_for

    reason = unavailable()
    if reason:
        return {"skipped": reason}
    driver = chrome(1400, 1500)
    try:
        driver.get(page_url)
        wait_for(driver, "return window.admm_training !== undefined")
        import threading

        def shoot():  # mid-run, while a pass of the last iterations is running
            try:
                wait_for(driver, f"return (window.admm_training.log || []).some(e => e.committed_at >= {started} "
                                 f"&& e.iteration >= {config.iterations - 2})", timeout=600)
                time.sleep(2.0)
                driver.save_screenshot(str(screenshot))
            except Exception as exc:  # noqa: BLE001
                print("no screenshot:", exc)

        started = time.time()
        shooter = threading.Thread(target=shoot) if screenshot else None
        if shooter:
            shooter.start()
        monitor = TrainingMonitor(client)
        train(client, store=store, data=data, test_data=test, config=config, overwrite=True, report=lambda _: None,
              monitor=monitor)
        time.sleep(1.5)  # the last poll
        if shooter:
            shooter.join()
        log = driver.execute_script("return window.admm_training.log")
    finally:
        driver.quit()
    # only this run's commits (the page opened showing the previous run's last one)
    delays = [e["received"] - e["committed_at"] for e in log if (e.get("committed_at") or 0) >= started]
    return {"delays": delays, "median_delay": float(np.median(delays)), "max_delay": float(np.max(delays)),
            "commits_seen": len(delays)}


def serve_cost(scheduler, repeats: int = 200) -> float:
    """Return the scheduler's seconds to answer one poll of /training/data.json (the last run's history)."""
    from pipeline.dashboard import snapshot

    t0 = time.perf_counter()
    for _ in range(repeats):
        json.dumps(snapshot(scheduler), allow_nan=False)
    return (time.perf_counter() - t0) / repeats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--screenshot", type=Path, default=ROOT / "docs" / "training-page.png")
    p.add_argument("--browser-only", action="store_true",
                   help="only the browser run: replace 'browser' in the existing results file")
    args = p.parse_args(argv)
    from distributed import Client, LocalCluster

    work = Path(tempfile.mkdtemp(prefix="dash-bench-"))
    data, test = make_data(work / "data.zarr", work / "test.zarr", args.rows)
    config = TrainConfig(hidden=(args.hidden,), iterations=args.iterations, validation_fraction=0.1, patience=0)
    runs = {"off": [], "on": []}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        install(cluster.scheduler)
        page = f"http://127.0.0.1:{cluster.scheduler.http_server.port}/training"
        if args.browser_only:
            result = json.loads((RESULTS / "dashboard_overhead.json").read_text())
            one_run(client, data, test, work / "before.zarr", config, TrainingMonitor(client))  # a finished run shown
            result["browser"] = browser_run(client, data, test, work / "browser.zarr", config, page, args.screenshot)
            (RESULTS / "dashboard_overhead.json").write_text(json.dumps(result, indent=1))
            print(json.dumps(result["browser"], indent=1))
            return result
        one_run(client, data, test, work / "warm.zarr", TrainConfig(hidden=(args.hidden,), iterations=1), None)
        for r in range(args.repeats):
            for mode in ("off", "on"):
                poller = None
                if mode == "on":
                    poller = subprocess.Popen([sys.executable, "-c", POLLER, page + "/data.json"])
                try:
                    out = one_run(client, data, test, work / f"{mode}{r}.zarr", config,
                                  TrainingMonitor(client) if mode == "on" else None)
                finally:
                    if poller is not None:
                        poller.kill()
                        poller.wait()
                runs[mode].append(out)
                print(mode, r, [f"{s:.2f}" for s in out["seconds"]], f"other CPU {out['other_cpu_seconds']:.0f} s",
                      flush=True)
        poll_seconds = serve_cost(cluster.scheduler)
        print("one poll served in", poll_seconds, flush=True)
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        latency = browser_run(client, data, test, work / "browser.zarr", config, page, args.screenshot)
        print("latency", latency, flush=True)
    off = np.concatenate([r["seconds"] for r in runs["off"]])
    on = np.concatenate([r["seconds"] for r in runs["on"]])
    per_repeat = [float(np.median(b["seconds"]) / np.median(a["seconds"])) for a, b in zip(runs["off"], runs["on"])]
    client_share = float(sum(r["monitor_client_seconds"] for r in runs["on"]) / sum(sum(r["seconds"]) for r in runs["on"]))
    result = {
        "rows": args.rows, "features": 28, "hidden": args.hidden, "iterations": args.iterations,
        "repeats": args.repeats, "solver": config.solver, "workers": "2 processes x 1 thread",
        "median_seconds_off": float(np.median(off)), "median_seconds_on": float(np.median(on)),
        "ratio_on_off": float(np.median(on) / np.median(off)), "ratio_per_repeat": per_repeat,
        "monitor_client_share": client_share, "poll_serve_seconds": poll_seconds,
        "poll_share_of_one_core": poll_seconds * 2,  # the page polls twice a second
        "runs": runs, "browser": latency,
        "other_cpu_seconds_per_wall_second": float(sum(r["other_cpu_seconds"] for m in runs.values() for r in m)
                                                    / sum(r["wall"] for m in runs.values() for r in m)),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dashboard_overhead.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    return result


if __name__ == "__main__":
    main()
