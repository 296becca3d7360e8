"""Item-aligned NumPy arrays out of Dask messages, so results do not depend on where bytes land.

Distributed deserialises arrays zero-copy from the message frames, and a frame
can start at any byte. An array whose address is not a multiple of its item
size is *unaligned*, and NumPy then runs its own loops instead of BLAS for
products (``W @ s``) and reductions: the rounding differs by an ulp. The same
client step on the same sums then gave weights 1 ulp apart from run to run,
which broke bitwise-exact resume on process workers. :func:`aligned` copies
just the unaligned arrays; aligned ones pass through untouched.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np


def aligned(obj):
    """Return ``obj`` with every unaligned ndarray in it (lists, tuples, dicts, dataclasses) replaced by a copy."""
    if isinstance(obj, np.ndarray):
        return obj if obj.flags.aligned else obj.copy()
    if isinstance(obj, (list, tuple)):
        items = [aligned(x) for x in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        return type(obj)(items) if type(obj) in (list, tuple) else type(obj)(*items)  # namedtuples too
    if isinstance(obj, dict):
        items = {k: aligned(v) for k, v in obj.items()}
        return obj if all(items[k] is v for k, v in obj.items()) else type(obj)(items)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changed = {f.name: v for f in dataclasses.fields(obj)
                   if (v := aligned(getattr(obj, f.name))) is not getattr(obj, f.name)}
        if not changed:
            return obj
        out = copy.copy(obj)
        for name, value in changed.items():
            object.__setattr__(out, name, value)  # frozen dataclasses too
        return out
    return obj
