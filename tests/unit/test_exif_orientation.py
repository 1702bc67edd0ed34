"""EXIF orientation (issue 20, item 9): one behaviour for every backend, the orientation applied. A JPEG stored
sideways with EXIF orientation 6 (rotate 90 clockwise to view), as cameras and other sharding tools leave them,
gives the same upright picture from cpu, nvjpeg (its CPU decode here), folder and dali (its CPU pipeline)."""

from __future__ import annotations

import io
import json
import random
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision import transforms

from pipeline.backends import FolderConfig, LoaderConfig, LoaderKind, Split, build_loader
from pipeline.dataset import INFO_FILE
from pipeline.read.info import load_info
from pipeline.read import transforms as tr
from pipeline.shard.writer import ShardWriter

CPU = torch.device("cpu")
SIZE = 16


def sideways_jpeg(orientation: int = 6) -> bytes:
    """A 48x32 JPEG of four coloured quadrants, tagged with EXIF ``orientation``: upright it is 32x48."""
    a = np.zeros((32, 48, 3), dtype=np.uint8)
    a[:16, :24], a[:16, 24:], a[16:, :24], a[16:, 24:] = (220, 30, 30), (30, 200, 40), (30, 40, 210), (250, 250, 250)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def val_crop(img: Image.Image) -> np.ndarray:
    """torchvision's eval transform of a PIL image as ``S×S×3`` int array."""
    t = transforms.Compose([transforms.Resize(tr.eval_resize_size(SIZE)), transforms.CenterCrop(SIZE)])
    return np.asarray(t(img.convert("RGB")), dtype=np.int32)


def expected() -> tuple[np.ndarray, np.ndarray]:
    """(the upright picture's val crop, the crop of the pixels as stored: what ignoring EXIF gives)."""
    img = Image.open(io.BytesIO(sideways_jpeg()))
    return val_crop(ImageOps.exif_transpose(img)), val_crop(img)


def assert_upright(images: torch.Tensor) -> None:
    """Every ``N×3×S×S`` uint8 image is the upright picture (within decoder rounding), not the stored one."""
    upright, stored = expected()
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, SIZE, SIZE) and images.shape[0] > 0
    for x in images.permute(0, 2, 3, 1).numpy().astype(np.int32):
        assert np.abs(x - upright).mean() < 4, "not the upright picture"
        assert np.abs(x - stored).mean() > 40  # the stored pixels differ a lot: the check can fail


def test_exif_orientation_is_read_from_the_header_only():
    assert tr.exif_orientation(sideways_jpeg(6)) == 6 and tr.exif_orientation(sideways_jpeg(3)) == 3
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    assert tr.exif_orientation(buf.getvalue()) == 1  # no APP1: what the sharder writes
    assert tr.exif_orientation(b"\x89PNG\r\n") == 1
    damaged = bytearray(sideways_jpeg(6))
    at = damaged.index(b"Exif\0\0") + 6
    damaged[at:at + 2] = b"XX"  # not a TIFF header
    assert tr.exif_orientation(bytes(damaged)) == 1
    assert tr.exif_orientation(memoryview(np.frombuffer(sideways_jpeg(8), dtype=np.uint8))) == 8


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_helpers_match_pil_exif_transpose(orientation):
    data = sideways_jpeg(orientation)
    img = Image.open(io.BytesIO(data))
    want = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    rgb = np.array(img.convert("RGB"))
    assert np.array_equal(tr.upright_hwc(rgb, tr.exif_orientation(data)), want)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    assert np.array_equal(tr.upright_chw(chw, orientation).permute(1, 2, 0).numpy(), want)


@pytest.mark.parametrize("pil_only", [False, True])
def test_cpu_decode_paths_turn_the_picture_upright(pil_only, monkeypatch):
    """decode_val and decode_train (libjpeg-turbo and PIL paths) crop in the upright picture's coordinates."""
    if pil_only:
        monkeypatch.setattr(tr, "simplejpeg", None)
    data = sideways_jpeg()
    assert_upright(tr.decode_val(data, SIZE)[None].permute(0, 3, 1, 2))
    buf = io.BytesIO()
    ImageOps.exif_transpose(Image.open(io.BytesIO(data))).save(buf, "JPEG", quality=95)  # upright, no EXIF
    for seed in range(4):  # the same box and flip drawn from the same (upright) size: the same crop
        got = tr.decode_train(data, SIZE, random.Random(seed)).numpy().astype(np.int32)
        want = tr.decode_train(buf.getvalue(), SIZE, random.Random(seed)).numpy().astype(np.int32)
        assert np.abs(got - want).mean() < 12  # JPEG re-encoding moves the quadrant edges' pixels a little


def foreign_shards(demo_shards: Path, tmp_path: Path) -> Path:
    """A copy of the demo shards whose val JPEGs are all the sideways one (as another tool might write them)."""
    root = Path(shutil.copytree(demo_shards, tmp_path / "shards"))
    obj = json.loads((root / INFO_FILE).read_text())
    for name in obj["splits"]["val"]["filenames"]:
        with tarfile.open(root / name) as tf:
            members = [(m.name, tf.extractfile(m).read()) for m in tf if m.isfile()]
        samples: dict[str, dict[str, bytes]] = {}
        for member, data in members:
            key, ext = member.split(".", 1)
            samples.setdefault(key, {})[ext] = sideways_jpeg() if ext == "jpg" else data
        (root / name).unlink()
        writer = ShardWriter(root, name, shard_size=10 ** 9)
        for key, parts in samples.items():
            writer.write(key, parts)
        record = writer.close()[0]
        for entry in obj.get("manifest", {}).get("val", []):
            if entry["filename"] == name:
                entry.update(num_samples=record.num_samples, bytes=record.num_bytes, sha256=record.sha256)
    (root / INFO_FILE).write_text(json.dumps(obj))
    return root


def val_images(kind: LoaderKind, info, data_root=None) -> torch.Tensor:
    cfg = LoaderConfig(batch_size=4, image_size=SIZE, workers=0 if kind is not LoaderKind.DALI else 1,
                       normalize=False, options=(FolderConfig(data_root),))
    loader = build_loader(kind, cfg, Split.VAL, info, CPU)
    loader.set_epoch(0)
    return torch.cat([b.images for b in loader])


@pytest.mark.parametrize("kind", [LoaderKind.CPU, LoaderKind.NVJPEG, LoaderKind.DALI])
def test_every_shard_backend_gives_the_upright_picture(kind, demo_shards, tmp_path):
    if kind is LoaderKind.DALI:
        pytest.importorskip("nvidia.dali")
    images = val_images(kind, load_info(foreign_shards(demo_shards, tmp_path)))
    assert images.shape[0] == 13
    assert_upright(images)


def test_folder_backend_gives_the_upright_picture(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "n01440764").mkdir(parents=True)
        (tmp_path / split / "n01440764" / "sideways.JPEG").write_bytes(sideways_jpeg())
    assert_upright(val_images(LoaderKind.FOLDER, None, tmp_path))
