"""CPU decode + geometry for one JPEG: RandomResizedCrop + flip (train), Resize + CenterCrop (val).

Both pick the crop box in the source image's coordinates, let libjpeg-turbo decode at 1/2, 1/4 or 1/8 scale
(DCT-domain downscaling) whenever the crop still has at least the output's resolution at that scale (val: three
times it), and resample with antialiased bilinear filtering (as PIL's BILINEAR and torchvision's Resize on PIL
images). Train resizes only the crop, its box rounded to whole pixels (torchvision's RandomResizedCrop box is
whole pixels too); val keeps torchvision's exact geometry (:func:`center_crop_geometry`) by resizing the whole
image and cutting the crop out.

Decoders: for a train crop at full scale, nvImageCodec's libjpeg-turbo region-of-interest decode (only the crop's
pixels; no GPU needed; chosen by measurement, see ``benchmarks/bench_decode_crop.py``), else simplejpeg (libjpeg-turbo 3,
no PIL object on the way) for RGB / grayscale JPEGs; torch's uint8 SIMD resize, written straight into the
caller's batch slot (``out=``), the flip done in the slot; PIL for everything else (CMYK JPEGs, PNG, files libjpeg calls corrupt but PIL tolerates) and when
simplejpeg is missing. pillow-simd, when installed (``make simd``), speeds the PIL path and the sharder.
Output: an ``H×W×3`` uint8 tensor (HWC, RGB), ``H == W == size``.

EXIF orientation is applied, as by every backend (cpu, nvjpeg, folder, dali): the picture is turned upright
(:func:`exif_orientation`, :func:`upright_hwc`) before the crop box is drawn in its coordinates. The sharder writes
upright images without EXIF, so only shards written by other tools pay for it (a header walk per image, and no
region decode for a rotated one).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import math
import os
import random
import time
from typing import Iterator

import numpy as np
import PIL
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.compat import aa_resize_reads_strided_uint8, cache, upsample_aa_out

try:  # libjpeg-turbo 3 with a light Python binding; the PIL path below covers its absence
    import simplejpeg
except ImportError:  # pragma: no cover - a dependency in pyproject; kept optional for odd platforms
    simplejpeg = None


@contextlib.contextmanager
def _quiet_fd(fd: int) -> Iterator[None]:
    """File descriptor ``fd`` writes to /dev/null inside the block (C libraries' prints too) and is restored
    after it; where it cannot be duplicated, nothing changes."""
    try:
        saved = os.dup(fd)
    except OSError:
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


# nvImageCodec ([fast] extra, a DALI dependency too): libjpeg-turbo region-of-interest decode on the CPU, no GPU
# needed. Its import loads every codec extension; without the CUDA codec libraries (nvJPEG, nvJPEG2000, nvTIFF,
# which a CPU machine lacks) each prints "Failed to load ..." and a red [ERROR] line straight to file descriptor 2,
# about GPU decoders this project never asks it for: stderr points at /dev/null during the import.
try:
    with _quiet_fd(2):
        from nvidia import nvimgcodec
except ImportError:  # without it train decodes the whole (DCT-scaled) image with simplejpeg
    nvimgcodec = None


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
# Region decode (nvImageCodec) time / full simplejpeg decode time ≈ a + b · crop area fraction + c · crop bottom
# edge fraction (rows above the box are still entropy-decoded; nvImageCodec's full decode is ~1.2x simplejpeg's):
# least-squares fit over 800 RandomResizedCrop 224 boxes on 400 of the shared ImageNet samples, one core. The
# region is decoded only where the fit says it pays (ratio < 1): 1.60 ms per image for the better of the two vs
# 1.71 always-region and 2.00 always-full in that fit's run.
ROI_COST = (0.24, 0.61, 0.49)
# Val decodes at 1/k scale in the DCT domain only when the crop keeps at least this many times the output's
# resolution there: DCT scaling is not the antialiased bilinear filter, and with margin 1 (train's) it moves the
# val pixels 1.9/255 from torchvision's at 97 px, 2.7/255 at 64 px; with 3, 0.01 and 0.07 (800 real samples).
VAL_DCT_MARGIN = 3.0


# EXIF orientation (tag 0x0112) → the PIL transpose that makes the image upright (PIL's ImageOps.exif_transpose,
# the EXIF 2.3 table: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse,
# 8 rotate 90 counter-clockwise). 5..8 swap width and height.
_ORIENTATION_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                          6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def exif_orientation(data) -> int:
    """The EXIF orientation (1..8) of a JPEG, read from its APP1 ``Exif`` segment without decoding anything; 1 when
    ``data`` is not a JPEG, has no EXIF block, no orientation tag, or a damaged one (never raises).

    Cheap: it walks the marker segments before the first scan (usually a few hundred bytes) and parses IFD0 only
    when an APP1 ``Exif`` segment is there; files the sharder wrote have none (it writes upright images without
    EXIF), so for them this is a handful of byte comparisons. ``data``: ``bytes`` or any bytes-like object (a
    ``memoryview`` of a uint8 array). Every backend applies the orientation this returns, so all agree.
    """
    try:
        return _exif_orientation(memoryview(data).cast("B"))
    except (ValueError, TypeError, IndexError):  # damaged EXIF must never cost the image
        return 1


def _exif_orientation(data: memoryview) -> int:
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return 1
    pos = 2
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return 1
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # standalone markers
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no EXIF before the image data
            return 1
        seg_len = (data[pos + 2] << 8) | data[pos + 3]
        if marker == 0xE1 and bytes(data[pos + 4:pos + 10]) == b"Exif\0\0":
            return _tiff_orientation(bytes(data[pos + 10:pos + 2 + seg_len]))
        pos += 2 + seg_len
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    """Orientation tag of IFD0 of an EXIF TIFF block (1 when absent or out of 1..8)."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    count = int.from_bytes(tiff[ifd:ifd + 2], order)
    for i in range(count):
        entry = tiff[ifd + 2 + 12 * i:ifd + 14 + 12 * i]
        if len(entry) < 12:
            return 1
        if int.from_bytes(entry[0:2], order) == 0x0112:
            value = int.from_bytes(entry[8:10], order)  # SHORT, left-justified in the value field
            return value if 1 <= value <= 8 else 1
    return 1


def upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """``(width, height)`` of an image stored ``width×height`` once its EXIF ``orientation`` is applied."""
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def upright_hwc(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """An ``H×W×C`` array turned upright by EXIF ``orientation`` (1..8; 1: returned as is), as PIL's
    ``ImageOps.exif_transpose``: a contiguous array, ``W×H×C`` for orientations 5..8."""
    if orientation == 1:
        return rgb
    if orientation in (5, 6, 7, 8):
        rgb = rgb.transpose(1, 0, 2)  # 5 (transpose); the others are it plus a flip
        if orientation == 6:
            rgb = rgb[:, ::-1]
        elif orientation == 7:
            rgb = rgb[::-1, ::-1]
        elif orientation == 8:
            rgb = rgb[::-1]
    elif orientation == 2:
        rgb = rgb[:, ::-1]
    elif orientation == 3:
        rgb = rgb[::-1, ::-1]
    elif orientation == 4:
        rgb = rgb[::-1]
    return np.ascontiguousarray(rgb)


def upright_chw(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """A ``C×H×W`` tensor (any device) turned upright by EXIF ``orientation``, as :func:`upright_hwc`."""
    if orientation == 1:
        return img
    if orientation in (5, 6, 7, 8):
        img = img.transpose(1, 2)
        flip = {5: (), 6: (2,), 7: (1, 2), 8: (1,)}[orientation]
    else:
        flip = {2: (2,), 3: (1, 2), 4: (1,)}[orientation]
    return img.flip(flip) if flip else img.contiguous()


def upright_pil(img: Image.Image, orientation: int) -> Image.Image:
    """A PIL image turned upright by EXIF ``orientation`` (1: returned as is)."""
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    return img if method is None else img.transpose(method)


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


def _reduction(crop_w: float, crop_h: float, size: int, margin: float = 1.0) -> int:
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


def _resize_crop(rgb: np.ndarray, box: tuple[float, float, float, float], size: int, out: torch.Tensor,
                 flip: bool = False) -> torch.Tensor:
    """Crop ``box`` (left, top, right, bottom; pixels of ``rgb``, rounded) out of an ``H×W×3`` uint8 array,
    resize it to ``size × size`` with antialiased bilinear filtering (torch's uint8 SIMD kernel, which follows
    PIL's BILINEAR resampling) straight into ``out`` (a contiguous ``size×size×3`` uint8 tensor, e.g. a slot
    of the batch) and, with ``flip``, mirror it left-right there. Returns ``out``."""
    h, w = rgb.shape[:2]
    left = min(max(0, int(round(box[0]))), w - 1)
    top = min(max(0, int(round(box[1]))), h - 1)
    right = max(left + 1, min(w, int(round(box[2]))))
    bottom = max(top + 1, min(h, int(round(box[3]))))
    crop = torch.from_numpy(rgb[top:bottom, left:right]).permute(2, 0, 1).unsqueeze(0)  # 1×3×h×w channels-last
    if not aa_resize_reads_strided_uint8():  # torch 2.0: its uint8 kernel misreads a strided view; copy the crop
        crop = crop.contiguous(memory_format=torch.channels_last)
    dst = out.permute(2, 0, 1).unsqueeze(0)  # the slot seen as 1×3×size×size channels-last: written in place
    kernel = upsample_aa_out()
    if crop.shape[-2:] == (size, size):
        dst.copy_(crop)
    elif kernel is not None:  # F.interpolate's kernel with an out= buffer: no intermediate tensor
        kernel(crop, (size, size), False, None, None, out=dst)
    else:  # a torch without that entry point: the same kernel through F.interpolate, then one copy
        dst.copy_(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    if flip:
        out.copy_(out.flip(1))
    return out


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


@cache
def _roi_decoder(pid: int):
    """This process's nvImageCodec CPU decoder (libjpeg-turbo, one thread: a DataLoader worker is one core);
    keyed by ``pid`` so that a forked worker makes its own instead of using its parent's threads."""
    decoder = nvimgcodec.Decoder(device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY, max_num_cpu_threads=1,
                                 backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.CPU_ONLY)])
    return decoder, nvimgcodec.DecodeParams(apply_exif_orientation=False)  # EXIF handled before (exif_orientation)




def _decode_roi(data: bytes, box: tuple[int, int, int, int]) -> np.ndarray | None:
    """Decode only ``box`` (left, top, width, height; whole pixels) of a JPEG at full scale with nvImageCodec's
    libjpeg-turbo backend (rows below the box are not decoded, columns outside it not inverse-transformed):
    a ``height×width×3`` uint8 RGB array, or None when nvImageCodec is missing or cannot decode the stream
    (it names the cause on stderr; the caller then decodes the whole image)."""
    if nvimgcodec is None:
        return None
    left, top, w, h = box
    decoder, params = _roi_decoder(os.getpid())
    region = nvimgcodec.Region(top, left, top + h, left + w)
    try:
        img = decoder.decode(nvimgcodec.CodeStream(data).get_sub_code_stream(region=region), params=params)
    except (RuntimeError, ValueError):  # a stream its parser rejects outright
        return None
    if img is None:
        return None
    rgb = np.asarray(img.cpu())
    return rgb if rgb.shape == (h, w, 3) else None


def region_pays(area: float, bottom: float, cost: tuple[float, float, float] = ROI_COST) -> bool:
    """Whether decoding only the crop (``area``: its fraction of the image's pixels; ``bottom``: its lower edge
    as a fraction of the height) is expected to be faster than the full decode (:data:`ROI_COST`)."""
    return cost[0] + cost[1] * area + cost[2] * bottom < 1.0


def _decode_turbo(data: bytes, size: int, box_fn, times: list[float] | None = None,
                  exact: bool = False, out: torch.Tensor | None = None, flip_fn=None,
                  roi_cost: tuple[float, float, float] = ROI_COST) -> torch.Tensor | None:
    """Fast path: libjpeg-turbo, reduced in the DCT domain (simplejpeg) when the crop allows it; train crops
    that need the full scale (95% of RandomResizedCrop boxes at 224 px on the 800 ImageNet samples) decode
    only their region (:func:`_decode_roi`, nvImageCodec) when nvImageCodec is installed and
    :func:`region_pays` (with ``roi_cost``; ``(0, 0, 0)``: always).

    ``exact`` (val): the box's fractional edges are kept (:func:`resize_box_exact`) and the DCT reduction needs
    :data:`VAL_DCT_MARGIN`; otherwise (train) the box is rounded to whole pixels and only it is resized, into
    ``out`` (a contiguous ``size×size×3`` uint8 tensor, allocated when None), mirrored when ``flip_fn()``
    (called once, after ``box_fn``: the order train's RNG draws them in) is true.
    Returns the ``size×size×3`` uint8 result (val: maybe a view), or None where the path does not apply (no
    simplejpeg, not a JPEG, CMYK/YCCK, a libjpeg error); the caller then uses PIL, which decodes everything
    PIL can.
    """
    if simplejpeg is None or data[:2] != b"\xff\xd8":
        return None
    t0 = time.perf_counter()
    try:
        stored_h, stored_w, colorspace, _ = simplejpeg.decode_jpeg_header(data)  # (h, w, colorspace, subsampling)
        if colorspace not in ("Gray", "YCbCr", "RGB"):
            return None
        orientation = exif_orientation(data)  # the box is drawn in the upright image's coordinates
        full_w, full_h = upright_size(stored_w, stored_h, orientation)
        left, top, cw, ch = box_fn(full_w, full_h)
        k = _reduction(cw, ch, size, VAL_DCT_MARGIN if exact else 1.0)
        roi = k == 1 and not exact and orientation == 1 and region_pays(cw * ch / (full_w * full_h),
                                                                        (top + ch) / full_h, roi_cost)
        rgb = _decode_roi(data, (left, top, cw, ch)) if roi else None
        if rgb is not None:
            left, top, full_w, full_h = 0, 0, cw, ch  # the decoded array is the box
        else:
            rgb = upright_hwc(simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=math.ceil(stored_w / k),
                                                     min_height=math.ceil(stored_h / k)), orientation)
    except ValueError:  # simplejpeg reports every libjpeg error (incl. recoverable ones) as ValueError
        return None
    t1 = time.perf_counter()
    fx, fy = full_w / rgb.shape[1], full_h / rgb.shape[0]
    if exact:
        chw = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)  # 1×3×H×W channels-last: the SIMD uint8 path
        result = resize_box_exact(chw, (left / fx, top / fy, cw / fx, ch / fy), size)[0].permute(1, 2, 0)
    else:
        slot = torch.empty((size, size, 3), dtype=torch.uint8) if out is None else out
        flip = flip_fn is not None and flip_fn()
        result = _resize_crop(rgb, (left / fx, top / fy, (left + cw) / fx, (top + ch) / fy), size, slot, flip)
    if times is not None:
        times[0] += t1 - t0
        times[1] += time.perf_counter() - t1
    return result


def _decode_pil(data: bytes, size: int, box_fn, times: list[float] | None = None,
                exact: bool = False, out: torch.Tensor | None = None, flip_fn=None) -> torch.Tensor:
    """PIL path (any format PIL reads; pillow-simd when installed): decode, reduced with ``draft`` when the
    crop allows it (``exact``: with :data:`VAL_DCT_MARGIN`), convert to RGB, resample the box (PIL keeps its
    fractional edges), mirror it when ``flip_fn()`` is true. Returns a ``size×size×3`` uint8 tensor: ``out``
    when given (filled), else a new one."""
    t0 = time.perf_counter()
    img = Image.open(io.BytesIO(data))
    orientation = pil_orientation(img, data)
    stored_w, stored_h = img.size
    full_w, full_h = upright_size(stored_w, stored_h, orientation)
    left, top, cw, ch = box_fn(full_w, full_h)
    if img.format == "JPEG":
        k = _reduction(cw, ch, size, VAL_DCT_MARGIN if exact else 1.0)
        if k > 1:
            img.draft("RGB", (math.ceil(stored_w / k), math.ceil(stored_h / k)))
    img.load()
    if img.mode != "RGB":
        img = img.convert("RGB")
    img = upright_pil(img, orientation)
    t1 = time.perf_counter()
    fx, fy = full_w / img.width, full_h / img.height
    box = (left / fx, top / fy, (left + cw) / fx, (top + ch) / fy)
    img = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if flip_fn is not None and flip_fn():
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if out is not None:
        out.numpy()[...] = np.asarray(img)
        result = out
    else:
        result = torch.from_numpy(np.array(img))
    if times is not None:
        times[0] += t1 - t0
        times[1] += time.perf_counter() - t1
    return result


def pil_orientation(img: Image.Image, data: bytes) -> int:
    """EXIF orientation (1..8) of the image PIL opened from ``data``: a JPEG's by :func:`exif_orientation` (what
    every backend reads), another format's (PNG, WebP, TIFF carry EXIF too) by PIL; 1 when absent or damaged."""
    if img.format == "JPEG":
        return exif_orientation(data)
    try:
        value = int(img.getexif().get(0x0112, 1))
    except Exception:  # damaged EXIF must never cost the image
        return 1
    return value if 1 <= value <= 8 else 1


def _decode_box(data: bytes, size: int, box_fn, times: list[float] | None, exact: bool = False,
                out: torch.Tensor | None = None, flip_fn=None) -> torch.Tensor:
    result = _decode_turbo(data, size, box_fn, times, exact, out, flip_fn)
    return result if result is not None else _decode_pil(data, size, box_fn, times, exact, out, flip_fn)


def decode_train(data: bytes, size: int, rng: random.Random, times: list[float] | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """JPEG bytes → RandomResizedCrop(size) + random horizontal flip (p=0.5) → ``size×size×3`` uint8 tensor,
    written into ``out`` when given (a contiguous ``size×size×3`` uint8 tensor, e.g. ``batch[i]``: the resize
    writes there directly, the flip is done in it) and returned. ``rng`` draws the box, then the flip.

    With ``times`` (``[decode_s, augment_s]``), the seconds spent decoding and cropping/resizing/flipping
    (into ``out``) are added to it.

    Raises:
        PIL.UnidentifiedImageError / OSError: the bytes do not decode.
    """
    return _decode_box(data, size, lambda w, h: random_resized_crop_box(w, h, rng), times, False, out,
                       lambda: rng.random() < 0.5)


def decode_val(data: bytes, size: int, crop_pct: float = CROP_PCT, times: list[float] | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """JPEG bytes → torchvision's ``Resize(eval_resize_size(size, crop_pct))`` + ``CenterCrop(size)`` →
    ``size×size×3`` uint8 tensor (maybe a view; copied into ``out`` and ``out`` returned when given, the copy
    counted as augment); geometry: :func:`center_crop_geometry`, in full-image coordinates whatever DCT scale
    the decode used. Measured on the 800 shared ImageNet samples: mean |diff| to torchvision on PIL images
    0.002/255 at 224 px (max 0.23, a large image decoded at 1/2 scale), 0.012 at 97 px, 0.07 at 64 px.

    ``times`` as in :func:`decode_train`.

    Raises:
        PIL.UnidentifiedImageError / OSError: the bytes do not decode.
    """
    result = _decode_box(data, size, lambda w, h: center_crop_box(w, h, size, crop_pct), times, exact=True)
    if out is None or result is out:
        return result
    t0 = time.perf_counter()
    out.copy_(result)
    if times is not None:
        times[1] += time.perf_counter() - t0
    return out


def decoder_name() -> str:
    """Which decoders this process uses, e.g. ``"nvimgcodec 0.9.0 (libjpeg-turbo region decode) + simplejpeg
    1.9.0 (libjpeg-turbo) + pillow-simd 12.1.1.post0"``."""
    pil = f"pillow-simd {PIL.__version__}" if is_pillow_simd() else f"pillow {PIL.__version__}"
    if simplejpeg is None:
        return f"{pil} (simplejpeg not installed)"
    roi = "" if nvimgcodec is None else f"nvimgcodec {nvimgcodec.__version__} (libjpeg-turbo region decode) + "
    return f"{roi}simplejpeg {simplejpeg.__version__} (libjpeg-turbo) + {pil}"


def region_decoder_has_wheel(python: tuple[int, int], system: str, machine: str) -> bool:
    """Whether pip has an nvImageCodec wheel (``nvidia-nvimgcodec-cu13``) for this interpreter and platform: the
    environment marker of that default dependency in pyproject.toml (Linux x86_64, Python 3.9+); ``system`` as
    ``platform.system()``, ``machine`` as ``platform.machine()``."""
    return python >= (3, 9) and system == "Linux" and machine in ("x86_64", "AMD64")


def decode_line() -> str:
    """The cpu backend's decoders in one start-up line (``train`` / ``io-bench`` print it), e.g. ``"decode:
    nvimgcodec 0.9.0 (libjpeg-turbo region decode) + simplejpeg 1.9.0 (libjpeg-turbo) + pillow 13.0.0"``; without
    nvImageCodec it says that train crops are decoded whole (the slower path) and what to do about it."""
    line = f"decode: {decoder_name()}"
    if nvimgcodec is not None or simplejpeg is None:
        return line
    import platform
    import sys

    if region_decoder_has_wheel(sys.version_info[:2], platform.system(), platform.machine()):
        why = "nvImageCodec not installed: `.venv/bin/pip install -e '.[fast]'` in the checkout adds it (nvidia-nvimgcodec-cu13)"
    else:
        why = (f"nvImageCodec has no wheel for Python {sys.version_info[0]}.{sys.version_info[1]} on "
               f"{platform.system()} {platform.machine()} (Linux x86_64, Python 3.9+ only)")
    return f"{line}; no region decode, train crops are decoded whole, DCT-scaled ({why})"


@cache
def is_pillow_simd() -> bool:
    """True when the ``PIL`` package this process imports is pillow-simd's (``make simd``), not stock Pillow's."""
    try:
        return importlib.metadata.distribution("pillow-simd").version == PIL.__version__
    except importlib.metadata.PackageNotFoundError:
        return False
