"""2-D pooling after a convolution's activation: ``a = pool(h(z))`` over non-overlapping ``k × k`` windows.

On a channel-last image ``u`` (``H × W × C``, a row of ``H·W·C`` values) max
pooling gives ``v[i, j, c] = max_{p,q < k} u[k·i + p, k·j + q, c]`` and average
pooling their mean; the output is ``⌊H/k⌋ × ⌊W/k⌋ × C`` (the last rows and
columns that fill no window are dropped, as in PyTorch). Pooling has no
weights: it is a fixed map between a layer's activations and the next
layer's inputs. Its Jacobian is a 0/1 selection of each window's maximum
(max) or the constant ``1/k²`` spread (average); :meth:`Pool2D.adjoint`
applies its transpose, which Gauss-Newton's back-propagation needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from solvers.errors import InputError
from solvers.image_shapes import ImageShapes

POOL_MODES = ("max", "avg")


@dataclass(frozen=True)
class Pool2D(ImageShapes):
    """Non-overlapping ``size × size`` max or average pooling of rows holding ``in_shape`` (H, W, C) images."""

    in_shape: tuple
    size: int
    mode: str = "max"
    out_shape: tuple = field(init=False)

    def __post_init__(self):
        H, W, C = self.in_shape
        if self.size > min(H, W):
            raise InputError(f"pool:{self.size} does not fit a {H}x{W} image; use a smaller pool size")
        object.__setattr__(self, "out_shape", (H // self.size, W // self.size, C))

    def _cells(self, u):
        """Return the ``k·k`` strided views ``u[:, p::k, q::k]`` (each ``(n, H', W', C)``), (p, q) in row-major order."""
        k, (H, W, C), (ho, wo, _) = self.size, self.in_shape, self.out_shape
        img = u.reshape(-1, H, W, C)
        return [img[:, p:ho * k:k, q:wo * k:k] for p in range(k) for q in range(k)]

    def forward(self, u, masks: bool = True):
        """Return (``pool(u)`` as rows of ``n_out`` values, the Jacobian's data: the argmax mask, or None).

        The mask (``k·k × n × H' × W' × C``, bool) marks each window's first maximum
        (row-major order); it is None for average pooling or when ``masks`` is False
        (a forward pass that back-propagates nothing).
        """
        if self.mode == "max" and not masks:
            return self._max(u), None
        cells = self._cells(u)
        if self.mode == "avg":
            out = cells[0].copy()
            for c in cells[1:]:
                out += c
            out *= u.dtype.type(1.0 / len(cells))
            return out.reshape(len(out), self.n_out), None
        out = _maximum(cells)
        mask = np.empty((len(cells),) + out.shape, bool)
        free = np.ones(out.shape, bool)     # windows whose maximum is not yet marked
        for i, c in enumerate(cells):
            np.equal(c, out, out=mask[i])
            mask[i] &= free
            if i < len(cells) - 1:
                free &= ~mask[i]
        return out.reshape(len(out), self.n_out), mask

    def _max(self, u):
        """Return the max pooling of ``u``: over each window's rows first (runs of ``W·C`` values), then its columns.

        The same values as the maximum over the ``k·k`` cells (a maximum is exact in any order), in 0.17
        against 0.23 ms for a 72-row tile of MNIST's 24×24×8 first layer (runs of C values).
        """
        k, (H, W, C), (ho, wo, _) = self.size, self.in_shape, self.out_shape
        r = u.reshape(-1, H, W, C)[:, :ho * k].reshape(-1, ho, k, W, C)
        rows = _maximum([r[:, :, p] for p in range(k)])
        c = rows[:, :, :wo * k].reshape(-1, ho, wo, k, C)
        out = _maximum([c[..., q, :] for q in range(k)])
        return out.reshape(len(out), self.n_out)

    def apply(self, u):
        """Return ``pool(u)`` (rows of ``n_out`` values)."""
        return self.forward(u, masks=False)[0]

    def adjoint(self, g, mask):
        """Return ``Jᵀ g``: each pooled value's gradient sent back to its window (rows of ``n_in`` values).

        ``g`` may carry leading axes before the rows (``(..., n, n_out)``, e.g. one
        block per network output); ``mask`` is :meth:`forward`'s, for the ``n`` rows.
        """
        k, (H, W, C), (ho, wo, _) = self.size, self.in_shape, self.out_shape
        lead = g.shape[:-1]
        if mask is not None:  # max: each window's gradient goes to its marked cell, cell by cell
            gw = g.reshape(*lead, ho, wo, C)
            full = ho * k == H and wo * k == W  # the k·k cells cover every value: each is written below
            out = (np.empty if full else np.zeros)((*lead, H, W, C), g.dtype)
            for p in range(k):
                for q in range(k):
                    np.multiply(gw, mask[p * k + q], out=out[..., p:ho * k:k, q:wo * k:k, :])
            return out.reshape(*lead, self.n_in)
        gw = g.reshape(*lead, ho, wo, C, 1)
        win = np.broadcast_to(gw / g.dtype.type(k * k), (*lead, ho, wo, C, k * k))
        win = win.reshape(-1, ho, wo, C, k, k).transpose(0, 1, 4, 2, 5, 3).reshape(-1, ho * k, wo * k, C)
        if ho * k == H and wo * k == W:
            return np.ascontiguousarray(win).reshape(*lead, self.n_in)
        out = np.zeros((win.shape[0], H, W, C), g.dtype)
        out[:, :ho * k, :wo * k] = win
        return out.reshape(*lead, self.n_in)


def _maximum(parts):
    """Return the elementwise maximum of the equal-shape arrays ``parts`` as a new array (``parts`` untouched)."""
    out = np.maximum(parts[0], parts[1]) if len(parts) > 1 else parts[0].copy()
    for part in parts[2:]:
        np.maximum(out, part, out=out)
    return out
