"""One list of settings: the CLI flags, the estimators' parameters, the resumable set and the report's
settings line all come from TrainConfig's field metadata (solvers/config.py)."""
import re
from pathlib import Path

import pytest

from solvers.config import RESUMABLE, SETTINGS, TrainConfig, config_from_parameters, describe, estimator_parameters, \
    flag

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()

# a value other than the default for every setting, valid together with the others (layers dense:
# --input-skip, True here, refuses convolutional layers)
OTHER = {"hidden": (7, 5), "activation": "sigmoid", "task": "regression", "loss": "squared", "gamma": 2.5,
         "beta": 0.5, "iterations": 3, "warm_start": 1, "init": "gaussian", "seed": 11, "ridge": 0.5, "alpha": 0.125,
         "solver": "admm", "step_size": 0.25, "damping": 2.0, "rho": 1.5, "nu": 50.0, "scaling": "global",
         "validation_fraction": 0.25, "patience": 9, "layers": "dense:4,dense:3", "input_shape": (6, 6, 1),
         "cg_steps": 2, "shards": 3, "consensus": "elastic", "consensus_rho": 0.5, "rho_growth": 1.5,
         "local_epochs": 2, "first_pass_rows": 5000, "averaging": "pass", "batch_size": 64, "learning_rate": 0.01,
         "lr_decay": 0.5, "first_lr_scale": 2.0, "handover_gain": 0.01, "handover_delay": 1,
         "sample_schedule": "full", "sample_start": 1000, "input_skip": True, "readout_refit": False,
         "hidden_alpha": "pinned", "init_scale": 0.5,
         "step_choice": "held-out", "first_damping": "objective"}  # read by gauss-newton only: ignored by admm, as step_size


def test_every_setting_has_another_value_here():
    assert set(OTHER) == {f.name for f in SETTINGS}, "add the new setting to OTHER"


def test_every_setting_is_a_flag_that_parses_to_the_setting():
    from pipeline.train import build_parser

    def text(v):
        return ",".join(map(str, v)) if isinstance(v, tuple) and v and len(v) != 3 else \
            "x".join(map(str, v)) if isinstance(v, tuple) else str(v)

    def args_of(name, v):  # a bool is a switch: --name or --no-name
        if isinstance(v, bool):
            return (flag(name) if v else "--no-" + flag(name)[2:],)
        return flag(name), text(v)

    argv = [a for name, v in OTHER.items() for a in args_of(name, v) if name != "hidden"]
    args = build_parser().parse_args(argv)
    from solvers.config import given_settings

    given = given_settings(args)
    assert TrainConfig(**given) == TrainConfig(**{k: v for k, v in OTHER.items() if k != "hidden"})
    assert build_parser().parse_args(["--hidden", "7,5"]).hidden == (7, 5)
    assert given_settings(build_parser().parse_args([])) == {}  # nothing given: the run's (or default) settings


def test_help_shows_each_default_and_the_resumable_flags():
    from pipeline.train import build_parser

    help_text = " ".join(build_parser().format_help().split())
    help_text = re.sub(r"(--[a-z]+-) ", r"\1", help_text)  # argparse may wrap a flag after its hyphen
    assert "[auto]" in help_text and "[0.1]" in help_text and "[100.0]" in help_text
    resumable = re.search(r"With --resume, the run's own settings are kept; (.*?) may be changed", help_text)
    assert resumable and resumable.group(1).split(", ") == [flag(n) for n in RESUMABLE]
    assert "weight γ of ‖a − h(z)‖² (admm only) [10.0]" in help_text  # which solvers read it


def test_resumable_set_includes_every_solver_step_setting():
    assert {"patience", "step_size", "damping", "rho", "nu", "gamma", "beta", "warm_start", "ridge", "alpha",
            "iterations", "consensus", "consensus_rho", "rho_growth", "local_epochs", "first_pass_rows", "averaging", "batch_size",
            "learning_rate", "lr_decay", "handover_gain"} == set(RESUMABLE)


def test_readme_lists_the_resumable_flags():
    paragraph = README.split("**Resume** may change", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"`(--[a-z-]+)`", paragraph)) - {"--help"} == {flag(n) for n in RESUMABLE}


def test_estimators_take_every_setting_but_the_task():
    from pipeline.estimator import ADMMClassifier, ADMMRegressor

    params = {p: OTHER[name] for p, name, _ in estimator_parameters()}
    assert {name for _, name, _ in estimator_parameters()} == set(OTHER) - {"task"}
    assert set(params) <= set(ADMMClassifier().get_params())
    reg = ADMMRegressor(**params)
    assert reg.train_config() == TrainConfig(**OTHER)
    clf = ADMMClassifier(**{**params, "loss": "hinge"})
    assert clf.train_config() == TrainConfig(**{**OTHER, "task": "classification", "loss": "hinge"})
    for p, _, default in estimator_parameters():  # the defaults stand for TrainConfig's (random_state: drawn)
        assert ADMMClassifier().get_params()[p] == default
    assert ADMMClassifier(random_state=0).train_config() == TrainConfig()


def test_estimator_parameters_are_cast_and_none_means_default():
    config = config_from_parameters({"hidden_layer_sizes": 5, "gamma": 2, "max_iter": 4.0, "layers": None,
                                     "input_shape": None, "cg_steps": None}, task="classification")
    assert config.hidden == (5,) and type(config.gamma) is float and type(config.iterations) is int
    assert config.layers == "" and config.input_shape == () and config.cg_steps is None


def test_stored_config_without_extra_and_old_stores_with_it_still_read():
    d = TrainConfig().to_dict()
    assert "extra" not in d and [f.name for f in SETTINGS] == list(d)
    assert TrainConfig.from_dict({**d, "extra": {}}) == TrainConfig()


def test_unknown_solver_is_one_clear_error():
    from solvers.errors import InputError

    with pytest.raises(InputError, match="solver 'sgd' is not one of"):
        TrainConfig(solver="sgd")


def test_report_settings_line_lists_what_the_solver_reads():
    gn = describe(TrainConfig())
    assert "step size 1.0" in gn and "damping 0.1" in gn and "gamma" not in gn and "rho" not in gn
    admm = describe(TrainConfig(solver="admm"))
    assert "gamma 10.0" in admm and "warm start 5" in admm and "step size" not in admm
    dl = describe(TrainConfig(solver="dladmm"))
    assert "rho 4.0" in dl and "nu 100.0" in dl and "ridge" not in dl


def test_resume_may_change_the_solver_step_settings():
    resumed_config = TrainConfig.resumed
    stored = TrainConfig(solver="dladmm").to_dict()
    config, changed = resumed_config({**stored, "extra": {}}, {"rho": 2.0, "nu": 10.0, "patience": 5})
    assert changed == {"rho", "nu", "patience"} and config.rho == 2.0
    config, changed = resumed_config(stored, {"step_size": 0.1, "damping": 3.0})
    assert changed == {"step_size", "damping"}
