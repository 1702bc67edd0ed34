"""Writer: write one webdataset tar + its ``.idx`` atomically (under a temporary name, renamed when complete)
and deterministically.

Members are written in GNU tar format (never PAX: DALI's webdataset reader does not parse PAX headers)
with fixed owner, mode and mtime, so the same samples always give byte-identical shards. Next to each
``NAME.tar`` the writer puts ``NAME.idx``, the index DALI's ``fn.readers.webdataset`` takes, in the format
of DALI's ``wds2idx`` tool (v1.2): a line ``v1.2 <samples>``, then one line per sample listing
``<ext> <data offset> <size> <member name>`` for each of its members, in tar order (the format and the names are
the dataset contract's: :mod:`pipeline.dataset.formats`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from pipeline.dataset import index_entry, index_header, index_name
from pipeline.fsio import drop_cache

TMP_SUFFIX = ".tmp"
_MTIME = 946684800  # 2000-01-01T00:00:00Z: a fixed member mtime makes shards reproducible
_FULL = ("its file system is full: free space there (or choose another --out) and run the same command again; "
         "complete shards are kept and a partial one is only a .tmp file")
_ADVICE = MappingProxyType({
    errno.ENOSPC: _FULL,
    errno.EDQUOT: _FULL,
    errno.EROFS: "it is on a read-only file system: choose a writable --out",
    errno.EACCES: "no permission to write there: choose a writable --out or fix its permissions",
    errno.EPERM: "no permission to write there: choose a writable --out or fix its permissions",
    errno.EEXIST: "a file stands where a folder is needed: choose another --out or move that file away",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another --out or move that file away",
    errno.EFBIG: "its file system cannot hold a file this large: choose another --out or a smaller --shard-size",
})


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


_BLOCK = 512  # tar block (POSIX.1-1988 / GNU): headers and data are padded to it
_RECORD = 20 * _BLOCK  # tarfile's default record: the archive is zero-padded to a multiple of it
_ZEROS = bytes(_RECORD + 2 * _BLOCK)  # the longest run of zeros written: the end of an archive
_WRITEBACK_BYTES = 2 << 20  # start the disk write of every 2 MiB written, so the closing fsync waits little


def _header_template() -> tuple[bytearray, int]:
    """The fixed fields of every member header (regular file, mode 0444, uid/gid 0, empty owner names, mtime
    2000-01-01, GNU magic ``"ustar  \\0"``) with the name and size fields zeroed, and the byte sum of that block
    with the checksum field taken as 8 spaces (POSIX.1-1988 tar: the checksum is the sum of the header bytes)."""
    block = bytearray(_BLOCK)
    block[100:108] = b"0000444\0"
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[136:148] = b"%011o\0" % _MTIME
    block[148:156] = b"        "
    block[156:157] = b"0"
    block[257:265] = b"ustar  \0"
    return block, sum(block)


_TEMPLATE, _TEMPLATE_SUM = _header_template()


def member_header(name: str, size: int) -> bytes:
    """The 512-byte GNU tar header of a member file ``name`` of ``size`` bytes, byte for byte what Python's
    ``tarfile`` (3.11, ``GNU_FORMAT``) writes for the same :class:`tarfile.TarInfo` (mode 0444, uid/gid 0, no
    owner names, mtime ``_MTIME``): built from a template, a few µs instead of tarfile's ~80 µs. A name over
    100 bytes (a GNU long-name record first) or a size of 8 GiB or more (base-256 size) is left to tarfile.
    """
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > 100 or size >= 8 ** 11:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, _MTIME, 0o444, 0, 0, "", ""
        return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    size_field = b"%011o\0" % size
    block = bytearray(_TEMPLATE)
    block[0:len(raw)] = raw
    block[124:136] = size_field
    block[148:155] = b"%06o\0" % (_TEMPLATE_SUM + sum(raw) + sum(size_field))
    return bytes(block)


class _HashingFile:
    """A write-only file that also feeds a sha256, counts bytes and starts the disk write of what it holds every
    ``_WRITEBACK_BYTES`` (:meth:`_start_writeback`), so that :meth:`close`'s fsync waits for the last MiB or two
    only, not for the whole shard."""

    def __init__(self, path: Path):
        self._f = open(path, "wb")
        self.sha = hashlib.sha256()
        self.size = 0
        self._kicked = 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        n = self._f.write(b)
        if self.size - self._kicked >= _WRITEBACK_BYTES:
            self._start_writeback()
        return n

    def _start_writeback(self) -> None:
        """Start writing what was written since the last call to disk, without waiting: on Linux
        ``posix_fadvise(DONTNEED)`` (:func:`pipeline.fsio.drop_cache`) starts the write-back of dirty pages (and
        drops the clean ones: the sharder never reads its output back). A hint only: where it cannot be given,
        nothing happens (the fsync that follows reports real write errors)."""
        self._f.flush()
        drop_cache(self._f.fileno(), self._kicked, self.size - self._kicked)
        self._kicked = self.size

    @property
    def closed(self) -> bool:
        return self._f.closed

    def close(self, durable: bool = True) -> None:
        """Flush and close the file; ``durable``: fsync it first (else the caller commits it, :func:`commit_shard`)."""
        if not self._f.closed:
            self._f.flush()
            if durable:
                os.fsync(self._f.fileno())
            self._f.close()

    def discard(self) -> None:
        """Close the file after a write error, without fsync; a failing flush is ignored (the file is closed
        all the same), and what reached the disk stays."""
        try:
            self._f.close()
        except OSError:
            pass


class ShardWriter:
    """Write samples into numbered tar shards of at most ``shard_size`` samples each.

    A shard is opened on its first sample (so no empty shard exists), written to ``NAME.tmp``, and renamed
    to ``NAME`` only once it is complete and flushed to disk. With ``durable=False`` a complete shard and its
    index stay under their ``.tmp`` names, written but not flushed, and :func:`commit_shard` (called by the
    sharder process, whose fsync wait then takes no worker's time) flushes and renames them. Members are written
    directly (header from :func:`member_header`, data, zero padding to 512 bytes), in the bytes ``tarfile`` would
    write, and the archive ends as ``tarfile`` ends it (two zero blocks, padded to a 10240-byte record).

    Args:
        out_dir: folder that receives the shards.
        name_pattern: ``str.format`` pattern with an ``{index}`` field, e.g. ``"imagenet-train-{index:06d}.tar"``.
        shard_size: samples per shard (> 0).
        durable: flush and rename each complete shard here (False: leave that to :func:`commit_shard`).

    Raises:
        ValueError: ``shard_size`` < 1, or a member name that would not round-trip through webdataset.
    """

    def __init__(self, out_dir: Path, name_pattern: str, shard_size: int, durable: bool = True):
        if shard_size < 1:
            raise ValueError(f"shard size must be >= 1, got {shard_size}")
        self.durable = durable
        self.out_dir = Path(out_dir)
        self.name_pattern = name_pattern
        self.shard_size = shard_size
        self.records: list[ShardRecord] = []
        self._file: _HashingFile | None = None
        self._count = 0
        self._index: list[str] = []

    def _open(self) -> None:
        name = self.name_pattern.format(index=len(self.records))
        self._file = _HashingFile(self.out_dir / (name + TMP_SUFFIX))
        self._count = 0
        self._index = []

    def _end_archive(self) -> None:
        """Two zero blocks, then zeros up to the next full record (what ``TarFile.close`` writes)."""
        assert self._file is not None
        end = self._file.size + 2 * _BLOCK
        self._file.write(_ZEROS[:2 * _BLOCK + (-end % _RECORD)])

    def _finish(self) -> None:
        """End the archive and write the index, both under ``.tmp`` names; then, when ``durable``,
        :func:`commit_shard` them (flush to disk, rename)."""
        assert self._file is not None
        self._end_archive()
        name = self.name_pattern.format(index=len(self.records))
        with open(self.out_dir / (index_name(name) + TMP_SUFFIX), "w") as f:
            f.write(index_header(self._count) + "\n")
            f.write("".join(line + "\n" for line in self._index))
        self._file.close(durable=False)
        if self.durable:
            commit_shard(self.out_dir, name)
        self.records.append(ShardRecord(name, self._count, self._file.size, self._file.sha.hexdigest()))
        self._file = None

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Append one sample: ``members`` maps an extension (``"jpg"``, ``"cls"``, ...) to its bytes.

        Raises:
            ValueError: the key contains a dot or a slash (webdataset splits names at the first dot).
        """
        if "." in key or "/" in key or not key:
            raise ValueError(f"sample key {key!r} must be non-empty and contain no '.' or '/'")
        if self._file is None:
            self._open()
        assert self._file is not None
        entries = []
        for ext, payload in members.items():
            name = f"{key}.{ext}"
            header = member_header(name, len(payload))
            data_offset = self._file.size + len(header)
            self._file.write(header)
            self._file.write(payload)
            if len(payload) % _BLOCK:
                self._file.write(_ZEROS[:-len(payload) % _BLOCK])
            entries.append(index_entry(ext, data_offset, len(payload), name))
        self._index.append(" ".join(entries))
        self._count += 1
        if self._count >= self.shard_size:
            self._finish()

    def close(self) -> list[ShardRecord]:
        """Finish the open shard (if any) and return the records of every shard written."""
        if self._file is not None:
            self._finish()
        return self.records

    def abort(self) -> None:
        """Give up the open shard after an error: its file is closed and stays under its ``.tmp`` name (the
        next run removes it); finished shards are kept."""
        if self._file is not None:
            self._file.discard()
        self._file = None


def commit_shard(out_dir: Path, tar_name: str) -> None:
    """Make a shard written under temporary names final: flush ``NAME.idx.tmp`` and ``NAME.tar.tmp`` to disk, then
    rename the index, then the tar (so a tar under its final name always has its index, and both are on disk).

    The index's write-back is started before the tar's fsync, so that one journal commit (the tar's) takes both
    files and the index's own fsync then finds it mostly done. Any process may call it (fsync acts on the file,
    whoever wrote it).

    Raises:
        OSError: a file is missing, or the disk reports a write error (e.g. full).
    """
    tar, idx = Path(out_dir) / tar_name, Path(out_dir) / index_name(tar_name)
    fds = [os.open(p.with_name(p.name + TMP_SUFFIX), os.O_RDONLY) for p in (idx, tar)]
    try:
        drop_cache(fds[0], 0, 0)  # start the index's write-back; a hint, its failure ignored
        os.fsync(fds[1])
        os.fsync(fds[0])
    finally:
        for fd in fds:
            os.close(fd)
    os.replace(idx.with_name(idx.name + TMP_SUFFIX), idx)  # index first: a renamed tar always has one
    os.replace(tar.with_name(tar.name + TMP_SUFFIX), tar)

