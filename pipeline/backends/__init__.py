"""Decode backends behind one contract, with a lazy registry: the contract (:class:`Loader`, :class:`Batch`,
:class:`LoaderConfig` and the per-backend sub-configs, :class:`LoaderStats`, the typed stage seconds
:class:`StageSeconds` / :class:`StageTimes`) and the registry (:class:`BackendSpec`: what each
backend needs as input and how it is measured), nothing backend-specific.

Every backend yields :class:`Batch` objects whose images are already on the training device, normalised
and in channels-last memory format. A backend's module is imported only when it is built, so an
install without DALI never imports DALI. The host batch and its device stage live in
:mod:`pipeline.backends.staging`, what the shard backends share in :mod:`pipeline.backends.shards`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
from pathlib import Path
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Iterator, Protocol, TypeVar, runtime_checkable

import torch

from pipeline.backends.dali_config import DaliConfig, DaliOutput
from pipeline.dataset import DatasetInfo
from pipeline.hostinfo import cores_per_local_rank
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
class SyntheticConfig:
    """Options of the ``synthetic`` backend alone (its registry entry names this class): the epoch sizes and class
    count it generates when no dataset is given (defaults: ILSVRC2012's). Raises ValueError (one line, naming the
    flag) for a value below 1.

    Attributes:
        train_samples: images of a train epoch (``--synthetic-train-samples``).
        val_samples: images of an eval pass (``--synthetic-val-samples``).
        classes: the class count (model output size).
    """

    train_samples: int = IMAGENET_TRAIN_SAMPLES
    val_samples: int = IMAGENET_VAL_SAMPLES
    classes: int = IMAGENET_CLASSES

    def __post_init__(self) -> None:
        for name, value in (("--synthetic-train-samples", self.train_samples),
                            ("--synthetic-val-samples", self.val_samples), ("synthetic_classes", self.classes)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")


@dataclass(frozen=True)
class FolderConfig:
    """Options of the ``folder`` backend alone (its registry entry names this class).

    Attributes:
        data_root: the ``--data`` folder holding the ImageFolder tree's ``train/`` and ``val/`` (None: not given;
            the backend then refuses to build, in one line).
    """

    data_root: Path | str | None = None


# (JSON key, sub-config class, its field): the sub-configs' fields as LoaderConfig.json_fields lays them out
_FLAT_SUB_FIELDS = (("synthetic_train_samples", SyntheticConfig, "train_samples"),
                    ("synthetic_val_samples", SyntheticConfig, "val_samples"),
                    ("synthetic_classes", SyntheticConfig, "classes"), ("data_root", FolderConfig, "data_root"),
                    *((f"dali_{f.name}", DaliConfig, f.name) for f in dataclasses.fields(DaliConfig)))


@dataclass(frozen=True)
class LoaderConfig:
    """Options shared by every backend, and the per-backend sub-configs (``options``).

    Attributes:
        batch_size: samples per batch on this rank.
        image_size: output side in pixels (square crops), in :data:`~pipeline.read.transforms.IMAGE_SIZE_RANGE`.
        workers: CPU decode processes per rank (0 = decode in the training process); None (the default, also
            ``train``'s): :func:`pipeline.hostinfo.cores_per_local_rank`, resolved when the config is made.
        seed: seed of shard order, shuffle buffer and crops.
        shuffle_buffer: samples held by each worker's train shuffle buffer (1 = no shuffle).
        crop_pct: eval centre-crop ratio (:data:`~pipeline.read.transforms.CROP_PCT`, 0.875 = Resize 256 /
            CenterCrop 224).
        normalize: True: images arrive as ImageNet-normalised float32; False: as uint8 0..255 (the same
            geometry), for loader benchmarks and for models that normalise themselves.
        on_bad_sample: a sample that does not decode is skipped and counted, or an error (:class:`OnBadSample`;
            its value as a string is accepted too).
        remote_timeout: seconds a remote download (``--data`` a URL) may give no byte before it is retried:
            :class:`~pipeline.read.tarstream.RemoteOptions` ``timeout_s``.
        remote_retries: retries of a remote download that timed out or failed before the run stops.
        options: the sub-configs of the backends that have options of their own (:class:`SyntheticConfig`,
            :class:`FolderConfig`, :class:`~pipeline.backends.dali_config.DaliConfig`: the classes their registry
            entries name, ``BackendSpec.options``); a backend reads its own with :meth:`options_for` (its defaults
            where none is given), ignores the others.

    These defaults are the ``train`` command's (its flags read them from here). Raises ValueError (one line,
    naming the flag) for a value no backend can use.
    """

    batch_size: int = 256
    image_size: int = 224
    workers: int | None = None
    seed: int = 0
    shuffle_buffer: int = 500
    crop_pct: float = CROP_PCT
    normalize: bool = True
    on_bad_sample: OnBadSample = OnBadSample.SKIP
    remote_timeout: float = RemoteOptions.timeout_s
    remote_retries: int = RemoteOptions.retries
    options: tuple = ()

    def __post_init__(self) -> None:
        if self.workers is None:
            object.__setattr__(self, "workers", cores_per_local_rank())
        if self.on_bad_sample not in set(OnBadSample):
            raise ValueError(f"--on-bad-sample must be {' or '.join(choice.value for choice in OnBadSample)}, "
                             f"got {self.on_bad_sample!r}")
        object.__setattr__(self, "on_bad_sample", OnBadSample(self.on_bad_sample))  # "error" -> the member
        if self.image_size > IMAGE_SIZE_RANGE[1]:  # a side no backend should be asked for (shared-memory batches)
            raise ValueError(f"--image-size must be <= {IMAGE_SIZE_RANGE[1]} (px), got {self.image_size}")
        for name, value, low in (("--batch-size", self.batch_size, 1),
                                 ("--image-size", self.image_size, IMAGE_SIZE_RANGE[0]),
                                 ("--workers", self.workers, 0), ("--shuffle-buffer", self.shuffle_buffer, 1),
                                 ("--remote-retries", self.remote_retries, 0)):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        self.remote_options()  # --remote-timeout: a finite number of seconds > 0
        object.__setattr__(self, "options", tuple(self.options))  # a list given: frozen

    def options_for(self, cls: type[T]) -> T:
        """The last sub-config of class ``cls`` in ``options`` (a later one overrides), else ``cls()`` (defaults)."""
        return next((sub for sub in reversed(self.options) if isinstance(sub, cls)), None) or cls()

    def json_fields(self) -> dict[str, object]:
        """The fields as the metrics JSON's ``resolved_config.loader_cfg`` lays them out (as it did before the
        sub-configs existed, so readers of earlier runs' JSON find the same keys): the shared options, with each
        backend sub-config's fields flat in place of ``options`` (:data:`_FLAT_SUB_FIELDS`; their defaults where no
        sub-config is given), before ``normalize``."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            if f.name == "normalize":
                out.update((key, getattr(self.options_for(cls), attr)) for key, cls, attr in _FLAT_SUB_FIELDS)
            if f.name != "options":
                out[f.name] = getattr(self, f.name)
        return out

    def remote_options(self) -> RemoteOptions:
        """The timeout and retries of remote downloads (``remote_timeout``, ``remote_retries``)."""
        return RemoteOptions(self.remote_timeout, self.remote_retries)


# The stages a backend's time splits into, in order: read (shard / file bytes), decode (JPEG → RGB), augment
# (crop, resize, flip), collate (assembling the batch); StageSeconds also carries io-bench's host→device copy.
STAGES = ("read", "decode", "augment", "collate")
H2D_COPY = "h2d copy"  # the display / JSON name of :attr:`StageSeconds.h2d`


@dataclass(frozen=True)
class StageSeconds:
    """Seconds per stage (of a batch, a loader's life, or one image: whatever the holder says), with arithmetic.

    Attributes:
        read: reading the samples' bytes (tar reading + shuffle buffer, or the file).
        decode: JPEG → RGB.
        augment: crop, resize, flip (into the batch slot).
        collate: assembling the batch (allocation, labels, the bad-sample policy).
        h2d: host → device copy of the batch (measured by io-bench only; 0 where not measured).

    ``a + b``, ``a - b`` are per stage; ``a * k``, ``a / k`` scale every stage by a number.
    """

    read: float = 0.0
    decode: float = 0.0
    augment: float = 0.0
    collate: float = 0.0
    h2d: float = 0.0

    @classmethod
    def from_named(cls, named) -> "StageSeconds":
        """From ``(name, seconds)`` pairs or a ``name → seconds`` mapping using the names of :meth:`items`
        (missing names count 0). Raises ValueError for an unknown name."""
        pairs = tuple(named.items() if hasattr(named, "items") else named)
        unknown = [name for name, _ in pairs if name not in _FIELD_OF_NAME]
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}: expected one of {', '.join(_FIELD_OF_NAME)}")
        return cls(**{_FIELD_OF_NAME[name]: float(seconds) for name, seconds in pairs})

    def _values(self) -> tuple[float, ...]:
        return (self.read, self.decode, self.augment, self.collate, self.h2d)

    def __add__(self, other: "StageSeconds") -> "StageSeconds":
        return StageSeconds(*(a + b for a, b in zip(self._values(), other._values())))

    def __sub__(self, other: "StageSeconds") -> "StageSeconds":
        return StageSeconds(*(a - b for a, b in zip(self._values(), other._values())))

    def __mul__(self, factor: float) -> "StageSeconds":
        return StageSeconds(*(a * factor for a in self._values()))

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> "StageSeconds":
        """Every stage divided by ``divisor`` (e.g. a sample count). Raises ZeroDivisionError for 0."""
        return StageSeconds(*(a / divisor for a in self._values()))

    @property
    def total(self) -> float:
        """Seconds over all stages (``h2d`` included: 0 where not measured)."""
        return sum(self._values())

    def items(self, with_h2d: bool = False) -> tuple[tuple[str, float], ...]:
        """``(name, seconds)`` in stage order with the names of :data:`STAGES`, then ``("h2d copy", h2d)`` when
        ``with_h2d`` (for display and JSON)."""
        pairs = tuple(zip(STAGES, self._values()))
        return pairs + ((H2D_COPY, self.h2d),) if with_h2d else pairs

    def as_dict(self, with_h2d: bool = False) -> dict[str, float]:
        """``name → seconds`` in the order of :meth:`items` (a new dict: JSON, a plot's row)."""
        return dict(self.items(with_h2d))

    def to_json(self) -> dict[str, float]:
        """The loader's four stages by name (:meth:`as_dict` without ``h2d``, which only io-bench measures and
        writes itself): how a report part holding these seconds stands in JSON."""
        return self.as_dict()

    def with_h2d(self, seconds: float) -> "StageSeconds":
        """These stages with ``h2d`` set to ``seconds``."""
        return dataclasses.replace(self, h2d=seconds)


_FIELD_OF_NAME = MappingProxyType(dict(zip(STAGES + (H2D_COPY,), ("read", "decode", "augment", "collate", "h2d"))))


@dataclass(frozen=True)
class StageTimes:
    """Seconds a backend spent per stage, and the samples they cover.

    Attributes:
        seconds: per stage (:class:`StageSeconds`), summed over this rank's workers.
        samples: images those seconds cover.
    """

    seconds: StageSeconds = StageSeconds()
    samples: int = 0

    def __add__(self, other: "StageTimes") -> "StageTimes":
        return StageTimes(self.seconds + other.seconds, self.samples + other.samples)

    def __sub__(self, earlier: "StageTimes") -> "StageTimes":
        """What was spent between ``earlier`` (a snapshot of the same loader) and this snapshot."""
        return StageTimes(self.seconds - earlier.seconds, self.samples - earlier.samples)

    def per_image(self) -> StageSeconds | None:
        """Seconds per image for each stage, or None when no sample is covered."""
        return self.seconds / self.samples if self.samples else None


@dataclass(frozen=True)
class LoaderStats:
    """What a loader counted since it was built (a snapshot: later iteration does not change it).

    Attributes:
        skipped: ``"<shard>: <key>: <why>"`` of every sample that failed to decode (already named on stderr).
        stages: per-stage seconds and the samples they cover (:class:`StageTimes`) for backends that time their
            own stages, else None.
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
        options: the class of its own sub-config (:class:`SyntheticConfig`, :class:`FolderConfig`), read from
            ``LoaderConfig.options`` (:meth:`options_of`); None: it has no options of its own.
        stage_probe: ``"module:function"`` measuring its per-stage cost for io-bench with the backend's own
            code, None where it has no stages to measure; the function takes ``(kind, cfg, split, info,
            max_samples)`` (this entry's :class:`LoaderKind`, a :class:`LoaderConfig` giving batch size, image
            size and, for an image tree, its :class:`FolderConfig`; a :class:`Split`; the shard folder's
            :class:`~pipeline.dataset.DatasetInfo` or None; images to time) and returns a
            :class:`pipeline.backends.probe.StageCosts` (:class:`StageSeconds` per image on one core).
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
    options: type | None = None

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

    def options_of(self, cfg: LoaderConfig):
        """This backend's sub-config in ``cfg`` (its defaults where ``cfg`` holds none); None when it has no options
        of its own."""
        return None if self.options is None else cfg.options_for(self.options)

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


_REGISTRY = MappingProxyType({spec.kind: spec for spec in (
    BackendSpec(LoaderKind.CPU, "pipeline.backends.cpu:CpuLoader", DataInput.SHARDS, order_by_workers=True,
                stage_probe="pipeline.backends.probe:probe_by_stats"),
    BackendSpec(LoaderKind.FOLDER, "pipeline.backends.folder:FolderLoader", DataInput.IMAGE_TREE,
                order_by_workers=True, local_only=True, stage_probe="pipeline.backends.probe:probe_by_stats",
                options=FolderConfig),
    BackendSpec(LoaderKind.SYNTHETIC, "pipeline.backends.synthetic:SyntheticLoader", DataInput.NONE,
                options=SyntheticConfig),
    BackendSpec(LoaderKind.DALI, "pipeline.backends.dali:DaliLoader", DataInput.SHARDS, local_only=True,
                requires="nvidia.dali", install_hint="DALI not installed: pip install 'imagenet-pipeline[dali]'",
                stage_probe="pipeline.backends.dali_stages:measure_stages", needs_nvidia=True, options=DaliConfig),
    BackendSpec(LoaderKind.NVJPEG, "pipeline.backends.nvjpeg:NvjpegLoader", DataInput.SHARDS,
                order_by_workers=True, needs_nvidia=True),
)})


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


__all__ = ["H2D_COPY", "STAGES", "BackendSpec", "Batch", "DaliConfig", "DaliOutput", "DataInput", "FolderConfig",
           "Loader", "LoaderConfig", "LoaderKind", "LoaderStats", "OnBadSample", "Split", "StageSeconds",
           "StageTimes", "SyntheticConfig", "backend_spec", "build_loader"]
