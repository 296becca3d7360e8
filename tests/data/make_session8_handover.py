"""Make ``session8_handover.tar.gz``: run stores written by session 8's code (commit 5c79a6f, before the hand-over kept
the consensus weights), for ``tests/test_handover_fixture.py``. Not a test; run it with that commit on the path::

    git worktree add --detach /tmp/s8 5c79a6f
    PYTHONPATH=/tmp/s8 python tests/data/make_session8_handover.py tests/data/session8_handover.tar.gz

The archive holds ``data.zarr`` (600 rows, 5 features, 3 classes, chunks of 150 rows), ``consensus-early.zarr``
and ``consensus.zarr`` (the run stopped two passes and one pass before the hand-over), ``refit.zarr`` (stopped right after the
hand-over: phase 1, squared-loss Gauss-Newton with the output layer refitted) and ``expected.npz``: the code's
whole run's weights after every iteration (``W{l}_{k}``), its phases, and the weights that code reaches when
it resumes each store (``<store>_W{l}``).
"""
import json
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

CONFIG = dict(solver="consensus,gauss-newton", hidden=(6,), shards=2, local_epochs=2, learning_rate=0.1,
              handover_gain=0.02, validation_fraction=0.2, patience=0, seed=1)
ITERATIONS, CHUNK_ROWS = 8, 150


def make_data(n=600, d=5, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    W = rng.normal(size=(d, n_classes))
    y = np.argmax(X @ W + 0.3 * rng.normal(size=(n, n_classes)), axis=1)
    return X, y


def main(out):
    from distributed import Client, LocalCluster

    from pipeline.training import train
    from solvers.config import TrainConfig
    from storage.data import write_data
    from storage.runstore import RunStore

    work = Path(tempfile.mkdtemp(prefix="s8-handover-"))
    X, y = make_data()
    write_data(work / "data.zarr", X, y, chunk_rows=CHUNK_ROWS)
    cfg = TrainConfig(**CONFIG, iterations=ITERATIONS)
    expected = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        whole = []  # the whole run, one iteration at a time (every resume of this code continues it bitwise)
        store = work / "whole.zarr"
        train(client, store=store, data=work / "data.zarr", config=TrainConfig(**{**CONFIG, "iterations": 1}),
              chunk_rows=CHUNK_ROWS, report=lambda line: None)
        for k in range(1, ITERATIONS + 1):
            if k > 1:
                train(client, store=store, resume=True, iterations=k, report=lambda line: None)
            whole.append(RunStore.open(store).load_checkpoint().weights)
        history = RunStore.open(store).manifest()["history"]
        at_once = work / "at-once.zarr"  # and in one go: the same weights
        train(client, store=at_once, data=work / "data.zarr", config=cfg, chunk_rows=CHUNK_ROWS,
              report=lambda line: None)
        for W, W_ref in zip(RunStore.open(at_once).load_checkpoint().weights, whole[-1]):
            assert np.array_equal(W, W_ref)
        phases = [h["phase"] for h in history]
        switch = phases.index("hand-over") + 1  # iteration number of the hand-over
        assert 3 < switch < ITERATIONS, phases
        for k, weights in enumerate(whole, 1):
            for l, W in enumerate(weights):
                expected[f"W{l}_{k}"] = np.asarray(W, np.float64)
        expected["phases"] = np.array(phases)
        for name, stop in (("consensus-early", switch - 2), ("consensus", switch - 1), ("refit", switch)):
            path = work / f"{name}.zarr"
            train(client, store=path, data=work / "data.zarr",
                  config=TrainConfig(**{**CONFIG, "iterations": stop}), chunk_rows=CHUNK_ROWS,
                  report=lambda line: None)
            probe = work / f"{name}-probe.zarr"  # a copy, resumed by this code to the end
            import shutil

            shutil.copytree(path, probe)
            train(client, store=probe, resume=True, iterations=ITERATIONS, report=lambda line: None)
            for l, W in enumerate(RunStore.open(probe).load_checkpoint().weights):
                expected[f"{name}_W{l}"] = np.asarray(W, np.float64)
                assert np.array_equal(expected[f"{name}_W{l}"], expected[f"W{l}_{ITERATIONS}"]), name
    np.savez(work / "expected.npz", **expected)
    (work / "config.json").write_text(json.dumps({**CONFIG, "iterations": ITERATIONS, "chunk_rows": CHUNK_ROWS,
                                                  "switch": switch}, indent=1))
    with tarfile.open(out, "w:gz") as tar:
        for name in ("data.zarr", "consensus-early.zarr", "consensus.zarr", "refit.zarr", "expected.npz", "config.json"):
            tar.add(work / name, arcname=name)
    print(f"{out}: phases {phases}, hand-over at iteration {switch}")


if __name__ == "__main__":
    main(sys.argv[1])
