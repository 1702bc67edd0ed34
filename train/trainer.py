"""The run object: :class:`Trainer` owns one training process's run from its first step to its last (after
torchtitan's ``Trainer``, with a short constructor: :meth:`Trainer.start` builds what it needs).

It holds the built :class:`train.build.Session` (frozen), the run's clocks (:class:`train.clock.RunClock`), the
loop state (:class:`train.loop.LoopState`), the checkpointer and what changes while the run goes on: the current
train loader and its image size (progressive resizing rebuilds it), rank 0's progress bar / lines, the JSONL step
log, ``summary.csv`` / TensorBoard sinks and the device-memory monitor. :meth:`Trainer.train` runs every epoch
(each followed by its evaluation, checkpoint and log line); :meth:`Trainer.finish` stops the loaders. The finished
run is read by :func:`train.assemble.train_report`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from pipeline.backends import Batch
from train import checkpoint, distributed, preempt
from train.build import Session, build_session
from train.clock import Mark, RunClock, after_calls, make_clock, process_start_time, resolve_timing, timed_iter
from train.config import TrainConfig
from train.loop import (Checkpointer, EpochFigures, LoopState, TrainStep, announce, check_finite, epoch_line,
                        epoch_record, evaluate, log_line, resume, warm_steps)
from train.memory import MemoryUse, peak_memory, reset_peaks, start_monitor
from train.progress import Progress, progress_config
from train.sinks import open_sinks
from train.steplog import StepLog, StepSources


@dataclass(frozen=True)
class RunEnd:
    """How a finished run ended: its peak memory (read before the loaders stop), ``e2e_s`` (s from process start
    to the loaders' stop) and ``end`` (Unix time, s)."""

    memory: MemoryUse
    e2e_s: float
    end: float


class Trainer:
    """One training run of this process (one rank); see the module docstring.

    Attributes:
        session: what was built (frozen); clock: the run's clocks; loaded: the checkpoint resumed from (or None);
        run_start: Unix time (s) FlagPerf's e2e_time starts at (None: process start); state: the loop state;
        checkpointer: checkpoint writes at ``checkpointer.position``; train_loader / train_loader_size: the
        current train loader and its image side (px); progress, steplog, sinks, monitor: the run's live outputs.
    """

    def __init__(self, session: Session, clock: RunClock, loaded: checkpoint.Loaded | None = None,
                 signals: preempt.StopSignals | None = None, run_start: float | None = None):
        cfg, env = session.cfg, session.env
        self.session, self.clock, self.loaded, self.run_start = session, clock, loaded, run_start
        position = loaded.position if loaded is not None else checkpoint.Position()
        self.checkpointer = Checkpointer(session, clock, position)
        vote = distributed.StopVote(env, cfg.dist_timeout) if env.distributed else None
        self.state = LoopState(start_step=position.step, warm_steps=warm_steps(cfg, session.total_steps, position.step),
                               done=position.step, epochs_run=position.epoch, train_size=session.lcfg.image_size,
                               stop=preempt.StopAgreement(signals or preempt.StopSignals(), vote))
        self.train_loader, self.train_loader_size = session.train_loader, session.lcfg.image_size
        self.monitor = None
        self.sinks = open_sinks(cfg.summary_csv_path, cfg.tensorboard_dir, position.epoch + 1, position.step,
                                env.is_main)
        self.steplog = StepLog(cfg.step_log_path if env.is_main else None, cfg.log_every, session.global_batch,
                               self._step_sources(), self.state.start_step, append=cfg.checkpoint.resume,
                               sink=self.sinks)
        self.progress = Progress(progress_config(cfg.progress, env.is_main, cfg.log_every, session.global_batch),
                                 lambda: clock.data.total)

    @classmethod
    def start(cls, cfg: TrainConfig, env: distributed.DistEnv, signals: preempt.StopSignals | None = None,
              run_start: float | None = None) -> Trainer:
        """Build the session, say what trains on what, resume (``--resume``) and make the clocks.

        Raises:
            ValueError / pipeline.dataset.DatasetError / CheckpointError: see :func:`train.build.build_session`
                and :func:`train.loop.resume`.
        """
        session = build_session(cfg, env)
        timing = resolve_timing(cfg.timing, env.device)
        announce(session, timing)
        loaded = resume(session)
        clock = make_clock(timing, env.device, (lambda: distributed.barrier(env)) if env.distributed else None)
        return cls(session, clock, loaded, signals, run_start)

    def _step_sources(self) -> StepSources:
        """What the step log reads: the clocks, the position's epoch, the LR and the time spent outside training."""
        clock, state, position = self.clock, self.state, self.checkpointer.position
        return StepSources(clock.data, clock.compute, lambda: position.epoch,
                           lambda: self.session.optimizer.param_groups[0]["lr"],
                           lambda: clock.eval.total + clock.excluded + (state.initial_eval_s or 0.0))  # not training

    # --- the run ---------------------------------------------------------------------------------------------------

    def train(self) -> Trainer:
        """Run every epoch from the (resumed) position, then write the run's last checkpoint (outside the loop
        time); returns this finished run.

        Raises:
            train.preempt.Stopped: a signal stopped the run (its checkpoint written, the loaders stopped).
            ValueError: the loss diverged.
        """
        state, cfg = self.state, self.session.cfg
        self._train_epochs(self._wrap_step())
        self.steplog.close()
        self.sinks.close()
        if state.stop.agreed and state.done < self.session.total_steps:
            raise self._stop()
        state.excluded_s = self.clock.excluded  # checkpoint writes + resume replay inside the loop
        if cfg.checkpoint_dir is not None and not self.checkpointer.has(state.done):
            self.save_checkpoint()  # always one at the end of the run (outside the loop time)
        return self

    def finish(self) -> RunEnd:
        """Read peak memory, then stop the loaders (so e2e includes their workers' shutdown)."""
        memory = peak_memory(self.session.env.device, self.monitor)
        self.close_loaders()
        e2e_s = time.time() - process_start_time()
        return RunEnd(memory, e2e_s, time.time())

    def close_loaders(self) -> None:
        for loader in (self.train_loader, self.session.val_loader):
            if loader is not None:
                loader.close()

    def save_checkpoint(self) -> None:
        """A checkpoint at the current position, with the current train loader's state."""
        self.checkpointer.save(self.train_loader)

    def _mark(self) -> None:
        """End of warm-up: p_* count what follows; torch's memory peaks restart here."""
        self.state.marks.append(self.clock.mark())
        reset_peaks(self.session.env.device)

    def _wrap_step(self) -> Callable[[Batch], torch.Tensor]:
        """The step with its clock, the warm-up mark, checkpoints every N steps and the JSONL log around it."""
        session = self.session
        timed = after_calls(self.clock.compute.wrap(TrainStep.of(session)), self.state.warm_steps, self._mark)
        every = session.cfg.checkpoint.every if session.cfg.checkpoint_dir is not None else None
        timed = checkpoint.every_n_steps(timed, self.checkpointer.position, every, self.save_checkpoint)
        return self.steplog.wrap(timed)

    def _train_epochs(self, step: Callable[[Batch], torch.Tensor]) -> None:
        """The loop: every epoch from the (resumed) position, timed from its start to its last step's end."""
        session, clock, state = self.session, self.clock, self.state
        self.monitor = start_monitor(session.env.device)
        self._initial_eval()
        distributed.barrier(session.env)
        clock.sync()
        state.loop_start = time.perf_counter()
        if state.warm_steps == 0:
            self._mark()
        first = self.checkpointer.position.epoch
        states = self.loaded.loader_states if self.loaded is not None else None
        stop_now = state.stop is not None and state.stop.at_start()  # a signal during start-up: no step runs
        for epoch in range(first, session.cfg.epochs):
            if stop_now or not self._run_epoch(step, epoch, states if epoch == first else None):
                break
        if state.stop is not None:
            state.stop.finish()
        clock.sync()
        state.loop_s = time.perf_counter() - state.loop_start
        if not state.marks:  # stopped before the warm-up ended: every step is measured
            state.marks.append(Mark(state.loop_start, 0.0, 0.0, 0.0, 0.0))
            state.warm_steps = 0

    # --- one epoch -------------------------------------------------------------------------------------------------

    def _run_epoch(self, step: Callable[[Batch], torch.Tensor], epoch: int, loader_states: list | None) -> bool:
        """Train one epoch (or its rest after a resume), evaluate, checkpoint, log. Returns False to stop."""
        session, clock, state, position = self.session, self.clock, self.state, self.checkpointer.position
        skip = position.epoch_step if epoch == position.epoch else 0
        steps = min(session.steps_per_epoch, session.total_steps - state.done + skip) - skip  # to run in this epoch
        if steps <= 0:
            return False
        position.epoch, position.epoch_step = epoch, skip
        t0, data0, compute0, excl0 = time.perf_counter(), clock.data.total, clock.compute.total, clock.excluded
        loss_sum = torch.zeros((), device=session.env.device)
        for batch in self.progress.train(timed_iter(self._epoch_batches(epoch, skip, loader_states), clock.data,
                                                    steps, clock.data_ready), epoch, session.cfg.epochs, steps,
                                         loss_sum):
            loss_sum += step(batch)
            if state.stop is not None and state.stop.after_step():
                break  # a signal: stop at this step boundary (every rank after the same step)
        if self._stopped_in(position.epoch_step - skip):
            return False
        clock.sync()  # once per epoch: the epoch's wall time ends when its last step has finished
        state.done, state.epochs_run = state.done + steps, state.epochs_run + 1
        state.train_size = self.train_loader_size
        train_s = time.perf_counter() - t0 - (clock.excluded - excl0)
        state.epochs_train_s += train_s
        whole = skip == 0 and steps == session.steps_per_epoch  # FlagPerf adds len(dataset) per epoch
        state.flagperf_images += self.train_loader.num_samples if whole else steps * session.global_batch
        compute_s = clock.compute.total - compute0
        self._eval_epoch(epoch)
        loss = loss_sum.item()  # one host read per epoch, which the log line needs anyway
        self._end_epoch(EpochFigures(epoch, steps, skip, loss, train_s, clock.data.total - data0, compute_s))
        return not self._target_reached(epoch)

    def _end_epoch(self, figures: EpochFigures) -> None:
        """After the epoch's evaluation: the finite-loss check, its ``summary.csv`` row, the per-epoch checkpoint
        and its log line."""
        session, state, position = self.session, self.state, self.checkpointer.position
        check_finite(session, figures.loss_sum, figures.epoch)
        self.sinks.epoch(epoch_record(figures, state, session))  # before the checkpoint
        cfg = session.cfg
        if cfg.checkpoint_dir is not None and cfg.checkpoint.every is None and state.done < session.total_steps:
            position.epoch, position.epoch_step = figures.epoch + 1, 0  # after the eval: a resume starts the next
            self.save_checkpoint()
        log_line(session.env, epoch_line(figures, state, session))

    def _epoch_batches(self, epoch: int, skip: int, loader_states: list | None) -> Iterator[Batch]:
        """The train iterator of ``epoch``, positioned after ``skip`` batches (resume), timed as resume replay."""
        session, clock = self.session, self.clock
        resolution = session.cfg.resolution
        if resolution is not None and resolution.train_size(epoch) != self.train_loader_size:
            self.train_loader.close()  # progressive resizing: a loader at the new size
            self.train_loader_size = resolution.train_size(epoch)
            self.train_loader = session.build_train_loader(self.train_loader_size)
        loader, rank = self.train_loader, session.env.rank
        loader.set_epoch(epoch)
        if not (skip or loader_states):
            return iter(loader)
        with clock.resume_skip.timing(clock.sync):  # once, in the resumed epoch
            if loader_states:
                loader.load_state_dict(loader_states[rank] if rank < len(loader_states) else {})
            return loader.iter_from(skip)

    def _eval_epoch(self, epoch: int) -> None:
        """Evaluate the model (and its EMA) after ``epoch``, BN statistics averaged first; log it."""
        session, state, val = self.session, self.state, self.session.val_loader
        if val is None:
            return
        val.set_epoch(epoch)
        with self.clock.eval.timing(self.clock.sync):
            session.sync_buffers()
            state.last_eval = evaluate(session.model, val, session.precision, session.env, self.progress)
            if session.ema is not None:
                state.ema_eval = evaluate(session.ema.module, val, session.precision, session.env, self.progress)
        self.steplog.eval_line(epoch, state.last_eval.acc1, state.last_eval.acc5)

    def _initial_eval(self) -> None:
        """FlagPerf's evaluation before training (``--initial-eval``): inside e2e_time, outside the loop's times."""
        session, state, clock = self.session, self.state, self.clock
        if not session.cfg.initial_eval or session.val_loader is None:
            return
        distributed.barrier(session.env)
        clock.sync()
        t0 = time.perf_counter()
        session.val_loader.set_epoch(0)
        state.initial_eval = evaluate(session.model, session.val_loader, session.precision, session.env,
                                      self.progress)
        clock.sync()
        state.initial_eval_s = time.perf_counter() - t0
        initial = state.initial_eval
        log_line(session.env, f"initial evaluation (FlagPerf's, before training): top-1 {initial.acc1:.2f}% "
                              f"(FlagPerf's mean of per-batch top-1 {initial.batch_mean_acc1:.2f}%) in "
                              f"{state.initial_eval_s:.1f} s")

    def _target_reached(self, epoch: int) -> bool:
        """Whether ``--target-acc1`` was reached by this epoch's evaluation (then noted in the state): FlagPerf's
        test, its top-1 (the mean of per-batch top-1, :class:`train.loop.EvalResult`) against the target."""
        target, ev = self.session.cfg.target_acc1, self.state.last_eval
        if target is None or ev is None or ev.batch_mean_acc1 < target:
            return False
        self.state.target_reached = epoch + 1
        log_line(self.session.env, f"target top-1 {target}% reached after epoch {epoch + 1} (FlagPerf's top-1 "
                                   f"{ev.batch_mean_acc1:.2f}%): stopping")
        return True

    # --- a stop by signal ------------------------------------------------------------------------------------------

    def _stopped_in(self, ran: int) -> bool:
        """After the steps of an epoch (``ran`` of them run): True where a signal stopped the loop before the end
        of the run (``state.done`` counts them; no evaluation, checkpoint or epoch line: :meth:`_stop` follows)."""
        state = self.state
        if state.stop is None or not state.stop.agreed or state.done + ran >= self.session.total_steps:
            return False
        state.done += ran
        return True

    def _stop(self) -> preempt.Stopped:
        """The ranks agreed to stop (a signal): write the checkpoint of this step where ``--checkpoint-dir`` is set
        (unless one of it exists, or no step ran), stop the loaders; returns the exception carrying the one line."""
        session, state, ckpt = self.session, self.state, self.checkpointer
        ck_dir, env = session.cfg.checkpoint_dir, session.env
        if ck_dir is not None and state.done > state.start_step and not ckpt.has(state.done):
            self.save_checkpoint()
        names = distributed.all_gather_objects(state.stop.signals.signal_name, env)
        got = [(rank, name) for rank, name in enumerate(names) if name is not None]
        name = "a signal" if not got else got[0][1] if not env.distributed else f"{got[0][1]} (to rank {got[0][0]})"
        self.close_loaders()
        saved = ckpt.saved[-1] if ckpt.saved and ckpt.has(state.done) else None
        return preempt.Stopped(preempt.stop_line(name, state.done, session.total_steps, saved, ck_dir))
