"""Shared fixtures and helpers: small data sets (real and made), a dense grid for brute-force minimisation, subprocess runs."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
MNIST = SHARED_DATA / "mnist70k_uint8.npz"


def quiet(_line) -> None:
    """A ``report`` that drops the lines (tests check results, not the progress lines)."""


def resume_as_older_store(client, store, name: str, iterations: int, default=None, monkeypatch=None):
    """Return ``train(client, store=store, resume=True, iterations=iterations)`` after deleting setting ``name`` from the
    run store's stored config, as a store written before the setting existed has it.

    ``default`` (with ``monkeypatch``): the setting's default during the resume, so the resume must take the stored
    rule from ``STORED_BEFORE`` and not from the field's default (as after the default is changed).
    """
    import inspect

    import zarr

    from pipeline.training import train
    from solvers.config import TrainConfig

    group = zarr.open_group(store, mode="r+")
    old = dict(group.attrs["config"])
    del old[name]
    group.attrs["config"] = old
    if monkeypatch is not None:
        init = TrainConfig.__init__
        names = list(inspect.signature(init).parameters)[1:]
        defaults = list(init.__defaults__)
        defaults[names.index(name) - (len(names) - len(defaults))] = default
        monkeypatch.setattr(init, "__defaults__", tuple(defaults))
        assert getattr(TrainConfig(), name) == default
    return train(client, store=store, resume=True, iterations=iterations, report=quiet)


def run_module(*args, cwd=None, timeout=300):
    """Run ``python -m ARGS…`` from the repository root (or ``cwd``); return the completed process (text output)."""
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout)


_MAINS = r"""
import contextlib, importlib, io, json, logging, sys, warnings
out = []
for module, *argv in json.loads(sys.stdin.read()):
    stdout, stderr = io.StringIO(), io.StringIO()
    log = logging.getLogger("pipeline")  # as a fresh interpreter: no handler bound to an earlier command's stderr
    for handler in list(log.handlers):
        log.removeHandler(handler)
    log.propagate, log.level = True, logging.NOTSET
    # catch_warnings marks the filters changed, so each command shows its warnings once, as its own process would
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), warnings.catch_warnings():
        try:
            code = importlib.import_module(module).main(argv)
        except SystemExit as exc:  # argparse's errors; a text code is printed and exits 1, as the interpreter does
            code = exc.code
            if isinstance(code, str):
                print(code, file=sys.stderr)
                code = 1
    out.append([0 if code is None else code, stdout.getvalue(), stderr.getvalue()])
sys.__stdout__.write(json.dumps(out))
"""


def run_mains(*commands, timeout=300):
    """Run each command ``[module, arg, …]`` as ``module.main([arg, …])``, in turn, in ONE fresh ``python`` process
    started from the repository root (one interpreter start and import instead of one per command; each command's
    stdout, stderr and exit status captured apart); return a completed process per command. For commands that end
    before they start a cluster or write anything (refusals); :func:`run_module` runs ``python -m`` itself."""
    commands = [[str(a) for a in command] for command in commands]
    r = subprocess.run([sys.executable, "-c", _MAINS], input=json.dumps(commands), cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr  # nothing printed outside the commands (at import or at exit) goes unchecked
    return [subprocess.CompletedProcess([sys.executable, "-m", *command], code, out, err)
            for command, (code, out, err) in zip(commands, json.loads(r.stdout))]


def brute_force_min(f, lo=-40.0, hi=40.0, n=400_001):
    """Return the minimum of a 1-D function over a dense grid (the oracle for closed forms)."""
    z = np.linspace(lo, hi, n)
    return float(np.min(f(z)))


def in_memory_and_store(tmp_path, X, y, config, chunk_rows, split):
    """Write (X, y) as a data store of ``chunk_rows`` chunks and create a run store for ``config`` beside it; return
    the in-memory runner over the same chunks and ``split`` (or ``split(chunk bounds)`` when it is a function), the
    pipeline's own solver (same model), the run store, the chunk bounds and the split: the pair the
    pipeline-equals-in-memory tests compare."""
    from pipeline.passes import bounds
    from solvers import make_solver
    from solvers.driver import model_from_moments
    from solvers.inmemory import InMemoryRunner
    from solvers.losses import encode_labels
    from solvers.stats import moment_sums
    from storage.data import write_data
    from storage.runstore import RunStore

    n, d = X.shape
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=chunk_rows)
    shift = X[0].astype(np.float64)
    model = model_from_moments(config, d, moment_sums(X, shift), shift, np.unique(y))
    chunks = bounds(n, chunk_rows)
    split = split(chunks) if callable(split) else split
    mem = InMemoryRunner(make_solver(config, d, **model), X, encode_labels(y, model["classes"]), bounds=chunks,
                         split=split)
    solver_d = make_solver(config, d, **model)
    run = RunStore.create(tmp_path / "r.zarr", config=config.to_dict(), data={"path": str(tmp_path / "d.zarr")},
                          state_widths=solver_d.state_widths(), n_samples=n, chunk_rows=chunk_rows, **model)
    return mem, solver_d, run, chunks, split


def make_data(n=3000, d=10, n_classes=2, seed=0):
    """Return X (n × d, features of mixed scale and offset) and labels in n_classes equal-count bins of a nonlinear score."""
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, d)) * rng.uniform(0.5, 3, d) + rng.normal(size=d)).astype(np.float32)
    score = X[:, 0] * X[:, 1] + X[:, 2] - 0.5 * X[:, 3] ** 2
    y = np.digitize(score, np.quantile(score, np.linspace(0, 1, n_classes + 1)[1:-1]))
    return X, y


def make_regression(n=4000, d=3, seed=0):
    """Return X (uniform in [−2, 2]^d) and y = 4 (sin x0 + x1² + 0.1 ε) + 25: smooth, nonlinear, R² ≤ 0.995."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, size=(n, d)).astype(np.float32)
    y = 4 * (np.sin(X[:, 0]) + X[:, 1] ** 2 + 0.1 * rng.normal(size=n)) + 25
    return X, y


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Which tests one pytest-xdist worker runs one after another (``-n … --dist loadgroup`` in pyproject.toml): the
    SLURM tests (mark ``slurm``) all in one worker, as they share the one local SLURM node; the tests of a module that
    use one of its module-scoped fixtures in one worker, which builds the fixture once. Every other test goes to
    whichever worker is free."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))
        elif any(d and d[-1].scope in ("module", "class", "package") for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


@pytest.fixture(scope="session")
def digits_0_vs_2():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    keep = np.isin(d.target, [0, 2])
    return train_test_split(d.data[keep], d.target[keep], test_size=0.3, random_state=0)


@pytest.fixture(scope="session")
def mnist():
    if not MNIST.exists():
        pytest.skip(f"MNIST file not found at {MNIST} (shared/data must sit beside the repo)")
    with np.load(MNIST) as f:
        return f["X"], f["y"]


@pytest.fixture(scope="session")
def client():
    """A two-worker local Dask cluster (processes, one thread each), shared by the pipeline tests."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture(scope="session")
def faults_data(tmp_path_factory, client):
    """Data for the batch-cluster fault tests and the local run's weights (tests/test_cluster_faults.py, test_cluster_supervision.py)."""
    from tests.batch import make_faults_data

    return make_faults_data(tmp_path_factory, client)


def net_output(solver, weights, x, act, layer=None, dz=None):
    """Return a dense network's output rows, ``dz`` added to the pre-activation of ``layer`` (finite differences)."""
    a = x
    for l, W in enumerate(weights[:-1], start=1):
        z = a @ W[:, :-1].T + W[:, -1]
        if l == layer:
            z = z + dz
        a = act(z)
    return a @ weights[-1][:, :-1].T + weights[-1][:, -1]


def output_jacobian(solver, weights, x_row, act, layer, h=1e-6):
    """Return ∂ output / ∂ z_layer of one sample (a 1-row ``x_row``) by central differences."""
    width = solver.widths[layer]
    J = np.empty((solver.widths[-1], width))
    for j in range(width):
        e = np.zeros(width)
        e[j] = h
        J[:, j] = (net_output(solver, weights, x_row, act, layer, e) - net_output(solver, weights, x_row, act, layer, -e))[0] / (2 * h)
    return J


def weight_gradient(loss, weights, layer, h=1e-6):
    """Return ∂ loss(weights) / ∂ W_layer by central differences, entry by entry."""
    grad = np.zeros_like(weights[layer - 1])
    for idx in np.ndindex(grad.shape):
        wp, wm = [W.copy() for W in weights], [W.copy() for W in weights]
        wp[layer - 1][idx] += h
        wm[layer - 1][idx] -= h
        grad[idx] = (loss(wp) - loss(wm)) / (2 * h)
    return grad
