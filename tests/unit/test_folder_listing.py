"""``--loader folder`` never measures on nothing and never reads a folder twice (issue 20, item 8): a flat val/
(ImageNet's val as distributed) is labelled by its label file or refused in one line, a split with no image is
refused, and a folder symlink loop is listed once with a note."""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.backends import FolderConfig, LoaderConfig, LoaderKind, Split, build_loader

CPU = torch.device("cpu")
WNIDS = ("n01440764", "n01443537", "n01484850")


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 16), (seed * 40 % 256, 90, 200 - seed * 30 % 200)).save(buf, "JPEG")
    return buf.getvalue()


def cfg(root: Path) -> LoaderConfig:
    return LoaderConfig(batch_size=2, image_size=8, workers=0, options=(FolderConfig(root),), normalize=False)


def train_tree(root: Path, per_class: int = 2) -> Path:
    for c, wnid in enumerate(WNIDS):
        (root / "train" / wnid).mkdir(parents=True)
        for i in range(per_class):
            (root / "train" / wnid / f"{wnid}_{i}.JPEG").write_bytes(jpeg(c))
    return root


def flat_val(root: Path, count: int = 5) -> list[str]:
    """val/ILSVRC2012_val_0000000{1..count}.JPEG, no class folders; returns the file stems."""
    (root / "val").mkdir()
    stems = [f"ILSVRC2012_val_{i:08d}" for i in range(1, count + 1)]
    for i, stem in enumerate(stems):
        (root / "val" / f"{stem}.JPEG").write_bytes(jpeg(i))
    return stems


def one_line_error(root: Path, split: Split) -> str:
    with pytest.raises(ValueError) as err:
        build_loader(LoaderKind.FOLDER, cfg(root), split, None, CPU)
    message = str(err.value)
    assert "\n" not in message
    return message


def labels_of(loader) -> list[int]:
    loader.set_epoch(0)
    return [int(y) for batch in loader for y in batch.labels]


def test_flat_val_without_label_file_is_one_line_naming_it(tmp_path):
    """Old code: 0 images evaluated, ``acc 0.0%``."""
    flat_val(train_tree(tmp_path))
    message = one_line_error(tmp_path, Split.VAL)
    assert "flat val (5 image files, no class folders) and no val label file" in message
    assert str(tmp_path / "val") in message and "LOC_val_solution.csv" in message


def test_flat_val_next_to_a_kaggle_label_file_is_labelled(tmp_path, capsys):
    stems = flat_val(train_tree(tmp_path))
    truth = {stem: WNIDS[i % 3] for i, stem in enumerate(stems[:4])}  # the fifth image is not listed
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n" + "".join(f"{s},{w} 1 2 3 4\n" for s, w in truth.items()))
    loader = build_loader(LoaderKind.FOLDER, cfg(tmp_path), Split.VAL, None, CPU)
    assert loader.num_samples == 4
    assert labels_of(loader) == [WNIDS.index(truth[s]) for s in stems[:4]]  # file order, train's class indices
    err = capsys.readouterr().err
    assert "flat val labelled by Kaggle solution (LOC_val_solution.csv)" in err
    assert "1 image(s) not listed in LOC_val_solution.csv left out" in err


def test_flat_val_with_caffe_val_txt_and_synset_words(tmp_path):
    """The sharder's other formats come along: Caffe val.txt indexes the sorted class list of synset_words.txt."""
    stems = flat_val(train_tree(tmp_path), count=3)
    (tmp_path / "synset_words.txt").write_text("".join(f"{w} name\n" for w in WNIDS))
    (tmp_path / "val.txt").write_text("".join(f"{s}.JPEG {2 - i}\n" for i, s in enumerate(stems)))
    loader = build_loader(LoaderKind.FOLDER, cfg(tmp_path), Split.VAL, None, CPU)
    assert labels_of(loader) == [2, 1, 0]


def test_val_with_no_image_is_an_error_not_a_zero_accuracy(tmp_path):
    train_tree(tmp_path)
    for wnid in WNIDS:
        (tmp_path / "val" / wnid).mkdir(parents=True)  # class folders, all empty
    message = one_line_error(tmp_path, Split.VAL)
    assert message.startswith(f"{tmp_path / 'val'}: no image files to evaluate") and "--no-eval" in message


def test_symlink_loop_lists_each_image_once_with_a_note(tmp_path, capsys):
    tmp_path = Path(os.path.realpath(tmp_path))
    """Old code: os.walk(followlinks=True) went round the loop (train/ listed again under a class: the images of
    the other classes counted many times, with the wrong class)."""
    train_tree(tmp_path, per_class=3)
    os.symlink(tmp_path / "train", tmp_path / "train" / WNIDS[0] / "loop")  # leads back into the tree
    outside = tmp_path / "extra"
    outside.mkdir()
    (outside / "more.JPEG").write_bytes(jpeg(7))
    os.symlink(outside / ".", outside / "self")  # a loop outside the tree, reached through a link
    os.symlink(outside, tmp_path / "train" / WNIDS[1] / "extra")  # followed once
    os.symlink(outside, tmp_path / "train" / WNIDS[2] / "again")  # same target: not followed twice
    loader = build_loader(LoaderKind.FOLDER, LoaderConfig(batch_size=1, image_size=8, workers=0,
                                                          options=(FolderConfig(tmp_path),), normalize=False),
                          Split.TRAIN, None, CPU)
    assert loader.num_samples == 10
    assert Counter(labels_of(loader)) == {0: 3, 1: 4, 2: 3}
    err = capsys.readouterr().err
    assert f"note: {tmp_path / 'train' / WNIDS[0] / 'loop'}: folder symlink to {tmp_path / 'train'} not followed " \
           f"(it leads back into {tmp_path / 'train'}" in err
    assert f"{tmp_path / 'train' / WNIDS[2] / 'again'}: folder symlink to {outside} not followed (its target is " \
           f"already listed" in err
