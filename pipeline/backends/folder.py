"""``folder`` backend: the torchvision baseline users compare against.

``torchvision.datasets.ImageFolder`` over ``<data>/train`` and ``<data>/val`` (one JPEG file per sample,
no shards), PIL decode with torchvision's own ``RandomResizedCrop`` + ``RandomHorizontalFlip`` (train) or
``Resize`` + ``CenterCrop`` (val), ``DistributedSampler``-style splitting, DataLoader workers, uint8 batches
normalised on the device. Epochs follow the same contract as the other backends.

The workers end each sample as an ``S×S×3`` (HWC) uint8 tensor, so the DataLoader's default collate stacks the
batch as ``N×S×S×3`` uint8 (in shared memory, in a worker) and, on CUDA, pins it: that tensor goes to
:func:`pipeline.backends.to_device_prefetched` untouched (its non-blocking copy really is asynchronous, and the
training process spends no time on a layout copy); on the device the NHWC batch viewed as NCHW is channels-last.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset
from torchvision import datasets, transforms

from pipeline.read import plan as epoch_plan
from pipeline.backends import Batch, LoaderConfig, ReplayResume, Split, to_device_prefetched
from pipeline.dataset import DatasetInfo
from pipeline.read.tarstream import is_url


class _FixedClassesImageFolder(datasets.ImageFolder):
    """ImageFolder whose class list is given (train's), so val labels index the same classes as train's."""

    def __init__(self, root: str, classes: list[str], **kwargs):
        self._given = classes
        super().__init__(root, **kwargs)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        present = sorted(e.name for e in os.scandir(directory) if e.is_dir())
        unknown = [c for c in present if c not in set(self._given)]
        if unknown:
            raise FileNotFoundError(f"class folder(s) {', '.join(unknown[:3])} not in train/")
        return list(self._given), {c: i for i, c in enumerate(self._given)}


def pil_to_hwc_tensor(img) -> torch.Tensor:
    """PIL RGB image → ``H×W×3`` uint8 tensor (HWC, the layout the batch keeps up to the device)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))


class FolderLoader(ReplayResume):
    """The ``folder`` backend for one split on one rank. Implements ``Loader``.

    Yields ``N×3×S×S`` channels-last images (float32 normalised, or uint8 with ``normalize=False``) and ``N``
    int64 labels.

    Raises:
        ValueError: no ``data_root`` in the config, or ``<data_root>/<split>`` is not an ImageFolder tree.
    """

    def __init__(self, cfg: LoaderConfig, split: Split, info: DatasetInfo | None, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        if cfg.data_root is None or is_url(cfg.data_root):
            raise ValueError("--loader folder needs --data DIR: a local ImageFolder root holding train/<class>/ and "
                             "val/<class>/")
        size = cfg.image_size
        if split is Split.TRAIN:
            tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                     pil_to_hwc_tensor])
        else:
            tf = transforms.Compose([transforms.Resize(round(size / cfg.crop_pct)), transforms.CenterCrop(size),
                                     pil_to_hwc_tensor])
        root = Path(cfg.data_root) / split.value
        try:
            # class indices always come from train/ (val/ may hold a subset of the classes, as in a split run)
            classes = datasets.folder.find_classes(str(Path(cfg.data_root) / Split.TRAIN.value))[0]
            dataset = _FixedClassesImageFolder(str(root), classes, transform=tf, allow_empty=split is Split.VAL)
        except (FileNotFoundError, OSError) as exc:
            raise ValueError(f"{root}: not an ImageFolder tree ({exc}); give --data the folder holding "
                             f"train/<class>/ and val/<class>/") from None
        self.split = split
        self.device = device
        self.normalize = cfg.normalize
        self.num_samples = len(dataset)
        self.num_classes = len(dataset.classes)
        self.classes = tuple(dataset.classes)
        # the workers' torch seeds (base seed + worker id) come from this generator, re-seeded by (seed, epoch, rank)
        # in set_epoch: an epoch's crops do not depend on the global RNG, so a resume's replay is exact
        self._seed, self._rank = cfg.seed, rank
        self._generator = torch.Generator()
        self._generator.manual_seed(self._epoch_seed(0))
        common = dict(batch_size=cfg.batch_size, num_workers=cfg.workers, pin_memory=device.type == "cuda",
                      generator=self._generator)
        if split is Split.TRAIN:
            if epoch_plan.train_steps_per_epoch(self.num_samples, world_size, cfg.batch_size) == 0:
                raise ValueError(f"train split has {self.num_samples} samples, fewer than world size × batch size"
                                 f" = {world_size} × {cfg.batch_size}; lower --batch-size")
            self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                              seed=cfg.seed, drop_last=True)
            self.loader = DataLoader(dataset, sampler=self.sampler, drop_last=True, **common)
        else:
            lo, hi = epoch_plan.split_even(self.num_samples, world_size, rank)
            self.sampler = None
            self.loader = DataLoader(Subset(dataset, range(lo, hi)), shuffle=False, **common)

    def __len__(self) -> int:
        return len(self.loader)

    def _epoch_seed(self, epoch: int) -> int:
        return (self._seed * 1_000_003 + epoch) * 1009 + self._rank

    def set_epoch(self, epoch: int) -> None:
        self._generator.manual_seed(self._epoch_seed(epoch))
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Batch]:
        # the DataLoader's own N×S×S×3 uint8 tensors (pinned on CUDA), handed over as they are
        host = ((images, labels, ()) for images, labels in self.loader)
        yield from to_device_prefetched(host, self.device, self.normalize)
