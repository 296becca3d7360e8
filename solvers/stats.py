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
    """Return Σ(x − s) and Σ(x − s)² per column in float64, for a shifted one-pass variance."""
    d = np.asarray(x, np.float64) - shift
    return np.concatenate([[x.shape[0]], d.sum(axis=0), (d * d).sum(axis=0)])


def moments_from_sums(sums, shift):
    """Return (mean, scale) from summed :func:`moment_sums`; scale is 1 where std is 0."""
    sums = np.asarray(sums, np.float64)
    n = sums[0]
    k = (sums.size - 1) // 2
    s1, s2 = sums[1:1 + k], sums[1 + k:]
    mean_d = s1 / n
    var = np.maximum(s2 / n - mean_d**2, 0.0)
    std = np.sqrt(var)
    scale = np.where(std > 1e-12 * np.maximum(1.0, np.abs(shift)), std, 1.0)
    return shift + mean_d, scale


def scaling_from_sums(sums, shift, n_features: int, how: str) -> dict:
    """Return x_mean, x_scale (by rule ``how``) from summed moments; also y_mean, y_scale if they hold y's column.

    The statistics pass of a regression sums the moments of ``[X, y]`` (d + 1
    columns), so the target scaling comes from the same pass as the inputs'.
    """
    mean, scale = moments_from_sums(sums, shift)
    out = {"x_mean": mean[:n_features], "x_scale": input_scale(scale[:n_features], how)}
    if mean.size > n_features:
        out.update(y_mean=mean[n_features:], y_scale=scale[n_features:])
    return out


SCALINGS = ("standard", "global")


def input_scale(scale, how: str):
    """Return the per-feature divisor of the inputs for a scaling rule.

    ``standard``: each feature's own standard deviation (features in different
    units). ``global``: one common divisor, the root mean square of the
    standard deviations (features in shared units such as pixels, where
    dividing a rarely-lit pixel by its tiny std would blow it up).
    """
    scale = np.asarray(scale, np.float64)
    if how == "standard":
        return scale
    if how == "global":
        return np.full_like(scale, float(np.sqrt(np.mean(scale ** 2))) or 1.0)
    raise ValueError(f"unknown scaling {how!r}")
