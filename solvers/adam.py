"""Minibatch Adam on a dense network, in NumPy: one flat float32 parameter vector, backprop, one Adam step.

The parameters of layers 1..L live in one vector θ, layer by layer as
``W̃_l`` (n_l × n_{l−1}, row-major) then ``b_l`` (n_l), so an Adam step is a
few elementwise operations on one array. :func:`to_weights` and
:func:`from_weights` convert to and from the solvers' ``W_l = [W̃_l, b_l]``
(bias in the last column).

Output losses (mean over the minibatch, ``s`` the output layer): squared
``½‖s − t‖²``; binary cross-entropy on the logit ``s − ½`` (one output
unit: the shared prediction rule ``s > ½`` is then ``σ(logit) > ½``);
softmax cross-entropy on ``s`` (K units, prediction ``argmax s``).
"""
from __future__ import annotations

import math

import numpy as np

from solvers.linalg import times

ADAM_BETA1, ADAM_BETA2, ADAM_EPS = 0.9, 0.999, 1e-8  # Kingma & Ba's defaults, as scikit-learn and PyTorch
LOSS_KINDS = ("squared", "binary-log", "softmax-log")


class FlatLayout:
    """Where each layer's ``W̃_l`` and ``b_l`` sit in the flat vector θ (``shapes[l−1] = W_l.shape``)."""

    def __init__(self, shapes):
        self.shapes = [tuple(int(v) for v in s) for s in shapes]
        self.spans = []
        pos = 0
        for n_out, n_in1 in self.shapes:
            w = (pos, pos + n_out * (n_in1 - 1))
            b = (w[1], w[1] + n_out)
            self.spans.append((w, b))
            pos = b[1]
        self.size = pos

    def views(self, theta) -> list:
        """Return ``[(W̃_l, b_l)]``: views into ``theta`` (writes go through)."""
        out = []
        for (n_out, n_in1), ((w0, w1), (b0, b1)) in zip(self.shapes, self.spans):
            out.append((theta[w0:w1].reshape(n_out, n_in1 - 1), theta[b0:b1]))
        return out

    def bias_mask(self) -> np.ndarray:
        """Return a boolean vector, True at the bias entries of θ."""
        mask = np.zeros(self.size, bool)
        for _, (b0, b1) in self.spans:
            mask[b0:b1] = True
        return mask

    def to_weights(self, theta) -> list:
        """Return ``[W_1, …, W_L]`` (float64, bias last column) of the flat vector θ."""
        return [np.column_stack([np.asarray(Wt, np.float64), np.asarray(b, np.float64)])
                for Wt, b in self.views(theta)]

    def from_weights(self, weights, dtype=np.float64) -> np.ndarray:
        """Return the flat vector θ of ``[W_1, …, W_L]`` (bias last column)."""
        theta = np.empty(self.size, dtype)
        for (Wt, b), W in zip(self.views(theta), weights):
            W = np.asarray(W)
            Wt[...] = W[:, :-1]
            b[...] = W[:, -1]
        return theta


def loss_and_delta(kind: str, s, t):
    """Return (Σ loss over the rows, ∂(Σ loss)/∂s) of the output layer ``s`` for targets ``t``."""
    if kind == "squared":
        r = s - t
        return 0.5 * float(np.sum(r * r, dtype=np.float64)), r
    if kind == "binary-log":
        logit = s - s.dtype.type(0.5)
        p = np.empty_like(logit)
        np.negative(logit, out=p)
        np.exp(np.minimum(p, 80), out=p)
        p += 1
        np.reciprocal(p, out=p)  # σ(logit)
        # softplus(logit) − t·logit, overflow-free
        loss = np.maximum(logit, 0) + np.log1p(np.exp(-np.abs(logit))) - t * logit
        return float(np.sum(loss, dtype=np.float64)), p - t
    if kind == "softmax-log":
        shifted = s - s.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        total = e.sum(axis=1, keepdims=True)
        loss = np.log(total[:, 0]) - np.sum(shifted * t, axis=1)
        return float(np.sum(loss, dtype=np.float64)), e / total - t
    raise ValueError(f"unknown loss kind {kind!r}")


def gradient(theta, layout: FlatLayout, act, kind: str, x, t, grad):
    """Write ∂(mean loss)/∂θ of the minibatch ``(x, t)`` into ``grad``; return (Σ loss, output layer s).

    Backprop: ``δ_L = ∂ℓ/∂s``, ``δ_l = h'(z_l) ⊙ (δ_{l+1} W̃_{l+1})``,
    ``∂/∂W̃_l = δ_lᵀ a_{l−1} / B``, ``∂/∂b_l = Σ δ_l / B``.
    """
    params, grads = layout.views(theta), layout.views(grad)
    a, z = [x], []
    for Wt, b in params[:-1]:
        zl = a[-1] @ Wt.T
        zl += b
        z.append(zl)
        a.append(act.h(zl))
    Wt, b = params[-1]
    s = a[-1] @ Wt.T
    s += b
    total, delta = loss_and_delta(kind, s, t)
    delta *= delta.dtype.type(1.0 / x.shape[0])
    for l in range(len(params) - 1, -1, -1):
        gW, gb = grads[l]
        np.matmul(delta.T, a[l], out=gW)
        np.sum(delta, axis=0, out=gb)
        if l:
            delta = times(delta, params[l][0])  # δ_{l} W̃_{l+1} (one output unit: an outer product)
            delta *= act.dh(z[l - 1])
    return total, s


class Adam:
    """Adam's moments m, v and step count t over a flat vector (Kingma & Ba 2015, Alg. 1)."""

    def __init__(self, size: int, dtype=np.float32, m=None, v=None, t: int = 0):
        self.m = np.zeros(size, dtype) if m is None else np.asarray(m, dtype).copy()
        self.v = np.zeros(size, dtype) if v is None else np.asarray(v, dtype).copy()
        self.t = int(t)
        self._tmp = np.empty(size, dtype)

    def step(self, theta, grad, lr: float) -> None:
        """θ ← θ − lr·m̂/(√v̂ + ε) with m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², bias-corrected."""
        self.t += 1
        dt = theta.dtype.type
        m, v, tmp = self.m, self.v, self._tmp
        m *= dt(ADAM_BETA1)
        m += dt(1 - ADAM_BETA1) * grad
        np.multiply(grad, grad, out=tmp)
        v *= dt(ADAM_BETA2)
        tmp *= dt(1 - ADAM_BETA2)
        v += tmp
        step = lr * math.sqrt(1 - ADAM_BETA2 ** self.t) / (1 - ADAM_BETA1 ** self.t)
        np.sqrt(v, out=tmp)
        tmp += dt(ADAM_EPS * math.sqrt(1 - ADAM_BETA2 ** self.t))
        np.divide(m, tmp, out=tmp)
        tmp *= dt(step)
        theta -= tmp
