"""Val labels: find the label file of a flat val in SRC and turn it into ``{file stem: wnid}``. One job: choose
which label source to use (and its id map or class list), say why the others were not; parsing each format is
:mod:`pipeline.source.labels`'s job.

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

A ``--val-labels`` file's format is recognised from its content; that includes home-made ``<file>,<class>``
lists (CSV: class names, or 0-based indices into the sorted full class list as in Caffe's ``val.txt``), which
are also recognised in a file found under the Caffe or TensorFlow name. Errors say which format was tried.

A source whose companion file is missing (devkit labels without an id map, val.txt without the full class
list) is skipped for the next one, and said so; if none is usable, the error names each one's problem.
Images are matched to label lines by file stem (``ILSVRC2012_val_00000001``), whatever their extension.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from pipeline.source.labels import (NO_SCIPY, have_scipy, parse_caffe, parse_csv, parse_devkit, parse_id_map_text,
                                    parse_kaggle, parse_meta_mat, parse_tf, parse_valprep, read_class_list, read_text,
                                    refine_format, sniff_format)
from pipeline.source.names import (CAFFE_LABELS, DEVKIT_ARCHIVES, DEVKIT_GROUND_TRUTH, ID_MAP_TEXTS, KAGGLE_SOLUTION,
                                   META_MAT, SYNSET_LISTS, TF_LABELS, VALPREP, display_path)
from pipeline.source.types import LayoutError, LayoutOptions

_FORMAT_NAMES = MappingProxyType({
    "devkit": "devkit ground truth", "kaggle": "Kaggle solution", "tf": "TensorFlow synset labels",
    "valprep": "valprep.sh moves", "caffe": "Caffe val.txt",
    "csv": "CSV val list ('<image file>,<class name or index>' lines)"})
_AUTO_ORDER = (("devkit", DEVKIT_GROUND_TRUTH), ("kaggle", KAGGLE_SOLUTION), ("tf", TF_LABELS),
               ("valprep", VALPREP), ("caffe", CAFFE_LABELS))


class _Unavailable(Exception):
    """A label source whose companion file (id map, full class list) is missing; message says what to pass."""


@dataclass
class _LabelSource:
    fmt: str
    path: Path  # the file, or the devkit archive holding it
    member: str | None = None  # member of the devkit archive
    sniffed: bool = False  # the format was recognised from the content (a --val-labels file), not the name


@dataclass
class ValLabels:
    """The labels of a flat val: {file stem: wnid}, their source in words (for the layout line) and its name;
    ``read_as``: the format it was read as and how that was chosen, in words (for messages)."""

    by_stem: dict[str, str]
    description: str
    source: str
    read_as: str = ""


class LabelFinder:
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
            where = ", ".join(display_path(h, self.root) for h in hits)
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


class LabelResolver:
    """Turns the label sources of a flat val into {file stem: wnid}."""

    def __init__(self, root: Path, opts: LayoutOptions, finder: LabelFinder, train_classes: list[str],
                 class_list: list[str] | None, class_list_name: str | None):
        self.root, self.opts, self.finder = root, opts, finder
        self.train_classes = train_classes
        self.class_list, self.class_list_name = class_list, class_list_name

    def disp(self, path: Path) -> str:
        return display_path(path, self.root)

    def candidates(self) -> list[_LabelSource]:
        """Label sources present, in priority order."""
        if self.opts.val_labels is not None:
            path = Path(self.opts.val_labels)
            if not path.is_file():
                raise LayoutError(f"{path}: --val-labels file not found")
            return [_LabelSource(sniff_format(read_text(path, "label file"), path), path, sniffed=True)]
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
        return read_text(src.path, "label file")

    def id_map(self) -> tuple[dict[int, str], str]:
        """{ILSVRC2012_ID: wnid} and where it came from."""
        if self.opts.id_map is not None:
            path = Path(self.opts.id_map)
            if not path.is_file():
                raise LayoutError(f"{path}: --id-map file not found")
            if path.suffix.lower() == ".mat":
                with open(path, "rb") as f:
                    return parse_meta_mat(f, str(path)), self.disp(path)
            return parse_id_map_text(read_text(path, "id map"), str(path)), self.disp(path)
        for name in ID_MAP_TEXTS:
            hit = self.finder.find(name)
            if hit:
                return parse_id_map_text(read_text(hit, "id map"), str(hit)), self.disp(hit)
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
        if not have_scipy():
            raise _Unavailable(f"needs an ILSVRC2012_ID -> wnid map and only {name} was found: {NO_SCIPY}")
        if isinstance(obj, Path):
            with open(obj, "rb") as f:
                return parse_meta_mat(f, name), name
        return parse_meta_mat(io.BytesIO(obj), name), name

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

    def load(self, src: _LabelSource) -> ValLabels:
        """Parse ``src`` in its format (one found by name is first checked against its content)."""
        name = self.source_name(src)
        base = f"{src.path.name}:{src.member}" if src.member else src.path.name
        text = self.text(src)
        src.fmt = refine_format(src.fmt, text)
        labels = self.parse(src.fmt, text, name, base)
        how = "recognised from its content" if src.sniffed or src.fmt == "csv" else "chosen by its name"
        labels.read_as = f"{_FORMAT_NAMES[src.fmt]}, {how}"
        return labels

    def parse(self, fmt: str, text: str, name: str, base: str) -> ValLabels:
        """The labels of ``text`` (the file ``name``, ``base`` for short) read as format ``fmt``."""
        if fmt == "devkit":
            id_map, map_name = self.id_map()
            labels = parse_devkit(text, name, id_map, map_name)
            return ValLabels(labels, f"devkit ground truth ({base} via {posixpath.basename(map_name)})", name)
        if fmt == "kaggle":
            return ValLabels(parse_kaggle(text, name), f"Kaggle solution ({base})", name)
        if fmt == "tf":
            return ValLabels(parse_tf(text, name), f"TensorFlow synset labels ({base})", name)
        if fmt == "valprep":
            return ValLabels(parse_valprep(text, name), f"valprep.sh moves ({base})", name)
        if fmt == "csv":
            return self.parse_csv(text, name, base)
        classes, list_name = self.caffe_classes()
        return ValLabels(parse_caffe(text, name, classes, list_name),
                       f"Caffe val.txt ({base}: indices into the {len(classes)} sorted wnids of "
                       f"{posixpath.basename(list_name)})", name)

    def parse_csv(self, text: str, name: str, base: str) -> ValLabels:
        """A ``<file>,<class>`` list: class names, or indices into the sorted full class list (as Caffe's)."""
        used: list[tuple[list[str], str]] = []

        def index_classes() -> tuple[list[str], str]:
            used.append(self.caffe_classes())
            return used[0]

        labels = parse_csv(text, name, index_classes)
        if not used:
            return ValLabels(labels, f"CSV val list ({base}: '<file>,<class name>' lines)", name)
        classes, list_name = used[0]
        return ValLabels(labels, f"CSV val list ({base}: '<file>,<index>' lines, indices into the {len(classes)} "
                                 f"sorted wnids of {posixpath.basename(list_name)})", name)

    def resolve(self, notes: list[str]) -> ValLabels | None:
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
