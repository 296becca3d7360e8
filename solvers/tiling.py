"""How rows are cut: sample chunks (one task each) and the tiles a kernel walks inside a chunk.

A chunk is rows ``[start, stop)`` of the data store; a tile is at most
``TILE_ROWS`` rows of a chunk (fewer when a convolution's im2col patch
matrix of ``rows × positions × fan_in`` float32 values would pass ``TILE_BYTES``).
"""
from __future__ import annotations

TILE_ROWS = 4096          # rows per tile inside a chunk: keeps elementwise work in cache
TILE_BYTES = 4 * 2 ** 20  # largest im2col patch matrix of one tile (float32): 72 MNIST rows for a 5x5 conv
# (64 MiB, 1165 rows, cost convolutional Gauss-Newton 1.4x the CPU: every array of a tile was a fresh mmap
# whose pages the kernel faults in and zeroes; benchmarks/results/conv_profile_s5.md)


def chunk_bounds(n: int, chunk_rows: int | None) -> list[tuple[int, int]]:
    """Return (start, stop) row bounds of chunks of ``chunk_rows`` rows (one chunk if None)."""
    step = n if not chunk_rows else int(chunk_rows)
    return [(s, min(s + step, n)) for s in range(0, n, step)]


def tile_rows(layers) -> int:
    """Return the rows per tile that keep every layer's im2col patches under ``TILE_BYTES``."""
    return max(1, min(layer.max_tile_rows for layer in layers))


def row_tiles(n: int, tile: int = TILE_ROWS):
    """Yield row slices of at most ``tile`` rows covering ``range(n)``."""
    for start in range(0, n, tile):
        yield slice(start, min(start + tile, n))
