"""The client side of training, shared by the in-memory reference and the Dask pipeline.

The loop reads like Algorithm 1 with the chunk work abstracted away: a
*runner* executes one pass of chunk kernels over every sample chunk and
returns the float64 sums; the loop turns sums into weights (small solves)
and yields after every iteration so the caller can checkpoint and report.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np

from solvers.errors import NumericalError


class PassRunner(Protocol):
    """Runs one pass of a solver's chunk kernels over all sample chunks."""

    def init(self, weights) -> np.ndarray:
        """Write the initial state (``solver.init_chunk``) and return the summed stats."""

    def grams(self, weights, iteration: int = 0) -> np.ndarray:
        """Return the summed ``solver.grams_chunk`` stats of the state of ``iteration``."""

    def step(self, iteration: int, params) -> np.ndarray:
        """Advance the state to ``iteration`` (``solver.step_chunk``) and return the summed stats."""


@dataclass
class LoopState:
    """Client state after iteration k: W^k (the model), W^{k+1} (solved for the next pass)."""

    iteration: int
    weights: list
    next_weights: list
    input_gram: np.ndarray


def _layer_of(name: str):
    digits = name[len(name.rstrip("0123456789")):]
    return int(digits) if digits else None


def _check_finite(sums: dict, iteration: int):
    """Raise :class:`NumericalError` naming the first layer whose sums are not finite."""
    by_layer = sorted(sums, key=lambda k: (_layer_of(k) is None, _layer_of(k) or 0))
    for name in by_layer:
        if not np.all(np.isfinite(sums[name])):
            layer = _layer_of(name)
            where = f"layer {layer} ({name})" if layer is not None else name
            raise NumericalError(
                f"non-finite values (NaN/inf) in {where} at iteration {iteration}; the last committed "
                "iteration is intact: resume with other --gamma/--beta (nearer the defaults) or a larger --ridge"
            )


def initialize(solver, runner: PassRunner) -> LoopState:
    """Write the initial state and return the client state of iteration 0 (W⁰, W¹)."""
    layout = solver.layout(True)
    w0 = solver.initial_weights()
    sums = layout.unpack(runner.init(w0))
    _check_finite(sums, 0)
    input_gram = sums["gram1"]
    if w0 is None:  # gaussian state: fit W⁰ to it, then the Grams of W¹
        w0 = solver.solve(sums, input_gram)
        sums = layout.unpack(runner.grams(w0))
        _check_finite(sums, 0)
    return LoopState(0, w0, solver.solve(sums, input_gram), input_gram)


def iterate(solver, runner: PassRunner, state: LoopState, until: int) -> Iterator[tuple[LoopState, dict]]:
    """Yield (client state, metrics) after each iteration ``state.iteration + 1 .. until``."""
    layout = solver.layout(False)
    while state.iteration < until:
        k = state.iteration + 1
        params = solver.step_params(state.weights, state.next_weights, k)
        sums = layout.unpack(runner.step(k, params))
        _check_finite(sums, k)
        metrics = solver.metrics(sums)
        try:
            w_next = solver.solve(sums, state.input_gram)
        except NumericalError as exc:
            raise NumericalError(f"iteration {k}: {exc}") from None
        state = LoopState(k, state.next_weights, w_next, state.input_gram)
        yield state, metrics
