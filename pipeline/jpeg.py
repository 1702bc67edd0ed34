"""JPEG marker segments, walked without decoding anything (ITU T.81 annex B): the one walker that the sharder's
header check (:func:`pipeline.shard.clean.jpeg_header`) and the readers' EXIF orientation
(:func:`pipeline.read.orientation.exif_orientation`) share."""

from __future__ import annotations

from typing import Iterator

SOI, SOS, EOI = 0xD8, 0xDA, 0xD9


def marker_segments(data) -> Iterator[tuple[int, int, int]]:
    """``(marker, start, end)`` of each marker segment from SOI to the first SOS or EOI, in file order: the
    segment's payload (after its 2-byte length) is ``data[start:end]``, ``end`` possibly past the data's end for a
    truncated file. SOS or EOI ends the walk with ``(marker, p, p)``; a byte where a marker should be that is not
    0xFF ends it silently; fill bytes and standalone markers (TEM, RSTn) are skipped. Yields nothing when ``data``
    (``bytes`` or a bytes-like object indexable to ints, e.g. a ``memoryview`` cast to ``"B"``) is not a JPEG."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != SOI:
        return
    pos = 2
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (SOI, 0x01) or 0xD0 <= marker <= 0xD7:  # standalone markers
            pos += 2
            continue
        if marker in (SOS, EOI):
            yield marker, pos + 2, pos + 2
            return
        seg_len = (data[pos + 2] << 8) | data[pos + 3]
        yield marker, pos + 4, pos + 2 + seg_len
        pos += 2 + seg_len


__all__ = ["EOI", "SOI", "SOS", "marker_segments"]
