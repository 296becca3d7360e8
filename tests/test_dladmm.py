"""dlADMM (Wang et al., KDD 2019): each update against direct minimisation, the iteration against a
literal dense transcription, the objective's monotone decrease on real data, and chunking/Dask invariance."""
import numpy as np
import pytest
import scipy.optimize

from solvers import SOLVERS
from solvers.config import TrainConfig
from solvers.dladmm import (
    BACKTRACK_GROWTH,
    DLADMMSolver,
    activation_step,
    bias_step,
    lipschitz_a,
    weight_step,
)
from solvers.errors import InputError, NumericalError
from solvers.linalg import cross_with_bias, gram_with_bias
from solvers.loop import add_sums, chunk_kernel, initialize, iterate, read_plan
from solvers.losses import encode_labels, targets
from solvers.reference import InMemoryRunner, fit_in_memory
from solvers.stats import moment_sums, moments_from_sums
from tests.conftest import brute_force_min, quiet


def relu(z):
    return np.maximum(z, 0)


def affine_problem(seed=0, n=300, d=6, k=4):
    """Return a small W-subproblem: inputs a (n, d), targets t (n, k), a start W̃ and its sums."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, d) + rng.normal(size=d)
    t = rng.normal(size=(n, k))
    Wt = rng.normal(size=(k, d + 1))
    return a, t, Wt, cross_with_bias(t, a), gram_with_bias(a)


def subproblem(Wt, a, t, kappa):
    """Return F(W̃) = κ/2 Σ‖t − W a − b‖² summed directly over the samples."""
    r = t - a @ Wt[:, :-1].T - Wt[:, -1]
    return kappa / 2 * float(np.sum(r * r))


# -- each update against direct minimisation ------------------------------------------------
def test_bias_step_is_the_exact_minimiser():
    a, t, Wt, cross, gram = affine_problem()
    new = bias_step(Wt, cross, gram)
    np.testing.assert_array_equal(new[:, :-1], Wt[:, :-1])
    res = scipy.optimize.minimize(lambda b: subproblem(np.column_stack([Wt[:, :-1], b]), a, t, 1.0),
                                  Wt[:, -1], method="BFGS", options={"gtol": 1e-10})
    np.testing.assert_allclose(new[:, -1], res.x, atol=1e-6)
    assert subproblem(new, a, t, 1.0) <= res.fun + 1e-9


@pytest.mark.parametrize("theta0", [1e-3, 1.0, 1e6])
def test_weight_step_minimises_the_quadratic_approximation_found_by_backtracking(theta0):
    a, t, Wt, cross, gram = affine_problem(seed=1)
    kappa = 3.0
    new, theta = weight_step(Wt, cross, gram, kappa, theta0)
    np.testing.assert_array_equal(new[:, -1], Wt[:, -1])  # b is the b-step's business

    r = a @ Wt[:, :-1].T + Wt[:, -1] - t                 # the gradient, summed directly over samples
    grad = kappa * r.T @ a

    def P(W, th):  # the paper's P(W; θ) around W⁰
        return subproblem(Wt, a, t, kappa) + np.sum(grad * (W - Wt[:, :-1])) + th / 2 * np.sum((W - Wt[:, :-1]) ** 2)

    res = scipy.optimize.minimize(lambda w: P(w.reshape(grad.shape), theta), Wt[:, :-1].ravel(), method="BFGS",
                                  jac=lambda w: (grad + theta * (w.reshape(grad.shape) - Wt[:, :-1])).ravel(),
                                  options={"gtol": 1e-9})
    np.testing.assert_allclose(new[:, :-1], res.x.reshape(grad.shape), rtol=1e-5, atol=1e-6)
    # accepted: F(W) ≤ P(W; θ) evaluated on the samples; the trial before (θ/2) was rejected
    assert subproblem(new, a, t, kappa) <= P(new[:, :-1], theta) * (1 + 1e-12)
    assert subproblem(new, a, t, kappa) < subproblem(Wt, a, t, kappa)
    if theta > theta0:
        prev = Wt[:, :-1] - grad / (theta / BACKTRACK_GROWTH)
        assert subproblem(np.column_stack([prev, Wt[:, -1]]), a, t, kappa) > P(prev, theta / BACKTRACK_GROWTH)
    else:
        assert theta == theta0


def test_weight_step_errors_are_clear(monkeypatch):
    _, _, Wt, cross, gram = affine_problem()
    bad = gram.copy()
    bad[0, 0] = np.nan
    with pytest.raises(NumericalError, match="W_2.*NaN or inf"):
        weight_step(Wt, cross, bad, 1.0, 1.0, what="W_2")
    monkeypatch.setattr("solvers.dladmm.BACKTRACK_TRIES", 3)
    with pytest.raises(NumericalError, match=r"W_1 .*backtracking found no θ .* in 3 trials"):
        weight_step(Wt, cross, gram, 1.0, 1e-9, what="W_1 (forward sweep)")


def test_activation_step_minimises_its_majorising_approximation():
    rng = np.random.default_rng(2)
    n, n_l, n_next, nu, kappa = 40, 5, 3, 2.0, 7.0
    a, z = rng.normal(size=(n, n_l)), rng.normal(size=(n, n_l))
    W_next, target = rng.normal(size=(n_next, n_l + 1)), rng.normal(size=(n, n_next))
    tau = lipschitz_a(W_next, kappa, nu)
    hess = nu * np.eye(n_l) + kappa * W_next[:, :-1].T @ W_next[:, :-1]
    assert np.linalg.eigvalsh(hess)[-1] <= tau <= np.linalg.eigvalsh(hess)[-1] * (1 + 1e-5)

    def phi(A):
        r = target - A @ W_next[:, :-1].T - W_next[:, -1]
        return nu / 2 * np.sum((A - relu(z)) ** 2) + kappa / 2 * np.sum(r * r)

    g = nu * (a - relu(z)) + kappa * (a @ W_next[:, :-1].T + W_next[:, -1] - target) @ W_next[:, :-1]

    def U(A):  # the paper's quadratic approximation U(a; τ)
        return phi(a) + np.sum(g * (A - a)) + tau / 2 * np.sum((A - a) ** 2)

    new = activation_step(a, relu(z), target, W_next, kappa, nu, tau)
    res = scipy.optimize.minimize(lambda v: U(v.reshape(a.shape)), a.ravel(), method="BFGS",
                                  jac=lambda v: (g + tau * (v.reshape(a.shape) - a)).ravel(), options={"gtol": 1e-9})
    np.testing.assert_allclose(new, res.x.reshape(a.shape), rtol=1e-5, atol=1e-6)
    assert phi(new) <= U(new) and phi(new) < phi(a)


@pytest.mark.parametrize("nu", [0.5, 100.0])
def test_hidden_z_update_against_a_dense_grid(nu):
    solver = DLADMMSolver(TrainConfig(solver="dladmm", nu=nu), 3, [0, 1], np.zeros(3), np.ones(3),
                          dtype=np.float64)
    rng = np.random.default_rng(3)
    for a, m in rng.normal(scale=2.0, size=(30, 2)):
        z = solver.act.z_update(np.array([a]), np.array([m]), solver.nu, solver.nu)[0]
        f = lambda v, a=a, m=m: nu / 2 * ((v - m) ** 2 + (a - relu(v)) ** 2)
        assert f(z) <= brute_force_min(f) + 1e-9


@pytest.mark.parametrize("loss", ["squared", "hinge"])
def test_output_z_update_against_a_dense_grid(loss):
    rho = 4.0
    solver = DLADMMSolver(TrainConfig(solver="dladmm", loss=loss, rho=rho), 3, [0, 1], np.zeros(3),
                          np.ones(3), dtype=np.float64)
    rng = np.random.default_rng(4)
    for t, u, m in zip(rng.integers(0, 2, 30), rng.normal(size=30), rng.normal(scale=2.0, size=30)):
        z = solver._z_output(np.array([float(t)]), np.array([u]), np.array([m]))[0]
        f = lambda v, t=t, u=u, m=m: solver.loss.value(v, t) + u * (v - m) + rho / 2 * (v - m) ** 2
        assert f(z) <= brute_force_min(f) + 1e-9


# -- the whole iteration against a literal dense transcription --------------------------------
def dladmm_dense(a0, T, W0, nu, rho, iterations):
    """dlADMM's Algorithm 1 with the squared loss, columns as samples, written from the paper's updates."""
    L = len(W0)
    W = [None] + [w[:, :-1].copy() for w in W0]
    b = [None] + [w[:, -1:].copy() for w in W0]
    a, z = [a0], [None]
    for l in range(1, L + 1):
        z.append(W[l] @ a[l - 1] + b[l])
        if l < L:
            a.append(relu(z[l]))
    z[L], u = T.copy(), np.zeros_like(T)
    theta = {}

    def target(l):
        return z[l] + u / rho if l == L else z[l]

    def kappa(l):
        return rho if l == L else nu

    def F(l, Wl):  # the W_l-subproblem of L_ρ (u folded into the target)
        r = target(l) - Wl @ a[l - 1] - b[l]
        return kappa(l) / 2 * np.sum(r * r)

    def update_b(l):
        b[l] = np.mean(target(l) - W[l] @ a[l - 1], axis=1, keepdims=True)

    def update_W(l, key):
        grad = kappa(l) * (W[l] @ a[l - 1] + b[l] - target(l)) @ a[l - 1].T
        th = theta.get(key, 1.0)
        while F(l, W[l] - grad / th) > F(l, W[l]) - np.sum(grad * grad) / th + th / 2 * np.sum((grad / th) ** 2):
            th *= 2
        W[l] = W[l] - grad / th
        theta[key] = th / 2

    def update_a(l):
        Wn = W[l + 1]
        grad = nu * (a[l] - relu(z[l])) + kappa(l + 1) * Wn.T @ (Wn @ a[l] + b[l + 1] - target(l + 1))
        a[l] = a[l] - grad / (nu + kappa(l + 1) * np.linalg.norm(Wn, 2) ** 2)

    def update_z(l):
        m = W[l] @ a[l - 1] + b[l]
        pos, neg = np.maximum((a[l] + m) / 2, 0), np.minimum(m, 0)
        f = lambda v: (v - m) ** 2 + (a[l] - relu(v)) ** 2
        z[l] = np.where(f(pos) <= f(neg), pos, neg)

    def update_zL():
        m = W[L] @ a[L - 1] + b[L]
        z[L] = (2 * T - u + rho * m) / (2 + rho)  # argmin (z − y)² + u z + ρ/2 (z − m)²
        return m

    for _ in range(iterations):
        update_zL()
        update_b(L)
        update_W(L, ("b", L))
        for l in range(L - 1, 0, -1):
            update_a(l)
            update_z(l)
            update_b(l)
            update_W(l, ("b", l))
        for l in range(1, L):
            update_W(l, ("f", l))
            update_b(l)
            update_z(l)
            update_a(l)
        update_W(L, ("f", L))
        update_b(L)
        m = update_zL()
        u = u + rho * (z[L] - m)
    return [np.column_stack([W[l], b[l]]) for l in range(1, L + 1)]


@pytest.mark.parametrize("hidden,n_classes", [((16,), 2), ((12, 8), 3), ((10, 8, 6), 2)])
def test_iterations_equal_the_dense_transcription(hidden, n_classes):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 7)) * rng.uniform(0.5, 3, 7)
    y = rng.integers(0, n_classes, 400)
    cfg = TrainConfig(solver="dladmm", hidden=hidden, iterations=3, seed=2, rho=4.0, nu=10.0, alpha=0,
                      validation_fraction=0, scaling="standard", init="forward")
    r = fit_in_memory(X, y, cfg, chunk_rows=150, dtype=np.float64)
    mean, scale = moments_from_sums(moment_sums(X, X[0].astype(np.float64)), X[0].astype(np.float64))
    W0 = DLADMMSolver(cfg, 7, np.unique(y), mean, scale).initial_weights()
    T = targets(encode_labels(y, np.unique(y)), n_classes, np.float64).T
    dense = dladmm_dense(((X - mean) / scale).T, T, W0, 10.0, 4.0, 3)
    for W, W_dense in zip(r.network.weights, dense):
        np.testing.assert_allclose(W, W_dense, rtol=2e-5, atol=1e-7)


# -- the pass structure ----------------------------------------------------------------------
class RecordingRunner(InMemoryRunner):
    """An in-memory runner that records every pass and checks the two-slot rule."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passes = []

    def run(self, kernel, params, *, read=None, write=None, held_out=False):
        if held_out:  # the held-out rows run statelessly: read nothing, write nothing
            held = None
            for (start, _), x, y in zip(self.bounds, self.x, self.y):
                new, sums = chunk_kernel(getattr(self.solver, kernel), x, y, None, start, params, self.split, "held")
                assert new is None
                held = add_sums(held, sums)
            return self.run(kernel, params, read=read, write=write), held
        plan = read_plan(read, self.solver.state_widths()) or {}
        fn = getattr(self.solver, kernel)
        written = set()
        total = 0.0
        for i, ((start, _), x, y) in enumerate(zip(self.bounds, self.x, self.y)):
            state = None if read is None else {name: self.slots[k % 2][i][name] for name, k in plan.items()}
            new, sums = chunk_kernel(fn, x, y, state, start, params, self.split)
            if write is not None:
                written |= set(new)
                self.slots.setdefault(write % 2, [{} for _ in self.bounds])[i].update(new)
            total = total + sums
        clash = {name for name in written if plan.get(name) == write}
        assert not clash, f"{kernel} writes {clash} of iteration {write}, which it also reads"
        assert written <= set(self.solver.state_widths())
        self.passes.append((kernel, getattr(params, "layer", None)))
        return total


@pytest.mark.parametrize("hidden", [(), (9,), (9, 7, 5)])
def test_an_iteration_is_2L_minus_1_passes_and_never_reads_what_it_writes(hidden):
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(300, 5)), rng.integers(0, 3, 300)
    cfg = TrainConfig(solver="dladmm", hidden=hidden)
    solver = DLADMMSolver(cfg, 5, np.arange(3), np.zeros(5), np.ones(5))
    runner = RecordingRunner(solver, X, y, chunk_rows=128)
    state = initialize(solver, runner)
    L = len(hidden) + 1
    for _, metrics in iterate(solver, runner, state, 2):
        assert np.isfinite(metrics["objective"]) and 0 <= metrics["train_accuracy"] <= 1
    one = [("backward_chunk", l) for l in range(L - 1, 0, -1)] + [("forward_chunk", l) for l in range(1, L)] \
        + [("output_chunk", None)]
    assert len(one) == 2 * L - 1
    data_init = [("rows_chunk", None)] if L > 1 else []  # init data: one pass gathers the rows of W_1⁰
    assert runner.passes == data_init + [("init_chunk", None)] + one + one


def test_dual_step_keeps_u_equal_to_minus_the_loss_gradient():
    """u^k = u^{k−1} + ρ(z_L^k − m^k) and, the z_L-update being exact, u^k = −∇R(z_L^k) = −2(z_L^k − y)."""
    rng = np.random.default_rng(7)
    X, y = rng.normal(size=(200, 4)), rng.integers(0, 2, 200)
    cfg = TrainConfig(solver="dladmm", hidden=(6,), rho=4.0)
    solver = DLADMMSolver(cfg, 4, np.arange(2), np.zeros(4), np.ones(4), dtype=np.float64)
    runner = InMemoryRunner(solver, X, y, chunk_rows=64)
    state, _ = list(iterate(solver, runner, initialize(solver, runner), 3))[-1]
    now, before = runner.state_of(3), runner.state_of(2)
    W2 = solver.iterate(state)[1]  # the iteration's own W_2 (the model's is the refit)
    m = now["a1"] @ W2[:, :-1].T + W2[:, -1]
    t = y[:, None].astype(float)
    z = solver._z_output(t, before["u"], m)
    np.testing.assert_allclose(now["u"], before["u"] + 4.0 * (z - m), atol=1e-12)
    np.testing.assert_allclose(now["u"], -2 * (z - t), atol=1e-10)
    np.testing.assert_allclose(now["z2"], solver._z_output(t, now["u"], m), atol=1e-12)  # z_L^{k+½}


# -- real data: the objective never rises --------------------------------------------------
def assert_monotone(history):
    obj = np.array([h["objective"] for h in history])
    rises = np.diff(obj) / np.abs(obj[:-1])
    assert np.all(rises <= 1e-6), f"objective rose: {obj}"
    assert obj[-1] < 0.5 * obj[0]


@pytest.mark.parametrize("init", ["forward", "data"])
@pytest.mark.parametrize("hidden", [(64,), (32, 32)])
def test_objective_decreases_monotonically_on_digits(hidden, init):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    r = fit_in_memory(X, y, TrainConfig(solver="dladmm", hidden=hidden, iterations=20, alpha=0, init=init,
                                                validation_fraction=0), chunk_rows=600)
    assert_monotone(r.history)
    if init == "forward":  # the iterate's own accuracy (from the data start it climbs more slowly: 0.17 to 0.19)
        assert r.history[-1]["train_accuracy"] > r.history[0]["train_accuracy"] + 0.2


def test_objective_decreases_monotonically_on_mnist(mnist):
    X, y = mnist
    r = fit_in_memory(X[:2000].astype(np.float32), y[:2000],
                      TrainConfig(solver="dladmm", hidden=(64,), iterations=8, scaling="global", alpha=0,
                                  validation_fraction=0, init="forward"), chunk_rows=1024)
    assert_monotone(r.history)
    assert r.history[-1]["train_accuracy"] > r.history[0]["train_accuracy"] + 0.1


def test_regression_fits():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(600, 4))
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 2] + 0.1 * rng.normal(size=600)
    r = fit_in_memory(X, y, TrainConfig(solver="dladmm", task="regression", hidden=(32,), iterations=30,
                                                alpha=0))
    assert_monotone(r.history)
    assert r.history[-1]["train_r2"] > 0.5


# -- chunking, Dask, resume: the same result ---------------------------------------------------
def test_several_chunks_equal_one_chunk():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    cfg = TrainConfig(solver="dladmm", hidden=(40, 20), iterations=5, validation_fraction=0)
    one = fit_in_memory(X, y, cfg)
    many = fit_in_memory(X, y, cfg, chunk_rows=256)
    for W, W_one in zip(many.network.weights, one.network.weights):
        np.testing.assert_allclose(W, W_one, rtol=2e-4, atol=2e-5)
    for h, h_one in zip(many.history, one.history):
        assert h["objective"] == pytest.approx(h_one["objective"], rel=1e-5)


@pytest.mark.parametrize("hidden,n_classes", [((16,), 2), ((12, 8), 3)])
def test_pipeline_equals_in_memory(client, tmp_path, hidden, n_classes):
    from pipeline.training import train
    from storage.data import write_data
    from pipeline.model import load_network
    from tests.conftest import make_data

    X, y = make_data(n=2000, n_classes=n_classes)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=512)
    cfg = TrainConfig(solver="dladmm", hidden=hidden, iterations=3, seed=3)
    result = train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=512,
                   report=quiet)
    ref = fit_in_memory(X, y, cfg, chunk_rows=512)
    for W, W_ref in zip(result.network.weights, ref.network.weights):
        np.testing.assert_allclose(W, W_ref, rtol=2e-4, atol=2e-5)
    for h, h_ref in zip(result.history, ref.history):
        assert h["train_accuracy"] == pytest.approx(h_ref["train_accuracy"], abs=2e-3)
        assert h["objective"] == pytest.approx(h_ref["objective"], rel=1e-4)
    disk = load_network(tmp_path / "r.zarr")
    for W, W_disk in zip(result.network.weights, disk.weights):
        np.testing.assert_array_equal(W, W_disk)
    assert disk.link == ref.network.link == "logistic"  # the output refit is logistic (solvers/readout.py)


def test_pipeline_resume_equals_an_uninterrupted_run(client, tmp_path):
    from pipeline.training import train
    from storage.data import write_data
    from tests.conftest import make_data

    X, y = make_data(n=1500, n_classes=3)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=512)
    cfg = TrainConfig(solver="dladmm", hidden=(10, 6), iterations=4)
    full = train(client, store=tmp_path / "full.zarr", data=tmp_path / "d.zarr", config=cfg, report=quiet)
    train(client, store=tmp_path / "part.zarr", data=tmp_path / "d.zarr", report=quiet,
          config=TrainConfig(solver="dladmm", hidden=(10, 6), iterations=2))
    resumed = train(client, store=tmp_path / "part.zarr", resume=True, iterations=4, report=quiet)
    assert [h["iteration"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[-1]["readout"] == "logistic"  # the logistic refit's carry resumes bitwise too
    for a, b in zip(full.network.weights, resumed.network.weights):
        np.testing.assert_array_equal(a, b)


# -- settings -----------------------------------------------------------------------------------
def test_registered_and_settings_checked():
    assert SOLVERS["dladmm"] is DLADMMSolver
    s = DLADMMSolver(TrainConfig(solver="dladmm"), 3, [0, 1, 2], np.zeros(3), np.ones(3))
    assert (s.rho, s.nu, s.loss_name) == (4.0, 100.0, "squared")
    assert s.state_widths() == {"z1": 300, "a1": 300, "z2": 3, "u": 3}
    with pytest.raises(InputError, match="rho must be a positive finite number"):
        TrainConfig(solver="dladmm", rho=-1)
    with pytest.raises(InputError, match="--init forward"):
        DLADMMSolver(TrainConfig(solver="dladmm", init="gaussian"), 3, [0, 1], np.zeros(3), np.ones(3))
