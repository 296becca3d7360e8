"""W-solve from Grams (eq. 9) and the a-update (eq. 6) against direct linear algebra."""
import numpy as np
import pytest

from solvers.errors import NumericalError
from solvers.linalg import ActivationUpdate, affine, cross_with_bias, gram_with_bias, solve_weights


def with_ones(a):
    return np.hstack([a, np.ones((a.shape[0], 1), a.dtype)])


def test_bias_products_equal_explicit_ones_column():
    rng = np.random.default_rng(0)
    a, z = rng.normal(size=(50, 7)), rng.normal(size=(50, 3))
    W = rng.normal(size=(3, 8))
    np.testing.assert_allclose(gram_with_bias(a), with_ones(a).T @ with_ones(a), rtol=1e-12)
    np.testing.assert_allclose(cross_with_bias(z, a), z.T @ with_ones(a), rtol=1e-12)
    np.testing.assert_allclose(affine(a, W), with_ones(a) @ W.T, rtol=1e-12)


def test_solve_weights_is_least_squares():
    rng = np.random.default_rng(1)
    a, z = rng.normal(size=(200, 6)), rng.normal(size=(200, 4))
    A = with_ones(a)
    W = solve_weights(cross_with_bias(z, a), gram_with_bias(a), ridge=0.0)
    W_lstsq = np.linalg.lstsq(A, z, rcond=None)[0].T
    np.testing.assert_allclose(W, W_lstsq, rtol=1e-9, atol=1e-12)


def test_solve_weights_ridge_is_relative_and_makes_singular_grams_solvable():
    a = np.zeros((20, 3))  # constant-zero features: a aᵀ is singular
    z = np.ones((20, 1))
    W = solve_weights(cross_with_bias(z, a), gram_with_bias(a), ridge=1e-6)
    assert np.all(np.isfinite(W))
    assert W[0, -1] == pytest.approx(1.0, rel=1e-5)  # the bias fits z


def test_solve_weights_rejects_non_finite():
    g = np.eye(3)
    c = np.ones((1, 3))
    c[0, 1] = np.nan
    with pytest.raises(NumericalError, match="W_2.*NaN"):
        solve_weights(c, g, 1e-6, what="W_2")


@pytest.mark.parametrize("n_next,n_l", [(1, 30), (5, 30), (30, 30), (40, 12)])
def test_activation_update_is_minimiser_of_eq6(n_next, n_l):
    """a = argmin β‖z_{l+1} − W̃a − b‖² + γ‖a − h‖² for Woodbury and direct forms."""
    rng = np.random.default_rng(n_next)
    W = rng.normal(size=(n_next, n_l + 1))
    h, z_next = rng.normal(size=(25, n_l)), rng.normal(size=(25, n_next))
    gamma, beta = 3.0, 0.7
    op = ActivationUpdate.from_weights(W, gamma, beta)
    assert op.woodbury == (n_next < n_l)
    a = op.apply(h, z_next)
    Wt, b = W[:, :-1], W[:, -1]
    direct = np.linalg.solve(beta * Wt.T @ Wt + gamma * np.eye(n_l), (beta * (z_next - b) @ Wt + gamma * h).T).T
    np.testing.assert_allclose(a, direct, rtol=1e-9, atol=1e-10)
    # optimality: the gradient of the a-subproblem vanishes
    grad = -2 * beta * (z_next - b - a @ Wt.T) @ Wt + 2 * gamma * (a - h)
    np.testing.assert_allclose(grad, 0, atol=1e-8)


def test_activation_update_float32_close_to_float64():
    rng = np.random.default_rng(3)
    W = rng.normal(size=(1, 301)) * 0.1
    h, z_next = rng.random((100, 300)), rng.normal(size=(100, 1))
    op = ActivationUpdate.from_weights(W, 10.0, 0.1)
    a64 = op.apply(h, z_next)
    a32 = op.astype(np.float32).apply(h.astype(np.float32), z_next.astype(np.float32))
    assert a32.dtype == np.float32
    np.testing.assert_allclose(a32, a64, rtol=1e-5, atol=1e-5)


def _ridge_problem(seed=0, n=80, d=6, k=3):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, d)) * rng.uniform(0.2, 3, d) + rng.normal(size=d)
    T = A @ rng.normal(size=(d, k)) + rng.normal(size=(n, k)) * 2 + 0.5
    return A, T


def _sums(A, T):
    from solvers.linalg import cross_with_bias, gram_with_bias

    return cross_with_bias(T, A), gram_with_bias(A), float(np.sum(T * T))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 10.0, 500.0])
def test_ridge_path_equals_refitting_for_each_alpha(alpha):
    """W(α) of the one-eigendecomposition path equals a Cholesky refit with α‖W̃‖² (bias spared) and its normal equations."""
    from solvers.linalg import RidgePath, solve_weights

    A, T = _ridge_problem()
    C, G, _ = _sums(A, T)
    W = RidgePath(C, G, ridge=0.0).weights(alpha)
    np.testing.assert_allclose(W, solve_weights(C, G, 0.0, alpha=alpha), rtol=1e-8, atol=1e-10)
    # gradient of Σ‖T − W ã‖² + α‖W̃‖² vanishes; the bias column is not penalised
    A1 = np.hstack([A, np.ones((len(A), 1))])
    grad = -2 * (T - A1 @ W.T).T @ A1 + 2 * alpha * np.column_stack([W[:, :-1], np.zeros(len(W))])
    np.testing.assert_allclose(grad, 0, atol=1e-7 * np.abs(A1.T @ T).max())


def test_free_validation_path_picks_the_alpha_a_refit_picks():
    """alpha="auto": the held-out error from summed Grams equals each refit's residual on the held-out rows."""
    from solvers.linalg import RidgePath, quadratic_error, solve_weights

    A, T = _ridge_problem(n=120, d=30, k=2)
    Atr, Ttr, Av, Tv = A[:60], T[:60], A[60:], T[60:]
    path = RidgePath(*_sums(Atr, Ttr)[:2])
    held = _sums(Av, Tv)
    Av1 = np.hstack([Av, np.ones((len(Av), 1))])
    errors = []
    for alpha in path.grid():
        W = solve_weights(*_sums(Atr, Ttr)[:2], 0.0, alpha=alpha)
        direct = float(np.sum((Tv - Av1 @ W.T) ** 2))
        assert quadratic_error(path.weights(alpha), *held) == pytest.approx(direct, rel=1e-7)
        errors.append(direct)
    alpha, W, crit = path.choose(float(np.sum(Ttr ** 2)), held)
    assert alpha == pytest.approx(path.grid()[int(np.argmin(errors))])
    assert crit == pytest.approx(min(errors), rel=1e-7)
    assert alpha > 0  # 30 noisy features on 60 rows: the least-squares fit (α = 0) overfits


def test_a_tolerance_takes_the_largest_alpha_within_it_of_the_least_held_out_error():
    """choose(tolerance=τ): of the grid's α whose held-out error is ≤ (1 + τ)·least, the largest; τ = 0: the least."""
    from solvers.linalg import RidgePath, quadratic_error

    A, T = _ridge_problem(n=120, d=30, k=2)
    path = RidgePath(*_sums(A[:60], T[:60])[:2])
    held = _sums(A[60:], T[60:])
    tt = float(np.sum(T[:60] ** 2))
    errors = np.array([quadratic_error(path.weights(a), *held) for a in path.grid()])
    assert path.choose(tt, held, 0.0)[0] == path.choose(tt, held)[0] == path.grid()[int(np.argmin(errors))]
    for tau in (0.01, 0.1, 1.0):
        alpha, W, crit = path.choose(tt, held, tau)
        assert alpha == path.grid()[np.flatnonzero(errors <= errors.min() * (1 + tau)).max()]
        assert crit == pytest.approx(quadratic_error(W, *held)) and crit <= errors.min() * (1 + tau)
    assert path.choose(tt, held, 1.0)[0] > path.choose(tt, held)[0]  # a loose tolerance regularises more


def test_gcv_without_held_out_rows_prefers_some_shrinkage_on_noise():
    from solvers.linalg import RidgePath

    rng = np.random.default_rng(1)
    A, T = rng.normal(size=(50, 30)), rng.normal(size=(50, 1))  # pure noise
    C, G, tt = _sums(A, T)
    alpha, _, _ = RidgePath(C, G).choose(tt)
    assert alpha >= RidgePath(C, G).grid()[-3]


def test_client_solves_run_on_one_blas_thread():
    """solve_weights and the other client solves hold BLAS to one thread (two threads crawl when the cores are busy)."""
    from threadpoolctl import threadpool_info

    from solvers.linalg import single_threaded

    def numpy_blas():  # the library NumPy's products and solves call (SciPy, loaded later by other tests, has its own)
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas" and "numpy" in lib["filepath"]]

    assert single_threaded(numpy_blas)() == [1]


def test_relu_curvature_sums_is_the_mask_gram_and_cross():
    """One SYRK of [M, x ⊙ r] gives S = MᵀM bitwise (integer counts) and D = Mᵀ(x ⊙ r) to float32 rounding, from
    per-thread scratch arrays that a smaller tile then reuses (its first rows: the result is that tile's alone)."""
    import threading

    from solvers.linalg import relu_curvature_sums

    rng = np.random.default_rng(0)
    for n in (300, 120, 301):  # grow, reuse the first rows, grow again
        a = np.maximum(rng.normal(size=(n, 41)), 0).astype(np.float32)
        a[:, -1] = 1  # ã's ones column: not part of the mask
        x = rng.normal(size=(n, 6)).astype(np.float32)
        r = rng.normal(size=(n, 1)).astype(np.float32)
        M = (a[:, :-1] > 0).astype(np.float32)
        S, D = relu_curvature_sums(a, x, r)
        assert S.dtype == D.dtype == np.float64 and S.shape == (40, 40) and D.shape == (40, 6)
        np.testing.assert_array_equal(S, (M.T @ M).astype(np.float64))
        np.testing.assert_allclose(D, M.astype(np.float64).T @ (x.astype(np.float64) * r), rtol=1e-5, atol=1e-4)
    out = {}
    t = threading.Thread(target=lambda: out.update(S=relu_curvature_sums(a, x, r)[0]))  # another thread's scratch
    t.start()
    t.join()
    np.testing.assert_array_equal(out["S"], S)


def test_relu_curvature_sums_of_a_wider_buffers_leading_columns():
    """ã as the leading columns of ``[ã, T]`` (pass A's buffer, kept for pass B): the mask is compared on the whole
    buffer, the sums are those of ã as its own array, bitwise."""
    from solvers.linalg import leading_block, relu_curvature_sums

    rng = np.random.default_rng(1)
    buf = np.maximum(rng.normal(size=(500, 44)), 0).astype(np.float32)
    buf[:, 40] = 1
    a = buf[:, :41]  # 40 units and the ones column; 3 target columns beside them
    assert leading_block(a) is buf and leading_block(buf) is buf
    assert leading_block(buf[:, 1:]) is not buf and leading_block(buf[::2]) is not buf  # not leading columns / rows
    x = rng.normal(size=(500, 6)).astype(np.float32)
    r = rng.normal(size=(500, 1)).astype(np.float32)
    S, D = relu_curvature_sums(a, x, r)
    S0, D0 = relu_curvature_sums(np.ascontiguousarray(a), x, r)
    np.testing.assert_array_equal(S, S0)
    np.testing.assert_array_equal(D, D0)


@pytest.mark.parametrize("rows, k, K", [(4096, 301, 1), (4096, 301, 10), (1000, 65, 1), (7, 12, 3)])
def test_gram_and_cross_is_the_two_products(rows, k, K):
    """One SYRK of [ã, T]: ``ãᵀã`` bitwise the SYRK of ã alone (the same blocks of the same dot products), ``Tᵀã``
    the separate product's to float32 rounding."""
    from solvers.linalg import gram_and_cross

    rng = np.random.default_rng(rows + k + K)
    buf = np.empty((rows, k + K), np.float32)
    buf[:, :k] = np.maximum(rng.normal(size=(rows, k)), 0)
    buf[:, k - 1] = 1
    buf[:, k:] = rng.normal(size=(rows, K))
    a, t = np.ascontiguousarray(buf[:, :k]), np.ascontiguousarray(buf[:, k:])
    gram, cross = gram_and_cross(buf, k)
    assert gram.dtype == cross.dtype == np.float64 and gram.shape == (k, k) and cross.shape == (K, k)
    np.testing.assert_array_equal(gram, (a.T @ a).astype(np.float64))
    np.testing.assert_allclose(cross, (a.T @ t).T.astype(np.float64), rtol=1e-5, atol=1e-5 * np.sqrt(rows))


@pytest.mark.parametrize("blas_threads", [1, 2])
@pytest.mark.parametrize("rows", [4096, 1000, 7951])
def test_gram_and_cross_with_one_hot_targets_against_the_separate_products(rows, blas_threads):
    """review17 L4: the 784-300-10 pass A (ã: 300 ReLU activations and the ones column, T: 10 one-hot columns) from
    one stacked SYRK gives ``ãᵀã`` of the unstacked ``GaussNewtonSolver._gram`` bitwise and ``Tᵀã`` of the unstacked
    ``GaussNewtonSolver._cross`` to float32 rounding: bitwise at 2 BLAS threads on these rows, but not at 1 thread
    (the chunk tasks' setting) on 1,000 or 7,951 rows, where OpenBLAS's SYRK sums in another order (max 3e-5 on
    sums of ~40). The pipeline and the in-memory runner use the stacked layout alike, so they agree bitwise."""
    from threadpoolctl import threadpool_limits

    from solvers.gauss_newton import GaussNewtonSolver
    from solvers.linalg import gram_and_cross

    k, K = 301, 10
    rng = np.random.default_rng(rows)
    buf = np.empty((rows, k + K), np.float32)
    buf[:, :k] = np.maximum(rng.normal(size=(rows, k)), 0)
    buf[:, k - 1] = 1
    buf[:, k:] = np.eye(K, dtype=np.float32)[rng.integers(0, K, rows)]
    a, t = buf[:, :k], np.ascontiguousarray(buf[:, k:])
    with threadpool_limits(blas_threads, user_api="blas"):
        gram, cross = gram_and_cross(buf, k)
        for a_unstacked in (a, np.ascontiguousarray(a)):  # the buffer's columns; ã in its own array (before kern17)
            np.testing.assert_array_equal(gram, GaussNewtonSolver._gram(a_unstacked))
            separate = GaussNewtonSolver._cross(t, a_unstacked)
            np.testing.assert_allclose(cross, separate, rtol=2e-6, atol=0)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_gets_fresh_client_solve_locks():
    """A lock some parent thread held at the fork is never released in the child: both the helper's lock and the
    kept decompositions' lock are made anew there (the child's first ShiftedGram.of would otherwise hang)."""
    import os

    from solvers import linalg
    from solvers.linalg import ShiftedGram

    with ShiftedGram._lock, linalg._pair_lock:  # held while the process forks (by another thread, in real life)
        pid = os.fork()
        if pid == 0:  # the child: exit at once, 0 if both locks are free
            os._exit(0 if ShiftedGram._lock.acquire(blocking=False) and linalg._pair_lock.acquire(blocking=False)
                     else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
