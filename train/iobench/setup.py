"""What an io-bench run resolves before it measures: :class:`BenchSetup` (the options, the shard folder, the
device, the host's cores, the sweep's worker counts, the ImageFolder tree and the step callback), made by
:func:`setup_run`; the empty result (:func:`new_result`); which requested backends can be measured here
(:func:`usable_loaders`, :func:`why_not_measured`); the sweep's default worker counts (:func:`default_sweep`) and
the ``folder`` baseline's tree (:func:`resolve_folder_root`)."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pipeline.backends import DataInput, LoaderKind, backend_spec
from pipeline.dataset import REPORT_FILE, DatasetInfo, LayoutKind
from pipeline.read.info import load_info
from train.distributed import cores_per_rank
from train.iobench.config import IoBenchConfig
from train.iobench.results import IoBenchResult, Machine, Settings
from train.precision import resolve_precision

@dataclass(frozen=True)
class BenchSetup:
    """What every step of one run needs: its options, the shard folder, the device, the host's cores, the sweep's
    worker counts, the ImageFolder tree of image-tree backends (None: none found) and the progress callback."""

    config: IoBenchConfig
    info: DatasetInfo
    device: torch.device
    cores: int
    sweep: tuple[int, ...]
    folder_root: Path | None
    progress: Callable[[str], None]

    def inputs(self, kind: LoaderKind) -> tuple[DatasetInfo | None, Path | None]:
        """``(info, data_root)`` a loader of ``kind`` reads: the shards, or (image-tree backends) the tree."""
        if backend_spec(kind).needs is DataInput.IMAGE_TREE:
            return None, self.folder_root
        return self.info, None


def default_sweep(cores: int) -> tuple[int, ...]:
    """1, 2, 4, ... below ``cores``, and ``cores`` itself."""
    counts, workers = [], 1
    while workers < cores:
        counts.append(workers)
        workers *= 2
    return tuple(counts + [cores])


def resolve_folder_root(config: IoBenchConfig, info: DatasetInfo) -> Path | None:
    """The ImageFolder tree of the ``folder`` baseline: given, or the sharder's recorded class-folder source."""
    if config.folder_root is not None:
        return Path(config.folder_root)
    if info.remote:
        return None
    try:  # shard-imagenet records its source tree in report.json
        report = json.loads((Path(info.root) / REPORT_FILE).read_text())
    except (OSError, ValueError):
        return None
    src = report.get("source")
    if src and report.get("layout") == LayoutKind.CLASS_FOLDERS.value and (Path(src) / "train").is_dir():
        return Path(src)
    return None


def setup_run(config: IoBenchConfig, progress: Callable[[str], None]) -> BenchSetup:
    """Check ``config`` and resolve what it leaves open (device, cores, sweep, folder tree).

    Raises:
        pipeline.dataset.DatasetError: ``config.data`` is not a usable shard folder.
        ValueError: bad options.
    """
    info = load_info(config.data)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cores = cores_per_rank()  # one process: all the cores it may use
    folder_root = resolve_folder_root(config, info)
    if config.folder_root is not None and not (Path(config.folder_root) / "train").is_dir():
        raise ValueError(f"--folder-root {config.folder_root}: no train/ folder in it; give the ImageFolder tree "
                         f"the shards were made from (train/<class>/...)")
    return BenchSetup(config, info, device, cores, config.workers or default_sweep(cores), folder_root, progress)


def new_result(setup: BenchSetup) -> IoBenchResult:
    """An empty result holding the machine and the run's configuration."""
    config, device = setup.config, setup.device
    return IoBenchResult(
        machine=Machine(setup.cores, platform.processor() or platform.machine(), str(device),
                        torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU only)",
                        torch.__version__),
        config=Settings(str(config.data), config.batch_size, config.image_size,
                        resolve_precision(config.precision, device).value, config.repeat, config.loader_batches,
                        config.warmup_batches, config.train_steps, config.warmup_steps, list(setup.sweep),
                        setup.info.split("train").num_samples,
                        str(setup.folder_root) if setup.folder_root else None))


def why_not_measured(kind: LoaderKind, setup: BenchSetup) -> str | None:
    """Why backend ``kind`` cannot be measured here (one line), or None: no input for it, not installed, a
    backend that needs an NVIDIA GPU on another vendor's ``cuda`` device (:func:`train.build.check_loader_device`:
    ``--loader dali needs an NVIDIA GPU; this run's device is MetaX C500 (cuda): use --loader cpu``), local files
    only with a URL dataset."""
    from train.build import check_loader_device

    spec = backend_spec(kind)
    if spec.needs is DataInput.IMAGE_TREE and setup.folder_root is None:
        return "no ImageFolder tree: pass --folder-root DIR (the class-folder tree the shards were made from)"
    try:
        check_loader_device(kind, setup.device)
    except ValueError as exc:
        return str(exc)
    missing = spec.available()
    if missing is not None:
        return missing
    if spec.local_only and setup.info.remote:
        return "reads local files only; the data is a URL"
    return None


def usable_loaders(setup: BenchSetup, skipped: dict[str, str]) -> list[LoaderKind]:
    """The requested backends that can be measured here; the others go into ``skipped`` with the reason."""
    usable = []
    for kind in setup.config.loaders:
        why = why_not_measured(kind, setup)
        if why is None:
            usable.append(kind)
        else:
            skipped[kind.value] = why
    return usable


__all__ = ["BenchSetup", "default_sweep", "new_result", "resolve_folder_root", "setup_run",
           "usable_loaders", "why_not_measured"]
