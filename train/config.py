"""Frozen per-component configuration of a training run (the CLI flags map onto these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.backends import LoaderConfig, LoaderKind
from train.precision import Precision


@dataclass(frozen=True)
class OptimConfig:
    """SGD with momentum, label smoothing and a warmup + cosine schedule.

    Attributes:
        lr: peak learning rate; None = 0.1 × global batch / 256 (Goyal et al. 2017 linear scaling).
        momentum, weight_decay, label_smoothing: as in NVIDIA DLE's ResNet50 v1.5 recipe.
        warmup_epochs: epochs of linear warmup (fractions allowed).
    """

    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0

    def peak_lr(self, global_batch: int) -> float:
        return self.lr if self.lr is not None else 0.1 * global_batch / 256


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
            autotuning, worker start, compile) and reported separately; None = min(20, total steps // 5).
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

    def resolved_warmup_steps(self, total_steps: int) -> int:
        """Warm-up steps for a run of ``total_steps``.

        Raises:
            ValueError: an explicit count that leaves no measured step.
        """
        if self.warmup_steps is None:
            return min(20, total_steps // 5)
        if not 0 <= self.warmup_steps < total_steps:
            raise ValueError(f"--warmup-steps {self.warmup_steps} must be >= 0 and below the run's {total_steps} "
                             f"steps (nothing would be measured)")
        return self.warmup_steps
