"""``--hidden-alpha race`` (Gauss-Newton): choose the hidden layers' weight decay, ``readout`` or ``pinned``, from
held-out rows, by running both from the same start (generalise_s11.md).

The candidates share iteration 0 (the same weights and passes). Iterations 1..:data:`RACE_ITERATIONS` advance
both in lockstep on the same passes' rows: readout is the run's state, reported; pinned rides in its carry as
``race_`` entries (:func:`pinned_carry`; the run store keeps flat names). Pinned is dropped at any race iteration
where its held-out score falls more than :data:`RACE_DROP` below readout's, and readout goes on alone from the next
(MNIST 2k: after one). After the last race iteration the candidate with the higher best held-out score so far goes
on alone (ties: readout). The choice is the carry's ``hidden_pinned`` (1: pinned) and the metric of that name, so a
resume goes on under it; the other candidate's held-out score is the metric ``race_validation_<score>``, and a line
for the progress report is the solver's ``note``. Nothing held out (or other kernels): no race, readout.

``--hidden-alpha probe`` decides at iteration 1 instead (race_cheap_s12.md): both candidates take iteration 1 with
their pass B deferred (pass A and a score pass each; the winner's pass B opens iteration 2, bitwise the steps of its
own run), and pinned goes on iff its trial was accepted and its held-out loss (pass A's held-out sums, free) is
below readout's times 1 − :data:`PROBE_MARGIN`; if readout's trial is rejected (no held-out loss), readout goes on
all the same (its rejected step leaves the start's weights; the note says "rejected"). Iteration 1 reports the
winner; the loser's held-out loss is the metric ``race_validation_loss`` (absent when the loser's trial was
rejected). The extra cost is the loser's pass A (its score pass is skipped: :func:`_probe`), under half an iteration.

With ``--step-choice held-out`` each candidate chooses its own step length at iteration 1, inside its own pass A
(:meth:`~solvers.gauss_newton.GaussNewtonSolver._evaluate`: its trial at t = 1 and 2, the one of lower held-out loss
kept; :mod:`solvers.step_choice`), before the race or probe compares them: the probe compares the kept trials'
held-out losses, and the winner goes on as a run of its rule with the step choice would (bitwise). The probe reports
the winner's choice; the race, whose iteration 1 reports readout's metrics, adds pinned's as ``race_step_length``
(and ``race_step_validation_loss_<t>``), and the report line names both (pinned may be the one that goes on). Each
candidate's choice depends on its own state only, and a resume makes iteration 1 again from iteration 0's carry, or
goes on from the carry that holds it.

The functions take the :class:`~solvers.gauss_newton.GaussNewtonSolver` and call its single-candidate steps
(``_advance``, ``_with_trial``, ``_resume_one``) with its ``pinned`` flag set per candidate.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from solvers import step_choice
from solvers.activation_cache import weights_key
from solvers.linalg import quadratic_error
from solvers.loop import LoopState, check_finite, run_pass_held_out

RACE_ITERATIONS = 2  # --hidden-alpha race: both candidates run this many iterations (generalise_s11.md) …
RACE_DROP = 0.01  # … unless pinned's held-out score falls this far below readout's at an iteration: then readout alone
RULES = ("race", "probe")  # the --hidden-alpha values this module runs
PROBE_MARGIN = 0.01  # --hidden-alpha probe: pinned goes on iff its held-out loss at iteration 1 < readout's × (1 − this)


def pinned_carry(weights, carry: dict) -> dict:
    """Return the pinned candidate's weights and carry as ``race_`` carry entries (the run store keeps flat names)."""
    out = {f"race_W{l}": np.asarray(W, np.float64) for l, W in enumerate(weights, start=1)}
    out.update((f"race_c_{name}", value) for name, value in carry.items()
               if not name.startswith("race_") and name != "hidden_pinned")
    return out


def pinned_split(carry: dict) -> tuple[list, dict]:
    """Return (weights, carry) of the pinned candidate from :func:`pinned_carry`'s entries."""
    weights = [np.asarray(carry[f"race_W{l}"]) for l in range(1, 1 + sum(n.startswith("race_W") for n in carry))]
    return weights, {n[len("race_c_"):]: v for n, v in carry.items() if n.startswith("race_c_")}


def initialize(solver, runner, state: LoopState) -> LoopState:
    """Return the readout candidate's iteration-0 ``state`` with the pinned candidate's beside it in its carry.

    The pinned one's objective (no hidden penalty) is recomputed from the same sums and its trial from the same
    curvature, so its carry is the one a ``--hidden-alpha pinned`` run would hold.
    """
    c = state.carry
    if not solver._scores_held_out(runner):
        c["hidden_pinned"] = np.float64(0.0)
        solver.note = f"hidden alpha: readout ({solver.config.hidden_alpha} needs held-out rows)"
        return state
    other = {name: value for name, value in c.items() if name[:1] != "T" or not name[1:].isdigit()}
    other.pop("T_out", None)
    solver.pinned = True
    try:
        alpha = float(c["alpha"])
        if solver.cross_entropy:
            other["error"] = np.float64(solver.objective(float(c["loss"]), state.weights, alpha))
        else:
            W = np.asarray(state.weights[-1], np.float64)
            error = quadratic_error(W, c["acc_cross"], c["acc_gram"], float(c["acc_tt"]))
            other["error"] = np.float64(solver.objective(error, state.weights, alpha))
        other = solver._with_trial(LoopState(0, list(state.weights), other)).carry
    finally:
        solver.pinned = False
    c.update(pinned_carry(state.weights, other))
    # best held-out scores so far: none (-1.0 tied a regression's R² < -1 of both candidates: readout won always)
    c["hidden_pinned"], c["race_best"], c["race_other_best"] = np.float64(0.0), np.float64(-np.inf), np.float64(-np.inf)
    return state


def advance(solver, runner, state: LoopState) -> tuple[LoopState, dict]:
    """Return the next state and metrics: both candidates' iterations while the race runs, then the chosen one's."""
    c = state.carry
    solver.pinned = bool(float(c.get("hidden_pinned", 0.0)))
    if "race_best" not in c:  # decided (or nothing held out)
        new, metrics = solver._advance(runner, state)
        new.carry["hidden_pinned"] = np.float64(solver.pinned)
        return new, {**metrics, "hidden_pinned": float(solver.pinned)}
    weights, other = pinned_split(c)
    main = LoopState(state.iteration, list(state.weights), {n: v for n, v in c.items() if not n.startswith("race_")})
    if solver.config.resolved_hidden_alpha() == "probe":
        return _probe(solver, runner, main, LoopState(state.iteration, weights, other))
    score_name = solver.task.score_name
    score = f"validation_{score_name}"
    solver.pinned = False
    new_main, m_main = solver._advance(runner, main)
    solver.pinned = True
    try:
        new_other, m_other = solver._advance(runner, LoopState(state.iteration, weights, other))
    finally:
        solver.pinned = False
    best = max(float(c["race_best"]), m_main[score])
    other_best = max(float(c["race_other_best"]), m_other[score])
    k = new_main.iteration
    if m_other[score] < m_main[score] - RACE_DROP:  # pinned clearly behind: readout goes on alone now
        new_main.carry["hidden_pinned"] = np.float64(0.0)
        solver.note = (f"hidden alpha: readout from iteration {k + 1} (held-out {score_name} at iteration "
                       f"{k}: pinned {m_other[score]:.4f}, more than {RACE_DROP} below readout's {m_main[score]:.4f})")
        return new_main, {**m_main, "hidden_pinned": 0.0, f"race_{score}": m_other[score],
                          **step_choice.race_metrics(m_other)}
    if k < RACE_ITERATIONS:
        new_main.carry.update(pinned_carry(new_other.weights, new_other.carry))
        new_main.carry.update(hidden_pinned=np.float64(0.0), race_best=np.float64(best),
                              race_other_best=np.float64(other_best))
        return new_main, {**m_main, "hidden_pinned": 0.0, f"race_{score}": m_other[score],
                          **step_choice.race_metrics(m_other)}
    solver.pinned = other_best > best
    won, metrics, lost = (new_other, m_other, m_main) if solver.pinned else (new_main, m_main, m_other)
    won.carry["hidden_pinned"] = np.float64(solver.pinned)
    solver.note = (f"hidden alpha: {'pinned' if solver.pinned else 'readout'} from iteration {k + 1} (best held-out "
                   f"{score_name} in iterations 1-{k}: readout {best:.4f}, pinned {other_best:.4f})")
    return won, {**metrics, "hidden_pinned": float(solver.pinned), f"race_{score}": lost[score]}


def _probe(solver, runner, main: LoopState, other: LoopState) -> tuple[LoopState, dict]:
    """Return the winner's iteration 1 and metrics: both candidates' iteration 1 with pass B deferred, then pinned iff
    its trial was accepted and its held-out loss is below readout's × (1 − :data:`PROBE_MARGIN`).

    The rule reads pass A's results alone (``accepted``, the held-out loss), so each candidate takes pass A
    (:meth:`~solvers.gauss_newton.GaussNewtonSolver._evaluate`) and only the winner finishes its iteration (its score
    pass, :meth:`~solvers.gauss_newton.GaussNewtonSolver._finish`): the loser's score pass (or, rejected, its next
    trial) was computed and thrown away. Pinned goes first, so readout, the usual winner, finds its activations the
    most recently kept (:mod:`solvers.activation_cache`). A solver that overrides ``_advance`` (benchmarks'
    subclasses) takes both whole iterations, as before.
    """
    deferred = solver.defer_curvature
    solver.defer_curvature = True  # pass A and a score pass; the winner's pass B opens iteration 2 (prepare)
    try:
        if not getattr(getattr(type(solver), "_advance", None), "evaluate_then_finish", False):
            solver.pinned = False
            new_main, m_main = solver._advance(runner, main)
            solver.pinned = True
            new_other, m_other = solver._advance(runner, other)
            finish = None
        else:
            pinned_sums, readout_sums = shared_pass(solver, runner, other, main) or (None, None)
            solver.pinned = True
            step_other = solver._evaluate(runner, other, shared=pinned_sums)
            solver.pinned = False
            step_main = solver._evaluate(runner, main, shared=readout_sums)
            m_main, m_other = ({"accepted": bool(step["accepted"]), **({"validation_loss": float(step["carry"]["held_loss"])}
                               if "held_loss" in step["carry"] else {})} for step in (step_main, step_other))
            finish = (step_main, step_other)
        loss, other_loss = m_main.get("validation_loss"), m_other.get("validation_loss")
        solver.pinned = bool(m_other["accepted"] and loss is not None and other_loss is not None
                             and other_loss < loss * (1 - PROBE_MARGIN))
        if finish is not None:  # the winner's score pass (or next trial), under its own rule (solver.pinned)
            won, metrics = solver._finish(runner, finish[solver.pinned])
            new_main, new_other = (None, won) if solver.pinned else (won, None)
            (m_other if solver.pinned else m_main).update(metrics)
    finally:
        solver.defer_curvature, pinned, solver.pinned = deferred, solver.pinned, False
    solver.pinned = pinned
    won, metrics, lost = (new_other, m_other, m_main) if solver.pinned else (new_main, m_main, m_other)
    won.carry["hidden_pinned"] = np.float64(solver.pinned)
    def seen(m, value):  # a rejected trial has no held-out loss
        return "rejected" if not m["accepted"] or value is None else f"{value:.4g}"

    solver.note = (f"hidden alpha: {'pinned' if solver.pinned else 'readout'} from iteration 1 (held-out loss at "
                   f"iteration 1: readout {seen(m_main, loss)}, pinned {seen(m_other, other_loss)}; pinned needs "
                   f"{1 - PROBE_MARGIN:g}x readout's)")
    lost_loss = lost.get("validation_loss")  # none for a rejected trial: no metric (not NaN)
    return won, {**metrics, "hidden_pinned": float(solver.pinned),
                 **({} if lost_loss is None else {"race_validation_loss": float(lost_loss)})}


def shared_pass(solver, runner, first: LoopState, second: LoopState) -> tuple | None:
    """Return ((training sums, held-out sums) of ``first``'s trial, the same of ``second``'s): both trials' pass A in one
    read of each chunk (``forward_chunk``'s ``others``, as :func:`solvers.step_choice.evaluate` reads its further trials),
    or None where each candidate must take its own pass A.

    The probe's two candidates evaluate their trials on the same rows at iteration 1, so one pass sums both: the
    chunks and held-out rows are read, standardised and dispatched once, not twice. Each trial's sums come from its own
    forward products on the same input tiles, in the same tile and chunk order, so they are bitwise those of its own
    pass (the ``step1_`` entries are further entries of the same packed vector), and its activations are kept under its
    own key (``first``'s, then ``second``'s, in each tile: the second, readout in :func:`_probe`, the most recent). The
    sums are checked finite per candidate, ``first``'s first, as the two passes checked them.

    Shared only when it is that same arithmetic: the squared loss (cross-entropy's pass A scores each candidate's own
    output trials), this class's dense ``forward_chunk``, no step choice at this iteration (it sums its own further
    trials), nothing ``pending`` (a deferred pass B opens the iteration first: :meth:`~solvers.gauss_newton.
    GaussNewtonSolver.prepare`) and the same sample of chunks in both carries.
    """
    k = first.iteration + 1
    cs = (first.carry, second.carry)
    if (solver.cross_entropy or solver.L < 2 or not solver._dense_forward()
            or solver._chooses_step(runner, k) or second.iteration + 1 != k
            or any(float(c.get("pending", 0.0)) for c in cs)
            or len({(float(c.get("sample_chunks", -1.0)), float(c.get("sample_window", -1.0))) for c in cs}) != 1):
        return None
    n_chunks = len(getattr(runner, "bounds", ()))
    m, window = int(cs[0].get("sample_chunks", n_chunks)), int(cs[0].get("sample_window", -1))
    trials = [[c[f"T{l}"] for l in range(1, solver.L)] for c in cs]
    cast = solver.cast(trials[1])
    params = dataclasses.replace(solver._forward_params(trials[0], False, cs[0]), others=(cast,),
                                 other_keys=(weights_key(solver.run_token, cast),))
    train, held = run_pass_held_out(runner, step_choice.layout(solver, False, 1), "forward_chunk", params, k,
                                    checked=(), **solver._sample(runner, m, window))
    L, stock = solver.L, tuple(solver.forward_layout(False).shapes)

    def part(sums, j):  # candidate j's sums under the stock names (as step_choice.evaluate's part)
        if sums is None:
            return None
        if j == 0:
            return {name: sums[name] for name in stock}
        return {"n": sums["n"], "tt": sums["tt"], f"gram{L}": sums[f"step1_gram{L}"], f"cross{L}": sums[f"step1_cross{L}"]}

    out = []
    for j in (0, 1):
        own = (part(train, j), part(held, j))
        for sums in own:
            if sums is not None:
                check_finite(sums, k, solver.divergence_hint)
        out.append(own)
    return tuple(out)


def resume(solver, state: LoopState, changed: set) -> None:
    """Set the solver's ``pinned`` from the stored choice; during the race, make the pinned candidate's trial again
    for the ``changed`` settings (in ``state``'s carry). The caller then resumes the reported candidate."""
    solver.pinned = bool(float(state.carry.get("hidden_pinned", 0.0)))
    if "race_best" in state.carry:
        weights, other = pinned_split(state.carry)
        solver.pinned = True
        try:
            other = solver._resume_one(LoopState(state.iteration, weights, other), changed).carry
        finally:
            solver.pinned = False
        state.carry.update(pinned_carry(weights, other))
