"""Accuracy floors on real data, for the default solver and for ADMM and dlADMM: each method is implemented right.

Every solver runs with today's defaults. ADMM and dlADMM have raised floors since their output layer is
refitted with α chosen on held-out chunks and their first layer starts from the data (measured with these
defaults: breast cancer 0.959 for both, digits 0.980 for both).
"""
import numpy as np
import pytest

from solvers.config import TrainConfig
from solvers.reference import fit_in_memory

SOLVERS = pytest.mark.parametrize("solver", ["gauss-newton", "admm", "dladmm"])
ADMM_SOLVERS = ("admm", "dladmm")


def settings(solver, **kwargs) -> TrainConfig:
    return TrainConfig(solver=solver, **kwargs)


@SOLVERS
def test_digits_0_vs_2(digits_0_vs_2, solver):
    Xtr, Xte, ytr, yte = digits_0_vs_2
    r = fit_in_memory(Xtr, ytr, settings(solver, hidden=(100,)))
    assert r.network.score(Xte, yte) >= 0.99


@SOLVERS
def test_breast_cancer(solver):
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0)
    r = fit_in_memory(Xtr, ytr, settings(solver, hidden=(100,)))
    assert r.network.score(Xte, yte) >= (0.95 if solver in ADMM_SOLVERS else 0.93)


@SOLVERS
def test_digits_10_class(solver):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0)
    r = fit_in_memory(Xtr, ytr, settings(solver, hidden=(300,)))
    assert r.network.score(Xte, yte) >= (0.96 if solver in ADMM_SOLVERS else 0.85)


@pytest.mark.slow
@SOLVERS
def test_mnist_odd_vs_even(mnist, solver):
    X, y = mnist
    X = X.astype(np.float32) / 256
    r = fit_in_memory(X[:20000], y[:20000] % 2, settings(solver, hidden=(300,)))
    assert r.network.score(X[60000:], y[60000:] % 2) >= 0.91
