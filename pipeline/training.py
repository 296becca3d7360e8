"""Training on Dask: the run store created (scaling from the data store's statistics) or resumed, then the driver.

:func:`train` is what ``python -m pipeline.train`` runs; it needs a connected
:class:`distributed.Client` and reports one line per iteration through
``report``. The loop itself is :func:`solvers.driver.drive`, the same the
in-memory reference runs; here passes run as Dask tasks (:class:`DaskRunner`)
and every iteration is committed to the run store (:class:`_RunKeeper`).
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pipeline.checks import (check_chunk_rows, check_class_rows, check_inputs,  # noqa: F401 (check_inputs: the CLI's)
                             check_resumable, check_resume_total, check_test_data, recorded_data)
from pipeline.cluster import check_worker_access, wait_for_a_worker
from pipeline.labels import codes_in, labels_for, run_labels, shown
from pipeline.memory import default_chunk_rows
from pipeline.passes import DaskRunner, bounds, data_moments, score_sums_graph
from pipeline.signals import stop_if_signalled
from solvers import SOLVERS, make_solver
from solvers.config import TrainConfig, choice_text
from solvers.driver import Outcome, describe_model, drive, model_from_moments, split_chunks
from solvers.errors import InputError
from solvers.loop import LoopState, shard_groups
from solvers.tasks import TASKS, score_from_sums
from solvers.validation import EarlyStopping, RowSplit, rising_window, split_of
from storage.data import fingerprint, open_data
from storage.lock import ReadLock, RunLock
from storage.paths import join_discards
from storage.runstore import Checkpoint, RunStore, check_creatable, recover_replaced, replaced_runs


TrainResult = Outcome  # what train returns: the network, the history, … and the run store (``store``)


def _threads(client) -> int:
    """Return the number of worker threads of the cluster (at least 1; 1 for a client that cannot say)."""
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # noqa: BLE001
        return 1


def _threads_per_worker(client) -> int:
    """Return the most threads any worker of the cluster runs (1 for a client that cannot say)."""
    try:
        return max([1, *client.nthreads().values()])
    except Exception:  # noqa: BLE001
        return 1


def _host_pid() -> tuple:
    """Return (host name, process id) of the process this runs in."""
    import os
    import socket

    return socket.gethostname(), os.getpid()


def _shares_gil(client) -> bool:
    """Return whether workers of the cluster share a process (and its GIL): with each other or with this client.

    An in-process cluster (``LocalCluster(processes=False)``, the local ``--local-mode threads``) whatever its
    transport; a client that cannot say counts as in-process when its scheduler's address is ``inproc://``.
    """
    try:
        places = list(client.run(_host_pid).values())
    except Exception:  # noqa: BLE001
        return str(getattr(getattr(client, "scheduler", None), "address", "")).startswith("inproc://")
    places = [tuple(p) for p in places]
    return len(set(places)) < len(places) or _host_pid() in places


def layer_text(solver) -> str:
    """The run line's layer widths, input first: ``784-4608 (pooled 1152)-100-10`` names what pooling hands on."""
    parts = [str(solver.widths[0])]
    for layer, width in zip(getattr(solver, "layers", ()) or (), solver.widths[1:]):
        post = getattr(layer, "post", None)
        parts.append(f"{width} (pooled {post.n_out})" if post is not None else str(width))
    return "-".join(parts) if len(parts) == len(solver.widths) else "-".join(map(str, solver.widths))


def train(client, *, store, report=print, **kwargs) -> TrainResult:
    """Train out of core into the run store ``store``, holding its lock (:mod:`storage.lock`); see :func:`_train`.

    A second trainer on the same store, while this one runs, gets an :class:`InputError` naming this one. The data
    stores it reads are read-locked (:class:`storage.lock.ReadLock`) from before they are opened until it returns:
    an ingestion into one of them is refused meanwhile, and one under way refuses this run.
    """
    overwrite = bool(kwargs.get("overwrite"))
    recovering = bool(replaced_runs(store))  # readers are refused while a kept run is put back, as under --overwrite
    with RunLock(store, report=report, replacing=overwrite or recovering) as lock, \
            contextlib.ExitStack() as held:
        def reading(path):
            held.enter_context(ReadLock(path))
            return path

        made = []

        def created(run):  # once the run --overwrite replaced is gone it is an ordinary run: evaluate, predict may read it
            made.append(run)
            if run.replaced is None:
                lock.replaced()
            else:  # kept until the first commit: readers are refused until then (they would find no commit)
                run.on_replaced_gone = lock.replaced

        recover_replaced(store, report=report)  # a kill -9 of an --overwrite before its first commit: put the run back
        if recovering and not overwrite:
            lock.replaced()  # back to an ordinary trainer's lock: readers may read the run it continues
        try:
            try:
                return _train(client, store=store, report=report, reading=reading, created=created, **kwargs)
            finally:  # a run store this one replaced (--overwrite) is gone when train returns or raises
                join_discards()
        except BaseException as exc:  # bad data found in the first pass, a full disk at the first commit, Ctrl-C
            if made and made[0].replaced is not None:  # no commit yet: the replaced run goes back, bytes unchanged
                if made[0].restore_replaced(report):
                    report(f"run store {store} is as it was before --overwrite: the new run ended before its first "
                           "commit")
            elif made and isinstance(exc, (InputError, OSError)):
                _remove_if_uncommitted(store)
            raise


def _remove_if_uncommitted(store) -> None:
    """Remove the run store this call created if it holds no commit (not even iteration 0), so a refused run
    leaves nothing behind and the same command works once the input is mended; a store that cannot be read as one
    without commits is kept."""
    import shutil

    try:
        if RunStore.open(store).manifest() is not None:
            return
    except InputError:
        return
    shutil.rmtree(store, ignore_errors=True)


def _train(client, *, store, data=None, config: TrainConfig | None = None, test_data=None,
           chunk_rows=None, resume=False, overwrite=False, iterations=None, overrides=None,
           progress=False, report=print, monitor=None, reading=lambda path: path,
           created=lambda run: None, task_given=False) -> TrainResult:
    """Train out of core on ``data`` into the run store ``store``; return the network and history.

    With ``resume=True`` the run continues from its last committed iteration:
    ``data`` and the settings default to the run's own, ``overrides`` may change
    the settings of :data:`solvers.config.RESUMABLE` (others must match), and
    ``iterations`` sets a new target. Otherwise a new run is created (an existing store is refused unless ``overwrite``). With
    ``validation_fraction`` > 0 the returned network is the best held-out
    iteration's. ``monitor`` (a :class:`pipeline.monitor.TrainingMonitor`) is
    told about the run, every pass and every commit: the dashboard's /training page. ``reading(path)`` is
    called with each data store's path before it is opened (:func:`train`: read-locks it) and returns it;
    ``created(run)`` once a new run store is in place (:func:`train`: its lock stops refusing readers once the run
    ``overwrite`` replaced is deleted, at the first commit; an error before that puts that run back).
    ``task_given``: the task was chosen by the user (``--task``, an estimator), so
    :func:`pipeline.checks.check_class_rows` does not second-guess it.
    """
    changed, new_test, nothing_to_run = set(), False, False
    wait_for_a_worker(client)  # a batch cluster between worker lifetimes: its size chooses the solver and shards
    if resume and overwrite:
        raise InputError("resume and overwrite exclude each other: resume continues the run in the store, "
                         "overwrite replaces it with a new one")
    if iterations is not None:
        overrides = {**(overrides or {}), "iterations": int(iterations)}
    if resume:
        run = RunStore.open(store)
        check_resume_total(run, (overrides or {}).get("iterations"))  # the API's check (the CLI's: check_inputs)
        config, changed = TrainConfig.resumed(run.attrs["config"], overrides)  # recorded once every check passed
        done = run.committed_iteration()
        nothing_to_run = done is not None and config.iterations <= done  # a finished (or stopped) run at its total
        if nothing_to_run:
            changed = set()  # nothing runs, so nothing in the store changes (a stopped run's recorded total neither)
        data = open_data(reading(recorded_data(run, data)))
        recorded_test = run.attrs.get("test_data")  # a new --test-data: records up to now scored another test set
        new_test = bool(test_data) and (not recorded_test or Path(test_data).resolve() != Path(recorded_test).resolve())
        test_data = test_data or recorded_test
        if test_data:
            reading(test_data)
        check_worker_access(client, [data.path, *([test_data] if test_data else [])], [run.path])
        check_resumable(run, data)
        model = run.model_arrays()
        solver = make_solver(config, data.n_features, **model)
    else:
        if data is None:
            raise InputError("no training data given: pass --data DATA.zarr")
        config = replace(config or TrainConfig(), **(overrides or {}))  # keeps auto_pinned (choose_solver's record)
        data = open_data(reading(data))
        if test_data:
            reading(test_data)
        data.require_labels("train")
        if config.task == "regression" and data.classes is not None:
            raise InputError(f"data store {data.path} holds class labels ({shown(data.classes, 5)}), not numbers: a "
                             "regression needs a numeric target")
        config, choice = config.choose_solver(data.n_samples, _threads(client), _threads_per_worker(client),
                                             shared_gil=config.solver == "auto" and _shares_gil(client))
        default_shards = SOLVERS[config.solver].sharded and config.shards == 0
        if default_shards:  # one shard per worker thread (but no more than the chunks to train on: below)
            config = replace(config, shards=_threads(client))
        check_chunk_rows(chunk_rows, data)
        check_creatable(store, overwrite, inputs=(data.path, test_data))
        check_test_data(test_data, data)  # before the store exists: a bad --test-data leaves nothing behind
        check_worker_access(client, [data.path, *([test_data] if test_data else [])],
                            [Path(store).resolve().parent])
        model = model_from_moments(config, data.n_features, *data_moments(client, data, config.task == "regression"))
        if not task_given:  # labels the user called classes (--task classification, ADMMClassifier) are classes
            check_class_rows(client, data, model.get("classes"))
        solver = make_solver(config, data.n_features, **model)
        rows, _, split = split_chunks(
            data.n_samples, chunk_rows,
            default_chunk_rows(data, sum(solver.state_widths().values()),
                               max(_threads(client), config.shards if solver.sharded else 1)), config)
        if solver.sharded:  # a shard is a group of training chunks: small data has fewer chunks than threads
            n_train = len(bounds(data.n_samples, rows)) - len(getattr(split, "chunks", ()) or ())
            if default_shards and config.shards > n_train:
                config = replace(config, shards=max(1, n_train))
                solver = make_solver(config, data.n_features, **model)
            shard_groups(n_train, config.shards)  # a too large --shards: one line, before the store exists
        labels = labels_for(data, model.get("classes"))  # text (or an estimator's) labels of the class codes
        run = RunStore.create(store, config=config.to_dict(), state_widths=solver.state_widths(),
                              data={"path": str(data.path.resolve()), "fingerprint": fingerprint(data),
                                    **({"class_labels": labels} if labels is not None else {})},
                              n_samples=data.n_samples, chunk_rows=rows, **dict(model, classes=model.get("classes")),
                              overwrite=overwrite,
                              test_data=str(Path(test_data).resolve()) if test_data else None,
                              validation=split.record(data.n_samples) if split else None, report=report,
                              shard_widths=solver.shard_state_widths() if solver.sharded else None,
                              n_shards=config.shards, background_discard=True, solver_choice=choice)
        created(run)
    test = check_test_data(test_data, data)
    labels = run_labels(run.attrs)
    if resume and changed:  # only now: a refused --resume (other data, a bad --test-data) changes nothing in the store
        run.update_config(config.to_dict())

    split = split_of(run.attrs)
    chunks = bounds(data.n_samples, run.chunk_rows)  # a run of an earlier version: its held-out chunks train on no row
    runner = DaskRunner(client, solver, data.path.resolve(), run.path.resolve(), chunks, progress=progress,
                        recorder=monitor, split=split)
    n_held = 0 if split is None else (run.attrs.get("validation") or {}).get("rows", split.count(data.n_samples))
    n_held_chunks = len(getattr(split, "chunks", ()))
    held = ("" if not split else f", {n_held} held out for early stopping (rows of every chunk)"
            if isinstance(split, RowSplit) else
            f", {n_held} held out for early stopping in {_count(n_held_chunks, 'chunk')}")
    report(f"run store {run.path}: {data.n_samples - n_held} training samples in "
           f"{_count(len(chunks) - n_held_chunks, 'chunk')} of {run.chunk_rows} rows{held}, "
           f"layers {layer_text(solver)}, solver {solver.name}"
           f"{choice_text(run.attrs.get('solver_choice'))}, "
           f"{describe_model(model if labels is None else dict(model, classes=labels))}")
    manifest = run.manifest()
    history = list(manifest["history"]) if manifest else []
    if nothing_to_run:  # a finished run resumed again (after a kill past its last commit): rc 0
        report(f"run {run.path} already has {done} iterations and --iterations is the total: nothing to run "
               "(pass a larger --iterations to go on)")
    if monitor is not None:
        from pipeline.monitor import run_info

        monitor.start(run_info(run, n_chunks=len(chunks), n_held_out=n_held), history)
    committed, stopping = None, None
    if manifest is not None:
        ck = run.load_checkpoint()
        committed = LoopState(ck.iteration, ck.weights, ck.carry)
        if ck.best:
            stopping = EarlyStopping.from_summary(config.patience, ck.best, ck.best_weights)
    scored = {}
    if isinstance(split, RowSplit):  # the held-out rows of every chunk
        scored["validation"] = (data, bounds(data.n_samples, run.chunk_rows), split)
    elif split:
        scored["validation"] = (data, sorted(split.chunks), None)
    if test is not None:
        scored["test"] = (test, bounds(test.n_samples, test.chunk_rows), None)
    # a test store ingested on its own holds other codes for the same labels: it is scored by label
    codes = ({"test": codes_in(test, model["classes"], labels)} if test is not None and "classes" in model
             and (labels is not None or test.classes is not None) else {})

    def evaluate(network, skip=()) -> dict:  # held-out and test scores in one compute (skip: known already)
        kinds = [kind for kind in scored if kind not in skip]
        if not kinds:
            return {}
        sums = runner.compute(*(score_sums_graph(network if kind not in codes else replace(network, classes=codes[kind]),
                                                 scored[kind][0].path.resolve(), scored[kind][1],
                                                 split=scored[kind][2]) for kind in kinds))
        return {kind: score_from_sums(s) for kind, s in zip(kinds, sums)}

    keeper = _RunKeeper(run, config, monitor)
    try:
        with keeper.committing():  # the last commit is written (and its error, if any, raised) before the run returns
            out = drive(solver, runner, keeper, config, evaluate=evaluate,
                        held_out=split is not None, resume=committed, history=history, stopping=stopping,
                        changed=changed, stopped_early=bool(manifest and manifest.get("stopped_early")), report=report)
        _report_kept_test(out, config, report, test_data if test is not None else None,
                          committed.iteration if new_test and committed is not None else None)
    finally:
        run.write_metrics()  # the commits write metrics/ at most every few seconds
        _forget_data(client)
    if not (manifest and manifest.get("stopped_early") and not changed):
        run.release_uncommitted_slot()
    out.store = run
    return out


def _count(n: int, noun: str) -> str:
    """Return "1 chunk", "3 chunks": ``n`` and ``noun``, plural but for one."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _report_kept_test(out, config, report, test_data=None, scored_before=None) -> None:
    """Report the test score of the kept model (the best held-out iteration): users read the last line, not the row.

    ``scored_before``: iterations up to it were scored on the test data of an earlier segment (a resume with another
    ``--test-data``), so their scores are not the model's on ``test_data``.
    """
    score = TASKS[config.task].score_name
    k = out.best_iteration
    if k is None or test_data is None:
        return
    record = next((h for h in out.history if h.get("iteration") == k), None)
    if scored_before is not None and k <= scored_before:
        report(f"the model (iteration {k}, from before this resume) was not scored on the test data {test_data}")
    elif record is not None and f"test_{score}" in record:
        report(f"the model (iteration {k}) has test {score} {record[f'test_{score}']:.4f}")
    else:
        report(f"the model (iteration {k}) was not scored on the test data")


def still_rising_text(out, limit: str = "--iterations {}") -> str | None:
    """Return the end-of-run words for a run that its iteration limit ended while its validation score still rose
    (:func:`solvers.validation.still_rising`), or None. ``limit`` names the limit (the command line's
    ``--iterations {}``, the estimator's ``max_iter={}``)."""
    if not getattr(out, "still_rising", False):
        return None
    config = out.solver.config
    return (f"validation {TASKS[config.task].score_name} was still rising when {limit.format(config.iterations)} "
            f"ended the run (the model is iteration {out.best_iteration}, one of the last "
            f"{rising_window(config.patience)}, and better than every one before them)")


def _forget_data(client) -> None:
    """Drop the workers' decoded data chunks (:func:`pipeline.passes.data_cache`): a worker may outlive the run."""
    from pipeline.passes import clear_data_cache

    try:
        client.run(clear_data_cache)
    except Exception:  # noqa: BLE001 -- a cluster already gone (killed worker, shutdown) holds nothing
        pass


@dataclass
class _RunKeeper:
    """The run store as the driver's :class:`~solvers.driver.Keeper`: commits, state slots, the /training page.

    A run without slot state (gauss-newton: nothing per sample or per shard is
    stored) commits in the background: iteration k's checkpoint is written
    (hashed, packed, manifest replaced) while iteration k+1's passes run. Each
    commit first waits for the one before, so commits stay one at a time and in
    order, and the driver hands over copies (it goes on changing its state).
    A kill -9 meanwhile leaves iteration k−1 committed, as a kill just before
    the commit would. A run with slot state commits before the next iteration
    writes its slot (the slot of k−1, which must not be overwritten while k is
    not committed), so it commits in the caller's thread; but for iteration 0,
    which has no k−1 (a kill before its commit leaves a store that cannot be
    resumed either way), and whose slot iteration 1 only reads.
    """

    run: RunStore
    config: TrainConfig
    monitor: object = None
    background: bool = True
    _pending: threading.Thread | None = field(default=None, repr=False)
    _errors: list = field(default_factory=list, repr=False)

    def begin(self, iteration: int) -> None:
        """Iteration ``iteration`` starts; a signal whose exception a finalizer ate stops the run here instead, with
        iteration − 1 committed (the commit under way written first): the boundary of every solver and phase."""
        stop_if_signalled(before=self.flush)
        self.run.begin_iteration(iteration)

    def commit(self, state, history, stopping, stopped) -> None:
        best = (stopping.summary(), stopping.best_weights) if stopping is not None else (None, None)
        checkpoint = Checkpoint(state.iteration, [np.array(W, np.float64) for W in state.weights],
                                {name: np.array(value, np.float64) for name, value in state.carry.items()},
                                best[0], None if best[1] is None else [np.array(W, np.float64) for W in best[1]])
        why = f"stopped early; the model is iteration {stopping.best_iteration}" if stopped else None
        args = (checkpoint, list(history), why, bool(stopped))
        self.flush()
        if self.background and (not self.run.keeps_slot_state or checkpoint.iteration == 0):
            self._pending = threading.Thread(target=self._commit_catching, args=args, name="admm-dask-commit")
            self._pending.start()
        else:
            self._commit(*args)

    def _commit(self, checkpoint, history, why, stopped) -> None:
        self.run.commit(checkpoint, history, self.config.iterations, stopped=stopped)
        if self.monitor is not None:
            self.monitor.on_commit(history, checkpoint.iteration, self.config.iterations, stopped=why)

    def _commit_catching(self, *args) -> None:
        try:
            self._commit(*args)
        except BaseException as exc:  # noqa: BLE001 -- raised in the caller's thread by flush()
            self._errors.append(exc)

    @contextlib.contextmanager
    def committing(self):
        """Run the driver inside: on the way out the commit under way is written and its error, if it failed, raised.

        A failed background commit wins over an error the driver raised meanwhile (a numerical error, a lost
        worker, Ctrl-C), which it chains: the store lacks that iteration, and the user must hear why (a full disk)
        before resuming.
        """
        try:
            yield self
        except BaseException:
            self.flush()
            raise
        self.flush()

    def flush(self) -> None:
        """Wait for the commit under way and raise its error, if it failed."""
        if self._pending is not None:
            self._pending.join()
            self._pending = None
        if self._errors:
            raise self._errors.pop()
