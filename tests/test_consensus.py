"""Consensus ADMM over data shards: the consensus step, the shard step as Adam, pipeline = reference, resume."""
from dataclasses import replace

import numpy as np
import pytest

from solvers import make_solver
from solvers.activations import ACTIVATIONS
from solvers.adam import FlatLayout, loss_and_delta
from solvers.config import TrainConfig
from solvers.consensus import ConsensusSolver, ShardParams, consensus_step
from solvers.errors import InputError
from solvers.loop import LoopState, shard_groups
from solvers.reference import fit_in_memory
from tests.conftest import quiet


def make_data(n=900, d=6, n_classes=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    W = rng.normal(size=(d, n_classes))
    y = np.argmax(X @ W + 0.3 * rng.normal(size=(n, n_classes)), axis=1)
    return X, y




def test_consensus_step_is_the_closed_form_minimiser():
    """θ̄ = ρ Σ w_s v_s/(ρ + α) minimises ½α‖θ̄‖²_(weights) + Σ_s w_s ρ/2 ‖v_s − θ̄‖², biases unregularised."""
    rng = np.random.default_rng(1)
    S, P = 4, 7
    v = rng.normal(size=(S, P))
    w = rng.random(S)
    w /= w.sum()
    rho, alpha = 0.3, 0.05
    bias = np.zeros(P, bool)
    bias[[2, 5]] = True
    got = consensus_step(w @ v, rho, alpha, bias)
    # the normal equations of the quadratic, solved directly: (diag(α_j) + ρ Σ w_s) θ = ρ Σ w_s v_s
    A = np.diag(np.where(bias, 0.0, alpha) + rho * w.sum())
    want = np.linalg.solve(A, rho * (w @ v))
    np.testing.assert_allclose(got, want, rtol=1e-13)

    def objective(t):
        return 0.5 * alpha * np.sum(np.where(bias, 0, t) ** 2) + sum(w[s] * rho / 2 * np.sum((v[s] - t) ** 2)
                                                                     for s in range(S))
    for _ in range(20):  # any perturbation raises the objective
        assert objective(got + 1e-3 * rng.normal(size=P)) > objective(got)


def test_advance_takes_the_consensus_step_from_the_shard_sums():
    """The client's θ̄ comes from the summed n_s v_s exactly as the closed form says."""
    cfg = TrainConfig(solver="consensus", hidden=(3,), consensus_rho=0.5, shards=2, alpha=0.0)
    s = make_solver(cfg, 4, x_mean=np.zeros(4), x_scale=np.ones(4), classes=np.arange(2))
    P = s.flat.size
    v = np.random.default_rng(0).normal(size=P)

    class FixedRunner:
        solver = s

        def run_shard_rounds(self, kernel, params, next_params, rounds, **slots):
            return [s.shard_layout().pack({"n": 10.0, "loss": 1.0, "correct": 5, "w": 10.0, "v": 10.0 * v,
                                           "theta": 10.0 * v, "theta_sq": 10.0 * float(v @ v)})] * rounds

    state, metrics = s.advance(FixedRunner(), LoopState(0, s.he_weights(s.L), {}))
    np.testing.assert_allclose(s.flat.from_weights(state.weights), consensus_step(v, 0.5, 0.0, s._bias))
    assert metrics["train_accuracy"] == 0.5 and state.carry["rho"] == 0.5


def literal_adam_pass(X, t, weights, act, kind, seed, lr, batch, iteration=1, shard=0, alpha=0.0, order=None,
                      blocks=None):
    """One epoch of textbook minibatch Adam over (X, t) in float32, rows in the order the solver draws.

    ``alpha``: the weight decay ½α‖W̃‖² (biases spared) added to the minibatch's mean loss. ``order``: the rows'
    order instead, minibatches not crossing a boundary of ``blocks`` rows (the chunks of averaging rounds).
    """
    Ws = [np.asarray(W, np.float32).copy() for W in weights]
    m = [np.zeros_like(W) for W in Ws]
    v = [np.zeros_like(W) for W in Ws]
    if order is None:
        order = np.random.default_rng([seed, iteration, shard]).permutation(len(X))
    blocks = blocks or len(order)
    b1, b2, eps = 0.9, 0.999, 1e-8
    step = 0
    for b0 in (b for start in range(0, len(order), blocks) for b in range(start, min(start + blocks, len(order)), batch)):
        rows = order[b0:min(b0 + batch, (b0 // blocks + 1) * blocks)]
        a = [X[rows]]
        zs = []
        for W in Ws[:-1]:
            zs.append(a[-1] @ W[:, :-1].T + W[:, -1])
            a.append(act.h(zs[-1]))
        out = a[-1] @ Ws[-1][:, :-1].T + Ws[-1][:, -1]
        _, delta = loss_and_delta(kind, out, t[rows])
        delta = delta / len(rows)
        grads = [None] * len(Ws)
        for l in range(len(Ws) - 1, -1, -1):
            grads[l] = np.column_stack([delta.T @ a[l] + alpha * Ws[l][:, :-1], delta.sum(axis=0)])
            if l:
                delta = (delta @ Ws[l][:, :-1]) * act.dh(zs[l - 1])
        step += 1
        for l in range(len(Ws)):
            m[l] = b1 * m[l] + (1 - b1) * grads[l]
            v[l] = b2 * v[l] + (1 - b2) * grads[l] ** 2
            m_hat = m[l] / (1 - b1 ** step)
            v_hat = v[l] / (1 - b2 ** step)
            Ws[l] = Ws[l] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return Ws


@pytest.mark.parametrize("n_classes,activation", [(2, "relu"), (3, "sigmoid"), (2, "hard-sigmoid")])
def test_one_shard_and_tiny_rho_is_one_epoch_of_plain_minibatch_adam(n_classes, activation):
    X, y = make_data(n=700, n_classes=n_classes)
    cfg = TrainConfig(solver="consensus", hidden=(8, 5), activation=activation, iterations=1, shards=1,
                      consensus_rho=1e-12, batch_size=64, learning_rate=3e-3, seed=4,
                      validation_fraction=0, local_epochs=1, alpha=0.0)
    fit = fit_in_memory(X, y, cfg)
    s = fit.solver
    Xs = ((X - s.x_mean) / s.x_scale).astype(np.float32)
    t = s.task.targets(np.searchsorted(s.classes, y), np.float32)
    want = literal_adam_pass(Xs, t, s.he_weights(s.L), ACTIVATIONS[activation], s.loss_kind, 4, 3e-3, 64)
    for W, W_ref in zip(fit.loop_state.weights, want):
        np.testing.assert_allclose(W, W_ref, rtol=2e-4, atol=2e-5)


def test_chunk_averaging_with_one_shard_is_plain_adam_over_the_chunks_in_turn():
    """Averaging after every chunk (one round per chunk) with one shard and ρ → 0: Adam over chunk after chunk.

    Round r draws its rows from (seed, iteration, shard, r); Adam's moments and step count go on across rounds.
    """
    X, y = make_data(n=900, n_classes=3)
    cfg = TrainConfig(solver="consensus", hidden=(8,), iterations=1, shards=1, consensus_rho=1e-12, batch_size=64,
                      learning_rate=3e-3, seed=4, validation_fraction=0, local_epochs=1, alpha=0.0,
                      averaging="chunk")
    fit = fit_in_memory(X, y, cfg, chunk_rows=300)
    assert fit.history[0]["rounds"] == 3
    s = fit.solver
    Xs = ((X - s.x_mean) / s.x_scale).astype(np.float32)
    t = s.task.targets(np.searchsorted(s.classes, y), np.float32)
    # the literal reference: one Adam run whose rows come chunk by chunk in each round's order
    order = np.concatenate([300 * r + np.random.default_rng([4, 1, 0, r]).permutation(300) for r in range(3)])
    want = literal_adam_pass(Xs, t, s.he_weights(s.L), s.act, s.loss_kind, 4, 3e-3, 64, order=order, blocks=300)
    for W, W_ref in zip(fit.loop_state.weights, want):
        np.testing.assert_allclose(W, W_ref, rtol=2e-4, atol=2e-5)
    once = fit_in_memory(X, y, TrainConfig(**{**cfg.to_dict(), "averaging": "pass"}), chunk_rows=300)
    assert once.history[0]["rounds"] == 1
    assert not np.allclose(once.loop_state.weights[0], fit.loop_state.weights[0])  # another row order


def test_averaging_rounds_are_one_computation_reading_iteration_k_minus_1_and_writing_k():
    """A pass of R rounds is one ``run_shard_rounds``: round 0 reads k−1's slot, the last writes k's, none between.

    Round r's parameters are ``round_params`` of round r−1's sums: θ̄ by the consensus step, the scaled dual on.
    """
    from solvers.inmemory import InMemoryRunner

    calls = []
    real_rounds = InMemoryRunner.run_shard_rounds

    def rounds(self, kernel, params, next_params, n, *, read=None, write=None, score=None):
        calls.append((params.iteration, n, read, write))
        seen = []

        def step(r, sums):
            p = next_params(r, sums)
            seen.append(p)
            return p
        out = real_rounds(self, kernel, params, step, n, read=read, write=write)
        assert [p.round for p in seen] == list(range(1, n)) and all(p.dual_scale == 1.0 for p in seen)
        for p, sums in zip(seen, out):  # round r starts from θ̄ of round r−1's sums
            got = self.solver.shard_layout().unpack(sums)
            want = consensus_step(got["v"] / got["w"], p.rho, 0.0, self.solver._bias)
            np.testing.assert_array_equal(p.center, want)
        return out

    X, y = make_data(n=2400)
    cfg = TrainConfig(solver="consensus", hidden=(6,), iterations=3, shards=2, seed=1, validation_fraction=0,
                      local_epochs=1, first_pass_rows=400, alpha=0.0)  # windows of 1, 2, 4 chunks of each shard
    import unittest.mock

    with unittest.mock.patch.object(InMemoryRunner, "run_shard_rounds", rounds):
        fit = fit_in_memory(X, y, cfg, chunk_rows=200)
    assert [h["rounds"] for h in fit.history] == [1, 2, 4]
    assert calls == [(1, 1, None, 1), (2, 2, 1, 2), (3, 4, 2, 3)]


def test_pipeline_rounds_are_one_graph_and_store_only_the_last_rounds_state(client, tmp_path):
    """DaskRunner.run_shard_rounds: one compute for all rounds, the same sums as the in-memory runner, and only
    the write slot is written (a retried task of any round finds its inputs unchanged)."""
    import zarr

    from pipeline.passes import DaskRunner
    from solvers.inmemory import InMemoryRunner
    from storage.data import write_data
    from storage.runstore import RunStore, shard_state_path

    X, y = make_data(n=800)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=100)
    cfg = TrainConfig(solver="consensus", hidden=(5,), shards=2, consensus_rho=0.1, local_epochs=1,
                      first_pass_rows=0, validation_fraction=0)
    s = make_solver(cfg, X.shape[1], x_mean=X.mean(0), x_scale=X.std(0), classes=np.arange(2))
    run = RunStore.create(tmp_path / "r.zarr", config=cfg.to_dict(), data={}, state_widths={}, n_samples=800,
                          chunk_rows=100, classes=np.arange(2), x_mean=s.x_mean, x_scale=s.x_scale,
                          shard_widths=s.shard_state_widths(), n_shards=2)
    from functools import partial

    from solvers.tiling import chunk_bounds

    bounds = chunk_bounds(800, 100)
    params = ShardParams(s.flat.from_weights(s.he_weights(s.L)), 1, 0.1, 0.0, 0.0, 0, 4, 0)
    step = partial(s.round_params, params, 0.0)
    ref_runner = InMemoryRunner(s, X, np.asarray(y), bounds=bounds)
    ref = ref_runner.run_shard_rounds("shard_kernel", params, step, 4, write=1)
    runner = DaskRunner(client, s, tmp_path / "d.zarr", run.path, bounds)
    computes = []
    real = runner.compute
    runner.compute = lambda *values: computes.append(len(values)) or real(*values)
    got = runner.run_shard_rounds("shard_kernel", params, step, 4, write=1)
    assert computes == [4]  # one graph, four rounds' sums
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    for name in s.shard_state_widths():
        stored = zarr.open_array(store=str(run.path), path=shard_state_path(1, name))[...]
        np.testing.assert_allclose(stored, [np.ravel(ref_runner.shard_slots[1][sh][name]) for sh in range(2)], rtol=1e-12)
        for slot in (0, 2):  # the other slots: never written (fill value)
            path = shard_state_path(slot, name)
            if path in zarr.open_group(str(run.path), mode="r"):
                assert np.isnan(zarr.open_array(store=str(run.path), path=path)[...]).all()


def test_the_pass_scores_its_model_on_the_held_out_rows_in_the_same_computation():
    """With rows held out of every chunk, the shard pass returns θ̄'s held-out accuracy: the driver's scoring is skipped."""
    import unittest.mock

    from solvers.inmemory import InMemoryRunner
    from solvers.validation import make_split

    X, y = make_data(n=1200, n_classes=3)
    cfg = TrainConfig(solver="consensus", hidden=(6,), shards=2, seed=5, local_epochs=1, first_pass_rows=0,
                      alpha=0.0, validation_fraction=0.25)
    s = make_solver(cfg, X.shape[1], x_mean=X.mean(0), x_scale=X.std(0), classes=np.arange(3))
    split = make_split(0.25, 5, 1200)
    runner = InMemoryRunner(s, X, y, chunk_rows=200, split=split)
    state = s.initialize(runner)
    held = split.mask(0, 1200)
    for _ in range(2):
        state, metrics = s.advance(runner, state)
        assert metrics["rounds"] == 3
        assert metrics["validation_accuracy"] == s.network(state.weights).score(X[held], y[held])
    # the in-memory trainer then scores the test rows only: the validation score is the pass's
    calls = []
    real = ConsensusSolver.network_of_sums

    def counting(self, *a):
        calls.append(1)
        return real(self, *a)

    with unittest.mock.patch.object(ConsensusSolver, "network_of_sums", counting):
        fit = fit_in_memory(X, y, TrainConfig(**{**cfg.to_dict(), "iterations": 2}), chunk_rows=200)
    assert len(calls) == 2 and all("validation_accuracy" in h for h in fit.history)


def test_a_first_pass_over_one_chunk_reads_a_seeded_part_of_it():
    """Pass 1 whose window is one chunk per shard reads first_pass_rows / shards of its rows: the first of its seeded order."""
    X, y = make_data(n=900, n_classes=2)
    cfg = TrainConfig(solver="consensus", hidden=(6,), iterations=1, shards=1, consensus_rho=1e-12, batch_size=32,
                      learning_rate=3e-3, seed=4, validation_fraction=0, local_epochs=1, alpha=0.0, first_pass_rows=120)
    fit = fit_in_memory(X, y, cfg, chunk_rows=300)
    s = fit.solver
    assert s.first_rows(1, 1) == 120 and s.first_rows(2, 2) == 0 and s.first_rows(1, 2) == 0
    assert fit.history[0]["rounds"] == 1
    Xs = ((X - s.x_mean) / s.x_scale).astype(np.float32)
    t = s.task.targets(np.searchsorted(s.classes, y), np.float32)
    order = np.random.default_rng([4, 1, 0]).permutation(300)[:120]
    want = literal_adam_pass(Xs, t, s.he_weights(s.L), s.act, s.loss_kind, 4, 3e-3, 32, order=order)
    for W, W_ref in zip(fit.loop_state.weights, want):
        np.testing.assert_allclose(W, W_ref, rtol=2e-4, atol=2e-5)
    two = make_solver(TrainConfig(**{**cfg.to_dict(), "shards": 2}), X.shape[1], x_mean=s.x_mean, x_scale=s.x_scale,
                      classes=s.classes)
    assert two.first_rows(1, 1) == 60  # over the shards


def test_a_first_pass_over_one_chunk_keeps_its_rows_in_every_local_epoch(monkeypatch):
    """With --local-epochs 3 the one-chunk first pass visits the same first_pass_rows rows three times, reordered."""
    import solvers.consensus as consensus

    X, y = make_data(n=900, n_classes=2)
    seen, real = [], consensus.standardize

    def recording(x, *args):
        seen.append(np.array(x))
        return real(x, *args)

    monkeypatch.setattr(consensus, "standardize", recording)
    cfg = TrainConfig(solver="consensus", hidden=(6,), iterations=1, shards=1, batch_size=32, seed=4,
                      validation_fraction=0, local_epochs=3, alpha=0.0, first_pass_rows=120)
    fit_in_memory(X, y, cfg, chunk_rows=900)  # the shard's one chunk is its whole window: its local epochs run
    rows = np.concatenate(seen)
    assert len(rows) == 360 and len(np.unique(rows, axis=0)) == 120
    assert not np.array_equal(rows[:120], rows[120:240])  # each epoch its own order


def test_lr_decay_multiplies_adams_step_size_after_every_pass():
    """Pass k's shard step is Adam with ``learning_rate · lr_decay^{k−1}``; the history records it."""
    X, y = make_data(n=600)
    cfg = dict(solver="consensus", hidden=(5,), shards=2, consensus_rho=0.01, local_epochs=1, alpha=0.0,
               validation_fraction=0, seed=3)
    decayed = make_solver(TrainConfig(**cfg, learning_rate=4e-3, lr_decay=0.5), X.shape[1], x_mean=X.mean(0),
                          x_scale=X.std(0), classes=np.arange(2))
    plain = make_solver(TrainConfig(**cfg, learning_rate=1e-3), X.shape[1], x_mean=X.mean(0), x_scale=X.std(0),
                        classes=np.arange(2))
    assert [decayed.lr_at(k) for k in (1, 2, 3)] == [4e-3, 2e-3, 1e-3]
    from solvers.inmemory import _Chunks

    chunks = _Chunks([X[:300]], [y[:300]])
    center = decayed.flat.from_weights(decayed.he_weights(decayed.L))
    got = decayed.shard_kernel(chunks, None, 0, ShardParams(center, 3, 0.01, 0.0, learning_rate=decayed.lr_at(3)))
    want = plain.shard_kernel(chunks, None, 0, ShardParams(center, 3, 0.01, 0.0))
    np.testing.assert_array_equal(got[1], want[1])
    fit = fit_in_memory(X, y, TrainConfig(**{**cfg, "iterations": 3}, learning_rate=4e-3, lr_decay=0.5),
                        chunk_rows=150)
    assert [h["learning_rate"] for h in fit.history] == [4e-3, 2e-3, 1e-3]


def test_first_lr_scale_multiplies_the_first_passs_step_size_only():
    """``first_lr_scale`` s: pass 1's Adam step size is s·learning_rate, the later passes' as without it; the hand-over's
    consensus phase reads it too. A run store written before the setting resumes with 1 (its rule)."""
    from solvers.config import HANDOVER, STORED_BEFORE

    X, y = make_data(n=600)
    cfg = dict(solver="consensus", hidden=(5,), shards=2, consensus_rho=0.01, local_epochs=1, alpha=0.0,
               validation_fraction=0, seed=3, learning_rate=4e-3, lr_decay=0.5)
    scaled = make_solver(TrainConfig(**cfg, first_lr_scale=2.0), X.shape[1], x_mean=X.mean(0), x_scale=X.std(0),
                         classes=np.arange(2))
    assert [scaled.lr_at(k) for k in (1, 2, 3)] == [8e-3, 2e-3, 1e-3]
    fit = fit_in_memory(X, y, TrainConfig(**{**cfg, "iterations": 2}, first_lr_scale=2.0), chunk_rows=150)
    assert [h["learning_rate"] for h in fit.history] == [8e-3, 2e-3]
    handover = make_solver(TrainConfig(**{**cfg, "solver": HANDOVER}, first_lr_scale=2.0), X.shape[1],
                           x_mean=X.mean(0), x_scale=X.std(0), classes=np.arange(2))
    assert handover.first.lr_at(1) == 8e-3
    stored = TrainConfig(solver=HANDOVER).to_dict()
    del stored["first_lr_scale"]  # written before the setting existed
    config, changed = TrainConfig.resumed(stored, {})
    assert config.first_lr_scale == 1.0 and not changed and STORED_BEFORE["first_lr_scale"] == 1.0
    with pytest.raises(InputError, match="cannot resume with settings that change the stored state.*first_lr_scale"):
        TrainConfig.resumed(stored, {"first_lr_scale": 2.0})
    with pytest.raises(InputError, match="first_lr_scale must be a positive finite number"):
        TrainConfig(first_lr_scale=0.0)


def test_averaging_rounds_keep_the_weighted_mean_of_the_duals_zero():
    """θ̄ = Σ w_s v_s with the same weights w_s = n_s in every round, so Σ_s w_s u_s = 0 and θ̄ is the models' average.

    Weighting a round by the rows it read (they differ by chunk, and a shard may have no chunk in the last
    round) let Σ w_s u_s drift away from 0 and the averages with it: held-out accuracy fell pass after pass.
    """
    from solvers.inmemory import InMemoryRunner
    from solvers.loop import shard_groups

    X, y = make_data(n=1000)
    cfg = TrainConfig(solver="consensus", hidden=(6,), shards=2, seed=2, validation_fraction=0, local_epochs=1,
                      first_pass_rows=0, alpha=0.0, consensus_rho=0.01)
    s = make_solver(cfg, X.shape[1], x_mean=X.mean(0), x_scale=X.std(0), classes=np.arange(2))
    runner = InMemoryRunner(s, X, y, chunk_rows=150)  # 7 chunks: shards of 4 and 3, the last chunk short
    state = s.initialize(runner)
    for _ in range(2):
        state, metrics = s.advance(runner, state)
    assert metrics["rounds"] == 4
    w = np.array([sum(len(runner.y[i]) for i in g) for g in shard_groups(7, 2)], float)
    u = np.array([runner.shard_slots[0][shard]["v"] for shard in range(2)]) - s.flat.from_weights(state.weights)
    np.testing.assert_allclose(w @ u / w.sum(), 0.0, atol=1e-12)
    assert np.abs(u).max() > 1e-6  # the duals themselves are not all zero


def test_regression_one_shard_is_plain_adam_on_the_squared_loss():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(500, 5)).astype(np.float32)
    y = X @ rng.normal(size=5) + 3.0
    cfg = TrainConfig(solver="consensus", task="regression", hidden=(6,), iterations=1, shards=1,
                      consensus_rho=1e-12, batch_size=50, seed=1, validation_fraction=0, local_epochs=1, alpha=0.0)
    fit = fit_in_memory(X, y, cfg)
    s = fit.solver
    assert s.loss_kind == "squared"
    Xs = ((X - s.x_mean) / s.x_scale).astype(np.float32)
    want = literal_adam_pass(Xs, s.task.targets(y, np.float32), s.he_weights(s.L), s.act, "squared", 1, cfg.learning_rate, 50)
    for W, W_ref in zip(fit.loop_state.weights, want):
        np.testing.assert_allclose(W, W_ref, rtol=2e-4, atol=2e-5)
    more = fit_in_memory(X, y, TrainConfig(**{**cfg.to_dict(), "iterations": 30, "learning_rate": 1e-2}))
    assert more.history[-1]["train_r2"] > 0.95


@pytest.mark.parametrize("n_classes", [2, 3])
def test_predict_proba_is_the_cross_entropy_link_and_its_log_loss_is_the_fitted_loss(n_classes):
    """Probabilities are σ(z − ½) or softmax(z): the mean −log p_y on a shard's rows is the loss Adam minimised."""
    X, y = make_data(n=600, n_classes=n_classes)
    cfg = TrainConfig(solver="consensus", hidden=(8,), iterations=3, shards=1, validation_fraction=0, seed=2)
    fit = fit_in_memory(X, y, cfg)
    net, s = fit.network, fit.solver
    assert net.link == "logistic"  # σ(z − ½) for one unit, softmax for more
    z = net.decision_function(X).astype(np.float64)
    proba = net.predict_proba(X)
    want = 1 / (1 + np.exp(-(z[:, 0] - 0.5))) if n_classes == 2 else np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(proba[:, 1] if n_classes == 2 else proba, want, rtol=1e-6, atol=2e-3)  # ε clipping
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert np.array_equal(np.argmax(proba, axis=1), np.searchsorted(net.classes, net.predict(X)))
    t = s.task.targets(np.searchsorted(s.classes, y), np.float64)
    fitted_loss, _ = loss_and_delta(s.loss_kind, z, t)
    idx = np.searchsorted(net.classes, y)
    log_loss = -np.mean(np.log(proba[np.arange(len(y)), idx]))
    assert log_loss == pytest.approx(fitted_loss / len(y), rel=2e-2)  # up to the clipping at ε


def test_weight_decay_is_in_the_shard_objective_and_spares_the_biases():
    """α adds α W̃ to every minibatch gradient: one shard, ρ → 0 is plain Adam on the mean loss + ½α‖W̃‖²."""
    X, y = make_data(n=400)
    cfg = TrainConfig(solver="consensus", hidden=(5,), iterations=1, shards=1, consensus_rho=1e-12, batch_size=50,
                      learning_rate=1e-2, seed=0, validation_fraction=0, local_epochs=1, alpha=0.3)
    fit = fit_in_memory(X, y, cfg)
    s = fit.solver
    Xs = ((X - s.x_mean) / s.x_scale).astype(np.float32)
    t = s.task.targets(np.searchsorted(s.classes, y), np.float32)
    want = literal_adam_pass(Xs, t, s.he_weights(s.L), s.act, s.loss_kind, 0, 1e-2, 50, alpha=0.3)
    for W, W_ref in zip(fit.loop_state.weights, want):
        np.testing.assert_allclose(W, W_ref, rtol=2e-4, atol=2e-5)
    plain = fit_in_memory(X, y, TrainConfig(**{**cfg.to_dict(), "alpha": 0.0}))
    assert not np.allclose(plain.loop_state.weights[0], fit.loop_state.weights[0])


def test_alpha_auto_is_the_output_layers_held_out_ridge_alpha_per_row(monkeypatch):
    """α of pass k = factor × Gauss-Newton's held-out choice α_L of the output layer at θ̄^{k−1}'s hidden layer, / n."""
    from solvers.gauss_newton import GaussNewtonSolver
    from solvers.loop import run_pass_held_out
    from solvers.losses import encode_labels
    from solvers.reference import InMemoryRunner
    from solvers.validation import RowSplit

    X, y = make_data(n=2000, n_classes=3)
    # seed 7: held-out rows on which α_L > 0 at both iterations (at seed 5 the second is 0: a trivial equality)
    cfg = TrainConfig(solver="consensus", hidden=(8,), iterations=2, shards=1, validation_fraction=0.2, seed=7,
                      patience=0)
    two = fit_in_memory(X, y, cfg, chunk_rows=100)
    one = fit_in_memory(X, y, TrainConfig(**{**cfg.to_dict(), "iterations": 1}), chunk_rows=100)
    s = two.solver
    gn = GaussNewtonSolver(TrainConfig(**{**cfg.to_dict(), "solver": "gauss-newton", "loss": "squared"}), X.shape[1],
                           s.classes, s.x_mean, s.x_scale)
    runner = InMemoryRunner(gn, X, encode_labels(y, s.classes), chunk_rows=100, split=RowSplit(0.2, 7))
    sums, held_sums = run_pass_held_out(runner, gn.forward_layout(False), "forward_chunk",
                                        gn._forward_params(one.loop_state.weights[:-1], False), 0)
    alpha = s.auto_alpha_factor * gn.output_layer(sums, held_sums)[2] / float(sums["n"])
    assert alpha > 0 and two.history[1]["alpha"] == pytest.approx(alpha, rel=1e-12)
    assert all(h["alpha"] > 0 for h in two.history)
    # a sample of the training chunks: α_L from the sample, per row of every training row
    from solvers import consensus as cons, sampling

    monkeypatch.setattr(cons, "ALPHA_SAMPLE_ROWS", 300)
    two = fit_in_memory(X, y, cfg, chunk_rows=100)
    one = fit_in_memory(X, y, TrainConfig(**{**cfg.to_dict(), "iterations": 1}), chunk_rows=100)
    chunks = sampling.sample(len(runner.bounds), sampling.initial_count(runner.bounds, "grow", 300), 7)
    assert 2 <= len(chunks) < len(runner.bounds)
    sums, held_sums = run_pass_held_out(runner, gn.forward_layout(False), "forward_chunk",
                                        gn._forward_params(one.loop_state.weights[:-1], False), 0, chunks=chunks)
    n_train = int((~RowSplit(0.2, 7).mask(0, len(y))).sum())  # every training row, not the sample's
    assert two.history[1]["alpha"] == pytest.approx(s.auto_alpha_factor * gn.output_layer(sums, held_sums)[2] / n_train,
                                                    rel=1e-12)


def test_alpha_auto_skips_pass_a_in_a_one_sweep_first_pass(monkeypatch):
    """A first pass that sweeps once over each shard (large data) takes α = 0 without pass A; later passes take pass A's α."""
    from solvers import consensus as cons

    calls = []
    real = cons.ConsensusSolver.held_out_alpha
    monkeypatch.setattr(cons.ConsensusSolver, "held_out_alpha",
                        lambda self, runner, weights, k: calls.append(k) or real(self, runner, weights, k))
    X, y = make_data(n=2000, n_classes=3)
    cfg = TrainConfig(solver="consensus", hidden=(8,), iterations=2, shards=2, validation_fraction=0.2, seed=7,
                      patience=0, first_pass_rows=200)  # 2 of the 10 chunks of a shard in pass 1
    windowed = fit_in_memory(X, y, cfg, chunk_rows=100)
    assert calls == [2] and windowed.history[0]["alpha"] == 0.0 and windowed.history[1]["alpha"] > 0
    calls.clear()  # one epoch over whole shards (large data): no pass A in pass 1 either
    sweep = fit_in_memory(X, y, TrainConfig(**{**cfg.to_dict(), "first_pass_rows": 0, "local_epochs": 1}),
                          chunk_rows=100)
    assert calls == [2] and sweep.history[0]["alpha"] == 0.0 and sweep.history[1]["alpha"] > 0
    calls.clear()  # several epochs over whole shards (small data): pass A from pass 1 on
    whole = fit_in_memory(X, y, TrainConfig(**{**cfg.to_dict(), "first_pass_rows": 0}), chunk_rows=100)
    assert calls == [1, 2] and whole.history[0]["alpha"] > 0  # pass 1's α is pass A's (later passes may choose 0)


def test_alpha_pass_uses_a_seeded_row_sample_of_big_chunks(monkeypatch):
    """Pass A of alpha auto reads at most ALPHA_CHUNK_ROWS rows of a chunk, seeded by (seed, the chunk's first row)."""
    from solvers import consensus as cons

    monkeypatch.setattr(cons, "ALPHA_CHUNK_ROWS", 30)
    X, y = make_data(n=100)
    cfg = TrainConfig(solver="consensus", hidden=(4,), seed=7)
    s = make_solver(cfg, X.shape[1], x_mean=X.mean(0), x_scale=X.std(0), classes=np.arange(2))
    gn = s._ridge_path
    params = gn._forward_params(s.he_weights(s.L)[:-1], False)
    _, got = s.alpha_chunk(X, y, None, 500, params)
    rows = np.sort(np.random.default_rng([7, 0xA1FA, 500]).choice(100, 30, replace=False))
    np.testing.assert_array_equal(got, gn.forward_chunk(X[rows], y[rows], None, 500, params)[1])
    assert gn.forward_layout(False).unpack(got)["n"] == 30
    assert not np.array_equal(got, s.alpha_chunk(X, y, None, 600, params)[1])  # another chunk: other rows
    np.testing.assert_array_equal(s.alpha_chunk(X[:30], y[:30], None, 500, params)[1],
                                  gn.forward_chunk(X[:30], y[:30], None, 500, params)[1])  # small chunks: every row


def test_consensus_learns_with_several_shards_and_both_variants():
    X, y = make_data(n=3000, n_classes=3)
    for variant in ("admm", "elastic"):
        cfg = TrainConfig(solver="consensus", hidden=(16,), iterations=6, shards=3, consensus=variant,
                          consensus_rho=1e-2, rho_growth=1.5, local_epochs=3, learning_rate=1e-2)
        fit = fit_in_memory(X, y, cfg, chunk_rows=500)
        assert fit.network.score(X, y) > 0.9
        assert [h["rho"] for h in fit.history][:3] == pytest.approx([1e-2, 1.5e-2, 2.25e-2])


def test_auto_local_epochs_give_small_data_enough_steps():
    s = make_solver(TrainConfig(solver="consensus", batch_size=200), 4, x_mean=np.zeros(4), x_scale=np.ones(4),
                    classes=np.arange(2))
    steps = ConsensusSolver.auto_steps
    big = steps * 200
    assert s.local_epochs(10 * big) == 1 and s.local_epochs(big) == 1 and s.local_epochs(big - 1) == 2
    assert s.local_epochs(630) == -(-big // 630)
    s.config = TrainConfig(solver="consensus", local_epochs=3)
    assert s.local_epochs(630) == 3


def test_handover_consensus_phase_keeps_the_100_step_rule():
    """consensus alone takes AUTO_STEPS per pass; the hand-over's consensus phase (what --solver auto runs on large
    data) keeps the rule it and auto's choice were measured with, also in its run's stored carry."""
    from solvers.consensus import AUTO_STEPS, LEGACY_AUTO_STEPS

    assert ConsensusSolver.auto_steps == AUTO_STEPS != LEGACY_AUTO_STEPS == 100
    args = dict(x_mean=np.zeros(4), x_scale=np.ones(4), classes=np.arange(2))
    alone = make_solver(TrainConfig(solver="consensus", batch_size=200), 4, **args)
    handover = make_solver(TrainConfig(solver="consensus,gauss-newton", batch_size=200), 4, **args)
    assert alone.local_epochs(1000) == -(-AUTO_STEPS * 200 // 1000)
    assert handover.first.local_epochs(1000) == 20 and handover.first.steps_rule(LoopState(0, [], {})) == 100
    assert alone.local_epochs(54000) == handover.first.local_epochs(54000) == 1  # MNIST 60 k: one epoch either way
    X, y = make_data(n=1000)
    cfg = TrainConfig(**{**HANDOVER, "local_epochs": 0, "iterations": 2})
    fit = fit_in_memory(X, y, cfg, chunk_rows=250)
    from solvers.validation import RowSplit

    split = RowSplit(cfg.validation_fraction, cfg.seed)
    n = sum(int((~split.mask(a, a + 250)).sum()) for a in range(0, 1000, 250))
    assert [h["local_epochs"] for h in fit.history] == [-(-100 * cfg.batch_size // n)] * 2 != [alone.local_epochs(n)] * 2


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_auto_local_epochs_count_the_rows_of_all_shards(shards):
    """Every shard's pass runs ⌈auto_steps·B / n⌉ epochs of its own rows, n all training rows: the same for any shards."""
    X, y = make_data(n=1000)
    cfg = TrainConfig(solver="consensus", hidden=(4,), iterations=2, shards=shards, batch_size=100, seed=1,
                      validation_fraction=0.2, patience=0, first_pass_rows=0, alpha=0.0)
    fit = fit_in_memory(X, y, cfg, chunk_rows=100)
    from solvers.validation import RowSplit

    split = RowSplit(0.2, 1)  # the rows the run holds out of each 100-row chunk
    n = sum(int((~split.mask(a, a + 100)).sum()) for a in range(0, 1000, 100))
    want = -(-ConsensusSolver.auto_steps * 100 // n)
    assert 700 < n < 900 and want > 1 and [h["local_epochs"] for h in fit.history] == [want, want]
    # the training loss and score are of the last local epoch: every training row once
    s = make_solver(cfg, X.shape[1], x_mean=X.mean(0), x_scale=X.std(0), classes=np.arange(2))
    assert s.local_epochs(n) == want


def test_glorot_start_is_scikit_learns_uniform_and_seeded():
    """``init`` glorot: weights and biases U(±√(6/(fan_in + fan_out))) (2 for sigmoid), as MLPClassifier; seeded."""
    cfg = TrainConfig(solver="consensus", hidden=(400, 300), init="glorot", seed=5)
    s = make_solver(cfg, 200, x_mean=np.zeros(200), x_scale=np.ones(200), classes=np.arange(3))
    weights = s.initialize(None).weights
    assert [W.shape for W in weights] == [(400, 201), (300, 401), (3, 301)]
    for W in weights:
        fan_out, fan_in = W.shape[0], W.shape[1] - 1
        bound = np.sqrt(6.0 / (fan_in + fan_out))
        assert np.abs(W).max() <= bound and np.abs(W).max() > 0.99 * bound
        for part in (W[:, :-1].ravel(), W[:, -1]):  # weights and biases alike: mean 0, variance bound²/3
            se = bound / np.sqrt(3 * part.size)
            assert abs(part.mean()) < 5 * se
        assert W[:, :-1].var() == pytest.approx(bound ** 2 / 3, rel=0.05)
        assert np.all(W[:, -1] != 0)
    again = make_solver(cfg, 200, x_mean=np.zeros(200), x_scale=np.ones(200), classes=np.arange(3)).initialize(None)
    for W, W2 in zip(weights, again.weights):
        np.testing.assert_array_equal(W, W2)
    other = make_solver(TrainConfig(**{**cfg.to_dict(), "seed": 6}), 200, x_mean=np.zeros(200), x_scale=np.ones(200),
                        classes=np.arange(3)).initialize(None)
    assert not np.array_equal(weights[0], other.weights[0])
    sig = make_solver(TrainConfig(**{**cfg.to_dict(), "activation": "sigmoid"}), 200, x_mean=np.zeros(200),
                      x_scale=np.ones(200), classes=np.arange(3)).initialize(None)
    assert np.abs(sig.weights[0]).max() <= np.sqrt(2.0 / 600) < np.sqrt(6.0 / 600)
    he = make_solver(TrainConfig(**{**cfg.to_dict(), "init": "forward"}), 200, x_mean=np.zeros(200),
                     x_scale=np.ones(200), classes=np.arange(3))
    for W, W_he in zip(he.initialize(None).weights, he.he_weights(he.L)):
        np.testing.assert_array_equal(W, W_he)
    assert not np.any(W_he[:, -1])


def test_init_auto_resolves_per_solver():
    from solvers.config import CONSENSUS_INIT

    assert TrainConfig(solver="consensus").resolved_init() == CONSENSUS_INIT
    assert TrainConfig(solver="consensus,gauss-newton").resolved_init() == CONSENSUS_INIT
    assert TrainConfig(solver="consensus", init="forward").resolved_init() == "forward"
    assert TrainConfig(solver="admm").resolved_init() == "data"
    assert TrainConfig(solver="gauss-newton").resolved_init() == "forward"
    with pytest.raises(InputError, match="init 'he'"):
        TrainConfig(init="he")


def test_pass_windows_double_from_the_first_and_go_on_through_the_chunks():
    from solvers.consensus import pass_window

    assert [pass_window(k, 9, 1) for k in range(1, 7)] == [(0, 1), (1, 2), (3, 4), (7, 8), (6, 9), (6, 9)]
    assert [pass_window(k, 5, 2) for k in range(1, 5)] == [(0, 2), (2, 4), (1, 5), (1, 5)]
    assert [pass_window(k, 3, 0) for k in (1, 2, 9)] == [(0, 3)] * 3  # 0: whole epochs
    assert pass_window(4, 3, 3) == pass_window(1, 3, 5) == (0, 3)


def test_a_window_pass_reads_only_its_chunks_once_and_first_pass_rows_sets_it():
    from solvers.inmemory import InMemoryRunner

    X, y = make_data(n=1000)
    cfg = TrainConfig(solver="consensus", hidden=(4,), shards=1, alpha=0.0, local_epochs=3, first_pass_rows=150)
    s = make_solver(cfg, X.shape[1], x_mean=X.mean(0), x_scale=X.std(0), classes=np.arange(2))
    runner = InMemoryRunner(s, X, y, chunk_rows=100)
    assert s.first_chunks(runner) == 2  # 150 rows in chunks of 100, one shard: 2 chunks

    class Counting:
        def __init__(self):
            self.reads = []

        def __len__(self):
            return 10

        def n_rows(self):
            return 1000

        def read(self, i):
            self.reads.append(i)
            return X[100 * i:100 * (i + 1)], y[100 * i:100 * (i + 1)]

    center = s.flat.from_weights(s.he_weights(s.L))
    for k, want in ((1, [0, 1]), (2, [2, 3, 4, 5]), (3, [6, 7, 8, 9, 0, 1, 2, 3]), (4, [4, 5, 6, 7, 8, 9, 0, 1, 2, 3] * 3)):
        chunks = Counting()
        epochs = s.local_epochs(1000) if k == 4 else 1  # the client's epochs of a whole pass (3: local_epochs)
        _, sums = s.shard_kernel(chunks, None, 0, ShardParams(center, k, 1e-3, 0.0, first_chunks=2, epochs=epochs))
        assert chunks.reads == want
        assert s.shard_layout().unpack(sums)["n"] == 100 * len(want) // (3 if k == 4 else 1)  # the last epoch's rows


def test_shards_are_consecutive_chunk_groups():
    assert shard_groups(5, 2) == [[0, 1, 2], [3, 4]]
    assert shard_groups(3, 3) == [[0], [1], [2]]
    with pytest.raises(InputError, match="--shards 4 needs between 1 and 3"):
        shard_groups(3, 4)


def test_bad_consensus_settings_are_refused():
    with pytest.raises(InputError, match="shards must be >= 0"):
        TrainConfig(shards=-1)
    with pytest.raises(InputError, match="consensus 'x' is not one of"):
        TrainConfig(consensus="x")
    with pytest.raises(InputError, match="local_epochs must be >= 0"):
        TrainConfig(local_epochs=-1)
    with pytest.raises(InputError, match="batch_size must be >= 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(InputError, match="consensus_rho must be a positive"):
        TrainConfig(consensus_rho=0.0)
    with pytest.raises(InputError, match="--loss hinge needs --solver admm"):
        ConsensusSolver(TrainConfig(solver="consensus", loss="hinge"), 3, [0, 1], np.zeros(3), np.ones(3))


def test_flat_layout_round_trips_the_weights():
    lay = FlatLayout([(4, 3), (2, 5)])
    rng = np.random.default_rng(0)
    ws = [rng.normal(size=(4, 3)), rng.normal(size=(2, 5))]
    back = lay.to_weights(lay.from_weights(ws))
    for a, b in zip(ws, back):
        np.testing.assert_array_equal(a, b)
    assert lay.bias_mask().sum() == 6


# -- the pipeline ------------------------------------------------------------------------
def _final_weights(store):
    from storage.runstore import RunStore

    return RunStore.open(store).load_checkpoint().weights


def test_pipeline_consensus_matches_reference_and_resumes_bitwise(client, tmp_path):
    from pipeline.training import train
    from storage.data import write_data

    X, y = make_data(n=1200, n_classes=3)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=200)
    cfg = TrainConfig(solver="consensus", hidden=(10,), iterations=4, shards=2, consensus_rho=0.05, seed=3,
                      first_pass_rows=200, local_epochs=1)  # windows: 1, then both chunks of a shard (2 rounds)
    result = train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=300,
                   report=quiet)
    ref = fit_in_memory(X, y, cfg, chunk_rows=300)
    assert result.store.attrs["n_shards"] == 2
    assert [h["rounds"] for h in result.history] == [h["rounds"] for h in ref.history] and ref.history[-1]["rounds"] > 1
    # the held-out accuracy the pass graph took (rows of every chunk) is the in-memory one
    assert [h["validation_accuracy"] for h in result.history] == [h["validation_accuracy"] for h in ref.history]
    for W, W_ref in zip(result.network.weights, ref.network.weights):
        np.testing.assert_allclose(W, W_ref, rtol=1e-6, atol=1e-7)
    # the stored model gives the softmax of its logits, as the in-memory one (pipeline.evaluate's log-loss uses it)
    from pipeline.model import load_network

    stored = load_network(tmp_path / "r.zarr")
    assert stored.link == result.network.link == ref.network.link == "logistic"
    np.testing.assert_allclose(stored.predict_proba(X), ref.network.predict_proba(X), rtol=1e-5, atol=1e-6)
    # two passes, then resume to four: the same bytes as the uninterrupted run
    train(client, store=tmp_path / "a.zarr", data=tmp_path / "d.zarr",
          config=TrainConfig(**{**cfg.to_dict(), "iterations": 2}), chunk_rows=300, report=quiet)
    assert not (tmp_path / "a.zarr" / "shards" / "slot2").exists()  # the rounds between store nothing: two slots
    train(client, store=tmp_path / "a.zarr", resume=True, iterations=4, report=quiet)
    for W, W_ref in zip(_final_weights(tmp_path / "a.zarr"), _final_weights(tmp_path / "r.zarr")):
        np.testing.assert_array_equal(W, W_ref)


def test_pipeline_consensus_glorot_auto_epochs_matches_reference_and_resumes_bitwise(client, tmp_path):
    """The Glorot start and the auto local epochs (from all shards' rows, on the client): pipeline = reference, resume exact."""
    from pipeline.training import train
    from storage.data import write_data

    X, y = make_data(n=1200, n_classes=3)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=200)
    cfg = TrainConfig(solver="consensus", hidden=(10,), iterations=3, shards=2, seed=3, init="glorot", batch_size=50,
                      first_pass_rows=0, local_epochs=0)
    result = train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=300,
                   report=quiet)
    ref = fit_in_memory(X, y, cfg, chunk_rows=300)
    epochs = [h["local_epochs"] for h in result.history]
    assert epochs == [h["local_epochs"] for h in ref.history] and epochs[0] > 1
    assert [h["validation_accuracy"] for h in result.history] == [h["validation_accuracy"] for h in ref.history]
    for W, W_ref in zip(result.network.weights, ref.network.weights):
        np.testing.assert_allclose(W, W_ref, rtol=1e-6, atol=1e-7)
    train(client, store=tmp_path / "a.zarr", data=tmp_path / "d.zarr",
          config=TrainConfig(**{**cfg.to_dict(), "iterations": 1}), chunk_rows=300, report=quiet)
    train(client, store=tmp_path / "a.zarr", resume=True, iterations=3, report=quiet)
    for W, W_ref in zip(_final_weights(tmp_path / "a.zarr"), _final_weights(tmp_path / "r.zarr")):
        np.testing.assert_array_equal(W, W_ref)


def test_a_run_keeps_the_steps_rule_it_was_created_with(client, tmp_path, monkeypatch):
    """The auto local epochs' steps rule is stored in the run's carry: a store created under one ``auto_steps`` resumes
    under it after the default changed, bitwise as its whole run; a store of older code (no rule in its carry) resumes
    under :data:`LEGACY_AUTO_STEPS`, bitwise as the whole run of that code."""
    from pipeline.training import train
    from solvers.consensus import LEGACY_AUTO_STEPS
    from storage.data import write_data

    X, y = make_data(n=1200, n_classes=3)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=200)
    cfg = TrainConfig(solver="consensus", hidden=(6,), iterations=3, shards=2, seed=3, batch_size=50,
                      first_pass_rows=0, local_epochs=0, alpha=0.0)

    def run(store, iterations, resume=False):
        if resume:
            return train(client, store=tmp_path / store, resume=True, iterations=iterations, report=quiet)
        return train(client, store=tmp_path / store, data=tmp_path / "d.zarr", chunk_rows=300, report=quiet,
                     config=TrainConfig(**{**cfg.to_dict(), "iterations": iterations}))

    new_steps = 3 * LEGACY_AUTO_STEPS
    monkeypatch.setattr(ConsensusSolver, "auto_steps", new_steps)
    whole_new = run("new.zarr", 3)
    run("a.zarr", 1)
    monkeypatch.setattr(ConsensusSolver, "auto_steps", LEGACY_AUTO_STEPS)  # the default changes under the store
    resumed = run("a.zarr", 3, resume=True)
    assert [h["local_epochs"] for h in resumed.history] == [h["local_epochs"] for h in whole_new.history]
    for W, W_ref in zip(_final_weights(tmp_path / "a.zarr"), _final_weights(tmp_path / "new.zarr")):
        np.testing.assert_array_equal(W, W_ref)

    advance = ConsensusSolver.advance

    def older(self, runner, state):  # older code: the legacy rule, not stored in the carry
        new, metrics = advance(self, runner, state)
        new.carry.pop("auto_steps")
        return new, metrics
    monkeypatch.setattr(ConsensusSolver, "advance", older)
    whole_old = run("old.zarr", 3)
    run("b.zarr", 1)
    monkeypatch.setattr(ConsensusSolver, "advance", advance)
    monkeypatch.setattr(ConsensusSolver, "auto_steps", new_steps)  # today's default differs from the store's rule
    resumed = run("b.zarr", 3, resume=True)
    epochs = [h["local_epochs"] for h in resumed.history]
    assert epochs == [h["local_epochs"] for h in whole_old.history] != [h["local_epochs"] for h in whole_new.history]
    for W, W_ref in zip(_final_weights(tmp_path / "b.zarr"), _final_weights(tmp_path / "old.zarr")):
        np.testing.assert_array_equal(W, W_ref)


def test_auto_shards_is_one_per_worker_thread(client, tmp_path):
    from pipeline.training import train
    from storage.data import write_data

    X, y = make_data(n=800)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=800)
    result = train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr",
                   config=TrainConfig(solver="consensus", hidden=(5,), iterations=1), report=quiet)
    assert result.store.attrs["config"]["shards"] == sum(client.nthreads().values()) == 2
    assert -(-800 // result.store.chunk_rows) >= 2  # the one data chunk was split so that each shard has rows


def test_shard_tasks_run_side_by_side_each_on_its_own_worker(client, tmp_path):
    """Shard s runs on worker thread s mod T every pass (not all on the worker holding the broadcast parameters)."""
    from distributed import get_task_stream

    from pipeline.passes import shard_places
    from pipeline.training import train
    from storage.data import write_data

    X, y = make_data(n=1600)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=200)
    cfg = TrainConfig(solver="consensus", hidden=(5,), iterations=3, shards=4, alpha=0.0, validation_fraction=0.0)
    with get_task_stream(client) as ts:
        train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=200, report=quiet)
    ran = [t["worker"] for t in ts.data if "shard_round_task" in str(t["key"])]
    assert len(ran) == 3 * 4
    workers = sorted(client.nthreads())
    assert ran.count(workers[0]) == ran.count(workers[1]) == 6
    assert [p["workers"] for p in shard_places(client, 4)] == [[w] for w in workers * 2]

    class Threads:  # a client that takes the loose-placement plugin (pipeline.placement)
        def nthreads(self):
            return {"tcp://b": 1, "tcp://a": 2}

        def register_plugin(self, plugin):
            pass

    assert [p["workers"][0] for p in shard_places(Threads(), 4)] == ["tcp://a", "tcp://a", "tcp://b", "tcp://a"]
    assert all(p["allow_other_workers"] for p in shard_places(Threads(), 4))


def test_chunk_tasks_of_a_sharded_solver_run_on_their_shards_worker():
    """α's pass A (and a hand-over's Gauss-Newton passes) read chunk i on the worker of its shard, whose cache holds it."""
    from types import SimpleNamespace

    from pipeline.passes import DaskRunner

    class Client:  # a client that takes the loose-placement plugin (pipeline.placement)
        def nthreads(self):
            return {"tcp://b": 1, "tcp://a": 1}

        def register_plugin(self, plugin):
            pass

    bounds = [(200 * i, 200 * (i + 1)) for i in range(5)]
    for name in ("consensus", "consensus,gauss-newton"):
        solver = SimpleNamespace(sharded=True, config=TrainConfig(solver=name, shards=2), state_widths=dict)
        places = DaskRunner(Client(), solver, "d", "r", bounds)._chunk_places()
        assert [p["workers"] for p in places] == [["tcp://a"]] * 3 + [["tcp://b"]] * 2  # shards [0, 1, 2], [3, 4]
        assert all(p["allow_other_workers"] for p in places)
    gn = SimpleNamespace(sharded=False, config=TrainConfig(solver="gauss-newton"), state_widths=dict)
    assert DaskRunner(Client(), gn, "d", "r", bounds)._chunk_places() == [{}] * 5  # the scheduler chooses


def test_retried_shard_task_rewrites_the_same_bytes(tmp_path):
    """A shard round task run twice (a retry) reads what it read before and writes identical state and sums.

    Round 0 reads the committed slot, a later round takes the previous round's state from memory; the last
    round writes the other slot. Run twice, either gives the same sums, the same kept state and the same bytes.
    """
    import zarr

    from pipeline.passes import shard_round_task
    from storage.data import write_data
    from storage.runstore import RunStore, shard_state_path

    X, y = make_data(n=600)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=100)
    cfg = TrainConfig(solver="consensus", hidden=(7,), shards=2, consensus_rho=0.1)
    s = make_solver(cfg, X.shape[1], x_mean=X.mean(0), x_scale=X.std(0), classes=np.arange(2))
    run = RunStore.create(tmp_path / "r.zarr", config=cfg.to_dict(), data={}, state_widths={}, n_samples=600,
                          chunk_rows=100, classes=np.arange(2), x_mean=s.x_mean, x_scale=s.x_scale,
                          shard_widths=s.shard_state_widths(), n_shards=2)
    center = s.flat.from_weights(s.he_weights(s.L))
    bounds = [(0, 100), (100, 200), (200, 300)]
    args = (str(tmp_path / "d.zarr"), str(run.path))

    def stored(slot):
        return {n: zarr.open_array(store=str(run.path), path=shard_state_path(slot, n))[0] for n in s.shard_state_widths()}

    _, first = shard_round_task(s, "shard_kernel", ShardParams(center, 1, 0.1, 0.0), *args, None, None, 1, 0, bounds,
                                keep=False)
    # iteration 2, two rounds: round 0 reads slot 1 (kept in memory), round 1 writes slot 0; run each twice
    p0 = ShardParams(center * 0.9, 2, 0.1, 1.0, rounds=2, round=0)
    kept_a, sums_a = shard_round_task(s, "shard_kernel", p0, *args, 1, None, None, 0, bounds)
    kept_b, sums_b = shard_round_task(s, "shard_kernel", p0, *args, 1, None, None, 0, bounds)
    np.testing.assert_array_equal(sums_a, sums_b)
    for n in kept_a:
        np.testing.assert_array_equal(kept_a[n], kept_b[n])
    p1 = ShardParams(center * 0.95, 2, 0.1, 1.0, rounds=2, round=1)
    _, last_a = shard_round_task(s, "shard_kernel", p1, *args, None, kept_a, 0, 0, bounds, keep=False)
    bytes_a = stored(0)
    _, last_b = shard_round_task(s, "shard_kernel", p1, *args, None, kept_b, 0, 0, bounds, keep=False)
    np.testing.assert_array_equal(last_a, last_b)
    for n, value in bytes_a.items():
        np.testing.assert_array_equal(stored(0)[n], value)
        assert not np.isnan(value).any()
    assert not np.array_equal(first, sums_a)


# -- hand-over to Gauss-Newton -------------------------------------------------------------
HANDOVER = dict(solver="consensus,gauss-newton", hidden=(16,), shards=2, local_epochs=3, learning_rate=1e-2,
                handover_gain=0.01, validation_fraction=0.2, patience=0, seed=1)
# the hand-over's consensus phase run alone: consensus with the hand-over's first-pass step size (its default 2,
# consensus alone's 1: solvers.config.HANDOVER_FIRST_LR_SCALE)
CONSENSUS_ALONE = {**HANDOVER, "solver": "consensus", "first_lr_scale": 2.0}


def test_handover_switches_once_the_held_out_gain_falls_below_the_threshold():
    from solvers.gauss_newton import GaussNewtonSolver

    X, y = make_data(n=3000, n_classes=3)
    fit = fit_in_memory(X, y, TrainConfig(**HANDOVER, iterations=9), chunk_rows=250)
    phases = [h["phase"] for h in fit.history]
    k = phases.index("hand-over")
    assert phases[:k] == ["consensus"] * k and phases[k + 1:] == ["gauss-newton"] * (len(phases) - k - 1)
    scores = [h["validation_accuracy"] for h in fit.history]
    j = k - fit.solver.config.handover_delay  # the first pass to gain < 0.01 (1-based); the hand-over's default: 1
    assert fit.solver.config.handover_delay == 1 and j >= 2 and scores[j - 1] - scores[j - 2] < 0.01
    assert all(b - a >= 0.01 for a, b in zip(scores[:j - 2], scores[1:j - 1]))
    # the hand-over starts Gauss-Newton on the consensus loss (cross-entropy) from the consensus weights as they
    # are, output layer included, at the last pass's weight decay α_c in its units (n α_c / 2): its pass B there,
    # then its first step, in the hand-over iteration
    consensus_only = fit_in_memory(X, y, TrainConfig(**CONSENSUS_ALONE, iterations=k),
                                   chunk_rows=250)
    assert fit.history[k]["gauss_newton_loss"] == "cross-entropy"
    from solvers.loop import training_rows
    from solvers.reference import InMemoryRunner
    from solvers.validation import RowSplit
    from solvers.losses import encode_labels

    alpha_c = consensus_only.history[-1]["alpha"]
    from solvers.handover import HANDOVER_DAMPING

    gn = GaussNewtonSolver(replace(fit.solver.config, loss="cross-entropy", alpha=1.0, damping=HANDOVER_DAMPING),
                           X.shape[1], fit.solver.classes, fit.solver.x_mean, fit.solver.x_scale)
    runner = InMemoryRunner(gn, X, encode_labels(y, fit.solver.classes), chunk_rows=250, split=RowSplit(0.2, 1))
    gn.config = replace(gn.config, alpha=training_rows(runner) * alpha_c / 2)
    assert fit.history[k]["alpha"] == gn.config.alpha
    kept = consensus_only.loop_state.weights
    start = gn.initialize(runner, hidden=kept[:-1], output=kept[-1])
    np.testing.assert_array_equal(start.weights[-1], kept[-1])
    first, _ = gn.advance(runner, start)
    handed = fit_in_memory(X, y, TrainConfig(**HANDOVER, iterations=k + 1), chunk_rows=250)
    for W, W_ref in zip(handed.loop_state.weights, first.weights):
        np.testing.assert_allclose(W, W_ref, rtol=1e-10)


def test_handover_without_the_consensus_alpha_in_the_carry_recomputes_it(monkeypatch):
    """A carry of older code stopped in the consensus phase has no α_c: the hand-over takes the consensus rule's α
    of that iteration at its weights (what a further consensus pass would use), not an unregularised α = 0."""
    from solvers.handover import HandOverSolver
    from solvers.loop import training_rows
    from solvers.reference import InMemoryRunner
    from solvers.validation import RowSplit
    from solvers.losses import encode_labels

    observe = HandOverSolver.observe

    def older(self, state, record):  # the carry of code that did not keep α_c
        observe(self, state, record)
        state.carry.pop("consensus_alpha", None)
    monkeypatch.setattr(HandOverSolver, "observe", older)
    rng = np.random.default_rng(0)  # noisier labels than make_data's: the held-out ridge path's α is positive
    X = rng.normal(size=(3000, 20)).astype(np.float32)
    y = np.argmax(X @ rng.normal(size=(20, 3)) + rng.normal(size=(3000, 3)), axis=1)
    fit = fit_in_memory(X, y, TrainConfig(**HANDOVER, iterations=7), chunk_rows=250)
    k = [h["phase"] for h in fit.history].index("hand-over")
    consensus = fit_in_memory(X, y, TrainConfig(**CONSENSUS_ALONE, iterations=k + 1),
                              chunk_rows=250)
    alpha_c = consensus.history[k]["alpha"]  # pass k + 1's α at the weights of pass k
    assert alpha_c > 0 and alpha_c != consensus.history[k - 1]["alpha"]
    runner = InMemoryRunner(fit.solver, X, encode_labels(y, fit.solver.classes), chunk_rows=250,
                            split=RowSplit(0.2, 1))
    assert fit.history[k]["alpha"] == training_rows(runner) * alpha_c / 2
    assert all(h["alpha"] > 0 for h in fit.history[k:])


def test_handover_damping_is_the_first_steps_only_and_a_resume_takes_damping_as_given():
    """HANDOVER_DAMPING is the hand-over step's λ; a --damping changed on resume after it is honoured as for
    --solver gauss-newton (it was raised to at least HANDOVER_DAMPING)."""
    from solvers.handover import HANDOVER_DAMPING, HandOverSolver
    from solvers.losses import encode_labels
    from solvers.reference import InMemoryRunner
    from solvers.validation import RowSplit

    X, y = make_data(n=3000, n_classes=3)
    cfg = TrainConfig(**HANDOVER, iterations=9)
    fit = fit_in_memory(X, y, cfg, chunk_rows=250)
    assert "gauss-newton" in [h["phase"] for h in fit.history] and float(cfg.damping) < HANDOVER_DAMPING
    changed = replace(fit.solver.config, damping=0.5)
    solver = HandOverSolver(changed, *fit.solver._args)
    runner = InMemoryRunner(solver, X, encode_labels(y, solver.classes), chunk_rows=250, split=RowSplit(0.2, 1))
    state = solver.resume(runner, fit.loop_state, {"damping"})
    assert float(state.carry["damping"]) == 0.5 and float(state.carry["phase"]) == 2


def test_session_8_handover_refits_the_output_layer_by_least_squares(monkeypatch):
    """``keep_weights = False`` (phase 1, kept so session 8's run stores resume as they ran): Gauss-Newton's own loss
    from the consensus hidden weights, the output layer refitted by pass A."""
    from solvers.gauss_newton import GaussNewtonSolver
    from solvers.handover import HandOverSolver

    monkeypatch.setattr(HandOverSolver, "keep_weights", False)
    X, y = make_data(n=3000, n_classes=3)
    fit = fit_in_memory(X, y, TrainConfig(**HANDOVER, iterations=9), chunk_rows=250)
    k = [h["phase"] for h in fit.history].index("hand-over")
    assert all("gauss_newton_loss" not in h for h in fit.history)
    consensus_only = fit_in_memory(X, y, TrainConfig(**CONSENSUS_ALONE, iterations=k),
                                   chunk_rows=250)
    gn = GaussNewtonSolver(fit.solver.config, X.shape[1], fit.solver.classes, fit.solver.x_mean,
                           fit.solver.x_scale)
    from solvers.reference import InMemoryRunner
    from solvers.validation import RowSplit
    from solvers.losses import encode_labels

    runner = InMemoryRunner(gn, X, encode_labels(y, fit.solver.classes), chunk_rows=250, split=RowSplit(0.2, 1))
    start = gn.initialize(runner, hidden=consensus_only.loop_state.weights[:-1])
    handed = fit_in_memory(X, y, TrainConfig(**HANDOVER, iterations=k + 1), chunk_rows=250)
    for W, W_ref in zip(handed.loop_state.weights, start.weights):
        np.testing.assert_allclose(W, W_ref, rtol=1e-10)


def test_handover_gauss_newton_phase_runs_the_held_out_kernels_on_held_out_rows(monkeypatch):
    """The held-out rows of the Gauss-Newton phase's passes get the score-only kernels, as with --solver gauss-newton.

    Without them the hand-over ran the full curvature kernel on the held-out rows (and kept their activations).
    """
    from solvers.gauss_newton import GaussNewtonSolver

    calls = {"forward_chunk_held": 0, "curvature_chunk_held": 0}
    def counting(name):
        real = getattr(GaussNewtonSolver, name)

        def kernel(self, *args):
            calls[name] += 1
            return real(self, *args)
        return kernel
    for name in calls:
        monkeypatch.setattr(GaussNewtonSolver, name, counting(name))
    X, y = make_data(n=3000, n_classes=3)
    fit = fit_in_memory(X, y, TrainConfig(**HANDOVER, iterations=9), chunk_rows=250)
    assert "gauss-newton" in [h["phase"] for h in fit.history]
    assert calls["forward_chunk_held"] > 0 and calls["curvature_chunk_held"] > 0


def test_pipeline_handover_matches_reference_and_resumes_at_any_point(client, tmp_path):
    from pipeline.training import train
    from storage.data import write_data

    X, y = make_data(n=3000, n_classes=3)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=250)
    cfg = TrainConfig(**HANDOVER, iterations=7)
    whole = train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=cfg, chunk_rows=250,
                  report=quiet)
    ref = fit_in_memory(X, y, cfg, chunk_rows=250)
    assert [h["phase"] for h in whole.history] == [h["phase"] for h in ref.history]
    assert "hand-over" in [h["phase"] for h in whole.history]
    # probabilities: the consensus logits' link up to the hand-over, Gauss-Newton's after it (the model's phase)
    from pipeline.model import load_network
    from storage.runstore import RunStore

    best = RunStore.open(tmp_path / "r.zarr").model_iteration()
    phase = next(h["phase"] for h in whole.history if h["iteration"] == best)
    from solvers.handover import HandOverSolver

    # Gauss-Newton fits the consensus loss after the hand-over (its records say so): the logits' link throughout
    assert load_network(tmp_path / "r.zarr").link == whole.network.link == "logistic"
    assert all(h.get("gauss_newton_loss") == "cross-entropy" for h in whole.history if h["phase"] != "consensus")
    before = TrainConfig(**{**cfg.to_dict(), "solver": "gauss-newton"}).output_link()  # session 8's: squared, identity
    kept = {"gauss_newton_loss": "cross-entropy"}
    for record, link in ((None, "logistic"), ({"phase": "consensus"}, "logistic"),
                         ({"phase": "hand-over", **kept}, "logistic"), ({"phase": "gauss-newton", **kept}, "logistic"),
                         ({"phase": "hand-over"}, before), ({"phase": "gauss-newton"}, before)):
        assert HandOverSolver.output_link(cfg, 3, record) == link
    assert phase in ("consensus", "hand-over", "gauss-newton") and before == "identity"
    for W, W_ref in zip(_final_weights(tmp_path / "r.zarr"), ref.loop_state.weights):
        np.testing.assert_allclose(W, W_ref, rtol=1e-5, atol=1e-6)
    k = [h["phase"] for h in whole.history].index("hand-over") + 1
    for stop in (k - 1, k):  # killed just before and just after the hand-over
        store = tmp_path / f"part{stop}.zarr"
        train(client, store=store, data=tmp_path / "d.zarr", config=TrainConfig(**{**cfg.to_dict(), "iterations": stop}),
              chunk_rows=250, report=quiet)
        train(client, store=store, resume=True, iterations=7, report=quiet)
        for W, W_ref in zip(_final_weights(store), _final_weights(tmp_path / "r.zarr")):
            np.testing.assert_array_equal(W, W_ref)



def test_consensus_cannot_fall_back_once_the_next_pass_wrote_its_shard_slot(client, tmp_path):
    """The per-shard state lives in two slots like ADMM's per-sample state: a damaged last commit whose
    predecessor's shard slot was overwritten is one clear error, never a silently different run."""
    from pathlib import Path

    from pipeline.training import train
    from storage.data import write_data

    X, y = make_data(n=800)
    write_data(tmp_path / "d.zarr", X, y, chunk_rows=200)
    store = tmp_path / "r.zarr"
    train(client, store=store, data=tmp_path / "d.zarr", report=quiet,
          config=TrainConfig(solver="consensus", hidden=(5,), iterations=3, shards=2))
    w1 = sorted(p for p in (Path(store) / "checkpoint/3/packed").rglob("*") if p.is_file() and p.name != "zarr.json")[0]
    data = bytearray(w1.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w1.write_bytes(bytes(data))
    with pytest.raises(InputError, match="state of the previous commit .* has been overwritten"):
        train(client, store=store, resume=True, iterations=4, report=quiet)


def test_a_run_stopped_at_iteration_0_keeps_the_steps_rule_it_was_created_with(monkeypatch):
    """initialize() stores auto_steps in the carry, so a store committed at iteration 0 resumes under its own rule."""
    from solvers.consensus import LEGACY_AUTO_STEPS

    cfg = TrainConfig(solver="consensus", hidden=(3,), shards=2, local_epochs=0)
    solver = make_solver(cfg, 4, x_mean=np.zeros(4), x_scale=np.ones(4), classes=np.arange(2))
    created, rule = solver.initialize(None), solver.auto_steps
    monkeypatch.setattr(ConsensusSolver, "auto_steps", 3 * LEGACY_AUTO_STEPS)  # the default changes under the store
    later = make_solver(cfg, 4, x_mean=np.zeros(4), x_scale=np.ones(4), classes=np.arange(2))
    assert later.steps_rule(created) == rule != later.auto_steps
    assert later.steps_rule(LoopState(0, created.weights, {})) == later.auto_steps  # older code's empty carry


def test_pipeline_consensus_default_shards_fit_one_chunk_data_and_a_too_large_shards_creates_nothing(client, tmp_path):
    """One-chunk data (iris, wine, breast cancer): the default shards (one per worker thread) is capped at the training
    chunks; an explicit --shards above them is one error line before the run store exists (newuser15_s15.md F1)."""
    from pipeline.training import train
    from storage.data import write_data

    X, y = make_data(n=300, n_classes=3)
    write_data(tmp_path / "d.zarr", X, y)
    cfg = TrainConfig(solver="consensus", hidden=(10,), iterations=1)
    result = train(client, store=tmp_path / "r.zarr", data=tmp_path / "d.zarr", config=cfg, report=quiet)
    assert result.store.attrs["n_shards"] == 1 and result.store.attrs["config"]["shards"] == 1
    assert len(result.history) == 1
    with pytest.raises(InputError, match="--shards 2 needs between 1 and 1 shards"):
        train(client, store=tmp_path / "two.zarr", data=tmp_path / "d.zarr", config=replace(cfg, shards=2),
              report=quiet)
    assert not (tmp_path / "two.zarr").exists()
