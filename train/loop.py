"""The measured training loop: train epochs, evaluate after each, report FlagPerf metrics.

The loop body has no timers: the train iterator is wrapped by :func:`train.timing.timed_iter` (data
wait, host→device copy included) and the step by :func:`train.timing.timed_call` (compute, device
synchronised). Loss is accumulated on the device and read once per epoch (no ``.item()`` per step).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch.nn.parallel import DistributedDataParallel

from pipeline.backends import Batch, Loader, LoaderKind, Split, build_loader
from pipeline.info import DatasetInfo, load_info
from pipeline.sharding import default_workers
from train import checkpoint, distributed
from train.config import TrainConfig
from train.metrics import (TABLE_HEADER, MemoryUse, RunTimes, flagperf_metrics, flagperf_row, peak_memory,
                           process_start_time)
from train.model import build_resnet50
from train.precision import Precision, autocast, make_grad_scaler, model_dtype, resolve_precision, set_tf32
from train.recipe import build_ema, build_scheduler, parameter_groups
from train.steplog import StepLog
from train.timing import Mark, Stopwatch, after_calls, device_sync, timed_call, timed_iter
from train.verdict import Evidence, Verdict, decide


@dataclass
class TrainStep:
    """One optimisation step on a device batch: forward (autocast), loss, backward, SGD, LR schedule.

    Calling it returns the detached scalar loss (a device tensor: no host synchronisation).
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: torch.nn.Module
    precision: Precision
    device: torch.device
    scaler: torch.amp.GradScaler | None = None
    ema: torch.optim.swa_utils.AveragedModel | None = None
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
            self.ema.update_parameters(self.raw_model)
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
    """Train and evaluate as ``cfg`` says; return the metrics dict (also written to ``cfg.metrics_json``).

    Raises:
        pipeline.info.DatasetError: ``cfg.data`` is not a usable shard folder.
        ValueError: options that cannot work (e.g. a batch larger than the train split allows).
    """
    env = distributed.init_distributed()
    try:
        return _run(cfg, env)
    finally:
        distributed.shutdown(env)


def _run(cfg: TrainConfig, env: distributed.DistEnv) -> dict:
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts them)
    reads_shards = cfg.loader not in (LoaderKind.SYNTHETIC, LoaderKind.FOLDER)
    info: DatasetInfo | None = (load_info(cfg.data) if cfg.data is not None and cfg.loader is not LoaderKind.FOLDER
                                else None)
    if info is None and reads_shards:
        raise ValueError(f"--loader {cfg.loader.value} needs --data DIR (a folder written by shard-imagenet)")
    lcfg = dataclasses.replace(cfg.loader_cfg, data_root=cfg.data)
    train_loader = build_loader(cfg.loader, lcfg, Split.TRAIN, info, env.device, env.rank, env.world_size)
    val_cfg = dataclasses.replace(lcfg, image_size=cfg.resolution.eval) if cfg.resolution is not None else lcfg
    val_loader = (build_loader(cfg.loader, val_cfg, Split.VAL, info, env.device, env.rank, env.world_size)
                  if cfg.eval else None)
    num_classes = train_loader.num_classes

    precision = resolve_precision(cfg.precision, env.device)
    if env.device.type == "cuda":
        set_tf32(cfg.tf32)
    model = build_resnet50(num_classes, env.device, cfg.zero_init_residual, model_dtype(precision), cfg.channels_last)
    ema = build_ema(model, cfg.ema_decay) if cfg.ema_decay is not None else None
    ddp_model = (DistributedDataParallel(model, device_ids=[env.device] if env.device.type == "cuda" else None)
                 if env.distributed else model)
    if cfg.compile:  # compile time lands in the first steps, which the warm-up leaves out of p_*
        ddp_model = torch.compile(ddp_model)
    global_batch = lcfg.batch_size * env.world_size
    peak_lr = cfg.optim.peak_lr(global_batch)
    o = cfg.optim
    optimizer = torch.optim.SGD(parameter_groups(model, o.weight_decay, o.decay_bn_and_bias), lr=peak_lr,
                                momentum=o.momentum, nesterov=o.nesterov)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    warmup_steps = min(total_steps, round(cfg.optim.warmup_epochs * steps_per_epoch))
    scheduler = build_scheduler(optimizer, warmup_steps, total_steps, o.schedule,
                                tuple(m * steps_per_epoch for m in o.milestones), o.gamma)
    step = TrainStep(ddp_model, optimizer, scheduler,
                     torch.nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing),
                     precision, env.device, make_grad_scaler(precision, env.device), ema, model, cfg.channels_last)

    device_name = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else platform.processor() or "cpu"
    _log(env, f"train: {cfg.loader.value} loader, {cfg.data if cfg.data is not None else 'synthetic data'}, "
              f"{num_classes} classes, device {env.device} ({device_name}), world size {env.world_size}, "
              f"precision {precision.value}, batch {lcfg.batch_size}/rank (global {global_batch}), "
              f"image {lcfg.image_size}px, lr {peak_lr:g}, {steps_per_epoch} steps/epoch, {total_steps} steps")

    ck = cfg.checkpoint
    header = checkpoint.Header(num_classes=num_classes, world_size=env.world_size, global_batch=global_batch,
                               image_size=lcfg.image_size, precision=precision.value, total_steps=total_steps)
    progress = checkpoint.Progress()  # advanced by every step (checkpoint.every_n_steps), saved in checkpoints
    resumed_from: str | None = None
    if ck.resume and ck.dir is not None:
        found = checkpoint.latest_checkpoint(ck.dir)
        if found is None:
            _log(env, f"resume: no checkpoint in {ck.dir}: starting from step 0")
        else:  # every rank loads (onto its own device): same weights, optimizer, schedule and RNG everywhere
            loaded = checkpoint.load_checkpoint(found, header, model, optimizer, scheduler, step.scaler, ema=ema,
                                                map_location=env.device)
            progress, resumed_from = loaded.progress, str(found)
            if progress.step >= total_steps:
                raise ValueError(f"checkpoint {found} is at step {progress.step}: this run of {total_steps} steps "
                                 f"is already complete; nothing to resume (drop --resume or use another "
                                 f"--checkpoint-dir to train again)")
            if progress.epoch_step >= steps_per_epoch:  # saved at an epoch's end: the next epoch starts afresh
                progress.epoch, progress.epoch_step = progress.epoch + 1, 0
            _log(env, f"resume: {found} at step {progress.step}/{total_steps} (epoch {progress.epoch + 1}, "
                      f"{progress.epoch_step} batches into it: replayed through the loader without training)")
    start_step = progress.step

    sync = device_sync(env.device)
    # Under DDP a step's gradient all-reduce waits for the slowest rank's batch. A barrier when the batch
    # has arrived puts that wait into data wait, so compute (p_core) holds no other rank's loading time.
    data_ready = (lambda: (sync(), distributed.barrier(env), sync())) if env.distributed else sync
    data_sw, compute_sw, eval_sw = Stopwatch(), Stopwatch(), Stopwatch()
    # checkpoint writes and the resume replay of already-trained batches: timed apart, left out of p_*
    ckpt_sw, skip_sw = Stopwatch(), Stopwatch()
    # a resumed process measures its own steps: its warm-up is its own start-up
    warm_steps = min(cfg.resolved_warmup_steps(total_steps), total_steps - start_step - 1)
    if cfg.compile and warm_steps == 0 and total_steps - start_step > 1:
        warm_steps = 1  # the first compiled step holds the compilation: never in p_*
    marks: list[Mark] = []
    excluded_at_mark: list[float] = []

    def mark() -> None:  # clocks at the end of warm-up: p_* count what follows
        marks.append(Mark(time.perf_counter(), data_sw.total, compute_sw.total, eval_sw.total))
        excluded_at_mark.append(ckpt_sw.total + skip_sw.total)

    saved: list[str] = []

    def save() -> None:  # rank 0 writes (atomically); every rank waits until the file is complete
        with ckpt_sw.timing(sync):
            if env.is_main:
                saved.append(str(checkpoint.save_checkpoint(ck.dir, header, progress, model, optimizer, scheduler,
                                                            step.scaler, keep=ck.keep, ema=ema)))
            distributed.barrier(env)
        saved_steps.append(progress.step)

    saved_steps: list[int] = []
    timed_step = checkpoint.every_n_steps(after_calls(timed_call(step, compute_sw, sync), warm_steps, mark), progress,
                                          ck.every if ck.dir is not None else None, save)
    steplog = StepLog(cfg.log_jsonl if env.is_main else None, cfg.log_every, global_batch, data_sw, compute_sw,
                      lambda: progress.epoch, lambda: optimizer.param_groups[0]["lr"], start_step)
    timed_step = steplog.wrap(timed_step)  # one JSON line per --log-every steps (one .item() per window)
    last_eval: EvalResult | None = None
    ema_eval: EvalResult | None = None
    target_reached: int | None = None
    train_size = lcfg.image_size
    done = start_step
    epochs_run = progress.epoch
    distributed.barrier(env)
    sync()
    loop_start = time.perf_counter()
    if warm_steps == 0:
        mark()
    for epoch in range(progress.epoch, cfg.epochs):
        skip = progress.epoch_step if epoch == progress.epoch else 0  # resume: batches trained before the restart
        n = min(steps_per_epoch, total_steps - done + skip) - skip  # steps to run in this epoch
        if n <= 0:
            break
        if cfg.resolution is not None and cfg.resolution.train_size(epoch) != train_size:
            train_size = cfg.resolution.train_size(epoch)  # progressive resizing: a loader at the new size
            train_loader = build_loader(cfg.loader, dataclasses.replace(lcfg, image_size=train_size), Split.TRAIN,
                                        info, env.device, env.rank, env.world_size)
        train_loader.set_epoch(epoch)
        progress.epoch, progress.epoch_step = epoch, skip
        epoch_start = time.perf_counter()
        data_before, compute_before = data_sw.total, compute_sw.total
        excluded_before = ckpt_sw.total + skip_sw.total
        loss_sum = torch.zeros((), device=env.device)
        with skip_sw.timing(sync):  # the data order depends on (seed, epoch, rank, worker) only: replay to position
            batches = checkpoint.skip_batches(train_loader, skip) if n > 0 else train_loader
        for batch in timed_iter(batches, data_sw, n, data_ready):
            loss_sum += timed_step(batch)
        done += n
        epochs_run += 1
        epoch_train_s = time.perf_counter() - epoch_start - (ckpt_sw.total + skip_sw.total - excluded_before)
        if val_loader is not None:
            val_loader.set_epoch(epoch)
            with eval_sw.timing(sync):
                last_eval = evaluate(model, val_loader, precision, env)
                if ema is not None:
                    ema_eval = evaluate(ema.module, val_loader, precision, env)
        wait = data_sw.total - data_before
        if n > 0 and not math.isfinite(loss_sum.item()):  # one host sync per epoch, which the log line needs anyway
            raise ValueError(f"the training loss became {loss_sum.item()} in epoch {epoch + 1} (diverged): lower --lr "
                             f"(now {peak_lr:g} peak), raise --warmup-epochs, or use --precision amp/bf16 instead "
                             f"of fp16")
        if ck.dir is not None and ck.every is None and done < total_steps:  # default: a checkpoint per epoch
            progress.epoch, progress.epoch_step = epoch + 1, 0  # after the eval: a resume starts the next epoch
            save()
        _log(env, f"epoch {epoch + 1}/{cfg.epochs}: steps {done}/{total_steps}, loss {loss_sum.item() / max(n, 1):.4f}"
                  + (f" (over the {n} steps since the resume)" if skip else "")
                  + (f", train size {train_size}px" if cfg.resolution is not None else "") + ", "
                  f"train {n * global_batch / epoch_train_s:.1f} img/s (data wait {100 * wait / epoch_train_s:.0f}%, "
                  f"compute {n * global_batch / max(compute_sw.total - compute_before, 1e-9):.1f} img/s)"
                  + (f", val top-1 {last_eval.acc1:.2f}% top-5 {last_eval.acc5:.2f}% on {last_eval.count} images"
                     if last_eval is not None else "")
                  + (f", EMA top-1 {ema_eval.acc1:.2f}%" if ema_eval is not None else ""))
        if cfg.target_acc1 is not None and last_eval is not None and last_eval.acc1 >= cfg.target_acc1:
            target_reached = epoch + 1
            _log(env, f"target top-1 {cfg.target_acc1}% reached after epoch {epoch + 1}: stopping")
            break
    sync()
    loop_s = time.perf_counter() - loop_start
    steplog.close()
    excluded_s = ckpt_sw.total + skip_sw.total  # checkpoint writes + resume replay inside the loop
    if ck.dir is not None and (not saved_steps or saved_steps[-1] != done):
        save()  # always one at the end of the run (outside the loop time)

    mem = peak_memory(env.device)
    for loader in (train_loader, val_loader):  # stop loader workers now, so e2e_time includes their shutdown
        close = getattr(loader, "close", None)
        if close is not None:
            close()
    e2e = time.time() - process_start_time()
    skipped = [*getattr(train_loader, "skipped", []), *getattr(val_loader, "skipped", [])]
    (skipped_total,) = distributed.all_reduce([float(len(skipped))], "sum", env)
    w = marks[0]  # measured part: from the end of warm-up to the end of the loop
    # p_whole / p_train divide by loop time: checkpoint writes and the resume replay after warm-up are taken out
    # of it (reported as checkpoint_s / resume_skip_s), so saving does not lower the throughput figures
    local = RunTimes(e2e=e2e, loop=loop_start + loop_s - w.time - (excluded_s - excluded_at_mark[0]),
                     eval=eval_sw.total - w.eval,
                     compute=compute_sw.total - w.compute, data=data_sw.total - w.data)
    warmup_s = w.time - loop_start
    *maxes, mem_used, steps_max, neg_steps_min = distributed.all_reduce(
        [local.e2e, local.loop, local.eval, local.compute, local.data, mem.used_gib, done, -done], "max", env)
    times = RunTimes(*maxes)
    trained_images = (done - start_step - warm_steps) * global_batch  # this process's measured steps
    acc1 = last_eval.acc1 if last_eval is not None else None
    metrics = flagperf_metrics(trained_images, times, acc1, MemoryUse(mem_used, mem.total_gib, mem.kind))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # FlagPerf's "<nodes>x<procs per node>"
    config_name = f"{'CUDA' if env.device.type == 'cuda' else 'CPU'}x{env.world_size // per_node}x{per_node}"
    fix_hp = f"bs={lcfg.batch_size},lr={peak_lr:g}"
    verdict = run_verdict(metrics.p_core, metrics.p_train, times.data / max(times.loop - times.eval, 1e-9),
                          train_loader, lcfg.workers)
    result = {
        **metrics.to_json(),
        "acc5": last_eval.acc5 if last_eval is not None else None,
        "eval_images": last_eval.count if last_eval is not None else 0,
        "val_samples": val_loader.num_samples if val_loader is not None else 0,
        "steps": done,
        "ema_acc1": ema_eval.acc1 if ema_eval is not None else None,
        "target_acc1": cfg.target_acc1,
        "target_reached_epoch": target_reached,
        "final_train_image_size": train_size,
        "channels_last": cfg.channels_last,
        "compile": cfg.compile,
        "resumed_from_step": start_step,  # 0 = a fresh run; steps counts the whole run, resumed part included
        "resumed_from": resumed_from,
        "checkpoint_s": ckpt_sw.total,  # rank 0's checkpoint writes + barriers, left out of p_*
        "resume_skip_s": skip_sw.total,  # replaying the resumed epoch's trained batches, left out of p_*
        "checkpoints_written": saved,
        "warmup_steps": warm_steps,  # left out of p_whole / p_train / p_core
        "warmup_s_rank0": warmup_s,
        "total_trained_images": done * global_batch,  # trained_images (the p_* numerator) excludes warm-up
        "skipped_samples": int(skipped_total),  # failed to decode in the loader (all ranks); named on stderr
        "skipped_examples_rank0": skipped[:10],
        "rank_steps_min": int(-neg_steps_min),
        "rank_steps_max": int(steps_max),
        "epochs": epochs_run,
        "global_batch_size": global_batch,
        "world_size": env.world_size,
        "precision": precision.value,
        "loader": cfg.loader.value,
        "device": str(env.device),
        "device_name": device_name,
        "mem_kind": mem.kind,
        "mem_peak_allocated_gib_rank0": mem.allocated_gib,
        "mem_peak_reserved_gib_rank0": mem.reserved_gib,
        "mem_device_used_gib_nvml_rank0": mem.device_used_gib,
        "times_s": asdict(times),
        "data_wait_fraction": times.data / max(times.loop - times.eval, 1e-9),
        "rank0_times_s": asdict(local),
        "verdict": verdict.to_json(),
        "loader_stage_seconds_per_image_rank0": _stage_seconds_per_image(train_loader),
        "config": config_name,
        "fix_hp": fix_hp,
        "argv": sys.argv,
    }
    if env.is_main:
        print(TABLE_HEADER)
        print(flagperf_row(metrics, config_name, precision.value, fix_hp))
        t = local  # one rank's own times add up; the metrics above use the maximum over ranks
        print(f"time split (s, rank 0): loop {t.loop:.1f} = train {t.loop - t.eval:.1f} (compute {t.compute:.1f}, "
              f"data wait {t.data:.1f}, other {t.loop - t.eval - t.compute - t.data:.1f}) + eval {t.eval:.1f}; "
              f"p_core/p_train = {metrics.p_core / metrics.p_train:.2f}")
        for line in verdict.lines:
            print(f"verdict: {line}")
        if cfg.metrics_json is not None:
            cfg.metrics_json.parent.mkdir(parents=True, exist_ok=True)
            cfg.metrics_json.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _stage_seconds_per_image(loader) -> dict[str, float] | None:
    """Per-image seconds by loader stage on one core (backends that time their stages), else None."""
    n = getattr(loader, "stage_samples", 0)
    return {k: v / n for k, v in loader.stage_seconds.items()} if n else None


def run_verdict(p_core: float, p_train: float, data_wait_fraction: float, loader, workers: int) -> Verdict:
    """The I/O verdict of a finished run from its own timers (see :mod:`train.verdict`)."""
    cores = max(1, default_workers() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return decide(Evidence(compute_rate=p_core, input_rate=p_train, stage_seconds=_stage_seconds_per_image(loader),
                           workers=max(1, workers), cores=cores, data_wait_fraction=data_wait_fraction,
                           from_run=True))
