"""The measured training loop: train epochs, evaluate after each, report FlagPerf metrics.

The loop body has no timers: the train iterator is wrapped by :func:`train.clock.timed_iter` (data wait) and
the step by the run's step clock (:mod:`train.clock`: CUDA events read once per log window / epoch, or
FlagPerf's synchronous timing with ``--timing sync``). The step holds no host synchronisation: the loss is
accumulated on the device and read once per epoch, fused SGD on CUDA lets GradScaler skip its per-step
``.item()``, and the EMA update is in-place device work. Under DDP the BatchNorm statistics are averaged over
ranks before every evaluation and checkpoint (:func:`train.distributed.average_buffers`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel

from pipeline.backends import Batch, DataInput, Loader, LoaderConfig, Split, backend_spec, build_loader
from pipeline.dataset import DatasetInfo, load_info
from pipeline.shard.run import default_workers
from train import checkpoint, distributed
from train.config import TrainConfig
from train.memory import DeviceMemoryMonitor, MemoryUse, peak_memory, reset_peaks, start_monitor
from train.metrics import (TABLE_HEADER, FlagPerfMetrics, RunTimes, flagperf_metrics, flagperf_row,
                           process_start_time, software_versions)
from train.model import build_resnet50
from train.precision import Precision, autocast, make_grad_scaler, model_dtype, resolve_precision, set_tf32
from train.recipe import ModelEma, build_scheduler, build_sgd, parameter_groups
from train.steplog import StepLog
from train.clock import Mark, RunClock, after_calls, make_clock, resolve_timing, timed_iter
from train.iobench.verdict import Evidence, Verdict, decide


@dataclass
class TrainStep:
    """One optimisation step on a device batch: forward (autocast), loss, backward, SGD, LR schedule, EMA.

    Calling it returns the detached scalar loss (a device tensor: no host synchronisation).
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: torch.nn.Module
    precision: Precision
    device: torch.device
    scaler: torch.amp.GradScaler | None = None
    ema: ModelEma | None = None
    raw_model: torch.nn.Module | None = None  # the module the EMA follows (not the DDP wrapper)
    channels_last: bool = True  # False: batches are made NCHW-contiguous before the forward pass

    def __call__(self, batch: Batch) -> torch.Tensor:
        images = batch.images.half() if self.precision is Precision.FP16 else batch.images
        if not self.channels_last:
            images = images.contiguous()
        with autocast(self.precision, self.device):
            loss = self.criterion(self.model(images), batch.labels)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.raw_model)
        return loss.detach()


@dataclass(frozen=True)
class EvalResult:
    """Evaluation over all ranks: ``count`` images, top-1 and top-5 accuracy in %."""

    count: int
    acc1: float
    acc5: float


def evaluate(model: torch.nn.Module, loader: Loader, precision: Precision, env: distributed.DistEnv) -> EvalResult:
    """Top-1/top-5 over this rank's val batches, summed over ranks (each image counted exactly once).

    ``model`` is the plain module (not the DDP wrapper): ranks may run different batch counts here.
    """
    model.eval()
    correct1 = torch.zeros((), dtype=torch.int64, device=env.device)
    correct5 = torch.zeros((), dtype=torch.int64, device=env.device)
    count = 0
    with torch.inference_mode():
        for batch in loader:
            images = batch.images.half() if precision is Precision.FP16 else batch.images
            with autocast(precision, env.device):
                logits = model(images)
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hits = top.eq(batch.labels.view(-1, 1))
            correct1 += hits[:, 0].sum()
            correct5 += hits.any(dim=1).sum()
            count += batch.labels.shape[0]
    model.train()
    n, c1, c5 = distributed.all_reduce([float(count), float(correct1.item()), float(correct5.item())], "sum", env)
    return EvalResult(int(n), 100.0 * c1 / max(n, 1), 100.0 * c5 / max(n, 1))


def _log(env: distributed.DistEnv, msg: str) -> None:
    if env.is_main:
        print(msg, flush=True)


def run(cfg: TrainConfig) -> dict:
    """Train and evaluate as ``cfg`` says (or only evaluate, ``cfg.test_only``); return the metrics dict (also
    written to ``cfg.metrics_json``).

    Raises:
        pipeline.dataset.DatasetError: ``cfg.data`` is not a usable shard folder.
        ValueError: options that cannot work (e.g. a batch larger than the train split allows).
    """
    env = distributed.init_distributed()
    try:
        return test_only(cfg, env) if cfg.test_only else fit(cfg, env)
    finally:
        distributed.shutdown(env)


# --- building a run --------------------------------------------------------------------------------------------

@dataclass
class Session:
    """Everything one process builds from the config before its first step."""

    cfg: TrainConfig
    env: distributed.DistEnv
    info: DatasetInfo | None
    lcfg: LoaderConfig
    train_loader: Loader
    val_loader: Loader | None
    precision: Precision
    model: torch.nn.Module
    ema: ModelEma | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: TrainStep
    steps_per_epoch: int
    total_steps: int
    global_batch: int
    peak_lr: float
    device_name: str
    versions: dict
    monitor: DeviceMemoryMonitor | None = None
    train_loader_size: int = 0  # image side of the current train loader (progressive resizing rebuilds it)

    @property
    def header(self) -> checkpoint.Header:
        order_by_workers = backend_spec(self.cfg.loader).order_by_workers
        return checkpoint.Header(num_classes=self.train_loader.num_classes, world_size=self.env.world_size,
                                 global_batch=self.global_batch, image_size=self.lcfg.image_size,
                                 precision=self.precision.value, total_steps=self.total_steps,
                                 loader=self.cfg.loader.value, seed=self.lcfg.seed,
                                 shuffle_buffer=self.lcfg.shuffle_buffer,
                                 workers=self.lcfg.workers if order_by_workers else None)

    def build_train_loader(self, image_size: int) -> Loader:
        return build_loader(self.cfg.loader, dataclasses.replace(self.lcfg, image_size=image_size), Split.TRAIN,
                            self.info, self.env.device, self.env.rank, self.env.world_size)

    def sync_buffers(self) -> None:
        """Average BN statistics over ranks (model and EMA) before an evaluation or a checkpoint."""
        distributed.average_buffers(self.model, self.env)
        if self.ema is not None:
            distributed.average_buffers(self.ema.module, self.env)


def _dataset(cfg: TrainConfig) -> DatasetInfo | None:
    """The shard folder of a backend that reads shards (None for the others: they read ``--data`` themselves)."""
    needs = backend_spec(cfg.loader).needs
    info = load_info(cfg.data) if cfg.data is not None and needs is not DataInput.IMAGE_TREE else None
    if info is None and needs is DataInput.SHARDS:
        raise ValueError(f"--loader {cfg.loader.value} needs --data DIR (a folder written by shard-imagenet)")
    return info


def _val_loader(cfg: TrainConfig, lcfg: LoaderConfig, info, env) -> Loader | None:
    if not (cfg.eval or cfg.test_only):
        return None
    val_cfg = dataclasses.replace(lcfg, image_size=cfg.resolution.eval) if cfg.resolution is not None else lcfg
    return build_loader(cfg.loader, val_cfg, Split.VAL, info, env.device, env.rank, env.world_size)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def _build_model(cfg: TrainConfig, env, num_classes: int, precision: Precision):
    if env.device.type == "cuda":
        set_tf32(cfg.tf32)
    model = build_resnet50(num_classes, env.device, cfg.zero_init_residual, model_dtype(precision), cfg.channels_last)
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay is not None else None
    return model, ema


def build_session(cfg: TrainConfig, env: distributed.DistEnv) -> Session:
    """Loaders, model (DDP, compile), EMA, fused SGD (CUDA), LR schedule and the step of one training process."""
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts them)
    info = _dataset(cfg)
    lcfg = dataclasses.replace(cfg.loader_cfg, data_root=cfg.data)
    train_loader = build_loader(cfg.loader, lcfg, Split.TRAIN, info, env.device, env.rank, env.world_size)
    val_loader = _val_loader(cfg, lcfg, info, env)
    precision = resolve_precision(cfg.precision, env.device)
    model, ema = _build_model(cfg, env, train_loader.num_classes, precision)
    ddp_model = (DistributedDataParallel(model, device_ids=[env.device] if env.device.type == "cuda" else None)
                 if env.distributed else model)
    if cfg.compile:  # compile time lands in the first steps, which the warm-up leaves out of p_*
        ddp_model = torch.compile(ddp_model)
    global_batch = lcfg.batch_size * env.world_size
    o = cfg.optim
    peak_lr = o.peak_lr(global_batch)
    # fused SGD on CUDA: one kernel per step, and GradScaler hands it the scale and inf flag on the device
    # instead of reading the inf check back with .item() (a host synchronisation per step)
    optimizer = build_sgd(parameter_groups(model, o.weight_decay, o.decay_bn_and_bias), peak_lr, o.momentum,
                          o.nesterov, fused=env.device.type == "cuda")
    steps_per_epoch = len(train_loader)
    total_steps = min(steps_per_epoch * cfg.epochs, cfg.max_steps or steps_per_epoch * cfg.epochs)
    scheduler = build_scheduler(optimizer, min(total_steps, round(o.warmup_epochs * steps_per_epoch)), total_steps,
                                o.schedule, tuple(m * steps_per_epoch for m in o.milestones), o.gamma)
    step = TrainStep(ddp_model, optimizer, scheduler, torch.nn.CrossEntropyLoss(label_smoothing=o.label_smoothing),
                     precision, env.device, make_grad_scaler(precision, env.device), ema, model, cfg.channels_last)
    return Session(cfg, env, info, lcfg, train_loader, val_loader, precision, model, ema, optimizer, scheduler, step,
                   steps_per_epoch, total_steps, global_batch, peak_lr, _device_name(env.device),
                   software_versions(), train_loader_size=lcfg.image_size)


def _announce(s: Session, timing) -> None:
    c, e = s.cfg, s.env
    _log(e, f"train: {c.loader.value} loader, {c.data if c.data is not None else 'synthetic data'}, "
            f"{s.train_loader.num_classes} classes, device {e.device} ({s.device_name}), world size {e.world_size}, "
            f"precision {s.precision.value}, batch {s.lcfg.batch_size}/rank (global {s.global_batch}), "
            f"image {s.lcfg.image_size}px, lr {s.peak_lr:g}, {s.steps_per_epoch} steps/epoch, {s.total_steps} steps, "
            f"timing {timing.value}")


def _resume(s: Session) -> checkpoint.Loaded | None:
    """Load the newest checkpoint of ``--checkpoint-dir`` on every rank (``--resume``), or None.

    Raises:
        ValueError / CheckpointError: the run is already complete, or the checkpoint does not fit.
    """
    ck = s.cfg.checkpoint
    if not (ck.resume and ck.dir is not None):
        return None
    found = checkpoint.latest_checkpoint(ck.dir)
    if found is None:
        _log(s.env, f"resume: no checkpoint in {ck.dir}: starting from step 0")
        return None
    loaded = checkpoint.load_checkpoint(found, s.header, s.model, s.optimizer, s.scheduler, s.step.scaler, ema=s.ema)
    p = loaded.progress
    if p.step >= s.total_steps:
        raise ValueError(f"checkpoint {found} is at step {p.step}: this run of {s.total_steps} steps is already "
                         f"complete; nothing to resume (drop --resume or use another --checkpoint-dir to train again)")
    if p.epoch_step >= s.steps_per_epoch:  # saved at an epoch's end: the next epoch starts afresh
        p.epoch, p.epoch_step = p.epoch + 1, 0
    _log(s.env, f"resume: {found} at step {p.step}/{s.total_steps} (epoch {p.epoch + 1}, {p.epoch_step} batches "
                f"into it)")
    return loaded


@dataclass
class Checkpointer:
    """Writes checkpoints of a session (rank 0 writes, every rank waits); ``saved``: paths, ``steps``: their steps."""

    s: Session
    clock: RunClock
    progress: checkpoint.Progress
    saved: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)

    def save(self) -> None:
        s, ck = self.s, self.s.cfg.checkpoint
        with self.clock.checkpoint.timing(self.clock.sync):
            s.sync_buffers()
            states = distributed.all_gather_objects(s.train_loader.state_dict(), s.env)
            if s.env.is_main:
                self.saved.append(str(checkpoint.save_checkpoint(
                    ck.dir, s.header, self.progress, s.model, s.optimizer, s.scheduler, s.step.scaler, keep=ck.keep,
                    ema=s.ema, loader_states=states)))
            distributed.barrier(s.env)
        self.steps.append(self.progress.step)


# --- the loop --------------------------------------------------------------------------------------------------

@dataclass
class LoopState:
    """What the epochs leave behind for the report."""

    start_step: int
    warm_steps: int
    done: int
    epochs_run: int
    train_size: int
    loop_start: float = 0.0
    loop_s: float = 0.0
    marks: list[Mark] = field(default_factory=list)
    last_eval: EvalResult | None = None
    ema_eval: EvalResult | None = None
    target_reached: int | None = None


def _warm_steps(cfg: TrainConfig, total_steps: int, start_step: int) -> int:
    """Steps of this process left out of p_*: a resumed process measures its own start-up too."""
    remaining = total_steps - start_step
    cfg.resolved_warmup_steps(total_steps)  # validates an explicit --warmup-steps
    warm = cfg.resolved_warmup_steps(remaining) if cfg.warmup_steps is None else min(cfg.warmup_steps, remaining - 1)
    if cfg.compile and warm == 0 and remaining > 1:
        warm = 1  # the first compiled step holds the compilation: never in p_*
    return max(0, warm)


def _eval_epoch(s: Session, clock: RunClock, st: LoopState, epoch: int) -> None:
    if s.val_loader is None:
        return
    s.val_loader.set_epoch(epoch)
    with clock.eval.timing(clock.sync):
        s.sync_buffers()
        st.last_eval = evaluate(s.model, s.val_loader, s.precision, s.env)
        if s.ema is not None:
            st.ema_eval = evaluate(s.ema.module, s.val_loader, s.precision, s.env)


def _epoch_line(s: Session, st: LoopState, epoch: int, n: int, skip: int, loss: float, train_s: float,
                wait_s: float, compute_s: float) -> str:
    gb = s.global_batch
    ev, ema = st.last_eval, st.ema_eval
    return (f"epoch {epoch + 1}/{s.cfg.epochs}: steps {st.done}/{s.total_steps}, loss {loss / max(n, 1):.4f}"
            + (f" (over the {n} steps since the resume)" if skip else "")
            + (f", train size {st.train_size}px" if s.cfg.resolution is not None else "")
            + f", train {n * gb / train_s:.1f} img/s (data wait {100 * wait_s / train_s:.0f}%, "
              f"compute {n * gb / max(compute_s, 1e-9):.1f} img/s)"
            + (f", val top-1 {ev.acc1:.2f}% top-5 {ev.acc5:.2f}% on {ev.count} images" if ev is not None else "")
            + (f", EMA top-1 {ema.acc1:.2f}%" if ema is not None else ""))


def _epoch_batches(s: Session, clock: RunClock, epoch: int, skip: int, loader_states: list | None):
    """The train iterator of ``epoch``, positioned after ``skip`` batches (resume), timed as resume replay."""
    if s.cfg.resolution is not None and s.cfg.resolution.train_size(epoch) != s.train_loader_size:
        s.train_loader.close()  # progressive resizing: a loader at the new size
        s.train_loader_size = s.cfg.resolution.train_size(epoch)
        s.train_loader = s.build_train_loader(s.train_loader_size)
    s.train_loader.set_epoch(epoch)
    if not (skip or loader_states):
        return iter(s.train_loader)
    with clock.resume_skip.timing(clock.sync):  # once, in the resumed epoch
        if loader_states:
            s.train_loader.load_state_dict(loader_states[s.env.rank] if s.env.rank < len(loader_states) else {})
        return s.train_loader.iter_from(skip)


def _run_epoch(s: Session, clock: RunClock, st: LoopState, ckpt: Checkpointer, timed_step, epoch: int,
               loader_states: list | None) -> bool:
    """Train one epoch (or its rest after a resume), evaluate, checkpoint, log. Returns False to stop."""
    p = ckpt.progress
    skip = p.epoch_step if epoch == p.epoch else 0
    n = min(s.steps_per_epoch, s.total_steps - st.done + skip) - skip  # steps to run in this epoch
    if n <= 0:
        return False
    p.epoch, p.epoch_step = epoch, skip
    t0, data0, compute0, excl0 = time.perf_counter(), clock.data.total, clock.compute.total, clock.excluded
    batches = _epoch_batches(s, clock, epoch, skip, loader_states)
    loss_sum = torch.zeros((), device=s.env.device)
    for batch in timed_iter(batches, clock.data, n, clock.data_ready):
        loss_sum += timed_step(batch)
    clock.sync()  # once per epoch: the epoch's wall time ends when its last step has finished
    st.done, st.epochs_run, st.train_size = st.done + n, st.epochs_run + 1, s.train_loader_size
    train_s = time.perf_counter() - t0 - (clock.excluded - excl0)
    compute_s = clock.compute.total - compute0
    _eval_epoch(s, clock, st, epoch)
    loss = loss_sum.item()  # one host read per epoch, which the log line needs anyway
    if not math.isfinite(loss):
        raise ValueError(f"the training loss became {loss} in epoch {epoch + 1} (diverged): lower --lr (now "
                         f"{s.peak_lr:g} peak), raise --warmup-epochs, or use --precision amp/bf16 instead of fp16")
    if s.cfg.checkpoint.dir is not None and s.cfg.checkpoint.every is None and st.done < s.total_steps:
        p.epoch, p.epoch_step = epoch + 1, 0  # after the eval: a resume starts the next epoch
        ckpt.save()
    _log(s.env, _epoch_line(s, st, epoch, n, skip, loss, train_s, clock.data.total - data0, compute_s))
    if s.cfg.target_acc1 is not None and st.last_eval is not None and st.last_eval.acc1 >= s.cfg.target_acc1:
        st.target_reached = epoch + 1
        _log(s.env, f"target top-1 {s.cfg.target_acc1}% reached after epoch {epoch + 1}: stopping")
        return False
    return True


def _wrap_step(s: Session, clock: RunClock, st: LoopState, ckpt: Checkpointer, steplog: StepLog):
    """The step with its clock, the warm-up mark, checkpoints every N steps and the JSONL log around it."""
    def mark() -> None:  # end of warm-up: p_* count what follows; torch's memory peaks restart here
        st.marks.append(clock.mark())
        reset_peaks(s.env.device)

    ck = s.cfg.checkpoint
    timed = after_calls(clock.compute.wrap(s.step), st.warm_steps, mark)
    timed = checkpoint.every_n_steps(timed, ckpt.progress, ck.every if ck.dir is not None else None, ckpt.save)
    return steplog.wrap(timed), mark


def fit(cfg: TrainConfig, env: distributed.DistEnv) -> dict:
    """Train ``cfg``'s run in this process (one rank) and report it (see :func:`run`)."""
    s = build_session(cfg, env)
    timing = resolve_timing(cfg.timing, env.device)
    _announce(s, timing)
    loaded = _resume(s)
    progress = loaded.progress if loaded is not None else checkpoint.Progress()
    clock = make_clock(timing, env.device, (lambda: distributed.barrier(env)) if env.distributed else None)
    ckpt = Checkpointer(s, clock, progress)
    st = LoopState(start_step=progress.step, warm_steps=_warm_steps(cfg, s.total_steps, progress.step),
                   done=progress.step, epochs_run=progress.epoch, train_size=s.lcfg.image_size)
    steplog = StepLog(cfg.log_jsonl if env.is_main else None, cfg.log_every, s.global_batch, clock.data,
                      clock.compute, lambda: progress.epoch, lambda: s.optimizer.param_groups[0]["lr"], st.start_step)
    timed_step, mark = _wrap_step(s, clock, st, ckpt, steplog)
    s.monitor = start_monitor(env.device)
    distributed.barrier(env)
    clock.sync()
    st.loop_start = time.perf_counter()
    if st.warm_steps == 0:
        mark()
    states = loaded.loader_states if loaded is not None else None
    for epoch in range(progress.epoch, cfg.epochs):
        if not _run_epoch(s, clock, st, ckpt, timed_step, epoch, states if epoch == progress.epoch else None):
            break
    clock.sync()
    st.loop_s = time.perf_counter() - st.loop_start
    if not st.marks:  # stopped before the warm-up ended: every step is measured
        st.marks.append(Mark(st.loop_start, 0.0, 0.0, 0.0, 0.0))
        st.warm_steps = 0
    steplog.close()
    excluded_s = clock.excluded  # checkpoint writes + resume replay inside the loop
    if cfg.checkpoint.dir is not None and (not ckpt.steps or ckpt.steps[-1] != st.done):
        ckpt.save()  # always one at the end of the run (outside the loop time)
    return _report(s, clock, st, ckpt, loaded, excluded_s)


# --- the report ------------------------------------------------------------------------------------------------

def _close_and_stop(s: Session) -> tuple[MemoryUse, float]:
    """Peak memory, then stop loader workers (so e2e_time includes their shutdown); returns (memory, e2e)."""
    mem = peak_memory(s.env.device, s.monitor)
    for loader in (s.train_loader, s.val_loader):
        if loader is not None:
            loader.close()
    return mem, time.time() - process_start_time()


def _config_name(env: distributed.DistEnv) -> str:
    per_node = distributed.local_world_size()  # FlagPerf's "<nodes>x<procs per node>"
    return f"{'CUDA' if env.device.type == 'cuda' else 'CPU'}x{max(1, env.world_size // per_node)}x{per_node}"


def _times(s: Session, clock: RunClock, st: LoopState, e2e: float, excluded_s: float) -> tuple[RunTimes, RunTimes]:
    """(this rank's measured times, their maxima over ranks)."""
    w = st.marks[0]  # measured part: from the end of warm-up to the end of the loop
    # checkpoint writes and the resume replay after warm-up are taken out of the loop time (reported apart)
    local = RunTimes(e2e=e2e, loop=st.loop_start + st.loop_s - w.time - (excluded_s - w.excluded),
                     eval=clock.eval.total - w.eval, compute=clock.compute.total - w.compute,
                     data=clock.data.total - w.data)
    maxes = distributed.all_reduce([local.e2e, local.loop, local.eval, local.compute, local.data], "max", s.env)
    return local, RunTimes(*maxes)


def _report(s: Session, clock: RunClock, st: LoopState, ckpt: Checkpointer, loaded, excluded_s: float) -> dict:
    env = s.env
    mem, e2e = _close_and_stop(s)
    skipped = [*s.train_loader.stats().skipped, *(s.val_loader.stats().skipped if s.val_loader else ())]
    local, times = _times(s, clock, st, e2e, excluded_s)
    mem_used, steps_max, neg_min = distributed.all_reduce([mem.used_gib, st.done, -st.done], "max", env)
    (skipped_total,) = distributed.all_reduce([float(len(skipped))], "sum", env)
    trained_images = (st.done - st.start_step - st.warm_steps) * s.global_batch  # this process's measured steps
    metrics = flagperf_metrics(trained_images, times, st.last_eval.acc1 if st.last_eval else None,
                               dataclasses.replace(mem, used_gib=mem_used))
    wait_fraction = times.data / max(times.loop - times.eval, 1e-9)
    verdict = run_verdict(metrics.p_core, metrics.p_train, wait_fraction, s.train_loader, s.lcfg.workers)
    fix_hp = f"bs={s.lcfg.batch_size},lr={s.peak_lr:g}"
    result = {
        **metrics.to_json(),
        **_eval_json(st.last_eval, s.val_loader),
        "steps": st.done,
        "ema_acc1": st.ema_eval.acc1 if st.ema_eval is not None else None,
        "target_acc1": s.cfg.target_acc1,
        "target_reached_epoch": st.target_reached,
        "final_train_image_size": st.train_size,
        "channels_last": s.cfg.channels_last,
        "compile": s.cfg.compile,
        "resumed_from_step": st.start_step,  # 0 = a fresh run; steps counts the whole run, resumed part included
        "resumed_from": str(loaded.path) if loaded is not None else None,
        "checkpoint_s": clock.checkpoint.total,  # rank 0's checkpoint writes + barriers, left out of p_*
        "resume_skip_s": clock.resume_skip.total,  # positioning the resumed epoch's loader, left out of p_*
        "checkpoints_written": ckpt.saved,
        "warmup_steps": st.warm_steps,  # left out of p_whole / p_train / p_core
        "warmup_s_rank0": st.marks[0].time - st.loop_start,
        "total_trained_images": st.done * s.global_batch,  # trained_images (the p_* numerator) excludes warm-up
        "skipped_samples": int(skipped_total),  # failed to decode in the loader (all ranks); named on stderr
        "skipped_examples_rank0": skipped[:10],
        "rank_steps_min": int(-neg_min),
        "rank_steps_max": int(steps_max),
        "epochs": st.epochs_run,
        "timing": clock.timing.value,
        "device_syncs_rank0": clock.sync.count,  # device-wide syncs by the loop's clocks (events: per epoch)
        "data_wait_fraction": wait_fraction,
        "times_s": asdict(times),
        "rank0_times_s": asdict(local),
        "verdict": verdict.to_json(),
        "loader_stage_seconds_per_image_rank0": _stage_seconds_per_image(s.train_loader),
        **_run_json(s, mem, fix_hp),
    }
    if env.is_main:
        _print_summary(metrics, result, local, verdict)
        _write_json(s.cfg, result)
    return result


def _eval_json(ev: EvalResult | None, val_loader) -> dict:
    return {"acc5": ev.acc5 if ev is not None else None, "eval_images": ev.count if ev is not None else 0,
            "val_samples": val_loader.num_samples if val_loader is not None else 0}


def _run_json(s: Session, mem: MemoryUse, fix_hp: str) -> dict:
    """What ran where: sizes, precision, loader, device, memory detail, versions, FlagPerf labels."""
    return {"global_batch_size": s.global_batch, "world_size": s.env.world_size, "precision": s.precision.value,
            "loader": s.cfg.loader.value, "device": str(s.env.device), "device_name": s.device_name,
            "mem_kind": mem.kind, "mem_peak_allocated_gib_rank0": mem.allocated_gib,
            "mem_peak_reserved_gib_rank0": mem.reserved_gib, "mem_device_used_gib_nvml_rank0": mem.device_used_gib,
            "versions": s.versions, "config": _config_name(s.env), "fix_hp": fix_hp, "argv": sys.argv}


def _print_summary(metrics: FlagPerfMetrics, result: dict, t: RunTimes, verdict: Verdict) -> None:
    print(TABLE_HEADER)
    print(flagperf_row(metrics, result["config"], result["precision"], result["fix_hp"]))
    # one rank's own times add up; the metrics above use the maximum over ranks
    print(f"time split (s, rank 0): loop {t.loop:.1f} = train {t.loop - t.eval:.1f} (compute {t.compute:.1f}, "
          f"data wait {t.data:.1f}, other {t.loop - t.eval - t.compute - t.data:.1f}) + eval {t.eval:.1f}; "
          f"p_core/p_train = {metrics.p_core / metrics.p_train:.2f}; timing {result['timing']}")
    for line in verdict.lines:
        print(f"verdict: {line}")


def _write_json(cfg: TrainConfig, result: dict) -> None:
    if cfg.metrics_json is not None:
        cfg.metrics_json.parent.mkdir(parents=True, exist_ok=True)
        cfg.metrics_json.write_text(json.dumps(result, indent=1) + "\n")


def _stage_seconds_per_image(loader: Loader) -> dict[str, float] | None:
    """Per-image seconds by loader stage on one core (backends that time their stages), else None."""
    stages = loader.stats().stages
    return stages.per_image() if stages is not None else None


def run_verdict(p_core: float, p_train: float, data_wait_fraction: float, loader, workers: int) -> Verdict:
    """The I/O verdict of a finished run from its own timers (see :mod:`train.iobench.verdict`)."""
    cores = max(1, default_workers() // distributed.local_world_size())
    return decide(Evidence(compute_rate=p_core, input_rate=p_train, stage_seconds=_stage_seconds_per_image(loader),
                           workers=max(1, workers), cores=cores, data_wait_fraction=data_wait_fraction,
                           from_run=True))


# --- evaluation of a checkpoint --------------------------------------------------------------------------------

def _checkpoint_to_test(cfg: TrainConfig):
    ck = cfg.checkpoint
    path = ck.file if ck.file is not None else (checkpoint.latest_checkpoint(ck.dir) if ck.dir is not None else None)
    if path is None:
        where = f"--checkpoint-dir {ck.dir} holds none" if ck.dir is not None else "none given"
        raise ValueError(f"--test-only needs a checkpoint: {where}; pass --checkpoint FILE or the --checkpoint-dir "
                         f"a training run wrote")
    return path


def test_only(cfg: TrainConfig, env: distributed.DistEnv) -> dict:
    """Evaluate a checkpoint on the val split (every image once over all ranks): top-1 / top-5 and the FlagPerf row
    (no training: p_whole / p_train / p_core are ``/``). Returns the metrics dict (also ``cfg.metrics_json``).

    Raises:
        ValueError / CheckpointError: no checkpoint, or one of another model / class count.
    """
    path = _checkpoint_to_test(cfg)
    info = _dataset(cfg)
    lcfg = dataclasses.replace(cfg.loader_cfg, data_root=cfg.data)
    val_loader = _val_loader(cfg, lcfg, info, env)
    precision = resolve_precision(cfg.precision, env.device)
    model, _ = _build_model(dataclasses.replace(cfg, ema_decay=None), env, val_loader.num_classes, precision)
    loaded, ema_state = checkpoint.load_weights(path, model, val_loader.num_classes)
    ema = None
    if ema_state is not None:  # evaluate the checkpoint's EMA beside the model
        ema = ModelEma(model, float(ema_state.get("decay", 0.5)))
        ema.load_state_dict(ema_state)
    versions = software_versions()
    monitor = start_monitor(env.device)
    sync = make_clock(resolve_timing(cfg.timing, env.device), env.device).sync
    sync()
    t0 = time.perf_counter()
    result = evaluate(model, val_loader, precision, env)
    sync()
    eval_s = time.perf_counter() - t0  # the model's pass only (eval_img_per_s); the EMA's comes after
    ema_result = evaluate(ema.module, val_loader, precision, env) if ema is not None else None
    mem = peak_memory(env.device, monitor)
    val_loader.close()
    e2e = time.time() - process_start_time()
    metrics = FlagPerfMetrics(e2e, None, None, None, result.acc1, mem.used_gib, mem.total_gib, 0)
    out = {**metrics.to_json(), **_eval_json(result, val_loader), "test_only": True, "checkpoint": str(path),
           "checkpoint_step": loaded.progress.step, "ema_acc1": ema_result.acc1 if ema_result else None,
           "eval_s": eval_s, "eval_img_per_s": result.count / max(eval_s, 1e-9), "world_size": env.world_size,
           "precision": precision.value, "loader": cfg.loader.value, "device": str(env.device),
           "device_name": _device_name(env.device), "mem_kind": mem.kind, "versions": versions,
           "config": _config_name(env), "fix_hp": f"bs={lcfg.batch_size},test-only", "argv": sys.argv}
    if env.is_main:
        print(f"test: {path} (step {loaded.progress.step}): val top-1 {result.acc1:.2f}% top-5 {result.acc5:.2f}% on "
              f"{result.count} images" + (f", EMA top-1 {ema_result.acc1:.2f}%" if ema_result else "")
              + f", {out['eval_img_per_s']:.1f} img/s")
        print(TABLE_HEADER)
        print(flagperf_row(metrics, out["config"], precision.value, out["fix_hp"]))
        _write_json(cfg, out)
    return out
