"""io-bench's training runs, through :func:`train.run.run` (the one public way into training, and this package's
only import of it): the compute-only run (the ``synthetic`` backend: p_core, as ``train --loader synthetic``
measures it) and one end-to-end run per real backend (p_train, p_core, data wait), with the
:class:`~train.config.TrainConfig` that ``train``'s flags would make (:func:`train_config`)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Sequence

from pipeline.backends import DataInput, LoaderKind, backend_spec
from train.config import OptimConfig, TrainConfig
from train.iobench.config import IoBenchConfig
from train.iobench.results import ComputeOnly, EndToEnd, IoBenchResult
from train.iobench.setup import BenchSetup


def train_config(config: IoBenchConfig, kind: LoaderKind, workers: int, folder_root: Path | None) -> TrainConfig:
    """The training run io-bench makes with backend ``kind`` and ``workers`` loader workers: io-bench's batch,
    image size, precision and seed (model init and data order, from :meth:`IoBenchConfig.loader_config`),
    ``warmup_steps + train_steps`` steps, no evaluation; image-tree backends read ``folder_root``."""
    data = folder_root if backend_spec(kind).needs is DataInput.IMAGE_TREE else config.data
    loader_cfg = config.loader_config(workers)
    return TrainConfig(data=data, loader=kind, loader_cfg=loader_cfg, optim=OptimConfig(warmup_epochs=0.0),
                       epochs=10 ** 6, max_steps=config.warmup_steps + config.train_steps,
                       precision=config.precision, seed=loader_cfg.seed, eval=False,
                       warmup_steps=config.warmup_steps)


def run_quiet(cfg: TrainConfig, log: io.StringIO):
    """:func:`train.run.run` of ``cfg`` with its stdout and stderr into ``log``; returns its report."""
    from train.run import run

    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        return run(cfg)


def measure_training(setup: BenchSetup, result: IoBenchResult, loaders: Sequence[LoaderKind]) -> None:
    """The compute-only run (synthetic backend) and one end-to-end run per backend with all cores as workers, into
    ``result.compute`` / ``result.end_to_end``: the one place that reads ``train``'s results."""
    config, log = setup.config, io.StringIO()
    setup.progress(f"compute-only: {config.train_steps} steps with the synthetic backend")
    report = run_quiet(train_config(config, LoaderKind.SYNTHETIC, 0, setup.folder_root), log)
    result.compute = ComputeOnly(report.p_core, report.p_train, report.precision, report.device,
                                 report.device_name, report.steps)
    for kind in loaders:
        setup.progress(f"end to end: {kind.value}, {config.train_steps} steps, {setup.cores} worker(s)")
        report = run_quiet(train_config(config, kind, setup.cores, setup.folder_root), log)
        result.end_to_end[kind.value] = EndToEnd(report.p_core, report.p_train, report.data_wait_fraction,
                                                 report.steps)


__all__ = ["measure_training", "run_quiet", "train_config"]
