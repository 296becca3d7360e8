"""Kill -9 a training run at many chosen moments (commit k + delay), resume it, compare bitwise with the uninterrupted run.

tests/test_resume.py's ``kill_and_resume`` (same data, command and checks), at a grid of (after, delay) points,
repeated; for the hunt of session 13's one unexplained failure (after commit 2 + 0.57 s, load 12-17).
Every killed store is copied aside before its resume; a failing point keeps that copy and the resumed store
and is diffed against the uninterrupted run (first differing history record, which weights differ).

    nice -n 15 python benchmarks/resume_kill_sweep.py --after -1 0 1 2 3 4 5 --delays 0:1:0.05 --repeat 1 OUT_DIR [-- EXTRA TRAIN ARGS]

(options before OUT_DIR: argparse takes the extra train arguments only right after it)

Writes OUT_DIR/points.jsonl (one line a point: after, delay, killed_at, ok, seconds, load, error) as it goes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage.data import write_data  # noqa: E402
from tests import test_resume as tr  # noqa: E402


def grid(text: str) -> list:
    if ":" in text:
        lo, hi, step = map(float, text.split(":"))
        return [round(x, 4) for x in np.arange(lo, hi + step / 2, step)]
    return [float(text)]


def first_difference(reference: list, metrics: list):
    """Return (iteration, key, reference value, value) of the first differing history entry, or None."""
    for a, b in zip(reference, metrics):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return a.get("iteration"), key, a.get(key), b.get(key)
    if len(reference) != len(metrics):
        return None, "length", len(reference), len(metrics)
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--after", type=int, nargs="+", default=list(range(-1, tr.ITERATIONS)))
    parser.add_argument("--delays", nargs="+", default=["0:1:0.05"])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--shuffle-seed", type=int, default=None, help="visit the points in a random order")
    parser.add_argument("extra", nargs="*", help="extra train arguments (after --)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not (data / "train.zarr").exists():
        data.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)  # tests/test_resume.py's data fixture
        X = rng.normal(size=(20_000, 20)).astype(np.float32)
        y = (X[:, 0] * X[:, 1] + X[:, 2] > 0).astype(int)
        write_data(data / "train.zarr", X, y, chunk_rows=4096)
    base = data / ("baseline" + "".join(a.strip("-") for a in args.extra) + ".zarr")
    if not base.exists():
        uninterrupted = tr.baseline(data, base, *args.extra)
    else:
        uninterrupted = tr.final_state(base)
    points = [(a, d) for _ in range(args.repeat) for a in args.after for spec in args.delays for d in grid(spec)]
    if args.shuffle_seed is not None:
        np.random.default_rng(args.shuffle_seed).shuffle(points)
    log = open(out / "points.jsonl", "a")
    for n, (after, delay) in enumerate(points):
        work = out / f"p{os.getpid()}-{n}"
        work.mkdir()
        aside = {}

        def keep(store, aside=aside, work=work):
            aside["killed"] = work / "killed.zarr"
            if store.exists():
                shutil.copytree(store, aside["killed"], symlinks=True)

        t0 = time.time()
        row = {"after": after, "delay": delay, "load": os.getloadavg()[0]}
        try:
            row["killed_at"] = tr.kill_and_resume(data, uninterrupted, work, None, *args.extra, after=after,
                                                  delay=delay, before_resume=keep)
            row["ok"] = True
        except Exception as exc:  # an AssertionError of the comparison, or a failed resume
            row["ok"] = False
            row["error"] = f"{type(exc).__name__}: {str(exc)[:600]}"
            try:
                _, metrics = tr.final_state(work / "run.zarr")
                row["first_difference"] = first_difference(uninterrupted[1], metrics)
            except Exception as exc2:
                row["first_difference"] = f"unreadable: {exc2}"
            try:
                row["killed_manifest_iteration"] = tr.committed(aside.get("killed", work / "none"))
            except Exception:
                pass
        row["seconds"] = round(time.time() - t0, 2)
        row["load_end"] = os.getloadavg()[0]
        log.write(json.dumps(row, default=str) + "\n")
        log.flush()
        print(json.dumps(row, default=str), flush=True)
        if row["ok"]:
            shutil.rmtree(work, ignore_errors=True)
        else:
            (work / "FAILED").write_text(json.dumps(row, default=str))


if __name__ == "__main__":
    main()
