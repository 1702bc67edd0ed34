"""The ``dali`` backend's stage measurement for io-bench (its registry ``stage_probe``): :func:`measure_stages`
times partial pipelines cut from the loader's own graph (:func:`pipeline.backends.dali_graph.make_graph`) and
reports the differences as seconds per image (:class:`~pipeline.backends.StageSeconds` in a
:class:`~pipeline.backends.probe.StageCosts`); :func:`time_graph` times one of them.

The loader times no stage while it trains (DALI's executor overlaps them), hence this separate measurement.
"""

from __future__ import annotations

import time

import torch

from pipeline.backends import LoaderConfig, Split, StageSeconds
from pipeline.backends.dali_graph import (GRAPH_STAGES, check_options, checked_shards, failure, host_batch,
                                          import_dali, make_graph)
from pipeline.backends.probe import StageCosts, check_probe_options, one_torch_thread, profiling_config
from pipeline.dataset import DatasetInfo


def time_graph(graph, batches: int, copy_out=None) -> tuple[float, float]:
    """Build ``graph`` with the synchronous executor (``run()`` returns when that iteration's work is done, so its
    time is that work), run it once untimed, then ``batches`` times: returns (seconds of the runs, seconds of
    ``copy_out(images, labels)`` on each output, not included in the first; 0 without ``copy_out``)."""
    pipe = graph(exec_pipelined=False, exec_async=False, prefetch_queue_depth=1)
    pipe.build()
    pipe.run()  # warm-up
    clock = time.perf_counter
    copy = 0.0
    t0 = clock()
    for _ in range(batches):
        images, labels = pipe.run()
        if copy_out is not None:
            t1 = clock()
            copy_out(images, labels)
            copy += clock() - t1
    return clock() - t0 - copy, copy


def measure_stages(kind, cfg: LoaderConfig, split: Split | str, info: DatasetInfo | None,
                   max_samples: int) -> StageCosts:
    """Per-stage cost of the ``dali`` backend (``kind`` is ``"dali"``), in seconds per image with one DALI thread,
    by difference of partial pipelines that :func:`~pipeline.backends.dali_graph.make_graph` builds from the
    loader's own graph: read = the reader alone, decode = (reader + decoder) - read, augment = the whole graph -
    (reader + decoder), collate = copy of the output to a host batch. Each graph runs ``ceil(max_samples /
    batch size)`` timed batches after one untimed one; a negative difference (noise) counts 0. The decode runs
    on the GPU (``mixed``) where CUDA is available, else on the CPU.

    Raises:
        ValueError: DALI is not installed (the install hint), bad options, no local shard folder, a shard that
            fails the checks of :func:`~pipeline.backends.dali_graph.checked_shards`, or DALI failing to read the
            shards (one line each).
    """
    import_dali()
    split = Split(split)
    check_probe_options(cfg, max_samples)
    pcfg = profiling_config(cfg)  # workers=0: one DALI thread; uint8 output
    check_options(pcfg, info, 0, 1)
    shards = checked_shards(info, split.value)
    cuda = torch.cuda.is_available()
    device_id = torch.cuda.current_device() if cuda else None
    train = split is Split.TRAIN
    batches = max(1, -(-max_samples // cfg.batch_size))
    to_host = (lambda images, labels: host_batch(images.as_cpu(), labels.as_cpu())) if cuda else host_batch
    run_s, copy_s = {}, 0.0
    with one_torch_thread():
        for stage in GRAPH_STAGES:
            graph = make_graph(pcfg, train, shards, 0, 1, device_id, last_stage=stage)
            try:
                run_s[stage], copy_s = time_graph(graph, batches, to_host if stage == GRAPH_STAGES[-1] else None)
            except RuntimeError as exc:
                raise failure(exc, split.value, info.root) from None
    n = batches * cfg.batch_size
    spent = StageSeconds(read=max(0.0, run_s["read"]), decode=max(0.0, run_s["decode"] - run_s["read"]),
                         augment=max(0.0, run_s["augment"] - run_s["decode"]), collate=copy_s)
    where = "mixed (GPU) decode" if cuda else "CPU"
    crop = ("decode includes the random crop (DALI decodes only the crop region, ROI decode)" if train
            else "val decodes whole images")
    return StageCosts("dali", n, spent / n, run_s["augment"] + copy_s,
                      note=f"DALI ({where}, num_threads=1): by difference of partial pipelines (reader; + decoder; "
                           f"+ resize/crop/mirror), collate = copy of the output to a host batch; {crop}")


__all__ = ["measure_stages", "time_graph"]
