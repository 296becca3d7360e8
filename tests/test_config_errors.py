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
