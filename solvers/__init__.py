"""The mathematics of training: NumPy/SciPy only, no Dask, no I/O.

Solvers are looked up by name in :data:`SOLVERS`, which imports a solver's
module the first time it is asked for (importing :mod:`solvers.errors` or
:mod:`solvers.config` loads no solver). A solver provides chunk
kernels ``kernel(x, y, state, start_row, params) -> (new_state, sums)``, its
client step (``initialize``, ``advance``, ``resume``: which passes an
iteration runs and the small solves between them, see :mod:`solvers.loop`)
and the per-sample arrays it keeps (``state_widths``, empty when it keeps
none). Adding a solver is one module and one line here; one that also fits
regression lists it in its ``tasks`` attribute (see :mod:`solvers.tasks`) and
is built by :func:`make_solver`.
"""
import importlib
from collections.abc import MutableMapping
from dataclasses import replace

import numpy as np

from solvers.errors import InputError


class _Registry(MutableMapping):
    """``{name: solver class}`` whose values may be given as ``"module:Class"``, imported when first read."""

    def __init__(self, entries: dict):
        self._entries = dict(entries)

    def __getitem__(self, name):
        value = self._entries[name]
        if isinstance(value, str):
            module, _, attr = value.partition(":")
            value = self._entries[name] = getattr(importlib.import_module(module), attr)
        return value

    def __setitem__(self, name, value):
        self._entries[name] = value

    def __delitem__(self, name):
        del self._entries[name]

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)


SOLVERS = _Registry({
    "admm": "solvers.admm:ADMMSolver",
    "gauss-newton": "solvers.gauss_newton:GaussNewtonSolver",
    "dladmm": "solvers.dladmm:DLADMMSolver",
    "consensus": "solvers.consensus:ConsensusSolver",
    "consensus,gauss-newton": "solvers.handover:HandOverSolver",
})

# solvers whose convolutional ``--layers`` run in a subclass of their own (same name, same client step)
CONV_VARIANTS = {"gauss-newton": "solvers.conv_gauss_newton:ConvGaussNewtonSolver"}


def make_solver(config, n_features: int, *, x_mean, x_scale, classes=None, y_mean=None, y_scale=None,
                dtype=np.float32):
    """Return the solver ``config.solver`` for ``config.task``: over ``classes``, or with the target scaling ȳ, s_y.

    ``auto`` is resolved by :meth:`solvers.config.TrainConfig.choose_solver` when a run is created; a config
    still holding it (no data size known) gets Gauss-Newton.
    """
    if config.solver == "auto":
        config = replace(config, solver="gauss-newton")
    cls = SOLVERS[config.solver]
    if config.layers and config.solver in CONV_VARIANTS:  # convolutional --layers: the solver's conv kernels
        module, _, attr = CONV_VARIANTS[config.solver].partition(":")
        cls = getattr(importlib.import_module(module), attr)
    if config.task == "classification":
        return cls(config, n_features, classes, x_mean, x_scale, dtype=dtype)
    if config.task not in cls.tasks:
        able = sorted(name for name, c in SOLVERS.items() if config.task in c.tasks)
        raise InputError(f"the {config.solver} solver does not fit {config.task}; use --solver "
                         + " or ".join(able))
    return cls(config, n_features, None, x_mean, x_scale, dtype=dtype, y_mean=y_mean, y_scale=y_scale)
