"""Decode backends behind one contract, with a lazy registry: the contract (:class:`Loader`, :class:`Batch`,
:class:`LoaderConfig`, :class:`LoaderStats`) and the registry (:class:`BackendSpec`: what each backend needs as
input and how it is measured), nothing backend-specific.

Every backend yields :class:`Batch` objects whose images are already on the training device, normalised
and in channels-last memory format. A backend's module is imported only when it is built, so an
install without DALI never imports DALI.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Iterator, Protocol, TypeVar, runtime_checkable

import torch

from pipeline.compat import cache
from pipeline.dataset import DatasetInfo
from pipeline.read.tarstream import RemoteOptions
from pipeline.read.transforms import CROP_PCT, IMAGE_SIZE_RANGE

# ImageNet channel statistics on the 0..255 scale (torchvision / timm IMAGENET_DEFAULT_MEAN/STD × 255).
IMAGENET_MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_255 = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# Size of ILSVRC2012 (train, val), used by the synthetic backend when no dataset is given.
IMAGENET_TRAIN_SAMPLES = 1_281_167
IMAGENET_VAL_SAMPLES = 50_000
IMAGENET_CLASSES = 1000
T = TypeVar("T")


class LoaderKind(str, Enum):
    """Names accepted by ``train --loader``."""

    CPU = "cpu"
    FOLDER = "folder"
    SYNTHETIC = "synthetic"
    DALI = "dali"
    NVJPEG = "nvjpeg"


class Split(str, Enum):
    """Dataset split a loader reads: train (random crops, whole batches) or val (centre crops, every sample)."""

    TRAIN = "train"
    VAL = "val"


class OnBadSample(str, Enum):
    """What a backend does with a sample that does not decode (``train --on-bad-sample``): ``skip`` names it on
    stderr and counts it (train: another sample of the batch takes its slot; val: it is left out); ``error``
    stops the run at once with one line naming it. DALI cannot skip: it always stops."""

    SKIP = "skip"
    ERROR = "error"


@dataclass(frozen=True)
class LoaderConfig:
    """Options shared by every backend.

    Attributes:
        batch_size: samples per batch on this rank.
        image_size: output side in pixels (square crops), in :data:`~pipeline.read.transforms.IMAGE_SIZE_RANGE`.
        workers: CPU decode processes per rank (0 = decode in the training process).
        seed: seed of shard order, shuffle buffer and crops.
        shuffle_buffer: samples held by each worker's train shuffle buffer (1 = no shuffle).
        crop_pct: eval centre-crop ratio (:data:`~pipeline.read.transforms.CROP_PCT`, 0.875 = Resize 256 /
            CenterCrop 224).
        synthetic_train_samples / synthetic_val_samples / synthetic_classes: epoch sizes and class count
            of the synthetic backend when no dataset is given (defaults: ILSVRC2012's).
        data_root: the ``--data`` folder or URL (the ``folder`` backend reads its ImageFolder tree directly).
        normalize: True: images arrive as ImageNet-normalised float32; False: as uint8 0..255 (the same
            geometry), for loader benchmarks and for models that normalise themselves.
        on_bad_sample: a sample that does not decode is skipped and counted, or an error (:class:`OnBadSample`;
            its value as a string is accepted too).
        remote_timeout: seconds a remote download (``--data`` a URL) may give no byte before it is retried:
            :class:`~pipeline.read.tarstream.RemoteOptions` ``timeout_s``.
        remote_retries: retries of a remote download that timed out or failed before the run stops.

    These defaults are the ``train`` command's (its flags read them from here). Raises ValueError (one line,
    naming the flag) for a value no backend can use.
    """

    batch_size: int = 256
    image_size: int = 224
    workers: int = 2
    seed: int = 0
    shuffle_buffer: int = 500
    crop_pct: float = CROP_PCT
    synthetic_train_samples: int = IMAGENET_TRAIN_SAMPLES
    synthetic_val_samples: int = IMAGENET_VAL_SAMPLES
    synthetic_classes: int = IMAGENET_CLASSES
    data_root: Path | str | None = None
    normalize: bool = True
    on_bad_sample: OnBadSample = OnBadSample.SKIP
    remote_timeout: float = RemoteOptions.timeout_s
    remote_retries: int = RemoteOptions.retries

    def __post_init__(self) -> None:
        if self.on_bad_sample not in set(OnBadSample):
            raise ValueError(f"--on-bad-sample must be {' or '.join(p.value for p in OnBadSample)}, "
                             f"got {self.on_bad_sample!r}")
        object.__setattr__(self, "on_bad_sample", OnBadSample(self.on_bad_sample))  # "error" -> the member
        if self.image_size > IMAGE_SIZE_RANGE[1]:  # a side no backend should be asked for (shared-memory batches)
            raise ValueError(f"--image-size must be <= {IMAGE_SIZE_RANGE[1]} (px), got {self.image_size}")
        for name, value, low in (("--batch-size", self.batch_size, 1),
                                 ("--image-size", self.image_size, IMAGE_SIZE_RANGE[0]),
                                 ("--workers", self.workers, 0), ("--shuffle-buffer", self.shuffle_buffer, 1),
                                 ("--synthetic-train-samples", self.synthetic_train_samples, 1),
                                 ("--synthetic-val-samples", self.synthetic_val_samples, 1),
                                 ("synthetic_classes", self.synthetic_classes, 1),
                                 ("--remote-retries", self.remote_retries, 0)):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        self.remote_options()  # --remote-timeout: a finite number of seconds > 0

    def remote_options(self) -> RemoteOptions:
        """The timeout and retries of remote downloads (``remote_timeout``, ``remote_retries``)."""
        return RemoteOptions(self.remote_timeout, self.remote_retries)


# The stages a backend's time splits into, in order: read (shard / file bytes), decode (JPEG → RGB), augment
# (crop, resize, flip), collate (assembling the batch).
STAGES = ("read", "decode", "augment", "collate")


@dataclass(frozen=True)
class StageTimes:
    """Seconds a backend spent per stage, and the samples they cover.

    Attributes:
        seconds: stage → seconds (keys exactly :data:`STAGES`), summed over this rank's workers.
        samples: images those seconds cover.
    """

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    samples: int = 0

    def __sub__(self, earlier: "StageTimes") -> "StageTimes":
        """What was spent between ``earlier`` (a snapshot of the same loader) and this snapshot."""
        return StageTimes({k: v - earlier.seconds[k] for k, v in self.seconds.items()}, self.samples - earlier.samples)

    def per_image(self) -> dict[str, float] | None:
        """Stage → seconds per image, or None when no sample is covered."""
        return {k: v / self.samples for k, v in self.seconds.items()} if self.samples else None


@dataclass(frozen=True)
class LoaderStats:
    """What a loader counted since it was built (a snapshot: later iteration does not change it).

    Attributes:
        skipped: ``"<shard>: <key>: <why>"`` of every sample that failed to decode (already named on stderr).
        stages: per-stage time (:class:`StageTimes`) for backends that time their own stages, else None.
    """

    skipped: tuple[str, ...] = ()
    stages: StageTimes | None = None


@dataclass(frozen=True)
class Batch:
    """One batch on the training device.

    Attributes:
        images: ``N×3×H×W`` channels-last strides: float32 normalised with the ImageNet mean/std, or uint8 0..255
            when the loader was built with ``LoaderConfig.normalize=False``.
        labels: ``N`` int64 class indices.
        keys: the samples' shard keys, where the backend knows them (empty otherwise).
    """

    images: torch.Tensor
    labels: torch.Tensor
    keys: tuple[str, ...] = ()


@runtime_checkable
class Loader(Protocol):
    """The contract every backend implements for one split on one rank."""

    split: Split
    num_samples: int  # samples in the whole split (all ranks)
    num_classes: int  # classes of the dataset (model output size)

    def __len__(self) -> int:
        """Batches this rank yields per epoch (train: the same on every rank)."""

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shard order / crops the next iteration uses."""

    def __iter__(self) -> Iterator[Batch]:
        """Yield this rank's batches of the current epoch."""

    def iter_from(self, batches_done: int) -> Iterator[Batch]:
        """Yield the current epoch's batches after its first ``batches_done`` (a resume mid-epoch).

        Raises:
            RuntimeError: the epoch has fewer than ``batches_done`` batches.
        """

    def state_dict(self) -> dict:
        """Reader state a checkpoint stores beside the position, so :meth:`load_state_dict` + :meth:`iter_from`
        reproduce the rest of the epoch exactly; ``{}`` where replaying the epoch reproduces it."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (before the next :meth:`iter_from`)."""

    def close(self) -> None:
        """Stop worker processes / threads now (the loader is not used afterwards)."""

    def stats(self) -> LoaderStats:
        """Skipped samples and (where the backend times them) per-stage seconds since the loader was built."""


def replay_from(batches: Iterable[T], count: int) -> Iterator[T]:
    """An iterator over ``batches`` with its first ``count`` items drawn and dropped.

    Raises:
        RuntimeError: ``batches`` has fewer than ``count`` items.
    """
    it = iter(batches)
    for i in range(count):
        try:
            next(it)
        except StopIteration:
            raise RuntimeError(f"loader yielded {i} batches while skipping {count} already trained") from None
    return it


class ReplayResume:
    """The resume half of :class:`Loader` for backends whose epoch order depends only on (seed, epoch, rank,
    worker): a resume replays (reads and decodes, does not train) the batches already trained in the epoch."""

    def iter_from(self, batches_done: int) -> Iterator[Batch]:
        return replay_from(self, batches_done) if batches_done else iter(self)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: the position is reproduced by replay."""

    def close(self) -> None:
        """Nothing to stop."""

    def stats(self) -> LoaderStats:
        return LoaderStats()


class DataInput(str, Enum):
    """What a backend reads: shards written by shard-imagenet (``--data`` = the shard folder or URL), an
    ImageFolder tree (``--data`` = the folder holding ``train/`` and ``val/``), or nothing (generated data)."""

    SHARDS = "shards"
    IMAGE_TREE = "image tree"
    NONE = "none"


@dataclass(frozen=True)
class BackendSpec:
    """One registry entry: where a backend lives and what the rest of the project may know of it.

    Attributes:
        kind: its ``--loader`` name.
        target: ``"module:Class"`` of its :class:`Loader` (imported only when built).
        needs: the input it reads (:class:`DataInput`).
        order_by_workers: its epoch's data order depends on ``--workers`` (a resume must keep them).
        local_only: reads local files only (not a URL dataset).
        requires: a module that must be importable for it to work (None: always available).
        install_hint: what :meth:`available` says when ``requires`` is missing (one line; None: a generic line).
        needs_nvidia: on a ``cuda`` device it runs NVIDIA-only code (DALI, nvJPEG), so it cannot run on another
            vendor's ``cuda`` device (MetaX, AMD ROCm, ...); on a CPU device it runs its CPU path
            (:meth:`device_refusal`).
        stage_probe: ``"module:function"`` measuring its per-stage cost for io-bench with the backend's own
            code, None where it has no stages to measure; the function takes ``(kind, cfg, split, info,
            max_samples)`` (this entry's :class:`LoaderKind`, a :class:`LoaderConfig` giving batch size, image
            size and, for an image tree, ``data_root``; a :class:`Split`; the shard folder's
            :class:`~pipeline.dataset.DatasetInfo` or None; images to time) and returns a
            :class:`pipeline.backends.probe.StageCosts` (seconds per image on one core).
    """

    kind: "LoaderKind"
    target: str
    needs: DataInput
    order_by_workers: bool = False
    requires: str | None = None
    install_hint: str | None = None
    local_only: bool = False
    stage_probe: str | None = None
    needs_nvidia: bool = False

    def available(self) -> str | None:
        """None when this backend can be built here, else why not (one line)."""
        if self.requires is None:
            return None
        try:
            found = importlib.util.find_spec(self.requires) is not None
        except (ModuleNotFoundError, ValueError):  # its parent package is missing / a stubbed-out module
            found = False
        return None if found else (self.install_hint or f"{self.requires} is not installed")

    def device_refusal(self, device: torch.device, nvidia: bool, device_text: str) -> str | None:
        """Why this backend cannot run on ``device`` (one line), or None: a ``needs_nvidia`` backend on a ``cuda``
        device that is not NVIDIA's (``nvidia`` False). ``device_text``: how the line names the device, e.g.
        ``MetaX C500 (cuda:0)``. Imports nothing of the backend."""
        if not (self.needs_nvidia and device.type == "cuda" and not nvidia):
            return None
        return (f"--loader {self.kind.value} needs an NVIDIA GPU; this run's device is {device_text}: "
                f"use --loader cpu")

    def loader_class(self):
        module_name, cls_name = self.target.split(":")
        return getattr(importlib.import_module(module_name), cls_name)

    def probe(self):
        """The backend's own stage-measuring function (see ``stage_probe``).

        Raises:
            ValueError: the backend has no stages to measure.
        """
        if self.stage_probe is None:
            raise ValueError(f"no stages to measure for the {self.kind.value} backend")
        module_name, fn_name = self.stage_probe.split(":")
        return getattr(importlib.import_module(module_name), fn_name)


_REGISTRY: dict[LoaderKind, BackendSpec] = {spec.kind: spec for spec in (
    BackendSpec(LoaderKind.CPU, "pipeline.backends.cpu:CpuLoader", DataInput.SHARDS, order_by_workers=True,
                stage_probe="pipeline.backends.probe:probe_by_stats"),
    BackendSpec(LoaderKind.FOLDER, "pipeline.backends.folder:FolderLoader", DataInput.IMAGE_TREE,
                order_by_workers=True, local_only=True, stage_probe="pipeline.backends.probe:probe_by_stats"),
    BackendSpec(LoaderKind.SYNTHETIC, "pipeline.backends.synthetic:SyntheticLoader", DataInput.NONE),
    BackendSpec(LoaderKind.DALI, "pipeline.backends.dali:DaliLoader", DataInput.SHARDS, local_only=True,
                requires="nvidia.dali", install_hint="DALI not installed: pip install 'imagenet-pipeline[dali]'",
                stage_probe="pipeline.backends.dali:measure_stages", needs_nvidia=True),
    BackendSpec(LoaderKind.NVJPEG, "pipeline.backends.nvjpeg:NvjpegLoader", DataInput.SHARDS,
                order_by_workers=True, needs_nvidia=True),
)}


def backend_spec(kind: LoaderKind | str) -> BackendSpec:
    """The registry entry of ``kind`` (raises ValueError for an unknown name)."""
    return _REGISTRY[LoaderKind(kind)]


def build_loader(kind: LoaderKind, cfg: LoaderConfig, split: Split, info: DatasetInfo | None,
                 device: torch.device, rank: int = 0, world_size: int = 1) -> Loader:
    """Import backend ``kind`` and build its loader for ``split`` on this rank.

    Raises:
        ValueError: ``kind`` needs a dataset and ``info`` is None, or option values are invalid.
    """
    cls = backend_spec(kind).loader_class()
    return cls(cfg=cfg, split=Split(split), info=info, device=device, rank=rank, world_size=world_size)


def normalize_on_device(images_nhwc_u8: torch.Tensor, device: torch.device, normalize: bool = True) -> torch.Tensor:
    """``N×H×W×3`` uint8 (host, ideally pinned) → ``N×3×H×W`` on ``device`` with channels-last strides:
    float32 ImageNet-normalised, or the uint8 values themselves when ``normalize`` is False.

    The NHWC buffer permuted to NCHW already has channels-last strides, so no layout copy is made.
    """
    x = images_nhwc_u8.to(device, non_blocking=True).permute(0, 3, 1, 2)
    if not normalize:
        return x
    mean, inv_std = _normalization_constants(device)
    return x.float().sub_(mean).mul_(inv_std)


def to_device_prefetched(host_batches: Iterator[tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]],
                         device: torch.device, normalize: bool = True) -> Iterator[Batch]:
    """Host batches ``(N×H×W×3 uint8, N int64, keys)`` → :class:`Batch` on ``device``.

    On CUDA the copy and normalisation of batch ``i+1`` are queued on a side stream as soon as batch ``i`` is
    handed out, so they overlap the training step (timm's PrefetchLoader idea); the consumer's stream waits
    for that side stream before it uses a batch, and the tensors are recorded on the consumer's stream so the
    caching allocator does not reuse them early. Elsewhere each batch is converted when it is asked for.
    """
    if device.type != "cuda":
        for images, labels, keys in host_batches:
            yield Batch(normalize_on_device(images, device, normalize), labels.to(device), keys)
        return
    side = torch.cuda.Stream(device=device)

    def upload(item):
        images, labels, keys = item
        with torch.cuda.stream(side):
            return Batch(normalize_on_device(images, device, normalize), labels.to(device, non_blocking=True), keys)

    it = iter(host_batches)
    nxt = next(it, None)
    ready = upload(nxt) if nxt is not None else None
    while ready is not None:
        current = torch.cuda.current_stream(device)
        current.wait_stream(side)
        ready.images.record_stream(current)
        ready.labels.record_stream(current)
        batch = ready
        nxt = next(it, None)
        ready = upload(nxt) if nxt is not None else None
        yield batch


@cache
def _normalization_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and 1/std as ``1×3×1×1`` float32 on ``device``, made once per device."""
    mean = torch.tensor(IMAGENET_MEAN_255, device=device).view(1, 3, 1, 1)
    inv_std = (1.0 / torch.tensor(IMAGENET_STD_255, device=device)).view(1, 3, 1, 1)
    return mean, inv_std


__all__ = ["STAGES", "BackendSpec", "Batch", "DataInput", "Loader", "LoaderConfig", "LoaderKind", "LoaderStats",
           "OnBadSample", "ReplayResume", "Split", "StageTimes", "backend_spec", "build_loader", "normalize_on_device",
           "replay_from", "to_device_prefetched"]
