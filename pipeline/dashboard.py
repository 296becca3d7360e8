"""The scheduler's side of the live ``/training`` page of the Dask dashboard.

Runs inside the scheduler process. Two HTTP routes join the dashboard's
server: ``training`` (a Bokeh page in the dashboard's own template and
navigation bar) and ``training/data.json`` (the run's columns, a summary and
the chunk progress of the pass now running), which the page polls every
:data:`POLL_MS` ms through a Bokeh ``AjaxDataSource``. The data are what
:class:`pipeline.monitor.TrainingMonitor` stored with ``set_metadata``.

Ways to add the routes to a scheduler (distributed's documented extension points):

* ``dask scheduler --preload pipeline.dashboard`` (or the config key
  ``distributed.scheduler.preload``): :func:`dask_setup` adds the routes when
  the scheduler starts; ``python -m pipeline.train`` does this for the
  clusters it starts (local, SLURM, PBS).
* ``distributed.scheduler.http.routes`` extended with ``pipeline.dashboard``
  (this module's :data:`routes`), which also honours ``--dashboard-prefix``.
"""
from __future__ import annotations

import json
import logging
import math
import sys

from distributed.http.utils import RequestHandler
from tornado import web

from pipeline.figures import (PANELS, bokeh_layout, column_names, columns, has_data, info_html, json_columns,
                              panel_series, score_of)
from pipeline.monitor import METADATA_KEY, PAGE

log = logging.getLogger(__name__)

POLL_MS = 500
CHUNK_PREFIX = "chunk_task"  # the task name of one chunk of a solver pass (pipeline.passes.chunk_task)
PENDING_STATES = ("released", "waiting", "queued", "no-worker", "processing")

ADAPTER_JS = """
const r = cb_data.response;
for (const c of Object.keys(r.columns)) {  // JSON has no NaN: null marks a metric this iteration lacks
    r.columns[c] = r.columns[c].map(v => v === null ? NaN : v);
}
info.text = r.info_html;
for (let i = 0; i < rows.length; i++) {  // the panels of the metrics this run records
    const show = cols[i].some(c => (r.columns[c] || []).some(Number.isFinite));
    if (r.columns.iteration.length && rows[i].visible !== show) rows[i].visible = show;
}
metrics.data = r.columns;  // the plotted source (a ColumnDataSource, as in the report)
// for tests and the latency benchmark: when each newly committed iteration reached this page
const last = r.columns.iteration.length ? r.columns.iteration[r.columns.iteration.length - 1] : null;
const seen = window.admm_training || {log: []};
if (last !== null && last !== seen.last) {
    seen.log.push({iteration: last, committed_at: r.info.committed_at, received: Date.now() / 1000});
}
window.admm_training = {received: Date.now() / 1000, iterations: r.columns.iteration.length, last: last,
                        log: seen.log};
return r.columns;
"""


def snapshot(scheduler) -> dict:
    """Return the page's data: JSON-safe columns, the info table (HTML) and the chunk progress."""
    published = scheduler.get_metadata(keys=[METADATA_KEY], default=None) or {}
    info, history = published.get("info"), published.get("history") or []
    score, _ = score_of((info or {}).get("task", "classification"))
    progress = chunk_progress(scheduler, (info or {}).get("n_chunks"))
    return {"columns": json_columns(columns(history, score)), "info_html": info_html(info, history, progress),
            "progress": progress, "info": info or {}}


def chunk_progress(scheduler, n_chunks) -> dict:
    """Return ``{"running", "done", "total"}`` of the chunk pass now on the cluster, from the scheduler's task states.

    A task of several chunks (``chunk_task_x3``: an in-process cluster runs a pass as one task per worker thread,
    :meth:`pipeline.passes.DaskRunner._submit`) counts as its chunks, all pending until it ends.
    """
    pending = 0
    for name, prefix in list(scheduler.task_prefixes.items()):
        size = _chunks_per_task(name)
        if size:
            pending += size * sum(prefix.states.get(s, 0) for s in PENDING_STATES)
    total = max(int(n_chunks or 0), pending)
    return {"running": pending > 0, "done": total - pending if pending else 0, "total": total}


def _chunks_per_task(name: str) -> int:
    """Return how many chunks a task of prefix ``name`` runs: 1 for ``chunk_task``, k for ``chunk_task_xk``, else 0."""
    if name == CHUNK_PREFIX:
        return 1
    head, _, k = name.rpartition("_x")
    return int(k) if head == CHUNK_PREFIX and k.isdigit() else 0


def page_html(scheduler) -> str:
    """Return the ``/training`` page: the shared Bokeh panels fed by polling ``training/data.json``."""
    from bokeh.embed import file_html
    from bokeh.models import AjaxDataSource, ColumnDataSource, CustomJS
    from bokeh.resources import Resources

    data = snapshot(scheduler)
    score, title = score_of(data["info"].get("task", "classification"))
    cols = {k: [math.nan if v is None else v for v in vs] for k, vs in data["columns"].items()}
    source = ColumnDataSource(cols, name="metrics")
    layout, info, rows = bokeh_layout(source, score, title, data["info_html"],
                                      visible=lambda panel: has_data(cols, panel, score) or not cols["iteration"])
    # the poller: an AjaxDataSource that is not plotted; its adapter hands each answer to the plots' source
    poll = AjaxDataSource(data_url=f"{PAGE}/data.json", polling_interval=POLL_MS, mode="replace", method="GET",
                          name="poll")
    poll.adapter = CustomJS(args={"info": info, "metrics": source, "rows": [r for _, r in rows],
                                  "cols": [[c for c, _ in panel_series(p, score)] for p, _ in rows]},
                            code=ADAPTER_JS)
    layout.children[0].tags = [poll]  # keeps the poller in the document
    template, variables = _dashboard_template(scheduler)
    # BokehJS from the dashboard's own Bokeh server (./static/…): nothing is fetched from the internet
    return file_html(layout, Resources(mode="server", root_url="./"), "Dask: training", template=template,
                     template_variables=variables)


def _dashboard_template(scheduler):
    """Return distributed's page template and its navigation bar variables (our page in the bar)."""
    try:
        from distributed.dashboard.components.scheduler import env
        from distributed.dashboard.scheduler import template_variables

        variables = dict(template_variables(scheduler))
        if PAGE not in variables.get("pages", []):
            variables["pages"] = [*variables.get("pages", []), PAGE]
        return env.get_template("simple.html"), variables
    except Exception as exc:  # noqa: BLE001 -- a distributed without these internals: Bokeh's plain page
        log.debug("training page: no dashboard template (%s)", exc)
        from bokeh.core.templates import FILE as DEFAULT

        return DEFAULT, {}


class TrainingPage(RequestHandler):
    """GET ``/training``: the live page."""

    def get(self):
        try:
            connect_dashboard(self.server)  # its BokehJS comes from the dashboard's server
            self.write(page_html(self.server))
        except ImportError:
            self.write("<p>The training page needs bokeh on the scheduler: pip install bokeh</p>")


class TrainingData(RequestHandler):
    """GET ``/training/data.json``: what the page polls."""

    def get(self):
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(json.dumps(snapshot(self.server), allow_nan=False))


routes: list[tuple] = [(rf"{PAGE}", TrainingPage, {}), (rf"{PAGE}/data.json", TrainingData, {})]


def install(scheduler, prefix: str = "/") -> None:
    """Add the page's routes to a running scheduler's HTTP server and its name to the dashboard's navigation bar."""
    if getattr(scheduler, "_admm_training_page", False):
        return
    from distributed.http.utils import get_handlers

    scheduler.http_application.add_handlers(r".*", get_handlers(scheduler, [__name__], prefix=prefix))
    scheduler._admm_training_page = True
    if "distributed.dashboard.scheduler" in sys.modules:  # else when a lazy dashboard connects (connect_dashboard)
        _add_to_navigation(scheduler)


def _add_to_navigation(scheduler) -> None:
    """Add the page to the bar of the Bokeh dashboard's own pages (documents made after this call)."""
    try:
        from distributed.dashboard.scheduler import template_variables

        pages = template_variables(scheduler)["pages"]
        if PAGE not in pages:
            pages.append(PAGE)
    except Exception as exc:  # noqa: BLE001 -- no Bokeh dashboard: the page is still served
        log.debug("training page: not added to the navigation bar (%s)", exc)


class LazyDashboard(web.Application):
    """The last application of a scheduler's HTTP server: connects distributed's Bokeh dashboard at the first request.

    A scheduler started with ``dashboard=False`` serves its plain HTTP routes
    without importing Bokeh (about a third of a second of CPU, most of a small
    run's start); the first request no route serves (the dashboard's
    ``/status``, ``/``, its static files) imports and connects the dashboard
    here, on the scheduler's event loop, and is then answered by it.
    """

    def __init__(self, scheduler, prefix: str = "/"):
        super().__init__()
        self.scheduler, self.prefix = scheduler, prefix

    def find_handler(self, request, **kwargs):
        connect_dashboard(self.scheduler, self.prefix)
        return None  # the dashboard, now in the list after this application, answers


def lazy_dashboard(scheduler, prefix: str = "/") -> None:
    """Make a scheduler started with ``dashboard=False`` connect the Bokeh dashboard at its first request."""
    scheduler._admm_lazy_dashboard = prefix
    scheduler.http_application.add_application(LazyDashboard(scheduler, prefix))


def connect_dashboard(scheduler, prefix: str | None = None) -> None:
    """Connect distributed's Bokeh dashboard to a :func:`lazy_dashboard` scheduler, once (no-op for any other)."""
    prefix = getattr(scheduler, "_admm_lazy_dashboard", None) if prefix is None else prefix
    if prefix is None or getattr(scheduler, "_admm_dashboard_connected", False):
        return
    scheduler._admm_dashboard_connected = True
    import distributed.dashboard.scheduler

    distributed.dashboard.scheduler.connect(scheduler.http_application, scheduler.http_server, scheduler,
                                            prefix=prefix)
    if getattr(scheduler, "_admm_training_page", False):
        _add_to_navigation(scheduler)


def dask_setup(scheduler) -> None:
    """Preload hook (``dask scheduler --preload pipeline.dashboard``): serve ``/training`` on this scheduler."""
    install(scheduler)


def is_installed(dask_scheduler=None) -> bool:
    """Return True on a scheduler that serves the page (for ``Client.run_on_scheduler``)."""
    return bool(getattr(dask_scheduler, "_admm_training_page", False))


__all__ = ["PANELS", "column_names", "dask_setup", "install", "routes", "snapshot"]
