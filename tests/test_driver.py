"""The one training driver (solvers/driver.py) that the in-memory reference and the Dask pipeline both run."""
import numpy as np
import pytest

from solvers import make_solver
from solvers.config import TrainConfig
from solvers.driver import MAX_CLASSES, classes_of, drive, model_from_moments, split_chunks
from solvers.errors import InputError
from solvers.reference import InMemoryRunner, fit_in_memory
from solvers.stats import moment_sums


def test_classes_in_one_place():
    from storage.data import MAX_LABELS

    assert MAX_CLASSES == MAX_LABELS  # what a data store records is what classification accepts
    c = classes_of(np.array([0.0, 1.0, 2.0]))
    assert c.dtype == np.int64 and c.tolist() == [0, 1, 2]
    assert classes_of(np.array([0.5, 1.0])).dtype == np.float64
    with pytest.raises(InputError, match="at least two classes"):
        classes_of(np.array([3]))
    with pytest.raises(InputError, match=f"at most {MAX_CLASSES} classes.*--task regression"):
        classes_of(np.arange(MAX_CLASSES + 1))
    with pytest.raises(InputError, match=f"more than {MAX_CLASSES} distinct values"):
        classes_of(None)


def test_in_memory_fit_casts_whole_float_labels_like_the_pipeline():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = (X[:, 0] > 0).astype(np.float64)
    result = fit_in_memory(X, y, TrainConfig(hidden=(4,), iterations=1))
    assert result.network.classes.dtype == np.int64
    assert result.network.predict(X).dtype == np.int64


class Recorder:
    """A keeper that records what the driver asks of it."""

    def __init__(self):
        self.calls = []

    def begin(self, iteration):
        self.calls.append(("begin", iteration))

    def commit(self, state, history, stopping, stopped):
        self.calls.append(("commit", state.iteration, len(history), stopping is not None, stopped))


def _setup(config, n=600):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    shift = X[0].astype(np.float64)
    model = model_from_moments(config, 4, moment_sums(X, shift), shift, np.unique(y))
    solver = make_solver(config, 4, **model)
    _, chunks, split = split_chunks(n, None, n, config)
    return X, y, solver, InMemoryRunner(solver, X, np.searchsorted(model["classes"], y), bounds=chunks,
                                        split=split), split


def test_drive_commits_every_iteration_after_beginning_it():
    config = TrainConfig(hidden=(5,), iterations=3, hidden_alpha="readout")  # probe adds its choice's line
    X, y, solver, runner, held = _setup(config)
    keeper, lines = Recorder(), []
    out = drive(solver, runner, keeper, config, evaluate=lambda net: {"test": net.score(X, y)}, held_out=False,
                report=lines.append)
    assert keeper.calls == [("commit", 0, 0, False, False), ("begin", 1), ("commit", 1, 1, False, False),
                            ("begin", 2), ("commit", 2, 2, False, False), ("begin", 3),
                            ("commit", 3, 3, False, False), ("begin", 4)]  # the keeper releases slot 4
    assert [h["iteration"] for h in out.history] == [1, 2, 3] and out.loop_state.iteration == 3
    assert out.history[-1]["test_accuracy"] == pytest.approx(out.network.score(X, y))
    assert lines[0].startswith("initialised (forward) in") and lines[1].split()[:3] == ["iter", "seconds", "train"]
    assert [int(l.split()[0]) for l in lines[2:]] == [1, 2, 3]


def _scripted_losses(monkeypatch, losses):
    """Make every iteration's metrics carry the next of ``losses`` as its held-out loss."""
    import solvers.driver as driver

    real, losses = driver.iterate, iter(losses)

    def iterate(*args, **kwargs):
        for state, metrics in real(*args, **kwargs):
            yield state, {**metrics, "validation_loss": next(losses)}
    monkeypatch.setattr(driver, "iterate", iterate)


def test_drive_stops_early_and_keeps_the_best_iteration(monkeypatch):
    config = TrainConfig(hidden=(5,), iterations=12, validation_fraction=0.2, patience=2)
    X, y, solver, runner, held = _setup(config)
    scores = iter([0.5, 0.9, 0.8, 0.95, 0.7, 0.6, 1.0])  # best at 4, no gain at 5 and 6: stop
    _scripted_losses(monkeypatch, [0.7, 0.5, 0.6, 0.4, 0.45, 0.5, 0.3])  # lowest loss also at 4
    seen = []
    out = drive(solver, runner, Recorder(), config, held_out=True,
                evaluate=lambda net: seen.append(net.weights) or {"validation": next(scores)})
    assert [h["validation_accuracy"] for h in out.history] == [0.5, 0.9, 0.8, 0.95, 0.7, 0.6]
    assert out.best_iteration == 4 and out.loop_state.iteration == 6
    for W, W_best in zip(out.network.weights, seen[3]):  # the model is iteration 4's
        np.testing.assert_array_equal(W, W_best)
    assert held is not None and 0 < held.count(600) < 600  # the split holds out rows of the (one) chunk


def test_drive_goes_on_while_the_held_out_loss_falls(monkeypatch):
    config = TrainConfig(hidden=(5,), iterations=12, validation_fraction=0.2, patience=2)
    X, y, solver, runner, _ = _setup(config)
    scores = iter([0.5, 0.9, 0.8, 0.85, 0.85, 0.88, 0.87, 0.86])  # best at 2, never reached again
    _scripted_losses(monkeypatch, [0.7, 0.5, 0.45, 0.4, 0.35, 0.36, 0.37, 0.1])  # a new low up to 5
    lines = []
    out = drive(solver, runner, Recorder(), config, held_out=True, evaluate=lambda net: {"validation": next(scores)},
                report=lines.append)
    assert out.loop_state.iteration == 7 and out.best_iteration == 2  # patience counts from the lowest loss
    assert lines[-1].startswith("stopping early") and "the model is iteration 2" in lines[-1]


def test_drive_names_the_model_iteration_when_the_budget_ends_the_run():
    config = TrainConfig(hidden=(5,), iterations=3, validation_fraction=0.2, patience=5)
    X, y, solver, runner, _ = _setup(config)
    scores, lines = iter([0.5, 0.9, 0.8]), []
    out = drive(solver, runner, Recorder(), config, held_out=True, evaluate=lambda net: {"validation": next(scores)},
                report=lines.append)
    assert out.loop_state.iteration == 3 and out.best_iteration == 2
    assert lines[-1] == "the model is iteration 2 (best validation accuracy 0.9000)"
    assert out.still_rising  # iteration 2 of 3 beat iteration 1: the callers say so (newuser16 F1)


def test_still_rising_rule():
    """newuser16 F1: the kept iteration is one of the last max(2, ⌈patience/5⌉) and beats every earlier score."""
    from solvers.validation import rising_window, still_rising

    assert [rising_window(p) for p in (0, 1, 10, 11, 20, 50)] == [2, 2, 2, 3, 4, 10]
    up = {k: 0.5 + 0.01 * k for k in range(1, 21)}
    assert still_rising(up, 20, 20, 10) and still_rising({**up, 20: 0.6}, 19, 20, 10)
    assert not still_rising(up, 18, 20, 10)  # the kept model is older than the window
    assert still_rising(up, 18, 20, 11)  # a longer patience widens the window: 3
    flat = {**up, 19: up[17], 20: up[17]}
    assert not still_rising(flat, 19, 20, 10)  # a tie (broken by the loss) is no rise
    assert not still_rising({1: 0.5, 2: 0.9}, 2, 2, 10)  # nothing before the window: too short to tell
    assert not still_rising(up, None, 20, 10)


def test_drive_does_not_go_on_after_a_stop_without_changes():
    config = TrainConfig(hidden=(5,), iterations=5)
    X, y, solver, runner, _ = _setup(config)
    first = drive(solver, runner, Recorder(), config, evaluate=lambda net: {}, held_out=False)
    keeper, lines = Recorder(), []
    again = drive(solver, runner, keeper, config, evaluate=lambda net: {}, held_out=False, resume=first.loop_state,
                  history=first.history, stopped_early=True, report=lines.append)
    assert keeper.calls == [] and again.history == first.history
    assert "stopped early" in lines[-1]


def test_runners_get_reads_as_a_dict_and_errors_carry_their_iteration():
    """Every solver's passes reach the runner with ``read`` None or ``{array: iteration}``; a NaN names its iteration."""
    from solvers.errors import NumericalError
    from solvers.loop import initialize, iterate

    class Checking(InMemoryRunner):
        def run(self, kernel, params, *, read=None, **kwargs):
            assert read is None or isinstance(read, dict), (kernel, read)
            return super().run(kernel, params, read=read, **kwargs)

    for solver_name in ("admm", "dladmm", "gauss-newton"):
        config = TrainConfig(hidden=(5,), iterations=2, solver=solver_name)
        X, y, solver, runner, _ = _setup(config)
        checking = Checking(solver, X, np.searchsorted(solver.classes, y), bounds=runner.bounds)
        state = initialize(solver, checking)
        assert [s.iteration for s, _ in iterate(solver, checking, state, 2)] == [1, 2]

    config = TrainConfig(hidden=(5,), iterations=3, solver="admm")
    X, y, solver, runner, _ = _setup(config)
    state = initialize(solver, runner)
    runner.x = [np.full_like(x, np.inf) for x in runner.x]  # the next pass overflows
    with pytest.raises(NumericalError) as info:
        list(iterate(solver, runner, state, 3))
    assert info.value.iteration == 1 and "iteration 1" in str(info.value)


def test_every_solvers_resume_takes_the_runs_history():
    """The driver always passes history= to resume (it used to inspect each solver's signature)."""
    import inspect

    from solvers import SOLVERS
    from solvers.base import SolverBase

    for cls in [SolverBase, *(SOLVERS[name] for name in SOLVERS)]:
        parameter = inspect.signature(cls.resume).parameters.get("history")
        assert parameter is not None and parameter.default == (), cls


def test_a_rejected_step_is_marked_in_its_progress_line(monkeypatch):
    """Gauss-Newton's rejected steps repeated the line before unmarked (newuser15 F8): they end with 'rejected'."""
    import solvers.driver as driver

    real = driver.iterate

    def one_rejected(*args):
        for state, metrics in real(*args):
            yield state, {**metrics, "accepted": state.iteration != 2}

    monkeypatch.setattr(driver, "iterate", one_rejected)
    config = TrainConfig(hidden=(5,), iterations=3, hidden_alpha="readout")
    X, y, solver, runner, _ = _setup(config)
    lines = []
    out = drive(solver, runner, Recorder(), config, evaluate=lambda net: {"test": net.score(X, y)}, held_out=False,
                report=lines.append)
    rows = [line for line in lines if line.split()[:1] in (["1"], ["2"], ["3"])]
    assert [row.endswith("  rejected") for row in rows] == [False, True, False], lines
    # newuser16 F9: a rejected row shows no objective ('-'), which read as a fall when α fell; the history keeps it
    objectives = [row.removesuffix("  rejected").split()[-1] for row in rows]
    assert [value == "-" for value in objectives] == [False, True, False], lines
    assert all(isinstance(r["objective"], float) for r in out.history)  # the metrics keep every iteration's
