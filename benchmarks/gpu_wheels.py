"""Wheels too large for one device call, carried in parts over consecutive calls, joined and installed there.

A device call carries the working tree plus the paths named in ``carry``, 64 MiB in all (the workplace's device
README, "Limits"), and the machine keeps what earlier calls left while it stays warm (30 s after a call). DALI
(``nvidia-dali-cuda130``, ~190 MiB, with the wheels it needs that the GPU machine lacks, ~66 MiB more) therefore
travels as parts, one folder per call::

    python3 -m benchmarks.gpu_wheels split WHEEL... --out .gpu-wheels-parts --part-mib N
    python3 -m benchmarks.gpu_wheels calls --parts-dir .gpu-wheels-parts --tree-bytes T [--first-carry .gpu-wheels]
    python3 -m benchmarks.gpu_wheels check [--parts-dir .gpu-wheels-parts]
    python3 -m benchmarks.gpu_wheels join  [--parts-dir .gpu-wheels-parts] --out DIR

``split`` streams the wheels (in the order given) into folders ``01``, ``02``, ... of at most N MiB each: a folder
holds one piece file per wheel that reaches into it (``NAME.whl.partK``, K from 1) and ``manifest.json``, the same
plan in every folder (format 1: ``plan`` id, ``folder``, ``folders`` count, and per wheel its ``name``, ``size``,
``sha256`` and ``parts``: each piece's ``folder``, ``file``, ``size`` and ``sha256``), so any one folder names what
is missing. It first removes every folder of an earlier split (no stale part survives). ``calls`` prints the device
calls, back to back, as the ``run`` tool's arguments, and refuses (exit 2) a call over 64 MiB. ``check`` says which
folders are there and whether their pieces match (the command of the carrying calls). ``join`` assembles every
complete wheel. :func:`prepare_wheels` is what ``benchmarks/gpu_check.py`` calls first on the GPU machine.

Standard library only: it runs on the GPU machine's ``python3`` (3.12) as well as here (3.8-3.13).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

MIB = 1 << 20
CALL_LIMIT_BYTES = 64 * MIB  # what one device call carries: working tree + carried paths
MANIFEST = "manifest.json"
FORMAT = 1
CHUNK = 4 * MIB  # copy / hash buffer
FOLDER_RE = re.compile(r"^[0-9]{2,}$")
CHECK_COMMAND = "PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py"
CHECK_TIMEOUT_S = 540  # README "GPU check": the check's 480 s budget plus start and wheel installation
CARRY_TIMEOUT_S = 60
NAMESPACE_INIT = "__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n"


@dataclass(frozen=True)
class WheelsReport:
    """What :func:`prepare_wheels` did.

    Attributes:
        site: folder to put first on ``sys.path`` / ``PYTHONPATH``; None when nothing was installed.
        installed: wheel file names installed into ``site``.
        joined: wheel file names assembled from parts, their sha256 verified.
        problems: one line each (missing part folders named, sha256 mismatches, pip's last error line).
    """

    site: Path | None
    installed: tuple[str, ...]
    joined: tuple[str, ...]
    problems: tuple[str, ...]

    def as_dict(self) -> dict:
        """JSON-ready form (``site`` as a string or None)."""
        return {"site": None if self.site is None else str(self.site), "installed": list(self.installed),
                "joined": list(self.joined), "problems": list(self.problems)}


@dataclass(frozen=True)
class DeviceCall:
    """One ``run`` of the device tool: its command, carried paths, timeout (s) and carried bytes (tree included)."""

    command: str
    carry: tuple[str, ...]
    timeout_s: int
    bytes_total: int

    def render(self) -> str:
        """The call as the ``run`` tool's arguments, ready to paste."""
        return (f"run(command={json.dumps(self.command)}, carry={json.dumps(list(self.carry))}, "
                f"timeout_s={self.timeout_s})")


# ------------------------------------------------------------------------------------------------------ split
def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def part_folders(parts_dir: Path) -> list[Path]:
    """The part folders (``01``, ``02``, ...) under ``parts_dir``, in order; [] when it does not exist."""
    if not parts_dir.is_dir():
        return []
    return sorted((p for p in parts_dir.iterdir() if p.is_dir() and FOLDER_RE.match(p.name)), key=lambda p: int(p.name))


def _cut(sizes: Sequence[int], part_bytes: int) -> list[list[tuple[int, int, int]]]:
    """Pieces per wheel as (folder number from 1, offset, length): the wheels streamed into folders of part_bytes."""
    pieces, folder, room = [], 1, part_bytes
    for size in sizes:
        mine, offset = [], 0
        while offset < size or (size == 0 and not mine):
            if room == 0:
                folder, room = folder + 1, part_bytes
            length = min(room, size - offset)
            mine.append((folder, offset, length))
            offset, room = offset + length, room - length
        pieces.append(mine)
    return pieces


def _write_piece(src: Path, offset: int, length: int, dest: Path) -> str:
    """Copy ``length`` bytes of ``src`` from ``offset`` into ``dest``; returns their sha256."""
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        fin.seek(offset)
        left = length
        while left:
            block = fin.read(min(CHUNK, left))
            if not block:
                raise OSError(f"{src}: shorter than expected while splitting")
            digest.update(block)
            fout.write(block)
            left -= len(block)
    return digest.hexdigest()


def split(wheels: Sequence[Path], out: Path, part_bytes: int) -> tuple[Path, ...]:
    """Split ``wheels`` into part folders ``out/01``, ``out/02``, ... of at most ``part_bytes`` each.

    Every folder of an earlier split under ``out`` is removed first. Returns the folders written, in order.

    Raises:
        ValueError: no wheel, a wheel name used twice, or ``part_bytes`` < 1.
        OSError: a wheel cannot be read or ``out`` written.
    """
    names = [Path(w).name for w in wheels]
    if not wheels or len(set(names)) != len(names) or part_bytes < 1:
        raise ValueError(f"split needs distinct wheels and a part size >= 1 byte (got {names}, {part_bytes} bytes)")
    sizes = [Path(w).stat().st_size for w in wheels]
    for old in part_folders(out):
        shutil.rmtree(old)
    plan_wheels = []
    for wheel, size, pieces in zip(wheels, sizes, _cut(sizes, part_bytes)):
        parts = []
        for k, (folder, offset, length) in enumerate(pieces, 1):
            (out / f"{folder:02d}").mkdir(parents=True, exist_ok=True)
            file = f"{Path(wheel).name}.part{k}"
            sha = _write_piece(Path(wheel), offset, length, out / f"{folder:02d}" / file)
            parts.append({"folder": f"{folder:02d}", "file": file, "size": length, "sha256": sha})
        plan_wheels.append({"name": Path(wheel).name, "size": size, "sha256": sha256_file(Path(wheel)),
                            "parts": parts})
    count = max(int(p["folder"]) for w in plan_wheels for p in w["parts"])
    plan = {"format": FORMAT, "folders": count, "wheels": plan_wheels}
    plan_id = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]
    folders = tuple(out / f"{i:02d}" for i in range(1, count + 1))
    for folder in folders:
        manifest = dict(plan, plan=plan_id, folder=folder.name)
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return folders


# ------------------------------------------------------------------------------------------------------- join
def read_plan(parts_dir: Path) -> tuple[dict | None, list[str]]:
    """The split plan the part folders under ``parts_dir`` hold, and problems (unreadable or stale manifests).

    When folders of different splits are present, the plan most of them hold wins and the others are named.
    """
    plans, problems = {}, []
    for folder in part_folders(parts_dir):
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            plans.setdefault(manifest["plan"], (manifest, []))[1].append(folder.name)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{folder}: no readable {MANIFEST} ({type(exc).__name__}); rerun make gpu-wheels")
    if not plans:
        return None, problems
    best = max(plans, key=lambda k: len(plans[k][1]))
    for key, (_, names) in sorted(plans.items()):
        if key != best:
            problems.append(f"{parts_dir}: folder(s) {', '.join(names)} are from another split (ignored)")
    manifest = plans[best][0]
    if manifest.get("format") != FORMAT:
        return None, problems + [f"{parts_dir}: manifest format {manifest.get('format')} (expected {FORMAT})"]
    return manifest, problems


def _wheel_problem(parts_dir: Path, wheel: dict) -> str | None:
    """Why ``wheel`` cannot be joined from ``parts_dir`` (a missing or mismatched piece), or None."""
    missing = [p for p in wheel["parts"] if not (parts_dir / p["folder"] / p["file"]).is_file()]
    if missing:
        where = ", ".join(f"{parts_dir / p['folder']}" for p in missing)
        return (f"{wheel['name']}: {len(missing)} of {len(wheel['parts'])} part(s) missing: {where} "
                f"(carry each part folder in consecutive device calls)")
    for k, part in enumerate(wheel["parts"], 1):
        path = parts_dir / part["folder"] / part["file"]
        if path.stat().st_size != part["size"] or sha256_file(path) != part["sha256"]:
            return f"{wheel['name']}: part {k} ({path}) does not match its sha256 in {MANIFEST}: carry it again"
    return None


def _join_one(parts_dir: Path, wheel: dict, dest: Path) -> str | None:
    """Assemble ``wheel`` into ``dest`` (a temporary name, renamed once its sha256 matches); a problem or None."""
    tmp = dest.with_name(dest.name + ".tmp")
    digest = hashlib.sha256()
    with open(tmp, "wb") as fout:
        for part in wheel["parts"]:
            with open(parts_dir / part["folder"] / part["file"], "rb") as fin:
                for block in iter(lambda: fin.read(CHUNK), b""):
                    digest.update(block)
                    fout.write(block)
    if digest.hexdigest() != wheel["sha256"] or tmp.stat().st_size != wheel["size"]:
        tmp.unlink()
        return f"{wheel['name']}: the joined file does not match its sha256 in {MANIFEST}: not installed"
    os.replace(tmp, dest)
    return None


def join(parts_dir: Path, out: Path) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """Join every wheel of the split under ``parts_dir`` whose pieces are all present and match, into ``out``.

    Returns (joined wheel paths, problems); never raises for missing or bad parts (an unwritable ``out`` is a
    problem too).
    """
    plan, problems = read_plan(parts_dir)
    if plan is None:
        return (), tuple(problems or [f"{parts_dir}: no part folders"])
    joined = []
    for wheel in plan["wheels"]:
        try:
            why = _wheel_problem(parts_dir, wheel)
            if why is None:
                out.mkdir(parents=True, exist_ok=True)
                why = _join_one(parts_dir, wheel, out / wheel["name"])
        except OSError as exc:
            why = f"{wheel['name']}: cannot join into {out}: {exc.strerror or exc}"
        if why is None:
            joined.append(out / wheel["name"])
        else:
            problems.append(why)
    return tuple(joined), tuple(problems)


# ---------------------------------------------------------------------------------------------------- install
def wheel_distribution(wheel: Path) -> tuple[str, str]:
    """(distribution name, version) from a wheel's file name (PEP 427: ``name-version-...``)."""
    name, version = wheel.name.split("-")[:2]
    return re.sub(r"[-_.]+", "-", name).lower(), version


def is_installed(wheel: Path) -> bool:
    """True when the distribution of ``wheel``, at its version, is installed on ``sys.path`` already.

    Asked of the distribution, not of a module: a library-only wheel (``nvidia-nvjpeg``: files under the
    ``nvidia/`` namespace that other installed wheels share) would always look importable.
    """
    name, version = wheel_distribution(wheel)
    try:
        return importlib.metadata.version(name) == version
    except importlib.metadata.PackageNotFoundError:
        return False


def last_line(text: str) -> str:
    """The last non-empty line of ``text`` (pip's error line), or a placeholder."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def pip_install(wheels: Sequence[Path], site: Path, timeout_s: float) -> str | None:
    """``pip install`` ``wheels`` into a fresh ``site`` (no index, no dependencies, no byte-compiling).

    Returns None on success, else one line: pip's last output line, or the timeout.
    """
    shutil.rmtree(site, ignore_errors=True)  # a rerun replaces what an earlier one installed
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--disable-pip-version-check", "--target", str(site), *map(str, wheels)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"pip install of {len(wheels)} wheel(s) took over {timeout_s:.0f} s"
    except OSError as exc:
        return f"pip install could not start: {exc}"
    if proc.returncode != 0:
        return f"pip install of {len(wheels)} wheel(s) failed: {last_line(proc.stdout + proc.stderr)}"
    return None


def share_namespaces(site: Path, path: Iterable[str]) -> tuple[str, ...]:
    """Make each top-level package of ``site`` that other ``path`` entries hold too a shared namespace.

    Several NVIDIA wheels ship ``nvidia/__init__.py``, some of them empty: one of those first on ``sys.path`` makes
    ``nvidia`` a regular package that hides ``nvidia.*`` installed elsewhere (the GPU machine's CUDA wheels).
    Such an empty ``__init__.py`` gets pkgutil's ``extend_path`` line (what nvImageCodec's own holds). Returns the
    names changed.
    """
    others = [Path(p) for p in path if p and Path(p).resolve() != site.resolve()]
    changed = []
    for init in sorted(site.glob("*/__init__.py")):
        package = init.parent.name
        if init.stat().st_size == 0 and any((p / package).is_dir() for p in others):
            init.write_text(NAMESPACE_INIT, encoding="utf-8")
            changed.append(package)
    return tuple(changed)


def prepare_wheels(wheel_dir: Path, parts_dir: Path, site: Path, timeout_s: float = 120.0) -> WheelsReport:
    """Join the carried parts, then install every wheel not installed already into ``site``.

    Args:
        wheel_dir: folder of whole wheels (``.gpu-wheels``); absent is fine.
        parts_dir: folder of part folders (``.gpu-wheels-parts``); absent is fine. Joined wheels are written to
            ``site.parent / "joined-wheels"``.
        site: the ``pip install --target`` folder (replaced on every install).
        timeout_s: pip's limit in seconds.

    Never raises for missing or bad input: each is one line of ``problems``. The caller puts ``site`` first on
    ``sys.path`` and on its subprocesses' ``PYTHONPATH``.
    """
    whole = sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []
    joined, problems = join(parts_dir, site.parent / "joined-wheels") if part_folders(parts_dir) else ((), ())
    needed = [w for w in [*whole, *joined] if not is_installed(w)]
    if not needed:
        return WheelsReport(None, (), tuple(w.name for w in joined), tuple(problems))
    why = pip_install(needed, site, timeout_s)
    if why is not None:
        return WheelsReport(None, (), tuple(w.name for w in joined), (*problems, why))
    share_namespaces(site, sys.path)
    return WheelsReport(site, tuple(w.name for w in needed), tuple(w.name for w in joined), tuple(problems))


# ------------------------------------------------------------------------------------------------------ calls
def folder_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (a file or a folder; 0 when absent)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def plan_calls(parts: Sequence[tuple[str, int]], tree_bytes: int, first: Sequence[tuple[str, int]] = (),
               check_command: str = CHECK_COMMAND, check_timeout_s: int = CHECK_TIMEOUT_S) -> tuple[DeviceCall, ...]:
    """The device calls that carry ``parts`` ((path, bytes) per part folder, in order), back to back.

    The first call also carries ``first`` ((path, bytes), e.g. ``.gpu-wheels``); each call but the last runs
    ``check`` (which part folders arrived and match); the last call carries the last part (and ``first`` again, so
    that the check has them even on a machine that was given back between calls) and runs ``check_command``.
    ``bytes_total`` of each call includes ``tree_bytes``, the working tree that every call sends.

    Raises:
        ValueError: no part, or a call over the 64 MiB a call carries (naming it).
    """
    if not parts:
        raise ValueError("no part folders: run make gpu-wheels")
    calls, first_paths, first_bytes = [], [p for p, _ in first], sum(b for _, b in first)
    parts_dir = str(Path(parts[0][0]).parent)
    for i, (path, size) in enumerate(parts):
        last = i == len(parts) - 1
        extra = first_bytes if i == 0 or last else 0
        carry = tuple((first_paths if i == 0 or last else []) + [path])
        command = check_command if last else f"python3 -m benchmarks.gpu_wheels check --parts-dir {parts_dir}"
        calls.append(DeviceCall(command, carry, check_timeout_s if last else CARRY_TIMEOUT_S,
                                tree_bytes + extra + size))
    over = [f"call {i} ({c.bytes_total / MIB:.1f} MiB)" for i, c in enumerate(calls, 1)
            if c.bytes_total > CALL_LIMIT_BYTES]
    if over:
        raise ValueError(f"over the {CALL_LIMIT_BYTES // MIB} MiB a device call carries: {', '.join(over)}; "
                         f"split with a smaller --part-mib")
    return tuple(calls)


def render_calls(calls: Sequence[DeviceCall]) -> str:
    """The calls as lines to paste, with what each carries."""
    lines = [f"{len(calls)} device calls, back to back (the machine is given back 30 s after a call ends; a "
             f"gap loses the parts carried so far):"]
    for i, call in enumerate(calls, 1):
        lines.append(f"# call {i}/{len(calls)}: {call.bytes_total / MIB:.1f} of {CALL_LIMIT_BYTES // MIB} MiB "
                     f"(working tree included)")
        lines.append(call.render())
    return "\n".join(lines)


def check(parts_dir: Path) -> tuple[str, ...]:
    """One line per wheel of the split under ``parts_dir``: complete and matching, or what is missing or wrong."""
    plan, problems = read_plan(parts_dir)
    if plan is None:
        return tuple(problems or [f"{parts_dir}: no part folders"])
    present = [f.name for f in part_folders(parts_dir)]
    lines = [f"{parts_dir}: {len(present)} of {plan['folders']} part folders present ({', '.join(present)})"]
    for wheel in plan["wheels"]:
        why = _wheel_problem(parts_dir, wheel)
        lines.append(why if why is not None else f"{wheel['name']}: all {len(wheel['parts'])} part(s) match")
    return tuple(lines + problems)


# -------------------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu_wheels", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("split", help="split wheels into part folders")
    p.add_argument("wheels", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path(".gpu-wheels-parts"))
    p.add_argument("--part-mib", type=float, required=True, help="largest part folder, MiB")
    p = sub.add_parser("calls", help="print the device calls that carry the part folders")
    p.add_argument("--parts-dir", type=Path, default=Path(".gpu-wheels-parts"))
    p.add_argument("--tree-bytes", type=int, required=True, help="the working tree every call sends, bytes")
    p.add_argument("--first-carry", type=Path, action="append", default=[],
                   help="a path the first and last calls carry as well (e.g. .gpu-wheels)")
    p.add_argument("--check-command", default=CHECK_COMMAND)
    p.add_argument("--check-timeout", type=int, default=CHECK_TIMEOUT_S)
    p = sub.add_parser("check", help="say which part folders arrived and match")
    p.add_argument("--parts-dir", type=Path, default=Path(".gpu-wheels-parts"))
    p = sub.add_parser("join", help="join every complete wheel")
    p.add_argument("--parts-dir", type=Path, default=Path(".gpu-wheels-parts"))
    p.add_argument("--out", type=Path, required=True)
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "split":
        folders = split(args.wheels, args.out, int(args.part_mib * MIB))
        for folder in folders:
            print(f"{folder}: {folder_bytes(folder) / MIB:.1f} MiB")
        return 0
    if args.cmd == "calls":
        parts = [(str(f), folder_bytes(f)) for f in part_folders(args.parts_dir)]
        first = [(str(p), folder_bytes(p)) for p in args.first_carry]
        print(render_calls(plan_calls(parts, args.tree_bytes, first, args.check_command, args.check_timeout)))
        return 0
    if args.cmd == "check":
        print("\n".join(check(args.parts_dir)))
        return 0
    joined, problems = join(args.parts_dir, args.out)
    print("\n".join([f"joined {p}" for p in joined] + list(problems)))
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; a bad input is one line on stderr and exit 2."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, OSError) as exc:
        print(f"gpu_wheels {args.cmd}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
