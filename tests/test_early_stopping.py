"""Early stopping on held-out rows: the split, the bookkeeping, in memory and on Dask."""
import numpy as np
import pytest

from solvers.config import TrainConfig
from solvers.errors import InputError
from solvers.reference import fit_in_memory
from solvers.tiling import chunk_bounds
from solvers.validation import ChunkSplit, EarlyStopping, RowSplit, make_split, row_uniforms, select, split_of


def test_held_out_rows_are_spread_over_every_chunk_and_independent_of_chunking():
    split = RowSplit(0.2, seed=1)
    whole = split.mask(0, 10_000)
    assert 0.18 < whole.mean() < 0.22
    for rows in (50, 333, 1000):  # the same rows whatever the chunking
        parts = [split.mask(a, b) for a, b in chunk_bounds(10_000, rows)]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
        assert all(0 < p.sum() < len(p) for p in parts if len(p) >= 50)  # every chunk holds some out, trains on most
    np.testing.assert_array_equal(split.held(np.flatnonzero(whole)), True)
    assert split.count(10_000) == whole.sum()
    assert RowSplit(0.2, seed=1).mask(0, 10_000).tolist() == whole.tolist()  # deterministic
    assert (RowSplit(0.2, seed=2).mask(0, 10_000) != whole).any()


def test_row_hash_is_uniform_enough_on_class_ordered_rows():
    """A class-ordered file (sorted blocks of labels) gets a held-out share near the fraction from every block."""
    u = row_uniforms(np.arange(70_000), seed=0)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    y = np.repeat(np.arange(7), 10_000)
    held = RowSplit(0.1, 0).mask(0, 70_000)
    shares = np.bincount(y[held], minlength=7) / 10_000
    assert np.all(np.abs(shares - 0.1) < 0.01)


def test_select_and_the_split_a_run_store_records():
    split = RowSplit(0.3, seed=4)
    held = select(split, 100, 200, "held")
    train = select(split, 100, 200, "train")
    assert sorted(np.concatenate([held, train]).tolist()) == list(range(100))
    np.testing.assert_array_equal(split.held(100 + held), True)
    assert select(None, 0, 10, "train") is None and len(select(None, 0, 10, "held")) == 0
    rec = split.record(1000)
    assert rec == {"scheme": "rows", "fraction": 0.3, "seed": 4, "rows": split.count(1000)}
    assert split_of({"validation": rec}) == split and split_of({"validation": None}) is None
    old = split_of({"validation_chunks": [[0, 10], [30, 40]]})  # a run store of an earlier version
    assert isinstance(old, ChunkSplit) and old.count(100) == 20
    assert old.mask(30, 40).all() and not old.mask(10, 20).any()
    np.testing.assert_array_equal(old.held(np.array([5, 15, 35])), [True, False, True])


def test_make_split_turns_off_without_held_rows_and_refuses_to_hold_out_everything():
    assert make_split(0.0, 0, 1000) is None
    assert make_split(0.1, 0, 1000) == RowSplit(0.1, 0)
    seed = next(s for s in range(100) if RowSplit(0.1, s).count(3) == 0)
    assert make_split(0.1, seed, 3) is None  # a few rows, none under the fraction: early stopping is off
    with pytest.raises(InputError, match="holds out all 1 training rows"):
        make_split(0.99, next(s for s in range(100) if RowSplit(0.99, s).count(1) == 1), 1)


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
    assert not es.update(4, 0.8, [w + 4], loss=0.25)  # a lower score: no gain
    assert es.update(5, 0.9, [w + 5], loss=0.25)
    assert es.best_iteration == 3 and es.summary()["best_validation_loss"] == 0.20
    resumed = EarlyStopping(2, best_score=0.9, best_iteration=3, best_weights=[w + 3], best_loss=0.20)
    assert not resumed.update(4, 0.9, [w + 4], loss=0.1) and resumed.best_iteration == 4


def test_a_new_lowest_validation_loss_restarts_patience_but_does_not_choose_the_model():
    es = EarlyStopping(patience=2)
    w = np.zeros(1)
    assert not es.update(1, 0.9, [w + 1], loss=0.30)
    assert not es.update(2, 0.8, [w + 2], loss=0.25)  # lower score, new lowest loss: progress, not the model
    assert not es.update(3, 0.8, [w + 3], loss=0.20)
    assert not es.update(4, 0.85, [w + 4], loss=0.21)  # no gain in either: patience counts from 3
    assert es.update(5, 0.85, [w + 5], loss=0.22)
    assert es.best_iteration == 1 and es.best_weights[0][0] == 1
    assert es.summary()["lowest_validation_loss"] == 0.20 and es.summary()["lowest_loss_iteration"] == 3
    plain = EarlyStopping(patience=2)  # the same scores without losses stop at iteration 3
    assert [plain.update(k, s, [w]) for k, s in enumerate((0.9, 0.8, 0.8), start=1)] == [False, False, True]
    resumed = EarlyStopping(2, best_score=0.9, best_iteration=1, best_weights=[w + 1], best_loss=0.30,
                            lowest_loss=0.20, lowest_iteration=3)
    assert not resumed.update(4, 0.85, [w + 4], loss=0.21) and resumed.update(5, 0.85, [w + 5], loss=0.22)



def test_stopping_state_resumes_from_its_summary():
    es, w = EarlyStopping(patience=2), np.zeros(1)
    for k, (score, loss) in enumerate(((0.9, 0.30), (0.8, 0.25), (0.8, 0.20)), start=1):
        es.update(k, score, [w + k], loss=loss)
    resumed = EarlyStopping.from_summary(2, es.summary(), es.best_weights)
    assert resumed.summary() == es.summary() and resumed.best_weights[0][0] == 1
    assert not resumed.update(4, 0.85, [w + 4], loss=0.21) and resumed.update(5, 0.85, [w + 5], loss=0.22)
    old = EarlyStopping.from_summary(2, {"best_iteration": 1, "best_validation": 0.9, "patience": 2}, [w + 1])
    assert old.best_loss is None and old.lowest_loss is None  # a record of a run store made before the losses
    steps = [old.update(k, 0.8, [w + k], loss=loss) for k, loss in ((2, 0.25), (3, 0.26), (4, 0.27))]
    assert steps == [False, False, True] and old.lowest_iteration == 2  # its first loss is the lowest so far


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
    known = [i for i, h in enumerate(result.history) if h.get("validation_loss") is not None]
    lowest = min(known, key=lambda i: (losses[i], i)) if known else -1  # a new lowest loss restarts patience too
    assert len(result.history) == cfg.iterations or len(result.history) - 1 - max(best, lowest) == cfg.patience
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
    held = RowSplit(0.2, cfg.seed).mask(0, len(y))  # the same rows in memory and on Dask, from every chunk
    assert run.attrs["validation"] == {"scheme": "rows", "fraction": 0.2, "seed": 0, "rows": int(held.sum())}
    assert all(held[a:b].any() and not held[a:b].all() for a, b in chunk_bounds(len(y), run.chunk_rows))
    assert any(f"{held.sum()} held out for early stopping (rows of every chunk)" in line for line in lines)
    if len(result.history) < cfg.iterations:  # it stopped early: a plain resume does not train on
        assert any("stopping early" in line for line in lines)
        again = []
        train(client, store=tmp_path / "r.zarr", resume=True, report=again.append)
        assert any("stopped early" in line for line in again)
        assert RunStore.open(tmp_path / "r.zarr").committed_iteration() == len(result.history)
