"""Scan: detect the layout of an ImageNet source and scan it into a labelled :class:`SourceTree`. One job: from a
folder to the samples of each split and the files that cannot be samples, whatever layout it was downloaded or
unpacked in (tars are read by :mod:`pipeline.source.archives`, flat val labels chosen by
:mod:`pipeline.source.val_labels`).

:func:`scan_source` detects the layout (or takes the one forced by ``LayoutOptions.layout``) and states what
it found in :attr:`SourceTree.layout`:

``class-folders``
    ``SRC/train/<class>/<file>`` and ``SRC/val/<class>/<file>`` (ImageNet after valprep.sh, or any
    torchvision ImageFolder pair such as hymenoptera_data). ``SRC/val/`` may instead be *flat*
    (``SRC/val/ILSVRC2012_val_00000001.JPEG`` ...), labelled by a label file (see
    :mod:`pipeline.source.val_labels`).
``kaggle``
    The Kaggle "ImageNet Object Localization Challenge" tree: ``SRC/ILSVRC/Data/CLS-LOC/train/<wnid>/``,
    a flat ``SRC/ILSVRC/Data/CLS-LOC/val/``, ``SRC/LOC_val_solution.csv`` and ``SRC/LOC_synset_mapping.txt``.
    ``CLS-LOC/test/`` (unlabelled) is ignored, and said so.
``archives``
    The original downloads read in place, never extracted: ``SRC/ILSVRC2012_img_train.tar`` (an uncompressed
    tar of per-class tars ``<wnid>.tar``) and ``SRC/ILSVRC2012_img_val.tar`` (flat val images), labelled by a
    label file as a flat val is. Only the tar headers are read while scanning; each item records the absolute
    byte offset and size of its data in the outer file.

Class index: position in the sorted train class names (torchvision ImageFolder order; for the 1000
ImageNet wnids this is the canonical sorted-wnid index of torchvision, timm and Caffe); for the Kaggle tree
the sorted wnids of ``LOC_synset_mapping.txt``. ``LayoutOptions.classes_file`` fixes the list instead (line
order). Every input file ends in :attr:`SourceTree.items` or :attr:`SourceTree.unusable`, and so does every
folder that cannot be listed (its files are unknown); label and metadata files are not inputs. A train class
folder without any file is an error when the classes are the sorted folder names (as torchvision's ImageFolder
refuses it): it would take an index and shift every class after it.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.dataset import RejectReason
from pipeline.source.archives import archive_candidates, find_archive, scan_train_archive, scan_val_archive
from pipeline.source.labels import read_class_list
from pipeline.source.names import (KAGGLE_DATA, KAGGLE_MAPPING, META_NAMES, TRAIN_ARCHIVE, VAL_ARCHIVE, display_path,
                                   file_stem)
from pipeline.source.types import LayoutError, LayoutKind, LayoutOptions, RawSplit, SourceItem, SourceTree, Unusable
from pipeline.source.val_labels import LabelFinder, LabelResolver, ValLabels

SPLITS = ("train", "val")


def _walk_files(folder: str, errors: list[OSError]) -> list[str]:
    """Every regular file under ``folder``, recursively, in sorted order (symlinks followed, but a real
    directory is entered only once and never one above ``folder``, so a symlink loop cannot repeat files).
    A folder that cannot be listed (``folder`` itself or one below it) is appended to ``errors`` as the
    ``OSError`` that ``os.scandir`` raised (its ``filename`` is the folder)."""
    out = []
    seen: set[str] = set()
    top = os.path.realpath(folder)
    for dirpath, dirnames, filenames in os.walk(folder, onerror=errors.append, followlinks=True):
        real = top if dirpath == folder else os.path.realpath(dirpath)  # os.walk yields ``folder`` first, as given
        # a folder entered before, or one that holds the folder being walked (a link back up), is a loop
        if real in seen or (real != top and (top + os.sep).startswith(real.rstrip(os.sep) + os.sep)):
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        out.extend(os.path.join(dirpath, name) for name in sorted(filenames))
    return out


def _scan_folder_split(split_dir: Path, root: Path, exclude: set[Path], skip_meta: bool) -> RawSplit:
    """Scan ``split_dir``: files in subfolders belong to that class, files directly in it are flat; folders
    that cannot be listed go to ``unreadable``, class folders without any file to ``empty``."""
    where = display_path(split_dir, root) + "/"
    split = RawSplit(where=where)
    prefix = os.path.join(str(root), "")
    try:
        entries = sorted(os.scandir(split_dir), key=lambda e: e.name)
    except OSError as exc:
        raise LayoutError(f"{split_dir}: cannot list: {exc.strerror or exc}; fix its permissions") from None
    for entry in entries:
        if entry.is_dir():
            split.classes.append(entry.name)
            errors: list[OSError] = []
            files = _walk_files(entry.path, errors)
            split.by_class += [(entry.name, f, _rel(f, prefix), -1, -1) for f in files]
            for e in errors:
                path = str(e.filename or entry.path)
                split.unreadable.append((path, _rel(path, prefix) + "/", f"cannot list this folder: {e.strerror or e}"))
            if not files and not errors:
                split.empty.append(entry.name)
        else:  # a file, or a dangling link that the sharder then rejects as unreadable
            if skip_meta and (entry.name in META_NAMES or Path(entry.path) in exclude):
                continue
            split.flat.append((file_stem(entry.name), entry.path, _rel(entry.path, prefix), -1, -1))
    return split


def _rel(path: str, prefix: str) -> str:
    """``path`` (which starts with ``prefix``, the source root and a separator) relative to the root, ``/``-joined."""
    return path[len(prefix):].replace(os.sep, "/")


def _unreadable(split: RawSplit | None, unusable: list[Unusable], notes: list[str]) -> None:
    """Put the folders of ``split`` that could not be listed into ``unusable`` (one reject each, so the totals
    and ``rejects.tsv`` show them) and say so in one note: their files are unknown, so in no shard."""
    if split is None or not split.unreadable:
        return
    unusable += [Unusable(SourceItem(path, rel, -1), RejectReason.UNREADABLE_FOLDER, why)
                 for path, rel, why in split.unreadable]
    _, rel, why = split.unreadable[0]
    more = f" and {len(split.unreadable) - 1} more folder(s)" if len(split.unreadable) > 1 else ""
    notes.append(f"{rel}{more}: {why}; their files are in no shard (rejects.tsv: "
                 f"{RejectReason.UNREADABLE_FOLDER.value}): fix the permissions and run again")


def _refuse_empty(split: RawSplit, root: Path) -> None:
    """LayoutError for a class folder (or per-class tar) without any file when the classes are the sorted
    class names: it would still take a class index and shift every class after it (torchvision's
    ImageFolder refuses such a tree too)."""
    if not split.empty:
        return
    first = split.empty[0]
    what = "per-class archive" if split.is_archive else "class folder"
    more = f" (and {len(split.empty) - 1} more)" if len(split.empty) > 1 else ""
    raise LayoutError(f"{root / split.class_path(first)}: empty {what}{more}: it would still take class index "
                      f"{split.classes.index(first)} and shift the index of every class after it; remove it, "
                      f"or pass --classes with the full class list to keep it")


def _strays(split: RawSplit, detail: str) -> list[Unusable]:
    """The flat entries of ``split`` as files outside any class folder (``NOT_IN_CLASS``, with ``detail``)."""
    return [Unusable(SourceItem(path, rel, -1, off, size), RejectReason.NOT_IN_CLASS, detail)
            for _, path, rel, off, size in split.flat]


def _detect(root: Path) -> LayoutKind:
    found: list[tuple[LayoutKind, str]] = []
    if root.joinpath(*KAGGLE_DATA).is_dir():
        found.append((LayoutKind.KAGGLE, "/".join(KAGGLE_DATA) + "/"))
    archives = archive_candidates(root)
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
            self.class_list_name = display_path(Path(opts.classes_file).resolve(), root)
        self.explicit = {Path(p).resolve() for p in (opts.classes_file, opts.val_labels, opts.id_map) if p}

    def class_folders(self) -> SourceTree:
        """The class-folders layout: ``SRC/train/<class>/`` and ``SRC/val/`` (class folders or flat)."""
        root = self.root
        if not (root / "train").is_dir() and not (root / "val").is_dir():
            raise LayoutError(f"{root}: no train/ folder; expected SRC/train/<class>/*.JPEG "
                              f"(and optionally SRC/val/<class>/*.JPEG or a flat SRC/val/)")
        head = "class-folders (train)" if (root / "train").is_dir() else "class-folders"
        return self.folders(root, LayoutKind.CLASS_FOLDERS, head)

    def kaggle(self) -> SourceTree:
        """The Kaggle layout: class folders under ``SRC/ILSVRC/Data/CLS-LOC/``; its other folders are noted."""
        data = "/".join(KAGGLE_DATA)
        base = self.root.joinpath(*KAGGLE_DATA)
        if not base.is_dir():
            raise LayoutError(f"{self.root}: no {data}/ folder; give the folder that holds Kaggle's "
                              f"ILSVRC/ and LOC_val_solution.csv")
        try:
            others = sorted(p.name for p in base.iterdir() if p.is_dir() and p.name not in SPLITS)
        except OSError as exc:
            raise LayoutError(f"{base}: cannot list: {exc.strerror or exc}; fix its permissions") from None
        if "test" in others:
            try:
                self.notes.append(f"{data}/test/ ignored: {sum(1 for _ in os.scandir(base / 'test'))} "
                                  f"unlabelled images")
            except OSError as exc:
                self.notes.append(f"{data}/test/ ignored (unlabelled; cannot list it: {exc.strerror or exc})")
        for name in others:
            if name != "test":
                self.notes.append(f"{data}/{name}/ ignored: not a split")
        tree = self.folders(base, LayoutKind.KAGGLE, f"kaggle ({data}: train class folders)")
        if "test" in others:
            tree.layout += "; test/ ignored (unlabelled)"
        return tree

    def folders(self, base: Path, kind: LayoutKind, head: str) -> SourceTree:
        """Class folders under ``base`` (``train/``, ``val/``): their unreadable folders and stray files into
        ``unusable``, then :meth:`build`."""
        train_dir, val_dir = base / "train", base / "val"
        train = _scan_folder_split(train_dir, self.root, self.explicit, False) if train_dir.is_dir() else None
        val = _scan_folder_split(val_dir, self.root, self.explicit, True) if val_dir.is_dir() else None
        _unreadable(train, self.unusable, self.notes)
        _unreadable(val, self.unusable, self.notes)
        if train is not None:
            self.unusable += _strays(train, "file is not inside a class folder")
            if not train.classes and self.class_list is None:
                raise LayoutError(f"{train_dir}: no class folders; expected train/<class>/<image files>")
        extra = [val_dir] if val_dir.is_dir() else []
        return self.build(kind, head, train, val, extra)

    def archives(self) -> SourceTree:
        train_tar = find_archive(self.root, TRAIN_ARCHIVE)
        val_tar = find_archive(self.root, VAL_ARCHIVE)
        if train_tar is None and val_tar is None:
            raise LayoutError(f"{self.root}: neither {TRAIN_ARCHIVE} nor {VAL_ARCHIVE} is there; give the folder "
                              f"holding the original ILSVRC2012 archives")
        train = scan_train_archive(train_tar, self.unusable) if train_tar else None
        val = scan_val_archive(val_tar, self.unusable) if val_tar else None
        head = f"archives ({TRAIN_ARCHIVE}: {len(train.classes)} per-class tars)" if train else "archives"
        return self.build(LayoutKind.ARCHIVES, head, train, val, [])

    def build(self, kind: LayoutKind, head: str, train: RawSplit | None, val: RawSplit | None,
              extra_dirs: list[Path]) -> SourceTree:
        """Fix the class list, label every entry, and state what was found."""
        classes, class_words = self.classes(kind, train)
        index = {c: i for i, c in enumerate(classes)}
        tree = SourceTree(root=self.root, classes=classes, unusable=self.unusable, notes=self.notes,
                          kind=kind.value)
        words = [head]
        if train is not None:
            tree.items["train"] = sorted((SourceItem(path, rel, index[c], off, size)
                                          for c, path, rel, off, size in train.by_class), key=lambda it: it.relpath)
        if val is not None:
            items, val_words = self.val_items(val, train, index, classes, extra_dirs)
            tree.items["val"] = sorted(items, key=lambda it: it.relpath)
            words.append(" + " + (" and ".join(val_words) if val_words else "empty val"))
        tree.layout = "".join(words) + f"; classes: {class_words}"
        return tree

    def val_items(self, val: RawSplit, train: RawSplit | None, index: dict[str, int], classes: list[str],
                  extra_dirs: list[Path]) -> tuple[list[SourceItem], list[str]]:
        """Label the val entries (class folders, then a flat val by its label file): (items, what it is in words)."""
        for c in val.classes:
            if c not in index:
                where = f"--classes {self.class_list_name}" if self.class_list else train.where
                raise LayoutError(f"{self.root / val.class_path(c)}: class '{c}' of {val.where} is not a "
                                  f"class of {where}; remove it or add it there")
        items = [SourceItem(path, rel, index[c], off, size) for c, path, rel, off, size in val.by_class]
        val_words = ["val class folders"] if val.classes else []
        if not val.flat:
            if self.opts.val_labels is not None:  # given but not needed: say so instead of ignoring it silently
                self.notes.append(f"--val-labels {self.opts.val_labels} not used: every val image is in a class "
                                  f"folder, which gives its label")
            return items, val_words
        labels = self.val_labels(extra_dirs, train.classes if train else [])
        if labels is None and val.classes:  # a few strays beside class folders, as before
            self.unusable += _strays(val, "file is not inside a class folder (and no val label file was found)")
        elif labels is None:
            looked = LabelResolver(self.root, self.opts, LabelFinder(self.root, extra_dirs), [], None,
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
        return items, val_words

    def classes(self, kind: LayoutKind, train: RawSplit | None) -> tuple[list[str], str]:
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
        _refuse_empty(train, self.root)
        return list(train_classes), f"{len(train_classes)} sorted train class names"

    def val_labels(self, extra_dirs: list[Path], train_classes: list[str]) -> ValLabels | None:
        finder = LabelFinder(self.root, extra_dirs)
        resolver = LabelResolver(self.root, self.opts, finder, train_classes, self.class_list, self.class_list_name)
        return resolver.resolve(self.notes)

    def label_flat(self, val: RawSplit, labels: ValLabels, index: dict[str, int],
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
                              f"{labels.source} was read as {labels.read_as}: if that is not its format, pass a "
                              f"label file in one of the formats read (--val-labels); else remove those val "
                              f"images or pass --classes with the full class list")
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
        label file does not list: ``NO_LABEL``; non-tar member of the train archive; links in archives; a
        folder that cannot be listed: ``UNREADABLE_FOLDER``, one entry per folder, also named in a note),
        ``layout`` in words and ``notes``.

    Raises:
        LayoutError: one line naming the file or folder and what to do, for: no layout or several layouts
            found; a forced layout that is not there; compressed or truncated archives; a flat val without
            a usable label file; malformed label/class/id-map files; a train class missing from
            ``classes_file``; a val class or labelled val wnid outside the class list; no train split and no
            ``classes_file``; a label file name found in several search folders; a split folder that
            cannot be listed; a train class folder (or per-class tar) without any file while the classes
            are the sorted train class names (it would shift every later index; ``classes_file`` fixes them).
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
        tree = scan.class_folders()
    elif kind is LayoutKind.KAGGLE:
        tree = scan.kaggle()
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
        LayoutError: ``root`` has no ``train/`` folder with class folders, a train class folder without
            any file, or ``val/`` has a class that ``train/`` lacks. (Folders that cannot be listed are
            ``UNREADABLE_FOLDER`` entries of ``unusable``, as in :func:`scan_source`.)
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
    _refuse_empty(train, root)
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
        _unreadable(split, tree.unusable, tree.notes)
        tree.unusable += _strays(split, "file is not inside a class folder")
        tree.items[split_name] = sorted((SourceItem(path, rel, index[c]) for c, path, rel, _, _ in split.by_class),
                                        key=lambda it: it.relpath)
    return tree
