"""ResNet50 v1.5 (torchvision's ``resnet50``: stride 2 in the 3×3 conv of each downsampling block)."""

from __future__ import annotations

import torch
import torchvision


def build_resnet50(num_classes: int, device: torch.device, zero_init_residual: bool = True,
                   dtype: torch.dtype = torch.float32, channels_last: bool = True) -> torch.nn.Module:
    """Randomly initialised torchvision ResNet50 with ``num_classes`` outputs, on ``device``, channels-last
    (``channels_last=False``: the default NCHW layout, for comparison).

    ``zero_init_residual`` zero-initialises the last BN gamma of each bottleneck (Goyal et al. 2017, §5.1), so
    every residual block starts as the identity. Input: ``N×3×H×W`` ``dtype`` (channels-last strides); output:
    ``N×num_classes`` logits.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual)
    return model.to(device=device, dtype=dtype,
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format)
