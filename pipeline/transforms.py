"""CPU decode + geometry for one JPEG: RandomResizedCrop + flip (train), Resize + CenterCrop (val).

Both crop in the source image's coordinates and resize only the crop (one PIL ``resize`` with a
``box``), and let libjpeg decode at 1/2, 1/4 or 1/8 scale (PIL ``draft``, DCT-domain downscaling)
whenever the crop still has at least the output's resolution at that scale.
Output: an ``H×W×3`` uint8 numpy array (HWC, RGB), ``H == W == size``.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
from PIL import Image

# torchvision.transforms.RandomResizedCrop defaults (Szegedy et al. 2015, "Going deeper with convolutions").
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# Eval resize ratio: the standard 224/256 (torchvision reference scripts, timm's DEFAULT_CROP_PCT).
CROP_PCT = 0.875


def random_resized_crop_box(width: int, height: int, rng: random.Random,
                            scale: tuple[float, float] = RRC_SCALE,
                            ratio: tuple[float, float] = RRC_RATIO) -> tuple[int, int, int, int]:
    """Sample a RandomResizedCrop box ``(left, top, crop_w, crop_h)`` in pixels.

    Same distribution as ``torchvision.transforms.RandomResizedCrop.get_params``: area uniform in
    ``scale`` × image area, log-uniform aspect ratio in ``ratio``, up to 10 tries, then a centre crop
    with the ratio clamped to ``ratio``. Randomness comes from ``rng`` (not torch's global RNG).
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def center_crop_box(width: int, height: int, size: int, crop_pct: float = CROP_PCT) -> tuple[float, float, float, float]:
    """Box ``(left, top, crop_w, crop_h)`` equal to Resize(round(size / crop_pct)) then CenterCrop(size).

    Resize scales the shorter side to ``round(size / crop_pct)`` (256 for 224); the centre ``size``
    square of that maps back to a square of side ``short * size / resized`` in the source.
    """
    resized_short = round(size / crop_pct)
    side = min(width, height) * size / resized_short
    return (width - side) / 2, (height - side) / 2, side, side


def _decode_box(data: bytes, size: int, box_fn) -> Image.Image:
    """Open ``data``, pick the crop box from the full-resolution size, decode (reduced when allowed),
    and resize the box to ``size × size`` RGB."""
    img = Image.open(io.BytesIO(data))
    full_w, full_h = img.size
    left, top, cw, ch = box_fn(full_w, full_h)
    if img.format == "JPEG":
        reduce = min(cw / size, ch / size)
        if reduce >= 2:
            img.draft("RGB", (math.ceil(full_w / reduce), math.ceil(full_h / reduce)))
    if img.mode != "RGB":
        img = img.convert("RGB")
    fx, fy = full_w / img.width, full_h / img.height
    box = (left / fx, top / fy, (left + cw) / fx, (top + ch) / fy)
    return img.resize((size, size), Image.Resampling.BILINEAR, box=box)


def decode_train(data: bytes, size: int, rng: random.Random) -> np.ndarray:
    """JPEG bytes → RandomResizedCrop(size) + random horizontal flip (p=0.5) → ``size×size×3`` uint8.

    Raises:
        PIL.UnidentifiedImageError / OSError: the bytes do not decode.
    """
    out = _decode_box(data, size, lambda w, h: random_resized_crop_box(w, h, rng))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out, dtype=np.uint8)


def decode_val(data: bytes, size: int, crop_pct: float = CROP_PCT) -> np.ndarray:
    """JPEG bytes → Resize(round(size/crop_pct)) + CenterCrop(size) → ``size×size×3`` uint8.

    Raises:
        PIL.UnidentifiedImageError / OSError: the bytes do not decode.
    """
    return np.asarray(_decode_box(data, size, lambda w, h: center_crop_box(w, h, size, crop_pct)), dtype=np.uint8)
