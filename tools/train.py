"""``train --data DIR --loader cpu|dali|nvjpeg|folder|synthetic [options]``: ResNet50 v1.5 on webdataset shards.

Single process: ``train --data shards/``. Several (DDP, gloo on CPU / NCCL on CUDA):
``torchrun --nproc-per-node N $(which train) --data shards/``. Prints one row of FlagPerf's
results table (e2e_time, p_whole, p_train, p_core, acc1, mem) and writes it to --metrics-json.

Exit codes: 0 the run finished; 2 a one-line error (bad flag, input or data; on stderr); 75 stopped by SIGTERM,
SIGUSR1 or a first SIGINT (Ctrl-C) after finishing its current step, its checkpoint written where
--checkpoint-dir is set (one line says which; requeue the job with --resume: it continues bitwise); 130 a
second SIGINT aborted it at once (nothing saved); 69 under DDP a rank stopped answering (no heartbeat, or a
collective waited --dist-timeout s): every other rank ends with one line naming it. Under torchrun each worker
exits with its code and torchrun itself reports the failure (exit 1); on SIGTERM / SIGINT torchrun forwards the
signal to its workers and kills them 30 s later, the time left for the step and the checkpoint.

This module is the command line: its flags, grouped by component as in a --config file, each set one field of
the config schema (train/config.py, which holds every default and checks every value); it parses them into a
TrainConfig and runs it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.backends import DaliConfig, DaliOutput, LoaderConfig, LoaderKind, OnBadSample, SyntheticConfig
from pipeline.dataset import DatasetError
from tools.cli_common import Component, Components, Option, Parser, Schema, add_option, error_line, positive
from tools.config_file import add_config_option, parse_args_with_config, write_resolved
from train.config import CheckpointConfig, OptimConfig, TrainConfig
from train.accelerator import parse_device
from train.precision import Precision, Tf32Mode, prepare_tf32_env
from train.recipe import Resolution, Schedule
from train import distributed
from train.clock import Timing

# Each component of the schema: its TrainConfig field and its --config table (TrainConfig's own: the top level);
# a backend's own sub-config sits in the tuple loader_cfg.options (collected: there only where a flag changes it).
COMPONENTS = Components((Component(TrainConfig, None, None), Component(LoaderConfig, "loader_cfg", "loader"),
                         Component(SyntheticConfig, "loader_cfg.options.synthetic", "loader", collected=True),
                         Component(DaliConfig, "loader_cfg.options.dali", "loader", collected=True),
                         Component(OptimConfig, "optim", "optim"),
                         Component(CheckpointConfig, "checkpoint", "checkpoint")))
# _opt(cls, field, flag, type, help, **details): the flag of field cls.field, its default read from the dataclass
_opt = COMPONENTS.option


def _data_location(text: str) -> Path | str:
    """``--data``: a URL prefix stays a string, anything else is a local path."""
    from pipeline.read.tarstream import is_url

    return text if is_url(text) else Path(text)


def _count(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _epoch_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"epochs must be >= 0, got {text!r}")
    return values


def _epoch_range(text: str) -> tuple[int, int]:
    values = _epoch_list(text)
    if len(values) != 2 or values[0] > values[1]:
        raise argparse.ArgumentTypeError(f"takes FIRST,LAST with FIRST <= LAST, e.g. 10,70; got {text!r}")
    return values


def _device(text: str) -> str:
    """``--device``: auto, cpu, cuda or cuda:N (:func:`train.accelerator.parse_device`)."""
    try:
        return parse_device(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from auto, cpu, cuda, cuda:N)") from None


def _input(flag: str, type, help: str) -> Option:
    """A top-level flag that is no field of its own (mapped by :func:`config_from_args`); default None."""
    return Option(flag, None, None, type, None, help)


RUN_OPTIONS = (
    _opt(TrainConfig, "data", "--data", _data_location,
         "shard folder written by shard-imagenet, or its http(s):// / s3:// URL prefix (cpu loader); an "
         "ImageFolder root with train/ and val/ for --loader folder; optional for synthetic"),
    _opt(TrainConfig, "epochs", "--epochs", positive(int), "epochs, each followed by eval"),
    _opt(TrainConfig, "max_steps", "--max-steps", positive(int), "stop after this many train steps in total"),
    _opt(TrainConfig, "precision", "--precision", Precision,
         "fp32; amp = float16 autocast + GradScaler; fp16 = FlagPerf's: model and inputs cast to bfloat16, no "
         "scaler; bf16 = bfloat16 autocast; half = model and inputs cast to float16; auto = amp on CUDA, fp32 on "
         "CPU; --amp is --precision amp"),
    _opt(TrainConfig, "device", "--device", _device, metavar="{auto,cpu,cuda,cuda:N}",
         help="where to train: auto = cuda:<local rank> where torch can use a GPU, else the CPU; cpu; cuda; cuda:N "
              "(one process). With auto and no usable GPU, --loader dali/nvjpeg and --precision amp/fp16/half stop "
              "the run at its start; --device cpu runs them on the CPU"),
    _opt(TrainConfig, "seed", "--seed", int, "seed of model init, data order and crops"),
    _opt(TrainConfig, "eval", "--no-eval", help="skip the per-epoch evaluation", invert=True),
    _opt(TrainConfig, "zero_init_residual", "--zero-init-residual", negatable=True,
         help="zero-initialise the last BN of each residual block (--no-zero-init-residual: torchvision's default "
              "init, FlagPerf's)"),
    _opt(TrainConfig, "ema_decay", "--ema-decay", float, "keep and evaluate an EMA of the weights (e.g. 0.9999)"),
    _opt(TrainConfig, "target_acc1", "--target-acc1", float,
         "stop after the first eval reaching this top-1 %% (FlagPerf)"),
    _opt(TrainConfig, "compile", "--compile", help="torch.compile the model"),
    _opt(TrainConfig, "channels_last", "--channels-last", negatable=True,
         help="channels-last model and batches (--no-channels-last: NCHW, for comparison)"),
    _opt(TrainConfig, "tf32", "--tf32", Tf32Mode,
         "TF32 math on CUDA: on, off (true fp32), default (PyTorch's defaults: cuDNN convolutions may use TF32, "
         "matmuls not; FlagPerf's NVIDIA runs)"),
    _opt(TrainConfig, "cudnn_benchmark", "--cudnn-benchmark", negatable=True,
         help="let cuDNN time and pick its fastest algorithms per input shape (FlagPerf's runs: off)"),
    _opt(TrainConfig, "cudnn_deterministic", "--cudnn-deterministic", negatable=True,
         help="only deterministic cuDNN algorithms (FlagPerf's NVIDIA runs: on)"),
    _opt(TrainConfig, "initial_eval", "--initial-eval", negatable=True,
         help="evaluate once before training, as FlagPerf's case (inside its e2e_time; the FlagPerf presets set "
              "it, --no-initial-eval skips it)"),
    _opt(TrainConfig, "flagperf_case", "--flagperf-case", str,
         "the FlagPerf config this run reproduces, e.g. C500x1x8 (the vendor page compares against it; set by the "
         "FlagPerf presets)"),
    _input("--min-train-size", positive(int),
           "progressive resizing: train at this side first, growing to --image-size over --ramp-epochs"),
    _input("--ramp-epochs", _epoch_range, "FIRST,LAST epoch of the resize ramp (default: 0,epochs-1)"),
    _input("--eval-size", positive(int), "eval side, px (default: --image-size)"),
    _opt(TrainConfig, "warmup_steps", "--warmup-steps", int, "first steps left out of p_whole/p_train/p_core and "
         "reported separately (default: min(20, total steps // 5))"),
    _opt(TrainConfig, "metrics_json", "--metrics-json", Path, "write the metrics here (rank 0)"),
    _opt(TrainConfig, "output_dir", "--output-dir", Path, "the run's folder: config.toml (at the start), "
         "metrics.json, steps.jsonl, metrics.png, checkpoints/ (rank 0); a folder holding an earlier run is "
         "refused unless --resume", aliases=("--output",)),
    _opt(TrainConfig, "log_jsonl", "--log-jsonl", Path, "write one JSON line per --log-every steps here (rank "
         "0): loss, lr, img/s, data wait of the window; a fresh run starts it afresh, --resume appends"),
    _opt(TrainConfig, "log_every", "--log-every", positive(int), "steps per --log-jsonl line and progress update"),
    _opt(TrainConfig, "progress", "--no-progress", invert=True,
         help="no progress bar (terminal) or per-window lines (otherwise) while training; epoch lines stay"),
    _opt(TrainConfig, "plot", "--plot", help="write M.png next to --metrics-json M.json: loss and LR per step "
         "window, top-1 per epoch, img/s and data wait over time (from the --log-jsonl step log, default "
         "M.steps.jsonl), the FlagPerf row as its caption"),
    _opt(TrainConfig, "summary_csv", "--summary-csv", Path, "write timm's per-epoch summary.csv here (rank 0; "
         "default with --output-dir: DIR/summary.csv): epoch, step, train_loss, eval_top1, eval_top5, lr, img_per_s, "
         "data_wait_fraction, epoch_s; rewritten atomically each epoch, continued by --resume"),
    _opt(TrainConfig, "tensorboard", "--tensorboard", aliases=("--log-tensorboard",),
         help="write TensorBoard scalars to DIR/tensorboard of --output-dir (or --tensorboard-dir): loss, lr, img/s, "
              "data wait per --log-every window; top-1, top-5, epoch time per epoch (needs the [tensorboard] extra)"),
    _opt(TrainConfig, "tensorboard_log_dir", "--tensorboard-dir", Path, "TensorBoard's event folder (implies "
         "--tensorboard)", metavar="TB_DIR"),
    _opt(TrainConfig, "dist_timeout", "--dist-timeout", positive(float), metavar="SECONDS",
         help="DDP: a collective waiting this long, or a rank silent this long (heartbeats in the rendezvous "
              "store), ends every rank with one line naming the rank that stopped answering (exit 69)"),
    _opt(TrainConfig, "timing", "--timing", Timing,
         "events: CUDA events on the training stream, read once per log window / epoch (default on CUDA); sync: "
         "FlagPerf's device synchronisation at every timer edge (and a DDP barrier per step); the same on a CPU"),
    _opt(TrainConfig, "test_only", "--test-only",
         help="evaluate a checkpoint on val (top-1/top-5, FlagPerf row), no training: --checkpoint FILE, or the "
              "newest in --checkpoint-dir"),
)
LOADER_OPTIONS = (  # --loader too: a TOML file cannot hold both a top-level key `loader` and a table [loader]
    _opt(TrainConfig, "loader", "--loader", LoaderKind, "decode backend", table="loader"),
    _opt(LoaderConfig, "batch_size", "--batch-size", positive(int), "per-rank batch size", aliases=("-b",)),
    _opt(LoaderConfig, "image_size", "--image-size", positive(int), "train/eval crop side, px"),
    _opt(LoaderConfig, "workers", "--workers", int, aliases=("-j",),
         help="CPU decode workers (DALI threads) per rank (default: the cores available divided by the ranks on "
              "this node)"),
    _opt(LoaderConfig, "shuffle_buffer", "--shuffle-buffer", positive(int), "per-worker train shuffle buffer"),
    _opt(SyntheticConfig, "train_samples", "--synthetic-train-samples", positive(int),
         "synthetic epoch size without --data (default: ILSVRC2012 train, {default})"),
    _opt(SyntheticConfig, "val_samples", "--synthetic-val-samples", positive(int),
         "synthetic eval size without --data (default: ILSVRC2012 val, {default}; on a slow device lower it or "
         "pass --no-eval)"),
    _opt(LoaderConfig, "on_bad_sample", "--on-bad-sample", OnBadSample,
         "a sample that does not decode: skip = name it on stderr, count it (skipped_samples) and fill its train "
         "slot with another sample of its batch (val: leave it out); error = stop at once, naming its shard and key "
         "(folder: its file). --loader dali cannot skip: it always stops"),
    _opt(LoaderConfig, "remote_timeout", "--remote-timeout", positive(float), metavar="SECONDS",
         help="--data URL: seconds a download (shard, _info.json) may give no byte, at connect or mid-transfer, "
              "before it is retried"),
    _opt(LoaderConfig, "remote_retries", "--remote-retries", _count, metavar="N",
         help="--data URL: retries of a download that timed out or failed (each named on stderr; it restarts the "
              "file and drops the bytes already read), then one error line"),
    # --loader dali: NVIDIA's published ResNet50 settings (sources in pipeline/backends/dali_config.py)
    _opt(DaliConfig, "hw_decoder_load", "--dali-hw-decoder-load", float, metavar="FRACTION",
         help="--loader dali on a GPU: share of the JPEGs given to the hardware JPEG decoder (A100/H100/H200), the "
              "rest to nvJPEG's CUDA decoder (default: {default}, NVIDIA's MLPerf DGX H100 setting; DALI's: 0.65)"),
    _opt(DaliConfig, "device_memory_padding", "--dali-device-memory-padding", _count, metavar="BYTES",
         help="--loader dali on a GPU: nvJPEG device buffer preallocated per DALI thread, train decoder (default: "
              "{default}, NVIDIA DLE's)"),
    _opt(DaliConfig, "host_memory_padding", "--dali-host-memory-padding", _count, metavar="BYTES",
         help="--loader dali on a GPU: each of nvJPEG's two pinned host buffers per DALI thread, train decoder "
              "(default: {default}, NVIDIA DLE's)"),
    _opt(DaliConfig, "preallocate_width_hint", "--dali-preallocate-width-hint", _count, metavar="PX",
         help="--loader dali on a GPU: image width the hardware JPEG decoder preallocates for; 0: none (MLPerf: "
              "5980)"),
    _opt(DaliConfig, "preallocate_height_hint", "--dali-preallocate-height-hint", _count, metavar="PX",
         help="--loader dali on a GPU: image height the hardware JPEG decoder preallocates for; 0: none (MLPerf: "
              "6430)"),
    _opt(DaliConfig, "labels_on_device", "--dali-labels-on-device", negatable=True,
         help="--loader dali on a GPU: labels leave DALI on the GPU (no host copy per step)"),
    _opt(DaliConfig, "output", "--dali-output", DaliOutput,
         "--loader dali: what DALI emits: float32 (normalised by DALI, NVIDIA DLE's), float16 (normalised by "
         "DALI, MLPerf's; widened on the device) or uint8 (normalised on the device by torch); the batch is "
         "float32 in every case"),
)
# recipe defaults: NVIDIA DLE ResNet50 v1.5 (see train/recipe.py and OptimConfig)
OPTIM_OPTIONS = (
    _opt(OptimConfig, "lr", "--lr", positive(float), "peak learning rate (default: --lr-per-256 × global batch / "
         "256)"),
    _opt(OptimConfig, "lr_per_256", "--lr-per-256", positive(float), "peak LR per 256 images"),
    _opt(OptimConfig, "momentum", "--momentum", float, "SGD momentum"),
    _opt(OptimConfig, "nesterov", "--nesterov", help="Nesterov momentum"),
    _opt(OptimConfig, "weight_decay", "--weight-decay", float,
         "weight decay of conv and linear weights (default: 1/32768 = {default})"),
    _opt(OptimConfig, "decay_bn_and_bias", "--decay-bn-bias", negatable=True,
         help="also apply weight decay to BN parameters and biases (FlagPerf: on)"),
    _opt(OptimConfig, "label_smoothing", "--label-smoothing", float, "cross-entropy label smoothing"),
    _opt(OptimConfig, "warmup_epochs", "--warmup-epochs", float, "linear warmup length, epochs"),
    _opt(OptimConfig, "schedule", "--schedule", Schedule,
         "after warmup: cosine to 0, or step (x --gamma at each of --milestones)"),
    _opt(OptimConfig, "milestones", "--milestones", _epoch_list, "step schedule epochs"),
    _opt(OptimConfig, "gamma", "--gamma", float, "step schedule factor"),
)
CHECKPOINT_OPTIONS = (
    _opt(CheckpointConfig, "dir", "--checkpoint-dir", Path, "write checkpoints ckpt-step{step:08d}.pt here (rank "
         "0, atomic: a kill -9 never leaves a partial one under the final name)"),
    _opt(CheckpointConfig, "every", "--checkpoint-every", positive(int), metavar="N",
         help="save every N train steps (default: at every epoch end); always also at the end of the run"),
    _opt(CheckpointConfig, "keep", "--checkpoint-keep", positive(int), "keep the newest K checkpoints",
         metavar="K"),
    _opt(CheckpointConfig, "resume", "--resume", Path,
         "alone: continue from the newest checkpoint in --checkpoint-dir at its exact step (same data order, LR "
         "schedule, RNG), or start fresh with a note where there is none; --resume PATH: from that checkpoint "
         "file, or the newest in that folder (it must exist); checkpoints are written where --checkpoint-dir says",
         metavar="PATH", const=True),
    _opt(CheckpointConfig, "file", "--checkpoint", Path, "the checkpoint --test-only evaluates", metavar="FILE"),
)
SCHEMA = Schema("train", RUN_OPTIONS + LOADER_OPTIONS + OPTIM_OPTIONS + CHECKPOINT_OPTIONS)
_GROUPS = (("run", "the run's own options (top level of a --config file)", RUN_OPTIONS),
           ("loader", "input pipeline ([loader] in a --config file)", LOADER_OPTIONS),
           ("optimizer", "SGD, LR schedule, regularisation; defaults: NVIDIA DLE's ResNet50 v1.5 recipe ([optim] "
                         "in a --config file)", OPTIM_OPTIONS),
           ("checkpoints", "[checkpoint] in a --config file", CHECKPOINT_OPTIONS))


def build_parser() -> argparse.ArgumentParser:
    """The ``train`` parser: one argument group per component of the schema, plus ``--config``."""
    parser = Parser(prog="train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for title, description, options in _GROUPS:
        group = parser.add_argument_group(title, description)
        for option in options:
            add_option(group, option)
            if option.flag == "--precision":  # the switch of timm, torchvision's references and NVIDIA's ConvNets
                group.add_argument("--amp", dest="precision", action="store_const", const=Precision.AMP,
                                   default=argparse.SUPPRESS, help="the same as --precision amp")
    add_config_option(parser)
    return parser


def _resolution(args: argparse.Namespace) -> Resolution | None:
    """``--min-train-size`` / ``--ramp-epochs`` / ``--eval-size`` as a Resolution (None: none given)."""
    if args.ramp_epochs is not None and args.min_train_size is None:
        raise ValueError("--ramp-epochs needs --min-train-size (the size the ramp starts from)")
    if args.min_train_size is None and args.eval_size is None:
        return None
    start = args.min_train_size or args.image_size
    ramp = args.ramp_epochs or (0, max(0, args.epochs - 1))
    return Resolution(start=start, end=args.image_size, ramp_start=ramp[0], ramp_end=ramp[1],
                      eval=args.eval_size or args.image_size, step=32 if start % 32 == 0 else 8)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Map parsed flags onto the frozen configs (:meth:`tools.cli_common.Components.build`). ``--seed`` sets the
    one seed, ``TrainConfig.seed``, which also seeds the loader (TrainConfig sets ``loader_cfg.seed`` from it).

    Raises:
        ValueError: a value or combination the schema rejects (one line naming the flag).
    """
    values = COMPONENTS.field_values(SCHEMA.options, args)
    checkpoint = values["checkpoint"]
    resume = checkpoint["resume"]  # False, True (--resume alone) or the PATH of --resume PATH
    checkpoint.update(resume=resume is not False, resume_from=resume if isinstance(resume, Path) else None)
    return COMPONENTS.build(values, resolution=_resolution(args))


def _check_inputs(cfg: TrainConfig) -> None:
    """The paths a run reads exist: ``--data`` (a local folder), ``--checkpoint FILE``, and ``--checkpoint-dir``
    for ``--test-only`` (``--config`` is read, and checked, while parsing).

    Raises:
        ValueError: one line naming the flag.
    """
    ck = cfg.checkpoint
    if isinstance(cfg.data, Path) and not cfg.data.is_dir():
        raise ValueError(f"--data {cfg.data}: {'not a folder' if cfg.data.exists() else 'no such folder'}")
    if ck.file is not None and not ck.file.is_file():
        raise ValueError(f"--checkpoint {ck.file}: no such file")
    if ck.resume_from is not None and not ck.resume_from.exists():
        raise ValueError(f"--resume {ck.resume_from}: no such checkpoint file or folder")
    if ck.dir is not None and cfg.test_only and not ck.dir.is_dir():
        raise ValueError(f"--checkpoint-dir {ck.dir}: no such folder (--test-only reads its newest checkpoint)")


def _check_outputs(cfg: TrainConfig) -> None:
    """Rank 0 can write what the run writes: ``--output-dir`` (training), ``--metrics-json`` (and its
    ``.config.toml``), ``--log-jsonl``, and (training) ``--checkpoint-dir``; nothing is created here (the run
    folder is made and locked by :func:`train.rundir.claim`).

    Raises:
        ValueError: one line naming the flag.
    """
    outputs = [("--output-dir", None if cfg.test_only else cfg.output_dir, True),
               ("--metrics-json", cfg.metrics_json, False), ("--log-jsonl", cfg.log_jsonl, False),
               ("--checkpoint-dir", None if cfg.test_only else cfg.checkpoint.dir, True),
               ("--summary-csv", None if cfg.test_only else cfg.summary_csv, False),
               ("--tensorboard-dir", None if cfg.test_only else cfg.tensorboard_log_dir, True)]
    at_end = cfg.resolved_config_path if cfg.output_dir is None or cfg.test_only else None
    if at_end is not None:  # the resolved options beside the metrics JSON
        outputs.insert(2, ("--metrics-json", at_end, False))
    for flag, path, folder in outputs:
        why = _unwritable(path, folder) if path is not None else None
        if why is not None:
            raise ValueError(f"{flag} {path}: cannot write there ({why}); pick a writable path")


def _unwritable(path: Path, folder: bool) -> str | None:
    """Why this process cannot write ``path`` (a file, or with ``folder`` a folder to write files into, made where
    missing), or None when it can."""
    if path.exists():
        if path.is_dir() != folder:
            return "a folder" if path.is_dir() else "a file"
        return None if os.access(path, os.W_OK | (os.X_OK if folder else 0)) else "not writable"
    parent = path.parent
    while not parent.exists():  # the nearest existing folder above it must let the rest be made
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a folder"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"{parent} is not writable"


def main(argv: list[str] | None = None) -> int:
    """Parse, check and run ``train``; returns the exit status (2: a one-line error on stderr).

    With ``--output-dir DIR`` the resolved options go to DIR/config.toml at the start (see :mod:`train.rundir`:
    the folder is locked for the run, and one holding an earlier run is refused unless ``--resume``); otherwise
    to ``<metrics>.config.toml`` beside ``--metrics-json`` once the run has finished and its JSON is written: a run
    that stopped with an error leaves neither.
    """
    from train import rundir

    parser = build_parser()
    args = parse_args_with_config(parser, SCHEMA, argv)  # schema defaults < --config FILE.toml < flags
    folder = rundir.RunFolder()
    try:
        cfg = config_from_args(args)
        _check_inputs(cfg)
        if distributed.global_rank() == 0:  # the ranks that write nothing need no writable outputs
            _check_outputs(cfg)
            if cfg.tensorboard_dir is not None and not cfg.test_only:
                from train.sinks import tensorboard_writer_class

                tensorboard_writer_class()  # at start: the package is installed, else one line naming the extra
            folder = rundir.claim(cfg, lambda path: write_resolved(SCHEMA, args, path))
    except ValueError as exc:
        parser.error(str(exc))
    with folder:
        for note in folder.notes:
            print(note, file=sys.stderr)
        return _run(cfg, args)


def _run(cfg: TrainConfig, args: argparse.Namespace) -> int:
    """Run ``cfg`` (parsed from ``args``); returns the exit status."""
    if cfg.target_acc1 is not None and not cfg.eval:
        print(f"train: note: --no-eval: the target top-1 {cfg.target_acc1}% is never checked", file=sys.stderr)
    prepare_tf32_env(cfg.tf32)  # MetaX reads METAX_USE_TF32 when CUDA starts: set it before anything starts CUDA
    from train import preempt

    signals = None if cfg.test_only else preempt.StopSignals().install()  # before the slow imports: no traceback
    try:
        from train.run import run  # imported late: torch start-up is not needed for --help

        from pipeline.backends.shards import SampleDecodeError
        from pipeline.read.tarstream import ShardReadError

        try:
            run(cfg, signals)
        except (DatasetError, ValueError, SampleDecodeError, ShardReadError) as exc:
            sys.stderr.write(f"train: error: {error_line(exc)}\n")  # one write: ranks' lines do not interleave
            sys.stderr.flush()
            return 2
        except preempt.Stopped as exc:  # every rank stopped after the same step; rank 0 says where
            if distributed.global_rank() == 0:
                sys.stderr.write(f"train: {exc}\n")
                sys.stderr.flush()
            return preempt.EXIT_STOPPED
    except KeyboardInterrupt as exc:  # a second SIGINT (Aborted), or Ctrl-C where no handler is installed
        why = str(exc) if isinstance(exc, preempt.Aborted) else "interrupted by SIGINT: nothing saved"
        sys.stderr.write(f"train: {why}\n")
        sys.stderr.flush()
        return preempt.EXIT_ABORTED
    finally:
        if signals is not None:
            signals.uninstall()
    at_end = cfg.resolved_config_path if cfg.output_dir is None or cfg.test_only else None
    if at_end is not None and distributed.global_rank() == 0:
        try:  # metrics.json -> metrics.config.toml (a run folder's config.toml was written at the start)
            write_resolved(SCHEMA, args, at_end)
        except ValueError as exc:
            sys.stderr.write(f"train: error: {error_line(exc)}\n")
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
