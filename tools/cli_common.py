"""What the console scripts share: their parser (:class:`Parser`: an error is one line, no usage block), argparse
types (:func:`positive`, :func:`enum_type`), the one schema mechanism every command builds its flags with (a
command's config dataclasses as :class:`Components`, whose :meth:`Components.option` makes the :class:`Option` of a
field, its default read from the dataclass; :class:`Schema`, the command's options; :meth:`Components.build`, the
parsed flags back into the config), and the one-line error message."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Iterator, NoReturn

from pipeline.compat import BooleanOptionalAction
from pipeline.schema import default_of


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
            the default is not None and ``show_default``.
        invert: a switch that sets ``field`` to False (``--no-eval`` sets ``eval``).
        metavar: as argparse's (Enum types get ``{a,b,c}``).
        negatable: a switch with both forms, ``--flag`` / ``--no-flag`` (its default from the schema), so a
            ``--config`` file's ``true`` can be turned off on the command line.
        aliases: other spellings of the flag that users bring from timm, torchvision's references or NVIDIA's
            ConvNets (``-b`` for ``--batch-size``); the dest and the config-file key stay ``flag``'s.
        const: a flag whose value is optional: given alone it holds ``const`` (``--resume`` alone: True; ``--resume
            PATH``: the path); a config file's ``true`` / ``false`` for it mean ``const`` / ``default``. None: the
            value is required (or the flag is a switch).
        show_default: False: the help says the default in its own words (``(default: detect)``) or not at all.
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
    show_default: bool = True

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
        if self.type is None or self.default is None or self.const is not None or not self.show_default:
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


@dataclass(frozen=True)
class Component:
    """One config dataclass of a command's schema.

    Attributes:
        cls: the frozen config dataclass (``LoaderConfig``).
        attr: where it sits in the root config, dotted for a component of a component (``loader_cfg``,
            ``layout``); None: the root config itself (``TrainConfig``).
        table: its ``--config`` TOML table (``loader``); None: the top level (and commands without ``--config``).
        collected: it is one of several sub-configs held in a tuple field: ``attr`` is that field and a name of
            its own (``loader_cfg.options.synthetic``: in the tuple ``loader_cfg.options``); it is added to the
            tuple only where a flag changes one of its defaults (none: the tuple stays its default).
    """

    cls: type
    attr: str | None
    table: str | None
    collected: bool = False


@dataclass(frozen=True)
class Components(Mapping):
    """A command's schema: its config dataclasses, read as a mapping config class → ``(attr, table)`` of its
    :class:`Component`. The flags are made from it (:meth:`option`: each default read from the dataclass) and the
    parsed flags are turned back into the root config (:meth:`field_values`, then :meth:`build`).

    Attributes:
        entries: the components; exactly one has ``attr`` None (the root).
    """

    entries: tuple[Component, ...]

    def __getitem__(self, cls: type) -> tuple[str | None, str | None]:
        for entry in self.entries:
            if entry.cls is cls:
                return entry.attr, entry.table
        raise KeyError(cls)

    def __iter__(self) -> Iterator[type]:
        return iter(entry.cls for entry in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def option(self, cls: type, field: str, flag: str, type=None, help: str = "", **details) -> Option:
        """The flag ``flag`` of field ``cls.field``: its default read from the dataclass (:func:`default_of`; a
        switch's is off and it sets the field to ``not invert``; a ``negatable`` one, ``--flag`` / ``--no-flag``,
        takes the field's default), in the table of ``cls``. ``details``: the other attributes of
        :class:`Option` (``invert``, ``metavar``, ``negatable``, ``aliases``, ``const``, ``show_default``), and
        ``default`` / ``table`` where a flag differs from its field's.

        Raises:
            KeyError: ``cls`` is no component, or ``field`` is no field of it with a default.
        """
        attr, table = self[cls]
        if "default" not in details:
            switch = type is None and not details.get("negatable", False)
            details["default"] = False if switch else default_of(cls, field)
        details.setdefault("table", table)
        return Option(flag, field=f"{attr}.{field}" if attr else field, type=type, help=help, **details)

    def field_values(self, options: tuple[Option, ...], args: argparse.Namespace) -> dict[str | None, dict]:
        """The parsed value of every option that sets a field, by component attribute (None: the root), then by
        field name: ``{None: {"epochs": 1, ...}, "loader_cfg": {"batch_size": 256, ...}}``."""
        values: dict[str | None, dict] = {entry.attr: {} for entry in self.entries}
        for option in options:
            if option.field is not None:
                attr, _, name = option.field.rpartition(".")
                values[attr or None][name] = option.value(args)
        return values

    def build(self, values: dict[str | None, dict], **root_fields) -> object:
        """The root config from :meth:`field_values`' ``values`` (after the command's own mapping): each component
        made from its fields, the innermost first, and given to its parent as the field named by the last part of
        its ``attr`` (a ``collected`` one: added to its tuple field where a flag changed a default);
        ``root_fields``: the root's other fields.

        Raises:
            ValueError: a value or combination a config's own checks reject (one line naming the flag).
        """
        values = {attr: dict(fields) for attr, fields in values.items()}
        values.setdefault(None, {}).update(root_fields)
        nested = sorted((e for e in self.entries if e.attr is not None), key=lambda e: -e.attr.count("."))
        for entry in nested:
            fields = values.get(entry.attr, {})
            holder = entry.attr.rpartition(".")[0] if entry.collected else entry.attr
            parent, _, name = holder.rpartition(".")
            target = values.setdefault(parent or None, {})
            if not entry.collected:
                target[name] = entry.cls(**fields)
            elif any(value != default_of(entry.cls, field) for field, value in fields.items()):
                target[name] = tuple(target.get(name, ())) + (entry.cls(**fields),)
        root = next(entry.cls for entry in self.entries if entry.attr is None)
        return root(**values[None])
