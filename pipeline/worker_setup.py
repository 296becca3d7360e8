"""Preloaded into the embedded local cluster's worker processes (``--cluster local``).

Ctrl-C reaches every process of the terminal's process group; the driver
(:mod:`pipeline.signals`) shuts the workers down itself, so they ignore SIGINT
instead of each printing a KeyboardInterrupt traceback.

Each worker also starts importing the modules its first task needs
(:data:`WARM_MODULES`, ~1 s: Zarr, the pass tasks, the solvers) in a
background thread as it starts, while the client starts up and opens the
stores, instead of when the first task arrives. A task that needs them
meanwhile waits on Python's import lock: nothing runs half-imported.
"""
import importlib
import signal
import threading

WARM_MODULES = ("pipeline.passes", "solvers.consensus", "solvers.gauss_newton")


def warm_imports(modules=WARM_MODULES) -> None:
    """Import ``modules`` (a failure is left for the first task that needs the module to report)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 -- the task that imports it raises the real error
            pass


def dask_setup(worker):
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the process's main thread: nothing to change
        pass
    threading.Thread(target=warm_imports, name="admm-dask-warm-imports", daemon=True).start()
