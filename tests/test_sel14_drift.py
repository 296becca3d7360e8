"""The stop and kept-model rules that benchmarks/sel14_drift.py replays, and its noise measures."""
import numpy as np
import pytest

from benchmarks.sel14_drift import kept, noise, stop_of

# held-out accuracy (n_held = 10: one row = 0.1) peaks at 0.9 (iteration 4); 0.8 at 2, 3, 5; the solver's loss is
# lowest at 5, the log-loss at 3
HISTORY = [{"iteration": i, "validation_accuracy": a, "validation_loss": loss, "validation_logloss": ll,
            "test_accuracy": t}
           for i, (a, loss, ll, t) in enumerate([(0.7, 0.50, 0.60, 0.70), (0.8, 0.40, 0.50, 0.80),
                                                 (0.8, 0.35, 0.30, 0.85), (0.9, 0.38, 0.40, 0.82),
                                                 (0.8, 0.30, 0.45, 0.84)], start=1)]


@pytest.mark.parametrize("rule, iteration", [("acc", 4), ("acc-first", 4), ("loss", 5), ("logloss", 3),
                                             ("acc-logloss", 4), ("1row-loss", 5), ("last", 5)])
def test_kept_rules_pick_the_documented_iteration(rule, iteration):
    assert kept(HISTORY, rule, stop=5, n_held=10) == iteration


def test_one_row_rule_needs_a_row_of_slack():
    assert kept(HISTORY, "1row-loss", stop=5, n_held=20) == 4  # half a row: only the best accuracy is near


def test_log_loss_rules_use_the_solver_loss_when_the_log_loss_is_in_sample():
    refit = [{**r, "validation_logloss": None} for r in HISTORY]  # ADMM's readout refit has seen the held-out rows
    assert kept(refit, "logloss", stop=5, n_held=10) == kept(refit, "loss", stop=5, n_held=10) == 5


def test_the_replayed_stop_is_early_stoppings():
    flat = [{"iteration": i, "validation_accuracy": 0.5, "validation_loss": 1.0} for i in range(1, 30)]
    assert stop_of(flat, patience=10) == 11  # no gain after iteration 1
    falling = [{**r, "validation_loss": 1.0 - 0.01 * r["iteration"]} for r in flat]
    assert stop_of(falling, patience=10) == 29  # a new lowest loss restarts patience


def test_noise_floor_is_zero_for_a_dominant_iteration_and_drift_of_a_worse_kept_one_is_measured():
    n = 200
    good = np.ones(n, bool)
    bad = np.arange(n) % 2 == 0
    hist = [{"test_correct": np.packbits(c).tobytes().hex()} for c in (bad, good)]
    out = noise({"history": hist, "n_eval": n, "n_held": 20}, stop=2, kept_it=1, reps=30)
    assert out["floor"] == 0.0 and out["kept"] == pytest.approx(0.5, abs=0.1)
    assert out["sel_1x"] == 0.0  # 20 rows are enough to tell 1.0 from 0.5
