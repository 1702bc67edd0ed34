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
(:mod:`pipeline.read.orientation`) before the crop box is drawn in its coordinates (:mod:`pipeline.read.geometry`). The sharder writes
upright images without EXIF, so only shards written by other tools pay for it (a header walk per image, and no
region decode for a rotated one).

This module holds the decoders (:func:`decode_train`, :func:`decode_val`, their simplejpeg / nvImageCodec / PIL
paths, the resize into a batch slot) and what names them (:func:`decoder_name`, :func:`decode_line`). The crop
geometry (:mod:`pipeline.read.geometry`) and EXIF orientation (:mod:`pipeline.read.orientation`) live beside it and
their names are importable from here too.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import math
import os
import random
import time
from typing import Iterator, Protocol

import numpy as np
import PIL
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.compat import aa_resize_reads_strided_uint8, cache, upsample_aa_out
from pipeline.read.geometry import (CROP_PCT, IMAGE_SIZE_RANGE, RRC_RATIO, RRC_SCALE, VAL_DCT_MARGIN,  # noqa: F401
                                    center_crop_box, center_crop_geometry, dct_reduction, eval_resize_size,
                                    random_resized_crop_box, resize_box_exact)
from pipeline.read.orientation import (exif_orientation, pil_orientation, upright_chw, upright_hwc,  # noqa: F401
                                       upright_pil, upright_size)

try:  # libjpeg-turbo 3 with a light Python binding; the PIL path below covers its absence
    import simplejpeg
except ImportError:  # pragma: no cover - a dependency in pyproject; kept optional for odd platforms
    simplejpeg = None


class DecodeTimes(Protocol):
    """Where a decode function adds the seconds it spent (e.g. :class:`pipeline.backends.shards.StageTally`):
    ``decode`` (JPEG → RGB) and ``augment`` (crop, resize, flip, the copy into the batch slot)."""

    decode: float
    augment: float


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


# Region decode (nvImageCodec) time / full simplejpeg decode time ≈ a + b · crop area fraction + c · crop bottom
# edge fraction (rows above the box are still entropy-decoded; nvImageCodec's full decode is ~1.2x simplejpeg's):
# least-squares fit over 800 RandomResizedCrop 224 boxes on 400 of the shared ImageNet samples, one core. The
# region is decoded only where the fit says it pays (ratio < 1): 1.60 ms per image for the better of the two vs
# 1.71 always-region and 2.00 always-full in that fit's run.
ROI_COST = (0.24, 0.61, 0.49)


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


def _decode_turbo(data: bytes, size: int, box_fn, times: DecodeTimes | None = None,
                  exact: bool = False, out: torch.Tensor | None = None, flip_fn=None) -> torch.Tensor | None:
    """Fast path: libjpeg-turbo, reduced in the DCT domain (simplejpeg) when the crop allows it; train crops
    that need the full scale (95% of RandomResizedCrop boxes at 224 px on the 800 ImageNet samples) decode
    only their region (:func:`_decode_roi`, nvImageCodec) when nvImageCodec is installed and
    :func:`region_pays` (with this module's :data:`ROI_COST`, read at each call; ``(0, 0, 0)``: always).

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
        k = dct_reduction(cw, ch, size, VAL_DCT_MARGIN if exact else 1.0)
        roi = k == 1 and not exact and orientation == 1 and region_pays(cw * ch / (full_w * full_h),
                                                                        (top + ch) / full_h, ROI_COST)
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
        times.decode += t1 - t0
        times.augment += time.perf_counter() - t1
    return result


def _decode_pil(data: bytes, size: int, box_fn, times: DecodeTimes | None = None,
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
        k = dct_reduction(cw, ch, size, VAL_DCT_MARGIN if exact else 1.0)
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
        times.decode += t1 - t0
        times.augment += time.perf_counter() - t1
    return result


def _decode_box(data: bytes, size: int, box_fn, times: DecodeTimes | None, exact: bool = False,
                out: torch.Tensor | None = None, flip_fn=None) -> torch.Tensor:
    result = _decode_turbo(data, size, box_fn, times, exact, out, flip_fn)
    return result if result is not None else _decode_pil(data, size, box_fn, times, exact, out, flip_fn)


def decode_train(data: bytes, size: int, rng: random.Random, times: DecodeTimes | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """JPEG bytes → RandomResizedCrop(size) + random horizontal flip (p=0.5) → ``size×size×3`` uint8 tensor,
    written into ``out`` when given (a contiguous ``size×size×3`` uint8 tensor, e.g. ``batch[i]``: the resize
    writes there directly, the flip is done in it) and returned. ``rng`` draws the box, then the flip.

    With ``times`` (:class:`DecodeTimes`), the seconds spent decoding and cropping/resizing/flipping
    (into ``out``) are added to it.

    Raises:
        PIL.UnidentifiedImageError / OSError: the bytes do not decode.
    """
    return _decode_box(data, size, lambda w, h: random_resized_crop_box(w, h, rng), times, False, out,
                       lambda: rng.random() < 0.5)


def decode_val(data: bytes, size: int, crop_pct: float = CROP_PCT, times: DecodeTimes | None = None,
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
        times.augment += time.perf_counter() - t0
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
