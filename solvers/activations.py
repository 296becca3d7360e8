"""Activations ``h`` and their entrywise z-updates (Taylor et al. 2016, eq. 7).

Each activation is a pair of pure functions gathered in :data:`ACTIVATIONS`:

- ``h(z)``: the link function, elementwise;
- ``z_update(a, m, gamma, beta)``: the global minimiser, entry by entry, of
  ``γ (a − h(z))² + β (z − m)²`` where ``m = W a_prev`` (eq. 7).

ReLU and the hard sigmoid are solved in closed form by comparing the best
point of each linear piece; the smooth sigmoid uses the paper's suggestion, a
precomputed lookup table (global basin), refined by a bracketed golden-section
search. All functions keep the floating dtype of their inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np


def _objective(h, a, z, m, gamma, beta):
    """Return γ (a − h(z))² + β (z − m)², the z-subproblem of eq. 7."""
    return gamma * (a - h(z)) ** 2 + beta * (z - m) ** 2


def relu(z):
    """Return max(z, 0)."""
    return np.maximum(z, 0)


def relu_z_update(a, m, gamma, beta):
    """Return argmin_z γ(a − max(z,0))² + β(z − m)² entrywise (eq. 7, ReLU).

    Candidates: on z ≥ 0 the quadratic's minimiser ``c⁺ = max((γa + βm)/(γ+β), 0)``;
    on z ≤ 0 ``min(m, 0)``. For m > 0 the z ≥ 0 piece always wins; for m ≤ 0,
    ``c`` beats ``m`` iff ``γβ/(γ+β)(a − m)² ≤ γa²``, i.e. iff
    ``t = (√(γ+β) − √β)·a + √β·m ≥ 0`` (which also implies c ≥ 0): one linear
    test instead of two objective evaluations.
    """
    dt = np.result_type(a, m)
    c = a * dt.type(gamma / (gamma + beta))
    c += m * dt.type(beta / (gamma + beta))
    t = a * dt.type(np.sqrt(gamma + beta) - np.sqrt(beta))
    t += m * dt.type(np.sqrt(beta))
    keep_c = t >= 0
    keep_c |= m > 0
    np.maximum(c, 0, out=c)
    return np.where(keep_c, c, m)


def hard_sigmoid(z):
    """Return clip(z, 0, 1), the paper's non-differentiable sigmoid."""
    return np.clip(z, 0, 1)


def hard_sigmoid_z_update(a, m, gamma, beta):
    """Return argmin_z γ(a − clip(z,0,1))² + β(z − m)² entrywise (eq. 7).

    Candidates: ``min(m, 0)`` on z ≤ 0, ``clip((γa+βm)/(γ+β), 0, 1)`` on
    [0, 1], ``max(m, 1)`` on z ≥ 1; the lowest objective wins.
    """
    dt = np.result_type(a, m)
    gamma, beta = dt.type(gamma), dt.type(beta)
    one = dt.type(1)
    cands = (
        np.minimum(m, 0),
        np.clip((gamma * a + beta * m) / (gamma + beta), 0, one),
        np.maximum(m, one),
    )
    best = cands[0]
    best_f = _objective(hard_sigmoid, a, best, m, gamma, beta)
    for z in cands[1:]:
        f = _objective(hard_sigmoid, a, z, m, gamma, beta)
        take = f < best_f
        best = np.where(take, z, best)
        best_f = np.where(take, f, best_f)
    return best


def sigmoid(z):
    """Return the logistic function 1 / (1 + exp(−z)), overflow-free."""
    out = np.empty_like(z, dtype=np.result_type(z, np.float32))
    np.negative(z, out=out)
    np.exp(np.minimum(out, 80), out=out)
    out += 1
    np.reciprocal(out, out=out)
    return out


# Lookup table for the smooth sigmoid, on a grid a in [-2, 3] x m in [-12, 12].
_A_GRID = np.linspace(-2.0, 3.0, 201)
_M_GRID = np.linspace(-12.0, 12.0, 481)
# Coarse candidates for the global search: where σ bends, plus z = m.
_Z_COARSE = np.arange(-10.0, 10.0 + 1e-9, 0.25)
_BRACKET = 0.25  # half-width refined around a candidate
_TABLE_MAX_RATIO = 300.0  # above this γ/β the basins are too narrow for the table's a-step
_GOLDEN_STEPS = 48  # shrinks the bracket by 0.618**48 ≈ 1e-10


def _sigmoid_objective(z, a, m, ratio):
    """Return r(a − σ(z))² + (z − m)², eq. 7 divided by β with r = γ/β."""
    return ratio * (a - sigmoid(z)) ** 2 + (z - m) ** 2


def _golden_refine(z0, a, m, ratio, half=_BRACKET):
    """Return the minimiser of the sigmoid objective on [z0 − half, z0 + half]."""
    lo, hi = z0 - half, z0 + half
    g = (np.sqrt(5.0) - 1) / 2
    x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
    f1, f2 = _sigmoid_objective(x1, a, m, ratio), _sigmoid_objective(x2, a, m, ratio)
    for _ in range(_GOLDEN_STEPS):
        left = f1 < f2
        hi = np.where(left, x2, hi)
        lo = np.where(left, lo, x1)
        new_x = np.where(left, hi - g * (hi - lo), lo + g * (hi - lo))
        f_new = _sigmoid_objective(new_x, a, m, ratio)
        x1, x2, f1, f2 = (np.where(left, new_x, x2), np.where(left, x1, new_x),
                          np.where(left, f_new, f2), np.where(left, f1, f_new))
    return (lo + hi) / 2


def _sigmoid_z_direct(a, m, ratio):
    """Return the global minimiser by a coarse search over σ's bend and z = m, then refinement.

    Outside [−10, 10] σ is flat (σ' < 5e-5) and the objective nearly convex:
    the only minimiser there lies within ``r·|σ'(z)(a − σ(z))|`` of m, so the
    bracket is widened by that pull; inside, a 0.25 grid places a candidate in
    every basin.
    """
    a = np.asarray(a, np.float64)[..., None]
    m = np.asarray(m, np.float64)[..., None]
    cand = np.concatenate([np.broadcast_to(_Z_COARSE, np.broadcast_shapes(a.shape, m.shape)[:-1] + _Z_COARSE.shape),
                           np.broadcast_to(m, np.broadcast_shapes(a.shape, m.shape))], axis=-1)
    best = np.take_along_axis(cand, np.argmin(_sigmoid_objective(cand, a, m, ratio), axis=-1)[..., None], -1)
    best, a, m = best[..., 0], a[..., 0], m[..., 0]
    s = sigmoid(best)
    pull = np.abs(ratio * s * (1 - s) * (a - s))
    half = np.where(np.abs(best) > 9.5, _BRACKET + 2 * pull, _BRACKET)
    return _golden_refine(best, a, m, ratio, half)


@lru_cache(maxsize=8)
def _sigmoid_table(ratio: float) -> np.ndarray:
    """Return the global minimiser of r(a − σ(z))² + (z − m)² on the (a, m) grid, r = γ/β."""
    return _sigmoid_z_direct(_A_GRID[:, None], _M_GRID[None, :], ratio)


def _grid_index(v, grid):
    """Return the index of the nearest point of a uniform grid (clipped to it)."""
    step = grid[1] - grid[0]
    return np.rint((np.clip(v, grid[0], grid[-1]) - grid[0]) / step).astype(np.intp)


def sigmoid_z_update(a, m, gamma, beta):
    """Return argmin_z γ(a − σ(z))² + β(z − m)² entrywise, σ the logistic sigmoid (eq. 7).

    The paper's lookup table, built once per γ/β over a ∈ [−2, 3], m ∈ [−12, 12]
    (steps 0.025 and 0.05), gives the global basin from the two a-grid neighbours;
    a golden-section search from each on ``[z₀ − 0.25, z₀ + 0.25]`` refines it. Entries
    outside the table, and every entry when γ/β > 300, use the direct global
    search. Measured against brute force on a 1.2M-point grid
    (``tests/test_activations.py``): excess objective ≤ 1e-6 relative.
    """
    dt = np.result_type(a, m)
    ratio = float(gamma) / float(beta)
    a64, m64 = np.asarray(a, np.float64), np.asarray(m, np.float64)
    if ratio > _TABLE_MAX_RATIO:
        return _sigmoid_z_direct(a64, m64, ratio).astype(dt, copy=False)
    # the two a-grid neighbours bracket the basin switch: refine from both, keep the better
    table, im = _sigmoid_table(ratio), _grid_index(m64, _M_GRID)
    ia = np.clip(np.floor((np.clip(a64, _A_GRID[0], _A_GRID[-1]) - _A_GRID[0]) / (_A_GRID[1] - _A_GRID[0])),
                 0, len(_A_GRID) - 2).astype(np.intp)
    z_lo = _golden_refine(table[ia, im], a64, m64, ratio)
    z_hi = _golden_refine(table[ia + 1, im], a64, m64, ratio)
    better_hi = _sigmoid_objective(z_hi, a64, m64, ratio) < _sigmoid_objective(z_lo, a64, m64, ratio)
    z = np.where(better_hi, z_hi, z_lo)
    outside = (a64 < _A_GRID[0]) | (a64 > _A_GRID[-1]) | (m64 < _M_GRID[0]) | (m64 > _M_GRID[-1])
    if np.any(outside):
        z[outside] = _sigmoid_z_direct(a64[outside], m64[outside], ratio)
    return z.astype(dt, copy=False)


@dataclass(frozen=True)
class Activation:
    """A link function ``h`` and the entrywise solver of its z-subproblem (eq. 7)."""

    name: str
    h: Callable
    z_update: Callable
    he_gain: float  # variance gain for He-style forward initialisation
    dh: Callable    # derivative h'(z) (a subgradient at kinks), for the Gauss-Newton solver


def relu_derivative(z):
    """Return 1[z > 0] in the dtype of z."""
    return (z > 0).astype(z.dtype)


def hard_sigmoid_derivative(z):
    """Return 1[0 < z < 1] in the dtype of z."""
    return ((z > 0) & (z < 1)).astype(z.dtype)


def sigmoid_derivative(z):
    """Return σ(z)(1 − σ(z))."""
    s = sigmoid(z)
    return s * (1 - s)


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation("relu", relu, relu_z_update, 2.0, relu_derivative),
    "hard-sigmoid": Activation("hard-sigmoid", hard_sigmoid, hard_sigmoid_z_update, 1.0, hard_sigmoid_derivative),
    "sigmoid": Activation("sigmoid", sigmoid, sigmoid_z_update, 1.0, sigmoid_derivative),
}
