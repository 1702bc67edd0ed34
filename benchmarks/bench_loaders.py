"""Loader throughput of every decode backend on the same real images, measured in one run, against the targets.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_loaders.py [--samples DIR] [--workers 2]
        [--image-size 224] [--repeat 5]

Shards ``../shared/data/imagenet-samples`` (800 real ILSVRC2012 JPEGs, one class folder each, all in train/,
each entered ``--copies`` times so that an epoch is long enough to show the steady state),
then times train epochs (RandomResizedCrop + flip, uint8 batches of 64, no model; each loader built once and warmed
up by one untimed epoch, so this is the steady state of a long run) of:

* cpu          this project's webdataset + DataLoader + libjpeg-turbo backend, ``--workers`` workers;
* cpu-1w       the same with 1 worker (the scaling row: cpu / cpu-1w);
* dali-ref     the leanest honest DALI CPU pipeline, written here: ``fn.readers.webdataset`` (``.idx`` index
               files, shuffled) → ``fn.decoders.image_random_crop`` (device cpu) → ``fn.resize`` → ``fn.flip``
               (coin flip), uint8 HWC, ``num_threads`` = ``--workers``, ``device_id=None``;
* imagefolder  torchvision's own ``ImageFolder`` + ``RandomResizedCrop`` + ``RandomHorizontalFlip`` +
               ``PILToTensor``, DataLoader with ``--workers`` persistent workers, shuffled, the same batch size;
* dali         this project's ``dali`` backend on the CPU (device_id=None) when no GPU is present;
* folder       this project's ``folder`` backend (ImageFolder + PIL);
* decode-turbo simplejpeg (libjpeg-turbo) full decode of every file on ``--workers`` persistent processes, no
               crop, no batching: the full-decode-only ceiling.

Same images, batch size and workers / threads for every row; ``--repeat`` rounds interleaved, median reported.
Targets (printed with "met" / "NOT met"): cpu ≥ 1.3× dali-ref, ≥ 2.0× imagefolder, ≥ 1.0× decode-turbo, and
cpu ≥ 1.8× cpu-1w.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import DEFAULT_SAMPLES, sample_tree, shard_sample_tree  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.backends import (DataInput, FolderConfig, LoaderConfig, LoaderKind, Split,  # noqa: E402
                               backend_spec, build_loader)
from pipeline.read.info import load_info  # noqa: E402
from pipeline.read.transforms import decoder_name  # noqa: E402


def _decode_turbo(path: str) -> int:
    import simplejpeg

    with open(path, "rb") as f:
        simplejpeg.decode_jpeg(f.read(), colorspace="RGB")
    return 1


class DecodeOnly:
    """Full decode of every file on ``workers`` persistent processes (started and warmed up once, like the
    loaders' workers); each call decodes all ``files`` once and returns their number."""

    def __init__(self, files: list[str], workers: int):
        self.files = files
        self.pool = ProcessPoolExecutor(workers)
        self()

    def __call__(self) -> int:
        return sum(self.pool.map(_decode_turbo, self.files, chunksize=16))

    def close(self) -> None:
        self.pool.shutdown()


class DaliReference:
    """The lean DALI CPU train pipeline (see the module docstring), built once and warmed up by one epoch;
    each call runs ``num_samples // batch_size`` batches and returns the images they hold."""

    def __init__(self, info, cfg: LoaderConfig):
        from nvidia.dali import fn, pipeline_def, types

        shards = info.shard_paths("train")
        size = cfg.image_size

        @pipeline_def(batch_size=cfg.batch_size, num_threads=cfg.workers, device_id=None, seed=cfg.seed)
        def lean():
            jpegs, labels = fn.readers.webdataset(paths=shards, index_paths=[p[:-4] + ".idx" for p in shards],
                                                  ext=["jpg", "cls"], random_shuffle=True, seed=cfg.seed)
            images = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB)
            images = fn.resize(images, resize_x=size, resize_y=size)
            return fn.flip(images, horizontal=fn.random.coin_flip()), labels

        self.pipe = lean()
        self.pipe.build()
        self.batches = info.split("train").num_samples // cfg.batch_size
        self.batch_size = cfg.batch_size
        self()

    def __call__(self) -> int:
        n = 0
        for _ in range(self.batches):
            images, _ = self.pipe.run()
            n += len(np.asarray(images.as_tensor()))  # the uint8 N×S×S×3 batch, as a host array (no copy)
        return n


class ImageFolderReference:
    """torchvision's ImageFolder + RandomResizedCrop + RandomHorizontalFlip + PILToTensor (uint8 CHW) in a
    DataLoader (shuffled, whole batches, persistent workers), warmed up by one epoch; each call runs an epoch."""

    def __init__(self, tree: Path, cfg: LoaderConfig):
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms

        tf = transforms.Compose([transforms.RandomResizedCrop(cfg.image_size), transforms.RandomHorizontalFlip(),
                                 transforms.PILToTensor()])
        ds = datasets.ImageFolder(str(tree / "train"), transform=tf)
        self.loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                 num_workers=cfg.workers, persistent_workers=True)
        self()

    def __call__(self) -> int:
        return sum(len(labels) for _, labels in self.loader)


class EpochRunner:
    """One loader, built once and warmed up by a first epoch; each call times-to-be runs the next epoch."""

    def __init__(self, kind: LoaderKind, cfg: LoaderConfig, info):
        shards = backend_spec(kind).needs is DataInput.SHARDS
        self.loader = build_loader(kind, cfg, Split.TRAIN, info if shards else None, torch.device("cpu"))
        self.epoch = 0
        self()  # warm-up: worker start-up of loaders that keep their workers is not counted

    def __call__(self) -> int:
        self.loader.set_epoch(self.epoch)
        self.epoch += 1
        return sum(b.labels.shape[0] for b in self.loader)


def _parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--copies", type=int, default=4, help="each image enters the epoch this many times (default 4)")
    args = p.parse_args()
    if not args.samples.is_dir():
        p.error(f"{args.samples}: not found; pass --samples DIR of JPEG files")
    return args


def _modes(args: argparse.Namespace, tmp: Path) -> tuple[list[str], dict]:
    """Shard the sample tree and build every mode: (files, name → runner)."""
    files = sample_tree(args.samples, tmp / "tree", args.copies)
    shard_sample_tree(tmp / "tree", tmp / "shards", args.workers)
    info = load_info(tmp / "shards")
    cfg = LoaderConfig(batch_size=args.batch_size, image_size=args.image_size, workers=args.workers,
                       options=(FolderConfig(tmp / "tree"),), normalize=False)  # uint8 batches from every backend
    modes = {
        "cpu": EpochRunner(LoaderKind.CPU, cfg, info),
        "cpu-1w": EpochRunner(LoaderKind.CPU, dataclasses.replace(cfg, workers=1), info),
        "dali-ref": DaliReference(info, cfg),
        "imagefolder": ImageFolderReference(tmp / "tree", cfg),
        "folder": EpochRunner(LoaderKind.FOLDER, cfg, info),
        "decode-turbo": DecodeOnly(files, args.workers),
    }
    why_not = backend_spec(LoaderKind.DALI).available()
    if why_not is None:
        modes["dali"] = EpochRunner(LoaderKind.DALI, cfg, info)
    else:
        print(f"{why_not}: dali row skipped")
    return files, modes


def _measure(modes: dict, repeat: int) -> dict[str, list[float]]:
    """img/s of every mode, ``repeat`` rounds interleaved."""
    rates: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(repeat):
        for mode, run in modes.items():
            t0 = time.perf_counter()
            n = run()
            rates[mode].append(n / (time.perf_counter() - t0))
    return rates


TARGETS = (("dali-ref", 1.3), ("imagefolder", 2.0), ("decode-turbo", 1.0), ("cpu-1w", 1.8))


def _print(args: argparse.Namespace, files: list[str], rates: dict[str, list[float]]) -> None:
    med = {m: statistics.median(r) for m, r in rates.items()}
    print(f"{len(files) // args.copies} real JPEGs x {args.copies} = {len(files)} per epoch, RandomResizedCrop "
          f"{args.image_size} + flip, uint8 batches of {args.batch_size}, {args.workers} workers / threads, "
          f"median of {args.repeat} warm epochs, interleaved (epoch = whole batches only)")
    print(f"cpu backend decoders: {decoder_name()}; decode-turbo: simplejpeg full decode (the libjpeg-turbo "
          f"ceiling); dali-ref: DALI {_dali_version()} lean CPU pipeline; imagefolder: torchvision's own")
    print("rows (img/s, median and range; ratios to the references):")
    refs = ("dali-ref", "imagefolder", "decode-turbo")
    for mode in (m for m in ("cpu", "cpu-1w", "dali-ref", "dali", "imagefolder", "folder", "decode-turbo") if m in med):
        vs = [f"{med[mode] / med[b]:.2f}x {b}" for b in refs if b in med and b != mode]
        print(f"  {mode:<13} {med[mode]:7.0f}  ({min(rates[mode]):.0f}-{max(rates[mode]):.0f})  {'  '.join(vs)}")
    for base, target in TARGETS:
        got = med["cpu"] / med[base]
        print(f"target cpu >= {target}x {base}: {got:.2f}x, {'met' if got >= target else 'NOT met'}")
    spread = max((max(r) - min(r)) / statistics.median(r) for r in rates.values())
    if spread > 0.25:
        print(f"warning: a row's spread is {100 * spread:.0f}% of its median: the machine was busy; re-run")


def _dali_version() -> str:
    try:
        import nvidia.dali

        return nvidia.dali.__version__
    except ImportError:
        return "(not installed)"


def main() -> int:
    args = _parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        files, modes = _modes(args, Path(tmp))
        rates = _measure(modes, args.repeat)
        modes["decode-turbo"].close()
    _print(args, files, rates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
