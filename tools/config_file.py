"""``--config FILE.toml``: option defaults from a TOML file, and the resolved options written back as TOML.

Format: the keys are the command-line flag names, with dashes or underscores (``batch_size = 256``,
``"max-steps" = 100``, ``precision = "amp"``, ``no_eval = true``). They may sit at the top level or, for
readability only, under the tables ``[data]``, ``[loader]``, ``[optim]`` and ``[run]`` (any option in any of
them). Precedence: built-in defaults < the file < flags given on the command line.

Errors (missing file, bad TOML, unknown key, wrong type or value) are one line naming the file and the key.

:func:`write_resolved` writes every effective option (None values left out) as flat ``key = value`` lines,
which ``--config`` reads back to the same options.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tomllib
from enum import Enum
from pathlib import Path

TABLES = ("data", "loader", "optim", "run")  # grouping only: no meaning beyond readability
SKIP = {"help", "config"}  # options that are not written to / read from a config file


class ConfigFileError(ValueError):
    """A config file that cannot be used; the message is one line naming the file (and the key)."""


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Options a file may set, by dest (``batch_size``)."""
    return {a.dest: a for a in parser._actions if a.dest not in SKIP and a.option_strings}


def _flatten(raw: dict, path: Path) -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            if key not in TABLES:
                raise ConfigFileError(f"{path}: unknown table [{key}] (tables: {', '.join(TABLES)}, or none)")
            items = [(f"{key}.{k}", k, v) for k, v in value.items()]
        else:
            items = [(key, key, value)]
        for shown, k, v in items:
            if isinstance(v, dict):
                raise ConfigFileError(f"{path}: key '{shown}': nested tables are not supported")
            dest = k.replace("-", "_")
            if dest in flat:
                raise ConfigFileError(f"{path}: key '{shown}': set twice")
            flat[dest] = (shown, v)
    return flat


def _convert(action: argparse.Action, shown: str, value: object, path: Path) -> object:
    """A TOML value turned into what the flag's parser would give, or a one-line error."""
    def bad(why: str) -> ConfigFileError:
        return ConfigFileError(f"{path}: key '{shown}': {why}")

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise bad(f"expected true or false, got {type(value).__name__} {value!r}")
        return value
    if action.nargs not in (None, "?") or not isinstance(action, argparse._StoreAction):
        raise bad("this option cannot be set from a config file")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise bad(f"expected a {'string' if action.type in (None, str, Path) else 'number or string'}, "
                  f"got {type(value).__name__} {value!r}")
    text = value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    try:
        converted = action.type(text) if action.type is not None else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        choices = "" if action.choices is None else f"; choose from {', '.join(str(_plain(c)) for c in action.choices)}"
        raise bad(f"invalid value {value!r} ({exc}{choices})") from None
    if isinstance(value, str) and isinstance(converted, (int, float)) and not isinstance(converted, bool):
        raise bad(f"expected a number, got the string {value!r}")
    if isinstance(value, float) and isinstance(converted, int):
        raise bad(f"expected an integer, got {value!r}")
    if action.choices is not None and converted not in action.choices:
        raise bad(f"invalid choice {value!r} (choose from {', '.join(str(_plain(c)) for c in action.choices)})")
    return converted


def load_defaults(parser: argparse.ArgumentParser, path: Path) -> dict[str, object]:
    """Options from a TOML file, converted like the command line would, by dest.

    Raises:
        ConfigFileError: missing/unreadable file, invalid TOML, unknown key, wrong type or value.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"{path}: cannot read the config file ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: invalid TOML ({exc})") from None
    options = _options(parser)
    out = {}
    for dest, (shown, value) in _flatten(raw, path).items():
        if dest not in options:
            raise ConfigFileError(f"{path}: unknown key '{shown}' (not an option of {parser.prog})")
        out[dest] = _convert(options[dest], shown, value, path)
    return out


def parse_args_with_config(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Add ``--config``, apply the file's values as defaults, then parse ``argv`` (flags win).

    A bad file ends the process through ``parser.error`` (usage + one line, exit 2).
    """
    if "config" not in {a.dest for a in parser._actions}:
        parser.add_argument("--config", type=Path, metavar="FILE.toml",
                            help="option defaults from a TOML file (keys = flag names; flags given here win); "
                                 "see docs/launch.md")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    if known.config is not None:
        try:
            parser.set_defaults(**load_defaults(parser, known.config))
        except ConfigFileError as exc:
            parser.error(str(exc))
    return parser.parse_args(argv)


def _plain(value: object) -> object:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def _toml_value(value: object) -> str:
    value = _plain(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, (tuple, list)):  # comma-list flags (--milestones 30,60,80) are written as their text
        return json.dumps(",".join(str(_plain(v)) for v in value))
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def resolved_toml(parser: argparse.ArgumentParser, args: argparse.Namespace, header: str = "") -> str:
    """Every effective option of ``args`` as flat ``key = value`` lines (None values left out)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for dest in _options(parser):
        value = getattr(args, dest, None)
        if value is not None:
            lines.append(f"{dest} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def resolved_path(metrics_json: Path) -> Path:
    """Where the resolved config goes: ``metrics.json`` -> ``metrics.config.toml`` (same folder)."""
    metrics_json = Path(metrics_json)
    return metrics_json.with_name(metrics_json.stem + ".config.toml")


def write_resolved(parser: argparse.ArgumentParser, args: argparse.Namespace, path: Path) -> Path:
    """Write the resolved options to ``path`` (parent folders made); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = " ".join(sys.argv[1:])
    header = (f"resolved options of `{parser.prog} {argv}`".rstrip() + "\n"
              f"reproduce: {parser.prog} --config {path.name}")
    path.write_text(resolved_toml(parser, args, header))
    return path
