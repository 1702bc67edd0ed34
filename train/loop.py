"""The measured training loop: the step, the epochs (each followed by an evaluation), checkpoints, and the run's
:class:`train.report.RunReport`; or, with ``--test-only``, the evaluation of a checkpoint.

The loop body has no timers: the train iterator is wrapped by :func:`train.clock.timed_iter` (data wait) and
the step by the run's step clock (:mod:`train.clock`: CUDA events read once per log window / epoch, or
FlagPerf's synchronous timing with ``--timing sync``). The step holds no host synchronisation: the loss is
accumulated on the device and read once per epoch, fused SGD on CUDA lets GradScaler skip its per-step
``.item()``, and the EMA update is in-place device work. Under DDP the BatchNorm statistics are averaged over
ranks before every evaluation and checkpoint (:func:`train.distributed.average_buffers`). What is built before
the first step comes from :mod:`train.build`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.compat import SgdImpl, check_numpy_interop
from pipeline.backends import Batch, Loader
from pipeline.dataset import REPORT_FILE
from train import checkpoint, distributed, preempt
from train.build import CheckpointTestSession, Session, build_checkpoint_test, build_session
from train.clock import Mark, RunClock, Timing, after_calls, make_clock, resolve_timing, timed_iter
from train.config import TrainConfig, config_json
from train.environment import Environment
from train.environment import RunIdentity, manifest_sha256, run_identity
from train.environment import collect as collect_environment
from train.memory import MemoryUse, peak_memory, reset_peaks, start_monitor
from train.metrics import (FlagPerfFigures, FlagPerfTimes, RunTimes, SteadyFigures, flagperf_figures,
                           process_start_time, steady_figures)
from train import accelerator
from train.precision import (METAX_TF32_ENV, PAGE_LABEL, SIXTEEN_BIT_CAST, Precision, autocast, autocast_dtype,
                             cast_input, cudnn_state, model_dtype, tf32_state)
from train.recipe import ModelEma
from train.report import (CheckpointTest, Checkpointing, DatasetSummary, EvalCounts, Labels, MeasuredTimes,
                          MemoryDetail, Numerics, Placement, RunReport, Training, config_label, run_verdict)
from train.plot import plot_run
from train.progress import Progress, progress_config
from train.sinks import EpochRecord, RunSinks, open_sinks
from train.steplog import StepLog


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
    def of(cls, s: Session) -> TrainStep:
        """The step of a built session."""
        return cls(s.train_model, s.optimizer, s.scheduler, s.criterion, s.precision, s.env.device, s.scaler, s.ema,
                   s.model, s.cfg.channels_last)

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
    n, c1, c5, nb, acc_sum = distributed.all_reduce(
        [float(count), float(correct1.item()), float(correct5.item()), float(n_batches), float(batch_acc_sum.item())],
        "sum", env)
    return EvalResult(int(n), 100.0 * c1 / max(n, 1), 100.0 * c5 / max(n, 1), acc_sum / max(nb, 1), int(nb))


def _length(loader: Loader) -> int | None:
    try:
        return len(loader)
    except TypeError:  # a loader that does not know its batch count
        return None


def _log(env: distributed.DistEnv, msg: str) -> None:
    if env.is_main:
        print(msg, flush=True)


def run(cfg: TrainConfig, signals: preempt.StopSignals | None = None) -> RunReport:
    """Train and evaluate as ``cfg`` says (or only evaluate, ``cfg.test_only``); return the run's report (its
    summary printed and its JSON written to ``cfg.metrics_path`` by rank 0).

    Raises:
        pipeline.dataset.DatasetError: ``cfg.data`` is not a usable shard folder.
        ValueError: options that cannot work (e.g. a batch larger than the train split allows).
        train.preempt.Stopped: SIGTERM / SIGUSR1 / SIGINT (``signals``, installed by the caller; else by this
            function for the run) stopped training at a step boundary, after its checkpoint.
        train.preempt.Aborted: a second SIGINT.

    Under DDP a collective that times out (``cfg.dist_timeout``), or a rank whose heartbeat goes stale, ends this
    process with one line and :data:`train.distributed.EXIT_STALLED` (:class:`train.distributed.Heartbeat`).
    """
    run_start = time.time()  # FlagPerf's e2e_time starts here: in its __main__, after the imports
    check_numpy_interop()
    env = distributed.init_distributed(cfg.dist_timeout, cfg.device)
    why = accelerator.gpu_only_refusal(cfg.device, env.device, _gpu_only_asks(cfg))
    if why is not None:  # asked for a GPU's loader or precision, none usable here, and --device cpu not given
        distributed.shutdown(env)
        raise ValueError(why)
    heartbeat = distributed.Heartbeat(env, cfg.dist_timeout).start()
    own = signals is None and not cfg.test_only
    if own:
        signals = preempt.StopSignals().install()
    try:
        return test_only(cfg, env, run_start) if cfg.test_only else fit(cfg, env, run_start, signals)
    except RuntimeError as exc:
        if env.distributed and distributed.is_timeout(exc):
            heartbeat.give_up_after(exc)  # one line naming the rank that stopped answering; ends the process
        raise
    finally:
        heartbeat.stop()
        if own:
            signals.uninstall()
        distributed.shutdown(env)


GPU_ONLY_PRECISIONS = (Precision.AMP, Precision.FP16, Precision.HALF)
"""Precisions that only make sense on an accelerator (float16 autocast, 16-bit casts): on the CPU they are slower
than fp32 (see :mod:`train.precision`), so ``--device auto`` without a usable GPU refuses them."""


def _gpu_only_asks(cfg: TrainConfig) -> tuple[str, ...]:
    """The flags of ``cfg`` that ask for a GPU, as typed: a GPU decode backend (``--loader dali`` / ``nvjpeg``,
    :attr:`pipeline.backends.BackendSpec.needs_nvidia`), a GPU-only precision (:data:`GPU_ONLY_PRECISIONS`)."""
    from pipeline.backends import backend_spec

    asks = (f"--loader {cfg.loader.value}",) if backend_spec(cfg.loader).needs_nvidia else ()
    return asks + ((f"--precision {cfg.precision.value}",) if cfg.precision in GPU_ONLY_PRECISIONS else ())


def _publish(report: RunReport, cfg: TrainConfig, env: distributed.DistEnv) -> None:
    """Rank 0 prints the summary and writes the metrics JSON (atomically, see :func:`pipeline.fsio.atomic_write`).

    Raises:
        pipeline.fsio.WriteFailed: the JSON cannot be written (disk full, ...); one line, the previous file intact.
    """
    if env.is_main:
        print(report.summary())
        report.write_json(cfg.metrics_path)


# --- start and checkpoints -------------------------------------------------------------------------------------

def _announce(s: Session, timing: Timing) -> None:
    c, e = s.cfg, s.env
    _log(e, f"train: {c.loader.value} loader, {c.data if c.data is not None else 'synthetic data'}, "
            f"{s.train_loader.num_classes} classes, device {e.device} ({s.device_name}), world size {e.world_size}, "
            f"precision {s.precision.value}, batch {s.lcfg.batch_size}/rank (global {s.global_batch}), "
            f"image {s.lcfg.image_size}px, lr {s.peak_lr:g}, {s.steps_per_epoch} steps/epoch, {s.total_steps} steps, "
            f"timing {timing.value}")
    _log(e, _decode_line(c.loader.value, e.device))


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


def _resume(s: Session) -> checkpoint.Loaded | None:
    """Load the newest checkpoint of ``--checkpoint-dir`` on every rank (``--resume``), or None.

    Raises:
        ValueError / CheckpointError: the run is already complete, or the checkpoint does not fit.
    """
    ck, ck_dir = s.cfg.checkpoint, s.cfg.checkpoint_dir
    if not (ck.resume and (ck_dir is not None or ck.resume_from is not None)):
        return None
    found = _resume_source(ck.resume_from) if ck.resume_from is not None else checkpoint.latest_checkpoint(ck_dir)
    if found is None:
        _log(s.env, f"resume: no checkpoint in {ck_dir}: starting from step 0")
        return None
    loaded = checkpoint.load_checkpoint(found, s.header, s.model, s.optimizer, s.scheduler, s.scaler, ema=s.ema)
    p = loaded.progress
    if p.step >= s.total_steps:
        raise ValueError(f"checkpoint {found} is at step {p.step}: this run of {s.total_steps} steps is already "
                         f"complete; nothing to resume (drop --resume or use another --checkpoint-dir to train again)")
    if p.epoch_step >= s.steps_per_epoch:  # saved at an epoch's end: the next epoch starts afresh
        p.epoch, p.epoch_step = p.epoch + 1, 0
    _log(s.env, f"resume: {found} at step {p.step}/{s.total_steps} (epoch {p.epoch + 1}, {p.epoch_step} batches "
                f"into it)")
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
                    s.cfg.checkpoint_dir, s.header, self.progress, s.model, s.optimizer, s.scheduler, s.scaler,
                    keep=ck.keep,
                    ema=s.ema, loader_states=states)))
            distributed.barrier(s.env)
        self.steps.append(self.progress.step)


# --- the loop --------------------------------------------------------------------------------------------------

@dataclass
class LoopState:
    """What the epochs leave behind for the report (times in s, ``perf_counter``; ``train_size`` in px).

    ``epochs_train_s``: the epochs' times without their evaluations, warm-up included (FlagPerf's p_train);
    ``flagperf_images``: ``len(dataset)`` per finished epoch, the trained images of a cut-short one (FlagPerf's
    count); ``initial_eval`` / ``initial_eval_s``: the evaluation before training (``--initial-eval``).
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
    stop: preempt.StopAgreement | None = None  # when a signal stops the loop (read between steps)
    sinks: RunSinks = field(default_factory=RunSinks)  # rank 0's summary.csv / TensorBoard (train/sinks.py)


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
        st.last_eval = evaluate(s.model, s.val_loader, s.precision, s.env, s.progress)
        if s.ema is not None:
            st.ema_eval = evaluate(s.ema.module, s.val_loader, s.precision, s.env, s.progress)
    if s.steplog is not None:
        s.steplog.eval_line(epoch, st.last_eval.acc1, st.last_eval.acc5)


def _epoch_line(s: Session, st: LoopState, epoch: int, n: int, skip: int, loss: float, train_s: float,
                wait_s: float, compute_s: float) -> str:
    """The epoch's log line: mean loss, train and compute rates (img/s), data wait share, evaluation. The rates
    are over the whole epoch: an epoch holding warm-up steps (left out of the row's steady figures) says
    ``(incl. N warm-up steps; ...)``."""
    gb = s.global_batch
    ev, ema = st.last_eval, st.ema_eval
    warm_end = st.start_step + st.warm_steps  # this process's warm-up: steps start_step .. warm_end - 1
    warm = max(0, min(st.done, warm_end) - max(st.done - n, st.start_step))
    return (f"epoch {epoch + 1}/{s.cfg.epochs}: steps {st.done}/{s.total_steps}, loss {loss / max(n, 1):.4f}"
            + (f" (over the {n} steps since the resume)" if skip else "")
            + (f", train size {st.train_size}px" if s.cfg.resolution is not None else "")
            + f", train {n * gb / train_s:.1f} img/s ("
            + (f"incl. {warm} warm-up step{'s' if warm != 1 else ''}; " if warm else "")
            + f"data wait {100 * wait_s / train_s:.0f}%, compute {n * gb / max(compute_s, 1e-9):.1f} img/s)"
            + (f", val top-1 {ev.acc1:.2f}% top-5 {ev.acc5:.2f}% on {ev.count} images" if ev is not None else "")
            + (f", EMA top-1 {ema.acc1:.2f}%" if ema is not None else ""))


def _epoch_record(s: Session, st: LoopState, epoch: int, n: int, loss: float, train_s: float,
                  wait_s: float) -> EpochRecord:
    """The epoch's row of ``summary.csv`` (see :class:`train.sinks.EpochRecord`), from the epoch line's figures."""
    ev = st.last_eval
    return EpochRecord(epoch=epoch + 1, step=st.done, train_loss=loss / max(n, 1),
                       eval_top1=ev.acc1 if ev is not None else None, eval_top5=ev.acc5 if ev is not None else None,
                       lr=s.optimizer.param_groups[0]["lr"], img_per_s=n * s.global_batch / max(train_s, 1e-9),
                       data_wait_fraction=wait_s / max(train_s, 1e-9), epoch_s=train_s)


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


def _check_finite(s: Session, loss: float, epoch: int) -> None:
    """Stop a diverged run in one line, with the advice that fits its precision (a 16-bit cast has no loss
    scaling: autocast keeps float32 weights)."""
    if not math.isfinite(loss):
        cast = s.precision in SIXTEEN_BIT_CAST
        raise ValueError(f"the training loss became {loss} in epoch {epoch + 1} (diverged): lower --lr (now "
                         f"{s.peak_lr:g} peak), raise --warmup-epochs"
                         + (f", or use --precision amp (float16 autocast with loss scaling) or fp32 instead of "
                            f"{s.precision.value}" if cast else ""))


def _target_reached(s: Session, st: LoopState, epoch: int) -> bool:
    """Whether ``--target-acc1`` was reached by this epoch's evaluation (then noted in ``st``): FlagPerf's test,
    its top-1 (the mean of per-batch top-1, :class:`EvalResult`) against the target."""
    if s.cfg.target_acc1 is None or st.last_eval is None or st.last_eval.batch_mean_acc1 < s.cfg.target_acc1:
        return False
    st.target_reached = epoch + 1
    _log(s.env, f"target top-1 {s.cfg.target_acc1}% reached after epoch {epoch + 1} (FlagPerf's top-1 "
                f"{st.last_eval.batch_mean_acc1:.2f}%): stopping")
    return True


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
    for batch in s.progress.train(timed_iter(batches, clock.data, n, clock.data_ready), epoch, s.cfg.epochs, n,
                                  loss_sum):
        loss_sum += timed_step(batch)
        if st.stop is not None and st.stop.after_step():
            break  # a signal: stop at this step boundary (every rank after the same step)
    if _stopped_in(s, st, p.epoch_step - skip):
        return False
    clock.sync()  # once per epoch: the epoch's wall time ends when its last step has finished
    st.done, st.epochs_run, st.train_size = st.done + n, st.epochs_run + 1, s.train_loader_size
    train_s = time.perf_counter() - t0 - (clock.excluded - excl0)
    st.epochs_train_s += train_s
    whole = skip == 0 and n == s.steps_per_epoch  # FlagPerf adds len(dataset) per epoch
    st.flagperf_images += s.train_loader.num_samples if whole else n * s.global_batch
    compute_s = clock.compute.total - compute0
    _eval_epoch(s, clock, st, epoch)
    loss = loss_sum.item()  # one host read per epoch, which the log line needs anyway
    _check_finite(s, loss, epoch)
    st.sinks.epoch(_epoch_record(s, st, epoch, n, loss, train_s, clock.data.total - data0))  # before the checkpoint
    if s.cfg.checkpoint_dir is not None and s.cfg.checkpoint.every is None and st.done < s.total_steps:
        p.epoch, p.epoch_step = epoch + 1, 0  # after the eval: a resume starts the next epoch
        ckpt.save()
    _log(s.env, _epoch_line(s, st, epoch, n, skip, loss, train_s, clock.data.total - data0, compute_s))
    return not _target_reached(s, st, epoch)


def _stopped_in(s: Session, st: LoopState, ran: int) -> bool:
    """After the steps of an epoch (``ran`` of them run): True where a signal stopped the loop before the end of
    the run (``st.done`` counts them; no evaluation, checkpoint or epoch line: :func:`_stop` follows)."""
    if st.stop is None or not st.stop.agreed or st.done + ran >= s.total_steps:
        return False
    st.done += ran
    return True


def _stop(s: Session, ckpt: Checkpointer, st: LoopState) -> preempt.Stopped:
    """The ranks agreed to stop (a signal): write the checkpoint of this step where ``--checkpoint-dir`` is set
    (unless one of it exists, or no step ran), stop the loaders; returns the exception carrying the one line."""
    ck_dir = s.cfg.checkpoint_dir
    if ck_dir is not None and st.done > st.start_step and (not ckpt.steps or ckpt.steps[-1] != st.done):
        ckpt.save()
    names = distributed.all_gather_objects(st.stop.signals.signal_name, s.env)
    got = [(r, n) for r, n in enumerate(names) if n is not None]
    name = "a signal" if not got else got[0][1] if not s.env.distributed else f"{got[0][1]} (to rank {got[0][0]})"
    for loader in (s.train_loader, s.val_loader):
        if loader is not None:
            loader.close()
    saved = ckpt.saved[-1] if ckpt.saved and ckpt.steps and ckpt.steps[-1] == st.done else None
    return preempt.Stopped(preempt.stop_line(name, st.done, s.total_steps, saved, ck_dir))


def _wrap_step(s: Session, clock: RunClock, st: LoopState, ckpt: Checkpointer, steplog: StepLog):
    """The step with its clock, the warm-up mark, checkpoints every N steps and the JSONL log around it."""
    def mark() -> None:  # end of warm-up: p_* count what follows; torch's memory peaks restart here
        st.marks.append(clock.mark())
        reset_peaks(s.env.device)

    ck = s.cfg.checkpoint
    timed = after_calls(clock.compute.wrap(TrainStep.of(s)), st.warm_steps, mark)
    every = ck.every if s.cfg.checkpoint_dir is not None else None
    timed = checkpoint.every_n_steps(timed, ckpt.progress, every, ckpt.save)
    return steplog.wrap(timed), mark


def _initial_eval(s: Session, clock: RunClock, st: LoopState) -> None:
    """FlagPerf's evaluation before training (``--initial-eval``): inside e2e_time, outside the loop's times."""
    if not s.cfg.initial_eval or s.val_loader is None:
        return
    distributed.barrier(s.env)
    clock.sync()
    t0 = time.perf_counter()
    s.val_loader.set_epoch(0)
    st.initial_eval = evaluate(s.model, s.val_loader, s.precision, s.env, s.progress)
    clock.sync()
    st.initial_eval_s = time.perf_counter() - t0
    _log(s.env, f"initial evaluation (FlagPerf's, before training): top-1 {st.initial_eval.acc1:.2f}% "
                f"(FlagPerf's mean of per-batch top-1 {st.initial_eval.batch_mean_acc1:.2f}%) in "
                f"{st.initial_eval_s:.1f} s")


def _train_epochs(s: Session, clock: RunClock, st: LoopState, ckpt: Checkpointer, timed_step, mark,
                  loaded: checkpoint.Loaded | None) -> None:
    """The loop: every epoch from the (resumed) position, timed from its start to its last step's end."""
    s.monitor = start_monitor(s.env.device)
    _initial_eval(s, clock, st)
    distributed.barrier(s.env)
    clock.sync()
    st.loop_start = time.perf_counter()
    if st.warm_steps == 0:
        mark()
    first = ckpt.progress.epoch
    states = loaded.loader_states if loaded is not None else None
    stop_now = st.stop is not None and st.stop.at_start()  # a signal during start-up: no step runs
    for epoch in range(first, s.cfg.epochs):
        if stop_now or not _run_epoch(s, clock, st, ckpt, timed_step, epoch, states if epoch == first else None):
            break
    if st.stop is not None:
        st.stop.finish()
    clock.sync()
    st.loop_s = time.perf_counter() - st.loop_start
    if not st.marks:  # stopped before the warm-up ended: every step is measured
        st.marks.append(Mark(st.loop_start, 0.0, 0.0, 0.0, 0.0))
        st.warm_steps = 0


def fit(cfg: TrainConfig, env: distributed.DistEnv, run_start: float | None = None,
        signals: preempt.StopSignals | None = None) -> RunReport:
    """Train ``cfg``'s run in this process (one rank) and report it (see :func:`run`); ``signals`` (installed by
    the caller) stop it at a step boundary.

    Raises:
        train.preempt.Stopped: a signal stopped the run (its checkpoint written); no report.
    """
    s = build_session(cfg, env)
    timing = resolve_timing(cfg.timing, env.device)
    _announce(s, timing)
    loaded = _resume(s)
    progress = loaded.progress if loaded is not None else checkpoint.Progress()
    clock = make_clock(timing, env.device, (lambda: distributed.barrier(env)) if env.distributed else None)
    ckpt = Checkpointer(s, clock, progress)
    st = LoopState(start_step=progress.step, warm_steps=_warm_steps(cfg, s.total_steps, progress.step),
                   done=progress.step, epochs_run=progress.epoch, train_size=s.lcfg.image_size,
                   stop=preempt.StopAgreement(signals or preempt.StopSignals(),
                                              distributed.StopVote(env, cfg.dist_timeout) if env.distributed else None))
    st.sinks = open_sinks(cfg.summary_csv_path, cfg.tensorboard_dir, progress.epoch + 1, progress.step, env.is_main)
    steplog = StepLog(cfg.step_log_path if env.is_main else None, cfg.log_every, s.global_batch, clock.data,
                      clock.compute, lambda: progress.epoch, lambda: s.optimizer.param_groups[0]["lr"], st.start_step,
                      append=cfg.checkpoint.resume,
                      paused=lambda: clock.eval.total + clock.excluded + (st.initial_eval_s or 0.0),  # not training
                      sink=st.sinks)
    s.progress = Progress(progress_config(cfg.progress, env.is_main, cfg.log_every, s.global_batch),
                          lambda: clock.data.total)
    s.steplog = steplog
    timed_step, mark = _wrap_step(s, clock, st, ckpt, steplog)
    _train_epochs(s, clock, st, ckpt, timed_step, mark, loaded)
    steplog.close()
    st.sinks.close()
    if st.stop.agreed and st.done < s.total_steps:
        raise _stop(s, ckpt, st)
    excluded_s = clock.excluded  # checkpoint writes + resume replay inside the loop
    if cfg.checkpoint_dir is not None and (not ckpt.steps or ckpt.steps[-1] != st.done):
        ckpt.save()  # always one at the end of the run (outside the loop time)
    report = _train_report(s, clock, st, ckpt, loaded, excluded_s, run_start)
    _publish(report, cfg, env)
    if cfg.plot_path is not None and env.is_main:
        _log(env, plot_run(cfg.step_log_path, report.row(), cfg.plot_path))
    return report


# --- the report of a training run ------------------------------------------------------------------------------

def _close_and_stop(s: Session) -> tuple[MemoryUse, float]:
    """Peak memory, then stop loader workers (so e2e_time includes their shutdown); returns (memory, e2e in s)."""
    mem = peak_memory(s.env.device, s.monitor)
    for loader in (s.train_loader, s.val_loader):
        if loader is not None:
            loader.close()
    return mem, time.time() - process_start_time()


def _times(s: Session, clock: RunClock, st: LoopState, e2e: float, excluded_s: float) -> tuple[RunTimes, RunTimes]:
    """(this rank's measured times, their maxima over ranks), in s."""
    w = st.marks[0]  # measured part: from the end of warm-up to the end of the loop
    # checkpoint writes and the resume replay after warm-up are taken out of the loop time (reported apart)
    local = RunTimes(e2e=e2e, loop=st.loop_start + st.loop_s - w.time - (excluded_s - w.excluded),
                     eval=clock.eval.total - w.eval, compute=clock.compute.total - w.compute,
                     data=clock.data.total - w.data)
    maxes = distributed.all_reduce([local.e2e, local.loop, local.eval, local.compute, local.data], "max", s.env)
    return local, RunTimes(*maxes)


def _eval_counts(ev: EvalResult | None, val_loader: Loader | None) -> EvalCounts:
    return EvalCounts(ev.acc5 if ev is not None else None, ev.count if ev is not None else 0,
                      val_loader.num_samples if val_loader is not None else 0)


def _stage_seconds_per_image(loader: Loader) -> dict[str, float] | None:
    """Per-image seconds by loader stage on one core (backends that time their stages), else None."""
    stages = loader.stats().stages
    return stages.per_image() if stages is not None else None


def _training(s: Session, clock: RunClock, st: LoopState, ckpt: Checkpointer, loaded: checkpoint.Loaded | None,
              steady: SteadyFigures, measured: MeasuredTimes) -> Training:
    """The training part of the report; every rank's step counts and skipped samples are gathered here."""
    skipped = (*s.train_loader.stats().skipped, *(s.val_loader.stats().skipped if s.val_loader else ()))
    steps_max, neg_min = distributed.all_reduce([st.done, -st.done], "max", s.env)
    (skipped_total,) = distributed.all_reduce([float(len(skipped))], "sum", s.env)
    stages = _stage_seconds_per_image(s.train_loader)
    resumed = Checkpointing(st.start_step, str(loaded.path) if loaded is not None else None, clock.checkpoint.total,
                            clock.resume_skip.total, tuple(ckpt.saved))
    return Training(
        steps=st.done, ema_acc1=st.ema_eval.acc1 if st.ema_eval is not None else None, target_acc1=s.cfg.target_acc1,
        target_reached_epoch=st.target_reached, final_train_image_size=st.train_size,
        channels_last=s.cfg.channels_last, compile=s.cfg.compile, optimizer_impl=s.sgd_impl,
        grad_scaler_syncs_per_step=s.scaler is not None and s.sgd_impl != SgdImpl.FUSED, checkpointing=resumed,
        warmup_steps=st.warm_steps, warmup_s_rank0=st.marks[0].time - st.loop_start,
        total_trained_images=st.done * s.global_batch, skipped_samples=int(skipped_total),
        skipped_examples_rank0=tuple(skipped[:10]), rank_steps_min=int(-neg_min), rank_steps_max=int(steps_max),
        epochs=st.epochs_run, times=measured,
        verdict=run_verdict(steady.p_core, steady.p_train, measured.data_wait_fraction, stages, s.lcfg.workers),
        loader_stage_seconds_per_image_rank0=stages, global_batch_size=s.global_batch)


def _environment(env: distributed.DistEnv, versions: dict) -> Environment:
    return collect_environment(env.world_size, distributed.local_world_size(), versions)


def _identity() -> RunIdentity:
    """Which run this is: its start (the process's, the origin of ``e2e_time``), host, version, git commit."""
    return run_identity(process_start_time())


def _placement(cfg: TrainConfig, env: distributed.DistEnv, precision: Precision, device_name: str) -> Placement:
    return Placement(env.world_size, precision.value, cfg.loader.value, str(env.device), device_name)


def _numerics(s: Session) -> Numerics:
    """The numerics this rank trained with (TF32 as the device runs it; None fields on a CPU)."""
    tf32 = tf32_state(accelerator.vendor_of(s.env.device))
    benchmark, deterministic = cudnn_state()
    dtype = str(model_dtype(s.precision)).replace("torch.", "")
    auto = autocast_dtype(s.precision)
    return Numerics(s.precision.value, PAGE_LABEL.get(s.precision, s.precision.value), dtype, dtype,
                    str(auto).replace("torch.", "") if auto is not None else None, s.scaler is not None,
                    s.cfg.tf32.value, tf32.matmul if tf32 else None, tf32.cudnn if tf32 else None,
                    tf32.mechanism.value if tf32 else None, os.environ.get(METAX_TF32_ENV), benchmark, deterministic,
                    s.cfg.channels_last)


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


def _dataset(cfg: TrainConfig, info, train: Loader | None, val: Loader | None, num_classes: int) -> DatasetSummary:
    """The data of the run: its name, images per split (the shards' own counts, also for a split the run did not
    load, e.g. val with ``--no-eval``), classes and its manifest's SHA-256."""
    def count(split: str, loader: Loader | None) -> int:
        if info is not None and split in info.splits:
            return info.splits[split].num_samples
        if cfg.data is None:  # synthetic: the sizes it was given
            lc = cfg.loader_cfg
            return lc.synthetic_train_samples if split == "train" else lc.synthetic_val_samples
        return loader.num_samples if loader is not None else 0

    return DatasetSummary(None if cfg.data is None else str(cfg.data), _source_name(cfg, info),
                          count("train", train), count("val", val), num_classes, manifest_sha256(cfg.data))


def _flagperf(s: Session, clock: RunClock, st: LoopState, excluded_s: float, run_start: float | None,
              end: float) -> FlagPerfFigures:
    """FlagPerf's figures of this rank (rank 0's are reported), every step counted (see :mod:`train.metrics`)."""
    ev = st.last_eval
    converged = None if s.cfg.target_acc1 is None else st.target_reached is not None
    times = FlagPerfTimes(e2e=end - (run_start if run_start is not None else process_start_time()),
                          initial_eval=st.initial_eval_s, loop=st.loop_s - excluded_s,
                          epochs_train=st.epochs_train_s, compute=clock.compute.total, images=st.flagperf_images,
                          acc1=ev.batch_mean_acc1 if ev is not None else None, converged=converged)
    return flagperf_figures(times, clock.timing.value)


def _train_report(s: Session, clock: RunClock, st: LoopState, ckpt: Checkpointer, loaded: checkpoint.Loaded | None,
                  excluded_s: float, run_start: float | None = None) -> RunReport:
    """Stop the loaders and report the run: the steady figures from the times after warm-up (max over ranks) and
    FlagPerf's from every step (rank 0's)."""
    mem, e2e = _close_and_stop(s)
    end = time.time()
    local, times = _times(s, clock, st, e2e, excluded_s)
    (mem_used,) = distributed.all_reduce([mem.used_gib], "max", s.env)
    trained_images = (st.done - st.start_step - st.warm_steps) * s.global_batch  # this process's measured steps
    steady = steady_figures(trained_images, times, st.last_eval.acc1 if st.last_eval else None,
                            dataclasses.replace(mem, used_gib=mem_used))
    measured = MeasuredTimes.of(clock.timing.value, clock.sync.count, times, local)
    return RunReport(steady, _eval_counts(st.last_eval, s.val_loader),
                     _training(s, clock, st, ckpt, loaded, steady, measured), None,
                     _placement(s.cfg, s.env, s.precision, s.device_name), MemoryDetail.of(mem, with_peaks=True),
                     Labels(s.versions, config_label(s.env), f"bs={s.lcfg.batch_size},lr={s.peak_lr:g}",
                            tuple(sys.argv), _environment(s.env, s.versions), _identity()),
                     _flagperf(s, clock, st, excluded_s, run_start, end), _numerics(s),
                     _dataset(s.cfg, s.info, s.train_loader, s.val_loader, s.train_loader.num_classes), config_json(s.cfg))


# --- evaluation of a checkpoint --------------------------------------------------------------------------------

def _timed_eval(t: CheckpointTestSession, cfg: TrainConfig, env: distributed.DistEnv) -> tuple[EvalResult, float]:
    """The model's pass over the val split and its time (s), the device synchronised at both ends."""
    sync = make_clock(resolve_timing(cfg.timing, env.device), env.device).sync
    sync()
    t0 = time.perf_counter()
    shown = Progress(progress_config(cfg.progress, env.is_main, cfg.log_every, t.lcfg.batch_size * env.world_size),
                     lambda: 0.0)
    result = evaluate(t.model, t.val_loader, t.precision, env, shown)
    sync()
    return result, time.perf_counter() - t0


def test_only(cfg: TrainConfig, env: distributed.DistEnv, run_start: float | None = None) -> RunReport:
    """Evaluate a checkpoint on the val split (every image once over all ranks): top-1 / top-5 and the FlagPerf row
    (no training: p_whole / p_train / p_core are ``/``). Returns the report (see :func:`run`).

    Raises:
        ValueError / CheckpointError: no checkpoint, or one of another model / class count.
    """
    t = build_checkpoint_test(cfg, env)
    monitor = start_monitor(env.device)
    result, eval_s = _timed_eval(t, cfg, env)  # the model's pass only (eval_img_per_s); the EMA's comes after
    ema_result = evaluate(t.ema.module, t.val_loader, t.precision, env) if t.ema is not None else None
    mem = peak_memory(env.device, monitor)
    t.val_loader.close()
    e2e = time.time() - process_start_time()
    tested = CheckpointTest(str(t.path), t.loaded.progress.step, ema_result.acc1 if ema_result else None, eval_s,
                            result.count / max(eval_s, 1e-9))
    flagperf = FlagPerfFigures(time.time() - (run_start if run_start is not None else process_start_time()), None,
                               None, None, result.batch_mean_acc1, 0, None, None, "none")
    report = RunReport(SteadyFigures(e2e, None, None, None, result.acc1, mem.used_gib, mem.total_gib, 0),
                       _eval_counts(result, t.val_loader), None, tested,
                       _placement(cfg, env, t.precision, t.device_name), MemoryDetail.of(mem, with_peaks=False),
                       Labels(t.versions, config_label(env), f"bs={t.lcfg.batch_size},test-only", tuple(sys.argv),
                              _environment(env, t.versions), _identity()),
                       flagperf, None, _dataset(cfg, None, None, t.val_loader, t.val_loader.num_classes), config_json(cfg))
    _publish(report, cfg, env)
    return report
