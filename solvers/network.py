"""A trained feed-forward network: forward pass and prediction (NumPy, chunk-wise)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from solvers.activations import ACTIVATIONS
from solvers.tiling import row_tiles, tile_rows
from solvers.linalg import affine
from solvers.losses import predict_classes
from solvers.tasks import score_from_sums, score_sums


def standardize(x, mean, scale, dtype=np.float32):
    """Return ``(x − mean) / scale`` in ``dtype`` (the inputs a_0 the network sees)."""
    x = np.asarray(x, dtype=dtype)
    return (x - mean.astype(dtype)) / scale.astype(dtype)


def forward(a0, weights, activation: str, layers=None):
    """Return the output pre-activation z_L = W_L h(… h(W_1 a_0)) of the network (``layers``: dense if None).

    A layer with a pooling (``layer.post``) passes on ``pool(h(z_l))``. An output layer with
    ``n_{L−1} + d + 1`` columns has the skip path of :mod:`solvers.readout`: ``z_L = W_L [a_{L−1}; a_0]``.
    """
    h = ACTIVATIONS[activation].h
    maps = layers or [None] * len(weights)
    a = a0
    for W, layer in zip(weights[:-1], maps):
        a = h(affine(a, W) if layer is None else layer.apply(a, W))
        if getattr(layer, "post", None) is not None:
            a = layer.post.apply(a)
    if len(weights) > 1 and np.shape(weights[-1])[1] == a.shape[1] + a0.shape[1] + 1:  # the skip path
        return affine(np.concatenate([a, a0], axis=1), weights[-1])
    return affine(a, weights[-1]) if maps[-1] is None else maps[-1].apply(a, weights[-1])


@dataclass
class Network:
    """Weights W_1..W_L (bias in the last column), input scaling, and class labels or output scaling.

    ``layers`` are the layers' linear maps (:mod:`solvers.layers`; None:
    all dense). A classifier has ``classes``; a regressor has ``classes=None`` and the
    target scaling ``y_mean``, ``y_scale`` (one entry per output) that its
    outputs are mapped back with.
    """

    weights: list
    activation: str
    classes: np.ndarray | None
    x_mean: np.ndarray
    x_scale: np.ndarray
    dtype: type = np.float32
    y_mean: np.ndarray | None = None
    y_scale: np.ndarray | None = None
    layers: list | None = None
    link: str = "identity"  # logistic: the outputs are cross-entropy logits (TrainConfig.output_link)

    @property
    def is_regressor(self) -> bool:
        return self.classes is None

    def decision_function(self, X):
        """Return the output layer z_L for raw inputs ``X`` (n, d); a regressor's as z_L · y_scale + y_mean."""
        a0 = standardize(X, self.x_mean, self.x_scale, self.dtype)
        if self.layers is None:
            z = forward(a0, self.weights, self.activation)
        else:  # tiles keep a convolution's im2col patches small
            z = np.concatenate([forward(a0[sl], self.weights, self.activation, self.layers)
                                for sl in list(row_tiles(len(a0), tile_rows(self.layers))) or [slice(0, 0)]])
        if self.is_regressor:
            return z * np.asarray(self.y_scale) + np.asarray(self.y_mean)
        return z

    def predict(self, X):
        """Return the predicted class label (a regressor: the predicted value) of every row of ``X``."""
        if self.is_regressor:
            return self.decision_function(X)[:, 0]
        return np.asarray(self.classes)[predict_classes(self.decision_function(X))]

    def predict_proba(self, X):
        """Return class probabilities (n, n_classes) of the outputs through the network's ``link`` (:mod:`solvers.scores`)."""
        from solvers.scores import probabilities

        return probabilities(self.decision_function(X), self.link)

    def score(self, X, y) -> float:
        """Return the accuracy of :meth:`predict` on ``(X, y)``; a regressor's R² (:func:`solvers.tasks.score_sums`)."""
        if self.is_regressor:
            return score_from_sums(score_sums(self.predict(X), np.asarray(y, np.float64), float(np.asarray(self.y_mean)[0])))
        return score_from_sums(score_sums(self.predict(X), y))
