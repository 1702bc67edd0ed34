"""The static guard of ``make test``: the sources pass it, and each kind of newer API planted in a file fails it
with a line naming the file, the line and the fallback to use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tools import check_compat

REPO = Path(__file__).resolve().parents[2]
HEADER = '"""A planted module."""\n\nfrom __future__ import annotations\n\n'


def test_the_project_passes_the_guard():
    out = subprocess.run([sys.executable, "-m", "tools.check_compat"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 finding(s)" in out.stdout


def _findings(tmp_path: Path, body: str, header: str = HEADER, name: str = "planted.py") -> list[str]:
    f = tmp_path / name
    f.write_text(header + body)
    return [str(x) for x in check_compat.check([f])]


def _rules(tmp_path: Path, body: str, header: str = HEADER) -> list[str]:
    """The project's own rules only (no vermin run: fast)."""
    f = tmp_path / "planted.py"
    return [str(x) for x in check_compat.rule_findings(f, header + body, exempt_apis=False)]


def test_a_planted_functools_cache_fails_through_vermin(tmp_path):
    found = _findings(tmp_path, "import functools\n\n\n@functools.cache\ndef f():\n    return 1\n")
    assert any(":8: 'functools.cache'" in f and "needs Python 3.9" in f for f in found), found
    out = subprocess.run([sys.executable, "-m", "tools.check_compat", str(tmp_path / "planted.py")], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 1 and "planted.py:8:" in out.stdout


@pytest.mark.parametrize("body, expected", [
    ("import torch\nscaler = torch.amp.GradScaler('cuda')\n", "pipeline.compat.grad_scaler"),
    ("import torch\nopt = torch.optim.SGD([], lr=0.1, fused=True)\n", "pipeline.compat.make_sgd"),
    ("import torch.distributed as dist\ndist.init_process_group('nccl', device_id=0)\n",
     "pipeline.compat.init_process_group"),
    ("from torchvision.datasets import ImageFolder\nd = ImageFolder('x', allow_empty=True)\n",
     "pipeline.compat.image_folder_class"),
    ("from torchvision.io import decode_jpeg\n", "pipeline.compat.decode_jpegs"),
    ("import torchvision\nx = torchvision.io.decode_jpeg\n", "pipeline.compat.decode_jpegs"),
    ("import torch\nm = torch.compile\n", "pipeline.compat.compile_model"),
    ("import torch\nused = torch.cuda.device_memory_used(0)\n", "train.memory"),
    ("import torch\ns = torch.UntypedStorage._new_shared(8)\n", "pipeline.compat.new_shared_uint8"),
    ("import subprocess\np = subprocess.Popen(['true'], process_group=0)\n",
     "pipeline.compat.new_process_group_kwargs"),
    ("name = 'a.tmp'.removesuffix('.tmp')\n", "pipeline.compat.remove_suffix"),
    ("import tomllib\n", "pipeline.compat.toml_loads"),
    ("pairs = list(zip([1], [2], strict=True))\n", "pipeline.compat.zip_strict"),
    ("from torch.amp import GradScaler\n", "pipeline.compat.grad_scaler"),
    ("import torchvision.io as tio\nx = tio.decode_jpeg\n", "pipeline.compat.decode_jpegs"),
    ("import torch\nu = torch.cuda.get_device_properties(0).uuid\n", "pipeline.compat.cuda_device_uuid"),
    ("import torch\nm = torch.load('f.pt', mmap=True)\n", "without mmap="),
    ("import torch\ntorch._foreach_copy_([], [])\n", "pipeline.compat.foreach_copy_"),
    ("from concurrent.futures import ThreadPoolExecutor\nThreadPoolExecutor().shutdown(cancel_futures=True)\n",
     "pipeline.compat.shutdown_cancelling"),
])
def test_each_newer_api_planted_outside_compat_fails(tmp_path, body, expected):
    found = _rules(tmp_path, body)
    assert any(expected in f and "planted.py:" in f for f in found), found


def test_runtime_generics_and_unions_fail_but_annotations_pass(tmp_path):
    assert _rules(tmp_path, "def f(x: list[int] | None) -> dict[str, int]:\n    y: tuple[int, ...] = ()\n"
                               "    return {}\n") == []
    found = _rules(tmp_path, "Pair = tuple[int, int]\nok = isinstance(1, int | None)\n")
    assert any(":5: tuple[...] outside an annotation" in f for f in found), found
    assert any(":6: a 'X | Y' type union" in f for f in found), found


def test_a_module_without_future_annotations_fails(tmp_path):
    found = _rules(tmp_path, "def f(x: list[int]) -> None:\n    pass\n", header='"""No future import."""\n')
    assert any(":1: no 'from __future__ import annotations'" in f for f in found), found


def test_vermin_exemptions_are_allowed_in_compat_only(tmp_path):
    found = _rules(tmp_path, "x = list(zip([1], [2], strict=True))  # novermin\n")
    assert any("vermin exemption outside pipeline/compat.py" in f for f in found), found
    compat = (REPO / "pipeline" / "compat.py").read_text()
    assert "# novermin" in compat  # the tomllib import: exempt there, and the guard passes the project (above)


def test_tests_may_use_guarded_newer_apis(tmp_path):
    """Tests check both branches of a fallback, so they reference the newer APIs behind hasattr: allowed."""
    body = "import torch\nif hasattr(torch.amp, 'GradScaler'):\n    s = torch.amp.GradScaler('cpu')\n"
    assert check_compat.rule_findings(REPO / "tests" / "x.py", HEADER + body, exempt_apis=True) == []
    assert check_compat.rule_findings(REPO / "train" / "x.py", HEADER + body, exempt_apis=False)


def test_the_rule_tables_are_read_only():
    for table, key in ((check_compat.NEWER_ATTRIBUTES, "torch.compile"),
                       (check_compat.NEWER_KEYWORDS, ("SGD", "fused")), (check_compat.NEWER_IMPORTS, "tomllib")):
        with pytest.raises(TypeError):
            table[key] = "changed"
    assert isinstance(check_compat.BUILTIN_GENERICS, frozenset) and "list" in check_compat.TYPE_NAMES


def test_one_line_holds_each_finding_of_several_rules(tmp_path):
    """A line with a builtin generic, a newer keyword and a newer attribute: one finding per rule, in node order."""
    found = _rules(tmp_path, "import torch\nx = (list[int], torch.optim.SGD([], lr=0.1, fused=True), torch.compile)\n")
    assert sum(":6: list[...]" in f for f in found) == 1, found
    assert sum(":6: torch.optim.SGD(fused=...)" in f for f in found) == 1, found
    assert sum(":6: torch.compile: not in the oldest" in f for f in found) == 1, found
