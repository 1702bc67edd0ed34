"""Archives: read the original ILSVRC2012 tars in place, headers only, never extracting them. One job: turn
``ILSVRC2012_img_train.tar`` (a tar of per-class tars ``<wnid>.tar``) and ``ILSVRC2012_img_val.tar`` (flat val
images) into a :class:`RawSplit` whose entries record each member's absolute byte offset and size in the outer
file, and name the members that cannot be inputs (links, devices, broken or compressed inner tars)."""

from __future__ import annotations

import io
import os
import posixpath
import tarfile
from pathlib import Path

from pipeline.dataset import RejectReason
from pipeline.source.names import TRAIN_ARCHIVE, VAL_ARCHIVE, file_stem
from pipeline.source.types import LayoutError, RawSplit, SourceItem, Unusable

_COMPRESSED_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tar.lz4", ".zip")
_COMPRESSION_MAGIC = ((b"\x1f\x8b", "gzip", "gunzip -k FILE"), (b"BZh", "bzip2", "bunzip2 -k FILE"),
                      (b"\xfd7zXZ\x00", "xz", "unxz -k FILE"), (b"\x28\xb5\x2f\xfd", "zstd", "zstd -d FILE"),
                      (b"\x04\x22\x4d\x18", "lz4", "lz4 -d FILE"), (b"PK\x03\x04", "zip", "unzip FILE"))


class _Window(io.RawIOBase):
    """Read-only, seekable view of bytes ``[start, start + size)`` of an open file descriptor (pread)."""

    def __init__(self, fd: int, start: int, size: int, name: str):
        super().__init__()
        self._fd, self._start, self._size, self._pos = fd, start, size, 0
        self.name = name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            pos += self._pos
        elif whence == io.SEEK_END:
            pos += self._size
        if pos < 0:
            raise OSError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def read(self, n: int | None = -1) -> bytes:
        left = self._size - self._pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        data = os.pread(self._fd, n, self._start + self._pos)
        self._pos += len(data)
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)


def _compression(head: bytes) -> tuple[str, str] | None:
    """(format, how to decompress) when ``head`` starts like a compressed file, else None."""
    for magic, fmt, how in _COMPRESSION_MAGIC:
        if head.startswith(magic):
            return fmt, how
    return None


def _member_kind(m: tarfile.TarInfo) -> str:
    if m.issym():
        return "symbolic link"
    if m.islnk():
        return "hard link"
    return "special file (device, FIFO or sparse)"


def _clean_member_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _iter_tar(fd: int, start: int, size: int, name: str):
    """Yield the members of the uncompressed tar at ``[start, start + size)`` of ``fd``, headers only.

    Raises:
        tarfile.ReadError: not a tar, or a header is broken (members before it have been yielded).
    """
    if size == 0 or not os.pread(fd, min(size, 512), start).strip(b"\0"):
        return  # an empty tar (no bytes, or an end-of-archive block first): no members. Said here, not by
        # tarfile: Python 3.8's TarFile.next() seeks to offset -1 on one
    with tarfile.open(fileobj=_Window(fd, start, size, name), mode="r:") as tf:
        while True:
            m = tf.next()
            if m is None:
                return
            tf.members.clear()  # headers only, never kept: 1.28M members must not pile up
            yield m


def _open_archive(path: Path) -> tuple[int, int]:
    """Open an outer archive: (fd, size). Raises LayoutError when it is compressed or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise LayoutError(f"{path}: cannot open: {exc.strerror or exc}") from None
    size = os.fstat(fd).st_size
    comp = _compression(os.pread(fd, 8, 0))
    if comp:
        os.close(fd)
        raise LayoutError(f"{path}: {comp[0]}-compressed; archives are read in place and must be plain "
                          f"(uncompressed) tars: decompress it first ({comp[1].replace('FILE', path.name)})")
    return fd, size


def _outer_files(path: Path, fd: int, file_size: int, unusable: list[Unusable]):
    """Yield ``(member, clean name, relpath)`` for every regular member of the archive ``path`` (headers only).

    Directories are skipped; links and devices go to ``unusable``.

    Raises:
        LayoutError: the archive is broken, or truncated inside a member.
    """
    spath = str(path)
    members = _iter_tar(fd, 0, file_size, spath)
    while True:
        try:
            m = next(members)
        except StopIteration:
            return
        except tarfile.TarError as exc:
            raise LayoutError(f"{path}: broken or truncated tar ({exc}); re-download or repair it") from None
        name = _clean_member_name(m.name)
        rel = f"{path.name}/{name}"
        if m.isdir():
            continue
        if not m.isreg():
            unusable.append(Unusable(SourceItem(spath, rel, -1), RejectReason.NOT_A_FILE,
                                     f"tar member is a {_member_kind(m)}, not a file"))
            continue
        if m.offset_data + m.size > file_size:
            raise LayoutError(f"{path}: truncated inside member {name} (archive is {file_size} bytes, member "
                              f"ends at {m.offset_data + m.size}); re-download it")
        yield m, name, rel


def scan_train_archive(path: Path, unusable: list[Unusable]) -> RawSplit:
    """Scan ``ILSVRC2012_img_train.tar``: per-class tars ``<wnid>.tar`` holding the images (headers only); classes
    whose tar holds no file are listed in ``empty``."""
    split = RawSplit(where=path.name)
    fd, file_size = _open_archive(path)
    spath = str(path)
    classes, filled = set(), set()
    try:
        for m, name, rel in _outer_files(path, fd, file_size, unusable):
            outer_item = SourceItem(spath, rel, -1, m.offset_data, m.size)
            cls = _class_of_member(fd, m, name, outer_item, path.name, unusable)
            found = len(split.by_class) + len(unusable)
            if cls is not None and _scan_class_archive(fd, m, name, outer_item, cls, split, unusable):
                classes.add(cls)
                if len(split.by_class) + len(unusable) > found:
                    filled.add(cls)
    finally:
        os.close(fd)
    split.classes = sorted(classes)
    split.empty = sorted(classes - filled)  # per-class tars without any member file
    return split


def _class_of_member(fd: int, m: tarfile.TarInfo, name: str, outer_item: SourceItem, outer_name: str,
                     unusable: list[Unusable]) -> str | None:
    """The class of a member of the train archive when it is a plain per-class tar ``<wnid>.tar``; None (and the
    member in ``unusable``) when it is anything else or compressed."""
    if not name.endswith(".tar"):
        unusable.append(Unusable(outer_item, RejectReason.NOT_IN_CLASS,
                                 f"member of {outer_name} that is not a per-class archive <wnid>.tar"))
        return None
    comp = _compression(os.pread(fd, 8, m.offset_data)) if m.size else None
    if comp:
        unusable.append(Unusable(outer_item, RejectReason.UNDECODABLE,
                                 f"per-class archive is {comp[0]}-compressed; repack it as a plain tar"))
        return None
    return posixpath.basename(name)[:-len(".tar")]


def _scan_class_archive(fd: int, m: tarfile.TarInfo, name: str, outer_item: SourceItem, cls: str, split: RawSplit,
                        unusable: list[Unusable]) -> bool:
    """Add the images of the per-class tar ``m`` (member ``name`` of the train archive) to ``split.by_class``.

    Returns:
        Whether the class is kept: the tar read to its end, or it broke after some members (those are kept, and
        the break goes to ``unusable``).
    """
    spath, rel = outer_item.path, outer_item.relpath
    count = 0
    try:
        regular: dict[str, tuple[int, int]] = {}  # member name → (data offset, size), for hard links
        for im in _iter_tar(fd, m.offset_data, m.size, rel):
            count += 1
            iname = _clean_member_name(im.name)
            irel = f"{rel}/{iname}"
            if im.isdir():
                continue
            if im.islnk() and _clean_member_name(im.linkname) in regular:
                # GNU tar stores the second of two hard-linked files as a link to the first
                offset, size = regular[_clean_member_name(im.linkname)]
                split.by_class.append((cls, spath, irel, m.offset_data + offset, size))
            elif not im.isreg():
                unusable.append(Unusable(SourceItem(spath, irel, -1), RejectReason.NOT_A_FILE,
                                         f"tar member is a {_member_kind(im)}, not a file"))
            elif im.offset_data + im.size > m.size:
                unusable.append(Unusable(SourceItem(spath, irel, -1), RejectReason.UNDECODABLE,
                                         f"member data runs past the end of {name}"))
            else:
                regular[iname] = (im.offset_data, im.size)
                split.by_class.append((cls, spath, irel, m.offset_data + im.offset_data, im.size))
        return True
    except tarfile.TarError as exc:
        if count:  # the members read before the break are kept
            detail = f"tar archive broken after {count} members ({exc}); the rest of it is lost"
        else:
            detail = f"not a readable tar archive ({exc})"
        unusable.append(Unusable(outer_item, RejectReason.UNDECODABLE, detail))
        return count > 0


def scan_val_archive(path: Path, unusable: list[Unusable]) -> RawSplit:
    """Scan ``ILSVRC2012_img_val.tar``: flat val images, labelled later by their file stem."""
    split = RawSplit(where=path.name)
    fd, file_size = _open_archive(path)
    spath = str(path)
    try:
        for m, name, rel in _outer_files(path, fd, file_size, unusable):
            split.flat.append((file_stem(name), spath, rel, m.offset_data, m.size))
    finally:
        os.close(fd)
    return split


def find_archive(root: Path, base: str) -> Path | None:
    """``root/<base>`` when present; LayoutError when only a compressed variant of it is."""
    plain = root / base
    if plain.is_file():
        return plain
    stem = base[:-len(".tar")]
    for suffix in _COMPRESSED_SUFFIXES:
        compressed = root / (stem + suffix)
        if compressed.is_file():
            raise LayoutError(f"{compressed}: compressed archive; archives are read in place and must be plain tars: "
                              f"decompress it to {base} first")
    return None


def archive_candidates(root: Path) -> list[str]:
    """Names of the ILSVRC2012 image archives (plain or compressed) present in ``root``."""
    found = []
    for base in (TRAIN_ARCHIVE, VAL_ARCHIVE):
        stem = base[:-len(".tar")]
        found += [stem + s for s in (".tar",) + _COMPRESSED_SUFFIXES if (root / (stem + s)).is_file()]
    return found
