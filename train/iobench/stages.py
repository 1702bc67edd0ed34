"""io-bench's per-stage cost of a decode backend: :func:`measure_stages` hands the measurement to the backend's
own probe in the registry (``backend_spec(kind).probe()``), so the figures come from the code that trains.

The stages are ``read`` (shard / file bytes), ``decode`` (JPEG → RGB), ``augment`` (crop, resize, flip) and
``collate`` (assembling the batch), in seconds per image on one core. A backend's module (DALI's included) is
imported only when its probe runs: a CPU-only install never imports DALI.
"""

from __future__ import annotations

from pipeline.backends import STAGES, LoaderConfig, LoaderKind, Split, backend_spec
from pipeline.backends.probe import StageCosts
from pipeline.dataset import DatasetInfo


def measure_stages(kind: LoaderKind | str, info: DatasetInfo | None, data_root, image_size: int, batch_size: int,
                   max_samples: int, split: Split | str = Split.TRAIN) -> StageCosts:
    """Measure the per-stage cost of backend ``kind`` on ``split``, in process, on one core, with its own probe.

    Args:
        kind: a backend with a ``stage_probe`` (``cpu``, ``dali`` read ``info``'s shards; ``folder`` reads
            ``data_root/<split>``).
        info: the shard folder (shard backends); unused by ``folder``.
        data_root: the ImageFolder root (``folder``); unused by the others.
        max_samples: images to time (after one untimed warm-up batch); fewer when the split ends first
            (``cpu``, ``folder``).

    Returns:
        :class:`StageCosts`: seconds per image for each of :data:`STAGES`.

    Raises:
        ValueError: an unknown kind or one without stages (``synthetic``), missing inputs, bad options, or DALI
            not installed (``dali``).
    """
    spec = backend_spec(kind)
    cfg = LoaderConfig(batch_size=batch_size, image_size=image_size, data_root=data_root)
    return spec.probe()(spec.kind, cfg, Split(split), info, max_samples)


__all__ = ["STAGES", "StageCosts", "measure_stages"]
