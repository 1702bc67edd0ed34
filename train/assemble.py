"""The :class:`train.report.RunReport` of a finished run, assembled: :func:`train_report` reads a finished
:class:`train.trainer.Trainer` (the steady figures from the times after warm-up, max over ranks; FlagPerf's from
every step, rank 0's), :func:`test_report` a ``--test-only`` pass (:class:`train.loop.CheckpointEval`). The parts
they share: :func:`placement`, :func:`eval_counts`, :func:`dataset_summary`, :func:`origin`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from pipeline.backends import Loader, StageSeconds, SyntheticConfig
from pipeline.compat import SgdImpl
from pipeline.dataset import REPORT_FILE
from train import accelerator, distributed
from train.build import Session
from train.config import TrainConfig, config_json
from train.environment import collect, manifest_sha256, run_identity
from train.clock import process_start_time
from train.loop import CheckpointEval, EvalResult
from train.metrics import FlagPerfFigures, FlagPerfTimes, RunTimes, SteadyFigures, flagperf_figures, steady_figures
from train.precision import METAX_TF32_ENV, PAGE_LABEL, Precision, autocast_dtype, cudnn_state, model_dtype, tf32_state
from train.report import (CheckpointTest, Checkpointing, DatasetSummary, EvalCounts, Labels, MeasuredTimes,
                          MemoryDetail, Numerics, Origin, Placement, RunReport, Software, Training, config_label,
                          run_verdict)
from train.trainer import RunEnd, Trainer


def train_report(trainer: Trainer) -> RunReport:
    """Stop the loaders and report the finished run ``trainer`` (every rank calls it: maxima and sums over ranks
    are gathered here)."""
    session, state = trainer.session, trainer.state
    end = trainer.finish()
    local, times = _times(trainer, end.e2e_s)
    (mem_used,) = distributed.all_reduce([end.memory.used_gib], "max", session.env)
    trained_images = (state.done - state.start_step - state.warm_steps) * session.global_batch  # measured steps
    steady = steady_figures(trained_images, times, state.last_eval.acc1 if state.last_eval else None,
                            dataclasses.replace(end.memory, used_gib=mem_used))
    measured = MeasuredTimes.of(trainer.clock.timing.value, trainer.clock.sync.count, times, local,
                                trainer.clock.device_step_times)
    cfg, env, loader = session.cfg, session.env, trainer.train_loader
    return RunReport(steady, eval_counts(state.last_eval, session.val_loader), _training(trainer, steady, measured),
                     None, placement(cfg, env, session.precision, session.device_name),
                     MemoryDetail.of(end.memory, with_peaks=True), Software(session.versions),
                     Labels(config_label(env), f"bs={session.lcfg.batch_size},lr={session.peak_lr:g}",
                            tuple(sys.argv)), origin(env, session.versions), _flagperf(trainer, end),
                     numerics(session), dataset_summary(cfg, session.info, loader, session.val_loader,
                                                        loader.num_classes), config_json(cfg))


def test_report(cfg: TrainConfig, env: distributed.DistEnv, checked: CheckpointEval,
                run_start: float | None = None) -> RunReport:
    """The report of a ``--test-only`` pass: top-1 / top-5 and the FlagPerf row (no training: p_whole / p_train /
    p_core are ``/``)."""
    tested, result, mem = checked.tested, checked.result, checked.memory
    ema = checked.ema_result
    test = CheckpointTest(str(tested.path), tested.loaded.position.step, ema.acc1 if ema else None, checked.eval_s,
                          result.count / max(checked.eval_s, 1e-9))
    flagperf = FlagPerfFigures(time.time() - (run_start if run_start is not None else process_start_time()), None,
                               None, None, result.batch_mean_acc1, 0, None, None, "none")
    val = tested.val_loader
    return RunReport(SteadyFigures(checked.e2e_s, None, None, None, result.acc1, mem.used_gib, mem.total_gib, 0),
                     eval_counts(result, val), None, test, placement(cfg, env, tested.precision, tested.device_name),
                     MemoryDetail.of(mem, with_peaks=False), Software(tested.versions),
                     Labels(config_label(env), f"bs={tested.lcfg.batch_size},test-only", tuple(sys.argv)),
                     origin(env, tested.versions), flagperf, None,
                     dataset_summary(cfg, None, None, val, val.num_classes), config_json(cfg))


# --- the parts -------------------------------------------------------------------------------------------------

def _times(trainer: Trainer, e2e: float) -> tuple[RunTimes, RunTimes]:
    """(this rank's measured times, their maxima over ranks), in s."""
    clock, state = trainer.clock, trainer.state
    warm = state.marks[0]  # measured part: from the end of warm-up to the end of the loop
    # checkpoint writes and the resume replay after warm-up are taken out of the loop time (reported apart)
    local = RunTimes(e2e=e2e, loop=state.loop_start + state.loop_s - warm.time - (state.excluded_s - warm.excluded),
                     eval=clock.eval.total - warm.eval, compute=clock.compute.total - warm.compute,
                     data=clock.data.total - warm.data)
    maxes = distributed.all_reduce([local.e2e, local.loop, local.eval, local.compute, local.data], "max",
                                   trainer.session.env)
    return local, RunTimes(*maxes)


def eval_counts(result: EvalResult | None, val_loader: Loader | None) -> EvalCounts:
    """Top-5 and the images of the last evaluation (none: None and 0) beside the val split's size."""
    return EvalCounts(result.acc5 if result is not None else None, result.count if result is not None else 0,
                      val_loader.num_samples if val_loader is not None else 0)


def stage_seconds_per_image(loader: Loader) -> StageSeconds | None:
    """Per-image seconds by loader stage on one core (backends that time their stages), else None."""
    stages = loader.stats().stages
    return stages.per_image() if stages is not None else None


def _training(trainer: Trainer, steady: SteadyFigures, measured: MeasuredTimes) -> Training:
    """The training part of the report; every rank's step counts and skipped samples are gathered here."""
    session, state, clock, env = trainer.session, trainer.state, trainer.clock, trainer.session.env
    val, ckpt, loaded = session.val_loader, trainer.checkpointer, trainer.loaded
    skipped = (*trainer.train_loader.stats().skipped, *(val.stats().skipped if val else ()))
    steps_max, neg_min = distributed.all_reduce([state.done, -state.done], "max", env)
    (skipped_total,) = distributed.all_reduce([float(len(skipped))], "sum", env)
    stages = stage_seconds_per_image(trainer.train_loader)
    resumed = Checkpointing(state.start_step, str(loaded.path) if loaded is not None else None,
                            clock.checkpoint.total, clock.resume_skip.total, tuple(ckpt.saved))
    cfg, sgd = session.cfg, session.sgd_impl
    return Training(
        steps=state.done, ema_acc1=state.ema_eval.acc1 if state.ema_eval is not None else None,
        target_acc1=cfg.target_acc1, target_reached_epoch=state.target_reached,
        final_train_image_size=state.train_size, channels_last=cfg.channels_last, compile=cfg.compile,
        optimizer_impl=sgd, grad_scaler_syncs_per_step=session.scaler is not None and sgd != SgdImpl.FUSED,
        checkpointing=resumed, warmup_steps=state.warm_steps, warmup_s_rank0=state.marks[0].time - state.loop_start,
        total_trained_images=state.done * session.global_batch, skipped_samples=int(skipped_total),
        skipped_examples_rank0=tuple(skipped[:10]), rank_steps_min=int(-neg_min), rank_steps_max=int(steps_max),
        epochs=state.epochs_run, times=measured,
        verdict=run_verdict(steady.p_core, steady.p_train, measured.data_wait_fraction, stages,
                            session.lcfg.workers),
        loader_stage_seconds_per_image_rank0=stages, global_batch_size=session.global_batch)


def _flagperf(trainer: Trainer, end: RunEnd) -> FlagPerfFigures:
    """FlagPerf's figures of this rank (rank 0's are reported), every step counted (see :mod:`train.metrics`)."""
    state, run_start, clock = trainer.state, trainer.run_start, trainer.clock
    ev, target = state.last_eval, trainer.session.cfg.target_acc1
    converged = None if target is None else state.target_reached is not None
    times = FlagPerfTimes(e2e=end.end - (run_start if run_start is not None else process_start_time()),
                          initial_eval=state.initial_eval_s, loop=state.loop_s - state.excluded_s,
                          epochs_train=state.epochs_train_s, compute=clock.compute.total,
                          images=state.flagperf_images, acc1=ev.batch_mean_acc1 if ev is not None else None,
                          converged=converged)
    return flagperf_figures(times, clock.timing.value)


def origin(env: distributed.DistEnv, versions: dict) -> Origin:
    """The machine this rank ran on and which run it is: its start (the process's, the origin of ``e2e_time``),
    host, version, git commit."""
    return Origin(collect(env.world_size, distributed.local_world_size(), versions),
                  run_identity(process_start_time()))


def placement(cfg: TrainConfig, env: distributed.DistEnv, precision: Precision, device_name: str) -> Placement:
    """Ranks, precision, loader, device and its name."""
    return Placement(env.world_size, precision.value, cfg.loader.value, str(env.device), device_name)


def numerics(session: Session) -> Numerics:
    """The numerics this rank trained with (TF32 as the device runs it; None fields on a CPU)."""
    precision = session.precision
    tf32 = tf32_state(accelerator.vendor_of(session.env.device))
    benchmark, deterministic = cudnn_state()
    dtype = str(model_dtype(precision)).replace("torch.", "")
    auto = autocast_dtype(precision)
    return Numerics(precision.value, PAGE_LABEL.get(precision, precision.value), dtype, dtype,
                    str(auto).replace("torch.", "") if auto is not None else None, session.scaler is not None,
                    session.cfg.tf32.value, tf32.matmul if tf32 else None, tf32.cudnn if tf32 else None,
                    tf32.mechanism.value if tf32 else None, os.environ.get(METAX_TF32_ENV), benchmark, deterministic,
                    session.cfg.channels_last)


def _source_name(cfg: TrainConfig, info) -> str:
    """The name of the run's data: the folder the shards were made from (shard-imagenet's ``report.json`` or
    ``_info.json`` ``source``), else the ``--data`` folder's own name; ``synthetic`` without data."""
    if cfg.data is None:
        return "synthetic"
    source = info.extra.get("source") if info is not None else None
    if source is None and isinstance(cfg.data, Path):
        try:
            source = json.loads((cfg.data / REPORT_FILE).read_text()).get("source")
        except (OSError, ValueError, AttributeError):
            source = None
    text = str(source or cfg.data).rstrip("/")
    return text.rsplit("/", 1)[-1] or text


def dataset_summary(cfg: TrainConfig, info, train: Loader | None, val: Loader | None,
                    num_classes: int) -> DatasetSummary:
    """The data of the run: its name, images per split (the shards' own counts, also for a split the run did not
    load, e.g. val with ``--no-eval``), classes and its manifest's SHA-256. ``info``: the shard folder's
    :class:`pipeline.dataset.DatasetInfo`, None for backends that read no shards."""
    def count(split: str, loader: Loader | None) -> int:
        if info is not None and split in info.splits:
            return info.splits[split].num_samples
        if cfg.data is None:  # synthetic: the sizes it was given
            options = cfg.loader_cfg.options_for(SyntheticConfig)
            return options.train_samples if split == "train" else options.val_samples
        return loader.num_samples if loader is not None else 0

    return DatasetSummary(None if cfg.data is None else str(cfg.data), _source_name(cfg, info),
                          count("train", train), count("val", val), num_classes, manifest_sha256(cfg.data))
