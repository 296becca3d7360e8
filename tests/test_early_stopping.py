"""Early stopping on held-out chunks: the split, the bookkeeping, in memory and on Dask."""
import numpy as np
import pytest

from solvers.config import TrainConfig
from solvers.errors import InputError
from solvers.reference import fit_in_memory
from solvers.tiling import chunk_bounds
from solvers.validation import EarlyStopping, chunk_rows_for_validation, validation_split


def test_split_holds_out_whole_chunks_reproducibly():
    chunks = chunk_bounds(1000, 50)
    train, held = validation_split(chunks, 0.2, seed=1)
    assert len(held) == 4 and sorted(train + held) == chunks
    assert validation_split(chunks, 0.2, seed=1) == (train, held)
    assert validation_split(chunks, 0.2, seed=2)[1] != held
    assert validation_split(chunks, 0.0, seed=1) == (chunks, [])


def test_split_refuses_to_hold_out_everything_and_skips_too_few_chunks():
    with pytest.raises(InputError, match="smaller --chunk-rows"):
        validation_split(chunk_bounds(100, 25), 0.9, seed=0)
    assert validation_split(chunk_bounds(100, 50), 0.1, seed=0) == (chunk_bounds(100, 50), [])  # < 4 chunks: off
    assert len(validation_split(chunk_bounds(100, 20), 0.1, seed=0)[1]) == 1  # 5 chunks: at least one held out


def test_default_chunks_are_fine_enough_for_the_fraction():
    assert chunk_rows_for_validation(1000, 1000, 0.1) == 50      # 20 chunks: 2 held out
    assert chunk_rows_for_validation(10**6, 1000, 0.1) == 1000   # already fine enough
    assert chunk_rows_for_validation(1000, 1000, 0.0) == 1000


def test_early_stopping_keeps_the_first_best_and_counts_patience():
    es = EarlyStopping(patience=2)
    w = [np.zeros(2)]
    assert not es.update(1, 0.5, [w[0] + 1])
    assert not es.update(2, 0.7, [w[0] + 2])
    assert not es.update(3, 0.7, [w[0] + 3])  # a tie is no gain
    assert es.update(4, 0.6, [w[0] + 4])
    assert es.best_iteration == 2 and es.best_weights[0][0] == 2
    assert not EarlyStopping(patience=0).update(50, 0.1, w)


def test_a_tied_score_with_a_lower_validation_loss_is_the_new_best_and_restarts_patience():
    es = EarlyStopping(patience=2)
    w = np.zeros(1)
    assert not es.update(1, 0.9, [w + 1], loss=0.30)
    assert not es.update(2, 0.9, [w + 2], loss=0.35)  # tie, higher loss: no gain
    assert not es.update(3, 0.9, [w + 3], loss=0.20)  # tie, lower loss: the new best, patience restarts
    assert (es.best_iteration, es.best_loss, es.best_weights[0][0]) == (3, 0.20, 3)
    assert not es.update(4, 0.8, [w + 4], loss=0.10)  # a lower loss at a lower score is no gain
    assert es.update(5, 0.9, [w + 5], loss=0.25)
    assert es.best_iteration == 3 and es.summary()["best_validation_loss"] == 0.20
    resumed = EarlyStopping(2, best_score=0.9, best_iteration=3, best_weights=[w + 3], best_loss=0.20)
    assert not resumed.update(4, 0.9, [w + 4], loss=0.1) and resumed.best_iteration == 4


def overfitting_problem(n=600, d=30, seed=0):
    """Few samples, many noise features: training accuracy climbs while held-out accuracy peaks early."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = ((X[:, 0] + 0.8 * rng.normal(size=n)) > 0).astype(int)
    return X, y


@pytest.mark.parametrize("solver", ["admm", "gauss-newton"])
def test_in_memory_model_is_the_best_held_out_iteration(solver):
    X, y = overfitting_problem()
    cfg = TrainConfig(solver=solver, hidden=(64,), iterations=12, validation_fraction=0.2, patience=3)
    result = fit_in_memory(X, y, cfg)
    scores = [h["validation_accuracy"] for h in result.history]
    losses = [h.get("validation_loss", 0.0) for h in result.history]  # ties go to the lower held-out loss
    best = min((i for i, s in enumerate(scores) if s == max(scores)), key=lambda i: (losses[i], i))
    assert result.best_iteration == result.history[best]["iteration"]
    assert len(result.history) == cfg.iterations or len(result.history) - 1 - best == cfg.patience
    assert not np.allclose(result.network.weights[0], result.loop_state.weights[0]) or best == len(scores) - 1
    # the returned network is the best iteration's: rerunning to exactly that iteration gives the same weights
    again = fit_in_memory(X, y, TrainConfig(**{**cfg.to_dict(), "iterations": result.best_iteration,
                                               "patience": 0}))
    for W, W_best in zip(again.loop_state.weights, result.network.weights):
        np.testing.assert_allclose(W, W_best, rtol=1e-6, atol=1e-7)


def test_pipeline_early_stopping_matches_reference_and_survives_resume(client, tmp_path):
    from pipeline.training import train
    from storage.data import write_data
    from pipeline.model import load_network
    from storage.runstore import RunStore


    X, y = overfitting_problem()
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=60)
    cfg = TrainConfig(solver="gauss-newton", hidden=(64,), iterations=12, validation_fraction=0.2, patience=2)
    lines = []
    result = train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=cfg, report=lines.append)
    ref = fit_in_memory(X, y, cfg, chunk_rows=RunStore.open(tmp_path / "r.zarr").chunk_rows)
    assert [h["validation_accuracy"] for h in result.history] == pytest.approx(
        [h["validation_accuracy"] for h in ref.history])
    for W, W_ref, W_disk in zip(result.network.weights, ref.network.weights, load_network(tmp_path / "r.zarr").weights):
        np.testing.assert_allclose(W, W_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(W, W_disk)
    run = RunStore.open(tmp_path / "r.zarr")
    assert run.model_iteration() == ref.best_iteration
    assert any("held out for early stopping" in line for line in lines)
    if len(result.history) < cfg.iterations:  # it stopped early: a plain resume does not train on
        assert any("stopping early" in line for line in lines)
        again = []
        train(client, store=tmp_path / "r.zarr", resume=True, report=again.append)
        assert any("stopped early" in line for line in again)
        assert RunStore.open(tmp_path / "r.zarr").committed_iteration() == len(result.history)
