"""Clean one image: turn the bytes of one input file into a clean RGB JPEG for a shard (reject it, pass it
through, or convert it), or say why it cannot be.

"Clean" means what every decoder in this project (PIL, nvJPEG through DALI, libjpeg-turbo) reads the
same way: a JPEG whose frame is baseline, extended-sequential or progressive Huffman (SOF0/1/2), whose
decoded mode is 3-channel RGB (YCbCr in the file), and whose EXIF orientation is absent or "normal".
Clean files are passed through byte for byte; everything else that decodes is converted to an RGB
JPEG; everything that does not decode is rejected with a reason.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageOps

from pipeline.dataset import RejectReason
from pipeline.jpeg import EOI, SOS, marker_segments

try:  # libjpeg-turbo without PIL's chunked decoder loop: the fast integrity check of pass-through JPEGs
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is a dependency; without it PIL does the check
    simplejpeg = None

# PIL's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS, 89.5 Mpx): larger images are downscaled to it.
DEFAULT_MAX_PIXELS = 89_478_485
# The smallest --max-size (longer side, px) and --max-pixels accepted: below them every image would be stored
# smaller than any train crop one would use (64 px, the smallest in this project's recipes); 1 stored every image
# as 1x1 without a word.
MIN_MAX_SIZE = 64
MIN_MAX_PIXELS = MIN_MAX_SIZE * MIN_MAX_SIZE


def check_limits(max_pixels: int, max_size: int | None) -> None:
    """Refuse downscale limits that would ruin every image (see :data:`MIN_MAX_SIZE`).

    Raises:
        ValueError: ``max_pixels`` below :data:`MIN_MAX_PIXELS` or ``max_size`` below :data:`MIN_MAX_SIZE`
            (one line naming the flag).
    """
    if max_size is not None and max_size < MIN_MAX_SIZE:
        raise ValueError(f"--max-size {max_size}: must be >= {MIN_MAX_SIZE} (px, the longer side kept); smaller would "
                         f"store every image below the smallest train crop")
    if max_pixels < MIN_MAX_PIXELS:
        raise ValueError(f"--max-pixels {max_pixels}: must be >= {MIN_MAX_PIXELS} ({MIN_MAX_SIZE}x{MIN_MAX_SIZE}); "
                         f"smaller would store every image below the smallest train crop")
DEFAULT_QUALITY = 95
_ORIENTATION_TAG = 0x0112
_PIXELS_PER_BYTE_MAX = 2048  # see the truncation check in _normalize
_MIN_BYTES_CHECK_PIXELS = 1 << 20
# JPEG start-of-frame markers whose Huffman-coded data all our decoders read (ITU T.81, table B.1).
_SOF_HUFFMAN = frozenset({0xC0, 0xC1, 0xC2})
_SOF_ALL = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_MODE_NAMES = MappingProxyType({"L": "grayscale", "LA": "grayscale+alpha", "CMYK": "cmyk", "P": "palette",
                                "RGBA": "rgba", "I;16": "16-bit grayscale", "I": "32-bit grayscale",
                                "F": "float grayscale", "1": "bilevel"})


class ImageRejected(Exception):
    """Raised by :func:`normalize_image` for input that cannot go into a shard.

    Attributes:
        reason: the :class:`RejectReason`.
        detail: one line saying what was wrong (PIL's message where there is one).
    """

    def __init__(self, reason: RejectReason, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # picklable across the sharder's worker processes
        return type(self), (self.reason, self.detail)


@dataclass(frozen=True)
class NormalizedImage:
    """A shard-ready image.

    Attributes:
        jpeg: JPEG bytes that decode to 3-channel RGB.
        width, height: pixel size of the decoded image (after any EXIF rotation).
        conversion: empty when the input bytes were passed through untouched; otherwise what was done,
            e.g. ``"png->jpeg"``, ``"cmyk->rgb"``, ``"grayscale->rgb"``, ``"exif-rotated"`` (joined by ``+``).
    """

    jpeg: bytes
    width: int
    height: int
    conversion: str = ""


@dataclass(frozen=True)
class JpegHeader:
    """What the marker segments before the first scan say.

    Attributes:
        frame: start-of-frame marker byte (0xC0 baseline, 0xC2 progressive, ...), None if absent.
        components: colour components in the frame (1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK), 0 if unknown.
        adobe_transform: the Adobe APP14 transform flag (0 none/CMYK, 1 YCbCr, 2 YCCK), None if no APP14.
        width, height: pixel size in the (first) frame header, 0 if unknown.
        frames: start-of-frame segments seen (more than one: a file PIL may read otherwise).
        app1: an APP1 segment is present (EXIF or XMP: where PIL finds an orientation).
        mpf: an APP2 "MPF" segment is present (PIL may open the file as a multi-picture MPO).
        complete: the segments parse cleanly up to the first start-of-scan marker.
    """

    frame: int | None = None
    components: int = 0
    adobe_transform: int | None = None
    width: int = 0
    height: int = 0
    frames: int = 0
    app1: bool = False
    mpf: bool = False
    complete: bool = False


def jpeg_header(data: bytes) -> JpegHeader:
    """Parse the marker segments of a JPEG from SOI to the first SOS (ITU T.81 annex B), decoding nothing."""
    frame, components, adobe = None, 0, None
    width = height = frames = 0
    app1 = mpf = complete = False
    for marker, start, end in marker_segments(data):
        seg = data[start:end]
        if marker in (SOS, EOI):  # the header is over (complete only when a scan starts)
            complete = marker == SOS
        elif marker in _SOF_ALL:
            frames += 1
            if frame is None:
                frame = marker
                components = seg[5] if len(seg) > 5 else 0
                if len(seg) > 5:
                    height, width = int.from_bytes(seg[1:3], "big"), int.from_bytes(seg[3:5], "big")
        elif marker == 0xEE and seg[:5] == b"Adobe" and len(seg) >= 12:
            adobe = seg[11]
        elif marker == 0xE1:
            app1 = True
        elif marker == 0xE2 and seg[:4] == b"MPF\0":
            mpf = True
    return JpegHeader(frame, components, adobe, width, height, frames, app1, mpf, complete)


def _orientation(img: Image.Image) -> int:
    """EXIF orientation (1..8) of an opened image; 1 when absent or when the EXIF block is corrupt."""
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:  # corrupt EXIF must never cost the image
        return 1


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels are composited over white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit integer or float grayscale: scale to 8 bits rather than clip (floats in 0..1 are
        # taken as normalised intensities, anything larger as 16-bit counts).
        arr = np.asarray(img, dtype=np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        scale = 255.0 if img.mode == "F" and peak <= 1.0 else (1.0 if peak <= 255 else 1 / 256)
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def _decode_limit(max_pixels: int) -> int:
    """Largest image (pixels) decoded in full before downscaling: 4 × the downscale threshold."""
    return 4 * max_pixels


def normalize_image(data: bytes, *, quality: int = DEFAULT_QUALITY, max_pixels: int = DEFAULT_MAX_PIXELS,
                    max_size: int | None = None) -> NormalizedImage:
    """Check one input file and return a clean RGB JPEG for it.

    Policy (documented in the README):

    * clean RGB Huffman JPEGs (baseline/extended/progressive, 3 components, not Adobe-RGB, EXIF orientation
      absent or 1), within ``max_pixels`` and ``max_size``, are passed through byte for byte;
    * everything else that decodes is converted: to RGB (grayscale, CMYK, YCCK, palette, alpha over white,
      16-bit), upright (EXIF orientation applied; EXIF is not copied), re-encoded as JPEG at ``quality``;
    * decompression bombs: an image over ``max_pixels`` is downscaled to fit it (JPEGs first by DCT-domain
      reduction, so memory stays small); a non-JPEG over 4 × ``max_pixels`` cannot be reduced while decoding
      and is rejected as too large;
    * ``max_size`` (longer side, px): larger images are downscaled to it (FFCV-style smaller shards);
    * zero-byte, unidentifiable, truncated or otherwise undecodable files are rejected.
    Corrupt EXIF blocks are ignored (orientation 1) without a warning per file.

    Args:
        data: the file's bytes.
        quality: JPEG quality (1..100) for re-encoded images.
        max_pixels: downscale threshold in pixels (default: PIL's decompression-bomb limit).
        max_size: optional limit of the longer side in pixels.

    Returns:
        A :class:`NormalizedImage`; ``conversion == ""`` means ``jpeg is data``.

    Raises:
        ImageRejected: zero-byte, unidentifiable, truncated/corrupt, or too-large input.
    """
    if not data:
        raise ImageRejected(RejectReason.EMPTY, "zero-byte file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EXIF / bomb warnings: we apply our own policy below
        saved_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # our own limits below replace PIL's bomb check
        try:
            return _normalize(data, quality, max_pixels, max_size)
        finally:
            Image.MAX_IMAGE_PIXELS = saved_limit


def _normalize(data: bytes, quality: int, max_pixels: int, max_size: int | None) -> NormalizedImage:
    fast = _clean_from_header(data, max_pixels, max_size)
    if fast is not None:
        return fast
    img = _open(data)
    width, height = img.size
    fmt = img.format or "unknown"
    mode = img.mode
    header = jpeg_header(data) if fmt == "JPEG" else JpegHeader()
    if fmt == "JPEG" and width * height > _MIN_BYTES_CHECK_PIXELS and len(data) < width * height / _PIXELS_PER_BYTE_MAX:
        # Every 8x8 luma block costs at least 2 bits (DC code + end-of-block), i.e. >= 1 byte per 256 px;
        # a file 8x below even that is truncated (libjpeg would pad the missing data with grey).
        raise ImageRejected(RejectReason.UNDECODABLE, f"truncated: {len(data)} bytes cannot hold a "
                                                      f"{width}x{height} JPEG")
    orientation = _orientation(img)
    scale, target = _target_size(width, height, max_pixels, max_size)
    huffman = fmt == "JPEG" and header.frame in _SOF_HUFFMAN
    adobe_rgb = header.components == 3 and header.adobe_transform == 0  # RGB stored without YCbCr transform
    passthrough = huffman and mode == "RGB" and not adobe_rgb and orientation == 1 and scale == 1.0
    if passthrough and decodes_cleanly(data):
        return NormalizedImage(jpeg=data, width=width, height=height)
    if passthrough:
        # Only the check is needed, not the pixels: decoding at 1/8 scale still entropy-decodes every
        # scan (so truncation and corrupt data raise) but skips most of the IDCT and colour work.
        img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
    elif scale < 1.0:
        _reduce_while_decoding(img, fmt, target, max_pixels)
    try:
        img.load()  # full decode: truncated or corrupt data raises here
    except Exception as exc:
        raise ImageRejected(RejectReason.UNDECODABLE, f"{type(exc).__name__}: {exc}") from None

    if passthrough:
        return NormalizedImage(jpeg=data, width=width, height=height)
    steps = _colour_steps(fmt, huffman, mode, header, adobe_rgb)
    return _convert(img, steps, orientation, scale, target, quality)


def _clean_from_header(data: bytes, max_pixels: int, max_size: int | None) -> NormalizedImage | None:
    """The pass-through of a clean JPEG decided without PIL, or None to leave the file to PIL's path.

    Only the common case is decided here: a single Huffman frame (SOF0/1/2) of 3 components in YCbCr (no Adobe
    transform 0), no APP1 segment (so neither EXIF nor XMP can carry an orientation: PIL reads it from those
    only), no MPF segment (PIL would open an MPO), within ``max_pixels`` / ``max_size`` and the truncation
    bound, that :func:`decodes_cleanly`. That is exactly the case where PIL's path (format JPEG, mode RGB,
    orientation 1, scale 1, a clean decode) passes the bytes through, so the verdict and the recorded size are
    the same; every other file, and every doubt, goes to PIL's path, which decides as before.
    """
    header = jpeg_header(data)
    if not (header.complete and header.frames == 1 and header.frame in _SOF_HUFFMAN and header.components == 3
            and header.adobe_transform != 0 and not header.app1 and not header.mpf
            and header.width >= 1 and header.height >= 1):
        return None
    pixels = header.width * header.height
    if pixels > _MIN_BYTES_CHECK_PIXELS and len(data) < pixels / _PIXELS_PER_BYTE_MAX:
        return None  # PIL's path rejects it as truncated, with its message
    if _target_size(header.width, header.height, max_pixels, max_size)[0] != 1.0 or not decodes_cleanly(data):
        return None
    return NormalizedImage(jpeg=data, width=header.width, height=header.height)


def decodes_cleanly(data: bytes) -> bool:
    """True when libjpeg-turbo (simplejpeg) decodes the whole JPEG ``data`` at 1/8 scale without any error or
    warning: every scan is entropy-decoded (so truncated or corrupt data fails), but the IDCT and colour
    conversion work on one value per 8x8 block. False also when simplejpeg is missing.

    Only a True is trusted: a JPEG that PIL reads with the same libjpeg-turbo then decodes as well. A False
    (a warning such as "extraneous bytes", a truncated file, or no simplejpeg) says nothing, and the caller
    leaves the verdict to PIL's own decode, so the accepted and rejected files stay those of a PIL-only check.
    """
    if simplejpeg is None:
        return False
    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_height=1, min_width=1, min_factor=8, strict=True)
    except Exception:  # ValueError from libjpeg-turbo; anything else also means "ask PIL"
        return False
    return True


def _open(data: bytes) -> Image.Image:
    """Open (identify, not decode) the image; rejects what PIL cannot identify and empty pixel sizes."""
    try:
        img = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise ImageRejected(RejectReason.UNDECODABLE, "not an image format PIL can identify") from None
    except Exception as exc:
        raise ImageRejected(RejectReason.UNDECODABLE, f"{type(exc).__name__}: {exc}") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageRejected(RejectReason.UNDECODABLE, f"image size {width}x{height}")
    return img


def _target_size(width: int, height: int, max_pixels: int, max_size: int | None) -> tuple[float, tuple[int, int]]:
    """(scale, target size) that fits ``max_pixels`` and ``max_size`` with the aspect kept (scale 1.0: as is)."""
    scale = 1.0
    if width * height > max_pixels:
        scale = (max_pixels / (width * height)) ** 0.5
    if max_size is not None and max(width, height) * scale > max_size:
        scale = max_size / max(width, height)
    return scale, (max(1, int(width * scale)), max(1, int(height * scale)))


def _reduce_while_decoding(img: Image.Image, fmt: str, target: tuple[int, int], max_pixels: int) -> None:
    """Before the decode of an image to downscale: JPEGs are reduced in the DCT domain (1/2..1/8); other formats
    are decoded in full, so one over 4 x ``max_pixels`` is rejected as too large."""
    width, height = img.size
    if fmt == "JPEG":
        img.draft(img.mode if img.mode in ("RGB", "L", "CMYK") else "RGB", target)
    elif width * height > _decode_limit(max_pixels):
        raise ImageRejected(RejectReason.TOO_LARGE,
                            f"{fmt} {width}x{height} = {width * height} pixels > "
                            f"{_decode_limit(max_pixels)} (4 x --max-pixels); only JPEGs are reduced while decoding")


def _colour_steps(fmt: str, huffman: bool, mode: str, header: JpegHeader, adobe_rgb: bool) -> list[str]:
    """The format and colour conversions an image that is not passed through needs, in words."""
    steps = []
    if fmt != "JPEG":
        steps.append(f"{fmt.lower()}->jpeg")
    elif not huffman:
        steps.append("jpeg-frame->baseline")  # arithmetic-coded, lossless, ... frames
    if mode == "CMYK" and header.adobe_transform == 2:
        steps.append("ycck->rgb")
    elif mode != "RGB":
        steps.append(f"{_MODE_NAMES.get(mode, mode.lower())}->rgb")
    elif adobe_rgb:
        steps.append("adobe-rgb->ycbcr")
    return steps


def _convert(img: Image.Image, steps: list[str], orientation: int, scale: float, target: tuple[int, int],
             quality: int) -> NormalizedImage:
    """Rotate upright, convert to RGB, downscale to ``target`` and re-encode the decoded image; ``steps`` (the
    colour conversions) gains the rotation and the downscale."""
    if orientation != 1:
        img = ImageOps.exif_transpose(img)
        steps.append("exif-rotated")
    rgb = _to_rgb(img)
    if scale < 1.0:
        if orientation in (5, 6, 7, 8):
            target = (target[1], target[0])
        if rgb.size != target:
            rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        steps.append("downscaled")
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality)
    return NormalizedImage(jpeg=out.getvalue(), width=rgb.width, height=rgb.height, conversion="+".join(steps))
