"""Dask side of admm-dask: cluster start-up, chunk passes, the training loop, the CLIs and the Python API.

``from pipeline import ADMMClassifier, ADMMRegressor`` imports the
scikit-learn estimators lazily, so the command-line tools do not need
scikit-learn.
"""

__all__ = ["ADMMClassifier", "ADMMRegressor"]


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
