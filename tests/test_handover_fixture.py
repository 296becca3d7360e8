"""Run stores written by session 8's code (tests/data/session8_handover.tar.gz, made by make_session8_handover.py
at commit 5c79a6f) resume with today's code: a store past the hand-over (phase 1) reaches session 8's weights
bit for bit; a store stopped in the consensus phase continues session 8's consensus passes bit for bit and hands
over as today's code does (phase 2, on purpose: session 8's hand-over dropped at the switch), reaching the weights
of an uninterrupted run of today's code."""
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from solvers.config import STORED_BEFORE, TrainConfig
from tests.conftest import quiet

ARCHIVE = Path(__file__).parent / "data" / "session8_handover.tar.gz"


@pytest.fixture(scope="module")
def session8(tmp_path_factory):
    """The archive unpacked once: its stores are copied before each resume (a resume writes into its store)."""
    where = tmp_path_factory.mktemp("session8")
    with tarfile.open(ARCHIVE) as tar:
        # no filter keyword before 3.10.12, nor in 3.11.0-3.11.3
        tar.extractall(where, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    expected = dict(np.load(where / "expected.npz"))
    return where, expected, json.loads((where / "config.json").read_text())


def _copy(session8, name, tmp_path) -> Path:
    store = tmp_path / name
    shutil.copytree(session8[0] / name, store)
    return store


def _weights(store):
    from storage.runstore import RunStore

    return [np.asarray(W, np.float64) for W in RunStore.open(store).load_checkpoint().weights]


def _assert_session8(weights, expected, k):
    for layer, W in enumerate(weights):
        np.testing.assert_array_equal(W, expected[f"W{layer}_{k}"])


def test_a_session_8_store_past_the_hand_over_resumes_to_session_8s_weights(session8, client, tmp_path):
    """Phase 1 (squared-loss Gauss-Newton from the consensus hidden weights, output layer refitted) goes on as it ran."""
    from pipeline.training import train

    where, expected, config = session8
    store = _copy(session8, "refit.zarr", tmp_path)
    resumed = train(client, store=store, data=where / "data.zarr", resume=True, iterations=config["iterations"],
                    report=quiet)
    assert [h["phase"] for h in resumed.history] == expected["phases"].tolist()
    assert all("gauss_newton_loss" not in h for h in resumed.history)  # phase 1's records, as session 8 wrote them
    assert resumed.history[-1]["iteration"] == config["iterations"]
    _assert_session8(_weights(store), expected, config["iterations"])
    for layer, W in enumerate(_weights(store)):  # and the weights session 8's code reached resuming this store
        np.testing.assert_array_equal(W, expected[f"refit_W{layer}"])


@pytest.mark.parametrize("name", ["consensus-early.zarr", "consensus.zarr"])
def test_a_session_8_store_in_the_consensus_phase_continues_its_passes_and_hands_over_as_today(name, session8, client,
                                                                                                 tmp_path):
    """Two passes before the hand-over: today's consensus pass is session 8's bit for bit. At the hand-over today's
    phase 2 takes the last consensus pass's α from the store's records (session 8's carry has no α_c), so the run
    ends on the weights of today's code run without a stop (with the consensus rule's α at the hand-over instead,
    it did not: ~30 % larger α)."""
    from pipeline.training import train
    from storage.runstore import RunStore

    where, expected, config = session8
    switch = config["switch"]
    store = _copy(session8, name, tmp_path)
    stopped = RunStore.open(store).committed_iteration()
    assert stopped < switch and "consensus_alpha" not in RunStore.open(store).load_checkpoint().carry
    if stopped < switch - 1:
        train(client, store=store, data=where / "data.zarr", resume=True, iterations=switch - 1, report=quiet)
        _assert_session8(_weights(store), expected, switch - 1)
    resumed = train(client, store=store, data=where / "data.zarr", resume=True, iterations=config["iterations"],
                    report=quiet)
    phases = [h["phase"] for h in resumed.history]
    assert phases == expected["phases"].tolist()  # the hand-over at session 8's iteration
    assert all(h.get("gauss_newton_loss") == "cross-entropy" for h in resumed.history[switch - 1:])  # phase 2
    settings = {k: v for k, v in config.items() if k not in ("chunk_rows", "switch")}
    settings = {"first_lr_scale": STORED_BEFORE["first_lr_scale"], "handover_delay": STORED_BEFORE["handover_delay"],
                **settings}  # the old store's rules (today's hand-over defaults: 2 and 1)
    whole = train(client, store=tmp_path / "today.zarr", data=where / "data.zarr", config=TrainConfig(**settings),
                  chunk_rows=config["chunk_rows"], report=quiet)
    assert [h["phase"] for h in whole.history] == phases
    for W, W_today in zip(_weights(store), _weights(tmp_path / "today.zarr")):
        np.testing.assert_array_equal(W, W_today)
