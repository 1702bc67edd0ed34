"""From a config to what one process runs: loaders, model (DDP, compile), EMA, optimiser, LR schedule and the
parts of the training step (:class:`Session`), or, for ``--test-only``, the val loader and a checkpoint's model
(:class:`CheckpointTestSession`).

Backends differ only through their registry entry (:func:`pipeline.backends.backend_spec`): what input they
need (shards, an image tree, nothing), whether the data order depends on the worker count and whether a ``cuda``
device must be NVIDIA's (DALI, nvJPEG: :func:`check_loader_device` stops the run before anything is built on
another vendor's ``cuda`` device, e.g. MetaX's).
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.backends import (DataInput, FolderConfig, Loader, LoaderConfig, LoaderKind, Split, backend_spec,
                               build_loader)
from pipeline.compat import compile_model
from pipeline.dataset import DatasetInfo
from pipeline.read.info import load_info
from train import accelerator, checkpoint, distributed
from train.config import TrainConfig
from train.environment import software_versions
from train.model import build_resnet50
from train.precision import Precision, make_grad_scaler, model_dtype, resolve_precision, set_cudnn, set_tf32
from train.precision import unsupported as precision_unsupported
from train.recipe import ModelEma, build_scheduler, build_sgd, parameter_groups


@dataclass(frozen=True)
class Session:
    """Everything one training process builds from the config before its first step (frozen: what changes while
    the run goes on, e.g. the train loader under progressive resizing, lives in :class:`train.trainer.Trainer`).

    ``train_loader`` is the first one, at ``lcfg.image_size`` px; ``model`` the plain module (evaluation,
    checkpoints, EMA); ``train_model`` the one the step runs (DDP wrapper and / or compiled, else ``model``).
    ``peak_lr``: the schedule's peak learning rate; ``versions``: :func:`train.environment.software_versions`.
    """

    cfg: TrainConfig
    env: distributed.DistEnv
    info: DatasetInfo | None
    lcfg: LoaderConfig
    train_loader: Loader
    val_loader: Loader | None
    precision: Precision
    model: torch.nn.Module
    train_model: torch.nn.Module
    ema: ModelEma | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: torch.nn.Module
    scaler: torch.amp.GradScaler | None
    steps_per_epoch: int
    total_steps: int
    global_batch: int
    peak_lr: float
    device_name: str
    versions: dict
    sgd_impl: str  # how SGD's step runs (pipeline.compat.SgdImpl): fused, foreach or for-loop

    @property
    def header(self) -> checkpoint.Header:
        order_by_workers = backend_spec(self.cfg.loader).order_by_workers
        return checkpoint.Header(num_classes=self.train_loader.num_classes, world_size=self.env.world_size,
                                 global_batch=self.global_batch, image_size=self.lcfg.image_size,
                                 precision=self.precision.value, total_steps=self.total_steps,
                                 loader=self.cfg.loader.value, seed=self.lcfg.seed,
                                 shuffle_buffer=self.lcfg.shuffle_buffer,
                                 workers=self.lcfg.workers if order_by_workers else None)

    @property
    def train_state(self) -> checkpoint.TrainState:
        """What a checkpoint of this session holds: model, optimizer, LR schedule, GradScaler, EMA."""
        return checkpoint.TrainState(self.model, self.optimizer, self.scheduler, self.scaler, self.ema)

    def build_train_loader(self, image_size: int) -> Loader:
        """A train loader of this session at ``image_size`` px."""
        return build_loader(self.cfg.loader, dataclasses.replace(self.lcfg, image_size=image_size), Split.TRAIN,
                            self.info, self.env.device, self.env.rank, self.env.world_size)

    def sync_buffers(self) -> None:
        """Average BN statistics over ranks (model and EMA) before an evaluation or a checkpoint."""
        distributed.average_buffers(self.model, self.env)
        if self.ema is not None:
            distributed.average_buffers(self.ema.module, self.env)


@dataclass(frozen=True)
class CheckpointTestSession:
    """What ``--test-only`` evaluates: a checkpoint's model (and EMA, when it holds one) on the val loader."""

    path: Path
    loaded: checkpoint.Loaded
    val_loader: Loader
    lcfg: LoaderConfig
    precision: Precision
    model: torch.nn.Module
    ema: ModelEma | None
    device_name: str
    versions: dict


def dataset(cfg: TrainConfig) -> DatasetInfo | None:
    """The shard folder of a backend that reads shards (None for the others: they read ``--data`` themselves).

    Raises:
        ValueError: the backend needs shards and ``--data`` is not given.
        pipeline.dataset.DatasetError: ``--data`` is not a usable shard folder.
    """
    needs = backend_spec(cfg.loader).needs
    use = cfg.data is not None and needs is not DataInput.IMAGE_TREE
    info = load_info(cfg.data, remote=cfg.loader_cfg.remote_options()) if use else None
    if info is None and needs is DataInput.SHARDS:
        raise ValueError(f"--loader {cfg.loader.value} needs --data DIR (a folder written by shard-imagenet)")
    return info


def loader_config(cfg: TrainConfig) -> LoaderConfig:
    """The backend's options with the data root of ``--data`` (the folder backend's :class:`FolderConfig`)."""
    return dataclasses.replace(cfg.loader_cfg, options=cfg.loader_cfg.options + (FolderConfig(cfg.data),))


def val_loader(cfg: TrainConfig, lcfg: LoaderConfig, info: DatasetInfo | None,
               env: distributed.DistEnv) -> Loader | None:
    """This rank's val loader (at ``--eval-size`` px when progressive resizing sets one), or None without eval."""
    if not (cfg.eval or cfg.test_only):
        return None
    val_cfg = dataclasses.replace(lcfg, image_size=cfg.resolution.eval) if cfg.resolution is not None else lcfg
    return build_loader(cfg.loader, val_cfg, Split.VAL, info, env.device, env.rank, env.world_size)


def check_loader_device(kind: LoaderKind, device: torch.device) -> None:
    """Stop before anything is built when backend ``kind`` cannot run on ``device``: a backend that needs NVIDIA
    CUDA (:attr:`pipeline.backends.BackendSpec.needs_nvidia`) on a ``cuda`` device of another vendor (MetaX, AMD,
    another CUDA-like device; :mod:`train.accelerator`). On a CPU such backends run their CPU path.

    Raises:
        ValueError: one line naming the device and saying to use ``--loader cpu``.
    """
    spec = backend_spec(kind)
    if not spec.needs_nvidia or device.type != "cuda":
        return
    acc = accelerator.identify(device)
    why = spec.device_refusal(device, acc.is_nvidia, acc.describe(device))
    if why is not None:
        raise ValueError(why)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's (``platform.processor()``, else ``cpu``)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def build_model(cfg: TrainConfig, env: distributed.DistEnv, num_classes: int,
                precision: Precision) -> tuple[torch.nn.Module, ModelEma | None]:
    """ResNet50 on this rank's device (TF32 as ``--tf32`` says on CUDA, in the device's own way: see
    :func:`train.precision.set_tf32`; cuDNN's benchmark / deterministic flags as the config says) and its EMA when
    ``--ema-decay`` is set."""
    set_cudnn(cfg.cudnn_benchmark, cfg.cudnn_deterministic)
    if env.device.type == "cuda":
        set_tf32(cfg.tf32, accelerator.vendor_of(env.device))
    model = build_resnet50(num_classes, env.device, cfg.zero_init_residual, model_dtype(precision), cfg.channels_last)
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay is not None else None
    return model, ema


def make_train_model(cfg: TrainConfig, env: distributed.DistEnv, model: torch.nn.Module) -> torch.nn.Module:
    """The module the step runs: under torchrun DDP-wrapped with the project's settings
    (:func:`train.distributed.wrap_ddp`, :class:`train.distributed.DdpSettings`: no per-forward buffer broadcast,
    gradients as bucket views), compiled with ``--compile``; ``model`` itself for one process without it."""
    ddp_model = distributed.wrap_ddp(model, env) if env.distributed else model
    # compile time lands in the first steps, which the warm-up leaves out of p_*
    return compile_model(ddp_model) if cfg.compile else ddp_model


def _optimiser(cfg: TrainConfig, env: distributed.DistEnv, model: torch.nn.Module, steps_per_epoch: int,
               total_steps: int, peak_lr: float):
    """(SGD, LR schedule, SGD's :class:`~pipeline.compat.SgdImpl`): fused SGD on CUDA where this torch has it,
    warm-up then cosine or step decay over ``total_steps``."""
    optim = cfg.optim
    # fused SGD on CUDA: one kernel per step, and GradScaler hands it the scale and inf flag on the device
    # instead of reading the inf check back with .item() (a host synchronisation per step)
    optimizer, impl = build_sgd(parameter_groups(model, optim.weight_decay, optim.decay_bn_and_bias), peak_lr,
                                optim.momentum, optim.nesterov, fused=env.device.type == "cuda")
    scheduler = build_scheduler(optimizer, min(total_steps, round(optim.warmup_epochs * steps_per_epoch)),
                                total_steps, optim.schedule,
                                tuple(epoch * steps_per_epoch for epoch in optim.milestones), optim.gamma)
    return optimizer, scheduler, impl


def supported_precision(cfg: TrainConfig, env: distributed.DistEnv) -> Precision:
    """``--precision`` resolved for this rank's device.

    Raises:
        ValueError: this torch cannot run it on this device (one line; e.g. torch 2.0 and ``amp`` on a CPU).
    """
    precision = resolve_precision(cfg.precision, env.device)
    why = precision_unsupported(precision, env.device)
    if why is not None:
        raise ValueError(why)
    return precision


def build_session(cfg: TrainConfig, env: distributed.DistEnv) -> Session:
    """Loaders, model (DDP, compile), EMA, fused SGD (CUDA), LR schedule, loss and GradScaler of one training
    process.

    Raises:
        ValueError / pipeline.dataset.DatasetError: the data or the options cannot work (also: a loader that needs
            an NVIDIA GPU on another ``cuda`` device, :func:`check_loader_device`).
    """
    check_loader_device(cfg.loader, env.device)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts them)
    precision = supported_precision(cfg, env)
    info, lcfg = dataset(cfg), loader_config(cfg)
    train_loader = build_loader(cfg.loader, lcfg, Split.TRAIN, info, env.device, env.rank, env.world_size)
    val = val_loader(cfg, lcfg, info, env)
    model, ema = build_model(cfg, env, train_loader.num_classes, precision)
    global_batch = lcfg.batch_size * env.world_size
    peak_lr = cfg.optim.peak_lr(global_batch)
    steps_per_epoch = len(train_loader)
    total_steps = min(steps_per_epoch * cfg.epochs, cfg.max_steps or steps_per_epoch * cfg.epochs)
    optimizer, scheduler, sgd_impl = _optimiser(cfg, env, model, steps_per_epoch, total_steps, peak_lr)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    train_model = make_train_model(cfg, env, model)
    return Session(cfg, env, info, lcfg, train_loader, val, precision, model, train_model, ema,
                   optimizer, scheduler, criterion, make_grad_scaler(precision, env.device), steps_per_epoch,
                   total_steps, global_batch, peak_lr, device_name(env.device), software_versions(), sgd_impl)


def checkpoint_to_test(cfg: TrainConfig) -> Path:
    """``--checkpoint FILE``, else the newest checkpoint of ``--checkpoint-dir``.

    Raises:
        ValueError: neither gives one.
    """
    ck, ck_dir = cfg.checkpoint, cfg.checkpoint_dir  # --checkpoint-dir, else --output-dir's checkpoints/
    path = ck.file if ck.file is not None else (checkpoint.latest_checkpoint(ck_dir) if ck_dir is not None else None)
    if path is None:
        where = f"--checkpoint-dir {ck_dir} holds none" if ck_dir is not None else "none given"
        raise ValueError(f"--test-only needs a checkpoint: {where}; pass --checkpoint FILE or the --checkpoint-dir "
                         f"a training run wrote")
    return path


def build_checkpoint_test(cfg: TrainConfig, env: distributed.DistEnv) -> CheckpointTestSession:
    """The val loader and the checkpoint's model (and EMA) of ``--test-only``.

    Raises:
        ValueError / CheckpointError: no checkpoint, or one of another model / class count; a loader that needs an
            NVIDIA GPU on another ``cuda`` device (:func:`check_loader_device`).
    """
    check_loader_device(cfg.loader, env.device)
    path = checkpoint_to_test(cfg)
    precision = supported_precision(cfg, env)
    lcfg = loader_config(cfg)
    val = val_loader(cfg, lcfg, dataset(cfg), env)
    model, _ = build_model(dataclasses.replace(cfg, ema_decay=None), env, val.num_classes, precision)
    loaded, ema_state = checkpoint.load_weights(path, model, val.num_classes)
    ema = None
    if ema_state is not None:  # evaluate the checkpoint's EMA beside the model
        ema = ModelEma(model, float(ema_state.get("decay", 0.5)))
        ema.load_state_dict(ema_state)
    return CheckpointTestSession(path, loaded, val, lcfg, precision, model, ema, device_name(env.device),
                                 software_versions())
