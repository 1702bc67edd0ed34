"""Preemption: SIGTERM / SIGUSR1 / a first SIGINT stop the run at a step boundary with a checkpoint.

A scheduler ends a job with a signal before it kills it: Slurm sends SIGTERM (or, with ``--signal=USR1@120``,
SIGUSR1 120 s before the end), then SIGKILL after its grace period (``KillWait``, 30 s by default); torchrun, on
SIGTERM / SIGINT, forwards the same signal to its workers and SIGKILLs them 30 s later (a SIGUSR1 reaches the
workers only when the scheduler signals every process of the job, as ``srun`` does; set
``TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1`` for torchrun to forward it too).

:class:`StopSignals` (owned by the run, installed for its length) turns those signals into a flag and nothing
else; the loop reads it between steps through :class:`StopAgreement`, finishes the current step, writes a
checkpoint where ``--checkpoint-dir`` is set, and ``train`` exits with :data:`EXIT_STOPPED` after one line
(``train: stopped by SIGTERM after step 123 of 500; checkpoint ckpt/ckpt-step00000123.pt written; continue with
--resume``). A second SIGINT (Ctrl-C twice) raises :class:`Aborted` at once: one line, exit :data:`EXIT_ABORTED`,
nothing saved.

This module imports no torch at load time, so ``train`` installs the handlers before its slow imports.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Callable

EXIT_STOPPED = 75  # sysexits' EX_TEMPFAIL: stopped cleanly by a signal; requeue the job with --resume
EXIT_ABORTED = 130  # 128 + SIGINT, the shell's code for Ctrl-C: aborted by a second SIGINT, nothing saved

STOP_SIGNALS: tuple[int, ...] = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGINT")
                                      if hasattr(signal, name))


class Aborted(KeyboardInterrupt):
    """A second SIGINT while a stop was pending: the run ends at once, without a checkpoint."""


class Stopped(Exception):
    """The run stopped at a step boundary because of a signal; ``str()`` is its one line (without the
    ``train:`` prefix), for every rank; ``main`` prints it on rank 0 and exits with :data:`EXIT_STOPPED`."""


class StopSignals:
    """The run's signal handlers: SIGTERM, SIGUSR1 and a first SIGINT set :attr:`signal_name` (the first one
    received, e.g. ``"SIGTERM"``); a SIGINT after any of them raises :class:`Aborted` in the main thread.

    The handlers only set the flag (a first SIGINT also notes on stderr, rank 0, that a second one aborts): the
    loop decides where to stop. They act in the process that installed
    them only: a DataLoader worker forked from it (which inherits them, and gets a terminal's Ctrl-C and Slurm's
    SIGTERM too) ignores the signal and goes on serving batches until its parent stops. :meth:`install` keeps
    the previous handlers and :meth:`uninstall` puts them back (also as a context manager). Outside the main
    thread (signals cannot be caught there) both are no-ops and the flag stays clear.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    @property
    def requested(self) -> bool:
        """Whether a stop signal has arrived in this process."""
        return self.signal_name is not None

    def install(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return self
        self._pid = os.getpid()
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def _handle(self, signum: int, frame: object) -> None:
        if os.getpid() != self._pid:  # a forked worker: its parent decides
            return
        name = signal.Signals(signum).name
        if self.signal_name is not None and signum == getattr(signal, "SIGINT", None):
            raise Aborted(f"aborted by a second SIGINT (after {self.signal_name}): nothing saved")
        if self.signal_name is None:
            self.signal_name = name
            if signum == getattr(signal, "SIGINT", None) and os.environ.get("RANK", "0") == "0":
                # os.write, not print: the main thread may be inside a write to the same stream
                os.write(2, b"train: SIGINT: stopping after the current step (Ctrl-C again to abort at once)\n")


class StopAgreement:
    """When the loop stops: every rank at the same step, decided from every rank's :class:`StopSignals`.

    One process reads its flag after every step. Under DDP a signal may reach one rank only (``kill`` of one
    process, a node's own shutdown), so the ranks agree through ``vote`` (:func:`train.distributed.StopVote`): a
    non-blocking MAX all-reduce of the flag on a host (gloo) group, started after each step and read one step
    later. Every rank reads the same result after the same step, so all stop after step k + 1 when a rank had
    the signal by the end of step k. Why this and not a check at the log windows: the vote moves a 4-byte CPU
    tensor over gloo (no device synchronisation, no per-step ``.item()`` of a device tensor, no extra CUDA
    work) and by the time it is read, one step later, it has long completed; a stop costs one step of latency,
    where a window of ``--log-every`` steps could outlast torchrun's 30 s grace. :meth:`at_start` is one blocking
    vote before the first step (a signal during start-up or the loader's start stops the run there).

    Attributes:
        agreed: the ranks agreed to stop (the loop stops at the next step boundary it checks).
    """

    def __init__(self, signals: StopSignals, vote: Callable[[bool], Callable[[], bool]] | None = None) -> None:
        self.signals = signals
        self.vote = vote  # starts a vote on this rank's flag, returns the function that reads the agreed result
        self.agreed = False
        self._pending: Callable[[], bool] | None = None

    def at_start(self) -> bool:
        """One blocking vote before the first step; True: stop before training."""
        if self.vote is None:
            self.agreed = self.signals.requested
        else:
            self.agreed = self.vote(self.signals.requested)()
        return self.agreed

    def after_step(self) -> bool:
        """Called after every step; True: stop now (every rank returns True after the same step)."""
        if self.vote is None:
            self.agreed = self.agreed or self.signals.requested
            return self.agreed
        if self._pending is not None:
            self.agreed = self._pending()
            self._pending = None
        if not self.agreed:
            self._pending = self.vote(self.signals.requested)
        return self.agreed

    def finish(self) -> None:
        """Wait for a vote still in flight (every rank started the same votes), before the group is left."""
        if self._pending is not None:
            self._pending()
            self._pending = None


def stop_line(signal_name: str, step: int, total_steps: int, checkpoint_path: str | None,
              checkpoint_dir: object | None) -> str:
    """The one line of a run stopped by ``signal_name`` after ``step`` of ``total_steps`` steps (without the
    ``train:`` prefix)."""
    where = f"after step {step} of {total_steps}" if step else f"before the first step (of {total_steps})"
    if checkpoint_path is not None:
        saved = f"checkpoint {checkpoint_path} written; continue with --resume"
    elif checkpoint_dir is not None:
        saved = f"nothing new to save in {checkpoint_dir}; continue with --resume"
    else:
        saved = "no checkpoint (no --checkpoint-dir): the steps are lost"
    return f"stopped by {signal_name} {where}; {saved}"
