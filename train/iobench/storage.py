"""How fast the storage itself delivers a split's shard bytes: :func:`storage_read_rate` reads the shard files
sequentially, after asking the kernel to drop them from the page cache (where the filesystem lets it), and
returns a :class:`ReadRate`. Feeds ``io-bench``'s storage line.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

from pipeline.backends import Split
from pipeline.dataset import DatasetInfo
from pipeline.fsio import drop_cache

READ_CHUNK = 1 << 20  # bytes per read() of storage_read_rate
# Filesystems whose page cache posix_fadvise cannot drop (the files live in memory) or may not reach (the
# server's cache).
MEMORY_FS = frozenset({"tmpfs", "ramfs", "devtmpfs", "rootfs", "hugetlbfs"})
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse", "fuse.sshfs", "fuse.s3fs",
                        "fuse.gcsfuse", "fuse.mountpoint-s3", "fuse.juicefs", "fuse.glusterfs", "lustre", "gpfs",
                        "ceph", "fuse.ceph", "beegfs", "virtiofs", "afs"})


@dataclass(frozen=True)
class ReadRate:
    """Sequential read rate of a split's shard files.

    Attributes:
        bytes: bytes read.
        samples: samples those bytes hold (a partly read shard counts in proportion to its bytes read).
        seconds: wall time of the reads.
        cold: True when the files were dropped from the local page cache first.
        note: how it was measured, and caveats.
    """

    bytes: int
    samples: int
    seconds: float
    cold: bool
    note: str

    @property
    def mb_per_s(self) -> float:
        """Megabytes (1e6 bytes) per second."""
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else math.inf

    @property
    def img_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else math.inf

    def to_json(self) -> dict:
        return {"bytes": self.bytes, "samples": self.samples, "seconds": self.seconds, "cold": self.cold,
                "mb_per_s": self.mb_per_s, "img_per_s": self.img_per_s, "note": self.note}


def fs_type(path: str) -> str:
    """Filesystem type of the mount holding ``path`` (from /proc/self/mounts), or ``""`` when unknown."""
    try:
        real = os.path.realpath(path)
        best, kind = "", ""
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = mnt, parts[2]
        return kind
    except OSError:
        return ""


def _cache_plan(info: DatasetInfo, paths: list[str], cold: bool) -> tuple[bool, list[str]]:
    """(whether to drop each local file from the page cache, caveats) for reading ``paths``."""
    if info.remote:
        return False, ["streamed from a URL: the remote side's caches cannot be dropped (cold=False)" if cold
                       else "streamed from a URL"]
    if not cold:
        return False, []
    fs = fs_type(paths[0]) if paths else ""
    if fs in MEMORY_FS:
        return False, [f"the shards are on {fs} (in memory): could not drop the page cache: warm-cache rate"]
    if fs in NETWORK_FS or fs.startswith("fuse"):
        return True, [f"the shards are on {fs}: posix_fadvise drops only this machine's page cache, not the "
                      f"server's, so the rate may be partly warm"]
    return True, []


def _read_remote(url: str, budget: float) -> tuple[int, float]:
    """Stream up to ``budget`` bytes of ``url``: (bytes read, seconds)."""
    from pipeline.read.tarstream import open_shard

    got = 0
    t0 = time.perf_counter()
    with open_shard(url) as f:
        while got < budget:
            chunk = f.read(int(min(READ_CHUNK, budget - got)))
            if not chunk:
                break
            got += len(chunk)
    return got, time.perf_counter() - t0


def _read_local(path: str, budget: float, buf: bytearray, drop: bool) -> tuple[int, int, float, str | None]:
    """Read up to ``budget`` bytes of ``path`` (dropped from the page cache first with ``drop``): (bytes read,
    file size, seconds, why the cache could not be dropped or None)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        why = drop_cache(fd, sync=True) if drop else None
        view = memoryview(buf)
        got = 0
        t0 = time.perf_counter()
        while got < budget:
            n = os.readv(fd, [view[:int(min(READ_CHUNK, budget - got))]])
            if n == 0:
                break
            got += n
        return got, size, time.perf_counter() - t0, why
    finally:
        os.close(fd)


def storage_read_rate(info: DatasetInfo, split: str = "train", max_bytes: int | None = None,
                      cold: bool = True) -> ReadRate:
    """Read the shard files of ``split`` sequentially (1 MiB reads, whole files, at most ``max_bytes`` in all).

    With ``cold``, each local file is first dropped from the page cache (:func:`pipeline.fsio.drop_cache`); where
    that is impossible the result says ``cold=False`` and why. URL datasets are streamed through
    :func:`pipeline.read.tarstream.open_shard` (``cold=False``: no cache can be dropped from here).

    Raises:
        ValueError: ``max_bytes`` < 1.
        pipeline.read.tarstream.ShardReadError: a shard cannot be opened.
    """
    split = split.value if isinstance(split, Split) else str(split)
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    sinfo, paths = info.split(split), info.shard_paths(split)
    manifest = {name: e.bytes for name, e in info.shard_entries().items()}
    limit = math.inf if max_bytes is None else max_bytes
    buf = bytearray(READ_CHUNK)
    total, samples_f, seconds = 0, 0.0, 0.0
    dropped, notes = _cache_plan(info, paths, cold)
    for path, length, fname in zip(paths, sinfo.shard_lengths, sinfo.filenames):
        if total >= limit:
            break
        if info.remote:
            got, dt = _read_remote(path, limit - total)
            size = manifest.get(fname)
            complete = total + got < limit or (size is not None and got >= size)
        else:
            got, size, dt, why = _read_local(path, limit - total, buf, dropped)
            if why is not None:
                dropped = False
                notes.append(f"{why}: could not drop the page cache: warm-cache rate")
            complete = got >= size
        total, seconds = total + got, seconds + dt
        if complete:
            samples_f += length
        elif size:
            samples_f += length * got / size
        # a partly streamed shard of unknown size adds no samples
    how = "cold (page cache dropped with posix_fadvise)" if dropped else "warm-cache" if not info.remote else "remote"
    notes.insert(0, f"sequential {READ_CHUNK >> 20} MiB reads of {split} shard files, {how}")
    return ReadRate(bytes=total, samples=int(round(samples_f)), seconds=seconds, cold=dropped, note="; ".join(notes))


__all__ = ["MEMORY_FS", "NETWORK_FS", "READ_CHUNK", "ReadRate", "fs_type", "storage_read_rate"]
