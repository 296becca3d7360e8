"""pipeline/signals.py directly: a signal never ends a run with status 0."""
import gc
import os
import signal
import sys

import pytest

from pipeline.signals import exit_on_signals


class _SignalsWhenCollected:
    """Sends ``signum`` to this process from its finalizer: the handler's exception is raised inside ``__del__``,
    where Python prints it ("Exception ignored in ...") and carries on, as when a signal lands in any finalizer."""

    def __init__(self, signum):
        self.signum = signum

    def __del__(self):
        os.kill(os.getpid(), self.signum)
        for _ in range(1000):  # the handler runs at the next bytecode boundary, still in here
            pass


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_whose_exception_a_finalizer_ate_still_exits_with_its_code(signum, code, capsys, monkeypatch):
    from pipeline.signals import Terminated

    eaten = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: eaten.append(u.exc_type))  # Python's "Exception ignored in"
    with pytest.raises(SystemExit) as ended:
        with exit_on_signals(store=None):
            _SignalsWhenCollected(signum)  # collected at once: the signal arrives inside __del__
            gc.collect()
    assert ended.value.code == code
    assert eaten == [Terminated if signum == signal.SIGTERM else KeyboardInterrupt]  # the finalizer ate it
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(("interrupted (SIGINT", "terminated (SIGTERM"))


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_in_the_block_exits_with_its_code(signum, code):
    with pytest.raises(SystemExit) as ended:
        with exit_on_signals(store=None):
            os.kill(os.getpid(), signum)
            for _ in range(10**6):
                pass
    assert ended.value.code == code


def test_a_block_without_a_signal_ends_normally():
    with exit_on_signals(store=None):
        pass
