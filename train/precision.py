"""Numeric precision of the training step, chosen per device.

* ``fp32``: no autocast.
* ``amp``: float16 autocast with a GradScaler (loss scaling).
* ``bf16``: bfloat16 autocast, no GradScaler (bf16 has fp32's exponent range).
* ``fp16``: FlagPerf's meaning: the model (BN included) and the input cast to float16 (``model.half()``), no
  autocast and no loss scaling (GradScaler cannot unscale fp16 parameters' gradients): the fastest and least
  safe mode; small gradients may underflow.
* ``auto``: ``amp`` on CUDA; ``fp32`` on CPU, where bf16 autocast is ~15x slower than fp32 on the
  x86 CPUs this project is developed on (measured) and fp16 autocast is no faster.

TF32 (``--tf32``) is set the way the device's torch takes it (:class:`Tf32Mechanism`): ``torch.backends``' flags
everywhere, and on MetaX also the environment variable ``METAX_USE_TF32`` (``1`` / ``0``; FlagPerf's MetaX
configs export ``METAX_USE_TF32=1``), which MetaX's libraries read when CUDA starts: the ``train`` command sets it
first thing (:func:`prepare_tf32_env`), before CUDA is initialised.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from enum import Enum

import torch

from pipeline.compat import autocast_dtype_supported, cpu_float16_supported, grad_scaler

from train.accelerator import Vendor, vendor_hint

METAX_TF32_ENV = "METAX_USE_TF32"


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


def make_grad_scaler(precision: Precision, device: torch.device):
    """A GradScaler (``torch.amp.GradScaler``, or ``torch.cuda.amp.GradScaler`` before torch 2.3) for ``amp``
    only; None for fp32, bf16 and fp16.

    Raises:
        ValueError: ``amp`` on a device this torch has no GradScaler for (the CPU before torch 2.3).
    """
    if precision is Precision.AMP:
        return grad_scaler(device.type)
    return None


def unsupported(precision: Precision, device: torch.device) -> str | None:
    """Why ``precision`` (a resolved one) cannot run on ``device`` with this torch, in one line, or None.

    torch 2.0 / 2.1's CPU autocast takes only bfloat16 (``amp`` is float16 autocast), their CPU has no GradScaler
    and no float16 convolution (``fp16``).
    """
    dtype = {Precision.AMP: torch.float16, Precision.BF16: torch.bfloat16}.get(precision)
    if dtype is not None and not autocast_dtype_supported(device.type, dtype):
        return (f"--precision {precision.value} needs {str(dtype).replace('torch.', '')} autocast on the "
                f"{device.type}, which torch {torch.__version__} does not have: use --precision fp32"
                + (" or bf16" if precision is Precision.AMP and autocast_dtype_supported(device.type, torch.bfloat16)
                   else ""))
    if precision is Precision.AMP:
        try:
            grad_scaler(device.type)
        except ValueError as exc:
            return str(exc)
    if precision is Precision.FP16 and device.type == "cpu" and not cpu_float16_supported():
        return (f"--precision fp16 needs float16 CPU kernels (convolution, batch norm), which torch "
                f"{torch.__version__} does not have: use --precision fp32")
    return None


def model_dtype(precision: Precision) -> torch.dtype:
    """dtype of the model's parameters and of its input under ``precision`` (float16 only for ``fp16``)."""
    return torch.float16 if precision is Precision.FP16 else torch.float32


class Tf32Mechanism(str, Enum):
    """How TF32 is switched: torch's flags (``torch.backends.cuda.matmul.allow_tf32`` and
    ``torch.backends.cudnn.allow_tf32``), or on MetaX the ``METAX_USE_TF32`` environment variable (torch's flags
    set too)."""

    TORCH_BACKENDS = "torch.backends"
    METAX_ENV = METAX_TF32_ENV


@dataclass(frozen=True)
class Tf32State:
    """TF32 as the process runs it: the mechanism in force and whether TF32 math is on by it (torch's flags: both
    the matmul and the cuDNN flag; MetaX: ``METAX_USE_TF32`` is ``1``)."""

    mechanism: Tf32Mechanism
    enabled: bool


def _set_metax_env(enabled: bool) -> None:
    """Set ``METAX_USE_TF32``; a different value already there is replaced with a note on stderr, and a change
    after CUDA started gets a note that MetaX's libraries may keep the earlier setting."""
    value, before = "1" if enabled else "0", os.environ.get(METAX_TF32_ENV)
    if before == value:
        return
    if before is not None:
        print(f"train: note: {METAX_TF32_ENV}={before} in the environment replaced by {value} (--tf32 "
              f"{'given' if enabled else 'not given'})", file=sys.stderr)
    if torch.cuda.is_initialized():
        print(f"train: note: {METAX_TF32_ENV}={value} set after CUDA started: MetaX's libraries may keep the "
              f"earlier setting (the train command sets it before CUDA starts)", file=sys.stderr)
    os.environ[METAX_TF32_ENV] = value


def prepare_tf32_env(enabled: bool) -> Vendor | None:
    """Before CUDA starts: where the device is MetaX's as far as can be told without starting CUDA
    (:func:`train.accelerator.vendor_hint`: MetaX's torch build tag, or ``mx-smi`` without an NVIDIA driver), set
    ``METAX_USE_TF32`` to ``1`` / ``0``. Returns the hinted vendor (None: undecided)."""
    vendor = vendor_hint()
    if vendor is Vendor.METAX:
        _set_metax_env(enabled)
    return vendor


def set_tf32(enabled: bool, vendor: Vendor | None = None) -> Tf32State | None:
    """Allow (or forbid) TF32 tensor-core math for float32 matmuls and cuDNN convolutions on CUDA: torch's flags
    and, on MetaX (``vendor``; None: :func:`train.accelerator.vendor_hint`), ``METAX_USE_TF32``. Returns the state
    now in force (:func:`tf32_state`)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    vendor = vendor if vendor is not None else vendor_hint()
    if vendor is Vendor.METAX:
        _set_metax_env(enabled)
    return tf32_state(vendor if vendor is not None else Vendor.OTHER_CUDA)


def tf32_state(vendor: Vendor) -> Tf32State | None:
    """The TF32 state of a device of ``vendor`` in this process; None without an accelerator (``Vendor.NONE``)."""
    if vendor is Vendor.NONE:
        return None
    if vendor is Vendor.METAX:
        return Tf32State(Tf32Mechanism.METAX_ENV, os.environ.get(METAX_TF32_ENV) == "1")
    return Tf32State(Tf32Mechanism.TORCH_BACKENDS,
                     bool(torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32))
