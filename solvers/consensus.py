"""Consensus ADMM over data shards (Boyd et al. 2011, §7): one copy θ_s of the weights per shard, Adam locally.

The training rows are split into S *shards*, fixed groups of consecutive
chunks; ``w_s = n_s / n``. The problem ``min Σ_s w_s f_s(θ_s) + ½α‖θ̄‖²``
subject to ``θ_s = θ̄`` (``f_s`` the mean loss of shard s, α on the weights
only, not the biases) is solved by scaled-dual ADMM with penalty ``w_s ρ``:

* shard step (one task per shard, :meth:`ConsensusSolver.shard_kernel`):
  from θ̄, approximately ``θ_s ← argmin f_s(θ) + ρ/2‖θ − θ̄ + u_s‖²`` by
  ``local_epochs`` epochs of minibatch Adam over the shard's chunks, read one
  after another (the first passes: one sweep over a window of them that doubles
  every pass, from ``first_pass_rows`` over all shards, :func:`pass_window`);
  the task returns ``v_s = θ_s + u_s`` (summed as ``n_s v_s``);
* consensus step (client, closed form): ``θ̄ ← ρ Σ_s w_s v_s / (ρ + α)``
  (the notes' θ₂ step; biases: α = 0, a plain weighted average);
* averaging rounds (``averaging`` chunk, the default): a pass that sweeps
  once over each shard's chunks is R rounds of the three steps, round r reading
  chunk r of every shard's window (R: the largest shard's window; a shard
  without a chunk r keeps θ_s = θ̄); every round weighs shard s by the same
  ``n_s``, so ``Σ_s w_s u_s`` stays 0 and θ̄ is the shard models' average;
* dual step: ``u_s ← u_s + θ_s − θ̄ = v_s − θ̄``. The shard stores ``v_s``
  (its per-shard state in the run store); its next task forms
  ``u_s = (v_s − θ̄)·ρ_old/ρ_new`` (the scaled dual follows a change of ρ), so
  the client never holds the S duals.

Variants (``consensus``): ``admm`` (the above), ``elastic`` (elastic
averaging: the proximal term, no dual, ``u_s = 0``). ``rho_growth`` g gives
the schedule ``ρ_k = ρ g^{k−1}``. The Adam moments of each shard are carried
from pass to pass (and round to round) in the per-shard state. Minibatch order is seeded by
(seed, iteration, shard), in a round by (seed, iteration, shard, round): a run is bitwise reproducible
whatever workers run it, and a retried task rewrites the same bytes. The rounds of a pass are one
computation (:func:`~solvers.loop.run_shard_rounds`: in the pipeline one Dask graph whose round-r shard tasks
each take the consensus step, :meth:`ConsensusSolver.round_params`, themselves): round r starts from the shard states
round r − 1 returned, held in memory; only round 0 reads stored state (iteration k − 1's slot) and only the
last round writes it (iteration k's), so no task reads the slot it writes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from solvers import sampling
from solvers.adam import Adam, FlatLayout, gradient
from solvers.base import SolverBase
from solvers.config import HE_BIAS, TrainConfig
from solvers.errors import InputError
from solvers.gauss_newton import GaussNewtonSolver
from solvers.loop import LoopState, run_pass_held_out, run_shard_rounds, shard_groups, training_rows
from solvers.network import Network, standardize
from solvers.stats import StatsLayout
from solvers.tasks import score_from_sums
from solvers.validation import RowSplit

AUTO_STEPS = 250  # local_epochs 0: at least this many minibatch steps per pass over all shards (small data; consensus_s10.md)
LEGACY_AUTO_STEPS = 100  # the rule before session 10: run stores whose carry does not name theirs, and the hand-over's
ALPHA_SAMPLE_ROWS = 8192  # alpha auto: pass A reads a seeded sample of whole training chunks of at least this many rows
ALPHA_CHUNK_ROWS = 16384  # alpha auto: of each chunk it reads, pass A uses a seeded sample of at most this many rows


@dataclass(frozen=True)
class ShardParams:
    """The broadcast of a shard pass: θ̄ (float64 flat), the iteration, ρ and the dual's rescaling."""

    center: np.ndarray
    iteration: int
    rho: float
    dual_scale: float  # u_s = (v_s − θ̄)·dual_scale; 0: no dual (elastic averaging, or the first pass)
    alpha: float = 0.0  # weight decay ½α‖W̃‖² in the shard's objective (``decay_in_shards``)
    first_chunks: int = 0  # chunks per shard of pass 1, doubling every pass (:func:`pass_window`); 0: whole epochs
    rounds: int = 1  # averaging rounds of the pass (``averaging`` chunk): round r reads chunk r of each shard's window
    round: int = 0
    learning_rate: float | None = None  # Adam's step size of the pass (:meth:`ConsensusSolver.lr_at`); None: ``learning_rate``
    first_rows: int = 0  # pass 1 over one chunk per shard: the rows of it each shard reads (:meth:`ConsensusSolver.first_rows`)
    epochs: int = 1  # local epochs of a pass over all of a shard's chunks (:meth:`ConsensusSolver.local_epochs`)


def pass_window(k: int, n_chunks: int, first: int) -> tuple[int, int]:
    """Return (first chunk, chunks) that shard pass k reads of a shard of ``n_chunks`` chunks, in turn from there.

    Pass k reads ``m_k = min(n, first·2^{k−1})`` chunks starting where pass k−1 stopped
    (``Σ_{j<k} m_j mod n``); ``first`` 0: every pass reads all n from chunk 0.
    """
    if not first or first >= n_chunks:
        return 0, n_chunks
    start, m = 0, first
    for _ in range(1, k):
        if m >= n_chunks:  # whole passes from here on: the start stays put
            break
        start += m
        m *= 2
    return start % n_chunks, min(n_chunks, m)


def consensus_step(mean_v, rho: float, alpha, bias_mask=None):
    """Return ``θ̄ = ρ v̄ / (ρ + α)`` entrywise, α = 0 on the biases (``v̄ = Σ_s w_s (θ_s + u_s)``)."""
    alpha = np.where(bias_mask, 0.0, alpha) if bias_mask is not None else alpha
    return rho * np.asarray(mean_v, np.float64) / (rho + alpha)


class ConsensusSolver(SolverBase):
    """Consensus ADMM over data shards with minibatch Adam shard steps; no per-sample state."""

    name = "consensus"
    sharded = True
    carry_moments = True  # False: every shard pass restarts Adam (measured in benchmarks/consensus_variants.py)
    decay_in_shards = True  # False: ½α‖θ̄‖² in the consensus step instead (measured in benchmarks/consensus_real.py)
    auto_alpha_factor = 0.1  # alpha auto: this times the output layer's held-out ridge α per row (measured: 1 and 0.01 did worse)
    divergence_hint = "a smaller --learning-rate or a larger --consensus-rho"
    auto_steps = AUTO_STEPS  # local_epochs 0: minibatch steps per pass over all shards of a fresh run (benchmarks/consensus_paired.py)

    def __init__(self, config: TrainConfig, n_features: int, classes, x_mean, x_scale, dtype=np.float32,
                 y_mean=None, y_scale=None):
        super().__init__(config, n_features, classes, x_mean, x_scale, dtype, y_mean, y_scale)
        if config.loss not in ("auto", "cross-entropy", "squared"):
            raise InputError(f"the consensus solver fits cross-entropy (--loss auto) or the squared loss; "
                             f"--loss {config.loss} needs --solver admm")
        if config.task == "regression" or config.loss == "squared":
            self.loss_kind = "squared"
        else:
            self.loss_kind = "binary-log" if self.n_classes == 2 else "softmax-log"
        self.flat = FlatLayout([layer.weight_shape for layer in self.layers])
        self._bias = self.flat.bias_mask()
        # alpha auto: Gauss-Newton's pass A and held-out ridge path of the output layer, at θ̄'s hidden layers
        ridge = replace(config, solver="gauss-newton", loss="squared")  # the squared loss's closed-form path
        self._ridge_path = GaussNewtonSolver(ridge, n_features, classes, x_mean, x_scale, dtype, y_mean, y_scale)

    # -- what the pipeline stores and sums ----------------------------------------------
    def state_widths(self) -> dict[str, int]:
        """Return {}: nothing per sample is kept."""
        return {}

    def shard_state_widths(self) -> dict[str, int]:
        """Return the per-shard state: v = θ_s + u_s, Adam's moments m and s, and its step count t."""
        P = self.flat.size
        return {"v": P, "m": P, "s": P, "t": 1}

    def shard_layout(self) -> StatsLayout:
        """Return the layout of a shard pass's sums: rows, last-epoch loss and score, Σ n_s, Σ n_s v_s, Σ n_s θ_s, Σ n_s‖θ_s‖².

        ``n`` counts the rows the pass's loss and score are over; ``w`` (n_s) the shards' training rows.
        """
        P = self.flat.size
        return StatsLayout({"n": (), "loss": (), **self.task.score_shapes, "w": (), "v": (P,), "theta": (P,),
                            "theta_sq": ()})

    # -- client side -----------------------------------------------------------------------
    def rho_at(self, k: int) -> float:
        """Return ρ_k = ρ g^{k−1} (g = ``rho_growth``)."""
        c = self.config
        return float(c.consensus_rho) * float(c.rho_growth) ** (k - 1)

    def lr_at(self, k: int) -> float:
        """Return Adam's step size of pass k: ``learning_rate · lr_decay^{k−1}``, times ``first_lr_scale`` in pass 1.

        ``first_lr_scale`` (default 2 in the hand-over's consensus phase, 1 for consensus alone: config's
        HANDOVER_FIRST_LR_SCALE): on MNIST 10-class 60k the hand-over's pass 1 (one sweep, two shards averaged after
        every chunk) ended within ±0.002 of the 0.96 target whatever the seed at 1; twice the step size in pass 1
        raised its validation accuracy by +0.0029 to +0.0062 on seeds 0-5 (seeds16_s16.md) and left the kept model
        level at convergence (fls16_s16.md, fls17_s17.md)."""
        c = self.config
        scale = float(c.first_lr_scale) if k == 1 else 1.0
        return float(c.learning_rate) * float(c.lr_decay) ** (k - 1) * scale

    def steps_rule(self, state: LoopState) -> int:
        """Return the run's ``auto_steps`` (local_epochs 0): the one its carry stores, else this solver's for a fresh run.

        The rule is stored from iteration 0 on (:meth:`initialize`). A run store of older code (a pass
        done, no ``auto_steps`` in its carry) resumes with :data:`LEGACY_AUTO_STEPS`, the rule it was
        created with; one of older code stopped at iteration 0 (an empty carry) runs today's rule.
        """
        if "auto_steps" in state.carry:
            return int(np.asarray(state.carry["auto_steps"]).ravel()[0])
        return LEGACY_AUTO_STEPS if "rho" in state.carry else int(self.auto_steps)

    def alpha(self, runner=None, weights=None, k: int = 0, steps: int | None = None) -> float:
        """Return the weight decay α of pass k: ``alpha``, or for ``"auto"`` :meth:`held_out_alpha` at ``weights``.

        ``"auto"`` gives 0 without a pass in pass 1 when that pass sweeps once over each shard
        (a window, :func:`pass_window`, or one local epoch: large data): at the He-initialised hidden
        layers α said little, and the pass A cost 20-40 % of the first iteration (on a fresh cluster it
        is the first to read the chunks). Measured (2 workers, 3 passes, held-out accuracy): HIGGS-shaped
        1M 0.7686/0.7730/0.7744 with α of pass 1 = 1.9e-5 from pass A, 0.7686/0.7733/0.7744 with 0;
        MNIST odd/even and 10-class 60k (pass 1: one epoch) chose α = 0 in every pass anyway.
        Several local epochs (small data) keep pass A in pass 1.
        """
        alpha = getattr(self.config, "alpha", 0.0)
        if alpha != "auto":
            return float(alpha or 0.0)
        if runner is None or (k == 1 and self.one_sweep_first_pass(runner, steps)):
            return 0.0
        return self.held_out_alpha(runner, weights, k)

    def one_sweep_first_pass(self, runner, steps: int | None = None) -> bool:
        """Return True when pass 1 sweeps once over each shard's chunks (a window, or one local epoch: large data)."""
        return self.sweeps(runner, 1, self.first_chunks(runner), steps) is not None

    def sweeps(self, runner, k: int, first: int, steps: int | None = None) -> list[int] | None:
        """Return the chunks each shard's pass k reads once, or None when a shard runs several epochs (small data)."""
        bounds = list(getattr(runner, "bounds", ()))
        if not bounds:
            return None
        several = self.local_epochs(training_rows(runner), steps) > 1
        counts = []
        for group in shard_groups(len(bounds), max(1, int(self.config.shards))):
            count = pass_window(k, len(group), first)[1]
            if count == len(group) and several:
                return None
            counts.append(count)
        return counts

    def held_out_alpha(self, runner, weights, k: int) -> float:
        """Return ``α = α_L / n``: the output layer's ridge α chosen on held-out rows, per row of the mean loss.

        Gauss-Newton's pass A at the hidden layers of ``weights`` (over a seeded sample of
        the training chunks of at least :data:`ALPHA_SAMPLE_ROWS` rows, every chunk of smaller
        data, and the held-out rows; of each, at most :data:`ALPHA_CHUNK_ROWS` seeded rows:
        :meth:`alpha_chunk`) gives the sums of ``Σ‖T − W_L ã‖² + α_L‖W̃_L‖²``;
        its ridge path takes the α_L of least held-out error (GCV without held-out
        chunks: :meth:`GaussNewtonSolver.output_layer`). Divided by 2n that objective is
        the mean of ``½‖t − s‖²`` plus ``½(α_L/n)‖W̃_L‖²``: α_L / n is the weight decay of the mean loss.
        n is every training row, not the sample's: α_L, the ratio of noise to prior variance, does
        not shrink with the rows (measured on HIGGS-shaped 1M: α_L 425 from 8,192 rows, 240 from
        100,000), while dividing by the sample's rows made the decay 20 times that of the whole
        sample's (0.7566 vs 0.7651 after pass 1). Data whose sample is all its rows: the same α.
        """
        gn = self._ridge_path
        bounds = list(getattr(runner, "bounds", ()))
        m = sampling.initial_count(bounds, "grow", ALPHA_SAMPLE_ROWS) if bounds else 0
        chunks = sampling.sample(len(bounds), m, self.config.seed) if bounds else None
        sums, held = run_pass_held_out(runner, gn.forward_layout(False), "alpha_chunk",
                                       gn._forward_params(weights[:-1], False), k,
                                       **({} if chunks is None else {"chunks": chunks}))
        _, _, alpha_out = gn.output_layer(sums, held)
        n = training_rows(runner) if bounds else float(sums["n"])
        return self.auto_alpha_factor * float(alpha_out) / float(n)

    def alpha_chunk(self, x, y, state, start: int, params):
        """Gauss-Newton's pass A kernel (:meth:`held_out_alpha`) over at most :data:`ALPHA_CHUNK_ROWS` rows of the chunk.

        The rows are a seeded choice by (seed, the chunk's first row): whole chunks of a
        million-row store cost more than the Adam epoch (measured 2.3 vs 1.0 s per pass).
        """
        if len(y) > ALPHA_CHUNK_ROWS:
            rng = np.random.default_rng([int(self.config.seed), 0xA1FA, int(start)])
            rows = np.sort(rng.choice(len(y), ALPHA_CHUNK_ROWS, replace=False))
            x, y = x[rows], y[rows]
        return self._ridge_path.forward_chunk(x, y, state, start, params)

    def initialize(self, runner) -> LoopState:
        """Return θ̄⁰: Glorot-uniform weights and biases (``init`` glorot), else He-scaled with zero biases (``he-bias``:
        Glorot's random biases); no pass."""
        init = self.config.resolved_init()
        weights = self.glorot_weights(self.L) if init == "glorot" else self.he_weights(self.L, biases=init == HE_BIAS)
        return LoopState(0, weights, {"auto_steps": np.float64(self.auto_steps)})  # the run's steps rule, from the start

    def advance(self, runner, state: LoopState) -> tuple[LoopState, dict]:
        """Run one shard pass, take the consensus step; the dual step happens in the next shard pass."""
        k = state.iteration + 1
        rho = self.rho_at(k)
        center = self.flat.from_weights(state.weights)
        dual = self.config.consensus == "admm" and "rho" in state.carry
        scale = float(state.carry["rho"]) / rho if dual else 0.0
        read = state.iteration if "rho" in state.carry else None  # iteration 0 stores no shard state
        steps = self.steps_rule(state)
        alpha = self.alpha(runner, state.weights, k, steps)
        local = alpha if self.decay_in_shards else 0.0
        first = self.first_chunks(runner)
        rounds = self.rounds(runner, k, first, steps)
        epochs = self.local_epochs(training_rows(runner), steps) if getattr(runner, "bounds", None) else 1
        params = ShardParams(center, k, rho, scale, local, first, rounds, 0, self.lr_at(k), self.first_rows(k, first),
                             epochs)
        # one computation: round r's shard tasks start from round r−1's θ̄ and shard states (held in memory), and
        # with rows held out of every chunk (classification) the same graph scores the pass's θ̄ on them
        score = None
        if isinstance(getattr(runner, "split", None), RowSplit) and self.config.task != "regression":
            score = partial(self.network_of_sums, params, alpha - local)
        out = run_shard_rounds(runner, self.shard_layout(), "shard_kernel", params,
                               partial(self.round_params, params, alpha - local), rounds, k, read=read, write=k,
                               score=score)
        passes, held = out if score is not None else (out, None)
        totals = {}
        for sums in passes:
            for name in ("n", "loss", *self.task.score_shapes):
                totals[name] = totals.get(name, 0) + sums[name]
        n = float(sums["w"])
        theta_bar = consensus_step(sums["v"] / n, rho, alpha - local, self._bias)
        # primal residual Σ w_s‖θ_s − θ̄‖² from the sums, relative to ‖θ̄‖²
        spread = sums["theta_sq"] / n - 2.0 * float(theta_bar @ sums["theta"]) / n + float(theta_bar @ theta_bar)
        residual = float(np.sqrt(max(spread, 0.0) / max(float(theta_bar @ theta_bar), 1e-300)))
        score = f"train_{self.task.score_name}"
        metrics = {score: float(self.task.score({**sums, **totals})), "loss": float(totals["loss"]) / float(totals["n"]),
                   "residual": residual, "rho": rho, "alpha": alpha, "rounds": rounds,
                   "learning_rate": params.learning_rate, "local_epochs": epochs if self.sweeps(runner, k, first, steps) is None else 1}
        if held is not None:  # the driver then skips its own held-out scoring (the same rows, the same network)
            metrics[f"validation_{self.task.score_name}"] = score_from_sums(held)
        carry = {"rho": np.float64(rho), "auto_steps": np.float64(steps)}  # the run keeps the steps rule it was created with
        return LoopState(k, self.flat.to_weights(theta_bar), carry), metrics

    def resume(self, runner, state: LoopState, changed: set, history=()) -> LoopState:
        """Return ``state``: a changed ρ rescales the duals in the next shard pass (the carry holds the last ρ)."""
        return state

    def round_params(self, params: ShardParams, alpha: float, r: int, sums) -> ShardParams:
        """Return round r's parameters: θ̄ of round r−1's packed shard sums (the consensus step), u_s of that round.

        Runs where the runner puts it (in each of the next round's shard tasks in the pipeline): the same function
        on the same sums as the client's step after the last round, so both runners give the same bytes.
        """
        s = self.shard_layout().unpack(sums)
        center = consensus_step(s["v"] / float(s["w"]), params.rho, alpha, self._bias)
        return replace(params, center=center, round=r, dual_scale=1.0 if self.config.consensus == "admm" else 0.0)

    def network_of_sums(self, params: ShardParams, alpha: float, sums):
        """Return the network of θ̄ from the last round's packed shard sums (its held-out score is taken in the pass).

        θ̄ is :meth:`round_params`' consensus step, the one the client takes; the link is the consensus
        solver's (a hand-over's consensus phase too).
        """
        center = self.round_params(params, alpha, params.round, sums).center
        link = replace(self.config, solver=ConsensusSolver.name).output_link()
        return Network(self.flat.to_weights(center), self.config.activation, self.classes, self.x_mean, self.x_scale,
                       self.dtype.type, self.task.y_mean, self.task.y_scale, self.layers, link)

    def first_chunks(self, runner) -> int:
        """Return the chunks per shard of pass 1: ``first_pass_rows`` over the shards, in whole chunks (0: whole epochs)."""
        rows, bounds = int(self.config.first_pass_rows), list(getattr(runner, "bounds", ()))
        if not rows or not bounds:
            return 0
        mean = sum(b - a for a, b in bounds) / len(bounds)
        return max(1, math.ceil(rows / (mean * max(1, int(self.config.shards)))))

    def first_rows(self, k: int, first: int) -> int:
        """Return the rows each shard's pass 1 reads when its window is one chunk: ``first_pass_rows`` over the shards (0: all).

        The first rows of the chunk's seeded minibatch order (a seeded subset); a chunk with no more
        rows than that is read whole. Large chunks (HIGGS-shaped 1M: ~125,000 rows) would otherwise make
        pass 1 read far more than ``first_pass_rows`` (in memory, one pass over 98,304 rows: held-out
        accuracy 0.7639; 235,000 rows, the whole first chunks: 0.7716 at 2.4 times the Adam steps).
        """
        if k != 1 or first != 1 or not self.config.first_pass_rows:
            return 0
        return -(-int(self.config.first_pass_rows) // max(1, int(self.config.shards)))

    def rounds(self, runner, k: int, first: int, steps: int | None = None) -> int:
        """Return the averaging rounds of pass k: with ``averaging`` chunk, one per chunk of the largest shard's window.

        A pass of several local epochs over whole shards (small data) averages once (1).
        """
        counts = self.sweeps(runner, k, first, steps) if self.config.averaging == "chunk" else None
        return max(counts) if counts else 1

    def local_epochs(self, rows: int, steps: int | None = None) -> int:
        """Return the Adam epochs of every shard's pass over data of ``rows`` training rows (all shards together).

        ``local_epochs``, or if 0 ``⌈steps · batch_size / rows⌉``, at least 1 (``steps``: the run's
        :meth:`steps_rule`, None: ``auto_steps``): each pass reads at least ``steps`` minibatches over all
        shards, so the in-memory run (one shard) and the pipeline (one per worker) take the same epochs per
        pass, and the run's 20 passes at least 20·steps minibatches. ``rows`` is the data set's, so the
        epochs are fixed for the run.
        """
        c = self.config
        if c.local_epochs:
            return int(c.local_epochs)
        steps = int(self.auto_steps if steps is None else steps)
        return max(1, -(-steps * int(c.batch_size) // max(1, int(rows))))

    # -- shard side (pure NumPy: the shard's chunks in, its state and sums out) -------------
    def shard_kernel(self, chunks, state, shard: int, p: ShardParams):
        """Run ``local_epochs`` epochs of minibatch Adam on ``f_s + ρ/2‖θ − θ̄ + u_s‖²`` from θ̄ over the shard.

        While :func:`pass_window` gives fewer than all of its chunks, one sweep over those chunks instead.

        ``chunks`` has ``len(chunks)`` chunks, ``chunks.n_rows()`` rows and ``chunks.read(i) -> (x_raw, y)``
        (``x_raw[rows]`` is all the kernel takes of x_raw: an array, or the pipeline's view of a chunk's training rows);
        ``state`` is the shard's per-shard state of the last pass (None on the first).
        Returns (new per-shard state, sums of :meth:`shard_layout`).
        """
        c, dt, P = self.config, self.dtype, self.flat.size
        u = 0.0
        if state is not None and p.dual_scale:
            u = (np.asarray(state["v"], np.float64) - p.center) * p.dual_scale
        theta = p.center.astype(dt)
        anchor = (p.center - u).astype(dt)
        rho = dt.type(p.rho)
        decay = (p.alpha * ~self._bias).astype(dt) if p.alpha else None  # α on the weights, not the biases
        if state is None or not self.carry_moments:
            adam = Adam(P, dt)
        else:
            adam = Adam(P, dt, m=state["m"], v=state["s"], t=int(np.asarray(state["t"]).ravel()[0]))
        grad, prox = np.empty(P, dt), np.empty(P, dt)
        n, loss, parts = 0, 0.0, {}
        B = int(c.batch_size)
        lr = c.learning_rate if p.learning_rate is None else p.learning_rate
        start, count = pass_window(p.iteration, len(chunks), p.first_chunks)
        if p.rounds > 1:  # round r of a one-sweep pass: the window's chunk r (none: this shard's window is shorter)
            rng = np.random.default_rng([c.seed, p.iteration, shard, p.round])
            epochs, sweep = 1, [p.round] if p.round < count else []  # none: θ_s = θ̄ (a step over no rows)
        else:
            rng = np.random.default_rng([c.seed, p.iteration, shard])
            epochs = p.epochs if count == len(chunks) else 1  # a window: one sweep
            sweep = range(count)
        subsets = {}  # pass 1 over one chunk: chunk j's rows, drawn in the first local epoch
        with np.errstate(all="ignore"):  # overflow shows up as non-finite sums, reported by the loop
            for epoch in range(epochs):
                last = epoch == epochs - 1
                for j in sweep:
                    x_raw, y = chunks.read((start + j) % len(chunks))
                    if p.first_rows and j in subsets:  # the same seeded subset in every local epoch, reordered
                        order = subsets[j][rng.permutation(len(subsets[j]))]
                    else:
                        order = rng.permutation(len(y))
                        if p.first_rows:  # pass 1 over one chunk: a seeded subset of its rows
                            order = subsets[j] = order[:p.first_rows]
                    for b0 in range(0, len(order), B):
                        rows = order[b0:b0 + B]
                        x = standardize(x_raw[rows], self.x_mean, self.x_scale, dt)
                        t = self.task.targets(y[rows], dt)
                        batch_loss, s = gradient(theta, self.flat, self.act, self.loss_kind, x, t, grad)
                        if rho:
                            np.subtract(theta, anchor, out=prox)
                            prox *= rho
                            grad += prox
                        if decay is not None:
                            np.multiply(theta, decay, out=prox)
                            grad += prox
                        if last:  # the running loss and score of the last local epoch, before each step
                            n += len(rows)
                            loss += batch_loss
                            for name, value in self.task.score_parts(s, y[rows]).items():
                                parts[name] = parts.get(name, 0) + value
                        adam.step(theta, grad, lr)
        theta64 = theta.astype(np.float64)
        v = theta64 + u
        new_state = {"v": v, "m": adam.m.astype(np.float64), "s": adam.v.astype(np.float64),
                     "t": np.array([float(adam.t)])}
        w = float(chunks.n_rows())  # the shard's weight n_s: the same every pass and round, so Σ_s w_s u_s stays 0
        sums = self.shard_layout().pack({"n": n, "loss": loss, **parts, "w": w, "v": w * v, "theta": w * theta64,
                                         "theta_sq": w * float(theta64 @ theta64)})
        return new_state, sums
