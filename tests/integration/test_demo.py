"""The embedded demo dataset, and `make demo` as the README runs it (the first of its eight epochs, which is its
warm-up epoch: the same targets, tree, shards and flags otherwise; the README's figures come from the full run)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tools.make_demo_imagenet import DEMO_WNIDS, write_demo_tree

REPO = Path(__file__).resolve().parents[2]


def test_demo_tree_is_deterministic_and_has_the_imagenet_quirks(tmp_path):
    assert write_demo_tree(tmp_path / "a", 3, 1, seed=0) == 40
    write_demo_tree(tmp_path / "b", 3, 1, seed=0)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.JPEG"))
    assert len(files) == 40 and {f.parts[1] for f in files} == set(DEMO_WNIDS)
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    kinds = {(Image.open(tmp_path / "a" / f).format, Image.open(tmp_path / "a" / f).mode) for f in files}
    assert kinds == {("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGB")}


@pytest.mark.slow
def test_make_demo_learns_above_chance(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    work = tmp_path / "demo"
    args = _demo_train_args().replace("--epochs 8", "--epochs 1")
    assert "--epochs 1" in args and "--warmup-epochs 1" in args, args
    proc = subprocess.run(["make", "demo", f"WORK={work}", f"DEMO_TRAIN_ARGS={args}"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = work / "run"  # the run folder: config.toml, metrics.json, steps.jsonl, metrics.png, checkpoints/
    m = json.loads((run / "metrics.json").read_text())
    assert m["eval_images"] == 200 and m["steps"] > 0
    assert m["epochs"] == 1 and m["acc1"] > 40.0, m  # 10 classes: chance is 10% (the full run: 92.0% after it)
    assert m["p_core"] >= m["p_train"] >= m["p_whole"] > 0
    assert "| CPUx1x1 | fp32 |" in proc.stdout
    assert "cmyk->rgb: 1, grayscale->rgb: 1, png->jpeg: 1" in proc.stdout
    assert f"plot: wrote {run / 'metrics.png'}" in proc.stdout and "1 evaluation)" in proc.stdout
    assert (run / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "config.toml").is_file() and (run / "steps.jsonl").is_file() and list((run / "checkpoints").iterdir())
    assert "epoch 1/1 step" in proc.stdout  # not a terminal here: plain progress lines


def _demo_train_args() -> str:
    """The Makefile's DEMO_TRAIN_ARGS, as `make demo` passes them to train."""
    for line in (REPO / "Makefile").read_text().splitlines():
        if line.startswith("DEMO_TRAIN_ARGS ?="):
            return line.split("?=", 1)[1].strip()
    raise AssertionError("Makefile defines no DEMO_TRAIN_ARGS")
