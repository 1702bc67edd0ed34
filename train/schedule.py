"""Learning-rate schedule: linear warmup, then cosine decay to zero, stepped every iteration.

Warmup as in Goyal et al. 2017 ("Accurate, Large Minibatch SGD"); cosine as in Loshchilov & Hutter
2017 (SGDR) without restarts, the schedule of NVIDIA's DLE ResNet50 v1.5 recipe.
"""

from __future__ import annotations

import math

import torch


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier for 0-based ``step``: ``(step+1)/warmup`` during warmup, then ``0.5(1+cos(pi t))``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """A ``LambdaLR`` applying :func:`warmup_cosine_factor`; call ``.step()`` after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, total_steps))
