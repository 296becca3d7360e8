"""Probabilities of a classifier's outputs and the out-of-core sums of log-loss and ROC AUC.

``probabilities``: a network fitted to 0/1 targets has outputs that
estimate class probabilities (one fitted by cross-entropy: their softmax or
sigmoid); they are clipped to ``[ε, 1 − ε]`` and, for
more than two classes, renormalised to sum to 1. Per chunk,
:func:`classification_sums` returns ``[n, correct, Σ −log p_y, hist₁, hist₀]``
(the histograms, two classes only, count positives and negatives in
``AUC_BINS`` bins of p₁); the sums add over chunks, so log-loss and AUC are
computed out of core like accuracy. AUC from the histograms counts a
positive–negative pair in the same bin as ½ (exact up to pairs whose p₁
differ by less than 1/``AUC_BINS``).
"""
from __future__ import annotations

import numpy as np

EPS = 1e-3         # probabilities are clipped to [EPS, 1 − EPS] (log-loss stays finite)
AUC_BINS = 1 << 14


def probabilities(z, link: str = "identity") -> np.ndarray:
    """Return class probabilities (n, K) from the output layer ``z`` (one unit: P(class 1) = z).

    ``link="logistic"``: ``z`` was fitted by cross-entropy, ``p`` is its softmax
    (one unit: σ(z − ½)) (:func:`solvers.cross_entropy.probabilities`), clipped alike.
    """
    z = np.asarray(z, np.float64)
    if link == "logistic":
        from solvers.cross_entropy import probabilities as softmax

        z = softmax(z)
    if z.shape[1] == 1:
        p1 = np.clip(z[:, 0], EPS, 1 - EPS)
        return np.column_stack([1 - p1, p1])
    p = np.clip(z, EPS, None)
    return p / p.sum(axis=1, keepdims=True)


def sums_size(n_classes: int) -> int:
    """Return the length of :func:`classification_sums`' vector."""
    return 3 + (2 * AUC_BINS if n_classes == 2 else 0)


def classification_sums(proba, y_index, predicted=None) -> np.ndarray:
    """Return ``[n, correct, Σ −log p_y, hist₁ (AUC_BINS), hist₀ (AUC_BINS)]``; a label index < 0 is unknown (p_y = ε).

    ``predicted``: the predicted class indices (default: the most probable class).
    """
    proba = np.asarray(proba, np.float64)
    y_index = np.asarray(y_index)
    n, k = proba.shape
    known = y_index >= 0
    p_y = np.full(n, EPS)
    p_y[known] = proba[np.flatnonzero(known), y_index[known]]
    predicted = np.argmax(proba, axis=1) if predicted is None else np.asarray(predicted)
    correct = np.sum(known & (predicted == y_index))
    out = [np.array([n, correct, float(-np.sum(np.log(np.maximum(p_y, EPS * EPS))))])]
    if k == 2:
        bins = np.minimum((proba[:, 1] * AUC_BINS).astype(np.int64), AUC_BINS - 1)
        out += [np.bincount(bins[y_index == 1], minlength=AUC_BINS).astype(np.float64),
                np.bincount(bins[y_index == 0], minlength=AUC_BINS).astype(np.float64)]
    return np.concatenate(out)


def metrics_from_sums(sums) -> dict:
    """Return accuracy, log_loss (and roc_auc for two classes) from summed :func:`classification_sums`."""
    sums = np.asarray(sums, np.float64)
    n, correct, nll = sums[:3]
    out = {"accuracy": correct / n, "log_loss": nll / n, "n_samples": int(n), "n_correct": int(correct)}
    if sums.size == sums_size(2):
        pos, neg = sums[3:3 + AUC_BINS], sums[3 + AUC_BINS:]
        if pos.sum() > 0 and neg.sum() > 0:
            below = np.cumsum(neg) - neg  # negatives in lower bins
            out["roc_auc"] = float(np.sum(pos * (below + 0.5 * neg)) / (pos.sum() * neg.sum()))
    return out
