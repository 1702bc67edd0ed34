"""``io-bench --data DIR [--loader cpu,dali,folder,nvjpeg] [--workers 1,2] [--batch-size N] [--image-size N] [--out DIR]``.

Measures, on your shards and machine, where the input pipeline's time goes (storage read rate, per-stage cost
of each decode backend, loader-only throughput over a sweep of worker counts), the training step's compute-only
rate and the end-to-end rate, and says in plain words whether training is I/O-bound or compute-bound, by how
much, which stage dominates, how many cores per accelerator would feed it, and which lever closes the gap.
Writes ``report.md``, ``results.json`` and two PNG plots into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from pipeline.backends import DataInput, LoaderKind, backend_spec
from tools.cli_common import Parser, enum_type, error_line, positive
from pipeline.dataset import DatasetError
from train.precision import Precision


def _defaults() -> dict:
    """IoBenchConfig's field defaults (field name → value): the flags' defaults, written once, there."""
    from train.iobench.run import IoBenchConfig

    return {f.name: f.default for f in dataclasses.fields(IoBenchConfig) if f.default is not dataclasses.MISSING}


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


def build_parser() -> argparse.ArgumentParser:
    d = _defaults()
    p = Parser(prog="io-bench", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="shard folder written by shard-imagenet (or its http(s)/s3 URL)")
    p.add_argument("--loader", type=_loader_list, default=d["loaders"],
                   help=f"backends to measure, comma list of {','.join(k.value for k in _measurable())} (default: "
                        f"{','.join(k.value for k in d['loaders'])}; unavailable ones are skipped)")
    p.add_argument("--workers", type=_int_list, default=d["workers"],
                   help="worker counts to sweep, comma list (default: 1,2,4,... cores)")
    p.add_argument("--batch-size", type=positive(int), default=d["batch_size"])
    p.add_argument("--image-size", type=positive(int), default=d["image_size"])
    p.add_argument("--precision", type=enum_type(Precision), choices=list(Precision), default=d["precision"],
                   metavar="{" + ",".join(k.value for k in Precision) + "}")
    p.add_argument("--repeat", type=positive(int), default=d["repeat"],
                   help=f"timed windows per sweep point (default: {d['repeat']})")
    p.add_argument("--loader-batches", type=positive(int), default=d["loader_batches"],
                   help=f"batches per timed window (default: {d['loader_batches']})")
    p.add_argument("--steps", type=positive(int), default=d["train_steps"],
                   help=f"training steps of the compute-only and end-to-end runs (default: {d['train_steps']}; on a "
                        f"CPU lower the batch size or image size rather than this)")
    p.add_argument("--folder-root", type=Path, default=d["folder_root"],
                   help="ImageFolder tree for the folder baseline (default: the source tree recorded in _info.json, "
                        "if it still exists)")
    p.add_argument("--max-size", type=positive(int), default=d["max_size"],
                   help="--max-size the pre-resized-shards lever is computed for (default: 10/7 of the image size, "
                        "320 for 224)")
    p.add_argument("--out", type=Path, default=Path("io-bench"), help="report folder (default: ./io-bench)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.read.tarstream import ShardReadError, is_url
    from train.iobench.run import BenchProgress, IoBenchConfig, run_io_bench
    from train.iobench.report import write_report

    data = args.data if is_url(args.data) else Path(args.data)
    try:
        cfg = IoBenchConfig(data=data, loaders=args.loader, workers=args.workers, batch_size=args.batch_size,
                            image_size=args.image_size, precision=args.precision, repeat=args.repeat,
                            loader_batches=args.loader_batches, train_steps=args.steps,
                            folder_root=args.folder_root, max_size=args.max_size)
    except ValueError as exc:  # the schema's own checks (e.g. --image-size below 8)
        print(f"io-bench: error: {error_line(exc)}", file=sys.stderr)
        return 2
    from pipeline.read.transforms import decode_line

    print(f"io-bench: {decode_line()} (the cpu backend's)", flush=True)
    progress = BenchProgress(sys.stderr)  # a bar with ETA on a terminal, a plain line per step otherwise
    finished = False
    try:
        result = run_io_bench(cfg, progress)
        finished = True
    except (DatasetError, ValueError, ShardReadError) as exc:
        progress.close(done=False)  # the error stands on its own line
        print(f"io-bench: error: {error_line(exc)}", file=sys.stderr)
        return 2
    finally:
        progress.close(done=finished)  # also on an unexpected error: a bar left open would shift every later one
    report = write_report(result, args.out)
    if result.verdict:
        for line in result.verdict.lines:
            print(f"verdict: {line}")
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
