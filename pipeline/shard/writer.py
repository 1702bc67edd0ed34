"""Writer: write one webdataset tar + its ``.idx`` atomically (under a temporary name, renamed when complete)
and deterministically.

Members are written in GNU tar format (never PAX: DALI's webdataset reader does not parse PAX headers)
with fixed owner, mode and mtime, so the same samples always give byte-identical shards. Next to each
``NAME.tar`` the writer puts ``NAME.idx``, the index DALI's ``fn.readers.webdataset`` takes, in the format
of DALI's ``wds2idx`` tool (v1.2): a line ``v1.2 <samples>``, then one line per sample listing
``<ext> <data offset> <size> <member name>`` for each of its members, in tar order.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

TMP_SUFFIX = ".tmp"
IDX_VERSION = "v1.2"
_MTIME = 946684800  # 2000-01-01T00:00:00Z: a fixed member mtime makes shards reproducible
_FULL = ("its file system is full: free space there (or choose another --out) and run the same command again; "
         "complete shards are kept and a partial one is only a .tmp file")
_ADVICE = {
    errno.ENOSPC: _FULL,
    errno.EDQUOT: _FULL,
    errno.EROFS: "it is on a read-only file system: choose a writable --out",
    errno.EACCES: "no permission to write there: choose a writable --out or fix its permissions",
    errno.EPERM: "no permission to write there: choose a writable --out or fix its permissions",
    errno.EEXIST: "a file stands where a folder is needed: choose another --out or move that file away",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another --out or move that file away",
    errno.EFBIG: "its file system cannot hold a file this large: choose another --out or a smaller --shard-size",
}


class OutputError(RuntimeError):
    """The output folder cannot be written; the message (one line) names the path, why, and what to do."""


def output_error(exc: OSError, fallback: Path) -> OutputError:
    """The :class:`OutputError` for ``exc``, raised while writing the output; it names ``exc.filename``, or
    ``fallback`` (the folder) when the error has none (a failed ``write``, e.g. disk full)."""
    path = exc.filename if exc.filename is not None else fallback
    advice = _ADVICE.get(exc.errno, "check --out and run the same command again (complete shards are kept)")
    return OutputError(f"{os.fsdecode(path)}: cannot write ({exc.strerror or exc}); {advice}")


@dataclass(frozen=True)
class ShardRecord:
    """One finished shard.

    Attributes:
        filename: the tar's name inside the output folder.
        num_samples: samples in it (> 0: no empty shard is ever written).
        num_bytes: size of the tar file in bytes.
        sha256: hex digest of the tar file.
    """

    filename: str
    num_samples: int
    num_bytes: int
    sha256: str


class _HashingFile(io.RawIOBase):
    """A write-only file that also feeds a sha256 and counts bytes."""

    def __init__(self, path: Path):
        self._f = open(path, "wb")
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self._f.write(b)

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
        super().close()

    def discard(self) -> None:
        """Close the file after a write error, without fsync; a failing flush is ignored (the file is closed
        all the same), and what reached the disk stays."""
        try:
            self._f.close()
        except OSError:
            pass
        super().close()


class ShardWriter:
    """Write samples into numbered tar shards of at most ``shard_size`` samples each.

    A shard is opened on its first sample (so no empty shard exists), written to ``NAME.tmp``, and renamed
    to ``NAME`` only once it is complete and flushed to disk.

    Args:
        out_dir: folder that receives the shards.
        name_pattern: ``str.format`` pattern with an ``{index}`` field, e.g. ``"imagenet-train-{index:06d}.tar"``.
        shard_size: samples per shard (> 0).

    Raises:
        ValueError: ``shard_size`` < 1, or a member name that would not round-trip through webdataset.
    """

    def __init__(self, out_dir: Path, name_pattern: str, shard_size: int):
        if shard_size < 1:
            raise ValueError(f"shard size must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.name_pattern = name_pattern
        self.shard_size = shard_size
        self.records: list[ShardRecord] = []
        self._tar: tarfile.TarFile | None = None
        self._file: _HashingFile | None = None
        self._count = 0
        self._index: list[str] = []

    def _open(self) -> None:
        name = self.name_pattern.format(index=len(self.records))
        self._file = _HashingFile(self.out_dir / (name + TMP_SUFFIX))
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.GNU_FORMAT)
        self._count = 0
        self._index = []

    def _finish(self) -> None:
        assert self._tar is not None and self._file is not None
        self._tar.close()
        self._file.close()
        name = self.name_pattern.format(index=len(self.records))
        idx = self.out_dir / index_name(name)
        with open(idx.with_name(idx.name + TMP_SUFFIX), "w") as f:
            f.write(f"{IDX_VERSION} {self._count}\n")
            f.write("".join(line + "\n" for line in self._index))
            f.flush()
            os.fsync(f.fileno())
        os.replace(idx.with_name(idx.name + TMP_SUFFIX), idx)  # index first: a renamed tar always has one
        os.replace(self.out_dir / (name + TMP_SUFFIX), self.out_dir / name)
        self.records.append(ShardRecord(name, self._count, self._file.size, self._file.sha.hexdigest()))
        self._tar = None
        self._file = None

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Append one sample: ``members`` maps an extension (``"jpg"``, ``"cls"``, ...) to its bytes.

        Raises:
            ValueError: the key contains a dot or a slash (webdataset splits names at the first dot).
        """
        if "." in key or "/" in key or not key:
            raise ValueError(f"sample key {key!r} must be non-empty and contain no '.' or '/'")
        if self._tar is None:
            self._open()
        assert self._tar is not None
        entries = []
        for ext, payload in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(payload)
            info.mtime = _MTIME
            info.mode = 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(payload))
            # the data ends where the tar now stands, before padding to the 512-byte block
            data_offset = self._tar.offset - (-(-len(payload) // 512) * 512)
            entries.append(f"{ext} {data_offset} {len(payload)} {info.name}")
        self._index.append(" ".join(entries))
        self._count += 1
        if self._count >= self.shard_size:
            self._finish()

    def close(self) -> list[ShardRecord]:
        """Finish the open shard (if any) and return the records of every shard written."""
        if self._tar is not None:
            self._finish()
        return self.records

    def abort(self) -> None:
        """Give up the open shard after an error: its file is closed and stays under its ``.tmp`` name (the
        next run removes it); finished shards are kept."""
        if self._file is not None:
            self._file.discard()
        self._tar = None
        self._file = None


def index_name(tar_name: str) -> str:
    """``imagenet-train-000000.tar`` → ``imagenet-train-000000.idx`` (what ``wds2idx`` names it)."""
    return tar_name[:-4] + ".idx" if tar_name.endswith(".tar") else tar_name + ".idx"
