"""solvers/network.py directly: the trained model's outputs, labels and scores from its weights and scaling."""
import numpy as np
import pytest

from solvers.network import Network


def _dense(seed=0, d=3, hidden=4, out=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(hidden, d + 1)), rng.normal(size=(out, hidden + 1))]


def test_decision_function_is_the_forward_pass_of_standardised_inputs():
    W = _dense()
    net = Network(W, "relu", np.array([3, 7]), x_mean=np.array([1.0, 2.0, 3.0]), x_scale=np.array([2.0, 2.0, 1.0]),
                  dtype=np.float64)
    X = np.random.default_rng(1).normal(size=(6, 3))
    a = (X - net.x_mean) / net.x_scale
    h = np.maximum(a @ W[0][:, :-1].T + W[0][:, -1], 0)
    z = h @ W[1][:, :-1].T + W[1][:, -1]
    np.testing.assert_allclose(net.decision_function(X), z, rtol=1e-12)
    labels = net.predict(X)
    np.testing.assert_array_equal(labels, np.where(z[:, 0] > 0.5, 7, 3))  # one output unit: z_L > 0.5 is classes[1]
    assert net.score(X, labels) == 1.0 and net.score(X, 10 - labels) == 0.0


def test_regressor_maps_outputs_back_to_y_units_and_scores_r2():
    W = _dense(out=1)
    net = Network(W, "relu", None, np.zeros(3), np.ones(3), np.float64, y_mean=np.array([10.0]),
                  y_scale=np.array([2.0]))
    X = np.random.default_rng(2).normal(size=(50, 3))
    raw = Network(W, "relu", np.array([0, 1]), np.zeros(3), np.ones(3), np.float64).decision_function(X)[:, 0]
    pred = net.predict(X)
    np.testing.assert_allclose(pred, raw * 2.0 + 10.0, rtol=1e-12)
    assert net.score(X, pred) == pytest.approx(1.0)
    y = pred + np.random.default_rng(3).normal(size=50)
    r2 = 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)
    assert net.score(X, y) == pytest.approx(r2, rel=1e-9)
