"""Find the samples of an ImageNet source, whatever layout it was downloaded or unpacked in.

:func:`scan_source` detects the layout (or takes the one forced by ``LayoutOptions.layout``) and states what
it found in :attr:`SourceTree.layout`:

``class-folders``
    ``SRC/train/<class>/<file>`` and ``SRC/val/<class>/<file>`` (ImageNet after valprep.sh, or any
    torchvision ImageFolder pair such as hymenoptera_data). ``SRC/val/`` may instead be *flat*
    (``SRC/val/ILSVRC2012_val_00000001.JPEG`` ...), labelled by a label file (below).
``kaggle``
    The Kaggle "ImageNet Object Localization Challenge" tree: ``SRC/ILSVRC/Data/CLS-LOC/train/<wnid>/``,
    a flat ``SRC/ILSVRC/Data/CLS-LOC/val/``, ``SRC/LOC_val_solution.csv`` and ``SRC/LOC_synset_mapping.txt``.
    ``CLS-LOC/test/`` (unlabelled) is ignored, and said so.
``archives``
    The original downloads read in place, never extracted: ``SRC/ILSVRC2012_img_train.tar`` (an uncompressed
    tar of per-class tars ``<wnid>.tar``) and ``SRC/ILSVRC2012_img_val.tar`` (flat val images), labelled by a
    label file (below). Only the tar headers are read while scanning; each item records the absolute byte
    offset and size of its data in the outer file.

Flat val label files (``LayoutOptions.val_labels``, or found by name in SRC, in SRC's immediate subfolders,
in their ``data/`` folder (the devkit's), and in the flat val folder itself). When several are present the
first usable one in this order is taken and the others are named in :attr:`SourceTree.notes`:

1. devkit ``ILSVRC2012_validation_ground_truth.txt`` (one ILSVRC2012_ID 1..1000 per line, line i is
   ``ILSVRC2012_val_%08d`` % i), extracted or inside ``ILSVRC2012_devkit_t12.tar.gz``; needs an
   ILSVRC2012_ID → wnid map: ``LayoutOptions.id_map``, else ``map_clsloc.txt`` /
   ``imagenet_folder_id_class.txt`` (``<wnid> <ILSVRC2012_ID> <name>`` lines), else the devkit's ``meta.mat``
   (read with scipy). The official labels, hence first.
2. Kaggle ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the class is the first token).
3. TensorFlow ``imagenet_2012_validation_synset_labels.txt`` (one wnid per line, in val order).
4. ``valprep.sh`` (its ``mv ILSVRC2012_val_XXXXXXXX.JPEG <wnid>/`` lines).
5. Caffe ``val.txt`` (``<file> <index>``, index into the *sorted* list of the 1000 wnids). Last: the name is
   generic and the index needs that full class list, taken from ``LayoutOptions.classes_file``, else
   ``synset_words.txt`` / ``LOC_synset_mapping.txt`` / ``imagenet_lsvrc_2015_synsets.txt`` found in SRC,
   else the train classes when there are exactly 1000 of them.

A source whose companion file is missing (devkit labels without an id map, val.txt without the full class
list) is skipped for the next one, and said so; if none is usable the first one's problem is the error.
Images are matched to label lines by file stem (``ILSVRC2012_val_00000001``), whatever their extension.

Class index: position in the sorted train class names (torchvision ImageFolder order; for the 1000
ImageNet wnids this is the canonical sorted-wnid index of torchvision, timm and Caffe); for the Kaggle tree
the sorted wnids of ``LOC_synset_mapping.txt``. ``LayoutOptions.classes_file`` fixes the list instead (line
order). Every input file ends in :attr:`SourceTree.items` or :attr:`SourceTree.unusable`; label and metadata
files are not inputs.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import tarfile
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from pipeline.shard.clean import RejectReason

SPLITS = ("train", "val")

TRAIN_ARCHIVE = "ILSVRC2012_img_train.tar"
VAL_ARCHIVE = "ILSVRC2012_img_val.tar"
KAGGLE_DATA = ("ILSVRC", "Data", "CLS-LOC")
KAGGLE_SOLUTION = "LOC_val_solution.csv"
KAGGLE_MAPPING = "LOC_synset_mapping.txt"
DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_ARCHIVES = ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_devkit_t12.tgz", "ILSVRC2012_devkit_t12.tar")
TF_LABELS = "imagenet_2012_validation_synset_labels.txt"
VALPREP = "valprep.sh"
CAFFE_LABELS = "val.txt"
ID_MAP_TEXTS = ("map_clsloc.txt", "imagenet_folder_id_class.txt")
META_MAT = "meta.mat"
SYNSET_LISTS = ("synset_words.txt", KAGGLE_MAPPING, "synsets.txt", "imagenet_lsvrc_2015_synsets.txt")
# File names that are label/metadata sources, never inputs, wherever they sit (e.g. valprep.sh inside val/).
META_NAMES = frozenset((KAGGLE_SOLUTION, KAGGLE_MAPPING, DEVKIT_GROUND_TRUTH, TF_LABELS, VALPREP, CAFFE_LABELS,
                        META_MAT, "LOC_train_solution.csv", "LOC_sample_submission.csv", *ID_MAP_TEXTS,
                        *SYNSET_LISTS, *DEVKIT_ARCHIVES))

_COMPRESSED_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tar.lz4", ".zip")
_COMPRESSION_MAGIC = ((b"\x1f\x8b", "gzip", "gunzip -k FILE"), (b"BZh", "bzip2", "bunzip2 -k FILE"),
                      (b"\xfd7zXZ\x00", "xz", "unxz -k FILE"), (b"\x28\xb5\x2f\xfd", "zstd", "zstd -d FILE"),
                      (b"\x04\x22\x4d\x18", "lz4", "lz4 -d FILE"), (b"PK\x03\x04", "zip", "unzip FILE"))
_VAL_ID = "ILSVRC2012_val_{:08d}"


class LayoutError(Exception):
    """The source tree is not a layout the sharder understands (message says what to do)."""


class LayoutKind(str, Enum):
    """How to read the source: detect it (``auto``) or force one layout."""

    AUTO = "auto"
    CLASS_FOLDERS = "class-folders"
    KAGGLE = "kaggle"
    ARCHIVES = "archives"

    def __str__(self) -> str:  # argparse shows and matches the value
        return self.value


@dataclass(frozen=True)
class LayoutOptions:
    """Options of :func:`scan_source`.

    Attributes:
        layout: the layout to read; ``AUTO`` detects it.
        classes_file: fixed class list: the first whitespace-separated token of each non-empty line (e.g.
            ``synset_words.txt``, ``LOC_synset_mapping.txt``); label = line index. Without it the classes are
            the sorted train class names (Kaggle: the sorted wnids of ``LOC_synset_mapping.txt``).
        val_labels: label file of a flat val (devkit ground truth, ``LOC_val_solution.csv``, Caffe ``val.txt``,
            TensorFlow synset labels or ``valprep.sh``; the format is recognised from the content).
            None: found in SRC (see the module doc for the order).
        id_map: ILSVRC2012_ID → wnid map for devkit labels: ``map_clsloc.txt``-style text (``<wnid> <ID>
            <name>`` per line) or the devkit's ``meta.mat`` (needs scipy). None: found in SRC.
    """

    layout: LayoutKind = LayoutKind.AUTO
    classes_file: Path | None = None
    val_labels: Path | None = None
    id_map: Path | None = None


@dataclass(frozen=True)
class SourceItem:
    """One input file: a file on disk, or a member of an uncompressed tar archive read in place.

    Attributes:
        path: absolute path of the file, or of the outermost archive that holds it.
        relpath: path relative to the source root with ``/`` separators, kept in the shard's ``.json``
            (for an archive member: ``<archive name>/<member path>``, nested archives joined the same way).
        label: class index (-1 in :attr:`SourceTree.unusable`, where the file has no class).
        offset: byte offset of the member's data inside ``path``; -1 for a plain file.
        size: member size in bytes; -1 for a plain file.
    """

    path: str
    relpath: str
    label: int
    offset: int = -1
    size: int = -1

    def read_bytes(self) -> bytes:
        """The file's bytes (a plain read, or a seek + read inside the archive).

        Raises:
            OSError: the file or archive cannot be read, or the archive ends before the member does.
        """
        with open(self.path, "rb") as f:
            if self.offset < 0:
                return f.read()
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"archive ends inside member {self.relpath} ({len(data)} of {self.size} bytes)")
        return data


@dataclass(frozen=True)
class Unusable:
    """An input file that cannot be a sample whatever its content: why, in one line."""

    item: SourceItem
    reason: RejectReason
    detail: str


@dataclass
class SourceTree:
    """What :func:`scan_source` (or :func:`scan_class_folders`) found.

    Attributes:
        root: the source root.
        classes: class names; label ``i`` is ``classes[i]``.
        items: split name → its labelled files, sorted by relative path.
        unusable: files that go straight to the rejects report (outside any class folder, no label, ...).
        layout: what was detected, in words (stated in the sharder's output).
        kind: the layout read (a :class:`LayoutKind` value other than ``auto``).
        notes: further lines worth printing: label files present but not used, ignored folders, label
            lines for images that are not present.
    """

    root: Path
    classes: list[str]
    items: dict[str, list[SourceItem]] = field(default_factory=dict)
    unusable: list[Unusable] = field(default_factory=list)
    layout: str = "class-folders"
    kind: str = LayoutKind.CLASS_FOLDERS.value
    notes: list[str] = field(default_factory=list)

    @property
    def num_files(self) -> int:
        return sum(len(v) for v in self.items.values()) + len(self.unusable)


# ---------------------------------------------------------------------------------------------------------
# Raw scan results: files found in a split before labels are known.


@dataclass
class _Split:
    """One split as found on disk: class-labelled entries, flat entries and class names.

    Entries are ``(name, path, relpath, offset, size)``: ``name`` is the class for ``by_class`` and the file
    stem for ``flat``.
    """

    where: str  # what it is, for messages: "train/" (relative to SRC) or "ILSVRC2012_img_train.tar"
    classes: list[str] = field(default_factory=list)
    by_class: list[tuple[str, str, str, int, int]] = field(default_factory=list)
    flat: list[tuple[str, str, str, int, int]] = field(default_factory=list)

    @property
    def is_archive(self) -> bool:
        return self.where.endswith(".tar")

    def class_path(self, cls: str) -> str:
        """Where class ``cls`` lives: ``train/<cls>`` or ``ILSVRC2012_img_train.tar/<cls>.tar``."""
        return f"{self.where}/{cls}.tar" if self.is_archive else f"{self.where}{cls}"


def _walk_files(folder: str) -> list[str]:
    """Every regular file under ``folder``, recursively, in sorted order (symlinks followed, but a real
    directory is entered only once and never one above ``folder``, so a symlink loop cannot repeat files)."""
    out = []
    seen: set[str] = set()
    top = os.path.realpath(folder)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        # a folder entered before, or one that holds the folder being walked (a link back up), is a loop
        if real in seen or (real != top and (top + os.sep).startswith(real.rstrip(os.sep) + os.sep)):
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        out.extend(os.path.join(dirpath, name) for name in sorted(filenames))
    return out


def _stem(name: str) -> str:
    """``dir/ILSVRC2012_val_00000001.JPEG`` → ``ILSVRC2012_val_00000001``."""
    base = posixpath.basename(name.replace(os.sep, "/"))
    return base.rsplit(".", 1)[0] if "." in base else base


def _display(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it, else absolute."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------------------
# Tar archives read in place.


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


def _scan_train_archive(path: Path, unusable: list[Unusable]) -> _Split:
    """Scan ``ILSVRC2012_img_train.tar``: per-class tars ``<wnid>.tar`` holding the images (headers only)."""
    split = _Split(where=path.name)
    fd, file_size = _open_archive(path)
    outer_name = path.name
    spath = str(path)
    classes = set()
    try:
        for m, name, rel in _outer_files(path, fd, file_size, unusable):
            outer_item = SourceItem(spath, rel, -1, m.offset_data, m.size)
            if not name.endswith(".tar"):
                unusable.append(Unusable(outer_item, RejectReason.NOT_IN_CLASS,
                                         f"member of {outer_name} that is not a per-class archive <wnid>.tar"))
                continue
            comp = _compression(os.pread(fd, 8, m.offset_data)) if m.size else None
            if comp:
                unusable.append(Unusable(outer_item, RejectReason.UNDECODABLE,
                                         f"per-class archive is {comp[0]}-compressed; repack it as a plain tar"))
                continue
            cls = posixpath.basename(name)[:-len(".tar")]
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
                classes.add(cls)
            except tarfile.TarError as exc:
                if count:  # the members read before the break are kept
                    classes.add(cls)
                    detail = f"tar archive broken after {count} members ({exc}); the rest of it is lost"
                else:
                    detail = f"not a readable tar archive ({exc})"
                unusable.append(Unusable(outer_item, RejectReason.UNDECODABLE, detail))
    finally:
        os.close(fd)
    split.classes = sorted(classes)
    return split


def _scan_val_archive(path: Path, unusable: list[Unusable]) -> _Split:
    """Scan ``ILSVRC2012_img_val.tar``: flat val images, labelled later by their file stem."""
    split = _Split(where=path.name)
    fd, file_size = _open_archive(path)
    spath = str(path)
    try:
        for m, name, rel in _outer_files(path, fd, file_size, unusable):
            split.flat.append((_stem(name), spath, rel, m.offset_data, m.size))
    finally:
        os.close(fd)
    return split


def _find_archive(root: Path, base: str) -> Path | None:
    """``root/<base>`` when present; LayoutError when only a compressed variant of it is."""
    plain = root / base
    if plain.is_file():
        return plain
    stem = base[:-len(".tar")]
    for suffix in _COMPRESSED_SUFFIXES:
        p = root / (stem + suffix)
        if p.is_file():
            raise LayoutError(f"{p}: compressed archive; archives are read in place and must be plain tars: "
                              f"decompress it to {base} first")
    return None


def _archive_candidates(root: Path) -> list[str]:
    """Names of the ILSVRC2012 image archives (plain or compressed) present in ``root``."""
    found = []
    for base in (TRAIN_ARCHIVE, VAL_ARCHIVE):
        stem = base[:-len(".tar")]
        found += [stem + s for s in (".tar",) + _COMPRESSED_SUFFIXES if (root / (stem + s)).is_file()]
    return found


# ---------------------------------------------------------------------------------------------------------
# Label and class files.


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise LayoutError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise LayoutError(f"{path}: {what} is not UTF-8 text; pass the right file") from None


def _numbered_lines(text: str):
    """(1-based line number, stripped line) of every non-empty line."""
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line:
            yield i, line


def read_class_list(path: str | os.PathLike) -> list[str]:
    """Read a class list: the first whitespace-separated token of each non-empty line, in file order.

    ``synset_words.txt`` and ``LOC_synset_mapping.txt`` (``<wnid> <names>``) and plain one-wnid-per-line
    files all work.

    Raises:
        LayoutError: the file is missing, unreadable, empty, or lists a class twice.
    """
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path}: class list not found; pass an existing file (e.g. synset_words.txt)")
    classes, seen = [], {}
    for lineno, line in _numbered_lines(_read_text(path, "class list")):
        name = line.split()[0]
        if name in seen:
            raise LayoutError(f"{path}:{lineno}: class {name} already listed on line {seen[name]}; "
                              f"a class list names each class once")
        seen[name] = lineno
        classes.append(name)
    if not classes:
        raise LayoutError(f"{path}: class list is empty")
    return classes


def _parse_id_map_text(text: str, name: str) -> dict[int, str]:
    """``<wnid> <ILSVRC2012_ID> <name>`` lines (devkit ``map_clsloc.txt``) → {ID: wnid}."""
    out: dict[int, str] = {}
    for lineno, line in _numbered_lines(text):
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise LayoutError(f"{name}:{lineno}: expected '<wnid> <ILSVRC2012_ID> <name>' (map_clsloc.txt "
                              f"style), got {line[:60]!r}; pass a devkit id map with --id-map")
        ident = int(parts[1])
        if ident in out:
            raise LayoutError(f"{name}:{lineno}: ILSVRC2012_ID {ident} listed twice")
        out[ident] = parts[0]
    if not out:
        raise LayoutError(f"{name}: id map is empty")
    return out


_NO_SCIPY = ("reading meta.mat needs scipy: pip install scipy, or pass --id-map with a map_clsloc.txt-style file "
             "('<wnid> <ILSVRC2012_ID> <name>' lines)")


def _have_scipy() -> bool:
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        return False
    return True


def _parse_meta_mat(fileobj, name: str) -> dict[int, str]:
    """The devkit's ``meta.mat`` (struct array ``synsets``) → {ILSVRC2012_ID: wnid} of the leaf classes.

    Raises:
        LayoutError: scipy is not installed, or the file is not the devkit's meta.mat.
    """
    try:
        from scipy.io import loadmat
    except ImportError:
        raise LayoutError(f"{name}: {_NO_SCIPY}") from None
    try:
        synsets = loadmat(fileobj, squeeze_me=True)["synsets"]
        ids, wnids, children = synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["num_children"]
        out = {int(i): str(w) for i, w, c in zip(ids, wnids, children) if int(c) == 0}
    except Exception as exc:  # scipy raises many kinds for a file that is not the devkit's meta.mat
        raise LayoutError(f"{name}: not a devkit meta.mat with a 'synsets' struct "
                          f"({type(exc).__name__}: {exc})") from None
    if not out:
        raise LayoutError(f"{name}: meta.mat lists no leaf synsets (num_children == 0)")
    return out


def _parse_devkit(text: str, name: str, id_map: dict[int, str], map_name: str) -> dict[str, str]:
    out = {}
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for i, line in enumerate(lines, 1):
        line = line.strip()
        if not line.isdigit():
            raise LayoutError(f"{name}:{i}: expected one ILSVRC2012_ID (1..1000) per line, got {line[:60]!r}")
        ident = int(line)
        if ident not in id_map:
            raise LayoutError(f"{name}:{i}: ILSVRC2012_ID {ident} is not in {map_name}; pass the devkit's id map "
                              f"with --id-map")
        out[_VAL_ID.format(i)] = id_map[ident]
    return out


def _parse_kaggle(text: str, name: str) -> dict[str, str]:
    out = {}
    rows = _numbered_lines(text)
    first = next(rows, None)
    if first is None or first[1].replace(" ", "") != "ImageId,PredictionString":
        raise LayoutError(f"{name}: expected the header 'ImageId,PredictionString' of Kaggle's LOC_val_solution.csv")
    for lineno, line in rows:
        image_id, _, pred = line.partition(",")
        tokens = pred.split()
        if not image_id or not tokens:
            raise LayoutError(f"{name}:{lineno}: expected '<ImageId>,<wnid> <box> ...', got {line[:60]!r}")
        stem = _stem(image_id.strip())
        if out.get(stem, tokens[0]) != tokens[0]:
            raise LayoutError(f"{name}:{lineno}: {stem} listed again with another class ({tokens[0]} vs "
                              f"{out[stem]})")
        out[stem] = tokens[0]
    return out


def _parse_tf(text: str, name: str) -> dict[str, str]:
    out = {}
    for i, line in enumerate(text.rstrip().splitlines(), 1):
        parts = line.split()
        if len(parts) != 1:
            raise LayoutError(f"{name}:{i}: expected one wnid per line (TensorFlow synset labels), got {line[:60]!r}")
        out[_VAL_ID.format(i)] = parts[0]
    return out


_MV = re.compile(r"^\s*mv\s+(?:-\S+\s+)*(\S+)\s+(\S+?)/*\s*;?\s*$")


def _parse_valprep(text: str, name: str) -> dict[str, str]:
    out = {}
    for lineno, line in _numbered_lines(text):
        m = _MV.match(line)
        if m:
            stem = _stem(m.group(1).strip("'\""))
            out[stem] = posixpath.basename(m.group(2).strip("'\""))
    if not out:
        raise LayoutError(f"{name}: no 'mv <image> <wnid>/' lines; not a valprep.sh")
    return out


def _parse_caffe(text: str, name: str, sorted_classes: list[str], list_name: str) -> dict[str, str]:
    out = {}
    for lineno, line in _numbered_lines(text):
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise LayoutError(f"{name}:{lineno}: expected '<image file> <class index>' (Caffe val.txt), "
                              f"got {line[:60]!r}")
        index = int(parts[1])
        if index >= len(sorted_classes):
            raise LayoutError(f"{name}:{lineno}: class index {index} is out of range for the {len(sorted_classes)} "
                              f"classes of {list_name}; Caffe indices count the sorted full class list: "
                              f"pass --classes synset_words.txt")
        out[_stem(parts[0])] = sorted_classes[index]
    return out


def _sniff_format(text: str, path: Path) -> str:
    """The label format of an explicitly given file, from its content."""
    lines = [line for _, line in _numbered_lines(text)][:20]
    if not lines:
        raise LayoutError(f"{path}: label file is empty")
    if lines[0].replace(" ", "").startswith("ImageId,"):
        return "kaggle"
    if path.suffix == ".sh" or any(_MV.match(line) or line.startswith(("mkdir ", "#!")) for line in lines):
        return "valprep"
    parts = lines[0].split()
    if len(parts) == 1:
        return "devkit" if parts[0].isdigit() else "tf"
    if len(parts) == 2 and parts[1].isdigit():
        return "caffe"
    raise LayoutError(f"{path}: unrecognised val label format (first line {lines[0][:60]!r}); expected devkit "
                      f"ground truth, LOC_val_solution.csv, Caffe val.txt, TensorFlow synset labels or valprep.sh")


_FORMAT_NAMES = {"devkit": "devkit ground truth", "kaggle": "Kaggle solution", "tf": "TensorFlow synset labels",
                 "valprep": "valprep.sh moves", "caffe": "Caffe val.txt"}
_AUTO_ORDER = (("devkit", DEVKIT_GROUND_TRUTH), ("kaggle", KAGGLE_SOLUTION), ("tf", TF_LABELS),
               ("valprep", VALPREP), ("caffe", CAFFE_LABELS))


class _Unavailable(Exception):
    """A label source whose companion file (id map, full class list) is missing; message says what to pass."""


@dataclass
class _LabelSource:
    fmt: str
    path: Path  # the file, or the devkit archive holding it
    member: str | None = None  # member of the devkit archive


@dataclass
class _Labels:
    by_stem: dict[str, str]
    description: str
    source: str


class _Finder:
    """Finds label and metadata files by name in the search folders of one scan."""

    def __init__(self, root: Path, extra_dirs: list[Path]):
        self.root = root
        dirs = [root, *extra_dirs]
        skip = {"train", "val", "test"}
        try:
            subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                          and p.name not in skip)
        except OSError:
            subs = []
        for sub in subs:
            dirs += [sub, sub / "data"]
        self.dirs = [d for i, d in enumerate(dirs) if d not in dirs[:i]]
        self._devkit_members: dict[Path, dict[str, bytes]] = {}

    def find(self, name: str) -> Path | None:
        """The one file called ``name`` in the search folders; LayoutError when there are several."""
        hits = [d / name for d in self.dirs if (d / name).is_file()]
        if len(hits) > 1:
            where = ", ".join(_display(h, self.root) for h in hits)
            raise LayoutError(f"{self.root}: {name} found in several places ({where}); "
                              f"pass the one to use explicitly (--val-labels / --id-map / --classes)")
        return hits[0] if hits else None

    def devkit_archive(self) -> Path | None:
        for name in DEVKIT_ARCHIVES:
            hit = self.find(name)
            if hit:
                return hit
        return None

    def devkit_member(self, archive: Path, suffix: str) -> tuple[str, bytes] | None:
        """(member name, bytes) of the member of the devkit archive ending in ``suffix``."""
        if archive not in self._devkit_members:
            members = {}
            try:
                with tarfile.open(archive) as tf:
                    for m in tf:
                        if m.isreg() and m.name.endswith(("data/" + DEVKIT_GROUND_TRUTH, "data/" + META_MAT)):
                            members[m.name] = tf.extractfile(m).read()
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise LayoutError(f"{archive}: cannot read the devkit archive ({exc}); re-download it") from None
            self._devkit_members[archive] = members
        for name, data in self._devkit_members[archive].items():
            if name.endswith(suffix):
                return name, data
        return None


class _Resolver:
    """Turns the label sources of a flat val into {file stem: wnid}."""

    def __init__(self, root: Path, opts: LayoutOptions, finder: _Finder, train_classes: list[str],
                 class_list: list[str] | None, class_list_name: str | None):
        self.root, self.opts, self.finder = root, opts, finder
        self.train_classes = train_classes
        self.class_list, self.class_list_name = class_list, class_list_name

    def disp(self, path: Path) -> str:
        return _display(path, self.root)

    def candidates(self) -> list[_LabelSource]:
        """Label sources present, in priority order."""
        if self.opts.val_labels is not None:
            path = Path(self.opts.val_labels)
            if not path.is_file():
                raise LayoutError(f"{path}: --val-labels file not found")
            return [_LabelSource(_sniff_format(_read_text(path, "label file"), path), path)]
        found = []
        for fmt, name in _AUTO_ORDER:
            hit = self.finder.find(name)
            if hit:
                found.append(_LabelSource(fmt, hit))
            if fmt == "devkit":
                archive = self.finder.devkit_archive()
                member = archive and self.finder.devkit_member(archive, "data/" + DEVKIT_GROUND_TRUTH)
                if member:
                    found.append(_LabelSource("devkit", archive, member[0]))
        return found

    def looked_for(self) -> str:
        names = ", ".join(name for _, name in _AUTO_ORDER) + f" (or {DEVKIT_ARCHIVES[0]})"
        dirs = ", ".join("SRC" if d == self.root else f"SRC/{self.disp(d)}" for d in self.finder.dirs if d.is_dir())
        return f"looked for {names} in {dirs}"

    def source_name(self, src: _LabelSource) -> str:
        return f"{self.disp(src.path)}:{src.member}" if src.member else self.disp(src.path)

    def text(self, src: _LabelSource) -> str:
        if src.member:
            _, data = self.finder.devkit_member(src.path, src.member)
            try:
                return data.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise LayoutError(f"{self.source_name(src)}: not UTF-8 text") from None
        return _read_text(src.path, "label file")

    def id_map(self) -> tuple[dict[int, str], str]:
        """{ILSVRC2012_ID: wnid} and where it came from."""
        if self.opts.id_map is not None:
            path = Path(self.opts.id_map)
            if not path.is_file():
                raise LayoutError(f"{path}: --id-map file not found")
            if path.suffix.lower() == ".mat":
                with open(path, "rb") as f:
                    return _parse_meta_mat(f, str(path)), self.disp(path)
            return _parse_id_map_text(_read_text(path, "id map"), str(path)), self.disp(path)
        for name in ID_MAP_TEXTS:
            hit = self.finder.find(name)
            if hit:
                return _parse_id_map_text(_read_text(hit, "id map"), str(hit)), self.disp(hit)
        mats: list[tuple[str, object]] = []
        hit = self.finder.find(META_MAT)
        if hit:
            mats.append((self.disp(hit), hit))
        archive = self.finder.devkit_archive()
        member = archive and self.finder.devkit_member(archive, "data/" + META_MAT)
        if member:
            mats.append((f"{self.disp(archive)}:{member[0]}", member[1]))
        if not mats:
            raise _Unavailable("needs an ILSVRC2012_ID -> wnid map: pass --id-map (the devkit's data/meta.mat or a "
                               "map_clsloc.txt-style file), or put map_clsloc.txt / imagenet_folder_id_class.txt "
                               "in SRC")
        name, obj = mats[0]
        if not _have_scipy():
            raise _Unavailable(f"needs an ILSVRC2012_ID -> wnid map and only {name} was found: {_NO_SCIPY}")
        if isinstance(obj, Path):
            with open(obj, "rb") as f:
                return _parse_meta_mat(f, name), name
        return _parse_meta_mat(io.BytesIO(obj), name), name

    def caffe_classes(self) -> tuple[list[str], str]:
        """The sorted full class list that Caffe indices count, and where it came from."""
        if self.opts.classes_file is not None:
            return sorted(self.class_list), self.class_list_name
        for name in SYNSET_LISTS:
            hit = self.finder.find(name)
            if hit:
                return sorted(read_class_list(hit)), self.disp(hit)
        if len(self.train_classes) == 1000:
            return sorted(self.train_classes), "the train classes"
        raise _Unavailable(f"holds indices into the sorted list of all 1000 ImageNet classes, but only the "
                           f"{len(self.train_classes)} train classes are known; pass --classes synset_words.txt "
                           f"(or put synset_words.txt in SRC)")

    def load(self, src: _LabelSource) -> _Labels:
        name = self.source_name(src)
        base = f"{src.path.name}:{src.member}" if src.member else src.path.name
        text = self.text(src)
        if src.fmt == "devkit":
            id_map, map_name = self.id_map()
            labels = _parse_devkit(text, name, id_map, map_name)
            return _Labels(labels, f"devkit ground truth ({base} via {posixpath.basename(map_name)})", name)
        if src.fmt == "kaggle":
            return _Labels(_parse_kaggle(text, name), f"Kaggle solution ({base})", name)
        if src.fmt == "tf":
            return _Labels(_parse_tf(text, name), f"TensorFlow synset labels ({base})", name)
        if src.fmt == "valprep":
            return _Labels(_parse_valprep(text, name), f"valprep.sh moves ({base})", name)
        classes, list_name = self.caffe_classes()
        return _Labels(_parse_caffe(text, name, classes, list_name),
                       f"Caffe val.txt ({base}: indices into the {len(classes)} sorted wnids of "
                       f"{posixpath.basename(list_name)})", name)

    def resolve(self, notes: list[str]) -> _Labels | None:
        """The labels of the first usable source (None when no label file exists at all)."""
        cands = self.candidates()
        if not cands:
            return None
        skipped = []
        for k, src in enumerate(cands):
            try:
                labels = self.load(src)
            except _Unavailable as exc:
                if self.opts.val_labels is not None:
                    raise LayoutError(f"{self.source_name(src)} ({_FORMAT_NAMES[src.fmt]}): {exc}") from None
                skipped.append(f"{self.source_name(src)} ({_FORMAT_NAMES[src.fmt]}): {exc}")
                continue
            for s in skipped:
                notes.append(f"val labels: skipped {s}")
            rest = [self.source_name(c) for c in cands[k + 1:]]
            if rest:
                notes.append(f"val labels: also present, not used (lower priority): {', '.join(rest)}")
            return labels
        raise LayoutError(f"{self.root}: no usable val label file: {'; '.join(skipped)}")


# ---------------------------------------------------------------------------------------------------------
# Scanning.


def _scan_folder_split(split_dir: Path, root: Path, exclude: set[Path], skip_meta: bool) -> _Split:
    """Scan ``split_dir``: files in subfolders belong to that class, files directly in it are flat."""
    where = _display(split_dir, root) + "/"
    split = _Split(where=where)
    prefix = os.path.join(str(root), "")
    try:
        entries = sorted(os.scandir(split_dir), key=lambda e: e.name)
    except OSError as exc:
        raise LayoutError(f"{split_dir}: cannot list: {exc.strerror or exc}") from None
    for entry in entries:
        if entry.is_dir():
            split.classes.append(entry.name)
            for f in _walk_files(entry.path):
                split.by_class.append((entry.name, f, f[len(prefix):].replace(os.sep, "/"), -1, -1))
        else:  # a file, or a dangling link that the sharder then rejects as unreadable
            if skip_meta and (entry.name in META_NAMES or Path(entry.path) in exclude):
                continue
            split.flat.append((_stem(entry.name), entry.path, entry.path[len(prefix):].replace(os.sep, "/"), -1, -1))
    return split


def _detect(root: Path) -> LayoutKind:
    found: list[tuple[LayoutKind, str]] = []
    if root.joinpath(*KAGGLE_DATA).is_dir():
        found.append((LayoutKind.KAGGLE, "/".join(KAGGLE_DATA) + "/"))
    archives = _archive_candidates(root)
    if archives:
        found.append((LayoutKind.ARCHIVES, ", ".join(archives)))
    dirs = [f"{s}/" for s in SPLITS if (root / s).is_dir()]
    if dirs:
        found.append((LayoutKind.CLASS_FOLDERS, " and ".join(dirs)))
    if not found:
        raise LayoutError(f"{root}: no ImageNet layout found; looked for train/ and val/ (class folders or flat val), "
                          f"{'/'.join(KAGGLE_DATA)}/ (Kaggle), {TRAIN_ARCHIVE} / {VAL_ARCHIVE} (archives); "
                          f"give the folder that holds one of them")
    if len(found) > 1:
        what = "; ".join(f"{k.value}: {w}" for k, w in found)
        raise LayoutError(f"{root}: holds more than one layout ({what}); choose with --layout "
                          f"{' or --layout '.join(k.value for k, _ in found)}")
    return found[0][0]


class _Scan:
    """One :func:`scan_source` run: the raw splits, then classes and labels."""

    def __init__(self, root: Path, opts: LayoutOptions):
        self.root, self.opts = root, opts
        self.unusable: list[Unusable] = []
        self.notes: list[str] = []
        self.class_list: list[str] | None = None
        self.class_list_name: str | None = None
        if opts.classes_file is not None:
            self.class_list = read_class_list(opts.classes_file)
            self.class_list_name = _display(Path(opts.classes_file).resolve(), root)
        self.explicit = {Path(p).resolve() for p in (opts.classes_file, opts.val_labels, opts.id_map) if p}

    def folders(self, base: Path, kind: LayoutKind, head: str) -> SourceTree:
        train_dir, val_dir = base / "train", base / "val"
        train = _scan_folder_split(train_dir, self.root, self.explicit, False) if train_dir.is_dir() else None
        val = _scan_folder_split(val_dir, self.root, self.explicit, True) if val_dir.is_dir() else None
        if train is not None:
            for _, path, rel, _, _ in train.flat:
                self.unusable.append(Unusable(SourceItem(path, rel, -1), RejectReason.NOT_IN_CLASS,
                                              "file is not inside a class folder"))
            if not train.classes and self.class_list is None:
                raise LayoutError(f"{train_dir}: no class folders; expected train/<class>/<image files>")
        extra = [val_dir] if val_dir.is_dir() else []
        return self.build(kind, head, train, val, extra)

    def archives(self) -> SourceTree:
        train_tar = _find_archive(self.root, TRAIN_ARCHIVE)
        val_tar = _find_archive(self.root, VAL_ARCHIVE)
        if train_tar is None and val_tar is None:
            raise LayoutError(f"{self.root}: neither {TRAIN_ARCHIVE} nor {VAL_ARCHIVE} is there; give the folder "
                              f"holding the original ILSVRC2012 archives")
        train = _scan_train_archive(train_tar, self.unusable) if train_tar else None
        val = _scan_val_archive(val_tar, self.unusable) if val_tar else None
        head = f"archives ({TRAIN_ARCHIVE}: {len(train.classes)} per-class tars)" if train else "archives"
        return self.build(LayoutKind.ARCHIVES, head, train, val, [])

    def build(self, kind: LayoutKind, head: str, train: _Split | None, val: _Split | None,
              extra_dirs: list[Path]) -> SourceTree:
        """Fix the class list, label every entry, and state what was found."""
        train_classes = train.classes if train else []
        classes, class_words = self.classes(kind, train)
        index = {c: i for i, c in enumerate(classes)}
        tree = SourceTree(root=self.root, classes=classes, unusable=self.unusable, notes=self.notes,
                          kind=kind.value)
        words = [head]
        if train is not None:
            tree.items["train"] = sorted((SourceItem(path, rel, index[c], off, size)
                                          for c, path, rel, off, size in train.by_class), key=lambda it: it.relpath)
        if val is not None:
            for c in val.classes:
                if c not in index:
                    where = f"--classes {self.class_list_name}" if self.class_list else train.where
                    raise LayoutError(f"{self.root / val.class_path(c)}: class '{c}' of {val.where} is not a "
                                      f"class of {where}; remove it or add it there")
            items = [SourceItem(path, rel, index[c], off, size) for c, path, rel, off, size in val.by_class]
            val_words = ["val class folders"] if val.classes else []
            if val.flat:
                labels = self.val_labels(extra_dirs, train_classes)
                if labels is None and val.classes:  # a few strays beside class folders, as before
                    for _, path, rel, off, size in val.flat:
                        self.unusable.append(Unusable(SourceItem(path, rel, -1, off, size), RejectReason.NOT_IN_CLASS,
                                                      "file is not inside a class folder (and no val label file "
                                                      "was found)"))
                elif labels is None:
                    looked = _Resolver(self.root, self.opts, _Finder(self.root, extra_dirs), [], None,
                                       None).looked_for()
                    raise LayoutError(f"{self.root / val.where.rstrip('/')}: flat val ({len(val.flat)} files, no "
                                      f"class folders) and no val label file; {looked}; pass --val-labels")
                else:
                    labelled, absent = self.label_flat(val, labels, index, classes)
                    items += labelled
                    flat = f"{val.where} (flat)" if val.is_archive else "flat val"
                    val_words.append(f"{flat} labelled by {labels.description}")
                    if absent:
                        val_words[-1] += f" ({absent} of its {len(labels.by_stem)} labelled images not present)"
            tree.items["val"] = sorted(items, key=lambda it: it.relpath)
            words.append(" + " + (" and ".join(val_words) if val_words else "empty val"))
        tree.layout = "".join(words) + f"; classes: {class_words}"
        return tree

    def classes(self, kind: LayoutKind, train: _Split | None) -> tuple[list[str], str]:
        """The class list and how it was chosen, in words."""
        train_classes = train.classes if train else []
        if self.class_list is not None:
            known = set(self.class_list)
            extra = [c for c in train_classes if c not in known]
            if extra:
                raise LayoutError(f"{train.class_path(extra[0])}: train class '{extra[0]}' is not in --classes "
                                  f"{self.class_list_name}" + (f" (nor are {len(extra) - 1} more)" if len(extra) > 1
                                                               else "") + "; fix the class list")
            return list(self.class_list), f"{len(self.class_list)} from --classes {self.class_list_name} (file order)"
        if kind is LayoutKind.KAGGLE:
            mapping = self.root / KAGGLE_MAPPING
            if mapping.is_file():
                listed = sorted(read_class_list(mapping))
                known = set(listed)
                extra = [c for c in train_classes if c not in known]
                if extra:
                    raise LayoutError(f"{train.class_path(extra[0])}: train class '{extra[0]}' is not in "
                                      f"{KAGGLE_MAPPING}; fix the tree or pass --classes")
                return listed, f"{len(listed)} sorted wnids of {KAGGLE_MAPPING}"
            self.notes.append(f"classes: no {KAGGLE_MAPPING} in SRC, using the sorted train classes")
        if not train_classes:
            raise LayoutError(f"{self.root}: no train split to take the classes from; pass --classes "
                              f"(e.g. synset_words.txt) to fix the class list")
        return list(train_classes), f"{len(train_classes)} sorted train class names"

    def val_labels(self, extra_dirs: list[Path], train_classes: list[str]) -> _Labels | None:
        finder = _Finder(self.root, extra_dirs)
        resolver = _Resolver(self.root, self.opts, finder, train_classes, self.class_list, self.class_list_name)
        return resolver.resolve(self.notes)

    def label_flat(self, val: _Split, labels: _Labels, index: dict[str, int],
                   classes: list[str]) -> tuple[list[SourceItem], int]:
        """Label the flat val entries: (items, label lines whose image is not present)."""
        items, unknown = [], {}
        present = set()
        for stem, path, rel, off, size in val.flat:
            present.add(stem)
            wnid = labels.by_stem.get(stem)
            if wnid is None:
                self.unusable.append(Unusable(SourceItem(path, rel, -1, off, size), RejectReason.NO_LABEL,
                                              f"{stem} is not listed in {labels.source}"))
            elif wnid not in index:
                unknown.setdefault(wnid, rel)
            else:
                items.append(SourceItem(path, rel, index[wnid], off, size))
        if unknown:
            wnid, rel = next(iter(unknown.items()))
            more = f" ({len(unknown) - 1} more unknown classes)" if len(unknown) > 1 else ""
            known = (f"--classes {self.class_list_name}" if self.class_list is not None
                     else f"the {len(classes)} classes of this source")
            raise LayoutError(f"{rel}: class {wnid} (from {labels.source}) is not in {known}{more}; "
                              f"remove those val images or pass --classes with the full class list")
        absent = len(set(labels.by_stem) - present)
        if absent:
            self.notes.append(f"val labels: {absent} of the {len(labels.by_stem)} images {labels.source} labels "
                              f"are not present")
        return items, absent


def scan_source(src: str | os.PathLike, opts: LayoutOptions = LayoutOptions()) -> SourceTree:
    """Scan an ImageNet source in any supported layout (see the module doc), detected or forced.

    Detection (``opts.layout == AUTO``): ``SRC/ILSVRC/Data/CLS-LOC/`` → kaggle; ``ILSVRC2012_img_train.tar``
    or ``ILSVRC2012_img_val.tar`` (or a compressed variant, which is then an error) → archives; ``SRC/train/``
    or ``SRC/val/`` → class-folders. Exactly one must match.

    Returns:
        A :class:`SourceTree` with ``items["train"]`` / ``items["val"]`` for the splits present (sorted by
        relpath), the files that cannot be samples in ``unusable`` (not in a class folder; flat val image the
        label file does not list: ``NO_LABEL``; non-tar member of the train archive; links in archives),
        ``layout`` in words and ``notes``.

    Raises:
        LayoutError: one line naming the file or folder and what to do, for: no layout or several layouts
            found; a forced layout that is not there; compressed or truncated archives; a flat val without
            a usable label file; malformed label/class/id-map files; a train class missing from
            ``classes_file``; a val class or labelled val wnid outside the class list; no train split and no
            ``classes_file``; a label file name found in several search folders.
    """
    root = Path(src).expanduser().resolve()
    if not root.is_dir():
        raise LayoutError(f"{root}: not a folder; give the ImageNet root (holding train/ and val/, "
                          f"{KAGGLE_DATA[0]}/, or the ILSVRC2012_img_*.tar archives)")
    kind = LayoutKind(opts.layout)
    auto = kind is LayoutKind.AUTO
    if auto:
        kind = _detect(root)
    scan = _Scan(root, opts)
    if kind is LayoutKind.CLASS_FOLDERS:
        if not (root / "train").is_dir() and not (root / "val").is_dir():
            raise LayoutError(f"{root}: no train/ folder; expected SRC/train/<class>/*.JPEG "
                              f"(and optionally SRC/val/<class>/*.JPEG or a flat SRC/val/)")
        tree = scan.folders(root, kind, "class-folders (train)" if (root / "train").is_dir() else "class-folders")
    elif kind is LayoutKind.KAGGLE:
        base = root.joinpath(*KAGGLE_DATA)
        if not base.is_dir():
            raise LayoutError(f"{root}: no {'/'.join(KAGGLE_DATA)}/ folder; give the folder that holds Kaggle's "
                              f"ILSVRC/ and LOC_val_solution.csv")
        others = sorted(p.name for p in base.iterdir() if p.is_dir() and p.name not in SPLITS)
        if "test" in others:
            n = sum(1 for _ in os.scandir(base / "test"))
            scan.notes.append(f"{'/'.join(KAGGLE_DATA)}/test/ ignored: {n} unlabelled images")
        for name in others:
            if name != "test":
                scan.notes.append(f"{'/'.join(KAGGLE_DATA)}/{name}/ ignored: not a split")
        tree = scan.folders(base, kind, f"kaggle ({'/'.join(KAGGLE_DATA)}: train class folders)")
        if "test" in others:
            tree.layout += "; test/ ignored (unlabelled)"
    else:
        tree = scan.archives()
    if not auto:
        tree.notes.append(f"layout forced: {kind.value}")
    return tree


def scan_class_folders(root: str | os.PathLike) -> SourceTree:
    """Scan ``root/train/<class>/...`` and ``root/val/<class>/...`` (no label files, no other layout).

    Files nested deeper inside a class folder belong to that class. Files directly inside
    ``train/`` or ``val/`` are strays (``NOT_IN_CLASS``), even in a flat val; use :func:`scan_source` to
    label a flat val.

    Raises:
        LayoutError: ``root`` has no ``train/`` folder with class folders, or ``val/`` has a class that
            ``train/`` lacks.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise LayoutError(f"{root}: not a folder; give the ImageNet root that holds train/ and val/")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise LayoutError(f"{root}: no train/ folder; expected SRC/train/<class>/*.JPEG "
                          f"(and optionally SRC/val/<class>/*.JPEG)")
    train = _scan_folder_split(train_dir, root, set(), False)
    if not train.classes:
        raise LayoutError(f"{train_dir}: no class folders; expected train/<class>/<image files>")
    index = {name: i for i, name in enumerate(train.classes)}
    tree = SourceTree(root=root, classes=list(train.classes))
    for split_name in SPLITS:
        split_dir = root / split_name
        if not split_dir.is_dir():
            continue
        split = train if split_name == "train" else _scan_folder_split(split_dir, root, set(), False)
        for c in split.classes:
            if c not in index:
                raise LayoutError(f"{split_dir / c}: class '{c}' of {split_name}/ is not a class of train/; "
                                  f"remove it or add train/{c}/")
        for _, path, rel, _, _ in split.flat:
            tree.unusable.append(Unusable(SourceItem(path, rel, -1), RejectReason.NOT_IN_CLASS,
                                          "file is not inside a class folder"))
        tree.items[split_name] = sorted((SourceItem(path, rel, index[c]) for c, path, rel, _, _ in split.by_class),
                                        key=lambda it: it.relpath)
    return tree
