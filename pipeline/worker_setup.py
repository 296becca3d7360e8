"""Preloaded into the embedded local cluster's worker processes (``--cluster local``).

Ctrl-C reaches every process of the terminal's process group; the driver
(:mod:`pipeline.signals`) shuts the workers down itself, so they ignore SIGINT
instead of each printing a KeyboardInterrupt traceback.
"""
import signal


def dask_setup(worker):
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the process's main thread: nothing to change
        pass
