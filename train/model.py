"""ResNet50 v1.5 (torchvision's ``resnet50``: stride 2 in the 3×3 conv of each downsampling block)."""

from __future__ import annotations

import torch
import torchvision


def build_resnet50(num_classes: int, device: torch.device) -> torch.nn.Module:
    """Randomly initialised torchvision ResNet50 with ``num_classes`` outputs, on ``device``, channels-last.

    Input: ``N×3×H×W`` float (channels-last strides); output: ``N×num_classes`` logits.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    return model.to(device=device, memory_format=torch.channels_last)
