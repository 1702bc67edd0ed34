"""Labels: parse the label, class-list and id-map files of ImageNet's distributions into plain mappings. One
job: text (or ``meta.mat``) in, ``{file stem: wnid}`` / ``{ILSVRC2012_ID: wnid}`` / a class list out, or a
:class:`LayoutError` naming the file, the line and what was expected. Which file to parse is
:mod:`pipeline.source.val_labels`'s job.

Formats: devkit ground truth (one ILSVRC2012_ID per line, line i labels ``ILSVRC2012_val_%08d`` % i), Kaggle
``LOC_val_solution.csv``, TensorFlow synset labels (one wnid per line), ``valprep.sh`` (``mv`` lines), Caffe
``val.txt`` (``<file> <index into the sorted class list>``), home-made ``<file>,<class name or index>`` lists
(CSV); id maps as ``map_clsloc.txt`` text or the devkit's
``meta.mat``; class lists as ``synset_words.txt``-style files.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

from pipeline.source.names import file_stem
from pipeline.source.types import LayoutError

_VAL_ID = "ILSVRC2012_val_{:08d}"
_MV = re.compile(r"^\s*mv\s+(?:-\S+\s+)*(\S+)\s+(\S+?)/*\s*;?\s*$")


def read_text(path: Path, what: str) -> str:
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
    for lineno, line in _numbered_lines(read_text(path, "class list")):
        name = line.split()[0]
        if name in seen:
            raise LayoutError(f"{path}:{lineno}: class {name} already listed on line {seen[name]}; "
                              f"a class list names each class once")
        seen[name] = lineno
        classes.append(name)
    if not classes:
        raise LayoutError(f"{path}: class list is empty")
    return classes


def parse_id_map_text(text: str, name: str) -> dict[int, str]:
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


NO_SCIPY = ("reading meta.mat needs scipy: pip install scipy, or pass --id-map with a map_clsloc.txt-style file "
             "('<wnid> <ILSVRC2012_ID> <name>' lines)")


def have_scipy() -> bool:
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        return False
    return True


def parse_meta_mat(fileobj, name: str) -> dict[int, str]:
    """The devkit's ``meta.mat`` (struct array ``synsets``) → {ILSVRC2012_ID: wnid} of the leaf classes.

    Raises:
        LayoutError: scipy is not installed, or the file is not the devkit's meta.mat.
    """
    try:
        from scipy.io import loadmat
    except ImportError:
        raise LayoutError(f"{name}: {NO_SCIPY}") from None
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


def parse_devkit(text: str, name: str, id_map: dict[int, str], map_name: str) -> dict[str, str]:
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


def parse_kaggle(text: str, name: str) -> dict[str, str]:
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
        stem = file_stem(image_id.strip())
        if out.get(stem, tokens[0]) != tokens[0]:
            raise LayoutError(f"{name}:{lineno}: {stem} listed again with another class ({tokens[0]} vs "
                              f"{out[stem]})")
        out[stem] = tokens[0]
    return out


def parse_tf(text: str, name: str) -> dict[str, str]:
    out = {}
    for i, line in enumerate(text.rstrip().splitlines(), 1):
        parts = line.split()
        if len(parts) != 1 or "," in parts[0]:
            raise LayoutError(f"{name}:{i}: expected one wnid per line (TensorFlow synset labels), got {line[:60]!r}")
        out[_VAL_ID.format(i)] = parts[0]
    return out


def _csv_fields(line: str) -> tuple[str, str] | None:
    """``(file, class)`` of a ``<file>,<class>`` line (spaces around the comma allowed; neither field empty nor
    holding a space), else None."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != 2 or not all(parts) or any(len(p.split()) != 1 for p in parts):
        return None
    return parts[0], parts[1]


def _csv_header(rows: list[tuple[int, str, str]]) -> bool:
    """Whether the first ``(lineno, file, class)`` row is a header (``path,label``): no file extension where
    the next row has one, or a word where every other row has an index."""
    if len(rows) < 2:
        return False
    (_, file0, cls0), (_, file1, _) = rows[0], rows[1]
    return ("." not in file0 and "." in file1) or (not cls0.isdigit() and all(r[2].isdigit() for r in rows[1:]))


def parse_csv(text: str, name: str, index_classes) -> dict[str, str]:
    """``<file>,<class>`` lines, a home-made val list (a first ``path,label``-style header line is skipped).

    The class is a class name, or, when every line holds a number there, a 0-based index into the sorted full
    class list as in Caffe's ``val.txt``: ``index_classes()`` returns that list and its name (called only
    then; it raises when the list is not known).
    """
    rows = []
    for lineno, line in _numbered_lines(text):
        fields = _csv_fields(line)
        if fields is None:
            raise LayoutError(f"{name}:{lineno}: expected '<image file>,<class name or index>' (CSV val list), "
                              f"got {line[:60]!r}")
        rows.append((lineno, *fields))
    rows = rows[1:] if _csv_header(rows) else rows
    numeric = sum(cls.isdigit() for _, _, cls in rows)
    if 0 < numeric < len(rows):
        lineno, _, cls = next(r for r in rows if not r[2].isdigit())
        raise LayoutError(f"{name}:{lineno}: class {cls!r} is not an index while other lines hold indices; a CSV "
                          f"val list holds either class names or 0-based class indices")
    if not numeric:
        return {file_stem(f): cls for _, f, cls in rows}
    classes, list_name = index_classes()
    return {file_stem(f): _class_at(int(cls), classes, f"{name}:{lineno}", list_name) for lineno, f, cls in rows}


def _class_at(index: int, sorted_classes: list[str], where: str, list_name: str) -> str:
    """Class ``index`` (0-based) of the sorted full class list, or LayoutError naming ``where`` (file:line)."""
    if index >= len(sorted_classes):
        raise LayoutError(f"{where}: class index {index} is out of range for the {len(sorted_classes)} "
                          f"classes of {list_name}; the indices count the sorted full class list: "
                          f"pass --classes synset_words.txt")
    return sorted_classes[index]



def parse_valprep(text: str, name: str) -> dict[str, str]:
    out = {}
    for lineno, line in _numbered_lines(text):
        m = _MV.match(line)
        if m:
            stem = file_stem(m.group(1).strip("'\""))
            out[stem] = posixpath.basename(m.group(2).strip("'\""))
    if not out:
        raise LayoutError(f"{name}: no 'mv <image> <wnid>/' lines; not a valprep.sh")
    return out


def parse_caffe(text: str, name: str, sorted_classes: list[str], list_name: str) -> dict[str, str]:
    """Caffe ``val.txt``: ``<file> <index>`` lines, the index 0-based into ``sorted_classes``."""
    out = {}
    for lineno, line in _numbered_lines(text):
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise LayoutError(f"{name}:{lineno}: expected '<image file> <class index>' (Caffe val.txt), "
                              f"got {line[:60]!r}")
        out[file_stem(parts[0])] = _class_at(int(parts[1]), sorted_classes, f"{name}:{lineno}", list_name)
    return out


def _is_csv(lines: list[str]) -> bool:
    """Whether ``lines`` (the first non-empty lines of a file) are ``<file>,<class>`` lines (the first may be a
    header)."""
    return all(_csv_fields(line) for line in lines[:2])


def sniff_format(text: str, path: Path) -> str:
    """The label format of an explicitly given file, from its content."""
    lines = [line for _, line in _numbered_lines(text)][:20]
    if not lines:
        raise LayoutError(f"{path}: label file is empty")
    if lines[0].replace(" ", "").startswith("ImageId,"):
        return "kaggle"
    if path.suffix == ".sh" or any(_MV.match(line) or line.startswith(("mkdir ", "#!")) for line in lines):
        return "valprep"
    if _is_csv(lines):
        return "csv"
    parts = lines[0].split()
    if len(parts) == 1 and "," not in parts[0]:
        return "devkit" if parts[0].isdigit() else "tf"
    if len(parts) == 2 and parts[1].isdigit():
        return "caffe"
    raise LayoutError(f"{path}: unrecognised val label format (first line {lines[0][:60]!r}); expected devkit "
                      f"ground truth, LOC_val_solution.csv, Caffe val.txt, TensorFlow synset labels, valprep.sh "
                      f"or '<image file>,<class name or index>' lines")


def refine_format(fmt: str, text: str) -> str:
    """The format of a label file found by its name (``fmt``), corrected by its content: a ``val.txt`` or
    TensorFlow-named file that holds ``<file>,<class>`` lines is read as such (``"csv"``)."""
    if fmt in ("caffe", "tf") and _is_csv([line for _, line in _numbered_lines(text)][:2]):
        return "csv"
    return fmt
