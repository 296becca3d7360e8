"""Gauss-Newton with convolutions and pooling: Jacobian products against finite differences, the chunked KFC
sums against a dense transcription, learning, Dask = in memory, bitwise resume."""
import zlib

import numpy as np
import pytest

from pipeline.model import load_network
from pipeline.training import train
from solvers import make_solver
from solvers.config import TrainConfig
from solvers.conv_gauss_newton import ConvGaussNewtonSolver
from solvers.errors import InputError
from solvers.gauss_newton import CurvatureParams, _rows_key
from solvers.layers import FlattenSpec, PoolSpec, build_layers, parse_layers
from solvers.pooling import Pool2D
from solvers.reference import fit_in_memory
from storage.data import write_data

SHAPE = (6, 7, 2)
LAYERS = "conv:3x3x2:same,pool:2,conv:4x2x2,flatten,dense:5"


def tiny_solver(layers=LAYERS, activation="sigmoid", classes=3, dtype=np.float64):
    d = int(np.prod(SHAPE))
    cfg = TrainConfig(layers=layers, solver="gauss-newton", activation=activation, input_shape=SHAPE)
    return make_solver(cfg, d, x_mean=np.zeros(d), x_scale=np.ones(d), classes=np.arange(classes), dtype=dtype)


def random_weights(solver, rng):
    return [rng.normal(0, 0.7, layer.weight_shape) for layer in solver.layers]


def network_out(solver, x, weights):
    return solver.network(weights).decision_function(x)


def pool_matrix(pool, u):
    """Return the dense Jacobian of a pooling at one row ``u`` (rows: outputs, columns: inputs), by loops."""
    (H, W, C), (ho, wo, _), k = pool.in_shape, pool.out_shape, pool.size
    img = u.reshape(H, W, C)
    P = np.zeros((pool.n_out, pool.n_in))
    for i in range(ho):
        for j in range(wo):
            for c in range(C):
                cells = [(k * i + p, k * j + q) for p in range(k) for q in range(k)]
                out = (i * wo + j) * C + c
                if pool.mode == "avg":
                    for (r, s) in cells:
                        P[out, (r * W + s) * C + c] = 1.0 / k ** 2
                else:
                    r, s = max(cells, key=lambda rs: img[rs[0], rs[1], c])
                    P[out, (r * W + s) * C + c] = 1.0
    return P


def dense_transcription(solver, x, weights):
    """Return per sample the Jacobians ∂out/∂z_l (K × n_out_l) and inputs a_{l−1}, from dense matrices only."""
    h, dh = solver.act.h, solver.act.dh
    per_sample = []
    for row in x:
        a, zs, Ts, Ps, inputs = row, [], [], [], []
        for layer, W in zip(solver.layers[:-1], weights[:-1]):
            dense = layer.dense_weights(W) if not layer.is_dense else np.asarray(W)
            T, b = dense[:, :-1], dense[:, -1]
            inputs.append(a)
            z = T @ a + b
            u = h(z)
            P = pool_matrix(layer.post, u) if layer.post is not None else np.eye(len(u))
            a = P @ u
            zs.append(z)
            Ts.append(T)
            Ps.append(P)
        J = np.asarray(weights[-1])[:, :-1]  # ∂out/∂a_{L−1}
        jac = {}
        for l in range(len(zs), 0, -1):
            J = (J @ Ps[l - 1]) * dh(zs[l - 1])
            jac[l] = J
            J = J @ Ts[l - 1]
        per_sample.append((jac, inputs, zs))
    return per_sample


@pytest.mark.parametrize("mode,shape", [("max", (5, 7, 3)), ("avg", (5, 7, 3)), ("max", (4, 6, 3))])
def test_pooling_forward_and_adjoint_against_loops(mode, shape):
    """Odd sizes drop the last row and column; even ones are covered by the windows (the adjoint writes every value)."""
    rng = np.random.default_rng(0)
    pool = Pool2D(shape, 2, mode)
    u = rng.normal(size=(4, pool.n_in))
    out, mask = pool.forward(u)
    g = rng.normal(size=(2, 4, pool.n_out))  # two blocks (outputs) of four rows
    back = pool.adjoint(g, mask)
    for i in range(4):
        P = pool_matrix(pool, u[i])
        np.testing.assert_allclose(out[i], P @ u[i], rtol=1e-12)
        for k in range(2):
            np.testing.assert_allclose(back[k, i], P.T @ g[k, i], rtol=1e-12)
    assert pool.out_shape == (shape[0] // 2, shape[1] // 2, 3)


def assert_same_bits(a, b):
    """Bitwise equal: the same dtype, shape and bytes (assert_array_equal takes −0.0 for +0.0)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("shape,k", [((5, 7, 3), 2), ((4, 6, 3), 2), ((7, 8, 2), 3), ((3, 3, 1), 1)])
def test_max_pooling_without_masks_is_the_maximum_of_the_cells(shape, k):
    """The forward pass alone (rows of each window first, then columns) gives the masked forward's values exactly."""
    rng = np.random.default_rng(5)
    pool = Pool2D(shape, k)
    u = rng.normal(size=(4, pool.n_in)).astype(np.float32)
    u[:, ::3] = 0.5  # ties
    assert_same_bits(pool.forward(u, masks=False)[0], pool.forward(u)[0])
    assert_same_bits(pool.apply(u), np.stack([c.reshape(4, -1) for c in pool._cells(u)]).max(axis=0))


def test_forward_alone_pools_before_the_relu_with_the_same_activations():
    """``_forward_tile(back=False)`` (max pooling, then ReLU on the pooled values) gives the back=True activations bitwise."""
    rng = np.random.default_rng(6)
    solver = tiny_solver(activation="relu", dtype=np.float32)
    hidden = [W.astype(np.float32) for W in random_weights(solver, rng)[:-1]]
    x = rng.normal(size=(5, solver.widths[0])).astype(np.float32)
    for alone, full in zip(solver._forward_tile(x, hidden, back=False)[3], solver._forward_tile(x, hidden)[3]):
        assert_same_bits(alone, full)


def test_conv_jacobian_products_against_finite_differences():
    """The transcription's ∂out/∂z_l and the kernel's gradient D_l = −½ ∂Σ‖T − out‖²/∂W_l by central differences."""
    rng = np.random.default_rng(1)
    solver = tiny_solver()
    weights = random_weights(solver, rng)
    x = rng.normal(size=(3, solver.widths[0]))
    y = np.array([0, 2, 1])
    eps = 1e-6
    # ∂out/∂z_1 of the first sample: perturb z_1 and run the layers above it
    jac, _, zs = dense_transcription(solver, x[:1], weights)[0]

    def out_from_z1(z1):
        return _above(solver, solver.layers[0].post.apply(solver.act.h(z1[None])), weights, 1)[0]

    fd = np.column_stack([(out_from_z1(zs[0] + eps * e) - out_from_z1(zs[0] - eps * e)) / (2 * eps)
                          for e in np.eye(len(zs[0]))])
    np.testing.assert_allclose(jac[1], fd, rtol=1e-5, atol=1e-8)
    # the gradient the chunk kernel sums
    parts = solver.curvature_parts(x, y, solver.cast(weights), False)
    t = solver.task.targets(y, np.float64)

    def error(ws):
        return np.sum((t - network_out(solver, x, ws)) ** 2)

    for l in (1, 2, 3):
        W = weights[l - 1]
        fd = np.zeros_like(W)
        for idx in np.ndindex(*W.shape):
            plus, minus = [w.copy() for w in weights], [w.copy() for w in weights]
            plus[l - 1][idx] += eps
            minus[l - 1][idx] -= eps
            fd[idx] = -(error(plus) - error(minus)) / (4 * eps)
        np.testing.assert_allclose(parts[f"grad{l}"], fd, rtol=1e-5, atol=1e-7)


def _above(solver, a, weights, l):
    """Return the network's output from ``a_l`` (layers l+1..L)."""
    for layer, W in zip(solver.layers[l:-1], weights[l:-1]):
        a = solver.act.h(layer.apply(a, W))
        if layer.post is not None:
            a = layer.post.apply(a)
    return a @ weights[-1][:, :-1].T + weights[-1][:, -1]


@pytest.mark.parametrize("activation,every", [("relu", 1), ("sigmoid", 1), ("relu", 4), ("sigmoid", 3)])
def test_chunked_curvature_equals_dense_transcription(activation, every):
    """S_l = Σ_i Σ_k Σ_t J_{k,i,t}ᵀJ_{k,i,t}, G_{l−1} = Σ patch Grams, D_l: chunks of tiles = loops over samples.

    The factors S_l and G_{l−1} sum the rows whose index is a multiple of ``every``, whatever the tiles.
    """
    rng = np.random.default_rng(2)
    solver = tiny_solver(activation=activation)
    solver.curvature_every = every
    weights = random_weights(solver, rng)
    n = 11
    x = rng.normal(size=(n, solver.widths[0]))
    y = rng.integers(0, 3, n)
    solver.curvature_rows = 3  # several tiles per chunk
    total, signs = 0, []
    key = zlib.crc32(solver.cast(weights)[-1].tobytes())
    for lo, hi in ((0, 5), (5, n)):  # two chunks
        total = total + solver.curvature_chunk(x[lo:hi], y[lo:hi], None, lo,
                                               CurvatureParams(solver.cast(weights), True))[1]
        signs += [solver.curvature_signs(lo + a, min(a + 3, hi - lo) - a, key) for a in range(0, hi - lo, 3)]
    signs = np.concatenate(signs, axis=1)  # (K, n): the sampled combination of the outputs below layer L−1
    assert set(np.unique(signs)) == {-1.0, 1.0}
    sums = solver.curvature_layout(True).unpack(total)
    t = solver.task.targets(y, np.float64)
    out = network_out(solver, x, weights)
    expect = {l: {"curv": 0.0, "grad": 0.0, "gram": 0.0} for l in (1, 2, 3)}
    for i, (jac, inputs, _) in enumerate(dense_transcription(solver, x, weights)):
        r = t[i] - out[i]
        for l in (1, 2, 3):
            layer = solver.layers[l - 1]
            c_out = layer.weight_shape[0]
            rows = solver.layers[l - 1].patches(inputs[l - 1][None]) if not layer.is_dense else inputs[l - 1][None]
            rows = np.hstack([rows, np.ones((len(rows), 1))])
            Jk = jac[l].reshape(len(r), -1, c_out)        # (K, |T|, C_out)
            if l < 3:  # below the last hidden layer: one Jacobian, Σ_k v_k J_k
                Jk = np.einsum("k,ktc->tc", signs[:, i], Jk)[None]
            in_factors = i % every == 0
            if in_factors:
                expect[l]["curv"] += np.einsum("ktc,ktd->cd", Jk, Jk)
            delta = (r @ jac[l]).reshape(-1, c_out)      # (|T|, C_out)
            expect[l]["grad"] += delta.T @ rows
            if in_factors:
                expect[l]["gram"] += rows.T @ rows
    for l in (1, 2, 3):
        np.testing.assert_allclose(sums[f"curv{l}"], expect[l]["curv"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(sums[f"grad{l}"], expect[l]["grad"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(sums["gram1" if l == 1 else f"gram{l}"], expect[l]["gram"], rtol=1e-12)
    np.testing.assert_allclose(sums["loss"], np.sum((t - out) ** 2), rtol=1e-12)
    n_curv = len(range(0, n, every))
    assert sums["n"] == n and sums["n_curv"] == n_curv
    # the step's output factor is KFC's Γ: the mean over positions, scaled from the subsample to all rows
    S = solver.curvatures(weights, sums)
    np.testing.assert_allclose(S[0], expect[1]["curv"] / solver.layers[0].positions * n / n_curv, rtol=1e-9)
    np.testing.assert_allclose(S[2], expect[3]["curv"] * n / n_curv, rtol=1e-9)


def test_sampled_curvature_estimates_the_exact_one():
    """Σ J_vᵀJ_v over many rows of ±1 signs comes near Σ_k J_kᵀJ_k (E[v vᵀ] = I); the top layer stays exact."""
    rng = np.random.default_rng(4)
    solver = tiny_solver(activation="relu")
    weights = solver.cast(random_weights(solver, rng))
    x = np.repeat(rng.normal(size=(1, solver.widths[0])), 4000, axis=0)  # one image: only the signs vary
    y = np.zeros(4000, int)
    solver.curvature_every = 1
    exact = solver.curvature_parts(x[:1], y[:1], weights, False)
    sampled = solver.curvature_parts(x, y, weights, False, solver.curvature_signs(0, 4000, 1))
    np.testing.assert_allclose(sampled["curv3"], 4000 * exact["curv3"], rtol=1e-4)
    for l in (1, 2):
        np.testing.assert_allclose(sampled[f"curv{l}"] / 4000, exact[f"curv{l}"], rtol=0.15,
                                   atol=0.15 * np.abs(exact[f"curv{l}"]).max())


def test_dense_layers_give_the_dense_solvers_sums():
    """With a convolution below, the dense layers' S, D, G are the dense solver's (its Σ MᵀM trick undone)."""
    rng = np.random.default_rng(3)
    conv = tiny_solver("conv:2x3x3,dense:6,dense:4", activation="relu")
    weights = random_weights(conv, rng)
    conv.curvature_every = 1  # the factors over every row, as the dense solver sums them
    x = rng.normal(size=(9, conv.widths[0]))
    y = rng.integers(0, 3, 9)
    parts = conv.curvature_parts(x, y, conv.cast(weights), False)
    dense = make_solver(TrainConfig(hidden=(6, 4), solver="gauss-newton", activation="relu"), conv.widths[1],
                        x_mean=np.zeros(conv.widths[1]), x_scale=np.ones(conv.widths[1]), classes=np.arange(3),
                        dtype=np.float64)
    a1 = conv.act.h(conv.layers[0].apply(x, weights[0]))
    _, sums = dense.curvature_chunk(a1, y, None, 0, CurvatureParams(tuple(weights[1:]), True))
    ref = dense.curvature_layout(True).unpack(sums)
    S = dense.curvatures(weights[1:], ref)
    np.testing.assert_allclose(parts["curv3"], S[1], rtol=1e-10)
    np.testing.assert_allclose(parts["curv2"], S[0], rtol=1e-10)
    np.testing.assert_allclose(parts["grad3"], ref["grad2"], rtol=1e-10)
    np.testing.assert_allclose(parts["gram3"], ref["gram2"], rtol=1e-10)


def test_gauss_newton_with_convolutions_and_pooling_learns_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    cfg = TrainConfig(layers="conv:6x3x3:same,pool:2,conv:8x3x3,dense:30", solver="gauss-newton", iterations=8,
                      scaling="global", validation_fraction=0)
    r = fit_in_memory(d.data[:1000], d.target[:1000], cfg, chunk_rows=250, X_test=d.data[1000:1400],
                      y_test=d.target[1000:1400])
    assert isinstance(r.solver, ConvGaussNewtonSolver)
    objectives = [h["objective"] for h in r.history]
    assert objectives[-1] < 0.5 * objectives[0]
    assert r.history[-1]["test_accuracy"] >= 0.9
    assert r.history[-1]["test_accuracy"] == pytest.approx(r.network.score(d.data[1000:1400], d.target[1000:1400]))


def test_pass_b_starts_from_the_forward_pass_pass_a_kept(monkeypatch):
    """Pass B at an accepted trial's hidden weights takes pass A's forward pass from the activation cache, and the
    score pass its ``a_{L−1}`` on the training and held-out rows (so the driver scores them no more). The validation
    accuracy recorded is the network's on those rows, and a run that keeps nothing (recomputing every forward pass)
    gives the same numbers bitwise."""
    from sklearn.datasets import load_digits

    from solvers.activation_cache import CACHE, OUTPUTS
    from solvers.driver import split_chunks

    d = load_digits()
    X, y = d.data[:600], d.target[:600]
    cfg = TrainConfig(layers="conv:4x3x3:same,pool:2,conv:4x2x2,dense:16", solver="gauss-newton", iterations=4,
                      scaling="global", validation_fraction=0.25)
    hits = []

    def counting(cache, name):
        get = cache.get

        def counting_get(key):
            found = get(key)
            if found is not None:
                hits.append(key[1] if name == "cache" else ("out", key[1][0]))
            return found
        monkeypatch.setattr(cache, "get", counting_get)

    counting(CACHE, "cache")
    counting(OUTPUTS, "outputs")
    kept = fit_in_memory(X, y, cfg, chunk_rows=150)
    assert {"train", ("out", "train"), ("out", "held")} <= set(hits)
    rows_out = split_chunks(len(X), 150, len(X), cfg)[2].mask(0, len(X))
    best = next(h for h in kept.history if h["iteration"] == kept.best_iteration)
    assert best["validation_accuracy"] == kept.network.score(X[rows_out], y[rows_out])
    monkeypatch.setattr(CACHE, "budget", 0)  # nothing kept: pass B and the score pass recompute the forward passes
    monkeypatch.setattr(OUTPUTS, "budget", 0)
    hits.clear()
    recomputed = fit_in_memory(X, y, cfg, chunk_rows=150)
    assert not hits
    for name in ("validation_accuracy", "train_accuracy", "objective"):
        assert [h[name] for h in recomputed.history] == [h[name] for h in kept.history]
    for W, W_kept in zip(recomputed.network.weights, kept.network.weights):
        assert_same_bits(W, W_kept)


def test_pass_b_deferred_to_the_next_iteration_gives_the_same_steps(monkeypatch):
    """An iteration ends after pass A and the score pass; its pass B opens the next iteration (``prepare``). The
    weights, acceptances, damping, α and validation scores are bitwise those of pass B run at the end of each
    iteration (``defer_curvature`` off), on rotating windows (cut into parts) and growing samples alike; the training
    accuracy is then that of the rows pass A evaluated, and the last iteration's pass B is left to a resume."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X, y = d.data[:900], d.target[:900]
    cfg = TrainConfig(layers="conv:4x3x3:same,pool:2,conv:4x2x2,dense:16", solver="gauss-newton", iterations=9,
                      scaling="global", validation_fraction=0.2, sample_start=150)  # windows of one of 6 chunks
    deferred = fit_in_memory(X, y, cfg, chunk_rows=150)
    assert deferred.solver.defer_curvature
    assert float(deferred.loop_state.carry["pending"]) == 1.0 and "T1" not in deferred.loop_state.carry
    monkeypatch.setattr(ConvGaussNewtonSolver, "defer_curvature", False)
    monkeypatch.setattr(ConvGaussNewtonSolver, "defer_grown", False)  # a run that grows stores defer_first_full (_defers)
    at_end = fit_in_memory(X, y, cfg, chunk_rows=150)
    assert "pending" not in at_end.loop_state.carry
    sizes = [h["sample_rows"] for h in at_end.history]
    assert len(set(sizes)) > 2 and [h["accepted"] for h in at_end.history].count(True) > 4  # windows, then growing
    for name in ("accepted", "damping", "alpha", "sample_rows", "validation_accuracy", "trial_loss"):
        assert [h[name] for h in deferred.history] == [h[name] for h in at_end.history], name
    for W, W_end in zip(deferred.loop_state.weights, at_end.loop_state.weights):
        assert W.tobytes() == W_end.tobytes()


def test_rotating_windows_keep_no_training_forward_pass():
    """On the rotate schedule's windows pass B reads another window next: pass A keeps only ``a_{L−1}`` of the
    training and held-out rows (for the scores); at initialisation and while the sample grows it keeps the training
    rows' forward pass too."""
    from solvers.activation_cache import CACHE, OUTPUTS

    rng = np.random.default_rng(5)
    solver = tiny_solver(activation="relu", dtype=np.float32)
    hidden = solver.cast(random_weights(solver, rng))[:-1]
    x = rng.normal(size=(7, solver.widths[0])).astype(np.float32)
    y = rng.integers(0, 3, 7)
    for carry, kept in ((None, True), ({"sample_window": np.float64(-1)}, True), ({"sample_window": np.float64(2)}, False)):
        CACHE.clear()
        OUTPUTS.clear()
        p = solver._forward_params(hidden, False, carry)
        solver.forward_chunk(x, y, None, 0, p)
        solver.forward_chunk_held(x, y, None, 100, p)
        assert sorted({key[1] for key in CACHE.items}) == (["train"] if kept else [])
        assert {key[1] for key in OUTPUTS.items} == {_rows_key(x, 0, False), _rows_key(x, 100, True)}
    CACHE.clear()
    OUTPUTS.clear()


@pytest.mark.parametrize("kernel", ["forward_chunk", "curvature_chunk"])
def test_a_chunk_cut_into_parts_gives_the_whole_chunks_sums(kernel):
    """A one-chunk window runs as several tasks (solvers.loop.chunk_parts): each walks whole tiles of the chunk's
    training rows with their own row numbers, so the parts' sums add up to the whole chunk's (the same tiles,
    signs and curvature rows); an empty part sums nothing."""
    from solvers.loop import chunk_kernel, chunk_parts, part_rows
    from solvers.validation import RowSplit

    rng = np.random.default_rng(4)
    solver = tiny_solver(activation="relu", dtype=np.float32)
    solver.curvature_rows = solver.part_rows = 4
    weights = solver.cast(random_weights(solver, rng))
    x = rng.normal(size=(45, solver.widths[0])).astype(np.float32)
    y = rng.integers(0, 3, 45)
    split = RowSplit(0.2, seed=1)
    p = CurvatureParams(tuple(weights), True) if kernel == "curvature_chunk" else \
        solver._forward_params(weights[:-1], True)
    fn = getattr(solver, kernel)
    whole = chunk_kernel(fn, x, y, None, 100, p, split)[1]
    for parts in (2, 3, 20):
        cut = [chunk_kernel(fn, x, y, None, 100, p, split, part=(j, parts))[1] for j in range(parts)]
        total = sum(c for c in cut if c is not None)
        np.testing.assert_allclose(total, whole, rtol=1e-12, atol=1e-12)
    n = int((~split.mask(100, 145)).sum())  # the chunk's training rows
    assert [part_rows(n, 4, (j, 3)) for j in range(3)] == [(0, 12), (12, 24), (24, n)] and n == 36
    assert chunk_parts(solver, 1) == 2 and chunk_parts(solver, 2) == 1
    assert chunk_parts(make_solver(TrainConfig(solver="gauss-newton", hidden=(4,)), 6, x_mean=np.zeros(6),
                                   x_scale=np.ones(6), classes=np.arange(2)), 1) == 1  # dense kernels: never cut


def test_pooling_and_flatten_syntax_and_errors():
    specs = parse_layers("conv:4x3x3,pool:2,conv:8x3:same,POOL:2:avg,flatten,dense:10")
    assert specs[1] == PoolSpec(2) and specs[3] == PoolSpec(2, "avg") and specs[4] == FlattenSpec()
    cfg = TrainConfig(layers="conv:4x3x3,pool:2,conv:8x3:same,POOL:2:avg,flatten,dense:10")
    assert cfg.layers == "conv:4x3x3,pool:2,conv:8x3x3:same,pool:2:avg,flatten,dense:10"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    layers = build_layers(specs, 28 * 28, 10)
    assert [m.n_out for m in layers] == [26 * 26 * 4, 13 * 13 * 8, 10, 10]
    assert layers[1].in_shape == (13, 13, 4) and layers[2].n_in == 6 * 6 * 8
    for layers, message in [("pool:2,conv:4x3x3", "must follow a convolution .*not the input"),
                            ("conv:4x3x3,pool:2,pool:2", "must follow a convolution"),
                            ("conv:4x3x3,dense:10,pool:2", "follows a dense layer"),
                            ("conv:4x3x3,flatten,conv:4x3x3", "follows flatten"),
                            ("flatten,dense:10", "flatten must follow"),
                            ("conv:4x3x3,pool:0", "size of 0"),
                            ("conv:4x3x3,pool:2:min", "cannot read layer 'pool:2:min'")]:
        with pytest.raises(InputError, match=message):
            TrainConfig(layers=layers, solver="gauss-newton")
    with pytest.raises(InputError, match="pooling layers are trained by the gauss-newton solver only"):
        TrainConfig(layers="conv:4x3x3,pool:2", solver="admm")
    with pytest.raises(InputError, match="pool:8 does not fit a 6x6 image"):
        tiny = TrainConfig(layers="conv:2x3x3,pool:8", solver="gauss-newton")
        make_solver(tiny, 64, x_mean=np.zeros(64), x_scale=np.ones(64), classes=np.arange(2))


def test_dask_runner_cuts_one_chunk_windows_as_the_in_memory_runner(client, tmp_path):
    """On rotate windows of one chunk each pass cuts the chunk into two tasks (both worker threads work); both
    runners cut alike and add the parts in the same order, so the iterations agree bitwise."""
    from distributed import get_task_stream

    from pipeline.passes import DaskRunner
    from solvers.driver import model_from_moments
    from solvers.inmemory import InMemoryRunner
    from solvers.loop import initialize, iterate
    from solvers.losses import encode_labels
    from solvers.stats import moment_sums
    from solvers.validation import RowSplit
    from storage.runstore import RunStore

    from sklearn.datasets import load_digits

    d = load_digits()
    X, y = d.data[:800], d.target[:800]
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=200)
    config = TrainConfig(layers="conv:3x3x3:same,pool:2,conv:4x3x3,dense:8", solver="gauss-newton", iterations=3,
                         scaling="global", sample_start=150)  # rotate: windows of one of 4 chunks
    shift = X[0].astype(np.float64)
    model = model_from_moments(config, 64, moment_sums(X, shift), shift, np.unique(y))
    chunks = [(a, min(a + 200, 800)) for a in range(0, 800, 200)]
    split = RowSplit(0.2, seed=3)
    solvers = []
    for _ in range(2):
        solver = make_solver(config, 64, **model)
        solver.curvature_rows = solver.part_rows = 16  # several tiles per part
        solvers.append(solver)
    mem = InMemoryRunner(solvers[0], X, encode_labels(y, model["classes"]), bounds=chunks, split=split)
    run = RunStore.create(tmp_path / "r.zarr", config=config.to_dict(), data={"path": str(tmp_path / "d.zarr")},
                          state_widths={}, n_samples=800, chunk_rows=200, **model)
    dsk = DaskRunner(client, solvers[1], tmp_path / "d.zarr", run.path, chunks, split=split)
    with get_task_stream(client) as stream:
        a, b = initialize(solvers[0], mem), initialize(solvers[1], dsk)
    assert sum(str(t["key"]).startswith("chunk_task") for t in stream.data) == 2 * (4 + 1)  # passes A and B
    for (sa, ma), (sb, mb) in zip(iterate(solvers[0], mem, a, 3), iterate(solvers[1], dsk, b, 3)):
        for Wa, Wb in zip(sa.weights, sb.weights):
            assert Wa.tobytes() == Wb.tobytes()
        assert ma == mb


@pytest.mark.slow  # ~40 s: two Dask runs and a resume
def test_pipeline_gauss_newton_conv_matches_reference_and_resumes_bitwise(client, tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    X, y, X_test, y_test = d.data[:800], d.target[:800], d.data[1400:], d.target[1400:]
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=200)
    write_data(tmp_path / "t.zarr", X_test, y_test)
    cfg = TrainConfig(layers="conv:3x3x3:same,pool:2,conv:4x3x3,dense:8", solver="gauss-newton", iterations=4,
                      scaling="global", validation_fraction=0, sample_start=400)  # rotate: 2 windows of 2 of 4 chunks
    result = train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", test_data=tmp_path / "t.zarr",
                   config=cfg, chunk_rows=200, report=lambda line: None)
    ref = fit_in_memory(X, y, cfg, chunk_rows=200, X_test=X_test, y_test=y_test)
    for W, W_ref in zip(result.network.weights, ref.network.weights):
        np.testing.assert_allclose(W, W_ref, rtol=1e-4, atol=1e-5)
    assert [h["accepted"] for h in result.history] == [h["accepted"] for h in ref.history]
    assert [h["sample_rows"] for h in result.history] == [h["sample_rows"] for h in ref.history]
    assert result.history[0]["sample_rows"] == 400 and result.history[-1]["sample_rows"] == 800
    net = load_network(tmp_path / "r.zarr")
    np.testing.assert_array_equal(net.predict(X_test), result.network.predict(X_test))

    class Crash(Exception):
        pass

    def crash_after_2(line):  # a run that dies after committing iteration 2 (in the rotating windows)
        if line.split()[:1] == ["2"]:
            raise Crash

    with pytest.raises(Crash):
        train(client, store=tmp_path / "p.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=200,
              report=crash_after_2)
    resumed = train(client, store=tmp_path / "p.zarr", resume=True, report=lambda line: None)
    for W, W_full in zip(resumed.network.weights, result.network.weights):
        assert_same_bits(W, W_full)


def test_the_run_line_names_the_pooled_width():
    """conv:8x5x5,pool:2 on 28x28: the conv layer's 4608 outputs hand 1152 on (newuser15 F8: the line said 4608 only)."""
    from pipeline.training import layer_text

    cfg = TrainConfig(layers="conv:8x5x5,pool:2,dense:100", solver="gauss-newton", input_shape="28x28")
    solver = make_solver(cfg, 784, classes=np.arange(10), x_mean=np.zeros(784), x_scale=np.ones(784))
    assert layer_text(solver) == "784-4608 (pooled 1152)-100-10"
    dense = make_solver(TrainConfig(hidden=(30,)), 5, classes=np.arange(3), x_mean=np.zeros(5), x_scale=np.ones(5))
    assert layer_text(dense) == "5-30-3"
