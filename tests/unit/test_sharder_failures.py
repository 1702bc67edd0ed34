"""The sharder loses nothing and says everything in one line (issue 12, items 4, 5, 7, 8, 9): unreadable
folders, an output it cannot write, empty class folders, home-made CSV val lists, names that are not UTF-8."""

from __future__ import annotations

import errno
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from pipeline.shard import writer as writer_mod
from pipeline.shard.clean import RejectReason
from pipeline.shard.jsonsafe import escape_text, json_safe
from pipeline.source import LayoutError, LayoutKind, LayoutOptions, scan_class_folders, scan_source
from tools import shard_imagenet


def write_jpeg(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path, "JPEG")


def make_tree(root: Path, per_class: dict[str, int]) -> Path:
    """``root/train/<class>/<class>_<i>.JPEG``, ``per_class[class]`` files each."""
    for k, (cls, n) in enumerate(per_class.items()):
        for i in range(n):
            write_jpeg(root / "train" / cls / f"{cls}_{i}.JPEG", seed=10 * k + i)
    return root


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    rc = shard_imagenet.main([str(a) for a in args] + ["--no-progress"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shard-imagenet: error: "), err
    assert "Traceback" not in err
    return lines[0]


def block_listing(monkeypatch, *folders: Path) -> None:
    """``os.scandir`` (which ``os.walk`` uses) raises PermissionError for ``folders``, as for a non-root user."""
    real = os.scandir
    blocked = {os.fspath(f) for f in folders}

    def scandir(path="."):
        if os.fspath(path) in blocked:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


# ------------------------------------------------------------------------------ item 4: unreadable folders


def test_unreadable_folders_are_rejects_and_counted(tmp_path, monkeypatch, capsys):
    src = make_tree(tmp_path / "src", {"a": 3, "b": 2, "c": 2})
    write_jpeg(src / "train" / "a" / "sub" / "deep.JPEG", 99)
    block_listing(monkeypatch, src / "train" / "b", src / "train" / "a" / "sub")
    out = tmp_path / "out"
    rc, stdout, _ = run_cli([src, "--out", out, "--workers", "1"], capsys)
    assert rc == 0
    assert "note: train/a/sub/ and 1 more folder(s): cannot list this folder: Permission denied" in stdout
    assert "total: 7 files = 5 in shards + 2 rejected (of them 2 unreadable folder(s)" in stdout
    rejects = (out / "rejects.tsv").read_text().splitlines()[1:]
    assert rejects == ["train/a/sub/\tunreadable-folder\tcannot list this folder: Permission denied",
                       "train/b/\tunreadable-folder\tcannot list this folder: Permission denied"]
    report = json.loads((out / "report.json").read_text())
    assert report["rejects_by_reason"] == {"unreadable-folder": 2} and report["rejected"] == 2
    assert any("train/a/sub/" in n for n in report["layout_notes"])
    # the unreadable class keeps its index: the classes after it do not shift
    assert (out / "classes.txt").read_text() == "a\nb\nc\n"
    tree = scan_class_folders(src)
    assert tree.classes == ["a", "b", "c"]
    assert {u.item.relpath: u.reason for u in tree.unusable} == {"train/a/sub/": RejectReason.UNREADABLE_FOLDER,
                                                                "train/b/": RejectReason.UNREADABLE_FOLDER}


def test_unreadable_split_folder_stops_the_run(tmp_path, monkeypatch, capsys):
    src = make_tree(tmp_path / "src", {"a": 1})
    block_listing(monkeypatch, src / "train")
    rc, _, err = run_cli([src, "--out", tmp_path / "out"], capsys)
    assert rc == 2
    assert "train: cannot list: Permission denied; fix its permissions" in one_error_line(err)


# ------------------------------------------------------------------------------ item 5: the output


def test_out_naming_a_file_is_one_line(tmp_path, capsys):
    src = make_tree(tmp_path / "src", {"a": 2})
    taken = tmp_path / "taken.txt"
    taken.write_text("mine")
    rc, _, err = run_cli([src, "--out", taken], capsys)
    assert rc == 2 and f"{taken}: --out names an existing file, not a folder" in one_error_line(err)
    rc, _, err = run_cli([src, "--out", taken / "shards"], capsys)
    assert rc == 2
    line = one_error_line(err)
    assert str(taken) in line and "a file stands where a folder is needed" in line
    assert taken.read_text() == "mine"


def test_read_only_output_is_one_line(tmp_path, monkeypatch, capsys):
    src = make_tree(tmp_path / "src", {"a": 2})
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    real_path_mkdir = Path.mkdir

    def path_mkdir(self, *args, **kwargs):  # Python 3.8's pathlib calls its own reference to os.mkdir
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_path_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(Path, "mkdir", path_mkdir)
    rc, _, err = run_cli([src, "--out", tmp_path / "ro" / "shards"], capsys)
    assert rc == 2
    line = one_error_line(err)
    assert str(tmp_path / "ro") in line and "read-only file system: choose a writable --out" in line
    # an existing folder where writing a shard fails
    out = tmp_path / "out"
    out.mkdir()

    def refuse(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(writer_mod, "open", refuse, raising=False)
    rc, _, err = run_cli([src, "--out", out, "--workers", "1"], capsys)
    assert rc == 2
    assert f"{out}/imagenet-train-000000.tar.tmp: cannot write (Read-only file system)" in one_error_line(err)


def test_disk_full_is_one_line_and_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    src = make_tree(tmp_path / "src", {"a": 4, "b": 4})
    args = [src, "--shard-size", "2", "--workers", "2"]
    ref = tmp_path / "ref"
    assert run_cli(args + ["--out", ref], capsys)[0] == 0
    out = tmp_path / "out"
    real_write = writer_mod._HashingFile.write

    def write(self, b):
        if self._f.name.endswith("imagenet-train-000002.tar.tmp") and self.size > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, b)

    monkeypatch.setattr(writer_mod._HashingFile, "write", write)  # the forked workers inherit it
    rc, _, err = run_cli(args + ["--out", out], capsys)
    assert rc == 2
    line = one_error_line(err)
    assert f"{out}: cannot write (No space left on device); its file system is full: free space" in line
    assert (out / "imagenet-train-000002.tar.tmp").exists() and not (out / "_info.json").exists()
    monkeypatch.undo()
    rc, stdout, _ = run_cli(args + ["--out", out], capsys)
    assert rc == 0 and "complete shard(s) kept (--resume)" in stdout
    names = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for name in names:
        assert (ref / name).read_bytes() == (out / name).read_bytes(), name


def test_disk_full_while_writing_the_metadata_is_one_line(tmp_path, monkeypatch, capsys):
    from pipeline.shard import run

    src = make_tree(tmp_path / "src", {"a": 2})
    out = tmp_path / "out"
    real = run.dsinfo.write_json_atomic

    def write_json_atomic(path, obj):
        if path.name == "report.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, obj)

    monkeypatch.setattr(run.dsinfo, "write_json_atomic", write_json_atomic)
    rc, _, err = run_cli([src, "--out", out, "--workers", "1"], capsys)
    assert rc == 2 and "No space left on device" in one_error_line(err)
    monkeypatch.undo()
    rc, stdout, _ = run_cli([src, "--out", out, "--workers", "1"], capsys)
    assert rc == 0 and (out / "_info.json").is_file() and "1 complete shard(s) kept" in stdout


# ------------------------------------------------------------------------------ item 7: empty class folders


def test_empty_class_folder_is_refused_unless_the_classes_are_fixed(tmp_path, capsys):
    src = make_tree(tmp_path / "src", {"a": 1, "c": 1})
    (src / "train" / "b").mkdir()
    rc, _, err = run_cli([src, "--out", tmp_path / "out"], capsys)
    assert rc == 2
    line = one_error_line(err)
    assert f"{src / 'train' / 'b'}: empty class folder: it would still take class index 1 and shift" in line
    assert "remove it, or pass --classes" in line
    with pytest.raises(LayoutError, match="empty class folder"):
        scan_class_folders(src)
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\nc\n")
    tree = scan_source(src, LayoutOptions(classes_file=classes))
    assert [it.label for it in tree.items["train"]] == [0, 2]
    (src / "val" / "c").mkdir(parents=True)  # an empty val class folder shifts nothing
    (src / "train" / "b").rmdir()
    write_jpeg(src / "val" / "a" / "v.JPEG")
    assert [it.label for it in scan_source(src).items["val"]] == [0]


def test_empty_per_class_archive_is_refused(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    write_jpeg(tmp_path / "n00000001_1.JPEG")
    with tarfile.open(tmp_path / "n00000001.tar", "w", format=tarfile.GNU_FORMAT) as full:
        full.add(tmp_path / "n00000001_1.JPEG", arcname="n00000001_1.JPEG")
    tarfile.open(tmp_path / "n00000002.tar", "w", format=tarfile.GNU_FORMAT).close()  # no member
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "w", format=tarfile.GNU_FORMAT) as outer:
        for name in ("n00000001.tar", "n00000002.tar"):
            outer.add(tmp_path / name, arcname=name)
    with pytest.raises(LayoutError, match=r"ILSVRC2012_img_train.tar/n00000002.tar: empty per-class archive"):
        scan_source(root, LayoutOptions(layout=LayoutKind.ARCHIVES))


# ------------------------------------------------------------------------------ item 8: CSV val lists


def _flat_val(tmp_path: Path) -> Path:
    src = make_tree(tmp_path / "src", {"ants": 1, "bees": 1})
    for i in (1, 2, 3):
        write_jpeg(src / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", 40 + i)
    return src


def test_csv_val_list_of_indices_or_names_is_recognised(tmp_path):
    src = _flat_val(tmp_path)
    indices = tmp_path / "vals.csv"
    indices.write_text("path,label\nILSVRC2012_val_00000001.JPEG,1\nILSVRC2012_val_00000002.JPEG,0\n"
                       "ILSVRC2012_val_00000003.JPEG, 1\n")
    with pytest.raises(LayoutError, match=r"vals.csv \(CSV val list .*\): holds indices into the sorted list"):
        scan_source(src, LayoutOptions(val_labels=indices))
    classes = tmp_path / "classes.txt"
    classes.write_text("ants\nbees\n")
    tree = scan_source(src, LayoutOptions(val_labels=indices, classes_file=classes))
    assert [it.label for it in tree.items["val"]] == [1, 0, 1] and tree.unusable == []
    assert "CSV val list (vals.csv: '<file>,<index>' lines" in tree.layout
    names = tmp_path / "names.csv"
    names.write_text("val/ILSVRC2012_val_00000001.JPEG,bees\nval/ILSVRC2012_val_00000002.JPEG,ants\n")
    tree = scan_source(src, LayoutOptions(val_labels=names))
    assert [it.label for it in tree.items["val"]] == [1, 0]
    assert [u.reason for u in tree.unusable] == [RejectReason.NO_LABEL]  # val 3 is not listed
    # a CSV list under the Caffe name, found in SRC, is read as what it holds
    (src / "val.txt").write_text(names.read_text())
    assert [it.label for it in scan_source(src).items["val"]] == [1, 0]


def test_label_errors_say_which_format_was_tried(tmp_path):
    src = _flat_val(tmp_path)
    tf = tmp_path / "labels.txt"
    tf.write_text("bees\nwasps\nants\n")
    with pytest.raises(LayoutError) as exc:
        scan_source(src, LayoutOptions(val_labels=tf))
    msg = str(exc.value)
    assert "class wasps (from " in msg and "read as TensorFlow synset labels, recognised from its content" in msg
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("a.JPEG,1\nb.JPEG,1\nc.JPEG,bees\n")
    with pytest.raises(LayoutError, match=r"mixed.csv:3: class 'bees' is not an index while other lines"):
        scan_source(src, LayoutOptions(val_labels=mixed))
    three = tmp_path / "three.csv"
    three.write_text("a.JPEG,1,2\n")
    with pytest.raises(LayoutError, match=r"unrecognised val label format .*'<image file>,<class name or index>'"):
        scan_source(src, LayoutOptions(val_labels=three))


# ------------------------------------------------------------------------------ item 9: names not UTF-8


def _bad(path: Path, tail: bytes) -> Path:
    """``path / tail`` where ``tail`` holds bytes that are not UTF-8."""
    return Path(os.fsdecode(os.fsencode(str(path)) + b"/" + tail))


def _strict_json(data: bytes):
    obj = json.loads(data.decode("utf-8"))
    json.dumps(obj, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
    return obj


def test_names_that_are_not_utf8_are_escaped_in_every_json_file(tmp_path, monkeypatch, capsys):
    src = make_tree(tmp_path / "src", {"a": 1})
    write_jpeg(_bad(src / "train" / "a", b"caf\xe9.JPEG"), 1)
    _bad(src / "train" / "a", b"bad\xe9.JPEG").write_bytes(b"not an image")
    write_jpeg(_bad(src / "train", b"b\xe9") / "x.JPEG", 2)  # a class name that is not UTF-8
    _bad(src / "train", b"stray\xe9.JPEG").write_bytes(b"x")
    secret = _bad(src / "train" / "a", b"sec\xe9ret")
    write_jpeg(secret / "s.JPEG", 3)
    block_listing(monkeypatch, secret)
    write_jpeg(src / "val" / "ILSVRC2012_val_00000001.JPEG", 4)
    labels = _bad(tmp_path, b"lab\xe9.txt")
    labels.write_text("a\n")
    out = tmp_path / "out"
    rc, _, _ = run_cli([src, "--out", out, "--workers", "1", "--shard-size", "2", "--val-labels", labels], capsys)
    assert rc == 0
    files = [p for p in out.rglob("*.json")]
    assert {p.name for p in files} >= {"_info.json", "report.json"} and any(p.parent.name == "_parts" for p in files)
    objs = {p.name: _strict_json(p.read_bytes()) for p in files}
    assert "lab\\xe9.txt" in objs["_info.json"]["layout_detail"]
    assert any("sec\\xe9ret" in n for n in objs["report.json"]["layout_notes"])
    samples = [_strict_json(s["json"]) for s in wds.WebDataset(
        [str(p) for p in sorted(out.glob("*.tar"))], shardshuffle=False)]
    assert {m["path"] for m in samples} >= {"train/a/caf\\xe9.JPEG", "train/b\\xe9/x.JPEG"}
    assert {m["class"] for m in samples} == {"a", "b\\xe9"}
    # the TSV and classes.txt keep the original bytes, as before
    tsv = (out / "rejects.tsv").read_bytes()
    for name in (b"train/a/bad\xe9.JPEG\tundecodable", b"train/stray\xe9.JPEG\tnot-in-class-folder",
                 b"train/a/sec\xe9ret/\tunreadable-folder"):
        assert name in tsv
    assert (out / "classes.txt").read_bytes() == b"a\nb\xe9\n"
    # a second run keeps every shard and writes the same bytes
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    rc, stdout, _ = run_cli([src, "--out", out, "--workers", "1", "--shard-size", "2", "--val-labels", labels],
                            capsys)
    assert rc == 0 and "kept (--resume)" in stdout
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_escape_keeps_valid_text_and_marks_each_bad_byte():
    assert escape_text("caf\u00e9 n01440764") == "caf\u00e9 n01440764"
    assert escape_text(os.fsdecode(b"caf\xe9\xff.jpg")) == "caf\\xe9\\xff.jpg"
    assert escape_text("\ud800") == "\\xed\\xa0\\x80"
    assert json_safe({os.fsdecode(b"k\xe9"): [os.fsdecode(b"v\xe9"), 1, None]}) == {"k\\xe9": ["v\\xe9", 1, None]}


# ------------------------------------------------------------------ issue 12 item 14: label files given by flag


def test_label_file_flags_must_name_files_and_an_unused_one_is_noted(tmp_path, capsys):
    src = make_tree(tmp_path / "src", {"a": 1, "b": 1})
    write_jpeg(src / "val" / "a" / "v.JPEG")
    for flag in ("--val-labels", "--classes", "--id-map"):
        with pytest.raises(SystemExit) as exit_:
            shard_imagenet.main([str(src), "--out", str(tmp_path / "out"), flag, str(tmp_path / "nope.txt")])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert f"{flag} {tmp_path / 'nope.txt'}: no such file" in err and "Traceback" not in err
    labels = tmp_path / "val.csv"
    labels.write_text("v.JPEG,a\n")
    tree = scan_source(src, LayoutOptions(val_labels=labels))  # val has class folders: the file is not used
    assert any(n.startswith(f"--val-labels {labels} not used") for n in tree.notes), tree.notes
    rc, out, _ = run_cli([src, "--out", tmp_path / "out2", "--val-labels", labels], capsys)
    assert rc == 0 and f"note: --val-labels {labels} not used" in out
