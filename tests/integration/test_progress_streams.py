"""Progress of shard-imagenet and its verify when stderr is not a terminal (a log file, a pipe): plain lines with
counts, rate and ETA, never tqdm's carriage-return redraws."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.shard_imagenet", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_sharder_and_verify_write_plain_progress_lines_into_a_log(demo_tree, tmp_path):
    out = tmp_path / "shards"
    shard = _run(str(demo_tree), "--out", str(out), "--shard-size", "8", "--workers", "2")
    assert shard.returncode == 0, shard.stderr
    assert "\r" not in shard.stderr
    lines = [line for line in shard.stderr.splitlines() if line.startswith(f"shard-imagenet {demo_tree.name}: ")]
    assert lines[0].startswith(f"shard-imagenet {demo_tree.name}: 0/60 img (0%), ")
    assert lines[-1].startswith(f"shard-imagenet {demo_tree.name}: 60/60 img (100%), ") and lines[-1].endswith("done")
    verify = _run("verify", str(out), "--workers", "2")
    assert verify.returncode == 0, verify.stderr
    assert "\r" not in verify.stderr
    shards = len(list(out.glob("*.tar")))
    lines = verify.stderr.splitlines()
    assert lines[0].startswith(f"verify {out}: 0/{shards} shards (0%), ")
    assert lines[-1].startswith(f"verify {out}: {shards}/{shards} shards (100%), ") and lines[-1].endswith("done")
    quiet = _run("verify", str(out), "--no-progress")
    assert quiet.returncode == 0 and quiet.stderr == ""
