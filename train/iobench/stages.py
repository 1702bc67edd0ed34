"""io-bench's per-stage cost of a decode backend: :func:`probe_stages` (and :func:`measure_stages`, its form with
the options spelled out) hands the measurement to the backend's own probe in the registry
(``backend_spec(kind).probe()``), so the figures come from the code that trains; :func:`h2d_seconds_per_image`
times the host→device copy that follows on an accelerator.

The stages are ``read`` (shard / file bytes), ``decode`` (JPEG → RGB), ``augment`` (crop, resize, flip) and
``collate`` (assembling the batch), in seconds per image on one core (a
:class:`~pipeline.backends.StageSeconds`, whose ``h2d`` field carries the copy). A backend's module (DALI's
included) is imported only when its probe runs: a CPU-only install never imports DALI.
"""

from __future__ import annotations

import time

import torch

from pipeline.backends import STAGES, FolderConfig, LoaderConfig, LoaderKind, Split, StageSeconds, backend_spec
from pipeline.backends.probe import StageCosts
from pipeline.dataset import DatasetInfo


def probe_stages(kind: LoaderKind | str, cfg: LoaderConfig, info: DatasetInfo | None, max_samples: int,
                 split: Split | str = Split.TRAIN) -> StageCosts:
    """Measure the per-stage cost of backend ``kind`` on ``split`` with the loader options ``cfg`` (batch size,
    image size, seed; the ``folder`` backend's :class:`~pipeline.backends.FolderConfig`), in process, on one
    core, with its own probe.

    Args:
        kind: a backend with a ``stage_probe`` (``cpu``, ``dali`` read ``info``'s shards; ``folder`` reads
            its ``data_root/<split>``).
        info: the shard folder (shard backends); unused by ``folder``.
        max_samples: images to time (after one untimed warm-up batch); fewer when the split ends first
            (``cpu``, ``folder``).

    Returns:
        :class:`StageCosts`: seconds per image for each of :data:`STAGES`.

    Raises:
        ValueError: an unknown kind or one without stages (``synthetic``), missing inputs, bad options, or DALI
            not installed (``dali``).
    """
    spec = backend_spec(kind)
    return spec.probe()(spec.kind, cfg, Split(split), info, max_samples)


def measure_stages(kind: LoaderKind | str, info: DatasetInfo | None, data_root, image_size: int, batch_size: int,
                   max_samples: int, split: Split | str = Split.TRAIN) -> StageCosts:
    """:func:`probe_stages` with the loader's other options at their defaults: ``data_root`` is the ImageFolder
    root (``folder``; unused by the others), ``image_size`` / ``batch_size`` the batches' (same errors)."""
    options = (FolderConfig(data_root=data_root),) if data_root is not None else ()
    cfg = LoaderConfig(batch_size=batch_size, image_size=image_size, options=options)
    return probe_stages(kind, cfg, info, max_samples, split)


def h2d_seconds_per_image(batch_size: int, image_size: int, device: torch.device, repeat: int = 10) -> float | None:
    """Seconds per image of a pinned uint8 NHWC batch copied to ``device`` and normalised there; None on CPU."""
    if device.type != "cuda":
        return None
    from pipeline.backends.staging import normalize_on_device

    host = torch.empty((batch_size, image_size, image_size, 3), dtype=torch.uint8).pin_memory()
    normalize_on_device(host, device)
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        normalize_on_device(host, device)
    torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / (repeat * batch_size)


__all__ = ["STAGES", "StageCosts", "StageSeconds", "h2d_seconds_per_image", "measure_stages", "probe_stages"]
