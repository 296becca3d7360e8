"""2-D convolution as a linear map on image rows, and the a-update below a convolution.

A convolution with kernel ``K`` (``C_out × kh × kw × C_in``), stride ``s``
and zero padding maps a channel-last image ``a`` (``H × W × C_in``) to

    z[i, j, o] = Σ_{p,q,c} K[o, p, q, c] · a_pad[s·i + p, s·j + q, c] + b[o],

a Toeplitz matrix ``T`` applied to ``a``. With the image patches ``P(a)``
(im2col: one row per output position, ``kh·kw·C_in`` columns in (p, q, c)
order), ``z = P(a) Kᵀ + b``, so the layer's weight matrix is
``W = [K, b]`` (``C_out × (kh·kw·C_in + 1)``) and its exact W-solve is the
dense one (eq. 9) with Grams summed over every sample *and* output position:
``W = (Σ z [p, 1]ᵀ)(Σ [p, 1][p, 1]ᵀ)⁻¹``, no row sampling.

When the *next* layer is a convolution the a-update (eq. 6),
``(β TᵀT + γ I) a = β Tᵀ(z_{l+1} − b) + γ h(z_l)``, has an ``H·W·C``-square
matrix per sample. Zero padding and strides break the circulant structure an
FFT would diagonalise. The matrix is the same for every sample, so for small
images it can be formed and inverted once on the client
(:meth:`Conv2D.dense_weights` with the dense a-update: ``cg_steps = 0``,
memory ``(H·W·C)²``); in general :class:`CGActivationUpdate` solves it per
sample by conjugate gradients, matrix-free (one ``T`` and one ``Tᵀ`` per step), started
at ``a = h(z_l)``: the minimiser when β → 0 and the fixed point of the
constraint ``a = h(z)``. Its condition number is ``1 + (β/γ)‖T‖²``, so a few
steps suffice at the default γ/β = 100 (``benchmarks/conv_cg.py`` measures
the error and time against the number of steps). By default
(``cg_steps=None``) the update is exact up to :data:`EXACT_VALUES` values per
image and :data:`CG_STEPS` CG steps above.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from solvers.errors import InputError
from solvers.image_shapes import ImageShapes
from solvers.tiling import TILE_BYTES
from solvers.linalg import affine, cross_with_bias, gram_with_bias

CG_TOLERANCE = 1e-4  # a row's CG stops once ‖r‖ ≤ CG_TOLERANCE · ‖r₀‖ (float32 noise is ~1e-6)
CG_STEPS = 8          # CG steps when cg_steps is None and the image is too large for the exact update
EXACT_VALUES = 4096   # cg_steps None: exact a-update up to this many values (H·W·C) per image
EXACT_MAX_BYTES = 2 * 2 ** 30  # cg_steps 0: largest float64 normal matrix allowed



def _pads(size: int, k: int, stride: int, padding: str) -> tuple[int, int, int]:
    """Return (output size, pad before, pad after) of one spatial axis (``same`` as in TensorFlow)."""
    if padding == "same":
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + k - size, 0)
        return out, total // 2, total - total // 2
    return (size - k) // stride + 1, 0, 0


@dataclass(frozen=True)
class Conv2D(ImageShapes):
    """The map ``z = P(a) Kᵀ + b`` of a convolution on rows holding ``in_shape`` (H, W, C) images."""

    in_shape: tuple
    channels: int
    kh: int
    kw: int
    stride: int = 1
    padding: str = "valid"
    post: object = None   # a pooling after the activation (:class:`solvers.pooling.Pool2D`), or None
    out_shape: tuple = field(init=False)
    pads: tuple = field(init=False)
    is_dense = False

    def __post_init__(self):
        H, W, C = self.in_shape
        ho, top, bottom = _pads(H, self.kh, self.stride, self.padding)
        wo, left, right = _pads(W, self.kw, self.stride, self.padding)
        if ho <= 0 or wo <= 0:
            raise InputError(f"a {self.kh}x{self.kw} kernel does not fit a {H}x{W} image without padding; "
                             "use a smaller kernel or :same")
        object.__setattr__(self, "out_shape", (ho, wo, self.channels))
        object.__setattr__(self, "pads", (top, bottom, left, right))

    @property
    def n_next(self) -> int:
        """Return the values per row the next layer reads: ``n_out``, or after pooling the pooled ones."""
        return self.n_out if self.post is None else self.post.n_out

    @property
    def next_shape(self) -> tuple:
        """Return the image shape the next layer reads (after pooling, if any)."""
        return self.out_shape if self.post is None else self.post.out_shape

    @property
    def positions(self) -> int:
        return self.out_shape[0] * self.out_shape[1]

    @property
    def fan_in(self) -> int:
        return self.kh * self.kw * self.in_shape[2]

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.channels, self.fan_in + 1)

    @property
    def max_tile_rows(self) -> int:
        return max(1, TILE_BYTES // (4 * self.positions * self.fan_in))

    def patches(self, a, ones: bool = False):
        """Return the im2col matrix ``P(a)``: ``(n·H'·W', kh·kw·C)``, one row per sample and output position.

        ``ones``: return ``[P, 1]`` instead (a last column of ones, the bias input), built in place,
        so that ``[P, 1] Wᵀ``, ``[P, 1]ᵀ[P, 1]`` and ``δᵀ[P, 1]`` are single BLAS products.
        When an output row ``W'`` is longer than a patch's contiguous run ``kw·C`` (a first layer on
        one-channel images), ``Pᵀ`` is built instead, one kernel offset at a time, and P is returned as
        its transpose (Fortran order; the same values): NumPy copies runs of ``W'`` values rather than of
        ``kw·C`` (MNIST's 5x5 first layer: 0.3 against 1.1 ms a 72-row tile, ``conv_s9.md``).
        """
        n = a.shape[0]
        (H, W, C), (ho, wo, _), s = self.in_shape, self.out_shape, self.stride
        top, bottom, left, right = self.pads
        img = a.reshape(n, H, W, C)
        if top or bottom or left or right:
            img = np.pad(img, ((0, 0), (top, bottom), (left, right), (0, 0)))
        if self.by_offset:
            out = np.empty((self.fan_in + ones, n, ho, wo), a.dtype)
            if ones:
                out[-1] = 1
            rows = out[:self.fan_in].reshape(self.kh, self.kw, C, n, ho, wo)
            for p in range(self.kh):
                for q in range(self.kw):
                    rows[p, q] = img[:, p:p + s * (ho - 1) + 1:s, q:q + s * (wo - 1) + 1:s].transpose(3, 0, 1, 2)
            return out.reshape(self.fan_in + ones, n * ho * wo).T
        win = sliding_window_view(img, (self.kh, self.kw), axis=(1, 2))[:, ::s, ::s][:, :ho, :wo]
        win = win.transpose(0, 1, 2, 4, 5, 3)
        if not ones:
            return win.reshape(n * ho * wo, self.fan_in)
        out = np.empty((n, ho, wo, self.fan_in + 1), a.dtype)
        out[..., -1] = 1
        out[..., :-1].reshape(n, ho, wo, self.kh, self.kw, C)[...] = win
        return out.reshape(n * ho * wo, self.fan_in + 1)

    @property
    def by_offset(self) -> bool:
        """Return whether :meth:`patches` builds ``Pᵀ`` offset by offset: one channel, output rows longer than ``kw``."""
        return self.in_shape[2] == 1 and self.out_shape[1] > self.kw

    def _rows(self, z):
        return z.reshape(-1, self.channels)

    def apply(self, a, W):
        """Return ``z = T a + b`` as rows of ``H'·W'·C_out`` values."""
        return affine(self.patches(a), W).reshape(a.shape[0], self.n_out)

    def linear(self, a, W):
        """Return ``T a`` (no bias)."""
        return (self.patches(a) @ W[:, :-1].astype(a.dtype, copy=False).T).reshape(a.shape[0], self.n_out)

    def adjoint(self, r, W):
        """Return ``Tᵀ r``: the patch gradients ``r K`` added back onto the image (col2im)."""
        n = r.shape[0]
        (H, W_, C), (ho, wo, _), s = self.in_shape, self.out_shape, self.stride
        top, bottom, left, right = self.pads
        K = W[:, :-1].astype(r.dtype, copy=False).reshape(self.channels, self.kh * self.kw, C).transpose(1, 0, 2)
        grads = np.matmul(self._rows(r), K)   # (kh·kw, n·H'·W', C): one contiguous block per kernel offset
        img = np.zeros((n, H + top + bottom, W_ + left + right, C), r.dtype)
        for p in range(self.kh):
            for q in range(self.kw):
                img[:, p:p + s * (ho - 1) + 1:s, q:q + s * (wo - 1) + 1:s] += grads[p * self.kw + q].reshape(n, ho, wo, C)
        return np.ascontiguousarray(img[:, top:top + H, left:left + W_]).reshape(n, self.n_in)

    def bias_row(self, W):
        """Return the bias of every output value of a row (``b`` repeated at each position)."""
        return np.tile(W[:, -1], self.positions)

    def dense_weights(self, W):
        """Return ``[T, b]`` (``n_out × (n_in + 1)``): the layer as a dense layer's weights (the Toeplitz matrix)."""
        W = np.asarray(W, np.float64)
        T = self.linear(np.eye(self.n_in), W).T
        return np.hstack([T, self.bias_row(W)[:, None]])

    def gram(self, a):
        """Return ``Σ [p, 1]ᵀ[p, 1]`` over samples and positions (float64), the Gram of the W-solve."""
        return gram_with_bias(self.patches(a))

    def cross(self, z, a):
        """Return ``Σ zᵀ[p, 1]`` over samples and positions (float64), the cross product of the W-solve."""
        return cross_with_bias(self._rows(z), self.patches(a))


@dataclass(frozen=True)
class CGActivationUpdate:
    """The a-update of eq. 6 below a convolution, by per-sample conjugate gradients.

    Solves ``((β/γ) TᵀT + I) a = (β/γ) Tᵀ(z_{l+1} − b) + h`` for every row,
    starting at ``a = h``, for at most ``steps`` steps; a row stops once its
    residual fell by ``tolerance``. Each row's result depends on that
    row alone, whatever the tile it is computed in.
    """

    layer: Conv2D
    weights: np.ndarray   # the next layer's W = [K, b]
    ratio: float          # β/γ
    steps: int
    tolerance: float = CG_TOLERANCE

    @classmethod
    def from_weights(cls, layer, W_next, gamma: float, beta: float, steps: int,
                     tolerance: float = CG_TOLERANCE) -> "CGActivationUpdate":
        return cls(layer, np.asarray(W_next), beta / gamma, int(steps), tolerance)

    def astype(self, dtype) -> "CGActivationUpdate":
        return replace(self, weights=self.weights.astype(dtype))

    def _normal(self, v, W, c):
        out = self.layer.adjoint(self.layer.linear(v, W), W)
        out *= c
        out += v
        return out

    def apply(self, h, z_next):
        """Return the new activations a_l from ``h = h(z_l)`` and ``z_{l+1}`` (eq. 6)."""
        W = self.weights.astype(h.dtype, copy=False)
        c = h.dtype.type(self.ratio)
        a = h.copy()
        r = self.layer.adjoint(z_next - self.layer.bias_row(W) - self.layer.linear(h, W), W)
        r *= c                                   # r₀ = rhs − A h = (β/γ) Tᵀ(z − b − T h)
        p = r.copy()
        rs = np.einsum("ij,ij->i", r, r)
        stop = rs * self.tolerance ** 2
        for _ in range(self.steps):
            active = rs > stop
            if not active.any():
                break
            Ap = self._normal(p, W, c)
            pAp = np.einsum("ij,ij->i", p, Ap)
            alpha = np.where(active & (pAp > 0), rs / np.where(pAp > 0, pAp, 1), 0).astype(h.dtype)
            a += alpha[:, None] * p
            r -= alpha[:, None] * Ap
            rs_new = np.einsum("ij,ij->i", r, r)
            p = r + np.where(active, rs_new / np.where(rs > 0, rs, 1), 0).astype(h.dtype)[:, None] * p
            rs = np.where(active, rs_new, rs)
        return a


def a_update_steps(layer: Conv2D, cg_steps: int | None) -> int:
    """Return the CG steps of the a-update below ``layer`` (0: exact); ``None`` picks by image size."""
    if cg_steps is None:
        return 0 if layer.n_in <= EXACT_VALUES else CG_STEPS
    if cg_steps == 0 and 8 * layer.n_in ** 2 > EXACT_MAX_BYTES:
        raise InputError(f"cg_steps 0 (exact a-update) would invert a {layer.n_in}x{layer.n_in} matrix below a "
                         f"{layer.channels}-channel convolution; use --cg-steps {CG_STEPS} or so")
    return int(cg_steps)
