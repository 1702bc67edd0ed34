"""The train path's region decode (nvImageCodec), its fallbacks, and the resize / flip into a batch slot."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared
from pipeline.backends.shards import batch_buffer
from pipeline.read import transforms as T

FILES = sorted(shared("imagenet-samples").glob("*.JPEG"))[::40]  # 20 real ImageNet samples


def torchvision_crop(path, box, size: int) -> torch.Tensor:
    from torchvision.transforms import functional as TF

    left, top, w, h = box
    img = Image.open(path).convert("RGB")
    return torch.from_numpy(np.array(TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)))


def mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().mean())


def test_roi_decode_is_the_box_of_the_full_decode():
    pytest.importorskip("nvidia.nvimgcodec")
    data = FILES[0].read_bytes()
    full = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    box = (13, 21, 150, 97)
    roi = T._decode_roi(data, box)
    assert roi is not None and roi.shape == (97, 150, 3)
    assert np.abs(roi.astype(int) - full[21:118, 13:163]).mean() < 0.5  # same libjpeg-turbo, same upsampling


@pytest.mark.parametrize("size", [224, 64])
def test_train_crop_matches_torchvision_with_and_without_nvimgcodec(size, monkeypatch):
    """ROI path and the fallback (nvImageCodec missing: simplejpeg DCT-scaled decode) against torchvision's
    resized_crop with the same box: same pixels up to resampling."""
    for missing, cost in ((False, (0.0, 0.0, 0.0)), (False, T.ROI_COST), (True, T.ROI_COST)):  # (0,0,0): always ROI
        if missing:
            monkeypatch.setattr(T, "nvimgcodec", None)
        monkeypatch.setattr(T, "ROI_COST", cost)
        d = []
        for f in FILES:
            box = T.random_resized_crop_box(*Image.open(f).size, random.Random(f.name))
            out = T._decode_turbo(f.read_bytes(), size, lambda w, h: box)
            assert out is not None and out.shape == (size, size, 3) and out.dtype == torch.uint8
            d.append(mean_abs(out, torchvision_crop(f, box, size)))
        assert max(d) < 10 and np.mean(d) < 3, (missing, size, d)


def test_region_is_decoded_only_where_the_cost_fit_says_it_pays():
    assert T.region_pays(0.1, 0.5) and not T.region_pays(0.9, 1.0)
    assert T.region_pays(0.99, 1.0, cost=(0.0, 0.0, 0.0))


def test_fallback_without_nvimgcodec_never_calls_the_region_decoder(monkeypatch):
    monkeypatch.setattr(T, "nvimgcodec", None)
    assert T._decode_roi(FILES[0].read_bytes(), (0, 0, 10, 10)) is None
    assert "nvimgcodec" not in T.decoder_name()
    out = T.decode_train(FILES[0].read_bytes(), 32, random.Random(0))
    assert out.shape == (32, 32, 3)


def test_decode_train_into_slot_equals_a_new_tensor_and_flips_as_drawn():
    size = 48
    batch = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    flips = set()
    for seed in range(8):
        data = FILES[seed].read_bytes()
        got = T.decode_train(data, size, random.Random(seed), out=batch[1])
        assert got.data_ptr() == batch[1].data_ptr() and torch.equal(got, batch[1])
        assert torch.equal(T.decode_train(data, size, random.Random(seed)), batch[1])
        rng = random.Random(seed)
        box = T.random_resized_crop_box(*Image.open(FILES[seed]).size, rng)
        flip = rng.random() < 0.5  # drawn after the box
        flips.add(flip)
        plain = T._decode_turbo(data, size, lambda w, h: box)
        assert torch.equal(batch[1], plain.flip(1) if flip else plain), seed
    assert flips == {True, False}
    assert not batch[0].any()  # the neighbouring slot is untouched


def test_pil_path_fills_the_slot_and_flips(monkeypatch):
    monkeypatch.setattr(T, "simplejpeg", None)
    data = FILES[1].read_bytes()
    slot = torch.empty((40, 40, 3), dtype=torch.uint8)
    box = lambda w, h: (5, 7, 100, 90)  # noqa: E731
    plain = T._decode_pil(data, 40, box)
    assert T._decode_pil(data, 40, box, out=slot, flip_fn=lambda: True) is slot
    assert torch.equal(slot, plain.flip(1))


def test_a_stream_the_region_decoder_rejects_falls_back():
    pytest.importorskip("nvidia.nvimgcodec")
    data = FILES[2].read_bytes()
    w, h = Image.open(FILES[2]).size
    assert T._decode_roi(data[: len(data) // 3], (0, h - 50, 50, 50)) is None  # rows past the truncation
    assert T._decode_roi(b"\xff\xd8" + b"\0" * 100, (0, 0, 5, 5)) is None


def test_decode_val_into_slot_is_decode_val():
    data = FILES[3].read_bytes()
    slot = torch.empty((64, 64, 3), dtype=torch.uint8)
    assert T.decode_val(data, 64, out=slot) is slot
    assert torch.equal(slot, T.decode_val(data, 64))


def test_worker_batch_buffer_is_shared_memory():
    b = batch_buffer(3, 16, shared=True)
    assert b.shape == (3, 16, 16, 3) and b.dtype == torch.uint8 and b.is_shared() and b.is_contiguous()
    assert not batch_buffer(3, 16, shared=False).is_shared()


def test_worker_batch_buffer_without_the_private_shared_allocator(monkeypatch):
    """A torch without ``UntypedStorage._new_shared``: the buffer is made, then moved to shared memory."""
    monkeypatch.setattr(torch.UntypedStorage, "_new_shared", None, raising=False)
    b = batch_buffer(3, 16, shared=True)
    assert b.shape == (3, 16, 16, 3) and b.dtype == torch.uint8 and b.is_shared() and b.is_contiguous()


def test_resize_without_the_out_kernel_is_the_same(monkeypatch):
    """A torch without the private out= entry point of the antialiased resize: F.interpolate + a copy, same pixels."""
    data = [f.read_bytes() for f in FILES[:6]]
    with_kernel = [T.decode_train(d, 40, random.Random(i)) for i, d in enumerate(data)]
    monkeypatch.setattr(T, "upsample_aa_out", lambda: None)
    for i, d in enumerate(data):
        slot = torch.zeros((40, 40, 3), dtype=torch.uint8)
        assert torch.equal(T.decode_train(d, 40, random.Random(i), out=slot), with_kernel[i]), i
