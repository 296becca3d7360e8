"""``--step-choice held-out`` / ``held-out-1.5`` (Gauss-Newton, k10_s14.md's hs2@1): iteration 1 chooses the hidden
layers' step length.

In iteration 1 only, pass A evaluates the hidden trial ``T`` at the step lengths of the setting (:data:`STEP_LENGTHS`:
``held-out`` ``t ∈ {1, 2}``, ``held-out-1.5`` ``t ∈ {1, 1.5}``; ``W + t (T − W)``)
in the same read of each chunk (``forward_chunk``'s ``others``: one more forward product and output-layer Gram per
row, training and held-out rows alike), and keeps ``t* = argmin_t ℓ_held(t)``: the held-out loss of trial t with its
output layer refitted as every trial's is (at the run's α; with ``--alpha auto`` at the α its own held-out rows pick).
Ties and non-finite sums keep t = 1; a t* > 1 whose objective fails the LM test is not kept (t = 1 goes on to the
test instead). The LM test then judges the kept trial as usual, from its own sums, so where t = 1 is kept the run is
the stock run bit for bit. The choice is the carry's ``step_length`` and ``step_held_losses`` and the metrics of
iteration 1 (:func:`metrics`); ``--hidden-alpha race`` reports the pinned candidate's as ``race_step_*`` beside
readout's (:func:`race_metrics`), and the progress report's line names the candidate (:func:`report_line`).

The functions take the :class:`~solvers.gauss_newton.GaussNewtonSolver` (as :mod:`solvers.hidden_race` does).
Measured (hsval_s15.md, step16_s16.md, t15_s16.md): opt-ins, not the default.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from solvers.activation_cache import weights_key
from solvers.loop import LoopState, run_pass_held_out
from solvers.stats import StatsLayout

# each step_choice's step lengths t of W + t (T − W) that pass A evaluates (t = 1, the trial, first)
STEP_LENGTHS = {"held-out": (1.0, 2.0), "held-out-1.5": (1.0, 1.5)}
STEP_CHOICE_ITERATIONS = 1  # … in iterations 1..this (k10_s14.md: hs2@1; iteration 2 chose t = 2 on MNIST 2k and lost)


def choose_step(losses) -> int:
    """Return the index of the least of the held-out ``losses`` (one per step length, t = 1 first): the one kept.

    Ties keep the earlier (shorter) one, and a non-finite loss is never kept over a finite one, so index 0 (t = 1,
    the stock trial) stands unless another is strictly better.
    """
    best = 0
    for j, loss in enumerate(losses):
        if np.isfinite(loss) and (not np.isfinite(losses[best]) or loss < losses[best]):
            best = j
    return best


def layout(solver, input_gram: bool, others: int) -> StatsLayout:
    """Return the solver's pass-A layout with the output layer's sums of ``others`` further trials (``step<j>_gram<L>``,
    ``step<j>_cross<L>``, j = 1..others; ``n`` and ``tt`` are the same rows'), squared loss only."""
    w, L = solver.widths, solver.L
    shapes = dict(solver.forward_layout(input_gram).shapes)
    for j in range(1, others + 1):
        shapes[f"step{j}_gram{L}"], shapes[f"step{j}_cross{L}"] = (w[L - 1] + 1,) * 2, (w[L], w[L - 1] + 1)
    return StatsLayout(shapes)


def stretched(weights, trial, t: float, pin=None) -> list:
    """Return the hidden trial at step length ``t``: ``W + t (T − W)`` (t = 1: ``trial`` itself, the same arrays);
    ``pin`` (``--hidden-alpha pinned``: :func:`~solvers.gauss_newton.pin_rows`): each row then rescaled to its norm in
    ``weights``, as the trial's."""
    if t == 1.0:
        return list(trial)
    out = []
    for W, T in zip(weights, trial):
        W, T = np.asarray(W, np.float64), np.asarray(T, np.float64)
        out.append(W + t * (T - W) if pin is None else pin(W + t * (T - W), W))
    return out


def evaluate(solver, runner, state: LoopState, trial, c: dict, k: int, sample: dict, pin=None):
    """Return (kept trial, its pass-A sums, held-out sums, its (W_L, error, α), (t kept, held-out losses, the step
    lengths)): pass A of the trial at every step length of the solver's ``step_choice`` (:data:`STEP_LENGTHS`) in one
    read of each chunk (``pin``: as :func:`stretched`'s).

    Each trial's output layer is refitted (``output_layer``) and scored by its held-out loss (``held_loss``);
    :func:`choose_step` picks one, which is kept if it is t = 1 or passes the LM test (its objective at its α no
    higher than the accepted weights'), else t = 1 is kept. The stock trial's sums are those its own pass A gives,
    bitwise (the further trials' sums are further entries of the same vector; only the stock trial's are checked
    finite, as its own pass A checks them), so keeping t = 1 is the stock step: a longer step that the held-out rows
    prefer but the LM test would reject costs the iteration nothing (a rejection would also have quadrupled λ).
    """
    L, weights, lengths = solver.L, state.weights, STEP_LENGTHS[solver.config.step_choice]
    trials = [stretched(weights, trial, t, pin) for t in lengths]
    casts = [solver.cast(T) for T in trials[1:]]
    params = dataclasses.replace(solver._forward_params(trial, False, c), others=tuple(casts),
                                 other_keys=tuple(weights_key(solver.run_token, x) for x in casts))
    stock = tuple(solver.forward_layout(False).shapes)
    train, held = run_pass_held_out(runner, layout(solver, False, len(casts)), "forward_chunk", params, k,
                                    checked=stock, **sample)

    def part(sums, j):  # trial j's sums under the stock names
        if sums is None or j == 0:
            return sums if sums is None else {name: sums[name] for name in stock}
        return {"n": sums["n"], "tt": sums["tt"], f"gram{L}": sums[f"step{j}_gram{L}"],
                f"cross{L}": sums[f"step{j}_cross{L}"]}

    sides = [(part(train, j), part(held, j)) for j in range(len(trials))]
    fits, losses = [], []
    for j, (s, h) in enumerate(sides):
        finite = j == 0 or all(np.all(np.isfinite(v)) for x in (s, h) if x is not None for v in x.values())
        fit = solver.output_layer(s, h, c) if finite else None
        fits.append(fit)
        losses.append(float(solver.held_loss(h, fit[0], fit[2], c)) if fit is not None and h is not None else np.inf)
    j = choose_step(losses) if held is not None else 0
    if j:  # a longer step the LM test would reject is not kept: the stock trial goes on to the test instead
        W_out, error, alpha = fits[j]
        if solver.objective(error, [*trials[j], W_out], alpha) > solver._current_objective(state, c, alpha):
            j = 0
    return trials[j], sides[j][0], sides[j][1], fits[j], (lengths[j], losses, lengths)


def metrics(choice) -> dict:
    """Return iteration 1's metrics of ``choice`` (:func:`evaluate`'s last element): ``step_length`` and each step
    length's held-out loss ``step_validation_loss_<t>`` (``held-out``: ``_1``, ``_2``; ``held-out-1.5``: ``_1``, ``_1.5``)."""
    t, losses, lengths = choice
    return {"step_length": float(t), **{f"step_validation_loss_{s:g}": float(x) for s, x in zip(lengths, losses)}}


def race_metrics(metrics_other: dict) -> dict:
    """Return the other race candidate's (pinned's) step-choice metrics as ``race_step_*`` (the race reports readout's
    metrics while it runs; the candidate that goes on may be pinned: its step length is ``race_step_length``)."""
    return {f"race_{name}": value for name, value in metrics_other.items() if name.startswith("step_")}


def _describe(m: dict, prefix: str = "") -> tuple[str, str]:
    """Return ("t = <kept>", "(held-out loss t = 1: …, t = 2: …[; t = 2 failed the LM test])") of metrics ``m`` (the
    step lengths are those ``m`` holds losses of, in :func:`metrics`'s order)."""
    key = f"{prefix}step_validation_loss_"
    lengths = sorted(float(name[len(key):]) for name in m if name.startswith(key))
    losses = [m[f"{key}{s:g}"] for s in lengths]
    kept, best = m[f"{prefix}step_length"], lengths[choose_step(losses)]
    return f"t = {kept:g}", ("(held-out loss " + ", ".join(f"t = {s:g}: {x:.4g}" for s, x in zip(lengths, losses))
                             + (f"; t = {best:g} failed the LM test" if best != kept else "") + ")")


def report_line(m: dict, iteration: int, candidate: str | None = None) -> str | None:
    """Return the progress report's line for metrics ``m`` of an iteration that chose its step length (else None).

    ``candidate``: the ``--hidden-alpha race`` or ``probe`` candidate whose metrics ``m`` are (readout while the race
    runs, the probe's winner), named in the line; with the race's ``race_step_*`` the pinned candidate's follows.
    """
    if "step_length" not in m:
        return None
    kept, losses = _describe(m)
    line = f"step length{f' ({candidate})' if candidate else ''}: {kept} at iteration {iteration} {losses}"
    if "race_step_length" in m:
        line += "; pinned: " + " ".join(_describe(m, "race_"))
    return line
