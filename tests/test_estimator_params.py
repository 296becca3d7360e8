"""Estimator parameters a scikit-learn user passes with scikit-learn's meaning (newuser_s14.md)."""

import numpy as np
import pytest

from pipeline import ADMMClassifier, ADMMRegressor
from solvers.config import TrainConfig
from solvers.errors import InputError


@pytest.mark.parametrize("cls", [ADMMClassifier, ADMMRegressor])
@pytest.mark.parametrize("value", [True, np.True_])
def test_warm_start_true_is_refused_before_fitting(tmp_path, cls, value):
    store = tmp_path / "run.zarr"
    X = np.random.default_rng(0).normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(int)
    with pytest.raises(InputError, match=r"warm_start=True is a bool, but here warm_start is the number of "
                                         r"first iterations without λ updates") as err:
        cls(warm_start=value, max_iter=1, store=store).fit(X, y)
    assert "\n" not in str(err.value)
    assert not store.exists() and not (tmp_path / "run-data.zarr").exists()


@pytest.mark.parametrize("value", [False, np.False_])
def test_warm_start_false_is_the_default(value):
    """scikit-learn's checks set warm_start=False (a fresh fit): the default count, not 0 iterations."""
    default = TrainConfig().warm_start
    assert default != 0
    assert ADMMClassifier(warm_start=value).train_config().warm_start == default


def test_integer_warm_start_still_configures():
    assert ADMMClassifier(warm_start=3).train_config().warm_start == 3
