"""The sharder's fast paths give the bytes and verdicts of the slow ones: the header-only pass-through decision and
libjpeg-turbo check (pipeline.shard.clean) against PIL's path, the template tar headers (pipeline.shard.writer)
against Python's tarfile."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared
from pipeline.shard import clean, writer
from pipeline.shard.clean import ImageRejected, normalize_image
from pipeline.shard.writer import ShardWriter, member_header


def _dev_fields_as_nul(data: bytes) -> bytes:
    """Tar bytes with the devmajor / devminor fields of every header block as NULs, checksums updated.

    Those two fields of a regular file mean nothing; which headers carry ``"0000000\\0"`` there and which NULs
    changed between Python 3.8's tarfile and newer ones (the writer keeps one form on every Python). Both sides of
    a comparison go through this, so every other byte is still compared."""
    buf = bytearray(data)
    for at in range(0, len(buf) - 511, 512):
        block = buf[at:at + 512]
        if block[257:263] == b"ustar " and block[329:345] in (b"0000000\x00" * 2, bytes(16)):
            block[329:345] = bytes(16)
            block[148:156] = b" " * 8  # the checksum is summed with its own field as spaces
            block[148:155] = b"%06o\x00" % sum(block)
            buf[at:at + 512] = block
    return bytes(buf)


def _tarfile_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = size, writer._MTIME, 0o444, 0, 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


@pytest.mark.parametrize("name", ["a.jpg", "00000042_n01440764_10026.json", "k" * 95 + ".jpg", "k" * 96 + ".json",
                                  "k" * 101 + ".cls"])
@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 123_456, 8 ** 11 - 1, 8 ** 11])
def test_member_header_is_tarfiles_gnu_header(name, size):
    assert _dev_fields_as_nul(member_header(name, size)) == _dev_fields_as_nul(_tarfile_header(name, size))


def _tarfile_shard(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    """The shard the way the writer built it with tarfile before (the reference bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for key, members in samples:
            for ext, payload in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode, info.uid, info.gid = len(payload), writer._MTIME, 0o444, 0, 0
                info.uname = info.gname = ""
                tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def test_shard_bytes_and_index_are_tarfiles(tmp_path, monkeypatch):
    calls = []
    real_fadvise = os.posix_fadvise
    monkeypatch.setattr(writer, "_WRITEBACK_BYTES", 3000)  # the write-back hint on every few members
    monkeypatch.setattr(os, "posix_fadvise", lambda *a: calls.append(a) or real_fadvise(*a))
    rng = np.random.default_rng(0)
    samples = [(f"{i:08d}_{'x' * int(rng.integers(0, 90))}",
                {ext: rng.bytes(int(rng.choice([0, 1, 511, 512, 513, int(rng.integers(0, 20000))])))
                 for ext in ("jpg", "cls", "lbl", "json")}) for i in range(9)]
    w = ShardWriter(tmp_path, "s-{index:06d}.tar", 9)
    for key, members in samples:
        w.write(key, members)
    (rec,) = w.close()
    data = (tmp_path / rec.filename).read_bytes()
    assert _dev_fields_as_nul(data) == _dev_fields_as_nul(_tarfile_shard(samples)) and rec.num_bytes == len(data) and calls
    lines = (tmp_path / "s-000000.idx").read_text().splitlines()
    assert lines[0] == "v1.2 9"
    with tarfile.open(tmp_path / rec.filename) as tf:
        members = tf.getmembers()
    fields = [f for line in lines[1:] for f in [line.split()[k:k + 4] for k in range(0, 16, 4)]]
    assert [(int(off), int(size), name) for _, off, size, name in fields] == \
           [(m.offset_data, m.size, m.name) for m in members]


def _slow(data: bytes, monkeypatch, **kw):
    """normalize_image through PIL only (the check as it was before libjpeg-turbo's fast path)."""
    with monkeypatch.context() as m:
        m.setattr(clean, "_clean_from_header", lambda *a: None)
        m.setattr(clean, "decodes_cleanly", lambda d: False)
        return _verdict(data, **kw)


def _verdict(data: bytes, **kw):
    try:
        r = normalize_image(data, **kw)
    except ImageRejected as exc:
        return ("reject", exc.reason, exc.detail)
    return (r.jpeg == data, r.jpeg if r.conversion else b"", r.width, r.height, r.conversion)


def _jpeg(img: Image.Image, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", **kw)
    return out.getvalue()


def _dirty_inputs() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8), "RGB")
    clean_jpeg = _jpeg(rgb, quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    png = io.BytesIO()
    rgb.save(png, "PNG")
    sos = clean_jpeg.index(b"\xff\xda")
    flipped = bytearray(clean_jpeg)
    flipped[sos + 40] ^= 0x5A
    xmp = b"<x:xmpmeta><rdf:Description tiff:Orientation=\"3\"/></x:xmpmeta>"
    app1_xmp = b"\xff\xe1" + (len(xmp) + 31).to_bytes(2, "big") + b"http://ns.adobe.com/xap/1.0/\0" + xmp
    return {
        "clean": clean_jpeg,
        "progressive": _jpeg(rgb, progressive=True),
        "gray": _jpeg(rgb.convert("L")),
        "cmyk": _jpeg(rgb.convert("CMYK")),
        "exif-rotated": _jpeg(rgb, exif=exif.tobytes()),
        "xmp-rotated": clean_jpeg[:2] + app1_xmp + clean_jpeg[2:],
        "png": png.getvalue(),
        "empty": b"",
        "text": b"not an image\n",
        "flipped-scan-byte": bytes(flipped),
        "extraneous-bytes": clean_jpeg[:sos] + b"\x00\x00" + clean_jpeg[sos:],
        **{f"truncated-{n}": clean_jpeg[:n] for n in (3, 100, sos, sos + 10, len(clean_jpeg) - 2)},
    }


@pytest.mark.parametrize("name", list(_dirty_inputs()))
def test_fast_path_verdict_is_pils_on_dirty_files(name, monkeypatch):
    data = _dirty_inputs()[name]
    assert _verdict(data) == _slow(data, monkeypatch)
    assert _verdict(data, max_size=32) == _slow(data, monkeypatch, max_size=32)


def test_fast_path_verdict_is_pils_on_the_real_samples(monkeypatch):
    files = sorted(shared("imagenet-samples").glob("*.JPEG"))
    assert files
    for f in files:
        data = f.read_bytes()
        assert _verdict(data) == _slow(data, monkeypatch), f.name


def test_without_simplejpeg_pil_checks_and_passes_through(monkeypatch):
    data = _dirty_inputs()["clean"]
    monkeypatch.setattr(clean, "simplejpeg", None)
    assert not clean.decodes_cleanly(data)
    r = normalize_image(data)
    assert r.jpeg is data and (r.width, r.height) == (56, 40) and r.conversion == ""
    with pytest.raises(ImageRejected):
        normalize_image(data[:200])


def test_header_parse_reports_size_and_app_segments():
    d = _dirty_inputs()
    h = clean.jpeg_header(d["clean"])
    assert (h.width, h.height, h.components, h.frames, h.complete, h.app1) == (56, 40, 3, 1, True, False)
    assert clean.jpeg_header(d["exif-rotated"]).app1 and clean.jpeg_header(d["xmp-rotated"]).app1
    assert not clean.jpeg_header(d["truncated-100"]).complete


def _tree(root: Path, n: int = 6) -> None:
    rng = np.random.default_rng(2)
    for i in range(n):
        d = root / "train" / f"n0000000{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"img{i}.JPEG").write_bytes(_jpeg(Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))))


@pytest.mark.parametrize("workers", [1, 2])
def test_failed_commit_is_one_output_error_and_the_rerun_completes(tmp_path, monkeypatch, workers):
    import errno

    from pipeline.shard import pool, run
    from pipeline.shard.writer import OutputError

    _tree(tmp_path / "src")
    cfg = run.ShardConfig(src=tmp_path / "src", out=tmp_path / "out", shard_size=2, workers=workers, progress=False)
    real_commit = pool.commit_shard
    calls = []

    def full_disk(out, name):
        calls.append(name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_commit(out, name)

    monkeypatch.setattr(pool, "commit_shard", full_disk)  # what the sharder commits a worker's shard with
    with pytest.raises(OutputError, match="cannot write .*file system is full"):
        run.shard_tree(cfg)
    assert not (tmp_path / "out" / "_info.json").exists()
    assert any(p.name.endswith(".tar.tmp") for p in (tmp_path / "out").iterdir())
    monkeypatch.setattr(pool, "commit_shard", real_commit)
    summary = run.shard_tree(cfg)
    assert summary.complete and sum(c.written for c in summary.counts.values()) == 6
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    fresh = run.shard_tree(run.ShardConfig(src=tmp_path / "src", out=tmp_path / "fresh", shard_size=2, workers=1,
                                           progress=False))
    assert fresh.complete
    for p in sorted((tmp_path / "fresh").glob("*.tar")):
        assert p.read_bytes() == (tmp_path / "out" / p.name).read_bytes()
