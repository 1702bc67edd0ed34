"""benchmarks/compat.py (``make compat``): its pure parts (pytest summary, error lines, leg list, checks, table)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import compat  # noqa: E402


@pytest.mark.parametrize("output, expect", [
    ("....\n250 passed, 4 skipped, 2 warnings in 61.20s (0:01:01)\n", (250, 0, 4, 0)),
    ("F.\nFAILED tests/unit/test_a.py::test_x - ImportError: no\n"
     "======= 3 failed, 10 passed, 1 skipped, 1 error in 5.01s =======\n", (10, 3, 1, 1)),
    ("\nno tests ran in 0.01s\n", (0, 0, 0, 0)),
])
def test_pytest_summary(output, expect):
    counts = compat.parse_pytest_summary(output)
    assert (counts.passed, counts.failed, counts.skipped, counts.errors) == expect
    assert counts.line.endswith("s") or counts.line.endswith(")")


def test_pytest_summary_lists_failures_and_none_without_summary():
    out = ("FAILED tests/unit/test_a.py::test_x - TypeError: bad\nERROR tests/unit/test_b.py - ImportError: x\n"
           "1 failed, 1 error in 1.00s\n")
    assert compat.parse_pytest_summary(out).failures == [
        "FAILED tests/unit/test_a.py::test_x - TypeError: bad", "ERROR tests/unit/test_b.py - ImportError: x"]
    assert compat.parse_pytest_summary("Traceback (most recent call last):\nKilled\n") is None


def test_last_error_line():
    out = "Traceback (most recent call last):\n  File \"x.py\", line 1\nImportError: cannot import name 'x'\n\n"
    assert compat.last_error_line(out) == "ImportError: cannot import name 'x'"
    assert compat.last_error_line("train: error: bad flag\nusage: ...\n") == "train: error: bad flag"
    assert compat.last_error_line("just\nthe end\n") == "the end"
    assert compat.last_error_line("") == ""


def test_parse_legs():
    assert compat.parse_legs("py312, py38,py312") == ["py312", "py38"]
    for bad in ("py99", ",", ""):
        with pytest.raises(ValueError):
            compat.parse_legs(bad)


def test_dali_requirement_and_no_wheel():
    assert compat.dali_requirement((REPO / "pyproject.toml").read_text()).startswith("nvidia-dali-cuda130")
    assert compat.dali_requirement("") == "nvidia-dali-cuda130"
    assert compat.no_wheel("ERROR: No matching distribution found for nvidia-dali-cuda130")
    assert not compat.no_wheel("ERROR: HTTP error 503")


def test_check_metrics(tmp_path):
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"acc1": 10.0, "p_train": 3.0, "p_core": 3.1, "e2e_time": 9}))
    assert compat.check_metrics(m) == ""
    m.write_text(json.dumps({"acc1": None, "p_train": 3.0, "p_core": 3.1, "e2e_time": 9}))
    assert "acc1" in compat.check_metrics(m)
    m.write_text(json.dumps({"acc1": 10.0, "p_train": None, "test_only": True}))
    assert compat.check_metrics(m, test_only=True) == ""
    assert "p_train" in compat.check_metrics(m)
    assert compat.check_metrics(tmp_path / "absent.json")


def test_table_round_trips_through_json():
    r = compat.LegResult("py312", "3.12.1", "2.11.0", "0.26.0", "why", status="passed", wall_s=600,
                         versions={"python": "3.12.1", "torch": "2.11.0", "torchvision": "0.26.0", "numpy": "2.2.0"},
                         dali="2.4.0", tests=compat.TestCounts(passed=5, skipped=1),
                         bench=compat.Bench(100.0, 125.0, 0.8), decoder="simplejpeg",
                         steps=[compat.Step("cpu", compat.OK), compat.Step("dali", compat.SKIPPED)])
    back = compat.result_from_dict(json.loads(json.dumps(compat.dataclasses.asdict(r))))
    assert back == r
    table = compat.format_table([back])
    row = table.splitlines()[2]
    assert row.startswith("| py312 | 3.12.1 | 2.11.0 / 0.26.0 | 2.2.0 | 2.4.0 | 5 passed, 0 failed, 1 skipped |")
    assert "cpu ok, folder -, nvjpeg -, synthetic -, dali -" in row and "100 (0.80x)" in row
    assert all(line.count("|") == table.splitlines()[0].count("|") for line in table.splitlines())
