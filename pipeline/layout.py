"""Find the samples of an ImageNet-style class-folder tree.

Layout: ``SRC/train/<class>/<file>`` and ``SRC/val/<class>/<file>`` (ImageNet after valprep.sh, or any
torchvision ImageFolder pair such as hymenoptera_data). Class index = position of the class folder
name in the sorted list of train class folders (torchvision ImageFolder order; for the 1000 ImageNet
wnids this is the canonical sorted-wnid index used by torchvision, timm and Caffe).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.images import RejectReason

SPLITS = ("train", "val")


class LayoutError(Exception):
    """The source tree is not a layout the sharder understands (message says what to do)."""


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
    """What :func:`scan_class_folders` found.

    Attributes:
        root: the source root.
        classes: sorted class folder names of the train split.
        items: split name → its labelled files, sorted by relative path.
        unusable: files that go straight to the rejects report (outside any class folder, no label, ...).
        layout: what was detected, in words (stated in the sharder's output).
    """

    root: Path
    classes: list[str]
    items: dict[str, list[SourceItem]] = field(default_factory=dict)
    unusable: list[Unusable] = field(default_factory=list)
    layout: str = "class-folders"

    @property
    def num_files(self) -> int:
        return sum(len(v) for v in self.items.values()) + len(self.unusable)


def _files_under(folder: Path) -> list[Path]:
    """Every regular file under ``folder``, recursively, in sorted order (symlinks followed)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        out.extend(Path(dirpath) / name for name in sorted(filenames))
    return out


def scan_class_folders(root: str | os.PathLike) -> SourceTree:
    """Scan ``root/train/<class>/...`` and ``root/val/<class>/...``.

    Files nested deeper inside a class folder belong to that class. Files directly inside
    ``train/`` or ``val/`` are strays.

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
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise LayoutError(f"{train_dir}: no class folders; expected train/<class>/<image files>")
    index = {name: i for i, name in enumerate(classes)}
    tree = SourceTree(root=root, classes=classes)
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        items = []
        for entry in sorted(split_dir.iterdir()):
            if entry.is_dir():
                if entry.name not in index:
                    raise LayoutError(f"{entry}: class '{entry.name}' of {split}/ is not a class of train/; "
                                      f"remove it or add train/{entry.name}/")
                label = index[entry.name]
                for f in _files_under(entry):
                    items.append(SourceItem(str(f), f.relative_to(root).as_posix(), label))
            elif entry.is_file():
                tree.unusable.append(Unusable(SourceItem(str(entry), entry.relative_to(root).as_posix(), -1),
                                             RejectReason.NOT_IN_CLASS, "file is not inside a class folder"))
        items.sort(key=lambda it: it.relpath)
        tree.items[split] = items
    return tree
