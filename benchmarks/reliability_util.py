"""Helpers of the bad-input scripts (reliability_cases_s13.py, reliability_matrix_s15.py): a command held paused
while another one runs against the same store."""
from __future__ import annotations

import signal
import subprocess
import time


def start(argv, cwd, env) -> subprocess.Popen:
    """Start ``argv`` in ``cwd`` with its output captured (text)."""
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def paused(proc, cond, t=300) -> bool:
    """Wait until ``cond()``, then SIGSTOP ``proc``; return True if it got there (False: it ended, or ``t`` s)."""
    end = time.time() + t
    while not cond():
        if proc.poll() is not None or time.time() > end:
            return False
        time.sleep(0.02)
    proc.send_signal(signal.SIGSTOP)
    return True


def finish(proc, lines: int = 2, trace=None) -> dict:
    """SIGCONT ``proc`` and wait: its exit status, last stdout line and last ``lines`` stderr lines (``trace``, a
    compiled pattern: also whether stderr matched it, i.e. a traceback leaked)."""
    proc.send_signal(signal.SIGCONT)
    o, e = proc.communicate(timeout=600)
    err = [line for line in e.strip().splitlines() if line.strip()]
    res = {"rc": proc.returncode, "stdout_last": (o.strip().splitlines() or [""])[-1][:300], "stderr": err[-lines:]}
    if trace is not None:
        res["traceback"] = bool(trace.search(e))
    return res
