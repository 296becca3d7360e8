"""Row widths of image maps: a row holds one ``(H, W, C)`` image, flattened."""
from __future__ import annotations

import math


class ImageShapes:
    """``n_in``/``n_out``, the flat row widths of a map from ``in_shape`` to ``out_shape`` images."""

    @property
    def n_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_shape)
