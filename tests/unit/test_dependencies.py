"""Dependencies that say what they are (issue 20, item 15): pyproject.toml's runtime dependencies are imported by
the runtime code, constraints.txt's direct group names only what pyproject.toml names, the GPU machine's wheels
are what the code there imports, and ``train`` / ``io-bench`` name the JPEG decoder in use at start."""

from __future__ import annotations

import ast
import importlib.metadata
import re
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from conftest import REPO

RUNTIME_DIRS = ("pipeline", "train", "tools")


def _requirement_name(req: str) -> str:
    return re.split(r"[\s;<>=!~\[]", req.strip(), maxsplit=1)[0]


def _pyproject() -> str:
    return (REPO / "pyproject.toml").read_text()


def runtime_dependencies() -> list:
    """``[project] dependencies`` of pyproject.toml as written (requirement strings)."""
    block = _pyproject().split("\ndependencies = [", 1)[1].split("\n]", 1)[0]
    return re.findall(r'^\s*"([^"]+)"', block, re.MULTILINE)


def extra_requirements() -> dict:
    """``[project.optional-dependencies]``: extra -> requirement strings."""
    block = _pyproject().split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return {name: re.findall(r'"([^"]+)"', body) for name, body in re.findall(r"^([\w-]+)\s*=\s*\[(.*?)\]\s*$",
                                                                              block, re.MULTILINE | re.DOTALL)}


@lru_cache(None)
def _imports_of(path: Path) -> frozenset:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return frozenset(names)


def imported_modules(paths) -> set:
    """Top-level module names imported anywhere in the ``.py`` files under ``paths`` (syntax tree, any depth)."""
    names = set()
    for root in paths:
        files = [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))
        for f in files:
            names |= _imports_of(f)
    return names


def top_level_modules(dist_name: str) -> set:
    """The top-level import names an installed distribution provides (``pillow`` -> ``PIL``)."""
    dist = importlib.metadata.distribution(dist_name)
    top = dist.read_text("top_level.txt")
    if top:
        return set(top.split())
    out = set()
    for f in dist.files or ():
        first = f.parts[0]
        if first.endswith((".dist-info", ".data")) or first == "..":
            continue
        out.add(first[:-3] if first.endswith(".py") else first.split(".")[0])
    return out


def test_every_runtime_dependency_is_imported_by_runtime_code():
    imported = imported_modules(REPO / d for d in RUNTIME_DIRS)
    unused = []
    for req in runtime_dependencies():
        name = _requirement_name(req)
        try:
            modules = top_level_modules(name)
        except importlib.metadata.PackageNotFoundError:
            if ";" in req:  # a marker that excludes this interpreter (tomli before 3.11)
                continue
            raise
        if not modules & imported:
            unused.append(f"{name} (modules {sorted(modules)})")
    assert not unused, f"runtime dependencies that pipeline/, train/ and tools/ never import: {unused}"


def test_test_tools_are_not_runtime_imports():
    imported = imported_modules(REPO / d for d in RUNTIME_DIRS)
    assert not imported & {"webdataset", "braceexpand", "timm", "pytest"}


def test_constraints_direct_group_names_only_pyproject_packages():
    """constraints.txt's first group ("direct dependencies and extras") pins packages pyproject.toml names."""
    text = (REPO / "constraints.txt").read_text()
    direct = text.split("\n\n")[1]
    pinned = [line.split("==")[0].lower() for line in direct.splitlines() if "==" in line]
    named = {_requirement_name(r).lower() for r in runtime_dependencies()}
    named |= {_requirement_name(r).lower() for reqs in extra_requirements().values() for r in reqs}
    assert pinned and not set(pinned) - named, f"not named in pyproject.toml: {sorted(set(pinned) - named)}"


def test_gpu_wheels_are_what_the_code_there_imports():
    """make gpu-wheels carries only packages that the runtime or benchmarks/gpu_check.py import."""
    m = re.search(r"^GPU_WHEEL_PKGS\s*:?=\s*(.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    imported = imported_modules([REPO / d for d in RUNTIME_DIRS] + [REPO / "benchmarks" / "gpu_check.py"])
    assert m and not set(m.group(1).split()) - imported, m and m.group(1)


def test_fast_extra_marker_matches_where_the_code_expects_a_wheel():
    markers = pytest.importorskip("packaging.markers")
    from pipeline.read.transforms import region_decoder_has_wheel

    (req,) = extra_requirements()["fast"]
    assert _requirement_name(req) == "nvidia-nvimgcodec-cu13"
    marker = markers.Marker(req.split(";", 1)[1])
    for py in ((3, 8), (3, 9), (3, 11), (3, 13)):
        for system, sys_platform in (("Linux", "linux"), ("Darwin", "darwin"), ("Windows", "win32")):
            for machine in ("x86_64", "aarch64"):
                env = {"python_version": "%d.%d" % py, "sys_platform": sys_platform, "platform_machine": machine}
                assert marker.evaluate(env) == region_decoder_has_wheel(py, system, machine), env


def test_decode_line_names_the_region_decoder_or_what_to_do(monkeypatch):
    from pipeline.read import transforms as T

    if T.nvimgcodec is not None:
        assert T.decode_line().startswith("decode: nvimgcodec ")
    monkeypatch.setattr(T, "nvimgcodec", None)
    monkeypatch.setattr(T, "region_decoder_has_wheel", lambda *a: True)
    line = T.decode_line()
    assert line.startswith("decode: simplejpeg ") and "no region decode" in line and "pip install -e '.[fast]'" in line
    monkeypatch.setattr(T, "region_decoder_has_wheel", lambda *a: False)
    assert "has no wheel for Python" in T.decode_line()


def test_train_start_line_names_the_decoder_of_each_loader(monkeypatch):
    from pipeline.read import transforms as T
    from train.loop import _decode_line

    cpu = torch.device("cpu")
    assert _decode_line("cpu", cpu) == T.decode_line()
    assert "decode_jpeg" in _decode_line("nvjpeg", cpu)
    assert "PIL" in _decode_line("folder", cpu)
    assert _decode_line("synthetic", cpu).startswith("decode: none")
    monkeypatch.setattr(T, "nvimgcodec", None)
    assert "no region decode" in _decode_line("cpu", cpu)


def test_io_bench_prints_the_decoder_first(tmp_path, capsys):
    from tools.io_bench import main

    assert main(["--data", str(tmp_path / "no-shards"), "--out", str(tmp_path / "out")]) == 2
    out = capsys.readouterr()
    assert out.out.startswith("io-bench: decode: ") and "io-bench: error:" in out.err
