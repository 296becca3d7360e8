"""Least-squares steps of ADMM: bias-augmented products, the W-solve, the a-update.

Arrays are sample-major: a layer's activations ``a`` have shape
``(n_samples, width)``, weights ``W_l`` have shape ``(n_l, n_{l−1} + 1)`` whose
last column is the bias (the paper's ``W a`` with a constant-one row appended
to ``a``). Chunk products run in the chunk's dtype (float32 BLAS in the
pipeline) and are accumulated in float64.
"""
from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from solvers.errors import NumericalError

_blas = None  # threadpoolctl.ThreadpoolController of this process, made at first use
_scratch = threading.local()  # each thread's reusable work arrays (:func:`scratch`)


def one_blas_thread():
    """Return a context holding BLAS to one thread; the libraries are looked up once per process.

    Chunk tasks (one per Dask thread) and the client's small solves run in it:
    ``threadpoolctl.threadpool_limits`` looks the libraries up at every call
    (~1.3 ms), and a 300 × 300 Cholesky on two OpenBLAS threads took 0.6 s
    while other processes held the cores (one thread: about 1 ms).
    """
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    return _blas.limit(limits=1)


def single_threaded(fn):
    """Decorate a client-side solve of small matrices to run on one BLAS thread (:func:`one_blas_thread`)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with one_blas_thread():
            return fn(*args, **kwargs)
    return wrapper


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


def scratch(name: str, rows: int, cols: int, dtype) -> np.ndarray:
    """Return this thread's reusable ``rows × cols`` work array ``name`` (C-contiguous; contents undefined).

    A chunk kernel's temporaries of one row tile (a ReLU mask, a stacked Gram
    operand) live here instead of in a fresh array per tile: a fresh array of
    a few MiB is new pages for the allocator to fault in and zero. The array is
    the first ``rows`` rows of one kept per thread and name (grown when a tile is
    larger), so it is only valid until this thread asks for ``name`` again.
    """
    bufs = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = {}
    dtype = np.dtype(dtype)
    buf = bufs.get(name)
    if buf is None or buf.shape[1] != cols or buf.dtype != dtype or buf.shape[0] < rows:
        buf = bufs[name] = np.empty((rows, cols), dtype)
    return buf[:rows]


def relu_curvature_sums(a, x, r):
    """Return (``MᵀM``, ``Mᵀ(x ⊙ r)``) in float64, ``M = 1[a[:, :-1] > 0]`` the ReLU mask of ``ã = [a, 1]``.

    Gauss-Newton's pass B of a one-hidden-layer ReLU network with one output:
    ``S_1 = MᵀM`` and ``D_1 = w̃ ⊙ Mᵀ(r ã_0)`` (``x`` = ã_0, ``r`` the residual
    column). One SYRK of ``[M, x ⊙ r]`` in the chunk's dtype instead of a SYRK of
    ``M`` and a GEMM: the same products in one BLAS call (a 300 + 29 wide SYRK
    ran 6 % faster than the two calls on one 4096-row tile), and neither ``M``
    nor the stacked operand is a fresh array (:func:`scratch`). ``MᵀM`` holds
    integer counts (exact in float32 up to 2²⁴ rows), so it is bitwise the
    separate SYRK's; ``Mᵀ(x ⊙ r)`` is the same dot products summed by the SYRK kernel
    in its own order: equal to the separate GEMM's to float32 rounding (bitwise on the
    benchmark's shapes only; at 1000 rows × 64 hidden × 11 inputs they differ by 7e-7 relatively).
    """
    n, k = a.shape[0], a.shape[1] - 1
    B = scratch("relu_curvature", n, k + x.shape[1], a.dtype)
    whole = leading_block(a)  # compared whole: NumPy runs a column slice's comparison through buffers, ~1.7x slower
    mask = scratch("relu_mask", n, whole.shape[1], np.bool_)
    np.greater(whole, 0, out=mask)
    np.copyto(B[:, :k], mask[:, :k])
    np.multiply(x, r, out=B[:, k:])
    G = B.T @ B  # one SYRK: numpy sees the transposed operand of one buffer
    return G[:k, :k].astype(np.float64), G[:k, k:].astype(np.float64)


def leading_block(a):
    """Return the C-contiguous array whose first columns are ``a`` (``a`` itself when it is C-contiguous).

    A hidden layer's activations can be the leading columns of a wider buffer (:func:`gram_and_cross`'s operand,
    kept as they are by :mod:`solvers.activation_cache`); an elementwise pass over the whole buffer is one
    contiguous loop, over the column slice a strided one.
    """
    if a.flags.c_contiguous:
        return a
    b = a.base
    if (isinstance(b, np.ndarray) and b.ndim == 2 and b.flags.c_contiguous and b.dtype == a.dtype
            and b.shape[0] == a.shape[0] and b.strides == a.strides and b.shape[1] >= a.shape[1]
            and b.__array_interface__["data"][0] == a.__array_interface__["data"][0]):
        return b
    return a


def gram_and_cross(stacked, k: int):
    """Return (``ãᵀã``, ``Tᵀã``) in float64 from one SYRK of ``stacked = [ã, T]`` (ã its first ``k`` columns).

    Gauss-Newton's pass A sums the output layer's Gram and cross product of the last hidden layer's activations
    ``ã`` (with their ones column) and the targets T (1 to K columns). With T beside ã in one buffer
    (:meth:`solvers.gauss_newton.GaussNewtonSolver._hidden_forward`), the two products are one BLAS call: the thin
    ``Tᵀã`` (a GEMV for one output) no longer reads the 4.9 MB tile of activations a second time, and costs
    K/k more of the SYRK. ``ãᵀã`` is the separate SYRK's, bitwise (the same dot products in the same blocks:
    ``tests/test_linalg.py``); ``Tᵀã`` equals the separate product's to float32 rounding (the SYRK kernel's order).
    """
    G = stacked.T @ stacked  # one SYRK of the whole buffer
    return G[:k, :k].astype(np.float64), G[k:, :k].astype(np.float64)


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


@single_threaded
def solve_weights(cross, gram, ridge: float, *, what: str = "W", setting: str = "--ridge", alpha: float = 0.0,
                  check: bool = True):
    """Return ``W = (z aᵀ)(a aᵀ + ε·mean(diag)·I + α Ĩ)⁻¹`` (paper §5, eq. 9), the Gram checked by Cholesky.

    ``ridge`` is the relative ridge ε (a numerical floor); ``alpha`` the
    absolute weight decay α of ``α‖W̃‖²`` (Ĩ: the identity without the bias
    entry, so the bias is not penalised). Raises :class:`NumericalError` when the
    Grams are not finite or not positive definite; its message suggests a
    larger ``setting`` (the flag that sets ``ridge``). ``check=False`` skips the
    Cholesky test, for a Gram that is positive definite by construction (a sum of
    outer products plus a ridge well above rounding): at 785 × 785 it costs a
    third of the solve (7 of 31 ms on one thread).
    """
    if not (np.all(np.isfinite(cross)) and np.all(np.isfinite(gram))):
        raise NumericalError(
            f"{what}: the Gram matrices contain NaN or inf; the state diverged "
            f"(try a larger {setting} or standardised inputs)"
        )
    g = np.array(gram, dtype=np.float64)
    scale = float(np.mean(np.diag(g))) or 1.0
    g[np.diag_indices_from(g)] += ridge * scale
    if alpha:
        idx = np.arange(g.shape[0] - 1)
        g[idx, idx] += alpha
    try:
        if check:
            np.linalg.cholesky(g)  # the positive-definiteness check (NumPy's LAPACK: no SciPy import before iteration 1)
        return np.linalg.solve(g, np.asarray(cross, np.float64).T).T
    except np.linalg.LinAlgError as exc:
        raise NumericalError(
            f"{what}: the Gram is not positive definite ({exc}); use a larger {setting}"
        ) from None


HALVES_MIN_ROWS = 64  # halves_matmul splits products of at least this many rows …
HALVES_MIN_WORK = 2_000_000  # … and at least this many multiply-adds (rows × inner × columns)
_pair: ThreadPoolExecutor | None = None  # the thread that computes the second half (made at first use)
_pair_lock = threading.Lock()


def _forget_pair() -> None:
    """Drop the parent's helper thread in a forked child (it does not exist there: a submit would wait forever),
    and renew the locks a parent's thread may have held at the fork (the child would wait on them forever)."""
    global _pair, _pair_lock
    _pair, _pair_lock = None, threading.Lock()
    ShiftedGram._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pair)


def halves_matmul(a, b):
    """Return ``a @ b`` computed as its two row halves, the second in a helper thread (a large enough product).

    The client's solves run on one BLAS thread (:func:`single_threaded`) while the workers wait for their
    result, so the second core idles. Two threads each running a one-thread product of half the rows use it
    without OpenBLAS's own threads, whose spin-waits crawl when other processes hold the cores. The split is
    fixed by the shapes alone (at ``m // 2``; not by the threads free), and each half is an ordinary
    one-thread product, so the bits are the same whether the halves run side by side or one after the other.
    A smaller product is computed as it is (``a @ b``, on the caller's BLAS threads).
    (They differ from the unsplit product's in the last bits: OpenBLAS blocks a product by its shape.)
    """
    global _pair
    a, b = np.asarray(a), np.asarray(b)
    m = a.shape[0]
    if a.ndim != 2 or m < HALVES_MIN_ROWS or m * a.shape[1] * b.shape[-1] < HALVES_MIN_WORK:
        return a @ b
    if _pair is None:
        with _pair_lock:
            if _pair is None:
                _pair = ThreadPoolExecutor(1, thread_name_prefix="admm-dask-client-blas")
    out = np.empty((m, b.shape[-1]), np.result_type(a, b))
    h = m // 2
    with one_blas_thread():  # (BLAS's thread count is the process's: the helper's half runs on one thread too)
        second = _pair.submit(np.matmul, a[h:], b, out=out[h:])
        try:
            np.matmul(a[:h], b, out=out[:h])
        finally:  # a signal's exception here: the helper's half still ends before BLAS gets its threads back
            wait([second])
        second.result()
    return out


def spd_solve(S, D, damping: float, *, what: str = "S", setting: str = "--damping"):
    """Return ``(S + ε·mean(diag S)·I)⁻¹ D`` for a symmetric S checked positive definite by Cholesky (ε = ``damping``).

    The same system as ``solve_weights(Dᵀ, S, damping).T``, solved through the inverse of the damped S and a
    product (:func:`halves_matmul`): the 300 × 300 curvature factor with 785 right-hand sides took 12 ms by LU
    on one thread, the inverse and the product ~6 ms. For a damped, well-conditioned S the two agree to
    rounding (``tests/test_linalg.py``).
    """
    if not (np.all(np.isfinite(S)) and np.all(np.isfinite(D))):
        raise NumericalError(f"{what}: the Gram matrices contain NaN or inf; the state diverged "
                             f"(try a larger {setting} or standardised inputs)")
    s = np.array(S, dtype=np.float64)
    s[np.diag_indices_from(s)] += damping * (float(np.mean(np.diag(s))) or 1.0)
    with one_blas_thread():
        try:
            np.linalg.cholesky(s)
            inverse = np.linalg.inv(s)
        except np.linalg.LinAlgError as exc:
            raise NumericalError(f"{what}: the Gram is not positive definite ({exc}); use a larger {setting}") from None
        return halves_matmul(inverse, np.asarray(D, np.float64))


class ShiftedGram:
    """``left (G + c I)⁻¹`` for any shift c, from one eigendecomposition ``G = V E Vᵀ`` of a symmetric Gram.

    Gauss-Newton's first hidden layer steps with ``(G_0 + c I)⁻¹``, G_0 the input Gram Σ ã_0 ã_0ᵀ, which
    stays the same while the sample does, and only c (ε' ḡ and K-FAC's √(αn)/π) changes from step to step:
    ``V (E + c)⁻¹ Vᵀ`` then costs two products a step (:func:`halves_matmul`) in place of an LU solve
    (785 × 785 with 300 right-hand sides: ~30 ms on one thread; the products ~10 ms on two). The
    decomposition costs ~3 LU solves, made once per Gram: :meth:`of` keeps the last :data:`KEPT`, found by
    their exact values, so a resumed run decomposes the same Gram into the same bits. Only for Grams of at most
    :data:`MAX_WIDTH` rows (the decomposition's cost grows as n³ against a step's n², and the client keeps G and V):
    inputs of up to 1024 features.
    """

    KEPT = 1
    MAX_WIDTH = 1025
    _kept: list = []  # the last used last
    _lock = threading.Lock()

    def __init__(self, gram, *, what: str = "G"):
        g = np.array(gram, dtype=np.float64)
        if not np.all(np.isfinite(g)):
            raise NumericalError(f"{what}: the Gram matrices contain NaN or inf; the state diverged "
                                 "(try a larger --ridge or standardised inputs)")
        with one_blas_thread():
            self.e, self.V = np.linalg.eigh(g)
        self.gram = g
        self.mean_diag = float(np.mean(np.diag(g)))

    @classmethod
    def of(cls, gram, *, what: str = "G") -> "ShiftedGram":
        """Return the decomposition of ``gram``: a kept one whose Gram has the same values, else a new one (kept)."""
        g = np.asarray(gram, np.float64)
        with cls._lock:
            for kept in cls._kept:
                if kept.gram.shape == g.shape and np.array_equal(kept.gram, g):
                    cls._kept.remove(kept)
                    cls._kept.append(kept)
                    return kept
        made = cls(g, what=what)
        with cls._lock:
            cls._kept = [*cls._kept, made][-cls.KEPT:]
        return made

    def solve(self, left, extra: float, ridge: float, *, what: str = "G", setting: str = "--ridge"):
        """Return ``left (G + c I)⁻¹`` with ``c = extra + ridge · mean(diag(G + extra I))`` (as ``solve_weights(left,
        G + extra I, ridge)`` shifts it), left's rows at once."""
        c = float(extra) + ridge * ((self.mean_diag + float(extra)) or 1.0)
        d = self.e + c
        if not np.all(np.isfinite(left)):
            raise NumericalError(f"{what}: the Gram matrices contain NaN or inf; the state diverged "
                                 f"(try a larger {setting} or standardised inputs)")
        if np.any(d <= 0):
            raise NumericalError(f"{what}: the Gram is not positive definite; use a larger {setting}")
        with one_blas_thread():
            return halves_matmul(halves_matmul(np.asarray(left, np.float64), self.V) / d, self.V.T)


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
    @single_threaded
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


def penalty(W) -> float:
    """Return ``‖W̃‖²``, the squared Frobenius norm of W without its bias column (what ``alpha`` weighs)."""
    Wt = np.asarray(W, np.float64)[:, :-1]
    return float(np.sum(Wt * Wt))


def quadratic_error(W, cross, gram, tt: float) -> float:
    """Return ``Σ‖t − W ã‖² = Σ‖t‖² − 2⟨W, C⟩ + ⟨W G, W⟩`` from the sums ``C = Σ t ãᵀ``, ``G = Σ ã ãᵀ``."""
    W = np.asarray(W, np.float64)
    return max(float(tt) - 2.0 * float(np.sum(W * cross)) + float(np.sum((W @ gram) * W)), 0.0)


AUTO_RELATIVE_ALPHA = 1e-2  # the ADMM solvers' alpha="auto": α = 0.01 · mean diagonal of the Gram


def resolve_alpha(alpha, gram) -> float:
    """Return the absolute α of a W-solve: ``alpha``, or for ``"auto"`` 0.01 · the mean diagonal of ``gram``'s weights.

    The fixed rule of the ADMM solvers (their W-solves fit per-sample state, not
    the targets, so no held-out error can pick α): it is the relative ridge
    measured best for ADMM (``benchmarks/results/defaults.md``).
    """
    if alpha != "auto":
        return float(alpha)
    d = np.diag(np.asarray(gram, np.float64))[:-1]
    return AUTO_RELATIVE_ALPHA * (float(np.mean(d)) if d.size else 0.0)


ALPHA_GRID = np.concatenate([[0.0], np.logspace(-6, 1, 22)])  # α / ḡ tried by ``alpha="auto"``


class RidgePath:
    """Every ``W(α) = argmin_W Σ‖t − W ã‖² + α‖W̃‖²`` (bias unpenalised) from one pair of sums.

    With ``G = [[G_a, s], [sᵀ, n]]`` and ``C = [C_a, c]`` the bias is
    ``b = (c − W̃ s)/n`` and ``W̃ = C_c (G_c + (α + εḡ) I)⁻¹`` with the centred
    ``G_c = G_a − s sᵀ/n``, ``C_c = C_a − c sᵀ/n``; one eigendecomposition
    ``G_c = V E Vᵀ`` gives every α at the cost of a matrix product.
    ``ridge`` ε (relative to the mean diagonal ḡ of ``G_c``) is the numerical
    floor added to every α.
    """

    @single_threaded
    def __init__(self, cross, gram, ridge: float = 0.0, *, what: str = "W"):
        cross, gram = np.asarray(cross, np.float64), np.asarray(gram, np.float64)
        if not (np.all(np.isfinite(cross)) and np.all(np.isfinite(gram))):
            raise NumericalError(f"{what}: the Gram matrices contain NaN or inf; the state diverged "
                                 "(try a larger --ridge or standardised inputs)")
        n = gram[-1, -1]
        if n <= 0:
            raise NumericalError(f"{what}: no samples in the Gram")
        s, c = gram[:-1, -1], cross[:, -1]
        self.n, self.s, self.c = n, s, c
        Gc = gram[:-1, :-1] - np.outer(s, s) / n
        Cc = cross[:, :-1] - np.outer(c, s) / n
        self.gbar = float(np.mean(np.diag(Gc))) if Gc.size else 0.0
        self.gbar = self.gbar if self.gbar > 0 else 1.0
        self.floor = ridge * self.gbar
        self.e, self.V = np.linalg.eigh(Gc) if Gc.size else (np.zeros(0), np.zeros((0, 0)))
        self.e = np.maximum(self.e, 0.0)
        self.P = Cc @ self.V
        self.cross, self.gram = cross, gram

    def grid(self) -> np.ndarray:
        """Return the α values ``alpha="auto"`` chooses from: 0 and ḡ·10^[−6, 1]."""
        return ALPHA_GRID * self.gbar

    def weights(self, alpha: float) -> np.ndarray:
        """Return ``W(α)`` (bias in the last column)."""
        denom = self.e + float(alpha) + self.floor
        if np.any(denom <= 0):
            raise NumericalError("the Gram is singular; use a larger --ridge or --alpha")
        Wt = (self.P / denom) @ self.V.T
        b = (self.c - Wt @ self.s) / self.n
        return np.column_stack([Wt, b])

    def gcv(self, alpha: float, tt: float) -> float:
        """Return generalised cross-validation ``RSS / (n (1 − df/n)²)``, ``df = 1 + Σ e/(e + α)``."""
        rss = quadratic_error(self.weights(alpha), self.cross, self.gram, tt)
        df = 1.0 + float(np.sum(self.e / (self.e + float(alpha) + self.floor)))
        return rss / (self.n * max(1.0 - df / self.n, 1e-12) ** 2)

    @single_threaded
    def choose(self, tt: float, held_out=None, tolerance: float = 0.0) -> tuple[float, np.ndarray, float]:
        """Return (α, W(α), criterion) minimising the held-out error over :meth:`grid`.

        ``held_out`` is ``(C_v, G_v, Σ‖t_v‖²)`` of held-out samples: the
        criterion is their error ``Σ‖t_v − W(α) ã_v‖²``. Without them it is
        :meth:`gcv` on the training sums. Ties go to the larger α. With a
        ``tolerance`` τ the largest α whose criterion is within ``(1 + τ)`` of
        the least is taken (the one-standard-error rule's kind of choice: of
        the fits the held-out error cannot tell apart, the most regularised).
        """
        best, tried = None, []
        for alpha in self.grid()[::-1]:
            W = self.weights(alpha)
            crit = (quadratic_error(W, *held_out) if held_out is not None else self.gcv(alpha, tt))
            tried.append((float(alpha), W, crit))
            if best is None or crit < best[2] * (1 - 1e-12):
                best = (float(alpha), W, crit)
        if tolerance > 0:
            return next(t for t in tried if t[2] <= best[2] * (1 + tolerance))
        return best
