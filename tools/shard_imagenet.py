"""``shard-imagenet SRC [--out DIR] [--shard-size N] [--seed S] [--workers N]``.

Turns an ImageNet class-folder tree (``SRC/train/<wnid>/*``, ``SRC/val/<wnid>/*``; any torchvision
ImageFolder train/val pair works) into webdataset tar shards, once, offline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.images import DEFAULT_MAX_PIXELS, DEFAULT_QUALITY
from pipeline.layout import LayoutError
from pipeline.sharding import ShardConfig, default_workers, format_summary, shard_tree


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shard-imagenet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="source root holding train/<class>/ and val/<class>/")
    p.add_argument("--out", type=Path, default=Path("imagenet-shards"),
                   help="output folder for the tars, _info.json, classes.txt, rejects.tsv (default: %(default)s)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per tar (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the global train shuffle (default: %(default)s)")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="processes that read and check images (default: all cores, %(default)s)")
    p.add_argument("--quality", type=int, default=DEFAULT_QUALITY,
                   help="JPEG quality for images that must be re-encoded (default: %(default)s)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="reject images with more pixels than this (default: PIL's bomb limit, %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = ShardConfig(src=args.src, out=args.out, shard_size=args.shard_size, seed=args.seed,
                      workers=args.workers, quality=args.quality, max_pixels=args.max_pixels,
                      progress=not args.no_progress)
    try:
        summary = shard_tree(cfg)
    except (LayoutError, ValueError) as exc:
        print(f"shard-imagenet: error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    print(f"wrote {args.out}/ (_info.json, classes.txt, rejects.tsv, report.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
