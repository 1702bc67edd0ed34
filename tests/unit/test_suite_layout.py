"""The test folders have no ``__init__.py``: pytest imports each file by its basename, so two test files with one
name (tests/unit/test_x.py and tests/integration/test_x.py) stop the whole run at collection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_files_share_a_basename():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [name for name, n in names.items() if n > 1] == []
