"""What the console scripts share: their parser (:class:`Parser`: an error is one line, no usage block), argparse
types (:func:`positive`, :func:`enum_type`), the option table entry that ties a flag to a schema field
(:class:`Option`, :class:`Schema`), and the one-line error message."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from enum import Enum
from typing import Callable, NoReturn

from pipeline.compat import BooleanOptionalAction


def positive(kind):
    """argparse type: ``kind(text)`` that must be > 0."""
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def enum_type(cls: type) -> Callable[[str], Enum]:
    """argparse type: the member of Enum ``cls`` whose value is the text; anything else is the error
    ``invalid choice 'dal' (choose from cpu, dali, nvjpeg, folder, synthetic)`` (argparse puts ``argument --loader:``
    before it), rather than argparse's ``invalid LoaderKind value``."""
    def parse(text: str) -> Enum:
        try:
            return cls(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid choice {text!r} (choose from {', '.join(shown(c) for c in cls)})") from None
    parse.__name__ = cls.__name__
    return parse


class Parser(argparse.ArgumentParser):
    """The parser of every console script: an error is one line ``<prog>: error: <message>`` on stderr and exit
    status 2, without argparse's usage block. A mistake in the command line itself (an unknown flag, a bad or
    missing value: argparse's own errors, raised while parsing) adds one hint line ``see <prog> --help``; an error
    the command reports after parsing (:meth:`error` called by its code, or :meth:`fail`) is the one line alone,
    which names the flag and what to do."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._parsing = 0  # > 0 while argparse parses: its errors get the hint

    def parse_known_args(self, args=None, namespace=None):
        self._parsing += 1
        try:
            return super().parse_known_args(args, namespace)
        finally:
            self._parsing -= 1

    def parse_args(self, args=None, namespace=None):
        self._parsing += 1
        try:
            return super().parse_args(args, namespace)
        finally:
            self._parsing -= 1

    def error(self, message: str) -> NoReturn:
        self.fail(message, hint=self._parsing > 0)

    def fail(self, message: str, hint: bool = False) -> NoReturn:
        """Print ``<prog>: error: <message>`` (its lines joined into one), with ``hint`` also ``see <prog> --help``,
        and exit with status 2 (raises SystemExit)."""
        line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
        text = f"{self.prog}: error: {line}\n" + (f"see {self.prog} --help\n" if hint else "")
        sys.stderr.write(text)  # one write: the ranks' lines do not interleave
        sys.stderr.flush()
        raise SystemExit(2)


def error_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line. Errors raised in a DataLoader worker arrive wrapped with the worker's
    traceback: their last line, without its ``SomeError:`` prefix, is the message."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1]) if lines else str(exc)


def shown(value: object) -> str:
    """A default as a user types it: enum values, comma lists, ``0.256`` rather than reprs."""
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, (tuple, list)):
        return ",".join(shown(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class Option:
    """One flag and the schema field it sets.

    Attributes:
        flag: ``--batch-size``; its argparse dest and config-file key is ``batch_size`` (:attr:`dest`).
        table: the TOML table it sits in (its component's: ``"loader"``, ...); None: the top level.
        field: where its value goes in the schema's root dataclass: ``loader_cfg.batch_size`` (a field of a
            component), ``epochs`` (a field of the root itself); None: an input the command maps itself.
        type: text → value, as argparse's ``type`` (an Enum class also gives the choices); None: a switch
            (``store_true``).
        default: the flag's default, read from the schema (never written again in the flag table).
        help: help text; ``{default}`` in it is replaced by the default, else ``(default: X)`` is appended when
            the default is not None.
        invert: a switch that sets ``field`` to False (``--no-eval`` sets ``eval``).
        metavar: as argparse's (Enum types get ``{a,b,c}``).
        negatable: a switch with both forms, ``--flag`` / ``--no-flag`` (its default from the schema), so a
            ``--config`` file's ``true`` can be turned off on the command line.
        aliases: other spellings of the flag that users bring from timm, torchvision's references or NVIDIA's
            ConvNets (``-b`` for ``--batch-size``); the dest and the config-file key stay ``flag``'s.
        const: a flag whose value is optional: given alone it holds ``const`` (``--resume`` alone: True; ``--resume
            PATH``: the path); a config file's ``true`` / ``false`` for it mean ``const`` / ``default``. None: the
            value is required (or the flag is a switch).
    """

    flag: str
    table: str | None
    field: str | None
    type: Callable[[str], object] | None = None
    default: object = None
    help: str = ""
    invert: bool = False
    metavar: str | None = None
    negatable: bool = False
    aliases: tuple[str, ...] = ()
    const: object = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def choices(self) -> list | None:
        return list(self.type) if isinstance(self.type, type) and issubclass(self.type, Enum) else None

    def help_text(self) -> str:
        """The help with its default filled in (``%`` is argparse's format character: write ``%%``)."""
        if "{default}" in self.help:
            return self.help.replace("{default}", shown(self.default))
        if self.type is None or self.default is None or self.const is not None:
            return self.help
        return f"{self.help} (default: {shown(self.default)})".lstrip()

    def value(self, args: argparse.Namespace) -> object:
        """The field's value from parsed flags."""
        value = getattr(args, self.dest)
        return not value if self.invert else value


def add_option(parser: argparse.ArgumentParser, option: Option) -> None:
    """``parser.add_argument`` for ``option`` (``parser`` may be an argument group)."""
    names = (option.flag, *option.aliases)
    if option.type is None and option.negatable:
        parser.add_argument(*names, dest=option.dest, action=BooleanOptionalAction, default=option.default,
                            help=f"{option.help} (default: {'on' if option.default else 'off'})")
        return
    if option.type is None:
        parser.add_argument(*names, dest=option.dest, action="store_true", help=option.help_text())
        return
    choices = option.choices
    metavar = option.metavar or ("{" + ",".join(shown(c) for c in choices) + "}" if choices else None)
    kind = enum_type(option.type) if choices else option.type  # a misspelt value: "invalid choice ... (choose from"
    optional = {} if option.const is None else {"nargs": "?", "const": option.const}
    parser.add_argument(*names, dest=option.dest, type=kind, default=option.default, choices=choices,
                        metavar=metavar, help=option.help_text(), **optional)


@dataclass(frozen=True)
class Schema:
    """A command's options: what its parser, its ``--config`` reader and writer are built from.

    Attributes:
        prog: the command's name (for messages).
        options: every option, the top-level ones first, then each component table's, in help order.
    """

    prog: str
    options: tuple[Option, ...]

    @property
    def tables(self) -> tuple[str, ...]:
        """The component tables, in order of first appearance."""
        return tuple(dict.fromkeys(o.table for o in self.options if o.table is not None))

    def option(self, dest: str) -> Option | None:
        return next((o for o in self.options if o.dest == dest), None)
