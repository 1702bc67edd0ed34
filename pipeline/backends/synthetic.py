"""Synthetic backend: random batches made once on the device, for the p_core ceiling.

No decode, no host→device copy: the data wait it shows is the floor of the loop's overhead. Epoch
sizes and class count come from the dataset when one is given, else from its own options
(:class:`~pipeline.backends.SyntheticConfig` in ``LoaderConfig.options``; default: ILSVRC2012's). Labels are
random, so its top-1 is chance level by construction.
"""

from __future__ import annotations

from typing import Iterator

import torch

from pipeline.read import plan as epoch_plan
from pipeline.backends import Batch, LoaderConfig, Split, SyntheticConfig
from pipeline.backends.replay import ReplayResume
from pipeline.dataset import DatasetInfo


class SyntheticLoader(ReplayResume):
    """The ``synthetic`` backend for one split on one rank. Implements ``Loader``."""

    def __init__(self, cfg: LoaderConfig, split: Split, info: DatasetInfo | None, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        self.split = split
        if info is not None:
            self.num_samples = info.split(split.value).num_samples
            num_classes = info.num_classes
        else:
            options = cfg.options_for(SyntheticConfig)
            self.num_samples = options.train_samples if split is Split.TRAIN else options.val_samples
            num_classes = options.classes
        bs = cfg.batch_size
        if split is Split.TRAIN:
            steps = epoch_plan.train_steps_per_epoch(self.num_samples, world_size, bs)
            if steps == 0:
                raise ValueError(f"train split has {self.num_samples} samples, fewer than world size × batch size"
                                 f" = {world_size} × {bs}; lower --batch-size")
            self._sizes = [bs] * steps
        else:
            lo, hi = epoch_plan.split_even(self.num_samples, world_size, rank)
            n = hi - lo
            self._sizes = [bs] * (n // bs) + ([n % bs] if n % bs else [])
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed * 7919 + rank)
        if cfg.normalize:
            images = torch.randn(bs, 3, cfg.image_size, cfg.image_size, generator=gen)
        else:  # the uint8 contract of normalize=False
            images = torch.randint(0, 256, (bs, 3, cfg.image_size, cfg.image_size), generator=gen, dtype=torch.uint8)
        self._images = images.to(device).contiguous(memory_format=torch.channels_last)
        self._labels = torch.randint(0, num_classes, (bs,), generator=gen).to(device)
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self._sizes)

    def set_epoch(self, epoch: int) -> None:
        """Nothing changes between epochs: the same batch is served every step."""

    def __iter__(self) -> Iterator[Batch]:
        for n in self._sizes:
            yield Batch(self._images[:n], self._labels[:n])
