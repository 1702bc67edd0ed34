"""Frozen per-component configuration of a training run (the CLI flags map onto these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.backends import LoaderConfig, LoaderKind
from train.precision import Precision
from train.recipe import Resolution, Schedule
from train.clock import Timing


@dataclass(frozen=True)
class OptimConfig:
    """SGD, LR schedule and regularisation; defaults are NVIDIA DLE's ResNet50 v1.5 recipe (see train/recipe.py).

    Attributes:
        lr: peak learning rate; None = ``lr_per_256`` × global batch / 256 (Goyal et al. 2017 linear scaling).
        lr_per_256: peak LR per 256 images of global batch (DLE: 0.256).
        momentum: SGD momentum (DLE: 0.875); nesterov: Nesterov momentum.
        weight_decay: L2 on conv / linear weights (DLE: 1/32768); decay_bn_and_bias: also on BN and biases.
        label_smoothing: cross-entropy label smoothing (0.1).
        warmup_epochs: epochs of linear LR warmup (fractions allowed).
        schedule: ``cosine`` (to zero) or ``step`` (× ``gamma`` at each of ``milestones``, in epochs).
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
        eval: evaluate after every epoch (FlagPerf does).
        warmup_steps: first train steps left out of p_whole / p_train / p_core (start-up: allocator, cudnn
            autotuning, worker start, compile) and reported separately; None = min(20, steps // 5), at least 1
            when the process runs more than one step.
        zero_init_residual: zero-initialise the last BN gamma of every residual block (Goyal et al. 2017).
        ema_decay: keep an exponential moving average of the weights with this decay and evaluate it too
            (None = no EMA).
        target_acc1: stop after the first evaluation whose top-1 (%) reaches it (FlagPerf's ``target_acc1``).
        compile: ``torch.compile`` the model (its compile time falls in the warm-up steps).
        tf32: allow TF32 matmuls / convolutions on CUDA in fp32 mode (off: true fp32).
        resolution: progressive train resolution and a separate eval resolution (None: ``image_size`` for both).
        channels_last: model and batches in channels-last memory format (False: NCHW, for comparison).
        log_jsonl: rank 0 appends one JSON line per ``log_every`` steps here (see train/steplog.py).
        checkpoint: checkpoint / resume options.
        timing: how steps are timed on CUDA (see train/timing.py); None = ``events`` on CUDA, ``sync`` on CPU
            (the same there).
        test_only: evaluate a checkpoint on val, no training (``checkpoint.file``, or the newest in
            ``checkpoint.dir``).
    """

    data: Path | str | None
    loader: LoaderKind
    loader_cfg: LoaderConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 1
    max_steps: int | None = None
    precision: Precision = Precision.AUTO
    seed: int = 0
    metrics_json: Path | None = None
    eval: bool = True
    warmup_steps: int | None = None
    zero_init_residual: bool = True
    ema_decay: float | None = None
    target_acc1: float | None = None
    compile: bool = False
    tf32: bool = False
    resolution: Resolution | None = None
    log_jsonl: Path | None = None
    channels_last: bool = True
    log_every: int = 50
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    timing: Timing | None = None
    test_only: bool = False

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
