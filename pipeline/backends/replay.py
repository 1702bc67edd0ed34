"""The resume half of the :class:`~pipeline.backends.Loader` contract for backends whose epoch order depends only
on (seed, epoch, rank, worker): :func:`replay_from` (draw and drop the batches already trained) and
:class:`ReplayResume` (``iter_from`` / ``state_dict`` / ``load_state_dict`` / ``close`` / ``stats`` for such
backends: a resume replays the epoch's first batches, which reproduces them exactly).
"""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

from pipeline.backends import Batch, LoaderStats

T = TypeVar("T")


def replay_from(batches: Iterable[T], count: int) -> Iterator[T]:
    """An iterator over ``batches`` with its first ``count`` items drawn and dropped.

    Raises:
        RuntimeError: ``batches`` has fewer than ``count`` items.
    """
    it = iter(batches)
    for i in range(count):
        try:
            next(it)
        except StopIteration:
            raise RuntimeError(f"loader yielded {i} batches while skipping {count} already trained") from None
    return it


class ReplayResume:
    """The resume half of :class:`Loader` for backends whose epoch order depends only on (seed, epoch, rank,
    worker): a resume replays (reads and decodes, does not train) the batches already trained in the epoch."""

    def iter_from(self, batches_done: int) -> Iterator[Batch]:
        return replay_from(self, batches_done) if batches_done else iter(self)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: the position is reproduced by replay."""

    def close(self) -> None:
        """Nothing to stop."""

    def stats(self) -> LoaderStats:
        return LoaderStats()


__all__ = ["ReplayResume", "replay_from"]
