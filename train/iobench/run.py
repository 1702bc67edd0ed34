"""``io-bench`` measurements: where the input pipeline's time goes, and whether it holds the accelerator back.
:func:`run_io_bench` runs them, on the user's own shards and machine, in this order:

1. storage: raw sequential read rate of the train shards (page cache dropped first where the OS allows;
   :mod:`train.iobench.storage`);
2. stages: per-image cost of read / decode / augment / collate on one core for each backend that has a stage
   probe in the registry, measured by the backend's own code (:mod:`train.iobench.stages`), plus the
   host→device copy where an accelerator exists;
3. loader sweep: loader-only img/s (batches on the device, normalised, no model) for each backend and worker
   count, after warm-up batches, ``repeat`` windows each, median and spread (:mod:`train.iobench.sweep`);
4. compute-only: the training step fed by the ``synthetic`` backend (the same model, precision, batch and
   image size): its p_core, exactly as ``train --loader synthetic`` measures it (same code path;
   :mod:`train.iobench.e2e`);
5. end to end: ``train`` with each real backend: p_train, p_core, data wait (:mod:`train.iobench.e2e`);
6. a verdict (:mod:`train.verdict`, from :mod:`train.iobench.evidence`) with the levers: more workers (measured
   in the sweep, or extrapolated), DALI (measured), pre-resized shards (``shard-imagenet --max-size``;
   extrapolated from decoded pixels).

The options are :class:`~train.iobench.config.IoBenchConfig`, the result
:class:`~train.iobench.results.IoBenchResult`; both, and the progress pieces of :mod:`train.iobench.steps`, are
importable from here too.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

from pipeline.backends import LoaderKind, backend_spec
from pipeline.compat import check_numpy_interop
from train.iobench.config import IoBenchConfig
from train.iobench.e2e import measure_training
from train.iobench.evidence import end_to_end_lines, io_verdict, mean_pixels
from train.iobench.results import IoBenchResult, RateStats
from train.iobench.setup import BenchSetup, default_sweep, new_result, setup_run, usable_loaders
from train.iobench.stages import h2d_seconds_per_image, probe_stages
from train.iobench.steps import BenchProgress, BenchStep, numbered, planned_steps
from train.iobench.storage import storage_read_rate
from train.iobench.sweep import sweep_loaders, time_windows
from train.precision import prepare_tf32_env

STORAGE_READ_BYTES = 2 * 1024 ** 3  # at most this much of the train shards is read for the storage rate


def run_io_bench(config: IoBenchConfig, progress: Callable[[BenchStep], None] = print) -> IoBenchResult:
    """Measure everything listed in the module docstring; ``progress`` receives each step (a :class:`BenchStep`:
    its number, the run's total and what it measures) as it starts.

    Raises:
        pipeline.dataset.DatasetError: ``config.data`` is not a usable shard folder.
        ValueError: bad options.
    """
    check_numpy_interop()
    prepare_tf32_env(False)  # its training runs are fp32 without TF32, as train's default (MetaX: before CUDA starts)
    setup = setup_run(config, lambda what: None)  # numbered below, once the usable backends are known
    result = new_result(setup)
    loaders = usable_loaders(setup, result.skipped)
    setup = dataclasses.replace(setup, progress=numbered(progress, planned_steps(setup.sweep, loaders)))
    measure_input(setup, result, loaders)
    measure_training(setup, result, loaders)
    verdict = io_verdict(config, result, setup.info, setup.cores)
    if verdict is not None:
        verdict = dataclasses.replace(verdict, lines=verdict.lines + tuple(end_to_end_lines(result)))
    result.verdict = verdict
    return result


def measure_input(setup: BenchSetup, result: IoBenchResult, loaders: Sequence[LoaderKind]) -> None:
    """Storage read rate, per-stage costs (backends with a stage probe), the host→device copy and the
    loader-only sweep, into ``result``."""
    config = setup.config
    setup.progress("storage: reading the train shards")
    result.storage = storage_read_rate(setup.info, "train", max_bytes=STORAGE_READ_BYTES, cold=True)
    for kind in (k for k in loaders if backend_spec(k).stage_probe is not None):
        setup.progress(f"stages: {kind.value}")
        tree = setup.inputs(kind)[1]  # the image tree of image-tree backends, else None
        result.stages[kind.value] = probe_stages(kind, config.loader_config(0, tree), setup.info,
                                                 config.stage_samples)
    result.h2d_seconds_per_image = h2d_seconds_per_image(config.batch_size, config.image_size, setup.device)
    # Loader-only: the main process only receives batches; on a CPU device its idle OpenMP threads would
    # otherwise spin and take cores from the loader's workers (measured here: 4x fewer img/s at 2 cores).
    threads = torch.get_num_threads()
    if setup.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        sweep_loaders(setup, result, loaders)
    finally:
        torch.set_num_threads(threads)


__all__ = ["IoBenchConfig", "IoBenchResult", "RateStats", "run_io_bench", "default_sweep", "time_windows",
           "mean_pixels", "BenchStep", "BenchProgress", "planned_steps", "measure_input"]
