"""The model's output layer of the ADMM solvers under ``alpha="auto"``: the targets refitted on the hidden features.

ADMM and dlADMM fit their output weights to their own per-sample variables
(``z_L``, ``z_L + u/ρ``), not to the targets, and their W-solves' α cannot be
judged on held-out rows. Their model's output layer is therefore refitted
to the targets after every pass, on ``ã``, the forward pass of the
iteration's hidden weights, α chosen from a grid on the held-out rows. The
sums come from the pass the iteration makes anyway (its training chunks, and
the held-out rows run statelessly in the same pass), so no pass is added.
The solvers' own iterates are left as they are.

* **Classification: logistic (softmax) readout.** Every candidate ``V_j`` of
  the grid minimises ``F_j(V) = Σ ℓ(V ã, t) + α_j/2 ‖Ṽ‖²`` (ℓ: cross-entropy of
  σ(z − ½) for one unit, of the softmax for K units, :mod:`solvers.cross_entropy`;
  the bias spared; scikit-learn's ``LogisticRegression(C = 1/α)``). Each pass
  evaluates the candidates of the last step, ``V_j``, on the features ``ã``:
  held-out Σℓ, training gradient ``g_j = Σ (t − p_j) ãᵀ`` and the Gram
  ``G = Σ ã ãᵀ``; the model is the candidate of least held-out loss; each
  candidate then takes the majorise-minimise step (Böhning 1992)
  ``V_j ← V_j + (g_j − α_j Ṽ_j) (c G + α_j Ĩ)⁻¹``, with ``c G`` (``c = ¼`` one
  unit, ``½`` softmax) a bound on the Hessian ``Σ (diag p − p pᵀ) ⊗ ã ãᵀ``: a
  step never raises F_j on fixed features, the bound is the same for every
  candidate, so one eigendecomposition of the centred G serves the whole grid,
  and the fixed point is the regularised logistic fit. The steps are
  accelerated (FISTA in the bound's metric, restarted where a step turns back,
  :func:`accelerate`): the candidates evaluated next are the extrapolated
  points. The step from ``V = 0`` (p = 1/K) is ``1/c`` times the least-squares
  fit of ``t − 1/K``: the first candidates predict as the squared-loss refit
  does, later ones as logistic regression on ``ã``. The start ``V⁰`` is that step on the initial weights' features (the
  initialisation pass). The grid is ``α_j = ALPHA_GRID · c ḡ`` (ḡ the mean
  diagonal of the centred G). The outputs are logits: the model's link is
  ``logistic`` (:func:`link`).
* **Regression: ridge readout.** ``W_L(α) = C (G + α Ĩ)⁻¹`` from ``G = Σ ã ãᵀ``,
  ``C = Σ T ãᵀ``, α of least held-out squared error ``Σ‖T − W_L(α) ã‖²``: the
  Gauss-Newton solver's output solve (:class:`~solvers.linalg.RidgePath`).

**Skip path (``input_skip``).** The features may be ``[ã_{L−1}; a_0]``, the
last hidden layer's forward features and the (scaled) inputs: the model's
output layer is then ``z_L = V_h ã_{L−1} + V_x a_0 + b``, which contains the
input-linear model (``V_h = 0``: logistic or ridge regression on the inputs).
Nothing above changes but the width: G, the gradients g_j and the held-out
losses are sums over the wider features, one α_j penalises both blocks (the
grid scales with the mean diagonal of the whole centred G), and each
candidate is still the exact regularised fit on fixed features (the MM
steps' fixed point; the ridge readout's closed form ``C (G + α Ĩ)⁻¹``). The
solvers' iterations are untouched: Algorithm 1's (ADMM) and dlADMM's own
``W_L`` and ``z_L`` updates read ``a_{L−1}`` only, as in the papers; the skip
path exists in the model's refitted output layer alone (whose weight
matrix has ``n_{L−1} + d + 1`` columns, :func:`solvers.network.forward`).

With nothing held out (``validation_fraction=0``) there is no refit and the
model is the iterate: GCV on the training sums, the fallback of
:meth:`RidgePath.choose`, picks α ≈ 0 when the width nears the number of rows
(measured: breast cancer, 364 rows, 300 units, mean validation-split accuracy
0.848 over 10 splits, against 0.953 for the iterate).
"""
from __future__ import annotations

import numpy as np

from solvers import cross_entropy as ce
from solvers.errors import NumericalError
from solvers.linalg import ALPHA_GRID, RidgePath, affine, cross_with_bias, gram_with_bias

N_ALPHAS = len(ALPHA_GRID)  # candidates of the logistic readout


def bound(n_outputs: int) -> float:
    """Return c of the Hessian bound ``c I ⊗ G``: ¼ for one unit (σ' ≤ ¼), ½ for a softmax (Böhning 1992)."""
    return 0.25 if n_outputs == 1 else 0.5


def link(config, record: dict | None) -> str:
    """Return the link of a model whose history record is ``record``: logistic after a logistic refit."""
    if record is not None and record.get("readout") == "logistic":
        return "logistic"
    return config.output_link()


# -- ridge readout (regression) ---------------------------------------------------------
def shapes(n_features: int, n_outputs: int) -> dict:
    """Return the layout entries of the readout's sums for output layer inputs of width ``n_features``."""
    return {"out_gram": (n_features + 1,) * 2, "out_cross": (n_outputs, n_features + 1), "out_tt": ()}


def parts(a, t, known: int = 0) -> dict:
    """Return one tile's readout sums: ``Σ ã ãᵀ``, ``Σ T ãᵀ``, ``Σ‖T‖²`` of hidden features ``a`` and targets ``t``.

    ``known``: the last ``known`` columns are the inputs, whose Gram block the client adds (:func:`partial_gram`).
    """
    return {"out_gram": partial_gram(a, known), "out_cross": cross_with_bias(t, a),
            "out_tt": float(np.sum(t * t, dtype=np.float64))}


def partial_gram(f, known: int = 0):
    """Return ``Σ f̃ f̃ᵀ`` (``f̃ = [f, 1]``, float64) without the block of the last ``known`` columns and the bias.

    With the skip path ``f = [a_{L−1}, a_0]`` and that block is the constant input Gram ``Σ ã_0 ã_0ᵀ``
    over the same training rows, which the client adds (:func:`complete_gram`): a tile then costs
    ``n_{L−1}·(n_{L−1} + d)`` products per row instead of ``(n_{L−1} + d)²``.
    """
    if not known:
        return gram_with_bias(f)
    w, h = f.shape[1], f.shape[1] - known
    g = np.zeros((w + 1, w + 1))
    g[:h, :w] = f[:, :h].T @ f
    g[:h, w] = f[:, :h].sum(axis=0, dtype=np.float64)
    g[h:, :h] = g[:h, h:].T
    return g


def complete_gram(gram, input_gram, known: int):
    """Return the readout Gram of :func:`partial_gram` with the input Gram ``Σ ã_0 ã_0ᵀ`` added in its trailing block.

    ``input_gram`` must be the (``known`` + 1)² Gram of the ``known`` inputs and the bias (a patch Gram is not).
    """
    g = np.array(gram, np.float64)
    k = known + 1
    if np.shape(input_gram) != (k, k):
        raise ValueError(f"the skip path needs the {k} x {k} input Gram, got one of shape {np.shape(input_gram)}")
    g[-k:, -k:] += np.asarray(input_gram, np.float64)
    return g


def fit(sums: dict, held: dict | None, ridge: float, *, what: str = "output layer") -> tuple[np.ndarray, float]:
    """Return (``W_L(α)``, α): α of least held-out error (``held``: the held-out rows' sums; None: GCV, unused)."""
    path = RidgePath(sums["out_cross"], sums["out_gram"], ridge, what=what)
    held_sums = None if held is None else (held["out_cross"], held["out_gram"], float(held["out_tt"]))
    alpha, W, _ = path.choose(float(sums["out_tt"]), held_sums)
    return W, alpha


# -- logistic readout (classification) --------------------------------------------------
def logistic_shapes(n_features: int, n_outputs: int, refit: bool = False) -> dict:
    """Return the layout entries of the logistic readout's sums: G, the J candidates' gradients and losses.

    ``refit``: also the gradients of the J refitted candidates (``lr_grad_all``) and the held-out rows' correct
    predictions of the J candidates R (``lr_correct``, :func:`logistic_parts`).
    """
    out = {"out_gram": (n_features + 1,) * 2, "lr_grad": (N_ALPHAS * n_outputs, n_features + 1),
           "lr_loss": (N_ALPHAS,)}
    if refit:
        out.update(lr_grad_all=out["lr_grad"], lr_correct=(N_ALPHAS,))
    return out


def block_probabilities(Z, n_outputs: int):
    """Return ``p`` of every block of ``Z = [z⁽¹⁾ … z⁽ᴶ⁾]`` (n × J·K): σ(z − ½) for K = 1, softmax per block."""
    if n_outputs == 1:
        s = np.minimum(-(Z - Z.dtype.type(ce.SHIFT)), 80)
        return 1 / (1 + np.exp(s))
    Zr = Z.reshape(Z.shape[0], -1, n_outputs)
    e = np.exp(Zr - Zr.max(axis=2, keepdims=True))
    return (e / e.sum(axis=2, keepdims=True)).reshape(Z.shape)


def logistic_parts(a, t, stack, *, held_out: bool = False, known: int = 0, refit: bool = False) -> dict:
    """Return one tile's sums for the candidates ``stack`` (J·K × width+1): Σℓ per candidate; training rows also G and g_j.

    ``g_j = Σ (t − p_j) ãᵀ`` (the negative gradient of Σℓ), ``G = Σ ã ãᵀ`` (without the block of the last
    ``known`` columns, :func:`partial_gram`); held-out rows only the losses.
    ``refit`` (``readout_refit``): ``stack`` is ``[R; S]`` (2·J·K rows, :func:`broadcast`) and every row, held out
    or not, also gives the gradients ``lr_grad_all`` of the refitted candidates S; held-out rows also their whole
    Gram (``known`` is 0 there), so that S's steps are taken on all rows, and R's correct predictions
    (``lr_correct``): the model S_j has seen the held-out rows, so its held-out accuracy is R_j's.
    """
    K = t.shape[1]
    JK = stack.shape[0] // (2 if refit else 1)
    Z = affine(a, stack)
    out = {"lr_loss": ce.block_losses(Z[:, :JK], t)}
    if refit:
        out["lr_grad_all"] = cross_with_bias(np.tile(t, (1, JK // K)) - block_probabilities(Z[:, JK:], K), a)
    if held_out:
        if refit:
            out.update(out_gram=partial_gram(a), lr_correct=candidates_correct(Z[:, :JK], t))
        return out
    residual = np.tile(t, (1, JK // K)) - block_probabilities(Z[:, :JK], K)
    out.update(out_gram=partial_gram(a, known), lr_grad=cross_with_bias(residual, a))
    return out


def candidates_correct(Z, t) -> np.ndarray:
    """Return each candidate's number of correct predictions (:func:`solvers.losses.predict_classes`) of its block of ``Z``."""
    K = t.shape[1]
    if K == 1:
        return np.sum((Z > 0.5) == (t > 0.5), axis=0, dtype=np.int64).astype(np.float64)
    truth = np.argmax(t, axis=1)
    return np.sum(np.argmax(Z.reshape(Z.shape[0], -1, K), axis=2) == truth[:, None], axis=0).astype(np.float64)


def logistic_alphas(gram, n_outputs: int) -> np.ndarray:
    """Return the candidates' α: ``ALPHA_GRID · c ḡ`` (ḡ the mean diagonal of the centred ``gram``; 1 if it is 0)."""
    g = np.asarray(gram, np.float64)
    n = g[-1, -1]
    gbar = float(np.mean(np.diag(g)[:-1] - g[:-1, -1] ** 2 / n)) if n > 0 and len(g) > 1 else 0.0
    return ALPHA_GRID * bound(n_outputs) * (gbar if gbar > 0 else 1.0)


def mm_step(stack, grad, gram, alphas, ridge: float, *, what: str = "output refit") -> np.ndarray:
    """Return every candidate after one step ``V_j + (g_j − α_j Ṽ_j)(c G + (α_j + ε c ḡ) Ĩ)⁻¹`` (``stack``: J × K × width+1).

    With ``G = [[G_a, s], [sᵀ, n]]``, a row ``[x, β]`` of the step solves
    ``x (c G_c + (α + ε c ḡ) I) = r − r_b sᵀ/n`` (``G_c = G_a − s sᵀ/n``) and
    ``β = (r_b/c − x s)/n``, ``r`` the row of ``g_j − α_j Ṽ_j``; one
    eigendecomposition of ``G_c`` serves all J. A gram of no rows leaves the candidates as they are.
    """
    stack = np.asarray(stack, np.float64)
    J, K, width = stack.shape
    g = np.asarray(gram, np.float64)
    grad = np.asarray(grad, np.float64).reshape(J, K, width)
    alphas = np.asarray(alphas, np.float64)
    if alphas.shape != (J,):
        raise ValueError(f"{what}: {alphas.size} alphas for {J} candidates")
    if not (np.all(np.isfinite(g)) and np.all(np.isfinite(grad))):
        raise NumericalError(f"{what}: the readout sums contain NaN or inf; the state diverged "
                             "(try a larger --ridge or standardised inputs)")
    n = g[-1, -1]
    if n <= 0:
        return stack.copy()
    c = bound(K)
    s = g[:-1, -1]
    Gc = g[:-1, :-1] - np.outer(s, s) / n
    gbar = float(np.mean(np.diag(Gc))) if Gc.size else 0.0
    e, V = np.linalg.eigh(Gc) if Gc.size else (np.zeros(0), np.zeros((0, 0)))
    e = np.maximum(e, 0.0)
    floor = ridge * c * (gbar if gbar > 0 else 1.0)
    out = np.empty_like(stack)
    for j, alpha in enumerate(alphas):
        r = grad[j].copy()
        r[:, :-1] -= alpha * stack[j, :, :-1]
        rb = r[:, -1]
        denom = c * e + alpha + floor
        if np.any(denom <= 0):
            raise NumericalError(f"{what}: the Gram is singular; use a larger --ridge")
        x = ((r[:, :-1] - np.outer(rb, s) / n) @ V / denom) @ V.T
        out[j, :, :-1] = stack[j, :, :-1] + x
        out[j, :, -1] = stack[j, :, -1] + (rb / c - x @ s) / n
    return out


def zero_stack(n_features: int, n_outputs: int) -> np.ndarray:
    """Return the J candidates at ``V = 0`` (one unit: bias ½, so the logit σ(z − ½) is 0; J × K × width+1)."""
    stack = np.zeros((N_ALPHAS, n_outputs, n_features + 1))
    if n_outputs == 1:
        stack[:, 0, -1] = ce.SHIFT
    return stack


def start(sums: dict, n_features: int, n_outputs: int, ridge: float, refit: bool = False) -> dict:
    """Return the carry entries of the logistic readout after the initialisation pass: one step from ``V = 0``.

    ``sums`` hold ``out_gram`` and ``lr_grad`` of the zero candidates on the initial weights' features.
    ``refit``: the refitted candidates S start where R does (:func:`with_refit`).
    """
    alphas = logistic_alphas(sums["out_gram"], n_outputs)
    stack = mm_step(zero_stack(n_features, n_outputs), sums["lr_grad"], sums["out_gram"], alphas, ridge)
    out = {"R": stack, "R_x": stack.copy(), "R_t": np.ones(len(alphas)), "R_alphas": alphas}
    return with_refit(out) if refit else out


def accelerate(carry: dict, grad, alphas, new) -> dict:
    """Return the next candidates to evaluate: FISTA's extrapolation of the MM steps ``new``, restarted where it stalls.

    With ``x`` the last MM step of each candidate and ``y`` the evaluated one (gradient ``grad``), ``t ← (1 +
    √(1 + 4t²))/2`` and ``y ← new + (t_old − 1)/t (new − x)`` (Beck and Teboulle 2009, in the metric of the
    bound ``c G + α Ĩ``); where ``∇F(y)·(new − x) > 0`` (O'Donoghue and Candès 2015) ``t ← 1`` and ``y ← new``.
    """
    R, x = np.asarray(carry["R"]), np.asarray(carry["R_x"])
    t = np.asarray(carry["R_t"], np.float64)
    J, K, width = R.shape
    descent = np.asarray(grad, np.float64).reshape(J, K, width).copy()  # −∇F(y) = g − α ỹ
    descent[:, :, :-1] -= np.asarray(alphas)[:, None, None] * R[:, :, :-1]
    stalled = np.einsum("jkw,jkw->j", descent, new - x) < 0
    t_next = np.where(stalled, 1.0, (1 + np.sqrt(1 + 4 * t * t)) / 2)
    momentum = np.where(stalled, 0.0, (t - 1) / t_next)
    return {"R": new + momentum[:, None, None] * (new - x), "R_x": new, "R_t": t_next}


CARRY = ("R", "R_x", "R_t", "R_alphas")  # the logistic readout's client state
REFIT_CARRY = ("S", "S_x", "S_t")  # readout_refit: the candidates refitted on all rows (train + held-out)


def with_refit(carry: dict) -> dict:
    """Return ``carry`` with the refitted candidates S (a copy of R where it has none: any start serves MM)."""
    if "S" in carry:
        return carry
    R = np.asarray(carry["R"])
    return {**carry, "S": R.copy(), "S_x": R.copy(), "S_t": np.ones(R.shape[0])}


def zero_carry(n_features: int, n_outputs: int) -> dict:
    """Return the logistic readout's carry with every candidate at ``V = 0`` (a run begun with a numeric alpha)."""
    stack = zero_stack(n_features, n_outputs)
    return {"R": stack, "R_x": stack.copy(), "R_t": np.ones(N_ALPHAS), "R_alphas": np.zeros(N_ALPHAS)}


def carried(carry: dict, n_features: int, n_outputs: int, refit: bool = False) -> dict:
    """Return the logistic readout's entries of ``carry`` (:func:`zero_carry` if it has none; S if ``refit``)."""
    if "R" not in carry:
        out = zero_carry(n_features, n_outputs)
    else:
        out = {name: np.asarray(carry[name]) for name in CARRY + (REFIT_CARRY if refit and "S" in carry else ())}
    return with_refit(out) if refit else out


def broadcast(carry: dict, dtype) -> np.ndarray:
    """Return the candidates of ``carry`` stacked for a chunk kernel (J·K × width+1; ``[R; S]`` with S; the chunk's dtype)."""
    R = np.asarray(carry["R"])
    if "S" in carry:
        R = np.concatenate([R, np.asarray(carry["S"])])
    return np.asarray(R.reshape(-1, R.shape[-1]), dtype)


def logistic_fit(carry: dict, sums: dict, held: dict, ridge: float, *, what: str = "output refit"
                 ) -> tuple[np.ndarray, dict, dict]:
    """Return (the model's output layer, the carry's new candidates, metrics) after a pass that evaluated ``carry``'s.

    The model's output layer is the candidate of least held-out Σℓ (ties: the
    larger α); then every candidate takes :func:`mm_step` on this pass's sums.
    With the refitted candidates S in ``carry`` (``readout_refit``) the model's output layer is S_j, the
    same α fitted on the training and held-out rows (scikit-learn's ``LogisticRegressionCV(refit=True)``),
    and every S_j takes its step on both rows' sums (G and ``lr_grad_all``) with R's α. The metrics then
    carry ``validation_accuracy``, R_j's on the held-out rows (S_j has seen them): early stopping reads it.
    """
    R, alphas = np.asarray(carry["R"]), np.asarray(carry["R_alphas"])
    losses = np.asarray(held["lr_loss"])
    j = len(losses) - 1 - int(np.argmin(losses[::-1]))  # the first minimum from the large-α end
    K = R.shape[1]
    new_alphas = logistic_alphas(sums["out_gram"], K)
    new = mm_step(R, sums["lr_grad"], sums["out_gram"], new_alphas, ridge, what=what)
    metrics = {"alpha": float(alphas[j]), "validation_loss": float(losses[j]) / float(held["n"]),
               "readout": "logistic", "readout_train_loss": float(sums["lr_loss"][j]) / float(sums["n"])}
    out = {**accelerate(carry, sums["lr_grad"], alphas, new), "R_alphas": new_alphas}
    if "S" not in carry:
        return R[j].copy(), out, metrics
    S = np.asarray(carry["S"])
    gram = np.asarray(sums["out_gram"]) + held["out_gram"]
    grad = np.asarray(sums["lr_grad_all"]) + held["lr_grad_all"]
    new_S = mm_step(S, grad, gram, new_alphas, ridge, what=what)
    step = accelerate({"R": S, "R_x": carry["S_x"], "R_t": carry["S_t"]}, grad, alphas, new_S)
    out.update(S=step["R"], S_x=step["R_x"], S_t=step["R_t"])
    metrics["validation_accuracy"] = float(held["lr_correct"][j]) / float(held["n"])
    return S[j].copy(), out, metrics


class OutputRefit:
    """The refit of a model's output layer, for solvers with a ``config`` and ``widths`` (ADMM, dlADMM)."""

    @property
    def refits(self) -> bool:
        """Return whether the model's output layer is refitted to the targets (``alpha="auto"``)."""
        return self.config.alpha == "auto"

    @property
    def logistic(self) -> bool:
        """Return whether the refit is the logistic readout (classification) rather than the ridge one."""
        return self.refits and self.config.task == "classification"

    @classmethod
    def output_link(cls, config, n_classes, record: dict | None = None) -> str:
        """Return ``logistic`` for a model whose output layer is the logistic readout (:func:`link`)."""
        return link(config, record)

    @property
    def refit_all(self) -> bool:
        """Return whether the chosen readout is refitted on the training and held-out rows (``readout_refit``, with
        rows held out: without them there is nothing to refit on, and no second candidate stack is carried)."""
        return self.logistic and bool(self.config.readout_refit) and self.config.validation_fraction > 0

    @property
    def skips(self) -> bool:
        """Return whether the refitted output layer also reads the inputs (``input_skip``, a refit, a hidden layer)."""
        return self.refits and bool(self.config.input_skip) and self.L > 1

    @property
    def readout_width(self) -> int:
        """Return the width of the readout's features: ``n_{L−1}``, plus the ``d`` inputs with the skip path."""
        return self.widths[-2] + (self.widths[0] if self.skips else 0)

    @property
    def known_inputs(self) -> int:
        """Return the trailing readout columns whose Gram block is the input Gram (:func:`partial_gram`): d or 0."""
        return self.widths[0] if self.skips else 0

    def with_input_gram(self, sums: dict, input_gram) -> dict:
        """Return ``sums`` with the readout Gram completed by the input Gram (:func:`complete_gram`) on the skip path."""
        if not self.skips:
            return sums
        return {**sums, "out_gram": complete_gram(sums["out_gram"], input_gram, self.known_inputs)}

    def readout_features(self, hidden, x):
        """Return the readout's features of a tile: ``ã_{L−1}``, or ``[ã_{L−1}, a_0]`` with the skip path."""
        return np.concatenate([hidden, x], axis=1) if self.skips else hidden

    def readout_shapes(self) -> dict:
        """Return the layout entries of the output refit's sums (logistic or ridge, :mod:`solvers.readout`)."""
        if self.logistic:
            return logistic_shapes(self.readout_width, self.widths[-1], self.refit_all)
        return shapes(self.readout_width, self.widths[-1])
