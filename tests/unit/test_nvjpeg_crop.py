"""The nvjpeg backend's batched crop / resize / flip (pipeline/backends/nvjpeg_crop.py) against the per-image path
it replaced: train within float rounding of ``F.interpolate(antialias=True)`` of each cut-out crop with the same
boxes and flips, val bit for bit; a few calls per batch, not one per image; and through the real loader, the same
rng draws as the per-image path."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from pipeline.backends import LoaderConfig, LoaderKind, Split, build_loader
from pipeline.backends import nvjpeg as nv
from pipeline.backends import nvjpeg_crop as nc
from pipeline.read.geometry import center_crop_box, random_resized_crop_box, resize_box_exact
from pipeline.read.info import load_info

from test_nvjpeg import build_shards

SIZES = ((375, 500), (333, 500), (500, 375), (375, 500), (48, 64), (300, 300), (333, 500), (700, 180), (31, 29))


def images(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen) for h, w in SIZES]


def per_image_train(img: torch.Tensor, box, flip: bool, size: int) -> torch.Tensor:
    """The per-image path this replaced: cut the crop out, resize it alone (bilinear, antialiased), flip."""
    left, top, w, h = box
    x = F.interpolate(img[None, :, top:top + h, left:left + w].float(), size=(size, size), mode="bilinear",
                      antialias=True, align_corners=False)[0]
    return (x.flip(-1) if flip else x).permute(1, 2, 0)


def train_jobs(imgs: list[torch.Tensor], seed: int) -> list[nc.TrainCrop]:
    rng = random.Random(seed)
    jobs = []
    for slot, img in enumerate(imgs):
        _, h, w = img.shape
        box = random_resized_crop_box(w, h, rng)
        jobs.append(nc.TrainCrop(slot, img, box, rng.random() < 0.5))
    # edges: the whole image, a 1-pixel-wide strip at the right edge, a tiny corner crop (upsampled 112x)
    img = imgs[0]
    jobs += [nc.TrainCrop(len(jobs), img, (0, 0, 500, 375), True), nc.TrainCrop(len(jobs) + 1, img, (499, 0, 1, 375),
             False), nc.TrainCrop(len(jobs) + 2, img, (498, 373, 2, 2), True)]
    return jobs


@pytest.mark.parametrize("size", [224, 32])
def test_train_crops_are_the_per_image_resize_up_to_float_rounding(size):
    """Measured: max |diff| 8e-5 (0..255 scale) before rounding; the rounded uint8 values differ by at most 1 where
    a value sits on .5 (float summation order), in under 0.1% of the pixels."""
    jobs = train_jobs(images(), seed=size)
    out = torch.full((len(jobs), size, size, 3), float("nan"))
    nc.train_crops(jobs, out)
    ref = torch.stack([per_image_train(j.image, j.box, j.flip, size) for j in jobs])
    assert not out.isnan().any()  # every row written
    assert float((out - ref).abs().max()) < 2e-3
    rounded = (out.round() - ref.round()).abs()
    assert float(rounded.max()) <= 1 and float((rounded > 0).float().mean()) < 1e-3


def test_train_crops_flip_is_the_mirror_of_the_unflipped_crop():
    img = images()[0]
    out = torch.empty((2, 40, 40, 3))
    nc.train_crops([nc.TrainCrop(0, img, (30, 20, 211, 150), False), nc.TrainCrop(1, img, (30, 20, 211, 150), True)],
                   out)
    assert torch.allclose(out[1], out[0].flip(1), atol=1e-4)


def counted(calls: dict, name: str, fn):
    def wrapper(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        return fn(*args, **kwargs)
    return wrapper


def test_train_and_val_issue_a_call_per_size_group_not_per_image(monkeypatch):
    imgs = images() * 3  # 27 images, 8 distinct (H, W)
    jobs = train_jobs(imgs, seed=1)[:len(imgs)]
    groups, buckets = {tuple(i.shape[1:]) for i in imgs}, {nc._bucket(j.box[3], j.box[2]) for j in jobs}
    calls: dict = {}
    monkeypatch.setattr(nc, "resample", counted(calls, "resample", nc.resample))
    monkeypatch.setattr(nc, "resize_box_exact", counted(calls, "resize", nc.resize_box_exact))
    nc.train_crops(jobs, torch.empty((len(imgs), 32, 32, 3)))
    nc.val_crops(list(enumerate(imgs)), torch.empty((len(imgs), 32, 32, 3)), 0.875)
    assert calls["resample"] == len(buckets) < len(imgs)  # one chunk per bucket: all fit in PASS_BYTES
    assert calls["resize"] == len(groups) < len(imgs)


def test_train_canvas_is_the_crop_boxs_bucket_not_the_images(monkeypatch):
    """A 12 MP-class photo with a small crop: the canvas resampled is the box's bucket (256×256 for 150×200), not
    the image's (2048×3072: 72 MiB of float32 per image); the pixels are the per-image path's."""
    gen = torch.Generator().manual_seed(5)
    big = torch.randint(0, 256, (3, 2000, 3000), dtype=torch.uint8, generator=gen)
    small = images()[0]
    jobs = [nc.TrainCrop(0, big, (2791, 1843, 200, 150), True), nc.TrainCrop(1, small, (10, 20, 180, 130), False),
            nc.TrainCrop(2, big, (0, 0, 129, 1), False)]
    shapes = []

    def spy(canvas, wy, wx):
        shapes.append(tuple(canvas.shape))
        return resample(canvas, wy, wx)

    resample = nc.resample
    monkeypatch.setattr(nc, "resample", spy)
    out = torch.empty((3, 64, 64, 3))
    nc.train_crops(jobs, out)
    assert sorted(shapes) == [(1, 128, 3, 256), (2, 256, 3, 256)]
    ref = torch.stack([per_image_train(j.image, j.box, j.flip, 64) for j in jobs])
    assert float((out - ref).abs().max()) < 2e-3


def test_a_bucket_over_pass_bytes_is_split_into_chunks_with_the_same_output(monkeypatch):
    imgs = images(seed=7) * 4
    jobs = train_jobs(imgs, seed=3)
    whole = torch.empty((len(jobs), 48, 48, 3))
    calls: dict = {}
    monkeypatch.setattr(nc, "resample", counted(calls, "resample", nc.resample))
    nc.train_crops(jobs, whole)
    buckets = calls.pop("resample")
    one = max(nc.pass_bytes(nc._bucket(j.box[3], j.box[2]), 48, (9, 9)) for j in jobs)
    for cap, fewest in ((3 * one, buckets + 1), (1, len(jobs))):  # ~3 crops a chunk, then one crop a chunk
        monkeypatch.setattr(nc, "PASS_BYTES", cap)
        chunked = torch.full_like(whole, float("nan"))
        nc.train_crops(jobs, chunked)
        assert calls.pop("resample") >= fewest
        assert torch.equal(chunked, whole), cap


def test_chunks_cover_each_bucket_within_pass_bytes(monkeypatch):
    keys = sorted([(128, 128)] * 7 + [(256, 384)] * 5 + [(4096, 3072)] * 2)
    per = {k: nc.pass_bytes(k, 224, (5, 7)) for k in set(keys)}
    monkeypatch.setattr(nc, "PASS_BYTES", 3 * per[(256, 384)])
    ranges = nc._chunks(keys, 224, (5, 7))
    assert [i for lo, hi in ranges for i in range(lo, hi)] == list(range(len(keys)))  # in order, each once
    for lo, hi in ranges:
        assert len(set(keys[lo:hi])) == 1
        assert hi - lo == 1 or (hi - lo) * per[keys[lo]] <= nc.PASS_BYTES
        if hi < len(keys) and keys[hi] == keys[lo]:  # cut inside a bucket: one more crop would not have fitted
            assert (hi - lo + 1) * per[keys[lo]] > nc.PASS_BYTES
    assert [hi - lo for lo, hi in ranges][-4:] == [3, 2, 1, 1]  # 5 at 256×384: 3 + 2; 4096×3072: each alone
    assert sum(hi - lo > 1 for lo, hi in ranges if keys[lo] == (128, 128)) >= 1


@pytest.mark.parametrize("size", [224, 97])
def test_val_crops_are_the_per_image_resize_bit_for_bit(size):
    imgs = images(seed=3)
    out = torch.empty((len(imgs), size, size, 3))
    nc.val_crops(list(enumerate(imgs)), out, 0.875)
    for i, img in enumerate(imgs):
        _, h, w = img.shape
        ref = resize_box_exact(img[None].float(), center_crop_box(w, h, size, 0.875), size)[0].permute(1, 2, 0)
        assert torch.equal(out[i], ref), i


def test_aa_taps_cover_the_filter_and_sum_to_one():
    start, length = torch.tensor([0.0, 7.0, 3.0]), torch.tensor([500.0, 1.0, 2000.0])
    taps = nc.aa_taps(start, length, None, 224, nc.num_taps([500, 1, 2000], 224))
    assert torch.allclose(taps.weight.sum(-1), torch.ones(3, 224))
    used = taps.weight > 0
    assert bool((taps.index[used] >= start.to(torch.int64)[:, None, None].expand_as(used)[used]).all())
    end = (start + length).to(torch.int64)[:, None, None].expand_as(used)
    assert bool((taps.index[used] < end[used]).all())
    assert bool((taps.weight[:, :, -1] == 0).all())  # the last tap never carries weight: the window is covered
    signal = torch.rand(2100, dtype=torch.float64).float()
    for k in range(3):  # along one axis, the dense weights are F.interpolate's resize of the crop alone
        a, b = int(start[k]), int(start[k] + length[k])
        ref = F.interpolate(signal[None, None, None, a:b], size=(1, 224), mode="bilinear", antialias=True,
                            align_corners=False).flatten()
        assert torch.allclose(nc.dense(nc.Taps(taps.index[k:k + 1], taps.weight[k:k + 1]), 2100)[0] @ signal, ref,
                              atol=1e-5), k


def test_the_loader_draws_as_the_per_image_path_did(tmp_path, monkeypatch):
    """The real loader (CPU decode) with the batched crops vs the same loader whose train crops are made one image
    at a time by the old path: same keys, boxes and flips (same rng order), pixels within 1/255."""
    info = load_info(build_shards(tmp_path, "train", {}))
    cfg = LoaderConfig(batch_size=4, image_size=24, workers=0, normalize=False)

    def epoch():
        loader = build_loader(LoaderKind.NVJPEG, cfg, Split.TRAIN, info, torch.device("cpu"))
        batches = [(b.keys, b.images.clone()) for b in loader]
        loader.close()
        return batches

    batched = epoch()

    def per_image(jobs, out):
        for job in jobs:
            out[job.slot] = per_image_train(job.image, job.box, job.flip, out.shape[1])

    monkeypatch.setattr(nv, "train_crops", per_image)
    reference = epoch()
    assert [k for k, _ in batched] == [k for k, _ in reference] and len(batched) == 2
    for (_, ours), (_, ref) in zip(batched, reference):
        assert float((ours.float() - ref.float()).abs().max()) <= 1
