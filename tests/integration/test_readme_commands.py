"""Every command of the README runs as written, in order, from a fresh clone (issue 20, item 10).

The README marks the fenced blocks that hold a user's commands with a ``<!-- readme-commands -->`` line right
above the fence (usage blocks, with their ``[...]`` options, are not marked). For those commands:

* statically, in order (:func:`check_commands`): the first is ``make demo`` (it makes ``.venv``); each starts with
  something that exists by then: a target of the Makefile, ``.venv/bin/<name>`` of a console script of
  pyproject.toml (or the venv's ``python`` / ``pip`` / ``torchrun``), or such a bare name after
  ``source .venv/bin/activate``; every flag is accepted by that command's own parser (its ``main`` is called with
  ``parse_args`` stopped right after parsing; torchrun's flags by torch's parser, its script's by the script's);
  ``pip install -e '.[X]'`` names extras of pyproject.toml; every path a command reads was written by an earlier
  one (``make`` targets are expanded into their recipes with ``make -n``);
* over the whole README text: no ``pip install`` of ``imagenet-pipeline`` (not on any registry: the extras are
  installed from the checkout) and every ``build/...`` path is one that something documented makes;
* run (:func:`test_readme_commands_run_in_order`): in a temporary folder holding only ``.venv`` (a link to the
  development venv), in a shell whose ``PATH`` lacks the venv, the commands in order, with :data:`SMALL`'s flags
  appended to each program (later flags win: sizes for 2 cores), ``make demo`` as its recipe; the commands in
  :data:`NOT_RUN` are checked statically only, each for the reason given there.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from conftest import REPO

MARK = "<!-- readme-commands -->"
VENV_TOOLS = ("python", "pip", "torchrun")  # in .venv/bin besides the project's console scripts

# Commands of the marked blocks that the run below does not execute (prefix of the command as written -> why).
NOT_RUN = {
    "make test": "runs the whole test suite, this test included",
    "torchrun ": "two ResNet50 training processes on 2 cores (~1 min); tests/integration/test_ddp_epochs.py runs DDP",
    ".venv/bin/pip install": "installs into the shared development venv (DALI: a ~1 GB download)",
    "make gpu-wheels": "downloads wheels from the package registry",
    "make gpu-smoke": "about 1.5 min on 2 cores; tests/integration/test_gpu_check.py runs gpu_check.py --smoke",
    "io-bench ": "its compute-only and end-to-end training runs take minutes on 2 busy cores even at 32 px; "
                 "tests/integration/test_iobench.py runs it, tests/unit/test_dependencies.py its decode line",
}
# Flags appended to each program's commands in the run (argparse: the last value of a flag wins).
SMALL = {
    "make-demo-imagenet": ["--train-per-class", "6", "--val-per-class", "2"],
    "shard-imagenet": ["--workers", "1", "--no-progress"],
    "shard-imagenet verify": ["--workers", "1"],
    "train": ["--max-steps", "2", "--batch-size", "8", "--image-size", "32", "--workers", "1", "--eval-size", "32"],
}
# Paths a user brings (inputs no command of the README makes).
USER_DATA = {"/data/imagenet": "your own ImageNet"}
# Flag destinations (per parser prog) that are paths a command reads / writes.
INPUTS = {"train": ("data", "checkpoint"), "shard-imagenet": ("src", "classes", "val_labels", "id_map"),
          "shard-imagenet verify": ("out",), "io-bench": ("data", "folder_root"), "flagperf-sweep": ("data",),
          "flagperf-report": ("runs",)}
OUTPUTS = {"train": ("metrics_json", "log_jsonl", "checkpoint_dir", "output_dir"), "shard-imagenet": ("out",),
           "make-demo-imagenet": ("out",), "io-bench": ("out",), "flagperf-sweep": ("out",),
           "flagperf-report": ("out",)}
# build/ folders the README names that no command of its marked blocks makes: the file that makes each.
BUILD_MADE_BY = {"build/compat": "benchmarks/compat.py", "build/gpu_check": "benchmarks/gpu_check.py",
                 "build/bench_scale.json": "benchmarks/bench_scale.py"}


@dataclass(frozen=True)
class Command:
    line: int  # 1-based line of the README
    text: str
    argv: tuple


def readme_commands(text: str) -> list:
    """The commands of the marked blocks of ``text``, in order (``\\`` continuations joined, comments dropped).

    Raises:
        ValueError: a mark not followed by a fenced block.
    """
    lines = text.splitlines()
    out = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != MARK:
            i += 1
            continue
        if i + 1 >= len(lines) or not lines[i + 1].startswith("```"):
            raise ValueError(f"README.md:{i + 1}: {MARK} is not followed by a fenced block")
        i += 2
        pending, start = "", 0
        while i < len(lines) and not lines[i].startswith("```"):
            raw = lines[i]
            if not pending:
                start = i + 1
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
            else:
                full = pending + raw
                pending = ""
                argv = shlex.split(full, comments=True)
                if argv:
                    out.append(Command(start, full.split(" #")[0].strip(), tuple(argv)))
            i += 1
    return out


def console_scripts() -> dict:
    """pyproject.toml's console scripts: name -> ``module:function``."""
    text = (REPO / "pyproject.toml").read_text()
    block = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', block, re.MULTILINE))


def extras() -> set:
    text = (REPO / "pyproject.toml").read_text()
    block = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", block, re.MULTILINE))


def makefile_targets() -> set:
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", (REPO / "Makefile").read_text(), re.MULTILINE))


class _Parsed(Exception):
    def __init__(self, prog: str, ns: argparse.Namespace) -> None:
        super().__init__(prog)
        self.prog, self.ns = prog, ns


def parse_with_main(script: str, args: list) -> tuple:
    """Call console script ``script``'s ``main(args)`` with ``parse_args`` stopped right after it parsed:
    ``(prog, namespace)``, or ``(None, error text)`` when its parser refuses ``args``."""
    module = importlib.import_module(console_scripts()[script].split(":")[0])
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, a=None, namespace=None):
        raise _Parsed(self.prog, original(self, a, namespace))

    err = io.StringIO()
    argparse.ArgumentParser.parse_args = parse_then_stop
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            module.main(list(args))
    except _Parsed as parsed:
        return parsed.prog, parsed.ns
    except SystemExit:
        return None, err.getvalue().strip().splitlines()[-1:] or ["exit"]
    finally:
        argparse.ArgumentParser.parse_args = original
    return None, ["main returned without parsing its arguments"]


def _paths(value) -> list:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [PurePosixPath(os.path.normpath(str(v))) for v in values
            if v is not None and not re.match(r"^[a-z0-9]+://", str(v))]


def make_recipe(target: str, variables: list) -> list:
    """The commands ``make TARGET VAR=...`` runs (``make -n``, installs taken as done)."""
    fixed = [] if any(v.startswith("PYTHON=") for v in variables) else ["PYTHON=python3"]  # skips its search (s)
    # under `make test` the outer make's MAKEFLAGS / MAKELEVEL reach this one, which then prints "Entering
    # directory" lines among the commands: a make of its own, told not to
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")}
    r = subprocess.run(["make", "-n", "--no-print-directory", "-o", ".venv/bin/.installed", "-o",
                        ".venv/bin/.installed-test", target, *fixed, *variables], cwd=REPO, capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 0, f"make -n {target}: {r.stderr.strip()}"
    return [line.lstrip("@") for line in r.stdout.splitlines() if line.strip()]


@dataclass
class _State:
    venv: bool = False
    activated: bool = False
    outputs: tuple = ()


def _check_program(name: str, args: list, where: str, st: _State, problems: list) -> str | None:
    """Flags and paths of one console-script call; returns its parser's prog, or None."""
    prog, ns = parse_with_main(name, args)
    if prog is None:
        problems.append(f"{where}: {name} refuses its flags: {' '.join(ns)}")
        return None
    for dest in INPUTS.get(prog, ()):
        for p in _paths(getattr(ns, dest, None)):
            if str(p) in USER_DATA:
                continue
            if not any(p == o or o in p.parents for o in st.outputs):
                problems.append(f"{where}: {prog} reads {p}, which no earlier command of the README writes")
    for dest in OUTPUTS.get(prog, ()):
        st.outputs += tuple(_paths(getattr(ns, dest, None)))
    return prog


def _program(word: str, st: _State, where: str, problems: list) -> str | None:
    """The venv program ``word`` names (``.venv/bin/X`` or a bare ``X`` after activation), or None (a problem)."""
    if word.startswith(".venv/bin/"):
        name = word[len(".venv/bin/"):]
        if not st.venv:
            problems.append(f"{where}: {word} before the command that makes .venv")
    elif "/" not in word:
        name = word
        if not st.activated:
            problems.append(f"{where}: `{word}` is not on a fresh shell's PATH: call .venv/bin/{word}, or "
                            f"`source .venv/bin/activate` first")
    else:
        name = None
    if name not in console_scripts() and name not in VENV_TOOLS:
        problems.append(f"{where}: {word}: not a program of the venv (console scripts: "
                        f"{', '.join(sorted(console_scripts()))})")
        return None
    return name


def check_commands(commands: list) -> list:
    """Static problems of the README's commands, in order (empty: none)."""
    problems = []
    if not commands:
        return [f"README.md marks no block of commands ({MARK} above the fence)"]
    if commands[0].argv[:2] != ("make", "demo"):
        problems.append(f"README.md:{commands[0].line}: the first command is `{commands[0].text}`, not `make demo`")
    st = _State()
    targets = makefile_targets()
    for c in commands:
        where = f"README.md:{c.line} `{c.text}`"
        argv = list(c.argv)
        if argv[0] == "make":
            names = [a for a in argv[1:] if not a.startswith("-") and "=" not in a]
            variables = [a for a in argv[1:] if "=" in a]
            for t in names:
                if t not in targets:
                    problems.append(f"{where}: the Makefile has no target {t}")
                    continue
                for line in make_recipe(t, variables):
                    for part in line.split(" && "):
                        try:
                            words = shlex.split(part, comments=True)
                        except ValueError:  # a shell line continued with a backslash: not a venv program's call
                            continue
                        if words and words[0].startswith(".venv/bin/") and words[0][10:] in console_scripts():
                            _check_program(words[0][10:], words[1:], f"{where} (recipe: {line})", st, problems)
            st.venv = True  # every target installs .venv first
            continue
        if argv[:2] == ["source", ".venv/bin/activate"] or argv[:2] == [".", ".venv/bin/activate"]:
            if not st.venv:
                problems.append(f"{where}: activates .venv before the command that makes it")
            st.activated = True
            continue
        name = _program(argv[0], st, where, problems)
        if name is None:
            continue
        if name in console_scripts():
            _check_program(name, argv[1:], where, st, problems)
        elif name == "torchrun":
            from torch.distributed.run import get_args_parser

            try:
                with contextlib.redirect_stderr(io.StringIO()):
                    targs = get_args_parser().parse_args(argv[1:])
            except SystemExit:
                problems.append(f"{where}: torchrun refuses its flags")
                continue
            script = _program(targs.training_script, st, where, problems)
            if script in console_scripts():
                _check_program(script, list(targs.training_script_args), where, st, problems)
        elif name == "pip":
            for spec in argv[2:]:
                m = re.fullmatch(r"\.\[([\w,-]+)\]", spec)
                if m and set(m.group(1).split(",")) - extras():
                    problems.append(f"{where}: pyproject.toml has no extra {set(m.group(1).split(',')) - extras()}")
    return problems


def check_text(text: str) -> list:
    """Problems anywhere in the README's text: installs of a package that is not on any registry, and build/
    paths nothing documented makes."""
    problems = []
    for m in re.finditer(r"pip install [^`\n]*imagenet-pipeline", text):
        problems.append(f"`{m.group(0)}`: imagenet-pipeline is not on any registry: install the checkout's extra "
                        f"(.venv/bin/pip install -e '.[X]')")
    for m in re.finditer(r"pip install (?:-e )?'?\.\[([\w,-]+)\]", text):
        missing = set(m.group(1).split(",")) - extras()
        if missing:
            problems.append(f"`{m.group(0)}`: pyproject.toml has no extra {missing}")
    makefile = (REPO / "Makefile").read_text()
    marked = "\n".join(c.text for c in readme_commands(text))
    for m in sorted(set(re.findall(r"\bbuild/[\w.-]+", text))):
        if re.search(rf"{re.escape(m)}\b", makefile) or re.search(rf"{re.escape(m)}\b", marked):
            continue  # a Makefile default (WORK, FLAGPERF_OUT, ...) or a path of a marked command
        if m in BUILD_MADE_BY and m in (REPO / BUILD_MADE_BY[m]).read_text():
            continue
        problems.append(f"{m}: the README names it, but no documented command makes it")
    return problems


def test_readme_commands_exist_and_their_flags_parse():
    commands = readme_commands((REPO / "README.md").read_text())
    assert check_commands(commands) == []
    assert any(c.argv[0] == "train" for c in commands), "the README shows no train command after activation"


def test_readme_text_installs_and_paths():
    assert check_text((REPO / "README.md").read_text()) == []


def test_every_command_is_run_or_says_why_not():
    for c in readme_commands((REPO / "README.md").read_text()):
        assert c.text.startswith(tuple(NOT_RUN)) or _runnable(c) is not None, \
            f"README.md:{c.line} `{c.text}`: neither in SMALL's programs nor in NOT_RUN"


def test_checker_catches_what_a_fresh_shell_lacks():
    """The static checks themselves: a bare command before activation, an unknown flag, an input nothing
    wrote, a registry install of this project, an unmade build/ path."""
    bad = f"{MARK}\n```sh\nmake demo\ntrain --data build/demo/shards --no-such-flag\n" \
          f"source .venv/bin/activate\nio-bench --data build/samples/shards\n```\n"
    problems = "\n".join(check_commands(readme_commands(bad)))
    assert "not on a fresh shell's PATH" in problems
    assert "refuses its flags" in problems
    assert "reads build/samples/shards" in problems
    text = "`pip install 'imagenet-pipeline[dali]'` and `build/samples/tree`"
    problems = "\n".join(check_text(text))
    assert "not on any registry" in problems and "build/samples" in problems


def _runnable(c: Command) -> list | None:
    """The shell lines that run ``c`` with small sizes, or None when the test does not run it."""
    argv = list(c.argv)
    if c.text.startswith(tuple(NOT_RUN)):
        return None
    if argv[:2] == ["source", ".venv/bin/activate"]:
        return [c.text]
    if argv[0] == "make":
        names = [a for a in argv[1:] if not a.startswith("-") and "=" not in a]
        if names != ["demo"] or len(argv) != 2:
            return None
        lines = []
        for line in make_recipe("demo", []):
            parts = []
            for part in line.split(" && "):
                words = shlex.split(part)
                if words[:2] == ["rm", "-rf"] and all(w.startswith("build/") for w in words[2:]):
                    parts.append(part)
                elif words and words[0].startswith(".venv/bin/"):
                    parts.append(shlex.join(words + _small(words[0][10:], words[1:])))
                else:
                    return None
            lines.append(" && ".join(parts))
        return lines
    name = argv[0][10:] if argv[0].startswith(".venv/bin/") else argv[0]
    if name not in SMALL:
        return None
    return [shlex.join(argv + _small(name, argv[1:]))]


def _small(name: str, args: list) -> list:
    if name == "shard-imagenet" and args[:1] == ["verify"]:
        name = "shard-imagenet verify"
    return SMALL.get(name, [])


@pytest.mark.slow
def test_readme_commands_run_in_order(tmp_path):
    """The cheap commands, as written plus :data:`SMALL`'s sizes, in one fresh shell in an empty folder."""
    commands = readme_commands((REPO / "README.md").read_text())
    script = ["set -euo pipefail"]
    for c in commands:
        lines = _runnable(c)
        if lines is not None:
            script += [f"echo '+ README.md:{c.line}'"] + lines
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    venv_bin = str(REPO / ".venv" / "bin")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    env["PYTHONUNBUFFERED"] = "1"
    r = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=240)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{chr(10).join(script)}\n---\n{out[-4000:]}"
    assert (tmp_path / "build" / "demo" / "shards" / "_info.json").is_file()
    assert "verify: OK" in out
    # train names the decoder in use at start (item 15)
    assert re.search(r"^decode: .*simplejpeg", r.stdout, re.MULTILINE), out[-3000:]
    assert (tmp_path / "build" / "demo" / "short.json").is_file()
