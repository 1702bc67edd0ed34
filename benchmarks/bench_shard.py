"""Sharding throughput on the real ImageNet samples, against a plain tar copy, measured in one run.

    .venv/bin/python benchmarks/bench_shard.py [--samples DIR] [--workers N] [--repeat 3]

Builds a class-folder tree of symlinks to ``../shared/data/imagenet-samples`` (800 real ILSVRC2012 JPEGs, see
:func:`benchmarks.common.sample_tree`) and times, each ``--repeat`` times (median reported, page cache warm
after the first read):

* baseline   every file copied into tars with tarfile (no decode, no checks): the I/O + tar floor;
* decode     every file read and fully decoded to RGB by libjpeg-turbo (``simplejpeg.decode_jpeg``, default
             accurate DCT), in ``--workers`` forked processes taking ``--shard-size`` files per task, as the
             sharder's workers do: what one full decode of the data set costs on these cores;
* sharder    shard-imagenet defaults: integrity check (every file decoded at 1/8 scale), clean JPEGs passed
             through byte for byte, tars + DALI indexes + part records written and fsynced;
* reencode   shard-imagenet --max-size 256 --quality 90: decode, downscale and re-encode every image.

Every mode's wall time includes listing the files (the sharder: its whole scan and planning) and starting its
processes. Prints img/s, MB/s, each mode's speed as a ratio of the baseline, then the target: the sharder's
rate over the full-decode rate of the same run, >= 1.0x ("met" / "NOT met").
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import DEFAULT_SAMPLES, sample_tree  # noqa: E402
from pipeline.shard.run import ShardConfig, default_workers, shard_tree  # noqa: E402

TARGET = 1.0  # sharder img/s over full-decode img/s


def baseline_copy(tree: Path, out: Path, shard_size: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = sorted((tree / "train").rglob("*.JPEG"))
    for k in range(0, len(files), shard_size):
        with tarfile.open(out / f"copy-{k // shard_size:06d}.tar", "w", format=tarfile.GNU_FORMAT) as tf:
            for f in files[k:k + shard_size]:
                tf.add(f.resolve(), arcname=f.name)


def _decode_files(paths: list[str]) -> int:
    """Worker of :func:`full_decode`: read and fully decode each file to RGB; returns the pixels decoded."""
    import simplejpeg

    pixels = 0
    for path in paths:
        with open(path, "rb") as f:
            pixels += simplejpeg.decode_jpeg(f.read()).size // 3
    return pixels


def full_decode(tree: Path, workers: int, shard_size: int) -> None:
    """List every file of ``tree/train`` and decode it in full, ``shard_size`` files per task in ``workers``
    forked processes (the decode-only floor of a sharder whose check were a full decode)."""
    files = sorted(str(f) for f in (tree / "train").rglob("*.JPEG"))
    chunks = [files[k:k + shard_size] for k in range(0, len(files), shard_size)]
    with multiprocessing.get_context("fork").Pool(min(workers, len(chunks))) as pool:
        pool.map(_decode_files, chunks, chunksize=1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES)
    p.add_argument("--workers", type=int, default=default_workers())
    p.add_argument("--shard-size", type=int, default=100)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    if not args.samples.is_dir():
        p.error(f"{args.samples}: not found; pass --samples DIR of JPEG files")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        links = sample_tree(args.samples, tmp / "tree", copies=1)
        n, nbytes = len(links), sum(os.path.getsize(link) for link in links)
        modes = {
            "baseline": lambda out: baseline_copy(tmp / "tree", out, args.shard_size),
            "decode": lambda out: full_decode(tmp / "tree", args.workers, args.shard_size),
            "sharder": lambda out: shard_tree(ShardConfig(src=tmp / "tree", out=out, shard_size=args.shard_size,
                                                          workers=args.workers, resume=False, progress=False)),
            "reencode": lambda out: shard_tree(ShardConfig(src=tmp / "tree", out=out, shard_size=args.shard_size,
                                                           workers=args.workers, max_size=256, quality=90,
                                                           resume=False, progress=False)),
        }
        times: dict[str, list[float]] = {m: [] for m in modes}
        for r in range(args.repeat):
            for mode, run in modes.items():  # interleaved, so drift hits every mode alike
                t0 = time.perf_counter()
                run(tmp / f"{mode}-{r}")
                times[mode].append(time.perf_counter() - t0)
    print(f"{n} images, {nbytes / 1e6:.1f} MB, {args.workers} workers, median of {args.repeat}")
    base = statistics.median(times["baseline"])
    for mode, ts in times.items():
        t = statistics.median(ts)
        print(f"{mode:<9} {n / t:8.0f} img/s {nbytes / t / 1e6:8.1f} MB/s   {base / t:5.2f}x baseline  "
              f"(spread {min(ts):.2f}-{max(ts):.2f} s)")
    ratio = statistics.median(times["decode"]) / statistics.median(times["sharder"])
    print(f"target: sharder (integrity check on) / full libjpeg-turbo decode = {ratio:.2f}x, target >= {TARGET:.1f}x: "
          f"{'met' if ratio >= TARGET else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
