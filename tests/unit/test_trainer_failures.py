"""The trainer on bad input (issue 12, items 10-14): an edited ``_info.json``, a ``.cls`` that is no class index, a
damaged image under every backend (``--on-bad-sample skip|error``), outputs of runs that never ran, and option
values or paths that cannot work. Each is one line on stderr, never a traceback, and nothing is silent."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.backends import FolderConfig, LoaderConfig, LoaderKind, OnBadSample, Split, build_loader
from pipeline.backends.shards import SampleDecodeError
from pipeline.dataset import INFO_FILE, DatasetError
from pipeline.read.info import load_info
from pipeline.read.tarstream import ShardReadError
from pipeline.shard.run import ShardConfig, shard_tree
from tools import train as train_cli
from tools.cli_common import error_line

CPU = torch.device("cpu")
SMALL = ["--batch-size", "4", "--image-size", "32", "--workers", "1"]
SYNTHETIC = ["--loader", "synthetic", "--synthetic-train-samples", "8", "--synthetic-val-samples", "4", "--no-eval",
             *SMALL]


def one_error_line(capsys) -> str:
    """The run's stderr, checked to be exactly one ``train: error:`` line (no traceback); returns it."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("train: error: "), err
    return err


def image_tree(root: Path, per_class: int = 4) -> Path:
    """An ImageFolder tree: 2 classes × ``per_class`` train and val JPEGs of noise (64×48)."""
    for s, split in enumerate(("train", "val")):
        for c, name in enumerate(("a", "b")):
            for i in range(per_class):
                path = root / split / name / f"{name}{i}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = np.random.default_rng(i + 10 * c + 100 * s).integers(0, 255, (48, 64, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(path, "JPEG", quality=95)
    return root


def truncate(path: Path) -> None:
    """Cut a JPEG file to half its length (PIL opens it, its decode fails: "image file is truncated")."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture()
def shards(tmp_path) -> Path:
    """Shards of :func:`image_tree` (8 train, 8 val samples, one shard each)."""
    out = tmp_path / "shards"
    shard_tree(ShardConfig(src=image_tree(tmp_path / "src"), out=out, shard_size=100, workers=1, progress=False))
    return out


def overwrite_member(tar: Path, index: int, ext: str, data: bytes) -> str:
    """Replace the bytes of the ``index``-th ``.ext`` member of ``tar`` by ``data`` (padded with zero bytes to
    the member's size, so sizes and offsets still hold); returns that sample's key."""
    raw = bytearray(tar.read_bytes())
    with tarfile.open(tar) as tf:
        member = [m for m in tf.getmembers() if m.name.endswith("." + ext)][index]
    assert len(data) <= member.size
    raw[member.offset_data:member.offset_data + member.size] = data + b"\x00" * (member.size - len(data))
    tar.write_bytes(bytes(raw))
    return member.name.split(".", 1)[0]


def edit_info(root: Path, edit) -> None:
    """Rewrite ``root/_info.json`` after ``edit(obj)``."""
    obj = json.loads((root / INFO_FILE).read_text())
    edit(obj)
    (root / INFO_FILE).write_text(json.dumps(obj))


# --- item 10: _info.json counts against the manifest ----------------------------------------------------------

def _raise_count(obj: dict, by: int) -> None:
    train = obj["splits"]["train"]
    train["shard_lengths"][1] += by
    train["num_samples"] += by


@pytest.mark.parametrize("by", [1, -1], ids=["raised", "lowered"])
def test_info_counts_that_disagree_with_the_manifest_are_one_line_errors(demo_shards, tmp_path, capsys, by):
    """Fails on the old code: a raised count died in the loop with a traceback ("loader yielded 8 batches, expected
    9"), a lowered one trained on fewer samples without a word."""
    data = shutil.copytree(demo_shards, tmp_path / "copy")
    edit_info(data, lambda obj: _raise_count(obj, by))
    with pytest.raises(DatasetError) as exc:
        load_info(data)
    assert str(exc.value) == (f"{data / INFO_FILE}: split 'train': imagenet-train-000001.tar holds {12 + by} samples "
                              f"by shard_lengths but 12 by the manifest (edited?); run `shard-imagenet verify {data}`,"
                              f" then re-shard")
    assert train_cli.main(["--data", str(data), *SMALL, "--max-steps", "2", "--no-eval"]) == 2
    err = one_error_line(capsys)
    assert "_info.json" in err and "imagenet-train-000001.tar" in err and "shard-imagenet verify" in err


def test_info_filenames_that_disagree_with_the_manifest_are_one_line_errors(demo_shards, tmp_path):
    data = shutil.copytree(demo_shards, tmp_path / "copy")
    shutil.copy(data / "imagenet-train-000001.tar", data / "other.tar")

    def rename(obj):
        obj["splits"]["train"]["filenames"][1] = "other.tar"
    edit_info(data, rename)
    with pytest.raises(DatasetError, match=r"split 'train': shard 2 is other.tar by filenames but "
                                           r"imagenet-train-000001.tar by the manifest"):
        load_info(data)
    edit_info(data, lambda obj: obj["manifest"]["train"].pop())
    with pytest.raises(DatasetError, match=r"split 'train' lists 4 shards, the manifest 3"):
        load_info(data)


def test_a_folder_without_a_manifest_keeps_working(demo_shards, tmp_path):
    data = shutil.copytree(demo_shards, tmp_path / "copy")
    edit_info(data, lambda obj: obj.pop("manifest"))
    info = load_info(data)
    assert info.manifest == {} and info.split("train").num_samples == 45
    loader = build_loader(LoaderKind.CPU, LoaderConfig(batch_size=4, image_size=32, workers=0), Split.VAL, info, CPU)
    assert sum(len(b.keys) for b in loader) == 13


# --- item 11: a .cls that is not a class index ----------------------------------------------------------------

@pytest.mark.parametrize("cls, why", [(b"x", "b'x', not a class index"),
                                      (b"7", "b'7', not a class index of the 2 classes")])
def test_a_cls_that_is_no_class_index_names_shard_key_and_value(shards, capsys, cls, why):
    """Fails on the old code: "has no usable invalid literal for int() … member" (and 7 of 2 classes passed)."""
    tar = shards / "imagenet-val-000000.tar"
    key = overwrite_member(tar, 2, "cls", cls)
    loader = build_loader(LoaderKind.CPU, LoaderConfig(batch_size=4, image_size=32, workers=0), Split.VAL,
                          load_info(shards), CPU)
    with pytest.raises(ShardReadError) as exc:
        list(loader)
    assert str(exc.value) == (f"{tar}: sample {key}: member .cls holds {why}; run `shard-imagenet verify "
                              f"{shards}`")
    assert train_cli.main(["--data", str(shards), *SMALL, "--max-steps", "1"]) == 2
    assert f"sample {key}: member .cls holds {why}" in one_error_line(capsys)


def test_a_sample_without_a_jpg_is_named(tmp_path, shards):
    tar = shards / "imagenet-val-000000.tar"
    raw = bytearray(tar.read_bytes())
    with tarfile.open(tar) as tf:
        member = [m for m in tf.getmembers() if m.name.endswith(".jpg")][0]
    name_at = member.offset  # the header: rename the member's extension jpg -> jpx (checksum recomputed)
    header = raw[name_at:name_at + 512]
    header[:100] = member.name.replace(".jpg", ".jpx").encode().ljust(100, b"\0")
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    raw[name_at:name_at + 512] = header
    tar.write_bytes(bytes(raw))
    loader = build_loader(LoaderKind.CPU, LoaderConfig(batch_size=4, image_size=32, workers=0), Split.VAL,
                          load_info(shards), CPU)
    with pytest.raises(ShardReadError, match=r"sample .*: no \.jpg member \(has \.jpx, \.cls, \.lbl, \.json\)"):
        list(loader)


# --- item 12: a damaged image under every backend, --on-bad-sample ----------------------------------------------

def test_folder_loader_skips_a_truncated_file_as_the_cpu_loader_does(tmp_path, capsys):
    """Fails on the old code: the decode error of ImageFolder's worker came out as a 63-line traceback."""
    tree = image_tree(tmp_path / "tree")
    truncate(tree / "train" / "a" / "a1.JPEG")
    truncate(tree / "val" / "b" / "b2.JPEG")
    cfg = LoaderConfig(batch_size=4, image_size=32, workers=2, options=(FolderConfig(tree),))
    train = build_loader(LoaderKind.FOLDER, cfg, Split.TRAIN, None, CPU)
    batches = list(train)
    assert len(batches) == len(train) == 2 and all(b.images.shape[0] == b.labels.shape[0] == 4 for b in batches)
    (skipped,) = train.stats().skipped
    assert skipped.startswith(f"{tree / 'train' / 'a' / 'a1.JPEG'}: cannot decode (OSError: image file is truncated")
    assert train.stats().stages.samples == 8
    val = build_loader(LoaderKind.FOLDER, cfg, Split.VAL, None, CPU)
    assert sum(b.labels.shape[0] for b in val) == 7 and len(val.stats().skipped) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"warning: skipped sample {tree / 'val' / 'b' / 'b2.JPEG'}: cannot decode" in err


def test_folder_train_run_counts_its_skipped_samples(tmp_path, capsys):
    tree = image_tree(tmp_path / "tree")
    truncate(tree / "val" / "a" / "a0.JPEG")
    out = tmp_path / "m.json"
    assert train_cli.main(["--data", str(tree), "--loader", "folder", *SMALL, "--max-steps", "1",
                           "--metrics-json", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["skipped_samples"] == 1 and m["eval_images"] == 7
    assert "a0.JPEG: cannot decode" in m["skipped_examples_rank0"][0]
    assert "Traceback" not in capsys.readouterr().err


def test_folder_batch_of_only_bad_files_is_one_error(tmp_path):
    tree = image_tree(tmp_path / "tree", per_class=1)
    for f in (tree / "val").rglob("*.JPEG"):
        truncate(f)
    val = build_loader(LoaderKind.FOLDER,
                       LoaderConfig(batch_size=2, image_size=32, workers=0, options=(FolderConfig(tree),)),
                       Split.VAL, None, CPU)
    with pytest.raises(SampleDecodeError, match=r"^no sample of a batch decodes; first: .*a0.JPEG: cannot decode"):
        list(val)


@pytest.mark.parametrize("kind", [LoaderKind.CPU, LoaderKind.NVJPEG, LoaderKind.FOLDER])
def test_on_bad_sample_error_fails_fast_naming_the_sample(tmp_path, shards, capsys, kind):
    """Fails on the old code (no --on-bad-sample: every backend skipped, the folder one raised a traceback)."""
    if kind is LoaderKind.FOLDER:
        data, bad = tmp_path / "src", tmp_path / "src" / "train" / "b" / "b3.JPEG"
        truncate(bad)
        where = f"{bad}: cannot decode"
    else:
        data = shards
        key = overwrite_member(shards / "imagenet-train-000000.tar", 3, "jpg", b"\x00" * 64)
        where = f"{shards / 'imagenet-train-000000.tar'}: {key}: cannot decode"
    cfg = LoaderConfig(batch_size=4, image_size=32, workers=1, options=(FolderConfig(data),),
                       on_bad_sample=OnBadSample.ERROR)
    loader = build_loader(kind, cfg, Split.TRAIN, load_info(data) if kind is not LoaderKind.FOLDER else None, CPU)
    with pytest.raises(SampleDecodeError) as exc:
        for e in range(3):  # the bad sample is in some batch of an epoch
            loader.set_epoch(e)
            list(loader)
    loader.close()
    line = error_line(exc.value)  # raised in a DataLoader worker (cpu, folder): its message is the last line
    assert line.startswith(f"bad sample {where}") and line.endswith("--on-bad-sample skip would skip and count it")
    capsys.readouterr()
    assert train_cli.main(["--data", str(data), "--loader", kind.value, *SMALL, "--epochs", "1", "--no-eval",
                           "--on-bad-sample", "error", "--device", "cpu"]) == 2  # nvjpeg: its CPU path, by name
    assert f"train: error: bad sample {where}" in one_error_line(capsys)


def test_on_bad_sample_is_checked():
    assert LoaderConfig().on_bad_sample is OnBadSample.SKIP
    assert LoaderConfig(on_bad_sample="error").on_bad_sample is OnBadSample.ERROR
    with pytest.raises(ValueError, match=r"^--on-bad-sample must be skip or error, got 'drop'$"):
        LoaderConfig(on_bad_sample="drop")


# --- item 13: outputs only of runs that ran; output paths checked before training -------------------------------

def test_a_run_that_fails_before_training_writes_nothing(tmp_path, capsys):
    """Fails on the old code: the resolved config was written before the run, beside a JSON that never came."""
    out = tmp_path / "out" / "m.json"
    assert train_cli.main(["--data", str(tmp_path), *SMALL, "--metrics-json", str(out)]) == 2
    one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_a_finished_run_writes_the_json_and_the_resolved_config(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert train_cli.main([*SYNTHETIC, "--max-steps", "1", "--metrics-json", str(out)]) == 0
    assert json.loads(out.read_text())["steps"] == 1
    assert "reproduce: train --config m.config.toml" in (tmp_path / "m.config.toml").read_text()


@pytest.mark.parametrize("flag", ["--metrics-json", "--log-jsonl", "--checkpoint-dir"])
def test_unwritable_output_paths_are_one_line_errors_before_training(tmp_path, capsys, flag):
    """Fails on the old code: --metrics-json / --log-jsonl under a file were tracebacks (the latter after start-up)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    target = blocker / "sub" / "out"
    with pytest.raises(SystemExit) as exc:
        train_cli.main([*SYNTHETIC, "--max-steps", "1", flag, str(target)])
    captured = capsys.readouterr()
    assert exc.value.code == 2 and "Traceback" not in captured.err and "train:" not in captured.out  # not started
    assert captured.err.strip().splitlines()[-1] == (f"train: error: {flag} {target}: cannot write there ({blocker} is "
                                                     f"not a folder); pick a writable path")


def test_output_path_that_is_a_folder_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_cli.main([*SYNTHETIC, "--metrics-json", str(tmp_path)])
    assert capsys.readouterr().err.strip().endswith(f"--metrics-json {tmp_path}: cannot write there (a folder); "
                                                    f"pick a writable path")


# --- item 14: paths that must exist ------------------------------------------------------------------------------

def test_paths_that_must_exist_are_checked(tmp_path, capsys):
    """Fails on the old code: a missing --data folder read as 'run shard-imagenet first', a file as a folder."""
    for argv, line in [(["--data", str(tmp_path / "nope")], f"--data {tmp_path / 'nope'}: no such folder"),
                       (["--data", str(tmp_path / "f.txt"), "--loader", "folder"],
                        f"--data {tmp_path / 'f.txt'}: not a folder"),
                       (["--config", str(tmp_path / "c.toml")], f"{tmp_path / 'c.toml'}: config file not found")]:
        (tmp_path / "f.txt").write_text("")
        with pytest.raises(SystemExit) as exc:
            train_cli.main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.strip().splitlines()[-1] == f"train: error: {line}"
