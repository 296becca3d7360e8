"""Least-squares steps of ADMM: bias-augmented products, the W-solve, the a-update.

Arrays are sample-major: a layer's activations ``a`` have shape
``(n_samples, width)``, weights ``W_l`` have shape ``(n_l, n_{l−1} + 1)`` whose
last column is the bias (the paper's ``W a`` with a constant-one row appended
to ``a``). Chunk products run in the chunk's dtype (float32 BLAS in the
pipeline) and are accumulated in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from solvers.errors import NumericalError


def affine(a, W):
    """Return ``[a, 1] Wᵀ = a W̃ᵀ + b``, the pre-activation ``W_l a_{l−1}`` with bias."""
    Wd = W.astype(a.dtype, copy=False)
    out = a @ Wd[:, :-1].T
    out += Wd[:, -1]
    return out


def times(a, W):
    """Return ``a @ W``; for a one-column ``a`` as a broadcast outer product.

    BLAS runs an inner dimension of 1 (a single-output network's residual
    times its output weights) ~50× below its GEMM rate (measured:
    ``benchmarks/results/gn_efficiency.md``); the outer product is memory-bound.
    """
    if a.shape[1] == 1:
        return a * W
    return a @ W


def gram_with_bias(a):
    """Return ``Σ [a, 1]ᵀ[a, 1]`` in float64, the Gram ``a aᵀ`` of the W-solve."""
    k = a.shape[1]
    g = np.empty((k + 1, k + 1))
    g[:k, :k] = a.T @ a
    s = a.sum(axis=0, dtype=np.float64)
    g[:k, k] = s
    g[k, :k] = s
    g[k, k] = a.shape[0]
    return g


def cross_with_bias(z, a):
    """Return ``Σ zᵀ[a, 1]`` in float64, the cross product ``z aᵀ`` of the W-solve."""
    out = np.empty((z.shape[1], a.shape[1] + 1))
    out[:, :-1] = z.T @ a
    out[:, -1] = z.sum(axis=0, dtype=np.float64)
    return out


def solve_weights(cross, gram, ridge: float, *, what: str = "W", setting: str = "--ridge"):
    """Return ``W = (z aᵀ)(a aᵀ + ε·mean(diag)·I)⁻¹`` by Cholesky (paper §5, eq. 9).

    ``ridge`` is the relative ridge ε. Raises :class:`NumericalError` when the
    Grams are not finite or not positive definite; its message suggests a
    larger ``setting`` (the flag that sets ``ridge``).
    """
    if not (np.all(np.isfinite(cross)) and np.all(np.isfinite(gram))):
        raise NumericalError(
            f"{what}: the Gram matrices contain NaN or inf; the state diverged "
            f"(try a larger {setting} or standardised inputs)"
        )
    g = np.array(gram, dtype=np.float64)
    scale = float(np.mean(np.diag(g))) or 1.0
    g[np.diag_indices_from(g)] += ridge * scale
    try:
        factor = scipy.linalg.cho_factor(g, lower=True, check_finite=False)
    except np.linalg.LinAlgError as exc:
        raise NumericalError(
            f"{what}: the Gram is not positive definite ({exc}); use a larger {setting}"
        ) from None
    return scipy.linalg.cho_solve(factor, np.asarray(cross, np.float64).T, check_finite=False).T


@dataclass(frozen=True)
class ActivationUpdate:
    """The a-update of eq. 6 for one hidden layer, precomputed on the client.

    ``a = (β W̃ᵀW̃ + γI)⁻¹ (β W̃ᵀ (z_{l+1} − b) + γ h(z_l))`` with ``W̃, b`` the
    next layer's weights and bias. When the next layer is narrower, Woodbury
    gives ``a = h + (z_{l+1} − b − h W̃ᵀ) K W̃`` with ``K = (γ/β I + W̃W̃ᵀ)⁻¹``;
    otherwise ``a = h M + (z_{l+1} − b) Q`` with ``M = γP``, ``Q = βW̃P``,
    ``P = (βW̃ᵀW̃ + γI)⁻¹``.
    """

    woodbury: bool
    left: np.ndarray   # Woodbury: W̃ᵀ (n_l, n_{l+1});  direct: M (n_l, n_l)
    right: np.ndarray  # Woodbury: K W̃ (n_{l+1}, n_l);  direct: Q (n_{l+1}, n_l)
    bias: np.ndarray   # b (n_{l+1},)

    @classmethod
    def from_weights(cls, W_next, gamma: float, beta: float) -> "ActivationUpdate":
        """Return the precomputed a-update for the layer below ``W_next`` (eq. 6)."""
        Wt = np.asarray(W_next[:, :-1], np.float64)
        b = np.asarray(W_next[:, -1], np.float64)
        n_next, n_l = Wt.shape
        if n_next < n_l:
            K = np.linalg.inv(gamma / beta * np.eye(n_next) + Wt @ Wt.T)
            return cls(True, Wt.T.copy(), K @ Wt, b)
        P = np.linalg.inv(beta * Wt.T @ Wt + gamma * np.eye(n_l))
        return cls(False, gamma * P, beta * Wt @ P, b)

    def astype(self, dtype) -> "ActivationUpdate":
        """Return the same operator with its matrices cast to ``dtype``."""
        return ActivationUpdate(self.woodbury, self.left.astype(dtype), self.right.astype(dtype),
                                self.bias.astype(dtype))

    def apply(self, h, z_next):
        """Return the new activations a_l from ``h = h(z_l)`` and ``z_{l+1}`` (eq. 6)."""
        dt = h.dtype
        left, right, bias = self.left.astype(dt, copy=False), self.right.astype(dt, copy=False), \
            self.bias.astype(dt, copy=False)
        if self.woodbury:
            r = z_next - bias
            r -= h @ left
            out = times(r, right)
            out += h
            return out
        out = h @ left
        out += (z_next - bias) @ right
        return out
