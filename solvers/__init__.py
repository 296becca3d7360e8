"""The mathematics of ADMM training: NumPy/SciPy only, no Dask, no I/O.

Solvers are looked up by name in :data:`SOLVERS`; a solver provides chunk
kernels (``init_chunk``, ``grams_chunk``, ``step_chunk``), its client step
(``solve``, ``step_params``, ``metrics``) and the per-sample arrays it keeps
(``state_widths``). Adding a solver is one module and one line here.
"""
from solvers.admm import ADMMSolver
from solvers.gauss_newton import GaussNewtonSolver

SOLVERS = {
    "admm": ADMMSolver,
    "gauss-newton": GaussNewtonSolver,
}
