"""Decode backends: the contract, exact epochs, and the CPU geometry."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared
from pipeline.backends import FolderConfig, Loader, LoaderConfig, LoaderKind, Split, backend_spec, build_loader
from pipeline.read.info import load_info
from pipeline.read import transforms as T
from pipeline.read.transforms import decode_train, decode_val, random_resized_crop_box

CPU = torch.device("cpu")


def epoch(loader, e):
    loader.set_epoch(e)
    return list(loader)


@pytest.mark.parametrize("kind", list(LoaderKind))
def test_contract(kind, demo_shards):
    missing = backend_spec(kind).available()
    if missing is not None:  # DALI has no wheel for some Pythons (3.8): its tests are skipped there
        pytest.skip(missing)
    info = load_info(demo_shards)
    # the folder backend reads the ImageFolder tree the shards were made from (conftest: <base>/tree)
    cfg = LoaderConfig(batch_size=4, image_size=32, workers=2, options=(FolderConfig(demo_shards.parent / "tree"),))
    for split in Split:
        loader = build_loader(kind, cfg, split, info if kind is not LoaderKind.FOLDER else None, CPU)
        assert loader.num_classes == info.num_classes
        assert isinstance(loader, Loader)
        batches = epoch(loader, 0)
        assert len(batches) == len(loader)
        for b in batches:
            assert b.images.dtype == torch.float32 and b.images.shape[1:] == (3, 32, 32)
            assert b.images.is_contiguous(memory_format=torch.channels_last)
            assert b.labels.dtype == torch.int64 and b.labels.shape == (b.images.shape[0],)
            assert int(b.labels.min()) >= 0 and int(b.labels.max()) < info.num_classes
        if split is Split.TRAIN:
            assert len(loader) == 45 // 4 and all(b.images.shape[0] == 4 for b in batches)
        else:
            assert sum(b.images.shape[0] for b in batches) == 13


def test_cpu_train_epochs_are_disjoint_reshuffled_and_normalised(demo_shards):
    info = load_info(demo_shards)
    loader = build_loader(LoaderKind.CPU, LoaderConfig(batch_size=4, image_size=32, workers=2), Split.TRAIN,
                          info, CPU)
    e0, e1 = epoch(loader, 0), epoch(loader, 1)
    keys0 = [k for b in e0 for k in b.keys]
    keys1 = [k for b in e1 for k in b.keys]
    assert len(keys0) == len(set(keys0)) == 44 and len(set(keys1)) == 44
    assert keys0 != keys1
    x = torch.cat([b.images for b in e0])
    assert -3 < float(x.mean()) < 3 and 0.2 < float(x.std()) < 3  # normalised, not 0..255


@pytest.mark.parametrize("kind", [LoaderKind.CPU, LoaderKind.NVJPEG])
def test_shard_backends_val_is_every_image_once_and_deterministic(demo_shards, kind):
    info = load_info(demo_shards)
    loader = build_loader(kind, LoaderConfig(batch_size=4, image_size=32, workers=3), Split.VAL, info, CPU)
    a, b = epoch(loader, 0), epoch(loader, 1)
    keys = sorted(k for batch in a for k in batch.keys)
    assert len(keys) == len(set(keys)) == 13 == loader.num_samples
    assert torch.equal(torch.cat([x.images for x in a]), torch.cat([x.images for x in b]))
    loader.close()


def test_cpu_loader_needs_data():
    with pytest.raises(ValueError, match="needs --data"):
        build_loader(LoaderKind.CPU, LoaderConfig(batch_size=4), Split.TRAIN, None, CPU)


def test_random_resized_crop_box_stays_inside_with_torchvision_bounds():
    rng = random.Random(0)
    for w, h in [(500, 375), (64, 480), (1000, 50), (1, 1)]:
        for _ in range(200):
            left, top, cw, ch = random_resized_crop_box(w, h, rng)
            assert 0 <= left and left + cw <= w and 0 <= top and top + ch <= h and cw > 0 and ch > 0


@pytest.mark.parametrize("decoder", ["turbo", "pil"])
def test_decode_val_matches_torchvision_resize_centercrop(decoder, monkeypatch):
    from torchvision import transforms

    if decoder == "pil":  # the fallback path (CMYK, PNG, files libjpeg rejects) must agree as well
        monkeypatch.setattr(T, "simplejpeg", None)
    path = shared("imagenet-samples") / "n01443537_goldfish.JPEG"
    data = path.read_bytes()
    ours = decode_val(data, 224).numpy().astype(np.float32)
    ref = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])(Image.open(path).convert("RGB"))
    diff = np.abs(ours - np.asarray(ref, dtype=np.float32))
    assert ours.shape == (224, 224, 3)
    assert diff.mean() < 4.0  # same geometry; only resampling detail differs


def test_decode_train_gray_and_cmyk_sources_are_rgb():
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8))
    for mode in ("L", "CMYK"):
        buf = io.BytesIO()
        rgb.convert(mode).save(buf, "JPEG")
        out = decode_train(buf.getvalue(), 48, random.Random(0))
        assert out.shape == (48, 48, 3) and out.dtype == torch.uint8


def test_fast_and_pil_decoders_match_torchvision_resized_crop_on_real_images():
    """Both decode paths (simplejpeg + DCT scaling + torch resize; PIL draft + PIL resize) vs torchvision's
    resized_crop of the fully decoded image, same boxes: the same pixels up to resampling. Measured mean abs
    diff (0..255) over these 20 images: fast 0.41 at 224 px, 2.26 at 64 px (DCT scaling 1/2..1/8); PIL 0.15 / 0.76."""
    from torchvision.transforms import functional as TF

    files = sorted(shared("imagenet-samples").glob("*.JPEG"))[::40]
    for size in (224, 64):
        diffs = {"fast": [], "pil": []}
        for f in files:
            data = f.read_bytes()
            box = lambda w, h: T.random_resized_crop_box(w, h, random.Random(f.name))  # noqa: E731
            img = Image.open(f).convert("RGB")
            left, top, w, h = box(*img.size)
            ref = torch.from_numpy(np.array(TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)))
            fast = T._decode_turbo(data, size, box)
            assert fast is not None, f.name  # every real sample (grayscale ones too) takes the fast path
            for name, out in (("fast", fast), ("pil", T._decode_pil(data, size, box))):
                assert out.shape == (size, size, 3) and out.dtype == torch.uint8
                diffs[name].append(float((out.float() - ref.float()).abs().mean()))
        for name, d in diffs.items():
            assert max(d) < 10 and np.mean(d) < 3, (size, name, d)


def test_non_jpeg_and_cmyk_take_the_pil_path():
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    for mode, fmt in (("CMYK", "JPEG"), ("RGB", "PNG")):
        buf = io.BytesIO()
        rgb.convert(mode).save(buf, fmt)
        assert T._decode_turbo(buf.getvalue(), 32, lambda w, h: (0, 0, w, h)) is None
        assert decode_val(buf.getvalue(), 32).shape == (32, 32, 3)


def test_decoder_name_states_pillow_flavour():
    import importlib.metadata

    try:
        simd = importlib.metadata.distribution("pillow-simd") is not None
    except importlib.metadata.PackageNotFoundError:
        simd = False
    assert T.is_pillow_simd() == simd
    assert ("pillow-simd" in T.decoder_name()) == simd and "simplejpeg" in T.decoder_name()


def test_random_resized_crop_matches_torchvision_statistically():
    """Our box sampler vs torchvision's RandomResizedCrop.get_params: same area and aspect distributions."""
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    rng = random.Random(0)
    img = Image.new("RGB", (500, 375))
    n = 4000

    def stats(boxes):
        area = np.array([w * h / (500 * 375) for w, h in boxes])
        log_ratio = np.array([np.log(w / h) for w, h in boxes])
        return np.quantile(area, [0.1, 0.5, 0.9]), np.quantile(log_ratio, [0.1, 0.5, 0.9])

    ours = [random_resized_crop_box(500, 375, rng)[2:] for _ in range(n)]
    ref = [tuple(reversed(RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))[2:])) for _ in range(n)]
    (a1, r1), (a2, r2) = stats(ours), stats(ref)
    assert np.abs(a1 - a2).max() < 0.03, (a1, a2)
    assert np.abs(r1 - r2).max() < 0.03, (r1, r2)


def test_cpu_loader_reports_per_stage_seconds(demo_shards):
    import time

    info = load_info(demo_shards)
    for workers in (0, 2):
        loader = build_loader(LoaderKind.CPU, LoaderConfig(batch_size=4, image_size=32, workers=workers),
                              Split.TRAIN, info, CPU)
        t0 = time.perf_counter()
        n = sum(len(b.keys) for b in epoch(loader, 0))
        wall = time.perf_counter() - t0
        stages = loader.stats().stages
        assert stages.samples == n == 44
        assert set(stages.seconds.as_dict()) == {"read", "decode", "augment", "collate"}
        assert all(v > 0 for v in stages.seconds.as_dict().values())
        if workers == 0:  # in-process: the stages are the epoch's work, nothing else
            assert sum(stages.seconds.as_dict().values()) <= wall
