"""The ``dali`` backend on damaged or hand-made shards (issue 12): the shards are checked before DALI opens them
(:mod:`pipeline.read.shardcheck`), so each problem is one line naming shard, key and ``shard-imagenet verify``:
never a DALI traceback, never a crash. Every damaged set is a copy of the session's ``demo_shards``."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from pipeline.backends import LoaderConfig, Split
from pipeline.dataset import INFO_FILE
from pipeline.read.info import load_info
from pipeline.shard.writer import ShardWriter

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
CFG = LoaderConfig(batch_size=4, image_size=32, workers=1, shuffle_buffer=8)
DALI_MEMBERS = {"jpg": None, "lbl": 4}
VERIFY = "run `shard-imagenet verify"

# A loader run in a child process: DALI segfaulted on some damage before the check, which would kill pytest.
ISOLATED = """
import sys, torch
from pipeline.backends import LoaderConfig, Split
from pipeline.backends.dali import DaliLoader
from pipeline.read.info import load_info
try:
    info = load_info(sys.argv[1], check_files=sys.argv[3] == "1")
    loader = DaliLoader(LoaderConfig(batch_size=4, image_size=32, workers=1, shuffle_buffer=8), Split(sys.argv[2]),
                        info, torch.device("cpu"))
    for batch in loader:
        pass
except ValueError as exc:
    print(exc)
    sys.exit(3)
"""


# ------------------------------------------------------------------------------------------- damaging copies

def copy_of(demo_shards: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(demo_shards, tmp_path / "shards"))


def edit_info(root: Path, edit) -> None:
    """Rewrite ``_info.json`` through ``edit(obj)``, which changes the object in place."""
    obj = json.loads((root / INFO_FILE).read_text())
    edit(obj)
    (root / INFO_FILE).write_text(json.dumps(obj))


def tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf if m.isfile()]


def rewrite_shard(root: Path, name: str, change) -> None:
    """Write shard ``name`` (and its ``.idx``) again with the members ``change(members)`` returns, as a hand-made
    shard would be, and record its new size and sha256 in the manifest: only the members differ."""
    samples: dict[str, dict[str, bytes]] = {}
    for member, data in change(tar_members(root / name)):
        key, ext = member.split(".", 1)
        samples.setdefault(key, {})[ext] = data
    (root / name).unlink()
    writer = ShardWriter(root, name, shard_size=10 ** 9)  # a pattern without {index}: exactly this name
    for key, members in samples.items():
        writer.write(key, members)
    record = writer.close()[0]

    def update(obj):
        for entry in obj["manifest"]["train"] + obj["manifest"]["val"]:
            if entry["filename"] == name:
                entry.update(num_samples=record.num_samples, bytes=record.num_bytes, sha256=record.sha256)
    edit_info(root, update)


def idx_lines(root: Path, name: str) -> list[str]:
    return (root / name).with_suffix(".idx").read_text().splitlines()


def last_key(root: Path, name: str) -> str:
    return idx_lines(root, name)[-1].split()[3].split(".", 1)[0]


def add_empty_shard(root: Path, split: str) -> str:
    """Append a 0-sample tar (and its ``v1.2 0`` index) to ``split``, listed in ``_info.json`` and its manifest."""
    name = f"imagenet-{split}-000099.tar"
    buf = io.BytesIO()
    tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT).close()
    (root / name).write_bytes(buf.getvalue())
    (root / name).with_suffix(".idx").write_text("v1.2 0\n")

    def add(obj):
        obj["splits"][split]["filenames"].append(name)
        obj["splits"][split]["shard_lengths"].append(0)
        obj["manifest"][split].append({"filename": name, "num_samples": 0, "bytes": len(buf.getvalue()),
                                       "sha256": hashlib.sha256(buf.getvalue()).hexdigest()})
    edit_info(root, add)
    return name


def one_line_error(split: str, root: Path, **load) -> str:
    """The ValueError a DaliLoader of ``split`` raises on ``root`` (built, then one epoch read): one line."""
    from pipeline.backends.dali import DaliLoader

    with pytest.raises(ValueError) as err:
        list(DaliLoader(CFG, Split(split), load_info(root, **load), CPU))
    message = str(err.value)
    assert "\n" not in message and VERIFY in message
    return message


def isolated(root: Path, split: str, check_files: bool = True) -> tuple[int, str]:
    """(exit code, output) of a DaliLoader reading ``split`` of ``root`` in a child process (3: a ValueError)."""
    run = subprocess.run([sys.executable, "-c", ISOLATED, str(root), split, "1" if check_files else "0"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    return run.returncode, (run.stdout + run.stderr).strip()


@pytest.fixture
def dali():
    return pytest.importorskip("nvidia.dali")


# --------------------------------------------------------------------------- item 1: a 0-sample shard in the list

def test_empty_shard_is_left_out_with_a_note(dali, demo_shards, tmp_path):
    from pipeline.backends.dali import DaliLoader

    root = copy_of(demo_shards, tmp_path)
    clean = load_info(demo_shards)
    reference = [int(v) for b in DaliLoader(CFG, Split.VAL, clean, CPU) for v in b.labels]
    add_empty_shard(root, "train")
    add_empty_shard(root, "val")
    info = load_info(root)
    with pytest.warns(UserWarning, match=r"1 train shard\(s\) listed with 0 samples left out .*imagenet-train-000099"):
        train = DaliLoader(CFG, Split.TRAIN, info, CPU)
    for e in range(2):
        train.set_epoch(e)
        assert len(list(train)) == len(train) == 45 // 4
    with pytest.warns(UserWarning, match="1 val shard"):
        val = DaliLoader(CFG, Split.VAL, info, CPU)
    assert [int(v) for b in val for v in b.labels] == reference  # no sample moved


def test_split_of_only_empty_shards_is_refused(demo_shards, tmp_path):
    from pipeline.read.shardcheck import ShardCheckError, check_split

    root = copy_of(demo_shards, tmp_path)

    def empty_val(obj):
        obj["splits"]["val"].update(filenames=[], shard_lengths=[], num_samples=0)
        obj["manifest"]["val"] = []
    edit_info(root, empty_val)
    add_empty_shard(root, "val")
    with pytest.raises(ShardCheckError, match="every val shard listed in _info.json holds 0 samples"):
        check_split(load_info(root), "val", DALI_MEMBERS)


# ----------------------------------------------------------------- item 2: a missing .lbl, a last member cut short

def test_last_sample_without_lbl_and_cls_is_one_line(dali, demo_shards, tmp_path):
    root = copy_of(demo_shards, tmp_path)
    name = "imagenet-train-000001.tar"
    key = last_key(root, name)
    rewrite_shard(root, name, lambda ms: [m for m in ms if m[0] not in (f"{key}.lbl", f"{key}.cls")])
    message = one_line_error("train", root)
    assert message.startswith(str(root / name)) and f"sample {key}" in message and "no .lbl member" in message
    assert "needs .jpg and .lbl" in message


@pytest.mark.parametrize("manifest", [False, True])
def test_last_member_cut_short_is_one_line_not_a_crash(dali, demo_shards, tmp_path, manifest):
    # Before the check, DALI read a .lbl cut short past the end of the file: segfault (rc 139 / -11).
    root = copy_of(demo_shards, tmp_path)
    name = "imagenet-train-000002.tar"
    last = idx_lines(root, name)[-1].split()
    lbl_offset = int(last[last.index("lbl") + 1])
    (root / name).write_bytes((root / name).read_bytes()[:lbl_offset + 2])
    if not manifest:
        edit_info(root, lambda obj: obj.pop("manifest"))
    rc, out = isolated(root, "train", check_files=False)  # with the manifest: load_info's own size check is off
    assert rc == 3, f"rc {rc}: {out[-2000:]}"
    assert len(out.splitlines()) == 1 and out.startswith(str(root / name)) and VERIFY in out
    if manifest:
        assert f"{lbl_offset + 2} bytes, the manifest says" in out
    else:
        assert f"sample {last[3].split('.')[0]}" in out and "past the end of the file" in out and "truncated" in out


# ---------------------------------------------------------------------- item 3: KEY.image.jpg, DALI's own failures

def test_member_named_key_image_jpg_is_one_line(dali, demo_shards, tmp_path):
    root = copy_of(demo_shards, tmp_path)
    for name in load_info(root).split("val").filenames:
        rewrite_shard(root, name, lambda ms: [(n.replace(".jpg", ".image.jpg"), d) for n, d in ms])
    message = one_line_error("val", root)
    first = idx_lines(root, "imagenet-val-000000.tar")[1].split()[3].split(".")[0]
    assert f"imagenet-val-000000.tar: sample {first} (imagenet-val-000000.idx line 1): no .jpg member" in message
    assert "it has .image.jpg, .cls, .lbl, .json" in message and "whole suffix after the first dot" in message


def test_dali_failure_past_the_check_names_shard_and_key(dali, demo_shards, tmp_path, monkeypatch):
    # missing_component_behavior="error": with the check bypassed, DALI itself refuses the sample without .lbl
    # (before: an IsDenseTensor traceback), and that DALI error comes out as one line naming shard and key.
    import pipeline.backends.dali_graph as dali_backend
    from pipeline.read.shardcheck import CheckedShards

    root = copy_of(demo_shards, tmp_path)
    name = "imagenet-train-000001.tar"
    key = last_key(root, name)
    rewrite_shard(root, name, lambda ms: [m for m in ms if m[0] != f"{key}.lbl"])

    def unchecked(info, split, members):
        paths = tuple(info.shard_paths(split))
        return CheckedShards(paths, tuple(p[:-4] + ".idx" for p in paths), ())
    monkeypatch.setattr(dali_backend, "check_split", unchecked)
    message = one_line_error("train", root)
    assert f"shard {root / name}, sample {key}: " in message and "Underful sample" in message
    assert "KEY.jpg" in message and "4-byte KEY.lbl" in message


def test_undecodable_jpeg_names_the_decoder_and_its_cause(dali, demo_shards, tmp_path):
    # Within bounds, so the check passes; DALI fails while reading. Before: "(Critical error in pipeline:)".
    root = copy_of(demo_shards, tmp_path)
    name = "imagenet-val-000000.tar"
    _, offset, size, _ = idx_lines(root, name)[3].split()[:4]
    data = bytearray((root / name).read_bytes())
    data[int(offset):int(offset) + int(size)] = bytes(int(size))
    (root / name).write_bytes(bytes(data))
    edit_info(root, lambda obj: obj.pop("manifest"))
    message = one_line_error("val", root)
    assert "decoders.image: " in message and "Critical error" not in message and "--loader cpu" in message


def test_train_cli_prints_one_line_without_traceback(dali, demo_shards, tmp_path, capsys):
    from tools import train as train_cli

    root = copy_of(demo_shards, tmp_path)
    name = "imagenet-train-000000.tar"
    rewrite_shard(root, name, lambda ms: [(n.replace(".jpg", ".image.jpg"), d) for n, d in ms])
    rc = train_cli.main(["--data", str(root), "--loader", "dali", "--epochs", "1", "--max-steps", "2",
                         "--batch-size", "4", "--image-size", "32", "--workers", "1", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "Traceback" not in err
    line = err.splitlines()[-1]
    assert line.startswith(f"train: error: {root / name}: sample ") and "no .jpg member" in line and VERIFY in line


# ------------------------------------------------------------------------- the check itself (no DALI needed)

def test_sharder_output_passes_on_the_fast_path(demo_shards):
    from pipeline.read import shardcheck

    info = load_info(demo_shards)
    for split in ("train", "val"):
        checked = shardcheck.check_split(info, split, DALI_MEMBERS)
        assert list(checked.paths) == info.shard_paths(split) and checked.skipped == ()
        assert checked.index_paths == tuple(p[:-4] + ".idx" for p in checked.paths)
        for idx in checked.index_paths:
            lines = Path(idx).read_text().splitlines()[1:]
            assert shardcheck._scan(lines, Path(idx[:-4] + ".tar").stat().st_size, DALI_MEMBERS) is not None


def reorder_last_line(lines: list[str]) -> list[str]:
    """The last sample's components in reverse order (a hand-made index may list them in any order)."""
    groups = lines[-1].split()
    return lines[:-1] + [" ".join(" ".join(groups[i:i + 4]) for i in range(len(groups) - 4, -1, -4))]


@pytest.mark.parametrize("change", [
    lambda lines: [ln.replace(" ", "\t", 1) for ln in lines],  # other whitespace
    lambda lines: [ln.replace(" ", "  ") for ln in lines],
    reorder_last_line,
    lambda lines: lines[:1] + [" ".join(lines[1].split()[:12])] + lines[2:],  # one sample without its .json
], ids=["tabs", "double-spaces", "reordered", "fewer-members"])
def test_unusual_but_valid_index_passes_line_by_line(demo_shards, tmp_path, change):
    from pipeline.read.shardcheck import check_split

    root = copy_of(demo_shards, tmp_path)
    idx = root / "imagenet-val-000000.idx"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(lines[:1] + change(lines[1:])) + "\n")
    assert len(check_split(load_info(root), "val", DALI_MEMBERS).paths) == 2


def replace_in_line(number: int, old: str, new: str):
    """A change of the ``.idx`` lines: the first ``old`` in line ``number`` (0: the version line) becomes ``new``."""
    return lambda lines: [ln.replace(old, new, 1) if i == number else ln for i, ln in enumerate(lines)]


def edit_member(number: int, ext: str, field: int, value):
    """A change of the ``.idx`` lines: field ``field`` (1: data offset, 2: size) of the ``ext`` member on line
    ``number`` becomes ``value(its old value)``."""
    def change(lines):
        parts = lines[number].split()
        i = parts.index(ext) + field
        parts[i] = str(value(int(parts[i])))
        return [*lines[:number], " ".join(parts), *lines[number + 1:]]
    return change


@pytest.mark.parametrize("change,expected", [
    (lambda lines: ["v1.1 12"] + lines[1:], r"does not start with `v1.2 <samples>` \(starts 'v1.1 12'\)"),
    (lambda lines: ["v1.2 11"] + lines[1:-1], r"lists 11 samples in 11 lines, _info.json says 12"),
    (lambda lines: lines[:-1], r"lists 12 samples in 11 lines"),
    (edit_member(3, "jpg", 1, lambda v: v + 1), r"sample \w+ \(imagenet-val-000000.idx line 3\): \S+\.jpg starts at "
                                                r"byte \d+, not on a tar block"),
    (edit_member(2, "json", 2, lambda v: v + 10 ** 7), r"line 2\): \S+\.json ends at byte \d+, past the end of "
                                                       r"the file"),
    (edit_member(2, "lbl", 2, lambda v: 8), r"line 2\): its .lbl member is 8 bytes, the reader needs 4 bytes"),
    (edit_member(12, "jpg", 2, lambda v: 0), r"line 12\): its .jpg member is 0 bytes, the reader needs non-empty"),
    (replace_in_line(4, " cls ", " "), r"line 4\): malformed index line"),
    (replace_in_line(5, ".jpg ", ".jpeg "), None),  # a member name DALI does not read: fine
], ids=["version", "count", "lines", "misaligned", "past-end", "lbl-size", "empty-jpg", "malformed", "name-only"])
def test_damaged_index_is_one_line(demo_shards, tmp_path, change, expected):
    from pipeline.read.shardcheck import ShardCheckError, check_split

    root = copy_of(demo_shards, tmp_path)
    idx = root / "imagenet-val-000000.idx"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(change(lines)) + "\n")
    if expected is None:
        check_split(load_info(root), "val", DALI_MEMBERS)
        return
    with pytest.raises(ShardCheckError, match=expected) as err:
        check_split(load_info(root), "val", DALI_MEMBERS)
    message = str(err.value)
    assert message.startswith(str(root / "imagenet-val-000000.tar")) and "\n" not in message and VERIFY in message


def test_index_of_another_tar_or_none_is_one_line(demo_shards, tmp_path):
    from pipeline.read.shardcheck import ShardCheckError, check_split

    root = copy_of(demo_shards, tmp_path)
    train = load_info(root).split("train").filenames
    shutil.copy(root / train[1].replace(".tar", ".idx"), root / train[0].replace(".tar", ".idx"))  # both 12 samples
    with pytest.raises(ShardCheckError, match=r"no tar header for \S+ in front of byte \d+: the .idx does not belong "
                                              r"to this tar; run `shard-imagenet verify .*`, then re-shard, or rebuild "
                                              r"its .idx with wds2idx"):
        check_split(load_info(root), "train", DALI_MEMBERS)
    (root / train[0].replace(".tar", ".idx")).unlink()
    with pytest.raises(ShardCheckError, match=r"its index \S+imagenet-train-000000.idx is missing"):
        check_split(load_info(root), "train", DALI_MEMBERS)


def test_manifest_disagreements_are_one_line(demo_shards, tmp_path):
    from pipeline.read.shardcheck import ShardCheckError, check_split

    root = copy_of(demo_shards, tmp_path)
    name = "imagenet-val-000001.tar"
    with open(root / name, "ab") as f:
        f.write(bytes(512))
    with pytest.raises(ShardCheckError, match=rf"{name}: \d+ bytes, the manifest says \d+ \(truncated or replaced\)"):
        check_split(load_info(root, check_files=False), "val", DALI_MEMBERS)

    info = load_info(copy_of(demo_shards, tmp_path / "again"))  # load_info refuses such an _info.json itself
    val = info.manifest["val"]
    info = dataclasses.replace(info, manifest={**info.manifest, "val": (val[0], dataclasses.replace(val[1],
                                                                                                   num_samples=2))})
    with pytest.raises(ShardCheckError, match=rf"{name}: the manifest says 2 samples, shard_lengths 1"):
        check_split(info, "val", DALI_MEMBERS)
