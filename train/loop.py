"""The measured training loop: train epochs, evaluate after each, report FlagPerf metrics.

The loop body has no timers: the train iterator is wrapped by :func:`train.timing.timed_iter` (data
wait, host→device copy included) and the step by :func:`train.timing.timed_call` (compute, device
synchronised). Loss is accumulated on the device and read once per epoch (no ``.item()`` per step).
"""

from __future__ import annotations

import dataclasses
import json
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
from train import distributed
from train.config import TrainConfig
from train.metrics import (TABLE_HEADER, MemoryUse, RunTimes, flagperf_metrics, flagperf_row, peak_memory,
                           process_start_time)
from train.model import build_resnet50
from train.precision import Precision, autocast, make_grad_scaler, resolve_precision
from train.schedule import warmup_cosine
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

    def __call__(self, batch: Batch) -> torch.Tensor:
        with autocast(self.precision, self.device):
            loss = self.criterion(self.model(batch.images), batch.labels)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()
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
            with autocast(precision, env.device):
                logits = model(batch.images)
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
    val_loader = (build_loader(cfg.loader, lcfg, Split.VAL, info, env.device, env.rank, env.world_size)
                  if cfg.eval else None)
    num_classes = train_loader.num_classes

    precision = resolve_precision(cfg.precision, env.device)
    model = build_resnet50(num_classes, env.device)
    ddp_model = (DistributedDataParallel(model, device_ids=[env.device] if env.device.type == "cuda" else None)
                 if env.distributed else model)
    global_batch = lcfg.batch_size * env.world_size
    peak_lr = cfg.optim.peak_lr(global_batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=peak_lr, momentum=cfg.optim.momentum,
                                weight_decay=cfg.optim.weight_decay)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    warmup_steps = min(total_steps, round(cfg.optim.warmup_epochs * steps_per_epoch))
    scheduler = warmup_cosine(optimizer, warmup_steps, total_steps)
    step = TrainStep(ddp_model, optimizer, scheduler,
                     torch.nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing),
                     precision, env.device, make_grad_scaler(precision, env.device))

    device_name = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else platform.processor() or "cpu"
    _log(env, f"train: {cfg.loader.value} loader, {cfg.data if cfg.data is not None else 'synthetic data'}, "
              f"{num_classes} classes, device {env.device} ({device_name}), world size {env.world_size}, "
              f"precision {precision.value}, batch {lcfg.batch_size}/rank (global {global_batch}), "
              f"image {lcfg.image_size}px, lr {peak_lr:g}, {steps_per_epoch} steps/epoch, {total_steps} steps")

    sync = device_sync(env.device)
    # Under DDP a step's gradient all-reduce waits for the slowest rank's batch. A barrier when the batch
    # has arrived puts that wait into data wait, so compute (p_core) holds no other rank's loading time.
    data_ready = (lambda: (sync(), distributed.barrier(env), sync())) if env.distributed else sync
    data_sw, compute_sw, eval_sw = Stopwatch(), Stopwatch(), Stopwatch()
    warm_steps = cfg.resolved_warmup_steps(total_steps)
    marks: list[Mark] = []

    def mark() -> None:  # clocks at the end of warm-up: p_* count what follows
        marks.append(Mark(time.perf_counter(), data_sw.total, compute_sw.total, eval_sw.total))

    timed_step = after_calls(timed_call(step, compute_sw, sync), warm_steps, mark)
    last_eval: EvalResult | None = None
    done = 0
    epochs_run = 0
    distributed.barrier(env)
    sync()
    loop_start = time.perf_counter()
    if warm_steps == 0:
        mark()
    for epoch in range(cfg.epochs):
        n = min(steps_per_epoch, total_steps - done)
        if n <= 0:
            break
        train_loader.set_epoch(epoch)
        epoch_start = time.perf_counter()
        data_before, compute_before = data_sw.total, compute_sw.total
        loss_sum = torch.zeros((), device=env.device)
        for batch in timed_iter(train_loader, data_sw, n, data_ready):
            loss_sum += timed_step(batch)
        done += n
        epochs_run += 1
        epoch_train_s = time.perf_counter() - epoch_start
        if val_loader is not None:
            val_loader.set_epoch(epoch)
            with eval_sw.timing(sync):
                last_eval = evaluate(model, val_loader, precision, env)
        wait = data_sw.total - data_before
        _log(env, f"epoch {epoch + 1}/{cfg.epochs}: steps {done}/{total_steps}, loss {loss_sum.item() / n:.4f}, "
                  f"train {n * global_batch / epoch_train_s:.1f} img/s (data wait {100 * wait / epoch_train_s:.0f}%, "
                  f"compute {n * global_batch / max(compute_sw.total - compute_before, 1e-9):.1f} img/s)"
                  + (f", val top-1 {last_eval.acc1:.2f}% top-5 {last_eval.acc5:.2f}% on {last_eval.count} images"
                     if last_eval is not None else ""))
    sync()
    loop_s = time.perf_counter() - loop_start

    mem = peak_memory(env.device)
    e2e = time.time() - process_start_time()
    skipped = [*getattr(train_loader, "skipped", []), *getattr(val_loader, "skipped", [])]
    (skipped_total,) = distributed.all_reduce([float(len(skipped))], "sum", env)
    w = marks[0]  # measured part: from the end of warm-up to the end of the loop
    local = RunTimes(e2e=e2e, loop=loop_start + loop_s - w.time, eval=eval_sw.total - w.eval,
                     compute=compute_sw.total - w.compute, data=data_sw.total - w.data)
    warmup_s = w.time - loop_start
    *maxes, mem_used, steps_max, neg_steps_min = distributed.all_reduce(
        [local.e2e, local.loop, local.eval, local.compute, local.data, mem.used_gib, done, -done], "max", env)
    times = RunTimes(*maxes)
    trained_images = (done - warm_steps) * global_batch
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
