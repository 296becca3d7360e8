"""Thread CPU of one row tile's im2col kernels: patches built window by window or offset by offset, and the products.

:meth:`solvers.conv.Conv2D.patches` builds a one-channel layer's patches as ``Pᵀ``, one kernel offset at a
time (NumPy then copies runs of ``W'`` values, not of ``kw·C``), and returns P in Fortran order. This
script times, on random rows of the README network's two convolutions (one tile: 72 rows, one BLAS
thread), both builds and the products that read them: ``z = P Wᵀ``, the Gram ``PᵀP`` and the gradient
product as ``dᵀP`` and ``(Pᵀd)ᵀ``.

Run::

    python benchmarks/conv_kernels.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from solvers.conv import Conv2D  # noqa: E402


def by_window(layer, a):
    """Return ``[P, 1]`` built as before session 9: every window copied, C order."""
    n = a.shape[0]
    (H, W, C), (ho, wo, _) = layer.in_shape, layer.out_shape
    win = sliding_window_view(a.reshape(n, H, W, C), (layer.kh, layer.kw), axis=(1, 2))[:, ::layer.stride, ::layer.stride]
    out = np.empty((n, ho, wo, layer.fan_in + 1), a.dtype)
    out[..., -1] = 1
    out[..., :-1].reshape(n, ho, wo, layer.kh, layer.kw, C)[...] = win[:, :ho, :wo].transpose(0, 1, 2, 4, 5, 3)
    return out.reshape(n * ho * wo, layer.fan_in + 1)


def ms(f, reps: int = 300) -> float:
    f()
    t = time.thread_time()
    for _ in range(reps):
        f()
    return (time.thread_time() - t) / reps * 1e3


def row(layer, name: str, build, a, W, rng) -> str:
    """Return the table row of one build (``build(layer, a)``, or None for ``layer.patches(a, ones=True)``)."""
    def make():
        return layer.patches(a, ones=True) if build is None else build(layer, a)
    P = make()
    d = rng.standard_normal((P.shape[0], layer.channels)).astype(np.float32)
    return (f"| {layer.in_shape} → {layer.channels} | {name} | {'F' if P.flags.f_contiguous else 'C'} | "
            f"{ms(make):.3f} | {ms(lambda: P @ W.T):.3f} | {ms(lambda: P.T @ P):.3f} | "
            f"{ms(lambda: d.T @ P):.3f} | {ms(lambda: (P.T @ d).T):.3f} |")


def main() -> int:
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    print("| layer | build | memory order | patches ms | z = P Wᵀ ms | PᵀP ms | dᵀP ms | (Pᵀd)ᵀ ms |")
    print("|---|---|---|---|---|---|---|---|")
    with threadpool_limits(1):
        for layer in (Conv2D((28, 28, 1), 8, 5, 5), Conv2D((12, 12, 8), 16, 5, 5)):
            a = rng.standard_normal((72, layer.n_in)).astype(np.float32)
            W = rng.standard_normal(layer.weight_shape).astype(np.float32)
            for name, build in (("by window", by_window), ("patches()", None)):
                print(row(layer, name, build, a, W, rng))
    return 0


if __name__ == "__main__":
    sys.exit(main())
