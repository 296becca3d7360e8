"""Bad settings and bad in-memory data give one clear InputError."""
import numpy as np
import pytest

from solvers.config import TrainConfig
from solvers.errors import InputError
from solvers.reference import fit_in_memory


@pytest.mark.parametrize("kwargs,match", [
    (dict(gamma=0), "gamma must be a positive"),
    (dict(beta=-1), "beta must be a positive"),
    (dict(gamma=float("nan")), "gamma must be a positive"),
    (dict(hidden=(10, 0)), "hidden widths must be positive"),
    (dict(activation="tanh"), "activation 'tanh' is not one of"),
    (dict(loss="logistic"), "loss 'logistic' is not one of"),
    (dict(init="zeros"), "init 'zeros'"),
    (dict(iterations=-1), "iterations must be"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(InputError, match=match):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("X,y,match", [
    (np.zeros((5, 2)), np.zeros(4), "5 rows but y has 4"),
    (np.zeros((0, 2)), np.zeros(0), "no samples"),
    (np.zeros(5), np.zeros(5), "must be 2-D"),
    (np.array([[0.0, 1.0], [np.nan, 2.0]]), np.array([0, 1]), "row 1 has NaN"),
    (np.zeros((4, 2)), np.zeros(4), "at least two classes"),
])
def test_bad_data(X, y, match):
    with pytest.raises(InputError, match=match):
        fit_in_memory(X, y, TrainConfig(hidden=(3,), iterations=1))


@pytest.mark.parametrize("init,solver", [("data", "auto"), ("data", "gauss-newton"), ("data", "consensus"),
                                         ("gaussian", "auto"), ("gaussian", "consensus,gauss-newton"),
                                         ("gaussian", "gauss-newton")])
def test_admm_inits_refused_by_other_solvers(init, solver):
    """--init data and gaussian start admm (and dladmm: data); the other solvers would ignore them, so they refuse."""
    with pytest.raises(InputError, match=f"init {init} is a start of the admm"):
        TrainConfig(init=init, solver=solver)


def test_admm_still_takes_data_and_gaussian_inits():
    X = np.random.default_rng(0).normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(int)
    for init, solver in (("data", "admm"), ("gaussian", "admm"), ("data", "dladmm")):
        config = TrainConfig(init=init, solver=solver, hidden=(4,), iterations=1)
        assert config.resolved_init() == init
        out = fit_in_memory(X, y, config)
        assert out.solver.name == solver and len(out.history) == 1
