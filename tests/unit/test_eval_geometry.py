"""Eval geometry: every backend's val pipeline gives torchvision's ``Resize(floor(S / crop_pct))`` + ``CenterCrop(S)``.

The reference is torchvision itself (0.29): its resized size and crop corner read off its own functions, and its
pixels on PIL images (the ``folder`` backend's eval transform). Measured on the 800 shared ImageNet samples
(``python -m benchmarks.eval_crop_agreement``), mean / max over images of the per-image mean |diff| (0..255):
cpu 0.002 / 0.23 at 224 px, 0.012 / 1.3 at 97 px; dali (CPU pipeline) 0.16 / 0.26 and 0.11 / 0.22.
"""

from __future__ import annotations

import io
import itertools
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from conftest import shared
from pipeline.backends import LoaderConfig, LoaderKind, Split, build_loader
from pipeline.read.info import load_info
from pipeline.read import transforms as T

CPU = torch.device("cpu")
# Image sizes whose resized margins (resized side - crop) are odd and even, landscape, portrait and square,
# including torchvision's half-to-even corner cases (margins 117 -> 58, 111 -> 56) and no-resize cases.
SYNTHETIC_SIZES = [(500, 375), (375, 500), (500, 333), (333, 500), (500, 334), (500, 332), (499, 375), (501, 374),
                   (400, 300), (256, 256), (257, 300), (224, 224), (110, 97), (97, 110), (2400, 56), (56, 2400),
                   (640, 427), (1023, 769)]
DALI_BOUNDS = {224: (0.3, 1.0), 97: (0.25, 1.0)}  # mean, max: measured 0.16 / 0.26 at 224 px, 0.11 / 0.22 at 97


def torchvision_geometry(width: int, height: int, size: int, crop_pct: float) -> tuple[int, int, int, int]:
    """``(resized_w, resized_h, left, top)`` as torchvision computes them: the output shape of its Resize and the
    index its CenterCrop keeps first, read off an ``arange`` image."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    resized = TF.resize(torch.zeros(1, height, width), T.eval_resize_size(size, crop_pct),
                        interpolation=InterpolationMode.NEAREST)
    new_h, new_w = resized.shape[-2:]
    corner = int(TF.center_crop(torch.arange(new_h * new_w).view(1, new_h, new_w), size)[0, 0, 0])
    return new_w, new_h, corner % new_w, corner // new_w


def torchvision_pixels(img: Image.Image, size: int, crop_pct: float = T.CROP_PCT) -> np.ndarray:
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize(T.eval_resize_size(size, crop_pct)), transforms.CenterCrop(size)])
    return np.asarray(tf(img.convert("RGB")), dtype=np.float32)


def upright(path: Path) -> Image.Image:
    """The image file opened by PIL and turned upright by its EXIF orientation, as every backend decodes it."""
    return ImageOps.exif_transpose(Image.open(path))


def mean_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())


def smooth_jpeg(width: int, height: int, seed: int) -> bytes:
    """A smooth random RGB image (noise upsampled: like photographs, unlike per-pixel noise), as a JPEG."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8))
    buf = io.BytesIO()
    small.resize((width, height), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_eval_resize_size_is_timms_floor():
    assert T.eval_resize_size(224) == 256 and T.eval_resize_size(97) == 110 and T.eval_resize_size(64) == 73
    assert T.eval_resize_size(224, 0.9) == math.floor(224 / 0.9) == 248 and T.eval_resize_size(224, 1.0) == 224


@pytest.mark.parametrize("size,crop_pct", [(224, 0.875), (97, 0.875), (64, 0.875), (224, 0.9), (160, 1.0)])
def test_center_crop_geometry_is_torchvisions(size, crop_pct):
    margins = set()
    for w, h in SYNTHETIC_SIZES:
        got = T.center_crop_geometry(w, h, size, crop_pct)
        assert got == torchvision_geometry(w, h, size, crop_pct), (w, h)
        margins |= {(got[0] - size) % 2, (got[1] - size) % 2}
        left, top, cw, ch = T.center_crop_box(w, h, size, crop_pct)
        assert 0 <= left and left + cw <= w + 1e-9 and 0 <= top and top + ch <= h + 1e-9
        assert math.isclose(cw * got[0] / w, size) and math.isclose(ch * got[1] / h, size)
    assert margins == {0, 1}  # both odd and even margins were covered


@pytest.mark.parametrize("w,h", SYNTHETIC_SIZES[:10])
def test_resize_box_exact_is_resize_then_crop_at_any_dct_scale(w, h):
    """On a full decode and on 1/2, 1/4 decodes (``ceil(w / k)`` wide): bitwise torch's antialiased resize of the
    whole image to torchvision's resized size, then torchvision's crop; the box given in the coordinates of that
    decode."""
    import torch.nn.functional as F

    size = 64
    new_w, new_h, left, top = T.center_crop_geometry(w, h, size)
    box = T.center_crop_box(w, h, size)
    for k in (1, 2, 4):
        rw, rh = math.ceil(w / k), math.ceil(h / k)
        x = torch.randint(0, 256, (1, rh, rw, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(k))
        x = x.permute(0, 3, 1, 2)  # channels-last, as the cpu backend hands it over
        fx, fy = w / rw, h / rh
        ours = T.resize_box_exact(x, (box[0] / fx, box[1] / fy, box[2] / fx, box[3] / fy), size)
        ref = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True)[..., top:top + size,
                                                                                     left:left + size]
        assert ours.shape == (1, 3, size, size) and torch.equal(ours, ref), (w, h, k)


@pytest.mark.parametrize("size", [224, 97])
def test_decode_val_matches_torchvision_on_synthetic_odd_and_even_sizes(size):
    for i, (w, h) in enumerate(SYNTHETIC_SIZES[:12]):
        data = smooth_jpeg(w, h, i)
        ref = torchvision_pixels(Image.open(io.BytesIO(data)), size)
        assert mean_abs(T.decode_val(data, size), ref) <= 0.5, (w, h)


@pytest.mark.parametrize("size", [224, 97])
def test_decode_val_matches_torchvision_on_real_images(size):
    """The 800 shared samples at 224 px, every second one at 97, raw files (both sides apply EXIF orientation:
    n02951585_can_opener.JPEG is stored sideways with orientation 6):
    measured on all 800, mean 0.002 (224 px) and 0.012 (97 px), max 0.23 / 1.3, where a large image is decoded
    at 1/2 scale in the DCT domain."""
    files = sorted(shared("imagenet-samples").glob("*.JPEG"))
    assert len(files) == 800
    files = files if size == 224 else files[::2]  # the odd size on every second sample (400)
    d = [mean_abs(T.decode_val(f.read_bytes(), size), torchvision_pixels(upright(f), size)) for f in files]
    assert np.mean(d) <= 0.5 and max(d) < 3, (np.mean(d), max(d))


def test_pil_fallback_val_path_matches_torchvision(monkeypatch):
    """CMYK, PNG and files libjpeg rejects take PIL's path: the same box (PIL keeps its fractional edges);
    measured mean 0.020 at 224 px on the 800 samples (every 4th here)."""
    monkeypatch.setattr(T, "simplejpeg", None)
    files = sorted(shared("imagenet-samples").glob("*.JPEG"))[::4]
    d = [mean_abs(T.decode_val(f.read_bytes(), 224), torchvision_pixels(upright(f), 224)) for f in files]
    assert np.mean(d) <= 0.5 and max(d) < 3, (np.mean(d), max(d))


@pytest.fixture(scope="module")
def val_shards(tmp_path_factory) -> Path:
    """The 800 shared samples sharded, every one in val (and train, which the sharder needs for the classes)."""
    from pipeline.shard.run import ShardConfig, shard_tree

    root = tmp_path_factory.mktemp("eval_geometry")
    for f in sorted(shared("imagenet-samples").glob("*.JPEG")):
        for split in ("train", "val"):
            (root / "tree" / split / f.name[:9]).mkdir(parents=True, exist_ok=True)
            os.symlink(f, root / "tree" / split / f.name[:9] / f.name)
    shard_tree(ShardConfig(src=root / "tree", out=root / "shards", shard_size=1000, workers=2, progress=False))
    return root / "shards"


@pytest.fixture(scope="module")
def shard_reference(val_shards):
    """size → torchvision's eval pixels of the val shards' JPEGs (what the loaders read), in shard order; each size
    computed once for all backends."""
    import webdataset as wds

    cache: dict[int, list[np.ndarray]] = {}

    def reference(size: int) -> list[np.ndarray]:
        if size not in cache:
            cache[size] = [torchvision_pixels(Image.open(io.BytesIO(s["jpg"])), size)
                           for s in wds.WebDataset(load_info(val_shards).shard_paths("val"), shardshuffle=False)]
        return cache[size]

    return reference


def loader_val_diffs(kind: LoaderKind, info, size: int, reference: list[np.ndarray]) -> list[float]:
    cfg = LoaderConfig(batch_size=50, image_size=size, workers=1, normalize=False)
    loader = build_loader(kind, cfg, Split.VAL, info, CPU)
    images = [img.permute(1, 2, 0) for b in loader for img in b.images]  # shard order (one rank, 1 worker)
    assert len(images) == len(reference) == 800
    return [mean_abs(a, b) for a, b in zip(images, reference)]


@pytest.mark.parametrize("kind,size", [
    *itertools.product([LoaderKind.CPU, LoaderKind.DALI], [224, 97]), (LoaderKind.NVJPEG, 224),
])
def test_loader_val_matches_torchvision_on_real_shards(val_shards, shard_reference, kind, size):
    """Through each backend's own val loader, on the CPU (DALI: its CPU pipeline, device_id=None)."""
    if kind is LoaderKind.DALI:
        pytest.importorskip("nvidia.dali")
    d = loader_val_diffs(kind, load_info(val_shards), size, shard_reference(size))
    mean_bound, max_bound = DALI_BOUNDS[size] if kind is LoaderKind.DALI else (0.5, 3.0)
    assert np.mean(d) <= mean_bound and max(d) < max_bound, (np.mean(d), max(d))


def test_dali_val_roi_is_center_crop_box():
    """The in-graph region (``fn.peek_image_shape`` + DALI arithmetic) equals :func:`center_crop_box` on
    synthetic sizes with odd and even margins, to float32 precision."""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types

    from pipeline.backends.dali_graph import val_crop_roi

    sizes = [s for s in SYNTHETIC_SIZES if max(s) <= 1100]
    for size in (224, 97):
        @pipeline_def(batch_size=len(sizes), num_threads=1, device_id=None)
        def graph():
            jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
            return val_crop_roi(jpegs, size, T.CROP_PCT)

        pipe = graph()
        pipe.build()
        pipe.feed_input("jpegs", [np.frombuffer(smooth_jpeg(w, h, 0), np.uint8) for w, h in sizes])
        start, end = (np.array(out.as_tensor()) for out in pipe.run())
        for (w, h), s, e in zip(sizes, start, end):
            left, top, cw, ch = T.center_crop_box(w, h, size)
            assert np.allclose([s[1], s[0], e[1], e[0]], [left, top, left + cw, top + ch], atol=1e-3), (w, h)
