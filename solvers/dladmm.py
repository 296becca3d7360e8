"""dlADMM (Wang, Yu, Chen & Zhao, KDD 2019) as chunk kernels plus a client step.

Samples are rows; ``ã = [a, 1]`` and ``W̃_l = [W_l, b_l]`` (bias in the last
column); ``h`` is the activation (ReLU in the paper). The problem (paper,
Problem 2) and its augmented Lagrangian, summed over samples::

    L_ρ = R(z_L; y) + ⟨u, z_L − W_L a_{L−1} − b_L⟩ + ρ/2‖z_L − W_L a_{L−1} − b_L‖²
          + ν/2 Σ_{l<L} (‖z_l − W_l a_{l−1} − b_l‖² + ‖a_l − h(z_l)‖²)

One iteration updates every variable once backward (l = L … 1, per layer
``a_l → z_l → b_l → W_l``, giving the ``k−½`` values) and once forward
(l = 1 … L, ``W_l → b_l → z_l → a_l``), then the dual ``u ← u + ρ(z_L − W_L a_{L−1} − b_L)``:

* ``W_l``: one step of the quadratic approximation ``P(W; θ) = F(W⁰) + ⟨∇F, W − W⁰⟩ + θ/2‖W − W⁰‖²``,
  ``W = W⁰ − ∇F/θ``, θ found by backtracking (θ ← 2θ until ``F(W) ≤ P(W; θ)``).
  ``F`` is quadratic in W̃, so every trial is evaluated exactly from the
  reduced sums ``C̃ = Σ t ãᵀ`` and ``G̃ = Σ ã ãᵀ`` (``t`` the layer's target,
  ``z_l`` or ``z_L + u/ρ``): ``F(W − D) − P(W − D; θ) = κ/2⟨D G, D⟩ − θ/2‖D‖²``,
  so no trial costs a pass (:func:`weight_step`).
* ``b_l``: the quadratic approximation with the curvature ``κ n`` of ``F`` in
  b, which is exact: ``b = (Σ t − W Σ a) / n`` (:func:`bias_step`).
* ``a_l``: one step of the quadratic approximation ``a − ∇φ/τ`` (:func:`activation_step`).
* ``z_l`` (l < L): the exact minimiser of ``‖z − W a − b‖² + ‖a − h(z)‖²`` entrywise
  (the activation's z-update with γ = β); ``z_L``: the exact minimiser of
  ``ℓ(z, y) + u z + ρ/2 (z − W_L a_{L−1} − b_L)²`` (the loss's z-update with β = ρ/2).

Passes (each reads the data once): the backward step of layer l < L needs
``W_{l+1}^{k−½}``, which needs the sums of the backward step of layer l + 1,
and the forward step of layer l needs ``W_l^k``; so an iteration is a chain of
**2L − 1 passes** (3 for one hidden layer)::

    B_l, l = L−1 … 1   a_l^{k−½}, z_l^{k−½} from state k−1;  sums Σ z ãᵀ for b_l, W_l (backward)
    F_l, l = 1 … L−1   z_l^k, a_l^k;  sums Σ ã ãᵀ, Σ t ãᵀ for W_{l+1}, b_{l+1} (forward), penalties
    O                  z_L^k, u^k (dual step), the objective and accuracy of iteration k;
                       then z_L^{k+½} of the next backward sweep and its sums Σ t ãᵀ

The backward steps of ``W_L, b_L`` and the forward steps of ``W_1, b_1`` need
no pass of their own (their sums come from O of the previous iteration and
from B_1). ``a_l^{k−½}`` is not stored: F_l recomputes it from the same
inputs as B_l (state k−1 and ``z_{l+1}^{k−½}``), which costs two small
products per row and saves writing and re-reading an ``n × n_l`` array.

Stored per sample: ``z_l, a_l`` (l < L), ``zh_l = z_l^{k−½}`` (2 ≤ l < L, read
by the later passes of the same iteration), ``z_L`` (holding ``z_L^{k+½}``)
and ``u``. Client carry: the Grams ``Σ ã_{l−1}ã_{l−1}ᵀ`` (the input Gram is
constant), the output sums of O and the backtracking start θ of every step.

Settings. dlADMM's ρ (output penalty and dual step) and ν (hidden penalties)
do not map onto γ/β of the 2016 method (ν weights both hidden constraints, and
the β default tuned for that method breaks dlADMM's convergence condition):
they are ``config.rho`` and ``config.nu`` (``--rho``, ``--nu``). ``loss="auto"`` is the squared loss, the
project's loss that meets the paper's assumption of a Lipschitz-smooth R (the
paper's cross-entropy needs an inner iterative solver per sample):

===========  =========  ======================================================
``rho``      4          ρ. With the squared loss (∇R 2-Lipschitz), ρ ≥ 4
                        makes L_ρ non-increasing: the dual step raises it by
                        ‖Δu‖²/ρ ≤ 4‖Δz_L‖²/ρ, the two z_L steps lower it by
                        ≥ ρ/4‖Δz_L‖², every other step lowers it
``nu``       100        ν; it enters the iterates only through ρ/ν (the a-step
                        of the last hidden layer), it cancels elsewhere
``loss``     squared    hinge works too (faster on some data), without the
                        guarantee: R is not smooth
===========  =========  ======================================================

Deviations from the paper, each for a stated reason: the regulariser Ω(W)
is weight decay ``κα/2‖W‖²`` (``alpha``; ``"auto"``: α = 0.01 · the Gram's
mean diagonal, :func:`~solvers.linalg.resolve_alpha`), the bias spared; the step τ of ``a`` is the Lipschitz
constant ``ν + κ‖W_{l+1}‖₂²`` of ∇_a φ, which satisfies the paper's
backtracking condition at the first trial for every sample (a backtracked τ
would cost one pass per trial, the condition being a sum over samples); the
backtracking of θ starts at the last accepted θ / 2 instead of a fixed θ₀.
With ``alpha="auto"`` and held-out rows the model's output layer is refitted to the targets
after every iteration, α chosen on the held-out rows (:mod:`solvers.readout`;
its sums come from pass O, which also runs statelessly on the held-out
chunks); the iteration goes on from its own ``W_L`` (the carry's ``U``), and
the reported train score is that of its own weights. ``input_skip``: the refit reads
``[ã_{L−1}; a_0]`` (a linear skip path from the inputs, :mod:`solvers.readout`); dlADMM's own
``W_L``, ``b_L`` and ``z_L`` steps still read ``a_{L−1}`` alone, exactly as above.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from solvers.base import SolverBase
from solvers.config import TrainConfig
from solvers import readout
from solvers.errors import InputError, NumericalError
from solvers.linalg import affine, cross_with_bias, gram_with_bias, resolve_alpha
from solvers.loop import LoopState, run_pass, run_pass_held_out
from solvers.losses import LOSSES
from solvers.stats import StatsLayout

THETA0 = 1.0            # first backtracking trial of iteration 1 (the paper's code starts at 1)
BACKTRACK_GROWTH = 2.0  # θ ← 2θ after a rejected trial
BACKTRACK_TRIES = 80    # trials before giving up (2⁸⁰ spans any sane curvature)


# -- the subproblem steps (pure; tests check each against direct minimisation) ---------------
def bias_step(Wt, cross, gram):
    """Return W̃ with ``b = argmin_b Σ‖t − W a − b‖² = (Σ t − W Σ a) / n`` from ``C̃ = Σ t ãᵀ``, ``G̃ = Σ ã ãᵀ``."""
    Wt = np.array(Wt, np.float64)
    Wt[:, -1] = (cross[:, -1] - Wt[:, :-1] @ gram[:-1, -1]) / gram[-1, -1]
    return Wt


def weight_step(Wt, cross, gram, kappa: float, theta0: float, *, what: str = "W", alpha: float = 0.0):
    """Return (W̃ with ``W = W⁰ − ∇F/θ``, θ): the paper's W-update with θ found by backtracking.

    ``F(W) = κ/2 Σ‖t − W a − b‖² + α/2‖W‖²`` (the paper's regulariser Ω as
    weight decay, bias spared) has the gradient ``∇F = κ(W̃G̃ − C̃) + αW`` (W
    columns). The trials are θ = θ₀, 2θ₀, …; the first with ``F(W⁰ − D) ≤
    P(W⁰ − D; θ)``, ``D = ∇F/θ``, is taken. F is quadratic, so the trial's
    excess ``F(W⁰ − D) − P(W⁰ − D; θ) = κ/2⟨D G, D⟩ + α/2‖D‖² − θ/2‖D‖²`` is exact from
    the Gram (no cancellation of large sums). Raises :class:`NumericalError`
    when the sums are not finite or no trial passes in ``BACKTRACK_TRIES``.
    """
    Wt = np.array(Wt, np.float64)
    if not (np.all(np.isfinite(cross)) and np.all(np.isfinite(gram)) and np.all(np.isfinite(Wt))):
        raise NumericalError(f"{what}: the sums of its subproblem contain NaN or inf; the state diverged "
                             "(try a smaller rho or nu, or standardised inputs)")
    grad = kappa * (Wt @ gram - cross)[:, :-1] + alpha * Wt[:, :-1]
    gg = float(np.sum(grad * grad))
    if gg == 0.0:
        return Wt, float(theta0)
    # κ⟨∇G, ∇⟩ + α‖∇‖² = θ²·(κ⟨D G, D⟩ + α‖D‖²)
    curv = kappa * float(np.sum((grad @ gram[:-1, :-1]) * grad)) + alpha * gg
    theta = float(theta0)
    for _ in range(BACKTRACK_TRIES):
        if curv / theta ** 2 <= gg / theta:  # κ⟨D G, D⟩ ≤ θ‖D‖², D = ∇/θ
            Wt[:, :-1] -= grad / theta
            return Wt, theta
        theta *= BACKTRACK_GROWTH
    raise NumericalError(f"{what}: backtracking found no θ with F(W − ∇F/θ) ≤ P(W − ∇F/θ; θ) in "
                         f"{BACKTRACK_TRIES} trials (θ up to {theta:.3g}); the subproblem is badly scaled: "
                         "standardise the inputs or use a smaller rho/nu")


def lipschitz_a(W_next, kappa: float, nu: float) -> float:
    """Return ``ν + κ‖W_{l+1}‖₂²``, the Lipschitz constant of ∇_a φ: τ of the a-step (an upper bound)."""
    W = np.asarray(W_next, np.float64)[:, :-1]
    M = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
    import scipy.linalg  # here, not at import: SciPy's import is a third of a fast start

    top = scipy.linalg.eigvalsh(M, subset_by_index=[M.shape[0] - 1, M.shape[0] - 1])[0]
    return float(nu + kappa * max(top, 0.0) * (1 + 1e-6))


def activation_step(a, hz, target, W_next, kappa: float, nu: float, tau: float):
    """Return ``a − ∇φ(a)/τ``, the minimiser of the paper's quadratic approximation U(a; τ) of the a-subproblem.

    ``φ(a) = ν/2‖a − h(z_l)‖² + κ/2‖t_{l+1} − W_{l+1} a − b_{l+1}‖²`` per row, with
    ``hz = h(z_l)``, ``target = t_{l+1}`` (``z_{l+1}``, or ``z_L + u/ρ`` for the last hidden layer).
    """
    dt = a.dtype.type
    W = W_next.astype(a.dtype, copy=False)
    r = affine(a, W)
    r -= target
    g = (a - hz) * dt(nu)
    g += (r @ W[:, :-1]) * dt(kappa)
    return a - g * dt(1.0 / tau)


@dataclass(frozen=True)
class SweepParams:
    """The broadcast of B_l and F_l: the layer, its W̃ for ``m = W̃ ã_{l−1}``, W̃_{l+1}^{k−½} and τ."""

    layer: int
    W: np.ndarray       # W̃_l^{k−1} (B_l) or W̃_l^k (F_l), float32
    W_next: np.ndarray  # W̃_{l+1}^{k−½}, float32
    tau: float


@dataclass(frozen=True)
class OutputParams:
    """The broadcast of pass O: W^k (the chunk's dtype) and the logistic readout's candidates (None: no logistic refit)."""

    weights: tuple
    readout: object = None


class DLADMMSolver(readout.OutputRefit, SolverBase):
    """dlADMM: backward–forward sweeps with quadratic approximations; 2L − 1 passes per iteration."""

    name = "dladmm"
    divergence_hint = "a larger --rho or --nu, or a larger --ridge"

    def __init__(self, config: TrainConfig, n_features: int, classes, x_mean, x_scale,
                 dtype=np.float32, y_mean=None, y_scale=None):
        super().__init__(config, n_features, classes, x_mean, x_scale, dtype, y_mean, y_scale)
        self.loss_name = "squared" if config.loss == "auto" else self.task.loss(config)
        self.loss = LOSSES[self.loss_name]
        if config.resolved_init() == "gaussian":
            raise InputError("the dladmm solver starts from a forward pass of random weights; "
                             "--init gaussian is for --solver admm (use --init forward or data)")
        self.rho, self.nu = float(config.rho), float(config.nu)  # validated by TrainConfig

    # -- what the pipeline stores and sums ------------------------------------------
    def state_widths(self) -> dict[str, int]:
        """Return the per-sample arrays this solver keeps and their widths."""
        w, L = self.widths, self.L
        out = {}
        for l in range(1, L):
            out[f"z{l}"] = out[f"a{l}"] = w[l]
        out.update({f"zh{l}": w[l] for l in range(2, L)})
        out[f"z{L}"] = out["u"] = w[L]
        return out

    def _kappa(self, l: int) -> float:
        """Return the weight of layer l's linear constraint: ρ for the output layer, ν below."""
        return self.rho if l == self.L else self.nu

    def _cross_shapes(self, l: int) -> dict:
        shape = (self.widths[l], self.widths[l - 1] + 1)
        return {"crossz": shape, "crossu": shape} if l == self.L else {f"cross{l}": shape}

    def layout(self, kernel: str, layer: int = 0) -> StatsLayout:
        """Return the layout of the sums of ``kernel`` (for B_l/F_l: of layer ``layer``)."""
        w, L = self.widths, self.L
        if kernel == "init_chunk":
            shapes = {"n": (), **{f"gram{l}": (w[l - 1] + 1,) * 2 for l in range(1, L + 1)},
                      **self._cross_shapes(L), **(self.readout_shapes() if self.logistic else {})}
        elif kernel == "backward_chunk":
            shapes = {"n": (), **self._cross_shapes(layer)}
        elif kernel == "forward_chunk":
            shapes = {f"penalty{layer}": (), f"gram{layer + 1}": (w[layer] + 1,) * 2,
                      **self._cross_shapes(layer + 1)}
        else:  # output_chunk
            shapes = {"n": (), **self.task.score_shapes, "loss": (), "lagrange": (), "residual_sq": (),
                      **self._cross_shapes(L), **(self.readout_shapes() if self.refits else {})}
        return StatsLayout(shapes)

    # -- client side -------------------------------------------------------------------
    def initialize(self, runner) -> LoopState:
        """Write the state of a forward pass of W⁰ (iteration 0; He-scaled random, W_1 from the data for init data).

        ``z_L⁰ = y`` and ``u⁰ = 0`` (the paper's code), so ``u⁰ = −∇R(z_L⁰)``; the
        stored ``z_L`` is already ``z_L^{½}`` of iteration 1's backward sweep.
        """
        w0 = self.initial_weights(runner)
        sums = run_pass(runner, self.layout("init_chunk"), "init_chunk", self.cast(w0), 0, write=0)
        carry = {"input_gram": sums["gram1"], "crossz": sums["crossz"], "crossu": sums["crossu"]}
        carry.update({f"gram{l}": sums[f"gram{l}"] for l in range(2, self.L + 1)})
        for l in range(1, self.L + 1):
            carry[f"theta_b{l}"] = carry[f"theta_f{l}"] = np.asarray(THETA0)
        if self.logistic:
            carry.update(readout.start(self.with_input_gram(sums, sums["gram1"]), self.readout_width, self.widths[-1],
                                       self.config.ridge, self.refit_all))
        return LoopState(0, w0, carry)

    def advance(self, runner, state: LoopState) -> tuple[LoopState, dict]:
        """Run iteration k = state.iteration + 1: backward sweep, forward sweep, dual step (2L − 1 passes)."""
        k, L = state.iteration + 1, self.L
        W = [np.array(w, np.float64) for w in self.iterate(state)]
        carry = {name: np.asarray(v) for name, v in state.carry.items()}
        grams = {1: carry["input_gram"], **{l: carry[f"gram{l}"] for l in range(2, L + 1)}}
        cross = {L: self._output_cross(carry["crossz"], carry["crossu"])}  # layer l's Σ t ãᵀ
        # backward sweep: layer L on the client, then one pass per hidden layer
        W[L - 1] = self._layer(L, W[L - 1], cross[L], grams[L], carry, backward=True)
        taus = {}
        for l in range(L - 1, 0, -1):
            taus[l] = lipschitz_a(W[l], self._kappa(l + 1), self.nu)
            sums = run_pass(runner, self.layout("backward_chunk", l), "backward_chunk",
                            SweepParams(l, W[l - 1].astype(self.dtype), W[l].astype(self.dtype), taus[l]), k,
                            read=self._sweep_reads(l, k, backward=True), write=k if l >= 2 else None)
            cross[l] = sums[f"cross{l}"]
            W[l - 1] = self._layer(l, W[l - 1], cross[l], grams[l], carry, backward=True)
        # forward sweep: layer 1 from B_1's sums, one pass per hidden layer for the layer above
        half = [w.astype(self.dtype) for w in W]
        penalty = 0.0
        for l in range(1, L):
            W[l - 1] = self._layer(l, W[l - 1], cross[l], grams[l], carry, backward=False)
            sums = run_pass(runner, self.layout("forward_chunk", l), "forward_chunk",
                            SweepParams(l, W[l - 1].astype(self.dtype), half[l], taus[l]), k,
                            read=self._sweep_reads(l, k, backward=False), write=k)
            grams[l + 1] = carry[f"gram{l + 1}"] = sums[f"gram{l + 1}"]
            cross[l + 1] = (self._output_cross(sums["crossz"], sums["crossu"]) if l + 1 == L
                            else sums[f"cross{l + 1}"])
            penalty += sums[f"penalty{l}"]
        W[L - 1] = self._layer(L, W[L - 1], cross[L], grams[L], carry, backward=False)
        # O: z_L^k, the dual step, the objective; z_L^{k+½} and its sums for the next backward sweep
        reads = {"u": k - 1, **({f"a{L - 1}": k} if L > 1 else {})}
        layout = self.layout("output_chunk")
        if not self.refits:
            sums = run_pass(runner, layout, "output_chunk", self.cast(W), k, read=reads, write=k)
            carry["crossz"], carry["crossu"] = sums["crossz"], sums["crossu"]
            return LoopState(k, W, carry), self.metrics(sums, penalty)
        if self.logistic:  # a run begun with a numeric alpha: the candidates start at zero
            carry.update(readout.carried(carry, self.readout_width, self.widths[-1], self.refit_all))
        params = OutputParams(self.cast(W), readout.broadcast(carry, self.dtype) if self.logistic else None)
        sums, held = run_pass_held_out(runner, layout, "output_chunk", params, k, read=reads, write=k)
        carry["crossz"], carry["crossu"] = sums["crossz"], sums["crossu"]
        sums = self.with_input_gram(sums, carry["input_gram"])
        if held is None:  # nothing held out: the model is the iterate (see solvers.readout)
            carry.pop("U", None)
            return LoopState(k, W, carry), self.metrics(sums, penalty)
        what = f"W_{L} (output refit)"
        if self.logistic:
            W_out, new, refit = readout.logistic_fit(carry, sums, held, self.config.ridge, what=what)
            carry.update(new)
        else:
            W_out, alpha = readout.fit(sums, held, self.config.ridge, what=what)
            refit = {"alpha": alpha}
        carry["U"] = W[L - 1]
        return LoopState(k, [*W[:-1], W_out], carry), {**self.metrics(sums, penalty), **refit}

    def iterate(self, state: LoopState) -> list:
        """Return the iteration's own W^k: the model's weights with the output layer ``U`` of the carry if kept."""
        if "U" not in state.carry:
            return list(state.weights)
        return [*state.weights[:-1], np.asarray(state.carry["U"])]

    def resume(self, runner, state: LoopState, changed: set, history=()) -> LoopState:
        """Return ``state``: nothing in the carry depends on a setting a resume may change."""
        return state

    def _layer(self, l: int, Wt, cross, gram, carry: dict, *, backward: bool):
        """Return W̃_l after its b- and W-steps (backward: b then W; forward: W then b); update θ in ``carry``."""
        key = f"theta_{'b' if backward else 'f'}{l}"
        what = f"W_{l} ({'backward' if backward else 'forward'} sweep)"
        if backward:
            Wt = bias_step(Wt, cross, gram)
        alpha = self._kappa(l) * resolve_alpha(self.config.alpha, gram)
        Wt, theta = weight_step(Wt, cross, gram, self._kappa(l), float(carry[key]), what=what, alpha=alpha)
        carry[key] = np.asarray(theta / BACKTRACK_GROWTH)  # the next trial may take a longer step
        return Wt if backward else bias_step(Wt, cross, gram)

    def _output_cross(self, crossz, crossu):
        """Return ``Σ (z_L + u/ρ) ãᵀ``: the output layer's target, the augmented term with u folded in."""
        return np.asarray(crossz) + np.asarray(crossu) / self.rho

    def _sweep_reads(self, l: int, k: int, *, backward: bool) -> dict:
        """Return what B_l / F_l read: a_l, z_l of k−1, the input a_{l−1} and the target of layer l + 1."""
        reads = {f"a{l}": k - 1, f"z{l}": k - 1}
        if l >= 2:
            reads[f"a{l - 1}"] = k - 1 if backward else k
        if l + 1 == self.L:
            reads.update({f"z{self.L}": k - 1, "u": k - 1})
        else:
            reads[f"zh{l + 1}"] = k
        return reads

    def initial_weights(self, runner=None) -> list:
        """Return W⁰ with zero biases: He-scaled random (seeded by ``config.seed``), W_1 from the data for ``init="data"``."""
        return self.initial_weights_of(runner, self.L)

    def metrics(self, sums: dict, penalty: float) -> dict:
        """Return the train score, primal residual ‖z_L − W_L a_{L−1} − b_L‖, mean loss and L_ρ of iteration k."""
        return {
            f"train_{self.task.score_name}": self.task.score(sums),
            "residual": float(np.sqrt(sums["residual_sq"])),
            "loss": sums["loss"] / sums["n"],
            "objective": sums["loss"] + sums["lagrange"] + self.rho / 2 * sums["residual_sq"]
            + self.nu / 2 * penalty,
        }

    # -- chunk side (pure NumPy: one chunk in, one chunk out) ---------------------------
    def _tiled(self, kernel: str, layer: int, x_raw, y, state, tile_fn):
        """Run ``tile_fn(x_raw, y, state)`` on row tiles; return (concatenated new state, summed stats)."""
        return self.tiled(self.layout(kernel, layer), x_raw.shape[0],
                          lambda sl, tile_state: tile_fn(x_raw[sl], y[sl], tile_state), state)

    def _z_output(self, t, u, m):
        """Return ``argmin_z ℓ(z, t) + u z + ρ/2 (z − m)²`` entrywise (the z_L-update)."""
        return self.loss.z_update(t, u, m, self.rho / 2)

    def _target(self, l: int, state: dict):
        """Return layer l's target t_l: ``z_L + u/ρ`` (output) or ``zh_l = z_l^{k−½}``."""
        if l == self.L:
            return state[f"z{l}"] + state["u"] * self.dtype.type(1 / self.rho)
        return state[f"zh{l}"]

    def init_chunk(self, x_raw, y, state, start_row: int, weights):
        """Return (state of a forward pass of W⁰ with u = 0 and z_L = z_L^{½}, its Grams and output sums)."""
        L = self.L
        start = (readout.broadcast({"R": readout.zero_stack(self.readout_width, self.widths[-1])}, self.dtype)
                 if self.logistic else None)

        def tile(x_raw, y, _):
            x, out, sums = self.inputs(x_raw), {}, {"n": x_raw.shape[0]}
            a = x
            for l in range(1, L):
                sums[f"gram{l}"] = gram_with_bias(a)
                out[f"z{l}"] = affine(a, weights[l - 1])
                out[f"a{l}"] = a = self.act.h(out[f"z{l}"])
            sums[f"gram{L}"] = gram_with_bias(a)
            t = self.task.targets(y, self.dtype)
            if self.logistic:  # the readout's zero candidates on the forward features (readout.start)
                sums.update(readout.logistic_parts(self.readout_features(a, x), t, start, known=self.known_inputs))
            u = np.zeros((a.shape[0], self.widths[L]), self.dtype)
            out[f"z{L}"] = self._z_output(t, u, affine(a, weights[L - 1]))
            out["u"] = u
            sums.update(crossz=cross_with_bias(out[f"z{L}"], a), crossu=cross_with_bias(u, a))
            return out, sums

        return self._tiled("init_chunk", 0, x_raw, y, state, tile)

    def backward_chunk(self, x_raw, y, state, start_row: int, p: SweepParams):
        """Return (zh_l if l ≥ 2, Σ zh_l ãᵀ): B_l, with ``a_l^{k−½}`` from state k−1 and ``z_l^{k−½}`` from it."""
        l = p.layer
        kappa = self._kappa(l + 1)

        def tile(x_raw, y, s):
            a_prev = self.inputs(x_raw) if l == 1 else s[f"a{l - 1}"]
            a_half = activation_step(s[f"a{l}"], self.act.h(s[f"z{l}"]), self._target(l + 1, s), p.W_next,
                                     kappa, self.nu, p.tau)
            z_half = self.act.z_update(a_half, affine(a_prev, p.W), self.nu, self.nu)
            return ({f"zh{l}": z_half} if l >= 2 else {}), {"n": x_raw.shape[0],
                                                          f"cross{l}": cross_with_bias(z_half, a_prev)}

        new, sums = self._tiled("backward_chunk", l, x_raw, y, state, tile)
        return (new or None), sums

    def forward_chunk(self, x_raw, y, state, start_row: int, p: SweepParams):
        """Return (z_l^k, a_l^k) and F_l's sums: Grams of ``a_l^k`` for layer l + 1 and the penalties of layer l."""
        l, L = p.layer, self.L
        kappa = self._kappa(l + 1)

        def tile(x_raw, y, s):
            a_prev = self.inputs(x_raw) if l == 1 else s[f"a{l - 1}"]
            target = self._target(l + 1, s)
            a_half = activation_step(s[f"a{l}"], self.act.h(s[f"z{l}"]), target, p.W_next, kappa, self.nu, p.tau)
            m = affine(a_prev, p.W)
            z = self.act.z_update(a_half, m, self.nu, self.nu)
            hz = self.act.h(z)
            a = activation_step(a_half, hz, target, p.W_next, kappa, self.nu, p.tau)
            penalty = np.sum((z - m) ** 2, dtype=np.float64) + np.sum((a - hz) ** 2, dtype=np.float64)
            sums = {f"penalty{l}": float(penalty), f"gram{l + 1}": gram_with_bias(a)}
            if l + 1 == L:
                sums.update(crossz=cross_with_bias(s[f"z{L}"], a), crossu=cross_with_bias(s["u"], a))
            else:
                sums[f"cross{l + 1}"] = cross_with_bias(target, a)
            return {f"z{l}": z, f"a{l}": a}, sums

        return self._tiled("forward_chunk", l, x_raw, y, state, tile)

    def output_chunk(self, x_raw, y, state, start_row: int, p):
        """Return (z_L^{k+½}, u^k) and O's sums: loss, dual term, residual, score of W^k, Σ z ãᵀ, Σ u ãᵀ.

        ``p``: W^k, or :class:`OutputParams` (with the logistic readout's candidates). A held-out chunk
        (``state`` None) returns only the readout sums of W^k's hidden layers.
        """
        L = self.L
        weights, stack = (p.weights, p.readout) if isinstance(p, OutputParams) else (p, None)

        def readout_sums(a, x, t, held_out: bool) -> dict:
            features = self.readout_features(a, x)
            known = 0 if held_out else self.known_inputs  # training rows: the client adds the input Gram block
            if self.logistic:
                return readout.logistic_parts(features, t, stack, held_out=held_out, known=known,
                                              refit=self.refit_all)
            return readout.parts(features, t, known)

        if state is None:
            def held_tile(x_raw, y, _):
                a = x = self.inputs(x_raw)
                for l in range(1, L):
                    a = self.act.h(affine(a, weights[l - 1]))
                return None, {"n": x_raw.shape[0], **readout_sums(a, x, self.task.targets(y, self.dtype), True)}
            return None, self._tiled("output_chunk", 0, x_raw, y, None, held_tile)[1]

        def tile(x_raw, y, s):
            x = self.inputs(x_raw)
            a = x if L == 1 else s[f"a{L - 1}"]
            t = self.task.targets(y, self.dtype)
            m = affine(a, weights[L - 1])
            z = self._z_output(t, s["u"], m)           # z_L^k
            r = z - m
            u = s["u"] + r * self.dtype.type(self.rho)  # u^k
            z_next = self._z_output(t, u, m)           # z_L^{k+½}
            hidden = x
            for l in range(1, L):
                hidden = self.act.h(affine(hidden, weights[l - 1]))
            sums = {"n": x.shape[0], **self.task.score_parts(affine(hidden, weights[L - 1]), y),
                    **(readout_sums(hidden, x, t, False) if self.refits else {}),
                    "loss": float(np.sum(self.loss.value(z, t), dtype=np.float64)),
                    "lagrange": float(np.sum(u * r, dtype=np.float64)),
                    "residual_sq": float(np.sum(r * r, dtype=np.float64)),
                    "crossz": cross_with_bias(z_next, a), "crossu": cross_with_bias(u, a)}
            return {f"z{L}": z_next, "u": u}, sums

        return self._tiled("output_chunk", 0, x_raw, y, state, tile)
