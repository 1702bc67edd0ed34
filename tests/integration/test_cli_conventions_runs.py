"""Issue 20 items 11 and 12, end to end (in-process ``train`` runs, small): ``--resume PATH`` (a checkpoint file, or
a folder: its newest) continues bitwise where the run it came from went on, and ``--device cpu`` accepts the CPU
for a GPU backend, whose row then says it ran on the CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tools import train as train_cli
from train import checkpoint

SYNTHETIC = ["--loader", "synthetic", "--synthetic-train-samples", "8", "--batch-size", "2", "--image-size", "32",
             "--workers", "0", "--no-eval", "--no-progress", "--max-steps", "2", "--seed", "3"]


def weights(path: Path) -> dict:
    return checkpoint.read_checkpoint(path)["model"]


def test_resume_path_file_and_folder_continue_bitwise(tmp_path, capsys):
    """Fails on the old code: ``--resume PATH`` was "unrecognized arguments" (timm, torchvision's references and
    NVIDIA's ConvNets all take a path)."""
    ref = tmp_path / "ref"
    assert train_cli.main([*SYNTHETIC, "--checkpoint-dir", str(ref), "--checkpoint-every", "1",
                           "--checkpoint-keep", "10"]) == 0
    step1, step2 = checkpoint.checkpoint_path(ref, 1), checkpoint.checkpoint_path(ref, 2)
    assert step1.is_file() and step2.is_file()
    only1 = tmp_path / "only1"
    only1.mkdir()
    shutil.copy(step1, only1)
    capsys.readouterr()
    for source in (step1, only1):  # a checkpoint file; a folder: its newest
        out = tmp_path / f"from-{source.name}"
        assert train_cli.main([*SYNTHETIC, "--resume", str(source), "--checkpoint-dir", str(out)]) == 0
        found = step1 if source == step1 else only1 / step1.name
        assert f"resume: {found} at step 1/2" in capsys.readouterr().out
        assert sorted(p.name for p in out.iterdir()) == [step2.name]  # it continued to step 2, written here
        a, b = weights(step2), weights(checkpoint.checkpoint_path(out, 2))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), source
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train_cli.main([*SYNTHETIC, "--resume", str(empty)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"train: error: --resume {empty}: no checkpoint (ckpt-step*.pt) in that folder"]


def test_device_cpu_runs_a_gpu_backend_on_the_cpu_and_the_row_says_so(demo_shards, tmp_path, capsys):
    """Fails on the old code: --device was an unknown flag (and without it nvjpeg silently ran on the CPU)."""
    out = tmp_path / "m.json"
    rc = train_cli.main(["--data", str(demo_shards), "--loader", "nvjpeg", "--device", "cpu", "--max-steps", "1",
                         "-b", "4", "--image-size", "32", "-j", "1", "--no-eval", "--no-progress", "--metrics-json",
                         str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| CPUx1x1 | fp32 |" in printed  # the config label names the device kind that ran
    m = json.loads(out.read_text())
    assert (m["config"], m["resolved_config"]["device"], m["resolved_config"]["loader"]) == ("CPUx1x1", "cpu",
                                                                                             "nvjpeg")
