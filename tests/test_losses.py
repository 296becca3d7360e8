"""Each loss's z_L-update is the global minimiser of ℓ(z, t) + λz + β(z − m)²."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from solvers.errors import InputError
from solvers.losses import LOSSES, encode_labels, n_outputs, predict_classes, targets
from tests.conftest import brute_force_min

finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize("name", sorted(LOSSES))
@settings(max_examples=80, deadline=None)
@given(t=st.sampled_from([0.0, 1.0]), lam=finite, m=finite, beta=st.floats(1e-2, 1e2))
def test_output_update_is_global_minimiser(name, t, lam, m, beta):
    loss = LOSSES[name]
    z = loss.z_update(np.array([t]), np.array([lam]), np.array([m]), beta)[0]

    def f(v):
        return loss.value(v, t) + lam * v + beta * (v - m) ** 2

    best = brute_force_min(f, lo=-200, hi=200, n=2_000_001)
    assert float(f(np.array([z]))[0]) <= best + 1e-7 * max(1, abs(best)) + 1e-8 * beta


def test_hinge_matches_design_note():
    # y = 1, b = m − λ/2β > 1 → z = b; y = 0, b < 0 → z = b
    z = LOSSES["hinge"].z_update(np.array([1.0, 0.0]), np.zeros(2), np.array([3.0, -2.0]), 1.0)
    np.testing.assert_array_equal(z, [3.0, -2.0])


def test_squared_closed_form():
    t, lam, m, beta = 1.0, 0.3, -0.5, 2.0
    z = LOSSES["squared"].z_update(np.array([t]), np.array([lam]), np.array([m]), beta)[0]
    assert z == pytest.approx((2 * t - lam + 2 * beta * m) / (2 + 2 * beta))


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved(name, dtype):
    m = np.linspace(-2, 2, 12, dtype=dtype).reshape(4, 3)
    lam = np.zeros_like(m)
    t = (m > 0).astype(dtype)
    assert LOSSES[name].z_update(t, lam, m, 0.5).dtype == dtype


def test_targets_and_prediction_binary_and_multiclass():
    assert n_outputs(2) == 1 and n_outputs(5) == 5
    np.testing.assert_array_equal(targets(np.array([0, 1, 1]), 2), [[0], [1], [1]])
    t = targets(np.array([2, 0]), 3)
    np.testing.assert_array_equal(t, [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(predict_classes(np.array([[0.2], [0.7]])), [0, 1])
    np.testing.assert_array_equal(predict_classes(t), [2, 0])


def test_encode_labels_rejects_unknown_label():
    classes = np.array([0.0, 2.0])
    np.testing.assert_array_equal(encode_labels(np.array([2.0, 0.0]), classes), [1, 0])
    with pytest.raises(InputError, match="label 1.0"):
        encode_labels(np.array([0.0, 1.0]), classes)
    with pytest.raises(InputError, match="label 7.0"):
        encode_labels(np.array([7.0]), classes)
