"""Consensus passes first, then Gauss-Newton from the consensus weights (``--solver consensus,gauss-newton``).

Phase 0 runs :class:`~solvers.consensus.ConsensusSolver` passes while they pay:
after each pass the gain ``g_k = score_k − score_{k−1}`` is measured on the
held-out rows (``--validation-fraction`` > 0), else on the shards' running
training score; once ``g_k < handover_gain`` the next iteration hands over.
That iteration initialises :class:`~solvers.gauss_newton.GaussNewtonSolver`
from the consensus hidden weights (pass A refits the output layer by least
squares, pass B gives the curvature: the same two passes as its own start),
and every later iteration is a Gauss-Newton iteration. The phase, the score
history and the active solver's carry are the client carry, so a resume at
any point continues the same schedule.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from solvers.base import SolverBase
from solvers.consensus import ConsensusSolver
from solvers.gauss_newton import GaussNewtonSolver
from solvers.loop import LoopState

_OWN = ("phase", "scores")  # the carry entries of the schedule itself


class HandOverSolver(SolverBase):
    """Consensus ADMM passes, then layerwise Gauss-Newton once the per-pass gain falls below ``handover_gain``."""

    name = "consensus,gauss-newton"
    sharded = True

    def __init__(self, config, n_features: int, classes, x_mean, x_scale, dtype=np.float32, y_mean=None,
                 y_scale=None):
        super().__init__(config, n_features, classes, x_mean, x_scale, dtype, y_mean, y_scale)
        args = (config, n_features, classes, x_mean, x_scale, dtype, y_mean, y_scale)
        self.first, self.second = ConsensusSolver(*args), GaussNewtonSolver(*args)
        self.divergence_hint = f"{self.first.divergence_hint} (consensus phase) or {self.second.divergence_hint}"

    def state_widths(self) -> dict:
        return {}

    @classmethod
    def output_link(cls, config, n_classes, record=None) -> str:
        """Return the consensus phase's link before the hand-over (its cross-entropy logits), Gauss-Newton's after."""
        if record is not None and record.get("phase") in ("hand-over", "gauss-newton"):
            return config.output_link()  # the Gauss-Newton loss's link
        return replace(config, solver=ConsensusSolver.name).output_link()

    def shard_state_widths(self) -> dict:
        return self.first.shard_state_widths()

    def initialize(self, runner) -> LoopState:
        state = self.first.initialize(runner)
        state.carry["phase"] = np.float64(0)
        return state

    def observe(self, state: LoopState, record: dict) -> None:
        """Append the iteration's score (held-out if there is one, else training) to the carry."""
        score = f"validation_{self.task.score_name}"
        value = record.get(score, record.get(f"train_{self.task.score_name}"))
        if value is not None:
            state.carry["scores"] = np.append(np.asarray(state.carry.get("scores", np.zeros(0))), float(value))

    def _split(self, state: LoopState):
        own = {k: state.carry[k] for k in _OWN if k in state.carry}
        inner = LoopState(state.iteration, state.weights, {k: v for k, v in state.carry.items() if k not in _OWN})
        return own, inner

    @staticmethod
    def _join(inner: LoopState, own: dict) -> LoopState:
        inner.carry.update(own)
        return inner

    def should_hand_over(self, scores) -> bool:
        """Return True once the last pass gained less than ``handover_gain`` (after at least two passes)."""
        scores = np.asarray(scores, np.float64)
        return scores.size >= 2 and scores[-1] - scores[-2] < self.config.handover_gain

    def advance(self, runner, state: LoopState) -> tuple[LoopState, dict]:
        own, inner = self._split(state)
        k = state.iteration + 1
        if int(own.get("phase", 0)) == 0 and not self.should_hand_over(own.get("scores", ())):
            new, metrics = self.first.advance(runner, inner)
            return self._join(new, own), {**metrics, "phase": "consensus"}
        if int(own.get("phase", 0)) == 0:  # hand over: Gauss-Newton starts from the consensus hidden weights
            start = self.second.initialize(runner, hidden=[np.asarray(W) for W in state.weights[:-1]])
            c = start.carry
            n = float(self.second.curvature_layout().unpack(c["curvature"])["n"])
            metrics = {f"train_{self.task.score_name}": float(c[f"train_{self.task.score_name}"]),
                       "loss": float(c["error"]) / n, "phase": "hand-over"}
            own["phase"] = np.float64(1)
            return self._join(LoopState(k, start.weights, c), own), metrics
        new, metrics = self.second.advance(runner, inner)
        return self._join(new, own), {**metrics, "phase": "gauss-newton"}

    # the kernels the runners call by name
    def shard_kernel(self, *args):
        return self.first.shard_kernel(*args)

    def forward_chunk(self, *args):
        return self.second.forward_chunk(*args)

    def alpha_chunk(self, *args):
        return self.first.alpha_chunk(*args)

    def curvature_chunk(self, *args):
        return self.second.curvature_chunk(*args)

    # their held-out variants (solvers.loop.chunk_kernel): the held-out rows' score only, no curvature, nothing kept
    def forward_chunk_held(self, *args):
        return self.second.forward_chunk_held(*args)

    def curvature_chunk_held(self, *args):
        return self.second.curvature_chunk_held(*args)

    def resume(self, runner, state: LoopState, changed: set) -> LoopState:
        own, inner = self._split(state)
        solver = self.first if int(own.get("phase", 0)) == 0 else self.second
        return self._join(solver.resume(runner, inner, changed), own)
