"""Probabilities and the out-of-core log-loss and ROC AUC sums against scikit-learn on the same predictions."""
import numpy as np
import pytest

from solvers.scores import AUC_BINS, classification_sums, metrics_from_sums, probabilities


def test_probabilities_are_rows_summing_to_one_in_class_order():
    rng = np.random.default_rng(0)
    for k in (1, 4):
        p = probabilities(rng.normal(0.5, 0.7, size=(200, k)))
        assert p.shape == (200, max(k, 2)) and np.all(p > 0)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    z = np.array([[0.2], [0.9]])
    np.testing.assert_allclose(probabilities(z)[:, 1], [0.2, 0.9])  # one unit: P(class 1) = z


@pytest.mark.parametrize("k", [2, 5])
def test_chunked_sums_give_scikit_learns_metrics(k):
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    rng = np.random.default_rng(k)
    n = 3000
    y = rng.integers(0, k, n)
    z = np.eye(k)[y] * 0.6 + rng.normal(0.2, 0.35, size=(n, k))
    z = z[:, 1:] if k == 2 else z
    proba = probabilities(z)
    sums = sum(classification_sums(proba[a:a + 700], y[a:a + 700]) for a in range(0, n, 700))
    m = metrics_from_sums(sums)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, proba.argmax(axis=1)))
    assert m["log_loss"] == pytest.approx(log_loss(y, proba, labels=list(range(k))), rel=1e-9)
    if k == 2:
        assert m["roc_auc"] == pytest.approx(roc_auc_score(y, proba[:, 1]), abs=2.0 / AUC_BINS)
    else:
        assert "roc_auc" not in m


def test_network_and_estimator_predict_proba(digits_0_vs_2):
    from sklearn.metrics import log_loss

    from solvers.config import TrainConfig
    from solvers.reference import fit_in_memory

    X, Xt, y, yt = digits_0_vs_2
    net = fit_in_memory(X, y, TrainConfig(hidden=(16,), iterations=3)).network
    p = net.predict_proba(Xt)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert np.all(net.classes[p.argmax(axis=1)] == net.predict(Xt))
    assert log_loss(yt, p, labels=net.classes) < 0.3
