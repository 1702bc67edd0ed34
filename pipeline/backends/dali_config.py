"""The ``dali`` backend's own options (:class:`DaliConfig`, its registry entry's sub-config in
``LoaderConfig.options``) and where its images are normalised (:class:`DaliOutput`). Importing this module imports
neither DALI nor torch: :mod:`pipeline.backends` re-exports both names.

Every default is one of NVIDIA's published ResNet50 settings, named at its field:

* DLE: NVIDIA DeepLearningExamples, ``PyTorch/Classification/ConvNets/image_classification/dali.py`` (and the
  older ``dataloaders.py``): the PyTorch ResNet50 v1.5 recipe this project trains;
* MLPerf: NVIDIA's MLPerf Training ResNet50 submissions (MXNet + DALI), ``mlcommons/training_results_v3.1``
  ``NVIDIA/benchmarks/resnet/implementations/mxnet/config_DGXH100.sh`` (one DGX H100, 8 GPUs; the same values in
  v2.1's ``mxnet-preview/config_DGXH100.sh``);
* DALI: the operator's own default (``fn.decoders.image_random_crop``'s documentation, DALI 2.4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


class DaliOutput(str, Enum):
    """What DALI's last operator (``crop_mirror_normalize``) emits with ``LoaderConfig.normalize`` on; the loader's
    :class:`~pipeline.backends.Batch` holds float32 ImageNet-normalised ``N×3×S×S`` channels-last images in all
    three cases (the training step's input: it casts to the model's dtype itself).

    * ``float32``: DALI normalises into float32 (DLE's ``dtype=types.FLOAT``);
    * ``float16``: DALI normalises into float16 (MLPerf's ``dtype='float16'``): half the bytes in DALI's output
      buffers and in the copy out of them, widened to float32 on the device by one cast (channels-last kept);
    * ``uint8``: DALI crops, resizes and mirrors only; the 0..255 values are normalised on the device by torch
      (:func:`pipeline.backends.staging.normalize_on_device`, timm's pattern): a quarter of the bytes.

    With ``normalize`` off every choice yields the uint8 values.
    """

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    UINT8 = "uint8"


@dataclass(frozen=True)
class DaliConfig:
    """Options of the ``dali`` backend alone (its registry entry names this class). The nvJPEG settings apply to
    the ``mixed`` (GPU) decoder only: the CPU pipeline (no CUDA) ignores them, so they can only be checked on a GPU.

    Attributes:
        hw_decoder_load: fraction (0..1) of each batch's JPEGs given to the GPU's hardware JPEG decoder (A100, H100,
            H200; ignored on GPUs without one); the rest goes to nvJPEG's CUDA/host hybrid decoder, whose Huffman
            stage runs on the DALI threads (``--workers``). Default 0.99, MLPerf's on DGX H100 (v2.1, v3.1: 6 DALI
            threads a GPU, with a 12 GiB decoded-image cache); DALI's default is 0.65 and DLE leaves it there
            (MLPerf v2.0's DGX A100 config: 0). 0.99 because this project's GPU machines are H100 / H200 with 16 host
            cores: the hardware decoder frees those cores, which the hybrid path keeps busy. Unmeasured here (no
            GPU): the first GPU run should compare it with 0.65.
        device_memory_padding: bytes of nvJPEG's device buffer, preallocated per DALI thread (train decoder), so no
            ImageNet image makes it reallocate. Default 211025920 (201.25 MiB), DLE's (MLPerf: 256 MiB; DALI: 16 MiB).
        host_memory_padding: bytes of each of nvJPEG's two pinned host buffers per DALI thread (train decoder).
            Default 140544512 (134 MiB), DLE's (MLPerf: 256 MiB; DALI: 8 MiB). DLE sets both paddings on the train
            decoder only (its val decoder keeps DALI's), and so does this backend: with ``--workers 16`` they hold
            about 3.1 GiB of device memory and 4.2 GiB of pinned host memory.
        preallocate_width_hint: image width (px) the hardware decoder preallocates for; 0 = none. Default 0, DLE's
            and DALI's (MLPerf: 5980, ImageNet's widest image; it costs device memory up front).
        preallocate_height_hint: likewise the height; 0 = none (MLPerf: 6430).
        labels_on_device: the labels leave DALI on the GPU (``labels.gpu()`` in the graph, cast there to int64, as
            DALI's own PyTorch ResNet50 example does), so no host → device copy per step; off: DALI's host labels
            copied to the device (DLE's ``.cuda().long()``). Default on. The CPU pipeline keeps them on the host.
        output: what DALI emits (:class:`DaliOutput`). Default ``float32``, DLE's.

    Raises ValueError (one line, naming the flag) for a value out of range.
    """

    hw_decoder_load: float = 0.99
    device_memory_padding: int = 211025920
    host_memory_padding: int = 140544512
    preallocate_width_hint: int = 0
    preallocate_height_hint: int = 0
    labels_on_device: bool = True
    output: DaliOutput = DaliOutput.FLOAT32

    def __post_init__(self) -> None:
        load = self.hw_decoder_load
        if isinstance(load, bool) or not isinstance(load, (int, float)) or not (math.isfinite(load)
                                                                               and 0 <= load <= 1):
            raise ValueError(f"--dali-hw-decoder-load must be in [0, 1], got {load!r}")
        for flag, value in (("--dali-device-memory-padding", self.device_memory_padding),
                            ("--dali-host-memory-padding", self.host_memory_padding),
                            ("--dali-preallocate-width-hint", self.preallocate_width_hint),
                            ("--dali-preallocate-height-hint", self.preallocate_height_hint)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{flag} must be an integer >= 0, got {value!r}")
        if self.output not in set(DaliOutput):
            raise ValueError(f"--dali-output must be {', '.join(o.value for o in DaliOutput)}, got {self.output!r}")
        object.__setattr__(self, "output", DaliOutput(self.output))  # "uint8" -> the member
        object.__setattr__(self, "hw_decoder_load", float(load))


__all__ = ["DaliConfig", "DaliOutput"]
