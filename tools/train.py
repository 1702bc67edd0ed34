"""``train --data DIR --loader cpu|synthetic [options]``: ResNet50 v1.5 on webdataset shards.

Single process: ``train --data shards/``. Several (DDP, gloo on CPU / NCCL on CUDA):
``torchrun --nproc-per-node N $(which train) --data shards/``. Prints one row of FlagPerf's
results table (e2e_time, p_whole, p_train, p_core, acc1, mem) and writes it to --metrics-json.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from pipeline.backends import LoaderConfig, LoaderKind
from pipeline.info import DatasetError
from train.config import OptimConfig, TrainConfig
from train.precision import Precision


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _data_location(text: str) -> Path | str:
    """``--data``: a URL prefix stays a string, anything else is a local path."""
    from pipeline.tarstream import is_url

    return text if is_url(text) else Path(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=_data_location,
                   help="shard folder written by shard-imagenet, or its http(s):// / s3:// URL prefix (cpu loader); "
                        "an ImageFolder root with train/ and val/ for --loader folder; optional for synthetic")
    p.add_argument("--loader", type=LoaderKind, choices=list(LoaderKind), default=LoaderKind.CPU,
                   metavar="{" + ",".join(k.value for k in LoaderKind) + "}", help="decode backend (default: cpu)")
    p.add_argument("--epochs", type=_positive(int), default=1, help="epochs, each followed by eval (default: 1)")
    p.add_argument("--max-steps", type=_positive(int), help="stop after this many train steps in total")
    p.add_argument("--batch-size", type=_positive(int), default=256, help="per-rank batch size (default: 256)")
    p.add_argument("--image-size", type=_positive(int), default=224, help="train/eval crop side, px (default: 224)")
    p.add_argument("--lr", type=_positive(float), help="peak learning rate (default: 0.1 × global batch / 256)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warmup length (default: 1)")
    p.add_argument("--workers", type=int, help="CPU decode workers (DALI threads) per rank (default: the cores "
                                                "available divided by the ranks on this node)")
    p.add_argument("--shuffle-buffer", type=_positive(int), default=500, help="per-worker train shuffle buffer")
    p.add_argument("--precision", type=Precision, choices=list(Precision), default=Precision.AUTO,
                   metavar="{" + ",".join(k.value for k in Precision) + "}",
                   help="auto = amp on CUDA, fp32 on CPU (default: auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-eval", action="store_true", help="skip the per-epoch evaluation")
    p.add_argument("--synthetic-train-samples", type=_positive(int), default=1_281_167,
                   help="synthetic epoch size without --data (default: ILSVRC2012 train)")
    p.add_argument("--synthetic-val-samples", type=_positive(int), default=50_000,
                   help="synthetic eval size without --data (default: ILSVRC2012 val; on a slow device lower it "
                        "or pass --no-eval)")
    p.add_argument("--warmup-steps", type=int, help="first steps left out of p_whole/p_train/p_core and reported "
                                                     "separately (default: min(20, total steps // 5))")
    p.add_argument("--metrics-json", type=Path, help="write the metrics here (rank 0)")
    return p


def default_workers_per_rank() -> int:
    """Cores this process may use divided by torchrun's ranks on this node (``LOCAL_WORLD_SIZE``), at least 1."""
    from pipeline.sharding import default_workers

    return max(1, default_workers() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Map parsed flags onto the frozen configs."""
    workers = args.workers if args.workers is not None else default_workers_per_rank()
    return TrainConfig(
        data=args.data,
        loader=args.loader,
        loader_cfg=LoaderConfig(batch_size=args.batch_size, image_size=args.image_size, workers=workers,
                                seed=args.seed, shuffle_buffer=args.shuffle_buffer,
                                synthetic_train_samples=args.synthetic_train_samples,
                                synthetic_val_samples=args.synthetic_val_samples),
        optim=OptimConfig(lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                          label_smoothing=args.label_smoothing, warmup_epochs=args.warmup_epochs),
        epochs=args.epochs,
        max_steps=args.max_steps,
        precision=args.precision,
        seed=args.seed,
        metrics_json=args.metrics_json,
        eval=not args.no_eval,
        warmup_steps=args.warmup_steps,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 0:
        parser.error("--workers must be >= 0")
    if args.warmup_epochs < 0 or not 0 <= args.label_smoothing < 1 or args.weight_decay < 0:
        parser.error("--warmup-epochs and --weight-decay must be >= 0, --label-smoothing in [0, 1)")
    from train.loop import run  # imported late: torch start-up is not needed for --help

    from pipeline.backends.cpu import SampleDecodeError
    from pipeline.tarstream import ShardReadError

    try:
        run(config_from_args(args))
    except (DatasetError, ValueError, SampleDecodeError, ShardReadError) as exc:
        # errors raised in a DataLoader worker arrive wrapped with its traceback: keep the message line
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        last = re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1]) if lines else str(exc)
        print(f"train: error: {last}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
