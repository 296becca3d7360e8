"""The kept-model rules that benchmarks/stopping_replay.py replays on recorded curves."""
import json

import pytest

from benchmarks import stopping_replay
from benchmarks.stopping_replay import kept, picks

# held-out accuracy ties at 0.9 (iterations 2 and 4), the held-out loss is lowest at 3; smoothed over
# neighbours, the last iteration (mean of 0.9 and 0.88 only) is best
HISTORY = [{"iteration": i, "validation_accuracy": a, "validation_loss": loss, "test_accuracy": t}
           for i, (a, loss, t) in enumerate([(0.8, 0.50, 0.80), (0.9, 0.40, 0.85), (0.85, 0.30, 0.90),
                                             (0.9, 0.35, 0.88), (0.88, 0.45, 0.86)], start=1)]


@pytest.mark.parametrize("rule, iteration", [("acc", 4), ("acc-first", 2), ("acc-last", 4), ("loss", 3),
                                             ("smooth3", 5), ("last", 5)])
def test_kept_rules_pick_the_documented_iteration(rule, iteration):
    assert kept(HISTORY, rule, stop=5, n_held=100) == iteration


def test_one_standard_error_rule_takes_the_lowest_loss_within_one_error_of_the_best():
    # se = sqrt(0.9 * 0.1 / 100) = 0.03: 0.88 and 0.9 are within it, 0.85 is not
    assert kept(HISTORY, "1se-loss", stop=5, n_held=100) == 4
    assert kept(HISTORY, "1se-loss", stop=5, n_held=4) == 3  # se 0.15: 0.85 is within it


def test_picks_measure_drift_below_the_best_evaluation_accuracy_seen_up_to_the_stop():
    out = picks({"runs": {"t/0": HISTORY}, "n_held": {"t/0": 100}}, budget=5)["t"]
    assert out["acc"] == [(0.88, pytest.approx(0.02), 4)]
    assert out["loss"] == [(0.90, 0.0, 3)]


def test_loss_rules_fall_back_to_accuracy_when_no_held_out_loss_was_recorded():
    bare = [{k: v for k, v in r.items() if k != "validation_loss"} for r in HISTORY]
    assert kept(bare, "loss", stop=5, n_held=100) == kept(bare, "acc", stop=5, n_held=100) == 2
    assert kept(bare, "1se-loss", stop=5, n_held=100) == 2


def test_from_jsonl_can_be_run_again_onto_its_own_output(tmp_path, monkeypatch):
    """Its output keeps the picks, not the curves ("runs"): a second run onto it failed with KeyError 'runs'."""
    rows = [[h["iteration"], h["test_accuracy"], h["validation_accuracy"], 0.9, 1.0, 0.1, 0.5, h["validation_loss"],
             True] for h in HISTORY]
    scratch = tmp_path / "runs.jsonl"
    scratch.write_text("".join(json.dumps({"task": "t", "seed": s, "args": ["patience=0"], "hist": rows}) + "\n"
                               for s in (0, 1)))
    monkeypatch.setattr(stopping_replay, "held_counts", lambda runs: {k: 100 for k in runs})
    out = tmp_path / "kept.json"
    for _ in range(2):
        stopping_replay.main(["--from-jsonl", str(scratch), "--budgets", "5", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert len(saved["provenance"]) == 2 and saved["picks"]["5"]["t"]["acc"] == [[0.88, pytest.approx(0.02), 4]] * 2
