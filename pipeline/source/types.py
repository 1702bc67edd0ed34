"""Types: what a source scan takes and returns (options, one input file, one unusable file, the scanned tree,
the raw split found on disk before labels are known) and the one error it raises. One job: the scan's typed
vocabulary, shared by :mod:`archives`, :mod:`val_labels` and :mod:`scan`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from pipeline.dataset import LayoutKind, RejectReason  # noqa: F401 (LayoutKind: the scan's vocabulary too)


class LayoutError(Exception):
    """The source tree is not a layout the sharder understands (message says what to do)."""


@dataclass(frozen=True)
class LayoutOptions:
    """Options of :func:`scan_source`.

    Attributes:
        layout: the layout to read; ``AUTO`` detects it.
        classes_file: fixed class list: the first whitespace-separated token of each non-empty line (e.g.
            ``synset_words.txt``, ``LOC_synset_mapping.txt``); label = line index. Without it the classes are
            the sorted train class names (Kaggle: the sorted wnids of ``LOC_synset_mapping.txt``).
        val_labels: label file of a flat val (devkit ground truth, ``LOC_val_solution.csv``, Caffe ``val.txt``,
            TensorFlow synset labels, ``valprep.sh`` or ``<file>,<class name or index>`` lines; the format is
            recognised from the content, and errors say which one was tried).
            None: found in SRC (see :mod:`pipeline.source.val_labels` for the order).
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


@dataclass
class RawSplit:
    """One split as found on disk: class-labelled entries, flat entries and class names.

    Entries are ``(name, path, relpath, offset, size)``: ``name`` is the class for ``by_class`` and the file
    stem for ``flat``. ``unreadable`` holds the folders that could not be listed, as ``(path, relpath, why)``
    (their files are unknown); ``empty`` the classes whose folder (or per-class tar) holds no file at all.
    """

    where: str  # what it is, for messages: "train/" (relative to SRC) or "ILSVRC2012_img_train.tar"
    classes: list[str] = field(default_factory=list)
    by_class: list[tuple[str, str, str, int, int]] = field(default_factory=list)
    flat: list[tuple[str, str, str, int, int]] = field(default_factory=list)
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)

    @property
    def is_archive(self) -> bool:
        return self.where.endswith(".tar")

    def class_path(self, cls: str) -> str:
        """Where class ``cls`` lives: ``train/<cls>`` or ``ILSVRC2012_img_train.tar/<cls>.tar``."""
        return f"{self.where}/{cls}.tar" if self.is_archive else f"{self.where}{cls}"
