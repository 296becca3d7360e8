"""Dask side of admm-dask: cluster start-up, chunk passes, the training loop, the CLIs and the Python API.

``from pipeline import ADMMClassifier`` imports the scikit-learn estimator
lazily, so the command-line tools do not need scikit-learn.
"""

__all__ = ["ADMMClassifier"]


def __getattr__(name):
    if name == "ADMMClassifier":
        try:
            from pipeline.estimator import ADMMClassifier
        except ModuleNotFoundError as exc:
            if exc.name != "sklearn":
                raise
            raise ImportError('ADMMClassifier needs scikit-learn: pip install "admm-dask[sklearn]"') from exc
        return ADMMClassifier
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
