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
