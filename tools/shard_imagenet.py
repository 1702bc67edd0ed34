"""Shard ImageNet into webdataset tars, or verify shards already written.

  shard-imagenet SRC [--out DIR] [--shard-size N] [--seed S] [--workers N] [--layout ...] ...
  shard-imagenet verify OUT [--workers N] [--no-progress]

SRC may be class folders (train/<wnid>/, val/<wnid>/), a flat val/ with a devkit, Kaggle or Caffe label
file, the Kaggle tree (ILSVRC/Data/CLS-LOC/), or the original ILSVRC2012_img_{train,val}.tar archives,
read in place. The layout is detected and stated; --layout forces one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.shard.clean import MIN_MAX_PIXELS, MIN_MAX_SIZE, check_limits
from pipeline.shard.jsonsafe import escape_text
from pipeline.dataset import DatasetError
from pipeline.source import LayoutError, LayoutKind, LayoutOptions
from pipeline.shard.config import ShardConfig, default_workers
from pipeline.shard.run import shard_tree
from pipeline.shard.summary import format_summary
from tools.cli_common import Component, Components, Option, Parser, add_option

# The schema of a sharding run: ShardConfig, and the LayoutOptions at its field ``layout`` (no --config tables).
COMPONENTS = Components((Component(ShardConfig, None, None), Component(LayoutOptions, "layout", None)))


def options() -> tuple[Option, ...]:
    """The flags of ``shard-imagenet SRC``, in help order, each setting one field of :class:`ShardConfig` (or of
    its ``layout``), its default read from there (``--workers``: the cores available now)."""
    opt = COMPONENTS.option
    return (
        # where the shards go and how the input is cut into them
        opt(ShardConfig, "out", "--out", Path,
            "output folder for the tars, _info.json, classes.txt, rejects.tsv"),
        opt(ShardConfig, "shard_size", "--shard-size", int, "input files per tar"),
        opt(ShardConfig, "seed", "--seed", int, "seed of the global train shuffle"),
        opt(ShardConfig, "workers", "--workers", int,
            "processes, each writing whole shards (default: all cores, {default})"),
        # how images that are not passed through are re-encoded and downscaled
        opt(ShardConfig, "quality", "--quality", int, "JPEG quality for re-encoded images"),
        opt(ShardConfig, "max_size", "--max-size", int,
            f"downscale images whose longer side exceeds this (px, >= {MIN_MAX_SIZE}) and re-encode them at "
            "--quality (default: keep sizes)"),
        opt(ShardConfig, "max_pixels", "--max-pixels", int,
            f"decompression-bomb threshold (>= {MIN_MAX_PIXELS}): larger images are downscaled to it; non-JPEGs "
            "over 4x are rejected (default: PIL's limit, {default})"),
        # resuming a run and splitting it across machines
        opt(ShardConfig, "resume", "--resume", negatable=True,
            help="keep complete shards of an earlier identical run"),
        opt(ShardConfig, "num_jobs", "--num-jobs", int, "split the shards across this many jobs (machines)",
            show_default=False),
        opt(ShardConfig, "job_index", "--job-index", int, "which of the --num-jobs jobs this is (0-based)",
            show_default=False),
        # how to read the source: its layout and the label files that go with it
        opt(LayoutOptions, "layout", "--layout", LayoutKind, "source layout (default: detect)", show_default=False),
        opt(LayoutOptions, "classes_file", "--classes", Path,
            "fixed class list, one wnid first on each line (e.g. synset_words.txt): label = line index"),
        opt(LayoutOptions, "val_labels", "--val-labels", Path,
            "label file of a flat val/ (devkit ground truth, LOC_val_solution.csv, Caffe val.txt or "
            "'<file>,<class>' lines; default: found in SRC)"),
        opt(LayoutOptions, "id_map", "--id-map", Path,
            "ILSVRC2012_ID → wnid map for devkit labels: meta.mat or a map_clsloc.txt-style file (default: found "
            "in SRC)"),
        opt(ShardConfig, "progress", "--no-progress", help="no progress bar", invert=True),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="shard-imagenet", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="ImageNet source root (see above)")
    for option in options():
        add_option(parser, option)
    return parser


def config_from_args(args: argparse.Namespace) -> ShardConfig:
    """The :class:`ShardConfig` of parsed ``shard-imagenet SRC`` arguments."""
    return COMPONENTS.build(COMPONENTS.field_values(options(), args), src=args.src)


def verify_main(argv: list[str]) -> int:
    from pipeline.shard.verify import verify_dataset

    parser = Parser(prog="shard-imagenet verify",
                    description="Re-read every shard: counts, checksums, labels, decodability, index.")
    parser.add_argument("out", type=Path, help="folder written by shard-imagenet")
    parser.add_argument("--workers", type=int, default=default_workers(), help="processes (default: all cores)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress on stderr (a bar on a terminal, else a line every 30 s)")
    args = parser.parse_args(argv)
    try:
        info, problems = verify_dataset(args.out, args.workers, progress=None if args.no_progress else sys.stderr)
    except DatasetError as exc:
        print(f"shard-imagenet verify: error: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"BAD {problem}", file=sys.stderr)
    n_shards = sum(len(split.filenames) for split in info.splits.values())
    n_samples = sum(split.num_samples for split in info.splits.values())
    if problems:
        print(f"verify: {len(problems)} problem(s) in {args.out} ({n_shards} shards, {n_samples} samples)",
              file=sys.stderr)
        return 1
    print(f"verify: OK: {n_shards} shards, {n_samples} samples, {info.num_classes} classes in {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``shard-imagenet``: exit 0 when done, 2 with one ``shard-imagenet: error: ...`` line, 130 on Ctrl-C."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["verify"]:
        return verify_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, path in (("--classes", args.classes), ("--val-labels", args.val_labels), ("--id-map", args.id_map)):
        if path is not None and not path.is_file():
            parser.error(f"{flag} {path}: no such file")
    try:
        check_limits(args.max_pixels, args.max_size)
    except ValueError as exc:
        print(f"shard-imagenet: error: {exc}", file=sys.stderr)
        return 2
    cfg = config_from_args(args)
    out = escape_text(str(args.out))  # names that are not UTF-8 are printed escaped
    try:
        summary = shard_tree(cfg)
    except (LayoutError, ValueError, RuntimeError) as exc:
        print(f"shard-imagenet: error: {escape_text(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # not raised by the sharder's own checks: still one line, naming the file
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"shard-imagenet: error: {escape_text(where)}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"shard-imagenet: interrupted; complete shards in {out} are kept: run the same command "
              f"again to resume", file=sys.stderr)
        return 130
    print(format_summary(summary))
    if summary.complete:
        print(f"wrote {out}/ (_info.json, classes.txt, rejects.tsv, report.json, .tar + .idx per shard)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
