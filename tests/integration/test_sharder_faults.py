"""The sharder under real faults, in real processes (issue 12): its workers die with it on ``kill -9``; a folder
that a non-root user cannot list is a reject, not a silent loss."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534

# shard-imagenet with every image taking 0.3 s more: slow enough to kill it while its workers are busy
SLOW_SHARDER = """
import sys, time
from pipeline.shard import pool
_normalize = pool.normalize_image
def _slow(*args, **kwargs):
    time.sleep(0.3)
    return _normalize(*args, **kwargs)
pool.normalize_image = _slow
from tools.shard_imagenet import main
sys.exit(main(sys.argv[1:]))
"""


def write_tree(root: Path, classes: dict[str, int]) -> Path:
    """``root/train/<class>/<i>.JPEG``, ``classes[class]`` small JPEGs each."""
    rng = np.random.default_rng(0)
    for cls, n in classes.items():
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "train" / cls / f"{i}.JPEG")
    return root


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state, ppid, ...), or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped by whoever inherited it counts as gone)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_workers_die_with_a_killed_sharder(tmp_path):
    src = write_tree(tmp_path / "src", {"a": 20, "b": 20})
    cmd = [sys.executable, "-c", SLOW_SHARDER, str(src), "--out", str(tmp_path / "out"), "--workers", "2",
           "--shard-size", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and len(workers) < 2:
            workers = children(proc.pid)
            time.sleep(0.05)
        assert len(workers) >= 2, "the sharder never started its workers"
        time.sleep(0.5)  # let them get busy
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 5
        while time.time() < deadline and any(alive(w) for w in workers):
            time.sleep(0.05)
        assert not [w for w in workers if alive(w)], "workers outlived the killed sharder"
    finally:
        for w in workers:
            if alive(w):
                os.kill(w, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _python_for_nobody(env: dict) -> list[str] | None:
    """A Python command the user ``nobody`` can run with this checkout and its packages importable: this
    interpreter, else the system's of the same version (this one may sit in a folder only root may enter)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for exe in (sys.executable, shutil.which(version, path="/usr/bin:/usr/local/bin")):
        if not exe:
            continue
        probe = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", exe, "-c",
                                "import numpy, PIL, tqdm, pipeline.shard.run"], env=env, cwd="/",
                               capture_output=True, timeout=60)
        if probe.returncode == 0:
            return [exe]
    return None


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="runs the sharder as the user nobody: needs root and setpriv")
def test_folder_a_non_root_user_cannot_list_is_a_reject():
    base = Path(tempfile.mkdtemp(prefix="sharder-nobody-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        src = write_tree(base / "src", {"a": 2, "b": 2, "c": 1})
        (base / "src" / "train" / "a" / "sub").mkdir()
        shutil.copy(base / "src" / "train" / "a" / "0.JPEG", base / "src" / "train" / "a" / "sub" / "x.JPEG")
        for locked in (src / "train" / "b", src / "train" / "a" / "sub"):
            os.chmod(locked, 0)
        out = base / "out"
        out.mkdir()
        os.chown(out, NOBODY, NOBODY)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(base), "LC_ALL": "C.UTF-8",
               "PYTHONPATH": os.pathsep.join([str(REPO), sysconfig.get_paths()["purelib"]])}
        python = _python_for_nobody(env)
        if python is None:
            pytest.skip("the user nobody cannot run a Python with this checkout's packages")
        res = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *python, "-m",
                              "tools.shard_imagenet", str(src), "--out", str(out), "--workers", "1",
                              "--no-progress"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        assert "note: train/a/sub/ and 1 more folder(s): cannot list this folder: Permission denied" in res.stdout
        assert "total: 5 files = 3 in shards + 2 rejected (of them 2 unreadable folder(s)" in res.stdout
        rows = (out / "rejects.tsv").read_text().splitlines()[1:]
        assert [r.split("\t")[:2] for r in rows] == [["train/a/sub/", "unreadable-folder"],
                                                     ["train/b/", "unreadable-folder"]]
    finally:
        for locked in base.rglob("*"):
            if locked.is_dir() and not locked.is_symlink():
                os.chmod(locked, 0o755)
        shutil.rmtree(base, ignore_errors=True)
