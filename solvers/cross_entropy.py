"""Cross-entropy of a classifier's output layer: probabilities, loss sums and generalised Gauss-Newton factors.

The output ``z`` of K units gives ``p = softmax(z)``; one unit (two classes)
gives ``p = σ(z − ½)``, so ``z > ½`` still predicts class 1 as with 0/1
targets (the consensus solver's convention). The loss is ``ℓ = −Σ t log p``,
its gradient ``∂ℓ/∂z = p − t``, and its curvature (Schraudolph 2002) per row
``H = diag(p) − p pᵀ`` (one unit: ``p(1 − p)``), which factors as
``H = Σ_k f_k f_kᵀ`` with ``f_k = √p_k (e_k − p)``.
"""
from __future__ import annotations

import numpy as np

SHIFT = 0.5  # one output unit: the logit is z − ½


def probabilities(z):
    """Return ``p``: ``σ(z − ½)`` for one unit, ``softmax(z)`` row by row for more (z's dtype)."""
    z = np.asarray(z)
    if z.shape[1] == 1:
        s = np.minimum(-(z - z.dtype.type(SHIFT)), 80)  # exp(−s) overflows past ~88 in float32
        return 1 / (1 + np.exp(s))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def block_losses(Z, t) -> np.ndarray:
    """Return ``Σ_rows ℓ`` (float64) of each of the J output blocks ``Z = [z⁽¹⁾, …, z⁽ᴶ⁾]`` (n × J·K) for targets ``t`` (n × K)."""
    n, K = t.shape
    Zr = np.asarray(Z).reshape(n, -1, K)
    if K == 1:
        s = Zr[..., 0] - Zr.dtype.type(SHIFT)
        loss = np.maximum(s, 0) + np.log1p(np.exp(-np.abs(s))) - t * s  # softplus(s) − t s, overflow-free
    else:
        m = Zr.max(axis=2, keepdims=True)
        lse = np.log(np.exp(Zr - m).sum(axis=2)) + m[..., 0]
        loss = lse - np.einsum("njk,nk->nj", Zr, t)
    return loss.sum(axis=0, dtype=np.float64)


def loss_sum(z, t) -> float:
    """Return ``Σ_rows ℓ(z, t)``, the cross-entropy of one output ``z`` (n × K)."""
    return float(block_losses(z, t)[0])


def output_curvature(p) -> np.ndarray:
    """Return ``Σ_rows H = diag(Σ p) − Σ p pᵀ`` (one unit: ``Σ p(1 − p)``), float64 (K × K)."""
    p = np.asarray(p)
    if p.shape[1] == 1:
        return np.array([[float(np.sum(p * (1 - p), dtype=np.float64))]])
    return np.diag(p.sum(axis=0, dtype=np.float64)) - (p.T @ p).astype(np.float64)


def jacobian_factors(p, Wt) -> list:
    """Return ``F_k W̃`` for k = 1..K (each n × width): ``Σ_k (F_k W̃)ᵀ(F_k W̃) = Σ W̃ᵀ H W̃`` row by row.

    ``F_k`` has the rows ``f_kᵀ = √p_k (e_k − p)ᵀ`` (one unit: ``√(p(1 − p))``), ``W̃`` the output weights without bias.
    """
    p = np.asarray(p)
    Wt = np.asarray(Wt, p.dtype)
    if p.shape[1] == 1:
        return [np.sqrt(p * (1 - p)) * Wt[0]]
    mixed = p @ Wt  # row i: p_iᵀ W̃
    root = np.sqrt(p)
    return [root[:, k:k + 1] * (Wt[k] - mixed) for k in range(p.shape[1])]
