"""``--config FILE.toml``: option defaults read from a TOML file laid out as a command's :class:`Schema`, and the
resolved options written back in that layout.

Layout: the keys are the flag names, with dashes or underscores. Each component of the schema has its table,
which holds that component's options only: for ``train``, ``[loader]`` (``batch_size = 256``, ``workers``, ...),
``[optim]`` (``lr = 0.2``, ``momentum``, ...) and ``[checkpoint]`` (``checkpoint_dir = "ck"``, ``resume``, ...);
the run's own options (``data``, ``loader = "cpu"``, ``epochs``, ``precision = "amp"``, ``no_eval = true``, ...)
sit at the top level. A key under another component's table is an error naming the table it belongs in.
Older files are still read: any option may sit at the top level (the flat form), and the tables ``[data]`` and
``[run]`` group any option (readability only). Precedence: schema defaults < the file < flags given on the
command line.

Errors (missing file, bad TOML, unknown table or key, a key in the wrong table, wrong type or value) are one
line naming the file and the key.

:func:`write_resolved` writes every effective option (None values left out), the run's own at the top level and
the others in their component tables; ``--config`` reads it back to the same options.

Presets: ``train --config NAME``, where NAME is no existing file, reads a preset shipped inside the ``train``
package (``train/presets/<group>/<name>.toml``, package data, so a wheel has them): FlagPerf's configs by
FlagPerf's names (``C500x1x8``, or ``flagperf/C500x1x8``), this project's tuned recipes as ``tuned/dle-amp`` (or
``dle-amp`` where no other group has that name). An unknown name is one line listing the presets
(:func:`resolve_config`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from enum import Enum
from pathlib import Path

from pipeline.compat import TOMLDecodeError, toml_loads
from tools.cli_common import Option, Schema, shown

LEGACY_TABLES = ("data", "run")  # tables of older files: grouping only, any option (as at the top level)
PRESET_PROGS = ("train",)  # the commands whose --config also takes a preset name
FLAGPERF_GROUP = "flagperf"  # its presets are named without the group: C500x1x8


class ConfigFileError(ValueError):
    """A config file that cannot be used; the message is one line naming the file (and the key)."""


def _read(path: Path) -> dict:
    try:
        return toml_loads(path.read_text())
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"{path}: cannot read the config file ({exc})") from None
    except TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: invalid TOML ({exc})") from None


def _where(table: str | None) -> str:
    return "at the top level" if table is None else f"in [{table}]"


def _entries(raw: dict, schema: Schema, path: Path) -> list[tuple[str, str | None, str, object]]:
    """``(shown key, table or None, key, value)`` of every key of the file; unknown tables are errors."""
    entries = []
    for key, value in raw.items():
        if not isinstance(value, dict):
            entries.append((key, None, key, value))
            continue
        if key not in schema.tables and key not in LEGACY_TABLES:
            raise ConfigFileError(f"{path}: unknown table [{key}] (tables: {', '.join(schema.tables)}; "
                                  f"{' and '.join(LEGACY_TABLES)} in older files; or none)")
        entries += [(f"{key}.{k}", key, k, v) for k, v in value.items()]
    return entries


def _negated(schema: Schema, key: str) -> Option | None:
    """The ``--flag`` / ``--no-flag`` option a ``no_flag`` key names (the key's value then sets the opposite)."""
    key = key.replace("-", "_")
    option = schema.option(key[3:]) if key.startswith("no_") else None
    return option if option is not None and option.negatable else None


def _option(schema: Schema, path: Path, shown_key: str, table: str | None, key: str, value: object) -> Option:
    """The option a key sets, checked to stand where it belongs (``no_flag = true`` of a ``--flag`` /
    ``--no-flag`` option sets it too: see :func:`load_defaults`)."""
    if isinstance(value, dict):
        raise ConfigFileError(f"{path}: key '{shown_key}': nested tables are not supported")
    option = schema.option(key.replace("-", "_")) or _negated(schema, key)
    if option is None:
        raise ConfigFileError(f"{path}: unknown key '{shown_key}' (not an option of {schema.prog})")
    if table in schema.tables and option.table != table:
        raise ConfigFileError(f"{path}: key '{shown_key}' belongs {_where(option.table)}, not in [{table}]")
    return option


def _convert(option: Option, shown_key: str, value: object, path: Path) -> object:
    """A TOML value turned into what the flag's parser would give, or a one-line error."""
    def bad(why: str) -> ConfigFileError:
        return ConfigFileError(f"{path}: key '{shown_key}': {why}")

    if option.const is not None and isinstance(value, bool):  # an optional-value flag: true = given alone
        return option.const if value else option.default
    if option.type is None:
        if not isinstance(value, bool):
            raise bad(f"expected true or false, got {type(value).__name__} {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise bad(f"expected a {'string' if option.type in (str, Path) else 'number or string'}, "
                  f"got {type(value).__name__} {value!r}")
    text = value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    try:
        converted = option.type(text)
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        choices = "" if option.choices is None else f"; choose from {', '.join(shown(c) for c in option.choices)}"
        raise bad(f"invalid value {value!r} ({exc}{choices})") from None
    if isinstance(value, str) and isinstance(converted, (int, float)) and not isinstance(converted, bool):
        raise bad(f"expected a number, got the string {value!r}")
    if isinstance(value, float) and isinstance(converted, int):
        raise bad(f"expected an integer, got {value!r}")
    return converted


def load_defaults(schema: Schema, path: Path) -> dict[str, object]:
    """Options from a TOML file, converted like the command line would, by dest (``batch_size``).

    Raises:
        ConfigFileError: missing/unreadable file, invalid TOML, unknown table or key, a key in the wrong table,
            a key set twice, wrong type or value.
    """
    path = Path(path)
    out: dict[str, object] = {}
    for shown_key, table, key, value in _entries(_read(path), schema, path):
        option = _option(schema, path, shown_key, table, key, value)
        if option.dest in out:
            raise ConfigFileError(f"{path}: key '{shown_key}': set twice")
        converted = _convert(option, shown_key, value, path)
        out[option.dest] = not converted if _negated(schema, key) is option else converted
    return out


def presets_dir() -> Path:
    """The folder of the packaged presets: ``presets/`` beside the ``train`` package's ``__init__.py`` (in a
    checkout and in an installed wheel alike)."""
    import train

    return Path(train.__file__).resolve().parent / "presets"


def presets(root: Path | None = None) -> dict[str, Path]:
    """Every packaged preset by its name: ``C500x1x8`` for FlagPerf's (group ``flagperf``), ``tuned/dle-amp``
    for the others (``<group>/<file stem>``); FlagPerf's first, each group sorted. ``root``: the presets folder
    (default :func:`presets_dir`); a missing folder has none."""
    root = presets_dir() if root is None else Path(root)
    groups = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: (d.name != FLAGPERF_GROUP, d.name)) \
        if root.is_dir() else []
    found: dict[str, Path] = {}
    for group in groups:
        for path in sorted(group.glob("*.toml")):
            found[path.stem if group.name == FLAGPERF_GROUP else f"{group.name}/{path.stem}"] = path
    return found


def find_preset(name: str, root: Path | None = None) -> Path | None:
    """The preset called ``name`` (``C500x1x8``, ``flagperf/C500x1x8``, ``tuned/dle-amp``, or ``dle-amp`` when
    only one group has it; a trailing ``.toml`` is allowed), or None when there is none.

    Raises:
        ConfigFileError: a bare name that several groups have (the message names them).
    """
    known = presets(root)
    name = name[:-len(".toml")] if name.endswith(".toml") else name
    if name.startswith(FLAGPERF_GROUP + "/"):  # FlagPerf's, named with its group
        name = name[len(FLAGPERF_GROUP) + 1:]
        return known.get(name) if "/" not in name else None
    if name in known:
        return known[name]
    matches = [n for n in known if n.rpartition("/")[2] == name]
    if len(matches) > 1:
        raise ConfigFileError(f"{name}: several presets have that name ({', '.join(matches)}): name its group")
    return known[matches[0]] if matches else None


def resolve_config(value: str | Path, root: Path | None = None) -> Path:
    """What ``--config VALUE`` reads: VALUE itself when it is an existing file (a file always wins) or looks like
    one (an absolute path, or a name ending in ``.toml`` that is no preset either), else the packaged preset of
    that name (:func:`find_preset`).

    Raises:
        ConfigFileError: no such file and no such preset (one line listing the presets), or an ambiguous name.
    """
    text = str(value)
    if not text.strip():
        raise ConfigFileError("--config: empty: give a TOML file or a preset name")
    path = Path(value)
    if path.is_file():
        return path
    preset = None if path.is_absolute() else find_preset(text, root)
    if preset is not None:
        return preset
    if path.is_absolute() or text.endswith(".toml") or path.exists():
        return path  # read as a file: "config file not found", or a folder's "cannot read"
    names = ", ".join(presets(root)) or "none installed"
    raise ConfigFileError(f"{text}: no such config file, and no preset of that name (presets: {names})")


CONFIG_FLAGS = ("-c", "--config")  # -c: timm's spelling


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Add ``-c`` / ``--config FILE.toml|PRESET`` (read by :func:`parse_args_with_config`)."""
    parser.add_argument(*CONFIG_FLAGS, dest="config", type=Path, metavar="FILE.toml|PRESET",
                        help="option defaults from a TOML file (keys = flag names; a group's options below in its "
                             "table, the run's at the top level; flags given here win), or a packaged preset by "
                             "name (train: FlagPerf's C500x1x8, A100x1x8, ...; tuned/dle-amp); see docs/launch.md")


def parse_args_with_config(parser: argparse.ArgumentParser, schema: Schema,
                           argv: list[str] | None = None) -> argparse.Namespace:
    """Apply the ``--config`` file's values as defaults, then parse ``argv`` (flags win).

    ``parser`` has ``-c`` / ``--config`` (:func:`add_config_option`); for the commands of :data:`PRESET_PROGS` its value may
    name a packaged preset (:func:`resolve_config`). A bad file or an unknown preset ends the process through
    ``parser.error`` (one line with :class:`tools.cli_common.Parser`, exit 2).
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(*CONFIG_FLAGS, dest="config")  # text: Path("") would read as "."
    known, _ = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    if known.config is not None:
        try:
            if not known.config.strip():
                raise ConfigFileError("--config: empty: give a TOML file or a preset name")
            path = resolve_config(known.config) if schema.prog in PRESET_PROGS else Path(known.config)
            parser.set_defaults(**load_defaults(schema, path))
        except ConfigFileError as exc:
            parser.error(str(exc))
    return parser.parse_args(argv)


def _toml_value(value: object) -> str:
    if isinstance(value, Enum):
        value = value.value
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
    if isinstance(value, (str, Path)):
        return json.dumps(str(value), ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, (tuple, list)):  # comma-list flags (--milestones 30,60,80) are written as their text
        return json.dumps(shown(value))
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def resolved_toml(schema: Schema, args: argparse.Namespace, header: str = "") -> str:
    """Every effective option of ``args`` (None values left out): the top-level ones, then each component table."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for table in (None, *schema.tables):
        items = [f"{o.dest} = {_toml_value(getattr(args, o.dest))}" for o in schema.options
                 if o.table == table and getattr(args, o.dest, None) is not None]
        if table is not None and items:
            lines += ["", f"[{table}]"]
        lines += items
    return "\n".join(lines) + "\n"


def resolved_path(metrics_json: Path) -> Path:
    """Where the resolved config goes: ``metrics.json`` -> ``metrics.config.toml`` (same folder)."""
    metrics_json = Path(metrics_json)
    return metrics_json.with_name(metrics_json.stem + ".config.toml")


def write_resolved(schema: Schema, args: argparse.Namespace, path: Path) -> Path:
    """Write the resolved options to ``path`` atomically (parent folders made); returns ``path``.

    Raises:
        pipeline.fsio.WriteFailed: it cannot be written (disk full, ...): one line; a previous file intact.
    """
    from pipeline.fsio import atomic_write_text

    path = Path(path)
    argv = " ".join(sys.argv[1:])
    header = (f"resolved options of `{schema.prog} {argv}`".rstrip() + "\n"
              f"reproduce: {schema.prog} --config {path.name}")
    return atomic_write_text(path, resolved_toml(schema, args, header), "the resolved config")
