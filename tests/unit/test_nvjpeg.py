"""``nvjpeg`` backend on the CPU (no CUDA here: decode_jpeg decodes on the CPU, the geometry runs on CPU tensors).

The generic contract test in test_loaders.py covers it too; these check its epochs, its agreement with the cpu
backend, its fallbacks and skipped samples, and a training run.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from conftest import shared
from pipeline.backends import LoaderConfig, LoaderKind, Split, build_loader
from pipeline.backends import nvjpeg as nv
from pipeline.backends.shards import SampleDecodeError
from pipeline.read.info import load_info
from pipeline.shard.run import ShardConfig, shard_tree
from pipeline.read.transforms import eval_resize_size
from tools import train as train_cli

CPU = torch.device("cpu")


def epoch(loader, e):
    loader.set_epoch(e)
    return list(loader)


def by_key(batches) -> dict[str, torch.Tensor]:
    return {k: img for b in batches for k, img in zip(b.keys, b.images)}


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(seed: int, w: int = 40, h: int = 30) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_train_epochs_are_disjoint_reshuffled_normalised_and_reproducible(demo_shards):
    info = load_info(demo_shards)
    cfg = LoaderConfig(batch_size=4, image_size=32, workers=2)
    loader = build_loader(LoaderKind.NVJPEG, cfg, Split.TRAIN, info, CPU)
    e0, e1 = epoch(loader, 0), epoch(loader, 1)
    keys0 = [k for b in e0 for k in b.keys]
    keys1 = [k for b in e1 for k in b.keys]
    assert len(e0) == len(loader) == 11 and all(b.images.shape == (4, 3, 32, 32) for b in e0)
    assert len(keys0) == len(set(keys0)) == 44 and len(set(keys1)) == 44
    assert keys0 != keys1
    x = torch.cat([b.images for b in e0])
    assert -3 < float(x.mean()) < 3 and 0.2 < float(x.std()) < 3  # normalised, not 0..255
    again = build_loader(LoaderKind.NVJPEG, cfg, Split.TRAIN, info, CPU)  # same seed: the same crops and flips
    assert torch.equal(torch.cat([b.images for b in epoch(again, 0)]), x)
    assert loader.stats().skipped == () and again.stats().skipped == ()
    loader.close()
    again.close()


# val: every image once, deterministic: tests/unit/test_loaders.py (parametrised over the shard backends)


def val_pixels(kind: LoaderKind, info, size: int) -> dict[str, torch.Tensor]:
    cfg = LoaderConfig(batch_size=4, image_size=size, workers=0, normalize=False)
    return by_key(build_loader(kind, cfg, Split.VAL, info, CPU))


def mean_abs_diffs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[float]:
    assert a.keys() == b.keys()
    return [float((a[k].float() - b[k].float()).abs().mean()) for k in a]


def test_val_pixels_match_the_cpu_backend_and_torchvision(demo_shards):
    """The same geometry (torchvision's Resize + CenterCrop, :func:`resize_box_exact`). Measured mean |diff|
    (0..255) on the 13 demo val images: vs the cpu backend 0.17 at 64 px; vs torchvision's Resize(36) +
    CenterCrop(32) of the full PIL decode 0.11 at 32 px (float32 resampling, rounded once, against PIL's
    8-bit passes)."""
    from torchvision import transforms

    info = load_info(demo_shards)
    ours, ref = val_pixels(LoaderKind.NVJPEG, info, 64), val_pixels(LoaderKind.CPU, info, 64)
    assert len(ours) == 13 and all(v.dtype == torch.uint8 and v.shape == (3, 64, 64) for v in ours.values())
    d = mean_abs_diffs(ours, ref)
    assert np.mean(d) < 0.5 and max(d) < 2, d
    ours = val_pixels(LoaderKind.NVJPEG, info, 32)
    tf = transforms.Compose([transforms.Resize(eval_resize_size(32)), transforms.CenterCrop(32),
                             transforms.PILToTensor()])
    tv = {s["__key__"]: tf(Image.open(io.BytesIO(s["jpg"])).convert("RGB"))
          for s in wds.WebDataset(info.shard_paths("val"), shardshuffle=False)}
    d = mean_abs_diffs(ours, tv)
    assert np.mean(d) < 0.5 and max(d) < 2, d


def test_val_pixels_match_the_cpu_backend_on_real_images(tmp_path):
    """16 real ImageNet samples at 224 px: measured mean |diff| to the cpu backend 0.25 (max 1.84, where the cpu
    backend decodes a large image at 1/2 scale)."""
    src = shared("imagenet-samples")
    for f in sorted(p for p in src.iterdir() if p.suffix == ".JPEG")[::50]:
        for split in ("train", "val"):
            (tmp_path / "tree" / split / f.name[:9]).mkdir(parents=True, exist_ok=True)
            (tmp_path / "tree" / split / f.name[:9] / f.name).symlink_to(f)
    shard_tree(ShardConfig(src=tmp_path / "tree", out=tmp_path / "shards", workers=1, progress=False))
    info = load_info(tmp_path / "shards")
    d = mean_abs_diffs(val_pixels(LoaderKind.NVJPEG, info, 224), val_pixels(LoaderKind.CPU, info, 224))
    assert len(d) == 16 and np.mean(d) < 1 and max(d) < 4, d


def test_nvjpeg_decodable_reads_the_frame_header():
    img = noise(0)
    assert nv.nvjpeg_decodable(encode(img))
    assert nv.nvjpeg_decodable(encode(img, progressive=True))
    assert nv.nvjpeg_decodable(encode(img.convert("L")))
    assert not nv.nvjpeg_decodable(encode(img.convert("CMYK")))  # 4 components: the CPU decoder converts it
    assert not nv.nvjpeg_decodable(encode(img, "PNG"))
    assert not nv.nvjpeg_decodable(b"\x00" * 200)
    assert not nv.nvjpeg_decodable(encode(img)[:20])  # header cut before the frame


def test_batch_decode_retries_one_by_one_and_decode_images_routes_the_rest():
    def t(data: bytes) -> torch.Tensor:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)

    good, bad = encode(noise(1)), b"\xff\xd8" + b"\x00" * 300
    out = nv.batch_decode([t(good), t(bad), t(good)], CPU)  # the batched call fails as a whole
    assert out[1] is None and all(o.shape == (3, 30, 40) and o.dtype == torch.uint8 for o in (out[0], out[2]))
    cmyk, png = encode(noise(2).convert("CMYK")), encode(noise(3), "PNG")
    streams = [t(good), t(cmyk), t(png)]
    got = nv.decode_images(streams, [nv.nvjpeg_decodable(bytes(s.numpy())) for s in streams], CPU)
    assert got[0].shape == (3, 30, 40) and got[2] is None  # PNG: left to PIL
    try:  # torchvision < 0.16 cannot convert CMYK to RGB: then it is left to PIL too (NvjpegLoader decodes it)
        cmyk_on_cpu = nv._decode(streams[1], CPU) is not None
    except RuntimeError:
        cmyk_on_cpu = False
    assert (got[1].shape == (3, 30, 40)) if cmyk_on_cpu else got[1] is None


def build_shards(tmp_path: Path, split: str, replace: dict[int, bytes]) -> Path:
    """A shard set of 8 train and 8 val samples (2 classes, one shard each); the jpg of sample ``i`` of ``split``
    replaced by ``replace[i]``, padded with zero bytes to the member's size (the recorded sizes still hold)."""
    src = tmp_path / "src"
    for s in ("train", "val"):
        for c in ("a", "b"):
            for i in range(4):
                path = src / s / c / f"{c}{i}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                noise(i + 10 * (c == "b") + 100 * (s == "val"), 64, 48).save(path, "JPEG", quality=95)
    out = tmp_path / "out"
    shard_tree(ShardConfig(src=src, out=out, shard_size=100, workers=1, progress=False))
    tar = out / f"imagenet-{split}-000000.tar"
    raw = bytearray(tar.read_bytes())
    with tarfile.open(tar) as tf:
        jpgs = [m for m in tf.getmembers() if m.name.endswith(".jpg")]
    for i, data in replace.items():
        m = jpgs[i]
        assert len(data) <= m.size
        raw[m.offset_data:m.offset_data + m.size] = data + b"\x00" * (m.size - len(data))
    tar.write_bytes(bytes(raw))
    return out


def test_cmyk_and_png_decode_and_a_damaged_val_sample_is_left_out_and_named(tmp_path, capsys):
    flat = Image.new("RGB", (64, 48), (200, 40, 90))
    data = build_shards(tmp_path, "val", {1: encode(flat.convert("CMYK")), 2: encode(flat, "PNG"),
                                          3: b"\x00" * 64})
    info = load_info(data)
    cfg = LoaderConfig(batch_size=4, image_size=32, workers=1, normalize=False)
    val = build_loader(LoaderKind.NVJPEG, cfg, Split.VAL, info, CPU)
    batches = list(val)
    assert sum(len(b.keys) for b in batches) == 7 and len(val.stats().skipped) == 1
    ref = by_key(build_loader(LoaderKind.CPU, cfg, Split.VAL, info, CPU))
    ours = by_key(batches)
    assert ours.keys() == ref.keys()
    for k in ours:  # CMYK (CPU decode_jpeg) and PNG (PIL) come out as the cpu backend's pixels
        assert float((ours[k].float() - ref[k].float()).abs().mean()) < 2, k
    err = capsys.readouterr().err
    assert "warning: skipped sample" in err and "imagenet-val-000000.tar: 00000" in err
    assert "cannot decode (UnidentifiedImageError: not a decodable image)" in val.stats().skipped[0]
    val.close()


def test_train_keeps_full_batches_past_a_damaged_sample(tmp_path):
    info = load_info(build_shards(tmp_path, "train", {0: b"\x00" * 64}))
    train = build_loader(LoaderKind.NVJPEG, LoaderConfig(batch_size=4, image_size=32, workers=0), Split.TRAIN,
                         info, CPU)
    batches = epoch(train, 0)
    assert len(batches) == len(train) == 2 and all(b.images.shape[0] == len(b.keys) == 4 for b in batches)
    bad_key = train.stats().skipped[0].split(": ")[1]
    assert len(train.stats().skipped) == 1 and bad_key not in {k for b in batches for k in b.keys}


def test_a_batch_that_decodes_nothing_is_one_error(tmp_path):
    info = load_info(build_shards(tmp_path, "val", {0: b"\x00" * 64}))
    val = build_loader(LoaderKind.NVJPEG, LoaderConfig(batch_size=1, image_size=32, workers=0), Split.VAL,
                       info, CPU)
    with pytest.raises(SampleDecodeError, match=r"^no sample of a batch decodes; first: .*imagenet-val-000000"):
        list(val)


def test_few_train_steps_with_the_nvjpeg_loader(demo_shards, tmp_path, capsys):
    out = tmp_path / "m.json"
    rc = train_cli.main(["--data", str(demo_shards), "--loader", "nvjpeg", "--epochs", "2", "--max-steps", "3",
                         "--batch-size", "4", "--image-size", "32", "--workers", "1", "--metrics-json", str(out),
                         "--device", "cpu"])  # no GPU here: its CPU path, accepted by name
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["steps"] == 3 and m["total_trained_images"] == 12 and m["eval_images"] == m["val_samples"] == 13
    assert m["p_core"] >= m["p_train"] >= m["p_whole"] > 0 and 0 <= m["acc1"] <= 100
    assert m["skipped_samples"] == 0
    assert "train: nvjpeg loader" in capsys.readouterr().out


class RecordingCuda:
    """Stand-ins for torch.cuda's Stream / Event / stream / current_stream that log what is done with them."""

    def __init__(self):
        self.log, self.current = [], []
        self.consumer = self.Stream(self, "consumer")

    class Stream:
        def __init__(self, cuda, name="side"):
            self.cuda, self.name = cuda, name

        def synchronize(self):
            self.cuda.log.append(("host waits", self.name))

        def wait_event(self, event):
            self.cuda.log.append(("waits", self.name, event.batch))

    class Tensor:
        def __init__(self, cuda, i):
            self.cuda, self.i = cuda, i

        def record_stream(self, stream):
            self.cuda.log.append(("recorded", self.i, stream.name))

    def install(self, monkeypatch) -> None:
        cuda = self

        class Event:
            def record(self, stream):
                self.batch = cuda.log[-1][1]
                cuda.log.append(("event", stream.name, self.batch))

        @contextlib.contextmanager
        def use(stream):
            cuda.current.append(stream.name)
            yield
            cuda.current.pop()

        monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: self.Stream(cuda))
        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "stream", use)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: self.consumer)


def test_side_stream_order_on_cuda_with_recording_streams(monkeypatch):
    """The CUDA-only hand-over logic of the staging prefetcher's inline form with host_sync, run here with recording
    stand-ins for torch.cuda's streams and events: each batch is made with the side stream current, right after a host wait for that
    stream; batch i+1 is queued before batch i is handed out; the consumer waits for batch i's own event and
    records batch i's tensors on its stream."""
    from pipeline.backends import Batch
    from pipeline.backends.staging import prefetched

    cuda = RecordingCuda()
    cuda.install(monkeypatch)

    def to_batch(i):
        cuda.log.append(("made", i, cuda.current[-1]))
        return Batch(cuda.Tensor(cuda, i), cuda.Tensor(cuda, i), (str(i),))

    got = []
    for batch in prefetched(range(3), torch.device("cuda"), to_batch, host_sync=True):
        i = int(batch.keys[0])
        got.append(i)
        handed = cuda.log.index(("waits", "consumer", i))
        assert cuda.log[handed + 1:handed + 3] == [("recorded", i, "consumer")] * 2
    assert got == [0, 1, 2]
    order = [e for e in cuda.log if e[0] != "recorded"]
    assert order == [("host waits", "side"), ("made", 0, "side"), ("event", "side", 0),
                     ("host waits", "side"), ("made", 1, "side"), ("event", "side", 1), ("waits", "consumer", 0),
                     ("host waits", "side"), ("made", 2, "side"), ("event", "side", 2), ("waits", "consumer", 1),
                     ("waits", "consumer", 2)]


def test_threaded_side_stream_rules_with_recording_streams(monkeypatch):
    """The threaded form (what nvjpeg runs: depth 2, host_sync) keeps the stream rules per thread: the producer
    thread selects the device, makes each batch with ITS side stream current right after a host wait for that
    stream and records one event per batch; the consumer's stream waits for batch i's own event (recorded
    before) and records batch i's tensors on itself; the order is the items' order."""
    import threading

    from pipeline.backends import Batch
    from pipeline.backends.staging import prefetched

    log, local, lock = [], threading.local(), threading.Lock()

    def note(*entry):
        with lock:
            log.append((threading.current_thread().name, *entry))

    class Stream:
        def __init__(self, name="side"):
            self.name = name

        def synchronize(self):
            note("host waits", self.name)

        def wait_event(self, event):
            note("waits", self.name, event.batch)

    class Event:
        def record(self, stream):
            self.batch = local.made
            note("event", stream.name, self.batch)

    class Tensor:
        def __init__(self, i):
            self.i = i

        def record_stream(self, stream):
            note("recorded", self.i, stream.name)

    @contextlib.contextmanager
    def use(stream):
        local.current = stream.name
        yield
        local.current = None

    consumer = Stream("consumer")
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "stream", use)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: consumer)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: note("set_device", index))

    def to_batch(i):
        local.made = i
        note("made", i, getattr(local, "current", None))
        return Batch(Tensor(i), Tensor(i), (str(i),))

    got = [int(b.keys[0]) for b in prefetched(range(4), torch.device("cuda", 0), to_batch, host_sync=True, depth=2)]
    assert got == [0, 1, 2, 3]
    producer = [e[1:] for e in log if e[0] == "batch-producer"]
    main = [e[1:] for e in log if e[0] == threading.current_thread().name]
    assert producer == [("set_device", 0)] + [e for i in range(4) for e in
                                              (("host waits", "side"), ("made", i, "side"), ("event", "side", i))]
    assert main == [e for i in range(4) for e in (("waits", "consumer", i), *[("recorded", i, "consumer")] * 2)]
    for i in range(4):
        me = threading.current_thread().name
        assert log.index(("batch-producer", "event", "side", i)) < log.index((me, "waits", "consumer", i))


def test_a_cuda_device_torchvision_cannot_decode_on_is_a_one_line_error(monkeypatch):
    def no_nvjpeg(streams, device):
        raise RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support\nmore detail")

    monkeypatch.setattr(nv, "_decode", no_nvjpeg)
    with pytest.raises(ValueError) as err:
        nv._check_device_decoder(torch.device("cuda", 0))
    msg = str(err.value)
    assert "\n" not in msg and "cuda:0" in msg and "not compiled with nvJPEG" in msg and "--loader cpu" in msg
