"""Convolutional layers: the linear map against a direct convolution, the updates against brute force, Dask = in memory."""
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.training import train
from solvers import make_solver
from solvers.config import TrainConfig
from solvers.conv import CGActivationUpdate, Conv2D
from solvers.errors import InputError
from solvers.layers import ConvSpec, DenseSpec, build_layers, parse_layers
from solvers.linalg import ActivationUpdate, solve_weights
from solvers.reference import fit_in_memory
from storage.data import write_data
from pipeline.model import load_network
from storage.runstore import RunStore
from tests.conftest import run_module

ROOT = Path(__file__).resolve().parents[1]


def direct_conv(a, K, b, stride, padding):
    """Return the convolution of channel-last images ``a`` (n, H, W, C) by loops over output positions."""
    n, H, W, C = a.shape
    c_out, kh, kw, _ = K.shape
    if padding == "same":
        ho, wo = -(-H // stride), -(-W // stride)
        ph, pw = max((ho - 1) * stride + kh - H, 0), max((wo - 1) * stride + kw - W, 0)
        a = np.pad(a, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        ho, wo = (H - kh) // stride + 1, (W - kw) // stride + 1
    out = np.zeros((n, ho, wo, c_out))
    for i in range(ho):
        for j in range(wo):
            patch = a[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j, :] = np.einsum("npqc,opqc->no", patch, K) + b
    return out


def toeplitz(layer, W):
    """Return the dense matrix T of a layer's linear map (rows: outputs, columns: inputs)."""
    return layer.dense_weights(W)[:, :-1]


conv_cases = st.tuples(
    st.integers(3, 7), st.integers(3, 7), st.integers(1, 3),       # H, W, C_in
    st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),       # C_out, kh, kw
    st.integers(1, 2), st.sampled_from(["valid", "same"]), st.integers(0, 10_000))


@settings(max_examples=40, deadline=None)
@given(conv_cases)
def test_linear_map_is_the_direct_convolution_and_adjoint_is_its_transpose(case):
    H, W_, C, c_out, kh, kw, stride, padding, seed = case
    if padding == "valid" and (kh > H or kw > W_):
        return
    rng = np.random.default_rng(seed)
    layer = Conv2D((H, W_, C), c_out, kh, kw, stride, padding)
    Wt = rng.standard_normal(layer.weight_shape)
    a = rng.standard_normal((3, layer.n_in))
    K = Wt[:, :-1].reshape(c_out, kh, kw, C)
    expected = direct_conv(a.reshape(3, H, W_, C), K, Wt[:, -1], stride, padding)
    assert expected.shape[1:] == layer.out_shape
    np.testing.assert_allclose(layer.apply(a, Wt), expected.reshape(3, -1), atol=1e-12)
    r = rng.standard_normal((3, layer.n_out))
    T = toeplitz(layer, Wt)
    np.testing.assert_allclose(layer.adjoint(r, Wt), r @ T, atol=1e-12)
    np.testing.assert_allclose(layer.bias_row(Wt), layer.apply(np.zeros((1, layer.n_in)), Wt)[0])


def test_exact_w_solve_from_patch_grams_is_the_least_squares_kernel():
    """W from Σ[p,1][p,1]ᵀ and Σz[p,1]ᵀ (eq. 9 with ε = 0) minimises Σ‖z − T_K a − b‖² over all kernels."""
    rng = np.random.default_rng(1)
    layer = Conv2D((6, 5, 2), 3, 3, 2, stride=2, padding="same")
    a = rng.standard_normal((40, layer.n_in))
    z = rng.standard_normal((40, layer.n_out))
    W = solve_weights(layer.cross(z, a), layer.gram(a), 0.0)
    # brute force: the design matrix of z in the kernel entries (one column per basis kernel)
    basis = np.eye(W.size).reshape(-1, *W.shape)
    design = np.stack([layer.apply(a, E).ravel() for E in basis], axis=1)
    expected = np.linalg.lstsq(design, z.ravel(), rcond=None)[0].reshape(W.shape)
    np.testing.assert_allclose(W, expected, rtol=1e-8, atol=1e-10)
    # and the patch Gram equals the Gram of the design over positions, summed
    P = layer.patches(a)
    assert P.shape == (40 * layer.positions, layer.fan_in)
    np.testing.assert_allclose(layer.gram(a)[:-1, :-1], P.T @ P)


@pytest.mark.parametrize("stride,padding", [(1, "valid"), (2, "same"), (1, "same")])
def test_cg_a_update_converges_to_the_minimiser_of_eq6(stride, padding):
    """a = argmin γ‖a − h‖² + β‖z_next − T a − b‖², checked against a dense solve and scipy's minimiser."""
    rng = np.random.default_rng(2)
    layer = Conv2D((7, 6, 2), 3, 3, 3, stride, padding)
    Wn = rng.standard_normal(layer.weight_shape)
    h = rng.standard_normal((5, layer.n_in))
    z_next = rng.standard_normal((5, layer.n_out))
    gamma, beta = 2.0, 0.7
    T, b = toeplitz(layer, Wn), layer.bias_row(Wn)
    dense = np.linalg.solve(beta * T.T @ T + gamma * np.eye(layer.n_in), (beta * (z_next - b) @ T + gamma * h).T).T
    update = CGActivationUpdate.from_weights(layer, Wn, gamma, beta, steps=200, tolerance=1e-13)
    np.testing.assert_allclose(update.apply(h, z_next), dense, rtol=1e-6, atol=1e-7)
    exact = ActivationUpdate.from_weights(layer.dense_weights(Wn), gamma, beta)  # cg_steps = 0
    np.testing.assert_allclose(exact.apply(h, z_next), dense, rtol=1e-8, atol=1e-10)

    def objective(a_flat, i=0):
        a = a_flat[None]
        return gamma * np.sum((a - h[i]) ** 2) + beta * np.sum((z_next[i] - layer.apply(a, Wn)) ** 2)

    brute = scipy.optimize.minimize(objective, h[0], method="L-BFGS-B", options={"gtol": 1e-10, "maxiter": 5000})
    np.testing.assert_allclose(dense[0], brute.x, atol=1e-3)
    assert objective(dense[0]) <= brute.fun + 1e-9


def test_cg_error_falls_with_steps_and_rows_do_not_depend_on_their_tile():
    rng = np.random.default_rng(3)
    layer = Conv2D((8, 8, 2), 4, 3, 3)
    Wn = rng.standard_normal(layer.weight_shape) * 0.5
    h = rng.standard_normal((9, layer.n_in)).astype(np.float32)
    z_next = rng.standard_normal((9, layer.n_out)).astype(np.float32)
    exact = CGActivationUpdate.from_weights(layer, Wn, 1.0, 1.0, steps=500, tolerance=1e-13).apply(h.astype(np.float64),
                                                                                   z_next.astype(np.float64))
    errors = [np.linalg.norm(CGActivationUpdate.from_weights(layer, Wn, 1.0, 1.0, k).astype(np.float32)
                             .apply(h, z_next) - exact) for k in (1, 2, 4, 8, 16)]
    assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:]))
    assert errors[-1] < 1e-2 * errors[0]
    update = CGActivationUpdate.from_weights(layer, Wn, 1.0, 1.0, 4).astype(np.float32)
    whole = update.apply(h, z_next)
    parts = np.concatenate([update.apply(h[:4], z_next[:4]), update.apply(h[4:], z_next[4:])])
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-6)


def test_layers_syntax_and_shapes():
    specs = parse_layers("conv:8x5x5:s2:same, conv:16x3,dense:100,50")
    assert specs == (ConvSpec(8, 5, 5, 2, "same"), ConvSpec(16, 3, 3), DenseSpec(100), DenseSpec(50))
    layers = build_layers(specs, 784, 10)
    assert [layer.n_out for layer in layers] == [14 * 14 * 8, 12 * 12 * 16, 100, 50, 10]
    assert layers[1].weight_shape == (16, 3 * 3 * 8 + 1) and layers[2].weight_shape == (100, 12 * 12 * 16 + 1)
    assert build_layers(parse_layers("conv:2x3x3"), 3 * 4 * 5, 1, (3, 4, 5))[0].out_shape == (1, 2, 2)
    cfg = TrainConfig(layers="dense:30,20")            # an all-dense spec is stored as hidden
    assert cfg.hidden == (30, 20) and cfg.layers == ""
    cfg = TrainConfig(layers="CONV:4x3:S2", solver="admm")
    assert cfg.layers == "conv:4x3x3:s2" and cfg.hidden == () and TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_auto_scaling_is_global_for_convolutions():
    """Pixels of an image share units and a filter sees every position: auto gives one divisor with conv layers."""
    from solvers.driver import model_from_moments
    from solvers.stats import moment_sums

    rng = np.random.default_rng(0)
    X = rng.random((50, 16)) * np.linspace(0.1, 3.0, 16)  # 4x4 images whose pixels have different spreads
    shift = X[0].astype(np.float64)

    def x_scale(**kwargs):
        return model_from_moments(TrainConfig(**kwargs), 16, moment_sums(X, shift), shift, np.array([0, 1]))["x_scale"]

    conv = dict(layers="conv:2x3x3", input_shape=(4, 4, 1))
    assert TrainConfig(**conv).resolved_scaling() == "global" and TrainConfig().resolved_scaling() == "auto"
    np.testing.assert_array_equal(x_scale(**conv), x_scale(**conv, scaling="global"))
    assert np.ptp(x_scale(**conv)) == 0 and np.ptp(x_scale()) > 0.5  # dense auto: each pixel its own divisor
    np.testing.assert_array_equal(x_scale(**conv, scaling="standard"), x_scale(scaling="standard"))  # a choice stands


@pytest.mark.parametrize("kwargs,message", [
    ({"layers": "conv:8x5x5", "solver": "dladmm"},
     "trained by the admm or gauss-newton solver only, not dladmm .*--solver gauss-newton"),
    ({"layers": "conv:8by5", "solver": "admm"}, "cannot read layer 'conv:8by5'; expected comma-separated"),
    ({"layers": "conv:8x5x5:s2:full", "solver": "admm"}, "unknown option 'full'"),
    ({"layers": "dense:10,conv:8x3x3", "solver": "admm"}, "follows a dense layer"),
    ({"layers": "conv:0x3x3", "solver": "admm"}, "size of 0"),
    ({"input_shape": "28x28x0"}, "input shape must be HxWxC"),
    ({"cg_steps": -1}, "cg_steps must be >= 0"),
])
def test_bad_layer_settings_one_clear_error(kwargs, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("n_features,shape,layers,message", [
    (60, (), "conv:2x5x5", "not a square one-channel image; pass --input-shape"),
    (64, (4, 4, 3), "conv:2x5x5", "input shape 4x4x3 has 48 values, the data has 64"),
    (16, (), "conv:2x5x5", "a 5x5 kernel does not fit a 4x4 image"),
    (150 ** 2, (), "conv:4x3x3:same,conv:2x3x3", "cg_steps 0 .* 90000x90000 matrix .*--cg-steps 8"),
])
def test_layers_that_do_not_fit_the_data_one_clear_error(n_features, shape, layers, message):
    cfg = TrainConfig(layers=layers, solver="admm", input_shape=shape, cg_steps=0)
    with pytest.raises(InputError, match=message):
        make_solver(cfg, n_features, x_mean=np.zeros(n_features), x_scale=np.ones(n_features), classes=np.arange(2))


def test_admm_with_convolutions_learns_digits(digits_0_vs_2):
    X_train, X_test, y_train, y_test = digits_0_vs_2
    cfg = TrainConfig(layers="conv:4x3x3,conv:4x3x3:s2:same", solver="admm", iterations=8, scaling="global")
    r = fit_in_memory(X_train, y_train, cfg, chunk_rows=100, X_test=X_test, y_test=y_test)
    assert r.solver.widths == (64, 6 * 6 * 4, 3 * 3 * 4, 1)
    assert max(h["test_accuracy"] for h in r.history) >= 0.99
    assert r.history[-1]["test_accuracy"] == pytest.approx(r.network.score(X_test, y_test))
    # the exact a-update (cg_steps 0) is what many CG steps converge to
    check = {**cfg.to_dict(), "iterations": 2, "gamma": 1.0, "beta": 1.0}  # β/γ = 1: the a-update matters
    exact, many = (fit_in_memory(X_train, y_train, TrainConfig(**{**check, "cg_steps": k}), chunk_rows=100)
                   for k in (0, 60))
    for W, W_cg in zip(exact.network.weights, many.network.weights):
        np.testing.assert_allclose(W, W_cg, rtol=1e-3, atol=1e-4)


def test_pipeline_with_convolutions_matches_reference_and_resumes(client, tmp_path, digits_0_vs_2):
    """Dask equals in memory on the same seed and chunks; the stored model predicts like the reference."""
    X_train, X_test, y_train, y_test = digits_0_vs_2
    write_data(tmp_path / "d.zarr", X_train, y_train, chunk_rows=100)
    write_data(tmp_path / "t.zarr", X_test, y_test)
    cfg = TrainConfig(layers="conv:3x3x3:same,conv:4x3x3:s2,dense:8", solver="admm", iterations=4, warm_start=2,
                      scaling="global", cg_steps=3)
    result = train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", test_data=tmp_path / "t.zarr",
                   config=cfg, chunk_rows=100, report=lambda line: None)
    ref = fit_in_memory(X_train, y_train, cfg, chunk_rows=100, X_test=X_test, y_test=y_test)
    for W, W_ref in zip(result.network.weights, ref.network.weights):
        np.testing.assert_allclose(W, W_ref, rtol=2e-4, atol=2e-5)
    for h, h_ref in zip(result.history, ref.history):
        assert h["test_accuracy"] == pytest.approx(h_ref["test_accuracy"], abs=1e-9)
    assert RunStore.open(tmp_path / "r.zarr").state_widths == {"z1": 192, "z2": 36, "z3": 8, "z4": 1, "lam": 1}
    net = load_network(tmp_path / "r.zarr")
    np.testing.assert_array_equal(net.predict(X_test), ref.network.predict(X_test))
    part = TrainConfig(**{**cfg.to_dict(), "iterations": 2})
    train(client, store=tmp_path / "p.zarr", data=tmp_path / "d.zarr", config=part, chunk_rows=100,
          report=lambda line: None)
    resumed = train(client, store=tmp_path / "p.zarr", resume=True, iterations=4, report=lambda line: None)
    for W, W_full in zip(resumed.network.weights, result.network.weights):
        np.testing.assert_array_equal(W, W_full)


# -- the command line and the estimator ----------------------------------------------------
run = run_module


def test_cli_trains_evaluates_and_reports_a_convolutional_run(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    write_data(tmp_path / "train.zarr", d.data[:1400], d.target[:1400], chunk_rows=350)
    write_data(tmp_path / "test.zarr", d.data[1400:], d.target[1400:])
    store = str(tmp_path / "run.zarr")
    cluster = ("--workers", "1", "--dashboard-address", ":0")
    r = run("pipeline.train", "--solver", "admm", "--layers", "conv:6x3x3:same,conv:8x3x3:s2", "--input-shape",
            "8x8", "--scaling", "global", "--iterations", "3", "--cg-steps", "4", "--data",
            str(tmp_path / "train.zarr"), "--test-data", str(tmp_path / "test.zarr"), "--store", store,
            "--no-progress", *cluster)
    assert r.returncode == 0, r.stderr
    assert "layers 64-384-72-10" in r.stdout
    e = run("pipeline.evaluate", "--store", store, "--data", str(tmp_path / "test.zarr"), "--json", *cluster)
    assert e.returncode == 0, e.stderr
    net = load_network(store)
    assert json.loads(e.stdout)["accuracy"] == pytest.approx(net.score(d.data[1400:], d.target[1400:]))
    assert net.score(d.data[1400:], d.target[1400:]) > 0.5  # 3 iterations, 10 classes: chance is 0.1
    summary = run("pipeline.report", "--store", store, "--out", str(tmp_path / "report"))
    assert "solver admm, layers conv:6x3x3:same,conv:8x3x3:s2," in summary.stdout, summary.stderr
    both = run("pipeline.train", "--hidden", "10", "--layers", "conv:2x3x3", "--data", str(tmp_path / "train.zarr"),
               "--store", str(tmp_path / "other.zarr"), *cluster)
    assert both.returncode == 2 and "give --hidden or --layers, not both" in both.stderr
    bad = run("pipeline.train", "--layers", "conv:2x3x3:s0", "--store", str(tmp_path / "other.zarr"))
    assert bad.returncode == 2 and "size of 0" in bad.stderr
    assert not (tmp_path / "other.zarr").exists()


def test_estimator_with_convolutions(client, digits_0_vs_2):
    from pipeline.estimator import ADMMClassifier

    X_train, X_test, y_train, y_test = digits_0_vs_2
    clf = ADMMClassifier(layers="conv:4x3x3", solver="admm", max_iter=4, random_state=0, client=client,
                         input_shape=(8, 8, 1)).fit(X_train, y_train)
    assert clf.score(X_test, y_test) >= 0.97
    assert [c.shape for c in clf.coefs_] == [(9, 4), (6 * 6 * 4, 1)]
    with pytest.raises(ValueError, match="trained by the admm or gauss-newton solver only"):
        ADMMClassifier(layers="conv:4x3x3", solver="dladmm", client=object()).fit(X_train, y_train)


def test_convolutions_without_a_solver_pick_gauss_newton():
    """``--layers`` with a convolution and no ``--solver``: Gauss-Newton, which learns the filters (README)."""
    assert TrainConfig(layers="conv:4x3x3").solver == "gauss-newton"
    assert TrainConfig(layers="conv:4x3x3,pool:2").solver == "gauss-newton"
    # dense layers: auto is chosen by the data's size when the run is created (tests/test_auto_solver.py)
    assert TrainConfig(layers="dense:30").solver == "auto" and TrainConfig().solver == "auto"
    assert TrainConfig(layers="conv:4x3x3").choose_solver(10**9, 1)[0].solver == "gauss-newton"


@pytest.mark.parametrize("shape,k,stride,padding", [((9, 11, 1), 3, 1, "valid"), ((9, 11, 1), 3, 2, "same"),
                                                    ((8, 8, 1), 5, 1, "same"), ((6, 7, 2), 2, 1, "valid")])
def test_patches_built_by_offset_are_the_windows_with_a_ones_column(shape, k, stride, padding):
    """``patches`` (one channel: ``Pᵀ`` built offset by offset, Fortran order) holds every window, (p, q, c) order."""
    rng = np.random.default_rng(4)
    layer = Conv2D(shape, 2, k, k, stride, padding)
    a = rng.standard_normal((3, layer.n_in)).astype(np.float32)
    top, bottom, left, right = layer.pads
    img = np.pad(a.reshape(3, *shape), ((0, 0), (top, bottom), (left, right), (0, 0)))
    ho, wo, _ = layer.out_shape
    expected = np.stack([img[:, i * stride:i * stride + k, j * stride:j * stride + k, :].reshape(3, -1)
                         for i in range(ho) for j in range(wo)], axis=1).reshape(-1, layer.fan_in)
    assert layer.by_offset == (shape[2] == 1 and wo > k)
    np.testing.assert_array_equal(layer.patches(a), expected)
    np.testing.assert_array_equal(layer.patches(a, ones=True), np.hstack([expected, np.ones((len(expected), 1), np.float32)]))
