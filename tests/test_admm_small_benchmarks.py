"""The measurement-only wrappers of benchmarks/admm_first_layer.py: ``refit`` drives the iteration from the model's
readout and leaves the solvers as they were (issue 19, admm_small_s11.md)."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import admm_first_layer as afl  # noqa: E402
from solvers import admm, dladmm  # noqa: E402


def _data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 5)).astype(np.float32)
    return X, (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)


@pytest.mark.parametrize("solver", ["admm", "dladmm"])
def test_refit_variant_carries_the_models_readout_and_restores_the_solvers(solver):
    from solvers.config import TrainConfig
    from solvers.reference import fit_in_memory

    X, y = _data()
    saved = (admm.ADMMSolver.advance, dladmm.DLADMMSolver.advance, admm.ADMMSolver.solve)
    seen = []
    with afl.variant("refit"):
        inner = (admm.ADMMSolver if solver == "admm" else dladmm.DLADMMSolver).advance

        def spy(self, runner, state):
            out = inner(self, runner, state)
            seen.append((np.array(out[0].weights[-1]), np.array(out[0].carry["U"]),
                         np.array(out[0].carry.get(f"V{self.L}", out[0].carry["U"]))))
            return out
        cls = admm.ADMMSolver if solver == "admm" else dladmm.DLADMMSolver
        cls.advance = spy
        try:
            fit_in_memory(X, y, TrainConfig(solver=solver, hidden=(8,), iterations=3, seed=0))
        finally:
            cls.advance = inner
    assert (admm.ADMMSolver.advance, dladmm.DLADMMSolver.advance, admm.ADMMSolver.solve) == saved
    assert seen and all(np.array_equal(W, U) and np.array_equal(W, V) for W, U, V in seen)


@pytest.mark.parametrize("argv", [[], ["--peers"], ["--solver", "dladmm"], ["--summary", "--out", "r.json"]])
def test_readout_sklearn_refuses_to_run_without_its_output_file(argv, capsys):
    """Hours of runs with nowhere to write (``Path(None)``) fail at the start with a usage line, not at the end."""
    from benchmarks import admm_readout_sklearn as ars

    with pytest.raises(SystemExit) as e:
        ars.main(argv)
    assert e.value.code == 2 and "--" in capsys.readouterr().err


def test_admm_bc_own_alpha_skip_is_the_two_block_penalty():
    """Scaling the hidden block by √(C_h/C_x) at C = C_x (benchmarks/admm_bc.py, ``skip2``) minimises
    Σℓ + ½‖V_h‖²/C_h + ½‖V_x‖²/C_x: the same weights as a direct minimisation of that objective."""
    from scipy.optimize import minimize
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    F, A = rng.standard_normal((80, 4)), rng.standard_normal((80, 3))
    y = (A[:, 0] + F[:, 1] + 0.5 * rng.standard_normal(80) > 0).astype(int)
    Cx, Ch = 2.0, 0.05
    s = np.sqrt(Ch / Cx)
    m = LogisticRegression(C=Cx, tol=1e-10, max_iter=10000).fit(np.concatenate([s * F, A], axis=1), y)
    v = np.concatenate([m.coef_[0][:4] * s, m.coef_[0][4:], m.intercept_])  # the weights on [F, A]
    P, sign = np.concatenate([F, A, np.ones((80, 1))], axis=1), 2 * y - 1

    def objective(w):
        return (np.logaddexp(0, -sign * (P @ w)).sum() + 0.5 * w[:4] @ w[:4] / Ch + 0.5 * w[4:7] @ w[4:7] / Cx)
    direct = minimize(objective, np.zeros(8), method="BFGS", options={"gtol": 1e-9}).x
    np.testing.assert_allclose(v, direct, atol=1e-4)


def test_admm_bc_selection_takes_the_readout_of_least_held_out_loss():
    from benchmarks import admm_bc

    entry = {"acc": 0.9, "readouts": {"hid": {"acc": 0.8, "held_loss": 0.3}, "lin": {"acc": 0.95, "held_loss": 0.2}}}
    assert admm_bc._acc(entry, "model") == 0.9
    assert admm_bc._acc(entry, "hid|lin") == 0.95
    entry["readouts"]["lin"]["held_loss"] = 0.4
    assert admm_bc._acc(entry, "hid|lin") == 0.8


def test_admm_bc_ridge_fold_errors_from_fold_sums_are_the_out_of_fold_errors():
    """The k-fold error of the ridge readout from per-fold Grams (benchmarks/admm_bc.py, ``ridgecv``) equals the
    squared error of each fold's rows under the ridge fitted on the other folds."""
    from benchmarks import admm_bc

    rng = np.random.default_rng(0)
    Z = np.concatenate([rng.normal(size=(60, 4)), np.ones((60, 1))], axis=1)
    t = (rng.random(60) < 0.5).astype(float)
    fold = admm_bc.folds(60, 3, 5)
    assert set(fold) == set(range(5))
    pen = np.diag([1.0, 1, 1, 1, 0])
    for a, err in zip([0.1, 10.0], admm_bc.ridge_fold_errors(Z, t, fold, 5, [0.1, 10.0])):
        direct = 0.0
        for f in range(5):
            tr, te = fold != f, fold == f
            w = np.linalg.solve(Z[tr].T @ Z[tr] + a * pen, Z[tr].T @ t[tr])
            direct += float(np.sum((Z[te] @ w - t[te]) ** 2))
        assert np.isclose(err, direct, rtol=1e-10)
