"""The pipeline's keeper commits a run without slot state (gauss-newton), and every run's iteration 0, in the background,
one commit at a time, in order."""
import threading

import numpy as np
import pytest

from pipeline.training import _RunKeeper
from solvers.config import TrainConfig
from solvers.loop import LoopState


class SlowRun:
    """A run store whose commit waits until the test releases it, recording what it wrote."""

    def __init__(self, slot_state=False, fail=False):
        self.keeps_slot_state = slot_state
        self.fail = fail
        self.release = threading.Event()
        self.started = threading.Event()
        self.done = []

    def begin_iteration(self, iteration):
        pass

    def commit(self, checkpoint, history, target, stopped=False):
        self.started.set()
        assert self.release.wait(5), "the commit was never released"
        if self.fail:
            raise OSError("disk full")
        self.done.append((checkpoint.iteration, len(history), checkpoint.weights[0].copy(),
                          checkpoint.carry["x"].copy()))


def state(k, value):
    return LoopState(k, [np.full((2, 3), value)], {"x": np.full(4, value)})


def test_commit_returns_before_the_checkpoint_is_written_and_keeps_a_copy():
    run = SlowRun()
    keeper = _RunKeeper(run, TrainConfig(iterations=5))
    s0 = state(0, 1.0)
    keeper.commit(s0, [], None, False)  # returns while the run store still writes iteration 0
    assert run.started.wait(5) and run.done == []
    s0.weights[0][:] = 7.0  # the driver goes on changing its arrays meanwhile
    s0.carry["x"][:] = 7.0
    run.release.set()
    keeper.commit(state(1, 2.0), [{"iteration": 1}], None, False)  # waits for iteration 0's commit first
    keeper.flush()
    assert [d[0] for d in run.done] == [0, 1] and [d[1] for d in run.done] == [0, 1]
    assert np.all(run.done[0][2] == 1.0) and np.all(run.done[0][3] == 1.0)  # what was handed over, not the later values
    assert np.all(run.done[1][2] == 2.0)


def test_a_failed_background_commit_is_raised_by_the_next_commit_or_flush():
    run = SlowRun(fail=True)
    keeper = _RunKeeper(run, TrainConfig(iterations=5))
    keeper.commit(state(0, 1.0), [], None, False)
    run.release.set()
    with pytest.raises(OSError, match="disk full"):
        keeper.flush()
    keeper.flush()  # raised once


def test_a_run_with_slot_state_commits_before_the_next_iteration_writes_its_slot():
    """Iteration k >= 1 is written when commit returns (k + 1 writes k − 1's slot); iteration 0, which has no k − 1,
    in the background (iteration 1 only reads its slot)."""
    run = SlowRun(slot_state=True)
    keeper = _RunKeeper(run, TrainConfig(iterations=5))
    keeper.commit(state(0, 1.0), [], None, False)
    assert run.started.wait(5) and run.done == []  # returned while iteration 0 is written
    run.release.set()
    keeper.commit(state(1, 2.0), [{"iteration": 1}], None, False)
    assert [d[0] for d in run.done] == [0, 1]  # iteration 1: written when commit returns


def test_a_failed_background_commit_is_not_hidden_by_an_error_the_driver_raises_meanwhile():
    """Iteration k's commit fails in the background (a full disk) and k+1 then raises: the user hears of the disk."""
    run = SlowRun(fail=True)
    keeper = _RunKeeper(run, TrainConfig(iterations=5))
    with pytest.raises(OSError, match="disk full") as raised:
        with keeper.committing():
            keeper.commit(state(0, 1.0), [], None, False)
            run.release.set()
            raise RuntimeError("non-finite numbers in iteration 1")
    assert isinstance(raised.value.__context__, RuntimeError)  # the driver's error is chained, not lost
    with pytest.raises(RuntimeError, match="iteration 1"):  # with every commit written, the driver's error stands
        with _RunKeeper(SlowRun(), TrainConfig(iterations=5)).committing():
            raise RuntimeError("iteration 1")
