"""EXIF orientation, read and applied: :func:`exif_orientation` walks a JPEG's marker segments to its APP1 ``Exif``
block (no decode), :func:`pil_orientation` reads it for any image PIL opened; :func:`upright_size`,
:func:`upright_hwc` (numpy ``H×W×C``), :func:`upright_chw` (torch ``C×H×W``, any device) and :func:`upright_pil`
turn a picture upright as PIL's ``ImageOps.exif_transpose`` does.

Every backend (cpu, nvjpeg, folder, dali) applies the orientation these return, so all agree; the sharder writes
upright images without EXIF, so for its shards the walk is a handful of byte comparisons.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
import torch
from PIL import Image

from pipeline.jpeg import marker_segments


# EXIF orientation (tag 0x0112) → the PIL transpose that makes the image upright (PIL's ImageOps.exif_transpose,
# the EXIF 2.3 table: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse,
# 8 rotate 90 counter-clockwise). 5..8 swap width and height.
_ORIENTATION_TRANSPOSE = MappingProxyType({
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90})


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
    for marker, start, end in marker_segments(data):
        if marker == 0xE1 and bytes(data[start:start + 6]) == b"Exif\0\0":
            return _tiff_orientation(bytes(data[start + 6:end]))
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
