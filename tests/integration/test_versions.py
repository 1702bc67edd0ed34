"""Version policy: pyproject.toml's ranges cover FlagPerf's MetaX C500 stack (Python 3.8, torch 2.0, torchvision
0.15) up to Python 3.13 and torch 2.14, the GPU machine (Python 3.12, torch 2.11, torchvision 0.26) and the
development venv; constraints.txt pins, inside those ranges, exactly what this venv has; the Makefile's installs
use it."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from pipeline.compat import toml_loads

REPO = Path(__file__).resolve().parents[2]
PROJECT = toml_loads((REPO / "pyproject.toml").read_text())["project"]
UNPINNED_EXTRAS = {"gpu"}  # nvidia-ml-py: only on the GPU machine, not in the development venv


def _requirements() -> list[Requirement]:
    extras = PROJECT["optional-dependencies"]
    reqs = list(PROJECT["dependencies"]) + [r for name, rs in extras.items() if name not in UNPINNED_EXTRAS
                                            for r in rs]
    # a requirement for other Pythons only (tomli below 3.11) is neither pinned nor installed here
    return [r for r in map(Requirement, reqs) if r.marker is None or r.marker.evaluate()]


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_ranges_cover_the_c500_stack_the_gpu_machine_and_this_venv():
    python = SpecifierSet(PROJECT["requires-python"])
    assert [v for v in ("3.7", "3.8", "3.10", "3.11", "3.12", "3.13", "3.14") if v in python] == [
        "3.8", "3.10", "3.11", "3.12", "3.13"]
    reqs = {canonicalize_name(r.name): r.specifier for r in _requirements()}
    for name, ok, bad in (("torch", ("2.0.0", "2.0.1", "2.1.2", "2.11.0", "2.14.1"), ("1.13.1", "2.15.0")),
                          ("torchvision", ("0.15.2", "0.16.2", "0.26.0", "0.29.1"), ("0.14.1", "0.30.0")),
                          ("numpy", ("1.24.4", "2.4.6"), ("1.23.5", "3.0.0"))):
        assert all(reqs[name].contains(v) for v in ok) and not any(reqs[name].contains(v) for v in bad), name
    assert PROJECT["optional-dependencies"]["gpu"] == ["nvidia-ml-py"]
    tomli = [Requirement(r) for r in PROJECT["dependencies"] if r.startswith("tomli")]
    assert len(tomli) == 1 and not tomli[0].marker.evaluate({"python_version": "3.11"}) \
        and tomli[0].marker.evaluate({"python_version": "3.8"})  # the tomllib backport, below 3.11 only


IN_PROJECT_VENV = Path(sys.prefix).resolve() == (REPO / ".venv").resolve()


def test_every_requirement_is_pinned_inside_its_range_and_installed_so():
    pins = _pins()
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt has no pin for {req.name}"
        assert req.specifier.contains(pins[name]), f"{req.name}=={pins[name]} is outside {req.specifier}"
        if IN_PROJECT_VENV:  # `make test`'s venv installs exactly the pins; any other environment only the ranges
            assert Version(metadata.version(req.name)) == pins[name], f"{req.name}: venv differs from constraints.txt"


def test_makefile_installs_use_the_constraints():
    plan = subprocess.run(["make", "-n", "-B", ".venv/bin/.installed-test", "unsimd"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout
    installs = [ln for ln in plan.splitlines() if "pip install" in ln and "--upgrade pip" not in ln]
    assert len(installs) == 3 and all("-c constraints.txt" in ln for ln in installs), installs
