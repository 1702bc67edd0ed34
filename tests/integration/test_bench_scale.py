"""benchmarks/bench_scale.py at a tiny fraction: its table and JSON hold exact counts and every figure, and it
prints its targets. No timing is asserted (the figures are only checked to be present and positive)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, shared

sys.path.insert(0, str(REPO))
from benchmarks.bench_scale import (  # noqa: E402
    IMAGENET_TRAIN, FractionResult, apportion, class_counts, format_table, read_wnids, targets, tree_spec)

FRACTION = 0.0005  # 641 train files in 641 classes + 25 val
TIMED = ("tree_s", "shard_s", "shard_img_s", "shard_main_rss_mb", "shard_worker_rss_mb", "resume_s", "verify_s",
         "train_build_s", "train_first_step_s", "train_first_batch_wait_s", "train_first_step_compute_s",
         "train_process_s", "plan_s", "shards_gb")


def test_class_counts_are_imagenet_shaped():
    counts = class_counts()
    assert sum(counts) == IMAGENET_TRAIN and len(counts) == 1000
    assert min(counts) == 732 and max(counts) == 1300


def test_apportion_is_exact():
    assert sum(apportion(class_counts(), 641)) == 641
    assert apportion([1, 1, 1], 4) == [2, 1, 1]


def test_tree_spec_counts():
    wnids = read_wnids(shared("imagenet-meta") / "synset_words.txt")
    spec = tree_spec(wnids, 0.1)
    assert (spec.num_train, spec.num_val) == (128_117, 5_000)
    assert all(n > 0 for n in spec.train)
    full = tree_spec(wnids, 1.0)
    assert (full.num_train, full.num_val) == (1_281_167, 50_000) and set(full.val) == {50}


def test_targets_printed_met_and_not_met():
    """Two made-up fractions: the rate target is NOT met, RSS and resume are met (verdict wording only)."""
    lo = FractionResult(0.1, 10, 1, 10, shard_img_s=100.0, shard_main_rss_mb=500.0, resume_s=2.0, plan_ok=True)
    hi = FractionResult(1.0, 100, 10, 10, shard_img_s=50.0, shard_main_rss_mb=900.0, resume_s=5.0, plan_ok=True)
    text = format_table([lo, hi], targets([lo, hi]))
    assert "target: shard img/s at 1 >= 0.9x the rate at 0.1: 0.50x (50 / 100 img/s): NOT met" in text
    assert "target: sharder main-process peak RSS <= 1000 MB: 900 MB: met" in text
    assert "target: resume <= 20 s: 5.0 s: met" in text


@pytest.mark.slow
def test_bench_scale_tiny_fraction(tmp_path):
    synsets = shared("imagenet-meta") / "synset_words.txt"
    out_json = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_scale.py"), "--fraction", str(FRACTION),
                           "--work", str(tmp_path / "work"), "--json", str(out_json), "--synsets", str(synsets)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert "| train files | 641 |" in text and "| val files | 25 |" in text and "| classes | 641 |" in text
    assert "| samples written (train/val) | 641/25 |" in text
    assert "| plan: every sample once | yes |" in text
    for line in ("target: shard img/s ratio (needs two fractions): not measured: not measured",
                 "target: sharder main-process peak RSS <= 1000 MB: ", "target: resume <= 20 s: "):
        assert line in text, text
    assert all(t.endswith((": met", ": NOT met", ": not measured")) for t in text.splitlines()
               if t.startswith("target: "))

    report = json.loads(out_json.read_text())
    (frac,) = report["fractions"]
    assert (frac["train_files"], frac["val_files"], frac["classes"]) == (641, 25, 641)
    assert (frac["train_samples"], frac["val_samples"]) == (641, 25)
    assert (frac["train_shards"], frac["val_shards"]) == (1, 1)
    for key in TIMED:
        assert frac[key] > 0, key
    batch = frac["plan_batch"]
    assert batch == 641 // 16 and frac["plan_steps_per_rank"] == 1
    assert frac["plan_train_planned"] == 16 * batch and frac["plan_train_left_out"] == 641 - 16 * batch
    assert frac["plan_val_planned"] == 25 and frac["plan_ok"] is True
    assert len(report["targets"]) == 3
    assert not list((tmp_path / "work").iterdir()), "the run's work folder is left behind"
