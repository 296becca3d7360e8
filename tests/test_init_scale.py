"""--init-scale (Gauss-Newton, dense layers): the random start of the hidden weights times a factor; 1 is the old start
bit for bit, and run stores written before the setting existed resume under 1."""
import numpy as np
import pytest

from solvers import make_solver
from solvers.config import HANDOVER, STORED_BEFORE, TrainConfig, describe
from solvers.errors import InputError
from solvers.reference import fit_in_memory


def _solver(**settings):
    cfg = TrainConfig(solver="gauss-newton", hidden=(6, 4), **settings)
    return make_solver(cfg, 5, x_mean=np.zeros(5), x_scale=np.ones(5), classes=np.array([0, 1, 2]))


@pytest.mark.parametrize("init", ["forward", "glorot", "he-bias"])
def test_init_scale_multiplies_every_start_and_1_is_the_old_start(init):
    base = _solver(init=init).initial_hidden()
    same = _solver(init=init, init_scale=1.0).initial_hidden()
    half = _solver(init=init, init_scale=0.5).initial_hidden()
    assert len(base) == len(half) == 2
    for W, W1, Wh in zip(base, same, half):
        np.testing.assert_array_equal(W1, W)
        np.testing.assert_array_equal(Wh, 0.5 * W)  # weights and biases (he-bias, glorot: random biases too)


def test_init_scale_changes_the_run_only_through_its_start(digits_0_vs_2):
    X, Xt, y, yt = digits_0_vs_2
    base = dict(solver="gauss-newton", hidden=(16,), iterations=3, seed=1)
    default = fit_in_memory(X, y, TrainConfig(**base), X_test=Xt, y_test=yt)
    one = fit_in_memory(X, y, TrainConfig(**base, init_scale=1.0), X_test=Xt, y_test=yt)
    half = fit_in_memory(X, y, TrainConfig(**base, init_scale=0.5), X_test=Xt, y_test=yt)
    for W, W_ref in zip(default.network.weights, one.network.weights):
        np.testing.assert_array_equal(W, W_ref)
    assert not np.allclose(half.network.weights[0], default.network.weights[0])
    assert half.history[-1]["test_accuracy"] >= 0.9


def test_old_stores_config_resumes_under_init_scale_1():
    stored = TrainConfig(solver="gauss-newton").to_dict()
    del stored["init_scale"]  # written before the setting existed
    config, changed = TrainConfig.resumed(stored, {})
    assert config.init_scale == 1.0 and not changed
    assert STORED_BEFORE["init_scale"] == 1.0  # whatever the field's default becomes
    with pytest.raises(InputError, match="cannot resume with settings that change the stored state.*init_scale"):
        TrainConfig.resumed(stored, {"init_scale": 0.5})


def test_init_scale_is_checked_where_gauss_newton_reads_it():
    assert TrainConfig(init_scale=0.5).solver == "gauss-newton"  # auto: only gauss-newton reads it
    assert "init scale 0.5" in describe(TrainConfig(init_scale=0.5))
    assert "init scale" not in describe(TrainConfig(solver="admm", init_scale=0.5))  # admm ignores it
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(InputError, match="init_scale must be > 0"):
            TrainConfig(init_scale=bad)
    with pytest.raises(InputError, match="init_scale was measured with dense layers"):
        TrainConfig(solver="gauss-newton", init_scale=0.5, layers="conv:4x3x3", input_shape=(8, 8, 1))
    with pytest.raises(InputError, match=f"{HANDOVER} starts Gauss-Newton"):
        TrainConfig(solver=HANDOVER, init_scale=0.5)


@pytest.mark.parametrize("rule", ["pinned", "race", "probe"])
def test_init_scale_with_a_hidden_alpha_rule_other_than_readout_is_refused(rule):
    """Not measured: pinned keeps each hidden unit's norm at init_scale times its start's."""
    for solver in ("gauss-newton", "auto"):
        with pytest.raises(InputError, match=f"init_scale 0.5 with hidden_alpha {rule} was not measured"):
            TrainConfig(solver=solver, init_scale=0.5, hidden_alpha=rule)
    TrainConfig(init_scale=1.0, hidden_alpha=rule)  # the default scale goes
    TrainConfig(init_scale=0.5, hidden_alpha="readout")


def test_auto_pinned_to_gauss_newton_by_init_scale_or_hidden_alpha_says_why():
    """--solver auto with a given --init-scale or --hidden-alpha is gauss-newton; the choice record names the flag
    (the run line shows `solver gauss-newton (auto: …)`); a size-free auto config of the defaults has no such pin."""
    from solvers.config import choice_text

    config, choice = TrainConfig(init_scale=0.5).choose_solver(10**6, 4)
    assert config.solver == "gauss-newton"
    assert choice_text(choice) == " (auto: --init-scale 0.5 given, read by gauss-newton only)"
    config, choice = TrainConfig(hidden_alpha="probe").choose_solver(10**6, 4)
    assert config.solver == "gauss-newton" and "--hidden-alpha probe given" in choice["why"]
    assert TrainConfig(solver="gauss-newton", init_scale=0.5).choose_solver(10**6, 4)[1] is None  # given: no record
    assert TrainConfig().choose_solver(10**6, 4)[1]["solver"] == HANDOVER  # the size rule, unchanged


def test_replace_keeps_the_auto_pin_and_another_solver_clears_it():
    """The pin is a field, so dataclasses.replace() (a run's ``overrides``, ``--iterations``) keeps choose_solver's
    record; replace(solver=...) of another solver, or of settings that no longer pin, gives no record; it is not a
    setting (no stored key, no flag) and two configs that differ in it only are equal."""
    from dataclasses import replace

    from solvers.config import SETTINGS

    pinned = TrainConfig(init_scale=0.5)
    assert pinned.auto_pinned and replace(pinned, iterations=3).auto_pinned
    assert replace(pinned, iterations=3).choose_solver(10**6, 4)[1] == pinned.choose_solver(10**6, 4)[1]
    assert pinned.choose_solver(10**6, 4)[1]["why"] == "--init-scale 0.5 given, read by gauss-newton only"
    assert replace(pinned, solver="admm", init_scale=1.0).choose_solver(10**6, 4)[1] is None
    assert not replace(pinned, solver="admm", init_scale=1.0).auto_pinned
    assert replace(pinned, init_scale=1.0).choose_solver(10**6, 4)[1] is None  # nothing left that pins it
    assert replace(pinned, solver="auto", init_scale=1.0).choose_solver(10**6, 4)[0].solver == HANDOVER
    assert pinned == TrainConfig(solver="gauss-newton", init_scale=0.5) and "auto_pinned" not in pinned.to_dict()
    assert "auto_pinned" not in {f.name for f in SETTINGS} and not TrainConfig.from_dict(pinned.to_dict()).auto_pinned


def test_pipeline_records_the_pin_with_overrides_and_resume_keeps_it(tmp_path, client):
    """train(..., iterations=N) replaces the config: the run store still records why auto became gauss-newton (before
    the pin was a field it was dropped there and the run line said nothing), and a resume keeps the record and says it."""
    from pipeline.training import train
    from storage.data import write_data
    from storage.runstore import RunStore
    from tests.conftest import make_data

    X, y = make_data(n=600, d=4)
    data = write_data(tmp_path / "d.zarr", X, y, chunk_rows=200).path
    lines = []
    out = train(client, store=tmp_path / "run.zarr", data=data, config=TrainConfig(hidden=(4,), init_scale=0.5),
                iterations=1, report=lines.append)
    choice = RunStore.open(tmp_path / "run.zarr").attrs["solver_choice"]
    assert out.solver.name == "gauss-newton" and choice["why"] == "--init-scale 0.5 given, read by gauss-newton only"
    assert any("solver gauss-newton (auto: --init-scale 0.5 given" in ln for ln in lines)
    lines = []
    out = train(client, store=tmp_path / "run.zarr", resume=True, iterations=2, report=lines.append)
    run = RunStore.open(tmp_path / "run.zarr")
    assert len(out.history) == 2 and run.attrs["solver_choice"] == choice
    assert run.attrs["config"] == TrainConfig(hidden=(4,), init_scale=0.5, iterations=2).to_dict()
    assert any("solver gauss-newton (auto: --init-scale 0.5 given" in ln for ln in lines)
