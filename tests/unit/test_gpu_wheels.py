"""benchmarks/gpu_wheels.py: split a wheel into part folders, print the device calls, join, verify, install.

A tiny valid wheel stands in for DALI's (no network, no 190 MiB download): split into >= 3 parts, joined with its
sha256 checked, installed by pip (no index) into a site folder and imported from it in a subprocess.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from benchmarks import gpu_wheels
from benchmarks.gpu_wheels import MIB, WheelsReport, plan_calls, prepare_wheels, split

NAME = "fakepkg_xyz-0.1-py3-none-any.whl"


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(folder: Path, name: str = "fakepkg_xyz", version: str = "0.1", blob_bytes: int = 3000) -> Path:
    """A wheel pip installs: ``name/__init__.py`` (VALUE = 42), a stored random blob, METADATA, WHEEL, RECORD."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"VALUE = 42\n",
        f"{name}/blob.bin": os.urandom(blob_bytes),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "\n".join([_record_line(p, d) for p, d in files.items()] + [f"{dist}/RECORD,,", ""])
    files[f"{dist}/RECORD"] = record.encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


@pytest.fixture
def parts(tmp_path):
    """(wheel, parts dir, folders): the stand-in wheel split into 4 part folders."""
    wheel = make_wheel(tmp_path / "dl")
    out = tmp_path / "parts"
    folders = split([wheel], out, wheel.stat().st_size // 4 + 1)
    return wheel, out, folders


def test_split_join_install_and_import(parts, tmp_path):
    wheel, out, folders = parts
    assert [f.name for f in folders] == ["01", "02", "03", "04"]
    for folder in folders:  # one piece + the manifest naming the wheel, its size, sha256 and every part's sha256
        assert sorted(p.name for p in folder.iterdir()) == sorted([f"{NAME}.part{folder.name.lstrip('0')}",
                                                                   "manifest.json"])
        manifest = json.loads((folder / "manifest.json").read_text())
        (entry,) = manifest["wheels"]
        assert (entry["name"], entry["size"], entry["sha256"]) == (NAME, wheel.stat().st_size,
                                                                   gpu_wheels.sha256_file(wheel))
        assert len(entry["parts"]) == 4 and manifest["folder"] == folder.name
    assert b"".join((f / f"{NAME}.part{i}").read_bytes() for i, f in enumerate(folders, 1)) == wheel.read_bytes()

    site = tmp_path / "work" / "site"
    report = prepare_wheels(wheel_dir=tmp_path / "absent", parts_dir=out, site=site, timeout_s=120.0)
    assert report == WheelsReport(site, (NAME,), (NAME,), ())
    assert (tmp_path / "work" / "joined-wheels" / NAME).read_bytes() == wheel.read_bytes()
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.run([sys.executable, "-c", "import fakepkg_xyz as m; print(m.VALUE, m.__file__)"],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    value, where = proc.stdout.split()
    assert value == "42" and str(Path(where).resolve()).startswith(str(site.resolve()) + os.sep)


def test_missing_part_is_named_and_nothing_installed(parts, tmp_path):
    _, out, folders = parts
    for path in folders[2].iterdir():
        path.unlink()
    folders[2].rmdir()
    report = prepare_wheels(wheel_dir=tmp_path / "absent", parts_dir=out, site=tmp_path / "w" / "site")
    assert (report.site, report.installed, report.joined) == (None, (), ())
    (problem,) = report.problems
    assert NAME in problem and str(out / "03") in problem and "1 of 4 part(s) missing" in problem
    assert not (tmp_path / "w" / "site").exists()


def test_corrupted_part_is_a_checksum_mismatch(parts, tmp_path):
    _, out, folders = parts
    piece = folders[1] / f"{NAME}.part2"
    data = bytearray(piece.read_bytes())
    data[10] ^= 0xFF
    piece.write_bytes(bytes(data))
    report = prepare_wheels(wheel_dir=tmp_path / "absent", parts_dir=out, site=tmp_path / "w" / "site")
    assert (report.site, report.installed, report.joined) == (None, (), ())
    (problem,) = report.problems
    assert "part 2" in problem and "sha256" in problem


def test_whole_file_mismatch_leaves_no_wheel(parts, tmp_path):
    """Parts that match their own sums but not the whole wheel's (a manifest edited after the split)."""
    _, out, folders = parts
    for folder in folders:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["wheels"][0]["sha256"] = "0" * 64
        (folder / "manifest.json").write_text(json.dumps(manifest))
    joined, problems = gpu_wheels.join(out, tmp_path / "joined")
    assert joined == () and len(problems) == 1 and "joined file does not match" in problems[0]
    assert list((tmp_path / "joined").iterdir()) == []  # neither the wheel nor its temporary name


def test_resplit_replaces_old_parts(tmp_path):
    big = make_wheel(tmp_path / "a", blob_bytes=20000)
    small = make_wheel(tmp_path / "b", blob_bytes=1000)
    out = tmp_path / "parts"
    assert len(split([big], out, 4000)) >= 5
    (out / "notes.txt").write_text("kept")
    folders = split([small], out, 4000)
    assert [f.name for f in gpu_wheels.part_folders(out)] == [f.name for f in folders] == ["01"]
    assert (out / "notes.txt").read_text() == "kept"
    joined, problems = gpu_wheels.join(out, tmp_path / "joined")
    assert problems == () and [p.read_bytes() for p in joined] == [small.read_bytes()]


def test_several_wheels_share_folders(tmp_path):
    """Wheels are streamed: a folder can end one wheel and begin the next; each joins to its own bytes."""
    wheels = [make_wheel(tmp_path / "dl", name=f"pkg{i}", blob_bytes=1500 * (i + 1)) for i in range(3)]
    total = sum(w.stat().st_size for w in wheels)
    folders = split(wheels, tmp_path / "parts", 2500)
    assert len(folders) == -(-total // 2500)
    assert all(gpu_wheels.folder_bytes(f) - (f / "manifest.json").stat().st_size <= 2500 for f in folders)
    joined, problems = gpu_wheels.join(tmp_path / "parts", tmp_path / "joined")
    assert problems == () and [p.read_bytes() for p in joined] == [w.read_bytes() for w in wheels]


def test_calls_carry_each_part_once_in_order_within_the_limit():
    parts = [(f".gpu-wheels-parts/{i:02d}", 50 * MIB) for i in range(1, 5)]
    calls = plan_calls(parts, tree_bytes=5 * MIB, first=[(".gpu-wheels", MIB)])
    carried = [p for call in calls for p in call.carry if p.startswith(".gpu-wheels-parts/")]
    assert carried == [p for p, _ in parts]
    assert calls[0].carry == (".gpu-wheels", ".gpu-wheels-parts/01")
    assert calls[-1].carry == (".gpu-wheels", ".gpu-wheels-parts/04")
    assert "gpu_check.py" in calls[-1].command and all("gpu_check.py" not in c.command for c in calls[:-1])
    assert [c.bytes_total for c in calls] == [56 * MIB, 55 * MIB, 55 * MIB, 56 * MIB]
    assert all(c.bytes_total <= 64 * MIB for c in calls)
    text = gpu_wheels.render_calls(calls)
    assert text.count("run(command=") == 4
    assert 'carry=[".gpu-wheels", ".gpu-wheels-parts/01"], timeout_s=60)' in text
    with pytest.raises(ValueError, match="call 1 .*call 4"):
        plan_calls(parts, tree_bytes=14 * MIB, first=[(".gpu-wheels", MIB)])
    with pytest.raises(ValueError, match="no part folders"):
        plan_calls([], tree_bytes=0)


def test_calls_cli_from_split_folders(parts, capsys):
    _, out, _ = parts
    assert gpu_wheels.main(["calls", "--parts-dir", str(out), "--tree-bytes", str(3 * MIB)]) == 0
    text = capsys.readouterr().out
    assert [text.index(f'"{out / n}"') for n in ("01", "02", "03", "04")] == sorted(
        text.index(f'"{out / n}"') for n in ("01", "02", "03", "04"))
    assert text.count(f"check --parts-dir {out}") == 3 and text.count("benchmarks/gpu_check.py") == 1


def test_check_and_cli_errors(parts, tmp_path, capsys):
    _, out, _ = parts
    assert gpu_wheels.check(out)[-1] == f"{NAME}: all 4 part(s) match"
    assert gpu_wheels.main(["split", str(tmp_path / "nope.whl"), "--out", str(tmp_path / "p"),
                            "--part-mib", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpu_wheels split: error:") and "\n" not in err
    assert gpu_wheels.main(["join", "--parts-dir", str(tmp_path / "none"), "--out", str(tmp_path / "j")]) == 1


def test_installed_distribution_is_not_reinstalled(tmp_path):
    """A wheel of a distribution installed at that version (pytest here) is skipped: no pip, no site."""
    version = pytest.__version__
    make_wheel(tmp_path / "wheels", name="pytest", version=version)
    report = prepare_wheels(wheel_dir=tmp_path / "wheels", parts_dir=tmp_path / "none", site=tmp_path / "site")
    assert report == WheelsReport(None, (), (), ())


def test_empty_shared_namespace_init_extends_its_path(tmp_path):
    site, other = tmp_path / "site", tmp_path / "other"
    for folder in (site / "nvidia", site / "solo", other / "nvidia"):
        folder.mkdir(parents=True)
    (site / "nvidia" / "__init__.py").write_text("")
    (site / "solo" / "__init__.py").write_text("")
    assert gpu_wheels.share_namespaces(site, [str(site), str(other)]) == ("nvidia",)
    assert "extend_path" in (site / "nvidia" / "__init__.py").read_text()
    assert (site / "solo" / "__init__.py").read_text() == ""


def test_makefile_carries_what_dali_needs_beyond_the_gpu_image():
    """GPU_DALI_DEPS names every requirement of the installed DALI that the GPU machine's image lacks (its image
    holds numpy, packaging, six; the device README's package list), with nvImageCodec's [all] extras."""
    import importlib.metadata as md
    import re

    try:
        requires = md.requires("nvidia-dali-cuda130") or []
    except md.PackageNotFoundError:
        pytest.skip("nvidia-dali-cuda130 not installed here")
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    deps = re.search(r"^GPU_DALI_DEPS\s*:=\s*((?:.*\\\n)*.*)$", makefile, re.M).group(1)
    carried = {re.sub(r"[-_.]+", "-", n).lower() for n in re.findall(r"([A-Za-z0-9_.-]+)==", deps)}
    names = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", r).group(0)).lower()
             for r in requires if "extra ==" not in r}
    codec = md.requires("nvidia-nvimgcodec-cu13") or []
    names |= {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", r).group(0)).lower()
              for r in codec if 'extra == "all"' in r}
    assert names - {"numpy", "packaging", "six"} - carried == set()
