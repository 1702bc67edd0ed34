"""DALI decode backend: webdataset shards → ``fn.readers.webdataset`` → DALI decode/crop/normalise → device.

One DALI pipeline per (split, rank), built once and reused for every epoch. On CUDA the JPEGs are decoded
with ``device="mixed"`` (nvJPEG) and cropped, resized and normalised on the GPU; on a machine without CUDA
the same graph runs on the CPU (``device_id=None``). DALI is imported only by this module, so an install
without DALI never imports it. NVIDIA's ResNet50 tuning (the hardware JPEG decoder's share, nvJPEG's buffer
paddings, the labels emitted on the GPU, where the images are normalised) is the backend's own sub-config,
:class:`~pipeline.backends.dali_config.DaliConfig` (its defaults and their sources are there).

Epochs follow the same contract as the ``cpu`` backend, although DALI's reader splits an epoch by samples
(rank ``r`` of ``n`` reads samples ``[N*r//n, N*(r+1)//n)`` of the shards concatenated in order):

* train: the reader shuffles through a buffer of ``cfg.shuffle_buffer`` samples and moves every rank on
  to the next part of the split each epoch; every rank yields exactly
  :func:`pipeline.read.plan.train_steps_per_epoch` full batches (every part holds at least that many samples),
  and the rest of its part is read and dropped;
* val: every rank keeps its own part (``stick_to_shard``) and yields exactly its samples, in shard
  order: the padding DALI adds to the last batch (``pad_last_batch``) is cut off, so every val image is
  seen exactly once over all ranks.

DALI advances its random state (shuffle, crops, flips) from one epoch to the next by itself: the epoch
number given to :meth:`DaliLoader.set_epoch` is recorded but does not re-seed the pipeline, so a run is
reproducible for the same seed and the same sequence of epochs, and a rebuilt pipeline starts again at
the first epoch's order. Resumes are therefore made exact with DALI's own checkpointing (the train
pipeline is built with ``enable_checkpointing=True``; no throughput cost measurable here):

* train: :meth:`DaliLoader.state_dict` holds DALI's serialized checkpoint (the reader's progress and shuffle
  RNG, the crop and flip RNGs: ~370 bytes, taken in ~0.01 ms) and the position it belongs to. A new loader
  given ``set_epoch(e)``, ``load_state_dict(state)``, ``iter_from(k)``, where ``(e, k)`` is that position
  (an epoch's end is ``(e + 1, 0)`` or, the same, ``(e, len(loader))``), rebuilds the pipeline from it and
  yields bitwise the images and labels the saving loader yielded for the rest of epoch ``e`` and for every
  later epoch, without reading any batch again (no replay). It must be built for the same split, world
  size, rank, seed, batch size, shuffle buffer, image size, normalisation, decode device (``cpu`` /
  ``mixed``), shards and DALI version: each difference is named in a one-line ValueError, as is a garbled
  state or a resume at another position. ``--workers`` may differ (DALI's output does not depend on its
  thread count). The one exception is a state saved at an epoch end by a loader of another image size
  (progressive resizing): the saving run built a new loader for the next epoch, so this loader starts from
  a fresh pipeline, as that new loader did;
* an empty state (a checkpoint written before this backend kept state) falls back to replaying the epoch's
  first ``k`` batches on this pipeline: exact when the resumed epoch is the first one the original loader
  served (epoch 0 without progressive resizing); in a later epoch the data order differs from the original
  run's, and a warning says so;
* val reads in a fixed order and keeps no state (``{}``): ``iter_from`` replays, which is exact.

Damaged or hand-made shards never reach DALI unchecked (DALI raises deep in its C++ code on them, or crashes the
process): :func:`~pipeline.backends.dali_graph.checked_shards` checks each shard's size against the manifest and
parses its ``.idx`` first (:mod:`pipeline.read.shardcheck`), and a shard that ``_info.json`` lists with 0 samples
is left out of DALI's shard list with a warning (DALI refuses an empty index; the ``cpu`` backend reads it as 0
samples). Every problem found
there, and every error DALI itself raises later (``missing_component_behavior="error"``; an undecodable JPEG), is
a one-line ValueError naming the shard (and the sample key where known) and ``shard-imagenet verify``.

The loader times no stage while it trains (DALI's executor overlaps them);
:func:`pipeline.backends.dali_stages.measure_stages`, the backend's io-bench probe, times them by difference of
partial pipelines cut from the same graph (:func:`pipeline.backends.dali_graph.make_graph`).

This module holds the loader (:class:`DaliLoader`), its state (:data:`STATE_FORMAT`) and :func:`rank_share`; the
graph, the shard checks and DALI's error lines are in :mod:`pipeline.backends.dali_graph`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from types import MappingProxyType
from typing import Iterator

import torch

from pipeline.backends import Batch, DaliConfig, DaliOutput, LoaderConfig, LoaderStats, Split
from pipeline.backends.replay import replay_from
from pipeline.backends.dali_graph import (GRAPH_STAGES, INSTALL_HINT, READER_NAME, check_options,  # noqa: F401
                                          checked_shards, dali_version, emitted, failure, host_batch, host_labels,
                                          import_dali, make_graph)
from pipeline.backends.staging import normalize_on_device
from pipeline.dataset import DatasetInfo
from pipeline.read import plan as epoch_plan

STATE_FORMAT = 1  # version of the dict DaliLoader.state_dict returns
_TORCH_DTYPE = MappingProxyType({DaliOutput.FLOAT32: torch.float32, DaliOutput.FLOAT16: torch.float16,
                                 DaliOutput.UINT8: torch.uint8})  # DALI's image output -> its torch dtype
_STATE_KEYS = MappingProxyType({"format": int, "dali": str, "config": dict, "epoch": int, "batch": int,
                                "reader_batch": int, "pipeline": bytes, "sha256": str})


def rank_share(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of the samples DALI's reader gives shard ``rank`` of ``world_size`` in one epoch."""
    return epoch_plan.split_even(num_samples, world_size, rank)


def finish_images(nhwc: torch.Tensor, output: DaliOutput, normalize: bool, device: torch.device) -> torch.Tensor:
    """DALI's ``N×S×S×3`` image batch (on ``device``, or on the host for a ``cpu`` device), as :func:`emitted` said
    it holds, → the ``N×3×S×S`` channels-last batch the loader yields (strides permuted, no layout copy): float32
    ImageNet-normalised (float32 as is; float16 widened by one cast, which keeps the strides; uint8 normalised by
    :func:`pipeline.backends.staging.normalize_on_device`), or with ``normalize`` off the uint8 values."""
    if normalize and output is DaliOutput.UINT8:
        return normalize_on_device(nhwc, device)
    nchw = nhwc.permute(0, 3, 1, 2)
    return nchw.float() if normalize and output is DaliOutput.FLOAT16 else nchw


def _data_digest(info: DatasetInfo, split: str) -> str:
    """A short digest of a split's shards (names, sample counts, manifest sha256s): changes when re-sharded."""
    entry = info.split(split)
    shas = {e.filename: e.sha256 for e in info.manifest.get(split, ())}
    blob = json.dumps([list(entry.filenames), list(entry.shard_lengths), [shas.get(f, "") for f in entry.filenames]])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _parse_state(state) -> dict:
    """The fields of a train state, type-checked; raises ValueError (one line) naming what is wrong."""
    if not isinstance(state, dict):
        raise ValueError(f"DALI loader state is garbled: a {type(state).__name__}, not a dict")
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"DALI loader state has format {state.get('format')!r}, this loader reads {STATE_FORMAT}")
    for key, kind in _STATE_KEYS.items():
        value = state.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"DALI loader state is garbled: {key!r} is {type(value).__name__}, not {kind.__name__}")
    if hashlib.sha256(state["pipeline"]).hexdigest() != state["sha256"]:
        raise ValueError("DALI loader state is garbled: its pipeline checkpoint does not match its sha256")
    if state["epoch"] < 0 or state["batch"] < 0 or state["reader_batch"] < 0:
        raise ValueError(f"DALI loader state is garbled: negative position (epoch {state['epoch']}, batch "
                         f"{state['batch']}, reader batch {state['reader_batch']})")
    return state


class DaliLoader:
    """The ``dali`` backend for one split on one rank (see module docstring). Implements ``Loader``.

    Yields :class:`Batch` with ``images`` ``N×3×S×S`` float32 (ImageNet-normalised; uint8 0..255 with
    ``normalize=False``; channels-last strides: an
    ``N×S×S×3`` buffer permuted, no layout copy) and ``labels`` ``N`` int64, both on ``device``; ``keys`` is
    empty. The backend's :class:`~pipeline.backends.DaliConfig` (in ``cfg.options``) sets the nvJPEG decoder
    (CUDA only), whether the labels come out of DALI on the GPU (CUDA only; else one host → device copy a batch),
    and where the images are normalised (:class:`~pipeline.backends.DaliOutput`: DALI's float32 output as is, its
    float16 widened by one cast, its uint8 normalised by torch on ``device``); these change neither the data order
    nor the random state, so a state saved under other values restores, except across ``labels_on_device`` on CUDA
    (the labels' cast makes another graph, which DALI's checkpoint does not fit: :meth:`state_dict`'s ``config``
    holds ``labels: "device"`` then, and the difference is named). Train batches are always full;
    the last val batch of a rank may be partial. A train resume through
    :meth:`state_dict`, :meth:`load_state_dict` and :meth:`iter_from` is exact (see module docstring).

    Shards are checked before DALI opens them (:func:`~pipeline.backends.dali_graph.checked_shards`: a damaged or
    hand-made shard gives one line, never a DALI traceback or a crash; 0-sample shards are left out with a
    warning), and any failure of DALI while building or running the pipeline is turned into one line by
    :func:`~pipeline.backends.dali_graph.failure`.

    Raises:
        ValueError: DALI is not installed, ``info`` is None, option values are invalid, a shard fails the checks,
            DALI fails (building the pipeline here, reading a batch while iterating; one line each), or (train)
            the split has fewer than ``world_size × batch_size`` samples.
    """

    def __init__(self, cfg: LoaderConfig, split: Split, info: DatasetInfo | None, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        import_dali()
        check_options(cfg, info, rank, world_size)
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
        self._done = 0  # batches of epoch self.epoch yielded so far
        self._restored: tuple[int, int] | None = None  # position a load_state_dict restored, for iter_from

        shards = checked_shards(info, self.split.value)
        cuda = self.device.type == "cuda"
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if cuda else None
        self._graph = make_graph(cfg, train, shards, rank, world_size, device_id)
        self._output = emitted(cfg)
        self._labels_on_device = cuda and cfg.options_for(DaliConfig).labels_on_device
        self._config = {"split": self.split.value, "world_size": world_size, "rank": rank, "seed": cfg.seed,
                        "batch_size": bs, "shuffle_buffer": cfg.shuffle_buffer, "image_size": cfg.image_size,
                        "normalize": cfg.normalize, "decode": "mixed" if cuda else "cpu",
                        "num_samples": self.num_samples, "data": _data_digest(info, self.split.value)}
        if self._labels_on_device:  # the labels' cast on the GPU is part of the graph, which DALI's checkpoint fits
            self._config["labels"] = "device"
        try:
            self._pipe = self._new_pipe()
            # With pad_last_batch every rank's part is padded to ceil(N / n) samples, then to whole batches:
            # that many batches make one reader epoch on every rank.
            padded = self._pipe.reader_meta(READER_NAME)["epoch_size_padded"] // world_size
        except RuntimeError as exc:
            raise failure(exc, self.split.value, self._root) from None
        self._batches_per_epoch = -(-padded // bs)

    def _new_pipe(self, checkpoint: bytes | None = None):
        """A built pipeline: fresh, or restored from a DALI checkpoint (DALI's exceptions pass through)."""
        pipe = self._graph(checkpoint=checkpoint)
        pipe.build()
        return pipe

    def __len__(self) -> int:
        return self._len

    def set_epoch(self, epoch: int) -> None:
        """Record ``epoch``; DALI's own random state moves on by itself at every epoch (see module docstring)."""
        self.epoch = epoch
        self._done = 0

    def _run(self):
        self._pos += 1
        try:
            return self._pipe.run()
        except RuntimeError as exc:  # DALI stops the pipeline on the first sample it cannot decode
            raise failure(exc, self.split.value, self._root) from None

    def _finish_reader_epoch(self) -> None:
        """Read (and drop) the batches left in the reader's epoch, so the next iteration starts a new one."""
        while 0 < self._pos < self._batches_per_epoch:
            self._run()
        self._pos = 0

    def _from_gpu(self, output, dtype: torch.dtype) -> torch.Tensor:
        """One GPU output of DALI copied into a new torch tensor of its shape on ``self.device`` (DALI reuses its
        buffers), on torch's current stream."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = output.as_tensor()
        tensor = torch.empty(dense.shape(), dtype=dtype, device=self.device)
        feed_ndarray(dense, tensor, cuda_stream=torch.cuda.current_stream(self.device))
        return tensor

    def _to_torch(self, images, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """DALI outputs → (``N×3×S×S`` float32 or uint8 channels-last, ``N`` int64) on ``self.device``, owned by torch."""
        if self.device.type == "cuda":
            nhwc = self._from_gpu(images, _TORCH_DTYPE[self._output])
            lbl = self._from_gpu(labels, torch.int64).reshape(-1) if self._labels_on_device else host_labels(labels)
        else:
            nhwc, lbl = host_batch(images, labels)
        return finish_images(nhwc, self._output, self.cfg.normalize, self.device), lbl.to(self.device,
                                                                                          non_blocking=True)

    def __iter__(self) -> Iterator[Batch]:
        self._done = 0
        return self._batches(0)

    def _batches(self, start: int) -> Iterator[Batch]:
        """The current epoch's batches after its first ``start``, read from the pipeline's current state."""
        if start == 0:
            self._finish_reader_epoch()  # an earlier iteration stopped early
        left = self._keep - start * self.cfg.batch_size
        for _ in range(start, self._len):
            images, labels = self._run()
            take = min(left, self.cfg.batch_size)
            try:
                x, y = self._to_torch(images, labels)
            except RuntimeError as exc:  # DALI's as_tensor: a batch of uneven shapes; torch's out-of-memory passes
                if isinstance(exc, torch.cuda.OutOfMemoryError):
                    raise
                raise failure(exc, self.split.value, self._root) from None
            left -= take
            if take < x.shape[0]:
                x, y = x[:take], y[:take]
            self._done += 1
            yield Batch(x, y)
        self._finish_reader_epoch()

    def _position(self, epoch: int, batches_done: int) -> tuple[int, int]:
        """``(epoch, batches done)`` with an epoch's end written as the next epoch's start."""
        return (epoch + 1, 0) if batches_done >= self._len else (epoch, batches_done)

    def iter_from(self, batches_done: int) -> Iterator[Batch]:
        """The current epoch's batches after its first ``batches_done``: continued from the state
        :meth:`load_state_dict` restored (no replay), or replayed when none was (val, or an empty state).

        Raises:
            RuntimeError: the epoch has fewer than ``batches_done`` batches.
            ValueError: the restored state is for another position than (current epoch, ``batches_done``).
        """
        if not 0 <= batches_done <= self._len:
            raise RuntimeError(f"the {self.split.value} epoch has {self._len} batches on this rank, cannot resume "
                               f"after {batches_done}")
        restored, self._restored = self._restored, None
        if restored is None:
            self._done = 0
            return replay_from(self, batches_done) if batches_done else iter(self)
        wanted = self._position(self.epoch, batches_done)
        if restored != wanted:
            raise ValueError(f"DALI loader state is for epoch {restored[0]} after {restored[1]} batches, the resume "
                             f"asks for epoch {wanted[0]} after {wanted[1]}; pass the state saved with that position")
        self._done = batches_done
        return self._batches(batches_done)

    def state_dict(self) -> dict:
        """Train: the state that makes a resume exact; val: ``{}`` (its fixed order is reproduced by replay).

        The train state holds ``format`` (:data:`STATE_FORMAT`), ``dali`` (DALI's version), ``config`` (what the
        pipeline was built for: split, world size, rank, seed, batch size, shuffle buffer, image size,
        normalisation, decode device, sample count and a digest of the shards; ``labels: "device"`` where DALI emits
        the labels on the GPU), ``epoch`` and ``batch`` (the position: batches of that epoch already yielded; an
        epoch's end is the next epoch's batch 0), ``reader_batch`` (batches taken in DALI's current reader epoch, which runs past the epoch's last
        yielded batch), ``pipeline`` (DALI's serialized checkpoint, bytes) and ``sha256`` (of ``pipeline``).
        Only str, int, bool, bytes and dicts: ``torch.load(weights_only=True)`` reads it (on torch 2.0 / 2.1 only
        through :mod:`train.checkpoint`, which stores the bytes as uint8 tensors).
        """
        if self.split is not Split.TRAIN:
            return {}
        blob = bytes(self._pipe.checkpoint())
        epoch, batch = self._position(self.epoch, self._done)
        return {"format": STATE_FORMAT, "dali": dali_version(), "config": dict(self._config), "epoch": epoch,
                "batch": batch, "reader_batch": self._pos, "pipeline": blob,
                "sha256": hashlib.sha256(blob).hexdigest()}

    def _mismatch(self, saved: dict) -> dict[str, str]:
        """Config entry → ``"saved (this loader: value)"`` for each entry that differs from this loader's."""
        return {k: f"{k} {saved.get(k)!r} (this loader: {v!r})" for k, v in self._config.items() if saved.get(k) != v}

    def load_state_dict(self, state: dict) -> None:
        """Rebuild the pipeline from what :meth:`state_dict` returned; the next :meth:`iter_from` continues there.

        ``{}`` restores nothing: the resume replays (see module docstring; a warning when that is not exact).

        Raises:
            ValueError (one line): the state is garbled or of another format or DALI version, is for another
                split, world size, rank, seed, batch size, data set or the like (each difference named), or is
                not at an epoch's start while its image size differs.
        """
        self._restored = None
        if not state:
            if self.split is Split.TRAIN and self.epoch > 0:
                warnings.warn(f"no DALI loader state saved (a checkpoint from an older version): the resumed epoch "
                              f"{self.epoch} replays from a fresh pipeline, whose data order differs", stacklevel=2)
            return
        if self.split is not Split.TRAIN:
            raise ValueError(f"a {self.split.value} DALI loader keeps no state (it reads in a fixed order); got one")
        state = _parse_state(state)
        if state["dali"] != dali_version():
            raise ValueError(f"DALI loader state was written by DALI {state['dali']}, this is DALI {dali_version()}; "
                             f"install nvidia-dali {state['dali']} to resume exactly")
        position = (state["epoch"], state["batch"])
        wrong = self._mismatch(state["config"])
        if wrong and not (set(wrong) == {"image_size"} and position[1] == 0):
            raise ValueError(f"DALI loader state does not fit this loader: {', '.join(wrong.values())}; resume with "
                             f"the same settings")
        self._check_position(state)
        self._pipe = None  # release the old pipeline's threads and buffers first
        try:
            # Another image size at an epoch start: the saving run built a new (fresh) loader for this epoch.
            self._pipe = self._new_pipe(None if wrong else state["pipeline"])
        except (RuntimeError, ValueError, UnicodeDecodeError) as exc:
            self._pipe = self._new_pipe()
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise ValueError(f"DALI could not restore the loader state ({first[:200]})") from None
        self._pos = 0 if wrong else state["reader_batch"]
        self._restored = position

    def _check_position(self, state: dict) -> None:
        """Raises ValueError when the state's position cannot occur for this loader's epoch sizes."""
        batch, reader = state["batch"], state["reader_batch"]
        if batch >= self._len or reader > self._batches_per_epoch or 0 < batch != reader:
            raise ValueError(f"DALI loader state is garbled: batch {batch} with reader batch {reader} cannot occur in "
                             f"an epoch of {self._len} batches ({self._batches_per_epoch} read)")

    def close(self) -> None:
        """Drop the pipeline (its threads and buffers); the loader is not used afterwards."""
        self._pipe = None

    def stats(self) -> LoaderStats:
        """Nothing counted: DALI stops on a damaged sample instead of skipping it, and times no stage while it
        trains (its pipelined executor overlaps them; io-bench measures them with
        :func:`pipeline.backends.dali_stages.measure_stages`)."""
        return LoaderStats()


__all__ = ["DaliLoader", "GRAPH_STAGES", "INSTALL_HINT", "STATE_FORMAT", "finish_images", "rank_share"]
