"""Dask side of admm-dask: cluster start-up, chunk passes, the training loop, the CLIs and the Python API.

``from pipeline import ADMMClassifier, ADMMRegressor`` imports the
scikit-learn estimators lazily, so the command-line tools do not need
scikit-learn.
"""

import gc as _gc
import sys as _sys

__all__ = ["ADMMClassifier", "ADMMRegressor"]

# ``python -m pipeline.<command>``: while the interpreter locates the command's module, sys.argv[0] is "-m" (as
# documented for -m) and sys.orig_argv names the module; only our own commands qualify (a user's
# ``python -m their_package`` that imports this package keeps its collector as it is). The command's modules
# (NumPy, Dask, distributed, Zarr; pandas for ingest) then import with the cyclic garbage collector off: importing
# makes ~200 collections (20-50 ms a command) that find almost nothing (400-900 unreachable objects). The command's
# main turns it back on at once, first freezing the imported objects (:func:`pipeline.cli.collect_again`, called by
# :func:`pipeline.cli.exits_on_input_error`).
#
# The commands whose main turns the collector back on (exits_on_input_error); not a module without a main
# (``python -m pipeline.figures`` would run with the collector off for good: review17 L8)
COMMANDS = ("pipeline.ingest", "pipeline.train", "pipeline.predict", "pipeline.evaluate", "pipeline.report")


def _running_our_command() -> bool:
    """Return True while ``python -m pipeline.<command>`` locates its module (not for another ``-m`` target)."""
    argv = list(getattr(_sys, "orig_argv", ()))
    if _sys.argv[:1] != ["-m"] or "-m" not in argv:
        return False
    target = argv.index("-m") + 1
    return target < len(argv) and argv[target] in COMMANDS


IMPORTS_WITHOUT_GC = _running_our_command() and _gc.isenabled()
if IMPORTS_WITHOUT_GC:
    _gc.disable()


def __getattr__(name):
    if name in __all__:
        try:
            from pipeline import estimator
        except ModuleNotFoundError as exc:
            if exc.name != "sklearn":
                raise
            raise ImportError(f'{name} needs scikit-learn: pip install "admm-dask[sklearn]"') from exc
        return getattr(estimator, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
