"""io-bench's options: :class:`IoBenchConfig` (what ``io-bench``'s flags fill in), the one place the loaders it
builds get their options (:meth:`IoBenchConfig.loader_config`, the seed included), and :data:`PRIMARY`, the
backend the verdict is about."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.backends import FolderConfig, LoaderConfig, LoaderKind
from train.precision import Precision

# The backend the verdict is about (the sweep's first otherwise) and whose stage timers are checked against the
# loader's wall time at 1 worker (``stage_fidelity``): the default training backend.
PRIMARY = LoaderKind.CPU


@dataclass(frozen=True)
class IoBenchConfig:
    """Options of one io-bench run.

    Attributes:
        data: shard folder written by shard-imagenet (or its URL prefix: the cpu backend only).
        loaders: backends to measure (unavailable ones are skipped with the reason in the report, as are dali and
            nvjpeg on a ``cuda`` device that is not NVIDIA's; any backend that reads data, nvjpeg included; those
            without a stage probe get no per-stage line).
        workers: worker counts of the sweep; None = 1, 2, 4, ... and the number of cores.
        batch_size, image_size, precision: of the loaders and of the training step.
        repeat: timed windows per sweep point; loader_batches: batches per window (at least 5 per worker);
            warmup_batches: untimed batches first (plus one per worker).
        train_steps: measured steps of the compute-only and end-to-end training runs (after ``warmup_steps``).
        warmup_steps: training steps run first and left out of the rates.
        stage_samples: images per backend in the per-stage measurement.
        folder_root: ImageFolder tree for the ``folder`` baseline (None: the source recorded in the shard
            folder's ``report.json`` when it is a local class-folder tree).
        max_size: ``--max-size`` value the pre-resized-shards lever is extrapolated for (None: 1.43 x image size,
            i.e. 320 px for 224).
        device: where batches go and the step runs (None: CUDA when available, else CPU).
        seed: the one seed of every loader io-bench builds (shard order, shuffle buffer, crops) and of its
            training runs (model init and data order): :meth:`loader_config` passes it on, and the training runs
            take it from there (the loader's default, ``train``'s ``--seed`` default).

    Raises:
        ValueError: a count below its minimum (one line naming the flag).
    """

    data: Path | str
    loaders: tuple[LoaderKind, ...] = (LoaderKind.CPU, LoaderKind.DALI, LoaderKind.FOLDER)
    workers: tuple[int, ...] | None = None
    batch_size: int = 64
    image_size: int = 224
    precision: Precision = Precision.AUTO
    repeat: int = 3
    loader_batches: int = 10
    warmup_batches: int = 2
    train_steps: int = 10
    warmup_steps: int = 2
    stage_samples: int = 256
    folder_root: Path | None = None
    max_size: int | None = None
    device: str | None = None
    seed: int = LoaderConfig.seed

    def __post_init__(self) -> None:
        for flag, value, low in (("--batch-size", self.batch_size, 1), ("--image-size", self.image_size, 8),
                                 ("--repeat", self.repeat, 1), ("--loader-batches", self.loader_batches, 1),
                                 ("--steps", self.train_steps, 1), ("--warmup-batches", self.warmup_batches, 0),
                                 ("--warmup-steps", self.warmup_steps, 0), ("stage_samples", self.stage_samples, 1)):
            if value < low:
                raise ValueError(f"{flag} must be >= {low}, got {value}")

    def loader_config(self, workers: int, data_root: Path | str | None = None) -> LoaderConfig:
        """The options of a loader io-bench builds with ``workers`` worker processes (0: in process): this
        config's batch size, image size and seed, and (given ``data_root``) the ``folder`` backend's image tree
        (:class:`~pipeline.backends.FolderConfig`)."""
        options = (FolderConfig(data_root=data_root),) if data_root is not None else ()
        return LoaderConfig(batch_size=self.batch_size, image_size=self.image_size, workers=workers, seed=self.seed,
                            options=options)


__all__ = ["PRIMARY", "IoBenchConfig"]
