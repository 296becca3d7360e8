"""``python -m pipeline.report``: plots and a text summary of a run store's recorded metrics.

Writes into ``--out`` (default ``<RUN>-report/`` next to the run store) the
panels of the dashboard's live ``/training`` page, drawn by the same code
(:mod:`pipeline.figures`) from the run's history:

===================  ===========================================================
``accuracy.png``     train, validation and test accuracy against iteration and
                     wall time (a regression run: ``r2.png``, R²)
``objective.png``    the solver's objective and mean loss
``residual.png``     ADMM / dlADMM primal residual ‖z_L − W_L a_{L−1}‖
``damping.png``      Gauss-Newton damping λ (and weight decay α where recorded)
``seconds.png``      seconds per iteration
``throughput.png``   rows per second over each iteration's passes
``read.png``         MB per second read by each iteration's passes
``training.html``    all panels and the run's settings in one HTML file that
                     opens offline (BokehJS inline); needs bokeh
``summary.txt``      the summary, also printed
``performance.html`` with ``--html``: a copy of Dask's performance report
===================  ===========================================================

A PNG is written only for a panel with data (each solver records its own
metrics). Wall time is the cumulative sum of the recorded seconds per
iteration (the initialisation and pauses between resumed sessions are not
counted). ``python -m pipeline.train --performance-report`` writes Dask's
performance report to :func:`performance_report_path` (``RUN.performance.html``
beside ``RUN.zarr``), where ``--html`` finds it; ``--html FILE`` copies
another one. Plotting needs matplotlib and bokeh (``pip install "admm-dask[report]"``).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from pipeline.cli import ArgumentParser, exit_process, exits_on_input_error
from pipeline.figures import PANELS, SCORE, bokeh_layout, columns, has_data, info_html, matplotlib_figures, score_of
from solvers.config import TrainConfig, choice_text, describe
from solvers.errors import InputError

def performance_report_path(store) -> Path:
    """Return where ``train --performance-report`` (no FILE) puts Dask's report: ``RUN.performance.html``."""
    store = Path(store)
    return store.with_name(f"{store.stem}.performance.html")


def load_metrics(store):
    """Return the run's metrics as an ``xarray.Dataset`` along ``iteration`` (InputError if not a run store).

    ``metrics/`` is a view of the checked manifest's history, its files rewritten in place at commits: one
    a kill -9 tore (a chunk of the new length under the old ``zarr.json``) is read as what the next commit
    writes there, the same arrays built from the manifest (:func:`storage.runstore.metric_arrays`).
    """
    import xarray as xr

    from storage.runstore import RunStore, metric_arrays, replaced_note

    run = RunStore.open(store)
    manifest = run.manifest()
    if manifest is None:
        raise InputError(f"{store} has no committed iteration yet; nothing to report{replaced_note(store)}")
    history = manifest.get("history") or []
    try:
        ds = xr.open_zarr(run.path, group="metrics", consolidated=False).load()
        # a running trainer writes metrics/ at most every METRICS_SECONDS: behind the manifest (none yet after its
        # first commits, when report said "no finished iteration yet"), the manifest decides (audit17)
        if ds.sizes.get("iteration", 0) == len(history):
            return ds
        raise ValueError("metrics/ is behind the manifest")
    except Exception:  # noqa: BLE001 -- Zarr's errors for a torn file vary (ValueError, KeyError, its own): the manifest decides
        arrays = metric_arrays(history)
        iteration = arrays.pop("iteration")
        return xr.Dataset({name: ("iteration", values) for name, values in arrays.items()}, coords={"iteration": iteration})


def _has(ds, name: str) -> bool:
    return name in ds and bool(np.isfinite(ds[name].values).any())


def _score(ds) -> tuple[str, str]:
    """Return the run's score metric and its title: ("accuracy", "accuracy"), or ("r2", "R²") for a regression."""
    return score_of("regression" if "train_r2" in ds else "classification")


def history_columns(store) -> tuple[dict, str, str]:
    """Return the plotted columns of a run (:func:`pipeline.figures.columns` of its history), its score and title."""
    from storage.runstore import RunStore

    run = RunStore.open(store)
    score, title = score_of(run.task)
    return columns((run.manifest() or {}).get("history") or [], score), score, title


def make_figures(store) -> dict:
    """Return ``{name: matplotlib Figure}`` of the run's panels that have data (see the module docstring)."""
    cols, score, title = history_columns(store)
    return matplotlib_figures(cols, score, title)


def training_html(store) -> str:
    """Return one self-contained HTML page (BokehJS inline) with the live page's panels and the run's settings."""
    try:
        from bokeh.embed import file_html
        from bokeh.models import ColumnDataSource
        from bokeh.resources import INLINE
    except ImportError:
        raise InputError('the HTML report needs bokeh: pip install "admm-dask[report]"') from None
    from pipeline.monitor import run_info
    from storage.runstore import RunStore

    run = RunStore.open(store)
    history = (run.manifest() or {}).get("history") or []
    cols, score, title = history_columns(store)
    source = ColumnDataSource(cols, name="metrics")
    layout, _, _ = bokeh_layout(source, score, title, info_html(run_info(run), history),
                                visible=lambda panel: has_data(cols, panel, score))
    return file_html(layout, INLINE, f"training: {run.path.name}")


def plotted_values(fig) -> dict:
    """Return ``{(axes index, label): (x, y)}`` of every line and bar series drawn in ``fig``."""
    out = {}
    for i, ax in enumerate(fig.axes):
        for line in ax.get_lines():
            out[(i, line.get_label())] = (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
        for bars in ax.containers:
            xs = [p.get_x() + p.get_width() / 2 for p in bars.patches]
            out[(i, bars.get_label())] = (np.asarray(xs, float), np.array([p.get_height() for p in bars.patches]))
    return out


def _model_line(k, ds, score: str) -> list[str]:
    """Return the summary line naming the model's iteration (what train's last lines name) with its scores.

    The model is the best held-out iteration, not the last one the lines above show (newuser15_s15.md).
    """
    if k is None or k not in ds.iteration.values:
        return []
    row = ds.sel(iteration=k)
    parts = [f"{kind} {score if score == 'accuracy' else 'R²'} {float(row[f'{kind}_{score}']):.4f}"
             for kind in ("validation", "test") if f"{kind}_{score}" in row and np.isfinite(row[f"{kind}_{score}"])]
    return [f"{'model':<14} iteration {k}" + (f" ({', '.join(parts)})" if parts else "")]


def summary(store, ds) -> str:
    """Return a short human-readable summary of the run and its metrics."""
    from storage.runstore import RunStore

    run = RunStore.open(store)
    config = TrainConfig.from_dict(run.attrs["config"])
    manifest = run.manifest()
    n = ds.sizes["iteration"]
    lines = [f"run store      {run.path}",
             f"data           {run.attrs['data']['path']} ({run.n_samples} samples, chunks of {run.chunk_rows} rows)",
             f"settings       {describe(config)}{choice_text(run.attrs.get('solver_choice'))}",
             f"iterations     {manifest['iteration']} committed of {manifest['target_iterations']}"]
    from pipeline.labels import run_labels, shown

    labels = run_labels(run.attrs)
    if labels is not None:  # text (or an estimator's) labels: the classes as the user wrote them
        lines.insert(3, f"classes        {shown(labels)}")
    if n:
        last = ds.isel(iteration=-1)
        seconds = ds["seconds"].values
        score, title = _score(ds)
        lines.append(f"{'train ' + title:<14} {float(last[f'train_{score}']):.4f} (last)")
        if _has(ds, f"test_{score}"):
            test = ds[f"test_{score}"]
            best = int(np.nanargmax(test.values))
            lines.append(f"{'test ' + title:<14} {float(test[-1]):.4f} (last), "
                         f"best {float(test[best]):.4f} at iteration {int(ds.iteration[best])}")
        lines.extend(_model_line(run.model_iteration(), ds, score))
        for name in ("residual", "objective"):
            if _has(ds, name):
                lines.append(f"{name:<14} {float(ds[name][0]):.3e} → {float(last[name]):.3e}")
        lines.append(f"time           {seconds.sum():.2f} s in {n} iterations, {np.median(seconds):.3f} s "
                     f"per iteration (median), slowest {seconds.max():.3f} s")
    return "\n".join(lines) + "\n"


REPORT_MARKER = ".admm-dask-report"  # written into every report folder: a later report may replace its files
_REPORT_FILES = {"training.html", "summary.txt", "performance.html"}
_REPORT_PNGS = {"accuracy.png", "r2.png"} | {f"{p.name}.png" for p in PANELS if p.name != SCORE}


def check_report_folder(out: Path, store: Path) -> None:
    """Raise :class:`InputError` unless the report may write its files into ``out``.

    ``out`` may be missing, an empty folder, or a report folder: its marker file, or, from before the marker,
    nothing but a report's files and PNGs, with its summary.txt and training.html or one of the report's own
    PNG names (a folder holding only a summary.txt, or one beside the user's pictures, is the user's). A report
    never writes into a folder of the user's, a data, run or predictions store (each holds zarr.json), or the
    run store it reads.
    """
    from storage.paths import KIND_NAMES, store_format

    target, run = out.resolve(), store.resolve()
    if target == run or run in target.parents or target in run.parents:
        raise InputError(f"report --out {out} is (or holds, or lies inside) the run store {store}; "
                         "name a folder outside it")
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"report --out {out} is a file, not a folder; name a folder for the plots")
    names = {p.name for p in out.iterdir()}
    legacy = ("summary.txt" in names and all(n in _REPORT_FILES or n.endswith(".png") for n in names)
              and ("training.html" in names or bool(names & _REPORT_PNGS)))
    if not names or REPORT_MARKER in names or legacy:
        return
    fmt = store_format(out)
    what = (f"it is an admm-dask {KIND_NAMES.get(fmt, fmt)}" if fmt else
            f"it holds files a report did not write ({', '.join(sorted(names)[:3])}{', …' if len(names) > 3 else ''})")
    raise InputError(f"refusing to write the report into {out}: {what}; name a new or empty folder "
                     "(python -m pipeline.report writes only into folders it made)")


def write_report(store, out=None, html=None) -> dict:
    """Write the plots, ``summary.txt`` and optionally ``performance.html`` into ``out``; return what was written.

    ``html``: None (no copy), True (the run's :func:`performance_report_path`)
    or a path. Returns ``{"out", "files", "summary", "plotted"}`` where
    ``plotted[name]`` is :func:`plotted_values` of that figure.
    """
    from storage.lock import OutputLock, ReadLock
    from storage.runstore import RunStore

    store = Path(store)
    out = Path(out) if out is not None else store.with_name(f"{store.stem}-report")
    check_report_folder(out, store)
    RunStore.open(store)  # a missing or damaged run store: its one line before anything is made
    # a reader record beside the run store (a train --overwrite of it is refused meanwhile, and refuses this) and
    # the report folder's lock <OUT>.lock (a second report into it is refused) until the last file is written
    with ReadLock(store, run=True), OutputLock(out, "report folder"):
        made = []  # [out] once this report's own mkdir made it: only then does a failure remove it
        try:
            return _write_report(store, out, html, made)
        except BaseException:  # a full disk, Ctrl-C, SIGTERM: a folder this report made goes (half a report)
            if made:
                shutil.rmtree(out, ignore_errors=True)
            raise


def _write_report(store: Path, out: Path, html, made: list) -> dict:
    """:func:`write_report` with its locks held; appends ``out`` to ``made`` if it creates the folder."""
    ds = load_metrics(store)
    if ds.sizes["iteration"] == 0:
        raise InputError(f"{store} has no finished iteration yet; nothing to plot")
    source = None
    if html is not None and html is not False:
        source = performance_report_path(store) if html is True else Path(html)
        if not source.is_file():
            raise InputError(f"no performance report at {source}: train with --performance-report "
                             "(or pass --html FILE)")
    check_report_folder(out, store)  # again under the lock: nothing else appeared meanwhile
    try:
        try:
            out.mkdir()  # its parent exists (OutputLock refuses a missing one)
            made.append(out)
        except FileExistsError:  # there already, or appeared since the check: not ours, checked again
            check_report_folder(out, store)
        (out / REPORT_MARKER).write_text(json.dumps({"format": "admm-dask-report", "run_store": str(store.resolve())}))
    except OSError as err:
        raise InputError(f"cannot create the report folder {out}: {err.strerror}") from None
    files, plotted = [], {}
    for name, fig in make_figures(store).items():
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100)
        plotted[name] = plotted_values(fig)
        files.append(path)
    (out / "training.html").write_text(training_html(store), encoding="utf-8")
    files.append(out / "training.html")
    text = summary(store, ds)
    (out / "summary.txt").write_text(text)
    files.append(out / "summary.txt")
    if source is not None:
        shutil.copyfile(source, out / "performance.html")
        files.append(out / "performance.html")
    return {"out": out, "files": files, "summary": text, "plotted": plotted}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m pipeline.report",
                                description="Plot a run's recorded metrics (the panels of the dashboard's "
                                            "/training page: accuracy, the solver's curves, seconds per iteration, "
                                            "rows/s and MB/s) as PNGs and one offline HTML file, and print a short "
                                            "summary.")
    p.add_argument("--store", required=True, help="run store written by python -m pipeline.train")
    p.add_argument("--out", help="directory for the PNG plots, training.html and summary.txt: new, empty, or one a report wrote "
                        "(default: RUN-report beside the store)")
    p.add_argument("--html", nargs="?", const=True, default=None, metavar="FILE",
                   help="also copy Dask's performance report: FILE, or RUN.performance.html written by "
                        "train --performance-report")
    return p


@exits_on_input_error
def main(argv=None) -> int:
    from pipeline.signals import exit_on_signals

    args = build_parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the reader record and the folder's lock go
    with exit_on_signals(done="the report stopped; its folder may lack some files (run the report again)"):
        result = write_report(args.store, args.out, args.html)
    print(result["summary"], end="")
    print(f"wrote {', '.join(f.name for f in result['files'])} to {result['out']}")
    return 0


if __name__ == "__main__":
    exit_process(main())
