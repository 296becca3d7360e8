"""``python -m pipeline.predict``: write a run's predicted labels (or values) for a data store to Zarr, out of core."""
from __future__ import annotations

import argparse
import sys

from pipeline.cli import ArgumentParser, add_cluster_arguments, connect_from_args, exit_process, exits_on_input_error
from pipeline.signals import done_with_cluster, exit_on_signals

PREDICTIONS_FORMAT = "admm-dask-predictions"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m pipeline.predict",
                                description="Predict labels (a regression run: values) for every row of a data store "
                                            "with a run's model.")
    p.add_argument("--store", required=True, help="run store written by python -m pipeline.train")
    p.add_argument("--data", required=True, help="data store to predict (its labels are ignored)")
    p.add_argument("--out", required=True, help="predictions store to create (Zarr): array 'prediction' (n_samples,) of "
                                                "the labels the run was trained on (text labels as strings: read "
                                                "them with [:].tolist())")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing predictions store at --out (nothing else is ever replaced)")
    add_cluster_arguments(p)
    return p


def check_inputs(store, data, out, overwrite=False):
    """Return the run's network and the data store, or raise :class:`InputError` before anything is written."""
    from pipeline.model import labelled_network
    from solvers.errors import InputError
    from storage.data import features_hint, open_data
    from storage.paths import check_target

    check_target(out, PREDICTIONS_FORMAT, overwrite, inputs=(store, data))
    network = labelled_network(store)  # predictions are the labels the run was trained on (text too), not codes
    ds = open_data(data, ingest_hint=" --no-labels` for a file without a label column; for a labelled file (predict "
                                     "ignores its labels) the same without `--no-labels")  # open_data closes the `
    if ds.n_features != len(network.x_mean):
        raise InputError(f"{ds.path} has {ds.n_features} features, the model expects {len(network.x_mean)}"
                         f"{features_hint(ds, len(network.x_mean))}")
    return network, ds


def predict(client, store, data, out, overwrite=False):
    """Write ``prediction`` (one label, or value for a regression, per row of ``data``) into a new Zarr group at ``out``.

    ``out`` becomes a *predictions store* (format ``admm-dask-predictions``); with ``overwrite`` only an
    existing predictions store is replaced, and only once the new one is complete. ``out`` may not be,
    hold or lie inside the run store or the data store. The predictions are a Dask array
    (:func:`pipeline.passes.predictions`) stored chunk by chunk into the partial store; its workers import
    dask.array, about 140 MiB more per worker process than training's workers hold.

    Until the new store is in place ``data`` and ``store`` carry this process's reader records (an ingest into
    ``data`` and a ``train --overwrite`` of ``store`` are refused) and ``out`` its writer's lock ``<OUT>.lock``
    (a second predict into ``out`` is refused): :func:`locked`.
    """
    with locked(store, data, out, overwrite) as held:
        return _predict(client, store, data, out, held.inputs, overwrite)


def locked(store, data, out, overwrite=False):
    """Return the context that holds predict's locks: reader records on ``data`` and ``store``, ``<OUT>.lock``.

    ``out`` is checked first (:func:`storage.paths.check_target`), so an ``--out`` naming an input or a store of
    another kind gets that one line, not a lock conflict with this process's own reader record; the inputs are
    checked (:func:`check_inputs`) once read-locked, before ``<OUT>.lock`` is made; the context's ``inputs`` is
    what that check returned (the network and the data store), for :func:`_predict`.
    """
    from contextlib import ExitStack

    from storage.lock import OutputLock, ReadLock
    from storage.paths import check_target

    check_target(out, PREDICTIONS_FORMAT, overwrite, inputs=(store, data))
    stack = ExitStack()
    try:
        stack.enter_context(ReadLock(data))
        stack.enter_context(ReadLock(store, run=True))
        stack.inputs = check_inputs(store, data, out, overwrite)  # a bad input: its one line before <OUT>.lock
        stack.enter_context(OutputLock(out, "predictions store"))
    except BaseException:
        stack.close()
        raise
    return stack


def _predict(client, store, data, out, inputs, overwrite=False, written=lambda out: None):
    """:func:`predict` with its locks held by the caller; ``inputs``: the network and data store :func:`locked`
    checked (read once, under the locks); ``written(out)`` once the predictions store is in place."""
    import shutil
    from pathlib import Path

    import numpy as np
    import zarr

    from pipeline.passes import predictions
    from solvers.errors import InputError
    from storage.paths import check_target, clean_stale_partials, partial_path, swap_in

    out = Path(out)
    network, ds = inputs
    clean_stale_partials(out, report=lambda line: print(line, file=sys.stderr))
    partial = partial_path(out)  # written beside --out, renamed into place when complete
    try:
        try:
            group = zarr.open_group(partial, mode="w-", zarr_format=3)
        except OSError as err:
            raise InputError(f"cannot write {out}: its folder {out.parent} is not a writable directory "
                             f"({err.strerror})") from None
        dtype = np.dtype(np.float64) if network.is_regressor else np.asarray(network.classes).dtype
        group.create_array("prediction", shape=(ds.n_samples,), chunks=(ds.chunk_rows,),
                           dtype=str if dtype.kind in "US" else dtype,  # text labels: Zarr's "string" type
                           dimension_names=("sample",))
        group.update_attributes({"format": PREDICTIONS_FORMAT, "run_store": str(Path(store).resolve()),
                                 "data": str(ds.path.resolve())})
        # block i of the predictions is chunk i of the array: da.store as is (to_zarr would rechunk to ~128 MB)
        pred = predictions(network, ds.path.resolve(), ds.chunk_rows)
        target = zarr.open_array(store=str(partial.resolve()), path="prediction", mode="r+")
        client.compute(pred.store(target, lock=False, compute=False), sync=True)
        check_target(out, PREDICTIONS_FORMAT, overwrite)  # nothing else appeared at --out meanwhile
        swap_in(partial, out)
        written(out)  # a signal from here on (the cluster's shutdown takes seconds) finds the predictions in place
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return out


@exits_on_input_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (scancel, walltime, kill) unwinds the with blocks like Ctrl-C: the reader records, the lock of --out
    # and the partial predictions store go
    batch = args.cluster in ("slurm", "pbs")
    written = {}

    def done() -> str:
        what = (f"the predictions were written to {written['out']}" if written else
                "no predictions store was written or replaced")
        return done_with_cluster(what, batch)

    with exit_on_signals(batch=batch, done=done):
        if args.dry_run:  # prints a job script, whatever the stores: no locks (as evaluate); --out is checked
            from storage.paths import check_target

            check_target(args.out, PREDICTIONS_FORMAT, args.overwrite, inputs=(args.store, args.data))
            with connect_from_args(args, data=args.data):
                pass  # not reached: connect raises DryRun (exit 0) once the script is printed
            return 0
        # until the predictions are in: an ingest into --data, a train --overwrite of --store and a second
        # predict into --out are refused (and refuse this)
        with locked(args.store, args.data, args.out, args.overwrite) as held:  # checks the inputs (before a cluster)
            with connect_from_args(args, data=args.data) as client:
                out = _predict(client, args.store, args.data, args.out, held.inputs, args.overwrite,
                               written=lambda out: written.update(out=out))
    print(f"predictions written to {out}/prediction")
    return 0


if __name__ == "__main__":
    exit_process(main())
