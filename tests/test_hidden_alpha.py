"""--hidden-alpha pinned (Gauss-Newton): the hidden layers unpenalised, each hidden unit's norm kept; the default,
readout, is the old rule, and run stores written before the setting existed resume under it."""
import numpy as np
import pytest

from solvers.config import HANDOVER, STORED_BEFORE, TrainConfig, describe
from solvers.errors import InputError
from solvers.gauss_newton import pin_rows
from solvers.reference import fit_in_memory
from tests.conftest import quiet


def row_norms(W):
    return np.linalg.norm(np.asarray(W, np.float64), axis=1)


def test_pin_rows_keeps_each_rows_norm_and_direction():
    rng = np.random.default_rng(0)
    ref, W = rng.normal(size=(5, 4)), rng.normal(size=(5, 4)) * 7
    out = pin_rows(W, ref)
    np.testing.assert_allclose(row_norms(out), row_norms(ref), rtol=1e-12)
    np.testing.assert_allclose(out / row_norms(out)[:, None], W / row_norms(W)[:, None], rtol=1e-12)


def test_pinned_objective_penalises_the_output_layer_only_and_keeps_the_hidden_norms(digits_0_vs_2):
    """With a fixed α the LM test compares E + α‖W̃_L‖², that objective never rises, and no hidden unit's norm moves."""
    X, _, y, _ = digits_0_vs_2
    alpha = 5.0
    cfg = TrainConfig(solver="gauss-newton", hidden=(20, 12), step_size=4.0, damping=0.05, iterations=10,
                      alpha=alpha, validation_fraction=0, hidden_alpha="pinned")
    result = fit_in_memory(X, y, cfg, chunk_rows=100)
    history, solver, weights = result.history, result.solver, result.loop_state.weights
    assert any(h["accepted"] for h in history) and any(not h["accepted"] for h in history)
    n = len(X)
    readout = alpha * np.sum(np.asarray(weights[-1])[:, :-1] ** 2)
    assert history[-1]["objective"] * n == pytest.approx(history[-1]["loss"] * n + readout, rel=1e-5)
    for prev, h in zip(history, history[1:]):
        assert h["accepted"] == (h["trial_loss"] <= prev["objective"])
        assert h["objective"] <= prev["objective"] + 1e-12
    start = solver.initial_hidden()
    for W, W0 in zip(weights[:-1], start):
        assert not np.allclose(W, W0)  # the units turned …
        np.testing.assert_allclose(row_norms(W), row_norms(W0), rtol=1e-9)  # … at their initial norms
    hidden_decay = sum(np.sum(np.asarray(W)[:, :-1] ** 2) for W in weights[:-1])
    assert solver.objective(1.0, weights, alpha) == pytest.approx(1.0 + readout)
    readout_rule = TrainConfig(**{**cfg.to_dict(), "hidden_alpha": "readout"})
    other = fit_in_memory(X, y, readout_rule, chunk_rows=100).solver
    assert other.objective(1.0, weights, alpha) == pytest.approx(1.0 + readout + alpha * hidden_decay)


def test_pinned_changes_the_run_and_auto_is_probe_where_validated(digits_0_vs_2):
    X, Xt, y, yt = digits_0_vs_2
    base = dict(solver="gauss-newton", hidden=(16,), iterations=4, seed=1)
    default = fit_in_memory(X, y, TrainConfig(**base), X_test=Xt, y_test=yt)
    probe = fit_in_memory(X, y, TrainConfig(**base, hidden_alpha="probe"), X_test=Xt, y_test=yt)
    readout = fit_in_memory(X, y, TrainConfig(**base, hidden_alpha="readout"), X_test=Xt, y_test=yt)
    pinned = fit_in_memory(X, y, TrainConfig(**base, hidden_alpha="pinned"), X_test=Xt, y_test=yt)
    for W, W_ref in zip(default.network.weights, probe.network.weights):
        np.testing.assert_array_equal(W, W_ref)
    assert "hidden_pinned" in default.history[0] and "hidden_pinned" not in readout.history[0]  # the probe ran
    assert not np.allclose(pinned.network.weights[0], readout.network.weights[0])
    assert pinned.history[-1]["test_accuracy"] >= 0.9  # it learns (readout scores 0.99 here)


def test_auto_is_probe_only_where_it_was_validated():
    assert TrainConfig().hidden_alpha == "auto"
    assert TrainConfig(solver="gauss-newton").resolved_hidden_alpha() == "probe"
    for kw in [dict(), dict(solver=HANDOVER), dict(solver="gauss-newton", activation="sigmoid"),
               dict(solver="gauss-newton", layers="conv:4x3x3", input_shape=(8, 8, 1)),
               dict(solver="gauss-newton", task="regression"), dict(solver="gauss-newton", loss="cross-entropy"),
               dict(solver="gauss-newton", init_scale=0.5),  # probe was not measured with a scaled start
               dict(solver="admm")]:  # solver auto before the data is known, refusals of explicit values: readout
        config = TrainConfig(**kw)
        assert config.resolved_hidden_alpha() == "readout", kw
        assert config.solver == kw.get("solver", "auto")  # auto does not pin --solver auto to gauss-newton
    for kw in [dict(hidden_alpha="probe", solver="gauss-newton"), dict(hidden_alpha="readout")]:
        assert TrainConfig(**kw).resolved_hidden_alpha() == kw["hidden_alpha"]


def test_old_stores_config_resumes_under_the_readout_rule():
    stored = TrainConfig(solver="gauss-newton").to_dict()
    del stored["hidden_alpha"]  # written before the setting existed
    config, changed = TrainConfig.resumed(stored, {})
    assert config.hidden_alpha == "readout" and not changed
    assert STORED_BEFORE["hidden_alpha"] == "readout"  # whatever the field's default becomes
    with pytest.raises(InputError, match="cannot resume with settings that change the stored state.*hidden_alpha"):
        TrainConfig.resumed(stored, {"hidden_alpha": "pinned"})


def test_pinned_is_checked_where_gauss_newton_reads_it():
    assert TrainConfig(hidden_alpha="pinned").solver == "gauss-newton"  # auto: only gauss-newton reads it
    assert "hidden alpha pinned" in describe(TrainConfig(hidden_alpha="pinned"))
    assert "hidden alpha" not in describe(TrainConfig(solver="admm", hidden_alpha="pinned"))  # admm ignores it
    with pytest.raises(InputError, match="hidden_alpha pinned needs an activation"):
        TrainConfig(solver="gauss-newton", hidden_alpha="pinned", activation="sigmoid")
    with pytest.raises(InputError, match="hidden_alpha pinned needs dense layers"):
        TrainConfig(solver="gauss-newton", hidden_alpha="pinned", layers="conv:4x3x3", input_shape=(8, 8, 1))
    with pytest.raises(InputError, match="hidden_alpha pinned was measured with --solver gauss-newton only"):
        TrainConfig(solver=HANDOVER, hidden_alpha="pinned")
    with pytest.raises(InputError, match="hidden_alpha 'x' is not one of"):
        TrainConfig(hidden_alpha="x")


_STANDALONE = {}  # (data, chunk_rows, settings) -> the standalone readout and pinned fits, shared by the race and probe tests


def race_runs(X, y, chunk_rows=512, rule="race", data=None, **settings):
    """Return the ``rule`` fit, the standalone readout and pinned fits of the same settings, and the rule's lines.

    ``data``: a name of (X, y) (race_data's, growing_race_data's): the standalone fits are deterministic and only
    read, so the tests of the same data and settings share them (the race and the probe tests compare against the
    same runs); None: fitted afresh."""
    base = {**dict(solver="gauss-newton", hidden=(32,), iterations=6, seed=1, patience=0), **settings}
    key = (data, chunk_rows, tuple(sorted(base.items())))
    runs = _STANDALONE.get(key) if data is not None else None
    if runs is None:
        runs = {ha: fit_in_memory(X, y, TrainConfig(**base, hidden_alpha=ha), chunk_rows=chunk_rows)
                for ha in ("readout", "pinned")}
        if data is not None:
            _STANDALONE[key] = runs
    lines = []
    race = fit_in_memory(X, y, TrainConfig(**base, hidden_alpha=rule), chunk_rows=chunk_rows, report=lines.append)
    return race, runs, lines


def race_data(name):
    """Return (X, y, chunk_rows, settings) of a small race: three-class make_data of a seed, or 300 digits;
    "three0-rejected": seed 0 with a step so long that readout's iteration-1 trial is rejected (pinned's is not)."""
    if name == "three0-rejected":
        X, y, chunk_rows, _ = race_data("three0")
        return X, y, chunk_rows, {"step_size": 5.0, "iterations": 3}
    if name == "digits300":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        idx = np.random.default_rng(2).permutation(len(X))[:300]
        return X[idx].astype(np.float32), y[idx], 128, {"hidden": (64,)}
    from tests.conftest import make_data

    return (*make_data(n=3000, n_classes=3, seed=int(name[-1])), 512, {})


@pytest.mark.parametrize("data,winner,dropped", [("three0", "pinned", False), ("three3", "readout", False),
                                                 ("digits300", "readout", True)])
def test_race_goes_on_as_the_candidate_with_the_better_held_out_score_would_alone(data, winner, dropped):
    """The race's winner continues exactly as its own run (bitwise); the choice is in the metrics and the report.

    Pinned is dropped after iteration 1 when its held-out score is more than RACE_DROP below readout's."""
    from solvers.gauss_newton import RACE_DROP

    X, y, chunk_rows, settings = race_data(data)
    race, runs, lines = race_runs(X, y, chunk_rows, data=data, **settings)
    first = {ha: r.history[0]["validation_accuracy"] for ha, r in runs.items()}
    assert dropped == (first["pinned"] < first["readout"] - RACE_DROP)  # the data sets used here
    best = {ha: max(h["validation_accuracy"] for h in r.history[:2]) for ha, r in runs.items()}
    assert winner == ("pinned" if best["pinned"] > best["readout"] and not dropped else "readout")
    assert [h["hidden_pinned"] for h in race.history] == [0.0] + [float(winner == "pinned")] * 5
    assert race.history[0]["race_validation_accuracy"] == first["pinned"]
    if not dropped:
        assert race.history[1]["race_validation_accuracy"] == runs["readout" if winner == "pinned" else "pinned"
                                                                   ].history[1]["validation_accuracy"]
    assert "race_validation_accuracy" not in race.history[1 if dropped else 2]
    for W, W_ref in zip(race.loop_state.weights, runs[winner].loop_state.weights):
        np.testing.assert_array_equal(W, W_ref)
    drop = ("seconds", "hidden_pinned", "race_validation_accuracy")
    assert [{k: v for k, v in h.items() if k not in drop} for h in race.history[1:]] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in runs[winner].history[1:]]
    note = [line for line in lines if line.startswith("hidden alpha: ")]
    assert note == ([f"hidden alpha: readout from iteration 2 (held-out accuracy at iteration 1: pinned "
                     f"{first['pinned']:.4f}, more than {RACE_DROP} below readout's {first['readout']:.4f})"] if dropped
                    else [f"hidden alpha: {winner} from iteration 3 (best held-out accuracy in iterations 1-2: "
                          f"readout {best['readout']:.4f}, pinned {best['pinned']:.4f})"])


def growing_race_data(name):
    """Return (X, y, chunk_rows, settings) of a race whose progressive sample grows through iterations 1-3."""
    if name == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        return X.astype(np.float32), y, 128, {"hidden": (64,), "sample_start": 300}
    from tests.conftest import make_data

    return (*make_data(n=6000, n_classes=3, seed=0), 250, {"sample_start": 1000})


@pytest.mark.parametrize("data,winner,dropped", [("three0", "pinned", False), ("digits", "readout", True)])
def test_race_on_a_growing_sample_matches_the_standalone_runs(data, winner, dropped):
    """While the sample grows (each iteration's pass B deferred to the next), the race's iterations 1-2 are the
    standalone readout and pinned runs' (reported: readout's, then the winner's; race_validation_*: the other's),
    and the winner goes on bitwise as its own run."""
    X, y, chunk_rows, settings = growing_race_data(data)
    race, runs, _ = race_runs(X, y, chunk_rows, data=f"growing-{data}", **settings)
    rows = [h["sample_rows"] for h in race.history]
    assert rows[0] < rows[1] < rows[2]  # the sample grows through the race
    assert rows == [h["sample_rows"] for h in runs["readout"].history] == [h["sample_rows"] for h in runs["pinned"].history]
    valid = {ha: [h["validation_accuracy"] for h in r.history] for ha, r in runs.items()}
    drop = ("seconds", "hidden_pinned", "race_validation_accuracy")

    def same(h, ref):
        assert {k: v for k, v in h.items() if k not in drop} == {k: v for k, v in ref.items() if k != "seconds"}

    same(race.history[0], runs["readout"].history[0])
    assert race.history[0]["race_validation_accuracy"] == valid["pinned"][0]
    assert dropped == (valid["pinned"][0] < valid["readout"][0] - 0.01)
    if not dropped:
        loser = "readout" if winner == "pinned" else "pinned"
        assert race.history[1]["race_validation_accuracy"] == valid[loser][1]
        assert winner == ("pinned" if max(valid["pinned"][:2]) > max(valid["readout"][:2]) else "readout")
    for h, ref in zip(race.history[1:], runs[winner].history[1:]):
        same(h, ref)
    assert [h["hidden_pinned"] for h in race.history] == [0.0] + [float(winner == "pinned")] * 5
    for W, W_ref in zip(race.loop_state.weights, runs[winner].loop_state.weights):
        np.testing.assert_array_equal(W, W_ref)


@pytest.mark.parametrize("data,winner", [("three0", "readout"), ("three0g", "pinned"), ("digits300", "readout"),
                                         ("three0-rejected", "readout")])
def test_probe_goes_on_as_the_candidate_with_the_lower_held_out_loss_at_iteration_1_would_alone(data, winner):
    """--hidden-alpha probe: pinned iff its iteration-1 step was accepted and its held-out loss is below readout's ×
    (1 − PROBE_MARGIN); the winner is reported from iteration 1 and goes on bitwise as its own run (iteration 1's
    training loss is pass A's, as when a growing sample defers pass B: equal to pass B's up to rounding).

    three0-rejected: readout's trial is rejected (no held-out loss) and pinned's accepted, so readout goes on and
    its _finish makes its next trial (no score pass), as its own run's rejected iteration 1 does."""
    from solvers.hidden_race import PROBE_MARGIN

    if data == "three0g":
        X, y, chunk_rows, settings = growing_race_data("three0")
        name = "growing-three0"
    else:
        X, y, chunk_rows, settings = race_data(data)
        name = data
    probe, runs, lines = race_runs(X, y, chunk_rows, rule="probe", data=name, **settings)
    first = {ha: r.history[0] for ha, r in runs.items()}
    assert [first["readout"]["accepted"], first["pinned"]["accepted"]] == [data != "three0-rejected", True]
    assert winner == ("pinned" if first["pinned"]["accepted"] and "validation_loss" in first["readout"]
                      and first["pinned"]["validation_loss"] < first["readout"]["validation_loss"] * (1 - PROBE_MARGIN)
                      else "readout")
    loser = "readout" if winner == "pinned" else "pinned"
    assert [h["hidden_pinned"] for h in probe.history] == [float(winner == "pinned")] * len(runs[winner].history)
    if "validation_loss" in first[loser]:
        assert probe.history[0]["race_validation_loss"] == first[loser]["validation_loss"]
    else:  # the loser's trial was rejected: no metric (not NaN)
        assert "race_validation_loss" not in probe.history[0]
    assert all("race_validation_loss" not in h for h in probe.history[1:])
    for W, W_ref in zip(probe.loop_state.weights, runs[winner].loop_state.weights):
        np.testing.assert_array_equal(W, W_ref)
    drop = ("seconds", "hidden_pinned", "race_validation_loss")
    got = [{k: v for k, v in h.items() if k not in drop} for h in probe.history]
    want = [{k: v for k, v in h.items() if k != "seconds"} for h in runs[winner].history]
    assert got[0].pop("loss") == pytest.approx(want[0].pop("loss"), rel=1e-5)
    assert got == want
    seen = {ha: f"{h['validation_loss']:.4g}" if h["accepted"] else "rejected" for ha, h in first.items()}
    assert [line for line in lines if line.startswith("hidden alpha: ")] == [
        f"hidden alpha: {winner} from iteration 1 (held-out loss at iteration 1: readout {seen['readout']}, pinned "
        f"{seen['pinned']}; pinned needs {1 - PROBE_MARGIN:g}x readout's)"]


@pytest.mark.parametrize("rule", ["race", "probe"])
def test_race_with_nothing_held_out_is_readout(rule):
    from tests.conftest import make_data

    X, y = make_data(n=2000, n_classes=2)
    race, runs, _ = race_runs(X, y, validation_fraction=0, rule=rule, data="two2000")
    for W, W_ref in zip(race.loop_state.weights, runs["readout"].loop_state.weights):
        np.testing.assert_array_equal(W, W_ref)
    assert all(h["hidden_pinned"] == 0.0 for h in race.history)


def test_pipeline_race_matches_reference_and_resumes_mid_race(client, tmp_path):
    from pipeline.training import train
    from storage.data import write_data

    from tests.conftest import make_data

    X, y = make_data(n=3000, n_classes=3)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=512)
    cfg = TrainConfig(solver="gauss-newton", hidden=(32,), iterations=1, seed=1, patience=0, hidden_alpha="race")
    train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=512, report=quiet)
    more = train(client, store=tmp_path / "r.zarr", resume=True, iterations=5, report=quiet)  # resumed mid-race
    ref = fit_in_memory(X, y, TrainConfig(**{**cfg.to_dict(), "iterations": 5}), chunk_rows=512)
    assert [h["hidden_pinned"] for h in more.history] == [h["hidden_pinned"] for h in ref.history] == [0, 1, 1, 1, 1]
    assert [h["accepted"] for h in more.history] == [h["accepted"] for h in ref.history]
    for W, W_ref in zip(more.network.weights, ref.network.weights):
        np.testing.assert_allclose(W, W_ref, rtol=1e-4, atol=1e-5)


def test_pipeline_probe_matches_reference_and_resumes_after_the_choice(client, tmp_path):
    """Resumed after iteration 1: the choice made, the winner's pass B deferred (in the checkpoint's carry)."""
    from pipeline.training import train
    from storage.data import write_data
    from storage.runstore import RunStore

    from tests.conftest import make_data

    X, y = make_data(n=3000, n_classes=3)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=512)
    cfg = TrainConfig(solver="gauss-newton", hidden=(32,), iterations=1, seed=1, patience=0, hidden_alpha="probe")
    train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=512, report=quiet)
    carry = RunStore.open(tmp_path / "r.zarr").load_checkpoint().carry
    assert float(carry["pending"]) == 1.0 and "hidden_pinned" in carry and "race_W1" not in carry
    more = train(client, store=tmp_path / "r.zarr", resume=True, iterations=5, report=quiet)
    ref = fit_in_memory(X, y, TrainConfig(**{**cfg.to_dict(), "iterations": 5}), chunk_rows=512)
    assert [h["hidden_pinned"] for h in more.history] == [h["hidden_pinned"] for h in ref.history]
    assert [h["accepted"] for h in more.history] == [h["accepted"] for h in ref.history]
    for W, W_ref in zip(more.network.weights, ref.network.weights):
        np.testing.assert_allclose(W, W_ref, rtol=1e-4, atol=1e-5)


def test_pipeline_probe_sharing_one_pass_a_is_bitwise_the_two_passes(client, tmp_path, monkeypatch):
    """The pipeline's probe sums both candidates' pass A in one pass (hidden_race.shared_pass) on the workers: the
    run (history, weights, the stored carry) is bitwise the one with a pass A per candidate (shared_pass → None)."""
    from pipeline.training import train
    from solvers import hidden_race
    from storage.data import write_data
    from storage.runstore import RunStore

    from tests.conftest import make_data

    X, y = make_data(n=3000, n_classes=3)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=512)
    cfg = TrainConfig(solver="gauss-newton", hidden=(32,), iterations=3, seed=1, patience=0, hidden_alpha="probe")
    shared = []
    real = hidden_race.shared_pass

    def spy(*args):
        out = real(*args)
        shared.append(out is not None)
        return out
    monkeypatch.setattr(hidden_race, "shared_pass", spy)
    one = train(client, store=tmp_path / "one.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=512, report=quiet)
    assert shared == [True]
    monkeypatch.setattr(hidden_race, "shared_pass", lambda *args: None)
    two = train(client, store=tmp_path / "two.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=512, report=quiet)
    assert [h["passes"] for h in one.history][0] == [h["passes"] for h in two.history][0] - 1  # iteration 1: one pass less
    drop = ("seconds", "passes", "rows_per_second", "read_mb_per_second")  # the pass count and rates differ
    assert [{k: v for k, v in h.items() if k not in drop} for h in one.history] == [
        {k: v for k, v in h.items() if k not in drop} for h in two.history]
    for W, W_ref in zip(one.network.weights, two.network.weights):
        np.testing.assert_array_equal(W, W_ref)
    a, b = (RunStore.open(tmp_path / name).load_checkpoint().carry for name in ("one.zarr", "two.zarr"))
    assert sorted(a) == sorted(b)
    for name, value in b.items():
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(value), err_msg=name)


def test_race_of_a_regression_whose_held_out_r2_is_below_minus_1_picks_the_better_candidate(monkeypatch):
    """The best scores started at -1.0: with R² < -1 for both (an early regression) both "bests" stayed -1.0,
    a tie, and readout went on whatever pinned scored."""
    from solvers.gauss_newton import GaussNewtonSolver

    real = GaussNewtonSolver._advance

    def scored(self, runner, state):  # pinned clearly better, both far below R² = -1
        new, metrics = real(self, runner, state)
        return new, {**metrics, "validation_r2": -2.0 if self.pinned else -3.0}

    monkeypatch.setattr(GaussNewtonSolver, "_advance", scored)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1500, 5))
    y = X[:, 0] - 2 * X[:, 1] + 0.1 * rng.normal(size=1500)
    cfg = TrainConfig(solver="gauss-newton", task="regression", hidden=(8,), iterations=3, seed=0, patience=0,
                      hidden_alpha="race")
    race = fit_in_memory(X, y, cfg, chunk_rows=500)
    assert [h["hidden_pinned"] for h in race.history] == [0.0, 1.0, 1.0]


def test_probe_with_the_cross_entropy_loss_goes_on_as_the_winner_would_alone():
    """--loss cross-entropy: the pinned candidate's start objective is cross-entropy's (hidden_race.initialize) and
    the held-out losses come from pass A's cross-entropy sums per output α (held_loss: held["ce"], out_alphas); the
    winner by the probe's rule goes on bitwise as its own run."""
    from solvers.hidden_race import PROBE_MARGIN

    X, y, chunk_rows, settings = race_data("three0")
    race, runs, lines = race_runs(X, y, chunk_rows, rule="probe", loss="cross-entropy", iterations=3, **settings)
    first = {ha: r.history[0] for ha, r in runs.items()}
    assert all(np.isfinite(h["validation_loss"]) for h in first.values() if "validation_loss" in h)
    pinned = bool(first["pinned"]["accepted"] and "validation_loss" in first["readout"]
                  and first["pinned"]["validation_loss"] < first["readout"]["validation_loss"] * (1 - PROBE_MARGIN))
    winner = "pinned" if pinned else "readout"
    assert [h["hidden_pinned"] for h in race.history] == [float(pinned)] * 3
    for W, W_ref in zip(race.loop_state.weights, runs[winner].loop_state.weights):
        np.testing.assert_array_equal(W, W_ref)
    assert [line.split(" (")[0] for line in lines if line.startswith("hidden alpha: ")] == [
        f"hidden alpha: {winner} from iteration 1"]


def test_probe_says_rejected_for_a_rejected_readout_step_and_records_no_nan_metric():
    """Readout's iteration-1 trial rejected (no held-out loss): readout goes on, the note says "rejected" (not
    "None"), and no race_validation_loss metric is written for a loser without a held-out loss."""
    from solvers import hidden_race
    from solvers.loop import LoopState

    class Fake:
        defer_curvature, pinned, note = False, False, ""

        def __init__(self, main, other):
            self.metrics = {False: main, True: other}

        def _advance(self, runner, state):
            return LoopState(1, state.weights, dict(state.carry)), dict(self.metrics[self.pinned])

    start = LoopState(0, [np.zeros((2, 2))], {})
    fake = Fake({"accepted": False}, {"accepted": True, "validation_loss": 0.5})
    won, metrics = hidden_race._probe(fake, None, start, start)
    assert metrics["hidden_pinned"] == 0.0 and "race_validation_loss" in metrics  # the loser (pinned) had a loss
    assert "readout rejected, pinned 0.5;" in fake.note and "None" not in fake.note
    fake = Fake({"accepted": True, "validation_loss": 0.4}, {"accepted": False})
    won, metrics = hidden_race._probe(fake, None, start, start)
    assert metrics["hidden_pinned"] == 0.0 and "race_validation_loss" not in metrics  # no NaN metric
    assert "readout 0.4, pinned rejected;" in fake.note


@pytest.mark.parametrize("data,winner", [("three0", "readout"), ("three0g", "pinned")])
def test_probe_finishing_the_winner_only_is_bitwise_both_whole_iterations_and_skips_the_losers_score_pass(
        monkeypatch, data, winner):
    """hidden_race._probe takes pass A of both candidates and finishes the winner only (GaussNewtonSolver._evaluate,
    _finish); a subclass overriding _advance takes both whole iterations (the probe before session 13): the history,
    the weights and the final carry are bitwise the same, and the loser's score pass is not run. Both candidates'
    pass A is one pass (hidden_race.shared_pass, session 16): iteration 1 takes one forward pass, not two."""
    from solvers import SOLVERS, gauss_newton, hidden_race

    stock = SOLVERS["gauss-newton"]
    calls, forward = [], []

    def counted(module):
        real = module.run_pass_held_out

        def run(runner, layout, kernel, params, iteration, *args, **kw):
            if kernel == "forward_chunk":
                forward.append(iteration)
            return real(runner, layout, kernel, params, iteration, *args, **kw)
        monkeypatch.setattr(module, "run_pass_held_out", run)

    counted(gauss_newton)
    counted(hidden_race)

    class Counting(stock):
        def _score_pass(self, runner, weights, k, sample):
            calls.append(k)
            return super()._score_pass(runner, weights, k, sample)

    class Whole(Counting):
        def _advance(self, runner, state):  # overridden: the probe runs both candidates' whole iterations
            return super()._advance(runner, state)

    if data == "three0g":
        X, y, chunk_rows, settings = growing_race_data("three0")
    else:
        X, y, chunk_rows, settings = race_data(data)
    cfg = TrainConfig(**{**dict(solver="gauss-newton", hidden=(32,), iterations=4, seed=1, patience=0), **settings},
                      hidden_alpha="probe")
    out, passes = {}, {}
    for name, cls in (("split", Counting), ("whole", Whole)):
        monkeypatch.setitem(SOLVERS, "gauss-newton", cls)
        calls.clear()
        forward.clear()
        out[name] = fit_in_memory(X, y, cfg, chunk_rows=chunk_rows)
        passes[name] = ([k for k in calls if k == 1], [k for k in forward if k == 1])
    split, whole = out["split"], out["whole"]
    assert split.history[0]["hidden_pinned"] == float(winner == "pinned")
    assert len(passes["whole"][0]) == 2 and len(passes["split"][0]) == 1  # iteration 1: the loser's score pass is gone
    assert len(passes["whole"][1]) == 2 and len(passes["split"][1]) == 1  # … and both pass A are one pass
    drop = ("seconds",)
    assert [{k: v for k, v in h.items() if k not in drop} for h in split.history] == [
        {k: v for k, v in h.items() if k not in drop} for h in whole.history]
    for W, W_ref in zip(split.loop_state.weights, whole.loop_state.weights):
        np.testing.assert_array_equal(W, W_ref)
    assert sorted(split.loop_state.carry) == sorted(whole.loop_state.carry)
    for name, value in whole.loop_state.carry.items():
        np.testing.assert_array_equal(np.asarray(split.loop_state.carry[name]), np.asarray(value), err_msg=name)
