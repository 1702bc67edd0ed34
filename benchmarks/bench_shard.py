"""Sharding throughput on the real ImageNet samples, against a plain tar copy, measured in one run.

    .venv/bin/python benchmarks/bench_shard.py [--samples DIR] [--workers N] [--repeat 3]

Builds a class-folder tree of symlinks to ``../shared/data/imagenet-samples`` (800 real ILSVRC2012 JPEGs, see
:func:`benchmarks.common.sample_tree`) and times, each ``--repeat`` times (median reported, page cache warm
after the first read):

* baseline   every file copied into tars with tarfile (no decode, no checks): the I/O + tar floor;
* sharder    shard-imagenet defaults: full decode check, clean JPEGs passed through byte for byte;
* reencode   shard-imagenet --max-size 256 --quality 90: decode, downscale and re-encode every image.

Prints img/s, MB/s and each sharder mode's speed as a ratio of the baseline.
"""

from __future__ import annotations

import argparse
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


def baseline_copy(tree: Path, out: Path, shard_size: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = sorted((tree / "train").rglob("*.JPEG"))
    for k in range(0, len(files), shard_size):
        with tarfile.open(out / f"copy-{k // shard_size:06d}.tar", "w", format=tarfile.GNU_FORMAT) as tf:
            for f in files[k:k + shard_size]:
                tf.add(f.resolve(), arcname=f.name)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES)
    p.add_argument("--workers", type=int, default=default_workers())
    p.add_argument("--shard-size", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    if not args.samples.is_dir():
        p.error(f"{args.samples}: not found; pass --samples DIR of JPEG files")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        links = sample_tree(args.samples, tmp / "tree", copies=1)
        n, nbytes = len(links), sum(os.path.getsize(link) for link in links)
        modes = {
            "baseline": lambda out: baseline_copy(tmp / "tree", out, args.shard_size),
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
