"""Turn the bytes of one input file into a clean RGB JPEG for a shard, or say why it cannot be.

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
from enum import Enum

from PIL import Image, ImageOps

# PIL's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS, 89.5 Mpx): larger files are rejected.
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_QUALITY = 95
_ORIENTATION_TAG = 0x0112
# JPEG start-of-frame markers whose Huffman-coded data all our decoders read (ITU T.81, table B.1).
_SOF_HUFFMAN = {0xC0, 0xC1, 0xC2}
_SOF_ALL = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_MODE_NAMES = {"L": "grayscale", "LA": "grayscale+alpha", "CMYK": "cmyk", "P": "palette", "RGBA": "rgba",
               "I;16": "16-bit grayscale", "I": "32-bit grayscale", "1": "bilevel"}


class RejectReason(str, Enum):
    """Why an input file is not in any shard (written to the rejects report)."""

    EMPTY = "empty"                  # zero-byte file
    UNDECODABLE = "undecodable"      # not an image PIL can identify or decode (also: truncated files)
    TOO_LARGE = "too-large"          # more pixels than the decompression-bomb limit
    NOT_IN_CLASS = "not-in-class-folder"  # a file directly under a split folder, outside any class folder
    NO_LABEL = "no-label"            # a flat-val image that the label file does not list


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


def jpeg_frame_marker(data: bytes) -> int | None:
    """Return the start-of-frame marker byte (0xC0..0xCF) of a JPEG, or None if none is found.

    Walks the marker segments from SOI (ITU T.81 annex B) without decoding any image data.
    """
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    pos = 2
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _SOF_ALL:
            return marker
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # standalone markers
            pos += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header: malformed
            return None
        seg_len = int.from_bytes(data[pos + 2:pos + 4], "big")
        pos += 2 + seg_len
    return None


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
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits rather than clip.
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


def normalize_image(data: bytes, *, quality: int = DEFAULT_QUALITY,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> NormalizedImage:
    """Check one input file and return a clean RGB JPEG for it.

    Args:
        data: the file's bytes.
        quality: JPEG quality (1..100) used when the image has to be re-encoded.
        max_pixels: images with more pixels than this are rejected (decompression-bomb policy).

    Returns:
        A :class:`NormalizedImage`; ``conversion == ""`` means ``jpeg is data``.

    Raises:
        ImageRejected: zero-byte, unidentifiable, truncated/corrupt, or too-large input.
    """
    if not data:
        raise ImageRejected(RejectReason.EMPTY, "zero-byte file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EXIF / bomb warnings: we apply our own policy below
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageRejected(RejectReason.TOO_LARGE, str(exc)) from None
        except Image.UnidentifiedImageError:
            raise ImageRejected(RejectReason.UNDECODABLE, "not an image format PIL can identify") from None
        except Exception as exc:
            raise ImageRejected(RejectReason.UNDECODABLE, f"{type(exc).__name__}: {exc}") from None
        width, height = img.size
        if width * height > max_pixels:
            raise ImageRejected(RejectReason.TOO_LARGE,
                                f"{width}x{height} = {width * height} pixels > limit {max_pixels}")
        fmt = img.format or "unknown"
        mode = img.mode
        orientation = _orientation(img)
        try:
            img.load()  # full decode: truncated or corrupt data raises here
        except Exception as exc:
            raise ImageRejected(RejectReason.UNDECODABLE, f"{type(exc).__name__}: {exc}") from None

        huffman = fmt == "JPEG" and jpeg_frame_marker(data) in _SOF_HUFFMAN
        if huffman and mode == "RGB" and orientation == 1:
            return NormalizedImage(jpeg=data, width=width, height=height)

        steps = []
        if fmt != "JPEG":
            steps.append(f"{fmt.lower()}->jpeg")
        elif not huffman:
            steps.append("jpeg-frame->baseline")  # arithmetic-coded, lossless, ... frames
        if mode != "RGB":
            steps.append(f"{_MODE_NAMES.get(mode, mode.lower())}->rgb")
        if orientation != 1:
            img = ImageOps.exif_transpose(img)
            steps.append("exif-rotated")
        rgb = _to_rgb(img)
        out = io.BytesIO()
        rgb.save(out, format="JPEG", quality=quality)
        return NormalizedImage(jpeg=out.getvalue(), width=rgb.width, height=rgb.height,
                               conversion="+".join(steps))
