"""``python -m pipeline.train``: train a network out of core with ADMM on a Dask cluster.

Run with no arguments it trains on the bundled demo data set (scikit-learn's
8×8 digits, 10 classes) in a temporary directory, on an embedded local cluster.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from pathlib import Path

from pipeline.cli import add_cluster_arguments, connect_from_args, exits_on_input_error
from solvers import SOLVERS
from solvers.activations import ACTIVATIONS
from solvers.config import INITS, TrainConfig
from solvers.errors import InputError
from solvers.layers import format_layers, parse_layers, parse_shape
from solvers.losses import LOSSES
from solvers.stats import SCALINGS
from solvers.tasks import TASKS

log = logging.getLogger("pipeline.train")  # not __name__: "__main__" under python -m
DEMO = Path(__file__).resolve().parent / "demo" / "digits.npz"
_DEFAULTS = TrainConfig()
CONFIG_FLAGS = ("solver", "task", "hidden", "layers", "input_shape", "cg_steps", "activation", "loss", "iterations", "warm_start", "gamma", "beta",
                "ridge", "init", "seed", "validation_fraction", "patience", "step_size", "damping", "scaling", "rho", "nu")


def _widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 300 or 300,100, got {text!r}")


def _layers(text: str) -> str:
    try:
        return format_layers(parse_layers(text))
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shape(text: str) -> tuple[int, int, int]:
    try:
        return parse_shape(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.train",
        description="Train a neural network out of core with layerwise Gauss-Newton (the default), the ADMM "
                    "method of Taylor et al. (2016) or dlADMM: data and per-sample state live in Zarr stores, "
                    "Dask runs passes over the sample chunks and the small weight solves run here. With no "
                    "arguments, trains on the bundled digits demo.",
    )
    io = p.add_argument_group("data and run store")
    io.add_argument("--data", help="training data store (made by python -m pipeline.ingest); default: bundled demo")
    io.add_argument("--store", help="run store to create (or resume); default for the demo: a temporary directory")
    io.add_argument("--test-data", help="held-out data store; its accuracy is reported every iteration")
    io.add_argument("--resume", action="store_true", help="continue the run in --store from its last committed iteration")
    io.add_argument("--overwrite", action="store_true", help="replace an existing run store at --store")
    model = p.add_argument_group(
        "model and method", "Defaults in brackets. With --resume, the run's own settings are kept; --gamma, --beta, "
        "--warm-start, --ridge and --iterations may be changed, the others must match the run.")
    d = _DEFAULTS
    model.add_argument("--solver", choices=sorted(SOLVERS), help=f"training method [{d.solver}]")
    model.add_argument("--task", choices=sorted(TASKS),
                       help="classification (y are class labels) or regression (y are real values, fitted "
                            f"standardised with the squared loss; scores are R²) [{d.task}]")
    model.add_argument("--hidden", type=_widths, help="hidden layer widths, e.g. 300 or 300,100 [300]")
    model.add_argument("--layers", type=_layers,
                       help="hidden layers in place of --hidden, convolutions first, e.g. "
                            "conv:8x5x5:s2:same,conv:16x3x3,dense:100 (conv:C_OUTxKHxKW, optional :sSTRIDE and "
                            ":same or :valid, default stride 1 and valid; convolutions need --solver admm)")
    model.add_argument("--input-shape", type=_shape,
                       help="image shape HxWxC of a row (channel-last) for --layers conv:…; default: a square "
                            "one-channel image")
    model.add_argument("--cg-steps", type=int,
                       help="admm below a convolution: conjugate-gradient steps of the a-update, 0 for an exact "
                            "solve through the (H·W·C)² Toeplitz normal matrix [exact up to 4096 values per "
                            "image, else 8]")
    model.add_argument("--activation", choices=sorted(ACTIVATIONS), help=f"[{d.activation}]")
    model.add_argument("--loss", choices=["auto", *sorted(LOSSES)],
                       help=f"auto: hinge for 2 classes, one-vs-all hinge for more, squared for regression [{d.loss}]")
    model.add_argument("--iterations", type=int, help=f"iterations to run in total [{d.iterations}]")
    model.add_argument("--warm-start", type=int, help=f"first iterations without λ updates [{d.warm_start}]")
    model.add_argument("--gamma", type=float, help=f"weight γ of ‖a − h(z)‖² [{d.gamma}]")
    model.add_argument("--beta", type=float, help=f"weight β of ‖z − W a‖² and of the λ step [{d.beta}]")
    model.add_argument("--ridge", type=float, help=f"relative ridge of the W-solve [{d.ridge}]")
    model.add_argument("--init", choices=INITS, help=f"initial state [{d.init}]")
    model.add_argument("--seed", type=int, help=f"random seed [{d.seed}]")
    model.add_argument("--scaling", choices=SCALINGS,
                       help="input scaling after centring: each feature's std (standard) or one common std "
                            f"(global: pixels and other shared units) [{d.scaling}]")
    gn = p.add_argument_group("gauss-newton solver")
    gn.add_argument("--step-size", type=float, help=f"step η of the Gauss-Newton update [{d.step_size}]")
    gn.add_argument("--damping", type=float,
                    help=f"initial Levenberg-Marquardt damping λ, relative to the mean curvature [{d.damping}]")
    dl = p.add_argument_group("dladmm solver")
    dl.add_argument("--rho", type=float, help=f"penalty ρ of the output constraint and the dual step [{d.rho}]")
    dl.add_argument("--nu", type=float, help=f"penalty ν of the hidden-layer constraints [{d.nu}]")
    stop = p.add_argument_group("early stopping")
    stop.add_argument("--validation-fraction", type=float,
                      help="share of the training chunks held out (seeded choice of whole chunks); the model is "
                           f"the iteration with the best held-out accuracy [{d.validation_fraction}: off]")
    stop.add_argument("--patience", type=int,
                      help="with --validation-fraction: stop after this many iterations without a gain in held-out "
                           f"accuracy, 0 never [{d.patience}]")
    add_cluster_arguments(p)
    p.add_argument("--chunk-rows", type=int, default=None, help="samples per state chunk (default: ~128 MB of state per chunk)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar within each pass (default: when stderr is a terminal)")
    mon = p.add_argument_group("monitoring")
    mon.add_argument("--verbose", "-v", action="store_true",
                     help="log the pipeline's steps (logger 'pipeline' at DEBUG) and Dask's client-side messages "
                          "(INFO; the embedded local cluster keeps its own to errors) to stderr")
    mon.add_argument("--performance-report", nargs="?", const="", default=None, metavar="FILE",
                     help="save Dask's performance report (HTML) of the training to FILE; without FILE to "
                          "RUN.performance.html beside the run store, where python -m pipeline.report --html "
                          "finds it")
    return p


def setup_logging(verbose: bool) -> None:
    """Send the 'pipeline' logger to stderr: warnings only, everything with ``verbose`` (and Dask's INFO)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("pipeline")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    if verbose:
        logging.getLogger("distributed").setLevel(logging.INFO)


def _demo_data(workdir: Path) -> tuple[str, str]:
    """Write the bundled digits as train/test data stores under ``workdir``."""
    import numpy as np

    from storage.data import write_data

    with np.load(DEMO) as f:
        X, y = f["X"].astype(np.float32), f["y"]
    test = np.random.default_rng(0).random(len(y)) < 0.2
    train_path, test_path = workdir / "digits-train.zarr", workdir / "digits-test.zarr"
    write_data(train_path, X[~test], y[~test], source="bundled sklearn digits", overwrite=True)
    write_data(test_path, X[test], y[test], source="bundled sklearn digits", overwrite=True)
    return str(train_path), str(test_path)


@exits_on_input_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from pipeline.training import check_inputs, train

    data, test_data, store = args.data, args.test_data, args.store
    if data is None and not args.resume:
        workdir = Path(tempfile.mkdtemp(prefix="admm-demo-"))
        data, demo_test = _demo_data(workdir)
        test_data = test_data or demo_test
        store = store or str(workdir / "run.zarr")
        print(f"demo: bundled digits (10 classes) written to {workdir}")
    if store is None:
        raise InputError("--store RUN.zarr is required (where the run's state and model are kept)")
    given = {name: getattr(args, name) for name in CONFIG_FLAGS if getattr(args, name) is not None}
    if "hidden" in given and "layers" in given:
        raise InputError("give --hidden or --layers, not both (--layers dense:300 is --hidden 300)")
    config = None if args.resume else TrainConfig(**given)
    check_inputs(store=store, data=data, test_data=test_data, resume=args.resume, overwrite=args.overwrite,
                 chunk_rows=args.chunk_rows)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    log.debug("settings %s, store %s, data %s, test data %s, resume %s", given, store, data, test_data, args.resume)
    perf = None
    if args.performance_report is not None:
        from pipeline.report import performance_report_path

        try:
            import bokeh  # noqa: F401  (distributed renders the report with it; fail before training)
        except ImportError:
            raise InputError('--performance-report needs bokeh: pip install "admm-dask[report]"') from None
        perf = Path(args.performance_report or performance_report_path(store))
    with connect_from_args(args) as client, _performance_report(perf):
        print(f"Dask dashboard: {client.dashboard_link}", flush=True)
        log.debug("cluster: %s", client)
        result = train(client, store=store, data=data, config=config, test_data=test_data,
                       chunk_rows=args.chunk_rows, resume=args.resume, overwrite=args.overwrite,
                       overrides=given if args.resume else None, progress=progress,
                       report=lambda line: print(line, flush=True))
    if perf is not None:
        print(f"Dask performance report: {perf}")
    print(f"done: model and history in {result.store.path}")
    return 0


def _performance_report(path):
    """Return a context recording Dask's performance report into ``path``, or a no-op for None."""
    if path is None:
        return contextlib.nullcontext()
    from distributed import performance_report

    path.parent.mkdir(parents=True, exist_ok=True)
    return performance_report(filename=str(path))


if __name__ == "__main__":
    sys.exit(main())
