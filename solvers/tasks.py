"""What the output layer is trained to give: class labels or real values (``--task``).

A task turns the labels a chunk kernel reads into the output targets ``T``
(n × n_outputs) that the loss compares ``z_L`` with, and scores ``z_L`` with
sums that add over chunks; the client turns the summed parts into the score
reported every iteration (``train_<score>``, ``test_<score>``, …).

==================  ===========================================  ===============
task                targets T, y as the kernels read it          score
==================  ===========================================  ===============
``classification``  0/1: one unit for two classes, else one per  ``accuracy``
                    class (one-vs-all); y is the class index
                    (:func:`~solvers.losses.encode_labels`)
``regression``      ``(y − ȳ) / s_y``, one unit; y is the real   ``r2`` (R²)
                    value, ȳ and s_y come from the statistics
                    pass, and the network undoes the scaling
==================  ===========================================  ===============

Every solver takes the task from ``config.task``; regression always fits the
squared loss.
"""
from __future__ import annotations

import numpy as np

from solvers.errors import InputError
from solvers.losses import n_outputs, predict_classes, targets


def r2_from_sums(n, sse, total, total_sq) -> float:
    """Return R² = 1 − Σ(y − ŷ)² / Σ(y − ȳ)² from n, Σ(y − ŷ)², Σy and Σy².

    ``y`` may be shifted by any constant (it cancels; shift by a typical value
    to keep Σy² − (Σy)²/n accurate). A constant ``y`` gives 1.0 for an exact
    fit and 0.0 otherwise, as scikit-learn's ``r2_score``.
    """
    n, sse, total, total_sq = float(n), float(sse), float(total), float(total_sq)
    ss_tot = total_sq - total * total / n
    if ss_tot <= 1e-12 * max(total_sq, np.finfo(float).tiny):
        return 1.0 if sse == 0 else 0.0
    return 1.0 - sse / ss_tot


def score_sums(pred, y, y_shift=None) -> np.ndarray:
    """Return a chunk's score sums, which add over chunks: [n, Σ[ŷ = y]], or with ``y_shift`` c [n, Σ(y − ŷ)², Σ(y − c), Σ(y − c)²].

    The one computation of every score: the kernels' training score
    (:meth:`Classification.score_parts`, :meth:`Regression.score_parts`),
    :meth:`solvers.network.Network.score`, the pipeline's held-out and test
    scores and the estimators' blockwise ``score``. ``y_shift`` (regression)
    is any typical value of y (see :func:`r2_from_sums`).
    """
    y = np.asarray(y)
    if y_shift is None:
        return np.array([y.size, np.sum(np.asarray(pred) == y)], np.float64)
    d, e = y - y_shift, y - pred
    return np.array([y.size, np.sum(e * e), np.sum(d), np.sum(d * d)], np.float64)


def score_from_sums(sums) -> float:
    """Return the score of summed :func:`score_sums`: the accuracy Σ[ŷ = y] / n, or R² (four sums, :func:`r2_from_sums`)."""
    return float(sums[1] / sums[0]) if len(sums) == 2 else r2_from_sums(*sums)


class Classification:
    """Class labels: 0/1 targets, hinge or squared loss, accuracy."""

    name = "classification"
    score_name = "accuracy"
    score_shapes = {"correct": ()}
    y_mean = y_scale = None

    def __init__(self, classes):
        self.classes = np.asarray(classes)
        if len(self.classes) < 2:
            raise InputError(f"training needs at least two classes, the labels hold {self.classes.tolist()}")
        self.n_classes = len(self.classes)
        self.n_outputs = n_outputs(self.n_classes)

    def loss(self, config) -> str:
        """Return the loss name: ``auto`` is hinge for two classes, one-vs-all hinge for more."""
        return config.resolved_loss(self.n_classes)

    def targets(self, y_idx, dtype=np.float32):
        """Return the 0/1 targets (n, n_outputs) of class indices."""
        return targets(y_idx, self.n_classes, dtype)

    def score_parts(self, z, y_idx) -> dict:
        """Return the chunk's number of correct predictions of the output layer ``z``."""
        return {"correct": int(score_sums(predict_classes(z), y_idx)[1])}

    def score(self, sums: dict) -> float:
        """Return the accuracy from summed :meth:`score_parts` (and ``n``)."""
        return score_from_sums([sums["n"], sums["correct"]])


class Regression:
    """Real values: standardised targets, squared loss, R²."""

    name = "regression"
    score_name = "r2"
    score_shapes = {"sse": (), "t_sum": (), "t_sq": ()}
    classes = n_classes = None

    def __init__(self, y_mean, y_scale):
        self.y_mean = np.atleast_1d(np.asarray(y_mean, np.float64))
        self.y_scale = np.atleast_1d(np.asarray(y_scale, np.float64))
        if self.y_mean.shape != (1,) or self.y_scale.shape != (1,):
            raise InputError(f"regression fits one target column, got y mean of shape {self.y_mean.shape}")
        self.n_outputs = 1

    def loss(self, config) -> str:
        """Return ``"squared"``, the loss of every regression (the config refuses others)."""
        return "squared"

    def targets(self, y, dtype=np.float32):
        """Return the standardised targets ``(y − ȳ) / s_y`` as a column (n, 1)."""
        t = (np.asarray(y, np.float64)[:, None] - self.y_mean) / self.y_scale
        return t.astype(dtype, copy=False)

    def score_parts(self, z, y) -> dict:
        """Return Σ(t − z)², Σt, Σt² of the chunk (standardised units, so R² is unchanged)."""
        _, sse, t_sum, t_sq = score_sums(np.asarray(z)[:, 0], self.targets(y, np.float64)[:, 0], 0.0)
        return {"sse": float(sse), "t_sum": float(t_sum), "t_sq": float(t_sq)}

    def score(self, sums: dict) -> float:
        """Return R² from summed :meth:`score_parts` (and ``n``)."""
        return score_from_sums([sums["n"], sums["sse"], sums["t_sum"], sums["t_sq"]])


TASKS = {"classification": Classification, "regression": Regression}


def make_task(name: str, classes=None, y_mean=None, y_scale=None):
    """Return the task ``name``: classification over ``classes``, or regression with ȳ, s_y."""
    if name == "regression":
        return Regression(0.0 if y_mean is None else y_mean, 1.0 if y_scale is None else y_scale)
    return Classification(classes)
