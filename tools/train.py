"""``train --data DIR --loader cpu|dali|folder|synthetic [options]``: ResNet50 v1.5 on webdataset shards.

Single process: ``train --data shards/``. Several (DDP, gloo on CPU / NCCL on CUDA):
``torchrun --nproc-per-node N $(which train) --data shards/``. Prints one row of FlagPerf's
results table (e2e_time, p_whole, p_train, p_core, acc1, mem) and writes it to --metrics-json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.backends import LoaderConfig, LoaderKind
from pipeline.dataset import DatasetError
from tools.cli_common import error_line, positive
from train.config import CheckpointConfig, OptimConfig, TrainConfig
from train.precision import Precision
from train.recipe import Resolution, Schedule
from train.clock import Timing


def _data_location(text: str) -> Path | str:
    """``--data``: a URL prefix stays a string, anything else is a local path."""
    from pipeline.read.tarstream import is_url

    return text if is_url(text) else Path(text)


def _epoch_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"epochs must be >= 0, got {text!r}")
    return values


def _resolution(args: argparse.Namespace) -> Resolution | None:
    if args.min_train_size is None and args.eval_size is None:
        return None
    start = args.min_train_size or args.image_size
    ramp = args.ramp_epochs or (0, max(0, args.epochs - 1))
    return Resolution(start=start, end=args.image_size, ramp_start=ramp[0], ramp_end=ramp[1],
                      eval=args.eval_size or args.image_size, step=32 if start % 32 == 0 else 8)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=_data_location,
                   help="shard folder written by shard-imagenet, or its http(s):// / s3:// URL prefix (cpu loader); "
                        "an ImageFolder root with train/ and val/ for --loader folder; optional for synthetic")
    p.add_argument("--loader", type=LoaderKind, choices=list(LoaderKind), default=LoaderKind.CPU,
                   metavar="{" + ",".join(k.value for k in LoaderKind) + "}", help="decode backend (default: cpu)")
    p.add_argument("--epochs", type=positive(int), default=1, help="epochs, each followed by eval (default: 1)")
    p.add_argument("--max-steps", type=positive(int), help="stop after this many train steps in total")
    p.add_argument("--batch-size", type=positive(int), default=256, help="per-rank batch size (default: 256)")
    p.add_argument("--image-size", type=positive(int), default=224, help="train/eval crop side, px (default: 224)")
    # recipe defaults: NVIDIA DLE ResNet50 v1.5 (see train/recipe.py)
    p.add_argument("--lr", type=positive(float), help="peak learning rate (default: --lr-per-256 × global batch / 256)")
    p.add_argument("--lr-per-256", type=positive(float), default=0.256, help="peak LR per 256 images (default: 0.256)")
    p.add_argument("--momentum", type=float, default=0.875, help="SGD momentum (default: 0.875)")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    p.add_argument("--weight-decay", type=float, default=1 / 32768, help="(default: 1/32768 = 3.05e-5)")
    p.add_argument("--decay-bn-bias", action="store_true", help="also apply weight decay to BN parameters and biases")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=float, default=8.0, help="linear warmup length (default: 8)")
    p.add_argument("--schedule", type=Schedule, choices=list(Schedule), default=Schedule.COSINE,
                   metavar="{" + ",".join(k.value for k in Schedule) + "}",
                   help="after warmup: cosine to 0, or step (x --gamma at each of --milestones) (default: cosine)")
    p.add_argument("--milestones", type=_epoch_list, default=(30, 60, 80), help="step schedule epochs (30,60,80)")
    p.add_argument("--gamma", type=float, default=0.1, help="step schedule factor (default: 0.1)")
    p.add_argument("--no-zero-init-residual", action="store_true",
                   help="keep torchvision's default init of the last BN of each block (default: zero-init)")
    p.add_argument("--ema-decay", type=float, help="keep and evaluate an EMA of the weights (e.g. 0.9999)")
    p.add_argument("--target-acc1", type=float, help="stop after the first eval reaching this top-1 %% (FlagPerf)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-channels-last", action="store_true", help="NCHW model and batches (default: channels-last)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 math in fp32 mode on CUDA (default: off)")
    p.add_argument("--min-train-size", type=positive(int), help="progressive resizing: train at this side first, "
                                                                   "growing to --image-size over --ramp-epochs")
    p.add_argument("--ramp-epochs", type=_epoch_list, default=None, help="FIRST,LAST epoch of the resize ramp "
                                                                          "(default: 0,epochs-1)")
    p.add_argument("--eval-size", type=positive(int), help="eval side, px (default: --image-size)")
    p.add_argument("--workers", type=int, help="CPU decode workers (DALI threads) per rank (default: the cores "
                                                "available divided by the ranks on this node)")
    p.add_argument("--shuffle-buffer", type=positive(int), default=500, help="per-worker train shuffle buffer")
    p.add_argument("--precision", type=Precision, choices=list(Precision), default=Precision.AUTO,
                   metavar="{" + ",".join(k.value for k in Precision) + "}",
                   help="auto = amp on CUDA, fp32 on CPU (default: auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-eval", action="store_true", help="skip the per-epoch evaluation")
    p.add_argument("--synthetic-train-samples", type=positive(int), default=1_281_167,
                   help="synthetic epoch size without --data (default: ILSVRC2012 train)")
    p.add_argument("--synthetic-val-samples", type=positive(int), default=50_000,
                   help="synthetic eval size without --data (default: ILSVRC2012 val; on a slow device lower it "
                        "or pass --no-eval)")
    p.add_argument("--warmup-steps", type=int, help="first steps left out of p_whole/p_train/p_core and reported "
                                                     "separately (default: min(20, total steps // 5))")
    p.add_argument("--metrics-json", type=Path, help="write the metrics here (rank 0)")
    p.add_argument("--log-jsonl", type=Path, help="append one JSON line per --log-every steps here (rank 0): loss, "
                                                  "lr, img/s, data wait of the window")
    p.add_argument("--log-every", type=positive(int), default=50, help="steps per --log-jsonl line (default: 50)")
    p.add_argument("--checkpoint-dir", type=Path, help="write checkpoints ckpt-step{step:08d}.pt here (rank 0, atomic: "
                                                      "a kill -9 never leaves a partial one under the final name)")
    p.add_argument("--checkpoint-every", type=positive(int), metavar="N",
                   help="save every N train steps (default: at every epoch end); always also at the end of the run")
    p.add_argument("--checkpoint-keep", type=positive(int), default=2, metavar="K",
                   help="keep the newest K checkpoints (default: 2)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --checkpoint-dir at its exact step (same data order, "
                        "LR schedule, RNG); with no checkpoint there, start fresh with a note")
    p.add_argument("--test-only", action="store_true",
                   help="evaluate a checkpoint on val (top-1/top-5, FlagPerf row), no training: --checkpoint FILE, or "
                        "the newest in --checkpoint-dir")
    p.add_argument("--checkpoint", type=Path, metavar="FILE", help="the checkpoint --test-only evaluates")
    p.add_argument("--timing", type=Timing, choices=list(Timing), default=None,
                   metavar="{" + ",".join(k.value for k in Timing) + "}",
                   help="events: CUDA events on the training stream, read once per log window / epoch (default on "
                        "CUDA); sync: FlagPerf's device synchronisation at every timer edge (and a DDP barrier per "
                        "step); the same on a CPU")
    return p


def default_workers_per_rank() -> int:
    """Cores this process may use divided by torchrun's ranks on this node (``LOCAL_WORLD_SIZE``), at least 1."""
    from pipeline.shard.run import default_workers
    from train.distributed import local_world_size

    return max(1, default_workers() // local_world_size())


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
        optim=OptimConfig(lr=args.lr, lr_per_256=args.lr_per_256, momentum=args.momentum, nesterov=args.nesterov,
                          weight_decay=args.weight_decay, decay_bn_and_bias=args.decay_bn_bias,
                          label_smoothing=args.label_smoothing, warmup_epochs=args.warmup_epochs,
                          schedule=args.schedule, milestones=args.milestones, gamma=args.gamma),
        epochs=args.epochs,
        max_steps=args.max_steps,
        precision=args.precision,
        seed=args.seed,
        metrics_json=args.metrics_json,
        eval=not args.no_eval,
        warmup_steps=args.warmup_steps,
        zero_init_residual=not args.no_zero_init_residual,
        ema_decay=args.ema_decay,
        target_acc1=args.target_acc1,
        compile=args.compile,
        tf32=args.tf32,
        resolution=_resolution(args),
        log_jsonl=args.log_jsonl,
        channels_last=not args.no_channels_last,
        log_every=args.log_every,
        checkpoint=CheckpointConfig(dir=args.checkpoint_dir, every=args.checkpoint_every, keep=args.checkpoint_keep,
                                    resume=args.resume, file=args.checkpoint),
        timing=args.timing,
        test_only=args.test_only,
    )


def main(argv: list[str] | None = None) -> int:
    from tools.config_file import parse_args_with_config, resolved_path, write_resolved

    parser = build_parser()
    args = parse_args_with_config(parser, argv)  # adds --config FILE.toml: defaults < file < flags
    if args.workers is not None and args.workers < 0:
        parser.error("--workers must be >= 0")
    if args.warmup_epochs < 0 or not 0 <= args.label_smoothing < 1 or args.weight_decay < 0:
        parser.error("--warmup-epochs and --weight-decay must be >= 0, --label-smoothing in [0, 1)")
    if (args.resume or args.checkpoint_every is not None) and args.checkpoint_dir is None:
        parser.error("--resume and --checkpoint-every need --checkpoint-dir DIR")
    if args.test_only and args.checkpoint is None and args.checkpoint_dir is None:
        parser.error("--test-only needs --checkpoint FILE or --checkpoint-dir DIR (its newest checkpoint)")
    if args.checkpoint is not None and not args.test_only:
        parser.error("--checkpoint FILE is for --test-only (to continue training use --checkpoint-dir DIR --resume)")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no such file")
    if args.checkpoint_dir is not None and args.test_only and not args.checkpoint_dir.is_dir():
        parser.error(f"--checkpoint-dir {args.checkpoint_dir}: no such folder (--test-only reads its newest checkpoint)")
    if args.checkpoint_dir is not None and not args.test_only:
        try:
            args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            if not os.access(args.checkpoint_dir, os.W_OK):
                raise PermissionError("not writable")
        except OSError as exc:
            parser.error(f"--checkpoint-dir {args.checkpoint_dir}: cannot write there "
                         f"({getattr(exc, 'strerror', None) or exc}); pick a writable folder")
    if args.gamma <= 0:
        parser.error(f"--gamma must be > 0, got {args.gamma}")
    if list(args.milestones) != sorted(args.milestones):
        parser.error(f"--milestones must be increasing, got {','.join(map(str, args.milestones))}")
    if args.target_acc1 is not None and not 0 <= args.target_acc1 <= 100:
        parser.error(f"--target-acc1 takes a top-1 in [0, 100], got {args.target_acc1}")
    if args.target_acc1 is not None and args.no_eval:
        print(f"train: note: --no-eval: the target top-1 {args.target_acc1}% is never checked", file=sys.stderr)
    if args.min_train_size is not None and args.min_train_size > args.image_size:
        parser.error(f"--min-train-size {args.min_train_size} is above --image-size {args.image_size} (the size the "
                     f"ramp grows to)")
    if args.ramp_epochs is not None:
        if args.min_train_size is None:
            parser.error("--ramp-epochs needs --min-train-size (the size the ramp starts from)")
        if len(args.ramp_epochs) != 2 or args.ramp_epochs[0] > args.ramp_epochs[1]:
            parser.error("--ramp-epochs takes FIRST,LAST with FIRST <= LAST, e.g. 10,70")
    if args.metrics_json is not None and os.environ.get("RANK", "0") == "0":
        write_resolved(parser, args, resolved_path(args.metrics_json))  # metrics.json -> metrics.config.toml
    from train.loop import run  # imported late: torch start-up is not needed for --help

    from pipeline.backends.cpu import SampleDecodeError
    from pipeline.read.tarstream import ShardReadError

    try:
        run(config_from_args(args))
    except (DatasetError, ValueError, SampleDecodeError, ShardReadError) as exc:
        print(f"train: error: {error_line(exc)}", file=sys.stderr)
        return 2
    return 0


def cli() -> None:
    """Console-script entry: run :func:`main`, then end the process at once.

    Everything is written and closed by then (metrics, checkpoints, logs, loader workers, process group); what
    is left is the interpreter's teardown of torch's modules, ~0.5-1 s here, which would otherwise sit between
    the reported e2e_time and the real end of the process.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    cli()
