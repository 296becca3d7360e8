"""Training settings: the one list every interface is generated from, validated with clear errors.

To add a setting, add one ``name: type = setting(default, "help", ...)`` field to :class:`TrainConfig`
(say which solvers read it, whether --resume may change it, and check its range in ``__post_init__``).

Each field's :func:`setting` metadata makes its ``python -m pipeline.train``
flag (:func:`add_arguments`: ``--name-with-dashes``, parser, choices, help
with the default), its parameter of the scikit-learn estimators
(:func:`estimator_parameters`), whether ``--resume`` may change it
(:data:`RESUMABLE`), and its entry in the report's settings line
(:func:`describe`, the settings the run's solver reads).
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields, replace

from solvers import SOLVERS
from solvers.activations import ACTIVATIONS
from solvers.errors import InputError
from solvers.layers import DenseSpec, conv_layers, format_layers, parse_layers, parse_shape, pool_layers
from solvers.losses import LOSSES
from solvers.sampling import CONV_START_ROWS, SCHEDULES as SAMPLE_SCHEDULES, START_ROWS
from solvers.stats import SCALINGS
from solvers.tasks import TASKS

INITS = ("auto", "data", "forward", "gaussian", "glorot", "he-bias")
HE_BIAS = "he-bias"  # forward's He-scaled weights with Glorot's random biases (generalise_s9.md)
CONSENSUS_INIT = "forward"  # what --init auto starts the consensus solvers from
HANDOVER = "consensus,gauss-newton"  # consensus passes, then Gauss-Newton (solvers/handover.py)
ALL = ("admm", "dladmm", "gauss-newton", "consensus", HANDOVER)  # settings every solver reads
CONSENSUS = ("consensus", HANDOVER)  # the solvers that read the consensus settings
CONSENSUS_VARIANTS = ("admm", "elastic")
HIDDEN_ALPHAS = ("auto", "readout", "pinned", "race", "probe")  # gauss-newton: the hidden layers' weight decay (generalise_s11.md)
STEP_CHOICES = ("none", "held-out", "held-out-1.5")  # gauss-newton: how iteration 1 chooses its step length (k10_s14.md hs2@1; t15_s16.md)
FIRST_DAMPINGS = ("kfac", "objective")  # gauss-newton: the damping of the first hidden trial (step16_s16.md)
HOMOGENEOUS = ("relu",)  # activations with h(cz) = c h(z) for c > 0: a pinned unit's norm is its output's scale only
AVERAGING = ("chunk", "pass")  # consensus: how often the shard models are averaged in a one-sweep pass
CONV_SOLVERS = ("admm", "gauss-newton")  # the solvers that train convolutional --layers (pooling: gauss-newton)
CROSS_ENTROPY = "cross-entropy"  # softmax (one unit: sigmoid) cross-entropy: gauss-newton and consensus only
HANDOVER_FIRST_LR_SCALE = 2.0  # --first-lr-scale's default in the hand-over's consensus phase: pass 1 at twice the
# step size reached 0.96 at iteration 1 on MNIST 10-class 60k on 6/6 seeds (1 missed on 2/6) and left the kept model
# level at convergence (fls16_s16.md, fls17_s17.md); consensus alone keeps 1 (its pass 1 is several local epochs on
# small data, where larger steps lost: README, session 6). Stores written before: STORED_BEFORE, or the stored 1.0
HANDOVER_DELAY = 1  # --handover-delay's default in the hand-over: with pass 1 at x2 the gain test fires about a pass
# earlier than at x1; with one more consensus pass before the hand-over the kept model at convergence was level or
# better against both x1 and plain x2 (mean +- standard error, paired seeds: MNIST 10-class +0.0005 +- 0.0003 vs x1 (5),
# odd/even -0.0003 +- 0.0005 vs x1 and -0.0002 +- 0.0004 vs x2 (5), untuned HIGGS-shaped 100k +0.0011 +- 0.0004 vs x1
# (6): fls17_s17.md). Consensus alone and Gauss-Newton do not read it (0). Stores written before: STORED_BEFORE's 0
# the settings whose unset value (None) is resolved once the solver is known: (in the hand-over, for any other solver)
HANDOVER_DEFAULTS = {"first_lr_scale": (HANDOVER_FIRST_LR_SCALE, 1.0), "handover_delay": (HANDOVER_DELAY, 0)}
AUTO_HANDOVER_ROWS = 20000  # --solver auto: the hand-over from this many training rows per shard (auto_handover_s8.md)
FIRST_PASS_ROWS = 147456  # the consensus solver's first shard pass (rows over all shards; HIGGS-shaped 1M: 0.7696 after it)
GAUSS_NEWTON_LOSS = "squared"  # what --loss auto fits with gauss-newton (benchmarks/results/defaults_real.md)
GROUPS = {  # --help groups, in order: title and description (None: the general settings)
    "model": ("model and method", None),
    "gauss-newton": ("gauss-newton solver", None),
    "dladmm": ("dladmm solver", None),
    "consensus": ("consensus solver", "consensus ADMM over data shards, minibatch Adam in each shard"),
    "stopping": ("early stopping", None),
}


def setting(default, help: str, *, parse=None, choices=None, resumable: bool = False, solvers=ALL,
            group: str = "model", param: str | None = None, param_default=MISSING, default_text: str | None = None,
            metavar: str | None = None):
    """Return a dataclass field of :class:`TrainConfig` with its interface metadata.

    ``parse``: the flag's ``argparse`` type (None: from the default's type);
    ``choices``: its allowed values (a callable is called when the parser is
    built); ``resumable``: ``--resume`` may change it; ``solvers``: the
    solvers that read it; ``group``: its ``--help`` group (:data:`GROUPS`);
    ``param`` and ``param_default``: the estimator's parameter name and
    default, where they differ from the field's; ``default_text``: the
    default as ``--help`` shows it (None: the default itself, "": none).
    """
    meta = {"help": help, "parse": parse, "choices": choices, "resumable": resumable, "solvers": tuple(solvers),
            "group": group, "param": param, "param_default": param_default, "default_text": default_text,
            "metavar": metavar}
    return field(default=default, metadata=meta)


def _widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 300 or 300,100, got {text!r}") from None


def _argument_type(parse):
    """Return ``parse`` turning an :class:`InputError` into argparse's one-line usage error."""
    def convert(text: str):
        try:
            return parse(text)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = parse.__name__
    return convert


def _alpha(text: str):
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected auto or a number >= 0, got {text!r}")
    return value


def _canonical_layers(text: str) -> str:
    return format_layers(parse_layers(text))


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a run (defaults chosen by measurement: benchmarks/results/defaults.md).

    Each field's ``help`` says what it does. ``gamma``/``beta`` weight the
    constraints ``a_l = h(z_l)`` and ``z_l = W_l a_{l−1}`` of eq. 4;
    ``warm_start`` iterations skip the λ update (paper §6). With
    ``validation_fraction`` > 0 the model is the iteration with the best
    held-out score (accuracy, or R² for regression), and training stops after
    ``patience`` iterations without a gain. ``layers`` (:mod:`solvers.layers`)
    replaces ``hidden`` when given; it is stored in canonical form, and an
    all-dense one as ``hidden``; ``cg_steps`` None means
    :func:`solvers.conv.a_update_steps`.
    """

    hidden: tuple[int, ...] = setting((300,), "hidden layer widths, e.g. 300 or 300,100", parse=_widths,
                                      param="hidden_layer_sizes", default_text="300")
    activation: str = setting("relu", "activation h of the hidden layers", choices=sorted(ACTIVATIONS))
    task: str = setting("classification", "classification (y are class labels) or regression (y are real values, "
                        "fitted standardised with the squared loss; scores are R²)", choices=sorted(TASKS),
                        param="")  # the estimator's class says the task
    loss: str = setting("auto", f"output loss; auto: {GAUSS_NEWTON_LOSS} for gauss-newton, cross-entropy for "
                        "consensus, squared for dladmm, hinge for admm (one-vs-all hinge for more than 2 classes); "
                        "squared for regression; cross-entropy (softmax, or sigmoid for 2 classes: generalised "
                        "Gauss-Newton) is fitted by gauss-newton and consensus only",
                        choices=["auto", CROSS_ENTROPY, *sorted(LOSSES)])
    gamma: float = setting(10.0, "weight γ of ‖a − h(z)‖²", resumable=True, solvers=("admm",))
    beta: float = setting(0.1, "weight β of ‖z − W a‖² and of the λ step", resumable=True, solvers=("admm",))
    iterations: int = setting(20, "iterations to run in total", resumable=True, param="max_iter")
    warm_start: int = setting(5, "first iterations without λ updates", resumable=True, solvers=("admm",))
    init: str = setting("auto", "initial state: forward (a forward pass of He-scaled random weights), data (the same, "
                        "but the first layer's rows point along differences of random training rows: one more pass; admm and "
                        "dladmm), "
                        "gaussian (the paper's N(0, 1) state, admm only) or glorot (gauss-newton with dense layers, and "
                        "consensus: scikit-learn's start, weights and biases uniform in ±√(6/(fan_in + fan_out))) or "
                        "he-bias (forward's He-scaled weights with glorot's random biases; the same solvers); auto: "
                        f"data for admm and dladmm with a dense first layer, {CONSENSUS_INIT} for consensus, else forward",
                        choices=INITS, solvers=("admm", "dladmm", "gauss-newton", *CONSENSUS))
    seed: int = setting(0, "random seed of the initial weights and state and of the held-out rows",
                        param="random_state", param_default=None)
    ridge: float = setting(1e-6, "numerical floor of every solve, relative to the Gram's mean diagonal (weight "
                           "decay is --alpha)", resumable=True, solvers=("admm", "gauss-newton", HANDOVER))
    alpha: float | str = setting("auto", "weight decay: L2 penalty α‖W‖² on the weights, biases excluded "
                                 "(scikit-learn's alpha); auto: gauss-newton picks α every iteration from a grid by "
                                 "the held-out error of the output layer (GCV when nothing is held out), consensus "
                                 "uses 0.1 of that α per row before every pass (½α‖W‖² in each shard's mean loss), "
                                 "admm and dladmm use 0.01 of each Gram's mean diagonal in their W-solves and refit "
                                 "the model's output layer to the targets with α picked the held-out way",
                                 parse=_alpha, resumable=True,
                                 metavar="auto|ALPHA")
    input_skip: bool = setting(False, "admm and dladmm with --alpha auto and held-out rows: the model's refitted "
                               "output layer reads the inputs as well as the last hidden layer (a linear skip path "
                               "from the inputs, fitted together with the readout, same α); the iterations "
                               "themselves are unchanged", solvers=("admm", "dladmm"))
    readout_refit: bool = setting(True, "admm and dladmm classifiers with --alpha auto and held-out rows: the model's output "
                                  "layer is the readout with the α chosen on the held-out rows, fitted on the "
                                  "training and held-out rows together (scikit-learn's LogisticRegressionCV "
                                  "refit=True; no pass added); the iterations themselves are unchanged; "
                                  "--no-readout-refit: the readout fitted on the training rows only (before session 13)",
                                  solvers=("admm", "dladmm"))
    solver: str = setting("auto", "training method: layerwise Gauss-Newton (no per-sample state), admm "
                          "(Taylor et al. 2016), dladmm (Wang et al. 2019) or consensus (consensus ADMM over data shards, "
                          "minibatch Adam in each), or consensus,gauss-newton (consensus passes, then Gauss-Newton); "
                          f"auto: consensus,gauss-newton for dense classification (no hinge loss, no sampling "
                          f"setting) when every shard gets at least {AUTO_HANDOVER_ROWS} training rows and its worker "
                          "runs one thread in a process of its own, else gauss-newton (chosen when the run is "
                          "created, named in its run line and kept by --resume); a given --hidden-alpha other than "
                          "readout, --init-scale other than 1 or --step-choice other than none makes auto "
                          "gauss-newton, named in the run line too)",
                          choices=["auto", *sorted(SOLVERS)],
                          metavar="|".join(["auto", *sorted(SOLVERS)]))  # {…} would read consensus,consensus,gauss-newton
    step_size: float = setting(1.0, "step η of the Gauss-Newton update", resumable=True,
                               solvers=("gauss-newton", HANDOVER),
                               group="gauss-newton")
    damping: float = setting(0.1, "initial Levenberg-Marquardt damping λ, relative to the mean curvature",
                             resumable=True, solvers=("gauss-newton", HANDOVER), group="gauss-newton")
    rho: float = setting(4.0, "penalty ρ of the output constraint and the dual step", resumable=True,
                         solvers=("dladmm",), group="dladmm")
    nu: float = setting(100.0, "penalty ν of the hidden-layer constraints", resumable=True, solvers=("dladmm",),
                        group="dladmm")
    scaling: str = setting("auto", "input scaling after centring: auto (each feature's std with a floor from its "
                           "fourth moment, so rare pixels and rare one-hot columns are not blown up; features "
                           "constant in training are ignored; global with convolutional --layers), standard (each "
                           "feature's std) or global (one common std: pixels and other shared units)", choices=SCALINGS)
    sample_schedule: str = setting("auto", "progressive sampling: grow runs the first iterations on a growing "
                                   "seeded subset of whole chunks (from --sample-start rows, doubling after every accepted "
                                   "step, all chunks by the last iteration); rotate first walks one epoch of "
                                   "disjoint samples of that size (the next after every accepted step), then "
                                   "grows; full reads every chunk every iteration; auto is rotate for "
                                   "gauss-newton with convolutions, grow for dense gauss-newton, full for the others",
                                   choices=SAMPLE_SCHEDULES, solvers=("gauss-newton",), group="gauss-newton")
    sample_start: int = setting(0, f"rows of the first sample of the grow schedule, of each sample of rotate "
                                f"(rounded up to whole chunks, at least 2, 1 for rotate); 0: {START_ROWS}, or {CONV_START_ROWS} "
                                "with convolutions", solvers=("gauss-newton",), group="gauss-newton")
    hidden_alpha: str = setting("auto", "the hidden layers' weight decay: auto (probe for --solver gauss-newton with dense relu "
                                "layers on a classification with the squared loss and --init-scale 1, else readout; "
                                "race_cheap_s12.md) "
                                "or readout (the output layer's α, the "
                                "held-out one with --alpha auto, in their step and in the objective) or pinned (none: "
                                "after every step each hidden unit's weights and bias are rescaled to the norm they had, "
                                "so a unit can turn but not grow, which ReLU's scale symmetry makes a change of direction "
                                "only; the output layer keeps its α) or race (both from the same start for the first 2 "
                                "iterations, then the one with the higher best held-out score goes on alone, ties "
                                "readout; pinned is dropped at any race iteration where its held-out score is more "
                                "than 0.01 below readout's; the other candidate's held-out score is the metric "
                                "race_validation_<score>; needs held-out rows, else readout) or probe (both take "
                                "iteration 1, pass A and a score pass each; pinned goes on iff its step was accepted "
                                "and its held-out loss is below 0.99 x readout's, so readout goes on if its own step was "
                                "rejected; the other's is the metric race_validation_loss, absent if its step was "
                                "rejected; needs held-out rows, else readout); pinned, race and probe "
                                "need dense layers and relu",
                                choices=HIDDEN_ALPHAS, solvers=("gauss-newton",), group="gauss-newton")
    init_scale: float = setting(1.0, "multiplier of gauss-newton's random start of the hidden weights and biases "
                                "(--init forward, glorot or he-bias; dense layers): below 1 the hidden layers start "
                                "smaller, so their weight decay weighs less against the output layer's in the first "
                                "steps (ReLU's scale symmetry; benchmarks/results/kout_early_s12.md); not with "
                                "--hidden-alpha pinned, race or probe (not measured)",
                                solvers=("gauss-newton",), group="gauss-newton")
    first_damping: str = setting("kfac", "gauss-newton (alone, the squared loss, dense layers): the damping of the "
                                 "hidden layers' first trial, the step iteration 1 evaluates: kfac (K-FAC's factored "
                                 "Tikhonov damping, (S + lambda s I + pi sqrt(alpha n) I) x (G + eps g I + "
                                 "sqrt(alpha n)/pi I) / n, as every later step) or objective (the objective's own: "
                                 "(S + lambda s I) x (G + eps g I) / n + alpha I, solved in the eigenbases of S and G; "
                                 "no cross terms, so a large readout alpha does not shorten the step; k10_s14.md). "
                                 "Every later trial, a rejected first trial's retry, the pinned hidden alpha (alpha "
                                 "0: both the same) and the hand-over's Gauss-Newton phase use kfac. Measured: "
                                 "step16_s16.md",
                                 choices=FIRST_DAMPINGS, solvers=("gauss-newton",), group="gauss-newton")
    step_choice: str = setting("none", "gauss-newton's first iteration: none (the step as it is), held-out or "
                               "held-out-1.5, opt-ins (held-out: pass A evaluates the hidden layers' trial T at step "
                               "lengths t = 1 and 2, "
                               "W + t (T - W), in the same read of each chunk, one more forward product per sampled and "
                               "held-out row, and keeps the one whose output layer, refitted at the run's alpha (alpha "
                               "auto: its own held-out choice), has the lower loss on the held-out rows, ties t = 1, "
                               "unless t = 2 fails the LM test (then t = 1, judged by it as usual); held-out-1.5: the "
                               "same with t = 1 and 1.5 (step16_s16.md, t15_s16.md); with --hidden-alpha "
                               "probe or race each candidate chooses its own (the race reports pinned's as "
                               "race_step_length); the choice is the metric step_length and a line of the progress "
                               "report; k10_s14.md). Measured (hsval_s15.md): reaches 0.96 sooner on MNIST 10-class "
                               "60k, but keeps a worse model on most seeds of breast cancer, covtype and HIGGS-shaped 3k "
                               "where it changes the run, so not the default. Both need dense layers and the "
                               "squared loss; without held-out rows or a hidden layer it acts as none",
                               choices=STEP_CHOICES, solvers=("gauss-newton",), group="gauss-newton")
    validation_fraction: float = setting(0.1, "share of the training rows held out (a seeded choice of rows from "
                                         "every chunk); the model is the iteration with the best held-out score, 0 "
                                         "turns early stopping off", group="stopping")
    patience: int = setting(10, "with a validation fraction: stop after this many iterations without a gain in "
                            "the held-out score or a new low of the held-out loss, 0 never", resumable=True, group="stopping")
    layers: str = setting("", "hidden layers in place of --hidden, convolutions first, e.g. "
                          "conv:8x5x5:same,pool:2,conv:16x3x3,flatten,dense:100 (conv:C_OUTxKHxKW, optional "
                          ":sSTRIDE and :same or :valid, default stride 1 and valid; pool:K max or pool:K:avg "
                          "pools the convolution before it; flatten is optional; convolutions need --solver "
                          "admm or gauss-newton, pooling gauss-newton)",
                          parse=_argument_type(_canonical_layers), param_default=None, default_text="")
    input_shape: tuple[int, ...] = setting((), "image shape HxWxC of a row (channel-last) for --layers conv:…; "
                                           "default: a square one-channel image", parse=_argument_type(parse_shape),
                                           solvers=CONV_SOLVERS, param_default=None, default_text="")
    cg_steps: int | None = setting(None, "admm below a convolution: conjugate-gradient steps of the a-update, 0 for "
                                   "an exact solve through the (H·W·C)² Toeplitz normal matrix", parse=int,
                                   solvers=("admm",), default_text="exact up to 4096 values per image, else 8")
    shards: int = setting(0, "groups of consecutive chunks, one task and one copy of the weights each, fixed when "
                          "the run is created", solvers=CONSENSUS, group="consensus",
                          default_text="0: one per worker thread")
    consensus: str = setting("admm", "admm: scaled-dual consensus ADMM; elastic: elastic averaging, no dual",
                             choices=CONSENSUS_VARIANTS, resumable=True, solvers=CONSENSUS, group="consensus")
    consensus_rho: float = setting(1e-3, "penalty ρ of ‖θ_s − θ̄ + u_s‖² in each shard's problem", resumable=True,
                                   solvers=CONSENSUS, group="consensus")
    rho_growth: float = setting(1.0, "ρ is multiplied by this after every pass", resumable=True, solvers=CONSENSUS,
                                group="consensus")
    local_epochs: int = setting(0, "Adam epochs over its shard per pass", resumable=True, solvers=CONSENSUS,
                                group="consensus",
                                default_text="0: enough for 250 minibatch steps per pass over all shards' rows (100 in "
                                "consensus,gauss-newton's consensus phase), at least 1; fixed when the run is created")
    first_pass_rows: int = setting(FIRST_PASS_ROWS, "rows (over all shards, rounded up to whole chunks per shard, "
                                   "a seeded part of the chunk where that is one chunk) of the first shard pass; "
                                   "each later pass reads twice as many chunks of every shard, going on through its "
                                   "chunks in turn, until a pass is a whole epoch; 0: every pass a whole epoch",
                                   resumable=True, solvers=CONSENSUS, group="consensus")
    averaging: str = setting("chunk", "chunk: the shard models are averaged after every chunk of a pass that "
                             "sweeps once over its chunks (one round per chunk of the largest shard, all rounds "
                             "in one Dask graph); pass: once per pass", choices=AVERAGING, resumable=True, solvers=CONSENSUS,
                             group="consensus")
    batch_size: int = setting(200, "minibatch rows of the shards' Adam", resumable=True, solvers=CONSENSUS,
                              group="consensus")
    learning_rate: float = setting(2e-3, "Adam's step size", resumable=True, solvers=CONSENSUS, group="consensus")
    lr_decay: float = setting(1.0, "Adam's step size is multiplied by this after every pass", resumable=True,
                              solvers=CONSENSUS, group="consensus")
    first_lr_scale: float | None = setting(None, "Adam's step size in the first pass, as a multiple of --learning-rate "
                                           "(the later passes' is unchanged); fixed when the run is created",
                                           parse=float, solvers=CONSENSUS, group="consensus",
                                           default_text=f"{HANDOVER_FIRST_LR_SCALE:g} in {HANDOVER}'s consensus "
                                           "phase (--solver auto's hand-over), else 1")
    handover_gain: float = setting(0.002, "consensus,gauss-newton: hand over to Gauss-Newton once a pass gains less "
                                   "than this in held-out (else training) score", resumable=True,
                                   solvers=(HANDOVER,), group="consensus")
    handover_delay: int | None = setting(None, "consensus,gauss-newton: consensus passes run after the first pass "
                                         "that gained less than --handover-gain, before the hand-over (the "
                                         "default --first-lr-scale 2 makes that test fire about a pass earlier); "
                                         "fixed when the run is created (runs created before this default keep 0)",
                                         parse=int, solvers=(HANDOVER,), group="consensus",
                                         default_text=f"{HANDOVER_DELAY} in {HANDOVER} (--solver auto's hand-over), "
                                         "else 0")
    # not a setting (no flag, parameter or stored key): True when __post_init__ turned --solver auto into gauss-newton
    # because a setting only Gauss-Newton reads was given. A field, so dataclasses.replace() keeps it (choose_solver's
    # record names that setting); replace(solver=...) of another solver clears it.
    auto_pinned: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        specs = parse_layers(self.layers) if self.layers else ()
        if specs:
            convolutional = conv_layers(specs)
            object.__setattr__(self, "layers", format_layers(specs) if convolutional else "")
            object.__setattr__(self, "hidden", () if convolutional else tuple(s.width for s in specs))
        object.__setattr__(self, "input_shape", parse_shape(self.input_shape) if len(self.input_shape) else ())
        if self.solver == "auto" and self._gauss_newton_only():  # else chosen by the data's size: choose_solver
            object.__setattr__(self, "solver", "gauss-newton")
            object.__setattr__(self, "auto_pinned", True)
        elif self.solver != "gauss-newton":  # auto (chosen by size later) or another solver: not auto's pin
            object.__setattr__(self, "auto_pinned", False)
        for name, (in_handover, elsewhere) in HANDOVER_DEFAULTS.items():  # auto: once choose_solver has picked
            if getattr(self, name) is None and self.solver != "auto":
                object.__setattr__(self, name, in_handover if self.solver == HANDOVER else elsewhere)
        problems = []
        if isinstance(self.alpha, str) and self.alpha != "auto":
            try:
                object.__setattr__(self, "alpha", float(self.alpha))
            except ValueError:
                problems.append(f"alpha must be 'auto' or a number >= 0, got {self.alpha!r}")
        if not isinstance(self.alpha, str) and not (0 <= float(self.alpha) < float("inf")):
            problems.append(f"alpha must be 'auto' or a number >= 0, got {self.alpha!r}")
        if self.layers and self.solver not in CONV_SOLVERS:
            problems.append(f"convolutional layers are trained by the admm or gauss-newton solver only, not "
                            f"{self.solver} (pass --solver gauss-newton)")
        elif self.layers and self.solver != "gauss-newton" and pool_layers(parse_layers(self.layers)):
            problems.append(f"pooling layers are trained by the gauss-newton solver only, not {self.solver} "
                            "(pass --solver gauss-newton)")
        if self.layers and self.input_skip:  # the skip block is the dense input Gram; conv layers reduce patch Grams
            problems.append("input_skip (--input-skip) needs dense layers: with convolutional --layers the output "
                            "layer cannot read the inputs (drop --input-skip)")
        if self.shards < 0:
            problems.append(f"shards must be >= 0 (0: one per worker thread), got {self.shards}")
        if self.averaging not in AVERAGING:
            problems.append(f"averaging {self.averaging!r} is not one of {list(AVERAGING)}")
        if self.consensus not in CONSENSUS_VARIANTS:
            problems.append(f"consensus {self.consensus!r} is not one of {list(CONSENSUS_VARIANTS)}")
        if not (0 <= self.handover_gain < float("inf")):
            problems.append(f"handover_gain must be >= 0, got {self.handover_gain!r}")
        if self.handover_delay is not None and self.handover_delay < 0:  # None: auto, before the solver is chosen
            problems.append(f"handover_delay must be >= 0, got {self.handover_delay}")
        if self.local_epochs < 0:
            problems.append(f"local_epochs must be >= 0 (0: auto), got {self.local_epochs}")
        if self.first_pass_rows < 0:
            problems.append(f"first_pass_rows must be >= 0 (0: whole epochs), got {self.first_pass_rows}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.cg_steps is not None and self.cg_steps < 0:
            problems.append(f"cg_steps must be >= 0 (0: exact), got {self.cg_steps}")
        if any(h <= 0 for h in self.hidden):
            problems.append(f"hidden widths must be positive integers, got {list(self.hidden)}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if self.loss not in ("auto", CROSS_ENTROPY) and self.loss not in LOSSES:
            problems.append(f"loss {self.loss!r} is not one of {['auto', CROSS_ENTROPY, *sorted(LOSSES)]}")
        elif self.loss == CROSS_ENTROPY and self.solver in ("admm", "dladmm"):
            problems.append(f"loss {CROSS_ENTROPY} is fitted by the gauss-newton and consensus solvers, not "
                            f"{self.solver} (pass --loss hinge, ovr-hinge or squared, or another --solver)")
        if self.task not in TASKS:
            problems.append(f"task {self.task!r} is not one of {sorted(TASKS)}")
        elif self.task == "regression" and self.loss not in ("auto", "squared"):
            problems.append(f"loss {self.loss!r} is for class labels; regression fits the squared loss "
                            "(loss 'squared' or 'auto')")
        for name in ("gamma", "beta", "step_size", "damping", "rho", "nu", "consensus_rho", "rho_growth",
                     "learning_rate", "lr_decay", "first_lr_scale"):
            v = getattr(self, name)
            if v is None and name == "first_lr_scale":  # auto, before the solver is chosen
                continue
            if not (v > 0 and v < float("inf")):
                problems.append(f"{name} must be a positive finite number, got {v!r}")
        if not (0 <= self.ridge < float("inf")):
            problems.append(f"ridge must be >= 0, got {self.ridge!r}")
        if self.iterations < 0:
            problems.append(f"iterations must be >= 0, got {self.iterations}")
        if self.warm_start < 0:
            problems.append(f"warm_start must be >= 0, got {self.warm_start}")
        if not (0 <= self.validation_fraction < 1):
            problems.append(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}")
        if self.sample_schedule not in SAMPLE_SCHEDULES:
            problems.append(f"sample_schedule {self.sample_schedule!r} is not one of {list(SAMPLE_SCHEDULES)}")
        elif self.sample_schedule in ("grow", "rotate") and self.solver != "gauss-newton":
            problems.append(f"sample_schedule {self.sample_schedule} needs the gauss-newton solver (the {self.solver} solver keeps "
                            "per-sample state that every iteration must update); pass --sample-schedule full")
        if self.hidden_alpha not in HIDDEN_ALPHAS:
            problems.append(f"hidden_alpha {self.hidden_alpha!r} is not one of {list(HIDDEN_ALPHAS)}")
        elif self.hidden_alpha not in ("readout", "auto") and self.solver == HANDOVER:
            problems.append(f"hidden_alpha {self.hidden_alpha} was measured with --solver gauss-newton only, not {HANDOVER} "
                            "(pass --solver gauss-newton)")
        elif self.hidden_alpha in ("readout", "auto") or self.solver != "gauss-newton":
            pass  # the other solvers do not read it (as --step-size)
        elif self.layers:
            problems.append(f"hidden_alpha {self.hidden_alpha} needs dense layers (convolutional --layers keep "
                            "--hidden-alpha readout)")
        elif self.activation not in HOMOGENEOUS:
            problems.append(f"hidden_alpha {self.hidden_alpha} needs an activation with h(cz) = c h(z) for c > 0 "
                            f"({', '.join(HOMOGENEOUS)}), not {self.activation}")
        if self.first_damping not in FIRST_DAMPINGS:
            problems.append(f"first_damping {self.first_damping!r} is not one of {list(FIRST_DAMPINGS)}")
        if self.step_choice not in STEP_CHOICES:
            problems.append(f"step_choice {self.step_choice!r} is not one of {list(STEP_CHOICES)}")
        elif self.step_choice == "none" or self.solver not in ("gauss-newton", HANDOVER):
            pass  # the other solvers do not read it (as --step-size)
        elif self.solver == HANDOVER:
            problems.append(f"step_choice {self.step_choice} was measured with --solver gauss-newton only, not {HANDOVER} "
                            "(pass --solver gauss-newton)")
        elif self.layers:
            problems.append(f"step_choice {self.step_choice} needs dense layers (pass --step-choice none with "
                            "convolutional --layers, or dense --hidden layers)")
        elif self.gauss_newton_loss() != "squared":
            problems.append(f"step_choice {self.step_choice} needs the squared loss (pass --step-choice none with "
                            f"--loss {self.loss}, or --loss squared)")
        if self.sample_start < 0:
            problems.append(f"sample_start must be >= 0 (0: the default), got {self.sample_start}")
        if not (0 < self.init_scale < float("inf")):
            problems.append(f"init_scale must be > 0 and finite, got {self.init_scale!r}")
        elif self.init_scale == 1.0 or self.solver not in ("gauss-newton", HANDOVER):
            pass  # the other solvers do not read it (as --step-size)
        elif self.solver == HANDOVER:
            problems.append(f"init_scale scales gauss-newton's own random start; {HANDOVER} starts Gauss-Newton from "
                            "the consensus passes' weights (pass --solver gauss-newton, or --init-scale 1)")
        elif self.layers:
            problems.append("init_scale was measured with dense layers only (convolutional --layers keep --init-scale 1)")
        elif self.hidden_alpha in HIDDEN_ALPHAS and self.hidden_alpha not in ("readout", "auto"):  # auto: readout here
            problems.append(f"init_scale {self.init_scale:g} with hidden_alpha {self.hidden_alpha} was not measured "
                            "(pinned keeps each hidden unit's norm at init_scale times its start's): pass --init-scale "
                            "1 or --hidden-alpha readout")
        if self.patience < 0:
            problems.append(f"patience must be >= 0, got {self.patience}")
        if self.scaling not in SCALINGS:
            problems.append(f"scaling {self.scaling!r} is not one of {list(SCALINGS)}")
        if self.solver not in SOLVERS and self.solver != "auto":
            problems.append(f"solver {self.solver!r} is not one of {['auto', *sorted(SOLVERS)]}")
        if self.init not in INITS:
            problems.append(f"init {self.init!r} is not one of {list(INITS)}")
        elif self.init in ("data", "gaussian") and self.solver not in ("admm", "dladmm"):
            who = f"--solver auto (gauss-newton or {HANDOVER})" if self.solver == "auto" else f"the {self.solver} solver"
            problems.append(f"init {self.init} is a start of "
                            + ("the admm solver" if self.init == "gaussian" else "the admm and dladmm solvers")
                            + f"; {who} starts from --init auto, forward, glorot or he-bias (dense layers): pass another "
                            "--init, or --solver admm" + (" or dladmm" if self.init == "data" else ""))
        elif self.init == "data" and self.layers:
            problems.append("init data needs a dense first layer; convolutional --layers start from --init forward")
        elif self.init in ("glorot", HE_BIAS) and (self.solver not in ("gauss-newton", "auto", *CONSENSUS) or self.layers):
            problems.append(f"init {self.init} is the start of gauss-newton (dense layers) and consensus; "
                            + ("convolutional --layers start from --init forward" if self.solver == "gauss-newton"
                               else f"the {self.solver} solver starts from --init auto, data or forward"))
        if problems:
            raise InputError("; ".join(problems))

    def _gauss_newton_only(self) -> bool:
        """Return whether settings only Gauss-Newton takes pin ``--solver auto`` to it, whatever the data's size.

        Convolutional layers, regression (the hand-over was measured on classification only), the hinge
        losses (consensus fits cross-entropy or squared), and a given --sample-schedule, --sample-start,
        --hidden-alpha other than readout, --init-scale other than 1 or --step-choice other than none (settings
        Gauss-Newton alone reads).
        """
        return bool(self.layers) or self.task != "classification" or self.loss not in ("auto", CROSS_ENTROPY, "squared") \
            or self.sample_schedule != "auto" or self.sample_start > 0 or self.hidden_alpha not in ("readout", "auto") \
            or self.init_scale != 1.0 or self.step_choice != "none"

    def choose_solver(self, n_samples: int, shards: int, threads_per_worker: int = 1,
                      shared_gil: bool = False) -> tuple["TrainConfig", dict]:
        """Return this config with ``--solver auto`` resolved for the data and cluster, and the choice as a record.

        auto runs the hand-over (``consensus,gauss-newton``) when each shard's training rows,
        ⌊n·(1 − validation_fraction)⌋ / S, are at least :data:`AUTO_HANDOVER_ROWS` (one local Adam epoch
        over a shard then makes a model worth averaging: benchmarks/results/auto_handover_s8.md) and every
        worker runs one thread in a process of its own (the shards' minibatch loops hold the GIL); else
        Gauss-Newton. ``shards``: ``--shards``, or the cluster's worker threads; ``shared_gil``: the workers
        run in one process (an in-process cluster, or training in memory). A given solver is returned as it
        is (record None).
        """
        if self.solver != "auto":  # given, or pinned to gauss-newton by a setting only it reads (__post_init__)
            return self, self._pin_record() if self.auto_pinned else None
        shards = max(1, int(self.shards or shards))
        rows = int(n_samples * (1 - self.validation_fraction)) // shards
        handover = rows >= AUTO_HANDOVER_ROWS and threads_per_worker <= 1 and not shared_gil
        why = (f"{rows} training rows per shard {'>=' if rows >= AUTO_HANDOVER_ROWS else '<'} {AUTO_HANDOVER_ROWS} "
               f"over {shards} shard{'s' * (shards > 1)}"
               + (f", workers of {threads_per_worker} threads share a GIL" if threads_per_worker > 1
                  else ", the workers run in one process and share its GIL" if shared_gil else ""))
        chosen = HANDOVER if handover else "gauss-newton"
        record = {"given": "auto", "solver": chosen, "why": why, "rows_per_shard": rows, "shards": shards,
                  "threads_per_worker": int(threads_per_worker), "shared_gil": bool(shared_gil),
                  "threshold": AUTO_HANDOVER_ROWS}
        return replace(self, solver=chosen), record

    def _pin_record(self) -> dict | None:
        """Return choose_solver's record of an auto pinned to gauss-newton by a given --hidden-alpha, --init-scale or
        --step-choice (the run line shows it), None for the other pins (convolutions, regression, hinge, sampling settings)."""
        why = [f"--{flag} {value:g}" if isinstance(value, float) else f"--{flag} {value}"
               for flag, value, unpinned in (("hidden-alpha", self.hidden_alpha, ("readout", "auto")),
                                             ("init-scale", self.init_scale, (1.0,)),
                                             ("step-choice", self.step_choice, ("none",))) if value not in unpinned]
        return {"given": "auto", "solver": "gauss-newton",
                "why": f"{' and '.join(why)} given, read by gauss-newton only"} if why else None

    def resolved_init(self) -> str:
        """Return the initialisation, resolving ``"auto"`` to data (admm, dladmm; dense first layer), :data:`CONSENSUS_INIT`
        (the consensus solvers) or forward."""
        if self.init != "auto":
            return self.init
        if self.solver in CONSENSUS:
            return CONSENSUS_INIT
        return "data" if self.solver in ("admm", "dladmm") and not self.layers else "forward"

    def resolved_hidden_alpha(self) -> str:
        """Return the hidden layers' weight-decay rule, resolving ``"auto"`` to probe where it was validated
        (gauss-newton, dense relu layers, classification with the squared loss, the default start scale:
        race_cheap_s12.md), else readout."""
        if self.hidden_alpha != "auto":
            return self.hidden_alpha
        fits = (self.solver == "gauss-newton" and not self.layers and self.activation in HOMOGENEOUS
                and self.task == "classification" and self.gauss_newton_loss() == "squared" and self.init_scale == 1.0)
        return "probe" if fits else "readout"

    def resolved_scaling(self) -> str:
        """Return the input scaling, resolving ``"auto"`` to global for convolutional ``layers``, else auto.

        A convolution applies one filter at every position of an image whose pixels share units, so every
        position gets the same divisor (global); per-pixel divisors would give each position its own input scale.
        """
        return "global" if self.scaling == "auto" and self.layers else self.scaling

    def resolved_loss(self, n_classes: int) -> str:
        """Return the loss name, resolving ``"auto"`` to hinge (2 classes), ovr-hinge, or squared (regression)."""
        if self.task == "regression":
            return "squared"
        if self.loss != "auto":
            return self.loss
        return "hinge" if n_classes == 2 else "ovr-hinge"

    def gauss_newton_loss(self) -> str:
        """Return the loss Gauss-Newton fits: ``loss`` (auto: :data:`GAUSS_NEWTON_LOSS`); squared for regression.

        Convolutional ``layers`` (:mod:`solvers.conv_gauss_newton`) fit the squared loss: auto is squared for them.
        """
        if self.task == "regression" or (self.layers and self.loss == "auto"):
            return "squared"
        return GAUSS_NEWTON_LOSS if self.loss == "auto" else self.loss

    def output_link(self) -> str:
        """Return how the output layer maps to class probabilities: ``logistic`` when it was fitted by cross-entropy.

        ``logistic``: softmax (one unit: sigmoid of z − ½, :mod:`solvers.cross_entropy`);
        ``identity``: the outputs estimate the probabilities themselves (0/1 targets).
        """
        if self.task != "classification":
            return "identity"
        if self.solver == "consensus":
            return "logistic" if self.loss in ("auto", CROSS_ENTROPY) else "identity"
        if self.solver in ("gauss-newton", HANDOVER, "auto"):  # auto before the data is known: gauss-newton's
            return "logistic" if self.gauss_newton_loss() == CROSS_ENTROPY else "identity"
        return "identity"

    def layer_specs(self) -> tuple:
        """Return the hidden layers as specs (:mod:`solvers.layers`): ``layers`` if given, else dense ``hidden``."""
        return parse_layers(self.layers) if self.layers else tuple(DenseSpec(h) for h in self.hidden)

    def describe_layers(self) -> str:
        """Return the hidden layers in ``--layers`` syntax (``dense:300`` for ``hidden=(300,)``)."""
        return format_layers(self.layer_specs())

    def to_dict(self) -> dict:
        """Return a JSON-ready dict of the settings."""
        d = asdict(self)
        del d["auto_pinned"]  # not a setting: the run store records the choice as solver_choice
        d["hidden"] = list(self.hidden)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def resumed(cls, stored: dict, overrides: dict | None) -> tuple["TrainConfig", set]:
        """Return a stored config with ``overrides`` applied, and the names of the settings that changed.

        Raises :class:`InputError` listing every override of a setting not in
        :data:`RESUMABLE` (one that changes the shape or meaning of the stored state).
        """
        config = cls.from_dict(stored)
        overrides = {k: (tuple(v) if k == "hidden" else v) for k, v in (overrides or {}).items()
                     if not (k == "solver" and v == "auto")}  # auto was resolved when the run was created
        clashes = [f"{k}: run has {getattr(config, k)!r}, given {v!r}" for k, v in overrides.items()
                   if k not in RESUMABLE and getattr(config, k) != v]
        if clashes:
            raise InputError("cannot resume with settings that change the stored state (" + "; ".join(clashes)
                             + "); start a new run with --overwrite or another --store")
        new = replace(config, **{k: v for k, v in overrides.items() if k in RESUMABLE})
        return new, {k for k in RESUMABLE if getattr(new, k) != getattr(config, k)}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Return the config stored by :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in SETTINGS}  # old stores' ``extra`` (always empty) and other keys are dropped
        d = {**STORED_BEFORE, **d}  # a setting a store predates: the rule the store was trained under
        return cls(**{k: v for k, v in d.items() if k in names})


# what a run store written before a setting existed ran with
STORED_BEFORE = {"hidden_alpha": "readout", "init_scale": 1.0, "readout_refit": False, "step_choice": "none",
                 "first_lr_scale": 1.0, "first_damping": "kfac", "handover_delay": 0}
SETTINGS = tuple(f for f in fields(TrainConfig) if "help" in f.metadata)  # the settings (not auto_pinned)
RESUMABLE = tuple(f.name for f in SETTINGS if f.metadata["resumable"])  # --resume may change these


def flag(name: str) -> str:
    """Return the ``python -m pipeline.train`` flag of setting ``name`` (``warm_start`` → ``--warm-start``)."""
    return "--" + name.replace("_", "-")


def _default_text(f) -> str:
    if f.metadata["default_text"] is not None:
        return f.metadata["default_text"]
    if isinstance(f.default, tuple):
        return ",".join(map(str, f.default))
    return "" if f.default is None else str(f.default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting to ``parser``, in the groups of :data:`GROUPS` (every default None: not given)."""
    resumable = ", ".join(flag(name) for name in RESUMABLE)
    groups = {}
    for key, (title, description) in GROUPS.items():
        if key == "model":
            description = ("Defaults in brackets. With --resume, the run's own settings are kept; "
                           f"{resumable} may be changed, the others must match the run.")
        groups[key] = parser.add_argument_group(title, description)
    for f in SETTINGS:
        m = f.metadata
        shown = _default_text(f)
        only = f" ({', '.join(m['solvers'])} only)" if m["group"] == "model" and m["solvers"] != ALL else ""
        kwargs = {"help": m["help"] + only + (f" [{shown}]" if shown else ""), "default": None}
        if isinstance(f.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = m["parse"] or type(f.default)
            if m["choices"] is not None:
                kwargs["choices"] = list(m["choices"])
        if m["metavar"]:
            kwargs["metavar"] = m["metavar"]
        groups[m["group"]].add_argument(flag(f.name), dest=f.name, **kwargs)


def given_settings(args: argparse.Namespace) -> dict:
    """Return ``{setting: value}`` of the flags :func:`add_arguments` added that were given on the command line."""
    return {f.name: getattr(args, f.name) for f in SETTINGS if getattr(args, f.name, None) is not None}


def estimator_parameters() -> list[tuple[str, str, object]]:
    """Return ``(parameter, setting, default)`` of the scikit-learn estimators' settings, in field order."""
    out = []
    for f in SETTINGS:
        m = f.metadata
        if m["param"] == "":
            continue
        default = f.default if m["param_default"] is MISSING else m["param_default"]
        out.append((m["param"] or f.name, f.name, default))
    return out


def _int_tuple(v) -> tuple[int, ...]:
    return (int(v),) if isinstance(v, int) or hasattr(v, "__index__") else tuple(int(x) for x in v)


_COERCE = {"float": float, "int": int, "str": str, "bool": bool, "tuple[int, ...]": _int_tuple,
           "int | None": lambda v: None if v is None else int(v)}


def config_from_parameters(values: dict, **fixed) -> TrainConfig:
    """Return the config of estimator parameters ``values`` (keyed by parameter name) and the settings ``fixed``.

    None stands for a setting's default; other values are cast to the setting's type.
    """
    settings = dict(fixed)
    for param, name, _ in estimator_parameters():
        if param not in values or name in settings:
            continue
        f = next(f for f in SETTINGS if f.name == name)
        v = values[param]
        settings[name] = f.default if v is None else _COERCE.get(f.type, lambda x: x)(v)
    return TrainConfig(**settings)


def choice_text(choice: dict | None) -> str:
    """Return `` (auto: why)`` for a run store's ``solver_choice`` record (:meth:`TrainConfig.choose_solver`), else ""."""
    return f" (auto: {choice['why']})" if choice else ""


def describe(config: TrainConfig) -> str:
    """Return the settings ``config.solver`` reads, in one line: ``solver gauss-newton, layers dense:300, …``."""
    parts = [f"solver {config.solver}", f"layers {config.describe_layers()}"]
    reads = "gauss-newton" if config.solver == "auto" else config.solver  # auto before the data is known
    for f in SETTINGS:
        if f.name in ("solver", "hidden", "layers", "iterations") or reads not in f.metadata["solvers"]:
            continue
        value = getattr(config, f.name)
        if f.name == "input_shape" and not value or f.name == "cg_steps" and not config.layers:
            continue
        parts.append(f"{f.name.replace('_', ' ')} {'x'.join(map(str, value)) if isinstance(value, tuple) else value}")
    return ", ".join(parts)
