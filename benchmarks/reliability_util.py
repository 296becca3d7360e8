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


class Matrix:
    """Session 15's cell runner and judge (reliability_matrix_s15.py, rel15_s15.md), as an object, for the later
    matrices (reliability_matrix_s17.py).

    A cell runs one command in the scratch folder ``W`` and is **ok** when it exits non-zero with exactly one stderr
    line ``error: …`` (the estimator: one ``type: message`` line) that is not ``unexpected …``, no traceback leaked,
    no store in ``keep`` changed (SHA-256 over its files) and nothing was left behind; a cell where success is right
    (``expect_ok``) must exit 0 with no traceback and no kept store changed but those in ``out_ok``.
    """

    TRACE = __import__("re").compile(r"Traceback \(most recent call last\)|^\s+File \"", __import__("re").M)
    EST_WRAP = ("\nimport sys\ntry:\n{code}\nexcept Exception as exc:\n"
                "    sys.stderr.write(type(exc).__module__ + '.' + type(exc).__name__ + ': ' + str(exc) + '\\n')\n"
                "    sys.exit(1)\n")

    def __init__(self, root, scratch, only=(), mounts=()):
        import os
        import shutil
        import sys

        self.root, self.W, self.only, self.res, self.keep = root, scratch, list(only), {}, []
        for m in mounts:
            subprocess.run(["umount", str(scratch / m)], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        self.env = {**os.environ, "PYTHONPATH": str(root)}
        self.python = sys.executable
        self.nice = shutil.which("nice")  # absolute: a cell may run with a PATH that lacks it (no sbatch)

    def cmd(self, *a):
        if a[0] == "-c":
            return [self.nice, "-n", "15", self.python, "-c", self.EST_WRAP.format(code=a[1])]
        return [self.nice, "-n", "15", self.python, "-m", *map(str, a)]

    def digest(self, path):
        import hashlib

        if not path.exists() and not path.is_symlink():
            return None
        h = hashlib.sha256()
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for p in files:
            h.update(str(p.relative_to(path.parent)).encode())
            h.update(p.read_bytes())
        return h.hexdigest()[:16]

    def listing(self):
        return {str(p.relative_to(self.W)) for p in self.W.rglob("*")}

    def selected(self, name):
        return not self.only or any(name.startswith(o) for o in self.only)

    def snapshot(self, keep):
        keep = tuple(self.keep) + tuple(keep)
        return {k: self.digest(self.W / k) for k in keep if (self.W / k).exists()}, self.listing()

    def record(self, name, a, r, snap, seconds, expect_ok=False, out_ok=(), expect_rc=None):
        import re

        before, files_before = snap
        err = [line for line in r["stderr"].strip().splitlines() if line.strip()
               and not re.match(r"(slurm|pbs): (scheduler|waiting)|the cluster: no worker connected", line)]
        # ^ a cluster's progress lines (batch: the scheduler, its jobs; any: waiting for a first worker)
        new = sorted(p for p in self.listing() - files_before
                     if not any(p == o or p.startswith(o + "/") or p.startswith(o + ".") for o in out_ok))
        new_top = sorted({p.split("/")[0] for p in new if "/" not in p or p.split("/")[0] in before})
        W = str(self.W) + "/"
        res = {"cmd": ("python -c …" if a[0] == "-c" else "python -m " + " ".join(map(str, a))).replace(W, ""),
               "code": a[1].strip() if a[0] == "-c" else None,
               "rc": r["rc"], "stderr_lines": len(err), "stderr": [e[:400] for e in err[-4:]],
               "traceback": bool(self.TRACE.search(r["stderr"])),
               "stdout_last": (r["stdout"].strip().splitlines() or [""])[-1][:300], "seconds": round(seconds, 1),
               "changed": [k for k, v in before.items() if self.digest(self.W / k) != v],
               "left": [p for p in new if p.split("/")[0] in before] + [p for p in new_top if p not in before]}
        if expect_ok:
            res["ok"] = r["rc"] == 0 and not set(res["changed"]) - set(out_ok) and not res["traceback"]
        else:
            signalled = expect_rc in (130, 143)  # a signal's one line: "interrupted (SIGINT, Ctrl-C): …" (pipeline.signals)
            one = len(err) == 1 and (err[0].startswith("interrupted (" if signalled else "error: ") or a[0] == "-c") \
                and "unexpected" not in err[0]
            res["ok"] = (r["rc"] != 0 if expect_rc is None else r["rc"] == expect_rc) and one and \
                not res["traceback"] and not res["changed"] and not res["left"]
        self.res[name] = res
        print(("ok  " if res["ok"] else "BAD ") + name, res["rc"], f"{seconds:.1f}s",
              err[-1][:240] if err else res["stdout_last"][:200], res["changed"] or "", res["left"] or "",
              "" if len(err) < 2 else f"[{len(err)} lines: {err[0][:120]}]", flush=True)
        return res

    def run(self, name, *a, keep=(), expect_ok=False, out_ok=(), timeout=600, pre=None):
        import time

        if not self.selected(name):
            return None
        snap = self.snapshot(keep)
        t = time.time()
        try:
            p = subprocess.run((pre or []) + self.cmd(*a), cwd=self.W, env=self.env, capture_output=True, text=True,
                               timeout=timeout)
            r = {"rc": p.returncode, "stderr": p.stderr, "stdout": p.stdout}
        except subprocess.TimeoutExpired as e:
            r = {"rc": "timeout", "stderr": (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else
                 (e.stderr or ""), "stdout": ""}
        return self.record(name, a, r, snap, time.time() - t, expect_ok, out_ok)

    def popen(self, *a):
        return start(self.cmd(*a), self.W, self.env)

    def finish(self, proc):
        return finish(proc, lines=3, trace=self.TRACE)

    def signal_case(self, name, a, cond, keep=(), delay=0.0, sig=signal.SIGINT, expect_rc=130, intact=None):
        """Start ``a``, wait until ``cond()`` (then ``delay`` s), send ``sig``; judge as :meth:`record` (the kept
        stores unchanged, one line, exit ``expect_rc``); ``intact``: a check of a store that may change (resume)."""
        if not self.selected(name):
            return None
        snap = self.snapshot(keep)
        t = time.time()
        proc = self.popen(*a)
        reached = False
        end = time.time() + 300
        while proc.poll() is None and time.time() < end:
            if cond():
                reached = True
                break
            time.sleep(0.01)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(sig)
        o, e = proc.communicate(timeout=300)
        res = self.record(name, a, {"rc": proc.returncode, "stderr": e, "stdout": o}, snap, time.time() - t,
                          expect_rc=expect_rc)
        res["signalled_in_window"] = reached
        if intact is not None:
            res["intact"] = bool(intact())
            res["ok"] = res["ok"] and res["intact"]
        return res

    def mount(self, name, size="20m"):
        (self.W / name).mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.W / name)], check=True)

    def umount(self, name):
        subprocess.run(["umount", str(self.W / name)], check=False)

    def write(self, out):
        import json
        import re

        leftovers = sorted(str(p.relative_to(self.W)) for p in self.W.rglob("*")
                           if re.search(r"\.lock$|\.reader-|partial|\.tmp|\.swap|\.old-|\.replaced-|\.stale-|"
                                        r"admm-dask-clock", p.name))
        self.res["_leftover_locks_and_temps_at_the_end"] = leftovers
        out.write_text(json.dumps(self.res, indent=1))
        bad = [k for k, v in self.res.items() if isinstance(v, dict) and "ok" in v and not v["ok"]]
        print(f"{len(self.res) - 1} cells, {len(bad)} not ok: {bad}; left at the end: {leftovers}")
