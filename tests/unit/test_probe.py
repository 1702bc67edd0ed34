"""Per-stage probes measure the backends' own code: a slower crop in a backend shows in io-bench's figure, DALI's
figures come from graphs built by the backend's ``make_graph``, and the probe reads ``stats()`` snapshots."""

from __future__ import annotations

import dataclasses
import time
import types

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.backends import (STAGES, FolderConfig, LoaderConfig, LoaderKind, LoaderStats, Split, StageSeconds,
                               StageTimes, build_loader)
from pipeline.backends import folder as folder_backend
from pipeline.backends import probe
from pipeline.read.info import load_info
from pipeline.read import transforms as cpu_transforms
from train.iobench.stages import StageCosts, measure_stages

SLEEP = 0.02  # seconds a patched crop sleeps per image


def test_cpu_augment_follows_the_crop_the_backend_calls(demo_shards, monkeypatch):
    real, calls = cpu_transforms._resize_crop, []

    def slow_crop(*args, **kwargs):
        calls.append(1)
        time.sleep(SLEEP)
        return real(*args, **kwargs)

    monkeypatch.setattr(cpu_transforms, "_resize_crop", slow_crop)  # what decode_train crops with
    c = measure_stages("cpu", load_info(demo_shards), None, image_size=32, batch_size=4, max_samples=8)
    assert c.samples == 8 and len(calls) >= 12  # the warm-up batch and the 8 timed images
    assert c.seconds_per_image.augment >= SLEEP
    assert c.seconds_per_image.decode < c.seconds_per_image.augment


def test_folder_augment_follows_its_torchvision_crop(demo_shards, monkeypatch):
    real = folder_backend.transforms

    class SlowCrop(real.RandomResizedCrop):
        def forward(self, img):
            time.sleep(SLEEP)
            return super().forward(img)

    # only folder.py's view of torchvision.transforms changes: its crop_transform builds SlowCrop
    monkeypatch.setattr(folder_backend, "transforms", types.SimpleNamespace(**{**vars(real),
                                                                             "RandomResizedCrop": SlowCrop}))
    c = measure_stages("folder", None, demo_shards.parent / "tree", image_size=32, batch_size=4, max_samples=8)
    assert c.backend == "folder" and c.samples == 8
    assert c.seconds_per_image.augment >= SLEEP
    assert c.seconds_per_image.decode < c.seconds_per_image.augment


def test_dali_stages_are_timed_on_graphs_made_by_make_graph(demo_shards, monkeypatch):
    pytest.importorskip("nvidia.dali")
    from pipeline.backends import dali_stages

    real, calls, pipes = dali_stages.make_graph, [], []

    def spy(cfg, *args, **kwargs):
        calls.append((cfg, kwargs.get("last_stage", "augment")))
        graph = real(dataclasses.replace(cfg, image_size=40), *args, **kwargs)  # a change the figures must follow

        def build(**pipe_kwargs):
            pipes.append(graph(**pipe_kwargs))
            return pipes[-1]

        return build

    monkeypatch.setattr(dali_stages, "make_graph", spy)
    c = measure_stages("dali", load_info(demo_shards), None, image_size=32, batch_size=4, max_samples=8)
    assert [stage for _, stage in calls] == ["read", "decode", "augment"]
    assert all(cfg.workers == 0 and cfg.shuffle_buffer == 1 and not cfg.normalize for cfg, _ in calls)
    assert c.backend == "dali" and c.samples == 8 and tuple(dict(c.seconds_per_image.items())) == STAGES
    images, _ = pipes[-1].run()  # the whole graph that was timed is the spy's: 40 px, uint8 HWC
    x = np.array(images.as_tensor())
    assert x.shape == (4, 40, 40, 3) and x.dtype == np.uint8
    reader_out, _ = pipes[0].run()  # the cut after the reader yields the JPEG bytes
    assert bytes(np.array(reader_out[0])[:2]) == b"\xff\xd8"


class FakeLoader:
    """A loader whose counters grow by known amounts: 100 s a stage for the first batch, then 1, 2, 3, 4 s. Once
    built, no attribute of it may be set from outside (its counters can only grow by iterating)."""

    def __init__(self, batches_per_epoch: int, batch: int = 4):
        self.counts = {"seconds": dict.fromkeys(STAGES, 0.0), "samples": 0, "batches": 0}
        self.batches_per_epoch, self.batch = batches_per_epoch, batch
        self.epochs, self.threads, self.closed = [], set(), [False]
        self._built = True

    def __setattr__(self, name, value):
        assert not getattr(self, "_built", False), f"{name} set on the loader from outside"
        object.__setattr__(self, name, value)

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __iter__(self):
        for _ in range(self.batches_per_epoch):
            cost = 100.0 if self.counts["batches"] == 0 else 1.0
            for i, k in enumerate(STAGES):
                self.counts["seconds"][k] += cost * (i + 1)
            self.counts["samples"] += self.batch
            self.counts["batches"] += 1
            self.threads.add(torch.get_num_threads())
            yield object()

    def stats(self) -> LoaderStats:
        return LoaderStats((), StageTimes(StageSeconds.from_named(self.counts["seconds"]), self.counts["samples"]))

    def close(self) -> None:
        self.closed[0] = True


@pytest.mark.parametrize("batches_per_epoch", [10, 1])
def test_probe_by_stats_reads_snapshot_differences_after_the_warm_up(monkeypatch, batches_per_epoch):
    built = []

    def fake_build(kind, cfg, split, info, device):
        built.append((kind, cfg, split, info, device))
        built.append(FakeLoader(batches_per_epoch))
        return built[-1]

    monkeypatch.setattr(probe, "build_loader", fake_build)
    cfg = LoaderConfig(batch_size=4, image_size=32, workers=3, shuffle_buffer=50, options=(FolderConfig("tree"),))
    c = probe.probe_by_stats("folder", cfg, "val", "info", max_samples=8)
    (kind, used, split, info, device), loader = built
    assert kind is LoaderKind.FOLDER and split is Split.VAL and device == torch.device("cpu")
    assert info is None  # an image-tree backend is given no shard folder
    assert (used.workers, used.shuffle_buffer, used.normalize) == (0, 1, False)
    assert used.options_for(FolderConfig).data_root == "tree"
    # a one-batch epoch: the warm-up took it, so the next epoch is timed (one batch of 4)
    assert c.samples == (8 if batches_per_epoch > 1 else 4) and loader.epochs == ([] if batches_per_epoch > 1 else [1])
    assert c.seconds_per_image.as_dict() == {"read": 0.25, "decode": 0.5, "augment": 0.75, "collate": 1.0}  # no warm-up's 100 s
    assert loader.threads == {1} and loader.closed[0] and c.wall_seconds > 0


def test_probe_refuses_a_loader_without_stage_timers_and_bad_options(monkeypatch):
    class Untimed(FakeLoader):
        def stats(self) -> LoaderStats:
            return LoaderStats()

    monkeypatch.setattr(probe, "build_loader", lambda *a: Untimed(3))
    with pytest.raises(ValueError, match="times no stages"):
        probe.probe_by_stats("cpu", LoaderConfig(batch_size=4), "train", None, 8)
    with pytest.raises(ValueError, match="bad options"):
        probe.probe_by_stats("cpu", LoaderConfig(batch_size=4), "train", None, 0)
    with pytest.raises(ValueError, match="no stages to measure for the synthetic backend"):
        measure_stages("synthetic", None, None, 32, 4, 8)


def test_stage_costs_json_is_the_results_json_entry():
    c = StageCosts("cpu", 2, StageSeconds.from_named({"collate": 0.4, "read": 0.1, "augment": 0.3, "decode": 0.2}),
                   1.5, "how")
    j = c.to_json()
    assert list(j) == ["backend", "samples", "seconds_per_image", "total_seconds_per_image", "wall_seconds", "note"]
    assert list(j["seconds_per_image"]) == list(STAGES) and j["total_seconds_per_image"] == pytest.approx(1.0)
    assert (j["backend"], j["samples"], j["wall_seconds"], j["note"]) == ("cpu", 2, 1.5, "how")


@pytest.mark.parametrize("workers", [0, 2])
def test_folder_stats_cover_the_batches_handed_out_and_skip_nothing(demo_shards, workers):
    cfg = LoaderConfig(batch_size=4, image_size=32, workers=workers,
                       options=(FolderConfig(demo_shards.parent / "tree"),))
    loader = build_loader(LoaderKind.FOLDER, cfg, Split.TRAIN, None, torch.device("cpu"))
    assert loader.stats() == LoaderStats((), StageTimes())
    taken = [b for _, b in zip(range(3), loader)]
    s = loader.stats()
    assert s.skipped == () and s.stages.samples == sum(b.labels.shape[0] for b in taken) == 12
    assert all(v > 0 for v in s.stages.seconds.as_dict().values())


def test_folder_val_pixels_are_torchvisions_resize_center_crop(demo_shards):
    from torchvision import transforms

    root = demo_shards.parent / "tree"
    cfg = LoaderConfig(batch_size=4, image_size=32, workers=0, options=(FolderConfig(root),), normalize=False)
    loader = build_loader(LoaderKind.FOLDER, cfg, Split.VAL, None, torch.device("cpu"))
    got = torch.cat([b.images for b in loader]).permute(0, 2, 3, 1)
    tf = transforms.Compose([transforms.Resize(cpu_transforms.eval_resize_size(32, cfg.crop_pct)), transforms.CenterCrop(32)])
    files = [p for p, _ in loader.loader.dataloader.dataset.dataset.samples]
    want = torch.stack([torch.from_numpy(np.array(tf(Image.open(p).convert("RGB")))) for p in files])
    assert torch.equal(got, want)
