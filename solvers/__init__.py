"""The mathematics of training: NumPy/SciPy only, no Dask, no I/O.

Solvers are looked up by name in :data:`SOLVERS`. A solver provides chunk
kernels ``kernel(x, y, state, start_row, params) -> (new_state, sums)``, its
client step (``initialize``, ``advance``, ``resume``: which passes an
iteration runs and the small solves between them, see :mod:`solvers.loop`)
and the per-sample arrays it keeps (``state_widths``, empty when it keeps
none). Adding a solver is one module and one line here; one that also fits
regression lists it in its ``tasks`` attribute (see :mod:`solvers.tasks`) and
is built by :func:`make_solver`.
"""
import numpy as np

from solvers.admm import ADMMSolver
from solvers.dladmm import DLADMMSolver
from solvers.errors import InputError
from solvers.gauss_newton import GaussNewtonSolver

SOLVERS = {
    "admm": ADMMSolver,
    "gauss-newton": GaussNewtonSolver,
    "dladmm": DLADMMSolver,
}


def make_solver(config, n_features: int, *, x_mean, x_scale, classes=None, y_mean=None, y_scale=None,
                dtype=np.float32):
    """Return the solver ``config.solver`` for ``config.task``: over ``classes``, or with the target scaling ȳ, s_y."""
    cls = SOLVERS[config.solver]
    if config.task == "classification":
        return cls(config, n_features, classes, x_mean, x_scale, dtype=dtype)
    if config.task not in getattr(cls, "tasks", ("classification",)):
        able = sorted(name for name, c in SOLVERS.items() if config.task in getattr(c, "tasks", ()))
        raise InputError(f"the {config.solver} solver does not fit {config.task}; use --solver "
                         + " or ".join(able))
    return cls(config, n_features, None, x_mean, x_scale, dtype=dtype, y_mean=y_mean, y_scale=y_scale)
