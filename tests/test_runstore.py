"""storage/runstore.py directly: the stored metrics are the numbers the history records; commits round-trip."""
import numpy as np
import pytest

from storage.runstore import Checkpoint, RunStore, metric_names


def test_metric_names_follow_the_history():
    history = [{"iteration": 1, "seconds": 0.5, "train_accuracy": 0.9, "accepted": True, "note": "text"},
               {"iteration": 2, "seconds": 0.4, "train_accuracy": 0.95, "test_accuracy": 0.9}]
    assert metric_names(history) == ["seconds", "train_accuracy", "accepted", "test_accuracy"]
    assert metric_names([]) == []


def test_commit_round_trips_weights_carry_and_metrics(tmp_path):
    import xarray as xr

    run = RunStore.create(tmp_path / "r.zarr", config={"task": "classification"}, data={"path": "d"},
                          state_widths={"z1": 3}, n_samples=10, chunk_rows=5, classes=np.array([0, 1]),
                          x_mean=np.zeros(2), x_scale=np.ones(2))
    W = [np.arange(6.0).reshape(3, 2), np.ones((1, 4))]
    history = [{"iteration": 1, "seconds": 0.1, "train_accuracy": 0.5},
               {"iteration": 2, "seconds": 0.2, "train_accuracy": 0.75, "test_accuracy": 0.7}]
    run.commit(Checkpoint(2, W, {"gram": np.eye(2)}), history, target_iterations=5)
    again = RunStore.open(tmp_path / "r.zarr")
    ck = again.load_checkpoint()
    assert ck.iteration == 2 and all(np.array_equal(a, b) for a, b in zip(ck.weights, W))
    np.testing.assert_array_equal(ck.carry["gram"], np.eye(2))
    assert again.manifest()["target_iterations"] == 5 and again.manifest()["history"] == history
    ds = xr.open_zarr(tmp_path / "r.zarr", group="metrics", consolidated=False)
    assert sorted(ds.data_vars) == ["seconds", "test_accuracy", "train_accuracy"]
    np.testing.assert_array_equal(ds.test_accuracy.values, [np.nan, 0.7])


def _run(tmp_path):
    return RunStore.create(tmp_path / "r.zarr", config={"task": "classification"}, data={"path": "d"},
                           state_widths={}, n_samples=10, chunk_rows=5, classes=np.array([0, 1]),
                           x_mean=np.zeros(2), x_scale=np.ones(2))


def test_a_commit_writes_one_packed_array_and_version_2_checkpoints_still_load(tmp_path):
    import zarr

    from storage import runstore

    run = _run(tmp_path)
    W = [np.arange(6.0).reshape(3, 2), np.ones((1, 4))]
    carry = {"gram": np.eye(2), "damping": np.float64(0.5)}
    run.commit(Checkpoint(1, W, carry, {"best_iteration": 1}, [w + 1 for w in W]), [{"iteration": 1}], 3)
    root = zarr.open_group(tmp_path / "r.zarr", mode="r+")
    assert list(root["checkpoint/1"].array_keys()) == ["packed"] and not list(root["checkpoint/1"].group_keys())
    # the same commit as format version 2 wrote it: one array per name
    arrays = runstore._read_packed(root["checkpoint/1/packed"])
    assert sorted(arrays) == ["W1", "W2", "best/W1", "best/W2", "carry/damping", "carry/gram"]
    del root["checkpoint/1/packed"]
    for name, value in arrays.items():
        root.create_array(f"checkpoint/1/{name}", data=value)
    root.attrs["format_version"] = 2
    ck = RunStore.open(tmp_path / "r.zarr").load_checkpoint()
    assert all(np.array_equal(a, b) for a, b in zip(ck.weights, W))
    assert all(np.array_equal(a, b + 1) for a, b in zip(ck.best_weights, W))
    assert ck.carry["damping"].shape == () and ck.carry["damping"] == 0.5


@pytest.mark.parametrize("arrays", [
    {"W1": np.arange(6.0).reshape(3, 2), "W2": np.ones((1, 4)), "carry/gram": np.eye(3) * -0.0,
     "carry/damping": np.float64(0.5), "carry/sample": np.array([3.0, 7.0]), "best/W1": np.full((3, 2), np.nan)},
    {"W1": np.zeros((2, 5))},  # every value the fill value: Zarr still writes the chunk (write_empty_chunks)
    {"W1": np.zeros((0, 4)), "carry/n": np.zeros(0)},  # no values: no chunk
    {"W1": np.arange(3.0, dtype=">f8").reshape(3, 1), "carry/inf": np.array([np.inf, -np.inf])},  # big-endian input
], ids=["mixed", "all-fill", "empty", "big-endian"])
def test_a_packed_checkpoint_is_written_as_the_files_zarr_creates(tmp_path, arrays):
    """_write_packed writes the packed checkpoint array's files itself: byte for byte those Zarr 3's create_array wrote
    for it (session 16's writer), missing parent groups included, and Zarr and _read_packed read it back."""
    import zarr
    from zarr.codecs import Crc32cCodec

    from storage import runstore

    def files(path):
        return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}

    for name in ("ours", "zarr"):
        zarr.open_group(tmp_path / name, mode="w-", zarr_format=3).create_group("checkpoint")
    runstore._write_packed(tmp_path / "ours", "checkpoint/4", arrays)
    runstore._write_packed(tmp_path / "ours", "more/deeply/4", arrays)  # parent groups missing: made as Zarr makes them
    root = zarr.open_group(tmp_path / "zarr", mode="r+")
    data = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays.values()])
    for group in ("checkpoint/4", "more/deeply/4"):
        root.create_array(f"{group}/packed", data=data, chunks=(max(1, data.size),), compressors=[Crc32cCodec()],
                          attributes={"layout": [[n, list(np.shape(a))] for n, a in arrays.items()]},
                          config={"write_empty_chunks": True})
    assert files(tmp_path / "ours") == files(tmp_path / "zarr")
    back = runstore._read_packed(zarr.open_group(tmp_path / "ours", mode="r")["checkpoint/4/packed"])
    assert list(back) == list(arrays)
    for name, a in arrays.items():
        assert back[name].dtype == np.float64 and back[name].tobytes() == np.asarray(a, np.float64).tobytes()


def test_the_checksums_hashed_beside_the_write_are_those_of_each_array_in_order_and_errors_reach_the_caller(monkeypatch):
    from storage import runstore

    monkeypatch.setattr(runstore, "HASH_BESIDE_BYTES", 64)
    arrays = {"b": np.arange(100.0), "a": np.ones(2), "c": np.arange(50.0).reshape(5, 10)}
    wrote = []
    sums = runstore._checksums_beside(arrays, lambda: wrote.append(1))
    assert wrote == [1] and list(sums) == ["b", "a", "c"]
    assert sums == {n: runstore._array_sha256(a) for n, a in arrays.items()}

    def failing_write():
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        runstore._checksums_beside(arrays, failing_write)
    # the hashing thread's own error (review17 L6: failing in every thread, the caller's own hashing raised it too):
    # only that thread fails, once it has taken an array, which this thread then hashes; the error still reaches
    # the caller, after the write
    import threading

    real, failed, wrote = runstore._array_sha256, threading.Event(), []

    def sha256(a):
        if threading.current_thread().name == "admm-dask-checksums":
            failed.set()
            raise ZeroDivisionError("in the hashing thread")
        return real(a)

    def write():
        assert failed.wait(30)
        wrote.append(1)

    monkeypatch.setattr(runstore, "_array_sha256", sha256)
    with pytest.raises(ZeroDivisionError, match="in the hashing thread"):
        runstore._checksums_beside(arrays, write)
    assert wrote == [1]


def test_metrics_are_written_at_most_every_few_seconds_and_at_the_end(tmp_path):
    import xarray as xr

    run = _run(tmp_path)
    history = []

    def iterations():
        return xr.open_zarr(tmp_path / "r.zarr", group="metrics", consolidated=False).iteration.values.tolist()

    for k in (1, 2):
        history.append({"iteration": k, "seconds": 0.1 * k})
        run.commit(Checkpoint(k, [np.ones((1, 3))]), history, target_iterations=4)
    assert iterations() == [1]  # the first commit writes them; the next, a moment later, does not
    run.write_metrics()
    assert iterations() == [1, 2]
    for k in (3, 4):
        history.append({"iteration": k, "seconds": 0.1 * k})
        run.commit(Checkpoint(k, [np.ones((1, 3))]), history, target_iterations=4)
    assert iterations() == [1, 2, 3, 4]  # the last iteration's commit writes them
    assert RunStore.open(tmp_path / "r.zarr").manifest()["history"] == history


def test_the_array_checksum_is_the_sha256_of_the_shape_then_the_c_order_float64_bytes():
    """Stores committed before the copy-free hashing must still verify: the digest is the one they hold."""
    import hashlib

    from storage.runstore import _array_sha256

    rng = np.random.default_rng(0)
    cases = [np.float64(3.5), np.array(2.0), 4, [1, 2, 3], np.zeros(0), np.zeros((0, 3)), rng.standard_normal((30, 7)),
             rng.standard_normal((7, 5)).T, rng.standard_normal((10, 10))[::2, 1::3], np.array([-0.0, 0.0, np.nan, np.inf]),
             np.arange(6, dtype=np.float32).reshape(2, 3)]
    for a in cases:
        c = np.ascontiguousarray(np.asarray(a, np.float64))
        assert _array_sha256(a) == hashlib.sha256(repr(c.shape).encode() + c.tobytes()).hexdigest()
    assert _array_sha256(np.array([0.0])) != _array_sha256(np.array([-0.0]))  # bytes, not values
    assert _array_sha256(np.zeros((2, 3))) != _array_sha256(np.zeros((3, 2)))


def test_metrics_written_together_equal_those_written_one_by_one_also_inside_a_running_event_loop(tmp_path):
    """The metrics/ arrays are created on an event loop of the commit's own; a thread running a loop writes them in turn.

    Neither way changes the caller's event loop state.
    """
    import asyncio

    import zarr

    history = [{"iteration": k, "seconds": 0.1 * k, "loss": 1.0 / k, **({"test_accuracy": 0.5} if k > 1 else {})}
               for k in (1, 2, 3)]
    stores = {}
    for how in ("together", "in a loop", "one by one"):
        run = _run(tmp_path / how.replace(" ", "_"))
        run.commit(Checkpoint(3, [np.ones((1, 3))]), history, target_iterations=3)  # the last commit writes metrics/
        if how == "in a loop":
            async def rewrite(run=run):
                run._unwritten_metrics = history
                run.write_metrics()
            asyncio.run(rewrite())
        elif how == "one by one":  # as storage.runstore wrote them before: zarr's create_array, in turn
            root = zarr.open_group(run.path, mode="r+")
            values = {"iteration": np.array([1, 2, 3], np.int64)}
            values.update((name, np.array([h.get(name, np.nan) for h in history], np.float64))
                          for name in metric_names(history))
            for name, data in values.items():
                root.create_array(f"metrics/{name}", data=data, dimension_names=("iteration",), overwrite=True,
                                  compressors=[zarr.codecs.Crc32cCodec()])
        stores[how] = zarr.open_group(run.path, mode="r")["metrics"]
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()  # this thread runs no loop afterwards
    names = sorted(stores["together"].array_keys())
    assert names == ["iteration", "loss", "seconds", "test_accuracy"]
    for how in ("in a loop", "one by one"):
        assert sorted(stores[how].array_keys()) == names
        for name in names:
            a, b = stores["together"][name], stores[how][name]
            assert a.metadata == b.metadata
            np.testing.assert_array_equal(a[...], b[...])


def test_metrics_rewritten_in_place_are_the_files_zarr_creates(tmp_path, monkeypatch):
    """A metrics/ write creates each new one-chunk array (the first write, and a metric that appears later) and rewrites
    each existing one in place: the same files, byte for byte, as Zarr's create_array of the same values in a new
    store (an all-fill chunk: no file; the metrics group's zarr.json too); longer arrays go through Zarr."""
    import zarr

    from storage.runstore import ONE_CHUNK_MAX

    def history(n):
        return [{"iteration": k, "seconds": 0.1 * k, "alpha": 0.0, "loss": -1.0 / k,
                 **({"test_accuracy": 0.5} if k > 1 else {}), **({"late": -0.0} if k > 6 else {})}
                for k in range(1, n + 1)]

    def files(path):
        return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}

    import storage.runstore as rs

    through_zarr = []
    real = rs._create_arrays
    monkeypatch.setattr(rs, "_create_arrays", lambda root, path, arrays, **kw: through_zarr.append(sorted(arrays))
                        or real(root, path, arrays, **kw))
    run = _run(tmp_path / "a")
    for n in (0, 2, 5, 9):  # the first write creates the arrays (a first commit: no history), the later ones rewrite them
        run._unwritten_metrics = history(n)
        run.write_metrics()
        fresh = _run(tmp_path / f"fresh{n}")
        root = zarr.open_group(fresh.path, mode="r+")
        for name in ["iteration", *metric_names(history(n))]:
            data = np.array([h.get(name, np.nan) for h in history(n)], np.int64 if name == "iteration" else np.float64)
            root.create_array(f"metrics/{name}", data=data, dimension_names=("iteration",), overwrite=True,
                              compressors=[zarr.codecs.Crc32cCodec()])
        assert files(run.path / "metrics") == files(fresh.path / "metrics")
    assert through_zarr == []  # created without Zarr, later rewritten in place: the files Zarr creates
    assert "alpha/c/0" not in files(run.path / "metrics")  # all zeros, the fill value: no chunk, as Zarr
    assert zarr.open_array(zarr.storage.LocalStore(run.path), path="metrics/alpha").shape == (9,)
    one = zarr.open_group(tmp_path / "z.zarr", mode="w").create_array(
        "m", data=np.zeros(ONE_CHUNK_MAX), compressors=[zarr.codecs.Crc32cCodec()])
    assert one.chunks == (ONE_CHUNK_MAX,)  # Zarr's own choice at the largest size rewritten in place
    from storage.runstore import _rewrite_one_chunk

    assert not _rewrite_one_chunk(run.path / "metrics" / "loss", np.zeros(ONE_CHUNK_MAX + 1))
    run._unwritten_metrics = [{"iteration": k, "loss": 0.5} for k in range(1, ONE_CHUNK_MAX + 2)]
    run.write_metrics()  # longer than one chunk: through Zarr
    assert through_zarr == [["metrics/iteration", "metrics/loss"]]


def test_metrics_rewritten_in_place_leave_a_hard_linked_snapshot_as_it_was(tmp_path):
    """A ``cp -al`` snapshot of a run store shares its files: a later metrics/ write replaces them, never writes into them."""
    import os
    import shutil

    run = _run(tmp_path / "a")
    for n in (2, 3, 4):
        run._unwritten_metrics = [{"iteration": k, "loss": 1.0 / k} for k in range(1, n + 1)]
        run.write_metrics()
        if n == 3:
            shutil.copytree(run.path, tmp_path / "snap.zarr", copy_function=os.link)
            snap = {f: f.read_bytes() for f in (tmp_path / "snap.zarr" / "metrics").rglob("*") if f.is_file()}
    assert {f: f.read_bytes() for f in (tmp_path / "snap.zarr" / "metrics").rglob("*") if f.is_file()} == snap
    import xarray as xr

    assert xr.open_zarr(run.path, group="metrics", consolidated=False).loss.values.tolist() == [1.0, 0.5, 1 / 3, 0.25]
    assert xr.open_zarr(tmp_path / "snap.zarr", group="metrics", consolidated=False).loss.values.tolist() == [1.0, 0.5, 1 / 3]


@pytest.mark.parametrize("k", [0, 1])
def test_a_commit_replaces_what_a_killed_attempt_at_it_left_without_its_groups_metadata(tmp_path, k):
    """Zarr writes a new array's zarr.json before those of its missing parent groups, so a kill -9 inside the commit
    of iteration k can leave ``checkpoint/<k>/packed`` without ``checkpoint/<k>/zarr.json``: not a group to Zarr, and
    the resumed run's commit of k then failed with ContainsArrayError (found by benchmarks/resume_fault_inject.py,
    resume14_s14.md). The next attempt at k replaces it, and the commit after sweeps every stale folder."""
    import zarr

    from storage import runstore

    run = _run(tmp_path)
    W = [np.arange(6.0).reshape(3, 2)]
    if k:
        run.commit(Checkpoint(k - 1, W), [], 3)
    root = zarr.open_group(tmp_path / "r.zarr", mode="r+")
    runstore._write_packed(tmp_path / "r.zarr", f"checkpoint/{k}", {"W1": np.zeros((3, 2))})  # the killed attempt's array …
    folder = tmp_path / "r.zarr" / "checkpoint" / str(k)
    (folder / "zarr.json").unlink()  # … whose group's metadata was never written
    assert f"checkpoint/{k}" not in root and (folder / "packed" / "zarr.json").is_file()
    resumed = RunStore.open(tmp_path / "r.zarr")
    assert resumed.committed_iteration() == (k - 1 if k else None)
    resumed.commit(Checkpoint(k, [W[0] + 1]), [{"iteration": k}] if k else [], 3)
    ck = RunStore.open(tmp_path / "r.zarr").load_checkpoint()
    assert ck.iteration == k and np.array_equal(ck.weights[0], W[0] + 1)
    (tmp_path / "r.zarr" / "checkpoint" / "9" / "packed").mkdir(parents=True)  # a leftover of any other attempt
    resumed.commit(Checkpoint(k + 1, [W[0] + 2]), [{"iteration": k + 1}], 3)
    assert sorted(p.name for p in (tmp_path / "r.zarr" / "checkpoint").iterdir() if p.is_dir()) == [str(k), str(k + 1)]


def _commit(run, k):
    run.commit(Checkpoint(k, [np.full((3, 2), float(k)), np.ones((1, 4))]), [{"iteration": i} for i in range(1, k + 1)],
               5)


def test_without_hard_links_the_previous_manifest_is_written_out_and_the_fallback_resumes(tmp_path, monkeypatch):
    """A file system without hard links (os.link: EPERM, EXDEV): manifest.previous.json is the followed manifest's
    JSON, its own file, and a damaged manifest.json falls back to it."""
    import json
    import os

    link = os.link

    def no_link(src, dst, *args, **kwargs):  # the manifest's link only: Zarr's exclusive writes link too
        if ".manifest.previous" in str(dst):
            raise PermissionError(1, "Operation not permitted")
        return link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", no_link)
    run = _run(tmp_path)
    for k in (1, 2):
        _commit(run, k)
    store = tmp_path / "r.zarr"
    previous, manifest = store / "manifest.previous.json", store / "manifest.json"
    assert json.loads(previous.read_text())["iteration"] == 1
    assert not os.path.samefile(previous, manifest)
    assert not [p.name for p in store.iterdir() if ".tmp-" in p.name]
    manifest.write_text("{damaged")
    ck = RunStore.open(store).load_checkpoint()
    assert ck.iteration == 1 and np.array_equal(ck.weights[0], np.full((3, 2), 1.0))


def test_a_commit_after_a_kill_between_the_renames_leaves_no_temporary_link(tmp_path):
    """Killed after manifest.previous.json became a link of manifest.json's file and before manifest.json was
    replaced: both names are one file. The next commit's rename of a new link of it over previous is a POSIX no-op
    that left .manifest.previous.json.tmp-PID in the store."""
    import json
    import os

    run = _run(tmp_path)
    _commit(run, 1)
    store = tmp_path / "r.zarr"
    previous, manifest = store / "manifest.previous.json", store / "manifest.json"
    if previous.exists():
        previous.unlink()
    os.link(manifest, previous)  # the state the kill left
    run = RunStore.open(store)
    assert run.load_checkpoint().iteration == 1
    _commit(run, 2)
    assert [p.name for p in store.iterdir() if p.name.startswith(".manifest")] == []
    assert json.loads(previous.read_text())["iteration"] == 1 and json.loads(manifest.read_text())["iteration"] == 2
    assert not os.path.samefile(previous, manifest)


def test_the_first_commit_of_a_process_removes_the_temporaries_killed_trainers_left_and_nothing_else(tmp_path):
    """rel16: a trainer killed between the link (or the write) of a manifest's temporary and its rename leaves
    .manifest.previous.json.tmp-PID (or .manifest.json.tmp-PID, .writing.json.tmp-PID); a later process removed
    only its own process id's, so another's stayed for good. The next trainer (holding the run lock) removes those
    exact names of other process ids; its own process id's (a commit under way in its commit thread) and every
    other name stay."""
    import os

    run = _run(tmp_path)
    _commit(run, 1)
    store = tmp_path / "r.zarr"
    os.link(store / "manifest.json", store / ".manifest.previous.json.tmp-999999991")  # killed between link and rename
    (store / ".manifest.json.tmp-999999992").write_text('{"iteration": ')  # killed while writing
    (store / ".writing.json.tmp-3").write_text("{}")
    own = store / f".writing.json.tmp-{os.getpid()}"  # (this store keeps no slot state: no commit writes that name)
    own.write_text("mine")
    users = [".manifest.json.tmp-x", "manifest.json.tmp-4", ".manifest.json.tmp-5.bak", "notes.txt",
             ".zarr.json.tmp-6"]
    for name in users:
        (store / name).write_text("user")
    (store / ".manifest.previous.json.tmp-7").mkdir()  # a folder of that name: not ours
    before = (store / "manifest.json").read_bytes()
    run = RunStore.open(store)
    _commit(run, 2)
    left = sorted(p.name for p in store.iterdir() if ".tmp-" in p.name or p.name == "notes.txt")
    assert left == sorted([own.name, ".manifest.previous.json.tmp-7", *users])
    assert (store / "manifest.previous.json").read_bytes() == before  # the commit itself as ever
    assert RunStore.open(store).load_checkpoint().iteration == 2


def test_a_commit_syncs_the_checkpoints_files_and_folders_before_the_manifest_that_names_them(tmp_path, monkeypatch):
    """review17 M1: the fsynced manifest must never name a checkpoint that a power loss can leave empty or short
    (with --overwrite the replaced run is deleted right after the first commit): every file of checkpoint/<k> has its
    data synced, and every folder that got a new entry is synced, before manifest.json's temporary is synced."""
    import os

    run = _run(tmp_path)
    synced = []  # (device, inode) of each fd synced, in order

    def recording(real):
        def sync(fd):
            st = os.fstat(fd)
            synced.append((st.st_dev, st.st_ino))
            return real(fd)
        return sync

    monkeypatch.setattr(os, "fsync", recording(os.fsync))
    if hasattr(os, "fdatasync"):
        monkeypatch.setattr(os, "fdatasync", recording(os.fdatasync))
    W = [np.arange(6.0).reshape(3, 2), np.ones((1, 4))]
    for k in (1, 2):
        synced.clear()
        run.commit(Checkpoint(k, W, {"gram": np.eye(2)}), [{"iteration": i} for i in range(1, k + 1)], 3)
        store = tmp_path / "r.zarr"
        manifest = os.stat(store / "manifest.json")
        assert (manifest.st_dev, manifest.st_ino) in synced  # its temporary, renamed over manifest.json
        before = synced[:synced.index((manifest.st_dev, manifest.st_ino))]
        ck = store / "checkpoint" / str(k)
        needed = [ck / "zarr.json", ck / "packed" / "zarr.json", ck / "packed" / "c" / "0",
                  ck / "packed" / "c", ck / "packed", ck, store / "checkpoint"]
        for path in needed:
            st = os.stat(path)
            assert (st.st_dev, st.st_ino) in before, f"{path.relative_to(store)} not synced before the manifest"
