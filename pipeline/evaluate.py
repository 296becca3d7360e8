"""``python -m pipeline.evaluate``: accuracy (a regression: R² and RMSE) of a trained run on a data store, out of core."""
from __future__ import annotations

import argparse
import json
import sys

from pipeline.cli import ArgumentParser, add_cluster_arguments, connect_from_args, exit_process, exits_on_input_error
from pipeline.signals import done_with_cluster, exit_on_signals


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m pipeline.evaluate",
                                description="Report the accuracy (a regression run: R² and RMSE) of a run's model "
                                            "(the iteration train named as the model: the best held-out one, else "
                                            "the last) on a data store.")
    p.add_argument("--store", required=True, help="run store written by python -m pipeline.train")
    p.add_argument("--data", required=True, help="data store to evaluate on (made by python -m pipeline.ingest)")
    p.add_argument("--json", action="store_true", help="print one JSON object (accuracy, log_loss, roc_auc for two classes, "
                                                     "n_samples, n_correct, iteration, unseen_labels; a regression: r2, rmse, "
                                                     "n_samples, iteration)")
    add_cluster_arguments(p)
    return p


def check_inputs(store, data):
    """Return the run's network and the labelled data store of its width, or raise :class:`InputError`.

    The network's classes are the store's codes of the run's labels (:func:`pipeline.labels.codes_in`): a store
    ingested on its own scores by label; text labels against numeric ones by the numbers' plain text ('1' is 1),
    refused here when they have no label in common.
    """
    from dataclasses import replace

    from pipeline.labels import codes_in, run_labels
    from pipeline.model import load_network
    from solvers.errors import InputError
    from storage.data import open_data
    from storage.runstore import RunStore

    network = load_network(store)
    ds = open_data(data)
    ds.require_labels("evaluate")
    if ds.n_features != len(network.x_mean):
        raise InputError(f"{ds.path} has {ds.n_features} features, the model expects {len(network.x_mean)}")
    if not network.is_regressor:
        network = replace(network, classes=codes_in(ds, network.classes, run_labels(RunStore.open(store).attrs)))
    return network, ds


def unseen_labels(client, network, ds) -> dict:
    """Return {label: rows} of the labels in data store ``ds`` that are not among the run's classes (counted wrong).

    From the labels the store recorded when it was written when they are all known classes (no pass over the
    data); else one pass over ``y`` (:func:`pipeline.passes.other_labels_graph`: small counts per chunk).
    """
    import numpy as np

    from pipeline.passes import bounds, other_labels_graph

    classes = np.asarray(network.classes, np.float64)
    recorded = (ds.statistics or {}).get("labels")
    if recorded is not None and np.isin(recorded, classes).all():
        return {}
    counts = client.compute(other_labels_graph(ds.path.resolve(), bounds(ds.n_samples, ds.chunk_rows), classes),
                            sync=True)
    return {_label(ds, v): int(counts[v]) for v in sorted(counts)}


def _label(ds, value: float):
    """Return a label of ``ds`` as the user wrote it: its recorded label (text), else a whole number as an int."""
    if ds.classes is not None:
        return ds.classes[int(value)]
    return int(value) if float(value).is_integer() else float(value)


def unseen_warning(unseen: dict, n_samples: int) -> str:
    """Return the one warning line about rows whose labels the run never saw (they count as wrong)."""
    rows = sum(unseen.values())
    shown = ", ".join(f"{k} ({v} rows)" for k, v in list(unseen.items())[:10]) + (" …" if len(unseen) > 10 else "")
    return (f"warning: {rows} of {n_samples} rows have labels the run never saw in training, counted as wrong: "
            f"{shown}")


def evaluate(client, store, data) -> dict:
    """Return accuracy, log_loss (two classes: also roc_auc), n_samples, n_correct, the model's iteration on ``data``
    and ``unseen_labels`` ({label: rows} of labels that are not among the run's classes: counted as wrong).

    For a regression run: r2, rmse, n_samples and the iteration.
    """
    import math

    from pipeline.passes import bounds, score_sums_graph
    from solvers.scores import metrics_from_sums
    from solvers.tasks import r2_from_sums
    from storage.runstore import RunStore

    network, ds = check_inputs(store, data)
    iteration = RunStore.open(store).model_iteration()
    chunks = bounds(ds.n_samples, ds.chunk_rows)
    sums = client.compute(score_sums_graph(network, ds.path.resolve(), chunks, metrics=True), sync=True)
    if network.is_regressor:
        n, sse, total, total_sq = sums
        return {"r2": r2_from_sums(n, sse, total, total_sq), "rmse": math.sqrt(sse / n), "n_samples": int(n),
                "iteration": iteration}
    unseen = unseen_labels(client, network, ds)
    return {**metrics_from_sums(sums), "iteration": iteration, "unseen_labels": {str(k): v for k, v in unseen.items()}}


@exits_on_input_error
def main(argv=None) -> int:
    from storage.lock import ReadLock

    args = build_parser().parse_args(argv)
    # SIGTERM (scancel, walltime, kill) unwinds the with blocks like Ctrl-C: the reader records go
    batch = args.cluster in ("slurm", "pbs")
    with exit_on_signals(batch=batch, done=done_with_cluster("nothing was evaluated", batch)):
        if args.dry_run:  # prints a job script, whatever the stores: no read locks (an ingest under way is fine)
            with connect_from_args(args, data=args.data):
                pass  # not reached: connect raises DryRun (exit 0) once the script is printed
            return 0
        # until the result is in: an ingest into --data and a train --overwrite of --store are refused (and
        # refuse this)
        with ReadLock(args.data), ReadLock(args.store, run=True):
            check_inputs(args.store, args.data)  # before a cluster starts (with a missing --data: worker processes)
            with connect_from_args(args, data=args.data) as client:
                result = evaluate(client, args.store, args.data)
    if result.get("unseen_labels"):
        print(unseen_warning(result["unseen_labels"], result["n_samples"]), file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    elif "r2" in result:
        print(f"R² {result['r2']:.4f}, RMSE {result['rmse']:.4g} on {result['n_samples']} samples "
              f"(model after iteration {result['iteration']})")
    else:
        auc = f", ROC AUC {result['roc_auc']:.4f}" if "roc_auc" in result else ""
        print(f"accuracy {result['accuracy']:.4f}, log-loss {result['log_loss']:.4f}{auc} on {result['n_samples']} samples "
              f"(model after iteration {result['iteration']})")
    return 0


if __name__ == "__main__":
    exit_process(main())
