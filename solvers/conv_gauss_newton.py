"""Gauss-Newton for networks with convolutions and pooling: Kronecker-factored curvature for convolutions (KFC).

The client step is the dense solver's (:mod:`solvers.gauss_newton`: the
output layer's exact ridge solve with α, Levenberg–Marquardt damping and
acceptance, progressive sampling); this module gives its chunk kernels for
``--layers`` with convolutions (:mod:`solvers.conv`) and poolings
(:mod:`solvers.pooling`). Layer l maps ``a_{l−1}`` to ``z_l = P_l Wᵀ`` with
``P_l`` its input rows ``[p, 1]``: the im2col patches of every output position
(a dense layer: the sample itself), and ``a_l = pool(h(z_l))``.

Following Grosse & Martens (ICML 2016), a convolution's Gauss-Newton block is
``Σ_i Σ_{t,t'} J_itᵀJ_it' ⊗ p_it p_it'ᵀ ≈ (S/|T|) ⊗ G / n`` under their
independence of activations and derivatives, spatial homogeneity and
spatially uncorrelated derivatives, with the two factors summed over samples
i and output positions t:

* input factor ``G_{l−1} = Σ_i Σ_t [p, 1][p, 1]ᵀ`` (the patch Gram of the ADMM W-solve);
* output factor ``S_l = Σ_k Σ_i Σ_t J_{k,i,t}ᵀ J_{k,i,t}`` (``C_out × C_out``) with
  ``J_{k,l} = ∂ out_k / ∂z_l`` back-propagated from each output k:
  ``J_{k,L−1} = M_{L−1} ⊙ poolᵀ(W̃_L[k])``, ``J_{k,l} = M_l ⊙ poolᵀ(T_{l+1}ᵀ J_{k,l+1})``
  (``M = h'(z)``, ``T_{l+1}ᵀ`` the next layer's adjoint: col2im for a
  convolution); |T| is the layer's number of output positions (1 for a dense
  layer, where this is the dense solver's S exactly);
* gradient ``D_l = Σ_i Σ_t δ_itᵀ [p, 1]`` with ``δ`` back-propagated like J from the residual ``T − out``.

S is exact for the last hidden layer; below it, where back-propagating K
Jacobians through every convolution costs K backward passes, each sample
carries one signed sum ``J_v = Σ_k v_k J_k`` (``v`` ±1, seeded per row and
weights): ``E[J_vᵀJ_v] = Σ_k J_kᵀJ_k``, K-FAC's sampled curvature for the
squared loss, at the cost of one backward pass.

Defaults that differ from dense layers (measured on a 20k/5k MNIST split of the
training rows, ``benchmarks/results/conv_defaults_s5.md``): the ``rotate``
sample schedule over windows of 6000 rows (:mod:`solvers.sampling`); α auto
the least α the held-out rows cannot tell from the best, moving at most ×/÷ 2
per iteration (:meth:`ConvGaussNewtonSolver.output_layer`);
λ set by the reduction ratio with a floor of 0.5 (:meth:`ConvGaussNewtonSolver.advance`).

The step is the dense one with ``S_l/|T|`` for ``S_l``
(:meth:`ConvGaussNewtonSolver.curvatures`). Patches are built per row tile
inside the chunk task and never stored; pass B's tiles are sized by the K
back-propagated Jacobians of their curvature rows (:data:`CURVATURE_TILE_BYTES`).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, fields

import numpy as np

from solvers.errors import InputError
from solvers.activation_cache import CACHE, OUTPUTS
from solvers.gauss_newton import DAMPING_SHRINK, CurvatureParams, ForwardParams, GaussNewtonSolver, _rows_key
from solvers.linalg import RidgePath, affine, cross_with_bias, gram_with_bias, quadratic_error, times
from solvers.stats import StatsLayout
from solvers.tiling import row_tiles

RATIO_HIGH = 0.75    # reduction ratio above which λ halves after an accepted step
RATIO_LOW = 0.25     # ... at or below which λ doubles (between: λ stays)
CONV_DAMPING_FLOOR = 0.5  # λ never drops below this after an accepted step (MNIST: accepted λ settled at 1-6; halved
# down to 0.025, three rejections followed: benchmarks/results/conv_defaults_s5.md)
CURVATURE_EVERY = 4  # the curvature factors S_l, G_{l−1} (pass B's G_0 too) are summed over every 4th row (by row index)
ALPHA_STEP = 2.0  # alpha auto: α moves at most ×/÷ this from one iteration to the next
ALPHA_TOLERANCE = 1.0  # alpha auto: the least α whose held-out error is within (1 + this/√n_held) of the least
CURVATURE_TILE_BYTES = 16 * 2 ** 20  # pass B's tiles: K back-propagated Jacobians of their curvature rows at most this
# (float32); measured best of 8, 16, 32 and 64 MiB (benchmarks/results/conv_profile_s5.md)


def layer_rows(layer, a):
    """Return the rows the layer's weights multiply: a convolution's im2col patches with a ones column ``[P, 1]``, else ``a``."""
    return a if layer.is_dense else layer.patches(a, ones=True)


def rows_affine(layer, P, W):
    """Return ``z = [P, 1] Wᵀ`` for rows from :func:`layer_rows` (one product when the ones column is in P)."""
    return affine(P, W) if layer.is_dense else P @ W.astype(P.dtype, copy=False).T


def rows_gram(layer, P):
    """Return ``Σ [p, 1][p, 1]ᵀ`` (float64) for rows from :func:`layer_rows`."""
    return gram_with_bias(P) if layer.is_dense else (P.T @ P).astype(np.float64)


def rows_cross(layer, d, P):
    """Return ``Σ dᵀ[p, 1]`` (float64) for rows from :func:`layer_rows`.

    Patches built as ``Pᵀ`` (:meth:`~solvers.conv.Conv2D.patches`, Fortran order) take ``(Pᵀ d)ᵀ``:
    BLAS runs that shape 2.2x faster there, and ``dᵀP`` 1.1x faster on C-ordered patches.
    """
    if layer.is_dense:
        return cross_with_bias(d, P)
    return ((P.T @ d).T if P.flags.f_contiguous else d.T @ P).astype(np.float64)


def layer_back(layer, g, W):
    """Return ``T_lᵀ g`` (no bias) for rows ``g`` of ``z_l`` values: the input-side product of back-propagation."""
    return times(g, W[:, :-1].astype(g.dtype, copy=False)) if layer.is_dense else layer.adjoint(g, W)


def positions(layer) -> int:
    """Return |T|: a convolution's output positions, 1 for a dense layer."""
    return 1 if layer.is_dense else layer.positions


@dataclass(frozen=True)
class ConvForwardParams(ForwardParams):
    """Pass A's broadcast, and whether its training rows keep their forward pass for pass B (see ``_forward_params``)."""

    keep_train: bool = True


def _subsample_scale(curv: dict) -> float:
    """Return ``n / n_curv``: all rows over the rows the curvature factors were summed on."""
    return float(curv["n"]) / max(float(curv["n_curv"]), 1.0)


class ConvGaussNewtonSolver(GaussNewtonSolver):
    """Gauss-Newton with KFC curvature for ``--layers`` holding convolutions and poolings (client step inherited)."""

    convolutional = True
    defer_curvature = True  # report and commit an accepted step before pass B (conv_s8.md)

    def __init__(self, config, n_features: int, classes, x_mean, x_scale, dtype=np.float32, y_mean=None,
                 y_scale=None):
        super().__init__(config, n_features, classes, x_mean, x_scale, dtype, y_mean, y_scale)
        if config.loss not in ("auto", "squared"):
            raise InputError(f"gauss-newton with convolutions fits the squared loss; --loss {config.loss} needs "
                             "--solver admm (and no pooling)")
        K = self.widths[-1]
        per_row = max(max(positions(m) * m.fan_in, m.n_out) for m in self.layers)
        self.curvature_every = CURVATURE_EVERY
        # passes A and B walk the same tiles, so that pass B can take pass A's activations (solvers.activation_cache)
        self.curvature_rows = min(self.tile_rows, max(1, self.curvature_every * CURVATURE_TILE_BYTES // (4 * K * per_row)))
        self.part_rows = self.curvature_rows  # a window of fewer chunks than workers is cut in whole tiles (solvers.loop.chunk_parts)

    # -- layouts ----------------------------------------------------------------------------
    def _gram_shape(self, l: int) -> tuple:
        return (self.layers[l - 1].fan_in + 1,) * 2

    def forward_layout(self, input_gram: bool) -> StatsLayout:
        """Return pass A's sums: Σ ã_{L−1}ã_{L−1}ᵀ, Σ T ã_{L−1}ᵀ, Σ‖T‖² (and the first layer's patch Gram if asked)."""
        L = self.L
        shapes = {"n": (), "tt": (), f"gram{L}": self._gram_shape(L), f"cross{L}": self.layers[L - 1].weight_shape}
        if input_gram and L > 1:
            shapes["gram1"] = self._gram_shape(1)
        return StatsLayout(shapes)

    def curvature_layout(self, input_gram: bool = False) -> StatsLayout:
        """Return pass B's sums: score, error, and per hidden layer S_l (C_out²), D_l and G_{l−1} (patch Grams)."""
        L = self.L
        shapes = {"n": (), "n_curv": (), **self.task.score_shapes, "loss": ()}
        if input_gram and L > 1:
            shapes["gram1"] = self._gram_shape(1)
        for l in range(1, L):
            out = self.layers[l - 1].weight_shape
            shapes[f"curv{l}"] = (out[0], out[0])
            shapes[f"grad{l}"] = out
            if l > 1:
                shapes[f"gram{l}"] = self._gram_shape(l)
        return StatsLayout(shapes)

    def curvatures(self, weights, curv: dict) -> list:
        """Return the output factors ``(n / n_curv) S_l / |T_l|`` (KFC's Γ: the mean over output positions).

        ``n / n_curv`` scales the sums over the rows of the curvature subsample to all rows.
        """
        scale = _subsample_scale(curv)
        return [np.asarray(curv[f"curv{l}"], np.float64) * (scale / positions(self.layers[l - 1]))
                for l in range(1, self.L)]

    def trial_weights(self, weights, curv: dict, input_gram, damping: float, alpha: float = 0.0) -> list:
        """Return the dense solver's trial with the input factors ``G_{l−1}`` (l > 1) scaled by ``n / n_curv``."""
        scale = _subsample_scale(curv)
        curv = {**curv, **{f"gram{l}": np.asarray(curv[f"gram{l}"]) * scale for l in range(2, self.L)}}
        return super().trial_weights(weights, curv, input_gram, damping, alpha)

    def _curvature_pass(self, runner, weights, objective: float, k: int, sample: dict, alpha: float,
                        new_sample: bool = False, grown: tuple | None = None, score_held: bool = True) -> dict:
        """Return the dense solver's pass B entries, a new sample's input factor ``G_0`` scaled by ``n / n_curv``.

        Pass B sums ``G_0`` (the first layer's patch Gram) over the curvature subsample, as ``G_{l−1}``:
        over every row it was a tenth of pass B's CPU on MNIST, and a rotate window is a new sample every
        iteration. Initialisation's ``G_0`` (pass A's) is summed over every row.
        """
        out = super()._curvature_pass(runner, weights, objective, k, sample, alpha, new_sample, grown, score_held)
        if new_sample and self.L > 1:
            out["input_gram"] = np.asarray(out["input_gram"]) * _subsample_scale(self.curvature_layout().unpack(out["curvature"]))
        return out

    def output_layer(self, sums: dict, held: dict | None = None, carry: dict | None = None):
        """Return ``W_L(α)``, its training error and α; α auto: the least α of the grid the held-out rows cannot tell from the best.

        α auto takes the smallest α of :meth:`RidgePath.grid` whose held-out
        error is within ``(1 + c/√n_held)`` of the least (c = :data:`ALPHA_TOLERANCE`;
        the one-standard-error kind of choice, towards less weight decay: the
        step's own Levenberg–Marquardt damping regularises it). On a 20k/5k MNIST
        split of the training rows it chose 0 throughout and reached 0.98 in 18.6
        CPU s against 28.1 for the least held-out error (α ≈ 13–15) and 21.6 for α = 3
        (``benchmarks/results/conv_defaults_s5b.md``, ``conv_defaults_s5.md``). Then, from the second choice
        on, α moves at most ×/÷ :data:`ALPHA_STEP` per iteration (a swing changes the
        objective the LM test compares and the damping the step was computed for;
        the least-error choice swung between 0 and 158, ``conv_gn_tuning_20k.md``).
        """
        if self.config.alpha != "auto":
            return super().output_layer(sums, held, carry)
        L = self.L
        path = RidgePath(sums[f"cross{L}"], sums[f"gram{L}"], self.config.ridge, what=f"W_{L}")
        if held is None:
            alpha = super().output_layer(sums, held, carry)[2]
        else:
            errors = [(float(a), quadratic_error(path.weights(a), held[f"cross{L}"], held[f"gram{L}"], float(held["tt"])))
                      for a in path.grid()]
            least = min(e for _, e in errors)
            bound = least * (1 + ALPHA_TOLERANCE / np.sqrt(max(float(held["n"]), 1.0)))
            alpha = min(a for a, e in errors if e <= bound)
        if carry is not None and float(carry.get("alpha", 0.0)) > 0:
            prev = float(carry["alpha"])
            alpha = min(max(alpha, prev / ALPHA_STEP), prev * ALPHA_STEP)
        W = path.weights(alpha)
        return W, quadratic_error(W, sums[f"cross{L}"], sums[f"gram{L}"], float(sums["tt"])), alpha

    # -- damping by the reduction ratio --------------------------------------------------------
    def _with_trial(self, state):
        """Set the trial weights (the dense solver's step) and ``predicted``: the decrease the quadratic model promises.

        ``pred = Σ_l 2⟨D_l − αW̃_l, s_l⟩ − ⟨s_l, S_l s_l G_{l−1}⟩/n − α‖s̃_l‖²`` for the hidden steps ``s_l``
        (the Gauss-Newton model of E with the KFC curvature ``S_l ⊗ G_{l−1}/n``, undamped).
        """
        state = super()._with_trial(state)
        c = state.carry
        curv = self.curvature_layout().unpack(c["curvature"])
        n, alpha, scale = float(curv["n"]), float(c.get("alpha", 0.0)), _subsample_scale(curv)
        pred = 0.0
        for l, S in enumerate(self.curvatures(state.weights, curv), start=1):
            W = np.asarray(state.weights[l - 1], np.float64)
            step = np.asarray(c[f"T{l}"], np.float64) - W
            G = np.asarray(c["input_gram"] if l == 1 else np.asarray(curv[f"gram{l}"]) * scale, np.float64)
            D = np.array(curv[f"grad{l}"], np.float64)
            D[:, :-1] -= alpha * W[:, :-1]
            pred += 2 * np.sum(D * step) - np.sum(step * (S @ step @ G)) / max(n, 1.0) - alpha * np.sum(step[:, :-1] ** 2)
        c["predicted"] = np.float64(pred)
        return state

    def advance(self, runner, state):
        """The dense solver's iteration, with λ after an accepted step set by the reduction ratio ρ = actual / predicted.

        ρ > :data:`RATIO_HIGH`: λ ← λ/2 (the dense rule); :data:`RATIO_LOW` < ρ ≤ RATIO_HIGH: λ stays;
        ρ ≤ RATIO_LOW: λ ← 2λ (Moré's Levenberg–Marquardt control), never below :data:`CONV_DAMPING_FLOOR`.
        A rejected step still gives λ ← 4λ. The halving after every accepted step made half the trials
        of a conv run rejections. ρ's actual decrease is taken at the trial's α (alpha auto may move it).
        """
        state = self.prepare(runner, state)  # the pass B the last iteration deferred: the trial and its prediction
        damping, predicted = float(state.carry["damping"]), float(state.carry.get("predicted", 0.0))
        new, metrics = super().advance(runner, state)
        if metrics["accepted"] and predicted > 0:
            current = self._current_objective(state, dict(state.carry), metrics["alpha"])  # at the trial's α
            rho = (current - metrics["trial_loss"] * metrics["sample_rows"]) / predicted
            lam = damping / DAMPING_SHRINK if rho > RATIO_HIGH else damping if rho > RATIO_LOW else 2 * damping
            lam = max(lam, CONV_DAMPING_FLOOR)
            metrics["reduction_ratio"] = float(rho)
            if lam != float(new.carry["damping"]):
                new.carry["damping"] = np.float64(lam)
                metrics["damping"] = lam
                if not float(new.carry.get("pending", 0.0)):  # else pass B's prepare sets the trial at this λ
                    new = self._with_trial(new)
        return new, metrics

    # -- chunk side ---------------------------------------------------------------------------
    def _forward_tile(self, x, hidden, back: bool = True):
        """Return the tile's ``(rows P_l, slopes, pooling masks, outputs a_l)`` of every hidden layer.

        ``slopes[l]`` is what :meth:`_back` needs for ``h'(z_l)``: ``z_l`` in general; with ReLU
        (``h'(z) = 1[z > 0]``, z not kept, ReLU applied in place) ``a_l``'s positivity, or nothing
        after a max pooling, whose masks then carry it (:meth:`_back`). ``back``: keep what
        back-propagation needs (a forward pass alone keeps no masks, and with ReLU under a max pooling
        pools before the ReLU).
        """
        a, rows, slopes, masks, acts = x, [], [], [], []
        relu = self.act.name == "relu"
        for layer, W in zip(self.layers, hidden):
            P = layer_rows(layer, a)
            zl = rows_affine(layer, P, W).reshape(len(a), layer.n_out)
            mask = None
            if relu and not back and layer.post is not None and layer.post.mode == "max":
                a = layer.post.apply(zl)  # a forward pass alone: ReLU after the max pooling (both monotone: the
                slope = np.maximum(a, 0, out=a)  # same values), on a k²-th of the values
            else:
                a = np.maximum(zl, 0, out=zl) if relu else self.act.h(zl)
                slope = a if relu else zl
                if layer.post is not None:
                    pooled, mask = layer.post.forward(a, back)
                    if relu and mask is not None:  # max pooling: the masks carry 1[z > 0] (_back)
                        mask &= (pooled > 0).reshape(mask.shape[1:])
                        slope = None
                    a = pooled
            rows.append(P)
            slopes.append(slope if back else None)
            masks.append(mask)
            acts.append(a)
        return rows, slopes, masks, acts

    def _kept_forward(self, x, kept):
        """Return :meth:`_forward_tile`'s tuple from the ``(a_l…, slopes…, masks…)`` pass A kept: the patches rebuilt."""
        H = self.L - 1
        acts, slopes, masks = list(kept[:H]), list(kept[H:2 * H]), list(kept[2 * H:])
        rows = [layer_rows(layer, a) for layer, a in zip(self.layers[:H], (x, *acts[:-1]))]
        return rows, slopes, masks, acts

    def forward_chunk(self, x_raw, y, state, start_row: int, p: ForwardParams, held: bool = False):
        """Return (None, pass A sums): Σ ã_{L−1}ã_{L−1}ᵀ, Σ T ã_{L−1}ᵀ, Σ‖T‖² (and Σ [p, 1][p, 1]ᵀ of layer 1 if asked).

        With ``p.key`` each tile's forward pass goes to the activation caches: training rows that pass B reads
        next keep what it back-propagates through (``a_l``, slopes, pooling masks; ~12 KB a MNIST row for the
        README's network), so that pass B at these hidden weights (an accepted trial) starts from them; every
        row keeps ``a_{L−1}`` (:data:`~solvers.activation_cache.OUTPUTS`, ~1 KB a row) for the scores of an
        accepted trial (:meth:`score_chunk`, :meth:`curvature_chunk_held`). Tiles of :attr:`curvature_rows` rows, pass B's.
        """
        L = self.L
        layout = self.forward_layout(p.input_gram)
        rows_key = _rows_key(x_raw, start_row, held) if p.key and L > 1 else None
        keep_back = rows_key is not None and not held and getattr(p, "keep_train", True)
        total = np.zeros(layout.size)
        with np.errstate(all="ignore"):
            for sl in row_tiles(x_raw.shape[0], self.curvature_rows):
                x = self.inputs(x_raw[sl])
                rows, slopes, masks, acts = self._forward_tile(x, p.hidden, back=keep_back)
                a = acts[-1]
                if keep_back:
                    CACHE.put((p.key, "train", rows_key, sl.start, sl.stop), (*acts, *slopes, *masks))
                if rows_key is not None:  # the side (training or held-out rows) is in rows_key
                    OUTPUTS.put((p.key, rows_key, sl.start, sl.stop), (a,))
                t = self.task.targets(y[sl], self.dtype)
                parts = {"n": x.shape[0], "tt": float(np.sum(t * t, dtype=np.float64)),
                         f"gram{L}": gram_with_bias(a), f"cross{L}": cross_with_bias(t, a)}
                if p.input_gram and L > 1:
                    parts["gram1"] = rows_gram(self.layers[0], rows[0])
                total += layout.pack(parts)
        return None, total

    def forward_chunk_held(self, x_raw, y, state, start_row: int, p: ForwardParams):
        """Return :meth:`forward_chunk` of held-out rows, keeping their ``a_{L−1}`` for their score (~1 KB a row)."""
        return self.forward_chunk(x_raw, y, state, start_row, p, held=True)

    def curvature_chunk_held(self, x_raw, y, state, start_row: int, p: CurvatureParams):
        """Return (None, the held-out rows' part of pass B): ``n`` and the score of the weights.

        Scored as :meth:`score_chunk` scores them (initialisation's pass B; later the score pass scores them).
        """
        return self._scores(x_raw, y, start_row, p, True, self.curvature_layout(getattr(p, "input_gram", False)))

    def score_chunk(self, x_raw, y, state, start_row: int, p: CurvatureParams, held: bool = False):
        """Return (None, ``n`` and the score sums of the weights ``p.weights``) over the rows: the score pass.

        ``a_{L−1}`` comes from :data:`~solvers.activation_cache.OUTPUTS` when pass A ran these rows at these
        hidden weights (an accepted trial), in the same tiles: the same numbers as recomputing them (which a miss does).
        """
        return self._scores(x_raw, y, start_row, p, held, StatsLayout({"n": (), **self.task.score_shapes}))

    def score_chunk_held(self, x_raw, y, state, start_row: int, p: CurvatureParams):
        """Return :meth:`score_chunk` of held-out rows (named as such in the cache, :func:`_rows_key`)."""
        return self.score_chunk(x_raw, y, state, start_row, p, held=True)

    def _scores(self, x_raw, y, start_row: int, p, held: bool, layout: StatsLayout):
        if not isinstance(p, CurvatureParams):
            p = CurvatureParams(tuple(p))
        rows_key = _rows_key(x_raw, start_row, held) if p.key and self.L > 1 else None
        total = np.zeros(layout.size)
        with np.errstate(all="ignore"):
            for sl in row_tiles(x_raw.shape[0], self.curvature_rows):
                kept = None if rows_key is None else OUTPUTS.get((p.key, rows_key, sl.start, sl.stop))
                a = kept[0] if kept is not None else \
                    self._forward_tile(self.inputs(x_raw[sl]), p.weights[:-1], back=False)[3][-1]
                total += layout.pack({"n": a.shape[0], **self.task.score_parts(affine(a, p.weights[-1]), y[sl])})
        return None, total

    def _forward_params(self, hidden, input_gram: bool, carry: dict | None = None) -> ForwardParams:
        """Return the dense solver's pass A broadcast, keeping the training rows' forward pass when pass B reads them next.

        Pass B at an accepted trial reads the next iteration's sample: at initialisation the same one, while
        growing (sample window −1) one that holds it, but on the ``rotate`` schedule's windows another one,
        so that a kept forward pass would only cost its pooling masks and memory.
        """
        p = super()._forward_params(hidden, input_gram, carry)
        keep = carry is None or float(carry.get("sample_window", -1)) < 0
        return ConvForwardParams(**{f.name: getattr(p, f.name) for f in fields(p)}, keep_train=keep)

    def _scores_held_out(self, runner) -> bool:
        """Return whether pass B also scores the held-out rows (:meth:`curvature_chunk_held`): a runner holding rows out."""
        return getattr(runner, "split", None) is not None

    def _back(self, l: int, g, masks, slopes):
        """Return ``M_l ⊙ poolᵀ(g)``: a product with ∂a_l/∂z_l (``g`` may hold one block per output).

        ReLU under a max pooling: ``M ⊙ poolᵀ(g) = poolᵀ(g)`` with the masks of the cells whose
        maximum is > 0 (the marked cell holds the window's maximum z, and ``h'(z) = 1[z > 0]``), so
        the masks :meth:`_forward_tile` folded it into are the whole product (``slopes[l]`` None).
        """
        layer = self.layers[l - 1]
        if layer.post is not None:
            g = layer.post.adjoint(g, masks[l - 1])
        slope = slopes[l - 1]
        if slope is None:
            return g
        return g * (slope > 0) if self.act.name == "relu" else g * self.act.dh(slope)

    def curvature_parts(self, x, y, weights, input_gram: bool, signs=None, first_row: int = 0, kept=None) -> dict:
        """Return pass B's sums over the rows ``x`` (standardised): S_l, D_l, G_{l−1}, the score and the error.

        ``signs`` (K × rows of ±1, or None: exact): below the last hidden layer
        the K Jacobians are replaced by one, ``J_v = Σ_k v_k J_k``; since
        ``E[v vᵀ] = I``, ``Σ J_vᵀJ_v`` is an unbiased estimate of ``Σ_k J_kᵀJ_k``
        at 1/K of the cost (K-FAC's sampled curvature, for squared loss).
        The factors S_l and G_{l−1} (``gram1`` too) are summed over the rows whose index
        ``first_row + i`` is a multiple of :attr:`curvature_every` (``n_curv`` of
        them; the gradient, loss and score over every row).
        ``kept``: the tile's forward pass as pass A kept it at these hidden weights (:meth:`forward_chunk`).
        """
        L, K, n = self.L, self.widths[-1], x.shape[0]
        rows, slopes, masks, acts = self._forward_tile(x, weights[:-1]) if kept is None else self._kept_forward(x, kept)
        a = acts[-1]
        out = affine(a, weights[-1])
        t = self.task.targets(y, self.dtype)
        r = t - out
        sub = slice((-first_row) % self.curvature_every, n, self.curvature_every)
        m = len(range(n)[sub])
        parts = {"n": n, "n_curv": m, "loss": float(np.sum(r * r, dtype=np.float64)), **self.task.score_parts(out, y)}

        def sampled(layer, P):  # the rows of P that belong to the curvature subsample
            return P[sub] if layer.is_dense else P.reshape(n, -1, P.shape[1])[sub].reshape(-1, P.shape[1])
        if input_gram and L > 1:
            parts["gram1"] = rows_gram(self.layers[0], sampled(self.layers[0], rows[0]))
        slopes_s = [None if v is None else v[sub] for v in slopes]
        masks_s = [None if v is None else v[:, sub] for v in masks]
        Wt_out = weights[-1][:, :-1].astype(self.dtype, copy=False)
        delta = times(r, Wt_out)                            # ∂(½‖r‖²)/∂a_{L−1}, negated
        J = np.broadcast_to(Wt_out[:, None, :], (K, m, Wt_out.shape[1]))  # ∂out_k/∂a_{L−1}, one block per k
        for l in range(L - 1, 0, -1):
            layer, W = self.layers[l - 1], weights[l - 1]
            c_out = layer.weight_shape[0]
            delta = self._back(l, delta, masks, slopes)
            J = self._back(l, J, masks_s, slopes_s)
            parts[f"grad{l}"] = rows_cross(layer, delta.reshape(-1, c_out), rows[l - 1])
            Jr = J.reshape(-1, c_out)
            parts[f"curv{l}"] = (Jr.T @ Jr).astype(np.float64)
            if l > 1:
                parts[f"gram{l}"] = rows_gram(layer, sampled(layer, rows[l - 1]))
                delta = layer_back(layer, delta, W)
                if signs is not None and len(J) > 1:  # one signed sum of the K Jacobians from here down
                    J = np.einsum("kn,kni->ni", signs[:, sub], J)[None]
                k = len(J)
                J = layer_back(layer, J.reshape(k * m, layer.n_out), W).reshape(k, m, layer.n_in)
        return parts

    def curvature_chunk(self, x_raw, y, state, start_row: int, p: CurvatureParams):
        """Return (None, pass B sums), tile by tile (:meth:`curvature_parts`)."""
        if not isinstance(p, CurvatureParams):
            p = CurvatureParams(tuple(p))
        layout = self.curvature_layout(p.input_gram)
        total = np.zeros(layout.size)
        key = zlib.crc32(np.ascontiguousarray(p.weights[-1]).tobytes())
        rows_key = _rows_key(x_raw, start_row, False) if p.key and self.L > 1 else None
        with np.errstate(all="ignore"):
            for sl in row_tiles(x_raw.shape[0], self.curvature_rows):
                first = start_row + sl.start
                signs = self.curvature_signs(first, sl.stop - sl.start, key)
                kept = None if rows_key is None else CACHE.get((p.key, "train", rows_key, sl.start, sl.stop))
                total += layout.pack(self.curvature_parts(self.inputs(x_raw[sl]), y[sl], p.weights, p.input_gram,
                                                          signs, first, kept))
        return None, total

    def curvature_signs(self, first_row: int, rows: int, key: int):
        """Return the ±1 signs ``v`` (K × rows) of rows ``first_row…`` (None when the network has no layer to sample).

        Seeded by (seed, first row, ``key``: a checksum of the output weights), so a
        pass at the same weights draws the same signs whatever the scheduling (resume is exact).
        """
        if self.L < 3 or self.widths[-1] == 1:
            return None
        rng = np.random.default_rng([self.config.seed, first_row, key])
        return (2 * rng.integers(0, 2, (self.widths[-1], rows), dtype=np.int8) - 1).astype(self.dtype)
