"""What every solver shares: the layers, widths and task of a run, He initialisation, the chunk plumbing, the network.

A chunk kernel standardises its raw rows (:meth:`SolverBase.inputs`), walks
them in row tiles (:meth:`SolverBase.tiled`: new state written tile by tile,
each tile's sums packed and added in order, overflow left to show as
non-finite sums) and takes the weights cast to the solver's dtype
(:meth:`SolverBase.cast`).
"""
from __future__ import annotations

import numpy as np

from solvers import data_init
from solvers.activations import ACTIVATIONS
from solvers.config import TrainConfig
from solvers.layers import build_layers
from solvers.loop import run_pass
from solvers.network import Network, standardize
from solvers.tiling import row_tiles, tile_rows
from solvers.tasks import make_task


class SolverBase:
    """The settings, task, layers, widths ``(d, n_1, …, n_L)`` and input scaling a solver is built from.

    ``layers[l − 1]`` is layer l's linear map (:mod:`solvers.layers`), ``widths[l]``
    the number of values of ``z_l`` per sample; ``tile_rows`` bounds a tile's
    im2col patches.
    """

    tasks = ("classification", "regression")
    sharded = False  # True: passes run one task per shard (``run_shard_rounds``) and keep per-shard state
    divergence_hint = "other --gamma/--beta (nearer the defaults) or a larger --ridge"  # resume with these

    def __init__(self, config: TrainConfig, n_features: int, classes, x_mean, x_scale,
                 dtype=np.float32, y_mean=None, y_scale=None):
        self.config = config
        self.task = make_task(config.task, classes, y_mean, y_scale)  # regression: classes None, y scaling
        self.classes, self.n_classes = self.task.classes, self.task.n_classes
        self.act = ACTIVATIONS[config.activation]
        self.layers = build_layers(config.layer_specs(), n_features, self.task.n_outputs, config.input_shape)
        self.widths = (int(n_features), *(layer.n_out for layer in self.layers))
        self.tile_rows = tile_rows(self.layers)
        self.L = len(self.widths) - 1
        self.dtype = np.dtype(dtype)
        self.x_mean = np.asarray(x_mean, np.float64)
        self.x_scale = np.asarray(x_scale, np.float64)

    def resume(self, runner, state, changed: set, history=()):
        """Return the loop state to continue from committed ``state`` (``changed``: the settings --resume changed;
        ``history``: the run's records, for a solver whose older stores lack a carry entry)."""
        raise NotImplementedError

    @classmethod
    def output_link(cls, config: TrainConfig, n_classes: int | None, record: dict | None = None) -> str:
        """Return how the outputs give class probabilities (:func:`solvers.scores.probabilities`): ``config.output_link()``.

        ``record`` is the history record of the iteration the weights are from (None: the initial weights);
        a schedule of solvers (the hand-over) answers by the phase it records.
        """
        return config.output_link()

    def network(self, weights, record: dict | None = None) -> Network:
        """Return the trained network for the weights ``W_1..W_L`` (bias in the last column) of iteration ``record``."""
        return Network([np.asarray(W) for W in weights], self.config.activation, self.classes,
                       self.x_mean, self.x_scale, self.dtype.type, self.task.y_mean, self.task.y_scale,
                       self.layers, self.output_link(self.config, self.n_classes, record))

    def cast(self, weights) -> tuple:
        """Return the weights ``W_1..`` in the solver's dtype, as the chunk kernels take them."""
        return tuple(np.asarray(W, self.dtype) for W in weights)

    def inputs(self, x_raw):
        """Return raw rows standardised: ``(x − x̄) / s`` in the solver's dtype."""
        return standardize(x_raw, self.x_mean, self.x_scale, self.dtype)

    def tiled(self, layout, n: int, tile_fn, state=None):
        """Return (new state, packed sums) of ``tile_fn(rows, tile_state) -> (new tile state or None, sums)``.

        ``tile_fn`` runs on the row tiles of a chunk of ``n`` rows, in order;
        ``tile_state`` holds those rows of ``state`` (None without one). The
        new state arrays are assembled from the tiles; the sums are packed by
        ``layout`` and added tile after tile. Overflow is not raised here: it
        shows as non-finite sums, which the loop reports.
        """
        new, total = {}, np.zeros(layout.size)
        with np.errstate(all="ignore"):
            for sl in row_tiles(n, self.tile_rows):
                out, sums = tile_fn(sl, None if state is None else {k: v[sl] for k, v in state.items()})
                for name, v in (out or {}).items():
                    if name not in new:
                        new[name] = np.empty((n, v.shape[1]), self.dtype)
                    new[name][sl] = v
                layout.add(total, sums)  # total += layout.pack(sums), without the packed temporary
        return new, total

    def initial_weights_of(self, runner, layers: int) -> list:
        """Return ``W_1..W_layers`` to start from: He-scaled random, W_1 from the data for ``init="data"``.

        ``init="data"`` (:mod:`solvers.data_init`) reads the picked training rows in one pass of ``runner``.
        """
        weights = self.he_weights(layers)
        if self.config.resolved_init() != "data" or not layers or self.L == 1:  # W_1 is a hidden layer's
            return weights
        k, d = weights[0].shape[0], self.widths[0]
        if not data_init.fits(2 * k, d):  # too wide to gather in one pass: He rows
            return weights
        rows = data_init.pick_rows(runner.bounds, 2 * k, self.config.seed, getattr(runner, "split", None))
        sums = run_pass(runner, data_init.layout(2 * k, d), "rows_chunk", rows, 0)
        weights[0] = data_init.first_layer(sums["rows"], weights[0], self.act.he_gain)
        return weights

    def rows_chunk(self, x_raw, y, state, row_numbers, rows):
        """Return (None, the chunk's standardised rows among the global row numbers ``rows``, in their slots).

        ``row_numbers`` are the global row numbers of ``x_raw``'s rows (``row_numbers`` below).
        """
        sums = data_init.rows_kernel(self.inputs(x_raw), row_numbers, rows)
        return None, data_init.layout(len(rows), x_raw.shape[1]).pack(sums)

    rows_chunk.row_numbers = True  # the runners pass the rows' global numbers in place of the chunk's start

    def glorot_bound(self, layer) -> float:
        """Return Glorot's bound ``√(f/(fan_in + fan_out))`` of ``layer``: f = 2 for a sigmoid hidden activation, else 6."""
        factor = 2.0 if self.act.name == "sigmoid" else 6.0
        return np.sqrt(factor / (layer.fan_in + layer.weight_shape[0]))

    def glorot_weights(self, layers: int) -> list:
        """Return Glorot-uniform ``W_1..W_layers``: weights and biases ~ U(±√(f/(fan_in + fan_out))), seeded by ``config.seed``.

        scikit-learn's ``MLPClassifier`` start (its ``_init_coef``: f = 6, 2 for a sigmoid hidden activation), dense layers.
        """
        rng = np.random.default_rng([self.config.seed, 0])
        out = []
        for layer in self.layers[:layers]:
            fan_out = layer.weight_shape[0]
            bound = self.glorot_bound(layer)
            W = np.empty(layer.weight_shape)
            W[:, :-1] = rng.uniform(-bound, bound, size=(fan_out, layer.fan_in))
            W[:, -1] = rng.uniform(-bound, bound, size=fan_out)
            out.append(W)
        return out

    def he_weights(self, layers: int, biases: bool = False) -> list:
        """Return He-scaled random ``W_1..W_layers``, seeded by ``config.seed``: biases 0, or (``biases``) Glorot's.

        ``biases``: each layer's biases ~ U(±√(f/(fan_in + fan_out))) as :meth:`glorot_weights` draws them,
        from a second stream (seed, 1), so the weights are the zero-bias start's exactly.
        """
        rng = np.random.default_rng([self.config.seed, 0])
        brng = np.random.default_rng([self.config.seed, 1])
        out = []
        for layer in self.layers[:layers]:
            W = np.zeros(layer.weight_shape)
            W[:, :-1] = rng.normal(0.0, np.sqrt(self.act.he_gain / layer.fan_in), size=(W.shape[0], layer.fan_in))
            if biases:
                bound = self.glorot_bound(layer)
                W[:, -1] = brng.uniform(-bound, bound, size=W.shape[0])
            out.append(W)
        return out
