"""Loader throughput of every decode backend on the same real images, measured in one run.

    .venv/bin/python benchmarks/bench_loaders.py [--samples DIR] [--workers 2] [--image-size 224] [--repeat 3]

Shards ``../shared/data/imagenet-samples`` (800 real ILSVRC2012 JPEGs, one class folder each, all in train/,
each entered ``--copies`` times so that an epoch is long enough to show the steady state),
then times train epochs (RandomResizedCrop + flip, batches of 64, no model; each loader built once and warmed up
by one untimed epoch, so this is the steady state of a long run) of:

* cpu       this project's webdataset + DataLoader + libjpeg-turbo (simplejpeg, DCT-scaled) backend;
* dali      DALI's webdataset reader + decoder + crop on the CPU (device_id=None) when no GPU is present;
* folder    torchvision ImageFolder + PIL + RandomResizedCrop (the baseline users compare against);
* cpu-320   the cpu backend on shards re-made with ``shard-imagenet --max-size 320`` (pre-resized);
* decode    PIL full decode of every file on all workers, no crop;
* decode-turbo  simplejpeg (libjpeg-turbo) full decode of every file: the decode-only ceiling.

Each is run ``--repeat`` times interleaved, median reported, and printed as a ratio of ``folder`` and of
``dali``. All backends hand out uint8 batches (no normalisation). Targets (issue 4): cpu ≥ 1.2× dali-on-CPU
and ≥ 2.0× folder. Run it once with stock Pillow and once after ``make simd`` to see what pillow-simd adds.
"""

from __future__ import annotations

import argparse
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

import PIL  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.backends import DataInput, LoaderConfig, LoaderKind, Split, backend_spec, build_loader  # noqa: E402
from pipeline.dataset import load_info  # noqa: E402
from pipeline.read.transforms import decoder_name  # noqa: E402


def _decode(path: str) -> int:
    with Image.open(path) as img:
        img.convert("RGB").load()
    return 1


def _decode_turbo(path: str) -> int:
    import simplejpeg

    with open(path, "rb") as f:
        simplejpeg.decode_jpeg(f.read(), colorspace="RGB")
    return 1


def decode_only(files: list[str], workers: int, fn=_decode) -> None:
    with ProcessPoolExecutor(workers) as pool:
        sum(pool.map(fn, files, chunksize=16))


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
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--copies", type=int, default=4, help="each image enters the epoch this many times (default 4)")
    p.add_argument("--max-size", type=int, default=320, help="longer-side limit of the pre-resized shard set (320)")
    args = p.parse_args()
    if not args.samples.is_dir():
        p.error(f"{args.samples}: not found; pass --samples DIR of JPEG files")
    return args


def _modes(args: argparse.Namespace, tmp: Path) -> tuple[list[str], dict]:
    """Shard the sample tree twice (as is, and pre-resized) and build every mode: (files, name → runner)."""
    from pipeline.shard.run import ShardConfig, shard_tree

    files = sample_tree(args.samples, tmp / "tree", args.copies)
    shard_sample_tree(tmp / "tree", tmp / "shards", args.workers)
    info = load_info(tmp / "shards")
    shard_tree(ShardConfig(src=tmp / "tree", out=tmp / "shards-small", shard_size=100, workers=args.workers,
                           max_size=args.max_size, progress=False))
    info_small = load_info(tmp / "shards-small")
    cfg = LoaderConfig(batch_size=args.batch_size, image_size=args.image_size, workers=args.workers,
                       data_root=tmp / "tree", normalize=False)  # uint8 batches from every backend
    modes = {
        "cpu": EpochRunner(LoaderKind.CPU, cfg, info),
        "folder": EpochRunner(LoaderKind.FOLDER, cfg, info),
        f"cpu-{args.max_size}": EpochRunner(LoaderKind.CPU, cfg, info_small),
        "decode": lambda: decode_only(files, args.workers) or len(files),
        "decode-turbo": lambda: decode_only(files, args.workers, _decode_turbo) or len(files),
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


def _print(args: argparse.Namespace, files: list[str], rates: dict[str, list[float]]) -> None:
    med = {m: statistics.median(r) for m, r in rates.items()}
    print(f"{len(files) // args.copies} real JPEGs x {args.copies} = {len(files)} per epoch, RandomResizedCrop {args.image_size} + flip, uint8 batches of {args.batch_size}, "
          f"{args.workers} workers, median of {args.repeat} warm epochs (epoch = whole batches only)")
    print(f"cpu backend decoders: {decoder_name()}; decode: PIL {PIL.__version__} full decode; decode-turbo: "
          f"simplejpeg full decode (the libjpeg-turbo ceiling); cpu-{args.max_size}: cpu backend on shards made with "
          f"shard-imagenet --max-size {args.max_size}")
    loaders = [m for m in ("cpu", f"cpu-{args.max_size}", "dali", "folder") if m in med]
    print("loaders (img/s, median and spread; ratios to the baselines):")
    for mode in loaders:
        rate = med[mode]
        vs = [f"{rate / med[b]:.2f}x {b}" for b in ("folder", "dali") if b in med and b != mode]
        print(f"  {mode:<12} {rate:8.0f}  ({min(rates[mode]):.0f}-{max(rates[mode]):.0f})  {'  '.join(vs)}")
    print("decode-only ceilings (full decode, no crop, no batching):")
    for mode in ("decode", "decode-turbo"):
        print(f"  {mode:<12} {med[mode]:8.0f}  ({min(rates[mode]):.0f}-{max(rates[mode]):.0f})  "
              f"cpu backend = {med['cpu'] / med[mode]:.2f}x of it")
    for base, target in (("folder", 2.0), ("dali", 1.2)):
        if base in med:
            got = med["cpu"] / med[base]
            print(f"target cpu >= {target}x {base}: {got:.2f}x, {'met' if got >= target else 'NOT met'}")
    spread = max((max(r) - min(r)) / statistics.median(r) for r in rates.values())
    if spread > 0.25:
        print(f"warning: a row's spread is {100 * spread:.0f}% of its median: the machine was busy; re-run")


def main() -> int:
    args = _parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        files, modes = _modes(args, Path(tmp))
        rates = _measure(modes, args.repeat)
    _print(args, files, rates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
