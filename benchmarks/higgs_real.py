"""The real HIGGS data set (UCI; ``HIGGS.csv.gz``, 11 M rows, label in the first column) as data stores.

For users who have the file: it is streamed through the project's own
ingestion (:func:`storage.ingest.ingest`, the code behind ``python -m
pipeline.ingest``) into a training store and a held-out test store. The test
rows are chosen by the ingest's reproducible split rule with
``test_fraction = 500000 / 11000000`` (about as many rows as the customary
"last 500 000 rows" test set, but spread over the file). A small JSON file
beside the stores records the source (path, size, modification time), the
fraction and the seed; :func:`higgs_stores` reuses the stores only while that
record matches.

Run (``benchmarks/compare.py --task higgs-real --higgs-csv PATH`` does this itself)::

    python benchmarks/higgs_real.py /data/HIGGS.csv.gz --out /work/bench
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from solvers.errors import InputError  # noqa: E402
from storage.data import open_data  # noqa: E402
from storage.ingest import ingest  # noqa: E402

TEST_FRACTION = 500_000 / 11_000_000
N_FEATURES = 28


def _record(csv: Path, test_fraction: float, seed: int) -> dict:
    st = csv.stat()
    return {"source": str(csv.resolve()), "bytes": st.st_size, "mtime": int(st.st_mtime),
            "test_fraction": test_fraction, "seed": seed, "label_column": 0}


def higgs_stores(csv, out_dir, *, test_fraction: float = TEST_FRACTION, seed: int = 0, chunk_rows=None,
                 log=print):
    """Return ``(train_store_path, test_store_path)`` for HIGGS.csv(.gz), ingesting it unless cached."""
    csv = Path(csv)
    if not csv.exists():
        raise InputError(f"HIGGS file {csv} does not exist (HIGGS.csv.gz, 11 M rows, label first; "
                         "it cannot be downloaded here: pass the path of your copy)")
    out_dir = Path(out_dir)
    train, test = out_dir / "higgs-real.zarr", out_dir / "higgs-real-test.zarr"
    meta = out_dir / "higgs-real.json"
    want = _record(csv, test_fraction, seed)
    if meta.exists() and train.exists() and test.exists():
        try:
            have = json.loads(meta.read_text())
            open_data(train), open_data(test)
        except (ValueError, InputError):
            have = None
        if have and {k: have.get(k) for k in want} == want:
            log(f"reusing {train} and {test} (ingested from {csv})")
            return train, test
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"ingesting {csv} into {train} and {test} (test fraction {test_fraction:.4f}) ...")
    t0 = time.perf_counter()
    last = [t0]

    def progress(rows):
        if time.perf_counter() - last[0] > 10:
            last[0] = time.perf_counter()
            log(f"  read {rows:,} rows ({last[0] - t0:.0f} s)")

    tr, te = ingest(csv, train, label_column=0, test_fraction=test_fraction, test_out=test, seed=seed,
                    chunk_rows=chunk_rows, header=False, overwrite=True, progress=progress)
    if tr.n_features != N_FEATURES:
        log(f"warning: {csv} has {tr.n_features} feature columns; HIGGS has {N_FEATURES}")
    meta.write_text(json.dumps({**want, "train_rows": tr.n_samples, "test_rows": te.n_samples,
                                "seconds": time.perf_counter() - t0}, indent=1))
    log(f"ingested {tr.n_samples:,} training and {te.n_samples:,} test rows in {time.perf_counter() - t0:.0f} s")
    return train, test


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv", help="HIGGS.csv.gz (or .csv)")
    p.add_argument("--out", default="/work/bench", help="directory for higgs-real.zarr and higgs-real-test.zarr")
    p.add_argument("--test-fraction", type=float, default=TEST_FRACTION)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-rows", type=int, default=None)
    args = p.parse_args(argv)
    try:
        higgs_stores(args.csv, args.out, test_fraction=args.test_fraction, seed=args.seed,
                     chunk_rows=args.chunk_rows)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
