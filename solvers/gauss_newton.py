"""Layerwise Gauss-Newton with Kronecker-factored curvature, on the same chunk-and-reduce passes.

Samples are rows; ``ã = [a, 1]``; ``T`` are 0/1 (or one-hot) targets, or
the standardised real values of a regression (:mod:`solvers.tasks`); ``W̃``
is W without its bias column; the objective is the squared error plus weight
decay ``E = Σ‖T − W_L ã_{L−1}‖² + α Σ_l ‖W̃_l‖²`` (scikit-learn's ``alpha``:
its MLP objective times 2n); ``M_l = h'(z_l)``. One iteration, for the trial
hidden weights ``W_1..W_{L−1}``:

* pass A (``forward_chunk``, also over the held-out rows): ``G_{L−1} = Σ ã_{L−1}ã_{L−1}ᵀ``,
  ``C_L = Σ T ã_{L−1}ᵀ``, ``Σ‖T‖²``; on the client ``W_L(α) = C_L (G_{L−1} + α Ĩ)⁻¹``
  (the paper's eq. 9 W-solve; Ĩ spares the bias) for every α of a grid at once
  (:class:`~solvers.linalg.RidgePath`). ``alpha="auto"`` takes the α whose
  ``W_L(α)`` has the least squared error on the held-out rows' sums (GCV on
  the training sums when nothing is held out): regularisation chosen from
  held-out data with no further pass. E follows from the same sums.
* Levenberg–Marquardt control: if E (at this iteration's α, the accepted
  weights' E recomputed from their kept pass-A sums) rose, the trial is
  rejected (the weights stay, the damping λ ← 4λ); else it is accepted
  (λ ← max(λ/2, floor)) and
* pass B (``curvature_chunk``) at the accepted weights: ``δ_L = T − W_L ã_{L−1}``,
  ``δ_l = M_l ⊙ (δ_{l+1} W̃_{l+1})``; gradients ``D_l = Σ δ_lᵀ ã_{l−1}``; input Grams
  ``G_{l−1}``; output-side curvature ``S_l = Σ_k Σ_samples J_{k,l}ᵀ J_{k,l}`` with
  ``J_{k,L−1} = M_{L−1} ⊙ W̃_L[k]``, ``J_{k,l} = M_l ⊙ (J_{k,l+1} W̃_{l+1})`` — for the
  last hidden layer ``S = (W̃_Lᵀ W̃_L) ⊙ Σ M_{L−1}ᵀ M_{L−1}``, reduced as ``Σ MᵀM``.
* the next trial, on the client: ``W_l ← W_l + η n (S_l + (λ s̄ + π√(αn)) I)⁻¹ (D_l − α W̃_l)
  (G_{l−1} + (ε' ḡ + √(αn)/π) I)⁻¹`` (``s̄, ḡ`` mean diagonals, ε' = max(ε, 0.01);
  ``n S⁻¹ D G⁻¹`` is the Gauss-Newton step with the curvature ``S ⊗ G / n``,
  ``D − αW̃`` the regularised descent direction, and the √(αn) terms K-FAC's
  factored Tikhonov damping of ``S ⊗ G / n + α I``, π² the ratio of the factors'
  mean diagonals).

Pass B also scores the weights on the held-out rows in the same tasks
(:meth:`curvature_chunk_held`), so the driver scores nothing more; when the
sample grows, only the added chunks sum their input Gram (the sample's Gram
is the previous one plus theirs). While the sample grows, and at the first
iteration on every chunk, pass B (on the next sample) is left to open the next
iteration, and the accepted step is reported after pass A and a score pass over
the activations pass A kept (:meth:`_defers`, :meth:`prepare`): the same steps,
reported a pass earlier.

Read as ADMM, the step sets Gauss-Newton targets ``z_l* = z_l + η n (S_l + λ s̄ I)⁻¹ δ_l``
and applies the least-squares W-solve on the forward inputs. No per-sample
state is stored (the forward pass is recomputed), so the out-of-core I/O is
the data alone: two passes per accepted iteration, one per rejected one.

Cross-entropy (``--loss cross-entropy``, generalised Gauss-Newton, Schraudolph 2002;
:mod:`solvers.cross_entropy`): ``E = Σℓ + α Σ_l ‖W̃_l‖²`` with softmax (one unit:
sigmoid) outputs. The output layer is no longer closed form: it starts at zero
(p = 1/K) and takes the same damped step as the hidden layers, with
``δ_L = T − P``, ``S_L = Σ H``, ``H = diag(p) − p pᵀ``, and the hidden layers'
``S_l = Σ_k J_{k,l}ᵀ J_{k,l}`` start from ``J_{k,L−1} = M_{L−1} ⊙ (F_k W̃_L)``,
``F_k`` the rows ``√p_k (e_k − p)ᵀ`` (``H = Σ_k f_k f_kᵀ``). Pass A evaluates the
output trial ``W_L(α_j)`` for every α of the grid at once (one product per chunk);
``alpha="auto"`` takes the α whose trial has the least held-out Σℓ (α_j =
``ALPHA_GRID`` times the mean diagonal s̄ ḡ of the output layer's curvature
``(S_L/n) ⊗ G_{L−1}``; nothing held out: :data:`CE_ALPHA_UNHELD` of it), and the
hidden layers' next step uses the α last chosen.

Step choice (``step_choice`` ``held-out`` / ``held-out-1.5``, squared loss, dense kernels, held-out rows): in
iteration 1 only, pass A evaluates the hidden trial at the step lengths t = 1 and 2 (``held-out-1.5``: 1 and 1.5) in
the same read of each chunk and keeps the one of lower held-out loss (:mod:`solvers.step_choice`); where t = 1 is kept
the run is the stock run bit for bit.

Settings: ``loss`` (squared or cross-entropy), ``step_size`` η, ``damping`` λ₀, ``alpha`` α (``"auto"`` or a
number), ``ridge`` ε (the numerical floor of every solve), ``step_choice``; the accepted
objective and pass-A sums, α, λ, the trial weights and pass B's sums are the
client ``carry``.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from solvers import cross_entropy as ce, hidden_race, sampling, step_choice
from solvers.activation_cache import CACHE, INPUTS, weights_key
from solvers.base import SolverBase
from solvers.config import HE_BIAS, TrainConfig
from solvers.errors import InputError, NumericalError
from solvers.hidden_race import RACE_DROP, RACE_ITERATIONS  # noqa: F401 (re-exported: tests, benchmarks)
from solvers.linalg import (ALPHA_GRID, RidgePath, ShiftedGram, penalty,
                            quadratic_error, single_threaded, solve_weights, spd_solve, times)
from solvers.linalg import gram_and_cross, leading_block, relu_curvature_sums
from solvers.loop import LoopState, run_pass, run_pass_held_out
from solvers.stats import StatsLayout
from solvers.step_choice import STEP_CHOICE_ITERATIONS, STEP_LENGTHS, choose_step  # noqa: F401 (re-exported: tests)

DAMPING_FLOOR = 1e-2  # λ never drops below this (relative to the mean curvature s̄)
DAMPING_GROWTH = 4.0  # λ ← 4λ after a rejected step
DAMPING_SHRINK = 2.0  # λ ← λ/2 after an accepted one
STEP_RIDGE = 1e-2     # least relative damping ε' of the input Gram in the hidden layers' step
CE_ALPHA_UNHELD = 1e-3  # cross-entropy, alpha auto, nothing held out: α / (s̄ ḡ) of the output layer
NO_SAMPLE = np.array([-1.0, -2.0])  # gram_sample before the first trial of a sample that can grow: no (m, window) is this
_PATHS: OrderedDict = OrderedDict()  # the client's last three RidgePaths used, by (ridge, SHA-1 of their sums)


def pin_rows(W, reference) -> np.ndarray:
    """Return ``W`` with each row (a unit's incoming weights and bias) rescaled to that row's norm in ``reference``.

    ``--hidden-alpha pinned``: with ReLU, ``relu(c z) = c relu(z)`` for c > 0, so a unit's norm is only the scale of
    its output, which the next layer (the output layer: refitted from pass A's Grams) takes back. Pinning it removes
    the scale symmetry that lets unpenalised hidden weights grow without bound (generalise_s10.md) and leaves the
    units free in direction.
    """
    target = np.linalg.norm(np.asarray(reference, np.float64), axis=1, keepdims=True)
    now = np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-300)
    return W * (target / now)


def _rows_key(x_raw, start_row, held: bool) -> tuple:
    """Return what names a chunk's rows in the activation cache: training or held-out side, first row number,
    count, first and last row's bytes.

    The training and held-out rows of a chunk start at the same row number, and their first and last rows can be
    equal (duplicate rows): the side tells them apart.
    """
    return ("held" if held else "train", int(start_row), x_raw.shape[0],
            hashlib.sha1(x_raw[:1].tobytes() + x_raw[-1:].tobytes()).hexdigest())


@dataclass(frozen=True)
class ForwardParams:
    """The broadcast of pass A: the hidden weights (the chunk's dtype) and whether to sum the input Gram."""

    hidden: tuple
    input_gram: bool
    outputs: object = None  # cross-entropy: the output layer's trials W_L(α_j) stacked (J·K × n_{L−1}+1)
    key: str | None = None  # names the run and the hidden weights: the activations are kept (solvers.activation_cache)
    others: tuple = ()  # step_choice: further hidden trials (each as ``hidden``), summed as ``step<j>_…`` in the same read
    other_keys: tuple = ()  # their keys (as ``key``): the kept trial's activations serve pass B as the stock one's do


@dataclass(frozen=True)
class CurvatureParams:
    """The broadcast of pass B: all weights (the chunk's dtype) and whether to sum the input Gram Σ ã_0 ã_0ᵀ.

    ``gram_chunks``: the first rows of the chunks that sum it (None: every chunk, when ``input_gram``).
    """

    weights: tuple
    input_gram: bool = False
    gram_chunks: tuple | None = None
    key: str | None = None  # the hidden weights' key: pass A's activations are taken from the cache when there

    def sums_input_gram(self, start_row) -> bool:
        """Return whether the chunk starting at ``start_row`` sums the input Gram."""
        return self.input_gram and (self.gram_chunks is None or int(start_row) in self.gram_chunks)


class GaussNewtonSolver(SolverBase):
    """Layerwise Gauss-Newton: chunk kernels (passes A and B) and the client's LM-controlled step."""

    name = "gauss-newton"
    convolutional = False  # the auto sample schedule and start (solvers.sampling): rotate and fewer rows for convolutions
    divergence_hint = "a smaller --step-size or a larger --damping or --ridge"
    alpha_tolerance = 0.0  # alpha auto (squared loss): the largest α within (1 + c/√n_held) of the least held-out error
    defer_curvature = False  # True: every iteration ends after pass A and pass B opens the next one (:meth:`prepare`)
    defer_growing = True  # an iteration whose next sample differs ends after pass A too (:meth:`_defers`)
    defer_grown = True  # a new run whose first sample is not every chunk defers its first full-sample iteration too (carry)
    _input_gram_reused = False  # set by _with_trial: layer 1 steps through the kept decomposition (layer_step)
    _objective_damped = False  # set by _with_trial: this trial steps with the objective's damping (first_damping)

    def __init__(self, config: TrainConfig, n_features: int, classes, x_mean, x_scale, dtype=np.float32,
                 y_mean=None, y_scale=None):
        super().__init__(config, n_features, classes, x_mean, x_scale, dtype, y_mean, y_scale)
        loss = config.gauss_newton_loss()
        if loss not in ("squared", "cross-entropy"):
            raise InputError(f"the gauss-newton solver fits the squared loss or cross-entropy; --loss {config.loss} "
                             "needs --solver admm")
        self.cross_entropy = loss == "cross-entropy"
        self.pinned = config.resolved_hidden_alpha() == "pinned"  # race: set per candidate, then from the stored choice
        self.note = None  # lines for the progress report (the race's choice, the step choice), taken by the driver
        self.run_token = os.urandom(8).hex()  # names this run's activations in the cache (solvers.activation_cache)

    # -- what the pipeline stores and sums ------------------------------------------
    def state_widths(self) -> dict[str, int]:
        """Return {}: the forward pass is recomputed, nothing per sample is kept."""
        return {}

    def forward_layout(self, input_gram: bool) -> StatsLayout:
        """Return the layout of pass A's sums (``gram1`` = Σ ã_0 ã_0ᵀ only when asked)."""
        w, L = self.widths, self.L
        if self.cross_entropy:  # the training loss Σℓ of each output trial W_L(α_j)
            shapes = {"n": (), "ce": (len(self.output_alphas(1.0)),)}
        else:
            shapes = {"n": (), "tt": (), f"gram{L}": (w[L - 1] + 1,) * 2, f"cross{L}": (w[L], w[L - 1] + 1)}
        if input_gram and L > 1:
            shapes["gram1"] = (w[0] + 1,) * 2
        return StatsLayout(shapes)

    def curvature_layout(self, input_gram: bool = False) -> StatsLayout:
        """Return the layout of pass B's sums: score, error, S (as Σ MᵀM for the last hidden layer), D, G per layer.

        ``input_gram``: also ``gram1`` = Σ ã_0 ã_0ᵀ (when the sample of chunks changed). Cross-entropy: S
        of the last hidden layer in full, and the output layer's ``curv{L}`` = Σ H, ``grad{L}``, ``gram{L}``.
        """
        w, L = self.widths, self.L
        shapes = {"n": (), **self.task.score_shapes, "loss": ()}
        if input_gram and L > 1:
            shapes["gram1"] = (w[0] + 1,) * 2
        for l in range(1, L):
            shapes[f"curv{l}"] = (w[l], w[l])
            shapes[f"grad{l}"] = (w[l], w[l - 1] + 1)
            if l > 1:
                shapes[f"gram{l}"] = (w[l - 1] + 1,) * 2
        if self.cross_entropy:
            shapes.update({f"curv{L}": (w[L], w[L]), f"grad{L}": (w[L], w[L - 1] + 1), f"gram{L}": (w[L - 1] + 1,) * 2})
        return StatsLayout(shapes)

    # -- client side -------------------------------------------------------------------
    def initial_hidden(self) -> list:
        """Return the random hidden weights: Glorot-uniform for ``init="glorot"``, else He-scaled (bias 0; ``he-bias``:
        Glorot's random biases), seeded; times ``init_scale`` (1: as drawn)."""
        init = self.config.resolved_init()
        weights = self.glorot_weights(self.L - 1) if init == "glorot" else self.he_weights(self.L - 1, biases=init == HE_BIAS)
        scale = float(self.config.init_scale)
        return weights if scale == 1.0 else [W * scale for W in weights]

    def _sample(self, runner, m: int, window: int = -1) -> dict:
        """Return the ``chunks=`` argument of a pass over the sample of ``m`` chunks (window ≥ 0: rotating; {}: every chunk)."""
        chunks = sampling.sample(len(runner.bounds), m, self.config.seed, window) if hasattr(runner, "bounds") else None
        return {} if chunks is None else {"chunks": chunks}

    def initial_output(self) -> np.ndarray:
        """Return the cross-entropy start of W_L: zero, so every class has p = 1/K (one unit: bias ½, logit 0)."""
        W = np.zeros((self.widths[-1], self.widths[-2] + 1))
        if W.shape[0] == 1:
            W[0, -1] = ce.SHIFT
        return W

    def initialize(self, runner, hidden=None, output=None, damping=None) -> LoopState:
        """Return :meth:`_initialize`'s state; ``--hidden-alpha race`` or ``probe``: with the pinned candidate's beside it
        (:func:`solvers.hidden_race.initialize`)."""
        self.pinned = self.config.resolved_hidden_alpha() == "pinned"
        state = self._initialize(runner, hidden, output, damping)
        if self.config.resolved_hidden_alpha() not in hidden_race.RULES:
            return state
        return hidden_race.initialize(self, runner, state)

    def _initialize(self, runner, hidden=None, output=None, damping=None) -> LoopState:
        """Fit the output layer on the random hidden layers (or ``hidden``: a hand-over) by pass A, then take pass B.

        Both passes read the first sample of chunks (:mod:`solvers.sampling`). Cross-entropy starts the
        output layer at ``output`` (a hand-over's consensus output layer, as it is) or :meth:`initial_output`
        and takes pass B alone (α: the given one, or 0 for auto); the squared loss refits it whatever ``output`` is.
        ``damping``: the first λ (a hand-over's), else ``--damping``.
        """
        damping = np.float64(self.config.damping if damping is None else damping)
        hidden = self.initial_hidden() if hidden is None else hidden
        bounds = list(getattr(runner, "bounds", ()))  # a runner without chunk bounds reads every chunk
        schedule = sampling.resolve(self.config.sample_schedule, self.config.solver, self.convolutional)
        m = sampling.initial_count(bounds, schedule, sampling.start_rows(self.config.sample_start, self.convolutional))
        window = sampling.initial_window(schedule, m, len(bounds))
        sample = self._sample(runner, m, window)
        # the first sample is every chunk: its input Gram serves every trial of the run, the first included (_with_trial)
        gram_sample = np.array([m, window], np.float64) if bounds and m == len(bounds) else NO_SAMPLE.copy()
        # the deferral rule of the run, stored (a resume, and a store of older code without it, keeps its own: _defers)
        rule = {"defer_first_full": np.float64(1.0)} if self.defer_grown and bounds and m < len(bounds) else {}
        if self.cross_entropy:
            weights = [*hidden, self.initial_output() if output is None else np.array(output, np.float64)]
            alpha = 0.0 if self.config.alpha == "auto" else float(self.config.alpha)
            carry = {"damping": damping, "sample_chunks": np.float64(m), **rule,
                     "sample_window": np.float64(window), "alpha": np.float64(alpha), "gram_sample": gram_sample,
                     **self._curvature_pass(runner, weights, 0.0, 0, sample, alpha, new_sample=True)}
            return self._with_trial(LoopState(0, weights, carry))
        sums, held = run_pass_held_out(runner, self.forward_layout(True), "forward_chunk",
                                       self._forward_params(hidden, True), 0, **sample)
        input_gram = sums["gram1"] if self.L > 1 else sums[f"gram{self.L}"]
        W_out, error, alpha = self.output_layer(sums, held)
        weights = [*hidden, W_out]
        carry = {"input_gram": np.asarray(input_gram), "damping": damping, "gram_sample": gram_sample, **rule,
                 "sample_chunks": np.float64(m), "sample_window": np.float64(window), "alpha": np.float64(alpha),
                 **self._accepted_sums(sums, error),
                 **self._curvature_pass(runner, weights, self.objective(error, weights, alpha), 0, sample, alpha)}
        return self._with_trial(LoopState(0, weights, carry))

    def prepare(self, runner, state: LoopState) -> LoopState:
        """Return ``state`` with its trial: run the pass B that its iteration deferred (``pending`` in the carry), if any.

        With :attr:`defer_curvature` an iteration's accepted weights are reported and committed after pass A and
        their score pass; pass B, which only prepares the next step, opens the next iteration here (after a resume
        too: the committed state names the sample it reads). Its sums, and so the trial, are those an undeferred
        pass B at the end of the iteration would have given: the same weights, sample and objective.
        """
        c = state.carry
        if not float(c.get("pending", 0.0)):
            return state
        c = {name: value for name, value in c.items() if not name.startswith("pending")}
        m, window = int(state.carry["pending_chunks"]), int(state.carry["pending_window"])
        m_next, w_next = int(c["sample_chunks"]), int(c["sample_window"])
        moved = (m_next, w_next) != (m, window)
        c.update(self._curvature_pass(runner, state.weights, float(c["error"]), state.iteration,
                                      self._sample(runner, m_next, w_next), float(c["alpha"]), new_sample=moved,
                                      grown=(m, window, c.get("input_gram")), score_held=False))
        return self._with_trial(LoopState(state.iteration, list(state.weights), c))

    def advance(self, runner, state: LoopState) -> tuple[LoopState, dict]:
        """Return :meth:`_advance`; ``--hidden-alpha race`` or ``probe``: both candidates' iterations while the race runs
        (:func:`solvers.hidden_race.advance`; with ``step_choice`` each candidate chooses its own step length in
        :meth:`_evaluate`). An iteration that chose a step length adds a line to :attr:`note`
        (:func:`solvers.step_choice.report_line`: under the race or probe it names the candidate)."""
        if self.config.resolved_hidden_alpha() not in hidden_race.RULES:
            new, metrics = self._advance(runner, state)
        else:
            new, metrics = hidden_race.advance(self, runner, state)
        candidate = None
        if self.config.resolved_hidden_alpha() in hidden_race.RULES and "hidden_pinned" in metrics:
            candidate = "pinned" if metrics["hidden_pinned"] else "readout"  # whose metrics these are
        line = step_choice.report_line(metrics, new.iteration, candidate)  # after the probe's line, if any
        if line is not None:
            self.note = f"{self.note}\n{line}" if self.note else line
        return new, metrics

    def _advance(self, runner, state: LoopState) -> tuple[LoopState, dict]:
        """Evaluate the trial (pass A); accept it and take pass B, or reject it and damp more.

        With :attr:`defer_curvature` pass B is left to the next iteration (:meth:`prepare`), and an accepted
        step's scores come from a score pass over pass A's rows and the held-out rows (:meth:`_score_pass`).
        The two halves are :meth:`_evaluate` and :meth:`_finish` (``--hidden-alpha probe`` finishes the winner only).
        """
        return self._finish(runner, self._evaluate(runner, state))

    _advance.evaluate_then_finish = True  # hidden_race._probe may run the halves apart (a subclass's _advance: whole)

    def _evaluate(self, runner, state: LoopState, shared: tuple | None = None) -> dict:
        """Return :meth:`_advance`'s first half: pass A at the trial and the LM test (no pass B, no score pass, no
        next trial); ``accepted`` and ``held_loss`` (in ``carry``: the held-out loss) are final here.

        ``shared``: (training sums, held-out sums) of this trial's pass A, already summed in a pass shared with another
        trial (``--hidden-alpha probe``'s candidates: :func:`solvers.hidden_race.shared_pass`), bitwise its own pass's;
        given only for a state with nothing ``pending`` and no step choice."""
        opened = self._opens_moved(state.carry)  # before prepare drops "pending": the deferral rule reads it (_defers)
        state = self.prepare(runner, state)
        k, c = state.iteration + 1, dict(state.carry)
        n_chunks = len(getattr(runner, "bounds", ()))
        m = int(c.get("sample_chunks", n_chunks))  # runs stored before progressive sampling: every chunk
        window = int(c.get("sample_window", -1))  # runs stored before the rotate schedule: growing
        if "gram_sample" in c:  # the sample whose input Gram the trial evaluated now was made with (_with_trial)
            c["gram_sample"] = np.array([m, window], np.float64)
        trial = [c[f"T{l}"] for l in range(1, self.L)]
        sample, choice = self._sample(runner, m, window), None
        if self._chooses_step(runner, k):  # the trial at every step length in one read; the kept one's sums go on
            trial, sums, held, (W_out, error, alpha), choice = step_choice.evaluate(
                self, runner, state, trial, c, k, sample, pin_rows if self.pinned else None)
            for l, W in enumerate(trial, start=1):
                c[f"T{l}"] = W
            c["step_length"], c["step_held_losses"] = np.float64(choice[0]), np.asarray(choice[1], np.float64)
        else:
            sums, held = shared if shared is not None else run_pass_held_out(
                runner, self.forward_layout(False), "forward_chunk", self._forward_params(trial, False, c), k, **sample)
            W_out, error, alpha = self.output_layer(sums, held, c)
        objective = self.objective(error, [*trial, W_out], alpha)
        current = self._current_objective(state, c, alpha)
        accepted = objective <= current
        m_next, w_next = sampling.next_sample(m, window, n_chunks, accepted, last=k + 1 >= self.config.iterations)
        c["alpha"] = np.float64(alpha)
        if accepted:
            weights = [*trial, W_out]
            c.update(self._accepted_sums(sums, error))
            if held is not None:
                c["held_loss"] = np.float64(self.held_loss(held, W_out, alpha, c))
            c["error"] = np.float64(objective)
            c["damping"] = np.float64(max(float(c["damping"]) / DAMPING_SHRINK, DAMPING_FLOOR))
        else:
            weights = state.weights
            c["error"] = np.float64(current)
            c["damping"] = np.float64(float(c["damping"]) * DAMPING_GROWTH)
        return {"state": state, "k": k, "carry": c, "weights": weights, "accepted": accepted, "objective": objective,
                "error": error, "alpha": alpha, "n": float(sums["n"]), "sample": (m, window, m_next, w_next),
                "step_choice": choice, "opened_moved": opened}

    @staticmethod
    def _opens_moved(carry: dict) -> bool:
        """Return whether the iteration after ``carry`` opens with a deferred pass B on another sample than its
        predecessor's pass A read (``pending``: a grown sample, or a rotate schedule's next window)."""
        if not float(carry.get("pending", 0.0)):
            return False
        return ((int(carry["pending_chunks"]), int(carry["pending_window"]))
                != (int(carry["sample_chunks"]), int(carry["sample_window"])))

    def _chooses_step(self, runner, k: int) -> bool:
        """Return whether iteration ``k`` chooses its step length by the held-out loss (``step_choice``, :data:`STEP_LENGTHS`).

        ``step_choice`` ``held-out`` / ``held-out-1.5``, iterations 1..:data:`STEP_CHOICE_ITERATIONS`, held-out rows, the
        squared loss and this class's dense kernels (the config refuses the rest; a runner without held-out rows takes the stock step).
        """
        return (self.config.step_choice in STEP_LENGTHS and k <= STEP_CHOICE_ITERATIONS and self.L > 1
                and not self.cross_entropy and self._scores_held_out(runner)
                and self._dense_forward())

    def _finish(self, runner, step: dict) -> tuple[LoopState, dict]:
        """Return :meth:`_advance`'s result from :meth:`_evaluate`'s ``step``: pass B (or, deferred, the score pass)
        and the next trial, then the metrics."""
        k, c, weights, accepted = step["k"], step["carry"], step["weights"], step["accepted"]
        objective, error, alpha = step["objective"], step["error"], step["alpha"]
        m, window, m_next, w_next = step["sample"]
        moved = (m_next, w_next) != (m, window)
        pending = (accepted or moved) and self._defers(moved, c, bool(step.get("opened_moved", False)))
        if pending:  # pass B opens the next iteration (prepare); the weights' scores now, from pass A's forward pass
            if accepted:
                c.update(self._score_pass(runner, weights, k, self._sample(runner, m, window)))
                c["loss"] = np.float64(error)
            for name in [name for name in c if name[:1] == "T" and name[1:].isdigit() or name in ("T_out", "predicted")]:
                del c[name]  # the trial of these weights comes with pass B
            c.update({"pending": np.float64(1.0), "pending_chunks": np.float64(m), "pending_window": np.float64(window)})
        elif accepted or moved:  # pass B at the accepted weights, on the next iteration's sample
            c.update(self._curvature_pass(runner, weights, float(c["error"]), k, self._sample(runner, m_next, w_next),
                                          alpha, new_sample=moved, grown=(m, window, c.get("input_gram"))))
        c["sample_chunks"], c["sample_window"] = np.float64(m_next), np.float64(w_next)
        n = step["n"]
        score = f"train_{self.task.score_name}"
        metrics = {score: float(c[score]), "loss": float(c.get("loss", c["error"])) / n,
                   "objective": float(c["error"]) / n, "trial_loss": objective / n, "accepted": bool(accepted),
                   "damping": float(c["damping"]), "sample_rows": n, "alpha": float(c["alpha"])}
        if "held_loss" in c:
            metrics["validation_loss"] = float(c["held_loss"])
        if step.get("step_choice") is not None:  # step_choice: the step length kept and each one's held-out loss
            metrics.update(step_choice.metrics(step["step_choice"]))
        if "held_score" in c:  # pass B's score of these weights on the held-out rows (the driver need not score them)
            metrics[f"validation_{self.task.score_name}"] = float(c["held_score"])
        new = LoopState(k, list(weights), c)
        return (new if pending else self._with_trial(new)), metrics

    def _defers(self, moved: bool, carry: dict | None = None, opened: bool = False) -> bool:
        """Return whether this iteration's pass B is left to the next one (:meth:`prepare`): always with
        :attr:`defer_curvature`, when the next sample differs (``moved``: a growing sample) and :attr:`defer_growing`,
        and, in a run that stored ``defer_first_full``, when this iteration opened with a deferred pass B that moved
        the sample (``opened``, :meth:`_opens_moved`: the first iteration on every chunk).

        A growing sample's pass B reads the next, larger sample (twice pass A's rows) only to prepare the next step,
        so the accepted weights are reported and committed after pass A and a score pass over the rows pass A kept
        (one output product a row); the steps are bitwise the same. A run whose first sample was not every chunk
        (progressive sampling on data of several samples' size) stores ``defer_first_full`` (:meth:`_initialize`,
        session 15): its first iteration on every chunk, whose opening pass B grew the sample, defers pass B too, so
        it reports its weights a pass B and the next trial's solves earlier (MNIST 10-class 60k: its 0.96 at iteration
        3 ~0.4 s sooner, ``t10prof_s15.md``), for one score pass in the whole run; the next iteration opens with that
        pass B and, like every later one, takes its own pass B at its end (no score pass each). Small data whose first sample is
        every chunk, the ``full`` schedule, the hand-over's Gauss-Newton phase and stores of older code (no key) keep
        pass B at the end of every full-sample iteration; stores of session 15's integrate branch (``defer_all``)
        keep deferring at every accepted iteration. The rule reads only the stored carry (``sample_chunks``,
        ``sample_window``, ``pending*``, the rule's key), so a resume takes it alike.
        """
        carry = carry or {}
        stored_all = bool(float(carry.get("defer_all", 0.0)))
        first_full = opened and bool(float(carry.get("defer_first_full", 0.0)))
        return self.defer_curvature or stored_all or first_full or (self.defer_growing and moved)

    def held_loss(self, held: dict, W_out, alpha: float, carry: dict) -> float:
        """Return the mean loss on the held-out rows of the trial with output layer ``W_out`` (from pass A's sums).

        Squared: ``Σ‖T − W_L ã‖² / n`` from the held-out Grams; cross-entropy: Σℓ / n of the chosen trial.
        """
        if self.cross_entropy:
            j = int(np.flatnonzero(np.asarray(carry["out_alphas"]) == alpha)[0])
            return float(held["ce"][j]) / float(held["n"])
        L = self.L
        return quadratic_error(W_out, held[f"cross{L}"], held[f"gram{L}"], float(held["tt"])) / float(held["n"])

    def resume(self, runner, state: LoopState, changed: set, history=()) -> LoopState:
        """Return the state to continue from: a new ridge, alpha, step size or damping gives a new trial (no pass).

        ``--hidden-alpha race`` or ``probe``: the stored choice says how the trial is made (:func:`solvers.hidden_race.resume`).
        """
        if self.config.resolved_hidden_alpha() in hidden_race.RULES:
            hidden_race.resume(self, state, changed)
        return self._resume_one(state, changed)

    def _resume_one(self, state: LoopState, changed: set) -> LoopState:
        if "damping" in changed:
            state.carry["damping"] = np.float64(self.config.damping)
        if "alpha" in changed and self.config.alpha != "auto":
            state.carry["alpha"] = np.float64(self.config.alpha)
        if changed & {"ridge", "step_size", "damping", "alpha"} and not float(state.carry.get("pending", 0.0)):
            return self._with_trial(state)  # a pending pass B sets the trial anyway (prepare)
        return state

    def objective(self, error: float, weights, alpha: float) -> float:
        """Return ``E = error + α Σ_l ‖W̃_l‖²`` (the objective the LM test compares); ``--hidden-alpha pinned``:
        ``error + α ‖W̃_L‖²`` (the hidden layers' norms are fixed, not penalised)."""
        if self.pinned:
            return float(error) + float(alpha) * penalty(weights[-1])
        return float(error) + float(alpha) * sum(penalty(W) for W in weights)

    def _accepted_sums(self, sums: dict, error: float) -> dict:
        """Return the carry entries keeping the accepted weights' pass-A sums (their E at any α) on this sample.

        Cross-entropy: their training loss ``error`` (it does not depend on α).
        """
        L = self.L
        if self.cross_entropy:
            return {"acc_loss": np.float64(error), "acc_valid": np.float64(1.0)}
        return {"acc_gram": np.asarray(sums[f"gram{L}"]), "acc_cross": np.asarray(sums[f"cross{L}"]),
                "acc_tt": np.float64(sums["tt"]), "acc_valid": np.float64(1.0)}

    @single_threaded
    def _current_objective(self, state: LoopState, c: dict, alpha: float) -> float:
        """Return the accepted weights' objective at ``alpha`` on the current sample.

        Their W_L is refitted at α from their kept pass-A sums, as the trial's is;
        after the sample grew those sums are of the old sample, and the
        objective is pass B's error on the new one with W_L as it is.
        """
        if float(c["alpha"]) == float(alpha):
            return float(c["error"])
        if self.cross_entropy:
            loss = c["acc_loss"] if float(c.get("acc_valid", 0.0)) else c.get("loss", c["error"])
            return self.objective(float(loss), state.weights, alpha)
        if float(c.get("acc_valid", 0.0)):
            W = self._ridge_path(c["acc_cross"], c["acc_gram"]).weights(alpha)
            return self.objective(quadratic_error(W, c["acc_cross"], c["acc_gram"], float(c["acc_tt"])),
                                  [*state.weights[:-1], W], alpha)
        return self.objective(float(c.get("loss", c["error"])), state.weights, alpha)

    def _curvature_pass(self, runner, weights, objective: float, k: int, sample: dict, alpha: float,
                        new_sample: bool = False, grown: tuple | None = None, score_held: bool = True) -> dict:
        """Run pass B at accepted weights on ``sample``; return the carry entries it sets.

        ``score_held``: the same tasks also score the weights on the held-out rows (False: a score pass did).

        On a ``new_sample`` the pass also sums the sample's input Gram, and the
        objective the next trial must beat is the accepted weights' on the new sample.
        ``grown`` = (m, window of the previous sample, its input Gram): when the new sample contains
        the previous one (grow's nested prefixes, :mod:`solvers.sampling`), only the added chunks sum their Gram.
        """
        added = self._added_chunks(runner, grown, sample) if new_sample else None
        layout = self.curvature_layout(input_gram=new_sample)
        cast = self.cast(weights)
        params = CurvatureParams(cast, new_sample, added, weights_key(self.run_token, cast[:-1]))
        out = {}
        if score_held and self._scores_held_out(runner):  # the held-out rows' score of these weights, from the same tasks
            curv, held = run_pass_held_out(runner, layout, "curvature_chunk", params, k, **sample)
            if held is not None and float(held["n"]) > 0:
                out["held_score"] = np.float64(self.task.score(held))
        else:
            curv = run_pass(runner, layout, "curvature_chunk", params, k, **sample)
        if new_sample:
            out["input_gram"] = np.asarray(curv.pop("gram1") if self.L > 1 else curv["gram1"])
            if added is not None:
                out["input_gram"] = out["input_gram"] + np.asarray(grown[2], np.float64)
            objective = self.objective(float(curv["loss"]), weights, alpha)
            out["acc_valid"] = np.float64(0.0)
        return {**out, "curvature": self.curvature_layout().pack(curv), "error": np.float64(objective),
                "loss": np.float64(curv["loss"]), f"train_{self.task.score_name}": np.float64(self.task.score(curv))}

    def _score_pass(self, runner, weights, k: int, sample: dict) -> dict:
        """Return the carry entries of the weights' scores: on the training rows of ``sample`` and on the held-out rows.

        The kernels (``score_chunk``, a subclass's: :attr:`defer_curvature`) take the last hidden layer's activations
        that pass A kept at these hidden weights, so the pass costs one output product a row.
        """
        cast = self.cast(weights)
        params = CurvatureParams(cast, key=weights_key(self.run_token, cast[:-1]))
        layout = StatsLayout({"n": (), **self.task.score_shapes})
        out = {}
        if self._scores_held_out(runner):
            train, held = run_pass_held_out(runner, layout, "score_chunk", params, k, **sample)
            if held is not None and float(held["n"]) > 0:
                out["held_score"] = np.float64(self.task.score(held))
        else:
            train = run_pass(runner, layout, "score_chunk", params, k, **sample)
        return {**out, f"train_{self.task.score_name}": np.float64(self.task.score(train))}

    def _dense_forward(self) -> bool:
        """Return whether pass A runs this class's dense ``forward_chunk`` (its ``others``: step choice, the probe's
        shared pass)."""
        return type(self).forward_chunk is GaussNewtonSolver.forward_chunk

    def _dense_kernels(self) -> bool:
        """Return whether this solver runs this class's dense kernels (not a subclass's own, e.g. convolutions)."""
        return type(self).curvature_chunk is GaussNewtonSolver.curvature_chunk

    def _scores_held_out(self, runner) -> bool:
        """Return whether pass B also scores the held-out rows: a runner holding rows out, the dense kernels."""
        return getattr(runner, "split", None) is not None and self._dense_kernels()

    def _added_chunks(self, runner, grown: tuple | None, sample: dict) -> tuple | None:
        """Return the first rows of the chunks ``sample`` adds to the previous sample of ``grown`` (None: sum every chunk).

        Only when the new sample contains the previous one (a rotate window that moves does not), only
        for the dense kernel (:meth:`curvature_chunk` sums the input Gram chunk by chunk), and only when
        the input Gram is not also the output layer's (L > 1).
        """
        if grown is None or grown[2] is None or self.L < 2 or not hasattr(runner, "bounds") or not self._dense_kernels():
            return None
        n_chunks = len(runner.bounds)
        before = sampling.sample(n_chunks, int(grown[0]), self.config.seed, int(grown[1]))
        before = set(range(n_chunks)) if before is None else set(before)
        now = set(range(n_chunks)) if "chunks" not in sample else set(sample["chunks"])
        if not before <= now:
            return None
        return tuple(sorted(runner.bounds[i][0] for i in now - before))

    @single_threaded
    def output_layer(self, sums: dict, held: dict | None = None, carry: dict | None = None
                     ) -> tuple[np.ndarray, float, float]:
        """Return ``W_L(α) = C_L (G + α Ĩ)⁻¹``, its training error ``Σ‖T − W_L ã‖²`` and α, from pass A's sums.

        ``alpha="auto"``: α minimises the held-out error computed from ``held``
        (pass A's sums over the held-out rows), or GCV when ``held`` is None.
        Cross-entropy: of the trials ``W_L(α_j)`` in ``carry`` (:meth:`output_alphas`),
        the one of least held-out loss Σℓ (ties: the larger α; nothing held
        out: α = :data:`CE_ALPHA_UNHELD` · s̄ ḡ), with its training loss.
        """
        if self.cross_entropy:
            alphas, trials = np.asarray(carry["out_alphas"]), np.asarray(carry["T_out"])
            if len(alphas) == 1:
                j = 0
            elif held is None:
                j = int(np.argmin(np.abs(ALPHA_GRID - CE_ALPHA_UNHELD)))
            else:
                crit = np.asarray(held["ce"])
                j = len(alphas) - 1 - int(np.argmin(crit[::-1]))  # the first minimum from the large-α end
            return trials[j], float(sums["ce"][j]), float(alphas[j])
        L = self.L
        cross, gram = sums[f"cross{L}"], sums[f"gram{L}"]
        path = self._ridge_path(cross, gram)
        if self.config.alpha == "auto":
            held_sums = None if held is None else (held[f"cross{L}"], held[f"gram{L}"], float(held["tt"]))
            tolerance = 0.0 if held is None else self.alpha_tolerance / np.sqrt(max(float(held["n"]), 1.0))
            alpha, W, _ = path.choose(float(sums["tt"]), held_sums, tolerance)
        else:
            alpha = float(self.config.alpha)
            W = path.weights(alpha)
        return W, quadratic_error(W, cross, gram, float(sums["tt"])), alpha

    def _ridge_path(self, cross, gram) -> RidgePath:
        """Return the :class:`RidgePath` of the output layer's sums, reusing one of the last three used (:data:`_PATHS`).

        An accepted trial's sums come back in the next iteration: the accepted weights'
        objective at a new α refits their W_L from the same sums (one eigendecomposition saved).
        """
        key = (float(self.config.ridge), hashlib.sha1(np.ascontiguousarray(cross, np.float64).tobytes()
                                                      + np.ascontiguousarray(gram, np.float64).tobytes()).hexdigest())
        path = _PATHS.pop(key, None) or RidgePath(cross, gram, self.config.ridge, what=f"W_{self.L}")
        _PATHS[key] = path
        while len(_PATHS) > 3:
            _PATHS.popitem(last=False)
        return path

    def curvatures(self, weights, curv: dict) -> list:
        """Return S_1..S_{L−1} from pass B's sums (squared loss: the last one as (W̃_Lᵀ W̃_L) ⊙ Σ MᵀM)."""
        out = [curv[f"curv{l}"] for l in range(1, self.L)]
        if self.L > 1 and not self.cross_entropy:
            Wt = np.asarray(weights[-1], np.float64)[:, :-1]
            out[-1] = out[-1] * (Wt.T @ Wt)
        return out

    def trial_weights(self, weights, curv: dict, input_gram, damping: float, alpha: float = 0.0) -> list:
        """Return ``W_l + η n (S_l + (λ s̄ + π√(αn)) I)⁻¹ (D_l − α W̃_l) (G_{l−1} + (ε' ḡ + √(αn)/π) I)⁻¹``, l < L.

        ``--hidden-alpha pinned``: the step at α = 0, each row (a unit's weights and bias) then rescaled to its
        norm in ``weights`` (:func:`pin_rows`).
        """
        n = float(curv["n"])
        pinned = self.pinned
        trial = [self.layer_step(l, weights[l - 1], curv[f"grad{l}"], S, input_gram if l == 1 else curv[f"gram{l}"],
                                 damping, 0.0 if pinned else alpha, n)
                 for l, S in enumerate(self.curvatures(weights, curv), start=1)]
        return [pin_rows(W, weights[l]) for l, W in enumerate(trial)] if pinned else trial

    def layer_step(self, l: int, W, D, S, G, damping: float, alpha: float, n: float) -> np.ndarray:
        """Return layer l's damped Gauss-Newton trial ``W + η n (S + …)⁻¹ (D − α W̃) (G + …)⁻¹`` (:meth:`trial_weights`).

        A layer of zero curvature (the loss does not see it yet: the cross-entropy start's zero W_L) stays as it is.
        """
        c = self.config
        if not np.any(S):
            return np.array(W, np.float64)
        if self._objective_damped and alpha > 0:
            return self.objective_damped_step(W, D, S, G, damping, alpha, n)
        kept = l == 1 and self._input_gram_reused and len(G) <= ShiftedGram.MAX_WIDTH  # step through G_0's decomposition
        G = np.asarray(G, np.float64) if kept else np.array(G, np.float64)
        W = np.asarray(W, np.float64)
        D = np.array(D, np.float64)
        S = np.array(S, np.float64)
        extra = 0.0  # K-FAC's shift of G, √(αn)/π
        if alpha > 0:
            D[:, :-1] -= alpha * W[:, :-1]
            s_mean = max(float(np.mean(np.diag(S))), 1e-300)
            g_mean = max(float(np.mean(np.diag(G)[:-1])), 1e-300) if G.shape[0] > 1 else 1.0
            pi = np.sqrt(s_mean / g_mean)
            S[np.diag_indices_from(S)] += pi * np.sqrt(alpha * n)
            extra = np.sqrt(alpha * n) / pi
            if not kept:
                G[np.diag_indices_from(G)] += extra
        what_S, what_G = f"S_{l} (layer {l} curvature)", f"G_{l - 1} (layer {l} input Gram)"
        if kept:  # every shift is a multiple of I: (G + cI)⁻¹ = V (E + c)⁻¹ Vᵀ from one decomposition (linalg.ShiftedGram)
            left = spd_solve(S, D, damping, what=what_S)
            step = ShiftedGram.of(G, what=what_G).solve(left, extra, max(c.ridge, STEP_RIDGE), what=what_G)
            return W + c.step_size * n * step
        left = solve_weights(D.T, S, damping, what=what_S, setting="--damping").T
        step = solve_weights(left, G, max(c.ridge, STEP_RIDGE), what=what_G,
                             check=False)  # a Gram plus at least 1 % of its mean diagonal: positive definite
        return W + c.step_size * n * step

    @single_threaded
    def objective_damped_step(self, W, D, S, G, damping: float, alpha: float, n: float) -> np.ndarray:
        """Return ``W + η [(S + λ s̄ I) ⊗ (G + ε' ḡ I) / n + α I]⁻¹ (D − α W̃)``: the step with the objective's damping
        (``first_damping="objective"``; k10_s14.md's ``kfac-obj``), solved in the eigenbases of S and G.

        K-FAC's factored damping (:meth:`layer_step`) approximates the weight decay's ``α I`` by ``π√(αn)`` on S and
        ``√(αn)/π`` on G, whose cross terms weigh far more than α where α is large (the readout's α at iteration 0:
        the first step then mostly shrinks W̃). Here α is added exactly (to the bias column too, a small extra damping),
        with the λ and ε' parts around the factors as K-FAC's (s̄, ḡ the mean diagonals).
        """
        W = np.asarray(W, np.float64)
        g = np.array(D, np.float64)
        g[:, :-1] -= alpha * W[:, :-1]
        S, G = np.asarray(S, np.float64), np.asarray(G, np.float64)
        for M, what in ((S, "S (hidden layer curvature)"), (G, "G (hidden layer input Gram)")):
            if not np.all(np.isfinite(M)):
                raise NumericalError(f"{what}: the sums contain NaN or inf; the state diverged (try a larger --damping)")
        a0 = damping * float(np.mean(np.diag(S)))
        b0 = max(self.config.ridge, STEP_RIDGE) * float(np.mean(np.diag(G)))
        (eS, VS), (eG, VG) = np.linalg.eigh(S), np.linalg.eigh(G)
        scale = np.outer(eS + a0, eG + b0) / n + alpha  # the damped curvature in the eigenbases: positive (eS, eG ≥ 0)
        if not np.all(scale > 0):
            raise NumericalError("the damped curvature is not positive definite; use a larger --damping")
        return W + self.config.step_size * (VS @ ((VS.T @ g @ VG) / scale) @ VG.T)

    def output_alphas(self, scale: float) -> np.ndarray:
        """Return the α of the cross-entropy output trials: the given α, or for auto ``ALPHA_GRID · scale``.

        ``scale = s̄ ḡ``, the mean diagonal of the output layer's curvature ``(Σ H / n) ⊗ G_{L−1}``.
        """
        if self.config.alpha != "auto":
            return np.array([float(self.config.alpha)])
        return ALPHA_GRID * scale

    def output_trials(self, weights, curv: dict, input_gram, damping: float) -> tuple[np.ndarray, np.ndarray]:
        """Return (α_j, the cross-entropy output trials W_L(α_j) stacked J × K × (n_{L−1}+1)): the damped step of W_L."""
        L, n = self.L, float(curv["n"])
        S, G = curv[f"curv{L}"], input_gram if L == 1 else curv[f"gram{L}"]
        scale = float(np.mean(np.diag(S))) / max(n, 1.0) * float(np.mean(np.diag(G)[:-1]) if len(G) > 1 else 1.0)
        alphas = self.output_alphas(scale if scale > 0 else 1.0)
        if len(alphas) == 1 or not np.any(S):
            return alphas, np.stack([self.layer_step(L, weights[-1], curv[f"grad{L}"], S, G, damping, a, n)
                                     for a in alphas])
        return alphas, self.step_path(L, weights[-1], curv[f"grad{L}"], S, G, damping, alphas, n)

    @single_threaded
    def step_path(self, l: int, W, D, S, G, damping: float, alphas, n: float) -> np.ndarray:
        """Return :meth:`layer_step` for every α of ``alphas`` (stacked) from one eigendecomposition of S and of G.

        Every α shifts both factors by a multiple of I (damping, ε', K-FAC's √(αn)
        terms), so ``(M + cI)⁻¹ = V (e + c)⁻¹ Vᵀ`` serves the whole grid.
        """
        c = self.config
        W, D = np.asarray(W, np.float64), np.asarray(D, np.float64)
        S, G = np.asarray(S, np.float64), np.asarray(G, np.float64)
        for M, what in ((S, f"S_{l} (layer {l} curvature)"), (G, f"G_{l - 1} (layer {l} input Gram)")):
            if not np.all(np.isfinite(M)):
                raise NumericalError(f"{what}: the sums contain NaN or inf; the state diverged (try a larger --damping)")
        s_bar, g_bar = float(np.mean(np.diag(S))), float(np.mean(np.diag(G)))
        g_inner = max(float(np.mean(np.diag(G)[:-1])), 1e-300) if G.shape[0] > 1 else 1.0
        pi = np.sqrt(max(s_bar, 1e-300) / g_inner)
        (eS, VS), (eG, VG) = np.linalg.eigh(S), np.linalg.eigh(G)
        ridge = max(c.ridge, STEP_RIDGE)
        out = []
        for alpha in np.asarray(alphas, np.float64):
            root = np.sqrt(alpha * n) if alpha > 0 else 0.0
            shift_S = pi * root + damping * ((s_bar + pi * root) or 1.0)  # as solve_weights adds ε·mean(diag)
            shift_G = root / pi + ridge * ((g_bar + root / pi) or 1.0)
            dS, dG = eS + shift_S, eG + shift_G
            if np.any(dS <= 0) or np.any(dG <= 0):
                raise NumericalError(f"layer {l}: the damped curvature is not positive definite; use a larger --damping")
            Da = D.copy()
            if alpha > 0:
                Da[:, :-1] -= alpha * W[:, :-1]
            left = VS @ ((VS.T @ Da) / dS[:, None])
            out.append(W + c.step_size * n * (((left @ VG) / dG) @ VG.T))
        return np.stack(out)

    @single_threaded
    def _with_trial(self, state: LoopState) -> LoopState:
        c = state.carry
        curv = self.curvature_layout().unpack(c["curvature"])
        # the input Gram is its sample's: the Gram of the last trial's sample (gram_sample, set by _advance) steps through
        # its kept decomposition; a sample's first trial solves by LU. Stores from before this rule have no gram_sample
        # and solve by LU throughout, as they did.
        sample = np.array([c.get("sample_chunks", -1.0), c.get("sample_window", -1.0)], np.float64)
        self._input_gram_reused = "gram_sample" in c and np.array_equal(c["gram_sample"], sample)
        self._objective_damped = state.iteration == 0 and self._first_objective_damped()
        try:
            trial = self.trial_weights(state.weights, curv, c["input_gram"], float(c["damping"]),
                                       float(c.get("alpha", 0.0)))
        finally:
            self._input_gram_reused = self._objective_damped = False
        for l, W in enumerate(trial, start=1):
            c[f"T{l}"] = W
        if self.cross_entropy:
            c["out_alphas"], c["T_out"] = self.output_trials(state.weights, curv, c["input_gram"], float(c["damping"]))
        return state

    def _first_objective_damped(self) -> bool:
        """Return whether the run's first hidden trial (made at iteration 0) steps with the objective's damping
        (``first_damping="objective"``): Gauss-Newton alone (not the hand-over's phase), the squared loss, this class's
        dense kernels. The rule reads the stored config and the iteration only, so a resume remakes the same trial."""
        return (self.config.first_damping == "objective" and self.config.solver == "gauss-newton"
                and not self.cross_entropy and self._dense_kernels())

    def _forward_params(self, hidden, input_gram: bool, carry: dict | None = None) -> ForwardParams:
        outputs = None
        if self.cross_entropy and carry is not None:
            trials = np.asarray(carry["T_out"])
            outputs = np.asarray(trials.reshape(-1, trials.shape[-1]), self.dtype)
        cast = self.cast(hidden)
        return ForwardParams(cast, input_gram, outputs, weights_key(self.run_token, cast))

    # -- chunk side (pure NumPy: one chunk in, sums out) --------------------------------
    def _kept_inputs(self, x_raw, rows, sl):
        """Return :meth:`_inputs_with_ones` of the tile ``sl`` of the rows named ``rows`` (:func:`_rows_key`), kept in
        :data:`~solvers.activation_cache.INPUTS` for the run's next passes (the same numbers: the same arithmetic)."""
        key = (rows, sl.start, sl.stop)
        kept = INPUTS.get(key, owner=self.run_token)
        if kept is not None:
            return kept[0]
        x1 = self._inputs_with_ones(x_raw[sl])
        INPUTS.put(key, (x1,), owner=self.run_token)
        return x1

    def _inputs_with_ones(self, x_raw):
        """Return ``ã_0 = [(x − x̄)/s, 1]`` (rows × d+1) in the solver's dtype, as :meth:`inputs` then a ones column."""
        d = x_raw.shape[1]
        x1 = np.empty((x_raw.shape[0], d + 1), self.dtype)
        x1[:, :d] = x_raw
        x1[:, :d] -= self.x_mean.astype(self.dtype)
        x1[:, :d] /= self.x_scale.astype(self.dtype)
        x1[:, d] = 1
        return x1

    def _augmented(self, hidden) -> list:
        """Return the hidden weights with a row ``[0, …, 0, 1]`` appended: ``ã W̃ᵀ`` then ends in the ones column."""
        out = []
        for W in hidden:
            Wa = np.zeros((W.shape[0] + 1, W.shape[1]), W.dtype)
            Wa[:-1] = W
            Wa[-1, -1] = 1
            out.append(Wa)
        return out

    def _stacks_targets(self) -> bool:
        """Return whether ã_{L−1} lives in a buffer ``[ã_{L−1}, T]`` (pass A's Gram and cross product in one SYRK,
        :func:`solvers.linalg.gram_and_cross`): ReLU hidden layers, the squared loss, several outputs.

        One output keeps ã_{L−1} in its own array: its ``Tᵀã`` is a GEMV whose bits the SYRK's do not repeat, and
        the fold gained ~1 % there (784-300-10's thin ``Tᵀã`` GEMM: pass A −2.7 %, the same bits;
        ``benchmarks/results/kern17_s17.md``).
        """
        return self.L > 1 and not self.cross_entropy and self.act.name == "relu" and self.widths[-1] > 1

    def _hidden_forward(self, x1, hidden_aug, targets=None):
        """Return (ã_0..ã_{L−1}, z_1..z_{L−1}): activations with their ones column, ``z_l = ã_{l−1} W_lᵀ``.

        ``hidden_aug`` are :meth:`_augmented` weights: one product gives z_l with
        the bias inside and the next ones column (exact: 0·a + 1·1); ReLU then
        runs in place and its z is not kept (h'(z) = 1[a > 0], :meth:`_derivative`).
        With :meth:`_stacks_targets`, ã_{L−1} is the leading columns of a buffer ``[ã_{L−1}, T]`` (T: ``targets``,
        zeros without them) whatever the caller: every product of ã_{L−1} (pass A's, pass B's from the activation
        cache or recomputed, the score passes') then reads the same layout, and OpenBLAS's GEMV gives the same bits
        only for the same row stride (``tests/test_gauss_newton.py``).
        """
        a, z = [x1], [None]
        relu = self.act.name == "relu"
        stack = self._stacks_targets()
        for i, W in enumerate(hidden_aug):
            if stack and i == len(hidden_aug) - 1:
                w, K = W.shape[0], self.widths[-1]
                buf = np.empty((x1.shape[0], w + K), W.dtype)
                np.matmul(a[-1], W.T, out=buf[:, :w])  # the same bits as into a fresh array
                buf[:, w:] = 0  # not np.empty's garbage (a signalling NaN's bits) into the maximum (review17 L3)
                np.maximum(buf, 0, out=buf)  # the whole buffer (one contiguous loop): its T columns are written next
                if targets is not None:  # after the maximum: regression targets may be negative
                    buf[:, w:] = targets
                a.append(buf[:, :w])
                z.append(None)
                continue
            zl = a[-1] @ W.T
            if relu:
                np.maximum(zl, 0, out=zl)
                a.append(zl)
                z.append(None)
            else:
                nxt = self.act.h(zl)
                nxt[:, -1] = 1
                a.append(nxt)
                z.append(zl[:, :-1])
        return a, z

    def _derivative(self, a, z):
        """Return ``M = h'(z)`` of a hidden layer from its ``ã`` (ReLU: 1[a > 0]) or its z."""
        if z is None:
            return (a[:, :-1] > 0).astype(a.dtype)
        return self.act.dh(z)

    @staticmethod
    def _gram(a):
        """Return ``ãᵀã`` in float64 (one SYRK in the chunk's dtype; the ones column gives Σa and n)."""
        return (a.T @ a).astype(np.float64)

    @staticmethod
    def _cross(z, a):
        """Return ``zᵀã`` in float64 (the ones column gives Σz), as ``(ãᵀz)ᵀ``: BLAS runs that shape faster."""
        return (a.T @ z).T.astype(np.float64)

    def forward_chunk(self, x_raw, y, state, start_row: int, p: ForwardParams, held: bool = False):
        """Return (None, pass A sums): Σ ã_{L−1}ã_{L−1}ᵀ, Σ T ã_{L−1}ᵀ, Σ‖T‖² (and Σ ã_0 ã_0ᵀ if asked).

        Cross-entropy: the training loss Σℓ of each output trial in ``p.outputs`` instead of the Grams.
        ``p.others`` (step_choice): the output layer's Grams of each further hidden trial, from the same input tile
        (:func:`solvers.step_choice.layout`), their activations kept under ``p.other_keys``.
        """
        L = self.L
        trials = [(self._augmented(p.hidden), p.key)]  # the stock trial first: its sums are its own pass A's, bitwise
        trials += [(self._augmented(h), key) for h, key in zip(p.others, p.other_keys or (None,) * len(p.others))]
        rows = _rows_key(x_raw, start_row, held) if p.key else None
        named = None if held else rows or _rows_key(x_raw, start_row, False)  # the training rows' kept inputs

        stacked = self._stacks_targets()  # Gram and cross in one SYRK

        def tile(sl, _):
            x1 = self._inputs_with_ones(x_raw[sl]) if held else self._kept_inputs(x_raw, named, sl)
            t = self.task.targets(y[sl], self.dtype)
            parts = {}
            for j, (hidden, key) in enumerate(trials):
                a, z = self._hidden_forward(x1, hidden, t if stacked else None)
                if key is not None and rows is not None and L > 1:  # kept for pass B at these hidden weights
                    CACHE.put((key, rows, sl.start, sl.stop), (a[L - 1],) if held else (*a[1:], *z[1:]))  # held: a_{L−1}
                whole = leading_block(a[L - 1]) if stacked else None
                if whole is not None and whole.shape[1] == a[L - 1].shape[1] + t.shape[1]:
                    gram, cross = gram_and_cross(whole, a[L - 1].shape[1])
                elif not self.cross_entropy:
                    gram, cross = self._gram(a[L - 1]), self._cross(t, a[L - 1])
                if j:  # step_choice's further trial j: its output layer's sums
                    parts[f"step{j}_gram{L}"], parts[f"step{j}_cross{L}"] = gram, cross
                    continue
                n = a[0].shape[0]
                if self.cross_entropy:
                    parts.update({"n": n, "ce": ce.block_losses(a[L - 1] @ p.outputs.T, t)})
                else:
                    parts.update({"n": n, "tt": float(np.sum(t * t, dtype=np.float64)),
                                  f"gram{L}": gram, f"cross{L}": cross})
                if p.input_gram and L > 1:
                    parts["gram1"] = self._gram(a[0])
            return None, parts
        others = len(trials) - 1
        layout = step_choice.layout(self, p.input_gram, others) if others else self.forward_layout(p.input_gram)
        return None, self.tiled(layout, x_raw.shape[0], tile)[1]

    def forward_chunk_held(self, x_raw, y, state, start_row: int, p: ForwardParams):
        """Return :meth:`forward_chunk` of held-out rows; their activations are kept too, for pass B's held-out score.

        They are named as held-out rows (:func:`_rows_key`).
        """
        return self.forward_chunk(x_raw, y, state, start_row, p, held=True)

    def curvature_chunk(self, x_raw, y, state, start_row: int, p: CurvatureParams):
        """Return (None, pass B sums): S_l (Σ MᵀM for the last hidden layer), D_l, G_{l−1}, score, error.

        The hidden activations come from the cache when pass A kept them at these weights (``p.key``).
        """
        if not isinstance(p, CurvatureParams):  # the weights alone: no input Gram
            p = CurvatureParams(tuple(p))
        L, weights = self.L, p.weights
        Wt = [None] + [W[:, :-1] for W in weights]  # W̃_1..W̃_L
        hidden = self._augmented(weights[:-1])
        gram_here = p.sums_input_gram(start_row)
        named = _rows_key(x_raw, start_row, False)
        rows = named if p.key and L > 1 else None

        def tile(sl, _):
            x1 = self._kept_inputs(x_raw, named, sl)
            kept = None if rows is None else CACHE.get((p.key, rows, sl.start, sl.stop))
            if kept is not None:
                a, z = [x1, *kept[:L - 1]], [None, *kept[L - 1:]]
            else:
                a, z = self._hidden_forward(x1, hidden)
            out = a[L - 1] @ weights[-1].T
            t = self.task.targets(y[sl], self.dtype)
            if self.cross_entropy:  # δ_L = t − p = −∂ℓ/∂z_L
                prob = ce.probabilities(out)
                r = t - prob
                loss = ce.loss_sum(out, t)
            else:
                r = t - out
                loss = float(np.sum(r * r, dtype=np.float64))
            parts = {"n": a[0].shape[0], "loss": loss, **self.task.score_parts(out, y[sl])}
            if L == 2 and z[1] is None and r.shape[1] == 1 and not self.cross_entropy:  # ReLU, one output
                parts["curv1"], D = relu_curvature_sums(a[1], a[0], r)  # S_1 and D_1 in one SYRK
                parts["grad1"] = D * Wt[2][0].astype(np.float64)[:, None]
                if gram_here:
                    parts["gram1"] = self._gram(a[0])
                return None, parts
            M = [None] + [self._derivative(a[l], z[l]) for l in range(1, L)]
            delta = r
            for l in range(L - 1, 0, -1):
                if l == 1 and delta.shape[1] == 1:  # one output: D_1 = w̃ ⊙ M_1ᵀ(r ã_0), δ_1 = r w̃ ⊙ M_1 not formed
                    parts["grad1"] = self._cross(M[1], a[0] * delta) * Wt[2][0].astype(np.float64)[:, None]
                else:
                    delta = times(delta, Wt[l + 1])
                    delta *= M[l]
                    parts[f"grad{l}"] = self._cross(delta, a[l - 1])
                if l > 1 or gram_here:
                    parts[f"gram{l}"] = self._gram(a[l - 1])
            if self.cross_entropy:
                parts.update({f"curv{L}": ce.output_curvature(prob), f"grad{L}": self._cross(r, a[L - 1]),
                              f"gram{L}": self._gram(a[L - 1])})
                if L > 1:
                    self._deep_curvatures(M, Wt, parts, [M[L - 1] * F for F in ce.jacobian_factors(prob, Wt[L])])
            elif L > 1:
                parts[f"curv{L - 1}"] = (M[L - 1].T @ M[L - 1]).astype(np.float64)
                self._deep_curvatures(M, Wt, parts)
            return None, parts
        return None, self.tiled(self.curvature_layout(p.input_gram), x_raw.shape[0], tile)[1]

    def curvature_chunk_held(self, x_raw, y, state, start_row: int, p: CurvatureParams):
        """Return (None, the held-out rows' part of pass B): ``n`` and the score of the weights alone (no curvature).

        :func:`solvers.loop.chunk_kernel` runs it on the held-out rows of a pass-B task in place of
        :meth:`curvature_chunk`: the model's validation score comes from the pass that reads the chunk anyway.
        """
        if not isinstance(p, CurvatureParams):
            p = CurvatureParams(tuple(p))
        L, hidden = self.L, self._augmented(p.weights[:-1])
        rows = _rows_key(x_raw, start_row, True) if p.key and L > 1 else None

        def tile(sl, _):
            kept = None if rows is None else CACHE.get((p.key, rows, sl.start, sl.stop))
            last = kept[0] if kept is not None else self._hidden_forward(self._inputs_with_ones(x_raw[sl]), hidden)[0][-1]
            return None, {"n": last.shape[0], **self.task.score_parts(last @ p.weights[-1].T, y[sl])}
        return None, self.tiled(self.curvature_layout(p.input_gram), x_raw.shape[0], tile)[1]

    def score_chunk(self, x_raw, y, state, start_row: int, p: CurvatureParams, held: bool = False):
        """Return (None, ``n`` and the score sums of the weights ``p.weights``) over the rows: the score pass.

        ``a_{L−1}`` comes from the activation cache when pass A ran these rows at these hidden weights (an accepted
        trial; :meth:`forward_chunk` keeps the training rows' forward pass and the held-out rows' ``a_{L−1}``), in the
        same tiles: the same numbers as recomputing them (which a miss does), so the scores are those pass B gives.
        """
        if not isinstance(p, CurvatureParams):
            p = CurvatureParams(tuple(p))
        L, hidden = self.L, self._augmented(p.weights[:-1])
        rows = _rows_key(x_raw, start_row, held) if p.key and L > 1 else None
        named = None if held else _rows_key(x_raw, start_row, False)  # the training rows' kept inputs

        def tile(sl, _):
            kept = None if rows is None else CACHE.get((p.key, rows, sl.start, sl.stop))
            if kept is not None:  # held-out rows keep a_{L−1}; training rows a_1..a_{L−1}, z_1..z_{L−1}
                last = kept[0] if held else kept[L - 2]
            else:
                x1 = self._inputs_with_ones(x_raw[sl]) if held else self._kept_inputs(x_raw, named, sl)
                last = self._hidden_forward(x1, hidden)[0][-1]
            return None, {"n": last.shape[0], **self.task.score_parts(last @ p.weights[-1].T, y[sl])}
        return None, self.tiled(StatsLayout({"n": (), **self.task.score_shapes}), x_raw.shape[0], tile)[1]

    def score_chunk_held(self, x_raw, y, state, start_row: int, p: CurvatureParams):
        """Return :meth:`score_chunk` of held-out rows (named as such in the cache, :func:`_rows_key`)."""
        return self.score_chunk(x_raw, y, state, start_row, p, held=True)

    def _deep_curvatures(self, M, Wt, parts: dict, last=None) -> None:
        """Add S_l = Σ_k J_{k,l}ᵀ J_{k,l} for the layers below the last hidden one (one backprop per output).

        ``last``: the ``J_{k,L−1}`` of a loss with curvature H ≠ I (cross-entropy); their S_{L−1} is added too.
        """
        L = self.L
        if last is not None:  # one product over the K blocks stacked: K small Grams cost ~3× more here
            stacked = np.concatenate(last) if len(last) > 1 else last[0]
            parts[f"curv{L - 1}"] = (stacked.T @ stacked).astype(np.float64)
        if L < 3:
            return
        for k in range(self.widths[L]):
            J = M[L - 1] * Wt[L][k] if last is None else last[k]
            for l in range(L - 2, 0, -1):
                J = M[l] * times(J, Wt[l + 1])
                parts[f"curv{l}"] = parts.get(f"curv{l}", 0.0) + (J.T @ J).astype(np.float64)
