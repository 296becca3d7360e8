"""The peers of ``benchmarks/compare.py``: what a user would train with instead of admm-dask.

Every peer trains on the same task (the same Zarr data store, or the same rows
loaded from it into memory), with the same hidden layer sizes, and records test
accuracy against wall-clock time through a :class:`Curve`:

==================  ==========  ========================================================
peer                family      how
==================  ==========  ========================================================
``sklearn-stream``  stream      ``MLPClassifier(solver="adam").partial_fit`` on one Zarr
                                chunk at a time (chunks in a new random order every
                                epoch), features standardised with the mean and standard
                                deviation of one streaming pass over the store
``dask-ml``         stream      ``dask_ml.wrappers.Incremental(MLPClassifier(adam))`` on
                                ``da.from_zarr`` of the same store, standardised by
                                ``dask_ml.preprocessing.StandardScaler``; one
                                ``partial_fit`` per epoch (threaded scheduler, in process)
``torch-adam``      stream      PyTorch on the CPU (``torch.set_num_threads``), Adam,
                                minibatches drawn from one Zarr chunk at a time, same
                                streaming standardisation as ``sklearn-stream``
``torch-cnn``       stream      the same with the convolutional network of ``--set
                                layers=…`` (our ``--layers``: Conv2d + ReLU, MaxPool2d or
                                AvgPool2d, Linear + ReLU), cross-entropy, images scaled by
                                one global mean and standard deviation as ``--scaling
                                global``; skipped without convolutional layers
``mlp-lbfgs``       memory      ``MLPClassifier(solver="lbfgs", max_iter=m)`` fitted from
                                scratch for m = 1, 2, 4, …: each point is a complete run
                                (restarting L-BFGS through ``warm_start`` would discard its
                                curvature memory and slow it down)
``mlp-adam``        memory      ``MLPClassifier(solver="adam")``, one ``partial_fit`` epoch
                                over the in-memory data per point (optimizer state kept)
``mlp-sgd``         memory      the same with ``solver="sgd"`` (momentum 0.9, Nesterov)
``logreg``          floor       ``LogisticRegression(max_iter=m)`` (lbfgs), m = 1, 2, 4, …
==================  ==========  ========================================================

All use the libraries' default hyperparameters (learning rate 1e-3, minibatches
of ``batch_size`` rows: 200, scikit-learn's default) — the settings a user gets
without tuning. Time runs from the start of the method and includes the
statistics pass, standardisation and every read of the store; it stops while
the test accuracy is computed (:class:`Clock`). Data already in memory for the
``memory`` peers was loaded before their clock starts.
"""
from __future__ import annotations

import contextlib
import importlib.util
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

INSTALL_HINT = "pip install -e '.[bench]'"


class BudgetExceeded(Exception):
    """Raised inside a training loop when a method has used its ``--time-budget``."""


class Clock:
    """Wall-clock seconds since :meth:`start`, not counting the time spent in :meth:`paused` blocks.

    :meth:`cpu` gives this process's CPU seconds (all its threads) the same way.
    """

    def __init__(self):
        self.start()

    def start(self) -> "Clock":
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()
        self.excluded = self.cpu_excluded = 0.0
        return self

    def now(self) -> float:
        return time.perf_counter() - self.t0 - self.excluded

    def wall(self) -> float:
        return time.perf_counter() - self.t0

    def cpu(self) -> float:
        return time.process_time() - self.cpu0 - self.cpu_excluded

    @contextlib.contextmanager
    def paused(self):
        t, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - t
            self.cpu_excluded += time.process_time() - c


@dataclass
class Curve:
    """Test accuracy against training seconds of one method, printed as it grows."""

    method: str
    budget: float | None = None
    points: list = field(default_factory=list)
    log: Callable[[str], None] = print

    def add(self, step, seconds: float, accuracy: float, wall_seconds: float | None = None, **extra) -> None:
        point = {"step": step, "seconds": float(seconds), "test_accuracy": float(accuracy)}
        if wall_seconds is not None:
            point["wall_seconds"] = float(wall_seconds)
        point.update(extra)
        self.points.append(point)
        step_txt = f"{step:g}" if isinstance(step, (int, float)) else str(step)
        self.log(f"  {self.method:<24} step {step_txt:>7}  {seconds:9.2f} s  test acc {accuracy:.4f}")

    def evaluate(self, clock: Clock, step, predict: Callable[[], np.ndarray], y_test, **extra) -> None:
        """Record the accuracy of ``predict()`` (clock paused) at the clock's time; raise when over budget."""
        seconds, cpu = clock.now(), clock.cpu()
        with clock.paused():
            accuracy = float(np.mean(np.asarray(predict()) == np.asarray(y_test)))
        self.add(step, seconds, accuracy, wall_seconds=clock.wall(), cpu_seconds=cpu, **extra)
        if self.over(seconds):
            raise BudgetExceeded

    def over(self, seconds: float) -> bool:
        return self.budget is not None and seconds >= self.budget


@dataclass
class PeerSettings:
    """What every peer is told: network shape, how long to train, minibatch size, threads, seed."""

    hidden: tuple
    epochs: int
    batch_size: int = 200
    lbfgs_max_iter: int = 256
    logreg_max_iter: int = 1024
    threads: int = 2
    seed: int = 0
    learning_rate: float = 1e-3
    layers: str = ""        # our --layers (torch-cnn builds the same network); "" for dense ``hidden``
    input_shape: tuple = ()  # (H, W, C) of a row for ``layers``; () a square one-channel image


def data_bytes(n: int, d: int, hidden) -> float:
    """Memory of a method holding X and a standardised copy (float32), plus slack for one more copy."""
    return 3.0 * 4 * n * d


def full_batch_bytes(n: int, d: int, hidden) -> float:
    """... plus full-batch activations, deltas and a spare of every hidden layer (lbfgs)."""
    return data_bytes(n, d, hidden) + 3.0 * 4 * n * sum(hidden)


@dataclass
class Peer:
    name: str
    family: str          # "stream", "memory" or "floor"
    description: str
    modules: tuple       # import names it needs
    run: Callable
    memory: Callable | None = None   # (n, d, hidden) -> bytes it needs in memory; None: streams


def missing_modules(peer: Peer) -> list[str]:
    return [m for m in peer.modules if importlib.util.find_spec(m) is None]


# ----------------------------------------------------------------------------- helpers
def stream_chunks(store):
    """Return the (start, stop) row bounds of the store's chunks."""
    c, n = store.chunk_rows, store.n_samples
    return [(s, min(s + c, n)) for s in range(0, n, c)]


def read_chunk(store, start: int, stop: int):
    """Read rows [start, stop) of X and y from the data store (checked for damage)."""
    from storage.data import read_rows

    return read_rows(str(store.path), "X", start, stop), read_rows(str(store.path), "y", start, stop)


def streaming_statistics(store):
    """One pass over the store: per-feature mean and standard deviation (1 where 0) and the classes."""
    shift = None
    n, s1, s2 = 0, 0.0, 0.0
    classes = set()
    for start, stop in stream_chunks(store):
        X, y = read_chunk(store, start, stop)
        if shift is None:
            shift = X[0].astype(np.float64)
        d = X.astype(np.float64) - shift
        n += d.shape[0]
        s1 = s1 + d.sum(axis=0)
        s2 = s2 + (d * d).sum(axis=0)
        classes.update(np.unique(y).tolist())
    mean_d = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean_d ** 2, 0.0))
    scale = np.where(std > 0, std, 1.0)
    return (shift + mean_d).astype(np.float32), scale.astype(np.float32), np.array(sorted(classes))


def standardize(X, mean, scale):
    return (np.asarray(X, np.float32) - mean) / scale


@contextlib.contextmanager
def _quiet():
    """Silence scikit-learn's ConvergenceWarning (stopping at max_iter is the point of a step)."""
    with warnings.catch_warnings():
        try:
            from sklearn.exceptions import ConvergenceWarning

            warnings.simplefilter("ignore", ConvergenceWarning)
        except ImportError:
            pass
        yield


def _mlp(settings: PeerSettings, solver: str, **kw):
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=tuple(settings.hidden), solver=solver,
                         batch_size=settings.batch_size, learning_rate_init=settings.learning_rate,
                         random_state=settings.seed, **kw)


def _standard_scaler(X):
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X)
    return scaler, scaler.transform(X).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- stream peers
def run_sklearn_stream(task, settings: PeerSettings, curve: Curve) -> dict:
    store = task.train_store_info()
    clf = _mlp(settings, "adam")
    rng = np.random.default_rng(settings.seed)
    clock = Clock().start()
    mean, scale, classes = streaming_statistics(store)
    X_test = task.X_test
    bounds = stream_chunks(store)
    with _quiet():
        for epoch in range(settings.epochs):
            for j, i in enumerate(rng.permutation(len(bounds))):
                X, y = read_chunk(store, *bounds[i])
                clf.partial_fit(standardize(X, mean, scale), y, classes=classes)
                curve.evaluate(clock, round(epoch + (j + 1) / len(bounds), 4),
                               lambda: clf.predict(standardize(X_test, mean, scale)), task.y_test)
    return {"chunks_per_epoch": len(bounds), "solver": "adam"}


def run_dask_ml(task, settings: PeerSettings, curve: Curve) -> dict:
    import dask
    import dask.array as da
    from dask_ml.preprocessing import StandardScaler
    from dask_ml.wrappers import Incremental

    store = task.train_store_info()
    X_test = task.X_test
    with dask.config.set(scheduler="threads", num_workers=settings.threads), _quiet():
        clock = Clock().start()
        X = da.from_zarr(str(store.path), component="X")
        y = da.from_zarr(str(store.path), component="y")
        scaler = StandardScaler().fit(X)
        Xs = scaler.transform(X)
        classes = np.unique(da.unique(y).compute())
        inc = Incremental(_mlp(settings, "adam"), shuffle_blocks=True, random_state=settings.seed)
        for epoch in range(settings.epochs):
            inc.partial_fit(Xs, y, classes=classes)
            curve.evaluate(clock, epoch + 1,
                           # dask-ml's transform of a NumPy array works in place: give it a copy
                           lambda: inc.estimator_.predict(np.asarray(scaler.transform(X_test.copy()), np.float32)),
                           task.y_test)
    return {"chunks_per_epoch": len(X.chunks[0]), "scheduler": "threads", "solver": "adam"}


def run_torch_adam(task, settings: PeerSettings, curve: Curve) -> dict:
    import torch

    torch.set_num_threads(settings.threads)
    store = task.train_store_info()
    rng = np.random.default_rng(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    X_test = task.X_test
    # torch imports much of itself lazily on the first optimizer (~1.6 s here): a one-time library
    # cost like ``import``, paid before the clock starts
    t = time.perf_counter()
    warm = torch.nn.Linear(2, 1)
    torch.optim.Adam(warm.parameters()).step()
    warmup = time.perf_counter() - t
    torch.manual_seed(settings.seed)
    clock = Clock().start()
    mean, scale, classes = streaming_statistics(store)
    binary = len(classes) == 2
    widths = [store.n_features, *settings.hidden]
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(widths[-1], 1 if binary else len(classes)))
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    loss_fn = torch.nn.BCEWithLogitsLoss() if binary else torch.nn.CrossEntropyLoss()

    def predict():
        with torch.no_grad():
            out = model(torch.from_numpy(standardize(X_test, mean, scale)))
        idx = (out[:, 0] > 0).long() if binary else out.argmax(dim=1)
        return classes[idx.numpy()]

    bounds = stream_chunks(store)
    for epoch in range(settings.epochs):
        for j, i in enumerate(rng.permutation(len(bounds))):
            X, y = read_chunk(store, *bounds[i])
            xt = torch.from_numpy(standardize(X, mean, scale))
            yi = np.searchsorted(classes, y)
            yt = torch.from_numpy(yi.astype(np.float32)) if binary else torch.from_numpy(yi.astype(np.int64))
            model.train()
            perm = torch.randperm(xt.shape[0], generator=gen)
            for b in range(0, xt.shape[0], settings.batch_size):
                idx = perm[b:b + settings.batch_size]
                opt.zero_grad(set_to_none=True)
                out = model(xt[idx])
                loss = loss_fn(out[:, 0], yt[idx]) if binary else loss_fn(out, yt[idx])
                loss.backward()
                opt.step()
            model.eval()
            curve.evaluate(clock, round(epoch + (j + 1) / len(bounds), 4), predict, task.y_test)
    return {"chunks_per_epoch": len(bounds), "threads": torch.get_num_threads(), "warmup_seconds": warmup,
            "torch": torch.__version__, "optimizer": "Adam", "loss": "BCEWithLogits" if binary else "CrossEntropy"}


def torch_cnn(torch, layers: str, n_features: int, input_shape, n_out: int):
    """Return (the torch network of our ``--layers`` string, the (H, W, C) shape of its input rows)."""
    from solvers.conv import Conv2D
    from solvers.layers import ConvSpec, DenseSpec, PoolSpec, build_layers, parse_layers

    specs = parse_layers(layers)
    maps = build_layers(specs, n_features, n_out, input_shape)
    nn, modules, convs = torch.nn, [], iter(m for m in maps if isinstance(m, Conv2D))
    flat = False
    for spec in specs:
        if isinstance(spec, ConvSpec):
            m = next(convs)
            top, bottom, left, right = m.pads
            if top or bottom or left or right:
                modules.append(nn.ZeroPad2d((left, right, top, bottom)))
            modules += [nn.Conv2d(m.in_shape[2], m.channels, (m.kh, m.kw), stride=m.stride), nn.ReLU()]
        elif isinstance(spec, PoolSpec):
            modules.append(nn.MaxPool2d(spec.size) if spec.mode == "max" else nn.AvgPool2d(spec.size))
        elif isinstance(spec, DenseSpec):
            if not flat:
                modules.append(nn.Flatten())
                flat = True
            modules += [nn.LazyLinear(spec.width), nn.ReLU()]
    if not flat:
        modules.append(nn.Flatten())
    modules.append(nn.LazyLinear(n_out))
    return nn.Sequential(*modules), maps[0].in_shape


def run_torch_cnn(task, settings: PeerSettings, curve: Curve) -> dict:
    """Adam on the convolutional network of ``settings.layers``, minibatches streamed from the Zarr chunks."""
    import torch

    if not settings.layers:
        raise ValueError("torch-cnn needs convolutional layers: --set layers=conv:…")
    torch.set_num_threads(settings.threads)
    store = task.train_store_info()
    rng = np.random.default_rng(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    X_test = task.X_test
    t = time.perf_counter()  # torch's lazy imports, a one-time cost paid before the clock (as torch-adam)
    warm = torch.nn.Linear(2, 1)
    torch.optim.Adam(warm.parameters()).step()
    warmup = time.perf_counter() - t
    torch.manual_seed(settings.seed)
    clock = Clock().start()
    mean, scale, classes = streaming_statistics(store)
    g_mean = float(np.mean(mean))  # one mean and standard deviation over every pixel (--scaling global)
    g_scale = float(np.sqrt(max(np.mean(scale.astype(np.float64) ** 2 + (mean - g_mean) ** 2), 1e-12)))
    model, (H, W, C) = torch_cnn(torch, settings.layers, store.n_features, settings.input_shape, len(classes))

    def images(X):
        x = torch.from_numpy((np.asarray(X, np.float32) - g_mean) / np.float32(g_scale))
        return x.reshape(-1, H, W, C).permute(0, 3, 1, 2).contiguous()

    with torch.no_grad():
        model(images(X_test[:1]))  # materialise the lazy Linear layers before the optimizer sees them
    opt = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()

    def predict():
        with torch.no_grad():
            out = torch.cat([model(images(X_test[i:i + 2000])) for i in range(0, len(X_test), 2000)])
        return classes[out.argmax(dim=1).numpy()]

    bounds = stream_chunks(store)
    for epoch in range(settings.epochs):
        for j, i in enumerate(rng.permutation(len(bounds))):
            X, y = read_chunk(store, *bounds[i])
            xt = images(X)
            yt = torch.from_numpy(np.searchsorted(classes, y).astype(np.int64))
            model.train()
            perm = torch.randperm(xt.shape[0], generator=gen)
            for b in range(0, xt.shape[0], settings.batch_size):
                idx = perm[b:b + settings.batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
            model.eval()
            curve.evaluate(clock, round(epoch + (j + 1) / len(bounds), 4), predict, task.y_test)
    return {"chunks_per_epoch": len(bounds), "threads": torch.get_num_threads(), "warmup_seconds": warmup,
            "torch": torch.__version__, "optimizer": "Adam", "loss": "CrossEntropy", "network": str(model),
            "parameters": int(sum(p.numel() for p in model.parameters()))}


# ----------------------------------------------------------------------------- in-memory peers
def _epochs_in_memory(task, settings, curve, solver: str) -> dict:
    X, y = task.load_train()
    classes = np.unique(y)
    clf = _mlp(settings, solver)
    X_test = task.X_test
    with _quiet():
        clock = Clock().start()
        scaler, Xs = _standard_scaler(X)
        for epoch in range(settings.epochs):
            clf.partial_fit(Xs, y, classes=classes)
            curve.evaluate(clock, epoch + 1, lambda: clf.predict(scaler.transform(X_test)), task.y_test)
    return {"solver": solver, "steps": "one partial_fit epoch per point"}


def run_mlp_adam(task, settings, curve) -> dict:
    return _epochs_in_memory(task, settings, curve, "adam")


def run_mlp_sgd(task, settings, curve) -> dict:
    return _epochs_in_memory(task, settings, curve, "sgd")


def _restarts(task, curve, make, max_iter: int, n_iter) -> dict:
    """Fit ``make(m)`` from scratch for m = 1, 2, 4, … ≤ max_iter; each point is one complete run.

    Stops when a run converged before its cap (more iterations change nothing),
    or when the next run (about twice as long) would pass the time budget.
    """
    X, y = task.load_train()
    X_test = task.X_test
    spent = 0.0
    m = 1
    converged = stopped = False
    with _quiet():
        while m <= max_iter:
            clock = Clock().start()
            scaler, Xs = _standard_scaler(X)
            clf = make(m).fit(Xs, y)
            seconds = clock.now()
            with clock.paused():
                accuracy = float(np.mean(clf.predict(scaler.transform(X_test)) == task.y_test))
            spent += clock.wall()
            iters = int(n_iter(clf))
            curve.add(m, seconds, accuracy, wall_seconds=seconds, iterations_run=iters)
            if iters < m:
                converged = True
                break
            if curve.budget is not None and 2 * seconds > curve.budget and m < max_iter:
                stopped = True
                break
            m *= 2
    return {"points": "independent runs with max_iter = 1, 2, 4, …", "converged": converged,
            "spent_seconds": spent, "stopped_at_time_budget": stopped}


def run_mlp_lbfgs(task, settings, curve) -> dict:
    return _restarts(task, curve, lambda m: _mlp(settings, "lbfgs", max_iter=m), settings.lbfgs_max_iter,
                     lambda clf: clf.n_iter_)


def run_logreg(task, settings, curve) -> dict:
    from sklearn.linear_model import LogisticRegression

    return _restarts(task, curve, lambda m: LogisticRegression(max_iter=m), settings.logreg_max_iter,
                     lambda clf: np.max(clf.n_iter_))


PEERS = {p.name: p for p in (
    Peer("logreg", "floor", "LogisticRegression (lbfgs), in memory", ("sklearn",), run_logreg,
         data_bytes),
    Peer("mlp-lbfgs", "memory", "MLPClassifier lbfgs, in memory (restarts, max_iter doubling)", ("sklearn",),
         run_mlp_lbfgs, full_batch_bytes),
    Peer("mlp-adam", "memory", "MLPClassifier adam, in memory (partial_fit epochs)", ("sklearn",), run_mlp_adam,
         data_bytes),
    Peer("mlp-sgd", "memory", "MLPClassifier sgd, in memory (partial_fit epochs)", ("sklearn",), run_mlp_sgd,
         data_bytes),
    Peer("sklearn-stream", "stream", "MLPClassifier adam, partial_fit streamed over Zarr chunks", ("sklearn",),
         run_sklearn_stream),
    Peer("dask-ml", "stream", "dask-ml Incremental(MLPClassifier adam) on da.from_zarr", ("sklearn", "dask_ml"),
         run_dask_ml),
    Peer("torch-adam", "stream", "PyTorch CPU, Adam, minibatches streamed from Zarr chunks", ("torch",),
         run_torch_adam),
    Peer("torch-cnn", "stream", "PyTorch CPU CNN (our --layers), Adam, minibatches streamed from Zarr chunks",
         ("torch",), run_torch_cnn),
)}
