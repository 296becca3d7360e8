"""Layer types as linear maps on sample-major rows: dense and 2-D convolution.

Every layer computes its pre-activation ``z_l = T_l(a_{l−1}) + b_l`` with a
linear map ``T_l`` whose parameters, with the bias appended as the last
column, form the weight matrix ``W_l`` the W-solve returns (eq. 9):

* dense: ``W_l`` is ``(n_l, n_{l−1} + 1)`` and ``T_l a = a W̃ᵀ``;
* convolution (:mod:`solvers.conv`): ``W_l`` is ``(C_out, kh·kw·C_in + 1)``,
  one row per output channel, and ``T_l`` is the Toeplitz matrix of the
  kernel, applied through image patches (im2col).

A layer gives the W-solve its sums ``Σ [p, 1]ᵀ[p, 1]`` and ``Σ zᵀ[p, 1]``
over rows ``p`` of its input (dense: a sample; convolution: a patch, summed
over every sample and output position); a convolution also gives the
a-update below it its adjoint ``T_lᵀ``. Images are channel-last: a row holds an ``(H, W, C)`` image
flattened in C order, as the Zarr data stores hold MNIST's 784 pixels.

The architecture is written ``conv:8x5x5:s2:same,conv:16x3x3,dense:100``
(``--layers``): ``conv:C_OUTxKHxKW`` with optional ``:sS`` (stride, default
1) and ``:same``/``:valid`` (padding, default valid); ``pool:K`` (``K × K``
max pooling of the convolution before it, after its activation, or
``pool:K:avg`` for the mean: :mod:`solvers.pooling`); ``flatten`` (marks
where the images end: rows are flat already, so it changes nothing);
``dense:N`` or ``N``. A pooling is no layer of its own: it belongs to the
convolution it follows (``a_l = pool(h(z_l))``, :attr:`Conv2D.post`), so
weights, ``z_l`` and the layer count are those of the weighted layers.
The output layer (dense, one unit per class or target) is added by the task.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace


from solvers.conv import Conv2D
from solvers.errors import InputError
from solvers.pooling import Pool2D
from solvers.linalg import affine, cross_with_bias, gram_with_bias
from solvers.tiling import TILE_ROWS

LAYERS_SYNTAX = ("comma-separated layers, e.g. conv:8x5x5:s2:same,pool:2,conv:16x3x3,flatten,dense:100: "
                 "conv:C_OUTxKHxKW (or conv:C_OUTxK) with optional :sSTRIDE and :same or :valid "
                 "(default stride 1, valid), pool:K (max) or pool:K:avg after a convolution, flatten, "
                 "and dense:N or N")


@dataclass(frozen=True)
class DenseSpec:
    """A fully connected hidden layer of ``width`` units."""

    width: int

    @property
    def sizes(self) -> tuple:
        return (self.width,)

    def __str__(self) -> str:
        return f"dense:{self.width}"


@dataclass(frozen=True)
class ConvSpec:
    """A 2-D convolution with ``channels`` output channels, a ``kh × kw`` kernel, ``stride`` and ``padding``."""

    channels: int
    kh: int
    kw: int
    stride: int = 1
    padding: str = "valid"

    @property
    def sizes(self) -> tuple:
        return (self.channels, self.kh, self.kw, self.stride)

    def __str__(self) -> str:
        out = f"conv:{self.channels}x{self.kh}x{self.kw}"
        if self.stride != 1:
            out += f":s{self.stride}"
        return out + (":same" if self.padding == "same" else "")


@dataclass(frozen=True)
class PoolSpec:
    """Non-overlapping ``size × size`` pooling (``max`` or ``avg``) of the convolution before it."""

    size: int
    mode: str = "max"

    @property
    def sizes(self) -> tuple:
        return (self.size,)

    def __str__(self) -> str:
        return f"pool:{self.size}" + (":avg" if self.mode == "avg" else "")


@dataclass(frozen=True)
class FlattenSpec:
    """Where the images end and dense layers begin (rows are flat already: no computation)."""

    sizes = (1,)

    def __str__(self) -> str:
        return "flatten"


_POOL = re.compile(r"pool:(\d+)(?::(max|avg))?")
_CONV = re.compile(r"conv:(\d+)x(\d+)(?:x(\d+))?((?::[a-z0-9]+)*)")


def parse_layers(text: str) -> tuple:
    """Return the layer specs of an architecture string like ``conv:8x5x5:s2,dense:100`` (see module doc)."""
    specs = []
    for item in (s.strip().lower() for s in str(text).split(",")):
        if not item:
            continue
        plain = item.removeprefix("dense:")
        if plain.isdigit():
            specs.append(DenseSpec(int(plain)))
            continue
        if item == "flatten":
            specs.append(FlattenSpec())
            continue
        m = _POOL.fullmatch(item)
        if m is not None:
            specs.append(PoolSpec(int(m.group(1)), m.group(2) or "max"))
            continue
        m = _CONV.fullmatch(item)
        if m is None:
            raise InputError(f"cannot read layer {item!r}; expected {LAYERS_SYNTAX}")
        stride, padding = 1, "valid"
        for opt in filter(None, m.group(4).split(":")):
            if opt in ("same", "valid"):
                padding = opt
            elif re.fullmatch(r"s\d+", opt):
                stride = int(opt[1:])
            else:
                raise InputError(f"unknown option {opt!r} in layer {item!r}; expected {LAYERS_SYNTAX}")
        kh = int(m.group(2))
        specs.append(ConvSpec(int(m.group(1)), kh, int(m.group(3) or kh), stride, padding))
    for s in specs:
        if min(s.sizes) <= 0:
            raise InputError(f"layer {s} has a size of 0; sizes and strides must be positive")
    flat, prev = None, None
    for s in specs:
        if isinstance(s, (ConvSpec, PoolSpec)) and flat:
            raise InputError(f"layer {s} follows {flat}; convolutions and poolings must come first "
                             "(a dense layer's output has no image shape)")
        if isinstance(s, PoolSpec) and not isinstance(prev, ConvSpec):
            raise InputError(f"layer {s} must follow a convolution (it pools that convolution's activations), "
                             f"not {'the input' if prev is None else prev}")
        if isinstance(s, FlattenSpec) and not isinstance(prev, (ConvSpec, PoolSpec)):
            raise InputError("flatten must follow a convolution or a pooling")
        if not flat and isinstance(s, (DenseSpec, FlattenSpec)):
            flat = "a dense layer" if isinstance(s, DenseSpec) else "flatten"
        prev = s
    return tuple(specs)


def format_layers(specs) -> str:
    """Return the canonical architecture string of ``specs`` (inverse of :func:`parse_layers`)."""
    return ",".join(str(s) for s in specs)


def parse_shape(text) -> tuple[int, int, int]:
    """Return ``(H, W, C)`` from ``"28x28x1"``, ``"28x28"`` (one channel) or a sequence of 2 or 3 ints."""
    parts = str(text).lower().split("x") if isinstance(text, str) else list(text)
    try:
        dims = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        dims = ()
    if len(dims) == 2:
        dims = (*dims, 1)
    if len(dims) != 3 or min(dims) <= 0:
        raise InputError(f"input shape must be HxWxC with positive sizes, e.g. 28x28x1, got {text!r}")
    return dims


@dataclass(frozen=True)
class Dense:
    """A dense layer's map ``z = a W̃ᵀ + b`` on rows of ``n_in`` features."""

    n_in: int
    n_out: int
    max_tile_rows = TILE_ROWS
    is_dense = True
    post = None  # no pooling after a dense layer

    @property
    def n_next(self) -> int:
        return self.n_out

    @property
    def fan_in(self) -> int:
        return self.n_in

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.n_out, self.n_in + 1)

    def apply(self, a, W):
        """Return ``z = a W̃ᵀ + b``."""
        return affine(a, W)

    def gram(self, a):
        """Return ``Σ [a, 1]ᵀ[a, 1]`` (float64), the Gram of this layer's W-solve."""
        return gram_with_bias(a)

    def cross(self, z, a):
        """Return ``Σ zᵀ[a, 1]`` (float64), the cross product of this layer's W-solve."""
        return cross_with_bias(z, a)


def build_layers(specs, n_features: int, n_outputs: int, input_shape=()) -> list:
    """Return the maps of every layer: the hidden ``specs`` in order, then the dense output layer.

    ``input_shape`` ``(H, W, C)`` is needed when the first layer is a
    convolution; when empty, a square one-channel image is assumed if
    ``n_features`` is a square number.
    """
    maps, shape, n_in = [], None, int(n_features)
    if specs and isinstance(specs[0], ConvSpec):
        shape = _image_shape(input_shape, n_in)
    elif input_shape:
        shape = parse_shape(input_shape)
    for spec in specs:
        if isinstance(spec, FlattenSpec):
            continue
        if isinstance(spec, PoolSpec):  # the pooling of the convolution before it
            layer = replace(maps[-1], post=Pool2D(maps[-1].out_shape, spec.size, spec.mode))
            maps[-1] = layer
        elif isinstance(spec, ConvSpec):
            layer = Conv2D(shape, spec.channels, spec.kh, spec.kw, spec.stride, spec.padding)
            maps.append(layer)
        else:
            layer = Dense(n_in, spec.width)
            maps.append(layer)
        shape = getattr(layer, "next_shape", None)
        n_in = layer.n_next
    maps.append(Dense(n_in, int(n_outputs)))
    return maps


def _image_shape(input_shape, n_features: int) -> tuple[int, int, int]:
    if input_shape:
        shape = parse_shape(input_shape)
        if math.prod(shape) != n_features:
            raise InputError(f"input shape {'x'.join(map(str, shape))} has {math.prod(shape)} values, the data has "
                             f"{n_features} features per sample")
        return shape
    side = math.isqrt(n_features)
    if side * side != n_features:
        raise InputError(f"a convolution needs the image shape: the data's {n_features} features are not a square "
                         "one-channel image; pass --input-shape HxWxC (channel-last)")
    return (side, side, 1)


def conv_layers(specs) -> bool:
    """Return True if any of ``specs`` is a convolution."""
    return any(isinstance(s, ConvSpec) for s in specs)


def pool_layers(specs) -> bool:
    """Return True if any of ``specs`` is a pooling."""
    return any(isinstance(s, PoolSpec) for s in specs)

