"""--step-choice held-out (Gauss-Newton, k10_s14.md's hs2@1): iteration 1 evaluates the hidden trial at step lengths
t = 1 and 2 in one pass A and keeps the one of lower held-out loss; t = 1 kept is the stock run bit for bit, t = 2 kept
is the stock solver whose first trial was W + 2 (T − W); old run stores resume under none. --step-choice held-out-1.5
(t15_s16.md): the same with t = 1 and 1.5."""
import dataclasses

import numpy as np
import pytest

from solvers import SOLVERS, make_solver
from solvers.config import HANDOVER, STORED_BEFORE, TrainConfig, describe
from solvers.errors import InputError
from solvers.gauss_newton import GaussNewtonSolver, pin_rows
from solvers.step_choice import STEP_LENGTHS, choose_step, layout as step_layout, stretched
from solvers.loop import LoopState
from solvers.reference import fit_in_memory

BASE = dict(solver="gauss-newton", hidden=(32,), iterations=4, seed=1, patience=0)


def linear_classes(n=2000, k=5, seed=0):
    """Return X, y of k linear classes (argmax of a random linear map): iteration 1 keeps t = 2 here."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 20)).astype(np.float32)
    return X, np.argmax(X @ rng.normal(size=(20, k)), 1)


def two_classes():
    """Return X, y of tests.conftest.make_data's two classes, seed 1: iteration 1 keeps t = 1 here."""
    from tests.conftest import make_data

    return make_data(n=3000, n_classes=2, seed=1)


def _without_step(history):
    return [{k: v for k, v in h.items() if k != "seconds" and not k.startswith("step_")} for h in history]


def test_choose_step_keeps_the_least_loss_ties_and_non_finite_keep_t_1():
    assert choose_step([0.5, 0.4]) == 1
    assert choose_step([0.4, 0.5]) == 0
    assert choose_step([0.4, 0.4]) == 0  # a tie keeps the stock trial
    assert choose_step([0.4, np.nan]) == 0 and choose_step([0.4, np.inf]) == 0
    assert choose_step([np.inf, 0.7]) == 1  # a finite loss beats a non-finite one
    assert choose_step([0.3, 0.2, 0.2]) == 1  # the first of equal least losses
    assert STEP_LENGTHS == {"held-out": (1.0, 2.0), "held-out-1.5": (1.0, 1.5)}


def test_default_is_none_and_old_stores_resume_under_none():
    assert TrainConfig().step_choice == "none" and STORED_BEFORE["step_choice"] == "none"
    stored = TrainConfig(solver="gauss-newton").to_dict()
    del stored["step_choice"]  # written before the setting existed
    config, changed = TrainConfig.resumed(stored, {})
    assert config.step_choice == "none" and not changed
    with pytest.raises(InputError, match="cannot resume with settings that change the stored state.*step_choice"):
        TrainConfig.resumed(stored, {"step_choice": "held-out"})


def test_step_choice_is_checked_where_gauss_newton_reads_it():
    given = TrainConfig(step_choice="held-out")
    assert given.solver == "gauss-newton" and given.auto_pinned  # auto: only gauss-newton reads it
    assert given._pin_record()["why"] == "--step-choice held-out given, read by gauss-newton only"
    assert "step choice held-out" in describe(given)
    assert "step choice" not in describe(TrainConfig(solver="admm", step_choice="held-out"))  # admm ignores it
    assert "step choice held-out-1.5" in describe(TrainConfig(step_choice="held-out-1.5"))
    with pytest.raises(InputError, match="step_choice 'x' is not one of"):
        TrainConfig(step_choice="x")
    with pytest.raises(InputError, match=f"measured with --solver gauss-newton only, not {HANDOVER}"):
        TrainConfig(solver=HANDOVER, step_choice="held-out")
    with pytest.raises(InputError, match="step_choice held-out needs dense layers .pass --step-choice none with "
                       "convolutional --layers, or dense --hidden layers"):  # what to pass instead (review1_s15 F5)
        TrainConfig(solver="gauss-newton", step_choice="held-out", layers="conv:4x3x3", input_shape=(8, 8, 1))
    with pytest.raises(InputError, match="step_choice held-out needs the squared loss .pass --step-choice none with "
                       "--loss cross-entropy, or --loss squared"):
        TrainConfig(solver="gauss-newton", step_choice="held-out", loss="cross-entropy")
    with pytest.raises(InputError, match="step_choice held-out-1.5 needs the squared loss"):
        TrainConfig(solver="gauss-newton", step_choice="held-out-1.5", loss="cross-entropy")
    with pytest.raises(InputError, match="step_choice held-out-1.5 was measured with --solver gauss-newton only"):
        TrainConfig(solver=HANDOVER, step_choice="held-out-1.5")


def test_held_out_1_5_is_stored_and_resumes_under_its_rule():
    stored = TrainConfig(solver="gauss-newton", step_choice="held-out-1.5").to_dict()
    assert stored["step_choice"] == "held-out-1.5"
    config, changed = TrainConfig.resumed(stored, {})
    assert config.step_choice == "held-out-1.5" and not changed
    with pytest.raises(InputError, match="cannot resume with settings that change the stored state.*step_choice"):
        TrainConfig.resumed(stored, {"step_choice": "held-out"})


def test_forward_chunk_sums_the_other_trials_in_the_same_read_and_the_stock_trials_bitwise():
    X, y = linear_classes(n=700)
    cfg = TrainConfig(solver="gauss-newton", hidden=(6, 4))
    solver = make_solver(cfg, X.shape[1], x_mean=X.mean(0), x_scale=X.std(0), classes=np.arange(5))
    solver.tile_rows = 256  # several tiles
    rng = np.random.default_rng(3)
    hidden = [rng.normal(size=W.shape) for W in solver.initial_hidden()]
    other = [W + 0.3 * rng.normal(size=W.shape) for W in hidden]
    p = solver._forward_params(hidden, True)
    alone = solver.forward_chunk(X, y, None, 0, p)[1]
    other_alone = solver.forward_layout(True).unpack(solver.forward_chunk(X, y, None, 0, solver._forward_params(other, True))[1])
    both = step_layout(solver, True, 1).unpack(
        solver.forward_chunk(X, y, None, 0, dataclasses.replace(p, others=(solver.cast(other),)))[1])
    for name, value in solver.forward_layout(True).unpack(alone).items():
        np.testing.assert_array_equal(both[name], value)
    L = solver.L
    np.testing.assert_array_equal(both[f"step1_gram{L}"], other_alone[f"gram{L}"])
    np.testing.assert_array_equal(both[f"step1_cross{L}"], other_alone[f"cross{L}"])


def test_stretched_trial_is_the_trial_at_t_1_and_keeps_pinned_norms():
    rng = np.random.default_rng(0)
    W, T = rng.normal(size=(6, 21)), rng.normal(size=(6, 21))
    assert stretched([W], [T], 1.0)[0] is T and stretched([W], [T], 1.0, pin_rows)[0] is T
    np.testing.assert_array_equal(stretched([W], [T], 2.0)[0], W + 2.0 * (T - W))
    np.testing.assert_allclose(np.linalg.norm(stretched([W], [T], 2.0, pin_rows)[0], axis=1), np.linalg.norm(W, axis=1))


@pytest.mark.parametrize("hidden_alpha", ["readout", "probe"])
def test_t_1_kept_is_the_stock_run_bit_for_bit(hidden_alpha):
    X, y = two_classes()
    lines = []
    stock = fit_in_memory(X, y, TrainConfig(**BASE, hidden_alpha=hidden_alpha), chunk_rows=512)
    held = fit_in_memory(X, y, TrainConfig(**BASE, hidden_alpha=hidden_alpha, step_choice="held-out"), chunk_rows=512,
                         report=lines.append)
    first = held.history[0]
    assert first["step_length"] == 1.0 and first["step_validation_loss_1"] < first["step_validation_loss_2"]
    assert all("step_length" not in h for h in held.history[1:])
    for W, W_ref in zip(held.loop_state.weights, stock.loop_state.weights, strict=True):
        np.testing.assert_array_equal(W, W_ref)
    assert _without_step(held.history) == _without_step(stock.history)
    assert first["validation_loss"] == first["step_validation_loss_1"]  # the kept trial's held-out loss, as reported
    assert float(held.loop_state.carry["step_length"]) == 1.0
    name = {"readout": "", "probe": " (readout)"}[hidden_alpha]  # the probe's line names its winner (readout here)
    assert [line for line in lines if line.startswith("step length")] == [
        f"step length{name}: t = 1 at iteration 1 (held-out loss t = 1: {first['step_validation_loss_1']:.4g}, "
        f"t = 2: {first['step_validation_loss_2']:.4g})"]


def _rejected_longer_step_is_the_stock_run(X, y, choice):
    """Run ``choice`` under readout and the stock solver on (X, y), where the held-out rows prefer the longer step t and
    the LM test rejects it: t = 1 goes on, bitwise the stock run, and the step-length line says t failed. Returns the
    choice run's and the stock run's first history entries."""
    settings, t = {**BASE, "hidden_alpha": "readout"}, STEP_LENGTHS[choice][1]
    stock = fit_in_memory(X, y, TrainConfig(**settings), chunk_rows=512)
    lines = []
    held = fit_in_memory(X, y, TrainConfig(**settings, step_choice=choice), chunk_rows=512, report=lines.append)
    first = held.history[0]
    assert first[f"step_validation_loss_{t:g}"] < first["step_validation_loss_1"] and first["step_length"] == 1.0
    for W, W_ref in zip(held.loop_state.weights, stock.loop_state.weights, strict=True):
        np.testing.assert_array_equal(W, W_ref)
    assert _without_step(held.history) == _without_step(stock.history)
    assert [line for line in lines if line.startswith("step length")] == [
        f"step length: t = 1 at iteration 1 (held-out loss t = 1: {first['step_validation_loss_1']:.4g}, "
        f"t = {t:g}: {first[f'step_validation_loss_{t:g}']:.4g}; t = {t:g} failed the LM test)"]
    return first, stock.history[0]


def test_a_longer_step_the_lm_test_rejects_is_not_kept_and_the_run_is_the_stock_run():
    """make_data's two classes, seed 0: the held-out rows prefer t = 2 by 1 %, but its training objective rose (the
    LM test would reject it, quadrupling λ and losing iteration 1); t = 1 goes on instead: the stock run, bitwise."""
    from tests.conftest import make_data

    first, stock_first = _rejected_longer_step_is_the_stock_run(*make_data(n=3000, n_classes=2, seed=0), "held-out")
    assert first["accepted"] and stock_first["accepted"]


class _Forced(GaussNewtonSolver):
    """The stock solver whose iteration-1 trial is W + t (T − W) (t = :attr:`t`), evaluated by the stock pass A alone."""

    t = 2.0

    def _evaluate(self, runner, state):
        state = self.prepare(runner, state)
        if state.iteration == 0:
            c = dict(state.carry)
            pin = pin_rows if self.pinned else None
            for l, W in enumerate(stretched(state.weights[:-1], [c[f"T{l}"] for l in range(1, self.L)], self.t, pin), 1):
                c[f"T{l}"] = W
            state = LoopState(0, list(state.weights), c)
        return super()._evaluate(runner, state)


@pytest.mark.parametrize("choice, hidden_alpha", [("held-out", "readout"), ("held-out", "pinned"),
                                                 ("held-out-1.5", "pinned")])
def test_longer_step_kept_is_the_stock_solver_with_the_longer_first_trial_bit_for_bit(monkeypatch, choice, hidden_alpha):
    """The kept trial's sums come from the shared pass A: the run equals one whose only pass A was at t = 2 (1.5)."""
    X, y = linear_classes()
    lines = []
    held = fit_in_memory(X, y, TrainConfig(**BASE, hidden_alpha=hidden_alpha, step_choice=choice), chunk_rows=512,
                         report=lines.append)
    first, t = held.history[0], STEP_LENGTHS[choice][1]
    assert first["step_length"] == t and first[f"step_validation_loss_{t:g}"] < first["step_validation_loss_1"]
    assert sorted(k for k in first if k.startswith("step_validation_loss_")) == [
        "step_validation_loss_1", f"step_validation_loss_{t:g}"]
    monkeypatch.setitem(SOLVERS, "gauss-newton", type("Forced", (_Forced,), {"t": t}))
    forced = fit_in_memory(X, y, TrainConfig(**BASE, hidden_alpha=hidden_alpha), chunk_rows=512)
    for W, W_ref in zip(held.loop_state.weights, forced.loop_state.weights, strict=True):
        np.testing.assert_array_equal(W, W_ref)
    assert _without_step(held.history) == _without_step(forced.history)
    assert first["validation_loss"] == first[f"step_validation_loss_{t:g}"]
    np.testing.assert_array_equal(held.loop_state.carry["step_held_losses"],
                                  [first["step_validation_loss_1"], first[f"step_validation_loss_{t:g}"]])
    assert [line for line in lines if line.startswith("step length")] == [
        f"step length: t = {t:g} at iteration 1 (held-out loss t = 1: {first['step_validation_loss_1']:.4g}, "
        f"t = {t:g}: {first[f'step_validation_loss_{t:g}']:.4g})"]


def test_held_out_1_5_the_lm_test_rejects_is_the_stock_run():
    """Ten linear classes under readout: the held-out rows prefer t = 1.5, its training objective rose: t = 1 goes on,
    the stock run bit for bit, and the line says so."""
    _rejected_longer_step_is_the_stock_run(*linear_classes(), "held-out-1.5")


def test_probe_candidates_each_choose_and_the_winner_goes_on_as_its_own_run():
    """With --hidden-alpha probe each candidate makes the choice in its own pass A; the probe then compares their
    kept trials' held-out losses, and the winner goes on bitwise as a run of its rule with the step choice."""
    X, y = linear_classes(n=2000, k=10)
    probe = fit_in_memory(X, y, TrainConfig(**BASE, step_choice="held-out"), chunk_rows=512)  # auto: probe
    assert "hidden_pinned" in probe.history[0]
    winner = "pinned" if probe.history[0]["hidden_pinned"] else "readout"
    alone = fit_in_memory(X, y, TrainConfig(**BASE, hidden_alpha=winner, step_choice="held-out"), chunk_rows=512)
    assert probe.history[0]["step_length"] == alone.history[0]["step_length"] == 2.0
    for W, W_ref in zip(probe.loop_state.weights, alone.loop_state.weights, strict=True):
        np.testing.assert_array_equal(W, W_ref)
    drop = ("seconds", "hidden_pinned", "race_validation_loss", "loss")  # iteration 1's loss: pass A's (probe2_s13.md)
    assert [{k: v for k, v in h.items() if k not in drop} for h in probe.history] == \
        [{k: v for k, v in h.items() if k not in drop} for h in alone.history]


def test_race_candidates_each_choose_at_iteration_1_and_both_choices_are_reported():
    """--hidden-alpha race: both candidates take iteration 1 with the choice, as their own runs with the step choice
    do; the winner then goes on as its own run. Iteration 1 reports readout's metrics while the race runs, so pinned's
    choice is ``race_step_length`` and the line names both: here readout keeps t = 1 (its t = 2 fails the LM test),
    pinned keeps t = 2, and pinned wins (review1_s15.md F1: the history said t = 1 for the model that went on)."""
    from tests.conftest import make_data

    X, y = make_data(n=3000, n_classes=3, seed=2)
    settings = {**BASE, "iterations": 3, "step_choice": "held-out"}
    lines = []
    race = fit_in_memory(X, y, TrainConfig(**settings, hidden_alpha="race"), chunk_rows=512, report=lines.append)
    alone = {ha: fit_in_memory(X, y, TrainConfig(**settings, hidden_alpha=ha), chunk_rows=512) for ha in ("readout", "pinned")}
    first, mine = race.history[0], {ha: run.history[0] for ha, run in alone.items()}
    assert first["step_length"] == mine["readout"]["step_length"] == 1.0
    assert first["race_step_length"] == mine["pinned"]["step_length"] == 2.0
    for t in STEP_LENGTHS["held-out"]:
        assert first[f"race_step_validation_loss_{t:g}"] == mine["pinned"][f"step_validation_loss_{t:g}"]
    assert first["race_validation_accuracy"] == mine["pinned"]["validation_accuracy"]
    assert all("step_length" not in h and "race_step_length" not in h for h in race.history[1:])
    assert race.history[-1]["hidden_pinned"] == 1.0  # pinned went on: its step length was t = 2
    assert float(race.loop_state.carry["step_length"]) == 2.0  # the carry is the winner's
    for W, W_ref in zip(race.loop_state.weights, alone["pinned"].loop_state.weights, strict=True):
        np.testing.assert_array_equal(W, W_ref)
    r, p = mine["readout"], mine["pinned"]
    assert [line for line in lines if line.startswith("step length")] == [
        f"step length (readout): t = 1 at iteration 1 (held-out loss t = 1: {r['step_validation_loss_1']:.4g}, "
        f"t = 2: {r['step_validation_loss_2']:.4g}; t = 2 failed the LM test); pinned: t = 2 (held-out loss "
        f"t = 1: {p['step_validation_loss_1']:.4g}, t = 2: {p['step_validation_loss_2']:.4g})"]


@pytest.mark.parametrize("case", ["nothing held out", "no hidden layer"])
def test_nothing_held_out_or_no_hidden_layer_is_the_stock_run(case):
    """Both act as none (documented: README, --help)."""
    X, y = linear_classes()
    cfg = {**BASE, "hidden_alpha": "readout",
           **({"validation_fraction": 0.0} if case == "nothing held out" else {"hidden": ()})}
    stock = fit_in_memory(X, y, TrainConfig(**cfg), chunk_rows=512)
    held = fit_in_memory(X, y, TrainConfig(**cfg, step_choice="held-out"), chunk_rows=512)
    assert all("step_length" not in h for h in held.history)
    for W, W_ref in zip(held.loop_state.weights, stock.loop_state.weights, strict=True):
        np.testing.assert_array_equal(W, W_ref)


TIMINGS = ("seconds", "rows_per_second", "read_mb_per_second")
PIPELINE = {**BASE, "iterations": 3}


def _untimed(history):
    return [{k: v for k, v in h.items() if k not in TIMINGS} for h in history]


def _same_run(result, reference):
    """Assert ``result`` is the pipeline run ``reference`` bit for bit: weights and history (without timings)."""
    for W, W_ref in zip(result.network.weights, reference.network.weights, strict=True):
        np.testing.assert_array_equal(W, W_ref)
    assert _untimed(result.history) == _untimed(reference.history)


@pytest.fixture(scope="module")
def pipeline_runs(client, tmp_path_factory):
    """Ten linear classes (held-out keeps t = 2 at iteration 1) written once, and the uninterrupted pipeline runs to
    iteration 3 with and without the choice (``full``); ``run(config, iterations)``: a run to that commit in a new
    store (its store), ``resume(store)``: its resume to 3 (the session client: no subprocess)."""
    from pipeline.training import train
    from storage.data import write_data
    from tests.conftest import quiet

    d = tmp_path_factory.mktemp("step-choice")
    X, y = linear_classes(n=3000, k=10)
    write_data(d / "d.zarr", X, y, chunk_rows=512)
    count = iter(range(1000))

    def run(config, iterations):
        store = d / f"r{next(count)}.zarr"
        train(client, store=store, data=d / "d.zarr", config=dataclasses.replace(config, iterations=iterations),
              chunk_rows=512, report=quiet)
        return store

    def resume(store):
        return train(client, store=store, resume=True, iterations=3, report=quiet)

    configs = {choice: TrainConfig(**PIPELINE, step_choice=choice) for choice in ("held-out", "held-out-1.5", "none")}
    full = {choice: train(client, store=d / f"full-{choice}.zarr", data=d / "d.zarr", config=cfg, chunk_rows=512,
                          report=quiet) for choice, cfg in configs.items()}
    return {"X": X, "y": y, "configs": configs, "held": configs["held-out"], "none": configs["none"], "full": full,
            "run": run, "resume": resume, "client": client}


@pytest.mark.parametrize("choice", ["held-out", "held-out-1.5"])
def test_pipeline_matches_reference(pipeline_runs, choice):
    """The pipeline (process workers) makes the in-memory reference's choice, and the weights agree."""
    held, t = pipeline_runs["full"][choice], STEP_LENGTHS[choice][1]
    ref = fit_in_memory(pipeline_runs["X"], pipeline_runs["y"], pipeline_runs["configs"][choice], chunk_rows=512)
    assert held.history[0]["step_length"] == ref.history[0]["step_length"] == t
    assert all("step_length" not in h for h in held.history[1:])
    for s in STEP_LENGTHS[choice]:
        assert held.history[0][f"step_validation_loss_{s:g}"] == pytest.approx(
            ref.history[0][f"step_validation_loss_{s:g}"], rel=1e-5)
    assert [h["accepted"] for h in held.history] == [h["accepted"] for h in ref.history]
    assert [h.get("hidden_pinned") for h in held.history] == [h.get("hidden_pinned") for h in ref.history]
    for W, W_ref in zip(held.network.weights, ref.network.weights, strict=True):
        np.testing.assert_allclose(W, W_ref, rtol=1e-4, atol=1e-5)
    assert held.store.attrs["config"]["step_choice"] == choice


@pytest.mark.parametrize("choice, after", [("held-out", 0), ("held-out", 1), ("held-out-1.5", 1)])
def test_pipeline_resumes_before_and_after_the_choice_bitwise(pipeline_runs, choice, after):
    """A run stopped at commit ``after`` and resumed (no flag given: the stored setting) is the uninterrupted run bit
    for bit: from commit 0 it chooses again (the state a kill -9 inside iteration 1 leaves: Gauss-Newton keeps no
    per-sample state, so checkpoint 0 is all there is; the subprocess kill tests are test_resume.py's, slow), from
    commit 1 the choice is in the carry and it goes on."""
    from storage.runstore import RunStore

    store = pipeline_runs["run"](pipeline_runs["configs"][choice], after)
    carry = RunStore.open(store).load_checkpoint().carry
    assert ("step_length" in carry) == (after == 1)
    if after == 1:
        assert float(carry["step_length"]) == STEP_LENGTHS[choice][1] and len(carry["step_held_losses"]) == 2
    resumed = pipeline_runs["resume"](store)
    assert resumed.solver.config.step_choice == choice  # the stored setting, no flag given
    _same_run(resumed, pipeline_runs["full"][choice])


def test_an_old_store_resumes_under_none_bitwise(pipeline_runs, monkeypatch):
    """A run store whose config predates step_choice resumes (no flag given) as the run without the choice, on data
    where held-out would keep t = 2 (iteration 1 runs after the resume), whatever the field's default is: the
    resume takes STORED_BEFORE's rule (here with the default set to held-out, as after a change of the default)."""
    from tests.conftest import resume_as_older_store

    store = pipeline_runs["run"](pipeline_runs["none"], 0)
    resumed = resume_as_older_store(pipeline_runs["client"], store, "step_choice", 3, default="held-out",
                                    monkeypatch=monkeypatch)
    assert resumed.solver.config.step_choice == "none"
    assert all("step_length" not in h for h in resumed.history)
    _same_run(resumed, pipeline_runs["full"]["none"])
