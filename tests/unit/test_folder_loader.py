"""``folder`` backend: the batch the DataLoader makes (and pins, on CUDA) is the one handed to the device copy."""

from __future__ import annotations

import torch

from pipeline.backends import FolderConfig, LoaderConfig, LoaderKind, Split, build_loader
from pipeline.backends import folder as folder_backend

CPU = torch.device("cpu")


class Recording:
    """Wraps the FolderLoader's DataLoader and keeps every batch it yields."""

    def __init__(self, loader):
        self.inner = loader
        self.batches = []

    def __iter__(self):
        for batch in self.inner:
            self.batches.append(batch)
            yield batch

    def __len__(self):
        return len(self.inner)


def test_folder_hands_the_dataloaders_own_nhwc_uint8_batches_to_the_device_copy(demo_shards, monkeypatch):
    """Fails on the old code, which made an unpinned NHWC copy (permute + contiguous) in the training process."""
    handed = []

    def spy(host_batches, device, normalize=True):
        for item in host_batches:
            handed.append(item)
            yield item

    monkeypatch.setattr(folder_backend, "to_device_prefetched", spy)
    cfg = LoaderConfig(batch_size=4, image_size=32, workers=2, options=(FolderConfig(demo_shards.parent / "tree"),))
    for split in Split:
        loader = build_loader(LoaderKind.FOLDER, cfg, split, None, CPU)
        loader.loader = Recording(loader.loader)
        handed.clear()
        assert len(list(loader)) == len(loader) > 0
        assert len(handed) == len(loader.loader.batches) == len(loader)
        for host, made_host in zip(handed, loader.loader.batches):
            images, labels, made, made_labels = host.images, host.labels, made_host.images, made_host.labels
            assert images.data_ptr() == made.data_ptr() and labels.data_ptr() == made_labels.data_ptr()
            assert images.dtype == torch.uint8 and images.shape[1:] == (32, 32, 3) and images.is_contiguous()
            assert images.is_shared()  # collated in a worker, straight into shared memory


def test_folder_batches_on_the_device_are_channels_last_and_match_the_hwc_crop(demo_shards):
    cfg = LoaderConfig(batch_size=4, image_size=32, workers=0, options=(FolderConfig(demo_shards.parent / "tree"),),
                       normalize=False)
    loader = build_loader(LoaderKind.FOLDER, cfg, Split.VAL, None, CPU)
    batches = list(loader)
    raw = [host.images for host in loader.loader]  # val is deterministic: the same crops again
    for b, hwc in zip(batches, raw):
        assert b.images.shape[1:] == (3, 32, 32) and b.images.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(b.images, hwc.permute(0, 3, 1, 2))
