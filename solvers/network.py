"""A trained feed-forward network: forward pass and prediction (NumPy, chunk-wise)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from solvers.activations import ACTIVATIONS
from solvers.linalg import affine
from solvers.losses import predict_classes


def standardize(x, mean, scale, dtype=np.float32):
    """Return ``(x − mean) / scale`` in ``dtype`` (the inputs a_0 the network sees)."""
    x = np.asarray(x, dtype=dtype)
    return (x - mean.astype(dtype)) / scale.astype(dtype)


def forward(a0, weights, activation: str):
    """Return the output pre-activation z_L = W_L h(… h(W_1 a_0)) of the network."""
    h = ACTIVATIONS[activation].h
    a = a0
    for W in weights[:-1]:
        a = h(affine(a, W))
    return affine(a, weights[-1])


@dataclass
class Network:
    """Weights W_1..W_L (bias in the last column), input scaling and class labels."""

    weights: list
    activation: str
    classes: np.ndarray
    x_mean: np.ndarray
    x_scale: np.ndarray
    dtype: type = np.float32

    def decision_function(self, X):
        """Return the output layer z_L for raw inputs ``X`` (n, d)."""
        return forward(standardize(X, self.x_mean, self.x_scale, self.dtype), self.weights, self.activation)

    def predict(self, X):
        """Return the predicted class label of every row of ``X``."""
        return np.asarray(self.classes)[predict_classes(self.decision_function(X))]

    def score(self, X, y) -> float:
        """Return the accuracy of :meth:`predict` on ``(X, y)``."""
        return float(np.mean(self.predict(X) == np.asarray(y)))
