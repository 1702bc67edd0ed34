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

from pipeline.compat import BooleanOptionalAction
from pipeline.shard.clean import DEFAULT_MAX_PIXELS, DEFAULT_QUALITY, MIN_MAX_PIXELS, MIN_MAX_SIZE, check_limits
from pipeline.shard.jsonsafe import escape_text
from pipeline.dataset import DatasetError
from pipeline.source import LayoutError, LayoutKind, LayoutOptions
from pipeline.shard.run import ShardConfig, default_workers, format_summary, shard_tree
from tools.cli_common import Parser, enum_type


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="shard-imagenet", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="ImageNet source root (see above)")
    _add_output_args(p)
    _add_image_args(p)
    _add_job_args(p)
    _add_layout_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _add_output_args(p: argparse.ArgumentParser) -> None:
    """Where the shards go and how the input is cut into them."""
    p.add_argument("--out", type=Path, default=Path("imagenet-shards"),
                   help="output folder for the tars, _info.json, classes.txt, rejects.tsv (default: %(default)s)")
    p.add_argument("--shard-size", type=int, default=1000, help="input files per tar (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the global train shuffle (default: %(default)s)")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="processes, each writing whole shards (default: all cores, %(default)s)")


def _add_image_args(p: argparse.ArgumentParser) -> None:
    """How images that are not passed through are re-encoded and downscaled."""
    p.add_argument("--quality", type=int, default=DEFAULT_QUALITY,
                   help="JPEG quality for re-encoded images (default: %(default)s)")
    p.add_argument("--max-size", type=int, help=f"downscale images whose longer side exceeds this (px, >= "
                                                f"{MIN_MAX_SIZE}) and re-encode them at --quality (default: keep "
                                                "sizes)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"decompression-bomb threshold (>= {MIN_MAX_PIXELS}): larger images are downscaled to it; "
                        "non-JPEGs over 4x are rejected (default: PIL's limit, %(default)s)")


def _add_job_args(p: argparse.ArgumentParser) -> None:
    """Resuming a run and splitting it across machines."""
    p.add_argument("--resume", action=BooleanOptionalAction, default=True,
                   help="keep complete shards of an earlier identical run (default: on)")
    p.add_argument("--num-jobs", type=int, default=1, help="split the shards across this many jobs (machines)")
    p.add_argument("--job-index", type=int, default=0, help="which of the --num-jobs jobs this is (0-based)")


def _add_layout_args(p: argparse.ArgumentParser) -> None:
    """How to read the source: its layout and the label files that go with it."""
    p.add_argument("--layout", type=enum_type(LayoutKind), choices=list(LayoutKind), default=LayoutKind.AUTO,
                   metavar="{" + ",".join(k.value for k in LayoutKind) + "}",
                   help="source layout (default: detect)")
    p.add_argument("--classes", type=Path, help="fixed class list, one wnid first on each line (e.g. "
                                                "synset_words.txt): label = line index")
    p.add_argument("--val-labels", type=Path, help="label file of a flat val/ (devkit ground truth, "
                                                   "LOC_val_solution.csv, Caffe val.txt or '<file>,<class>' "
                                                   "lines; default: found in SRC)")
    p.add_argument("--id-map", type=Path, help="ILSVRC2012_ID → wnid map for devkit labels: meta.mat or a "
                                               "map_clsloc.txt-style file (default: found in SRC)")


def _config_from_args(args: argparse.Namespace) -> ShardConfig:
    """The :class:`ShardConfig` of parsed ``shard-imagenet SRC`` arguments."""
    return ShardConfig(src=args.src, out=args.out, shard_size=args.shard_size, seed=args.seed,
                       workers=args.workers, quality=args.quality, max_pixels=args.max_pixels,
                       max_size=args.max_size, resume=args.resume, num_jobs=args.num_jobs, job_index=args.job_index,
                       layout=LayoutOptions(layout=args.layout, classes_file=args.classes,
                                            val_labels=args.val_labels, id_map=args.id_map),
                       progress=not args.no_progress)


def verify_main(argv: list[str]) -> int:
    from pipeline.shard.verify import verify_dataset

    p = Parser(prog="shard-imagenet verify",
               description="Re-read every shard: counts, checksums, labels, decodability, index.")
    p.add_argument("out", type=Path, help="folder written by shard-imagenet")
    p.add_argument("--workers", type=int, default=default_workers(), help="processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress on stderr (a bar on a terminal, else a line every 30 s)")
    args = p.parse_args(argv)
    try:
        info, problems = verify_dataset(args.out, args.workers, progress=None if args.no_progress else sys.stderr)
    except DatasetError as exc:
        print(f"shard-imagenet verify: error: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"BAD {problem}", file=sys.stderr)
    n_shards = sum(len(s.filenames) for s in info.splits.values())
    n_samples = sum(s.num_samples for s in info.splits.values())
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
    cfg = _config_from_args(args)
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
