"""DALI decode backend: webdataset shards → ``fn.readers.webdataset`` → DALI decode/crop/normalise → device.

One DALI pipeline per (split, rank), built once and reused for every epoch. On CUDA the JPEGs are decoded
with ``device="mixed"`` (nvJPEG) and cropped, resized and normalised on the GPU; on a machine without CUDA
the same graph runs on the CPU (``device_id=None``). DALI is imported only by this module, so an install
without DALI never imports it.

Epochs follow the same contract as the ``cpu`` backend, although DALI's reader splits an epoch by samples
(rank ``r`` of ``n`` reads samples ``[N*r//n, N*(r+1)//n)`` of the shards concatenated in order):

* train: the reader shuffles through a buffer of ``cfg.shuffle_buffer`` samples and moves every rank on
  to the next part of the split each epoch; every rank yields exactly
  :func:`pipeline.plan.train_steps_per_epoch` full batches (every part holds at least that many samples),
  and the rest of its part is read and dropped;
* val: every rank keeps its own part (``stick_to_shard``) and yields exactly its samples, in shard
  order: the padding DALI adds to the last batch (``pad_last_batch``) is cut off, so every val image is
  seen exactly once over all ranks.

DALI advances its random state (shuffle, crops, flips) from one epoch to the next by itself: the epoch
number given to :meth:`DaliLoader.set_epoch` is recorded but does not re-seed the pipeline, so a run is
reproducible for the same seed and the same sequence of epochs.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch

from pipeline import plan as epoch_plan
from pipeline.backends import IMAGENET_MEAN_255, IMAGENET_STD_255, Batch, LoaderConfig, Split
from pipeline.info import DatasetInfo

INSTALL_HINT = "--loader dali needs NVIDIA DALI: pip install 'imagenet-pipeline[dali]' (nvidia-dali-cuda130)"
READER_NAME = "Reader"


def _import_dali():
    """Import DALI's modules: ``(pipeline_def, fn, types)``.

    Raises:
        ValueError: DALI is not installed (one line, with the install command).
    """
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    return pipeline_def, fn, types


def rank_share(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of the samples DALI's reader gives shard ``rank`` of ``world_size`` in one epoch."""
    return epoch_plan.split_even(num_samples, world_size, rank)


class DaliLoader:
    """The ``dali`` backend for one split on one rank (see module docstring). Implements ``Loader``.

    Yields :class:`Batch` with ``images`` ``N×3×S×S`` float32 (ImageNet-normalised; uint8 0..255 with
    ``normalize=False``; channels-last strides: an
    ``N×S×S×3`` buffer permuted, no layout copy) and ``labels`` ``N`` int64, both on ``device``; ``keys`` is
    empty. Train batches are always full; the last val batch of a rank may be partial.

    Raises:
        ValueError: DALI is not installed, ``info`` is None, option values are invalid, a shard's ``.idx``
            index is missing, or (train) the split has fewer than ``world_size × batch_size`` samples.
    """

    def __init__(self, cfg: LoaderConfig, split: Split, info: DatasetInfo | None, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        pipeline_def, fn, types = _import_dali()
        if info is None:
            raise ValueError("--loader dali needs --data DIR (a folder written by shard-imagenet)")
        if info.remote:
            raise ValueError(f"--loader dali reads shards from disk only, not {info.root}; copy them to a local or "
                             f"mounted folder, or stream them with --loader cpu")
        if cfg.batch_size < 1 or cfg.image_size < 8 or cfg.workers < 0 or not 0 <= rank < world_size:
            raise ValueError(f"bad loader options: batch_size={cfg.batch_size}, image_size={cfg.image_size}, "
                             f"workers={cfg.workers}, rank={rank}, world_size={world_size}")
        self.split = Split(split)
        self.cfg = cfg
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self._root = info.root
        self.num_samples = info.split(self.split.value).num_samples
        self.num_classes = info.num_classes
        self.epoch = 0
        train = self.split is Split.TRAIN
        bs = cfg.batch_size
        if train:
            self._len = epoch_plan.train_steps_per_epoch(self.num_samples, world_size, bs)
            if self._len == 0:
                raise ValueError(f"train split has {self.num_samples} samples, fewer than world size × batch size "
                                 f"= {world_size} × {bs}; lower --batch-size")
            self._keep = self._len * bs  # samples yielded per epoch
        else:
            lo, hi = rank_share(self.num_samples, rank, world_size)
            self._keep = hi - lo
            self._len = -(-self._keep // bs)
        self._pos = 0  # batches of the current reader epoch already taken from the pipeline

        paths = info.shard_paths(self.split.value)
        index_paths = [os.path.splitext(p)[0] + ".idx" for p in paths]
        for p in index_paths:
            if not os.path.isfile(p):
                raise ValueError(f"{p}: missing (DALI needs the .idx next to each shard); re-run shard-imagenet")
        cuda = self.device.type == "cuda"
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if cuda else None
        size = cfg.image_size
        decode_device = "mixed" if cuda else "cpu"
        if cfg.normalize:
            norm = dict(dtype=types.FLOAT, mean=list(IMAGENET_MEAN_255), std=list(IMAGENET_STD_255))
        else:
            norm = dict(dtype=types.UINT8)
        self._dtype = torch.float32 if cfg.normalize else torch.uint8

        @pipeline_def(batch_size=bs, num_threads=max(1, cfg.workers), device_id=device_id,
                      seed=cfg.seed + 1_000_003 * rank, prefetch_queue_depth=2)
        def graph():
            jpegs, labels = fn.readers.webdataset(
                paths=paths, index_paths=index_paths, ext=["jpg", "lbl"], dtypes=[types.UINT8, types.INT32],
                shard_id=rank, num_shards=world_size, random_shuffle=train,
                initial_fill=max(1, cfg.shuffle_buffer), seed=cfg.seed, pad_last_batch=True,
                stick_to_shard=not train, name=READER_NAME)
            if train:
                images = fn.decoders.image_random_crop(jpegs, device=decode_device, output_type=types.RGB,
                                                       random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3],
                                                       num_attempts=10)
                images = fn.resize(images, resize_x=size, resize_y=size)
                images = fn.crop_mirror_normalize(images, output_layout="HWC",
                                                  mirror=fn.random.coin_flip(probability=0.5), **norm)
            else:
                images = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB)
                images = fn.resize(images, resize_shorter=round(size / cfg.crop_pct))
                images = fn.crop_mirror_normalize(images, output_layout="HWC", crop=(size, size), **norm)
            return images, labels

        self._pipe = graph()
        self._pipe.build()
        # With pad_last_batch every rank's part is padded to ceil(N / n) samples, then to whole batches:
        # that many batches make one reader epoch on every rank.
        padded = self._pipe.reader_meta(READER_NAME)["epoch_size_padded"] // world_size
        self._batches_per_epoch = -(-padded // bs)

    def __len__(self) -> int:
        return self._len

    def set_epoch(self, epoch: int) -> None:
        """Record ``epoch``; DALI's own random state moves on by itself at every epoch (see module docstring)."""
        self.epoch = epoch

    def _run(self):
        self._pos += 1
        try:
            return self._pipe.run()
        except RuntimeError as exc:  # DALI stops the pipeline on the first sample it cannot decode
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise ValueError(f"DALI failed reading the {self.split.value} shards in {self._root} ({first[:200]}); "
                             f"DALI cannot skip a damaged sample: run `shard-imagenet verify {self._root}` to find it, "
                             f"or train with --loader cpu, which skips and names such samples") from None

    def _finish_reader_epoch(self) -> None:
        """Read (and drop) the batches left in the reader's epoch, so the next iteration starts a new one."""
        while 0 < self._pos < self._batches_per_epoch:
            self._run()
        self._pos = 0

    def _to_torch(self, images, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """DALI outputs → (``N×3×S×S`` float32 or uint8 channels-last, ``N`` int64) on ``self.device``, owned by torch."""
        if self.device.type == "cuda":
            from nvidia.dali.plugin.pytorch import feed_ndarray

            dense = images.as_tensor()
            nhwc = torch.empty(dense.shape(), dtype=self._dtype, device=self.device)
            feed_ndarray(dense, nhwc, cuda_stream=torch.cuda.current_stream(self.device))
        else:
            nhwc = torch.from_numpy(np.array(images.as_tensor(), copy=True))  # DALI reuses its buffer
        lbl = torch.from_numpy(np.array(labels.as_tensor(), dtype=np.int64).reshape(-1))
        return nhwc.permute(0, 3, 1, 2), lbl.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[Batch]:
        self._finish_reader_epoch()  # an earlier iteration stopped early
        left = self._keep
        for _ in range(self._len):
            images, labels = self._run()
            take = min(left, self.cfg.batch_size)
            x, y = self._to_torch(images, labels)
            left -= take
            if take < x.shape[0]:
                x, y = x[:take], y[:take]
            yield Batch(x, y)
        self._finish_reader_epoch()


__all__ = ["DaliLoader", "INSTALL_HINT", "rank_share"]
