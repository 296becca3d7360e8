"""Tests for the data-store format (storage.data), ingestion (storage.ingest) and its CLI."""

import gzip
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from solvers.errors import InputError
from storage.data import DataWriter, default_chunk_rows, open_data, write_data
from storage.ingest import default_test_out, held_out_mask, ingest
from tests.conftest import run_mains, run_module

REPO = Path(__file__).resolve().parents[1]


def write_csv(path, rows, header=None, compress=False):
    """Write rows (lists of values or strings) as CSV text, full float precision."""
    lines = [",".join(header)] if header else []
    lines += [",".join(v if isinstance(v, str) else repr(float(v)) for v in row) for row in rows]
    text = "\n".join(lines) + "\n"
    if compress:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        Path(path).write_text(text)
    return path


@pytest.fixture
def table():
    """A 50 x 4 float64 table: columns a, b, c and a 0/1 label."""
    rng = np.random.default_rng(0)
    t = rng.normal(size=(50, 4)) * np.array([1.0, 1e-3, 1e5, 1.0])
    t[:, 3] = rng.integers(0, 2, 50)
    return t


def read(store):
    """Return (X, y) of a data store as NumPy arrays."""
    return store.X[:], store.y[:]


# ------------------------------------------------------------------ round trips

def test_csv_with_header_label_by_name(tmp_path, table):
    src = write_csv(tmp_path / "t.csv", table[:, [3, 0, 1, 2]], header=["cls", "a", "b", "c"])
    train, test = ingest(src, tmp_path / "d.zarr", label_column="cls")
    assert test is None
    X, y = read(train)
    assert X.dtype == np.float32 and y.dtype == np.float64
    np.testing.assert_array_equal(X, table[:, :3].astype(np.float32))
    np.testing.assert_array_equal(y, table[:, 3])
    assert train.feature_names == ("a", "b", "c") and train.label_name == "cls"
    assert open_data(tmp_path / "d.zarr") == train


def test_csv_without_header_default_last_column(tmp_path, table):
    src = write_csv(tmp_path / "t.csv", table)
    store, _ = ingest(src, tmp_path / "d.zarr")
    X, y = read(store)
    np.testing.assert_array_equal(X, table[:, :3].astype(np.float32))
    np.testing.assert_array_equal(y, table[:, 3])
    assert store.feature_names == ("x0", "x1", "x2") and store.label_name == "label"


@pytest.mark.parametrize("label", [0, "0", -4, "-4"])
def test_csv_label_by_index(tmp_path, table, label):
    src = write_csv(tmp_path / "t.csv", table[:, [3, 0, 1, 2]], header=["cls", "a", "b", "c"])
    store, _ = ingest(src, tmp_path / "d.zarr", label_column=label)
    np.testing.assert_array_equal(store.y[:], table[:, 3])
    assert store.label_name == "cls"


@pytest.mark.parametrize("name", ["t.csv.gz", "T.CSV.GZ"])  # suffixes in any case, as source_kind takes them
def test_csv_gz(tmp_path, table, name):
    src = write_csv(tmp_path / name, table, header=["a", "b", "c", "y"], compress=True)
    store, _ = ingest(src, tmp_path / "d.zarr")
    np.testing.assert_array_equal(store.X[:], table[:, :3].astype(np.float32))
    assert store.label_name == "y"


def test_csv_header_forced(tmp_path, table):
    src = write_csv(tmp_path / "t.csv", table, header=["1", "2", "3", "4"])
    store, _ = ingest(src, tmp_path / "d.zarr", header=True)
    assert store.n_samples == 50 and store.feature_names == ("1", "2", "3")
    store, _ = ingest(src, tmp_path / "e.zarr", header=None)  # numeric first line: data
    assert store.n_samples == 51
    with pytest.raises(InputError, match=r"line 1: column 1 \('x0'\): 'a' is not a number"):
        ingest(write_csv(tmp_path / "h.csv", table, header=list("abcd")), tmp_path / "f.zarr",
               header=False)


def test_npz_compressed_and_uncompressed(tmp_path, table):
    for save in (np.savez, np.savez_compressed):
        src = tmp_path / f"{save.__name__}.npz"
        save(src, X=table[:, :3], y=table[:, 3].astype(np.int64),
             feature_names=np.array(["a", "b", "c"]))
        store, _ = ingest(src, tmp_path / f"{save.__name__}.zarr", block_rows=16)
        np.testing.assert_array_equal(store.X[:], table[:, :3].astype(np.float32))
        np.testing.assert_array_equal(store.y[:], table[:, 3])
        assert store.feature_names == ("a", "b", "c")


def test_parquet(tmp_path, table):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    tbl = pa.table({"a": table[:, 0], "b": table[:, 1], "label": table[:, 3].astype(np.int32),
                    "c": table[:, 2].astype(np.float32)})
    pq.write_table(tbl, tmp_path / "t.parquet", row_group_size=20)
    store, _ = ingest(tmp_path / "t.parquet", tmp_path / "d.zarr", label_column="label",
                      block_rows=7)
    expect = np.column_stack([table[:, :2], table[:, 2].astype(np.float32)]).astype(np.float32)
    np.testing.assert_array_equal(store.X[:], expect)
    np.testing.assert_array_equal(store.y[:], table[:, 3])
    assert store.feature_names == ("a", "b", "c")


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    with pytest.raises(InputError, match=r'pip install "admm-dask\[parquet\]"'):
        ingest(tmp_path / "t.parquet", tmp_path / "d.zarr")


# ------------------------------------------------------------------ chunks and blocks

def test_chunking(tmp_path, table):
    src = write_csv(tmp_path / "t.csv", table)
    store, _ = ingest(src, tmp_path / "d.zarr", chunk_rows=7)
    assert store.chunk_rows == 7 and store.n_chunks == 8
    assert store.X.chunks == (7, 3) and store.y.chunks == (7,)
    assert [type(c).__name__ for c in store.X.compressors] == ["Crc32cCodec"] and store.X.metadata.dimension_names == ("sample", "feature")
    assert sorted(p.name for p in (tmp_path / "d.zarr" / "X" / "c").iterdir()) == [
        str(i) for i in range(8)]
    small, _ = ingest(src, tmp_path / "s.zarr")  # defaulted chunks shrink to the data
    assert small.chunk_rows == 50


def test_default_chunk_rows():
    assert default_chunk_rows(28) == 262144
    assert default_chunk_rows(784) == 8192
    assert default_chunk_rows(10**6) == 1024
    for d in (1, 28, 300, 784, 5000):
        r = default_chunk_rows(d)
        assert r & (r - 1) == 0 and 1024 <= r <= 262144


def test_csv_streams_in_blocks(tmp_path):
    rng = np.random.default_rng(1)
    t = rng.normal(size=(1000, 3))
    src = write_csv(tmp_path / "t.csv", t, header=["a", "b", "y"])
    seen = []
    store, _ = ingest(src, tmp_path / "d.zarr", block_rows=64, chunk_rows=100,
                      progress=seen.append)
    assert len(seen) == 16 and seen[-1] == 1000
    np.testing.assert_array_equal(store.X[:], t[:, :2].astype(np.float32))
    np.testing.assert_array_equal(store.y[:], t[:, 2])


# ------------------------------------------------------------------ test split

def split_ids(tmp_path, name, **kw):
    """Ingest a 20000-row CSV whose first column is the row id; return (train ids, test ids)."""
    src = tmp_path / "ids.csv"
    if not src.exists():
        ids = np.arange(20000)
        src.write_text("".join(f"{i},{i % 2}\n" for i in ids))
    train, test = ingest(src, tmp_path / f"{name}.zarr", **kw)
    return train.X[:, 0].astype(int), test.X[:, 0].astype(int)


def test_split_reproducible_and_block_independent(tmp_path):
    tr1, te1 = split_ids(tmp_path, "a", test_fraction=0.2, seed=3, block_rows=1000)
    tr2, te2 = split_ids(tmp_path, "b", test_fraction=0.2, seed=3, block_rows=777)
    tr3, te3 = split_ids(tmp_path, "c", test_fraction=0.2, seed=4)
    np.testing.assert_array_equal(te1, te2)
    np.testing.assert_array_equal(tr1, tr2)
    assert not np.array_equal(te1, te3)
    np.testing.assert_array_equal(np.sort(np.r_[tr1, te1]), np.arange(20000))
    assert np.all(np.diff(tr1) > 0) and np.all(np.diff(te1) > 0)  # source order kept
    assert abs(len(te1) / 20000 - 0.2) < 0.02
    assert (tmp_path / "a-test.zarr").is_dir()


def test_held_out_mask_is_per_row():
    whole = held_out_mask(0, 200_000, 0.3, seed=7)
    cuts = [0, 1, 65535, 65537, 131072, 150000, 200_000]
    parts = [held_out_mask(a, b, 0.3, seed=7) for a, b in zip(cuts, cuts[1:])]
    np.testing.assert_array_equal(whole, np.concatenate(parts))
    assert not held_out_mask(0, 100, 0.0, seed=7).any()


def test_default_test_out():
    assert default_test_out("x/DATA.zarr") == Path("x/DATA-test.zarr")
    assert default_test_out("data") == Path("data-test")


def test_split_errors(tmp_path, table):
    src = write_csv(tmp_path / "t.csv", table[:2])
    with pytest.raises(InputError, match=r"\[0, 1\)"):
        ingest(src, tmp_path / "d.zarr", test_fraction=1.0)
    with pytest.raises(InputError, match="split .* is empty"):
        ingest(src, tmp_path / "d.zarr", test_fraction=0.01)
    assert not (tmp_path / "d.zarr").exists() and not (tmp_path / "d-test.zarr").exists()


# ------------------------------------------------------------------ bad input

GOOD = "1.5,2.5,0\n"


@pytest.mark.parametrize("bad_line, reason", [
    ("1.5,abc,0", r"column 2 \('b'\): 'abc' is not a number"),
    ("1.5,nan,0", r"column 2 \('b'\): 'nan' is NaN or infinite"),
    ("inf,2.5,0", r"column 1 \('a'\): 'inf' is NaN or infinite"),
    ("1.5,,0", r"column 2 \('b'\) is empty"),
    ("1.5,2.5", "expected 3 columns, found 2"),
    ("1.5,2.5,0,7", "expected 3 columns, found 4"),
    ("1.5,2.5,cat", r"column 3 \('y'\): 'cat' is not a number; the label column's first rows are numbers, so it "
                    r"is read as numeric labels: fix or remove that row"),
    ("1e39,2.5,0", r"column 1 \('a'\): '1e39' is too large for float32"),
])
def test_csv_bad_row_names_line_and_reason(tmp_path, bad_line, reason):
    # header, 40 good rows with a blank line among them, then the bad row in a later block
    text = "a,b,y\n" + GOOD * 20 + "\n" + GOOD * 20 + bad_line + "\n" + GOOD * 5
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(InputError, match=rf"t\.csv: line 43: {reason}"):
        ingest(tmp_path / "t.csv", tmp_path / "d.zarr", block_rows=8)
    assert list(tmp_path.iterdir()) == [tmp_path / "t.csv"]  # nothing left behind


def test_csv_other_errors(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(InputError, match="first line is empty"):
        ingest(tmp_path / "e.csv", tmp_path / "d.zarr")
    (tmp_path / "h.csv").write_text("a,b,y\n")
    with pytest.raises(InputError, match="no data rows"):
        ingest(tmp_path / "h.csv", tmp_path / "d.zarr")
    (tmp_path / "one.csv").write_text("y\n1\n")
    with pytest.raises(InputError, match="at least one feature"):
        ingest(tmp_path / "one.csv", tmp_path / "d.zarr")
    src = write_csv(tmp_path / "t.csv", [[1, 2, 3]], header=["a", "b", "y"])
    with pytest.raises(InputError, match=r"label column 'z' not found; columns are 'a', 'b', 'y'"):
        ingest(src, tmp_path / "d.zarr", label_column="z")
    wide = write_csv(tmp_path / "w.csv", [list(range(15))], header=[f"f{i}" for i in range(14)] + ["Cover_Type"])
    for typo in ("cover_type", "Cover_Typ"):  # newuser16: the real name was cut off the list, and no hint named it
        with pytest.raises(InputError, match=r"columns are 'f0', .*'f10', \.\.\., 'Cover_Type' \(did you mean 'Cover_Type'\?\)"):
            ingest(wide, tmp_path / "d.zarr", label_column=typo)
    with pytest.raises(InputError, match="label column index 3 is out of range"):
        ingest(src, tmp_path / "d.zarr", label_column=3)
    with pytest.raises(InputError, match="does not exist"):
        ingest(tmp_path / "missing.csv", tmp_path / "d.zarr")
    with pytest.raises(InputError, match="unknown file type '.h5'"):
        (tmp_path / "t.h5").write_text("")
        ingest(tmp_path / "t.h5", tmp_path / "d.zarr")
    (tmp_path / "bad.csv.gz").write_bytes(b"not gzip")
    with pytest.raises(InputError, match="bad.csv.gz"):
        ingest(tmp_path / "bad.csv.gz", tmp_path / "d.zarr")


def test_npz_bad_input(tmp_path):
    X = np.ones((30, 2))
    X[17, 1] = np.nan
    np.savez(tmp_path / "nan.npz", X=X, y=np.zeros(30))
    with pytest.raises(InputError, match=r"row 18: column 2 \('x1'\) is missing or NaN"):
        ingest(tmp_path / "nan.npz", tmp_path / "d.zarr", block_rows=8)
    np.savez(tmp_path / "lab.npz", X=np.ones((30, 2)), y=np.array(["0"] * 20 + ["cat"] * 10))
    with pytest.raises(InputError, match="row 21: label y: 'cat' is not a number"):
        ingest(tmp_path / "lab.npz", tmp_path / "d.zarr", block_rows=8)
    np.savez(tmp_path / "noy.npz", X=np.ones((3, 2)))
    with pytest.raises(InputError, match="needs arrays 'X' and 'y'"):
        ingest(tmp_path / "noy.npz", tmp_path / "d.zarr")
    np.savez(tmp_path / "shape.npz", X=np.ones(3), y=np.ones(3))
    with pytest.raises(InputError, match="X must be 2-D"):
        ingest(tmp_path / "shape.npz", tmp_path / "d.zarr")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a readable .npz"):
        ingest(tmp_path / "junk.npz", tmp_path / "d.zarr")
    assert not (tmp_path / "d.zarr").exists()


def test_parquet_bad_input(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    a = [1.0] * 30
    pq.write_table(pa.table({"a": a[:12] + [None] + a[13:], "y": [0] * 30}), tmp_path / "n.parquet")
    with pytest.raises(InputError, match=r"row 13: column 1 \('a'\) is missing or NaN"):
        ingest(tmp_path / "n.parquet", tmp_path / "d.zarr", block_rows=5)
    pq.write_table(pa.table({"a": a, "y": ["1"] * 25 + ["dog"] * 5}), tmp_path / "s.parquet")
    with pytest.raises(InputError, match=r"row 26: column 2 \('y'\): 'dog' is not a number"):
        ingest(tmp_path / "s.parquet", tmp_path / "d.zarr", block_rows=5)


# ------------------------------------------------------------------ overwrite safety

def test_existing_store_refused_and_survives_failed_overwrite(tmp_path, table):
    out = tmp_path / "d.zarr"
    original, _ = ingest(write_csv(tmp_path / "t.csv", table), out)
    before = original.X[:]
    with pytest.raises(InputError, match=r"d.zarr exists; pass overwrite=True to replace it$"):
        ingest(tmp_path / "t.csv", out)
    (tmp_path / "bad.csv").write_text("1,2,3,4\n" * 10 + "1,x,3,4\n")
    with pytest.raises(InputError, match="line 11"):
        ingest(tmp_path / "bad.csv", out, overwrite=True, block_rows=4)
    np.testing.assert_array_equal(open_data(out).X[:], before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "d.zarr", "t.csv"]
    replaced, _ = ingest(write_csv(tmp_path / "u.csv", table[:5]), out, overwrite=True)
    assert open_data(out).n_samples == 5 == replaced.n_samples
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "d.zarr", "t.csv", "u.csv"]


def test_overwrite_refuses_non_data_store(tmp_path, table):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="refusing to overwrite .* not an admm-dask data store"):
        ingest(write_csv(tmp_path / "t.csv", table), tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_writer_exception_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with DataWriter(tmp_path / "d.zarr", 2, chunk_rows=4) as w:
            w.append(np.ones((10, 2)), np.zeros(10))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_write_data(tmp_path):
    X = np.arange(20.0).reshape(10, 2)
    store = write_data(tmp_path / "d.zarr", X, np.arange(10), chunk_rows=4,
                       feature_names=["p", "q"])
    assert (store.n_samples, store.n_features, store.chunk_rows) == (10, 2, 4)
    np.testing.assert_array_equal(store.X[:], X.astype(np.float32))
    attrs = dict(zarr.open_group(tmp_path / "d.zarr", mode="r").attrs)
    stats = attrs.pop("statistics")
    import zlib

    crc = [zlib.crc32(np.arange(10.0)[a:a + 4].tobytes(), zlib.crc32(X[a:a + 4].astype(np.float32).tobytes()))
           for a in (0, 4, 8)]  # each chunk's X bytes, then its y bytes
    assert {k: attrs.pop(k) for k in ("has_labels", "chunk_crc32")} == {"has_labels": True, "chunk_crc32": crc}
    assert attrs == {"format": "admm-dask-data", "format_version": 1, "n_samples": 10,
                     "n_features": 2, "chunk_rows": 4, "feature_names": ["p", "q"],
                     "label_name": "label", "source": "array"}
    # moments of [X, y] shifted by the first row (0, 1, 0): n, then Σ(v − s)^p per column for p = 1..4;
    # both shifted X columns are 2k and y is k (k = 0..9): Σk^p = 45, 285, 2025, 15333
    k_sums = [45.0, 285.0, 2025.0, 15333.0]
    sums = [10.0] + [v for p, s in enumerate(k_sums, 1) for v in (2.0 ** p * s, 2.0 ** p * s, s)]
    assert stats == {"shift": [0.0, 1.0, 0.0], "sums": sums,
                     "labels": [float(v) for v in range(10)]}
    with pytest.raises(InputError, match="exists; pass overwrite=True"):
        write_data(tmp_path / "d.zarr", X, np.arange(10))
    X[6, 1] = np.inf
    with pytest.raises(InputError, match=r"X row 6 \(0-based\) contains NaN or inf"):
        write_data(tmp_path / "e.zarr", X, np.arange(10))
    with pytest.raises(InputError, match="y must be 1-D"):
        write_data(tmp_path / "e.zarr", X, np.arange(9))
    with pytest.raises(InputError, match="no rows"):
        write_data(tmp_path / "e.zarr", np.ones((0, 2)), np.ones(0))
    assert not (tmp_path / "e.zarr").exists()
    with pytest.raises(ValueError, match="read-only"):
        store.X[0, 0] = 1


# ------------------------------------------------------------------ open_data

def make_group(path, attrs=None, X=(4, 2), y=(4,), xdtype="float32", ydtype="float64"):
    """Create a Zarr group with arrays X and y of the given shapes and attributes."""
    g = zarr.open_group(path, mode="w")
    if X is not None:
        g.create_array("X", shape=X, dtype=xdtype)
    if y is not None:
        g.create_array("y", shape=y, dtype=ydtype)
    n = X[0] if X else 0
    base = {"format": "admm-dask-data", "format_version": 1, "n_samples": n,
            "n_features": X[-1] if X else 0, "chunk_rows": n}
    g.attrs.update(base if attrs is None else attrs)
    return path


@pytest.mark.parametrize("setup, message", [
    (lambda p: p, "does not exist; create one with `python -m pipeline.ingest"),
    (lambda p: p.mkdir() or p, "is not a Zarr store"),
    (lambda p: p.write_text("x") and p, "is not a Zarr store"),
    (lambda p: p.mkdir() or (p / "zarr.json").write_text("{not json") and p,
     "its zarr.json is damaged or not a Zarr v3 group's metadata"),
    (lambda p: make_group(p, {"format": "other-tool"}), "another tool's Zarr store"),
    (lambda p: make_group(p, {}), "without the admm-dask format attribute"),
    (lambda p: make_group(p, {"format": "admm-dask-run"}), "an admm-dask run store"),
    (lambda p: make_group(p, y=None), "has no array 'y'"),
    (lambda p: make_group(p, X=(4,)), "X must be 2-D"),
    (lambda p: make_group(p, y=(4, 1)), "y must be 1-D"),
    (lambda p: make_group(p, y=(5,)), "X has 4 rows but y has 5"),
    (lambda p: make_group(p, X=(0, 2), y=(0,)), r"is empty \(0 samples\)"),
    (lambda p: make_group(p, xdtype="float64"), "X must be float32 and y float64"),
])
def test_open_data_errors(tmp_path, setup, message):
    path = setup(tmp_path / "s.zarr")
    with pytest.raises(InputError, match=message) as info:
        open_data(path)
    assert str(tmp_path / "s.zarr") in str(info.value)


# ------------------------------------------------------------------ command line

def run_cli(*args):
    """Run `python -m pipeline.ingest` and return the completed process."""
    return run_module("pipeline.ingest", *args, timeout=60)


@pytest.fixture(scope="module")
def refused(tmp_path_factory):
    """The command line's refusals (and string labels, accepted since session 15) below, all in one process
    (tests.conftest.run_mains): {name: (folder, completed process)}; one interpreter start serves them."""
    cases = {}
    d = tmp_path_factory.mktemp("oops")
    (d / "t.csv").write_text("a,b,y\n1,2,0\n1,oops,1\n")
    cases["oops"] = (d, d / "t.csv")
    X = np.arange(12, dtype=float).reshape(6, 2)
    y = np.array(["yes", "no", "no", "maybe", "yes", "no"])
    d = tmp_path_factory.mktemp("strings-csv")
    write_csv(d / "s.csv", [[*x, v] for x, v in zip(X.tolist(), y)], header=["a", "b", "label"])
    cases["csv"] = (d, d / "s.csv")
    d = tmp_path_factory.mktemp("strings-npz")
    np.savez(d / "s.npz", X=X, y=y)
    cases["npz"] = (d, d / "s.npz")
    runs = run_mains(*[["pipeline.ingest", source, "--out", d / "d.zarr"] for d, source in cases.values()])
    return {name: (d, r) for (name, (d, _)), r in zip(cases.items(), runs)}


def test_cli_error_exit_2(refused):
    tmp_path, proc = refused["oops"]
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "line 3: column 2 ('b'): 'oops'" in proc.stderr
    assert not (tmp_path / "d.zarr").exists()


def test_cli_success(tmp_path, table):
    src = write_csv(tmp_path / "t.csv", table, header=["a", "b", "c", "y"])
    proc = run_cli(src, "--out", tmp_path / "d.zarr", "--label-column", "-1", "--test-fraction",
                   "0.2", "--seed", "1", "--chunk-rows", "16", "--header")
    assert proc.returncode == 0, proc.stderr
    assert "train:" in proc.stdout and "test:" in proc.stdout and "done in" in proc.stdout
    train, test = open_data(tmp_path / "d.zarr"), open_data(tmp_path / "d-test.zarr")
    assert train.n_samples + test.n_samples == 50 and train.chunk_rows == 16


def test_a_file_named_npz_that_is_no_zip_archive_gives_no_pickle_advice(tmp_path):
    """np.load took it for a pickle: 'If you trust the file you can load it unsafely using allow_pickle=…'."""
    from storage.ingest import ingest

    bad = tmp_path / "x.npz"
    bad.write_text("not a zip archive\n")
    with pytest.raises(InputError, match=r"x.npz: not a readable .npz file \(not a zip archive") as info:
        ingest(bad, tmp_path / "d.zarr")
    assert "pickle" not in str(info.value) and not (tmp_path / "d.zarr").exists()


def test_ingest_onto_a_users_folder_does_not_suggest_overwrite(tmp_path):
    """It said 'exists; pass overwrite=True / --overwrite', and --overwrite was then refused."""
    from storage.ingest import ingest

    src = tmp_path / "t.csv"
    np.savetxt(src, np.c_[np.random.default_rng(0).normal(size=(20, 2)), np.arange(20) % 2], delimiter=",")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match=r"mine already exists and is not an admm-dask data store") as info:
        ingest(src, mine)
    assert "overwrite" not in str(info.value).split(";")[0] and "pass overwrite" not in str(info.value)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("name,kind", [
    ("x.csv", "csv"), ("x.CSV", "csv"), ("x.txt", "csv"), ("x.data", "csv"), ("x.csv.gz", "csv"),
    ("x.TXT.GZ", "csv"), ("x.data.gz", "csv"), ("a.b.csv", "csv"), ("x.npz", "npz"), ("x.parquet", "parquet"),
    ("x.pq", "parquet"), ("x.gz", None), ("x.npz.gz", None), ("x.tar.gz", None), ("x.zarr", None), (".csv", None),
    ("x", None)])
def test_one_suffix_rule_for_ingest_and_the_data_store_advice(tmp_path, name, kind):
    """The suffixes ingest reads live in one place (storage.paths.source_kind): open_data suggests converting a
    file exactly when ingest would read it (a bare x.gz was told to ingest it, which ingest then refused)."""
    from storage.ingest import _reader_for
    from storage.paths import source_kind, source_stem

    assert source_kind(tmp_path / name) == kind
    if kind is None:
        with pytest.raises(InputError, match="unknown file type"):
            _reader_for(tmp_path / name)
    else:
        assert _reader_for(tmp_path / name) == kind
    (tmp_path / name).write_text("")
    with pytest.raises(InputError) as info:
        open_data(tmp_path / name)
    if kind is None:
        assert "convert it" not in str(info.value) and "a data store is a folder" in str(info.value)
    else:
        stem = name.split(".")[0] if name != "a.b.csv" else "a.b"
        assert source_stem(tmp_path / name) == stem
        assert f"--out {tmp_path / (stem + '.zarr')}`" in str(info.value)


@pytest.mark.parametrize("kind", ["csv", "npz"])
def test_string_labels_are_class_labels(refused, kind):
    """String class labels (refused before session 15): ingested as codes of the sorted labels, which the store
    records (tests/test_text_labels.py has the rest), for CSV and NPZ."""
    from storage.data import open_data

    tmp_path, r = refused[kind]
    assert r.returncode == 0, r.stderr
    ds = open_data(tmp_path / "d.zarr")
    assert ds.classes == ("maybe", "no", "yes") and ds.y[:].tolist() == [2, 1, 1, 0, 2, 1]


def test_a_failure_after_rows_were_read_is_one_line_on_stderr(monkeypatch, capsys):
    """The 'read N rows' progress goes to stdout with the summary lines: a full disk half way is one stderr line."""
    import pipeline.ingest as cli

    def fails_half_way(*args, progress, **kwargs):
        progress.last -= 10  # a second has passed: the progress line is printed
        progress(120_000)
        raise InputError("No space left on device: free disk space or write elsewhere")

    monkeypatch.setattr(cli, "ingest", fails_half_way)
    assert cli.main(["t.csv", "--out", "d.zarr"]) == 2
    out, err = capsys.readouterr()
    assert "read 120,000 rows" in out
    assert err.splitlines() == ["error: No space left on device: free disk space or write elsewhere"]


def test_cli_without_a_test_split_does_not_call_the_store_train(tmp_path, table, capsys):
    """--no-labels (data to predict on) or no test split: the summary line says data:, not train: (newuser15 F8)."""
    from pipeline.ingest import main

    src = write_csv(tmp_path / "t.csv", table, header=["a", "b", "c", "y"])
    assert main([str(src), "--out", str(tmp_path / "new.zarr"), "--no-labels", "--header"]) == 0
    out = capsys.readouterr().out
    assert "data: 50 rows x 4 features" in out and "train:" not in out


def test_cli_on_an_existing_store_names_its_flag_and_the_api_its_keyword(tmp_path, table, capsys):
    """newuser16 F10: the command line said 'pass overwrite=True / --overwrite' (a Python keyword to a shell user)."""
    from pipeline.ingest import main
    from storage.data import write_data

    src = write_csv(tmp_path / "t.csv", table, header=["a", "b", "c", "y"])
    assert main([str(src), "--out", str(tmp_path / "d.zarr"), "--header"]) == 0
    capsys.readouterr()
    assert main([str(src), "--out", str(tmp_path / "d.zarr"), "--header"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {tmp_path / 'd.zarr'} exists; pass --overwrite to replace it"]
    with pytest.raises(InputError, match=r"d.zarr exists; pass overwrite=True to replace it$"):
        write_data(tmp_path / "d.zarr", np.zeros((4, 2)), np.arange(4) % 2)
    assert main([str(src), "--out", str(tmp_path / "d.zarr"), "--header", "--overwrite"]) == 0


def _store_bytes(path):
    """Return {relative file path: bytes} of every file of a store."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


def test_a_split_made_beforehand_ingests_in_one_call_into_the_stores_of_two(tmp_path, capsys):
    """newuser16 F11: --test-source writes, in one process, byte for byte the two stores of two ingestions (text
    labels: each file its own classes, the test file lacking one); a bad row of either file writes neither store."""
    from pipeline.ingest import main

    rng = np.random.default_rng(3)
    names = np.array(["setosa", "versicolor", "virginica"])
    train = [[*rng.normal(size=3), names[i % 3]] for i in range(40)]
    test = [[*rng.normal(size=3), names[1 + i % 2]] for i in range(9)]
    write_csv(tmp_path / "train.csv", train, header=["a", "b", "c", "species"])
    write_csv(tmp_path / "test.csv", test, header=["a", "b", "c", "species"])
    flags = ["--label-column", "species", "--chunk-rows", "16"]
    assert main([str(tmp_path / "train.csv"), "--out", str(tmp_path / "a.zarr"), *flags]) == 0
    assert main([str(tmp_path / "test.csv"), "--out", str(tmp_path / "a-test.zarr"), *flags]) == 0
    capsys.readouterr()
    assert main([str(tmp_path / "train.csv"), "--out", str(tmp_path / "b.zarr"), "--test-source",
                 str(tmp_path / "test.csv"), *flags]) == 0
    out = capsys.readouterr().out
    assert "train: 40 rows x 3 features" in out and "test: 9 rows x 3 features" in out
    for a, b in (("a.zarr", "b.zarr"), ("a-test.zarr", "b-test.zarr")):
        assert _store_bytes(tmp_path / a) == _store_bytes(tmp_path / b)
    assert list(open_data(tmp_path / "b-test.zarr").classes) == ["versicolor", "virginica"]
    write_csv(tmp_path / "bad.csv", [*test[:5], [1.0, "oops", 2.0, "setosa"]], header=["a", "b", "c", "species"])
    write_csv(tmp_path / "wide.csv", [[*row[:3], 0.0, row[3]] for row in test], header=["a", "b", "c", "d", "species"])
    write_csv(tmp_path / "swapped.csv", test, header=["b", "a", "c", "species"])  # review17 L1: same count, other order
    for source, flag, why in (("bad.csv", [], r"bad.csv: line 7: column 2 \('b'\): 'oops' is not a number"),
                              ("wide.csv", [], "wide.csv has 4 feature columns but .*train.csv has 3"),
                              ("swapped.csv", [], r"swapped.csv's feature column 1 is 'b' but .*train.csv's is 'a': "
                                                  "the test file must hold the same columns in the same order"),
                              ("test.csv", ["--test-fraction", "0.2"], "--test-source and --test-fraction exclude"),
                              ("none.csv", [], "source file .*none.csv does not exist")):
        assert main([str(tmp_path / "train.csv"), "--out", str(tmp_path / "c.zarr"), "--test-source",
                     str(tmp_path / source), *flags, *flag]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and re.search(why, err), err
        assert not (tmp_path / "c.zarr").exists() and not (tmp_path / "c-test.zarr").exists()
    with pytest.raises(InputError, match="--test-source and --no-labels exclude each other"):
        ingest(tmp_path / "train.csv", tmp_path / "c.zarr", test_source=tmp_path / "test.csv", labels=False)
    write_csv(tmp_path / "unnamed.csv", [[*row[:3], i % 2] for i, row in enumerate(test)])  # no header: not compared
    write_csv(tmp_path / "named.csv", [[*row[:3], i % 2] for i, row in enumerate(train)], header=["a", "b", "c", "y"])
    assert main([str(tmp_path / "named.csv"), "--out", str(tmp_path / "d.zarr"), "--test-source",
                 str(tmp_path / "unnamed.csv"), "--chunk-rows", "16"]) == 0
