"""Packing of per-chunk sums into one float64 vector, so one tree-reduce sums them all."""
from __future__ import annotations

import math

import numpy as np


class StatsLayout:
    """An ordered set of named shapes laid out in one flat float64 vector.

    A chunk function returns ``layout.pack(parts)``; the pipeline sums the
    vectors over chunks (``.sum(axis=0)``), the client calls ``layout.unpack``.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.shapes = dict(shapes)
        self.offsets = {}
        pos = 0
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            self.offsets[name] = (pos, pos + size)
            pos += size
        self.size = pos

    def pack(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        """Return the flat float64 vector holding ``parts`` (missing names are zeros)."""
        out = np.zeros(self.size)
        for name, value in parts.items():
            lo, hi = self.offsets[name]
            out[lo:hi] = np.ravel(value)
        return out

    def add(self, total: np.ndarray, parts: dict[str, np.ndarray]) -> np.ndarray:
        """Add ``parts`` into the packed sums ``total`` in place and return it: ``total += pack(parts)``, the same bits.

        ``total`` must have started as ``np.zeros(size)`` and been only added into: such a sum is never
        −0.0 (x + y is −0.0 only when both are), so leaving a missing name's entries as they are gives
        the bits pack's +0.0 would. (A NaN stays a NaN; its sign bit, which NumPy's loops choose
        differently for NaN + NaN, is not kept.) Saves pack's fresh vector per tile (Gauss-Newton's
        pass B here: 2.6 MB zeroed, filled and added for every ~500 rows).
        """
        for name, value in parts.items():
            lo, hi = self.offsets[name]
            total[lo:hi] += np.ravel(value)
        return total

    def unpack(self, vector) -> dict[str, np.ndarray]:
        """Return the named arrays (scalars as floats) of a packed vector."""
        vector = np.asarray(vector, np.float64).ravel()
        if vector.size != self.size:
            raise ValueError(f"stats vector has {vector.size} entries, layout expects {self.size}")
        out = {}
        for name, shape in self.shapes.items():
            lo, hi = self.offsets[name]
            out[name] = float(vector[lo]) if shape == () else vector[lo:hi].reshape(shape)
        return out


def moment_sums(x, shift):
    """Return n and Σ(x − s)^p per column for p = 1..4 in float64 (a shifted one-pass variance and kurtosis)."""
    d = np.asarray(x, np.float64) - shift
    d2 = d * d
    return np.concatenate([[x.shape[0]], d.sum(axis=0), d2.sum(axis=0), (d2 * d).sum(axis=0), (d2 * d2).sum(axis=0)])


def _central(sums, shift):
    """Return (mean, variance, fourth central moment) per column from summed :func:`moment_sums`."""
    sums = np.asarray(sums, np.float64)
    n = sums[0]
    k = (sums.size - 1) // 4
    m1, m2, m3, m4 = (sums[1 + i * k:1 + (i + 1) * k] / n for i in range(4))
    var = np.maximum(m2 - m1 ** 2, 0.0)
    fourth = np.maximum(m4 - 4 * m1 * m3 + 6 * m1 ** 2 * m2 - 3 * m1 ** 4, 0.0)
    return shift + m1, var, fourth


def _constant(std, shift):
    return ~(std > 1e-12 * np.maximum(1.0, np.abs(shift)))


def moments_from_sums(sums, shift):
    """Return (mean, scale) from summed :func:`moment_sums`; scale is 1 where std is 0."""
    mean, var, _ = _central(sums, shift)
    std = np.sqrt(var)
    return mean, np.where(_constant(std, shift), 1.0, std)


def scaling_from_sums(sums, shift, n_features: int, how: str) -> dict:
    """Return x_mean, x_scale (by rule ``how``) from summed moments; also y_mean, y_scale if they hold y's column.

    The statistics pass of a regression sums the moments of ``[X, y]`` (d + 1
    columns), so the target scaling comes from the same pass as the inputs'.
    """
    mean, scale = moments_from_sums(sums, shift)
    _, var, fourth = _central(sums, shift)
    d = n_features
    out = {"x_mean": mean[:d], "x_scale": input_scale(scale[:d], how, fourth[:d], _constant(np.sqrt(var[:d]), shift[:d]))}
    if mean.size > n_features:
        out.update(y_mean=mean[n_features:], y_scale=scale[n_features:])
    return out


SCALINGS = ("auto", "standard", "global")
KURTOSIS_FLOOR = 0.75  # auto: scale ≥ 0.75 · (fourth central moment)^¼ (1.3σ for a Gaussian: no change)
CONSTANT_SCALE = 1e30  # auto: a feature constant in training is divided by this (it is ignored)


def input_scale(scale, how: str, fourth=None, constant=None):
    """Return the per-feature divisor of the inputs for a scaling rule.

    ``standard``: each feature's own standard deviation (features in different
    units). ``global``: one common divisor, the root mean square of the
    standard deviations (features in shared units such as pixels, where
    dividing a rarely-lit pixel by its tiny std would blow it up). ``auto``
    (the default): each feature's std with a floor ``0.75 · μ₄^¼`` from its
    fourth central moment μ₄, so heavy-tailed and rarely-nonzero features
    (rare pixels, rare one-hot columns: a 0/1 column that is 1 with rate p has
    std ≈ √p but μ₄^¼ ≈ p^¼) are not blown up, while Gaussian-like and
    balanced columns keep their std; features constant in training are
    ignored (divided by 10³⁰), so an unseen value at prediction time cannot
    swamp the network.
    """
    scale = np.asarray(scale, np.float64)
    if how == "standard":
        return scale
    if how == "global":
        return np.full_like(scale, float(np.sqrt(np.mean(scale ** 2))) or 1.0)
    if how == "auto":
        out = scale if fourth is None else np.maximum(scale, KURTOSIS_FLOOR * np.asarray(fourth) ** 0.25)
        return out if constant is None else np.where(constant, CONSTANT_SCALE, out)
    raise ValueError(f"unknown scaling {how!r}")
