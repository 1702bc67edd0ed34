"""``io-bench --data DIR [--loader cpu,dali,folder,nvjpeg] [--workers 1,2] [--batch-size N] [--image-size N] [--out DIR]``.

Measures, on your shards and machine, where the input pipeline's time goes (storage read rate, per-stage cost
of each decode backend, loader-only throughput over a sweep of worker counts), the training step's compute-only
rate and the end-to-end rate, and says in plain words whether training is I/O-bound or compute-bound, by how
much, which stage dominates, how many cores per accelerator would feed it, and which lever closes the gap.
Writes ``report.md``, ``results.json`` and two PNG plots into ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.backends import DataInput, LoaderKind, backend_spec
from tools.cli_common import Component, Components, Option, Parser, add_option, error_line, positive
from pipeline.dataset import DatasetError
from train.iobench.config import IoBenchConfig
from train.precision import Precision

# The schema of an io-bench run: IoBenchConfig alone (no --config tables).
COMPONENTS = Components((Component(IoBenchConfig, None, None),))


def _measurable() -> tuple[LoaderKind, ...]:
    """Backends --loader accepts: every one that reads data (synthetic is always run, as the compute-only step)."""
    return tuple(k for k in LoaderKind if backend_spec(k).needs is not DataInput.NONE)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"worker counts must be >= 1, got {text!r}")
    return tuple(sorted(set(values)))


def _loader_list(text: str) -> tuple[LoaderKind, ...]:
    allowed = _measurable()
    try:
        kinds = tuple(LoaderKind(v.strip()) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--loader takes a comma list of {', '.join(k.value for k in allowed)}; "
                                         f"got {text!r}") from None
    if any(k not in allowed for k in kinds):
        raise argparse.ArgumentTypeError(f"--loader: the synthetic backend is always measured (compute-only); "
                                         f"choose from {', '.join(k.value for k in allowed)}")
    return kinds


def options() -> tuple[Option, ...]:
    """The flags of ``io-bench`` after ``--data``, in help order, each setting one field of :class:`IoBenchConfig`,
    its default read from there."""
    opt = COMPONENTS.option
    measurable = ",".join(k.value for k in _measurable())
    return (
        opt(IoBenchConfig, "loaders", "--loader", _loader_list,
            f"backends to measure, comma list of {measurable} (default: {{default}}; unavailable ones are skipped)"),
        opt(IoBenchConfig, "workers", "--workers", _int_list,
            "worker counts to sweep, comma list (default: 1,2,4,... cores)"),
        opt(IoBenchConfig, "batch_size", "--batch-size", positive(int), show_default=False),
        opt(IoBenchConfig, "image_size", "--image-size", positive(int), show_default=False),
        opt(IoBenchConfig, "precision", "--precision", Precision, show_default=False),
        opt(IoBenchConfig, "repeat", "--repeat", positive(int), "timed windows per sweep point"),
        opt(IoBenchConfig, "loader_batches", "--loader-batches", positive(int), "batches per timed window"),
        opt(IoBenchConfig, "train_steps", "--steps", positive(int),
            "training steps of the compute-only and end-to-end runs (default: {default}; on a CPU lower the batch "
            "size or image size rather than this)"),
        opt(IoBenchConfig, "folder_root", "--folder-root", Path,
            "ImageFolder tree for the folder baseline (default: the source tree recorded in _info.json, if it "
            "still exists)"),
        opt(IoBenchConfig, "max_size", "--max-size", positive(int),
            "--max-size the pre-resized-shards lever is computed for (default: 10/7 of the image size, 320 for "
            "224)"),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="io-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True,
                        help="shard folder written by shard-imagenet (or its http(s)/s3 URL)")
    for option in options():
        add_option(parser, option)
    # the report folder is the command's own (where write_report puts the files), not a field of the run
    parser.add_argument("--out", type=Path, default=Path("io-bench"), help="report folder (default: ./io-bench)")
    return parser


def config_from_args(args: argparse.Namespace) -> IoBenchConfig:
    """The :class:`IoBenchConfig` of parsed ``io-bench`` arguments (``--data``: a URL prefix stays text).

    Raises:
        ValueError: a value the config's own checks reject (one line naming the flag).
    """
    from pipeline.read.tarstream import is_url

    data = args.data if is_url(args.data) else Path(args.data)
    return COMPONENTS.build(COMPONENTS.field_values(options(), args), data=data)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.read.tarstream import ShardReadError
    from train.iobench.run import BenchProgress, run_io_bench
    from train.iobench.report import write_report

    try:
        cfg = config_from_args(args)
    except ValueError as exc:  # the schema's own checks (e.g. --image-size below 8)
        print(f"io-bench: error: {error_line(exc)}", file=sys.stderr)
        return 2
    try:  # the report folder, checked before minutes of measuring (not after)
        args.out.mkdir(parents=True, exist_ok=True)
        if not os.access(args.out, os.W_OK):
            raise PermissionError(13, "Permission denied", str(args.out))
    except OSError as exc:
        print(f"io-bench: error: --out {args.out}: cannot write ({exc.strerror or exc}); choose another folder",
              file=sys.stderr)
        return 2
    from pipeline.backends.shards import SampleDecodeError
    from pipeline.read.transforms import decode_line

    print(f"io-bench: {decode_line()} (the cpu backend's)", flush=True)
    progress = BenchProgress(sys.stderr)  # a bar with ETA on a terminal, a plain line per step otherwise
    finished = False
    try:
        result = run_io_bench(cfg, progress)
        finished = True
    except (DatasetError, ValueError, ShardReadError, SampleDecodeError) as exc:
        progress.close(done=False)  # the error stands on its own line
        print(f"io-bench: error: {error_line(exc)}", file=sys.stderr)
        return 2
    finally:
        progress.close(done=finished)  # also on an unexpected error: a bar left open would shift every later one
    try:
        report = write_report(result, args.out)
    except OSError as exc:  # the folder went away or the disk filled while measuring
        print(f"io-bench: error: --out {args.out}: cannot write the report ({exc.strerror or exc})", file=sys.stderr)
        return 2
    if result.verdict:
        for line in result.verdict.lines:
            print(f"verdict: {line}")
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
