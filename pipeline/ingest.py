"""Command line: convert a CSV, NPZ or Parquet file into a chunked Zarr data store.

Example::

    python -m pipeline.ingest HIGGS.csv.gz --out higgs.zarr --label-column 0 \\
        --test-fraction 0.1 --seed 1

writes the training rows to ``higgs.zarr`` and about 10 % of the rows to
``higgs-test.zarr``. A split made beforehand is ingested in one process with
``python -m pipeline.ingest train.csv --out data.zarr --test-source test.csv``
(``data.zarr`` and ``data-test.zarr``). Errors in the input are reported as one line naming the
file, the line or row and the problem; the exit status is then 2.
"""

from __future__ import annotations

import argparse
import sys
import time

from pipeline.cli import ArgumentParser, exit_process, exits_on_input_error, positive_int
from pipeline.signals import exit_on_signals
from solvers.errors import InputError
from storage.data import StoreExists
from storage.ingest import ingest

_DESCRIPTION = """\
Stream a data file into a chunked Zarr data store for training, without
loading it into memory. Features are stored as float32, labels as float64.
A label column of text (setosa, versicolor, …) holds class labels: they are
stored as codes 0, 1, 2, … of the sorted labels, which the store records, and
predict / evaluate / the estimators give the labels back. Its first rows
decide: mostly words, text; else numbers, and a stray word or an empty label is
an error naming its line. --text-labels reads every label as text whatever the
first rows hold (a test file of a text-labelled source whose first rows are
mostly '1'). As text, '01' and '1' are two classes; as numbers both are 1.

Sources (by suffix):
  .csv .txt .data (.gz too)   comma-separated; a first line that is not all
                              numbers is taken as a header (force with
                              --header / --no-header)
  .npz                        arrays X (samples x features) and y (labels)
  .parquet .pq                numeric feature columns, a label column of
                              numbers or text (needs pyarrow)
"""

_EPILOG = """\
examples:
  python -m pipeline.ingest train.csv --out data.zarr
  python -m pipeline.ingest HIGGS.csv.gz --out higgs.zarr --label-column 0 --test-fraction 0.1
  python -m pipeline.ingest train.csv --out data.zarr --test-source test.csv   # a split made beforehand
  python -m pipeline.ingest table.parquet --out data.zarr --label-column target --overwrite
  python -m pipeline.ingest new.csv --out new.zarr --no-labels     # features only, to predict

exit status: 0 on success, 2 on a problem with the input or options.
"""


def _fraction(text: str) -> float:
    """Parse a fraction in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m pipeline.ingest``."""
    p = ArgumentParser(
        prog="python -m pipeline.ingest", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE", help="input file (.csv, .csv.gz, .npz, .parquet)")
    p.add_argument("--out", required=True, metavar="DATA.zarr",
                   help="data store to create for the training rows")
    p.add_argument("--label-column", metavar="NAME|INDEX", default=None,
                   help="label column by header name or 0-based index (negative counts "
                        "from the end); default: the last column")
    p.add_argument("--test-fraction", type=_fraction, default=0.0, metavar="F",
                   help="hold out this fraction of rows, 0 <= F < 1, into a test store "
                        "(default 0: no test store)")
    p.add_argument("--test-source", metavar="TEST_SOURCE", default=None,
                   help="a second file, the test rows of a split made beforehand, written whole to the test store "
                        "with the same options: the two stores of two ingestions, in one process (not with "
                        "--test-fraction); its feature columns must be the first file's, named alike where both "
                        "files name them")
    p.add_argument("--test-out", metavar="TEST.zarr", default=None,
                   help="test store path (default: DATA-test.zarr next to --out)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of the reproducible train/test split (default 0)")
    p.add_argument("--chunk-rows", type=positive_int, default=None, metavar="N",
                   help="rows per stored chunk (default: about 32 MB of features per chunk)")
    head = p.add_mutually_exclusive_group()
    head.add_argument("--header", dest="header", action="store_true", default=None,
                      help="CSV: the first line is a header")
    head.add_argument("--no-header", dest="header", action="store_false",
                      help="CSV: the first line is data")
    p.add_argument("--no-labels", dest="labels", action="store_false",
                   help="every column is a feature: data to predict on (python -m pipeline.predict), "
                        "not to train or evaluate")
    p.add_argument("--text-labels", action="store_true",
                   help="read every label as text (class names: '1', '01' and 'cat' are three classes), whatever the "
                        "label column's first rows hold; default: text when most of them are words")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing data stores (only after the new ones are complete)")
    return p


class _Progress:
    """Print 'rows so far' at most once a second, to stdout with the summary lines (stderr holds only a failure's
    one line, also after rows were read: a full disk half way)."""

    def __init__(self, stream=None, every: float = 1.0):
        self.stream, self.every = stream if stream is not None else sys.stdout, every
        self.last = time.monotonic()
        self.shown = False

    def __call__(self, rows: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            end = "\r" if self.stream.isatty() else "\n"
            print(f"  read {rows:,} rows", end=end, file=self.stream, flush=True)
            self.last, self.shown = now, True

    def close(self) -> None:
        if self.shown and self.stream.isatty():
            print(file=self.stream)


def _describe(store, what: str) -> str:
    """Return one summary line for a written store."""
    return (f"{what}: {store.n_samples:,} rows x {store.n_features} features, "
            f"{store.n_chunks} chunk(s) of {store.chunk_rows:,} rows -> {store.path}")


@exits_on_input_error
def main(argv=None) -> int:
    """Run the ingestion command line; return the exit status."""
    args = build_parser().parse_args(argv)
    progress = _Progress()
    t0 = time.perf_counter()
    try:
        # SIGTERM (kill, scancel) unwinds like Ctrl-C: the partial store, <DATA>.lock and reader records go
        with exit_on_signals(done="no store was written or replaced"):
            train, test = ingest(
                args.source, args.out, label_column=args.label_column,
                test_fraction=args.test_fraction, test_out=args.test_out, seed=args.seed,
                chunk_rows=args.chunk_rows, header=args.header, overwrite=args.overwrite,
                progress=progress, labels=args.labels, text_labels=args.text_labels, test_source=args.test_source)
    except InputError as err:
        progress.close()
        if isinstance(err, StoreExists):  # the API's overwrite=True is this command's --overwrite
            err = err.with_flag("--overwrite")
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SystemExit:  # a signal: exit_on_signals printed its line
        progress.close()
        raise
    progress.close()
    # without a test split the store may be for anything (--no-labels: to predict on; a held-out file): not "train"
    print(_describe(train, "train" if test is not None else "data"))
    if test is not None:
        print(_describe(test, "test"))
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    exit_process(main())
