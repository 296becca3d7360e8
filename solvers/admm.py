"""The ADMM method of Taylor et al. (ICML 2016, Algorithm 1) as chunk kernels plus a client step.

Samples are rows. Per-sample state: ``z_1 … z_L`` and the multiplier ``λ``
(shape of ``z_L``); the activations ``a_l`` are not stored but recomputed,
because iteration k of Algorithm 1 only ever reads values the loop has not
yet updated (``a_l`` is computed before ``z_l`` and ``W_{l+1}``)::

    a_l^k = (βW̃ᵀW̃ + γI)⁻¹(βW̃ᵀ(z_{l+1}^{k−1} − b) + γh(z_l^{k−1})), W = W_{l+1}^{k−1}   (eq. 6)
    W_l^k = (Σ z_l^{k−1} a_{l−1}^kᵀ)(Σ a_{l−1}^k a_{l−1}^kᵀ)⁻¹                          (eq. 9)
    z_l^k = argmin_z γ(a_l^k − h(z))² + β(z − W_l^k a_{l−1}^k)²                      (eq. 7)
    z_L^k = argmin_z ℓ(z, y) + λz + β(z − W_L^k a_{L−1}^k)²,  λ^k = λ^{k−1} + β(z_L^k − W_L^k a_{L−1}^k)

so ``a^k`` and every Gram that ``W^k`` needs are functions of ``z^{k−1}`` and
``W^{k−1}``. One pass over the chunks per iteration therefore suffices: it
reads ``z^{k−1}, λ^{k−1}`` and the data, writes ``z^k, λ^k``, and emits the
partial Grams of ``a^{k+1}`` from which the client solves ``W^{k+1}``.
The targets of ``ℓ`` and the training score come from the task
(:mod:`solvers.tasks`): 0/1 class targets, or standardised real values with
the squared loss for regression.

Parameters (all solvers share :class:`~solvers.config.TrainConfig`):

=============  ==============================================================
``gamma``      weight γ of ``‖a_l − h(z_l)‖²``
``beta``       weight β of ``‖z_l − W_l a_{l−1}‖²`` and of the λ step
``warm_start`` iterations 1..warm_start leave λ at 0 (paper §6)
``init``       ``data`` (``forward`` with W_1⁰ from the data, :mod:`solvers.data_init`), ``forward``
               (He-scaled random W⁰, state = forward pass) or
               ``gaussian`` (the paper: z, a ~ N(0, 1), W⁰ fitted to them)
``ridge``      relative ridge ε of the W-solve: ``a aᵀ + ε·mean(diag)·I`` (a numerical floor)
``alpha``      weight decay α of the W-solve, ``a aᵀ + α Ĩ`` (bias spared); ``"auto"``:
               0.01 · the Gram's mean diagonal (:func:`~solvers.linalg.resolve_alpha`),
               and the model's output layer refitted to the targets with α chosen
               on the held-out rows (:mod:`solvers.readout`: logistic for classification)
=============  ==============================================================

With ``alpha="auto"`` and held-out rows the pass of iteration k also sums, over its training
rows and (statelessly, in the same pass) over the held-out rows, the
readout sums of the forward pass of the hidden weights W^k; the model of
iteration k is ``W_1^k … W_{L−1}^k`` with the refitted output layer, while the
iteration goes on from its own ``W_L^k`` (kept in the carry as ``U``). The
reported train score is that of the iteration's own weights W^k.

``input_skip`` (a linear skip path): the refit's features are ``[ã_{L−1}; a_0]``, so the
model's output layer is ``z_L = V_h a_{L−1} + V_x a_0 + b`` (n_{L−1} + d + 1 columns), which
contains the input-linear model. No equation above changes: eq. 9's ``W_L`` and eq. 7's
``z_L`` still read ``a_{L−1}`` alone and stay the paper's exact minimisers (the iterate has
no skip path); only the refit, the regularised fit on fixed features, reads the inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from solvers.base import SolverBase
from solvers.config import TrainConfig
from solvers.conv import CGActivationUpdate, a_update_steps
from solvers import readout
from solvers.linalg import ActivationUpdate, resolve_alpha, solve_weights
from solvers.loop import LoopState, run_pass, run_pass_held_out
from solvers.losses import LOSSES
from solvers.stats import StatsLayout
from solvers.tiling import row_tiles



@dataclass(frozen=True)
class StepParams:
    """What one pass broadcasts to every chunk: weights, a-update operators, flags."""

    weights: tuple          # W^k (float32), used for z^k
    ops_prev: tuple         # eq. 6 operators from W^{k−1}: a^k from z^{k−1}
    ops_next: tuple         # eq. 6 operators from W^k: a^{k+1} from z^k (Grams)
    update_lambda: bool
    readout: object = None  # the logistic readout's candidates (J·K × n_{L−1}+1, :mod:`solvers.readout`)


class ADMMSolver(readout.OutputRefit, SolverBase):
    """Taylor et al.'s ADMM: chunk functions, the client step, the per-sample state it keeps."""

    name = "admm"

    def __init__(self, config: TrainConfig, n_features: int, classes, x_mean, x_scale,
                 dtype=np.float32, y_mean=None, y_scale=None):
        super().__init__(config, n_features, classes, x_mean, x_scale, dtype, y_mean, y_scale)
        self.loss_name = self.task.loss(config)
        self.loss = LOSSES[self.loss_name]
        # CG steps of the a-update below each layer (0: exact; None below a dense layer and the input)
        self.a_steps = [None if l == 0 or layer.is_dense else a_update_steps(layer, config.cg_steps)
                        for l, layer in enumerate(self.layers)]

    # -- what the pipeline stores and sums ------------------------------------------
    def state_widths(self) -> dict[str, int]:
        """Return the per-sample arrays this solver keeps and their widths."""
        out = {f"z{l}": self.widths[l] for l in range(1, self.L + 1)}
        out["lam"] = self.widths[-1]
        return out

    def layout(self, input_gram: bool, readout_sums: bool = False) -> StatsLayout:
        """Return the layout of a chunk's sums (Grams of every W-solve, metrics; the readout's if asked)."""
        shapes = {"n": (), **self.task.score_shapes, "loss": (), "lagrange": (), "residual_sq": ()}
        if readout_sums:
            shapes.update(self.readout_shapes())
        for l, layer in enumerate(self.layers, start=1):
            if l < self.L:
                shapes[f"penalty{l}"] = ()  # γ‖a_l − h(z_l)‖² + β‖z_l − W_l a_{l−1}‖²
            shapes[f"cross{l}"] = layer.weight_shape
            if l > 1 or input_gram:
                shapes[f"gram{l}"] = (layer.fan_in + 1, layer.fan_in + 1)
        return StatsLayout(shapes)

    # -- client side -------------------------------------------------------------------
    def initialize(self, runner) -> LoopState:
        """Write the initial state (iteration 0) and return W⁰ with W¹ solved ahead."""
        w0 = self.initial_weights(runner)
        sums = run_pass(runner, self.layout(True, self.logistic), "init_chunk", w0, 0, write=0)
        input_gram = sums["gram1"]
        extra = (readout.start(self.with_input_gram(sums, input_gram) if w0 is not None else sums, self.readout_width,
                               self.widths[-1], self.config.ridge, self.refit_all) if self.logistic else {})
        if w0 is None:  # gaussian state: fit W⁰ to it, then the Grams of W¹
            w0 = self.solve(sums, input_gram)
            sums = run_pass(runner, self.layout(True), "grams_chunk", w0, 0, read=0)
        return self._loop_state(0, w0, self.solve(sums, input_gram), input_gram, extra=extra)

    def advance(self, runner, state: LoopState) -> tuple[LoopState, dict]:
        """Run iteration k = state.iteration + 1 (one pass) and solve W^{k+1} from its Grams.

        With ``alpha="auto"`` the pass also runs on the held-out rows and the
        model's output layer is refitted (:mod:`solvers.readout`).
        """
        k = state.iteration + 1
        w_new, input_gram = self._next_weights(state), state.carry["input_gram"]
        extra = self._readout_carry(state)
        params = self.step_params(self.iterate(state), w_new, k,
                                  readout.broadcast(extra, self.dtype) if extra else None)
        layout = self.layout(False, self.refits)
        if not self.refits:
            sums = run_pass(runner, layout, "step_chunk", params, k, read=k - 1, write=k)
            return self._loop_state(k, w_new, self.solve(sums, input_gram), input_gram), self.metrics(sums)
        sums, held = run_pass_held_out(runner, layout, "step_chunk", params, k, read=k - 1, write=k)
        next_weights = self.solve(sums, input_gram)
        sums = self.with_input_gram(sums, input_gram)
        if held is None:  # nothing held out: the model is the iterate (see solvers.readout)
            return self._loop_state(k, w_new, next_weights, input_gram, extra=extra), self.metrics(sums)
        what = f"W_{self.L} (output refit)"
        if self.logistic:
            W_out, extra, refit = readout.logistic_fit(extra, sums, held, self.config.ridge, what=what)
        else:
            W_out, alpha = readout.fit(sums, held, self.config.ridge, what=what)
            refit = {"alpha": alpha}
        out = self._loop_state(k, w_new, next_weights, input_gram, output=W_out, extra=extra)
        return out, {**self.metrics(sums), **refit}

    def resume(self, runner, state: LoopState, changed: set, history=()) -> LoopState:
        """Return the state to continue from; W^{k+1} is solved again if γ, β or the ridge changed (eq. 6, 9)."""
        if not changed & {"gamma", "beta", "ridge", "alpha"}:
            return state
        k, input_gram, own = state.iteration, state.carry["input_gram"], self.iterate(state)
        sums = run_pass(runner, self.layout(True), "grams_chunk", own, k, read=k)
        output = state.weights[-1] if self.refits and "U" in state.carry else None
        return self._loop_state(k, own, self.solve(sums, input_gram), input_gram, output=output,
                                extra=self._readout_carry(state))

    def _readout_carry(self, state: LoopState) -> dict:
        """Return the logistic readout's carry entries (its candidates; zero ones if the run had none), or {}."""
        return (readout.carried(state.carry, self.readout_width, self.widths[-1], self.refit_all)
                if self.logistic else {})

    def iterate(self, state: LoopState) -> list:
        """Return the iteration's own W^k: the model's weights with the output layer ``U`` of the carry if kept."""
        if "U" not in state.carry:
            return list(state.weights)
        return [*state.weights[:-1], np.asarray(state.carry["U"])]

    def _loop_state(self, k: int, weights, next_weights, input_gram, output=None, extra=None) -> LoopState:
        """Return the client state of iteration k: the model (W^k, its output layer ``output`` if refitted).

        ``extra``: the readout's carry entries (:meth:`_readout_carry`).
        """
        carry = {f"V{l}": np.asarray(V) for l, V in enumerate(next_weights, start=1)}
        carry["input_gram"] = np.asarray(input_gram)
        carry.update(extra or {})
        if output is None:
            return LoopState(k, list(weights), carry)
        carry["U"] = np.asarray(weights[-1])
        return LoopState(k, [*weights[:-1], np.asarray(output)], carry)

    def _next_weights(self, state: LoopState) -> list:
        return [state.carry[f"V{l}"] for l in range(1, self.L + 1)]

    def initial_weights(self, runner=None):
        """Return W⁰ (bias 0): He-scaled random, W_1 from the data (``init="data"``, a pass of ``runner``); gaussian: None."""
        if self.config.resolved_init() == "gaussian":
            return None
        return self.initial_weights_of(runner, self.L)

    def solve(self, sums: dict, input_gram) -> list:
        """Return W_1..W_L from summed Grams (eq. 9); ``input_gram`` is the constant Σ a_0 a_0ᵀ."""
        out = []
        for l in range(1, self.L + 1):
            gram = input_gram if l == 1 else sums[f"gram{l}"]
            # C order, as a resumed run reads them back: eq. 6's W̃ᵀW̃ of a transposed (F-order) solve rounds
            # differently for K ≥ 2 outputs, and a resume after kill -9 was then 1e-7 off (3 classes)
            out.append(np.ascontiguousarray(solve_weights(sums[f"cross{l}"], gram, self.config.ridge, what=f"W_{l}",
                                                          alpha=resolve_alpha(self.config.alpha, gram))))
        return out

    def operators(self, weights) -> tuple:
        """Return the eq. 6 operators of hidden layers 1..L−1 for the given weights.

        Below a dense layer the solve is exact (:class:`ActivationUpdate`); below
        a convolution it runs CG steps (:class:`CGActivationUpdate`) or, with 0
        steps, is exact through the layer's Toeplitz matrix (:func:`a_update_steps`).
        """
        return tuple(self._operator(l, weights[l]).astype(self.dtype) for l in range(1, self.L))

    def _operator(self, index: int, W_next):
        c, layer, steps = self.config, self.layers[index], self.a_steps[index]
        if layer.is_dense:
            return ActivationUpdate.from_weights(W_next, c.gamma, c.beta)
        if steps:
            return CGActivationUpdate.from_weights(layer, W_next, c.gamma, c.beta, steps)
        return ActivationUpdate.from_weights(layer.dense_weights(W_next), c.gamma, c.beta)

    def step_params(self, w_prev, w_new, iteration: int, readout_stack=None) -> StepParams:
        """Return the broadcast of iteration k (1-based): W^{k−1} → a^k, W^k → z^k (and the readout's candidates)."""
        return StepParams(tuple(np.asarray(W, self.dtype) for W in w_new), self.operators(w_prev),
                          self.operators(w_new), iteration > self.config.warm_start, readout_stack)

    def metrics(self, sums: dict) -> dict:
        """Return the train score (accuracy or R²), primal residual ‖z_L − W_L a_{L−1}‖ and objective (eq. 5)."""
        beta = self.config.beta
        return {
            f"train_{self.task.score_name}": self.task.score(sums),
            "residual": float(np.sqrt(sums["residual_sq"])),
            "loss": sums["loss"] / sums["n"],
            "objective": sums["loss"] + sums["lagrange"] + beta * sums["residual_sq"]
            + sum(sums[f"penalty{l}"] for l in range(1, self.L)),
        }

    # -- chunk side (pure NumPy: one chunk in, one chunk out) ---------------------------

    def _activations(self, x, z, ops):
        """Return a_0..a_{L−1}: a_0 = x, a_l from z_l, z_{l+1} by eq. 6."""
        a = [x]
        for l in range(1, self.L):
            a.append(ops[l - 1].apply(self.act.h(z[l]), z[l + 1]))
        return a

    def _gram_parts(self, a, z, input_gram: bool) -> dict:
        parts = {}
        for l, layer in enumerate(self.layers, start=1):
            parts[f"cross{l}"] = layer.cross(z[l], a[l - 1])
            if l > 1 or input_gram:
                parts[f"gram{l}"] = layer.gram(a[l - 1])
        return parts

    def _summed(self, n: int, layout: StatsLayout, parts_of) -> np.ndarray:
        """Return the packed sums of ``parts_of(rows)`` over the row tiles of a chunk of ``n`` rows."""
        return self.tiled(layout, n, lambda sl, _: (None, parts_of(sl)))[1]

    def _grams_of_state(self, x, z, ops, y=None) -> np.ndarray:
        """Return the packed Grams of the next W-solve (and n) for a chunk's inputs and state z, tile by tile.

        ``y`` (the forward state of the initialisation, logistic readout): also the readout sums of the zero
        candidates on the forward features ``h(z_{L−1})``.
        """
        start = None if y is None else readout.broadcast({"R": readout.zero_stack(self.readout_width, self.widths[-1])},
                                                         self.dtype)

        def parts_of(sl):
            zt = [None] + [v[sl] for v in z[1:]]
            out = {**self._gram_parts(self._activations(x[sl], zt, ops), zt, input_gram=True), "n": sl.stop - sl.start}
            if start is not None:
                features = x[sl] if self.L == 1 else self.readout_features(self.act.h(zt[self.L - 1]), x[sl])
                out.update(readout.logistic_parts(features, self.task.targets(y[sl], self.dtype), start,
                                                  known=self.known_inputs))
            return out
        return self._summed(len(x), self.layout(True, y is not None), parts_of)

    def init_chunk(self, x_raw, y_idx, state, start_row: int, params):
        """Return (initial state, sums) for one chunk.

        ``forward``: z⁰ is the forward pass of W⁰ (``params``); the sums are the
        Grams of W¹. ``gaussian``: z⁰, a⁰ ~ N(0, 1) seeded by (seed, layer,
        start row) so the state is independent of scheduling; the sums are the
        Grams of W⁰.
        """
        x = self.inputs(x_raw)
        n = x.shape[0]
        z = [None] + [np.empty((n, w), self.dtype) for w in self.widths[1:]]
        if self.config.resolved_init() != "gaussian":
            weights = params
            for sl in row_tiles(n, self.tile_rows):
                a = x[sl]
                for l, layer in enumerate(self.layers, start=1):
                    z[l][sl] = layer.apply(a, weights[l - 1])
                    a = self.act.h(z[l][sl])
            sums = self._grams_of_state(x, z, self.operators(weights), y_idx if self.logistic else None)
        else:
            a = [x]
            for l in range(1, self.L + 1):
                rng = np.random.default_rng([self.config.seed, l, start_row])
                z[l] = rng.standard_normal((n, self.widths[l]), dtype=self.dtype)
                if l < self.L:
                    a.append(rng.standard_normal((n, self.widths[l]), dtype=self.dtype))
            sums = self._summed(n, self.layout(True, self.logistic), lambda sl: {
                **self._gram_parts([v[sl] for v in a], [None] + [v[sl] for v in z[1:]], input_gram=True),
                "n": sl.stop - sl.start})
        state = {f"z{l}": z[l] for l in range(1, self.L + 1)}
        state["lam"] = np.zeros((n, self.widths[-1]), self.dtype)
        return state, sums

    def grams_chunk(self, x_raw, y_idx, state, start_row: int, weights):
        """Return (None, sums of the Grams of W^{k+1} given the state z^k and W^k)."""
        x = self.inputs(x_raw)
        z = [None] + [state[f"z{l}"] for l in range(1, self.L + 1)]
        return None, self._grams_of_state(x, z, self.operators(weights))

    def step_chunk(self, x_raw, y, state, start_row: int, p: StepParams):
        """Return (z^k, λ^k) and the sums of one chunk for iteration k (one Algorithm 1 sweep).

        A held-out chunk (``state`` None) returns only the readout sums of W^k's hidden layers.
        """
        layout = self.layout(False, self.refits)
        if state is None:
            return None, self.tiled(layout, x_raw.shape[0], lambda sl, _: (None, {
                "n": sl.stop - sl.start,
                **self._readout_parts(self.inputs(x_raw[sl]), y[sl], p.weights, p.readout, held_out=True)[1]}))[1]
        return self.tiled(layout, x_raw.shape[0],
                          lambda sl, tile_state: self._step_tile(self.inputs(x_raw[sl]), y[sl], tile_state, p), state)

    def _readout_parts(self, x, y, weights, stack=None, held_out: bool = False) -> tuple:
        """Return (the output ``W_L ã_{L−1}`` of the forward pass of ``weights``, the readout sums or {}).

        ``stack``: the logistic readout's candidates (their sums instead of the ridge readout's).
        """
        a = x
        for l in range(1, self.L):
            a = self.act.h(self.layers[l - 1].apply(a, weights[l - 1]))
        out = None if held_out else self.layers[-1].apply(a, weights[-1])
        if not self.refits:
            return out, {}
        t, features = self.task.targets(y, self.dtype), self.readout_features(a, x)
        known = 0 if held_out else self.known_inputs  # training rows: the input Gram block is added on the client
        if self.logistic:
            return out, readout.logistic_parts(features, t, stack, held_out=held_out, known=known,
                                               refit=self.refit_all)
        return out, readout.parts(features, t, known)

    def _step_tile(self, x, y, state, p: StepParams):
        c, act, L = self.config, self.act, self.L
        gamma, beta = c.gamma, c.beta
        z = [None] + [state[f"z{l}"] for l in range(1, L + 1)]
        lam = state["lam"]
        a = self._activations(x, z, p.ops_prev)
        z_new, penalties = [None], {}
        for l in range(1, L):
            m = self.layers[l - 1].apply(a[l - 1], p.weights[l - 1])
            zl = act.z_update(a[l], m, gamma, beta)
            penalties[f"penalty{l}"] = (gamma * float(np.sum((a[l] - act.h(zl)) ** 2, dtype=np.float64))
                                        + beta * float(np.sum((zl - m) ** 2, dtype=np.float64)))
            z_new.append(zl)
        t = self.task.targets(y, self.dtype)
        m = self.layers[L - 1].apply(a[L - 1], p.weights[L - 1])
        zL = self.loss.z_update(t, lam, m, beta)
        r = zL - m
        lam_new = lam + self.dtype.type(beta) * r if p.update_lambda else lam
        z_new.append(zL)
        sums = self._gram_parts(self._activations(x, z_new, p.ops_next), z_new, input_gram=False)
        out, readout_sums = self._readout_parts(x, y, p.weights, p.readout)
        sums.update(
            n=x.shape[0],
            **readout_sums,
            **self.task.score_parts(out, y),
            loss=float(np.sum(self.loss.value(zL, t), dtype=np.float64)),
            lagrange=float(np.sum(lam * zL, dtype=np.float64)),
            residual_sq=float(np.sum(r * r, dtype=np.float64)),
            **penalties,
        )
        out = {f"z{l}": z_new[l] for l in range(1, L + 1)}
        out["lam"] = lam_new
        return out, sums
