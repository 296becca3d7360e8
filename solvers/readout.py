"""The model's output layer of the ADMM solvers under ``alpha="auto"``: the targets refitted on the hidden features.

ADMM and dlADMM fit their output weights to their own per-sample variables
(``z_L``, ``z_L + u/ρ``), not to the targets, and their W-solves' α cannot be
judged on held-out rows. Their model's output layer is therefore refitted
after every pass: with ``ã`` the forward pass of the iteration's hidden
weights and ``T`` the task's targets, ``W_L(α) = C (G + α Ĩ)⁻¹`` from
``G = Σ ã ãᵀ``, ``C = Σ T ãᵀ`` (Ĩ spares the bias), α chosen from a grid by
the squared error ``Σ‖T − W_L(α) ã‖²`` on the held-out chunks: the
Gauss-Newton solver's output solve (:class:`~solvers.linalg.RidgePath`). The
sums come from the pass the iteration makes anyway (its training chunks, and
the held-out chunks run statelessly in the same pass), so no pass is added.
The solvers' own iterates are left as they are. With nothing held out
(``validation_fraction=0``) there is no refit and the model is the iterate:
GCV on the training sums, the fallback of :meth:`RidgePath.choose`, picks
α ≈ 0 when the width nears the number of rows (measured: breast cancer,
364 rows, 300 units, mean validation-split accuracy 0.848 over 10 splits,
against 0.953 for the iterate).
"""
from __future__ import annotations

import numpy as np

from solvers.linalg import RidgePath, cross_with_bias, gram_with_bias



def shapes(n_features: int, n_outputs: int) -> dict:
    """Return the layout entries of the readout's sums for output layer inputs of width ``n_features``."""
    return {"out_gram": (n_features + 1,) * 2, "out_cross": (n_outputs, n_features + 1), "out_tt": ()}


def parts(a, t) -> dict:
    """Return one tile's readout sums: ``Σ ã ãᵀ``, ``Σ T ãᵀ``, ``Σ‖T‖²`` of hidden features ``a`` and targets ``t``."""
    return {"out_gram": gram_with_bias(a), "out_cross": cross_with_bias(t, a),
            "out_tt": float(np.sum(t * t, dtype=np.float64))}


def fit(sums: dict, held: dict | None, ridge: float, *, what: str = "output layer") -> tuple[np.ndarray, float]:
    """Return (``W_L(α)``, α): α of least held-out error (``held``: the held-out chunks' sums; None: GCV, unused)."""
    path = RidgePath(sums["out_cross"], sums["out_gram"], ridge, what=what)
    held_sums = None if held is None else (held["out_cross"], held["out_gram"], float(held["out_tt"]))
    alpha, W, _ = path.choose(float(sums["out_tt"]), held_sums)
    return W, alpha
