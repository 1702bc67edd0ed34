"""The measured loop's parts: the training step (:class:`TrainStep`), evaluation (:class:`EvalResult`,
:func:`evaluate`), what the epochs leave behind (:class:`LoopState`), an epoch's figures, log line and
``summary.csv`` row (:class:`EpochFigures`, :func:`epoch_line`, :func:`epoch_record`), the start-up lines
(:func:`announce`), resuming (:func:`resume`), checkpoint writes (:class:`Checkpointer`) and ``--test-only``'s
pass over the val split (:func:`evaluate_checkpoint`). The run object that drives them, epoch after epoch, is
:class:`train.trainer.Trainer`.

The loop body has no timers: the train iterator is wrapped by :func:`train.clock.timed_iter` (data wait) and
the step by the run's step clock (:mod:`train.clock`: CUDA events read once per log window / epoch, or
FlagPerf's synchronous timing with ``--timing sync``). The step holds no host synchronisation: the loss is
accumulated on the device and read once per epoch, fused SGD on CUDA lets GradScaler skip its per-step
``.item()``, and the EMA update is in-place device work. Under DDP the BatchNorm statistics are averaged over
ranks before every evaluation and checkpoint (:func:`train.distributed.average_buffers`). What is built before
the first step comes from :mod:`train.build`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.backends import Batch, Loader
from train import checkpoint, distributed, preempt
from train.build import CheckpointTestSession, Session, build_checkpoint_test
from train.clock import Mark, RunClock, Timing, make_clock, process_start_time, resolve_timing
from train.config import TrainConfig
from train.memory import MemoryUse, peak_memory, start_monitor
from train.precision import SIXTEEN_BIT_CAST, Precision, autocast, cast_input
from train.progress import Progress, progress_config
from train.recipe import ModelEma
from train.sinks import EpochRecord


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

    @classmethod
    def of(cls, session: Session) -> TrainStep:
        """The step of a built session."""
        return cls(session.train_model, session.optimizer, session.scheduler, session.criterion, session.precision,
                   session.env.device, session.scaler, session.ema, session.model, session.cfg.channels_last)

    def __call__(self, batch: Batch) -> torch.Tensor:
        images = cast_input(batch.images, self.precision)  # fp16 (FlagPerf's): bfloat16; half: float16
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
    """Evaluation over all ranks: ``count`` images, top-1 and top-5 accuracy in % (each image once), and FlagPerf's
    top-1: the unweighted mean over every rank's val batches of each batch's top-1 (%), ``batches`` of them."""

    count: int
    acc1: float
    acc5: float
    batch_mean_acc1: float
    batches: int


def evaluate(model: torch.nn.Module, loader: Loader, precision: Precision, env: distributed.DistEnv,
             progress: Progress | None = None) -> EvalResult:
    """Top-1/top-5 over this rank's val batches, summed over ranks (each image counted exactly once).

    ``model`` is the plain module (not the DDP wrapper): ranks may run different batch counts here. ``progress``
    (rank 0's bar or lines) wraps the val batches.
    """
    model.eval()
    correct1 = torch.zeros((), dtype=torch.int64, device=env.device)
    correct5 = torch.zeros((), dtype=torch.int64, device=env.device)
    batch_acc_sum = torch.zeros((), dtype=torch.float64, device=env.device)  # FlagPerf's: sum of per-batch top-1 %
    count = n_batches = 0
    batches = progress.eval(loader, _length(loader)) if progress is not None else loader
    with torch.inference_mode():
        for batch in batches:
            with autocast(precision, env.device):
                logits = model(cast_input(batch.images, precision))
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hits = top.eq(batch.labels.view(-1, 1))
            correct1 += hits[:, 0].sum()
            correct5 += hits.any(dim=1).sum()
            batch_acc_sum += hits[:, 0].sum() * (100.0 / batch.labels.shape[0])
            count += batch.labels.shape[0]
            n_batches += 1
    model.train()
    images, hits1, hits5, all_batches, acc_sum = distributed.all_reduce(
        [float(count), float(correct1.item()), float(correct5.item()), float(n_batches), float(batch_acc_sum.item())],
        "sum", env)
    return EvalResult(int(images), 100.0 * hits1 / max(images, 1), 100.0 * hits5 / max(images, 1),
                      acc_sum / max(all_batches, 1), int(all_batches))


def _length(loader: Loader) -> int | None:
    try:
        return len(loader)
    except TypeError:  # a loader that does not know its batch count
        return None


def log_line(env: distributed.DistEnv, msg: str) -> None:
    """Print ``msg`` on rank 0 (flushed)."""
    if env.is_main:
        print(msg, flush=True)


# --- start, resume and checkpoints -----------------------------------------------------------------------------

def announce(session: Session, timing: Timing) -> None:
    """Rank 0's start-up lines: what trains on what (loader, data, device, precision, batch, schedule, timing) and
    which JPEG decoder the loader uses."""
    cfg, env, lcfg = session.cfg, session.env, session.lcfg
    log_line(env, f"train: {cfg.loader.value} loader, {cfg.data if cfg.data is not None else 'synthetic data'}, "
                  f"{session.train_loader.num_classes} classes, device {env.device} ({session.device_name}), world "
                  f"size {env.world_size}, precision {session.precision.value}, batch {lcfg.batch_size}/rank (global "
                  f"{session.global_batch}), image {lcfg.image_size}px, lr {session.peak_lr:g}, "
                  f"{session.steps_per_epoch} steps/epoch, {session.total_steps} steps, timing {timing.value}")
    log_line(env, _decode_line(cfg.loader.value, env.device))


def _decode_line(loader: str, device: torch.device) -> str:
    """One line naming the JPEG decoder the ``loader`` backend uses on ``device`` (``decode: ...``); for ``cpu``
    :func:`pipeline.read.transforms.decode_line` (says when nvImageCodec's region decode is missing)."""
    from pipeline.read import transforms

    if loader == "cpu":
        return transforms.decode_line()
    if loader == "dali":
        from nvidia import dali

        where = "nvJPEG on the GPU (mixed)" if device.type == "cuda" else "libjpeg-turbo on the CPU"
        return f"decode: DALI {dali.__version__}, {where}"
    if loader == "nvjpeg":
        where = "nvJPEG on the GPU" if device.type == "cuda" else "libjpeg-turbo on the CPU (no CUDA)"
        return f"decode: torchvision.io.decode_jpeg, {where}; PIL for what it rejects"
    if loader == "folder":
        pil = transforms.decoder_name().rsplit(" + ", 1)[-1]
        return f"decode: PIL ({pil}), files listed as torchvision's ImageFolder does"
    return f"decode: none ({loader} batches are made on the device)"


def resume(session: Session) -> checkpoint.Loaded | None:
    """Load the newest checkpoint of ``--checkpoint-dir`` on every rank (``--resume``), or None; a checkpoint saved
    at an epoch's end is positioned at the start of the next epoch.

    Raises:
        ValueError / CheckpointError: the run is already complete, or the checkpoint does not fit.
    """
    ck, ck_dir, env = session.cfg.checkpoint, session.cfg.checkpoint_dir, session.env
    if not (ck.resume and (ck_dir is not None or ck.resume_from is not None)):
        return None
    found = _resume_source(ck.resume_from) if ck.resume_from is not None else checkpoint.latest_checkpoint(ck_dir)
    if found is None:
        log_line(env, f"resume: no checkpoint in {ck_dir}: starting from step 0")
        return None
    loaded = checkpoint.load_checkpoint(found, session.header, session.train_state)
    position, total = loaded.position, session.total_steps
    if position.step >= total:
        raise ValueError(f"checkpoint {found} is at step {position.step}: this run of {total} steps is already "
                         f"complete; nothing to resume (drop --resume or use another --checkpoint-dir to train again)")
    if position.epoch_step >= session.steps_per_epoch:  # saved at an epoch's end: the next epoch starts afresh
        position.epoch, position.epoch_step = position.epoch + 1, 0
    log_line(env, f"resume: {found} at step {position.step}/{total} (epoch {position.epoch + 1}, "
                  f"{position.epoch_step} batches into it)")
    return loaded


def _resume_source(path: Path) -> Path:
    """The checkpoint ``--resume PATH`` names: PATH itself (a file), or the newest checkpoint in it (a folder).

    Raises:
        ValueError: no such file or folder, or a folder without a checkpoint (one line naming PATH).
    """
    if path.is_file():
        return path
    found = checkpoint.latest_checkpoint(path) if path.is_dir() else None
    if found is None:
        raise ValueError(f"--resume {path}: " + ("no checkpoint (ckpt-step*.pt) in that folder" if path.is_dir()
                                                 else "no such checkpoint file or folder"))
    return found


@dataclass
class Checkpointer:
    """Writes checkpoints of a session at its ``position`` (rank 0 writes, every rank waits; the time goes to the
    clock's ``checkpoint`` stopwatch); ``saved``: the paths written, ``steps``: their steps."""

    session: Session
    clock: RunClock
    position: checkpoint.Position
    saved: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)

    def save(self, train_loader: Loader) -> None:
        """Average the BN statistics, gather every rank's ``train_loader`` state and write the checkpoint.

        Raises:
            CheckpointError: rank 0 cannot write it (one line; the previous checkpoints intact).
        """
        session = self.session
        with self.clock.checkpoint.timing(self.clock.sync):
            session.sync_buffers()
            states = distributed.all_gather_objects(train_loader.state_dict(), session.env)
            if session.env.is_main:
                self.saved.append(str(checkpoint.save_checkpoint(
                    session.cfg.checkpoint_dir, session.header, self.position, session.train_state,
                    keep=session.cfg.checkpoint.keep, loader_states=states)))
            distributed.barrier(session.env)
        self.steps.append(self.position.step)

    def has(self, step: int) -> bool:
        """Whether the last checkpoint written is of ``step``."""
        return bool(self.steps) and self.steps[-1] == step


# --- what the epochs leave behind ------------------------------------------------------------------------------

@dataclass
class LoopState:
    """What the epochs leave behind for the report (times in s, ``perf_counter``; ``train_size`` in px).

    ``epochs_train_s``: the epochs' times without their evaluations, warm-up included (FlagPerf's p_train);
    ``flagperf_images``: ``len(dataset)`` per finished epoch, the trained images of a cut-short one (FlagPerf's
    count); ``initial_eval`` / ``initial_eval_s``: the evaluation before training (``--initial-eval``);
    ``excluded_s``: checkpoint writes and the resume replay inside the loop (taken out of its time).
    """

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
    epochs_train_s: float = 0.0
    flagperf_images: int = 0
    initial_eval: EvalResult | None = None
    initial_eval_s: float | None = None
    excluded_s: float = 0.0
    stop: preempt.StopAgreement | None = None  # when a signal stops the loop (read between steps)


def warm_steps(cfg: TrainConfig, total_steps: int, start_step: int) -> int:
    """Steps of this process left out of p_*: a resumed process measures its own start-up too."""
    remaining = total_steps - start_step
    cfg.resolved_warmup_steps(total_steps)  # validates an explicit --warmup-steps
    warm = cfg.resolved_warmup_steps(remaining) if cfg.warmup_steps is None else min(cfg.warmup_steps, remaining - 1)
    if cfg.compile and warm == 0 and remaining > 1:
        warm = 1  # the first compiled step holds the compilation: never in p_*
    return max(0, warm)


@dataclass(frozen=True)
class EpochFigures:
    """One epoch's figures: ``epoch`` (0-based), ``steps`` run in it, ``resumed_at`` (batches of it trained before
    a resume, 0 otherwise), ``loss_sum`` (sum of the steps' losses), ``train_s`` (its time without evaluation and
    exclusions), ``wait_s`` (data wait) and ``compute_s`` (the step clock), in s."""

    epoch: int
    steps: int
    resumed_at: int
    loss_sum: float
    train_s: float
    wait_s: float
    compute_s: float

    @property
    def loss(self) -> float:
        """The mean loss over the epoch's steps."""
        return self.loss_sum / max(self.steps, 1)


def epoch_line(figures: EpochFigures, state: LoopState, session: Session) -> str:
    """The epoch's log line: mean loss, train and compute rates (img/s), data wait share, evaluation. The rates
    are over the whole epoch: an epoch holding warm-up steps (left out of the row's steady figures) says
    ``(incl. N warm-up steps; ...)``."""
    batch, steps, train_s = session.global_batch, figures.steps, figures.train_s
    ev, ema = state.last_eval, state.ema_eval
    warm_end = state.start_step + state.warm_steps  # this process's warm-up: steps start_step .. warm_end - 1
    warm = max(0, min(state.done, warm_end) - max(state.done - steps, state.start_step))
    return (f"epoch {figures.epoch + 1}/{session.cfg.epochs}: steps {state.done}/{session.total_steps}, "
            f"loss {figures.loss:.4f}"
            + (f" (over the {steps} steps since the resume)" if figures.resumed_at else "")
            + (f", train size {state.train_size}px" if session.cfg.resolution is not None else "")
            + f", train {steps * batch / train_s:.1f} img/s ("
            + (f"incl. {warm} warm-up step{'s' if warm != 1 else ''}; " if warm else "")
            + f"data wait {100 * figures.wait_s / train_s:.0f}%, "
            + f"compute {steps * batch / max(figures.compute_s, 1e-9):.1f} img/s)"
            + (f", val top-1 {ev.acc1:.2f}% top-5 {ev.acc5:.2f}% on {ev.count} images" if ev is not None else "")
            + (f", EMA top-1 {ema.acc1:.2f}%" if ema is not None else ""))


def epoch_record(figures: EpochFigures, state: LoopState, session: Session) -> EpochRecord:
    """The epoch's row of ``summary.csv`` (see :class:`train.sinks.EpochRecord`), from the epoch line's figures."""
    ev, train_s = state.last_eval, max(figures.train_s, 1e-9)
    return EpochRecord(epoch=figures.epoch + 1, step=state.done, train_loss=figures.loss,
                       eval_top1=ev.acc1 if ev is not None else None, eval_top5=ev.acc5 if ev is not None else None,
                       lr=session.optimizer.param_groups[0]["lr"],
                       img_per_s=figures.steps * session.global_batch / train_s,
                       data_wait_fraction=figures.wait_s / train_s, epoch_s=figures.train_s)


def check_finite(session: Session, loss: float, epoch: int) -> None:
    """Stop a diverged run in one line, with the advice that fits its precision (a 16-bit cast has no loss
    scaling: autocast keeps float32 weights).

    Raises:
        ValueError: ``loss`` (epoch ``epoch``'s, 0-based) is not finite.
    """
    if not math.isfinite(loss):
        cast = session.precision in SIXTEEN_BIT_CAST
        raise ValueError(f"the training loss became {loss} in epoch {epoch + 1} (diverged): lower --lr (now "
                         f"{session.peak_lr:g} peak), raise --warmup-epochs"
                         + (f", or use --precision amp (float16 autocast with loss scaling) or fp32 instead of "
                            f"{session.precision.value}" if cast else ""))


# --- evaluation of a checkpoint --------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckpointEval:
    """``--test-only``'s pass: what was evaluated (``tested``), the model's result and its time (s, the device
    synchronised at both ends), the EMA's result (None without one), peak memory and e2e (s from process start,
    the val loader stopped)."""

    tested: CheckpointTestSession
    result: EvalResult
    eval_s: float
    ema_result: EvalResult | None
    memory: MemoryUse
    e2e_s: float


def _timed_eval(tested: CheckpointTestSession, cfg: TrainConfig,
                env: distributed.DistEnv) -> tuple[EvalResult, float]:
    """The model's pass over the val split and its time (s), the device synchronised at both ends."""
    sync = make_clock(resolve_timing(cfg.timing, env.device), env.device).sync
    sync()
    t0 = time.perf_counter()
    shown = Progress(progress_config(cfg.progress, env.is_main, cfg.log_every,
                                     tested.lcfg.batch_size * env.world_size), lambda: 0.0)
    result = evaluate(tested.model, tested.val_loader, tested.precision, env, shown)
    sync()
    return result, time.perf_counter() - t0


def evaluate_checkpoint(cfg: TrainConfig, env: distributed.DistEnv) -> CheckpointEval:
    """Evaluate a checkpoint (and its EMA) on the val split, every image once over all ranks; the val loader is
    stopped before e2e is read.

    Raises:
        ValueError / CheckpointError: no checkpoint, or one of another model / class count.
    """
    tested = build_checkpoint_test(cfg, env)
    monitor = start_monitor(env.device)
    result, eval_s = _timed_eval(tested, cfg, env)  # the model's pass only (eval_img_per_s); the EMA's comes after
    ema = tested.ema
    ema_result = evaluate(ema.module, tested.val_loader, tested.precision, env) if ema is not None else None
    memory = peak_memory(env.device, monitor)
    tested.val_loader.close()
    return CheckpointEval(tested, result, eval_s, ema_result, memory, time.time() - process_start_time())
