"""The training figures, drawn from one table of panels by the live ``/training`` page and by ``pipeline.report``.

A run's per-iteration history (the ``history`` list of its manifest, or the
same records as the training loop publishes them) becomes flat columns by
:func:`columns`: ``iteration``, ``wall`` (cumulative seconds) and one column
per metric name in :data:`PANELS`, NaN where a solver does not report that
metric. :func:`bokeh_layout` draws the panels with Bokeh (the live page
feeds it from an ``AjaxDataSource``, the report from a ``ColumnDataSource``);
:func:`matplotlib_figures` draws the same panels as PNG figures.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Panel:
    """One figure: the metric columns it plots (``{score}`` stands for accuracy or r2) against ``xs``."""

    name: str
    title: str
    series: tuple          # ((column, legend label), ...)
    xs: tuple = ("iteration",)
    log: bool = False
    bars: bool = False


SCORE = "score"  # the panel named "score" is written as accuracy.png, or r2.png for a regression
PANELS = (
    Panel(SCORE, "{title}", (("train_{score}", "train"), ("validation_{score}", "validation"),
                             ("test_{score}", "test")), xs=("iteration", "wall")),
    Panel("objective", "objective and mean loss", (("objective", "objective"), ("loss", "loss")), log=True),
    Panel("residual", "primal residual ‖z_L − W_L a_{L−1}‖", (("residual", "residual"),),
          xs=("iteration", "wall"), log=True),
    Panel("damping", "Gauss-Newton damping λ and weight decay α", (("damping", "damping"), ("alpha", "alpha")), log=True),
    Panel("seconds", "seconds per iteration", (("seconds", "seconds"),), bars=True),
    Panel("throughput", "rows per second over the iteration's passes", (("rows_per_second", "rows/s"),)),
    Panel("read", "MB per second read by the iteration's passes", (("read_mb_per_second", "MB/s read"),)),
)
XLABELS = {"iteration": "iteration", "wall": "wall time (s)"}
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c")


def score_of(task: str) -> tuple[str, str]:
    """Return the score metric and its title: ("accuracy", "accuracy"), or ("r2", "R²") for a regression."""
    return ("r2", "R²") if task == "regression" else ("accuracy", "accuracy")


def panel_series(panel: Panel, score: str) -> list[tuple[str, str]]:
    """Return ``[(column, label), ...]`` of a panel with ``{score}`` filled in."""
    return [(col.format(score=score), label) for col, label in panel.series]


def column_names(score: str) -> list[str]:
    """Return every column :func:`columns` makes: iteration, wall and the panels' metrics."""
    names = ["iteration", "wall"]
    for panel in PANELS:
        names += [c for c, _ in panel_series(panel, score) if c not in names]
    return names


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def columns(history: list, score: str) -> dict:
    """Return ``{column: list of float}`` of a history; NaN where a record lacks a metric.

    ``wall`` is the cumulative sum of the recorded seconds per iteration.
    """
    out = {name: [] for name in column_names(score)}
    wall = 0.0
    for record in history:
        seconds = _number(record.get("seconds"))
        wall += 0.0 if math.isnan(seconds) else seconds
        for name in out:
            out[name].append(wall if name == "wall" else _number(record.get(name)))
    return out


def has_data(cols: dict, panel: Panel, score: str) -> bool:
    """Return True if any series of ``panel`` has a finite value in ``cols``."""
    return any(np.isfinite(np.asarray(cols.get(c, []), float)).any() for c, _ in panel_series(panel, score))


def json_columns(cols: dict) -> dict:
    """Return ``cols`` with NaN and inf as None (JSON null: a gap in a Bokeh line)."""
    return {k: [v if math.isfinite(v) else None for v in vs] for k, vs in cols.items()}


# --------------------------------------------------------------------------- text
def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def eta_seconds(history: list, target: int | None, committed: int | None) -> float | None:
    """Return the time left: remaining iterations × median seconds of the last five iterations (None if unknown)."""
    seconds = [s for s in (_number(h.get("seconds")) for h in history[-5:]) if math.isfinite(s)]
    if target is None or committed is None or not seconds:
        return None
    return max(0, int(target) - int(committed)) * float(np.median(seconds))


def info_html(info: dict | None, history: list, progress: dict | None = None) -> str:
    """Return the run's settings, store, committed iteration, ETA and pass progress as a small HTML table."""
    if not info:
        return "<p>No training run has reported to this scheduler yet. Start one with " \
               "<code>python -m pipeline.train</code>; this page updates by itself.</p>"
    committed, target = info.get("committed"), info.get("target_iterations")
    rows = [("run store", info.get("store")), ("data", info.get("data")), ("settings", info.get("settings")),
            ("chunks", info.get("chunks")),
            ("committed iteration", f"{committed} of {target}" if committed is not None else "none yet")]
    if info.get("stopped"):
        rows.append(("state", info["stopped"]))
    eta = eta_seconds(history, target, committed)
    if eta and not info.get("stopped"):
        rows.append(("ETA", _duration(eta) + " (remaining iterations × median seconds of the last five)"))
    elif committed is not None and target is not None and int(committed) >= int(target):
        rows.append(("state", "finished"))
    last = history[-1] if history else {}
    speed = [f"{last['rows_per_second']:,.0f} rows/s" if _finite(last.get("rows_per_second")) else None,
             f"{last['read_mb_per_second']:,.1f} MB/s read" if _finite(last.get("read_mb_per_second")) else None,
             f"{last['seconds']:.2f} s per iteration" if _finite(last.get("seconds")) else None]
    if any(speed):
        rows.append(("last iteration", ", ".join(s for s in speed if s)))
    if info.get("last_pass"):
        p = info["last_pass"]
        rows.append(("last pass", f"{p['kernel']}: {p['seconds']:.2f} s, {p['rows_per_second']:,.0f} rows/s, "
                                  f"{p['read_mb_per_second']:,.1f} MB/s read"))
    if progress:
        rows.append(("current pass", progress_text(progress)))
    cells = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(str(k))}</th>"
                    f"<td>{html.escape(str(v))}</td></tr>" for k, v in rows if v is not None)
    return f"<table class='admm-training-info'>{cells}</table>"


def progress_text(progress: dict) -> str:
    """Return ``"7 of 12 chunks done"`` (or that no pass is running) for a progress dict."""
    if not progress.get("running"):
        return "no chunk pass running (client step, scoring or commit)"
    done, total = progress["done"], progress["total"]
    bar = "█" * round(20 * done / max(total, 1))
    return f"{done} of {total} chunks done {bar}{'░' * (20 - len(bar))}"


def _finite(value) -> bool:
    return value is not None and math.isfinite(_number(value))


# --------------------------------------------------------------------------- bokeh
def bokeh_layout(source, score: str, title: str, info_text: str = "", visible=None):
    """Return a Bokeh layout of every panel plotted from ``source`` (columns of :func:`columns`).

    Returns ``(layout, info_div, rows)``; ``rows`` is ``[(panel, row of its figures), ...]``, one row
    per panel (its iteration and wall-time figures side by side). ``visible(panel)`` decides which
    panels show (default: all); a hidden row takes no space.
    """
    from bokeh.layouts import column, row
    from bokeh.models import Div
    from bokeh.plotting import figure

    rows = []
    for panel in PANELS:
        figs = []
        for x in panel.xs:
            fig = figure(title=panel.title.replace("{title}", title), height=240, sizing_mode="stretch_width",
                         y_axis_type="log" if panel.log else "linear", name=f"{panel.name}-{x}",
                         tools="pan,box_zoom,wheel_zoom,reset,save,hover")
            fig.xaxis.axis_label = XLABELS[x]
            for (col, label), color in zip(panel_series(panel, score), COLORS):
                if panel.bars:
                    fig.vbar(x=x, top=col, source=source, width=0.8, legend_label=label, color=color)
                else:
                    fig.line(x=x, y=col, source=source, legend_label=label, color=color, line_width=2)
                    fig.scatter(x=x, y=col, source=source, legend_label=label, color=color, size=5)
            fig.legend.location = "top_left"
            fig.legend.click_policy = "hide"
            figs.append(fig)
        r = row(figs, sizing_mode="stretch_width", name=f"panel-{panel.name}")
        r.visible = True if visible is None else bool(visible(panel))
        rows.append((panel, r))
    info = Div(text=info_text, name="info", sizing_mode="stretch_width")
    return column([info, *(r for _, r in rows)], sizing_mode="stretch_width"), info, rows


# --------------------------------------------------------------------------- matplotlib
def matplotlib_figures(cols: dict, score: str, title: str) -> dict:
    """Return ``{name: matplotlib Figure}`` of the panels with data (the score panel is named ``score``)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        from solvers.errors import InputError

        raise InputError('plotting needs matplotlib: pip install "admm-dask[report]"') from None
    figs = {}
    for panel in PANELS:
        if not has_data(cols, panel, score):
            continue
        fig = Figure(figsize=(5 * len(panel.xs), 4), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(panel.xs), sharey=True))
        for ax, x in zip(axes, panel.xs):
            xv = np.asarray(cols[x], float)
            for col, label in panel_series(panel, score):
                yv = np.asarray(cols[col], float)
                if not np.isfinite(yv).any():
                    continue
                if panel.bars:
                    ax.bar(xv, yv, label=label)
                else:
                    ax.plot(xv, yv, marker="o", ms=3, label=label)
            if panel.log:
                ax.set_yscale("log")
            ax.set_xlabel(XLABELS[x])
            ax.grid(alpha=0.3, which="both")
        axes[0].legend()
        fig.suptitle(panel.title.replace("{title}", title))
        figs[score if panel.name == SCORE else panel.name] = fig
    return figs
