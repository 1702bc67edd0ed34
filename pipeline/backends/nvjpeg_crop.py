"""The ``nvjpeg`` backend's crop, resize and flip: a batch of decoded images → its ``N×S×S×3`` float32 crops, in a
few calls per batch on the device instead of a few kernels per image.

Why not one call per (H, W) group: ILSVRC's images are not of few sizes. Over the 800 shared ImageNet samples,
330 distinct (H, W); a random batch of 256 holds 112-141 of them (20 draws), so one call per group would still
be ~125 calls, each with its own set-up kernels. Instead:

* **train** (:func:`train_crops`): each crop BOX (not its whole image: the weights are zero outside the box, and
  :func:`aa_taps` clips the filter to it, so no pixel outside it is read) is cut into an uninitialised uint8
  canvas of its size bucket (the box's h and w rounded up to :data:`BUCKET` px; 13-19 buckets per batch of 256,
  mean 15.4, over 20 draws of the 800 shared ImageNet samples at 224 px), laid out ``Hc×3×Wc``; per bucket, two
  batched matmuls apply per-crop weight matrices ``Wy`` (``S×Hc``) and ``Wx`` (``S×Wc``), relative to the box's
  origin: ``out_k = Wy_k · X_k · Wx_kᵀ`` per channel. The weights (:func:`aa_taps`, made for the whole batch at
  once, then scattered per bucket by :func:`dense`) are those of torch's antialiased bilinear resize
  (``F.interpolate(bilinear, antialias=True, align_corners=False)``, PIL's BILINEAR: a triangle of half-width
  max(1, scale), clipped to the crop, normalised) of the crop alone, zero in the padding; so the result is the
  per-image path's (``F.interpolate`` of the cut-out crop) up to float summation order: measured on CPU, max
  |diff| 9e-5 (0..255) on 20 real ImageNet crops at 224 px, the rounded uint8 values equal but for rare ±1 at a
  .5 (15 in a million values). Where TF32 matmuls are on (``--tf32``), the matmul inputs are rounded to 10-bit
  mantissas: errors up to a few tenths of a grey level, far below the JPEG's own noise, on augmented train
  crops only. The flip is folded into ``Wx`` (the centres of its rows reversed), not a pass of its own.

  **Memory bound.** A bucket is resampled in chunks (:func:`_chunks`) whose :func:`pass_bytes` (per crop: the
  canvas as uint8 and float32, ``Wy``, ``Wx``, the first matmul's ``S×3×Wc`` and the crop, twice) sum to at most
  :data:`PASS_BYTES` (256 MiB); a crop whose own pass is larger goes alone; each chunk's intermediates are freed
  before the next. Peak device memory of a call, beside the decoded images and ``out``: max(PASS_BYTES, the
  largest crop's ``pass_bytes``) plus the batch's taps, ``12·N·S·(Ty+Tx)`` bytes kept (``T`` =
  :func:`num_taps`; ~21·N·S·T more while one axis's are made). For 256 crops of 4000×3000 photos at 224 px:
  ≤ 256 MiB of passes (a whole-image crop alone: 198 MiB) + 48 MB of taps, where canvases of whole images took
  ~49 GiB; 2.1 TFLOP per batch instead of 4.65, in 120-137 buckets, 167-173 passes (3 draws).

  Per batch of 256 ImageNet images: two small pinned host→device copies (boxes, slots), ~25 kernels of weights,
  per crop one canvas copy (``copy_`` of a strided view), per pass ~7 kernels (two matrices, the uint8→float32
  canvas, two ``bmm``, one ``index_copy_``), 14-20 passes (mean 17.1; a few large buckets split at 256 MiB):
  ~500 non-view aten ops (counted on CPU) where whole-image canvases ran ~550 and the per-image path ~900 (val
  ~460 vs ~775). Device cost: ``2·K·3·S·Hc·Wc`` FLOPs per bucket, ~68 GFLOP per batch (whole-image canvases:
  ~118; a few ms of an H100 in fp32, less in TF32; not yet measured on a GPU).
  ``torchvision.ops.roi_align`` (one call per bucket, ``sampling_ratio`` adaptive, ``aligned``) was measured
  as the alternative: it averages ``ceil(crop/S)²`` bilinear point samples per output pixel, a box filter
  instead of the triangle: mean |diff| 0.48 / 255 (max 37) from ``F.interpolate(antialias=True)`` on the same
  20 crops, against 0.00 (max 1) for the matmuls: not taken.
* **val** (:func:`val_crops`): torchvision's Resize + CenterCrop exactly, as before: the box depends only on
  (H, W), so equal-size images are stacked and :func:`~pipeline.read.transforms.resize_box_exact` runs once per
  group on the same values as the per-image call (identical pixels; ~115 groups per batch of 256, one
  resize each instead of one per image).

Inputs: decoded ``3×H×W`` uint8 images on the device (upright), with the boxes the caller drew (train:
:func:`~pipeline.read.transforms.random_resized_crop_box` then the flip, image by image in batch order, the
per-image path's order of rng draws). Output: rows of the caller's ``N×S×S×3`` float32 buffer, 0..255, not
rounded. Runs on the thread that makes the batch (the prefetcher's producer), on its current stream.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from pipeline.backends.staging import to_device_pinned
from pipeline.read.transforms import center_crop_box, resize_box_exact

# Canvas granularity (px) of the train buckets (crop boxes' h and w rounded up to it): zero-weight padding of at
# most 127 px a side, and 13-19 buckets per ImageNet batch of 256 at 224 px (module docstring).
BUCKET = 128

# Most device bytes one bucket pass of :func:`train_crops` may hold (:func:`pass_bytes` summed over its crops): a
# bucket with more is resampled in chunks, one after the other. 256 MiB: a batch of 256 ImageNet crops at 224 px
# splits 1-2 of its 13-19 buckets, and a pass stays small beside ResNet50's training memory (module docstring).
PASS_BYTES = 256 << 20


class TrainCrop(NamedTuple):
    """One decoded train image and what the rng drew for it.

    Attributes:
        slot: its row in the batch.
        image: ``3×H×W`` uint8, upright, on the device.
        box: ``(left, top, width, height)`` in whole pixels of ``image`` (inside it, each side >= 1).
        flip: mirror the crop left-right.
    """

    slot: int
    image: torch.Tensor
    box: tuple[int, int, int, int]
    flip: bool


class Taps(NamedTuple):
    """Compact resampling weights of ``K`` crops along one axis: output ``i`` of crop ``k`` is
    ``Σ_t weight[k, i, t] · axis[index[k, i, t]]``.

    Attributes:
        index: ``K×S×T`` int64, positions on the axis (canvas pixels; distinct along ``t``).
        weight: ``K×S×T`` float32, summing to 1 over ``t``; zero for taps outside the crop or the filter.
    """

    index: torch.Tensor
    weight: torch.Tensor


def aa_taps(start: torch.Tensor, length: torch.Tensor, flip: torch.Tensor | None, size: int, taps: int) -> Taps:
    """The weights of torch's antialiased bilinear resize of ``K`` 1-D crops to ``size`` samples, ``taps`` per
    output sample (at least ``ceil(2 · max(1, length / size)) + 2``, the filter's window plus a spare).

    Args:
        start, length: ``K`` float32 (whole values): crop ``k`` covers ``[start, start + length)`` of the axis.
        flip: ``K`` bool (output reversed) or None.
    Returns:
        :class:`Taps`: along this axis, ``F.interpolate(crop, size, mode="bilinear", antialias=True,
        align_corners=False)`` of each crop alone. Follows ATen's ``_compute_indices_min_size_weights_aa``:
        scale = length / size, centre = scale·(i + 0.5), support = max(scale, 1), weight of crop pixel ``j`` =
        max(0, 1 - |(j - centre + 0.5) / support|) over ``j`` in the crop, normalised.
    """
    dev = start.device
    scale = length / size
    support = scale.clamp(min=1.0)
    center = scale[:, None] * (torch.arange(size, device=dev, dtype=torch.float32) + 0.5)  # K×S
    if flip is not None:
        center = torch.where(flip[:, None], center.flip(1), center)
    first = (center - support[:, None]).add_(0.5).floor_().sub_(1.0).clamp_(min=0.0)  # one spare tap before
    j = first[:, :, None] + torch.arange(taps, device=dev, dtype=torch.float32)  # K×S×T, crop-relative
    w = (j - center[:, :, None]).add_(0.5).div_(support[:, None, None]).abs_().neg_().add_(1.0).clamp_(min=0.0)
    w.mul_(j < length[:, None, None])
    return Taps((j + start[:, None, None]).to(torch.int64), w.div_(w.sum(-1, keepdim=True)))


def dense(taps: Taps, extent: int) -> torch.Tensor:
    """:class:`Taps` → ``K×S×extent`` float32 weight matrices (a view of a slightly wider zero matrix into which
    the taps are scattered, so taps past ``extent``, all of weight 0, land outside the view)."""
    k, s, t = taps.index.shape
    out = torch.zeros((k, s, extent + t + 1), dtype=torch.float32, device=taps.weight.device)
    out.scatter_(2, taps.index.clamp(max=extent + t), taps.weight)  # clamp: only for slots that never matter
    return out[..., :extent]


def num_taps(lengths: list[int], size: int) -> int:
    """Taps per output sample that cover the filter of every crop of ``lengths`` (:func:`aa_taps`)."""
    return 2 * -(-max(max(lengths), size) // size) + 3


def resample(canvas: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor) -> torch.Tensor:
    """``canvas`` ``K×Hc×3×Wc`` float32, ``wy`` ``K×S×Hc``, ``wx`` ``K×S×Wc`` → ``K×S×3×S`` (y, channel, x):
    ``Wy · X_c · Wxᵀ`` per image and channel, as two batched matmuls (no broadcast copies)."""
    k, hc, _, wc = canvas.shape
    s = wy.shape[1]
    rows = torch.bmm(wy, canvas.view(k, hc, 3 * wc))  # K×S×3Wc
    return torch.bmm(rows.view(k, s * 3, wc), wx.transpose(1, 2)).view(k, s, 3, s)


def _bucket(height: int, width: int) -> tuple[int, int]:
    """The canvas (height, width) of a ``height×width`` crop box: each rounded up to :data:`BUCKET`."""
    return -(-height // BUCKET) * BUCKET, -(-width // BUCKET) * BUCKET


def pass_bytes(canvas: tuple[int, int], size: int, taps: tuple[int, int]) -> int:
    """Device bytes one crop holds during its bucket pass in :func:`train_crops`, an upper bound: the ``3×Hc×Wc``
    canvas as uint8 and float32, the dense ``Wy``/``Wx`` (``S×(Hc+Ty+1)``, ``S×(Wc+Tx+1)`` float32, :func:`dense`),
    the first matmul's ``S×3×Wc`` and the ``S×3×S`` crop, twice (float32; a possible contiguous copy in
    ``index_copy_``). ``canvas`` = (Hc, Wc) in px, ``taps`` = (Ty, Tx) per output sample."""
    (hc, wc), (ty, tx) = canvas, taps
    return 5 * 3 * hc * wc + 4 * size * (hc + ty + 1 + wc + tx + 1) + 4 * 3 * size * (wc + 2 * size)


def _chunks(keys: list[tuple[int, int]], size: int, taps: tuple[int, int]) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges of the sorted ``keys``: each run of one bucket, cut so that a range's
    :func:`pass_bytes` total is at most :data:`PASS_BYTES` (a crop that alone is larger gets a range of its own)."""
    ranges, lo = [], 0
    while lo < len(keys):
        end = lo + keys[lo:].count(keys[lo])
        step = max(1, PASS_BYTES // pass_bytes(keys[lo], size, taps))
        ranges += [(a, min(a + step, end)) for a in range(lo, end, step)]
        lo = end
    return ranges


def _resample_chunk(jobs: list[TrainCrop], canvas_hw: tuple[int, int], ys: Taps, xs: Taps) -> torch.Tensor:
    """The ``K×S×3×S`` float32 crops of ``jobs`` (one bucket, canvas ``canvas_hw``), with their crop-relative
    ``ys`` / ``xs`` taps: each crop box cut into one uint8 canvas, then :func:`resample`. Intermediates are
    released as soon as they are used, so the pass holds at most :func:`pass_bytes` per crop."""
    hc, wc = canvas_hw
    canvas = torch.empty((len(jobs), hc, 3, wc), dtype=torch.uint8, device=ys.weight.device)
    for k, job in enumerate(jobs):
        left, top, w, h = job.box
        canvas[k, :h, :, :w].copy_(job.image[:, top:top + h, left:left + w].permute(1, 0, 2))
    x = canvas.float()  # padding is finite (uint8) and weighted 0
    del canvas
    return resample(x, dense(ys, hc), dense(xs, wc))


def train_crops(jobs: list[TrainCrop], out: torch.Tensor) -> None:
    """Crop, resize and flip ``jobs`` into their rows of ``out`` (``N×S×S×3`` float32 on the device): the taps of
    every crop in one pass per axis (:func:`aa_taps`, relative to the crop's origin), then per size bucket of the
    crop boxes, in chunks of at most :data:`PASS_BYTES`, one canvas, two weight matrices and :func:`resample`
    (see the module docstring). Only the boxes' pixels are read."""
    if not jobs:
        return
    size, device = out.shape[1], out.device
    keys = [_bucket(job.box[3], job.box[2]) for job in jobs]
    order = sorted(range(len(jobs)), key=keys.__getitem__)  # stable: a bucket's jobs keep their batch order
    jobs, keys = [jobs[i] for i in order], [keys[i] for i in order]
    params = torch.tensor([[job.box[2], job.box[3], float(job.flip)] for job in jobs], dtype=torch.float32)
    slots = torch.tensor([job.slot for job in jobs], dtype=torch.int64)
    params, slots = to_device_pinned(params, device), to_device_pinned(slots, device)  # w, h, flip
    taps = (num_taps([job.box[3] for job in jobs], size), num_taps([job.box[2] for job in jobs], size))
    origin = torch.zeros_like(params[:, 0])
    ys = aa_taps(origin, params[:, 1], None, size, taps[0])
    xs = aa_taps(origin, params[:, 0], params[:, 2] > 0.5, size, taps[1])
    for lo, hi in _chunks(keys, size, taps):
        crops = _resample_chunk(jobs[lo:hi], keys[lo], Taps(ys.index[lo:hi], ys.weight[lo:hi]),
                                Taps(xs.index[lo:hi], xs.weight[lo:hi]))
        out.index_copy_(0, slots[lo:hi], crops.permute(0, 1, 3, 2))
        del crops  # freed before the next chunk's canvas is made


def val_crops(images: list[tuple[int, torch.Tensor]], out: torch.Tensor, crop_pct: float) -> None:
    """torchvision's Resize(floor(S / crop_pct)) + CenterCrop(S) of ``(slot, 3×H×W uint8 image)`` pairs into
    their rows of ``out`` (``N×S×S×3`` float32 on the device): one :func:`resize_box_exact` per distinct (H, W)
    on the stacked group, the per-image call's exact arithmetic."""
    size, device = out.shape[1], out.device
    groups: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
    for slot, image in images:
        groups.setdefault(tuple(image.shape[-2:]), []).append((slot, image))
    order = [slot for members in groups.values() for slot, _ in members]
    slots = to_device_pinned(torch.tensor(order, dtype=torch.int64), device)
    lo = 0
    for (h, w), members in groups.items():
        stack = torch.stack([image for _, image in members]).float()
        crops = resize_box_exact(stack, center_crop_box(w, h, size, crop_pct), size)  # K×3×S×S
        out.index_copy_(0, slots[lo:lo + len(members)], crops.permute(0, 2, 3, 1))
        lo += len(members)


__all__ = ["BUCKET", "PASS_BYTES", "Taps", "TrainCrop", "aa_taps", "dense", "num_taps", "pass_bytes", "resample",
           "train_crops", "val_crops"]
