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
