"""The trained network of a run store, built from its stored settings, scaling and checkpoint."""
from __future__ import annotations

from solvers import SOLVERS
from solvers.config import TrainConfig
from solvers.layers import build_layers
from solvers.network import Network
from storage.runstore import RunStore


def load_network(path) -> Network:
    """Return the network of a run store: the best held-out iteration with early stopping, else the last."""
    run = RunStore.open(path)
    ck = run.load_checkpoint()
    m = run.model_arrays()
    weights = ck.best_weights or ck.weights
    config = TrainConfig.from_dict(run.attrs["config"])
    layers = build_layers(config.layer_specs(), len(m["x_mean"]), len(weights[-1]), config.input_shape)
    iteration = run.model_iteration()
    record = next((r for r in (run.manifest() or {}).get("history", []) if r.get("iteration") == iteration), None)
    classes = m.get("classes")
    link = SOLVERS[config.solver].output_link(config, None if classes is None else len(classes), record)
    return Network(weights, config.activation, classes, m["x_mean"], m["x_scale"],
                   y_mean=m.get("y_mean"), y_scale=m.get("y_scale"), layers=layers, link=link)


def labelled_network(path) -> Network:
    """Return :func:`load_network` with the original class labels as its classes (text labels, an estimator's
    labels: :mod:`pipeline.labels`), so its predictions are labels, not the codes the data store holds."""
    from dataclasses import replace

    from pipeline.labels import run_labels

    network = load_network(path)
    labels = None if network.is_regressor else run_labels(RunStore.open(path).attrs)
    return network if labels is None else replace(network, classes=labels)
