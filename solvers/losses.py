"""Output losses ``ℓ`` and their entrywise z_L-updates (Taylor et al. 2016, Alg. 1).

Each loss is gathered in :data:`LOSSES` with:

- ``value(z, t)``: the loss entry by entry, for targets ``t`` in {0, 1}
  (hinge losses) or real targets (squared loss);
- ``z_update(t, lam, m, beta)``: the global minimiser, entry by entry, of
  ``ℓ(z, t) + λ z + β (z − m)²`` with ``m = W_L a_{L−1}`` (the z_L step);
- ``predict(z)``: class indices from the output layer.

Binary tasks use one output unit (class 1 when ``z > 0.5``); K-class tasks
use K units, one-vs-all, and predict ``argmax z``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from solvers.errors import InputError


def hinge(z, t):
    """Return the paper's hinge: max(1 − z, 0) where t = 1, max(z, 0) where t = 0."""
    return np.where(t > 0.5, np.maximum(1 - z, 0), np.maximum(z, 0))


def hinge_z_update(t, lam, m, beta):
    """Return argmin_z hinge(z, t) + λz + β(z − m)² entrywise.

    With b = m − λ/(2β): for t = 1, b if b > 1, else b + 1/(2β) if that is
    below 1, else 1; for t = 0, b if b < 0, else b − 1/(2β) if that is above
    0, else 0 (each piece is a convex quadratic; the kink is the fallback).
    """
    dt = np.result_type(m, lam)
    beta = dt.type(beta)
    b = m - lam / (2 * beta)
    step = 1 / (2 * beta)
    one = dt.type(1)
    z_pos = np.where(b > 1, b, np.minimum(b + step, one))
    z_neg = np.where(b < 0, b, np.maximum(b - step, 0))
    return np.where(t > 0.5, z_pos, z_neg).astype(dt, copy=False)


def squared(z, t):
    """Return the squared error (z − t)²."""
    return (z - t) ** 2


def squared_z_update(t, lam, m, beta):
    """Return argmin_z (z − t)² + λz + β(z − m)² = (2t − λ + 2βm) / (2 + 2β) entrywise."""
    dt = np.result_type(m, lam)
    beta = dt.type(beta)
    return ((2 * t - lam + 2 * beta * m) / (2 + 2 * beta)).astype(dt, copy=False)


def predict_classes(z):
    """Return class indices: ``z > 0.5`` for one output unit, else ``argmax`` over units."""
    if z.shape[-1] == 1:
        return (z[..., 0] > 0.5).astype(np.int64)
    return np.argmax(z, axis=-1)


def n_outputs(n_classes: int) -> int:
    """Return the output width: one unit for two classes, one per class otherwise."""
    return 1 if n_classes == 2 else n_classes


def targets(y_index, n_classes: int, dtype=np.float32):
    """Return the 0/1 target matrix (n, n_outputs) for class indices ``y_index``."""
    y_index = np.asarray(y_index)
    if n_classes == 2:
        return y_index.astype(dtype)[:, None]
    t = np.zeros((y_index.shape[0], n_classes), dtype=dtype)
    t[np.arange(y_index.shape[0]), y_index] = 1
    return t


def encode_labels(y, classes):
    """Return the index of each label of ``y`` in the sorted array ``classes``.

    Raises :class:`InputError` naming the first label that is not a class.
    """
    classes = np.asarray(classes)
    idx = np.searchsorted(classes, y)
    idx_clipped = np.minimum(idx, len(classes) - 1)
    bad = classes[idx_clipped] != y
    if np.any(bad):
        first = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"label {np.asarray(y)[first].item()!r} (sample {first} of this block) is not one of the classes "
            f"{classes.tolist()} seen when training started; check the data's labels"
        )
    return idx_clipped


@dataclass(frozen=True)
class Loss:
    """An output loss ℓ and the entrywise solver of the z_L-subproblem."""

    name: str
    value: Callable
    z_update: Callable


LOSSES: dict[str, Loss] = {
    # "hinge" is the paper's loss; with K > 2 classes it is applied one-vs-all
    # to K output units, so both names select the same entrywise update.
    "hinge": Loss("hinge", hinge, hinge_z_update),
    "ovr-hinge": Loss("ovr-hinge", hinge, hinge_z_update),
    "squared": Loss("squared", squared, squared_z_update),
}
