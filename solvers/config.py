"""Training settings shared by every solver, validated with clear errors."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from solvers.activations import ACTIVATIONS
from solvers.errors import InputError
from solvers.layers import DenseSpec, conv_layers, format_layers, parse_layers, parse_shape
from solvers.losses import LOSSES
from solvers.stats import SCALINGS
from solvers.tasks import TASKS

INITS = ("forward", "gaussian")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a run (defaults chosen by measurement: benchmarks/results/defaults.md).

    ``gamma``/``beta`` weight the constraints ``a_l = h(z_l)`` and
    ``z_l = W_l a_{l−1}`` of eq. 4; ``task`` is ``"classification"`` or
    ``"regression"`` (real targets, squared loss: :mod:`solvers.tasks`);
    ``warm_start`` iterations skip the λ update (paper §6); ``init`` is
    ``"forward"`` (state from a forward pass of He-scaled random weights) or
    ``"gaussian"`` (the paper's N(0, 1) state); ``ridge`` is the relative
    ridge of the W-solve. ``step_size`` η and ``damping`` λ₀ are the
    Gauss-Newton solver's step and initial Levenberg–Marquardt damping.
    ``scaling`` divides the centred inputs by each feature's std
    (``standard``) or by one common std (``global``, for pixels and other
    shared units). ``validation_fraction`` of the training chunks is held out
    when above 0: the model is the iteration with the best held-out score
    (accuracy, or R² for regression), and training stops after ``patience``
    iterations without a gain (0: never stop early).

    ``layers`` (e.g. ``"conv:8x5x5:s2,dense:100"``, :mod:`solvers.layers`)
    replaces ``hidden`` when given; it is stored in canonical form, and an
    all-dense one as ``hidden``. Convolutions read each row as an
    ``input_shape`` ``(H, W, C)`` image (default: square, one channel) and
    are trained by the ``admm`` solver, whose a-update below a convolution
    runs ``cg_steps`` conjugate-gradient steps per sample (0: exact, through
    the convolution's dense Toeplitz matrix; None: exact for images of up to
    4096 values, else 8 steps: :func:`solvers.conv.a_update_steps`).
    """

    hidden: tuple[int, ...] = (300,)
    activation: str = "relu"
    task: str = "classification"
    loss: str = "auto"
    gamma: float = 10.0
    beta: float = 0.1
    iterations: int = 20
    warm_start: int = 5
    init: str = "forward"
    seed: int = 0
    ridge: float = 1e-2
    solver: str = "gauss-newton"
    step_size: float = 0.5
    damping: float = 1.0
    rho: float = 4.0
    nu: float = 100.0
    scaling: str = "standard"
    validation_fraction: float = 0.0
    patience: int = 3
    layers: str = ""
    input_shape: tuple[int, ...] = ()
    cg_steps: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        specs = parse_layers(self.layers) if self.layers else ()
        if specs:
            convolutional = conv_layers(specs)
            object.__setattr__(self, "layers", format_layers(specs) if convolutional else "")
            object.__setattr__(self, "hidden", () if convolutional else tuple(s.width for s in specs))
        object.__setattr__(self, "input_shape", parse_shape(self.input_shape) if len(self.input_shape) else ())
        problems = []
        if self.layers and self.solver != "admm":
            problems.append(f"convolutional layers are trained by the admm solver only, not {self.solver} "
                            "(pass --solver admm)")
        if self.cg_steps is not None and self.cg_steps < 0:
            problems.append(f"cg_steps must be >= 0 (0: exact), got {self.cg_steps}")
        if any(h <= 0 for h in self.hidden):
            problems.append(f"hidden widths must be positive integers, got {list(self.hidden)}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if self.loss != "auto" and self.loss not in LOSSES:
            problems.append(f"loss {self.loss!r} is not one of {['auto', *sorted(LOSSES)]}")
        if self.task not in TASKS:
            problems.append(f"task {self.task!r} is not one of {sorted(TASKS)}")
        elif self.task == "regression" and self.loss not in ("auto", "squared"):
            problems.append(f"loss {self.loss!r} is for class labels; regression fits the squared loss "
                            "(loss 'squared' or 'auto')")
        for name in ("gamma", "beta", "step_size", "damping", "rho", "nu"):
            v = getattr(self, name)
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
        if self.patience < 0:
            problems.append(f"patience must be >= 0, got {self.patience}")
        if self.scaling not in SCALINGS:
            problems.append(f"scaling {self.scaling!r} is not one of {list(SCALINGS)}")
        if self.init not in INITS:
            problems.append(f"init {self.init!r} is not one of {list(INITS)}")
        if problems:
            raise InputError("; ".join(problems))

    def resolved_loss(self, n_classes: int) -> str:
        """Return the loss name, resolving ``"auto"`` to hinge (2 classes), ovr-hinge, or squared (regression)."""
        if self.task == "regression":
            return "squared"
        if self.loss != "auto":
            return self.loss
        return "hinge" if n_classes == 2 else "ovr-hinge"

    def layer_specs(self) -> tuple:
        """Return the hidden layers as specs (:mod:`solvers.layers`): ``layers`` if given, else dense ``hidden``."""
        return parse_layers(self.layers) if self.layers else tuple(DenseSpec(h) for h in self.hidden)

    def describe_layers(self) -> str:
        """Return the hidden layers in ``--layers`` syntax (``dense:300`` for ``hidden=(300,)``)."""
        return format_layers(self.layer_specs())

    def to_dict(self) -> dict:
        """Return a JSON-ready dict of the settings."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Return the config stored by :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
