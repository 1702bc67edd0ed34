"""The schema of a training run: one frozen dataclass per component, each holding its options' only defaults
and checking its own values (one-line ``ValueError`` naming the flag). The ``train`` flags and the ``--config``
file tables are read from these (see tools/train.py; a flag reads its field's default with
:func:`pipeline.schema.default_of`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from pipeline.backends import LoaderConfig, LoaderKind
from pipeline.read.transforms import IMAGE_SIZE_RANGE
from pipeline.schema import default_of
from train.precision import Precision, Tf32Mode
from train.recipe import Resolution, Schedule
from train.clock import Timing


def _device_ok(text: str) -> bool:
    """``text`` is a ``--device`` value in its normal form (:func:`train.accelerator.parse_device`)."""
    from train.accelerator import parse_device

    try:
        return parse_device(text) == text
    except ValueError:
        return False


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
        milestones = self.milestones
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
            (list(milestones) == sorted(milestones) and all(v >= 0 for v in milestones),
             f"--milestones must be increasing epochs >= 0, got {','.join(map(str, milestones))}"),
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
        resume_from: with ``resume``, continue from this checkpoint file instead, or from the newest checkpoint in
            this folder (``--resume PATH``, as timm, torchvision's references and NVIDIA's ConvNets take it); it
            must exist. Checkpoints are written only where ``dir`` (or the run's output folder) says.
        file: a checkpoint file to evaluate (``--test-only --checkpoint FILE``).
    """

    dir: Path | None = None
    every: int | None = None
    keep: int = 2
    resume: bool = False
    resume_from: Path | None = None
    file: Path | None = None

    def __post_init__(self) -> None:
        _check([
            (self.every is None or self.every >= 1, f"--checkpoint-every must be >= 1, got {self.every}"),
            (self.keep >= 1, f"--checkpoint-keep must be >= 1, got {self.keep}"),
            (self.resume_from is None or self.resume, "a checkpoint to resume from needs resume set"),
        ])  # --resume / --checkpoint-every without a folder: TrainConfig checks (--output-dir gives one too)


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
        device: where the run trains: ``auto`` (``cuda:<local rank>`` where torch can use a GPU, else the CPU),
            ``cpu``, ``cuda`` or ``cuda:N`` (see :func:`train.accelerator.choose_device`). With ``auto`` on a
            machine without a usable GPU, a GPU-only choice (``--loader dali`` / ``nvjpeg``, ``--precision amp`` /
            ``fp16`` / ``half``) stops the run at its start; ``cpu`` runs it on the CPU.
        seed: seed of model init, data order and crops: the run's one seed. The loader's ``loader_cfg.seed`` is
            always this value (set from it here, whatever ``loader_cfg`` was given), so the two cannot differ.
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
        log_jsonl: rank 0 writes one JSON line per ``log_every`` steps here (see train/steplog.py): a fresh run
            starts the file afresh, ``--resume`` appends to it.
        checkpoint: checkpoint / resume options.
        timing: how steps are timed on CUDA (see train/clock.py); None = ``events`` on CUDA, ``sync`` on CPU
            (the same there).
        test_only: evaluate a checkpoint on val, no training (``checkpoint.file``, or the newest in
            ``checkpoint.dir``).
        progress: rank 0 shows a live bar per train epoch and evaluation on a terminal, plain lines every
            ``log_every`` steps (at least ten an epoch) otherwise (see train/progress.py); False: epoch lines only.
        plot: write a PNG beside the metrics JSON (:attr:`plot_path`: DIR/metrics.png, or ``M.png``) from the
            JSONL step log (:attr:`step_log_path`), see train/plot.py.
        dist_timeout: seconds a DDP collective (and a read of the rendezvous store) may wait before the run gives up,
            and the age after which a rank's heartbeat counts as stale (see train/distributed.py); torch's own
            default would be 30 minutes.
        summary_csv: rank 0 writes timm's per-epoch ``summary.csv`` here (default DIR/summary.csv with
            ``output_dir``; see train/sinks.py).
        tensorboard: write TensorBoard scalars (needs the ``[tensorboard]`` extra) to ``tensorboard_log_dir``, else
            DIR/tensorboard of ``output_dir``.
        tensorboard_log_dir: TensorBoard's event folder (implies ``tensorboard``).
    """

    data: Path | str | None = None
    loader: LoaderKind = LoaderKind.CPU
    loader_cfg: LoaderConfig = field(default_factory=LoaderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 1
    max_steps: int | None = None
    precision: Precision = Precision.AUTO
    device: str = "auto"
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
    dist_timeout: float = 300.0
    summary_csv: Path | None = None
    tensorboard: bool = False
    tensorboard_log_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.loader_cfg.seed != self.seed:  # one seed: the loader's follows the run's
            object.__setattr__(self, "loader_cfg", dataclasses.replace(self.loader_cfg, seed=self.seed))
        ck, res = self.checkpoint, self.resolution
        from train.flagperf_case import CONFIGS

        _check([
            (self.flagperf_case in (None, "base", *CONFIGS),
             f"--flagperf-case {self.flagperf_case}: no such FlagPerf ResNet50 config (known: base, "
             f"{', '.join(CONFIGS)})"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (_device_ok(self.device), f"--device takes auto, cpu, cuda or cuda:N, got {self.device!r}"),
            (self.max_steps is None or self.max_steps >= 1, f"--max-steps must be >= 1, got {self.max_steps}"),
            (self.warmup_steps is None or self.warmup_steps >= 0,
             f"--warmup-steps must be >= 0, got {self.warmup_steps}"),
            (self.log_every >= 1, f"--log-every must be >= 1, got {self.log_every}"),
            (math.isfinite(self.dist_timeout) and self.dist_timeout >= 1,
             f"--dist-timeout must be a finite number of seconds >= 1, got {self.dist_timeout}"),
            (self.ema_decay is None or 0 < self.ema_decay < 1, f"--ema-decay must be in (0, 1), got {self.ema_decay}"),
            (self.target_acc1 is None or 0 <= self.target_acc1 <= 100,
             f"--target-acc1 takes a top-1 in [0, 100], got {self.target_acc1}"),
            (((not ck.resume or ck.resume_from is not None) and ck.every is None) or self.checkpoint_dir is not None,
             "--resume and --checkpoint-every need --checkpoint-dir DIR or --output-dir DIR"),
            (not self.test_only or ck.file is not None or self.checkpoint_dir is not None,
             "--test-only needs --checkpoint FILE or --checkpoint-dir DIR (its newest checkpoint)"),
            (not self.plot or self.metrics_path is not None,
             "--plot writes its PNG next to --metrics-json: pass --metrics-json FILE (or --output-dir DIR) too"),
            (not (self.plot and self.test_only), "--plot draws a training run; --test-only trains nothing"),
            (not self.tensorboard or self.tensorboard_dir is not None,
             "--tensorboard writes DIR/tensorboard of --output-dir DIR: pass --output-dir DIR or --tensorboard-dir "
             "TB_DIR"),
            (ck.file is None or self.test_only,
             "--checkpoint FILE is for --test-only (to continue training use --resume FILE)"),
        ])
        if res is not None:
            _check([
                (res.start <= res.end,
                 f"--min-train-size {res.start} is above --image-size {res.end} (the size the ramp grows to)"),
                (res.ramp_start <= res.ramp_end,
                 f"--ramp-epochs takes FIRST,LAST with FIRST <= LAST, got {res.ramp_start},{res.ramp_end}"),
                (res.eval >= IMAGE_SIZE_RANGE[0], f"--eval-size must be >= {IMAGE_SIZE_RANGE[0]}, got {res.eval}"),
                (res.eval <= IMAGE_SIZE_RANGE[1], f"--eval-size must be <= {IMAGE_SIZE_RANGE[1]} (px), got {res.eval}"),
                (IMAGE_SIZE_RANGE[0] <= res.start,
                 f"--min-train-size must be >= {IMAGE_SIZE_RANGE[0]}, got {res.start}"),
            ])

    # Where each output goes (see train/rundir.py): every writer asks these. With ``output_dir`` DIR the run's files
    # are DIR/config.toml, DIR/metrics.json, DIR/steps.jsonl, DIR/metrics.png, DIR/checkpoints/, DIR/summary.csv
    # and DIR/tensorboard/; an explicit --metrics-json / --log-jsonl / --checkpoint-dir wins over its DIR default.

    def _in_output_dir(self, name: str) -> Path | None:
        return self.output_dir / name if self.output_dir is not None else None

    @property
    def metrics_path(self) -> Path | None:
        """The metrics JSON: ``metrics_json``, else DIR/metrics.json with ``output_dir`` (not for ``test_only``,
        which reads the run folder and leaves its files alone), else None (not written)."""
        if self.metrics_json is not None or self.test_only:
            return self.metrics_json
        return self._in_output_dir("metrics.json")

    @property
    def step_log_path(self) -> Path | None:
        """Where the JSONL step log goes: ``log_jsonl``, else DIR/steps.jsonl with ``output_dir``, else
        ``M.steps.jsonl`` next to ``--metrics-json M.json`` for ``--plot``, else nowhere."""
        if self.log_jsonl is not None:
            return self.log_jsonl
        if self.output_dir is not None:
            return self.output_dir / "steps.jsonl"
        if not self.plot or self.metrics_json is None:
            return None
        return self.metrics_json.with_name(self.metrics_json.stem + ".steps.jsonl")

    @property
    def plot_path(self) -> Path | None:
        """With ``--plot``: the metrics JSON's name with ``.png`` (DIR/metrics.png, or ``M.png`` beside
        ``--metrics-json M.json``); else None."""
        metrics = self.metrics_path
        return metrics.with_suffix(".png") if self.plot and metrics is not None else None

    @property
    def checkpoint_dir(self) -> Path | None:
        """The checkpoints' folder: ``checkpoint.dir``, else DIR/checkpoints with ``output_dir``, else None (no
        checkpoints)."""
        return self.checkpoint.dir if self.checkpoint.dir is not None else self._in_output_dir("checkpoints")

    @property
    def resolved_config_path(self) -> Path | None:
        """The resolved options (TOML, re-runnable with ``--config``): DIR/config.toml with ``output_dir`` (written at
        the start), else ``M.config.toml`` beside ``--metrics-json M.json`` (written at the end), else None; also
        None where M is a device or pipe (``--metrics-json /dev/null``): nothing is written beside it."""
        if self.output_dir is not None and not self.test_only:
            return self.output_dir / "config.toml"
        if self.metrics_json is None or (self.metrics_json.exists() and not self.metrics_json.is_file()):
            return None
        return self.metrics_json.with_name(self.metrics_json.stem + ".config.toml")

    @property
    def summary_csv_path(self) -> Path | None:
        """Per-epoch summary CSV (timm's ``summary.csv``): ``summary_csv``, else DIR/summary.csv with
        ``output_dir``, else None (not written)."""
        return self.summary_csv if self.summary_csv is not None else self._in_output_dir("summary.csv")

    @property
    def tensorboard_dir(self) -> Path | None:
        """TensorBoard event folder when TensorBoard is asked for: ``tensorboard_log_dir``, else DIR/tensorboard
        with ``output_dir``; None: no TensorBoard (the package is then never imported)."""
        if self.tensorboard_log_dir is not None:
            return self.tensorboard_log_dir
        return self._in_output_dir("tensorboard") if self.tensorboard else None

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

    if hasattr(value, "json_fields"):  # a component that lays out its own JSON (LoaderConfig)
        return {name: _jsonable(field) for name, field in value.json_fields().items()}
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
