"""The one public way into training: :func:`run` takes a :class:`train.config.TrainConfig`, trains and evaluates
it (:func:`fit`) or evaluates a checkpoint (``--test-only``, :func:`test_only`) and returns its
:class:`train.report.RunReport`, rank 0 printing its summary and writing its metrics JSON. ``train`` (the command)
and io-bench's end-to-end runs both call it; nothing outside ``train/`` reaches into the loop.
"""

from __future__ import annotations

import time

from pipeline.compat import check_numpy_interop
from train import accelerator, distributed, preempt
from train.assemble import test_report, train_report
from train.config import TrainConfig
from train.loop import evaluate_checkpoint, log_line
from train.plot import plot_run
from train.precision import Precision
from train.report import RunReport
from train.trainer import Trainer


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


def fit(cfg: TrainConfig, env: distributed.DistEnv, run_start: float | None = None,
        signals: preempt.StopSignals | None = None) -> RunReport:
    """Train ``cfg``'s run in this process (one rank) and report it (see :func:`run`); ``signals`` (installed by
    the caller) stop it at a step boundary. ``--plot``: rank 0 draws the step log after the report.

    Raises:
        train.preempt.Stopped: a signal stopped the run (its checkpoint written); no report.
    """
    report = train_report(Trainer.start(cfg, env, signals, run_start).train())
    publish(report, cfg, env)
    if cfg.plot_path is not None and env.is_main:
        log_line(env, plot_run(cfg.step_log_path, report.row(), cfg.plot_path))
    return report


def test_only(cfg: TrainConfig, env: distributed.DistEnv, run_start: float | None = None) -> RunReport:
    """Evaluate a checkpoint on the val split (every image once over all ranks): top-1 / top-5 and the FlagPerf row
    (no training: p_whole / p_train / p_core are ``/``). Returns the report (see :func:`run`).

    Raises:
        ValueError / CheckpointError: no checkpoint, or one of another model / class count.
    """
    report = test_report(cfg, env, evaluate_checkpoint(cfg, env), run_start)
    publish(report, cfg, env)
    return report


def publish(report: RunReport, cfg: TrainConfig, env: distributed.DistEnv) -> None:
    """Rank 0 prints the summary and writes the metrics JSON (atomically, see :func:`pipeline.fsio.atomic_write`).

    Raises:
        pipeline.fsio.WriteFailed: the JSON cannot be written (disk full, ...); one line, the previous file intact.
    """
    if env.is_main:
        print(report.summary())
        report.write_json(cfg.metrics_path)


GPU_ONLY_PRECISIONS = (Precision.AMP, Precision.FP16, Precision.HALF)
"""Precisions that only make sense on an accelerator (float16 autocast, 16-bit casts): on the CPU they are slower
than fp32 (see :mod:`train.precision`), so ``--device auto`` without a usable GPU refuses them."""


def _gpu_only_asks(cfg: TrainConfig) -> tuple[str, ...]:
    """The flags of ``cfg`` that ask for a GPU, as typed: a GPU decode backend (``--loader dali`` / ``nvjpeg``,
    :attr:`pipeline.backends.BackendSpec.needs_nvidia`), a GPU-only precision (:data:`GPU_ONLY_PRECISIONS`)."""
    from pipeline.backends import backend_spec

    asks = (f"--loader {cfg.loader.value}",) if backend_spec(cfg.loader).needs_nvidia else ()
    return asks + ((f"--precision {cfg.precision.value}",) if cfg.precision in GPU_ONLY_PRECISIONS else ())


__all__ = ["GPU_ONLY_PRECISIONS", "fit", "publish", "run", "test_only"]
