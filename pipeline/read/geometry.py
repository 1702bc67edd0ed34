"""Crop geometry, in the source image's pixels: torchvision's RandomResizedCrop box
(:func:`random_resized_crop_box`, :data:`RRC_SCALE`, :data:`RRC_RATIO`), its eval Resize + CenterCrop
(:func:`eval_resize_size`, :func:`center_crop_geometry`, :func:`center_crop_box`, :data:`CROP_PCT`), the DCT-domain
reduction a crop allows (:func:`dct_reduction`, :data:`VAL_DCT_MARGIN`), the exact resampling of a fractional box
(:func:`resize_box_exact`) and the crop sides a run may ask for (:data:`IMAGE_SIZE_RANGE`).

Every backend draws and cuts its crops with these, so cpu, nvjpeg, folder and dali agree on the geometry.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

# torchvision.transforms.RandomResizedCrop defaults (Szegedy et al. 2015, "Going deeper with convolutions").
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# Eval resize ratio: the standard 224/256 (torchvision reference scripts, timm's DEFAULT_CROP_PCT); defined
# only here (LoaderConfig.crop_pct defaults to it).
CROP_PCT = 0.875
# The crop sides (px) a run may ask for (--image-size, --eval-size, --min-train-size), both ends included: 8 is the
# smallest ResNet50 input that keeps a pixel after its 32x downsampling; 2048 is 4x ImageNet's typical image side and
# already 12 MiB per uint8 image (3 GiB for a batch of 256 in shared memory): larger asks fail deep inside a worker.
IMAGE_SIZE_RANGE = (8, 2048)
# Val decodes at 1/k scale in the DCT domain only when the crop keeps at least this many times the output's
# resolution there: DCT scaling is not the antialiased bilinear filter, and with margin 1 (train's) it moves the
# val pixels 1.9/255 from torchvision's at 97 px, 2.7/255 at 64 px; with 3, 0.01 and 0.07 (800 real samples).
VAL_DCT_MARGIN = 3.0




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


def eval_resize_size(size: int, crop_pct: float = CROP_PCT) -> int:
    """Shorter side of the eval Resize: ``floor(size / crop_pct)``, as timm's ``transforms_imagenet_eval``
    (256 for 224 px at 0.875, the ``resize_size`` torchvision's reference scripts pass; 110 for 97 px, where
    ``round`` would give 111). Every backend uses this one value."""
    return math.floor(size / crop_pct)


def center_crop_geometry(width: int, height: int, size: int,
                         crop_pct: float = CROP_PCT) -> tuple[int, int, int, int]:
    """torchvision's ``Resize(eval_resize_size(size, crop_pct))`` then ``CenterCrop(size)`` on a ``width×height``
    image, as ``(resized_w, resized_h, left, top)``: the resized size and the crop's corner in it.

    Semantics (torchvision 0.29, ``transforms.functional.resize`` with an int and ``center_crop``): the shorter
    side becomes ``s = eval_resize_size(size, crop_pct)`` and the longer ``int(s * long / short)`` (truncated;
    computed here exactly in integers, ``s * long // short``); then ``left = int(round((resized_w - size) / 2))``,
    ``top`` likewise, with Python's ``round`` (half to even: an odd margin of 117 gives 58, of 111 gives 56).
    """
    short = eval_resize_size(size, crop_pct)
    if width <= height:
        new_w, new_h = short, short * height // width
    else:
        new_w, new_h = short * width // height, short
    return new_w, new_h, int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))


def center_crop_box(width: int, height: int, size: int, crop_pct: float = CROP_PCT) -> tuple[float, float, float, float]:
    """The region ``(left, top, crop_w, crop_h)`` of the ``width×height`` source image (fractional pixels) that
    :func:`center_crop_geometry`'s ``size×size`` crop covers: the resize scales x by ``resized_w / width`` and
    y by ``resized_h / height`` (not quite equal, the long side being truncated), so the region is
    ``(left * width / resized_w, top * height / resized_h, size * width / resized_w, size * height / resized_h)``.
    Resampling exactly this region to ``size×size`` (PIL's ``resize(box=...)``, or :func:`resize_box_exact`)
    gives torchvision's pixels; rounding its edges to whole pixels moves them by up to half a source pixel.
    """
    new_w, new_h, left, top = center_crop_geometry(width, height, size, crop_pct)
    fx, fy = width / new_w, height / new_h
    return left * fx, top * fy, size * fx, size * fy


def dct_reduction(crop_w: float, crop_h: float, size: int, margin: float = 1.0) -> int:
    """Largest DCT-domain reduction (1, 2, 4 or 8) that keeps the crop at least ``margin * size`` pixels on each
    side (train: ``margin`` 1; val: :data:`VAL_DCT_MARGIN`).

    Only powers of two: libjpeg-turbo's SIMD IDCTs cover 1/1, 1/2, 1/4 and 1/8; other M/8 scales run in
    plain C and decode slower than the full image (measured here, libjpeg-turbo 3 in simplejpeg's wheel).
    """
    reduce = min(crop_w, crop_h) / (size * margin)
    for k in (8, 4, 2):
        if reduce >= k:
            return k
    return 1




def resize_box_exact(images: torch.Tensor, box: tuple[float, float, float, float], size: int) -> torch.Tensor:
    """Resample the region ``box`` (left, top, width, height; fractional pixels) of ``N×C×H×W`` ``images`` to
    ``size × size`` without rounding its edges: resize the whole images so that the box becomes ``size×size`` (to
    ``round(H * size / height) × round(W * size / width)``, antialiased bilinear: PIL's BILINEAR, and torch's
    uint8 SIMD kernel for a channels-last uint8 CPU tensor), then cut it out at ``(round(left * size / width),
    round(top * size / height))``. With :func:`center_crop_box`'s box (in the coordinates of a full or DCT-scaled
    decode) that is torchvision's Resize then CenterCrop. Any device; uint8 or float (float stays unrounded).
    Returns an ``N×C×size×size`` view."""
    h, w = images.shape[-2:]
    sx, sy = size / box[2], size / box[3]
    new_w, new_h = max(size, round(w * sx)), max(size, round(h * sy))
    left = min(max(0, round(box[0] * sx)), new_w - size)
    top = min(max(0, round(box[1] * sy)), new_h - size)
    if (new_h, new_w) != (h, w):
        images = F.interpolate(images, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    return images[..., top:top + size, left:left + size]
