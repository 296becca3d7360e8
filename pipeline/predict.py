"""``python -m pipeline.predict``: write a run's predicted labels (or values) for a data store to Zarr, out of core."""
from __future__ import annotations

import argparse
import sys

from pipeline.cli import add_cluster_arguments, connect_from_args, exits_on_input_error


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.predict",
                                description="Predict labels (a regression run: values) for every row of a data store "
                                            "with a run's model.")
    p.add_argument("--store", required=True, help="run store written by python -m pipeline.train")
    p.add_argument("--data", required=True, help="data store to predict (its labels are ignored)")
    p.add_argument("--out", required=True, help="Zarr store to write: array 'prediction' (n_samples,)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out store")
    add_cluster_arguments(p)
    return p


def predict(client, store, data, out, overwrite=False):
    """Write ``prediction`` (one label, or value for a regression, per row of ``data``) into a new Zarr group at ``out``."""
    from pathlib import Path

    import dask
    import numpy as np
    import zarr

    from pipeline.passes import bounds, broadcast, predict_task, tree
    from solvers.errors import InputError
    from storage.data import open_data
    from storage.runstore import load_network

    network = load_network(store)
    ds = open_data(data)
    if ds.n_features != len(network.x_mean):
        raise InputError(f"{ds.path} has {ds.n_features} features, the model expects {len(network.x_mean)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace it")
    group = zarr.open_group(out, mode="w", zarr_format=3)
    group.create_array("prediction", shape=(ds.n_samples,), chunks=(ds.chunk_rows,),
                       dtype=np.float64 if network.is_regressor else np.asarray(network.classes).dtype,
                       dimension_names=("sample",))
    group.attrs.update({"format": "admm-dask-predictions", "run_store": str(Path(store).resolve()),
                        "data": str(ds.path.resolve())})
    net = broadcast(network)
    fn = dask.delayed(predict_task, pure=False)
    client.compute(tree([fn(net, str(ds.path.resolve()), str(out.resolve()), a, b)
                         for a, b in bounds(ds.n_samples, ds.chunk_rows)]), sync=True)
    return out


@exits_on_input_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with connect_from_args(args) as client:
        out = predict(client, args.store, args.data, args.out, args.overwrite)
    print(f"predictions written to {out}/prediction")
    return 0


if __name__ == "__main__":
    sys.exit(main())
