"""The schema of a training run: one frozen dataclass per component, each holding its options' only defaults
and checking its own values (one-line ``ValueError`` naming the flag). The ``train`` flags and the ``--config``
file tables are read from these (see tools/train.py)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from pipeline.backends import LoaderConfig, LoaderKind
from train.precision import Precision, Tf32Mode
from train.recipe import Resolution, Schedule
from train.clock import Timing


def default_of(cls: type, name: str) -> object:
    """The default of field ``name`` of the dataclass ``cls`` (its factory called): where a flag reads its default.

    Raises:
        KeyError: no such field, or a field without a default.
    """
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            break
    raise KeyError(f"{cls.__name__}.{name}: no such field with a default")


def _check(rules: Iterable[tuple[bool, str]]) -> None:
    """Raise ValueError with the message of the first rule whose condition is False."""
    for ok, message in rules:
        if not ok:
            raise ValueError(message)


@dataclass(frozen=True)
class OptimConfig:
    """SGD, LR schedule and regularisation; defaults are NVIDIA DLE's ResNet50 v1.5 recipe (see train/recipe.py).

    Attributes:
        lr: peak learning rate; None = ``lr_per_256`` × global batch / 256 (Goyal et al. 2017 linear scaling).
        lr_per_256: peak LR per 256 images of global batch (DLE: 0.256).
        momentum: SGD momentum in [0, 1) (DLE: 0.875; 1 and above never forget a gradient: the run diverges);
            nesterov: Nesterov momentum.
        weight_decay: L2 on conv / linear weights (DLE: 1/32768); decay_bn_and_bias: also on BN and biases.
        label_smoothing: cross-entropy label smoothing (0.1).
        warmup_epochs: epochs of linear LR warmup (fractions allowed).
        schedule: ``cosine`` (to zero) or ``step`` (× ``gamma`` at each of ``milestones``, in epochs).

    Every real value must be finite (NaN fails its range check; an infinite one is refused by name).
    """

    lr: float | None = None
    lr_per_256: float = 0.256
    momentum: float = 0.875
    nesterov: bool = False
    weight_decay: float = 1.0 / 32768
    decay_bn_and_bias: bool = False
    label_smoothing: float = 0.1
    warmup_epochs: float = 8.0
    schedule: Schedule = Schedule.COSINE
    milestones: tuple[int, ...] = (30, 60, 80)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        m = self.milestones
        reals = (("--lr", self.lr), ("--lr-per-256", self.lr_per_256), ("--weight-decay", self.weight_decay),
                 ("--warmup-epochs", self.warmup_epochs), ("--gamma", self.gamma))
        _check((v is None or not math.isinf(v), f"{flag} must be a finite number, got {v}") for flag, v in reals)
        _check([
            (self.lr is None or self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.lr_per_256 > 0, f"--lr-per-256 must be > 0, got {self.lr_per_256}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (not self.nesterov or self.momentum > 0, f"--nesterov needs --momentum > 0, got {self.momentum}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {self.warmup_epochs}"),
            (self.gamma > 0, f"--gamma must be > 0, got {self.gamma}"),
            (list(m) == sorted(m) and all(v >= 0 for v in m),
             f"--milestones must be increasing epochs >= 0, got {','.join(map(str, m))}"),
        ])

    def peak_lr(self, global_batch: int) -> float:
        return self.lr if self.lr is not None else self.lr_per_256 * global_batch / 256


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoints (see :mod:`train.checkpoint`); ``dir`` None = none written.

    Attributes:
        dir: folder of ``ckpt-step{step:08d}.pt`` files (rank 0 writes).
        every: save every this many train steps (None = at every epoch end); always at the end of the run.
        keep: newest checkpoints kept; older ones are deleted once a new one is complete.
        resume: continue from the newest checkpoint in ``dir``; with none there the run starts fresh
            (a note says so), so a requeued job can always pass it.
        file: a checkpoint file to evaluate (``--test-only --checkpoint FILE``).
    """

    dir: Path | None = None
    every: int | None = None
    keep: int = 2
    resume: bool = False
    file: Path | None = None

    def __post_init__(self) -> None:
        _check([
            (self.every is None or self.every >= 1, f"--checkpoint-every must be >= 1, got {self.every}"),
            (self.keep >= 1, f"--checkpoint-keep must be >= 1, got {self.keep}"),
            ((not self.resume and self.every is None) or self.dir is not None,
             "--resume and --checkpoint-every need --checkpoint-dir DIR"),
        ])


@dataclass(frozen=True)
class TrainConfig:
    """One run.

    Attributes:
        data: shard folder written by shard-imagenet, or its URL prefix (None only for the synthetic loader).
        loader: decode backend.
        loader_cfg: options of the backend (batch size is per rank).
        optim: optimizer and schedule.
        epochs: epochs to train; each ends with an evaluation on the val split.
        max_steps: stop after this many train steps in total (None = no cap); a final evaluation follows.
        precision: numeric precision (``auto`` picks per device).
        seed: seed of model init and data order.
        metrics_json: where rank 0 writes the metrics (None = not written).
        output_dir: the run's folder (torchvision references' ``--output-dir``, timm's ``--output``): resolved
            config, metrics, step log, plot and checkpoints of one run (see the outputs of :mod:`train.rundir`).
        eval: evaluate after every epoch (FlagPerf does).
        warmup_steps: first train steps left out of p_whole / p_train / p_core (start-up: allocator, cudnn
            autotuning, worker start, compile) and reported separately; None = min(20, steps // 5), at least 1
            when the process runs more than one step.
        zero_init_residual: zero-initialise the last BN gamma of every residual block (Goyal et al. 2017).
        ema_decay: keep an exponential moving average of the weights with this decay and evaluate it too
            (None = no EMA).
        target_acc1: stop after the first evaluation whose top-1 (%) reaches it (FlagPerf's ``target_acc1``).
        compile: ``torch.compile`` the model (its compile time falls in the warm-up steps).
        tf32: TF32 matmuls / convolutions on CUDA (:class:`train.precision.Tf32Mode`: ``off`` = true fp32, this
            project's default; ``on``; ``default`` = PyTorch's defaults, FlagPerf's NVIDIA runs).
        cudnn_benchmark: let cuDNN time its algorithms per input shape and keep the fastest (this project's default;
            FlagPerf's runs: off).
        cudnn_deterministic: only deterministic cuDNN algorithms (FlagPerf's NVIDIA runs: on).
        initial_eval: evaluate once before training, as FlagPerf's case does (inside its e2e_time, outside
            p_whole); its top-1 and time are reported.
        flagperf_case: the FlagPerf config this run reproduces (:data:`train.flagperf_case.CONFIGS`, e.g.
            ``C500x1x8``): the vendor page compares the run against it (None: FlagPerf's base config).
        resolution: progressive train resolution and a separate eval resolution (None: ``image_size`` for both).
        channels_last: model and batches in channels-last memory format (False: NCHW, for comparison).
        log_jsonl: rank 0 appends one JSON line per ``log_every`` steps here (see train/steplog.py).
        checkpoint: checkpoint / resume options.
        timing: how steps are timed on CUDA (see train/clock.py); None = ``events`` on CUDA, ``sync`` on CPU
            (the same there).
        test_only: evaluate a checkpoint on val, no training (``checkpoint.file``, or the newest in
            ``checkpoint.dir``).
        progress: rank 0 shows a live bar per train epoch and evaluation on a terminal, plain lines every
            ``log_every`` steps (at least ten an epoch) otherwise (see train/progress.py); False: epoch lines only.
        plot: write a PNG next to ``metrics_json`` (``M.png``) from the JSONL step log (``log_jsonl``, default
            ``M.steps.jsonl`` then), see train/plot.py.
    """

    data: Path | str | None = None
    loader: LoaderKind = LoaderKind.CPU
    loader_cfg: LoaderConfig = field(default_factory=LoaderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 1
    max_steps: int | None = None
    precision: Precision = Precision.AUTO
    seed: int = default_of(LoaderConfig, "seed")
    metrics_json: Path | None = None
    output_dir: Path | None = None
    eval: bool = True
    warmup_steps: int | None = None
    zero_init_residual: bool = True
    ema_decay: float | None = None
    target_acc1: float | None = None
    compile: bool = False
    tf32: Tf32Mode = Tf32Mode.OFF
    cudnn_benchmark: bool = True
    cudnn_deterministic: bool = False
    initial_eval: bool = False
    flagperf_case: str | None = None
    resolution: Resolution | None = None
    log_jsonl: Path | None = None
    channels_last: bool = True
    log_every: int = 50
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    timing: Timing | None = None
    test_only: bool = False
    progress: bool = True
    plot: bool = False

    def __post_init__(self) -> None:
        ck, res = self.checkpoint, self.resolution
        from train.flagperf_case import CONFIGS

        _check([
            (self.flagperf_case in (None, "base", *CONFIGS),
             f"--flagperf-case {self.flagperf_case}: no such FlagPerf ResNet50 config (known: base, "
             f"{', '.join(CONFIGS)})"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.max_steps is None or self.max_steps >= 1, f"--max-steps must be >= 1, got {self.max_steps}"),
            (self.warmup_steps is None or self.warmup_steps >= 0,
             f"--warmup-steps must be >= 0, got {self.warmup_steps}"),
            (self.log_every >= 1, f"--log-every must be >= 1, got {self.log_every}"),
            (self.ema_decay is None or 0 < self.ema_decay < 1, f"--ema-decay must be in (0, 1), got {self.ema_decay}"),
            (self.target_acc1 is None or 0 <= self.target_acc1 <= 100,
             f"--target-acc1 takes a top-1 in [0, 100], got {self.target_acc1}"),
            (not self.test_only or ck.file is not None or ck.dir is not None,
             "--test-only needs --checkpoint FILE or --checkpoint-dir DIR (its newest checkpoint)"),
            (not self.plot or self.metrics_json is not None,
             "--plot writes its PNG next to --metrics-json: pass --metrics-json FILE too"),
            (not (self.plot and self.test_only), "--plot draws a training run; --test-only trains nothing"),
            (ck.file is None or self.test_only,
             "--checkpoint FILE is for --test-only (to continue training use --checkpoint-dir DIR --resume)"),
        ])
        if res is not None:
            _check([
                (res.start <= res.end,
                 f"--min-train-size {res.start} is above --image-size {res.end} (the size the ramp grows to)"),
                (res.ramp_start <= res.ramp_end,
                 f"--ramp-epochs takes FIRST,LAST with FIRST <= LAST, got {res.ramp_start},{res.ramp_end}"),
                (res.eval >= 8, f"--eval-size must be >= 8, got {res.eval}"),
            ])

    @property
    def step_log_path(self) -> Path | None:
        """Where the JSONL step log goes: ``log_jsonl``, else next to the metrics for ``--plot``, else nowhere."""
        if self.log_jsonl is not None or not self.plot:
            return self.log_jsonl
        return self.metrics_json.with_name(self.metrics_json.stem + ".steps.jsonl")

    @property
    def plot_path(self) -> Path | None:
        """``M.png`` beside ``--metrics-json M.json`` with ``--plot``, else None."""
        return self.metrics_json.with_suffix(".png") if self.plot else None

    def resolved_warmup_steps(self, total_steps: int) -> int:
        """Warm-up steps for a process that runs ``total_steps``: explicit, or min(20, steps // 5) but never 0
        when more than one step runs (the first step holds the allocator's and cuDNN's start-up).

        Raises:
            ValueError: an explicit count that leaves no measured step.
        """
        if self.warmup_steps is None:
            return max(1, min(20, total_steps // 5)) if total_steps > 1 else 0
        if not 0 <= self.warmup_steps < total_steps:
            raise ValueError(f"--warmup-steps {self.warmup_steps} must be >= 0 and below the run's {total_steps} "
                             f"steps (nothing would be measured)")
        return self.warmup_steps


def _jsonable(value: object) -> object:
    """A config value as JSON: enums by value, paths as text, tuples as lists, dataclasses as objects."""
    from enum import Enum

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def config_json(cfg: TrainConfig) -> dict:
    """The whole resolved config as a JSON object (the metrics JSON's ``resolved_config``): every field of every
    component, nested as the dataclasses are (``loader_cfg``, ``optim``, ``checkpoint``, ``resolution``)."""
    return _jsonable(cfg)
