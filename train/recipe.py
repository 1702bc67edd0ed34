"""The training recipe's pieces: SGD parameter groups, LR schedules, EMA of weights, progressive resolution.

Defaults (train/config.py) follow NVIDIA DeepLearningExamples' ResNet50 v1.5 recipe (PyTorch/Classification/
ConvNets/resnet50v1.5/README.md): SGD with momentum 0.875, LR 0.256 per 256 images of global batch (linear
scaling, Goyal et al. 2017), cosine schedule after a linear warmup, weight decay 1/32768 = 3.0517578125e-05 not
applied to batch-norm parameters (nor, here, to biases), label smoothing 0.1. Zero-initialising the last BN
gamma of each residual block is Goyal et al. 2017's recommendation (torchvision's ``zero_init_residual``).
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from enum import Enum

import torch

from pipeline.compat import foreach_copy_, make_sgd, zip_strict


class Schedule(str, Enum):
    """LR schedule after warmup: cosine to zero, or step decay by ``gamma`` at given epochs."""

    COSINE = "cosine"
    STEP = "step"


def parameter_groups(model: torch.nn.Module, weight_decay: float, decay_bn_and_bias: bool) -> list[dict]:
    """SGD parameter groups: weights of conv / linear layers with ``weight_decay``; batch-norm weights and all
    biases with 0 unless ``decay_bn_and_bias`` (1-D parameters are exactly those)."""
    if decay_bn_and_bias:
        return [{"params": [param for param in model.parameters() if param.requires_grad],
                 "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_sgd(groups: list[dict], lr: float, momentum: float, nesterov: bool, fused: bool
              ) -> tuple[torch.optim.SGD, str]:
    """SGD over ``groups`` with every momentum buffer created as zeros up front, and how its step runs
    (:class:`pipeline.compat.SgdImpl`: ``fused`` where asked for and this torch and device have it, else
    ``foreach`` or ``for-loop``; the same update).

    ``fused=True`` (CUDA: one kernel per step, and GradScaler passes it the scale and the inf flag on the device,
    no per-step ``.item()``) has a trap: its first step allocates the momentum buffers with ``empty_like`` and,
    when GradScaler found inf gradients and the kernel skips that step, leaves them uninitialised, so the next
    step adds garbage momentum. A zero buffer gives exactly the first step's ``buf = grad`` (``m * 0 + g == g``),
    so with the buffers made here every backend and precision trains bitwise as with lazily made ones.
    """
    optimizer, impl = make_sgd(groups, lr, momentum, nesterov, fused)
    if momentum > 0:
        for group in optimizer.param_groups:
            for param in group["params"]:
                optimizer.state[param]["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    return optimizer, impl


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: Schedule = Schedule.COSINE,
              milestones: tuple[int, ...] = (), gamma: float = 0.1) -> float:
    """LR multiplier at 0-based ``step``: linear warmup ``(step+1)/warmup`` (Goyal et al. 2017), then cosine
    ``0.5(1+cos(pi t))`` to zero (Loshchilov & Hutter 2017), or ``gamma`` per milestone passed (steps)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule is Schedule.STEP:
        return gamma ** sum(step >= m for m in milestones)
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                    schedule: Schedule = Schedule.COSINE, milestones: tuple[int, ...] = (), gamma: float = 0.1):
    """A ``LambdaLR`` applying :func:`lr_factor`; call ``.step()`` after every optimizer step."""
    schedule = Schedule(schedule)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, total_steps, schedule, milestones, gamma))


class ModelEma:
    """Exponential moving average of a model's weights and floating-point buffers (BN running statistics):
    ``ema = decay * ema + (1 - decay) * current`` after every step (the first update copies the model),
    integer buffers (BN's ``num_batches_tracked``) copied. Same formula as torch's ``AveragedModel`` with
    ``get_ema_multi_avg_fn`` and ``use_buffers=True``, but with the update count kept on the host: torch's
    version moves its CPU counter to the GPU every step (a blocking copy: a host synchronisation per step),
    and the count is part of :meth:`state_dict`, so a resumed EMA continues instead of restarting.

    ``module`` is the averaged copy (evaluate it like the model). All updates are in-place ``_foreach`` ops
    on the model's device: no host synchronisation.

    Raises:
        ValueError: ``decay`` not in (0, 1).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema-decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def _pairs(self, model: torch.nn.Module):
        mine = itertools.chain(self.module.parameters(), self.module.buffers())
        theirs = itertools.chain(model.parameters(), model.buffers())
        return list(zip_strict(mine, theirs))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold ``model``'s current weights into the average (``model``: the plain module, not a DDP wrapper)."""
        pairs = self._pairs(model)
        floats = [(a, b.detach()) for a, b in pairs if a.is_floating_point()]
        ints = [(a, b) for a, b in pairs if not a.is_floating_point()]
        if ints:
            foreach_copy_([a for a, _ in ints], [b for _, b in ints])
        ema, cur = [a for a, _ in floats], [b for _, b in floats]
        if self.updates == 0:
            foreach_copy_(ema, cur)
        else:
            torch._foreach_lerp_(ema, cur, 1.0 - self.decay)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output (the decay of the running config is kept).

        Raises:
            KeyError / RuntimeError: not an EMA state of this model.
        """
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


@dataclass(frozen=True)
class Resolution:
    """Train resolution per epoch (FFCV's ImageNet example: progressive low-to-high resizing) and eval resolution.

    Attributes:
        start: train side (px) up to epoch ``ramp_start``; end: train side from epoch ``ramp_end`` on; linear
            in between, rounded down to a multiple of ``step`` px.
        eval: eval side (px); training at a lower resolution than eval is the "FixRes" effect (Touvron et al.
            2019): objects look larger at train time under RandomResizedCrop, so eval at ~1.15x fits them.
    """

    start: int
    end: int
    ramp_start: int
    ramp_end: int
    eval: int
    step: int = 32

    def train_size(self, epoch: int) -> int:
        """Train image side (px) in 0-based ``epoch``."""
        if epoch <= self.ramp_start or self.ramp_end <= self.ramp_start:
            size = self.start if epoch <= self.ramp_start else self.end
        elif epoch >= self.ramp_end:
            size = self.end
        else:
            t = (epoch - self.ramp_start) / (self.ramp_end - self.ramp_start)
            size = self.start + t * (self.end - self.start)
        return max(self.step, int(size) // self.step * self.step) if self.step > 1 else int(size)


__all__ = ["Schedule", "build_sgd", "parameter_groups", "lr_factor", "build_scheduler", "ModelEma", "Resolution"]
