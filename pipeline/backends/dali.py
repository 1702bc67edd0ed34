"""DALI decode backend: webdataset shards → ``fn.readers.webdataset`` → DALI decode/crop/normalise → device.

One DALI pipeline per (split, rank), built once and reused for every epoch. On CUDA the JPEGs are decoded
with ``device="mixed"`` (nvJPEG) and cropped, resized and normalised on the GPU; on a machine without CUDA
the same graph runs on the CPU (``device_id=None``). DALI is imported only by this module, so an install
without DALI never imports it.

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
process): :func:`_checked_shards` checks each shard's size against the manifest and parses its ``.idx`` first
(:mod:`pipeline.read.shardcheck`), and a shard that ``_info.json`` lists with 0 samples is left out of DALI's shard
list with a warning (DALI refuses an empty index; the ``cpu`` backend reads it as 0 samples). Every problem found
there, and every error DALI itself raises later (``missing_component_behavior="error"``; an undecodable JPEG), is
a one-line ValueError naming the shard (and the sample key where known) and ``shard-imagenet verify``.

The loader times no stage while it trains (DALI's executor overlaps them); :func:`measure_stages`, the backend's
io-bench probe, times them by difference of partial pipelines cut from the same graph (:func:`_make_graph`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from typing import Iterator

import numpy as np
import torch

from pipeline.read import plan as epoch_plan
from pipeline.backends import (IMAGENET_MEAN_255, IMAGENET_STD_255, Batch, LoaderConfig, LoaderStats, Split,
                               replay_from)
from pipeline.dataset import DatasetInfo
from pipeline.read.shardcheck import CheckedShards, check_split
from pipeline.read.transforms import RRC_RATIO, RRC_SCALE, eval_resize_size

INSTALL_HINT = "--loader dali needs NVIDIA DALI: pip install 'imagenet-pipeline[dali]' (nvidia-dali-cuda130)"
READER_NAME = "Reader"
MEMBERS = {"jpg": None, "lbl": 4}  # the components the reader takes → their exact size in bytes (None: any > 0)
GRAPH_STAGES = ("read", "decode", "augment")  # where _make_graph can cut the graph (the last: the whole graph)
STATE_FORMAT = 1  # version of the dict DaliLoader.state_dict returns
_STATE_KEYS = {"format": int, "dali": str, "config": dict, "epoch": int, "batch": int, "reader_batch": int,
               "pipeline": bytes, "sha256": str}


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


def _dali_version() -> str:
    import nvidia.dali

    return str(nvidia.dali.__version__)


def rank_share(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of the samples DALI's reader gives shard ``rank`` of ``world_size`` in one epoch."""
    return epoch_plan.split_even(num_samples, world_size, rank)


def _check_options(cfg: LoaderConfig, info: DatasetInfo | None, rank: int, world_size: int) -> None:
    """Raises ValueError (one line) for a missing or remote dataset or invalid option values."""
    if info is None:
        raise ValueError("--loader dali needs --data DIR (a folder written by shard-imagenet)")
    if info.remote:
        raise ValueError(f"--loader dali reads shards from disk only, not {info.root}; copy them to a local or "
                         f"mounted folder, or stream them with --loader cpu")
    if not 0 <= rank < world_size:
        raise ValueError(f"bad loader options: rank={rank}, world_size={world_size}")


def _checked_shards(info: DatasetInfo, split: str) -> CheckedShards:
    """The shards of ``split`` DALI reads, checked before DALI opens them (:func:`pipeline.read.shardcheck.check_split`:
    sizes against the manifest, every ``.idx`` parsed: a positive sample count equal to ``shard_lengths``, a ``.jpg``
    and a 4-byte ``.lbl`` in every sample, every member inside its file). A shard listed with 0 samples (which
    DALI refuses) is left out of DALI's shard list, with one warning line naming it; that moves no sample.

    Raises:
        pipeline.read.shardcheck.ShardCheckError (a ValueError): one line naming the shard, the sample key and line
            of its ``.idx`` where there is one, what is wrong and ``shard-imagenet verify``.
    """
    shards = check_split(info, split, MEMBERS)
    if shards.skipped:
        warnings.warn(f"{len(shards.skipped)} {split} shard(s) listed with 0 samples left out of DALI's shard list "
                      f"(DALI cannot read an empty shard): {', '.join(shards.skipped)}", stacklevel=3)
    return shards


# Lines of DALI's error text that wrap or locate the cause rather than say it (skipped by _failure).
_DALI_NOISE = ("Critical error in pipeline", "Current pipeline object is no longer valid", "C++ context:",
               "Error in ", "which was used in", "File \"")


def _index_key(index_path: str, line: int) -> str:
    """The sample key on line ``line`` (1 = the first sample) of a ``.idx``, or "" when it cannot be read."""
    try:
        with open(index_path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        return lines[line].split()[3].rsplit("/", 1)[-1].split(".", 1)[0] if 0 < line < len(lines) else ""
    except (OSError, IndexError):
        return ""


def _failure(exc: BaseException, split: str, root: str | os.PathLike) -> ValueError:
    """A DALI error → one-line ValueError: the failing operator and cause, the shard and sample key where DALI's
    text names an index line, what DALI needs of each sample, and ``shard-imagenet verify``."""
    text = str(exc)
    op = re.search(r"operator `nvidia\.dali\.fn\.([\w.]+)`", text)
    body = text.split("encountered:", 1)[-1]
    cause = next((ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith(_DALI_NOISE)),
                 type(exc).__name__)
    where = ""
    at_index = re.search(r'index file at "([^"]+)" line (\d+)', text)
    at_tar = re.search(r'([^\s"]+\.tar)\b', text)
    if at_index:
        key = _index_key(at_index[1], int(at_index[2]))
        where = f"shard {os.path.splitext(at_index[1])[0]}.tar{', sample ' + key if key else ''}: "
    elif at_tar:
        where = f"shard {at_tar[1]}: "
    return ValueError(f"DALI failed reading the {split} shards in {root}: {where}{op[1] + ': ' if op else ''}"
                      f"{cause[:200]}; every sample needs a KEY.jpg (a JPEG) and a 4-byte KEY.lbl, and DALI cannot "
                      f"skip a damaged one: run `shard-imagenet verify {root}` to find it, or train with --loader "
                      f"cpu, which skips and names such samples")


def _data_digest(info: DatasetInfo, split: str) -> str:
    """A short digest of a split's shards (names, sample counts, manifest sha256s): changes when re-sharded."""
    s = info.split(split)
    shas = {e.filename: e.sha256 for e in info.manifest.get(split, ())}
    blob = json.dumps([list(s.filenames), list(s.shard_lengths), [shas.get(f, "") for f in s.filenames]])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _val_crop_roi(jpegs, size: int, crop_pct: float):
    """In-graph, per sample: the source region ``(roi_start, roi_end)`` (``[y, x]``, absolute pixels, float32) of
    torchvision's ``Resize(eval_resize_size(size, crop_pct))`` + ``CenterCrop(size)``, the box of
    :func:`pipeline.read.transforms.center_crop_box`, from the JPEG header (``fn.peek_image_shape``, which follows
    EXIF orientation as the decoder does). Resampling it with ``fn.resize(size=..., roi_start=..., roi_end=...)``
    keeps torchvision's integer crop box (``resize_shorter`` + ``crop_mirror_normalize(crop=...)`` rounds the
    long side and places the crop by DALI's own rounding: 4.4/255 mean from torchvision at 224 px).

    Resized ``H' = s * H // short``, ``W'`` likewise; the corner ``round_half_even((H' - size) / 2)`` in integer
    DALI arithmetic: with ``m = H' - size``, ``q = m // 2``, it is ``q + (m - 2q) * (q - 2 (q // 2))``.
    """
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    shape = fn.peek_image_shape(jpegs, dtype=types.INT64)  # H, W, C
    h, w = shape[0], shape[1]
    s = eval_resize_size(size, crop_pct)
    new_h, new_w = s * h // dmath.min(h, w), s * w // dmath.min(h, w)

    def corner(n):
        q = (n - size) // 2
        return q + (n - size - 2 * q) * (q - 2 * (q // 2))

    top, left = corner(new_h), corner(new_w)
    fy, fx = fn.cast(h, dtype=types.FLOAT64) / new_h, fn.cast(w, dtype=types.FLOAT64) / new_w
    start = fn.stack(top * fy, left * fx)
    end = fn.stack((top + size) * fy, (left + size) * fx)
    return fn.cast(start, dtype=types.FLOAT), fn.cast(end, dtype=types.FLOAT)


def _make_graph(cfg: LoaderConfig, train: bool, paths: list[str], index_paths: list[str], rank: int,
                world_size: int, device_id: int | None, last_stage: str = "augment"):
    """The pipeline definition: call it (optionally with ``checkpoint=...`` or other ``Pipeline`` arguments, which
    override the ones given here) to get an unbuilt pipeline.

    ``last_stage`` cuts the graph after a stage, for :func:`measure_stages`: ``"read"`` outputs the reader's
    (JPEG bytes, int32 label), ``"decode"`` the decoder's ``H×W×3`` uint8 images (train: already the random crop,
    decoded region only) and labels, ``"augment"`` (the whole graph, what the loader runs) the ``S×S×3`` batch.

    Raises:
        ValueError: ``last_stage`` is none of those three.
    """
    if last_stage not in GRAPH_STAGES:
        raise ValueError(f"last_stage must be one of {', '.join(GRAPH_STAGES)}, got {last_stage!r}")
    pipeline_def, fn, types = _import_dali()
    size = cfg.image_size
    decode_device = "cpu" if device_id is None else "mixed"
    if cfg.normalize:
        norm = dict(dtype=types.FLOAT, mean=list(IMAGENET_MEAN_255), std=list(IMAGENET_STD_255))
    else:
        norm = dict(dtype=types.UINT8)

    @pipeline_def(batch_size=cfg.batch_size, num_threads=max(1, cfg.workers), device_id=device_id,
                  seed=cfg.seed + 1_000_003 * rank, prefetch_queue_depth=2, enable_checkpointing=train)
    def graph():
        jpegs, labels = fn.readers.webdataset(
            paths=paths, index_paths=index_paths, ext=list(MEMBERS), dtypes=[types.UINT8, types.INT32],
            missing_component_behavior="error", shard_id=rank, num_shards=world_size, random_shuffle=train,
            initial_fill=max(1, cfg.shuffle_buffer), seed=cfg.seed, pad_last_batch=True,
            stick_to_shard=not train, name=READER_NAME)
        if last_stage == "read":
            return jpegs, labels
        if train:
            images = fn.decoders.image_random_crop(jpegs, device=decode_device, output_type=types.RGB,
                                                   random_area=list(RRC_SCALE), random_aspect_ratio=list(RRC_RATIO),
                                                   num_attempts=10)
        else:
            images = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB)
        if last_stage == "decode":
            return images, labels
        if train:
            images = fn.resize(images, resize_x=size, resize_y=size)
            images = fn.crop_mirror_normalize(images, output_layout="HWC",
                                              mirror=fn.random.coin_flip(probability=0.5), **norm)
        else:
            roi_start, roi_end = _val_crop_roi(jpegs, size, cfg.crop_pct)  # torchvision's Resize + CenterCrop box
            images = fn.resize(images, size=[size, size], roi_start=roi_start, roi_end=roi_end, roi_relative=False)
            images = fn.crop_mirror_normalize(images, output_layout="HWC", **norm)
        return images, labels

    return graph


def _host_labels(labels) -> torch.Tensor:
    """DALI's CPU int32 label batch → ``N`` int64 tensor."""
    return torch.from_numpy(np.array(labels.as_tensor(), dtype=np.int64).reshape(-1))


def _host_batch(images, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """DALI's CPU outputs → (``N×S×S×3`` tensor copied out of DALI's buffer, which DALI reuses; ``N`` int64)."""
    return torch.from_numpy(np.array(images.as_tensor(), copy=True)), _host_labels(labels)


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


def _time_graph(graph, batches: int, copy_out=None) -> tuple[float, float]:
    """Build ``graph`` with the synchronous executor (``run()`` returns when that iteration's work is done, so its
    time is that work), run it once untimed, then ``batches`` times: returns (seconds of the runs, seconds of
    ``copy_out(images, labels)`` on each output, not included in the first; 0 without ``copy_out``)."""
    pipe = graph(exec_pipelined=False, exec_async=False, prefetch_queue_depth=1)
    pipe.build()
    pipe.run()  # warm-up
    clock = time.perf_counter
    copy = 0.0
    t0 = clock()
    for _ in range(batches):
        images, labels = pipe.run()
        if copy_out is not None:
            t1 = clock()
            copy_out(images, labels)
            copy += clock() - t1
    return clock() - t0 - copy, copy


def measure_stages(kind, cfg: LoaderConfig, split: Split | str, info: DatasetInfo | None, max_samples: int):
    """Per-stage cost of the ``dali`` backend (its registry ``stage_probe``; ``kind`` is ``"dali"``), in seconds per
    image with one DALI thread, by difference of partial pipelines that :func:`_make_graph` builds from the
    loader's own graph: read = the reader alone, decode = (reader + decoder) - read, augment = the whole graph -
    (reader + decoder), collate = copy of the output to a host batch. Each graph runs ``ceil(max_samples /
    batch size)`` timed batches after one untimed one; a negative difference (noise) counts 0. The decode runs
    on the GPU (``mixed``) where CUDA is available, else on the CPU. Returns a
    :class:`pipeline.backends.probe.StageCosts`.

    Raises:
        ValueError: DALI is not installed (the install hint), bad options, no local shard folder, a shard that
            fails the checks of :func:`_checked_shards`, or DALI failing to read the shards (one line each).
    """
    from pipeline.backends.probe import StageCosts, check_probe_options, one_torch_thread, profiling_config

    _import_dali()
    split = Split(split)
    check_probe_options(cfg, max_samples)
    pcfg = profiling_config(cfg)  # workers=0: one DALI thread; uint8 output
    _check_options(pcfg, info, 0, 1)
    shards = _checked_shards(info, split.value)
    paths, index_paths = list(shards.paths), list(shards.index_paths)
    cuda = torch.cuda.is_available()
    device_id = torch.cuda.current_device() if cuda else None
    train = split is Split.TRAIN
    batches = max(1, -(-max_samples // cfg.batch_size))
    to_host = (lambda images, labels: _host_batch(images.as_cpu(), labels.as_cpu())) if cuda else _host_batch
    run_s, copy_s = {}, 0.0
    with one_torch_thread():
        for stage in GRAPH_STAGES:
            graph = _make_graph(pcfg, train, paths, index_paths, 0, 1, device_id, last_stage=stage)
            try:
                run_s[stage], copy_s = _time_graph(graph, batches, to_host if stage == GRAPH_STAGES[-1] else None)
            except RuntimeError as exc:
                raise _failure(exc, split.value, info.root) from None
    n = batches * cfg.batch_size
    per = {"read": max(0.0, run_s["read"]) / n, "decode": max(0.0, run_s["decode"] - run_s["read"]) / n,
           "augment": max(0.0, run_s["augment"] - run_s["decode"]) / n, "collate": copy_s / n}
    where = "mixed (GPU) decode" if cuda else "CPU"
    crop = ("decode includes the random crop (DALI decodes only the crop region, ROI decode)" if train
            else "val decodes whole images")
    return StageCosts("dali", n, per, run_s["augment"] + copy_s,
                      note=f"DALI ({where}, num_threads=1): by difference of partial pipelines (reader; + decoder; "
                           f"+ resize/crop/mirror), collate = copy of the output to a host batch; {crop}")


class DaliLoader:
    """The ``dali`` backend for one split on one rank (see module docstring). Implements ``Loader``.

    Yields :class:`Batch` with ``images`` ``N×3×S×S`` float32 (ImageNet-normalised; uint8 0..255 with
    ``normalize=False``; channels-last strides: an
    ``N×S×S×3`` buffer permuted, no layout copy) and ``labels`` ``N`` int64, both on ``device``; ``keys`` is
    empty. Train batches are always full; the last val batch of a rank may be partial. A train resume through
    :meth:`state_dict`, :meth:`load_state_dict` and :meth:`iter_from` is exact (see module docstring).

    Shards are checked before DALI opens them (:func:`_checked_shards`: a damaged or hand-made shard gives one
    line, never a DALI traceback or a crash; 0-sample shards are left out with a warning), and any failure of
    DALI while building or running the pipeline is turned into one line by :func:`_failure`.

    Raises:
        ValueError: DALI is not installed, ``info`` is None, option values are invalid, a shard fails the checks,
            DALI fails (building the pipeline here, reading a batch while iterating; one line each), or (train)
            the split has fewer than ``world_size × batch_size`` samples.
    """

    def __init__(self, cfg: LoaderConfig, split: Split, info: DatasetInfo | None, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        _import_dali()
        _check_options(cfg, info, rank, world_size)
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

        shards = _checked_shards(info, self.split.value)
        cuda = self.device.type == "cuda"
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if cuda else None
        self._graph = _make_graph(cfg, train, list(shards.paths), list(shards.index_paths), rank, world_size,
                                  device_id)
        self._dtype = torch.float32 if cfg.normalize else torch.uint8
        self._config = {"split": self.split.value, "world_size": world_size, "rank": rank, "seed": cfg.seed,
                        "batch_size": bs, "shuffle_buffer": cfg.shuffle_buffer, "image_size": cfg.image_size,
                        "normalize": cfg.normalize, "decode": "mixed" if cuda else "cpu",
                        "num_samples": self.num_samples, "data": _data_digest(info, self.split.value)}
        try:
            self._pipe = self._new_pipe()
            # With pad_last_batch every rank's part is padded to ceil(N / n) samples, then to whole batches:
            # that many batches make one reader epoch on every rank.
            padded = self._pipe.reader_meta(READER_NAME)["epoch_size_padded"] // world_size
        except RuntimeError as exc:
            raise _failure(exc, self.split.value, self._root) from None
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
            raise _failure(exc, self.split.value, self._root) from None

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
            lbl = _host_labels(labels)
        else:
            nhwc, lbl = _host_batch(images, labels)
        return nhwc.permute(0, 3, 1, 2), lbl.to(self.device, non_blocking=True)

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
                raise _failure(exc, self.split.value, self._root) from None
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
        normalisation, decode device, sample count and a digest of the shards), ``epoch`` and ``batch`` (the
        position: batches of that epoch already yielded; an epoch's end is the next epoch's batch 0),
        ``reader_batch`` (batches taken in DALI's current reader epoch, which runs past the epoch's last
        yielded batch), ``pipeline`` (DALI's serialized checkpoint, bytes) and ``sha256`` (of ``pipeline``).
        Only str, int, bool, bytes and dicts: ``torch.load(weights_only=True)`` reads it (on torch 2.0 / 2.1 only
        through :mod:`train.checkpoint`, which stores the bytes as uint8 tensors).
        """
        if self.split is not Split.TRAIN:
            return {}
        blob = bytes(self._pipe.checkpoint())
        epoch, batch = self._position(self.epoch, self._done)
        return {"format": STATE_FORMAT, "dali": _dali_version(), "config": dict(self._config), "epoch": epoch,
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
        if state["dali"] != _dali_version():
            raise ValueError(f"DALI loader state was written by DALI {state['dali']}, this is DALI {_dali_version()}; "
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
        trains (its pipelined executor overlaps them; io-bench measures them with :func:`measure_stages`)."""
        return LoaderStats()


__all__ = ["DaliLoader", "GRAPH_STAGES", "INSTALL_HINT", "STATE_FORMAT", "measure_stages", "rank_share"]
