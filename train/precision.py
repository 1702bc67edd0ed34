"""Numeric precision of the training step, chosen per device.

* ``fp32``: no autocast.
* ``amp``: float16 autocast with a GradScaler (loss scaling).
* ``bf16``: bfloat16 autocast, no GradScaler (bf16 has fp32's exponent range).
* ``fp16``: FlagPerf's meaning: the model (BN included) and the input cast to float16 (``model.half()``), no
  autocast and no loss scaling (GradScaler cannot unscale fp16 parameters' gradients): the fastest and least
  safe mode; small gradients may underflow.
* ``auto``: ``amp`` on CUDA; ``fp32`` on CPU, where bf16 autocast is ~15x slower than fp32 on the
  x86 CPUs this project is developed on (measured) and fp16 autocast is no faster.
"""

from __future__ import annotations

import contextlib
from enum import Enum

import torch


class Precision(str, Enum):
    AUTO = "auto"
    FP32 = "fp32"
    AMP = "amp"
    BF16 = "bf16"
    FP16 = "fp16"


def resolve_precision(requested: Precision, device: torch.device) -> Precision:
    """Turn ``auto`` into a concrete precision for ``device``; explicit choices are kept."""
    requested = Precision(requested)
    if requested is Precision.AUTO:
        return Precision.AMP if device.type == "cuda" else Precision.FP32
    return requested


def autocast(precision: Precision, device: torch.device):
    """Context manager for the forward pass under ``precision`` (a resolved one)."""
    if precision is Precision.AMP:
        return torch.autocast(device.type, dtype=torch.float16)
    if precision is Precision.BF16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_grad_scaler(precision: Precision, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for ``amp`` only; None for fp32, bf16 and fp16."""
    if precision is Precision.AMP:
        return torch.amp.GradScaler(device.type)
    return None


def model_dtype(precision: Precision) -> torch.dtype:
    """dtype of the model's parameters and of its input under ``precision`` (float16 only for ``fp16``)."""
    return torch.float16 if precision is Precision.FP16 else torch.float32


def set_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 tensor-core math for float32 matmuls and cuDNN convolutions on CUDA."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
