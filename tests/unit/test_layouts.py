"""scan_source on every ImageNet layout, built in tmp from real images and the real ILSVRC2012 label metadata."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import shared
from pipeline.shard.clean import RejectReason
from pipeline.source import (LayoutError, LayoutKind, LayoutOptions, SourceItem, scan_class_folders,
                             scan_source)

N_VAL = 10


@pytest.fixture(scope="module")
def meta() -> dict:
    """The real label metadata: sorted wnids, val.txt, ILSVRC2012_ID map, and one real image per wnid."""
    m = shared("imagenet-meta")
    samples = shared("imagenet-samples")
    wnids = [line.split()[0] for line in (m / "synset_words.txt").read_text().splitlines() if line.strip()]
    val = [(name, int(idx)) for name, idx in
           (line.split() for line in (m / "val.txt").read_text().splitlines() if line.strip())]
    id_of = {w: int(i) for w, i, *_ in
             (line.split() for line in (m / "imagenet_folder_id_class.txt").read_text().splitlines() if line.strip())}
    image_of = {p.name[:9]: p for p in sorted(samples.glob("*.JPEG"))}
    # N_VAL val images (the first in val order) whose class has a real sample image, all classes distinct
    chosen, seen = [], set()
    for i, (name, idx) in enumerate(val, 1):
        wnid = wnids[idx]
        if wnid in image_of and wnid not in seen:
            assert name == f"ILSVRC2012_val_{i:08d}.JPEG"
            chosen.append((i, wnid, idx))
            seen.add(wnid)
        if len(chosen) == N_VAL:
            break
    return {"dir": m, "wnids": wnids, "val": val, "id_of": id_of, "image_of": image_of, "chosen": chosen}


def train_wnids(meta) -> list[str]:
    """Classes of the small train splits: the chosen val classes plus two more."""
    extra = [w for w in meta["image_of"] if w not in {c[1] for c in meta["chosen"]}][:2]
    return sorted({c[1] for c in meta["chosen"]} | set(extra))


def make_train_folders(train: Path, meta) -> None:
    for w in train_wnids(meta):
        (train / w).mkdir(parents=True)
        os.symlink(meta["image_of"][w], train / w / f"{w}_{10000 + len(w)}.JPEG")


def make_flat_val(val: Path, meta, extra_unlabelled: bool = False) -> None:
    val.mkdir(parents=True)
    for i, wnid, _ in meta["chosen"]:
        os.symlink(meta["image_of"][wnid], val / f"ILSVRC2012_val_{i:08d}.JPEG")
    if extra_unlabelled:
        os.symlink(meta["image_of"][meta["chosen"][0][1]], val / "ILSVRC2012_val_00099999.JPEG")


def devkit_ground_truth(meta) -> str:
    return "".join(f"{meta['id_of'][meta['wnids'][idx]]}\n" for _, idx in meta["val"])


def kaggle_solution(meta) -> str:
    rows = [f"{name.rsplit('.', 1)[0]},{meta['wnids'][idx]} 10 20 110 120 {meta['wnids'][idx]} 5 6 50 60"
            for name, idx in meta["val"]]
    random.Random(0).shuffle(rows)  # Kaggle's rows are not in val-id order
    return "ImageId,PredictionString\n" + "\n".join(rows) + "\n"


def write_labels(root: Path, fmt: str, meta) -> None:
    """Put the label files of format ``fmt`` where that distribution keeps them."""
    m = meta["dir"]
    if fmt == "devkit":  # extracted devkit: SRC/ILSVRC2012_devkit_t12/data/ + a map_clsloc-style text map
        data = root / "ILSVRC2012_devkit_t12" / "data"
        data.mkdir(parents=True)
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text(devkit_ground_truth(meta))
        os.symlink(m / "imagenet_folder_id_class.txt", root / "imagenet_folder_id_class.txt")
    elif fmt == "kaggle":
        (root / "LOC_val_solution.csv").write_text(kaggle_solution(meta))
        os.symlink(m / "synset_words.txt", root / "LOC_synset_mapping.txt")
    elif fmt == "caffe":
        os.symlink(m / "val.txt", root / "val.txt")
        os.symlink(m / "synset_words.txt", root / "synset_words.txt")
    elif fmt == "tf":
        (root / "imagenet_2012_validation_synset_labels.txt").write_text(
            "".join(f"{meta['wnids'][idx]}\n" for _, idx in meta["val"]))
    elif fmt == "valprep":  # kept inside the flat val folder, where the script is run
        lines = [f"mkdir -p {w}" for w in meta["wnids"]] + [f"mv {name} {meta['wnids'][idx]}/"
                                                            for name, idx in meta["val"]]
        (root / "val" / "valprep.sh").write_text("\n".join(lines) + "\n")
    else:
        raise ValueError(fmt)


def labels_by_name(items: list[SourceItem]) -> dict[str, int]:
    return {it.relpath.rsplit("/", 1)[-1]: it.label for it in items}


def canonical(meta) -> dict[str, int]:
    return {f"ILSVRC2012_val_{i:08d}.JPEG": idx for i, _, idx in meta["chosen"]}


# ------------------------------------------------------------------------------------------------ flat val


def test_flat_val_label_formats_agree_with_caffe_canonical_index(tmp_path, meta):
    synset_words = meta["dir"] / "synset_words.txt"
    sorted_train = train_wnids(meta)
    results = {}
    for fmt in ("devkit", "kaggle", "caffe", "tf", "valprep"):
        root = tmp_path / fmt
        make_train_folders(root / "train", meta)
        make_flat_val(root / "val", meta)
        write_labels(root, fmt, meta)
        tree = scan_source(root)
        assert tree.kind == "class-folders" and tree.unusable == []
        assert tree.classes == sorted_train
        got = labels_by_name(tree.items["val"])
        # label = index in the sorted train classes
        assert got == {n: sorted_train.index(meta["wnids"][i]) for n, i in canonical(meta).items()}, fmt
        assert [it.relpath for it in tree.items["val"]] == sorted(f"val/{n}" for n in got)
        assert "flat val labelled by" in tree.layout and f"({50000 - N_VAL} of its 50000 labelled images not present)" \
            in tree.layout, tree.layout
        # with the fixed 1000-class list, labels are the canonical sorted-wnid indices of val.txt
        fixed = scan_source(root, LayoutOptions(classes_file=synset_words))
        assert fixed.classes == meta["wnids"]
        results[fmt] = labels_by_name(fixed.items["val"])
        assert results[fmt] == canonical(meta), fmt
        assert labels_by_name(fixed.items["train"]) == {f"{w}_{10000 + len(w)}.JPEG": meta["wnids"].index(w)
                                                        for w in sorted_train}
    assert (scan_source(tmp_path / "devkit").layout ==
            f"class-folders (train) + flat val labelled by devkit ground truth (ILSVRC2012_validation_ground_truth.txt "
            f"via imagenet_folder_id_class.txt) ({50000 - N_VAL} of its 50000 labelled images not present); "
            f"classes: {len(sorted_train)} sorted train class names")
    assert "valprep.sh" not in {it.relpath.rsplit("/", 1)[-1] for it in scan_source(tmp_path / "valprep").items["val"]}


def test_flat_val_image_without_label_is_unusable_no_label(tmp_path, meta):
    root = tmp_path / "src"
    make_train_folders(root / "train", meta)
    make_flat_val(root / "val", meta, extra_unlabelled=True)
    write_labels(root, "caffe", meta)
    (root / "README.md").write_text("not an input\n")
    tree = scan_source(root)
    assert len(tree.items["val"]) == N_VAL
    [u] = tree.unusable
    assert u.item.relpath == "val/ILSVRC2012_val_00099999.JPEG" and u.reason is RejectReason.NO_LABEL
    assert "val.txt" in u.detail
    assert tree.num_files == len(tree.items["train"]) + N_VAL + 1


def test_several_label_files_use_the_documented_priority(tmp_path, meta):
    root = tmp_path / "src"
    make_train_folders(root / "train", meta)
    make_flat_val(root / "val", meta)
    for fmt in ("caffe", "kaggle", "devkit"):
        write_labels(root, fmt, meta)
    tree = scan_source(root)
    assert "devkit ground truth" in tree.layout
    assert any("not used" in n and "LOC_val_solution.csv" in n and "val.txt" in n for n in tree.notes)
    # devkit labels without any id map are skipped for the next source, and that is said
    (root / "imagenet_folder_id_class.txt").unlink()
    tree = scan_source(root)
    assert "Kaggle solution (LOC_val_solution.csv)" in tree.layout
    assert any("skipped" in n and "ILSVRC2012_ID -> wnid map" in n for n in tree.notes)
    assert labels_by_name(tree.items["val"]) == labels_by_name(scan_source(tmp_path / "src").items["val"])
    # an explicit --val-labels wins and its format is recognised from the content
    tree = scan_source(root, LayoutOptions(val_labels=root / "val.txt"))
    assert "Caffe val.txt" in tree.layout


def test_devkit_archive_with_meta_mat(tmp_path, meta, monkeypatch):
    """The devkit tarball as downloaded; its meta.mat read through scipy.io.loadmat (faked when scipy is absent)."""
    root = tmp_path / "src"
    make_train_folders(root / "train", meta)
    make_flat_val(root / "val", meta)
    with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz", "w:gz", format=tarfile.GNU_FORMAT) as tf:
        for name, data in (("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
                            devkit_ground_truth(meta).encode()),
                           ("ILSVRC2012_devkit_t12/data/meta.mat", b"MATLAB 5.0 MAT-file (stand-in)")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    # scipy missing: a one-line error that says what to do
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(LayoutError, match=r"needs scipy: pip install scipy, or pass --id-map") as exc:
        scan_source(root)
    assert "\n" not in str(exc.value)
    # a map_clsloc-style --id-map works without scipy
    tree = scan_source(root, LayoutOptions(id_map=meta["dir"] / "imagenet_folder_id_class.txt"))
    assert ("devkit ground truth (ILSVRC2012_devkit_t12.tar.gz:ILSVRC2012_devkit_t12/data/"
            "ILSVRC2012_validation_ground_truth.txt via imagenet_folder_id_class.txt)") in tree.layout
    expect = labels_by_name(tree.items["val"])
    assert expect == {n: train_wnids(meta).index(meta["wnids"][i]) for n, i in canonical(meta).items()}

    # loadmat's result for the devkit's struct array: fields ILSVRC2012_ID, WNID, ..., num_children
    dtype = [("ILSVRC2012_ID", object), ("WNID", object), ("words", object), ("num_children", object)]
    rows = [(i, w, "x", 0) for w, i in meta["id_of"].items()] + [(1001, "n00001740", "entity", 3)]
    synsets = np.array(rows, dtype=dtype)
    calls = []

    def loadmat(f, squeeze_me=False):
        calls.append(f.read(6))
        return {"synsets": synsets}

    fake = types.ModuleType("scipy.io")
    fake.loadmat = loadmat
    monkeypatch.setitem(sys.modules, "scipy", types.ModuleType("scipy"))
    monkeypatch.setitem(sys.modules, "scipy.io", fake)
    tree = scan_source(root)
    assert calls == [b"MATLAB"]
    assert ("devkit ground truth (ILSVRC2012_devkit_t12.tar.gz:ILSVRC2012_devkit_t12/data/"
            "ILSVRC2012_validation_ground_truth.txt via meta.mat)") in tree.layout
    assert labels_by_name(tree.items["val"]) == expect


# ------------------------------------------------------------------------------------------------ classes


def test_classes_file_gives_canonical_indices_to_a_subset(tmp_path, meta):
    root = tmp_path / "src"
    for w in ("n01443537", "n01484850"):
        (root / "train" / w).mkdir(parents=True)
        os.symlink(meta["image_of"][w], root / "train" / w / f"{w}_1.JPEG")
    (root / "val" / "n01443537").mkdir(parents=True)
    os.symlink(meta["image_of"]["n01443537"], root / "val" / "n01443537" / "a.JPEG")
    words = meta["dir"] / "synset_words.txt"
    tree = scan_source(root, LayoutOptions(classes_file=words))
    assert len(tree.classes) == 1000 and tree.classes[1] == "n01443537"
    assert [it.label for it in tree.items["train"]] == [1, 2]
    assert [it.label for it in tree.items["val"]] == [1]
    assert "classes: 1000 from --classes" in tree.layout
    # without it: sorted train classes, the same as scan_class_folders
    plain = scan_source(root)
    assert plain.classes == ["n01443537", "n01484850"] == scan_class_folders(root).classes
    assert plain.items == scan_class_folders(root).items
    # a train class that the list lacks is an error naming it
    (root / "train" / "n00000042").mkdir()
    with pytest.raises(LayoutError, match=r"train class 'n00000042' is not in --classes"):
        scan_source(root, LayoutOptions(classes_file=words))


def test_caffe_val_txt_needs_the_full_class_list(tmp_path, meta):
    root = tmp_path / "src"
    make_train_folders(root / "train", meta)
    make_flat_val(root / "val", meta)
    os.symlink(meta["dir"] / "val.txt", root / "val.txt")  # no synset_words.txt and only a train subset
    with pytest.raises(LayoutError, match=r"indices into the sorted list of all 1000 ImageNet classes, but only "
                                          r"the 12 train classes are known; pass --classes synset_words.txt"):
        scan_source(root)
    tree = scan_source(root, LayoutOptions(classes_file=meta["dir"] / "synset_words.txt"))
    assert labels_by_name(tree.items["val"]) == canonical(meta)


def test_val_wnid_unknown_to_the_class_list_is_an_error_naming_it(tmp_path, meta):
    root = tmp_path / "src"
    make_train_folders(root / "train", meta)
    make_flat_val(root / "val", meta)
    write_labels(root, "kaggle", meta)
    gone = meta["chosen"][3][1]
    for p in (root / "train" / gone).iterdir():
        p.unlink()
    (root / "train" / gone).rmdir()
    with pytest.raises(LayoutError, match=rf"class {gone} \(from LOC_val_solution.csv\) is not in the "):
        scan_source(root)


# ------------------------------------------------------------------------------------------------ Kaggle


def test_kaggle_tree(tmp_path, meta):
    root = tmp_path / "kaggle"
    data = root / "ILSVRC" / "Data" / "CLS-LOC"
    make_train_folders(data / "train", meta)
    make_flat_val(data / "val", meta)
    (data / "test").mkdir()
    os.symlink(meta["image_of"]["n01443537"], data / "test" / "ILSVRC2012_test_00000001.JPEG")
    write_labels(root, "kaggle", meta)
    (root / "LOC_train_solution.csv").write_text("ImageId,PredictionString\n")
    tree = scan_source(root)
    assert tree.kind == "kaggle" and tree.unusable == []
    assert tree.classes == meta["wnids"]  # LOC_synset_mapping.txt, sorted
    assert labels_by_name(tree.items["val"]) == canonical(meta)
    assert all(it.relpath.startswith("ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_") for it in tree.items["val"])
    w = train_wnids(meta)[0]
    assert tree.items["train"][0].relpath == f"ILSVRC/Data/CLS-LOC/train/{w}/{w}_{10000 + len(w)}.JPEG"
    assert tree.items["train"][0].label == meta["wnids"].index(w)
    assert "Kaggle solution (LOC_val_solution.csv)" in tree.layout and "test/ ignored" in tree.layout
    assert any("test/ ignored: 1 unlabelled images" in n for n in tree.notes)
    # forcing another layout that is not there is an error
    with pytest.raises(LayoutError, match="neither ILSVRC2012_img_train.tar nor ILSVRC2012_img_val.tar"):
        scan_source(root, LayoutOptions(layout=LayoutKind.ARCHIVES))


# ------------------------------------------------------------------------------------------------ archives


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_300_000_000
    tf.addfile(info, io.BytesIO(data))


def make_archives(root: Path, meta) -> dict[str, bytes]:
    """ILSVRC2012_img_train.tar (tar of per-class tars) + ILSVRC2012_img_val.tar; returns relpath → bytes."""
    root.mkdir(parents=True)
    expect = {}
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "w", format=tarfile.GNU_FORMAT) as outer:
        d = tarfile.TarInfo("docs")
        d.type = tarfile.DIRTYPE
        outer.addfile(d)
        for k, w in enumerate(train_wnids(meta)):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as inner:
                names = [f"{w}_{10026 + k}.JPEG", f"{w}_{20000 + k}.JPEG"]
                if k == 0:  # a GNU long name (> 100 chars) needs an extra header block
                    names.append(f"{w}_" + "x" * 120 + ".JPEG")
                for j, name in enumerate(names):
                    data = meta["image_of"][w].read_bytes() if j == 0 else meta["image_of"][w].read_bytes()[:-j * 7]
                    _add_bytes(inner, name, data)
                    expect[f"ILSVRC2012_img_train.tar/{w}.tar/{name}"] = data
            _add_bytes(outer, f"{w}.tar", buf.getvalue())
        _add_bytes(outer, "README.txt", b"not a class archive\n")
    with tarfile.open(root / "ILSVRC2012_img_val.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        for i, wnid, _ in meta["chosen"]:
            data = meta["image_of"][wnid].read_bytes()
            _add_bytes(tf, f"ILSVRC2012_val_{i:08d}.JPEG", data)
            expect[f"ILSVRC2012_img_val.tar/ILSVRC2012_val_{i:08d}.JPEG"] = data
        _add_bytes(tf, "ILSVRC2012_val_00099999.JPEG", b"\xff\xd8 not listed")
    return expect


def test_tar_of_tars_offsets_and_labels(tmp_path, meta):
    root = tmp_path / "src"
    expect = make_archives(root, meta)
    os.symlink(meta["dir"] / "val.txt", root / "val.txt")
    os.symlink(meta["dir"] / "synset_words.txt", root / "synset_words.txt")
    tree = scan_source(root)
    assert tree.kind == "archives"
    sorted_train = train_wnids(meta)
    assert tree.classes == sorted_train
    got = {it.relpath: it for split in ("train", "val") for it in tree.items[split]}
    assert set(got) == set(expect)
    for rel, it in got.items():
        assert it.path == str(root / rel.split("/", 1)[0]) and it.offset >= 0
        assert it.read_bytes() == expect[rel], rel
    for it in tree.items["train"]:
        assert it.label == sorted_train.index(it.relpath.split("/")[1][:-4])
    assert labels_by_name(tree.items["val"]) == {n: sorted_train.index(meta["wnids"][i])
                                                 for n, i in canonical(meta).items()}
    for split in ("train", "val"):
        assert [it.relpath for it in tree.items[split]] == sorted(it.relpath for it in tree.items[split])
    reasons = {u.item.relpath: u.reason for u in tree.unusable}
    assert reasons == {"ILSVRC2012_img_train.tar/README.txt": RejectReason.NOT_IN_CLASS,
                       "ILSVRC2012_img_val.tar/ILSVRC2012_val_00099999.JPEG": RejectReason.NO_LABEL}
    assert tree.layout.startswith(f"archives (ILSVRC2012_img_train.tar: {len(sorted_train)} per-class tars) + "
                                  f"ILSVRC2012_img_val.tar (flat) labelled by Caffe val.txt")


def test_archives_shard_end_to_end(tmp_path, meta):
    import webdataset as wds

    from pipeline.shard.run import ShardConfig, shard_tree

    root = tmp_path / "src"
    expect = make_archives(root, meta)
    write_labels(root, "kaggle", meta)
    tree = scan_source(root)
    out = tmp_path / "shards"
    shard_tree(ShardConfig(src=root, out=out, shard_size=8, workers=1, progress=False), tree=tree)
    info = json.loads((out / "_info.json").read_text())
    classes = (out / "classes.txt").read_text().split()
    assert classes == train_wnids(meta)
    seen = {}
    for split in ("train", "val"):
        paths = [str(out / f) for f in info["splits"][split]["filenames"]]
        for s in wds.WebDataset(paths, shardshuffle=False):
            m = json.loads(s["json"])
            label = int(s["cls"])
            seen[m["path"]] = label
            assert m["class"] == classes[label]
            if split == "train":
                assert classes[label] == m["path"].split("/")[1][:-4]
            if m["conversion"] == "":
                assert s["jpg"] == expect[m["path"]]
    want_val = {f"ILSVRC2012_img_val.tar/{n}": train_wnids(meta).index(meta["wnids"][i])
                for n, i in canonical(meta).items()}
    assert {k: v for k, v in seen.items() if k.startswith("ILSVRC2012_img_val.tar/")} == want_val
    rejects = (out / "rejects.tsv").read_text()
    assert "ILSVRC2012_img_val.tar/ILSVRC2012_val_00099999.JPEG\tno-label" in rejects
    assert set(seen) | {line.split("\t")[0] for line in rejects.splitlines()[1:]} == \
        set(expect) | {"ILSVRC2012_img_val.tar/ILSVRC2012_val_00099999.JPEG", "ILSVRC2012_img_train.tar/README.txt"}


# ------------------------------------------------------------------------------------------------ errors


def test_compressed_archives_are_a_clear_error(tmp_path):
    root = tmp_path / "gz"
    root.mkdir()
    with gzip.open(root / "ILSVRC2012_img_val.tar.gz", "wb") as f:
        f.write(b"\0" * 1024)
    with pytest.raises(LayoutError, match=r"ILSVRC2012_img_val.tar.gz: compressed archive; .* decompress it") as exc:
        scan_source(root)
    assert "\n" not in str(exc.value)
    (root / "ILSVRC2012_img_val.tar.gz").rename(root / "ILSVRC2012_img_val.tar")  # gzip data under a .tar name
    with pytest.raises(LayoutError, match=r"gzip-compressed; .* \(gunzip -k ILSVRC2012_img_val.tar\)"):
        scan_source(root)


def test_no_layout_ambiguity_and_broken_sources_are_one_line_errors(tmp_path, meta):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(LayoutError, match=r"no ImageNet layout found; looked for train/ and val/ .*ILSVRC/Data/"
                                          r"CLS-LOC/ \(Kaggle\), ILSVRC2012_img_train.tar / ILSVRC2012_img_val.tar"):
        scan_source(empty)
    # flat val, no label file anywhere
    root = tmp_path / "nolabels"
    make_train_folders(root / "train", meta)
    make_flat_val(root / "val", meta)
    with pytest.raises(LayoutError, match=r"flat val \(10 files, no class folders\) and no val label file; looked "
                                          r"for ILSVRC2012_validation_ground_truth.txt, .*pass --val-labels"):
        scan_source(root)
    # class folders and archives side by side: ambiguous unless forced
    (root / "ILSVRC2012_img_val.tar").write_bytes(b"\0" * 1024)
    with pytest.raises(LayoutError, match=r"holds more than one layout .* --layout archives or --layout "
                                          r"class-folders"):
        scan_source(root)
    write_labels(root, "caffe", meta)
    assert scan_source(root, LayoutOptions(layout=LayoutKind.CLASS_FOLDERS)).notes[-1] == \
        "layout forced: class-folders"
    # a truncated outer archive
    (root / "ILSVRC2012_img_val.tar").unlink()
    arch = tmp_path / "trunc"
    make_archives(arch, meta)
    data = (arch / "ILSVRC2012_img_train.tar").read_bytes()
    (arch / "ILSVRC2012_img_train.tar").write_bytes(data[:len(data) // 2])
    (arch / "ILSVRC2012_img_val.tar").unlink()
    with pytest.raises(LayoutError, match=r"ILSVRC2012_img_train.tar: (truncated|broken or truncated)"):
        scan_source(arch)
    with pytest.raises(LayoutError, match="not a folder"):
        scan_source(tmp_path / "nowhere")


def test_broken_members_of_the_train_archive_are_unusable_with_a_reason(tmp_path, meta):
    root = tmp_path / "src"
    root.mkdir()
    w = train_wnids(meta)[0]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as inner:
        _add_bytes(inner, f"{w}_1.JPEG", meta["image_of"][w].read_bytes())
        link = tarfile.TarInfo(f"{w}_2.JPEG")
        link.type, link.linkname = tarfile.SYMTYPE, f"{w}_1.JPEG"
        inner.addfile(link)
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "w", format=tarfile.GNU_FORMAT) as outer:
        _add_bytes(outer, f"{w}.tar", buf.getvalue())
        _add_bytes(outer, "n09999999.tar", b"this is not a tar archive" * 40)
        _add_bytes(outer, "n01440764_1.JPEG", meta["image_of"][w].read_bytes())
    tree = scan_source(root, LayoutOptions(layout=LayoutKind.ARCHIVES))
    assert tree.classes == [w] and "val" not in tree.items
    [item] = tree.items["train"]
    assert item.read_bytes() == meta["image_of"][w].read_bytes()
    got = {u.item.relpath: (u.reason, u.detail) for u in tree.unusable}
    assert got[f"ILSVRC2012_img_train.tar/{w}.tar/{w}_2.JPEG"] == (RejectReason.NOT_A_FILE,
                                                                    "tar member is a symbolic link, not a file")
    assert got["ILSVRC2012_img_train.tar/n09999999.tar"][0] is RejectReason.UNDECODABLE
    assert got["ILSVRC2012_img_train.tar/n09999999.tar"][1].startswith("not a readable tar archive")
    assert got["ILSVRC2012_img_train.tar/n01440764_1.JPEG"][0] is RejectReason.NOT_IN_CLASS
