"""What every solver shares: the layer widths and task of a run, He initialisation, row tiles, the network."""
from __future__ import annotations

import numpy as np

from solvers.activations import ACTIVATIONS
from solvers.config import TrainConfig
from solvers.network import Network
from solvers.tasks import make_task

TILE_ROWS = 4096  # rows per tile inside a chunk: keeps elementwise work in cache


def row_tiles(n: int, tile: int = TILE_ROWS):
    """Yield row slices of at most ``tile`` rows covering ``range(n)``."""
    for start in range(0, n, tile):
        yield slice(start, min(start + tile, n))


class SolverBase:
    """The settings, task, widths ``(d, n_1, …, n_L)`` and input scaling a solver is built from."""

    tasks = ("classification", "regression")

    def __init__(self, config: TrainConfig, n_features: int, classes, x_mean, x_scale,
                 dtype=np.float32, y_mean=None, y_scale=None):
        self.config = config
        self.task = make_task(config.task, classes, y_mean, y_scale)  # regression: classes None, y scaling
        self.classes, self.n_classes = self.task.classes, self.task.n_classes
        self.act = ACTIVATIONS[config.activation]
        self.widths = (int(n_features), *config.hidden, self.task.n_outputs)
        self.L = len(self.widths) - 1
        self.dtype = np.dtype(dtype)
        self.x_mean = np.asarray(x_mean, np.float64)
        self.x_scale = np.asarray(x_scale, np.float64)

    def network(self, weights) -> Network:
        """Return the trained network for the weights ``W_1..W_L`` (bias in the last column)."""
        return Network([np.asarray(W) for W in weights], self.config.activation, self.classes,
                       self.x_mean, self.x_scale, self.dtype.type, self.task.y_mean, self.task.y_scale)

    def he_weights(self, layers: int) -> list:
        """Return He-scaled random ``W_1..W_layers`` with zero biases, seeded by ``config.seed``."""
        rng = np.random.default_rng([self.config.seed, 0])
        out = []
        for l in range(1, layers + 1):
            fan_in = self.widths[l - 1]
            W = np.zeros((self.widths[l], fan_in + 1))
            W[:, :-1] = rng.normal(0.0, np.sqrt(self.act.he_gain / fan_in), size=(self.widths[l], fan_in))
            out.append(W)
        return out
