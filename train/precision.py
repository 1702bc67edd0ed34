"""Numeric precision of the training step, chosen per device; TF32 and cuDNN's algorithm choice.

The modes mean what FlagPerf's ResNet50 case means by them (github.com/FlagOpen/FlagPerf,
``training/benchmarks/resnet50/pytorch/``: ``train/trainer_adapter.py``, ``train/trainer.py``,
``dataloaders/dataloader.py``; the bfloat16 cast since its PR #253):

* ``fp32``: no autocast, float32 parameters and inputs.
* ``amp``: float16 autocast with a GradScaler (loss scaling): FlagPerf's ``config.amp``.
* ``fp16``: FlagPerf's ``config.fp16``: the model (BN included) cast to **bfloat16** (``model.to(torch.bfloat16)``)
  and the inputs cast likewise, no autocast, no GradScaler (bf16 has fp32's exponent range). FlagPerf's NVIDIA page
  labels such a run's row ``bf16`` and explains under 数据格式 that bf16 implements its fp16; this project's page
  does the same (:data:`PAGE_LABEL`).
* ``bf16``: bfloat16 autocast, no GradScaler (not a FlagPerf mode; the page labels it ``amp-bf16``).
* ``half``: the model and inputs cast to IEEE float16 (``model.half()``), no autocast and no loss scaling
  (GradScaler cannot unscale float16 parameters' gradients): FlagPerf's cast before PR #253; fast and least safe,
  small gradients may underflow (page label ``fp16-ieee``).
* ``auto``: ``amp`` on CUDA; ``fp32`` on CPU, where bf16 autocast is ~15x slower than fp32 on the
  x86 CPUs this project is developed on (measured) and fp16 autocast is no faster.

TF32 (``--tf32 on|off|default``, :class:`Tf32Mode`) is set the way the device's torch takes it
(:class:`Tf32Mechanism`): ``torch.backends``' flags everywhere, and on MetaX also the environment variable
``METAX_USE_TF32`` (``1`` / ``0``; FlagPerf's MetaX cases export ``METAX_USE_TF32=1``), which MetaX's libraries
read when CUDA starts: the ``train`` command sets it first thing (:func:`prepare_tf32_env`), before CUDA is
initialised. ``default`` leaves PyTorch's defaults (cuDNN convolutions may use TF32, float32 matmuls do not) and an
inherited ``METAX_USE_TF32``: what FlagPerf's NVIDIA runs get.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

import torch

from pipeline.compat import autocast_dtype_supported, cpu_dtype_supported, grad_scaler

from train.accelerator import Vendor, vendor_hint

METAX_TF32_ENV = "METAX_USE_TF32"


class Precision(str, Enum):
    AUTO = "auto"
    FP32 = "fp32"
    AMP = "amp"
    BF16 = "bf16"
    FP16 = "fp16"
    HALF = "half"


PAGE_LABEL = MappingProxyType({Precision.FP32: "fp32", Precision.AMP: "amp", Precision.FP16: "bf16",
                               Precision.BF16: "amp-bf16", Precision.HALF: "fp16-ieee"})
"""The precision column of the FlagPerf page per mode: FlagPerf's NVIDIA page writes ``bf16`` for its fp16 run."""

SIXTEEN_BIT_CAST = (Precision.FP16, Precision.HALF)  # modes whose model and inputs are cast to 16 bits


class Tf32Mode(str, Enum):
    """``--tf32``: ``on`` (TF32 matmuls and convolutions), ``off`` (true fp32), ``default`` (PyTorch's defaults,
    cuDNN TF32 on and matmul TF32 off, and an inherited ``METAX_USE_TF32``: FlagPerf's)."""

    ON = "on"
    OFF = "off"
    DEFAULT = "default"


def resolve_precision(requested: Precision, device: torch.device) -> Precision:
    """Turn ``auto`` into a concrete precision for ``device``; explicit choices are kept."""
    requested = Precision(requested)
    if requested is Precision.AUTO:
        return Precision.AMP if device.type == "cuda" else Precision.FP32
    return requested


def autocast(precision: Precision, device: torch.device):
    """Context manager for the forward pass under ``precision`` (a resolved one)."""
    dtype = autocast_dtype(precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def make_grad_scaler(precision: Precision, device: torch.device):
    """A GradScaler (``torch.amp.GradScaler``, or ``torch.cuda.amp.GradScaler`` before torch 2.3) for ``amp``
    only; None for fp32, bf16, fp16 and half.

    Raises:
        ValueError: ``amp`` on a device this torch has no GradScaler for (the CPU before torch 2.3).
    """
    if precision is Precision.AMP:
        return grad_scaler(device.type)
    return None


def unsupported(precision: Precision, device: torch.device) -> str | None:
    """Why ``precision`` (a resolved one) cannot run on ``device`` with this torch, in one line, or None.

    torch 2.0 / 2.1's CPU autocast takes only bfloat16 (``amp`` is float16 autocast), their CPU has no GradScaler
    and no float16 convolution (``half``).
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
    cast = model_dtype(precision)
    if cast is not torch.float32 and device.type == "cpu" and not cpu_dtype_supported(str(cast).replace("torch.", "")):
        name = str(cast).replace("torch.", "")
        return (f"--precision {precision.value} needs {name} CPU kernels (convolution, batch norm), which torch "
                f"{torch.__version__} does not have: use --precision fp32")
    return None


def model_dtype(precision: Precision) -> torch.dtype:
    """dtype of the model's parameters and of its input under ``precision``: bfloat16 for ``fp16`` (FlagPerf's),
    float16 for ``half``, else float32."""
    return {Precision.FP16: torch.bfloat16, Precision.HALF: torch.float16}.get(precision, torch.float32)


def autocast_dtype(precision: Precision) -> torch.dtype | None:
    """The dtype autocast runs the forward pass in under ``precision`` (None: no autocast)."""
    return {Precision.AMP: torch.float16, Precision.BF16: torch.bfloat16}.get(precision)


def cast_input(images: torch.Tensor, precision: Precision) -> torch.Tensor:
    """``images`` (N, 3, H, W float32, normalised) in the model's dtype under ``precision`` (no copy in fp32)."""
    dtype = model_dtype(precision)
    return images if images.dtype == dtype else images.to(dtype)


class Tf32Mechanism(str, Enum):
    """How TF32 is switched: torch's flags (``torch.backends.cuda.matmul.allow_tf32`` and
    ``torch.backends.cudnn.allow_tf32``), or on MetaX the ``METAX_USE_TF32`` environment variable (torch's flags
    set too)."""

    TORCH_BACKENDS = "torch.backends"
    METAX_ENV = METAX_TF32_ENV


@dataclass(frozen=True)
class Tf32State:
    """TF32 as the process runs it: the mechanism in force and whether TF32 math is on by it (torch's flags: both
    the matmul and the cuDNN flag; MetaX: ``METAX_USE_TF32`` is ``1``); ``matmul`` / ``cudnn``: torch's two flags
    (PyTorch's defaults: False / True)."""

    mechanism: Tf32Mechanism
    enabled: bool
    matmul: bool | None = None
    cudnn: bool | None = None


def _tf32_mode(mode: Tf32Mode | bool) -> Tf32Mode:
    if isinstance(mode, bool):
        return Tf32Mode.ON if mode else Tf32Mode.OFF
    return Tf32Mode(mode)


def _set_metax_env(enabled: bool) -> None:
    """Set ``METAX_USE_TF32``; a different value already there is replaced with a note on stderr, and a change
    after CUDA started gets a note that MetaX's libraries may keep the earlier setting."""
    value, before = "1" if enabled else "0", os.environ.get(METAX_TF32_ENV)
    if before == value:
        return
    if before is not None:
        print(f"train: note: {METAX_TF32_ENV}={before} in the environment replaced by {value} (--tf32 "
              f"{'on' if enabled else 'off'})", file=sys.stderr)
    if torch.cuda.is_initialized():
        print(f"train: note: {METAX_TF32_ENV}={value} set after CUDA started: MetaX's libraries may keep the "
              f"earlier setting (the train command sets it before CUDA starts)", file=sys.stderr)
    os.environ[METAX_TF32_ENV] = value


def prepare_tf32_env(mode: Tf32Mode | bool) -> Vendor | None:
    """Before CUDA starts: where the device is MetaX's as far as can be told without starting CUDA
    (:func:`train.accelerator.vendor_hint`: MetaX's torch build tag, or ``mx-smi`` without an NVIDIA driver), set
    ``METAX_USE_TF32`` to ``1`` / ``0`` (``--tf32 default``: left as inherited). ``mode``: a :class:`Tf32Mode`, or
    True / False for on / off. Returns the hinted vendor (None: undecided)."""
    mode = _tf32_mode(mode)
    vendor = vendor_hint()
    if vendor is Vendor.METAX and mode is not Tf32Mode.DEFAULT:
        _set_metax_env(mode is Tf32Mode.ON)
    return vendor


def set_tf32(mode: Tf32Mode | bool, vendor: Vendor | None = None) -> Tf32State | None:
    """Allow (``on``) or forbid (``off``) TF32 tensor-core math for float32 matmuls and cuDNN convolutions on CUDA,
    or restore PyTorch's defaults (``default``: matmul off, cuDNN on): torch's flags and, on MetaX (``vendor``;
    None: :func:`train.accelerator.vendor_hint`), ``METAX_USE_TF32`` (``default``: left as inherited). ``mode``: a
    :class:`Tf32Mode`, or True / False. Returns the state now in force (:func:`tf32_state`)."""
    mode = _tf32_mode(mode)
    matmul, cudnn = {Tf32Mode.ON: (True, True), Tf32Mode.OFF: (False, False)}.get(mode, (False, True))
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn
    vendor = vendor if vendor is not None else vendor_hint()
    if vendor is Vendor.METAX and mode is not Tf32Mode.DEFAULT:
        _set_metax_env(mode is Tf32Mode.ON)
    return tf32_state(vendor if vendor is not None else Vendor.OTHER_CUDA)


def tf32_state(vendor: Vendor) -> Tf32State | None:
    """The TF32 state of a device of ``vendor`` in this process; None without an accelerator (``Vendor.NONE``)."""
    if vendor is Vendor.NONE:
        return None
    matmul, cudnn = bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)
    if vendor is Vendor.METAX:
        return Tf32State(Tf32Mechanism.METAX_ENV, os.environ.get(METAX_TF32_ENV) == "1", matmul, cudnn)
    return Tf32State(Tf32Mechanism.TORCH_BACKENDS, matmul and cudnn, matmul, cudnn)


def set_cudnn(benchmark: bool, deterministic: bool) -> None:
    """cuDNN's algorithm choice: ``benchmark`` (time the candidates per input shape and keep the fastest) and
    ``deterministic`` (only deterministic algorithms). FlagPerf's NVIDIA runs: False / True; torch's defaults and
    FlagPerf's MetaX runs: False / False; this project's own: True / False."""
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cudnn.deterministic = deterministic


def cudnn_state() -> tuple[bool, bool]:
    """(``torch.backends.cudnn.benchmark``, ``.deterministic``) as the process runs."""
    return bool(torch.backends.cudnn.benchmark), bool(torch.backends.cudnn.deterministic)
