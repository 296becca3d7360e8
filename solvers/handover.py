"""Consensus passes first, then Gauss-Newton from the consensus weights (``--solver consensus,gauss-newton``).

Phase 0 runs :class:`~solvers.consensus.ConsensusSolver` passes while they pay:
after each pass the gain ``g_k = score_k − score_{k−1}`` is measured on the
held-out rows (``--validation-fraction`` > 0), else on the shards' running
training score; once ``g_k < handover_gain`` the next iteration hands over
(``handover_delay`` d > 0: d consensus passes later, the gains of those passes
not tested; default 1, config's HANDOVER_DELAY: with ``first_lr_scale`` 2,
the hand-over's default, pass 1 ends higher, so the gain test fires about a
pass earlier than at 1, and one more pass left the kept model at convergence
level or better against both: fls16_s16.md, fls17_s17.md; stores written
before session 17 keep 0).
From there :class:`~solvers.gauss_newton.GaussNewtonSolver` fits the loss the
consensus passes fitted (cross-entropy for a classifier with ``--loss auto``)
from the consensus weights *as they are*, output layer included (phase 2):
the hand-over iteration takes pass B at those weights and then Gauss-Newton's
first step (pass A of the trial, LM test, pass B). Its α is fixed: the last
consensus pass's weight decay α_c in Gauss-Newton's units, ``α = n α_c / 2``
(``--alpha auto``; a given ``--alpha`` as it is), so Gauss-Newton continues
the objective the consensus passes minimised. (Gauss-Newton's own α auto,
picked among the output trials by held-out loss, alternated between 0 and
~6,000 from these weights, and the LM test rejected every large-α trial:
``handover_s9.md``.) The squared loss's output layer is refitted by least
squares, as Gauss-Newton's own start does: for that loss it is the best
output layer on the consensus hidden layers.

Phase 1 is session 8's hand-over, kept so its run stores resume as they ran:
Gauss-Newton's own loss (``--loss auto``: squared) from the consensus hidden
weights, the output layer refitted by least squares. It dropped at the switch
on ten classes (validation 0.9752 → 0.9657 on MNIST 50 k: the least-squares
output layer is a worse classifier than the consensus logits;
``benchmarks/results/handover_s9.md``). The phase, the score history and the
active solver's carry are the client carry, so a resume at any point
continues the same schedule.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from solvers.base import SolverBase
from solvers.consensus import LEGACY_AUTO_STEPS, ConsensusSolver
from solvers.gauss_newton import GaussNewtonSolver
from solvers.loop import LoopState, training_rows

_OWN = ("phase", "scores", "consensus_alpha", "kept_alpha")  # the carry entries of the schedule itself
CONSENSUS, REFIT, KEPT = 0, 1, 2  # the phases: consensus passes; session 8's Gauss-Newton (refit); Gauss-Newton from all weights
HANDOVER_DAMPING = 6.4  # the hand-over step's relative damping λ (at least): from trained weights the LM rejected the
# trials at 0.1, 0.4 and 1.6 and accepted the one at 6.4 on MNIST odd/even, 10-class and HIGGS-shaped (handover_s9.md);
# a --damping changed on resume after it is taken as given, as for --solver gauss-newton
KEPT_PREFIX = "kept_"  # phase 2's kernels, by name: the same Gauss-Newton kernels of the solver fitting the consensus loss


class _Renamed:
    """A runner whose passes run ``kept_<kernel>`` (phase 2's Gauss-Newton kernels); everything else is the runner's."""

    def __init__(self, runner):
        self._runner = runner

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def run(self, kernel, params, **kwargs):
        return self._runner.run(KEPT_PREFIX + kernel, params, **kwargs)


class HandOverSolver(SolverBase):
    """Consensus ADMM passes, then layerwise Gauss-Newton once the per-pass gain falls below ``handover_gain``."""

    name = "consensus,gauss-newton"
    sharded = True
    keep_weights = True  # False: hand over as session 8 did (phase 1; benchmarks compare the two)
    consensus_steps = LEGACY_AUTO_STEPS  # the consensus phase's auto local epochs: at least this many steps per pass
    # (the hand-over and --solver auto's choice were measured with it; consensus alone takes AUTO_STEPS since session 10)

    def __init__(self, config, n_features: int, classes, x_mean, x_scale, dtype=np.float32, y_mean=None,
                 y_scale=None):
        super().__init__(config, n_features, classes, x_mean, x_scale, dtype, y_mean, y_scale)
        args = (n_features, classes, x_mean, x_scale, dtype, y_mean, y_scale)
        self.first, self.second = ConsensusSolver(config, *args), GaussNewtonSolver(config, *args)
        self.first.auto_steps = self.consensus_steps
        self._args = args
        self.kept = GaussNewtonSolver(self._kept_config(np.nan), *args)
        self.divergence_hint = f"{self.first.divergence_hint} (consensus phase) or {self.second.divergence_hint}"

    @staticmethod
    def consensus_loss(config) -> str:
        """Return the loss the consensus phase fits, which phase 2's Gauss-Newton continues: squared or cross-entropy."""
        return "squared" if config.task == "regression" or config.loss == "squared" else "cross-entropy"

    def kept_loss(self) -> str:
        """Return the loss phase 2's Gauss-Newton fits (its history records name it)."""
        return "cross-entropy" if self.kept.cross_entropy else "squared"

    def state_widths(self) -> dict:
        return {}

    @classmethod
    def output_link(cls, config, n_classes, record=None) -> str:
        """Return the consensus phase's link before the hand-over (its cross-entropy logits), Gauss-Newton's after.

        Phase 2 (its records name ``gauss_newton_loss``) fits the consensus loss, so keeps its link; phase 1
        (records without it) fitted Gauss-Newton's own.
        """
        consensus = replace(config, solver=ConsensusSolver.name).output_link()
        if record is None or record.get("phase") not in ("hand-over", "gauss-newton"):
            return consensus
        if record.get("gauss_newton_loss") is not None:
            return consensus
        return config.output_link()  # phase 1: the Gauss-Newton loss's link

    def shard_state_widths(self) -> dict:
        return self.first.shard_state_widths()

    def initialize(self, runner) -> LoopState:
        state = self.first.initialize(runner)
        state.carry["phase"] = np.float64(CONSENSUS)
        return state

    def observe(self, state: LoopState, record: dict) -> None:
        """Append the iteration's score (held-out if there is one, else training) to the carry, and a consensus pass's α."""
        score = f"validation_{self.task.score_name}"
        value = record.get(score, record.get(f"train_{self.task.score_name}"))
        if value is not None:
            state.carry["scores"] = np.append(np.asarray(state.carry.get("scores", np.zeros(0))), float(value))
        if record.get("phase") == "consensus" and record.get("alpha") is not None:
            state.carry["consensus_alpha"] = np.float64(record["alpha"])

    def _kept_config(self, alpha):
        """Return phase 2's Gauss-Newton settings: the consensus loss and ``alpha`` (NaN: ``--alpha`` as given)."""
        want = self.config.alpha if np.isnan(float(alpha)) else float(alpha)
        return replace(self.config, loss=self.consensus_loss(self.config), alpha=want)

    def _use_kept_alpha(self, alpha) -> None:
        """Make phase 2's Gauss-Newton fit with ``alpha`` (a number; NaN: ``--alpha`` as configured)."""
        config = self._kept_config(alpha)
        if self.kept.config == config:
            return
        token = self.kept.run_token  # the same run: its kept activations stay named alike
        self.kept = GaussNewtonSolver(config, *self._args)
        self.kept.run_token = token

    def kept_alpha(self, runner, own: dict, weights, k: int) -> float:
        """Return phase 2's α: the last consensus pass's weight decay in Gauss-Newton's units, ``n α_c / 2``.

        Cross-entropy with ``--alpha auto`` only: the consensus passes minimise the mean loss plus ``½α_c‖W̃‖²``;
        times n that is Gauss-Newton's ``Σℓ + α Σ‖W̃_l‖²`` with ``α = n α_c / 2`` (n training rows). Else NaN:
        ``--alpha`` as given (the squared loss's auto α, from its closed-form ridge path, as Gauss-Newton's own).
        A carry without α_c (a run store of older code stopped in the consensus phase, resumed without a
        consensus record carrying α: :meth:`resume`) gets the consensus rule's α of pass ``k`` at ``weights``
        (:meth:`ConsensusSolver.alpha`), kept in ``own``: never an unregularised 0.
        """
        if self.config.alpha != "auto" or not self.kept.cross_entropy:
            return float("nan")
        if "consensus_alpha" not in own:
            own["consensus_alpha"] = np.float64(self.first.alpha(runner, [np.asarray(W) for W in weights], k))
        return training_rows(runner) * float(own["consensus_alpha"]) / 2.0

    def _split(self, state: LoopState):
        own = {k: state.carry[k] for k in _OWN if k in state.carry}
        inner = LoopState(state.iteration, state.weights, {k: v for k, v in state.carry.items() if k not in _OWN})
        return own, inner

    @staticmethod
    def _join(inner: LoopState, own: dict) -> LoopState:
        inner.carry.update(own)
        return inner

    def should_hand_over(self, scores) -> bool:
        """Return True once the pass ``handover_delay`` passes back gained less than ``handover_gain`` (after at least
        two passes; delay 0: the last pass, as before the setting and in stores written before session 17; the
        default is 1).

        Decided from the consensus scores of the carry alone, so a resume continues the same schedule. With a
        delay d the hand-over comes d passes after the test first held: the passes in between are not tested.
        """
        scores = np.asarray(scores, np.float64)
        d = int(self.config.handover_delay)
        return scores.size >= 2 + d and scores[-1 - d] - scores[-2 - d] < self.config.handover_gain

    def _gauss_newton(self, phase: int, runner):
        """Return (the Gauss-Newton solver of ``phase``, the runner its passes take)."""
        return (self.kept, _Renamed(runner)) if phase == KEPT else (self.second, runner)

    def advance(self, runner, state: LoopState) -> tuple[LoopState, dict]:
        own, inner = self._split(state)
        k = state.iteration + 1
        phase = int(own.get("phase", CONSENSUS))
        if phase == CONSENSUS and not self.should_hand_over(own.get("scores", ())):
            new, metrics = self.first.advance(runner, inner)
            return self._join(new, own), {**metrics, "phase": "consensus"}
        if phase == CONSENSUS and not self.keep_weights:  # session 8: from the consensus hidden weights, W_L refitted
            start = self.second.initialize(runner, hidden=[np.asarray(W) for W in state.weights[:-1]])
            c = start.carry
            n = float(self.second.curvature_layout().unpack(c["curvature"])["n"])
            metrics = {f"train_{self.task.score_name}": float(c[f"train_{self.task.score_name}"]),
                       "loss": float(c["error"]) / n, "phase": "hand-over"}
            own["phase"] = np.float64(REFIT)
            return self._join(LoopState(k, start.weights, c), own), metrics
        if phase == CONSENSUS:  # hand over: Gauss-Newton's pass B at the consensus weights as they are, then its step
            own["phase"] = np.float64(KEPT)
            own["kept_alpha"] = np.float64(self.kept_alpha(runner, own, state.weights, k))
            self._use_kept_alpha(own["kept_alpha"])
            gn, renamed = self._gauss_newton(KEPT, runner)
            weights = [np.asarray(W) for W in state.weights]
            start = gn.initialize(renamed, hidden=weights[:-1], output=weights[-1],
                                  damping=max(float(self.config.damping), HANDOVER_DAMPING))
            new, metrics = gn.advance(renamed, LoopState(state.iteration, start.weights, start.carry))
            return self._join(new, own), {**metrics, "phase": "hand-over", "gauss_newton_loss": self.kept_loss()}
        if phase == KEPT:
            self._use_kept_alpha(own.get("kept_alpha", np.nan))
        gn, run = self._gauss_newton(phase, runner)
        new, metrics = gn.advance(run, inner)
        if phase == KEPT:
            metrics["gauss_newton_loss"] = self.kept_loss()
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

    def __getattr__(self, name):
        """Phase 2's kernels (the runner of its passes prefixes KEPT_PREFIX): ``kept_<kernel>`` is phase 2's ``<kernel>``.

        Only names that are no attribute of the solver get here; any other is an AttributeError (unpickling looks
        names up before ``kept`` is set, and ``kept`` is no ``kept_`` name, so this never recurses).
        """
        if name.startswith(KEPT_PREFIX) and "kept" in self.__dict__:
            return getattr(self.kept, name[len(KEPT_PREFIX):])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def resume(self, runner, state: LoopState, changed: set, history=()) -> LoopState:
        """Resume at ``state``; ``history`` (the run's records) gives a carry without α_c (a store of session 8's code
        stopped in the consensus phase) its last consensus pass's α, as :meth:`observe` would have kept it, so the
        hand-over continues as an uninterrupted run of this code (the α of the rule at the hand-over was ~30 %
        off on the session-8 fixture of tests/test_handover_fixture.py)."""
        own, inner = self._split(state)
        phase = int(own.get("phase", CONSENSUS))
        if phase == CONSENSUS and "consensus_alpha" not in own and "alpha" not in changed:
            alpha = next((h.get("alpha") for h in reversed(list(history)) if h.get("phase") == "consensus"), None)
            if alpha is not None:
                own["consensus_alpha"] = np.float64(alpha)
        if phase == KEPT:
            if "alpha" in changed:  # a given --alpha now, or auto again: n α_c / 2
                own["kept_alpha"] = np.float64(self.kept_alpha(runner, own, state.weights, state.iteration + 1))
            self._use_kept_alpha(own.get("kept_alpha", np.nan))
        solver, run = (self.first, runner) if phase == CONSENSUS else self._gauss_newton(phase, runner)
        return self._join(solver.resume(run, inner, changed, history=history), own)
