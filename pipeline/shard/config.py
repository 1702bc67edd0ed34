"""Config: the options of one sharding run (:class:`ShardConfig`, the one schema ``shard-imagenet``'s flags come
from) and their defaults (:func:`default_workers`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.hostinfo import available_cores
from pipeline.shard.clean import DEFAULT_MAX_PIXELS, DEFAULT_QUALITY
from pipeline.source import LayoutOptions


def default_workers() -> int:
    """CPU cores this process may use (:func:`pipeline.hostinfo.available_cores`): the default ``--workers`` of
    ``shard-imagenet`` and its ``verify``."""
    return available_cores()


@dataclass(frozen=True)
class ShardConfig:
    """Options of one sharding run.

    Attributes:
        src: source root (any layout :func:`pipeline.source.scan_source` detects).
        out: output folder (created if needed).
        shard_size: input files per tar (a tar holds fewer samples when some files are rejected).
        seed: seed of the global train shuffle.
        workers: processes, each writing whole shards.
        quality: JPEG quality for images that must be re-encoded.
        max_pixels: decompression-bomb threshold (pixels): larger images are downscaled to it.
        max_size: optional longer-side limit (px); larger images are downscaled and re-encoded.
        resume: keep complete shards of an earlier, identical run (False: rewrite this job's shards).
        num_jobs / job_index: this run writes shards ``t`` with ``t % num_jobs == job_index``.
        layout: how to read ``src`` (detected by default).
        progress: show progress on stderr: a tqdm bar on a terminal, plain lines without ``\r`` otherwise
            (:mod:`pipeline.progress`).
    """

    src: Path
    out: Path = Path("imagenet-shards")
    shard_size: int = 1000
    seed: int = 0
    workers: int = field(default_factory=default_workers)
    quality: int = DEFAULT_QUALITY
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_size: int | None = None
    resume: bool = True
    num_jobs: int = 1
    job_index: int = 0
    layout: LayoutOptions = field(default_factory=LayoutOptions)
    progress: bool = True

    def validate(self) -> None:
        """Raises ValueError naming the bad option."""
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"--quality must be in 1..100, got {self.quality}")
        if self.max_pixels < 1 or (self.max_size is not None and self.max_size < 1):
            raise ValueError("--max-pixels and --max-size must be >= 1")
        if self.num_jobs < 1 or not 0 <= self.job_index < self.num_jobs:
            raise ValueError(f"--job-index must be in [0, --num-jobs={self.num_jobs}), got {self.job_index}")
