"""Small helpers shared by the console scripts: argparse types and the one-line error message."""

from __future__ import annotations

import argparse
import re


def positive(kind):
    """argparse type: ``kind(text)`` that must be > 0."""
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def error_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line. Errors raised in a DataLoader worker arrive wrapped with the worker's
    traceback: their last line, without its ``SomeError:`` prefix, is the message."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1]) if lines else str(exc)
